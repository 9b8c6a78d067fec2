"""The engine: a Python process with a persistent namespace that runs one task at a time.

How a task travels through an engine:

    controller --tasks--> [task socket] I/O thread: the backlog (numbered messages; a skipped
                                          |          number is a lost message, reported)
                                          v
                          main thread: takes the next task while it holds a lease; for each:
                                          |  check pmac, unpickle body,
                                          |  clear_before, push, exec / call, pull, clear_after
                                          |  (stdout/stderr captured; TaskRejectError -> rejected)
    controller <-results- [result socket] +  pickled value or exception, traceback text,
                                             timings, properties when task code changed them;
                                             kept until the controller acknowledges them
    controller <--hb-->   [control socket] I/O thread: registration, heartbeats (what this
                                          engine holds, its lease), interrupts, revokes
    controller <-ping->   [heart socket]  a ZeroMQ device echoing pings without the GIL

Three threads: the main thread runs task code and sends results; the I/O thread owns the task
and control sockets (registration, heartbeats, interrupts, revokes, acknowledgements); the
heart thread is ZeroMQ's own C device, so the controller hears this engine live even while
task code holds the GIL. The I/O thread interrupts the running task on `abort` by sending the
main thread a signal whose handler raises `TaskInterrupted` in the task code.

Being honest under faults:
- A task starts only under a lease: within a share of the controller's `dead_after` of a
  heartbeat it answered. An engine stopped or cut off longer than that (so perhaps declared
  dead, its tasks failed or given elsewhere) waits for a fresh answer before it starts another
  task; if the answer says it was declared dead, it drops every task it held, interrupts the
  running one, and registers anew.
- A result is kept until the controller acknowledges it (after storing it): a lost message
  or a controller restart costs a resend, never the result. After a restart, the engine
  drops the tasks waiting in its backlog (they never started) and registers naming the task
  it runs and the results not yet acknowledged, so the new controller adopts them.
- The heartbeat names the tasks held and the task messages received, so the controller
  finds a lost `tasks` message within a heartbeat and queues its tasks again.

An engine may hold several tasks (the controller's prefetch). Each carries `dseq`, the
controller's dispatch number, which rises in the order the engine runs them. So "not started
yet" is `dseq > the last started`, and the I/O thread can promise a task back to the
controller (`revoke`) without asking the main thread: a revoked task is dropped when its turn
comes, never run and never reported.
"""

from __future__ import annotations

import builtins
import faulthandler
import io
import json
import linecache
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid as uuidlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from .connection import ConnectionInfo
from .curve import apply_client as apply_curve
from .defaults import DEFAULT_HEARTBEAT
from .errors import (
    ControllerUnreachable,
    SerializationError,
    TaskAborted,
    TaskRejectError,
    TaskTimeout,
)
from .wire import (
    DEFAULT_MAX_MESSAGE,
    FunctionLoads,
    Refused,
    Wire,
    apply_transport_heartbeat,
    dumps,
    frame_len,
    loads,
    recv_message,
    send_message,
)

log = logging.getLogger("taskmill.engine")

OUTPUT_LIMIT = 1 << 20  # bytes of stdout (and of stderr) kept per task
INTERRUPT_SIGNAL = signal.SIGUSR1
CONTROL_TICK = 0.01  # seconds the control thread sleeps at most (timeouts are this precise)
RESIGNAL_EVERY = 0.2  # seconds between signals to code that has not yet let one through
KILL_GRACE = 3.0  # seconds past an abort or a timeout before the engine process is ended
RESULT_HEADROOM = 64 * 1024  # bytes of a result message kept for its header
# Results of tiny tasks travel together: while more tasks wait in the backlog, a result waits
# for others, at most RESULT_BATCH of them and RESULT_DELAY seconds (the control thread sends
# what waited longer, when the main thread is busy with a longer task).
RESULT_BATCH = 64
RESULT_DELAY = 0.001
RESULT_BATCH_BYTES = 256 * 1024
REGISTER_RETRY_FIRST = 1.0  # seconds to wait for `registered` before asking again, doubling
REGISTER_RETRY_MAX = 10.0
# An engine starts a task only within this share of the controller's `dead_after` of a
# heartbeat the controller answered (see Engine._next_task).
LEASE_SHARE = 0.6

_CURRENT: Engine | None = None


class TaskInterrupted(BaseException):
    """Raised inside task code when the controller interrupts it (abort).

    A BaseException, so that task code's `except Exception` does not swallow it.
    """


