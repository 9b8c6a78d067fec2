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
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack

from .errors import StoreError
from .wire import frame_len

log = logging.getLogger("taskmill.store")

MAX_TID = 2**63 - 1  # the largest id SQLite can hold

# How many submit keys (client id + request number) are remembered to de-duplicate resends.
SUBMIT_KEYS_KEPT = 100_000
# Submit keys older than this are forgotten when a SQLite store opens.
SUBMIT_KEY_AGE = 24 * 3600.0
# Rows of engines that hold no running task are forgotten this long after they registered.
ENGINE_ROW_AGE = 24 * 3600.0


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
    def allocate_engine(self, uuid: str) -> int: ...
    def add(self, task: StoredTask) -> None: ...
    def task(self, tid: int) -> StoredTask | None: ...
    def mark_running(self, tid: int, engine: int, node: int, attempts: int, tries: int,
                     handed_over: list[int]) -> None: ...
    def unfinished(self) -> list[tuple[StoredTask, dict[str, Any]]]: ...
    def submitted(self, key: str, resent: bool = True) -> list[int] | None: ...
    def remember_submit(self, key: str, tids: list[int]) -> None: ...
    def withdraw(self, tids: list[int], key: str | None = None) -> None: ...
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

    def allocate_engine(self, uuid: str = "") -> int:
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

    def withdraw(self, tids: list[int], key: str | None = None) -> None:
        for tid in tids:
            self._active.pop(tid, None)
            r = self._results.pop(tid, None)
            if r is not None:
                self._n_ok -= r.ok
        if key is not None:
            self._submits.pop(key, None)

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
-- Which engine process (its uuid) an engine id was given to: a restarted controller knows
-- by it the engines that come back still running the tasks it had handed them.
CREATE TABLE IF NOT EXISTS engines (eid INTEGER PRIMARY KEY, uuid TEXT NOT NULL,
    registered REAL NOT NULL);
