"""The seed API, running a task: run, get_task_result, TaskResult, and the engine namespace
a task runs in.

The seed's blocking client (`TaskClient`, the seed's `BlockingTaskClient`) against a real
controller and real engines: the shared 2-engine `cluster` fixture, or a `taskmill.Cluster` of
a test's own where it needs engines of its own (properties, a lone engine to interrupt). The
rules these tests keep are in tests/system/conftest.py; the other verbs are in the other
test_seed_*.py files.
"""

from __future__ import annotations

import time

import pytest
from systest import TIME_FORMAT, UNKNOWN_TID

import taskmill
from taskmill import MapTask, StringTask, TaskResult

# The thread method always ends a hung test (see tests/system/conftest.py).
pytestmark = pytest.mark.timeout(120, method="thread")


# -- run / get_task_result / TaskResult ------------------------------------------------------


@pytest.mark.parametrize(
    "pull, expected",
    [
        (None, {}),
        ("a", {"a": 1}),
        (["a", "b"], {"a": 1, "b": [2, 3]}),
        (("b", "c"), {"b": [2, 3], "c": "three"}),
    ],
)
def test_pull_forms(client, pull, expected):
    task = StringTask("a = 1; b = [2, 3]; c = 'three'", pull=pull, clear_after=True)
    tr = client.run(task, block=True)
    assert isinstance(tr, TaskResult)
    assert tr.failure is None
    assert tr.results == expected
    assert tr.keys == list(expected)


def test_pushed_values_are_usable_by_the_code(client):
    payload = bytes(range(256)) * 1000
    task = StringTask(
        "total = a + sum(b); size = len(blob); first = d['k'][0]",
        pull=["total", "size", "first"],
        push={"a": 10, "b": [1, 2, 3], "blob": payload, "d": {"k": ("x", "y")}},
        clear_after=True,
    )
    tr = client.run(task, block=True)
    assert tr.failure is None
    assert tr.results == {"total": 16, "size": len(payload), "first": "x"}


def test_pushed_values_can_be_pulled_back(client):
    value = {"nested": [1, {"two": 2.0}], "t": (None, True)}
    tr = client.run(StringTask("pass", pull="v", push={"v": value}, clear_after=True), block=True)
    assert tr.results == {"v": value}


def test_missing_pulled_name_fails_with_name_error(client):
    tid = client.run(StringTask("present = 1", pull=["present", "absent_name"], clear_after=True))
    tr = client.get_task_result(tid, block=True)  # carried, not raised
    assert isinstance(tr, TaskResult)
    assert isinstance(tr.failure, NameError)
    assert "absent_name" in str(tr.failure)
    assert tr.taskid == tid
    with pytest.raises(NameError):
        tr.raise_exception()
    with pytest.raises(NameError):
        tr.ns  # noqa: B018 - the attribute access is the test
    with pytest.raises(NameError):
        tr["present"]
    assert repr(tr).startswith(f"TaskResult[ID:{tid}]:")
    assert "absent_name" in repr(tr)


def test_task_result_fields(client, eids):
    code = "import sys; print('hello'); print('oops', file=sys.stderr); y = 6 * 7"
    tid = client.run(StringTask(code, pull="y", clear_after=True))
    tr = client.get_task_result(tid, block=True)
    assert isinstance(tr, TaskResult)
    assert tr.results == {"y": 42}
    assert tr.keys == ["y"]
    assert tr.failure is None
    assert tr.taskid == tid
    assert tr.engineid in eids
    assert tr.attempts == 1
    assert tr.stdout == "hello\n"
    assert tr.stderr == "oops\n"

    submitted = time.strptime(tr.submitted, TIME_FORMAT)
    completed = time.strptime(tr.completed, TIME_FORMAT)
    assert time.mktime(submitted) <= time.mktime(completed)
    # Local time, not UTC: the stamps are within the hour around now (a sanity bound, not timing).
    assert abs(time.mktime(completed) - time.time()) < 3600
    assert isinstance(tr.duration, float)
    assert tr.duration >= 0.0

    ns = tr.ns
    assert isinstance(ns, taskmill.ResultNS)
    assert ns.y == 42
    assert ns["y"] == 42  # item access too, as the seed's ResultNS
    assert "y" in ns and "not_pulled" not in ns
    assert repr(ns) == "NS{'y': 42}"
    with pytest.raises(KeyError):
        ns["not_pulled"]
    with pytest.raises(AttributeError):
        ns.y = 1
    with pytest.raises(AttributeError):
        ns.not_pulled  # noqa: B018
    with pytest.raises(AttributeError):
        tr.ns = None
    assert tr["y"] == 42
    with pytest.raises(KeyError):
        tr["not_pulled"]
    assert tr.raise_exception() is None
    assert repr(tr) == f"TaskResult[ID:{tid}]:{{'y': 42}}"


