"""`SQLiteStore`: tasks and results in a SQLite file (WAL) that outlives the controller.

The controller's thread queues whole rows (`add`, `mark_running`, `finish`, submit keys,
engines) and `commit()` writes them in one transaction, once per loop turn (group commit):
first the files of large frames (files.py), then the rows (schema.py's statements), and only
then are the files of dropped rows unlinked. Active tasks are also kept in memory, for
dispatch; finished results are read back from disk through a bounded cache (cache.py). Opening
takes the store's lock (schema.py), reads the counters and ids back, and removes orphan files.
Two threads of its own: one checkpoints the WAL (wal.py: a commit finishes what it copied,
so that the WAL restarts), one syncs result files (files.py).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from ..errors import StoreError
from ..wire import frame_len
from .active import ActiveTasks, Fits, read_fitting, read_unfinished
from .base import (
    MAX_TID,
    IdLeases,
    Loaded,
    StoredResult,
    StoredTask,
    unpack,
)
from .cache import ResultCache
from .files import EXTERNAL_MIN, FrameFiles
from .keys import SubmitKeys
from .lease_rows import LeaseRows
from .retiring import RetiringEngines
from .schema import (
    BUSY_TIMEOUT,
    EMPTY_LIST,
    FINISH_TASK,
    FRAMES,
    MARK_RUNNING,
    NODE,
    OK,
    REMEMBER_ENGINE,
    REMEMBER_SUBMIT,
    RESULT_FRAMES,
    SCHEMA,
    SELECT_QUEUED,
    SELECT_UNFINISHED,
    SET_META,
    STATE,
    check_key,
    clear_rows,
    connect,
    disk_note,
    forget_old_rows,
    hold_lock,
    insert_rows,
    open_error,
    read_counters,
    read_task,
    roll_back,
    store_identity,
    unwritten_error,
    write_all,
)
from .wal import WAL_BYTES, WalKeeper

log = logging.getLogger("taskmill.store")

LOW_TID_EVERY = 1.0  # seconds between writes of meta's low_tid


class SQLiteStore(IdLeases):
    """Tasks and results in a SQLite file (WAL): they survive a kill -9 of the controller.
    See the module docstring; files are created with mode 0600, the blob folder 0700."""

    durable = True  # (the controller's backlog needs a store on disk: controller/backlog.py)

    def __init__(self, path: str, *, cache_size: int = 1024,
                 cache_bytes: int = 64 * 1024 * 1024, wal_bytes: int = WAL_BYTES) -> None:
        """`wal_bytes`: the WAL's size that starts a checkpoint (wal.py)."""
        self.path = path
        self._lock_fd: int | None = hold_lock(path)
        try:
            self._open(cache_size, cache_bytes, wal_bytes)
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise

    def check_key(self, key: bytes) -> None:
        check_key(self.db, key, self.path)

    def _open(self, cache_size: int, cache_bytes: int, wal_bytes: int) -> None:
        path = self.path
        try:
            # Created 0600 before SQLite opens it (its -wal and -shm files take that mode).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self.blob_dir = Path(f"{path}.blobs")
            self.blob_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the task store {path}: {e.strerror or e}") from None
        try:
            self.db = connect(path)
        except sqlite3.Error as e:
            raise open_error(path, e) from None
        try:
            self._read_state()
        except (sqlite3.Error, OSError, ValueError) as e:
            self.db.close()
            raise open_error(path, e) from None
        self.db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        # msgspec's msgpack encoder for this store's writes: the bytes msgpack's
        # Packer(use_bin_type=True) gives for every type a row holds (None, bool, int, float,
        # str, bytes, lists, dicts), in a third to a half of its time (a task's spec 1.37 ->
        # 0.48 µs, a result's metadata 0.69 -> 0.27); rows are read back with msgpack.
        self._pack = msgspec.msgpack.Encoder().encode
        # Queued writes, run at commit in this order: inserts (whole rows: a later running
        # mark or finish of a row not yet written changes it in place), running marks,
        # finishes, submit keys, engines. Keyed by taskid (or key, engine id), so that a
        # refused submit's rows can be taken back.
        self._ins: dict[int, list[Any]] = {}
        self._run: dict[int, tuple[Any, ...]] = {}
        self._fin: dict[int, tuple[Any, ...]] = {}
        self._eng: dict[int, tuple[Any, ...]] = {}
        self._unsaved: dict[int, StoredResult] = {}  # finished, not yet committed
        self._dirty = False
        self.files = FrameFiles(self.blob_dir, self._pack)  # large frames, in files
        self.keys = SubmitKeys(self._pack)  # (its queued rows: the commit's "submit keys")
        self.retiring = RetiringEngines()  # (its queued rows: the commit's last)
        self.lease_rows = LeaseRows()
        self._active = ActiveTasks()  # (and their payload bytes: `held_bytes`)
        self._task_blobs: dict[int, bytes] = {}  # active tasks whose frames are in files
        self.cache = ResultCache(cache_size, cache_bytes)  # recent finished results
        self.files.remove_orphans(self.db.execute("SELECT frames, result_frames FROM tasks"))
        self._closing = threading.Event()
        self.wal = WalKeeper(self.db, path, self._closing, wal_bytes, self, self._lock_fd)
        self.wal.start()
        self.files.start()

    def _read_state(self) -> None:
        db = self.db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable against a process crash
        db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
        db.executescript(SCHEMA)
        self._next, self._next_eid, self._low_tid = read_counters(db)
        self.store_id = store_identity(db)  # (a controller's session names it)
        # (A lease's end is written before it is answered.)
        self._written_next, self._written_eid = self._next, self._next_eid
        # The controller's Leases takes these up (read before old rows go: each one's next
        # unused id is past its highest stored).
        self.stored_leases = LeaseRows.read(db)
        self._leased = {start: end for start, end, _, _ in self.stored_leases}
        self._low_written = 0.0  # monotonic time low_tid was last written
        self._looked = False  # `unfinished` read the tasks above low_tid (see commit)
        forget_old_rows(db, time.time(), self._low_tid, self._next_eid)
        self._n_ok, self._n_failed = db.execute(
            "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM tasks "
            "WHERE state='finished'").fetchone()

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
    def add(self, task: StoredTask, keep: bool = True) -> None:
        """`keep`: also in memory, for dispatch (not a task of the backlog)."""
        sizes = list(map(frame_len, task.frames))
        if keep:
            self._active.put(task, sum(sizes))
        blob = self.files.pack(task.tid, "task", task.frames, sizes)
        if sizes and max(sizes) >= EXTERNAL_MIN:
            self._task_blobs[task.tid] = blob  # to drop its files when the task finishes
        self._ins[task.tid] = [task.tid, "queued", task.submitted, self._pack(task.spec), blob,
                               0, 0, 0, None, None, None, None, None]
        self._dirty = True

    def task(self, tid: int) -> StoredTask | None:
        return self._active.get(tid)

    @property
    def held_bytes(self) -> int:  # (payload bytes of the tasks kept in memory: backlog.py)
        return self._active.bytes

    def mark_running(self, tid: int, engine: int | None, node: int, attempts: int, tries: int,
                     handed_over: list[int]) -> None:
        """A dispatch, written by the next commit (before the send); engine None: queued again."""
        handed = self._pack(handed_over) if handed_over else EMPTY_LIST
        row = self._ins.get(tid)
        if row is not None:
            row[STATE] = "running" if engine is not None else "queued"
            row[NODE:OK] = [node, attempts, tries, handed, engine]
        else:
            self._run[tid] = (engine, node, attempts, tries, handed, tid)
        self._dirty = True

    def unfinished(self, queued_max: int | None = None, held: Any = None,
                   fits: Fits | None = None) -> list[Loaded]:
        """Every queued or running task, oldest first, with its counters (schema.read_task);
        the queued ones past the first `queued_max` (or `fits`: see active.py) only as taskid
        and `after`, to `held.hold` (the controller's backlog)."""
        out = read_unfinished(self.db.execute(SELECT_UNFINISHED, (self._low_tid,)),
                              self._loaded, queued_max, held, fits, self.files.size, self._active)
        self._looked = True
        return out

    def load_queued(self, tids: list[int], keep: bool = True, pending: bool = False,
                    fits: Fits | None = None) -> tuple[list[Loaded], int]:
        """The queued rows of `tids` (sorted) read back as `unfinished` reads them (`keep`:
        into memory, for dispatch), and how many of `tids` were looked at: up to the first
        whose row is not committed yet, or (`pending`) all: those read from memory; or up to
        the first that `fits` refuses (the backlog's rule: active.Fits, read_fitting)."""
        if pending and any(t in self._ins for t in tids):
            rows = [(*row[:OK], None) for t in tids if (row := self._ins.get(t))
                    and row[STATE] == "queued"]  # (shaped as SELECT_QUEUED's)
            done = self.load_queued([t for t in tids if t not in self._ins], keep)[0]
            read = self._loaded if keep else (lambda r: read_task(r, self.files.read))
            return sorted([*done, *map(read, rows)], key=lambda x: x[0].tid), len(tids)
        cut = next((i for i, t in enumerate(tids) if t in self._ins), len(tids))
        if not cut:
            return [], 0
        wanted = set(tids[:cut])
        rows = (r for r in self.db.execute(SELECT_QUEUED, (tids[0], tids[cut - 1]))
                if r[0] in wanted)
        read = self._loaded if keep else (lambda r: read_task(r, self.files.read))
        return read_fitting(rows, tids, cut, read, self.files.size, fits, self._active.bytes)

    def _loaded(self, row: tuple[Any, ...]) -> tuple[StoredTask, dict[str, Any]]:
        task, c = read_task(row, self.files.read)
        self._task_blobs[task.tid] = row[4]
        self._active.put(task, sum(map(frame_len, task.frames)))
        return task, c

    def submitted(self, key: str, resent: bool = True) -> list[int] | None:
        return self.keys.lookup(self.db, key, resent)

    def forget_keys(self, prefix: str) -> None:
        self.keys.forget(prefix)

    def retire_engine(self, uuid: str, retiring: bool = True) -> None:
        self.retiring.mark(uuid, retiring)
        self._dirty = True

    def retiring_engines(self) -> set[str]:
        return self.retiring.read(self.db)

    def remember_answer(self, key: str, answer: Any) -> None:
        self.keys.remember_answer(key, answer)
        self._dirty = True

    def answered(self, key: str) -> Any:
        return self.keys.answered(self.db, key)

    def remember_submit(self, key: str, tids: list[int]) -> None:
        self.keys.remember(key, tids)
        self._dirty = True

    def withdraw(self, tids: list[int], key: str | None = None) -> None:
        """Take back tasks whose rows have not been committed (a refused submit): their rows,
        running marks, results and files are dropped as if they had never been added. Their
        taskids are not given out again."""
        for tid in tids:
            if tid in self._ins:
                row = self._ins.pop(tid)
                self.files.drop(row[FRAMES], now=True)
                self.files.drop(row[RESULT_FRAMES], now=True)
            self._task_blobs.pop(tid, None)
            self._active.pop(tid)
            self._run.pop(tid, None)
            fin = self._fin.pop(tid, None)
            if fin is not None:
                self.files.drop(fin[2], now=True)
            r = self._unsaved.pop(tid, None)
            if r is not None:
                if r.ok:
                    self._n_ok -= 1
                else:
                    self._n_failed -= 1
                self.cache.forget(tid)
        if key is not None:
            self.keys.withdraw(key)
        self._dirty = bool(self._ins or self._run or self._fin or self.keys.queued or self._eng
                           or self.retiring.queued or self.files.pending())

    # -- results ---------------------------------------------------------------------------
    def finish(self, tid: int, result: StoredResult) -> None:
        self._active.pop(tid)
        self._run.pop(tid, None)  # (the finish says all a restart needs)
        blobs = self._task_blobs.pop(tid, None)
        if blobs is not None:
            self.files.drop(blobs)
        meta = result.meta
        sizes = list(map(frame_len, result.frames))
        # (A put value is read again for each engine that takes it: its file is named so
        # that it keeps its pages in the page cache, see files.py's spill thread.)
        kind = "put" if meta.get("kind") == "put" else "result"
        blob = self.files.pack(tid, kind, result.frames, sizes)
        ok = result.ok
        row = self._ins.get(tid)
        if row is not None:  # its insert is not written yet: it goes in finished
            row[STATE] = "finished"
            row[FRAMES] = None
            row[OK:] = [int(ok), self._pack(meta), blob]
        else:
            self._fin[tid] = (int(ok), self._pack(meta), blob, tid)
        self._unsaved[tid] = result
        self._dirty = True
        if ok:
            self._n_ok += 1
        else:
            self._n_failed += 1
        self.cache.remember(tid, result, sum(sizes))

    def result(self, tid: int) -> StoredResult | None:
        hit = self.cache.get(tid)
        if hit is not None:
            return hit
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
        r = StoredResult(unpack(row[0]), self.files.read_result(tid, row[1]))
        self.cache.remember(tid, r)
        return r

    def unsaved(self, tid: int) -> bool:  # (finished, its row not yet committed)
        return tid in self._unsaved

    def result_meta(self, tid: int) -> dict[str, Any] | None:
        """A result's metadata, not its frames (reading a large one's costs their size)."""
        hit = self.cache.get(tid) or self._unsaved.get(tid)
        if hit is not None:
            return hit.meta
        if not 0 <= tid <= MAX_TID:
            return None
        row = self.db.execute("SELECT result_meta FROM tasks WHERE tid=? AND state='finished'",
                              (tid,)).fetchone()
        return None if row is None else unpack(row[0])

    def compact(self) -> None:  # (the index of active tasks, after a burst: taskmill.memory)
        self._active.compact()

    def clear(self, tids: list[int] | None, key: str = "") -> tuple[int, list[int]]:
        """Drop finished results: commits what is queued, then deletes in a transaction of
        its own. A commit that fails (a full disk) does not stop the clear of the results it
        has written, whose files go at once (the space lets the queued rows commit next);
        one not yet written cannot go: StoreError (nothing cleared) if `tids` names one (all,
        None: they stay). StoreError (nothing dropped) if the deletion fails. `key`: the
        clear's, under which that transaction keeps its answer, {"dropped": n, "missing":
        [...]}."""
        try:
            self.commit()
            failed: StoreError | None = None
        except StoreError as e:
            failed = e
            unwritten = [t for t in tids or () if t in self._unsaved]
            if unwritten:
                raise unwritten_error(e, unwritten) from None
        key_row = (lambda answer: self.keys.row(key, answer)) if key else None
        dropped_rows, missing = clear_rows(self.db, tids, self._next, key_row, self.path)
        for tid, ok, blob in dropped_rows:
            # (the commit failed: only this clear's files go, not kept as spares)
            self.files.drop(blob, now=failed is not None)
            self.cache.forget(tid)
            if ok:
                self._n_ok -= 1
            else:
                self._n_failed -= 1
        if failed is None:
            self.files.unlink_dropped()
        return len(dropped_rows), missing

    def counts(self) -> tuple[int, int]:
        return self._n_ok, self._n_failed

    def finished_ids(self) -> tuple[list[int], list[int]]:
        rows = [*self.db.execute("SELECT tid, ok FROM tasks WHERE state='finished'"),
                *((t, r.ok) for t, r in self._unsaved.items())]  # (+ finished, uncommitted)
        return sorted(t for t, ok in rows if ok), sorted(t for t, ok in rows if not ok)

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
            self.files.write()  # (first: no row may name a file that is not written)
        except OSError as e:
            raise StoreError(f"the task store cannot write a file in {self.blob_dir}: "
                             f"{e.strerror or e}") from None
        db = self.db
        now = time.monotonic()
        # (statement, rows), in the order described above
        writes: list[tuple[str, Any]] = [insert_rows(list(self._ins.values()))] if self._ins else []
        if self._run:
            writes.append((MARK_RUNNING, self._run.values()))
        if self._fin:
            writes.append((FINISH_TASK, self._fin.values()))
        if self.keys.queued:
            writes.append((REMEMBER_SUBMIT, self.keys.queued.values()))
        if self._eng:
            writes.append((REMEMBER_ENGINE, self._eng.values()))
        writes += self.retiring.writes() + self.lease_rows.writes()
        meta = []
        if self._next_eid != self._written_eid:
            meta.append(("next_eid", self._next_eid))
        # The counter goes to `meta` unless the highest row says it (a restart takes the
        # larger): an ordinary submit's last row is its last id (a page less per commit).
        if self._next < self._written_next or (
                self._next > self._written_next and self._next - 1 not in self._ins):
            meta.append(("next_tid", self._next))
        low_due = everything or now - self._low_written >= LOW_TID_EVERY
        if low_due:  # Every task below this had finished: a restart looks only above it
            if self._looked:  # (else the tasks from before were never read: none is active)
                meta.append(("low_tid", self.low_bound(self._active.lowest(self._next))))
            writes += self.keys.dead.writes(db)  # (after the submit keys written above)
        if meta:
            writes.append((SET_META, meta))
        try:
            if db.in_transaction:  # a ROLLBACK that failed earlier left one open
                db.execute("ROLLBACK")
            write_all(db, writes)
        except sqlite3.Error as e:
            roll_back(self.db, self.path, e)
            self.files.unwrite()  # (the files of rows not written hold no space)
            raise StoreError(f"the task store {self.path} cannot write: {e}"
                             f"{disk_note(self.path)}") from None
        self.files.written()
        if low_due:
            self._low_written = now
        self._written_eid = self._next_eid
        self._written_next = self._next
        for queued in (self._ins, self._run, self._fin, self.keys.queued, self._eng,
                       self.retiring.queued, self.lease_rows.queued, self._unsaved):
            queued.clear()
        self._dirty = False
        self.files.unlink_dropped()
        if self.wal.tail_due:
            self.wal.finish_tail()

    def close(self) -> None:
        try:
            self._dirty = True
            self.commit(everything=True)
            self.db.execute(SET_META, ("next_tid", self._next))
        except (StoreError, sqlite3.Error) as e:
            log.error("the task store %s could not write on close: %s (what was not written "
                      "is as if the controller had been killed)", self.path, e)
        finally:
            self._closing.set()
            self.files.stop()
            self.wal.join(timeout=5)
            self.files.join(timeout=5)
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self.db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # (releases the lock)
                self._lock_fd = None

    def abandon(self) -> None:
        """Let go of the store as a killed controller would: stop its threads, close the
        database and drop the lock, writing nothing that is queued (what a kill -9 leaves:
        the tests' stand-in for one)."""
        self._closing.set()
        self.files.stop()
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
