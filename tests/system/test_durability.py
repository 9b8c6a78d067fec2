"""Nothing lost: controller kill -9 and restart on the same store, engine deaths."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time

import pytest
from systest import TASKMILL, ControllerProcess, poll, wait_for_file

from taskmill import Cluster, EngineDied, MapTask, TaskClient


def busy_for(seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return os.getpid()


@pytest.mark.timeout(300)
def test_kill9_controller_five_times_loses_nothing(tmp_path):
    ctl = ControllerProcess(tmp_path)
    ctl.start()
    engines = [subprocess.Popen([*TASKMILL, "engine", "--no-replace", "--connection-file", str(ctl.conn)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(2)]
    tc = None
    try:
        tc = TaskClient(ctl.conn, timeout=30)
        poll(lambda: len(tc.engines()) >= 2, what="2 engines")
        n = 2000
        tids = tc.mapper(block=False).map(busy_for, [0.002] * n)
        assert tids == list(range(n))
        released = threading.Event()

        def blocked_barrier():
            tc.barrier(tids)
            released.set()

        waiter = threading.Thread(target=blocked_barrier, daemon=True)
        waiter.start()
        rng = random.Random(7)
        marks = sorted(rng.sample(range(50, n - 100), 5))
        for mark in marks:
            # Kill at a random moment: once at least `mark` tasks have finished.
            poll(lambda m=mark: _finished(ctl.db) >= m, timeout=120, what=f"{mark} finished")
            ctl.kill9()
            ctl.start()
        assert released.wait(180), "the client blocked in barrier never got through"
        status = tc.queue_status(verbose=True)
        assert status["succeeded"] == tids, "some task has no successful result"
        assert status["failed"] == [] and status["scheduled"] == [] and status["pending"] == []
        pids = {tc.get_task_result(t) for t in tids}
        assert pids <= {e.pid for e in engines}
        rows = sqlite3.connect(ctl.db).execute(
            "SELECT COUNT(*), COUNT(DISTINCT tid) FROM tasks WHERE state='finished'").fetchone()
        assert rows == (n, n)
        # New taskids continue after the old ones, even across restarts.
        assert tc.run(MapTask(abs, (-1,))) == n
    finally:
        if tc is not None:
            tc.close()
        for e in engines:
            e.kill()
        ctl.stop()


def _finished(db: str) -> int:
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM tasks WHERE state='finished'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


@pytest.fixture
def three_engines(tmp_path):
    with Cluster(3, heartbeat=0.5) as c:
        yield c


def _running_on(tc, tid):
    def check():
        for e in tc.engines():
            if e["state"] == "busy":
                return e
        return None

    return poll(check, what=f"task {tid} running")


def test_sigkill_engine_mid_task_retry_succeeds_elsewhere(three_engines, tmp_path):
    c = three_engines
    with c.client() as tc:
        gate = str(tmp_path / "gate")
        tid = tc.run(MapTask(wait_for_file, (gate, 60.0), retries=1))
        victim = _running_on(tc, tid)
        os.kill(victim["pid"], signal.SIGKILL)
        open(gate, "w").close()
        tc.get_task_result(tid, block=True)  # no exception: the retry ran elsewhere
        states = {e["engineid"]: e["state"] for e in tc.engines()}
        assert states[victim["engineid"]] == "dead"


def test_sigkill_engine_without_retries_fails_with_engine_died(three_engines, tmp_path):
    c = three_engines
    with c.client() as tc:
        tid = tc.run(MapTask(wait_for_file, (str(tmp_path / "never"), 60.0)))
        victim = _running_on(tc, tid)
        os.kill(victim["pid"], signal.SIGKILL)
        with pytest.raises(EngineDied) as e:
            tc.get_task_result(tid, block=True)
        assert str(victim["engineid"]) in str(e.value)


def test_sigstopped_engine_is_declared_dead_by_heartbeat(three_engines, tmp_path):
    c = three_engines
    with c.client() as tc:
        tid = tc.run(MapTask(wait_for_file, (str(tmp_path / "never"), 60.0)))
        victim = _running_on(tc, tid)
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            with pytest.raises(EngineDied, match="heartbeat"):
                tc.get_task_result(tid, block=True)
            poll(lambda: {e["engineid"]: e["state"] for e in tc.engines()}[victim["engineid"]]
                 == "dead", what="engine marked dead")
        finally:  # (the nanny may have killed it meanwhile: it was declared dead)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim["pid"], signal.SIGCONT)


def test_nanny_reports_exit_status_and_replaces_the_engine(tmp_path):
    with Cluster(2, heartbeat=5.0, max_restarts=1) as c, c.client() as tc:
        # heartbeat=5: a death noticed within seconds can only be the nanny's report.
        tid = tc.run(MapTask(wait_for_file, (str(tmp_path / "never"), 60.0)))
        victim = _running_on(tc, tid)
        os.kill(victim["pid"], signal.SIGKILL)
        with pytest.raises(EngineDied, match=r"status -9 \(SIGKILL\)"):
            tc.get_task_result(tid, block=True)
        new = poll(lambda: [e for e in tc.engines()
                            if e["state"] != "dead" and e["pid"] != victim["pid"]
                            and e["engineid"] > victim["engineid"]
                            and e["engineid"] not in (0, 1)], what="a replacement engine")
        assert new[0]["pid"] != victim["pid"]
        assert c.restarts == 1
        assert sorted(c.engine_pids) == sorted(
            e["engineid"] for e in tc.engines() if e["state"] != "dead")
        assert tc.run(MapTask(abs, (-5,)), block=True) == 5


def exit_with_status_0():
    import os

    os._exit(0)  # (a library's "clean" hard exit, a worker-style shutdown)


def stop_own_process():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSTOP)


def reaped(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.timeout(120)
def test_an_engine_whose_task_exits_with_status_0_is_replaced():
    """The nanny took every exit with status 0 for a retirement or a SIGTERM and started no
    new engine, although the controller had declared this one dead: with one engine, every
    later task waited for good. The controller's rows say which engines retired or left."""
    with Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        (first,) = c.engine_pids.values()
        with pytest.raises(EngineDied):
            tc.get_task_result(tc.run(MapTask(exit_with_status_0)), block=True, timeout=60)
        assert tc.get_task_result(tc.run(MapTask(os.getpid)), block=True, timeout=60) != first
        assert c.restarts == 1


