"""RecentActivity, the controller's rolling counters, fed with explicit timestamps."""

from __future__ import annotations

import pytest

from taskmill.stats import (
    ATTEMPT_RING,
    DURATION_BUCKETS,
    DurationHistogram,
    PerSecond,
    RecentActivity,
)

T0 = 1_000_000.0


def test_tasks_per_second_counts_the_last_minute_only():
    a = RecentActivity(T0)
    for i in range(120):  # one task finished every half second for a minute
        a.finished(i, "ok", T0 + 0.5 * i, duration=0.1)
    assert a.tasks_per_second(T0 + 59.9) == pytest.approx(120 / 59.9)
    # 30 s later, only the tasks of the last 60 whole seconds count: 30 s of them.
    assert a.tasks_per_second(T0 + 89.9) == pytest.approx(60 / 60)
    assert a.tasks_per_second(T0 + 200.0) == 0.0


def test_tasks_per_second_early_on_divides_by_the_time_since_the_start():
    a = RecentActivity(T0)
    for i in range(10):
        a.finished(i, "ok", T0 + 1.0 + 0.1 * i)
    assert a.tasks_per_second(T0 + 5.0) == pytest.approx(10 / 5.0)


def test_the_histogram_counts_engine_durations_cumulatively():
    h = DurationHistogram((0.1, 1.0))
    for d in (0.05, 0.1, 0.5, 2.0, float("nan"), float("inf"), -1.0):
        h.observe(d)
    assert h.as_dict() == {"buckets": [[0.1, 3], [1.0, 4], [None, 5]],
                           "sum": pytest.approx(2.65), "count": 5}
    a = RecentActivity(T0)
    a.finished(1, "ok", T0, duration=0.02)
    a.finished(2, "aborted", T0)  # decided by the controller: no duration
    a.finished(3, "error", T0, duration="junk")  # type: ignore[arg-type]
    d = a.durations.as_dict()
    assert d["count"] == 1 and len(d["buckets"]) == len(DURATION_BUCKETS) + 1
    assert dict((b, n) for b, n in d["buckets"])[0.05] == 1


def test_an_attempt_opens_at_dispatch_and_closes_at_its_report():
    a = RecentActivity(T0)
    a.dispatched(7, eid=2, attempt=1, now=T0 + 1)
    a.dispatched(8, eid=2, attempt=1, now=T0 + 1.5)  # buffered behind task 7 (prefetch)
    assert a.held_by(2) == [7, 8]
    snap = a.snapshot(T0 + 2)
    assert [r["tid"] for r in snap["running"]] == [7, 8] and snap["attempts"] == []
    a.attempt_ended(7, eid=2, attempt=1, status="ok", now=T0 + 3)
    assert a.held_by(2) == [8]
    [done] = a.snapshot(T0 + 3)["attempts"]
    assert done == {"seq": 1, "tid": 7, "engineid": 2, "attempt": 1, "start": T0 + 1,
                    "end": T0 + 3, "status": "ok"}


def test_a_stale_report_does_not_close_a_newer_attempt():
    a = RecentActivity(T0)
    a.dispatched(5, 0, 1, T0)
    a.engine_lost(0, T0 + 1)  # attempt 1 ends as "died"; the task is retried on engine 1
    a.dispatched(5, 1, 2, T0 + 1)
    a.attempt_ended(5, 0, 1, "error", T0 + 2)  # the dead engine's late report
    assert a.held_by(1) == [5] and a.held_by(0) == []
    assert [(x["engineid"], x["status"]) for x in a.attempts_since(0)] == [(0, "died")]
    a.attempt_ended(5, 1, 2, "something odd", T0 + 3)
    assert a.attempts_since(1)[0]["status"] == "error"


def test_finishing_a_running_task_closes_its_attempt_with_the_final_status():
    a = RecentActivity(T0)
    a.dispatched(3, 0, 1, T0)
    a.finished(3, "aborted", T0 + 1, engineid=0,
               error={"type": "TaskAborted", "message": "task 3 was aborted"})
    assert a.held_by(0) == [] and a.attempts_since(0)[0]["status"] == "aborted"
    a.attempt_ended(3, 0, 1, "error", T0 + 2)  # the interrupted run reports later: ignored
    assert len(a.attempts_since(0)) == 1
    [f] = a.failures
    assert f == {"tid": 3, "engineid": 0, "time": T0 + 1, "status": "aborted",
                 "type": "TaskAborted", "message": "task 3 was aborted"}


def test_a_redispatch_without_a_report_closes_the_old_attempt_as_moved():
    a = RecentActivity(T0)
    a.dispatched(4, 0, 1, T0)
    a.dispatched(4, 1, 1, T0 + 1)
    assert a.held_by(0) == [] and a.held_by(1) == [4]
    assert a.attempts_since(0)[0]["status"] == "moved"


def test_failures_keep_short_messages_and_tolerate_junk():
    a = RecentActivity(T0, failures=3)
    a.finished(1, "error", T0, error={"type": "ValueError", "message": "x" * 10_000})
    a.finished(2, "error", T0, error="not a dict")  # type: ignore[arg-type]
    for tid in (3, 4):
        a.finished(tid, "dependency", T0, error={"type": "DependencyError"})
    assert [f["tid"] for f in a.failures] == [2, 3, 4]  # a bounded ring
    assert a.failures[0]["type"] == ""
    b = RecentActivity(T0)
    b.finished(1, "error", T0, error={"type": "ValueError", "message": "x" * 10_000})
    assert len(b.failures[0]["message"]) == 300


def test_attempts_since_returns_only_newer_ones_and_the_ring_is_bounded():
    a = RecentActivity(T0)
    for tid in range(ATTEMPT_RING + 10):
        a.dispatched(tid, 0, 1, T0 + tid)
        a.attempt_ended(tid, 0, 1, "ok", T0 + tid + 0.5)
    assert len(a.attempts_since(0)) == ATTEMPT_RING
    assert a.snapshot(T0)["seq"] == ATTEMPT_RING + 10
    newest = a.attempts_since(ATTEMPT_RING + 7)
    assert [x["seq"] for x in newest] == [ATTEMPT_RING + 8, ATTEMPT_RING + 9, ATTEMPT_RING + 10]
    assert a.attempts_since(ATTEMPT_RING + 10) == []


def test_per_second_series_keep_a_bounded_history():
    s = PerSecond(keep=10)
    for i in range(25):
        s.add(T0 + i)
        s.add(T0 + i + 0.5)
    rows = s.since(T0 + 24.9)
    assert [r[0] for r in rows] == [int(T0) + i for i in range(15, 25)]
    assert all(r[1] == 2 for r in rows)
    q = RecentActivity(T0)
    q.sample_queue(T0 + 1.1, 5, 2)
    q.sample_queue(T0 + 1.6, 4, 2)  # the same second: the last sample wins
    q.sample_queue(T0 + 2.1, 3, 2)
    assert q.snapshot(T0 + 3)["queue_per_second"] == [[int(T0) + 1, 4, 2], [int(T0) + 2, 3, 2]]
