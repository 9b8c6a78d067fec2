"""`TaskExecutor`: a `concurrent.futures.Executor` over the blocking `TaskClient`.

    tc.executor(retries=2) --> TaskExecutor(tc, retries=2): the options kept as a TaskOptions
    ex.submit(f, x)        --> options.submit(f, x) --> a TaskFuture, remembered until done
    ex.map(f, xs)          --> every item submitted at once (chunksize=1: one task per item;
                               chunksize=n: one chunk task per n items, as maps.py encodes
                               them for `tc.map`) --> an iterator that waits for each in turn
    ex.shutdown(...)       --> no more submits; cancel what had not started; wait for the rest

It is what code written for `ProcessPoolExecutor` expects, so such code switches by one line
(`with tc.executor() as ex:`), with two differences that follow from where tasks run: task
options (retries, timeout, depend, after, ...) come from `tc.executor(...)`, and "started"
means what the client can know of a task (see `TaskExecutor.shutdown`). The executor does not
own the client: shutting it down leaves `tc` open, and the client's other verbs go on working.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import wait as wait_futures
from typing import Any

from .futures import TaskFuture, when_done
from .maps import check_map_options, check_positive, chunk_entries, chunked, encode_chunks
from .options import TaskOptions

SUBMIT_ANSWER_WAIT = 10.0  # shutdown(cancel_futures=True) waits at most this long for a taskid
NO_WAIT_CANCEL_WAIT = 10.0  # shutdown(wait=False, cancel_futures=True): the longest wait


class TaskExecutor(Executor):
    """A `concurrent.futures.Executor` whose work runs as tasks on the engines.

    Made by `tc.executor(**task_options)`; the options (those of `tc.options`) go on every
    task it sends. `submit` returns the client's `TaskFuture` (a `concurrent.futures.Future`);
    `map` and `shutdown` behave as `ProcessPoolExecutor`'s (see each); as a context manager
    its exit is `shutdown(wait=True)`. It never closes the client it was made from.
    """

    def __init__(self, client: Any, **task_options: Any) -> None:
        self.client = client  # a TaskClient (the blocking front: map waits in its caller)
        self.options: TaskOptions = client.options(**task_options)
        self.is_shutdown = False
        self._shutdown_lock = threading.Lock()  # submit vs shutdown
        self._futures_lock = threading.Lock()  # the unfinished futures (never held to wait)
        self._futures: set[Future] = set()

    # -- submitting ------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run `fn(*args, **kwargs)` on an engine; its TaskFuture at once. Every keyword goes
        to `fn`. After `shutdown`, RuntimeError."""
        with self._shutdown_lock:
            self._check_open()
            fut = self.options.submit(fn, *args, **kwargs)
            self._remember([fut])
        return fut

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """`map(fn, *iterables)` on the engines, as `ProcessPoolExecutor.map`.

        Every item is submitted now (the iterables are read to the shortest, as `zip` does);
        the iterator this returns yields the results in order, each as soon as it is there.
        With `timeout`, counted from this call, a result not there in time raises
        TimeoutError. An item whose `fn` raised raises that exception at its turn. With
        `chunksize` > 1, items travel `chunksize` to a task (as `tc.map`'s chunks do;
        `recovery_task` is refused then). Whatever ends the iteration early (an exception,
        the timeout, `close()`, `break` and dropping the iterator) aborts what is still out.
        """
        if chunksize is None:
            raise ValueError("chunksize must be an int >= 1, not None")
        check_positive(chunksize, "chunksize")
        self._check_open()
        end = None if timeout is None else time.monotonic() + timeout
        args = list(zip(*iterables, strict=False))  # to the shortest, as Executor.map
        if chunksize == 1:
            futs = [self.submit(fn, *a) for a in args]
            return results_in_order(self.client.backend, [(f, None) for f in futs], end,
                                    timeout)
        check_map_options(self.options)
        backend = self.client.backend
        chunks, encoded = encode_chunks(backend, self.options, fn, chunked(args, chunksize),
                                        split=False)
        with self._shutdown_lock:
            self._check_open()
            futs = backend.submit_futures(encoded, checked=True)
            self._remember(futs)
        return results_in_order(backend, [(f, len(c)) for f, c in zip(futs, chunks, strict=True)],
                                end, timeout)

    # -- shutting down -----------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submits (they raise RuntimeError from now on); the client stays open.

        `cancel_futures=True` cancels this executor's futures whose task had not started.
        What taskmill can know of "started": a task still queued in this client (not yet
        sent) has not, nor one the controller reports as `scheduled` (waiting: for an engine,
        or for its `after`/`depend`); one it reports `pending` (handed to an engine, even if
        that engine has it buffered behind another) has, and goes on. Those not started are
        withdrawn or aborted and their futures cancelled. A task handed to an engine in the
        moment between the controller's answer and the abort is aborted too (its future is
        cancelled just the same). `wait=True` then waits until every future this executor
        made has finished or been cancelled.

        The cancelling takes a round trip to the controller (which tasks are still waiting),
        and then one for the aborts. `wait=False` waits for those only while the controller
        is heard: if it is silent (stopped, restarting, cut off) for about 1.5 s, shutdown
        returns, with a warning naming the taskids whose cancel is unconfirmed; they are
        cancelled once it answers, if this process still runs then.
        """
        with self._shutdown_lock:
            self.is_shutdown = True
        with self._futures_lock:
            unfinished = [f for f in self._futures if not f.done()]
        if cancel_futures and unfinished:
            if wait:  # (its waits are bounded by the client's timeouts)
                self._cancel_unstarted(unfinished)
            else:
                self._cancel_while_heard(unfinished)
        if wait and unfinished:
            wait_futures(unfinished)

    def _cancel_while_heard(self, futs: Sequence[Future]) -> None:
        """`_cancel_unstarted` on a thread of its own, waited for only while the controller is
        heard (at most NO_WAIT_CANCEL_WAIT seconds): past that, a warning names the taskids
        not settled yet, and the thread goes on (it cancels them once the controller answers,
        if this process still runs)."""
        def cancel() -> None:
            try:
                self._cancel_unstarted(futs)
            except Exception:  # noqa: BLE001 - closed or unreachable: the futures fail anyway
                pass

        def finished(wait: float) -> bool:
            thread.join(wait)
            return not thread.is_alive()

        thread = threading.Thread(target=cancel, daemon=True, name="taskmill-executor-cancels")
        thread.start()
        backend = self.client.backend
        if backend.connection.wait_while_heard(finished, NO_WAIT_CANCEL_WAIT):
            return
        unsure = [t for f in futs if isinstance(f, TaskFuture) and not f.done()
                  and (t := f.known_taskid) is not None]
        backend.say_unheard(unsure, [False] * len(unsure),
                            what="shutdown(cancel_futures=True)'s cancel (if not started) of")

    def _cancel_unstarted(self, futs: Sequence[Future]) -> None:
        backend = self.client.backend
        withdrawn = backend.submitter.withdraw(futs)  # never sent: cancelled, no round trip
        rest = [f for f in futs if f not in withdrawn and not f.done()]
        if not rest:
            return
        # Submits travel ahead of this request, so the answer knows every task sent before it.
        waiting = set(self.client.queue_status(verbose=True)["scheduled"])
        for f in rest:
            if f.done() or not isinstance(f, TaskFuture):
                continue
            if f.wait_submit_answered(SUBMIT_ANSWER_WAIT) and f.known_taskid in waiting:
                f.cancel()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.is_shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _remember(self, futs: Sequence[Future]) -> None:
        with self._futures_lock:
            self._futures.update(futs)
        for f in futs:
            when_done(f, self._forget)  # (at once, here, if it is done already)

    def _forget(self, fut: Future) -> None:  # on the client's I/O thread, mostly
        with self._futures_lock:
            self._futures.discard(fut)

    def __repr__(self) -> str:
        state = "shut down" if self.is_shutdown else f"{len(self._futures)} unfinished"
        return f"<TaskExecutor {self.options!r} {state}>"


def results_in_order(backend: Any, parts: list[tuple[TaskFuture, int | None]],
                     end: float | None, timeout: float | None) -> Iterator[Any]:
    """The values of `parts`, in order: each is a future and how many items its chunk task
    carries (None: a submit's future, whose result is the value). Each is waited for until
    `end` (a `time.monotonic()` time; past it, TimeoutError). Ending early (that, an item's
    exception, `close()`) aborts the futures not yet handed out: their results could reach
    nobody."""
    parts.reverse()
    try:
        while parts:
            fut, n = parts[-1]
            remaining = None if end is None else max(0.0, end - time.monotonic())
            if not wait_futures([fut], timeout=remaining).done:
                raise TimeoutError(f"Executor.map: a result was not there within {timeout:g}s "
                                   "(timeout=); what was still out is aborted")
            parts.pop()
            if n is None:
                yield fut.result()  # raises the task's exception, or CancelledError
                continue
            for ok, value in chunk_entries(fut, n):
                if not ok:
                    raise value
                yield value
    finally:
        left = [f for f, _ in parts if not f.done()]
        if left:
            try:
                backend.abort_futures(left)
            except Exception:  # noqa: BLE001 - closed or unreachable: nothing to abort
                pass
