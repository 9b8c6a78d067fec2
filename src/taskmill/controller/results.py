"""Results: what a finished task stores, and the clients waiting for it.

A scheduler `Finish` becomes one stored result (`finish`): the metadata is the engine's own
entry when the engine's report is the result (`RESULT`: the report travels with the Finish,
see sched_calls.task_done), else the controller writes the failure itself (`failure_text`:
EngineDied, TaskTimeout, TaskAborted, DependencyError). Then the waiters of that task wake.

A waiter is a client request that waits for tasks: `result` (one reply with every result),
`wait` (one reply, with the results of its first tasks up to its `budget` of bytes: a
barrier's, kept by the client for get_task_result), `watch` (one `done` entry per task as it finishes, batched per turn
in the outbox, within the client's credit: credit.py). A client's `bye` (or its silence:
clients.py) ends its waiters, watches or not, and drops the results queued for it.
Replies with results go after the commit that stores them, split below the size limit
(outbox.within_limit); each is a protocol.ResultsReply (or a Done message) whose entries are
the stored metadata plus `nframes` (a client reads each into an Outcome).
A request waiting for tasks of the backlog (backlog.py) is registered for each of them only
as it is read back into the scheduler (`loaded`, `promoted`): until then it is one entry of
`deferred`, not one per task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol import ResultsReply
from ..scheduler import (
    ABORTED,
    DEPENDENCY,
    ENGINE_DIED,
    NO_ENGINE,
    RESULT,
    UNMET_TIMEOUT,
    Finish,
)
from ..store import StoredResult, compact_tids
from ..wire import frame_len
from .backlog import DeferredWatches
from .context import Context
from .sched_calls import Report

WAIT_RESULTS_MAX = 100_000  # results a wait's reply carries at most (see reply_wait)
META_SIZE = 512  # bytes a result's metadata counts for, against a wait's budget


@dataclass(slots=True)
class Waiter:
    reply_to: bytes
    req: int
    mode: str  # "result": one reply with every result; "wait": one empty reply; "watch": one per task
    tids: Sequence[int]  # (a range when they run on by one: a submit's, a flood's)
    remaining: int  # how many of its tasks are still active (each wakes it once)
    budget: int = 0  # ("wait") bytes of results its reply may carry


@dataclass(slots=True)
class FailureContext:
    """What the controller knows of why a task failed without an engine's report."""

    death_reasons: dict[int, tuple[str, str]]  # engine id -> (host and pid, why it is dead)
    heard_last: dict[int, float]  # engine id -> when that dead engine was last heard (mono)
    lost_expired: set[int]  # tasks whose engine did not come back after a restart
    lost_grace: Callable[[], float]
    slow_depends: set[int]  # tasks whose depend callable was given up on
    depend_budget: float
    unmet_timeout: float
    raised_depends: dict[int, str]  # task -> what its depend callable raised first


