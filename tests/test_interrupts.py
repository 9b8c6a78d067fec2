"""interrupts_deferred: Ctrl-C waits for the end of the block, nested blocks included."""

from __future__ import annotations

import signal
import threading

import pytest

from taskmill.client.interrupts import interrupts_deferred


def test_ctrl_c_in_a_block_is_raised_at_its_end() -> None:
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            done = True
    assert done and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_a_nested_block_waits_for_the_outer_blocks_end() -> None:
    inner_over = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            with interrupts_deferred():
                signal.raise_signal(signal.SIGINT)
            inner_over = True
            with interrupts_deferred():  # (another block inside: still deferred)
                pass
    assert inner_over and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # and a block after them defers again
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            done = True
    assert done


def test_other_threads_and_other_handlers_are_left_alone() -> None:
    seen = []

    def other() -> None:
        with interrupts_deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert seen == [signal.default_int_handler]
    caught = []
    old = signal.signal(signal.SIGINT, lambda *_: caught.append(1))
    try:
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            assert caught == [1]  # (someone else's handler: at once, as ever)
    finally:
        signal.signal(signal.SIGINT, old)
