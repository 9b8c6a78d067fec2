"""Security and bad input against a real controller (SPEC.md §1 Security).

- Replays: a correctly signed message sent again, byte for byte, is refused and counted
  (`refused["replay"]`), never acted on, and its sender gets nothing.
- An engine holding the wrong key never registers and never gets a task.
- Bad input (payloads that cannot be pickled or unpickled somewhere, exceptions that cannot
  travel, depend callables the controller cannot load, out-of-range taskids) ends in a clear
  error for the caller, and the next task still runs.
- Messages above the controller's size limit are refused and counted (`refused["too-large"]`).

Tests that may break the controller run against one of their own (a `Cluster`, or a
`Controller` in this process); the others use the shared `cluster`. Nothing sleeps to wait for a
condition: every wait polls with a deadline.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import uuid

import pytest
import zmq
from systest import (
    controller_thread,
    read_lines,
    refused,
    stop_process,
    wait_refused,
    wait_until,
    wrong_key_file,
)

from taskmill import (
    Cluster,
    DependencyError,
    MapTask,
    RemoteError,
    SerializationError,
    StringTask,
    TaskClient,
    TaskError,
    TaskTimeout,
)
from taskmill.connection import read_connection_file
from taskmill.wire import Wire

pytestmark = pytest.mark.timeout(120, method="thread")


# -- helpers ---------------------------------------------------------------------------------





def wait_finished(tc: TaskClient, tid: int, timeout: float = 30.0) -> None:
    """Wait (bounded) until task `tid` has a final result, ok or failed."""

    def done() -> bool:
        q = tc.queue_status(verbose=True)
        return tid in q["succeeded"] or tid in q["failed"]

    wait_until(done, f"task {tid} to finish", timeout)


def result_of(tc: TaskClient, task, timeout: float = 30.0):
    """Submit `task` and return (or raise) its result, never waiting longer than `timeout`."""
    tid = tc.run(task)
    wait_finished(tc, tid, timeout)
    return tc.get_task_result(tid, block=True)


def next_task_runs(tc: TaskClient) -> None:
    assert result_of(tc, MapTask(abs, (-7,))) == 7


def busy_count(tc: TaskClient) -> tuple[int, int]:
    q = tc.queue_status()
    return q["scheduled"], q["pending"]


def append_line(path: str, line: str) -> int:
    """Task body with a side effect that shows how often it ran."""
    with open(path, "a") as f:
        f.write(line + "\n")
    return os.getpid()





def raw_dealer(ctx: zmq.Context, url: str) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(url)
    return s


def recv_reply(sock: zmq.Socket, wire: Wire, timeout: float = 10.0) -> dict:
    assert sock.poll(int(timeout * 1000)), f"no reply within {timeout:g}s"
    header, _ = wire.decode(sock.recv_multipart())
    return header


def session_of(sock: zmq.Socket, key: bytes) -> bytes:
    """The controller's session, as a client learns it (a hello's reply names it)."""
    sock.send_multipart(Wire(key).encode({"type": "hello", "req": "hello"}))
    reply = recv_reply(sock, Wire(key))
    assert reply["req"] == "hello", reply
    return reply.get("session")


class _RecordingWire:
    """Stands in for a client's send-socket Wire: records every message it signs."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire
        self.sent: list[list[bytes]] = []

    def encode(self, header, frames=()):
        message = self._wire.encode(header, frames)
        self.sent.append([bytes(getattr(f, "buffer", f)) for f in message])
        return message

    def __getattr__(self, name):
        return getattr(self._wire, name)


@pytest.fixture
def client_only_module(tmp_path, monkeypatch):
    """A module importable here only: its file is in tmp_path, on this process's sys.path.

    Engines and the controller are other processes, started elsewhere (cwd, sys.path), so
    anything pickled by reference to it cannot be unpickled there.
    """
    name = f"tm_client_only_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(
        "class Point:\n"
        "    def __init__(self, x):\n"
        "        self.x = x\n"
        "\n"
        "\n"
        "def anywhere(properties):\n"
        "    return True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


# -- 1. replays ------------------------------------------------------------------------------


