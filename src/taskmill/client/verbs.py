"""Every verb of the client, written once, for both fronts: generators of steps (sans-I/O).

    TaskClient.map(...)       --> backend.run(map_elements(backend, ...))         (blocking)
    AsyncTaskClient.map(...)  --> await driver.run(map_elements(backend, ...))    (asyncio)

A verb checks its arguments, then yields what it needs done (`steps.py`: a Request to the
controller, a wait for task futures, an abort...) and is sent what that came to (or has the
error thrown in, at the same `yield`). It never blocks and never touches a socket: the front
decides how to wait. So each verb's rules (what is checked first, what is aborted when it ends
early, what its errors say) are said once. One-request verbs are plain `steps.Request`
builders (steps.py); `submit` needs no waiting at all and is a plain function.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import ControllerUnreachable, ids_text
from ..memory import BURST_MIN, give_back
from ..protocol import (
    Clear,
    ClearReply,
    Lease,
    LeaseReply,
    ResultQuery,
    TaskUnknown,
    TidsReply,
    Wait,
    to_request,
)
from ..task import BaseTask, MapTask, check_seconds
from .backend import KEPT_RESULTS_BYTES, Backend, Verb
from .codec import (
    Encoded,
    batches,
    check_taskid,
    in_range,
    split_results,
    submit_header,
    taskid_list,
    unknown_entry,
)
from .futures import TaskFuture
from .maps import (
    IMapRun,
    assemble_map,
    auto_chunksize,
    check_imap,
    check_unreachable,
    chunked,
    encode_chunks,
    map_arguments,
    pinned_copies,
    progress_bar,
    run_all_outcome,
    show_progress,
    zip_sequences,
)
from .objects import ObjectRef, put_request
from .options import TaskOptions
from .runs import is_synchronous
from .steps import (
    Abort,
    Adopt,
    Emit,
    Follow,
    NextDone,
    Request,
    Settle,
    WaitFor,
    live_engine_count,
    live_engine_ids,
)
from .steps import task_info as task_info_request


def is_future(x: Any) -> bool:
    """A future of either kind (concurrent or asyncio), as opposed to a taskid."""
    return hasattr(x, "add_done_callback")


# -- submitting ------------------------------------------------------------------------------
def submit(backend: Backend, options: TaskOptions, func: Callable[..., Any],
           args: Sequence[Any], kwargs: dict[str, Any]) -> TaskFuture:
    """A future for `func(*args, **kwargs)`, sent without waiting; one that cannot be sent
    fails at once (as a task that fails would)."""
    enc = backend.encode(options.task(func, args, kwargs), validated=True)
    error = backend.too_big(enc)
    if error is not None:
        return backend.failed_future(error)
    return backend.submit_futures([enc], checked=True)[0]


def submit_tasks(backend: Backend, encoded: Sequence[Encoded], tids: list[int]) -> Verb:
    """Submit and wait for the taskids, appended to `tids` as each batch's reply is read,
    before the verb resumes (so that a caller interrupted meanwhile, even between two steps,
    knows what was submitted; an interrupted wait still learns the batch's taskids if they
    come within a moment)."""
    backend.check_sizes(encoded)

    def known(reply: TidsReply, _: list[Any] | None = None) -> None:
        tids.extend(reply.tids)

    for batch in batches(encoded, backend.connection.max_message):
        header, frames = submit_header(batch)
        yield Request(header, frames, read=known, interrupted=known)
    return tids


def put(backend: Backend, obj: Any, release: Callable[[int], Any]) -> Verb:
    """Store `obj` once (client/objects.py); `release(taskid)` is what ref.release() does."""
    conn = backend.connection
    request, nbytes = put_request(obj, conn.wire, conn.max_message)
    tid = yield request
    return ObjectRef(tid, lambda: release(tid), nbytes)


def run(backend: Backend, task: BaseTask, block: bool, timeout: float | None) -> Verb:
    """The one verb the fronts do not settle first (runs.py): the task is checked and
    encoded here, numbered from the client's lease (asked for when it is used up) and queued;
    the taskid is returned without waiting. A task whose depend callable only the controller
    can judge is sent at once and answered (its refusal raised here); with `block`, the
    queue is sent and stored before its result is asked for."""
    check_seconds(timeout, "timeout")
    backend.connection.check_process()  # (a forked child would take the parent's next id)
    enc = backend.encode(task)
    backend.check_sizes([enc])
    runs = backend.runs
    runs.raise_failure()  # (a batch refused since the last call: said before a new id)
    if is_synchronous(enc):
        yield Settle()
        tid = (yield from submit_tasks(backend, [enc], []))[0]
    else:
        while (tid := runs.add(enc)) is None:
            want = runs.lease_wanted()
            if isinstance(want, int):
                try:
                    runs.leased(*(yield Request(to_request(Lease(want)), read=read_lease)))
                finally:
                    runs.asked()
            elif want is not None:  # (another thread's run() is asking: its lease is ours too)
                timeout = backend.connection.quick_wait
                if (yield WaitFor([want], timeout)):
                    raise ControllerUnreachable(
                        f"no lease of taskids for run() came within {timeout:g}s")
    if block:
        yield Settle()
        return (yield from get_task_result(backend, tid, True, timeout))
    return tid


def read_lease(reply: LeaseReply, _: list[Any]) -> tuple[int, int]:
    return reply.start, reply.n


# -- results ---------------------------------------------------------------------------------
def results(tids: list[int], block: bool, timeout: float | None, what: str) -> Verb:
    """Result entries (meta, frames) of taskids; an id out of range reads as unknown."""
    entries = [(unknown_entry(t), []) for t in tids]
    asked = [t for t in tids if in_range(t)]
    if asked:
        got = iter((yield Request(to_request(ResultQuery(asked, block)),
                                  read=split_results, blocking=block, timeout=timeout,
                                  what=what)))
        entries = [next(got) if in_range(t) else e for t, e in zip(tids, entries, strict=True)]
    return entries


def get_task_result(backend: Backend, taskid: int, block: bool, timeout: float | None) -> Verb:
    """A result the last barrier brought along is handed out (once) without asking."""
    check_taskid(taskid)
    check_seconds(timeout, "timeout")
    kept = backend.kept_results.pop(taskid, None)
    if kept is not None:
        return backend.decode(*kept)
    (meta, frames), = yield from results([taskid], block, timeout,
                                         f"get_task_result({taskid}, block=True)")
    return backend.decode(meta, frames)


def task_info(taskid: int) -> Verb:
    check_taskid(taskid)
    if not in_range(taskid):
        return TaskUnknown(taskid).as_map()
    return (yield task_info_request(taskid))


def clear(backend: Backend, taskids: Any) -> Verb:
    """Drop finished results; KeyError names the ids without one (the others are dropped)."""
    # (an id named twice is one result: cleared once, not then said to have none)
    tids = None if taskids is None else list(dict.fromkeys(taskid_list(taskids)))
    backend.forget_results(tids)
    reply = ClearReply(0, [])
    asked = tids if tids is None else [t for t in tids if in_range(t)]
    if asked is None or asked:
        reply, _ = yield Request(to_request(Clear(asked)))
    if reply.dropped >= BURST_MIN:  # the program has likely dropped its futures too
        give_back(time.monotonic())
    missing = [*reply.missing, *(t for t in tids or () if not in_range(t))]
    if missing:
        # (named in short: a list of a million ids made a message of 11 MB; all of them
        # are in the error's `missing`)
        error = KeyError(
            f"no finished result for {ids_text(missing)} (unknown, unfinished, or already "
            f"cleared); {reply.dropped} other result(s) were cleared")
        error.missing = missing  # type: ignore[attr-defined]
        raise error
    return reply.dropped


# -- waiting ---------------------------------------------------------------------------------
def barrier(backend: Backend, taskids: Any, progress: bool | None,
            timeout: float | None) -> Verb:
    check_seconds(timeout, "timeout")
    tids = [t for t in taskid_list(taskids) if in_range(t)]
    if not tids:
        return None
    if show_progress(progress):
        yield from wait(backend, tids, timeout, True)
    else:  # (the reply brings results along, up to a budget, for get_task_result)
        backend.keep_results((yield Request(
            to_request(Wait(tids, KEPT_RESULTS_BYTES)), blocking=True,
            timeout=timeout, what="barrier", read=split_results)))
    return None


def wait(backend: Backend, futures_or_ids: Any, timeout: float | None,
         progress: bool | None) -> Verb:
    check_seconds(timeout, "timeout")
    items = [futures_or_ids] if isinstance(futures_or_ids, int) or is_future(futures_or_ids) \
        else list(futures_or_ids)
    made = iter(backend.futures_for([x for x in items if not is_future(x)]))
    futs = yield Adopt([x if is_future(x) else next(made) for x in items])
    if not futs:
        return futs
    with progress_bar(progress, len(futs), "wait", "task") as bar:
        pending = yield WaitFor(futs, timeout, lambda _: bar.update())
    if pending:
        raise TimeoutError(f"{len(pending)} of {len(futs)} tasks unfinished after {timeout:g}s")
    return futs


# -- maps ------------------------------------------------------------------------------------
def map_elements(backend: Backend, options: TaskOptions, func: Callable[..., Any],
                 sequences: Sequence[Iterable[Any]], chunksize: int | None,
                 progress: bool | None, timeout: float | None) -> Verb:
    """Whatever ends it before every chunk has finished (Ctrl-C, cancelling, `timeout`, any
    exception) aborts the chunks still queued or running."""
    check_seconds(timeout, "timeout")
    args = map_arguments(options, sequences, chunksize)
    if not args:
        return []
    size = chunksize or auto_chunksize(len(args), (yield live_engine_count()))
    chunks, encoded = encode_chunks(backend, options, func, chunked(args, size),
                                    split=chunksize is None)
    name = getattr(func, "__name__", "map")
    futs: list[TaskFuture] = []
    try:
        futs = backend.submit_futures(encoded, checked=True)
        items = {f: len(c) for f, c in zip(futs, chunks, strict=True)}
        with progress_bar(progress, len(args), name, "item") as bar:

            def each(f: TaskFuture) -> None:
                bar.update(items[f])
                if not f.cancelled():
                    f.exception()  # (its result decoded now, while later chunks still run)

            pending = yield WaitFor(futs, timeout, each)
        if pending:
            raise TimeoutError(f"map of {name} did not finish within {timeout:g}s (timeout=); "
                               "its unfinished tasks were aborted")
    except (GeneratorExit, ControllerUnreachable):  # (nothing can be aborted)
        raise
    except BaseException:
        yield Abort(futs)
        raise
    check_unreachable(futs)
    return assemble_map(name, futs, chunks, len(args))


def imap_elements(backend: Backend, options: TaskOptions, func: Callable[..., Any],
                  iterable: Iterable[Any], ordered: bool, chunksize: int | None,
                  max_outstanding: int | None, progress: bool | None) -> Verb:
    """Checks the options now; the verb streams (see IMapRun). Closing it early aborts what
    is still out."""
    check_imap(options, chunksize, max_outstanding)
    return _imap(backend, options, func, iterable, ordered, chunksize, max_outstanding,
                 progress)


def _imap(backend: Backend, options: TaskOptions, func: Callable[..., Any],
          iterable: Iterable[Any], ordered: bool, chunksize: int | None,
          max_outstanding: int | None, progress: bool | None) -> Verb:
    run = IMapRun(backend, options, func, iterable, ordered=ordered, chunksize=chunksize,
                  max_outstanding=max_outstanding, n_engines=(yield live_engine_count()))
    total = len(iterable) if hasattr(iterable, "__len__") else None
    bar = progress_bar(progress, total, getattr(func, "__name__", "imap"), "item")
    try:
        while True:
            futs = run.send_more()
            if futs:
                yield Follow(futs)
            if run.finished:
                return None
            for ok, value in run.chunk_done((yield NextDone())):
                if not ok:
                    raise value
                bar.update()
                yield Emit(value)
    finally:
        bar.close()
        run.close()


def run_all(backend: Backend, task: BaseTask, timeout: float | None) -> Verb:
    """One copy of `task` per live engine; whatever ends it early aborts the copies left."""
    check_seconds(timeout, "timeout")
    eids = yield live_engine_ids()
    futs = backend.submit_futures([backend.encode(t) for t in pinned_copies(task, eids)])
    try:
        pending = yield WaitFor(futs, timeout)
        if pending:
            raise TimeoutError(f"run_all did not finish within {timeout:g}s (timeout=): "
                               f"{len(pending)} of {len(futs)} tasks unfinished; they were "
                               "aborted")
    except GeneratorExit:
        raise
    except BaseException:
        yield Abort(futs)
        raise
    check_unreachable(futs)  # (raised as itself, not as a failure of each engine)
    return run_all_outcome(eids, futs)


def seed_map(backend: Backend, func: Callable[..., Any], sequences: Sequence[Iterable[Any]],
             options: dict[str, Any], block: bool, timeout: float | None) -> Verb:
    """The seed mapper's map: one MapTask per element; with `block` their results in order
    (the first failure raised), else their taskids. Whatever ends it before it returns aborts
    the tasks it had sent."""
    check_seconds(timeout, "timeout")
    MapTask(len, **options)  # an option changed since: checked before anything is sent
    encoded = [backend.encode(MapTask(func, a, **options)) for a in zip_sequences(sequences)]
    tids: list[int] = []
    try:
        yield from submit_tasks(backend, encoded, tids)
        if not block or not tids:
            return tids
        name = getattr(func, "__name__", "map")
        entries = yield from results(tids, True, timeout, f"map of {name}")
    except GeneratorExit:
        raise
    except BaseException:
        yield Abort((), tids)
        raise
    return [backend.decode(m, f) for m, f in entries]
