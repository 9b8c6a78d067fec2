"""Prefetch: engines hold more than one task; buffered tasks can be aborted, survive deaths, and
are taken back by an idle engine (adaptive prefetch, the default, with stealing)."""

from __future__ import annotations

import os
import signal

import pytest
from systest import poll, read_lines, wait_for_file

from taskmill import Cluster, EngineDied, MapTask, TaskAborted

pytestmark = pytest.mark.timeout(180, method="thread")


def log_and_return(path, tag, seconds=0.0):
    """Append `tag` to `path` (one line per run: O_APPEND keeps lines whole), maybe sleep."""
    import os
    import time

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return tag


def warm_up(tc, n=400):
    """Tiny tasks, so that adaptive engines buffer many at a time."""
    assert tc.map(abs, range(-n, 0), chunksize=1) == list(range(n, 0, -1))


def test_tasks_buffered_behind_a_long_one_are_taken_by_the_idle_engine(tmp_path):
    log = str(tmp_path / "runs.log")
    tags: list[str] = []
    granted = 0
    with Cluster(2, heartbeat=0.5) as c, c.client() as tc:
        # Under load an engine's warm-up may look slow (its capacity stays 1) or the tiny tasks
        # may all land on the idle engine: then nothing is buffered behind the long task, so
        # there is nothing to take back. Try again, a few rounds at most.
        for round_ in range(5):
            warm_up(tc)
            if not all(e["capacity"] > 1 for e in tc.engines()):
                continue
            gate = str(tmp_path / f"gate{round_}")
            long = tc.submit(wait_for_file, gate)
            tiny = [tc.submit(log_and_return, log, f"tiny {round_}.{i}") for i in range(12)]
            tags += [f"tiny {round_}.{i}" for i in range(12)]
            # Some went to the long task's engine, behind it: the other engine asks for them.
            assert [f.result(timeout=60) for f in tiny] == tags[-12:]
            assert not long.done()
            granted = tc.statistics()["revokes_granted"]
            open(gate, "w").close()
            assert long.result(timeout=60) > 0
            if granted >= 1:
                break
        assert granted >= 1, tc.statistics()
    assert sorted(read_lines(log)) == sorted(tags)  # each ran once


def test_stealing_under_a_mixed_load_runs_every_task_exactly_once(tmp_path):
    log = str(tmp_path / "runs.log")
    with Cluster(2, heartbeat=0.5) as c, c.client() as tc:
        warm_up(tc)
        futs = []
        # Rounds of a slow task now and then among many fast ones, until tasks were taken
        # back at least once (how often depends on timing; under load it may take a few).
        for round_ in range(10):
            for r in range(20):
                futs.append(tc.submit(log_and_return, log, f"slow {round_}.{r}", 0.05))
                futs += [tc.submit(log_and_return, log, f"fast {round_}.{r}.{i}")
                         for i in range(24)]
            tags = [f.result(timeout=120) for f in futs]
            stats = tc.statistics()
            if stats["revokes_granted"] >= 1:
                break
    runs = read_lines(log)
    assert sorted(runs) == sorted(tags), "a task ran twice or never"
    assert len(set(tags)) == len(futs) and len(futs) % 500 == 0
    assert stats["revokes_sent"] >= stats["revokes_granted"] >= 1, stats


def test_prefetch_buffers_tasks_and_they_can_be_aborted_or_rescued(tmp_path):
    """Buffered tasks can be aborted; when their engine dies, each one it held counts an
    attempt (it may have started since the engine last reported): with retries it runs
    elsewhere, without it fails with EngineDied. A task still in the controller just runs."""
    gate = str(tmp_path / "gate")
    with Cluster(1, heartbeat=0.5, prefetch=4) as c, c.client() as tc:
        retries = [0, 0, 0, 1, 0]
        tids = [tc.run(MapTask(wait_for_file, (gate,), retries=r)) for r in retries]
        # One running and three buffered on the engine; the fifth waits in the controller.
        status = poll(lambda: (s := tc.queue_status())["pending"] == 4 and s)
        assert status["scheduled"] == 1
        tc.abort(tids[1])  # buffered on the engine
        with pytest.raises(TaskAborted):
            tc.get_task_result(tids[1])
        pid = next(iter(c.engine_pids.values()))
        os.kill(pid, signal.SIGKILL)
        c.wait_for_engines(2, timeout=60)  # the nanny's replacement
        open(gate, "w").close()
        for failed in (tids[0], tids[2]):
            with pytest.raises(EngineDied, match="died"):
                tc.get_task_result(failed, block=True)
        new_pids = {tc.get_task_result(t, block=True) for t in (tids[3], tids[4])}
        assert pid not in new_pids and len(new_pids) == 1
        assert tc.get_task_result(tids[3], block=True) in new_pids
        assert tc.map(abs, range(-50, 0)) == list(range(50, 0, -1))
