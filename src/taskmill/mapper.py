"""What a map's chunk task runs on the engine: `run_chunk`.

    client (taskmill.client.maps) --MapTask(run_chunk, (func, arglists))--> engine
        (arglists: a list of argument tuples, or a zip over one list per argument position,
         which pickles as those lists: no tuple per element is made or pickled by the client)
    engine: run_chunk --> (values, failures): a value per element (None where it failed) and
        [(index, exception, traceback), ...] --> the chunk's result, which the client's
        maps.chunk_entries takes apart (an all-good chunk is one plain list: cheap to pickle,
        and the client extends its results with it)

It travels by reference (engines import taskmill), so its import path `taskmill.mapper.run_chunk`
is part of what a client and its engines share: it stays here, apart from the client package,
which an engine never needs to import.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from .errors import RemoteError


def _portable(exc: BaseException, tb: str) -> BaseException:
    """`exc` if it survives pickling, else a RemoteError that says the same."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), tb)


def run_chunk(func: Callable[..., Any], arglists: Iterable[tuple[Any, ...]],
              ) -> tuple[list[Any], list[tuple[int, BaseException, str]]]:
    """Run on an engine: `func` over each argument tuple; each failure kept with its index
    and traceback (its value is None).

    A Python loop, not a C one (`list.extend(starmap(...))`): that would take a
    StopIteration raised by `func` for the end of the elements, and would hold off an
    interrupt's signal handler while a callable that runs no Python code is called."""
    values: list[Any] = []
    failures: list[tuple[int, BaseException, str]] = []
    append = values.append
    for args in arglists:
        try:
            append(func(*args))
        except Exception as e:  # noqa: BLE001 - every element's failure is reported
            _failed(e, len(values), failures)
            append(None)
    return values, failures


def _failed(e: Exception, index: int, failures: list[tuple[int, BaseException, str]]) -> None:
    """Note element `index`'s failure (its traceback from `func`'s frame on)."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))
    e.__traceback__ = None
    failures.append((index, _portable(e, tb), tb))
