"""`Backend`: what both fronts share, and the blocking way of carrying out a verb.

    TaskClient / AsyncTaskClient --verb (verbs.py), a generator of steps (steps.py)-->
        Backend.run / Backend.stream (blocking)  or  aio.py's driver (awaiting)
            Request --> Connection.call / wait_reply --> the reply, read by the Request
            WaitFor / Abort / Adopt / Follow / NextDone / Emit --> futures, here or there
    submit() --encode (codec.py)--> Backend.submit_futures --> Submitter --> TaskFutures
    run(task) --verbs.run--> Runs (runs.py): a leased taskid, the task sent in a batch; every
        other call sends them first, and returns once they are stored (a refusal raised)

One Backend per client: the connection (connection.py), the Watcher and Submitter of futures
(submitter.py), the function pickles its tasks share (wire.FunctionPickles), and the codecs
bound to this connection's key and size limit. The asyncio client rides on its blocking
client's Backend: only the way of waiting differs.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, as_completed
from concurrent.futures import wait as wait_futures
from typing import Any

# pyzmq's garbage collector (zmq.utils.garbage, else imported at the first zero-copy frame)
# stops for good in an atexit handler of its own, after which a zero-copy send raises ("zmq gc
# socket requested during shutdown"). Handlers run last registered first: imported before ours
# is registered (below), its handler runs after ours, which may send run()'s queued tasks in a
# large frame (without this, under load, 503 of 1,000 run() tasks were dropped at exit).
import zmq.utils.garbage  # noqa: F401 - for its atexit handler's order

from ..errors import ClientClosed, ControllerUnreachable, ids_text
from ..protocol import Abort as AbortRequest
from ..protocol import Outcome, Refusal, from_reply, to_request
from ..task import BaseTask, check_seconds
from ..wire import FunctionPickles
from .callbacks import Callbacks
from .codec import (
    Encoded,
    Entry,
    check_taskid,
    decode_result,
    encode_task,
    in_range,
    too_big,
    unknown_entry,
)
from .connection import Connection
from .futures import TaskFuture, when_done
from .interrupts import interrupts_deferred
from .runs import Runs
from .steps import Abort, Adopt, Deadline, Emit, Follow, NextDone, Request, Settle, WaitFor
from .steps import abort as abort_request
from .submitter import Submitter, Watcher

ABORT_WAIT = 10.0  # at most this long, a map that ends early waits for its aborts to be heard
SILENT_ABORT_AFTER = 1.5  # seconds of controller silence (pings: 1 s) past which ...
SILENT_ABORT_WAIT = 0.5  # ... it waits only this long (the aborts go once it answers)
LATE_REPLY_WAIT = 2.0  # an interrupted submit waits this long to learn its taskids anyway
KEPT_RESULTS_BYTES = 8 * 1024 * 1024  # results a barrier brings along for get_task_result

Verb = Generator[Any, Any, Any]

log = logging.getLogger("taskmill.client")

# Every Backend not closed yet. At exit, while the client's threads still run, each is closed
# as close() would: run()'s queued tasks are stored first, and the controller hears `bye`. (Left
# to the interpreter's teardown, a client found then would wait for locks its daemon threads,
# stopped mid-step, still hold: the process would never exit.)
_OPEN: weakref.WeakSet[Backend] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for backend in list(_OPEN):
        if backend.pid != os.getpid():  # (a forked child's copy: its sockets are the parent's)
            continue
        try:
            backend.close()
        except Exception as e:  # noqa: BLE001 - exiting: said, and the others still closed
            log.warning("closing a taskmill client at exit: %s", e)


# (zmq.utils.garbage is imported above for the order of the atexit handlers: see the import)
atexit.register(_close_all_at_exit)


def check_client_timeouts(timeout: Any, reconnect_timeout: Any) -> None:
    check_seconds(timeout, "timeout", none=False)
    check_seconds(reconnect_timeout, "reconnect_timeout", none=False)
    if not reconnect_timeout > 0:
        raise ValueError(f"reconnect_timeout must be > 0 seconds, not {reconnect_timeout!r}")


class Backend:
    """One client's connection, futures machinery and codecs (see the module docstring)."""

    def __init__(self, connection: str | os.PathLike[str] | None, timeout: float,
                 reconnect_timeout: float) -> None:
        self.functions = FunctionPickles()
        self.front: Callable[[], Any] = lambda: None  # the TaskClient over this, weakly
        self.connection = Connection(connection, timeout, reconnect_timeout)
        self.watcher = Watcher(self.connection)
        self.submitter = Submitter(self.connection)
        self.runs = Runs(self.connection)
        self.callbacks = Callbacks()  # (the user's done-callbacks: callbacks.py)
        # Results the last barrier brought along (taskid -> entry), each handed out once by
        # get_task_result without a round trip; a clear by this client drops them.
        self.kept_results: dict[int, Entry] = {}
        self.connection.on_unreachable = self._unreachable
        # (A restarted controller keeps run()'s lease: the client's hello claims it.)
        self.pid = os.getpid()
        _OPEN.add(self)

    def close(self) -> None:
        """Close the connection (after run()'s queued tasks are stored: a refusal is raised
        once it is closed); futures still waiting fail with ClientClosed; the done-callbacks
        queued run first (at most the client's timeout: callbacks.py), while it is open."""
        _OPEN.discard(self)
        try:
            if not self.connection.closed and self.pid == os.getpid():  # (a fork's: none)
                # (A queued callback may use the client, as a chained submit does: it ran
                # after the close and failed with ClientClosed, its task never sent.)
                self.callbacks.drain(self.connection.timeout)
                self.settle(wait=self.connection.timeout)  # (closing: no restart waited out)
        finally:
            self.runs.close()
            self.connection.close()
            self.watcher.fail_all(ClientClosed())
            self.submitter.fail_all(ClientClosed())
            if not self.callbacks.drain(self.connection.timeout):
                log.warning("closing the client: done-callbacks still running or queued after "
                            "%gs were left", self.connection.timeout)

    def _unreachable(self, exc: BaseException) -> None:  # on the I/O thread
        self.runs.lost_lease(str(exc))
        self.watcher.fail_all(exc, close=False)
        self.submitter.fail_all(exc)

    # -- run()'s queue (runs.py) -------------------------------------------------------------
    def settle(self, deadline: Deadline | None = None, wait: float | None = None) -> None:
        """Before a call but run() (that cannot wait until its end): run()'s queued tasks
        are sent and stored (a refusal raised here), and the rest of the lease given back."""
        self.end_runs(self.runs.begin(), deadline, wait)

    def end_runs(self, sent: list[Future], deadline: Deadline | None = None,
                 wait: float | None = None) -> None:
        """runs.end, waiting as a quick request does (`wait`: less), or less if a verb's own
        `deadline` comes first (then its TimeoutError)."""
        wait = self.connection.quick_wait if wait is None else wait
        if deadline is not None and sent:
            wait, binds = deadline.bound(wait)
            if binds and wait_futures(sent, wait)[1]:
                raise deadline.error()
        self.runs.end(sent, wait)

    def keep_results(self, entries: Sequence[Entry]) -> None:
        self.kept_results = {meta.tid: (meta, frames) for meta, frames in entries
                             if meta is not None}

    def forget_results(self, tids: Sequence[int] | None) -> None:
        if tids is None:
            self.kept_results = {}
        for t in tids or ():
            self.kept_results.pop(t, None)

    # -- codecs bound to this connection -----------------------------------------------------
    def encode(self, task: BaseTask, *, validated: bool = False) -> Encoded:
        return encode_task(task, self.connection.wire, self.functions, validated=validated)

    def too_big(self, enc: Encoded, what: str | None = None) -> ValueError | None:
        return too_big(enc, self.connection.max_message, what)

    def check_sizes(self, encoded: Sequence[Encoded]) -> None:
        for enc in encoded:
            error = self.too_big(enc)
            if error is not None:
                raise error

    def decode(self, meta: Outcome | None, frames: list[Any]) -> Any:
        return decode_result(meta, frames, self.connection.wire)

    # -- futures ---------------------------------------------------------------------------
    def submit_futures(self, encoded: Sequence[Encoded], *,
                       checked: bool = False) -> list[TaskFuture]:
        """Send encoded tasks without waiting (see Submitter); one future each. A task too
        large for one message raises ValueError (unless `checked` already), and nothing is
        sent."""
        if self.connection.closed:
            raise ClientClosed("this client is closed")
        self.connection.check_process()  # (a forked child's would wait behind the parent's)
        if not checked:
            self.check_sizes(encoded)
        if self.runs.busy():  # (else settling has nothing to do)
            self.settle()
        futs = [TaskFuture(self) for _ in encoded]
        try:
            with interrupts_deferred():  # (sent or not at all; in flight only if sent)
                self.submitter.add(encoded, futs)
        except KeyboardInterrupt:  # Ctrl-C while they were sent: nobody else can abort them
            self.abort_futures(futs)
            raise
        return futs

    def failed_future(self, error: BaseException) -> TaskFuture:
        """A future whose task could not be submitted (it fails at once, as a task would)."""
        fut = TaskFuture(self)
        fut.set_submit_error(error)
        return fut

    def futures_for(self, taskids: Sequence[int]) -> list[TaskFuture]:
        """TaskFutures for tasks submitted before (by any client), watched from now on."""
        for t in taskids:
            check_taskid(t)
        self.settle()
        futs = [TaskFuture(self, t) for t in taskids]
        for f, t in zip(futs, taskids, strict=True):
            if not in_range(t):  # unknown, and cannot even be asked about
                f.set_outcome(unknown_entry(t), [])
        self.watcher.watch([f for f in futs if not f.done()])
        return futs

    def abort(self, taskid: int) -> None:
        """Abort one task, waiting for the answer (TaskFuture.cancel)."""
        self.run(abort_request(taskid))

    def abort_soon(self, fut: TaskFuture) -> None:
        """Abort `fut`'s task without waiting for anything (TaskFuture.cancel_soon: an asyncio
        cancel): withdrawn if it was never sent, else an abort sent now, or once its taskid
        is known (abort_when_known); sent again after a broken link, as requests are."""
        if fut.known_taskid is None:
            if not self.submitter.withdraw([fut]):
                threading.Thread(target=self.abort_when_known, args=([fut],), daemon=True,
                                 name="taskmill-late-aborts").start()
            return
        try:
            self.send_and_forget(to_request(AbortRequest(fut.known_taskid)))
        except Exception:  # noqa: BLE001 - closed or unreachable: nothing can be aborted
            pass

    def abort_futures(self, futs: Sequence[TaskFuture], wait: float = ABORT_WAIT) -> bool:
        """Abort the unfinished tasks of `futs` (a map that ends early): those still queued in
        this client are withdrawn unsent; the others are aborted on the controller once their
        taskids are known. Waits, at most `wait` seconds in all, until the controller has heard
        every abort, so that a script that exits right after (Ctrl-C) leaves nothing running.
        Whether it has (else a warning names the taskids)."""
        deadline = time.monotonic() + self.abort_wait(wait)
        withdrawn = self.submitter.withdraw(futs)
        replies: list[Future] = []
        tids: list[int] = []
        late: list[TaskFuture] = []
        for f in futs:
            if f in withdrawn or f.done():
                continue
            if not f.wait_submit_answered(max(0.0, deadline - time.monotonic())):
                late.append(f)  # (aborted once its taskid comes: below)
                continue
            if f.known_taskid is None:
                continue  # (the submit itself failed)
            try:
                replies.append(self.connection.send(to_request(AbortRequest(f.known_taskid))))
            except Exception:  # noqa: BLE001 - closed or unreachable: nothing more to do
                break
            tids.append(f.known_taskid)
        if late:
            threading.Thread(target=self.abort_when_known, args=(late,), daemon=True,
                             name="taskmill-late-aborts").start()
        came = heard(replies, max(0.0, deadline - time.monotonic()))
        self.say_unheard(tids, came)
        return not late and all(came)

    def abort_wait(self, wait: float) -> float:
        """How long to wait for aborts to be heard: `wait`, or SILENT_ABORT_WAIT if the
        controller is silent already (stopped, restarting: a call's timeout would wait it
        out; the aborts are sent again, or late, and heard once it answers)."""
        return min(wait, SILENT_ABORT_WAIT) if self.connection.silent > SILENT_ABORT_AFTER \
            else wait

    def abort_when_known(self, futs: Sequence[TaskFuture]) -> None:
        """(A thread of its own) Abort these tasks once the controller has answered their
        submits (they are stored, and would run, when a stopped controller resumes), for as
        long as the client would wait for the controller; nothing is raised."""
        deadline = time.monotonic() + self.connection.reconnect_timeout
        for f in futs:
            if not f.wait_submit_answered(max(0.0, deadline - time.monotonic())):
                return
            if f.known_taskid is not None and not f.done():
                try:
                    self.send_and_forget(to_request(AbortRequest(f.known_taskid)))
                except Exception:  # noqa: BLE001 - closed: nothing more to do
                    return

    def abort_taskids(self, tids: Sequence[int], wait: float = ABORT_WAIT) -> None:
        """Abort these tasks, waiting at most `wait` seconds until the controller has heard."""
        replies: list[Future] = []
        for tid in tids:
            try:
                replies.append(self.connection.send(to_request(AbortRequest(tid))))
            except Exception:  # noqa: BLE001 - closed or unreachable: nothing more to do
                break
        self.say_unheard(tids, heard(replies, self.abort_wait(wait)))

    def say_unheard(self, tids: Sequence[int], came: Sequence[bool],
                    what: str = "the abort of") -> None:
        """Warn, naming them, of the aborts (of `tids`, in the order sent) that the controller
        has not confirmed: if this process ends before it answers (Ctrl-C while it is stopped
        or restarting), those tasks run on, and the script's user would not know. (`what`
        names the request, for one other than a plain abort.)"""
        unheard = sorted(t for t, ok in zip(tids, came, strict=False) if not ok)
        if unheard:
            log.warning(
                "the controller at %s has not confirmed %s %s (silent for %.0fs: "
                "stopped, restarting or cut off?); this client sends them again once the "
                "controller answers, but if this process ends first those tasks run on: abort "
                "them then from any client (TaskClient().abort(taskid))",
                self.connection.info.client_url, what, ids_text(unheard),
                self.connection.silent)

    def abort_all(self, step: Abort) -> None:
        """Carry out an Abort step (blocking, at most ABORT_WAIT seconds for each part)."""
        try:
            if step.futs:
                self.abort_futures(step.futs)
            if step.tids:
                self.abort_taskids(step.tids)
        except Exception:  # noqa: BLE001 - the error that ended the call is the one to raise
            pass

    def send_and_forget(self, header: dict[str, Any]) -> None:
        """A request whose answer nobody waits for (imap's clears and aborts)."""
        self.connection.send(header).add_done_callback(ignore)

    # -- carrying out a verb, blocking -----------------------------------------------------
    def run(self, verb: Verb | Request, *, settle: bool = True,
            deadline: Deadline | None = None) -> Any:
        """Carry out a verb here, blocking the calling thread; return what it returns.
        Every verb but run() (`settle=False`) first sends run()'s queued tasks, and returns
        only once they are stored (runs.py: `begin`, then `end`, which raises a refusal).
        `deadline`: the verb's own timeout, which bounds each of its steps."""
        sent = self.runs.begin() if settle else []
        try:
            out = self.carry_out(verb, deadline)
        except Exception as e:
            if settle:  # (a refusal of run()'s tasks may be why: it is the one to raise)
                self.end_runs(sent, deadline)
            raise e
        if settle:
            self.end_runs(sent, deadline)
        return out

    def carry_out(self, verb: Verb | Request, deadline: Deadline | None = None) -> Any:
        if isinstance(verb, Request):
            return self.run_request(verb, deadline)
        steps = self.stream(verb, settle=False, deadline=deadline)
        try:
            value = next(steps)
        except StopIteration as stop:
            return stop.value
        steps.close()
        raise RuntimeError(f"a verb handed out {value!r} where one result was expected")

    def stream(self, verb: Verb, *, settle: bool = True,
               deadline: Deadline | None = None) -> Generator[Any, None, Any]:
        """Carry out a streaming verb: yield what it emits (closing this closes the verb).
        Whatever is raised here while the verb waits at a step (a failed step, or Ctrl-C in
        this loop's own code between two steps) is thrown into the verb, so that it can abort
        what it sent; only what the verb itself raises (it has ended) goes on up."""
        done: queue.SimpleQueue[Future] = queue.SimpleQueue()
        value: Any = None
        error: BaseException | None = None
        try:
            if settle:
                self.settle()
            while True:
                try:
                    while True:
                        try:
                            step = verb.send(value) if error is None else verb.throw(error)
                        except StopIteration as stop:
                            return stop.value
                        value = error = None
                        if isinstance(step, Emit):
                            yield step.value
                        elif isinstance(step, Follow):
                            for f in step.futs:
                                when_done(f, done.put)
                        elif isinstance(step, NextDone):
                            value = done.get()
                        else:
                            value = self.perform(step, deadline)
                except GeneratorExit:  # closed by its consumer: the verb is closed below
                    raise
                except BaseException as e:  # noqa: BLE001 - the verb's to handle
                    if not verb.gi_suspended:  # type: ignore[attr-defined]
                        raise  # (the verb's own: it has ended)
                    value, error = None, e
        finally:
            verb.close()

    def perform(self, step: Any, deadline: Deadline | None = None) -> Any:
        """One step of a verb, blocking (see steps.py), within the verb's `deadline`."""
        if isinstance(step, Request):
            return self.run_request(step, deadline)
        if isinstance(step, WaitFor):
            timeout = step.timeout if deadline is None else deadline.bound(step.timeout)[0]
            try:
                for f in as_completed(step.futs, timeout=timeout):
                    if step.each is not None:
                        step.each(f)
            except TimeoutError:
                return [f for f in step.futs if not f.done()]
            return []
        if isinstance(step, Abort):
            self.abort_all(step)
            return None
        if isinstance(step, Adopt):
            return list(step.futs)
        if isinstance(step, Settle):
            self.settle(deadline)
            return None
        raise TypeError(f"not a step of a verb: {step!r}")

    def run_request(self, req: Request, deadline: Deadline | None = None) -> Any:
        conn = self.connection
        if req.blocking:
            reply, frames = conn.wait_reply(req.header, req.frames, req.timeout, req.what)
            return req.answer(reply, frames)
        wait, binds = conn.quick_wait, False
        if deadline is not None:
            wait, binds = deadline.bound(wait)
        if req.interrupted is None:
            fut = conn.send(req.header, req.frames)
            reply, frames = self.reply_within(fut, req, wait, deadline if binds else None)
            return req.answer(reply, frames)
        sent: Future | None = None
        try:  # Ctrl-C in the send, the wait or the reading: the verb still learns the answer
            with interrupts_deferred():  # (raised once `sent` is kept)
                sent = conn.send(req.header, req.frames)
            reply, frames = self.reply_within(sent, req, wait, deadline if binds else None)
            return req.answer(reply, frames)
        except (KeyboardInterrupt, SystemExit):
            if sent is not None:
                late = late_reply(sent, req.header["type"])
                if late is not None:
                    req.interrupted(late)
            raise


    def reply_within(self, fut: Future, req: Request, wait: float,
                     deadline: Deadline | None) -> tuple[dict[str, Any], list[Any]]:
        """A quick request's reply within `wait`; past it, ControllerUnreachable, or the
        verb's own TimeoutError if its `deadline` is what ended the wait."""
        try:
            return self.connection.reply(fut, req.header, wait)
        except ControllerUnreachable:
            if deadline is not None and not fut.done():
                raise deadline.error() from None
            raise


def late_reply(fut: Future, verb: str, wait: float = LATE_REPLY_WAIT) -> Any:
    """The record of the reply `fut` gives to a `verb` request, if it comes within `wait`
    seconds and is not a refusal (None otherwise)."""
    try:
        reply, _ = fut.result(wait)
        record = from_reply(verb, reply)
    except BaseException:  # noqa: BLE001 - not in time, failed, or unfit: nothing to learn
        return None
    return None if isinstance(record, Refusal) else record


def ignore(fut: Future) -> None:
    fut.exception()  # retrieved, so nothing is logged about it


def heard(replies: Sequence[Future], wait: float) -> list[bool]:
    """Wait at most `wait` seconds for these replies (whatever they say); whether each came."""
    for r in replies:
        r.add_done_callback(ignore)
    if replies:
        wait_futures(replies, timeout=wait)
    return [r.done() for r in replies]
