"""The backlog: queued tasks kept only in the store, beyond the window held in memory.

A queued task costs the controller ~3 kB while the scheduler holds it (its record, its nodes,
its payload frames, the indexes by taskid, a watch's entries: see benchmarks/memory_flat.md).
So that a flood of a million tasks does not cost gigabytes, at most `window` tasks are active
in memory (queued or running, `--memory-budget`: defaults.queue_window); a task submitted beyond that
is stored as usual (committed before its submit is answered) but not handed to the scheduler:
the controller keeps only its taskid here, as runs of consecutive ids (a flood is one `range`).
When fewer than `low` tasks are active, the next ones are read back from the store in taskid
order, at most `batch` a turn (submits.py `refill`), and submitted to the scheduler as a
reloaded task is. While a backlog exists every new task goes behind it (FIFO by taskid); a task
numbered below what was already read back (a run()'s leased taskid) goes to the scheduler at
once, as it would come first anyway.

The window counts bytes too (`window_bytes`, a share of `--memory-budget`:
defaults.queue_window_bytes): the payload frames of the tasks held in memory (the store's
`held_bytes`), which the per-task cost above leaves out. A new task whose payload would bring
them past it goes to the backlog, however few tasks are active; the backlog is read back only
while they are below half of it (`wanted`), and a batch read back stops before the task that
would bring them past it (`fits`, asked by the store task by task, from the size of its row).
One task is always let in when none is active, however large, so that nothing waits forever.
A read-back whose first task did not fit (`stall`) is not tried again until fewer bytes are
held (a task finished) or none is active: the loop does not spin on it meanwhile.

`Backlog` is pure (taskids and numbers in, taskids and numbers out): the controller asks
`holds` whether a new task stays here, `wanted` how many to read back (and the store `fits`
for each), and takes them with `peek` and `drop_first`.
`DeferredWatches` keeps the requests (watch, result, wait) that wait for backlog tasks without
an entry per task: they are registered task by task as their tasks leave the backlog.

A backlog task whose `after` names a task still active is noted under that task (`wait_for`,
as runs of taskids): when that task finishes (`finished`), a failure (an error, an abort, a
dependency of its own) dooms them (`doomed`: the controller reads them back at once, and the
scheduler fails them with DependencyError, in the same commit as the failure: see
submits.fail_doomed), as it fails the dependents it holds; a success lets them be (read back
later, a dependency whose result was cleared since then counts as done, as in memory). So a
failure never lets a backlog task run, even once its result is cleared. The notes go when the
backlog is empty (none of them can matter then).

A `:memory:` store has no backlog (the tasks would stay in memory anyway): `window` None.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any

LOW_SHARE = 2  # refill once fewer than window / LOW_SHARE tasks are active ...
BATCH = 2000  # ... reading at most this many a loop turn (the loop stays responsive)


class Backlog:
    """The taskids of the backlog, in order, as runs of consecutive ids."""

    def __init__(self, window: int | None, batch: int = BATCH,
                 window_bytes: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"the queue window must be at least 1 task, not {window!r}")
        if window_bytes is not None and window_bytes < 0:
            raise ValueError(f"the queue window's bytes cannot be negative: {window_bytes!r}")
        self.window = window
        self.low = max(1, window // LOW_SHARE) if window is not None else 0
        # payload bytes held in memory at most (None: no limit), and the refill's mark
        self.window_bytes = window_bytes if window is not None else None
        self.low_bytes = window_bytes // LOW_SHARE if self.window_bytes is not None else 0
        self.stalled: int | None = None  # bytes held when the next task did not fit (`stall`)
        self.batch = batch
        self.runs: list[range] = []  # sorted, disjoint; runs[head:] are live
        self.head = 0
        self.n = 0
        self.cursor = -1  # the highest taskid read back so far (new ones below it skip)
        self.waits: dict[int, list[range]] = {}  # active task -> backlog tasks after it
        self.doomed: dict[int, int] = {}  # backlog task -> a task it waits for that failed

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __contains__(self, tid: int) -> bool:
        if not self.n:
            return False
        i = bisect_right(self.runs, tid, lo=self.head, key=lambda r: r.start) - 1
        return i >= self.head and tid in self.runs[i]

    def first(self) -> int | None:
        """The lowest taskid held (None: the backlog is empty)."""
        return self.runs[self.head].start if self.n else None

    def ids(self) -> Iterator[int]:
        for r in self.runs[self.head:]:
            yield from r

    def holds(self, tid: int, active: int, held_bytes: int = 0, size: int = 0) -> bool:
        """Whether a new task `tid` stays in the backlog (`active`: tasks held in memory,
        `held_bytes` their payload bytes; `size`: the new task's)."""
        if self.window is None or tid <= self.cursor:
            return False
        return self.n > 0 or active >= self.window or not self.fits(active, 0,
                                                                     held_bytes + size)

    def fits(self, active: int, k: int, held_bytes: int) -> bool:
        """Whether the `k`th task (from 0) let into memory at once (a batch read back) may
        come, which brings the payload bytes held to `held_bytes`, with `active` tasks held
        before it: within the window's bytes, or the first one while none is held."""
        limit = self.window_bytes
        return limit is None or held_bytes <= limit or (active == 0 and k == 0)

    def add(self, tid: int) -> None:
        """A new task `tid` (a ValueError if it is here already). Nearly always above every
        taskid held; a run()'s leased one may come between them."""
        runs = self.runs
        if self.n and tid <= runs[-1][-1]:
            if tid in self:
                raise ValueError(f"task {tid} is in the backlog already")
            i = bisect_right(runs, tid, lo=self.head, key=lambda r: r.start)
            runs.insert(i, range(tid, tid + 1))
            self.n += 1
            return
        if self.n and runs[-1].stop == tid:
            runs[-1] = range(runs[-1].start, tid + 1)
        else:
            if not self.n:
                runs.clear()
                self.head = 0
            runs.append(range(tid, tid + 1))
        self.n += 1

    def hold(self, tid: int, after: Any = ()) -> None:
        """A task the store holds queued beyond the window (a restart: the store's
        `unfinished` hands them so), with its `after` (noted, see `wait_for`)."""
        self.add(tid)
        if after:
            self.wait_for(tid, after)

    def wait_for(self, tid: int, deps: Any) -> None:
        """Backlog task `tid` waits for `deps` (tasks still active)."""
        for dep in dict.fromkeys(deps):
            runs = self.waits.setdefault(dep, [])
            if runs and runs[-1].stop == tid:
                runs[-1] = range(runs[-1].start, tid + 1)
            else:
                runs.append(range(tid, tid + 1))

    def finished(self, dep: int, ok: bool) -> None:
        """Task `dep` finished (`ok`: successfully); if it failed, the backlog tasks after it
        are doomed (to fail with DependencyError)."""
        runs = self.waits.pop(dep, None)
        if runs is None or ok:
            return
        doomed = self.doomed
        for r in runs:
            for tid in r:
                if tid not in doomed and tid in self:
                    doomed[tid] = dep

    def wanted(self, active: int, held_bytes: int = 0) -> int:
        """How many tasks to read back now (0: none) with `active` tasks held in memory, whose
        payload bytes are `held_bytes` (at most: the store stops a batch by bytes, `fits`)."""
        if not self.n or self.window is None or active >= self.low or (active and (
                (self.window_bytes is not None and held_bytes >= self.low_bytes)
                or (self.stalled is not None and held_bytes >= self.stalled))):
            return 0
        return min(self.batch, self.window - active, self.n)

    def stall(self, held_bytes: int) -> None:
        """The next task did not fit (`fits`) with `held_bytes` held: none is wanted until
        fewer are held, or none is active, or the backlog changes at its head."""
        self.stalled = held_bytes

    def peek(self, k: int) -> list[int]:
        """The first `k` taskids (fewer if the backlog holds fewer)."""
        out: list[int] = []
        for r in self.runs[self.head:]:
            out.extend(r[:k - len(out)])
            if len(out) >= k:
                break
        return out

    def drop_first(self, k: int) -> None:
        """The first `k` taskids leave the backlog (read back into the scheduler)."""
        runs = self.runs
        self.stalled = None
        while k > 0 and self.n:
            r = runs[self.head]
            if len(r) <= k:
                k -= len(r)
                self.n -= len(r)
                self.cursor = max(self.cursor, r[-1])
                self.head += 1
            else:
                self.cursor = max(self.cursor, r[k - 1])
                runs[self.head] = r[k:]
                self.n -= k
                k = 0
        if self.head > 64 and self.head * 2 > len(runs):
            del runs[:self.head]
            self.head = 0
        if not self.n:
            self.waits.clear()

    def remove(self, tid: int) -> bool:
        """Take one taskid out (aborted, or withdrawn); whether it was here."""
        if tid not in self:
            return False
        self.stalled = None
        runs = self.runs
        i = bisect_right(runs, tid, lo=self.head, key=lambda r: r.start) - 1
        r = runs[i]
        parts = [p for p in (range(r.start, tid), range(tid + 1, r.stop)) if p]
        runs[i:i + 1] = parts
        self.n -= 1
        if not self.n:
            self.waits.clear()
        return True


@dataclass(slots=True)
class Deferred:
    """One request's taskids still in the backlog (`tids[pos:]`, in order), but `early`."""

    waiter: Any
    tids: range | tuple[int, ...]
    pos: int = 0
    early: set[int] = field(default_factory=set)  # registered out of order (an abort)


class DeferredWatches:
    """Requests waiting for backlog tasks, registered per task only as each leaves it."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, Deferred]] = []  # (next taskid, order, entry)
        self.order = count()

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, waiter: Any, tids: list[int]) -> None:
        """`tids`: the request's backlog taskids, sorted."""
        if not tids:
            return
        run = range(tids[0], tids[0] + len(tids))
        d = Deferred(waiter, run if tids == list(run) else tuple(tids))
        heapq.heappush(self.heap, (d.tids[0], next(self.order), d))

    def upto(self, last: int) -> Iterator[tuple[int, Any]]:
        """(taskid, waiter) of every deferred taskid <= `last` (those just read back)."""
        heap = self.heap
        while heap and heap[0][0] <= last:
            _, _, d = heapq.heappop(heap)
            tids = d.tids
            while d.pos < len(tids) and tids[d.pos] <= last:
                tid = tids[d.pos]
                d.pos += 1
                if tid in d.early:
                    d.early.discard(tid)
                else:
                    yield tid, d.waiter
            if d.pos < len(tids):
                heapq.heappush(heap, (tids[d.pos], next(self.order), d))

    def take(self, tid: int) -> list[Any]:
        """The waiters deferred for `tid`, now (it leaves the backlog out of order)."""
        out = []
        for _, _, d in self.heap:
            if tid not in d.early and tid in d.tids[d.pos:]:
                d.early.add(tid)
                out.append(d.waiter)
        return out

    def forget(self, rt: bytes) -> None:
        """That client is gone: its deferred requests go."""
        kept = [e for e in self.heap if e[2].waiter.reply_to != rt]
        if len(kept) < len(self.heap):
            heapq.heapify(kept)
            self.heap = kept
