"""The message format every taskmill process speaks.

A message is a ZeroMQ multipart message:

    [envelope, *payload]        envelope = PROTOCOL + signature + header

- `header` is a small msgpack map. It always holds `type`, the sender's `sid` (random per
  `Wire`) and `seq` (rising by one per message of that `Wire`). Each socket has a `Wire` of its
  own: a socket's messages reach a peer socket in order, so a receiving socket refuses any
  `(sid, seq)` at or below the last it saw from that `sid` (replays). It remembers the
  MAX_SENDERS senders heard from most recently. What survives a restart of the controller is
  refused by the controller itself: every message names the controller session it is for.
- `signature` (32 bytes) is HMAC-SHA256, with the connection file's key, over the header bytes.
  Protocol, signature and header share one frame: every frame costs a ZeroMQ send and receive
  of its own, and a message that carries no payload is then a single frame.
- Payload frames (pickles and their out-of-band buffers) are covered by `pmac`, a keyed
  BLAKE3 digest over every payload frame, each prefixed by its length (the `blake3` package
  hashes a large frame on several cores: see `Wire.payload_mac`), carried in the header
  and so covered by the signature too. The sender of a payload computes `pmac` once; whoever
  unpickles it checks it. The controller routes payloads as opaque bytes and so never hashes
  them, except the one kind it unpickles (a callable `depend`).

A message with a bad or missing signature, a replayed `(sid, seq)`, a malformed header or an
oversize body raises `Refused`, which the receiver counts and drops: it is never acted on.
This package holds no sockets; `recv_message` reads one message from a socket it is given.

What lives where:
- framing.py: `Wire` (encode, decode, payload MACs, replay table; a `Spliced` header's `Packed`
  values spliced in unpacked again), `Refused`, `frame_len`, `recv_message`/`send_message`,
  the transport settings of client links (TCP keepalive; ZeroMQ's heartbeats on the client's
  send socket) and of engine links (TCP keepalive);
- signing.py: HMAC-SHA256 with the key's pads hashed once; large frames' chunk digests;
- pickles.py: user payloads (`dumps`, `dumps_arguments`, `loads`, `load_into`), functions defined
  interactively rebuilt over an engine's namespace;
- local_modules.py: modules beside the client's script, pickled by value (`ship_local_modules`);
- functions.py: function pickles cached by the client (`FunctionPickles`) and functions by the
  engine (`FunctionLoads`);
- cloudpickle_internals.py: the few private functions of cloudpickle this relies on.
"""

from __future__ import annotations

from .framing import (
    DEFAULT_MAX_MESSAGE,
    HEADER_ENCODER,
    MAX_FRAMES,
    MAX_SENDERS,
    PROTOCOL,
    SIGNATURE_BYTES,
    TRANSPORT_HEARTBEAT_MS,
    TRANSPORT_TIMEOUT_MS,
    Frame,
    Packed,
    Refused,
    Spliced,
    Wire,
    apply_client_link,
    apply_engine_link,
    frame_buffer,
    frame_len,
    monitor_socket,
    recv_message,
    send_message,
)
from .functions import (
    FUNCTION_CACHE_MAX_BYTES,
    FUNCTION_CACHE_SIZE,
    FunctionLoads,
    FunctionPickles,
    function_state,
)
from .local_modules import is_local_module, ship_local_modules, ship_module
from .pickles import PLAIN_TYPES, dumps, dumps_arguments, load_into, loads
from .signing import PARALLEL_MIN, HmacSha256, PayloadMac

__all__ = [
    "DEFAULT_MAX_MESSAGE", "FUNCTION_CACHE_MAX_BYTES", "FUNCTION_CACHE_SIZE", "MAX_FRAMES",
    "HEADER_ENCODER", "MAX_SENDERS", "PLAIN_TYPES", "PROTOCOL", "SIGNATURE_BYTES", "PARALLEL_MIN",
    "PayloadMac",
    "TRANSPORT_HEARTBEAT_MS", "TRANSPORT_TIMEOUT_MS", "Frame", "FunctionLoads",
    "FunctionPickles", "HmacSha256", "Packed", "Refused", "Spliced", "Wire", "apply_engine_link",
    "apply_client_link",
    "dumps", "dumps_arguments", "frame_buffer", "frame_len", "function_state",
    "is_local_module", "load_into", "loads", "monitor_socket", "recv_message", "send_message",
    "ship_local_modules", "ship_module",
]
