"""The blocking client, `TaskClient` (the seed's `BlockingTaskClient`).

How a call travels:

    caller thread --request--> [send socket, under a lock] --> controller
    controller --reply/done--> [receive socket] I/O thread --> resolves the caller's Future

The caller sends on its own socket, so a submit never waits for another thread; the I/O thread
owns the receive socket, and every reply carries `rt`, the id of that socket, so the controller
answers there. What crosses the wire is a small header plus opaque payload frames: tasks are
pickled here, once, and results are unpickled here, lazily, by the caller that asked for them.

Futures (`submit` and the maps built on them) travel the same way, in one request each:

    submit() --submit{tasks, watch}--> controller --reply{tids}--> I/O thread: taskids known
                                        controller --done{results}--> I/O thread: futures done

`submit` sends at once when no submit of this client is unanswered; otherwise its task waits
for that answer and then goes with every other task queued meanwhile, in one message (the
_Submitter). So a loop of submits costs a message per round trip, not per task, and a lone
submit never waits. Futures for tasks submitted before (`future`, `wait`) are named in `watch`
requests by the _Watcher instead. The I/O thread only marks futures done; `result()`
unpickles, in the thread that calls it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError, as_completed
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from concurrent.futures._base import CANCELLED
from typing import Any

import msgpack
import zmq

from .connection import find_connection_file, read_connection_file
from .curve import apply_client as apply_curve
from .errors import (
    CompositeError,
    ControllerUnreachable,
    MapFailure,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    StoreError,
    TaskAborted,
    TaskError,
    controller_error,
)

# Besides its own names, this module has those a program written for IPython.kernel finds in
# its `client` module (TaskClient, StringTask, MapTask, TaskResult, ResultNS, CompositeError,
# TaskRejectError), so that `from IPython.kernel import client` -> `from taskmill import client`
# is enough.
from .errors import TaskRejectError as TaskRejectError
from .task import (
    BaseTask,
    MapTask,
    StringTask,
    TaskResult,
    chain_links,
    check_seconds,
    normalize_after,
    recovery_chain,
)
from .task import ResultNS as ResultNS
from .wire import (
    MAX_FRAMES,
    FunctionPickles,
    Refused,
    Wire,
    dumps,
    dumps_arguments,
    frame_len,
    loads,
    recv_message,
    send_message,
    ship_local_modules,
)

SUBMIT_BATCH = 1000
MAX_SUBMITS_IN_FLIGHT = 1  # futures' submit requests unanswered at once (see _Submitter)
PING_INTERVAL = 1.0
RECONNECT_TIMEOUT = 120.0  # seconds of silence from the controller before calls give up
# Bytes of a submit message besides its tasks' own (envelope, type, req, rt, key, sid, seq).
SUBMIT_OVERHEAD = 1024
ABORT_WAIT = 10.0  # at most this long, a map that ends early waits for its aborts to be heard
TASKID_LIMIT = 2**63  # taskids are in range(TASKID_LIMIT); any other int is an unknown id
IDLE_AT_LEAST_EVERY = 256  # messages: a steady stream of replies must not starve the idle hook
# Requests sent again to a restarted controller (reads, and submits, which it de-duplicates).
RESENDABLE = frozenset({"submit", "result", "wait", "watch"})
TIME_FORMAT = "%Y/%m/%d %H:%M:%S"
_CONTROLLER_DECIDED = ("aborted", "unmet_timeout", "dependency")
METADATA_KEYS = ("engineid", "submitted", "started", "completed", "duration", "stdout", "stderr",
                 "attempts")


log = logging.getLogger("taskmill.client")


def _fmt_time(ts: float | None) -> str:
    return "" if ts is None else time.strftime(TIME_FORMAT, time.localtime(ts))


class _Connection:
    """Two DEALER sockets to the controller and the I/O thread that reads replies.

    The I/O thread pings the controller every second and counts how long nothing has arrived
    from it. Past `reconnect_timeout` seconds of silence the connection is *unreachable*: every
    request waiting for an answer fails with ControllerUnreachable, `on_unreachable` fails the
    client's futures, and every later request raises it at once. The pings go on, so when the
    controller answers again (restarted on the same connection file, or back on the network)
    the connection is usable again for new requests; what failed stays failed.
    """

    # Called on the I/O thread whenever it has read every message waiting (the client's
    # _Watcher sends the watch requests it batched up meanwhile).
    on_idle: Callable[[], None] | None = None
    # Called on the I/O thread when the controller is declared unreachable, with the error.
    on_unreachable: Callable[[BaseException], None] | None = None

    def __init__(self, connection: Any, timeout: float,
                 reconnect_timeout: float = RECONNECT_TIMEOUT) -> None:
        self.path = find_connection_file(connection)
        self.info = read_connection_file(self.path)
        # One Wire per socket: each sending socket has its own (sid, seq) stream, and replay
        # checks hold per receiving socket, where messages arrive in order.
        self.wire = Wire(self.info.key_bytes)  # the receive socket's (I/O thread only)
        self._send_wire = Wire(self.info.key_bytes)  # the send socket's (under _send_lock)
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        # Often enough that a healthy controller is never silent for reconnect_timeout.
        self._ping_interval = min(PING_INTERVAL, reconnect_timeout / 4)
        # The largest message the controller accepts (its hello says; else our own default).
        self.max_message = self._send_wire.max_message
        self.ctx = zmq.Context()
        base = uuidlib.uuid4().hex.encode()
        self.recv_ident = base + b".r"
        self._send_lock = threading.Lock()
        self._send_sock = self._dealer(base + b".s")
        self._recv_sock = self._dealer(self.recv_ident)
        self._req = itertools.count(1)
        self._futures: dict[int, Future] = {}
        self._outstanding: dict[int, tuple[dict[str, Any], list[Any]]] = {}
        self._partial: dict[int, list[tuple[dict[str, Any], list[Any]]]] = {}  # replies in pieces
        self._controller_sid: bytes | None = None
        # The controller's session (its replies say it): every request names it, so that a
        # request captured before a restart does nothing after it.
        self.session: bytes | None = None
        self._key_prefix = base.decode() + ":"
        self._streams: dict[int, Callable[[dict[str, Any], list[Any]], bool]] = {}
        self._silent = 0.0  # seconds of this thread's running time since the controller spoke
        self._unreachable = False
        self._say_hello = True  # the next keep-alive is a hello (its reply names the limit)
        self._closed = threading.Event()
        self._hello: Future = Future()
        self._thread = threading.Thread(target=self._io_loop, name="taskmill-client-io", daemon=True)
        self._thread.start()
        try:
            self.hello = self._hello.result(timeout)
        except FutureTimeout:
            self.close()
            raise ControllerUnreachable(
                f"no taskmill controller answered at {self.info.client_url} within {timeout:g}s "
                f"(connection file {self.path}). Start one with `taskmill cluster start` "
                "(or `taskmill controller`), or pass the right connection file."
            ) from None

    def _dealer(self, ident: bytes) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.ROUTING_ID, ident)
        s.setsockopt(zmq.RECONNECT_IVL, 10)  # 10 ms after a refused connect, doubling to 100
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
        s.setsockopt(zmq.MAXMSGSIZE, self.wire.max_message)
        apply_curve(s, self.info)
        s.connect(self.info.client_url)
        return s

    def _io_loop(self) -> None:
        sock = self._recv_sock
        next_ping = 0.0
        burst = 0  # messages read since the idle hook last ran
        last = time.monotonic()
        while not self._closed.is_set():
            now = time.monotonic()
            # Silence counts this thread's running time only: a pause of the whole process
            # (SIGSTOP, a laptop's sleep) adds at most one ping interval, so the replies
            # waiting when it resumes are read before anyone is told the controller is gone.
            self._silent += min(now - last, self._ping_interval)
            last = now
            if now >= next_ping:
                # Said from the receive socket, so the controller knows its id before any
                # reply; after the hello, pings tell a restarted controller from the old one.
                kind = "hello" if self._say_hello else "ping"
                try:  # never block here: with no connection yet, a DEALER's send would wait
                    sock.send_multipart(self.wire.encode({"type": kind, "req": 0}),
                                        flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    pass
                next_ping = now + (self._ping_interval if self._hello.done() else 0.5)
            if self._silent > self.reconnect_timeout and not self._unreachable \
                    and self._hello.done():
                self._declare_unreachable()
            if burst >= IDLE_AT_LEAST_EVERY or not sock.poll(0):
                burst = 0
                self._idle()
                if not sock.poll(100):
                    continue
            burst += 1
            msg = recv_message(sock)
            try:
                self._on_message(msg)
            except Exception:  # noqa: BLE001 - the I/O thread must keep reading
                log.exception("the client's I/O thread failed on a message")
        sock.close(0)

    def _on_message(self, msg: list[Any]) -> None:
        try:
            header, frames = self.wire.decode(msg)
        except Refused:
            return
        self._silent = 0.0
        session = header.get("session")
        if isinstance(session, bytes):
            self.session = session
        if self._unreachable:
            self._unreachable = False
            log.info("the controller at %s answers again", self.info.client_url)
        if header["sid"] != self._controller_sid:
            if self._controller_sid is not None:
                self._controller_restarted()
            self._controller_sid = header["sid"]
        req = header.get("req")
        if req == 0:
            if header.get("version") is not None:  # a hello's reply
                self._say_hello = False
                limit = header.get("max_message")
                if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                    self.max_message = limit
            if not self._hello.done():
                self._hello.set_result(header)
            return
        if header.get("more"):  # a reply in pieces (results above the size limit): keep it
            self._partial.setdefault(req, []).append((header, frames))
            return
        parts = self._partial.pop(req, None)
        if parts:
            header, frames = _joined([*parts, (header, frames)])
        if header.get("error_type") == "session" and self._resend_for_session(req):
            return
        stream = self._streams.get(req)
        if stream is not None:
            if stream(header, frames):
                del self._streams[req]
                self._outstanding.pop(req, None)
            return
        self._outstanding.pop(req, None)
        fut = self._futures.pop(req, None)
        if fut is not None and not fut.done():
            fut.set_result((header, frames))

    def _resend_for_session(self, req: Any) -> bool:
        """A request refused because it named an earlier controller session did nothing:
        send it again, named for the controller's session now. False if that is not it."""
        with self._send_lock:
            sent = self._outstanding.get(req)
            if sent is None:
                return False
            if sent[0].get("session") == self.session:
                return True  # (sent again already, when the restart was noticed)
            header, frames = sent
            header["session"] = self.session
            send_message(self._send_sock, self._send_wire.encode(header, frames))
        return True

    def _idle(self) -> None:
        hook = self.on_idle
        if hook is not None:
            try:
                hook()
            except Exception:  # noqa: BLE001 - the I/O thread must keep reading
                log.exception("the I/O thread's idle hook failed")

    def _controller_restarted(self) -> None:
        """A new controller answered: send again what the old one never answered."""
        self._say_hello = True  # (it may have another size limit)
        self._partial.clear()
        failed: list[tuple[Future | None, BaseException]] = []
        with self._send_lock:
            for req, (header, frames) in list(self._outstanding.items()):
                if header["type"] in RESENDABLE:
                    header["resent"] = True  # (a submit: the controller looks up its key)
                    header["session"] = self.session
                    try:
                        send_message(self._send_sock, self._send_wire.encode(header, frames))
                        continue
                    except Exception as e:  # noqa: BLE001 - (it was encoded once: cannot happen)
                        error: BaseException = e
                else:
                    error = ControllerUnreachable(
                        f"the controller at {self.info.client_url} restarted before it answered "
                        f"a {header['type']!r} request, which may or may not have taken effect")
                del self._outstanding[req]
                self._streams.pop(req, None)
                failed.append((self._futures.pop(req, None), error))
        for fut, error in failed:
            if fut is not None and not fut.done():
                fut.set_exception(error)

    def unreachable_error(self) -> ControllerUnreachable:
        return ControllerUnreachable(
            f"the controller at {self.info.client_url} (connection file {self.path}) has not "
            f"answered for {self.reconnect_timeout:g}s (this client's reconnect_timeout). Is it "
            "running? Started again on the same connection file (`taskmill controller "
            f"--connection-file {self.path}` with the same --db), it is used again by this "
            "client for new requests.")

    def _declare_unreachable(self) -> None:
        """Fail every request waiting for the controller, and the client's futures."""
        log.warning("the controller at %s has not answered for %gs: giving up on what waits "
                    "for it", self.info.client_url, self.reconnect_timeout)
        with self._send_lock:
            self._unreachable = True
            waiting = list(self._futures.values())
            self._futures.clear()
            self._streams.clear()
            self._outstanding.clear()
            self._partial.clear()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(self.unreachable_error())
        hook = self.on_unreachable
        if hook is not None:
            try:
                hook(self.unreachable_error())
            except Exception:  # noqa: BLE001 - the I/O thread must keep reading
                log.exception("failing the futures of an unreachable controller failed")

    def send(self, header: dict[str, Any], frames: Sequence[Any] = (),
             stream: Callable[[dict[str, Any], list[Any]], bool] | None = None) -> Future:
        """Send a request; the Future resolves to the reply (header, frames).

        The header is packed before the request is registered anywhere: one that cannot be
        encoded raises ValueError here, and nothing of it stays behind (it is never resent)."""
        if self._closed.is_set():
            raise RuntimeError("this client is closed")
        fut: Future = Future()
        with self._send_lock:
            if self._unreachable:
                raise self.unreachable_error()
            req = next(self._req)
            header["req"] = req
            header["rt"] = self.recv_ident
            header["session"] = self.session
            if header["type"] == "submit":
                header["key"] = self._key_prefix + str(req)  # lets a resend be recognised
            try:
                msg = self._send_wire.encode(header, frames)
            except (TypeError, ValueError, OverflowError) as e:
                raise ValueError(
                    f"cannot send a {header['type']!r} request: its header cannot be encoded "
                    f"({type(e).__name__}: {e}); it may hold only ints of at most 64 bits, str "
                    "without lone surrogates, bytes, lists and dicts of those") from None
            if stream is not None:
                self._streams[req] = stream
            else:
                self._futures[req] = fut
            self._outstanding[req] = (header, list(frames))
            send_message(self._send_sock, msg)
        return fut

    def call(self, header: dict[str, Any], frames: Sequence[Any] = (),
             timeout: float | None = -1.0) -> tuple[dict[str, Any], list[Any]]:
        """A request and its reply, within the client's `timeout` (-1) or `timeout` seconds
        (None: as long as the controller is reachable); past it, ControllerUnreachable."""
        return self.reply(self.send(header, frames), header, timeout)

    def reply(self, fut: Future, header: dict[str, Any],
              timeout: float | None = -1.0) -> tuple[dict[str, Any], list[Any]]:
        """`call`'s wait for the reply `fut` to the request `header`."""
        wait = self.timeout if timeout == -1.0 else timeout
        try:
            reply, frames = fut.result(wait)
        except ControllerUnreachable:  # (a TimeoutError too: not this wait's)
            raise
        except FutureTimeout:
            self._forget(header["req"])
            raise ControllerUnreachable(
                f"the controller at {self.info.client_url} did not answer a "
                f"{header['type']!r} request within {wait:g}s"
            ) from None
        return _checked(reply), frames

    def wait_reply(self, header: dict[str, Any], frames: Sequence[Any] = (),
                   timeout: float | None = None,
                   what: str = "") -> tuple[dict[str, Any], list[Any]]:
        """A request whose answer may take as long as tasks take (a blocking verb): waits until
        it comes, or the controller is unreachable (ControllerUnreachable), or the caller's
        own `timeout` has passed (then the builtin TimeoutError, and nothing is changed)."""
        fut = self.send(header, frames)
        try:
            reply, frames = fut.result(timeout)
        except ControllerUnreachable:  # (a TimeoutError too: not this wait's)
            raise
        except FutureTimeout:
            self._forget(header["req"])
            raise TimeoutError(f"{what or header['type']} did not finish within {timeout:g}s "
                               "(timeout=); the tasks are untouched") from None
        return _checked(reply), frames

    def _forget(self, req: int) -> None:
        with self._send_lock:
            self._outstanding.pop(req, None)
            self._futures.pop(req, None)
            self._streams.pop(req, None)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        with self._send_lock:
            self._send_sock.close(0)
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(RuntimeError("the client was closed"))
        self.ctx.destroy(linger=0)


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok", True):
        raise refusal(reply)
    return reply


