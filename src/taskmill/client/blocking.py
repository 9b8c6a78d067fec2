"""The blocking client, `TaskClient` (the seed's `BlockingTaskClient`): each verb in one line.

    tc.map(f, xs) --> verbs.map_elements(backend, ...) (a generator of steps, verbs.py)
                  --> Backend.run carries each step out, blocking this thread:
                      caller --request--> [send socket] --> controller --reply--> I/O thread
                      --> the request's Future --> the verb reads it and goes on

How a call travels (connection.py): the caller sends on its own socket; the I/O thread reads
every reply and result and resolves the caller's Future. Tasks are pickled here, once, and
results are unpickled here, lazily, by the caller that asked for them (futures.py).
`submit` never waits: its tasks go in batches behind the one unanswered submit (submitter.py).
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from ..task import BaseTask
from ..wire import ship_local_modules
from . import steps, verbs
from .backend import Backend, check_client_timeouts
from .connection import RECONNECT_TIMEOUT
from .executor import TaskExecutor
from .futures import TaskFuture
from .joblib_backend import register as register_joblib
from .objects import ObjectRef
from .options import NO_OPTIONS, TaskOptions
from .seedmap import ParallelFunction, TaskMapper


class TaskClient:
    """Submit tasks to a taskmill controller and collect their results (every verb of the seed's).

    `timeout`: seconds to wait for the controller at construction (and, beyond its silence,
    for the answer to a quick request such as `queue_status` or `abort`).
    `reconnect_timeout`: while the controller does not answer (it was killed and is being
    restarted, stopped, the network is cut), calls go on waiting, quick ones too, for up to
    this many seconds of silence; then every blocked call, every unfinished future and every later call raises
    `ControllerUnreachable`. If the controller answers again later (started again on the same
    connection file), the client works again for new calls; what failed stays failed, and
    tasks whose submit was not acknowledged may or may not have been stored.
    Blocking verbs take their own keyword-only `timeout` (seconds): past it, the builtin
    `TimeoutError`, and the tasks are left as they are (a map that ends so aborts its tasks).

    `backend` is the connection and futures machinery underneath (for taskmill's own
    modules and tests; see taskmill.client.backend).
    """

    def __init__(self, connection: str | os.PathLike[str] | None = None, *,
                 timeout: float = 10.0, reconnect_timeout: float = RECONNECT_TIMEOUT) -> None:
        check_client_timeouts(timeout, reconnect_timeout)
        # Modules beside the script or in the working folder, which engines cannot import,
        # travel by value from now on (see wire.is_local_module).
        ship_local_modules()
        self.backend = Backend(connection, timeout, reconnect_timeout)
        self.backend.front = weakref.ref(self)
        self.connection_file = self.backend.connection.path

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection; futures still waiting fail with RuntimeError."""
        self.backend.close()

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        backend = getattr(self, "backend", None)
        # (While the interpreter tears down, the client was closed at exit already, and its
        # daemon threads are stopped, maybe holding locks that closing would wait for.)
        if backend is not None and not sys.is_finalizing():
            try:
                backend.connection.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    # -- the seed's verbs ------------------------------------------------------------------
    def run(self, task: BaseTask, block: bool = False, *, timeout: float | None = None) -> Any:
        """Submit `task`; return its taskid, or with `block=True` its result (then past
        `timeout` seconds, TimeoutError; the task goes on)."""
        return self.backend.run(verbs.run(self.backend, task, block, timeout), settle=False,
                                deadline=steps.Deadline.of(timeout, "run") if block else None)

    def get_task_result(self, taskid: int, block: bool = False, *,
                        timeout: float | None = None) -> Any:
        """A StringTask's TaskResult or a MapTask's value; None while it runs and `block` is false.

        With `block=True`, waits until it has finished; past `timeout` seconds (None: no
        limit), TimeoutError, and the task goes on. IndexError for an unknown or cleared id
        (any int outside 0..2**63-1 is one)."""
        return self.backend.run(verbs.get_task_result(self.backend, taskid, block, timeout),
                                deadline=steps.Deadline.of(timeout, "get_task_result") if block
                                else None)

    def abort(self, taskid: int) -> None:
        """Abort a queued or running task (it finishes as TaskAborted)."""
        return self.backend.run(steps.abort(taskid))

    def barrier(self, taskids: int | Sequence[int], progress: bool | None = False, *,
                timeout: float | None = None) -> None:
        """Wait until every task in `taskids` has finished (failed and unknown ones count).

        `taskids` may hold TaskFutures too. `progress=True` draws a bar (then the tasks'
        results are streamed here and dropped); `None` draws one only on a terminal.
        Past `timeout` seconds (None: no limit), TimeoutError. The tasks are not this call's:
        an interrupted barrier (Ctrl-C, a timeout) leaves them running.
        """
        return self.backend.run(verbs.barrier(self.backend, taskids, progress, timeout),
                                deadline=steps.Deadline.of(timeout, "barrier"))

    def spin(self) -> bool:
        """Run the scheduler once; True if it dispatched anything."""
        return self.backend.run(steps.spin())

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        """`scheduled`, `pending`, `succeeded`, `failed`: counts, or taskid lists if verbose."""
        return self.backend.run(steps.queue_status(verbose))

    def clear(self, taskids: int | Sequence[int] | None = None) -> int:
        """Drop finished results (all, one id, or a list); return how many were dropped.
        KeyError names the ids that had no finished result (the others are dropped); its
        `missing` attribute lists them all."""
        return self.backend.run(verbs.clear(self.backend, taskids))

    def put(self, obj: Any) -> ObjectRef:
        """Store `obj` once in the controller's store; the ObjectRef stands for it among
        tasks' arguments (each engine gets it once and keeps it). `ref.release()` or
        `clear(ref.taskid)` drops it."""
        return self.backend.run(verbs.put(self.backend, obj, lambda tid: self.clear([tid])))

    def map(self, func: Callable[..., Any], /, *sequences: Iterable[Any],
            chunksize: int | None = None, progress: bool | None = False,
            timeout: float | None = None) -> list[Any]:
        """Load-balanced `map`: a list equal to `list(map(func, *sequences))`.

        Elements are sent in chunks (with `chunksize=None`, enough chunks to keep every engine
        busy, at most 2000 elements each, and none larger than the controller accepts in one
        message); every failure is reported in one CompositeError naming each failed index.
        `progress=True` draws a tqdm bar on stderr (`None`: only on a terminal). Task options:
        `client.options(retries=..., ...).map(...)`. Past `timeout` seconds (None: no limit),
        TimeoutError. Whatever ends the map early (Ctrl-C, the timeout, any exception) aborts
        its tasks still queued or running: their results could reach nobody.
        """
        return self.map_with(NO_OPTIONS, func, sequences, chunksize, progress, timeout)

    def map_with(self, options: TaskOptions, func: Callable[..., Any],
                 sequences: Sequence[Iterable[Any]], chunksize: int | None = None,
                 progress: bool | None = False, timeout: float | None = None) -> list[Any]:
        """`map` with these task options on every chunk task (what `options(...).map` calls)."""
        return self.backend.run(verbs.map_elements(self.backend, options, func, sequences,
                                                   chunksize, progress, timeout),
                                deadline=steps.Deadline.of(timeout, "map", aborts=True))

    def mapper(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
               recovery_task: BaseTask | None = None, depend: Any = None,
               block: bool = True) -> TaskMapper:
        """A seed-compatible mapper: one MapTask per element, the first failure raised."""
        return TaskMapper(self, clear_before=clear_before, clear_after=clear_after,
                          retries=retries, recovery_task=recovery_task, depend=depend,
                          block=block)

    def parallel(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
                 recovery_task: BaseTask | None = None, depend: Any = None,
                 block: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A decorator: the decorated function maps itself over the sequences it is given."""

        def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
            m = self.mapper(clear_before, clear_after, retries, recovery_task, depend, block)
            return ParallelFunction(m, f)

        return decorate

    # -- beyond the seed -------------------------------------------------------------------
    def engines(self) -> list[dict[str, Any]]:
        """Every engine the controller knows: id, host, pid, properties, state, tasks done."""
        return self.backend.run(steps.engines())

    def retire_engines(self, engineids: list[int]) -> list[int]:
        """Take engines out of scheduling and stop each once it holds nothing (as dask's
        `retire_workers`): no new task goes to them, tasks buffered there that have not started
        are queued again (uncounted), a running one finishes. Returns the ids that retire (the
        others are unknown or gone). `engines()` shows them as `retiring`, then `retired`.
        A local engine that retired is not restarted (`Cluster.adapt` uses this)."""
        return self.backend.run(steps.retire_engines(list(engineids)))

    def statistics(self) -> dict[str, Any]:
        """What the controller is doing: queue, engines (state, current task, tasks done,
        failures, last heartbeat, properties), tasks/s over the last minute, task durations,
        messages, engine deaths, refused messages by reason."""
        return self.backend.run(steps.statistics())

    def activity(self, since: int = 0) -> dict[str, Any]:
        """What happened recently: the attempts finished after sequence number `since` (which
        engine ran which task, when), the attempts running now, the latest failures, and
        per-second throughput and queue lengths (see taskmill.stats.RecentActivity.snapshot)."""
        return self.backend.run(steps.activity(since))

    def task_info(self, taskid: int) -> dict[str, Any]:
        """One task's `state` (scheduled, pending, succeeded, failed or unknown) and metadata
        (engine, times, attempts, output, error with its traceback), without unpickling, and
        its `story`: the scheduler's newest moves of it, oldest first, as {event, from, to,
        why} (e.g. "dispatched to engine 0 (attempt 1)"; kept while the task is active and for
        the most recently finished tasks)."""
        return self.backend.run(verbs.task_info(taskid))

    def register_joblib_backend(self, name: str = "taskmill", make_default: bool = False) -> None:
        """Register a joblib backend called `name` that runs joblib's batches on these engines:
        then `with joblib.parallel_config(backend=name): Parallel(n_jobs=-1)(...)` (n_jobs=-1:
        every live engine; n_jobs=k: at most k batches out at once). See
        taskmill.client.joblib_backend; ImportError if joblib is not installed."""
        register_joblib(self, name, make_default)

    # -- futures -----------------------------------------------------------------------------
    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run `func(*args, **kwargs)` on an engine; return its TaskFuture at once.

        Every keyword goes to `func`. Task options go on `options()`:
        `tc.options(retries=2, timeout=5, after=[fut]).submit(func, x, retries="func's own")`.
        """
        return verbs.submit(self.backend, NO_OPTIONS, func, args, kwargs)

    def submit_with(self, options: TaskOptions, func: Callable[..., Any], args: Sequence[Any],
                    kwargs: dict[str, Any]) -> TaskFuture:
        """`submit` with these task options (what `options(...).submit` calls)."""
        return verbs.submit(self.backend, options, func, args, kwargs)

    def options(self, *, retries: int = 0, timeout: float | None = None, depend: Any = None,
                after: Any = None, recovery_task: BaseTask | None = None,
                clear_before: bool = False, clear_after: bool = False) -> TaskOptions:
        """Task options for `submit`, `map` and `imap`: see `TaskOptions`."""
        return TaskOptions(self, retries=retries, timeout=timeout, depend=depend, after=after,
                           recovery_task=recovery_task, clear_before=clear_before,
                           clear_after=clear_after)

    def executor(self, **task_options: Any) -> TaskExecutor:
        """A `concurrent.futures.Executor` over this client, these task options (those of
        `options()`) on every task: `with tc.executor(retries=1) as ex: ex.map(f, xs)`."""
        return TaskExecutor(self, **task_options)

    def future(self, taskid: int) -> TaskFuture:
        """A TaskFuture for a task submitted before (by any client); IndexError from
        `result()` if it is unknown or was cleared."""
        return self.backend.futures_for([taskid])[0]

    def wait(self, futures_or_ids: Any, *, timeout: float | None = None,
             progress: bool | None = None) -> list[Future]:
        """Wait until every future or taskid given has finished; return their futures.

        Taskids become TaskFutures (so `[f.result() for f in tc.wait(ids)]` works).
        `progress=None` draws a bar when stderr is a terminal, `True` always, `False` never.
        Past `timeout` seconds, TimeoutError. The tasks are not this call's: an interrupted
        wait (Ctrl-C, a timeout) leaves them running.
        """
        return self.backend.run(verbs.wait(self.backend, futures_or_ids, timeout, progress),
                                deadline=steps.Deadline.of(timeout, "wait"))

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], *, ordered: bool = True,
             chunksize: int | None = None, max_outstanding: int | None = None,
             progress: bool | None = False) -> Iterator[Any]:
        """A lazy load-balanced map over one iterable of any length, even an endless one.

        Yields `func(item)` in input order (`ordered=False`: as they finish). Items are pulled
        only while fewer than `max_outstanding` are sent and not yet yielded (None: 8 chunks
        per engine), so memory stays bounded. `chunksize=None` starts at one item per task and
        grows chunks to about 0.1 s of work each. A failed element raises its exception when
        its turn comes; closing the generator early (break, `close()`) aborts what is still
        out. The chunks' results are dropped from the controller as they are handed out.
        """
        return self.imap_with(NO_OPTIONS, func, iterable, ordered, chunksize, max_outstanding,
                              progress)

    def imap_with(self, options: TaskOptions, func: Callable[..., Any], iterable: Iterable[Any],
                  ordered: bool = True, chunksize: int | None = None,
                  max_outstanding: int | None = None,
                  progress: bool | None = False) -> Iterator[Any]:
        """`imap` with these task options on every chunk task (what `options(...).imap`
        calls)."""
        return self.backend.stream(verbs.imap_elements(self.backend, options, func, iterable,
                                                       ordered, chunksize, max_outstanding,
                                                       progress))

    def run_all(self, task: BaseTask, *, timeout: float | None = None) -> dict[int, Any]:
        """Run one copy of `task` on every live engine (for set-up); engineid -> result.

        Each copy has `depend={"engineid": k}` added. Failures (a MapTask's exception, an
        engine that died) are raised together as a CompositeError naming the engines. Past
        `timeout` seconds (None: no limit), TimeoutError; whatever ends it early (that, Ctrl-C)
        aborts the copies still queued or running.
        """
        return self.backend.run(verbs.run_all(self.backend, task, timeout),
                                deadline=steps.Deadline.of(timeout, "run_all", aborts=True))


BlockingTaskClient = TaskClient
