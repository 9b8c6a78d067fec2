"""Signing: HMAC-SHA256 with the key's pads hashed once, and the digests of large frames.

`Wire` (framing.py) MACs every header with `HmacSha256`, and every payload through
`Wire.payload_mac`: a frame of TREE_MIN bytes or more enters that MAC as the SHA-256 digests of
its TREE_LANES equal chunks (`chunk_digests`), hashed side by side on several cores by this
process's hashing threads (`hash_pool`, made on first use, made again in a forked child).
Nothing here knows about messages or sockets.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# Frames this large are MACed as the digests of TREE_LANES chunks, hashed side by side.
TREE_MIN = 512 * 1024
TREE_LANES = 4

# This process's hashing threads: (pid, pool, lanes), or None until first used.
hash_pool: tuple[int, ThreadPoolExecutor | None, int] | None = None
_hash_pool_lock = threading.Lock()


def _hashers() -> tuple[ThreadPoolExecutor | None, int]:
    """The threads that hash chunks beside the caller (none on one core) and how many lanes
    that makes with the caller; one set per process, made again in a forked child."""
    global hash_pool
    pool = hash_pool
    if pool is None or pool[0] != os.getpid():
        with _hash_pool_lock:
            if hash_pool is None or hash_pool[0] != os.getpid():
                n = min(TREE_LANES, os.cpu_count() or 1) - 1
                hash_pool = (os.getpid(), ThreadPoolExecutor(n, "taskmill-hash") if n else None,
                             n + 1)
            pool = hash_pool
    return pool[1], pool[2]


def _sha256_each(chunks: list[memoryview]) -> list[bytes]:
    return [hashlib.sha256(c).digest() for c in chunks]  # (hashlib lets go of the GIL)


def chunk_digests(buf: Any) -> bytes:
    """The SHA-256 digests of a buffer's TREE_LANES equal chunks (the last may be shorter),
    concatenated; the chunks are hashed on up to TREE_LANES cores."""
    view = memoryview(buf).cast("B")
    step = -(-view.nbytes // TREE_LANES)
    chunks = [view[i:i + step] for i in range(0, view.nbytes, step)]
    pool, lanes = _hashers()
    if pool is None:
        return b"".join(_sha256_each(chunks))
    futures = [pool.submit(_sha256_each, chunks[k::lanes]) for k in range(1, lanes)]
    digests: list[bytes] = [b""] * len(chunks)
    digests[0::lanes] = _sha256_each(chunks[0::lanes])
    for k, fut in enumerate(futures, 1):
        digests[k::lanes] = fut.result()
    return b"".join(digests)


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer pad blocks hashed once.

    `hmac.digest` pads and hashes the key again on every call; starting from copies of the two
    keyed SHA-256 states costs less than half as much on the small headers every message
    carries. The MACs are the standard ones (the tests compare them with `hmac`)."""

    BLOCK = 64  # SHA-256's block size

    def __init__(self, key: bytes) -> None:
        if len(key) > self.BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(self.BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def start(self) -> Any:
        """A running inner hash: `update` it, then `finish` it."""
        return self._inner.copy()

    def finish(self, inner: Any) -> bytes:
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def digest(self, data: Any) -> bytes:
        inner = self.start()
        inner.update(data)
        return self.finish(inner)

