"""Read-only views of the controller: queue status, engines, one task, statistics.

Each view is built as its record (protocol.views) from the owners of its facts (the scheduler
for queued and running tasks and for whether an engine is busy, the store for finished ones,
the engine registry, the `Counters` and the `RecentActivity`), answered at once even while the
store cannot write; the verbs (core.py) send each as plain maps (`as_map`), and the client
reads it back into the same record. Names, one per concept:
- `queue_status()`: how many tasks are scheduled, pending, succeeded, failed (the seed's verb);
- `engine_table()`: one row per engine (`state` is idle, busy, retiring, dead or retired);
- `task_info(tid)`: one task's state and metadata, never its payload (a record by state);
- `statistics()`: everything above plus the counters, the recent activity and what is kept
  for clients (credit.py, clients.py, results.py); `taskmill status` (status.py) renders it,
  /metrics and the dashboard read it.
"""

from __future__ import annotations

from typing import Any

from ..protocol import (
    Activity,
    ActivityReply,
    EngineRow,
    EnginesReply,
    EngineStats,
    QueueStatus,
    Statistics,
    StatsReply,
    Status,
    StatusReply,
    StoryEntry,
    TaskFailed,
    TaskInfo,
    TaskPending,
    TaskQuery,
    TaskReply,
    TaskScheduled,
    TaskSucceeded,
    TaskUnknown,
)
from .context import Context, Now
from .engines import EngineRecord, Engines


