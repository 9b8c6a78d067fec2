"""The asyncio client, `AsyncTaskClient`: the verbs of `TaskClient` as coroutines.

It rides on a blocking client's connection (`client._Connection`): a request goes out on its
send socket and the connection's I/O thread resolves a `concurrent.futures.Future` with the
reply, which a coroutine here awaits through `asyncio.wrap_future`. So nothing here waits on
the network in the event loop, and replies and results are unpickled in the loop's thread, by
the coroutine that asked. `submit` returns an `AsyncTaskFuture`, an `asyncio.Future` that
follows the blocking client's `TaskFuture` for the same task.

Never here: a blocking wait for a task. The few short blocking steps are named where they are
(`AsyncTaskFuture.cancel`, and `taskid` before the controller has acknowledged a submit).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from .client import (
    NO_OPTIONS,
    TaskClient,
    TaskFuture,
    TaskOptions,
    _check_taskid,
    abort_outcome,
    clear_outcome,
    pinned_copies,
    refusal,
    run_all_outcome,
    split_results,
    taskid_list,
)
from .errors import ControllerUnreachable
from .mapper import (
    IMapRun,
    assemble_map,
    check_imap,
    plan_map,
    progress_bar,
    show_progress,
)
from .task import BaseTask


def _advance(bar: Any, n: int, _fut: object) -> None:
    bar.update(n)


class AsyncTaskFuture(asyncio.Future):
    """An `asyncio.Future` for one task: `await` it for the result (or its exception).

    `taskid` and `metadata` are those of `task_future`, the blocking client's `TaskFuture` it
    follows. `cancel()` aborts the task as `TaskFuture.cancel()` does: it waits for the
    controller's answer (a round trip) in the loop's thread, and returns False if the task had
    finished. `await client.abort(fut.taskid)` aborts without that wait.
    """

    def __init__(self, task_future: TaskFuture, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.task_future = task_future
        task_future.add_done_callback(self._follow)

    @property
    def taskid(self) -> int:
        """The task's id (waits, briefly, if the controller has not acknowledged it yet)."""
        return self.task_future.taskid

    @property
    def metadata(self) -> dict[str, Any]:
        return self.task_future.metadata

    def _follow(self, tf: Future) -> None:  # on the client's I/O thread, or any
        try:
            self.get_loop().call_soon_threadsafe(self._copy, tf)
        except RuntimeError:  # the loop is closed: nobody awaits this any more
            pass

    def _copy(self, tf: Future) -> None:  # on the loop's thread: the result is unpickled here
        if self.done():
            return
        if tf.cancelled():
            super().cancel()
            return
        exc = tf.exception()
        if exc is not None:
            self.set_exception(exc)
        else:
            self.set_result(tf.result())

    def cancel(self, msg: Any = None) -> bool:
        if self.done():
            return False
        if not self.task_future.cancel():
            return False
        return super().cancel(msg)


