"""Where the controller keeps tasks and results: one small interface, `TaskStore`.

The controller asks the store for taskids, hands it each submitted task (its spec and opaque
payload frames), fetches a node's body to dispatch it, records each final result, and drops
results on `clear`. Results are opaque: the store never unpickles anything.

`MemoryStore` keeps everything in this process (results until cleared). A durable SQLite store
is its own piece of work; it implements the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class StoredTask:
    tid: int
    spec: dict[str, Any]  # {"nodes": [node meta...], "after": [...]}; node meta has body frame spans
    frames: list[Any]
    submitted: float


@dataclass(slots=True)
class StoredResult:
    meta: dict[str, Any]  # status, kind, error, engineid, times, stdout, stderr, attempts, pmac
    frames: list[Any]

    @property
    def ok(self) -> bool:
        return self.meta.get("status") == "ok"


class TaskStore(Protocol):
    def allocate(self) -> int: ...
    def add(self, task: StoredTask) -> None: ...
    def task(self, tid: int) -> StoredTask | None: ...
    def finish(self, tid: int, result: StoredResult) -> None: ...
    def result(self, tid: int) -> StoredResult | None: ...
    def clear(self, tids: list[int] | None) -> tuple[int, list[int]]: ...
    def counts(self) -> tuple[int, int]: ...
    def finished_ids(self) -> tuple[list[int], list[int]]: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """Tasks and results in this process's memory; nothing survives a restart."""

    def __init__(self) -> None:
        self._next = 0
        self._active: dict[int, StoredTask] = {}
        self._results: dict[int, StoredResult] = {}
        self._n_ok = 0

    def allocate(self) -> int:
        tid = self._next
        self._next += 1
        return tid

    def add(self, task: StoredTask) -> None:
        self._active[task.tid] = task

    def task(self, tid: int) -> StoredTask | None:
        return self._active.get(tid)

    def finish(self, tid: int, result: StoredResult) -> None:
        self._active.pop(tid, None)
        if tid in self._results:
            raise RuntimeError(f"task {tid} finished twice")
        self._results[tid] = result
        self._n_ok += result.ok

    def result(self, tid: int) -> StoredResult | None:
        return self._results.get(tid)

    def clear(self, tids: list[int] | None) -> tuple[int, list[int]]:
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

    def close(self) -> None:
        pass
