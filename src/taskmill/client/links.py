"""What the client's connection does when its link to the controller fails (a part of
`Connection`, kept here to keep connection.py small).

    a connection breaks (ZeroMQ's monitor of either socket says it was disconnected: a reset,
    a cut, the send socket's transport heartbeat giving up, a controller killed)
        --> both sockets anew under new routing ids (ZeroMQ would reconnect with the old ones,
            which a controller still holding the old connection ignores for good); a `bye`
            from the old receive id hands its run() leases to the new one and ends its waits;
            once the controller answers the new receive socket's hello, every request
            waiting for an answer is sent again to the new id (what crossed the broken
            connection may be lost either way); abort, clear, retire and spin carry the
            client's key for them, and the controller answers them from the answer it kept
            (controller/control_verbs.py) instead of carrying them out twice
    a restarted controller answers (a new sid) --> the same resend, for its new session
        (abort, clear and retire are answered from its store)
    nothing heard for reconnect_timeout --> unreachable: everything waiting fails, and
        later requests raise until the controller answers again
    the controller says it forgot this client --> what waited fails with ClientForgotten,
        both sockets anew

Requests sent again: submits and puts (the controller finds them by their key and gives the
same taskids), reads, waits and watches (answered anew), a lease (the block granted to its key,
by a restarted controller too: its store keeps the lease), its release
and an engine's exit (no harm twice), abort, clear, retire and spin (answered from what the
controller kept for their key, or carried out if it kept nothing). New requests
are held (not sent) until the controller answers the new receive socket's hello, so that no
answer goes to an id it has no connection for yet; a caller never waits for that here.
"""

from __future__ import annotations

import logging
import threading
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import suppress
from typing import Any

import zmq

from ..errors import ClientForgotten, ControllerUnreachable, StoreError
from ..protocol import Bye, to_request
from ..wire import Wire, monitor_socket, send_message
from .credit import Intake

log = logging.getLogger("taskmill.client")

BYE = to_request(Bye())  # (sent with no reply wanted: see _bye)
# Requests sent again after a broken connection or to a restarted controller: reads and waits;
# submits and puts, which the controller de-duplicates by their key; a lease, answered with the
# block granted to its key (a restarted controller's store kept it);
# abort, clear, retire and spin, which it answers from the answer it kept for their key (a
# restarted one: from its store; a spin it carries out, a pass of its own).
RESENDABLE = frozenset({"submit", "put", "result", "wait", "watch", "lease", "status", "task",
                        "engines", "stats", "activity", "release", "engine_exited", "abort",
                        "clear", "retire", "spin"})
# Requests that carry the client's key for them (the client's id and the request's number).
KEYED = frozenset({"submit", "put", "lease", "release", "abort", "clear", "retire", "spin"})
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)


