"""Engines under faults: a lost `tasks` message, connections the network forgot on one side, a stopped engine that resumes, a controller
restart with tasks waiting on an engine, task code that holds the GIL, a slow depend.

Each task records every run of its code (a line in a file) so that "ran once" is checked,
not assumed. Real processes, real signals, a real TCP proxy that loses a message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest
from faultproxy import proxied
from systest import (
    ControllerProcess,
    alive_engine_ids,
    controller_process,
    gone,
    poll,
    read_lines,
    record,
)

from taskmill import (
    Cluster,
    EngineDied,
    MapTask,
    RemoteError,
    SerializationError,
    StringTask,
    TaskClient,
    TaskError,
    TaskTimeout,
)


def hold_the_gil(seconds):
    """One C call that holds the GIL for about `seconds` (catastrophic regex backtracking),
    calibrated on this machine: no Python thread of this process runs meanwhile."""
    import math
    import re
    import time

    def run(n):
        t0 = time.perf_counter()
        re.match(r"(a+)+$", "a" * n + "b")
        return time.perf_counter() - t0

    n, took = 16, run(16)
    while took < 0.05:
        n += 1
        took = run(n)
    n += max(0, math.ceil(math.log2(seconds / took)))
    return run(n)


@contextlib.contextmanager
def proxied_engine(tmp_path):
    """A controller, an engine that reaches it through a FaultProxy, and a client that has run
    one warm-up task on it (recorded in `runs`): (proxy, engine, tc, runs)."""
    ctl = ControllerProcess(tmp_path)
    ctl.start()
    proxy, engine_conn = proxied(ctl.conn, "engine_url", tmp_path / "via-proxy" / "conn.json")
    engine = subprocess.Popen(
        [*ControllerProcess.TASKMILL, "engine", "--no-replace", "--connection-file", str(engine_conn)],
        stdout=ctl.log, stderr=subprocess.STDOUT)
    runs = tmp_path / "runs"
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.engines(), what="the engine")
            assert tc.run(MapTask(record, (str(runs), "warm-up")), block=True) == engine.pid
            yield proxy, engine, tc, runs
    finally:
        engine.kill()
        proxy.close()
        ctl.stop()


@pytest.mark.timeout(120)
def test_a_lost_tasks_message_costs_a_heartbeat_not_the_task(tmp_path):
    """The `tasks` message carrying a task is lost (its connection reset as it passed): the
    engine reconnects, its heartbeats show the message missing, and the task runs, once."""
    with proxied_engine(tmp_path) as (proxy, engine, tc, runs):
        proxy.drop_next(200, b".t")  # the next task message down the task socket
        tid = tc.run(MapTask(record, (str(runs), "the task")))
        assert tc.get_task_result(tid, block=True) == engine.pid
        assert proxy.dropped == 1
        assert read_lines(runs) == ["warm-up", "the task"]
        assert tc.statistics()["engines_died"] == 0
        info = tc.task_info(tid)
        assert info["attempts"] == 1 and info["state"] == "succeeded"


@pytest.mark.timeout(120)
def test_a_lost_results_message_is_sent_again_and_the_task_ran_once(tmp_path):
    """The `results` message an engine sends is lost (its connection reset as it passed):
    the engine sends it again on its new connection, the task ends with its value, once,
    and nothing is declared dead."""
    with proxied_engine(tmp_path) as (proxy, engine, tc, runs):
        proxy.drop_next(150, b".r", b"results", from_peer=True)  # (its next results)
        tid = tc.run(MapTask(record, (str(runs), "the task")))
        assert tc.get_task_result(tid, block=True, timeout=60) == engine.pid
        assert proxy.dropped == 1
        assert read_lines(runs) == ["warm-up", "the task"]
        assert tc.statistics()["engines_died"] == 0
        assert tc.task_info(tid)["attempts"] == 1


@pytest.mark.timeout(120)
def test_a_lost_interrupt_is_sent_again_and_the_aborted_task_stops(tmp_path):
    """The interrupt of an aborted running task is lost (its control connection reset as it
    passed): the engine's next heartbeat shows it still running the task, the controller
    sends the interrupt again, and the engine is free for the next task long before the
    aborted one would have ended (it waits up to 90 s for a gate that never opens)."""
    from taskmill import TaskAborted

    with proxied_engine(tmp_path) as (proxy, engine, tc, runs):
        tid = tc.run(MapTask(record, (str(runs), "the task", str(tmp_path / "never"))))
        poll(lambda: read_lines(runs)[-1:] == ["the task"], what="the task to start")
        proxy.drop_next(1, b".c", b"aborted")  # (the interrupt: its reason)
        tc.abort(tid)
        poll(lambda: proxy.dropped == 1, 30, "the interrupt to be lost")
        with pytest.raises(TaskAborted):
            tc.get_task_result(tid)
        after = tc.run(MapTask(record, (str(runs), "the next")))
        assert tc.get_task_result(after, block=True, timeout=30) == engine.pid
        assert read_lines(runs) == ["warm-up", "the task", "the next"]
        assert tc.statistics()["engines_died"] == 0


# The network forgets an engine's connections and tells only the engine (a reset on its side;
# the controller's side stays open and silent: the engine links carry no ZeroMQ heartbeats, and
# the kernel's TCP keepalive never ends it here, as the proxy's kernel answers it). ZeroMQ
# reconnects at once with the same routing ids, while the controller still holds the old
# connections, and its ROUTER ignores such a connection for good (a peer may not take over
# another's routing id): before engine/channels.py, that engine's heartbeats, tasks and
# results went nowhere while it looked alive, and tasks stuck on it for ever (the fault soak).


@pytest.mark.timeout(120)
def test_a_task_starts_on_the_lease_its_message_carries_without_a_heartbeat_answer(tmp_path):
    """An idle engine's heartbeats are answered only now and then (controller/engine_tasks.py),
    so its lease (a share of dead_after from a heartbeat the controller heard) is often out
    when a task comes: the task's message carries the time of the engine's latest heartbeat
    the controller heard, and the engine starts it on that. Here no heartbeat answer reaches
    the engine at all (its control connection muted, its reports still heard): the task runs
    before the engine gives up on that connection (5 s unanswered) and moves, which is the
    only other way it could get a lease."""
    with proxied_engine(tmp_path) as (proxy, engine, tc, runs):
        # muted right after an answer passed, so the engine's 5 s of silence start then
        answers = proxy.chunks[(b".c", "to peer")]
        poll(lambda: proxy.chunks[(b".c", "to peer")] > answers, what="a heartbeat answer")
        proxy.mute(b".c")
        reports = proxy.chunks[(b".c", "from peer")]
        # three more reports (0.5 s apart): longer ago than the lease (0.6 x dead_after 1.5 s)
        poll(lambda: proxy.chunks[(b".c", "from peer")] >= reports + 3, what="three reports")
        tid = tc.run(MapTask(record, (str(runs), "the task")))
        assert tc.get_task_result(tid, block=True) == engine.pid
        assert tc.statistics()["engines_moved"] == 0  # (it had no other lease)
        assert read_lines(runs) == ["warm-up", "the task"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("deaf", [(b".t", b".c"), (b".t",), (b".r",)],
                         ids=["task+control", "task", "result"])
def test_an_engine_whose_connections_go_deaf_moves_and_keeps_its_tasks(tmp_path, deaf):
    """Its heartbeats go unanswered, or the task messages never arrive (each heartbeat's
    answer names the last one sent), or its results are lost (asked for again): the engine
    opens new connections (new routing ids) and registers them; it keeps its engine id,
    nothing is declared dead, and the tasks sent meanwhile run, once."""
    with proxied_engine(tmp_path) as (proxy, engine, tc, runs):
        (eid,) = alive_engine_ids(tc)
        for round_ in range(2):
            assert proxy.cut_peer_side_all(deaf) == len(deaf)
            tids = [tc.run(MapTask(record, (str(runs), f"r{round_}-{i}"))) for i in range(4)]
            for tid in tids:  # (a deaf engine: TimeoutError here, the tasks never end)
                assert tc.get_task_result(tid, block=True, timeout=30) == engine.pid
                assert tc.task_info(tid)["attempts"] == 1
        assert sorted(read_lines(runs)) == sorted(
            ["warm-up", *(f"r{r}-{i}" for r in range(2) for i in range(4))])
        stats = tc.statistics()
        assert stats["engines_moved"] >= 1 and stats["engines_died"] == 0, stats
        assert alive_engine_ids(tc) == [eid]


@pytest.mark.timeout(120)
def test_an_engine_whose_connections_all_go_deaf_comes_back(tmp_path):
    """Every connection drops what it carries and nobody is told (no reset): its heart goes
    deaf too, so the controller declares it dead (its tasks fail with EngineDied or are
    retried, as for any death); the engine, unheard for silent_after, connects anew, told
    so on new connections registers again, and the tasks submitted after run on it."""
    with proxied_engine(tmp_path) as (proxy, engine, tc, runs):
        for round_ in range(2):
            assert proxy.blackhole_all() == 4
            tids = [tc.run(MapTask(record, (str(runs), f"r{round_}-{i}"), retries=2))
                    for i in range(4)]
            for tid in tids:
                assert tc.get_task_result(tid, block=True, timeout=60) == engine.pid
        runs_of = read_lines(runs)
        for r in range(2):
            for i in range(4):
                assert 1 <= runs_of.count(f"r{r}-{i}") <= 3
        assert tc.statistics()["engines_died"] >= 1
        poll(lambda: alive_engine_ids(tc), what="the engine, registered again")


@pytest.mark.timeout(120)
def test_an_engine_cut_off_mid_task_is_declared_dead_and_its_late_result_refused(tmp_path):
    """A partition: one engine's connections drop everything either way while it goes on
    and finishes its task. The controller declares it dead and runs the task (retries=1) on
    the other engine; the cut-off engine's result, sent into the void and held, must not
    count when it comes back on new connections: the task ends once, with the other
    engine's value, and the engine registers again and takes new tasks."""
    with proxied_engine(tmp_path) as (proxy, cut, tc, runs):
        gate = tmp_path / "gate"
        tid = tc.run(MapTask(record, (str(runs), "the task", str(gate)), retries=1))
        poll(lambda: read_lines(runs)[-1:] == ["the task"], what="the task to start")
        other = subprocess.Popen(
            [*ControllerProcess.TASKMILL, "engine", "--no-replace", "--connection-file",
             str(tmp_path / "via-proxy" / "conn.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            poll(lambda: len(alive_engine_ids(tc)) == 2, what="the other engine")
            assert proxy.blackhole_process(cut.pid) >= 3  # (only the cut engine's)
            gate.touch()  # (the cut-off engine finishes its run, unheard)
            assert tc.get_task_result(tid, block=True, timeout=60) == other.pid
            assert read_lines(runs).count("the task") == 2
            info = tc.task_info(tid)
            assert info["attempts"] == 2 and info["state"] == "succeeded", info
            assert tc.statistics()["engines_died"] == 1
            # the cut-off engine comes back under a new engine id and works
            poll(lambda: len(alive_engine_ids(tc)) == 2, 60, "the cut-off engine, back")
            later = [tc.run(MapTask(record, (str(runs), f"later-{i}"))) for i in range(6)]
            pids = {tc.get_task_result(t, block=True, timeout=60) for t in later}
            assert pids <= {cut.pid, other.pid}
            assert tc.get_task_result(tid) == other.pid  # (still the counted run's)
        finally:
            other.kill()
            other.wait()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["reset both sides", "cut on the engine's side"])
def test_an_engine_whose_connections_are_reset_moves_at_once_and_nothing_dies(tmp_path, how):
    """Every connection of the engine is reset (a network blip), or reset on the engine's
    side only (the controller keeps the old ones, silent). ZeroMQ would reconnect under the
    same routing ids, which a controller that has not seen the old connection end ignores
    for good: the engine, whose sockets' monitors saw the connections break, connects anew
    under new ids at once, well inside the 3 heartbeats after which the controller would
    declare it dead. Before, it waited out silent_after and was declared dead each time:
    its tasks failed with EngineDied (the fault soak's connection resets)."""
    with proxied_engine(tmp_path) as (proxy, engine, tc, runs):
        (eid,) = alive_engine_ids(tc)
        for round_ in range(3):
            tids = [tc.run(MapTask(record, (str(runs), f"r{round_}-{i}"))) for i in range(3)]
            gate = tmp_path / f"gate-{round_}"
            tids.append(tc.run(MapTask(record, (str(runs), f"r{round_}-slow", str(gate)))))
            slow = [f"r{round_}-slow"]
            poll(lambda slow=slow: read_lines(runs)[-1:] == slow, 30, "the slow task")
            if how == "reset both sides":
                proxy.reset_all()
            else:
                assert proxy.cut_peer_side_all() >= 3  # (the result socket: once it sent)
            gate.touch()  # (the task running across the reset ends)
            for tid in tids:  # (retries=0: a death would fail them with EngineDied)
                assert tc.get_task_result(tid, block=True, timeout=30) == engine.pid
        assert sorted(read_lines(runs)) == sorted(
            ["warm-up", *(f"r{r}-{x}" for r in range(3) for x in ("0", "1", "2", "slow"))])
        stats = tc.statistics()
        assert stats["engines_died"] == 0 and stats["engines_moved"] >= 3, stats
        assert alive_engine_ids(tc) == [eid]


@pytest.mark.timeout(120)
def test_a_stopped_engine_declared_dead_drops_its_backlog_when_it_resumes(tmp_path):
    """SIGSTOP an engine holding a running task and a backlog until it is declared dead, then
    SIGCONT it: it must not run the backlog the controller gave elsewhere. Tasks without
    retries run at most once; tasks with retries run on the other engine. (Engines of the
    test's own: a Cluster's nanny kills an engine declared dead that is still there.)"""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    with controller_process(tmp_path, engines=1, args=("--prefetch", "4")) as ctl, \
            TaskClient(ctl.conn, timeout=60) as tc:
        (stopped_eid, stopped_pid), = poll(
            lambda: {e["engineid"]: e["pid"] for e in tc.engines()}, what="the engine").items()
        head = tc.run(MapTask(record, (str(runs), "head", str(gate))))
        plain = [tc.run(MapTask(record, (str(runs), f"plain-{i}"))) for i in range(2)]
        retried = tc.run(MapTask(record, (str(runs), "retried"), retries=1))
        poll(lambda: tc.queue_status()["pending"] == 4, what="4 tasks on the engine")
        poll(lambda: read_lines(runs) == ["head"], what="the head task to start")
        os.kill(stopped_pid, signal.SIGSTOP)
        try:
            poll(lambda: any(e["state"] == "dead" for e in tc.engines()),
                 what="the stopped engine declared dead")
            ctl.engines.append(ctl.engine())
            assert tc.get_task_result(retried, block=True) != stopped_pid
            for tid in (head, *plain):
                with pytest.raises(EngineDied):
                    tc.get_task_result(tid, block=True)
        finally:
            os.kill(stopped_pid, signal.SIGCONT)
        gate.touch()
        # It comes back as a new engine (same process), having dropped what it held.
        poll(lambda: [e for e in tc.engines() if e["pid"] == stopped_pid
                      and e["state"] != "dead"], what="the resumed engine to register anew")
        assert tc.run(MapTask(os.getpid, depend={"pid": stopped_pid}), block=True) == stopped_pid
        lines = read_lines(runs)
        assert sorted(lines) == ["head", "retried"], lines  # plain-*: never run
        assert stopped_eid not in [e["engineid"] for e in tc.engines() if e["state"] != "dead"]


@pytest.mark.timeout(120)
def test_after_a_controller_restart_tasks_waiting_on_an_engine_run_once(tmp_path):
    """kill -9 of the controller while an engine runs one task and holds three more: the
    engine drops the three (they never started), the new controller adopts the running one and
    sends the three again. Every task runs exactly once, as one attempt."""
    ctl = ControllerProcess(tmp_path, args=("--prefetch", "4"))
    ctl.start()
    engine = ctl.engine()
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.engines(), what="the engine")
            tids = [tc.run(MapTask(record, (str(runs), "head", str(gate))))]
            tids += [tc.run(MapTask(record, (str(runs), f"waiting-{i}"))) for i in range(3)]
            poll(lambda: tc.queue_status()["pending"] == 4, what="4 tasks on the engine")
            poll(lambda: read_lines(runs) == ["head"], what="the head task to start")
            ctl.kill9()
            ctl.start()
            gate.touch()
            assert [tc.get_task_result(t, block=True) for t in tids] == [engine.pid] * 4
            assert sorted(read_lines(runs)) == ["head", "waiting-0", "waiting-1", "waiting-2"]
            assert [tc.task_info(t)["attempts"] for t in tids] == [1, 1, 1, 1]
            new = tc.run(MapTask(record, (str(runs), "new")), block=True)
            assert new == engine.pid and tc.run(MapTask(abs, (-1,))) == len(tids) + 1
    finally:
        engine.kill()
        ctl.stop()


@pytest.mark.timeout(120)
def test_properties_task_code_set_outlive_a_controller_restart_not_being_declared_dead(
        tmp_path):
    """A set-up task loads data into an engine's namespace and marks it with a property;
    later tasks depend on it. The namespace outlives a controller restart, so its properties
    must too: the engine registers anew with them, and a task with that depend runs there (it
    waited for nothing, then failed with TaskTimeout, when the engine registered with its
    starting properties only). An engine declared dead (stopped past dead_after) that comes
    back is a new engine: its namespace and those properties are gone (it computed on with
    the dead engine's stale data, which work sent to "every engine" since had skipped), so
    the task waits for an engine that says it holds the data, and fails with TaskTimeout."""
    ctl = ControllerProcess(tmp_path, args=("--unmet-timeout", "3"))
    ctl.start()
    engine = ctl.engine("--property", "zone=a")
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.engines(), what="the engine")
            # A set-up: data in the namespace, and a property that says so.
            first = tc.run(StringTask("import taskmill; data = 42; "
                                      "taskmill.current_engine().properties['loaded'] = True",
                                      pull="engineid"), block=True)["engineid"]
            read = StringTask("x = data", pull="x", depend={"loaded": True})

            def registered_again(after):
                live = [e for e in tc.engines() if e["state"] != "dead"]
                return live if live and live[0]["engineid"] > after else None

            ctl.kill9()
            ctl.start()
            (again,) = poll(lambda: registered_again(first), what="the engine to register anew")
            assert again["properties"]["loaded"] is True and again["properties"]["zone"] == "a"
            assert tc.run(read, block=True)["x"] == 42

            engine.send_signal(signal.SIGSTOP)
            try:
                poll(lambda: all(e["state"] == "dead" for e in tc.engines()),
                     what="the stopped engine to be declared dead")
            finally:
                engine.send_signal(signal.SIGCONT)
            (last,) = poll(lambda: registered_again(again["engineid"]),
                           what="the resumed engine to register anew")
            assert "loaded" not in last["properties"] and last["properties"]["zone"] == "a"
            assert last["properties"]["engineid"] == last["engineid"]
            with pytest.raises(TaskTimeout):
                tc.run(read, block=True)
            fresh = tc.run(StringTask("x = data", pull="x"), block=True)
            assert isinstance(fresh.failure, NameError)  # (its namespace is a new engine's)
    finally:
        engine.kill()
        engine.wait()
        ctl.stop()


