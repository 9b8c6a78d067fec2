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
    RECONNECT_TIMEOUT,
    TaskClient,
    TaskFuture,
    TaskOptions,
    _check_taskid,
    _in_range,
    _unknown_message,
    abort_outcome,
    check_client_timeouts,
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
    check_unreachable,
    encode_chunks,
    plan_map,
    progress_bar,
    show_progress,
)
from .task import BaseTask, check_seconds


def _advance(bar: Any, n: int, _fut: object) -> None:
    bar.update(n)


def _retrieved(fut: asyncio.Future) -> None:
    """A done-callback for futures of ours that nobody will await any more (their call ended
    early): their exception counts as retrieved, so asyncio does not log it."""
    if not fut.cancelled():
        fut.exception()


def _abandon(futs: Iterable[asyncio.Future]) -> None:
    for f in futs:
        f.add_done_callback(_retrieved)


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
    `connection`, `timeout` and `reconnect_timeout` are those of `TaskClient`; connecting
    happens in `async with` (or `await tc.connect()`), off the event loop. The blocking verbs
    (`run(block=True)`, `get_task_result(block=True)`, `barrier`, `map`, `run_all`, `wait`)
    take a keyword-only `timeout` as there; cancelling `map` or `run_all` (or a timeout, or
    any exception ending them) aborts their tasks still queued or running.
    """

    def __init__(self, connection: str | os.PathLike[str] | None = None, *,
                 timeout: float = 10.0, reconnect_timeout: float = RECONNECT_TIMEOUT) -> None:
        check_client_timeouts(timeout, reconnect_timeout)
        self._connection = connection
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self._client: TaskClient | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def connect(self) -> AsyncTaskClient:
        if self._client is None:
            self._client = await asyncio.to_thread(TaskClient, self._connection,
                                                   timeout=self.timeout,
                                                   reconnect_timeout=self.reconnect_timeout)
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
        except ControllerUnreachable:  # (a TimeoutError too: not this wait's)
            raise
        except TimeoutError:
            conn._forget(header["req"])
            raise ControllerUnreachable(
                f"the controller at {conn.info.client_url} did not answer a "
                f"{header['type']!r} request within {wait:g}s") from None
        if not reply.get("ok", True):
            raise refusal(reply)
        return reply, frames

    async def _wait_reply(self, header: dict[str, Any], timeout: float | None,
                          what: str) -> tuple[dict[str, Any], list[Any]]:
        """A blocking verb's request (see _Connection.wait_reply): past the caller's own
        `timeout`, the builtin TimeoutError; the tasks are untouched."""
        conn = self.blocking._conn
        fut = conn.send(header)
        answered = False
        try:
            reply, frames = await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
            answered = True
        except ControllerUnreachable:  # (a TimeoutError too: not this wait's)
            raise
        except TimeoutError:
            raise TimeoutError(f"{what} did not finish within {timeout:g}s (timeout=); the "
                               "tasks are untouched") from None
        finally:
            if not answered:  # timed out or cancelled: nobody waits for the answer any more
                conn._forget(header["req"])
        if not reply.get("ok", True):
            raise refusal(reply)
        return reply, frames

    def _wrap(self, tf: TaskFuture) -> AsyncTaskFuture:
        return AsyncTaskFuture(tf, loop=asyncio.get_running_loop())

    # -- the seed's verbs ------------------------------------------------------------------
    async def run(self, task: BaseTask, block: bool = False, *,
                  timeout: float | None = None) -> Any:
        """Submit `task`; return its taskid, or with `block=True` its result (past `timeout`
        seconds, TimeoutError; the task goes on)."""
        check_seconds(timeout, "timeout")
        client = self.blocking
        enc = client._encode(task)
        client._check_sizes([enc])
        header, frames = enc
        reply, _ = await self._call({"type": "submit", "tasks": [header]}, frames)
        tid = reply["tids"][0]
        if block:
            return await self.get_task_result(tid, block=True, timeout=timeout)
        return tid

    async def get_task_result(self, taskid: int, block: bool = False, *,
                              timeout: float | None = None) -> Any:
        """The result of a task (SPEC.md §3), or None while it runs and `block` is false
        (with `block`, past `timeout` seconds, TimeoutError)."""
        _check_taskid(taskid)
        check_seconds(timeout, "timeout")
        if not _in_range(taskid):
            raise IndexError(_unknown_message(taskid))
        header = {"type": "result", "tids": [taskid], "block": block}
        if block:
            reply, frames = await self._wait_reply(
                header, timeout, f"get_task_result({taskid}, block=True)")
        else:
            reply, frames = await self._call(header)
        (meta, fr), = split_results(reply, frames)
        return self.blocking._decode(meta, fr)

    async def abort(self, taskid: int) -> None:
        """Abort a queued or running task (it finishes as TaskAborted)."""
        _check_taskid(taskid)
        if not _in_range(taskid):
            raise IndexError(_unknown_message(taskid))
        reply, _ = await self._call({"type": "abort", "tid": taskid})
        abort_outcome(reply, taskid)

    async def barrier(self, taskids: Any, progress: bool | None = False, *,
                      timeout: float | None = None) -> None:
        """Wait until every task in `taskids` has finished (failed and unknown ones count).
        Past `timeout` seconds, TimeoutError. The tasks are not this call's: cancelling it
        leaves them running."""
        check_seconds(timeout, "timeout")
        tids = [t for t in taskid_list(taskids) if _in_range(t)]
        if not tids:
            return
        if show_progress(progress):
            await self.wait(tids, progress=True, timeout=timeout)
        else:
            await self._wait_reply({"type": "wait", "tids": tids}, timeout, "barrier")

    async def spin(self) -> bool:
        reply, _ = await self._call({"type": "spin"})
        return bool(reply["dispatched"])

    async def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        reply, _ = await self._call({"type": "status", "verbose": bool(verbose)})
        return dict(reply["status"])

    async def clear(self, taskids: Any = None) -> int:
        tids = None if taskids is None else taskid_list(taskids)
        if tids is not None and not all(_in_range(t) for t in tids):
            return await asyncio.to_thread(self.blocking.clear, tids)  # (see there)
        reply, _ = await self._call({"type": "clear", "tids": tids})
        return clear_outcome(reply)

    async def map(self, func: Callable[..., Any], /, *sequences: Iterable[Any],
                  chunksize: int | None = None, progress: bool | None = False,
                  timeout: float | None = None) -> list[Any]:
        """`TaskClient.map` as a coroutine: results in input order, or one CompositeError.
        Past `timeout` seconds, TimeoutError. Cancelling it (or the timeout, or any exception
        that ends it early) aborts its tasks still queued or running."""
        return await self._map(NO_OPTIONS, func, sequences, chunksize, progress, timeout)

    async def _map(self, options: TaskOptions, func: Callable[..., Any],
                   sequences: Sequence[Iterable[Any]], chunksize: int | None,
                   progress: bool | None, timeout: float | None = None) -> list[Any]:
        check_seconds(timeout, "timeout")
        # The engines are counted here, not by plan_map, whose way of asking would block.
        alive = await self._alive_engines() if chunksize is None else 1
        n_items, chunks = plan_map(options, func, sequences, chunksize, lambda: alive)
        if not chunks:
            return []
        client = self.blocking
        chunks, encoded = encode_chunks(client, options, func, chunks, split=chunksize is None)
        name = getattr(func, "__name__", "map")
        futs = client._submit_futures(encoded, checked=True)
        waiting: list[AsyncTaskFuture] = []
        try:
            with progress_bar(progress, n_items, name, "item") as bar:
                for tf, chunk in zip(futs, chunks, strict=True):
                    af = self._wrap(tf)
                    af.add_done_callback(functools.partial(_advance, bar, len(chunk)))
                    waiting.append(af)
                _, pending = await asyncio.wait(waiting, timeout=timeout)
            if pending:
                raise TimeoutError(f"map of {name} did not finish within {timeout:g}s "
                                   "(timeout=); its unfinished tasks were aborted")
        except BaseException:  # cancelled, timed out...: abort what is left
            _abandon(waiting)
            await _abort(client, futs)
            raise
        for af in waiting:
            if not af.cancelled():
                af.exception()  # retrieved: assemble_map reports it
        check_unreachable(futs)
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
        if not _in_range(taskid):
            return {"tid": taskid, "state": "unknown"}
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
        """Wait until every future or taskid given has finished; return their futures.
        Past `timeout` seconds, TimeoutError. The tasks are not this call's: cancelling it
        leaves them running."""
        check_seconds(timeout, "timeout")
        items = [futures_or_ids] if isinstance(futures_or_ids, int | asyncio.Future | Future) \
            else list(futures_or_ids)
        futs = [x if isinstance(x, asyncio.Future) else
                asyncio.wrap_future(x) if isinstance(x, Future) else self.future(x)
                for x in items]
        if not futs:
            return futs
        ours = [f for f, x in zip(futs, items, strict=True) if f is not x]
        try:
            with progress_bar(progress, len(futs), "wait", "task") as bar:
                for f in futs:
                    f.add_done_callback(lambda _: bar.update())
                _, pending = await asyncio.wait(futs, timeout=timeout)
            if pending:
                raise TimeoutError(f"{len(pending)} of {len(futs)} tasks unfinished after "
                                   f"{timeout:g}s")
        except BaseException:
            _abandon(ours)
            raise
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

    async def run_all(self, task: BaseTask, *, timeout: float | None = None) -> dict[int, Any]:
        """One copy of `task` on every live engine; engineid -> result (see TaskClient).
        Past `timeout` seconds, TimeoutError; that, cancelling it or any exception ending it
        early aborts the copies still queued or running."""
        check_seconds(timeout, "timeout")
        eids = sorted(e["engineid"] for e in await self.engines() if e["state"] != "dead")
        client = self.blocking
        copies = pinned_copies(task, eids)
        tfs = client._submit_futures([client._encode(t) for t in copies])
        futs = [self._wrap(tf) for tf in tfs]
        try:
            if futs:
                _, pending = await asyncio.wait(futs, timeout=timeout)
                if pending:
                    raise TimeoutError(f"run_all did not finish within {timeout:g}s "
                                       "(timeout=); its unfinished copies were aborted")
        except BaseException:
            _abandon(futs)
            await _abort(client, tfs)
            raise
        check_unreachable(tfs)  # (raised as itself, not as a failure of each engine)
        outcomes = []
        for f in futs:
            try:
                outcomes.append((True, await f))
            except Exception as e:  # noqa: BLE001 - reported per engine
                outcomes.append((False, e))
        return run_all_outcome(eids, outcomes)


async def _abort(client: TaskClient, futs: Sequence[TaskFuture]) -> None:
    """Abort the unfinished tasks of `futs` (see TaskClient._abort_futures), off the loop."""
    try:
        await asyncio.to_thread(client._abort_futures, futs)
    except Exception:  # noqa: BLE001 - the error that ended the map is the one to raise
        pass
