"""Typed records of the controller's read-only views: the queue, the engines, one task, the
recent activity, and the statistics that hold them (protocol.views).

    controller/views.py, stats.py --build the record--> .as_map() (plain maps, for the wire)
        --a status, engines, task, activity or stats reply--> client: from_reply converts the
        payload into its record (every field checked) --.as_map()--> the plain map a user gets
        (queue_status(), engines(), task_info(), activity(), statistics(): the public shapes)

The controller builds each view as its record (a misspelt or missing field is a TypeError
where it is built) and sends it as plain maps (`as_map`: the Wire packs only builtins); the
client reads each reply into its record, so a payload that does not fit is refused as a
ProtocolError naming the field (`$.task.story[0].why`), and hands the caller the record as
plain maps again, with the keys it always had. One task's view is a union tagged by its
`state`: each state has exactly its own fields (an unknown task only its `tid`).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from .common import NonNeg
from .results import ErrorInfo

__all__ = [
    "ActivitySnapshot", "AttemptRow", "Durations", "EngineRow", "EngineStats", "FailureRow",
    "QueueStatus", "Statistics", "StoryEntry", "TaskFailed", "TaskInfo", "TaskPending",
    "TaskScheduled", "TaskSucceeded", "TaskUnknown", "TaskView", "builtins",
]


# Rows of a series, as lists (the maps a user gets keep lists): [second, value, ...].
PerSecondRow = Annotated[list[int], msgspec.Meta(min_length=2, max_length=2)]
QueueRow = Annotated[list[int], msgspec.Meta(min_length=3, max_length=3)]
# [upper bound (None: +Inf), count]
Bucket = Annotated[list[int | float | None], msgspec.Meta(min_length=2, max_length=2)]


def builtins(record: msgspec.Struct) -> Any:
    """A record (and the records within it) as plain maps and lists; bytes stay bytes."""
    return msgspec.to_builtins(record, builtin_types=(bytes, bytearray, memoryview))


class QueueStatus(msgspec.Struct, frozen=True):
    """`queue_status()` (a `status` reply; `queue` of the statistics): how many tasks are
    scheduled (waiting in the controller), pending (on an engine), succeeded and failed, or
    (verbose) which: the taskids of each."""

    scheduled: NonNeg | list[NonNeg]
    pending: NonNeg | list[NonNeg]
    succeeded: NonNeg | list[NonNeg]
    failed: NonNeg | list[NonNeg]

    def as_map(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


class EngineRow(msgspec.Struct, frozen=True, kw_only=True):
    """One engine of an `engines` reply (controller/views.engine_table; `engines()` gives
    each as a map: `as_map`)."""

    engineid: NonNeg
    hostname: str
    pid: int
    properties: dict[Any, Any] | None
    state: str  # idle, busy, retiring, dead, retired
    tasks_done: NonNeg
    failures: NonNeg
    capacity: NonNeg  # tasks it may hold now (running and buffered)
    idle_since: float | None  # the controller's wall clock; None unless idle
    left: bool = False  # it said it was stopping (SIGTERM): a local nanny does not restart it

    def as_map(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


class EngineStats(EngineRow, frozen=True, kw_only=True):
    """One engine of the statistics: its row, the tasks it holds and its last heartbeat."""

    current_task: int | None  # the task it runs (the first it holds)
    held: list[NonNeg]  # the taskids it holds, in dispatch order
    last_heartbeat_ago: float  # seconds


# -- one task (`task_info()`), by its state ---------------------------------------------------

class StoryEntry(msgspec.Struct, frozen=True):
    """One move of a task in the scheduler (`event`, `from` state, `to` state, `why`)."""

    event: str
    before: str = msgspec.field(name="from")
    to: str
    why: str


class TaskView(msgspec.Struct, frozen=True, tag_field="state"):
    """One task's view; its `state` is the record's tag (TaskInfo: one record a state)."""

    tid: int

    @property
    def state(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]

    def as_map(self) -> dict[str, Any]:
        return builtins(self)


class TaskUnknown(TaskView, frozen=True, tag="unknown"):
    """Never submitted, or its result was cleared."""


class TaskActive(TaskView, frozen=True):
    """A task not finished: its engine, attempts and times so far, never its payload."""

    engineid: int | None
    attempts: NonNeg
    submitted: float | None
    started: float | None  # (pending only)
    kind: str | None  # map or string (None: the task's spec is not at hand)
    story: list[StoryEntry]


class TaskScheduled(TaskActive, frozen=True, tag="scheduled", omit_defaults=True):
    """Waiting in the controller (`backlog`: only in the store, beyond the queue window;
    `leased`: a taskid run() numbered from its client's lease and not stored yet: unfinished
    until it is, unknown if it is given back unused; each said only when true)."""

    backlog: bool = False
    leased: bool = False


class TaskPending(TaskActive, frozen=True, tag="pending"):
    """On an engine: running, or buffered behind its running task."""


class TaskFinished(TaskView, frozen=True):
    """A finished task: its stored metadata (ResultMeta's fields but `pmac`) and story."""

    engineid: int | None
    attempts: NonNeg
    submitted: float
    completed: float
    started: float | None
    status: str  # ok, error, aborted, unmet_timeout, dependency
    kind: str
    duration: float | None
    stdout: str
    stderr: str
    # Kept as stored (an engine's error and the controller's own have different fields, and
    # a user gets only those it has), and checked against ErrorInfo.
    error: dict[str, Any] | None
    story: list[StoryEntry]

    def __post_init__(self) -> None:
        if self.error is not None:
            try:
                msgspec.convert(self.error, ErrorInfo)
            except msgspec.ValidationError as e:
                raise ValueError(f"its `error` does not fit ErrorInfo: {e}") from None


class TaskSucceeded(TaskFinished, frozen=True, tag="succeeded"):
    """Finished ok."""


class TaskFailed(TaskFinished, frozen=True, tag="failed"):
    """Finished with any error (the task's, or one the controller wrote: `error.controller`)."""


TaskInfo = TaskUnknown | TaskScheduled | TaskPending | TaskSucceeded | TaskFailed


# -- the recent activity (stats.RecentActivity; the dashboard's) -------------------------------

class AttemptRow(msgspec.Struct, frozen=True):
    """One attempt of a task on an engine: open (`end` None, status `running`) or finished
    (ok, error, rejected, moved, died, aborted, ...), numbered by `seq` once it ends."""

    seq: NonNeg
    tid: int
    engineid: int
    attempt: int
    start: float
    end: float | None
    status: str


class FailureRow(msgspec.Struct, frozen=True):
    """One of the latest failed tasks (its error's type and message, cut short)."""

    tid: int
    engineid: int | None
    time: float
    status: str
    type: str
    message: str


class ActivitySnapshot(msgspec.Struct, frozen=True):
    """An `activity` reply: what a task stream and its plots need, from attempt `since` on."""

    time: float  # the controller's wall clock
    started: float  # when the controller started (a new value: it restarted)
    seq: NonNeg  # the number of the newest finished attempt
    attempts: list[AttemptRow]  # finished, numbered above `since`, oldest first
    running: list[AttemptRow]  # open now
    failures: list[FailureRow]  # the latest failed tasks, oldest first
    finished_per_second: list[PerSecondRow]  # [second, tasks finished]
    queue_per_second: list[QueueRow]  # [second, scheduled, pending]

    def as_map(self) -> dict[str, Any]:
        return builtins(self)


# -- the statistics ----------------------------------------------------------------------------

class Durations(msgspec.Struct, frozen=True):
    """The task-duration histogram: `buckets`, [upper bound, durations <= it] pairs,
    cumulative (the last bound None: +Inf); their `sum` and `count`."""

    buckets: list[Bucket]
    sum: float
    count: NonNeg

    def as_map(self) -> dict[str, Any]:
        return builtins(self)


class Statistics(msgspec.Struct, frozen=True):
    """What `statistics()` answers (controller/views.py builds it; it travels, and clients
    get it, as plain maps: `as_map`). `taskmill status`, /metrics and the dashboard read it."""

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
    queue: QueueStatus  # (counts)
    engines: list[EngineStats]  # the engine table, with held tasks and last heartbeat
    tasks_per_second: float  # over the last minute
    durations: Durations  # the task-duration histogram
    # Results streamed to clients (controller/credit.py): sent and not acknowledged (at most
    # a window per client), and their bytes; waiting for credit (in the store), and of those
    # the ones whose payload waits in memory; sent again because a client lost them; read
    # back from the store to be sent (they waited without their payload, or went again).
    results_in_flight_to_clients: int = 0
    result_bytes_in_flight_to_clients: int = 0
    results_held_for_clients: int = 0
    results_in_memory_for_clients: int = 0
    results_sent_again_to_clients: int = 0
    results_read_back_for_clients: int = 0
    clients_watching: int = 0  # clients whose watches wait for tasks (a `bye` ends them)
    # Clients (controller/clients.py): heard from and not gone; forgotten for their silence
    # since the start; the requests of all clients that wait for tasks (watches included).
    clients: int = 0
    clients_forgotten: int = 0
    requests_waiting: int = 0
    # Queued tasks kept only in the store (controller/backlog.py), and the tasks held in
    # memory (queued or running: at most the window, `--memory-budget`; None: no window),
    # their payload bytes (of those of 1 KiB or more) and the window's bytes (None: none).
    backlog: int = 0
    queued_in_memory: int = 0
    queue_window: int | None = None
    payload_bytes_in_memory: int = 0
    queue_window_bytes: int | None = None
    # Heartbeats of idle engines left unanswered (an answer only now and then: see
    # controller/engine_tasks.py `heartbeat`).
    heartbeats_unanswered: int = 0
    # Requests sent again after a broken connection (abort, clear, retire) answered as the
    # first time, not carried out again (controller/control_verbs.py).
    answers_given_again: int = 0
    # Commits the store failed (disk full, locked, I/O error: each retry counts; submits
    # meanwhile are refused with StoreError, everything else waits until it writes again).
    store_commits_failed: int = 0
    # Whether the store takes work now: None while it writes; else why not (its last commit's
    # error, or its file deleted or replaced: new tasks are refused until it is fixed), and
    # for how many seconds its commits have failed (None: they do not; its file is gone).
    store_problem: str | None = None
    store_down_for: float | None = None

    def as_map(self) -> dict[str, Any]:
        return builtins(self)
