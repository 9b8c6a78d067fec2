"""The pieces of maps, none of which waits on anything: chunking, chunk tasks, assembling.

    map:    sequences --map_arguments--> Columns (one list per argument position)
                      --chunked / auto_chunksize--> chunks (Columns too: slices of those lists)
            chunks --encode_chunks--> one encoded MapTask per chunk (taskmill.mapper.run_chunk,
                      over a zip of the chunk's lists: no tuple per element in the client)
            finished chunk futures --assemble_map--> results in order, or one CompositeError
    imap:   IMapRun pulls chunks from the iterable only while fewer than a bound of items are
            out, and hands back each finished chunk's entries when their turn comes
    run_all: pinned_copies (one copy per engine) --> futures --> run_all_outcome

The verbs that drive these (`verbs.py`) say when to wait; each front waits its own way.
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from ..arguments import CHUNK_DEPTH, plain_items, swap_futures
from ..errors import (
    ClientClosed,
    CompositeError,
    ControllerUnreachable,
    MapFailure,
    RemoteTraceback,
    SerializationError,
)
from ..mapper import run_chunk
from ..protocol import Abort, Clear, to_request
from ..task import BaseTask, MapTask
from .backend import Backend
from .codec import Encoded
from .futures import TaskFuture
from .options import TaskOptions

CHUNKS_PER_ENGINE = 8
MAX_AUTO_CHUNK = 2000
IMAP_CHUNK_SECONDS = 0.1  # imap grows its chunks until one takes about this long on an engine
CLEAR_BATCH = 64  # imap drops the results of the chunks it has handed out, this many at a time


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a progress bar: `None` means only when stderr is a terminal."""
    if progress is None:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False
    return bool(progress)


class NoBar:
    """What `progress_bar` gives when no bar is drawn: tqdm is not even imported (its first
    import takes ~40 ms, as long as a whole 100,000-item map)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(progress: bool | None, total: int | None, desc: str, unit: str) -> Any:
    if not show_progress(progress):
        return NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def sequence_lists(sequences: Sequence[Iterable[Any]]) -> list[list[Any]]:
    """A map's sequences as lists; none is a TypeError, unequal lengths a ValueError."""
    if not sequences:
        raise TypeError("map() needs at least one sequence")
    lists = [list(s) for s in sequences]
    if len({len(x) for x in lists}) > 1:
        raise ValueError(f"map() sequences must have equal lengths, got {[len(x) for x in lists]}")
    return lists


def zip_sequences(sequences: Sequence[Iterable[Any]]) -> list[tuple[Any, ...]]:
    """The argument tuples of a map (see sequence_lists)."""
    return list(zip(*sequence_lists(sequences), strict=True))


class Columns:
    """A map's elements as one list per argument position (element i's arguments are item i
    of each), of equal lengths; `len` is the number of elements and a slice is a Columns of
    those elements. As a chunk's argument, `arguments()` zips them (see there). `plain`:
    known to hold no future (every item of a plain type, such as a range's ints)."""

    __slots__ = ("lists", "plain")

    def __init__(self, lists: list[list[Any]], plain: bool = False) -> None:
        self.lists = lists
        self.plain = plain

    def __len__(self) -> int:
        return len(self.lists[0])

    def __getitem__(self, index: slice) -> Columns:
        return Columns([x[index] for x in self.lists], self.plain)

    def arguments(self) -> Iterable[tuple[Any, ...]]:
        """What `run_chunk` iterates: a zip over the lists, which pickles as the lists (each
        item once, no tuple per element made or pickled here). When an element may hold a
        future, the list of argument tuples instead, where the task's encoding swaps each
        future for its result (arguments.swap_futures, `CHUNK_DEPTH` levels down)."""
        if not self.plain and swap_futures((None, self.lists), {}, CHUNK_DEPTH)[2]:
            return self.tuples()
        return zip(*self.lists, strict=False)

    def tuples(self) -> list[tuple[Any, ...]]:
        """The elements' argument tuples."""
        return list(zip(*self.lists, strict=True))


def zip_columns(sequences: Sequence[Iterable[Any]]) -> Columns:
    """A map's sequences as Columns (see sequence_lists)."""
    lists = sequence_lists(sequences)
    plain = all(type(s) is range or plain_items(x) for s, x in zip(sequences, lists, strict=True))
    return Columns(lists, plain)


def auto_chunksize(n_items: int, n_engines: int) -> int:
    """Enough chunks to balance load over the engines, few enough to amortise each round trip."""
    per = math.ceil(n_items / (max(n_engines, 1) * CHUNKS_PER_ENGINE))
    return max(1, min(per, MAX_AUTO_CHUNK))


