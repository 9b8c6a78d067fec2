"""A stateful model test of the scheduler: random event sequences (hypothesis) against a model
that predicts every Finish and checks every other action and the queries.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskmill.scheduler import (
    ABORTED,
    DEPENDENCY,
    ENGINE_DIED,
    ERROR,
    FINISHED,
    OK,
    REJECTED,
    RESULT,
    RUNNING,
    STORY_LENGTH,
    UNMET_TIMEOUT,
    Abort,
    AddEngine,
    ArmTimer,
    CancelTimer,
    Dispatch,
    EngineGone,
    Finish,
    Interrupt,
    Node,
    Revoke,
    RevokeAnswered,
    Scheduler,
    SetProperties,
    Spin,
    Submit,
    TaskDone,
    TimerFired,
    Withdraw,
    split_answer,
)

# ---------------------------------------------------------------------------------------------
# Stateful model test
# ---------------------------------------------------------------------------------------------

KEYS = ("a", "b")
MODEL_UNMET = 7.0


class DependFn:
    """A callable `depend` whose meaning the model can read: "these keys have these values",
    raising KeyError on a missing key (which must count as False), or always raising."""

    def __init__(self, spec: dict, raises: bool = False) -> None:
        self.spec = spec
        self.raises = raises

    def __call__(self, props: Any) -> bool:
        if self.raises:
            raise RuntimeError("depend exploded")
        return all(props[k] == v for k, v in self.spec.items())

    def __repr__(self) -> str:
        return f"DependFn({self.spec!r}, raises={self.raises})"


def model_satisfies(depend: Any, props: dict) -> bool:
    if depend is None:
        return True
    if isinstance(depend, DependFn):
        if depend.raises:
            return False
        depend = depend.spec
    return all(k in props and props[k] == v for k, v in depend.items())


def model_idle_only(depend: Any) -> bool:
    """The rule: a depend that may read properties task code can change (a callable, or a
    dict on anything but engineid, hostname and pid) is placed on an engine holding nothing."""
    if depend is None:
        return False
    return isinstance(depend, DependFn) or not set(depend) <= {"engineid", "hostname", "pid"}


# The whole property space is small: every dict over KEYS with values 0/1 (9 of them). Drawing
# from precomputed lists keeps hypothesis' per-step cost low.
PROP_SPACE = [{}] + [{k: v} for k in KEYS for v in (0, 1)] + [
    {"a": x, "b": y} for x in (0, 1) for y in (0, 1)
]
PROPS = st.sampled_from(PROP_SPACE)
DEPENDS = (
    [None]
    + [dict(d) for d in PROP_SPACE[1:]]
    + [DependFn(d) for d in PROP_SPACE]
    + [DependFn({}, raises=True)]
)


@st.composite
def node_lists(draw: Any) -> list[Node]:
    n = draw(st.integers(1, 2))
    return [
        Node(
            retries=draw(st.integers(0, 2)),
            depend=draw(st.sampled_from(DEPENDS)),
            recovery=draw(st.sampled_from([None, None, *range(n)])),
        )
        for _ in range(n)
    ]


PICK = st.integers(0, 63)  # an index into whatever the model holds at that step


def pick(seq: list, i: int) -> Any:
    return seq[i % len(seq)]


@dataclass
class MTask:
    tid: int
    nodes: list[Node]
    deps: list[int]
    node: int = 0
    fails: int = 0  # counted failed attempts of the current node
    attempts: int = 0  # counted attempts of the whole task
    handed_over: set[int] = field(default_factory=set)
    offered: set[int] = field(default_factory=set)  # engines that reported an attempt of the node
    skip: set[int] = field(default_factory=set)  # engines it skips (they rejected it)
    engine: int | None = None  # where the current attempt is held
    attempt: int | None = None
    finish: Finish | None = None
    steal_tried: bool = False  # a Revoke of the current attempt was sent


@dataclass
class MEngine:
    props: dict
    slots: int
    held: list[tuple[int, int]] = field(default_factory=list)  # (tid, attempt), dispatch order


class SchedulerMachine(RuleBasedStateMachine):
    """Random event sequences against a model that applies every returned action.

    The model predicts every Finish (which task, which outcome) from the rules: retries,
    recovery chains, rejection (with the skips it starts and whatever ends them), engine
    death, abort, unmet timers and `after`; and which skip and unmet timers are armed. Dispatches are
    not predicted (which engine is FIFO/longest-idle detail, tested directly above) but each one
    is checked to be legal, and the invariants check that no free engine is left idle while a
    queued task could use it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.s = Scheduler(unmet_timeout=MODEL_UNMET)
        self.tasks: dict[int, MTask] = {}
        self.engines: dict[int, MEngine] = {}
        self.next_tid = 0
        self.next_eid = 0
        self.armed: dict[int, tuple] = {}  # tid -> live unmet timer key
        self.skips: dict[tuple[int, int], tuple] = {}  # (tid, eid) -> live skip timer key
        self.dead_keys: list[tuple] = []
        self.revokes: list[Revoke] = []  # sent, not yet answered
        # Taskids leased and not submitted yet (a run()'s: tasks `awaits` them), and those
        # given back unsubmitted (withdrawn: who awaited one fails with `dependency`).
        self.reserved: set[int] = set()
        self.never: set[int] = set()
        self.cyclic: set[int] = set()  # tasks that failed for waiting for a task awaiting them

    # -- model helpers ---------------------------------------------------------------------
    def active(self) -> list[MTask]:
        return [t for t in self.tasks.values() if t.finish is None]

    def unfinished(self, d: int) -> bool:
        """Whether task `d` is one a task still waits for: active, or reserved (unsubmitted)."""
        return d in self.reserved or (d in self.tasks and self.tasks[d].finish is None)

    def waiting(self, t: MTask) -> bool:
        return any(map(self.unfinished, t.deps))

    def reaches(self, start: int, target: int) -> bool:
        """Whether task `start` waits for `target`, directly or through what it waits for."""
        seen, todo = {start}, [start]
        while todo:
            t = self.tasks.get(todo.pop())
            for d in t.deps if t is not None and t.finish is None else ():
                if d == target:
                    return True
                if d not in seen and self.unfinished(d):
                    seen.add(d)
                    todo.append(d)
        return False

    def eligible(self, t: MTask, eid: int) -> bool:
        e = self.engines[eid]
        depend = t.nodes[t.node].depend
        return eid not in t.skip and model_satisfies(depend, e.props) \
            and not (e.held and model_idle_only(depend))

    def counted_failure(self, t: MTask, eid: int, outcome: str) -> tuple | None:
        """The model's rule for a failed attempt: retry, recovery, or a final Finish."""
        t.fails += 1
        if t.fails <= t.nodes[t.node].retries:
            return None
        return self.node_over(t, eid, outcome)

    def node_over(self, t: MTask, eid: int, outcome: str) -> tuple | None:
        """The current node failed for good: hand over to its recovery, or the final Finish."""
        node = t.nodes[t.node]
        if node.recovery is not None and node.recovery not in t.handed_over:
            t.handed_over.add(t.node)
            t.node = node.recovery
            t.fails = 0
            t.offered.clear()
            t.skip.clear()
            return None
        return (outcome, False, eid)

    def rejected(self, t: MTask, eid: int) -> tuple | None:
        """The model's rule for a rejection: it uses a retry and counts no attempt; the task
        skips that engine, unless it is out of retries and every live engine that satisfies
        it was offered it: then the node is over (the final rejection counts an attempt)."""
        t.offered.add(eid)
        t.attempts -= 1
        t.fails += 1
        depend = t.nodes[t.node].depend
        everywhere = all(x in t.offered for x, m in self.engines.items()
                         if model_satisfies(depend, m.props))
        if t.fails <= t.nodes[t.node].retries or not everywhere:
            t.skip.add(eid)
            return None
        f = self.node_over(t, eid, RESULT)
        if f is not None:
            t.attempts += 1
        return f

    def engine_changed(self, eid: int) -> None:
        """Engine `eid`'s properties changed, or it left: no task skips it any more."""
        for t in self.active():
            t.skip.discard(eid)

    def apply(self, actions: list, expected: dict | None = None, interrupts: set | None = None):
        expected = dict(expected or {})
        interrupts = set(interrupts or ())
        finished_now: dict[int, Finish] = {}
        for a in actions:
            if isinstance(a, Dispatch):
                self.on_dispatch(a)
            elif isinstance(a, Finish):
                t = self.tasks.get(a.tid)
                assert t is not None, f"Finish of a task never submitted: {a}"
                assert t.finish is None, f"task {a.tid} finished twice: {t.finish} then {a}"
                if a.outcome != ABORTED:
                    assert t.engine is None, f"{a} while the task is still held by {t.engine}"
                assert a.attempts == t.attempts, (a, t.attempts)
                if a.outcome == DEPENDENCY:
                    assert a.detail in t.deps and a.engineid is None, a
                    if a.detail not in self.never and a.tid not in self.cyclic:
                        dep = self.tasks.get(a.detail)
                        assert dep is not None and dep.finish is not None, a
                        assert not dep.finish.ok, (a, dep.finish)
                t.finish = a
                t.engine = None
                t.skip.clear()
                finished_now[a.tid] = a
            elif isinstance(a, Interrupt):
                assert (a.eid, a.tid) in interrupts, f"unexpected {a}"
                assert a.reason == ABORTED
                assert a.attempt == self.tasks[a.tid].attempt, (a, self.tasks[a.tid])
                interrupts.discard((a.eid, a.tid))
            elif isinstance(a, Revoke):
                self.on_revoke(a)
            elif isinstance(a, ArmTimer) and a.key[0] == "skip":
                _, tid, eid, _token = a.key
                assert (tid, eid) not in self.skips, f"second skip timer for {(tid, eid)}: {a}"
                assert a.delay == 1.0, a
                self.skips[(tid, eid)] = a.key
            elif isinstance(a, ArmTimer):
                kind, tid, _token = a.key
                assert kind == "unmet"
                assert tid not in self.armed, f"second timer for {tid}: {a}"
                assert a.delay == MODEL_UNMET
                self.armed[tid] = a.key
            elif isinstance(a, CancelTimer) and a.key[0] == "skip":
                _, tid, eid, _token = a.key
                assert self.skips.get((tid, eid)) == a.key, f"cancel of a timer not armed: {a}"
                del self.skips[(tid, eid)]
                self.dead_keys.append(a.key)
            elif isinstance(a, CancelTimer):
                tid = a.key[1]
                assert self.armed.get(tid) == a.key, f"cancel of a timer not armed: {a}"
                del self.armed[tid]
                self.dead_keys.append(a.key)
            else:  # pragma: no cover
                raise AssertionError(f"unknown action {a!r}")
        assert not interrupts, f"missing Interrupt for {interrupts}"
        for tid, (outcome, ok, eid) in expected.items():
            f = finished_now.get(tid)
            assert f is not None, f"expected Finish({tid}, {outcome}) in {actions}"
            assert (f.outcome, f.ok) == (outcome, ok), (f, outcome, ok)
            assert f.engineid == eid, (f, eid)
        for tid, f in finished_now.items():
            if tid not in expected:
                assert f.outcome == DEPENDENCY, f"unexpected {f}"
        return actions

    def on_dispatch(self, a: Dispatch) -> None:
        t = self.tasks.get(a.tid)
        assert t is not None and t.finish is None, f"dispatch of an inactive task: {a}"
        for d in t.deps:
            f = self.tasks[d].finish if d in self.tasks else None
            assert f is not None and f.ok, f"{a} before its dependency {d} finished ok"
        for eid, e in self.engines.items():
            assert all(tid != a.tid for tid, _ in e.held), f"{a} while held by engine {eid}"
        e = self.engines.get(a.eid)
        assert e is not None, f"{a} to an unregistered engine"
        assert len(e.held) < e.slots, f"{a} to a full engine {e}"
        assert a.node == t.node, (a, t.node)
        assert model_satisfies(t.nodes[t.node].depend, e.props), (a, e.props)
        assert a.eid not in t.skip, f"{a} to an engine the task skips"
        t.attempts += 1
        assert a.attempt == t.attempts, (a, t.attempts)
        assert a.tries == t.fails + 1, (a, t.fails)  # this dispatch uses one more retry
        assert a.handed_over == tuple(sorted(t.handed_over)), (a, t.handed_over)
        e.held.append((a.tid, a.attempt))
        t.engine, t.attempt = a.eid, a.attempt

    def steal_candidates(self, thief: int) -> list[int]:
        """Tasks buffered (not first in line) on other engines that engine `thief` may run."""
        out = []
        for eid, e in self.engines.items():
            if eid == thief:
                continue
            for tid, attempt in e.held[1:]:
                t = self.tasks[tid]
                if (t.finish is None and t.engine == eid and t.attempt == attempt
                        and not t.steal_tried and self.eligible(t, thief)):
                    out.append(tid)
        return out

    def on_revoke(self, a: Revoke) -> None:
        t = self.tasks.get(a.tid)
        e = self.engines.get(a.eid)
        assert t is not None and t.finish is None and e is not None, f"{a} of nothing held"
        assert t.engine == a.eid and t.attempt == a.attempt, (a, t)
        position = e.held.index((a.tid, a.attempt))
        assert position >= 1, f"{a} of the task the engine runs"
        assert not t.steal_tried, f"{a} sent twice"
        assert any(not m.held and self.eligible(t, x) for x, m in self.engines.items()), (
            f"{a} with no idle engine that could run it")
        t.steal_tried = True
        self.revokes.append(a)

    # -- rules -----------------------------------------------------------------------------
    @precondition(lambda self: self.revokes)
    @rule(i=PICK, ok=st.booleans())
    def answer_revoke(self, i: int, ok: bool) -> None:
        """The engine answers a Revoke: ok only if it has not started the task (the first in
        its line may have started; any may have, when its report is still on the way)."""
        a = self.revokes.pop(i % len(self.revokes))
        e = self.engines.get(a.eid)
        held = e is not None and (a.tid, a.attempt) in e.held
        if held and e.held.index((a.tid, a.attempt)) == 0:
            ok = False
        if not held:
            ok = ok and e is None  # (a dead engine's answer: ignored whatever it says)
        actions = self.s.handle(RevokeAnswered(a.eid, a.tid, a.attempt, ok))
        if e is None:
            self.apply(actions)
            return
        t = self.tasks[a.tid]
        if ok and held:
            e.held.remove((a.tid, a.attempt))
            if t.finish is None and t.engine == a.eid and t.attempt == a.attempt:
                t.engine = None
                t.attempts -= 1
                t.steal_tried = False
        self.apply(actions)

    @rule(nodes=node_lists(), picks=st.lists(PICK, max_size=2))
    def submit(self, nodes: list[Node], picks: list[int]) -> None:
        tid = self.next_tid
        self.next_tid += 1
        self.submit_as(tid, nodes, list(dict.fromkeys(i % tid for i in picks)) if tid else [])

    def submit_as(self, tid: int, nodes: list[Node], after: list[int]) -> None:
        active, awaits, broken = [], [], None
        for dep in after:  # as the controller does it
            if self.s.is_active(dep):
                active.append(dep)
            elif dep in self.reserved:  # (a leased id not stored yet)
                awaits.append(dep)
            elif dep in self.never or not self.tasks[dep].finish.ok:
                broken = dep
                break
        awaited = any(tid in t.deps for t in self.active())
        self.tasks[tid] = MTask(tid, nodes, deps=list(after))
        loop = None if broken is not None or not awaited else next(
            (d for d in active if self.reaches(d, tid)), None)
        if loop is not None:
            self.cyclic.add(tid)
        actions = self.s.handle(Submit(tid, nodes, after=active, broken_after=broken,
                                       awaits=awaits))
        fails = broken if broken is not None else loop
        self.apply(actions, {tid: (DEPENDENCY, False, None)} if fails is not None else {})
        if fails is not None:
            assert self.tasks[tid].finish.detail == fails

    @rule()
    def reserve(self) -> None:
        """A taskid is leased: tasks submitted later may wait for it before it is stored."""
        self.reserved.add(self.next_tid)
        self.next_tid += 1

    @precondition(lambda self: self.reserved)
    @rule(i=PICK, nodes=node_lists(), picks=st.lists(PICK, max_size=2))
    def submit_reserved(self, i: int, nodes: list[Node], picks: list[int]) -> None:
        """A leased taskid is stored, `after` any task (one that awaits it too: a cycle)."""
        tid = pick(sorted(self.reserved), i)
        self.reserved.discard(tid)
        self.submit_as(tid, nodes, list(dict.fromkeys(
            p % self.next_tid for p in picks if p % self.next_tid != tid)))

    @precondition(lambda self: self.reserved)
    @rule(i=PICK)
    def give_back(self, i: int) -> None:
        """A leased taskid will never be stored (its lease given back or expired)."""
        tid = pick(sorted(self.reserved), i)
        self.reserved.discard(tid)
        self.never.add(tid)
        self.apply(self.s.handle(Withdraw([tid])))
        assert not self.s.is_awaited(tid)

    @rule(retries=st.integers(0, 1), n=st.integers(1, 4))
    def submit_plain(self, retries: int, n: int) -> None:
        """A few tasks any engine may run: engines fill up and buffer, so steals happen."""
        for _ in range(n):
            self.submit([Node(retries=retries)], [])

    @rule(retries=st.integers(0, 1), again=st.integers(0, 1))
    def submit_with_recovery(self, retries: int, again: int) -> None:
        """A task any engine may run, with a recovery task any engine may run."""
        self.submit([Node(retries=retries, recovery=1), Node(retries=again)], [])

    @rule(props=PROPS, slots=st.integers(1, 3))
    def add_engine(self, props: dict, slots: int) -> None:
        eid = self.next_eid
        self.next_eid += 1
        self.engines[eid] = MEngine(dict(props), slots)
        self.apply(self.s.handle(AddEngine(eid, props, slots)))

    @precondition(lambda self: self.next_eid > 0)
    @rule(props=PROPS, i=PICK)
    def set_properties(self, props: dict, i: int) -> None:
        eid = i % self.next_eid  # sometimes a dead one
        if eid in self.engines:
            if self.engines[eid].props != props:
                self.engine_changed(eid)
            self.engines[eid].props = dict(props)
        self.apply(self.s.handle(SetProperties(eid, props)))

    @precondition(lambda self: self.engines)
    @rule(i=PICK)
    def remove_engine(self, i: int) -> None:
        eid = pick(sorted(self.engines), i)
        e = self.engines.pop(eid)
        self.engine_changed(eid)  # (its skips end)
        expected = {}
        for tid, _attempt in e.held:
            t = self.tasks[tid]
            if t.finish is not None or t.engine != eid:
                continue  # aborted, still held
            t.engine = None
            t.steal_tried = False
            # Buffered ones too: the engine may have started them since it last reported.
            f = self.counted_failure(t, eid, ENGINE_DIED)
            if f:
                expected[tid] = f
        self.apply(self.s.handle(EngineGone(eid)), expected)

    @precondition(lambda self: any(e.held for e in self.engines.values()))
    @rule(
        i=PICK,
        j=PICK,
        status=st.sampled_from([OK, ERROR, ERROR, REJECTED]),
        props=st.none() | st.none() | PROPS,
    )
    def report(self, i: int, j: int, status: str, props: dict | None) -> None:
        """An engine reports the attempt it is running (the head of its line), or an
        aborted one it was told to drop."""
        eid = pick(sorted(e for e, m in self.engines.items() if m.held), i)
        e = self.engines[eid]
        choices = [e.held[0]] + [
            h for h in e.held[1:] if self.tasks[h[0]].finish is not None
        ]
        tid, attempt = pick(choices, j)
        self._task_done(eid, tid, attempt, status, props)

    @precondition(lambda self: any(e.held for e in self.engines.values()))
    @rule(i=PICK, props=st.none() | st.none() | st.none() | PROPS)
    def reject(self, i: int, props: dict | None) -> None:
        """An engine rejects the attempt it runs (more often than `report` alone would, so
        that tasks run out of retries and engines while some are skipped)."""
        eid = pick(sorted(e for e, m in self.engines.items() if m.held), i)
        tid, attempt = self.engines[eid].held[0]
        self._task_done(eid, tid, attempt, REJECTED, props)

    @precondition(lambda self: self.next_eid > 0)
    @rule(
        i=PICK,
        j=PICK,
        attempt=st.integers(0, 4),
        status=st.sampled_from([OK, ERROR, REJECTED]),
        props=st.none() | PROPS,
    )
    def stale_report(self, i: int, j: int, attempt: int, status: str, props: dict | None):
        """A report that matches nothing the engine holds: a wrong attempt, a finished task,
        a dead engine."""
        eid = i % self.next_eid
        tid = j % (self.next_tid + 1)
        e = self.engines.get(eid)
        if e is not None and (tid, attempt) in e.held:
            attempt += 100
        self._task_done(eid, tid, attempt, status, props)

    def _task_done(self, eid: int, tid: int, attempt: int, status: str, props: Any) -> None:
        actions = self.s.handle(TaskDone(eid, tid, attempt, status, props))
        e = self.engines.get(eid)
        if e is None:
            assert actions == [], f"a dead engine's report did something: {actions}"
            return
        if props is not None:
            if props != e.props:
                self.engine_changed(eid)  # (before the rejection below starts a skip)
            e.props = dict(props)
        if (tid, attempt) in e.held:
            e.held.remove((tid, attempt))
        t = self.tasks.get(tid)
        expected = {}
        if t is not None and t.finish is None and t.engine == eid and t.attempt == attempt:
            t.engine = None
            t.steal_tried = False
            if status == OK:
                expected[tid] = (RESULT, True, eid)
            elif status == REJECTED:
                f = self.rejected(t, eid)
                if f:
                    expected[tid] = f
            else:
                t.offered.add(eid)
                f = self.counted_failure(t, eid, RESULT)
                if f:
                    expected[tid] = f
        self.apply(actions, expected)

    @precondition(lambda self: self.next_tid > 0)
    @rule(i=PICK)
    def abort(self, i: int) -> None:
        tid = i % (self.next_tid + 1)  # sometimes unknown
        found, actions = split_answer(self.s.handle(Abort(tid)))
        t = self.tasks.get(tid)
        if t is None or t.finish is not None:
            assert (found, actions) == (False, [])
            return
        assert found is True
        interrupts = {(t.engine, tid)} if t.engine is not None else set()
        self.apply(actions, {tid: (ABORTED, False, t.engine)}, interrupts)

    @precondition(lambda self: self.armed)
    @rule(i=PICK)
    def fire_armed_timer(self, i: int) -> None:
        tid = pick(sorted(self.armed), i)
        key = self.armed.pop(tid)  # the shell's timer is gone once it fires
        self.apply(self.s.handle(TimerFired(key)), {tid: (UNMET_TIMEOUT, False, None)})

    @precondition(lambda self: self.skips)
    @rule(i=PICK)
    def fire_skip_timer(self, i: int) -> None:
        """A second has passed since an engine rejected a task: the task may go there again."""
        tid, eid = pick(sorted(self.skips), i)
        key = self.skips.pop((tid, eid))
        self.tasks[tid].skip.discard(eid)
        self.apply(self.s.handle(TimerFired(key)))

    @precondition(lambda self: self.next_tid > 0)
    @rule(i=PICK)
    def fire_stale_timer(self, i: int) -> None:
        made_up = [("unmet", self.next_tid, 1), ("unmet", 0, 10**6), ("other", 1),
                   ("skip", 0, 0, 10**6), ("skip", self.next_tid, 0, 1)]
        key = pick(made_up + self.dead_keys, i)
        self.apply(self.s.handle(TimerFired(key)))

    @rule()
    def spin(self) -> None:
        dispatched, actions = split_answer(self.s.handle(Spin()))
        assert dispatched == any(isinstance(a, Dispatch) for a in actions)
        self.apply(actions)

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def no_task_lost(self) -> None:
        for tid, t in self.tasks.items():
            assert self.s.is_active(tid) == (t.finish is None), (tid, t.finish)
        assert len(self.s.active_ids()) == len(self.active())

    @invariant()
    def task_views_and_stories_match(self) -> None:
        for t in self.active():
            view = self.s.task(t.tid)
            assert view is not None and (view.engine, view.node) == (t.engine, t.node), (view, t)
            assert (view.state == RUNNING) == (t.engine is not None), (view, t)
            assert view.handed_over == tuple(sorted(t.handed_over)), (view, t)
            story = self.s.story(t.tid)
            assert 0 < len(story) <= STORY_LENGTH
            assert story[-1].after == view.state, (story[-1], view)
            assert all(a.after == b.before for a, b in itertools.pairwise(story)), story
        for t in self.tasks.values():
            if t.finish is not None:
                story = self.s.story(t.tid)
                assert story and story[-1].after == FINISHED, (t, story)

    @invariant()
    def queue_views_match(self) -> None:
        active = self.active()
        pending = sorted(t.tid for t in active if t.engine is not None)
        scheduled = sorted(t.tid for t in active if t.engine is None)
        assert self.s.pending_ids() == pending
        assert self.s.scheduled_ids() == scheduled
        assert self.s.counts() == (len(scheduled), len(pending))

    @invariant()
    def engines_hold_what_the_model_says(self) -> None:
        holders: dict[int, int] = {}
        for eid, e in self.engines.items():
            assert len(e.held) <= e.slots
            assert self.s.engine_load(eid) == [tid for tid, _ in e.held]
            for tid, _ in e.held:
                assert tid not in holders, f"task {tid} on engines {holders[tid]} and {eid}"
                holders[tid] = eid
        for t in self.active():
            if t.engine is not None:
                assert holders.get(t.tid) == t.engine

    @invariant()
    def dependencies_hold(self) -> None:
        for r in self.reserved:
            assert self.s.is_awaited(r) == any(r in t.deps for t in self.active()), r
        for t in self.active():
            for d in t.deps:
                assert d not in self.never, f"task {t.tid} still waits for {d}, given back"
                f = self.tasks[d].finish if d in self.tasks else None
                assert f is None or f.ok, f"task {t.tid} still active after {d} failed"
                if t.engine is not None:
                    assert f is not None and f.ok

    @invariant()
    def no_idle_engine_could_run_a_queued_task(self) -> None:
        for t in self.active():
            if t.engine is not None or self.waiting(t):
                continue
            for eid, e in self.engines.items():
                if len(e.held) < e.slots:
                    assert not self.eligible(t, eid), (
                        f"task {t.tid} (node {t.node}: {t.nodes[t.node].depend}) queued while "
                        f"engine {eid} {e} has a free slot and qualifies"
                    )

    @invariant()
    def an_idle_engine_asks_for_buffered_work(self) -> None:
        idle = [eid for eid, e in self.engines.items() if not e.held]
        if any(self.steal_candidates(eid) for eid in idle):
            assert self.revokes, "an idle engine could take a buffered task but asked for none"

    @invariant()
    def unmet_timers_exactly_when_all_idle_and_none_satisfies(self) -> None:
        want = set()
        if not any(e.held for e in self.engines.values()):
            for t in self.active():
                if t.engine is None and not self.waiting(t):
                    if not self.engines:  # (with none at all, a task with a depend is unmet)
                        if t.nodes[t.node].depend is not None:
                            want.add(t.tid)
                    elif not any(model_satisfies(t.nodes[t.node].depend, m.props)
                                 for m in self.engines.values()):
                        want.add(t.tid)  # (one that only waits for a skip to end is not unmet)
        assert set(self.armed) == want

    @invariant()
    def skip_timers_exactly_where_the_model_skips(self) -> None:
        want = {(t.tid, eid) for t in self.active() for eid in t.skip}
        assert set(self.skips) == want
        for tid, eid in want:
            assert eid in self.engines, f"task {tid} skips engine {eid}, which is gone"


SchedulerMachine.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # no "explain" phase: its line tracer makes a failing run take minutes on Python 3.11
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
TestSchedulerStateful = SchedulerMachine.TestCase
