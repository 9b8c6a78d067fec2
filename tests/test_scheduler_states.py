"""The scheduler's task states and stories, its one entry point and the records it returns:
the transition table (every move it allows and none other), the per-task story and its
bounds, what Dispatch and Interrupt carry for the controller, and the read-only queries."""

from __future__ import annotations

import itertools

import pytest
from schedtest import make

from taskmill.scheduler import (
    ABORTED,
    ERROR,
    OK,
    REJECTED,
    RESULT,
    STORIES_KEPT,
    STORY_LENGTH,
    TRANSITIONS,
    Abort,
    AddEngine,
    Answer,
    Dispatch,
    EngineGone,
    Finish,
    Interrupt,
    LostReturned,
    Node,
    Resume,
    RevokeAnswered,
    RunPass,
    SchedulerBug,
    Spin,
    StoryEntry,
    Submit,
    TaskDone,
    TaskState,
    TaskView,
    TimerFired,
    Withdraw,
    split_answer,
)
from taskmill.scheduler.book import Book, TaskEntry
from taskmill.scheduler.states import read_story

S = TaskState

# The moves the scheduler may make, written out once more: the table must be exactly this.
ALLOWED = {
    (S.NEW, S.WAITING), (S.NEW, S.READY), (S.NEW, S.LOST), (S.NEW, S.FINISHED),
    (S.WAITING, S.READY), (S.WAITING, S.FINISHED), (S.WAITING, S.WITHDRAWN),
    (S.READY, S.PARKED), (S.READY, S.RUNNING), (S.READY, S.FINISHED), (S.READY, S.WITHDRAWN),
    (S.PARKED, S.READY), (S.PARKED, S.FINISHED), (S.PARKED, S.WITHDRAWN),
    (S.RUNNING, S.READY), (S.RUNNING, S.FINISHED), (S.RUNNING, S.WITHDRAWN),
    (S.LOST, S.RUNNING), (S.LOST, S.READY), (S.LOST, S.FINISHED), (S.LOST, S.WITHDRAWN),
}


def book() -> Book:
    return Book(unmet_timeout=5.0, reject_skip=1.0, slots=None, buffer_seconds=0.002,
                max_slots=64)


# ---------------------------------------------------------------------------------------------
# the transition table
# ---------------------------------------------------------------------------------------------


def test_the_table_is_exactly_the_documented_moves():
    assert set(TRANSITIONS) == set(TaskState)
    assert {(a, b) for a, outs in TRANSITIONS.items() for b in outs} == ALLOWED
    assert not TRANSITIONS[S.FINISHED] and not TRANSITIONS[S.WITHDRAWN]  # terminal
    assert all(b != S.NEW for _, b in ALLOWED)  # nothing goes back to NEW


@pytest.mark.parametrize("before, after", list(itertools.product(TaskState, TaskState)))
def test_move_allows_exactly_the_table(before: TaskState, after: TaskState):
    b = book()
    t = TaskEntry(3, [Node()])
    t.state = before  # (set by hand: the test of the one function that moves it)
    if (before, after) in ALLOWED:
        b.move(t, after, "because")
        assert t.state is after
        assert read_story(t.story) == [StoryEntry(b.event, before, after, "because")]
    else:
        with pytest.raises(SchedulerBug, match=f"task 3: no move from {before} to {after}"):
            b.move(t, after, "because")
        assert t.state is before and read_story(t.story) == []  # nothing changed


def test_every_state_is_reached_by_the_scheduler():
    """Each state of the table is one the scheduler really uses (through handle)."""
    seen: set[TaskState] = set()

    def look(s, *tids):
        for tid in tids:
            seen.update(e.after for e in s.story(tid))

    s = make()
    s.handle(Submit(0, [Node(depend={"gpu": 1})]))  # no engine: parked
    s.handle(Submit(1, [Node()], after=[0]))  # waiting
    s.handle(Submit(2, [Node()], resume=Resume(attempts=1, tries=1, lost=True)))
    s.handle(AddEngine(0, {"gpu": 1}))
    s.handle(LostReturned(2))
    s.handle(TaskDone(0, 0, 1, OK))
    look(s, 0, 1, 2)
    s.handle(Withdraw([1]))
    assert seen >= set(TaskState) - {S.NEW, S.WITHDRAWN}
    assert [e.after for e in s.story(1)] == []  # withdrawn: forgotten with its story
    s.handle(Submit(3, [Node()]))
    assert s.story(3)[0].before is S.NEW