class LinkRecovery:
    """The recovery part of `Connection` (which sets every attribute named here)."""

    info: Any
    path: Any
    reconnect_timeout: float
    ctx: zmq.Context
    send_lock: threading.Lock
    send_wire: Wire
    recv_ident: bytes
    session: bytes | None
    store_changed: str | None
    _send_sock: zmq.Socket
    _recv_sock: zmq.Socket
    _monitors: dict[zmq.Socket, zmq.Socket]  # a socket -> the PAIR its monitor tells
    _futures: dict[int, Future]
    _outstanding: dict[int, tuple[dict[str, Any], list[Any]]]
    _partial: dict[int, list[tuple[dict[str, Any], list[Any]]]]
    _streams: dict[int, Callable[[dict[str, Any], list[Any]], bool]]
    _intake: Intake
    _unreachable: bool
    _forgotten: str | None
    _say_hello: bool
    _key_prefix: str
    _linked: bool  # (under send_lock) the controller answered the receive socket's hello
    _held: set[int]  # (under send_lock) requests not sent yet, until _linked
    _resend_when_linked: bool  # a broken connection's requests wait for the new link
    on_unreachable: Callable[[BaseException], None] | None

    def _dealer(self, ident: bytes, times_out: bool = False) -> zmq.Socket:
        raise NotImplementedError  # (Connection's)

    # -- sockets and their monitors ---------------------------------------------------------
    def _watched(self, sock: zmq.Socket) -> zmq.Socket:
        """`sock`, its disconnections reported to a monitor socket the I/O thread reads."""
        self._monitors[sock] = monitor_socket(sock, zmq.EVENT_DISCONNECTED)
        return sock

    def _close_socket(self, sock: zmq.Socket, linger: int = 0) -> None:
        mon = self._monitors.pop(sock, None)
        if mon is not None:
            with suppress(zmq.ZMQError):
                sock.disable_monitor()
            mon.close(0)
        sock.close(linger)

    def _link_broke(self) -> bool:
        """(I/O thread) Whether a connection of either socket broke since the last look (the
        monitors' reports are read, and dropped)."""
        broke = False
        for mon in list(self._monitors.values()):
            while mon.getsockopt(EVENTS) & POLLIN:
                mon.recv_multipart()
                broke = True
        return broke

    # -- a broken connection ----------------------------------------------------------------
    def _link_lost(self) -> zmq.Socket:
        """(I/O thread) A connection broke: both sockets anew under new ids (see the module
        docstring); the requests waiting are sent again once the new receive socket is heard."""
        log.info("a connection to the controller at %s broke: connecting anew",
                 self.info.client_url)
        self._resend_when_linked = True
        return self._new_sockets(list)[0]

    def _linked_again(self) -> None:
        """(I/O thread) The controller answered the receive socket's hello: what was held
        goes now, and after a broken connection what may be asked twice goes again."""
        why = None
        if self._resend_when_linked:
            self._resend_when_linked = False
            why = "the connection to the controller at {url} broke before it answered"
        self._send_again(why)

    def _send_again(self, why: str | None) -> None:
        """Send the held requests, and (`why`: what was sent may be lost) every request
        waiting for an answer again, to the receive socket and the session of now, but those
        not RESENDABLE (a request type added without a thought for this): they fail (`why`).
        Then requests go as they are made."""
        failed: list[tuple[Future | None, BaseException]] = []
        with self.send_lock:
            for req, (header, frames) in list(self._outstanding.items()) \
                    if why is not None or self._held else ():
                held = req in self._held
                if not held and why is None:
                    continue  # (sent on this link: its answer comes on it)
                if held or header["type"] in RESENDABLE:
                    if not held:  # (the controller looks up its key: a submit, an abort, ...)
                        header["resent"] = True
                    header["session"] = self.session
                    header["rt"] = self.recv_ident
                    try:
                        send_message(self._send_sock, self.send_wire.encode(header, frames))
                        continue
                    except Exception as e:  # noqa: BLE001 - (it was encoded once: cannot happen)
                        error: BaseException = e
                else:
                    error = ControllerUnreachable(
                        str(why).format(url=self.info.client_url) + f" a {header['type']!r} "
                        "request, which may or may not have taken effect")
                del self._outstanding[req]
                self._streams.pop(req, None)
                failed.append((self._futures.pop(req, None), error))
            self._held.clear()
            self._linked = True
        for fut, error in failed:
            if fut is not None and not fut.done():
                fut.set_exception(error)

    def _bye(self, closed: bool = False, to: bytes = b"") -> None:
        """(Under send_lock) Tell the controller this receive socket is done with; `closed`:
        so is this client, and its submit keys (never sent again: its store may drop them);
        `to`: the receive socket that takes its place (its leases go there)."""
        if self.session is not None:
            header = {**BYE, "req": 0, "rt": self.recv_ident, "session": self.session,
                      "keys": self._key_prefix if closed else "", "to": to}
            with suppress(zmq.ZMQError):
                self._send_sock.send_multipart(self.send_wire.encode(header),
                                               flags=zmq.NOBLOCK, copy=False)

    def _new_sockets(self, drop: Callable[[], list[Future]]) -> tuple[zmq.Socket, list[Future]]:
        """(I/O thread) Both sockets anew, with new routing ids; `drop` (under the lock that
        new requests take) gives up requests. The receive socket, and what `drop` gave up.
        Requests made from now on are held until the controller answers the new receive
        socket's hello (`_send_again`)."""
        base = uuidlib.uuid4().hex.encode()
        with self.send_lock:
            self._linked = False
            waiting = drop()
            old = self._send_sock
            self._send_sock = self._watched(self._dealer(base + b".s", times_out=True))
            self._close_socket(old)
            new_ident = base + b".r"
            self._bye(to=new_ident)  # (the old id: whatever the controller keeps for it can go)
            self.recv_ident = new_ident
        self._close_socket(self._recv_sock)
        self._recv_sock = self._watched(self._dealer(self.recv_ident))
        self._intake.reset()  # (results to the new id are numbered from 0)
        self._say_hello = True  # (so that the controller learns the new id at once)
        return self._recv_sock, waiting

    # -- a restarted controller; one that does not answer; one that forgot this client ------
    def _resend_for_session(self, req: Any) -> bool:
        """A request refused because it named an earlier controller session did nothing:
        send it again, named for the controller's session now. False if that is not it."""
        with self.send_lock:
            sent = self._outstanding.get(req)
            if sent is None:
                return False
            if sent[0].get("session") == self.session:
                return True  # (sent again already, when the restart was noticed)
            header, frames = sent
            header["session"] = self.session
            header["rt"] = self.recv_ident
            send_message(self._send_sock, self.send_wire.encode(header, frames))
        return True

    @staticmethod
    def _call_hook(hook: Callable[[], Any] | None, what: str) -> None:
        """(I/O thread) Call a hook of the client's; a failure is logged: reading goes on."""
        if hook is not None:
            try:
                hook()
            except Exception:  # noqa: BLE001 - the I/O thread must keep reading
                log.exception("the client's %s hook failed", what)

    def _controller_restarted(self) -> None:
        """A new controller answered: send again what the old one never answered."""
        self._say_hello = True  # (it may have another size limit)
        self._partial.clear()
        self._intake.reset()  # (it numbers its results from 0)
        self._resend_when_linked = False  # (the resend is this one)
        self._send_again("the controller at {url} restarted before it answered")

    def other_store(self, session: bytes) -> bool:
        """(I/O thread) Whether `session` (a controller's, named in its reply) is of a store
        other than the one this client's session was (its first 8 bytes: the store's id, 0
        unknown): a controller restarted on a new store (the old one deleted, another --db,
        one in memory) numbers its tasks from 0 again, so this client's taskids would name
        other tasks there. Then everything waiting fails with StoreError, and so does every
        later request: a new client starts afresh."""
        old = self.session
        if old is None or self.store_changed is not None:
            return self.store_changed is not None
        if old[:8] == session[:8] or not any(old[:8]) or not any(session[:8]):
            return False
        self.store_changed = (
            f"the controller at {self.info.client_url} (connection file {self.path}) was "
            "restarted on another task store (its store was deleted, or given by another --db, "
            "or kept in memory): the tasks this client submitted, and their results, are not "
            "in it, and its taskids would name other tasks there. What waited for them fails; "
            "make a new client to go on (and submit again what you still need)")
        log.error("%s", self.store_changed)
        with self.send_lock:
            waiting = self._drop_requests()
        self._fail(waiting, lambda: StoreError(self.store_changed or ""))
        return True

    def unreachable_error(self) -> ControllerUnreachable:
        return ControllerUnreachable(
            f"the controller at {self.info.client_url} (connection file {self.path}) has not "
            f"answered for {self.reconnect_timeout:g}s (this client's reconnect_timeout). Is it "
            "running? Started again on the same connection file (`taskmill controller "
            f"--connection-file {self.path}` with the same --db), it is used again by this "
            "client for new requests. A submit, abort or clear it had not answered may or may "
            "not have taken effect.")

    def _declare_unreachable(self) -> None:
        """Fail every request waiting for the controller, and the client's futures."""
        log.warning("the controller at %s has not answered for %gs: giving up on what waits "
                    "for it", self.info.client_url, self.reconnect_timeout)
        with self.send_lock:
            self._unreachable = True
            waiting = self._drop_requests()
        self._fail(waiting, self.unreachable_error)

    def _drop_requests(self) -> list[Future]:
        """(Under send_lock) Forget every request waiting for an answer; their futures."""
        waiting = list(self._futures.values())
        self._futures.clear()
        self._streams.clear()
        self._outstanding.clear()
        self._held.clear()
        self._partial.clear()
        return waiting

    def _fail(self, waiting: list[Future], error: Callable[[], BaseException]) -> None:
        """(I/O thread) Fail these requests and (`on_unreachable`) the client's futures."""
        for fut in waiting:
            if not fut.done():
                fut.set_exception(error())
        hook = self.on_unreachable
        if hook is not None:
            self._call_hook(lambda: hook(error()), "unreachable")

    def _reopen(self) -> zmq.Socket:
        """(I/O thread, the controller unreachable, or it forgot this client) Both sockets
        anew, with new routing ids. ZeroMQ reconnects a socket with its own id; if the
        controller still holds a connection with that id (it has not seen the old one end: a
        reset lost on the way), it ignores the new one for good, and this client would never
        hear from it again. New ids cannot collide. A client the controller forgot fails what
        waited here, under the lock that new requests take (one sent before it would wait for
        a refusal the old socket never reads)."""
        why, self._forgotten = self._forgotten, None
        if why is not None:
            log.warning("%s", why)
        sock, waiting = self._new_sockets(self._drop_requests if why is not None else list)
        if why is not None:
            self._fail(waiting, lambda: ClientForgotten(f"{why} (at {self.info.client_url})"))
        return sock
