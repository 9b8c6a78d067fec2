"""Leases: blocks of taskids a client numbers its `run()` tasks from, before it sends them.

    client --lease{n, key}--> grant: the store's counter moves past the block (store.lease;
        the commit that writes it comes before the reply) --reply{start, n}--> the client;
        the same key again (its answer was lost with a connection) gets the same block, as
        long as it is held: else a second block would skip the first one's ids
    client --submit{tasks, tids}--> take (from Submits.submit): each id must lie in this
        client's lease, above every id it used before, in rising order; else the submit is
        refused whole and nothing of it is stored
    client --release, or submit{release}--> release: what is left goes back (store.end_lease:
        given out again only if no id was given out after it)
    client --bye{to}--> move: a client whose connection broke connects anew under new ids;
        its leases go to its new receiving socket
    a holder silent for HOLDER_SILENCE seconds (its I/O thread pings every second; `seen` on
        each message): the lease ends and its unused ids are never given out
    a controller restart: the SQLite store kept each lease's row with its request's key (which
        begins with the client's key prefix: store/lease_rows.py); the leases wait under their
        owner (`ORPHANED`) for the client to come back: its hello, or a keyed request (a
        submit of run()'s tasks, a release; its lease request sent again), names it (`claim`),
        and it goes on numbering from its lease. One that does not come back within
        HOLDER_SILENCE ends as a silent holder's (a client killed with the controller)

A holder is the client's receiving socket (`rt`); it usually has one lease at a time (it asks
for the next when it has used the last one; two threads of one client may hold two). An id
leased and not yet used reads as unfinished to every client (`pending`), and a task `after`
it waits for it to be stored (submits.after: the scheduler's `awaits`); ids that stop being
pending without being stored (`take` passed over them, `release`, `expire`) are returned, so
that the requests waiting for them are told they are unknown and the tasks after them fail
(results.gone). A client gives back what is left once its run() is idle for a moment
(client/runs.py), so such a wait lasts only that long.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..store import TaskStore
from .validation import BadRequest, LeaseEnded

log = logging.getLogger("taskmill.controller")

LEASE_MAX = 4096  # taskids in one lease at most (a client asks for more as it uses them)
ORPHANED = b"\0leases-of:"  # + a client's key prefix: its leases from before a restart
HOLDER_SILENCE = 10.0  # seconds without a message from a holder before its lease ends
CHECK_EVERY = 1.0  # seconds between looks for silent holders


@dataclass(slots=True)
class Lease:
    start: int
    end: int  # (exclusive)
    next: int  # the lowest id the holder may still use
    key: str = ""  # the client's key for the request that got it


def owner_of(key: str) -> str:
    """The client's part of one of its request keys (its key prefix, "uuid:" + a number)."""
    return key.rpartition(":")[0]


