"""Unit tests of the scheduler's rules (SPEC.md §2, §6.5), plus a stateful model test.

The scheduler is a pure state machine, so everything here is fast and needs no cluster: each
event is a record given to `Scheduler.handle` and we check the exact actions it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskmill.scheduler import (
    ABORTED,
    DEPENDENCY,
    ENGINE_DIED,
    ERROR,
    OK,
    REJECTED,
    RESULT,
    UNMET_TIMEOUT,
    Abort,
    AddEngine,
    ArmTimer,
    CancelTimer,
    Dispatch,
    EngineGone,
    Finish,
    Interrupt,
    LostExpired,
    LostReturned,
    Node,
    Resume,
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

UNMET = 5.0


def make(**kw: Any) -> Scheduler:
    kw.setdefault("unmet_timeout", UNMET)
    return Scheduler(**kw)


def of(actions: list, cls: type) -> list:
    return [a for a in actions if isinstance(a, cls)]


def one(actions: list, cls: type) -> Any:
    found = of(actions, cls)
    assert len(found) == 1, actions
    return found[0]


def arm_keys(actions: list) -> list[tuple]:
    return [a.key for a in of(actions, ArmTimer)]


# ---------------------------------------------------------------------------------------------
# FIFO and longest-idle engine
# ---------------------------------------------------------------------------------------------


def test_fifo_oldest_task_to_longest_idle_engine():
    s = make()
    assert s.handle(AddEngine(0, {})) == []
    assert s.handle(AddEngine(1, {})) == []
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]  # engine 0 registered first
    assert s.handle(Submit(1, [Node()])) == [Dispatch(1, 1, 0, 1)]
    for tid in (2, 3, 4):
        assert s.handle(Submit(tid, [Node()])) == []  # both engines busy
    # engine 1 frees first: the oldest queued task goes to it
    assert s.handle(TaskDone(1, 1, 1, OK)) == [Finish(1, RESULT, True, 1, None, 1), Dispatch(2, 1, 0, 1)]
    assert s.handle(TaskDone(1, 2, 1, OK)) == [Finish(2, RESULT, True, 1, None, 1), Dispatch(3, 1, 0, 1)]
    assert s.handle(TaskDone(0, 0, 1, OK)) == [Finish(0, RESULT, True, 0, None, 1), Dispatch(4, 0, 0, 1)]
    # now engine 1 goes idle before engine 0: engine 1 is the longest idle, not the lowest id
    assert s.handle(TaskDone(1, 3, 1, OK)) == [Finish(3, RESULT, True, 1, None, 1)]
    assert s.handle(TaskDone(0, 4, 1, OK)) == [Finish(4, RESULT, True, 0, None, 1)]
    assert s.handle(Submit(5, [Node()])) == [Dispatch(5, 1, 0, 1)]
    assert s.handle(Submit(6, [Node()])) == [Dispatch(6, 0, 0, 1)]


def test_engine_with_room_left_goes_to_the_back_of_the_line():
    s = make()
    s.handle(AddEngine(0, {}, slots=2))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node()])) == [Dispatch(1, 1, 0, 1)]  # engine 0 still has room, but behind 1
    assert s.handle(Submit(2, [Node()])) == [Dispatch(2, 0, 0, 1)]
    assert s.handle(Submit(3, [Node()])) == []
    assert s.engine_load(0) == [0, 2]


def test_retried_task_keeps_its_taskid_place_in_the_queue():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(0, [Node(retries=1)])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node()])) == []
    assert s.handle(Submit(2, [Node()])) == []
    # the retry of task 0 is older than 1 and 2: it goes first
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Dispatch(0, 0, 0, 2)]
    assert s.handle(TaskDone(0, 0, 2, OK)) == [Finish(0, RESULT, True, 0, None, 2), Dispatch(1, 0, 0, 1)]


def test_parked_task_keeps_its_place_when_an_engine_for_it_frees():
    s = make()
    s.handle(AddEngine(0, {"x": 0}))
    s.handle(AddEngine(1, {"x": 1}))
    assert s.handle(Submit(0, [Node(depend={"x": 1})])) == [Dispatch(0, 1, 0, 1)]
    assert s.handle(Submit(1, [Node(depend={"x": 1})])) == []  # engine 0 is free but does not qualify
    assert s.handle(Submit(2, [Node()])) == [Dispatch(2, 0, 0, 1)]
    assert s.handle(Submit(3, [Node()])) == []
    # engine 1 frees: the parked task 1 is older than 3 and gets it
    assert s.handle(TaskDone(1, 0, 1, OK)) == [Finish(0, RESULT, True, 1, None, 1), Dispatch(1, 1, 0, 1)]
    assert s.handle(TaskDone(0, 2, 1, OK)) == [Finish(2, RESULT, True, 0, None, 1), Dispatch(3, 0, 0, 1)]


# ---------------------------------------------------------------------------------------------
# depend
# ---------------------------------------------------------------------------------------------


def test_depend_dict_picks_a_matching_engine():
    s = make()
    s.handle(AddEngine(0, {"gpu": 0}))
    s.handle(AddEngine(1, {"gpu": 1, "mem": 8}))
    s.handle(AddEngine(2, {}))
    assert s.handle(Submit(0, [Node(depend={"gpu": 1})])) == [Dispatch(0, 1, 0, 1)]
    assert s.handle(Submit(1, [Node(depend={"gpu": 1})])) == []  # only engine 1 qualifies: busy
    assert s.handle(Submit(2, [Node(depend={"gpu": 0})])) == [Dispatch(2, 0, 0, 1)]
    assert s.handle(Submit(3, [Node(depend={"cpu": 1})])) == []  # a missing key does not match
    assert s.handle(Submit(4, [Node(depend={"gpu": 1, "mem": 4})])) == []  # every item must match
    assert s.handle(Submit(5, [Node(depend={})])) == [Dispatch(5, 2, 0, 1)]  # empty dict: any engine
    assert s.handle(TaskDone(1, 0, 1, OK)) == [Finish(0, RESULT, True, 1, None, 1), Dispatch(1, 1, 0, 1)]
    assert s.scheduled_ids() == [3, 4]


def test_depend_callable():
    s = make()
    s.handle(AddEngine(0, {"mem": 2}))
    s.handle(AddEngine(1, {"mem": 16}))
    seen = []

    def big(props):
        seen.append(dict(props))
        return props["mem"] >= 8

    assert s.handle(Submit(0, [Node(depend=big)])) == [Dispatch(0, 1, 0, 1)]
    assert {"mem": 2} in seen and {"mem": 16} in seen
    # truthy / falsy return values count
    assert s.handle(Submit(1, [Node(depend=lambda p: p["mem"] - 2)])) == []  # 0 on engine 0: falsy
    assert s.handle(TaskDone(1, 0, 1, OK)) == [Finish(0, RESULT, True, 1, None, 1), Dispatch(1, 1, 0, 1)]


@pytest.mark.parametrize(
    "depend",
    [lambda p: p["missing"], lambda p: 1 / 0, lambda p: p.nope(), lambda p: [][0]],
    ids=["KeyError", "ZeroDivisionError", "AttributeError", "IndexError"],
)
def test_depend_callable_that_raises_counts_as_false(depend):
    s = make()
    s.handle(AddEngine(0, {"gpu": 1}))
    acts = s.handle(Submit(0, [Node(depend=depend)]))
    assert of(acts, Dispatch) == []
    keys = arm_keys(acts)  # every engine idle, none satisfies
    assert len(keys) == 1 and keys[0][:2] == ("unmet", 0)
    assert s.is_active(0)


def test_depend_callable_raising_on_one_engine_still_matches_another():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {"gpu": 1}))
    assert s.handle(Submit(0, [Node(depend=lambda p: p["gpu"] == 1)])) == [Dispatch(0, 1, 0, 1)]


def test_depend_callable_is_not_reevaluated_when_properties_did_not_change():
    s = make()
    calls: list[str] = []

    def wants_x(props):
        calls.append(props["name"])
        return props.get("x") == 1

    s.handle(AddEngine(0, {"name": "e0", "x": 0}))
    s.handle(AddEngine(1, {"name": "e1", "x": 0}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node(depend=wants_x)])) == []  # parked: engine 1 does not qualify
    assert calls.count("e1") == 1
    # engine 0 frees: it is checked once for the parked task
    acts = s.handle(TaskDone(0, 0, 1, OK))
    assert acts[0] == Finish(0, RESULT, True, 0, None, 1) and not of(acts, Dispatch)
    assert calls.count("e0") == 1
    # engines busy and free again, spins, same properties re-set: no new evaluation
    ds = [one(s.handle(Submit(tid, [Node()])), Dispatch) for tid in (2, 3)]
    assert {d.eid for d in ds} == {0, 1}
    for d in ds:
        assert of(s.handle(TaskDone(d.eid, d.tid, d.attempt, OK)), Finish)
    s.handle(Spin())
    assert s.handle(SetProperties(0, {"name": "e0", "x": 0})) == []
    s.handle(Spin())
    assert calls.count("e0") == 1 and calls.count("e1") == 1
    assert s.is_active(1) and s.scheduled_ids() == [1]
    # a property change is seen, and the task runs
    assert Dispatch(1, 1, 0, 1) in s.handle(SetProperties(1, {"name": "e1", "x": 1}))
    assert calls.count("e1") == 2


def test_properties_reported_with_a_result_are_used():
    s = make()
    s.handle(AddEngine(0, {"x": 0}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node(depend={"x": 1})])) == []
    assert s.handle(TaskDone(0, 0, 1, OK, {"x": 1})) == [
        Finish(0, RESULT, True, 0, None, 1),
        Dispatch(1, 0, 0, 1),
    ]


def test_properties_reported_with_a_stale_report_are_used():
    """A report the scheduler drops still updates the engine's properties; a parked task
    that they now satisfy must run (not sit there until the unmet timer finishes it)."""
    s = make()
    s.handle(AddEngine(0, {"x": 0}))
    acts = s.handle(Submit(0, [Node(depend={"x": 1})]))
    assert of(acts, Dispatch) == [] and len(arm_keys(acts)) == 1
    acts = s.handle(TaskDone(0, 99, 1, OK, {"x": 1}))  # no such attempt on engine 0
    assert s.engine_properties(0) == {"x": 1}
    assert Dispatch(0, 0, 0, 1) in acts


# ---------------------------------------------------------------------------------------------
# retries
# ---------------------------------------------------------------------------------------------


def test_retries_dispatch_exactly_retries_plus_one_times():
    s = make()
    s.handle(AddEngine(0, {}))
    acts = s.handle(Submit(0, [Node(retries=2)]))
    for attempt in (1, 2, 3):
        assert acts == [Dispatch(0, 0, 0, attempt)]
        acts = s.handle(TaskDone(0, 0, attempt, ERROR))
    assert acts == [Finish(0, RESULT, False, 0, None, 3)]
    assert not s.is_active(0)


def test_no_retries_fails_after_one_attempt_and_success_on_retry_is_a_success():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Finish(0, RESULT, False, 0, None, 1)]
    assert s.handle(Submit(1, [Node(retries=3)])) == [Dispatch(1, 0, 0, 1)]
    assert s.handle(TaskDone(0, 1, 1, ERROR)) == [Dispatch(1, 0, 0, 2)]
    assert s.handle(TaskDone(0, 1, 2, OK)) == [Finish(1, RESULT, True, 0, None, 2)]


def test_retry_prefers_an_engine_that_has_not_failed_it():
    s = make()
    s.handle(AddEngine(0, {}, slots=2))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node(retries=1)])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node()])) == [Dispatch(1, 1, 0, 1)]
    assert s.handle(TaskDone(1, 1, 1, OK)) == [Finish(1, RESULT, True, 1, None, 1)]
    # engine 0 (which still has a free slot) is ahead of engine 1 in the idle line, but it
    # failed task 0: the retry goes to engine 1
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Dispatch(0, 1, 0, 2)]


def test_retry_falls_back_to_the_same_engine_when_it_is_the_only_one():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(0, [Node(retries=1)])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Dispatch(0, 0, 0, 2)]


def test_retry_avoid_does_not_override_depend():
    s = make()
    s.handle(AddEngine(0, {"gpu": 1}, slots=2))
    s.handle(AddEngine(1, {"gpu": 0}))
    assert s.handle(Submit(0, [Node(retries=1, depend={"gpu": 1})])) == [Dispatch(0, 0, 0, 1)]
    # engine 1 is free but does not qualify: the retry goes back to engine 0
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Dispatch(0, 0, 0, 2)]


# ---------------------------------------------------------------------------------------------
# recovery chains (§6.5)
# ---------------------------------------------------------------------------------------------


def run_to_the_end(s: Scheduler, tid: int, acts: list, status: str = ERROR) -> tuple[list, list]:
    """Fail every dispatch of `tid` on engine 0; return (dispatches, final actions)."""
    dispatches = []
    while True:
        d = [a for a in acts if isinstance(a, Dispatch) and a.tid == tid]
        if not d:
            return dispatches, acts
        assert len(d) == 1
        dispatches.append(d[0])
        assert len(dispatches) < 50, "runaway chain"
        acts = s.handle(TaskDone(d[0].eid, tid, d[0].attempt, status))


def test_recovery_runs_under_the_same_taskid():
    s = make()
    s.handle(AddEngine(0, {}))
    acts = s.handle(Submit(7, [Node(recovery=1), Node()]))
    ds, last = run_to_the_end(s, 7, acts)
    assert ds == [Dispatch(7, 0, 0, 1), Dispatch(7, 0, 1, 2)]
    assert last == [Finish(7, RESULT, False, 0, None, 2, 1)]


def test_recovery_result_is_the_task_result():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(0, [Node(recovery=1), Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Dispatch(0, 0, 1, 2)]
    assert s.handle(TaskDone(0, 0, 2, OK)) == [Finish(0, RESULT, True, 0, None, 2, 1)]


def test_recovery_chain_a_b_a_runs_a_then_b():
    s = make()
    s.handle(AddEngine(0, {}))
    acts = s.handle(Submit(0, [Node(recovery=1), Node(recovery=0)]))
    ds, last = run_to_the_end(s, 0, acts)
    assert [d.node for d in ds] == [0, 1]
    assert last == [Finish(0, RESULT, False, 0, None, 2, 1)]


def test_task_that_is_its_own_recovery_runs_twice():
    s = make()
    s.handle(AddEngine(0, {}))
    acts = s.handle(Submit(0, [Node(recovery=0)]))
    ds, last = run_to_the_end(s, 0, acts)
    assert [d.node for d in ds] == [0, 0]
    assert last == [Finish(0, RESULT, False, 0, None, 2)]


def test_longer_chain_a_b_c_b():
    s = make()
    s.handle(AddEngine(0, {}))
    acts = s.handle(Submit(0, [Node(recovery=1), Node(recovery=2), Node(recovery=1)]))
    ds, last = run_to_the_end(s, 0, acts)
    # C's recovery B has already handed over (to C): the chain stops after C
    assert [d.node for d in ds] == [0, 1, 2]
    assert last == [Finish(0, RESULT, False, 0, None, 3, 2)]


def test_recovery_takes_fresh_retries():
    s = make()
    s.handle(AddEngine(0, {}))
    acts = s.handle(Submit(0, [Node(retries=1, recovery=1), Node(retries=2)]))
    ds, last = run_to_the_end(s, 0, acts)
    assert [d.node for d in ds] == [0, 0, 1, 1, 1]
    assert [d.attempt for d in ds] == [1, 2, 3, 4, 5]
    assert last == [Finish(0, RESULT, False, 0, None, 5, 1)]


def test_recovery_uses_its_own_depend():
    s = make()
    s.handle(AddEngine(0, {"kind": "a"}))
    s.handle(AddEngine(1, {"kind": "b"}))
    nodes = [Node(depend={"kind": "a"}, recovery=1), Node(depend={"kind": "b"})]
    assert s.handle(Submit(0, nodes)) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Dispatch(0, 1, 1, 2)]


def test_recovery_after_engine_died():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node(recovery=1), Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(EngineGone(0)) == [Dispatch(0, 1, 1, 2)]
    assert s.handle(EngineGone(1)) == [Finish(0, ENGINE_DIED, False, 1, None, 2, 1)]


# ---------------------------------------------------------------------------------------------
# after
# ---------------------------------------------------------------------------------------------


def test_after_waits_for_its_dependencies_to_succeed():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node()])) == []
    assert s.handle(Submit(2, [Node()], after=[0, 1])) == []
    assert s.handle(AddEngine(1, {})) == [Dispatch(1, 1, 0, 1)]  # not 2: it waits
    assert s.handle(AddEngine(2, {})) == []
    assert s.scheduled_ids() == [2]
    assert s.handle(TaskDone(0, 0, 1, OK)) == [Finish(0, RESULT, True, 0, None, 1)]  # still waits for 1
    assert s.handle(TaskDone(1, 1, 1, OK)) == [Finish(1, RESULT, True, 1, None, 1), Dispatch(2, 2, 0, 1)]


def test_after_a_finished_or_unknown_id_is_ignored_by_the_scheduler():
    # the controller only passes active ids; others must not block the task
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(5, [Node()], after=[1, 2, 5])) == [Dispatch(5, 0, 0, 1)]


def test_failed_dependency_finishes_dependents_transitively():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    s.handle(Submit(1, [Node()], after=[0]))
    s.handle(Submit(2, [Node()], after=[1]))
    s.handle(Submit(3, [Node()], after=[2, 0]))
    s.handle(Submit(4, [Node()]))  # unrelated
    acts = s.handle(TaskDone(0, 0, 1, ERROR))
    fins = {f.tid: f for f in of(acts, Finish)}
    assert fins[0] == Finish(0, RESULT, False, 0, None, 1)
    assert fins[1] == Finish(1, DEPENDENCY, False, None, 0, 0)
    assert fins[2] == Finish(2, DEPENDENCY, False, None, 1, 0)
    assert fins[3].outcome == DEPENDENCY and fins[3].detail in (0, 2)
    assert set(fins) == {0, 1, 2, 3}
    assert of(acts, Dispatch) == [Dispatch(4, 0, 0, 1)]
    assert [f.tid for f in of(acts, Finish)][0] == 0  # the cause comes first


def test_aborted_dependency_finishes_dependents():
    s = make()
    s.handle(Submit(0, [Node()]))
    s.handle(Submit(1, [Node()], after=[0]))
    found, acts = split_answer(s.handle(Abort(0)))
    assert found
    assert acts == [Finish(0, ABORTED, False), Finish(1, DEPENDENCY, False, None, 0, 0)]


def test_dependency_chain_of_5000_does_not_recurse():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    n = 5000
    for tid in range(1, n + 1):
        assert s.handle(Submit(tid, [Node()], after=[tid - 1])) == []
    acts = s.handle(TaskDone(0, 0, 1, ERROR))
    fins = of(acts, Finish)
    assert len(fins) == n + 1
    assert all(f.outcome == DEPENDENCY and f.detail == f.tid - 1 for f in fins[1:])
    assert s.counts() == (0, 0)


def test_dependency_chain_of_5000_succeeds_in_order():
    s = make()
    s.handle(AddEngine(0, {}))
    n = 5000
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    for tid in range(1, n):
        s.handle(Submit(tid, [Node()], after=[tid - 1]))
    for tid in range(n):
        acts = s.handle(TaskDone(0, tid, 1, OK))
        expected = [Finish(tid, RESULT, True, 0, None, 1)]
        if tid + 1 < n:
            expected.append(Dispatch(tid + 1, 0, 0, 1))
        assert acts == expected


def test_broken_after_fails_at_once():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(3, [Node()], broken_after=1)) == [Finish(3, DEPENDENCY, False, None, 1, 0)]
    assert not s.is_active(3)
    assert s.counts() == (0, 0)


# ---------------------------------------------------------------------------------------------
# unmet depend
# ---------------------------------------------------------------------------------------------


def test_unmet_depend_arms_a_timer_when_all_engines_idle_and_times_out():
    s = make()
    s.handle(AddEngine(0, {"gpu": 0}))
    acts = s.handle(Submit(0, [Node(depend={"gpu": 1})]))
    assert len(acts) == 1 and isinstance(acts[0], ArmTimer)
    key = acts[0].key
    assert key[:2] == ("unmet", 0) and acts[0].delay == UNMET
    assert s.handle(TimerFired(key)) == [Finish(0, UNMET_TIMEOUT, False, None, None, 0)]
    assert not s.is_active(0)


def test_unmet_timer_only_when_every_engine_is_idle():
    s = make()
    s.handle(AddEngine(0, {"gpu": 0}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node(depend={"gpu": 1})])) == []  # engine 0 is busy: no timer
    acts = s.handle(TaskDone(0, 0, 1, OK))
    assert acts[0] == Finish(0, RESULT, True, 0, None, 1)
    assert [k[:2] for k in arm_keys(acts)] == [("unmet", 1)]


def test_unmet_timer_cancelled_when_an_engine_becomes_busy_and_stale_key_ignored():
    s = make()
    s.handle(AddEngine(0, {"gpu": 0}))
    (old,) = arm_keys(s.handle(Submit(0, [Node(depend={"gpu": 1})])))
    acts = s.handle(Submit(1, [Node()]))
    assert Dispatch(1, 0, 0, 1) in acts and CancelTimer(old) in acts
    assert s.handle(TimerFired(old)) == []  # stale
    assert s.is_active(0)
    acts = s.handle(TaskDone(0, 1, 1, OK))
    (new,) = arm_keys(acts)
    assert new[:2] == ("unmet", 0) and new != old
    assert s.handle(TimerFired(old)) == []
    assert s.handle(TimerFired(("unmet", 0, 10**9))) == []  # an unknown token
    assert s.handle(TimerFired(("something-else",))) == []
    assert s.is_active(0)
    assert s.handle(TimerFired(new)) == [Finish(0, UNMET_TIMEOUT, False, None, None, 0)]
    assert s.handle(TimerFired(new)) == []  # fired twice: ignored


def test_unmet_timer_cancelled_when_a_satisfying_engine_arrives():
    s = make()
    s.handle(AddEngine(0, {"gpu": 0}))
    (key,) = arm_keys(s.handle(Submit(0, [Node(depend={"gpu": 1})])))
    acts = s.handle(AddEngine(1, {"gpu": 1}))
    assert Dispatch(0, 1, 0, 1) in acts and CancelTimer(key) in acts
    assert s.handle(TimerFired(key)) == []
    assert s.is_active(0)


def test_unmet_timer_cancelled_when_properties_change_to_satisfy():
    s = make()
    s.handle(AddEngine(0, {"gpu": 0}))
    (key,) = arm_keys(s.handle(Submit(0, [Node(depend={"gpu": 1})])))
    acts = s.handle(SetProperties(0, {"gpu": 1}))
    assert Dispatch(0, 0, 0, 1) in acts and CancelTimer(key) in acts


def test_unmet_depend_times_out_with_no_engine_at_all():
    """No engine registered: a task with a depend is unmet (its timer runs); one without a
    depend waits for engines; an engine that arrives and satisfies it cancels the timer."""
    s = make()
    (key,) = arm_keys(s.handle(Submit(0, [Node(depend={"gpu": 1})])))
    assert key[:2] == ("unmet", 0)
    assert s.handle(Submit(1, [Node()])) == []
    assert s.counts() == (2, 0)
    assert s.handle(TimerFired(key)) == [Finish(0, UNMET_TIMEOUT, False, None, None, 0)]
    (key,) = arm_keys(s.handle(Submit(2, [Node(depend={"gpu": 1})])))
    acts = s.handle(AddEngine(0, {"gpu": 1}))
    assert Dispatch(1, 0, 0, 1) in acts and CancelTimer(key) in acts
    assert s.handle(TaskDone(0, 1, 1, OK))[1] == Dispatch(2, 0, 0, 1)


def test_unmet_timer_is_armed_after_the_last_busy_engine_leaves():
    s = make()
    s.handle(AddEngine(0, {"gpu": 0}))
    s.handle(AddEngine(1, {"gpu": 0}))
    s.handle(Submit(0, [Node()]))
    assert s.handle(Submit(1, [Node(depend={"gpu": 1})])) == []  # engine 0 busy
    acts = s.handle(EngineGone(0))
    assert acts[0] == Finish(0, ENGINE_DIED, False, 0, None, 1)
    assert [k[:2] for k in arm_keys(acts)] == [("unmet", 1)]


def test_a_task_that_only_waits_for_a_skip_is_not_unmet():
    """Engine 0 satisfies the task but is skipped (it rejected it): no unmet timer while every
    engine is idle; when the skip ends it runs there again."""
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {"gpu": 0}))
    assert s.handle(Submit(0, [Node(retries=1, depend=lambda p: p.get("gpu") != 0)])) == [
        Dispatch(0, 0, 0, 1)]
    acts = s.handle(TaskDone(0, 0, 1, REJECTED))
    (key,) = arm_keys(acts)  # the skip only: no ("unmet", ...) timer
    assert key[:3] == ("skip", 0, 0) and acts == [ArmTimer(key, 1.0)]
    assert s.handle(TimerFired(key)) == [Dispatch(0, 0, 0, 1)]
    # rejected with no retries left; engine 1 does not satisfy it, so need not be offered it
    assert s.handle(TaskDone(0, 0, 1, REJECTED)) == [Finish(0, RESULT, False, 0, None, 1)]


def test_a_skipped_task_whose_engine_stops_satisfying_it_is_unmet():
    s = make()
    s.handle(AddEngine(0, {"gpu": 1}))
    assert s.handle(Submit(0, [Node(retries=1, depend={"gpu": 1})])) == [Dispatch(0, 0, 0, 1)]
    (skip,) = arm_keys(s.handle(TaskDone(0, 0, 1, REJECTED)))
    acts = s.handle(SetProperties(0, {"gpu": 0}))
    assert acts[0] == CancelTimer(skip)
    (unmet,) = arm_keys(acts)
    assert unmet[:2] == ("unmet", 0) and len(acts) == 2
    assert s.handle(TimerFired(skip)) == []
    assert s.handle(TimerFired(unmet)) == [Finish(0, UNMET_TIMEOUT, False, None, None, 0)]


# ---------------------------------------------------------------------------------------------
# rejection
# ---------------------------------------------------------------------------------------------


def skip_key(actions: list, tid: int, eid: int) -> tuple:
    """The key of the one skip timer armed in `actions`, for task `tid` on engine `eid`."""
    keys = [a.key for a in of(actions, ArmTimer) if a.key[0] == "skip"]
    assert len(keys) == 1 and keys[0][1:3] == (tid, eid), actions
    assert one(actions, ArmTimer).delay == 1.0
    return keys[0]


def test_a_rejection_uses_a_retry_and_counts_no_attempt():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(0, [Node(retries=2)])) == [Dispatch(0, 0, 0, 1)]
    for _ in range(2):  # retries left: back to the queue, engine 0 skipped for 1 s
        acts = s.handle(TaskDone(0, 0, 1, REJECTED))
        key = skip_key(acts, 0, 0)
        assert acts == [ArmTimer(key, 1.0)]
        assert s.scheduled_ids() == [0] and s.counts() == (1, 0)
        assert split_answer(s.handle(Spin())) == (False, [])
        assert s.handle(TimerFired(key)) == [Dispatch(0, 0, 0, 1)]  # the same attempt number
    # the third rejection finds no retry left, and engine 0 is the only engine: final. The
    # final rejection is the result, and counts as its one attempt.
    assert s.handle(TaskDone(0, 0, 1, REJECTED)) == [Finish(0, RESULT, False, 0, None, 1)]


def test_rejections_and_failed_attempts_share_the_retries():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(0, [Node(retries=1)])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Dispatch(0, 0, 0, 2)]
    assert s.handle(TaskDone(0, 0, 2, REJECTED)) == [Finish(0, RESULT, False, 0, None, 2)]
    assert s.handle(Submit(1, [Node(retries=1)])) == [Dispatch(1, 0, 0, 1)]
    key = skip_key(s.handle(TaskDone(0, 1, 1, REJECTED)), 1, 0)
    assert s.handle(TimerFired(key)) == [Dispatch(1, 0, 0, 1)]
    assert s.handle(TaskDone(0, 1, 1, ERROR)) == [Finish(1, RESULT, False, 0, None, 1)]


def test_a_rejected_task_goes_elsewhere_at_once_and_skips_the_engine_that_rejected_it():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    s.handle(AddEngine(2, {}))
    assert s.handle(Submit(0, [Node(retries=2)])) == [Dispatch(0, 0, 0, 1)]
    acts = s.handle(TaskDone(0, 0, 1, REJECTED))
    key = skip_key(acts, 0, 0)
    assert acts == [ArmTimer(key, 1.0), Dispatch(0, 1, 0, 1)]  # same attempt number
    # engine 0 is free (and has not failed it), but it is skipped: the retry goes to engine 2
    assert s.handle(TaskDone(1, 0, 1, ERROR)) == [Dispatch(0, 2, 0, 2)]
    # a rejection used one of the two retries: this failure is final
    assert s.handle(TaskDone(2, 0, 2, ERROR)) == [CancelTimer(key), Finish(0, RESULT, False, 2, None, 2)]
    assert s.handle(TimerFired(key)) == []


def test_rejected_by_the_only_free_engine_waits_for_another():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node()])) == [Dispatch(1, 1, 0, 1)]
    acts = s.handle(TaskDone(0, 0, 1, REJECTED))  # engine 0 free, but task 0 skips it
    key = skip_key(acts, 0, 0)
    assert acts == [ArmTimer(key, 1.0)]
    assert s.handle(Submit(2, [Node()])) == [Dispatch(2, 0, 0, 1)]  # engine 0 serves others
    acts = s.handle(TaskDone(1, 1, 1, OK))
    assert acts == [Finish(1, RESULT, True, 1, None, 1), Dispatch(0, 1, 0, 1)]


def test_no_retries_left_fails_only_after_every_live_engine_was_offered_it():
    s = make()
    for eid in range(4):
        s.handle(AddEngine(eid, {}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    keys = []
    for eid in range(3):
        acts = s.handle(TaskDone(eid, 0, 1, REJECTED))
        keys.append(skip_key(acts, 0, eid))
        assert acts == [ArmTimer(keys[-1], 1.0), Dispatch(0, eid + 1, 0, 1)]
    acts = s.handle(TaskDone(3, 0, 1, REJECTED))
    assert acts == [*(CancelTimer(k) for k in keys), Finish(0, RESULT, False, 3, None, 1)]
    assert s.counts() == (0, 0)


def test_an_engine_busy_past_the_skip_is_waited_for_and_the_other_asked_again():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node()])) == [Dispatch(1, 1, 0, 1)]
    for _ in range(2):  # no retries left, but engine 1 (busy) has not been offered it yet
        key = skip_key(s.handle(TaskDone(0, 0, 1, REJECTED)), 0, 0)
        assert s.handle(TimerFired(key)) == [Dispatch(0, 0, 0, 1)]
    key = skip_key(s.handle(TaskDone(0, 0, 1, REJECTED)), 0, 0)
    assert s.handle(TaskDone(1, 1, 1, OK)) == [Finish(1, RESULT, True, 1, None, 1), Dispatch(0, 1, 0, 1)]
    assert s.handle(TaskDone(1, 0, 1, REJECTED)) == [CancelTimer(key),
                                              Finish(0, RESULT, False, 1, None, 1)]


def test_an_engine_that_registered_meanwhile_is_offered_it_too():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    k0 = skip_key(s.handle(TaskDone(0, 0, 1, REJECTED)), 0, 0)
    assert s.handle(AddEngine(2, {})) == []  # the task runs on engine 1
    acts = s.handle(TaskDone(1, 0, 1, REJECTED))
    k1 = skip_key(acts, 0, 1)
    assert acts == [ArmTimer(k1, 1.0), Dispatch(0, 2, 0, 1)]
    assert s.handle(TaskDone(2, 0, 1, REJECTED)) == [CancelTimer(k0), CancelTimer(k1),
                                              Finish(0, RESULT, False, 2, None, 1)]


def test_an_engine_that_died_need_not_be_offered_it():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    s.handle(AddEngine(2, {}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node()])) == [Dispatch(1, 1, 0, 1)]
    assert s.handle(Submit(2, [Node()])) == [Dispatch(2, 2, 0, 1)]
    k0 = skip_key(s.handle(TaskDone(0, 0, 1, REJECTED)), 0, 0)
    assert s.handle(EngineGone(2)) == [Finish(2, ENGINE_DIED, False, 2, None, 1)]
    assert s.handle(TaskDone(1, 1, 1, OK)) == [Finish(1, RESULT, True, 1, None, 1), Dispatch(0, 1, 0, 1)]
    assert s.handle(TaskDone(1, 0, 1, REJECTED)) == [CancelTimer(k0),
                                              Finish(0, RESULT, False, 1, None, 1)]


def test_a_rejection_by_a_departed_engine_does_not_count_toward_every_engine():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    s.handle(Submit(0, [Node()]))
    s.handle(Submit(1, [Node()]))
    key = skip_key(s.handle(TaskDone(0, 0, 1, REJECTED)), 0, 0)  # engine 1 busy with task 1
    assert s.handle(EngineGone(0)) == [CancelTimer(key)]  # its skip goes with it
    assert s.handle(AddEngine(2, {})) == [Dispatch(0, 2, 0, 1)]
    skip_key(s.handle(TaskDone(2, 0, 1, REJECTED)), 0, 2)  # engine 1 has not been offered it yet
    assert s.handle(TaskDone(1, 1, 1, OK)) == [Finish(1, RESULT, True, 1, None, 1), Dispatch(0, 1, 0, 1)]
    assert of(s.handle(TaskDone(1, 0, 1, REJECTED)), Finish) == [Finish(0, RESULT, False, 1, None, 1)]


def test_engines_that_do_not_satisfy_the_depend_need_not_be_offered_it():
    s = make()
    s.handle(AddEngine(0, {"gpu": 1}))
    s.handle(AddEngine(1, {"gpu": 0}))
    s.handle(AddEngine(2, {}))
    assert s.handle(Submit(0, [Node(depend={"gpu": 1})])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(TaskDone(0, 0, 1, REJECTED)) == [Finish(0, RESULT, False, 0, None, 1)]


def test_an_engine_that_failed_the_task_was_offered_it():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node(retries=1)])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Dispatch(0, 1, 0, 2)]
    assert s.handle(TaskDone(1, 0, 2, REJECTED)) == [Finish(0, RESULT, False, 1, None, 2)]


def test_an_engine_that_gave_a_buffered_attempt_back_was_not_offered_it():
    s = _two_busy_engines_with_a_buffer()  # task 2 waits on engine 0, behind task 0
    assert one(s.handle(TaskDone(1, 1, 1, OK)), Revoke) == Revoke(0, 2, 1)
    assert s.handle(RevokeAnswered(0, 2, 1, ok=True)) == [Dispatch(2, 1, 0, 1)]
    acts = s.handle(TaskDone(1, 2, 1, REJECTED))  # engine 0 never ran it: not final
    key = skip_key(acts, 2, 1)
    assert acts == [ArmTimer(key, 1.0), Dispatch(2, 0, 0, 1)]
    assert s.handle(TaskDone(0, 0, 1, OK)) == [Finish(0, RESULT, True, 0, None, 1)]
    assert s.handle(TaskDone(0, 2, 1, REJECTED)) == [CancelTimer(key),
                                              Finish(2, RESULT, False, 0, None, 1)]


def test_a_skip_ends_when_the_engines_properties_change():
    s = make()
    s.handle(AddEngine(0, {"x": 0}))
    assert s.handle(Submit(0, [Node(retries=3)])) == [Dispatch(0, 0, 0, 1)]
    key = skip_key(s.handle(TaskDone(0, 0, 1, REJECTED)), 0, 0)
    assert s.handle(SetProperties(0, {"x": 0})) == []  # not a change
    assert s.handle(SetProperties(0, {"x": 1})) == [CancelTimer(key), Dispatch(0, 0, 0, 1)]
    assert s.handle(TimerFired(key)) == []
    # properties that come with the rejection itself do not end the skip it starts
    acts = s.handle(TaskDone(0, 0, 1, REJECTED, {"x": 2}))
    key = skip_key(acts, 0, 0)
    assert acts == [ArmTimer(key, 1.0)]
    assert s.engine_properties(0) == {"x": 2}


def test_a_skip_ends_when_properties_come_with_another_result():
    s = make()
    s.handle(AddEngine(0, {"x": 0}, slots=2))
    assert s.handle(Submit(0, [Node(retries=1)])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node()])) == [Dispatch(1, 0, 0, 1)]
    key = skip_key(s.handle(TaskDone(0, 0, 1, REJECTED)), 0, 0)
    assert split_answer(s.handle(Spin())) == (False, [])  # engine 0 has a free slot, but task 0 skips it
    assert s.handle(TaskDone(0, 1, 1, OK, {"x": 1})) == [
        CancelTimer(key), Finish(1, RESULT, True, 0, None, 1), Dispatch(0, 0, 0, 1)]


def test_a_skip_timer_is_cancelled_by_abort_engine_death_and_withdraw():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    s.handle(Submit(0, [Node(retries=1)]))
    acts = s.handle(TaskDone(0, 0, 1, REJECTED))
    key = skip_key(acts, 0, 0)
    assert Dispatch(0, 1, 0, 1) in acts
    assert split_answer(s.handle(Abort(0))) == (True, [Interrupt(1, 0, ABORTED, 1), CancelTimer(key),
                                                      Finish(0, ABORTED, False, 1, None, 1)])
    assert s.handle(TimerFired(key)) == []
    s.handle(TaskDone(1, 0, 1, ERROR))  # the aborted attempt's report: dropped

    s.handle(Submit(1, [Node(retries=1)]))
    key = skip_key(s.handle(TaskDone(0, 1, 1, REJECTED)), 1, 0)  # (longest idle: engine 0)
    assert s.handle(EngineGone(0)) == [CancelTimer(key)]
    assert s.handle(TimerFired(key)) == []
    assert s.handle(TaskDone(1, 1, 1, OK)) == [Finish(1, RESULT, True, 1, None, 1)]

    s.handle(Submit(2, [Node(retries=1)]))
    key = skip_key(s.handle(TaskDone(1, 2, 1, REJECTED)), 2, 1)
    assert s.handle(Withdraw([2])) == [CancelTimer(key)]
    assert s.handle(TimerFired(key)) == [] and not s.is_active(2)


def test_a_final_rejection_hands_over_to_the_recovery_task():
    """Rejected with no retries left by every engine, the node is over like a failed last
    attempt: its recovery task runs, skipping no engine and offered to none yet."""
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node(recovery=1), Node()])) == [Dispatch(0, 0, 0, 1)]
    k0 = skip_key(s.handle(TaskDone(0, 0, 1, REJECTED)), 0, 0)
    assert s.handle(TaskDone(1, 0, 1, REJECTED)) == [CancelTimer(k0), Dispatch(0, 0, 1, 1)]
    k1 = skip_key(s.handle(TaskDone(0, 0, 1, REJECTED)), 0, 0)  # engine 1 not offered node 1 yet
    assert s.engine_load(1) == [0]
    assert s.handle(TaskDone(1, 0, 1, REJECTED)) == [CancelTimer(k1),
                                              Finish(0, RESULT, False, 1, None, 1, 1)]


def test_a_skipped_engine_does_not_steal_the_task_until_its_skip_ends():
    s = make()
    s.handle(AddEngine(0, {}, slots=2))
    s.handle(AddEngine(1, {}, slots=1))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node(retries=1)])) == [Dispatch(1, 1, 0, 1)]
    acts = s.handle(TaskDone(1, 1, 1, REJECTED))
    key = skip_key(acts, 1, 1)
    # task 1 is buffered on engine 0 behind task 0; engine 1 is idle but may not ask for it
    assert acts == [ArmTimer(key, 1.0), Dispatch(1, 0, 0, 1)]
    assert of(split_answer(s.handle(Spin()))[1], Revoke) == []
    assert s.handle(TimerFired(key)) == [Revoke(0, 1, 1)]


def test_after_dependents_wait_through_rejections_and_fail_with_the_final_one():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node()], after=[0])) == []
    acts = s.handle(TaskDone(0, 0, 1, REJECTED))
    assert of(acts, Finish) == [] and Dispatch(0, 1, 0, 1) in acts
    fins = of(s.handle(TaskDone(1, 0, 1, REJECTED)), Finish)
    assert fins == [Finish(0, RESULT, False, 1, None, 1), Finish(1, DEPENDENCY, False, None, 0, 0)]


# ---------------------------------------------------------------------------------------------
# remove_engine
# ---------------------------------------------------------------------------------------------


def test_remove_engine_fails_the_running_attempt_with_engine_died():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    assert s.handle(EngineGone(0)) == [Finish(0, ENGINE_DIED, False, 0, None, 1)]
    assert s.handle(EngineGone(0)) == []  # twice: nothing
    assert s.handle(TaskDone(0, 0, 1, OK)) == []  # a dead engine's late report


def test_remove_engine_retries_apply():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node(retries=1)])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(EngineGone(0)) == [Dispatch(0, 1, 0, 2)]
    assert s.handle(TaskDone(0, 0, 1, OK)) == []
    assert s.handle(EngineGone(1)) == [Finish(0, ENGINE_DIED, False, 1, None, 2)]


def test_remove_engine_counts_an_attempt_for_buffered_tasks_too():
    """A buffered task may have started since the engine last reported: its attempt counts
    (so a task with retries=0 runs at most once); with retries it runs again elsewhere."""
    s = make()
    s.handle(AddEngine(0, {}, slots=3))
    assert s.handle(Submit(0, [Node()])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node(retries=1)])) == [Dispatch(1, 0, 0, 1)]
    assert s.handle(Submit(2, [Node()])) == [Dispatch(2, 0, 0, 1)]
    assert s.counts() == (0, 3)
    acts = s.handle(EngineGone(0))
    assert acts == [Finish(0, ENGINE_DIED, False, 0, None, 1),
                    Finish(2, ENGINE_DIED, False, 0, None, 1)]
    assert s.counts() == (1, 0)
    assert s.handle(AddEngine(1, {})) == [Dispatch(1, 1, 0, 2)]  # its second attempt
    assert s.handle(TaskDone(1, 1, 2, OK)) == [Finish(1, RESULT, True, 1, None, 2)]


def test_remove_engine_with_an_aborted_task_ahead_fails_the_buffered_one():
    s = make()
    s.handle(AddEngine(0, {}, slots=2))
    s.handle(Submit(0, [Node()]))
    s.handle(Submit(1, [Node(retries=1)]))
    found, _ = split_answer(s.handle(Abort(0)))
    assert found
    assert s.handle(EngineGone(0)) == []  # task 1 was buffered behind the aborted one: retried
    assert s.scheduled_ids() == [1]
    assert s.handle(AddEngine(1, {})) == [Dispatch(1, 1, 0, 2)]


def test_lost_tasks_wait_for_their_engine_and_are_adopted_given_back_or_failed():
    """After a controller restart: a task that was running waits for its engine. Adopted, it
    runs there as it was; given back (never started), it is queued without counting an
    attempt; if its engine never comes back, the attempt fails as an engine death."""
    s = make()
    assert s.handle(Submit(0, [Node()], resume=Resume(attempts=1, tries=1, lost=True))) == []
    assert s.handle(Submit(1, [Node()], resume=Resume(attempts=1, tries=1, lost=True))) == []
    assert s.handle(Submit(2, [Node(retries=1)], resume=Resume(attempts=1, tries=1, lost=True))) == []
    assert s.handle(Submit(3, [Node()])) == []
    assert s.counts() == (4, 0)
    # Engine 5 comes back still running task 0; task 3 fills its other slot.
    assert s.handle(AddEngine(5, {}, slots=2, adopt=[0])) == [Dispatch(3, 5, 0, 1)]
    assert s.engine_load(5) == [0, 3] and s.counts() == (2, 2)
    assert s.handle(TaskDone(5, 0, 1, OK)) == [Finish(0, RESULT, True, 5, None, 1)]
    # Task 1's engine came back without it: it never started.
    assert s.handle(LostReturned(1)) == [Dispatch(1, 5, 0, 1)]
    # Task 2's engine never came back: a lost attempt, retried.
    assert s.handle(LostExpired(2)) == []  # (engine 5 is full)
    assert s.handle(TaskDone(5, 3, 1, OK))[1] == Dispatch(2, 5, 0, 2)
    assert s.handle(LostExpired(2)) == [] and s.handle(LostReturned(2)) == []  # (no longer lost)


# ---------------------------------------------------------------------------------------------
# abort
# ---------------------------------------------------------------------------------------------


def test_abort_queued_task():
    s = make()
    s.handle(Submit(0, [Node()]))
    assert split_answer(s.handle(Abort(0))) == (True, [Finish(0, ABORTED, False, None, None, 0)])
    assert not s.is_active(0)
    assert split_answer(s.handle(Abort(0))) == (False, [])  # already finished
    assert s.handle(AddEngine(0, {})) == []


def test_abort_parked_task_cancels_its_timer():
    s = make()
    s.handle(AddEngine(0, {}))
    (key,) = arm_keys(s.handle(Submit(0, [Node(depend={"gpu": 1})])))
    found, acts = split_answer(s.handle(Abort(0)))
    assert found and acts == [CancelTimer(key), Finish(0, ABORTED, False, None, None, 0)]


def test_abort_running_task_interrupts_and_keeps_the_slot_until_the_engine_reports():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(0, [Node(retries=3, recovery=0)])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(Submit(1, [Node()])) == []
    found, acts = split_answer(s.handle(Abort(0)))
    assert found
    assert acts == [Interrupt(0, 0, ABORTED, 1), Finish(0, ABORTED, False, 0, None, 1)]
    assert s.engine_load(0) == [0]  # slot still taken
    assert s.counts() == (1, 0) and s.pending_ids() == [] and s.scheduled_ids() == [1]
    assert split_answer(s.handle(Spin())) == (False, [])
    # the engine's report yields no Finish (and no retry or recovery); the slot frees
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Dispatch(1, 0, 0, 1)]
    assert split_answer(s.handle(Abort(0))) == (False, [])


def test_abort_unknown_tid():
    s = make()
    assert split_answer(s.handle(Abort(42))) == (False, [])
    s.handle(AddEngine(0, {}))
    assert split_answer(s.handle(Abort(0))) == (False, [])


# ---------------------------------------------------------------------------------------------
# stale reports, spin, counts and ids
# ---------------------------------------------------------------------------------------------


def test_stale_attempt_report_is_ignored():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    assert s.handle(Submit(0, [Node(retries=1)])) == [Dispatch(0, 0, 0, 1)]
    assert s.handle(TaskDone(0, 0, 1, ERROR)) == [Dispatch(0, 1, 0, 2)]
    assert s.handle(TaskDone(0, 0, 1, OK)) == []  # a duplicate of the old report
    assert s.handle(TaskDone(1, 0, 1, OK)) == []  # right engine, wrong attempt
    assert s.handle(TaskDone(0, 0, 2, OK)) == []  # right attempt, wrong engine
    assert s.pending_ids() == [0]
    assert s.handle(TaskDone(1, 0, 2, OK)) == [Finish(0, RESULT, True, 1, None, 2)]


def test_spin_returns_flag_and_actions():
    s = make()
    result = split_answer(s.handle(Spin()))
    assert result == (False, [])
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    dispatched, acts = split_answer(s.handle(Spin()))
    assert dispatched is False and acts == []  # every event already ran a pass


def test_counts_scheduled_and_pending_ids():
    s = make()
    s.handle(AddEngine(0, {}, slots=2))
    assert s.counts() == (0, 0)
    s.handle(Submit(0, [Node()]))  # running
    s.handle(Submit(1, [Node()]))  # buffered on engine 0: pending too
    s.handle(Submit(2, [Node()]))  # queued
    s.handle(Submit(3, [Node()], after=[0]))  # waiting
    assert s.counts() == (2, 2)
    assert s.pending_ids() == [0, 1]
    assert s.scheduled_ids() == [2, 3]
    s.handle(Abort(1))
    assert s.counts() == (2, 1)
    assert s.pending_ids() == [0]
    s.handle(TaskDone(0, 1, 1, OK))  # the aborted one reports: task 2 takes the slot
    assert s.pending_ids() == [0, 2] and s.scheduled_ids() == [3]
    s.handle(TaskDone(0, 0, 1, OK))
    assert s.pending_ids() == [2, 3] and s.scheduled_ids() == []
    assert s.counts() == (0, 2)


def test_bad_submissions_raise():
    s = make()
    s.handle(Submit(0, [Node()]))
    with pytest.raises(ValueError):
        s.handle(Submit(0, [Node()]))
    with pytest.raises(ValueError):
        s.handle(Submit(1, []))
    s.handle(AddEngine(0, {}))
    with pytest.raises(ValueError):
        s.handle(AddEngine(0, {}))


# ---------------------------------------------------------------------------------------------
# Adaptive prefetch and stealing
# ---------------------------------------------------------------------------------------------


def test_adaptive_engine_without_history_holds_one_task():
    s = make()  # slots=None: adaptive
    s.handle(AddEngine(0, {}))
    acts = [a for tid in range(3) for a in s.handle(Submit(tid, [Node()]))]
    assert [d.tid for d in of(acts, Dispatch)] == [0]
    assert s.capacity(0) == 1


def test_adaptive_capacity_follows_reported_durations():
    s = make(buffer_seconds=0.002, max_slots=64)
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    s.handle(TaskDone(0, 0, 1, OK, duration=0.0001))  # 0.1 ms tasks: 20 fit in 2 ms
    assert s.capacity(0) == 20
    acts = [a for tid in range(1, 40) for a in s.handle(Submit(tid, [Node()]))]
    assert len(of(acts, Dispatch)) == 20
    s.handle(TaskDone(0, 1, 1, OK, duration=1.0))  # a long one: the average jumps, capacity drops
    assert s.capacity(0) == 1
    more = s.handle(Submit(40, [Node()]))
    assert of(more, Dispatch) == []  # it holds 19 already: nothing more until it drains


def test_adaptive_engine_stops_buffering_behind_a_task_that_runs_long():
    s = make(buffer_seconds=0.002)
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    s.handle(TaskDone(0, 0, 1, OK, duration=0.0001))
    acts = s.handle(Submit(1, [Node()]))  # the head now: a timer watches it
    assert arm_keys(acts) == [("slow", 0)]
    assert one(acts, ArmTimer).delay == pytest.approx(0.004)
    s.handle(Submit(2, [Node()]))
    assert s.engine_load(0) == [1, 2]
    s.handle(TimerFired(("slow", 0)))  # task 1 is still running: it is not a tiny one
    assert s.capacity(0) == 1
    assert of(s.handle(Submit(3, [Node()])), Dispatch) == []
    assert s.counts() == (1, 2)
    assert s.handle(TimerFired(("slow", 0))) == []  # a stale one: nothing changes
    assert s.engine_load(0) == [1, 2]


def test_slow_timer_moves_on_to_the_next_task_when_the_watched_one_finished():
    s = make(buffer_seconds=0.002)
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    s.handle(TaskDone(0, 0, 1, OK, duration=0.0001))
    for tid in (1, 2, 3):
        s.handle(Submit(tid, [Node()]))
    s.handle(TaskDone(0, 1, 1, OK, duration=0.0001))  # task 2 runs now; the timer watched task 1
    acts = s.handle(TimerFired(("slow", 0)))
    assert arm_keys(acts) == [("slow", 0)]  # watching task 2 now
    assert s.capacity(0) == 20
    s.handle(TimerFired(("slow", 0)))  # task 2 is still running a timer later: it is long
    assert s.capacity(0) == 1


def test_adaptive_capacity_is_capped():
    s = make(max_slots=8)
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    s.handle(TaskDone(0, 0, 1, OK, duration=0.0))
    assert s.capacity(0) == 8


def test_fixed_slots_ignore_durations():
    s = make(slots=3)
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    s.handle(TaskDone(0, 0, 1, OK, duration=10.0))
    assert s.capacity(0) == 3


def _two_busy_engines_with_a_buffer() -> Scheduler:
    """Engine 0 holds tasks 0 (running) and 2 (buffered); engine 1 holds task 1."""
    s = make(slots=2)
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}, slots=1))
    acts = [a for tid in range(3) for a in s.handle(Submit(tid, [Node()]))]
    assert [(d.tid, d.eid) for d in of(acts, Dispatch)] == [(0, 0), (1, 1), (2, 0)]
    return s


def test_idle_engine_asks_for_a_buffered_task_and_runs_it_when_given_back():
    s = _two_busy_engines_with_a_buffer()
    acts = s.handle(TaskDone(1, 1, 1, OK))
    assert one(acts, Revoke) == Revoke(0, 2, 1)
    assert s.pending_ids() == [0, 2]  # still on engine 0 until it answers
    acts = s.handle(RevokeAnswered(0, 2, 1, ok=True))
    assert one(acts, Dispatch) == Dispatch(2, 1, 0, 1)  # same attempt number: none was used
    assert s.engine_load(0) == [0] and s.engine_load(1) == [2]


def test_revoke_refused_leaves_the_task_and_is_not_asked_again():
    s = _two_busy_engines_with_a_buffer()
    s.handle(TaskDone(1, 1, 1, OK))
    acts = s.handle(RevokeAnswered(0, 2, 1, ok=False))  # it had started
    assert of(acts, Revoke) == [] and of(acts, Dispatch) == []
    assert s.engine_load(0) == [0, 2]
    acts = s.handle(TaskDone(0, 0, 1, OK))
    assert of(acts, Revoke) == []
    acts = s.handle(TaskDone(0, 2, 1, OK))
    assert one(acts, Finish).outcome == RESULT


def test_one_revoke_in_flight_per_idle_engine():
    s = make(slots=3)
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}, slots=1))
    for tid in range(5):
        s.handle(Submit(tid, [Node()]))  # 0 -> e0, 1 -> e1, 2 -> e0, 3 -> e0 (3 slots), 4 queued
    assert s.engine_load(0) == [0, 2, 3] and s.engine_load(1) == [1]
    acts = s.handle(TaskDone(1, 1, 1, OK))  # engine 1 takes task 4 from the queue first
    assert one(acts, Dispatch).tid == 4 and of(acts, Revoke) == []
    acts = s.handle(TaskDone(1, 4, 1, OK))
    assert of(acts, Revoke) == [Revoke(0, 3, 1)]  # the newest buffered task
    acts = split_answer(s.handle(Spin()))[1]
    assert of(acts, Revoke) == []  # still waiting for that answer


def test_steal_respects_depend_and_rejection():
    s = make(slots=2)
    s.handle(AddEngine(0, {"gpu": 1}))
    s.handle(AddEngine(1, {}, slots=1))
    s.handle(Submit(0, [Node(depend={"gpu": 1})]))
    s.handle(Submit(1, [Node()]))
    s.handle(Submit(2, [Node(depend={"gpu": 1})]))
    assert s.engine_load(0) == [0, 2]
    acts = s.handle(TaskDone(1, 1, 1, OK))
    assert of(acts, Revoke) == []  # engine 1 cannot run task 2


def test_abort_while_a_revoke_is_in_flight():
    s = _two_busy_engines_with_a_buffer()
    s.handle(TaskDone(1, 1, 1, OK))
    found, acts = split_answer(s.handle(Abort(2)))
    assert found and one(acts, Interrupt) == Interrupt(0, 2, ABORTED, 1)
    acts = s.handle(RevokeAnswered(0, 2, 1, ok=True))  # the engine drops it without a report
    assert of(acts, Dispatch) == [] and s.engine_load(0) == [0]
    assert s.counts() == (0, 1)


def test_engine_death_while_a_revoke_is_in_flight_fails_and_ignores_the_answer():
    s = _two_busy_engines_with_a_buffer()
    s.handle(TaskDone(1, 1, 1, OK))
    acts = s.handle(EngineGone(0))
    assert {a.tid for a in of(acts, Finish)} == {0, 2}  # both held tasks fail: may have run
    assert s.handle(RevokeAnswered(0, 2, 1, ok=True)) == []
    assert s.engine_load(1) == [] and s.counts() == (0, 0)


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

    # -- model helpers ---------------------------------------------------------------------
    def active(self) -> list[MTask]:
        return [t for t in self.tasks.values() if t.finish is None]

    def waiting(self, t: MTask) -> bool:
        return any(self.tasks[d].finish is None for d in t.deps)

    def eligible(self, t: MTask, eid: int) -> bool:
        e = self.engines[eid]
        return eid not in t.skip and model_satisfies(t.nodes[t.node].depend, e.props)

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
                    dep = self.tasks.get(a.detail)
                    assert a.detail in t.deps and dep is not None, a
                    assert dep.finish is not None and not dep.finish.ok, (a, dep.finish)
                    assert a.engineid is None
                t.finish = a
                t.engine = None
                t.skip.clear()
                finished_now[a.tid] = a
            elif isinstance(a, Interrupt):
                assert (a.eid, a.tid) in interrupts, f"unexpected {a}"
                assert a.reason == ABORTED
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
            f = self.tasks[d].finish
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
        after = list(dict.fromkeys(i % tid for i in picks)) if tid else []
        active, broken = [], None
        for dep in after:  # as the controller does it
            if self.s.is_active(dep):
                active.append(dep)
            elif not self.tasks[dep].finish.ok:
                broken = dep
                break
        self.tasks[tid] = MTask(tid, nodes, deps=list(after))
        actions = self.s.handle(Submit(tid, nodes, after=active, broken_after=broken))
        expected = {tid: (DEPENDENCY, False, None)} if broken is not None else {}
        self.apply(actions, expected)
        if broken is not None:
            assert self.tasks[tid].finish.detail == broken

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
        for t in self.active():
            for d in t.deps:
                f = self.tasks[d].finish
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
