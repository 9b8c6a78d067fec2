"""Read-only views of the controller: queue status, engines, one task, statistics.

Each view is a plain dict built from the owners of its facts (the scheduler for queued and
running tasks and for whether an engine is busy, the store for finished ones, the engine
registry, the `Counters` and the `RecentActivity`), answered at once even while the store
cannot write. Names, one per concept:
- `queue_status()`: how many tasks are scheduled, pending, succeeded, failed (the seed's verb);
- `engine_table()`: one row per engine (`state` is idle, busy, retiring, dead or retired);
- `task_info(tid)`: one task's state and metadata, never its payload;
- `statistics()`: everything above plus the counters and the recent activity, built as the
  record protocol.Statistics and answered as a plain map; `taskmill status` (status.py)
  renders it, /metrics and the dashboard read it.
"""

from __future__ import annotations

from typing import Any

from ..protocol import Statistics
from .context import Context, Now
from .engines import Engines


class Views:
    def __init__(self, ctx: Context, engines: Engines) -> None:
        self.ctx = ctx
        self.engines = engines

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        ctx = self.ctx
        if verbose:
            ok, failed = ctx.store.finished_ids()
            return {"scheduled": ctx.sched.scheduled_ids(), "pending": ctx.sched.pending_ids(),
                    "succeeded": ok, "failed": failed}
        scheduled, pending = ctx.sched.counts()
        ok, failed = ctx.store.counts()
        return {"scheduled": scheduled, "pending": pending, "succeeded": ok, "failed": failed}

    def engine_state(self, eid: int) -> str:
        """idle, busy, retiring (busy or not, it gets no new task), or gone: dead, retired."""
        r = self.engines.records[eid]
        if r.dead:
            return "retired" if r.retired else "dead"
        if self.ctx.sched.engine_retiring(eid):
            return "retiring"
        return "busy" if self.ctx.sched.engine_busy(eid) else "idle"

    def engine_table(self) -> list[dict[str, Any]]:
        """One row per engine; `idle_since`: when an idle engine last reported results or
        registered (the controller's wall clock; None unless idle)."""
        sched = self.ctx.sched
        rows = []
        for r in self.engines.records.values():
            state = self.engine_state(r.eid)
            rows.append({"engineid": r.eid, "hostname": r.hostname, "pid": r.pid,
                         "properties": r.properties, "state": state,
                         "tasks_done": r.tasks_done, "failures": r.failures,
                         "capacity": sched.capacity(r.eid),
                         "idle_since": r.active_at if state == "idle" else None})
        return rows

    def task_info(self, tid: int) -> dict[str, Any]:
        """One task's state and metadata (times, engine, output, error), never its payload,
        and its `story`: the scheduler's newest moves of it, oldest first, each
        {event, from, to, why} (kept for active tasks and the most recently finished ones)."""
        ctx = self.ctx
        stored = ctx.store.result_meta(tid)  # (not its frames: they may be large)
        if stored is not None:
            meta = {k: v for k, v in stored.items() if k != "pmac"}
            ok = stored.get("status") == "ok"
            return {**meta, "tid": tid, "state": "succeeded" if ok else "failed",
                    "story": self.story(tid)}
        view = ctx.sched.task_view(tid)
        if view is None and tid in ctx.backlog:  # (queued, its row only in the store)
            rows, _ = ctx.store.load_queued([tid], keep=False)  # (None: not committed yet)
            task = rows[0][0] if rows else None
            return {"tid": tid, "state": "scheduled", "engineid": None, "attempts": 0,
                    "submitted": task.submitted if task else None, "started": None,
                    "kind": task.spec["nodes"][0]["exec"]["kind"] if task else None,
                    "story": [], "backlog": True}
        if view is None:
            return {"tid": tid, "state": "unknown"}
        running, engine, attempts, node = view
        task = ctx.store.task(tid)
        return {"tid": tid, "state": "pending" if running else "scheduled",
                "engineid": engine, "attempts": attempts,
                "submitted": task.submitted if task else None,
                "started": ctx.started.get(tid) if running else None,
                "kind": task.spec["nodes"][node]["exec"]["kind"] if task else None,
                "story": self.story(tid)}

    def story(self, tid: int) -> list[dict[str, str]]:
        return [{"event": e.event, "from": str(e.before), "to": str(e.after), "why": e.why}
                for e in self.ctx.sched.story(tid)]

    def statistics(self, now: Now) -> dict[str, Any]:
        """What the controller is doing: counters, queue, engines (with the task each one runs
        and its last heartbeat), tasks/s over the last minute, the task-duration histogram,
        refused messages by reason. `taskmill status`, /metrics and the dashboard read this."""
        ctx = self.ctx
        wall, mono = now.wall, now.mono
        c = ctx.counters
        engines = self.engine_table()
        for row in engines:
            held = ctx.activity.held_by(row["engineid"])
            row.update(current_task=held[0] if held else None, held=held,
                       last_heartbeat_ago=mono - self.engines.records[row["engineid"]].last_seen)
        return Statistics(
            time=wall, uptime=wall - c.started,
            messages_in=c.messages_in, messages_out=c.messages_out,
            submitted=c.submitted, finished=c.finished,
            engines_died=c.engines_died, engines_retired=c.engines_retired,
            engines_moved=c.engines_moved,
            tasks_lost_in_transit=c.tasks_lost_in_transit,
            argument_bytes_out=c.argument_bytes_out, refused=dict(ctx.wire.refused),
            revokes_sent=c.revokes_sent, revokes_granted=c.revokes_granted,
            queue=self.queue_status(), engines=engines,
            tasks_per_second=ctx.activity.tasks_per_second(wall),
            durations=ctx.activity.durations.as_dict(),
            backlog=len(ctx.backlog), queued_in_memory=ctx.sched.active_count(),
            queue_window=ctx.backlog.window,
            **ctx.outbox.credits.held(),
        ).as_map()
