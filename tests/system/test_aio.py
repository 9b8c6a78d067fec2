"""System tests of `taskmill.AsyncTaskClient` on the shared 2-engine cluster.

Each test runs its own event loop with `asyncio.run` (no asyncio test plugin is needed) and
leaves the engines as it found them. Nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio

import pytest
from systest import (
    block_until,
    fail_on_multiples_of_seven,
    raise_keyerror,
    square,
    wait_until_async,
)

import taskmill
from taskmill import (
    AsyncTaskClient,
    AsyncTaskFuture,
    CompositeError,
    MapTask,
    StringTask,
    TaskAborted,
    TaskResult,
)

pytestmark = pytest.mark.timeout(180, method="thread")


def run(coro_fn, cluster):
    async def main():
        async with AsyncTaskClient(cluster.connection_file) as tc:
            return await coro_fn(tc)

    return asyncio.run(main())


def test_gather_over_1000_submissions_returns_the_right_values(cluster):
    async def body(tc):
        futs = [tc.submit(square, i) for i in range(1000)]
        assert all(isinstance(f, AsyncTaskFuture) and isinstance(f, asyncio.Future)
                   for f in futs)
        values = await asyncio.gather(*futs)
        assert values == [i * i for i in range(1000)]
        assert len({f.taskid for f in futs}) == 1000
        assert futs[0].metadata["attempts"] == 1
        # asyncio.as_completed and asyncio.wait work on them too
        more = [tc.submit(square, i) for i in range(20)]
        got = sorted([await f for f in asyncio.as_completed(more)])
        assert got == sorted(i * i for i in range(20))

    run(body, cluster)


def test_the_seed_verbs_as_coroutines(cluster):
    async def body(tc):
        tid = await tc.run(MapTask(square, (6,)))
        assert isinstance(tid, int)
        assert await tc.get_task_result(tid, block=True) == 36
        assert await tc.run(MapTask(square, (7,)), block=True) == 49
        tr = await tc.run(StringTask("y = x * 2", push={"x": 21}, pull="y"), block=True)
        assert isinstance(tr, TaskResult) and tr.ns.y == 42
        await tc.barrier([tid])
        status = await tc.queue_status()
        assert set(status) == {"scheduled", "pending", "succeeded", "failed"}
        assert tid in (await tc.queue_status(verbose=True))["succeeded"]
        assert await tc.clear(tid) == 1
        with pytest.raises(KeyError):
            await tc.clear(tid)
        with pytest.raises(IndexError):
            await tc.get_task_result(tid)
        with pytest.raises(IndexError):
            await tc.abort(987_654_321)
        with pytest.raises(TypeError):
            await tc.abort("3")
        assert isinstance(await tc.spin(), bool)
        engines = await tc.engines()
        assert {"engineid", "hostname", "pid", "properties", "state", "tasks_done"} <= set(
            engines[0])
        assert (await tc.statistics())["submitted"] >= 3

    run(body, cluster)


def test_map_run_all_imap_and_options(cluster):
    async def body(tc):
        items = list(range(20_000))
        assert await tc.map(square, items) == list(map(square, items))
        assert await tc.map(pow, [2, 3], [3, 2]) == [8, 9]
        with pytest.raises(CompositeError) as info:
            await tc.map(fail_on_multiples_of_seven, range(30), chunksize=4)
        assert [f.index for f in info.value.elist] == [0, 7, 14, 21, 28]

        out = await tc.run_all(StringTask("here = engineid", pull="here"))
        alive = sorted(e["engineid"] for e in await tc.engines() if e["state"] != "dead")
        assert sorted(out) == alive and all(out[e].ns.here == e for e in alive)

        got = [y async for y in tc.imap(square, (i for i in range(2000)), max_outstanding=300)]
        assert got == [i * i for i in range(2000)]
        unordered = [y async for y in tc.imap(square, range(500), ordered=False)]
        assert sorted(unordered) == [i * i for i in range(500)]

        opts = tc.options(retries=1)
        assert await opts.submit(square, 5) == 25
        assert await opts.map(square, range(4)) == [0, 1, 4, 9]

        done = await tc.wait([tc.submit(square, 2), await tc.run(MapTask(square, (3,)))],
                             progress=False)
        assert [f.result() for f in done] == [4, 9]

    run(body, cluster)


def test_exceptions_and_cancel_of_a_queued_future(cluster, tmp_path):
    release = tmp_path / "release"

    async def body(tc):
        with pytest.raises(KeyError) as info:
            await tc.submit(raise_keyerror, "gone")
        assert "raise_keyerror" in info.value.remote_traceback

        alive = sorted(e["engineid"] for e in await tc.engines() if e["state"] != "dead")
        held = [tc.options(depend={"engineid": e}).submit(
            block_until, str(release), str(tmp_path / f"started-{e}")) for e in alive]
        try:
            async def all_started():
                return all((tmp_path / f"started-{e}").exists() for e in alive)

            await wait_until_async(all_started, "the gate tasks to start")
            queued = tc.submit(square, 3)
            assert queued.taskid >= 0
            assert queued.cancel() is True
            assert queued.cancelled()
            with pytest.raises(asyncio.CancelledError):
                await queued
            with pytest.raises(TaskAborted):
                await tc.get_task_result(queued.taskid, block=True)
        finally:
            release.touch()
            assert await asyncio.gather(*held) == ["released"] * len(alive)
        finished = tc.submit(square, 4)
        assert await finished == 16
        assert finished.cancel() is False

    run(body, cluster)


def test_close_and_use_without_async_with(cluster):
    async def body():
        tc = AsyncTaskClient(cluster.connection_file, timeout=10.0)
        with pytest.raises(RuntimeError, match="not connected"):
            tc.submit(square, 1)
        await tc.connect()
        assert await tc.submit(square, 11) == 121
        assert isinstance(tc.blocking, taskmill.TaskClient)
        await tc.close()
        await tc.close()  # idempotent

    asyncio.run(body())


def test_wait_for_on_a_future_while_the_controller_is_stopped_times_out_and_aborts_later(
        tmp_path):
    """asyncio.wait_for cancels the future on its timeout. That cancel made a blocking round
    trip in the loop's thread: with the controller stopped (SIGSTOP, a slow restart) the loop
    froze for the client's timeout, then ControllerUnreachable came out of cancel(). It
    cancels at once now, and the abort goes to the controller once it answers."""
    import os
    import signal

    from systest import controller_process, poll

    release, started = tmp_path / "release", tmp_path / "started"
    with controller_process(tmp_path, engines=1) as ctl:
        async def body() -> int:
            async with AsyncTaskClient(ctl.conn, timeout=30) as atc:
                fut = atc.submit(block_until, str(release), str(started))
                tid = fut.taskid
                await wait_until_async(lambda: _exists(started), "the task to start")
                os.kill(ctl.proc.pid, signal.SIGSTOP)
                try:
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(fut, timeout=0.5)
                    assert fut.cancelled()
                finally:
                    os.kill(ctl.proc.pid, signal.SIGCONT)
                return tid

        tid = asyncio.run(body())
        with taskmill.TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.task_info(tid).get("status") == "aborted", 60,
                 "the abort to arrive")
            with pytest.raises(TaskAborted):
                tc.get_task_result(tid, block=True)


async def _exists(path) -> bool:
    return path.exists()


def test_a_wrapped_task_future_cancelled_on_the_loop_never_waits_there_for_the_controller(
        tmp_path):
    """asyncio cancels a future it wraps (`asyncio.wrap_future`, `loop.run_in_executor`,
    which the futures page recommends for a blocking client's futures) by calling the
    TaskFuture's `cancel()` on the loop's thread, when `wait_for` times out. That cancel
    waited for the controller's answer there: with the controller stopped the loop froze
    until `reconnect_timeout`, then ControllerUnreachable went to the loop's exception handler
    and the task was never aborted. The controller here is resumed only once the loop is free
    again, so the old code stalls until then and leaves the future failed, not cancelled."""
    import os
    import signal

    from systest import controller_process, poll

    release, started = tmp_path / "release", tmp_path / "started"
    with controller_process(tmp_path, engines=1) as ctl, \
            taskmill.TaskClient(ctl.conn, timeout=30, reconnect_timeout=20) as tc:
        fut = tc.submit(block_until, str(release), str(started))
        tid = fut.taskid
        poll(started.exists, 60, "the task to start")
        loop_errors: list[dict] = []

        async def body() -> None:
            asyncio.get_running_loop().set_exception_handler(
                lambda loop, context: loop_errors.append(context))
            os.kill(ctl.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.wrap_future(fut), timeout=0.5)
            finally:
                os.kill(ctl.proc.pid, signal.SIGCONT)
            await asyncio.sleep(0)  # (the loop's callbacks of the cancel have run)

        try:
            asyncio.run(body())
            poll(fut.done, 60, "the abort to be answered")
            assert fut.cancelled(), fut.exception()
            assert loop_errors == []
            with pytest.raises(TaskAborted):
                tc.get_task_result(tid, block=True, timeout=60)
        finally:
            release.touch()


def test_tasks_of_futures_cancelled_by_asyncio_are_aborted_when_the_client_closes_right_after(
        tmp_path):
    """`wait_for(gather(...))` timing out cancels every future, whose aborts go out in the
    background, one round trip each; leaving `async with` right after closed the connection
    under them: every future read cancelled while all but one or two of their tasks ran on
    (Ctrl-C under `asyncio.run` did the same). The client sends them as it closes now."""
    from systest import controller_process

    release, started = tmp_path / "release", tmp_path / "started"
    with controller_process(tmp_path, engines=1) as ctl:
        async def body() -> list[AsyncTaskFuture]:
            async with AsyncTaskClient(ctl.conn, timeout=30) as atc:
                futs = [atc.submit(block_until, str(release), str(started)) for _ in range(20)]
                for f in futs:
                    f.taskid  # noqa: B018 - (every submit answered: all 20 are stored)
                await wait_until_async(lambda: _exists(started), "a task to start")
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*futs), timeout=0.2)
                return futs

        try:
            futs = asyncio.run(body())
            assert all(f.cancelled() for f in futs)
            with taskmill.TaskClient(ctl.conn, timeout=30) as tc:
                status = tc.queue_status()
                assert status["scheduled"] == status["pending"] == 0, status
                for f in futs:
                    with pytest.raises(TaskAborted):
                        tc.get_task_result(f.taskid, block=True, timeout=60)
        finally:
            release.touch()


def test_an_asyncio_cancel_is_not_held_up_by_a_slow_done_callback(cluster, tmp_path):
    """An asyncio cancel aborts its task in the background. That went through the thread
    that runs the user's done-callbacks, in order: behind a slow callback (one that waits for
    another long task) the future read cancelled while its task ran on, for as long as the
    callback took. The abort is sent at once now."""
    import threading

    release, started = tmp_path / "release", tmp_path / "started"
    go, went = tmp_path / "go", tmp_path / "went"
    hold, holding = threading.Event(), threading.Event()

    def slow_callback(_) -> None:  # (the user's: on the client's callbacks thread)
        holding.set()
        hold.wait(90)

    async def body() -> None:
        async with AsyncTaskClient(cluster.connection_file, timeout=30) as atc:
            first = atc.blocking.submit(block_until, str(go), str(went))
            first.add_done_callback(slow_callback)
            go.touch()
            await asyncio.to_thread(holding.wait, 60)
            assert holding.is_set()
            fut = atc.submit(block_until, str(release), str(started))
            tid = fut.taskid
            await wait_until_async(lambda: _exists(started), "the task to start")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(fut, timeout=0.2)

            async def aborted() -> bool:
                return (await atc.task_info(tid)).get("status") == "aborted"

            await wait_until_async(aborted, "the abort, with the slow callback still running",
                                   timeout=30)
            hold.set()

    try:
        asyncio.run(body())
    finally:
        hold.set()
        go.touch()
        release.touch()


def test_taskid_on_the_loop_does_not_wait_out_a_stalled_controller(tmp_path):
    """`AsyncTaskFuture.taskid` read on the loop before the controller acknowledged the
    submit blocked the loop until it did: with the controller stopped, up to timeout +
    reconnect_timeout ("waits, briefly", said its docstring). It waits only while the
    controller is heard now, then raises ControllerUnreachable naming `await
    fut.wait_taskid()`, which waits without blocking the loop. The watchdog resumes the
    controller after 40 s: the old code returned the id only then."""
    from systest import controller_process, stalled

    with controller_process(tmp_path, engines=1) as ctl:
        async def body() -> None:
            async with AsyncTaskClient(ctl.conn, timeout=30, reconnect_timeout=90) as atc:
                assert atc.submit(square, 2).taskid >= 0  # (a live controller: at once)
                with stalled(ctl.proc) as resumed:
                    fut = atc.submit(square, 3)
                    with pytest.raises(taskmill.ControllerUnreachable,
                                       match=r"await fut\.wait_taskid\(\)"):
                        fut.taskid  # noqa: B018
                    assert not resumed.is_set(), "taskid waited for the stalled controller"
                    assert fut.known_taskid is None
                    waiting = asyncio.ensure_future(fut.wait_taskid())
                    await asyncio.sleep(0)  # (the loop runs on while it waits)
                    assert not waiting.done()
                tid = await asyncio.wait_for(waiting, 60)
                assert fut.taskid == tid == fut.known_taskid
                assert await asyncio.wait_for(fut, 60) == 9

        asyncio.run(body())
