"""Sending futures' tasks and following their results: the `Submitter` and the `Watcher`.

    submit() --Submitter.add--> submit{tasks, watch} --> controller
        controller --reply{tids}--> I/O thread: SubmitStream sets each future's taskid
        controller --done{results}--> I/O thread: SubmitStream marks the futures done
    future(taskid) / wait(ids) --Watcher.watch--> watch{tids} --> controller --done--> ...

`submit` sends at once when no submit of this client is unanswered; otherwise its task waits
for that answer and then goes with every other task queued meanwhile, in one message. So a
loop of submits costs a message per round trip, not per task, and a lone submit never waits.
A loop of submits outruns the controller's answers, so a flood queues here (387k of 1M no-op
tasks, measured): a queued task is its `Encoded` (the spec kept packed, as the message splices
it in) and its pending future, ~0.8 kB together (tests/test_memory.py bounds it).
Futures for tasks submitted before are named in `watch` requests by the Watcher instead. The
I/O thread only marks futures done; `result()` unpickles, in the thread that calls it. Each
request is built from its record and each answer read into its record (taskmill.protocol); a
reply or `done` message that does not fit fails the futures it was for with the ProtocolError
naming the field (none is left waiting).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..protocol import ProtocolError, Refusal, Watch, from_done, from_reply, to_request
from .codec import (
    SUBMIT_OVERHEAD,
    Encoded,
    batch_length,
    refusal,
    split_results,
    submit_header,
)
from .connection import Connection
from .futures import TaskFuture

MAX_SUBMITS_IN_FLIGHT = 1  # futures' submit requests unanswered at once (see Submitter)


class Watcher:
    """Marks TaskFutures done from the controller's `done` messages.

    A future waits in `_queued` until a watch request names its taskid. Futures queued on the
    I/O thread (those whose submit replies it reads) share one request, sent when the I/O thread
    has read every message waiting; futures queued by a caller are sent at once. A taskid being
    watched already is not watched again, so every result crosses the wire once.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._queued: list[TaskFuture] = []
        self._pending: dict[int, list[TaskFuture]] = {}
        self._closed: BaseException | None = None
        conn.on_idle = self.flush

    def watch(self, futs: Sequence[TaskFuture]) -> None:
        with self._lock:
            closed = self._closed
            if closed is None:
                self._queued.extend(futs)
        if closed is not None:
            for f in futs:
                f.set_failure(closed)
        elif not self._conn.on_io_thread():
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._queued:
                return
            queued, self._queued = self._queued, []
            tids: list[int] = []
            for f in queued:
                waiting = self._pending.setdefault(f.known_taskid, [])
                if not waiting:
                    tids.append(f.known_taskid)
                waiting.append(f)
        if not tids:
            return
        left = set(tids)

        def on_done(header: dict[str, Any], frames: list[Any]) -> bool:
            if header.get("type") != "done":  # an error reply to the watch request
                self._fail_tids(left, refusal(header))
                return True
            try:
                done = from_done(header)
            except ProtocolError as e:  # (said once, to every future it may have finished)
                self._fail_tids(left, e)
                return True
            for meta, fr in split_results(done, frames):
                tid = meta.tid
                if tid in left:
                    left.discard(tid)
                    with self._lock:
                        futs = self._pending.pop(tid, [])
                    for f in futs:
                        f.set_outcome(meta, fr)
            return not left

        try:
            self._conn.send(to_request(Watch(tids)), stream=on_done)
        except Exception as e:  # noqa: BLE001 - closed, or the controller is unreachable
            self._fail_tids(tids, e)

    def _fail_tids(self, tids: Iterable[int], exc: BaseException) -> None:
        """Fail the futures waiting for these taskids (a watch that was not sent or refused)."""
        with self._lock:
            futs = [f for t in tids for f in self._pending.pop(t, ())]
        for f in futs:
            f.set_failure(exc)

    def fail_all(self, exc: BaseException, *, close: bool = True) -> None:
        """Fail every future waiting here; with `close`, every later one too."""
        with self._lock:
            if close:
                self._closed = exc
            futs = [f for waiting in self._pending.values() for f in waiting] + self._queued
            self._pending.clear()
            self._queued = []
        for f in futs:
            f.set_failure(exc)


