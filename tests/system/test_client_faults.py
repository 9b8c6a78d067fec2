"""The client under faults (SPEC.md §1 Client, §4): it never waits forever, bad requests fail at
the call, no message crosses the size limit, and the function-pickle cache is never stale.

- A controller that stays dead: after `reconnect_timeout` seconds of silence every blocked call,
  every future and every later call raises ControllerUnreachable; a controller started again
  on the same connection file is used again. Blocking verbs take their own `timeout=`.
- A request that cannot be encoded (an id beyond 64 bits, a lone surrogate) raises at the call,
  and the client stays usable, even across a controller restart (which resends what is
  outstanding).
- Against a controller with a small `max_message`: a task too large fails at once, batches are
  split by bytes, and results that together exceed the limit arrive in pieces.

(A map that ends early aborts its tasks: test_map_aborts.py.)

Processes are real (controllers, engines and scripts are subprocesses, or a Controller in this
process), and every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
from systest import (
    ControllerProcess,
    controller_process,
    controller_thread,
    make_blocker,
    poll,
    wait_for_file,
    wait_until,
)

from taskmill import (
    AsyncTaskClient,
    ControllerUnreachable,
    DependencyError,
    MapTask,
    StringTask,
    TaskClient,
)

pytestmark = pytest.mark.timeout(120, method="thread")


@pytest.fixture
def controller(tmp_path):
    """A controller process of the test's own, with no engine yet (a test adds its own to
    `ctl.engines`)."""
    with controller_process(tmp_path) as ctl:
        yield ctl


def outcome(call) -> list:
    """Run `call` in a thread; the list gets ("ok", value) or ("raised", exc) when it ends."""
    box: list = []

    def run() -> None:
        try:
            box.append(("ok", call()))
        except BaseException as e:  # noqa: BLE001 - reported to the test
            box.append(("raised", e))

    threading.Thread(target=run, daemon=True).start()
    return box


def ended(boxes: dict[str, list], timeout: float) -> dict[str, tuple]:
    """Wait (bounded) until every call has ended; fail naming those still blocked."""
    deadline = time.monotonic() + timeout
    while any(not b for b in boxes.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    blocked = sorted(k for k, b in boxes.items() if not b)
    assert not blocked, f"still blocked after {timeout:g}s: {blocked}"
    return {k: b[0] for k, b in boxes.items()}


def slow(x, seconds=60.0):
    import time

    time.sleep(seconds)
    return x


# -- 11. a controller that never comes back ------------------------------------------------------

@pytest.mark.timeout(90, method="thread")
def test_a_controller_gone_for_good_fails_every_blocked_call_then_one_started_again_is_used(
        controller):
    ctl = controller
    tc = TaskClient(ctl.conn, timeout=10, reconnect_timeout=2)
    try:
        tid = tc.run(MapTask(abs, (-1,)))  # no engine yet: it stays queued
        fut = tc.submit(abs, -2)
        assert fut.taskid == tid + 1

        async def aio_blocked():
            async with AsyncTaskClient(ctl.conn, reconnect_timeout=2) as atc:
                await atc.get_task_result(tid, block=True)

        blocked = {
            "get_task_result": outcome(lambda: tc.get_task_result(tid, block=True)),
            "barrier": outcome(lambda: tc.barrier([tid])),
            "map": outcome(lambda: tc.map(abs, [-3, -4])),
            "mapper().map": outcome(lambda: tc.mapper().map(abs, [-5])),
            "future.result": outcome(lambda: fut.result()),
            "AsyncTaskClient.get_task_result": outcome(lambda: asyncio.run(aio_blocked())),
        }
        wait_until(lambda: tc.queue_status()["scheduled"] >= 5, "the blocked calls' tasks")
        ctl.kill9()
        late = tc.submit(abs, -6)  # sent to nobody: its taskid never comes
        blocked["late submit's taskid"] = outcome(lambda: late.taskid)
        for what, (how, value) in ended(blocked, 30).items():
            assert how == "raised" and isinstance(value, ControllerUnreachable), (what, value)
        message = str(blocked["get_task_result"][0][1])
        assert ctl_url(ctl) in message and str(ctl.conn) in message and "2s" in message
        assert isinstance(late.exception(timeout=5), ControllerUnreachable)
        # Later calls raise at once, while nobody answers.
        with pytest.raises(ControllerUnreachable, match="has not answered"):
            tc.queue_status()
        with pytest.raises(ControllerUnreachable):
            tc.submit(abs, -7).result(timeout=5)
        with pytest.raises(ControllerUnreachable):
            tc.run_all(MapTask(abs, (-7,)))

        # Started again on the same connection file and store: the client uses it again.
        ctl.start()
        ctl.engines.append(ctl.engine())
        poll(lambda: _answers(tc), 30, "the restarted controller to answer")
        assert tc.get_task_result(tid, block=True, timeout=60) == 1  # reloaded and run
        assert tc.submit(abs, -8).result(timeout=60) == 8
        assert tc.map(abs, [-9, -10], timeout=60) == [9, 10]
    finally:
        tc.close()


def client_via_proxy(ctl: ControllerProcess, tmp_path, **kwargs):
    """A TaskClient that reaches `ctl` through a FaultProxy; (client, proxy)."""
    from faultproxy import proxied

    proxy, conn = proxied(ctl.conn, "client_url", tmp_path / "via-proxy" / "conn.json")
    return TaskClient(conn, **kwargs), proxy


def test_a_client_whose_connections_broke_goes_on_under_new_ids(controller, tmp_path):
    """The network forgets the client's connections and tells only the client. ZeroMQ would
    reconnect with the same routing ids, which the controller, still holding the old
    connections, ignores for good (no peer takes over another's id). The client sees its
    connections break and goes on at once under new ids, long before its
    `reconnect_timeout`: the call that waited across the cut is answered (sent again), the
    future's watch goes on under the new id, run() goes on with its lease, and the
    controller keeps nothing for the old ids."""
    ctl = controller
    tc, proxy = client_via_proxy(ctl, tmp_path, timeout=10, reconnect_timeout=100)
    try:
        tid = tc.run(MapTask(abs, (-1,)))  # (no engine: it stays queued)
        # (stored once another call returns: run() may send it after it returns, SPEC §4)
        assert tc.task_info(tid)["state"] == "scheduled"
        fut = tc.submit(abs, -2)  # a future: the controller watches its task for the client
        assert fut.taskid and tc.statistics()["clients_watching"] == 1
        box = outcome(lambda: tc.get_task_result(tid, block=True))
        poll(lambda: tc.statistics()["requests_waiting"] == 2, 30, "the blocking call to wait")
        assert proxy.cut_peer_side_all() == 2
        poll(lambda: _answers(tc), 30, "the client to be heard again")
        stats = tc.statistics()
        assert stats["clients_watching"] == 1 and stats["requests_waiting"] == 2, stats
        tid2 = tc.run(MapTask(abs, (-3,)))  # (the next id of the lease the client holds)
        assert tc.queue_status()["scheduled"] == 3 and not box and not fut.done()
        ctl.engines.append(ctl.engine())
        assert ended({"get_task_result": box}, 60)["get_task_result"] == ("ok", 1)
        assert fut.result(60) == 2 and tc.get_task_result(tid2, block=True) == 3
        poll(lambda: tc.statistics()["requests_waiting"] == 0, 30, "no request to wait")
    finally:
        tc.close()
        proxy.close()


def test_a_client_cut_off_without_a_word_goes_on_on_new_connections(controller, tmp_path):
    """A partition: the client's connections drop everything either way and neither side is
    told (no reset). ZeroMQ's heartbeats on the client's send socket end them within seconds,
    and the client goes on on new connections: the blocking call that waited across the cut
    returns, the future's watch goes on, and each task ran once."""
    ctl = controller
    tc, proxy = client_via_proxy(ctl, tmp_path, timeout=30, reconnect_timeout=100)
    try:
        tid = tc.run(MapTask(abs, (-1,)))  # (no engine: it stays queued)
        assert tc.task_info(tid)["state"] == "scheduled"
        fut = tc.submit(abs, -2)
        box = outcome(lambda: tc.get_task_result(tid, block=True))
        poll(lambda: tc.statistics()["requests_waiting"] == 2, 30, "the blocking call to wait")
        assert proxy.blackhole_all() == 2
        ctl.engines.append(ctl.engine())
        assert ended({"get_task_result": box}, 60)["get_task_result"] == ("ok", 1)
        assert fut.result(60) == 2
        assert tc.submit(abs, -3).result(60) == 3
        assert tc.queue_status()["succeeded"] == 3
    finally:
        tc.close()
        proxy.close()


def sized(data: bytes, n: int) -> bytes | int:
    """`n` bytes (a large result), or (n == 0) the size of `data` (a large argument's)."""
    return b"r" * n if n else len(data)


@pytest.mark.timeout(180, method="thread")
@pytest.mark.parametrize("way", ["up", "down"])
def test_a_message_slower_than_the_transport_heartbeat_crosses_a_slow_link(controller, tmp_path,
                                                                           way):
    """A client whose link carries 100 kB/s submits a 1 MiB argument (up) or gets a 1 MiB
    result (down): ~10 s on the link, twice the transport heartbeat's timeout. ZeroMQ resets
    that timeout only when a whole frame has arrived, so a socket sending PINGs cut the
    connection mid-frame, and the client sent the same submit (or was sent the same result)
    again for ever: the submit was never stored, the result never arrived (probe I, finding
    2). Only the client's send socket sends PINGs now: the message arrives on the client's
    first two connections, and the task ran once."""
    ctl = controller
    ctl.engines.append(ctl.engine())  # (the engine's own link is not throttled)
    with TaskClient(ctl.conn, timeout=30) as direct:  # (the controller listens: no refusal)
        poll(lambda: len(direct.engines()) == 1, 60, "the engine to register")
    tc, proxy = client_via_proxy(ctl, tmp_path, timeout=30, reconnect_timeout=100)
    try:
        assert tc.queue_status()["succeeded"] == 0
        assert proxy.accepted == 2  # (the client's send and receive sockets)
        proxy.throttle(100_000)
        size = 1 << 20
        fut = tc.submit(sized, b"x" * size if way == "up" else b"", 0 if way == "up" else size)
        assert fut.result(timeout=120) == (size if way == "up" else b"r" * size)
        assert proxy.accepted == 2, "the client's connections broke and it connected anew"
        proxy.throttle(None)
        assert tc.queue_status()["succeeded"] == 1 and tc.statistics()["submitted"] == 1
    finally:
        tc.close()
        proxy.close()


def test_a_watching_submit_sent_again_while_the_store_cannot_write_keeps_its_tasks(
        controller, tmp_path):
    """A future's submit stays open at the client (its results follow as `done` messages),
    so a client whose connections broke sends it again, and the controller answers it from
    the submit's key with the same taskids, after its next commit. If that commit fails (the
    store cannot write), its tasks, stored long before, must stay queued and run. Before,
    the failed commit withdrew them from the scheduler and the store as if never submitted,
    and answered "none of its tasks will run" (the fault soak, seed 106: futures whose
    taskids became unknown, some after they ran)."""
    import sqlite3

    ctl = controller
    ctl.engines.append(ctl.engine())
    tc, proxy = client_via_proxy(ctl, tmp_path, timeout=30, reconnect_timeout=100)
    try:
        gate = tmp_path / "gate"
        first = tc.submit(wait_for_file, str(gate))  # (holds the engine)
        second = tc.submit(abs, -7)  # (waits behind it: its submit stays open)
        tid = second.taskid
        assert tc.task_info(tid)["state"] in ("scheduled", "pending")
        locker = sqlite3.connect(ctl.db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # the store cannot write
        try:
            gate.touch()  # (the first result waits for a commit that fails: the store is down)
            poll(lambda: tc.statistics()["store_commits_failed"] >= 1, 30, "a failed commit")
            proxy.reset_all()  # (the client sends its open submits again)
            poll(lambda: _answers(tc), 30, "the client to be heard again")
            failed = tc.statistics()["store_commits_failed"]  # (the submits sent again wait)
            poll(lambda: tc.statistics()["store_commits_failed"] > failed, 30,
                 "a commit to fail with the submits sent again waiting")
        finally:
            locker.rollback()
            locker.close()
        assert tc.get_task_result(tid, block=True, timeout=60) == 7
        assert second.result(60) == 7 and first.result(60) is not None
        assert tc.queue_status()["succeeded"] == 2
    finally:
        tc.close()
        proxy.close()


def test_a_reset_that_loses_an_answer_costs_no_wait(controller, tmp_path):
    """A connection reset loses the answer to a call on its way to the client (and nothing
    tells the controller): the client, seeing its connection break, asks again, and the call
    returns with the answer instead of waiting out its timeout."""
    ctl = controller
    ctl.engines.append(ctl.engine())
    tc, proxy = client_via_proxy(ctl, tmp_path, timeout=60, reconnect_timeout=100)
    try:
        tid = tc.run(MapTask(bytes, (100_000,)))
        poll(lambda: tc.queue_status()["succeeded"] == 1, 60, "the task to finish")
        # The next message of 50,000 bytes or more to the client's receive socket (the result:
        # pings' answers are small) is lost, and that connection reset.
        proxy.drop_next(50_000, b".r")
        assert tc.get_task_result(tid) == bytes(100_000)
        assert proxy.dropped == 1
        assert tc.submit(abs, -4).result(60) == 4
    finally:
        tc.close()
        proxy.close()


def test_a_reset_that_loses_a_request_costs_no_wait_and_no_second_task(controller, tmp_path):
    """A connection reset loses a request on its way to the controller (a submit, then an
    abort): the client, seeing its connection break, sends it again, and the call returns
    with its answer; the submitted task exists once, the abort is carried out once."""
    from taskmill import TaskAborted

    ctl = controller
    tc, proxy = client_via_proxy(ctl, tmp_path, timeout=60, reconnect_timeout=100)
    try:
        proxy.drop_next(150, b".s", b"submit", from_peer=True)  # (the submit request)
        fut = tc.submit(abs, -4)
        poll(lambda: proxy.dropped == 1, 30, "the submit to be lost")
        assert tc.queue_status()["scheduled"] == 1  # (sent again, and stored once)
        proxy.drop_next(150, b".s", b"abort", from_peer=True)
        tc.abort(fut.taskid)
        assert proxy.dropped == 2
        with pytest.raises(TaskAborted):
            fut.result(60)
        assert tc.queue_status() == {"scheduled": 0, "pending": 0, "succeeded": 0, "failed": 1}
        ctl.engines.append(ctl.engine())
        assert tc.submit(abs, -5).result(60) == 5
        assert tc.queue_status()["succeeded"] == 1  # (the aborted one never ran)
    finally:
        tc.close()
        proxy.close()


@pytest.mark.parametrize("verb", ["abort", "clear", "retire", "spin"])
def test_a_request_not_to_be_carried_out_twice_whose_answer_was_lost_is_answered_again(
        controller, tmp_path, verb):
    """The answer to an abort (a clear, a retire, a spin) is lost with its connection, after
    the controller carried it out: the client asks again on its new connection, and the
    controller answers from the answer it kept for the request's key, without carrying it out
    again (which would answer wrongly: the task aborted the first time has finished by the
    second, the result cleared is unknown, the engine retired is no longer retiring, a second
    pass dispatches nothing). Before, the call raised ControllerUnreachable: "may or may not
    have taken effect"."""
    from taskmill import TaskAborted

    ctl = controller
    tc, proxy = client_via_proxy(ctl, tmp_path, timeout=30, reconnect_timeout=100)
    try:
        if verb == "abort":
            tid = tc.run(MapTask(abs, (-1,)))  # (no engine: it stays queued)
            assert tc.task_info(tid)["state"] == "scheduled"
            proxy.drop_next(1, b".r", b"aborted")  # (the answer's status)
            assert tc.abort(tid) is None
            with pytest.raises(TaskAborted):
                tc.get_task_result(tid)
        elif verb == "clear":
            ctl.engines.append(ctl.engine())
            tid = tc.run(MapTask(abs, (-1,)))
            assert tc.get_task_result(tid, block=True) == 1
            proxy.drop_next(1, b".r", b"dropped")  # (the answer's field)
            assert tc.clear(tid) == 1
            assert tc.queue_status()["succeeded"] == 0
        elif verb == "retire":
            ctl.engines.append(ctl.engine())
            (eid,) = poll(lambda: [e["engineid"] for e in tc.engines()], 60, "the engine")
            proxy.drop_next(1, b".r", b"retiring")  # (the answer's field)
            assert tc.retire_engines([eid]) == [eid]
            poll(lambda: tc.engines()[0]["state"] == "retired", 60, "the engine to retire")
        else:
            proxy.drop_next(1, b".r", b"dispatched")  # (the answer's field)
            assert tc.spin() is False  # (no task, no engine)
        assert proxy.dropped == 1
        assert tc.statistics()["answers_given_again"] == 1
    finally:
        tc.close()
        proxy.close()


@pytest.mark.timeout(150, method="thread")
@pytest.mark.parametrize("verb", ["abort", "clear", "retire"])
def test_an_answer_a_controller_crash_lost_is_given_by_the_next(controller, tmp_path, verb):
    """The controller carries out an abort (a clear, a retire) and sends its answer, which is
    lost with the client's connection; the controller is killed (kill -9) and started again
    before the client connects anew. The client sends the request again to the new
    controller, which answers it from its store, where the first one wrote the answer with
    the effect it answers: the call returns as if nothing happened, and the retired engine,
    back under a new id, retires. Before, the call raised ControllerUnreachable ("may or may
    not have taken effect"), and the engine came back taking tasks."""
    ctl = controller
    if verb != "abort":
        ctl.engines.append(ctl.engine())
    tc, proxy = client_via_proxy(ctl, tmp_path, timeout=30, reconnect_timeout=100)
    try:
        tid = tc.run(MapTask(abs, (-1,)))
        if verb == "clear":
            assert tc.get_task_result(tid, block=True) == 1
        elif verb == "retire":
            (eid,) = poll(lambda: [e["engineid"] for e in tc.engines()], 60, "the engine")
        else:  # (no engine: it stays queued)
            assert tc.task_info(tid)["state"] == "scheduled"
        field = {"abort": b"aborted", "clear": b"dropped", "retire": b"retiring"}[verb]
        proxy.drop_next(1, b".r", field, hold=True)
        call = {"abort": lambda: tc.abort(tid), "clear": lambda: tc.clear(tid),
                "retire": lambda: tc.retire_engines([eid])}[verb]
        box = outcome(call)
        poll(lambda: proxy.dropped == 1, 60, "the answer to be lost")
        ctl.kill9()
        ctl.start()
        proxy.release()
        (how, value), = ended({verb: box}, 60).values()
        assert how == "ok", value
        assert value == (None if verb == "abort" else 1 if verb == "clear" else [eid])
        assert tc.statistics()["answers_given_again"] == 1
        if verb == "retire":
            poll(lambda: [e["state"] for e in tc.engines()] == ["retired"], 60,
                 "the engine, back after the restart, to retire")
            assert ctl.engines[0].wait(30) == 0  # (it stopped on purpose)
        elif verb == "abort":
            from taskmill import TaskAborted

            with pytest.raises(TaskAborted):
                tc.get_task_result(tid)
        else:
            assert tc.queue_status()["succeeded"] == 0
    finally:
        tc.close()
        proxy.close()


def ctl_url(ctl: ControllerProcess) -> str:
    from taskmill.connection import read_connection_file

    return read_connection_file(ctl.conn).client_url


def _answers(tc: TaskClient) -> bool:
    try:
        tc.queue_status()
    except ControllerUnreachable:
        return False
    return True


def test_reconnect_timeout_is_checked():
    for bad, error in ((0, ValueError), (-1, ValueError), ("2", TypeError), (None, TypeError)):
        with pytest.raises(error, match="reconnect_timeout"):
            TaskClient("/nonexistent/connection.json", reconnect_timeout=bad)
        with pytest.raises(error, match="reconnect_timeout"):
            AsyncTaskClient(reconnect_timeout=bad)


def test_blocking_verbs_take_a_timeout_and_leave_the_tasks_alone(client, tmp_path):
    blocker = make_blocker()
    started, release = tmp_path / "started", tmp_path / "release"
    tid = client.run(MapTask(blocker, (str(started), str(release), 7)))
    wait_until(started.exists, "the task to start")
    other = client.submit(blocker, str(tmp_path / "started2"), str(release), 8)

    async def aio(verb: str):
        async with AsyncTaskClient(client.connection_file) as atc:
            if verb == "get_task_result":
                return await atc.get_task_result(tid, block=True, timeout=0.2)
            if verb == "barrier":
                return await atc.barrier([tid], timeout=0.2)
            if verb == "wait":
                return await atc.wait([tid], timeout=0.2)
            return await atc.run(MapTask(abs, (-1,), depend={"never": True}), block=True,
                                 timeout=0.2)

    calls = {
        "get_task_result": lambda: client.get_task_result(tid, block=True, timeout=0.2),
        "barrier": lambda: client.barrier(tid, timeout=0.2),
        "barrier with a bar": lambda: client.barrier([tid], progress=True, timeout=0.2),
        "wait": lambda: client.wait([tid, other], timeout=0.2),
        "run": lambda: client.run(MapTask(abs, (-1,), depend={"never": True}), block=True,
                                  timeout=0.2),
        "future.result": lambda: other.result(timeout=0.2),
        **{f"async {v}": (lambda v=v: asyncio.run(aio(v)))
           for v in ("get_task_result", "barrier", "wait", "run")},
    }
    for what, call in calls.items():
        with pytest.raises(TimeoutError) as info:
            call()
        assert not isinstance(info.value, ControllerUnreachable), what
    # The tasks waited on are untouched: still running, and they finish as they would have.
    assert client.task_info(tid)["state"] == "pending"
    release.touch()
    assert client.get_task_result(tid, block=True, timeout=60) == 7
    assert other.result(timeout=60) == 8
    for bad, error in ((-1, ValueError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="timeout"):
            client.get_task_result(tid, block=True, timeout=bad)
        with pytest.raises(error, match="timeout"):
            client.map(abs, [1], timeout=bad)


# -- 12. requests that cannot be encoded ------------------------------------------------------

def test_ids_beyond_any_taskid_are_unknown_ids_never_overflow(client):
    huge = 2**64
    with pytest.raises(IndexError, match="unknown"):
        client.get_task_result(huge)
    with pytest.raises(IndexError, match="unknown"):
        client.get_task_result(huge, block=True)
    with pytest.raises(IndexError, match="unknown"):
        client.abort(huge)
    with pytest.raises(IndexError, match="unknown"):
        client.future(huge).result(timeout=10)
    assert client.task_info(huge)["state"] == "unknown"
    client.barrier([huge, -(2**70)])  # unknown ids never raise
    (fut,) = client.wait([huge], timeout=10)
    assert isinstance(fut.exception(), IndexError)
    tid = client.run(MapTask(abs, (-3,)))
    assert client.get_task_result(tid, block=True, timeout=60) == 3
    with pytest.raises(KeyError, match=str(huge)) as info:
        client.clear([tid, huge])
    assert "1 other result(s) were cleared" in str(info.value)
    with pytest.raises(IndexError):
        client.get_task_result(tid)  # cleared with the others
    # `after` naming an id that cannot exist: like any unknown id, DependencyError.
    dependent = client.options(after=[huge]).submit(abs, -1)
    with pytest.raises(DependencyError):
        dependent.result(timeout=60)
    # ... and later submits are not stuck behind it.
    assert client.submit(abs, -4).result(timeout=60) == 4
    assert client.map(abs, [-5, -6], timeout=60) == [5, 6]


def test_a_submit_that_cannot_be_encoded_does_not_hold_up_later_ones(client):
    """Before, the submit raised on its way out and left the submitter's count of requests
    in flight at one for good: every later submit waited behind it, forever."""
    with pytest.raises(Exception):  # noqa: B017 - (its type is checked below)
        client.options(retries=2**64).submit(abs, 1)
    assert client.submit(abs, -4).result(timeout=30) == 4
    assert client.map(abs, [-5, -6], chunksize=1) == [5, 6]


def test_unencodable_tasks_raise_at_the_call_and_later_ones_run(client):
    with pytest.raises(ValueError, match="surrogate"):
        client.run(StringTask("x = '\udc80'"))
    with pytest.raises(ValueError, match="surrogate"):
        client.run(StringTask("x = 1", pull=["x", "\udc80"]))
    with pytest.raises(ValueError, match="surrogate"):
        client.run(StringTask("\udcff"), block=True)
    with pytest.raises(TypeError, match="dict depend"):
        client.run(MapTask(abs, (1,), depend={"k": "\udc80"}))
    with pytest.raises(ValueError, match="64 bits"):
        client.run(MapTask(abs, (1,), retries=2**64))
    with pytest.raises(ValueError, match="64 bits"):
        client.options(retries=2**64).submit(abs, 1)
    with pytest.raises(ValueError, match="surrogate"):
        client.run_all(StringTask("'\udc80'"))
    # A pushed name travels pickled: one with a lone surrogate is just a name.
    tr = client.run(StringTask("y = 2", push={"\udc80": 1}, pull="y"), block=True, timeout=60)
    assert tr.ns.y == 2
    assert client.submit(abs, -2).result(timeout=60) == 2
    assert client.map(abs, [-1], timeout=60) == [1]
    assert client.mapper().map(abs, [-3], timeout=60) == [3]


@pytest.mark.timeout(90, method="thread")
def test_a_request_that_could_not_be_sent_is_not_resent_after_a_restart(controller):
    """Before, the header was registered for resending before it was encoded: the next
    controller restart made the I/O thread encode it again, which killed the thread."""
    ctl = controller
    ctl.engines.append(ctl.engine())
    tc = TaskClient(ctl.conn, timeout=10)
    try:
        poll(lambda: tc.engines(), 30, "the engine")
        bad = [lambda: tc.run(StringTask("x = '\udc80'")),
               lambda: tc.get_task_result(2**64),
               lambda: tc.abort(2**64)]
        for call in bad:  # (what each raises is checked above)
            with pytest.raises(Exception):  # noqa: B017
                call()
        ctl.kill9()
        ctl.start()
        got = outcome(lambda: tc.run(MapTask(abs, (-5,)), block=True))
        (how, value), = ended({"run after the restart": got}, 60).values()
        assert (how, value) == ("ok", 5)
    finally:
        tc.close()


# -- 13. the size limit ----------------------------------------------------------------------

LIMIT = 64 * 1024


@contextlib.contextmanager
def limited_controller(tmp_path, prefetch: int):
    """A controller in this process that accepts messages of at most LIMIT bytes (as
    `taskmill controller --max-message-size LIMIT`), with one engine holding `prefetch`
    tasks at a time."""
    with controller_thread(tmp_path, engines=1, max_message=LIMIT, prefetch=prefetch) as small:
        yield small.conn, small.ctl


@pytest.fixture
def small_controller(tmp_path):
    """`limited_controller` handing one task at a time to its engine (so that the engine
    never sends several results together)."""
    with limited_controller(tmp_path, prefetch=1) as both:
        yield both


def test_a_task_above_the_size_limit_fails_at_once_naming_the_limit(small_controller):
    conn, ctl = small_controller
    big = b"x" * LIMIT
    with TaskClient(conn, timeout=5) as tc:
        fut = tc.submit(len, big)
        error = fut.exception(timeout=5)
        assert isinstance(error, ValueError)
        for part in ("bytes once pickled", f"{LIMIT:,}", "--max-message-size", " len"):
            assert part in str(error), (part, str(error))
        with pytest.raises(ValueError, match="--max-message-size"):
            _ = fut.taskid
        for call in (lambda: tc.run(MapTask(len, (big,))),
                     lambda: tc.map(len, [big]),
                     lambda: tc.map(len, [b"", big], chunksize=2),
                     lambda: tc.mapper().map(len, [b"", big]),
                     lambda: tc.run_all(MapTask(len, (big,)))):
            with pytest.raises(ValueError, match="--max-message-size"):
                call()
        assert tc.statistics()["submitted"] == 0  # nothing of those was sent
        assert tc.statistics()["refused"] == {}
        assert tc.submit(len, b"ok").result(timeout=30) == 2
        assert tc.backend.connection.max_message == LIMIT  # the controller's hello said so


def test_a_clusters_size_limit_is_its_clients_and_engines_limit_too(tmp_path):
    """Cluster(max_message_size=) (SPEC §5) is written into the connection file, where the
    controller, its clients and its engines all read it. Before, only `taskmill controller
    --max-message-size` set it, and clients and engines kept 512 MiB: a 600 MB result under
    a 1 GiB limit dropped the client's connection again and again, and its wait never
    ended."""
    from taskmill import Cluster, SerializationError
    from taskmill.connection import read_connection_file

    limit = 2 * LIMIT
    with Cluster(1, max_message_size=limit, db=":memory:", dashboard=False) as c, \
            c.client() as tc:
        assert read_connection_file(c.connection_file).max_message == limit
        assert tc.backend.connection.wire.max_message == limit
        assert tc.backend.connection.max_message == limit  # (its hello says so too)
        with pytest.raises(ValueError, match="--max-message-size"):
            tc.submit(len, b"x" * limit).result(timeout=30)
        error = tc.submit(bytes, limit).exception(timeout=30)  # a result above it
        assert isinstance(error, SerializationError) and f"{limit - 64 * 1024}" in str(error)
        assert tc.submit(len, b"x" * (limit // 2)).result(timeout=30) == limit // 2
    with pytest.raises(ValueError, match="max_message_size must be at least"):
        Cluster(1, max_message_size=1000)


def test_a_limit_above_the_default_is_what_clients_receive(tmp_path):
    with controller_thread(tmp_path, max_message=1 << 30) as big, \
            TaskClient(big.conn, timeout=10) as tc:
        assert tc.backend.connection.wire.max_message == 1 << 30


def test_batches_are_split_below_the_size_limit(small_controller):
    conn, ctl = small_controller
    piece = b"y" * 20_000  # ten of them are three times the limit
    with TaskClient(conn, timeout=5) as tc:
        got = outcome(lambda: tc.mapper(block=False).map(len, [piece] * 10))
        (how, tids), = ended({"mapper(block=False).map": got}, 30).values()
        assert how == "ok" and len(tids) == 10, tids
        got = outcome(lambda: tc.map(len, [piece] * 10, chunksize=1))
        (how, values), = ended({"map": got}, 60).values()
        assert (how, values) == ("ok", [20_000] * 10)
        # A map whose automatic chunks would be too large cuts them smaller.
        got = outcome(lambda: tc.map(len, [piece] * 10))
        (how, values), = ended({"map, automatic chunks": got}, 60).values()
        assert (how, values) == ("ok", [20_000] * 10)
        assert tc.statistics()["refused"] == {}


def test_results_above_the_size_limit_together_arrive_in_pieces(small_controller):
    conn, ctl = small_controller
    with TaskClient(conn, timeout=5) as tc:
        # This client refuses what its socket would refuse at the controller's limit (with the
        # default 512 MiB on both sides, it is the client's socket that drops a larger one).
        tc.backend.connection.wire.max_message = LIMIT
        tids = [tc.run(MapTask(bytes, (25_000,))) for _ in range(4)]  # 4 x 25 kB: 100 kB
        wait_until(lambda: tc.queue_status()["succeeded"] == 4, "the tasks to finish", 60)
        for t in tids:  # one by one, each fits
            assert len(tc.get_task_result(t)) == 25_000
        # A watch of finished tasks: their results in `done` messages.
        got = outcome(lambda: [len(f.result()) for f in tc.wait(tids)])
        # One `result` reply for the seed mapper's tasks, in pieces.
        got2 = outcome(lambda: [len(b) for b in tc.mapper().map(bytes, [25_000] * 4)])
        for what, value in ended({"wait": got, "mapper().map": got2}, 60).items():
            assert value == ("ok", [25_000] * 4), what
        assert tc.backend.connection.wire.refused == {}


# -- 14. the function-pickle cache is never stale ---------------------------------------------

class Params:
    alpha = 1


def scaled_by_params(x):
    return x * Params.alpha


def test_a_changed_class_attribute_reaches_the_engines(client, monkeypatch):
    """This module is pickled by value, as a script's __main__ is: so is its class."""
    assert client.submit(scaled_by_params, 1).result(timeout=60) == 1
    monkeypatch.setattr(Params, "alpha", 10)
    assert client.submit(scaled_by_params, 1).result(timeout=60) == 10
    assert client.map(scaled_by_params, [2], timeout=60) == [20]


def echo(value):
    return value


@pytest.mark.timeout(120, method="thread")
def test_many_tasks_and_results_to_one_engine_travel_below_the_size_limit(tmp_path):
    """24 tasks of 30 KB whose 30 KB results come back, with a 64 KiB limit and an engine
    that holds 8 at a time: the controller splits what it sends one engine in one turn, and
    the engine splits the results it sends together, so nothing is refused as too large."""
    with limited_controller(tmp_path, prefetch=8) as (conn, _ctl), \
            TaskClient(conn, timeout=10) as tc:
        gate = tmp_path / "gate"
        held = tc.submit(wait_for_file, str(gate))  # (the others queue up behind it)
        values = [bytes([i]) * 30_000 for i in range(24)]
        futs = [tc.submit(echo, v) for v in values]
        wait_until(lambda: tc.queue_status()["pending"] == 8, "8 tasks on the engine", 60)
        gate.touch()
        assert held.result(timeout=60) > 0
        assert [f.result(timeout=60) for f in futs] == values
        assert "too-large" not in tc.statistics()["refused"]


def test_a_lease_whose_answer_was_lost_is_answered_again_and_no_taskid_is_skipped(
        controller, tmp_path):
    """The answer to run()'s request for a block of taskids is lost with its connection,
    after the controller granted the block: the client asks again on its new connection, and
    the controller answers with the block it granted (by the request's key), so run()'s ids
    still rise by 1. Before, it granted a second block, and the first one's ids were skipped."""
    ctl = controller
    tc, proxy = client_via_proxy(ctl, tmp_path, timeout=30, reconnect_timeout=100)
    try:
        first = [tc.run(MapTask(abs, (-i,))) for i in range(3)]  # (no engine: they stay queued)
        assert tc.queue_status()["scheduled"] == 3  # (another call: the rest goes back)
        proxy.drop_next(1, b".r", b"start")  # (the lease's answer: its field)
        after = tc.run(MapTask(abs, (-3,)))
        assert proxy.dropped == 1
        assert [*first, after] == [0, 1, 2, 3]
        assert tc.queue_status()["scheduled"] == 4
        assert tc.task_info(after)["state"] == "scheduled"
    finally:
        tc.close()
        proxy.close()


def test_aborts_the_controller_has_not_confirmed_are_named(controller, tmp_path, caplog):
    """An Executor.map ended early (as Ctrl-C ends one) while the controller is stopped: its
    aborts cannot be heard, and a script that exits then leaves those tasks running, without
    a word (SPEC §4: an interrupted map aborts its tasks). The client now warns, naming the
    taskids whose abort is unconfirmed; it still sends them once the controller answers."""
    import logging
    import os
    import signal

    release, started = tmp_path / "release", tmp_path / "started"
    controller.engines.append(controller.engine())
    with TaskClient(controller.conn, timeout=30) as tc:
        results = tc.executor().map(block_until_file, [(str(release), str(started))] * 4,
                                    timeout=0.1)
        wait_for_file(started)
        os.kill(controller.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: tc.backend.connection.silent > 2, "the client to hear nothing")
            with caplog.at_level(logging.WARNING, logger="taskmill.client"), \
                    pytest.raises(TimeoutError):
                next(results)  # (its timeout has passed: it ends, aborting what is out)
        finally:
            os.kill(controller.proc.pid, signal.SIGCONT)
        said = [r.getMessage() for r in caplog.records if "not confirmed" in r.getMessage()]
        assert len(said) == 1 and "taskids 0..3" in said[0], said
        wait_until(lambda: tc.queue_status()["failed"] == 4, "the aborts, sent again")
        release.touch()


def block_until_file(paths):
    import os
    import time

    release, started = paths
    open(started, "w").close()
    end = time.monotonic() + 90
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.01)
