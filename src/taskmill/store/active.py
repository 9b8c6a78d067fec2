"""The tasks a store keeps in memory for dispatch (queued or running), with the payload bytes
they hold: the controller's queue window counts those bytes (controller/backlog.py)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from ..memory import compact
from .base import Loaded, StoredTask, unpack

# A payload smaller than this is not counted here: the window's cost per task covers it
# (defaults.HELD_TASK_BYTES), and a flood of small tasks needs no second index by taskid.
COUNTED_MIN = 1024


class ActiveTasks:
    """Tasks by taskid, and the payload bytes of those whose payload is COUNTED_MIN or more."""

    __slots__ = ("tasks", "sizes", "bytes")

    def __init__(self) -> None:
        self.tasks: dict[int, StoredTask] = {}
        self.sizes: dict[int, int] = {}  # (the counted ones)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.tasks)

    def put(self, task: StoredTask, size: int) -> None:
        """Task `task`, whose payload frames are `size` bytes, is held from now on."""
        self.pop(task.tid)
        self.tasks[task.tid] = task
        if size >= COUNTED_MIN:
            self.sizes[task.tid] = size
            self.bytes += size

    def pop(self, tid: int) -> None:
        """Task `tid` is not held any more (whether it was or not)."""
        if self.tasks.pop(tid, None) is not None and self.sizes:
            self.bytes -= self.sizes.pop(tid, 0)

    def get(self, tid: int) -> StoredTask | None:
        return self.tasks.get(tid)

    def lowest(self, default: int) -> int:
        """The lowest taskid held (`default` if none)."""
        return min(self.tasks) if self.tasks else default

    def compact(self) -> None:  # (after a burst: taskmill.memory)
        compact(self.tasks)
        compact(self.sizes)



# The controller's backlog's rule (controller/backlog.py `fits`): whether the kth task read back
# at once may come in, bringing the payload bytes held to the second number.
Fits = Callable[[int, int], bool]


def read_unfinished(rows: Iterable[tuple[Any, ...]], load: Callable[[Any], Loaded],
                    queued_max: int | None, held: Any, fits: Fits | None,
                    size: Callable[[bytes | None], int], active: ActiveTasks) -> list[Loaded]:
    """SQLiteStore.unfinished's reading of its rows (SELECT_UNFINISHED's, oldest first):
    `load` each (into `active`), but the queued ones past the first `queued_max`, or from
    the first that `fits` refuses on (`size`: of a row's frames), only to `held.hold`."""
    out, queued = [], 0
    for row in rows:
        if queued_max is not None and row[1] == "queued":
            queued += 1
            if queued > queued_max or held or (fits is not None and not fits(
                    len(out), active.bytes + size(row[4]))):
                held.hold(row[0], unpack(row[3]).get("after"))
                continue
        out.append(load(row))
    return out


def read_fitting(rows: Iterable[tuple[Any, ...]], tids: list[int], cut: int,
                 read: Callable[[Any], Loaded], size: Callable[[bytes | None], int],
                 fits: Fits | None, held_bytes: int) -> tuple[list[Loaded], int]:
    """SQLiteStore.load_queued's reading of the rows of `tids[:cut]` (SELECT_QUEUED's), each
    while `fits` lets it in (`size`: of a row's frames, before they are read; `held_bytes`:
    held before the first; None: every row): those read, and how many of `tids` that leaves
    looked at."""
    if fits is None:
        return list(map(read, rows)), cut
    out: list[Loaded] = []
    for row in rows:
        held_bytes += size(row[4])
        if not fits(len(out), held_bytes):
            return out, bisect_left(tids, row[0])
        out.append(read(row))
    return out, cut
