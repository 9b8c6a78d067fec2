"""The controller's views travel as typed records (taskmill.protocol.views): the queue status,
one task's info, the recent activity and the statistics' engine rows are built as records,
read back into them by the client (refusing a payload that does not fit, naming the field),
and handed to users as the plain maps they always were.

Driven in process, as tests/test_protocol.py drives the controller's core.
"""

from __future__ import annotations

import pytest
from test_protocol import (
    FRAMES,
    call,
    ctl,  # noqa: F401 - a fixture
    from_engine,
    node,
    register,
)

import taskmill.protocol as protocol
from taskmill.client import steps
from taskmill.protocol import ProtocolError, from_reply


def read(verb: str, reply: dict):
    record = from_reply(verb, reply)
    assert type(record) is protocol.REPLY_RECORDS[verb], (verb, reply)
    return record


def tasks_sent(c) -> dict[int, dict]:
    return {t["tid"]: t for _, _, h, _ in c.last_out if h and h.get("type") == "tasks"
            for t in h["tasks"]}


def busy_controller(c) -> dict[str, int]:
    """An engine, a task that succeeded, one that failed on the engine, one running, one
    aborted while queued, one queued: the taskids by what became of them."""
    ident = register(c)
    ok = call(c, {"type": "submit", "tasks": [{"nodes": [node()]}]}, FRAMES)["tids"][0]
    attempt = tasks_sent(c)[ok]["attempt"]
    from_engine(c, ident, {"type": "results", "results": [
        {"tid": ok, "attempt": attempt, "status": "ok", "duration": 0.25, "stdout": "out"}]})
    failed = call(c, {"type": "submit", "tasks": [{"nodes": [node()]}]}, FRAMES)["tids"][0]
    attempt = tasks_sent(c)[failed]["attempt"]
    from_engine(c, ident, {"type": "results", "results": [
        {"tid": failed, "attempt": attempt, "status": "error", "duration": 0.5, "error": {
            "type": "ValueError", "module": "builtins", "message": "boom",
            "traceback": "Traceback ...", "pickled": False}}]})
    running = call(c, {"type": "submit", "tasks": [{"nodes": [node()]}]}, FRAMES)["tids"][0]
    assert running in tasks_sent(c)
    tids = call(c, {"type": "submit", "tasks": [{"nodes": [node()]}] * 2}, FRAMES * 2)["tids"]
    aborted, queued = tids
    assert call(c, {"type": "abort", "tid": aborted})["ok"]
    return {"ok": ok, "failed": failed, "running": running, "aborted": aborted,
            "queued": queued}


def as_sent(payload):
    """A payload as the client's user gets it: what the controller sent, tuples as lists."""
    if isinstance(payload, dict):
        return {k: as_sent(v) for k, v in payload.items()}
    if isinstance(payload, list | tuple):
        return [as_sent(v) for v in payload]
    return payload


def test_each_view_reads_back_into_its_record_and_gives_users_the_map_it_was_sent_as(
        ctl):  # noqa: F811 - the fixture
    tids = busy_controller(ctl)
    # queue_status: counts, or (verbose) taskids.
    reply = call(ctl, {"type": "status"})
    status = read("status", reply).status
    assert type(status) is protocol.QueueStatus
    assert (status.scheduled, status.pending, status.succeeded, status.failed) >= (1, 1, 1, 2)
    assert steps.queue_status(False).answer(reply, []) == reply["status"]
    verbose = read("status", call(ctl, {"type": "status", "verbose": True})).status
    assert tids["queued"] in verbose.scheduled and tids["running"] in verbose.pending
    assert set(verbose.failed) == {tids["failed"], tids["aborted"]}

    # task_info: one record a state, each with only its own fields.
    kinds = {"ok": protocol.TaskSucceeded, "failed": protocol.TaskFailed,
             "aborted": protocol.TaskFailed, "running": protocol.TaskPending,
             "queued": protocol.TaskScheduled}
    for what, tid in tids.items():
        reply = call(ctl, {"type": "task", "tid": tid})
        info = read("task", reply).task
        assert type(info) is kinds[what] and info.tid == tid, what
        assert info.state == reply["task"]["state"]
        assert info.story and all(type(e) is protocol.StoryEntry for e in info.story)
        assert steps.task_info(tid).answer(reply, []) == reply["task"] == info.as_map()
    failed = read("task", call(ctl, {"type": "task", "tid": tids["failed"]})).task
    assert failed.error == {"type": "ValueError", "module": "builtins", "message": "boom",
                            "traceback": "Traceback ...", "pickled": False}  # as stored
    assert failed.story[-1].before == "running" and failed.story[-1].to == "finished"
    aborted = read("task", call(ctl, {"type": "task", "tid": tids["aborted"]})).task
    assert aborted.error["type"] == "TaskAborted" and aborted.error["controller"]
    unknown = call(ctl, {"type": "task", "tid": 10**9})
    assert read("task", unknown).task == protocol.TaskUnknown(10**9)
    assert steps.task_info(10**9).answer(unknown, []) == {"tid": 10**9, "state": "unknown"}

    # activity: attempts, open attempts, latest failures, per-second series.
    reply = call(ctl, {"type": "activity"})
    activity = read("activity", reply).activity
    assert type(activity) is protocol.ActivitySnapshot
    assert {(a.tid, a.status) for a in activity.attempts} >= {(tids["ok"], "ok"),
                                                               (tids["failed"], "error")}
    assert [a.tid for a in activity.running] == [tids["running"]]
    assert all(type(a) is protocol.AttemptRow for a in activity.attempts + activity.running)
    assert {f.tid: f.type for f in activity.failures} == {tids["failed"]: "ValueError",
                                                           tids["aborted"]: "TaskAborted"}
    # (three finished: in the same second, or across a second's end)
    assert sum(n for _, n in activity.finished_per_second) == 3
    assert steps.activity(0).answer(reply, []) == as_sent(reply["activity"])

    # statistics: its queue, its engine rows, its histogram.
    reply = call(ctl, {"type": "stats"})
    stats = read("stats", reply).stats
    (engine,) = stats.engines
    assert type(engine) is protocol.EngineStats and type(stats.queue) is protocol.QueueStatus
    assert (engine.engineid, engine.current_task, engine.held) == (
        0, tids["running"], [tids["running"]])
    assert engine.state == "busy" and engine.tasks_done == 2 and engine.last_heartbeat_ago >= 0
    assert type(stats.durations) is protocol.Durations and stats.durations.count == 2
    public = steps.statistics().answer(reply, [])
    assert public == as_sent(reply["stats"]) and type(public["engines"][0]) is dict


