"""The engine's state both of its threads share, and its I/O thread.

`EngineControl` is the part of an `Engine` (core.py) that talks to the controller, over the
sockets of sockets.py: registration (hello/welcome/register/registered) and numbered `tasks`
messages (a skipped number is a lost message, reported) on the task socket; heartbeats (what it
holds, its lease) and their answers (the lease renewed, results acknowledged or asked again,
`reregister`), `stored` (large results acknowledged at once: controller/engines.py), interrupts
and revokes on the control socket; results on the result socket (main thread). When those go
deaf, channels.py says so and the I/O thread moves to new ones. The registration's handlers
are in registration.py (a mixin of this class).

The I/O thread (`io_loop`) owns the task and control sockets. What the main thread and the I/O
thread share is guarded by `lock` (`work` is its condition, on which the main thread waits for
tasks): registration state, the lease, the backlog, the running task and what it is to be
interrupted for, revoked and skipped tasks, the kept `put` values (running.py) and the results
outbox (results.py). An interrupt (abort, timeout, or drop after this engine was declared dead)
is a signal to the main thread, whose handler raises `TaskInterrupted` in task code.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import zmq

from ..connection import ConnectionInfo
from ..defaults import DEAD_AFTER_HEARTBEATS, DEFAULT_HEARTBEAT, KILL_GRACE, silent_after
from ..errors import ControllerUnreachable
from ..protocol import (
    HbAnswer,
    Heartbeat,
    InterruptTask,
    Leaving,
    Registered,
    Reregister,
    Results,
    Retired,
    Revoked,
    RevokeTask,
    Stored,
    Tasks,
    Welcome,
    from_controller,
    to_controller,
)
from ..wire import DEFAULT_MAX_MESSAGE, Refused, recv_message
from .channels import ChannelWatch
from .registration import RESULT_HEADROOM, Registration
from .results import Result, ResultOutbox, split_by_size
from .running import OUTPUT_LIMIT, KeptValues, TaskCode, TaskInterrupted, split_tasks
from .sockets import EngineSockets

log = logging.getLogger("taskmill.engine")

INTERRUPT_SIGNAL = signal.SIGUSR1
CONTROL_TICK = 0.01  # seconds the control thread sleeps at most (timeouts are this precise)
RESIGNAL_EVERY = 0.2  # seconds between signals to code that has not yet let one through
REGISTER_RETRY_FIRST = 1.0  # seconds to wait for `registered` before asking again, doubling
REGISTER_RETRY_MAX = 10.0
# As plain ints: `&` of pyzmq's IntFlag members runs enum code in Python.
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)


class EngineControl(Registration):
    """An engine's identity, sockets and shared state, and what its I/O thread does."""

    def __init__(
        self,
        info: ConnectionInfo,
        properties: dict[str, Any] | None = None,
        *,
        output_limit: int = OUTPUT_LIMIT,
        register_timeout: float | None = None,
    ) -> None:
        self.info = info
        self.register_timeout = register_timeout
        self.uuid = uuidlib.uuid4().hex
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.output_limit = output_limit
        self.engineid: int | None = None
        self.start_properties = dict(properties or {})
        self.properties: dict[str, Any] = {}
        self.sent_properties: dict[str, Any] = {}
        # One namespace per engine, cleared in place (`Engine._reset`): functions defined
        # interactively are rebuilt over this very dict, and the cache keeps them so.
        self.namespace: dict[str, Any] = {}
        self.code = TaskCode(self.namespace)  # running task code (main thread)
        self.heartbeat = DEFAULT_HEARTBEAT
        self.lease = 1.0  # seconds an answered heartbeat lets this engine start tasks
        self.max_result = DEFAULT_MAX_MESSAGE - RESULT_HEADROOM
        self.stopping = threading.Event()
        self.fatal: BaseException | None = None  # the I/O thread gave up (first registration)
        # Everything below is shared by the main thread and the I/O thread: under `lock`
        # (package-internal: core.py and this module use it, nothing else should).
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # the main thread waits on it for tasks
        self.session: bytes | None = None  # the controller session this engine belongs to
        self.registered = False
        self.need_register = True
        self._prev_session: bytes | None = None  # a restarted controller's predecessor
        self.lease_until = 0.0  # monotonic: buffered tasks may start only before it
        self.lease_wanted = False  # the main thread waits for a fresh lease: ask at once
        self.current: tuple[int, int] | None = None  # (tid, attempt) running now
        self.finishing = False  # the current task's code is over; its result is being made
        self.deadline: float | None = None  # monotonic time the running task must end by
        self.interrupt_req: tuple[int, str] | None = None  # (tid, "abort"|"timeout"|"drop")
        self.kill_at: float | None = None  # monotonic: faulthandler's last-resort kill is due
        self.kill_report_fd: int | None = None  # (supervise.py: told of each kill armed)
        self.signalled_at = 0.0  # monotonic: the last interrupt signal to the main thread
        self.skip: set[tuple[int, int]] = set()  # aborted before they started
        self.revoked: set[int] = set()  # dseqs given back to the controller: dropped silently
        self.said_leaving = False  # `leaving` (or `retired`) was sent: see _say_leaving
        self.dropped: tuple[int, int] | None = None  # the task SIGTERM interrupted
        self.last_started = 0  # the highest dseq started (tasks run in dseq order)
        self.backlog: deque[tuple[dict[str, Any], list[Any]]] = deque()
        self._mseq_seen = 0  # the highest `tasks` message number received this registration
        self._missing: set[int] = set()  # numbers skipped: those messages were lost
        # Results until the controller acknowledges them (it does after storing them).
        self.outbox = ResultOutbox()
        self.kept = KeptValues()  # `put` values the controller sent to keep (running.py)
        self._generation = 0  # rises with each registration; stale "reregister"s are ignored
        # Moving to new connections (channels.py): the registration keeps this engine's tasks.
        self.moving = False
        self.sockets = EngineSockets(info, self.uuid)
        self.wire = self.sockets.payload_wire  # payload digests
        self.watch = ChannelWatch(silent_after(DEAD_AFTER_HEARTBEATS * self.heartbeat),
                                  time.monotonic())
    # -- the I/O thread: sockets, registration, heartbeats, control ------------------------
    def io_loop(self) -> None:
        poller = zmq.Poller()
        self.sockets.register(poller)
        started = time.monotonic()
        reg_wait = REGISTER_RETRY_FIRST
        reg_next = 0.0  # when to (re)send hello/register
        reg_log = REGISTER_RETRY_FIRST
        next_hb = 0.0
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                why = self.watch.due(now)
                if why is not None:
                    self._reconnect(why, poller)
                    reg_next = now
                with self.lock:
                    need_register = self.need_register
                    wanted, self.lease_wanted = self.lease_wanted, False
                if need_register:
                    if (self.register_timeout is not None and self.engineid is None
                            and now - started >= self.register_timeout):
                        if self.sockets.connected:  # (a controller ignores a wrong key)
                            raise ControllerUnreachable(
                                f"the controller at {self.info.engine_url} took the "
                                f"connection but did not answer within "
                                f"{self.register_timeout:g}s: most likely this engine's "
                                "connection file holds another key than the controller's (a "
                                "file of another cluster, or of an earlier start): give it "
                                "the controller's current one; else the controller is stopped")
                        raise ControllerUnreachable(
                            f"no taskmill controller answered at {self.info.engine_url} "
                            f"within {self.register_timeout:g}s; start it (`taskmill "
                            "controller` or `taskmill cluster start`), or check that this "
                            "machine can reach that address (the controller's --location)")
                    if now >= reg_next:
                        self._send(self.sockets.task, {"type": "hello"})
                        reg_next = now + reg_wait
                        if now - started >= reg_log and self.engineid is None:
                            log.warning("no answer from the controller at %s after %.0fs; "
                                        "asking again", self.info.engine_url, now - started)
                            reg_log = now - started + 60.0
                        reg_wait = min(reg_wait * 2, REGISTER_RETRY_MAX)
                elif now >= next_hb or wanted:
                    self._send_report(now)
                    next_hb = now + self.heartbeat
                else:
                    reg_wait = REGISTER_RETRY_FIRST
                self._watch_running_task(now)
                self._send_late_results(now)
                # Wake at least every CONTROL_TICK: a task's deadline is set by the main
                # thread after this thread went to sleep.
                wake = min(next_hb if not need_register else reg_next, now + CONTROL_TICK)
                if self.interrupt_req is not None:
                    wake = min(wake, now + RESIGNAL_EVERY)
                if self.deadline is not None:
                    wake = min(wake, self.deadline)
                for sock, _ in poller.poll(max(1, int((wake - now) * 1000))):
                    broke = self.sockets.broke(sock)  # (a monitor's report)
                    if broke is not None:
                        if broke:  # (ZeroMQ's own reconnection may go unheard)
                            self.watch.broke(self.heartbeat)
                        continue
                    for i in range(100):  # (what is waiting, without starving the rest)
                        # (asking costs less than the zmq.Again of reading past the last)
                        if i and not sock.getsockopt(EVENTS) & POLLIN:
                            break
                        try:
                            msg = recv_message(sock, zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_message(sock, msg)
        except ControllerUnreachable as e:
            self.fatal = e
        except zmq.ContextTerminated:
            pass
        except Exception as e:  # noqa: BLE001 - the main thread must hear of it
            log.exception("the engine's I/O thread failed")
            self.fatal = e
        finally:
            self._say_leaving()
            self.sockets.close_io()
            with self.work:
                self.work.notify_all()

    def _say_leaving(self) -> None:
        """(Stopping: SIGTERM) Tell the controller that this engine goes, and which task it
        was running (interrupted, not reported; or still ending): every other task the controller gave it
        never started here, and is queued again at once and stored so (they were lost with
        the engine: EngineDied, even after `cluster stop` and `start --resume`). Every result
        not yet acknowledged goes first, on the same socket, so that none is taken for a
        task never started (a result sent before on the result socket may come later)."""
        with self.lock:
            if not self.stopping.is_set() or not self.registered or self.said_leaving:
                return
            self.said_leaving = True
            unstarted = [[e["tid"], e["attempt"]] for e, _ in self.backlog]
            self.backlog.clear()
            self.take_unsent()  # (all of them are in `unacked` too)
            results = list(self.outbox.unacked.values())
            # (the task still running too: its code may take long to end, in a `finally`)
            named = self.dropped if self.dropped is not None else self.current
            running = list(named) if named is not None else None
        try:
            if results:
                self.send_results(self.sockets.ctl, results)
            self._send(self.sockets.ctl,
                       to_controller(Leaving(unstarted, running), self.session))
        except zmq.ZMQError as e:
            log.warning("could not tell the controller this engine is leaving: %s", e)

    def _reconnect(self, why: str, poller: zmq.Poller) -> None:
        """New connections with new routing ids (channels.py says why); a registered engine
        registers them and keeps its id and its tasks."""
        log.warning("%s: connecting to the controller at %s again, on new connections", why,
                    self.info.engine_url)
        with self.lock:
            if self.registered:
                self.moving = True
                self.registered = False
                self.need_register = True
            self.sockets.reconnect(poller)

    def _on_message(self, sock: zmq.Socket, msg: list[Any]) -> None:
        try:
            header, frames = self.sockets.decode(sock, msg)
        except Refused as e:
            log.warning("refused a message: %s", e)
            return
        try:
            m = from_controller(header)
        except (KeyError, ValueError) as e:  # (msgspec.ValidationError is a ValueError)
            log.warning("refused a %r message from the controller: %s", header.get("type"), e)
            return
        if isinstance(m, Tasks):
            self._take_tasks(m, frames)
        elif isinstance(m, HbAnswer):
            self._on_heartbeat_answer(m)
        elif isinstance(m, InterruptTask):
            with self.lock:
                self._request_interrupt_locked((m.tid, m.attempt), "abort")
        elif isinstance(m, RevokeTask):
            self._answer_revoke(m)
        elif isinstance(m, Welcome):
            self._on_welcome(m)
        elif isinstance(m, Registered):
            self._on_registered(m)
        elif isinstance(m, Reregister):
            self._on_reregister(m)
        elif isinstance(m, Stored) and m.session == self.session:
            with self.lock:  # (large results acknowledged at once: controller/engines.py)
                self.outbox.acked(m.ack)

    # -- tasks in --------------------------------------------------------------------------
    def _take_tasks(self, m: Tasks, frames: list[Any]) -> None:
        """Queue the tasks of a `tasks` message, each with its frames. Skipped message numbers
        are noted: those were lost on the way (a reset connection); the next report says so.
        The lease is renewed from the latest heartbeat the controller heard (`t`)."""
        if m.session != self.session:
            return
        mseq = m.mseq
        batch = split_tasks(m.tasks, frames)
        if batch is None:
            log.warning("refused a tasks message whose tasks do not match its frames")
            return
        with self.lock:
            if self.need_register:
                return  # for a registration that is over
            if mseq > self._mseq_seen + 1:
                self._missing.update(range(self._mseq_seen + 1, mseq))
            self._missing.discard(mseq)
            self._mseq_seen = max(self._mseq_seen, mseq)
            if isinstance(m.t, int | float) and not isinstance(m.t, bool):
                # (the controller heard this engine at `t`: as a heartbeat's answer says)
                self.lease_until = max(self.lease_until, m.t + self.lease)
            for entry, entry_frames in batch:
                self.kept.receive(entry, entry_frames)
            self.backlog.extend(batch)
            if batch:
                self.work.notify()

    # -- heartbeats: what this engine holds, and the lease ---------------------------------
    def _held(self) -> list[list[int]]:
        """(Under the lock.) [tid, attempt] of what this engine holds: the running task, then
        the backlog it has not given back."""
        held = [[e["tid"], e["attempt"]] for e, _ in self.backlog
                if e.get("dseq") not in self.revoked]
        if self.current is not None:
            held.insert(0, list(self.current))
        return held

    def _send_report(self, now: float) -> None:
        """The heartbeat: what this engine holds (so that a lost message costs a heartbeat,
        not a task), and a request for a fresh lease."""
        with self.lock:
            report = to_controller(Heartbeat(
                held=self._held(), unacked=[list(k) for k in self.outbox.unacked],
                current=list(self.current) if self.current else None, mseq=self._mseq_seen,
                missing=sorted(self._missing), t=now, gen=self._generation), self.session)
        self._send(self.sockets.ctl, report)

    def _on_heartbeat_answer(self, m: HbAnswer) -> None:
        sent = m.t
        resend = []
        now = time.monotonic()
        with self.lock:
            if m.session != self.session or self.need_register:
                return
            self.watch.heard(now)
            self.watch.task_numbers(now, m.mseq, self._mseq_seen)
            if isinstance(sent, int | float) and not isinstance(sent, bool):
                self.lease_until = max(self.lease_until, sent + self.lease)
                self.work.notify()
            self.outbox.acked(m.ack)
            for key in m.resend:
                held = self.outbox.unacked.get(key)
                if held is not None:
                    resend.append(held)
            # Told to retire (it gets no new task): stop, if it holds nothing, results too.
            retire = m.retire and not (self.finishing or self._held() or self.outbox.unacked
                                       or self.outbox.unsent)
        if retire:
            self._send(self.sockets.ctl, to_controller(Retired(), self.session))
            self.said_leaving = True  # (holding nothing)
            self.stopping.set()
        if resend:  # (sent on the result socket, never arrived: it may be deaf)
            self.watch.alarm(f"results {[e['tid'] for e, _ in resend]} were lost")
            self.send_results(self.sockets.ctl, resend)

    def _answer_revoke(self, m: RevokeTask) -> None:
        """Give a buffered task back, if it has not started (tasks start in dseq order)."""
        with self.lock:
            ok = m.dseq > self.last_started and m.session == self.session
            if ok:
                self.revoked.add(m.dseq)
        self._send(self.sockets.ctl, to_controller(Revoked(m.tid, m.attempt, ok), self.session))

    # -- interrupts ------------------------------------------------------------------------
    def _watch_running_task(self, now: float) -> None:
        """Past its timeout a task is interrupted; an interruption not yet taken is sent again."""
        with self.lock:
            current, deadline, req = self.current, self.deadline, self.interrupt_req
            if current is None or self.finishing:
                return
            if req is None and deadline is not None and now >= deadline:
                self._request_interrupt_locked(current, "timeout")
            elif req is not None and req[0] == current[0] and self.code.active \
                    and now - self.signalled_at >= RESIGNAL_EVERY:
                self._signal_locked(now)

    def _request_interrupt_locked(self, key: tuple[int, int], reason: str) -> None:
        if self.current == key and self.finishing:
            return  # its code is over: nothing to interrupt (its result is on the way)
        if self.current != key:
            if reason == "abort" and any((e["tid"], e["attempt"]) == key
                                         for e, _ in self.backlog):
                self.skip.add(key)  # buffered behind the running task
            return
        now = time.monotonic()
        again = self.interrupt_req == (key[0], reason)  # (an abort sent again: heartbeats)
        self.interrupt_req = (key[0], reason)
        if reason == "abort":
            # If the code never lets the interruption through (a C call holding the GIL),
            # faulthandler's own thread ends the process; the nanny starts a new engine.
            if not again:  # (faulthandler's own words then are a bare "Timeout" and stacks)
                log.info("task %d was aborted: if its code does not let the interruption "
                         "through within %gs, this engine process ends, and a new engine takes "
                         "its place (unless it runs with `taskmill engine --no-replace`)",
                         key[0], KILL_GRACE)
            self.arm_kill_locked(now + KILL_GRACE)
        if self.code.active and (not again or now - self.signalled_at >= RESIGNAL_EVERY):
            self._signal_locked(now)

    def _signal_locked(self, now: float) -> None:
        """(Signals at most every RESIGNAL_EVERY: the task's own clean-up must get its turn.)"""
        self.signalled_at = now
        signal.pthread_kill(threading.main_thread().ident, INTERRUPT_SIGNAL)

    def arm_kill_locked(self, at: float) -> None:
        """End this process at `at` (monotonic) unless the task is over by then: the earliest
        kill asked for stands (an abort sent again must not push it later). Armed under the
        lock: the main thread cancels it under the lock too (`disarm_kill_locked`), after
        the task is over, so it can never outlive the task."""
        if self.kill_at is not None and self.kill_at <= at:
            return
        try:
            faulthandler.dump_traceback_later(max(at - time.monotonic(), 0.001), exit=True,
                                              file=sys.__stderr__)
        except (OverflowError, ValueError):
            log.warning("a last-resort kill %.0fs away is too far to arm", at - time.monotonic())
            return
        except RuntimeError as e:  # (no thread for its watchdog: a pids or threads limit)
            log.warning("cannot arm the last-resort kill for the running task (%s: this "
                        "process is at its thread or process limit?): it runs without it, so "
                        "code that does not let an interruption through is not ended", e)
            return
        self.kill_at = at
        self._report_kill(b"k")

    def disarm_kill_locked(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        if self.kill_at is not None:
            self._report_kill(b"-")
        self.kill_at = None

    def _report_kill(self, what: bytes) -> None:
        """Tell the process that replaces this engine after its kill (supervise.py)."""
        if self.kill_report_fd is not None:
            try:
                os.write(self.kill_report_fd, what)
            except OSError:
                pass

    def on_interrupt_signal(self, signum: int, frame: Any) -> None:
        req = self.interrupt_req
        current = self.current
        if self.code.active and req is not None and current is not None \
                and req[0] == current[0]:
            raise TaskInterrupted(req[1])

    # -- results out -----------------------------------------------------------------------
    def take_unsent(self) -> list[Result]:
        """The results waiting to be sent (called under the lock)."""
        return self.outbox.take(self.registered)

    def send_results(self, sock: zmq.Socket, batch: list[Result]) -> None:
        """Send results, in as many messages as the size limit needs."""
        for part in split_by_size(batch, self.max_result):
            frames = [f for _, body in part for f in body]
            self._send(sock, to_controller(Results([e for e, _ in part]), self.session), frames)

    def _send_late_results(self, now: float) -> None:
        """(I/O thread) Results held while the main thread runs a longer task go now."""
        with self.lock:
            if not self.outbox.overdue(now):
                return
            batch = self.take_unsent()
        if batch:
            self.send_results(self.sockets.ctl, batch)

    def _send(self, sock: zmq.Socket, header: dict[str, Any], frames: Sequence[Any] = ()) -> None:
        self.sockets.send(sock, header, frames)
