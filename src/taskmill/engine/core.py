"""The engine: a Python process with a persistent namespace that runs one task at a time.

`Engine` is `EngineControl` (control.py: identity, sockets, shared state, the I/O thread) plus
what the main thread does: `run` starts the heart (ZeroMQ's echo device, answering the
controller's pings without the GIL) and the I/O thread, then takes tasks in order while it holds
a lease (`_next_task`), runs each (`_run_task`: check its payload, clear, push, exec or call
through running.py's `TaskCode`, pull, clear; stdout and stderr, and so what task code logs,
captured through running.py's `TaskStream`s; the timeout armed),
and queues its result in the outbox (results.py), sending what is ready on the result socket.
`current_engine()` is the engine running the current task.
"""

from __future__ import annotations

import _signal
import builtins
import logging
import signal
import sys
import threading
import time
from typing import Any

import msgpack

from ..connection import ConnectionInfo
from ..errors import SerializationError, TaskAborted, TaskTimeout
from ..wire import Refused
from .control import INTERRUPT_SIGNAL, KILL_GRACE, EngineControl
from .results import Result
from .running import (
    OUTPUT_LIMIT,
    Capture,
    TaskInterrupted,
    TaskStream,
    error_fields,
    reply_body,
    take_arguments,
)

log = logging.getLogger("taskmill.engine")

_CURRENT: Engine | None = None


def current_engine() -> Engine:
    """The engine running the current task (for `.engineid` and `.properties`)."""
    if _CURRENT is None:
        raise RuntimeError(
            "current_engine() works only inside task code running on a taskmill engine"
        )
    return _CURRENT


# (A payload whose bytes changed after the client signed them: almost always an argument array
# changed by the caller after the call, since large buffers travel without a copy.)
CHANGED_HINT = (" (arrays, bytes and bytearrays of 64 KiB or more travel from the caller's "
                "memory without a copy: one changed after the call, before the task was sent, "
                "reads so; pass a copy, e.g. arr.copy(), if you change it right after)")
# Signals whose handlers the engine puts back after each task (task code may change them).
KEPT_SIGNALS = (signal.SIGALRM, signal.SIGINT, signal.SIGTERM, INTERRUPT_SIGNAL)