# ---------------------------------------------------------------------------------------------
# stories
# ---------------------------------------------------------------------------------------------


def test_a_story_tells_each_move_with_its_event_and_reason():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    s.handle(Submit(0, [Node(retries=1)]))
    s.handle(TaskDone(0, 0, 1, ERROR))
    s.handle(TaskDone(1, 0, 2, OK))
    story = s.story(0)
    assert [(e.event, e.before, e.after) for e in story] == [
        ("Submit", S.NEW, S.READY),
        ("Submit", S.READY, S.RUNNING),
        ("TaskDone", S.RUNNING, S.READY),
        ("TaskDone", S.READY, S.RUNNING),
        ("TaskDone", S.RUNNING, S.FINISHED),
    ]
    assert story[1].why == "dispatched to engine 0 (attempt 1)"
    assert story[2].why == "error on engine 0: retried (1 of 1 retries used)"
    assert story[3].why == "dispatched to engine 1 (attempt 2)"
    assert story[4].why == "ok"
    assert s.story(99) == []  # never seen


def test_a_story_tells_revokes_rejections_engine_deaths_and_aborts():
    s = make(slots=2)
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node()]))
    s.handle(Submit(1, [Node(retries=2)]))  # buffered behind task 0
    s.handle(AddEngine(1, {}))  # holds nothing while engine 0 holds two: asks for one back
    assert s.story(1)[-1] == ("AddEngine", S.RUNNING, S.RUNNING, "engine 1 is idle: engine 0 "
                              "is asked to give it back (attempt 1)")
    s.handle(RevokeAnswered(0, 1, 1, ok=True))
    assert [e.why for e in s.story(1)[-2:]] == ["engine 0 gave it back unstarted",
                                                "dispatched to engine 1 (attempt 1)"]
    s.handle(TaskDone(1, 1, 1, REJECTED))
    assert [e.why for e in s.story(1)[-2:]] == ["rejected by engine 1: skips it for 1s",
                                                "dispatched to engine 0 (attempt 1)"]
    s.handle(EngineGone(0))
    assert s.story(0)[-1] == ("EngineGone", S.RUNNING, S.FINISHED,
                              "engine 0 died holding it: no retries left")
    assert s.story(1)[-2].why == "engine 0 died holding it: retried (2 of 2 retries used)"
    assert s.story(1)[-1] == ("EngineGone", S.READY, S.PARKED, "no free engine satisfies it")
    s.handle(Abort(1))
    assert s.story(1)[-1] == ("Abort", S.PARKED, S.FINISHED, "aborted")


def test_a_story_keeps_the_newest_entries_only():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(Submit(0, [Node(retries=1000)]))
    for attempt in range(1, 40):
        s.handle(TaskDone(0, 0, attempt, ERROR))
    story = s.story(0)
    assert len(story) == STORY_LENGTH
    assert story[-1].why == "dispatched to engine 0 (attempt 40)"  # the newest is last
    assert story[-2].why == "error on engine 0: retried (39 of 1000 retries used)"
    assert all(e.event == "TaskDone" for e in story)  # the Submit entries are gone


def test_finished_tasks_keep_their_story_for_a_bounded_number_of_tasks():
    s = make(slots=1)
    s.handle(AddEngine(0, {}))
    kept = []
    for tid in range(5 * STORIES_KEPT):
        s.handle(Submit(tid, [Node()]))
        s.handle(TaskDone(0, tid, 1, OK))
        kept.append(sum(1 for t in range(tid + 1) if s.story(t)) if tid % 97 == 0 else None)
        for newest in range(max(0, tid - STORIES_KEPT + 1), tid + 1, 50):  # the newest: kept
            assert s.story(newest)[-1].after is S.FINISHED, (tid, newest)
    assert [e.after for e in s.story(tid)] == [S.READY, S.RUNNING, S.FINISHED]
    assert max(k for k in kept if k is not None) < 2 * STORIES_KEPT  # bounded
    assert s.story(0) == [] and s.story(2 * STORIES_KEPT) == []  # old ones are forgotten


