"""Execution timeouts: interrupted in time, retried, and ended for good when code won't yield."""

from __future__ import annotations

import os

import pytest
from systest import gone, poll

from taskmill import Cluster, MapTask, StringTask, TaskAborted, TaskTimeout

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


def swallows_interrupts(seconds):
    """Task code with a bare `except BaseException` in a loop: every interruption is eaten."""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except BaseException:  # noqa: BLE001 - the point of this task
            pass
    return "finished"


def test_an_aborted_task_that_swallows_interrupts_is_ended_with_its_engine():
    """The last-resort kill (3 s after an abort) was armed again by each copy of the abort
    that the controller sends with its heartbeats: it never fired, the engine stayed busy
    for good and every later task waited. The earliest kill asked for now stands."""
    with Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        first = c.launcher.record()["pids"][0]
        tid = tc.run(MapTask(swallows_interrupts, (600,)))
        poll(lambda: tc.queue_status(verbose=True)["pending"] == [tid], what="the task to run")
        tc.abort(tid)
        after = tc.run(MapTask(os.getpid))
        assert tc.get_task_result(after, block=True, timeout=60) != first
        assert c.restarts == 1
        # The engine's own log says why it ends (faulthandler's words are a bare "Timeout"
        # and stacks; an engine started by hand is not replaced, its user reads that log).
        said = f"task {tid} was aborted: if its code does not let the interruption through"
        assert said in c.log_tail("engine-0", 300)


@pytest.mark.timeout(180)
def test_an_engine_started_by_hand_is_replaced_after_its_last_resort_kill(tmp_path):
    """`taskmill engine` started by hand (or by the ssh, MPI and Slurm launchers, on other
    machines: no nanny watches them) ended for good when an abort had to kill it: with one
    engine, every later task waited. A new engine (a new id) takes its place, started by the
    same command, which stays; SIGTERM to it still ends it (and its engine)."""
    import signal
    import subprocess

    from systest import TASKMILL, ControllerProcess, stop_process

    from taskmill import TaskClient

    ctl = ControllerProcess(tmp_path)
    ctl.start()
    command = subprocess.Popen([*TASKMILL, "engine", "--connection-file", str(ctl.conn)],
                               stdout=ctl.log, stderr=subprocess.STDOUT)
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.engines(), what="the engine")
            (first,) = tc.engines()
            assert first["pid"] != command.pid  # (the engine runs in a child of the command)
            tid = tc.run(MapTask(swallows_interrupts, (600,)))
            poll(lambda: tc.queue_status(verbose=True)["pending"] == [tid], what="it to run")
            tc.abort(tid)
            with pytest.raises(TaskAborted):
                tc.get_task_result(tid, block=True, timeout=60)
            after = tc.run(MapTask(os.getpid))
            pid = tc.get_task_result(after, block=True, timeout=60)
            assert pid not in (first["pid"], command.pid) and command.poll() is None
            poll(lambda: [e["pid"] for e in tc.engines() if e["state"] != "dead"] == [pid],
                 what="the killed engine declared dead, the new one alone")
            assert [e["engineid"] for e in tc.engines() if e["pid"] == pid] \
                != [first["engineid"]]
            assert "a new engine takes its place" in ctl.log_text()
            command.send_signal(signal.SIGTERM)
            assert command.wait(30) == 0
            poll(lambda: gone(pid), what="its engine to end with it")
    finally:
        stop_process(command, 10)
        ctl.stop()


def hold_the_gil_for_good(path):
    """Says it runs (a file), then holds the GIL in one C call for good."""
    import re

    open(path, "w").close()
    return re.match(r"(a+)+$", "a" * 64 + "b")


