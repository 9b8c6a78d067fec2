"""Fuzzing what the controller reads: `Wire.decode` and the controller's message handlers.

1. In process, with hypothesis (>= 10,000 messages): a `Controller` on free ports with a SQLite
   store (as `taskmill controller` has) is fed random frames, real messages with bytes flipped
   or frames dropped, real message headers mutated (wrong types, missing keys, boundary and huge
   ints, nested junk, other verbs) and signed again with the key, signed headers that are not
   headers at all, and replays. Each message goes through `ctl.wire.decode` and then straight
   into the controller's core (`core.on_client` / `core.on_engine`, no sockets), as the loop's
   `drain` does: a handler must never raise. After each batch the rest of a loop turn
   (`core.fire_timers`, `core.flush` and signing what it returns) must not raise either:
   nothing catches there.
2. The same controller then reads random messages from its sockets through its loop's `drain`,
   whose per-message try/except is also checked with a client verb made to raise; then it
   serves a real engine and a real client.
3. The shared cluster's controller receives a few thousand random and mutated messages on both
   ports over raw sockets, and still serves a real task.
"""

from __future__ import annotations

import copy
import hmac
import itertools
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from taskmill import MapTask, StringTask, TaskClient
from taskmill.client.codec import encode_task
from taskmill.connection import new_connection_info, read_connection_file, write_connection_file
from taskmill.controller import Controller, Now
from taskmill.store import SQLiteStore
from taskmill.wire import PROTOCOL, FunctionPickles, Refused, Wire, dumps

pytestmark = pytest.mark.timeout(120, method="thread")

BATCH = 25  # messages per hypothesis example
EXAMPLES = 800  # 800 * 25 = 20,000 messages
MESSAGE_BYTES = 64  # hypothesis-drawn bytes that decide one message
MIN_MESSAGES = 10_000

CLIENT_VERBS = ["hello", "ping", "submit", "result", "watch", "wait", "abort", "spin", "status",
                "clear", "engines", "stats", "engine_exited", "activity", "task"]
ENGINE_VERBS = ["hello", "register", "hb", "results", "revoked"]


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


BOUNDARY: list[Any] = [
    0, 1, -1, 2, 7, 2**31, -(2**31), 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63),
    True, False, None, "", b"", [], {}, 0.5, -0.0, float("nan"), float("inf"), float("-inf"),
    1e308, "x" * 10_000, b"\x00" * 10_000, ["x"] * 1000, _nested(100),
    {"": {"": {"": None}}}, {1: 2, b"k": [None]}, "map", "string", "callable", "ok", "error",
    "rejected",
]

def boundary(c, n: int = len(BOUNDARY)) -> Any:
    """One of the first `n` BOUNDARY values, as a copy (later edits must not change BOUNDARY)."""
    return copy.deepcopy(BOUNDARY[c.pick(n)])


# -- message material ------------------------------------------------------------------------


def _encode_task(wire: Wire, task) -> tuple[dict[str, Any], list[Any]]:
    """A task encoded exactly as a real client encodes it."""
    spec, frames = encode_task(task, wire, FunctionPickles())
    return spec, [bytes(getattr(f, "buffer", f)) for f in frames]


def _always(properties):
    return True


