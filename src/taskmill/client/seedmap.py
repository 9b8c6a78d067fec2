"""The seed's mapper: `TaskClient.mapper()` and `@TaskClient.parallel()`.

    mapper.map(f, xs) --> verbs.seed_map (one MapTask per element) --> the client's backend
        submit{tasks} --> taskids --> result{tids, block} --> values in order (the first
        failure raised), or with block=False the taskids

Only the blocking client has these (as the seed had).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..task import BaseTask, MapTask
from . import verbs
from .backend import Backend
from .steps import Deadline


class HasSession(Protocol):
    backend: Backend


class TaskMapper:
    """The seed's IMapper: `.map(func, *sequences)`, one MapTask per element.

    As in the seed, the client is `task_controller` and the options are plain attributes of
    their own names (`clear_before`, `clear_after`, `retries`, `recovery_task`, `depend`,
    `block`); a change to one applies to the next `map`, and is checked there."""

    def __init__(self, client: HasSession, *, clear_before: bool = False,
                 clear_after: bool = False, retries: int = 0,
                 recovery_task: BaseTask | None = None, depend: Any = None,
                 block: bool = True) -> None:
        self.task_controller = client
        self.clear_before = clear_before
        self.clear_after = clear_after
        self.retries = retries
        self.recovery_task = recovery_task
        self.depend = depend
        self.block = block
        MapTask(len, **self._options())  # check the options now, not at the first map

    def _options(self) -> dict[str, Any]:
        return {"clear_before": self.clear_before, "clear_after": self.clear_after,
                "retries": self.retries, "recovery_task": self.recovery_task,
                "depend": self.depend}

    def map(self, func: Callable[..., Any], *sequences: Iterable[Any],
            timeout: float | None = None) -> list[Any]:
        """One MapTask per element: with `block`, their results in order (the first failure
        raised; past `timeout` seconds, TimeoutError), else their taskids. Whatever ends it
        before it returns (Ctrl-C, `timeout`, any exception) aborts the tasks it had sent."""
        backend = self.task_controller.backend
        return backend.run(verbs.seed_map(backend, func, sequences, self._options(), self.block,
                                          timeout),
                           deadline=Deadline.of(timeout, "map", aborts=True))


class ParallelFunction:
    """What `@client.parallel()` makes of a function: it maps itself over its arguments."""

    def __init__(self, mapper: TaskMapper, func: Callable[..., Any]) -> None:
        self.mapper = mapper
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *sequences: Iterable[Any]) -> list[Any]:
        return self.mapper.map(self.func, *sequences)