def test_an_aborted_task_holding_the_gil_is_ended_with_its_engine(tmp_path):
    """The abort's last-resort kill is armed by the engine's I/O thread, which cannot run while
    task code holds the GIL, and the engine's heart answers pings without it: the engine
    looked alive and busy for good, and every later task waited. The controller declares dead
    an engine whose reports stopped after an abort; the nanny kills it and starts a new one."""
    started = tmp_path / "started"
    with Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        (first,) = c.engine_pids.values()
        tid = tc.run(MapTask(hold_the_gil_for_good, (str(started),)))
        poll(started.exists, what="the task to hold the GIL")
        later = tc.run(MapTask(os.getpid, retries=1))
        tc.abort(tid)
        with pytest.raises(TaskAborted):
            tc.get_task_result(tid, block=True, timeout=60)
        assert tc.get_task_result(later, block=True, timeout=60) != first
        poll(lambda: gone(first), what="the engine process to be killed")
        assert c.restarts == 1
        assert "holds the GIL" in c.log_tail("controller", 300)
        with pytest.raises(TaskAborted):  # (still: the engine's death changed nothing)
            tc.get_task_result(tid)


def test_a_task_that_swallows_its_timeout_and_returns_fails_with_task_timeout(client):
    """Code that ate the timeout's interruption and then returned was reported a success."""
    with pytest.raises(TaskTimeout, match="timeout of 0.3s"):
        client.options(timeout=0.3).submit(swallows_interrupts, 1.5).result(timeout=60)
    r = client.run(StringTask("import time\nend = time.monotonic() + 1.5\n"
                              "while time.monotonic() < end:\n"
                              "    try: time.sleep(0.05)\n"
                              "    except BaseException: pass\n", timeout=0.3), block=True)
    assert isinstance(r.failure, TaskTimeout)


def cleans_up(path):
    import time

    try:
        time.sleep(60)
    finally:
        time.sleep(0.03)  # (a short clean-up: a checkpoint written, a lock released)
        with open(path, "w") as f:
            f.write("saved")


def test_a_timed_out_tasks_own_clean_up_is_not_interrupted_again_at_once(client, tmp_path):
    """After the first interruption the engine signalled again every ~10 ms (each pass of
    its I/O loop), not every RESIGNAL_EVERY (0.2 s): a `finally` of 30 ms never finished."""
    path = tmp_path / "checkpoint"
    with pytest.raises(TaskTimeout):
        client.options(timeout=0.5).submit(cleans_up, str(path)).result(timeout=60)
    assert path.read_text() == "saved"


def test_clear_after_restores_the_properties_after_a_timeout_however_slow_the_clearing():
    """`clear_after` ran while the task still counted as running: the repeated interruption
    landed inside the engine's own reset, and a property the task set stayed on the engine."""
    src = ("import taskmill, time\n"
           "taskmill.current_engine().properties['reserved_by'] = 'a task that timed out'\n"
           "big = [object() for _ in range(2_000_000)]\n"  # (~0.1 s to clear)
           "time.sleep(60)\n")
    with Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        r = tc.run(StringTask(src, timeout=1.0, clear_after=True), block=True)
        assert isinstance(r.failure, TaskTimeout)
        seen = tc.run(StringTask("import taskmill\n"
                                 "props = dict(taskmill.current_engine().properties)",
                                 pull=["props"]), block=True)["props"]
        assert "reserved_by" not in seen and "reserved_by" not in tc.engines()[0]["properties"]


def test_signal_state_a_task_leaves_ends_with_it():
    """A task's interval timer went on (its alarm failed the next task, someone else's), and a
    handler it changed stayed: an ignored interrupt signal made every later timeout a kill."""
    leaves = ("import signal\n"
              "def on_alarm(*_):\n"
              "    raise RuntimeError('the alarm of an earlier task')\n"
              "signal.signal(signal.SIGALRM, on_alarm)\n"
              "signal.setitimer(signal.ITIMER_REAL, 0.3)\n"
              "signal.signal(signal.SIGUSR1, signal.SIG_IGN)\n")
    with Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        pid = c.launcher.record()["pids"][0]
        assert tc.run(StringTask(leaves), block=True).failure is None
        r = tc.run(StringTask("import time\ntime.sleep(1)\nok = 1", pull="ok"), block=True)
        assert r.failure is None and r["ok"] == 1
        with pytest.raises(TaskTimeout):
            tc.options(timeout=0.3).submit(sleep_long).result(timeout=60)
        assert tc.submit(os.getpid).result(timeout=60) == pid and c.restarts == 0