class Material:
    """Real message headers and payloads to start mutating from."""

    def __init__(self, key: bytes, session: bytes | None = None) -> None:
        self.key = key
        self.session = session  # the controller's (engine messages name it)
        wire = Wire(key)
        self.tasks = [
            _encode_task(wire, MapTask(abs, (-3,))),
            _encode_task(wire, StringTask("x = y + 1", pull="x", push={"y": 2}, clear_after=True)),
            _encode_task(wire, MapTask(abs, (1,), retries=2, timeout=5.0, depend={"gpu": 1},
                                       recovery_task=StringTask("pass"))),
            _encode_task(wire, MapTask(abs, (1,), depend=_always, after=[0, 1])),
        ]
        self.result_body = dumps(3)
        self.result_pmac = wire.payload_mac(self.result_body)
        self.error_body = dumps(ValueError("nope"))
        self.error_pmac = wire.payload_mac(self.error_body)

    def client(self, verb: str, pick, tid: int) -> tuple[dict[str, Any], list[Any]]:
        h: dict[str, Any] = {"type": verb, "req": pick(1000), "session": self.session}
        frames: list[Any] = []
        if verb == "submit":
            specs = []
            for _ in range(1 + pick(2)):
                spec, body = self.tasks[pick(len(self.tasks))]
                specs.append(copy.deepcopy(spec))
                frames.extend(body)
            h["tasks"] = specs
            if pick(2):
                h["key"] = f"fuzz:{pick(50)}"
            if pick(2):
                h["watch"] = True
        elif verb in ("result", "watch", "wait"):
            h["tids"] = [tid, tid + 1]
            if verb == "result":
                h["block"] = bool(pick(2))
        elif verb in ("abort", "task"):
            h["tid"] = tid
        elif verb == "activity":
            h["since"] = pick(50)
        elif verb == "status":
            h["verbose"] = bool(pick(2))
        elif verb == "clear":
            h["tids"] = [tid] if pick(2) else None
        elif verb == "engine_exited":
            h["pid"], h["status"] = 1 + pick(100), -pick(20)
        if pick(2):
            h["rt"] = b"fuzz-client.r"
        return h, frames

    def engine(self, verb: str, pick, tid: int, n: int) -> tuple[dict[str, Any], list[Any]]:
        if verb == "hello":
            return {"type": "hello"}, []
        if verb == "register":
            return {"type": "register", "uuid": f"fz-{n}", "ctl_ident": f"fz-{n}.c".encode(),
                    "res_ident": f"fz-{n}.r".encode(), "heart_ident": f"fz-{n}.h".encode(),
                    "hostname": "fuzzhost", "pid": 4242 + n, "session": self.session,
                    "prev_session": [None, b"old-session"][pick(2)],
                    "running": [None, [tid, 1]][pick(2)], "finished": [[tid, 2]][:pick(2)],
                    "t": 1.5, "properties": {"gpu": pick(2), "role": "fuzz"}}, []
        if verb == "hb":
            return {"type": "hb", "engineid": n, "gen": 1 + pick(3), "session": self.session,
                    "t": 2.5, "held": [[tid, 1 + pick(2)]][:pick(2)],
                    "current": [None, [tid, 1]][pick(2)],
                    "unacked": [[tid, 1 + pick(2)]][:pick(2)], "mseq": pick(4),
                    "missing": [1][:pick(2)]}, []
        if verb == "revoked":
            return {"type": "revoked", "tid": tid, "attempt": 1 + pick(2), "ok": bool(pick(2)),
                    "session": self.session}, []
        h: dict[str, Any] = {"tid": tid, "attempt": 1 + pick(2), "kind": "map",
                             "duration": 0.01, "stdout": "out", "stderr": ""}
        outcome = pick(4)
        if outcome == 0:
            h.update(status="ok", pmac=self.result_pmac)
            frames = list(self.result_body)
        elif outcome == 1:
            h.update(status="error", pmac=self.error_pmac,
                     error={"type": "ValueError", "module": "builtins", "message": "nope",
                            "traceback": "Traceback...", "pickled": True})
            frames = list(self.error_body)
        elif outcome == 2:
            h.update(status="rejected", error={"type": "TaskRejectError", "message": "",
                                               "traceback": "", "pickled": False})
            frames = []
        else:
            h.update(status="ok", pmac=self.result_pmac, properties={"gpu": 1, "level": pick(3)})
            frames = list(self.result_body)
        h["n"] = len(frames)
        return {"type": verb, "results": [h], "session": self.session}, frames


# -- mutations (driven by a "chooser": hypothesis draws, or a random.Random) -------------------