# ---------------------------------------------------------------------------------------------
# one entry point, and what the records carry
# ---------------------------------------------------------------------------------------------


def test_handle_refuses_what_is_not_an_event():
    s = make()
    with pytest.raises(TypeError, match="not a scheduler event"):
        s.handle(Dispatch(0, 0, 0, 1))  # an action, not an event


def test_events_and_actions_are_frozen_values():
    ev = Submit(0, [Node()], after=(1,))
    with pytest.raises(AttributeError):
        ev.tid = 1  # type: ignore[misc]
    assert ev == Submit(0, [Node()], after=(1,)) and ev.dispatch is True and ev.resume is None
    assert not hasattr(ev, "__dict__")  # slots
    assert Finish(0, RESULT, True) == Finish(0, RESULT, True, None, None, 0, 0)
    with pytest.raises(TypeError):
        Submit(0, [Node()], (1,))  # after= is keyword-only  # type: ignore[misc]


def test_abort_and_spin_answer_as_their_last_action():
    s = make()
    s.handle(AddEngine(0, {}))
    assert s.handle(Abort(5)) == [Answer(False)]
    assert s.handle(Submit(0, [Node()], dispatch=False)) == []
    acts = s.handle(Spin())
    assert acts == [Dispatch(0, 0, 0, 1), Answer(True)]
    assert s.handle(Spin()) == [Answer(False)]
    acts = s.handle(Abort(0))
    assert acts == [Interrupt(0, 0, ABORTED, 1), Finish(0, ABORTED, False, 0, None, 1),
                    Answer(True)]
    assert split_answer(acts) == (True, acts[:-1])
    with pytest.raises(ValueError):
        split_answer(s.handle(RunPass()))


def test_dispatch_carries_the_counters_the_controller_stores():
    s = make()
    s.handle(AddEngine(0, {}))
    s.handle(AddEngine(1, {}))
    (d,) = s.handle(Submit(0, [Node(retries=2, recovery=1), Node(retries=1)]))
    assert (d.attempt, d.tries, d.handed_over) == (1, 1, ())
    (d,) = [a for a in s.handle(TaskDone(0, 0, 1, ERROR)) if isinstance(a, Dispatch)]
    assert (d.eid, d.attempt, d.tries, d.handed_over) == (1, 2, 2, ())
    (d,) = [a for a in s.handle(TaskDone(1, 0, 2, REJECTED)) if isinstance(a, Dispatch)]
    assert (d.eid, d.attempt, d.tries) == (0, 2, 3)  # a rejection keeps its retry used
    acts = s.handle(TaskDone(0, 0, 2, ERROR))  # out of retries: the recovery node runs
    (d,) = [a for a in acts if isinstance(a, Dispatch)]
    assert (d.node, d.attempt, d.tries, d.handed_over) == (1, 3, 1, (0,))
    assert s.task(0) == TaskView(0, S.RUNNING, d.eid, 1, 1, 3, (0,))
    # a reloaded task starts from its stored counters
    (d,) = s.handle(Submit(1, [Node(retries=5, recovery=1), Node(retries=5, recovery=0)],
                           resume=Resume(node=1, attempts=4, tries=2, handed_over=[0])))
    assert (d.node, d.attempt, d.tries, d.handed_over) == (1, 5, 3, (0,))


def test_queries_of_what_engines_hold():
    s = make(slots=2)
    s.handle(AddEngine(0, {"x": 1}))
    s.handle(Submit(0, [Node()]))
    s.handle(Submit(1, [Node()]))
    assert s.held(0) == [(0, 1), (1, 1)] and s.held(7) == []
    assert s.holds(0, 1, 1) and not s.holds(0, 1, 2) and not s.holds(7, 1, 1)
    assert s.has_engine(0) and not s.has_engine(7)
    assert s.engine_properties(0) == {"x": 1} and s.engine_properties(7) is None
    assert s.active_ids() == [0, 1]
    assert s.task(0).state == "running" and s.task(5) is None
    s.handle(Abort(1))
    assert s.holds(0, 1, 1) and not s.is_running_on(1, 0)  # aborted, still held
    assert s.task(1) is None
    s.handle(TimerFired(("other",)))
    assert s.active_ids() == [0]
