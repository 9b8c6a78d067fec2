"""Typed records of what a finished task leaves behind (protocol.results).

    engine results entry --controller/results.py--> stored metadata (ResultMeta, ErrorInfo)
    stored metadata + nframes --a result/wait reply or a done message--> the client reads
        each entry into an Outcome (protocol.replies: Done, ResultsReply)

`ResultMeta` (with `ErrorInfo`) is the shape of the metadata the controller stores for a
finished task (results.py builds it as a map; tests convert what it stores into this record).
`Outcome` is one task's entry as a client receives it: the stored metadata with `nframes`
(how many payload frames follow), or just `tid` with `unknown` (never was, or cleared) or
`active` (not finished). (The controller's views, statistics among them: protocol.views.)
"""

from __future__ import annotations

import msgspec

from .common import NonNeg

__all__ = ["ErrorInfo", "Outcome", "ResultMeta"]


class ErrorInfo(msgspec.Struct, frozen=True):
    """Why a task failed: from the engine (the exception, perhaps pickled in the frames) or
    written by the controller itself (`controller`: EngineDied, TaskTimeout, ...)."""

    type: str
    message: str
    traceback: str = ""
    module: str | None = None
    pickled: bool = False
    controller: bool = False


class ResultMeta(msgspec.Struct, frozen=True):
    """What the controller stores for a finished task (returned to clients as a map, with
    `nframes` added: how many payload frames follow)."""

    tid: int
    engineid: int | None
    attempts: int
    submitted: float
    completed: float
    started: float | None
    status: str  # ok, error, aborted, unmet_timeout, dependency
    kind: str
    duration: float | None
    stdout: str
    stderr: str
    error: ErrorInfo | None = None
    pmac: bytes | None = None


class Outcome(msgspec.Struct, frozen=True):
    """One task's entry in a `result` or `wait` reply or a `done` message (client side): its
    stored metadata (ResultMeta's fields) and `nframes`; an `unknown` or `active` entry has
    only its `tid`."""

    tid: int
    nframes: NonNeg = 0
    unknown: bool = False  # never was, or its result was cleared
    active: bool = False  # not finished (a watch cannot get one)
    status: str = ""  # ok, error, rejected, aborted, unmet_timeout, dependency
    kind: str = "map"
    engineid: int | None = None
    attempts: int = 0
    submitted: float | None = None
    started: float | None = None
    completed: float | None = None
    duration: float | None = None
    stdout: str = ""
    stderr: str = ""
    error: ErrorInfo | None = None
    pmac: bytes | None = None