class ByteChooser:
    """Every choice read from a byte string that hypothesis draws (as FuzzedDataProvider does).

    One draw per batch keeps hypothesis cheap enough for 10,000 messages, and hypothesis still
    generates and mutates those bytes its own way. Past the end of the bytes, every choice is 0.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> int:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return int.from_bytes(chunk, "little")

    def pick(self, n: int) -> int:
        return self._take(1 if n <= 256 else 2) % n if n > 1 else 0

    def index(self, n: int) -> int:
        return self._take(2) % n if n > 0 else 0

    def junk(self) -> Any:
        return RandomChooser(random.Random(self._take(4))).junk()

    def blob(self, max_size: int) -> bytes:
        n = self.pick(max_size + 1)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk


class RandomChooser:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, n: int) -> int:
        return self.rng.randrange(n) if n > 1 else 0

    def index(self, n: int) -> int:
        return self.rng.randrange(n) if n > 0 else 0

    def junk(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(9 if depth < 2 else 7)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return r.randint(-(2**63), 2**64 - 1)
        if kind == 3:
            return r.randint(-5, 5)
        if kind == 4:
            return r.choice([r.random(), float("nan"), float("inf"), -1e300])
        if kind == 5:
            return "".join(chr(r.randrange(1, 0x2FF)) for _ in range(r.randrange(12)))
        if kind == 6:
            return r.randbytes(r.randrange(12))
        if kind == 7:
            return [self.junk(depth + 1) for _ in range(r.randrange(4))]
        return {r.choice(["type", "tid", "x", 1, b"k"]): self.junk(depth + 1)
                for _ in range(r.randrange(4))}

    def blob(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randrange(max_size + 1))


def _slots(obj: Any, limit: int = 200) -> list[tuple[Any, Any]]:
    """(container, key) of every value inside `obj` (breadth first, at most `limit`)."""
    out: list[tuple[Any, Any]] = []
    queue = [obj]
    while queue and len(out) < limit:
        cur = queue.pop(0)
        items = cur.items() if isinstance(cur, dict) else enumerate(cur)
        for k, v in list(items):
            out.append((cur, k))
            if isinstance(v, dict | list) and v:
                queue.append(v)
    return out


def _retype(value: Any) -> Any:
    """The same value as another type."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return int(value) if value == value and abs(value) < 1e18 else str(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return list(value[:8])
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return 0


def mutate_header(h: dict[str, Any], c, verbs: list[str]) -> Any:
    """Mutate a header in place (one to three edits); return it (or something else entirely).

    `type`, `sid` and `seq` change only now and then: most mutations should get past `decode`.
    (Choices past the end of a ByteChooser's bytes are 0, so rare branches are non-zero ones.)
    """
    if c.pick(40) == 17:
        return c.junk()  # not a map at all
    if c.pick(8) == 5:
        h["type"] = verbs[c.pick(len(verbs))] if c.pick(4) else c.junk()
    if c.pick(16) == 9:
        key = ("sid", "seq")[c.pick(2)]
        if c.pick(3) == 1:
            del h[key]
        else:
            h[key] = c.junk() if c.pick(2) else boundary(c)
    for _ in range(1 + c.pick(3)):
        slots = [(cont, k) for cont, k in _slots(h)
                 if cont is not h or k not in ("type", "sid", "seq")]
        if not slots:
            h["type"] = verbs[c.pick(len(verbs))]
            continue
        container, key = slots[c.index(len(slots))]
        op = c.pick(9)
        if op == 0:
            container[key] = c.junk()
        elif op == 1:
            container[key] = boundary(c)
        elif op == 2:
            if isinstance(container, dict):
                del container[key]
            else:
                container.pop(key)
        elif op == 3:
            target = container[key] if isinstance(container[key], dict | list) else container
            if isinstance(target, dict):
                new_key = c.junk() if c.pick(4) == 0 else f"k{c.pick(5)}"
                if isinstance(new_key, list | dict):
                    new_key = repr(new_key)  # map keys must be hashable here
                target[new_key] = c.junk()
            else:
                target.append(c.junk())
        elif op == 4:
            container[key] = _retype(container[key])
        elif op == 5:
            container[key] = {"type": verbs[c.pick(len(verbs))], "nested": container[key]}
        elif op == 6:
            container[key] = [container[key]] if c.pick(2) else {"v": container[key]}
        elif op == 7:
            v = container[key]
            if isinstance(v, int) and not isinstance(v, bool):
                v = [-v - 1, v * 2**40, 2**64 - 1, -(2**63)][c.pick(4)]
                container[key] = max(-(2**63), min(2**64 - 1, v))  # what msgpack can carry
            else:
                container[key] = boundary(c, 12)
        else:
            h[f"extra{c.pick(3)}"] = c.junk()
    return h


