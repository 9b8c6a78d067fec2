"""The client's connection: two DEALER sockets to the controller and the I/O thread.

    caller thread --send(header, frames)--> [send socket, under send_lock] --> controller
    controller --reply / done--> [receive socket] I/O thread --> the request's Future, or its
                                                                 stream callback

The caller sends on its own socket, so a submit never waits for another thread; the I/O thread
owns the receive socket, and every request carries `rt`, the id of that socket, so the
controller answers there. What crosses the wire is a small header plus opaque payload frames
(see `codec.py`). Besides reading, the I/O thread pings the controller, rides out broken
connections and restarts (sending again what was not answered), after `reconnect_timeout`
seconds of silence declares it unreachable, and, told that the controller forgot this client
(stopped or cut off for longer than its --forget-clients-after), fails what waited with
ClientForgotten and goes on under new ids: links.py. Everything above (futures, verbs, both
fronts) uses only `send`, `call`, `reply`, `wait_reply` and `forget`. Multi-frame sends are
guarded against Ctrl-C (interrupts.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from typing import Any

import zmq
from zmq import zmq_poll

from ..connection import find_connection_file, read_connection_file
from ..curve import apply_client as apply_curve
from ..defaults import CLIENT_PING_INTERVAL, RECONNECT_TIMEOUT
from ..errors import ClientClosed, ControllerUnreachable, StoreError, too_slow
from ..protocol import Hello, HelloReply, Ping, ProtocolError, from_reply, to_request
from ..wire import Refused, Wire, apply_client_link, recv_message, send_message
from .codec import checked, joined
from .credit import Intake
from .interrupts import NOT_DEFERRED, interrupts_deferred
from .links import KEYED, LinkRecovery

BYE_LINGER_MS = 200  # at most this long, a closing client's `bye` may wait to leave
IDLE_AT_LEAST_EVERY = 256  # messages: a steady stream of replies must not starve the idle hook
IDLE_POLL_MS = 100  # the I/O thread's longest wait for a reply before it pings (close() wakes it)
POLLIN = int(zmq.POLLIN)
STALLED_AFTER = 1.5  # seconds of controller silence (pings: 1 s) past which it is stalled
HEARD_POLL = 0.1  # how often `wait_while_heard` looks at the controller's silence
# Requests that only read: one unanswered changed nothing (the others may have taken effect).
QUERIES = frozenset({"hello", "ping", "result", "watch", "wait", "status", "engines", "stats",
                     "activity", "task"})

Stream = Callable[[dict[str, Any], list[Any]], bool]

log = logging.getLogger("taskmill.client")
STREAMED: Future = Future()  # what `send` returns with a `stream` (which takes the replies)
STREAMED.set_result(None)

# How many forks this process is from (os.register_at_fork counts them in each child): a
# connection made before a fork belongs to the parent. Its sockets and leased taskids are the
# parent's, and no I/O thread runs in the child, so a request sent there was never answered (a
# submit's future waited for ever) and run() handed out the parent's next taskid, never stored.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


class Connection(LinkRecovery):
    """Two DEALER sockets to the controller and the I/O thread that reads replies.

    The I/O thread pings the controller every second and counts how long nothing has arrived
    from it. Past `reconnect_timeout` seconds of silence the connection is *unreachable*: every
    request waiting for an answer fails with ControllerUnreachable, `on_unreachable` fails the
    client's futures, and every later request raises it at once. The pings go on, so when the
    controller answers again (restarted on the same connection file, or back on the network)
    the connection is usable again for new requests; what failed stays failed.
    """

    # Called on the I/O thread whenever it has read every message waiting (the client's
    # Watcher sends the watch requests it batched up meanwhile).
    on_idle: Callable[[], None] | None = None
    # Called on the I/O thread when the controller is declared unreachable, with the error.
    on_unreachable: Callable[[BaseException], None] | None = None

    def __init__(self, connection: Any, timeout: float,
                 reconnect_timeout: float = RECONNECT_TIMEOUT) -> None:
        self.path = find_connection_file(connection)
        self.info = read_connection_file(self.path)
        # One Wire per socket: each sending socket has its own (sid, seq) stream, and replay
        # checks hold per receiving socket, where messages arrive in order.
        # (as large as the controller's limit, which its connection file says)
        limit = self.info.max_message
        self.wire = Wire(self.info.key_bytes, max_message=limit)  # the receive socket's
        self.send_wire = Wire(self.info.key_bytes, max_message=limit)  # (under _send_lock)
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        # Often enough that a healthy controller is never silent for reconnect_timeout.
        self._ping_interval = min(CLIENT_PING_INTERVAL, reconnect_timeout / 4)
        # The largest message the controller accepts (its hello says; else our own default).
        self.max_message = self.send_wire.max_message
        self.ctx = zmq.Context()
        base = uuidlib.uuid4().hex.encode()
        self.recv_ident = base + b".r"
        self.send_lock = threading.Lock()
        self._monitors: dict[zmq.Socket, zmq.Socket] = {}
        self._send_sock = self._watched(self._dealer(base + b".s", times_out=True))
        self._recv_sock = self._watched(self._dealer(self.recv_ident))
        self._linked = False  # the controller answered the receive socket's hello (links.py)
        self._held: set[int] = set()  # requests not sent yet: they wait for the link
        self._resend_when_linked = False
        self._req = itertools.count(1)
        self._futures: dict[int, Future] = {}
        self._outstanding: dict[int, tuple[dict[str, Any], list[Any]]] = {}
        self._partial: dict[int, list[tuple[dict[str, Any], list[Any]]]] = {}  # replies in pieces
        self._controller_sid: bytes | None = None
        # The controller's session (its replies say it): every request names it, so that a
        # request captured before a restart does nothing after it.
        self.session: bytes | None = None
        # Why this client can no longer be served (the controller restarted on another
        # store: links.py `other_store`); None.
        self.store_changed: str | None = None
        self._key_prefix = base.decode() + ":"
        self._pid = os.getpid()  # (a forked child's copy closes nothing of the parent's keys)
        self._forks = _forks  # (see `check_process`)
        self._streams: dict[int, Callable[[dict[str, Any], list[Any]], bool]] = {}
        self._intake = Intake()  # numbered `done` results taken in (credit.py)
        self._silent = 0.0  # seconds of this thread's running time since the controller spoke
        self._unreachable = False
        self._forgotten: str | None = None  # the controller's word that it forgot this client
        self._say_hello = True  # the next keep-alive is a hello (its reply names the limit)
        self._closed = threading.Event()
        # close() wakes the I/O thread at once through this pipe (rather than after its poll's
        # 100 ms): its read end is polled beside the receive socket. (A pipe, not a ZeroMQ
        # pair: zmq_poll asks a ZeroMQ socket for its events before and after each poll, two
        # more system calls each time; a plain file descriptor only joins the one poll.)
        self._woken, self._wake = os.pipe()
        os.set_blocking(self._wake, False)
        self._hello: Future = Future()
        self._thread = threading.Thread(target=self._io_loop, name="taskmill-client-io", daemon=True)
        self._thread.start()
        try:
            self._hello.result(timeout)
        except FutureTimeout:
            self.close()
            raise ControllerUnreachable(
                f"no taskmill controller answered at {self.info.client_url} within {timeout:g}s "
                f"(connection file {self.path}). Start one with `taskmill cluster start` "
                "(or `taskmill controller`), or pass the right connection file (a controller "
                "ignores messages signed with another key than its current file's)."
            ) from None

    def _dealer(self, ident: bytes, times_out: bool = False) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.ROUTING_ID, ident)
        s.setsockopt(zmq.RECONNECT_IVL, 10)  # 10 ms after a refused connect, doubling to 100
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
        s.setsockopt(zmq.MAXMSGSIZE, self.wire.max_message)
        # The send socket (`times_out`): a connection silently cut ends within 5 s (ZeroMQ's
        # heartbeats; links.py). The receive socket never times out: a result taking longer
        # than that to arrive would be cut off mid-frame (wire.apply_client_link).
        apply_client_link(s, times_out=times_out)
        apply_curve(s, self.info)
        s.connect(self.info.client_url)
        return s

    def _io_loop(self) -> None:
        sock = self._recv_sock
        polled = [(sock, POLLIN), (self._woken, POLLIN)]  # (zmq_poll's: no Poller's layers)
        own = polled[:1]  # zmq_poll(own, 0): sock.poll(0) without making a Poller each time
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
            renew = self._forgotten is not None
            if self._silent > self.reconnect_timeout and not self._unreachable \
                    and self._hello.done():
                self._declare_unreachable()
                renew = True
            if renew:
                sock = self._reopen()
            elif now >= next_ping and self._link_broke():
                sock = self._link_lost()
            if sock is not polled[0][0]:  # (new sockets: their hello goes at once)
                polled[0] = own[0] = (sock, POLLIN)
                next_ping = now
            if now >= next_ping:
                # Said from the receive socket, so the controller knows its id before any
                # reply; after the hello, pings tell a restarted controller from the old one.
                header = to_request(Hello(self._key_prefix[:-1]) if self._say_hello
                                    else Ping())
                header["req"] = 0
                try:  # never block here: with no connection yet, a DEALER's send would wait
                    sock.send_multipart(self.wire.encode(header),
                                        flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    pass
                self._say(self._intake.tick())
                next_ping = now + (self._ping_interval if self._hello.done() else 0.5)
            if burst >= IDLE_AT_LEAST_EVERY or not zmq_poll(own, 0):
                burst = 0
                self._call_hook(self.on_idle, "idle")
                ready = zmq_poll(polled, IDLE_POLL_MS)
                if not ready or ready[0][0] is not sock:
                    continue  # (or woken by close())
            burst += 1
            msg = recv_message(sock)
            try:
                self._on_message(msg)
            except Exception:  # noqa: BLE001 - the I/O thread must keep reading
                log.exception("the client's I/O thread failed on a message")
        self._close_socket(sock)
        os.close(self._woken)

    def _on_message(self, msg: list[Any]) -> None:
        try:
            header, frames = self.wire.decode(msg)
        except Refused:
            return
        self._silent = 0.0
        session = header.get("session")
        if isinstance(session, bytes) and session != self.session:
            if self.other_store(session):  # (what this client holds is not the store's)
                return
            self.session = session
        if self._unreachable:
            self._unreachable = False
            log.info("the controller at %s answers again", self.info.client_url)
        if header["sid"] != self._controller_sid:
            if self._controller_sid is not None:
                self._controller_restarted()
            self._controller_sid = header["sid"]
        if header.get("error_type") == "forgotten":  # (the I/O loop renews its sockets next)
            self._forgotten = str(header.get("error"))
            return
        req = header.get("req")
        if req == 0:
            if header.get("version") is not None:  # a hello's reply
                self._say_hello = False
                try:
                    hello = from_reply("hello", header)
                except ProtocolError as e:  # (its limit is not believed: ours stays)
                    log.warning("%s", e)
                else:
                    if isinstance(hello, HelloReply) and hello.max_message > 0:
                        self.max_message = hello.max_message
                self._linked_again()
            if not self._hello.done():
                self._hello.set_result(header)
            self._say(self._intake.probe(header.get("sent"), time.monotonic()))
            return
        if header.get("type") == "done":  # numbered: taken in order, acknowledged
            taken, say = self._intake.take(header, frames, time.monotonic())
            self._say(say)
            if taken is None:
                return
            header, frames = taken
        if header.get("more"):  # a reply in pieces (results above the size limit): keep it
            self._partial.setdefault(req, []).append((header, frames))
            return
        parts = self._partial.pop(req, None)
        if parts:
            header, frames = joined([*parts, (header, frames)])
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

    def _say(self, header: dict[str, Any] | None) -> None:
        """(I/O thread) Send an ack of the results taken in, from the receive socket."""
        if header is not None:
            header["session"] = self.session
            try:
                self._recv_sock.send_multipart(self.wire.encode(header), flags=zmq.NOBLOCK,
                                               copy=False)
            except zmq.Again:
                self._intake.said = -1  # (said again at the next ping)

    def send(self, header: dict[str, Any], frames: Sequence[Any] = (),
             stream: Callable[[dict[str, Any], list[Any]], bool] | None = None) -> Future:
        """Send a request; the Future resolves to the reply (header, frames). With `stream`,
        the replies go to it instead (the Future returned: STREAMED, done already).

        The header is packed before the request is registered anywhere: one that cannot be
        encoded raises ValueError here, and nothing of it stays behind (it is never resent)."""
        if self._closed.is_set():
            raise ClientClosed("this client is closed")
        self.check_process()
        fut: Future = Future() if stream is None else STREAMED
        with interrupts_deferred() if frames else NOT_DEFERRED, self.send_lock:
            if self._unreachable:
                raise self.unreachable_error()
            if self.store_changed is not None:
                raise StoreError(self.store_changed)
            req = next(self._req)
            header["req"] = req
            header["rt"] = self.recv_ident
            header["session"] = self.session
            if header["type"] in KEYED:
                header["key"] = self._key_prefix + str(req)  # lets a resend be recognised
            try:
                msg = self.send_wire.encode(header, frames)
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
            if self._linked:
                send_message(self._send_sock, msg)
            else:  # (new sockets the controller has not answered yet: links.py)
                self._held.add(req)
        return fut

    def call(self, header: dict[str, Any], frames: Sequence[Any] = (),
             timeout: float | None = -1.0) -> tuple[dict[str, Any], list[Any]]:
        """A request and its reply, within `quick_wait` (-1) or `timeout` seconds (None: as
        long as the controller is reachable); past it, ControllerUnreachable."""
        return self.reply(self.send(header, frames), header, timeout)

    @property
    def quick_wait(self) -> float:
        """How long a quick request waits for its answer: while the controller is silent (a
        restart, a stall) it rides that out, until `reconnect_timeout` of silence makes the
        connection unreachable (which fails it); the client's `timeout` on top is the bound
        for a controller that is heard but does not answer this request."""
        return self.reconnect_timeout + self.timeout

    def reply(self, fut: Future, header: dict[str, Any],
              timeout: float | None = -1.0) -> tuple[dict[str, Any], list[Any]]:
        """`call`'s wait for the reply `fut` to the request `header` (-1: `quick_wait`)."""
        wait = self.quick_wait if timeout == -1.0 else timeout
        try:
            reply, frames = fut.result(wait)
        except ControllerUnreachable:  # (a TimeoutError too: not this wait's)
            raise
        except FutureTimeout:
            self.forget(header["req"])
            raise self.no_answer(header, wait) from None
        return checked(reply), frames

    def no_answer(self, header: dict[str, Any], wait: float) -> ControllerUnreachable:
        """The error of a quick request not answered within `wait` seconds."""
        return ControllerUnreachable(
            f"the controller at {self.info.client_url} did not answer a {header['type']!r} "
            f"request within {wait:g}s" + ("" if header["type"] in QUERIES else
                                          ", which may or may not have taken effect"))

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
            self.forget(header["req"])
            raise too_slow(what or header["type"], timeout) from None
        return checked(reply), frames

    def check_process(self) -> None:
        """ClientClosed, saying why and what to do, in a process forked from the one that
        made this connection (it cannot be used there: see `_forks`)."""
        if self._forks != _forks:
            raise ClientClosed(
                f"this taskmill client was made in process {self._pid}, and this process "
                f"({os.getpid()}) is a fork of it (os.fork, or multiprocessing's 'fork' start "
                "method): its connection belongs to the parent and cannot be used here. Make a "
                "new TaskClient in this process (or start it with the 'spawn' start method).")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def silent(self) -> float:
        """Seconds the controller has been silent (pings go every second: more than a couple
        means it is stopped, restarting or cut off)."""
        return self._silent

    def wait_while_heard(self, ready: Callable[[float], bool], cap: float) -> bool:
        """For a wait that must not ride out a stalled controller (shutdown(wait=False), an
        event loop's thread): call `ready(seconds)` (it waits at most that long; True once
        what is awaited is there) until it is True, `cap` seconds have passed, or the
        controller has been silent for STALLED_AFTER seconds (stopped, restarting, cut off).
        Whether it came."""
        end = time.monotonic() + cap
        while True:
            left = end - time.monotonic()
            if ready(max(0.0, min(HEARD_POLL, left))):
                return True
            if left <= 0 or self._silent > STALLED_AFTER or self.closed:
                return False

    def on_io_thread(self) -> bool:
        """Whether the calling thread is this connection's I/O thread."""
        return threading.current_thread() is self._thread

    def forget(self, req: int) -> None:
        """Nobody waits for the answer to request `req` any more: drop it (never resent)."""
        with self.send_lock:
            self._outstanding.pop(req, None)
            self._futures.pop(req, None)
            self._streams.pop(req, None)
            self._held.discard(req)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self.send_lock:
            if not self._unreachable:
                self._bye(closed=os.getpid() == self._pid)
            with suppress(OSError):  # (full: it is woken already)
                os.write(self._wake, b"w")
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        with self.send_lock:
            os.close(self._wake)
            self._close_socket(self._send_sock, BYE_LINGER_MS)
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(ClientClosed())
        self.ctx.destroy(linger=0)

