"""Execution timeouts: interrupted in time, retried, and ended for good when code won't yield."""

from __future__ import annotations

import os

import pytest

from taskmill import Cluster, MapTask, StringTask, TaskTimeout

pytestmark = pytest.mark.timeout(180, method="thread")


def spin_forever():
    while True:
        pass


def sleep_long():
    import time

    time.sleep(60)


def regex_hold_gil():
    """A C call that holds the GIL for a very long time: signal handlers cannot run."""
    import re

    return re.match(r"(a+)+$", "a" * 64 + "b")


def test_timeout_interrupts_and_the_engine_survives(client):
    pids = set()
    for fn in (spin_forever, sleep_long):
        tid = client.run(MapTask(fn, timeout=0.5))
        with pytest.raises(TaskTimeout, match="timeout of 0.5s") as e:
            client.get_task_result(tid, block=True)
        pids.add(e.value.engineid)
    r = client.run(StringTask("import time\ntime.sleep(60)", timeout=0.5), block=True)
    assert isinstance(r.failure, TaskTimeout) and r.attempts == 1
    # The same engines (same processes) go on serving.
    alive = {e["engineid"] for e in client.engines() if e["state"] != "dead"}
    assert pids <= alive
    assert client.run(MapTask(os.getpid), block=True) > 0


def test_timeout_then_retries_apply(client):
    r = client.run(StringTask("while True: pass", timeout=0.3, retries=1), block=True)
    assert isinstance(r.failure, TaskTimeout)
    assert r.attempts == 2


def test_code_that_ignores_interruption_is_ended_by_restarting_the_engine():
    with Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        before = c.engine_pids
        tid = tc.run(MapTask(regex_hold_gil, timeout=0.5))
        with pytest.raises(TaskTimeout):
            tc.get_task_result(tid, block=True)
        c.wait_for_engines(2, timeout=60)  # the nanny's replacement registered
        after = c.engine_pids
        assert set(after.values()).isdisjoint(before.values())
        assert tc.run(MapTask(abs, (-2,)), block=True) == 2


def test_the_longest_timeout_is_accepted_and_a_longer_one_refused(client):
    """A timeout past what the engine's last-resort kill can arm once ended the engine."""
    from taskmill.task import MAX_TIMEOUT

    pids = {e["pid"] for e in client.engines() if e["state"] != "dead"}
    assert client.run(MapTask(abs, (-3,), timeout=MAX_TIMEOUT), block=True) == 3
    for too_long in (MAX_TIMEOUT * 2, 1e10, float("inf")):
        with pytest.raises(ValueError, match="None for no timeout"):
            MapTask(abs, (-3,), timeout=too_long)
    assert {e["pid"] for e in client.engines() if e["state"] != "dead"} == pids