def mutate_frames(frames: list[Any], c) -> list[Any]:
    """Edit a list of frames: flip a byte, truncate, drop, duplicate, swap, add junk."""
    frames = [bytes(f) for f in frames]
    op = c.pick(6)
    if op == 0 and frames:
        i = c.index(len(frames))
        f = bytearray(frames[i])
        j = c.index(len(f))
        if f:
            f[j] ^= 1 + c.pick(255)
        frames[i] = bytes(f)
    elif op == 1 and frames:
        i = c.index(len(frames))
        frames[i] = frames[i][: c.index(len(frames[i]) + 1)]
    elif op == 2 and frames:
        frames.pop(c.index(len(frames)))
    elif op == 3 and frames:
        i = c.index(len(frames))
        frames.insert(i, frames[i])
    elif op == 4 and len(frames) > 1:
        i, j = c.index(len(frames)), c.index(len(frames))
        frames[i], frames[j] = frames[j], frames[i]
    else:
        frames.insert(c.index(len(frames) + 1), c.blob(64))
    return frames


class Generator:
    """Makes one fuzz message at a time: (port, ident, frames)."""

    def __init__(self, material: Material, *, client_verbs: list[str], engine_verbs: list[str],
                 engine_idents: list[bytes], tids=lambda: [0]) -> None:
        self.m = material
        self.client_verbs = client_verbs
        self.engine_verbs = engine_verbs
        self.engine_idents = engine_idents
        self.tids = tids
        self.sid = os.urandom(8)
        self.seq = itertools.count(1)
        self.history: list[tuple[str, bytes, list[Any]]] = []

    def sign(self, header: Any, frames: list[Any]) -> list[Any]:
        hb = msgpack.packb(header, use_bin_type=True)
        return [PROTOCOL + hmac.digest(self.m.key, hb, "sha256") + hb, *frames]

    def real(self, port: str, c) -> tuple[dict[str, Any], list[Any]]:
        tids = self.tids()
        i = c.pick(8)
        tid = tids[i % len(tids)] if tids else i
        if port == "client":
            verb = self.client_verbs[c.pick(len(self.client_verbs))]
            h, frames = self.m.client(verb, c.pick, tid)
        else:
            verb = self.engine_verbs[c.pick(len(self.engine_verbs))]
            h, frames = self.m.engine(verb, c.pick, tid, c.pick(len(self.engine_idents)))
        # A sid of its own: a mutated seq (say 2**64 - 1) must not make every later message
        # of the fuzz a "replay". (Random bytes, not drawn: the same kind of value each run.)
        h["sid"], h["seq"] = os.urandom(8), next(self.seq)
        return h, frames

    def ident(self, port: str, c) -> bytes:
        if port == "engine":
            n = c.pick(len(self.engine_idents) + 2)
            if n < len(self.engine_idents):
                return self.engine_idents[n]
        return [b"fuzz-client.s", b"", c.blob(16)][c.pick(3)] if port == "client" else c.blob(16)

    def message(self, c) -> tuple[str, bytes, list[Any]]:
        port = ("client", "engine")[c.pick(2)]
        kind = c.pick(20)
        if kind < 14:  # a real header, mutated, signed again (sometimes its payload edited too)
            h, body = self.real(port, c)
            header = mutate_header(h, c, self.client_verbs + self.engine_verbs)
            if c.pick(4) == 3:
                body = mutate_frames(body, c)
            frames = self.sign(header, body)
        elif kind == 14:  # a replay of one of the last messages
            i = c.pick(64)
            if self.history:
                return self.history[i % len(self.history)]
            return port, b"", [PROTOCOL]
        elif kind == 15:  # random frames
            frames = [c.blob(48) for _ in range(c.pick(6))]
            if c.pick(2):
                frames[:1] = [PROTOCOL + (frames[0] if frames else b"")]
        elif kind == 16:  # a signed "header" that is not a valid one
            header = [c.junk(), {"type": c.junk()}, {"type": "ping"},
                      {"type": "ping", "sid": c.junk(), "seq": c.junk()}][c.pick(4)]
            frames = self.sign(header, [])
        else:  # a real message, corrupted after signing
            h, body = self.real(port, c)
            frames = mutate_frames(self.sign(h, body), c)
        msg = (port, self.ident(port, c), frames)
        self.history = (self.history + [msg])[-64:]
        return msg


