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
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

# The checkpointer copies the WAL into the database once it is larger than this.
WAL_BYTES = 16 * 1024 * 1024
LOOK_EVERY = 0.5  # seconds between the checkpointer's looks at the WAL's size
# The thread copies again while a pass left more than this many frames (4 kB each) behind,
# so that the tail the controller's thread copies stays short...
TAIL_FRAMES = 256
PASSES_MAX = 4  # ... but it stops after this many passes (a flood outruns every pass)


class WalKeeper:
    """The checkpointer thread of one store file and the tail it leaves to the store."""

    def __init__(self, db: sqlite3.Connection, path: str, closing: threading.Event,
                 wal_bytes: int = WAL_BYTES) -> None:
        """`db`: the store's connection, on which it commits (and this copies the tail)."""
        self.db = db
        self.path = path
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
            while not self._closing.wait(LOOK_EVERY):
                try:
                    if not self.tail_due and wal.exists() \
                            and wal.stat().st_size > self.wal_bytes:
                        self._copy_bulk(con)
                except sqlite3.Error:
                    pass  # busy: try again next time
        finally:
            con.close()

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
