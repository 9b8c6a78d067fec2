"""Transport choices that need no process: ipc:// URLs and their limits, who gets TCP, and the
controller's bound on the frames of one message."""

from __future__ import annotations

import logging
import os

import pytest
import zmq

from taskmill import Cluster
from taskmill.connection import (
    ipc_path_limit,
    ipc_urls,
    new_connection_info,
    write_connection_file,
)
from taskmill.launchers import LaunchContext, LauncherError, MPILauncher, SSHLauncher
from taskmill.launchers.base import require_tcp
from taskmill.wire import Refused, Wire, recv_message


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
