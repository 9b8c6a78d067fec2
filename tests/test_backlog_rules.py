"""The backlog's rules (controller/backlog.py) and the store's side of it: queued tasks past
the window are kept as taskids only and read back in taskid order, committed rows only."""

from __future__ import annotations

from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmill.controller.backlog import Backlog, DeferredWatches
from taskmill.defaults import MIN_QUEUE_WINDOW, queue_window, queue_window_bytes
from taskmill.store import SQLiteStore, StoredResult, StoredTask


def test_new_tasks_stay_in_the_backlog_once_the_window_is_full_and_behind_it_after():
    b = Backlog(10)
    assert not b.holds(0, active=9)
    assert b.holds(1, active=10)  # the window is full
    b.add(1)
    assert b.holds(2, active=0)  # a backlog exists: every new task goes behind it
    for tid in range(2, 6):
        b.add(tid)
    b.add(8)
    assert len(b) == 6 and 3 in b and 6 not in b and list(b.ids()) == [1, 2, 3, 4, 5, 8]
    assert b.runs[b.head:] == [range(1, 6), range(8, 9)]  # runs of consecutive taskids


def test_the_backlog_is_read_back_in_taskid_order_below_the_low_water_mark():
    b = Backlog(10, batch=4)
    for tid in range(100, 130):
        b.add(tid)
    assert b.wanted(active=5) == 0  # not below half the window
    assert b.wanted(active=4) == 4  # a batch at most ...
    big = Backlog(10, batch=100)
    big.add(0)
    assert big.wanted(active=0) == 1  # ... and up to the window, or what there is
    for tid in range(1, 30):
        big.add(tid)
    assert big.wanted(active=0) == 10 and big.wanted(active=3) == 7
    assert b.peek(4) == [100, 101, 102, 103]
    b.drop_first(3)
    assert b.peek(2) == [103, 104] and len(b) == 27 and 100 not in b
    # A task numbered below what was read back (a run()'s leased taskid) skips the backlog;
    # one between backlog tasks goes in its place.
    assert not b.holds(101, active=10) and b.holds(115, active=0) is True
    b.remove(115)
    b.add(115)
    assert list(b.ids()) == list(range(103, 130))
    with pytest.raises(ValueError, match="already"):
        b.add(120)


def test_a_backlog_task_taken_out_of_the_middle():
    b = Backlog(5)
    for tid in range(10):
        b.add(tid)
    assert b.remove(4) and not b.remove(4) and not b.remove(99)
    assert list(b.ids()) == [0, 1, 2, 3, 5, 6, 7, 8, 9] and len(b) == 9
    b.drop_first(5)
    assert b.peek(10) == [6, 7, 8, 9] and b.cursor == 5


def test_a_failure_dooms_the_backlog_tasks_after_it_and_a_success_forgets_them():
    b = Backlog(5)
    for tid in range(10, 20):
        b.add(tid)
        b.wait_for(tid, [1, 2, 2] if tid < 15 else [3])
    assert b.waits == {1: [range(10, 15)], 2: [range(10, 15)], 3: [range(15, 20)]}
    b.remove(12)  # (read back out of order: the scheduler holds it now)
    b.finished(1, ok=True)  # a success: its dependents wait on, read back in order
    b.finished(3, ok=False)  # a failure: its dependents still here are doomed
    b.finished(2, ok=False)
    assert b.doomed == {**dict.fromkeys(range(15, 20), 3), 10: 2, 11: 2, 13: 2, 14: 2}
    assert b.waits == {}
    b.wait_for(19, [7])
    b.drop_first(len(b))  # (an empty backlog keeps no notes)
    assert b.waits == {}


def test_no_window_no_backlog():
    assert not Backlog(None).holds(5, active=10**9)
    assert Backlog(None).wanted(0) == 0
    with pytest.raises(ValueError, match="at least 1"):
        Backlog(0)


def test_the_window_follows_the_memory_budget():
    assert queue_window(256) == 32768  # half of 256 MiB at 4 kB a task
    assert queue_window(16) == 2048 and queue_window(1) == MIN_QUEUE_WINDOW


