"""Forgetting a silent client (controller/clients.py), driven in process with the time handed
in: a client that never says `bye` (kill -9, its machine gone) loses its watches, its waiting
requests and the results queued for it once it has been silent for `forget_clients_after`;
its tasks run on and another client fetches their results; if it speaks again it is told that
it was forgotten, and nothing is kept for it again until it says `bye` for that id."""

from __future__ import annotations

import logging
import math
import time

import pytest
from test_protocol import FRAMES, node

from taskmill.connection import new_connection_info
from taskmill.controller import Controller, Now
from taskmill.controller import clients as clients_module
from taskmill.controller.clients import Clients
from taskmill.defaults import (
    FORGET_CLIENTS_AFTER,
    FORGET_CLIENTS_AFTER_WARN,
    RECONNECT_TIMEOUT,
    RESULTS_WINDOW,
)
from taskmill.store import MemoryStore
from taskmill.wire import Wire

BOUND = 5.0
A, B = b"client-a.r", b"client-b.r"  # the receive sockets' ids of two clients


class Driver:
    """One controller core (no engine: every task stays queued), fed client messages at
    times `t` seconds after it started."""

    def __init__(self, heartbeat: float = 3600.0) -> None:
        info = new_connection_info()
        self.ctl = Controller(info, store=MemoryStore(), heartbeat=heartbeat,
                              forget_clients_after=BOUND)
        self.core = self.ctl.core
        self.wire = Wire(info.key_bytes)
        self.t0 = Now(time.monotonic(), time.time())
        self.reqs = iter(range(1, 1 << 30))

    def at(self, t: float) -> Now:
        return Now(self.t0.mono + t, self.t0.wall + t)

    def send(self, rt: bytes, header: dict, t: float, frames=()) -> list[dict]:
        """A message of client `rt` (a request from its send socket, naming `rt`; a ping or
        an ack from the receive socket itself); the headers sent back to `rt`."""
        header.setdefault("session", self.ctl.session)
        if header["type"] in ("ping", "hello", "ack"):
            ident = rt
        else:
            ident = rt[:-2] + b".s"
            header["rt"] = rt
        h, f = self.ctl.wire.decode(self.wire.encode(header, list(frames)))
        self.core.on_client(ident, h, f, self.at(t))
        return [h for _, to, h, _ in self.core.flush(self.at(t)) if to == rt and h]

    def ask(self, rt: bytes, header: dict, t: float, frames=()) -> dict:
        req = header["req"] = next(self.reqs)
        (reply,) = [h for h in self.send(rt, header, t, frames) if h.get("req") == req]
        return reply

    def submit(self, rt: bytes, n: int, t: float) -> list[int]:
        reply = self.ask(rt, {"type": "submit", "watch": True,
                              "tasks": [{"nodes": [node()]} for _ in range(n)]}, t,
                         FRAMES * n)
        assert reply["ok"], reply
        return reply["tids"]

    def check(self, t: float) -> None:
        """A loop turn at `t` that fires the due timers (the silent clients are forgotten)."""
        self.core.begin_turn(self.at(t).mono)
        self.core.fire_timers(self.at(t))

    def stats(self, t: float) -> dict:
        return self.ask(B, {"type": "stats"}, t)["stats"]

    def held(self, t: float) -> tuple[int, ...]:
        s = self.stats(t)
        return (s["clients"], s["clients_forgotten"], s["clients_watching"],
                s["requests_waiting"], s["results_in_flight_to_clients"],
                s["results_held_for_clients"])


@pytest.fixture
def d():
    driver = Driver()
    try:
        yield driver
    finally:
        driver.ctl.close()


def waiters_of(d: Driver, rt: bytes) -> int:
    return sum(w.reply_to == rt for ws in d.core.results.waiters.values() for w in ws)


def test_a_silent_client_is_forgotten_with_what_was_kept_for_it(d):
    n = 2 * RESULTS_WINDOW
    tids = d.submit(A, n + 10, 0.0)  # watched: its futures
    assert d.send(A, {"type": "result", "tids": tids[-1:], "block": True, "req": 900}, 0.0) == []
    assert d.send(A, {"type": "wait", "tids": tids[-2:], "req": 901}, 0.0) == []
    for tid in tids[:n]:  # finished (aborted): a window in flight to A, the rest held
        assert d.ask(B, {"type": "abort", "tid": tid}, 1.0)["ok"]
    own = d.submit(B, 3, 1.0)
    assert d.held(1.0) == (2, 0, 2, 4, RESULTS_WINDOW, n - RESULTS_WINDOW)
    assert waiters_of(d, A) == 10 + 1 + 2
    d.check(BOUND - 1.0)  # A silent for less than the bound: kept
    assert d.held(BOUND - 1.0)[:2] == (2, 0)
    d.check(BOUND + 0.5)  # past it (B spoke at BOUND - 1.0)
    assert d.held(BOUND + 0.5) == (1, 1, 1, 1, 0, 0)
    assert waiters_of(d, A) == 0 and waiters_of(d, B) == 3
    # Its tasks are still there, finished or queued, and B fetches their results by taskid.
    assert d.core.sched.active_count() == 10 + 3
    results = d.ask(B, {"type": "result", "tids": [tids[0], tids[-1]]}, BOUND + 1)["results"]
    assert results[0]["status"] == "aborted" and results[1] is None
    # B's own watch goes on: its results reach it.
    d.ask(B, {"type": "abort", "tid": own[0]}, BOUND + 1)
    done = [h for h in d.send(B, {"type": "ping", "req": 0}, BOUND + 1) if h["type"] == "done"]
    assert done == [] or [r["tid"] for r in done[0]["results"]] == [own[0]]
    assert d.core.ctx.outbox.credits.clients[B].next == 1


