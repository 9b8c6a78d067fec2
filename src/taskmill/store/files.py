"""Large frames in files of their own, beside the SQLite database (`<db>.blobs/`).

A frame of EXTERNAL_MIN bytes or more is not put in its row: `pack` names it there
(`{"file": "<tid>.<task|result>.<i>"}`) and keeps its bytes until `write`, which the store's
commit calls before the rows that name the files. Writing one is one copy into the page cache,
dropping one an unlink, and neither goes through the WAL. `read` brings a row's frames back;
`drop` forgets a row's files (never written, or let go of after the next commit:
`unlink_dropped`); `remove_orphans` deletes files no committed row names (the controller died
between the file and the row). A thread of this object syncs each result file a moment after it
was written and then drops its pages from the page cache (see `_spill_loop`).

A file let go of is not always unlinked: up to SPARE_FILES of them (SPARE_BYTES together) are
renamed `spare.<n>` and the next writes go into them (renamed to their new name, overwritten,
cut to length). Overwriting a file whose pages are in the page cache costs a memcpy; a new file
needs fresh pages first (1 MiB: 0.06 ms against 0.35-0.45; 8 MB: 0.3 against 1.9, on the 2-core
VM of benchmarks/payload_costs.md). A spare is named by no row, so a restart removes it as an
orphan; `join` (on close) removes them.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from zmq import Frame

from ..errors import StoreError
from .base import unpack

# Frames at least this large are kept in files of their own beside the database: writing them
# is one copy into the page cache, dropping them one unlink, and neither goes through the WAL.
EXTERNAL_MIN = 64 * 1024
# Files let go of that are kept for the next writes (see the module docstring), at most this
# many and this many bytes together.
SPARE_FILES = 4
SPARE_BYTES = 64 * 1024 * 1024
SPARE_PREFIX = "spare."
# A result file is synced and dropped from the page cache this many seconds after its write
# (a result cleared before that is never synced: its file becomes a spare with its pages
# still cached), at once while more than SPILL_HOLD_BYTES of them wait. (Both read where
# used: tests change them.)
SPILL_AFTER = 1.0
SPILL_HOLD_BYTES = 64 * 1024 * 1024


class FrameFiles:
    """The files of one store's large frames, in `folder` (made by the store, mode 0700)."""

    def __init__(self, folder: Path, pack: Callable[[Any], bytes]) -> None:
        self.folder = folder
        self._pack = pack  # the store's msgpack Packer
        self._unwritten: dict[str, Any] = {}  # file name -> its bytes, until commit
        self._unlink_after_commit: list[Path] = []
        self._written: list[Path] = []  # by `write`, until `written` or `unwrite`
        self._spares: list[tuple[Path, int]] = []  # (path, size), the newest last
        self._spare_bytes = 0
        self._spare_names = itertools.count()
        # (when it may be spilled, the file, its bytes), or None: stop
        self._spill: queue.SimpleQueue[tuple[float, Path, int] | None] = queue.SimpleQueue()
        self._spill_lock = threading.Lock()
        self._spill_bytes = 0  # of the files queued there
        self._hurry = threading.Event()  # spill without waiting (stopping, or too many bytes)
        self._stopped = False
        self.spilled = 0  # result files synced and dropped from the page cache so far
        self._spiller = threading.Thread(target=self._spill_loop, name="taskmill-spill",
                                         daemon=True)

    def start(self) -> None:
        """Start the thread that syncs result files and drops their pages."""
        self._spiller.start()

    def stop(self) -> None:
        """Ask that thread to end (after the files queued before it is asked: at once)."""
        self._stopped = True
        self._hurry.set()
        self._spill.put(None)

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for that thread to end (after `stop`), then remove
        the spare files (the store is closing)."""
        self._spiller.join(timeout=timeout)
        self.discard_spares()

    def pending(self) -> bool:
        """Whether files wait to be written at the next commit."""
        return bool(self._unwritten)

    def pack(self, tid: int, kind: str, frames: list[Any], sizes: list[int]) -> bytes:
        """Pack frames (of these sizes) for a row; large ones are named there and go to files
        at the next commit, before the row does (see `write`)."""
        if not sizes or max(sizes) < EXTERNAL_MIN:  # the usual case: all small
            # (bytes(frame) copies a zmq.Frame through its buffer in a fifth of the time of
            # bytes(frame.buffer), whose memoryview pyzmq builds anew each time; unlike
            # frame.bytes it leaves no second copy in the frame, which the cache keeps)
            return self._pack([f if type(f) is bytes else bytes(f) if type(f) is Frame
                               else bytes(getattr(f, "buffer", f)) for f in frames])
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

    def write(self) -> None:
        """Write the files the queued rows name (at commit, before the rows).

        A file dropped before it was written (its task finished within one commit) is never
        written. If a write fails (a full disk), the files this call wrote are removed again,
        the partly written one with them, so that a failed commit holds no space (a full
        disk's last blocks are what SQLite needs to write anything, a clear included); every
        name stays queued and the next commit writes them all. `written` (the rows are in)
        or `unwrite` (they could not be) ends it."""
        done: list[Path] = []
        try:
            for name, buf in self._unwritten.items():
                path = self.folder / name
                done.append(path)
                if self._reuse_spare(path):
                    with open(path, "r+b") as out:
                        out.write(buf)
                        out.truncate()
                else:
                    with open(path, "wb") as out:
                        out.write(buf)
        except BaseException:
            self._written = done
            self.unwrite()
            raise
        self._written = done

    def unwrite(self) -> None:
        """The rows naming the files just written could not be committed: remove the files
        (named by no row, they are written again by the next commit) and the spares, which
        hold space a full disk needs."""
        for path in self._written:
            path.unlink(missing_ok=True)
        self._written = []
        self.discard_spares()

    def written(self) -> None:
        """The rows naming the files just written are committed: the files are theirs now
        (result files are queued to be synced)."""
        self._written = []
        due = time.monotonic() + SPILL_AFTER
        for name, buf in self._unwritten.items():
            if ".result." in name:  # (not a put's: "<tid>.put.<i>", read again and again)
                size = memoryview(buf).nbytes
                with self._spill_lock:
                    self._spill_bytes += size
                    if self._spill_bytes > SPILL_HOLD_BYTES:
                        self._hurry.set()
                self._spill.put((due, self.folder / name, size))
        self._unwritten.clear()

    def read(self, blob: bytes | None) -> list[Any]:
        """The frames of a row packed by `pack` (from its files where it names them)."""
        out = []
        for item in unpack(blob) if blob else []:
            if isinstance(item, dict):  # (not yet written: a queued row read before its commit)
                buf = self._unwritten.get(item["file"])
                out.append(bytes(buf) if buf is not None else
                           (self.folder / item["file"]).read_bytes())
            else:
                out.append(item)
        return out

    def read_result(self, tid: int, blob: bytes | None) -> list[Any]:
        """`read` for task `tid`'s result: StoreError, naming the file, when one of its
        files cannot be read (deleted by a cleaner of the temporary folder, say)."""
        try:
            return self.read(blob)
        except OSError as e:
            raise StoreError(
                f"the result of task {tid} cannot be read from the store ({e.strerror or e}: "
                f"{e.filename}): its file beside the store was deleted or cannot be read, so "
                "that result is lost (clear it and run the task again), unless the file can be "
                "put back") from None

    def size(self, blob: bytes | None) -> int:
        """The bytes of a row's frames, without reading its files (0 for a file that cannot
        be looked at: reading it says why)."""
        total = 0
        for item in unpack(blob) if blob else []:
            if not isinstance(item, dict):
                total += len(item)
            elif (buf := self._unwritten.get(item["file"])) is not None:
                total += memoryview(buf).nbytes
            else:
                try:
                    total += (self.folder / item["file"]).stat().st_size
                except OSError:
                    pass
        return total

    def drop(self, blob: bytes | None, *, now: bool = False) -> None:
        """Forget the files a row's frames name: unwritten ones are never written; written
        ones are removed after the next commit (or `now`, for rows that never committed)."""
        for item in unpack(blob) if blob else []:
            if not isinstance(item, dict):
                continue
            path = self.folder / item["file"]
            if self._unwritten.pop(item["file"], None) is None or path in self._written:
                if now:
                    path.unlink(missing_ok=True)
                else:
                    self._unlink_after_commit.append(path)

    def unlink_dropped(self) -> None:
        """Let go of the files of rows dropped by the commit that just succeeded: kept as
        spares while there is room (see the module docstring), else removed."""
        for path in self._unlink_after_commit:
            if not self._keep_spare(path):
                path.unlink(missing_ok=True)
        self._unlink_after_commit.clear()

    def _keep_spare(self, path: Path) -> bool:
        """Rename a file let go of to a spare's name, if there is room for it."""
        if len(self._spares) >= SPARE_FILES:
            return False
        try:
            size = path.stat().st_size
            if self._spare_bytes + size > SPARE_BYTES:
                return False
            spare = self.folder / f"{SPARE_PREFIX}{next(self._spare_names)}"
            path.rename(spare)
        except OSError:
            return False  # (gone already, or the rename failed: unlinked as before)
        self._spares.append((spare, size))
        self._spare_bytes += size
        return True

    def _reuse_spare(self, path: Path) -> bool:
        """Rename the newest spare (its pages the likeliest to be cached) to `path`."""
        while self._spares:
            spare, size = self._spares.pop()
            self._spare_bytes -= size
            try:
                spare.rename(path)
                return True
            except OSError:
                spare.unlink(missing_ok=True)
        return False

    def discard_spares(self) -> None:
        """Remove the spare files (on close)."""
        for spare, _size in self._spares:
            spare.unlink(missing_ok=True)
        self._spares.clear()
        self._spare_bytes = 0

    def remove_orphans(self, rows: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        """Files written for rows that never committed (the controller died in between);
        `rows` are every task row's (frames, result_frames)."""
        live: set[str] = set()
        for frames, results in rows:
            for blob in (frames, results):
                for item in unpack(blob) if blob else []:
                    if isinstance(item, dict):
                        live.add(item["file"])
        for f in self.folder.iterdir():
            if f.name not in live:
                f.unlink(missing_ok=True)

    def _spill_loop(self) -> None:
        """Sync each result file (SPILL_AFTER seconds after its write), then drop its pages
        from the page cache.

        A result file lives until its result is cleared, so its pages would stay cached (and
        dirty, until writeback) for as long: the cache would grow by every large result, and
        each write would need fresh memory, which can cost far more than reusing pages (3 ms
        per MiB against 0.25 on the 2-core VM of benchmarks/results.md). Once synced, the
        pages are clean and can be dropped, and the next write reuses them. A read of a
        dropped result goes to the disk; recent results are in the store's own cache. The
        controller's thread never waits for this: the row naming the file is committed as soon
        as the write returns (durable against a crash of the process), and this adds
        durability against a crash of the machine. The wait lets a result the client takes
        and clears at once (a round trip's) leave its file with its pages cached, to be
        reused as a spare: overwriting cached pages is a copy; synced and dropped, they are
        fresh pages again (1 MiB on the 2-core VM: ~0.06 ms against 0.13-0.24)."""
        while True:
            item = self._spill.get()
            if item is None:
                return
            due, path, size = item
            wait = due - time.monotonic()
            if wait > 0:
                self._hurry.wait(wait)
            self._spill_one(path)
            with self._spill_lock:
                self._spill_bytes -= size
                if self._spill_bytes <= SPILL_HOLD_BYTES // 2 and not self._stopped:
                    self._hurry.clear()

    def _spill_one(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # cleared (unlinked, or kept as a spare) already
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            self.spilled += 1
        except OSError:
            pass  # a file system without these: the pages stay cached, nothing is lost
        finally:
            os.close(fd)
