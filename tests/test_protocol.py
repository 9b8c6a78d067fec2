"""The controller reads every message through its typed record (taskmill.protocol), refuses what
does not fit as it refuses any bad message, and stores result metadata of the documented shape.

Driven in process: messages straight into the controller's core, replies read from its flush.
"""

from __future__ import annotations

import math
import time

import msgspec
import pytest

from taskmill.connection import new_connection_info
from taskmill.controller import Controller, Now
from taskmill.controller.outbox import ENGINE
from taskmill.protocol import (
    CLIENT_RECORDS,
    ENGINE_RECORDS,
    HbAnswer,
    Heartbeat,
    MapExec,
    NodeSpec,
    ProtocolError,
    Register,
    Registered,
    ResultMeta,
    Results,
    Retired,
    Revoked,
    Statistics,
    Submit,
    Tasks,
    TaskSpec,
    engine_record,
    from_controller,
    node_rules,
    to_controller,
)
from taskmill.store import MemoryStore
from taskmill.wire import Wire

FRAMES = [b"function", b"arguments"]


def now() -> Now:
    return Now(time.monotonic(), time.time())


@pytest.fixture
def ctl():
    info = new_connection_info()
    c = Controller(info, store=MemoryStore(), heartbeat=3600.0)
    c.test_wires = (Wire(info.key_bytes), Wire(info.key_bytes))  # client, engine
    try:
        yield c
    finally:
        c.close()


def node(**fields) -> dict:
    return {"exec": {"kind": "map", "fn": 1}, "nframes": 2, "pmac": b"m" * 32, **fields}


def call(ctl, header: dict, frames=()) -> dict:
    """A client request; its reply (after the turn's flush)."""
    req = header.setdefault("req", id(header))
    header.setdefault("session", ctl.session)
    h, f = ctl.wire.decode(ctl.test_wires[0].encode(header, list(frames)))
    ctl.core.on_client(b"client-1", h, f, now())
    out = ctl.last_out = ctl.core.flush(now())
    (reply,) = [h for _, _, h, _ in out if h.get("type") == "reply" and h.get("req") == req]
    return reply


def from_engine(ctl, ident: bytes, header: dict, frames=()) -> list:
    header.setdefault("session", ctl.session)
    h, f = ctl.wire.decode(ctl.test_wires[1].encode(header, list(frames)))
    ctl.core.on_engine(ident, h, f, now())
    return ctl.core.flush(now())


def register(ctl, uuid: str = "engine-a") -> bytes:
    from_engine(ctl, f"{uuid}.t".encode(), {
        "type": "register", "uuid": uuid, "ctl_ident": f"{uuid}.c".encode(),
        "res_ident": f"{uuid}.r".encode(), "heart_ident": f"{uuid}.h".encode(),
        "hostname": "host", "pid": 4242, "t": 0.0})
    return f"{uuid}.r".encode()


def test_every_verb_has_its_record(ctl):
    assert set(CLIENT_RECORDS) == set(ctl.core.client_verbs)
    assert set(ENGINE_RECORDS) == set(ctl.core.engine_verbs) | {"register"}


@pytest.mark.parametrize("header", [
    {"type": "submit", "tasks": [{"nodes": [node(timeout=math.nan)]}]},
    {"type": "submit", "tasks": [{"nodes": [node(retries=True)]}]},
    {"type": "submit", "tasks": [{"nodes": [node(recovery=1)]}]},  # beyond the task's nodes
    {"type": "submit", "tasks": [{"nodes": [node(exec={"kind": "map", "fn": 3})]}]},
    {"type": "submit", "tasks": [{"nodes": [node(depend="callable")]}]},  # no dpmac
    {"type": "submit", "tasks": [{"nodes": [node()], "after": [1, "2"]}]},
    {"type": "abort", "tid": True},
    {"type": "task", "tid": 1.0},
    {"type": "activity", "since": -1},
    {"type": "clear", "tids": [1, None]},
    {"type": "engine_exited", "pid": 12, "status": "9"},
])
def test_a_header_that_does_not_fit_its_record_is_refused(ctl, header):
    before = ctl.wire.refused["bad-request"]
    reply = call(ctl, header, FRAMES if header["type"] == "submit" else ())
    assert not reply["ok"] and reply["error"].startswith(f"bad {header['type']} request: ")
    assert ctl.wire.refused["bad-request"] == before + 1
    assert ctl.counters.submitted == 0


