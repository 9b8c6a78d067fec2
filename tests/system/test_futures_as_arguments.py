"""Futures as task arguments (issue 18 item 3, arguments.py): a TaskFuture at the top level of
a task's args/kwargs, or directly inside a list, tuple or dict there, is replaced on the engine
by its task's result; the task waits for it, and fails with DependencyError when it failed or
its result was cleared before it ran. The value goes from the store to the engine: the client
never fetches it."""

from __future__ import annotations

import pytest

from taskmill import DependencyError, MapTask

pytestmark = pytest.mark.timeout(120, method="thread")


def make(n):
    return list(range(n))


def total(xs, k=0):
    return sum(xs) + k


def pair(a, b, *, c=None):
    return (a, b, c)


def boom():
    raise ValueError("boom")


def big(n):
    return b"x" * n


def test_a_future_as_an_argument_is_its_result_on_the_engine(client):
    a = client.submit(make, 10)
    assert client.submit(total, a).result(timeout=60) == 45
    assert client.submit(total, a, k=client.submit(len, "abc")).result(timeout=60) == 48


def test_futures_directly_inside_a_list_tuple_or_dict_are_replaced_too(client):
    a, b = client.submit(make, 3), client.submit(len, "four")
    got = client.submit(pair, [a, 1], (b, a), c={"x": b, "y": 2}).result(timeout=60)
    assert got == ([[0, 1, 2], 1], (4, [0, 1, 2]), {"x": 4, "y": 2})


def test_the_task_waits_for_the_future_it_takes(client, gate, eids):
    """(Both engines are held: the argument's task cannot run yet, so neither can the one
    that takes it; the implied `after` shows in the task's story as waiting.)"""
    gate.hold_all(eids)
    a = client.submit(make, 4)
    b = client.submit(total, a)
    assert client.task_info(b.taskid)["story"][0]["to"] == "waiting"
    gate.release()
    assert b.result(timeout=60) == 6


def test_the_seed_run_and_a_none_result_work_as_arguments(client):
    n = client.submit(lambda: None)
    tid = client.run(MapTask(lambda v: v is None, (n,)))
    assert client.get_task_result(tid, block=True) is True


def test_a_failed_future_fails_the_task_with_dependency_error(client):
    b = client.submit(boom)
    with pytest.raises(DependencyError):
        client.submit(total, b).result(timeout=60)


def test_a_result_cleared_before_the_task_ran_fails_it_with_dependency_error(client, gate,
                                                                            eids):
    """(The task also waits for a held one, so its argument's result is cleared first.)"""
    held = gate.hold(eids[0])
    gate.wait_started()
    a = client.submit(make, 5)
    assert a.result(timeout=60) == [0, 1, 2, 3, 4]
    tid = client.run(MapTask(total, (a,), after=[held]))
    assert client.clear([a.taskid]) == 1
    gate.release()
    with pytest.raises(DependencyError, match="cleared before it ran"):
        client.get_task_result(tid, block=True)


def test_the_value_travels_from_the_store_not_through_the_client(client):
    """A 2 MB result as an argument: the task the client sends stays small (a placeholder),
    and the engine gets the value."""
    a = client.submit(big, 2_000_000)
    encoded = client.backend.encode(MapTask(len, (a,)))
    assert encoded.size < 10_000
    assert client.submit(len, a).result(timeout=60) == 2_000_000


def test_a_future_nested_deeper_raises_at_the_call_saying_where_futures_may_go(client):
    a = client.submit(make, 2)
    with pytest.raises(Exception, match="top level of its arguments"):
        client.submit(total, [[a]])


def test_an_async_future_as_an_argument(cluster):
    import asyncio

    from taskmill import AsyncTaskClient

    async def main():
        async with AsyncTaskClient(cluster.connection_file) as atc:
            a = atc.submit(make, 6)
            return await atc.submit(total, a, k=atc.submit(len, "xyz"))

    assert asyncio.run(main()) == 18
