"""What every task store shares: the records it keeps and the interface the controller uses.

The controller hands a store `StoredTask`s (spec and opaque payload frames) and `StoredResult`s
(metadata and opaque frames) and reads them back through `TaskStore`; memory.py and sqlite.py
are the two stores. `compact_tids` is how both keep a submit's taskids in memory; `IdLeases`
is how both lease blocks of taskids (controller/leases.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

if TYPE_CHECKING:
    from .lease_rows import LeaseRows

MAX_TID = 2**63 - 1  # the largest id SQLite can hold

# How many submit keys (client id + request number) are remembered to de-duplicate resends.
SUBMIT_KEYS_KEPT = 100_000
# Submit keys older than this are forgotten when a SQLite store opens.
SUBMIT_KEY_AGE = 24 * 3600.0
# Rows of engines that hold no running task are forgotten this long after they registered.
ENGINE_ROW_AGE = 24 * 3600.0


def compact_tids(tids: list[int]) -> range | tuple[int, ...]:
    """A submit's taskids as kept in memory: a range when they run on by one, as the
    controller allocates them. (A list of a thousand ints costs ~40 KB, a range 48 bytes: the
    SUBMIT_KEYS_KEPT recent submits must not hold every taskid they ever gave out.)"""
    run = range(tids[0], tids[0] + len(tids)) if tids else range(0)
    return run if tids == list(run) else tuple(tids)


@dataclass(slots=True)
class StoredTask:
    tid: int
    # {"nodes": [node meta...], "after": [...]}; a node's meta has its body's frame spans
    spec: dict[str, Any]
    frames: list[Any]
    submitted: float


@dataclass(slots=True)
class StoredResult:
    meta: dict[str, Any]  # status, kind, error, engineid, times, stdout, stderr, attempts, pmac
    frames: list[Any]

    @property
    def ok(self) -> bool:
        return self.meta.get("status") == "ok"


# A task read back from the store, with its scheduling counters (schema.read_task).
Loaded = tuple[StoredTask, dict[str, Any]]


def new_store_id() -> int:
    """A random store identity (never 0, which means unknown)."""
    return secrets.randbelow(2**63 - 1) + 1



class IdLeases:
    """Blocks of the taskid counter leased to clients (a mixin of both stores, over their
    `_next`). A lease moves the counter past its ids (`_dirty`: the SQLite store writes the
    counter at its next commit, before the lease is answered); ids given back, unused, are
    given out again only if no id was given out after them; `low_bound` keeps a restart
    looking at every id of a lease not ended (its ids may still be stored). The SQLite store
    also writes each lease's row (`lease_rows`: lease_rows.py), which a restart reads back
    (`stored_leases`)."""

    _next: int
    _dirty: bool
    _leased: dict[int, int]  # start -> end of each lease not ended
    # The lowest taskid of the controller's backlog (controller/backlog.py: queued rows not
    # kept in memory), which a restart must look at too; None: no backlog.
    held_from: int | None = None
    lease_rows: LeaseRows | None = None  # (a durable store's)
    # Why nothing written survives a restart any more (its file was deleted: wal.py); None.
    lost: str | None = None
    # The store's random identity (schema.store_identity; 0: unknown).
    store_id: int = 0
    # The leases not ended when the store was last written: (start, end, key, next unused).
    stored_leases: list[tuple[int, int, str, int]] = []

    def check_key(self, key: bytes) -> None:
        """StoreError if the store was written with another cluster key (a store on disk
        keeps a digest of it: schema.check_key)."""

    def lease(self, n: int, key: str = "") -> int:
        """A block of `n` taskids for the client's request `key`; its first one."""
        start = self._next
        self._next = self._leased[start] = start + n
        self._dirty = True
        if self.lease_rows is not None:
            self.lease_rows.granted(start, start + n, key)
        return start

    def end_lease(self, start: int, unused_from: int | None = None, write: bool = True) -> None:
        """The lease from `start` is over; with `unused_from`, its ids from there on were
        never used (else they stay unused for good: its holder may still try them). `write`:
        the counter given back is written at the next commit (else with the next write)."""
        end = self._leased.pop(start, None)
        if end is None:
            return
        if self.lease_rows is not None:
            self.lease_rows.ended(start)  # (written with the counter given back, if it is)
            self._dirty = self._dirty or write
        if unused_from is not None and self._next == end:
            self._next = unused_from
            self._dirty = self._dirty or write

    def low_bound(self, low: int) -> int:
        if self.held_from is not None:
            low = min(low, self.held_from)
        return min(low, *self._leased) if self._leased else low


class TaskStore(Protocol):
    durable: bool  # on disk: the controller may keep a backlog there (controller/backlog.py)
    held_from: int | None  # where that backlog begins (see IdLeases)
    stored_leases: list[tuple[int, int, str, int]]  # (see IdLeases)
    lost: str | None  # (see IdLeases)
    store_id: int  # (see IdLeases)

    def check_key(self, key: bytes) -> None: ...

    def allocate(self) -> int: ...
    def lease(self, n: int, key: str = "") -> int: ...
    def end_lease(self, start: int, unused_from: int | None = None,
                  write: bool = True) -> None: ...
    def allocate_engine(self, uuid: str) -> int: ...
    def add(self, task: StoredTask, keep: bool = True) -> None: ...
    def task(self, tid: int) -> StoredTask | None: ...
    def mark_running(self, tid: int, engine: int | None, node: int, attempts: int, tries: int,
                     handed_over: list[int]) -> None: ...
    # (`fits`: the backlog's rule by bytes, active.Fits; held_bytes: the payload bytes of the
    # tasks kept in memory, which it counts)
    def unfinished(self, queued_max: int | None = None, held: Any = None,
                   fits: Any = None) -> list[Loaded]: ...
    def load_queued(self, tids: list[int], keep: bool = True, pending: bool = False,
                    fits: Any = None) -> tuple[list[Loaded], int]: ...
    @property
    def held_bytes(self) -> int: ...
    def submitted(self, key: str, resent: bool = True) -> list[int] | None: ...
    def remember_submit(self, key: str, tids: list[int]) -> None: ...
    def forget_keys(self, prefix: str) -> None: ...
    def remember_answer(self, key: str, answer: Any) -> None: ...
    def retire_engine(self, uuid: str, retiring: bool = True) -> None: ...
    def retiring_engines(self) -> set[str]: ...
    def answered(self, key: str) -> Any: ...
    def withdraw(self, tids: list[int], key: str | None = None) -> None: ...
    def finish(self, tid: int, result: StoredResult) -> None: ...
    def result(self, tid: int) -> StoredResult | None: ...
    def result_meta(self, tid: int) -> dict[str, Any] | None: ...
    def unsaved(self, tid: int) -> bool: ...
    def clear(self, tids: list[int] | None, key: str = "") -> tuple[int, list[int]]: ...
    def compact(self) -> None: ...
    def counts(self) -> tuple[int, int]: ...
    def finished_ids(self) -> tuple[list[int], list[int]]: ...
    def commit(self) -> None: ...
    def dirty(self) -> bool: ...
    def close(self) -> None: ...


def unpack(data: bytes) -> Any:
    """A msgpack value as the stores write them (str keys and values, maps of any keys)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