def test_replayed_submit_of_a_real_client_runs_once(cluster, tmp_path):
    """A submit captured from a real client's socket and replayed verbatim is not acted on."""
    info = read_connection_file(cluster.connection_file)
    out = tmp_path / "ran.txt"
    with cluster.client() as tc:
        conn = tc.backend.connection
        with conn.send_lock:
            recorder = _RecordingWire(conn.send_wire)
            conn.send_wire = recorder
        tid = tc.run(MapTask(append_line, (str(out), "once")))
        wait_finished(tc, tid)  # (run() may send its task in a batch after it returns: SPEC §4)
        with conn.send_lock:
            conn.send_wire = recorder._wire
        assert tc.get_task_result(tid, block=True) > 0
        assert read_lines(out) == ["once"]

        submits = [m for m in recorder.sent if Wire(info.key_bytes).decode(m)[0]["type"] == "submit"]
        assert len(submits) == 1, recorder.sent
        captured = submits[0]

        stats = tc.statistics()
        replays_before = stats["refused"].get("replay", 0)
        submitted_before = stats["submitted"]
        queue_before = tc.queue_status()

        ctx = zmq.Context()
        try:
            first, second = raw_dealer(ctx, info.client_url), raw_dealer(ctx, info.client_url)
            first.send_multipart(captured)
            first.send_multipart(captured)
            second.send_multipart(captured)  # another connection: the same (sid, seq) is still old
            wait_refused(tc, "replay", replays_before + 3)
            assert first.poll(200) == 0 and second.poll(0) == 0, "a replay was answered"
        finally:
            ctx.destroy(linger=0)

        assert read_lines(out) == ["once"], "a replayed submit ran the task again"
        stats = tc.statistics()
        assert stats["submitted"] == submitted_before
        assert tc.queue_status() == queue_before
        assert busy_count(tc) == (0, 0)
        # No taskid was used up by the replays.
        assert tc.run(MapTask(append_line, (str(out), "next"))) == tid + 1
        wait_finished(tc, tid + 1)
        assert read_lines(out) == ["once", "next"]


def test_replayed_submit_without_a_dedup_key_is_refused(cluster, client, tmp_path):
    """Replay refusal does not lean on submit de-duplication: this submit carries no `key`.

    Built the way a client builds one (its task encoding, a `Wire` with the cluster's key), sent
    from a raw DEALER socket, then the identical frames are sent again.
    """
    info = read_connection_file(cluster.connection_file)
    wire = Wire(info.key_bytes)
    out = tmp_path / "ran.txt"
    spec, frames = client.backend.encode(MapTask(append_line, (str(out), "once")))

    replays_before = refused(client, "replay")
    submitted_before = client.statistics()["submitted"]
    ctx = zmq.Context()
    try:
        sock = raw_dealer(ctx, info.client_url)
        session = session_of(sock, info.key_bytes)
        message = wire.encode({"type": "submit", "req": 11, "tasks": [spec],
                               "session": session}, frames)
        assert "key" not in Wire(info.key_bytes).decode(message)[0]
        sock.send_multipart(message)
        reply = recv_reply(sock, Wire(info.key_bytes))
        assert reply["ok"] and reply["req"] == 11, reply
        (tid,) = reply["tids"]
        wait_finished(client, tid)
        assert read_lines(out) == ["once"]
        succeeded = client.queue_status()["succeeded"]

        for _ in range(2):
            sock.send_multipart(message)
        wait_refused(client, "replay", replays_before + 2)
        assert sock.poll(200) == 0, "the controller answered a replayed message"
    finally:
        ctx.destroy(linger=0)

    assert read_lines(out) == ["once"], "a replayed submit ran the task again"
    assert client.statistics()["submitted"] == submitted_before + 1
    q = client.queue_status()
    assert q["succeeded"] == succeeded and (q["scheduled"], q["pending"]) == (0, 0)
    assert client.queue_status(verbose=True)["succeeded"].count(tid) == 1
    assert client.run(MapTask(abs, (-1,))) == tid + 1  # the replays allocated no taskid
    wait_finished(client, tid + 1)


# -- 2. an engine with the wrong key ---------------------------------------------------------


