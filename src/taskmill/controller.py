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
commit the store once (group commit), then send the replies that commit allowed. The controller
never unpickles user data, except a callable `depend`, which it must call.

One loop turn sends in this order: messages to engines (a task need not wait for the disk),
then the store commits, then messages to clients (a taskid or a result a client hears of is on
disk). Messages to one engine in one turn travel as one `tasks` message, and results for one
client request in one turn as one `done` message.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from . import __version__
from .checks import seconds
from .connection import ConnectionInfo
from .curve import CurveServer
from .curve import enabled as curve_enabled
from .scheduler import (
    ABORTED,
    DEPENDENCY,
    ENGINE_DIED,
    RESULT,
    RUNNING,
    UNMET_TIMEOUT,
    ArmTimer,
    CancelTimer,
    Dispatch,
    Finish,
    Interrupt,
    Node,
    Revoke,
    Scheduler,
)
from .stats import RecentActivity
from .store import MemoryStore, StoredResult, StoredTask, TaskStore
from .task import MAX_TIMEOUT
from .wire import DEFAULT_MAX_MESSAGE, MAX_FRAMES, Refused, Wire, loads, recv_message, send_message

log = logging.getLogger("taskmill.controller")

DRAIN_BATCH = 1000
REFUSAL_LOG_EVERY = 60.0  # seconds between log lines about one peer's refused messages
COMMIT_INTERVAL = 0.05  # seconds a write with no reply waiting on it may stay uncommitted


class BadRequest(Exception):
    """A well-signed message whose contents make no sense: answered with an error, never acted on."""


@dataclass(slots=True)
class EngineRecord:
    eid: int
    uuid: str
    task_ident: bytes
    ctl_ident: bytes
    hostname: str
    pid: int
    properties: dict[str, Any]
    registered: float
    last_seen: float
    state: str = "idle"
    tasks_done: int = 0
    failures: int = 0


