"""Typed records of the messages the controller receives and sends to engines, and of the
result metadata it keeps.

The Wire (wire/) hands the controller each header as a msgpack map, signed and fresh. The
controller then turns it into the record of its verb (`client_record`, `engine_record`: msgspec
`convert`, which checks every field's type and range while it builds the record) and works on
the record's attributes from then on. A header that does not fit its record raises
`msgspec.ValidationError` (a `ValueError`): the controller refuses the message exactly as it
refuses any other bad one (a client gets an error reply, an engine's message is dropped and
counted as `bad-engine-message`). Fields a record does not name (`type`, `sid`, `seq`,
`session`, `req`, `rt`, ...) are ignored here: the Wire and the controller check those first.

What a type cannot say stays as code beside the records: how the nodes of a task index each
other and the payload frames (`node_rules`), and the frame count of a `results` message
(`result_entry`). Both raise `ProtocolError` (a `ValueError`, so refused the same way).

Fields read leniently today stay `Any` (a heartbeat's lists, whose malformed items are dropped
one by one, and the flags read with `bool(...)`): their record documents them without refusing
more than before.

The messages the controller sends to engines have records too (`Welcome` ... `Tasks`): the
controller builds each header from its record (`to_engine`) and the engine reads it back
(`from_controller`), refusing (and logging) one that does not fit. An engine builds its own
messages from the records the controller reads them into (`to_controller`).

`ResultMeta` (with `ErrorInfo`) is the shape of the metadata the controller stores for a
finished task and returns to clients as a plain map (results.py builds it; tests convert what
it stores into this record). `Statistics` is what `statistics()` answers (views.py builds it
and sends it as a plain map). This module imports nothing of taskmill but `task.MAX_TIMEOUT`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .task import MAX_TIMEOUT

__all__ = [
    "CLIENT_RECORDS", "ENGINE_RECORDS", "Abort", "Activity", "Clear", "EngineExited",
    "ErrorInfo", "Heartbeat", "Lease", "MapExec", "NodeSpec", "NoFields", "ProtocolError",
    "Register", "ResultEntry", "ResultMeta", "Results", "Retire", "Revoked", "Statistics",
    "Status", "StringExec",
    "Submit",
    "TaskQuery", "TaskSpec", "Tids", "ResultQuery", "client_record", "engine_record",
    "node_rules", "result_entry", "TO_ENGINE_RECORDS", "Welcome", "Registered", "HbAnswer",
    "Reregister", "InterruptTask", "RevokeTask", "Tasks", "to_engine", "from_controller",
    "Retired", "to_controller",
]

NonNeg = Annotated[int, msgspec.Meta(ge=0)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT)]


class ProtocolError(ValueError):
    """A header whose fields have the right types but do not fit together."""


# -- client messages ---------------------------------------------------------------------------

class StringExec(msgspec.Struct, tag_field="kind", tag="string", frozen=True):
    """Run `expression` in the engine's namespace; `pull` the names to send back."""

    expression: str
    pull: list[str] = []
    clear_before: bool = False
    clear_after: bool = False


class MapExec(msgspec.Struct, tag_field="kind", tag="map", frozen=True):
    """Call the pickled function in the node's payload; `fn`: how many frames it takes."""

    fn: Annotated[int, msgspec.Meta(gt=0)] | None = None
    clear_before: bool = False
    clear_after: bool = False


class NodeSpec(msgspec.Struct, frozen=True):
    """One node of a task: what to run, its payload and dependency frames, its policies."""

    exec: StringExec | MapExec
    nframes: NonNeg = 0
    dframes: NonNeg = 0
    retries: NonNeg = 0
    recovery: NonNeg | None = None  # (< the task's number of nodes: node_rules)
    timeout: Timeout | None = None
    pmac: bytes | None = None  # (needed with payload frames: node_rules)
    depend: Literal["callable"] | dict[Any, Any] | None = None
    dpmac: bytes | None = None  # (needed by a callable depend: node_rules)
    # Tasks whose results its arguments take (arguments.py); each in the task's `after`.
    args_from: list[NonNeg] = []


class TaskSpec(msgspec.Struct, frozen=True):
    nodes: Annotated[list[NodeSpec], msgspec.Meta(min_length=1)]
    after: list[int] = []


class Submit(msgspec.Struct, frozen=True):
    """`submit`: new tasks (their payload frames follow the header, task after task)."""

    tasks: Annotated[list[TaskSpec], msgspec.Meta(min_length=1)]
    key: str | None = None  # the same key again (after a restart) gets the same taskids
    resent: Any = False  # (read as a flag)
    watch: Any = False  # (read as a flag)
    # The taskids of the tasks, from a lease of this client (leases.py); None: new ids.
    tids: list[NonNeg] | None = None
    release: Any = False  # (a flag) and then give back what is left of the lease


class Lease(msgspec.Struct, frozen=True):
    """`lease`: a block of `n` taskids for this client's later tasks (`run`); `release`:
    what is left of it is given back (n is ignored)."""

    n: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1


class Tids(msgspec.Struct, frozen=True):
    """`watch` and `wait`; a wait's reply may carry results, up to `budget` bytes of them
    (a barrier's: get_task_result then needs no round trip for them)."""

    tids: list[int]
    budget: NonNeg = 0


class ResultQuery(msgspec.Struct, frozen=True):
    """`result`: the results of `tids`, at once or (`block`) when they are all done."""

    tids: list[int]
    block: Any = False  # (read as a flag)


class Clear(msgspec.Struct, frozen=True):
    tids: list[int] | None = None  # None: every finished task


class Abort(msgspec.Struct, frozen=True):
    tid: int