def failure_text(a: Finish, node: dict[str, Any], started: float | None, now: float,
                 why: FailureContext) -> tuple[str, str, str]:
    """(status, error type, message) of a task the controller finishes itself (`started`,
    `now`: monotonic, so a step of the wall clock never turns a death into a timeout)."""
    if a.outcome == ENGINE_DIED and a.engineid is None and a.tid in why.lost_expired:
        why.lost_expired.discard(a.tid)
        return "error", "EngineDied", (
            f"the controller restarted while task {a.tid} was with an engine (running there, "
            f"or waiting: perhaps started), and that engine did not come back within "
            f"{why.lost_grace():g}s")
    if a.outcome == ENGINE_DIED:
        who, reason = why.death_reasons.get(a.engineid, ("", ""))
        engine = f"engine {a.engineid} ({who})" if who else f"engine {a.engineid}"
        timeout = node.get("timeout")
        if timeout and started is not None and now - started > timeout:
            return "error", "TaskTimeout", (
                f"task {a.tid} ran past its timeout of {timeout:g}s and did not let the "
                f"interruption through, so {engine} was ended ({reason})")
        return "error", "EngineDied", (
            f"{engine} died while it held task {a.tid} (running it, or with it waiting "
            f"there, perhaps started: {reason})")
    if a.outcome == ABORTED:
        return "aborted", "TaskAborted", f"task {a.tid} was aborted"
    if a.outcome == UNMET_TIMEOUT and a.tid in why.slow_depends:
        why.slow_depends.discard(a.tid)
        return "unmet_timeout", "TaskTimeout", (
            f"task {a.tid}: its depend callable took longer than {why.depend_budget:g}s, "
            "so it counts as False for every engine and no engine could take the task; a "
            "depend must answer at once (use a dict depend, or a quick test of the "
            "properties)")
    if a.outcome == UNMET_TIMEOUT and a.detail == NO_ENGINE:
        return "unmet_timeout", "TaskTimeout", (
            f"task {a.tid}: no engine satisfied its depend for {why.unmet_timeout:g}s, and no "
            "engine is registered at all (a task with a depend counts as unmet then too); "
            "start engines with the properties it needs, or, if they take longer than that "
            "to start (a batch queue, adapt(minimum=0)), a larger --unmet-timeout "
            "(Cluster(unmet_timeout=...))")
    if a.outcome == UNMET_TIMEOUT:
        raised = why.raised_depends.pop(a.tid, None)
        return "unmet_timeout", "TaskTimeout", (
            f"task {a.tid}: no engine satisfied its depend for {why.unmet_timeout:g}s while "
            "every engine was idle; start an engine with the properties it needs, or relax "
            "the depend" + ("" if raised is None else
                            f" (it raised {raised}, which counts as False: a property some "
                            "engines lack? props.get(name) gives None instead)"))
    if a.outcome == DEPENDENCY:
        return "dependency", "DependencyError", (
            f"task {a.tid} did not run: task {a.detail}, which it waits for (after=, or a "
            "future or a put() value among its arguments), "
            "failed, was aborted, or is unknown (a put() value is gone once released or "
            "cleared: clear() with no ids drops put() values too)")
    raise AssertionError(f"unknown outcome {a.outcome}")


def stored_entry(r: StoredResult) -> tuple[dict[str, Any], list[Any]]:
    """A stored result's entry (its metadata and frame count) and frames, as replies carry."""
    return {**r.meta, "nframes": len(r.frames)}, r.frames


