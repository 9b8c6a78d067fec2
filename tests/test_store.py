"""The task stores: ids, results, clear, counts; the SQLite store across reopen (as after kill -9)."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import pytest

from taskmill.errors import StoreError
from taskmill.store import MemoryStore, SQLiteStore, StoredResult, StoredTask, files, remove_store
from taskmill.store.files import SPARE_FILES, SPARE_PREFIX


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "t.db"))
    yield s
    s.close()


def _task(store, frames=(b"body",)):
    tid = store.allocate()
    store.add(StoredTask(tid, {"nodes": [], "after": []}, list(frames), 1.0))
    return tid


def test_ids_results_counts_and_clear(store):
    tids = [_task(store) for _ in range(4)]
    assert tids == [0, 1, 2, 3]
    store.finish(0, StoredResult({"status": "ok"}, [b"r0"]))
    store.finish(1, StoredResult({"status": "error"}, []))
    store.finish(2, StoredResult({"status": "ok"}, [b"r2"]))
    store.commit()
    assert store.counts() == (2, 1)
    assert store.finished_ids() == ([0, 2], [1])
    assert store.result(0).frames == [b"r0"] and store.result(3) is None
    assert store.clear([0, 3, 99]) == (1, [3, 99])
    assert store.result(0) is None and store.counts() == (1, 1)
    assert store.clear(None) == (2, [])
    assert store.counts() == (0, 0)
    assert _task(store) == 4  # ids are never reused, even after clear


def _row_files(s: SQLiteStore) -> list[str]:
    """The names of the files in the store's blob folder that rows name (spares aside)."""
    return sorted(p.name for p in s.blob_dir.iterdir() if not p.name.startswith(SPARE_PREFIX))


def _killed(s: SQLiteStore) -> None:
    """What a kill -9 leaves of a store: nothing queued is written, and the kernel drops the
    lock (the process's open files close)."""
    s.abandon()


def test_sqlite_survives_reopen_without_close(tmp_path):
    path = str(tmp_path / "t.db")
    big = os.urandom(300_000)  # stored in a file of its own
    s = SQLiteStore(path)
    a = _task(s, [b"small", big])
    b = _task(s)
    s.allocate_engine("engine-uuid-3")
    s.mark_running(b, engine=0, node=0, attempts=1, tries=1, handed_over=[])
    s.finish(a, StoredResult({"status": "ok"}, [big]))
    c = _task(s, [big])
    s.remember_submit("client:1", [a, b, c])
    s.commit()
    _killed(s)  # no close(): as if the controller were killed here
    s2 = SQLiteStore(path)
    assert s2.allocate() == 3
    assert s2.result(a).frames == [big]
    unfinished = {t.tid: (t, counters) for t, counters in s2.unfinished()}
    assert set(unfinished) == {b, c}
    assert unfinished[b][1]["attempts"] == 1 and unfinished[b][1]["state"] == "running"
    assert unfinished[b][1]["engine_uuid"] == "engine-uuid-3"
    assert unfinished[c][1]["engine_uuid"] is None
    assert unfinished[c][0].frames == [big]
    assert s2.submitted("client:1") == [a, b, c]
    assert s2.allocate_engine("another") == 1  # engine ids are not given out twice either
    s2.finish(c, StoredResult({"status": "ok"}, []))
    s2.commit()
    assert _row_files(s2) == [f"{a}.result.0"]  # the finished task's body file is gone
    s2.clear([a])
    assert _row_files(s2) == []
    s2.close()


def test_sqlite_a_dispatch_is_written_by_the_next_commit(tmp_path):
    """A running mark is on disk before the task may be sent (the controller commits first):
    written into the task's insert when that is not written yet, else as an update."""
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    first = _task(s)
    s.commit()
    second = _task(s)
    s.mark_running(first, engine=1, node=0, attempts=1, tries=1, handed_over=[])
    s.mark_running(second, engine=2, node=0, attempts=1, tries=1, handed_over=[0])
    assert s.dirty()
    s.commit()
    rows = {tid: row for tid, *row in s.db.execute(
        "SELECT tid, state, engine, attempts, handed_over FROM tasks")}
    assert rows == {first: ["running", 1, 1, b"\x90"], second: ["running", 2, 1, b"\x91\x00"]}
    s.close()


