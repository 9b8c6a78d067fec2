"""The seed API, waiting and stopping: abort, barrier and spin.

The seed's blocking client (`TaskClient`, the seed's `BlockingTaskClient`) against a real
controller and real engines: the shared 2-engine `cluster` fixture, or a `taskmill.Cluster` of
a test's own where it needs engines of its own (properties, a lone engine to interrupt). The
rules these tests keep are in tests/system/conftest.py; the other verbs are in the other
test_seed_*.py files.
"""

from __future__ import annotations

import time

import pytest
from systest import (
    UNKNOWN_TID,
    alive_engine_ids,
    make_blocker,
    make_logger,
    make_where,
    read_lines,
    wait_until,
)

import taskmill
from taskmill import MapTask, StringTask

# The thread method always ends a hung test (see tests/system/conftest.py).
pytestmark = pytest.mark.timeout(120, method="thread")


# -- abort -----------------------------------------------------------------------------------


def test_abort_queued_tasks(client, gate, eids, tmp_path):
    ran = tmp_path / "ran.log"
    gate.hold_all(eids)
    st = client.run(StringTask("open(p, 'a').write('s\\n')", push={"p": str(ran)},
                               clear_after=True))
    mt = client.run(MapTask(make_logger(fail=False), (str(ran), "m")))
    assert client.get_task_result(st) is None
    assert client.get_task_result(mt) is None
    scheduled = client.queue_status(verbose=True)["scheduled"]
    assert st in scheduled and mt in scheduled

    assert client.abort(st) is None
    assert client.abort(mt) is None
    for tid in (st, mt):
        with pytest.raises(taskmill.TaskAborted):
            client.get_task_result(tid)
        with pytest.raises(taskmill.TaskAborted):
            client.get_task_result(tid, block=True)
        with pytest.raises(IndexError) as ei:
            client.abort(tid)
        assert str(ei.value) == "Task Already Completed"
    status = client.queue_status(verbose=True)
    assert st in status["failed"] and mt in status["failed"]
    assert st not in status["scheduled"] and mt not in status["scheduled"]

    gate.release()
    client.barrier(gate.tids)
    assert [client.get_task_result(t) for t in gate.tids] == [f"held {e}" for e in eids]
    # Anything still queued would have run before these.
    for e in eids:
        client.run(StringTask("pass", depend={"engineid": e}), block=True)
    assert not ran.exists(), "an aborted task ran"


def test_abort_of_a_finished_task_is_index_error(client):
    tid = client.run(MapTask(abs, (-3,)))
    assert client.get_task_result(tid, block=True) == 3
    with pytest.raises(IndexError) as ei:
        client.abort(tid)
    assert str(ei.value) == "Task Already Completed"
    assert client.get_task_result(tid) == 3  # the result is still there

    failed = client.run(StringTask("1 / 0", clear_after=True))
    client.barrier(failed)
    with pytest.raises(IndexError, match="Task Already Completed"):
        client.abort(failed)


def test_abort_of_an_unknown_task_is_index_error(client):
    with pytest.raises(IndexError):
        client.abort(UNKNOWN_TID)


def test_abort_of_a_running_task_interrupts_it_and_the_engine_survives(tmp_path):
    started, release = tmp_path / "started", tmp_path / "never-created"
    attempts, rescued = tmp_path / "attempts.log", tmp_path / "rescued.log"
    with taskmill.Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        (engine,) = tc.engines()
        rescue = MapTask(make_logger(fail=False), (str(rescued), "rescue"))
        blocker = make_blocker()

        def run_and_block(log, started, release):
            with open(log, "a") as f:
                f.write("x\n")
            return blocker(started, release)

        tid = tc.run(MapTask(run_and_block, (str(attempts), str(started), str(release)),
                             retries=2, recovery_task=rescue))
        wait_until(started.exists, "the task to start")
        assert tc.queue_status(verbose=True)["pending"] == [tid]
        tc.abort(tid)
        with pytest.raises(taskmill.TaskAborted):
            tc.get_task_result(tid, block=True)
        # Same engine, same process, still serving; no retry and no recovery ran.
        assert tc.run(MapTask(make_where()), block=True) == engine["engineid"]
        assert alive_engine_ids(tc) == [engine["engineid"]]
        assert c.engine_pids == {engine["engineid"]: engine["pid"]}
        assert read_lines(attempts) == ["x"]
        assert not rescued.exists()


# -- barrier and spin ------------------------------------------------------------------------


def test_barrier_on_an_int_and_a_list(client):
    def slow(x):

        time.sleep(0.2)
        return x

    one = client.run(MapTask(slow, (1,)))
    assert client.barrier(one) is None
    assert client.get_task_result(one) == 1

    ok = [client.run(MapTask(slow, (i,))) for i in range(4)]
    bad_map = client.run(MapTask(make_logger(), ("/nonexistent-dir/x.log",)))
    bad_string = client.run(StringTask("import time; time.sleep(0.2); 1 / 0", clear_after=True))
    assert client.barrier([*ok, bad_map, bad_string, UNKNOWN_TID]) is None
    assert [client.get_task_result(t) for t in ok] == [0, 1, 2, 3]
    with pytest.raises(OSError):
        client.get_task_result(bad_map)
    assert isinstance(client.get_task_result(bad_string).failure, ZeroDivisionError)
    assert client.barrier(tuple(ok)) is None
    assert client.barrier([]) is None
    assert client.barrier(UNKNOWN_TID) is None


def test_spin_returns_a_bool(client):
    result = client.spin()
    assert result is False  # nothing is waiting, so nothing is dispatched
    tid = client.run(MapTask(abs, (-2,)))
    assert isinstance(client.spin(), bool)
    assert client.get_task_result(tid, block=True) == 2
    assert client.spin() is False
