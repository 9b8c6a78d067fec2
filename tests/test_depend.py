"""Callable depends run with a deadline (taskmill.depend): a slow one counts as False once
and for all, and never holds the caller up for longer than the budget."""

from __future__ import annotations

import threading

import pytest

from taskmill.depend import DependLoadError, DependRunner


def test_a_quick_depend_answers_and_any_exception_counts_as_false():
    """(SystemExit and KeyboardInterrupt reached the controller's loop, and ended it.)"""
    runner = DependRunner(budget=5.0)
    slow = []
    guard = runner.guard(lambda props: props["gpu"] == 1, slow.append)
    assert guard({"gpu": 1}) is True and guard({"gpu": 0}) is False
    assert guard({}) is False  # (a KeyError)
    for error in (SystemExit, KeyboardInterrupt, GeneratorExit):
        def raises(props, error=error):
            raise error("no")

        assert runner.guard(raises, slow.append)({"gpu": 1}) is False
    assert slow == [] and not guard.slow
    runner.close()


def test_a_depend_that_raises_keeps_what_it_raised_first_and_says_so_once():
    runner = DependRunner(budget=5.0)
    raised = []
    guard = runner.guard(lambda props: props["gpu"] == 1, [].append,
                         lambda g, text: raised.append((g, text)))
    assert guard({"gpu": 1}) is True and guard.raised is None and raised == []
    assert guard({}) is False and guard({"cpu": 1}) is False
    assert guard.raised == "KeyError: 'gpu'" and raised == [(guard, "KeyError: 'gpu'")]
    runner.close()


def test_a_depend_is_unpickled_with_a_deadline_and_whatever_it_raises_is_refused():
    runner = DependRunner(budget=5.0)
    assert runner.load(lambda: len) is len
    for error in (ValueError, SystemExit, KeyboardInterrupt):
        def raises(error=error):
            raise error("no")

        with pytest.raises(DependLoadError, match=f"unpickling it raised {error.__name__}"):
            runner.load(raises)
    release = threading.Event()
    with pytest.raises(DependLoadError, match=r"took longer than 0.05s to unpickle"):
        runner.load(lambda: release.wait(30), budget=0.05)  # (returns while it still waits)
    assert not release.is_set() and runner.overrunning == 1
    release.set()
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
