"""The controller: the only process that listens. A thin I/O shell around the scheduler.

How a task travels (reading order below follows it):

    client --submit--> [client ROUTER] --> store.add + scheduler.submit
                                              |
                                   Dispatch(tid, eid) action
                                              v
    engine <--task--- [engine ROUTER] <-- store.task(tid) body frames, sent as opaque bytes
    engine ---result--> [engine ROUTER] --> scheduler.task_done --> Finish action
                                              |
                                 store.finish + wake the waiters
                                              v
    client <--reply--- [client ROUTER] (replies are sent after the store has committed)

One thread, one loop: poll both sockets, handle every message that is waiting, fire due timers,
commit the store once (group commit), then send what that commit allowed. The controller
never unpickles user data, except a callable `depend`, which it must call.

One loop turn commits first, then sends to engines, then to clients: a task reaches an engine
only once its row and its running mark are on disk (so a restarted controller knows where it
went and never gives its taskid to another task), and a taskid or a result a client hears of
is on disk. Messages to one engine in one turn travel as one `tasks` message, and results for
one client request in one turn as one `done` message. Only messages that depend on nothing
stored (heartbeats, hello, refusals) go out without waiting for the commit.

When the store cannot write (disk full, locked by another process), nothing that depends on
the failed commit is sent: the rows stay queued and the commit is tried again with a growing
pause; the submits of that commit are taken back (their taskids are never used) and answered
with StoreError; everything else waits until the store writes again. The controller keeps
serving meanwhile and logs the cause once.

Client messages (every one carries `req`; the reply echoes it):
  hello, ping, submit{tasks, watch}, result{tids, block}, watch{tids}, wait{tids}, abort{tid},
  spin, status{verbose}, clear{tids}, engines, stats, engine_exited{pid, status} (from a nanny),
  activity{since} and task{tid} (read-only, for the dashboard: stats.py keeps what they read)
  A submit with `watch` is answered with its taskids, then with `done` messages as its tasks
  finish (one request instead of a submit and a watch).
Engine control messages: register, hb (heartbeat), revoked  ->  registered, hb, reregister,
  interrupt, revoke{dseq} (give back a buffered task, see the scheduler's stealing; `dseq`, not
  `seq`, which every header carries for the Wire's replay check)
Engine task messages: tasks (controller -> engine), results (engine -> controller)
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq

from . import __version__
from .checks import seconds
from .connection import ConnectionInfo
from .curve import CurveServer
from .curve import enabled as curve_enabled
from .defaults import DEFAULT_HEARTBEAT, DEFAULT_UNMET_TIMEOUT, LOGGED_ONCE_MAX, dead_after
from .depend import BoundedDepend, DependRunner
from .errors import StoreError
from .scheduler import (
    ABORTED,
    DEPENDENCY,
    ENGINE_DIED,
    RESULT,
    RUNNING,
    UNMET_TIMEOUT,
    Abort,
    AddEngine,
    ArmTimer,
    CancelTimer,
    Dispatch,
    EngineGone,
    Finish,
    Interrupt,
    LostExpired,
    LostReturned,
    Node,
    Resume,
    Revoke,
    RevokeAnswered,
    RunPass,
    Scheduler,
    Spin,
    Submit,
    TaskDone,
    TimerFired,
    Withdraw,
    split_answer,
)
from .stats import RecentActivity
from .store import MemoryStore, StoredResult, StoredTask, TaskStore
from .task import MAX_TIMEOUT
from .wire import (
    DEFAULT_MAX_MESSAGE,
    MAX_FRAMES,
    Refused,
    Wire,
    apply_transport_heartbeat,
    frame_len,
    loads,
    recv_message,
    send_message,
)

log = logging.getLogger("taskmill.controller")

DRAIN_BATCH = 1000
REFUSAL_LOG_EVERY = 60.0  # seconds between log lines about one peer's refused messages
COMMIT_INTERVAL = 0.05  # seconds a write with no reply waiting on it may stay uncommitted
PING = b"TMHB"  # pings to engines' heart sockets start so (a Wire envelope starts b"TM2")
DEAD_RECORDS_KEPT = 1000  # dead engines still listed (engines(), statistics) at most
# Client requests that need not name the controller session (they change nothing; their
# replies tell it).
SESSIONLESS = frozenset({"hello", "ping"})
# How long after a restart the controller waits for the engine a task was running on
# (at least; also 4 x dead_after) before its attempt counts as lost with that engine.
LOST_GRACE = 5.0
STORE_RETRY_FIRST = 0.05  # seconds before a failed commit is tried again, doubling ...
STORE_RETRY_MAX = 0.5  # ... to this
# Results sent to a client go in pieces below the size limit (see _within_limit): this much of
# a message is kept for its header's own fields.
RESULTS_HEADER_ROOM = 1024


class BadRequest(Exception):
    """A well-signed message whose contents make no sense: answered with an error, never acted on."""


@dataclass(slots=True)
class EngineRecord:
    eid: int
    uuid: str
    task_ident: bytes  # where tasks go
    ctl_ident: bytes  # control messages and heartbeat answers
    res_ident: bytes  # where its results come from
    heart_ident: bytes  # its echo device (pings, answered without the GIL)
    hostname: str
    pid: int
    properties: dict[str, Any]
    registered: float
    last_seen: float
    state: str = "idle"
    tasks_done: int = 0
    failures: int = 0
    mseq: int = 0  # the number of the last `tasks` message sent to it
    # (tid, attempt) -> the number of the `tasks` message that carried it (0: adopted)
    sent: dict[tuple[int, int], int] = field(default_factory=dict)
    to_ack: list[list[int]] = field(default_factory=list)  # results taken, not yet committed
    ackable: list[list[int]] = field(default_factory=list)  # committed: acknowledge them
    prev_unacked: set[tuple[int, int]] = field(default_factory=set)  # in its last heartbeat
    ticked_at: float = 0.0  # when the last empty `tasks` message went (see _on_heartbeat)


@dataclass(slots=True)
class Waiter:
    reply_to: bytes
    req: int
    mode: str  # "result": one reply with every result; "wait": one empty reply; "watch": one per task
    tids: list[int]
    remaining: set[int]


@dataclass(slots=True)
class NewSubmit:
    """A submit whose tasks wait for the commit that stores them; answered after it."""

    reply_to: bytes
    req: Any
    tids: list[int]
    key: str | None
    watch: bool


@dataclass(slots=True)
class Stats:
    started: float = field(default_factory=time.time)
    messages_in: int = 0
    messages_out: int = 0
    submitted: int = 0
    finished: int = 0
    engines_died: int = 0
    revokes_sent: int = 0  # an idle engine asked for a task buffered on another
    revokes_granted: int = 0  # ... and got it
    tasks_lost_in_transit: int = 0  # dispatches an engine never got, queued again
    store_refusals: int = 0  # submits refused because the store could not write


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _meta_bound(meta: dict[str, Any] | None) -> int:
    """At least the packed size of a result entry: its texts (output, error) take at most 4
    bytes a character (UTF-8), every other field far less than 1 KiB together."""
    if not meta:
        return 16
    n = 1024
    for key in ("stdout", "stderr"):
        text = meta.get(key)
        if isinstance(text, str):
            n += 4 * len(text)
    error = meta.get("error")
    if isinstance(error, dict):
        for value in error.values():
            n += 4 * len(value) if isinstance(value, str) else 64
    return n


def _check_exec(ex: dict[str, Any], nframes: int) -> dict[str, Any]:
    """What an engine is told to do with a node, rebuilt from its checked fields."""
    kind = ex.get("kind")
    clear_before, clear_after = ex.get("clear_before", False), ex.get("clear_after", False)
    if not isinstance(clear_before, bool) or not isinstance(clear_after, bool):
        raise BadRequest("clear_before and clear_after must be bools")
    if kind == "string":
        expression, pull = ex.get("expression"), ex.get("pull", [])
        if not isinstance(expression, str):
            raise BadRequest("a string task needs its expression as a str")
        if not isinstance(pull, list) or not all(isinstance(x, str) for x in pull):
            raise BadRequest("pull must be a list of names")
        return {"kind": kind, "expression": expression, "pull": pull,
                "clear_before": clear_before, "clear_after": clear_after}
    if kind == "map":
        fn = ex.get("fn")
        if fn is not None and not (_is_int(fn) and 0 < fn <= nframes):
            raise BadRequest("fn must count the function's frames (an int within nframes)")
        if nframes == 0:
            raise BadRequest("a map task needs its function's payload frames")
        return {"kind": kind, "fn": fn, "clear_before": clear_before, "clear_after": clear_after}
    raise BadRequest("exec kind must be 'string' or 'map'")


def _pairs(value: Any) -> set[tuple[int, int]]:
    """An engine's list of [tid, attempt] pairs, as a set (malformed items are ignored)."""
    if not isinstance(value, list):
        return set()
    return {(x[0], x[1]) for x in value
            if isinstance(x, list) and len(x) == 2 and _is_int(x[0]) and _is_int(x[1])}


