"""`WalKeeper`: keeps the SQLite store's write-ahead log (WAL) from growing without bound.

The controller's thread commits into the WAL; the pages reach the database file only at a
checkpoint, and SQLite writes from the WAL's start again ("restarts" it) only when a commit
begins after a checkpoint that copied *every* frame. A checkpoint on another thread never
gets there while commits go on: it copies what the WAL held when it began, and by its end the
controller has appended more (5-30 ms of copying against a commit every 0.3 ms). So the WAL
grew by every commit for the controller's whole life: 3.2 kB per task of a flood, 27 kB per
lone round trip, 193 MiB for 60,000 tasks over a 4 MiB database (the disk fills on a long run).

So the work is split in two. The keeper's thread copies the bulk, off the controller's
thread, whenever the WAL file is larger than `wal_bytes` (looked at every LOOK_EVERY seconds),
then says a tail is due; the store's commit, on the controller's thread, then copies the few
frames written since (`finish_tail`): no commit can come between, so that checkpoint is
complete, and the next commit restarts the WAL and truncates its file back to `wal_bytes`
(`PRAGMA journal_size_limit`, set on the store's connection here).

The same thread looks, as often, at whether the store's file is still the one the store opened.
Deleted (`rm -rf` of a cluster's folder, a cleaner of /tmp) or replaced by another file, it
goes on working through the descriptors SQLite holds, but nothing written to it survives a
restart: the store's `lost` then says so (logged once), and the controller takes no new work
(controller/submits.py). So too when only the WAL's file is deleted or replaced: SQLite writes
on into the deleted one, whose frames the database file lacks until a checkpoint copies them,
so each look then copies them (through this thread's connection, which opened that file
before it was deleted). And at the store's lock file (`_look_at_lock`): touched now and then,
taken again if it was deleted, so that a second controller is still refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .schema import hold_lock

log = logging.getLogger("taskmill.store")

# The checkpointer copies the WAL into the database once it is larger than this.
WAL_BYTES = 16 * 1024 * 1024
LOOK_EVERY = 0.5  # seconds between the checkpointer's looks at the WAL's size
LOCK_TOUCH_EVERY = 3600.0  # seconds between touches of the lock file (for cleaners of old files)
# The thread copies again while a pass left more than this many frames (4 kB each) behind,
# so that the tail the controller's thread copies stays short...
TAIL_FRAMES = 256
PASSES_MAX = 4  # ... but it stops after this many passes (a flood outruns every pass)


class WalKeeper:
    """The checkpointer thread of one store file and the tail it leaves to the store."""

    def __init__(self, db: sqlite3.Connection, path: str, closing: threading.Event,
                 wal_bytes: int = WAL_BYTES, store: Any = None,
                 lock_fd: int | None = None) -> None:
        """`db`: the store's connection, on which it commits (and this copies the tail);
        `store`: the store, whose `lost` says why, once its file is deleted or replaced;
        `lock_fd`: the store's lock (schema.hold_lock), taken again if its file is deleted."""
        self.db = db
        self.path = path
        self._lock_fd = lock_fd
        self._lock_touched = time.monotonic()
        file = _identity(path)
        self._file = None if file is _UNSURE else file  # (None: not looked at)
        # The WAL's file, once seen (SQLite keeps it while a connection is open): deleted,
        # what it holds and the database file lacks yet would be gone at the next restart.
        seen = _identity(f"{path}-wal")
        self._wal: tuple[int, int] | None = None if seen is _UNSURE else seen
        self._wal_lost = False
        self._store = store
        self.wal_bytes = wal_bytes
        db.execute(f"PRAGMA journal_size_limit={int(wal_bytes)}")
        self.tail_due = False  # set by the thread, cleared by finish_tail
        self.restarts = 0  # complete checkpoints done by finish_tail (statistics, tests)
        self._closing = closing
        self._thread = threading.Thread(target=self._loop, name="taskmill-checkpoint",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        con = sqlite3.connect(self.path, isolation_level=None)
        wal = Path(f"{self.path}-wal")
        try:
            # A read opens the WAL's file, which this connection then keeps: were it deleted,
            # its checkpoints still copy what it holds (_look_at_wal).
            con.execute("SELECT COUNT(*) FROM meta").fetchall()
        except sqlite3.Error:
            pass
        try:
            while not self._closing.wait(LOOK_EVERY):
                file = _identity(self.path) if self._file is not None else _UNSURE
                if file is not _UNSURE and file != self._file:
                    self._gone()
                if self._file is not None:  # (a store deleted whole is said once, above)
                    self._look_at_wal(con, wal)
                    self._look_at_lock()
                try:
                    if not self.tail_due and wal.exists() \
                            and wal.stat().st_size > self.wal_bytes:
                        self._copy_bulk(con)
                except sqlite3.Error:
                    pass  # busy: try again next time
        finally:
            con.close()

    def _gone(self) -> None:
        why = (f"the task store {self.path} was deleted or replaced by another file while "
               "this controller used it: what it writes there would not survive a restart, so "
               "it takes no new tasks (those it holds finish, and their results can be read "
               "until it stops). Stop it and start it again with a store it can keep (--db)")
        if not self._wal_lost:  # (its WAL's loss, a moment before, was said already)
            log.error("%s", why)
        self._file = None  # (said once)
        if self._store is not None:
            self._store.lost = why

    def _look_at_wal(self, con: sqlite3.Connection, wal: Path) -> None:
        """Once the WAL's file is deleted or replaced (a cleaner of /tmp that spares the
        database), SQLite writes on into the deleted one: copy what it holds into the database
        file (now, and at each look after: what was written since), and say the store is
        lost, so that the controller takes no new task."""
        if self._wal_lost:
            self._salvage(con)
            return
        seen = _identity(str(wal))
        if seen is _UNSURE or (seen is None and self._wal is None):
            return
        if self._wal is None:
            self._wal = seen
            return
        if seen == self._wal:
            return
        self._wal_lost = True
        self._salvage(con)
        why = (f"the task store's write-ahead log {wal} was deleted or replaced by another file "
               "while this controller used it: what it writes from now on would not survive a "
               "restart (what it had written is copied into the store's file), so it takes no "
               "new tasks (those it holds finish, and their results can be read until it "
               "stops). Stop it and start it again on the store, or with a store it can keep "
               "(--db)")
        log.error("%s", why)
        if self._store is not None:
            self._store.lost = why

    def _look_at_lock(self) -> None:
        """The lock file is written only when the store opens: a cleaner of old files (e.g.
        systemd-tmpfiles, after 10 days) deleted it under a running controller, and a second
        controller then took a new one and used the store too. It is touched every
        LOCK_TOUCH_EVERY seconds, and if it is gone all the same, taken again (into the same
        descriptor, which the store closes); if another process holds the new one, the store
        is lost (no new task)."""
        fd = self._lock_fd
        if fd is None or self._closing.is_set():  # (closing: the store lets go of the lock)
            return
        lock_path = f"{os.path.realpath(self.path)}.lock"
        seen = _identity(lock_path)
        try:
            held = os.fstat(fd)
        except OSError:
            return
        if seen is _UNSURE or seen == (held.st_dev, held.st_ino):
            if time.monotonic() - self._lock_touched > LOCK_TOUCH_EVERY:
                self._lock_touched = time.monotonic()
                with contextlib.suppress(OSError):
                    os.utime(lock_path)
            return
        try:
            new = hold_lock(self.path)
        except StoreError as e:
            self._lock_fd = None  # (said once)
            why = (f"the task store's lock file {lock_path} was deleted or replaced while this "
                   f"controller used the store, and another process took it: {e}. Two "
                   "controllers on one store give the same taskids to different tasks: this "
                   "one takes no new tasks; stop one of them")
            log.error("%s", why)
            if self._store is not None:
                self._store.lost = why
            return
        os.dup2(new, fd)  # (the store's descriptor: its close releases the lock)
        os.close(new)
        log.warning("the task store's lock file %s was deleted while this controller used "
                    "the store (a cleaner of old files?): taken again", lock_path)

    @staticmethod
    def _salvage(con: sqlite3.Connection) -> None:
        try:
            con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass  # busy: again at the next look

    def _copy_bulk(self, con: sqlite3.Connection) -> None:
        copied = 0
        for _ in range(PASSES_MAX):
            busy, frames, _ = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or frames < 0:
                return
            left, copied = frames - copied, frames
            if left <= TAIL_FRAMES:
                break
        self.tail_due = True

    def finish_tail(self) -> None:
        """On the thread that commits, between commits: copy what the thread's checkpoint
        left, so that the next commit restarts the WAL. Nothing is lost if it fails: the
        WAL stays as it is, and the thread tries again."""
        self.tail_due = False
        try:
            busy, frames, done = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            return
        if not busy and frames == done:
            self.restarts += 1


def _identity(path: str) -> tuple[int, int] | None:
    """The file at `path` (device, inode); None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:  # (unsure: taken as the same file)
        return _UNSURE
    return st.st_dev, st.st_ino


_UNSURE = (-1, -1)