def test_sqlite_rows_of_every_shape_and_a_one_row_commit_survive_a_kill(tmp_path):
    """Queued, running and finished rows go in with the fewest columns each commit needs
    (schema.insert_rows); a commit of one row runs without BEGIN/COMMIT: it too fails whole
    under another process's write lock and is written by the next commit."""
    import sqlite3

    from taskmill.store.schema import INSERT_QUEUED, INSERT_RUNNING, INSERT_TASK, insert_rows

    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    queued = _task(s)
    s.commit()  # (queued only)
    running = _task(s)
    s.mark_running(running, engine=3, node=0, attempts=1, tries=1, handed_over=[])
    s.commit()  # (running only)
    done = _task(s)
    s.finish(done, StoredResult({"status": "ok"}, [b"r"]))
    s.commit()  # (finished in its insert)
    s.finish(running, StoredResult({"status": "error"}, []))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        with pytest.raises(StoreError, match="locked"):
            s.commit()  # the one row: a finish
        assert s.dirty()
    finally:
        other.execute("ROLLBACK")
        other.close()
    s.commit()
    _killed(s)
    s2 = SQLiteStore(path)
    rows = {tid: row for tid, *row in s2.db.execute(
        "SELECT tid, state, engine, handed_over, ok FROM tasks")}
    assert rows == {queued: ["queued", None, None, None], running: ["finished", 3, b"\x90", 0],
                    done: ["finished", None, None, 1]}
    assert s2.result(done).frames == [b"r"] and s2.result(running).meta == {"status": "error"}
    s2.close()
    row = [0, "queued", 1.0, b"", b"", 0, 0, 0, None, None, None, None, None]
    assert insert_rows([row])[0] == INSERT_QUEUED
    assert insert_rows([row, [*row[:8], b"\x90", 1, None, None, None]])[0] == INSERT_RUNNING
    assert insert_rows([row, [*row[:10], 1, b"", None]])[0] == INSERT_TASK


def test_sqlite_a_failed_commit_keeps_every_row_and_a_later_one_writes_them(tmp_path):
    """Another process holds the write lock past the busy timeout: the commit fails with
    StoreError naming the cause, nothing is lost, results stay readable, and the next commit
    writes everything."""
    import sqlite3

    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    done = _task(s)
    s.commit()
    queued = _task(s)
    s.mark_running(done, engine=0, node=0, attempts=1, tries=1, handed_over=[])
    s.finish(done, StoredResult({"status": "ok"}, [b"result"]))
    s.remember_submit("c:1", [queued])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        with pytest.raises(StoreError, match="locked"):
            s.commit()
        assert s.dirty()
        assert s.result(done).frames == [b"result"]  # read from what is queued
        assert s.finished_ids() == ([done], [])
        with pytest.raises(StoreError):
            s.clear([done])  # a clear needs a commit first
    finally:
        other.execute("ROLLBACK")
        other.close()
    s.commit()
    assert not s.dirty()
    states = dict(s.db.execute("SELECT tid, state FROM tasks"))
    assert states == {done: "finished", queued: "queued"}
    assert s.clear([done]) == (1, [])
    _killed(s)
    s2 = SQLiteStore(path)
    assert s2.submitted("c:1") == [queued] and s2.allocate() == 2
    s2.close()


