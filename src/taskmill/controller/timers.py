"""Timers: keys armed for a delay, popped when it has passed (on the monotonic clock).

The core arms and cancels (the scheduler's `ArmTimer`/`CancelTimer`, its own heartbeat check,
pings and the wait for engines lost in a restart) without reading a clock: an armed timer is
`pending` until the loop, right after the message (or timer pass, or flush) that armed it,
gives the time it counts from (`settle`). So a delay counts from when the work that armed it
was done, not from when that work began: a 4 ms `slow` timer armed by a large batch of results
is not already over when that batch's tasks go out. The loop asks `next_deadline()` how long
it may poll and hands the core the time, which pops `pop_due(now)`. Arming a key again
replaces its earlier moment; a cancelled or replaced entry stays in the heap until it surfaces
and is skipped there. A timer armed while due ones are handled waits for the next pass (so a
timer that arms itself again cannot hold the loop).
"""

from __future__ import annotations

import heapq


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, tuple]] = []
        self._live: dict[tuple, int] = {}  # key -> the sequence number of its live entry
        self._seq = 0
        self.pending: list[tuple[int, tuple, float]] = []  # (seq, key, delay) not settled

    def arm(self, key: tuple, delay: float) -> None:
        seq = self._seq = self._seq + 1
        self._live[key] = seq
        self.pending.append((seq, key, delay))

    def cancel(self, key: tuple) -> None:
        self._live.pop(key, None)

    def settle(self, now: float) -> None:
        """The pending timers count from `now`."""
        for seq, key, delay in self.pending:
            if self._live.get(key) == seq:
                heapq.heappush(self._heap, (now + delay, seq, key))
        self.pending.clear()

    def next_deadline(self) -> float | None:
        """The moment the next settled live timer is due (None: no timer)."""
        heap, live = self._heap, self._live
        while heap:
            when, seq, key = heap[0]
            if live.get(key) == seq:
                return when
            heapq.heappop(heap)
        return None

    def due(self, now: float) -> bool:
        """Whether a settled live timer is due at `now`."""
        heap = self._heap
        if not heap or heap[0][0] > now:  # (the earliest entry, live or not, is not due)
            return False
        deadline = self.next_deadline()
        return deadline is not None and deadline <= now

    def pop_due(self, now: float) -> tuple | None:
        """The key of a settled live timer due at `now` (it is disarmed), or None."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            if self._live.get(key) != seq:
                continue
            del self._live[key]
            return key
        return None
