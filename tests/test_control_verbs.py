"""The answers the controller keeps for requests that may not be carried out twice (abort,
clear, retire, spin: controller/control_verbs.py): a request sent again (`resent`, with the
same `key`) after its answer was lost is answered as the first time; one whose first never
arrived is carried out. A restarted controller answers abort, clear and retire from its
store, where each answer is written with the effect it answers, and retires the engines that
were retiring when they come back. Driven in process: messages straight into the
controller's core."""

from __future__ import annotations

import contextlib
import time

import pytest
from testhelp import core_controller, inject

from taskmill.connection import new_connection_info
from taskmill.controller import Now, control_verbs
from taskmill.store import SQLiteStore

NODE = {"exec": {"kind": "map", "fn": 1}, "nframes": 2, "pmac": b"m" * 32}


@pytest.fixture
def ctl():
    with core_controller(heartbeat=3600.0) as c:
        yield c


def request(ctl, header: dict, frames=(), rt: bytes = b"client") -> dict:
    """A client's request; the controller's reply to it (header)."""
    out = inject(ctl, False, rt, {"req": 7, **header}, frames)
    (reply,) = [h for _, ident, h, _ in out if h and h.get("type") == "reply" and ident == rt]
    return reply


def queued_task(ctl) -> int:
    reply = request(ctl, {"type": "submit", "tasks": [{"nodes": [NODE]}]},
                    [b"function", b"args"])
    (tid,) = reply["tids"]
    return tid


def test_a_resent_abort_is_answered_as_the_first_time_not_carried_out_again(ctl):
    tid = queued_task(ctl)
    first = {"type": "abort", "tid": tid, "key": "client-a:5"}
    assert request(ctl, first)["status"] == "aborted"
    # carried out again it would say "finished" (the task finished as aborted)
    again = request(ctl, {**first, "resent": True}, rt=b"client-a-new-connection")
    assert again["status"] == "aborted"
    # a resend whose first never arrived (no answer kept for its key) is carried out
    other = queued_task(ctl)
    assert request(ctl, {"type": "abort", "tid": other, "key": "client-a:6",
                         "resent": True})["status"] == "aborted"
    assert request(ctl, {"type": "abort", "tid": other, "key": "client-a:7"}
                   )["status"] == "finished"
    assert ctl.core.views.statistics(Now(time.monotonic(), time.time())
                                     ).answers_given_again == 1


def test_a_resent_clear_is_answered_as_the_first_time(ctl):
    tid = queued_task(ctl)
    request(ctl, {"type": "abort", "tid": tid})  # (finished: aborted)
    first = {"type": "clear", "tids": [tid], "key": "client-b:3"}
    assert (request(ctl, first)["dropped"], request(ctl, {**first, "resent": True})["dropped"]
            ) == (1, 1)
    # carried out again: nothing left to drop
    assert request(ctl, {**first, "key": "client-b:4"})["missing"] == [tid]


def test_a_clear_replayed_unmarked_is_answered_from_its_key_not_carried_out_again(ctl):
    """A signed clear captured and sent again later by someone without the key, once the
    replay table had forgotten its sender (100,000 senders later), wiped results anew: only
    a request marked `resent` was looked up by its key. A client never sends one key twice
    unless resending, so an unmarked second one is answered from its kept answer too."""
    tid = queued_task(ctl)
    request(ctl, {"type": "abort", "tid": tid})
    first = {"type": "clear", "tids": [tid], "key": "client-c:3"}
    assert request(ctl, first)["dropped"] == 1
    assert request(ctl, first, rt=b"someone-else")["dropped"] == 1  # (the kept answer)
    assert ctl.core.views.statistics(Now(time.monotonic(), time.time())
                                     ).answers_given_again == 1


def test_the_answers_kept_are_bounded(ctl, monkeypatch):
    monkeypatch.setattr(control_verbs, "KEPT", 3)
    tids = [queued_task(ctl) for _ in range(5)]
    for i, tid in enumerate(tids):
        assert request(ctl, {"type": "abort", "tid": tid, "key": f"c:{i}"}
                       )["status"] == "aborted"
    # the oldest answers are gone: a resend of the first is carried out (and answers anew)
    assert request(ctl, {"type": "abort", "tid": tids[0], "key": "c:0", "resent": True}
                   )["status"] == "finished"
    assert request(ctl, {"type": "abort", "tid": tids[4], "key": "c:4", "resent": True}
                   )["status"] == "aborted"


def given_again(ctl) -> int:
    return ctl.core.views.statistics(Now(time.monotonic(), time.time())).answers_given_again