@pytest.mark.timeout(120)
def test_an_engine_declared_dead_whose_process_is_still_there_is_killed_and_replaced():
    """A stopped engine (SIGSTOP) was declared dead, but the nanny, which only polled for
    exits, saw its process alive: it neither killed nor replaced it, and with one engine
    every later task waited for good."""
    with Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        (first,) = c.engine_pids.values()
        try:
            with pytest.raises(EngineDied):
                tc.get_task_result(tc.run(MapTask(stop_own_process)), block=True, timeout=60)
            later = tc.run(MapTask(os.getpid))
            assert tc.get_task_result(later, block=True, timeout=60) != first
            poll(lambda: reaped(first), what="the stopped engine's process to be killed")
            assert c.restarts == 1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(first, signal.SIGCONT)


@pytest.mark.timeout(120)
def test_an_engine_told_to_stop_is_not_started_again():
    """SIGTERM: the engine says it is leaving and exits with status 0, on purpose: the nanny
    asks the controller, which knows, and starts no new engine."""
    with Cluster(2, heartbeat=0.5) as c, c.client() as tc:
        victim = c.engine_pids[0]
        os.kill(victim, signal.SIGTERM)
        poll(lambda: reaped(victim), what="the engine to exit")
        poll(lambda: c.launcher.wants_rows() is False, what="the nanny to settle the exit")
        assert c.restarts == 0
        rows = {e["engineid"]: e for e in tc.engines()}
        assert rows[0]["left"] and rows[0]["state"] in ("dead", "retired")
        assert rows[1]["state"] == "idle" and len(rows) == 2
        assert tc.run(MapTask(os.getpid), block=True) == rows[1]["pid"]


def _state(db: str, tid: int) -> str | None:
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            row = con.execute("SELECT state FROM tasks WHERE tid=?", (tid,)).fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return None
    return row[0] if row else None


