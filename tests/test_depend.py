"""Callable depends run with a deadline (taskmill.depend): a slow one counts as False once
and for all, and never holds the caller up for longer than the budget."""

from __future__ import annotations

import threading

from taskmill.depend import DependRunner


def test_a_quick_depend_answers_and_an_exception_reaches_the_caller():
    runner = DependRunner(budget=5.0)
    slow = []
    guard = runner.guard(lambda props: props["gpu"] == 1, slow.append)
    assert guard({"gpu": 1}) is True and guard({"gpu": 0}) is False
    try:
        guard({})
    except KeyError:
        pass
    else:
        raise AssertionError("the KeyError must reach the scheduler (which counts it False)")
    assert slow == [] and not guard.slow
    runner.close()


def test_a_slow_depend_counts_as_false_and_is_given_up_on():
    release = threading.Event()
    calls = []

    def sleepy(props):
        calls.append(props)
        release.wait(30)
        return True

    runner = DependRunner(budget=0.05)
    slow = []
    guard = runner.guard(sleepy, slow.append)
    assert guard({"engineid": 0}) is False  # returned while the callable still sleeps
    assert not release.is_set() and runner.overrunning == 1
    assert guard({"engineid": 1}) is False  # given up on: not called again
    assert slow == [guard] and guard.slow and len(calls) == 1 and runner.given_up == 1
    # Every worker held by an overrunning call: the next call gets a fresh worker.
    guards = [runner.guard(sleepy, slow.append) for _ in range(runner.workers)]
    for g in guards:
        assert g({}) is False
    quick = runner.guard(lambda props: True, slow.append)
    assert quick({}) is True
    release.set()
    runner.close()
