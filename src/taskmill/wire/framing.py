"""Framing: the envelope of every message, its checks, and moving whole messages on sockets.

A message is `[envelope, *payload]`, envelope = PROTOCOL + signature + header (see the package
docstring). `Wire.encode` numbers and signs a header; `Wire.decode` checks a received message
(size, frame count, protocol, signature, msgpack header, replay) and raises `Refused`, counted in
`Wire.refused`, for anything that must not be acted on. `Wire.payload_mac`/`check_payload` cover
the payload frames (with signing.py's HMAC). A `Spliced` header carries `Packed` values, lists
packed already (a client's task specs, packed once when the task was made): `encode` splices
their bytes in as an array, the same bytes packing them again would give. `recv_message`/`send_message` move one whole message
through a ZeroMQ socket the caller owns; this module holds no sockets.
"""

from __future__ import annotations

import hmac
import itertools
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import msgspec
import zmq

from ..defaults import (
    ENGINE_LINK_KEEPALIVE_IDLE,
    ENGINE_LINK_KEEPALIVE_INTERVAL,
    ENGINE_LINK_KEEPALIVE_PROBES,
    ENGINE_LINK_USER_TIMEOUT_MS,
    MAX_MESSAGE_SIZE,
)
from .signing import HmacSha256, PayloadMac

PROTOCOL = b"TM2"
SIGNATURE_BYTES = 32
_HEADER_AT = len(PROTOCOL) + SIGNATURE_BYTES
DEFAULT_MAX_MESSAGE = MAX_MESSAGE_SIZE
# The controller refuses a message of more frames (before any HMAC or parse work), and
# `recv_message(max_frames=...)` keeps no frame past it. A client's batch of SUBMIT_BATCH tasks
# stays far below: a few frames per task, and out-of-band buffers of 64 KiB or more.
MAX_FRAMES = 1 << 17
MAX_SENDERS = 100_000  # senders whose last sequence number a Wire remembers (replay checks)

Frame = Any  # bytes, memoryview, or zmq.Frame


# msgspec's msgpack encoder gives the bytes msgpack's Packer(use_bin_type=True) gives for plain
# values (None, bool, int, float, str, bytes, lists, tuples, dicts) in a third of the time (a
# `done` message: 0.78 -> 0.26 µs a result), but also encodes what the Packer refuses (sets,
# datetimes, ...) and raises RecursionError, not ValueError, past its depth: for headers built
# of plain values only (the controller's).
HEADER_ENCODER: Callable[[Any], bytes] = msgspec.msgpack.Encoder().encode


class Packed(list):
    """Items packed already (msgpack bytes each): an array in a `Spliced` header, spliced in
    by `Wire.encode` without packing them again."""


class Spliced(dict):
    """A header whose `Packed` values `Wire.encode` splices in (see there); any other header
    is a plain dict."""


