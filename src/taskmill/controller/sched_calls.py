"""Every call into the scheduler and every read of its state, in one place.

The scheduler (the scheduler/ package) owns task and engine state: which tasks wait, run where, with
which attempt and retries, and which engines hold what. The controller's parts never touch it
directly: they say an event here (`submit`, `task_done`, `remove_engine`, ...) and the actions
it returns are carried out at once by the core's `apply` (given at construction), or they ask
a question (`held`, `counters`, `engine_busy`, ...). The result an engine reported travels with
`task_done` as an explicit `report` to the `Finish` it may cause (no side channel).

So a change of the scheduler's interface is a change of this module alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..protocol import ResultEntry
from ..scheduler import (
    RUNNING,
    Abort,
    AddEngine,
    EngineGone,
    LostExpired,
    LostReturned,
    Node,  # (the nodes `submit` takes)
    Resume,
    Retire,
    RevokeAnswered,
    RunPass,
    Scheduler,
    Spin,
    StoryEntry,
    Submit,
    TaskDone,
    TimerFired,
    Withdraw,
    split_answer,
)
from .backlog import Backlog

# What an engine reported for an attempt: its result entry and the entry's frames.
Report = tuple[ResultEntry, list[Any]]
Apply = Callable[[list[Any], "Report | None"], None]
RUN_PASS = RunPass()  # (a record without fields: one serves every pass)


class SchedulerCalls:
    def __init__(self, sched: Scheduler, apply: Apply, backlog: Backlog | None = None) -> None:
        self.sched = sched
        self.apply = apply
        # Queued tasks kept in the store (backlog.py): active, queued, to every question
        # below; the scheduler hears of them only once read back.
        self.backlog = backlog if backlog is not None else Backlog(None)
        # Tasks active in memory (the backlog's not counted): asked every loop turn, so the
        # scheduler's own query, without a call around it.
        self.active_count: Callable[[], int] = sched.active_count

    # -- events: each one's actions are carried out before it returns ----------------------
    def submit(self, tid: int, nodes: list[Node], *, after: Iterable[int] = (),
               broken_after: int | None = None, resume: Resume | None = None,
               dispatch: bool = True, awaits: Iterable[int] = ()) -> None:
        actions = self.sched.handle(Submit(tid, nodes, after=after, broken_after=broken_after,
                                           resume=resume, dispatch=dispatch, awaits=awaits))
        if actions:  # (a submit without a pass has none, unless it fails at once)
            self.apply(actions, None)

    def run_pass(self) -> None:
        actions = self.sched.handle(RUN_PASS)
        if actions:  # (a pass after a batch of results often has nothing to do)
            self.apply(actions, None)

    def add_engine(self, eid: int, properties: dict[str, Any], adopt: list[int]) -> None:
        self.apply(self.sched.handle(AddEngine(eid, properties, adopt=adopt)), None)

    def task_done(self, eid: int, tid: int, attempt: int, status: str,
                  properties: dict[str, Any] | None, duration: float | None,
                  report: Report) -> None:
        self.apply(self.sched.handle(TaskDone(eid, tid, attempt, status, properties, duration,
                                              dispatch=False)), report)

    def revoke_answered(self, eid: int, tid: int, attempt: int, ok: bool) -> None:
        self.apply(self.sched.handle(RevokeAnswered(eid, tid, attempt, ok)), None)

    def remove_engine(self, eid: int) -> None:
        self.apply(self.sched.handle(EngineGone(eid)), None)

    def lost_returned(self, tid: int) -> None:
        self.apply(self.sched.handle(LostReturned(tid)), None)

    def lost_expired(self, tid: int) -> None:
        self.apply(self.sched.handle(LostExpired(tid)), None)

    def withdraw(self, tids: Iterable[int]) -> None:
        self.apply(self.sched.handle(Withdraw(tids)), None)

    def timer_fired(self, key: tuple) -> None:
        self.apply(self.sched.handle(TimerFired(key)), None)

    def abort(self, tid: int) -> bool:
        """Whether the task was active (queued or running): it is aborted."""
        found, actions = split_answer(self.sched.handle(Abort(tid)))
        if found:
            self.apply(actions, None)
        return found

    def retire(self, eid: int) -> bool:
        """Take engine `eid` out of scheduling (False: not an engine of the scheduler's)."""
        found, actions = split_answer(self.sched.handle(Retire(eid)))
        self.apply(actions, None)
        return found

    def spin(self) -> bool:
        """Whether the pass dispatched anything."""
        dispatched, actions = split_answer(self.sched.handle(Spin()))
        self.apply(actions, None)
        return dispatched

    # -- questions -------------------------------------------------------------------------
    def compact(self) -> None:
        self.sched.compact()

    def is_active(self, tid: int) -> bool:
        return self.sched.is_active(tid) or tid in self.backlog

    def is_awaited(self, tid: int) -> bool:
        """Whether a task waits for `tid`, not submitted yet (a run()'s leased taskid)."""
        return self.sched.is_awaited(tid)

    def counts(self) -> tuple[int, int]:
        """(scheduled, pending)"""
        scheduled, pending = self.sched.counts()
        return scheduled + len(self.backlog), pending

    def scheduled_ids(self) -> list[int]:
        ids = self.sched.scheduled_ids()
        return sorted([*ids, *self.backlog.ids()]) if self.backlog else ids

    def pending_ids(self) -> list[int]:
        return self.sched.pending_ids()

    def held(self, eid: int) -> dict[int, int] | None:
        """tid -> attempt of what engine `eid` holds, in dispatch order (None: not an engine
        of the scheduler's)."""
        return self.sched.held_map(eid)

    def has_engine(self, eid: int) -> bool:
        return self.sched.has_engine(eid)

    def holds(self, eid: int, tid: int, attempt: int) -> bool:
        return self.sched.holds(eid, tid, attempt)

    def first_held(self, eid: int) -> tuple[int, int] | None:
        return self.sched.first_held(eid)

    def is_running_on(self, tid: int, eid: int) -> bool:
        return self.sched.is_running_on(tid, eid)

    def engine_busy(self, eid: int) -> bool:
        return self.sched.engine_busy(eid)

    def engine_retiring(self, eid: int) -> bool:
        return self.sched.engine_retiring(eid)

    def engine_load(self, eid: int) -> list[int]:
        return self.sched.engine_load(eid)

    def capacity(self, eid: int) -> int:
        """How many tasks engine `eid` may hold (0: not an engine of the scheduler's)."""
        return self.sched.capacity(eid) if self.sched.has_engine(eid) else 0

    def attempts(self, tid: int) -> int | None:
        """The number of the task's current attempt (None: not an active task)."""
        view = self.sched.task(tid)
        return view.attempts if view is not None else None

    def counters(self, tid: int) -> tuple[int, int, int, list[int]]:
        """(node, attempts, tries, handed_over) of an active task, as the store keeps them."""
        view = self.sched.task(tid)
        assert view is not None, f"task {tid} is not active"
        return view.node, view.attempts, view.tries, list(view.handed_over)

    def task_view(self, tid: int) -> tuple[bool, int | None, int, int] | None:
        """(running, engine, attempts, node) of an active task (None: not active)."""
        view = self.sched.task(tid)
        if view is None:
            return None
        return view.state == RUNNING, view.engine, view.attempts, view.node

    def story(self, tid: int) -> list[StoryEntry]:
        """Why the task is where it is (the scheduler's newest moves of it, oldest first)."""
        return self.sched.story(tid)
