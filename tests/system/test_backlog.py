"""The controller's backlog (issue 20): queued tasks beyond the queue window wait only in the
store, and every verb answers for them as for a queued task held in memory.

Each test runs a `taskmill controller` of its own with a window of 20 tasks (`--queue-window`,
the tests' stand-in for a small `--memory-budget`) and engine processes it starts when it wants
the tasks to run. The rules are in src/taskmill/controller/backlog.py."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter

import pytest
from systest import TASKMILL, controller_process, poll, read_lines

import taskmill
from taskmill import MapTask, TaskClient

pytestmark = pytest.mark.timeout(240, method="thread")

WINDOW = 20
SMALL = ("--queue-window", str(WINDOW), "--prefetch", "1")


def logged(i, path):
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i * i


def noted(name, path):
    with open(path, "a") as f:
        f.write(f"{name}\n")
    return name


def flaky(path):
    """Fails its first attempt (the file does not exist yet), then succeeds."""
    if not os.path.exists(path):
        open(path, "w").close()
        raise RuntimeError("first attempt fails")
    return "second"


def test_a_backlog_runs_in_taskid_order_and_holds_at_most_the_window(tmp_path):
    runs = tmp_path / "runs.txt"
    with controller_process(tmp_path, args=SMALL) as ctl, TaskClient(ctl.conn, timeout=60) as tc:
        futs = [tc.submit(logged, i, str(runs)) for i in range(300)]
        assert [f.taskid for f in futs] == list(range(300))
        first = tc.statistics()
        assert first["queue_window"] == WINDOW
        assert first["backlog"] == 300 - WINDOW and first["queued_in_memory"] == WINDOW
        assert tc.queue_status()["scheduled"] == 300
        ctl.engines.append(ctl.engine())  # one engine, one task at a time: FIFO is visible
        seen = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                s = tc.statistics()
                seen.append((s["queued_in_memory"], s["backlog"]))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            assert [f.result(timeout=120) for f in futs] == [i * i for i in range(300)]
        finally:
            stop.set()
            sampler.join(30)
        assert read_lines(runs) == [str(i) for i in range(300)]  # in taskid order, once each
        assert seen and max(held for held, _ in seen) <= WINDOW, seen
        assert tc.statistics()["backlog"] == 0


def test_every_verb_answers_for_a_backlog_task_as_for_a_queued_one(tmp_path):
    with controller_process(tmp_path, args=SMALL) as ctl, TaskClient(ctl.conn, timeout=60) as tc:
        tids = tc.mapper(block=False).map(abs, range(-100, 0))
        last, aborted = tids[-1], tids[90]
        assert tc.statistics()["backlog"] == 80
        # queue_status, task_info, get_task_result(block=False)
        assert tc.queue_status() == {"scheduled": 100, "pending": 0, "succeeded": 0,
                                     "failed": 0}
        assert tc.queue_status(verbose=True)["scheduled"] == tids
        info = tc.task_info(last)
        assert (info["state"], info["kind"], info["backlog"]) == ("scheduled", "map", True)
        assert info["submitted"] > 0
        assert tc.get_task_result(last) is None
        # a task after a backlog task goes behind it; one after an aborted task fails
        after_last = tc.run(MapTask(abs, (-7,), after=[last]))
        flag = tmp_path / "flaky"
        retried = tc.run(MapTask(flaky, (str(flag),), retries=1))
        # abort: finished as aborted at once, never run
        assert tc.abort(aborted) is None
        with pytest.raises(taskmill.TaskAborted):
            tc.get_task_result(aborted)
        assert tc.task_info(aborted)["state"] == "failed"
        with pytest.raises(taskmill.DependencyError):
            tc.get_task_result(tc.run(MapTask(abs, (-1,), after=[aborted])), block=True)
        # block=True and barrier wait for backlog tasks until engines come
        blocked = {}
        waiter = threading.Thread(target=lambda: blocked.update(
            r=tc.get_task_result(last, block=True)), daemon=True)
        waiter.start()
        assert tc.statistics()["backlog"] > 0 and waiter.is_alive()
        ctl.engines += [ctl.engine(), ctl.engine()]
        rest = [t for t in tids if t != aborted]
        tc.barrier(rest)
        waiter.join(60)
        assert blocked == {"r": 1}
        assert [tc.get_task_result(t) for t in rest] == [-x for x in range(-100, 0)
                                                         if tids[x + 100] != aborted]
        assert tc.get_task_result(after_last, block=True) == 7
        assert tc.get_task_result(retried, block=True) == "second"
        assert tc.task_info(retried)["attempts"] == 2
        status = tc.queue_status(verbose=True)
        assert status["failed"] == sorted([aborted, status["failed"][-1]])
        assert status["scheduled"] == [] and status["pending"] == []
        assert tc.clear() == 103 and tc.statistics()["backlog"] == 0


@pytest.mark.timeout(300, method="thread")
def test_kill9_of_the_controller_with_a_backlog_loses_nothing_and_runs_nothing_twice(tmp_path):
    runs = tmp_path / "runs.txt"
    n = 400
    with controller_process(tmp_path, args=SMALL, engines=2) as ctl:
        with TaskClient(ctl.conn, timeout=60) as tc:
            tids = tc.mapper(block=False).map(logged, range(n), [str(runs)] * n)
            assert tids == list(range(n))
            poll(lambda: runs.exists() and len(read_lines(runs)) >= 50, 120, "50 tasks run")
            assert tc.statistics()["backlog"] > 0
        ctl.kill9()
        ctl.start()
        ctl.ready()
        with TaskClient(ctl.conn, timeout=60) as tc:
            # A restart reads back the window (and what was running: 2 engines, prefetch 1)
            # and leaves the rest in the store.
            assert tc.statistics()["queued_in_memory"] <= WINDOW + 2
            tc.barrier(tids)
            assert Counter(read_lines(runs)) == Counter(str(i) for i in range(n))
            assert [tc.get_task_result(t) for t in tids] == [i * i for i in range(n)]
            assert tc.statistics()["backlog"] == 0


def test_taskmill_status_shows_the_backlog(tmp_path):
    with controller_process(tmp_path, args=SMALL) as ctl, TaskClient(ctl.conn, timeout=60) as tc:
        tc.mapper(block=False).map(abs, range(100))
        out = subprocess.run([*TASKMILL, "status", "--connection-file", str(ctl.conn)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert "queue:      100 scheduled, 0 pending, 0 succeeded, 0 failed" in lines
        assert ("backlog:    80 of the scheduled wait in the store only; 20 active in memory "
                f"(window {WINDOW})") in lines, out.stdout


def test_a_store_in_memory_keeps_no_backlog(tmp_path):
    with controller_process(tmp_path, db=":memory:", args=SMALL) as ctl, \
            TaskClient(ctl.conn, timeout=60) as tc:
        tc.mapper(block=False).map(abs, range(100))
        stats = tc.statistics()
        assert stats["backlog"] == 0 and stats["queued_in_memory"] == 100
        assert stats["queue_window"] is None


def test_a_leased_task_after_a_backlog_task_waits_for_it(tmp_path, keep_leases):
    """run() numbers its tasks from a lease taken before: one may come before the backlog
    while the task it runs after is still in it. It is read back first, then waits for that
    task (which is read back out of order) instead of running before it."""
    runs = tmp_path / "runs.txt"
    args = ("--queue-window", "5", "--prefetch", "1")
    with controller_process(tmp_path, args=args) as ctl, \
            TaskClient(ctl.conn, timeout=60) as a, TaskClient(ctl.conn, timeout=60) as b:
        first = a.run(MapTask(noted, ("a0", str(runs))))  # (its lease goes on past it)
        assert first == 0
        tids = b.mapper(block=False).map(logged, range(100, 130), [str(runs)] * 30)
        assert b.statistics()["backlog"] > 0 and tids[-1] in range(16, 100)
        second = a.run(MapTask(noted, ("a1", str(runs)), after=[tids[-1]]))
        assert second == 1  # (leased: below the backlog's taskids)
        ctl.engines.append(ctl.engine())
        assert a.get_task_result(second, block=True) == "a1"
        lines = read_lines(runs)
        assert lines.index("a1") > lines.index(str(129)), lines


def fails():
    raise RuntimeError("task A fails")


# A window of 4 tasks (refilled below 2): task A, then three that no engine satisfies (they
# hold the window until aborted), then B (after=[A]) waits in the backlog.
HELD = ("--queue-window", "4", "--prefetch", "1", "--unmet-timeout", "600")


def backlog_after(tmp_path, tc, ctl, a_task, finish_a, held_after):
    """Submit A (`a_task`), three fillers, then B after A (held in the backlog); `finish_a`
    ends A (with the engine started), after which the backlog holds `held_after` tasks; clear
    A's result; abort the fillers so that B is read back. B's taskid and the file B writes to
    if it runs."""
    runs = tmp_path / "runs.txt"
    a = tc.run(a_task)
    fillers = [tc.run(MapTask(abs, (-1,), depend={"never": True})) for _ in range(3)]
    b = tc.run(MapTask(noted, ("B", str(runs)), after=[a]))
    assert tc.statistics()["backlog"] == 1
    finish_a(a)
    assert tc.statistics()["backlog"] == held_after  # (3 fillers active: no refill yet)
    assert tc.clear(a) == 1
    for f in fillers:
        tc.abort(f)
    poll(lambda: tc.statistics()["backlog"] == 0, 60, "B read back from the backlog")
    return b, runs


@pytest.mark.parametrize("how", ["failed", "aborted"])
def test_a_backlog_task_after_a_task_that_failed_and_was_cleared_fails(tmp_path, how):
    """A dependency that failed (or was aborted) never lets its dependents run, even when its
    result was cleared while they waited in the backlog (in memory, they fail at once)."""
    with controller_process(tmp_path, args=HELD) as ctl, TaskClient(ctl.conn, timeout=60) as tc:
        def finish_a(a):
            if how == "failed":
                ctl.engines.append(ctl.engine())
                with pytest.raises(RuntimeError):
                    tc.get_task_result(a, block=True)
            else:
                tc.abort(a)
                with pytest.raises(taskmill.TaskAborted):
                    tc.get_task_result(a)

        a_task = MapTask(fails) if how == "failed" else MapTask(abs, (-1,), depend={"x": 1})
        # B fails as A does, as it would in memory (not only once it is read back)
        b, runs = backlog_after(tmp_path, tc, ctl, a_task, finish_a, held_after=0)
        if how == "aborted":
            ctl.engines.append(ctl.engine())
        with pytest.raises(taskmill.DependencyError, match=f"task {b} did not run"):
            tc.get_task_result(b, block=True)
        assert not runs.exists()


def test_a_backlog_task_after_a_task_that_succeeded_and_was_cleared_runs(tmp_path):
    """As in memory: B's dependency finished well, so B runs even though A's result is gone."""
    with controller_process(tmp_path, args=HELD) as ctl, TaskClient(ctl.conn, timeout=60) as tc:
        def finish_a(a):
            ctl.engines.append(ctl.engine())
            assert tc.get_task_result(a, block=True) == 1

        b, runs = backlog_after(tmp_path, tc, ctl, MapTask(abs, (-1,)), finish_a, held_after=1)
        assert tc.get_task_result(b, block=True) == "B"
        assert read_lines(runs) == ["B"]


def fails_when_released(started, release):
    """Marks `started`, waits (bounded) until `release` exists, then fails."""
    import time

    open(started, "w").close()
    end = time.monotonic() + 90
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.01)
    raise RuntimeError("task A fails")


@pytest.mark.timeout(300, method="thread")
def test_backlog_tasks_after_a_failure_fail_across_a_restart_and_down_a_chain(tmp_path):
    """A runs; four fillers hold the window; B (after A) and C (after B) wait in the backlog.
    The controller is killed and started again: B and C are still in the backlog (past the
    window it reads back). A then fails: B and C fail with DependencyError, and never run,
    although A's and B's results are cleared before they could be read back."""
    runs, started, release = (tmp_path / n for n in ("runs.txt", "started", "release"))
    with controller_process(tmp_path, args=HELD) as ctl:
        with TaskClient(ctl.conn, timeout=60) as tc:
            a = tc.run(MapTask(fails_when_released, (str(started), str(release))))
            ctl.engines.append(ctl.engine())
            poll(started.exists, 60, "A started")
            fillers = [tc.run(MapTask(abs, (-1,), depend={"never": True})) for _ in range(4)]
            b = tc.run(MapTask(noted, ("B", str(runs)), after=[a]))
            c = tc.run(MapTask(noted, ("C", str(runs)), after=[b]))
            assert tc.statistics()["backlog"] == 3  # the last filler, B, C
        ctl.kill9()
        ctl.start()
        ctl.ready()
        with TaskClient(ctl.conn, timeout=60) as tc:
            assert tc.statistics()["backlog"] == 2  # B and C (A is running, not queued)
            release.touch()
            with pytest.raises(RuntimeError, match="task A fails"):
                tc.get_task_result(a, block=True)
            for t, dep in ((b, a), (c, b)):
                with pytest.raises(taskmill.DependencyError, match=f"task {dep}, which"):
                    tc.get_task_result(t, block=True, timeout=30)  # (at once, in fact)
            assert tc.clear([a, b]) == 2
            for f in fillers:
                tc.abort(f)
            poll(lambda: tc.statistics()["backlog"] == 0, 60, "the backlog read back")
            with pytest.raises(taskmill.DependencyError):
                tc.get_task_result(c)
            assert not runs.exists()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.timeout(90, method="thread")
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_large_queued_payloads_wait_in_the_store_and_the_controller_stays_small(tmp_path):
    """Payloads queued while nothing runs: the controller holds at most the window's bytes of
    them (a quarter of --memory-budget), not all of them (twice over, before: a received
    frame's copy was kept in it). A task larger than that window runs too, alone."""
    n, size = 48, 2 << 20  # 96 MiB of payload queued under a 32 MiB budget (8 MiB of them)
    with controller_process(tmp_path, args=("--memory-budget", "32", "--prefetch", "1")) as ctl, \
            TaskClient(ctl.conn, timeout=60) as tc:
        pid = ctl.proc.pid
        before = rss_mib(pid)
        futs = [tc.submit(len, os.urandom(size)) for _ in range(n)]
        futs.append(tc.submit(len, os.urandom(12 << 20)))  # larger than the window's bytes
        stats = poll(lambda: (s := tc.statistics())["queued_in_memory"] + s["backlog"] == n + 1
                     and s, 60, "every task stored")
        grown = rss_mib(pid) - before
        print(f"controller RSS {before:.0f} MiB, +{grown:.0f} with {n + 1} tasks queued")
        assert grown < n * size / 2**20 / 2, f"the controller grew {grown:.0f} MiB"
        assert stats["queue_window_bytes"] == 8 << 20
        assert 0 < stats["payload_bytes_in_memory"] <= 8 << 20
        assert stats["backlog"] >= n + 1 - 4, stats  # (3 of 2 MiB fit beside the pickles')
        ctl.engines.append(ctl.engine())
        seen = []
        deadline = time.monotonic() + 60
        while not all(f.done() for f in futs):
            assert time.monotonic() < deadline, "the tasks did not all run within 60 s"
            s = tc.statistics()
            seen.append((s["queued_in_memory"], s["payload_bytes_in_memory"]))
        assert [f.result(timeout=60) for f in futs] == [size] * n + [12 << 20]
        assert all(b <= 8 << 20 or held == 1 for held, b in seen), seen
        assert rss_mib(pid) - before < n * size / 2**20 / 2
