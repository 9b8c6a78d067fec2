"""What a verb asks its front to do: requests and the other steps, as plain values.

A verb (see `verbs.py`) is a generator that yields these and is sent what each came to:

    verb --Request(header, frames, read, ...)--> front sends it, waits its own way for the
         <--read(record, frames)-------------- reply (or throws the error into the verb)
    verb --WaitFor(futs, timeout, each)------> front waits for task futures, calls `each`
         <--the futures still unfinished------ as each finishes, in the caller's thread
    verb --Abort(futs) / Adopt(futs) / Follow(futs) / NextDone() / Emit(value) / Settle()--> ...

The blocking front (`backend.Backend.run`) carries a step out by blocking the caller's
thread; the asyncio front (`aio.py`) by awaiting. Nothing here does I/O: the builders at the
end are the one-request verbs, each a Request that says what to send and how to read the
reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..defaults import ENGINE_GONE_STATES
from ..errors import too_slow
from ..protocol import Abort as AbortRequest
from ..protocol import (
    AbortReply,
    Activity,
    EnginesQuery,
    Retire,
    Spin,
    StatsQuery,
    Status,
    TaskQuery,
    from_reply,
    to_request,
)
from .codec import check_taskid, in_range, unknown_message

Reader = Callable[[Any, list[Any]], Any]  # (the reply's record, its frames) -> the result


def whole_reply(reply: Any, frames: list[Any]) -> tuple[Any, list[Any]]:
    return reply, frames


class Request:
    """One request: what to send and how to read the reply's record (`answer`; a refusal is
    raised, never read).

    A quick request (`blocking=False`) waits for its answer while the controller is heard, or
    silent for less than `reconnect_timeout` (connection.quick_wait); past it,
    ControllerUnreachable; inside a blocking verb, no longer than the verb's own `timeout=`
    (`Deadline`: then the builtin TimeoutError). A blocking verb's request (`blocking=True`: its answer may take as
    long as tasks take) waits until the controller is unreachable or the caller's own
    `timeout` has passed (then the builtin TimeoutError naming `what`; nothing is changed).
    `interrupted`, if given, is told the reply's record when a blocking caller is interrupted
    (Ctrl-C) in the send, the wait or the reading, if the reply comes within a moment: to
    learn what the controller did anyway (the asyncio front has no use for it yet: none of
    its verbs aborts what a cancelled submit sent)."""

    __slots__ = ("header", "frames", "read", "blocking", "timeout", "what", "interrupted")

    def __init__(self, header: dict[str, Any], frames: Sequence[Any] = (), *,
                 read: Reader = whole_reply, blocking: bool = False,
                 timeout: float | None = None, what: str = "",
                 interrupted: Callable[[Any], None] | None = None) -> None:
        self.header = header
        self.frames = frames
        self.read = read
        self.blocking = blocking
        self.timeout = timeout
        self.what = what or header["type"]
        self.interrupted = interrupted

    def answer(self, reply: dict[str, Any], frames: list[Any]) -> Any:
        """What the reply (checked: not a refusal) comes to: read from its record, once it
        fits (else ProtocolError, naming the field that does not)."""
        return self.read(from_reply(self.header["type"], reply), frames)


class WaitFor:
    """Wait until every future of `futs` is done, or `timeout` seconds (None: no limit);
    `each(fut)` is called in the caller's thread as each one finishes. Comes to the list of
    those still unfinished."""

    __slots__ = ("futs", "timeout", "each")

    def __init__(self, futs: Sequence[Any], timeout: float | None,
                 each: Callable[[Any], None] | None = None) -> None:
        self.futs = futs
        self.timeout = timeout
        self.each = each


class Abort:
    """Abort the unfinished tasks of these TaskFutures and these taskids (a call that ended
    early), waiting a little for the controller to hear it (see Backend.abort_futures).
    Comes to None; a failure to abort is not raised (the error that ended the call is)."""

    __slots__ = ("futs", "tids")

    def __init__(self, futs: Sequence[Any], tids: Sequence[int] = ()) -> None:
        self.futs = futs
        self.tids = tids


class Deadline(NamedTuple):
    """A blocking verb's own `timeout=`, which bounds each of its steps (a quick request in a
    map, run()'s settling, a wait): past it the builtin TimeoutError, not the longer wait of
    a quick request through a controller's restart. `at`: monotonic; `what`: the verb."""

    at: float
    timeout: float
    what: str
    aborts: bool  # (whatever ends the verb early aborts its tasks: a map, run_all)

    @classmethod
    def of(cls, timeout: Any, what: str, aborts: bool = False) -> Deadline | None:
        """None without a timeout, or with one the verb refuses itself (check_seconds)."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not timeout >= 0:
            return None
        return cls(time.monotonic() + timeout, timeout, what, aborts)

    def bound(self, wait: float | None) -> tuple[float, bool]:
        """`wait` cut to what is left of the verb's time, and whether that is what binds."""
        left = max(self.at - time.monotonic(), 0.0)
        return (left, True) if wait is None or left < wait else (wait, False)

    def error(self) -> TimeoutError:
        if self.aborts:
            return TimeoutError(f"{self.what} did not finish within {self.timeout:g}s "
                                "(timeout=); the tasks it had sent are aborted")
        return too_slow(self.what, self.timeout)


