"""Retiring an engine when its goodbye is lost (controller/engines.py), driven in process:
the controller tells a drained engine to stop with its heartbeat answer; if the engine's
`retired` never arrives and the engine goes (its process exits, or it falls silent), it is
retired, not dead: it held nothing, so nothing is failed or counted as a death."""

from __future__ import annotations

import socket
import time

import pytest

from taskmill.connection import new_connection_info
from taskmill.controller import Controller, Now
from taskmill.protocol import HbAnswer, from_controller
from taskmill.store import MemoryStore
from taskmill.wire import Wire


def now(later: float = 0.0) -> Now:
    return Now(time.monotonic() + later, time.time() + later)


class Driver:
    """One controller core, fed signed messages of an engine ("e") and a client ("c")."""

    def __init__(self) -> None:
        info = new_connection_info()
        self.ctl = Controller(info, store=MemoryStore(), heartbeat=0.5)
        self.wires = {"e": Wire(info.key_bytes), "c": Wire(info.key_bytes)}

    def send(self, who: str, header: dict, at: Now | None = None) -> list:
        header.setdefault("session", self.ctl.session)
        h, f = self.ctl.wire.decode(self.wires[who].encode(header, []))
        at = at or now()
        core = self.ctl.core
        (core.on_engine if who == "e" else core.on_client)(
            b"e.t" if header["type"] in ("register", "hello") else
            b"e.c" if who == "e" else b"client", h, f, at)
        return core.flush(at)

    def ask(self, header: dict) -> dict:
        header["req"] = 1
        out = self.send("c", header)
        return next(h for _, _, h, _ in out if h and h.get("type") == "reply")


@pytest.fixture
def drained():
    """A registered engine, told to retire while idle: drained at once."""
    d = Driver()
    d.send("e", {"type": "register", "uuid": "u", "ctl_ident": b"e.c", "res_ident": b"e.r",
                 "heart_ident": b"e.h", "hostname": socket.gethostname(), "pid": 4242,
                 "t": 0.0})
    assert d.ask({"type": "retire", "engines": [0]})["retiring"] == [0]
    out = d.send("e", {"type": "hb", "t": 1.0, "held": [], "unacked": [], "mseq": 0})
    answers = [from_controller(h) for _, _, h, _ in out if h and h.get("type") == "hb"]
    assert answers and all(isinstance(a, HbAnswer) for a in answers) and answers[0].retire
    try:
        yield d
    finally:
        d.ctl.close()


def counts(d: Driver) -> tuple[list[str], int, int]:
    stats = d.ask({"type": "stats"})["stats"]
    return ([e["state"] for e in stats["engines"]], stats["engines_retired"],
            stats["engines_died"])


def test_a_drained_engine_whose_process_exits_before_its_goodbye_is_retired(drained):
    drained.ask({"type": "engine_exited", "pid": 4242, "status": 0})  # (a nanny's report)
    assert counts(drained) == (["retired"], 1, 0)


def test_a_drained_engine_that_falls_silent_is_retired_not_dead(drained):
    later = now(10.0)  # past dead_after (3 heartbeats of 0.5 s)
    drained.ctl.core.begin_turn(later.mono)  # (a fresh loop turn: no stall to excuse)
    drained.ctl.core.check_heartbeats(later)
    assert counts(drained) == (["retired"], 1, 0)


def test_an_engine_that_was_never_told_to_retire_and_exits_is_dead():
    d = Driver()
    try:
        d.send("e", {"type": "register", "uuid": "u", "ctl_ident": b"e.c", "res_ident": b"e.r",
                     "heart_ident": b"e.h", "hostname": socket.gethostname(), "pid": 4242,
                     "t": 0.0})
        d.send("e", {"type": "retired"})  # (a goodbye nobody asked for: not believed)
        assert counts(d) == (["idle"], 0, 0)
        d.ask({"type": "engine_exited", "pid": 4242, "status": -9})
        assert counts(d) == (["dead"], 0, 1)
    finally:
        d.ctl.close()
