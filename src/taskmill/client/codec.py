"""The client's codecs: pure functions between tasks and results and what crosses the wire.

Nothing here touches a socket, a thread or the clock:

    BaseTask --encode_task(task, wire, functions)--> Encoded: the spec packed once, frames, size
        (a task and its recovery chain: one *node* per task of the chain; `recovery` in a
         node is the index of the node that recovers it)
    [Encoded, ...] --batch_length--> how many go in one submit message
                   --submit_header--> its header (the packed specs spliced in) and frames
    a ResultsReply or Done record (protocol.replies) + frames --split_results--> (Outcome,
        frames) per taskid
    (Outcome, frames) --decode_result(meta, frames, wire)--> the value, a TaskResult, or a
        raised error
    done {at, results} after `got` taken in --unseen_results--> the new ones, or None (a gap)

Besides, the checks of taskids every verb makes before asking anything (`check_taskid`,
`in_range`), and `refusal`, the error of a request the controller refused.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgpack

from ..arguments import CHUNK_DEPTH, USER_DEPTH, swap_futures
from ..errors import (
    RemoteError,
    RemoteTraceback,
    SerializationError,
    StoreError,
    TaskError,
    controller_error,
)
from ..mapper import run_chunk
from ..protocol import (
    Done,
    ErrorInfo,
    Outcome,
    ProtocolError,
    Refusal,
    ResultsReply,
    fit,
)
from ..task import (
    BaseTask,
    MapTask,
    StringTask,
    TaskResult,
    chain_links,
    normalize_after,
    recovery_chain,
)
from ..wire import (
    MAX_FRAMES,
    FunctionPickles,
    Packed,
    Refused,
    Spliced,
    Wire,
    dumps,
    dumps_arguments,
    frame_len,
    loads,
)

SUBMIT_BATCH = 1000  # tasks in one submit message, at most
# Bytes of a submit message besides its tasks' own (envelope, type, req, rt, key, sid, seq).
SUBMIT_OVERHEAD = 1024
TASKID_LIMIT = 2**63  # taskids are in range(TASKID_LIMIT); any other int is an unknown id
TIME_FORMAT = "%Y/%m/%d %H:%M:%S"
CONTROLLER_DECIDED = ("aborted", "unmet_timeout", "dependency")
METADATA_KEYS = ("engineid", "submitted", "started", "completed", "duration", "stdout", "stderr",
                 "attempts")

NO_ERROR = ErrorInfo("Exception", "")  # (a failed entry without an error: cannot happen)

Entry = tuple[Outcome | None, list[Any]]  # one task's result: (its entry, payload frames)


# -- taskids ---------------------------------------------------------------------------------
def check_taskid(taskid: Any) -> None:
    if isinstance(taskid, bool) or not isinstance(taskid, int):
        raise TypeError(f"a taskid is an int, not {type(taskid).__name__}")


def in_range(taskid: int) -> bool:
    """Whether `taskid` could be a taskid at all; any other int is an unknown id, answered
    here without asking (the controller's ids are 0..2**63-1; a header cannot even carry
    some ints, e.g. 2**64)."""
    return 0 <= taskid < TASKID_LIMIT


def unknown_message(taskid: int) -> str:
    return f"no task with id {taskid}: it is unknown, or its result was cleared"


def unknown_entry(taskid: int) -> Outcome:
    """What the controller says of an unknown id, said here for one that cannot be a taskid."""
    return Outcome(taskid, unknown=True)


def taskid_list(taskids: Any) -> list[int]:
    """An int, a future, or a sequence of them, as a checked list of taskids."""
    if isinstance(taskids, int) or hasattr(taskids, "taskid"):
        items = [taskids]
    else:
        try:
            items = list(taskids)
        except TypeError:
            raise TypeError(f"taskids must be an int, a future, or a sequence of them, not "
                            f"{type(taskids).__name__}") from None
    tids = [getattr(t, "taskid", t) for t in items]
    for t in tids:
        check_taskid(t)
    return tids


def after_ids(after: Any) -> list[int]:
    """`after` for the wire. An id that cannot be a taskid is unknown, like any other unknown
    id, so the task fails with DependencyError; one beyond what a header carries (e.g. 2**64)
    is sent as 2**63, an id that cannot exist either."""
    return [t if -TASKID_LIMIT <= t < TASKID_LIMIT else TASKID_LIMIT
            for t in normalize_after(after)]


# -- replies ---------------------------------------------------------------------------------
def refusal(reply: dict[str, Any]) -> Exception:
    """The error a refused request raises: StoreError when the controller's store could not
    write (the request changed nothing), else TaskError with the controller's reason (a
    refusal that does not fit its record: the ProtocolError saying so)."""
    try:
        r = fit(Refusal, reply, "the controller's refusal of a request")
    except ProtocolError as e:
        return e
    if r.error_type == "StoreError":
        return StoreError(r.error)
    return TaskError(r.error)


def checked(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply, or its refusal raised."""
    if reply.get("ok", True) is False:
        raise refusal(reply)
    return reply


