"""--curve: encrypted traffic, and only allowed keys get in."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time

import pytest
import zmq
from systest import TASKMILL, ControllerProcess, wait_until

from taskmill import ControllerUnreachable, MapTask, StringTask, TaskClient
from taskmill.connection import free_port, read_connection_file, write_connection_file
from taskmill.curve import allow_dir, apply_client, make_key

pytestmark = pytest.mark.timeout(180, method="thread")
MARKER = "PLAINTEXT-MARKER-5f3a9c"


class Relay:
    """A TCP relay that records every byte passing from the client to the controller and back."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.captured = bytearray()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                a, _ = self.listener.accept()
            except TimeoutError:
                continue
            # The connection file is written before the controller binds: a client that comes
            # early must find the relay waiting for it, as a ZeroMQ peer would reconnect.
            deadline = time.monotonic() + 60
            while True:
                try:
                    b = socket.create_connection(self.target)
                    break
                except ConnectionRefusedError:
                    if time.monotonic() > deadline or self.stop.wait(0.05):
                        raise
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self.stop.is_set():
            ready, _, _ = select.select(list(peers), [], [], 0.2)
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                with self.lock:
                    self.captured += data
                peers[s].sendall(data)


def _start(tmp_path, name, curve):
    """A controller (which writes its connection file, with --curve its keys) and one engine,
    both logging to `name`.log; the connection file and the two processes."""
    ctl = ControllerProcess(tmp_path, conn=tmp_path / name / "conn.json",
                            log_path=tmp_path / f"{name}.log", db=":memory:", dashboard=True,
                            write_connection=False, args=("--curve",) if curve else ())
    ctl.start()
    ctl.wait_for_connection_file(30)
    eng = ctl.engine()
    return ctl.conn, [ctl.proc, eng]


def _via_relay(tmp_path, conn, name):
    info = read_connection_file(conn)
    relay = Relay(int(info.client_url.rsplit(":", 1)[1]))
    info.client_url = f"tcp://127.0.0.1:{relay.port}"
    path = write_connection_file(tmp_path / f"{name}-relay.json", info)
    return relay, path


def _push_marker(path) -> str:
    with TaskClient(path, timeout=30) as tc:
        r = tc.run(StringTask("y = x.upper()", push={"x": MARKER}, pull="y"), block=True)
        return r.ns.y


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        p.terminate()
    for p in started:
        p.wait(10)


def test_curve_traffic_is_not_plaintext_and_plain_traffic_is(tmp_path, procs):
    for name, curve in (("plain", False), ("curve", True)):
        conn, ps = _start(tmp_path, name, curve)
        procs.extend(ps)
        assert ("curve_server_key" in json.loads(conn.read_text())) is curve
        relay, path = _via_relay(tmp_path, conn, name)
        assert _push_marker(path) == MARKER.upper()
        relay.stop.set()
        with relay.lock:
            seen = MARKER.encode() in relay.captured or MARKER.upper().encode() in relay.captured
        assert len(relay.captured) > 0
        assert seen is (not curve), f"{name}: marker {'not ' if not seen else ''}seen on the wire"


def test_only_allowed_keys_connect(tmp_path, procs, monkeypatch):
    conn, ps = _start(tmp_path, "ctl", True)
    procs.extend(ps)
    assert oct(os.stat(str(conn) + ".server-key").st_mode & 0o777) == "0o600"
    with TaskClient(conn, timeout=30) as tc:  # the connection file's default key is allowed
        assert tc.run(MapTask(abs, (-4,)), block=True) == 4
    public, secret = make_key(tmp_path / "keys", "alice")
    monkeypatch.setenv("TASKMILL_CURVE_SECRET_KEY", str(secret))
    with pytest.raises(ControllerUnreachable):
        TaskClient(conn, timeout=2)
    (allow_dir(conn) / public.name).write_text(public.read_text())  # allow alice
    deadline = time.monotonic() + 60
    while True:
        try:
            with TaskClient(conn, timeout=2) as tc:
                assert tc.run(MapTask(abs, (-7,)), block=True) == 7
            break
        except ControllerUnreachable:
            assert time.monotonic() < deadline, "an allowed key never got in"


def _handshake(conn) -> str:
    """How a Curve handshake with the connection file's default client key ends: "ok" or
    "refused" (the controller's ZAP handler said no), as the client socket's monitor reports."""
    info = read_connection_file(conn)
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        apply_client(s, info)
        monitor = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                       | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        s.connect(info.client_url)
        assert monitor.poll(30_000), "the Curve handshake neither succeeded nor was refused"
        event = zmq.utils.monitor.recv_monitor_message(monitor)["event"]
        s.disable_monitor()
        monitor.close(0)
        s.close(0)
        return "ok" if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else "refused"
    finally:
        ctx.term()


def test_the_allow_list_fails_closed(tmp_path, procs):
    """A deleted allow-list directory, or a malformed certificate in it, lets nobody in (before,
    the keys read earlier stayed allowed); fixing it lets them in again; each change is logged
    once, not at every check."""
    import zmq.utils.monitor  # noqa: F401 - used by _handshake

    conn, ps = _start(tmp_path, "ctl", True)
    procs.extend(ps)
    allowed = allow_dir(conn)
    default = allowed / "connection-file-default.key"
    certificate = default.read_text()
    with TaskClient(conn, timeout=30) as tc:
        assert tc.run(MapTask(abs, (-3,)), block=True) == 3
    assert _handshake(conn) == "ok"

    shutil.rmtree(allowed)
    wait_until(lambda: _handshake(conn) == "refused", "a deleted allow-list to refuse the key")
    allowed.mkdir(mode=0o700)
    default.write_text(certificate)
    wait_until(lambda: _handshake(conn) == "ok", "the restored allow-list to let the key in")

    (allowed / "broken.key").write_text("#   ZeroMQ CURVE Public Certificate\nmetadata\ncurve\n"
                                        '    public-key = "not a key"\n')
    wait_until(lambda: _handshake(conn) == "refused", "a malformed certificate to refuse all")
    (allowed / "broken.key").unlink()
    wait_until(lambda: _handshake(conn) == "ok", "removing the bad certificate to let it in")

    default.write_text("garbage\n")  # in place: the directory's mtime does not change
    wait_until(lambda: _handshake(conn) == "refused", "a certificate broken in place to refuse")
    default.write_text(certificate)
    wait_until(lambda: _handshake(conn) == "ok", "the repaired certificate to let it in")
    with TaskClient(conn, timeout=30) as tc:
        assert tc.run(MapTask(abs, (-5,)), block=True) == 5

    log = (tmp_path / "ctl.log").read_text()
    assert log.count("allow-list directory") == 1 and "does not exist" in log, log
    assert log.count("broken.key is not a public certificate") == 1, log
    assert log.count("connection-file-default.key is not a public certificate") == 1, log
    assert log.count("is readable again") == 3, log


def test_curve_key_command_and_port_warning(tmp_path):
    out = subprocess.run([*TASKMILL, "curve-key", "bob", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bob.key").exists() and (tmp_path / "bob.key_secret").exists()
    assert oct((tmp_path / "bob.key_secret").stat().st_mode & 0o777) == "0o600"
    conn = tmp_path / "open" / "conn.json"
    p = subprocess.Popen([*TASKMILL, "controller", "--ip", "0.0.0.0", "--port", str(free_port()),
                          "--connection-file", str(conn), "--db", ":memory:"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 30
        while "without --curve" not in line and time.monotonic() < deadline:
            line = p.stdout.readline()
        assert "without --curve" in line and "run any code" in line
    finally:
        p.terminate()
        p.wait(10)
