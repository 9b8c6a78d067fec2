"""Typed records of the engine protocol, both ways (protocol.engine).

    engine: record --to_controller--> header --Wire--> controller: engine_record(kind, header)
    controller: record --to_engine--> header --Wire--> engine: from_controller(header)

The controller turns each engine message into its record (`engine_record`: msgspec `convert`,
which checks every field's type and range while it builds the record); one that does not fit
raises `msgspec.ValidationError` (a `ValueError`) and is dropped and counted as
`bad-engine-message`. The engine reads the controller's messages back the same way
(`from_controller`), refusing (and logging) one that does not fit. The frame count of a
`results` message is checked entry by entry (`result_entry`, raising ProtocolError).

Fields read leniently stay `Any` (a heartbeat's lists, whose malformed items are dropped one
by one, and the flags read with `bool(...)`): their record documents them without refusing
more than before.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from .common import NonNeg, ProtocolError

__all__ = [
    "ENGINE_RECORDS", "TO_ENGINE_RECORDS", "HbAnswer", "Heartbeat", "InterruptTask",
    "Register", "Registered", "Reregister", "ResultEntry", "Results", "Retired", "Revoked",
    "RevokeTask", "Stored", "Tasks", "Welcome", "engine_record", "from_controller", "result_entry",
    "to_controller", "to_engine",
]


# -- engine -> controller ----------------------------------------------------------------------

class Register(msgspec.Struct, frozen=True):
    uuid: str
    ctl_ident: bytes
    res_ident: bytes
    heart_ident: bytes
    hostname: str
    pid: int
    properties: dict[Any, Any] | None = None
    running: Any = None  # [tid, attempt] of the task it runs (malformed: ignored)
    running_for: Any = None  # seconds that task has run here (the engine's monotonic clock)
    finished: Any = None  # [[tid, attempt], ...] of results it keeps (malformed: ignored)
    t: Any = None  # echoed in `registered`


class Heartbeat(msgspec.Struct, frozen=True):
    """`hb`: what the engine holds. Malformed items are dropped one by one (see
    validation.pairs), so these fields are read leniently."""

    held: Any = None
    unacked: Any = None
    current: Any = None
    mseq: Any = None
    missing: Any = None
    t: Any = None  # echoed
    gen: Any = None  # echoed in `reregister`


class Revoked(msgspec.Struct, frozen=True):
    """The answer to a `revoke`: `ok` if the engine gave the attempt back."""

    tid: int
    attempt: int
    ok: Any = False  # (read as a flag)


class ResultEntry(msgspec.Struct, frozen=True):
    """One result of a `results` message; its `n` payload frames follow in order."""

    tid: int
    attempt: int
    status: str
    n: NonNeg = 0
    kind: str = "map"
    duration: float | None = None
    stdout: str = ""
    stderr: str = ""
    error: dict[str, Any] | None = None  # (kept as sent: see ErrorInfo)
    pmac: bytes | None = None
    properties: dict[Any, Any] | None = None  # (an engine's own properties, keys as it set)


class Results(msgspec.Struct, frozen=True):
    """`results`: the entries are read one at a time (`result_entry`), in order: those before
    a malformed one are taken, the message is refused from there on."""

    results: list[Any]


class Retired(msgspec.Struct, frozen=True):
    """Told to retire, the engine holds nothing and stops now."""


class Leaving(msgspec.Struct, frozen=True):
    """Stopped (SIGTERM), the engine goes, its results sent before: `running` is the
    [tid, attempt] it was running (interrupted, unreported), if any; it started no other
    task it was given (`unstarted`: those it held; read leniently, as a heartbeat's items)."""

    unstarted: Any = None
    running: Any = None


ENGINE_RECORDS: dict[str, type[msgspec.Struct]] = {
    "register": Register, "hb": Heartbeat, "results": Results, "revoked": Revoked,
    "retired": Retired, "leaving": Leaving,
}
ENGINE_TYPES = {v: k for k, v in ENGINE_RECORDS.items()}


def to_controller(record: msgspec.Struct, session: bytes | None) -> dict[str, Any]:
    """The header of an engine's message to the controller, from its record (the engine
    builds each so; the controller reads it back with `engine_record`)."""
    return {"type": ENGINE_TYPES[type(record)], "session": session,
            **msgspec.structs.asdict(record)}


# -- messages to engines -----------------------------------------------------------------------
# The controller builds each as its record (`to_engine`) and the engine reads each into it
# (`from_controller`), so both sides agree on one shape. `session` is the controller's.

class Welcome(msgspec.Struct, frozen=True):
    """The answer to an engine's `hello`: the session to register with."""

    session: bytes


class Registered(msgspec.Struct, frozen=True):
    """The answer to `register`: the engine's id and the cluster's timing and limits."""

    session: bytes
    engineid: NonNeg
    heartbeat: Annotated[float, msgspec.Meta(gt=0)]
    dead_after: Annotated[float, msgspec.Meta(gt=0)]
    max_message: Annotated[int, msgspec.Meta(gt=0)]
    properties: dict[Any, Any] = {}
    t: Any = None  # the register's, echoed (the engine's lease counts from it)
    again: bool = False  # an answer to a repeated register (the engine may have moved)


class HbAnswer(msgspec.Struct, frozen=True):
    """The answer to a heartbeat: results stored (`ack`) or lost (`resend`), the number of the
    last `tasks` message sent (`mseq`), and `retire` once a retiring engine holds nothing."""

    session: bytes
    t: Any = None  # the heartbeat's, echoed: the engine's lease counts from it
    ack: list[tuple[int, int]] = []
    resend: list[tuple[int, int]] = []
    mseq: NonNeg = 0
    retire: bool = False


class Stored(msgspec.Struct, frozen=True):
    """Results stored, sent right after the commit that stored them when their bytes pass
    controller/engines.ACK_AT_ONCE_BYTES (smaller ones wait for the next `hb` answer's `ack`):
    the engine drops them."""

    session: bytes
    ack: list[tuple[int, int]] = []


class Reregister(msgspec.Struct, frozen=True):
    """The controller does not know the engine (it restarted, or declared it dead)."""

    session: bytes
    gen: Any = None  # the heartbeat's registration generation, echoed


class InterruptTask(msgspec.Struct, frozen=True):
    """Interrupt an attempt (`reason`: aborted, or stale after a controller restart)."""

    session: bytes
    tid: int
    attempt: int
    reason: str


class RevokeTask(msgspec.Struct, frozen=True):
    """Give back a buffered attempt, if it has not started (`dseq`: its dispatch number)."""

    session: bytes
    tid: int
    attempt: int
    dseq: int


class Tasks(msgspec.Struct, frozen=True):
    """Numbered tasks: each entry names its `n` payload frames, which follow in order (read
    one by one with the frames: see engine/running.split_tasks). `t`: the time (the engine's
    own) of the latest heartbeat the controller heard from it, so that the engine's lease
    counts from it as from a heartbeat's answer (an idle engine's heartbeats are answered
    only now and then: controller/engine_tasks.py)."""

    session: bytes
    engineid: NonNeg
    mseq: NonNeg
    tasks: list[Any]
    t: Any = None


TO_ENGINE_RECORDS: dict[str, type[msgspec.Struct]] = {
    "welcome": Welcome, "registered": Registered, "hb": HbAnswer, "reregister": Reregister,
    "interrupt": InterruptTask, "revoke": RevokeTask, "tasks": Tasks,
    "stored": Stored,
}
TO_ENGINE_TYPES = {v: k for k, v in TO_ENGINE_RECORDS.items()}


def to_engine(record: msgspec.Struct) -> dict[str, Any]:
    """The header of a message to an engine, from its record."""
    return {"type": TO_ENGINE_TYPES[type(record)], **msgspec.structs.asdict(record)}


def from_controller(header: dict[str, Any]) -> msgspec.Struct:
    """The record of a message from the controller (KeyError for a type that has none;
    msgspec.ValidationError for one that does not fit it)."""
    return msgspec.convert(header, TO_ENGINE_RECORDS[header["type"]])



# -- reading -----------------------------------------------------------------------------------

def engine_record(kind: str, header: dict[str, Any]) -> msgspec.Struct:
    """The record of an engine message's header (KeyError for a type that has none)."""
    return msgspec.convert(header, ENGINE_RECORDS[kind])


def result_entry(entry: Any, pos: int, nframes: int) -> ResultEntry:
    """One entry of a `results` message whose frames start at `pos` of the message's
    `nframes`."""
    e = msgspec.convert(entry, ResultEntry)
    if pos + e.n > nframes:
        raise ProtocolError("a result describes more payload frames than the message has")
    return e