def test_the_window_counts_the_payload_bytes_held_too():
    assert queue_window_bytes(256) == 64 << 20  # a quarter of the budget
    b = Backlog(100, window_bytes=10_000)
    assert not b.holds(0, active=0, held_bytes=0, size=50_000)  # alone: in, however large
    assert b.holds(1, active=1, held_bytes=50_000, size=10)  # past the bytes, few tasks
    assert not b.holds(1, active=3, held_bytes=6_000, size=4_000)  # up to the bytes: in
    assert b.holds(1, active=3, held_bytes=6_000, size=4_001)
    for tid in range(1, 10):
        b.add(tid)
    # Read back only while the bytes held are below half the window's (or nothing is held) ...
    assert b.wanted(active=1, held_bytes=5_000) == 0 and b.wanted(active=0) == 9
    assert b.wanted(active=1, held_bytes=4_999) == 9
    # ... a batch stopping before the task that would bring them past it (the store asks
    # task by task), but the first one whenever nothing is held.
    assert b.fits(1, 0, 10_000) and not b.fits(1, 0, 10_001) and not b.fits(0, 1, 10_001)
    assert b.fits(0, 0, 10**9)
    # A read-back whose first task did not fit waits for fewer bytes held, or none active.
    b.stall(4_000)
    assert b.wanted(active=1, held_bytes=4_000) == 0 and b.wanted(active=1, held_bytes=3_999)
    assert b.wanted(active=0) == 9
    b.drop_first(1)
    assert b.stalled is None and b.wanted(active=1, held_bytes=4_000) == 8
    assert Backlog(None, window_bytes=10).window_bytes is None  # (no window, no bytes either)
    assert Backlog(5).fits(3, 7, 10**12)  # (no bytes given: counted by tasks only)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=60),
       steps=st.lists(st.sampled_from(["submit", "finish", "refill"]), max_size=200),
       window=st.integers(1, 12), window_bytes=st.integers(0, 600))
def test_the_bytes_held_stay_within_the_window_and_every_task_runs_in_order(
        sizes, steps, window, window_bytes):
    """The controller's use of the rules (submits.py: `holds` on submit, `wanted` then the
    store's `fits` task by task on refill), modelled: whatever the sizes, the payload bytes
    held never pass the window's unless one task alone is held, tasks run in taskid order,
    and every one runs."""
    b = Backlog(window, batch=5, window_bytes=window_bytes)
    active: dict[int, int] = {}  # taskid -> payload bytes, held in memory
    ran: list[int] = []
    size = dict(enumerate(sizes))
    pending = iter(range(len(sizes)))

    def held() -> int:
        return sum(active.values())

    def refill() -> None:
        want = b.wanted(len(active), held())
        if not want:
            return
        fits, k, total = partial(b.fits, len(active)), 0, held()
        for tid in b.peek(want):  # (as store/active.py read_fitting)
            total += size[tid]
            if not fits(k, total):
                break
            k += 1
        if not k:  # (as submits.refill: the first did not fit, so none is wanted for now)
            b.stall(held())
            assert active and not b.wanted(len(active), held())  # (the loop must not spin)
            return
        for tid in b.peek(k):
            active[tid] = size[tid]
        b.drop_first(k)

    def finish() -> None:
        if active:
            tid = min(active)
            del active[tid]
            ran.append(tid)
            refill()

    def check() -> None:
        assert len(active) <= window
        assert held() <= window_bytes or len(active) == 1, (active, window_bytes)
        assert not active or not b or max(active) < b.first()  # FIFO: the backlog is behind

    for step in steps:
        if step == "submit":
            tid = next(pending, None)
            if tid is None:
                continue
            if b.holds(tid, len(active), held(), size[tid]):
                b.add(tid)
            else:
                active[tid] = size[tid]
        elif step == "finish":
            finish()
        else:
            refill()
        check()
    for tid in pending:  # the rest submitted at once
        if b.holds(tid, len(active), held(), size[tid]):
            b.add(tid)
        else:
            active[tid] = size[tid]
        check()
    for _ in range(2 * len(sizes) + 2):  # nothing starves: each finish makes room
        finish()
        check()
    assert ran == list(range(len(sizes))) and not b and not active


def test_the_store_stops_a_read_back_by_bytes_and_a_restart_too(tmp_path):
    s = SQLiteStore(str(tmp_path / "t.db"))
    big = 100_000  # (in a file of its own beside the database: its size is known unread)
    for tid in range(6):
        s.allocate()
        s.add(StoredTask(tid, {"nodes": [], "after": []}, [b"x" * big], 1.0), keep=tid == 0)
    try:
        assert s.held_bytes == big  # task 0, kept in memory
        s.commit()
        b = Backlog(100, window_bytes=3 * big)
        rows, cut = s.load_queued([1, 2, 3, 4], fits=partial(b.fits, 1))
        assert ([t.tid for t, _ in rows], cut) == ([1, 2], 2)  # a third would pass 3 * big
        assert s.held_bytes == 3 * big and s.task(3) is None
        s.finish(0, StoredResult({"status": "ok"}, []))
        s.finish(1, StoredResult({"status": "ok"}, []))
        s.finish(2, StoredResult({"status": "ok"}, []))
        assert s.held_bytes == 0
        rows, cut = s.load_queued([3, 4], fits=partial(Backlog(9, window_bytes=10).fits, 0))
        assert ([t.tid for t, _ in rows], cut) == ([3], 1)  # alone, however large
        s.mark_running(3, engine=0, node=0, attempts=1, tries=1, handed_over=[])
        s.held_from = 4
        s.close()
        s = SQLiteStore(str(tmp_path / "t.db"))
        held = Backlog(100, window_bytes=big)
        got = s.unfinished(queued_max=100, held=held, fits=partial(held.fits, 0))
        # the running one first (always), then no queued one fits beside it
        assert [t.tid for t, _ in got] == [3] and list(held.ids()) == [4, 5]
        assert s.held_bytes == big
    finally:
        s.close()