def _joined(parts: list[tuple[dict[str, Any], list[Any]]]) -> tuple[dict[str, Any], list[Any]]:
    """The pieces of a reply sent in several messages (`more`), as one reply."""
    header = dict(parts[-1][0])
    header["results"] = [r for h, _ in parts for r in h.get("results") or ()]
    return header, [f for _, fr in parts for f in fr]


class TaskFuture(Future):
    """A `concurrent.futures.Future` for one task (SPEC.md §6.13).

    It works wherever a Future does: `concurrent.futures.wait` and `as_completed`,
    `asyncio.wrap_future`, `add_done_callback`. `taskid` is the task's id: `submit` does not
    wait for the controller to acknowledge it, so the first read of `taskid` may wait for that
    (up to the client's timeout). `metadata` is filled in when the task finishes: `engineid`,
    `submitted`, `started`, `completed` (float seconds since the epoch, or None), `duration`,
    `stdout`, `stderr`, `attempts`.

    The client's I/O thread marks the future done when the controller's `done` message arrives,
    without unpickling anything; `result()` and `exception()` unpickle the value or the remote
    exception in the thread that calls them (once: it is kept). A task's failure is raised by
    `result()` as its own type (§3, §6.1): for a StringTask `result()` is a `TaskResult`.
    `cancel()` aborts the task (see there).
    """

    def __init__(self, client: TaskClient, taskid: int | None = None) -> None:
        super().__init__()
        self._client = client
        self._taskid = taskid
        self._known_event: threading.Event | None = None
        self._submit_error: BaseException | None = None
        self._raw: tuple[dict[str, Any] | None, list[Any]] | None = None
        self._outcome: tuple[bool, Any] | None = None
        self._cancelling = False
        self.metadata: dict[str, Any] = dict.fromkeys(METADATA_KEYS)

    @property
    def taskid(self) -> int:
        """The task's id, once the controller has acknowledged the submit.

        Waits for that while the controller is reachable (a restart is ridden out); raises
        ControllerUnreachable once it has not answered for the client's `reconnect_timeout`,
        or the error that kept the task from being submitted."""
        conn = self._client._conn
        wait = conn.timeout + conn.reconnect_timeout  # (a backstop: the I/O thread ends it)
        if not self._wait_known(wait):
            raise ControllerUnreachable(
                f"the controller at {conn.info.client_url} did not acknowledge a submit "
                f"within {wait:g}s")
        if self._taskid is None:
            assert self._submit_error is not None
            raise self._submit_error
        return self._taskid

    def _wait_known(self, wait: float | None) -> bool:
        """Wait until the taskid (or the submit's failure) is known; False if `wait` passed."""
        if self._known():
            return True
        # An Event made only when someone waits (most futures learn their id first). The
        # Future's own condition serves as the lock, never notified: Future.result() would
        # take a notify for its result and give up.
        with self._condition:
            if self._known_event is None:
                self._known_event = threading.Event()
            event = self._known_event
            if self._known():
                event.set()
        return event.wait(wait)

    def _known(self) -> bool:
        return self._taskid is not None or self._submit_error is not None

    # -- what the client does to it ----------------------------------------------------------
    def _set_taskid(self, tid: int) -> None:
        with self._condition:
            self._taskid = tid
            event = self._known_event
        if event is not None:
            event.set()

    def _submit_failed(self, exc: BaseException) -> None:
        with self._condition:
            self._submit_error = exc
            event = self._known_event
        if event is not None:
            event.set()
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        try:
            self.set_exception(exc)
        except InvalidStateError:
            pass

    def _resolve(self, meta: dict[str, Any] | None, frames: list[Any]) -> None:
        """The task finished (called on the I/O thread; nothing is unpickled here)."""
        if meta:
            for key in METADATA_KEYS:
                if key in meta:
                    self.metadata[key] = meta[key]
        if self._cancelling and meta and meta.get("status") == "aborted":
            self._mark_cancelled()
            return
        self._raw = (meta, frames)
        try:
            self.set_result(None)
        except InvalidStateError:  # cancelled meanwhile
            self._raw = None

    def _decoded(self) -> tuple[bool, Any]:
        with self._condition:
            if self._outcome is None:
                assert self._raw is not None
                meta, frames = self._raw
                try:
                    value = self._client._decode(meta, frames)
                except BaseException as e:  # noqa: BLE001 - the task's failure, kept for result()
                    self._outcome = (False, e)
                else:
                    self._outcome = (True, value)
                self._raw = None
            return self._outcome

    # -- the Future API ------------------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        super().result(timeout)  # waits; raises CancelledError, TimeoutError, a submit error
        ok, value = self._decoded()
        if ok:
            return value
        raise value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        exc = super().exception(timeout)
        if exc is not None:
            return exc
        ok, value = self._decoded()
        return None if ok else value

    def cancel(self) -> bool:
        """Abort the task: True if it was aborted (or was cancelled already), False if it had
        finished. A cancelled future raises `CancelledError` from `result()`. Waits for the
        controller's answer, so it must not be called from a done-callback on the client's I/O
        thread (that raises RuntimeError)."""
        if self.done():
            return self.cancelled()
        if threading.current_thread() is self._client._conn._thread:
            raise RuntimeError("TaskFuture.cancel() waits for the controller's answer, which the "
                               "client's I/O thread (running this callback) would have to read; "
                               "call it from another thread")
        self._cancelling = True
        try:
            self._client.abort(self.taskid)
        except IndexError:  # it finished (its result is on the way) or is unknown
            self._cancelling = False
            return False
        self._mark_cancelled()
        return self.cancelled()

    def _withdraw(self) -> None:
        """It was never sent (the map it belongs to ended first): cancelled, no taskid."""
        with self._condition:
            self._submit_error = TaskAborted("this task was withdrawn before it was sent: the "
                                             "map it belonged to ended early")
            event = self._known_event
        if event is not None:
            event.set()
        self._mark_cancelled()

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