@dataclass(slots=True)
class Waiter:
    reply_to: bytes
    req: int
    mode: str  # "result": one reply with every result; "wait": one empty reply; "watch": one per task
    tids: list[int]
    remaining: set[int]


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        unmet_timeout: float = 30.0,
        heartbeat: float = 1.0,
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
        self.dead_after = max(3 * heartbeat, 0.5)
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
        # to clients, in order; results per (client socket, request).
        self._to_engines: list[list[Any]] = []
        self._tasks_out: dict[int, tuple[list[dict[str, Any]], list[Any]]] = {}
        self._to_clients: list[list[Any]] = []
        self._done_out: dict[tuple[bytes, Any], tuple[list[Any], list[Any]]] = {}
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
        self._reload()

    def _router(self, url: str) -> zmq.Socket:
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.ROUTER_HANDOVER, 1)
        s.setsockopt(zmq.MAXMSGSIZE, self.wire.max_message)
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
                if self.engine_sock in events:
                    self._drain(self.engine_sock, self._on_engine)
                if self.client_sock in events:
                    self._drain(self.client_sock, self._on_client)
                self._fire_timers()
                self._flush()
        finally:
            self.close()

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        try:
            self._flush()
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.exception("flushing on close failed")
        self.store.close()
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
        if len(self._refusal_logged) > 10_000:
            self._refusal_logged.clear()
        self._refusal_logged[ident] = now
        log.warning("refused a message from peer %r: %s (refused so far: %s)", ident, e,
                    dict(self.wire.refused))

    def _flush(self) -> None:
        """Send what this turn produced: engines first, then commit, then clients.

        A reply to a client may tell it a taskid or a result, so it waits for the commit;
        messages to engines do not, and writes with no reply waiting on them are committed at
        most COMMIT_INTERVAL later (group commit)."""
        self._send_to_engines()
        now = time.monotonic()
        to_client = bool(self._to_clients or self._done_out)
        if to_client or (self.store.dirty() and now - self._last_commit >= COMMIT_INTERVAL):
            self.store.commit()
            self._last_commit = now
        if to_client:
            out, self._to_clients = self._to_clients, []
            for (reply_to, req), (entries, frames) in self._done_out.items():
                out.append([reply_to, *self.wire.encode(
                    {"type": "done", "req": req, "results": entries}, frames)])
            self._done_out.clear()
            for frames in out:
                send_message(self.client_sock, frames)
            self.stats.messages_out += len(out)

    def _send_to_engines(self) -> None:
        """Send what waits for engines (tasks batched per engine)."""
        if not (self._to_engines or self._tasks_out):
            return
        out, self._to_engines = self._to_engines, []
        for eid, (entries, frames) in self._tasks_out.items():
            rec = self.engines.get(eid)
            if rec is not None and rec.state != "dead":
                out.append([rec.task_ident, *self.wire.encode(
                    {"type": "tasks", "engineid": eid, "tasks": entries}, frames)])
        self._tasks_out.clear()
        for frames in out:
            send_message(self.engine_sock, frames)
        self.stats.messages_out += len(out)

    def _pending_output(self) -> bool:
        return bool(self._to_engines or self._tasks_out or self._to_clients or self._done_out)

    def _send(self, sock: zmq.Socket, ident: bytes, header: dict[str, Any],
              frames: list[Any] = ()) -> None:
        out = self._to_clients if sock is self.client_sock else self._to_engines
        out.append([ident, *self.wire.encode(header, frames)])

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
            deadline = min(deadline, self._last_commit + COMMIT_INTERVAL)
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
            else:
                self._apply(self.sched.timer_fired(key))

    # -- engines ---------------------------------------------------------------------------
    def _on_engine(self, ident: bytes, header: dict[str, Any], frames: list[Any]) -> None:
        kind = header["type"]
        eid = self._by_ident.get(ident)
        rec = self.engines.get(eid) if eid is not None else None
        if rec is not None and rec.state != "dead":
            rec.last_seen = time.monotonic()
        try:
            if kind == "register":
                self._register(ident, header)
            elif rec is None or rec.state == "dead":
                # An engine this controller does not know (it restarted, or declared it dead).
                if kind == "hb":
                    self._send(self.engine_sock, ident,
                               {"type": "reregister", "gen": header.get("gen")})
                elif kind == "results":
                    # Counted and logged, not acted on: its task already failed with
                    # EngineDied (and was retried, if it had retries), so it finishes once.
                    entries = header.get("results")
                    tids = [e.get("tid") for e in entries if isinstance(e, dict)] \
                        if isinstance(entries, list) else []
                    self.wire.refused["result-from-dead-engine"] += max(1, len(tids))
                    now = time.monotonic()
                    if now - self._late_logged.get(ident, -REFUSAL_LOG_EVERY) >= \
                            REFUSAL_LOG_EVERY:  # at most once a minute per engine socket
                        self._late_logged[ident] = now
                        log.warning("dropped late results of tasks %s from an engine declared "
                                    "dead (each was failed with EngineDied and retried if it "
                                    "had retries; further ones are only counted for a minute)",
                                    tids)
            elif kind == "hb":
                self._send(self.engine_sock, ident, {"type": "hb"})
            elif kind == "results":
                self._on_results(rec, header, frames)
            elif kind == "revoked":
                tid, attempt, ok = header["tid"], header["attempt"], header["ok"]
                if not isinstance(tid, int) or not isinstance(attempt, int):
                    raise BadRequest("revoked needs int tid and attempt")
                if ok:
                    self.stats.revokes_granted += 1
                    self._seq_of.pop((tid, attempt), None)
                self._apply(self.sched.revoke_answered(rec.eid, tid, attempt, bool(ok)))
            else:
                self.wire.refused["unknown-type"] += 1
        except (BadRequest, KeyError, TypeError, ValueError) as e:
            self.wire.refused["bad-engine-message"] += 1
            log.warning("bad %s message from engine %s: %r", kind, eid, e)

    def _register(self, ident: bytes, header: dict[str, Any]) -> None:
        uuid = header["uuid"]
        checks = (("uuid", str), ("ctl_ident", bytes), ("hostname", str), ("pid", int))
        for name, kind in checks:
            if not isinstance(header.get(name), kind):
                raise BadRequest(f"register needs {name} as {kind.__name__}")
        if not isinstance(header.get("properties") or {}, dict):
            raise BadRequest("register needs properties as a map")
        eid = self._by_uuid.get(uuid)
        if eid is not None and self.engines[eid].state != "dead":
            rec = self.engines[eid]  # a repeated register: answer it again
        else:
            eid = self.store.allocate_engine()
            props = dict(header.get("properties") or {})
            props.update(engineid=eid, hostname=header["hostname"], pid=header["pid"])
            now = time.monotonic()
            rec = EngineRecord(
                eid=eid, uuid=uuid, task_ident=ident, ctl_ident=header["ctl_ident"],
                hostname=header["hostname"], pid=header["pid"], properties=props,
                registered=time.time(), last_seen=now,
            )
            self.engines[eid] = rec
            self._by_uuid[uuid] = eid
            self._by_ident[rec.task_ident] = eid
            self._by_ident[rec.ctl_ident] = eid
            log.info("engine %d registered: %s pid %d %s", eid, rec.hostname, rec.pid, props)
            self._apply(self.sched.add_engine(eid, props))
        self._send(self.engine_sock, ident, {
            "type": "registered", "engineid": eid, "heartbeat": self.heartbeat,
            "properties": rec.properties, "max_message": self.wire.max_message,
        })

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for rec in list(self.engines.values()):
            if rec.state != "dead" and now - rec.last_seen > self.dead_after:
                self._engine_died(rec, f"no heartbeat for {now - rec.last_seen:.1f}s")

    def _engine_died(self, rec: EngineRecord, why: str) -> None:
        log.warning("engine %d (%s pid %d) is dead: %s", rec.eid, rec.hostname, rec.pid, why)
        rec.state = "dead"
        self.stats.engines_died += 1
        self._death_reasons[rec.eid] = why
        for tid in self.sched.engine_load(rec.eid):
            t = self.sched.tasks.get(tid)
            if t is not None:
                self._seq_of.pop((tid, t.attempts), None)
        self.activity.engine_lost(rec.eid, time.time())
        self._apply(self.sched.remove_engine(rec.eid))
        self._by_ident.pop(rec.task_ident, None)
        self._by_ident.pop(rec.ctl_ident, None)

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
                self._on_result(rec, entry, frames[pos:pos + n])
                pos += n
        finally:
            self._apply(self.sched.run_pass())  # one pass for the whole batch

    def _on_result(self, rec: EngineRecord, entry: dict[str, Any], frames: list[Any]) -> None:
        tid, attempt, status = entry["tid"], entry["attempt"], entry["status"]
        if not isinstance(tid, int) or not isinstance(attempt, int):
            raise BadRequest("a result needs int tid and attempt")
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
            self._apply(self.sched.task_done(rec.eid, tid, attempt, status, props, duration,
                                             dispatch=False))
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
            if rec is not None and rec.state != "dead":
                self._send(self.engine_sock, rec.ctl_ident,
                           {"type": "interrupt", "tid": a.tid, "reason": a.reason})
        elif isinstance(a, Revoke):
            rec = self.engines.get(a.eid)
            seq = self._seq_of.get((a.tid, a.attempt))
            if rec is not None and rec.state != "dead" and seq is not None:
                self.stats.revokes_sent += 1
                self._send(self.engine_sock, rec.ctl_ident, {
                    "type": "revoke", "tid": a.tid, "attempt": a.attempt, "dseq": seq})
            else:  # nothing to ask back: as good as refused
                self._apply(self.sched.revoke_answered(a.eid, a.tid, a.attempt, False))
        elif isinstance(a, ArmTimer):
            self._arm(a.key, a.delay)
        elif isinstance(a, CancelTimer):
            self._timer_live.pop(a.key, None)

    def _dispatch(self, a: Dispatch) -> None:
        task = self.store.task(a.tid)
        rec = self.engines[a.eid]
        node = task.spec["nodes"][a.node]
        start, end = node["span"]
        t = self.sched.tasks[a.tid]
        self.store.mark_running(a.tid, a.eid, a.node, a.attempt, t.tries, sorted(t.handed_over))
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
        self.store.finish(a.tid, StoredResult(meta, list(frames)))
        self.stats.finished += 1
        self.activity.finished(a.tid, meta["status"], now, engineid=a.engineid,
                               duration=meta["duration"] if a.outcome == RESULT else None,
                               error=meta["error"])
        for w in self._waiters.pop(a.tid, ()):
            self._wake(w, a.tid)

    def _controller_failure(self, a: Finish, node: dict[str, Any],
                            started: float | None) -> tuple[str, str, str]:
        if a.outcome == ENGINE_DIED:
            why = self._death_reasons.get(a.engineid, "")
            timeout = node.get("timeout")
            if timeout and started is not None and time.time() - started > timeout:
                return "error", "TaskTimeout", (
                    f"task {a.tid} ran past its timeout of {timeout:g}s and did not let the "
                    f"interruption through, so engine {a.engineid} was ended ({why})")
            return "error", "EngineDied", (
                f"engine {a.engineid} died while running task {a.tid} ({why})")
        if a.outcome == ABORTED:
            return "aborted", "TaskAborted", f"task {a.tid} was aborted"
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
            self._reply(reply_to, req, error=f"unknown request type {kind!r}")
            return
        if req is not None and not isinstance(req, int | str | bytes):
            # (Results for one request travel together, keyed by it: it must be a plain key.)
            self.wire.refused["bad-request"] += 1
            self._reply(reply_to, req, error=f"bad {kind} request: req must be an int or a str")
            return
        try:
            handler(reply_to, req, header, frames)
        except (BadRequest, KeyError, TypeError, ValueError, IndexError) as e:
            self.wire.refused["bad-request"] += 1
            self._reply(reply_to, req, error=f"bad {kind} request: {e}")
        except Exception as e:  # noqa: BLE001 - a bug here must not leave the client waiting
            self.wire.refused["internal-error"] += 1
            log.exception("error handling a %r request", kind)
            self._reply(reply_to, req, error=f"the controller failed on a {kind} request: {e!r}")

    def _reply(self, reply_to: bytes, req: Any, frames: list[Any] = (), *, error: str | None = None,
               **fields: Any) -> None:
        header = {"type": "reply", "req": req, "ok": error is None, **fields}
        if error is not None:
            header["error"] = error
        self._send(self.client_sock, reply_to, header, frames)

    def _c_hello(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        self._reply(rt, req, version=__version__, engines=self._n_alive())

    def _c_ping(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        self._reply(rt, req)

    def _n_alive(self) -> int:
        return sum(1 for r in self.engines.values() if r.state != "dead")

    def _c_submit(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        key = h.get("key")
        if isinstance(key, str):
            known = self.store.submitted(key, resent=bool(h.get("resent")))
            if known is not None:  # a client sent it again after a restart: same taskids
                self._reply(rt, req, tids=known)
                if h.get("watch"):
                    self._add_waiter(rt, req, "watch", known)
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
            self.store.add(StoredTask(tid, stored, task_frames, now))
            self.stats.submitted += 1
            self._submit_to_scheduler(tid, stored, nodes, dispatch=False)
            tids.append(tid)
        self._apply(self.sched.run_pass())  # one pass for the whole batch
        # Tasks dispatched just now go before this request's own bookkeeping and reply.
        self._send_to_engines()
        if isinstance(key, str):
            self.store.remember_submit(key, tids)
        self._reply(rt, req, tids=tids)
        if h.get("watch"):
            self._add_waiter(rt, req, "watch", tids)

    def _submit_to_scheduler(self, tid: int, spec: dict[str, Any], nodes: list[Node],
                             **counters: Any) -> None:
        active, broken = [], None
        for dep in spec["after"]:
            if self.sched.is_active(dep):
                active.append(dep)
            else:
                r = self.store.result(dep)
                if r is None or not r.ok:
                    broken = dep
                    break
        self._apply(self.sched.submit(tid, nodes, after=active, broken_after=broken, **counters))

    def _reload(self) -> None:
        """Queue again every task a previous controller left unfinished in the store."""
        n = 0
        for task, c in self.store.unfinished():
            try:
                nodes = self._nodes(task.spec, task.frames)
            except BadRequest as e:  # e.g. a depend callable this controller cannot load
                log.error("task %d cannot be reloaded: %s", task.tid, e)
                nodes = [Node(depend=lambda props: False)]
            # A task that was running is run again: its lost attempt counts in `attempts`
            # but does not use up a retry.
            self._submit_to_scheduler(
                task.tid, task.spec, nodes, node=c["node"], attempts=c["attempts"],
                tries=max(0, c["tries"] - 1), handed_over=c["handed_over"])
            n += 1
        if n:
            log.info("reloaded %d unfinished task(s) from the store", n)

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
            nodes.append(Node(retries=meta.get("retries", 0), depend=depend,
                              recovery=meta.get("recovery"), timeout=meta.get("timeout")))
        return nodes

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
        self._reply(rt, req, out, results=entries)

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
        found, actions = self.sched.abort(tid)
        if found:
            self._apply(actions)
            self._reply(rt, req, status="aborted")
        elif self.store.result(tid) is not None:
            self._reply(rt, req, status="finished")
        else:
            self._reply(rt, req, status="unknown")

    def _c_spin(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        dispatched, actions = self.sched.spin()
        self._apply(actions)
        self._reply(rt, req, dispatched=dispatched)

    def _c_status(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        self._reply(rt, req, status=self.queue_status(bool(h.get("verbose"))))

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
        self._reply(rt, req, stats=self.statistics())

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
        self._reply(rt, req, activity=self.activity.snapshot(time.time(), since))

    def _c_task(self, rt: bytes, req: Any, h: dict[str, Any], frames: list[Any]) -> None:
        tid = h["tid"]
        if not isinstance(tid, int) or isinstance(tid, bool):
            raise BadRequest("tid must be an int")
        self._reply(rt, req, task=self.task_info(tid))

    def task_info(self, tid: int) -> dict[str, Any]:
        """One task's state and metadata (times, engine, output, error), never its payload."""
        r = self.store.result(tid)
        if r is not None:
            meta = {k: v for k, v in r.meta.items() if k != "pmac"}
            return {**meta, "tid": tid, "state": "succeeded" if r.ok else "failed"}
        t = self.sched.tasks.get(tid)
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
        self._reply(rt, req, engines=self.engine_table())

    def engine_table(self) -> list[dict[str, Any]]:
        return [
            {"engineid": r.eid, "hostname": r.hostname, "pid": r.pid,
             "properties": r.properties, "state": r.state, "tasks_done": r.tasks_done,
             "failures": r.failures,
             "capacity": self.sched.capacity(r.eid) if r.eid in self.sched.engines else 0}
            for r in self.engines.values()
        ]


def run_controller(
    info: ConnectionInfo,
    *,
    store: TaskStore | None = None,
    unmet_timeout: float = 30.0,
    heartbeat: float = 1.0,
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