def check_positive(value: Any, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or an int >= 1, not {value!r}")


def chunk_task(options: TaskOptions, func: Callable[..., Any],
               arglists: list[tuple[Any, ...]] | Columns) -> MapTask:
    """The MapTask that runs one chunk, carrying the caller's task options."""
    if type(arglists) is Columns:
        return options.task(run_chunk, (func, arglists.arguments()))
    return options.task(run_chunk, (func, arglists))


def check_map_options(options: TaskOptions) -> None:
    if options.recovery_task is not None:
        raise ValueError("map and imap take no recovery_task: its result would stand for a whole "
                         "chunk of elements; use submit() for tasks with a recovery task")


def element_error(exc: BaseException, tb: str, engineid: Any, taskid: Any) -> BaseException:
    """A failed element's exception, with the engine's traceback attached as for any task."""
    for attr, value in (("engineid", engineid), ("taskid", taskid), ("remote_traceback", tb)):
        try:
            setattr(exc, attr, value)
        except Exception:  # noqa: BLE001 - exceptions without a __dict__
            pass
    if tb and exc.__cause__ is None:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


def chunk_values(fut: TaskFuture, n: int) -> tuple[list[Any], list[tuple[int, BaseException]]]:
    """A finished chunk's values (None where an element failed) and its failures, each
    (index in the chunk, exception), decoded here (mapper.run_chunk says the shape)."""
    try:
        result = fut.result()
    except Exception as e:  # noqa: BLE001 - the whole chunk failed (engine died, aborted...)
        return [None] * n, [(i, e) for i in range(n)]
    if type(result) is list:  # (a result stored by an older version: a tuple per element)
        result = ([item[1] if item[0] else None for item in result],
                  [(i, item[1], item[2]) for i, item in enumerate(result) if not item[0]])
    values, failed = result
    engineid, taskid = fut.metadata.get("engineid"), fut.taskid
    return values, [(i, element_error(exc, tb, engineid, taskid)) for i, exc, tb in failed]


def chunk_entries(fut: TaskFuture, n: int) -> list[tuple[bool, Any]]:
    """A finished chunk as (True, value) / (False, exception) per element."""
    values, failures = chunk_values(fut, n)
    entries = [(True, v) for v in values]
    for i, exc in failures:
        entries[i] = (False, exc)
    return entries


# -- map -------------------------------------------------------------------------------------
def map_arguments(options: TaskOptions, sequences: Sequence[Iterable[Any]],
                  chunksize: int | None) -> Columns:
    """A map's arguments, its options and chunksize checked."""
    check_map_options(options)
    check_positive(chunksize, "chunksize")
    return zip_columns(sequences)


def chunked(args: Any, chunksize: int) -> list[Any]:
    """`args` (a list of argument tuples, or Columns) in slices of `chunksize` elements."""
    return [args[i:i + chunksize] for i in range(0, len(args), chunksize)]


def encode_chunks(backend: Backend, options: TaskOptions, func: Callable[..., Any],
                  chunks: list[Any], *,
                  split: bool) -> tuple[list[Any], list[Encoded]]:
    """Each chunk's task, encoded, and the chunks they are (in order). None is larger than the
    controller accepts in one message: with `split` (chunksize=None) a chunk that would be is
    cut in halves until it fits; a single element that does not fit, or a chunk of a chosen
    chunksize, raises ValueError, before anything is sent."""
    name = getattr(func, "__qualname__", type(func).__name__)
    out_chunks: list[Any] = []
    out: list[Encoded] = []
    start = 0  # the index of the chunk's first element
    todo = chunks[::-1]
    while todo:
        chunk = todo.pop()
        enc = encode_chunk(backend, options, func, chunk)
        what = (f"element {start} of map({name})" if len(chunk) == 1 else
                f"the chunk of elements {start}..{start + len(chunk) - 1} of map({name})")
        error = backend.too_big(enc, what)
        if error is not None:
            if split and len(chunk) > 1:
                half = len(chunk) // 2
                todo += [chunk[half:], chunk[:half]]
                continue
            if len(chunk) > 1:
                raise ValueError(f"{error} (chunksize={len(chunk)}: a smaller one may do)")
            raise error
        out_chunks.append(chunk)
        out.append(enc)
        start += len(chunk)
    return out_chunks, out


def encode_chunk(backend: Backend, options: TaskOptions, func: Callable[..., Any],
                 chunk: Any) -> Encoded:
    """A chunk's task, encoded. When it cannot be pickled, the error names its elements as
    that of the argument tuples does (a zip's repr would not)."""
    try:
        return backend.encode(chunk_task(options, func, chunk))
    except SerializationError:
        if type(chunk) is Columns:
            backend.encode(chunk_task(options, func, chunk.tuples()))
        raise


def check_unreachable(futs: Sequence[Future]) -> None:
    """Raise ControllerUnreachable or ClientClosed if a future failed with it (a map raises it
    as itself: no element failed)."""
    for f in futs:
        if not f.cancelled():
            exc = Future.exception(f)
            if isinstance(exc, ControllerUnreachable | ClientClosed):
                raise exc


def assemble_map(name: str, futs: Sequence[TaskFuture], chunks: Sequence[Any],
                 n_items: int) -> list[Any]:
    """Every element's result in input order, or one CompositeError naming every failure."""
    results: list[Any] = []
    elist: list[MapFailure] = []
    for fut, chunk in zip(futs, chunks, strict=True):
        values, failures = chunk_values(fut, len(chunk))
        if failures:
            engineid = fut.metadata.get("engineid")
            elist.extend(MapFailure(len(results) + i, engineid, exc,
                                    getattr(exc, "remote_traceback", "") or "")
                         for i, exc in failures)
        results.extend(values)
    if elist:
        raise CompositeError(f"map of {name} failed for {len(elist)} of {n_items} elements",
                             elist)
    return results


# -- imap ------------------------------------------------------------------------------------
class IMapRun:
    """The bookkeeping of one imap: which items to send next, which results may go out next.

    It never waits: a driver sends what `send_more` returns, waits for any of the futures in
    its own way, and hands each finished one to `chunk_done`, which returns the entries
    ((True, value) or (False, exception)) that may now be yielded. Items are pulled from the
    iterable only while fewer than `max_outstanding` are out (sent and not yet handed back),
    and in at most `CHUNKS_PER_ENGINE` chunks per engine. With `chunksize=None` chunks start
    at one item and grow (at most doubling each time) until one takes about
    `IMAP_CHUNK_SECONDS` on an engine, as measured by the engines' reported durations.
    """

    def __init__(self, backend: Backend, options: TaskOptions, func: Callable[..., Any],
                 iterable: Iterable[Any], *, ordered: bool, chunksize: int | None,
                 max_outstanding: int | None, n_engines: int) -> None:
        self.backend = backend
        self.options = options
        self.func = func
        self.items: Iterator[Any] = iter(iterable)
        self.ordered = ordered
        self.exhausted = False
        self.fixed = chunksize is not None
        self.chunksize = chunksize or 1
        n = max(n_engines, 1)
        self.max_items = max_outstanding
        self.max_chunks = CHUNKS_PER_ENGINE * n
        if self.fixed and max_outstanding is not None:
            self.max_chunks = max(self.max_chunks, math.ceil(max_outstanding / self.chunksize))
        # Never so large that a few chunks would fill the whole window.
        self.cap = MAX_AUTO_CHUNK if max_outstanding is None else max(
            1, min(MAX_AUTO_CHUNK, max_outstanding // (2 * n)))
        self.outstanding = 0
        self.inflight: dict[TaskFuture, tuple[int, int]] = {}  # future -> (chunk seq, items)
        self.held: dict[int, list[tuple[bool, Any]]] = {}  # ordered: done, waiting their turn
        self.next_seq = 0
        self.next_out = 0
        self.to_clear: list[int] = []

    @property
    def finished(self) -> bool:
        return self.exhausted and not self.inflight and not self.held

    def send_more(self) -> list[TaskFuture]:
        """Pull and send as many chunks as the bounds allow; return their futures."""
        chunks: list[list[tuple[Any, ...]]] = []
        while not self.exhausted and len(self.inflight) + len(self.held) + len(chunks) \
                < self.max_chunks:
            n = self.chunksize if self.fixed else min(self.chunksize, self.cap)
            if self.max_items is not None:
                n = min(n, self.max_items - self.outstanding)
                if n <= 0:
                    break
            chunk = [(x,) for x in itertools.islice(self.items, n)]
            if not chunk:
                self.exhausted = True
                break
            chunks.append(chunk)
            self.outstanding += len(chunk)
        if not chunks:
            return []
        backend = self.backend
        futs = backend.submit_futures(
            [backend.encode(chunk_task(self.options, self.func, c)) for c in chunks])
        for fut, chunk in zip(futs, chunks, strict=True):
            self.inflight[fut] = (self.next_seq, len(chunk))
            self.next_seq += 1
        return futs

    def chunk_done(self, fut: TaskFuture) -> list[tuple[bool, Any]]:
        """Take a finished chunk; return the entries that may be handed out now, in order."""
        seq, n = self.inflight.pop(fut)
        entries = chunk_entries(fut, n)
        self._adapt(fut, n)
        if fut.known_taskid is not None:
            self.to_clear.append(fut.known_taskid)
            if len(self.to_clear) >= CLEAR_BATCH:
                self._clear()
        if not self.ordered:
            self.outstanding -= n
            return entries
        self.held[seq] = entries
        out: list[tuple[bool, Any]] = []
        while self.next_out in self.held:
            ready = self.held.pop(self.next_out)
            self.next_out += 1
            self.outstanding -= len(ready)
            out.extend(ready)
        return out

    def _adapt(self, fut: TaskFuture, n: int) -> None:
        if self.fixed or fut.cancelled() or fut.exception() is not None:
            return
        duration = fut.metadata.get("duration") or 0.0
        per_item = duration / n
        wanted = int(IMAP_CHUNK_SECONDS / per_item) if per_item > 0 else self.cap
        self.chunksize = max(1, min(wanted, self.chunksize * 2, self.cap))

    def _clear(self) -> None:
        """Drop the results already handed out: a stream must not fill the controller's store."""
        tids, self.to_clear = self.to_clear, []
        if tids:
            self.backend.send_and_forget(to_request(Clear(tids)))

    def close(self) -> None:
        """Abort what is still out, and drop every result of this imap from the controller
        (those still running, once they finish as aborted). Nothing here waits for answers,
        except for the taskid of a chunk whose submit is not acknowledged yet."""
        for fut in list(self.inflight):
            try:
                if fut.done():
                    if fut.known_taskid is not None:
                        self.to_clear.append(fut.known_taskid)
                    continue
                self.backend.send_and_forget(to_request(Abort(fut.taskid)))
                fut.on_done(self._clear_when_done)
            except Exception:  # noqa: BLE001 - a failed submit or a closed client: nothing to do
                pass
        self.inflight.clear()
        self.held.clear()
        try:
            self._clear()
        except Exception:  # noqa: BLE001 - the client was closed first
            pass

    def _clear_when_done(self, fut: TaskFuture) -> None:  # on the I/O thread
        if fut.known_taskid is None:
            return
        try:
            self.backend.send_and_forget(to_request(Clear([fut.known_taskid])))
        except Exception:  # noqa: BLE001 - the client was closed
            pass


def check_imap(options: TaskOptions, chunksize: Any, max_outstanding: Any) -> None:
    check_map_options(options)
    check_positive(chunksize, "chunksize")
    check_positive(max_outstanding, "max_outstanding")


# -- run_all ---------------------------------------------------------------------------------
class OnEngine:
    """A callable depend pinned to one engine: `run_all`'s copy of a task with its own depend."""

    def __init__(self, engineid: int, depend: Callable[[dict[str, Any]], Any]) -> None:
        self.engineid = engineid
        self.depend = depend

    def __call__(self, properties: dict[str, Any]) -> bool:
        return properties.get("engineid") == self.engineid and bool(self.depend(properties))


def pinned_copies(task: BaseTask, engineids: Sequence[int]) -> list[BaseTask]:
    """One copy of `task` per engine, each with a depend that only its engine satisfies."""
    if not isinstance(task, BaseTask):
        raise TypeError(f"run_all() takes a StringTask or MapTask, not {type(task).__name__}")
    task.validate()
    copies = []
    for eid in engineids:
        t = copy.copy(task)
        if t.depend is None:
            t.depend = {"engineid": eid}
        elif isinstance(t.depend, dict):
            t.depend = {**t.depend, "engineid": eid}
        else:
            t.depend = OnEngine(eid, t.depend)
        copies.append(t)
    return copies


def run_all_outcome(engineids: Sequence[int], futs: Sequence[TaskFuture]) -> dict[int, Any]:
    """`run_all`'s dict engineid -> result, or a CompositeError naming each engine that failed."""
    out: dict[int, Any] = {}
    elist: list[MapFailure] = []
    for i, (eid, f) in enumerate(zip(engineids, futs, strict=True)):
        try:
            out[eid] = f.result()
        except Exception as e:  # noqa: BLE001 - reported per engine
            elist.append(MapFailure(i, eid, e, getattr(e, "remote_traceback", "") or ""))
    if elist:
        raise CompositeError(f"run_all failed on {len(elist)} of {len(engineids)} engines", elist)
    return out