@pytest.mark.timeout(180)
def test_a_running_task_goes_on_through_a_controller_restart_and_runs_once(tmp_path):
    """kill -9 of the controller while a task runs: its engine keeps running it, registers
    with the new controller naming it, and the new controller adopts it. The code runs once,
    on the same engine, as one attempt, and a blocked get_task_result goes on."""
    from taskmill import StringTask

    ctl = ControllerProcess(tmp_path)
    ctl.start()
    engine = ctl.engine()
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            code = (f"import os, time\nopen({str(runs)!r}, 'a').write('run\\n')\n"
                    f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
                    "x = os.getpid()")
            tid = tc.run(StringTask(code, pull="x"))
            poll(lambda: runs.exists(), what="the task to start")
            seen_running = time.time()
            got = []
            waiter = threading.Thread(
                target=lambda: got.append(tc.get_task_result(tid, block=True)), daemon=True)
            waiter.start()
            ctl.kill9()
            ctl.start()
            poll(lambda: _engines_now(tc), what="the engine back")
            gate.touch()
            waiter.join(120)
            assert got, "get_task_result(block=True) did not survive the restart"
            result = got[0]
            assert result.failure is None and result.ns.x == engine.pid
            assert result.attempts == 1
            assert runs.read_text() == "run\n"  # its code ran once
            # (its start is when it started on the engine, not when the new controller
            # adopted it: that made its time from start to end shorter than its duration)
            assert tc.task_info(tid)["started"] <= seen_running
            assert tc.run(StringTask("y = 2", pull="y"), block=True).ns.y == 2
    finally:
        engine.kill()
        ctl.stop()


def _engines_now(tc) -> list:
    try:
        return tc.engines()
    except TimeoutError:  # (asked of the controller that was killed)
        return []


@pytest.mark.timeout(180)
def test_a_task_whose_engine_died_with_the_controller_is_retried_or_fails(tmp_path):
    """Controller and engine killed together: after the restart, a task that was running on
    the engine that never comes back counts a lost attempt (EngineDied without retries,
    another engine's attempt with them), once the grace period is over."""
    ctl = ControllerProcess(tmp_path)
    ctl.start()
    doomed = ctl.engine()
    other = None
    gate = tmp_path / "gate"
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.engines(), what="an engine")
            plain = tc.run(MapTask(wait_for_file, (str(gate),)))
            retried = tc.run(MapTask(wait_for_file, (str(gate),), retries=1))
            poll(lambda: tc.queue_status()["pending"] == 1, what="a task running")
            doomed.kill()
            doomed.wait()
            ctl.kill9()
            ctl.start()
            other = ctl.engine()
            gate.touch()
            running_first = min(plain, retried)  # (the engine held one task at a time)
            if running_first == plain:
                with pytest.raises(EngineDied, match="did not come back"):
                    tc.get_task_result(plain, block=True)
                assert tc.get_task_result(retried, block=True) == other.pid
            else:
                assert tc.get_task_result(retried, block=True) == other.pid
                assert tc.get_task_result(plain, block=True) == other.pid
    finally:
        doomed.kill()
        if other is not None:
            other.kill()
        ctl.stop()


@pytest.mark.timeout(180)
def test_a_restart_keeps_tasks_whose_after_tasks_were_cleared(tmp_path):
    """Task B runs after A; A's result is cleared; the controller is killed and restarted. A
    succeeded, so B (running) and C (queued behind B, also after A) must not fail with
    DependencyError: a cleared result of a task they waited for was a success."""
    ctl = ControllerProcess(tmp_path, args=("--prefetch", "1"))
    ctl.start()
    engine = ctl.engine()
    gate = tmp_path / "gate"
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            a = tc.run(MapTask(abs, (-1,)))
            assert tc.get_task_result(a, block=True) == 1
            b = tc.run(MapTask(wait_for_file, (str(gate),), after=[a]))
            c = tc.run(MapTask(abs, (-3,), after=[a]))
            poll(lambda: tc.queue_status()["pending"] == 1, what="B running")
            assert tc.clear(a) == 1
            ctl.kill9()
            ctl.start()
            gate.touch()
            assert tc.get_task_result(b, block=True) == engine.pid
            assert tc.get_task_result(c, block=True) == 3
    finally:
        engine.kill()
        ctl.stop()


@pytest.mark.timeout(120)
def test_a_clusters_controller_that_dies_is_started_again_and_its_clients_go_on(caplog):
    """A Cluster (and so `taskmill cluster start`) left with a dead controller (kill -9, the
    OOM killer) said it was running while every client waited in vain. It starts it again on
    the same store and connection file; a store in memory has nothing to go on from."""
    import logging

    from taskmill import Cluster

    caplog.set_level(logging.WARNING, logger="taskmill.cluster")
    with Cluster(1, dashboard=False) as c, c.client(timeout=30) as tc:
        tid = tc.submit(abs, -1).taskid
        assert tc.future(tid).result(timeout=60) == 1
        first = c.controller_pid
        os.kill(first, signal.SIGKILL)
        assert tc.submit(abs, -2).result(timeout=60) == 2  # (rode out the restart)
        assert c.controller_restarts == 1 and c.controller_pid != first
        assert tc.future(tid).result(timeout=30) == 1  # (the store kept it)
        assert f"the controller (pid {first}) ended: killed by SIGKILL; started again" \
            in caplog.text
    with Cluster(1, dashboard=False, db=":memory:") as c:
        gone = c.controller_pid
        os.kill(gone, signal.SIGKILL)
        poll(lambda: f"the controller (pid {gone}) ended: killed by SIGKILL; it is not started "
             "again (its store was in memory" in caplog.text, 30, "the nanny to say so")
        assert c.controller_restarts == 0 and c.controller_returncode == -signal.SIGKILL