class Views:
    def __init__(self, ctx: Context, engines: Engines, waiting: dict[bytes, int]) -> None:
        self.ctx = ctx
        self.engines = engines
        self.waiting = waiting  # client -> its requests waiting for tasks (results.py)

    def queue_status(self, verbose: bool = False) -> QueueStatus:
        ctx = self.ctx
        if verbose:
            ok, failed = ctx.store.finished_ids()
            return QueueStatus(scheduled=ctx.sched.scheduled_ids(),
                               pending=ctx.sched.pending_ids(), succeeded=ok, failed=failed)
        scheduled, pending = ctx.sched.counts()
        ok, failed = ctx.store.counts()
        return QueueStatus(scheduled=scheduled, pending=pending, succeeded=ok, failed=failed)

    def engine_state(self, eid: int) -> str:
        """idle, busy, retiring (busy or not, it gets no new task), or gone: dead, retired."""
        r = self.engines.records[eid]
        if r.dead:
            return "retired" if r.retired else "dead"
        if self.ctx.sched.engine_retiring(eid):
            return "retiring"
        return "busy" if self.ctx.sched.engine_busy(eid) else "idle"

    def engine_row(self, r: EngineRecord, row: type[EngineRow] = EngineRow,
                   **more: Any) -> EngineRow:
        """Engine `r`'s row (`row`: EngineRow, or EngineStats with `more`, its fields)."""
        state = self.engine_state(r.eid)
        return row(engineid=r.eid, hostname=r.hostname, pid=r.pid, properties=r.properties,
                   state=state, tasks_done=r.tasks_done, failures=r.failures,
                   capacity=self.ctx.sched.capacity(r.eid),
                   idle_since=r.active_at if state == "idle" else None, left=r.left, **more)

    def engine_table(self) -> list[EngineRow]:
        """One row per engine; `idle_since`: when an idle engine last reported results or
        registered (the controller's wall clock; None unless idle)."""
        return [self.engine_row(r) for r in self.engines.records.values()]

    def task_info(self, tid: int) -> TaskInfo:
        """One task's state and metadata (times, engine, output, error), never its payload,
        and its `story`: the scheduler's newest moves of it, oldest first, each
        {event, from, to, why} (kept for active tasks and the most recently finished ones)."""
        ctx = self.ctx
        m = ctx.store.result_meta(tid)  # (not its frames: they may be large)
        if m is not None:  # (its stored metadata: protocol.ResultMeta, but `pmac`; a put
            # value's has no `error`)
            finished = TaskSucceeded if m["status"] == "ok" else TaskFailed
            return finished(
                tid=tid, engineid=m["engineid"], attempts=m["attempts"],
                submitted=m["submitted"], completed=m["completed"], started=m["started"],
                status=m["status"], kind=m["kind"], duration=m["duration"],
                stdout=m["stdout"], stderr=m["stderr"], error=m.get("error"),
                story=self.story(tid))
        view = ctx.sched.task_view(tid)
        if view is None and tid in ctx.backlog:  # (queued, its row only in the store)
            rows, _ = ctx.store.load_queued([tid], keep=False)  # (None: not committed yet)
            task = rows[0][0] if rows else None
            return TaskScheduled(
                tid=tid, engineid=None, attempts=0,
                submitted=task.submitted if task else None, started=None,
                kind=task.spec["nodes"][0]["exec"]["kind"] if task else None, story=[],
                backlog=True)
        if view is None and ctx.leases.pending(tid):  # (not stored yet: it reads as unfinished)
            return TaskScheduled(tid=tid, engineid=None, attempts=0, submitted=None,
                                 started=None, kind=None, story=[], leased=True)
        if view is None:
            return TaskUnknown(tid)
        running, engine, attempts, node = view
        task = ctx.store.task(tid)
        return (TaskPending if running else TaskScheduled)(
            tid=tid, engineid=engine, attempts=attempts,
            submitted=task.submitted if task else None,
            started=ctx.started[tid].wall if running and tid in ctx.started else None,
            kind=task.spec["nodes"][node]["exec"]["kind"] if task else None,
            story=self.story(tid))

    def story(self, tid: int) -> list[StoryEntry]:
        return [StoryEntry(event=e.event, before=str(e.before), to=str(e.after), why=e.why)
                for e in self.ctx.sched.story(tid)]

    def statistics(self, now: Now) -> Statistics:
        """What the controller is doing: counters, queue, engines (with the task each one runs
        and its last heartbeat), tasks/s over the last minute, the task-duration histogram,
        refused messages by reason. `taskmill status`, /metrics and the dashboard read this."""
        ctx = self.ctx
        wall, mono = now.wall, now.mono
        c = ctx.counters
        engines = []
        for r in self.engines.records.values():
            held = ctx.activity.held_by(r.eid)
            engines.append(self.engine_row(
                r, EngineStats, current_task=held[0] if held else None, held=held,
                last_heartbeat_ago=mono - r.last_seen))
        return Statistics(
            time=wall, uptime=wall - c.started,
            messages_in=c.messages_in, messages_out=c.messages_out,
            submitted=c.submitted, finished=c.finished,
            engines_died=c.engines_died, engines_retired=c.engines_retired,
            engines_moved=c.engines_moved,
            tasks_lost_in_transit=c.tasks_lost_in_transit,
            heartbeats_unanswered=c.heartbeats_unanswered,
            answers_given_again=c.answers_given_again,
            store_commits_failed=ctx.outbox.commits_failed,
            store_problem=ctx.store.lost or ctx.outbox.store_error,
            store_down_for=(None if ctx.outbox.store_down_since is None
                            else mono - ctx.outbox.store_down_since),
            argument_bytes_out=c.argument_bytes_out, refused=dict(ctx.wire.refused),
            revokes_sent=c.revokes_sent, revokes_granted=c.revokes_granted,
            queue=self.queue_status(), engines=engines,
            tasks_per_second=ctx.activity.tasks_per_second(wall),
            durations=ctx.activity.durations.record(),
            backlog=len(ctx.backlog), queued_in_memory=ctx.sched.active_count(),
            queue_window=ctx.backlog.window, payload_bytes_in_memory=ctx.store.held_bytes,
            queue_window_bytes=ctx.backlog.window_bytes,
            **ctx.outbox.credits.held(), **ctx.clients.held(),
            requests_waiting=sum(self.waiting.values()),
        )

    # -- the read-only verbs (the core's verb table names them; answered at once) ------------
    def status(self, rt: bytes, req: Any, m: Status, frames: list[Any]) -> None:
        # (Read-only views are answered at once, even while the store cannot write.)
        self.ctx.outbox.reply(rt, req, StatusReply(
            self.queue_status(bool(m.verbose)).as_map()), now=True)

    def stats(self, rt: bytes, req: Any, m: Any, frames: list[Any]) -> None:
        self.ctx.outbox.reply(rt, req, StatsReply(self.statistics(self.ctx.now).as_map()),
                              now=True)

    def activity(self, rt: bytes, req: Any, m: Activity, frames: list[Any]) -> None:
        self.ctx.outbox.reply(rt, req, ActivityReply(
            self.ctx.activity.record(self.ctx.now.wall, m.since).as_map()), now=True)

    def task(self, rt: bytes, req: Any, m: TaskQuery, frames: list[Any]) -> None:
        self.ctx.outbox.reply(rt, req, TaskReply(self.task_info(m.tid).as_map()),
                              now=True)

    def engines_verb(self, rt: bytes, req: Any, m: Any, frames: list[Any]) -> None:
        self.ctx.outbox.reply(rt, req, EnginesReply(
            [row.as_map() for row in self.engine_table()]), now=True)
