"""The thread that runs the done-callbacks users add to a client's futures
(client/callbacks.py): in order, past a callback's failure of any kind, and drained when the
client closes."""

from __future__ import annotations

import threading

import pytest

from taskmill.client.callbacks import Callbacks

pytestmark = pytest.mark.timeout(60, method="thread")


@pytest.mark.parametrize("error", [ValueError, SystemExit, KeyboardInterrupt])
def test_a_callback_that_raises_anything_leaves_the_later_ones_running(error):
    """(SystemExit or KeyboardInterrupt ended the thread, and every later callback of the
    client was never run.)"""
    callbacks, seen = Callbacks(), []

    def raises(_):
        raise error("from a callback")

    callbacks.call(raises, 1)
    callbacks.call(seen.append, 2)
    assert callbacks.drain(30)
    callbacks.call(seen.append, 3)
    assert callbacks.drain(30) and seen == [2, 3]


def test_drain_waits_for_what_is_queued_and_running_but_not_for_itself():
    callbacks, seen = Callbacks(), []
    release = threading.Event()

    def slow(x):
        release.wait(30)
        seen.append(x)

    def from_a_callback(_):
        seen.append(("drained", callbacks.drain(30)))  # (its own thread: at once)

    callbacks.call(slow, 1)
    callbacks.call(seen.append, 2)
    callbacks.call(from_a_callback, 3)
    assert not callbacks.drain(0.2) and seen == []  # (bounded)
    release.set()
    assert callbacks.drain(30)
    assert seen == [1, 2, ("drained", True)]
