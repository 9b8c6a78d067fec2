"""Where the controller keeps tasks and results: one small interface, `TaskStore`.

The controller asks the store for taskids, hands it each submitted task (its spec and opaque
payload frames), marks each dispatch, records each final result, and drops results on
`clear`. Results are opaque: the store never unpickles anything.

Writes are queued and made durable together by `commit()`. A commit either writes every
queued row or none: when it fails (disk full, the file locked by another process, an I/O
error) every row stays queued, `StoreError` names the cause, and the next commit tries them
all again. Nothing is forgotten on the way, and what was queued can be taken back
(`withdraw`, for a submit that is refused because of the failure).

`MemoryStore` keeps everything in this process (results until cleared), for throw-away runs
(`--db :memory:`). `SQLiteStore` keeps it in a SQLite file in WAL mode, so a restarted
controller picks up where a killed one stopped; it holds an exclusive lock on the store for
its whole life, so a second controller cannot open the same store.

What lives where: base.py (the records, the `TaskStore` interface), memory.py (`MemoryStore`),
sqlite.py (`SQLiteStore`), schema.py (its tables, statements, lock and open errors), wal.py
(its write-ahead log kept bounded), keys.py (closed clients' submit keys dropped), files.py
(large frames in files beside the database), cache.py (its cache of recent results),
active.py (its tasks in memory and their payload bytes; reading queued rows back within the
controller's window), retention.py (dropping results older than `--keep-results` days;
removing a whole store).
"""
from __future__ import annotations

from .base import (
    ENGINE_ROW_AGE,
    MAX_TID,
    SUBMIT_KEY_AGE,
    SUBMIT_KEYS_KEPT,
    StoredResult,
    StoredTask,
    TaskStore,
    compact_tids,
)
from .files import EXTERNAL_MIN
from .memory import MemoryStore
from .retention import (
    DEFAULT_KEEP_RESULTS,
    drop_old_results,
    remove_store,
    retention_pass,
    store_files,
    unfinished_in,
)
from .schema import BUSY_TIMEOUT, LOW_DISK, OPEN_TIMEOUT
from .sqlite import LOW_TID_EVERY, SQLiteStore
from .wal import WAL_BYTES

__all__ = [
    "BUSY_TIMEOUT", "DEFAULT_KEEP_RESULTS", "ENGINE_ROW_AGE", "EXTERNAL_MIN", "LOW_DISK",
    "LOW_TID_EVERY", "MAX_TID", "OPEN_TIMEOUT", "SUBMIT_KEYS_KEPT", "SUBMIT_KEY_AGE", "WAL_BYTES",
    "MemoryStore", "SQLiteStore", "StoredResult", "StoredTask", "TaskStore", "compact_tids",
    "drop_old_results", "open_store", "remove_store", "retention_pass", "store_files",
    "unfinished_in",
]


def open_store(db: str | None) -> MemoryStore | SQLiteStore:
    """`:memory:` or None for a MemoryStore, else a SQLiteStore at that path (StoreError with
    one clear line if it is in use, locked, damaged or cannot be created)."""
    if db in (None, ":memory:"):
        return MemoryStore()
    return SQLiteStore(db)