def test_a_resent_spin_is_answered_as_the_first_time(ctl):
    queued_task(ctl)  # (no engine: nothing to dispatch)
    first = {"type": "spin", "key": "client-c:1"}
    assert request(ctl, first)["dispatched"] is False
    assert request(ctl, {**first, "resent": True})["dispatched"] is False
    assert given_again(ctl) == 1


@contextlib.contextmanager
def restarted(tmp_path, crash: str, before):
    """A controller on a SQLite store: `before(it)` runs on it, then it dies (`kill`: nothing
    more written, as kill -9 leaves it; `close`: closed); the controller started again on the
    same store is given, with what `before` returned."""
    path = str(tmp_path / "tasks.db")
    info = new_connection_info()
    running = core_controller(store=SQLiteStore(path), info=info, heartbeat=3600.0)
    first = running.__enter__()
    got = before(first)
    if crash == "kill":  # (no close)
        first.store.abandon()
        first.sockets.close()
    else:
        running.__exit__(None, None, None)
    with core_controller(store=SQLiteStore(path), info=info, heartbeat=3600.0) as second:
        yield second, got


@pytest.mark.parametrize("crash", ["kill", "close"])
def test_a_restarted_controller_answers_a_resent_abort_and_clear_from_its_store(tmp_path, crash):
    """The first controller carries out an abort and a clear and commits (their answers go
    out only after that); it dies (`kill`: nothing more written, as kill -9 leaves it) before
    the client heard them. The controller started again on the same store answers both, sent
    again, as the first did; carried out again they would answer "finished" and "missing"."""
    def before(first) -> tuple[int, int]:
        aborted, cleared = queued_task(first), queued_task(first)
        assert request(first, {"type": "abort", "tid": cleared})["status"] == "aborted"
        assert request(first, {"type": "abort", "tid": aborted, "key": "client-d:1"}
                       )["status"] == "aborted"
        assert request(first, {"type": "clear", "tids": [cleared], "key": "client-d:2"}
                       )["dropped"] == 1
        return aborted, cleared

    with restarted(tmp_path, crash, before) as (second, (aborted, cleared)):
        assert request(second, {"type": "abort", "tid": aborted, "key": "client-d:1",
                                "resent": True})["status"] == "aborted"
        again = request(second, {"type": "clear", "tids": [cleared], "key": "client-d:2",
                                 "resent": True})
        assert (again["dropped"], again["missing"]) == (1, [])
        assert given_again(second) == 2
        # a key it kept no answer for (never carried out): carried out now
        assert request(second, {"type": "clear", "tids": [cleared], "key": "client-d:3",
                                "resent": True})["missing"] == [cleared]
        # and a request not marked as sent again never looks in the store
        assert request(second, {"type": "abort", "tid": aborted, "key": "client-d:1"}
                       )["status"] == "finished"


def register(ctl, uuid: str) -> int:
    """An engine process `uuid` registers (its sockets' ids named after it): its engine id."""
    ident = uuid.encode()
    out = inject(ctl, True, ident + b".t", {
        "type": "register", "uuid": uuid, "ctl_ident": ident + b".c", "res_ident": ident + b".r",
        "heart_ident": ident + b".h", "hostname": "host", "pid": 4242, "t": 0.0})
    (eid,) = [h["engineid"] for _, _, h, _ in out if h and h.get("type") == "registered"]
    return eid


@pytest.mark.parametrize("crash", ["kill", "close"])
def test_a_restarted_controller_keeps_engines_retiring_and_answers_a_resent_retire(tmp_path,
                                                                                  crash):
    """Engine "a" is told to retire (answered once the store has it); the controller dies.
    The next one, on the same store, retires "a" as soon as it registers again (under a new
    id: ids are a controller's), not "b", and answers the retire sent again as the first did.
    Before, the engine came back taking tasks, and the resent retire raised."""
    def before(first) -> int:
        a, b = register(first, "a" * 32), register(first, "b" * 32)
        assert request(first, {"type": "retire", "engines": [a, 99], "key": "client-e:1"}
                       )["retiring"] == [a]
        sched = first.core.ctx.sched
        assert sched.engine_retiring(a) and not sched.engine_retiring(b)
        return a

    with restarted(tmp_path, crash, before) as (second, a):
        a2, b2 = register(second, "a" * 32), register(second, "b" * 32)
        assert second.core.ctx.sched.engine_retiring(a2)
        assert not second.core.ctx.sched.engine_retiring(b2)
        assert request(second, {"type": "retire", "engines": [a, 99], "key": "client-e:1",
                                "resent": True})["retiring"] == [a]
        assert given_again(second) == 1