class Leases:
    def __init__(self, store: TaskStore, mono: float = 0.0) -> None:
        self.store = store
        self.by_holder: dict[bytes, list[Lease]] = {}
        self.seen_at: dict[bytes, float] = {}  # monotonic time each holder last spoke
        self.by_key: dict[str, Lease] = {}  # the request's key -> each held lease that has one
        for start, end, key, unused in store.stored_leases:  # (from before a restart)
            orphaned = ORPHANED + owner_of(key).encode()
            lease = Lease(start, end, unused, key)
            self.by_holder.setdefault(orphaned, []).append(lease)
            self.seen_at[orphaned] = mono
            if key:
                self.by_key[key] = lease

    def claim(self, holder: bytes, owner: str, mono: float) -> None:
        """The client `owner` (its key prefix) is back, at `holder`: the leases it held
        before the controller restarted are its again."""
        orphaned = ORPHANED + owner.encode()
        if owner and orphaned in self.by_holder:
            self.move(orphaned, holder, mono)

    def grant(self, holder: bytes, n: int, mono: float, key: str = "") -> Lease:
        """A new lease of min(n, LEASE_MAX) ids for `holder`; or the one granted to `key`
        before, if it is still held (by `holder` from now on)."""
        known = self.by_key.get(key) if key else None
        if known is not None:
            found = self.find(known.start)
            if found is not None and found[0] != holder:  # (the old connection's)
                self.by_holder[found[0]].remove(known)
                self.by_holder.setdefault(holder, []).append(known)
            self.seen_at[holder] = mono
            return known
        n = min(n, LEASE_MAX)
        start = self.store.lease(n, key)
        lease = Lease(start, start + n, start, key)
        held = []
        for x in self.by_holder.get(holder, ()):
            if x.next < x.end:
                held.append(x)
            else:
                self.end(x)  # (used up)
        self.by_holder[holder] = [*held, lease]
        self.seen_at[holder] = mono
        if key:
            self.by_key[key] = lease
        return lease

    def end(self, lease: Lease, unused_from: int | None = None, write: bool = True) -> None:
        """`lease` is over (taken out of `by_holder` by the caller): its key is forgotten,
        and the store told (store.end_lease: `unused_from`, `write`)."""
        if lease.key:
            self.by_key.pop(lease.key, None)
        self.store.end_lease(lease.start, unused_from, write)

    def find(self, start: int) -> tuple[bytes, Lease] | None:
        """The lease from `start` and its holder; None if it ended."""
        for holder, leases in self.by_holder.items():
            for lease in leases:
                if lease.start == start:
                    return holder, lease
        return None

    def known(self, key: str) -> bool:
        """Whether a lease granted to this request's key is still held."""
        return bool(key) and key in self.by_key

    def holds(self, start: int) -> bool:
        """Whether the lease from `start` is still held."""
        return self.find(start) is not None

    def take_back(self, start: int) -> list[int]:
        """End the lease from `start`, whoever holds it, its ids never used (its grant was
        not written: the counter goes back at the next write); those ids."""
        found = self.find(start)
        if found is None:
            return []
        holder, lease = found
        self.by_holder[holder].remove(lease)
        self.end(lease, lease.next, write=False)
        return list(range(lease.next, lease.end))

    def take(self, holder: bytes, tids: list[int]) -> list[int]:
        """Check that `tids` may be used by `holder` now (BadRequest naming the first that
        may not) and mark them used; returns the ids passed over (used or skipped)."""
        leases = self.by_holder.get(holder)
        if not leases:
            raise LeaseEnded(
                f"taskids {tids[0]}..{tids[-1]} are not leased to this client: its lease "
                f"ended (the controller restarted, or it was silent for {HOLDER_SILENCE:g}s); "
                "none of these tasks was stored, and their ids stay unknown")
        marks: dict[int, int] = {}  # lease index -> its next unused id after this submit
        for t in tids:
            i = next((i for i, x in enumerate(leases) if x.start <= t < x.end), None)
            if i is None or t < marks.get(i, leases[i].next):
                raise BadRequest(
                    f"taskid {t} is not an unused id of this client's lease (ids are used "
                    "once, in rising order); none of these tasks was stored")
            marks[i] = t + 1
        return self.passed(leases, marks)

    def burn(self, holder: bytes, tids: list[int]) -> list[int]:
        """The ids of a refused submit are never used (they read as unknown); the ids
        passed over."""
        leases = self.by_holder.get(holder) or []
        marks = {i: t + 1 for t in tids for i, x in enumerate(leases) if x.next <= t < x.end}
        return self.passed(leases, marks)

    @staticmethod
    def passed(leases: list[Lease], marks: dict[int, int]) -> list[int]:
        out: list[int] = []
        for i, mark in marks.items():
            lease = leases[i]
            if mark > lease.next:
                out.extend(range(lease.next, mark))
                lease.next = mark
        return out

    def release(self, holder: bytes, write: bool = True) -> list[int]:
        """End `holder`'s leases; their unused ids go back (`write`: see store.end_lease).
        Returns those ids."""
        leases = self.by_holder.pop(holder, [])
        self.seen_at.pop(holder, None)
        out: list[int] = []
        for lease in sorted(leases, key=lambda x: -x.end):
            self.end(lease, lease.next, write)
            out.extend(range(lease.next, lease.end))
        return out

    def move(self, holder: bytes, to: bytes, mono: float) -> None:
        """`holder`'s leases go to `to` (the same client's new receive socket: its connection
        broke, and it connected anew under new ids)."""
        leases = self.by_holder.pop(holder, None)
        self.seen_at.pop(holder, None)
        if leases:
            self.by_holder[to] = [*self.by_holder.get(to, ()), *leases]
            self.seen_at[to] = mono

    def seen(self, holder: bytes, mono: float) -> None:
        if holder in self.seen_at:
            self.seen_at[holder] = mono

    def expire(self, mono: float, stall_end: float = float("-inf")) -> list[int]:
        """End the leases of holders silent for HOLDER_SILENCE seconds (a stall of the
        controller's loop that ended at `stall_end` not counted); their unused ids (not given
        back: the holder may be alive, only slow, and its submit must fail)."""
        left: list[int] = []
        for holder, seen in list(self.seen_at.items()):
            if mono - max(seen, stall_end) > HOLDER_SILENCE:
                del self.seen_at[holder]
                for lease in self.by_holder.pop(holder, []):
                    self.end(lease)
                    if lease.next < lease.end:
                        log.info("a client silent for %gs held taskids %d..%d unused: "
                                 "they stay unknown", HOLDER_SILENCE, lease.next,
                                 lease.end - 1)
                        left.extend(range(lease.next, lease.end))
        return left

    def pending(self, tid: int) -> bool:
        """Whether `tid` is leased and not used yet (it reads as unfinished)."""
        return any(x.next <= tid < x.end for leases in self.by_holder.values() for x in leases)
