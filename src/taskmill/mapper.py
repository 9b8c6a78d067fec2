"""Maps over a TaskClient: the seed's `mapper`/`parallel`, the batching `map`, and `imap`.

The seed's mapper sends one MapTask per element and raises the first failure in input order.
`TaskClient.map` batches elements into chunks (one MapTask per chunk, run by `run_chunk` on the
engine), follows the chunks' futures for a progress bar, and reports every failed element at
once in a `CompositeError`. `imap` streams: `IMapRun` pulls chunks from the iterable only while
fewer than a bound of items are out, so an iterable of any length runs in bounded memory.

The pieces here never wait on the network themselves (except the seed's blocking mapper): the
blocking client and the asyncio client each drive them with their own way of waiting.
"""

from __future__ import annotations

import functools
import itertools
import math
import pickle
import queue
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, as_completed
from typing import TYPE_CHECKING, Any

from .errors import CompositeError, ControllerUnreachable, MapFailure, RemoteError, RemoteTraceback
from .task import BaseTask, MapTask, check_seconds

if TYPE_CHECKING:
    from .client import TaskClient, TaskFuture, TaskOptions

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


def progress_bar(progress: bool | None, total: int | None, desc: str, unit: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show_progress(progress), desc=desc, unit=unit)


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


def check_positive(value: Any, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or an int >= 1, not {value!r}")


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


def chunk_task(options: TaskOptions, func: Callable[..., Any],
               arglists: list[tuple[Any, ...]]) -> MapTask:
    """The MapTask that runs one chunk, carrying the caller's task options."""
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


def chunk_entries(fut: TaskFuture, n: int) -> list[tuple[bool, Any]]:
    """A finished chunk as (True, value) / (False, exception) per element, decoded here."""
    try:
        values = fut.result()
    except Exception as e:  # noqa: BLE001 - the whole chunk failed (engine died, aborted...)
        return [(False, e)] * n
    engineid, taskid = fut.metadata.get("engineid"), fut.taskid
    return [(True, item[1]) if item[0] else
            (False, element_error(item[1], item[2], engineid, taskid)) for item in values]


# -- map -------------------------------------------------------------------------------------
def plan_map(options: TaskOptions, func: Callable[..., Any], sequences: Sequence[Iterable[Any]],
             chunksize: int | None, n_engines: Callable[[], int]) -> tuple[int, list[list[Any]]]:
    """The chunks of a map; `n_engines` is asked only when chunksize is None."""
    check_map_options(options)
    check_positive(chunksize, "chunksize")
    args = zip_sequences(sequences)
    if not args:
        return 0, []
    if chunksize is None:
        chunksize = auto_chunksize(len(args), n_engines())
    return len(args), [args[i:i + chunksize] for i in range(0, len(args), chunksize)]


def encode_chunks(client: TaskClient, options: TaskOptions, func: Callable[..., Any],
                  chunks: list[list[Any]], *, split: bool) -> tuple[list[list[Any]], list[Any]]:
    """Each chunk's task, encoded, and the chunks they are (in order). None is larger than the
    controller accepts in one message: with `split` (chunksize=None) a chunk that would be is
    cut in halves until it fits; a single element that does not fit, or a chunk of a chosen
    chunksize, raises ValueError, before anything is sent."""
    name = getattr(func, "__qualname__", type(func).__name__)
    out_chunks: list[list[Any]] = []
    out: list[Any] = []
    start = 0  # the index of the chunk's first element
    todo = chunks[::-1]
    while todo:
        chunk = todo.pop()
        enc = client._encode(chunk_task(options, func, chunk))
        what = (f"element {start} of map({name})" if len(chunk) == 1 else
                f"the chunk of elements {start}..{start + len(chunk) - 1} of map({name})")
        error = client._too_big(enc, what)
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


def check_unreachable(futs: Sequence[Future]) -> None:
    """Raise ControllerUnreachable if a future failed with it (a map raises it as itself)."""
    for f in futs:
        if not f.cancelled():
            exc = Future.exception(f)
            if isinstance(exc, ControllerUnreachable):
                raise exc


def assemble_map(name: str, futs: Sequence[TaskFuture], chunks: Sequence[list[Any]],
                 n_items: int) -> list[Any]:
    """Every element's result in input order, or one CompositeError naming every failure."""
    results: list[Any] = []
    elist: list[MapFailure] = []
    for fut, chunk in zip(futs, chunks, strict=True):
        engineid = fut.metadata.get("engineid")
        for ok, value in chunk_entries(fut, len(chunk)):
            if not ok:
                elist.append(MapFailure(len(results), engineid, value,
                                        getattr(value, "remote_traceback", "") or ""))
                value = None
            results.append(value)
    if elist:
        raise CompositeError(f"map of {name} failed for {len(elist)} of {n_items} elements",
                             elist)
    return results


def client_map(client: TaskClient, options: TaskOptions, func: Callable[..., Any],
               sequences: Sequence[Iterable[Any]], *, chunksize: int | None,
               progress: bool | None, timeout: float | None = None) -> list[Any]:
    """`TaskClient.map`. Whatever ends it before every chunk has finished (Ctrl-C, `timeout`,
    any exception) aborts the chunks still queued or running."""
    check_seconds(timeout, "timeout")
    n_items, chunks = plan_map(options, func, sequences, chunksize, client._alive_engines)
    if not chunks:
        return []
    chunks, encoded = encode_chunks(client, options, func, chunks, split=chunksize is None)
    name = getattr(func, "__name__", "map")
    futs: list[TaskFuture] = []
    try:
        futs = client._submit_futures(encoded, checked=True)
        size = {f: len(c) for f, c in zip(futs, chunks, strict=True)}
        with progress_bar(progress, n_items, name, "item") as bar:
            for f in as_completed(futs, timeout=timeout):
                bar.update(size[f])
    except ControllerUnreachable:  # (a TimeoutError too; nothing can be aborted)
        raise
    except TimeoutError:
        client._abort_futures(futs)
        raise TimeoutError(f"map of {name} did not finish within {timeout:g}s (timeout=); its "
                           "unfinished tasks were aborted") from None
    except BaseException:
        client._abort_futures(futs)
        raise
    check_unreachable(futs)
    return assemble_map(name, futs, chunks, n_items)


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

    def __init__(self, client: Any, options: TaskOptions, func: Callable[..., Any],
                 iterable: Iterable[Any], *, ordered: bool, chunksize: int | None,
                 max_outstanding: int | None, n_engines: int) -> None:
        self.client = client  # a TaskClient (the asyncio client drives its blocking one)
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
        client = self.client
        futs = client._submit_futures(
            [client._encode(chunk_task(self.options, self.func, c)) for c in chunks])
        for fut, chunk in zip(futs, chunks, strict=True):
            self.inflight[fut] = (self.next_seq, len(chunk))
            self.next_seq += 1
        return futs

    def chunk_done(self, fut: TaskFuture) -> list[tuple[bool, Any]]:
        """Take a finished chunk; return the entries that may be handed out now, in order."""
        seq, n = self.inflight.pop(fut)
        entries = chunk_entries(fut, n)
        self._adapt(fut, n)
        if fut._taskid is not None:
            self.to_clear.append(fut._taskid)
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
            self.client._send_and_forget({"type": "clear", "tids": tids})

    def close(self) -> None:
        """Abort what is still out, and drop every result of this imap from the controller
        (those still running, once they finish as aborted). Nothing here waits for answers,
        except for the taskid of a chunk whose submit is not acknowledged yet."""
        for fut in list(self.inflight):
            try:
                if fut.done():
                    if fut._taskid is not None:
                        self.to_clear.append(fut._taskid)
                    continue
                self.client._send_and_forget({"type": "abort", "tid": fut.taskid})
                fut.add_done_callback(self._clear_when_done)
            except Exception:  # noqa: BLE001 - a failed submit or a closed client: nothing to do
                pass
        self.inflight.clear()
        self.held.clear()
        try:
            self._clear()
        except Exception:  # noqa: BLE001 - the client was closed first
            pass

    def _clear_when_done(self, fut: TaskFuture) -> None:  # on the I/O thread
        if fut._taskid is None:
            return
        try:
            self.client._send_and_forget({"type": "clear", "tids": [fut._taskid]})
        except Exception:  # noqa: BLE001 - the client was closed
            pass


def check_imap(options: TaskOptions, chunksize: Any, max_outstanding: Any) -> None:
    check_map_options(options)
    check_positive(chunksize, "chunksize")
    check_positive(max_outstanding, "max_outstanding")


def client_imap(client: TaskClient, options: TaskOptions, func: Callable[..., Any],
                iterable: Iterable[Any], *, ordered: bool, chunksize: int | None,
                max_outstanding: int | None, progress: bool | None) -> Iterator[Any]:
    check_imap(options, chunksize, max_outstanding)
    return _blocking_imap(client, options, func, iterable, ordered=ordered,
                          chunksize=chunksize, max_outstanding=max_outstanding,
                          progress=progress)


def _blocking_imap(client: TaskClient, options: TaskOptions, func: Callable[..., Any],
                   iterable: Iterable[Any], *, ordered: bool, chunksize: int | None,
                   max_outstanding: int | None, progress: bool | None) -> Iterator[Any]:
    run = IMapRun(client, options, func, iterable, ordered=ordered, chunksize=chunksize,
                  max_outstanding=max_outstanding, n_engines=client._alive_engines())
    done: queue.SimpleQueue[Future] = queue.SimpleQueue()
    total = len(iterable) if hasattr(iterable, "__len__") else None
    bar = progress_bar(progress, total, getattr(func, "__name__", "imap"), "item")
    try:
        while True:
            for fut in run.send_more():
                fut.add_done_callback(done.put)
            if run.finished:
                return
            for ok, value in run.chunk_done(done.get()):
                if not ok:
                    raise value
                bar.update()
                yield value
    finally:
        bar.close()
        run.close()


# -- the seed's mapper -----------------------------------------------------------------------
class TaskMapper:
    """The seed's IMapper: `.map(func, *sequences)`, one MapTask per element.

    As in the seed, the client is `task_controller` and the options are plain attributes of
    their own names (`clear_before`, `clear_after`, `retries`, `recovery_task`, `depend`,
    `block`); a change to one applies to the next `map`, and is checked there."""

    def __init__(self, client: TaskClient, *, clear_before: bool = False,
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
        check_seconds(timeout, "timeout")
        client = self.task_controller
        options = self._options()
        MapTask(len, **options)  # an attribute changed since: checked before anything is sent
        args = zip_sequences(sequences)
        encoded = [client._encode(MapTask(func, a, **options)) for a in args]
        tids: list[int] = []
        try:
            client._submit_encoded(encoded, tids)
            if not self.block or not tids:
                return tids
            name = getattr(func, "__name__", "map")
            entries = client._results(tids, True, timeout, f"map of {name}")
        except BaseException:
            client._abort_taskids(tids)
            raise
        return [client._decode(m, f) for m, f in entries]


class ParallelFunction:
    """What `@client.parallel()` makes of a function: it maps itself over its arguments."""

    def __init__(self, mapper: TaskMapper, func: Callable[..., Any]) -> None:
        self.mapper = mapper
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *sequences: Iterable[Any]) -> list[Any]:
        return self.mapper.map(self.func, *sequences)
