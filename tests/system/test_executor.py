"""System tests of `tc.executor()`, the `concurrent.futures.Executor` over the blocking client.

They check what CPython's own executor tests (Lib/test/test_concurrent_futures) check of an
executor: map's order, several iterables, laziness and `timeout`; exceptions propagating;
`shutdown` (submit after it, `cancel_futures`, `wait`), the context manager, `as_completed` and
`wait` with its futures; `chunksize`; and that a ProcessPoolExecutor program gives the same
results with `tc.executor()` in its place.

They run on the shared 2-engine `cluster` and leave it as they found it: every task that holds
an engine waits for the `gate` fixture's release file, which the fixture creates at teardown.
Nothing sleeps to wait; conditions are polled with a deadline.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp

import pytest
from systest import wait_until

import taskmill
from taskmill import TaskExecutor

# A blocking wait sits in a lock acquire that SIGALRM does not interrupt: use the thread method.
pytestmark = pytest.mark.timeout(180, method="thread")


# -- functions run on the engines (conftest ships this module by value) -----------------------
def hold(release, value, started=None):
    """Mark `started` (if given), wait (bounded) until `release` exists, return `value`."""
    import os
    import time

    if started is not None:
        open(started, "w").close()
    end = time.monotonic() + 90.0
    while not os.path.exists(release):
        if time.monotonic() > end:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.01)
    return value


def hold_item(x, release, marks):
    """Item 1 waits for `release`; the others leave a mark file and return at once."""
    if x == 1:
        return hold(release, x)
    open(f"{marks}/done-{x}", "w").close()
    return x


def hold_unless_first(x, release):
    return x if x == 0 else hold(release, x)


def divide(a, b):
    return a / b


def square(x):
    return x * x


def collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def engine_id():
    from taskmill import current_engine

    return current_engine().engineid


def active(tc) -> int:
    status = tc.queue_status()
    return status["scheduled"] + status["pending"]


# -- the executor -----------------------------------------------------------------------------
def test_executor_is_a_concurrent_futures_executor(client):
    ex = client.executor()
    assert isinstance(ex, cf.Executor)
    assert isinstance(ex, TaskExecutor) and taskmill.TaskExecutor is TaskExecutor
    fut = ex.submit(divide, 6, b=3)  # keywords go to the function
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=60) == 2.0
    ex.shutdown()


def test_map_order_and_several_iterables(client):
    with client.executor() as ex:
        assert list(ex.map(square, range(30))) == [x * x for x in range(30)]
        # several iterables, to the shortest (as the builtin map and Executor.map)
        assert list(ex.map(pow, [2, 3, 4], [5, 6, 7, 8])) == [32, 729, 16384]
        assert list(ex.map(square, [])) == []


def test_map_submits_everything_at_once_and_yields_lazily(client, gate):
    marks = gate.folder
    with client.executor() as ex:
        it = ex.map(hold_item, [0, 1, 2], [str(gate.release_file)] * 3, [str(marks)] * 3)
        # Every item was sent at the call, before anything is asked of the iterator...
        wait_until(lambda: (marks / "done-2").exists(), "item 2 to run before iterating")
        # ...and the first result comes while item 1 is still held.
        assert next(it) == 0
        assert not gate.release_file.exists()
        gate.release()
        assert list(it) == [1, 2]


def test_map_timeout_raises_timeout_error_and_aborts_the_rest(client, gate):
    before = active(client)
    with client.executor() as ex:
        it = ex.map(hold_unless_first, range(4), [str(gate.release_file)] * 4, timeout=1.0)
        assert next(it) == 0
        with pytest.raises(TimeoutError):
            next(it)
        # the items still out were aborted (their results could reach nobody)
        wait_until(lambda: active(client) <= before, "the rest of the map to be aborted")
        with pytest.raises(StopIteration):
            next(it)


def test_closing_the_map_early_aborts_what_is_still_out(client, gate):
    before = active(client)
    with client.executor() as ex:
        it = ex.map(hold_unless_first, range(6), [str(gate.release_file)] * 6)
        assert next(it) == 0
        it.close()
        wait_until(lambda: active(client) <= before, "the rest of the map to be aborted")


@pytest.mark.parametrize("chunksize", [1, 2])
def test_exceptions_propagate(client, chunksize):
    with client.executor() as ex:
        it = ex.map(divide, [1, 2, 3, 4], [1, 1, 0, 1], chunksize=chunksize)
        assert next(it) == 1.0
        assert next(it) == 2.0
        with pytest.raises(ZeroDivisionError):
            next(it)
        fut = ex.submit(divide, 1, 0)
        assert isinstance(fut.exception(timeout=60), ZeroDivisionError)
        with pytest.raises(ZeroDivisionError):
            fut.result()


def test_chunksize_sends_one_task_per_chunk(client):
    before = client.queue_status()["succeeded"]
    with client.executor() as ex:
        assert list(ex.map(square, range(50), chunksize=7)) == [x * x for x in range(50)]
        assert list(ex.map(pow, range(5), range(9), chunksize=3)) == [pow(x, x) for x in range(5)]
    assert client.queue_status()["succeeded"] - before == math.ceil(50 / 7) + math.ceil(5 / 3)
    with client.executor() as ex:
        for bad in (0, -1, None, 1.5):
            with pytest.raises(ValueError):
                ex.map(square, range(3), chunksize=bad)


def test_submit_after_shutdown_raises_and_the_client_stays_open(client):
    ex = client.executor()
    assert ex.submit(square, 3).result(timeout=60) == 9
    ex.shutdown()
    for call in (lambda: ex.submit(square, 3), lambda: ex.map(square, [1]),
                 lambda: ex.map(square, [1, 2], chunksize=2)):
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            call()
    ex.shutdown()  # twice is harmless
    assert client.submit(square, 4).result(timeout=60) == 16  # the client was not closed
    with client.executor() as again:
        assert again.submit(square, 5).result(timeout=60) == 25


def test_context_manager_exit_waits_for_the_futures(client):
    with client.executor() as ex:
        futs = [ex.submit(collatz_steps, n) for n in range(1, 41)]
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == [collatz_steps(n) for n in range(1, 41)]
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_shutdown_without_wait_returns_at_once(client, gate):
    ex = client.executor()
    fut = ex.submit(hold, str(gate.release_file), "done")
    ex.shutdown(wait=False)
    assert not fut.done()
    gate.release()
    assert fut.result(timeout=60) == "done"


def test_shutdown_cancel_futures_cancels_what_had_not_started(client, gate, eids):
    gate.hold_all(eids)  # both engines busy: what the executor submits waits in the controller
    ex = client.executor()
    futs = [ex.submit(square, x) for x in range(8)]
    ex.shutdown(wait=True, cancel_futures=True)  # returns: nothing of its own was running
    assert all(f.cancelled() for f in futs)
    with pytest.raises(cf.CancelledError):
        futs[0].result()
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_shutdown_cancel_futures_leaves_a_started_task_running(client, gate, eids):
    # Every task of this executor goes to engine eids[1]: the first holds it.
    ex = client.executor(depend={"engineid": eids[1]})
    started = gate.folder / "started-running"
    running = ex.submit(hold, str(gate.release_file), "finished", str(started))
    wait_until(started.exists, "the executor's first task to start")
    wait_until(lambda: all(e["capacity"] == 1 for e in client.engines()
                           if e["engineid"] == eids[1]), "the engine to take one task at a time")
    waiting = [ex.submit(square, x) for x in range(4)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in waiting)
    assert not running.cancelled() and not running.done()
    gate.release()
    ex.shutdown(wait=True)
    assert running.result() == "finished"


def test_task_options_go_on_every_task(client, eids):
    with client.executor(depend={"engineid": eids[1]}) as ex:
        assert set(ex.map(lambda _: engine_id(), range(6))) == {eids[1]}
        assert set(ex.map(lambda _: engine_id(), range(6), chunksize=2)) == {eids[1]}
        assert ex.submit(engine_id).result(timeout=60) == eids[1]
    with pytest.raises(TypeError):
        client.executor(no_such_option=1)


def test_as_completed_and_wait_with_its_futures(client, gate):
    with client.executor() as ex:
        quick = ex.submit(divide, 6, 2)
        failing = ex.submit(divide, 1, 0)
        held = ex.submit(hold, str(gate.release_file), "held")
        # No timeout: it returns at the failure (else only when `held` gives up, after 90 s).
        done, not_done = cf.wait([quick, failing, held], return_when=cf.FIRST_EXCEPTION)
        assert failing in done and held in not_done
        assert isinstance(failing.exception(), ZeroDivisionError)
        finished = set(cf.as_completed([quick, failing], timeout=60))
        assert finished == {quick, failing}
        with pytest.raises(TimeoutError):
            list(cf.as_completed([held], timeout=0.5))
        gate.release()
        assert list(cf.as_completed([held], timeout=60)) == [held]
        done, not_done = cf.wait([quick, failing, held], timeout=60)
        assert done == {quick, failing, held} and not not_done


def run_program(executor):
    """A program written for ProcessPoolExecutor: submit, as_completed, map, chunked map."""
    with executor as ex:
        futs = {ex.submit(collatz_steps, n): n for n in range(1, 30)}
        by_n = {futs[f]: f.result() for f in cf.as_completed(futs)}
        mapped = list(ex.map(collatz_steps, range(1, 200)))
        chunked = list(ex.map(divide, range(40), range(1, 41), chunksize=6))
    return by_n, mapped, chunked


def test_a_process_pool_program_switches_by_one_line(client):
    # (spawn: this process has threads, the client's and zmq's, which fork does not carry)
    expected = run_program(cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")))
    assert run_program(client.executor()) == expected


def test_shutdown_without_wait_does_not_wait_for_a_stalled_controller(tmp_path, caplog):
    """shutdown(wait=False, cancel_futures=True) asked the controller which tasks had not
    started, then cancelled them one by one, each waiting for its answer: with the controller
    stopped it returned only once it resumed (up to timeout + reconnect_timeout, then raised).
    It waits only while the controller is heard now, names the cancels it has not confirmed,
    and carries them out once the controller answers. The watchdog resumes the controller
    after 40 s: the old code returns only then."""
    import logging

    from systest import controller_process, poll, stalled

    from taskmill.errors import ids_text

    release, started = tmp_path / "release", tmp_path / "started"
    with controller_process(tmp_path, engines=1) as ctl, \
            taskmill.TaskClient(ctl.conn, timeout=30, reconnect_timeout=90) as tc:
        ex = tc.executor()
        running = ex.submit(hold, str(release), "finished", str(started))
        poll(started.exists, 60, "the first task to start")
        waiting = [ex.submit(square, x) for x in range(4)]  # (the one engine is busy)
        tids = [f.taskid for f in waiting]
        try:
            with stalled(ctl.proc) as resumed, \
                    caplog.at_level(logging.WARNING, logger="taskmill.client"):
                ex.shutdown(wait=False, cancel_futures=True)
                assert not resumed.is_set(), "shutdown(wait=False) waited for the controller"
            said = [r.getMessage() for r in caplog.records if "not confirmed" in r.getMessage()]
            named = ids_text(sorted([running.taskid, *tids]))  # (started or not: unknown)
            assert len(said) == 1 and named in said[0], said
            assert "cancel_futures" in said[0]
            with pytest.raises(RuntimeError):
                ex.submit(square, 1)
            # Once the controller answers, the tasks that had not started are cancelled.
            poll(lambda: all(f.cancelled() for f in waiting), 60, "the cancels, carried out")
            assert not running.done()
        finally:
            release.touch()
        assert running.result(timeout=60) == "finished"
