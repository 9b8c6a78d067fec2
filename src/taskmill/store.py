"""Where the controller keeps tasks and results: one small interface, `TaskStore`.

The controller asks the store for taskids, hands it each submitted task (its spec and opaque
payload frames), fetches a node's body to dispatch it, records each final result, and drops
results on `clear`. Results are opaque: the store never unpickles anything.

`MemoryStore` keeps everything in this process (results until cleared), for throw-away runs
(`--db :memory:`). `SQLiteStore` keeps it in a SQLite file in WAL mode, so a restarted
controller picks up where a killed one stopped.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack

from .wire import frame_len

MAX_TID = 2**63 - 1  # the largest id SQLite can hold

# How many submit keys (client id + request number) are remembered to de-duplicate resends.
SUBMIT_KEYS_KEPT = 100_000
# Submit keys older than this are forgotten when a SQLite store opens.
SUBMIT_KEY_AGE = 24 * 3600.0


def _compact(tids: list[int]) -> range | tuple[int, ...]:
    """A submit's taskids as kept in memory: a range when they run on by one, as the
    controller allocates them. (A list of a thousand ints costs ~40 KB, a range 48 bytes: the
    SUBMIT_KEYS_KEPT recent submits must not hold every taskid they ever gave out.)"""
    run = range(tids[0], tids[0] + len(tids)) if tids else range(0)
    return run if tids == list(run) else tuple(tids)


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
    def submitted(self, key: str, resent: bool = True) -> list[int] | None: ...
    def remember_submit(self, key: str, tids: list[int]) -> None: ...
    def finish(self, tid: int, result: StoredResult) -> None: ...
    def result(self, tid: int) -> StoredResult | None: ...
    def clear(self, tids: list[int] | None) -> tuple[int, list[int]]: ...
    def counts(self) -> tuple[int, int]: ...
    def finished_ids(self) -> tuple[list[int], list[int]]: ...
    def commit(self) -> None: ...
    def dirty(self) -> bool: ...
    def close(self) -> None: ...


class MemoryStore:
    """Tasks and results in this process's memory; nothing survives a restart."""

    def __init__(self) -> None:
        self._next = 0
        self._next_eid = 0
        self._submits: OrderedDict[str, range | tuple[int, ...]] = OrderedDict()
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

    def submitted(self, key: str, resent: bool = True) -> list[int] | None:
        tids = self._submits.get(key)
        return None if tids is None else list(tids)

    def remember_submit(self, key: str, tids: list[int]) -> None:
        self._submits[key] = _compact(tids)
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

    def dirty(self) -> bool:
        return False

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    tid INTEGER PRIMARY KEY,
    state TEXT NOT NULL,            -- queued | running | finished
    submitted REAL NOT NULL,
    spec BLOB,                      -- msgpack: nodes and after
    frames BLOB,                    -- the task's payload frames (NULL once finished)
    node INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    handed_over BLOB,
    engine INTEGER,
    ok INTEGER,
    result_meta BLOB,
    result_frames BLOB
);
-- WITHOUT ROWID: one B-tree (keyed by key) instead of a rowid table plus its key index.
CREATE TABLE IF NOT EXISTS submits (key TEXT PRIMARY KEY, tids BLOB NOT NULL, at REAL NOT NULL)
    WITHOUT ROWID;
