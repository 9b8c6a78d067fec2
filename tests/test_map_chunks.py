"""A map chunk's result (mapper.run_chunk) and how the client takes it apart (maps.chunk_values,
chunk_entries, assemble_map), without a cluster."""

from __future__ import annotations

import ctypes
import os
import signal
import threading

import pytest

from taskmill import CompositeError
from taskmill.arguments import FutureLike
from taskmill.client.maps import assemble_map, chunk_entries, chunk_values, zip_columns
from taskmill.mapper import run_chunk


class Done:
    """Stands in for a finished TaskFuture."""

    def __init__(self, result=None, error=None, engineid=3, taskid=7):
        self._result, self._error = result, error
        self.metadata = {"engineid": engineid}
        self.taskid = taskid

    def result(self):
        if self._error is not None:
            raise self._error
        return self._result


def half(x):
    if x % 3 == 0:
        raise ValueError(f"no {x}")
    return x / 2


def test_run_chunk_gives_values_and_the_failures_with_their_index_and_traceback():
    values, failures = run_chunk(half, [(x,) for x in range(1, 8)])
    assert values == [0.5, 1.0, None, 2.0, 2.5, None, 3.5]
    assert [(i, str(e)) for i, e, _ in failures] == [(2, "no 3"), (5, "no 6")]
    assert all("half" in tb for _, _, tb in failures)


def test_an_all_good_chunk_is_one_plain_list():
    assert run_chunk(abs, [(-1,), (2,)]) == ([1, 2], [])


@pytest.mark.parametrize("old", [False, True])
def test_chunk_values_and_entries_read_the_shape_and_the_older_one(old):
    err = ValueError("boom")
    result = ([1, None, 3], [(1, err, "tb text")])
    if old:  # what a store written by an earlier version holds: a tuple per element
        result = [(True, 1), (False, err, "tb text"), (True, 3)]
    fut = Done(result)
    values, failures = chunk_values(fut, 3)
    assert values == [1, None, 3] and failures == [(1, err)]
    assert err.engineid == 3 and err.taskid == 7 and err.remote_traceback == "tb text"
    assert chunk_entries(fut, 3) == [(True, 1), (False, err), (True, 3)]


def test_a_chunk_that_failed_whole_fails_each_element():
    dead = RuntimeError("engine died")
    assert chunk_entries(Done(error=dead), 2) == [(False, dead), (False, dead)]


def test_assemble_map_keeps_input_order_and_names_each_failure_by_its_index():
    futs = [Done(run_chunk(half, [(x,) for x in (1, 2)])),
            Done(run_chunk(half, [(x,) for x in (3, 4, 5)]), engineid=9)]
    assert assemble_map("half", futs[:1], [[1, 2]], 2) == [0.5, 1.0]
    with pytest.raises(CompositeError) as info:
        assemble_map("half", futs, [[1, 2], [3, 4, 5]], 5)
    assert [(f.index, f.engineid) for f in info.value.elist] == [(2, 9)]


class Interrupted(BaseException):
    """As the engine's TaskInterrupted: raised by a signal handler, not an Exception."""


C_KILL = ctypes.CDLL(None, use_errno=True).kill  # (os.kill runs the handlers itself)


def kill(pid, sig):
    C_KILL(pid, sig)


@pytest.mark.parametrize("func", [C_KILL, kill], ids=["C function", "python function"])
def test_run_chunk_lets_an_interrupt_through_before_the_next_element(func):
    """An engine interrupts task code by a signal whose handler raises (engine/control.py):
    the element that got it is the last one run, whatever the mapped callable is (one that
    runs no Python code, called from C, would hold the handler off until the whole chunk had
    run)."""
    later = []

    def interrupt(signum, frame):
        raise Interrupted

    old1 = signal.signal(signal.SIGUSR1, interrupt)
    old2 = signal.signal(signal.SIGUSR2, lambda signum, frame: later.append(signum))
    try:
        with pytest.raises(Interrupted):
            run_chunk(func, [(os.getpid(), signal.SIGUSR1), (os.getpid(), signal.SIGUSR2)])
        assert later == []  # (the second element never ran: nothing left to deliver)
    finally:
        signal.signal(signal.SIGUSR1, old1)
        signal.signal(signal.SIGUSR2, old2)


def test_run_chunk_takes_a_zip_of_lists_and_goes_on_after_each_failure():
    values, failures = run_chunk(half, zip([1, 2, 3, 4, 6, 7], strict=True))
    assert values == [0.5, 1.0, None, 2.0, None, 3.5]
    assert [(i, str(e)) for i, e, _ in failures] == [(2, "no 3"), (4, "no 6")]
    assert all("half" in tb and "run_chunk" not in tb for _, _, tb in failures)


def test_a_chunk_travels_as_a_zip_unless_an_element_may_hold_a_future():
    """A zip pickles as its lists; the task's encoding looks for futures only in lists and
    tuples, so a chunk that holds one goes as its argument tuples, where it is swapped."""
    cols = zip_columns([range(4), ["a", "b", "c", "d"]])
    assert cols.plain and len(cols) == 4
    part = cols[1:3]
    assert type(part.arguments()) is zip and list(part.arguments()) == [(1, "b"), (2, "c")]
    fut = FutureLike()
    fut.taskid = 5
    mixed = zip_columns([[1, [fut]]])
    assert not mixed.plain
    assert mixed.arguments() == [(1,), ([fut],)]
    assert type(zip_columns([[1, [2]]]).arguments()) is zip  # (no future in it after all)


def test_a_chunk_that_cannot_be_pickled_is_named_by_its_elements():
    from taskmill import SerializationError
    from taskmill.client.codec import encode_task
    from taskmill.client.maps import encode_chunks
    from taskmill.client.options import TaskOptions
    from taskmill.wire import Wire

    class Backend:
        wire = Wire(b"k" * 32)

        def encode(self, task):
            return encode_task(task, self.wire)

    lock = threading.Lock()
    with pytest.raises(SerializationError, match=r"\[\(1,\), \(<unlocked _thread.lock"):
        encode_chunks(Backend(), TaskOptions(), abs, [zip_columns([[1, lock]])], split=True)


def stop_at_3(x):
    if x == 3:
        raise StopIteration(x)  # (as next() on an exhausted iterator does)
    return x


@pytest.mark.parametrize("arglists", [[(x,) for x in range(1, 6)], zip(range(1, 6))],
                         ids=["tuples", "zip"])
def test_an_element_that_raises_stopiteration_fails_alone(arglists):
    """A C loop over the calls (list.extend, map, starmap) would take a StopIteration from
    the function for the end of the elements, and drop the rest."""
    values, failures = run_chunk(stop_at_3, arglists)
    assert values == [1, 2, None, 4, 5]
    assert [(i, type(e), e.args) for i, e, _ in failures] == [(2, StopIteration, (3,))]
    assert "stop_at_3" in failures[0][2]
