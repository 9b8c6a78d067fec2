"""Futures as task arguments: swapped for placeholders on the client, filled on the engine.

A `TaskFuture` (any `FutureLike`) at the top level of a task's `args`/`kwargs`, or directly
inside a list, tuple or dict there, stands for its task's result:

    client   swap_futures(args, kwargs) -> args and kwargs with each future replaced by
             `ResultOf(taskid)`, and those taskids: the node names them (`args_from`) and
             the task waits for them (they join its `after`, so a failed one fails it with
             DependencyError before it runs)
    controller  at dispatch, each named task's stored result (its frames and their pmac)
             travels with the task to the engine: the value never passes through the client
    engine   fill(args, kwargs, values) -> the placeholders replaced by the values

Deeper than that, a future is not looked for (pickling it raises a TypeError that says so).
"""

from __future__ import annotations

from typing import Any


class FutureLike:
    """What swap_futures looks for: has a `taskid` (client/futures.py's TaskFuture)."""

    taskid: int


class ResultOf:
    """The placeholder for task `taskid`'s result inside a task's arguments."""

    __slots__ = ("taskid",)

    def __init__(self, taskid: int) -> None:
        self.taskid = taskid

    def __reduce__(self) -> tuple[Any, ...]:
        return (ResultOf, (self.taskid,))

    def __repr__(self) -> str:
        return f"ResultOf({self.taskid})"


def _map_one(x: Any, f: Any) -> Any:
    """`x` with `f` applied to it, or (a list, tuple or dict) to each of its items."""
    t = type(x)
    if t is list:
        return [f(v) for v in x]
    if t is tuple:
        return tuple(f(v) for v in x)
    if t is dict:
        return {k: f(v) for k, v in x.items()}
    return f(x)


def _walk(args: tuple[Any, ...], kwargs: dict[str, Any], f: Any,
          ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (tuple(_map_one(a, f) for a in args),
            {k: _map_one(v, f) for k, v in kwargs.items()})


def _holds(x: Any, kind: type) -> bool:
    if isinstance(x, kind):
        return True
    t = type(x)
    if t is list or t is tuple:
        return any(isinstance(v, kind) for v in x)
    if t is dict:
        return any(isinstance(v, kind) for v in x.values())
    return False


def swap_futures(args: tuple[Any, ...], kwargs: dict[str, Any],
                 ) -> tuple[tuple[Any, ...], dict[str, Any], list[int]]:
    """Each future in `args`/`kwargs` (see the module's docstring) replaced by a ResultOf;
    the taskids, in order, once each. Unchanged (the same objects) when there is none."""
    if not any(_holds(a, FutureLike) for a in args) and \
            not any(_holds(v, FutureLike) for v in kwargs.values()):
        return args, kwargs, []
    tids: dict[int, None] = {}

    def swap(v: Any) -> Any:
        if isinstance(v, FutureLike):
            tid = v.taskid
            tids[tid] = None
            return ResultOf(tid)
        return v

    args, kwargs = _walk(args, kwargs, swap)
    return args, kwargs, list(tids)


def fill(args: tuple[Any, ...], kwargs: dict[str, Any], values: dict[int, Any],
         ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The placeholders in `args`/`kwargs` replaced by `values[taskid]`."""
    def value(v: Any) -> Any:
        return values[v.taskid] if isinstance(v, ResultOf) else v

    return _walk(args, kwargs, value)
