"""The SQLite store's cache of finished results, bounded in entries and bytes.

`SQLiteStore.finish` and `result` put results here; the oldest go first once there are more
than `size` of them or more than `max_bytes` of frames, and a result larger than a quarter of
`max_bytes` is never kept (it is read back from disk when asked for). `forget` drops one that
was cleared or withdrawn.
"""

from __future__ import annotations

from collections import OrderedDict

from ..wire import frame_len
from .base import StoredResult


class ResultCache:
    """Recent results by taskid, oldest first."""

    def __init__(self, size: int, max_bytes: int) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0  # frame bytes of the results kept
        self._entries: OrderedDict[int, tuple[StoredResult, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tid: int) -> StoredResult | None:
        hit = self._entries.get(tid)
        return None if hit is None else hit[0]

    def remember(self, tid: int, result: StoredResult, size: int | None = None) -> None:
        """Keep `result` (of `size` frame bytes, counted here if None)."""
        if size is None:
            size = sum(frame_len(f) for f in result.frames)
        if size > self.max_bytes // 4:
            return  # a huge result is read back from disk when asked for
        old = self._entries.pop(tid, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[tid] = (result, size)
        self.bytes += size
        while len(self._entries) > self.size or self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def forget(self, tid: int) -> None:
        old = self._entries.pop(tid, None)
        if old is not None:
            self.bytes -= old[1]
