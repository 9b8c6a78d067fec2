"""The asyncio client, `AsyncTaskClient`: the verbs of `TaskClient` as coroutines, one line each.

    await atc.map(f, xs) --> verbs.map_elements(backend, ...) (the same generator of steps the
                             blocking client runs, verbs.py)
                         --> AsyncDriver carries each step out by awaiting:
                             Request: send on the blocking client's connection; the I/O thread
                             resolves a concurrent Future, awaited via asyncio.wrap_future
                             WaitFor: the task futures as AsyncTaskFutures, asyncio.wait

It rides on a blocking client's Backend (`blocking`), so nothing here waits on the network in
the event loop, and replies and results are unpickled in the loop's thread, by the coroutine
that asked. `submit` returns an `AsyncTaskFuture`, an `asyncio.Future` that follows the
blocking client's `TaskFuture` for the same task.

Never here: a blocking wait for a task. The few short blocking steps are named where they are
(`AsyncTaskFuture.taskid` before the controller has acknowledged a submit, only while it is
heard, and `submit`/`future` right after `run()`s, which wait until those are stored:
client/runs.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from ..arguments import FutureLike
from ..errors import ControllerUnreachable, too_slow
from ..task import BaseTask
from . import steps, verbs
from .backend import Backend, check_client_timeouts
from .blocking import TaskClient
from .codec import checked
from .connection import RECONNECT_TIMEOUT, Connection
from .futures import TaskFuture, on_event_loop, when_done
from .objects import ObjectRef
from .options import NO_OPTIONS, TaskOptions
from .steps import Abort, Adopt, Deadline, Emit, Follow, NextDone, Request, Settle, WaitFor


def _retrieved(fut: asyncio.Future) -> None:
    """A done-callback for futures of ours that nobody will await any more (their call ended
    early): their exception counts as retrieved, so asyncio does not log it."""
    if not fut.cancelled():
        fut.exception()


class AsyncTaskFuture(asyncio.Future, FutureLike):
    """An `asyncio.Future` for one task: `await` it for the result (or its exception).

    `taskid` and `metadata` are those of `task_future`, the blocking client's `TaskFuture` it
    follows (`await fut.wait_taskid()` waits for the id without blocking the loop;
    `known_taskid` is None until it is known). Passed to another task's arguments it stands
    for its result, as a TaskFuture does.
    `cancel()` cancels it at once and aborts the task in the background (a task that finished
    meanwhile keeps its result, in `task_future`); `await client.abort(fut.taskid)` aborts
    and says whether it did.
    """

    def __init__(self, task_future: TaskFuture, *, loop: asyncio.AbstractEventLoop,
                 connection: Connection | None = None) -> None:
        super().__init__(loop=loop)
        self.task_future = task_future
        self.connection = connection  # (bounds `taskid`'s wait on the loop: None, no bound)
        task_future.on_done(self._follow)

    @property
    def taskid(self) -> int:
        """The task's id, known once the controller has acknowledged the submit (a round trip
        after `submit`). On the event loop's thread it waits for that only while the
        controller is heard: once it has been silent for about 1.5 s (`STALLED_AFTER`)
        (stopped, restarting, cut off) this raises ControllerUnreachable, rather than block
        the loop for up to the client's `reconnect_timeout`; `await fut.wait_taskid()` waits
        as long as the controller may take, without blocking the loop. Raises the error that
        kept the task from being submitted, as `TaskFuture.taskid` does."""
        tf, conn = self.task_future, self.connection
        if conn is not None and not tf.submit_answered() and on_event_loop() \
                and not conn.wait_while_heard(tf.wait_submit_answered, conn.quick_wait):
            raise ControllerUnreachable(
                f"the controller at {conn.info.client_url} has not acknowledged this submit "
                f"and has been silent for {conn.silent:.1f}s (stopped, restarting or cut "
                "off?), so the taskid is not known yet; reading `.taskid` "
                "on the event loop would block it until the controller answers: use `await "
                "fut.wait_taskid()`, which waits without blocking the loop")
        return tf.taskid

    @property
    def known_taskid(self) -> int | None:
        """The task's id if the controller has acknowledged the submit, else None (never
        waits)."""
        return self.task_future.known_taskid

    async def wait_taskid(self) -> int:
        """The task's id, awaited: as `TaskFuture.taskid` (it rides out a restart; raises
        ControllerUnreachable once the controller has not answered for the client's
        `reconnect_timeout`), without blocking the loop."""
        tf = self.task_future
        if tf.submit_answered():
            return tf.taskid
        return await asyncio.to_thread(lambda: tf.taskid)

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
        """Cancel at once, as asyncio expects of `cancel` (`wait_for` calls it on its
        timeout), and abort the task in the background (TaskFuture.cancel_soon): it froze
        the loop for a round trip, 10 s with a stalled controller, and then raised."""
        if self.done():
            return False
        self.task_future.cancel_soon()
        return super().cancel(msg)


class AsyncDriver:
    """Carries out a verb's steps (steps.py) by awaiting, on the blocking client's Backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.result: Any = None  # what the verb carried out by `stream` returned

    def adopt(self, fut: Any) -> asyncio.Future:
        if isinstance(fut, asyncio.Future):
            return fut
        if isinstance(fut, TaskFuture):
            return AsyncTaskFuture(fut, loop=asyncio.get_running_loop(),
                                   connection=self.backend.connection)
        return asyncio.wrap_future(fut)

    async def run(self, verb: verbs.Verb | Request, *, settle: bool = True,
                  deadline: Deadline | None = None) -> Any:
        """Carry out a verb; return what it returns. Every verb but run() (`settle=False`)
        first sends run()'s queued tasks, and returns only once they are stored (runs.py)."""
        sent = self.backend.runs.begin() if settle else []
        try:
            out = await self.carry_out(verb, deadline)
        except Exception as e:
            if settle:  # (a refusal of run()'s tasks may be why: it is the one to raise)
                await self.end(sent, deadline)
            raise e
        if settle:
            await self.end(sent, deadline)
        return out

    async def carry_out(self, verb: verbs.Verb | Request,
                        deadline: Deadline | None = None) -> Any:
        if isinstance(verb, Request):
            return await self.request(verb, deadline)
        async for value in self.stream(verb, settle=False, deadline=deadline):
            raise RuntimeError(f"a verb handed out {value!r} where one result was expected")
        return self.result

    async def end(self, sent: list[Future], deadline: Deadline | None = None) -> None:
        """Runs.end, awaited: the answers to run()'s tasks sent by `begin` (runs.py), within
        a quick request's wait, or the verb's own `deadline` if it comes first."""
        runs = self.backend.runs
        if sent:
            timeout, binds = self.backend.connection.quick_wait, False
            if deadline is not None:
                timeout, binds = deadline.bound(timeout)
            _, waiting = await asyncio.wait([asyncio.wrap_future(f) for f in sent],
                                            timeout=timeout)
            if waiting:
                raise deadline.error() if binds and deadline else runs.no_answer(timeout)
        runs.raise_failure()

    async def settle(self, deadline: Deadline | None = None) -> None:
        """Backend.settle, awaited: run()'s queued tasks sent and stored (runs.py)."""
        await self.end(self.backend.runs.begin(), deadline)

    async def stream(self, verb: verbs.Verb, *, settle: bool = True,
                     deadline: Deadline | None = None) -> AsyncIterator[Any]:
        """Carry out a streaming verb: yield what it emits (closing this closes the verb)."""
        if settle:
            await self.settle()
        done: asyncio.Queue[Future] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def arrived(tf: Future) -> None:  # on the I/O thread
            try:
                loop.call_soon_threadsafe(done.put_nowait, tf)
            except RuntimeError:  # the loop is closed
                pass

        made: list[asyncio.Future] = []  # futures made here: abandoned if the verb fails
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    step = verb.send(value) if error is None else verb.throw(error)
                except StopIteration as stop:
                    self.result = stop.value
                    return
                value = error = None
                if isinstance(step, Emit):
                    yield step.value
                    continue
                try:
                    if isinstance(step, Follow):
                        for f in step.futs:
                            when_done(f, arrived)
                    elif isinstance(step, NextDone):
                        value = await done.get()
                    elif isinstance(step, Adopt):
                        value = [self.adopt(f) for f in step.futs]
                        made.extend(f for f, x in zip(value, step.futs, strict=True)
                                    if f is not x)
                    else:
                        value = await self.perform(step, deadline)
                except BaseException as e:  # noqa: BLE001 - the verb's to handle
                    error = e
        except BaseException:
            for f in made:
                f.add_done_callback(_retrieved)
            raise
        finally:
            verb.close()

    async def perform(self, step: Any, deadline: Deadline | None = None) -> Any:
        if isinstance(step, Request):
            return await self.request(step, deadline)
        if isinstance(step, WaitFor):
            return await self.wait_for(step, deadline)
        if isinstance(step, Settle):
            return await self.settle(deadline)
        if isinstance(step, Abort):  # (off the loop: it waits for the controller)
            try:
                await asyncio.to_thread(self.backend.abort_all, step)
            except Exception:  # noqa: BLE001 - the error that ended the call is the one to raise
                pass
            return None
        raise TypeError(f"not a step of a verb: {step!r}")

    async def wait_for(self, step: WaitFor, deadline: Deadline | None = None) -> list[Any]:
        timeout = step.timeout if deadline is None else deadline.bound(step.timeout)[0]
        if not step.futs:
            return []
        waiting = {self.adopt(f): f for f in step.futs}
        ours = [af for af, f in waiting.items() if af is not f]
        each = step.each
        if each is not None:
            for af, f in waiting.items():
                af.add_done_callback(lambda _, f=f: each(f))
        try:
            _, pending = await asyncio.wait(waiting, timeout=timeout)
        except BaseException:  # cancelled: nobody awaits ours any more
            for af in ours:
                af.add_done_callback(_retrieved)
            raise
        for af in ours:
            af.add_done_callback(_retrieved)  # (done: retrieved now; pending: when done)
        return [waiting[af] for af in pending]

    async def request(self, req: Request, deadline: Deadline | None = None) -> Any:
        """Send `req` and await its reply (see steps.Request for the two kinds of wait),
        within the verb's own `deadline`."""
        conn = self.backend.connection
        fut = conn.send(req.header, req.frames)
        wait, binds = (req.timeout, False) if req.blocking else (conn.quick_wait, False)
        if deadline is not None and not req.blocking:
            wait, binds = deadline.bound(wait)
        answered = False
        try:
            reply, frames = await asyncio.wait_for(asyncio.wrap_future(fut), wait)
            answered = True
        except ControllerUnreachable:  # (a TimeoutError too: not this wait's)
            raise
        except TimeoutError:
            if binds and deadline is not None:
                raise deadline.error() from None
            raise too_slow(req.what, wait) if req.blocking else conn.no_answer(req.header,
                                                                                wait) from None
        finally:
            if not answered:  # timed out or cancelled: nobody waits for the answer any more
                conn.forget(req.header["req"])
        return req.answer(checked(reply), frames)


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

    def _driver(self) -> tuple[AsyncDriver, Backend]:
        backend = self.blocking.backend
        return AsyncDriver(backend), backend

    async def _run(self, make: Callable[[Backend], Any], settle: bool = True,
                   deadline: Deadline | None = None) -> Any:
        driver, backend = self._driver()
        return await driver.run(make(backend), settle=settle, deadline=deadline)

    # -- the seed's verbs ------------------------------------------------------------------
    async def run(self, task: BaseTask, block: bool = False, *,
                  timeout: float | None = None) -> Any:
        """Submit `task`; return its taskid, or with `block=True` its result (past `timeout`
        seconds, TimeoutError; the task goes on)."""
        return await self._run(lambda s: verbs.run(s, task, block, timeout), settle=False,
                               deadline=Deadline.of(timeout, "run") if block else None)

    async def get_task_result(self, taskid: int, block: bool = False, *,
                              timeout: float | None = None) -> Any:
        """A StringTask's `TaskResult` or a MapTask's value; None while it runs and `block` is false
        (with `block`, past `timeout` seconds, TimeoutError)."""
        return await self._run(lambda s: verbs.get_task_result(s, taskid, block, timeout),
                               deadline=Deadline.of(timeout, "get_task_result") if block
                               else None)

    async def abort(self, taskid: int) -> None:
        """Abort a queued or running task (it finishes as TaskAborted)."""
        return await self._run(lambda _: steps.abort(taskid))

    async def barrier(self, taskids: Any, progress: bool | None = False, *,
                      timeout: float | None = None) -> None:
        """Wait until every task in `taskids` has finished (failed and unknown ones count).
        Past `timeout` seconds, TimeoutError. The tasks are not this call's: cancelling it
        leaves them running."""
        return await self._run(lambda s: verbs.barrier(s, taskids, progress, timeout),
                               deadline=Deadline.of(timeout, "barrier"))

    async def spin(self) -> bool:
        return await self._run(lambda _: steps.spin())

    async def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        return await self._run(lambda _: steps.queue_status(verbose))

    async def clear(self, taskids: Any = None) -> int:
        return await self._run(lambda s: verbs.clear(s, taskids))

    async def put(self, obj: Any) -> ObjectRef:
        """`TaskClient.put` as a coroutine (`await ref.release()` drops the value)."""
        return await self._run(lambda b: verbs.put(b, obj, lambda tid: self.clear([tid])))

    async def map(self, func: Callable[..., Any], /, *sequences: Iterable[Any],
                  chunksize: int | None = None, progress: bool | None = False,
                  timeout: float | None = None) -> list[Any]:
        """`TaskClient.map` as a coroutine: results in input order, or one CompositeError.
        Past `timeout` seconds, TimeoutError. Cancelling it (or the timeout, or any exception
        that ends it early) aborts its tasks still queued or running."""
        return await self.map_with(NO_OPTIONS, func, sequences, chunksize, progress, timeout)

    async def map_with(self, options: TaskOptions, func: Callable[..., Any],
                       sequences: Sequence[Iterable[Any]], chunksize: int | None = None,
                       progress: bool | None = False, timeout: float | None = None) -> list[Any]:
        """`map` with these task options on every chunk task (what `options(...).map` calls)."""
        return await self._run(lambda s: verbs.map_elements(s, options, func, sequences,
                                                            chunksize, progress, timeout),
                               deadline=Deadline.of(timeout, "map", aborts=True))

    # -- beyond the seed -------------------------------------------------------------------
    async def engines(self) -> list[dict[str, Any]]:
        return await self._run(lambda _: steps.engines())

    async def retire_engines(self, engineids: list[int]) -> list[int]:
        """See TaskClient.retire_engines."""
        return await self._run(lambda _: steps.retire_engines(list(engineids)))

    async def statistics(self) -> dict[str, Any]:
        return await self._run(lambda _: steps.statistics())

    async def activity(self, since: int = 0) -> dict[str, Any]:
        return await self._run(lambda _: steps.activity(since))

    async def task_info(self, taskid: int) -> dict[str, Any]:
        return await self._run(lambda _: verbs.task_info(taskid))

    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncTaskFuture:
        """Run `func(*args, **kwargs)` on an engine; an awaitable future at once (no await)."""
        return self.submit_with(NO_OPTIONS, func, args, kwargs)

    def submit_with(self, options: TaskOptions, func: Callable[..., Any], args: Sequence[Any],
                    kwargs: dict[str, Any]) -> AsyncTaskFuture:
        """`submit` with these task options (what `options(...).submit` calls)."""
        driver, backend = self._driver()
        return driver.adopt(verbs.submit(backend, options, func, args, kwargs))

    def future(self, taskid: int) -> AsyncTaskFuture:
        """An awaitable future for a task submitted before."""
        driver, backend = self._driver()
        return driver.adopt(backend.futures_for([taskid])[0])

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
        return await self._run(lambda s: verbs.wait(s, futures_or_ids, timeout, progress),
                               deadline=Deadline.of(timeout, "wait"))

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], *, ordered: bool = True,
             chunksize: int | None = None, max_outstanding: int | None = None,
             progress: bool | None = False) -> AsyncIterator[Any]:
        """`TaskClient.imap` as an async iterator: `async for y in tc.imap(f, xs): ...`."""
        return self.imap_with(NO_OPTIONS, func, iterable, ordered, chunksize, max_outstanding,
                              progress)

    def imap_with(self, options: TaskOptions, func: Callable[..., Any], iterable: Iterable[Any],
                  ordered: bool = True, chunksize: int | None = None,
                  max_outstanding: int | None = None,
                  progress: bool | None = False) -> AsyncIterator[Any]:
        """`imap` with these task options on every chunk task (what `options(...).imap`
        calls)."""
        driver, backend = self._driver()
        return driver.stream(verbs.imap_elements(backend, options, func, iterable, ordered,
                                                 chunksize, max_outstanding, progress))

    async def run_all(self, task: BaseTask, *, timeout: float | None = None) -> dict[int, Any]:
        """One copy of `task` on every live engine; engineid -> result (see TaskClient).
        Past `timeout` seconds, TimeoutError; that, cancelling it or any exception ending it
        early aborts the copies still queued or running."""
        return await self._run(lambda s: verbs.run_all(s, task, timeout),
                               deadline=Deadline.of(timeout, "run_all", aborts=True))
