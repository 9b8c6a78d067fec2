"""Typed records of the requests a client sends the controller (protocol.requests).

Both sides use the same records, so they cannot drift apart:

    client: record(fields) --to_request--> header {type, **fields} --Wire--> controller
    controller: header --client_record(kind, header)--> the record its verb works on

The client builds each request from its record (`to_request`: the record's fields as a map,
under the verb's `type`; the connection then adds `req`, `rt`, `session` and a submit's
`key`). Building a record does not check its fields' types (msgspec checks on conversion,
not on construction), so a submit's tasks stay the plain maps `client/codec.py` packed and
sized: the controller's `client_record` (msgspec `convert`) checks every field's type and
range while it builds the record, and raises `msgspec.ValidationError` (a `ValueError`) for
a header that does not fit; the controller refuses it with an error reply. Fields a record
does not name (`type`, `sid`, `seq`, `session`, `req`, `rt`, ...) are ignored here: the Wire
and the controller check those first.

What a type cannot say stays as code beside the records: how the nodes of a task index each
other and the payload frames (`node_rules`, raising ProtocolError). Fields read leniently
stay `Any` (the flags read with `bool(...)`): their record documents them without refusing
more than before.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .common import NonNeg, ProtocolError, Timeout

__all__ = [
    "CLIENT_RECORDS", "REQUEST_TYPES", "Abort", "Ack", "Bye", "Activity", "Clear", "EngineExited", "Lease",
    "MapExec", "NoFields", "NodeSpec", "Put", "ResultQuery", "Retire", "Status", "StringExec",
    "Submit", "TaskQuery", "TaskSpec", "Tids", "client_record", "node_rules", "to_request",
]


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
    key: str = ""  # sent again with the same key: answered with the block granted first
    resent: Any = False  # (read as a flag)


class Tids(msgspec.Struct, frozen=True):
    """`watch` and `wait`; a wait's reply may carry results, up to `budget` bytes of them
    (a barrier's: get_task_result then needs no round trip for them)."""

    tids: list[int]
    budget: NonNeg = 0


class ResultQuery(msgspec.Struct, frozen=True):
    """`result`: the results of `tids`, at once or (`block`) when they are all done."""

    tids: list[int]
    block: Any = False  # (read as a flag)


# `key` and `resent` of the requests that may not be carried out twice (clear, abort, retire,
# spin): the client's key for the request (its id and the request's number), and whether it is
# sent again because its connection broke, or the controller restarted, before the answer
# came: then the answer kept for that key is given again (controller/control_verbs.py).


class Clear(msgspec.Struct, frozen=True):
    tids: list[int] | None = None  # None: every finished task
    key: str = ""
    resent: bool = False


class Abort(msgspec.Struct, frozen=True):
    tid: int
    key: str = ""
    resent: bool = False


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


class Spin(msgspec.Struct, frozen=True):
    """`spin`: a scheduling pass now (`key`, `resent`: as clear's)."""

    key: str = ""
    resent: bool = False


class Retire(msgspec.Struct, frozen=True):
    """`retire`: take these engines out of scheduling and stop each once it holds nothing
    (controller/engines.py; a shrinking cluster's way to stop engines without losing a task)."""

    engines: list[int]
    key: str = ""
    resent: bool = False


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
    """ping, engines, stats: nothing beyond the common fields."""


class Hello(msgspec.Struct, frozen=True):
    """`hello`: answered with the controller's version and limits. `owner`: the client's
    key prefix (its requests' keys begin with it), which claims the run() leases it held
    before a controller restart."""

    owner: str = ""


class Bye(msgspec.Struct, frozen=True):
    """`bye`: this receive socket is done (closed, or left for new connections). No reply.
    `keys`, from a client closed for good: the prefix of its submit keys, which it will never
    send again (the controller's store can forget them: store/keys.py). `to`: the client's
    new receive socket, which takes over its run() leases (its connection broke)."""
    keys: str = ""
    to: bytes = b""


CLIENT_RECORDS: dict[str, type[msgspec.Struct]] = {
    "hello": Hello, "ping": NoFields, "submit": Submit, "result": ResultQuery,
    "watch": Tids, "wait": Tids, "abort": Abort, "spin": Spin, "status": Status,
    "clear": Clear, "engines": NoFields, "stats": NoFields, "activity": Activity,
    "task": TaskQuery, "engine_exited": EngineExited, "put": Put, "retire": Retire,
    "lease": Lease, "release": Lease, "ack": Ack, "bye": Bye,
}


class Release(Lease, frozen=True):
    """`release`: what is left of this client's lease goes back (read as a Lease)."""


class Ping(NoFields, frozen=True):
    """`ping` (and the I/O thread's keep-alive)."""


class EnginesQuery(NoFields, frozen=True):
    """`engines`: the engine table."""


class StatsQuery(NoFields, frozen=True):
    """`stats`: the controller's statistics."""


class Watch(Tids, frozen=True):
    """`watch`: a `done` message for each task as it finishes."""


class Wait(Tids, frozen=True):
    """`wait`: one reply once every task is done (with results up to `budget` bytes)."""


# The verb each request record is sent as (a subclass reads back as its parent's record).
REQUEST_TYPES: dict[type[msgspec.Struct], str] = {
    Submit: "submit", ResultQuery: "result", Watch: "watch", Wait: "wait", Abort: "abort",
    Status: "status", Clear: "clear", Activity: "activity", TaskQuery: "task",
    EngineExited: "engine_exited", Put: "put", Retire: "retire", Lease: "lease",
    Release: "release", Ping: "ping", Hello: "hello", Spin: "spin", EnginesQuery: "engines",
    StatsQuery: "stats", Ack: "ack", Bye: "bye",
}


def to_request(record: msgspec.Struct) -> dict[str, Any]:
    """The header of a client's request, from its record (the controller reads it back with
    `client_record`). Every field is sent, defaults too, so the two sides agree on each."""
    return {"type": REQUEST_TYPES[type(record)], **msgspec.structs.asdict(record)}




# -- reading, and the rules a type cannot state -----------------------------------------------

def client_record(kind: str, header: dict[str, Any]) -> msgspec.Struct:
    """The record of a client verb's header (KeyError for a verb that has none)."""
    return msgspec.convert(header, CLIENT_RECORDS[kind])


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