def test_sqlite_a_failing_rollback_does_not_hide_the_cause(tmp_path, caplog):
    import sqlite3

    s = SQLiteStore(str(tmp_path / "t.db"))
    s.unfinished()  # (as a controller does at its start: its commits then write low_tid)
    _task(s)
    real = s.db

    class Failing:
        """The store's connection, with every write and ROLLBACK failing."""

        in_transaction = property(lambda self: real.in_transaction)

        def execute(self, sql, *args):
            if sql == "ROLLBACK":
                raise sqlite3.OperationalError("disk I/O error (rollback)")
            return real.execute(sql, *args)

        def executemany(self, sql, rows):
            raise sqlite3.OperationalError("database or disk is full")

    s.db = Failing()
    with pytest.raises(StoreError, match="disk is full"):
        s.commit()
    assert "ROLLBACK failed" in caplog.text and s.dirty()
    s.db = real
    s.commit()  # (the transaction the failed ROLLBACK left open is rolled back first)
    assert s.db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 1
    s.close()


def test_sqlite_withdraw_takes_back_rows_that_never_committed(tmp_path):
    s = SQLiteStore(str(tmp_path / "t.db"))
    kept = _task(s)
    big = os.urandom(100_000)
    gone = [_task(s, [big]), _task(s)]
    s.mark_running(gone[0], engine=0, node=0, attempts=1, tries=1, handed_over=[])
    s.finish(gone[1], StoredResult({"status": "error"}, [big]))
    s.remember_submit("c:7", gone)
    s.files.write()  # (as a commit that failed after writing its files)
    s.withdraw(gone, "c:7")
    assert s.counts() == (0, 0) and s.result(gone[1]) is None
    assert s.submitted("c:7", resent=False) is None and s.task(gone[0]) is None
    assert list(s.blob_dir.iterdir()) == []
    s.commit()
    assert [r[0] for r in s.db.execute("SELECT tid FROM tasks")] == [kept]
    assert s.allocate() == 3  # withdrawn taskids are not given out again
    s.close()


def test_sqlite_a_second_store_on_the_same_file_is_refused_naming_the_holder(tmp_path):
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    with pytest.raises(StoreError, match=f"in use by another controller \\(pid {os.getpid()}\\)"):
        SQLiteStore(path)
    s.close()
    SQLiteStore(path).close()  # free again once closed


def test_sqlite_a_second_store_through_a_symlink_is_refused(tmp_path):
    """A symlink to a held store (another folder's tasks.db pointing at it) is the same
    store: SQLite follows the link, so a second controller there would number tasks the first
    one numbers too. Its lock is the real file's."""
    real, link = tmp_path / "a.db", tmp_path / "b" / "tasks.db"
    link.parent.mkdir()
    s = SQLiteStore(str(real))
    link.symlink_to(real)
    with pytest.raises(StoreError, match=f"in use by another controller \\(pid {os.getpid()}\\)"):
        SQLiteStore(str(link))
    with pytest.raises(StoreError, match="in use by another controller"):
        remove_store(str(link))
    assert real.exists()
    s.close()
    SQLiteStore(str(link)).close()  # free again once closed


def test_sqlite_lock_file_deleted_under_the_store_is_taken_again(tmp_path):
    """The lock file is written only at open: a cleaner of old files (systemd-tmpfiles, after
    10 days) deleted it under a running controller, and a second controller then took a new
    one and used the same store (the same taskids for different tasks). The store takes its
    lock again (the checkpointer looks every 0.5 s), so the second one is still refused."""
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    try:
        lock = Path(f"{path}.lock")
        lock.unlink()
        deadline = time.monotonic() + 30
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(StoreError, match=f"in use by another controller \\(pid {os.getpid()}\\)"):
            SQLiteStore(path)
        assert s.lost is None
    finally:
        s.close()
    SQLiteStore(path).close()  # free again once closed


def test_sqlite_lock_goes_with_a_killed_holder(tmp_path):
    """The lock is the kernel's (flock): kill -9 of its holder frees it, no stale file."""
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "t.db")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom taskmill.store import SQLiteStore\n"
         f"s = SQLiteStore({path!r})\nprint('open', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            SQLiteStore(path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    SQLiteStore(path).close()