def test_an_engine_with_the_wrong_key_that_gives_up_says_the_key_is_likely_why(cluster,
                                                                              tmp_path):
    """(It said "no taskmill controller answered ... start it", with no word of the key.)"""
    wrong, _ = wrong_key_file(cluster.connection_file, tmp_path / "wrong-key.json")
    done = subprocess.run([sys.executable, "-m", "taskmill", "engine", "--no-replace", "--connection-file",
                           str(wrong), "--controller-timeout", "3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "holds another key than the controller's" in done.stderr, done.stderr


def test_engine_with_the_wrong_key_never_registers_and_gets_no_task(cluster, client, tmp_path):
    wrong, _ = wrong_key_file(cluster.connection_file, tmp_path / "wrong-key.json")
    marker = f"wrong-key-{uuid.uuid4().hex[:8]}"

    engines_before = client.engines()
    known_pids = {e["pid"] for e in engines_before if e["state"] != "dead"}
    bad_before = refused(client, "bad-signature")
    log_path = tmp_path / "engine.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskmill", "engine", "--no-replace", "--connection-file", str(wrong),
             "--property", f"{marker}=1"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        # It keeps trying to register (about once a second); wait for two refused attempts.
        wait_refused(client, "bad-signature", bad_before + 2, timeout=60)
        assert proc.poll() is None, read_lines(log_path)

        # The cluster keeps serving, on its own engines only.
        pids = {result_of(client, MapTask(os.getpid)) for _ in range(6)}
        assert pids <= known_pids and proc.pid not in pids
        # No registered engine carries the wrong-key engine's property: a task that needs it
        # finds no engine (unmet_timeout of the shared cluster) instead of running there.
        with pytest.raises(TaskTimeout):
            result_of(client, MapTask(os.getpid, depend={marker: 1}))
        assert refused(client, "bad-signature") >= bad_before + 2
        engines_after = client.engines()
        assert [e["engineid"] for e in engines_after] == [e["engineid"] for e in engines_before]
        assert proc.pid not in {e["pid"] for e in engines_after}
        assert proc.poll() is None
    finally:
        stop_process(proc)
    log_text = log_path.read_text(errors="replace")
    assert "registered as engine" not in log_text, log_text
    # The controller sent it nothing at all (it would have been refused there, and logged).
    assert "refused a message" not in log_text, log_text
    next_task_runs(client)


# -- 4. bad input ----------------------------------------------------------------------------


def get_x(point):
    return point.x


def test_argument_that_cannot_be_unpickled_on_the_engine(client, client_only_module):
    point = client_only_module.Point(3)
    assert get_x(point) == 3  # fine here
    with pytest.raises(SerializationError) as e:
        result_of(client, MapTask(get_x, (point,)))
    assert client_only_module.__name__ in str(e.value)
    next_task_runs(client)

    # The same for a StringTask's pushed value: the failure is carried in the TaskResult.
    tr = result_of(client, StringTask("y = p.x", push={"p": point}, pull="y"))
    assert isinstance(tr.failure, SerializationError), repr(tr.failure)
    assert client_only_module.__name__ in str(tr.failure)
    next_task_runs(client)


def return_lock():
    import threading

    return threading.Lock()


def return_generator():
    return (i for i in range(3))


@pytest.mark.parametrize("func", [return_lock, return_generator], ids=["lock", "generator"])
def test_result_that_cannot_be_pickled_on_the_engine(client, func):
    tid = client.run(MapTask(func))
    wait_finished(client, tid)
    with pytest.raises(SerializationError, match="cannot be pickled") as e:
        client.get_task_result(tid, block=True)
    assert e.value.taskid == tid
    assert e.value.engineid is not None
    next_task_runs(client)


def test_pulled_value_that_cannot_be_pickled(client):
    tr = result_of(client, StringTask("import threading\ntm_lock = threading.Lock()",
                                      pull="tm_lock", clear_after=True))
    assert isinstance(tr.failure, SerializationError), repr(tr.failure)
    assert "cannot be pickled" in str(tr.failure)
    next_task_runs(client)


def raise_unpicklable_class():
    import threading

    class Unpicklable(Exception):
        guard = threading.Lock()  # the class itself cannot be pickled (by value)

    raise Unpicklable("boom 42")


class NeedsTwo(Exception):
    """Pickles, but cannot be rebuilt: its args hold one value and __init__ wants two."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def raise_needs_two():
    raise NeedsTwo("boom", 42)


class HoldsLock(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_holds_lock():
    raise HoldsLock("boom 42")


@pytest.mark.parametrize("func, type_name, message", [
    (raise_unpicklable_class, "Unpicklable", "boom 42"),
    (raise_needs_two, "NeedsTwo", "boom and 42"),
    (raise_holds_lock, "HoldsLock", "boom 42"),
], ids=["class", "cannot-rebuild", "instance"])
def test_exception_that_cannot_travel_becomes_remote_error(client, func, type_name, message):
    tid = client.run(MapTask(func))
    wait_finished(client, tid)
    with pytest.raises(RemoteError) as e:
        client.get_task_result(tid, block=True)
    err = e.value
    assert err.type_name.endswith(type_name), err.type_name
    assert err.message == message
    assert func.__name__ in err.remote_traceback and message in err.remote_traceback
    assert err.taskid == tid and err.engineid is not None
    assert str(err) == f"{err.type_name}: {message}"
    next_task_runs(client)


def test_string_task_raising_an_unpicklable_exception(client):
    code = ("import threading\n"
            "class TmUnpicklable(Exception):\n"
            "    guard = threading.Lock()\n"
            "raise TmUnpicklable('boom 42')\n")
    tr = result_of(client, StringTask(code, clear_after=True))
    assert isinstance(tr.failure, RemoteError), repr(tr.failure)
    assert tr.failure.type_name.endswith("TmUnpicklable")
    assert tr.failure.message == "boom 42"
    assert "boom 42" in tr.failure.remote_traceback
    next_task_runs(client)


def test_unpicklable_argument_is_refused_by_the_client_before_sending(client):
    lock = threading.Lock()
    queue_before = client.queue_status()
    submitted_before = client.statistics()["submitted"]
    for task in (MapTask(id, (lock,)), MapTask(id, kwargs={"obj": lock}),
                 StringTask("pass", push={"lock": lock}),
                 MapTask(abs, (1,), depend=lambda props, lock=lock: lock is not None)):
        with pytest.raises(SerializationError, match="cannot"):
            client.run(task)
    assert client.queue_status() == queue_before
    assert client.statistics()["submitted"] == submitted_before  # nothing reached it
    next_task_runs(client)


def test_depend_the_controller_cannot_unpickle_is_a_clear_error(client, client_only_module):
    queue_before = client.queue_status()
    submitted_before = client.statistics()["submitted"]
    with pytest.raises(TaskError, match=r"cannot unpickle this task's depend") as e:
        client.run(MapTask(abs, (1,), depend=client_only_module.anywhere))
    assert client_only_module.__name__ in str(e.value)
    assert client.queue_status() == queue_before
    assert client.statistics()["submitted"] == submitted_before
    next_task_runs(client)


def test_out_of_range_taskids_get_clear_errors():
    """Taskids outside SQLite's int64 (but inside msgpack's uint64) are just unknown ids.

    Own cluster: a controller that mishandles them may stop answering, or exit. Every step is
    tried, and all that went wrong is reported together.
    """
    huge = 2**63
    problems: list[str] = []

    def attempt(what: str, call, expected: type[BaseException] | None = None) -> None:
        try:
            call()
        except Exception as e:  # noqa: BLE001 - reported below
            if expected is None or not isinstance(e, expected):
                problems.append(f"{what}: {type(e).__name__}: {e}")
        else:
            if expected is not None:
                problems.append(f"{what}: no {expected.__name__}")

    with Cluster(1, heartbeat=0.5, unmet_timeout=2.0) as c, c.client(timeout=5) as tc:
        attempt("get_task_result(2**63)", lambda: tc.get_task_result(huge), IndexError)
        attempt("abort(2**63)", lambda: tc.abort(huge), IndexError)
        attempt("clear(2**63)", lambda: tc.clear(huge), KeyError)

        def after_unknown() -> None:
            tid = tc.run(MapTask(abs, (1,), after=[huge]))
            wait_finished(tc, tid, timeout=10)
            tc.get_task_result(tid, block=True)

        attempt("a task with after=[2**63]", after_unknown, DependencyError)
        attempt("the next task", lambda: next_task_runs(tc))
        if c.controller_returncode is not None or c.controller_restarts:
            problems.append(f"the controller exited (status {c.controller_returncode}, "
                            f"{c.controller_restarts} restarts)")
        else:
            attempt("no internal errors", lambda: _no_internal_errors(tc))
        assert not problems, "\n".join(problems) + "\ncontroller log:\n" + c.log_tail("controller")


def _no_internal_errors(tc: TaskClient) -> None:
    n = refused(tc, "internal-error")
    assert n == 0, f"{n} message(s) raised inside the controller's handlers"


# -- 5. size limit ---------------------------------------------------------------------------

LIMIT = 64 * 1024


@pytest.fixture
def small_controller(tmp_path):
    """A controller in this process whose message size limit is LIMIT bytes (its `Wire` and
    its sockets' ZMQ_MAXMSGSIZE), as `taskmill controller --max-message-size LIMIT` has."""
    with controller_thread(tmp_path, max_message=LIMIT) as small:
        assert small.ctl.wire.max_message == LIMIT
        yield small.info, small.conn, small.ctl
    assert not small.thread.is_alive()


def test_message_above_the_size_limit_is_refused_and_counted(small_controller):
    info, conn, ctl = small_controller
    wire = Wire(info.key_bytes)
    with TaskClient(conn, timeout=10) as tc:
        ctx = zmq.Context()
        try:
            sock = raw_dealer(ctx, info.client_url)
            # Signed and well formed, but its frames add up to more than the limit (each one
            # alone is below it).
            big = [b"x" * (LIMIT // 2), b"y" * (LIMIT // 2)]
            spec = {"nodes": [{"exec": {"kind": "map"}, "nframes": 2, "pmac": wire.payload_mac(big)}]}
            sock.send_multipart(wire.encode({"type": "submit", "req": 1, "tasks": [spec]}, big))
            wait_refused(tc, "too-large", 1)
            assert sock.poll(200) == 0, "an oversize message was answered"
            # A message below the limit on the same connection is served.
            sock.send_multipart(wire.encode({"type": "ping", "req": 2}))
            reply = recv_reply(sock, Wire(info.key_bytes))
            assert reply["ok"] and reply["req"] == 2
        finally:
            ctx.destroy(linger=0)
        stats = tc.statistics()
        assert stats["refused"] == {"too-large": 1}
        assert stats["submitted"] == 0
        assert tc.queue_status() == {"scheduled": 0, "pending": 0, "succeeded": 0, "failed": 0}


def test_a_message_of_too_many_frames_is_refused_before_any_other_work(small_controller):
    """ZMQ_MAXMSGSIZE bounds each frame, not their number: the controller refuses a message of
    more than MAX_FRAMES frames, counted as such even when its signature is bad too (the
    count comes first), and keeps none of the frames past the limit."""
    from taskmill.wire import MAX_FRAMES

    info, conn, ctl = small_controller
    wire = Wire(info.key_bytes)
    with TaskClient(conn, timeout=10) as tc:
        ctx = zmq.Context()
        try:
            sock = raw_dealer(ctx, info.client_url)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.send_multipart(wire.encode({"type": "ping", "req": 1}, [b""] * MAX_FRAMES))
            sock.send_multipart([b"TM2" + b"x" * 40, *[b""] * MAX_FRAMES])  # and unsigned
            wait_refused(tc, "too-many-frames", 2)
            assert sock.poll(200) == 0, "a message of too many frames was answered"
            sock.send_multipart(wire.encode({"type": "ping", "req": 2}, [b""] * 100))
            reply = recv_reply(sock, Wire(info.key_bytes))
            assert reply["ok"] and reply["req"] == 2
        finally:
            ctx.destroy(linger=0)
        assert tc.statistics()["refused"] == {"too-many-frames": 2}


def test_single_frame_above_the_size_limit_is_not_acted_on(small_controller):
    """ZeroMQ itself drops a frame above ZMQ_MAXMSGSIZE (and that connection with it)."""
    info, conn, ctl = small_controller
    wire = Wire(info.key_bytes)
    with TaskClient(conn, timeout=10) as tc:
        ctx = zmq.Context()
        try:
            sock = raw_dealer(ctx, info.client_url)
            big = [b"z" * (2 * LIMIT)]
            spec = {"nodes": [{"exec": {"kind": "map"}, "nframes": 1, "pmac": wire.payload_mac(big)}]}
            sock.send_multipart(wire.encode({"type": "submit", "req": 1, "tasks": [spec]}, big))
            assert sock.poll(500) == 0, "an oversize message was answered"
        finally:
            ctx.destroy(linger=0)
        assert tc.statistics()["submitted"] == 0
        assert tc.queue_status()["scheduled"] == 0
        assert tc.engines() == []


def test_result_above_the_size_limit_fails_the_task_clearly(small_controller, tmp_path):
    """A result the controller would refuse must not leave the task (and its engine) hanging."""
    info, conn, ctl = small_controller
    log_path = tmp_path / "engine.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskmill", "engine", "--no-replace", "--connection-file", str(conn)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        with TaskClient(conn, timeout=10) as tc:
            wait_until(lambda: len(tc.engines()) == 1, "the engine to register", 60)
            tid = tc.run(MapTask(bytes, (2 * LIMIT,)))
            wait_finished(tc, tid, timeout=20)
            with pytest.raises(TaskError):
                tc.get_task_result(tid, block=True)
            assert result_of(tc, MapTask(abs, (-5,))) == 5
    finally:
        stop_process(proc)



@pytest.mark.timeout(60)
def test_a_peer_using_another_clients_routing_id_gets_none_of_its_replies(tmp_path):
    """Routing ids travel in clear over TCP. A peer that connects with a connected client's
    id must not take its place: the controller refuses the second connection, the client
    keeps getting its replies, and the impostor gets nothing."""
    import zmq
    from systest import ControllerProcess

    ctl = ControllerProcess(tmp_path)
    ctl.start()
    ctx = zmq.Context()
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            assert tc.queue_status()["scheduled"] == 0
            impostor = ctx.socket(zmq.DEALER)
            impostor.setsockopt(zmq.LINGER, 0)
            impostor.setsockopt(zmq.ROUTING_ID, tc.backend.connection.recv_ident)
            impostor.connect(read_connection_file(ctl.conn).client_url)
            for _ in range(20):  # (the controller's answers go to the real client only)
                assert tc.queue_status()["failed"] == 0
            assert impostor.poll(500) == 0, "the impostor received a reply meant for the client"
    finally:
        ctx.destroy(linger=0)
        ctl.stop()


@pytest.mark.timeout(120)
def test_messages_captured_before_a_restart_do_nothing_after_it(tmp_path):
    """A submit and a clear-all, captured as they travelled, are replayed after the
    controller restarted: both are refused (they name the earlier controller session), so the
    task does not run again and the results stored since are not wiped."""
    from systest import ControllerProcess

    ctl = ControllerProcess(tmp_path)
    ctl.start()
    engine = ctl.engine()
    out = tmp_path / "ran.txt"
    ctx = zmq.Context()
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            wait_until(lambda: tc.engines(), "the engine")
            info = read_connection_file(ctl.conn)
            wire = Wire(info.key_bytes)  # the sending client's
            sock = raw_dealer(ctx, info.client_url)
            session = session_of(sock, info.key_bytes)
            spec, frames = tc.backend.encode(MapTask(append_line, (str(out), "once")))
            submit = wire.encode({"type": "submit", "req": 1, "tasks": [spec], "key": "c:1",
                                  "session": session}, frames)
            clear = wire.encode({"type": "clear", "req": 2, "tids": None, "session": session})
            sock.send_multipart(submit)
            (tid,) = recv_reply(sock, Wire(info.key_bytes))["tids"]
            wait_finished(tc, tid)
            sock.send_multipart(clear)
            assert recv_reply(sock, Wire(info.key_bytes))["dropped"] == 1
            ctl.kill9()
            ctl.start()
            kept = tc.run(MapTask(abs, (-7,)))
            assert tc.get_task_result(kept, block=True) == 7
            before = refused(tc, "wrong-session")  # (the client's own, resent since)
            attacker = raw_dealer(ctx, info.client_url)
            attacker.send_multipart(submit)
            attacker.send_multipart(clear)
            assert attacker.poll(5000), "the replays were not answered"
            wait_until(lambda: refused(tc, "wrong-session") == before + 2
                       or read_lines(out) != ["once"],
                       "the replays to be refused (or, wrongly, acted on)")
            assert tc.get_task_result(kept) == 7  # not wiped
            assert tc.queue_status() == {"scheduled": 0, "pending": 0, "succeeded": 1,
                                         "failed": 0}
            assert read_lines(out) == ["once"]  # not run again
            assert tc.run(MapTask(abs, (-1,))) == kept + 1
    finally:
        ctx.destroy(linger=0)
        engine.kill()
        ctl.stop()