class _Watcher:
    """Marks TaskFutures done from the controller's `done` messages.

    A future waits in `_queued` until a watch request names its taskid. Futures queued on the
    I/O thread (those whose submit replies it reads) share one request, sent when the I/O thread
    has read every message waiting; futures queued by a caller are sent at once. A taskid being
    watched already is not watched again, so every result crosses the wire once.
    """

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._queued: list[TaskFuture] = []
        self._pending: dict[int, list[TaskFuture]] = {}
        self._closed: BaseException | None = None
        conn.on_idle = self.flush

    def watch(self, futs: Sequence[TaskFuture]) -> None:
        with self._lock:
            closed = self._closed
            if closed is None:
                self._queued.extend(futs)
        if closed is not None:
            for f in futs:
                f._fail(closed)
        elif threading.current_thread() is not self._conn._thread:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._queued:
                return
            queued, self._queued = self._queued, []
            tids: list[int] = []
            for f in queued:
                waiting = self._pending.setdefault(f._taskid, [])
                if not waiting:
                    tids.append(f._taskid)
                waiting.append(f)
        if not tids:
            return
        left = set(tids)

        def on_done(header: dict[str, Any], frames: list[Any]) -> bool:
            if header.get("type") != "done":  # an error reply to the watch request
                self._fail_tids(left, refusal(header))
                return True
            for meta, fr in split_results(header, frames):
                tid = meta.get("tid") if meta else None
                if tid in left:
                    left.discard(tid)
                    with self._lock:
                        futs = self._pending.pop(tid, [])
                    for f in futs:
                        f._resolve(meta, fr)
            return not left

        try:
            self._conn.send({"type": "watch", "tids": tids}, stream=on_done)
        except Exception as e:  # noqa: BLE001 - closed, or the controller is unreachable
            self._fail_tids(tids, e)

    def _fail_tids(self, tids: Iterable[int], exc: BaseException) -> None:
        """Fail the futures waiting for these taskids (a watch that was not sent or refused)."""
        with self._lock:
            futs = [f for t in tids for f in self._pending.pop(t, ())]
        for f in futs:
            f._fail(exc)

    def fail_all(self, exc: BaseException, *, close: bool = True) -> None:
        """Fail every future waiting here; with `close`, every later one too."""
        with self._lock:
            if close:
                self._closed = exc
            futs = [f for waiting in self._pending.values() for f in waiting] + self._queued
            self._pending.clear()
            self._queued = []
        for f in futs:
            f._fail(exc)