class AsyncTaskClient:
    """The asyncio client: `async with AsyncTaskClient() as tc: await tc.map(f, xs)`.

    The same verbs as `TaskClient`, as coroutines: `run`, `get_task_result`, `abort`,
    `barrier`, `spin`, `queue_status`, `clear`, `map`, `engines`, `statistics`, `activity`,
    `task_info`, `run_all`, `wait`, `close`. `submit(f, *args, **kwargs)` and `future(taskid)`
    return awaitable `AsyncTaskFuture`s at once (they are plain methods, so
    `await asyncio.gather(*(tc.submit(f, x) for x in xs))` gives the values); `imap` is an
    async iterator; `options(...)` works as on `TaskClient` (its `map` is a coroutine here).
    `connection` and `timeout` are those of `TaskClient`; connecting happens in `async with`
    (or `await tc.connect()`), off the event loop.
    """

    def __init__(self, connection: str | os.PathLike[str] | None = None, *,
                 timeout: float = 10.0) -> None:
        self._connection = connection
        self.timeout = timeout
        self._client: TaskClient | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def connect(self) -> AsyncTaskClient:
        if self._client is None:
            self._client = await asyncio.to_thread(TaskClient, self._connection,
                                                   timeout=self.timeout)
        return self

    async def __aenter__(self) -> AsyncTaskClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    @property
    def blocking(self) -> TaskClient:
        """The blocking client underneath (same connection), for code that may block."""
        if self._client is None:
            raise RuntimeError("this AsyncTaskClient is not connected: use `async with "
                               "AsyncTaskClient() as tc:` or `await tc.connect()` first")
        return self._client

    @property
    def connection_file(self) -> Any:
        return self.blocking.connection_file

    async def _call(self, header: dict[str, Any], frames: Sequence[Any] = (), *,
                    timeout: float | None = -1.0) -> tuple[dict[str, Any], list[Any]]:
        conn = self.blocking._conn
        fut = conn.send(header, frames)
        wait = conn.timeout if timeout == -1.0 else timeout
        try:
            reply, frames = await asyncio.wait_for(asyncio.wrap_future(fut), wait)
        except TimeoutError:
            conn._forget(header["req"])
            raise ControllerUnreachable(
                f"the controller at {conn.info.client_url} did not answer a "
                f"{header['type']!r} request within {wait:g}s") from None
        if not reply.get("ok", True):
            raise refusal(reply)
        return reply, frames

    def _wrap(self, tf: TaskFuture) -> AsyncTaskFuture:
        return AsyncTaskFuture(tf, loop=asyncio.get_running_loop())

    # -- the seed's verbs ------------------------------------------------------------------
    async def run(self, task: BaseTask, block: bool = False) -> Any:
        """Submit `task`; return its taskid, or with `block=True` its result."""
        header, frames = self.blocking._encode(task)
        reply, _ = await self._call({"type": "submit", "tasks": [header]}, frames)
        tid = reply["tids"][0]
        if block:
            return await self.get_task_result(tid, block=True)
        return tid

    async def get_task_result(self, taskid: int, block: bool = False) -> Any:
        """The result of a task (SPEC.md §3), or None while it runs and `block` is false."""
        _check_taskid(taskid)
        reply, frames = await self._call({"type": "result", "tids": [taskid], "block": block},
                                         timeout=None if block else -1.0)
        (meta, fr), = split_results(reply, frames)
        return self.blocking._decode(meta, fr)

    async def abort(self, taskid: int) -> None:
        """Abort a queued or running task (it finishes as TaskAborted)."""
        _check_taskid(taskid)
        reply, _ = await self._call({"type": "abort", "tid": taskid})
        abort_outcome(reply, taskid)

    async def barrier(self, taskids: Any, progress: bool | None = False) -> None:
        """Wait until every task in `taskids` has finished (failed and unknown ones count)."""
        tids = taskid_list(taskids)
        if not tids:
            return
        if show_progress(progress):
            await self.wait(tids, progress=True)
        else:
            await self._call({"type": "wait", "tids": tids}, timeout=None)

    async def spin(self) -> bool:
        reply, _ = await self._call({"type": "spin"})
        return bool(reply["dispatched"])

    async def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        reply, _ = await self._call({"type": "status", "verbose": bool(verbose)})
        return dict(reply["status"])

    async def clear(self, taskids: Any = None) -> int:
        tids = None if taskids is None else taskid_list(taskids)
        reply, _ = await self._call({"type": "clear", "tids": tids})
        return clear_outcome(reply)

    async def map(self, func: Callable[..., Any], /, *sequences: Iterable[Any],
                  chunksize: int | None = None, progress: bool | None = False) -> list[Any]:
        """`TaskClient.map` as a coroutine: results in input order, or one CompositeError."""
        return await self._map(NO_OPTIONS, func, sequences, chunksize, progress)

    async def _map(self, options: TaskOptions, func: Callable[..., Any],
                   sequences: Sequence[Iterable[Any]], chunksize: int | None,
                   progress: bool | None) -> list[Any]:
        # The engines are counted here, not by plan_map, whose way of asking would block.
        alive = await self._alive_engines() if chunksize is None else 1
        n_items, chunks, tasks = plan_map(options, func, sequences, chunksize, lambda: alive)
        if not tasks:
            return []
        client = self.blocking
        futs = client._submit_futures([client._encode(t) for t in tasks])
        name = getattr(func, "__name__", "map")
        with progress_bar(progress, n_items, name, "item") as bar:
            waiting = []
            for tf, chunk in zip(futs, chunks, strict=True):
                af = self._wrap(tf)
                af.add_done_callback(functools.partial(_advance, bar, len(chunk)))
                waiting.append(af)
            await asyncio.wait(waiting)
        for af in waiting:
            if not af.cancelled():
                af.exception()  # retrieved: assemble_map reports it
        return assemble_map(name, futs, chunks, n_items)

    # -- beyond the seed -------------------------------------------------------------------
    async def engines(self) -> list[dict[str, Any]]:
        reply, _ = await self._call({"type": "engines"})
        return list(reply["engines"])

    async def statistics(self) -> dict[str, Any]:
        reply, _ = await self._call({"type": "stats"})
        return dict(reply["stats"])

    async def activity(self, since: int = 0) -> dict[str, Any]:
        reply, _ = await self._call({"type": "activity", "since": since})
        return dict(reply["activity"])

    async def task_info(self, taskid: int) -> dict[str, Any]:
        _check_taskid(taskid)
        reply, _ = await self._call({"type": "task", "tid": taskid})
        return dict(reply["task"])

    async def _alive_engines(self) -> int:
        return sum(1 for e in await self.engines() if e["state"] != "dead")

    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncTaskFuture:
        """Run `func(*args, **kwargs)` on an engine; an awaitable future at once (no await)."""
        return self._submit_with(NO_OPTIONS, func, args, kwargs)

    def _submit_with(self, options: TaskOptions, func: Callable[..., Any],
                     args: Sequence[Any], kwargs: dict[str, Any]) -> AsyncTaskFuture:
        return self._wrap(self.blocking._submit_with(options, func, args, kwargs))

    def future(self, taskid: int) -> AsyncTaskFuture:
        """An awaitable future for a task submitted before."""
        return self._wrap(self.blocking.future(taskid))

    def options(self, *, retries: int = 0, timeout: float | None = None, depend: Any = None,
                after: Any = None, recovery_task: BaseTask | None = None,
                clear_before: bool = False, clear_after: bool = False) -> TaskOptions:
        """Task options for `submit`, `map` and `imap` (see `taskmill.TaskOptions`)."""
        return TaskOptions(self, retries=retries, timeout=timeout, depend=depend, after=after,
                           recovery_task=recovery_task, clear_before=clear_before,
                           clear_after=clear_after)

    async def wait(self, futures_or_ids: Any, *, timeout: float | None = None,
                   progress: bool | None = None) -> list[asyncio.Future]:
        """Wait until every future or taskid given has finished; return their futures."""
        items = [futures_or_ids] if isinstance(futures_or_ids, int | asyncio.Future | Future) \
            else list(futures_or_ids)
        futs = [x if isinstance(x, asyncio.Future) else
                asyncio.wrap_future(x) if isinstance(x, Future) else self.future(x)
                for x in items]
        if not futs:
            return futs
        with progress_bar(progress, len(futs), "wait", "task") as bar:
            for f in futs:
                f.add_done_callback(lambda _: bar.update())
            _, pending = await asyncio.wait(futs, timeout=timeout)
        if pending:
            raise TimeoutError(f"{len(pending)} of {len(futs)} tasks unfinished after "
                               f"{timeout:g}s")
        return futs

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], *, ordered: bool = True,
             chunksize: int | None = None, max_outstanding: int | None = None,
             progress: bool | None = False) -> AsyncIterator[Any]:
        """`TaskClient.imap` as an async iterator: `async for y in tc.imap(f, xs): ...`."""
        return self._imap(NO_OPTIONS, func, iterable, ordered, chunksize, max_outstanding,
                          progress)

    def _imap(self, options: TaskOptions, func: Callable[..., Any], iterable: Iterable[Any],
              ordered: bool, chunksize: int | None, max_outstanding: int | None,
              progress: bool | None) -> AsyncIterator[Any]:
        check_imap(options, chunksize, max_outstanding)
        return self._imap_run(options, func, iterable, ordered, chunksize, max_outstanding,
                              progress)

    async def _imap_run(self, options: TaskOptions, func: Callable[..., Any],
                        iterable: Iterable[Any], ordered: bool, chunksize: int | None,
                        max_outstanding: int | None,
                        progress: bool | None) -> AsyncIterator[Any]:
        run = IMapRun(self.blocking, options, func, iterable, ordered=ordered,
                      chunksize=chunksize, max_outstanding=max_outstanding,
                      n_engines=await self._alive_engines())
        loop = asyncio.get_running_loop()
        done: asyncio.Queue[TaskFuture] = asyncio.Queue()

        def arrived(tf: Future) -> None:  # on the I/O thread
            try:
                loop.call_soon_threadsafe(done.put_nowait, tf)
            except RuntimeError:  # the loop is closed
                pass

        total = len(iterable) if hasattr(iterable, "__len__") else None
        bar = progress_bar(progress, total, getattr(func, "__name__", "imap"), "item")
        try:
            while True:
                for tf in run.send_more():
                    tf.add_done_callback(arrived)
                if run.finished:
                    return
                for ok, value in run.chunk_done(await done.get()):
                    if not ok:
                        raise value
                    bar.update()
                    yield value
        finally:
            bar.close()
            run.close()

    async def run_all(self, task: BaseTask) -> dict[int, Any]:
        """One copy of `task` on every live engine; engineid -> result (see TaskClient)."""
        eids = sorted(e["engineid"] for e in await self.engines() if e["state"] != "dead")
        client = self.blocking
        copies = pinned_copies(task, eids)
        futs = [self._wrap(tf) for tf in
                client._submit_futures([client._encode(t) for t in copies])]
        outcomes = []
        for f in futs:
            try:
                outcomes.append((True, await f))
            except Exception as e:  # noqa: BLE001 - reported per engine
                outcomes.append((False, e))
        return run_all_outcome(eids, outcomes)
