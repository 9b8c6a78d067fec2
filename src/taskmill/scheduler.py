"""The scheduler: a pure state machine that decides which task runs where and when it is done.

Events come in as method calls; each returns the actions the I/O shell (the controller) must
carry out, in order. The scheduler reads no clock, touches no socket and does no pickling: time
enters only as timers it asks the shell to arm (`ArmTimer`) and that the shell reports back
(`timer_fired`). So every rule of SPEC.md §2 is a direct unit test.

Events                                   Actions
  submit(tid, nodes, after=..., lost=...)  Dispatch(tid, eid, node, attempt)
  add_engine(eid, properties, adopt=...)   Finish(tid, outcome, ok, engineid, detail)
  set_properties(eid, properties)          Interrupt(eid, tid, reason)
  task_done(eid, tid, attempt, status,     Revoke(eid, tid, attempt)
            duration=...)                  ArmTimer(key, delay) / CancelTimer(key)
  revoke_answered(eid, tid, attempt, ok)
  remove_engine(eid)
  withdraw(tids)
  lost_returned(tid), lost_expired(tid)
  abort(tid), timer_fired(key), spin()

Rules, in one place:
- The queue is FIFO by taskid: each pass gives the oldest runnable task to the longest-idle
  engine that satisfies its `depend` (a dict of property values, or a callable on the engine's
  properties; an exception counts as False) and that the task does not skip (see `rejected`).
- A failed attempt is retried while the current node has retries left, preferring an engine that
  has not failed it. Then the node's recovery task runs under the same taskid, unless that
  recovery task has already handed over to a recovery of its own (checked before marking the
  failed node as handed over), so chains cannot loop.
- `after`: a task waits for those tasks; when one fails, it finishes with `dependency` at once,
  and so do its own dependents.
- Unmet `depend`: if every registered engine is idle and none satisfies a waiting task for
  `unmet_timeout` seconds, it finishes with `unmet_timeout`. A task that waits only for a skip
  to end (below) is not unmet: an engine satisfies it, it just may not have it yet.
- `rejected` (TaskRejectError from task code: "not on this engine, not now"), as in the seed:
  - It counts no attempt (the next dispatch has the same attempt number), but it uses one of
    the node's retries, as a failed attempt does (both count against `retries`).
  - The task goes back to the queue and skips that engine until the engine's skip timer
    (`("skip", tid, eid, token)`, `reject_skip` = 1 s) fires or the engine's properties change
    (`set_properties`, or properties reported with any result, this rejection's own excepted:
    they are taken before the rejection). Other engines may take it at once; the skipped one
    gets it again after the skip, whether or not the task has retries left.
  - A node's task is "offered" to an engine once that engine reported an attempt of it (ok,
    error or rejected; a revoked or a died-with attempt was not offered).
  - Rejected with no retries left, the node is over only when every live engine that
    satisfies its `depend` (now, with the properties this report brought) has been offered
    it; until then it goes back to the queue as above. Engines that registered since it was
    submitted count (it goes to them too); engines that died do not. So with `retries=0` and
    four engines it goes to each of the four once before it is over (to one a second time
    only if the others stay busy past its skip).
  - A node that is over this way is treated like one whose last attempt failed: its recovery
    task runs (with no skips, and offered to no engine yet), else the task finishes with the
    rejecting engine's report (`RESULT`, not ok); that final rejection is the one attempt it
    counts. Its `after` dependents then fail with `dependency`.
  - Skip timers die with what they guard: a finished, aborted or withdrawn task, a hand-over
    to a recovery task, a removed engine and a property change each cancel theirs
    (`CancelTimer`). A skipped engine never steals the task either.
- Unmet `depend` while no engine is registered counts as unmet too: a task with a depend
  fails after `unmet_timeout` if no engine arrives.
- Abort of a running task finishes it at once and interrupts its engine; the engine's slot stays
  taken until the engine reports, and that report is dropped.
- An engine that dies (or is declared dead) fails every attempt it held: the running one and
  those buffered behind it, which may have started since the engine last reported (an
  attempt is counted whenever the task's code may have run, so a task with `retries=0` runs
  at most once). Retries then apply. A task given back for sure (a granted revoke, a lost
  `tasks` message, a backlog an engine dropped) is queued again without counting an attempt.
- After a controller restart a task that was running is `lost` until its engine registers
  again: adopted (running there, as it was) if the engine still runs it or has its result,
  queued again without counting an attempt if the engine never started it, and failed like
  an engine death (`lost_expired`) if the engine does not come back.
- Prefetch: an engine may hold several tasks, run in dispatch order (the first is running, the
  others are buffered on the engine). With a fixed number of slots it holds at most that many.
  Adaptive (the default): an engine whose tasks took `d` seconds lately (a moving average of
  the durations it reports) holds about `buffer_seconds / d` of them, at least 1 and at most
  `max_slots`; an engine with no history holds 1. So tiny tasks are buffered and an engine
  never waits a round trip between them, while long tasks are handed out one at a time. When
  an adaptive engine takes a task while holding more than one, a timer (`slow`) is armed: if
  that task is still the one it runs `2 * buffer_seconds` later, the engine's average is
  raised to that, so nothing more is buffered behind a task that turned out long.
- Stealing: an engine that holds nothing while another holds a buffered task it qualifies for
  asks for it back (`Revoke`). The engine answers: `ok` means it will never run that task nor
  report it, so its slot is free and the task is queued again (no attempt counted); not `ok`
  means it had started it (the task stays where it is and is not asked for again). One revoke
  is in flight per idle engine at a time. So a long task that arrives behind a burst of tiny
  ones never holds up the tasks buffered behind it while another engine is idle.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .checks import seconds
from .defaults import DEFAULT_UNMET_TIMEOUT

REJECT_SKIP_SECONDS = 1.0  # how long a task skips an engine that rejected it (the seed's pause)

# Outcomes of Finish.
RESULT = "result"  # the engine's report of the last attempt is the task's result
ENGINE_DIED = "engine_died"
ABORTED = "aborted"
UNMET_TIMEOUT = "unmet_timeout"
DEPENDENCY = "dependency"

# Statuses an engine reports for an attempt.
OK = "ok"
ERROR = "error"
REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Dispatch:
    tid: int
    eid: int
    node: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Finish:
    tid: int
    outcome: str
    ok: bool
    engineid: int | None = None
    detail: Any = None
    attempts: int = 0
    node: int = 0  # the node of the recovery chain that ran last


@dataclass(frozen=True, slots=True)
class Interrupt:
    eid: int
    tid: int
    reason: str


@dataclass(frozen=True, slots=True)
class Revoke:
    """Ask engine `eid` to give back a buffered attempt (it answers with revoke_answered)."""

    eid: int
    tid: int
    attempt: int


@dataclass(frozen=True, slots=True)
class ArmTimer:
    key: tuple
    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: tuple


Action = Dispatch | Finish | Interrupt | Revoke | ArmTimer | CancelTimer

# Adaptive prefetch: how much buffered work an engine may hold, and the moving average.
BUFFER_SECONDS = 0.002
MAX_SLOTS = 64
DURATION_WEIGHT = 0.25  # of the newest duration in the moving average


@dataclass(slots=True)
class Node:
    """What the scheduler needs of one task of a recovery chain."""

    retries: int = 0
    depend: dict | Callable[[Any], Any] | None = None
    recovery: int | None = None
    timeout: float | None = None


# Task states.
WAITING = "waiting"  # for `after` tasks
READY = "ready"  # in the ready heap
PARKED = "parked"  # no free engine satisfies it right now
RUNNING = "running"
LOST = "lost"  # was running when the controller restarted; its engine has not come back yet


@dataclass(slots=True)
class _Task:
    tid: int
    nodes: list[Node]
    node: int = 0
    state: str = READY
    tries: int = 0  # attempts of the current node
    attempts: int = 0  # attempts of the whole task
    engine: int | None = None
    avoid: set[int] = field(default_factory=set)
    offered: set[int] = field(default_factory=set)  # engines that reported an attempt of the node
    skip: dict[int, tuple] = field(default_factory=dict)  # engine -> its skip timer's key
    handed_over: set[int] = field(default_factory=set)
    blocked_on: set[int] = field(default_factory=set)
    dep_cache: dict[int, tuple[int, bool]] = field(default_factory=dict)
    steal_tried: bool = False  # a revoke of the current attempt was sent


@dataclass(slots=True)
class _Engine:
    eid: int
    properties: dict[str, Any]
    slots: int | None  # None: adaptive (see the module docstring)
    version: int = 0
    running: dict[int, int] = field(default_factory=dict)  # tid -> attempt, dispatch order
    duration: float | None = None  # moving average of the durations it reported
    cap: int = 1  # how many tasks it may hold now (see Scheduler._update_capacity)
    watched: tuple[int, int] | None = None  # the (tid, attempt) the `slow` timer watches
    skipped_by: set[int] = field(default_factory=set)  # tasks that skip it (they rejected it)


class Scheduler:
    """See the module docstring for the rules."""

    def __init__(self, *, unmet_timeout: float = DEFAULT_UNMET_TIMEOUT, slots: int | None = None,
                 buffer_seconds: float = BUFFER_SECONDS, max_slots: int = MAX_SLOTS,
                 reject_skip: float = REJECT_SKIP_SECONDS) -> None:
        if slots is not None and slots < 1:
            raise ValueError(f"slots must be None (adaptive) or an int >= 1, not {slots!r}")
        self.unmet_timeout = seconds("unmet_timeout", unmet_timeout, zero=True)
        self.reject_skip = seconds("reject_skip", reject_skip, zero=True)
        self.slots = slots
        self.buffer_seconds = buffer_seconds
        self.slow_after = 2 * buffer_seconds
        self.max_slots = max_slots
        # idle engine -> the (engine, tid, attempt) it asked back for it
        self._thieves: dict[int, tuple[int, int, int]] = {}
        self.tasks: dict[int, _Task] = {}
        self.engines: dict[int, _Engine] = {}
        self._ready: list[int] = []
        self._parked: set[int] = set()
        self._free: dict[int, None] = {}  # engines with a free slot, longest free first
        self._fresh: set[int] = set()  # engines freed or changed since the last pass
        self._dependents: dict[int, list[int]] = {}
        self._busy_slots = 0
        self._unmet: dict[int, int] = {}  # tid -> timer token
        self._token = 0
        self._out: list[Action] = []
        self._dispatched = False

    # -- queries ---------------------------------------------------------------------------
    def is_active(self, tid: int) -> bool:
        return tid in self.tasks

    def scheduled_ids(self) -> list[int]:
        return sorted(t.tid for t in self.tasks.values() if t.state != RUNNING)

    def pending_ids(self) -> list[int]:
        return sorted(t.tid for t in self.tasks.values() if t.state == RUNNING)

    def counts(self) -> tuple[int, int]:
        """(scheduled, pending): waiting in the controller, handed to an engine."""
        pending = self._busy_running()
        return len(self.tasks) - pending, pending

    def _busy_running(self) -> int:
        return sum(
            1 for e in self.engines.values() for tid in e.running if self._is_current(tid, e.eid)
        )

    def is_running_on(self, tid: int, eid: int) -> bool:
        """Whether task `tid`'s current attempt is held by engine `eid`."""
        return self._is_current(tid, eid)

    def _is_current(self, tid: int, eid: int) -> bool:
        t = self.tasks.get(tid)
        return t is not None and t.state == RUNNING and t.engine == eid

    def capacity(self, eid: int) -> int:
        """How many tasks engine `eid` may hold now (running and buffered)."""
        return self.engines[eid].cap

    def _update_capacity(self, e: _Engine) -> None:
        if e.slots is not None:
            e.cap = e.slots
        elif e.duration is None:
            e.cap = 1
        else:
            e.cap = max(1, min(self.max_slots, int(self.buffer_seconds / max(e.duration, 1e-7))))

    def engine_busy(self, eid: int) -> bool:
        """Whether engine `eid` holds any task."""
        e = self.engines.get(eid)
        return bool(e and e.running)

    def engine_load(self, eid: int) -> list[int]:
        """The taskids an engine holds, running or buffered (aborted ones included)."""
        e = self.engines.get(eid)
        return list(e.running) if e else []

    # -- events ----------------------------------------------------------------------------
    def submit(
        self,
        tid: int,
        nodes: list[Node],
        *,
        after: Iterable[int] = (),
        broken_after: int | None = None,
        node: int = 0,
        attempts: int = 0,
        tries: int = 0,
        handed_over: Iterable[int] = (),
        lost: bool = False,
        dispatch: bool = True,
    ) -> list[Action]:
        """A new task (or one reloaded after a restart, with its counters; `lost`: it was
        running, and waits for its engine to come back, see `add_engine`).

        `after` holds the taskids this task still waits for, each active in this scheduler;
        `broken_after` names one that already failed or is unknown (the task fails at once).
        With `dispatch=False` no scheduling pass runs: the caller runs one (`run_pass`) after
        a batch of events, and gets the same dispatches it would have got one by one.
        """
        if tid in self.tasks:
            raise ValueError(f"task {tid} is already active")
        if not nodes:
            raise ValueError("a task needs at least one node")
        t = _Task(tid, list(nodes), node=node, attempts=attempts, tries=tries)
        t.handed_over.update(handed_over)
        self.tasks[tid] = t
        if lost:
            t.state = LOST
            return self._flush(dispatch)
        if broken_after is not None:
            self._finish(t, DEPENDENCY, False, detail=broken_after)
            return self._flush(dispatch)
        for dep in after:
            if dep in self.tasks and dep != tid:
                t.blocked_on.add(dep)
                self._dependents.setdefault(dep, []).append(tid)
        if t.blocked_on:
            t.state = WAITING
        else:
            self._make_ready(t)
        return self._flush(dispatch)

    def add_engine(self, eid: int, properties: dict[str, Any],
                   slots: int | None = None, adopt: Iterable[int] = ()) -> list[Action]:
        """A new engine; `slots` overrides the scheduler's prefetch for it. `adopt` names
        `lost` tasks it still runs (or has results of): they run there, as they were."""
        if eid in self.engines:
            raise ValueError(f"engine {eid} is already registered")
        e = self.engines[eid] = _Engine(eid, dict(properties), slots or self.slots)
        self._update_capacity(e)
        for tid in adopt:
            t = self.tasks.get(tid)
            if t is not None and t.state == LOST:
                t.state = RUNNING
                t.engine = eid
                e.running[tid] = t.attempts
                self._busy_slots += 1
        if len(e.running) < e.cap:
            self._free[eid] = None
        self._watch_head(e)
        self._fresh.add(eid)
        return self._flush()

    def lost_returned(self, tid: int) -> list[Action]:
        """A `lost` task's engine came back without it (it never started, or waited there
        unstarted and was dropped): queued again, no attempt counted."""
        t = self.tasks.get(tid)
        if t is not None and t.state == LOST:
            t.tries -= 1
            t.attempts -= 1
            self._make_ready(t)
        return self._flush()

    def lost_expired(self, tid: int) -> list[Action]:
        """A `lost` task's engine did not come back: its attempt failed as if the engine had
        died (retries apply)."""
        t = self.tasks.get(tid)
        if t is not None and t.state == LOST:
            self._attempt_failed(t, None, ENGINE_DIED)
        return self._flush()

    def set_properties(self, eid: int, properties: dict[str, Any]) -> list[Action]:
        e = self.engines.get(eid)
        if e is not None and e.properties != properties:
            self._properties_changed(e, properties)
        return self._flush()

    def task_done(
        self,
        eid: int,
        tid: int,
        attempt: int,
        status: str,
        properties: dict[str, Any] | None = None,
        duration: float | None = None,
        dispatch: bool = True,
    ) -> list[Action]:
        """An engine reports an attempt: `ok`, `error` or `rejected`, and how long it ran.
        (`dispatch=False`: see `submit`.)"""
        e = self.engines.get(eid)
        if e is None:
            return self._flush(dispatch)  # a dead engine's late report: failed already
        if properties is not None and properties != e.properties:
            self._properties_changed(e, properties)
        if duration is not None and duration >= 0 and e.slots is None:
            e.duration = duration if e.duration is None else (
                e.duration + DURATION_WEIGHT * (duration - e.duration))
            self._update_capacity(e)
        if e.running.get(tid) == attempt:
            self._release_slot(e, tid)
        t = self.tasks.get(tid)
        if t is None or t.state != RUNNING or t.engine != eid or t.attempts != attempt:
            return self._flush(dispatch)  # aborted, or a stale attempt
        t.engine = None
        t.steal_tried = False
        if status == OK:
            self._finish(t, RESULT, True, engineid=eid)
        elif status == REJECTED:
            t.offered.add(eid)
            t.attempts -= 1  # no attempt counted; the retry it used stays used (t.tries)
            if t.tries <= t.nodes[t.node].retries or not self._offered_everywhere(t):
                self._skip(t, e)
                self._make_ready(t)
            else:
                self._node_over(t, eid, RESULT, final_attempt=True)
        else:
            t.offered.add(eid)
            self._attempt_failed(t, eid, RESULT)
        return self._flush(dispatch)

    def run_pass(self) -> list[Action]:
        """A scheduling pass (after events given with `dispatch=False`)."""
        return self._flush()

    def remove_engine(self, eid: int) -> list[Action]:
        """An engine died or left: its current attempts fail with ENGINE_DIED; buffered ones requeue."""
        e = self.engines.pop(eid, None)
        if e is None:
            return self._flush()
        self._free.pop(eid, None)
        self._fresh.discard(eid)
        self._thieves.pop(eid, None)
        self._unskip_engine(e)
        for tid in list(e.running):
            self._busy_slots -= 1
            t = self.tasks.get(tid)
            if t is None or t.state != RUNNING or t.engine != eid:
                continue
            t.engine = None
            t.steal_tried = False
            # Buffered ones too: the engine may have started them since it last reported.
            self._attempt_failed(t, eid, ENGINE_DIED)
        e.running.clear()
        for t in list(self.tasks.values()):
            t.dep_cache.pop(eid, None)
        return self._flush()

    def revoke_answered(self, eid: int, tid: int, attempt: int, ok: bool) -> list[Action]:
        """Engine `eid` answers a Revoke: `ok` if it will never run that attempt."""
        for thief, wanted in list(self._thieves.items()):
            if wanted == (eid, tid, attempt):
                del self._thieves[thief]
                self._fresh.add(thief)
        e = self.engines.get(eid)
        if e is None or not ok:
            return self._flush()
        if e.running.get(tid) == attempt:
            self._release_slot(e, tid)
        t = self.tasks.get(tid)
        if t is not None and t.state == RUNNING and t.engine == eid and t.attempts == attempt:
            t.engine = None
            t.steal_tried = False
            t.tries -= 1
            t.attempts -= 1
            self._make_ready(t)
        return self._flush()

    def withdraw(self, tids: Iterable[int]) -> list[Action]:
        """Forget tasks as if they had never been submitted (their submit could not be
        stored): no Finish; a slot one took is free again. A task that waits for one of them
        fails with `dependency`."""
        gone = set(tids)
        orphans = []
        for tid in gone:
            t = self.tasks.pop(tid, None)
            if t is None:
                continue
            self._parked.discard(tid)
            token = self._unmet.pop(tid, None)
            if token is not None:
                self._out.append(CancelTimer(("unmet", tid, token)))
            self._unskip_task(t)
            if t.state == RUNNING and t.engine is not None:
                e = self.engines.get(t.engine)
                if e is not None and tid in e.running:
                    self._release_slot(e, tid)
            for dep in t.blocked_on:
                waiting = self._dependents.get(dep)
                if waiting is not None and tid in waiting:
                    waiting.remove(tid)
            orphans.extend(c for c in self._dependents.pop(tid, ()) if c not in gone)
        for thief, (_, tid, _) in list(self._thieves.items()):
            if tid in gone:
                del self._thieves[thief]
                self._fresh.add(thief)
        for child_id in orphans:
            child = self.tasks.get(child_id)
            if child is not None:
                self._finish(child, DEPENDENCY, False, detail=next(iter(gone)))
        return self._flush()

    def abort(self, tid: int) -> tuple[bool, list[Action]]:
        """Abort an active task. Returns (False, []) when the task is not active here."""
        t = self.tasks.get(tid)
        if t is None:
            return False, []
        if t.state == RUNNING and t.engine is not None:
            self._out.append(Interrupt(t.engine, tid, ABORTED))
        self._finish(t, ABORTED, False, engineid=t.engine)
        return True, self._flush()

    def timer_fired(self, key: tuple) -> list[Action]:
        if key and key[0] == "slow":
            e = self.engines.get(key[1])
            if e is not None and e.watched is not None:
                watched, e.watched = e.watched, None
                if e.running and next(iter(e.running.items())) == watched:
                    e.duration = max(e.duration or 0.0, self.slow_after)
                    self._update_capacity(e)
                    if len(e.running) >= e.cap:
                        self._free.pop(e.eid, None)
                else:  # that task is done: watch the one running now
                    self._watch_head(e)
        elif key and key[0] == "skip" and len(key) == 4:
            _, tid, eid, _token = key
            t = self.tasks.get(tid)
            if t is not None and t.skip.get(eid) == key:
                del t.skip[eid]
                e = self.engines.get(eid)
                if e is not None:
                    e.skipped_by.discard(tid)
                if t.state == PARKED:  # the pass gives it to that engine if it is free
                    self._parked.discard(tid)
                    self._make_ready(t)
        elif key and key[0] == "unmet":
            _, tid, token = key
            if self._unmet.get(tid) == token:
                del self._unmet[tid]
                t = self.tasks.get(tid)
                if t is not None and t.state == PARKED and self._all_idle():
                    self._finish(t, UNMET_TIMEOUT, False)
        return self._flush()

    def spin(self) -> tuple[bool, list[Action]]:
        """Run a pass; True if it dispatched anything."""
        actions = self._flush()
        return any(isinstance(a, Dispatch) for a in actions), actions

    # -- internals -------------------------------------------------------------------------
    def _flush(self, dispatch: bool = True) -> list[Action]:
        if dispatch:
            self._pass()
        out, self._out = self._out, []
        return out

    def _make_ready(self, t: _Task) -> None:
        t.state = READY
        heapq.heappush(self._ready, t.tid)

    def _release_slot(self, e: _Engine, tid: int) -> None:
        head = next(iter(e.running)) == tid
        del e.running[tid]
        self._busy_slots -= 1
        if head:
            self._watch_head(e)
        if e.eid not in self._free and len(e.running) < e.cap:
            self._free[e.eid] = None
        self._fresh.add(e.eid)

    def _attempt_failed(self, t: _Task, eid: int | None, outcome: str) -> None:
        if eid is not None:
            t.avoid.add(eid)
        if t.tries <= t.nodes[t.node].retries:
            self._make_ready(t)
        else:
            self._node_over(t, eid, outcome)

    def _node_over(self, t: _Task, eid: int | None, outcome: str, *,
                   final_attempt: bool = False) -> None:
        """The current node failed for good: its recovery task runs, else `t` finishes.
        `final_attempt`: the report that ended it counted no attempt, but as the task's
        result it counts one."""
        node = t.nodes[t.node]
        if node.recovery is not None and node.recovery not in t.handed_over:
            t.handed_over.add(t.node)
            t.node = node.recovery
            t.tries = 0
            t.avoid.clear()
            t.offered.clear()
            self._unskip_task(t)
            t.dep_cache.clear()
            self._make_ready(t)
        else:
            if final_attempt:
                t.attempts += 1
            self._finish(t, outcome, False, engineid=eid)

    def _offered_everywhere(self, t: _Task) -> bool:
        """Whether every live engine that satisfies `t`'s current node was offered it."""
        return all(eid in t.offered for eid, e in self.engines.items() if self._satisfies(t, e))

    def _skip(self, t: _Task, e: _Engine) -> None:
        """`t` skips engine `e` until a timer fires or `e`'s properties change."""
        old = t.skip.get(e.eid)
        if old is not None:
            self._out.append(CancelTimer(old))
        self._token += 1
        key = ("skip", t.tid, e.eid, self._token)
        t.skip[e.eid] = key
        e.skipped_by.add(t.tid)
        self._out.append(ArmTimer(key, self.reject_skip))

    def _unskip_task(self, t: _Task) -> None:
        """`t` skips no engine any more (it finished, or handed over to a recovery task)."""
        for eid, key in t.skip.items():
            self._out.append(CancelTimer(key))
            e = self.engines.get(eid)
            if e is not None:
                e.skipped_by.discard(t.tid)
        t.skip.clear()

    def _unskip_engine(self, e: _Engine) -> None:
        """No task skips `e` any more (its properties changed, or it left)."""
        for tid in sorted(e.skipped_by):
            t = self.tasks.get(tid)
            key = t.skip.pop(e.eid, None) if t is not None else None
            if key is not None:
                self._out.append(CancelTimer(key))
        e.skipped_by.clear()

    def _properties_changed(self, e: _Engine, properties: dict[str, Any]) -> None:
        e.properties = dict(properties)
        e.version += 1
        self._fresh.add(e.eid)
        self._unskip_engine(e)

    def _finish(self, t: _Task, outcome: str, ok: bool, *, engineid: int | None = None,
                detail: Any = None) -> None:
        """Finish `t` and, transitively, its dependents (iteratively: chains may be long)."""
        stack = [(t, outcome, ok, engineid, detail)]
        while stack:
            t, outcome, ok, engineid, detail = stack.pop()
            if self.tasks.pop(t.tid, None) is None:
                continue
            self._parked.discard(t.tid)
            token = self._unmet.pop(t.tid, None)
            if token is not None:
                self._out.append(CancelTimer(("unmet", t.tid, token)))
            self._unskip_task(t)
            for dep in t.blocked_on:
                waiting = self._dependents.get(dep)
                if waiting is not None and t.tid in waiting:
                    waiting.remove(t.tid)
            self._out.append(Finish(t.tid, outcome, ok, engineid, detail, t.attempts, t.node))
            for child_id in self._dependents.pop(t.tid, ()):
                child = self.tasks.get(child_id)
                if child is None:
                    continue
                child.blocked_on.discard(t.tid)
                if not ok:
                    stack.append((child, DEPENDENCY, False, None, t.tid))
                elif not child.blocked_on and child.state == WAITING:
                    self._make_ready(child)

    def _satisfies(self, t: _Task, e: _Engine) -> bool:
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
        t.dep_cache[e.eid] = (e.version, ok)
        return ok

    def _choose_engine(self, t: _Task) -> int | None:
        fallback = None
        full = None
        for eid in self._free:
            e = self.engines[eid]
            if e.slots is None and len(e.running) >= e.cap:
                full = [*(full or ()), eid]  # its capacity shrank since it was freed
                continue
            if eid in t.skip:
                continue
            if not self._satisfies(t, self.engines[eid]):
                continue
            if eid not in t.avoid:
                fallback = eid
                break
            if fallback is None:
                fallback = eid
        for eid in full or ():
            del self._free[eid]
        return fallback

    def _dispatch(self, t: _Task, eid: int) -> None:
        e = self.engines[eid]
        t.state = RUNNING
        t.engine = eid
        t.tries += 1
        t.attempts += 1
        e.running[t.tid] = t.attempts
        self._busy_slots += 1
        if len(e.running) == 1:
            self._watch_head(e)
        del self._free[eid]
        if len(e.running) < e.cap:
            self._free[eid] = None  # still has room: goes to the back of the line
        token = self._unmet.pop(t.tid, None)
        if token is not None:
            self._out.append(CancelTimer(("unmet", t.tid, token)))
        self._out.append(Dispatch(t.tid, eid, t.node, t.attempts))

    def _watch_head(self, e: _Engine) -> None:
        """Arm the `slow` timer for the task an adaptive, buffering engine now runs (one
        timer per engine: while it is armed, the task it watches is checked when it fires)."""
        if e.slots is None and e.running and e.cap > 1 and e.watched is None:
            e.watched = next(iter(e.running.items()))
            self._out.append(ArmTimer(("slow", e.eid), self.slow_after))

    def _unpark(self) -> None:
        fresh = [self.engines[e] for e in self._fresh if e in self._free]
        self._fresh.clear()
        if not fresh or not self._parked:
            return
        for tid in sorted(self._parked):
            t = self.tasks[tid]
            if any(e.eid not in t.skip and self._satisfies(t, e) for e in fresh):
                self._parked.discard(tid)
                self._make_ready(t)

    def _all_idle(self) -> bool:
        return self._busy_slots == 0

    def _pass(self) -> None:
        if not self.engines and self._ready:
            self._park_depends()
        if self._parked:
            self._unpark()
        else:
            self._fresh.clear()
        while self._free and self._ready:
            tid = heapq.heappop(self._ready)
            t = self.tasks.get(tid)
            if t is None or t.state != READY:
                continue
            eid = self._choose_engine(t)
            if eid is None:
                t.state = PARKED
                self._parked.add(tid)
            else:
                self._dispatch(t, eid)
        if self._free and self._busy_slots and any(
                not self.engines[eid].running for eid in self._free):
            self._steal()
        self._check_unmet()

    def _unmet_now(self, tid: int) -> bool:
        """Whether parked task `tid` (every engine idle) has no engine that satisfies it: with
        none at all, if it has a depend; else unless it only waits for a skip to end."""
        t = self.tasks[tid]
        if not self.engines:
            return t.nodes[t.node].depend is not None
        return not any(self._satisfies(t, self.engines[eid]) for eid in t.skip)

    def _park_depends(self) -> None:
        """With no engine at all, a task with a depend is unmet (and its timer runs)."""
        keep = []
        for tid in self._ready:
            t = self.tasks.get(tid)
            if t is None or t.state != READY:
                continue
            if t.nodes[t.node].depend is not None:
                t.state = PARKED
                self._parked.add(tid)
            else:
                keep.append(tid)
        heapq.heapify(keep)
        self._ready = keep

    def _steal(self) -> None:
        """Each engine that holds nothing asks for one task buffered behind another's."""
        victims = [e for e in self.engines.values() if len(e.running) > 1]
        if not victims:
            return
        victims.sort(key=lambda e: len(e.running), reverse=True)
        for eid in self._free:
            thief = self.engines[eid]
            if thief.running or eid in self._thieves:
                continue
            for victim in victims:
                t = self._stealable(victim, thief)
                if t is not None:
                    t.steal_tried = True
                    self._thieves[eid] = (victim.eid, t.tid, t.attempts)
                    self._out.append(Revoke(victim.eid, t.tid, t.attempts))
                    break

    def _stealable(self, victim: _Engine, thief: _Engine) -> _Task | None:
        """The newest task buffered on `victim` (not its first) that `thief` may run."""
        held = list(victim.running)
        for tid in reversed(held[1:]):
            t = self.tasks.get(tid)
            if (t is None or t.state != RUNNING or t.engine != victim.eid or t.steal_tried
                    or victim.running[tid] != t.attempts):
                continue
            if thief.eid in t.skip or not self._satisfies(t, thief):
                continue
            return t
        return None

    def _check_unmet(self) -> None:
        if self._all_idle():
            for tid in self._parked:
                if tid in self._unmet or not self._unmet_now(tid):
                    continue
                self._token += 1
                self._unmet[tid] = self._token
                self._out.append(ArmTimer(("unmet", tid, self._token), self.unmet_timeout))
        elif self._unmet:
            for tid, token in self._unmet.items():
                self._out.append(CancelTimer(("unmet", tid, token)))
            self._unmet.clear()
