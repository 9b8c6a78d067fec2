"""The answers the controller keeps for requests that may not be carried out twice (abort,
clear, retire: controller/control_verbs.py): a request sent again (`resent`, with the same
`key`) after its answer was lost is answered as the first time; one whose first never arrived
is carried out. Driven in process: messages straight into the controller's core."""

from __future__ import annotations

import time

import pytest
from testhelp import core_controller, inject

from taskmill.controller import Now, control_verbs

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
