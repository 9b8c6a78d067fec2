"""Callable `depend`s, called by the controller with a deadline.

A callable depend is user code that must run inside the controller (it decides where a task
may go, from each engine's properties). A slow one must not freeze the controller: while its
loop waits, no message is read, and engines would look dead. So each call runs on a worker
thread and the controller waits for it at most `budget` seconds. A call that takes longer
counts as False and the callable is given up on: it counts as False for every engine from
then on (so it can hold the controller up once, not once per engine or per pass), and the
controller reports it (a log line, `statistics()["refused"]["slow-depend"]`, and the task's
TaskTimeout names it if no engine ever takes the task). Python cannot stop a thread: the
call that overran finishes on its own, or never; when every worker is held by such calls,
later calls get fresh workers. Unpickling a depend is bounded the same way (`load`, with
DEPEND_LOAD_BUDGET): a closure over a large table may take long to load. Whatever a depend
raises, SystemExit and KeyboardInterrupt too, stays in its worker: the call counts as False,
the load is refused (user code must never stop the controller).

This module touches no socket and reads no clock of its own (the waits are the futures').
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

DEPEND_BUDGET = 0.1  # seconds a depend callable may take per call
DEPEND_LOAD_BUDGET = 0.5  # seconds the controller waits for one to unpickle
DEPEND_WORKERS = 4


class DependLoadError(Exception):
    """A depend callable could not be unpickled, or not within DEPEND_LOAD_BUDGET."""


def _verdict(fn: Callable[[Any], Any], properties: dict[str, Any]) -> tuple[bool, str | None]:
    """The answer, and what the callable raised (as text), if it raised."""
    try:
        return bool(fn(properties)), None
    except BaseException as e:  # noqa: BLE001 - user code: any exception counts as False
        return False, f"{type(e).__name__}: {e}"[:300]


def _load(loads: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return loads(), None
    except BaseException as e:  # noqa: BLE001 - user code: refused, the controller goes on
        return None, e


class DependRunner:
    """Runs depend callables on worker threads, each call bounded by `budget` seconds."""

    def __init__(self, budget: float = DEPEND_BUDGET, workers: int = DEPEND_WORKERS) -> None:
        self.budget = budget
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._overran: list[Future] = []  # calls past their deadline in the current pool
        self.given_up = 0  # callables given up on so far

    @property
    def overrunning(self) -> int:
        """Calls past their deadline that are still running (each holds a worker)."""
        return sum(1 for f in self._overran if not f.done())

    def guard(self, fn: Callable[[Any], Any], on_slow: Callable[[BoundedDepend], None],
              on_raise: Callable[[BoundedDepend, str], None] | None = None) -> BoundedDepend:
        """`fn` as the scheduler calls it; `on_slow` when it overran its budget (once),
        `on_raise` with the text of the first exception it raised."""
        return BoundedDepend(fn, self, on_slow, on_raise)

    def _worker_pool(self) -> ThreadPoolExecutor:
        self._overran = [f for f in self._overran if not f.done()]
        if self._pool is None or len(self._overran) >= self.workers:
            if self._pool is not None:  # every worker is held by an overrunning call
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="taskmill-depend")
            self._overran = []
        return self._pool

    def call(self, guard: BoundedDepend, properties: Any) -> bool:
        """The depend's answer for these properties: False if it raised anything."""
        fut = self._worker_pool().submit(_verdict, guard.fn, dict(properties))
        try:
            ok, error = fut.result(self.budget)
            if error is not None and guard.raised is None:
                guard.raised = error
                if guard.on_raise is not None:
                    guard.on_raise(guard, error)
            return ok
        except FutureTimeout:
            self._overran.append(fut)
            guard.slow = True
            self.given_up += 1
            guard.on_slow(guard)
            return False

    def load(self, loads: Callable[[], Any], budget: float = DEPEND_LOAD_BUDGET) -> Any:
        """`loads()` (a depend's unpickling) on a worker, waited for at most `budget`
        seconds; DependLoadError if it raised (anything) or took longer."""
        fut = self._worker_pool().submit(_load, loads)
        try:
            value, error = fut.result(budget)
        except FutureTimeout:
            self._overran.append(fut)
            raise DependLoadError(f"it took longer than {budget:g}s to unpickle") from None
        if error is not None:
            raise DependLoadError(f"unpickling it raised {error!r}")
        return value

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


class BoundedDepend:
    """A callable depend as the scheduler calls it: through its runner, with a deadline."""

    __slots__ = ("fn", "runner", "on_slow", "on_raise", "slow", "raised", "tid", "__weakref__")

    def __init__(self, fn: Callable[[Any], Any], runner: DependRunner,
                 on_slow: Callable[[BoundedDepend], None],
                 on_raise: Callable[[BoundedDepend, str], None] | None = None) -> None:
        self.fn = fn
        self.runner = runner
        self.on_slow = on_slow
        self.on_raise = on_raise
        self.slow = False
        self.raised: str | None = None  # the first exception it raised, as text
        self.tid: int | None = None  # the task it belongs to (set once the task has an id)

    def __call__(self, properties: Any) -> bool:
        if self.slow:
            return False
        return self.runner.call(self, properties)


