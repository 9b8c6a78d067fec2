"""Giving memory back after a burst of tasks: index dicts rebuilt to their size, free pages
of the C allocator returned to the system.

Two things keep a process's memory at its peak after a burst (say a million futures
submitted, finished and cleared), though every object of it was freed:

- CPython never shrinks a dict's (or set's) table when items are deleted: a dict that held a
  million taskids keeps its ~40 MiB table once empty, and so does every index by taskid that
  a burst filled. `compact(d)` rebuilds one in place (the same object, the same order), sized
  for what it holds now.
- A small frame received zero-copy shares its receive buffer with others (`detached`).
- The interpreter's free lists keep spare tuples, lists and dicts, each pinning the 1 MiB
  pymalloc arena it sits in; a full collection empties them (at most every COLLECT_EVERY s).
- glibc's malloc keeps freed memory for reuse rather than handing it back, even whole free
  pages in the middle of its heap. `give_back()` empties the free lists and asks malloc to
  return its free pages (`malloc_trim(0)`; elsewhere, macOS or musl, only the first).
- glibc also raises its threshold for mapping a large allocation on its own to the size of
  each mapped one freed: after the first large frame goes, the next ones come from the heap,
  which keeps their pages once they are freed (a controller that held large payloads a window
  at a time kept its peak: 156 MiB, not 37, after 300 tasks of 4 MiB). `map_large()` fixes
  that threshold (the controller calls it as it starts).

Who calls them, and when: the controller's core watches how many tasks are active (`Burst`:
a burst has ended when the count falls to an eighth of its high-water mark, itself at least
BURST_MIN) and then compacts its per-task indexes (scheduler, store, waiters, activity), and
gives memory back once at most QUIET tasks are active (a full collection walks every object:
~0.4 s for a million); so does a `clear` that drops at least BURST_MIN results. The client gives
memory back in `clear()` (a program that dropped its futures). Neither needs the clock. What
outlives its message (a submitted task's frames in the controller, a result's in a future) is
`detached` first.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from functools import cache
from typing import Any

SMALL_FRAME = 64 * 1024  # bytes: a zero-copy frame smaller is copied out (see `detached`)
BURST_MIN = 10_000  # tasks: a smaller burst leaves too little behind to be worth a trim
SHRINK_FACTOR = 8  # a burst has ended when the count falls to 1/8 of its high-water mark
COLLECT_EVERY = 30.0  # seconds: give_back's full collections at most this often
QUIET = BURST_MIN // SHRINK_FACTOR  # active tasks: few enough for give_back's full collection
MAPPED_MIN = 1024 * 1024  # bytes: glibc maps an allocation this large on its own (`map_large`)
M_MMAP_THRESHOLD = -3  # (glibc's mallopt parameter)


def detached(frames: list[Any]) -> list[Any]:
    """The frames, each small zero-copy frame (`zmq.Frame`) replaced by a copy of its bytes.
    libzmq reads small messages into a receive buffer (8 KiB or more) that their frames share
    and keep alive: a few kept frames pin every buffer. A large frame has a buffer of its own
    and stays zero-copy: its size is asked first, as `zmq.Frame.bytes` (even `hasattr`'s look
    at it) copies the frame out and keeps that copy in the frame, which would hold it twice."""
    return [f.bytes if type(f) is not bytes and len(f) < SMALL_FRAME and hasattr(f, "bytes")
            else f for f in frames]


def compact(d: dict[Any, Any] | set[Any]) -> None:
    """Rebuild a dict's or set's table in place, sized for what it holds now (the same
    object, same items, same order): CPython never shrinks a table after deletes."""
    if isinstance(d, dict):
        items = dict(d)  # (a sparse table is copied into one of the right size)
        d.clear()  # frees the old table
        d.update(items)
    else:
        kept = set(d)
        d.clear()
        d.update(kept)


class Burst:
    """Tells when a burst has ended, from a count (of active tasks) given now and then."""

    __slots__ = ("least", "high")

    def __init__(self, least: int = BURST_MIN) -> None:
        self.least = least
        self.high = 0  # the high-water mark of the count since the last burst ended

    def ended(self, count: int) -> bool:
        """True once when `count` has fallen to 1/SHRINK_FACTOR of its high-water mark,
        which was at least `least`; the mark starts again from `count` then."""
        if count > self.high:
            self.high = count
            return False
        if self.high >= self.least and count * SHRINK_FACTOR <= self.high:
            self.high = count
            return True
        return False


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim  # (the C library the interpreter runs on)
    except (OSError, AttributeError):  # not glibc: no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def map_large(size: int = MAPPED_MIN) -> bool:
    """Have the C allocator map every allocation of `size` bytes or more on its own, and
    unmap it when it is freed (glibc's `mallopt(M_MMAP_THRESHOLD)`, which also ends its
    dynamic threshold: see the module docstring). Costs the fresh pages of each (a fraction of
    what copying them costs). True if set (glibc only)."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, size))


class Collections:
    """When give_back last ran a full collection (monotonic seconds; the caller's clock)."""

    last = float("-inf")


def give_back(now: float) -> bool:
    """Return free memory to the system: a full garbage collection first (it also empties
    the interpreter's free lists, whose few thousand spare tuples, lists and dicts each keep a
    1 MiB pymalloc arena alive), at most once every COLLECT_EVERY seconds (`now`: monotonic),
    then the C allocator's free pages (glibc `malloc_trim(0)`). True if the C allocator
    returned some. Costs a walk of the objects (~0.4 s for a million: hence the spacing, for a
    program that clears often while it holds many futures) and of the heap: call it after a
    burst, not every turn."""
    if now - Collections.last >= COLLECT_EVERY:
        Collections.last = now
        gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
