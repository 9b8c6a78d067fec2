"""Typed records of what a finished task leaves behind and of the controller's statistics
(protocol.results).

    engine results entry --controller/results.py--> stored metadata (ResultMeta, ErrorInfo)
    stored metadata + nframes --a result/wait reply or a done message--> the client reads
        each entry into an Outcome (protocol.replies: Done, ResultsReply)
    controller/views.py --Statistics--> a stats reply --> statistics() (a plain map)

`ResultMeta` (with `ErrorInfo`) is the shape of the metadata the controller stores for a
finished task (results.py builds it as a map; tests convert what it stores into this record).
`Outcome` is one task's entry as a client receives it: the stored metadata with `nframes`
(how many payload frames follow), or just `tid` with `unknown` (never was, or cleared) or
`active` (not finished). `Statistics` is what `statistics()` answers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .common import NonNeg

__all__ = ["ErrorInfo", "Outcome", "ResultMeta", "Statistics"]


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


class Statistics(msgspec.Struct, frozen=True):
    """What `statistics()` answers (controller/views.py builds it; it travels, and clients
    get it, as a plain map: `as_map`). `taskmill status`, /metrics and the dashboard read it."""

    time: float  # the controller's wall clock
    uptime: float
    messages_in: int
    messages_out: int
    submitted: int
    finished: int
    engines_died: int
    engines_retired: int  # engines stopped on purpose once they held nothing (retire)
    engines_moved: int  # live engines that moved to new connections (their old ones deaf)
    tasks_lost_in_transit: int  # dispatches an engine never got (queued again, not counted)
    argument_bytes_out: int  # results (and put values) sent to engines as task arguments
    refused: dict[str, int]  # refused messages by reason
    revokes_sent: int
    revokes_granted: int
    queue: dict[str, Any]  # the queue status
    engines: list[dict[str, Any]]  # the engine table, with held tasks and last heartbeat
    tasks_per_second: float  # over the last minute
    durations: dict[str, Any]  # the task-duration histogram
    # Results streamed to clients (controller/credit.py): sent and not acknowledged (at most
    # a window per client), and their bytes; waiting for credit (in the store), and of those
    # the ones whose payload waits in memory; sent again because a client lost them.
    results_in_flight_to_clients: int = 0
    result_bytes_in_flight_to_clients: int = 0
    results_held_for_clients: int = 0
    results_in_memory_for_clients: int = 0
    results_sent_again_to_clients: int = 0
    clients_watching: int = 0  # clients whose watches wait for tasks (a `bye` ends them)
    # Queued tasks kept only in the store (controller/backlog.py), and the tasks held in
    # memory (queued or running: at most the window, `--memory-budget`; None: no window).
    backlog: int = 0
    queued_in_memory: int = 0
    queue_window: int | None = None

    def as_map(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)
