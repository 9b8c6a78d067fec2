"""Transport choices that need no process: ipc:// URLs and their limits, who gets TCP, the
controller's bound on the frames of one message, and which links carry which heartbeats."""

from __future__ import annotations

import logging
import os

import pytest
import zmq

from taskmill import Cluster, defaults
from taskmill.connection import (
    ipc_path_limit,
    ipc_urls,
    new_connection_info,
    write_connection_file,
)
from taskmill.controller.sockets import ControllerSockets
from taskmill.engine.sockets import EngineSockets
from taskmill.launchers import LaunchContext, LauncherError, MPILauncher, SSHLauncher
from taskmill.launchers.base import require_tcp
from taskmill.wire import (
    TRANSPORT_HEARTBEAT_MS,
    TRANSPORT_TIMEOUT_MS,
    Refused,
    Wire,
    apply_client_link,
    recv_message,
)


def test_ipc_urls_bind_where_they_connect(tmp_path):
    info = new_connection_info(ipc_dir=tmp_path)
    assert info.is_ipc
    assert info.client_url == f"ipc://{tmp_path}/client.sock"
    assert info.engine_url == f"ipc://{tmp_path}/engine.sock"
    assert info.client_bind_url == info.client_url and info.engine_bind_url == info.engine_url
    tcp = new_connection_info()
    assert not tcp.is_ipc and tcp.client_url.startswith("tcp://127.0.0.1:")


def test_a_folder_too_deep_for_a_unix_socket_falls_back_to_tcp_and_says_so(tmp_path, caplog):
    deep = tmp_path / ("d" * (ipc_path_limit() - len(str(tmp_path))))
    assert ipc_urls(deep) is None
    assert ipc_urls(tmp_path) is not None
    with caplog.at_level(logging.WARNING, logger="taskmill.connection"):
        info = new_connection_info(ipc_dir=deep)
    assert not info.is_ipc and info.client_url.startswith("tcp://127.0.0.1:")
    assert "too deep for unix sockets" in caplog.text and str(deep) in caplog.text


@pytest.mark.parametrize("kwargs, transport", [
    ({}, "ipc"),
    ({"launcher": "local", "ip": "localhost"}, "ipc"),
    ({"transport": "tcp"}, "tcp"),
    ({"port": 5555}, "tcp"),
    ({"engine_port": 5556}, "tcp"),
    ({"ip": "0.0.0.0"}, "tcp"),
    ({"location": "head.example.org"}, "tcp"),
    ({"launcher": "mpi"}, "tcp"),
    ({"launcher": "slurm"}, "tcp"),
    ({"launcher": SSHLauncher(["node1"])}, "tcp"),
])
def test_a_cluster_all_on_this_machine_gets_ipc_and_any_other_tcp(kwargs, transport):
    assert Cluster(1, **kwargs).transport == transport


@pytest.mark.parametrize("kwargs", [{"launcher": "mpi"}, {"port": 5555}, {"ip": "0.0.0.0"},
                                    {"launcher": SSHLauncher(["node1"])}])
def test_ipc_asked_for_a_cluster_that_reaches_beyond_this_machine_is_refused(kwargs):
    with pytest.raises(ValueError, match="transport='ipc' .* all on this machine"):
        Cluster(1, transport="ipc", **kwargs)
    with pytest.raises(ValueError, match="transport must be"):
        Cluster(1, transport="udp")


def test_launchers_for_other_machines_refuse_unix_sockets(tmp_path):
    ipc = write_connection_file(tmp_path / "ipc.json", new_connection_info(ipc_dir=tmp_path))
    tcp = write_connection_file(tmp_path / "tcp.json", new_connection_info())
    with pytest.raises(LauncherError, match="the mpi launcher .* unix sockets"):
        require_tcp("mpi", ipc)
    require_tcp("mpi", tcp)
    launcher = MPILauncher(work_dir=tmp_path / "work")
    with pytest.raises(LauncherError, match="unix sockets"):
        launcher.launch(LaunchContext(ipc, tmp_path, None), [{}])
    assert launcher.groups() == []  # nothing was started


