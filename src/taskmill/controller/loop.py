"""The loop: with sockets.py, the only code of the controller that touches ZeroMQ; the only
code of it that reads the clock.

It takes the two bound ROUTER sockets (clients, engines: sockets.py, which `taskmill
controller` binds before it imports the rest; a Controller built without them binds its own),
then turns: poll both sockets, read every message that is waiting (`drain`: decoded and
checked by the Wire, then handed with the time to the core; pings' echoes straight to it),
hand the core the due timers, and send what the core's `flush` returns, signing each message
as it goes (in that order: see outbox.py). A refused message is counted and logged at most
once a minute per peer. `Controller` keeps the names tools and tests use (`wire`, `session`,
`sched`, `engines`, `counters`, `statistics()`, ...), each read from the core.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import zmq

from .. import __version__
from ..checks import days, seconds
from ..connection import ConnectionInfo
from ..curve import CurveServer
from ..defaults import (
    DEFAULT_HEARTBEAT,
    DEFAULT_KEEP_RESULTS,
    DEFAULT_UNMET_TIMEOUT,
    FORGET_CLIENTS_AFTER,
    FORGET_CLIENTS_AFTER_WARN,
    LOGGED_ONCE_MAX,
)
from ..memory import map_large
from ..store import MemoryStore, TaskStore
from ..wire import (
    HEADER_ENCODER,
    MAX_FRAMES,
    Refused,
    Wire,
    recv_message,
    send_message,
)
from .context import Counters, Now, new_now
from .core import ControllerCore
from .engines import PING, REFUSAL_LOG_EVERY, EngineRecord
from .outbox import CLIENT, ENGINE
from .sockets import ControllerSockets

log = logging.getLogger("taskmill.controller")

DRAIN_BATCH = 1000  # messages read from one socket before the other gets its turn
SESSION_BYTES = 8  # random bytes naming one controller start (its session, after the store's)


def session_of(store_id: int) -> bytes:
    """A controller start's session: its store's identity, then SESSION_BYTES random bytes."""
    return store_id.to_bytes(8, "big") + os.urandom(SESSION_BYTES)
# The controller makes few reference cycles but many short-lived containers per task: a
# collection every 700 of them (the default) cost ~20% of its CPU in a flood. The count is of
# allocations less frees of objects younger than the last collection: in a flood the tasks'
# own objects outlive it, so each collection lowers the count less than it should and comes
# sooner (20,000: 23 to 74 young collections in a flood of 20,000 tasks, ~4 µs a task, 7%
# of the controller's CPU; 100,000: 2, ~1.5 µs).
GC_THRESHOLDS = (100_000, 20, 20)
# As plain ints: `&` of pyzmq's IntFlag members runs enum code in Python (~80 bytecodes a test).
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)


def clock() -> Now:
    return new_now(Now, (time.monotonic(), time.time()))


FINAL_READ_QUIET_MS = 100  # a stopping controller reads on until this long passes quietly,
FINAL_READ_MAX = 2.0  # at most this long in all (seconds)

class Controller:
    """Owns the sockets and the loop around a `ControllerCore`."""

    def __init__(
        self,
        info: ConnectionInfo,
        *,
        store: TaskStore | None = None,
        unmet_timeout: float = DEFAULT_UNMET_TIMEOUT,
        heartbeat: float = DEFAULT_HEARTBEAT,
        context: zmq.Context | None = None,
        connection_file: str | os.PathLike[str] | None = None,
        prefetch: int | None = None,
        max_message: int | None = None,
        keep_results: float = DEFAULT_KEEP_RESULTS,
        sockets: ControllerSockets | None = None,
        forget_clients_after: float = FORGET_CLIENTS_AFTER,
        queue_window: int | None = None,
        queue_bytes: int | None = None,
    ) -> None:
        """`max_message`: bytes a message may hold (None: the connection file's, which its
        clients and engines read too); `sockets`: bound already (with this `max_message`),
        or None to bind them here;
        `forget_clients_after`: seconds of silence after which a client is forgotten
        (controller/clients.py; math.inf: never); `queue_window`: tasks held in memory at
        most, `queue_bytes` their payload bytes (None: no limit; see backlog.py)."""
        seconds("heartbeat", heartbeat)  # (NaN, inf or <= 0 would end or stall the loop later)
        seconds("unmet_timeout", unmet_timeout, zero=True)
        days("keep_results", keep_results)
        if seconds("forget_clients_after", forget_clients_after,
                   infinite=True) < FORGET_CLIENTS_AFTER_WARN:
            log.warning("--forget-clients-after %gs is within a few of a client's pings (one a "
                        "second): a live client whose ping comes late (a busy machine, a "
                        "process paused a moment) will be forgotten, and fail what it waited "
                        "for with ClientForgotten; give it %gs or more (default %gs)",
                        forget_clients_after, FORGET_CLIENTS_AFTER_WARN, FORGET_CLIENTS_AFTER)
        self.info = info
        max_message = info.max_message if max_message is None else max_message
        # (the controller's headers hold plain values only: msgspec's encoder packs them)
        self.wire = Wire(info.key_bytes, max_message=max_message, max_frames=MAX_FRAMES,
                         encoder=HEADER_ENCODER)
        self.store: TaskStore = store if store is not None else MemoryStore()
        self.store.check_key(info.key_bytes)  # (a store of another cluster: StoreError)
        # Random per controller start: every message of a peer names it, so a message
        # captured before a restart is refused after it. Its first 8 bytes name the store,
        # so that a client sees a restart on another store (client/links.py).
        self.session = session_of(self.store.store_id)
        self._refusal_logged: dict[bytes, float] = {}
        self._stopping = False
        if sockets is None:
            sockets = ControllerSockets(info, context=context, connection_file=connection_file,
                                        max_message=max_message)
        self.sockets = sockets
        self.ctx = sockets.ctx
        self.curve: CurveServer | None = sockets.curve
        assert sockets.client is not None and sockets.engine is not None, "sockets closed"
        self.client_sock: zmq.Socket = sockets.client
        self.engine_sock: zmq.Socket = sockets.engine
        self._socks = {CLIENT: self.client_sock, ENGINE: self.engine_sock}
        self.core = ControllerCore(session=self.session, wire=self.wire, store=self.store,
                                   heartbeat=heartbeat, unmet_timeout=unmet_timeout,
                                   prefetch=prefetch, now=clock(), keep_results=keep_results,
                                   forget_clients_after=forget_clients_after,
                                   queue_window=queue_window, queue_bytes=queue_bytes)
        self.counters: Counters = self.core.ctx.counters

    # -- what tools and tests read ---------------------------------------------------------
    @property
    def sched(self) -> Any:
        return self.core.sched

    @property
    def engines(self) -> dict[int, EngineRecord]:
        return self.core.engines.records

    @property
    def heartbeat(self) -> float:
        return self.core.ctx.settings.heartbeat

    @heartbeat.setter
    def heartbeat(self, value: float) -> None:
        self.core.ctx.settings.heartbeat = value

    @property
    def dead_after(self) -> float:
        return self.core.ctx.settings.dead_after

    @dead_after.setter
    def dead_after(self, value: float) -> None:
        self.core.ctx.settings.dead_after = value

    @property
    def unmet_timeout(self) -> float:
        return self.core.ctx.settings.unmet_timeout

    def statistics(self) -> dict[str, Any]:
        return self.core.views.statistics(clock()).as_map()

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        return self.core.views.queue_status(verbose).as_map()

    def engine_table(self) -> list[dict[str, Any]]:
        return [row.as_map() for row in self.core.views.engine_table()]

    def task_info(self, tid: int) -> dict[str, Any]:
        return self.core.views.task_info(tid).as_map()

    def arm(self, key: tuple, delay: float) -> None:
        """Arm timer `key` to fire `delay` seconds from now (replacing its earlier moment)."""
        self.core.ctx.timers.arm(key, delay)
        self.core.ctx.timers.settle(time.monotonic())

    # -- the loop --------------------------------------------------------------------------
    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.engine_sock, zmq.POLLIN)
        poller.register(self.client_sock, zmq.POLLIN)
        log.info("controller %s listening: clients %s, engines %s (pid %d; task store %s)",
                 __version__, self.info.client_url, self.info.engine_url, os.getpid(),
                 getattr(self.store, "path", "in memory"))
        try:
            while not self._stopping:
                self.turn(poller, self._poll_timeout_ms())
            # What came before the stop (engines leaving, their results) is read: until
            # nothing more comes for a moment (woken from SIGSTOP by the SIGCONT that follows
            # its SIGTERM, ZeroMQ's I/O thread needs that moment to take in what waited).
            deadline = time.monotonic() + FINAL_READ_MAX
            while time.monotonic() < deadline and poller.poll(FINAL_READ_QUIET_MS):
                self.turn(poller, 0)
        finally:
            self.close()

    def turn(self, poller: zmq.Poller, timeout_ms: int) -> None:
        """One loop turn: poll, read, fire due timers, commit and send."""
        monotonic = time.monotonic
        polled_at = monotonic()
        events = dict(poller.poll(timeout_ms))
        core = self.core
        timers = core.ctx.timers
        core.turn_start = start = monotonic()  # (core.begin_turn, without the call)
        if start - polled_at > timeout_ms / 1000:  # (longer than asked: paused? core.polled)
            core.polled(start - polled_at, timeout_ms / 1000)
        if self.engine_sock in events:
            self.drain(self.engine_sock, core.on_engine)
        if self.client_sock in events:
            self.drain(self.client_sock, core.on_client)
        if timers.due(monotonic()):
            checked = core.fire_timers(clock())
            core.settle_timers(monotonic())
            if checked and self.curve is not None:
                self.curve.reload()
        self.flush()
        end = monotonic()
        if timers.pending:  # (core.settle_timers)
            timers.settle(end)
        core.end_turn(end)

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        try:
            self.core.ctx.outbox.store_retry_at = 0.0
            self.flush()
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.exception("flushing on close failed")
        self.core.close()
        self.sockets.close()

    def drain(self, sock: zmq.Socket,
              handler: Callable[[bytes, dict[str, Any], list[Any], Now], None]) -> None:
        """Read and handle up to DRAIN_BATCH waiting messages of one socket."""
        counters = self.counters
        timers = self.core.ctx.timers
        monotonic, wall = time.monotonic, time.time
        is_engine = sock is self.engine_sock
        events = sock.getsockopt
        for i in range(DRAIN_BATCH):
            # (The poll said the first is there; asking for the next costs less than the
            # zmq.Again that reading past the last would raise: ~1 µs against ~3.)
            if i and not events(EVENTS) & POLLIN:
                return
            try:
                msg = recv_message(sock, zmq.NOBLOCK, routed=True,
                                   max_frames=self.wire.max_frames)
            except zmq.Again:
                return
            counters.messages_in += 1
            ident = msg[0]
            if len(msg) == 2 and msg[1][:4] == PING and is_engine:
                self.core.on_pong(ident, msg[1], new_now(Now, (monotonic(), wall())))
                continue  # (a pong arms no timer)
            try:
                header, frames = self.wire.decode(msg[1:])
            except Refused as e:
                self._log_refusal(ident, e)
                continue
            try:
                handler(ident, header, frames, new_now(Now, (monotonic(), wall())))
            except Exception:  # noqa: BLE001 - one bad message must not stop the controller
                self.wire.refused["internal-error"] += 1
                log.exception("error handling a %r message from %r", header.get("type"), ident)
            if timers.pending:  # the timers it armed count from now
                timers.settle(monotonic())

    def _log_refusal(self, ident: bytes, e: Refused) -> None:
        """At most one log line per peer per minute: a flood must not flood the log too."""
        now = time.monotonic()
        if now - self._refusal_logged.get(ident, -REFUSAL_LOG_EVERY) < REFUSAL_LOG_EVERY:
            return
        if len(self._refusal_logged) > LOGGED_ONCE_MAX:
            self._refusal_logged.clear()
        self._refusal_logged[ident] = now
        log.warning("refused a message from peer %r: %s (refused so far: %s)", ident, e,
                    dict(self.wire.refused))

    def flush(self) -> None:
        """Commit and send what the core says, signing each message as it goes."""
        socks, encode = self._socks, self.wire.encode
        now = new_now(Now, (time.monotonic(), time.time()))
        for port, ident, header, frames in self.core.flush(now):
            if header is None:
                send_message(socks[port], [ident, *frames])
            else:
                send_message(socks[port], [ident, *encode(header, frames)])

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        core = self.core
        if core.ctx.timers.pending:
            core.ctx.timers.settle(now)
        deadline = core.wake_at(now)
        if deadline == now:  # (something can be sent now)
            return 0
        # (milliseconds, rounded up: a poll that ends early would only spin)
        return max(0, int((deadline - time.monotonic()) * 1000) + 1)


def run_controller(
    info: ConnectionInfo,
    *,
    store: TaskStore | None = None,
    unmet_timeout: float = DEFAULT_UNMET_TIMEOUT,
    heartbeat: float = DEFAULT_HEARTBEAT,
    connection_file: str | os.PathLike[str] | None = None,
    prefetch: int | None = None,
    max_message: int | None = None,
    keep_results: float = DEFAULT_KEEP_RESULTS,
    sockets: ControllerSockets | None = None,
    forget_clients_after: float = FORGET_CLIENTS_AFTER,
    queue_window: int | None = None,
    queue_bytes: int | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (on `sockets` if bound already: see Controller)."""
    map_large()  # (large payloads freed go back to the system: taskmill.memory)
    ctl = Controller(info, store=store, unmet_timeout=unmet_timeout, heartbeat=heartbeat,
                     connection_file=connection_file, prefetch=prefetch, max_message=max_message,
                     keep_results=keep_results, sockets=sockets,
                     forget_clients_after=forget_clients_after, queue_window=queue_window,
                     queue_bytes=queue_bytes)

    def _stop(signum: int, frame: Any) -> None:
        ctl.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # What exists now (modules, the loaded store) is frozen out of cycle detection (reference
    # counting still frees it); the rest is checked every GC_THRESHOLDS[0] allocations, so
    # cyclic garbage stays bounded (benchmarks/memory_flat.py: RSS flat from 100k to 1M
    # results).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    ctl.serve_forever()
