"""The seed API, the queue: queue_status and clear.

The seed's blocking client (`TaskClient`, the seed's `BlockingTaskClient`) against a real
controller and real engines: the shared 2-engine `cluster` fixture, or a `taskmill.Cluster` of
a test's own where it needs engines of its own (properties, a lone engine to interrupt). The
rules these tests keep are in tests/system/conftest.py; the other verbs are in the other
test_seed_*.py files.
"""

from __future__ import annotations

import pytest
from systest import UNKNOWN_TID, make_where

from taskmill import MapTask, StringTask

# The thread method always ends a hung test (see tests/system/conftest.py).
pytestmark = pytest.mark.timeout(120, method="thread")


# -- queue_status ----------------------------------------------------------------------------

KEYS = {"scheduled", "pending", "succeeded", "failed"}


def test_queue_status_counts_and_lists(client, gate, eids):
    before = client.queue_status()
    assert set(before) == KEYS
    assert before["scheduled"] == 0 and before["pending"] == 0
    assert all(isinstance(v, int) for v in before.values())

    held = gate.hold_all(eids)
    s_ok = client.run(StringTask("a = 1", clear_after=True))
    m_ok = client.run(MapTask(abs, (-1,)))
    s_bad = client.run(StringTask("1 / 0", clear_after=True))
    m_bad = client.run(MapTask(int, ("not a number",)))
    queued = [s_ok, m_ok, s_bad, m_bad]

    counts = client.queue_status()
    assert set(counts) == KEYS
    assert counts["scheduled"] == 4
    assert counts["pending"] == 2
    verbose = client.queue_status(verbose=True)
    assert set(verbose) == KEYS
    assert sorted(verbose["scheduled"]) == queued
    assert sorted(verbose["pending"]) == sorted(held)
    assert not set(queued + held) & set(verbose["succeeded"] + verbose["failed"])

    gate.release()
    client.barrier(queued + held)
    after = client.queue_status()
    assert after == {
        "scheduled": 0,
        "pending": 0,
        "succeeded": before["succeeded"] + 4,
        "failed": before["failed"] + 2,
    }
    verbose = client.queue_status(verbose=True)
    assert set(verbose) == KEYS
    assert verbose["scheduled"] == [] and verbose["pending"] == []
    assert {s_ok, m_ok, *held} <= set(verbose["succeeded"])
    assert {s_bad, m_bad} <= set(verbose["failed"])
    assert not {s_bad, m_bad} & set(verbose["succeeded"])
    assert len(verbose["succeeded"]) == after["succeeded"]
    assert len(verbose["failed"]) == after["failed"]


# -- clear -----------------------------------------------------------------------------------


def test_clear_one_id_a_list_and_missing_ids(client):
    tids = [client.run(MapTask(abs, (-i,))) for i in range(5)]
    client.barrier(tids)
    t0, t1, t2, t3, t4 = tids
    assert client.clear(t0) == 1
    with pytest.raises(IndexError):
        client.get_task_result(t0)
    assert client.clear([t1, t2]) == 2
    for t in (t1, t2):
        with pytest.raises(IndexError):
            client.get_task_result(t)
    with pytest.raises(KeyError) as ei:
        client.clear([t3, t0, UNKNOWN_TID])
    assert str(t0) in str(ei.value) and str(UNKNOWN_TID) in str(ei.value)
    with pytest.raises(IndexError):  # t3 was dropped although the call raised
        client.get_task_result(t3)
    assert client.clear([t4, t4]) == 1  # (named twice: one result, and no KeyError for it)
    with pytest.raises(KeyError):
        client.clear(t0)
    with pytest.raises(IndexError):
        client.abort(t0)  # a cleared task is unknown


def test_clear_names_many_missing_ids_in_short_and_refuses_what_is_not_taskids(client):
    """A KeyError for a million ids without results names them in short (it was a message of
    11 MB) and keeps them all in `missing`; the results among them are still dropped.
    Something that is neither a taskid nor a sequence of them is a TypeError saying so."""
    kept = client.run(MapTask(abs, (-1,)))
    client.barrier(kept)
    unknown = list(range(UNKNOWN_TID, UNKNOWN_TID + 1_000_000))
    with pytest.raises(KeyError) as ei:
        client.clear([kept, *unknown])
    assert len(str(ei.value)) < 500, len(str(ei.value))
    assert str(UNKNOWN_TID) in str(ei.value) and "1 other result(s) were cleared" in str(ei.value)
    assert ei.value.missing == unknown
    with pytest.raises(IndexError):
        client.get_task_result(kept)
    for bad in (5.0, object()):
        with pytest.raises(TypeError, match="taskids must be an int, a future, or a sequence"):
            client.clear(bad)


def test_clear_all_leaves_queued_and_running_tasks(client, gate, eids):
    e, other = eids
    running = gate.hold(e, value="still here")
    gate.wait_started()
    queued = client.run(MapTask(make_where(), depend={"engineid": e}))
    done = client.run(StringTask("1 / 0", clear_after=True, depend={"engineid": other}))
    client.barrier(done)
    status = client.queue_status()
    assert status["failed"] >= 1
    assert client.clear() == status["succeeded"] + status["failed"]
    assert client.queue_status() == {"scheduled": 1, "pending": 1, "succeeded": 0, "failed": 0}
    with pytest.raises(IndexError):
        client.get_task_result(done)
    with pytest.raises(KeyError) as ei:
        client.clear([running, queued])
    assert str(running) in str(ei.value) and str(queued) in str(ei.value)
    assert client.clear() == 0
    gate.release()
    assert client.get_task_result(running, block=True) == "still here"
    assert client.get_task_result(queued, block=True) == e
    assert client.clear([running, queued]) == 2