def test_the_views_the_controller_builds_are_records():
    """Where each view is made it is built as its record (a misspelt field fails there)."""
    from taskmill.stats import RecentActivity

    activity = RecentActivity(100.0)
    activity.dispatched(1, 0, 1, 101.0)
    activity.attempt_ended(1, 0, 1, "ok", 102.0)
    activity.finished(2, "error", 102.5, error={"type": "E", "message": "m"})
    snap = activity.record(103.0)
    assert type(snap) is protocol.ActivitySnapshot
    assert [type(a) for a in snap.attempts] == [protocol.AttemptRow]
    assert [type(f) for f in snap.failures] == [protocol.FailureRow]
    assert snap.as_map() == activity.snapshot(103.0)
    assert type(activity.durations.record()) is protocol.Durations


def queue(**fields) -> dict:
    return {"scheduled": 1, "pending": 0, "succeeded": 2, "failed": 0, **fields}


def story(**fields) -> list[dict]:
    return [{"event": "dispatched", "from": "ready", "to": "running", "why": "", **fields}]


def pending(**fields) -> dict:
    return {"state": "pending", "tid": 3, "engineid": 0, "attempts": 1, "submitted": 1.0,
            "started": 2.0, "kind": "map", "story": story(), **fields}


def succeeded(**fields) -> dict:
    return {"state": "succeeded", "tid": 3, "engineid": 0, "attempts": 1, "submitted": 1.0,
            "completed": 3.0, "started": 2.0, "status": "ok", "kind": "map",
            "duration": 1.0, "stdout": "", "stderr": "", "error": None, "story": [],
            **fields}


def attempt(**fields) -> dict:
    return {"seq": 1, "tid": 3, "engineid": 0, "attempt": 1, "start": 1.0, "end": 2.0,
            "status": "ok", **fields}


def activity(**fields) -> dict:
    return {"time": 5.0, "started": 1.0, "seq": 1, "attempts": [attempt()], "running": [],
            "failures": [], "finished_per_second": [[4, 1]], "queue_per_second": [[4, 0, 0]],
            **fields}


def engine(**fields) -> dict:
    return {"engineid": 0, "hostname": "h", "pid": 1, "properties": None, "state": "busy",
            "tasks_done": 0, "failures": 0, "capacity": 2, "idle_since": None, "left": False,
            "current_task": 3, "held": [3], "last_heartbeat_ago": 0.5, **fields}


def stats(**fields) -> dict:
    return {"time": 5.0, "uptime": 4.0, "messages_in": 1, "messages_out": 1, "submitted": 1,
            "finished": 0, "engines_died": 0, "engines_retired": 0, "engines_moved": 0,
            "tasks_lost_in_transit": 0, "argument_bytes_out": 0, "refused": {},
            "revokes_sent": 0, "revokes_granted": 0, "queue": queue(), "engines": [engine()],
            "tasks_per_second": 0.0, "durations": {"buckets": [[None, 0]], "sum": 0.0,
                                                   "count": 0},
            "results_in_flight_to_clients": 0, "result_bytes_in_flight_to_clients": 0,
            "results_held_for_clients": 0, "results_in_memory_for_clients": 0,
            "results_sent_again_to_clients": 0, "results_read_back_for_clients": 0,
            "clients_watching": 0, "clients": 1,
            "clients_forgotten": 0, "requests_waiting": 0, "backlog": 0, "queued_in_memory": 1,
            "queue_window": None, "payload_bytes_in_memory": 0, "queue_window_bytes": None,
            "heartbeats_unanswered": 0,
            "answers_given_again": 0, "store_commits_failed": 0, "store_problem": None,
            "store_down_for": None, **fields}


