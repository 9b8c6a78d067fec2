"""Maps over a TaskClient: the seed's `mapper`/`parallel`, and the batching `TaskClient.map`.

The seed's mapper sends one MapTask per element and raises the first failure in input order.
`TaskClient.map` batches elements into chunks (one MapTask per chunk, run by `run_chunk` on the
engine), streams completions for a progress bar, and reports every failed element at once in a
`CompositeError`.
"""

from __future__ import annotations

import functools
import math
import pickle
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import CompositeError, MapFailure, RemoteError
from .task import BaseTask, MapTask

if TYPE_CHECKING:
    from .client import TaskClient

CHUNKS_PER_ENGINE = 8
MAX_AUTO_CHUNK = 2000


def zip_sequences(sequences: Sequence[Iterable[Any]]) -> list[tuple[Any, ...]]:
    """The argument tuples of a map; sequences of unequal length are a ValueError."""
    if not sequences:
        raise TypeError("map() needs at least one sequence")
    lists = [list(s) for s in sequences]
    lengths = {len(x) for x in lists}
    if len(lengths) > 1:
        raise ValueError(f"map() sequences must have equal lengths, got {[len(x) for x in lists]}")
    return list(zip(*lists, strict=True))


def auto_chunksize(n_items: int, n_engines: int) -> int:
    """Enough chunks to balance load over the engines, few enough to amortise each round trip."""
    per = math.ceil(n_items / (max(n_engines, 1) * CHUNKS_PER_ENGINE))
    return max(1, min(per, MAX_AUTO_CHUNK))


def _portable(exc: BaseException, tb: str) -> BaseException:
    """`exc` if it survives pickling, else a RemoteError that says the same."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), tb)


def run_chunk(func: Callable[..., Any], arglists: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Run on an engine: `func` over each argument tuple, each failure kept with its traceback."""
    out: list[tuple[Any, ...]] = []
    for args in arglists:
        try:
            out.append((True, func(*args)))
        except Exception as e:  # noqa: BLE001 - every element's failure is reported
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))
            e.__traceback__ = None
            out.append((False, _portable(e, tb), tb))
    return out


def client_map(client: TaskClient, func: Callable[..., Any], sequences: Sequence[Iterable[Any]],
               *, chunksize: int | None, progress: bool) -> list[Any]:
    from tqdm.auto import tqdm

    args = zip_sequences(sequences)
    if not args:
        return []
    if chunksize is None:
        alive = sum(1 for e in client.engines() if e["state"] != "dead")
        chunksize = auto_chunksize(len(args), alive)
    if not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, not {chunksize!r}")
    chunks = [args[i:i + chunksize] for i in range(0, len(args), chunksize)]
    tids = client._submit_tasks(MapTask(run_chunk, (func, chunk)) for chunk in chunks)
    size = dict(zip(tids, map(len, chunks), strict=True))
    raw: dict[int, tuple[dict[str, Any], list[Any]]] = {}
    name = getattr(func, "__name__", "map")
    with tqdm(total=len(args), disable=not progress, desc=name, unit="item") as bar:

        def on_done(tid: int, meta: dict[str, Any], frames: list[Any]) -> None:
            raw[tid] = (meta, frames)
            bar.update(size[tid])

        client._watch(tids, on_done).result()
    results: list[Any] = []
    elist: list[MapFailure] = []
    for tid, chunk in zip(tids, chunks, strict=True):
        meta, frames = raw[tid]
        engineid = meta.get("engineid") if meta else None
        try:
            values = client._decode(meta, frames)
        except Exception as e:  # noqa: BLE001 - the whole chunk failed (engine died, aborted...)
            tb = getattr(e, "remote_traceback", "")
            for _ in chunk:
                elist.append(MapFailure(len(results), engineid, e, tb))
                results.append(None)
            continue
        for item in values:
            if item[0]:
                results.append(item[1])
            else:
                elist.append(MapFailure(len(results), engineid, item[1], item[2]))
                results.append(None)
    if elist:
        raise CompositeError(f"map of {name} failed for {len(elist)} of {len(args)} elements",
                             elist)
    return results


class TaskMapper:
    """The seed's IMapper: `.map(func, *sequences)`, one MapTask per element."""

    def __init__(self, client: TaskClient, *, clear_before: bool = False,
                 clear_after: bool = False, retries: int = 0,
                 recovery_task: BaseTask | None = None, depend: Any = None,
                 block: bool = True) -> None:
        self.client = client
        self.options = {"clear_before": clear_before, "clear_after": clear_after,
                        "retries": retries, "recovery_task": recovery_task, "depend": depend}
        self.block = block
        MapTask(len, **self.options)  # check the options now, not at the first map

    def map(self, func: Callable[..., Any], *sequences: Iterable[Any]) -> list[Any]:
        args = zip_sequences(sequences)
        tids = self.client._submit_tasks(MapTask(func, a, **self.options) for a in args)
        if not self.block:
            return tids
        if not tids:
            return []
        return [self.client._decode(m, f) for m, f in self.client._results(tids, block=True)]


class ParallelFunction:
    """What `@client.parallel()` makes of a function: it maps itself over its arguments."""

    def __init__(self, mapper: TaskMapper, func: Callable[..., Any]) -> None:
        self.mapper = mapper
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *sequences: Iterable[Any]) -> list[Any]:
        return self.mapper.map(self.func, *sequences)
