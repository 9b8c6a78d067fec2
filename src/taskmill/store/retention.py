"""What a store forgets: finished results older than the retention, and a whole store.

`drop_old_results(store, days, now)` finds the finished tasks whose result was completed more
than `days` before `now` (the `completed` time of their stored result metadata) and drops them
through the store's own `clear` (rows, large-frame files, cache and counts together), as a
client's `clear` of those taskids would. The controller's core calls it (`retention_pass`, which
logs it) when it starts and then every hour (`taskmill controller --keep-results DAYS`, default 7).

`remove_store(path)` deletes a SQLite store's files (the database, its WAL, shared-memory and
lock files, its `.blobs/` folder, and the `.key` that `taskmill cluster start` keeps beside it:
the key its results were signed with, for `--resume`) under the store's lock, so that a store
another controller holds is never removed: `taskmill cluster start` without `--resume` begins
with an empty store that way, and `taskmill clean` removes stopped clusters' stores.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

from ..defaults import DEFAULT_KEEP_RESULTS
from ..errors import StoreError
from .base import TaskStore, unpack
from .schema import hold_lock
from .sqlite import SQLiteStore

log = logging.getLogger("taskmill.controller")

DAY = 86400.0
SQLITE_MAGIC = b"SQLite format 3\x00"


def old_results(store: TaskStore, cutoff: float) -> list[int]:
    """The taskids of the finished results `store` holds that were completed before `cutoff`
    (a time.time() value)."""
    old: list[int] = []
    if isinstance(store, SQLiteStore):
        store.commit()
        # A task submitted after the cutoff finished after it: only older rows are unpacked.
        rows = store.db.execute("SELECT tid, result_meta FROM tasks WHERE state='finished' "
                                "AND submitted < ?", (cutoff,))
        for tid, meta in rows:
            completed = unpack(meta).get("completed") if meta is not None else None
            if completed is None or completed < cutoff:
                old.append(tid)
        return old
    ok, failed = store.finished_ids()
    for tid in ok + failed:
        r = store.result(tid)
        if r is not None and r.meta.get("completed", 0.0) < cutoff:
            old.append(tid)
    return sorted(old)


def drop_old_results(store: TaskStore, days: float = DEFAULT_KEEP_RESULTS,
                     now: float | None = None) -> int:
    """Drop the finished results completed more than `days` days before `now` (default: the
    time now); return how many. `days` may be math.inf (keep them all)."""
    if days == float("inf"):
        return 0
    cutoff = (time.time() if now is None else now) - days * DAY
    tids = old_results(store, cutoff)
    if not tids:
        return 0
    dropped, _missing = store.clear(tids)
    return dropped


def retention_pass(store: TaskStore, days: float, now: float) -> None:
    """The controller's pass (at start, then hourly): `drop_old_results`, logged; a store that
    cannot write now is logged and tried again at the next pass."""
    try:
        dropped = drop_old_results(store, days, now=now)
    except StoreError as e:
        log.warning("could not remove results older than %g days: %s", days, e)
        return
    if dropped:
        log.info("removed %d finished results older than %g days (--keep-results)", dropped,
                 days)


def store_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files and folders of the SQLite store at `path` that exist now."""
    p = str(path)
    names = [p, f"{p}-wal", f"{p}-shm", f"{p}.blobs", f"{p}.key", f"{p}.lock"]
    return [Path(n) for n in names if os.path.lexists(n)]


def remove_store(path: str | os.PathLike[str]) -> int:
    """Delete the SQLite store at `path` (every file of it); return the bytes freed.

    StoreError (and nothing removed) when another controller holds the store, or when the file
    at `path` is not a SQLite database (so a mistyped --db never deletes someone's file)."""
    p = str(path)
    if not os.path.exists(p):
        for leftover in store_files(p):  # e.g. a lock or blobs folder without a database
            _remove(leftover)
        return 0
    with open(p, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        raise StoreError(f"{p} is not a taskmill store (not a SQLite database); not removing "
                         "it: give another --db")
    fd = hold_lock(p)  # StoreError when a controller holds it
    try:
        freed = 0
        for f in store_files(p):
            freed += _remove(f)
        return freed
    finally:
        os.close(fd)


def unfinished_in(path: str | os.PathLike[str]) -> int:
    """How many unfinished tasks (queued or running when its controller stopped) the store at
    `path` holds; 0 if there is none or it cannot be read (read only: nothing is changed)."""
    p = str(path)
    if not os.path.exists(p):
        return 0
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return 0
    try:
        return int(db.execute("SELECT COUNT(*) FROM tasks WHERE state != 'finished'"
                              ).fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        db.close()


def _remove(path: Path) -> int:
    """Remove a file or a folder; return the bytes it held."""
    if path.is_dir() and not path.is_symlink():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path, ignore_errors=True)
        return size
    try:
        size = path.lstat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size
