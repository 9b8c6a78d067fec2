"""Local clusters speak over unix sockets in a 0700 folder: no other user of the machine can
even connect. `taskmill controller` keeps TCP unless asked (`--transport ipc`)."""

from __future__ import annotations

import errno
import json
import logging
import os
import pwd
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import zmq
from systest import TASKMILL, ControllerProcess, need_root, stop_process, wait_until

from taskmill import Cluster, MapTask, TaskClient
from taskmill.connection import ipc_path, ipc_path_limit, read_connection_file
from taskmill.wire import Wire

pytestmark = pytest.mark.timeout(120, method="thread")


def _connect_as(user: str | None, info) -> dict:
    """In a forked child (as `user`, or as we are): connect a plain unix socket to the client
    socket's file, and send a correctly signed ping through ZeroMQ; what happened to each."""
    ping = Wire(info.key_bytes).encode({"type": "ping", "req": 1})
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only what works after a fork (a fresh ZeroMQ context)
        result: dict = {}
        try:
            os.close(r)
            if user is not None:
                pw = pwd.getpwnam(user)
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
            result["uid"] = os.getuid()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(ipc_path(info.client_url)))
                result["unix"] = "connected"
            except OSError as e:
                result["unix"] = errno.errorcode.get(e.errno, str(e.errno))
            finally:
                s.close()
            ctx = zmq.Context()
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.connect(info.client_url)
            d.send_multipart(ping)
            result["zmq"] = "answered" if d.poll(3000) else "no answer"
            ctx.destroy(linger=0)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            result["error"] = repr(e)
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    try:
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return json.loads(data)


def test_a_local_cluster_listens_on_unix_sockets_no_other_user_can_reach():
    need_root("run a connecting process as the user nobody")
    nobody = pwd.getpwnam("nobody").pw_uid
    with Cluster(1, heartbeat=0.5) as c:
        info = read_connection_file(c.connection_file)
        assert c.transport == "ipc"
        assert info.client_url.startswith("ipc://") and info.engine_url.startswith("ipc://")
        for url in (info.client_url, info.engine_url):
            path = ipc_path(url)
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert path.parent == c.state_dir
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        with c.client() as tc:
            assert tc.run(MapTask(abs, (-2,)), block=True) == 2
        # The same probe as this user gets in (so the check below can fail)...
        assert _connect_as(None, info) == {"uid": os.getuid(), "unix": "connected",
                                           "zmq": "answered"}
        # ...and as another user it cannot even connect, though it holds the key.
        assert _connect_as("nobody", info) == {"uid": nobody, "unix": "EACCES",
                                               "zmq": "no answer"}


def test_taskmill_run_gives_the_script_unix_sockets(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import os\n"
        "from taskmill import TaskClient\n"
        "from taskmill.connection import read_connection_file\n"
        "info = read_connection_file(os.environ['TASKMILL_CONNECTION'])\n"
        "with TaskClient() as tc:\n"
        "    print(info.client_url, info.engine_url, tc.map(abs, [-4]))\n")
    out = subprocess.run([*TASKMILL, "run", "-n", "1", str(script)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    client_url, engine_url, result = out.stdout.split(maxsplit=2)
    assert client_url.startswith("ipc://") and engine_url.startswith("ipc://")
    assert result.strip() == "[4]"


def test_a_state_folder_too_deep_for_unix_sockets_falls_back_to_tcp(tmp_path, monkeypatch,
                                                                     caplog):
    deep = tmp_path / ("d" * max(1, ipc_path_limit() - len(str(tmp_path))))
    deep.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with caplog.at_level(logging.WARNING, logger="taskmill.connection"), \
            Cluster(1, heartbeat=0.5) as c:
        assert "too deep for unix sockets" in caplog.text
        assert c.state_dir.parent == deep
        info = read_connection_file(c.connection_file)
        assert c.transport == "tcp" and info.client_url.startswith("tcp://127.0.0.1:")
        with c.client() as tc:
            assert tc.run(MapTask(abs, (-6,)), block=True) == 6


def test_controller_keeps_tcp_and_transport_ipc_survives_a_restart(tmp_path):
    plain = tmp_path / "plain" / "conn.json"
    conn = tmp_path / "ipc" / "conn.json"
    log = tmp_path / "procs.log"
    plain_ctl = ControllerProcess(tmp_path, conn=plain, log_path=log, db=":memory:",
                                  heartbeat=None, write_connection=False)
    # (the store: tasks.db beside the connection file, the controller's default)
    ipc_ctl = ControllerProcess(tmp_path, conn=conn, log_path=log, db="",
                                write_connection=False, args=("--transport", "ipc"))
    engine = None
    try:
        plain_ctl.start()
        wait_until(plain.exists, "the plain controller's connection file", 30)
        assert read_connection_file(plain).client_url.startswith("tcp://127.0.0.1:")

        ipc_ctl.start()
        wait_until(conn.exists, "the ipc controller's connection file", 30)
        info = read_connection_file(conn)
        assert info.client_url == f"ipc://{conn.parent}/conn.client.sock"
        assert info.engine_url == f"ipc://{conn.parent}/conn.engine.sock"
        assert stat.S_IMODE(conn.parent.stat().st_mode) == 0o700
        engine = ipc_ctl.engine()
        with TaskClient(conn, timeout=30) as tc:
            wait_until(lambda: len(tc.engines()) == 1, "the engine to register", 60)
            assert tc.run(MapTask(abs, (-1,)), block=True) == 1
            ipc_ctl.kill9()
            ipc_ctl.start()  # the same file: the same sockets, bound again
            assert tc.run(MapTask(abs, (-8,)), block=True) == 8  # the engine came back
    finally:
        if engine is not None:
            stop_process(engine)
        ipc_ctl.stop()
        plain_ctl.stop()


def test_controller_transport_ipc_refuses_a_folder_others_can_enter(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(folder, 0o755)
    done = subprocess.run([*TASKMILL, "controller", "--transport", "ipc", "--connection-file",
                           str(folder / "conn.json"), "--db", ":memory:", "--no-dashboard"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "other users could connect" in done.stderr and f"chmod 700 {folder}" in done.stderr
    assert not Path(folder / "conn.json").exists()
