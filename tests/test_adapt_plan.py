"""The rules of adaptive clusters (taskmill/adapt.py): `plan` and `Starting`, with no cluster."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskmill.adapt import Adapter, Plan, Policy, Starting, plan


def engine(eid: int, state: str = "idle", idle_for: float | None = None) -> dict:
    if state == "idle" and idle_for is None:
        idle_for = 0.0
    return {"engineid": eid, "state": state, "idle_for": idle_for}


def queue(scheduled: int = 0, pending: int = 0) -> dict:
    return {"scheduled": scheduled, "pending": pending, "succeeded": 0, "failed": 0}


P = Policy(minimum=1, maximum=4, idle_after=10.0)


def test_it_grows_to_one_engine_per_task_up_to_maximum():
    assert plan(P, [engine(0, "busy")], queue(200, 1)) == Plan(start=3)
    assert plan(P, [engine(0, "busy")], queue(1, 1)) == Plan(start=1)
    assert plan(P, [engine(0, "busy")], queue(0, 1)) == Plan()


def test_engines_starting_count_so_a_launch_is_not_repeated():
    assert plan(P, [engine(0, "busy")], queue(200, 1), starting=3) == Plan()
    assert plan(P, [engine(0, "busy")], queue(200, 1), starting=2) == Plan(start=1)


def test_it_keeps_minimum_even_with_nothing_to_do():
    assert plan(P, [], queue()) == Plan(start=1)
    assert plan(Policy(0, 4, 1.0), [], queue()) == Plan()
    assert plan(Policy(0, 4, 1.0), [], queue(5)) == Plan(start=4)


def test_only_engines_idle_long_enough_retire_longest_idle_first_down_to_minimum():
    engines = [engine(0, "idle", 30.0), engine(1, "idle", 5.0), engine(2, "idle", 60.0),
               engine(3, "idle", 11.0)]
    assert plan(P, engines, queue()) == Plan(retire=(2, 0, 3))  # engine 1: idle 5 s only
    busy = [engine(0, "busy"), *engines[1:]]
    assert plan(P, busy, queue(0, 1)) == Plan(retire=(2, 3))


def test_nothing_retires_while_tasks_wait_in_the_controller():
    engines = [engine(0, "busy"), engine(1, "idle", 99.0)]
    assert plan(P, engines, queue(scheduled=1, pending=1)) == Plan()  # (a depend may wait)


def test_retiring_and_gone_engines_do_not_count():
    engines = [engine(0, "retiring"), engine(1, "dead"), engine(2, "retired")]
    assert plan(P, engines, queue(3)) == Plan(start=3)


def test_a_policy_refuses_what_cannot_be():
    for bad in ({"minimum": -1}, {"maximum": 0}, {"minimum": 3, "maximum": 2},
                {"minimum": 1.5}, {"idle_after": -1.0}, {"idle_after": float("nan")}):
        with pytest.raises(ValueError):
            Policy(**{"minimum": 0, "maximum": 2, "idle_after": 1.0, **bad})


def test_starting_counts_a_launch_until_its_engines_register_or_it_times_out():
    s = Starting(timeout=30.0)
    assert s.count([engine(0), engine(1)], now=0.0) == 0  # those were there before
    s.launched(3, now=1.0)
    assert s.count([engine(0), engine(1)], now=2.0) == 3
    assert s.count([engine(0), engine(1), engine(2)], now=3.0) == 2
    assert s.count([engine(0), engine(1), engine(2), engine(4)], now=4.0) == 1
    assert s.count([engine(0), engine(1), engine(2), engine(4)], now=31.5) == 0  # timed out
    s.launched(1, now=40.0)
    assert s.count([engine(5), engine(6)], now=41.0) == 0  # (more than launched: none left)


@given(st.integers(0, 5), st.integers(1, 8), st.lists(
    st.tuples(st.sampled_from(["idle", "busy", "retiring", "dead", "retired"]),
              st.floats(0, 100)), max_size=12),
    st.integers(0, 50), st.integers(0, 50), st.integers(0, 8))
def test_a_plan_stays_within_bounds_and_never_retires_a_busy_engine(
        lo, span, rows, scheduled, pending, starting):
    policy = Policy(lo, lo + span, idle_after=20.0)
    engines = [engine(i, state, idle_for if state == "idle" else None)
               for i, (state, idle_for) in enumerate(rows)]
    live = [e for e in engines if e["state"] in ("idle", "busy")]
    p = plan(policy, engines, queue(scheduled, pending), starting)
    assert not (p.start and p.retire)
    assert len(live) + starting + p.start <= max(policy.maximum, len(live) + starting)
    assert len(live) - len(p.retire) >= policy.minimum or not p.retire
    for eid in p.retire:
        e = engines[eid]
        assert e["state"] == "idle" and e["idle_for"] >= policy.idle_after
    if scheduled:
        assert not p.retire
    if len(live) + starting < policy.minimum:
        assert p.start >= policy.minimum - len(live) - starting


def test_the_adapter_carries_out_each_plan_and_keeps_history():
    seen = {"engines": [engine(0, "busy")], "queue": queue(10, 1)}
    started, retired = [], []
    a = Adapter(P, read=lambda: (seen["engines"], seen["queue"]), start=started.append,
                retire=retired.append, interval=60.0)
    assert a.step() == Plan(start=3)
    assert a.step() == Plan()  # the 3 launched count as starting
    long_ago = time.time() - 50.0  # (the controller's engine table says since when)
    seen["engines"] = [engine(0, "busy"), *({"engineid": i, "state": "idle",
                                             "idle_since": long_ago} for i in (1, 2, 3))]
    seen["queue"] = queue()
    assert a.step() == Plan(retire=(1, 2, 3))
    assert started == [3] and retired == [[1, 2, 3]]
    assert [h[3] for h in a.history] == [Plan(start=3), Plan(retire=(1, 2, 3))]
    assert a.largest == 4


def test_engines_the_launcher_holds_queued_count_as_starting_however_long_they_wait():
    """A launch counted as starting for `start_timeout` only: with a Slurm queue full, the
    adapter asked for more engines each time, far past `maximum`. And a cluster started with
    wait=False had its own engines not counted at all."""
    seen = {"engines": [engine(0, "busy")], "queue": queue(10, 1)}
    started: list[int] = []
    held = {"n": 0}
    a = Adapter(P, read=lambda: (seen["engines"], seen["queue"]), start=started.append,
                retire=lambda ids: None, interval=60.0, start_timeout=0.0,
                pending=lambda: held["n"])
    assert a.step() == Plan(start=3)
    held["n"] = 3  # (all three wait in the queue; the launch itself has timed out)
    assert a.step() == Plan() and a.step() == Plan()
    held["n"] = 0
    assert a.step() == Plan(start=3)  # (gone from the queue and never registered)
    b = Adapter(P, read=lambda: ([], queue(10, 0)), start=started.append,
                retire=lambda ids: None, interval=60.0, start_timeout=60.0)
    b.begin([], launched=4)
    b.stop()
    assert b.step() == Plan()  # (the cluster's own 4, not yet registered)