@pytest.mark.timeout(120)
def test_the_nanny_goes_on_reaping_engines_while_the_controller_is_dead():
    """The nanny told the controller of each engine exit with a blocking call: with the
    controller dead for good it waited out the call's bound (here 600 s) instead of going on
    with its rounds, and `stop()` gave up joining it after 5 s. It now tells the controller
    without waiting for the answer."""
    before = set(threading.enumerate())  # (another cluster's nanny may still be ending)
    with Cluster(1, dashboard=False, db=":memory:", start_timeout=600) as c:
        os.kill(c.controller_pid, signal.SIGKILL)
        poll(lambda: c.controller_returncode is not None, 30, "the controller's death seen")
        for restarts in (1, 2):  # (the second is reaped only by a nanny that went on)
            os.kill(c.launcher.record()["pids"][0], signal.SIGKILL)
            poll(lambda n=restarts: c.restarts >= n, 30, f"the nanny to reap engine {restarts}")
        nanny = [t for t in threading.enumerate()
                 if t.name == "taskmill-nanny" and t not in before]
    assert len(nanny) == 1 and not nanny[0].is_alive()


@pytest.mark.timeout(180)
def test_a_cluster_stopped_while_engines_hold_tasks_runs_those_they_never_started_later(
        tmp_path):
    """`cluster stop`, then `cluster start --resume` (here: a Cluster on the same store and
    key): the tasks waiting on an engine, never started, failed with EngineDied ("the
    controller restarted while task N was running"). A stopping engine now gives them back
    (`leaving`) before the controller stops, which queues them again and stores so; the task
    that was running ends with its engine (EngineDied: retries apply)."""
    from systest import read_lines, record

    from taskmill import Cluster, EngineDied, MapTask

    db, runs, gate = str(tmp_path / "tasks.db"), tmp_path / "runs", tmp_path / "gate"
    with Cluster(1, db=db, heartbeat=0.5, prefetch=4, dashboard=False) as c:
        key = c.key or read_connection_key(c.connection_file)
        with c.client() as tc:
            head = tc.run(MapTask(record, (str(runs), "head", str(gate))))
            waiting = [tc.run(MapTask(record, (str(runs), f"waiting-{i}"))) for i in range(3)]
            poll(lambda: tc.queue_status()["pending"] == 4, 30, "4 tasks on the engine")
            poll(lambda: read_lines(runs) == ["head"], 30, "the head task to start")
    gate.touch()
    with Cluster(1, db=db, key=key, heartbeat=0.5, dashboard=False) as c, c.client() as tc:
        pid = next(iter(c.engine_pids.values()))
        assert [tc.get_task_result(t, block=True, timeout=60) for t in waiting] == [pid] * 3
        assert [tc.task_info(t)["attempts"] for t in waiting] == [1, 1, 1]  # (uncounted)
        with pytest.raises(EngineDied):
            tc.get_task_result(head, block=True, timeout=60)
    assert sorted(read_lines(runs)) == ["head", "waiting-0", "waiting-1", "waiting-2"]


def read_connection_key(path) -> str:
    from taskmill.connection import read_connection_file

    return read_connection_file(path).key


def marked(i, log, seconds):
    """Task code: a line "start i" before its work and "end i" after; returns i."""
    import time

    with open(log, "a") as f:
        f.write(f"start {i}\n")
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"end {i}\n")
    return i


def started_counts(log) -> dict[int, int]:
    from collections import Counter

    return Counter(int(x.split()[1]) for x in log.read_text().splitlines()
                   if x.startswith("start "))


def only_interrupted_ones_failed(tc, tids, log) -> None:
    """Every task succeeded once, but those its engine's stop interrupted (EngineDied after a
    start); none started twice, and none failed without having started."""
    from taskmill import EngineDied

    started = started_counts(log)
    for i, tid in enumerate(tids):
        try:
            assert tc.get_task_result(tid, block=True, timeout=120) == i
        except EngineDied:
            assert started.get(i) == 1, f"task {tid} failed with EngineDied, never started"
    assert max(started.values()) == 1