def test_a_forgotten_client_that_speaks_again_is_told_and_nothing_is_kept_for_it(d):
    tids = d.submit(A, 5, 0.0)
    d.send(B, {"type": "ping", "req": 0}, BOUND)
    d.check(BOUND + 1.0)
    assert d.held(BOUND + 1.0)[:4] == (1, 1, 0, 0)
    for header in ({"type": "ping", "req": 0}, {"type": "ack", "got": 0, "req": 0},
                   {"type": "result", "tids": tids, "block": True},
                   {"type": "watch", "tids": tids}):
        reply = d.ask(A, header, BOUND + 2.0) if header["type"] in ("result", "watch") else \
            d.send(A, header, BOUND + 2.0)[0]
        assert not reply["ok"] and reply["error_type"] == "forgotten", reply
        assert "forgot this client" in reply["error"], reply
        assert "get_task_result" in reply["error"]
    assert d.held(BOUND + 2.0)[:4] == (1, 1, 0, 0)  # nothing taken up again
    assert waiters_of(d, A) == 0
    assert d.stats(BOUND + 2.0)["refused"]["forgotten-client"] == 4
    # Its `bye` (sent as the client moves to new ids) ends the record of the old id.
    assert d.send(A, {"type": "bye", "req": 0}, BOUND + 3.0) == []
    assert A not in d.core.ctx.clients.forgotten


def test_a_long_loop_turn_is_not_silence():
    d = Driver(heartbeat=1.0)
    try:
        d.submit(A, 1, 0.0)
        d.core.begin_turn(d.at(1.0).mono)
        d.core.end_turn(d.at(BOUND + 10).mono)  # one turn that kept the loop from reading
        d.check(BOUND + 10)  # (its pings wait unread: not silence)
        d.check(BOUND + 10 + BOUND - 1)
        assert d.core.ctx.clients.forgotten_total == 0
        d.check(BOUND + 10 + BOUND + 1)  # silent for the bound after the stall
        assert d.core.ctx.clients.forgotten_total == 1
    finally:
        d.ctl.close()


def test_a_bye_ends_a_blocking_request_even_without_a_watch(d):
    tids = d.submit(B, 1, 0.0)
    assert d.send(A, {"type": "result", "tids": tids, "block": True, "req": 5}, 0.0) == []
    assert d.send(A, {"type": "wait", "tids": tids, "req": 6}, 0.0) == []
    assert waiters_of(d, A) == 2
    d.send(A, {"type": "bye", "req": 0}, 1.0)
    assert waiters_of(d, A) == 0
    assert d.held(1.0)[:4] == (1, 0, 1, 1)  # B and its watch only


def test_the_forgotten_ids_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(clients_module, "FORGOTTEN_KEPT", 3)
    c = Clients(1.0)
    for i in range(5):
        assert c.heard(b"%d" % i, 0.0)
    assert c.silent(0.5, -math.inf) == []
    assert len(c.silent(2.0, -math.inf)) == 5
    assert list(c.forgotten) == [b"2", b"3", b"4"]  # the newest
    assert not c.heard(b"4", 2.0) and c.heard(b"0", 2.0)
    assert c.held() == {"clients": 1, "clients_forgotten": 5}


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, "60", True])
def test_the_bound_is_checked(bad):
    with pytest.raises((TypeError, ValueError), match="forget_clients_after"):
        Clients(bad)


def test_a_client_riding_out_a_cut_is_not_forgotten_by_default():
    """The default bound is longer than the silence a client rides out (its own
    reconnect_timeout, SPEC §1), so that its futures survive what its calls survive."""
    assert FORGET_CLIENTS_AFTER > RECONNECT_TIMEOUT
    assert Clients(math.inf).silent(1e12, -math.inf) == []


@pytest.mark.parametrize("bound,warned", [(1.0, True), (FORGET_CLIENTS_AFTER_WARN, False),
                                          (FORGET_CLIENTS_AFTER, False), (math.inf, False)])
def test_a_bound_within_a_few_pings_is_warned_of_at_the_start(caplog, bound, warned):
    """A live client pings every second: a bound of a second or two forgets it whenever a
    ping comes late, which the one who chose that bound should hear at the start."""
    caplog.set_level(logging.WARNING, logger="taskmill.controller")
    ctl = Controller(new_connection_info(), store=MemoryStore(), forget_clients_after=bound)
    try:
        said = [r.getMessage() for r in caplog.records if "forget-clients-after" in r.getMessage()]
        assert bool(said) == warned, said
        if warned:
            assert "ClientForgotten" in said[0] and f"{FORGET_CLIENTS_AFTER_WARN:g}s" in said[0]
    finally:
        ctl.close()
