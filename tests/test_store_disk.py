"""What a long-running SQLite store keeps on disk stays bounded: its write-ahead log while
commits go on (store/wal.py), its submit keys once their clients have closed (store/keys.py).

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
from taskmill.store.keys import KEYS_PER_DELETE, RECENT_KEYS_KEPT

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



def _keys(s: SQLiteStore) -> dict[str, int]:
    """How many submit keys the store's table holds, by client prefix."""
    return dict(s.db.execute("SELECT substr(key, 1, 33), COUNT(*) FROM submits GROUP BY 1"))


def test_sqlite_drops_the_submit_keys_of_a_closed_client_a_few_at_each_commit(tmp_path):
    s = SQLiteStore(str(tmp_path / "t.db"))
    closed, alive = "a" * 32 + ":", "b" * 32 + ":"
    try:
        n = 2 * KEYS_PER_DELETE + 10
        for i in range(n):
            s.remember_submit(f"{closed}{i}", [i])
        for i in range(3):
            s.remember_submit(f"{alive}{i}", [n + i])
        s.commit()
        assert _keys(s) == {closed: n, alive: 3}
        s.remember_submit(f"{closed}{n}", [n + 3])  # (queued, not written yet)
        assert not s.keys.dead.add("not a client's prefix")
        s.forget_keys(closed)
        looks = []
        while closed in _keys(s):
            assert len(looks) < 5, looks
            s.remember_submit(f"{alive}{len(looks) + 3}", [n + 4 + len(looks)])
            s.commit(everything=True)  # (looks now, as a commit does once a second)
            looks.append(_keys(s).get(closed, 0))
        # at most KEYS_PER_DELETE a look; the one queued never written; the other client's kept
        assert looks == [n - KEYS_PER_DELETE, n - 2 * KEYS_PER_DELETE, 0]
        assert _keys(s) == {alive: 6} and s.submitted(f"{alive}0") == [n]
        s.remember_submit(f"{alive}99", [n + 99])
        s.commit(everything=True)
        assert not s.keys.dead.waiting  # (let go once none is left)
    finally:
        s.close()


def test_sqlite_keeps_a_bounded_number_of_keys_in_memory_and_finds_the_rest_in_its_table(tmp_path):
    s = SQLiteStore(str(tmp_path / "t.db"))
    try:
        n = RECENT_KEYS_KEPT + 100
        for i in range(n):  # none committed: every one stays in memory (the table lacks it)
            s.remember_submit(f"c:{i}", [i])
        assert len(s.keys.recent) == n
        assert s.submitted("c:0", resent=False) == [0]
        s.commit()
        s.remember_submit(f"c:{n}", [n])  # (committed ones go now, oldest first)
        assert len(s.keys.recent) == RECENT_KEYS_KEPT
        assert s.submitted("c:0", resent=False) is None  # (only a resent submit repeats a key)
        assert s.submitted("c:0") == [0] and s.submitted(f"c:{n - 1}") == [n - 1]  # (table)
        assert s.submitted(f"c:{n}") == [n]  # (memory: not committed yet)
        s.withdraw([], key=f"c:{n}")  # (a refused submit's key: as if never seen)
        assert s.submitted(f"c:{n}") is None
    finally:
        s.close()


def test_a_store_file_replaced_under_the_store_is_noticed(tmp_path):
    """Another file at the store's path (moved aside, a new one made in its place): the
    store says it is lost, as for a file deleted (tests/system/test_store_faults.py)."""
    path = str(tmp_path / "t.db")
    store = SQLiteStore(path)
    try:
        assert store.lost is None
        os.rename(path, path + ".aside")
        open(path, "wb").close()
        deadline = time.monotonic() + 30
        while store.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)  # (the checkpointer looks every 0.5 s)
        assert store.lost is not None and "deleted or replaced" in store.lost
    finally:
        store.close()


def test_a_store_refuses_a_cluster_key_other_than_the_one_it_was_written_with(tmp_path):
    """A store kept from another cluster used to be opened silently: its results then failed
    their signature checks, and its queued tasks were refused by every engine and failed for
    good. It keeps a digest of its key now (the key cannot be read back from it)."""
    import sqlite3

    import pytest

    from taskmill.errors import StoreError

    path = str(tmp_path / "tasks.db")
    store = SQLiteStore(path)
    store.check_key(b"k1" * 16)  # (a new store takes the first key)
    store.close()
    store = SQLiteStore(path)
    try:
        store.check_key(b"k1" * 16)
        with pytest.raises(StoreError, match="written by a cluster with another key"):
            store.check_key(b"k2" * 16)
    finally:
        store.close()
    db = sqlite3.connect(path)  # a store older than the check takes the next key it sees
    with db:
        db.execute("DELETE FROM meta WHERE key='key_check'")
    db.close()
    store = SQLiteStore(path)
    try:
        store.check_key(b"k2" * 16)
        with pytest.raises(StoreError):
            store.check_key(b"k1" * 16)
    finally:
        store.close()
    assert b"k2" not in Path(path).read_bytes()


def test_a_wal_deleted_under_the_store_is_noticed_and_what_it_held_survives_a_kill(tmp_path):
    """The WAL's file deleted (a cleaner of /tmp that spares the database file): SQLite wrote
    on into the deleted file, unnoticed, and a kill -9 then lost every task committed since the
    last checkpoint, the taskid counter with them (the next store numbered from 0 again). Now
    the store copies what the deleted WAL holds into its file and says it is lost."""
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "t.db")
    script = (
        "import os, signal, time\n"
        "from taskmill.store import SQLiteStore, StoredTask\n"
        f"s = SQLiteStore({path!r})\n"
        "for _ in range(5):\n"
        "    s.add(StoredTask(s.allocate(), {'nodes': [], 'after': []}, [b'x'], 1.0))\n"
        "s.commit()\n"
        f"os.unlink({path!r} + '-wal')\n"
        "deadline = time.monotonic() + 30\n"
        "while s.lost is None and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print(s.lost, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert "write-ahead log" in run.stdout and "deleted or replaced" in run.stdout, run.stdout
    s = SQLiteStore(path)
    try:
        assert [t.tid for t, _ in s.unfinished()] == [0, 1, 2, 3, 4]
        assert s.allocate() == 5  # (no taskid given twice)
    finally:
        s.close()