def test_sqlite_store_files_are_private_and_bad_files_get_one_clear_error(tmp_path):
    import stat

    path = tmp_path / "t.db"
    SQLiteStore(str(path)).close()
    for f in (path, tmp_path / "t.db.lock"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE((tmp_path / "t.db.blobs").stat().st_mode) == 0o700
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, it only has a name like one" * 100)
    with pytest.raises(StoreError, match="damaged or not a taskmill store") as err:
        SQLiteStore(str(junk))
    assert "\n" not in str(err.value)
    SQLiteStore(str(junk.with_name("fine.db"))).close()  # (the failed open kept no lock)


def test_sqlite_reuses_the_files_of_dropped_rows_for_the_next_writes(tmp_path):
    """A large frame's file let go of after a commit is kept as a spare (at most SPARE_FILES
    of them), and the next large frame is written into it: overwriting cached pages costs
    less than fresh ones. Spares are named by no row: a restart after a kill removes them as
    orphans, and close removes them."""
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    big = os.urandom(200_000)
    a = _task(s, [big])
    s.commit()
    s.finish(a, StoredResult({"status": "ok"}, [b"small"]))
    s.commit()  # the task's body file is let go of: kept as a spare
    spares = [p.name for p in s.blob_dir.iterdir() if p.name.startswith(SPARE_PREFIX)]
    assert len(spares) == 1 and _row_files(s) == []
    spare_inode = (s.blob_dir / spares[0]).stat().st_ino
    other = os.urandom(100_000)  # smaller: the spare is cut to its length
    b = _task(s, [other])
    s.commit()
    assert _row_files(s) == [f"{b}.task.0"] and len(list(s.blob_dir.iterdir())) == 1
    assert (s.blob_dir / f"{b}.task.0").stat().st_ino == spare_inode
    assert (s.blob_dir / f"{b}.task.0").read_bytes() == other
    many = [_task(s, [big]) for _ in range(SPARE_FILES + 2)]
    s.commit()
    for tid in [b, *many]:
        s.finish(tid, StoredResult({"status": "ok"}, []))
    s.commit()
    assert _row_files(s) == []
    assert len(list(s.blob_dir.iterdir())) == SPARE_FILES  # the rest were unlinked
    c = _task(s, [big])
    s.commit()
    _killed(s)
    s2 = SQLiteStore(path)  # the spares of the killed controller are orphans
    assert _row_files(s2) == [f"{c}.task.0"] and len(list(s2.blob_dir.iterdir())) == 1
    assert s2.unfinished()[0][0].frames == [big]
    s2.finish(c, StoredResult({"status": "ok"}, []))
    s2.commit()
    assert len(list(s2.blob_dir.iterdir())) == 1  # a spare, until close
    s2.close()
    assert list(s2.blob_dir.iterdir()) == []


def test_sqlite_removes_orphan_blob_files(tmp_path):
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    _task(s, [os.urandom(100_000)])
    s.files.write()  # a commit's first step: its file is written, the row never commits
    assert len(list(s.blob_dir.iterdir())) == 1
    _killed(s)
    s2 = SQLiteStore(path)
    assert list(s2.blob_dir.iterdir()) == []
    s2.close()


def test_sqlite_cache_is_bounded(tmp_path):
    s = SQLiteStore(str(tmp_path / "t.db"), cache_size=10, cache_bytes=10_000)
    for _ in range(50):
        tid = _task(s)
        s.finish(tid, StoredResult({"status": "ok"}, [b"x" * 1000]))
    assert len(s.cache) <= 10 and s.cache.bytes <= 10_000
    assert s.result(0).frames == [b"x" * 1000]  # read back from disk
    s.close()


def _resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore(2) over a mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    page = os.sysconf("SC_PAGE_SIZE")
    vec = (ctypes.c_ubyte * (-(-size // page)))()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec)


def _on_tmpfs(path: Path) -> bool:
    best, fstype = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mnt, kind = line.split()[:3]
        if str(path).startswith(mnt) and len(mnt) > len(best):
            best, fstype = mnt, kind
    return fstype == "tmpfs"


def test_sqlite_result_files_are_synced_and_leave_the_page_cache(tmp_path):
    if _on_tmpfs(tmp_path):
        pytest.skip("the temporary directory is on tmpfs, whose pages are the files themselves")
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    big = os.urandom(1 << 20)
    a = _task(s, [big])
    s.commit()
    task_file = s.blob_dir / f"{a}.task.0"
    assert task_file.read_bytes() == big  # written at the commit that made the row durable
    s.finish(a, StoredResult({"status": "ok"}, [big]))
    s.commit()
    result_file = s.blob_dir / f"{a}.result.0"
    assert not task_file.exists() and result_file.exists()
    deadline = time.monotonic() + 30
    while s.files.spilled < 1:
        assert time.monotonic() < deadline, "the spill thread did not sync the result file"
        time.sleep(0.01)
    assert _resident_pages(result_file) == 0
    assert s.result(a).frames == [big]  # from the store's own cache
    # A task that finishes within one commit never has its body file written.
    b = _task(s, [big])
    s.finish(b, StoredResult({"status": "ok"}, [b"small"]))
    s.commit()
    assert _row_files(s) == [result_file.name]
    s.close()
    s2 = SQLiteStore(path)  # from the disk this time
    assert s2.result(a).frames == [big] and s2.result(b).frames == [b"small"]
    s2.close()


def test_a_result_cleared_at_once_leaves_its_file_cached_as_a_spare(tmp_path, monkeypatch):
    """A result file is synced and dropped from the page cache only SPILL_AFTER seconds after
    its write: a result cleared before (a round trip's) leaves its file as a spare with its
    pages cached, so the next large write into it is a copy, not fresh pages."""
    if _on_tmpfs(tmp_path):
        pytest.skip("the temporary directory is on tmpfs, whose pages are the files themselves")
    monkeypatch.setattr(files, "SPILL_AFTER", 60.0)  # (longer than this test)
    s = SQLiteStore(str(tmp_path / "t.db"))
    big = os.urandom(1 << 20)
    a = _task(s, [b"small"])
    s.commit()
    s.finish(a, StoredResult({"status": "ok"}, [big]))
    s.commit()
    assert s.clear([a])[0] == 1
    s.commit()  # the result's file is let go of: kept as a spare
    spares = [p for p in s.blob_dir.iterdir() if p.name.startswith(SPARE_PREFIX)]
    assert len(spares) == 1 and _row_files(s) == []
    assert _resident_pages(spares[0]) == (1 << 20) // os.sysconf("SC_PAGE_SIZE")
    s.close()  # (the spill thread, hurried, finds the file gone: nothing synced)
    assert s.files.spilled == 0


def test_result_files_are_spilled_at_once_past_the_bytes_held(tmp_path, monkeypatch):
    """Past SPILL_HOLD_BYTES of result files waiting for their spill, the thread no longer
    waits SPILL_AFTER: a flood of large results does not pile up in the page cache."""
    monkeypatch.setattr(files, "SPILL_AFTER", 600.0)  # (the test's deadline is far shorter)
    monkeypatch.setattr(files, "SPILL_HOLD_BYTES", 1 << 20)
    s = SQLiteStore(str(tmp_path / "t.db"))
    try:
        tids = [_task(s, [b"small"]) for _ in range(4)]
        s.commit()
        values = {tid: os.urandom(600_000) for tid in tids}
        for tid, value in values.items():
            s.finish(tid, StoredResult({"status": "ok"}, [value]))
        s.commit()
        deadline = time.monotonic() + 30
        while s.files.spilled < 2:  # (past 1 MiB: the first ones go at once)
            assert time.monotonic() < deadline, "the spill thread waited past the bytes held"
            time.sleep(0.01)
        assert all(s.result(t).frames == [v] for t, v in values.items())
    finally:
        s.close()


def test_recent_submits_keep_their_taskids_compactly(store):
    """A resent submit gets its taskids back; keeping many submits costs little memory."""
    import tracemalloc

    tids = [_task(store) for _ in range(5)]
    store.remember_submit("c:0", tids)
    store.remember_submit("c:odd", [7, 3, 9])  # (not consecutive: kept as they are)
    assert store.submitted("c:0") == tids and store.submitted("c:odd") == [7, 3, 9]
    assert store.submitted("c:unknown", resent=False) is None
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(200):  # 200 submits of a thousand tasks each
            store.remember_submit(f"c:{k + 1}", list(range(10_000 + 1000 * k, 11_000 + 1000 * k)))
            if k % 50 == 49:
                store.commit()  # (the SQLite store's queued rows are not what is kept)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.submitted("c:200") == list(range(209_000, 210_000))
    # As lists of ints these would hold ~8 MB; as ranges, a few hundred bytes per submit.
    assert grown < 1_000_000, grown


def test_sqlite_a_failed_file_write_keeps_everything_queued(tmp_path, monkeypatch):
    """Disk full while writing a large frame's file: the commit fails, nothing is lost, and the
    next commit writes the file and the row."""
    import errno

    from taskmill.store import files as store_module

    s = SQLiteStore(str(tmp_path / "t.db"))
    big = os.urandom(200_000)
    tid = _task(s, [big])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "open", full, raising=False)
    with pytest.raises(StoreError, match="No space left"):
        s.commit()
    assert s.dirty() and s.db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0
    monkeypatch.undo()
    s.commit()
    assert not s.dirty()
    s.close()
    s2 = SQLiteStore(str(tmp_path / "t.db"))
    assert [t.frames for t, _ in s2.unfinished()] == [[big]] and tid == 0
    s2.close()


def test_sqlite_a_store_locked_at_start_gives_one_clear_error(tmp_path):
    """Another process holds the database's write lock while the store opens: StoreError in
    one line naming the cause (no traceback from sqlite3), and no lock kept behind."""
    import sqlite3

    path = tmp_path / "t.db"
    SQLiteStore(str(path)).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked by another process") as err:
            SQLiteStore(str(path))
        assert "\n" not in str(err.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    SQLiteStore(str(path)).close()


def test_sqlite_binds_bytes_and_none_through_a_registered_adapter(tmp_path):
    """bytes and None parameters (most of a task's row) are found among the registered
    adapters, not looked up through the failing `__adapt__` path; they are stored as they
    are (a BLOB, a NULL), and an adapter registered before is kept."""
    import sqlite3

    from taskmill.store.schema import IDENTITY_ADAPTERS

    for kind in (bytes, type(None)):
        assert sqlite3.adapters.get((kind, sqlite3.PrepareProtocol)) is IDENTITY_ADAPTERS[kind]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a, b)")
    db.execute("INSERT INTO t VALUES (?, ?)", (b"\x00blob", None))
    assert db.execute("SELECT a, b, typeof(a), typeof(b) FROM t").fetchall() == [
        (b"\x00blob", None, "blob", "null")]
    db.close()


def test_sqlite_running_marks_with_the_same_values_are_written_together(tmp_path):
    """A commit's running marks that share their values go in statements of several taskids
    (schema.mark_running_rows); each row gets its own values all the same."""
    from taskmill.store.schema import MARK_RUNNING_SIZES

    s = SQLiteStore(str(tmp_path / "t.db"))
    n = MARK_RUNNING_SIZES[0] + MARK_RUNNING_SIZES[1] + 3
    tids = [_task(s) for _ in range(2 * n)]
    s.commit()
    for i, tid in enumerate(tids):  # two engines in turn, one task handed over
        s.mark_running(tid, engine=i % 2, node=0, attempts=1, tries=1,
                       handed_over=[0] if tid == tids[5] else [])
    s.commit()
    rows = s.db.execute("SELECT tid, state, engine, node, attempts, tries, handed_over "
                        "FROM tasks ORDER BY tid").fetchall()
    assert rows == [(tid, "running", i % 2, 0, 1, 1, b"\x91\x00" if tid == tids[5] else b"\x90")
                    for i, tid in enumerate(tids)]
    s.close()


def test_sqlite_rows_hold_the_bytes_msgpack_packs(tmp_path):
    """The store packs with msgspec's encoder: each blob is the bytes msgpack's
    Packer(use_bin_type=True) gives for the same value (rows are read back with msgpack)."""
    import msgpack

    s = SQLiteStore(str(tmp_path / "t.db"))
    spec = {"nodes": [{"exec": {"kind": "map", "fn": 1}, "pmac": b"\x00" * 32, "timeout": 2.5,
                       "depend": {"gpu": True, "n": -(2 ** 40)}, "span": [0, 2]}], "after": [7]}
    tid = s.allocate()
    s.add(StoredTask(tid, spec, [b"f", b""], 1.0))
    meta = {"tid": tid, "status": "error", "duration": 1e-300, "stdout": "é" * 40,
            "error": {"type": "E", "message": "x" * 300}, "started": None, "big": 2 ** 64 - 1}
    s.finish(tid, StoredResult(meta, [b"r" * 70_000]))
    s.commit()
    row = s.db.execute("SELECT spec, result_meta FROM tasks WHERE tid=?", (tid,)).fetchone()
    assert row == (msgpack.packb(spec, use_bin_type=True), msgpack.packb(meta, use_bin_type=True))
    assert s.result(tid).meta == meta and s.result(tid).frames == [b"r" * 70_000]
    s.close()


def test_sqlite_a_store_opened_and_closed_without_reading_its_tasks_keeps_them(tmp_path):
    """A controller that opened the store and then stopped before it read the tasks (refused
    another cluster's key, could not listen) wrote low_tid past every unfinished task on
    close: the next start saw none of them (lost)."""
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    s.unfinished()
    tid = _task(s)
    s.commit()
    s.abandon()  # (killed)
    s = SQLiteStore(path)
    s.close()  # (opened and closed: nothing read)
    s = SQLiteStore(path)
    try:
        assert [t.tid for t, *_ in s.unfinished()] == [tid]
    finally:
        s.close()


def test_sqlite_an_attempt_given_back_reads_as_queued_after_a_restart(tmp_path):
    """(mark_running with engine None: the attempt came back unstarted.) A restart queues the
    task, rather than waiting for the engine that gave it back."""
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    s.unfinished()
    a, b = _task(s), _task(s)
    s.mark_running(a, engine=0, node=0, attempts=1, tries=1, handed_over=[])
    s.mark_running(b, engine=0, node=0, attempts=1, tries=1, handed_over=[])
    s.commit()
    s.mark_running(a, engine=None, node=0, attempts=0, tries=0, handed_over=[])
    c = _task(s)  # (one not committed yet: its row changes in place)
    s.mark_running(c, engine=0, node=0, attempts=1, tries=1, handed_over=[])
    s.mark_running(c, engine=None, node=0, attempts=0, tries=0, handed_over=[])
    s.commit()
    s.abandon()
    s = SQLiteStore(path)
    try:
        got = {t.tid: (counters["state"], counters["engine"], counters["attempts"])
               for t, counters in s.unfinished()}
        assert got == {a: ("queued", None, 0), b: ("running", 0, 1), c: ("queued", None, 0)}
    finally:
        s.close()


def test_submit_keys_of_the_run_before_survive_a_clock_corrected_forward(tmp_path):
    """A controller whose clock was 2 days behind stored submit keys; restarted with the clock
    corrected, it dropped them at open as older than a day, and a client's resent submit then
    found no key and ran its task twice. Keys are aged against the newest key too."""
    from taskmill.store.schema import SCHEMA, connect, forget_old_rows

    db = connect(str(tmp_path / "t.db"))
    db.executescript(SCHEMA)
    behind = time.time() - 2 * 86400  # (the run before: its clock 2 days behind)
    db.executemany("INSERT INTO submits VALUES (?, ?, ?)",
                   [("older", b"x", behind - 2 * 86400), ("recent", b"x", behind)])
    forget_old_rows(db, time.time(), 0, 0)
    assert [k for (k,) in db.execute("SELECT key FROM submits")] == ["recent"]
    db.close()
