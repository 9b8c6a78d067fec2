"""A joblib parallel backend that runs joblib's batches as tasks: `tc.register_joblib_backend()`.

    Parallel(n_jobs=k)(delayed(f)(x) for x in xs)      (inside parallel_config(backend="taskmill"))
      joblib groups the calls into batches (its own auto batch size) --> TaskmillBackend.submit
      --> at most k batches out at once: client.submit(batch) (the rest wait here, in order)
      --> controller --> an engine calls the batch --> done --> the client's I/O thread
      --> this backend's callback thread: the next waiting batch goes out, then joblib's
          callback: retrieve_result_callback(future) unpickles the results here and joblib
          dispatches its next batch (another submit)

The I/O thread only hands finished futures over: unpickling results and pickling the next batch
happen on the callback thread (one per backend), never on the thread that reads the sockets.
`n_jobs=-1` is the number of live engines (asked of the controller when a Parallel call starts),
`-2` one fewer, as joblib counts CPUs. The batches' results (values, errors, aborts) are
cleared from the controller's store once read, at the end of each Parallel call; an error in a
batch (or joblib's `timeout`) makes joblib abort the call, and `abort_everything` aborts every
batch still out, waiting for the controller at most that timeout (see there). Inside a task,
nested joblib calls run sequentially: an engine is one worker.

joblib is not a dependency of taskmill: this module imports it only when `register` or
`backend_class` is called (ImportError naming `pip install joblib` if it is missing). The
client is anything with `submit`, `engines`, `clear` and a `backend` whose `abort_futures`
aborts within a bound (the TaskClient): this module imports no other module of the client.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import Any, Protocol

from ..defaults import ENGINE_GONE_STATES
from .futures import when_done

JOBLIB_MINIMUM = (1, 3)  # parallel_config, retrieve_result_callback (1.5 renamed apply_async)
ABORT_WAIT = 10.0  # as a map's: the longest wait for the aborts of a call without a timeout
MIN_ABORT_WAIT = 1.0  # (a call with a shorter timeout still gives a live controller this long)

log = logging.getLogger("taskmill.client")


class JoblibClient(Protocol):
    """What the backend asks of the client it runs on (a TaskClient)."""

    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future: ...

    def engines(self) -> list[dict[str, Any]]: ...

    def clear(self, taskids: int | Sequence[int] | None = None) -> int: ...

    #: its `abort_futures(futs, wait)` aborts, waiting at most `wait` seconds for the
    #: controller, and says whether it confirmed them all (client/backend.py)
    backend: Any


def import_joblib() -> ModuleType:
    """joblib, or an ImportError that says how to get it (or a recent enough one)."""
    try:
        import joblib
    except ImportError as e:
        raise ImportError("taskmill's joblib backend needs joblib, which is not installed: "
                          "pip install joblib") from e
    version = tuple(int(p) for p in joblib.__version__.split(".")[:2] if p.isdigit())
    if version < JOBLIB_MINIMUM:
        need = ".".join(map(str, JOBLIB_MINIMUM))
        raise ImportError(f"taskmill's joblib backend needs joblib>={need} (this is "
                          f"{joblib.__version__}): pip install -U joblib")
    return joblib


def register(client: JoblibClient, name: str = "taskmill", make_default: bool = False) -> None:
    """Register a joblib backend called `name` that runs on `client`'s engines; with
    `make_default`, joblib uses it wherever no other backend is asked for."""
    joblib = import_joblib()
    joblib.register_parallel_backend(name, functools.partial(backend_class(), client),
                                     make_default=make_default)


def live_engines(client: JoblibClient) -> int:
    return sum(1 for e in client.engines() if e.get("state") not in ENGINE_GONE_STATES)


def jobs_for(n_jobs: int | None, engines: int) -> int:
    """joblib's `n_jobs` as a number of batches out at once: negative counts from the engines
    (-1: all of them). Never 1 unless 1 was asked: joblib runs an effective count of 1 in the
    calling process, and `n_jobs=-1` on a one-engine cluster must still run on the engine."""
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 in Parallel has no meaning")
    if n_jobs is None:
        n_jobs = -1
    if n_jobs == 1:
        return 1
    if n_jobs < 0:
        n_jobs = engines + 1 + n_jobs
    return max(n_jobs, 2)


@functools.cache
def backend_class() -> type:
    """The backend class (built once, on first use: it subclasses joblib's own classes)."""
    import_joblib()
    from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, SequentialBackend

    class TaskmillBackend(AutoBatchingMixin, ParallelBackendBase):
        """Runs each joblib batch as one task on the engines of `client` (see the module)."""

        supports_retrieve_callback = True  # results come through submit's callback
        supports_timeout = True
        supports_return_generator = True
        supports_sharedmem = False  # (require="sharedmem" falls back to threads, here)
        uses_threads = False
        default_n_jobs = -1

        def __init__(self, client: JoblibClient, nesting_level: int | None = None,
                     inner_max_num_threads: int | None = None, **kwargs: Any) -> None:
            super().__init__(nesting_level=nesting_level,
                             inner_max_num_threads=inner_max_num_threads, **kwargs)
            self.client = client
            self.n_jobs = 1
            self._lock = threading.Lock()
            self._out: set[Future] = set()  # submitted, not finished
            self._waiting: deque[tuple[Callable[[], Any], Future]] = deque()
            self._read: list[int] = []  # taskids whose results joblib took
            self._callbacks: ThreadPoolExecutor | None = None

        # -- how many --------------------------------------------------------------------
        def effective_n_jobs(self, n_jobs: int | None) -> int:
            if n_jobs == 1:
                return 1
            return jobs_for(n_jobs, live_engines(self.client))

        def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: Any = None,
                      require: Any = None, **backend_kwargs: Any) -> int:
            self.parallel = parallel
            self.n_jobs = self.effective_n_jobs(n_jobs)
            with self._lock:
                if self._callbacks is None:
                    self._callbacks = ThreadPoolExecutor(
                        1, thread_name_prefix="taskmill-joblib-callbacks")
            return self.n_jobs

        # -- sending ---------------------------------------------------------------------
        def submit(self, func: Callable[[], Any],
                   callback: Callable[[Any], Any] | None = None) -> Future:
            """Send the batch `func` now if fewer than n_jobs batches are out, else when one
            finishes; `callback(future)` runs on the callback thread once it is done."""
            handle: Future = Future()
            if callback is not None:
                handle.add_done_callback(lambda _: callback(handle.result()))
            with self._lock:
                if len(self._out) >= self.n_jobs:
                    self._waiting.append((func, handle))
                    return handle
                fut = self._send(func)
            self._follow(fut, handle)
            return handle

        apply_async = submit  # (joblib before 1.5 calls it so)

        def _send(self, func: Callable[[], Any]) -> Future:  # under self._lock
            try:
                fut = self.client.submit(func)
            except Exception as e:  # noqa: BLE001 - unpicklable, closed client: joblib raises it
                fut = Future()
                fut.set_exception(e)
                return fut
            self._out.add(fut)
            return fut

        def _follow(self, fut: Future, handle: Future) -> None:
            when_done(fut, lambda f: self._post(self._finished, f, handle))  # (quick)

        def _post(self, fn: Callable[..., Any], *args: Any) -> None:
            """Run `fn` on the callback thread (dropped once the backend is terminated)."""
            pool = self._callbacks
            if pool is not None:
                try:
                    pool.submit(fn, *args)
                except RuntimeError:  # terminated meanwhile: nobody waits for it
                    pass

        def _finished(self, fut: Future, handle: Future) -> None:  # on the callback thread
            with self._lock:
                self._out.discard(fut)
                nxt = None
                if self._waiting and len(self._out) < self.n_jobs:
                    func, next_handle = self._waiting.popleft()
                    nxt = (self._send(func), next_handle)
            if nxt is not None:
                self._follow(*nxt)
            handle.set_result(fut)  # runs joblib's callback, here

        def retrieve_result_callback(self, out: Future) -> Any:
            try:
                return out.result()
            finally:
                self._forget([out])

        def _forget(self, futs: Sequence[Future]) -> None:
            """Their results are read (or no longer wanted): clear them at the call's end."""
            ids = [t for f in futs if (t := getattr(f, "known_taskid", None)) is not None]
            with self._lock:
                self._read.extend(ids)

        # -- ending ----------------------------------------------------------------------
        def abort_everything(self, ensure_ready: bool = True) -> None:
            """Withdraw the batches not sent and abort those out, as a map does: waiting for
            the controller to confirm at most joblib's `timeout` (if the call has one, at
            least MIN_ABORT_WAIT; else ABORT_WAIT), less once it is silent (stopped,
            restarting), with a warning that names the aborts it has not confirmed (they are
            sent again once it answers). Their results are cleared then, or in the
            background once the controller answers. (Best effort: the error that made joblib
            abort is what it raises.)"""
            with self._lock:
                self._waiting.clear()
                out = list(self._out)
            timeout = getattr(self.parallel, "timeout", None)
            wait = ABORT_WAIT if timeout is None else min(ABORT_WAIT,
                                                          max(MIN_ABORT_WAIT, timeout))
            try:
                confirmed = self.client.backend.abort_futures(out, wait)
            except Exception:  # noqa: BLE001 - closed client: nothing to abort
                confirmed = False
            with self._lock:  # (their callbacks may never run: the call is over)
                self._out.difference_update(out)
            self._forget(out)
            if confirmed:
                self.clear_read()
                return
            with self._lock:  # (taken now: joblib's stop_call must not wait for them)
                read, self._read = self._read, []
            if read:  # (the clear follows the aborts, once the controller answers)
                threading.Thread(target=self._clear_later, args=(read,), daemon=True,
                                 name="taskmill-joblib-clears").start()

        def _clear_later(self, read: list[int]) -> None:
            try:
                self.client.clear(read)
            except KeyError:  # (already cleared by someone else)
                pass
            except Exception as e:  # noqa: BLE001 - a thread of its own: said, not raised
                log.warning("the results of an aborted joblib call could not be cleared from "
                            "the controller's store (%s); tc.clear() drops them", e)

        def stop_call(self) -> None:
            self.clear_read()

        def terminate(self) -> None:
            self.clear_read()
            with self._lock:
                pool, self._callbacks = self._callbacks, None
            if pool is not None:
                pool.shutdown(wait=False)

        def clear_read(self) -> None:
            """Drop the results joblib has read from the controller's store."""
            with self._lock:
                read, self._read = self._read, []
            if read:
                try:
                    self.client.clear(read)
                except KeyError:  # (already cleared by someone else)
                    pass

        def get_nested_backend(self) -> tuple[Any, int | None]:
            level = (self.nesting_level or 0) + 1
            return SequentialBackend(nesting_level=level), None

    TaskmillBackend.__module__ = __name__
    TaskmillBackend.__qualname__ = "TaskmillBackend"
    return TaskmillBackend