class _Submitter:
    """Sends futures' tasks, in `submit` requests with `watch`, batching by itself.

    At most MAX_SUBMITS_IN_FLIGHT such requests are unanswered at a time. A task submitted
    while that many are out waits in the queue; the next answer (read by the I/O thread) sends
    everything queued, SUBMIT_BATCH tasks to a message, and never more bytes to a message than
    the controller accepts. So a lone submit goes at once, and a flood of them costs one
    message per round trip rather than one per task.
    """

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._queue: list[tuple[_Encoded, TaskFuture]] = []
        self._in_flight = 0
        self._streams: set[_SubmitStream] = set()

    def add(self, encoded: Sequence[_Encoded], futs: list[TaskFuture]) -> None:
        with self._lock:
            self._queue.extend(zip(encoded, futs, strict=True))
            batches = self._take()
        self._send(batches)

    def _take(self) -> list[list[tuple[_Encoded, TaskFuture]]]:
        """Batches to send now (called under the lock)."""
        batches = []
        budget = self._conn.max_message - SUBMIT_OVERHEAD
        while self._queue and self._in_flight < MAX_SUBMITS_IN_FLIGHT:
            n = _batch_length((enc for enc, _ in self._queue), budget)
            batches.append(self._queue[:n])
            del self._queue[:n]
            self._in_flight += 1
        return batches

    def _send(self, batches: list[list[tuple[_Encoded, TaskFuture]]]) -> None:
        while batches:
            failed = 0
            for batch in batches:
                futs = [f for _, f in batch]
                frames = [fr for (_, task_frames), _ in batch for fr in task_frames]
                header = {"type": "submit", "watch": True,
                          "tasks": [spec for (spec, _), _ in batch]}
                try:
                    self._conn.send(header, frames, stream=self._stream(futs))
                except Exception as e:  # noqa: BLE001 - closed, unreachable, unencodable
                    failed += 1
                    for f in futs:
                        f._submit_failed(e)
            if not failed:
                return
            with self._lock:  # what was not sent is not in flight: send what waits behind it
                self._in_flight = max(0, self._in_flight - failed)
                batches = self._take()

    def _answered(self) -> None:
        with self._lock:
            self._in_flight -= 1
            batches = self._take()
        self._send(batches)

    def _stream(self, futs: list[TaskFuture]) -> Callable[[dict[str, Any], list[Any]], bool]:
        stream = _SubmitStream(self, futs)
        with self._lock:
            self._streams.add(stream)
        return stream.on_message

    def _finished(self, stream: _SubmitStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def withdraw(self, futs: Sequence[TaskFuture]) -> set[TaskFuture]:
        """Take the futures of `futs` that are still queued out of the queue (they are never
        sent) and cancel them; return those."""
        wanted = set(futs)
        with self._lock:
            keep = [(e, f) for e, f in self._queue if f not in wanted]
            taken = {f for _, f in self._queue if f in wanted}
            self._queue = keep
        for f in taken:
            f._withdraw()
        return taken

    def fail_all(self, exc: BaseException) -> None:
        """Fail every future queued or sent and unfinished (the client was closed, or the
        controller is unreachable: then nothing is in flight any more either)."""
        with self._lock:
            queued, self._queue = self._queue, []
            streams, self._streams = self._streams, set()
            self._in_flight = 0
        for _, f in queued:
            f._submit_failed(exc)
        for stream in streams:
            for f in stream.futs:
                if not f._known():
                    f._submit_failed(exc)
                else:
                    f._fail(exc)


class _SubmitStream:
    """The answers to one futures' submit: its taskids, then its results as they come."""

    __slots__ = ("submitter", "futs", "by_tid", "answered")

    def __init__(self, submitter: _Submitter, futs: list[TaskFuture]) -> None:
        self.submitter = submitter
        self.futs = futs
        self.by_tid: dict[int, TaskFuture] = {}
        self.answered = False

    def on_message(self, header: dict[str, Any], frames: list[Any]) -> bool:
        """Called on the I/O thread; True when nothing more is expected."""
        if header.get("type") == "reply":
            if self.answered:  # a restarted controller answers a resent submit again
                return self._done()
            self.answered = True
            try:
                if not header.get("ok", True):
                    raise refusal(header)
                for f, tid in zip(self.futs, header["tids"], strict=True):
                    f._set_taskid(tid)
                    self.by_tid[tid] = f
            except BaseException as e:  # noqa: BLE001 - each future carries the error
                for f in self.futs:
                    f._submit_failed(e)
                self.by_tid.clear()
            self.submitter._answered()
            return self._done()
        for meta, fr in split_results(header, frames):
            f = self.by_tid.pop(meta.get("tid"), None) if meta else None
            if f is not None:
                f._resolve(meta, fr)
        return self._done()

    def _done(self) -> bool:
        if self.answered and not self.by_tid:
            self.submitter._finished(self)
            return True
        return False


class TaskOptions:
    """Task options for `submit`, `map` and `imap`, kept apart from the function's arguments.

    `client.options(retries=2, timeout=5)` returns one. Its `submit(f, *args, **kwargs)`,
    `map(f, *sequences)` and `imap(f, iterable)` are the client's, with these options on every
    task they send, so the function's own keywords never clash with them:
    `tc.options(retries=2).submit(f, x, retries=7)` retries the task twice and passes
    `retries=7` to `f`. `options(**more)` makes a copy with more options on top. The options
    are those of `MapTask`: `retries`, `timeout`, `depend`, `after` (taskids or futures; an
    unknown id there, even one beyond any taskid such as 2**64, fails the task with
    DependencyError), `recovery_task`, `clear_before`, `clear_after`; they are checked here,
    at once.
    For `map` and `imap` they apply to each chunk task (a `timeout` bounds a whole chunk), and
    `recovery_task` is refused there, since its result would stand for a whole chunk.
    """

    __slots__ = ("client", "retries", "timeout", "depend", "after", "recovery_task",
                 "clear_before", "clear_after")
    NAMES = __slots__[1:]

    def __init__(self, client: Any = None, *, retries: int = 0, timeout: float | None = None,
                 depend: Any = None, after: Any = None, recovery_task: BaseTask | None = None,
                 clear_before: bool = False, clear_after: bool = False) -> None:
        self.client = client  # a TaskClient or an AsyncTaskClient
        self.retries = retries
        self.timeout = timeout
        self.depend = depend
        self.after = after
        self.recovery_task = recovery_task
        self.clear_before = clear_before
        self.clear_after = clear_after
        self.task(len)  # check the options now, not at the first submit

    def task(self, func: Callable[..., Any], args: Sequence[Any] = (),
             kwargs: dict[str, Any] | None = None) -> MapTask:
        """The MapTask that calls `func(*args, **kwargs)` with these options."""
        return MapTask(func, tuple(args), dict(kwargs or {}), self.clear_before,
                       self.clear_after, self.retries, self.recovery_task, self.depend,
                       timeout=self.timeout, after=self.after)

    def options(self, **changes: Any) -> TaskOptions:
        """A copy with `changes` on top of these options."""
        current = {name: getattr(self, name) for name in self.NAMES}
        unknown = set(changes) - set(self.NAMES)
        if unknown:
            raise TypeError(f"unknown task options {sorted(unknown)}; they are {list(self.NAMES)}")
        return TaskOptions(self.client, **{**current, **changes})

    def _bound(self) -> Any:
        if self.client is None:
            raise RuntimeError("these TaskOptions belong to no client; use client.options(...)")
        return self.client

    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """`client.submit(func, *args, **kwargs)` with these options."""
        return self._bound()._submit_with(self, func, args, kwargs)

    def map(self, func: Callable[..., Any], /, *sequences: Iterable[Any],
            chunksize: int | None = None, progress: bool | None = False,
            timeout: float | None = None) -> Any:
        """`client.map(...)` with these options on every chunk task."""
        return self._bound()._map(self, func, sequences, chunksize, progress, timeout)

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], *, ordered: bool = True,
             chunksize: int | None = None, max_outstanding: int | None = None,
             progress: bool | None = False) -> Any:
        """`client.imap(...)` with these options on every chunk task."""
        return self._bound()._imap(self, func, iterable, ordered, chunksize, max_outstanding,
                                   progress)

    def __repr__(self) -> str:
        set_ = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.NAMES
                         if getattr(self, n) != getattr(NO_OPTIONS, n, None))
        return f"TaskOptions({set_})"


NO_OPTIONS = TaskOptions()


