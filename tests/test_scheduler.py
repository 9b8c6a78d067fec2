"""Unit tests of the scheduler's rules (SPEC.md §2, §6.5): the queue, depend, retries,
recovery chains, `after` and unmet depends. (Engines, rejection, abort and prefetch are in
test_scheduler_engines.py; the stateful model test in test_scheduler_model.py; states and
stories in test_scheduler_states.py.)

The scheduler is a pure state machine, so everything here is fast and needs no cluster: each
event is a record given to `Scheduler.handle` and we check the exact actions it returns.
"""

from __future__ import annotations

import pytest
from schedtest import UNMET, arm_keys, make, of, one

from taskmill.scheduler import (
    ABORTED,
    DEPENDENCY,
    ENGINE_DIED,
    ERROR,
    NO_ENGINE,
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
    Node,
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


def test_an_answer_cached_for_a_gone_engine_is_never_read_for_a_new_one_of_that_id():
    """Depend answers are cached by engine id and property version; versions are unique among
    all engines, so an engine added under a gone one's id is asked afresh."""
    s = make()
    s.handle(AddEngine(0, {"x": 0}))
    assert not of(s.handle(Submit(0, [Node(depend=lambda p: p["x"] == 1)])), Dispatch)  # no
    s.handle(EngineGone(0))
    assert Dispatch(0, 0, 0, 1) in s.handle(AddEngine(0, {"x": 1}))


def test_an_engine_gone_looks_at_no_queued_task_and_the_depend_caches_stay_bounded():
    """An engine leaving costs what it held, not the queue (it once looked at every active
    task: 18 s for 1,000 engines gone over 300,000 queued tasks); the depend answers cached
    for engines gone since are dropped as a task's cache grows past twice the engines."""

    class Counted(dict):
        looks = 0

        def values(self):
            Counted.looks += 1
            return super().values()

    s = make()
    s.handle(AddEngine(0, {"x": 0}))
    book = s.book  # (its task table counted: an engine gone must not look at it)
    book.tasks = Counted(book.tasks)
    assert not of(s.handle(Submit(0, [Node(depend=lambda p: p["x"] == 1)])), Dispatch)
    for tid in range(1, 200):
        s.handle(Submit(tid, [Node()], dispatch=False))
    for eid in range(1, 60):  # engines come and go; the parked task is asked on each
        s.handle(AddEngine(eid, {"x": 0}))
        s.handle(EngineGone(eid))
        assert len(book.tasks[0].dep_cache) <= 2 * 2 + 9  # (two engines at most at once)
    assert Counted.looks == 0
    assert s.is_active(0) and Dispatch(0, 60, 0, 1) in s.handle(AddEngine(60, {"x": 1}))


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


def test_a_task_awaiting_an_id_not_submitted_yet_waits_for_its_submit_and_then_for_it():
    """`awaits`: a run()'s leased taskid, not stored yet (SPEC §4: it reads as unfinished).
    The task waits for that id's own Submit, then for the task, as for an `after` task."""
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Submit(9, [Node()], awaits=[3])) == []  # (before: dispatched at once)
    assert s.scheduled_ids() == [9] and s.is_awaited(3) and not s.is_awaited(9)
    assert s.handle(Submit(3, [Node()])) == [Dispatch(3, 0, 0, 1)]
    assert not s.is_awaited(3)  # (submitted: an `after` link like any other now)
    assert s.handle(TaskDone(0, 3, 1, OK)) == [Finish(3, RESULT, True, 0, None, 1),
                                              Dispatch(9, 0, 0, 1)]


def test_a_task_awaiting_an_id_fails_with_its_failure_or_when_it_is_withdrawn_unsubmitted():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))  # (keeps engine 0 busy)
    s.handle(Submit(10, [Node()], awaits=[4]))
    s.handle(Submit(11, [Node()], awaits=[5], after=[0]))
    s.handle(Submit(12, [Node()], after=[11]))
    assert s.handle(Submit(4, [Node()], broken_after=1)) == [
        Finish(4, DEPENDENCY, False, None, 1, 0), Finish(10, DEPENDENCY, False, None, 4, 0)]
    # (5 will never be stored: its lease was given back, or expired)
    acts = s.handle(Withdraw([5, 6]))
    assert acts == [Finish(11, DEPENDENCY, False, None, 5, 0),
                    Finish(12, DEPENDENCY, False, None, 11, 0)]
    assert not s.is_awaited(5) and s.active_ids() == [0]
    assert s.handle(Withdraw([7])) == []  # (no one awaits it: nothing happens)


def test_an_awaited_task_submitted_after_one_that_waits_for_it_fails_rather_than_loop():
    """10 awaits 3 (not stored yet); 3 then comes `after` 11, which waits for 10: a cycle,
    which would wait for ever. 3 fails with `dependency`, and so does the rest of the loop."""
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))  # (keeps engine 0 busy)
    s.handle(Submit(10, [Node()], awaits=[3]))
    s.handle(Submit(11, [Node()], after=[10]))
    assert s.handle(Submit(3, [Node()], after=[11, 0])) == [
        Finish(3, DEPENDENCY, False, None, 11, 0), Finish(10, DEPENDENCY, False, None, 3, 0),
        Finish(11, DEPENDENCY, False, None, 10, 0)]
    assert s.active_ids() == [0] and not s.is_awaited(3)


def test_an_aborted_task_that_awaited_an_id_leaves_no_link_behind():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(Submit(8, [Node()], awaits=[2]))
    found, _ = split_answer(s.handle(Abort(8)))
    assert found and not s.is_awaited(2)
    assert s.handle(Submit(2, [Node()])) == [Dispatch(2, 0, 0, 1)]


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
    # (its detail says so: the message must not say "while every engine was idle")
    assert s.handle(TimerFired(key)) == [Finish(0, UNMET_TIMEOUT, False, None, NO_ENGINE, 0)]
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