@pytest.mark.timeout(120)
def test_a_task_holding_the_gil_does_not_make_its_engine_look_dead():
    """Task code that holds the GIL for about 4 s (8 x the time after which a silent engine
    is declared dead here): the engine's heart answers from ZeroMQ's own thread, so the
    engine stays alive and the task succeeds on it."""
    with Cluster(1, heartbeat=0.25) as c, c.client() as tc:
        (pid,) = c.engine_pids.values()
        tid = tc.run(MapTask(hold_the_gil, (4.0,)))
        held = tc.get_task_result(tid, block=True)
        assert held > 1.0, held  # (the hold did happen: far past dead_after, 0.75 s)
        assert tc.statistics()["engines_died"] == 0
        assert c.engine_pids == {0: pid} and not gone(pid)
        assert tc.task_info(tid)["attempts"] == 1


def slow_depend(properties):
    import time

    time.sleep(5)
    return True


@pytest.mark.timeout(120)
def test_a_slow_depend_does_not_freeze_the_controller(tmp_path):
    """A depend callable that sleeps 5 s is given up on after its budget (it counts as False),
    so the controller keeps serving and no healthy engine is declared dead; the task fails
    with TaskTimeout naming its slow depend."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    with Cluster(2, heartbeat=0.25, unmet_timeout=2.0) as c, c.client() as tc:
        busy = tc.run(MapTask(record, (str(runs), "busy", str(gate))))
        poll(lambda: read_lines(runs) == ["busy"], what="a healthy task to run")
        slow = tc.run(MapTask(abs, (-1,), depend=slow_depend))
        other = tc.run(MapTask(abs, (-2,)))
        assert tc.get_task_result(other, block=True) == 2  # served meanwhile
        gate.touch()
        assert tc.get_task_result(busy, block=True) in c.engine_pids.values()
        with pytest.raises(TaskTimeout, match="depend callable took longer"):
            tc.get_task_result(slow, block=True)
        stats = tc.statistics()
        assert stats["engines_died"] == 0 and stats["refused"].get("slow-depend") == 1


class SlowToLoad:
    """A depend callable whose unpickling takes 5 s (as a closure over a large table may)."""

    def __call__(self, properties):
        return True

    def __reduce__(self):
        import time

        return time.sleep, (5,)


@pytest.mark.timeout(120)
def test_a_depend_slow_to_unpickle_is_refused_without_freezing_the_controller(tmp_path):
    """The controller unpickled a depend callable in its loop: for those 5 s it answered no
    one, and engines moved to new connections. Its unpickling has a deadline now, as its
    calls have."""
    with Cluster(1, heartbeat=0.25) as c, c.client() as tc:
        with pytest.raises(TaskError, match=r"depend callable: it took longer than 0.5s to "
                           r"unpickle; use a dict depend"):
            tc.run(MapTask(abs, (-1,), depend=SlowToLoad()))
        assert tc.run(MapTask(abs, (-2,)), block=True) == 2
        assert tc.statistics()["engines_died"] == 0


def leaves_a_child(then_exit):
    """Task code that starts a process and leaves it running (then, maybe, ends its engine)."""
    import os
    import subprocess

    child = subprocess.Popen(["sleep", "300"])
    if then_exit:
        with open(then_exit, "w") as f:
            f.write(str(child.pid))
        os._exit(3)
    return child.pid


@pytest.mark.timeout(120)
def test_processes_task_code_leaves_end_with_its_engine_and_with_the_cluster(tmp_path):
    """What task code started and left running (`os.system("... &")`, a subprocess) outlived
    its engine's death, its engine's kill and `Cluster.stop()`: only the engine's pid was
    signalled. Its whole process group is ended now, once the engine has."""
    pid_file = tmp_path / "child"
    with Cluster(1, heartbeat=0.5, dashboard=False) as c, c.client() as tc:
        with pytest.raises(EngineDied):
            tc.submit(leaves_a_child, str(pid_file)).result(timeout=60)
        orphan = int(pid_file.read_text())
        poll(lambda: gone(orphan), what="the dead engine's child to be ended")
        child = tc.submit(leaves_a_child, None).result(timeout=60)
        assert not gone(child)
    poll(lambda: gone(child), what="the engine's child to end with the cluster")


# -- task code whose outcome cannot be shown or pickled ---------------------------------------

def raises_large(n):
    raise ValueError("x" * n)


def prints_then_raises(n):
    print("y" * n)
    raise KeyError("k")


@pytest.mark.timeout(120)
def test_a_failure_larger_than_the_message_limit_is_reported_shortened():
    """A failure's report was not held to the message size limit (only a result was): an
    exception with a 4 MiB message under a 1 MiB limit was dropped by ZeroMQ, the engine
    reconnected every second and the task never ended."""
    with Cluster(1, max_message_size=1 << 20, dashboard=False) as c, c.client() as tc:
        with pytest.raises(RemoteError, match=r"characters left out: the whole would pass the "
                           r"controller's message size limit") as e:
            tc.submit(raises_large, 4 << 20).result(timeout=60)
        assert e.value.type_name == "ValueError" and len(str(e.value)) < 1 << 20
        with pytest.raises(KeyError):  # (its output shortened first: the type is kept)
            tc.submit(prints_then_raises, 3 << 20).result(timeout=60)
        assert tc.submit(abs, -1).result(timeout=60) == 1


class StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("no str")


class StrNotText(Exception):
    def __str__(self):
        return 5


class ExitsWhenPickled:
    def __reduce__(self):
        raise SystemExit(5)


class OddUnpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not this one")


def raise_(cls, *args):
    raise cls(*args)


def odd_name():
    return os.fsdecode(b"report-\xe9.txt")  # (a file name's undecodable byte: a surrogate)


def print_odd_name():
    print("found", odd_name())
    return "done"


def test_task_code_whose_outcome_cannot_be_shown_or_pickled_fails_alone_and_its_engine_lives():
    """Each of these killed its engine (EngineDied): an exception whose __str__ raises or
    gives no str, a result whose pickling raises SystemExit, output or an exception message
    with a lone surrogate (UnicodeEncodeError while the engine built its reply)."""
    with Cluster(1, db=":memory:", dashboard=False) as c, c.client() as tc:
        pid = tc.submit(os.getpid).result(timeout=60)
        for cls in (StrRaises, StrNotText):
            error = tc.submit(raise_, cls).exception(timeout=30)
            assert type(error).__name__ == cls.__name__ and error.engineid == 0
        error = tc.submit(ExitsWhenPickled).exception(timeout=30)
        assert isinstance(error, SerializationError) and "SystemExit: 5" in str(error)
        fut = tc.submit(print_odd_name)
        assert fut.result(timeout=30) == "done"
        assert fut.metadata["stdout"] == "found report-\\udce9.txt\n"
        error = tc.submit(raise_, FileNotFoundError, "no " + odd_name()).exception(timeout=30)
        assert isinstance(error, FileNotFoundError) and str(error) == "no " + odd_name()
        error = tc.submit(raise_, OddUnpicklable, odd_name()).exception(timeout=30)
        assert isinstance(error, RemoteError) and "report-\\udce9.txt" in str(error)
        assert tc.submit(os.getpid).result(timeout=30) == pid  # (the same engine throughout)


@pytest.mark.timeout(120)
def test_an_engine_stopped_with_sigterm_mid_task_fails_it_as_engine_died_and_retries_apply(
        tmp_path):
    """SIGTERM (`cluster stop`, systemd, scancel) raised SystemExit(0) inside the running task
    code, which was stored as the task's own failure: `result()` raised SystemExit, and a
    script calling it ended silently with status 0. Now the task is dropped unreported, as a
    dead engine's: EngineDied, and its retries apply."""
    ctl = ControllerProcess(tmp_path, args=("--prefetch", "1"))
    ctl.start()
    first = ctl.engine()
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    second = None
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.engines(), what="the engine")
            plain = tc.run(MapTask(record, (str(runs), "plain", str(gate))))
            poll(lambda: read_lines(runs) == ["plain"], what="the task to start")
            first.terminate()
            assert first.wait(30) == 0
            with pytest.raises(EngineDied):
                tc.get_task_result(plain, block=True, timeout=60)
            second = ctl.engine()
            retried = tc.run(MapTask(record, (str(runs), "retried", str(gate)), retries=1))
            poll(lambda: read_lines(runs)[-1:] == ["retried"], what="the retried task to start")
            third = ctl.engine()
            try:
                poll(lambda: len(alive_engine_ids(tc)) == 2, what="the third engine")
                second.terminate()
                assert second.wait(30) == 0
                gate.touch()
                assert tc.get_task_result(retried, block=True, timeout=60) == third.pid
            finally:
                third.kill()
            assert read_lines(runs) == ["plain", "retried", "retried"]
    finally:
        for p in (first, second):
            if p is not None:
                p.kill()
        ctl.stop()