def _short(value: Any, limit: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- 1 and 2: an in-process controller -------------------------------------------------------


def _now() -> Now:
    return Now(time.monotonic(), time.time())


class Harness:
    """A controller in this process whose core is fed messages the way the loop feeds them."""

    def __init__(self, tmp_path) -> None:
        self.info = new_connection_info()
        self.store = SQLiteStore(str(tmp_path / "fuzz.db"))
        # A long heartbeat keeps the fake engines alive for the fuzz; their death is forced
        # later. A short unmet_timeout makes parked tasks time out while the fuzz runs.
        self.ctl = Controller(self.info, store=self.store, heartbeat=3600.0, unmet_timeout=0.01)
        self.material = Material(self.info.key_bytes, self.ctl.session)
        self.engine_idents = [f"fz-{n}.t".encode() for n in range(3)]
        self.gen = Generator(self.material, client_verbs=CLIENT_VERBS + ["no-such-verb"],
                             engine_verbs=ENGINE_VERBS + ["interrupt"],
                             engine_idents=self.engine_idents, tids=self.active_tids)
        self.fed = 0
        self.decoded = 0

    def active_tids(self) -> list[int]:
        return list(itertools.islice(self.ctl.sched.active_ids(), 8))

    def feed(self, port: str, ident: bytes, frames: list[Any]) -> None:
        self.fed += 1
        try:
            header, payload = self.ctl.wire.decode(frames)
        except Refused:
            return
        self.decoded += 1
        handler = self.ctl.core.on_client if port == "client" else self.ctl.core.on_engine
        try:
            # must not raise: the controller catches per message
            handler(ident, header, payload, _now())
            self.ctl.core.settle_timers(time.monotonic())  # (as the loop does after each message)
        except Exception as e:
            raise AssertionError(
                f"on_{port} raised {type(e).__name__}: {e} on a message from {ident!r} with "
                f"header {_short(header)}") from e

    def loop_rest(self) -> None:
        """What a loop turn does after draining; nothing catches an exception there, so
        one would end the controller. (What the core says to send is signed, not sent.)"""
        last = [_short(m) for m in self.gen.history[-5:]]
        try:
            self.ctl.core.fire_timers(_now())
            self.ctl.core.settle_timers(time.monotonic())
            for _port, _ident, header, frames in self.ctl.core.flush(_now()):
                if header is not None:
                    self.ctl.wire.encode(header, frames)
            self.ctl.core.settle_timers(time.monotonic())
        except Exception as e:
            raise AssertionError(
                f"the controller's loop raised {type(e).__name__}: {e} (it would exit); the "
                f"last messages fed: {last}") from e

    def prime(self) -> None:
        """Register the fake engines and give them work, with well-formed messages."""
        c = RandomChooser(random.Random(1))
        for n, ident in enumerate(self.engine_idents):
            h, _ = self.material.engine("register", c.pick, 0, n)
            h["sid"], h["seq"] = self.gen.sid, next(self.gen.seq)
            self.feed("engine", ident, self.gen.sign(h, []))
        for _ in range(4):
            h, frames = self.material.client("submit", c.pick, 0)
            h["sid"], h["seq"] = self.gen.sid, next(self.gen.seq)
            self.feed("client", b"fuzz-client.s", self.gen.sign(h, frames))
        self.loop_rest()
        assert len(self.ctl.engines) == 3 and self.ctl.counters.submitted >= 4
        assert not self.ctl.wire.refused, dict(self.ctl.wire.refused)


def _drain_until(ctl: Controller, count: int, timeout: float = 30.0) -> None:
    """Run the controller's loop turns by hand until it has received `count` messages."""
    deadline = time.monotonic() + timeout
    poller = zmq.Poller()
    poller.register(ctl.client_sock, zmq.POLLIN)
    poller.register(ctl.engine_sock, zmq.POLLIN)
    while ctl.counters.messages_in < count:
        assert time.monotonic() < deadline, (
            f"only {ctl.counters.messages_in} of {count} messages arrived within {timeout:g}s")
        ctl.turn(poller, 50)


def test_fuzz_controller_in_process(tmp_path):
    h = Harness(tmp_path)
    ctl = h.ctl
    try:
        h.prime()

        # -- 1. hypothesis: >= 10,000 messages straight into decode and the handlers ---------
        # No shrinking: the controller keeps its state from one example to the next, so a
        # shrunk example would not replay the same way; the failing batch is reported as is.
        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(st.binary(min_size=BATCH * MESSAGE_BYTES, max_size=BATCH * MESSAGE_BYTES))
        def fuzz(data):
            for i in range(BATCH):
                c = ByteChooser(data[i * MESSAGE_BYTES:(i + 1) * MESSAGE_BYTES])
                h.feed(*h.gen.message(c))
            h.loop_rest()

        fuzz()
        assert h.fed >= MIN_MESSAGES, h.fed
        refused = dict(ctl.wire.refused)
        assert refused.get("internal-error", 0) == 0, refused
        # The fuzz reached every kind of refusal and went past decode often.
        for reason in ("malformed", "bad-signature", "replay", "bad-request",
                       "bad-engine-message", "unknown-type"):
            assert refused.get(reason, 0) > 0, (reason, refused)
        assert h.decoded > h.fed // 3, (h.decoded, h.fed)
        assert ctl.counters.submitted >= 20 and ctl.counters.finished >= 10, ctl.statistics()

        # Every engine the fuzz registered dies now (no heartbeats): that path must cope with
        # whatever the registrations held.
        for rec in ctl.engines.values():
            rec.last_seen = -1e9
        try:
            ctl.core.check_heartbeats(_now())  # (from fire_timers: nothing catches there either)
        except Exception as e:
            regs = [(r.eid, _short(r.ctl_ident, 80), r.state) for r in ctl.engines.values()]
            raise AssertionError(
                f"the heartbeat check raised {type(e).__name__}: {e} (the controller would "
                f"exit); engines (eid, ctl_ident, state): {regs}") from e
        h.loop_rest()
        assert all(rec.state == "dead" for rec in ctl.engines.values())

        # -- 2. random messages through the sockets and the loop's `drain` -------------------
        ctx = zmq.Context()
        try:
            socks = {}
            for port, url, ident in (("client", h.info.client_url, b"fuzz-client.s"),
                                     ("engine", h.info.engine_url, b"fz-9.t")):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.SNDHWM, 0)
                s.setsockopt(zmq.ROUTING_ID, ident)
                s.connect(url)
                socks[port] = s
            c = RandomChooser(random.Random(20240611))
            start = ctl.counters.messages_in
            sent = 0
            for _ in range(1500):
                port, _ident, frames = h.gen.message(c)
                if frames:
                    socks[port].send_multipart(frames)
                    sent += 1
            _drain_until(ctl, start + sent)
            assert ctl.wire.refused.get("internal-error", 0) == 0, dict(ctl.wire.refused)

            # A client verb that raises is counted as an internal error and answered with an
            # error (the client is never left waiting), and the messages after it are handled.
            def broken(*args):
                raise RuntimeError("injected failure")

            ping = ctl.core.client_verbs["ping"]
            ctl.core.client_verbs["ping"] = broken
            client_wire = Wire(h.info.key_bytes)
            start = ctl.counters.messages_in
            socks["client"].send_multipart(
                client_wire.encode({"type": "ping", "req": "injected-ping"}))
            socks["client"].send_multipart(
                client_wire.encode({"type": "hello", "req": "after-the-injection"}))
            _drain_until(ctl, start + 2)
            ctl.core.client_verbs["ping"] = ping
            assert ctl.wire.refused["internal-error"] == 1
            reply_wire = Wire(h.info.key_bytes)
            replies = {}
            deadline = time.monotonic() + 10
            while "after-the-injection" not in replies:
                assert time.monotonic() < deadline, "the hello after the injection got no reply"
                if socks["client"].poll(50):
                    try:
                        header = reply_wire.decode(socks["client"].recv_multipart())[0]
                        if isinstance(header.get("req"), str):  # fuzzed requests echo junk
                            replies[header["req"]] = header
                    except Refused:
                        pass
            injected = replies.get("injected-ping")
            assert injected is not None and injected["ok"] is False, injected
            assert "injected failure" in injected["error"]
            assert replies["after-the-injection"]["ok"] is True
        finally:
            ctx.destroy(linger=0)
    except BaseException:
        ctl.close()
        raise

    # -- the fuzzed controller still serves a real engine and a real client ------------------
    conn = write_connection_file(tmp_path / "fuzz" / "connection.json", h.info)
    probe = uuid.uuid4().hex
    # From here on a normal heartbeat: engines registered by phase 2 die of silence while the
    # controller serves, and stop() is noticed within a heartbeat check.
    ctl.heartbeat, ctl.dead_after = 0.5, 1.5
    ctl.arm(("heartbeat-check",), 0.25)
    thread = threading.Thread(target=ctl.serve_forever, name="fuzzed-controller", daemon=True)
    thread.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskmill", "engine", "--no-replace", "--connection-file", str(conn),
         "--property", f"fuzz_probe={probe}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with TaskClient(conn, timeout=10) as tc:
            deadline = time.monotonic() + 60
            while not any(e["pid"] == proc.pid for e in tc.engines()):
                assert time.monotonic() < deadline, "the real engine never registered"
                assert proc.poll() is None
                time.sleep(0.05)
            tid = tc.run(MapTask(os.getpid, depend={"fuzz_probe": probe}))
            deadline = time.monotonic() + 30
            while tid not in tc.queue_status(verbose=True)["succeeded"]:
                assert time.monotonic() < deadline, tc.queue_status(verbose=True)
                time.sleep(0.05)
            assert tc.get_task_result(tid) == proc.pid
            stats = tc.statistics()
            assert stats["refused"].get("internal-error", 0) == 1, stats["refused"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ctl.stop()
        thread.join(10)
    assert not thread.is_alive()


# -- 3. the shared, live cluster -------------------------------------------------------------

# Verbs whose mutations cannot change the shared cluster for the tests after this one (no new
# engines, no cleared results, no engine declared dead, no queued tasks).
LIVE_CLIENT_VERBS = ["hello", "ping", "result", "watch", "wait", "abort", "spin", "status",
                     "engines", "stats", "activity", "task", "no-such-verb"]
LIVE_ENGINE_VERBS = ["hb", "results", "revoked", "interrupt"]
LIVE_MESSAGES = 10_000


def test_fuzz_live_controller(cluster, client):
    info = read_connection_file(cluster.connection_file)
    material = Material(info.key_bytes)
    gen = Generator(material, client_verbs=LIVE_CLIENT_VERBS, engine_verbs=LIVE_ENGINE_VERBS,
                    engine_idents=[b"fz-live-0.t", b"fz-live-1.t"],
                    tids=lambda: [987_654_321])
    c = RandomChooser(random.Random(1234567))
    engines_before = client.engines()
    stats = client.statistics()
    internal_before = stats["refused"].get("internal-error", 0)
    start = stats["messages_in"]

    ctx = zmq.Context()
    try:
        socks = {}
        for port, url in (("client", info.client_url), ("engine", info.engine_url)):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.connect(url)
            socks[port] = s
        sent = 0
        while sent < LIVE_MESSAGES:
            port, _ident, frames = gen.message(c)
            if not frames:
                continue
            # Never a signed submit or register: see LIVE_*_VERBS.
            socks[port].send_multipart(frames)
            sent += 1
            if sent % 500 == 0:  # read what the controller answered, so nothing piles up
                for s in socks.values():
                    while s.poll(0):
                        s.recv_multipart()
        deadline = time.monotonic() + 60
        while client.statistics()["messages_in"] < start + sent:
            assert time.monotonic() < deadline, "the controller did not read every message"
            for s in socks.values():
                while s.poll(0):
                    s.recv_multipart()
            time.sleep(0.05)
    finally:
        ctx.destroy(linger=0)

    stats = client.statistics()
    assert stats["refused"].get("internal-error", 0) == internal_before, stats["refused"]
    assert stats["refused"].get("bad-signature", 0) > 0 and stats["refused"].get("malformed", 0) > 0
    assert client.engines() == engines_before
    q = client.queue_status()
    assert (q["scheduled"], q["pending"]) == (0, 0), q
    tid = client.run(MapTask(pow, (2, 10)))
    assert client.get_task_result(tid, block=True) == 1024
