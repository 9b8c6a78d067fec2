"""The seed API, where a task runs: depend, current_engine and engine properties.

The seed's blocking client (`TaskClient`, the seed's `BlockingTaskClient`) against a real
controller and real engines: the shared 2-engine `cluster` fixture, or a `taskmill.Cluster` of
a test's own where it needs engines of its own (properties, a lone engine to interrupt). The
rules these tests keep are in tests/system/conftest.py; the other verbs are in the other
test_seed_*.py files.
"""

from __future__ import annotations

import pytest
from systest import make_where

import taskmill
from taskmill import MapTask, StringTask

# The thread method always ends a hung test (see tests/system/conftest.py).
pytestmark = pytest.mark.timeout(120, method="thread")


# -- depend ----------------------------------------------------------------------------------
#
# Each test holds the target engine with a gate task first, so the other engine is idle when
# the dependent task is submitted: a depend that were ignored (or a raising callable counted as
# True) would put the task on the idle engine at once.


def _depend_lands_on_target(client, gate, eids, depend_for):
    target, other = eids
    gate.hold(target)
    gate.wait_started()
    tid = client.run(MapTask(make_where(), depend=depend_for(target)))
    # Tasks are scheduled past the waiting one.
    free = client.run(MapTask(make_where()))
    assert client.get_task_result(free, block=True) == other
    assert client.get_task_result(tid) is None
    assert tid in client.queue_status(verbose=True)["scheduled"]
    gate.release()
    assert client.get_task_result(tid, block=True) == target


def test_depend_dict(client, gate, eids):
    _depend_lands_on_target(client, gate, eids, lambda t: {"engineid": t})


def test_depend_callable(client, gate, eids):
    _depend_lands_on_target(client, gate, eids, lambda t: (lambda props: props["engineid"] == t))


@pytest.mark.parametrize("error", [RuntimeError, SystemExit, KeyboardInterrupt])
def test_depend_callable_that_raises_counts_as_false(client, gate, eids, error):
    """(SystemExit or KeyboardInterrupt from a depend ended the controller, and again at each
    restart on the same store: the stored task was judged again.)"""
    def depend_for(target):
        def only_target(props):
            if props["engineid"] != target:
                raise error("not this engine")
            return True

        return only_target

    _depend_lands_on_target(client, gate, eids, depend_for)


def test_depend_on_started_properties_and_the_hostname(client, eids):
    props = {e["engineid"]: e["properties"] for e in client.engines()}
    e = eids[1]
    depend = {"engineid": e, "hostname": props[e]["hostname"], "pid": props[e]["pid"]}
    assert client.run(MapTask(make_where(), depend=depend), block=True) == e


def test_unmet_depend_raises_task_timeout(client, eids):
    before = client.queue_status()
    tids = [
        client.run(StringTask("x = 1", pull="x", depend={"engineid": 10_000})),
        client.run(MapTask(abs, (-1,), depend={"no_such_property": True})),
        client.run(MapTask(abs, (-1,), depend=lambda props: False)),
        client.run(StringTask("x = 1", depend=lambda props: props["no_such_property"])),
    ]
    messages = []
    for tid in tids:
        with pytest.raises(taskmill.TaskTimeout) as ei:
            client.get_task_result(tid, block=True)
        messages.append(str(ei.value))
        with pytest.raises(taskmill.TaskTimeout):  # and again: it is the stored result
            client.get_task_result(tid)
    # A depend that raised says what (it was a bare "no engine satisfied its depend").
    assert "it raised KeyError: 'no_such_property'" in messages[-1], messages[-1]
    assert not any("it raised" in m for m in messages[:-1]), messages
    after = client.queue_status(verbose=True)
    assert set(tids) <= set(after["failed"])
    assert client.queue_status()["failed"] == before["failed"] + len(tids)


def test_unmet_depend_with_no_engine_registered_says_so():
    """With no engine registered at all, a task with a depend still fails after unmet_timeout
    (SPEC §2: every registered engine, none, is idle), but its message said "while every
    engine was idle" (probe G, item G): it says no engine is registered, and what to raise
    when engines take longer to start. A task without a depend waits for engines."""
    with taskmill.Cluster(0, heartbeat=0.5, unmet_timeout=0.5, dashboard=False) as c, \
            c.client() as tc:
        plain = tc.run(MapTask(abs, (-1,)))
        tid = tc.run(MapTask(abs, (-1,), depend={"gpu": 1}))
        with pytest.raises(taskmill.TaskTimeout) as ei:
            tc.get_task_result(tid, block=True, timeout=60)
        message = str(ei.value)
        assert "no engine is registered" in message and "every engine was idle" not in message
        assert "--unmet-timeout" in message
        assert tc.get_task_result(plain, block=False) is None  # (still waiting)


# -- current_engine and properties -----------------------------------------------------------


def test_current_engine_inside_a_task(client, eids):
    def describe():
        import taskmill

        eng = taskmill.current_engine()
        return eng.engineid, dict(eng.properties)

    table = {e["engineid"]: e for e in client.engines()}
    for e in eids:
        engineid, props = client.run(MapTask(describe, depend={"engineid": e}), block=True)
        assert engineid == e
        assert props["engineid"] == e
        assert props["pid"] == table[e]["pid"]
        assert props["hostname"] == table[e]["hostname"]


def test_current_engine_outside_an_engine_is_runtime_error():
    with pytest.raises(RuntimeError):
        taskmill.current_engine()


def test_engine_properties_depend_and_changes_by_task_code():
    props = [{"gpu": 1, "zone": "a"}, {"gpu": 0, "zone": "b"}]
    with taskmill.Cluster(2, heartbeat=0.5, unmet_timeout=1.0, engine_properties=props) as c, \
            c.client() as tc:
        table = {e["engineid"]: e for e in tc.engines()}
        gpu = next(eid for eid, e in table.items() if e["properties"]["gpu"] == 1)
        cpu = next(eid for eid, e in table.items() if e["properties"]["gpu"] == 0)
        assert table[gpu]["properties"]["zone"] == "a"

        def describe():
            import taskmill

            eng = taskmill.current_engine()
            return eng.engineid, dict(eng.properties)

        eid, seen = tc.run(MapTask(describe, depend={"gpu": 1}), block=True)
        assert eid == gpu
        assert seen["gpu"] == 1 and seen["zone"] == "a" and seen["engineid"] == gpu
        assert {"hostname", "pid"} <= set(seen)
        assert tc.run(MapTask(describe, depend=lambda p: p.get("zone") == "b"),
                      block=True)[0] == cpu

        def paint():
            import taskmill

            taskmill.current_engine().properties["color"] = "red"
            return taskmill.current_engine().engineid

        assert tc.run(MapTask(paint, depend={"gpu": 1}), block=True) == gpu
        table = {e["engineid"]: e for e in tc.engines()}
        assert table[gpu]["properties"]["color"] == "red"
        assert "color" not in table[cpu]["properties"]
        for _ in range(3):
            assert tc.run(MapTask(make_where(), depend={"color": "red"}), block=True) == gpu

        # clear_before restores the properties the engine was started with.
        tc.run(StringTask("pass", clear_before=True, depend={"gpu": 1}), block=True)
        table = {e["engineid"]: e for e in tc.engines()}
        assert "color" not in table[gpu]["properties"]
        assert table[gpu]["properties"]["gpu"] == 1
        with pytest.raises(taskmill.TaskTimeout):
            tc.run(MapTask(make_where(), depend={"color": "red"}), block=True)
