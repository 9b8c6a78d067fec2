"""The SQLite store on a full disk (a small tmpfs: root only, as in CI): a commit that cannot
write its files leaves none of them behind, and the results already committed can still be
cleared, which frees their space so that the queued rows commit."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from taskmill.errors import StoreError
from taskmill.store import SQLiteStore, StoredResult, StoredTask

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _finished(s: SQLiteStore, payload: bytes) -> int:
    tid = s.allocate()
    s.add(StoredTask(tid, {"nodes": [], "after": []}, [b"body"], 1.0))
    s.finish(tid, StoredResult({"status": "ok"}, [payload]))
    return tid


def _fill(s: SQLiteStore) -> tuple[dict[int, bytes], int, bytes]:
    """Commit 1 MiB results until one does not fit: (the committed ones, the one that waits
    and its payload)."""
    committed: dict[int, bytes] = {}
    for _ in range(10):
        payload = os.urandom(MIB)
        tid = _finished(s, payload)
        try:
            s.commit()
        except StoreError as e:
            assert "No space left" in str(e), e
            return committed, tid, payload
        committed[tid] = payload
    raise AssertionError("10 MiB of results fit on a 4 MiB disk")


@pytest.mark.timeout(60)
def test_a_failed_file_write_leaves_no_file_behind(small_disk):
    """The file that did not fit was left half written, holding the disk's last free space
    (SQLite then could not even grow its WAL); the failed commit now leaves the disk as it
    was, and the result stays queued."""
    s = SQLiteStore(str(small_disk / "t.db"))
    try:
        committed, waiting, payload = _fill(s)
        names = sorted(f.name for f in s.blob_dir.iterdir())
        assert names == sorted(f"{t}.result.0" for t in committed)
        assert s.dirty() and s.result(waiting).frames == [payload]
    finally:
        s.abandon()


@pytest.mark.timeout(60)
def test_committed_results_are_cleared_on_a_full_disk_and_the_queued_rows_then_commit(
        small_disk):
    """The clear committed what was queued first, and failed with that commit: no result
    could be cleared through the API while the disk was full. Now the committed results are
    dropped (their files removed, not kept as spares) and the queued result commits."""
    path = str(small_disk / "t.db")
    s = SQLiteStore(path)
    committed, waiting, payload = _fill(s)
    free = shutil.disk_usage(small_disk).free
    first = sorted(committed)[:2]
    assert s.clear(first) == (2, [])
    assert shutil.disk_usage(small_disk).free >= free + 2 * MIB - 64 * 1024
    assert all(s.result(t) is None for t in first)
    assert s.counts() == (len(committed) - 2 + 1, 0)
    s.commit()  # (the freed space holds the result that waited)
    assert not s.dirty()
    s.close()
    s2 = SQLiteStore(path)
    try:
        assert s2.result(waiting).frames == [payload]
        for t in set(committed) - set(first):
            assert s2.result(t).frames == [committed[t]]
        assert all(s2.result(t) is None for t in first)
    finally:
        s2.close()


@pytest.mark.timeout(60)
def test_a_clear_of_a_result_not_yet_written_fails_whole_and_says_what_to_do(small_disk):
    """While the commit fails, a result not yet written cannot be cleared: StoreError saying
    that nothing was cleared and what to do; clear() of all drops every result written and
    leaves that one, which commits once there is room."""
    s = SQLiteStore(str(small_disk / "t.db"))
    try:
        committed, waiting, payload = _fill(s)
        some = sorted(committed)[0]
        with pytest.raises(StoreError, match="nothing was cleared") as e:
            s.clear([some, waiting])
        assert str(waiting) in str(e.value) and "not written yet" in str(e.value)
        assert s.result(some).frames == [committed[some]]  # (nothing was cleared)
        assert s.clear(None) == (len(committed), [])
        assert s.result(waiting).frames == [payload]
        s.commit()
        assert not s.dirty() and s.finished_ids() == ([waiting], [])
    finally:
        s.close()
