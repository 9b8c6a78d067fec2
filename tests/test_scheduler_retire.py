"""Unit tests of retiring an engine (scheduler `Retire` -> `Drained`): taking an engine out of
scheduling so that a shrinking cluster stops it without losing or repeating a task.
Each event is a record given to `Scheduler.handle`; we check the exact actions it returns.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from schedtest import make, of, one

from taskmill.scheduler import (
    ERROR,
    OK,
    REJECTED,
    RESULT,
    Abort,
    AddEngine,
    Dispatch,
    Drained,
    EngineGone,
    Finish,
    Node,
    Retire,
    Revoke,
    RevokeAnswered,
    Submit,
    TaskDone,
    split_answer,
)


def test_an_idle_engine_is_drained_at_once_and_gets_no_task():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    ok, acts = split_answer(s.handle(Retire(0)))
    assert ok and acts == [Drained(0)]
    acts = [a for tid in range(3) for a in s.handle(Submit(tid, [Node()]))]
    assert [(d.tid, d.eid) for d in of(acts, Dispatch)] == [(0, 1)]
    assert s.engine_load(0) == [] and s.scheduled_ids() == [1, 2]


def test_retiring_an_unknown_engine_answers_no():
    s = make()
    ok, acts = split_answer(s.handle(Retire(7)))
    assert not ok and acts == []


def test_a_busy_engine_finishes_its_task_then_is_drained_once():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    ok, acts = split_answer(s.handle(Retire(0)))
    assert ok and acts == [Revoke(0, 0, 1)]  # it may not have started it yet
    assert split_answer(s.handle(Retire(0))) == (True, [])  # asked again: nothing new
    acts = s.handle(RevokeAnswered(0, 0, 1, ok=False))  # it had started it
    assert of(acts, Drained) == [] and s.engine_load(0) == [0]
    s.handle(Submit(1, [Node()]))
    assert s.engine_load(0) == [0]  # no new task
    acts = s.handle(TaskDone(0, 0, 1, OK))
    assert one(acts, Finish).ok and one(acts, Drained) == Drained(0)
    assert s.scheduled_ids() == [1]  # waits for an engine that is not retiring


def test_buffered_tasks_are_asked_back_and_queued_again_uncounted():
    s = make(slots=3)
    s.handle(AddEngine(0, {}))
    for tid in range(3):
        s.handle(Submit(tid, [Node(retries=0)]))
    assert s.engine_load(0) == [0, 1, 2]
    ok, acts = split_answer(s.handle(Retire(0)))
    assert ok and of(acts, Revoke) == [Revoke(0, 0, 1), Revoke(0, 1, 1), Revoke(0, 2, 1)]
    s.handle(RevokeAnswered(0, 0, 1, ok=False))
    assert of(s.handle(RevokeAnswered(0, 2, 1, ok=True)), Drained) == []
    assert of(s.handle(RevokeAnswered(0, 1, 1, ok=True)), Drained) == []
    assert s.scheduled_ids() == [1, 2] and s.engine_load(0) == [0]
    s.handle(AddEngine(1, {}, slots=1))  # another engine takes them, first attempts still
    acts = s.handle(TaskDone(0, 0, 1, OK))
    assert one(acts, Drained) == Drained(0)
    assert s.engine_load(1) == [1] and s.task(1).attempts == 1 and s.task(1).tries == 1


def test_a_drained_engine_that_goes_fails_nothing():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    s.handle(Submit(0, [Node()]))
    s.handle(Submit(1, [Node()]))
    eid = s.task(0).engine
    s.handle(Retire(eid))
    s.handle(RevokeAnswered(eid, 0, 1, ok=False))
    assert one(s.handle(TaskDone(eid, 0, 1, OK)), Drained) == Drained(eid)
    assert of(s.handle(EngineGone(eid)), Finish) == []
    assert not s.has_engine(eid)


def test_an_engine_that_dies_while_retiring_fails_what_it_ran_as_a_death_does():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node(retries=1)]))
    s.handle(Retire(0))
    s.handle(RevokeAnswered(0, 0, 1, ok=False))
    acts = s.handle(EngineGone(0))
    assert of(acts, Finish) == [] and s.scheduled_ids() == [0]  # retried elsewhere later


def test_a_retiring_engine_never_steals_and_is_never_stolen_from():
    s = make(slots=2)
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}, slots=1))
    for tid in range(3):
        s.handle(Submit(tid, [Node()]))
    assert (s.engine_load(0), s.engine_load(1)) == ([0, 2], [1])
    s.handle(Retire(1))
    acts = s.handle(TaskDone(1, 1, 1, OK))  # engine 1 is idle now, but retiring
    assert of(acts, Revoke) == [] and one(acts, Drained) == Drained(1)


def test_an_aborted_task_on_a_retiring_engine_drains_when_the_engine_reports():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    s.handle(Retire(0))
    s.handle(RevokeAnswered(0, 0, 1, ok=False))
    assert of(s.handle(Abort(0)), Drained) == []
    assert one(s.handle(TaskDone(0, 0, 1, ERROR)), Drained) == Drained(0)


def test_a_retiring_engine_is_not_waited_for_by_a_rejected_task():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    s.handle(Submit(0, [Node(retries=0)]))
    eid = s.task(0).engine
    other = 1 - eid
    s.handle(Retire(other))
    acts = s.handle(TaskDone(eid, 0, 1, REJECTED))
    done = one(acts, Finish)
    assert (done.outcome, done.ok) == (RESULT, False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["submit", "done", "retire", "answer", "gone"]),
                          st.integers(0, 2), st.booleans()), max_size=40))
def test_no_task_is_lost_or_run_twice_whatever_retires(steps):
    """Whatever engines retire and whatever they answer: every submitted task is active or
    finished exactly once, a retiring engine is never given a task, and Drained comes once
    per retiring engine, only when it holds nothing."""
    s = make(slots=2)
    for eid in range(3):
        s.handle(AddEngine(eid, {}))
    retiring: set[int] = set()
    drained: set[int] = set()
    finished: list[int] = []
    revokes: list[Revoke] = []
    tid = 0

    def take(acts: list) -> None:
        for a in acts:
            if isinstance(a, Dispatch):
                assert a.eid not in retiring, a
            elif isinstance(a, Drained):
                assert a.eid in retiring and a.eid not in drained and not s.engine_load(a.eid)
                drained.add(a.eid)
            elif isinstance(a, Finish):
                finished.append(a.tid)
            elif isinstance(a, Revoke):
                revokes.append(a)

    for kind, eid, flag in steps:
        if kind == "submit":
            take(s.handle(Submit(tid, [Node(retries=1)])))
            tid += 1
        elif kind == "done" and s.has_engine(eid) and s.held(eid):
            t, attempt = s.held(eid)[0]
            take(s.handle(TaskDone(eid, t, attempt, OK if flag else ERROR)))
        elif kind == "retire" and s.has_engine(eid):
            retiring.add(eid)
            take(split_answer(s.handle(Retire(eid)))[1])
        elif kind == "answer" and revokes:
            r = revokes.pop(0)
            ok = flag and s.holds(r.eid, r.tid, r.attempt) and \
                s.held(r.eid)[0][0] != r.tid  # (one it runs is never given back)
            take(s.handle(RevokeAnswered(r.eid, r.tid, r.attempt, ok=ok)))
        elif kind == "gone" and eid in drained and s.has_engine(eid):
            take(s.handle(EngineGone(eid)))
    assert sorted(finished) == sorted(set(finished))
    assert set(finished).isdisjoint(s.active_ids())
    assert set(finished) | set(s.active_ids()) == set(range(tid))
    for eid in retiring - drained:
        assert s.engine_load(eid), eid  # only an engine that still holds a task is not drained
