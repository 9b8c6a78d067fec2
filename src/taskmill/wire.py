"""The message format every taskmill process speaks.

A message is a ZeroMQ multipart message:

    [PROTOCOL, signature, header, *payload]

- `header` is a small msgpack map. It always holds `type`, the sender's `sid` (random per
  `Wire`) and `seq` (rising by one per message of that `Wire`). Each socket has a `Wire` of its
  own: a socket's messages reach a peer socket in order, so a receiving socket refuses any
  `(sid, seq)` at or below the last it saw from that `sid` (replays).
- `signature` is HMAC-SHA256, with the connection file's key, over the header bytes.
- Payload frames (pickles and their out-of-band buffers) are covered by `pmac`, an HMAC over
  every payload frame, carried in the header and so covered by the signature too. The sender of a
  payload computes `pmac` once; whoever unpickles it checks it. The controller routes payloads
  as opaque bytes and so never hashes them, except the one kind it unpickles (a callable
  `depend`).

A message with a bad or missing signature, a replayed `(sid, seq)`, a malformed header or an
oversize body raises `Refused`, which the receiver counts and drops: it is never acted on.
This module holds no sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import pickle
from collections import Counter
from collections.abc import Sequence
from typing import Any

import cloudpickle
import msgpack

PROTOCOL = b"TM1"
DEFAULT_MAX_MESSAGE = 512 * 1024 * 1024
# Buffers smaller than this stay inside the pickle; larger ones travel as frames of their own.
OUT_OF_BAND_MIN = 64 * 1024

Frame = Any  # bytes, memoryview, or zmq.Frame


class Refused(Exception):
    """A message that must not be acted on; `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _buf(frame: Frame) -> Any:
    """A buffer view of a frame without copying (zmq.Frame exposes `.buffer`)."""
    return getattr(frame, "buffer", frame)


def frame_len(frame: Frame) -> int:
    return memoryview(_buf(frame)).nbytes


class Wire:
    """Signs, checks, packs and unpacks messages for one process with one key."""

    def __init__(self, key: bytes, *, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        if not key:
            raise ValueError("a taskmill key must not be empty")
        self.key = key
        self.max_message = max_message
        self.sid = os.urandom(8)
        self._seq = itertools.count()
        self._last_seq: dict[bytes, int] = {}
        self.refused: Counter[str] = Counter()

    # -- signing ----------------------------------------------------------------------------
    def _sign(self, data: Any) -> bytes:
        return hmac.digest(self.key, data, "sha256")

    def payload_mac(self, frames: Sequence[Frame]) -> bytes:
        """HMAC over payload frames, each prefixed by its length so boundaries count too."""
        h = hmac.new(self.key, digestmod=hashlib.sha256)
        for f in frames:
            b = _buf(f)
            h.update(memoryview(b).nbytes.to_bytes(8, "little"))
            h.update(b)
        return h.digest()

    def check_payload(self, frames: Sequence[Frame], pmac: bytes | None) -> None:
        """Raise Refused unless `frames` carry the MAC their sender computed."""
        if not isinstance(pmac, bytes) or not hmac.compare_digest(self.payload_mac(frames), pmac):
            raise Refused("bad-payload-signature", "payload frames do not match their MAC")

    # -- messages ---------------------------------------------------------------------------
    def encode(self, header: dict[str, Any], frames: Sequence[Frame] = ()) -> list[Frame]:
        """The frames of a signed message (without routing ids)."""
        header["sid"] = self.sid
        header["seq"] = next(self._seq)
        hb = msgpack.packb(header, use_bin_type=True)
        return [PROTOCOL, self._sign(hb), hb, *frames]

    def decode(self, msg: Sequence[Frame]) -> tuple[dict[str, Any], list[Frame]]:
        """Check and unpack a message (without routing ids); raise Refused if it is bad."""
        try:
            return self._decode(msg)
        except Refused as e:
            self.refused[e.reason] += 1
            raise

    def _decode(self, msg: Sequence[Frame]) -> tuple[dict[str, Any], list[Frame]]:
        if len(msg) < 3:
            raise Refused("malformed", f"{len(msg)} frames, need at least 3")
        proto = bytes(_buf(msg[0]))
        if proto != PROTOCOL:
            raise Refused("malformed", "not a taskmill message (bad protocol frame)")
        total = sum(frame_len(f) for f in msg)
        if total > self.max_message:
            raise Refused("too-large", f"{total} bytes > limit {self.max_message}")
        sig = bytes(_buf(msg[1]))
        hb = _buf(msg[2])
        if len(sig) != 32 or not hmac.compare_digest(self._sign(hb), sig):
            raise Refused("bad-signature", "signature does not match (wrong key?)")
        try:
            header = msgpack.unpackb(hb, raw=False, strict_map_key=False)
        except Exception as e:
            raise Refused("malformed", f"header is not msgpack: {e}") from None
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise Refused("malformed", "header is not a map with a str 'type'")
        sid, seq = header.get("sid"), header.get("seq")
        if not isinstance(sid, bytes) or not isinstance(seq, int):
            raise Refused("malformed", "header lacks sid/seq")
        last = self._last_seq.get(sid)
        if last is not None and seq <= last:
            raise Refused("replay", f"seq {seq} <= {last} from this sender")
        self._last_seq[sid] = seq
        return header, list(msg[3:])


# -- user payloads -------------------------------------------------------------------------
def dumps(obj: Any) -> list[Any]:
    """Pickle `obj` (cloudpickle, protocol 5); large buffers become frames of their own."""
    buffers: list[Any] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # in-band: small buffers are cheaper inside the pickle
        buffers.append(raw)
        return False

    return [cloudpickle.dumps(obj, protocol=5, buffer_callback=keep), *buffers]


def loads(frames: Sequence[Frame]) -> Any:
    """Unpickle what `dumps` made; out-of-band buffers are used in place, not copied."""
    if not frames:
        raise ValueError("no payload frames to unpickle")
    return pickle.loads(_buf(frames[0]), buffers=[_buf(f) for f in frames[1:]])