def record_slow_cleanup(log, tag, gate, cleaned):
    """Task code: `record`, whose cleanup (a `finally`) waits for the file `cleaned`."""
    try:
        return record(log, tag, gate)
    finally:
        record(log, f"{tag} cleans up", cleaned)


@pytest.mark.timeout(120)
def test_a_sigtermed_engine_whose_task_cleans_up_slowly_does_not_give_that_task_away(
        tmp_path):
    """A SIGTERMed engine names the task it was running in its `leaving`, and the controller
    gives back every other one. The engine named the task only once its code had ended:
    with a `finally` longer than the I/O thread's 10 ms tick, `leaving` named none, and the
    controller gave that task, still running, to another engine (twice, with retries=0)."""
    ctl = ControllerProcess(tmp_path, args=("--prefetch", "1"))
    ctl.start()
    first = ctl.engine()
    runs, gate, cleaned = tmp_path / "runs", tmp_path / "gate", tmp_path / "cleaned"
    second = None
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.engines(), what="the engine")
            tid = tc.run(MapTask(record_slow_cleanup, (str(runs), "t", str(gate), str(cleaned))))
            poll(lambda: read_lines(runs) == ["t"], what="the task to start")
            second = ctl.engine()
            poll(lambda: len(alive_engine_ids(tc)) == 2, what="the second engine")
            first.terminate()
            poll(lambda: "t cleans up" in read_lines(runs), what="the cleanup to start")
            poll(lambda: [e for e in tc.engines() if e["pid"] == first.pid
                          and e["state"] == "retiring"], what="the engine's leaving taken")
            cleaned.touch()
            with pytest.raises(EngineDied):
                tc.get_task_result(tid, block=True, timeout=60)
            assert first.wait(30) == 0
            assert tc.run(MapTask(abs, (-3,)), block=True) == 3  # (the second engine serves)
            assert read_lines(runs) == ["t", "t cleans up"]
    finally:
        for p in (first, second):
            if p is not None:
                p.kill()
        ctl.stop()


