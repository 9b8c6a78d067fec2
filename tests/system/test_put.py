"""Values put once (issue 18 item 4, client/objects.py): `tc.put(obj)` stores `obj` once in
the controller's store and returns an ObjectRef; tasks that take it get the value; each engine
gets it once and keeps it for later tasks (counted: `statistics()["argument_bytes_out"]`);
`ref.release()` or `clear(ref.taskid)` drops it; it survives a controller restart."""

from __future__ import annotations

import asyncio

import pytest
from systest import alive_engine_ids, controller_process, poll

from taskmill import AsyncTaskClient, DependencyError, ObjectRef, SerializationError, TaskClient

pytestmark = pytest.mark.timeout(120, method="thread")


def nth(data, i):
    return data[i]


def length(data):
    return len(data)


def engine_of(_data):
    from taskmill import current_engine

    return current_engine().engineid


def test_a_put_value_goes_to_each_engine_once_however_many_tasks_take_it(client, eids):
    data = bytes(range(256)) * 20_000  # ~5 MB
    ref = client.put(data)
    assert isinstance(ref, ObjectRef) and ref.nbytes >= len(data)
    before = client.statistics()["argument_bytes_out"]
    futs = [client.submit(nth, ref, i) for i in range(40)]
    assert [f.result(timeout=60) for f in futs] == [data[i] for i in range(40)]
    ran_on = {client.submit(engine_of, ref).result(timeout=60) for _ in range(6)}
    sent = client.statistics()["argument_bytes_out"] - before
    # Each engine that ran one of them got it once: at most twice its size on 2 engines.
    assert sent <= len(eids) * ref.nbytes, (sent, ref.nbytes)
    assert sent >= ref.nbytes
    assert ran_on <= set(eids)
    ref.release()


def test_a_released_value_fails_the_tasks_that_take_it_with_dependency_error(client):
    ref = client.put([1, 2, 3])
    assert client.submit(length, ref).result(timeout=60) == 3
    ref.release()
    with pytest.raises(DependencyError):
        client.submit(length, ref).result(timeout=60)
    other = client.put("abc")
    assert client.clear([other.taskid]) == 1  # (the same, by its id)
    with pytest.raises(DependencyError) as ei:
        client.submit(length, other).result(timeout=60)
    # (It said "a future among its arguments": a seed program that calls clear() now and
    # then, as the seed advised, drops its put() values too, and was not told so.)
    assert "put() value" in str(ei.value) and "clear() with no ids" in str(ei.value)


def test_many_values_beyond_what_an_engine_keeps_each_arrive_right(client):
    """More values than an engine keeps (64): the oldest are forgotten, and sent again when
    a task takes them again."""
    refs = [client.put(f"value {i}" * 10) for i in range(80)]
    for _ in range(2):
        futs = [client.submit(length, r) for r in refs]
        assert [f.result(timeout=60) for f in futs] == [len(f"value {i}" * 10)
                                                       for i in range(80)]
    for r in refs:
        r.release()


def test_a_value_that_cannot_travel_is_refused_at_the_call(client):
    import threading

    with pytest.raises(SerializationError, match="cannot put"):
        client.put(threading.Lock())
    with pytest.raises(TypeError, match="cannot be pickled"):
        client.submit(length, [[client.put(1)]])


def test_a_put_value_survives_a_controller_restart(tmp_path):
    with controller_process(tmp_path, engines=1) as ctl:
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: alive_engine_ids(tc), what="the engine")
            ref = tc.put(list(range(1000)))
            assert tc.submit(length, ref).result(timeout=60) == 1000
            ctl.kill9()
            ctl.start()
            # The engine that kept it is new to the restarted controller: sent again.
            assert tc.submit(nth, ref, 999).result(timeout=60) == 999


def test_asyncio_put(cluster):
    async def main():
        async with AsyncTaskClient(cluster.connection_file) as atc:
            ref = await atc.put({"a": 1, "b": 2})
            n = await atc.submit(length, ref)
            await ref.release()
            return n

    assert asyncio.run(main()) == 2


def test_map_takes_refs_and_futures_as_elements(client):
    """(map sends its elements in chunks, one task for many: each element is looked through
    as a task's own arguments would be.)"""
    ref = client.put(list(range(100)))
    assert client.map(nth, [ref] * 6, range(6)) == list(range(6))
    futs = [client.submit(length, "a" * n) for n in (1, 2, 3)]
    assert client.map(length, [[f, f] for f in futs]) == [2, 2, 2]
    assert client.map(nth, [ref, ref], [7, 9], chunksize=2) == [7, 9]
    ref.release()


def test_tasks_cannot_change_a_put_array_for_the_tasks_after_them(client):
    """An engine's kept value is shared by the tasks that take it: a large array (its buffer
    travels out of band, not copied) is read-only; a small one is unpickled afresh for each
    task. Either way a later task reads the value as it was put."""
    import numpy as np

    def scribble(a):
        try:
            a[0] = 99.0
        except ValueError as e:
            return f"refused: {e}"
        return "changed"

    for size in (1_000_000, 100):
        ref = client.put(np.zeros(size))
        outcomes = [client.submit(scribble, ref).result(timeout=60) for _ in range(4)]
        if size > 1000:
            assert all(o.startswith("refused") for o in outcomes), outcomes
        sums = [client.submit(lambda a: float(a.sum()), ref).result(timeout=60)
                for _ in range(4)]
        assert sums == [0.0] * 4
        ref.release()


def test_a_value_too_large_for_one_message_is_refused_at_the_call(tmp_path):
    """(Against a controller with a 1 MB limit: the put raises, naming the limit, and nothing
    was stored; a value that fits goes in.)"""
    from systest import controller_thread

    with controller_thread(tmp_path, max_message=1_000_000) as small, \
            TaskClient(small.conn, timeout=10) as tc:
        with pytest.raises(ValueError, match="at most 1000000"):
            tc.put(b"x" * 2_000_000)
        assert tc.queue_status()["succeeded"] == 0
        ref = tc.put(b"x" * 100_000)
        assert tc.queue_status(verbose=True)["succeeded"] == [ref.taskid]
