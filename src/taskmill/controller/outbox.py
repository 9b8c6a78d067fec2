"""The outbox: what one loop turn will send, held until the commit that allows it.

Messages are queued here as plain headers and frames while the turn's messages are handled
(a client's reply from its record, protocol.replies: `reply`, `refuse`, and `done`);
`ControllerCore.flush` then commits the store (`commit`) and takes them out in the one order
that keeps durability: the `now` messages first (they depend on nothing stored: heartbeats,
hello, refusals, pings), then, once the rows they depend on are on disk, the submits' answers,
the messages to engines (tasks batched per engine: numbered by engines.py), and the messages to
clients (replies in order, then the results each client's credit allows (credit.py), a
numbered `done` message per request, split below the size limit). The loop signs each one as it sends it, in this order: each socket's messages
must leave in the order of their sequence numbers, or peers refuse the later-numbered ones
sent first as replays.

When the store cannot write, the held messages stay here (the rows stay queued in the store)
and the commit is tried again with a growing pause; the core takes back the submits of the
failed commit (`take_submits`). Nothing here reads a clock: `commit` and `pending` are told
the time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import msgspec

from ..errors import StoreError
from ..protocol import Done, Refusal, to_client
from ..store import TaskStore
from ..wire import frame_len
from .credit import Batch, Credits

log = logging.getLogger("taskmill.controller")

COMMIT_INTERVAL = 0.05  # seconds a write with no reply waiting on it may stay uncommitted
STORE_RETRY_FIRST = 0.05  # seconds before a failed commit is tried again, doubling ...
STORE_RETRY_MAX = 0.5  # ... to this
# Results sent to a client go in pieces below the size limit (see within_limit): this much of
# a message is kept for its header's own fields.
RESULTS_HEADER_ROOM = 1024
# meta_bound: an entry's fields other than its texts take less than this together, ...
META_FIELDS_BOUND = 1024
UTF8_MAX_BYTES = 4  # ... a character of its texts at most this many bytes, ...
ERROR_FIELD_BOUND = 64  # ... an error field that is not a text less than this,
EMPTY_ENTRY_BOUND = 16  # ... and a missing entry (None) less than this.

# Where a message goes (the loop maps each to its socket).
CLIENT = 0
ENGINE = 1

# (port, routing id, header, frames); header None: raw frames (a ping)
Outgoing = tuple[int, bytes, dict[str, Any] | None, Any]


@dataclass(slots=True)
class NewSubmit:
    """A submit whose tasks wait for the commit that stores them; answered after it."""

    reply_to: bytes
    req: Any
    tids: list[int]
    key: str | None
    watch: bool
    lease: tuple[int, int] | None = None  # a lease's (start, n) instead (leases.py)
    # sent again (its key known): its tasks were stored by the submit that first carried it,
    # in an earlier commit or in the same one
    resent: bool = False


def meta_bound(meta: dict[str, Any] | None) -> int:
    """At least the packed size of a result entry: its texts (output, error) take at most 4
    bytes a character (UTF-8), every other field far less than 1 KiB together."""
    if not meta:
        return EMPTY_ENTRY_BOUND
    n = META_FIELDS_BOUND
    for key in ("stdout", "stderr"):
        text = meta.get(key)
        if text and isinstance(text, str):
            n += UTF8_MAX_BYTES * len(text)
    error = meta.get("error")
    if isinstance(error, dict):
        for value in error.values():
            n += UTF8_MAX_BYTES * len(value) if isinstance(value, str) else ERROR_FIELD_BOUND
    return n


def too_large_entry(meta: dict[str, Any], need: int, limit: int) -> dict[str, Any]:
    """In place of a result entry too large for one message of `limit` bytes (stored before
    a restart with a smaller --max-message-size: a client's socket would drop it, and its
    request go unanswered): the same task failed with a SerializationError that says so."""
    message = (f"the result of task {meta.get('tid')} is {need:,} bytes, more than one message "
               f"may hold now ({limit:,} bytes, the controller's --max-message-size): it was "
               f"stored under a larger limit; restart the controller with --max-message-size "
               f"{need + RESULTS_HEADER_ROOM} or more to read it (it is kept)")
    return {**meta, "status": "error", "stdout": "", "stderr": "", "nframes": 0,
            "error": {"type": "SerializationError", "message": message, "controller": True,
                      "traceback": ""}}


def too_large_task(entry: dict[str, Any], need: int, limit: int) -> dict[str, Any]:
    """In place of a task's entry whose payload no longer fits one message of `limit` bytes
    (submitted under a larger --max-message-size, before a restart: the engine's socket would
    drop the message, the engine reconnect, and the task be queued again for ever): the entry
    without its frames, whose `too_large` the engine fails it with (a SerializationError)."""
    why = (f"its payload is {need:,} bytes, more than one message may hold now ({limit:,} "
           f"bytes, the controller's --max-message-size): it was submitted under a larger "
           f"limit; restart the controller with --max-message-size {need + RESULTS_HEADER_ROOM} "
           "or more to run it, or submit it again with smaller arguments")
    log.error("task %d (attempt %d) cannot be sent: %s", entry["tid"], entry["attempt"], why)
    return {**entry, "too_large": why, "n": 0}


class Outbox:
    def __init__(self, session: bytes, store: TaskStore, max_message: int, now: float,
                 credits: Credits | None = None) -> None:
        self.session = session
        self.store = store
        self.max_message = max_message
        # To engines, in order; tasks per engine; to clients, in order; results per
        # (client socket, request); submits answered after the commit that stores them.
        self.to_engines: list[tuple[bytes, dict[str, Any], Any]] = []
        self.tasks_out: dict[int, tuple[list[dict[str, Any]], list[Any]]] = {}
        # (the last field: the message depends only on rows committed before it was queued,
        # so it goes even while the store cannot write: `take_committed`)
        self.to_clients: list[tuple[bytes, dict[str, Any], Any, bool]] = []
        # Results for watching clients, sent within each one's credit (credit.py).
        self.credits = credits if credits is not None else Credits()
        self.new_submits: list[NewSubmit] = []
        # Messages that depend on nothing stored: sent every turn, even while the store fails.
        self.now_out: list[Outgoing] = []
        self.store_down_since: float | None = None  # monotonic time of the first failure
        self.store_error: str | None = None  # the latest failure's cause (statistics)
        self.commits_failed = 0  # (statistics)
        self.store_retry_at = 0.0
        self.store_retry_delay = STORE_RETRY_FIRST
        self.last_commit = now
        # While a request whose answer is kept is handled, its answers (control_verbs.py).
        self.answers: list[tuple[Any, bool]] | None = None

    # -- queueing --------------------------------------------------------------------------
    def send(self, port: int, ident: bytes, header: dict[str, Any], frames: Any = (), *,
             now: bool = False, committed: bool = False) -> None:
        """Queue a message: sent after this turn's commit, or (`now`) whatever the store does.
        `committed` (to a client): it depends only on rows committed already, so it goes
        after this turn's commit, or at this turn's end if that commit fails."""
        if now:
            self.now_out.append((port, ident, header, frames))
        elif port == CLIENT:
            self.to_clients.append((ident, header, frames, committed))
        else:
            self.to_engines.append((ident, header, frames))

    def reply(self, reply_to: bytes, req: Any, record: msgspec.Struct, frames: Any = (), *,
              now: bool = False, committed: bool = False) -> None:
        """Answer a request with its reply record (protocol.replies): after this turn's
        commit, or (`now`: it depends on nothing stored) at once, or (`committed`: only on
        rows committed already) even if that commit fails."""
        header = {"type": "reply", "req": req, "ok": type(record) is not Refusal,
                  "session": self.session, **to_client(record)}
        self.send(CLIENT, reply_to, header, frames, now=now, committed=committed)
        if self.answers is not None and not frames:  # (control_verbs.py keeps it)
            self.answers.append((record, now or committed))  # (sent again: on nothing new)

    def refuse(self, reply_to: bytes, req: Any, error: str, error_type: str | None = None
               ) -> None:
        """Refuse a request, at once (a refusal depends on nothing stored)."""
        self.reply(reply_to, req, Refusal(error, error_type), now=True)

    def add_task(self, eid: int, entry: dict[str, Any], frames: list[Any]) -> None:
        entries, out = self.tasks_out.setdefault(eid, ([], []))
        entries.append(entry)
        out.extend(frames)

    def stored_entry(self, tid: int) -> tuple[dict[str, Any], list[Any]]:
        """A finished task's result entry and frames, read back from the store (unknown: it
        was cleared meanwhile)."""
        r = self.store.result(tid)
        if r is None:
            return {"tid": tid, "unknown": True, "nframes": 0}, []
        return {**r.meta, "nframes": len(r.frames)}, r.frames

    def drop_tasks(self, gone: set[int]) -> None:
        """Forget the queued dispatches of these tasks (taken back before they were sent)."""
        for eid, (entries, frames) in list(self.tasks_out.items()):
            if not any(e["tid"] in gone for e in entries):
                continue
            kept_entries: list[dict[str, Any]] = []
            kept_frames: list[Any] = []
            pos = 0
            for entry in entries:
                n = entry["n"]
                if entry["tid"] not in gone:
                    kept_entries.append(entry)
                    kept_frames.extend(frames[pos:pos + n])
                pos += n
            if kept_entries:
                self.tasks_out[eid] = (kept_entries, kept_frames)
            else:
                del self.tasks_out[eid]

    # -- the turn's end --------------------------------------------------------------------
    def held(self) -> bool:
        """Whether anything waits for a commit."""
        return bool(self.to_engines or self.tasks_out or self.to_clients
                    or self.credits.ready or self.new_submits)

    def commit(self, now: float, held: bool) -> StoreError | None:
        """Commit the store if a held message needs it or the last commit is COMMIT_INTERVAL
        old (group commit), unless a failed commit's pause runs; the error if it failed."""
        if not (self.store.dirty() and now >= self.store_retry_at and (
                held or now - self.last_commit >= COMMIT_INTERVAL)):
            return None
        try:
            self.store.commit()
        except StoreError as e:
            self.commits_failed += 1
            self.store_error = str(e)
            if self.store_down_since is None:
                self.store_down_since = now
                log.error("%s; submits are refused with StoreError and everything else waits "
                          "until it writes again (tried again every %gs at most)", e,
                          STORE_RETRY_MAX)
            self.store_retry_at = now + self.store_retry_delay
            self.store_retry_delay = min(self.store_retry_delay * 2, STORE_RETRY_MAX)
            return e
        self.last_commit = now
        if self.store_down_since is not None:
            log.warning("the task store writes again (after %.1fs); sending what waited",
                        now - self.store_down_since)
            self.store_down_since = None
            self.store_error = None
            self.store_retry_delay = STORE_RETRY_FIRST
        return None

    def take_submits(self) -> list[NewSubmit]:
        submits, self.new_submits = self.new_submits, []
        return submits

    def take_now(self) -> list[Outgoing]:
        out, self.now_out = self.now_out, []
        return out

    def take_tasks(self) -> tuple[list[tuple[bytes, dict[str, Any], Any]],
                                  dict[int, tuple[list[dict[str, Any]], list[Any]]]]:
        """The control messages for engines and the tasks per engine, in that order."""
        out, self.to_engines = self.to_engines, []
        tasks, self.tasks_out = self.tasks_out, {}
        return out, tasks

    def take_client_messages(self) -> list[Outgoing]:
        """Replies in order, then the results each client's credit allows as `done`
        messages: `at` numbers the first result of each, `ask` asks for an acknowledgement."""
        out: list[Outgoing] = []
        for ident, header, frames, _committed in self.to_clients:
            out.append((CLIENT, ident, header, frames))
        self.to_clients = []
        return self.done_messages(out, self.credits.take(self.stored_entry))

    def take_committed(self, unsaved: Callable[[int], bool]) -> list[Outgoing]:
        """While the store cannot write: the messages to clients that depend only on rows
        committed already (replies queued `committed`, and each client's results up to the
        first whose row is `unsaved`); the rest stay held."""
        out: list[Outgoing] = [(CLIENT, ident, header, frames) for ident, header, frames, c
                               in self.to_clients if c]
        if out:
            self.to_clients = [m for m in self.to_clients if not m[3]]
        if not self.credits.ready:
            return out
        return self.done_messages(out, self.credits.take(self.stored_entry, hold=unsaved))

    def done_messages(self, out: list[Outgoing], batches: list[Batch]) -> list[Outgoing]:
        """`out` and then the `done` messages of these batches of results (credit.py)."""
        for reply_to, req, at, entries, frames, ask in batches:
            parts = self.within_limit(entries, frames)
            for i, (part, part_frames) in enumerate(parts):
                done = Done(part, at, ask and i == len(parts) - 1)
                out.append((CLIENT, reply_to, {"type": "done", "req": req, **to_client(done)},
                            part_frames))
                at += len(part)
        return out

    def pending(self, now: float) -> bool:
        """Whether the loop should not wait: something can be sent now."""
        return bool(self.now_out) or (self.held() and (
            self.store_down_since is None or now >= self.store_retry_at))

    def commit_deadline(self) -> float | None:
        """When uncommitted writes must be committed (None: nothing to commit)."""
        if not self.store.dirty():
            return None
        return max(self.last_commit + COMMIT_INTERVAL, self.store_retry_at)

    def within_limit(self, entries: list[Any], frames: list[Any],
                     count: str = "nframes") -> list[tuple[list, list]]:
        """Result entries (and their frames) in pieces, each small enough for one message:
        a client's socket refuses a message above the size limit, and each result alone is
        below it (an engine fails a task whose result is not; one stored under a larger
        limit, before a restart, goes as an error that says so: too_large_entry). The same
        for the tasks of one engine (`count="n"`), each below the limit (a client never sends
        a larger one; one submitted under a larger limit goes without its frames, for the
        engine to fail it: too_large_task)."""
        budget = self.max_message - RESULTS_HEADER_ROOM
        bound = sum(map(frame_len, frames))
        # (a task's entry has no texts: meta_bound is META_FIELDS_BOUND for each)
        bound += META_FIELDS_BOUND * len(entries) if count == "n" else sum(map(meta_bound,
                                                                                entries))
        if bound <= budget:  # (nearly always)
            return [(entries, frames)]
        parts: list[tuple[list, list]] = []
        part: list[Any] = []
        part_frames: list[Any] = []
        size = pos = 0
        for meta in entries:
            n = meta[count] if meta else 0
            own = frames[pos:pos + n]
            pos += n
            need = len(msgpack.packb(meta, use_bin_type=True)) + sum(map(frame_len, own))
            if need > budget:  # (stored under a larger limit, before a restart)
                meta = (too_large_entry if count == "nframes" else too_large_task)(
                    meta, need, self.max_message)
                own = []
                need = len(msgpack.packb(meta, use_bin_type=True))
            if part and size + need > budget:
                parts.append((part, part_frames))
                part, part_frames, size = [], [], 0
            part.append(meta)
            part_frames.extend(own)
            size += need
        parts.append((part, part_frames))
        return parts
