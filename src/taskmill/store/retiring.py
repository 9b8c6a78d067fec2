"""`RetiringEngines`: the SQLite store's record of the engines told to retire.

`TaskClient.retire_engines` takes engines out of scheduling, and each stops once it holds
nothing (controller/engines.py). A controller restarted meanwhile must not forget it: the
engines come back (registering anew, by their uuid) and would take tasks again, and a client
that sent its `retire` again would be told of engines that never stop. So each engine's uuid is
written when it starts retiring (by the commit before the answer goes out) and deleted when it
stopped; a restarted controller retires each that comes back (its new id) at once. Rows of
engines that never came back go when a later store open finds them older than ENGINE_ROW_AGE.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

# (its table: schema.py's SCHEMA)
MARK = "INSERT OR REPLACE INTO retiring VALUES (?, ?)"
UNMARK = "DELETE FROM retiring WHERE uuid = ?"


class RetiringEngines:
    def __init__(self) -> None:
        self.queued: dict[str, bool] = {}  # uuid -> retiring (True) or stopped (False)

    def mark(self, uuid: str, retiring: bool) -> None:
        self.queued[uuid] = retiring

    def writes(self) -> list[tuple[str, Any]]:
        """The commit's statements (in its transaction)."""
        now = time.time()
        marks = [(u, now) for u, on in self.queued.items() if on]
        unmarks = [(u,) for u, on in self.queued.items() if not on]
        return [*([(MARK, marks)] if marks else []), *([(UNMARK, unmarks)] if unmarks else [])]

    @staticmethod
    def read(db: sqlite3.Connection) -> set[str]:
        """The uuids of the engines retiring when the store was last written."""
        return {row[0] for row in db.execute("SELECT uuid FROM retiring")}

    @staticmethod
    def forget_old(db: sqlite3.Connection, before: float) -> None:
        """(In the caller's transaction, at open) Rows of engines that never came back."""
        db.execute("DELETE FROM retiring WHERE at < ?", (before,))