def test_every_message_the_controller_sends_an_engine_reads_back_into_its_record(ctl):
    """The controller builds its messages to engines from records (protocol.to_engine) and the
    engine reads each back (from_controller): a registration, tasks, a heartbeat's answer, an
    abort (interrupt), and a heartbeat from an engine it does not know (reregister)."""
    out = from_engine(ctl, b"engine-a.t", {
        "type": "register", "uuid": "engine-a", "ctl_ident": b"engine-a.c",
        "res_ident": b"engine-a.r", "heart_ident": b"engine-a.h", "hostname": "host",
        "pid": 4242, "t": 0.0})
    out += from_engine(ctl, b"engine-a.t", {"type": "hello"})
    out += from_engine(ctl, b"engine-b.t", {"type": "register", "uuid": "b"}, ())  # malformed
    call(ctl, {"type": "submit", "tasks": [{"nodes": [node()]}]}, FRAMES)
    out += ctl.last_out
    tid = [h for *_, h, _ in ctl.last_out if h.get("type") == "reply"][0]["tids"][0]
    out += from_engine(ctl, b"engine-a.c", {"type": "hb", "t": 1.0, "held": [[tid, 1]],
                                            "current": [tid, 1], "mseq": 1})
    call(ctl, {"type": "abort", "tid": tid})
    out += ctl.last_out
    out += from_engine(ctl, b"stranger.c", {"type": "hb", "gen": 3})
    to_engines = [h for kind, _, h, _ in out if kind == ENGINE and h is not None]
    read = [from_controller(h) for h in to_engines]
    kinds = {type(r).__name__ for r in read}
    assert {"Registered", "Welcome", "Tasks", "HbAnswer", "InterruptTask", "Reregister"} <= kinds
    reg = next(r for r in read if isinstance(r, Registered))
    assert reg.engineid >= 0 and reg.session == ctl.session and reg.max_message > 0
    tasks = next(r for r in read if isinstance(r, Tasks) and r.tasks)
    assert tasks.tasks[0]["tid"] == tid and tasks.mseq == 1
    hb = next(r for r in read if isinstance(r, HbAnswer))
    assert hb.t == 1.0 and not hb.retire


@pytest.mark.parametrize("header", [
    {"type": "registered", "session": b"s", "engineid": -1, "heartbeat": 1.0,
     "dead_after": 3.0, "max_message": 10},
    {"type": "registered", "session": b"s", "engineid": 1, "heartbeat": 0.0,
     "dead_after": 3.0, "max_message": 10},
    {"type": "hb", "session": b"s", "ack": [["1", 2]]},
    {"type": "hb", "session": "not bytes"},
    {"type": "tasks", "session": b"s", "engineid": 0, "mseq": -2, "tasks": []},
    {"type": "revoke", "session": b"s", "tid": 1, "attempt": 1},  # no dseq
    {"type": "interrupt", "session": b"s", "tid": 1, "attempt": "1", "reason": "aborted"},
])
def test_a_message_to_an_engine_that_does_not_fit_its_record_is_refused(header):
    with pytest.raises(msgspec.ValidationError):
        from_controller(header)
    with pytest.raises(KeyError):
        from_controller({"type": "no-such-message", "session": b"s"})


def test_what_an_engine_builds_the_controller_reads_back():
    """An engine builds its messages from the controller's records (protocol.to_controller)."""
    sent = [Register("u", b"c", b"r", b"h", "host", 7, {"gpu": 1}, [3, 1], [[2, 1]], 0.5),
            Heartbeat(held=[[3, 1]], unacked=[[2, 1]], current=[3, 1], mseq=4, missing=[2],
                      t=1.5, gen=2),
            Results([{"tid": 3, "attempt": 1, "status": "ok"}]), Revoked(3, 1, True), Retired()]
    for record in sent:
        header = to_controller(record, b"session")
        assert header["session"] == b"session"
        assert engine_record(header["type"], header) == record


