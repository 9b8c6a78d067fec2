"""Typed records of what the controller sends a client: the reply to each request and the
`done` messages of a watch (protocol.replies).

    controller verb --Outbox.reply(rt, req, record)--> to_client(record): the record's fields,
        under {type: reply, req, ok, session} --Wire--> client
    client (the request's verb known by its `req`) --from_reply(verb, header)--> the record
        its reader works on; a refusal (ok false) --> Refusal --> the error raised
    controller --done{results}--> client --from_done(header)--> Done: one Outcome a task

The controller builds each reply as its record, from the plain maps it already has (a
result entry is its stored metadata plus `nframes`; a view, such as the statistics, is its
record of protocol.views as plain maps: `as_map()`): msgspec does not check fields on
construction, and `to_client` is a shallow copy, so this costs next to nothing on the
per-task paths (submit replies, `done`, results). The client
converts every reply into its record (msgspec `convert`: every field's type checked, the
result entries too) before anything reads it, so a reply that does not fit is refused once,
as a ProtocolError naming the verb, the record and the field (`$.tids[0]`), never a
KeyError deep in a verb. The wire is what it was: client and controller are one version.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .common import NonNeg, fit
from .results import Outcome
from .views import ActivitySnapshot, EngineRow, QueueStatus, Statistics, TaskInfo

__all__ = [
    "REPLY_RECORDS", "AbortReply", "ActivityReply", "ClearReply", "Done", "EmptyReply",
    "EnginesReply", "HelloReply", "LeaseReply", "PingReply", "Refusal", "ResultsReply",
    "RetireReply", "SpinReply", "StatsReply", "StatusReply", "TaskReply", "TidsReply",
    "from_done", "from_reply", "to_client",
]


class Refusal(msgspec.Struct, frozen=True):
    """Any request refused (`ok` false): why, and (`error_type`) what kind of refusal:
    StoreError (the store cannot write: nothing changed), session (sent to an earlier
    controller: the client sends it again), lease-ended (run() taskids from a lease that
    ended: the client asks for a new one), or None (a bad request)."""

    error: str
    error_type: str | None = None


class EmptyReply(msgspec.Struct, frozen=True):
    """release, engine_exited, a blocking result's or a wait's end: done."""


class PingReply(msgspec.Struct, frozen=True):
    """ping: alive; `sent`, the results sent to this client so far (controller/credit.py:
    a client that took in fewer lost some)."""

    sent: int | None = None


class HelloReply(msgspec.Struct, frozen=True):
    """`hello`: the controller's version, its live engines, the largest message it takes."""

    version: str
    engines: NonNeg
    max_message: int


class TidsReply(msgspec.Struct, frozen=True):
    """`submit` and `put`: the taskids, in the order of the tasks (after their commit)."""

    tids: list[NonNeg]


class LeaseReply(msgspec.Struct, frozen=True):
    """`lease`: taskids start .. start+n-1 are this client's to number run()'s tasks."""

    start: NonNeg
    n: NonNeg


class ResultsReply(msgspec.Struct, frozen=True):
    """`result` and `wait`: an entry a taskid (None: not finished, for a result that does not
    block); `more`: a piece of a reply above the size limit (the client joins them)."""

    results: list[Outcome | None] = []
    more: bool = False


class Done(msgspec.Struct, frozen=True):
    """A `done` message: the results of a watch's (or a watching submit's) tasks finished in
    one turn of the controller, their frames following in order."""

    results: list[Outcome]
    at: int = 0  # the number of its first result among those sent to this client (credit.py)
    ask: bool = False  # the controller asks for an `ack`


class AbortReply(msgspec.Struct, frozen=True):
    status: Literal["aborted", "finished", "unknown"]


class SpinReply(msgspec.Struct, frozen=True):
    dispatched: bool  # whether the pass dispatched anything


class StatusReply(msgspec.Struct, frozen=True):
    status: QueueStatus  # counts, or (verbose) taskids


class ClearReply(msgspec.Struct, frozen=True):
    dropped: NonNeg
    missing: list[int]  # taskids with no finished result to drop


class RetireReply(msgspec.Struct, frozen=True):
    retiring: list[int]  # the engines that are retiring (others: unknown or gone)


class StatsReply(msgspec.Struct, frozen=True):
    stats: Statistics


class ActivityReply(msgspec.Struct, frozen=True):
    activity: ActivitySnapshot  # stats.RecentActivity's (the dashboard's)


class TaskReply(msgspec.Struct, frozen=True):
    task: TaskInfo  # views.task_info: state, metadata and story (by its state)


class EnginesReply(msgspec.Struct, frozen=True):
    engines: list[EngineRow]


# The reply record of each request verb (a `watch` is answered by Done messages, or refused).
REPLY_RECORDS: dict[str, type[msgspec.Struct]] = {
    "hello": HelloReply, "ping": PingReply, "submit": TidsReply, "put": TidsReply,
    "lease": LeaseReply, "release": EmptyReply, "result": ResultsReply, "wait": ResultsReply,
    "watch": EmptyReply, "abort": AbortReply, "spin": SpinReply, "status": StatusReply,
    "clear": ClearReply, "retire": RetireReply, "stats": StatsReply,
    "activity": ActivityReply, "task": TaskReply, "engines": EnginesReply,
    "engine_exited": EmptyReply,
}


def to_client(record: msgspec.Struct) -> dict[str, Any]:
    """The fields of a reply (or `done` message) header, from its record (shallow: nested
    maps are sent as they are)."""
    return msgspec.structs.asdict(record)


def from_reply(verb: str, header: dict[str, Any]) -> msgspec.Struct:
    """The record of the reply to a `verb` request: Refusal if it was refused, else the
    verb's reply record; ProtocolError for a reply that does not fit."""
    if header.get("ok", True) is False:
        return fit(Refusal, header, f"the controller's refusal of a {verb} request")
    return fit(REPLY_RECORDS[verb], header, f"the controller's reply to a {verb} request")


def from_done(header: dict[str, Any]) -> Done:
    """A `done` message's record; ProtocolError if it does not fit."""
    return fit(Done, header, "a done message from the controller")