-- (No index on state: each insert and finish would pay for it. A restart finds the unfinished
-- tasks from meta's low_tid, below which every task had finished: see SQLiteStore.commit.)
DROP INDEX IF EXISTS tasks_state;
"""

_INSERT = ("INSERT INTO tasks (tid, state, submitted, spec, frames) "
           "VALUES (?, 'queued', ?, ?, ?)")
_RUNNING = ("UPDATE tasks SET state='running', engine=?, node=?, attempts=?, tries=?, "
            "handed_over=? WHERE tid=?")
_FINISH = ("UPDATE tasks SET state='finished', ok=?, result_meta=?, result_frames=?, "
           "frames=NULL WHERE tid=?")
_SUBMIT = "INSERT OR REPLACE INTO submits VALUES (?, ?, ?)"
_WRITES = (_INSERT, _RUNNING, _FINISH, _SUBMIT)

# Frames at least this large are kept in files of their own beside the database: writing them
# is one copy into the page cache, dropping them one unlink, and neither goes through the WAL.
EXTERNAL_MIN = 64 * 1024
# The checkpointer copies the WAL into the database once it is larger than this.
CHECKPOINT_BYTES = 32 * 1024 * 1024
# A task's running mark is written only if it is still running this much later.
RUNNING_DELAY = 0.05
LOW_TID_EVERY = 1.0  # seconds between writes of meta's low_tid


_EMPTY_LIST = b"\x90"  # msgpack of []


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class SQLiteStore:
    """Tasks and results in a SQLite file (WAL): they survive a kill -9 of the controller.

    Writes are queued and run in one transaction at `commit()`, which the controller calls
    once per loop turn, before it sends the replies that depend on them (group commit). Active
    tasks are also kept in memory, for dispatch; finished results live on disk, with a cache
    bounded in entries and bytes, so memory stays flat however many results are kept. Large
    frames live in files in `<db>.blobs/`, written before the row that names them commits and
    removed only after the row that drops them commits. A background thread checkpoints the
    WAL, so the controller's thread never waits for that copy and its fsync; another one syncs
    each result file to disk and then drops its pages from the page cache (see _spill_loop).
    """

    def __init__(self, path: str, *, cache_size: int = 1024,
                 cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.blob_dir = Path(f"{path}.blobs")
        self.blob_dir.mkdir(mode=0o700, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # One Packer for this store's writes (cheaper than packb's Packer per call); the
        # store is used by one thread, the controller's.
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable against a process crash
        self.db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
        self.db.executescript(_SCHEMA)
        # Queued writes, one list of rows per statement, run with executemany at commit in
        # this order (a task's insert comes before its running mark and its finish).
        self._pending: dict[str, list[tuple[Any, ...]]] = {sql: [] for sql in _WRITES}
        self._dirty = False
        self._unlink_after_commit: list[Path] = []
        self._unwritten: dict[str, Any] = {}  # blob file name -> its bytes, until commit
        self._recent_submits: OrderedDict[str, range | tuple[int, ...]] = OrderedDict()
        self._running: dict[int, tuple[float, tuple[Any, ...]]] = {}  # held-back running marks
        self.running_delay = RUNNING_DELAY
        self._active: dict[int, StoredTask] = {}
        self._task_blobs: dict[int, bytes] = {}  # active tasks whose frames are in files
        self._cache: OrderedDict[int, tuple[StoredResult, int]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0
        row = self.db.execute("SELECT value FROM meta WHERE key='next_tid'").fetchone()
        top = self.db.execute("SELECT MAX(tid) FROM tasks").fetchone()[0]
        self._next = max(row[0] if row else 0, (top + 1) if top is not None else 0)
        row = self.db.execute("SELECT value FROM meta WHERE key='next_eid'").fetchone()
        self._next_eid = row[0] if row else 0
        self._written_eid = self._next_eid
        row = self.db.execute("SELECT value FROM meta WHERE key='low_tid'").fetchone()
        self._low_tid = row[0] if row else 0
        self._low_written = 0.0  # monotonic time low_tid was last written
        self.db.execute("DELETE FROM submits WHERE at < ?", (time.time() - SUBMIT_KEY_AGE,))
        self._n_ok, self._n_failed = (
            self.db.execute(
                "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM tasks "
                "WHERE state='finished'").fetchone())
        self._remove_orphan_blobs()
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                              name="taskmill-checkpoint", daemon=True)
        self._checkpointer.start()
        self._spill: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self.spilled = 0  # result files synced and dropped from the page cache so far
        self._spiller = threading.Thread(target=self._spill_loop, name="taskmill-spill",
                                         daemon=True)
        self._spiller.start()

    # -- frames ----------------------------------------------------------------------------
    def _frames_blob(self, tid: int, kind: str, frames: list[Any], sizes: list[int]) -> bytes:
        """Pack frames (of these sizes) for a row; large ones are named there and go to files
        at the next commit, before the row does (see _write_blobs)."""
        if not sizes or max(sizes) < EXTERNAL_MIN:  # the usual case: all small
            return self._pack([bytes(getattr(f, "buffer", f)) for f in frames])
        packed: list[Any] = []
        for i, f in enumerate(frames):
            buf = getattr(f, "buffer", f)
            if sizes[i] >= EXTERNAL_MIN:
                name = f"{tid}.{kind}.{i}"
                self._unwritten[name] = buf
                packed.append({"file": name})
            else:
                packed.append(bytes(buf))
        return self._pack(packed)

    def _write_blobs(self) -> None:
        """Write the files the queued rows name (at commit, before the rows).

        Not at add/finish time: a submit's tasks then reach their engines before their
        files are written (the controller sends to engines before it commits), so the write
        overlaps the engine's work instead of delaying it. A file dropped before it was
        written (its task finished within one commit) is never written."""
        for name, buf in self._unwritten.items():
            path = self.blob_dir / name
            with open(path, "wb") as out:
                out.write(buf)
            if ".result." in name:
                self._spill.put(path)
        self._unwritten.clear()

    def _frames_from_blob(self, blob: bytes | None) -> list[Any]:
        out = []
        for item in _unpack(blob) if blob else []:
            if isinstance(item, dict):
                out.append((self.blob_dir / item["file"]).read_bytes())
            else:
                out.append(item)
        return out

    def _drop_blobs(self, blob: bytes | None) -> None:
        for item in _unpack(blob) if blob else []:
            if isinstance(item, dict) and self._unwritten.pop(item["file"], None) is None:
                self._unlink_after_commit.append(self.blob_dir / item["file"])

    def _remove_orphan_blobs(self) -> None:
        """Files written for rows that never committed (the controller died in between)."""
        live: set[str] = set()
        for frames, results in self.db.execute("SELECT frames, result_frames FROM tasks"):
            for blob in (frames, results):
                for item in _unpack(blob) if blob else []:
                    if isinstance(item, dict):
                        live.add(item["file"])
        for f in self.blob_dir.iterdir():
            if f.name not in live:
                f.unlink(missing_ok=True)

    def _checkpoint_loop(self) -> None:
        con = sqlite3.connect(self.path, isolation_level=None)
        wal = Path(f"{self.path}-wal")
        try:
            while not self._closing.wait(0.5):
                try:
                    if wal.exists() and wal.stat().st_size > CHECKPOINT_BYTES:
                        con.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy: try again next turn
        finally:
            con.close()

    def _spill_loop(self) -> None:
        """Sync each result file, then drop its pages from the page cache.

        A result file lives until its result is cleared, so its pages would stay cached (and
        dirty, until writeback) for as long: the cache would grow by every large result, and
        each write would need fresh memory, which can cost far more than reusing pages (3 ms
        per MiB against 0.25 on the 2-core VM of benchmarks/results.md). Once synced, the pages are clean and can be
        dropped, and the next write reuses them. A read of a dropped result goes to the disk;
        recent results are in the store's own cache. The controller's thread never waits for
        this: the row naming the file is committed as soon as the write returns (durable
        against a crash of the process), and this adds durability against a crash of the
        machine."""
        while True:
            path = self._spill.get()
            if path is None:
                return
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # cleared (unlinked) already
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                self.spilled += 1
            except OSError:
                pass  # a file system without these: the pages stay cached, nothing is lost
            finally:
                os.close(fd)

    # -- ids -------------------------------------------------------------------------------
    def allocate(self) -> int:
        tid = self._next
        self._next += 1
        self._dirty = True
        return tid

    def allocate_engine(self) -> int:
        eid = self._next_eid
        self._next_eid += 1
        self._dirty = True
        return eid

    # -- tasks -----------------------------------------------------------------------------
    def add(self, task: StoredTask) -> None:
        self._active[task.tid] = task
        sizes = [frame_len(f) for f in task.frames]
        blob = self._frames_blob(task.tid, "task", task.frames, sizes)
        if sizes and max(sizes) >= EXTERNAL_MIN:
            self._task_blobs[task.tid] = blob  # to drop its files when the task finishes
        self._queue(_INSERT, (task.tid, task.submitted, self._pack(task.spec), blob))

    def task(self, tid: int) -> StoredTask | None:
        return self._active.get(tid)

    def mark_running(self, tid: int, engine: int, node: int, attempts: int, tries: int,
                     handed_over: list[int]) -> None:
        # Held back for RUNNING_DELAY: most tasks finish sooner, and then only their finish
        # is written. A controller killed meanwhile reruns such a task without counting the
        # attempt it lost (the task itself is never lost: its insert is on disk).
        self._running.pop(tid, None)  # (re-inserted: the dict stays in time order)
        self._running[tid] = (time.monotonic(),
                              (engine, node, attempts, tries,
                               self._pack(handed_over) if handed_over else _EMPTY_LIST, tid))
        self._dirty = True

    def unfinished(self) -> list[tuple[StoredTask, dict[str, Any]]]:
        """Every queued or running task, oldest first, with its scheduling counters."""
        rows = self.db.execute(
            "SELECT tid, state, submitted, spec, frames, node, attempts, tries, handed_over "
            "FROM tasks WHERE tid >= ? AND state != 'finished' ORDER BY tid",
            (self._low_tid,)).fetchall()
        out = []
        for tid, state, submitted, spec, frames, node, attempts, tries, handed in rows:
            task = StoredTask(tid, _unpack(spec), self._frames_from_blob(frames), submitted)
            self._task_blobs[tid] = frames
            self._active[tid] = task
            out.append((task, {"state": state, "node": node, "attempts": attempts,
                               "tries": tries, "handed_over": _unpack(handed) if handed else []}))
        return out

    def submitted(self, key: str, resent: bool = True) -> list[int] | None:
        # Keys of this controller's lifetime are in memory (maybe not yet committed); the
        # table holds those of earlier lifetimes, which only a resent submit can carry.
        tids = self._recent_submits.get(key)
        if tids is not None or not resent:
            return None if tids is None else list(tids)
        row = self.db.execute("SELECT tids FROM submits WHERE key=?", (key,)).fetchone()
        return _unpack(row[0]) if row else None

    def remember_submit(self, key: str, tids: list[int]) -> None:
        self._recent_submits[key] = _compact(tids)
        while len(self._recent_submits) > SUBMIT_KEYS_KEPT:
            self._recent_submits.popitem(last=False)
        self._queue(_SUBMIT, (key, self._pack(tids), time.time()))

    # -- results ---------------------------------------------------------------------------
    def finish(self, tid: int, result: StoredResult) -> None:
        self._active.pop(tid, None)
        self._running.pop(tid, None)
        blobs = self._task_blobs.pop(tid, None)
        if blobs is not None:
            self._drop_blobs(blobs)
        sizes = [frame_len(f) for f in result.frames]
        blob = self._frames_blob(tid, "result", result.frames, sizes)
        self._queue(_FINISH, (int(result.ok), self._pack(result.meta), blob, tid))
        if result.ok:
            self._n_ok += 1
        else:
            self._n_failed += 1
        self._remember(tid, result, sum(sizes))

    def _remember(self, tid: int, result: StoredResult, size: int | None = None) -> None:
        if size is None:
            size = sum(frame_len(f) for f in result.frames)
        if size > self._cache_bytes // 4:
            return  # a huge result is read back from disk when asked for
        old = self._cache.pop(tid, None)
        if old is not None:
            self._cached_bytes -= old[1]
        self._cache[tid] = (result, size)
        self._cached_bytes += size
        while len(self._cache) > self._cache_size or self._cached_bytes > self._cache_bytes:
            _, (_, dropped) = self._cache.popitem(last=False)
            self._cached_bytes -= dropped

    def _forget(self, tid: int) -> None:
        old = self._cache.pop(tid, None)
        if old is not None:
            self._cached_bytes -= old[1]

    def result(self, tid: int) -> StoredResult | None:
        hit = self._cache.get(tid)
        if hit is not None:
            return hit[0]
        if not 0 <= tid <= MAX_TID:
            return None  # no such task (and SQLite could not even look it up)
        self.commit()  # reads must see queued writes
        row = self.db.execute(
            "SELECT result_meta, result_frames FROM tasks WHERE tid=? AND state='finished'",
            (tid,)).fetchone()
        if row is None:
            return None
        r = StoredResult(_unpack(row[0]), self._frames_from_blob(row[1]))
        self._remember(tid, r)
        return r

    def clear(self, tids: list[int] | None) -> tuple[int, list[int]]:
        self.commit()
        # Clearing may drop the highest taskids: the next one is kept in `meta` first (it is
        # otherwise known from the highest row), so no taskid is ever given out twice.
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_tid', ?)", (self._next,))
        if tids is None:
            for (blob,) in self.db.execute(
                    "SELECT result_frames FROM tasks WHERE state='finished'"):
                self._drop_blobs(blob)
            n = self.db.execute("DELETE FROM tasks WHERE state='finished'").rowcount
            self._cache.clear()
            self._cached_bytes = 0
            self._n_ok = self._n_failed = 0
            self._unlink_dropped()
            return n, []
        dropped, missing = 0, []
        self.db.execute("BEGIN")
        try:
            for tid in tids:
                row = None
                if 0 <= tid <= MAX_TID:
                    row = self.db.execute(
                        "DELETE FROM tasks WHERE tid=? AND state='finished' "
                        "RETURNING ok, result_frames", (tid,)).fetchone()
                if row is None:
                    missing.append(tid)
                    continue
                dropped += 1
                self._drop_blobs(row[1])
                self._forget(tid)
                if row[0]:
                    self._n_ok -= 1
                else:
                    self._n_failed -= 1
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self._unlink_after_commit.clear()
            raise
        self._unlink_dropped()
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

    def dirty(self) -> bool:
        return self._dirty

    def _queue(self, sql: str, row: tuple[Any, ...]) -> None:
        self._pending[sql].append(row)
        self._dirty = True

    def commit(self, *, everything: bool = False) -> None:
        """Run the queued writes in one transaction (running marks once RUNNING_DELAY old)."""
        if not self._dirty:
            return
        self._write_blobs()  # (first: if a write fails, everything queued stays queued)
        if self._running:
            due = time.monotonic() - (0.0 if everything else self.running_delay)
            running = self._pending[_RUNNING]
            while self._running:
                tid, (at, row) = next(iter(self._running.items()))
                if at > due:
                    break  # (oldest first)
                del self._running[tid]
                running.append(row)
        self._dirty = bool(self._running)
        self.db.execute("BEGIN")
        try:
            for sql, rows in self._pending.items():
                if rows:
                    self.db.executemany(sql, rows)
                    rows.clear()
            if self._next_eid != self._written_eid:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_eid', ?)",
                                (self._next_eid,))
                self._written_eid = self._next_eid
            now = time.monotonic()
            if everything or now - self._low_written >= LOW_TID_EVERY:
                # Every task below this had finished: a restart looks only above it.
                low = min(self._active) if self._active else self._next
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('low_tid', ?)", (low,))
                self._low_written = now
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self._unlink_dropped()

    def _unlink_dropped(self) -> None:
        for path in self._unlink_after_commit:
            path.unlink(missing_ok=True)
        self._unlink_after_commit.clear()

    def close(self) -> None:
        try:
            self._dirty = True
            self.commit(everything=True)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_tid', ?)", (self._next,))
        finally:
            self._closing.set()
            self._spill.put(None)
            self._checkpointer.join(timeout=5)
            self._spiller.join(timeout=5)
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self.db.close()


def open_store(db: str | None) -> MemoryStore | SQLiteStore:
    """`:memory:` or None for a MemoryStore, else a SQLiteStore at that path."""
    if db in (None, ":memory:"):
        return MemoryStore()
    return SQLiteStore(db)
