"""The scheduler's book: every task and engine it holds, and the moves that keep it consistent.

`Book` owns the state (tasks, engines, the ready heap, parked tasks, free engines, timers'
tokens, the actions of the event being handled) and the primitives the event handlers
(`machine.py`) and the scheduling pass (`placement.py`) share: moving a task to a new state
(through the transition table, writing its story), freeing a slot, retrying or handing over
a failed node, skips, and finishing a task with its dependents. Primitives only append
actions to `Book.out`; `Scheduler.handle` returns them. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..memory import compact
from .records import (
    DEPENDENCY,
    Action,
    ArmTimer,
    CancelTimer,
    Drained,
    Finish,
    Node,
)
from .states import (
    ENTRY,
    FINISHED,
    NAMES,
    NEW,
    READY,
    STORY_ITEMS,
    TRANSITIONS,
    WAITING,
    FinishedStories,
    SchedulerBug,
    Story,
    TaskState,
    why_text,
)

# Adaptive prefetch: how much buffered work an engine may hold, and the moving average.
BUFFER_SECONDS = 0.002
MAX_SLOTS = 64
DURATION_WEIGHT = 0.25  # of the newest duration in the moving average
# Properties the controller sets for each engine (task code cannot change them).
FIXED_PROPERTIES = frozenset({"engineid", "hostname", "pid"})
REJECT_SKIP_SECONDS = 1.0  # how long a task skips an engine that rejected it (the seed's pause)
NO_ENGINES: frozenset[int] = frozenset()  # a TaskEntry's empty sets, shared (see `added`)


def added(s: AbstractSet[int], item: int) -> set[int]:
    """`s` with `item` in it: the set itself, or a new one in place of the shared empty one
    (`t.avoid = added(t.avoid, eid)`)."""
    if type(s) is frozenset:
        return {*s, item}
    s.add(item)  # type: ignore[attr-defined]
    return s  # type: ignore[return-value]


@dataclass(slots=True, init=False)
class TaskEntry:
    """One active task. `tries` and `attempts`: see `records` (each means one thing).
    (Its `__init__` is written out: one per task, a third cheaper than the generated one.)"""

    tid: int
    nodes: list[Node]
    node: int = 0
    state: TaskState = NEW
    tries: int = 0  # of the current node's retries budget, used
    attempts: int = 0  # times its code may have run (the whole chain); the attempt number
    engine: int | None = None
    # The sets of engines are the shared NO_ENGINES until they get one (most never do: an
    # empty set costs 216 bytes a task); `added` puts one in.
    avoid: AbstractSet[int] = NO_ENGINES
    offered: AbstractSet[int] = NO_ENGINES  # engines that reported an attempt of the node
    skip: dict[int, tuple] = field(default_factory=dict)  # engine -> its skip timer's key
    handed_over: AbstractSet[int] = NO_ENGINES  # (nodes)
    blocked_on: AbstractSet[int] = NO_ENGINES  # (tasks)
    dep_cache: dict[int, tuple[int, bool]] = field(default_factory=dict)
    steal_tried: bool = False  # a revoke of the current attempt was sent
    story: Story = ()  # see Book.tell

    def __init__(self, tid: int, nodes: list[Node]) -> None:
        self.tid = tid
        self.nodes = nodes
        self.node = 0
        self.state = NEW
        self.tries = 0
        self.attempts = 0
        self.engine = None
        self.avoid = NO_ENGINES
        self.offered = NO_ENGINES
        self.skip = {}
        self.handed_over = NO_ENGINES
        self.blocked_on = NO_ENGINES
        self.dep_cache = {}
        self.steal_tried = False
        self.story = ()


@dataclass(slots=True)
class EngineEntry:
    eid: int
    properties: dict[str, Any]
    slots: int | None  # None: adaptive (see the package docstring)
    # Which properties it has (a callable depend's answer is cached under it): unique among
    # every engine the book ever had, so an answer cached for a gone engine never matches
    # another one given the same id (see Book.versions)
    version: int = 0
    running: dict[int, int] = field(default_factory=dict)  # tid -> attempt, dispatch order
    duration: float | None = None  # moving average of the durations it reported
    cap: int = 1  # how many tasks it may hold now (see Book.update_capacity)
    watched: tuple[int, int] | None = None  # the (tid, attempt) the `slow` timer watches
    skipped_by: set[int] = field(default_factory=set)  # tasks that skip it (they rejected it)
    retiring: bool = False  # taken out of scheduling (Retire): never free, never a victim


class Book:
    """The scheduler's state; see the module docstring."""

    __slots__ = ("unmet_timeout", "reject_skip", "slots", "buffer_seconds", "slow_after",
                 "max_slots", "thieves", "tasks", "engines", "ready", "parked", "free", "fresh",
                 "dependents", "busy_slots", "buffering", "unmet", "token", "out", "event",
                 "finished", "versions")

    def __init__(self, *, unmet_timeout: float, reject_skip: float, slots: int | None,
                 buffer_seconds: float, max_slots: int) -> None:
        self.unmet_timeout = unmet_timeout
        self.reject_skip = reject_skip
        self.slots = slots
        self.buffer_seconds = buffer_seconds
        self.slow_after = 2 * buffer_seconds
        self.max_slots = max_slots
        # idle engine -> the (engine, tid, attempt) it asked back for it
        self.thieves: dict[int, tuple[int, int, int]] = {}
        self.tasks: dict[int, TaskEntry] = {}
        self.engines: dict[int, EngineEntry] = {}
        self.ready: list[int] = []
        self.parked: set[int] = set()
        self.free: dict[int, None] = {}  # engines with a free slot, longest free first
        self.fresh: set[int] = set()  # engines freed or changed since the last pass
        self.dependents: dict[int, list[int]] = {}
        self.busy_slots = 0
        # Engines that may hold a task an idle engine could ask back (steal victims): added
        # when a task is buffered there, dropped when it holds fewer than two or a pass finds
        # none there to ask back (only buffering a task makes one: see placement.steal)
        self.buffering: set[int] = set()
        self.unmet: dict[int, int] = {}  # tid -> timer token
        self.token = 0
        self.out: list[Action] = []
        self.event = ""  # the name of the event being handled (for the stories)
        self.finished = FinishedStories()
        self.versions = itertools.count(1)  # engines' property versions (EngineEntry.version)

    def compact(self) -> None:
        """Rebuild the indexes by taskid to their size (after a burst: see taskmill.memory)."""
        for index in (self.tasks, self.dependents, self.unmet, self.parked):
            compact(index)

    # -- states ----------------------------------------------------------------------------
    def move(self, t: TaskEntry, to: TaskState, why: str | tuple) -> None:
        """The one way a task changes state: checked against the table, written to its story
        (`why`: a str, or a (format, *args) tuple formatted when the story is read)."""
        before = t.state
        if to not in TRANSITIONS[before]:
            raise SchedulerBug(f"task {t.tid}: no move from {before} to {to} "
                              f"({why_text(why)})")
        t.state = to
        # (Book.tell, written out: one call less on every move)
        story = t.story
        entry = (self.event, NAMES[before], NAMES[to], why)
        t.story = story + entry if len(story) < STORY_ITEMS else story[ENTRY:] + entry

    def note(self, t: TaskEntry, why: str) -> None:
        """Write to `t`'s story something decided about it that does not change its state."""
        self.tell(t, t.state, t.state, why)

    def tell(self, t: TaskEntry, before: TaskState, after: TaskState, why: str | tuple) -> None:
        """Add an entry to `t`'s story (see `states.Story`), the oldest going when it has
        STORY_LENGTH."""
        story = t.story
        entry = (self.event, NAMES[before], NAMES[after], why)
        t.story = story + entry if len(story) < STORY_ITEMS else story[ENTRY:] + entry

    def make_ready(self, t: TaskEntry, why: str) -> None:
        self.move(t, READY, why)
        heapq.heappush(self.ready, t.tid)

    # -- queries ---------------------------------------------------------------------------
    def closes_loop(self, tid: int, after: Sequence[int]) -> int | None:
        """The task of `after` that waits (through others) for `tid`, which a task awaited
        before it was submitted (a Submit's `awaits`); None if none does."""
        if tid not in self.dependents:
            return None
        return next((d for d in after if d in self.tasks and self.reaches(d, tid)), None)

    def link(self, t: TaskEntry, after: Sequence[int], awaits: Sequence[int]) -> None:
        """`t` waits for the active tasks of `after`, and for the ids of `awaits` not submitted
        yet (their own Submit finds the link)."""
        for dep in after:
            if dep in self.tasks and dep != t.tid:
                t.blocked_on = added(t.blocked_on, dep)
                self.dependents.setdefault(dep, []).append(t.tid)
        for dep in awaits:
            if dep not in self.tasks and dep != t.tid:
                t.blocked_on = added(t.blocked_on, dep)
                self.dependents.setdefault(dep, []).append(t.tid)

    def reaches(self, start: int, target: int) -> bool:
        """Whether active task `start` waits for `target`, directly or through tasks it
        waits for (a cycle, if `target` is to wait for `start`)."""
        seen, todo = {start}, [start]
        while todo:
            t = self.tasks.get(todo.pop())
            for dep in t.blocked_on if t is not None else ():
                if dep == target:
                    return True
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return False

    def is_current(self, tid: int, eid: int) -> bool:
        t = self.tasks.get(tid)
        return t is not None and t.state is TaskState.RUNNING and t.engine == eid

    def satisfies(self, t: TaskEntry, e: EngineEntry) -> bool:
        depend = t.nodes[t.node].depend
        if depend is None:
            return True
        if isinstance(depend, dict):
            props = e.properties
            return all(k in props and props[k] == v for k, v in depend.items())
        cached = t.dep_cache.get(e.eid)
        if cached is not None and cached[0] == e.version:
            return cached[1]
        try:
            ok = bool(depend(MappingProxyType(e.properties)))
        except Exception:
            ok = False
        cache = t.dep_cache
        if len(cache) > 2 * len(self.engines) + 8:  # (answers for engines gone since: drop)
            for eid in [eid for eid in cache if eid not in self.engines]:
                del cache[eid]
        cache[e.eid] = (e.version, ok)
        return ok

    def waits_for_idle(self, t: TaskEntry) -> bool:
        """Whether `t`'s depend may read properties task code can change (a callable, or a
        dict beyond FIXED_PROPERTIES): such a task goes only to an engine that holds nothing,
        whose properties are known as they will be when it starts; one buffered behind
        another task would be judged on properties that task may still change."""
        depend = t.nodes[t.node].depend
        if depend is None:
            return False
        return not isinstance(depend, dict) or not FIXED_PROPERTIES.issuperset(depend)

    def offered_everywhere(self, t: TaskEntry) -> bool:
        """Whether every live engine that satisfies `t`'s current node was offered it."""
        return all(eid in t.offered for eid, e in self.engines.items()
                   if not e.retiring and self.satisfies(t, e))

    # -- engines ---------------------------------------------------------------------------
    def update_capacity(self, e: EngineEntry) -> None:
        if e.slots is not None:
            e.cap = e.slots
        elif e.duration is None:
            e.cap = 1
        else:
            e.cap = max(1, min(self.max_slots, int(self.buffer_seconds / max(e.duration, 1e-7))))

    def watch_head(self, e: EngineEntry) -> None:
        """Arm the `slow` timer for the task an adaptive, buffering engine now runs (one
        timer per engine: while it is armed, the task it watches is checked when it fires)."""
        if e.slots is None and e.running and e.cap > 1 and e.watched is None:
            e.watched = next(iter(e.running.items()))
            self.out.append(ArmTimer(("slow", e.eid), self.slow_after))

    def release_slot(self, e: EngineEntry, tid: int) -> None:
        head = next(iter(e.running)) == tid
        del e.running[tid]
        self.busy_slots -= 1
        if len(e.running) < 2:
            self.buffering.discard(e.eid)
        if head:
            if e.running:
                self.watch_head(e)
            elif e.watched is not None:
                # Nothing runs: no task to watch, and no turn of the loop for a timer that
                # would find that out (a lone round trip each ~1 ms would wake it every 4 ms);
                # the next task it takes is watched from its dispatch.
                e.watched = None
                self.out.append(CancelTimer(("slow", e.eid)))
        if e.retiring:
            if not e.running:
                self.out.append(Drained(e.eid))
            return
        if e.eid not in self.free and len(e.running) < e.cap:
            self.free[e.eid] = None
        self.fresh.add(e.eid)

    def properties_changed(self, e: EngineEntry, properties: dict[str, Any]) -> None:
        e.properties = dict(properties)
        e.version = next(self.versions)
        self.fresh.add(e.eid)
        self.unskip_engine(e)

    # -- failures --------------------------------------------------------------------------
    def attempt_failed(self, t: TaskEntry, eid: int | None, outcome: str, why: str) -> None:
        if eid is not None:
            t.avoid = added(t.avoid, eid)
        retries = t.nodes[t.node].retries
        if t.tries <= retries:
            self.make_ready(t, f"{why}: retried ({t.tries} of {retries} retries used)")
        else:
            self.node_over(t, eid, outcome, why)

    def node_over(self, t: TaskEntry, eid: int | None, outcome: str, why: str, *,
                  final_attempt: bool = False) -> None:
        """The current node failed for good: its recovery task runs, else `t` finishes.
        `final_attempt`: the report that ended it counted no attempt, but as the task's
        result it counts one."""
        node = t.nodes[t.node]
        if node.recovery is not None and node.recovery not in t.handed_over:
            t.handed_over = added(t.handed_over, t.node)
            t.node = node.recovery
            t.tries = 0
            t.avoid = NO_ENGINES
            t.offered = NO_ENGINES
            self.unskip_task(t)
            t.dep_cache.clear()
            self.make_ready(t, f"{why}: node over, its recovery node {node.recovery} runs")
        else:
            if final_attempt:
                t.attempts += 1
            self.finish(t, outcome, False, engineid=eid, why=f"{why}: no retries left")

    # -- skips -----------------------------------------------------------------------------
    def skip(self, t: TaskEntry, e: EngineEntry) -> None:
        """`t` skips engine `e` until a timer fires or `e`'s properties change."""
        old = t.skip.get(e.eid)
        if old is not None:
            self.out.append(CancelTimer(old))
        self.token += 1
        key = ("skip", t.tid, e.eid, self.token)
        t.skip[e.eid] = key
        e.skipped_by.add(t.tid)
        self.out.append(ArmTimer(key, self.reject_skip))

    def unskip_task(self, t: TaskEntry) -> None:
        """`t` skips no engine any more (it finished, or handed over to a recovery task)."""
        for eid, key in t.skip.items():
            self.out.append(CancelTimer(key))
            e = self.engines.get(eid)
            if e is not None:
                e.skipped_by.discard(t.tid)
        t.skip.clear()

    def unskip_engine(self, e: EngineEntry) -> None:
        """No task skips `e` any more (its properties changed, or it left)."""
        for tid in sorted(e.skipped_by):
            t = self.tasks.get(tid)
            key = t.skip.pop(e.eid, None) if t is not None else None
            if key is not None:
                self.out.append(CancelTimer(key))
        e.skipped_by.clear()

    # -- the end ---------------------------------------------------------------------------
    def forget(self, t: TaskEntry) -> None:
        """Take `t` out of the parked set, its unmet timer, its skips and its `after` links
        (it left the scheduler: finished or withdrawn)."""
        if self.parked:
            self.parked.discard(t.tid)
        if self.unmet:
            token = self.unmet.pop(t.tid, None)
            if token is not None:
                self.out.append(CancelTimer(("unmet", t.tid, token)))
        if t.skip:
            self.unskip_task(t)
        for dep in t.blocked_on:
            waiting = self.dependents.get(dep)
            if waiting is not None and t.tid in waiting:
                waiting.remove(t.tid)
                if not waiting:  # (none waits for it now: an id not submitted is not awaited)
                    del self.dependents[dep]

    def finish(self, t: TaskEntry, outcome: str, ok: bool, *, engineid: int | None = None,
               detail: Any = None, why: str = "") -> None:
        """Finish `t` and, transitively, its dependents (iteratively: chains may be long)."""
        stack = None
        while True:
            if self.tasks.pop(t.tid, None) is not None:
                if self.parked or self.unmet or t.skip or t.blocked_on:
                    self.forget(t)
                self.move(t, FINISHED, why or outcome)
                self.finished.keep(t.tid, t.story)
                if self.thieves:
                    self.forget_theft(t.tid)
                self.out.append(Finish(t.tid, outcome, ok, engineid, detail, t.attempts, t.node))
                if self.dependents:
                    stack = self.finish_dependents(t, ok, stack)
            if not stack:
                return
            t, outcome, ok, engineid, detail, why = stack.pop()

    def forget_theft(self, tid: int) -> None:
        """Task `tid` is over: an idle engine that asked for it back (a revoke whose answer
        never came: lost with a reset connection) may ask for another."""
        for thief, (_, wanted, _) in list(self.thieves.items()):
            if wanted == tid:
                del self.thieves[thief]
                self.fresh.add(thief)

    def finish_dependents(self, t: TaskEntry, ok: bool, stack: list | None) -> list | None:
        """`t` finished: its dependents go to `stack` (to finish with `dependency`) if it
        failed; those it was the last to wait for are ready if it succeeded."""
        for child_id in self.dependents.pop(t.tid, ()):
            child = self.tasks.get(child_id)
            if child is None:
                continue
            if child.blocked_on:  # (a set, not the shared empty one)
                child.blocked_on.discard(t.tid)  # type: ignore[attr-defined]
            if not ok:
                stack = stack or []
                stack.append((child, DEPENDENCY, False, None, t.tid,
                              f"task {t.tid} it waits for failed"))
            elif not child.blocked_on and child.state is WAITING:
                self.make_ready(child, f"task {t.tid} it waited for succeeded")
        return stack
