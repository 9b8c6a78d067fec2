"""`MemoryStore`: tasks and results in the controller's memory (`--db :memory:`).

Nothing survives a restart; commits are free. Results stay until they are cleared.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ..memory import compact
from .base import (
    SUBMIT_KEYS_KEPT,
    IdLeases,
    Loaded,
    StoredResult,
    StoredTask,
    compact_tids,
    new_store_id,
)


class MemoryStore(IdLeases):
    """Tasks and results in this process's memory; nothing survives a restart."""

    durable = False  # (so the controller keeps no backlog: controller/backlog.py)

    def __init__(self) -> None:
        self._next = 0
        self._leased: dict[int, int] = {}
        self.store_id = new_store_id()  # (each start of a controller: a new store)
        self._dirty = False  # (IdLeases sets it; nothing is written)
        self._next_eid = 0
        self._submits: OrderedDict[str, range | tuple[int, ...]] = OrderedDict()
        self._active: dict[int, StoredTask] = {}
        self._results: dict[int, StoredResult] = {}
        self._n_ok = 0

    def allocate(self) -> int:
        tid = self._next
        self._next += 1
        return tid

    def allocate_engine(self, uuid: str = "") -> int:
        eid = self._next_eid
        self._next_eid += 1
        return eid

    def add(self, task: StoredTask, keep: bool = True) -> None:
        self._active[task.tid] = task  # (always kept: there is nowhere else)

    def task(self, tid: int) -> StoredTask | None:
        return self._active.get(tid)

    def mark_running(self, tid: int, engine: int | None, node: int, attempts: int, tries: int,
                     handed_over: list[int]) -> None:
        pass

    def unfinished(self, queued_max: int | None = None, held: Any = None,
                   fits: Any = None) -> list[Loaded]:
        return []

    def load_queued(self, tids: list[int], keep: bool = True, pending: bool = False,
                    fits: Any = None) -> tuple[list[Loaded], int]:
        return [], 0  # (no backlog without a store on disk)

    @property
    def held_bytes(self) -> int:  # (not counted: no backlog, every task stays here)
        return 0

    def submitted(self, key: str, resent: bool = True) -> list[int] | None:
        tids = self._submits.get(key)
        return None if tids is None else list(tids)

    def forget_keys(self, prefix: str) -> None:
        """(Nothing to do: this store keeps only the last SUBMIT_KEYS_KEPT keys.)"""

    def remember_submit(self, key: str, tids: list[int]) -> None:
        self._submits[key] = compact_tids(tids)
        while len(self._submits) > SUBMIT_KEYS_KEPT:
            self._submits.popitem(last=False)

    def retire_engine(self, uuid: str, retiring: bool = True) -> None:
        """(Nothing to do: a restart finds nothing of this store.)"""

    def retiring_engines(self) -> set[str]:
        return set()

    def remember_answer(self, key: str, answer: Any) -> None:
        """(Nothing to do: a restart finds nothing of this store; control_verbs.py keeps the
        answers for the connections of this lifetime.)"""

    def answered(self, key: str) -> Any:
        return None

    def withdraw(self, tids: list[int], key: str | None = None) -> None:
        for tid in tids:
            self._active.pop(tid, None)
            r = self._results.pop(tid, None)
            if r is not None:
                self._n_ok -= r.ok
        if key is not None:
            self._submits.pop(key, None)

    def finish(self, tid: int, result: StoredResult) -> None:
        self._active.pop(tid, None)
        if tid in self._results:
            raise RuntimeError(f"task {tid} finished twice")
        self._results[tid] = result
        self._n_ok += result.ok

    def result(self, tid: int) -> StoredResult | None:
        return self._results.get(tid)

    def unsaved(self, tid: int) -> bool:  # (nothing to commit here)
        return False

    def result_meta(self, tid: int) -> dict[str, Any] | None:
        r = self._results.get(tid)
        return None if r is None else r.meta

    def compact(self) -> None:
        """Rebuild the indexes of active tasks and results to their size (after a burst or a
        clear: see taskmill.memory)."""
        compact(self._active)
        compact(self._results)

    def clear(self, tids: list[int] | None, key: str = "") -> tuple[int, list[int]]:
        if tids is None:
            n = len(self._results)
            self._results.clear()
            self._n_ok = 0
            return n, []
        dropped, missing = 0, []
        for tid in tids:
            r = self._results.pop(tid, None)
            if r is None:
                missing.append(tid)
            else:
                dropped += 1
                self._n_ok -= r.ok
        return dropped, missing

    def counts(self) -> tuple[int, int]:
        return self._n_ok, len(self._results) - self._n_ok

    def finished_ids(self) -> tuple[list[int], list[int]]:
        ok = sorted(t for t, r in self._results.items() if r.ok)
        failed = sorted(t for t, r in self._results.items() if not r.ok)
        return ok, failed

    def commit(self) -> None:
        pass

    def dirty(self) -> bool:
        return False

    def close(self) -> None:
        pass
