"""The engine: a Python process with a persistent namespace that runs one task at a time.

How a task travels through an engine:

    controller --tasks-> [task socket] main thread: the backlog, run in order; for each task:
                                          |  check pmac, unpickle body,
                                          |  clear_before, push, exec / call, pull, clear_after
                                          |  (stdout/stderr captured; TaskRejectError -> rejected)
    controller <-results [task socket] <--+  pickled value or exception, traceback text, timings,
                                             properties when task code changed them
    controller <--hb---> [control socket] control thread: heartbeats, interrupts, revokes,
                                          re-registration

The main thread owns the task socket and registers through it, so the controller never sends a
task to a socket that has not connected. The control thread owns the control socket; it keeps
heartbeating while task code runs, and it interrupts the running task on `abort` by sending the
main thread a signal whose handler raises `TaskInterrupted` in the task code.

An engine may hold several tasks (the controller's prefetch). Each carries `dseq`, the
controller's dispatch number, which rises in the order the engine runs them. So "not started
yet" is `dseq > the last started`, and the control thread can promise a task back to the
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
from .errors import (
    ControllerUnreachable,
    SerializationError,
    TaskAborted,
    TaskRejectError,
    TaskTimeout,
)
from .wire import (
    FunctionLoads,
    Refused,
    Wire,
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
        self.wire = Wire(info.key_bytes)
        self.uuid = uuidlib.uuid4().hex
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.output_limit = output_limit
        self.engineid: int | None = None
        self._start_properties = dict(properties or {})
        self.properties: dict[str, Any] = {}
        self._sent_properties: dict[str, Any] = {}
        self.namespace: dict[str, Any] = {}
        self._functions = FunctionLoads()  # MapTask functions, unpickled once
        self.heartbeat = 1.0
        self.max_result = self.wire.max_message - RESULT_HEADROOM
        self._stop = threading.Event()
        self._need_register = threading.Event()
        self._registered = threading.Event()
        self._lock = threading.Lock()  # guards _current and _skip
        self._current: int | None = None
        self._deadline: float | None = None  # monotonic time the running task must end by
        self._interrupt_req: tuple[int, str] | None = None  # (tid, "abort" | "timeout")
        self._in_task_code = False
        self._skip: set[int] = set()  # aborted before they started: reported as aborted
        self._revoked: set[int] = set()  # seqs given back to the controller: dropped silently
        self._last_started = 0  # the highest seq started (tasks run in seq order)
        self._backlog: deque[tuple[dict[str, Any], list[Any]]] = deque()
        self._unsent: list[tuple[dict[str, Any], list[Any]]] = []  # results held (see _send_result)
        self._unsent_since = 0.0
        self._unsent_bytes = 0
        self._generation = 0  # rises with each registration; stale "reregister"s are ignored
        self.ctx = zmq.Context()
        self.task_sock = self._dealer(b".t")
        self.ctl_sock = self._dealer(b".c")
        # One Wire per socket: replay checks hold per socket, where messages arrive in order.
        self._wires = {self.task_sock: self.wire, self.ctl_sock: Wire(info.key_bytes)}
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
        s.setsockopt(zmq.MAXMSGSIZE, self.wire.max_message)
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
        ctl = threading.Thread(target=self._control_loop, name="taskmill-control", daemon=True)
        ctl.start()
        try:
            self._register()
            self._task_loop()
        finally:
            self._stop.set()
            ctl.join(timeout=2)
            signal.signal(INTERRUPT_SIGNAL, old)
            _CURRENT = None
            self.task_sock.close(linger=500)
            self.ctl_sock.close(linger=0)
            self.ctx.term()

    def stop(self) -> None:
        self._stop.set()

    def _register(self) -> None:
        """Send `register` through the task socket until the controller answers.

        Without an answer it asks again after 1 s, then 2, 4, ... at most every
        REGISTER_RETRY_MAX: an engine started before its controller, or cut off from it, waits
        instead of dying (ZeroMQ reconnects by itself, and a request queued while nobody
        listened reaches the controller as soon as it does). Only a first registration can time
        out, after `register_timeout`. Tasks that arrive meanwhile are kept for the task loop,
        never dropped.
        """
        self._registered.clear()
        started = time.monotonic()
        wait = REGISTER_RETRY_FIRST
        next_log = 0.0
        while not self._stop.is_set():
            if (self.register_timeout is not None and self.engineid is None
                    and time.monotonic() - started >= self.register_timeout):
                raise ControllerUnreachable(
                    f"no taskmill controller answered at {self.info.engine_url} within "
                    f"{self.register_timeout:g}s; start it (`taskmill controller` or "
                    "`taskmill cluster start`), or check that this machine can reach that "
                    "address (the controller's --location)")
            self._send(self.task_sock, {
                "type": "register", "uuid": self.uuid, "ctl_ident": self.uuid.encode() + b".c",
                "hostname": self.hostname, "pid": self.pid, "properties": self._start_properties,
            })
            deadline = time.monotonic() + wait
            if self.register_timeout is not None and self.engineid is None:
                deadline = min(deadline, started + self.register_timeout)
            while time.monotonic() < deadline and not self._stop.is_set():
                if not self.task_sock.poll(100):
                    continue
                header, frames = self._recv(self.task_sock)
                if header is None:
                    continue
                if header["type"] == "tasks":
                    self._take_tasks(header, frames)
                elif header["type"] == "registered":
                    first = self.engineid is None
                    self.engineid = header["engineid"]
                    self.heartbeat = float(header.get("heartbeat", 1.0))
                    limit = header.get("max_message")
                    if isinstance(limit, int) and limit > 0:
                        self.max_result = limit - min(RESULT_HEADROOM, limit // 2)
                    self.namespace["engineid"] = self.engineid
                    self.properties["engineid"] = self.engineid
                    self._sent_properties = dict(header.get("properties") or {})
                    with self._lock:  # a new controller numbers its dispatches from 1 again
                        self._last_started = 0
                        self._revoked.clear()
                    self._generation += 1
                    self._need_register.clear()
                    self._registered.set()
                    log.info("registered as engine %d%s", self.engineid,
                             "" if first else " (again)")
                    return
            waited = time.monotonic() - started
            if waited >= next_log:  # each retry while backing off, then once a minute
                log.warning("no answer from the controller at %s after %.0fs; asking again "
                            "(next wait %.0fs)", self.info.engine_url, waited,
                            min(wait * 2, REGISTER_RETRY_MAX))
                next_log = waited + (60.0 if wait >= REGISTER_RETRY_MAX else 0.0)
            wait = min(wait * 2, REGISTER_RETRY_MAX)

    def _send(self, sock: zmq.Socket, header: dict[str, Any], frames: Sequence[Any] = ()) -> None:
        send_message(sock, self._wires[sock].encode(header, frames))

    def _recv(self, sock: zmq.Socket) -> tuple[dict[str, Any] | None, list[Any]]:
        msg = recv_message(sock)
        try:
            return self._wires[sock].decode(msg)
        except Refused as e:
            log.warning("refused a message: %s", e)
            return None, []

    def _take_tasks(self, header: dict[str, Any], frames: list[Any]) -> None:
        """Queue the tasks of a `tasks` message, each with its own payload frames."""
        eid = header.get("engineid")
        if isinstance(eid, int) and eid != self.engineid:
            self.engineid = eid
            self.namespace["engineid"] = eid
        entries = header.get("tasks")
        if not isinstance(entries, list):
            log.warning("refused a tasks message without a task list")
            return
        pos = 0
        for entry in entries:
            n = entry.get("n", 0) if isinstance(entry, dict) else -1
            if not isinstance(n, int) or n < 0 or pos + n > len(frames):
                log.warning("refused a tasks message whose tasks do not match its frames")
                return
            self._backlog.append((entry, frames[pos:pos + n]))
            pos += n

    def _task_loop(self) -> None:
        while not self._stop.is_set():
            if self._need_register.is_set():
                self._register()
                continue
            if not self._backlog:
                with self._lock:
                    held = self._take_unsent()
                if held:  # nothing more to run now: what waited goes
                    self._send_results(self.task_sock, held)
                if not self.task_sock.poll(100):
                    continue
                header, frames = self._recv(self.task_sock)
                if header is not None and header["type"] == "tasks":
                    self._take_tasks(header, frames)
                continue
            entry, frames = self._backlog.popleft()
            try:
                self._run_task(entry, frames)
            except TaskInterrupted:
                pass  # a late interrupt that landed outside task code: nothing to undo

    # -- control thread --------------------------------------------------------------------
    def _control_loop(self) -> None:
        while not self._registered.wait(0.1):
            if self._stop.is_set():
                return
        next_hb = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_hb:
                self._send(self.ctl_sock, {"type": "hb", "engineid": self.engineid,
                                           "gen": self._generation})
                next_hb = now + self.heartbeat
            self._watch_running_task(now)
            self._send_late_results(now)
            # Wake at least every CONTROL_TICK: a task's deadline is set by the main thread
            # after this thread went to sleep.
            wake = min(next_hb, now + CONTROL_TICK)
            if self._interrupt_req is not None:
                wake = min(wake, now + RESIGNAL_EVERY)
            if self._deadline is not None:
                wake = min(wake, self._deadline)
            if not self.ctl_sock.poll(max(1, int((wake - now) * 1000))):
                continue
            header, _ = self._recv(self.ctl_sock)
            if header is None:
                continue
            kind = header["type"]
            if kind == "interrupt":
                self._request_interrupt(header["tid"], "abort")
            elif kind == "revoke":
                self._answer_revoke(header)
            elif (kind == "reregister" and header.get("gen") == self._generation
                  and not self._need_register.is_set()):
                # (A reply to a heartbeat sent before the latest registration is stale, and
                # after a network cut every heartbeat sent during it is answered at once.)
                log.warning("the controller does not know this engine: registering again")
                self._need_register.set()

    def _answer_revoke(self, header: dict[str, Any]) -> None:
        """Give a buffered task back, if it has not started (tasks start in seq order)."""
        seq = header.get("dseq")
        if not isinstance(seq, int):
            return
        with self._lock:
            ok = seq > self._last_started
            if ok:
                self._revoked.add(seq)
        self._send(self.ctl_sock, {"type": "revoked", "tid": header.get("tid"),
                                   "attempt": header.get("attempt"), "ok": ok})

    def _watch_running_task(self, now: float) -> None:
        """Past its timeout a task is interrupted; an interruption not yet taken is sent again."""
        with self._lock:
            current, deadline, req = self._current, self._deadline, self._interrupt_req
        if current is None:
            return
        if req is None and deadline is not None and now >= deadline:
            self._request_interrupt(current, "timeout")
        elif req is not None and req[0] == current and self._in_task_code:
            signal.pthread_kill(threading.main_thread().ident, INTERRUPT_SIGNAL)

    def _request_interrupt(self, tid: int, reason: str) -> None:
        with self._lock:
            if self._current != tid:
                if reason == "abort":
                    self._skip.add(tid)  # buffered behind the running task
                return
            self._interrupt_req = (tid, reason)
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
        if self._in_task_code and req is not None and req[0] == self._current:
            raise TaskInterrupted(req[1])

    # -- running a task --------------------------------------------------------------------
    def _run_task(self, header: dict[str, Any], frames: list[Any]) -> None:
        tid, attempt = header["tid"], header["attempt"]
        spec = header["exec"]
        kind = spec["kind"]
        reply: dict[str, Any] = {"tid": tid, "attempt": attempt, "kind": kind}
        timeout = header.get("timeout")
        seq = header.get("dseq")
        with self._lock:
            if isinstance(seq, int):
                if seq in self._revoked:  # promised back to the controller: never runs
                    self._revoked.discard(seq)
                    return
                self._last_started = max(self._last_started, seq)
            if tid in self._skip:
                self._skip.discard(tid)
                skipped = True
            else:
                skipped = False
                self._current = tid
                self._interrupt_req = None
                if timeout:
                    self._deadline = time.monotonic() + timeout
        if skipped:
            reply.update(status="error", duration=0.0,
                         **self._error_fields(TaskAborted(f"task {tid} was aborted")))
            self._send_result(reply, [])
            return
        out, err = _Capture(self.output_limit), _Capture(self.output_limit)
        value: Any = None
        exc: BaseException | None = None
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
            if e.args and e.args[0] == "timeout":
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
                self._current = None
                self._deadline = None
                self._interrupt_req = None
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
        self._send_result(reply, body)

    def _send_result(self, entry: dict[str, Any], body: list[Any]) -> None:
        """Queue a result; send the queue now unless more tasks wait to run right away."""
        entry["n"] = len(body)
        size = sum(frame_len(f) for f in body)
        with self._lock:
            if not self._unsent:
                self._unsent_since = time.monotonic()
            self._unsent.append((entry, body))
            self._unsent_bytes += size
            hold = (self._backlog and len(self._unsent) < RESULT_BATCH
                    and self._unsent_bytes < RESULT_BATCH_BYTES
                    and time.monotonic() - self._unsent_since < RESULT_DELAY)
            batch = [] if hold else self._take_unsent()
        if batch:
            self._send_results(self.task_sock, batch)

    def _take_unsent(self) -> list[tuple[dict[str, Any], list[Any]]]:
        """The results waiting to be sent (called under the lock)."""
        batch, self._unsent = self._unsent, []
        self._unsent_bytes = 0
        return batch

    def _send_results(self, sock: zmq.Socket, batch: list[tuple[dict[str, Any], list[Any]]]) -> None:
        frames = [f for _, body in batch for f in body]
        self._send(sock, {"type": "results", "results": [e for e, _ in batch]}, frames)

    def _send_late_results(self, now: float) -> None:
        """(Control thread) Results held while the main thread runs a longer task go now."""
        with self._lock:
            if not self._unsent or now - self._unsent_since < RESULT_DELAY:
                return
            batch = self._take_unsent()
        self._send_results(self.ctl_sock, batch)

    def _execute(self, tid: int, spec: dict[str, Any], frames: list[Any]) -> Any:
        if spec["kind"] == "string":
            ns = self.namespace
            if frames:
                ns.update(self._unpickle(tid, frames, "pushed values"))
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
            args, kwargs = self._unpickle(tid, frames[n:], "arguments")
        else:
            func, args, kwargs = self._unpickle(tid, frames, "function or arguments")
        self._in_task_code = True
        return func(*args, **kwargs)

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