class _OnEngine:
    """A callable depend pinned to one engine: `run_all`'s copy of a task with its own depend."""

    def __init__(self, engineid: int, depend: Callable[[dict[str, Any]], Any]) -> None:
        self.engineid = engineid
        self.depend = depend

    def __call__(self, properties: dict[str, Any]) -> bool:
        return properties.get("engineid") == self.engineid and bool(self.depend(properties))


def pinned_copies(task: BaseTask, engineids: Sequence[int]) -> list[BaseTask]:
    """One copy of `task` per engine, each with a depend that only its engine satisfies."""
    if not isinstance(task, BaseTask):
        raise TypeError(f"run_all() takes a StringTask or MapTask, not {type(task).__name__}")
    task.validate()
    copies = []
    for eid in engineids:
        t = copy.copy(task)
        if t.depend is None:
            t.depend = {"engineid": eid}
        elif isinstance(t.depend, dict):
            t.depend = {**t.depend, "engineid": eid}
        else:
            t.depend = _OnEngine(eid, t.depend)
        copies.append(t)
    return copies


def run_all_outcome(engineids: Sequence[int], outcomes: Sequence[tuple[bool, Any]]) -> dict[int, Any]:
    """`run_all`'s dict engineid -> result, or a CompositeError naming each engine that failed."""
    out: dict[int, Any] = {}
    elist: list[MapFailure] = []
    for i, (eid, (ok, value)) in enumerate(zip(engineids, outcomes, strict=True)):
        if ok:
            out[eid] = value
        else:
            elist.append(MapFailure(i, eid, value, getattr(value, "remote_traceback", "") or ""))
    if elist:
        raise CompositeError(f"run_all failed on {len(elist)} of {len(engineids)} engines", elist)
    return out