def test_deferred_requests_register_task_by_task_as_they_are_read_back():
    d = DeferredWatches()
    d.add("w1", [3, 4, 5])
    d.add("w2", [1, 5, 9])
    assert list(d.upto(2)) == [(1, "w2")]
    assert d.take(9) == ["w2"]  # read back out of order (an abort)
    assert sorted(d.upto(5)) == [(3, "w1"), (4, "w1"), (5, "w1"), (5, "w2")]
    assert list(d.upto(100)) == []  # 9 was taken already
    assert len(d) == 0


def _add(store, tid, keep=False):
    store.add(StoredTask(tid, {"nodes": [{"n": tid}], "after": []}, [b"t%d" % tid], 1.0),
              keep=keep)


def test_the_store_reads_back_committed_queued_rows_only(tmp_path):
    s = SQLiteStore(str(tmp_path / "t.db"))
    try:
        for _ in range(6):
            _add(s, s.allocate())
        assert s.task(2) is None  # a backlog task is not kept in memory
        s.commit()
        _add(s, s.allocate())  # 6: not committed yet
        s.finish(1, StoredResult({"status": "ok"}, []))  # (not a backlog task any more)
        rows, cut = s.load_queued([2, 3, 6])
        assert cut == 2 and [t.tid for t, _ in rows] == [2, 3]
        assert rows[0][0].frames == [b"t2"] and rows[0][1]["state"] == "queued"
        assert s.task(3).frames == [b"t3"]  # read back: in memory now, for dispatch
        assert s.load_queued([6]) == ([], 0)
        rows, cut = s.load_queued([4], keep=False)  # (only read: task_info)
        assert (cut, rows[0][0].tid, s.task(4)) == (1, 4, None)
    finally:
        s.close()


def test_a_restart_reads_back_the_window_and_leaves_the_rest_as_taskids(tmp_path):
    s = SQLiteStore(str(tmp_path / "t.db"))
    for _ in range(10):
        _add(s, s.allocate())
    s.mark_running(7, engine=0, node=0, attempts=1, tries=1, handed_over=[])
    s.held_from = 0  # (the controller says where its backlog begins: none is in memory)
    s.close()
    s = SQLiteStore(str(tmp_path / "t.db"))
    try:
        held = Backlog(3)
        got = s.unfinished(queued_max=3, held=held)
        assert [t.tid for t, _ in got] == [0, 1, 2, 7]  # the running one too
        assert list(held.ids()) == [3, 4, 5, 6, 8, 9] and s.task(4) is None
    finally:
        s.close()


@pytest.mark.parametrize("argv", [["controller", "--memory-budget", "8"],
                                  ["cluster", "start", "--memory-budget", "nan"],
                                  ["controller", "--memory-budget", "lots"],
                                  ["controller", "--queue-window", "0"]])
def test_the_memory_budget_refuses_what_is_not_a_size(argv, capsys):
    from taskmill.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "must be a" in capsys.readouterr().err


def test_the_memory_budget_options(monkeypatch):
    from taskmill import Cluster
    from taskmill.cli import build_parser

    monkeypatch.delenv("TASKMILL_QUEUE_WINDOW", raising=False)
    a = build_parser().parse_args(["controller", "--memory-budget", "64"])
    assert (a.memory_budget, a.queue_window) == (64, None)
    assert build_parser().parse_args(["cluster", "start", "--memory-budget", "512"]
                                     ).memory_budget == 512
    assert build_parser().parse_args(["controller"]).memory_budget == 256
    with pytest.raises(ValueError, match="memory_budget must be a number of MiB >= 16"):
        Cluster(2, memory_budget=1)


@pytest.mark.parametrize("budget", [8, float("nan"), float("inf"), "256", True])
def test_a_cluster_refuses_a_memory_budget_that_is_not_a_size(budget):
    from taskmill import Cluster

    with pytest.raises(ValueError, match="memory_budget must be a number of MiB >= 16"):
        Cluster(1, memory_budget=budget)
