"""`LeaseRows`: the SQLite store's record of the run() leases not ended (controller/leases.py).

A lease moves the taskid counter past its block, and the commit that writes the counter comes
before the client hears of it. The lease's row (start, end, and the key of the client's request
for it, which begins with the client's key prefix) is written by that same commit, and deleted
by the commit that ends the lease (used up, given back, expired), so that a counter given back
and its row's deletion are written together. A controller restarted after a kill -9 reads the
rows back: it knows which client held which block, and a client that comes back (its hello and
its keyed requests name it; a request for a lease sent again names the lease) goes on numbering
from its block, so that run()'s tasks queued or in flight across the restart are stored and
its taskids still rise by 1. The block of a client that does not come back ends as a silent
holder's does.
"""

from __future__ import annotations

import sqlite3
from typing import Any

# (its table: schema.py's SCHEMA)
INSERT = "INSERT OR REPLACE INTO leases VALUES (?, ?, ?)"
DELETE = "DELETE FROM leases WHERE start = ?"


class LeaseRows:
    def __init__(self) -> None:
        self.queued: dict[int, tuple[int, int, str] | None] = {}  # start -> row, or None: gone

    def granted(self, start: int, end: int, key: str) -> None:
        self.queued[start] = (start, end, key)

    def ended(self, start: int) -> None:
        self.queued[start] = None

    def writes(self) -> list[tuple[str, Any]]:
        """The commit's statements (in its transaction)."""
        gone = [(s,) for s, row in self.queued.items() if row is None]
        rows = [row for row in self.queued.values() if row is not None]
        return [*([(DELETE, gone)] if gone else []), *([(INSERT, rows)] if rows else [])]

    @staticmethod
    def read(db: sqlite3.Connection) -> list[tuple[int, int, str, int]]:
        """Each lease not ended when the store was last written: (start, end, key, next),
        `next` past the highest of its taskids stored (its holder uses them in rising order)."""
        out = []
        for start, end, key in db.execute("SELECT start, end, key FROM leases ORDER BY start"):
            top = db.execute("SELECT MAX(tid) FROM tasks WHERE tid >= ? AND tid < ?",
                             (start, end)).fetchone()[0]
            out.append((start, end, key, start if top is None else top + 1))
        return out