def test_failed_task_result_carries_the_remote_exception(client, eids):
    tid = client.run(StringTask("x = 1\nzz = x / 0", pull="zz", clear_after=True))
    tr = client.get_task_result(tid, block=True)
    assert isinstance(tr.failure, ZeroDivisionError)
    assert tr.results == {}
    assert tr.failure.taskid == tid
    assert tr.failure.engineid == tr.engineid
    assert tr.engineid in eids
    assert "ZeroDivisionError" in tr.failure.remote_traceback
    assert "zz = x / 0" in tr.failure.remote_traceback
    assert tr.failure.remote_traceback in str(tr.failure.__cause__)
    with pytest.raises(ZeroDivisionError):
        tr.ns  # noqa: B018
    with pytest.raises(ZeroDivisionError):
        tr["zz"]
    with pytest.raises(ZeroDivisionError):
        tr.raise_exception()
    assert repr(tr).startswith(f"TaskResult[ID:{tid}]:")
    assert "division" in repr(tr)


def test_run_returns_consecutive_int_ids_and_does_not_mutate_the_task(client):
    task = MapTask(len, (["a", "b"],))
    before = dict(vars(task))
    t1 = client.run(task)
    t2 = client.run(task)
    assert isinstance(t1, int) and not isinstance(t1, bool)
    assert t2 == t1 + 1
    assert vars(task) == before
    assert client.get_task_result(t1, block=True) == 2
    assert client.get_task_result(t2, block=True) == 2


def test_taskids_start_at_zero_on_a_fresh_controller():
    with taskmill.Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        tids = [tc.run(MapTask(abs, (-i,))) for i in range(3)]
        assert tids == [0, 1, 2]
        assert [tc.get_task_result(t, block=True) for t in tids] == [0, 1, 2]


def test_get_task_result_none_while_unfinished(client, gate, eids):
    gate.hold_all(eids)
    tid = client.run(MapTask(abs, (-5,)))
    st = client.run(StringTask("q = 1", pull="q", clear_after=True))
    assert client.get_task_result(tid) is None
    assert client.get_task_result(st, block=False) is None
    gate.release()
    assert client.get_task_result(tid, block=True) == 5
    assert client.get_task_result(st, block=True).results == {"q": 1}


def test_get_task_result_of_an_unknown_id_is_index_error(client):
    with pytest.raises(IndexError):
        client.get_task_result(UNKNOWN_TID)
    with pytest.raises(IndexError):
        client.get_task_result(UNKNOWN_TID, block=True)


# -- the namespace ---------------------------------------------------------------------------


def test_namespace_persists_between_tasks_on_one_engine(client, eids, engine_names):
    e, other = eids
    engine_names += ["tm_counter", "tm_pushed"]
    pin = {"engineid": e}
    client.run(StringTask("tm_counter = 41", depend=pin), block=True).raise_exception()
    client.run(StringTask("pass", push={"tm_pushed": "kept"}, depend=pin),
               block=True).raise_exception()
    tr = client.run(StringTask("tm_counter += 1", pull=["tm_counter", "tm_pushed"], depend=pin),
                    block=True)
    assert tr.failure is None
    assert tr.engineid == e
    assert tr.results == {"tm_counter": 42, "tm_pushed": "kept"}
    # The other engine has a namespace of its own.
    tr = client.run(StringTask("pass", pull="tm_counter", depend={"engineid": other}), block=True)
    assert tr.engineid == other
    assert isinstance(tr.failure, NameError)
    # Every namespace holds its engine's id.
    for k in eids:
        tr = client.run(StringTask("pass", pull="engineid", depend={"engineid": k}), block=True)
        assert tr.results == {"engineid": k}


def test_clear_before_resets_the_namespace(client, eids, engine_names):
    e = eids[0]
    pin = {"engineid": e}
    engine_names.append("tm_stale")
    client.run(StringTask("tm_stale = 'old'", depend=pin), block=True).raise_exception()
    tr = client.run(StringTask("pass", pull="tm_stale", depend=pin), block=True)
    assert tr.results == {"tm_stale": "old"}
    tr = client.run(StringTask("pass", pull="tm_stale", depend=pin, clear_before=True),
                    block=True)
    assert isinstance(tr.failure, NameError)
    # The reset keeps `engineid`, and pushed values arrive after the reset.
    tr = client.run(StringTask("s = engineid + v", pull="s", push={"v": 100}, depend=pin,
                               clear_before=True, clear_after=True), block=True)
    assert tr.results == {"s": e + 100}


def test_clear_after_runs_even_when_the_task_failed(client, eids, engine_names):
    e = eids[1]
    pin = {"engineid": e}
    engine_names += ["tm_left_ok", "tm_left_failed", "tm_pushed_ok"]
    tr = client.run(StringTask("tm_left_failed = 1; 1 / 0", depend=pin, clear_after=True),
                    block=True)
    assert isinstance(tr.failure, ZeroDivisionError)
    tr = client.run(StringTask("pass", pull="tm_left_failed", depend=pin), block=True)
    assert tr.engineid == e
    assert isinstance(tr.failure, NameError), "tm_left_failed survived clear_after"
    tr = client.run(StringTask("tm_left_ok = 2", pull="tm_left_ok",
                               push={"tm_pushed_ok": 3}, depend=pin, clear_after=True),
                    block=True)
    assert tr.results == {"tm_left_ok": 2}
    for name in ("tm_left_ok", "tm_pushed_ok"):
        tr = client.run(StringTask("pass", pull=name, depend=pin), block=True)
        assert tr.engineid == e
        assert isinstance(tr.failure, NameError), f"{name} survived clear_after"