def joined(parts: list[tuple[dict[str, Any], list[Any]]]) -> tuple[dict[str, Any], list[Any]]:
    """The pieces of a reply sent in several messages (`more`), as one reply."""
    header = dict(parts[-1][0])
    header["results"] = [r for h, _ in parts for r in h.get("results") or ()]
    return header, [f for _, fr in parts for f in fr]


def unseen_results(done: dict[str, Any], frames: list[Any],
                   got: int) -> tuple[dict[str, Any], list[Any]] | None:
    """A numbered `done` message (`at`: the number of its first result) after the first
    `got` results were taken in: the results it holds that are new, in order (none: all
    seen, sent again), or None when some before it were lost (its first is beyond `got`)."""
    at = done["at"]
    if at > got:
        return None
    skip = got - at
    if skip == 0:
        return done, frames
    results = done["results"]
    nframes = sum(meta["nframes"] if meta else 0 for meta in results[:skip])
    return {**done, "results": results[skip:]}, frames[nframes:]


def split_results(reply: ResultsReply | Done, frames: list[Any]) -> list[Entry]:
    """A `result` or `wait` reply, or a `done` message, as (entry, frames) per taskid."""
    out: list[Entry] = []
    pos = 0
    for meta in reply.results:
        n = meta.nframes if meta is not None else 0
        out.append((meta, frames[pos:pos + n]))
        pos += n
    return out


# -- tasks -> submit entries -----------------------------------------------------------------
class Encoded:
    """One task ready for a submit message, kept small (a client may queue a million):

    `packed`, its spec as msgpack bytes, packed once here and spliced as they are into the
    message (wire.Spliced: the controller reads the same bytes as if the spec were packed
    with the message); `frames`, its payload frames; `size`, the bytes it adds to that
    message; `synchronous`, whether a node's `depend` is a callable that only the controller
    can judge (run() sends such a task at once); `what`, the task in a few words for errors,
    made when asked from `about` (the MapTask's function or the StringTask's expression: the
    task itself is not kept). `spec, frames = enc` reads it as the pair, the spec unpacked
    again (for tests and the rare reader); `Encoded([spec, frames])` packs one."""

    __slots__ = ("packed", "frames", "size", "synchronous", "about")

    def __init__(self, pair: Sequence[Any], about: Any = None) -> None:
        spec, frames = pair
        self.packed: bytes = msgpack.packb(spec, use_bin_type=True)
        self.frames: list[Any] = frames
        size = len(self.packed)
        for f in frames:
            size += frame_len(f)
        self.size = size
        synchronous = False
        for node in spec["nodes"]:  # (no generator: this is paid per task)
            if node.get("depend") == "callable":
                synchronous = True
        self.synchronous = synchronous
        self.about = about

    def __iter__(self) -> Iterator[Any]:
        yield msgpack.unpackb(self.packed, raw=False, strict_map_key=False)
        yield self.frames

    @property
    def what(self) -> str:
        return describe(self.about)


def describe(about: Any) -> str:
    """A task in a few words, from its function (a MapTask) or expression (a StringTask):
    its repr may hold megabytes of arguments."""
    if isinstance(about, str):
        return f"the StringTask {about[:40] + '...' if len(about) > 40 else about!r}"
    return f"a MapTask calling {getattr(about, '__qualname__', type(about).__name__)}"


def encode_task(task: BaseTask, wire: Wire, functions: FunctionPickles | None = None, *,
                validated: bool = False) -> Encoded:
    """The submit entry and payload frames of `task` and its recovery chain (an `Encoded`
    pair). `wire` signs the payloads (only its key matters); `functions` pickles functions
    once per client. Whatever cannot be sent raises here: TypeError/ValueError/
    SerializationError naming the problem."""
    if not isinstance(task, BaseTask):
        raise TypeError(f"run() takes a StringTask or MapTask, not {type(task).__name__}")
    functions = FunctionPickles() if functions is None else functions
    if task.recovery_task is None:  # the common case: one node
        if not validated:
            task.validate()
        node, frames = encode_node(task, None, wire, functions)
        return packed({"nodes": [node], "after": with_args_from(task.after, [node])}, frames,
                      task)
    chain = recovery_chain(task)
    nodes, frames = [], []
    for t, recovery in zip(chain, chain_links(chain), strict=True):
        t.validate()
        if t is not task and t.after is not None and not (isinstance(t.after, list | tuple)
                                                           and not t.after):
            raise ValueError(
                f"a recovery task's after= ({t.after!r}) cannot be honoured: it runs as soon "
                "as the task it recovers has failed. Put after= on the first task of the "
                "chain, or run the recovery as a task of its own")
        node, node_frames = encode_node(t, recovery, wire, functions)
        nodes.append(node)
        frames.extend(node_frames)
    return packed({"nodes": nodes, "after": with_args_from(task.after, nodes)}, frames, task)


