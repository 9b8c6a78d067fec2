"""When the controller acknowledges an engine's results (controller/engines.py `acks_stored`):
small ones with the answer to the engine's next heartbeat, large ones (or many small ones
passing ACK_AT_ONCE_BYTES together) in a `stored` message right after the commit that stored
them, sent after that turn's message to the client. Driven in process: messages straight into
the controller's core, what it sends read from its flush."""

from __future__ import annotations

import pytest
from testhelp import core_controller, inject

from taskmill.controller.engines import ACK_AT_ONCE_BYTES
from taskmill.protocol import HbAnswer, Stored, from_controller

NODE = {"exec": {"kind": "map", "fn": 1}, "nframes": 2, "pmac": b"m" * 32}


@pytest.fixture
def ctl():
    with core_controller(heartbeat=3600.0, prefetch=3) as c:
        yield c


def send(ctl, who: int, ident: bytes, header: dict, frames=()) -> list:
    return inject(ctl, bool(who), ident, header, frames)


def run_tasks(ctl, n: int) -> list[list[int]]:
    """A registered engine "e" and `n` watched tasks dispatched to it: [tid, attempt] each."""
    send(ctl, 1, b"e.t", {"type": "register", "uuid": "e", "ctl_ident": b"e.c",
                          "res_ident": b"e.r", "heart_ident": b"e.h", "hostname": "host",
                          "pid": 4242, "t": 0.0})
    out = send(ctl, 0, b"client", {"type": "submit", "req": 1, "watch": True,
                                   "tasks": [{"nodes": [NODE]}] * n},
               [b"function", b"arguments"] * n)
    return [[t["tid"], t["attempt"]] for _, _, h, _ in out if h and h.get("type") == "tasks"
            for t in h["tasks"]]


def result(ctl, key: list[int], value: bytes) -> list[tuple[bytes, str, object]]:
    """The engine's result for `key`: what the controller sends in that turn, in order."""
    out = send(ctl, 1, b"e.r", {"type": "results", "results": [
        {"tid": key[0], "attempt": key[1], "kind": "map", "status": "ok", "n": 1,
         "duration": 0.1, "pmac": b"p" * 32}]}, [value])
    return [(ident, h["type"], from_controller(h) if h["type"] in ("stored", "hb") else None)
            for _, ident, h, _ in out if h]


def heartbeat(ctl, held: list[list[int]], unacked: list[list[int]]) -> HbAnswer:
    out = send(ctl, 1, b"e.c", {"type": "hb", "t": 1.0, "held": held, "unacked": unacked,
                                "mseq": 1})
    (answer,) = [from_controller(h) for _, _, h, _ in out if h and h.get("type") == "hb"]
    return answer


def test_a_small_result_waits_for_the_heartbeat_answer_a_large_one_is_acknowledged_at_once(ctl):
    small, large, last = run_tasks(ctl, 3)
    # A small result: the client hears of it; the engine, with its next heartbeat answer.
    assert [kind for _, kind, _ in result(ctl, small, b"x" * 100)] == ["done"]
    # A large one: its `stored` goes to the engine's control socket after the client's
    # `done`, and names every stored result not yet acknowledged.
    sent = result(ctl, large, b"y" * ACK_AT_ONCE_BYTES)
    assert [(who, kind) for who, kind, _ in sent] == [(b"client", "done"), (b"e.c", "stored")]
    stored = sent[1][2]
    assert isinstance(stored, Stored) and stored.session == ctl.session
    assert sorted(map(list, stored.ack)) == sorted([small, large])
    # Nothing is acknowledged twice; results named in a heartbeat that crossed the `stored`
    # are not taken for lost (they are no longer expected): acknowledged again.
    assert not heartbeat(ctl, [last], []).ack
    assert [kind for _, kind, _ in result(ctl, last, b"z" * 10)] == ["done"]
    answer = heartbeat(ctl, [], [large, last])
    assert [list(k) for k in answer.ack] == [last] and not answer.resend
    answer = heartbeat(ctl, [], [large])
    assert large in [list(k) for k in answer.ack] and not answer.resend

def test_small_results_whose_bytes_add_up_are_acknowledged_at_once(ctl):
    keys = run_tasks(ctl, 3)
    third = ACK_AT_ONCE_BYTES // 3 + 1
    assert [kind for _, kind, _ in result(ctl, keys[0], b"a" * third)] == ["done"]
    assert [kind for _, kind, _ in result(ctl, keys[1], b"b" * third)] == ["done"]
    sent = result(ctl, keys[2], b"c" * third)
    assert [kind for _, kind, _ in sent] == ["done", "stored"]
    assert sorted(map(list, sent[1][2].ack)) == sorted(keys)