def test_rules_a_type_cannot_state():
    task = TaskSpec(nodes=[NodeSpec(exec=MapExec(fn=1), nframes=1, pmac=b"m")])
    node_rules(task, task.nodes[0], 0, 1)
    with pytest.raises(ProtocolError, match="more payload frames"):
        node_rules(task, task.nodes[0], 1, 1)
    bare = TaskSpec(nodes=[NodeSpec(exec=MapExec(fn=1), nframes=1)])
    with pytest.raises(ProtocolError, match="pmac"):
        node_rules(bare, bare.nodes[0], 0, 1)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"tasks": []}, Submit)
    # A node takes as arguments only results of tasks the task waits for (arguments.py).
    takes = TaskSpec(nodes=[NodeSpec(exec=MapExec(fn=1), nframes=1, pmac=b"m",
                                     args_from=[3])], after=[3])
    node_rules(takes, takes.nodes[0], 0, 1)
    unwaited = TaskSpec(nodes=[NodeSpec(exec=MapExec(fn=1), nframes=1, pmac=b"m",
                                        args_from=[3])], after=[])
    with pytest.raises(ProtocolError, match="args_from"):
        node_rules(unwaited, unwaited.nodes[0], 0, 1)


def test_a_results_entry_that_does_not_fit_its_record_refuses_the_rest_of_the_message(ctl):
    ident = register(ctl)
    (rec,) = ctl.engines.values()
    before = ctl.wire.refused["bad-engine-message"]
    from_engine(ctl, ident, {"type": "results", "results": [
        {"tid": 1, "attempt": 1, "status": "ok"}, {"tid": "2", "attempt": 1, "status": "ok"},
        {"tid": 3, "attempt": 1, "status": "ok"}]})
    assert ctl.wire.refused["bad-engine-message"] == before + 1
    assert rec.ackable == [[1, 1]]  # the entry before the malformed one was taken
    from_engine(ctl, ident, {"type": "results", "results": [
        {"tid": 4, "attempt": 1, "status": "ok", "n": 1}]})  # a frame it does not carry
    assert ctl.wire.refused["bad-engine-message"] == before + 2
    # An engine's properties keep the keys it set (not only str).
    from_engine(ctl, ident, {"type": "results", "results": [
        {"tid": 5, "attempt": 1, "status": "ok", "properties": {1: "one"}}]})
    assert ctl.wire.refused["bad-engine-message"] == before + 2


def test_stored_metadata_has_the_shape_of_ResultMeta(ctl):
    ident = register(ctl)
    done = call(ctl, {"type": "submit", "tasks": [{"nodes": [node()]}]}, FRAMES)
    (tid,) = done["tids"]
    (task,) = [t for _, _, h, _ in ctl.last_out if h.get("type") == "tasks" for t in h["tasks"]]
    assert task["tid"] == tid and task["exec"]["kind"] == "map"
    from_engine(ctl, ident, {"type": "results", "results": [
        {"tid": tid, "attempt": task["attempt"], "kind": "map", "status": "ok", "n": 1,
         "duration": 0.5, "stdout": "out", "stderr": "", "pmac": b"p" * 32}]}, [b"value"])
    meta = msgspec.convert(ctl.store.result(tid).meta, ResultMeta)
    assert (meta.status, meta.duration, meta.stdout, meta.error) == ("ok", 0.5, "out", None)
    assert meta.engineid == 0 and meta.attempts == 1 and meta.started is not None

    # Written by the controller itself: an aborted task (queued or dispatched, the abort
    # finishes it).
    late = call(ctl, {"type": "submit", "tasks": [{"nodes": [node()]}]}, FRAMES)["tids"][0]
    assert call(ctl, {"type": "abort", "tid": late})["ok"]
    meta = msgspec.convert(ctl.store.result(late).meta, ResultMeta)
    assert meta.status == "aborted" and meta.error is not None
    assert meta.error.type == "TaskAborted" and meta.error.controller


def test_statistics_is_the_Statistics_record_as_a_plain_map(ctl):
    register(ctl)
    call(ctl, {"type": "submit", "tasks": [{"nodes": [node()]}]}, FRAMES)
    stats = call(ctl, {"type": "stats"})["stats"]
    assert type(stats) is dict and list(stats) == list(Statistics.__struct_fields__)
    record = msgspec.convert(stats, Statistics)
    assert record.submitted == 1 and len(record.engines) == 1
    assert record.as_map() == stats