-- (No index on state: each insert and finish would pay for it. A restart finds the unfinished
-- tasks from meta's low_tid, below which every task had finished: see SQLiteStore.commit.)
DROP INDEX IF EXISTS tasks_state;
"""

# A task's row goes in whole: a task dispatched (or even finished) before its first commit
# is inserted in that state, with no UPDATE after its INSERT.
_INSERT = ("INSERT INTO tasks (tid, state, submitted, spec, frames, node, attempts, tries, "
           "handed_over, engine, ok, result_meta, result_frames) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_RUNNING = ("UPDATE tasks SET state='running', engine=?, node=?, attempts=?, tries=?, "
            "handed_over=? WHERE tid=?")
_FINISH = ("UPDATE tasks SET state='finished', ok=?, result_meta=?, result_frames=?, "
           "frames=NULL WHERE tid=?")
_SUBMIT = "INSERT OR REPLACE INTO submits VALUES (?, ?, ?)"
_ENGINE = "INSERT OR REPLACE INTO engines VALUES (?, ?, ?)"
# Positions in an insert row.
_STATE, _FRAMES, _NODE, _OK = 1, 4, 5, 10

# Frames at least this large are kept in files of their own beside the database: writing them
# is one copy into the page cache, dropping them one unlink, and neither goes through the WAL.
EXTERNAL_MIN = 64 * 1024
# The checkpointer copies the WAL into the database once it is larger than this.
CHECKPOINT_BYTES = 32 * 1024 * 1024
LOW_TID_EVERY = 1.0  # seconds between writes of meta's low_tid
# How long a commit waits for a lock another process holds on the database before it fails
# (and is tried again later): the controller's loop must not stall behind it.
BUSY_TIMEOUT = 0.1
OPEN_TIMEOUT = 2.0  # ... and how long opening the store waits for it


_EMPTY_LIST = b"\x90"  # msgpack of []


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _hold_lock(path: str) -> int:
    """Take the store's exclusive lock (`<path>.lock`, flock) for this process's life.

    The kernel drops it when the process dies, however it dies, so a kill -9 leaves no stale
    lock; the pid written inside only names the holder in the error a second controller gets.
    """
    lock_path = f"{path}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StoreError(f"cannot create the task store's lock file {lock_path}: "
                         f"{e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(
            f"the task store {path} is in use by another controller (pid {holder}); one store "
            "serves one controller: stop that one first (`taskmill cluster stop`, or kill "
            f"{holder}), or give this controller a store of its own (--db PATH)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _disk_note(path: str) -> str:
    """' (the disk holding it has N bytes free)' when that is little, else ''."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return ""
    return f" (the disk holding it has {free:,} bytes free)" if free < LOW_DISK else ""


def _open_error(path: str, e: BaseException) -> StoreError:
    text = str(e) + _disk_note(path)
    if "locked" in text or "busy" in text:
        return StoreError(
            f"the task store {path} is locked by another process ({text}); close whatever "
            "holds it (e.g. a sqlite3 shell inside a transaction) and start again")
    if isinstance(e, sqlite3.DatabaseError) and ("not a database" in text
                                                 or "malformed" in text or "corrupt" in text):
        return StoreError(
            f"the task store {path} is damaged or not a taskmill store ({text}); move it aside "
            "to keep it and start with an empty store, or give another --db")
    return StoreError(f"cannot open the task store {path}: {text}")


LOW_DISK = 16 * 1024 * 1024  # bytes free below which a store error names the free space


class SQLiteStore:
    """Tasks and results in a SQLite file (WAL): they survive a kill -9 of the controller.

    Writes are queued and run in one transaction at `commit()`, which the controller calls
    once per loop turn, before it sends anything that depends on them (group commit). Active
    tasks are also kept in memory, for dispatch; finished results live on disk, with a cache
    bounded in entries and bytes, so memory stays flat however many results are kept. Large
    frames live in files in `<db>.blobs/`, written before the row that names them commits and
    removed only after the row that drops them commits. A background thread checkpoints the
    WAL, so the controller's thread never waits for that copy and its fsync; another one syncs
    each result file to disk and then drops its pages from the page cache (see _spill_loop).
    The database and its lock file are created with mode 0600, the blob folder 0700.
    """

    def __init__(self, path: str, *, cache_size: int = 1024,
                 cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self._lock_fd: int | None = _hold_lock(path)
        try:
            self._open(cache_size, cache_bytes)
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise

    def _open(self, cache_size: int, cache_bytes: int) -> None:
        path = self.path
        try:
            # Created 0600 before SQLite opens it (its -wal and -shm files take that mode).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self.blob_dir = Path(f"{path}.blobs")
            self.blob_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the task store {path}: {e.strerror or e}") from None
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                      timeout=OPEN_TIMEOUT)
        except sqlite3.Error as e:
            raise _open_error(path, e) from None
        try:
            self._read_state()
        except (sqlite3.Error, OSError, ValueError) as e:
            self.db.close()
            raise _open_error(path, e) from None
        self.db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        # One Packer for this store's writes (cheaper than packb's Packer per call); the
        # store is used by one thread, the controller's.
        self._pack = msgpack.Packer(use_bin_type=True).pack
        # Queued writes, run at commit in this order: inserts (whole rows: a later running
        # mark or finish of a row not yet written changes it in place), running marks,
        # finishes, submit keys, engines. Keyed by taskid (or key, engine id), so that a
        # refused submit's rows can be taken back.
        self._ins: dict[int, list[Any]] = {}
        self._run: dict[int, tuple[Any, ...]] = {}
        self._fin: dict[int, tuple[Any, ...]] = {}
        self._subs: dict[str, tuple[Any, ...]] = {}
        self._eng: dict[int, tuple[Any, ...]] = {}
        self._unsaved: dict[int, StoredResult] = {}  # finished, not yet committed
        self._dirty = False
        self._unlink_after_commit: list[Path] = []
        self._unwritten: dict[str, Any] = {}  # blob file name -> its bytes, until commit
        self._recent_submits: OrderedDict[str, range | tuple[int, ...]] = OrderedDict()
        self._active: dict[int, StoredTask] = {}
        self._task_blobs: dict[int, bytes] = {}  # active tasks whose frames are in files
        self._cache: OrderedDict[int, tuple[StoredResult, int]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0
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

    def _read_state(self) -> None:
        db = self.db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable against a process crash
        db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
        db.executescript(_SCHEMA)

        def meta(key: str) -> int | None:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return row[0] if row else None

        top = db.execute("SELECT MAX(tid) FROM tasks").fetchone()[0]
        self._next = max(meta("next_tid") or 0, (top + 1) if top is not None else 0)
        top_eid = db.execute("SELECT MAX(eid) FROM engines").fetchone()[0]
        self._next_eid = max(meta("next_eid") or 0, (top_eid + 1) if top_eid is not None else 0)
        self._written_eid = self._next_eid
        self._low_tid = meta("low_tid") or 0
        self._low_written = 0.0  # monotonic time low_tid was last written
        now = time.time()
        db.execute("BEGIN")
        db.execute("DELETE FROM submits WHERE at < ?", (now - SUBMIT_KEY_AGE,))
        db.execute("DELETE FROM engines WHERE registered < ? AND eid NOT IN "
                   "(SELECT engine FROM tasks WHERE tid >= ? AND state='running' "
                   "AND engine IS NOT NULL)", (now - ENGINE_ROW_AGE, self._low_tid))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('next_eid', ?)", (self._next_eid,))
        db.execute("COMMIT")
        self._n_ok, self._n_failed = db.execute(
            "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM tasks "
            "WHERE state='finished'").fetchone()

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

        A file dropped before it was written (its task finished within one commit) is never
        written. If a write fails, every name stays queued: the next commit writes them all
        (a file written twice is the same file)."""
        for name, buf in self._unwritten.items():
            path = self.blob_dir / name
            with open(path, "wb") as out:
                out.write(buf)
        for name in self._unwritten:
            if ".result." in name:
                self._spill.put(self.blob_dir / name)
        self._unwritten.clear()

    def _frames_from_blob(self, blob: bytes | None) -> list[Any]:
        out = []
        for item in _unpack(blob) if blob else []:
            if isinstance(item, dict):
                out.append((self.blob_dir / item["file"]).read_bytes())
            else:
                out.append(item)
        return out

    def _drop_blobs(self, blob: bytes | None, *, now: bool = False) -> None:
        """Forget the files a row's frames name: unwritten ones are never written; written
        ones are removed after the next commit (or `now`, for rows that never committed)."""
        for item in _unpack(blob) if blob else []:
            if isinstance(item, dict) and self._unwritten.pop(item["file"], None) is None:
                path = self.blob_dir / item["file"]
                if now:
                    path.unlink(missing_ok=True)
                else:
                    self._unlink_after_commit.append(path)

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
        return tid

    def allocate_engine(self, uuid: str = "") -> int:
        eid = self._next_eid
        self._next_eid += 1
        self._eng[eid] = (eid, uuid, time.time())
        self._dirty = True
        return eid

    # -- tasks -----------------------------------------------------------------------------
    def add(self, task: StoredTask) -> None:
        self._active[task.tid] = task
        sizes = [frame_len(f) for f in task.frames]
        blob = self._frames_blob(task.tid, "task", task.frames, sizes)
        if sizes and max(sizes) >= EXTERNAL_MIN:
            self._task_blobs[task.tid] = blob  # to drop its files when the task finishes
        self._ins[task.tid] = [task.tid, "queued", task.submitted, self._pack(task.spec), blob,
                               0, 0, 0, None, None, None, None, None]
        self._dirty = True

    def task(self, tid: int) -> StoredTask | None:
        return self._active.get(tid)

    def mark_running(self, tid: int, engine: int, node: int, attempts: int, tries: int,
                     handed_over: list[int]) -> None:
        """A dispatch: written at the next commit, which comes before the task is sent."""
        handed = self._pack(handed_over) if handed_over else _EMPTY_LIST
        row = self._ins.get(tid)
        if row is not None:
            row[_STATE] = "running"
            row[_NODE:_OK] = [node, attempts, tries, handed, engine]
        else:
            self._run[tid] = (engine, node, attempts, tries, handed, tid)
        self._dirty = True

    def unfinished(self) -> list[tuple[StoredTask, dict[str, Any]]]:
        """Every queued or running task, oldest first, with its scheduling counters and, for
        a running one, the engine id and engine uuid it was handed to."""
        rows = self.db.execute(
            "SELECT t.tid, t.state, t.submitted, t.spec, t.frames, t.node, t.attempts, t.tries, "
            "t.handed_over, t.engine, e.uuid FROM tasks t LEFT JOIN engines e ON e.eid = t.engine "
            "WHERE t.tid >= ? AND t.state != 'finished' ORDER BY t.tid",
            (self._low_tid,)).fetchall()
        out = []
        for tid, state, submitted, spec, frames, node, attempts, tries, handed, eng, uuid in rows:
            task = StoredTask(tid, _unpack(spec), self._frames_from_blob(frames), submitted)
            self._task_blobs[tid] = frames
            self._active[tid] = task
            out.append((task, {"state": state, "node": node, "attempts": attempts,
                               "tries": tries, "handed_over": _unpack(handed) if handed else [],
                               "engine": eng if state == "running" else None,
                               "engine_uuid": uuid if state == "running" else None}))
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
        self._subs[key] = (key, self._pack(tids), time.time())
        self._dirty = True

    def withdraw(self, tids: list[int], key: str | None = None) -> None:
        """Take back tasks whose rows have not been committed (a refused submit): their rows,
        running marks, results and files are dropped as if they had never been added. Their
        taskids are not given out again."""
        for tid in tids:
            if tid in self._ins:
                row = self._ins.pop(tid)
                self._drop_blobs(row[_FRAMES], now=True)
                self._drop_blobs(row[12], now=True)
            self._task_blobs.pop(tid, None)
            self._active.pop(tid, None)
            self._run.pop(tid, None)
            fin = self._fin.pop(tid, None)
            if fin is not None:
                self._drop_blobs(fin[2], now=True)
            r = self._unsaved.pop(tid, None)
            if r is not None:
                if r.ok:
                    self._n_ok -= 1
                else:
                    self._n_failed -= 1
                self._forget(tid)
        if key is not None:
            self._recent_submits.pop(key, None)
            self._subs.pop(key, None)
        self._dirty = bool(self._ins or self._run or self._fin or self._subs or self._eng
                           or self._unwritten)

    # -- results ---------------------------------------------------------------------------
    def finish(self, tid: int, result: StoredResult) -> None:
        self._active.pop(tid, None)
        self._run.pop(tid, None)  # (the finish says all a restart needs)
        blobs = self._task_blobs.pop(tid, None)
        if blobs is not None:
            self._drop_blobs(blobs)
        sizes = [frame_len(f) for f in result.frames]
        blob = self._frames_blob(tid, "result", result.frames, sizes)
        row = self._ins.get(tid)
        if row is not None:  # its insert is not written yet: it goes in finished
            row[_STATE] = "finished"
            row[_FRAMES] = None
            row[_OK:] = [int(result.ok), self._pack(result.meta), blob]
        else:
            self._fin[tid] = (int(result.ok), self._pack(result.meta), blob, tid)
        self._unsaved[tid] = result
        self._dirty = True
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
        unsaved = self._unsaved.get(tid)
        if unsaved is not None:
            return unsaved
        if not 0 <= tid <= MAX_TID:
            return None  # no such task (and SQLite could not even look it up)
        row = self.db.execute(
            "SELECT result_meta, result_frames FROM tasks WHERE tid=? AND state='finished'",
            (tid,)).fetchone()
        if row is None:
            return None
        r = StoredResult(_unpack(row[0]), self._frames_from_blob(row[1]))
        self._remember(tid, r)
        return r

    def clear(self, tids: list[int] | None) -> tuple[int, list[int]]:
        """Drop finished results. Commits what is queued first, then deletes in a transaction
        of its own; StoreError (and nothing dropped) if either fails."""
        self.commit()
        db = self.db
        dropped_rows: list[tuple[int, int, bytes | None]] = []
        missing: list[int] = []
        try:
            db.execute("BEGIN")
            # Clearing may drop the highest taskids: the next one is kept in `meta` (it is
            # otherwise known from the highest row), so no taskid is ever given out twice.
            db.execute("INSERT OR REPLACE INTO meta VALUES ('next_tid', ?)", (self._next,))
            if tids is None:
                dropped_rows = db.execute(
                    "DELETE FROM tasks WHERE state='finished' "
                    "RETURNING tid, ok, result_frames").fetchall()
            else:
                for tid in tids:
                    row = None
                    if 0 <= tid <= MAX_TID:
                        row = db.execute(
                            "DELETE FROM tasks WHERE tid=? AND state='finished' "
                            "RETURNING tid, ok, result_frames", (tid,)).fetchone()
                    if row is None:
                        missing.append(tid)
                    else:
                        dropped_rows.append(row)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback(e)
            raise StoreError(f"the task store {self.path} cannot write: {e} (nothing was "
                             "cleared)") from None
        for tid, ok, blob in dropped_rows:
            self._drop_blobs(blob)
            self._forget(tid)
            if ok:
                self._n_ok -= 1
            else:
                self._n_failed -= 1
        self._unlink_dropped()
        return len(dropped_rows), missing

    def counts(self) -> tuple[int, int]:
        return self._n_ok, self._n_failed

    def finished_ids(self) -> tuple[list[int], list[int]]:
        ok: list[int] = []
        failed: list[int] = []
        for tid, good in self.db.execute("SELECT tid, ok FROM tasks WHERE state='finished'"):
            (ok if good else failed).append(tid)
        for tid, r in self._unsaved.items():  # finished, not yet committed
            (ok if r.ok else failed).append(tid)
        ok.sort()
        failed.sort()
        return ok, failed

    def dirty(self) -> bool:
        return self._dirty

    def commit(self, *, everything: bool = False) -> None:
        """Write every queued row in one transaction, or none of them.

        On failure every row stays queued and StoreError names the cause; the next commit
        tries them all again. A failed ROLLBACK is logged, never raised in the cause's place.
        `everything` also writes meta's low_tid now (on close)."""
        if not self._dirty:
            return
        try:
            self._write_blobs()  # (first: no row may name a file that is not written)
        except OSError as e:
            raise StoreError(f"the task store cannot write a file in {self.blob_dir}: "
                             f"{e.strerror or e}") from None
        db = self.db
        try:
            if db.in_transaction:  # a ROLLBACK that failed earlier left one open
                db.execute("ROLLBACK")
            db.execute("BEGIN")
            if self._ins:
                db.executemany(_INSERT, self._ins.values())
            if self._run:
                db.executemany(_RUNNING, self._run.values())
            if self._fin:
                db.executemany(_FINISH, self._fin.values())
            if self._subs:
                db.executemany(_SUBMIT, self._subs.values())
            if self._eng:
                db.executemany(_ENGINE, self._eng.values())
            if self._next_eid != self._written_eid:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('next_eid', ?)",
                           (self._next_eid,))
            now = time.monotonic()
            if everything or now - self._low_written >= LOW_TID_EVERY:
                # Every task below this had finished: a restart looks only above it.
                low = min(self._active) if self._active else self._next
                db.execute("INSERT OR REPLACE INTO meta VALUES ('low_tid', ?)", (low,))
            db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback(e)
            raise StoreError(f"the task store {self.path} cannot write: {e}"
                             f"{_disk_note(self.path)}") from None
        if everything or now - self._low_written >= LOW_TID_EVERY:
            self._low_written = now
        self._written_eid = self._next_eid
        self._ins.clear()
        self._run.clear()
        self._fin.clear()
        self._subs.clear()
        self._eng.clear()
        self._unsaved.clear()
        self._dirty = False
        self._unlink_dropped()

    def _rollback(self, cause: BaseException) -> None:
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as e:
            log.error("the task store %s: ROLLBACK failed (%s) after a write failed (%s); the "
                      "queued rows are kept and tried again", self.path, e, cause)

    def _unlink_dropped(self) -> None:
        for path in self._unlink_after_commit:
            path.unlink(missing_ok=True)
        self._unlink_after_commit.clear()

    def close(self) -> None:
        try:
            self._dirty = True
            self.commit(everything=True)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_tid', ?)", (self._next,))
        except (StoreError, sqlite3.Error) as e:
            log.error("the task store %s could not write on close: %s (what was not written "
                      "is as if the controller had been killed)", self.path, e)
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
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # (releases the lock)
                self._lock_fd = None


def open_store(db: str | None) -> MemoryStore | SQLiteStore:
    """`:memory:` or None for a MemoryStore, else a SQLiteStore at that path (StoreError with
    one clear line if it is in use, locked, damaged or cannot be created)."""
    if db in (None, ":memory:"):
        return MemoryStore()
    return SQLiteStore(db)
