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
A map's chunk task (one task for many elements) is looked through as each element would be.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

USER_DEPTH = 1  # container levels a user's task is looked through (see the docstring)
CHUNK_DEPTH = 3  # ... a map's chunk: its list of argument tuples, then the user's level
MAX_DEPTH = CHUNK_DEPTH


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


def _map_one(x: Any, f: Any, depth: int) -> Any:
    """`x` with `f` applied to it, or (a list, tuple or dict, `depth` levels down) to each of
    its items."""
    if depth > 0:
        t = type(x)
        if t is list:
            return [_map_one(v, f, depth - 1) for v in x]
        if t is tuple:
            return tuple(_map_one(v, f, depth - 1) for v in x)
        if t is dict:
            return {k: _map_one(v, f, depth - 1) for k, v in x.items()}
    return f(x)


# What cannot hold a future (checked first: a map's chunk of numbers costs ~0.1 µs an element).
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def _holds(x: Any, depth: int) -> bool:
    """Whether `x` is a future or holds one `depth` container levels down."""
    t = type(x)
    if t in _PLAIN:
        return False
    if isinstance(x, FutureLike):
        return True
    if depth > 0:
        if t is list or t is tuple:
            for v in x:
                if type(v) not in _PLAIN and _holds(v, depth - 1):
                    return True
        elif t is dict:
            for v in x.values():
                if type(v) not in _PLAIN and _holds(v, depth - 1):
                    return True
    return False


def plain_items(items: Iterable[Any]) -> bool:
    """Whether every item is of a type that can neither be nor hold a future (int, str...):
    one C loop over their types, ~10 ns an item."""
    return set(map(type, items)) <= _PLAIN


_SEQUENCES = frozenset({list, tuple})


def _may_hold(args: tuple[Any, ...], kwargs: dict[str, Any], depth: int) -> bool:
    """False when no future can be among `args`/`kwargs` `depth` levels down, found level by
    level with C loops (the types present at each level; only lists and tuples are looked
    into): a map's chunk of 100,000 argument tuples is looked through in a few ms, where
    `_holds` takes ~15 ms, a quarter of `tc.map`'s own time per element. True: maybe (a
    future's type, or a dict, is present: `_holds` looks closely)."""
    level: list[Any] = [*args, *kwargs.values()]
    for at in range(depth + 1):
        types = set(map(type, level))
        if types <= _PLAIN:  # (none, or only plain values: no generator below)
            return False
        if dict in types or any(issubclass(t, FutureLike) for t in types):
            return True
        seqs = types & _SEQUENCES
        if not seqs or at == depth:
            return False
        level = [*chain.from_iterable(level if types <= _SEQUENCES else
                                      (x for x in level if type(x) in _SEQUENCES))]
    return False


def swap_futures(args: tuple[Any, ...], kwargs: dict[str, Any], depth: int = 1,
                 ) -> tuple[tuple[Any, ...], dict[str, Any], list[int]]:
    """Each future in `args`/`kwargs` (at the top level, or `depth` container levels down:
    one for a user's task, three for a map's chunk, whose arguments are a list of argument
    tuples) replaced by a ResultOf; the taskids, in order, once each. Unchanged (the same
    objects) when there is none."""
    if not _may_hold(args, kwargs, depth) or (
            not _holds(args, depth + 1) and not _holds(kwargs, depth + 1)):
        return args, kwargs, []
    tids: dict[int, None] = {}

    def swap(v: Any) -> Any:
        if isinstance(v, FutureLike):
            tid = v.taskid
            tids[tid] = None
            return ResultOf(tid)
        return v

    return (tuple(_map_one(a, swap, depth) for a in args),
            {k: _map_one(v, swap, depth) for k, v in kwargs.items()}, list(tids))


def fill(args: tuple[Any, ...], kwargs: dict[str, Any], values: dict[int, Any],
         depth: int = MAX_DEPTH) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The placeholders in `args`/`kwargs` replaced by `values[taskid]`."""
    def value(v: Any) -> Any:
        return values[v.taskid] if isinstance(v, ResultOf) else v

    return (tuple(_map_one(a, value, depth) for a in args),
            {k: _map_one(v, value, depth) for k, v in kwargs.items()})