@pytest.mark.timeout(120)
def test_the_tasks_a_sigtermed_engine_gives_back_leave_what_the_views_say_it_holds(tmp_path):
    """A SIGTERMed engine gives back the tasks it buffered and never started: statistics()
    (its `held`, `taskmill status`'s task column) and the activity (the dashboard's task
    stream) say so at once. They kept them on that engine while it finished its running
    task, and then showed them as having died with it."""
    ctl = ControllerProcess(tmp_path, args=("--prefetch", "3"))
    ctl.start()
    first = ctl.engine()
    runs, gate, cleaned = tmp_path / "runs", tmp_path / "gate", tmp_path / "cleaned"
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.engines(), what="the engine")
            eid = tc.engines()[0]["engineid"]
            running = tc.run(MapTask(record_slow_cleanup, (str(runs), "t", str(gate),
                                                           str(cleaned))))
            buffered = [tc.run(MapTask(abs, (-i,))) for i in (1, 2)]
            poll(lambda: tc.queue_status()["pending"] == 3, what="all three on the engine")
            poll(lambda: read_lines(runs) == ["t"], what="the task to start")
            first.terminate()
            poll(lambda: "t cleans up" in read_lines(runs), what="the cleanup to start")
            poll(lambda: [e for e in tc.engines() if e["state"] == "retiring"],
                 what="the engine's leaving taken")
            row = next(e for e in tc.statistics()["engines"] if e["engineid"] == eid)
            assert row["held"] == [running] and row["current_task"] == running
            assert tc.queue_status(verbose=True)["scheduled"] == buffered
            activity = tc.activity()
            assert [a["tid"] for a in activity["running"]] == [running]
            moved = {a["tid"]: (a["engineid"], a["status"]) for a in activity["attempts"]}
            assert moved == {t: (eid, "moved") for t in buffered}
            cleaned.touch()
            poll(lambda: tc.engines()[0]["state"] == "dead", what="the engine to end")
            ended = {a["tid"]: a["status"] for a in tc.activity()["attempts"]}
            assert ended == {running: "died", **{t: "moved" for t in buffered}}
    finally:
        first.kill()
        ctl.stop()


@pytest.mark.timeout(120)
def test_a_large_argument_changed_before_it_was_sent_fails_its_task_saying_why(tmp_path):
    """Large arguments travel from the caller's memory without a copy, signed at the call: one
    changed before it was sent is refused by the engine, and the error said only
    "bad-payload-signature", as for a forged message. It says what most likely happened now.
    (The controller is stopped so that the send cannot finish before the change.)"""
    with controller_process(tmp_path, engines=1) as ctl, TaskClient(ctl.conn, timeout=60) as tc:
        poll(lambda: tc.engines(), what="the engine")
        data = bytearray(32 * 1024 * 1024)
        os.kill(ctl.proc.pid, signal.SIGSTOP)
        try:
            fut = tc.submit(len, data)
            data[-1] = 1  # (most of it still waits in this process for the stopped controller)
        finally:
            os.kill(ctl.proc.pid, signal.SIGCONT)
        error = fut.exception(timeout=60)
        assert isinstance(error, SerializationError), error
        assert "bad-payload-signature" in str(error) and "pass a copy" in str(error)
        assert tc.submit(len, bytes(data)).result(timeout=60) == len(data)  # (the engine lives)
