"""Submits: new tasks in, taken back when their commit fails, and reloaded after a restart.

A `submit` arrives as its record (protocol.Submit: typed, checked as it was built) and is
checked whole before anything is stored (validation.stored_nodes); each task then
gets a taskid (or keeps the one its client chose from its lease: `tids`, checked by
leases.py; `lease` and `release` are here too), a row in the store and a place in the
scheduler, and the submit waits in the
outbox (`NewSubmit`) for the commit that stores its rows: only then is it answered with the
taskids (and, with `watch`, its results follow as `done` messages). A submit sent again after
a restart (same `key`) gets the same taskids. If that commit fails, `take_back` withdraws its
tasks everywhere (their taskids are never used) and answers StoreError.

A callable `depend` is the one payload the controller unpickles (`nodes`): it runs under the
DependRunner's deadline and a slow one is given up on (`slow_depend`). `reload` queues again
what a previous controller left unfinished in the store.

Beyond the queue window a new task is stored but kept out of memory, in the backlog
(backlog.py): `refill` reads the next ones back into the scheduler as the queue drains (as
`reload` does, in taskid order), `promote` one out of order (an abort). A task whose `after`
names a backlog task goes to the backlog too (it is read back after what it waits for); one
whose `after` is broken already goes to the scheduler, which fails it at once, and so does
one whose `after` names a run()'s leased taskid not stored yet (it waits there for that
task's submit: `after`; and a task awaited is never held in the backlog). One whose
`after` task fails while it waits in the backlog is read back at once to fail with it
(`fail_doomed`, in the commit that stores that failure: backlog.py), so that clearing the
failed result later cannot let it run.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from ..depend import BoundedDepend, DependLoadError, DependRunner
from ..errors import StoreError
from ..memory import detached
from ..protocol import EmptyReply, Lease, LeaseReply, Put, Submit, TidsReply
from ..scheduler import Node, Resume
from ..store import StoredResult, StoredTask
from ..wire import Refused, frame_len, loads
from .context import Context
from .engines import Engines
from .leases import owner_of
from .outbox import NewSubmit
from .results import Results
from .validation import BadRequest, stored_nodes

log = logging.getLogger("taskmill.controller")


class Submits:
    def __init__(self, ctx: Context, engines: Engines, results: Results,
                 depends: DependRunner, slow_depends: set[int],
                 raised_depends: dict[int, str]) -> None:
        self.ctx = ctx
        self.engines = engines
        self.results = results
        self.depends = depends
        self.slow_depends = slow_depends  # tasks whose depend callable was given up on
        self.raised_depends = raised_depends  # task -> what its depend callable raised first
        self.reloading: set[int] = set()  # tasks `reload` has still to queue again

    def submit(self, rt: bytes, req: Any, msg: Submit, frames: list[Any]) -> None:
        ctx = self.ctx
        key = msg.key
        if key is not None:
            known = ctx.store.submitted(key, resent=bool(msg.resent))
            if known is not None:  # sent again (a restart, a broken connection): same taskids
                ctx.outbox.new_submits.append(NewSubmit(rt, req, known, None, bool(msg.watch),
                                                        resent=True))
                return
        self.writable()
        try:
            parsed = self.parse(msg, frames)
            leased = None if msg.tids is None else self.leased(rt, msg)
        except BadRequest:
            if msg.tids is not None:  # (its ids are never used)
                self.results.gone(ctx.leases.burn(rt, msg.tids))
            raise
        now = ctx.now.wall
        store, counters, backlog = ctx.store, ctx.counters, ctx.backlog
        windowed = backlog.window is not None  # (else nothing goes to the backlog)
        tids = []
        for i, (stored, nodes, task_frames) in enumerate(parsed):
            tid = store.allocate() if msg.tids is None else msg.tids[i]
            # (one a task waits for goes to the scheduler: that task waits there)
            held = windowed and not ctx.sched.is_awaited(tid) and backlog.holds(
                tid, ctx.sched.active_count(), store.held_bytes,
                sum(map(frame_len, task_frames)))
            if held and stored["after"]:  # (a broken one fails it at once, in memory; one
                # that waits for a leased id not stored yet waits in the scheduler)
                waits_for, awaits, broken = self.after(stored, False)
                held = broken is None and not awaits
            store.add(StoredTask(tid, stored, task_frames, now), keep=not held)
            counters.submitted += 1
            tids.append(tid)
            if held:
                backlog.add(tid)
                if stored["after"]:  # (noted: if one of them fails, so does this task)
                    backlog.wait_for(tid, waits_for)
                store.held_from = backlog.first()  # (a restart looks from there on)
                continue
            for n in nodes:
                if isinstance(n.depend, BoundedDepend):
                    n.depend.tid = tid
            if stored["after"] or backlog.doomed:
                self.to_scheduler(tid, stored, nodes, dispatch=False)
            else:  # (to_scheduler's plain case: nothing to wait for)
                ctx.sched.submit(tid, nodes, dispatch=False)
        ctx.sched.run_pass()  # one pass for the whole batch
        if leased is not None:
            self.results.gone(leased)  # (ids it skipped)
        if msg.release:  # (its reply waits for the commit anyway)
            self.results.gone(ctx.leases.release(rt))
        if key is not None:
            ctx.store.remember_submit(key, tids)
        # Answered after the commit that stores these tasks (or refused if it fails).
        ctx.outbox.new_submits.append(NewSubmit(rt, req, tids, key, bool(msg.watch)))

    def parse(self, msg: Submit, frames: list[Any]) -> list[tuple[dict[str, Any],
                                                                list[Node], list[Any]]]:
        """Every task checked, before anything is stored: (stored spec, nodes, frames)."""
        parsed = []
        pos = 0
        for spec in msg.tasks:
            end, nodes = stored_nodes(spec, frames, pos)
            task_frames = detached(frames[pos:end])  # (kept until the task is done)
            stored = {"nodes": nodes, "after": spec.after}
            parsed.append((stored, self.nodes(stored, task_frames), task_frames))
            pos = end
        if pos != len(frames):
            raise BadRequest(f"{len(frames)} payload frames, but the tasks describe {pos}")
        return parsed

    def leased(self, rt: bytes, msg: Submit) -> list[int]:
        """The taskids a client chose from its lease (leases.py), checked and marked used."""
        assert msg.tids is not None
        if len(msg.tids) != len(msg.tasks):
            raise BadRequest(f"{len(msg.tids)} taskids for {len(msg.tasks)} tasks")
        self.claim(rt, msg.key)
        return self.ctx.leases.take(rt, msg.tids)

    def claim(self, rt: bytes, key: str | None) -> None:
        """(A keyed request of a client) The leases it held before a restart are its again."""
        if key:
            self.ctx.leases.claim(rt, owner_of(key), self.ctx.now.mono)

    def writable(self) -> None:
        """StoreError if the store's file is gone: new work would not survive a restart."""
        if self.ctx.store.lost:
            raise StoreError(self.ctx.store.lost)

    def lease(self, rt: bytes, req: Any, msg: Lease, frames: list[Any]) -> None:
        """A block of taskids for this client, answered (like a submit) after the commit
        that stores the counter past it, or refused with StoreError if that fails."""
        leases = self.ctx.leases
        known = leases.known(msg.key)  # (sent again: its answer was lost)
        if not known:
            self.writable()
        lease = leases.grant(rt, msg.n, self.ctx.now.mono, msg.key)
        self.ctx.outbox.new_submits.append(NewSubmit(rt, req, [], None, False, lease=(
            lease.start, lease.end - lease.start), resent=known))

    def release(self, rt: bytes, req: Any, msg: Lease, frames: list[Any]) -> None:
        """What is left of this client's lease goes back, answered at once: the counter
        given back is written with the next commit (which comes before the reply to any
        request that writes; if the controller is killed first, those ids stay unused)."""
        down = self.ctx.outbox.store_down_since is not None
        self.claim(rt, msg.key)
        self.results.gone(self.ctx.leases.release(rt, write=not down))
        self.ctx.outbox.reply(rt, req, EmptyReply(), now=True)

    def to_scheduler(self, tid: int, spec: dict[str, Any], nodes: list[Node],
                     cleared_ok: bool = False, **counters: Any) -> None:
        """`cleared_ok`: an `after` task with no result was cleared after it succeeded (a
        reloaded task's, or one read back from the backlog: had it failed, this task would
        have failed with it, or be doomed), rather than unknown. An `after` task still in the
        backlog (a run()'s leased taskid may come before it) is read back first: the
        scheduler waits only for tasks it holds."""
        backlog = self.ctx.backlog
        failed = backlog.doomed.pop(tid, None) if backlog.doomed else None
        if failed is not None:  # (a backlog task whose `after` task failed: see backlog.py)
            self.ctx.sched.submit(tid, nodes, after=[], broken_after=failed, **counters)
            return
        for dep in spec["after"]:
            if dep in self.ctx.backlog:
                self.promote(dep)
        active, awaits, broken = self.after(spec, cleared_ok)
        self.ctx.sched.submit(tid, nodes, after=active, broken_after=broken, awaits=awaits,
                              **counters)

    def after(self, spec: dict[str, Any],
              cleared_ok: bool) -> tuple[list[int], list[int], int | None]:
        """The `after` tasks still active (the backlog's too); those not stored yet that
        will be (a run()'s leased taskid, which reads as unfinished to every client; a task
        still to be reloaded); and one that failed (None: none did)."""
        ctx = self.ctx
        active: list[int] = []
        awaits: list[int] = []
        for dep in spec["after"]:
            if ctx.sched.is_active(dep):
                active.append(dep)
            elif ctx.leases.pending(dep) or dep in self.reloading:
                awaits.append(dep)
            else:
                meta = ctx.store.result_meta(dep)  # (not its frames: they may be large)
                if (meta is None and not cleared_ok) or (
                        meta is not None and meta.get("status") != "ok"):
                    return active, awaits, dep
        return active, awaits, None

    def nodes(self, spec: dict[str, Any], frames: list[Any]) -> list[Node]:
        """The scheduler's view of a stored task; a callable depend is unpickled here."""
        nodes = []
        for meta in spec["nodes"]:
            depend = meta.get("depend")
            if depend == "callable":
                s, e = meta["dspan"]
                own = frames[s:e]
                try:
                    self.ctx.wire.check_payload(own, meta.get("dpmac"))
                    depend = self.depends.load(lambda own=own: loads(own))
                except Refused as err:
                    raise BadRequest(f"depend payload refused: {err}") from None
                except DependLoadError as err:
                    raise BadRequest(
                        f"the controller cannot unpickle this task's depend callable: {err}; "
                        "use a dict depend, or a small function the controller can import "
                        "(not a closure over large data)") from None
                if not callable(depend):
                    raise BadRequest("depend must unpickle to a callable")
                depend = self.depends.guard(depend, self.slow_depend, self.depend_raised)
            nodes.append(Node(retries=meta.get("retries", 0), depend=depend,
                              recovery=meta.get("recovery"), timeout=meta.get("timeout")))
        return nodes

    def slow_depend(self, guard: BoundedDepend) -> None:
        """A depend callable overran its budget: it counts as False from now on."""
        self.ctx.wire.refused["slow-depend"] += 1
        if guard.tid is not None:
            self.slow_depends.add(guard.tid)
        log.warning("task %s: its depend callable took longer than %gs and is given up on (it "
                    "counts as False for every engine; the controller went on meanwhile)",
                    guard.tid, self.depends.budget)

    def depend_raised(self, guard: BoundedDepend, error: str) -> None:
        """A depend callable raised (it counts as False): its TaskTimeout will say what."""
        if guard.tid is not None:
            self.raised_depends[guard.tid] = error

    def put(self, rt: bytes, req: Any, msg: Put, frames: list[Any]) -> None:
        """One value stored once, as a finished result under a taskid of its own (kind
        `put`): tasks take it as an argument (engine_tasks.with_arguments), and engines keep
        it; `clear` of its id releases it. Answered, like a submit, after its commit."""
        ctx = self.ctx
        if msg.key is not None:
            known = ctx.store.submitted(msg.key, resent=bool(msg.resent))
            if known is not None:
                ctx.outbox.new_submits.append(NewSubmit(rt, req, known, None, False,
                                                        resent=True))
                return
        self.writable()
        now = ctx.now.wall
        tid = ctx.store.allocate()
        ctx.store.add(StoredTask(tid, {"nodes": [], "after": [], "put": True}, [], now))
        ctx.store.finish(tid, StoredResult(
            {"tid": tid, "engineid": None, "attempts": 0, "submitted": now, "completed": now,
             "started": None, "status": "ok", "kind": "put", "duration": 0.0, "stdout": "",
             "stderr": "", "pmac": msg.pmac}, list(frames)))
        if msg.key is not None:
            ctx.store.remember_submit(msg.key, [tid])
        ctx.counters.submitted += 1
        ctx.outbox.new_submits.append(NewSubmit(rt, req, [tid], msg.key, False))

    def answer(self, submits: list[NewSubmit] | None = None) -> None:
        """The submits whose tasks are now stored get their taskids (and watches)."""
        for ns in self.ctx.outbox.take_submits() if submits is None else submits:
            if ns.lease is not None:
                self.ctx.outbox.reply(ns.reply_to, ns.req, LeaseReply(*ns.lease))
                continue
            self.ctx.outbox.reply(ns.reply_to, ns.req, TidsReply(ns.tids))
            if ns.watch:
                self.results.add_waiter(ns.reply_to, ns.req, "watch", ns.tids)

    def take_back(self, e: StoreError) -> None:
        """The commit failed and every row stays queued: take back the submits it carried
        (answered with StoreError, their taskids never used); the rest waits. A submit sent
        again whose first one an earlier commit stored is answered as it was (its tasks are
        stored, and run): only one whose first one this commit carried is refused with it."""
        taken: set[int] = set()
        stored: list[NewSubmit] = []
        refused = f"the submit was not accepted, none of its tasks will run: {e}"
        no_lease = f"the lease of taskids for run() was not accepted, the task was not sent: {e}"
        leases = self.ctx.leases
        for ns in self.ctx.outbox.take_submits():
            if ns.resent:  # (a lease's: answered from its key, if its grant was not taken back)
                if taken.isdisjoint(ns.tids) and (ns.lease is None or leases.holds(ns.lease[0])):
                    stored.append(ns)
                else:  # (its first one is taken back just above: refused alike)
                    self.ctx.outbox.refuse(ns.reply_to, ns.req,
                                           refused if ns.lease is None else no_lease, "StoreError")
                continue
            if ns.lease is not None:  # (its ids are never used: they read as unknown)
                self.results.gone(leases.take_back(ns.lease[0]))
                self.ctx.store.withdraw([])  # (nothing of it is left to write)
                self.ctx.outbox.refuse(ns.reply_to, ns.req, no_lease, "StoreError")
                continue
            self.withdraw([t for t in ns.tids if t not in taken], ns.key)
            taken.update(ns.tids)
            self.ctx.counters.store_refusals += 1
            self.ctx.outbox.refuse(ns.reply_to, ns.req, refused, "StoreError")
        if stored:
            self.answer(stored)

    def withdraw(self, tids: list[int], key: str | None) -> None:
        """Take back tasks whose rows never committed: from the scheduler, the dispatches
        waiting to be sent, the activity record and the store."""
        ctx = self.ctx
        gone = set(tids)
        for tid in tids:
            ctx.backlog.remove(tid)
        ctx.store.held_from = ctx.backlog.first()
        ctx.sched.withdraw(tids)
        ctx.outbox.drop_tasks(gone)
        for tid in gone:
            ctx.started.pop(tid, None)
            ctx.activity.withdrawn(tid)
            self.results.waiters.pop(tid, None)
        self.engines.withdrawn(gone)
        ctx.store.withdraw(tids, key)
        ctx.counters.submitted -= len(gone)

    def reload(self) -> None:
        """Queue again every task a previous controller left unfinished in the store.

        A task that was running waits (`lost`) for the engine it ran on: that engine comes
        back with it (see engines.adopt), or its attempt is lost after a grace period. A
        queued task whose `after` tasks have been cleared meanwhile had them finish
        successfully (a failure would have failed it in the same commit): they count as
        done."""
        ctx = self.ctx
        n = 0
        # (The queued tasks past the window stay in the store: their taskids go to the backlog.)
        # (and those past its bytes: the first always comes, as none is active yet)
        rows = ctx.store.unfinished(ctx.backlog.window, ctx.backlog,
                                    partial(ctx.backlog.fits, 0))
        # (a task may wait for one reloaded after it: a run()'s leased taskid is not in order)
        self.reloading = {task.tid for task, _ in rows}
        for task, c in rows:
            self.reloading.discard(task.tid)
            self.requeue(task, c)
            n += 1
        self.reloading = set()
        ctx.store.held_from = ctx.backlog.first()
        self.settle_waits()
        self.engines.arm_lost()
        ctx.sched.run_pass()
        if n or ctx.backlog:
            log.info("reloaded %d unfinished task(s) from the store (%d were running: they wait "
                     "up to %gs for their engines; %d more queued wait in the store)", n,
                     sum(map(len, self.engines.lost.values())), self.engines.lost_grace(),
                     len(ctx.backlog))

    def requeue(self, task: StoredTask, c: dict[str, Any]) -> None:
        """A stored task (and its counters) back into the scheduler, not dispatched yet."""
        ctx = self.ctx
        try:
            nodes = self.nodes(task.spec, task.frames)
        except BadRequest as e:  # e.g. a depend callable this controller cannot load
            log.error("task %d cannot be reloaded: %s", task.tid, e)
            nodes = [Node(depend=lambda props: False)]
        for node in nodes:
            if isinstance(node.depend, BoundedDepend):
                node.depend.tid = task.tid
        if c["state"] == "running":
            ctx.sched.submit(task.tid, nodes, resume=Resume(
                c["node"], c["attempts"], c["tries"], c["handed_over"], lost=True),
                dispatch=False)
            self.engines.expect_lost(c.get("engine_uuid"), task.tid)
        else:
            self.to_scheduler(
                task.tid, task.spec, nodes, cleared_ok=True, resume=Resume(
                    c["node"], c["attempts"], c["tries"], c["handed_over"]),
                dispatch=False)

    # -- the backlog (backlog.py) ----------------------------------------------------------
    def refill_due(self) -> bool:
        """Whether tasks of the backlog are to be read back now (its rows are committed)."""
        backlog = self.ctx.backlog
        return bool(backlog.wanted(self.ctx.sched.active_count(), self.ctx.store.held_bytes)) \
            and not self.ctx.store.dirty()

    def refill(self) -> None:
        """Read the next tasks of the backlog back into the scheduler, in taskid order, while
        fewer than its low-water mark are active and their payload bytes are below half the
        window's (a batch a turn, bounded by count and by bytes: the store stops it before
        the task that the backlog's `fits` refuses). A row a commit has not written yet waits
        for the next turn. Who waits for them is registered first (a task may finish as it
        is submitted: a broken `after`)."""
        ctx = self.ctx
        active = ctx.sched.active_count()
        want = ctx.backlog.wanted(active, ctx.store.held_bytes)
        if not want:
            return
        tids = ctx.backlog.peek(want)
        rows, cut = ctx.store.load_queued(tids, fits=partial(ctx.backlog.fits, active))
        if not cut:
            if not ctx.store.dirty():  # (its rows are committed: its first one did not fit)
                ctx.backlog.stall(ctx.store.held_bytes)
            return
        ctx.backlog.drop_first(cut)
        ctx.store.held_from = ctx.backlog.first()
        self.results.loaded(tids[cut - 1])
        for task, c in rows:
            self.requeue(task, c)
        if len(rows) < cut:  # (cannot happen: a backlog task's row stays queued)
            found = {task.tid for task, _ in rows}
            missing = [t for t in tids[:cut] if t not in found]
            log.error("%d task(s) of the backlog were not in the store (e.g. %d): they read "
                      "as unknown", len(missing), missing[0])
            self.results.gone(missing)
        ctx.sched.run_pass()

    def settle_waits(self) -> None:
        """After a restart: the backlog's tasks wait only for tasks still active; one that
        failed dooms them now (a cleared one had succeeded: a failure dooms its backlog
        dependents in the commit that stores it)."""
        backlog, ctx = self.ctx.backlog, self.ctx
        for dep in list(backlog.waits):
            if not ctx.sched.is_active(dep):
                meta = ctx.store.result_meta(dep)
                backlog.finished(dep, meta is None or meta.get("status") == "ok")

    def fail_doomed(self) -> None:
        """Read back the backlog tasks whose `after` task failed: the scheduler fails them
        (DependencyError), and their own dependents (doomed in turn: until none is left)."""
        backlog = self.ctx.backlog
        while backlog.doomed:
            for tid in [t for t in backlog.doomed if t not in backlog]:
                del backlog.doomed[tid]  # (read back already, or withdrawn)
            for tid in sorted(backlog.doomed):
                if tid in backlog:
                    self.promote(tid)

    def promote(self, tid: int) -> None:
        """Read task `tid` back from the backlog now, out of order (to abort it, to fail it
        with what it waits for, or one that waits for it is read back). A row not written yet
        (submitted this turn) is read from memory: nothing commits before the turn's flush,
        whose commit then stores the task's row and what happened to it (an abort) at once."""
        ctx = self.ctx
        rows, _ = ctx.store.load_queued([tid], pending=True)
        ctx.backlog.remove(tid)
        ctx.store.held_from = ctx.backlog.first()
        self.results.promoted(tid)
        for task, c in rows:
            self.requeue(task, c)
        if not rows:
            self.results.gone([tid])