def with_args_from(after: Any, nodes: list[dict[str, Any]]) -> list[int]:
    """The task's `after` ids, and those whose results its nodes take as arguments."""
    ids = after_ids(after)
    for node in nodes:
        for tid in node.get("args_from", ()):
            if tid not in ids:
                ids.append(tid)
    return ids


def encode_node(t: BaseTask, recovery: int | None, wire: Wire,
                functions: FunctionPickles) -> tuple[dict[str, Any], list[Any]]:
    """One task of a chain: its node (`recovery`: the index of the node that recovers it)."""
    string = isinstance(t, StringTask)
    if not string and not isinstance(t, MapTask):  # (no `StringTask | MapTask`: a union a call)
        raise TypeError(f"unknown task type {type(t).__name__}")
    if string:
        check_text(t.expression, f"the expression of {t!r}")
        for name in t.pull:
            check_text(name, f"the pulled name {name!r}")
    args_from: list[int] = []
    if not string:  # (a future's taskid that never came raises its own error)
        depth = CHUNK_DEPTH if t.function is run_chunk else USER_DEPTH
        args, kwargs, args_from = swap_futures(tuple(t.args), t.kwargs, depth)
    try:
        if string:
            ex = {"kind": "string", "expression": t.expression, "pull": list(t.pull)}
            body = dumps(t.push) if t.push else []
        else:
            function = functions.dumps(t.function)
            ex = {"kind": "map", "fn": len(function)}
            body = [*function, *dumps_arguments(args, kwargs)]
    except Exception as e:
        raise SerializationError(
            f"cannot send {t!r}: its function, arguments or pushed values cannot be "
            f"pickled ({type(e).__name__}: {e})") from e
    ex["clear_before"], ex["clear_after"] = t.clear_before, t.clear_after
    node: dict[str, Any] = {
        "exec": ex, "nframes": len(body), "retries": t.retries, "timeout": t.timeout,
        "recovery": recovery, "pmac": wire.payload_mac(body) if body else None,
    }
    if args_from:
        node["args_from"] = args_from
    if isinstance(t.depend, dict):
        try:
            # A copy, as it is now: the request may be sent again after a restart.
            node["depend"] = msgpack.unpackb(msgpack.packb(t.depend, use_bin_type=True),
                                             raw=False, strict_map_key=False)
        except Exception as e:
            raise TypeError(
                f"a dict depend must hold plain values (str without lone surrogates, ints "
                f"of at most 64 bits, floats, bools, None, lists and dicts of those): "
                f"{type(e).__name__}: {e}") from None
    elif t.depend is not None:
        try:
            dframes = dumps(t.depend)
        except Exception as e:
            raise SerializationError(f"cannot pickle depend {t.depend!r}: {e}") from e
        node.update(depend="callable", dframes=len(dframes), dpmac=wire.payload_mac(dframes))
        return node, [*body, *dframes]
    return node, body