class Refused(Exception):
    """A message that must not be acted on; `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def frame_buffer(frame: Frame) -> Any:
    """A buffer view of a frame without copying (zmq.Frame exposes `.buffer`)."""
    return getattr(frame, "buffer", frame)


def frame_len(frame: Frame) -> int:
    t = type(frame)  # a bytes' and a zmq.Frame's len() is its size; other buffers are asked
    if t is bytes or t is zmq.Frame:
        return len(frame)
    return memoryview(frame_buffer(frame)).nbytes


class Wire:
    """Signs, checks, packs and unpacks messages for one process with one key."""

    def __init__(self, key: bytes, *, max_message: int = DEFAULT_MAX_MESSAGE,
                 max_frames: int | None = None,
                 encoder: Callable[[Any], bytes] | None = None) -> None:
        """`encoder`: packs a plain header (default: this Wire's msgpack Packer); the
        controller's is msgspec's encoder (HEADER_ENCODER)."""
        if not key:
            raise ValueError("a taskmill key must not be empty")
        self.encoder = encoder
        self._mac = HmacSha256(key)
        self._sign = self._mac.digest  # (bound once: one call a message less)
        self._pmac = PayloadMac(key)
        self.max_message = max_message
        self.max_frames = max_frames  # None: no limit (a message from the controller)
        self.sid = os.urandom(8)
        self._seq = itertools.count()
        # Each sender's last sequence number, at most `max_senders` of them (the longest silent
        # go first). A sender is a Wire of a key holder: nobody without the key can add one.
        self.last_seq: dict[bytes, int] = {}
        self.max_senders = MAX_SENDERS
        self.refused: Counter[str] = Counter()
        # One Packer per Wire (a Wire belongs to one socket, used by one thread at a time):
        # cheaper than msgpack.packb, which makes a Packer per call.
        self._packer = msgpack.Packer(use_bin_type=True)
        self._pack = self._packer.pack
        self.splice_mark = os.urandom(16)  # stands for a Packed value in `_spliced`
        self._packed_splice_mark = self._pack(self.splice_mark)

    # -- signing ----------------------------------------------------------------------------
    def payload_mac(self, frames: Sequence[Frame]) -> bytes:
        """The MAC of payload frames: keyed BLAKE3 over each frame, prefixed by its length
        (signing.PayloadMac)."""
        buffers, sizes = [], []
        for f in frames:  # (one loop, no calls for bytes: paid per task, twice)
            b = f if type(f) is bytes else frame_buffer(f)
            buffers.append(b)
            sizes.append(len(b) if type(b) is bytes else memoryview(b).nbytes)
        return self._pmac.digest(buffers, sizes)

    def check_payload(self, frames: Sequence[Frame], pmac: bytes | None) -> None:
        """Raise Refused unless `frames` carry the MAC their sender computed."""
        if not isinstance(pmac, bytes) or not hmac.compare_digest(self.payload_mac(frames), pmac):
            raise Refused("bad-payload-signature", "payload frames do not match their MAC")

    # -- messages ---------------------------------------------------------------------------
    def encode(self, header: dict[str, Any], frames: Sequence[Frame] = ()) -> list[Frame]:
        """The frames of a signed message (without routing ids). `sid` and `seq` in `header`
        are this Wire's (set here, overwriting any): never use those names for anything else."""
        header["sid"] = self.sid
        header["seq"] = next(self._seq)
        if type(header) is Spliced:
            return [self.seal(self._spliced(header)), *frames]
        return [self.seal((self.encoder or self._pack)(header)), *frames]

    def _spliced(self, header: Spliced) -> bytes:
        """The packed header, each `Packed` value's bytes spliced in as an array: the bytes
        `_pack` would give for the items themselves (same packer, same options).

        The header is packed whole (in C: a lone submit's header has ~8 keys) with this Wire's
        random mark standing for each `Packed` value, then cut at the marks; a header whose
        other values happen to hold the mark's bytes is packed key by key instead."""
        plain = dict(header)
        types = list(map(type, header.values()))
        if types.count(Packed) == 1:  # (a submit's: found by C loops)
            key = list(header)[types.index(Packed)]
            splices = [header[key]]
            plain[key] = self.splice_mark
        else:
            splices = []
            for key, value in header.items():
                if type(value) is Packed:
                    plain[key] = self.splice_mark
                    splices.append(value)
        pieces = self._pack(plain).split(self._packed_splice_mark)
        if len(pieces) != len(splices) + 1:
            return self._spliced_by_key(header)
        parts = [pieces[0]]
        for value, piece in zip(splices, pieces[1:], strict=True):
            parts.append(self._packer.pack_array_header(len(value)))
            parts.extend(value)
            parts.append(piece)
        return b"".join(parts)

    def _spliced_by_key(self, header: Spliced) -> bytes:
        packer = self._packer
        parts = [packer.pack_map_header(len(header))]
        for key, value in header.items():
            parts.append(packer.pack(key))
            if type(value) is Packed:
                parts.append(packer.pack_array_header(len(value)))
                parts.extend(value)
            else:
                parts.append(packer.pack(value))
        return b"".join(parts)

    def seal(self, header_bytes: bytes) -> bytes:
        """The envelope frame for already packed header bytes."""
        return PROTOCOL + self._sign(header_bytes) + header_bytes

    def decode(self, msg: Sequence[Frame]) -> tuple[dict[str, Any], list[Frame]]:
        """Check and unpack a message (without routing ids); raise Refused if it is bad."""
        try:
            return self._decode(msg)
        except Refused as e:
            self.refused[e.reason] += 1
            raise

    def _decode(self, msg: Sequence[Frame]) -> tuple[dict[str, Any], list[Frame]]:
        if not msg:
            raise Refused("malformed", "an empty message")
        if self.max_frames is not None and len(msg) > self.max_frames:
            raise Refused("too-many-frames", f"more than {self.max_frames} frames")
        env = msg[0]
        if type(env) is not bytes:
            env = bytes(frame_buffer(env))
        if len(env) <= _HEADER_AT or env[:len(PROTOCOL)] != PROTOCOL:
            raise Refused("malformed", "not a taskmill message (bad protocol frame)")
        total = len(env)
        for f in msg[1:]:
            total += frame_len(f)
        if total > self.max_message:
            raise Refused("too-large", f"{total} bytes > limit {self.max_message}")
        hb = memoryview(env)[_HEADER_AT:]
        if not hmac.compare_digest(self._sign(hb), env[len(PROTOCOL):_HEADER_AT]):
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
        seen = self.last_seq
        last = seen.pop(sid, None)  # (popped and put back: the table stays in recency order)
        if last is not None and seq <= last:
            seen[sid] = last
            raise Refused("replay", f"seq {seq} <= {last} from this sender")
        seen[sid] = seq
        if len(seen) > self.max_senders:
            del seen[next(iter(seen))]  # the sender silent for longest
        return header, list(msg[1:])


# pyzmq's Socket methods add Python-level conveniences (enum flags, sockopt lookups) that
# cost more than the send or receive itself on small messages: call the backend's directly.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_SNDMORE = int(zmq.SNDMORE)
_COPY_BELOW = 64 * 1024  # frames smaller than this are copied into ZeroMQ (cheaper); larger not


# ZeroMQ's own heartbeats (ZMTP PING/PONG) on the client links: a connection whose peer vanished
# or that went deaf (a network cut, a host gone, a proxy or tunnel that swallows what it is
# given) is closed within TRANSPORT_TIMEOUT, and the client connects anew under new routing ids
# (client/links.py). libzmq resets a heartbeat timeout only when a whole frame (or command) is
# decoded, so a socket that times out while it *receives* a frame taking longer than that to
# cross its link drops the connection mid-frame, and the same frame is sent again for ever. So
# only the client's send socket times out: it receives nothing large (submits and puts leave
# by it), and while it sends a large frame the controller's PINGs keep coming the other way.
# The client's receive socket (results) and the controller's client socket (submits) send PINGs
# and answer the peer's, but never time out, and the PINGs carry no TTL (a TTL would start the
# same clock on the receiving side). Every socket of a client link also has the kernel's TCP
# keepalive and user timeout, as engine links do (`apply_engine_link`): a vanished client's
# connections are closed on the controller's side too, and its routing ids freed.
TRANSPORT_HEARTBEAT_MS = 1000
TRANSPORT_TIMEOUT_MS = 5000


def apply_tcp_keepalive(sock: Any) -> None:
    """The kernel's TCP keepalive and user timeout (defaults.ENGINE_LINK_*; no effect on
    ipc://): a connection to a vanished host is closed, idle or with data on its way, at no
    userspace cost; acknowledged progress, however slow, never trips it."""
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, ENGINE_LINK_KEEPALIVE_IDLE)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, ENGINE_LINK_KEEPALIVE_INTERVAL)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, ENGINE_LINK_KEEPALIVE_PROBES)
    sock.setsockopt(zmq.TCP_MAXRT, ENGINE_LINK_USER_TIMEOUT_MS)


