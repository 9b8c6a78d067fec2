"""Results on their way out of an engine: kept until acknowledged, small ones held together.

    TaskCode's reply --> ResultOutbox.queue --> unacked (until the controller acknowledges it,
        after storing it: in its heartbeat answer, or, large results, in a `stored` message
        right after the commit; resent on its request or to a new controller)
                                           --> unsent (held while more tasks wait to run right
        away: at most RESULT_BATCH results, RESULT_BATCH_BYTES, RESULT_DELAY seconds)
    --> batches --> split_by_size (each message below the controller's limit) --> sent by the
        engine's main thread, or by its I/O thread for what waited too long

An outbox is guarded by the engine's lock; it holds no socket (control.py sends).
"""

from __future__ import annotations

import time
from typing import Any

from ..wire import frame_len

# Results of tiny tasks travel together: while more tasks wait in the backlog, a result waits
# for others, at most RESULT_BATCH of them and RESULT_DELAY seconds (the control thread sends
# what waited longer, when the main thread is busy with a longer task).
RESULT_BATCH = 64
RESULT_DELAY = 0.001
RESULT_BATCH_BYTES = 256 * 1024

Result = tuple[dict[str, Any], list[Any]]  # (entry, body frames)


class ResultOutbox:
    """An engine's results until the controller acknowledges them (under the engine's lock)."""

    def __init__(self) -> None:
        # (tid, attempt) -> (entry, body): a lost message or a controller restart costs a
        # resend, never the result.
        self.unacked: dict[tuple[int, int], Result] = {}
        self.unsent: list[Result] = []  # held to travel together
        self.unsent_since = 0.0
        self.unsent_bytes = 0

    def queue(self, entry: dict[str, Any], body: list[Any], *, registered: bool,
              more_to_run: bool, max_result: int) -> list[list[Result]]:
        """Keep a result until it is acknowledged, and return the batches to send now, each
        one message below the size limit (none while more tasks wait to run right away, or
        while unregistered)."""
        entry["n"] = len(body)
        self.unacked[(entry["tid"], entry["attempt"])] = (entry, body)
        size = 0
        for f in body:  # (no generator: paid per task)
            size += frame_len(f)
        early: list[Result] = []
        if self.unsent and self.unsent_bytes + size > max_result:
            early = self.take(registered)  # (together they would pass the size limit)
        if not self.unsent:
            self.unsent_since = time.monotonic()
        self.unsent.append((entry, body))
        self.unsent_bytes += size
        hold = (not registered or (
            more_to_run and len(self.unsent) < RESULT_BATCH
            and self.unsent_bytes < RESULT_BATCH_BYTES
            and time.monotonic() - self.unsent_since < RESULT_DELAY))
        batches = [early] if early else []
        if not hold:
            batch = self.take(registered)
            if batch:
                batches.append(batch)
        return batches

    def acked(self, keys: list[tuple[int, int]]) -> None:
        """The controller has stored these results: drop them."""
        for key in keys:
            self.unacked.pop(key, None)

    def take(self, registered: bool) -> list[Result]:
        """The results waiting to be sent (none while unregistered)."""
        if not registered:
            return []
        batch, self.unsent = self.unsent, []
        self.unsent_bytes = 0
        return batch

    def overdue(self, now: float) -> bool:
        """Whether results have waited longer than RESULT_DELAY."""
        return bool(self.unsent) and now - self.unsent_since >= RESULT_DELAY


def split_by_size(batch: list[Result], max_result: int) -> list[list[Result]]:
    """`batch` in as many messages as the size limit needs (a result alone may pass it)."""
    parts: list[list[Result]] = []
    part: list[Result] = []
    size = 0
    for entry, body in batch:
        n = 0
        for f in body:
            n += frame_len(f)
        if part and size + n > max_result:
            parts.append(part)
            part, size = [], 0
        part.append((entry, body))
        size += n
    if part:
        parts.append(part)
    return parts
