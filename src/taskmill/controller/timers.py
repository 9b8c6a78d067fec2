"""Timers: keys armed for a moment on the monotonic clock, popped when that moment has passed.

The core arms and cancels (the scheduler's `ArmTimer`/`CancelTimer`, its own heartbeat check,
pings and the wait for engines lost in a restart); the loop asks `next_deadline()` how long it
may poll and hands the time to the core, which pops `due(now)`. Arming a key again replaces
its earlier moment; a cancelled or replaced entry stays in the heap until it surfaces and is
skipped there. A timer armed while due ones are handled waits for the next pass, even with
no delay (so a timer that arms itself again cannot hold the loop). No clock is read here:
every moment is given.
"""

from __future__ import annotations

import heapq


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, tuple]] = []
        self._live: dict[tuple, int] = {}  # key -> the sequence number of its live entry
        self._seq = 0

    def arm(self, key: tuple, at: float) -> None:
        seq = self._seq = self._seq + 1
        self._live[key] = seq
        heapq.heappush(self._heap, (at, seq, key))

    def cancel(self, key: tuple) -> None:
        self._live.pop(key, None)

    def next_deadline(self) -> float | None:
        """The moment the next live timer is due (None: no timer)."""
        heap = self._heap
        while heap and self._live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def mark(self) -> int:
        """The newest timer so far: `pop_due(now, mark)` leaves the ones armed after it."""
        return self._seq

    def pop_due(self, now: float, mark: int) -> tuple | None:
        """The key of a live timer due at `now` and armed by `mark` (it is disarmed), or None."""
        heap = self._heap
        while heap and heap[0][0] <= now and heap[0][1] <= mark:
            _, seq, key = heapq.heappop(heap)
            if self._live.get(key) != seq:
                continue
            del self._live[key]
            return key
        return None
