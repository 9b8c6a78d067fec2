"""`Runs`: the tasks of `run()`, numbered from a block of leased taskids and sent in batches.

    run(task) --encoded and checked at the call (verbs.run)--> Runs.add: the next leased id;
        the task waits in the queue --> the id is returned at once
    the queue --one submit{tasks, tids}, on the send socket--> controller, when
        - any other call of this client begins (`begin`, by the fronts for every other verb,
          backend.py and aio.py): that call then waits, before it returns, for the answers
          of every batch sent (`end`), and raises a refusal: a task is stored before another
          call returns;
        - nothing of run()'s is unanswered (a lone run() goes at once), or the answer to
          what was comes (what waited goes in one message: a loop of runs costs a message a
          round trip), or the batch is big (BATCH_TASKS tasks, or half the message limit);
        - FLUSH_DELAY after its first task at the latest (the flusher thread), so that it is
          stored within 10 ms.
    a batch the controller refused, or that could not be sent, is raised by the next call of
        this client (RunNotStored, naming the taskids that will not run, of every batch
        refused since the call before; they read as unknown; ControllerUnreachable, naming
        them, for batches whose answer never came: they may or may not be stored)
    leases (controller/leases.py): asked for by `run` (a round trip) when the block is used
        up, one request at a time (another thread's run() waits for its answer), each twice
        the last (up to LEASE_MAX) while run() keeps using them; any other
        call gives back what is left (`begin`), so that one client's taskids still rise by 1
        whatever it calls (submit, map, put number their tasks on the controller). A
        restarted controller keeps the lease (its store kept it; the client's hello claims
        it), so what was queued or in flight goes on to it. An unreachable controller ends
        the lease (the tasks queued then are reported as not stored), and so does a refusal
        saying it ended (the client was silent past the controller's bound: stopped, or cut
        off; a controller without a durable store restarted): then the batch refused and
        those queued behind it are reported, and the next run() asks for a new lease.
        A client whose run() has taken no id for IDLE_RELEASE seconds gives back what is left
        too (the flusher thread): an id leased and not used reads as unfinished to every
        client (a barrier on it, a task `after` it wait), so that wait ends within that bound
        (the id reads as unknown: it is never used) rather than when this client makes another
        call or goes; the next run() asks for a new lease (a round trip).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any

from ..errors import (
    ControllerUnreachable,
    RunNotStored,
    StoreError,
    StoreRunNotStored,
    ids_text,
)
from ..protocol import Release, to_request
from .codec import (
    SUBMIT_BATCH,
    SUBMIT_OVERHEAD,
    Encoded,
    batch_length,
    refusal,
    submit_header,
)
from .connection import Connection

FLUSH_DELAY = 0.005  # seconds a run() task waits at most for the answer to the last batch
BATCH_TASKS = 1000  # tasks queued that are sent at once
FIRST_LEASE = 16  # taskids in a client's first lease; then twice the last, ...
LEASE_MAX = 4096  # ... up to this
IDLE_RELEASE = 1.0  # seconds without a run() after which the rest of the lease goes back
TID_BYTES = 9  # a taskid in a submit's header, at most


def is_synchronous(enc: Encoded) -> bool:
    """A task whose refusal only the controller can find (a depend callable it must
    unpickle): sent at once, and its answer waited for, so that run() raises it."""
    return enc.synchronous


class Runs:
    """The run() queue and lease of one client (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.RLock()  # (a reply may be handled at once, in the sender)
        self._wake = threading.Condition(self._lock)
        self._start = self._next = self._end = 0  # the lease: start..end-1, next.. unused
        self._size = FIRST_LEASE
        self._queue: list[tuple[Encoded, int]] = []
        self._bytes = 0
        self._in_flight: list[Future] = []
        self._asking: Future | None = None  # done when the lease request in flight is over
        # Batches refused or unanswered, not raised yet: (kind, taskids, why), kind one of
        # "store" (the store could not write them), "refused", "unanswered" (see raise_failure).
        self._failed: list[tuple[str, list[int], str]] = []
        self._flusher: threading.Thread | None = None
        self._closed = False
        self._used_at = 0.0  # (monotonic) when run() last took an id, or a lease came

    # -- run() -------------------------------------------------------------------------------
    def lease_wanted(self) -> int | Future | None:
        """How many taskids to ask for (then `leased` with the answer, and `asked` in any
        case); None: the lease has one left; a Future: another thread's run() is asking for
        one (wait for it, then try again: one request at a time, so that a lease is never
        overwritten while it has ids left). What is queued is sent first (before the
        request for a lease)."""
        with self._lock:
            if self._next < self._end:
                return None
            if self._asking is not None:
                return self._asking
            self._send(self._take())
            self._asking = Future()
            return self._size

    def leased(self, start: int, n: int) -> None:
        with self._lock:
            self._start, self._next, self._end = start, start, start + n
            self._size = min(self._size * 2, LEASE_MAX)
            self._used_at = time.monotonic()
            self._flusher_on()  # (it gives the lease back once run() is idle)

    def asked(self) -> None:
        """The request for a lease is over (answered or not): whoever waits for it goes on."""
        with self._lock:
            asking, self._asking = self._asking, None
        if asking is not None:
            asking.set_result(None)

    def add(self, enc: Encoded) -> int | None:
        """Queue a task under the next leased id; None if the lease is used up."""
        with self._lock:
            if self._next >= self._end:
                return None
            tid = self._next
            self._next += 1
            self._used_at = time.monotonic()
            self._queue.append((enc, tid))
            self._bytes += enc.size
            if not self._in_flight or len(self._queue) >= BATCH_TASKS \
                    or self._bytes > self._conn.max_message // 2:
                self._send(self._take())
            elif len(self._queue) == 1:
                self._wake.notify()
                self._flusher_on()
            return tid

    def _flusher_on(self) -> None:
        """(Under the lock) Start the flusher thread, once."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                             name="taskmill-client-runs")
            self._flusher.start()

    # -- other calls -------------------------------------------------------------------------
    def busy(self) -> bool:
        """Whether settling has anything to do: tasks queued, answers not in, refusals not
        raised, or a lease to give back (read without the lock: for the caller's own thread,
        whose run() calls have returned, it is exact)."""
        return bool(self._queue or self._in_flight or self._failed or self._next < self._end)

    def begin(self) -> list[Future]:
        """(Another call begins) Send what is queued and give back the rest of the lease;
        the answers to wait for before that call returns (`end`)."""
        self._conn.check_process()  # (a forked child would wait for the parent's answers)
        if not self.busy():
            return []
        with self._lock:
            batches = self._take()
            if self._next < self._end:
                self._next = self._end = 0
                if batches:
                    batches[-1][0]["release"] = True
                else:
                    batches = [(to_request(Release()), [], [])]
            self._send(batches)
            return list(self._in_flight)

    def end(self, sent: list[Future], timeout: float) -> None:
        """(Blocking) Wait for the answers `begin` returned (at most `timeout` seconds:
        past that, ControllerUnreachable) and raise a refusal."""
        if sent:
            _, waiting = wait_futures(sent, timeout)
            if waiting:
                raise self.no_answer(timeout)
        self.raise_failure()

    def raise_failure(self) -> None:
        """Raise what befell the batches since the last call: every taskid refused in one
        RunNotStored (a StoreRunNotStored if the store refused them all); else every taskid
        whose answer never came in one ControllerUnreachable. Both happened: the refusal
        now, the rest at the next call. No taskid goes unsaid."""
        if not self._failed:
            return
        with self._lock:
            failed, self._failed = self._failed, []
            refused = [f for f in failed if f[0] != "unanswered"]
            if refused:
                self._failed = [f for f in failed if f[0] == "unanswered"]
        if not failed:
            return
        chosen = refused or failed
        tids = [t for _, ids, _ in chosen for t in ids]
        why = "; ".join(dict.fromkeys(w for _, _, w in chosen))
        if not refused:
            raise ControllerUnreachable(f"{why} (the tasks run() returned {ids_text(tids)} for "
                                        "may or may not be stored)")
        if all(kind == "store" for kind, _, _ in refused):
            raise StoreRunNotStored(tids, why)
        raise RunNotStored(tids, why)

    def no_answer(self, timeout: float) -> ControllerUnreachable:
        return ControllerUnreachable(
            f"the controller at {self._conn.info.client_url} did not answer a submit of "
            f"run()'s tasks within {timeout:g}s (they may or may not be stored)")

    def lost_lease(self, why: str) -> None:
        """(I/O thread) The controller restarted, or is unreachable, or said the lease ended:
        it is gone (what is queued from it will not be stored)."""
        with self._lock:
            if self._queue:
                tids = [t for _, t in self._queue]
                self._queue, self._bytes = [], 0
                self._failed.append(("refused", tids, why))
            self._start = self._next = self._end = 0
            self._size = FIRST_LEASE

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()

    # -- sending -----------------------------------------------------------------------------
    def _take(self) -> list[tuple[dict[str, Any], list[Any], list[int]]]:
        """The queue as submit messages (header, frames, tids), emptied (under the lock)."""
        out = []
        queue = self._queue
        budget = self._conn.max_message - SUBMIT_OVERHEAD - TID_BYTES * SUBMIT_BATCH
        i = 0
        while i < len(queue):
            n = batch_length((enc for enc, _ in queue[i:]), budget)
            part = queue[i:i + n]
            tids = [t for _, t in part]
            header, frames = submit_header([enc for enc, _ in part], tids=tids)
            out.append((header, frames, tids))
            i += n
        self._queue, self._bytes = [], 0
        return out

    def _send(self, batches: Sequence[tuple[dict[str, Any], list[Any], list[int]]]) -> None:
        for header, frames, tids in batches:
            try:
                fut = self._conn.send(header, frames)
            except Exception as e:  # noqa: BLE001 - closed, unreachable, unencodable
                if tids:  # (a release's: nothing to report)
                    self._failed.append(("refused", tids, str(e)))
                continue
            self._in_flight.append(fut)
            fut.add_done_callback(lambda f, tids=tids: self._answered(f, tids))

    def _answered(self, fut: Future, tids: list[int]) -> None:
        """(Nothing of an answer is read but whether it is a refusal: the taskids are ours.)"""
        error: BaseException | None = None
        ended = False
        try:
            reply, _ = fut.result()
            if reply.get("ok", True) is False:
                error = refusal(reply)
                ended = reply.get("error_type") == "lease-ended"
        except BaseException as e:  # noqa: BLE001 - unreachable, closed
            error = e
        with self._lock:  # (failed before no longer in flight: see busy)
            if isinstance(error, StoreError) and tids:
                self._failed.append(("store", tids, str(error)))
            elif isinstance(error, ControllerUnreachable | RuntimeError) and tids:  # (closed)
                self._failed.append(("unanswered", tids, str(error)))
            elif error is not None and tids:
                self._failed.append(("refused", tids, str(error)))
            if ended and tids and self._start <= tids[0] < self._end:
                # (it was silent past the controller's bound: what is queued here is of the
                # same lease, and the next run() asks for a new one)
                self.lost_lease("this client's lease of taskids for run() had ended (it was "
                                "silent too long, or the controller restarted): not sent")
            if fut in self._in_flight:
                self._in_flight.remove(fut)
            if self._queue and not self._in_flight:  # (those queued meanwhile go now)
                self._send(self._take())

    def _flush_loop(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._queue:
                    self._idle()
                    continue
                deadline = time.monotonic() + FLUSH_DELAY
                while self._queue and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._send(self._take())
                        break
                    self._wake.wait(left)

    def _idle(self) -> None:
        """(The flusher, under the lock, nothing queued) Wait for a run(); give back the
        rest of the lease once run() has taken no id for IDLE_RELEASE seconds."""
        if self._next >= self._end:
            self._wake.wait()
            return
        left = self._used_at + IDLE_RELEASE - time.monotonic()
        if left > 0:
            self._wake.wait(left)
            return
        self._next = self._end = 0  # (sent after every batch of it: the controller's order)
        self._send([(to_request(Release()), [], [])])
