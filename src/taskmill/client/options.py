"""`TaskOptions`: task options for `submit`, `map` and `imap`, kept apart from the arguments.

    client.options(retries=2) --> TaskOptions --.submit(f, x)--> client.submit_with(options, f, ...)
    TaskOptions.task(f, args, kwargs) --> the MapTask a verb encodes (the options checked once)

It works for either front: the client it is bound to is a `TaskClient` or an
`AsyncTaskClient`, whose `submit_with`, `map_with` and `imap_with` it calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..task import BaseTask, MapTask


class TaskOptions:
    """Task options for `submit`, `map` and `imap`, kept apart from the function's arguments.

    `client.options(retries=2, timeout=5)` returns one. Its `submit(f, *args, **kwargs)`,
    `map(f, *sequences)` and `imap(f, iterable)` are the client's, with these options on every
    task they send, so the function's own keywords never clash with them:
    `tc.options(retries=2).submit(f, x, retries=7)` retries the task twice and passes
    `retries=7` to `f`. `options(**more)` makes a copy with more options on top. The options
    are those of `MapTask`: `retries`, `timeout`, `depend`, `after` (taskids or futures; an
    unknown id there, even one beyond any taskid such as 2**64, fails the task with
    DependencyError), `recovery_task`, `clear_before`, `clear_after`; they are checked here,
    at once.
    For `map` and `imap` they apply to each chunk task (a `timeout` bounds a whole chunk), and
    `recovery_task` is refused there, since its result would stand for a whole chunk.
    """

    __slots__ = ("client", "retries", "timeout", "depend", "after", "recovery_task",
                 "clear_before", "clear_after")
    NAMES = __slots__[1:]

    def __init__(self, client: Any = None, *, retries: int = 0, timeout: float | None = None,
                 depend: Any = None, after: Any = None, recovery_task: BaseTask | None = None,
                 clear_before: bool = False, clear_after: bool = False) -> None:
        self.client = client  # a TaskClient or an AsyncTaskClient
        self.retries = retries
        self.timeout = timeout
        self.depend = depend
        self.after = after
        self.recovery_task = recovery_task
        self.clear_before = clear_before
        self.clear_after = clear_after
        self.task(len)  # check the options now, not at the first submit

    def task(self, func: Callable[..., Any], args: Sequence[Any] = (),
             kwargs: dict[str, Any] | None = None) -> MapTask:
        """The MapTask that calls `func(*args, **kwargs)` with these options."""
        return MapTask(func, tuple(args), dict(kwargs or {}), self.clear_before,
                       self.clear_after, self.retries, self.recovery_task, self.depend,
                       timeout=self.timeout, after=self.after)

    def options(self, **changes: Any) -> TaskOptions:
        """A copy with `changes` on top of these options."""
        current = {name: getattr(self, name) for name in self.NAMES}
        unknown = set(changes) - set(self.NAMES)
        if unknown:
            raise TypeError(f"unknown task options {sorted(unknown)}; they are {list(self.NAMES)}")
        return TaskOptions(self.client, **{**current, **changes})

    def _bound(self) -> Any:
        if self.client is None:
            raise RuntimeError("these TaskOptions belong to no client; use client.options(...)")
        return self.client

    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """`client.submit(func, *args, **kwargs)` with these options."""
        return self._bound().submit_with(self, func, args, kwargs)

    def map(self, func: Callable[..., Any], /, *sequences: Iterable[Any],
            chunksize: int | None = None, progress: bool | None = False,
            timeout: float | None = None) -> Any:
        """`client.map(...)` with these options on every chunk task."""
        return self._bound().map_with(self, func, sequences, chunksize, progress, timeout)

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], *, ordered: bool = True,
             chunksize: int | None = None, max_outstanding: int | None = None,
             progress: bool | None = False) -> Any:
        """`client.imap(...)` with these options on every chunk task."""
        return self._bound().imap_with(self, func, iterable, ordered, chunksize, max_outstanding,
                                   progress)

    def __repr__(self) -> str:
        set_ = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.NAMES
                         if getattr(self, n) != getattr(NO_OPTIONS, n, None))
        return f"TaskOptions({set_})"


NO_OPTIONS = TaskOptions()
