"""`SubmitKeys`: the SQLite store's submit keys, and `DeadKeys`: those of closed clients.

A submit's key (`<client id>:<request number>`) is kept so that the same submit sent again
after a controller restart gets the same taskids instead of running twice. `SubmitKeys` holds
the last RECENT_KEYS_KEPT keys in memory (with every key not committed yet: the table does not
have it), the rows the next commit writes, and answers a lookup from memory, or from the table
for a submit marked as sent again (its key may be older, or of an earlier lifetime). Only a
resent submit can carry a key seen before: a client sends one again only to a restarted
controller (connection.py), so the memory need not hold every key of this lifetime.

The same table keeps the answers of the other requests that may not be carried out twice
(abort, clear, retire: controller/control_verbs.py) under their keys, written in the
transaction that carries them out, so that one sent again to a restarted controller is
answered as the first time: their rows hold {"answer": ...} where a submit's hold its taskids.

`DeadKeys`: a client that closes says so in its `bye`, with the prefix of its keys: it sends
none of them again, so they can go. (Keys of clients that died without a `bye` stay until a later store open
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
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from .base import compact_tids, unpack

RECENT_KEYS_KEPT = 4096  # keys answered from memory (and every one not committed yet)
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


class SubmitKeys:
    """A store's submit keys (see the module docstring); `pack` packs a row's taskids."""

    def __init__(self, pack: Callable[[Any], bytes]) -> None:
        self.recent: OrderedDict[str, range | tuple[int, ...]] = OrderedDict()
        self.queued: dict[str, tuple[Any, ...]] = {}  # REMEMBER_SUBMIT's rows, next commit
        self.dead = DeadKeys()
        self._pack = pack

    def lookup(self, db: sqlite3.Connection, key: str, resent: bool) -> list[int] | None:
        """The taskids a submit with this key was given (None: a new key)."""
        tids = self.recent.get(key)
        if tids is not None or not resent:
            return None if tids is None else list(tids)
        row = db.execute("SELECT tids FROM submits WHERE key=?", (key,)).fetchone()
        return unpack(row[0]) if row else None

    def remember(self, key: str, tids: list[int]) -> None:
        self.recent[key] = compact_tids(tids)
        self.queued[key] = (key, self._pack(tids), time.time())
        while len(self.recent) > RECENT_KEYS_KEPT:
            oldest = next(iter(self.recent))
            if oldest in self.queued:  # (not in the table yet: kept until it is)
                break
            del self.recent[oldest]

    def remember_answer(self, key: str, answer: Any) -> None:
        """Keep `answer` (builtins) as what the request with this key was given: written by
        the next commit (`row` for one written now)."""
        self.queued[key] = self.row(key, answer)

    def row(self, key: str, answer: Any) -> tuple[str, bytes, float]:
        return key, self._pack({"answer": answer}), time.time()

    @staticmethod
    def answered(db: sqlite3.Connection, key: str) -> Any:
        """The answer kept for a request with this key (None: none). Rows of submits hold a
        list of taskids, those of other keyed requests {"answer": ...}."""
        row = db.execute("SELECT tids FROM submits WHERE key=?", (key,)).fetchone()
        value = unpack(row[0]) if row else None
        return value.get("answer") if isinstance(value, dict) else None

    def withdraw(self, key: str) -> None:
        """A refused submit's key: as if never seen."""
        self.recent.pop(key, None)
        self.queued.pop(key, None)

    def forget(self, prefix: str) -> None:
        """A client closed for good: its keys go, a few at each commit (DeadKeys)."""
        if self.dead.add(prefix):
            for key in [k for k in self.queued if k.startswith(prefix)]:
                del self.queued[key]  # (never written)