class Submitter:
    """Sends futures' tasks, in `submit` requests with `watch`, batching by itself.

    At most MAX_SUBMITS_IN_FLIGHT such requests are unanswered at a time. A task submitted
    while that many are out waits in the queue; the next answer (read by the I/O thread) sends
    everything queued, SUBMIT_BATCH tasks to a message, and never more bytes to a message than
    the controller accepts. So a lone submit goes at once, and a flood of them costs one
    message per round trip rather than one per task.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._queue: list[tuple[Encoded, TaskFuture]] = []
        self._in_flight = 0
        self._streams: set[SubmitStream] = set()

    def add(self, encoded: Sequence[Encoded], futs: list[TaskFuture]) -> None:
        with self._lock:
            self._queue.extend(zip(encoded, futs, strict=True))
            batches = self._take()
        self._send(batches)

    def _take(self) -> list[list[tuple[Encoded, TaskFuture]]]:
        """Batches to send now (called under the lock)."""
        batches = []
        budget = self._conn.max_message - SUBMIT_OVERHEAD
        while self._queue and self._in_flight < MAX_SUBMITS_IN_FLIGHT:
            n = batch_length((enc for enc, _ in self._queue), budget)
            batches.append(self._queue[:n])
            del self._queue[:n]
            self._in_flight += 1
        return batches

    def _send(self, batches: list[list[tuple[Encoded, TaskFuture]]]) -> None:
        while batches:
            failed = 0
            for batch in batches:
                futs = [f for _, f in batch]
                header, frames = submit_header([enc for enc, _ in batch], watch=True)
                try:
                    self._conn.send(header, frames, stream=self._stream(futs))
                except Exception as e:  # noqa: BLE001 - closed, unreachable, unencodable
                    failed += 1
                    for f in futs:
                        f.set_submit_error(e)
            if not failed:
                return
            with self._lock:  # what was not sent is not in flight: send what waits behind it
                self._in_flight = max(0, self._in_flight - failed)
                batches = self._take()

    def _answered(self) -> None:
        with self._lock:
            self._in_flight -= 1
            batches = self._take()
        self._send(batches)

    def _stream(self, futs: list[TaskFuture]) -> Callable[[dict[str, Any], list[Any]], bool]:
        stream = SubmitStream(self, futs)
        with self._lock:
            self._streams.add(stream)
        return stream.on_message

    def _finished(self, stream: SubmitStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def withdraw(self, futs: Sequence[TaskFuture]) -> set[TaskFuture]:
        """Take the futures of `futs` that are still queued out of the queue (they are never
        sent) and cancel them; return those."""
        wanted = set(futs)
        with self._lock:
            keep = [(e, f) for e, f in self._queue if f not in wanted]
            taken = {f for _, f in self._queue if f in wanted}
            self._queue = keep
        for f in taken:
            f.set_withdrawn()
        return taken

    def fail_all(self, exc: BaseException) -> None:
        """Fail every future queued or sent and unfinished (the client was closed, or the
        controller is unreachable: then nothing is in flight any more either)."""
        with self._lock:
            queued, self._queue = self._queue, []
            streams, self._streams = self._streams, set()
            self._in_flight = 0
        for _, f in queued:
            f.set_submit_error(exc)
        for stream in streams:
            for f in stream.futs:
                if not f.submit_answered():
                    f.set_submit_error(exc)
                else:
                    f.set_failure(exc)


class SubmitStream:
    """The answers to one futures' submit: its taskids, then its results as they come."""

    __slots__ = ("submitter", "futs", "by_tid", "answered")

    def __init__(self, submitter: Submitter, futs: list[TaskFuture]) -> None:
        self.submitter = submitter
        self.futs = futs
        self.by_tid: dict[int, TaskFuture] = {}
        self.answered = False

    def on_message(self, header: dict[str, Any], frames: list[Any]) -> bool:
        """Called on the I/O thread; True when nothing more is expected."""
        if header.get("type") == "reply":
            if self.answered:  # a restarted controller answers a resent submit again
                return self._done()
            self.answered = True
            try:
                reply = from_reply("submit", header)
                if isinstance(reply, Refusal):
                    raise refusal(header)
                for f, tid in zip(self.futs, reply.tids, strict=True):
                    f.set_taskid(tid)
                    self.by_tid[tid] = f
            except BaseException as e:  # noqa: BLE001 - each future carries the error
                for f in self.futs:
                    f.set_submit_error(e)
                self.by_tid.clear()
            self.submitter._answered()
            return self._done()
        try:
            done = from_done(header)
        except ProtocolError as e:  # (said once, to every future it may have finished)
            for f in self.by_tid.values():
                f.set_failure(e)
            self.by_tid.clear()
            return self._done()
        for meta, fr in split_results(done, frames):
            f = self.by_tid.pop(meta.tid, None)
            if f is not None:
                f.set_outcome(meta, fr)
        return self._done()

    def _done(self) -> bool:
        if self.answered and not self.by_tid:
            self.submitter._finished(self)
            return True
        return False