def test_too_many_frames_are_refused_before_the_signature_is_checked():
    wire = Wire(b"k" * 32, max_frames=4)
    good = Wire(b"k" * 32).encode({"type": "ping"}, [b"a", b"b", b"c"])
    assert wire.decode(good)[0]["type"] == "ping"  # 4 frames: fine
    forged = [b"TM2" + b"x" * 40, b"a", b"b", b"c", b"d"]  # 5 frames, a bad signature
    with pytest.raises(Refused) as e:
        wire.decode(forged)
    assert e.value.reason == "too-many-frames" and wire.refused == {"too-many-frames": 1}
    assert Wire(b"k" * 32).decode(Wire(b"k" * 32).encode({"type": "x"}, [b""] * 10))  # no limit


def test_recv_message_keeps_no_frame_past_the_limit():
    ctx = zmq.Context()
    try:
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        url = f"inproc://frames-{os.getpid()}"
        a.bind(url)
        b.connect(url)
        a.send_multipart([b"env", *[b"f"] * 1000])
        a.send_multipart([b"env", b"f"])
        assert len(recv_message(b, max_frames=10)) == 11  # one past the limit, no more
        assert len(recv_message(b, max_frames=10)) == 2  # the next message is whole
        a.send_multipart([b"id", b"env", *[b"f"] * 50])
        msg = recv_message(b, routed=True, max_frames=10)
        assert msg[0] == b"id" and len(msg) == 12
    finally:
        ctx.destroy(linger=0)


def _transport(sock: zmq.Socket) -> dict[str, int]:
    return {name: sock.getsockopt(getattr(zmq, name)) for name in (
        "HEARTBEAT_IVL", "TCP_KEEPALIVE", "TCP_KEEPALIVE_IDLE", "TCP_KEEPALIVE_INTVL",
        "TCP_KEEPALIVE_CNT", "TCP_MAXRT")}


def test_engine_links_carry_tcp_keepalive_not_zmtp_heartbeats_and_client_links_keep_theirs():
    """ZMTP heartbeats on the engine links cost ZeroMQ's I/O thread ~20% of a core at 1,000
    engines (benchmarks/many_engines.md): the controller's engine socket and an engine's four
    sockets have none, and the kernel's TCP keepalive (and user timeout) reaps a connection to
    a vanished host instead. The client links keep ZeroMQ's heartbeats, with TCP keepalive too;
    only the client's send socket times a connection out (a socket that does cuts off a frame
    it receives that takes longer than the timeout: probe I, finding 2), and no PING carries a
    TTL (which would start that clock on the receiving side)."""
    info = new_connection_info()
    engine_link = {"HEARTBEAT_IVL": 0, "TCP_KEEPALIVE": 1,
                   "TCP_KEEPALIVE_IDLE": defaults.ENGINE_LINK_KEEPALIVE_IDLE,
                   "TCP_KEEPALIVE_INTVL": defaults.ENGINE_LINK_KEEPALIVE_INTERVAL,
                   "TCP_KEEPALIVE_CNT": defaults.ENGINE_LINK_KEEPALIVE_PROBES,
                   "TCP_MAXRT": defaults.ENGINE_LINK_USER_TIMEOUT_MS}
    client_link = {**engine_link, "HEARTBEAT_IVL": TRANSPORT_HEARTBEAT_MS,
                   "HEARTBEAT_TIMEOUT": 0, "HEARTBEAT_TTL": 0}

    def client_options(sock: zmq.Socket) -> dict[str, int]:
        return {**_transport(sock), **{name: sock.getsockopt(getattr(zmq, name))
                                       for name in ("HEARTBEAT_TIMEOUT", "HEARTBEAT_TTL")}}

    ctl = ControllerSockets(info)
    try:
        assert _transport(ctl.engine) == engine_link
        assert client_options(ctl.client) == client_link
        for times_out, timeout in ((False, 0), (True, TRANSPORT_TIMEOUT_MS)):
            sock = ctl.ctx.socket(zmq.DEALER)  # (as a client's receive / send socket)
            try:
                apply_client_link(sock, times_out=times_out)
                assert client_options(sock) == {**client_link, "HEARTBEAT_TIMEOUT": timeout}
            finally:
                sock.close(0)
        engine = EngineSockets(info, "0123abcd")
        try:
            for sock in (engine.task, engine.ctl, engine.res, engine.heart):
                assert _transport(sock) == engine_link
            poller = zmq.Poller()
            engine.register(poller)
            engine.reconnect(poller)  # (sockets opened anew: the same settings)
            for sock in (engine.task, engine.ctl, engine.result_socket()):
                assert _transport(sock) == engine_link
        finally:
            engine.ctx.destroy(linger=0)
    finally:
        ctl.close()