class Engine(EngineControl):
    """One engine: connect, register, run tasks until stopped."""

    def __init__(
        self,
        info: ConnectionInfo,
        properties: dict[str, Any] | None = None,
        *,
        output_limit: int = OUTPUT_LIMIT,
        register_timeout: float | None = None,
    ) -> None:
        super().__init__(info, properties, output_limit=output_limit,
                         register_timeout=register_timeout)
        self.task_streams: tuple[TaskStream, TaskStream] | None = None
        self.signals: dict[int, Any] = {}  # handlers as the engine set them (run())
        self._reset()

    # -- namespace and properties ----------------------------------------------------------
    def _base_properties(self) -> dict[str, Any]:
        props = dict(self.start_properties)
        props.update(hostname=self.hostname, pid=self.pid)
        if self.engineid is not None:
            props["engineid"] = self.engineid
        return props

    def _reset(self) -> None:
        self.namespace.clear()
        self.namespace.update(__name__="__main__", __builtins__=builtins, engineid=self.engineid)
        self.properties.clear()
        self.properties.update(self._base_properties())

    def _restore_signals(self) -> None:
        """What task code did to signals ends with it: an interval timer it left running (its
        alarm would fail the next task), a handler it changed (an ignored interrupt signal
        would make every later timeout a kill of the engine)."""
        if signal.getitimer(signal.ITIMER_REAL)[0]:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for n, handler in self.signals.items():  # (the C module's getsignal: `signal`'s
            if _signal.getsignal(n) is not handler and handler is not None:  # converts to
                _signal.signal(n, handler)  # an enum, ~2 us a call; None: set in C, kept)

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        """Register, then run tasks until `stop()`."""
        global _CURRENT
        _CURRENT = self
        old = signal.signal(INTERRUPT_SIGNAL, self.on_interrupt_signal)
        self.signals = {n: _signal.getsignal(n) for n in KEPT_SIGNALS}
        heart = threading.Thread(target=self.sockets.run_heart, name="taskmill-heart",
                                 daemon=True)
        heart.start()
        io_thread = threading.Thread(target=self.io_loop, name="taskmill-io", daemon=True)
        io_thread.start()
        try:
            self._task_loop()
        finally:
            self.stopping.set()
            with self.work:
                self.work.notify_all()
            io_thread.join(timeout=2)
            signal.signal(INTERRUPT_SIGNAL, old)
            _CURRENT = None
            self.sockets.close()
            heart.join(timeout=2)

    def stop(self) -> None:
        """Stop after the running task (safe from a signal handler: takes no lock; the main
        thread notices within 0.1 s)."""
        self.stopping.set()

    # -- the main thread: run tasks in order -----------------------------------------------
    def _task_loop(self) -> None:
        while True:
            with self.work:
                job = self._next_task()
            if job is None:
                if self.fatal is not None:
                    raise self.fatal
                return
            entry, frames = job
            try:
                self._run_task(entry, frames)
            except TaskInterrupted:
                pass  # a late interrupt that landed outside task code: nothing to undo

    def _next_task(self) -> tuple[dict[str, Any], list[Any]] | None:
        """(Under the lock.) Wait for a task this engine may start now, and make it current.

        A task starts only while this engine is registered and holds a lease: an answer to a
        heartbeat sent less than `lease` ago. The controller declares an engine dead only
        after it has heard nothing for longer than that, so an engine stopped (SIGSTOP) or cut
        off past that point never starts a task the controller has already given elsewhere:
        it waits for a fresh answer, which tells it to drop everything instead."""
        while True:
            if self.stopping.is_set() or self.fatal is not None:
                return None
            if self.registered and not self.need_register and self.backlog:
                if time.monotonic() < self.lease_until:
                    job = self._start_next()
                    if job is not None:
                        return job
                    continue
                self.lease_wanted = True
            elif not self.backlog:
                unsent = self.take_unsent()
                if unsent:  # nothing more to run now: what waited goes
                    self.lock.release()
                    try:
                        self.send_results(self.sockets.result_socket(), unsent)
                    finally:
                        self.lock.acquire()
                    continue
            self.work.wait(0.1)

    def _start_next(self) -> tuple[dict[str, Any], list[Any]] | None:
        """(Under the lock.) Take the next backlog task and make it the current one; None if
        it was given back (revoked) or aborted before it started (then its result is queued)."""
        entry, frames = self.backlog.popleft()
        key = (entry["tid"], entry["attempt"])
        seq = entry.get("dseq")
        if isinstance(seq, int):
            if seq in self.revoked:  # promised back to the controller: never runs
                self.revoked.discard(seq)
                return None
            self.last_started = max(self.last_started, seq)
        if key in self.skip:
            self.skip.discard(key)
            reply = {"tid": key[0], "attempt": key[1], "kind": entry["exec"]["kind"],
                     "status": "error", "duration": 0.0,
                     **error_fields(TaskAborted(f"task {key[0]} was aborted"))}
            for batch in self._queue_result(reply, []):
                self.send_results(self.sockets.result_socket(), batch)  # (main thread: its socket)
            return None
        self.current = key
        self.current_since = time.monotonic()
        self.interrupt_req = None
        if self.reset_due:  # (declared dead, registered anew: a new engine, a new namespace)
            self.reset_due = False
            self._reset()
        timeout = entry.get("timeout")
        self.deadline = time.monotonic() + timeout if timeout else None
        return entry, frames
    # -- running a task --------------------------------------------------------------------
    def _run_task(self, header: dict[str, Any], frames: list[Any]) -> None:
        tid, attempt = header["tid"], header["attempt"]
        spec = header["exec"]
        kind = spec["kind"]
        reply: dict[str, Any] = {"tid": tid, "attempt": attempt, "kind": kind}
        timeout = header.get("timeout")
        out, err = Capture(self.output_limit), Capture(self.output_limit)
        value: Any = None
        exc: BaseException | None = None
        dropped = False
        t0 = time.perf_counter()
        old_out, old_err = sys.stdout, sys.stderr
        task_out, task_err = self._task_streams(old_out, old_err)
        if timeout:
            # The last resort for code that never lets the interruption through. (The
            # controller admits timeouts up to MAX_TIMEOUT, which faulthandler takes.)
            with self.lock:
                self.arm_kill_locked(time.monotonic() + timeout + KILL_GRACE)
        try:
            frames, values = take_arguments(tid, header, frames, self.wire)
            if frames:
                self.wire.check_payload(frames, header.get("pmac"))
            sys.stdout, sys.stderr = task_out.aim(out), task_err.aim(err)
            try:
                if spec.get("clear_before"):
                    self._reset()
                value = self.code.execute(tid, spec, frames, self.engineid, values)
            finally:
                with self.lock:  # (no interruption may cut the engine's own clean-up short)
                    self.code.active = False
                    late = self.interrupt_req
                if spec.get("clear_after"):
                    self._reset()
            if late is not None and late[1] == "timeout":  # (the code swallowed it)
                raise TaskInterrupted("timeout")
        except TaskInterrupted as e:
            if e.args and e.args[0] == "drop":
                dropped = True
            elif e.args and e.args[0] == "timeout":
                exc = TaskTimeout(f"task {tid} ran past its timeout of {timeout:g}s on engine "
                                  f"{self.engineid} and was interrupted")
            else:
                exc = TaskAborted(f"task {tid} was interrupted on engine {self.engineid}")
        except Refused as e:
            exc = SerializationError(f"task {tid}'s payload was refused by the engine: {e}"
                                     + (CHANGED_HINT if e.reason == "bad-payload-signature"
                                        else ""))
        except BaseException as e:  # noqa: BLE001 - task code may raise anything
            exc = e
        finally:
            self.code.active = False
            task_out.reset()
            task_err.reset()
            sys.stdout, sys.stderr = old_out, old_err
            self._restore_signals()
            with self.lock:
                self.disarm_kill_locked()
                if self.interrupt_req is not None and self.interrupt_req[1] == "drop":
                    dropped = True
                # The task stays current until its result is queued (a heartbeat must never
                # show it neither held nor finished), but nothing can interrupt it any more.
                self.finishing = True
                self.deadline = None
                self.interrupt_req = None
        if dropped:
            with self.lock:
                self.dropped = self.current  # (a stopping engine names it: _say_leaving)
                self.current = None
                self.finishing = False
            return  # declared dead (its task failed or given elsewhere), or stopping
        reply["duration"] = time.perf_counter() - t0
        reply["stdout"], reply["stderr"] = out.getvalue(), err.getvalue()
        body = reply_body(reply, value, exc, self.max_result)
        if body:
            reply["pmac"] = self.wire.payload_mac(body)
        self._attach_properties(reply)
        with self.lock:
            batches = self._queue_result(reply, body)
            self.current = None
            self.finishing = False
        for batch in batches:
            self.send_results(self.sockets.result_socket(), batch)

    def _task_streams(self, out: Any, err: Any) -> tuple[TaskStream, TaskStream]:
        """The engine's two TaskStreams, made once, over the streams the engine had (`out`,
        `err`: its log) when it ran its first task."""
        if self.task_streams is None:
            self.task_streams = (TaskStream(out), TaskStream(err))
        return self.task_streams

    # -- results out -----------------------------------------------------------------------
    def _queue_result(self, entry: dict[str, Any], body: list[Any]) -> list[list[Result]]:
        """(Under the lock.) Keep a result until it is acknowledged, and return the batches
        to send now (see ResultOutbox.queue)."""
        return self.outbox.queue(entry, body, registered=self.registered,
                                 more_to_run=bool(self.backlog), max_result=self.max_result)

    def _attach_properties(self, reply: dict[str, Any]) -> None:
        if self.properties == self.sent_properties:
            return
        try:
            msgpack.packb(self.properties, use_bin_type=True)
        except Exception as e:  # noqa: BLE001
            reply["stderr"] += (f"\n[taskmill: engine properties not sent, they must be plain "
                                f"data (str, numbers, lists, dicts): {e}]\n")
            return
        reply["properties"] = dict(self.properties)
        self.sent_properties = dict(self.properties)
