"""The seed API, many tasks at once: map, mapper and parallel.

The seed's blocking client (`TaskClient`, the seed's `BlockingTaskClient`) against a real
controller and real engines: the shared 2-engine `cluster` fixture, or a `taskmill.Cluster` of
a test's own where it needs engines of its own (properties, a lone engine to interrupt). The
rules these tests keep are in tests/system/conftest.py; the other verbs are in the other
test_seed_*.py files.
"""

from __future__ import annotations

import time

import pytest
from systest import make_logger, make_where, read_lines

import taskmill
from taskmill import MapTask

# The thread method always ends a hung test (see tests/system/conftest.py).
pytestmark = pytest.mark.timeout(120, method="thread")


# -- map, mapper, parallel -------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_client_map_results_in_order(client, chunksize):
    assert client.map(lambda x: x * x, range(40), chunksize=chunksize) == [x * x for x in range(40)]
    assert client.map(lambda a, b: a + b, [1, 2, 3], (10, 20, 30), chunksize=chunksize) == [
        11, 22, 33]
    assert client.map(abs, [], chunksize=chunksize) == []


def test_mapper_map_results_in_order(client):
    def slow_first(x):

        if x == 0:
            time.sleep(0.3)
        return -x

    assert client.mapper().map(slow_first, range(10)) == [-x for x in range(10)]
    assert client.mapper().map(pow, [2, 3], [5, 2]) == [32, 9]
    assert client.mapper().map(abs, []) == []


def test_map_sequences_of_unequal_length_are_value_error(client):
    with pytest.raises(ValueError):
        client.map(pow, [1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        client.mapper().map(pow, [1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        client.mapper(block=False).map(pow, [1], [])


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_client_map_raises_composite_error_naming_every_failure(client, eids, chunksize):
    def picky(x):
        if x % 3 == 0:
            raise ValueError(f"no multiples of three: {x}")
        return x

    with pytest.raises(taskmill.CompositeError) as ei:
        client.map(picky, range(10), chunksize=chunksize)
    ce = ei.value
    assert isinstance(ce, taskmill.TaskError)
    assert [f.index for f in ce.elist] == [0, 3, 6, 9]
    for f in ce.elist:
        assert isinstance(f.exception, ValueError)
        assert str(f.exception) == f"no multiples of three: {f.index}"
        assert f.engineid in eids
        assert "ValueError" in f.traceback and "picky" in f.traceback
    lines = str(ce).splitlines()
    assert len(lines) == 1 + 4
    for f, line in zip(ce.elist, lines[1:], strict=True):
        assert f"[{f.index}]" in line and "ValueError" in line
    with pytest.raises(ValueError, match="three: 3"):
        ce.raise_exception(1)
    with pytest.raises(ValueError, match="three: 0"):
        ce.raise_exception()


def test_mapper_map_raises_the_first_failure_itself(client):
    def fail_some(x):

        if x == 2:
            time.sleep(0.3)  # fails last, but comes first in input order
            raise KeyError(f"slow {x}")
        if x == 4:
            raise ValueError(f"fast {x}")
        return x

    with pytest.raises(KeyError) as ei:
        client.mapper().map(fail_some, range(6))
    assert type(ei.value) is KeyError
    assert "slow 2" in str(ei.value)
    assert isinstance(ei.value.taskid, int)
    assert "KeyError" in ei.value.remote_traceback


def test_mapper_without_blocking_returns_taskids(client):
    tids = client.mapper(block=False).map(lambda a, b: a * b, [1, 2, 3], [4, 5, 6])
    assert len(tids) == 3
    assert all(isinstance(t, int) for t in tids)
    assert tids == list(range(tids[0], tids[0] + 3))
    assert [client.get_task_result(t, block=True) for t in tids] == [4, 10, 18]


def test_mapper_options_reach_every_task(client, eids, tmp_path):
    target = eids[1]
    where = client.mapper(depend={"engineid": target}).map(make_where(), range(6))
    assert where == [target] * 6

    log = tmp_path / "attempts.log"
    with pytest.raises(ValueError):
        client.mapper(retries=2).map(make_logger(), [str(log)], ["x"])
    assert read_lines(log) == ["x"] * 3


def test_mapper_exposes_its_client_and_options_as_attributes(client, eids, tmp_path):
    """As the seed's TaskMapper: `task_controller` and each option, by name; a change to an
    option applies to the next map (and a bad value is refused there, before anything runs)."""
    recovery = MapTask(abs, (-1,))
    depend = {"engineid": eids[0]}
    m = client.mapper(clear_before=True, clear_after=True, retries=3, recovery_task=recovery,
                      depend=depend, block=False)
    assert m.task_controller is client
    assert (m.clear_before, m.clear_after, m.retries) == (True, True, 3)
    assert m.recovery_task is recovery and m.depend == depend and m.block is False
    d = client.mapper()
    assert d.task_controller is client
    assert (d.clear_before, d.clear_after, d.retries, d.recovery_task, d.depend, d.block) == (
        False, False, 0, None, None, True)

    log = tmp_path / "attempts.log"
    d.retries = 1
    with pytest.raises(ValueError):
        d.map(make_logger(), [str(log)], ["x"])
    assert read_lines(log) == ["x"] * 2
    d.retries = 0
    d.depend = {"engineid": eids[1]}
    assert d.map(make_where(), range(4)) == [eids[1]] * 4
    d.block = False
    tids = d.map(make_where(), range(2))
    assert [client.get_task_result(t, block=True) for t in tids] == [eids[1]] * 2
    d.retries = -1
    with pytest.raises(TypeError, match="retries"):
        d.map(make_where(), range(3))
    d.retries = 0
    more = d.map(make_where(), [0])
    assert more == [tids[-1] + 1]  # the refused map sent nothing
    assert client.get_task_result(more[0], block=True) == eids[1]


def test_parallel_decorator_on_two_functions(client):
    @client.parallel()
    def square(x):
        return x * x

    @client.parallel()
    def add(a, b):
        return a + b

    @client.parallel(block=False)
    def negate(x):
        return -x

    assert square([1, 2, 3]) == [1, 4, 9]
    assert add([1, 2], [10, 20]) == [11, 22]
    assert square(range(4)) == [0, 1, 4, 9]
    tids = negate([5, 6])
    assert all(isinstance(t, int) for t in tids)
    assert [client.get_task_result(t, block=True) for t in tids] == [-5, -6]
    assert square.__name__ == "square" and add.__name__ == "add"
    assert square.mapper is not add.mapper
    with pytest.raises(ValueError):
        add([1, 2], [1])


def test_parallel_decorator_keeps_its_options(client, eids):
    target = eids[0]

    @client.parallel(depend={"engineid": target})
    def pinned(x):
        import taskmill

        return taskmill.current_engine().engineid

    @client.parallel()
    def plain(x):
        return x + 1

    assert pinned(range(5)) == [target] * 5
    assert plain(range(3)) == [1, 2, 3]
