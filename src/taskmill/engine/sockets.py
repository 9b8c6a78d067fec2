"""An engine's four sockets to the controller, and how they are opened again.

    task    (I/O thread)   hello/welcome/register/registered; `tasks` messages in
    ctl     (I/O thread)   heartbeats and their answers, control messages, late results
    res     (main thread)  results out
    heart   (heart thread) ZeroMQ's own device echoes the controller's pings without the GIL

Each socket's routing id is the engine's uuid, a connection number and a suffix. `reconnect`
(called by the I/O thread when channels.py says the connections have gone deaf, or that one
broke: the task and control sockets' monitors report their disconnections, `broke`) closes the
task and control sockets and opens them anew with the next connection number; the result
socket is opened anew by the main thread before its next send (`result_socket`), and the heart
by its own thread (its device is stopped through an inproc control socket). Each thread
touches only its own sockets. One Wire per logical socket, kept across reconnections: replay
checks hold per sender, whose numbers keep rising.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import zmq

from ..connection import ConnectionInfo
from ..curve import apply_client as apply_curve
from ..wire import Wire, apply_engine_link, monitor_socket, send_message

log = logging.getLogger("taskmill.engine")

SUFFIXES = (b".t", b".c", b".r", b".h")  # task, ctl, res, heart
WATCHED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED  # (the monitors' events)
EVENT = struct.Struct("=H")  # a monitor report's first frame begins with its event


class EngineSockets:
    def __init__(self, info: ConnectionInfo, uuid: str) -> None:
        self.info = info
        self.uuid = uuid.encode()
        self.connection = 0  # rises with each reconnection: new routing ids
        self.ctx = zmq.Context()
        # (I/O thread) the task and control sockets' monitors: a connection that broke
        self.monitors: dict[zmq.Socket, zmq.Socket] = {}
        self._established: set[zmq.Socket] = set()  # monitors whose connection is taken
        self.task = self._watched(self._dealer(b".t"))
        self.ctl = self._watched(self._dealer(b".c"))
        self.res = self._dealer(b".r")
        self.heart = self._dealer(b".h")
        self._wires = {s: Wire(info.key_bytes, max_message=info.max_message)
                       for s in (self.task, self.ctl, self.res)}
        self.payload_wire = Wire(info.key_bytes)  # payload digests (no sequence involved)
        self._res_wanted: int | None = None  # the connection number the main thread opens
        self._heart_url = f"inproc://taskmill-heart-{uuid}"
        self._heart_control = self.ctx.socket(zmq.PAIR)  # the heart thread's end
        self._heart_control.bind(self._heart_url)
        self._heart_stop = self.ctx.socket(zmq.PAIR)  # the I/O thread's end
        self._heart_stop.connect(self._heart_url)

    def ident(self, suffix: bytes, connection: int | None = None) -> bytes:
        n = self.connection if connection is None else connection
        return self.uuid + (b"~%d" % n if n else b"") + suffix

    def idents(self) -> dict[str, bytes]:
        """The routing ids a registration names (the task socket's is its sender's)."""
        return {"ctl_ident": self.ident(b".c"), "res_ident": self.ident(b".r"),
                "heart_ident": self.ident(b".h")}

    def _dealer(self, suffix: bytes, connection: int | None = None) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.ROUTING_ID, self.ident(suffix, connection))
        # A first try 10 ms after a refused connect (an engine started beside its controller
        # usually gets there before it listens), doubling up to 2 s while nobody listens.
        s.setsockopt(zmq.RECONNECT_IVL, 10)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        s.setsockopt(zmq.MAXMSGSIZE, self.info.max_message)  # (the controller's limit)
        apply_engine_link(s)  # (no ZMTP heartbeats: channels.py and TCP keepalive)
        apply_curve(s, self.info)
        s.connect(self.info.engine_url)
        return s

    def register(self, poller: zmq.Poller) -> None:
        """(I/O thread) Poll the task and control sockets and their monitors."""
        for sock in (self.task, self.ctl):
            poller.register(sock, zmq.POLLIN)
            poller.register(self.monitors[sock], zmq.POLLIN)

    def _watched(self, sock: zmq.Socket) -> zmq.Socket:
        self.monitors[sock] = monitor_socket(sock, WATCHED)
        return sock

    def _unwatch(self, sock: zmq.Socket) -> zmq.Socket | None:
        mon = self.monitors.pop(sock, None)
        self._established.discard(mon)
        if mon is not None:
            with suppress(zmq.ZMQError):
                sock.disable_monitor()
            mon.close(0)
        return mon

    @property
    def connected(self) -> bool:
        """(I/O thread) Whether a connection of the task or control socket is up (its
        handshake done): a controller, or something else, listens at the address."""
        return bool(self._established)

    def broke(self, monitor: zmq.Socket) -> bool | None:
        """(I/O thread) None if `monitor` is none of the monitors; else its reports read:
        whether a connection of the task or control socket that the controller had taken
        (its handshake done) broke since. (One that broke before, e.g. a proxy in between
        that could not reach a controller not listening yet, the controller never knew:
        ZeroMQ's reconnection under the same id is heard.)"""
        if monitor not in self.monitors.values():
            return None
        broke = False
        while monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = EVENT.unpack_from(monitor.recv_multipart()[0])[0]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._established.add(monitor)
            elif event == zmq.EVENT_DISCONNECTED and monitor in self._established:
                self._established.discard(monitor)
                broke = True
        return broke

    def send(self, sock: zmq.Socket, header: dict[str, Any], frames: Sequence[Any] = ()) -> None:
        send_message(sock, self._wires[sock].encode(header, frames))

    def decode(self, sock: zmq.Socket, msg: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        return self._wires[sock].decode(msg)

    # -- opening them anew -----------------------------------------------------------------
    def reconnect(self, poller: zmq.Poller) -> None:
        """(I/O thread) New task and control sockets under the next connection number; the
        result socket and the heart follow in their own threads."""
        self.connection += 1
        for name in ("task", "ctl"):
            old = getattr(self, name)
            poller.unregister(old)
            mon = self._unwatch(old)
            if mon is not None:
                poller.unregister(mon)
            new = self._watched(self._dealer(b".t" if name == "task" else b".c"))
            self._wires[new] = self._wires.pop(old)
            old.close(linger=0)
            setattr(self, name, new)
            poller.register(new, zmq.POLLIN)
            poller.register(self.monitors[new], zmq.POLLIN)
        self._res_wanted = self.connection
        self._heart_stop.send(b"TERMINATE")  # the heart thread opens its socket anew

    def result_socket(self) -> zmq.Socket:
        """(Main thread) The result socket, opened anew first if the connection moved."""
        wanted = self._res_wanted
        if wanted is not None:
            self._res_wanted = None
            old = self.res
            self.res = self._dealer(b".r", wanted)
            self._wires[self.res] = self._wires.pop(old)
            old.close(linger=0)
        return self.res

    def run_heart(self) -> None:
        """(Heart thread) Echo whatever the controller sends to the heart socket, in ZeroMQ's
        own C code, which runs without the GIL: task code that holds the GIL for minutes (a
        long regex, a C extension) never makes a live engine look dead. A stopped process
        (SIGSTOP) or a cut network does not answer. Told TERMINATE, it opens its socket anew
        under the current connection number."""
        try:
            while True:
                zmq.proxy_steerable(self.heart, self.heart, None, self._heart_control)
                old = self.heart
                self.heart = self._dealer(b".h")
                old.close(linger=0)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as e:  # (the context ends while the device starts)
            if e.errno != zmq.ETERM:
                log.warning("the heartbeat device stopped: %s", e)
        finally:
            self.heart.close(linger=0)
            self._heart_control.close(linger=0)

    def close_io(self) -> None:
        """(I/O thread, as it ends) Its sockets."""
        self._heart_stop.close(linger=0)
        for sock in (self.task, self.ctl):
            self._unwatch(sock)

    def close(self) -> None:
        """(Main thread, once the I/O thread has ended) The rest, and the context (which
        ends the heart's device, which then closes its socket)."""
        self.res.close(linger=500)
        self.task.close(linger=0)
        self.ctl.close(linger=500)  # (a last `retired` goes out)
        if not self._heart_stop.closed:  # (an I/O thread that did not end in time)
            self._heart_stop.close(linger=0)
        self.ctx.term()