def check_text(text: str, what: str) -> None:
    """ValueError if `text` cannot travel in a header (UTF-8: no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} cannot be sent: it holds {text[e.start:e.end]!r} at index {e.start}, a "
            "lone surrogate that UTF-8 cannot encode (typically from bytes decoded with "
            "errors='surrogateescape'); decode it differently or pass it in push=") from None


def packed(spec: dict[str, Any], frames: list[Any], task: BaseTask) -> Encoded:
    """Pack the spec now: what cannot be encoded raises at the call that made the task, never
    later on the I/O thread; its size counts towards the size limit of a message."""
    about = task.function if isinstance(task, MapTask) else getattr(task, "expression", "")
    try:
        return Encoded((spec, frames), about)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"cannot send {describe(about)}: its options cannot be encoded "
                         f"({type(e).__name__}: {e}); ints must fit in 64 bits") from None


def too_big(enc: Encoded, max_message: int, what: str | None = None) -> ValueError | None:
    """The error for a task too large for one message of `max_message` bytes, or None."""
    if enc.size <= max_message - SUBMIT_OVERHEAD and len(enc.frames) < MAX_FRAMES:
        return None
    if enc.size <= max_message - SUBMIT_OVERHEAD:
        return ValueError(
            f"{what or enc.what} is {len(enc.frames):,} payload frames once pickled (an "
            "out-of-band buffer each), more than the controller accepts in one message "
            f"({MAX_FRAMES:,}): nothing was sent. Send fewer large buffers per task")
    return ValueError(
        f"{what or enc.what} is {enc.size:,} bytes once pickled, more than the controller "
        f"accepts in one message ({max_message:,} bytes, with {SUBMIT_OVERHEAD} for the "
        "message's header): nothing was sent. Start the controller with a larger "
        "--max-message-size (Cluster(max_message_size=...)), or send less per task "
        "(e.g. a path to a file the engines can read, or smaller chunks)")


def batch_length(encoded: Iterable[Encoded], budget: int) -> int:
    """How many of `encoded` go in one submit message (at least one, at most SUBMIT_BATCH):
    together at most `budget` bytes and fewer than MAX_FRAMES frames."""
    n = size = frames = 0
    for enc in itertools.islice(encoded, SUBMIT_BATCH):
        nf = len(enc.frames)
        if n and (size + enc.size > budget or frames + nf >= MAX_FRAMES):
            break
        n += 1
        size += enc.size
        frames += nf
    return n


def batches(encoded: Sequence[Encoded], max_message: int) -> list[Sequence[Encoded]]:
    """`encoded` cut into the submit messages they go in."""
    out, i = [], 0
    budget = max_message - SUBMIT_OVERHEAD
    while i < len(encoded):
        n = batch_length(itertools.islice(encoded, i, None), budget)
        out.append(encoded[i:i + n])
        i += n
    return out


def submit_header(batch: Sequence[Encoded], **more: Any) -> tuple[Spliced, list[Any]]:
    """The submit request (header, frames) of one batch, with `more` in its header; the
    tasks' specs go in as they were packed (wire.Spliced)."""
    header = Spliced(type="submit", **more)
    header["tasks"] = Packed([enc.packed for enc in batch])
    return header, [f for enc in batch for f in enc.frames]


# -- result entries -> values ----------------------------------------------------------------
def fmt_time(ts: float | None) -> str:
    return "" if ts is None else time.strftime(TIME_FORMAT, time.localtime(ts))


def rebuild_exception(meta: Outcome, frames: list[Any], wire: Wire) -> BaseException:
    """A failed task's exception: its own pickled one, else a RemoteError saying the same."""
    err = meta.error or NO_ERROR
    tb = err.traceback
    exc: BaseException | None = None
    if err.controller:
        exc = controller_error(err.type, err.message)
    elif err.pickled and frames:
        try:
            wire.check_payload(frames, meta.pmac)
            exc = loads(frames)
        except Exception:  # noqa: BLE001 - fall back to RemoteError below
            exc = None
    if not isinstance(exc, BaseException):
        module = err.module or ""
        type_name = err.type if module in ("builtins", "") else f"{module}.{err.type}"
        exc = RemoteError(type_name, err.message, tb)
    for attr, value in (("engineid", meta.engineid), ("taskid", meta.tid),
                        ("remote_traceback", tb)):
        try:
            setattr(exc, attr, value)
        except Exception:  # noqa: BLE001 - exceptions without a __dict__
            pass
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


def decode_result(meta: Outcome | None, frames: list[Any], wire: Wire) -> Any:
    """A result entry from the controller: the value, a TaskResult, or a raised error."""
    if meta is None:
        return None
    tid = meta.tid
    if meta.unknown:
        raise IndexError(unknown_message(tid))
    status = meta.status
    if status in CONTROLLER_DECIDED:
        raise rebuild_exception(meta, frames, wire)
    failure: BaseException | None = None
    value: Any = None
    if status == "ok":
        if frames:
            try:
                wire.check_payload(frames, meta.pmac)
            except Refused as e:
                raise SerializationError(f"result of task {tid} was refused: {e}") from None
            try:
                value = loads(frames)
            except Exception as e:
                failure = SerializationError(
                    f"the result of task {tid} cannot be unpickled here "
                    f"({type(e).__name__}: {e}); is a module missing on the client?")
    else:
        failure = rebuild_exception(meta, frames, wire)
    if meta.kind == "string":
        return TaskResult(
            value if failure is None else None, failure, taskid=tid,
            engineid=meta.engineid, submitted=fmt_time(meta.submitted),
            completed=fmt_time(meta.completed),
            duration=0.0 if meta.duration is None else meta.duration,
            stdout=meta.stdout, stderr=meta.stderr, attempts=meta.attempts,
        )
    if failure is not None:
        raise failure
    return value