def current_engine() -> Engine:
    """The engine running the current task (for `.engineid` and `.properties`)."""
    if _CURRENT is None:
        raise RuntimeError(
            "current_engine() works only inside task code running on a taskmill engine"
        )
    return _CURRENT


def parse_property(text: str) -> tuple[str, Any]:
    """`KEY=VALUE`, VALUE read as JSON when it parses (1, true, "x"), else kept as a str."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"a property must look like KEY=VALUE, not {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


class _Capture(io.TextIOBase):
    """A bounded text sink for one task's stdout or stderr."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        room = self.limit - self.size
        if room > 0:
            kept = s[:room]
            self.parts.append(kept)
            self.size += len(kept)
            self.dropped += len(s) - len(kept)
        else:
            self.dropped += len(s)
        return len(s)

    def getvalue(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[taskmill: output truncated, {self.dropped} more characters dropped]\n"
        return text


def _format_remote_traceback(exc: BaseException) -> str:
    """The traceback of task code, without the engine's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


class Engine:
    """One engine: connect, register, run tasks until stopped."""

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
        self._start_properties = dict(properties or {})
        self.properties: dict[str, Any] = {}
        self._sent_properties: dict[str, Any] = {}
        # One namespace per engine, cleared in place (`_reset`): functions defined
        # interactively are rebuilt over this very dict, and the cache keeps them so.
        self.namespace: dict[str, Any] = {}
        self._functions = FunctionLoads(namespace=self.namespace)  # MapTask functions
        self.heartbeat = DEFAULT_HEARTBEAT
        self.lease = 1.0  # seconds an answered heartbeat lets this engine start tasks
        self.max_result = DEFAULT_MAX_MESSAGE - RESULT_HEADROOM
        self._stop = threading.Event()
        self._fatal: BaseException | None = None  # the I/O thread gave up (first registration)
        # Everything below is shared by the main thread and the I/O thread: under _lock.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the main thread waits on it for tasks
        self.session: bytes | None = None  # the controller session this engine belongs to
        self._registered = False
        self._need_register = True
        self._prev_session: bytes | None = None  # a restarted controller's predecessor
        self._lease_until = 0.0  # monotonic: buffered tasks may start only before it
        self._lease_wanted = False  # the main thread waits for a fresh lease: ask at once
        self._current: tuple[int, int] | None = None  # (tid, attempt) running now
        self._finishing = False  # the current task's code is over; its result is being made
        self._deadline: float | None = None  # monotonic time the running task must end by
        self._interrupt_req: tuple[int, str] | None = None  # (tid, "abort"|"timeout"|"drop")
        self._in_task_code = False
        self._skip: set[tuple[int, int]] = set()  # aborted before they started
        self._revoked: set[int] = set()  # dseqs given back to the controller: dropped silently
        self._last_started = 0  # the highest dseq started (tasks run in dseq order)
        self._backlog: deque[tuple[dict[str, Any], list[Any]]] = deque()
        self._mseq_seen = 0  # the highest `tasks` message number received this registration
        self._missing: set[int] = set()  # numbers skipped: those messages were lost
        # Results until the controller acknowledges them (it does after storing them):
        # (tid, attempt) -> (entry, body). A lost message or a controller restart costs a
        # resend, never the result.
        self._unacked: dict[tuple[int, int], tuple[dict[str, Any], list[Any]]] = {}
        self._unsent: list[tuple[dict[str, Any], list[Any]]] = []  # held to travel together
        self._unsent_since = 0.0
        self._unsent_bytes = 0
        self._generation = 0  # rises with each registration; stale "reregister"s are ignored
        self.ctx = zmq.Context()
        self.task_sock = self._dealer(b".t")  # I/O thread: register, tasks in
        self.ctl_sock = self._dealer(b".c")  # I/O thread: heartbeats, control, late results
        self.res_sock = self._dealer(b".r")  # main thread: results out
        self.heart_sock = self._dealer(b".h")  # echo device: liveness without the GIL
        wire_of = {s: Wire(info.key_bytes) for s in (self.task_sock, self.ctl_sock,
                                                     self.res_sock)}
        # One Wire per socket: replay checks hold per socket, where messages arrive in order.
        self._wires = wire_of
        self.wire = wire_of[self.res_sock]
        self._reset()

    def _dealer(self, suffix: bytes) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.ROUTING_ID, self.uuid.encode() + suffix)
        # A first try 10 ms after a refused connect (an engine started beside its controller
        # usually gets there before it listens), doubling up to 2 s while nobody listens.
        s.setsockopt(zmq.RECONNECT_IVL, 10)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        s.setsockopt(zmq.MAXMSGSIZE, DEFAULT_MAX_MESSAGE)
        apply_transport_heartbeat(s)
        apply_curve(s, self.info)
        s.connect(self.info.engine_url)
        return s

    # -- namespace and properties ----------------------------------------------------------
    def _base_properties(self) -> dict[str, Any]:
        props = dict(self._start_properties)
        props.update(hostname=self.hostname, pid=self.pid)
        if self.engineid is not None:
            props["engineid"] = self.engineid
        return props

    def _reset(self) -> None:
        self.namespace.clear()
        self.namespace.update(__name__="__main__", __builtins__=builtins, engineid=self.engineid)
        self.properties.clear()
        self.properties.update(self._base_properties())

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        """Register, then run tasks until `stop()`."""
        global _CURRENT
        _CURRENT = self
        old = signal.signal(INTERRUPT_SIGNAL, self._on_interrupt_signal)
        heart = threading.Thread(target=self._heart, name="taskmill-heart", daemon=True)
        heart.start()
        io_thread = threading.Thread(target=self._io_loop, name="taskmill-io", daemon=True)
        io_thread.start()
        try:
            self._task_loop()
        finally:
            self._stop.set()
            with self._work:
                self._work.notify_all()
            io_thread.join(timeout=2)
            signal.signal(INTERRUPT_SIGNAL, old)
            _CURRENT = None
            self.res_sock.close(linger=500)
            self.task_sock.close(linger=0)
            self.ctl_sock.close(linger=0)
            self.ctx.term()  # (ends the heart's device, which then closes its socket)
            heart.join(timeout=2)

    def stop(self) -> None:
        """Stop after the running task (safe from a signal handler: takes no lock; the main
        thread notices within 0.1 s)."""
        self._stop.set()

    def _heart(self) -> None:
        """Echo whatever the controller sends to the heart socket, in ZeroMQ's own C code,
        which runs without the GIL: task code that holds the GIL for minutes (a long regex,
        a C extension) never makes a live engine look dead. A stopped process (SIGSTOP) or a
        cut network does not answer."""
        try:
            zmq.proxy(self.heart_sock, self.heart_sock)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as e:  # (the context ends while the device starts)
            if e.errno != zmq.ETERM:
                log.warning("the heartbeat device stopped: %s", e)
        finally:
            self.heart_sock.close(linger=0)

    # -- the main thread: run tasks in order -----------------------------------------------
    def _task_loop(self) -> None:
        while True:
            with self._work:
                job = self._next_task()
            if job is None:
                if self._fatal is not None:
                    raise self._fatal
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
            if self._stop.is_set() or self._fatal is not None:
                return None
            if self._registered and not self._need_register and self._backlog:
                if time.monotonic() < self._lease_until:
                    job = self._start_next()
                    if job is not None:
                        return job
                    continue
                self._lease_wanted = True
            elif not self._backlog:
                unsent = self._take_unsent()
                if unsent:  # nothing more to run now: what waited goes
                    self._lock.release()
                    try:
                        self._send_results(self.res_sock, unsent)
                    finally:
                        self._lock.acquire()
                    continue
            self._work.wait(0.1)

    def _start_next(self) -> tuple[dict[str, Any], list[Any]] | None:
        """(Under the lock.) Take the next backlog task and make it the current one; None if
        it was given back (revoked) or aborted before it started (then its result is queued)."""
        entry, frames = self._backlog.popleft()
        key = (entry["tid"], entry["attempt"])
        seq = entry.get("dseq")
        if isinstance(seq, int):
            if seq in self._revoked:  # promised back to the controller: never runs
                self._revoked.discard(seq)
                return None
            self._last_started = max(self._last_started, seq)
        if key in self._skip:
            self._skip.discard(key)
            reply = {"tid": key[0], "attempt": key[1], "kind": entry["exec"]["kind"],
                     "status": "error", "duration": 0.0,
                     **self._error_fields(TaskAborted(f"task {key[0]} was aborted"))}
            for batch in self._queue_result(reply, []):
                self._send_results(self.res_sock, batch)  # (main thread: its socket)
            return None
        self._current = key
        self._interrupt_req = None
        timeout = entry.get("timeout")
        self._deadline = time.monotonic() + timeout if timeout else None
        return entry, frames

    # -- the I/O thread: sockets, registration, heartbeats, control ------------------------
    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.task_sock, zmq.POLLIN)
        poller.register(self.ctl_sock, zmq.POLLIN)
        started = time.monotonic()
        reg_wait = REGISTER_RETRY_FIRST
        reg_next = 0.0  # when to (re)send hello/register
        reg_log = REGISTER_RETRY_FIRST
        next_hb = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                with self._lock:
                    need_register = self._need_register
                    wanted, self._lease_wanted = self._lease_wanted, False
                if need_register:
                    if (self.register_timeout is not None and self.engineid is None
                            and now - started >= self.register_timeout):
                        raise ControllerUnreachable(
                            f"no taskmill controller answered at {self.info.engine_url} "
                            f"within {self.register_timeout:g}s; start it (`taskmill "
                            "controller` or `taskmill cluster start`), or check that this "
                            "machine can reach that address (the controller's --location)")
                    if now >= reg_next:
                        self._send(self.task_sock, {"type": "hello"})
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
                if self._interrupt_req is not None:
                    wake = min(wake, now + RESIGNAL_EVERY)
                if self._deadline is not None:
                    wake = min(wake, self._deadline)
                for sock, _ in poller.poll(max(1, int((wake - now) * 1000))):
                    for _ in range(100):  # (what is waiting, without starving the rest)
                        try:
                            msg = recv_message(sock, zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_message(sock, msg)
        except ControllerUnreachable as e:
            self._fatal = e
        except zmq.ContextTerminated:
            pass
        except Exception as e:  # noqa: BLE001 - the main thread must hear of it
            log.exception("the engine's I/O thread failed")
            self._fatal = e
        finally:
            with self._work:
                self._work.notify_all()

    def _on_message(self, sock: zmq.Socket, msg: list[Any]) -> None:
        try:
            header, frames = self._wires[sock].decode(msg)
        except Refused as e:
            log.warning("refused a message: %s", e)
            return
        kind = header["type"]
        if kind == "tasks":
            self._take_tasks(header, frames)
        elif kind == "hb":
            self._on_heartbeat_answer(header)
        elif kind == "interrupt":
            tid, attempt = header.get("tid"), header.get("attempt")
            if isinstance(tid, int) and isinstance(attempt, int):
                self._request_interrupt((tid, attempt), "abort")
        elif kind == "revoke":
            self._answer_revoke(header)
        elif kind == "welcome":
            self._on_welcome(header)
        elif kind == "registered":
            self._on_registered(header)
        elif kind == "reregister":
            self._on_reregister(header)

    # -- registration ----------------------------------------------------------------------
    def _on_welcome(self, header: dict[str, Any]) -> None:
        """The controller's session: register with it (the registration names what this
        engine still runs or has finished for the controller before it, if it restarted)."""
        session = header.get("session")
        if not isinstance(session, bytes):
            return
        with self._lock:
            if not self._need_register:
                return
            if self.session is not None and session != self.session:
                self._restarted(session)
            self.session = session
            running = list(self._current) if self._current else None
            finished = [list(k) for k in self._unacked]
            prev = self._prev_session
        self._send(self.task_sock, {
            "type": "register", "uuid": self.uuid, "ctl_ident": self.uuid.encode() + b".c",
            "res_ident": self.uuid.encode() + b".r", "heart_ident": self.uuid.encode() + b".h",
            "hostname": self.hostname, "pid": self.pid, "properties": self._start_properties,
            "session": session, "prev_session": prev, "running": running,
            "finished": finished, "t": time.monotonic(),
        })

    def _on_registered(self, header: dict[str, Any]) -> None:
        if header.get("session") != self.session or not isinstance(header.get("engineid"), int):
            return
        first = self.engineid is None
        with self._lock:
            if not self._need_register:
                return  # (an answer to a repeated register)
            self.engineid = header["engineid"]
            self.heartbeat = float(header.get("heartbeat", 1.0))
            # The controller declares this engine dead after `dead_after` seconds without a
            # sign of it; the lease stays well inside that.
            self.lease = LEASE_SHARE * float(header.get("dead_after", 3 * self.heartbeat))
            sent = header.get("t")
            if isinstance(sent, int | float):
                self._lease_until = sent + self.lease
            limit = header.get("max_message")
            if isinstance(limit, int) and limit > 0:
                self.max_result = limit - min(RESULT_HEADROOM, limit // 2)
            self.namespace["engineid"] = self.engineid
            self.properties["engineid"] = self.engineid
            self._sent_properties = dict(header.get("properties") or {})
            # A new registration numbers its dispatches and messages from the start again.
            self._last_started = 0
            self._revoked.clear()
            self._mseq_seen = 0
            self._missing.clear()
            self._prev_session = None
            self._generation += 1
            self._need_register = False
            self._registered = True
            resend = list(self._unacked.values())  # results the controller may not have
            self._work.notify_all()
        log.info("registered as engine %d%s", self.engineid, "" if first else " (again)")
        if resend:
            self._send_results(self.ctl_sock, resend)

    def _on_reregister(self, header: dict[str, Any]) -> None:
        """The controller does not know this engine: it restarted (another session), or it
        declared this engine dead (same session: a SIGSTOP, a network cut). Then every task
        held here has been failed or given to another engine: drop them all, interrupt the
        running one, and register anew."""
        session = header.get("session")
        with self._lock:
            if header.get("gen") != self._generation or self._need_register:
                return  # stale: an answer to a heartbeat sent before the latest registration
            self._need_register = True
            self._registered = False
            if isinstance(session, bytes) and session != self.session:
                log.warning("the controller restarted: registering again (what runs here "
                            "goes on; what waited here is dropped)")
                self._restarted(session)
                self.session = session
                return
            log.warning("the controller declared this engine dead (was it stopped, or cut "
                        "off?): dropping every task it held and registering anew")
            self._backlog.clear()
            self._skip.clear()
            self._unacked.clear()
            self._take_unsent()
            self.session = None
            if self._current is not None:
                self._request_interrupt_locked(self._current, "drop")

    def _restarted(self, session: bytes) -> None:
        """(Under the lock.) A new controller session: the tasks waiting here never started
        (its registration says which run or finished; it queues the rest again)."""
        if self._prev_session is None:
            self._prev_session = self.session
        self._backlog.clear()
        self._skip.clear()

    # -- tasks in --------------------------------------------------------------------------
    def _take_tasks(self, header: dict[str, Any], frames: list[Any]) -> None:
        """Queue the tasks of a `tasks` message, each with its own payload frames. Message
        numbers that were skipped are noted: those messages were lost on the way (a reset
        connection), and the next report says so."""
        if header.get("session") != self.session:
            return
        entries = header.get("tasks")
        mseq = header.get("mseq")
        if not isinstance(entries, list) or not isinstance(mseq, int):
            log.warning("refused a tasks message without a task list and number")
            return
        batch = []
        pos = 0
        for entry in entries:
            n = entry.get("n", 0) if isinstance(entry, dict) else -1
            if (not isinstance(n, int) or n < 0 or pos + n > len(frames)
                    or not isinstance(entry.get("tid"), int)
                    or not isinstance(entry.get("attempt"), int)):
                log.warning("refused a tasks message whose tasks do not match its frames")
                return
            batch.append((entry, frames[pos:pos + n]))
            pos += n
        with self._lock:
            if self._need_register:
                return  # for a registration that is over
            if mseq > self._mseq_seen + 1:
                self._missing.update(range(self._mseq_seen + 1, mseq))
            self._missing.discard(mseq)
            self._mseq_seen = max(self._mseq_seen, mseq)
            self._backlog.extend(batch)
            if batch:
                self._work.notify()

    # -- heartbeats: what this engine holds, and the lease ---------------------------------
    def _send_report(self, now: float) -> None:
        """The heartbeat: what this engine holds (so that a lost message costs a heartbeat,
        not a task), and a request for a fresh lease."""
        with self._lock:
            held = [[e["tid"], e["attempt"]] for e, _ in self._backlog
                    if e.get("dseq") not in self._revoked]
            if self._current is not None:
                held.insert(0, list(self._current))
            report = {"type": "hb", "engineid": self.engineid, "gen": self._generation,
                      "session": self.session, "t": now, "held": held,
                      "current": list(self._current) if self._current else None,
                      "unacked": [list(k) for k in self._unacked],
                      "mseq": self._mseq_seen, "missing": sorted(self._missing)}
        self._send(self.ctl_sock, report)

    def _on_heartbeat_answer(self, header: dict[str, Any]) -> None:
        sent = header.get("t")
        resend = []
        with self._lock:
            if header.get("session") != self.session or self._need_register:
                return
            if isinstance(sent, int | float) and not isinstance(sent, bool):
                self._lease_until = max(self._lease_until, sent + self.lease)
                self._work.notify()
            for key in header.get("ack") or ():
                if isinstance(key, list) and len(key) == 2:
                    self._unacked.pop((key[0], key[1]), None)
            for key in header.get("resend") or ():
                if isinstance(key, list) and len(key) == 2:
                    held = self._unacked.get((key[0], key[1]))
                    if held is not None:
                        resend.append(held)
        if resend:
            self._send_results(self.ctl_sock, resend)

    def _answer_revoke(self, header: dict[str, Any]) -> None:
        """Give a buffered task back, if it has not started (tasks start in dseq order)."""
        seq = header.get("dseq")
        if not isinstance(seq, int):
            return
        with self._lock:
            ok = seq > self._last_started and header.get("session") == self.session
            if ok:
                self._revoked.add(seq)
        self._send(self.ctl_sock, {"type": "revoked", "tid": header.get("tid"),
                                   "attempt": header.get("attempt"), "ok": ok,
                                   "session": self.session})

    # -- interrupts ------------------------------------------------------------------------
    def _watch_running_task(self, now: float) -> None:
        """Past its timeout a task is interrupted; an interruption not yet taken is sent again."""
        with self._lock:
            current, deadline, req = self._current, self._deadline, self._interrupt_req
            if current is None or self._finishing:
                return
            if req is None and deadline is not None and now >= deadline:
                self._request_interrupt_locked(current, "timeout")
            elif req is not None and req[0] == current[0] and self._in_task_code:
                signal.pthread_kill(threading.main_thread().ident, INTERRUPT_SIGNAL)

    def _request_interrupt(self, key: tuple[int, int], reason: str) -> None:
        with self._lock:
            self._request_interrupt_locked(key, reason)

    def _request_interrupt_locked(self, key: tuple[int, int], reason: str) -> None:
        if self._current == key and self._finishing:
            return  # its code is over: nothing to interrupt (its result is on the way)
        if self._current != key:
            if reason == "abort" and any((e["tid"], e["attempt"]) == key
                                         for e, _ in self._backlog):
                self._skip.add(key)  # buffered behind the running task
            return
        self._interrupt_req = (key[0], reason)
        if reason == "abort":
            # If the code never lets the interruption through (a C call holding the GIL),
            # faulthandler's own thread ends the process; the nanny starts a new engine.
            # Armed under the lock: the main thread cancels it under the lock too, after
            # the task is over, so it can never outlive the task.
            faulthandler.dump_traceback_later(KILL_GRACE, exit=True, file=sys.__stderr__)
        if self._in_task_code:
            signal.pthread_kill(threading.main_thread().ident, INTERRUPT_SIGNAL)

    def _on_interrupt_signal(self, signum: int, frame: Any) -> None:
        req = self._interrupt_req
        current = self._current
        if self._in_task_code and req is not None and current is not None \
                and req[0] == current[0]:
            raise TaskInterrupted(req[1])

    # -- running a task --------------------------------------------------------------------
    def _run_task(self, header: dict[str, Any], frames: list[Any]) -> None:
        tid, attempt = header["tid"], header["attempt"]
        spec = header["exec"]
        kind = spec["kind"]
        reply: dict[str, Any] = {"tid": tid, "attempt": attempt, "kind": kind}
        timeout = header.get("timeout")
        out, err = _Capture(self.output_limit), _Capture(self.output_limit)
        value: Any = None
        exc: BaseException | None = None
        dropped = False
        t0 = time.perf_counter()
        old_out, old_err = sys.stdout, sys.stderr
        if timeout:
            # The last resort for code that never lets the interruption through. (The
            # controller admits timeouts up to MAX_TIMEOUT, which faulthandler takes.)
            try:
                faulthandler.dump_traceback_later(timeout + KILL_GRACE, exit=True,
                                                  file=sys.__stderr__)
            except (OverflowError, ValueError):
                log.warning("task %s: timeout %r too large for the last-resort kill", tid,
                            timeout)
        try:
            if frames:
                self.wire.check_payload(frames, header.get("pmac"))
            sys.stdout, sys.stderr = out, err
            try:
                if spec.get("clear_before"):
                    self._reset()
                value = self._execute(tid, spec, frames)
            finally:
                if spec.get("clear_after"):
                    self._reset()
        except TaskInterrupted as e:
            if e.args and e.args[0] == "drop":
                dropped = True
            elif e.args and e.args[0] == "timeout":
                exc = TaskTimeout(f"task {tid} ran past its timeout of {timeout:g}s on engine "
                                  f"{self.engineid} and was interrupted")
            else:
                exc = TaskAborted(f"task {tid} was interrupted on engine {self.engineid}")
        except Refused as e:
            exc = SerializationError(f"task {tid}'s payload was refused by the engine: {e}")
        except BaseException as e:  # noqa: BLE001 - task code may raise anything
            exc = e
        finally:
            self._in_task_code = False
            sys.stdout, sys.stderr = old_out, old_err
            with self._lock:
                faulthandler.cancel_dump_traceback_later()
                if self._interrupt_req is not None and self._interrupt_req[1] == "drop":
                    dropped = True
                # The task stays current until its result is queued (a heartbeat must never
                # show it neither held nor finished), but nothing can interrupt it any more.
                self._finishing = True
                self._deadline = None
                self._interrupt_req = None
        if dropped:
            with self._lock:
                self._current = None
                self._finishing = False
            return  # this engine was declared dead: its task was failed or given elsewhere
        reply["duration"] = time.perf_counter() - t0
        reply["stdout"], reply["stderr"] = out.getvalue(), err.getvalue()
        body: list[Any] = []
        if exc is None:
            try:
                body = dumps(value)
                reply["status"] = "ok"
            except Exception as e:  # noqa: BLE001 - any pickling failure
                exc = SerializationError(
                    f"task {tid}'s result ({type(value).__name__}) cannot be pickled: {e}")
            else:
                size = sum(memoryview(f).nbytes for f in body)
                output = len(reply["stdout"].encode()) + len(reply["stderr"].encode())
                if size + output > self.max_result:
                    body = []
                    exc = SerializationError(
                        f"task {tid}'s result is {size} bytes pickled, more than the "
                        f"controller accepts ({self.max_result} bytes; see its "
                        "--max-message-size); return less, or write it to shared storage")
        if exc is not None:
            reply["status"] = "rejected" if isinstance(exc, TaskRejectError) else "error"
            reply.update(self._error_fields(exc))
            body = self._pickle_exception(exc, reply["error"])
        if body:
            reply["pmac"] = self.wire.payload_mac(body)
        self._attach_properties(reply)
        with self._lock:
            batches = self._queue_result(reply, body)
            self._current = None
            self._finishing = False
        for batch in batches:
            self._send_results(self.res_sock, batch)

    # -- results out -----------------------------------------------------------------------
    def _queue_result(self, entry: dict[str, Any],
                      body: list[Any]) -> list[list[tuple[dict[str, Any], list[Any]]]]:
        """(Under the lock.) Keep a result until it is acknowledged, and return the batches
        to send now, each one message below the size limit (none while more tasks wait to run
        right away, or while unregistered)."""
        entry["n"] = len(body)
        self._unacked[(entry["tid"], entry["attempt"])] = (entry, body)
        size = sum(frame_len(f) for f in body)
        early: list[tuple[dict[str, Any], list[Any]]] = []
        if self._unsent and self._unsent_bytes + size > self.max_result:
            early = self._take_unsent()  # (together they would pass the size limit)
        if not self._unsent:
            self._unsent_since = time.monotonic()
        self._unsent.append((entry, body))
        self._unsent_bytes += size
        hold = (not self._registered or (
            self._backlog and len(self._unsent) < RESULT_BATCH
            and self._unsent_bytes < RESULT_BATCH_BYTES
            and time.monotonic() - self._unsent_since < RESULT_DELAY))
        batches = [early] if early else []
        if not hold:
            batches.append(self._take_unsent())
        return [b for b in batches if b]

    def _take_unsent(self) -> list[tuple[dict[str, Any], list[Any]]]:
        """The results waiting to be sent (called under the lock)."""
        if not self._registered:
            return []
        batch, self._unsent = self._unsent, []
        self._unsent_bytes = 0
        return batch

    def _send_results(self, sock: zmq.Socket, batch: list[tuple[dict[str, Any], list[Any]]]) -> None:
        """Send results, in as many messages as the size limit needs."""
        part: list[tuple[dict[str, Any], list[Any]]] = []
        size = 0
        for entry, body in batch:
            n = sum(frame_len(f) for f in body)
            if part and size + n > self.max_result:
                self._send_result_message(sock, part)
                part, size = [], 0
            part.append((entry, body))
            size += n
        if part:
            self._send_result_message(sock, part)

    def _send_result_message(self, sock: zmq.Socket,
                             batch: list[tuple[dict[str, Any], list[Any]]]) -> None:
        frames = [f for _, body in batch for f in body]
        self._send(sock, {"type": "results", "session": self.session,
                          "results": [e for e, _ in batch]}, frames)

    def _send_late_results(self, now: float) -> None:
        """(I/O thread) Results held while the main thread runs a longer task go now."""
        with self._lock:
            if not self._unsent or now - self._unsent_since < RESULT_DELAY:
                return
            batch = self._take_unsent()
        if batch:
            self._send_results(self.ctl_sock, batch)

    def _send(self, sock: zmq.Socket, header: dict[str, Any], frames: Sequence[Any] = ()) -> None:
        send_message(sock, self._wires[sock].encode(header, frames))

    def _execute(self, tid: int, spec: dict[str, Any], frames: list[Any]) -> Any:
        if spec["kind"] == "string":
            ns = self.namespace
            if frames:
                ns.update(self._unpickle(tid, frames, "pushed values", self._load_here))
            filename = f"<taskmill task {tid}>"
            source = spec["expression"]
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            code = compile(source, filename, "exec")
            self._in_task_code = True
            exec(code, ns)
            self._in_task_code = False
            results = {}
            for name in spec.get("pull", ()):
                if name not in ns:
                    raise NameError(f"name {name!r} is not defined (pulled by task {tid})")
                results[name] = ns[name]
            return results
        n = spec.get("fn")
        if isinstance(n, int) and 0 < n <= len(frames):
            func = self._unpickle(tid, frames[:n], "function", self._functions.loads)
            args, kwargs = self._unpickle(tid, frames[n:], "arguments", self._load_here)
        else:
            func, args, kwargs = self._unpickle(tid, frames, "function or arguments",
                                                self._load_here)
        self._in_task_code = True
        return func(*args, **kwargs)

    def _load_here(self, frames: list[Any]) -> Any:
        """Unpickle a task's payload: functions defined interactively in it (the task's
        function, one passed as an argument as `map` does, a pushed one) get this engine's
        namespace as their globals, and the globals they brought are set there (SPEC §2)."""
        return loads(frames, self.namespace)

    def _unpickle(self, tid: int, frames: list[Any], what: str, load: Any = None) -> Any:
        try:
            return (load or loads)(frames)
        except Exception as e:
            raise SerializationError(
                f"task {tid}'s {what} cannot be unpickled on engine {self.engineid} "
                f"({type(e).__name__}: {e}); is every module it needs installed on the "
                "engine's machine?") from e

    def _error_fields(self, exc: BaseException) -> dict[str, Any]:
        return {"error": {
            "type": type(exc).__qualname__, "module": type(exc).__module__,
            "message": str(exc), "traceback": _format_remote_traceback(exc), "pickled": False,
        }}

    def _pickle_exception(self, exc: BaseException, info: dict[str, Any]) -> list[Any]:
        """The exception pickled, if it survives a round trip here; else nothing (RemoteError)."""
        try:
            exc.__traceback__ = None
            body = dumps(exc)
            loads(body)
        except Exception:  # noqa: BLE001 - unpicklable exceptions become RemoteError
            return []
        info["pickled"] = True
        return body

    def _attach_properties(self, reply: dict[str, Any]) -> None:
        if self.properties == self._sent_properties:
            return
        try:
            msgpack.packb(self.properties, use_bin_type=True)
        except Exception as e:  # noqa: BLE001
            reply["stderr"] += (f"\n[taskmill: engine properties not sent, they must be plain "
                                f"data (str, numbers, lists, dicts): {e}]\n")
            return
        reply["properties"] = dict(self.properties)
        self._sent_properties = dict(self.properties)


def watch_parent(fd: int, on_exit: Any) -> None:
    """Call `on_exit()` when the write end of pipe `fd` closes (its owner died)."""

    def wait() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        on_exit()

    threading.Thread(target=wait, name="taskmill-parent-watch", daemon=True).start()


def run_engine(info: ConnectionInfo, properties: dict[str, Any] | None = None,
               parent_fd: int | None = None, register_timeout: float | None = None) -> None:
    engine = Engine(info, properties, register_timeout=register_timeout)

    def _term(signum: int, frame: Any) -> None:
        engine.stop()
        if engine._in_task_code:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, _term)
    if parent_fd is not None:
        watch_parent(parent_fd, lambda: os._exit(0))
    engine.run()