@pytest.mark.timeout(180)
def test_an_engine_sigtermed_in_a_flood_gives_back_every_task_it_never_started(tmp_path):
    """Its results come in, then its `leaving`: the controller had refilled its free slots
    meanwhile, and those tasks, not in the engine's list, failed with EngineDied without
    having started. It now gives back every attempt the engine holds but the one it names
    as running."""
    from taskmill import Cluster, MapTask

    log = tmp_path / "marks"
    with Cluster(2, heartbeat=0.5, prefetch=32, dashboard=False) as c, c.client() as tc:
        tids = [tc.run(MapTask(marked, (i, str(log), 0.005))) for i in range(300)]
        poll(lambda: log.exists() and len(started_counts(log)) >= 40, 60, "40 tasks to start")
        victim = next(iter(c.engine_pids.values()))
        os.kill(victim, signal.SIGTERM)
        only_interrupted_ones_failed(tc, tids, log)


@pytest.mark.timeout(180)
def test_a_cluster_stopped_with_its_controller_stopped_loses_no_queued_work(tmp_path):
    """Cluster.stop() sent SIGTERM to a SIGSTOPped controller, waited its 5 s grace and
    killed it: it never read the engines' `leaving`, and their tasks failed after a resume
    with EngineDied, never started. terminate() wakes what it stops (SIGCONT) now."""
    from taskmill import Cluster, MapTask

    db, log = str(tmp_path / "tasks.db"), tmp_path / "marks"
    with Cluster(2, db=db, heartbeat=0.5, prefetch=8, dashboard=False) as c:
        key = read_connection_key(c.connection_file)
        with c.client() as tc:
            tids = [tc.run(MapTask(marked, (i, str(log), 0.02))) for i in range(120)]
            poll(lambda: log.exists() and len(started_counts(log)) >= 20, 60,
                 "20 tasks to start")
        os.kill(c.controller_pid, signal.SIGSTOP)
    with Cluster(2, db=db, key=key, heartbeat=0.5, dashboard=False) as c, c.client() as tc:
        only_interrupted_ones_failed(tc, tids, log)


@pytest.mark.timeout(240)
def test_a_restart_with_a_smaller_max_message_size_fails_what_no_longer_fits_with_a_clear_error(
        tmp_path):
    """A controller restarted on its store with a smaller --max-message-size than a queued
    task's payload and a stored result: the task was sent again about every second for ever
    (the engine's socket dropped the message, the engine reconnected, the task was queued
    again), and the result's reply was dropped by the client's socket (ControllerUnreachable
    after reconnect_timeout, though the controller had answered). Both are a
    SerializationError now that names the sizes and the flag (probe H, item 6)."""
    from taskmill import SerializationError

    ctl = ControllerProcess(tmp_path)
    ctl.start()
    engines = []
    try:
        ctl.ready()
        engines.append(ctl.engine())
        with TaskClient(ctl.conn, timeout=60) as tc:
            done = tc.run(MapTask(bytes, (3 << 20,)))
            assert len(tc.get_task_result(done, block=True, timeout=120)) == 3 << 20
            engines[0].kill()
            engines[0].wait()
            poll(lambda: all(e["state"] == "dead" for e in tc.engines()), 60,
                 "the killed engine to be declared dead")
            queued = tc.run(MapTask(len, (b"x" * (3 << 20),)))
        ctl.kill9()
        ctl.start("--max-message-size", str(1 << 20))
        ctl.ready()
        engines.append(ctl.engine())
        with TaskClient(ctl.conn, timeout=30, reconnect_timeout=15) as tc:
            with pytest.raises(SerializationError, match="--max-message-size") as stored:
                tc.get_task_result(done, block=False, timeout=30)
            assert f"{1 << 20:,}" in str(stored.value) and "stored under a larger" in str(
                stored.value)
            with pytest.raises(SerializationError, match="--max-message-size") as sent:
                tc.get_task_result(queued, block=True, timeout=60)
            assert "cannot be sent" in str(sent.value) and "payload is" in str(sent.value)
            assert tc.queue_status()["failed"] == 1
        assert "queued again" not in ctl.log_text()
    finally:
        for e in engines:
            e.kill()
            e.wait()
        ctl.stop()
