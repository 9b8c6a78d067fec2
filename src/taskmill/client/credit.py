"""The client's side of the results credit: take `done` results in order, say how many.

    controller --done{at, results, ask}--> I/O thread: Intake.take --> the new ones (or none)
    I/O thread --ack{got} (asked, or at a ping)--> controller: its window for us opens
    controller --ping reply{sent}--> Intake.probe: fewer got than sent? --ack{got, lost}-->

The controller numbers the results it streams to this client's receive socket and sends at
most a window of them unacknowledged (controller/credit.py). The I/O thread takes them in
order only: a message whose first number is beyond what it got means some were lost (ZeroMQ
drops the queue of a connection that fell silent, e.g. while this process was stopped), so it
is dropped and the rest asked for again; results it already has (sent again) are dropped. The
count starts over with each controller (a restart) and each new receive socket (`reset`).
Nothing here touches a socket: the methods return the header to send, or None; the clock
(`now`) is passed in.
"""

from __future__ import annotations

from typing import Any

from ..protocol import Ack, to_request
from .codec import unseen_results

LOST_ASK_EVERY = 2.0  # seconds before the same loss is reported again (that report was lost)


class Intake:
    """(I/O thread only.) How many numbered results were taken in, and what to tell."""

    __slots__ = ("got", "said", "lost_at", "lost_when")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.got = 0  # results taken in (the next one's number)
        self.said = 0  # the `got` last acknowledged
        self.lost_at = -1  # the `got` a loss was last reported at ...
        self.lost_when = float("-inf")  # ... and when

    def take(self, header: dict[str, Any], frames: list[Any],
             now: float) -> tuple[tuple[dict[str, Any], list[Any]] | None, dict[str, Any] | None]:
        """A `done` message: (what of it to take in, or None; the header to send, or None)."""
        if not isinstance(header.get("at"), int):
            return (header, frames), None  # (not numbered)
        fresh = unseen_results(header, frames, self.got)
        if fresh is None:
            return None, self.lost(now)
        self.got = header["at"] + len(header["results"])
        return (fresh if fresh[0]["results"] else None), (
            self.ack() if header.get("ask") else None)

    def ack(self) -> dict[str, Any]:
        self.said = self.got
        return {**to_request(Ack(self.got)), "req": 0}

    def tick(self) -> dict[str, Any] | None:
        """At a ping: an ack if results were taken in since the last one."""
        return self.ack() if self.got > self.said else None

    def probe(self, sent: Any, now: float) -> dict[str, Any] | None:
        """A ping reply's `sent`: every result it counts left before that reply."""
        if isinstance(sent, int) and sent > self.got:
            return self.lost(now)
        return None

    def lost(self, now: float) -> dict[str, Any] | None:
        """Results after `got` were lost: ask for them again (once a while for one loss)."""
        if self.lost_at == self.got and now - self.lost_when < LOST_ASK_EVERY:
            return None
        self.lost_at, self.lost_when = self.got, now
        self.said = self.got
        return {**to_request(Ack(self.got, lost=True)), "req": 0}