class Results:
    def __init__(self, ctx: Context, why: FailureContext) -> None:
        self.ctx = ctx
        self.why = why
        self.waiters: dict[int, list[Waiter]] = {}
        # client -> its waiters with tasks to come (at least: a withdrawn task's are not
        # taken off), so that a client that leaves without any costs no look at the waiters
        self.waiting: dict[bytes, int] = {}
        self.deferred = DeferredWatches()  # waiters for tasks of the backlog

    def finish(self, a: Finish, report: Report | None) -> None:
        """Store the result of a finished task and wake its waiters."""
        ctx = self.ctx
        task = ctx.store.task(a.tid)
        now = ctx.now.wall
        at = ctx.started.pop(a.tid, None)
        dispatched = None if at is None else at.mono
        started = None if at is None else at.wall
        since = ctx.running_since.pop(a.tid, None)
        submitted = task.submitted if task else now
        frames: list[Any] = []
        if a.outcome == RESULT:
            assert report is not None, "a RESULT finish comes only from an engine report"
            entry, frames = report
            # The engine's entry (protocol.ResultEntry) becomes the stored metadata, whose
            # shape is protocol.ResultMeta.
            meta: dict[str, Any] = {
                "tid": a.tid, "engineid": a.engineid, "attempts": a.attempts,
                "submitted": submitted, "completed": now, "started": started,
                "status": "ok" if a.ok else "error", "kind": entry.kind,
                "error": entry.error,
                "duration": 0.0 if entry.duration is None else entry.duration,
                "stdout": entry.stdout, "stderr": entry.stderr, "pmac": entry.pmac,
            }
        else:
            node = task.spec["nodes"][a.node] if task else {}
            status, etype, message = failure_text(a, node, dispatched, ctx.now.mono, self.why)
            meta = {
                "tid": a.tid, "engineid": a.engineid, "attempts": a.attempts,
                "submitted": submitted, "completed": now, "started": started,
                "duration": self.ran_for(a, since, ctx.now.mono), "stdout": "", "stderr": "",
                "kind": node["exec"]["kind"] if node else "map", "status": status,
                "error": {"type": etype, "message": message, "controller": True,
                          "traceback": ""},
            }
        if self.why.slow_depends:
            self.why.slow_depends.discard(a.tid)
        if self.why.raised_depends:
            self.why.raised_depends.pop(a.tid, None)
        result = StoredResult(meta, list(frames))
        ctx.store.finish(a.tid, result)
        if ctx.backlog.waits:  # (a failure dooms the backlog tasks after it: backlog.py)
            ctx.backlog.finished(a.tid, meta["status"] == "ok")
        ctx.counters.finished += 1
        ctx.activity.finished(a.tid, meta["status"], now, engineid=a.engineid,
                              duration=meta["duration"] if a.outcome == RESULT else None,
                              error=meta["error"])
        ws = self.waiters.pop(a.tid, None)
        if ws is not None:
            for w in ws:  # (the result just stored is what the store would read back)
                self.wake(w, a.tid, result)

    def ran_for(self, a: Finish, since: tuple[int, float] | None, now: float) -> float:
        """How long the attempt of a task the controller ends (aborted, its engine dead) is
        known to have run: from when its engine was known to run it (ctx.running_since) to
        now, or to when that engine was last heard if it died; 0.0 if it never ran there
        (buffered behind another task, or no engine had it)."""
        if since is None or a.engineid is None or since[0] != a.attempts:
            return 0.0
        end = self.why.heard_last.get(a.engineid, now) if a.outcome == ENGINE_DIED else now
        return max(0.0, min(end, now) - since[1])

    # -- waiters ---------------------------------------------------------------------------
    def entry(self, tid: int, stored: bool = False) -> tuple[dict[str, Any] | None, list[Any]]:
        """A task's result entry and frames (None: still active, or with `stored` finished
        but not yet committed; `unknown`: never was, or cleared)."""
        if stored and self.ctx.store.unsaved(tid):
            return None, []
        r = self.ctx.store.result(tid)
        if r is not None:
            return stored_entry(r)
        if self.ctx.sched.is_active(tid) or self.ctx.leases.pending(tid):
            return None, []
        return {"tid": tid, "unknown": True, "nframes": 0}, []

    def committed(self, tids: Sequence[int]) -> bool:
        """Whether every result of `tids` that is stored is committed (none is still to be
        written): a reply with them needs no commit, and goes while the store cannot write."""
        store = self.ctx.store
        return not store.dirty() or not any(map(store.unsaved, tids))

    def reply_results(self, rt: bytes, req: Any, tids: Sequence[int],
                      asked: bool = False) -> None:
        """The results of `tids`, sent after this turn's commit, or (all of them committed
        before: `committed`) even if it fails. A request that `asked` for them as they are
        (get_task_result(block=False)) is answered at once while the store cannot write,
        with what is committed (a result not yet written reads as unfinished) rather than
        its answer waiting for the store."""
        outbox = self.ctx.outbox
        down = asked and outbox.store_down_since is not None
        committed = not down and self.committed(tids)
        entries, out = [], []
        for tid in tids:
            meta, frames = self.entry(tid, stored=down)
            entries.append(meta)
            out.extend(frames)
        parts = outbox.within_limit(entries, out)
        for i, (part, part_frames) in enumerate(parts):
            # (the client joins the pieces of a reply marked `more`)
            outbox.reply(rt, req, ResultsReply(part, more=i < len(parts) - 1), part_frames,
                         now=down, committed=committed)

    def add_waiter(self, rt: bytes, req: Any, mode: str, tids: list[int],
                   budget: int = 0) -> None:
        is_active, leased = self.ctx.sched.is_active, self.ctx.leases.pending
        pending = {t for t in tids if is_active(t) or leased(t)}
        w = Waiter(rt, req, mode, compact_tids(tids), len(pending), budget)
        if mode == "watch":
            for tid in tids:
                if tid not in pending:
                    self.send_watch(w, tid)
        if not pending:
            if mode == "result":
                self.reply_results(rt, req, tids)
            elif mode == "wait":
                self.reply_wait(w)
            return
        self.waiting[rt] = self.waiting.get(rt, 0) + 1
        if mode == "watch":
            self.ctx.outbox.credits.watch(rt)
        backlog = self.ctx.backlog
        later = sorted(t for t in pending if t in backlog) if backlog.n else []
        if later:
            self.deferred.add(w, later)
        waiters = self.waiters
        for t in pending.difference(later) if later else pending:
            waiters.setdefault(t, []).append(w)

    def loaded(self, last: int) -> None:
        """The backlog's tasks up to taskid `last` are read back: their waiters register."""
        waiters = self.waiters
        for tid, w in self.deferred.upto(last):
            waiters.setdefault(tid, []).append(w)

    def promoted(self, tid: int) -> None:
        """Task `tid` left the backlog out of order (an abort): its waiters register."""
        for w in self.deferred.take(tid):
            self.waiters.setdefault(tid, []).append(w)

    def gone(self, tids: Iterable[int]) -> None:
        """These leased ids will not be stored (leases.py): who waits for them hears they
        are unknown, and a task that waits for one (`after`) fails with DependencyError."""
        waiters, sched = self.waiters, self.ctx.sched
        is_active, is_awaited = sched.is_active, sched.is_awaited
        tids = list(tids)
        never = [t for t in tids if is_awaited(t) and not is_active(t)]
        if never:  # (the scheduler finishes those tasks: `finish` is told)
            sched.withdraw(never)
        if not waiters:
            return
        for tid in tids:
            if tid in waiters and not is_active(tid):
                for w in waiters.pop(tid):
                    self.wake(w, tid)

    def wake(self, w: Waiter, tid: int, result: StoredResult | None = None) -> None:
        """Task `tid` of `w` finished (with `result`, just stored; None: read it back)."""
        w.remaining -= 1
        if not w.remaining:
            rt = w.reply_to
            n = self.waiting.pop(rt, 0) - 1
            if n > 0:
                self.waiting[rt] = n
        if w.mode == "watch":
            self.send_watch(w, tid, result)
            if not w.remaining:
                self.ctx.outbox.credits.watched(w.reply_to)
        elif not w.remaining:
            if w.mode == "result":
                self.reply_results(w.reply_to, w.req, w.tids)
            else:
                self.reply_wait(w)

    def forget_client(self, rt: bytes) -> None:
        """That client is gone (`bye`, or forgotten for its silence): its waiters end, and
        what waits to be sent to it is dropped. (A look at every waiter, only when it leaves
        with requests unfinished.)"""
        self.ctx.outbox.credits.forget(rt)
        if not self.waiting.pop(rt, 0):
            return
        self.deferred.forget(rt)
        for tid, ws in list(self.waiters.items()):
            kept = [w for w in ws if w.reply_to != rt]
            if len(kept) < len(ws):
                if kept:
                    self.waiters[tid] = kept
                else:
                    del self.waiters[tid]

    def reply_wait(self, w: Waiter) -> None:
        """A wait is over: its reply carries the results of its first tasks (in its order,
        up to its budget of bytes, at most WAIT_RESULTS_MAX)."""
        entries: list[Any] = []
        out: list[Any] = []
        size = 0
        for tid in w.tids[:WAIT_RESULTS_MAX] if w.budget else ():
            meta, frames = self.entry(tid)
            if meta is None or meta.get("unknown"):
                continue
            size += META_SIZE + sum(map(frame_len, frames))
            if size > w.budget:
                break
            entries.append(meta)
            out.extend(frames)
        parts = self.ctx.outbox.within_limit(entries, out)
        committed = self.committed(w.tids)  # (every task's, not only those it carries)
        for i, (part, part_frames) in enumerate(parts):
            self.ctx.outbox.reply(w.reply_to, w.req, ResultsReply(part, i < len(parts) - 1),
                                  part_frames, committed=committed)

    def send_watch(self, w: Waiter, tid: int, result: StoredResult | None = None) -> None:
        meta, frames = stored_entry(result) if result is not None else self.entry(tid)
        if meta is None:  # (cannot happen: a watch is woken when its task finishes)
            meta = {"tid": tid, "active": True, "nframes": 0}
        # (sent when that client's credit allows: credit.py)
        self.ctx.outbox.credits.offer(w.reply_to, w.req, tid, meta, frames)