def apply_client_link(sock: Any, *, times_out: bool = False) -> None:
    """A client link (the controller's client socket, a client's two sockets): ZeroMQ's
    heartbeats every TRANSPORT_HEARTBEAT_MS, no TTL, and the kernel's TCP keepalive
    (`apply_tcp_keepalive`). `times_out` (the client's send socket only): a connection from
    which nothing arrives within TRANSPORT_TIMEOUT_MS of a PING is closed. The others never
    time out, so a frame they receive may take any time to cross its link (see above)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, TRANSPORT_HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, TRANSPORT_TIMEOUT_MS if times_out else 0)
    sock.setsockopt(zmq.HEARTBEAT_TTL, 0)
    apply_tcp_keepalive(sock)


def apply_engine_link(sock: Any) -> None:
    """An engine link (the controller's engine-facing socket, an engine's sockets): no ZMTP
    heartbeats, which would cost ZeroMQ's I/O thread a PING and a PONG per connection and
    interval (4 connections per engine); the kernel's TCP keepalive and user timeout close a
    connection to a vanished host instead (`apply_tcp_keepalive`). Our own heartbeats find the
    rest: a silent engine is declared dead by the controller, and an engine whose controller
    stops answering opens new connections (engine/channels.py)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, 0)
    apply_tcp_keepalive(sock)


MONITORS = itertools.count()  # (each monitor's inproc address is this process's own)


def monitor_socket(sock: Any, events: int) -> Any:
    """A PAIR socket that reports `events` of `sock` (ZeroMQ's socket monitor) on an inproc
    address of its own. (pyzmq's default address names the socket's file descriptor, which a
    socket opened as another closes may get again before the old monitor's address is free.)"""
    return sock.get_monitor_socket(events, f"inproc://taskmill-monitor-{os.getpid()}-"
                                           f"{next(MONITORS)}")


def recv_message(sock: Any, flags: int = 0, *, routed: bool = False,
                 max_frames: int | None = None) -> list[Frame]:
    """One whole message from a ZeroMQ socket: the routing id (if `routed`) and the envelope
    as bytes, payload frames as zero-copy `zmq.Frame`s. Raises zmq.Again like `recv`.
    Past `max_frames` frames (routing id aside) the rest are read and dropped, one more kept
    so that `Wire(max_frames=...)` refuses the message."""
    frame = _recv(sock, int(flags), False)
    parts: list[Frame] = [frame.bytes]
    if routed and frame.more:
        frame = _recv(sock, 0, False)
        parts.append(frame.bytes)
    keep = len(parts) + max_frames if max_frames is not None else -1
    while frame.more:
        frame = _recv(sock, 0, False)
        if len(parts) != keep:
            parts.append(frame)
    return parts


def send_message(sock: Any, parts: Sequence[Frame]) -> None:
    """Send a whole message; small frames are copied, large ones and zmq.Frames are not."""
    if not parts:
        return
    last = parts[-1]
    for part in parts[:-1]:  # (no per-frame index: a flood's messages carry ~3 frames a task)
        _send(sock, part, _SNDMORE, type(part) is bytes and len(part) < _COPY_BELOW)
    _send(sock, last, 0, type(last) is bytes and len(last) < _COPY_BELOW)