GOOD = [("status", {"status": queue()}), ("status", {"status": queue(failed=[1, 2])}),
        ("task", {"task": pending()}), ("task", {"task": succeeded()}),
        ("task", {"task": {"state": "unknown", "tid": 3}}), ("activity", {"activity": activity()}),
        ("stats", {"stats": stats()})]


KEPT_AS_MAPS = {"properties", "refused", "error"}  # (maps of any keys, or kept as stored)


def maps_within(record) -> list[str]:
    """The fields of a record (and of the records in it) that hold a plain map, but those
    kept as maps on purpose."""
    found = []
    for name in record.__struct_fields__:
        value = getattr(record, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and name not in KEPT_AS_MAPS:
                found.append(name)
            elif hasattr(item, "__struct_fields__"):
                found += maps_within(item)
    return found


@pytest.mark.parametrize("verb, payload", GOOD)
def test_well_formed_view_payloads_read_back_as_records_and_as_the_same_maps(verb, payload):
    record = read(verb, {"type": "reply", "ok": True, **payload})
    (value,) = payload.values()
    assert maps_within(record) == []
    assert getattr(record, verb).as_map() == value


@pytest.mark.parametrize("verb, payload, field", [
    ("status", {"status": queue(scheduled="1")}, r"\$\.status\.scheduled"),
    ("status", {"status": queue(pending=-1)}, r"\$\.status\.pending"),
    ("status", {"status": {"scheduled": 1, "pending": 0, "succeeded": 2}}, "`failed`"),
    ("task", {"task": {"tid": 3}}, "`state`"),
    ("task", {"task": {"tid": 3, "state": "lost"}}, r"\$\.task\.state"),
    ("task", {"task": {"state": "unknown"}}, "`tid`"),
    ("task", {"task": pending(attempts="1")}, r"\$\.task\.attempts"),
    ("task", {"task": pending(story=[{"event": "e", "to": "t", "why": ""}])}, "`from`"),
    ("task", {"task": pending(story=story(why=None))}, r"\$\.task\.story\[0\]\.why"),
    ("task", {"task": {k: v for k, v in succeeded().items() if k != "stdout"}}, "`stdout`"),
    ("task", {"task": succeeded(error={"type": "E"})}, r"`error`.*`message`.*\$\.task"),
    ("task", {"task": succeeded(error={"type": "E", "message": 3})}, r"`error`.*\$\.message"),
    ("activity", {"activity": activity(seq=None)}, r"\$\.activity\.seq"),
    ("activity", {"activity": {k: v for k, v in activity().items() if k != "running"}},
     "`running`"),
    ("activity", {"activity": activity(attempts=[attempt(tid="3")])},
     r"\$\.activity\.attempts\[0\]\.tid"),
    ("activity", {"activity": activity(failures=[{"tid": 3}])}, "`engineid`"),
    ("activity", {"activity": activity(queue_per_second=[[4, 0]])},
     r"\$\.activity\.queue_per_second\[0\]"),
    ("stats", {"stats": stats(engines=[{k: v for k, v in engine().items() if k != "held"}])},
     "`held`"),
    ("stats", {"stats": stats(engines=[engine(current_task="3")])},
     r"\$\.stats\.engines\[0\]\.current_task"),
    ("stats", {"stats": stats(queue={"scheduled": 1})}, "`pending`"),
    ("stats", {"stats": stats(durations={"buckets": [[None]], "sum": 0.0, "count": 0})},
     r"\$\.stats\.durations\.buckets\[0\]"),
])
def test_a_view_payload_that_does_not_fit_is_refused_naming_the_field(verb, payload, field):
    with pytest.raises(ProtocolError, match=field) as e:
        from_reply(verb, {"type": "reply", "ok": True, **payload})
    assert f"a {verb} request" in str(e.value)


def test_the_verbs_raise_the_protocol_error_not_a_key_error_later():
    bad = {"type": "reply", "ok": True}
    with pytest.raises(ProtocolError, match=r"\$\.status\.failed"):
        steps.queue_status(True).answer({**bad, "status": queue(failed="2")}, [])
    with pytest.raises(ProtocolError, match="`state`"):
        steps.task_info(3).answer({**bad, "task": {"tid": 3, "story": []}}, [])
    with pytest.raises(ProtocolError, match="`started`"):
        steps.activity(0).answer({**bad, "activity": {"time": 1.0}}, [])
    with pytest.raises(ProtocolError, match="`last_heartbeat_ago`"):
        steps.statistics().answer({**bad, "stats": stats(engines=[
            {k: v for k, v in engine().items() if k != "last_heartbeat_ago"}])}, [])
