"""The controller's two listening sockets: a ROUTER for clients and one for engines.

    ConnectionInfo --bind (Curve if the file asks)--> ControllerSockets.client / .engine
                   --> loop.py's Controller polls, reads and sends on them

`taskmill controller` binds them as soon as its store is open, before it imports and builds
the rest of the controller (the scheduler, the dashboard): engines and clients started beside
it then connect on their first try, and what they send waits in the sockets' queues until the
loop reads it, rather than each retrying on its own growing interval. This module imports
only what binding needs. A `Controller` built without them binds its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import zmq

from ..connection import ConnectionInfo
from ..curve import CurveServer
from ..curve import enabled as curve_enabled
from ..wire import DEFAULT_MAX_MESSAGE, apply_client_link, apply_engine_link


class ControllerSockets:
    """Both ROUTER sockets, bound; `close()` closes them (and the context, if it made it).

    `max_message`: the largest message a peer may send (ZeroMQ drops the connection of one
    that sends more); the controller's Wire must be built with the same limit.
    """

    def __init__(self, info: ConnectionInfo, *, context: zmq.Context | None = None,
                 connection_file: str | Path | None = None,
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.ctx = context or zmq.Context()
        self.own_ctx = context is None
        self.curve: CurveServer | None = None
        self.client: zmq.Socket | None = None
        self.engine: zmq.Socket | None = None
        try:
            if curve_enabled(info):
                if connection_file is None:
                    raise ValueError("a Curve controller needs its connection file (for its "
                                     "keys)")
                self.curve = CurveServer(self.ctx, Path(connection_file))
            self.client = self._router(info.client_bind_url, apply_client_link)
            self.engine = self._router(info.engine_bind_url, apply_engine_link)
        except BaseException:
            self.close()
            raise

    def _router(self, url: str, transport: Callable[[zmq.Socket], None]) -> zmq.Socket:
        s = self.ctx.socket(zmq.ROUTER)
        try:
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            # No ROUTER_HANDOVER: a peer that connects with the routing id of one that is
            # connected (ids travel in clear over TCP) is refused, never given its messages.
            # Neither socket times a connection out with ZeroMQ's heartbeats (the client socket
            # sends PINGs, but a timeout would cut off a submit that takes longer than it to
            # arrive; the engine socket has none: thousands of connections): a client or an
            # engine whose connection broke, or that finds itself unheard, connects again with
            # new ids (client/links.py, engine/channels.py), and the kernel's TCP keepalive
            # closes a vanished peer's connection (wire.apply_client_link, apply_engine_link).
            s.setsockopt(zmq.MAXMSGSIZE, self.max_message)
            transport(s)
            if self.curve is not None:
                self.curve.apply(s)
            s.bind(url)
        except BaseException:
            s.close(0)
            raise
        return s

    def close(self) -> None:
        """(Idempotent.)"""
        for s in (self.client, self.engine):
            if s is not None:
                s.close(0)
        self.client = self.engine = None
        if self.curve is not None:
            self.curve.stop()
            self.curve = None
        if self.own_ctx and not self.ctx.closed:
            self.ctx.term()
