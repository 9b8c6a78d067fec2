"""`TaskFuture`: a `concurrent.futures.Future` for one task.

    Submitter (submitter.py) --set_taskid / set_submit_error--> TaskFuture: its taskid known
    I/O thread (a `done` message) --set_outcome(meta, frames)--> TaskFuture done; a value is
                                                                 not unpickled yet
    caller --result()--> owner.decode(meta, frames), once, in the caller's thread

A failed task ends its future with an exception, so `concurrent.futures.wait(...,
FIRST_EXCEPTION)` sees it; but the I/O thread never unpickles (an exception class may need an
import that the main thread holds the lock of: a module that runs a map while it is imported).
It sets `FailurePending`, and `result()`/`exception()` unpickle the task's own exception in the
caller's thread, once (a value that cannot be unpickled is found there too).

A future belongs to an *owner* (the client's `Backend`), which it asks three things: its
`connection` (for the timeouts), `decode` (a result entry to a value or a raised error) and
`abort` (for `cancel`). The `set_*` methods are what the client does to a future, public as
`Future.set_result` is: for the client's own modules, not for programs.

Memory: a client may hold a million finished futures, so each is kept small (~590 bytes
before `result()`; tests/test_memory.py bounds it): slots, not a `__dict__`. Its condition is
a `FutureCondition`, the re-entrant lock itself (a `threading.Condition` only while someone
waits), rather than a `threading.Condition` of its own (with its deque, ~1.5 kB a future); no
list of waiters until `wait`/`as_completed` adds one (see NoWaiters); `metadata` is kept as a
tuple until it is read (its four times packed in one bytes object); of a successful map's
result entry only what decodes its value is kept (taskid, payload MAC, frames) until
`result()`; no list of done-callbacks until one is added; small payload frames are copied out
of the receive buffer they share with other messages (taskmill.memory.detached); and once
`result()` has decoded the value, only the value is kept.
"""

from __future__ import annotations

import struct
import sys
import threading
from _thread import RLock
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, PENDING, RUNNING
from typing import Any, Protocol

from ..arguments import FutureLike
from ..display import duration_text, html_table, output_html, state_html, value_html
from ..errors import ControllerUnreachable, TaskAborted
from ..memory import detached
from ..protocol import Outcome
from .callbacks import Callbacks, UserCallback
from .callbacks import run as run_callback
from .codec import CONTROLLER_DECIDED, METADATA_KEYS
from .connection import Connection


class FutureOwner(Protocol):
    """What a TaskFuture asks of the client it belongs to."""

    connection: Connection
    #: the front (TaskClient) that made this owner, weakly: every future keeps it alive, as a
    #: dropped client would otherwise close the connection its futures wait on
    front: Callable[[], Any]
    callbacks: Callbacks  # (where the user's done-callbacks run)

    def decode(self, meta: Outcome | None, frames: list[Any]) -> Any: ...

    def abort(self, taskid: int) -> None: ...

    def abort_soon(self, fut: TaskFuture) -> None: ...


NO_CALLBACKS: tuple[()] = ()  # a future's done-callbacks until it has one


