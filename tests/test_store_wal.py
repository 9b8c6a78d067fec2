"""What a long-running SQLite store keeps on disk stays bounded: its write-ahead log while
commits go on (store/wal.py).

A checkpoint on the checkpointer's thread never copies every frame while the controller keeps
committing, and SQLite writes from the WAL's start again only after one that did: before
wal.py the WAL grew by every commit for the controller's whole life (193 MiB after 60,000
tasks over a 4 MiB database).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from taskmill.store import SQLiteStore, StoredResult, StoredTask

WAL_BYTES = 128 * 1024


def _round_trip(s: SQLiteStore, keep: bool) -> int:
    """A task as a lone round trip writes it: added, run, finished, cleared (unless kept),
    each in a commit of its own."""
    tid = s.allocate()
    s.add(StoredTask(tid, {"nodes": [], "after": []}, [os.urandom(200)], 1.0))
    s.commit()
    s.mark_running(tid, engine=0, node=0, attempts=1, tries=1, handed_over=[])
    s.commit()
    s.finish(tid, StoredResult({"status": "ok"}, [tid.to_bytes(8, "little")]))
    s.commit()
    if not keep:
        s.clear([tid])
    return tid


def test_sqlite_wal_is_rewound_and_truncated_while_commits_go_on(tmp_path):
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path, wal_bytes=WAL_BYTES)
    wal = Path(f"{path}-wal")
    kept: list[int] = []
    peak = shrunk = 0
    deadline = time.monotonic() + 60
    n = 0
    # Commits without a pause, until the WAL file has been over the limit and back under it
    # (rewound, then truncated by journal_size_limit) three times.
    while shrunk < 3:
        assert time.monotonic() < deadline, (
            f"the WAL never came back under {WAL_BYTES} bytes after {n} round trips "
            f"(now {wal.stat().st_size} bytes; complete checkpoints: {s.wal.restarts})")
        tid = _round_trip(s, keep=n % 50 == 0)
        if n % 50 == 0:
            kept.append(tid)
        n += 1
        size = wal.stat().st_size
        if size > WAL_BYTES:
            peak = max(peak, size)
        elif peak:
            shrunk, peak = shrunk + 1, 0
    assert s.wal.restarts >= 3
    s.abandon()  # as after a kill -9: what the tail checkpoints copied is all still there
    s2 = SQLiteStore(path)
    try:
        assert s2.finished_ids() == (kept, [])
        assert [s2.result(t).frames[0] for t in kept] == [t.to_bytes(8, "little") for t in kept]
        assert s2.allocate() == n
    finally:
        s2.close()


def test_sqlite_wal_tail_is_copied_by_the_next_commit_only_when_the_thread_asks(tmp_path):
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path, wal_bytes=1 << 40)  # the thread never starts a checkpoint
    try:
        for _ in range(20):
            _round_trip(s, keep=False)
        assert s.wal.restarts == 0
        grown = Path(f"{path}-wal").stat().st_size
        _round_trip(s, keep=False)
        assert Path(f"{path}-wal").stat().st_size > grown  # (appended)
        s.wal.tail_due = True  # what the thread says after copying the bulk
        _round_trip(s, keep=False)  # its first commit copies the rest; the next ones rewind
        assert s.wal.restarts == 1 and not s.wal.tail_due
        size = Path(f"{path}-wal").stat().st_size
        for _ in range(3):
            _round_trip(s, keep=False)
        # (rewound: written from the start again, the file grows no more; journal_size_limit
        # is far above it)
        assert Path(f"{path}-wal").stat().st_size == size
    finally:
        s.close()

