"""The Scheduler: one entry point, `handle(event) -> list[Action]`, and read-only queries.

Each event record (`records.py`) has one handler here; a handler changes the `Book`
(`book.py`) through its primitives, runs a scheduling pass (`placement.py`) unless the event
says `dispatch=False`, and returns the actions the primitives collected, in order. The rules
the handlers follow are in the package docstring (`taskmill/scheduler/__init__.py`). Queries
answer from the book without changing it; nothing outside this package reads the book.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..checks import seconds
from ..defaults import DEFAULT_UNMET_TIMEOUT
from .book import (
    BUFFER_SECONDS,
    DURATION_WEIGHT,
    MAX_SLOTS,
    REJECT_SKIP_SECONDS,
    Book,
    EngineEntry,
    TaskEntry,
    added,
)
from .placement import run_pass
from .records import (
    ABORTED,
    DEPENDENCY,
    ENGINE_DIED,
    NO_ENGINE,
    OK,
    REJECTED,
    RESULT,
    UNMET_TIMEOUT,
    Abort,
    Action,
    AddEngine,
    Answer,
    Dispatch,
    Drained,
    EngineGone,
    Event,
    Interrupt,
    LostExpired,
    LostReturned,
    Retire,
    Revoke,
    RevokeAnswered,
    RunPass,
    SetProperties,
    Spin,
    Submit,
    TaskDone,
    TaskView,
    TimerFired,
    Withdraw,
)
from .states import LOST, PARKED, RUNNING, WAITING, WITHDRAWN, StoryEntry, read_story


class Scheduler:
    """See the package docstring for the rules."""

    def __init__(self, *, unmet_timeout: float = DEFAULT_UNMET_TIMEOUT, slots: int | None = None,
                 buffer_seconds: float = BUFFER_SECONDS, max_slots: int = MAX_SLOTS,
                 reject_skip: float = REJECT_SKIP_SECONDS) -> None:
        if slots is not None and slots < 1:
            raise ValueError(f"slots must be None (adaptive) or an int >= 1, not {slots!r}")
        self._book = Book(unmet_timeout=seconds("unmet_timeout", unmet_timeout, zero=True),
                          reject_skip=seconds("reject_skip", reject_skip, zero=True),
                          slots=slots, buffer_seconds=buffer_seconds, max_slots=max_slots)
        self._handlers: dict[type, tuple[str, Callable[[Any], list[Action]]]] = {
            kind: (kind.__name__, handler) for kind, handler in (
                (Submit, self._submit), (AddEngine, self._add_engine),
                (SetProperties, self._set_properties), (TaskDone, self._task_done),
                (RunPass, self._run_pass), (EngineGone, self._engine_gone),
                (RevokeAnswered, self._revoke_answered), (Withdraw, self._withdraw),
                (LostReturned, self._lost_returned), (LostExpired, self._lost_expired),
                (Abort, self._abort), (TimerFired, self._timer_fired), (Spin, self._spin),
                (Retire, self._retire))
        }

    @property
    def book(self) -> Book:
        """The scheduler's state itself (for tests and tools that look inside: change it only
        through events)."""
        return self._book

    @property
    def unmet_timeout(self) -> float:
        return self._book.unmet_timeout

    def handle(self, event: Event) -> list[Action]:
        """Take one event; return the actions the shell must carry out, in order."""
        try:
            name, handler = self._handlers[type(event)]
        except KeyError:
            raise TypeError(f"not a scheduler event: {event!r}") from None
        self._book.event = name
        return handler(event)

    # -- queries ---------------------------------------------------------------------------
    def is_active(self, tid: int) -> bool:
        return tid in self._book.tasks

    def is_awaited(self, tid: int) -> bool:
        """Whether a task waits for `tid`, which is not submitted (a Submit's `awaits`)."""
        b = self._book
        return tid in b.dependents and tid not in b.tasks

    def active_count(self) -> int:
        """How many tasks are active (not finished)."""
        return len(self._book.tasks)

    def compact(self) -> None:
        """Rebuild the indexes by taskid to their size after a burst (the same state: only
        the memory of their tables changes; see taskmill.memory)."""
        self._book.compact()

    def active_ids(self) -> list[int]:
        """The active taskids, in the order they were submitted."""
        return list(self._book.tasks)

    def scheduled_ids(self) -> list[int]:
        return sorted(t.tid for t in self._book.tasks.values() if t.state != RUNNING)

    def pending_ids(self) -> list[int]:
        return sorted(t.tid for t in self._book.tasks.values() if t.state == RUNNING)

    def counts(self) -> tuple[int, int]:
        """(scheduled, pending): waiting in the controller, handed to an engine."""
        b = self._book
        pending = sum(1 for e in b.engines.values() for tid in e.running
                      if b.is_current(tid, e.eid))
        return len(b.tasks) - pending, pending

    def task(self, tid: int) -> TaskView | None:
        """A snapshot of active task `tid` (None if it is not active here)."""
        t = self._book.tasks.get(tid)
        if t is None:
            return None
        return TaskView(t.tid, t.state, t.engine, t.node, t.tries, t.attempts,
                        tuple(sorted(t.handed_over)))

    def story(self, tid: int) -> list[StoryEntry]:
        """Why task `tid` is where it is: its newest moves (STORY_LENGTH at most), oldest
        first; for a finished task while it is among the newest STORIES_KEPT; else []."""
        b = self._book
        t = b.tasks.get(tid)
        story = t.story if t is not None else b.finished.get(tid)
        return read_story(story or ())

    def is_running_on(self, tid: int, eid: int) -> bool:
        """Whether task `tid`'s current attempt is held by engine `eid`."""
        return self._book.is_current(tid, eid)

    def has_engine(self, eid: int) -> bool:
        return eid in self._book.engines

    def capacity(self, eid: int) -> int:
        """How many tasks engine `eid` may hold now (running and buffered)."""
        return self._book.engines[eid].cap

    def engine_properties(self, eid: int) -> dict[str, Any] | None:
        e = self._book.engines.get(eid)
        return dict(e.properties) if e is not None else None

    def engine_busy(self, eid: int) -> bool:
        """Whether engine `eid` holds any task."""
        e = self._book.engines.get(eid)
        return bool(e and e.running)

    def engine_retiring(self, eid: int) -> bool:
        """Whether engine `eid` is retiring (`Retire`: it gets no new task)."""
        e = self._book.engines.get(eid)
        return bool(e and e.retiring)

    def engine_load(self, eid: int) -> list[int]:
        """The taskids an engine holds, running or buffered (aborted ones included)."""
        e = self._book.engines.get(eid)
        return list(e.running) if e else []

    def held(self, eid: int) -> list[tuple[int, int]]:
        """The (taskid, attempt) pairs engine `eid` holds, in dispatch order (aborted ones
        included)."""
        e = self._book.engines.get(eid)
        return list(e.running.items()) if e else []

    def held_map(self, eid: int) -> dict[int, int] | None:
        """What engine `eid` holds as {taskid: attempt}, in dispatch order (a copy; None:
        not an engine of the scheduler's)."""
        e = self._book.engines.get(eid)
        return dict(e.running) if e is not None else None

    def first_held(self, eid: int) -> tuple[int, int] | None:
        """The (taskid, attempt) engine `eid` holds first: the one it runs (None: nothing)."""
        e = self._book.engines.get(eid)
        return next(iter(e.running.items()), None) if e else None

    def holds(self, eid: int, tid: int, attempt: int) -> bool:
        """Whether engine `eid` holds attempt `attempt` of task `tid` (an aborted one too)."""
        e = self._book.engines.get(eid)
        return e is not None and e.running.get(tid) == attempt

    # -- events ----------------------------------------------------------------------------
    def _flush(self, dispatch: bool = True) -> list[Action]:
        b = self._book
        if dispatch:
            run_pass(b)
        out, b.out = b.out, []
        return out

    def _submit(self, ev: Submit) -> list[Action]:
        b = self._book
        tid = ev.tid
        if tid in b.tasks:
            raise ValueError(f"task {tid} is already active")
        if not ev.nodes:
            raise ValueError("a task needs at least one node")
        t = TaskEntry(tid, list(ev.nodes))
        b.tasks[tid] = t
        resume = ev.resume
        if resume is not None:
            t.node, t.attempts, t.tries = resume.node, resume.attempts, resume.tries
            if resume.handed_over:
                t.handed_over = set(resume.handed_over)
            if resume.lost:
                b.move(t, LOST, "reloaded: it was running when the controller restarted")
                return self._flush(ev.dispatch)
        if ev.broken_after is not None:
            b.finish(t, DEPENDENCY, False, detail=ev.broken_after,
                     why=f"task {ev.broken_after} it waits for failed or is unknown")
            return self._flush(ev.dispatch)
        loop = b.closes_loop(tid, ev.after)  # (awaited: tasks waiting for it wait for one)
        if loop is not None:
            b.finish(t, DEPENDENCY, False, detail=loop, why=f"task {loop} it waits for waits for it")
            return self._flush(ev.dispatch)
        b.link(t, ev.after, ev.awaits)
        if t.blocked_on:
            b.move(t, WAITING, f"waits for {len(t.blocked_on)} task(s)")
        else:
            b.make_ready(t, "submitted")
        return self._flush(ev.dispatch)

    def _add_engine(self, ev: AddEngine) -> list[Action]:
        b = self._book
        eid = ev.eid
        if eid in b.engines:
            raise ValueError(f"engine {eid} is already registered")
        e = b.engines[eid] = EngineEntry(eid, dict(ev.properties), ev.slots or b.slots,
                                         version=next(b.versions))
        b.update_capacity(e)
        for tid in ev.adopt:
            t = b.tasks.get(tid)
            if t is not None and t.state == LOST:
                t.engine = eid
                b.move(t, RUNNING, f"adopted: engine {eid} came back with it")
                e.running[tid] = t.attempts
                b.busy_slots += 1
        if len(e.running) > 1:
            b.buffering.add(eid)
        if len(e.running) < e.cap:
            b.free[eid] = None
        b.watch_head(e)
        b.fresh.add(eid)
        return self._flush()

    def _lost_returned(self, ev: LostReturned) -> list[Action]:
        b = self._book
        t = b.tasks.get(ev.tid)
        if t is not None and t.state == LOST:
            t.tries -= 1
            t.attempts -= 1
            b.make_ready(t, "its engine came back without it: it never started")
        return self._flush()

    def _lost_expired(self, ev: LostExpired) -> list[Action]:
        b = self._book
        t = b.tasks.get(ev.tid)
        if t is not None and t.state == LOST:
            b.attempt_failed(t, None, ENGINE_DIED, "its engine did not come back")
        return self._flush()

    def _set_properties(self, ev: SetProperties) -> list[Action]:
        b = self._book
        e = b.engines.get(ev.eid)
        if e is not None and e.properties != ev.properties:
            b.properties_changed(e, ev.properties)
        return self._flush()

    def _task_done(self, ev: TaskDone) -> list[Action]:
        b = self._book
        eid, tid, attempt = ev.eid, ev.tid, ev.attempt
        e = b.engines.get(eid)
        if e is None:
            return self._flush(ev.dispatch)  # a dead engine's late report: failed already
        properties, duration = ev.properties, ev.duration
        if properties is not None and properties != e.properties:
            b.properties_changed(e, properties)
        if duration is not None and duration >= 0 and e.slots is None:
            e.duration = duration if e.duration is None else (
                e.duration + DURATION_WEIGHT * (duration - e.duration))
            b.update_capacity(e)
        if e.running.get(tid) == attempt:
            b.release_slot(e, tid)
        t = b.tasks.get(tid)
        if t is None or t.state is not RUNNING or t.engine != eid or t.attempts != attempt:
            return self._flush(ev.dispatch)  # aborted, or a stale attempt
        t.engine = None
        t.steal_tried = False
        status = ev.status
        if status == OK:
            b.finish(t, RESULT, True, engineid=eid, why="ok")
        elif status == REJECTED:
            t.offered = added(t.offered, eid)
            t.attempts -= 1  # no attempt counted; the retry it used stays used (t.tries)
            if t.tries <= t.nodes[t.node].retries or not b.offered_everywhere(t):
                b.skip(t, e)
                b.make_ready(t, f"rejected by engine {eid}: skips it for {b.reject_skip:g}s")
            else:
                b.node_over(t, eid, RESULT, f"rejected by engine {eid}, every engine that "
                            "satisfies it was offered it", final_attempt=True)
        else:
            t.offered = added(t.offered, eid)
            b.attempt_failed(t, eid, RESULT, f"error on engine {eid}")
        return self._flush(ev.dispatch)

    def _run_pass(self, ev: RunPass) -> list[Action]:
        return self._flush()

    def _engine_gone(self, ev: EngineGone) -> list[Action]:
        """Its current attempts fail with ENGINE_DIED; buffered ones too (see the rules)."""
        b = self._book
        eid = ev.eid
        e = b.engines.pop(eid, None)
        if e is None:
            return self._flush()
        b.free.pop(eid, None)
        b.fresh.discard(eid)
        b.thieves.pop(eid, None)
        b.unskip_engine(e)
        for tid in list(e.running):
            b.busy_slots -= 1
            t = b.tasks.get(tid)
            if t is None or t.state is not RUNNING or t.engine != eid:
                continue
            t.engine = None
            t.steal_tried = False
            # Buffered ones too: the engine may have started them since it last reported.
            b.attempt_failed(t, eid, ENGINE_DIED, f"engine {eid} died holding it")
        e.running.clear()
        b.buffering.discard(eid)
        # (The depend answers cached for it stay in the tasks' caches: no engine added later
        # has its version, so none is read again, and a cache drops them as it grows past
        # twice the engines (Book.satisfies). Dropping them here cost a look at every active
        # task per engine gone: 18 s for 1,000 engines gone over 300,000 queued tasks.)
        return self._flush()

    def _revoke_answered(self, ev: RevokeAnswered) -> list[Action]:
        b = self._book
        eid, tid, attempt = ev.eid, ev.tid, ev.attempt
        for thief, wanted in list(b.thieves.items()):
            if wanted == (eid, tid, attempt):
                del b.thieves[thief]
                b.fresh.add(thief)
        e = b.engines.get(eid)
        if e is None or not ev.ok:
            t = b.tasks.get(tid) if e is not None else None
            if t is not None and t.engine == eid and t.attempts == attempt:
                b.note(t, f"engine {eid} keeps it (it may have started it)")
            return self._flush()
        if e.running.get(tid) == attempt:
            b.release_slot(e, tid)
        t = b.tasks.get(tid)
        if t is not None and t.state is RUNNING and t.engine == eid and t.attempts == attempt:
            t.engine = None
            t.steal_tried = False
            t.tries -= 1
            t.attempts -= 1
            b.make_ready(t, f"engine {eid} gave it back unstarted")
        return self._flush()

    def _withdraw(self, ev: Withdraw) -> list[Action]:
        b = self._book
        gone = set(ev.tids)
        orphans = []
        for tid in gone:
            t = b.tasks.pop(tid, None)
            if t is None:  # (never submitted: who awaits it fails)
                orphans.extend((c, tid) for c in b.dependents.pop(tid, ()) if c not in gone)
                continue
            b.forget(t)
            if t.state is RUNNING and t.engine is not None:
                e = b.engines.get(t.engine)
                if e is not None and tid in e.running:
                    b.release_slot(e, tid)
            b.move(t, WITHDRAWN, "its submit was not stored")
            orphans.extend((c, tid) for c in b.dependents.pop(tid, ()) if c not in gone)
        for thief, (_, tid, _) in list(b.thieves.items()):
            if tid in gone:
                del b.thieves[thief]
                b.fresh.add(thief)
        for child_id, lost in orphans:
            child = b.tasks.get(child_id)
            if child is not None:
                b.finish(child, DEPENDENCY, False, detail=lost,
                         why=f"task {lost} it waits for was withdrawn (or never stored)")
        return self._flush()

    def _abort(self, ev: Abort) -> list[Action]:
        b = self._book
        tid = ev.tid
        t = b.tasks.get(tid)
        if t is None:
            return [Answer(False)]
        if t.state is RUNNING and t.engine is not None:
            e = b.engines.get(t.engine)
            b.out.append(Interrupt(t.engine, tid, ABORTED,
                                   e.running.get(tid) if e is not None else None))
        b.finish(t, ABORTED, False, engineid=t.engine, why="aborted")
        actions = self._flush()
        actions.append(Answer(True))
        return actions

    def _timer_fired(self, ev: TimerFired) -> list[Action]:
        b = self._book
        key = ev.key
        if key and key[0] == "slow":
            e = b.engines.get(key[1])
            if e is not None and e.watched is not None:
                watched, e.watched = e.watched, None
                if e.running and next(iter(e.running.items())) == watched:
                    e.duration = max(e.duration or 0.0, b.slow_after)
                    b.update_capacity(e)
                    if len(e.running) >= e.cap:
                        b.free.pop(e.eid, None)
                else:  # that task is done: watch the one running now
                    b.watch_head(e)
        elif key and key[0] == "skip" and len(key) == 4:
            _, tid, eid, _token = key
            t = b.tasks.get(tid)
            if t is not None and t.skip.get(eid) == key:
                del t.skip[eid]
                e = b.engines.get(eid)
                if e is not None:
                    e.skipped_by.discard(tid)
                if t.state == PARKED:  # the pass gives it to that engine if it is free
                    b.parked.discard(tid)
                    b.make_ready(t, f"its skip of engine {eid} is over")
        elif key and key[0] == "unmet":
            _, tid, token = key
            if b.unmet.get(tid) == token:
                del b.unmet[tid]
                t = b.tasks.get(tid)
                if t is not None and t.state == PARKED and b.busy_slots == 0:
                    if not b.engines:  # (the timer runs with none at all: park_depends)
                        b.finish(t, UNMET_TIMEOUT, False, detail=NO_ENGINE, why=(
                            f"no engine satisfied it for {b.unmet_timeout:g}s: none is "
                            "registered"))
                    else:
                        b.finish(t, UNMET_TIMEOUT, False, why=(
                            f"no engine satisfied it for {b.unmet_timeout:g}s while every "
                            "engine was idle"))
        return self._flush()

    def _retire(self, ev: Retire) -> list[Action]:
        """No new task for it; each task it holds that it may not have started (all but the
        first; the first too, when it may still be waiting for a lease) is asked back; once it
        holds nothing, `Drained`. A task it gives back is queued again, uncounted."""
        b = self._book
        e = b.engines.get(ev.eid)
        if e is None:
            return [*self._flush(), Answer(False)]
        if not e.retiring:
            e.retiring = True
            b.free.pop(e.eid, None)
            b.fresh.discard(e.eid)
            b.buffering.discard(e.eid)
            b.thieves.pop(e.eid, None)  # its own steal: that task goes back to the queue
            for tid, attempt in e.running.items():
                t = b.tasks.get(tid)
                if (t is not None and t.state is RUNNING and t.engine == e.eid
                        and t.attempts == attempt and not t.steal_tried):
                    t.steal_tried = True
                    b.note(t, f"engine {e.eid} retires: it is asked to give it back "
                              f"(attempt {attempt})")
                    b.out.append(Revoke(e.eid, tid, attempt))
            if not e.running:
                b.out.append(Drained(e.eid))
        return [*self._flush(), Answer(True)]

    def _spin(self, ev: Spin) -> list[Action]:
        actions = self._flush()
        actions.append(Answer(any(isinstance(a, Dispatch) for a in actions)))
        return actions