class TaskQuery(msgspec.Struct, frozen=True):
    """`task`: one task's story, for the dashboard."""

    tid: int


class Activity(msgspec.Struct, frozen=True):
    since: NonNeg = 0


class Status(msgspec.Struct, frozen=True):
    verbose: Any = False  # (read as a flag)


class EngineExited(msgspec.Struct, frozen=True):
    """From a local nanny: engine process `pid` exited with `status`."""

    pid: int
    status: int


class Retire(msgspec.Struct, frozen=True):
    """`retire`: take these engines out of scheduling and stop each once it holds nothing
    (controller/engines.py; a shrinking cluster's way to stop engines without losing a task)."""

    engines: list[int]


class Put(msgspec.Struct, frozen=True):
    """`put`: one value, pickled in the frames that follow, stored once as a finished
    result (client/objects.py's ObjectRef names it)."""

    pmac: bytes
    key: str | None = None  # as a submit's: the same key again gets the same taskid
    resent: Any = False


class Ack(msgspec.Struct, frozen=True):
    """`ack`: the client took in its first `got` results of `done` messages (their `at`
    numbers them); `lost`: and missed the ones after (controller/credit.py). No reply."""

    got: NonNeg
    lost: Any = False  # (read as a flag)


class NoFields(msgspec.Struct, frozen=True):
    """hello, ping, spin, engines, stats, bye: nothing beyond the common fields."""


CLIENT_RECORDS: dict[str, type[msgspec.Struct]] = {
    "hello": NoFields, "ping": NoFields, "submit": Submit, "result": ResultQuery,
    "watch": Tids, "wait": Tids, "abort": Abort, "spin": NoFields, "status": Status,
    "clear": Clear, "engines": NoFields, "stats": NoFields, "activity": Activity,
    "task": TaskQuery, "engine_exited": EngineExited, "put": Put, "retire": Retire,
    "lease": Lease, "release": Lease, "ack": Ack, "bye": NoFields,
}


# -- engine messages ---------------------------------------------------------------------------

class Register(msgspec.Struct, frozen=True):
    uuid: str
    ctl_ident: bytes
    res_ident: bytes
    heart_ident: bytes
    hostname: str
    pid: int
    properties: dict[Any, Any] | None = None
    running: Any = None  # [tid, attempt] of the task it runs (malformed: ignored)
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


ENGINE_RECORDS: dict[str, type[msgspec.Struct]] = {
    "register": Register, "hb": Heartbeat, "results": Results, "revoked": Revoked,
    "retired": Retired,
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
    one by one with the frames: see engine/running.split_tasks)."""

    session: bytes
    engineid: NonNeg
    mseq: NonNeg
    tasks: list[Any]


TO_ENGINE_RECORDS: dict[str, type[msgspec.Struct]] = {
    "welcome": Welcome, "registered": Registered, "hb": HbAnswer, "reregister": Reregister,
    "interrupt": InterruptTask, "revoke": RevokeTask, "tasks": Tasks,
}
TO_ENGINE_TYPES = {v: k for k, v in TO_ENGINE_RECORDS.items()}


def to_engine(record: msgspec.Struct) -> dict[str, Any]:
    """The header of a message to an engine, from its record."""
    return {"type": TO_ENGINE_TYPES[type(record)], **msgspec.structs.asdict(record)}


def from_controller(header: dict[str, Any]) -> msgspec.Struct:
    """The record of a message from the controller (KeyError for a type that has none;
    msgspec.ValidationError for one that does not fit it)."""
    return msgspec.convert(header, TO_ENGINE_RECORDS[header["type"]])


# -- result metadata ---------------------------------------------------------------------------

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


# -- statistics -------------------------------------------------------------------------------

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

    def as_map(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


# -- decoding, and the rules a type cannot state -----------------------------------------------

def client_record(kind: str, header: dict[str, Any]) -> msgspec.Struct:
    """The record of a client verb's header (KeyError for a verb that has none)."""
    return msgspec.convert(header, CLIENT_RECORDS[kind])


def engine_record(kind: str, header: dict[str, Any]) -> msgspec.Struct:
    """The record of an engine message's header (KeyError for a type that has none)."""
    return msgspec.convert(header, ENGINE_RECORDS[kind])


def node_rules(task: TaskSpec, node: NodeSpec, pos: int, nframes: int) -> None:
    """What one node must satisfy beyond its types; `pos`: where its frames start among the
    message's `nframes`."""
    if node.recovery is not None and node.recovery >= len(task.nodes):
        raise ProtocolError("recovery must index a node of the same task")
    if pos + node.nframes + node.dframes > nframes:
        raise ProtocolError("the tasks describe more payload frames than the message has")
    ex = node.exec
    if type(ex) is MapExec:
        if ex.fn is not None and ex.fn > node.nframes:
            raise ProtocolError("fn must count the function's frames (an int within nframes)")
        if node.nframes == 0:
            raise ProtocolError("a map task needs its function's payload frames")
    if node.nframes and node.pmac is None:
        raise ProtocolError("a node with payload frames needs their pmac (bytes)")
    if node.depend == "callable" and node.dpmac is None:
        raise ProtocolError("a callable depend needs its dpmac (bytes)")
    if node.args_from and (type(ex) is not MapExec or not set(node.args_from) <= set(task.after)):
        raise ProtocolError("args_from names tasks of the node's map call, each in the task's "
                            "after")


def result_entry(entry: Any, pos: int, nframes: int) -> ResultEntry:
    """One entry of a `results` message whose frames start at `pos` of the message's
    `nframes`."""
    e = msgspec.convert(entry, ResultEntry)
    if pos + e.n > nframes:
        raise ProtocolError("a result describes more payload frames than the message has")
    return e
