"""Where the controller keeps tasks and results: one small interface, `TaskStore`.

The controller asks the store for taskids, hands it each submitted task (its spec and opaque
payload frames), fetches a node's body to dispatch it, records each final result, and drops
results on `clear`. Results are opaque: the store never unpickles anything.

`MemoryStore` keeps everything in this process (results until cleared), for throw-away runs
(`--db :memory:`). `SQLiteStore` keeps it in a SQLite file in WAL mode, so a restarted
controller picks up where a killed one stopped.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

# How many submit keys (client id + request number) are remembered to de-duplicate resends.
SUBMIT_KEYS_KEPT = 100_000
# Submit keys older than this are forgotten when a SQLite store opens.
SUBMIT_KEY_AGE = 24 * 3600.0


@dataclass(slots=True)
class StoredTask:
    tid: int
    spec: dict[str, Any]  # {"nodes": [node meta...], "after": [...]}; node meta has body frame spans
    frames: list[Any]
    submitted: float


@dataclass(slots=True)
class StoredResult:
    meta: dict[str, Any]  # status, kind, error, engineid, times, stdout, stderr, attempts, pmac
    frames: list[Any]

    @property
    def ok(self) -> bool:
        return self.meta.get("status") == "ok"


class TaskStore(Protocol):
    def allocate(self) -> int: ...
    def allocate_engine(self) -> int: ...
    def add(self, task: StoredTask) -> None: ...
    def task(self, tid: int) -> StoredTask | None: ...
    def mark_running(self, tid: int, engine: int, node: int, attempts: int, tries: int,
                     handed_over: list[int]) -> None: ...
    def unfinished(self) -> list[tuple[StoredTask, dict[str, Any]]]: ...
    def submitted(self, key: str) -> list[int] | None: ...
    def remember_submit(self, key: str, tids: list[int]) -> None: ...
    def finish(self, tid: int, result: StoredResult) -> None: ...
    def result(self, tid: int) -> StoredResult | None: ...
    def clear(self, tids: list[int] | None) -> tuple[int, list[int]]: ...
    def counts(self) -> tuple[int, int]: ...
    def finished_ids(self) -> tuple[list[int], list[int]]: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """Tasks and results in this process's memory; nothing survives a restart."""

    def __init__(self) -> None:
        self._next = 0
        self._next_eid = 0
        self._submits: OrderedDict[str, list[int]] = OrderedDict()
        self._active: dict[int, StoredTask] = {}
        self._results: dict[int, StoredResult] = {}
        self._n_ok = 0

    def allocate(self) -> int:
        tid = self._next
        self._next += 1
        return tid

    def allocate_engine(self) -> int:
        eid = self._next_eid
        self._next_eid += 1
        return eid

    def add(self, task: StoredTask) -> None:
        self._active[task.tid] = task

    def task(self, tid: int) -> StoredTask | None:
        return self._active.get(tid)

    def mark_running(self, tid: int, engine: int, node: int, attempts: int, tries: int,
                     handed_over: list[int]) -> None:
        pass

    def unfinished(self) -> list[tuple[StoredTask, dict[str, Any]]]:
        return []

    def submitted(self, key: str) -> list[int] | None:
        return self._submits.get(key)

    def remember_submit(self, key: str, tids: list[int]) -> None:
        self._submits[key] = tids
        while len(self._submits) > SUBMIT_KEYS_KEPT:
            self._submits.popitem(last=False)

    def finish(self, tid: int, result: StoredResult) -> None:
        self._active.pop(tid, None)
        if tid in self._results:
            raise RuntimeError(f"task {tid} finished twice")
        self._results[tid] = result
        self._n_ok += result.ok

    def result(self, tid: int) -> StoredResult | None:
        return self._results.get(tid)

    def clear(self, tids: list[int] | None) -> tuple[int, list[int]]:
        if tids is None:
            n = len(self._results)
            self._results.clear()
            self._n_ok = 0
            return n, []
        dropped, missing = 0, []
        for tid in tids:
            r = self._results.pop(tid, None)
            if r is None:
                missing.append(tid)
            else:
                dropped += 1
                self._n_ok -= r.ok
        return dropped, missing

    def counts(self) -> tuple[int, int]:
        return self._n_ok, len(self._results) - self._n_ok

    def finished_ids(self) -> tuple[list[int], list[int]]:
        ok = sorted(t for t, r in self._results.items() if r.ok)
        failed = sorted(t for t, r in self._results.items() if not r.ok)
        return ok, failed

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    tid INTEGER PRIMARY KEY,
    state TEXT NOT NULL,            -- queued | running | finished
    submitted REAL NOT NULL,
    spec BLOB,                      -- msgpack: nodes and after
    frames BLOB,                    -- msgpack list of the task's payload frames (NULL once done)
    node INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    handed_over BLOB,
    engine INTEGER,
    ok INTEGER,
    result_meta BLOB,
    result_frames BLOB
);
CREATE TABLE IF NOT EXISTS submits (key TEXT PRIMARY KEY, tids BLOB NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state) WHERE state != 'finished';
"""


def _pack(obj: Any) -> bytes:
    import msgpack

    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    import msgpack

    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _frames_blob(frames: list[Any]) -> bytes:
    return _pack([bytes(getattr(f, "buffer", f)) for f in frames])


class SQLiteStore:
    """Tasks and results in a SQLite file (WAL): they survive a kill -9 of the controller.

    Writes are queued and run in one transaction at `commit()`, which the controller calls
    once per loop turn, before it sends the replies that depend on them (group commit). Active
    tasks are also kept in memory, for dispatch; finished results live on disk, with a bounded
    cache in memory, so memory stays flat however many results are kept.
    """

    def __init__(self, path: str, *, cache_size: int = 1024) -> None:
        import sqlite3

        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable against a process crash
        self.db.executescript(_SCHEMA)
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._recent_submits: OrderedDict[str, list[int]] = OrderedDict()
        self._active: dict[int, StoredTask] = {}
        self._cache: OrderedDict[int, StoredResult] = OrderedDict()
        self._cache_size = cache_size
        row = self.db.execute("SELECT value FROM meta WHERE key='next_tid'").fetchone()
        top = self.db.execute("SELECT MAX(tid) FROM tasks").fetchone()[0]
        self._next = max(row[0] if row else 0, (top + 1) if top is not None else 0)
        row = self.db.execute("SELECT value FROM meta WHERE key='next_eid'").fetchone()
        self._next_eid = row[0] if row else 0
        self.db.execute("DELETE FROM submits WHERE at < ?", (time.time() - SUBMIT_KEY_AGE,))
        self._n_ok, self._n_failed = (
            self.db.execute(
                "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM tasks "
                "WHERE state='finished'").fetchone())

    # -- ids -------------------------------------------------------------------------------
    def allocate(self) -> int:
        tid = self._next
        self._next += 1
        self._pending.append(("INSERT OR REPLACE INTO meta VALUES ('next_tid', ?)", (self._next,)))
        return tid

    def allocate_engine(self) -> int:
        eid = self._next_eid
        self._next_eid += 1
        self._pending.append(
            ("INSERT OR REPLACE INTO meta VALUES ('next_eid', ?)", (self._next_eid,)))
        return eid

    # -- tasks -----------------------------------------------------------------------------
    def add(self, task: StoredTask) -> None:
        self._active[task.tid] = task
        self._pending.append((
            "INSERT INTO tasks (tid, state, submitted, spec, frames) VALUES (?, 'queued', ?, ?, ?)",
            (task.tid, task.submitted, _pack(task.spec), _frames_blob(task.frames)),
        ))

    def task(self, tid: int) -> StoredTask | None:
        return self._active.get(tid)

    def mark_running(self, tid: int, engine: int, node: int, attempts: int, tries: int,
                     handed_over: list[int]) -> None:
        self._pending.append((
            "UPDATE tasks SET state='running', engine=?, node=?, attempts=?, tries=?, "
            "handed_over=? WHERE tid=?",
            (engine, node, attempts, tries, _pack(handed_over), tid),
        ))

    def unfinished(self) -> list[tuple[StoredTask, dict[str, Any]]]:
        """Every queued or running task, oldest first, with its scheduling counters."""
        rows = self.db.execute(
            "SELECT tid, state, submitted, spec, frames, node, attempts, tries, handed_over "
            "FROM tasks WHERE state != 'finished' ORDER BY tid").fetchall()
        out = []
        for tid, state, submitted, spec, frames, node, attempts, tries, handed in rows:
            task = StoredTask(tid, _unpack(spec), _unpack(frames), submitted)
            self._active[tid] = task
            out.append((task, {"state": state, "node": node, "attempts": attempts,
                               "tries": tries, "handed_over": _unpack(handed) if handed else []}))
        return out

    def submitted(self, key: str) -> list[int] | None:
        # Keys of this controller's lifetime are in memory (maybe not yet committed); the
        # table holds those of earlier lifetimes.
        tids = self._recent_submits.get(key)
        if tids is not None:
            return tids
        row = self.db.execute("SELECT tids FROM submits WHERE key=?", (key,)).fetchone()
        return _unpack(row[0]) if row else None

    def remember_submit(self, key: str, tids: list[int]) -> None:
        self._recent_submits[key] = tids
        while len(self._recent_submits) > SUBMIT_KEYS_KEPT:
            self._recent_submits.popitem(last=False)
        self._pending.append(("INSERT OR REPLACE INTO submits VALUES (?, ?, ?)",
                              (key, _pack(tids), time.time())))

    # -- results ---------------------------------------------------------------------------
    def finish(self, tid: int, result: StoredResult) -> None:
        self._active.pop(tid, None)
        frames = [bytes(getattr(f, "buffer", f)) for f in result.frames]
        result = StoredResult(result.meta, frames)
        self._pending.append((
            "UPDATE tasks SET state='finished', ok=?, result_meta=?, result_frames=?, "
            "frames=NULL WHERE tid=?",
            (int(result.ok), _pack(result.meta), _pack(frames), tid),
        ))
        if result.ok:
            self._n_ok += 1
        else:
            self._n_failed += 1
        self._remember(tid, result)

    def _remember(self, tid: int, result: StoredResult) -> None:
        self._cache[tid] = result
        self._cache.move_to_end(tid)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def result(self, tid: int) -> StoredResult | None:
        r = self._cache.get(tid)
        if r is not None:
            return r
        self.commit()  # reads must see queued writes
        row = self.db.execute(
            "SELECT result_meta, result_frames FROM tasks WHERE tid=? AND state='finished'",
            (tid,)).fetchone()
        if row is None:
            return None
        r = StoredResult(_unpack(row[0]), _unpack(row[1]))
        self._remember(tid, r)
        return r

    def clear(self, tids: list[int] | None) -> tuple[int, list[int]]:
        self.commit()
        if tids is None:
            n = self.db.execute("DELETE FROM tasks WHERE state='finished'").rowcount
            self._cache.clear()
            self._n_ok = self._n_failed = 0
            return n, []
        dropped, missing = 0, []
        self.db.execute("BEGIN")
        for tid in tids:
            row = self.db.execute(
                "DELETE FROM tasks WHERE tid=? AND state='finished' RETURNING ok", (tid,)
            ).fetchone()
            if row is None:
                missing.append(tid)
                continue
            dropped += 1
            self._cache.pop(tid, None)
            if row[0]:
                self._n_ok -= 1
            else:
                self._n_failed -= 1
        self.db.execute("COMMIT")
        return dropped, missing

    def counts(self) -> tuple[int, int]:
        return self._n_ok, self._n_failed

    def finished_ids(self) -> tuple[list[int], list[int]]:
        self.commit()
        rows = self.db.execute("SELECT tid, ok FROM tasks WHERE state='finished' ORDER BY tid")
        ok: list[int] = []
        failed: list[int] = []
        for tid, good in rows:
            (ok if good else failed).append(tid)
        return ok, failed

    def commit(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self.db.execute("BEGIN")
        try:
            for sql, args in pending:
                self.db.execute(sql, args)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.db.close()


def open_store(db: str | None) -> MemoryStore | SQLiteStore:
    """`:memory:` or None for a MemoryStore, else a SQLiteStore at that path."""
    if db in (None, ":memory:"):
        return MemoryStore()
    return SQLiteStore(db)
