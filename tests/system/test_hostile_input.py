"""Garbage on both controller ports is counted and dropped; real clients keep being served."""

from __future__ import annotations

import pytest
import zmq
from systest import wait_refused

from taskmill import MapTask
from taskmill.connection import read_connection_file
from taskmill.wire import PROTOCOL, Wire


def test_raw_garbage_gets_no_reply_and_controller_serves_on(cluster, client):
    info = read_connection_file(cluster.connection_file)
    before = client.statistics()["refused"]
    ctx = zmq.Context()
    try:
        for url in (info.client_url, info.engine_url):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 2000)  # close() sends what is queued
            s.connect(url)
            s.send_multipart([b"hello?"])
            s.send_multipart([PROTOCOL + b"x" * 32 + b"\x81\xa4type\xa3run"])  # forged signature
            s.send_multipart([PROTOCOL])
            s.send_multipart([b"\x00" * 5000, b"", b"junk"])
            s.send_multipart([PROTOCOL, b"x" * 32, b"\x81\xa4type\xa3run"])  # the old 3-frame form
            # A well-formed message signed with the wrong key.
            s.send_multipart(Wire(b"wrong-key" * 4).encode({"type": "submit", "req": 1}))
            assert s.poll(500) == 0, "the controller answered an unsigned message"
            s.close()
    finally:
        ctx.term()
    refused = wait_refused(client, "bad-signature", before.get("bad-signature", 0) + 4,
                           timeout=20.0)
    assert refused.get("malformed", 0) >= before.get("malformed", 0) + 4
    assert client.run(MapTask(pow, (2, 10)), block=True) == 1024


def test_signed_nonsense_gets_a_clear_error(cluster, client):
    """A correctly signed request with bad contents is answered with an error, not acted on."""
    from taskmill import TaskError

    conn = client.backend.connection
    for header in ({"type": "submit", "tasks": "nope"}, {"type": "no-such-verb"},
                   {"type": "submit", "tasks": [{"nodes": [{"exec": {"kind": "evil"}}]}]},
                   {"type": "result", "tids": ["x"]},
                   # a timeout no engine can arm (it once ended the engine that got it)
                   {"type": "submit", "tasks": [{"nodes": [{"exec": {"kind": "map"},
                                                            "timeout": 1e10}]}]},
                   # fields dispatch relies on, missing or of the wrong type (such a task was
                   # once stored, and its dispatch failed half done: the engine never got it)
                   {"type": "submit", "tasks": [{"nodes": [{"exec": {"kind": "map"},
                                                            "nframes": 0}]}]},
                   {"type": "submit", "tasks": [{"nodes": [{"exec": {"kind": "string",
                                                                     "expression": 3}}]}]},
                   {"type": "submit", "tasks": [{"nodes": [{"exec": {"kind": "string",
                                                                     "expression": "x = 1",
                                                                     "clear_after": "yes"}}]}]}):
        try:
            conn.call(header)
        except TaskError as e:
            assert "bad" in str(e) or "unknown" in str(e)
        else:
            raise AssertionError(f"{header} was accepted")
    # Payload frames without the pmac that covers them.
    spec, frames = client.backend.encode(MapTask(abs, (-3,)))
    del spec["nodes"][0]["pmac"]
    with pytest.raises(TaskError, match="pmac"):
        conn.call({"type": "submit", "tasks": [spec]}, frames)
    before = client.queue_status()
    assert client.run(MapTask(abs, (-3,)), block=True) == 3
    assert client.queue_status()["scheduled"] == before["scheduled"] == 0


def test_a_flood_of_refused_messages_is_logged_once_per_peer(cluster, client):
    info = read_connection_file(cluster.connection_file)
    ident = b"flood-peer-7c1e"
    before = client.statistics()["refused"].get("bad-signature", 0)
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, ident)
        s.connect(info.client_url)
        for i in range(200):
            s.send_multipart(Wire(b"wrong-key" * 4).encode({"type": "ping", "req": i}))
        # Keep the socket open until all 200 have arrived (LINGER 0 would drop the unsent).
        wait_refused(client, "bad-signature", before + 200, timeout=20.0)
        s.close()
    finally:
        ctx.term()
    lines = [ln for ln in cluster.log_tail("controller", 100_000).splitlines()
             if "flood-peer-7c1e" in ln]
    assert len(lines) == 1, lines
