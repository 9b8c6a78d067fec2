"""Credit for the results streamed to clients: at most a window of them unacknowledged.

    results.py --offer(rt, req, tid, meta, frames)--> the client's queue
    outbox.flush --take(load)--> `done` messages, numbered (`at`), within the window
    client's I/O thread --ack{got} (asked for, and every ping interval)--> acked(): window opens
    client --ack{got, lost}--> lost(): what it never got is sent again, under the same numbers

A client's `done` results (futures' watches) are numbered per client (per routing id `rt`):
the n-th result sent to it is number n-1, and a `done` message says the number of its first
(`at`). The client takes them in order only and acknowledges the count it has taken in. At
most RESULTS_WINDOW results and RESULTS_WINDOW_BYTES bytes (their frames plus RESULT_OVERHEAD
each; one larger result goes alone) are sent and not yet acknowledged; the rest wait in the
queue, where a result keeps its payload only while it fits in a second window beside those
waiting with theirs, else just its taskid: it is read back from the store when credit
returns (`load`). So a client that stops reading costs the controller two windows of memory
(one in flight, one waiting), not every result.

A message asks for an acknowledgement (`ask`) once half a window has gone since the last ask,
and whenever a take leaves results waiting (so the window always reopens). A `done` message
can be lost (ZeroMQ drops the queue of a connection that falls silent, e.g. a client stopped
for longer than the transport heartbeat): the client then sees a gap in the numbers, or a ping
reply (`probe`) naming more results sent than it got, and says `lost`; what it did not
acknowledge is sent again with the same numbers (a number always means the same result), and
the client drops what it already has. Pure: no sockets, no clock, no store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..defaults import RESULTS_WINDOW, RESULTS_WINDOW_BYTES
from ..wire import frame_len

RESULT_OVERHEAD = 512  # bytes a result's metadata counts for, against the byte window

# A result's entry and frames, read back from the store by its taskid.
Loader = Callable[[int], tuple[dict[str, Any], list[Any]]]
# Whether a result may not be sent yet (its row is not written: see Credits.take).
Hold = Callable[[int], bool]
# (routing id, req, number of the first result, entries, their frames, ask for an ack)
Batch = tuple[bytes, Any, int, list[dict[str, Any]], list[Any], bool]


@dataclass(slots=True)
class Waiting:
    """A result not yet sent; `meta` None: only its taskid is kept (read back when sent)."""

    req: Any
    tid: int
    meta: dict[str, Any] | None
    frames: list[Any]
    size: int


class Sent(NamedTuple):
    """A result sent and not yet acknowledged (built as a plain tuple: see `take`)."""

    at: int  # its number
    req: Any
    tid: int
    size: int


new_sent = tuple.__new__  # (a Sent from its fields without a Python-level __new__)


def result_size(frames: list[Any]) -> int:
    return RESULT_OVERHEAD + sum(map(frame_len, frames))


@dataclass(slots=True)
class ClientCredit:
    """One client's stream of results: waiting, in flight (numbered), acknowledged."""

    window: int
    window_bytes: int
    queue: deque[Waiting] = field(default_factory=deque)
    inflight: deque[Sent] = field(default_factory=deque)  # numbers acked..next-1, in order
    acked: int = 0  # results the client said it took in (numbers below this)
    next: int = 0  # the number of the next result sent
    inflight_bytes: int = 0
    loaded: int = 0  # waiting results that keep their payload here ...
    loaded_bytes: int = 0  # ... and their size
    replay: int | None = None  # send again from this number (the client lost some)
    since_ask: int = 0  # results and bytes sent since the last message that asked for an ack
    since_ask_bytes: int = 0

    def offer(self, req: Any, tid: int, meta: dict[str, Any] | None,
              frames: list[Any]) -> None:
        """A result to send: it keeps its payload here if it fits in a window beside those
        waiting with theirs (or goes at once: nothing in flight or waiting), else only its
        taskid (read back from the store when it is sent). So a client costs at most two
        windows: one in flight, one waiting (with one window in all, a client that acks a
        little late under load had most of a flood's results read back: 71% of them over
        1,000 engines)."""
        size = RESULT_OVERHEAD + sum(map(frame_len, frames)) if frames else RESULT_OVERHEAD
        loaded = self.loaded
        if meta is not None and ((loaded == 0 and not self.inflight) or (
                loaded < self.window and self.loaded_bytes + size <= self.window_bytes)):
            self.loaded += 1
            self.loaded_bytes += size
            self.queue.append(Waiting(req, tid, meta, frames, size))
        else:  # beyond the window: it waits in the store
            self.queue.append(Waiting(req, tid, None, [], size))

    def can_send(self) -> bool:
        if self.replay is not None:
            return True
        if not self.queue:
            return False
        return not self.inflight or (len(self.inflight) < self.window and self.inflight_bytes
                                     + self.queue[0].size <= self.window_bytes)

    def ack(self, got: int) -> None:
        got = min(got, self.next)
        if got <= self.acked:
            return
        self.acked = got
        inflight = self.inflight
        while inflight and inflight[0].at < got:
            self.inflight_bytes -= inflight.popleft().size
        if self.replay is not None and self.replay < got:
            self.replay = got if got < self.next else None

    def lost(self, got: int) -> None:
        """The client took in `got` results and lost the next ones: send them again."""
        self.ack(got)
        if self.acked < self.next and got >= self.acked:
            self.replay = self.acked

    def take(self, rt: bytes, load: Loader, hold: Hold | None = None) -> list[Batch]:
        """The batches the window allows now (`hold`: none from the first result it names:
        the store has not written it)."""
        out: list[Batch] = []
        if self.replay is not None:
            again = [s for s in self.inflight if s.at >= self.replay]
            self.replay = None
            runs: list[list[Sent]] = []
            for s in again:
                if runs and runs[-1][-1].req == s.req:
                    runs[-1].append(s)
                else:
                    runs.append([s])
            for run in runs:
                entries, frames = [], []
                for s in run:
                    meta, fr = load(s.tid)
                    entries.append(meta)
                    frames.extend(fr)
                out.append((rt, run[0].req, run[0].at, entries, frames, False))
        # The waiting results that fit in the window now (their payloads loaded), by request.
        by_req: dict[Any, list[Waiting]] = {}
        queue = self.queue
        n = len(self.inflight)
        size = self.inflight_bytes
        while queue and n < self.window:
            w = queue[0]
            if hold is not None and hold(w.tid):
                break
            if w.meta is None:
                w.meta, w.frames = load(w.tid)
                w.size = result_size(w.frames)
                self.loaded += 1
                self.loaded_bytes += w.size
            if n and size + w.size > self.window_bytes:
                break
            queue.popleft()
            self.loaded -= 1
            self.loaded_bytes -= w.size
            ws = by_req.get(w.req)
            if ws is None:
                by_req[w.req] = [w]
            else:
                ws.append(w)
            n += 1
            size += w.size
        inflight = self.inflight
        for req, ws in by_req.items():
            at = number = self.next
            entries, frames = [], []
            size = 0
            for w in ws:
                inflight.append(new_sent(Sent, (number, req, w.tid, w.size)))
                number += 1
                size += w.size
                entries.append(w.meta)
                frames.extend(w.frames)
            self.next = number
            self.inflight_bytes += size
            self.since_ask += len(ws)
            self.since_ask_bytes += size
            ask = (2 * self.since_ask >= self.window
                   or 2 * self.since_ask_bytes >= self.window_bytes)
            if ask:
                self.since_ask = self.since_ask_bytes = 0
            out.append((rt, req, at, entries, frames, ask))
        if out and (queue or not by_req) and not out[-1][5]:
            # Results wait (the window is shut) or a replay: the last message asks for an ack.
            last = out[-1]
            out[-1] = (last[0], last[1], last[2], last[3], last[4], True)
            self.since_ask = self.since_ask_bytes = 0
        return out