def _check_int_list(value: Any, what: str) -> list[int]:
    if value == []:  # (the usual `after`)
        return value
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        raise BadRequest(f"{what} must be a list of ints")
    return value


class Controller:
    """Owns the sockets, the scheduler, the store and the engine registry."""

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
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        seconds("heartbeat", heartbeat)  # (NaN, inf or <= 0 would end or stall the loop later)
        seconds("unmet_timeout", unmet_timeout, zero=True)
        self.info = info
        self.wire = Wire(info.key_bytes, max_message=max_message, max_frames=MAX_FRAMES)
        self.store: TaskStore = store if store is not None else MemoryStore()
        self.sched = Scheduler(unmet_timeout=unmet_timeout, slots=prefetch)
        self.unmet_timeout = unmet_timeout
        self.heartbeat = heartbeat
        self.dead_after = dead_after(heartbeat)
        # Random per controller start: every message of a peer names it, so a message
        # captured before a restart is refused after it.
        self.session = os.urandom(8)
        self._pings: deque[bytes] = deque(maxlen=3)  # the latest rounds' ping payloads
        self._stall_end = float("-inf")  # monotonic end of the last loop turn that ran long
        self._turn_start = time.monotonic()
        self._lost: dict[str | None, list[int]] = {}  # engine uuid -> tasks lost with it
        self._lost_expired: set[int] = set()
        self._acking: set[int] = set()  # engines with results to acknowledge after a commit
        self.depends = DependRunner()  # callable depends run with a deadline
        self._slow_depends: set[int] = set()  # tasks whose depend callable was given up on
        self.engines: dict[int, EngineRecord] = {}
        self._by_ident: dict[bytes, int] = {}
        self._by_uuid: dict[str, int] = {}
        self._waiters: dict[int, list[Waiter]] = {}
        self._death_reasons: dict[int, str] = {}
        self._started: dict[int, float] = {}  # tid -> when its current attempt was dispatched
        self._report: tuple[dict[str, Any], list[Any]] | None = None
        self._timers: list[tuple[float, int, tuple]] = []
        self._timer_live: dict[tuple, int] = {}
        self._timer_seq = itertools.count()
        # What this loop turn will send (see _flush): to engines, in order; tasks per engine;
        # to clients, in order; results per (client socket, request). Messages are signed
        # as they are sent, never before: each socket's messages must leave in the order of
        # their sequence numbers, or peers refuse the later-numbered ones sent first as
        # replays.
        self._to_engines: list[tuple[bytes, dict[str, Any], Any]] = []
        self._tasks_out: dict[int, tuple[list[dict[str, Any]], list[Any]]] = {}
        self._to_clients: list[tuple[bytes, dict[str, Any], Any]] = []
        self._done_out: dict[tuple[bytes, Any], tuple[list[Any], list[Any]]] = {}
        self._new_submits: list[NewSubmit] = []  # answered after the commit that stores them
        # Messages that depend on nothing stored: sent every turn, even while the store fails.
        # (header None: raw frames, a ping.)
        self._now_out: list[tuple[zmq.Socket, bytes, dict[str, Any] | None, Any]] = []
        self._store_down_since: float | None = None  # monotonic time of the first failure
        self._store_retry_at = 0.0
        self._store_retry_delay = STORE_RETRY_FIRST
        self._dispatch_seq = itertools.count(1)
        self._seq_of: dict[tuple[int, int], int] = {}  # (tid, attempt) -> its dispatch seq
        self._last_commit = time.monotonic()
        self._refusal_logged: dict[bytes, float] = {}
        self._late_logged: dict[bytes, float] = {}
        self.stats = Stats()
        self.activity = RecentActivity(self.stats.started)
        self._stopping = False
        self.ctx = context or zmq.Context()
        self._own_ctx = context is None
        self.curve: CurveServer | None = None
        if curve_enabled(info):
            if connection_file is None:
                raise ValueError("a Curve controller needs its connection file (for its keys)")
            self.curve = CurveServer(self.ctx, Path(connection_file))
        self.client_sock = self._router(info.client_bind_url)
        self.engine_sock = self._router(info.engine_bind_url)
        self._arm(("heartbeat-check",), self.heartbeat / 2)
        self._arm(("ping",), 0.0)
        self._reload()

    def _router(self, url: str) -> zmq.Socket:
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        # No ROUTER_HANDOVER: a peer that connects with the routing id of one that is
        # connected (ids travel in clear over TCP) is refused, never given its messages. A
        # vanished peer's connection ends within wire.TRANSPORT_TIMEOUT_MS (ZeroMQ's
        # heartbeats), which frees its id for its own reconnection.
        s.setsockopt(zmq.MAXMSGSIZE, self.wire.max_message)
        apply_transport_heartbeat(s)
        if self.curve is not None:
            self.curve.apply(s)
        s.bind(url)
        return s

    # -- the loop --------------------------------------------------------------------------
    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.engine_sock, zmq.POLLIN)
        poller.register(self.client_sock, zmq.POLLIN)
        log.info("controller %s listening: clients %s, engines %s (pid %d)",
                 __version__, self.info.client_url, self.info.engine_url, os.getpid())
        try:
            while not self._stopping:
                events = dict(poller.poll(self._poll_timeout_ms()))
                self._turn_start = time.monotonic()
                if self.engine_sock in events:
                    self._drain(self.engine_sock, self._on_engine)
                if self.client_sock in events:
                    self._drain(self.client_sock, self._on_client)
                self._fire_timers()
                self._flush()
                end = time.monotonic()
                if end - self._turn_start > self.heartbeat / 2:
                    # This turn kept the loop from reading for a while (e.g. a slow depend):
                    # no engine is held to answers it could not have been heard giving.
                    self._stall_end = end
        finally:
            self.close()

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        try:
            self._store_retry_at = 0.0
            self._flush()
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.exception("flushing on close failed")
        self.store.close()
        self.depends.close()
        self.client_sock.close(0)
        self.engine_sock.close(0)
        if self.curve is not None:
            self.curve.stop()
        if self._own_ctx:
            self.ctx.term()

    def _drain(self, sock: zmq.Socket, handler: Callable[[bytes, list[Any]], None]) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                msg = recv_message(sock, zmq.NOBLOCK, routed=True,
                                   max_frames=self.wire.max_frames)
            except zmq.Again:
                return
            self.stats.messages_in += 1
            ident = msg[0]
            if len(msg) == 2 and msg[1][:4] == PING and sock is self.engine_sock:
                self._on_pong(ident, msg[1])
                continue
            try:
                header, frames = self.wire.decode(msg[1:])
            except Refused as e:
                self._log_refusal(ident, e)
                continue
            try:
                handler(ident, header, frames)
            except Exception:  # noqa: BLE001 - one bad message must not stop the controller
                self.wire.refused["internal-error"] += 1
                log.exception("error handling a %r message from %r", header.get("type"), ident)

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

    def _flush(self) -> None:
        """Commit, then send: to engines first, then to clients (see the module docstring).

        Writes with no message waiting on them are committed at most COMMIT_INTERVAL later
        (group commit). While the store fails, only the messages that depend on nothing
        stored go out."""
        now = time.monotonic()
        held = self._held_output()
        if self.store.dirty() and now >= self._store_retry_at and (
                held or now - self._last_commit >= COMMIT_INTERVAL):
            try:
                self.store.commit()
            except StoreError as e:
                self._commit_failed(e, now)
            else:
                self._last_commit = now
                if self._store_down_since is not None:
                    log.warning("the task store writes again (after %.1fs); sending what waited",
                                now - self._store_down_since)
                    self._store_down_since = None
                    self._store_retry_delay = STORE_RETRY_FIRST
        if self._now_out:
            out, self._now_out = self._now_out, []
            for sock, ident, header, frames in out:
                if header is None:
                    send_message(sock, [ident, *frames])
                else:
                    send_message(sock, [ident, *self.wire.encode(header, frames)])
            self.stats.messages_out += len(out)
        if self._acking and not self.store.dirty():
            for eid in self._acking:  # results now stored: the engines may drop them
                rec = self.engines.get(eid)
                if rec is not None:
                    rec.ackable.extend(rec.to_ack)
                    rec.to_ack.clear()
            self._acking.clear()
        if not held or (self.store.dirty() and self._store_down_since is not None):
            return  # (nothing waits, or it waits for the store)
        self._answer_submits()
        self._send_to_engines()
        if self._to_clients or self._done_out:
            out, self._to_clients = self._to_clients, []
            for (reply_to, req), (entries, frames) in self._done_out.items():
                for part, part_frames in self._within_limit(entries, frames):
                    out.append((reply_to, {"type": "done", "req": req, "results": part},
                                part_frames))
            self._done_out.clear()
            for ident, header, frames in out:
                send_message(self.client_sock, [ident, *self.wire.encode(header, frames)])
            self.stats.messages_out += len(out)

    def _held_output(self) -> bool:
        return bool(self._to_engines or self._tasks_out or self._to_clients or self._done_out
                    or self._new_submits)

    def _commit_failed(self, e: StoreError, now: float) -> None:
        """The commit failed and every row stays queued: take back the submits it carried
        (answered with StoreError, their taskids never used), hold the rest, try again later."""
        if self._store_down_since is None:
            self._store_down_since = now
            log.error("%s; submits are refused with StoreError and everything else waits until "
                      "it writes again (tried again every %gs at most)", e, STORE_RETRY_MAX)
        self._store_retry_at = now + self._store_retry_delay
        self._store_retry_delay = min(self._store_retry_delay * 2, STORE_RETRY_MAX)
        submits, self._new_submits = self._new_submits, []
        taken: set[int] = set()
        for ns in submits:
            self._withdraw([t for t in ns.tids if t not in taken], ns.key)
            taken.update(ns.tids)
            self.stats.store_refusals += 1
            self._reply(ns.reply_to, ns.req, now=True, error_type="StoreError",
                        error=f"the submit was not accepted, none of its tasks will run: {e}")

    def _withdraw(self, tids: list[int], key: str | None) -> None:
        """Take back tasks whose rows never committed: from the scheduler, the dispatches
        waiting to be sent, the activity record and the store."""
        gone = set(tids)
        self._apply(self.sched.handle(Withdraw(tids)))
        for eid, (entries, frames) in list(self._tasks_out.items()):
            if not any(e["tid"] in gone for e in entries):
                continue
            kept_entries: list[dict[str, Any]] = []
            kept_frames: list[Any] = []
            pos = 0
            for entry in entries:
                n = entry["n"]
                if entry["tid"] not in gone:
                    kept_entries.append(entry)
                    kept_frames.extend(frames[pos:pos + n])
                pos += n
            if kept_entries:
                self._tasks_out[eid] = (kept_entries, kept_frames)
            else:
                del self._tasks_out[eid]
        for tid in gone:
            self._started.pop(tid, None)
            self.activity.withdrawn(tid)
            self._waiters.pop(tid, None)
        for (tid, attempt) in [k for k in self._seq_of if k[0] in gone]:
            del self._seq_of[(tid, attempt)]
        for rec in self.engines.values():
            if rec.state != "dead":
                rec.state = "busy" if self.sched.engine_busy(rec.eid) else "idle"
        self.store.withdraw(tids, key)
        self.stats.submitted -= len(gone)

    def _answer_submits(self) -> None:
        """The submits whose tasks are now stored get their taskids (and watches)."""
        submits, self._new_submits = self._new_submits, []
        for ns in submits:
            self._reply(ns.reply_to, ns.req, tids=ns.tids)
            if ns.watch:
                self._add_waiter(ns.reply_to, ns.req, "watch", ns.tids)

    def _send_to_engines(self) -> None:
        """Send what waits for engines (tasks batched per engine)."""
        if not (self._to_engines or self._tasks_out):
            return
        out, self._to_engines = self._to_engines, []
        for eid, (entries, frames) in self._tasks_out.items():
            rec = self.engines.get(eid)
            if rec is None or rec.state == "dead":
                continue
            for part, part_frames in self._within_limit(entries, frames, "n"):
                rec.mseq += 1
                for entry in part:
                    rec.sent[(entry["tid"], entry["attempt"])] = rec.mseq
                out.append((rec.task_ident, {"type": "tasks", "engineid": eid,
                                             "session": self.session, "mseq": rec.mseq,
                                             "tasks": part}, part_frames))
        self._tasks_out.clear()
        for ident, header, frames in out:
            send_message(self.engine_sock, [ident, *self.wire.encode(header, frames)])
        self.stats.messages_out += len(out)

    def _pending_output(self) -> bool:
        return bool(self._now_out) or (self._held_output() and (
            self._store_down_since is None or time.monotonic() >= self._store_retry_at))

    def _send(self, sock: zmq.Socket, ident: bytes, header: dict[str, Any],
              frames: list[Any] = (), *, now: bool = False) -> None:
        """Queue a message: sent after this turn's commit, or (`now`) whatever the store does."""
        if now:
            self._now_out.append((sock, ident, header, frames))
        elif sock is self.client_sock:
            self._to_clients.append((ident, header, frames))
        else:
            self._to_engines.append((ident, header, frames))

    # -- timers ----------------------------------------------------------------------------
    def _arm(self, key: tuple, delay: float) -> None:
        seq = next(self._timer_seq)
        self._timer_live[key] = seq
        heapq.heappush(self._timers, (time.monotonic() + delay, seq, key))

    def _poll_timeout_ms(self) -> int:
        if self._pending_output():
            return 0
        while self._timers and self._timer_live.get(self._timers[0][2]) != self._timers[0][1]:
            heapq.heappop(self._timers)
        deadline = self._timers[0][0] if self._timers else time.monotonic() + 1.0
        if self.store.dirty():
            deadline = min(deadline, max(self._last_commit + COMMIT_INTERVAL,
                                         self._store_retry_at))
        return max(0, int((deadline - time.monotonic()) * 1000) + 1)

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, seq, key = heapq.heappop(self._timers)
            if self._timer_live.get(key) != seq:
                continue
            del self._timer_live[key]
            if key[0] == "heartbeat-check":
                self._check_heartbeats()
                self.activity.sample_queue(time.time(), *self.sched.counts())
                if self.curve is not None:
                    self.curve.reload()
                self._arm(key, self.heartbeat / 2)
            elif key[0] == "ping":
                self._ping()
                self._arm(key, self.heartbeat)
            elif key[0] == "lost":
                self._lost_engine_gone(key[1])
            else:
                self._apply(self.sched.handle(TimerFired(key)))

    # -- engines ---------------------------------------------------------------------------
    def _on_engine(self, ident: bytes, header: dict[str, Any], frames: list[Any]) -> None:
        kind = header["type"]
        eid = self._by_ident.get(ident)
        rec = self.engines.get(eid) if eid is not None else None
        alive = rec is not None and rec.state != "dead"
        if alive:
            rec.last_seen = time.monotonic()
        try:
            if kind == "hello":  # (no side effect: anyone connected may learn the session)
                self._send(self.engine_sock, ident, {"type": "welcome", "session": self.session},
                           now=True)
            elif kind == "register":
                self._register(ident, header)
            elif not alive or header.get("session") != self.session:
                # An engine this controller does not know (it restarted, or declared it dead),
                # or a message of another controller session.
                if kind == "hb":
                    self._send(self.engine_sock, ident, {"type": "reregister",
                                                         "gen": header.get("gen"),
                                                         "session": self.session}, now=True)
                elif kind == "results":
                    self._late_results(ident, header)
            elif kind == "hb":
                self._on_heartbeat(rec, ident, header)
            elif kind == "results":
                self._on_results(rec, header, frames)
            elif kind == "revoked":
                tid, attempt, ok = header["tid"], header["attempt"], header["ok"]
                if not isinstance(tid, int) or not isinstance(attempt, int):
                    raise BadRequest("revoked needs int tid and attempt")
                if ok:
                    self.stats.revokes_granted += 1
                    self._seq_of.pop((tid, attempt), None)
                    rec.sent.pop((tid, attempt), None)
                self._apply(self.sched.handle(RevokeAnswered(rec.eid, tid, attempt, bool(ok))))
            else:
                self.wire.refused["unknown-type"] += 1
        except (BadRequest, KeyError, TypeError, ValueError) as e:
            self.wire.refused["bad-engine-message"] += 1
            log.warning("bad %s message from engine %s: %r", kind, eid, e)

    def _late_results(self, ident: bytes, header: dict[str, Any]) -> None:
        """Results from an engine declared dead (or of another session): counted and logged,
        not acted on (each task already failed with EngineDied and was retried if it could,
        so it finishes once) and not acknowledged (after a restart the engine sends them
        again, once registered)."""
        entries = header.get("results")
        tids = [e.get("tid") for e in entries if isinstance(e, dict)] \
            if isinstance(entries, list) else []
        self.wire.refused["result-from-dead-engine"] += max(1, len(tids))
        now = time.monotonic()
        if now - self._late_logged.get(ident, -REFUSAL_LOG_EVERY) >= REFUSAL_LOG_EVERY:
            if len(self._late_logged) > LOGGED_ONCE_MAX:
                self._late_logged.clear()
            self._late_logged[ident] = now  # at most once a minute per engine socket
            log.warning("dropped late results of tasks %s from an engine declared dead or of an "
                        "earlier controller (further ones are only counted for a minute)", tids)

    def _register(self, ident: bytes, header: dict[str, Any]) -> None:
        uuid = header["uuid"]
        checks = (("uuid", str), ("ctl_ident", bytes), ("res_ident", bytes),
                  ("heart_ident", bytes), ("hostname", str), ("pid", int))
        for name, kind in checks:
            if not isinstance(header.get(name), kind):
                raise BadRequest(f"register needs {name} as {kind.__name__}")
        if not isinstance(header.get("properties") or {}, dict):
            raise BadRequest("register needs properties as a map")
        if header.get("session") != self.session:  # (stale: for a controller before this one)
            self._send(self.engine_sock, ident, {"type": "welcome", "session": self.session},
                       now=True)
            return
        eid = self._by_uuid.get(uuid)
        if eid is not None and self.engines[eid].state != "dead":
            rec = self.engines[eid]  # a repeated register: answer it again
        else:
            eid = self.store.allocate_engine(uuid)
            props = dict(header.get("properties") or {})
            props.update(engineid=eid, hostname=header["hostname"], pid=header["pid"])
            now = time.monotonic()
            rec = EngineRecord(
                eid=eid, uuid=uuid, task_ident=ident, ctl_ident=header["ctl_ident"],
                res_ident=header["res_ident"], heart_ident=header["heart_ident"],
                hostname=header["hostname"], pid=header["pid"], properties=props,
                registered=time.time(), last_seen=now,
            )
            self.engines[eid] = rec
            self._by_uuid[uuid] = eid
            for i in (rec.task_ident, rec.ctl_ident, rec.res_ident, rec.heart_ident):
                self._by_ident[i] = eid
            log.info("engine %d registered: %s pid %d %s", eid, rec.hostname, rec.pid, props)
            self._adopt(rec, header)
        self._send(self.engine_sock, ident, {
            "type": "registered", "engineid": eid, "heartbeat": self.heartbeat,
            "dead_after": self.dead_after, "properties": rec.properties,
            "max_message": self.wire.max_message, "session": self.session,
            "t": header.get("t"),
        })

    def _adopt(self, rec: EngineRecord, header: dict[str, Any]) -> None:
        """Add a new engine to the scheduler. After a controller restart, the tasks that the
        store says were running on this engine process (by its uuid) and that it still runs or
        has results of are adopted (they run on as they were); the others it never started
        (it dropped what waited), so they are queued again. What it claims that this
        controller does not expect of it is dropped there (acknowledged, or interrupted)."""
        claims: set[tuple[int, int]] = set()
        running = header.get("running")
        if isinstance(running, list) and len(running) == 2:
            claims.add((running[0], running[1]))
        finished = header.get("finished")
        for key in finished if isinstance(finished, list) else ():
            if isinstance(key, list) and len(key) == 2:
                claims.add((key[0], key[1]))
        adopt, given_back = [], []
        lost = self._lost.pop(rec.uuid, None)
        if lost:
            self._timer_live.pop(("lost", rec.uuid), None)
            for tid in lost:
                t = self.sched.task(tid)
                if t is None:
                    continue
                (adopt if (tid, t.attempts) in claims else given_back).append(tid)
        self._apply(self.sched.handle(AddEngine(rec.eid, rec.properties, adopt=adopt)))
        now = time.time()
        for tid in adopt:
            t = self.sched.task(tid)
            rec.sent[(tid, t.attempts)] = 0
            claims.discard((tid, t.attempts))
            self.store.mark_running(tid, rec.eid, t.node, t.attempts, t.tries,
                                    sorted(t.handed_over))
            self._started[tid] = now
            self.activity.dispatched(tid, rec.eid, t.attempts, now)
        for tid in given_back:
            self._apply(self.sched.handle(LostReturned(tid)))
        if adopt or given_back:
            log.info("engine %d (back after a restart) still had task(s) %s; task(s) %s it "
                     "never started are queued again", rec.eid, adopt, given_back)
        for tid, attempt in claims:  # nothing this controller expects of it
            if running is not None and [tid, attempt] == running:
                self._send(self.engine_sock, rec.ctl_ident, {
                    "type": "interrupt", "tid": tid, "attempt": attempt, "reason": "stale",
                    "session": self.session}, now=True)
            else:
                rec.to_ack.append([tid, attempt])
                self._acking.add(rec.eid)
        rec.state = "busy" if self.sched.engine_busy(rec.eid) else "idle"

    def _lost_engine_gone(self, uuid: str | None) -> None:
        """The engine that ran these tasks before the restart did not come back."""
        lost = self._lost.pop(uuid, [])
        if lost:
            log.warning("the engine that ran task(s) %s before the controller restarted did not "
                        "come back within %gs: their attempts are lost", lost, self._lost_grace())
        for tid in lost:
            self._lost_expired.add(tid)
            self._apply(self.sched.handle(LostExpired(tid)))

    def _lost_grace(self) -> float:
        return max(LOST_GRACE, 4 * self.dead_after)

    def _ping(self) -> None:
        """One round of pings to every engine's heart socket; the echo proves it alive."""
        payload = PING + os.urandom(8)
        self._pings.append(payload)
        for rec in self.engines.values():
            if rec.state != "dead":
                self._now_out.append((self.engine_sock, rec.heart_ident, None, [payload]))

    def _on_pong(self, ident: bytes, payload: bytes) -> None:
        if payload in self._pings:
            eid = self._by_ident.get(ident)
            rec = self.engines.get(eid) if eid is not None else None
            if rec is not None and rec.state != "dead":
                rec.last_seen = time.monotonic()

    def _on_heartbeat(self, rec: EngineRecord, ident: bytes, h: dict[str, Any]) -> None:
        """An engine's report of what it holds: reconcile it with what it was sent.

        A task the engine neither holds nor has a result for, although the message that
        carried it has arrived (or is known lost: a later message came first), never started
        there (a `tasks` message lost to a reset connection, a revoke whose answer was lost):
        it is queued again without counting an attempt. An idle engine that has not seen the
        latest message is sent an empty one, whose number shows whether that one was lost.
        Results the engine still keeps are acknowledged once stored, or asked for again when
        they seem lost; an aborted task still running there is interrupted again."""
        held = _pairs(h.get("held"))
        unacked = _pairs(h.get("unacked"))
        seen = h.get("mseq") if _is_int(h.get("mseq")) else 0
        missing = set(x for x in h.get("missing") or () if _is_int(x))
        expected: dict[tuple[int, int], None] = dict.fromkeys(self.sched.held(rec.eid))
        gone, in_flight = [], False
        for key in expected:
            if key in held or key in unacked:
                continue
            m = rec.sent.get(key)
            if m is None:
                continue  # not sent yet (it waits for a commit)
            if m == 0 or m in missing or m <= seen:
                gone.append(key)
            else:
                in_flight = True
        for tid, attempt in gone:
            rec.sent.pop((tid, attempt), None)
            self._seq_of.pop((tid, attempt), None)
            self.stats.tasks_lost_in_transit += 1
            log.warning("engine %d does not hold task %d (attempt %d) it was sent: the message "
                        "was lost; queued again", rec.eid, tid, attempt)
            self._apply(self.sched.handle(RevokeAnswered(rec.eid, tid, attempt, True)))
        now = time.monotonic()
        if in_flight and not held and seen < rec.mseq and now - rec.ticked_at > self.heartbeat:
            rec.mseq += 1
            rec.ticked_at = now
            self._send(self.engine_sock, rec.task_ident, {
                "type": "tasks", "engineid": rec.eid, "session": self.session,
                "mseq": rec.mseq, "tasks": []}, now=True)
        resend = []
        for key in unacked:
            if key not in expected:
                rec.to_ack.append(list(key))  # taken already, or not wanted: drop it there
                self._acking.add(rec.eid)
            elif key in rec.prev_unacked:
                resend.append(list(key))  # in two reports and never arrived: lost
        rec.prev_unacked = {k for k in unacked if k in expected}
        current = h.get("current")
        if isinstance(current, list) and len(current) == 2 and self.sched.has_engine(rec.eid):
            tid, attempt = current
            if (self.sched.holds(rec.eid, tid, attempt)
                    and not self.sched.is_running_on(tid, rec.eid)):
                self._send(self.engine_sock, rec.ctl_ident, {  # aborted, and still running
                    "type": "interrupt", "tid": tid, "attempt": attempt, "reason": ABORTED,
                    "session": self.session}, now=True)
        ack, rec.ackable = rec.ackable, []
        self._send(self.engine_sock, ident, {"type": "hb", "session": self.session,
                                             "t": h.get("t"), "ack": ack, "resend": resend},
                   now=True)
        rec.state = "busy" if self.sched.engine_busy(rec.eid) else "idle"

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        if now - self._turn_start > self.heartbeat / 2:
            return  # this turn has kept the loop busy: the engines' pings wait unread
        for rec in list(self.engines.values()):
            quiet = now - max(rec.last_seen, self._stall_end)
            if rec.state != "dead" and quiet > self.dead_after:
                self._engine_died(rec, f"no heartbeat for {quiet:.1f}s")

    def _engine_died(self, rec: EngineRecord, why: str) -> None:
        log.warning("engine %d (%s pid %d) is dead: %s", rec.eid, rec.hostname, rec.pid, why)
        rec.state = "dead"
        self.stats.engines_died += 1
        self._death_reasons[rec.eid] = why
        for tid in self.sched.engine_load(rec.eid):
            t = self.sched.task(tid)
            if t is not None:
                self._seq_of.pop((tid, t.attempts), None)
        rec.sent.clear()
        rec.to_ack.clear()
        rec.ackable.clear()
        self.activity.engine_lost(rec.eid, time.time())
        self._apply(self.sched.handle(EngineGone(rec.eid)))
        for i in (rec.task_ident, rec.ctl_ident, rec.res_ident, rec.heart_ident):
            self._by_ident.pop(i, None)
        self._forget_dead_engines()

    def _forget_dead_engines(self) -> None:
        """Keep at most DEAD_RECORDS_KEPT dead engines' records (oldest go first)."""
        dead = [eid for eid, r in self.engines.items() if r.state == "dead"]
        for eid in dead[:max(0, len(dead) - DEAD_RECORDS_KEPT)]:
            rec = self.engines.pop(eid)
            self._death_reasons.pop(eid, None)
            if self._by_uuid.get(rec.uuid) == eid:
                del self._by_uuid[rec.uuid]

    def _on_results(self, rec: EngineRecord, header: dict[str, Any], frames: list[Any]) -> None:
        entries = header["results"]
        if not isinstance(entries, list):
            raise BadRequest("results must be a list")
        pos = 0
        try:
            for entry in entries:
                n = entry.get("n", 0) if isinstance(entry, dict) else -1
                if not isinstance(n, int) or n < 0 or pos + n > len(frames):
                    raise BadRequest(
                        "a result describes more payload frames than the message has")
                tid, attempt = entry.get("tid"), entry.get("attempt")
                if not _is_int(tid) or not _is_int(attempt):
                    raise BadRequest("a result needs int tid and attempt")
                rec.to_ack.append([tid, attempt])  # acknowledged once stored
                self._acking.add(rec.eid)
                if self.sched.holds(rec.eid, tid, attempt):
                    rec.sent.pop((tid, attempt), None)
                    self._on_result(rec, entry, frames[pos:pos + n])
                # else: sent again (a resend that crossed the first), or for an attempt
                # that is over: taken once only
                pos += n
        finally:
            self._apply(self.sched.handle(RunPass()))  # one pass for the whole batch

    def _on_result(self, rec: EngineRecord, entry: dict[str, Any], frames: list[Any]) -> None:
        tid, attempt, status = entry["tid"], entry["attempt"], entry["status"]
        props = entry.get("properties")
        if props is not None:
            if not isinstance(props, dict):
                raise BadRequest("properties must be a map")
            props = {**props, "engineid": rec.eid, "hostname": rec.hostname, "pid": rec.pid}
            rec.properties = props
        duration = entry.get("duration")
        if not isinstance(duration, int | float):
            duration = None
        rec.tasks_done += 1
        if status != "ok":
            rec.failures += 1
        self._seq_of.pop((tid, attempt), None)
        self.activity.attempt_ended(tid, rec.eid, attempt, status, time.time())
        self._report = (entry, frames)
        try:
            self._apply(self.sched.handle(TaskDone(rec.eid, tid, attempt, status, props, duration,
                                                   dispatch=False)))
        finally:
            self._report = None
        rec.state = "busy" if self.sched.engine_busy(rec.eid) else "idle"

    # -- actions ---------------------------------------------------------------------------
    def _apply(self, actions: list[Any]) -> None:
        for a in actions:
            try:
                self._apply_one(a)
            except Exception:  # noqa: BLE001 - the other actions must still be carried out
                self.wire.refused["internal-error"] += 1
                log.exception("carrying out %r failed", a)

    def _apply_one(self, a: Any) -> None:
        if isinstance(a, Dispatch):
            self._dispatch(a)
        elif isinstance(a, Finish):
            self._finish(a)
        elif isinstance(a, Interrupt):
            rec = self.engines.get(a.eid)
            if rec is not None and rec.state != "dead" and self.sched.has_engine(a.eid):
                self._send(self.engine_sock, rec.ctl_ident,
                           {"type": "interrupt", "tid": a.tid, "attempt": a.attempt,
                            "reason": a.reason, "session": self.session})
        elif isinstance(a, Revoke):
            rec = self.engines.get(a.eid)
            seq = self._seq_of.get((a.tid, a.attempt))
            if rec is not None and rec.state != "dead" and seq is not None:
                self.stats.revokes_sent += 1
                self._send(self.engine_sock, rec.ctl_ident, {
                    "type": "revoke", "tid": a.tid, "attempt": a.attempt, "dseq": seq,
                    "session": self.session})
            else:  # nothing to ask back: as good as refused
                self._apply(self.sched.handle(RevokeAnswered(a.eid, a.tid, a.attempt, False)))
        elif isinstance(a, ArmTimer):
            self._arm(a.key, a.delay)
        elif isinstance(a, CancelTimer):
            self._timer_live.pop(a.key, None)

    def _dispatch(self, a: Dispatch) -> None:
        task = self.store.task(a.tid)
        rec = self.engines[a.eid]
        node = task.spec["nodes"][a.node]
        start, end = node["span"]
        self.store.mark_running(a.tid, a.eid, a.node, a.attempt, a.tries, list(a.handed_over))
        now = self._started[a.tid] = time.time()
        self.activity.dispatched(a.tid, a.eid, a.attempt, now)
        rec.state = "busy"
        seq = next(self._dispatch_seq)
        self._seq_of[(a.tid, a.attempt)] = seq
        entries, frames = self._tasks_out.setdefault(a.eid, ([], []))
        entries.append({"tid": a.tid, "attempt": a.attempt, "dseq": seq, "exec": node["exec"],
                        "pmac": node["pmac"], "timeout": node.get("timeout"),
                        "n": end - start})
        frames.extend(task.frames[start:end])

    def _finish(self, a: Finish) -> None:
        task = self.store.task(a.tid)
        now = time.time()
        started = self._started.pop(a.tid, None)
        submitted = task.submitted if task else now
        frames: list[Any] = []
        if a.outcome == RESULT:
            assert self._report is not None, "a RESULT finish comes only from an engine report"
            entry, frames = self._report
            # The engine's entry becomes the stored metadata (one dict less per task).
            meta: dict[str, Any] = {
                "tid": a.tid, "engineid": a.engineid, "attempts": a.attempts,
                "submitted": submitted, "completed": now, "started": started,
                "status": "ok" if a.ok else "error", "kind": entry.get("kind", "map"),
                "error": entry.get("error"), "duration": entry.get("duration", 0.0),
                "stdout": entry.get("stdout", ""), "stderr": entry.get("stderr", ""),
                "pmac": entry.get("pmac"),
            }
        else:
            node = task.spec["nodes"][a.node] if task else {}
            status, etype, message = self._controller_failure(a, node, started)
            meta = {
                "tid": a.tid, "engineid": a.engineid, "attempts": a.attempts,
                "submitted": submitted, "completed": now, "started": started,
                "duration": 0.0, "stdout": "", "stderr": "",
                "kind": node["exec"]["kind"] if node else "map", "status": status,
                "error": {"type": etype, "message": message, "controller": True,
                          "traceback": ""},
            }
        self._slow_depends.discard(a.tid)
        self.store.finish(a.tid, StoredResult(meta, list(frames)))
        self.stats.finished += 1
        self.activity.finished(a.tid, meta["status"], now, engineid=a.engineid,
                               duration=meta["duration"] if a.outcome == RESULT else None,
                               error=meta["error"])
        for w in self._waiters.pop(a.tid, ()):
            self._wake(w, a.tid)

    def _controller_failure(self, a: Finish, node: dict[str, Any],
                            started: float | None) -> tuple[str, str, str]:
        if a.outcome == ENGINE_DIED and a.engineid is None and a.tid in self._lost_expired:
            self._lost_expired.discard(a.tid)
            return "error", "EngineDied", (
                f"the controller restarted while task {a.tid} was running, and the engine that "
                f"ran it did not come back within {self._lost_grace():g}s")
        if a.outcome == ENGINE_DIED:
            why = self._death_reasons.get(a.engineid, "")
            timeout = node.get("timeout")
            if timeout and started is not None and time.time() - started > timeout:
                return "error", "TaskTimeout", (
                    f"task {a.tid} ran past its timeout of {timeout:g}s and did not let the "
                    f"interruption through, so engine {a.engineid} was ended ({why})")
            return "error", "EngineDied", (
                f"engine {a.engineid} died while it held task {a.tid} (running it, or with it "
                f"waiting there, perhaps started: {why})")
        if a.outcome == ABORTED:
            return "aborted", "TaskAborted", f"task {a.tid} was aborted"
        if a.outcome == UNMET_TIMEOUT and a.tid in self._slow_depends:
            self._slow_depends.discard(a.tid)
            return "unmet_timeout", "TaskTimeout", (
                f"task {a.tid}: its depend callable took longer than {self.depends.budget:g}s, "
                "so it counts as False for every engine and no engine could take the task; a "
                "depend must answer at once (use a dict depend, or a quick test of the "
                "properties)")
        if a.outcome == UNMET_TIMEOUT:
            return "unmet_timeout", "TaskTimeout", (
                f"task {a.tid}: no engine satisfied its depend for {self.unmet_timeout:g}s while "
                "every engine was idle; start an engine with the properties it needs, or relax "
                "the depend")
        if a.outcome == DEPENDENCY:
            return "dependency", "DependencyError", (
                f"task {a.tid} did not run: task {a.detail}, which it waits for (after=), "
                "failed, was aborted, or is unknown")
        raise AssertionError(f"unknown outcome {a.outcome}")

    # -- clients ---------------------------------------------------------------------------
    def _on_client(self, ident: bytes, header: dict[str, Any], frames: list[Any]) -> None:
        kind = header["type"]
        req = header.get("req")
        reply_to = header.get("rt", ident)
        if not isinstance(reply_to, bytes):
            reply_to = ident
        handler = getattr(self, f"_c_{kind}", None)
        if handler is None:
            self.wire.refused["unknown-type"] += 1
            self._reply(reply_to, req, now=True, error=f"unknown request type {kind!r}")
            return
        if req is not None and not isinstance(req, int | str | bytes):
            # (Results for one request travel together, keyed by it: it must be a plain key.)
            self.wire.refused["bad-request"] += 1
            self._reply(reply_to, req, now=True,
                        error=f"bad {kind} request: req must be an int or a str")
            return
        if kind not in SESSIONLESS and header.get("session") != self.session:
            # Sent to an earlier controller (a client resends it, stamped anew), or a message
            # captured before a restart and replayed: it does nothing.
            self.wire.refused["wrong-session"] += 1
            self._reply(reply_to, req, now=True, error_type="session",
                        error=f"a {kind} request for another controller session (sent before "
                              "the controller restarted, or replayed); it did nothing")
            return
        try:
            handler(reply_to, req, header, frames)
        except StoreError as e:
            self._reply(reply_to, req, now=True, error_type="StoreError", error=str(e))
        except (BadRequest, KeyError, TypeError, ValueError, IndexError) as e:
            self.wire.refused["bad-request"] += 1
            self._reply(reply_to, req, now=True, error=f"bad {kind} request: {e}")
        except Exception as e:  # noqa: BLE001 - a bug here must not leave the client waiting
            self.wire.refused["internal-error"] += 1
            log.exception("error handling a %r request", kind)
            self._reply(reply_to, req, now=True,
                        error=f"the controller failed on a {kind} request: {e!r}")

    def _reply(self, reply_to: bytes, req: Any, frames: list[Any] = (), *, error: str | None = None,
               now: bool = False, **fields: Any) -> None:
        """Answer a request: after this turn's commit, or (`now`: it depends on nothing
        stored, e.g. a refusal) at once."""
        header = {"type": "reply", "req": req, "ok": error is None, "session": self.session,
                  **fields}
        if error is not None:
            header["error"] = error
        self._send(self.client_sock, reply_to, header, frames, now=now)

    def _c_hello(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        self._reply(rt, req, now=True, version=__version__, engines=self._n_alive(),
                    max_message=self.wire.max_message)

    def _c_ping(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        self._reply(rt, req, now=True)

    def _n_alive(self) -> int:
        return sum(1 for r in self.engines.values() if r.state != "dead")

    def _c_submit(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        key = h.get("key")
        if isinstance(key, str):
            known = self.store.submitted(key, resent=bool(h.get("resent")))
            if known is not None:  # a client sent it again after a restart: same taskids
                self._new_submits.append(NewSubmit(rt, req, known, None, bool(h.get("watch"))))
                return
        specs = h["tasks"]
        if not isinstance(specs, list) or not specs:
            raise BadRequest("tasks must be a non-empty list")
        parsed = []
        pos = 0
        for spec in specs:  # check everything before storing anything
            end, nodes = self._check_task(spec, frames, pos)
            task_frames = list(frames[pos:end])
            stored = {"nodes": nodes, "after": _check_int_list(spec.get("after", []), "after")}
            parsed.append((stored, self._nodes(stored, task_frames), task_frames))
            pos = end
        if pos != len(frames):
            raise BadRequest(f"{len(frames)} payload frames, but the tasks describe {pos}")
        now = time.time()
        tids = []
        for stored, nodes, task_frames in parsed:
            tid = self.store.allocate()
            for n in nodes:
                if isinstance(n.depend, BoundedDepend):
                    n.depend.tid = tid
            self.store.add(StoredTask(tid, stored, task_frames, now))
            self.stats.submitted += 1
            self._submit_to_scheduler(tid, stored, nodes, dispatch=False)
            tids.append(tid)
        self._apply(self.sched.handle(RunPass()))  # one pass for the whole batch
        if isinstance(key, str):
            self.store.remember_submit(key, tids)
        # Answered after the commit that stores these tasks (or refused if it fails).
        self._new_submits.append(NewSubmit(rt, req, tids, key if isinstance(key, str) else None,
                                           bool(h.get("watch"))))

    def _submit_to_scheduler(self, tid: int, spec: dict[str, Any], nodes: list[Node],
                             cleared_ok: bool = False, **counters: Any) -> None:
        """`cleared_ok`: an `after` task with no result was cleared after it succeeded (a
        reloaded task's), rather than unknown."""
        active, broken = [], None
        for dep in spec["after"]:
            if self.sched.is_active(dep):
                active.append(dep)
            else:
                r = self.store.result(dep)
                if (r is None and not cleared_ok) or (r is not None and not r.ok):
                    broken = dep
                    break
        self._apply(self.sched.handle(Submit(tid, nodes, after=active, broken_after=broken,
                                             **counters)))

    def _reload(self) -> None:
        """Queue again every task a previous controller left unfinished in the store.

        A task that was running waits (`lost`) for the engine it ran on: that engine comes
        back with it (see _adopt), or its attempt is lost after a grace period. A queued task
        whose `after` tasks have been cleared meanwhile had them finish successfully (a
        failure would have failed it in the same commit): they count as done."""
        n = 0
        for task, c in self.store.unfinished():
            try:
                nodes = self._nodes(task.spec, task.frames)
            except BadRequest as e:  # e.g. a depend callable this controller cannot load
                log.error("task %d cannot be reloaded: %s", task.tid, e)
                nodes = [Node(depend=lambda props: False)]
            for node in nodes:
                if isinstance(node.depend, BoundedDepend):
                    node.depend.tid = task.tid
            if c["state"] == "running":
                self._apply(self.sched.handle(Submit(task.tid, nodes, resume=Resume(
                    c["node"], c["attempts"], c["tries"], c["handed_over"], lost=True),
                    dispatch=False)))
                self._lost.setdefault(c.get("engine_uuid"), []).append(task.tid)
            else:
                self._submit_to_scheduler(
                    task.tid, task.spec, nodes, cleared_ok=True, resume=Resume(
                        c["node"], c["attempts"], c["tries"], c["handed_over"]),
                    dispatch=False)
            n += 1
        for uuid in self._lost:
            self._arm(("lost", uuid), self._lost_grace())
        self._apply(self.sched.handle(RunPass()))
        if n:
            log.info("reloaded %d unfinished task(s) from the store (%d were running: they wait "
                     "up to %gs for their engines)", n, sum(map(len, self._lost.values())),
                     self._lost_grace())

    def _check_task(self, spec: Any, frames: list[Any], pos: int) -> tuple[int, list[dict]]:
        """Check one task of a submit message; return where its frames end and its nodes,
        rebuilt from the checked fields only (with their frame spans). So whatever a client
        sent, a stored node always has the fields dispatch and reload rely on."""
        if not isinstance(spec, dict) or not isinstance(spec.get("nodes"), list) or not spec["nodes"]:
            raise BadRequest("each task needs a non-empty list of nodes")
        start = pos
        n = len(spec["nodes"])
        nodes = []
        for meta in spec["nodes"]:
            if not isinstance(meta, dict) or not isinstance(meta.get("exec"), dict):
                raise BadRequest("each node needs an exec map")
            nf, df = meta.get("nframes", 0), meta.get("dframes", 0)
            retries, recovery = meta.get("retries", 0), meta.get("recovery")
            if not _is_int(nf) or not _is_int(df) or nf < 0 or df < 0:
                raise BadRequest("nframes and dframes must be ints >= 0")
            if not _is_int(retries) or retries < 0:
                raise BadRequest("retries must be an int >= 0")
            if recovery is not None and not (_is_int(recovery) and 0 <= recovery < n):
                raise BadRequest("recovery must index a node of the same task")
            if pos + nf + df > len(frames):
                raise BadRequest("the tasks describe more payload frames than the message has")
            depend = meta.get("depend")
            if depend not in (None, "callable") and not isinstance(depend, dict):
                raise BadRequest("depend must be null, a map, or 'callable'")
            timeout = meta.get("timeout")
            if timeout is not None and not (isinstance(timeout, int | float)
                                            and not isinstance(timeout, bool)
                                            and 0 < timeout <= MAX_TIMEOUT):
                raise BadRequest(f"timeout must be null or a number > 0 and <= {MAX_TIMEOUT:g}")
            pmac, dpmac = meta.get("pmac"), meta.get("dpmac")
            if (nf or pmac is not None) and not isinstance(pmac, bytes):
                raise BadRequest("a node with payload frames needs their pmac (bytes)")
            if depend == "callable" and not isinstance(dpmac, bytes):
                raise BadRequest("a callable depend needs its dpmac (bytes)")
            node = {"exec": _check_exec(meta["exec"], nf), "nframes": nf, "dframes": df,
                    "retries": retries, "recovery": recovery, "timeout": timeout,
                    "pmac": pmac, "depend": depend, "span": [pos - start, pos - start + nf]}
            if depend == "callable":
                node["dpmac"] = dpmac
            pos += nf
            node["dspan"] = [pos - start, pos - start + df]
            pos += df
            nodes.append(node)
        return pos, nodes

    def _nodes(self, spec: dict[str, Any], frames: list[Any]) -> list[Node]:
        """The scheduler's view of a stored task; a callable depend is unpickled here."""
        nodes = []
        for meta in spec["nodes"]:
            depend = meta.get("depend")
            if depend == "callable":
                s, e = meta["dspan"]
                try:
                    self.wire.check_payload(frames[s:e], meta.get("dpmac"))
                    depend = loads(frames[s:e])
                except Refused as err:
                    raise BadRequest(f"depend payload refused: {err}") from None
                except Exception as err:
                    raise BadRequest(
                        f"the controller cannot unpickle this task's depend callable ({err!r}); "
                        "use a dict depend or a function the controller can import") from None
                if not callable(depend):
                    raise BadRequest("depend must unpickle to a callable")
                depend = self.depends.guard(depend, self._slow_depend)
            nodes.append(Node(retries=meta.get("retries", 0), depend=depend,
                              recovery=meta.get("recovery"), timeout=meta.get("timeout")))
        return nodes

    def _slow_depend(self, guard: BoundedDepend) -> None:
        """A depend callable overran its budget: it counts as False from now on."""
        self.wire.refused["slow-depend"] += 1
        if guard.tid is not None:
            self._slow_depends.add(guard.tid)
        log.warning("task %s: its depend callable took longer than %gs and is given up on (it "
                    "counts as False for every engine; the controller went on meanwhile)",
                    guard.tid, self.depends.budget)

    def _result_entry(self, tid: int) -> tuple[dict[str, Any] | None, list[Any]]:
        r = self.store.result(tid)
        if r is not None:
            return {**r.meta, "nframes": len(r.frames)}, r.frames
        if self.sched.is_active(tid):
            return None, []
        return {"tid": tid, "unknown": True, "nframes": 0}, []

    def _reply_results(self, rt: bytes, req: Any, tids: list[int]) -> None:
        entries, out = [], []
        for tid in tids:
            meta, frames = self._result_entry(tid)
            entries.append(meta)
            out.extend(frames)
        parts = self._within_limit(entries, out)
        for i, (part, part_frames) in enumerate(parts):
            if i < len(parts) - 1:  # the client joins the pieces of a reply marked `more`
                self._reply(rt, req, part_frames, results=part, more=True)
            else:
                self._reply(rt, req, part_frames, results=part)

    def _within_limit(self, entries: list[Any], frames: list[Any],
                      count: str = "nframes") -> list[tuple[list, list]]:
        """Result entries (and their frames) in pieces, each small enough for one message:
        a client's socket refuses a message above the size limit, and each result alone is
        below it (an engine fails a task whose result is not). The same for the tasks of one
        engine (`count="n"`), each below the limit (a client never sends a larger one)."""
        budget = self.wire.max_message - RESULTS_HEADER_ROOM
        bound = sum(frame_len(f) for f in frames) + sum(_meta_bound(m) for m in entries)
        if bound <= budget:  # (nearly always)
            return [(entries, frames)]
        parts: list[tuple[list, list]] = []
        part: list[Any] = []
        part_frames: list[Any] = []
        size = pos = 0
        for meta in entries:
            n = meta[count] if meta else 0
            own = frames[pos:pos + n]
            pos += n
            need = len(msgpack.packb(meta, use_bin_type=True)) + sum(map(frame_len, own))
            if part and size + need > budget:
                parts.append((part, part_frames))
                part, part_frames, size = [], [], 0
            part.append(meta)
            part_frames.extend(own)
            size += need
        parts.append((part, part_frames))
        return parts

    def _add_waiter(self, rt: bytes, req: Any, mode: str, tids: list[int]) -> None:
        pending = {t for t in tids if self.sched.is_active(t)}
        w = Waiter(rt, req, mode, tids, pending)
        if mode == "watch":
            for tid in tids:
                if tid not in pending:
                    self._send_watch(w, tid)
        if not pending:
            if mode == "result":
                self._reply_results(rt, req, tids)
            elif mode == "wait":
                self._reply(rt, req)
            return
        for t in pending:
            self._waiters.setdefault(t, []).append(w)

    def _wake(self, w: Waiter, tid: int) -> None:
        w.remaining.discard(tid)
        if w.mode == "watch":
            self._send_watch(w, tid)
        elif not w.remaining:
            if w.mode == "result":
                self._reply_results(w.reply_to, w.req, w.tids)
            else:
                self._reply(w.reply_to, w.req)

    def _send_watch(self, w: Waiter, tid: int) -> None:
        meta, frames = self._result_entry(tid)
        if meta is None:  # (cannot happen: a watch is woken when its task finishes)
            meta = {"tid": tid, "active": True, "nframes": 0}
        entries, out = self._done_out.setdefault((w.reply_to, w.req), ([], []))
        entries.append(meta)
        out.extend(frames)

    def _c_result(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        tids = _check_int_list(h["tids"], "tids")
        if h.get("block"):
            self._add_waiter(rt, req, "result", tids)
        else:
            self._reply_results(rt, req, tids)

    def _c_watch(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        self._add_waiter(rt, req, "watch", _check_int_list(h["tids"], "tids"))

    def _c_wait(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        self._add_waiter(rt, req, "wait", _check_int_list(h["tids"], "tids"))

    def _c_abort(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        tid = h["tid"]
        if not isinstance(tid, int):
            raise BadRequest("tid must be an int")
        found, actions = split_answer(self.sched.handle(Abort(tid)))
        if found:
            self._apply(actions)
            self._reply(rt, req, status="aborted")
        elif self.store.result(tid) is not None:
            self._reply(rt, req, status="finished")
        else:
            self._reply(rt, req, status="unknown")

    def _c_spin(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        dispatched, actions = split_answer(self.sched.handle(Spin()))
        self._apply(actions)
        self._reply(rt, req, now=True, dispatched=dispatched)

    def _c_status(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        # (Read-only views are answered at once, even while the store cannot write.)
        self._reply(rt, req, now=True, status=self.queue_status(bool(h.get("verbose"))))

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        if verbose:
            ok, failed = self.store.finished_ids()
            return {"scheduled": self.sched.scheduled_ids(), "pending": self.sched.pending_ids(),
                    "succeeded": ok, "failed": failed}
        scheduled, pending = self.sched.counts()
        ok, failed = self.store.counts()
        return {"scheduled": scheduled, "pending": pending, "succeeded": ok, "failed": failed}

    def _c_clear(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        tids = h.get("tids")
        if tids is not None:
            tids = _check_int_list(tids, "tids")
        dropped, missing = self.store.clear(tids)
        self._reply(rt, req, dropped=dropped, missing=missing)

    def _c_engine_exited(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        """A local nanny saw an engine process exit: no need to wait for its heartbeat."""
        pid, status = h["pid"], h["status"]
        if not isinstance(pid, int) or not isinstance(status, int):
            raise BadRequest("pid and status must be ints")
        how = f"process exited with status {status}"
        if status < 0:
            try:
                how += f" ({signal.Signals(-status).name})"
            except ValueError:
                pass
        for rec in list(self.engines.values()):
            if rec.pid == pid and rec.state != "dead" and rec.hostname == socket.gethostname():
                self._engine_died(rec, how)
        self._reply(rt, req)

    def _c_stats(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        self._reply(rt, req, now=True, stats=self.statistics())

    def statistics(self) -> dict[str, Any]:
        """What the controller is doing: counters, queue, engines (with the task each one runs
        and its last heartbeat), tasks/s over the last minute, the task-duration histogram,
        refused messages by reason. `taskmill status`, /metrics and the dashboard read this."""
        now, mono = time.time(), time.monotonic()
        engines = self.engine_table()
        for row in engines:
            held = self.activity.held_by(row["engineid"])
            row.update(current_task=held[0] if held else None, held=held,
                       last_heartbeat_ago=mono - self.engines[row["engineid"]].last_seen)
        return {
            "time": now, "uptime": now - self.stats.started,
            "messages_in": self.stats.messages_in, "messages_out": self.stats.messages_out,
            "submitted": self.stats.submitted, "finished": self.stats.finished,
            "engines_died": self.stats.engines_died, "refused": dict(self.wire.refused),
            "revokes_sent": self.stats.revokes_sent,
            "revokes_granted": self.stats.revokes_granted,
            "queue": self.queue_status(), "engines": engines,
            "tasks_per_second": self.activity.tasks_per_second(now),
            "durations": self.activity.durations.as_dict(),
        }

    def _c_activity(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        since = h.get("since", 0)
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise BadRequest("since must be an int >= 0")
        self._reply(rt, req, now=True, activity=self.activity.snapshot(time.time(), since))

    def _c_task(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        tid = h["tid"]
        if not isinstance(tid, int) or isinstance(tid, bool):
            raise BadRequest("tid must be an int")
        self._reply(rt, req, now=True, task=self.task_info(tid))

    def task_info(self, tid: int) -> dict[str, Any]:
        """One task's state and metadata (times, engine, output, error), never its payload."""
        r = self.store.result(tid)
        if r is not None:
            meta = {k: v for k, v in r.meta.items() if k != "pmac"}
            return {**meta, "tid": tid, "state": "succeeded" if r.ok else "failed"}
        t = self.sched.task(tid)
        if t is None:
            return {"tid": tid, "state": "unknown"}
        task = self.store.task(tid)
        running = t.state == RUNNING
        return {"tid": tid, "state": "pending" if running else "scheduled",
                "engineid": t.engine, "attempts": t.attempts,
                "submitted": task.submitted if task else None,
                "started": self._started.get(tid) if running else None,
                "kind": task.spec["nodes"][t.node]["exec"]["kind"] if task else None}

    def _c_engines(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        self._reply(rt, req, now=True, engines=self.engine_table())

    def engine_table(self) -> list[dict[str, Any]]:
        return [
            {"engineid": r.eid, "hostname": r.hostname, "pid": r.pid,
             "properties": r.properties, "state": r.state, "tasks_done": r.tasks_done,
             "failures": r.failures,
             "capacity": self.sched.capacity(r.eid) if self.sched.has_engine(r.eid) else 0}
            for r in self.engines.values()
        ]


def run_controller(
    info: ConnectionInfo,
    *,
    store: TaskStore | None = None,
    unmet_timeout: float = DEFAULT_UNMET_TIMEOUT,
    heartbeat: float = DEFAULT_HEARTBEAT,
    connection_file: str | os.PathLike[str] | None = None,
    prefetch: int | None = None,
    max_message: int = DEFAULT_MAX_MESSAGE,
) -> None:
    """Serve until SIGTERM/SIGINT."""
    ctl = Controller(info, store=store, unmet_timeout=unmet_timeout, heartbeat=heartbeat,
                     connection_file=connection_file, prefetch=prefetch, max_message=max_message)

    def _stop(signum: int, frame: Any) -> None:
        ctl.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # The controller makes few reference cycles but many short-lived containers per task: a
    # collection every 700 of them (the default) cost ~20% of its CPU in a flood. What exists
    # now (modules, the loaded store) is frozen out of cycle detection (reference counting
    # still frees it); the rest is checked every 20,000 allocations, so cyclic garbage stays
    # bounded (benchmarks/memory_flat.py: RSS flat from 100k to 1M results).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    ctl.serve_forever()