class Settle:
    """Send the tasks of run() queued in this client, give back the rest of its lease, and
    wait until they are stored (runs.py); a refusal is raised. Comes to None. (The fronts
    do this around every call but run().)"""

    __slots__ = ()


class Adopt:
    """These futures as the front hands futures to its caller (the blocking front: as they
    are; the asyncio front: asyncio futures). Comes to that list."""

    __slots__ = ("futs",)

    def __init__(self, futs: Sequence[Any]) -> None:
        self.futs = futs


class Follow:
    """(A streaming verb) from now on, tell `NextDone` of each of these futures as it ends."""

    __slots__ = ("futs",)

    def __init__(self, futs: Sequence[Any]) -> None:
        self.futs = futs


class NextDone:
    """(A streaming verb) the next followed future to end, waiting for it."""

    __slots__ = ()


class Emit:
    """(A streaming verb) hand `value` to the caller; the verb resumes when the next is asked."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


# -- the one-request verbs -------------------------------------------------------------------
# Each request is built from its record (protocol.requests: the controller reads it back into
# the same one) and read from its reply's record (protocol.replies).
def spin() -> Request:
    return Request(to_request(Spin()), read=lambda r, _: r.dispatched)


def queue_status(verbose: bool) -> Request:
    return Request(to_request(Status(bool(verbose))), read=lambda r, _: r.status.as_map())


def engines() -> Request:
    return Request(to_request(EnginesQuery()), read=lambda r, _: [e.as_map() for e in r.engines])


def live_engine_ids() -> Request:
    """The ids of the engines not dead, sorted."""
    return Request(to_request(EnginesQuery()), read=lambda r, _: sorted(
        e.engineid for e in r.engines if e.state not in ENGINE_GONE_STATES))


def live_engine_count() -> Request:
    return Request(to_request(EnginesQuery()),
                   read=lambda r, _: sum(1 for e in r.engines
                                         if e.state not in ENGINE_GONE_STATES))


def retire_engines(engineids: list[int]) -> Request:
    return Request(to_request(Retire(list(engineids))), read=lambda r, _: list(r.retiring))


def statistics() -> Request:
    return Request(to_request(StatsQuery()), read=lambda r, _: r.stats.as_map())


def activity(since: int) -> Request:
    return Request(to_request(Activity(since)), read=lambda r, _: r.activity.as_map())


def task_info(taskid: int) -> Request:
    """(For an id in range only: see verbs.task_info.)"""
    return Request(to_request(TaskQuery(taskid)), read=lambda r, _: r.task.as_map())


def abort(taskid: int) -> Request:
    """Abort a task: IndexError if it had finished or is unknown (checked before sending)."""
    check_taskid(taskid)
    if not in_range(taskid):
        raise IndexError(unknown_message(taskid))

    def read(reply: AbortReply, _: list[Any]) -> None:
        if reply.status == "finished":
            raise IndexError("Task Already Completed")
        if reply.status == "unknown":
            raise IndexError(unknown_message(taskid))

    return Request(to_request(AbortRequest(taskid)), read=read)