class Credits:
    """Every client's credit, by routing id; `ready` names those with something to send."""

    def __init__(self, window: int = RESULTS_WINDOW,
                 window_bytes: int = RESULTS_WINDOW_BYTES) -> None:
        if window < 2 or window_bytes < 1:
            raise ValueError(f"a results window needs at least 2 results and 1 byte, not "
                             f"{window} and {window_bytes}")
        self.window = window
        self.window_bytes = window_bytes
        self.clients: dict[bytes, ClientCredit] = {}
        self.ready: set[bytes] = set()
        self.sent_again = 0  # results sent again because a client lost them
        self.read_back = 0  # results read back from the store to be sent (waited beyond the
        # window without their payload, or sent again)
        self.watching: dict[bytes, int] = {}  # client -> its watches with tasks to come

    def client(self, rt: bytes) -> ClientCredit:
        c = self.clients.get(rt)
        if c is None:
            c = self.clients[rt] = ClientCredit(self.window, self.window_bytes)
        return c

    def offer(self, rt: bytes, req: Any, tid: int, meta: dict[str, Any] | None,
              frames: list[Any]) -> None:
        """A finished result for a client's request: sent when its credit allows."""
        c = self.clients.get(rt) or self.client(rt)
        c.offer(req, tid, meta, frames)
        # (nothing in flight: it can go now, as a first result always can)
        if rt not in self.ready and (not c.inflight or c.can_send()):
            self.ready.add(rt)

    def acked(self, rt: bytes, got: int, lost: bool = False) -> None:
        """The client took in its first `got` results (and, `lost`, missed some after them:
        those are sent again)."""
        c = self.clients.get(rt)
        if c is None:
            return
        c.lost(got) if lost else c.ack(got)
        if c.can_send():
            self.ready.add(rt)

    def lost(self, rt: bytes, got: int) -> None:
        """The client took in its first `got` results and missed some after them."""
        self.acked(rt, got, lost=True)

    def probe(self, rt: bytes) -> int | None:
        """How many results were sent to this client (None: none it has not acknowledged)."""
        c = self.clients.get(rt)
        return None if c is None else c.next

    def watch(self, rt: bytes) -> None:
        """A watch of this client waits for tasks still to finish."""
        self.watching[rt] = self.watching.get(rt, 0) + 1

    def watched(self, rt: bytes) -> None:
        """... and now has all its results."""
        n = self.watching.pop(rt, 0) - 1
        if n > 0:
            self.watching[rt] = n

    def forget(self, rt: bytes) -> int:
        """That client is gone for good (it closed, or went on under another id): drop what
        waits for it; the number of its watches that waited for tasks (the caller ends them)."""
        self.clients.pop(rt, None)
        self.ready.discard(rt)
        return self.watching.pop(rt, 0)

    def take(self, load: Loader, hold: Hold | None = None) -> list[Batch]:
        """The `done` batches the clients' credit allows now, numbered; `hold`: none from
        the first result of a client that it names (those clients stay ready)."""
        out: list[Batch] = []
        held: list[bytes] = []

        def read_back(tid: int) -> tuple[dict[str, Any], list[Any]]:
            self.read_back += 1
            return load(tid)

        for rt in self.ready:
            c = self.clients.get(rt)
            if c is not None:
                if c.replay is not None:
                    self.sent_again += c.next - c.replay
                out.extend(c.take(rt, read_back, hold))
                if hold is not None and c.queue and hold(c.queue[0].tid) and c.can_send():
                    held.append(rt)
        self.ready.clear()
        self.ready.update(held)
        return out

    def held(self) -> dict[str, int]:
        """What waits for clients: results in flight (sent, not acknowledged) and their bytes,
        results waiting to be sent, and of those the ones whose payload is in memory."""
        cs = self.clients.values()
        return {
            "results_in_flight_to_clients": sum(len(c.inflight) for c in cs),
            "result_bytes_in_flight_to_clients": sum(c.inflight_bytes for c in cs),
            "results_held_for_clients": sum(len(c.queue) for c in cs),
            "results_in_memory_for_clients": sum(c.loaded for c in cs),
            "results_sent_again_to_clients": self.sent_again,
            "results_read_back_for_clients": self.read_back,
            "clients_watching": len(self.watching),
        }
