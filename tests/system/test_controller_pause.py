"""A controller paused (SIGSTOP, a suspended VM) for longer than its engines' dead_after: the
engines went on, their heartbeats wait unread in its sockets, and when it runs again none of
them is declared dead for a silence that was its own (controller/core.py `polled`). Real
processes, real signals; each task records every run of its code (systest.record), so "ran
once" is checked.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from systest import controller_process, poll, read_lines, record

from taskmill import TaskClient


@pytest.mark.timeout(180)
@pytest.mark.parametrize("engines_move", [False, True],
                         ids=["paused-past-dead-after", "paused-until-the-engines-moved"])
def test_a_paused_controller_declares_no_engine_dead_for_its_own_silence(tmp_path, engines_move):
    """Heartbeat 0.5 s: an engine silent 1.5 s is dead, and an engine that hears nothing for
    5 s connects anew (it moves, keeping its tasks). Two tasks run when the controller is
    stopped and finish during the stop; more wait. After SIGCONT every task succeeds, once,
    and no engine died. (Before: the first check after the pause declared both engines dead,
    their running tasks failed with EngineDied and their results were refused as late.)"""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    with controller_process(tmp_path, engines=2) as ctl, TaskClient(ctl.conn, timeout=60) as tc:
        poll(lambda: len(tc.engines()) == 2, what="two engines")
        futures = [tc.submit(record, str(runs), f"long-{i}", str(gate)) for i in range(2)]
        poll(lambda: runs.exists() and len(read_lines(runs)) == 2, what="both long tasks running")
        futures += [tc.submit(record, str(runs), f"short-{i}") for i in range(10)]
        moved_before = ctl.log_text().count("again, on new connections")
        os.kill(ctl.proc.pid, signal.SIGSTOP)
        try:
            gate.touch()  # (the long tasks finish while the controller is stopped)
            if engines_move:
                poll(lambda: ctl.log_text().count("again, on new connections")
                     >= moved_before + 2, timeout=60, what="both engines moving")
            else:
                time.sleep(3.0)  # (the fault: stopped for twice dead_after)
        finally:
            os.kill(ctl.proc.pid, signal.SIGCONT)
        pids = {e.pid for e in ctl.engines}
        assert all(f.result(timeout=60) in pids for f in futures)
        assert sorted(read_lines(runs)) == sorted(
            [f"long-{i}" for i in range(2)] + [f"short-{i}" for i in range(10)])
        stats = tc.statistics()
        assert stats["engines_died"] == 0, ctl.log_text()[-3000:]
        assert stats["refused"].get("result-from-dead-engine", 0) == 0
        assert sorted(e["state"] for e in tc.engines()) == ["idle", "idle"]
        if engines_move:
            assert stats["engines_moved"] == 2


@pytest.mark.timeout(120)
def test_quick_requests_ride_out_a_paused_controller_and_a_verbs_timeout_bounds_its_steps(
        tmp_path):
    """A quick request (queue_status, abort, ...) gave up after the client's `timeout` (10 s
    by default) while the controller was stopped or restarting, where SPEC §1 says a client
    rides that out until `reconnect_timeout`. And a blocking verb's own `timeout=` did not
    bound its quick steps: `map(..., timeout=1)` took the client's `timeout` and raised
    ControllerUnreachable instead of TimeoutError."""
    import threading

    from taskmill import ControllerUnreachable

    with controller_process(tmp_path, engines=1) as ctl, \
            TaskClient(ctl.conn, timeout=1, reconnect_timeout=60) as tc:
        poll(lambda: len(tc.engines()) == 1, what="the engine")
        os.kill(ctl.proc.pid, signal.SIGSTOP)
        resume = threading.Timer(3.0, os.kill, (ctl.proc.pid, signal.SIGCONT))
        resume.start()
        try:
            assert tc.queue_status()["failed"] == 0  # (answered once it runs again)
        finally:
            resume.cancel()
            os.kill(ctl.proc.pid, signal.SIGCONT)
    with controller_process(tmp_path / "2", engines=1) as ctl, \
            TaskClient(ctl.conn, timeout=30, reconnect_timeout=60) as tc:
        poll(lambda: len(tc.engines()) == 1, what="the engine")
        os.kill(ctl.proc.pid, signal.SIGSTOP)
        try:
            for call in (lambda: tc.map(abs, [-1, -2], timeout=1),
                         lambda: tc.mapper().map(abs, [-1, -2], timeout=1)):
                try:
                    call()
                except ControllerUnreachable as e:
                    raise AssertionError(f"not the map's own TimeoutError: {e}") from None
                except TimeoutError as e:
                    assert "within 1s (timeout=)" in str(e)
                else:
                    raise AssertionError("a map answered by a stopped controller")
        finally:
            os.kill(ctl.proc.pid, signal.SIGCONT)
        assert tc.map(abs, [-3], timeout=60) == [3]
