"""The tasks an engine is sent and reports: dispatch, results, heartbeats' reconciliation.

Data flow of one attempt (the registry is engines.py; every scheduler call goes through
sched_calls):
- a scheduler `Dispatch` -> `dispatch`: the row is marked running and the task's frames queued
  in the outbox for that engine, with a dispatch number (`dseq`); when the turn's commit has
  stored the mark, `number_tasks` packs each engine's tasks into numbered `tasks` messages
  (`mseq`) and remembers which message carried which attempt (`EngineRecord.sent`);
- the engine's `results` -> `result` -> the scheduler's `task_done`, with the entry and its
  frames as the report the `Finish` stores; the engine is acknowledged once that is stored
  (with the next `hb` answer, or at once for large results: engines.py `acks_stored`);
- its `hb` (heartbeat) says what it holds and which results it keeps: an attempt sent but
  neither held nor reported never arrived and is queued again (`revoke_answered` ok), a result
  reported twice and never received is asked for again, an aborted attempt still running is
  interrupted again;
- a scheduler `Revoke` (stealing) -> `revoke` -> the engine's `revoked` answer; a scheduler
  `Interrupt` -> `interrupt`. An abort's interruption arms a timer: an engine that still
  holds the aborted attempt KILL_GRACE and ABORT_REPORTS_MISSED heartbeats later, and whose
  reports stopped meanwhile although its heart answers pings (task code holding the GIL in a
  C call: its I/O thread, which would end the process, cannot run), is declared dead
  (`abort_overdue`); a local nanny then kills the process and starts a new engine. One whose
  reports go on ends its own process at KILL_GRACE (engine/control.py): it is left to it.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from ..defaults import ABORT_REPORTS_MISSED, KILL_GRACE, idle_answer_every
from ..errors import StoreError
from ..protocol import (
    HbAnswer,
    Heartbeat,
    InterruptTask,
    Leaving,
    ResultEntry,
    Results,
    Revoked,
    RevokeTask,
    Tasks,
    result_entry,
    to_engine,
)
from ..scheduler import ABORTED, Dispatch, Interrupt, Revoke
from ..wire import frame_len
from .context import Context
from .engines import EngineRecord, Engines
from .outbox import ENGINE, Outgoing
from .sched_calls import Report
from .validation import is_int, pairs

log = logging.getLogger("taskmill.controller")

ARGUMENTS_HEADROOM = 64 * 1024  # bytes of a tasks message kept for its headers
KEPT_VALUES = 64  # put values an engine keeps, at most ...
KEPT_BYTES = 1 << 30  # ... and their bytes (one larger value is still kept, alone)


class EngineTasks:
    def __init__(self, ctx: Context, engines: Engines) -> None:
        self.ctx = ctx
        self.engines = engines

    def send(self, ident: bytes, message: msgspec.Struct, *, now: bool = False) -> None:
        self.ctx.outbox.send(ENGINE, ident, to_engine(message), now=now)

    def dispatch(self, a: Dispatch, report: Report | None = None) -> None:
        """Queue attempt `a.attempt` of task `a.tid` for engine `a.eid`; its row is marked
        running in the same commit that lets the message go."""
        ctx = self.ctx
        store = ctx.store
        tid, attempt = a.tid, a.attempt
        task = store.task(tid)
        node = task.spec["nodes"][a.node]
        start, end = node["span"]
        store.mark_running(tid, a.eid, a.node, attempt, a.tries, list(a.handed_over))
        ctx.started[tid] = ctx.now  # (its monotonic time for timeouts, its wall time shown)
        now = ctx.now.wall
        if ctx.sched.first_held(a.eid) == (tid, attempt):  # (it runs it at once)
            ctx.running_since[tid] = (attempt, ctx.now.mono)
        ctx.activity.dispatched(tid, a.eid, attempt, now)
        seq = self.engines.seq_of[(tid, attempt)] = next(self.engines.dispatch_seq)
        entry = {"tid": tid, "attempt": attempt, "dseq": seq, "exec": node["exec"],
                 "pmac": node["pmac"], "timeout": node.get("timeout"), "n": end - start}
        frames = task.frames[start:end]
        if node.get("args_from"):
            frames = self.with_arguments(entry, a.eid, node["args_from"], frames)
        ctx.outbox.add_task(a.eid, entry, frames)

    def with_arguments(self, entry: dict[str, Any], eid: int, tids: list[int],
                       frames: list[Any]) -> list[Any]:
        """The stored results that a task takes as arguments travel with it (arguments.py):
        `args` in its entry lists [taskid, frames, pmac, kept] for each; a result cleared
        meanwhile is named in `missing`, and results too large to travel with it in one
        message in `too_big`, and a result whose file cannot be read in `unreadable` (the engine
        fails the task with DependencyError for each).

        A `put` value (kind put) is sent to an engine once: `kept` 1 tells it to keep the
        value by its pmac; later tasks send no frames for it (0 frames, kept 1). What the
        engine keeps is bounded (KEPT_BYTES, KEPT_VALUES): the oldest are dropped, and each
        entry's `forget` names those it must drop first."""
        rec = self.engines.records[eid]
        args, extra, missing, forget = [], [], [], []
        own = size = sum(frame_len(f) for f in frames)
        store = self.ctx.store
        for dep in tids:
            meta = store.result_meta(dep)  # (a kept value's frames are not even read)
            if meta is None or meta.get("status") != "ok":
                missing.append(dep)
                continue
            pmac = meta.get("pmac")
            put = meta.get("kind") == "put" and isinstance(pmac, bytes)
            if put and pmac in rec.kept:
                rec.kept[pmac] = rec.kept.pop(pmac)  # (now the newest)
                args.append([dep, 0, pmac, 1])
                continue
            try:
                r = store.result(dep)
            except StoreError as e:  # (its file is gone: the engine fails the task with it)
                entry["unreadable"] = str(e)
                rec.kept.clear()  # (as for too_big: what it was told to keep did not go)
                return frames
            if r is None:
                missing.append(dep)
                continue
            nbytes = sum(frame_len(f) for f in r.frames)
            args.append([dep, len(r.frames), pmac, int(put)])
            extra.extend(r.frames)
            size += nbytes
            if put:
                rec.kept[pmac] = nbytes
                while len(rec.kept) > 1 and (len(rec.kept) > KEPT_VALUES
                                             or sum(rec.kept.values()) > KEPT_BYTES):
                    forget.append(next(iter(rec.kept)))
                    del rec.kept[forget[-1]]
        if size > self.ctx.wire.max_message - ARGUMENTS_HEADROOM:
            entry["too_big"] = (f"the results of tasks {tids} it takes as arguments and its own "
                                f"payload come to {size} bytes, more than one message may hold "
                                f"({self.ctx.wire.max_message}): pass smaller values")
            rec.kept.clear()  # (what it was told to keep did not go)
            return frames
        if missing:
            entry["missing"] = missing
        if forget:
            entry["forget"] = forget
        entry["args"] = args
        entry["n"] += len(extra)
        self.ctx.counters.argument_bytes_out += size - own
        return [*frames, *extra]

    def interrupt(self, a: Interrupt, report: Report | None = None) -> None:
        rec = self.engines.records.get(a.eid)
        if rec is not None and not rec.dead and self.ctx.sched.has_engine(a.eid):
            self.send(rec.ctl_ident, InterruptTask(self.ctx.session, a.tid, a.attempt,
                                                   a.reason))
            if a.reason == ABORTED and a.attempt is not None:
                self.ctx.timers.arm(("abort-overdue", a.eid, a.tid, a.attempt),
                                    KILL_GRACE + self.reports_missed())

    def reports_missed(self) -> float:
        """Seconds without a report that show an engine's I/O thread is not running."""
        return ABORT_REPORTS_MISSED * self.ctx.settings.heartbeat

    def abort_overdue(self, eid: int, tid: int, attempt: int,
                      stall_end: float = float("-inf")) -> None:
        """The abort of attempt `attempt` of task `tid` on engine `eid` was sent a while ago
        (the module's docstring): if the engine still holds it, it is declared dead when its
        reports have stopped, and asked about again a heartbeat later while they go on. (Its
        silence counts from `stall_end` at the earliest: the controller's own pause, when
        nothing was read, is not the engine's.)"""
        rec = self.engines.records.get(eid)
        if rec is None or rec.dead or not self.ctx.sched.holds(eid, tid, attempt):
            return  # it ended the task (or is gone)
        quiet = self.ctx.now.mono - max(rec.reported_at, stall_end)
        if quiet < self.reports_missed():  # its I/O thread runs: its own kill stands
            self.ctx.timers.arm(("abort-overdue", eid, tid, attempt),
                                self.ctx.settings.heartbeat)
            return
        self.engines.died(rec, f"task {tid} was aborted and is still running, and the engine "
                          f"has sent no report for {quiet:.1f}s although it answers pings (its "
                          "task code holds the GIL): it cannot end the task itself")

    def revoke(self, a: Revoke, report: Report | None = None) -> None:
        rec = self.engines.records.get(a.eid)
        seq = self.engines.seq_of.get((a.tid, a.attempt))
        if rec is not None and not rec.dead and seq is not None:
            self.ctx.counters.revokes_sent += 1
            self.send(rec.ctl_ident, RevokeTask(self.ctx.session, a.tid, a.attempt, seq))
        else:  # nothing to ask back: as good as refused
            self.ctx.sched.revoke_answered(a.eid, a.tid, a.attempt, False)

    def number_tasks(self, tasks: dict[int, tuple[list[dict[str, Any]], list[Any]]],
                     ) -> list[Outgoing]:
        """Each engine's tasks of this turn as `tasks` messages (split below the size
        limit), numbered in the order they go."""
        out: list[Outgoing] = []
        for eid, (entries, frames) in tasks.items():
            rec = self.engines.records.get(eid)
            if rec is None or rec.dead:
                continue
            for part, part_frames in self.ctx.outbox.within_limit(entries, frames, "n"):
                rec.mseq += 1
                for entry in part:
                    rec.sent[(entry["tid"], entry["attempt"])] = rec.mseq
                out.append((ENGINE, rec.task_ident,
                            to_engine(Tasks(self.ctx.session, eid, rec.mseq, part, rec.hb_t)),
                            part_frames))
        return out

    def heartbeat(self, rec: EngineRecord, ident: bytes, h: Heartbeat,
                  frames: list[Any]) -> None:
        """An engine's report of what it holds: reconcile it with what it was sent.

        A task the engine neither holds nor has a result for, although the message that
        carried it has arrived (or is known lost: a later message came first), never started
        there (a `tasks` message lost to a reset connection, a revoke whose answer was lost):
        it is queued again without counting an attempt. An idle engine that has not seen the
        latest message is sent an empty one, whose number shows whether that one was lost.
        Results the engine still keeps are acknowledged once stored, or asked for again when
        they seem lost; an aborted task still running there is interrupted again."""
        ctx = self.ctx
        rec.reported_at = ctx.now.mono
        if h.current is not None:
            self.runs_next(rec.eid)
        held = pairs(h.held)
        unacked = pairs(h.unacked)
        if isinstance(h.t, int | float) and not isinstance(h.t, bool):
            rec.hb_t = h.t
        seen = h.mseq if is_int(h.mseq) else 0
        missing = set(x for x in h.missing or () if is_int(x))
        running = ctx.sched.held(rec.eid)
        expected: dict[tuple[int, int], None] = {}
        if running is not None:
            expected = {(tid, att): None for tid, att in running.items()}
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
        if gone:
            rec.kept.clear()  # (a lost message may have carried values it was to keep)
        for tid, attempt in gone:
            rec.sent.pop((tid, attempt), None)
            self.engines.seq_of.pop((tid, attempt), None)
            ctx.counters.tasks_lost_in_transit += 1
            log.warning("engine %d does not hold task %d (attempt %d) it was sent: the message "
                        "was lost; queued again", rec.eid, tid, attempt)
            ctx.activity.returned(tid, rec.eid, attempt, ctx.now.wall)
            ctx.sched.revoke_answered(rec.eid, tid, attempt, True)
            self.requeued(tid)
        now = ctx.now.mono
        if (in_flight and not held and seen < rec.mseq
                and now - rec.ticked_at > ctx.settings.heartbeat):
            rec.mseq += 1
            rec.ticked_at = now
            self.send(rec.task_ident, Tasks(ctx.session, rec.eid, rec.mseq, [], rec.hb_t),
                      now=True)
        resend = []
        for key in unacked:
            if key not in expected:
                rec.to_ack.append(list(key))  # taken already, or not wanted: drop it there
                self.engines.acking.add(rec.eid)
            elif key in rec.prev_unacked:
                resend.append(list(key))  # in two reports and never arrived: lost
        rec.prev_unacked = {k for k in unacked if k in expected}
        current = h.current
        if isinstance(current, list) and len(current) == 2 and running is not None:
            tid, attempt = current
            if running.get(tid) == attempt and not ctx.sched.is_running_on(tid, rec.eid):
                self.send(rec.ctl_ident, InterruptTask(ctx.session, tid, attempt, ABORTED),
                          now=True)  # aborted, and still running
        retire = rec.drained and not rec.to_ack
        idle = not (expected or held or unacked or rec.ackable or resend or retire)
        if (idle and seen >= rec.mseq
                and now - rec.answered_at < idle_answer_every(ctx.settings.dead_after)):
            # Nothing to tell an idle engine: its answer is only a sign that the controller
            # hears it, which it needs once per silent_after span (defaults.py); the lease of
            # the next task it gets rides on that task's message (`t`).
            ctx.counters.heartbeats_unanswered += 1
            return
        rec.answered_at = now
        ack, rec.ackable, rec.ackable_bytes = rec.ackable, [], 0
        # `mseq`: the last task message sent, so that an engine whose task connection went
        # deaf finds out (engine/channels.py).
        # `retire`: retiring, it holds nothing, and its results are stored.
        self.send(ident, HbAnswer(ctx.session, h.t, ack, resend, rec.mseq, retire=retire),
                  now=True)

    def revoked(self, rec: EngineRecord, ident: bytes, m: Revoked, frames: list[Any]) -> None:
        tid, attempt = m.tid, m.attempt
        if m.ok:
            self.ctx.counters.revokes_granted += 1
            self.engines.seq_of.pop((tid, attempt), None)
            rec.sent.pop((tid, attempt), None)
            self.ctx.activity.returned(tid, rec.eid, attempt, self.ctx.now.wall)
        self.ctx.sched.revoke_answered(rec.eid, tid, attempt, bool(m.ok))
        if m.ok:
            self.requeued(tid)

    def requeued(self, tid: int) -> None:
        """An attempt came back unstarted: unless the task went straight to another engine,
        the store says it is queued again (a restart would otherwise wait for the engine that
        gave it back, and fail it with EngineDied if that one never came back)."""
        sched = self.ctx.sched
        self.ctx.running_since.pop(tid, None)  # (it never ran: not that attempt)
        view = sched.task_view(tid)
        if view is not None and not view[0]:
            self.ctx.store.mark_running(tid, None, *sched.counters(tid))

    def leaving(self, rec: EngineRecord, ident: bytes, m: Leaving, frames: list[Any]) -> None:
        """The engine is stopping (SIGTERM: `cluster stop`, systemd, scancel), its results
        taken just before: it gets no new task, and every attempt it holds but the one it
        names as running never started there (those it held, and those sent since it stopped
        taking tasks) and is queued again, uncounted (they were lost with it: EngineDied).
        The one it was running ends with it (declared dead)."""
        sched = self.ctx.sched
        rec.left = True
        sched.retire(rec.eid)
        running = pairs([m.running])
        back = [(tid, attempt) for tid, attempt in sorted((sched.held(rec.eid) or {}).items())
                if (tid, attempt) not in running]
        log.info("engine %d (%s pid %d) is stopping; it gives back %d task(s) it never "
                 "started", rec.eid, rec.hostname, rec.pid, len(back))
        for tid, attempt in back:
            self.revoked(rec, ident, Revoked(tid, attempt, True), frames)

    def results(self, rec: EngineRecord, ident: bytes, m: Results, frames: list[Any]) -> None:
        """A batch of results, each entry read through its record (protocol.result_entry):
        those before a malformed one are taken, the rest is refused."""
        sched = self.ctx.sched
        running = sched.held(rec.eid)
        rec.active_at = self.ctx.now.wall
        rec.reported_at = self.ctx.now.mono
        nframes = len(frames)
        pos = 0
        to_ack, sent = rec.to_ack, rec.sent
        taken = len(to_ack)
        try:
            for item in m.results:
                entry = result_entry(item, pos, nframes)
                tid, attempt, n = entry.tid, entry.attempt, entry.n
                to_ack.append([tid, attempt])  # acknowledged once stored (engines.py)
                own = frames[pos:pos + n]
                if n:
                    rec.to_ack_bytes += sum(map(frame_len, own))
                if running is not None and running.get(tid) == attempt:
                    sent.pop((tid, attempt), None)
                    self.result(rec, entry, own)
                # else: sent again (a resend that crossed the first), or for an attempt
                # that is over: taken once only
                pos += n
        finally:
            if len(to_ack) > taken:  # (once for the batch)
                self.engines.acking.add(rec.eid)
            sched.run_pass()  # one pass for the whole batch
            self.runs_next(rec.eid)

    def runs_next(self, eid: int) -> None:
        """Engine `eid` reported: the task it holds first, if not known to run, runs from
        now at the latest (ctx.running_since)."""
        first = self.ctx.sched.first_held(eid)
        if first is not None:
            tid, attempt = first
            since = self.ctx.running_since.get(tid)
            if since is None or since[0] != attempt:
                self.ctx.running_since[tid] = (attempt, self.ctx.now.mono)

    def result(self, rec: EngineRecord, entry: ResultEntry, frames: list[Any]) -> None:
        tid, attempt, status = entry.tid, entry.attempt, entry.status
        props = entry.properties
        if props is not None:
            props = {**props, "engineid": rec.eid, "hostname": rec.hostname, "pid": rec.pid}
            rec.properties = props
        if status != "rejected":  # (a rejection counts no attempt: neither done nor failed)
            rec.tasks_done += 1
            if status != "ok":
                rec.failures += 1
        self.engines.seq_of.pop((tid, attempt), None)
        self.ctx.running_since.pop(tid, None)  # (that attempt is over)
        self.ctx.activity.attempt_ended(tid, rec.eid, attempt, status, self.ctx.now.wall)
        # The entry is the report a RESULT Finish stores (see core.finish).
        self.ctx.sched.task_done(rec.eid, tid, attempt, status, props, entry.duration,
                                 (entry, frames))
