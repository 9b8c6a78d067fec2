"""What the controller did recently: tasks/s, task durations, the attempts of the task stream.

`RecentActivity` is fed by the controller where a task is dispatched to an engine, where an
engine reports an attempt, where a task finishes and where an engine is lost; `statistics()`,
`taskmill status`, `/metrics` and the dashboard read it. It is a pure class: every method takes
the time as an argument (seconds since the epoch) and it reads no clock and touches no socket,
so each figure is a fast unit test.

It must stay bounded whatever the load: per-second buckets for a few minutes, a ring of the most
recent attempts and failures, and only the attempts that are open right now (at most the engines'
slots). It never holds user data: taskids, engine ids, status words and short error texts only.

What it reports it builds as records of protocol.views: `record` an ActivitySnapshot (the
`activity` reply, with its AttemptRow and FailureRow rows), `DurationHistogram.record` the
statistics' Durations; `snapshot` and `as_dict` give them as plain maps.

Names: this module keeps the recent activity; `statistics()` (controller/views.py) is the whole
report (the controller's `Counters`, the queue, the engines and this activity), asked for with
the `stats` request; `taskmill status` (status.py) renders it in a terminal.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec

from .protocol import ActivitySnapshot, AttemptRow, Durations, FailureRow

# Upper bounds (seconds) of the task-duration histogram; a last, unbounded bucket follows.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
                    1800.0)
THROUGHPUT_WINDOW = 60  # seconds behind "tasks/s"
HISTORY_SECONDS = 300  # seconds of per-second throughput and queue samples kept for plots
ATTEMPT_RING = 2000  # finished attempts kept for the task stream
FAILURE_RING = 50  # failed tasks kept for "latest failures"
MESSAGE_CHARS = 300  # an error message is cut to this many characters
NUMBERS = (int, float)  # (a tuple: `int | float` builds a union object on every test)
ENGINE_STATUSES = ("ok", "error", "rejected")  # what an engine reports; anything else is an error


@dataclass(slots=True)
class Attempt:
    """One attempt of a task on an engine: open while `end` is None."""

    tid: int
    eid: int
    attempt: int
    start: float
    end: float | None = None
    status: str = "running"
    seq: int = 0

    def row(self) -> AttemptRow:
        return AttemptRow(seq=self.seq, tid=self.tid, engineid=self.eid, attempt=self.attempt,
                          start=self.start, end=self.end, status=self.status)


class DurationHistogram:
    """Counts of task durations in fixed buckets (DURATION_BUCKETS), with their sum."""

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        if not math.isfinite(seconds):
            return
        seconds = max(0.0, float(seconds))
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def record(self) -> Durations:
        """`buckets`: [upper bound, durations <= it] pairs, cumulative; `None` is +Inf."""
        running = list(itertools.accumulate(self.counts))
        bounds: list[float | None] = [*self.bounds, None]
        return Durations(buckets=[[b, n] for b, n in zip(bounds, running, strict=True)],
                         sum=self.sum, count=self.count)

    def as_dict(self) -> dict[str, Any]:
        return self.record().as_map()


class PerSecond:
    """A rolling series of one value per whole second, for the last `keep` seconds."""

    def __init__(self, keep: int = HISTORY_SECONDS) -> None:
        self.keep = keep
        self.rows: deque[list[Any]] = deque()  # [second, value, ...], oldest first

    def _trim(self, now: float) -> None:
        oldest = int(now) - self.keep
        while self.rows and self.rows[0][0] <= oldest:
            self.rows.popleft()

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        if self.rows and self.rows[-1][0] == second:
            self.rows[-1][1] += n
        else:
            self.rows.append([second, n])
            self._trim(now)

    def set(self, now: float, *values: Any) -> None:
        """Record `values` for this second (the last call in a second wins)."""
        second = int(now)
        if self.rows and self.rows[-1][0] == second:
            self.rows[-1][1:] = list(values)
        else:
            self.rows.append([second, *values])
            self._trim(now)

    def total_since(self, second: int) -> int:
        return sum(row[1] for row in self.rows if row[0] >= second)

    def since(self, now: float) -> list[list[Any]]:
        self._trim(now)
        return [list(row) for row in self.rows]


class RecentActivity:
    """Rolling counters of the controller, fed with explicit timestamps (see the module doc)."""

    def __init__(self, started: float, *, history: int = HISTORY_SECONDS,
                 attempts: int = ATTEMPT_RING, failures: int = FAILURE_RING) -> None:
        self.started = started
        self.durations = DurationHistogram()
        self.finished_per_second = PerSecond(history)
        self.queue_per_second = PerSecond(history)  # [second, scheduled, pending]
        self.open: dict[int, Attempt] = {}  # tid -> its attempt on an engine right now
        self.held: dict[int, dict[int, None]] = {}  # eid -> its open tids, in dispatch order
        self.closed: deque[Attempt] = deque(maxlen=attempts)
        self.failures: deque[dict[str, Any]] = deque(maxlen=failures)
        self._seq = itertools.count(1)
        self.last_seq = 0

    # -- events ----------------------------------------------------------------------------
    def dispatched(self, tid: int, eid: int, attempt: int, now: float) -> None:
        """Task `tid` was handed to engine `eid` (running, or buffered behind its running task)."""
        if tid in self.open:  # its previous attempt ended without a report (e.g. rejected)
            self._close(self.open[tid], "moved", now)
        self.open[tid] = Attempt(tid, eid, attempt, now)
        self.held.setdefault(eid, {})[tid] = None

    def attempt_ended(self, tid: int, eid: int, attempt: int, status: str, now: float) -> None:
        """Engine `eid` reported attempt `attempt` of `tid` (`ok`, `error` or `rejected`)."""
        a = self.open.get(tid)
        if a is not None and a.eid == eid and a.attempt == attempt:
            self._close(a, status if status in ENGINE_STATUSES else "error", now)

    def returned(self, tid: int, eid: int, attempt: int, now: float) -> None:
        """Engine `eid` gave attempt `attempt` of `tid` back unstarted (a revoke granted, an
        engine stopping, a message lost on the way): it ends there as `moved`, at once (it
        stayed among what that engine held, and ended as `died` with it)."""
        a = self.open.get(tid)
        if a is not None and a.eid == eid and a.attempt == attempt:
            self._close(a, "moved", now)

    def withdrawn(self, tid: int) -> None:
        """Task `tid` was taken back before it reached an engine: its attempt never was."""
        a = self.open.pop(tid, None)
        if a is not None:
            held = self.held.get(a.eid)
            if held is not None:
                held.pop(tid, None)

    def engine_lost(self, eid: int, now: float) -> None:
        """Engine `eid` died: every attempt it held ends as `died`."""
        for tid in list(self.held.get(eid, ())):
            self._close(self.open[tid], "died", now)
        self.held.pop(eid, None)

    def finished(self, tid: int, status: str, now: float, *, engineid: int | None = None,
                 duration: float | None = None, error: dict[str, Any] | None = None) -> None:
        """Task `tid` finished for good with `status` (`ok`, `error`, `aborted`, ...).

        `duration` is the run time an engine measured (None when the controller decided the
        outcome without a final attempt); `error` is the result's error record, if any.
        """
        a = self.open.get(tid)
        if a is not None:  # e.g. aborted while running: the engine's late report is ignored
            self._close(a, status, now)
        self.finished_per_second.add(now)
        if isinstance(duration, NUMBERS) and not isinstance(duration, bool):
            self.durations.observe(duration)
        if status != "ok":
            error = error if isinstance(error, dict) else {}
            message = str(error.get("message", ""))
            if len(message) > MESSAGE_CHARS:
                message = message[:MESSAGE_CHARS - 1] + "…"
            self.failures.append({"tid": tid, "engineid": engineid, "time": now,
                                  "status": status, "type": str(error.get("type", "")),
                                  "message": message})

    def sample_queue(self, now: float, scheduled: int, pending: int) -> None:
        self.queue_per_second.set(now, scheduled, pending)

    def _close(self, a: Attempt, status: str, now: float) -> None:
        del self.open[a.tid]
        held = self.held.get(a.eid)
        if held is not None:
            held.pop(a.tid, None)
        a.end, a.status = now, status
        a.seq = self.last_seq = next(self._seq)
        self.closed.append(a)

    # -- reading ---------------------------------------------------------------------------
    def tasks_per_second(self, now: float, window: int = THROUGHPUT_WINDOW) -> float:
        """Tasks finished per second over the last `window` whole seconds (or since the start,
        when that is shorter)."""
        first = int(now) - window + 1
        span = min(float(window), max(1.0, now - self.started))
        return self.finished_per_second.total_since(first) / span

    def held_by(self, eid: int) -> list[int]:
        """The taskids engine `eid` holds, in dispatch order: the first one is running."""
        return list(self.held.get(eid, ()))

    def attempt_rows(self, seq: int) -> list[AttemptRow]:
        """Finished attempts with a sequence number above `seq` (at most ATTEMPT_RING)."""
        if not self.closed or self.closed[-1].seq <= seq:
            return []
        newer = []
        for a in reversed(self.closed):
            if a.seq <= seq:
                break
            newer.append(a.row())
        newer.reverse()
        return newer

    def attempts_since(self, seq: int) -> list[dict[str, Any]]:
        """`attempt_rows` as plain maps."""
        return [msgspec.structs.asdict(row) for row in self.attempt_rows(seq)]

    def record(self, now: float, since: int = 0) -> ActivitySnapshot:
        """Everything a task stream and its plots need, from attempt `since` on."""
        return ActivitySnapshot(
            time=now, started=self.started, seq=self.last_seq,
            attempts=self.attempt_rows(since),
            running=[a.row() for a in self.open.values()],
            failures=[FailureRow(**f) for f in self.failures],
            finished_per_second=self.finished_per_second.since(now),
            queue_per_second=self.queue_per_second.since(now))

    def snapshot(self, now: float, since: int = 0) -> dict[str, Any]:
        """`record` as plain maps (the `activity` reply's payload)."""
        return self.record(now, since).as_map()
