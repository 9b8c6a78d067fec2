"""Adaptive engines for real (issue 18 item 7): `TaskClient.retire_engines`, `Cluster.adapt`
and `taskmill cluster start --adapt MIN:MAX`, with the local launcher. (The Slurm case is in
test_launchers.py, beside its one-node Slurm.)

A retiring engine gets no new task, gives back what it buffered and has not started, finishes
what it runs, and stops once it holds nothing: no task is lost or runs twice."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter

import pytest
from systest import TASKMILL, block_until, poll

from taskmill import Cluster, TaskClient

pytestmark = pytest.mark.timeout(180, method="thread")

LIVE = ("idle", "busy")


def logged_nap(i, path, seconds):
    """Note that task `i` ran (one line per run), nap, return i * i."""
    import time

    with open(path, "a") as f:
        f.write(f"{i}\n")
    time.sleep(seconds)
    return i * i


def live(tc) -> list[int]:
    return sorted(e["engineid"] for e in tc.engines() if e["state"] in LIVE)


def test_a_burst_grows_the_cluster_to_maximum_and_it_shrinks_back_losing_nothing(tmp_path):
    runs = tmp_path / "runs.txt"
    with Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        adapter = c.adapt(1, 4, idle_after=1.0, interval=0.2)
        futs = [tc.submit(logged_nap, i, str(runs), 0.3) for i in range(60)]
        assert [f.result(timeout=120) for f in futs] == [i * i for i in range(60)]
        assert adapter.largest == 4  # it grew to the maximum, never past it
        poll(lambda: len(live(tc)) == 1 and not any(
            e["state"] == "retiring" for e in tc.engines()), 60, "the cluster to shrink to 1")
        counts = Counter(runs.read_text().split())
        assert counts == Counter(str(i) for i in range(60))  # each task ran once
        stats = tc.statistics()
        assert stats["engines_retired"] == 3 and stats["engines_died"] == 0
        states = Counter(e["state"] for e in tc.engines())
        assert states["retired"] == 3
        assert c.restarts == 0  # a retired engine is not started again
        poll(lambda: [g.state for g in c.launcher.groups() if g.state != "running"]
             == ["exited 0"] * 3, 30, "the retired engines' processes to end")
        assert all(tc.task_info(f.taskid)["attempts"] == 1 for f in futs)
        # And it grows again for the next burst.
        before = len(adapter.history)
        more = [tc.submit(logged_nap, i, str(runs), 0.3) for i in range(100, 120)]
        assert [f.result(timeout=120) for f in more] == [i * i for i in range(100, 120)]
        assert any(plan.start for *_, plan in adapter.history[before:])
        adapter.stop()
        assert not adapter.running


def test_retire_engines_gives_back_what_waits_there_and_stops_the_engine_when_it_is_done(
        tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    runs = tmp_path / "runs.txt"
    with Cluster(1, heartbeat=0.5, prefetch=3) as c, c.client() as tc:
        [eid] = live(tc)
        pid = c.engine_pids[eid]
        first = tc.submit(block_until, release, started)
        rest = [tc.submit(logged_nap, i, str(runs), 0.0) for i in range(2)]  # retries=0
        poll(lambda: os.path.exists(started), 60, "the first task to start")
        poll(lambda: tc.queue_status() == {"scheduled": 0, "pending": 3, "succeeded": 0,
                                           "failed": 0}, 30, "all three on the engine")
        assert tc.retire_engines([eid, 12345]) == [eid]  # (12345: no such engine)
        assert [e["state"] for e in tc.engines()] == ["retiring"]
        # What it buffered comes back to the queue; what it runs stays there.
        poll(lambda: tc.queue_status()["scheduled"] == 2, 30, "the buffered tasks to come back")
        assert tc.queue_status()["pending"] == 1
        open(release, "w").close()
        assert first.result(timeout=60) == "released"
        poll(lambda: [e["state"] for e in tc.engines()] == ["retired"], 30,
             "the engine to retire")
        poll(lambda: c.launcher.groups()[0].state == "exited 0", 30, "its process to end")
        assert c.restarts == 0
        assert tc.retire_engines([eid]) == []  # gone already
        assert not runs.exists()  # the given-back tasks never ran there
        c.add_engines(1)
        assert [f.result(timeout=60) for f in rest] == [0, 1]
        assert all(tc.task_info(f.taskid)["attempts"] == 1 for f in rest)
        assert {tc.task_info(f.taskid)["engineid"] for f in rest} != {eid}
        assert tc.task_info(first.taskid)["engineid"] == eid
        assert pid not in c.engine_pids.values()
        stats = tc.statistics()
        assert (stats["engines_retired"], stats["engines_died"]) == (1, 0)


def test_cluster_start_adapt_grows_and_shrinks(tmp_path):
    env = dict(os.environ, TASKMILL_DIR=str(tmp_path / "home"))

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TASKMILL, *a], capture_output=True, text=True, timeout=120,
                              env=env)

    bad = run("cluster", "start", "--adapt", "3:1")
    assert bad.returncode == 2 and "MIN:MAX" in bad.stderr
    started = run("cluster", "start", "-n", "1", "--adapt", "1:3", "--idle-after", "1",
                  "--heartbeat", "0.5", "--daemon", "--no-dashboard")
    assert started.returncode == 0, started.stderr
    try:
        state = json.loads((tmp_path / "home" / "profile_default" / "cluster.json").read_text())
        with TaskClient(state["connection_file"]) as tc:
            futs = [tc.submit(logged_nap, i, str(tmp_path / "runs"), 0.3) for i in range(30)]
            poll(lambda: len(live(tc)) == 3, 60, "the cluster to grow to 3")
            assert [f.result(timeout=120) for f in futs] == [i * i for i in range(30)]
            poll(lambda: len(live(tc)) == 1, 60, "the cluster to shrink to 1")
            assert tc.statistics()["engines_died"] == 0
    finally:
        stopped = run("cluster", "stop")
    assert stopped.returncode == 0, stopped.stderr


def test_a_retiring_engine_killed_mid_task_is_a_death_and_its_task_is_retried(tmp_path):
    """kill -9 while retiring: nothing is excused as a retirement; the task's retry runs
    on the other engine."""
    import signal

    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with Cluster(2, heartbeat=0.5) as c, c.client() as tc:
        fut = tc.options(retries=1).submit(block_until, release, started)
        poll(lambda: os.path.exists(started), 60, "the task to start")
        eid = tc.task_info(fut.taskid)["engineid"]
        assert tc.retire_engines([eid]) == [eid]
        os.remove(started)
        os.kill(c.engine_pids[eid], signal.SIGKILL)
        poll(lambda: os.path.exists(started), 60, "the retry to start")
        open(release, "w").close()
        assert fut.result(timeout=60) == "released"
        info = tc.task_info(fut.taskid)
        assert info["attempts"] == 2 and info["engineid"] != eid
        stats = tc.statistics()
        assert (stats["engines_died"], stats["engines_retired"]) == (1, 0)
        assert {e["engineid"]: e["state"] for e in stats["engines"]}[eid] == "dead"
