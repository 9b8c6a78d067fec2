"""Unit tests of the scheduler's rules about engines (SPEC.md §2): rejection and skips,
engine death, abort, stale reports, spin and the queue views, adaptive prefetch and stealing.
Each event is a record given to `Scheduler.handle`; we check the exact actions it returns.
"""

from __future__ import annotations

import pytest
from schedtest import arm_keys, make, of, one

from taskmill.scheduler import (
    ABORTED,
    DEPENDENCY,
    ENGINE_DIED,
    ERROR,
    OK,
    REJECTED,
    RESULT,
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


def test_slow_timer_is_cancelled_when_the_engine_runs_nothing():
    """One task at a time (lone round trips): the watched task finishing on an engine that
    runs nothing else cancels the timer, and the next task is watched from its dispatch."""
    s = make(buffer_seconds=0.002)
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    s.handle(TaskDone(0, 0, 1, OK, duration=0.0001))
    assert arm_keys(s.handle(Submit(1, [Node()]))) == [("slow", 0)]
    done = s.handle(TaskDone(0, 1, 1, OK, duration=0.0001))
    assert [a.key for a in of(done, CancelTimer)] == [("slow", 0)]
    assert arm_keys(s.handle(Submit(2, [Node()]))) == [("slow", 0)]  # watched at once
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


def test_a_pass_lists_the_buffered_tasks_again_only_once_a_task_was_buffered_anew(monkeypatch):
    """Once every buffered task was asked back (each revoke refused: the engine had started
    it), passes do not list the buffering engines' tasks again (at 1,000 engines that list
    was most of a pass) until a task is buffered anew, which an idle engine then asks for."""
    from taskmill.scheduler import placement

    listed = []
    real = placement.stealable
    monkeypatch.setattr(placement, "stealable", lambda b, e: listed.append(e.eid) or real(b, e))
    s = _two_busy_engines_with_a_buffer()
    assert one(s.handle(TaskDone(1, 1, 1, OK)), Revoke) == Revoke(0, 2, 1)
    listed.clear()
    s.handle(RevokeAnswered(0, 2, 1, ok=False))  # engine 1 is idle again, nothing to ask
    for _ in range(3):
        assert of(split_answer(s.handle(Spin()))[1], Revoke) == []
    assert listed == [0]  # the answer's pass looked, found none; the later ones did not look
    s.handle(Submit(3, [Node()]))  # engine 1 runs it
    s.handle(Submit(4, [Node()]))  # no engine has room: queued
    acts = s.handle(TaskDone(0, 0, 1, OK))  # engine 0 takes task 4, buffered behind task 2
    assert one(acts, Dispatch) == Dispatch(4, 0, 0, 1)
    acts = s.handle(TaskDone(1, 3, 1, OK))  # engine 1 is idle: it asks for task 4
    assert of(acts, Revoke) == [Revoke(0, 4, 1)]
    assert listed == [0, 0]  # (one look more: the pass that found it)


def test_an_idle_engine_looks_at_the_most_loaded_engine_first_and_no_further(monkeypatch):
    """The tasks that may be asked back are listed only as far as the idle engines need: one
    idle engine takes the most loaded engine's newest task without the others being listed."""
    from taskmill.scheduler import placement

    listed = []
    real = placement.stealable
    monkeypatch.setattr(placement, "stealable", lambda b, e: listed.append(e.eid) or real(b, e))
    s = make(slots=3)
    for eid in range(3):
        s.handle(AddEngine(eid, {}))
    s.handle(AddEngine(3, {}, slots=1))
    for tid in range(4):  # one each (engine 3 too)
        s.handle(Submit(tid, [Node()]))
    for tid in range(4, 9):  # buffered: 4, 7 on engine 0; 5, 8 on engine 1; 6 on engine 2
        s.handle(Submit(tid, [Node()]))
    assert [s.engine_load(e) for e in range(4)] == [[0, 4, 7], [1, 5, 8], [2, 6], [3]]
    listed.clear()
    acts = s.handle(TaskDone(3, 3, 1, OK))
    assert of(acts, Revoke) == [Revoke(0, 7, 1)]
    assert listed == [0]


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
    s.handle(AddEngine(0, {"engineid": 0}))  # (a property task code cannot change)
    s.handle(AddEngine(1, {"engineid": 1}, slots=1))
    s.handle(Submit(0, [Node(depend={"engineid": 0})]))
    s.handle(Submit(1, [Node()]))
    s.handle(Submit(2, [Node(depend={"engineid": 0})]))
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


def test_a_thief_whose_revoke_got_no_answer_steals_again_once_the_task_finished():
    """The revoke (or its answer) was lost and the victim ran the task to its end: the idle
    engine that asked for it must not stay marked as waiting for it, or it never steals
    again."""
    s = _two_busy_engines_with_a_buffer()
    assert one(s.handle(TaskDone(1, 1, 1, OK)), Revoke) == Revoke(0, 2, 1)
    s.handle(TaskDone(0, 0, 1, OK))
    s.handle(TaskDone(0, 2, 1, OK))  # (no RevokeAnswered ever comes)
    for tid in (3, 4, 5):
        s.handle(Submit(tid, [Node()]))
    assert (s.engine_load(0), s.engine_load(1)) == ([4, 5], [3])
    acts = s.handle(TaskDone(1, 3, 1, OK))
    assert of(acts, Revoke) == [Revoke(0, 5, 1)]


def test_a_depend_on_properties_task_code_may_change_waits_for_an_engine_holding_nothing():
    """A task is judged on an engine's properties as last reported; the task before it on that
    engine may change them (current_engine().properties) before it starts. So a task whose
    depend reads such properties (any dict key but engineid, hostname and pid; any callable)
    is never buffered behind another: it goes to an engine that holds nothing."""
    s = make(slots=4)
    s.handle(AddEngine(0, {"ready": True, "engineid": 0}))
    acts = s.handle(Submit(0, [Node()]))  # (may set ready=False)
    assert one(acts, Dispatch).eid == 0
    for tid, depend in ((1, {"ready": True}), (2, lambda p: p.get("ready"))):
        acts = s.handle(Submit(tid, [Node(depend=depend)]))
        assert of(acts, Dispatch) == []  # not behind task 0
    acts = s.handle(Submit(3, [Node(depend={"engineid": 0})]))
    assert one(acts, Dispatch).tid == 3  # (a fixed property: buffered as before)
    s.handle(TaskDone(0, 0, 1, OK, properties={"ready": False, "engineid": 0}))
    acts = s.handle(TaskDone(0, 3, 1, OK))
    assert of(acts, Dispatch) == []  # holds nothing now, and ready is False: neither runs
    acts = s.handle(SetProperties(0, {"ready": True, "engineid": 0}))
    assert one(acts, Dispatch).tid == 1  # idle and satisfying: one of them, then the other
    acts = s.handle(TaskDone(0, 1, 1, OK))
    assert one(acts, Dispatch).tid == 2