def on_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop (none runs unless someone imported
    asyncio: this never imports it)."""
    aio = sys.modules.get("asyncio")
    if aio is None:
        return False
    try:
        aio.get_running_loop()
    except RuntimeError:
        return False
    return True


def when_done(fut: Future, fn: Callable[[Any], object]) -> None:
    """(taskmill's own quick callbacks) `fn(fut)` on the thread that finishes `fut`: a
    TaskFuture's `on_done`, any other Future's `add_done_callback`."""
    if isinstance(fut, TaskFuture):
        fut.on_done(fn)
    else:
        fut.add_done_callback(fn)


class FutureCondition(RLock):
    """What a `Future` asks of its `_condition` (acquire, release, `with`, `wait`, `notify`,
    `notify_all`, as `threading.Condition` over an RLock), in 80 bytes instead of ~1.5 kB:
    it is the re-entrant lock itself (the C one, so `with` costs no Python call), and the
    `threading.Condition` over it exists only while someone waits."""

    __slots__ = ("_cond", "_waiting")

    def __init__(self) -> None:
        self._cond: threading.Condition | None = None
        self._waiting = 0  # threads in wait(); the last one out drops the Condition

    def wait(self, timeout: float | None = None) -> bool:
        """As `threading.Condition.wait` (called with the lock held, as there)."""
        cond = self._cond
        if cond is None:
            cond = self._cond = threading.Condition(self)
        self._waiting += 1
        try:
            return cond.wait(timeout)
        finally:  # (the lock is held again here)
            self._waiting -= 1
            if not self._waiting:
                self._cond = None

    def notify(self, n: int = 1) -> None:
        if self._cond is not None:
            self._cond.notify(n)

    def notify_all(self) -> None:
        if self._cond is not None:
            self._cond.notify_all()


class NoWaiters:
    """A future's `_waiters` while it has none: iterates as empty, and `append` (by
    `concurrent.futures.wait` and `as_completed`, holding the future's condition) makes the
    future's list. Made when read (when the future finishes), then dropped: a list kept in
    each of a million futures would be 56 MB."""

    __slots__ = ("fut",)

    def __init__(self, fut: TaskFuture) -> None:
        self.fut = fut

    def __iter__(self) -> Any:
        return iter(NO_CALLBACKS)

    def append(self, waiter: Any) -> None:
        self.fut.add_waiter(waiter)


# A finished task's times (submitted, started, completed, duration), packed into one bytes
# object when all are floats: 65 bytes instead of four floats' 96 and four tuple slots.
TIMES = struct.Struct("4d")
assert METADATA_KEYS[1:5] == ("submitted", "started", "completed", "duration")


def compacted(meta: Outcome) -> tuple[Any, ...]:
    """What a future keeps of a result entry's metadata until `metadata` is read."""
    times: Any = (meta.submitted, meta.started, meta.completed, meta.duration)
    if (type(times[0]) is float and type(times[1]) is float and type(times[2]) is float
            and type(times[3]) is float):  # (no generator: paid per task)
        times = TIMES.pack(*times)
    return (meta.engineid, times, meta.stdout, meta.stderr, meta.attempts)


def expanded(kept: tuple[Any, ...]) -> tuple[Any, ...]:
    """The values of METADATA_KEYS from what `compacted` kept."""
    engineid, times, stdout, stderr, attempts = kept
    if type(times) is bytes:
        times = TIMES.unpack(times)
    return (engineid, *times, stdout, stderr, attempts)


class FailurePending(Exception):
    """Stands, inside the Future, for a failed task's exception until `result()` or
    `exception()` unpickles the real one in the caller's thread (never seen outside)."""


def raises(meta: Outcome | None) -> bool:
    """Whether this result entry decodes to a raised error (see codec.decode_result): an
    unknown task, a failure the controller decided, or a failed MapTask (a failed StringTask
    gives a TaskResult)."""
    if meta is None:
        return False
    status = meta.status
    return bool(meta.unknown or status in CONTROLLER_DECIDED
                or (status != "ok" and meta.kind != "string"))


class TaskFuture(Future, FutureLike):
    """A `concurrent.futures.Future` for one task (see the documentation's futures page).

    It works wherever a Future does: `concurrent.futures.wait` and `as_completed`,
    `asyncio.wrap_future`, `add_done_callback`. `taskid` is the task's id: `submit` does not
    wait for the controller to acknowledge it, so the first read of `taskid` may wait for that
    (up to the client's timeout); `known_taskid` never waits. `metadata` is filled in when the
    task finishes: `engineid`, `submitted`, `started`, `completed` (float seconds since the
    epoch, or None), `duration`, `stdout`, `stderr`, `attempts`.

    The client's I/O thread marks the future done when the controller's `done` message arrives,
    without unpickling anything; `result()` and `exception()` unpickle the value or the remote
    exception in the thread that calls them (once: it is kept). A task's failure is raised by
    `result()` as its own type, as `get_task_result` raises it; a StringTask's is a `TaskResult`.
    `cancel()` aborts the task (see there).

    Passed to another task, at the top level of its arguments or directly inside a list,
    tuple or dict there, it stands for its result: that task waits for this one and gets
    the value on the engine, from the store (arguments.py).
    """

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a TaskFuture (task {self._taskid}) cannot be pickled: pass it to a task at the top "
            "level of its arguments, or directly inside a list, tuple or dict there (it stands "
            "for its result), or pass fut.result()")

    # Slots, not a __dict__ (Future has none of its own): Future's attributes, then ours.
    __slots__ = ("_condition", "_state", "_result", "_exception", "_waiter_list", "_done_callbacks",
                 "_owner", "_front", "_taskid", "_known_event", "_submit_error", "_raw",
                 "_outcome", "_cancelling", "_meta")

    def __init__(self, owner: FutureOwner, taskid: int | None = None) -> None:
        # Future.__init__'s own attributes, with a small condition (see FutureCondition).
        self._condition = FutureCondition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiter_list: list[Any] | None = None  # (see `_waiters`)
        self._done_callbacks: list[Any] | tuple[()] = NO_CALLBACKS  # (see add_done_callback)
        self._owner = owner
        self._front = owner.front()  # (`tc.submit(f).result()` with no other name for tc)
        self._taskid = taskid
        self._known_event: threading.Event | None = None
        self._submit_error: BaseException | None = None
        # (result entry, frames) until result() decodes them; a map's success keeps only
        # (tid, pmac, its frame or frames)
        self._raw: tuple[Any, ...] | None = None
        self._outcome: tuple[bool, Any] | None = None
        self._cancelling = False
        self._meta: tuple[Any, ...] | dict[str, Any] | None = None  # see `metadata`

    @property
    def _waiters(self) -> list[Any] | NoWaiters:
        """Future's list of the waiters of `wait` and `as_completed`, made when the first one
        is added (most futures never have one): until then a `NoWaiters`."""
        waiters = self._waiter_list
        return NoWaiters(self) if waiters is None else waiters

    def add_waiter(self, waiter: Any) -> None:
        """(What `NoWaiters.append` does: under the future's condition, as `wait` adds.)"""
        if self._waiter_list is None:
            self._waiter_list = []
        self._waiter_list.append(waiter)

    @property
    def metadata(self) -> dict[str, Any]:
        """`engineid`, `submitted`, `started`, `completed`, `duration`, `stdout`, `stderr`,
        `attempts`: None until the task finishes (the same dict, filled in then)."""
        with self._condition:  # (the I/O thread may be filling it in)
            meta = self._meta
            if type(meta) is dict:
                return meta
            built = (dict(zip(METADATA_KEYS, expanded(meta), strict=True)) if meta
                     else dict.fromkeys(METADATA_KEYS))
            self._meta = built
            return built

    @property
    def taskid(self) -> int:
        """The task's id, once the controller has acknowledged the submit.

        Waits for that while the controller is reachable (a restart is ridden out); raises
        ControllerUnreachable once it has not answered for the client's `reconnect_timeout`,
        or the error that kept the task from being submitted."""
        conn = self._owner.connection
        wait = conn.timeout + conn.reconnect_timeout  # (a backstop: the I/O thread ends it)
        if not self.wait_submit_answered(wait):
            raise ControllerUnreachable(
                f"the controller at {conn.info.client_url} did not acknowledge a submit "
                f"within {wait:g}s")
        if self._taskid is None:
            assert self._submit_error is not None
            raise self._submit_error
        return self._taskid

    @property
    def known_taskid(self) -> int | None:
        """The task's id if the controller has acknowledged the submit, else None (never
        waits)."""
        return self._taskid

    def submit_answered(self) -> bool:
        """Whether the taskid (or the submit's failure) is known."""
        return self._taskid is not None or self._submit_error is not None

    def wait_submit_answered(self, wait: float | None) -> bool:
        """Wait until the taskid (or the submit's failure) is known; False if `wait` passed."""
        if self.submit_answered():
            return True
        # An Event made only when someone waits (most futures learn their id first). The
        # Future's own condition serves as the lock, never notified: Future.result() would
        # take a notify for its result and give up.
        with self._condition:
            if self._known_event is None:
                self._known_event = threading.Event()
            event = self._known_event
            if self.submit_answered():
                event.set()
        return event.wait(wait)

    # -- what the client does to it ----------------------------------------------------------
    def set_taskid(self, tid: int) -> None:
        with self._condition:
            self._taskid = tid
            event = self._known_event
        if event is not None:
            event.set()

    def set_submit_error(self, exc: BaseException) -> None:
        """The task was never submitted: `taskid` and `result()` raise `exc`."""
        with self._condition:
            self._submit_error = exc
            event = self._known_event
        if event is not None:
            event.set()
        self.set_failure(exc)

    def set_failure(self, exc: BaseException) -> None:
        """Fail the future with `exc`, unless it is done already."""
        try:
            self.set_exception(exc)
        except InvalidStateError:
            pass

    def set_outcome(self, meta: Outcome | None, frames: list[Any]) -> None:
        """The task finished (called on the I/O thread; a value is not unpickled here)."""
        if meta is not None and not (meta.unknown or meta.active):
            with self._condition:  # (a caller may be reading `metadata`)
                if self._meta is None:
                    self._meta = compacted(meta)
                else:  # read already: filled in where it is
                    known = self.metadata
                    for key in METADATA_KEYS:
                        known[key] = getattr(meta, key)
        frames = detached(frames)  # (a small frame would keep its receive buffer)
        if self._cancelling and meta is not None and meta.status == "aborted":
            self._mark_cancelled()
            return
        if (meta is not None and meta.status == "ok" and meta.kind == "map"
                and not meta.unknown):  # all a map's value is decoded with:
            self._raw = (meta.tid, meta.pmac, frames[0] if len(frames) == 1 else frames)
        else:
            self._raw = (meta, frames)
        try:
            if raises(meta):
                self.set_exception(FailurePending(meta.tid if meta is not None else None))
            else:
                self.set_result(None)
        except InvalidStateError:  # cancelled meanwhile
            self._raw = None

    def set_withdrawn(self) -> None:
        """It was never sent (the map it belongs to ended first): cancelled, no taskid."""
        with self._condition:
            self._submit_error = TaskAborted("this task was withdrawn before it was sent: the "
                                             "map it belonged to ended early")
            event = self._known_event
        if event is not None:
            event.set()
        self._mark_cancelled()

    def _decoded(self) -> tuple[bool, Any]:
        with self._condition:
            if self._outcome is None:
                assert self._raw is not None
                raw = self._raw
                if len(raw) == 3:  # a map's success, kept small (see set_outcome)
                    tid, pmac, frames = raw
                    if type(frames) is not list:
                        frames = [frames]
                    meta = Outcome(tid, status="ok", kind="map", pmac=pmac)
                else:
                    meta, frames = raw
                try:
                    value = self._owner.decode(meta, frames)
                except BaseException as e:  # noqa: BLE001 - the task's failure, kept for result()
                    self._outcome = (False, e)
                else:
                    self._outcome = (True, value)
                self._raw = None
            return self._outcome

    # -- the Future API ------------------------------------------------------------------------
    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        """As Future's, but `fn` runs on a thread the client keeps for callbacks (as dask's
        do), not on its I/O thread, so that it may wait: for other futures, for the client's
        calls (client/callbacks.py). Added to a finished future, it runs at once, here."""
        with self._condition:
            if self._state in (PENDING, RUNNING):
                if self._done_callbacks is NO_CALLBACKS:
                    self._done_callbacks = []
                self._done_callbacks.append(UserCallback(fn, self._owner.callbacks))
                return
        run_callback(fn, self)

    def on_done(self, fn: Callable[[Future[Any]], object]) -> None:
        """(taskmill's own) Call `fn(self)` on the thread that finishes this future (the I/O
        thread, mostly), or at once if it is done: `fn` must be quick and never wait."""
        with self._condition:  # (the list is made for the first callback: most have none)
            if self._done_callbacks is NO_CALLBACKS:
                self._done_callbacks = []
        super().add_done_callback(fn)  # (calls `fn` at once if done: not under the lock)

    def result(self, timeout: float | None = None) -> Any:
        try:
            super().result(timeout)  # waits; raises CancelledError, TimeoutError, a submit error
        except FailurePending:
            pass
        ok, value = self._decoded()
        if ok:
            return value
        raise value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        exc = super().exception(timeout)
        if exc is not None and not isinstance(exc, FailurePending):
            return exc
        ok, value = self._decoded()
        return None if ok else value

    def cancel(self) -> bool:
        """Abort the task: True if it was aborted (or was cancelled already), False if it had
        finished. A cancelled future raises `CancelledError` from `result()`. Waits for the
        controller's answer, so it must not be called on the client's I/O thread (in an
        `on_done` callback: that raises RuntimeError; `add_done_callback`'s may call it).

        On an asyncio loop's thread (where asyncio cancels what `wrap_future` and
        `run_in_executor` wrap: the wait froze the loop, up to `reconnect_timeout` with a
        stalled controller) it does not wait: it is `cancel_soon()`, and returns True unless
        the future is done."""
        if self.done():
            return self.cancelled()
        if self._owner.connection.on_io_thread():
            raise RuntimeError("TaskFuture.cancel() waits for the controller's answer, which the "
                               "client's I/O thread (running this) would have to read; call it "
                               "from another thread")
        if on_event_loop():
            self.cancel_soon()
            return True
        self._cancelling = True
        try:
            self._owner.abort(self.taskid)
        except IndexError:  # it finished (its result is on the way) or is unknown
            self._cancelling = False
            return False
        self._mark_cancelled()
        return self.cancelled()

    def cancel_soon(self) -> None:
        """Abort the task without waiting for anything: the abort is sent now (or once the
        taskid is known), and the future reads cancelled when the controller has aborted the
        task (or keeps its result, if the task finished first). Nothing is raised. (It went
        through the callbacks thread, where a slow user callback held it back.)"""
        if not self.done():
            self._cancelling = True
            self._owner.abort_soon(self)

    def _mark_cancelled(self) -> None:
        """Cancel and tell the waiters of `wait`/`as_completed`, which (as for an executor's
        futures) only hear of it through `set_running_or_notify_cancel`."""
        with self._condition:
            Future.cancel(self)
            if self._state == CANCELLED:
                self.set_running_or_notify_cancel()

    def __repr__(self) -> str:
        tid = "?" if self._taskid is None else self._taskid
        state = "cancelled" if self.cancelled() else "finished" if self.done() else "pending"
        return f"<TaskFuture taskid={tid} {state}>"

    def _repr_html_(self) -> str:
        """A notebook's view: status, and once finished the value (or the failure), engine,
        duration and output (everything escaped: see display.py). Never waits."""
        tid = "?" if self._taskid is None else self._taskid
        if self.cancelled():
            return html_table(f"TaskFuture {tid}", [("status", state_html("cancelled"))])
        if not self.done():
            return html_table(f"TaskFuture {tid}", [("status", state_html("pending"))])
        exc = self.exception(timeout=0)
        ok = exc is None
        value = self.result(timeout=0) if ok else exc
        meta = self.metadata
        duration = meta.get("duration")
        return html_table(f"TaskFuture {tid}", [
            ("status", state_html("finished" if ok else "failed")),
            ("value" if ok else "failure", value_html(value)),
            ("engine", meta.get("engineid")),
            ("duration", None if duration is None else duration_text(duration)),
            ("stdout", output_html(meta["stdout"]) if meta.get("stdout") else None),
            ("stderr", output_html(meta["stderr"]) if meta.get("stderr") else None)])
