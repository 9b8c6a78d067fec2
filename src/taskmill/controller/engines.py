"""Engines: the registry, registration, restarts, heartbeats and deaths.

An engine has four sockets (tasks, control, results, heart); `EngineRecord` keeps their
routing ids, its properties and the bookkeeping of what was sent to it and acknowledged.
What an engine holds and whether it is busy is the scheduler's (asked through sched_calls);
a record only says whether the engine is dead. The tasks an engine is sent and reports are
engine_tasks.py's.

Data flow, in the order of an engine's life:
- `register` (after a `hello` for the session): a record and an engine id (from the store),
  then `adopt`: after a controller restart, the tasks it still runs are adopted, the others
  queued again (`lost_returned`); the tasks of an engine that never comes back within
  `lost_grace()` fail (`lost_engine_gone`).
- pings to its heart socket (`ping`, echoed: `on_pong`) and its heartbeats keep `last_seen`;
  `check_heartbeats` declares the silent ones dead (`died`, or `process_exited` when a local
  nanny saw it exit), which fails what they held; `forget_dead` keeps DEAD_RECORDS_KEPT.
- results it sent are acknowledged once stored (`acks_stored`): by the answer to its next
  `hb`, or, once the stored results waiting for that answer reach ACK_AT_ONCE_BYTES (one large
  result, or many small ones), by a `stored` message right after the commit (after that turn's
  messages to clients), so that an engine does not keep a heartbeat's worth of large results
  in memory; a lone small result gets no message of its own. Either way the engine drops only
  what a commit stored, and a lost ack costs what it did before: the engine names the result
  in its next `hb`, and the controller, no longer expecting it, acknowledges it again. The
  engine still reports only with its heartbeat: a result it names in two reports in a row
  while the controller still expects it (`prev_unacked`) is asked for again, and an early
  ack never names such a result, so it never makes one look lost;
  results from an engine declared dead are counted and dropped (`late_results`).
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..defaults import LOGGED_ONCE_MAX
from ..protocol import (
    InterruptTask,
    Register,
    Registered,
    Reregister,
    Stored,
    Welcome,
    to_engine,
)
from .context import Context, Now, new_now
from .outbox import ENGINE, Outgoing

log = logging.getLogger("taskmill.controller")

PING = b"TMHB"  # pings to engines' heart sockets start so (a Wire envelope starts b"TM2")
PING_NONCE_BYTES = 8  # random bytes after PING: an echo proves the engine heard this round
PING_ROUNDS_KEPT = 3  # an echo of one of the latest rounds counts
DEAD_RECORDS_KEPT = 1000  # dead engines still listed (engines(), statistics) at most
# How long after a restart the controller waits for the engine a task was running on
# (at least; also LOST_GRACE_DEAD_AFTERS x dead_after) before its attempt counts as lost.
LOST_GRACE = 5.0
LOST_GRACE_DEAD_AFTERS = 4
# A task an engine still runs after a controller restart keeps the start it names (how long it
# has run, by the engine's monotonic clock) if it is below this (else: the adoption's time).
MAX_ADOPTED_AGE = 30 * 24 * 3600.0
REFUSAL_LOG_EVERY = 60.0  # seconds between log lines about one peer's refused messages
# A loop turn longer than this share of a heartbeat kept the loop from reading: the engines'
# pings wait unread, so no engine is held to answers it could not have been heard giving.
STALL_SHARE = 0.5
# Stored results whose bytes reach this are acknowledged at once, not with the next heartbeat
# answer (the module's docstring).
ACK_AT_ONCE_BYTES = 256 * 1024


def exit_text(status: int) -> str:
    """How an engine process ended, from its exit status (negative: the signal's number)."""
    how = f"process exited with status {status}"
    if status < 0:
        try:
            how += f" ({signal.Signals(-status).name})"
        except ValueError:
            pass
        if -status == signal.SIGKILL:
            how += ": often the kernel's out-of-memory killer, or a memory limit"
    return how


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
    dead: bool = False
    tasks_done: int = 0
    failures: int = 0
    mseq: int = 0  # the number of the last `tasks` message sent to it
    # (tid, attempt) -> the number of the `tasks` message that carried it (0: adopted)
    sent: dict[tuple[int, int], int] = field(default_factory=dict)
    to_ack: list[list[int]] = field(default_factory=list)  # results taken, not yet committed
    ackable: list[list[int]] = field(default_factory=list)  # committed: acknowledge them
    to_ack_bytes: int = 0  # the result bytes in to_ack ...
    ackable_bytes: int = 0  # ... and in ackable (past ACK_AT_ONCE_BYTES: acknowledged at once)
    prev_unacked: set[tuple[int, int]] = field(default_factory=set)  # in its last heartbeat
    ticked_at: float = 0.0  # when the last empty `tasks` message went (see heartbeat)
    hb_t: float | None = None  # the engine's time in its latest heartbeat (`tasks` carry it)
    answered_at: float = 0.0  # when its heartbeat was last answered (monotonic)
    # The `put` values it keeps, as it was told (engine_tasks.with_arguments): pmac -> bytes,
    # oldest first. Forgotten whole when a message to it may have been lost.
    kept: dict[bytes, int] = field(default_factory=dict)
    active_at: float = 0.0  # wall clock: when it registered or last reported results
    # Retiring (whether it is, is the scheduler's): it holds nothing now, so each heartbeat
    # answer tells it to stop; and it stopped (dead, on purpose).
    drained: bool = False
    retired: bool = False
    # When its last report (`hb`, `results`: from its Python I/O thread) came (monotonic), and
    # whether it said it was stopping (`leaving`: SIGTERM), so a local nanny does not start it
    # again (engines() rows: `left`).
    reported_at: float = 0.0
    left: bool = False

    @property
    def state(self) -> str:
        """'dead' or 'alive' (busy or idle is the scheduler's: see views.engine_table)."""
        return "dead" if self.dead else "alive"

    def idents(self) -> tuple[bytes, bytes, bytes, bytes]:
        return self.task_ident, self.ctl_ident, self.res_ident, self.heart_ident


class Engines:
    """The engine registry and the engine side of the protocol."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.records: dict[int, EngineRecord] = {}
        self.by_ident: dict[bytes, int] = {}
        self.by_uuid: dict[str, int] = {}
        self.death_reasons: dict[int, tuple[str, str]] = {}  # eid -> (which process, why)
        self.heard_last: dict[int, float] = {}  # eid -> when a dead one was last heard (mono)
        self.lost: dict[str | None, list[int]] = {}  # engine uuid -> tasks lost with it
        self.lost_expired: set[int] = set()  # tasks failed because their engine stayed away
        self.acking: set[int] = set()  # engines with results to acknowledge after a commit
        self.pings: list[bytes] = []  # the latest rounds' ping payloads
        self.seq_of: dict[tuple[int, int], int] = {}  # (tid, attempt) -> its dispatch seq
        self.dispatch_seq = itertools.count(1)  # numbers every dispatch (`dseq`)
        self.late_logged: dict[bytes, float] = {}
        # The uuids of engines that were retiring when an earlier controller on this store
        # stopped (store/retiring.py): each that comes back retires at once.
        self.retiring_before: set[str] = ctx.store.retiring_engines()

    def send(self, ident: bytes, message: msgspec.Struct, *, now: bool = False) -> None:
        self.ctx.outbox.send(ENGINE, ident, to_engine(message), now=now)

    def welcome(self, ident: bytes) -> None:
        """The session, to a peer that said `hello` (or registered with an old one)."""
        self.send(ident, Welcome(self.ctx.session), now=True)

    def reregister(self, ident: bytes, gen: Any) -> None:
        """To an engine this controller does not know: register (again)."""
        self.send(ident, Reregister(self.ctx.session, gen), now=True)

    def alive(self) -> int:
        return sum(1 for r in self.records.values() if not r.dead)

    def late_results(self, ident: bytes, header: dict[str, Any]) -> None:
        """Results from an engine declared dead (or of another session): counted and logged,
        not acted on (each task already failed with EngineDied and was retried if it could,
        so it finishes once) and not acknowledged (after a restart the engine sends them
        again, once registered)."""
        entries = header.get("results")
        tids = [e.get("tid") for e in entries if isinstance(e, dict)] \
            if isinstance(entries, list) else []
        self.ctx.wire.refused["result-from-dead-engine"] += max(1, len(tids))
        now = self.ctx.now.mono
        if now - self.late_logged.get(ident, -REFUSAL_LOG_EVERY) >= REFUSAL_LOG_EVERY:
            if len(self.late_logged) > LOGGED_ONCE_MAX:
                self.late_logged.clear()
            self.late_logged[ident] = now  # at most once a minute per engine socket
            log.warning("dropped late results of tasks %s from an engine declared dead or of an "
                        "earlier controller (further ones are only counted for a minute)", tids)

    def register(self, ident: bytes, msg: Register, session: Any) -> None:
        """An engine's `register` (its record; `session`: the one its header names)."""
        ctx = self.ctx
        uuid = msg.uuid
        if session != ctx.session:  # (stale: for a controller before this one)
            self.welcome(ident)
            return
        eid = self.by_uuid.get(uuid)
        again = eid is not None and not self.records[eid].dead
        if again:
            rec = self.records[eid]  # a repeated register: answer it again
            if (ident, msg.ctl_ident, msg.res_ident, msg.heart_ident) != rec.idents():
                self.moved(rec, ident, msg)
        else:
            eid = ctx.store.allocate_engine(uuid)
            props = dict(msg.properties or {})
            props.update(engineid=eid, hostname=msg.hostname, pid=msg.pid)
            rec = EngineRecord(
                eid=eid, uuid=uuid, task_ident=ident, ctl_ident=msg.ctl_ident,
                res_ident=msg.res_ident, heart_ident=msg.heart_ident,
                hostname=msg.hostname, pid=msg.pid, properties=props,
                registered=ctx.now.wall, last_seen=ctx.now.mono, active_at=ctx.now.wall,
                reported_at=ctx.now.mono,
            )
            self.records[eid] = rec
            self.by_uuid[uuid] = eid
            for i in rec.idents():
                self.by_ident[i] = eid
            log.info("engine %d registered: %s pid %d %s", eid, rec.hostname, rec.pid, props)
            self.adopt(rec, msg)
            if uuid in self.retiring_before:
                self.retiring_before.discard(uuid)
                log.info("engine %d was retiring when the controller stopped: it retires", eid)
                self.retire([eid])
        self.send(ident, Registered(
            ctx.session, eid, ctx.settings.heartbeat, ctx.settings.dead_after,
            ctx.wire.max_message, rec.properties, msg.t, again))

    def moved(self, rec: EngineRecord, ident: bytes, msg: Register) -> None:
        """A live engine registers new connections (new routing ids: its old ones went deaf,
        see engine/channels.py). It keeps its id and its tasks; its task messages are
        numbered from the start again, and what was sent on the old connections and is not
        held there any more counts as lost (engine_tasks.heartbeat queues it again)."""
        for i in rec.idents():
            self.by_ident.pop(i, None)
        rec.task_ident, rec.ctl_ident = ident, msg.ctl_ident
        rec.res_ident, rec.heart_ident = msg.res_ident, msg.heart_ident
        for i in rec.idents():
            self.by_ident[i] = rec.eid
        rec.mseq = 0
        rec.sent = dict.fromkeys(rec.sent, 0)
        rec.kept.clear()
        rec.prev_unacked = set()
        rec.last_seen = self.ctx.now.mono
        self.ctx.counters.engines_moved += 1
        log.warning("engine %d moved to new connections (its old ones went deaf)", rec.eid)

    def adopt(self, rec: EngineRecord, msg: Register) -> None:
        """Add a new engine to the scheduler. After a controller restart, the tasks that the
        store says were running on this engine process (by its uuid) and that it still runs or
        has results of are adopted (they run on as they were); the others it never started
        (it dropped what waited), so they are queued again. What it claims that this
        controller does not expect of it is dropped there (acknowledged, or interrupted)."""
        ctx = self.ctx
        claims: set[tuple[int, int]] = set()
        running = msg.running
        if isinstance(running, list) and len(running) == 2:
            claims.add((running[0], running[1]))
        finished = msg.finished
        for key in finished if isinstance(finished, list) else ():
            if isinstance(key, list) and len(key) == 2:
                claims.add((key[0], key[1]))
        adopt, given_back = [], []
        lost = self.lost.pop(rec.uuid, None)
        if lost:
            ctx.timers.cancel(("lost", rec.uuid))
            for tid in lost:
                attempts = ctx.sched.attempts(tid)
                if attempts is None:
                    continue
                (adopt if (tid, attempts) in claims else given_back).append(tid)
        ctx.sched.add_engine(rec.eid, rec.properties, adopt)
        now = ctx.now.wall
        ran = msg.running_for  # (seconds the task it runs has run there, by its own clock)
        if isinstance(ran, bool) or not isinstance(ran, int | float) \
                or not 0.0 <= ran < MAX_ADOPTED_AGE:
            ran = 0.0
        for tid in adopt:
            node, attempts, tries, handed_over = ctx.sched.counters(tid)
            rec.sent[(tid, attempts)] = 0
            claims.discard((tid, attempts))
            ctx.store.mark_running(tid, rec.eid, node, attempts, tries, handed_over)
            back = ran if [tid, attempts] == running else 0.0
            ctx.started[tid] = new_now(Now, (ctx.now.mono - back, ctx.now.wall - back))
            ctx.activity.dispatched(tid, rec.eid, attempts, now)
        for tid in given_back:
            ctx.sched.lost_returned(tid)
        if adopt or given_back:
            log.info("engine %d (back after a restart) still had task(s) %s; task(s) %s it "
                     "never started are queued again", rec.eid, adopt, given_back)
        for tid, attempt in claims:  # nothing this controller expects of it
            if running is not None and [tid, attempt] == running:
                self.send(rec.ctl_ident, InterruptTask(ctx.session, tid, attempt, "stale"),
                          now=True)
            else:
                rec.to_ack.append([tid, attempt])
                self.acking.add(rec.eid)

    def expect_lost(self, uuid: str | None, tid: int) -> None:
        """A reloaded task was running on engine `uuid` when the last controller stopped."""
        self.lost.setdefault(uuid, []).append(tid)

    def arm_lost(self) -> None:
        for uuid in self.lost:
            self.ctx.timers.arm(("lost", uuid), self.lost_grace())

    def lost_engine_gone(self, uuid: str | None) -> None:
        """The engine that ran these tasks before the restart did not come back."""
        lost = self.lost.pop(uuid, [])
        if lost:
            log.warning("the engine that ran task(s) %s before the controller restarted did not "
                        "come back within %gs: their attempts are lost", lost, self.lost_grace())
        for tid in lost:
            self.lost_expired.add(tid)
            self.ctx.sched.lost_expired(tid)

    def lost_grace(self) -> float:
        return max(LOST_GRACE, LOST_GRACE_DEAD_AFTERS * self.ctx.settings.dead_after)

    def ping(self) -> None:
        """One round of pings to the heart socket of every engine not heard from for a
        heartbeat; the echo proves it alive. (An engine whose heartbeats arrive is alive: the
        pings are for the one whose task code holds the GIL, which stops its heartbeats but
        not its heart. Half the messages of 1,000 idle engines.)"""
        payload = PING + os.urandom(PING_NONCE_BYTES)
        self.pings = [*self.pings[1 - PING_ROUNDS_KEPT:], payload]
        quiet = self.ctx.now.mono - self.ctx.settings.heartbeat
        out = self.ctx.outbox.now_out
        for rec in self.records.values():
            if not rec.dead and rec.last_seen <= quiet:
                out.append((ENGINE, rec.heart_ident, None, [payload]))

    def on_pong(self, ident: bytes, payload: bytes) -> None:
        if payload in self.pings:
            eid = self.by_ident.get(ident)
            rec = self.records.get(eid) if eid is not None else None
            if rec is not None and not rec.dead:
                rec.last_seen = self.ctx.now.mono

    # -- deaths ----------------------------------------------------------------------------
    def check_heartbeats(self, turn_start: float, stall_end: float) -> None:
        """Declare dead the engines silent for dead_after (a loop stall not counted)."""
        now = self.ctx.now.mono
        if now - turn_start > STALL_SHARE * self.ctx.settings.heartbeat:
            return  # this turn has kept the loop busy: the engines' pings wait unread
        dead_after = self.ctx.settings.dead_after
        for rec in list(self.records.values()):
            quiet = now - max(rec.last_seen, stall_end)
            if not rec.dead and quiet > dead_after:
                self.died(rec, f"no heartbeat for {quiet:.1f}s")

    def process_exited(self, pid: int, status: int) -> None:
        """A local nanny saw an engine process exit (with `status`, < 0: killed by that
        signal): no need to wait for its heartbeat."""
        how = exit_text(status)
        for rec in list(self.records.values()):
            if rec.pid == pid and not rec.dead and rec.hostname == socket.gethostname():
                self.died(rec, how)

    def died(self, rec: EngineRecord, why: str) -> None:
        ctx = self.ctx
        if rec.drained:  # told to stop, holding nothing: its goodbye was not heard, that's all
            self.retired(rec, f"retired ({why} after it was told to stop)")
            return
        log.warning("engine %d (%s pid %d) is dead: %s", rec.eid, rec.hostname, rec.pid, why)
        rec.dead = True
        ctx.counters.engines_died += 1
        self.gone(rec, why)

    def gone(self, rec: EngineRecord, why: str) -> None:
        """Forget what engine `rec` held and take it out of the scheduler (which fails its
        attempts with EngineDied: none, for a retired engine)."""
        ctx = self.ctx
        self.death_reasons[rec.eid] = (f"{rec.hostname} pid {rec.pid}", why)
        # (wall clock: the tasks it held ran until then at most; results.py's durations)
        self.heard_last[rec.eid] = min(ctx.now.mono, rec.last_seen)
        for tid in ctx.sched.engine_load(rec.eid):
            attempts = ctx.sched.attempts(tid)
            if attempts is not None:
                self.seq_of.pop((tid, attempts), None)
        rec.sent.clear()
        rec.to_ack.clear()
        rec.ackable.clear()
        rec.to_ack_bytes = rec.ackable_bytes = 0
        ctx.activity.engine_lost(rec.eid, ctx.now.wall)
        ctx.sched.remove_engine(rec.eid)
        for i in rec.idents():
            self.by_ident.pop(i, None)
        self.forget_dead()

    # -- retiring (a shrinking cluster stops engines without losing a task) -----------------
    def retire(self, eids: list[int]) -> list[int]:
        """Take engines out of scheduling (scheduler `Retire`): the ids that are retiring now."""
        out = []
        for eid in eids:
            rec = self.records.get(eid)
            if rec is None or rec.dead:
                continue
            if not self.ctx.sched.engine_retiring(eid):
                log.info("engine %d retires: it gets no new task and stops once it holds "
                         "nothing", eid)
                self.ctx.store.retire_engine(rec.uuid)  # (a restart keeps it retiring)
            if self.ctx.sched.retire(eid):
                out.append(eid)
        return out

    def drained(self, eid: int) -> None:
        """Retiring engine `eid` holds nothing (scheduler `Drained`): each heartbeat answer
        tells it to stop, once what it reported is stored (engine_tasks.heartbeat)."""
        rec = self.records.get(eid)
        if rec is not None and not rec.dead:
            rec.drained = True

    def retired(self, rec: EngineRecord, why: str = "retired") -> None:
        """A drained engine stopped (its `retired`, or it went silent or exited after it was
        told to stop): nothing it held is lost, so this is no death."""
        if not rec.drained:  # (a `retired` it was never asked for: it will be declared dead)
            log.warning("engine %d says it retired, but it was not told to", rec.eid)
            return
        log.info("engine %d (%s pid %d) %s", rec.eid, rec.hostname, rec.pid, why)
        self.ctx.store.retire_engine(rec.uuid, False)
        rec.dead = rec.retired = True
        self.ctx.counters.engines_retired += 1
        self.gone(rec, why)

    def forget_dead(self) -> None:
        """Keep at most DEAD_RECORDS_KEPT dead engines' records (oldest go first)."""
        dead = [eid for eid, r in self.records.items() if r.dead]
        for eid in dead[:max(0, len(dead) - DEAD_RECORDS_KEPT)]:
            rec = self.records.pop(eid)
            self.death_reasons.pop(eid, None)
            self.heard_last.pop(eid, None)
            if self.by_uuid.get(rec.uuid) == eid:
                del self.by_uuid[rec.uuid]

    def acks_stored(self) -> list[Outgoing]:
        """The results taken are stored: the engines may drop them (with the next hb answer,
        or now: the `stored` messages returned, for those past ACK_AT_ONCE_BYTES)."""
        out: list[Outgoing] = []
        for eid in self.acking:
            rec = self.records.get(eid)
            if rec is not None:
                rec.ackable.extend(rec.to_ack)
                rec.to_ack.clear()
                rec.ackable_bytes += rec.to_ack_bytes
                rec.to_ack_bytes = 0
                if rec.ackable_bytes >= ACK_AT_ONCE_BYTES and not rec.dead:
                    out.append((ENGINE, rec.ctl_ident,
                                to_engine(Stored(self.ctx.session, rec.ackable)), ()))
                    rec.ackable, rec.ackable_bytes = [], 0
        self.acking.clear()
        return out

    def withdrawn(self, gone: set[int]) -> None:
        """Tasks taken back before they were sent: no dispatch of theirs is outstanding (and
        the values they were to bring an engine to keep never go: forget what each keeps)."""
        for rec in self.records.values():
            rec.kept.clear()
        for key in [k for k in self.seq_of if k[0] in gone]:
            del self.seq_of[key]
