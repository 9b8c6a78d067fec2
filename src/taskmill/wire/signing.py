"""Signing: HMAC-SHA256 with the key's pads hashed once (headers), and keyed BLAKE3 (payloads).

`Wire` (framing.py) MACs every header with `HmacSha256`, and every payload through
`Wire.payload_mac`, a `PayloadMac`: keyed BLAKE3 (the `blake3` package) over the frames, each
prefixed by its length, with a key derived from the connection file's (BLAKE3's own
key-derivation mode). BLAKE3 is faster than SHA-256 on a single core and hashes a very large frame
on every core (200 MB: 18 ms against 84 ms for the SHA-256 tree it replaced, on this project's
2-core VM). Nothing here knows about messages or sockets.
"""

from __future__ import annotations

import hashlib
from typing import Any

import blake3

# A frame at least this large is hashed on every core (BLAKE3's own threads). Below it, waking
# the threads costs more than they save while the other processes of a round trip run too: in
# 1 MiB echo round trips on the 2-core VM of benchmarks/payload_costs.md, one MAC took 0.26 ms
# on every core against 0.15 on one, and 1.32 against 1.17 ms for 8 MB; from some 16 MiB on,
# a second core that is free halves the time (64 MiB: 10 ms against 19).
PARALLEL_MIN = 16 * 1024 * 1024
PAYLOAD_KEY_CONTEXT = "taskmill 2026-12 payload MAC"


class PayloadMac:
    """Keyed BLAKE3 over payload frames, each prefixed by its length (so boundaries count)."""

    def __init__(self, key: bytes) -> None:
        self._key = blake3.blake3(key, derive_key_context=PAYLOAD_KEY_CONTEXT).digest()

    def digest(self, buffers: list[Any], sizes: list[int]) -> bytes:
        """The MAC of these buffers (of these sizes in bytes)."""
        threads = blake3.blake3.AUTO if max(sizes, default=0) >= PARALLEL_MIN else 1
        h = blake3.blake3(key=self._key, max_threads=threads)
        for b, n in zip(buffers, sizes, strict=True):
            h.update(n.to_bytes(8, "little"))
            h.update(b)
        return h.digest()


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

    def digest(self, data: Any) -> bytes:
        """The MAC of `data` (bytes or any buffer)."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

