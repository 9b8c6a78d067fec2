"""`DeadKeys`: the submit keys of clients closed for good, dropped from the SQLite store.

A submit's key (`<client id>:<request number>`) is kept so that the same submit sent again
after a controller restart or a reconnection gets the same taskids instead of running twice.
A client that closes says so in its `bye`, with the prefix of its keys: it sends none of them
again, so they can go. (Keys of clients that died without a `bye` stay until a later store open
finds them older than SUBMIT_KEY_AGE.) Before, the table grew by every submit key for the
controller's whole life.

The store's commit asks `writes` once per LOW_TID_EVERY: a range delete of at most
KEYS_PER_DELETE keys for each of the first PREFIXES_PER_LOOK prefixes still holding keys, so
that a client that made a million submits never stalls a commit. At most PREFIXES_KEPT
prefixes wait; past that the oldest are let go (their keys stay, as before).
"""

from __future__ import annotations

import re
import sqlite3
from collections import deque
from typing import Any

KEYS_PER_DELETE = 2048
PREFIXES_PER_LOOK = 32
PREFIXES_KEPT = 100_000
PREFIX = re.compile(r"[0-9a-f]{32}:")  # the client's id (connection.py) and the colon
KEYS_LEFT = "SELECT 1 FROM submits WHERE key >= ? AND key < ? LIMIT 1"
DROP_KEYS = ("DELETE FROM submits WHERE key IN (SELECT key FROM submits WHERE key >= ? AND "
             f"key < ? LIMIT {KEYS_PER_DELETE})")


class DeadKeys:
    """The key prefixes of closed clients whose keys are still in the store, oldest first."""

    def __init__(self) -> None:
        self.waiting: deque[str] = deque(maxlen=PREFIXES_KEPT)

    def add(self, prefix: str) -> bool:
        """A closed client's prefix (False, and nothing kept, if it is not one)."""
        if not PREFIX.fullmatch(prefix):
            return False
        self.waiting.append(prefix)
        return True

    def writes(self, db: sqlite3.Connection) -> list[tuple[str, Any]]:
        """The deletes for this look (run in the commit's transaction, after the submit keys
        it writes); the prefixes with no key left are let go."""
        out: list[tuple[str, Any]] = []
        looked = 0
        while looked < min(PREFIXES_PER_LOOK, len(self.waiting)):
            prefix = self.waiting[looked]
            bounds = (prefix, prefix[:-1] + ";")  # (";" follows ":")
            if db.execute(KEYS_LEFT, bounds).fetchone() is None:
                del self.waiting[looked]
                continue
            out.append((DROP_KEYS, [bounds]))
            looked += 1
        return out
