"""The controller reads every message through its typed record (taskmill.protocol), refuses what
does not fit as it refuses any bad message, and stores result metadata of the documented shape.

Driven in process: messages straight into the controller's core, replies read from its flush.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import msgspec
import pytest
from testhelp import core_controller, inject

from taskmill.client import steps
from taskmill.client.codec import checked, encode_task, submit_header
from taskmill.client.futures import TaskFuture
from taskmill.client.objects import put_request
from taskmill.client.submitter import SubmitStream, Submitter
from taskmill.controller import Now
from taskmill.controller.outbox import ENGINE
from taskmill.errors import TaskError
from taskmill.protocol import (
    CLIENT_RECORDS,
    ENGINE_RECORDS,
    REPLY_RECORDS,
    REQUEST_TYPES,
    Ack,
    Bye,
    Clear,
    EngineExited,
    HbAnswer,
    Heartbeat,
    Hello,
    Lease,
    MapExec,
    NodeSpec,
    Ping,
    ProtocolError,
    Refusal,
    Register,
    Registered,
    Release,
    ResultMeta,
    ResultQuery,
    Results,
    Retired,
    Revoked,
    Statistics,
    StringExec,
    Submit,
    Tasks,
    TaskSpec,
    Wait,
    Watch,
    client_record,
    engine_record,
    from_controller,
    from_done,
    from_reply,
    node_rules,
    to_controller,
    to_request,
)
from taskmill.task import MapTask, StringTask
from taskmill.wire import Wire

FRAMES = [b"function", b"arguments"]


def now() -> Now:
    return Now(time.monotonic(), time.time())


@pytest.fixture
def ctl():
    with core_controller(heartbeat=3600.0) as c:
        yield c


def node(**fields) -> dict:
    return {"exec": {"kind": "map", "fn": 1}, "nframes": 2, "pmac": b"m" * 32, **fields}


def call(ctl, header: dict, frames=()) -> dict:
    """A client request; its reply (after the turn's flush)."""
    req = header.setdefault("req", id(header))
    out = ctl.last_out = inject(ctl, False, b"client-1", header, frames)
    (reply,) = [h for _, _, h, _ in out if h.get("type") == "reply" and h.get("req") == req]
    return reply


def from_engine(ctl, ident: bytes, header: dict, frames=()) -> list:
    return inject(ctl, True, ident, header, frames)


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


# -- the client side of the wire: replies, done messages, and the requests a client builds ---

def watch(ctl, tids: list[int]) -> list[dict]:
    """A client's watch: the `done` messages of the turn (a watch has no other answer)."""
    out = inject(ctl, False, b"client-1", {"type": "watch", "tids": tids, "req": 77})
    return [h for _, _, h, _ in out
            if h is not None and h.get("type") == "done" and h.get("req") == 77]


def reads_back(verb: str, reply: dict):
    """The reply read into its record as the client reads it, which must not be a refusal."""
    record = from_reply(verb, reply)
    assert type(record) is REPLY_RECORDS[verb], (verb, reply)
    return record


def test_every_verb_has_its_reply_record():
    assert set(REPLY_RECORDS) == set(CLIENT_RECORDS) - {"ack", "bye"}  # (those get none)
    assert set(REQUEST_TYPES.values()) == set(CLIENT_RECORDS)


def test_every_reply_the_controller_builds_reads_back_into_its_record(ctl):
    ident = register(ctl)
    hello = reads_back("hello", call(ctl, {"type": "hello"}))
    assert hello.engines == 1 and hello.max_message == ctl.wire.max_message
    reads_back("ping", call(ctl, {"type": "ping"}))
    # A watching submit: its taskids, then a done message once its task finishes.
    watching = {"type": "submit", "watch": True, "tasks": [{"nodes": [node()]}]}
    (tid,) = reads_back("submit", call(ctl, watching, FRAMES)).tids
    (task,) = [t for _, _, h, _ in ctl.last_out if h.get("type") == "tasks" for t in h["tasks"]]
    out = from_engine(ctl, ident, {"type": "results", "results": [
        {"tid": tid, "attempt": task["attempt"], "kind": "map", "status": "ok", "n": 1,
         "duration": 0.5, "stdout": "out", "stderr": "", "pmac": b"p" * 32}]}, [b"value"])
    ((header, frames),) = [(h, f) for _, _, h, f in out if h and h.get("type") == "done"]
    (entry,) = from_done(header).results
    assert (entry.tid, entry.status, entry.nframes, entry.stdout, entry.engineid) == (
        tid, "ok", 1, "out", 0) and frames == [b"value"] and entry.error is None
    # result (one finished, one unknown), wait (with results up to its budget), watch.
    result = reads_back("result", call(ctl, {"type": "result", "tids": [tid, 10**9]}))
    assert [(e.tid, e.status, e.unknown) for e in result.results] == [
        (tid, "ok", False), (10**9, "", True)] and not result.more
    waited = reads_back("wait", call(ctl, {"type": "wait", "tids": [tid], "budget": 10**6}))
    assert [e.tid for e in waited.results] == [tid]
    assert [e.tid for h in watch(ctl, [tid]) for e in from_done(h).results] == [tid]
    # A failure the controller writes itself: its error reads back as an ErrorInfo.
    late = call(ctl, {"type": "submit", "tasks": [{"nodes": [node()]}]}, FRAMES)["tids"][0]
    assert reads_back("abort", call(ctl, {"type": "abort", "tid": late})).status == "aborted"
    (failed,) = reads_back("result", call(ctl, {"type": "result", "tids": [late]})).results
    assert failed.status == "aborted" and failed.error.type == "TaskAborted"
    assert failed.error.controller
    assert reads_back("abort", call(ctl, {"type": "abort", "tid": tid})).status == "finished"
    assert reads_back("abort", call(ctl, {"type": "abort", "tid": 10**9})).status == "unknown"
    # Leases, put, the views, retire, clear.
    lease = reads_back("lease", call(ctl, {"type": "lease", "n": 4}))
    assert lease.n == 4
    leased = call(ctl, {"type": "submit", "tids": [lease.start],
                        "tasks": [{"nodes": [node()]}]}, FRAMES)
    assert reads_back("submit", leased).tids == [lease.start]
    reads_back("release", call(ctl, {"type": "release"}))
    (put,) = reads_back("put", call(ctl, {"type": "put", "pmac": b"m" * 32}, [b"x"])).tids
    assert isinstance(reads_back("spin", call(ctl, {"type": "spin"})).dispatched, bool)
    status = reads_back("status", call(ctl, {"type": "status", "verbose": True})).status.as_map()
    assert {"scheduled", "pending"} <= set(status)
    stats = reads_back("stats", call(ctl, {"type": "stats"})).stats
    assert isinstance(stats, Statistics) and stats.submitted == 4
    info = reads_back("task", call(ctl, {"type": "task", "tid": tid})).task.as_map()
    assert info["state"] == "succeeded" and info["story"]
    assert reads_back("activity", call(ctl, {"type": "activity"})).activity.seq >= 1
    (row,) = reads_back("engines", call(ctl, {"type": "engines"})).engines
    assert (row.engineid, row.hostname) == (0, "host") and row.state in ("idle", "busy")
    reads_back("engine_exited", call(ctl, {"type": "engine_exited", "pid": 1, "status": 0}))
    assert reads_back("retire", call(ctl, {"type": "retire", "engines": [0, 7]})).retiring == [0]
    cleared = reads_back("clear", call(ctl, {"type": "clear", "tids": [tid, put, 10**9]}))
    assert (cleared.dropped, cleared.missing) == (2, [10**9])


def test_a_refusal_reads_back_as_one_and_is_raised_as_its_error(ctl):
    refused = [call(ctl, {"type": "no-such-verb"}),
               call(ctl, {"type": "abort", "tid": "1"}),
               call(ctl, {"type": "spin", "session": b"an earlier session"})]
    records = [from_reply("abort", r) for r in refused]
    assert all(type(r) is Refusal for r in records)
    assert records[0].error == "unknown request type 'no-such-verb'"
    assert records[1].error.startswith("bad abort request: ")
    assert records[2].error_type == "session"
    with pytest.raises(TaskError, match="bad abort request"):
        checked(refused[1])


@pytest.mark.parametrize("verb, header, field", [
    ("submit", {"type": "reply", "ok": True}, "`tids`"),  # missing
    ("submit", {"type": "reply", "ok": True, "tids": [1, "2"]}, r"\$\.tids\[1\]"),
    ("lease", {"type": "reply", "ok": True, "start": 3}, "`n`"),
    ("result", {"type": "reply", "ok": True, "results": [{"tid": 1, "nframes": -1}]},
     r"\$\.results\[0\]\.nframes"),
    ("result", {"type": "reply", "ok": True, "results": [
        {"tid": 1, "status": "error", "error": {"type": "E"}}]}, "`message`"),
    ("abort", {"type": "reply", "ok": True, "status": "gone"}, r"\$\.status"),
    ("clear", {"type": "reply", "ok": True, "dropped": 1}, "`missing`"),
    ("stats", {"type": "reply", "ok": True, "stats": {"time": 1.0}}, r"\$\.stats"),
    ("engines", {"type": "reply", "ok": True, "engines": {}}, r"\$\.engines"),
    ("engines", {"type": "reply", "ok": True, "engines": [{"engineid": 1}]}, "`hostname`"),
    ("spin", {"type": "reply", "ok": False}, "`error`"),  # a refusal without its reason
])
def test_a_reply_that_does_not_fit_its_record_is_refused_naming_the_field(verb, header, field):
    with pytest.raises(ProtocolError, match=field) as e:
        from_reply(verb, header)
    assert f"a {verb} request" in str(e.value) and "same taskmill version" in str(e.value)


def test_a_done_message_that_does_not_fit_is_refused():
    with pytest.raises(ProtocolError, match=r"done message.*\$\.results\[0\]\.tid"):
        from_done({"type": "done", "results": [{"tid": "7", "nframes": 0}]})
    with pytest.raises(ProtocolError, match="`results`"):
        from_done({"type": "done"})


def test_an_unfit_reply_reaches_the_caller_as_the_protocol_error():
    """A blocking verb raises it where it asked; futures it was for fail with it (none is left
    waiting), never a KeyError deep in a verb."""
    with pytest.raises(ProtocolError, match="`dispatched`"):
        steps.spin().answer({"type": "reply", "ok": True}, [])
    with pytest.raises(ProtocolError, match=r"\$\.retiring"):
        steps.retire_engines([1]).answer({"type": "reply", "ok": True, "retiring": "1"}, [])
    owner = SimpleNamespace(front=lambda: None, connection=SimpleNamespace(
        timeout=1.0, reconnect_timeout=1.0, on_io_thread=lambda: True, max_message=10**6))
    futs = [TaskFuture(owner), TaskFuture(owner)]
    stream = SubmitStream(Submitter(owner.connection), futs)
    assert not stream.on_message({"type": "reply", "ok": True, "tids": [1, 2]}, [])
    assert stream.on_message({"type": "done", "results": [{"tid": 1, "nframes": "1"}]}, [])
    for f in futs:
        with pytest.raises(ProtocolError, match=r"\$\.results\[0\]\.nframes"):
            f.result(timeout=1)
    unanswered = [TaskFuture(owner)]
    stream = SubmitStream(Submitter(owner.connection), unanswered)
    assert stream.on_message({"type": "reply", "ok": True, "tids": ["x"]}, [])
    with pytest.raises(ProtocolError, match=r"\$\.tids\[0\]"):
        print(unanswered[0].taskid)


def sent_subset(sent, read) -> None:
    """Every field the client sent is a field of the record, read back with the same value."""
    if isinstance(sent, dict):
        for key, value in sent.items():
            assert key in read, key
            sent_subset(value, read[key])
    elif isinstance(sent, list):
        assert len(sent) == len(read)
        for a, b in zip(sent, read, strict=True):
            sent_subset(a, b)
    else:
        assert sent == read, (sent, read)


def test_what_the_client_builds_the_controller_reads_back_equal():
    wire = Wire(b"k" * 32)
    enc = [encode_task(MapTask(len, [1, 2], retries=2, timeout=5.0, after=[4],
                               depend={"gpu": 1}), wire),
           encode_task(StringTask("x = 1", pull=["x"]), wire)]
    requests = [
        submit_header(enc)[0], steps.spin().header, steps.queue_status(True).header,
        steps.engines().header, steps.retire_engines([1, 2]).header,
        steps.statistics().header, steps.activity(3).header, steps.task_info(5).header,
        steps.abort(5).header, put_request(b"value", wire, 10**6)[0].header,
        to_request(Watch([1, 2])), to_request(Wait([1], 100)), to_request(Lease(16)),
        to_request(Release()), to_request(ResultQuery([1], True)), to_request(Clear(None)),
        to_request(Submit([[*enc[0]][0]], watch=True, tids=[9], release=True)),
        to_request(EngineExited(12, -9)), to_request(Hello()), to_request(Ping()),
        to_request(Ack(5, lost=True)), to_request(Bye()),
    ]
    assert {h["type"] for h in requests} == set(CLIENT_RECORDS)
    receiver = Wire(b"k" * 32)
    for sent in requests:  # (as the controller gets it: a submit's specs go in spliced)
        header = {k: v for k, v in receiver.decode(wire.encode(sent))[0].items()
                  if k not in ("sid", "seq")}
        record = client_record(header["type"], header)
        read = msgspec.to_builtins(record, builtin_types=(bytes,))
        sent_subset({k: v for k, v in header.items() if k != "type"}, read)
    submit = client_record("submit", receiver.decode(wire.encode(submit_header(enc)[0]))[0])
    assert submit.tasks[0].nodes[0].retries == 2 and submit.tasks[0].after == [4]
    assert submit.tasks[1].nodes[0].exec == StringExec("x = 1", ["x"])
    pos = 0
    for task in submit.tasks:
        for n in task.nodes:
            node_rules(task, n, pos, sum(len(e.frames) for e in enc))
            pos += n.nframes + n.dframes