class TaskClient:
    """Submit tasks to a taskmill controller and collect their results (SPEC.md §4).

    `timeout`: seconds to wait for the controller at construction and for each quick request.
    `reconnect_timeout`: while the controller does not answer (it was killed and is being
    restarted, the network is cut), blocked calls go on waiting, for up to this many seconds
    of silence; then every blocked call, every unfinished future and every later call raises
    `ControllerUnreachable`. If the controller answers again later (started again on the same
    connection file), the client works again for new calls; what failed stays failed, and
    tasks whose submit was not acknowledged may or may not have been stored.
    Blocking verbs take their own keyword-only `timeout` (seconds): past it, the builtin
    `TimeoutError`, and the tasks are left as they are (a map that ends so aborts its tasks).
    """

    def __init__(self, connection: str | os.PathLike[str] | None = None, *,
                 timeout: float = 10.0, reconnect_timeout: float = RECONNECT_TIMEOUT) -> None:
        check_client_timeouts(timeout, reconnect_timeout)
        # Modules beside the script or in the working folder, which engines cannot import,
        # travel by value from now on (SPEC §2; see wire.is_local_module).
        ship_local_modules()
        self._functions = FunctionPickles()
        self._conn = _Connection(connection, timeout, reconnect_timeout)
        self._watcher = _Watcher(self._conn)
        self._submitter = _Submitter(self._conn)
        self._conn.on_unreachable = self._unreachable
        self.connection_file = self._conn.path

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection; futures still waiting fail with RuntimeError."""
        self._conn.close()
        self._watcher.fail_all(RuntimeError("the client was closed"))
        self._submitter.fail_all(RuntimeError("the client was closed"))

    def _unreachable(self, exc: BaseException) -> None:  # on the I/O thread
        self._watcher.fail_all(exc, close=False)
        self._submitter.fail_all(exc)

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    # -- encoding tasks --------------------------------------------------------------------
    def _encode(self, task: BaseTask, *, validated: bool = False) -> _Encoded:
        """The submit entry and payload frames of `task` and its recovery chain (a pair, with
        `size`, the bytes it adds to a submit message). Whatever cannot be sent raises here:
        TypeError/ValueError/SerializationError naming the problem."""
        if not isinstance(task, BaseTask):
            raise TypeError(f"run() takes a StringTask or MapTask, not {type(task).__name__}")
        if task.recovery_task is None:  # the common case: one node
            if not validated:
                task.validate()
            node, frames = self._encode_node(task, None)
            return _encoded({"nodes": [node], "after": _after_ids(task.after)}, frames, task)
        chain = recovery_chain(task)
        links = chain_links(chain)
        nodes, frames = [], []
        for t, link in zip(chain, links, strict=True):
            t.validate()
            node, node_frames = self._encode_node(t, link)
            nodes.append(node)
            frames.extend(node_frames)
        return _encoded({"nodes": nodes, "after": _after_ids(task.after)}, frames, task)

    def _encode_node(self, t: BaseTask, link: int | None) -> tuple[dict[str, Any], list[Any]]:
        wire = self._conn.wire
        if not isinstance(t, StringTask | MapTask):
            raise TypeError(f"unknown task type {type(t).__name__}")
        if isinstance(t, StringTask):
            _check_text(t.expression, f"the expression of {t!r}")
            for name in t.pull:
                _check_text(name, f"the pulled name {name!r}")
        try:
            if isinstance(t, StringTask):
                ex = {"kind": "string", "expression": t.expression, "pull": list(t.pull)}
                body = dumps(t.push) if t.push else []
            else:
                function = self._functions.dumps(t.function)
                ex = {"kind": "map", "fn": len(function)}
                body = [*function, *dumps_arguments(tuple(t.args), t.kwargs)]
        except Exception as e:
            raise SerializationError(
                f"cannot send {t!r}: its function, arguments or pushed values cannot be "
                f"pickled ({type(e).__name__}: {e})") from e
        ex["clear_before"], ex["clear_after"] = t.clear_before, t.clear_after
        node: dict[str, Any] = {
            "exec": ex, "nframes": len(body), "retries": t.retries, "timeout": t.timeout,
            "recovery": link, "pmac": wire.payload_mac(body) if body else None,
        }
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

    def _too_big(self, enc: _Encoded, what: str | None = None) -> ValueError | None:
        """The error for a task too large for one message to the controller, or None."""
        limit = self._conn.max_message
        if enc.size <= limit - SUBMIT_OVERHEAD and len(enc[1]) < MAX_FRAMES:
            return None
        if enc.size <= limit - SUBMIT_OVERHEAD:
            return ValueError(
                f"{what or enc.what} is {len(enc[1]):,} payload frames once pickled (an "
                "out-of-band buffer each), more than the controller accepts in one message "
                f"({MAX_FRAMES:,}): nothing was sent. Send fewer large buffers per task")
        return ValueError(
            f"{what or enc.what} is {enc.size:,} bytes once pickled, more than the controller "
            f"accepts in one message ({limit:,} bytes, with {SUBMIT_OVERHEAD} for the "
            "message's header): nothing was sent. Start the controller with a larger "
            "--max-message-size (Cluster(max_message_size=...)), or send less per task "
            "(e.g. a path to a file the engines can read, or smaller chunks)")

    def _check_sizes(self, encoded: Sequence[_Encoded]) -> None:
        for enc in encoded:
            error = self._too_big(enc)
            if error is not None:
                raise error

    def _submit_encoded(self, encoded: Sequence[_Encoded],
                        tids: list[int] | None = None) -> list[int]:
        """Submit and wait for the taskids (appended to `tids` as each batch is answered, so
        that a caller interrupted meanwhile knows what was submitted)."""
        self._check_sizes(encoded)
        tids = [] if tids is None else tids
        budget = self._conn.max_message - SUBMIT_OVERHEAD
        i = 0
        while i < len(encoded):
            n = _batch_length(itertools.islice(encoded, i, None), budget)
            batch = encoded[i:i + n]
            frames = [f for _, fr in batch for f in fr]
            header = {"type": "submit", "tasks": [s for s, _ in batch]}
            fut = self._conn.send(header, frames)
            try:
                reply, _ = self._conn.reply(fut, header)
            except (KeyboardInterrupt, SystemExit):
                # Interrupted while the controller stores them: learn their ids anyway (it
                # takes a round trip), so that the caller can abort them.
                tids.extend(_late_tids(fut))
                raise
            tids.extend(reply["tids"])
            i += n
        return tids

    def _submit_tasks(self, tasks: Iterable[BaseTask],
                      tids: list[int] | None = None) -> list[int]:
        return self._submit_encoded([self._encode(t) for t in tasks], tids)

    def _submit_futures(self, encoded: Sequence[_Encoded], *,
                        checked: bool = False) -> list[TaskFuture]:
        """Send encoded tasks without waiting (see _Submitter); one future each. A task too
        large for one message raises ValueError (unless `checked` already), and nothing is
        sent."""
        if self._conn._closed.is_set():
            raise RuntimeError("this client is closed")
        if not checked:
            self._check_sizes(encoded)
        futs = [TaskFuture(self) for _ in encoded]
        self._submitter.add(encoded, futs)
        return futs

    def _abort_futures(self, futs: Sequence[TaskFuture], wait: float = ABORT_WAIT) -> None:
        """Abort the unfinished tasks of `futs` (a map that ends early): those still queued in
        this client are withdrawn unsent; the others are aborted on the controller once their
        taskids are known. Waits, at most `wait` seconds in all, until the controller has heard
        every abort, so that a script that exits right after (Ctrl-C) leaves nothing running."""
        deadline = time.monotonic() + wait
        withdrawn = self._submitter.withdraw(futs)
        replies: list[Future] = []
        for f in futs:
            if f in withdrawn or f.done():
                continue
            if not f._wait_known(max(0.0, deadline - time.monotonic())) or f._taskid is None:
                continue  # (no answer in time, or the submit itself failed)
            try:
                replies.append(self._conn.send({"type": "abort", "tid": f._taskid}))
            except Exception:  # noqa: BLE001 - closed or unreachable: nothing more to do
                break
        for r in replies:
            r.add_done_callback(_ignore)
        if replies:
            wait_futures(replies, timeout=max(0.0, deadline - time.monotonic()))

    def _abort_taskids(self, tids: Sequence[int], wait: float = ABORT_WAIT) -> None:
        """Abort these tasks (the seed mapper's, when its map ends early), waiting at most
        `wait` seconds until the controller has heard it."""
        replies: list[Future] = []
        for tid in tids:
            try:
                replies.append(self._conn.send({"type": "abort", "tid": tid}))
            except Exception:  # noqa: BLE001 - closed or unreachable: nothing more to do
                break
        for r in replies:
            r.add_done_callback(_ignore)
        if replies:
            wait_futures(replies, timeout=wait)

    def _send_and_forget(self, header: dict[str, Any]) -> None:
        """A request whose answer nobody waits for (imap's clears and aborts)."""
        self._conn.send(header).add_done_callback(_ignore)

    def _alive_engines(self) -> int:
        return sum(1 for e in self.engines() if e["state"] != "dead")

    # -- decoding results ------------------------------------------------------------------
    def _rebuild_exception(self, meta: dict[str, Any], frames: list[Any]) -> BaseException:
        err = meta.get("error") or {}
        tb = err.get("traceback", "")
        exc: BaseException | None = None
        if err.get("controller"):
            exc = controller_error(err.get("type", "TaskError"), err.get("message", ""))
        elif err.get("pickled") and frames:
            try:
                self._conn.wire.check_payload(frames, meta.get("pmac"))
                exc = loads(frames)
            except Exception:  # noqa: BLE001 - fall back to RemoteError below
                exc = None
        if not isinstance(exc, BaseException):
            module = err.get("module", "")
            name = err.get("type", "Exception")
            type_name = name if module in ("builtins", "") else f"{module}.{name}"
            exc = RemoteError(type_name, err.get("message", ""), tb)
        for attr, value in (("engineid", meta.get("engineid")), ("taskid", meta.get("tid")),
                            ("remote_traceback", tb)):
            try:
                setattr(exc, attr, value)
            except Exception:  # noqa: BLE001 - exceptions without a __dict__
                pass
        if tb:
            exc.__cause__ = RemoteTraceback(tb)
        return exc

    def _decode(self, meta: dict[str, Any] | None, frames: list[Any], *,
                carry: bool = True) -> Any:
        """A result entry from the controller: the value, a TaskResult, or a raised error.

        With `carry=False`, a MapTask's failure is returned as (False, exc) instead of raised.
        """
        if meta is None:
            return None
        tid = meta.get("tid")
        if meta.get("unknown"):
            raise IndexError(f"no task with id {tid}: it is unknown, or its result was cleared")
        status = meta["status"]
        if status in _CONTROLLER_DECIDED:
            raise self._rebuild_exception(meta, frames)
        failure: BaseException | None = None
        value: Any = None
        if status == "ok":
            if frames:
                try:
                    self._conn.wire.check_payload(frames, meta.get("pmac"))
                except Refused as e:
                    raise SerializationError(f"result of task {tid} was refused: {e}") from None
                try:
                    value = loads(frames)
                except Exception as e:
                    failure = SerializationError(
                        f"the result of task {tid} cannot be unpickled here "
                        f"({type(e).__name__}: {e}); is a module missing on the client?")
        else:
            failure = self._rebuild_exception(meta, frames)
        if meta.get("kind") == "string":
            return TaskResult(
                value if failure is None else None, failure, taskid=tid,
                engineid=meta.get("engineid"), submitted=_fmt_time(meta.get("submitted")),
                completed=_fmt_time(meta.get("completed")), duration=meta.get("duration", 0.0),
                stdout=meta.get("stdout", ""), stderr=meta.get("stderr", ""),
                attempts=meta.get("attempts", 1),
            )
        if failure is not None:
            if carry:
                raise failure
            return _Failed(failure, meta.get("engineid"))
        return value

    def _results(self, tids: list[int], block: bool, timeout: float | None = None,
                 what: str = "") -> list[tuple[dict[str, Any] | None, list[Any]]]:
        """Result entries of known-range taskids (an id out of range reads as unknown)."""
        entries: list[tuple[dict[str, Any] | None, list[Any]]] = [
            (_unknown_entry(t), []) for t in tids]
        asked = [t for t in tids if _in_range(t)]
        if asked:
            header = {"type": "result", "tids": asked, "block": block}
            if block:
                reply, frames = self._conn.wait_reply(header, timeout=timeout, what=what)
            else:
                reply, frames = self._conn.call(header)
            got = iter(split_results(reply, frames))
            entries = [next(got) if _in_range(t) else e for t, e in zip(tids, entries,
                                                                         strict=True)]
        return entries

    # -- the seed's verbs ------------------------------------------------------------------
    def run(self, task: BaseTask, block: bool = False, *, timeout: float | None = None) -> Any:
        """Submit `task`; return its taskid, or with `block=True` its result (then past
        `timeout` seconds, TimeoutError; the task goes on)."""
        check_seconds(timeout, "timeout")
        tid = self._submit_tasks([task])[0]
        if block:
            return self.get_task_result(tid, block=True, timeout=timeout)
        return tid

    def get_task_result(self, taskid: int, block: bool = False, *,
                        timeout: float | None = None) -> Any:
        """The result of a task (SPEC.md §3), or None while it runs and `block` is false.

        With `block=True`, waits until it has finished; past `timeout` seconds (None: no
        limit), TimeoutError, and the task goes on. IndexError for an unknown or cleared id
        (any int outside 0..2**63-1 is one)."""
        _check_taskid(taskid)
        check_seconds(timeout, "timeout")
        (meta, frames), = self._results([taskid], block, timeout,
                                        f"get_task_result({taskid}, block=True)")
        return self._decode(meta, frames)

    def abort(self, taskid: int) -> None:
        """Abort a queued or running task (it finishes as TaskAborted)."""
        _check_taskid(taskid)
        if not _in_range(taskid):
            raise IndexError(_unknown_message(taskid))
        reply, _ = self._conn.call({"type": "abort", "tid": taskid})
        abort_outcome(reply, taskid)

    def barrier(self, taskids: int | Sequence[int], progress: bool | None = False, *,
                timeout: float | None = None) -> None:
        """Wait until every task in `taskids` has finished (failed and unknown ones count).

        `taskids` may hold TaskFutures too. `progress=True` draws a bar (then the tasks'
        results are streamed here and dropped); `None` draws one only on a terminal.
        Past `timeout` seconds (None: no limit), TimeoutError. The tasks are not this call's:
        an interrupted barrier (Ctrl-C, a timeout) leaves them running.
        """
        from .mapper import show_progress

        check_seconds(timeout, "timeout")
        tids = [t for t in taskid_list(taskids) if _in_range(t)]
        if not tids:
            return
        if show_progress(progress):
            self.wait(tids, progress=True, timeout=timeout)
        else:
            self._conn.wait_reply({"type": "wait", "tids": tids}, timeout=timeout,
                                  what="barrier")

    def spin(self) -> bool:
        """Run the scheduler once; True if it dispatched anything."""
        reply, _ = self._conn.call({"type": "spin"})
        return bool(reply["dispatched"])

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        """`scheduled`, `pending`, `succeeded`, `failed`: counts, or taskid lists if verbose."""
        reply, _ = self._conn.call({"type": "status", "verbose": bool(verbose)})
        return dict(reply["status"])

    def clear(self, taskids: int | Sequence[int] | None = None) -> int:
        """Drop finished results (all, one id, or a list); return how many were dropped.
        KeyError names the ids that had no finished result (the others are dropped)."""
        tids = None if taskids is None else taskid_list(taskids)
        if tids is not None and not all(_in_range(t) for t in tids):
            asked = [t for t in tids if _in_range(t)]
            reply = {"dropped": 0, "missing": []}
            if asked:
                reply, _ = self._conn.call({"type": "clear", "tids": asked})
            missing = [t for t in tids if not _in_range(t)]
            return clear_outcome({"dropped": reply["dropped"],
                                  "missing": [*reply["missing"], *missing]})
        reply, _ = self._conn.call({"type": "clear", "tids": tids})
        return clear_outcome(reply)

    def map(self, func: Callable[..., Any], /, *sequences: Iterable[Any],
            chunksize: int | None = None, progress: bool | None = False,
            timeout: float | None = None) -> list[Any]:
        """Load-balanced `map`: a list equal to `list(map(func, *sequences))`.

        Elements are sent in chunks (with `chunksize=None`, enough chunks to keep every engine
        busy, at most 2000 elements each, and none larger than the controller accepts in one
        message); every failure is reported in one CompositeError naming each failed index.
        `progress=True` draws a tqdm bar on stderr (`None`: only on a terminal). Task options:
        `client.options(retries=..., ...).map(...)`. Past `timeout` seconds (None: no limit),
        TimeoutError. Whatever ends the map early (Ctrl-C, the timeout, any exception) aborts
        its tasks still queued or running: their results could reach nobody.
        """
        return self._map(NO_OPTIONS, func, sequences, chunksize, progress, timeout)

    def _map(self, options: TaskOptions, func: Callable[..., Any],
             sequences: Sequence[Iterable[Any]], chunksize: int | None,
             progress: bool | None, timeout: float | None = None) -> list[Any]:
        from .mapper import client_map

        return client_map(self, options, func, sequences, chunksize=chunksize, progress=progress,
                          timeout=timeout)

    def mapper(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
               recovery_task: BaseTask | None = None, depend: Any = None,
               block: bool = True) -> Any:
        """A seed-compatible mapper: one MapTask per element, the first failure raised."""
        from .mapper import TaskMapper

        return TaskMapper(self, clear_before=clear_before, clear_after=clear_after,
                          retries=retries, recovery_task=recovery_task, depend=depend,
                          block=block)

    def parallel(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
                 recovery_task: BaseTask | None = None, depend: Any = None,
                 block: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A decorator: the decorated function maps itself over the sequences it is given."""
        from .mapper import ParallelFunction

        def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
            m = self.mapper(clear_before, clear_after, retries, recovery_task, depend, block)
            return ParallelFunction(m, f)

        return decorate

    # -- beyond the seed -------------------------------------------------------------------
    def engines(self) -> list[dict[str, Any]]:
        """Every engine the controller knows: id, host, pid, properties, state, tasks done."""
        reply, _ = self._conn.call({"type": "engines"})
        return list(reply["engines"])

    def statistics(self) -> dict[str, Any]:
        """What the controller is doing: queue, engines (state, current task, tasks done,
        failures, last heartbeat, properties), tasks/s over the last minute, task durations,
        messages, engine deaths, refused messages by reason."""
        reply, _ = self._conn.call({"type": "stats"})
        return dict(reply["stats"])

    def activity(self, since: int = 0) -> dict[str, Any]:
        """What happened recently: the attempts finished after sequence number `since` (which
        engine ran which task, when), the attempts running now, the latest failures, and
        per-second throughput and queue lengths (see taskmill.stats.RecentActivity.snapshot)."""
        reply, _ = self._conn.call({"type": "activity", "since": since})
        return dict(reply["activity"])

    def task_info(self, taskid: int) -> dict[str, Any]:
        """One task's `state` (scheduled, pending, succeeded, failed or unknown) and metadata
        (engine, times, attempts, output, error with its traceback), without unpickling."""
        _check_taskid(taskid)
        if not _in_range(taskid):
            return {"tid": taskid, "state": "unknown"}
        reply, _ = self._conn.call({"type": "task", "tid": taskid})
        return dict(reply["task"])

    # -- futures -----------------------------------------------------------------------------
    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run `func(*args, **kwargs)` on an engine; return its TaskFuture at once.

        Every keyword goes to `func`. Task options go on `options()`:
        `tc.options(retries=2, timeout=5, after=[fut]).submit(func, x, retries="func's own")`.
        """
        return self._submit_with(NO_OPTIONS, func, args, kwargs)

    def _submit_with(self, options: TaskOptions, func: Callable[..., Any],
                     args: Sequence[Any], kwargs: dict[str, Any]) -> TaskFuture:
        task = options.task(func, args, kwargs)
        enc = self._encode(task, validated=True)
        error = self._too_big(enc)
        if error is not None:  # (a future that fails at once, as a task that fails would)
            fut = TaskFuture(self)
            fut._submit_failed(error)
            return fut
        return self._submit_futures([enc], checked=True)[0]

    def options(self, *, retries: int = 0, timeout: float | None = None, depend: Any = None,
                after: Any = None, recovery_task: BaseTask | None = None,
                clear_before: bool = False, clear_after: bool = False) -> TaskOptions:
        """Task options for `submit`, `map` and `imap`: see `TaskOptions`."""
        return TaskOptions(self, retries=retries, timeout=timeout, depend=depend, after=after,
                           recovery_task=recovery_task, clear_before=clear_before,
                           clear_after=clear_after)

    def future(self, taskid: int) -> TaskFuture:
        """A TaskFuture for a task submitted before (by any client); IndexError from
        `result()` if it is unknown or was cleared."""
        return self._futures_for([taskid])[0]

    def _futures_for(self, taskids: Sequence[int]) -> list[TaskFuture]:
        for t in taskids:
            _check_taskid(t)
        futs = [TaskFuture(self, t) for t in taskids]
        for f in futs:
            if not _in_range(f._taskid):  # unknown, and cannot even be asked about
                f._resolve(_unknown_entry(f._taskid), [])
        self._watcher.watch([f for f in futs if not f.done()])
        return futs

    def wait(self, futures_or_ids: Any, *, timeout: float | None = None,
             progress: bool | None = None) -> list[Future]:
        """Wait until every future or taskid given has finished; return their futures.

        Taskids become TaskFutures (so `[f.result() for f in tc.wait(ids)]` works).
        `progress=None` draws a bar when stderr is a terminal, `True` always, `False` never.
        Past `timeout` seconds, TimeoutError. The tasks are not this call's: an interrupted
        wait (Ctrl-C, a timeout) leaves them running.
        """
        check_seconds(timeout, "timeout")
        from .mapper import progress_bar

        items = [futures_or_ids] if isinstance(futures_or_ids, int | Future) \
            else list(futures_or_ids)
        ids = [x for x in items if not isinstance(x, Future)]
        made = iter(self._futures_for(ids))
        futs = [x if isinstance(x, Future) else next(made) for x in items]
        with progress_bar(progress, len(futs), "wait", "task") as bar:
            for _ in as_completed(futs, timeout=timeout):
                bar.update()
        return futs

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], *, ordered: bool = True,
             chunksize: int | None = None, max_outstanding: int | None = None,
             progress: bool | None = False) -> Iterator[Any]:
        """A lazy load-balanced map over one iterable of any length, even an endless one.

        Yields `func(item)` in input order (`ordered=False`: as they finish). Items are pulled
        only while fewer than `max_outstanding` are sent and not yet yielded (None: 8 chunks
        per engine), so memory stays bounded. `chunksize=None` starts at one item per task and
        grows chunks to about 0.1 s of work each. A failed element raises its exception when
        its turn comes; closing the generator early (break, `close()`) aborts what is still
        out. The chunks' results are dropped from the controller as they are handed out.
        """
        return self._imap(NO_OPTIONS, func, iterable, ordered, chunksize, max_outstanding,
                          progress)

    def _imap(self, options: TaskOptions, func: Callable[..., Any], iterable: Iterable[Any],
              ordered: bool, chunksize: int | None, max_outstanding: int | None,
              progress: bool | None) -> Iterator[Any]:
        from .mapper import client_imap

        return client_imap(self, options, func, iterable, ordered=ordered, chunksize=chunksize,
                           max_outstanding=max_outstanding, progress=progress)

    def run_all(self, task: BaseTask, *, timeout: float | None = None) -> dict[int, Any]:
        """Run one copy of `task` on every live engine (for set-up); engineid -> result.

        Each copy has `depend={"engineid": k}` added. Failures (a MapTask's exception, an
        engine that died) are raised together as a CompositeError naming the engines. Past
        `timeout` seconds (None: no limit), TimeoutError; whatever ends it early (that, Ctrl-C)
        aborts the copies still queued or running.
        """
        check_seconds(timeout, "timeout")
        eids = sorted(e["engineid"] for e in self.engines() if e["state"] != "dead")
        copies = pinned_copies(task, eids)
        encoded = [self._encode(t) for t in copies]
        futs = self._submit_futures(encoded)
        try:
            wait_all(futs, timeout, "run_all")
        except BaseException:
            self._abort_futures(futs)
            raise
        from .mapper import check_unreachable

        check_unreachable(futs)  # (raised as itself, not as a failure of each engine)
        outcomes = []
        for f in futs:
            try:
                outcomes.append((True, f.result()))
            except Exception as e:  # noqa: BLE001 - reported per engine
                outcomes.append((False, e))
        return run_all_outcome(eids, outcomes)


class _Failed:
    """A MapTask failure held rather than raised (used by maps)."""

    __slots__ = ("exception", "engineid")

    def __init__(self, exception: BaseException, engineid: int | None) -> None:
        self.exception = exception
        self.engineid = engineid


def refusal(reply: dict[str, Any]) -> Exception:
    """The error a refused request raises: StoreError when the controller's store could not
    write (the request changed nothing), else TaskError with the controller's reason."""
    text = reply.get("error", "the controller refused the request")
    if reply.get("error_type") == "StoreError":
        return StoreError(text)
    return TaskError(text)


def _check_taskid(taskid: Any) -> None:
    if isinstance(taskid, bool) or not isinstance(taskid, int):
        raise TypeError(f"a taskid is an int, not {type(taskid).__name__}")


def _in_range(taskid: int) -> bool:
    """Whether `taskid` could be a taskid at all; any other int is an unknown id, answered
    here without asking (the controller's ids are 0..2**63-1; a header cannot even carry
    some ints, e.g. 2**64)."""
    return 0 <= taskid < TASKID_LIMIT


def _unknown_message(taskid: int) -> str:
    return f"no task with id {taskid}: it is unknown, or its result was cleared"


def _unknown_entry(taskid: int) -> dict[str, Any]:
    """What the controller says of an unknown id, said here for one that cannot be a taskid."""
    return {"tid": taskid, "unknown": True, "nframes": 0}


def _after_ids(after: Any) -> list[int]:
    """`after` for the wire. An id that cannot be a taskid is unknown, like any other unknown
    id, so the task fails with DependencyError; one beyond what a header carries (e.g. 2**64)
    is sent as 2**63, an id that cannot exist either."""
    return [t if -TASKID_LIMIT <= t < TASKID_LIMIT else TASKID_LIMIT
            for t in normalize_after(after)]


def _check_text(text: str, what: str) -> None:
    """ValueError if `text` cannot travel in a header (UTF-8: no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} cannot be sent: it holds {text[e.start:e.end]!r} at index {e.start}, a "
            "lone surrogate that UTF-8 cannot encode (typically from bytes decoded with "
            "errors='surrogateescape'); decode it differently or pass it in push=") from None


def check_client_timeouts(timeout: Any, reconnect_timeout: Any) -> None:
    check_seconds(timeout, "timeout", none=False)
    check_seconds(reconnect_timeout, "reconnect_timeout", none=False)
    if not reconnect_timeout > 0:
        raise ValueError(f"reconnect_timeout must be > 0 seconds, not {reconnect_timeout!r}")


def _batch_length(encoded: Iterable[_Encoded], budget: int) -> int:
    """How many of `encoded` go in one submit message (at least one, at most SUBMIT_BATCH):
    together at most `budget` bytes and fewer than MAX_FRAMES frames."""
    n = size = frames = 0
    for enc in itertools.islice(encoded, SUBMIT_BATCH):
        nf = len(enc[1])
        if n and (size + enc.size > budget or frames + nf >= MAX_FRAMES):
            break
        n += 1
        size += enc.size
        frames += nf
    return n


def wait_all(futs: Sequence[Future], timeout: float | None, what: str) -> None:
    """Wait until every future is done; past `timeout` seconds, TimeoutError."""
    _, pending = wait_futures(futs, timeout=timeout)
    if pending:
        raise TimeoutError(f"{what} did not finish within {timeout:g}s (timeout=): "
                           f"{len(pending)} of {len(futs)} tasks unfinished")


class _Encoded(list):
    """[spec, frames] of one task for a submit message, with `size`, the bytes it adds to
    that message, and `task`, for errors."""

    __slots__ = ("size", "task")

    @property
    def what(self) -> str:
        return _describe(self.task)


def _describe(task: BaseTask) -> str:
    """A task in a few words (its repr may hold megabytes of arguments)."""
    if isinstance(task, MapTask):
        f = task.function
        return f"a MapTask calling {getattr(f, '__qualname__', type(f).__name__)}"
    text = getattr(task, "expression", "")
    return f"the StringTask {text[:40] + '...' if len(text) > 40 else text!r}"


def _encoded(spec: dict[str, Any], frames: list[Any], task: BaseTask) -> _Encoded:
    """Pack the spec now: what cannot be encoded raises at the call that made the task, never
    later on the I/O thread; its size counts towards the size limit of a message."""
    try:
        packed = msgpack.packb(spec, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"cannot send {_describe(task)}: its options cannot be encoded "
                         f"({type(e).__name__}: {e}); ints must fit in 64 bits") from None
    enc = _Encoded((spec, frames))
    size = len(packed)
    for f in frames:
        size += frame_len(f)
    enc.size = size
    enc.task = task
    return enc


def _late_tids(fut: Future, wait: float = 2.0) -> list[int]:
    """The taskids a submit's reply `fut` gives, if it comes within `wait` seconds."""
    try:
        reply, _ = fut.result(wait)
    except BaseException:  # noqa: BLE001 - not in time, or failed: nothing to learn
        return []
    return list(reply.get("tids") or ()) if reply.get("ok", True) else []


def _ignore(fut: Future) -> None:
    fut.exception()  # retrieved, so nothing is logged about it


def taskid_list(taskids: Any) -> list[int]:
    """An int, a future, or a sequence of them, as a checked list of taskids."""
    items = [taskids] if isinstance(taskids, int) or hasattr(taskids, "taskid") \
        else list(taskids)
    tids = [getattr(t, "taskid", t) for t in items]
    for t in tids:
        _check_taskid(t)
    return tids


def abort_outcome(reply: dict[str, Any], taskid: int) -> None:
    if reply["status"] == "finished":
        raise IndexError("Task Already Completed")
    if reply["status"] == "unknown":
        raise IndexError(f"no task with id {taskid}: it is unknown, or its result was cleared")


def clear_outcome(reply: dict[str, Any]) -> int:
    if reply["missing"]:
        raise KeyError(
            f"no finished result for task ids {reply['missing']} (unknown, unfinished, or "
            f"already cleared); {reply['dropped']} other result(s) were cleared")
    return int(reply["dropped"])


def split_results(reply: dict[str, Any],
                  frames: list[Any]) -> list[tuple[dict[str, Any] | None, list[Any]]]:
    """A `result` reply as (meta, frames) per taskid."""
    out, pos = [], 0
    for meta in reply["results"]:
        n = meta["nframes"] if meta else 0
        out.append((meta, frames[pos:pos + n]))
        pos += n
    return out


BlockingTaskClient = TaskClient
