"""The seed API, when a task fails: retries and recovery tasks.

The seed's blocking client (`TaskClient`, the seed's `BlockingTaskClient`) against a real
controller and real engines: the shared 2-engine `cluster` fixture, or a `taskmill.Cluster` of
a test's own where it needs engines of its own (properties, a lone engine to interrupt). The
rules these tests keep are in tests/system/conftest.py; the other verbs are in the other
test_seed_*.py files.
"""

from __future__ import annotations

import textwrap

import pytest
from systest import make_logger, read_lines

from taskmill import MapTask, StringTask, TaskResult

# The thread method always ends a hung test (see tests/system/conftest.py).
pytestmark = pytest.mark.timeout(120, method="thread")


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_stringtask_retries_are_counted_exactly(client, tmp_path, retries):
    log = tmp_path / "attempts.log"
    code = "open(log_path, 'a').write('x\\n')\nraise ValueError('always fails')"
    tr = client.run(StringTask(code, push={"log_path": str(log)}, retries=retries,
                               clear_after=True), block=True)
    assert isinstance(tr.failure, ValueError)
    assert str(tr.failure) == "always fails"
    assert tr.attempts == 1 + retries
    assert read_lines(log) == ["x"] * (1 + retries)


@pytest.mark.parametrize("retries", [0, 2])
def test_maptask_retries_are_counted_exactly(client, tmp_path, retries):
    log = tmp_path / "attempts.log"
    tid = client.run(MapTask(make_logger(), (str(log), "x"), retries=retries))
    with pytest.raises(ValueError, match="attempt failed"):
        client.get_task_result(tid, block=True)
    assert read_lines(log) == ["x"] * (1 + retries)


def test_a_retry_that_succeeds_gives_the_result(client, tmp_path):
    log = tmp_path / "attempts.log"
    code = textwrap.dedent("""\
        with open(log_path, 'a') as f:
            f.write('x\\n')
        with open(log_path) as f:
            n = len(f.readlines())
        if n < 3:
            raise RuntimeError(f'attempt {n} fails')
        """)
    tr = client.run(StringTask(code, pull="n", push={"log_path": str(log)}, retries=5,
                               clear_after=True), block=True)
    assert tr.failure is None
    assert tr.results == {"n": 3}
    assert tr.attempts == 3
    assert read_lines(log) == ["x"] * 3


def test_a_retry_goes_to_another_engine_when_one_is_idle(client, tmp_path, eids):
    log = tmp_path / "engines.log"
    tid = client.run(MapTask(make_logger(), (str(log),), retries=1))
    with pytest.raises(ValueError) as ei:
        client.get_task_result(tid, block=True)
    first, second = (int(x) for x in read_lines(log))
    assert {first, second} == set(eids)
    assert ei.value.engineid == second


def test_stringtask_retry_goes_to_another_engine(client, tmp_path, eids):
    log = tmp_path / "engines.log"
    code = "open(log_path, 'a').write(f'{engineid}\\n')\nraise KeyError('k')"
    tr = client.run(StringTask(code, push={"log_path": str(log)}, retries=1, clear_after=True),
                    block=True)
    assert isinstance(tr.failure, KeyError)
    first, second = (int(x) for x in read_lines(log))
    assert {first, second} == set(eids)
    assert tr.engineid == second
    assert tr.attempts == 2


# -- recovery tasks --------------------------------------------------------------------------


def test_recovery_task_result_is_the_stringtask_result(client, tmp_path):
    log = tmp_path / "chain.log"
    recovery = StringTask("open(log_path, 'a').write('B\\n'); r = 'recovered'", pull="r",
                          push={"log_path": str(log)}, clear_after=True)
    task = StringTask("open(log_path, 'a').write('A\\n'); 1 / 0", push={"log_path": str(log)},
                      retries=1, recovery_task=recovery, clear_after=True)
    tid = client.run(task)
    tr = client.get_task_result(tid, block=True)
    assert isinstance(tr, TaskResult)
    assert tr.taskid == tid
    assert tr.failure is None
    assert tr.results == {"r": "recovered"}
    assert read_lines(log) == ["A", "A", "B"]
    assert task.recovery_task is recovery  # submitting did not rewire the chain


def test_recovery_task_result_is_the_maptask_result(client, tmp_path):
    log = tmp_path / "chain.log"
    rescue = MapTask(make_logger(fail=False), (str(log), "B"))
    task = MapTask(make_logger(), (str(log), "A"), recovery_task=rescue)
    tid = client.run(task)
    assert client.get_task_result(tid, block=True) == "B"
    assert read_lines(log) == ["A", "B"]
    # The recovery's own taskid is never handed out: the next task gets the next id.
    nxt = client.run(MapTask(abs, (-1,)))
    assert nxt == tid + 1
    assert client.get_task_result(nxt, block=True) == 1


def test_failed_recovery_gives_the_recovery_failure(client, tmp_path):
    log = tmp_path / "chain.log"
    rescue = MapTask(make_logger(message="rescue failed"), (str(log), "B"))
    task = MapTask(make_logger(message="first failed"), (str(log), "A"), recovery_task=rescue)
    with pytest.raises(ValueError, match="rescue failed"):
        client.run(task, block=True)
    assert read_lines(log) == ["A", "B"]


def test_recovery_loop_a_b_a_runs_each_once_maptask(client, tmp_path):
    log = tmp_path / "chain.log"
    a = MapTask(make_logger(message="A failed"), (str(log), "A"))
    b = MapTask(make_logger(message="B failed"), (str(log), "B"), recovery_task=a)
    a.recovery_task = b
    tid = client.run(a)
    with pytest.raises(ValueError, match="B failed"):
        client.get_task_result(tid, block=True)
    assert read_lines(log) == ["A", "B"]


def test_recovery_loop_a_b_a_runs_each_once_stringtask(client, tmp_path):
    log = tmp_path / "chain.log"
    push = {"log_path": str(log)}
    a = StringTask("open(log_path, 'a').write('A\\n'); raise ValueError('A failed')", push=push,
                   clear_after=True)
    b = StringTask("open(log_path, 'a').write('B\\n'); raise ValueError('B failed')", push=push,
                   recovery_task=a, clear_after=True)
    a.recovery_task = b
    tr = client.run(a, block=True)
    assert isinstance(tr.failure, ValueError)
    assert str(tr.failure) == "B failed"
    assert read_lines(log) == ["A", "B"]


def test_a_task_that_is_its_own_recovery_runs_twice(client, tmp_path):
    log = tmp_path / "chain.log"
    a = MapTask(make_logger(), (str(log), "A"))
    a.recovery_task = a
    with pytest.raises(ValueError):
        client.run(a, block=True)
    assert read_lines(log) == ["A", "A"]
