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
- Payload frames (pickles and their out-of-band buffers) are covered by `pmac`, an HMAC over
  every payload frame (a frame of 512 KiB or more through the SHA-256 digests of its four
  chunks, hashed side by side on several cores: see `Wire.payload_mac`), carried in the header and so covered by the signature too. The sender of a
  payload computes `pmac` once; whoever unpickles it checks it. The controller routes payloads
  as opaque bytes and so never hashes them, except the one kind it unpickles (a callable
  `depend`).

A message with a bad or missing signature, a replayed `(sid, seq)`, a malformed header or an
oversize body raises `Refused`, which the receiver counts and drops: it is never acted on.
This module holds no sockets; `recv_message` reads one message from a socket it is given.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import operator
import os
import pickle
import sys
import threading
import types
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle
import msgpack
import zmq

from .defaults import MAX_MESSAGE_SIZE, OUT_OF_BAND_MIN, PLAIN_CONTAINER_MAX

PROTOCOL = b"TM2"
SIGNATURE_BYTES = 32
_HEADER_AT = len(PROTOCOL) + SIGNATURE_BYTES
DEFAULT_MAX_MESSAGE = MAX_MESSAGE_SIZE
# The controller refuses a message of more frames (before any HMAC or parse work), and
# `recv_message(max_frames=...)` keeps no frame past it. A client's batch of SUBMIT_BATCH tasks
# stays far below: a few frames per task, and out-of-band buffers of 64 KiB or more.
MAX_FRAMES = 1 << 17
SMALL_PAYLOAD = 16 * 1024  # a single payload frame below this is MACed in one call
MAX_SENDERS = 100_000  # senders whose last sequence number a Wire remembers (replay checks)

# Frames this large are MACed as the digests of TREE_LANES chunks, hashed side by side.
TREE_MIN = 512 * 1024
TREE_LANES = 4

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
    t = type(frame)  # a bytes' and a zmq.Frame's len() is its size; other buffers are asked
    if t is bytes or t is zmq.Frame:
        return len(frame)
    return memoryview(_buf(frame)).nbytes


_hash_pool: tuple[int, ThreadPoolExecutor | None, int] | None = None  # (pid, pool, lanes)
_hash_pool_lock = threading.Lock()


def _hashers() -> tuple[ThreadPoolExecutor | None, int]:
    """The threads that hash chunks beside the caller (none on one core) and how many lanes
    that makes with the caller; one set per process, made again in a forked child."""
    global _hash_pool
    pool = _hash_pool
    if pool is None or pool[0] != os.getpid():
        with _hash_pool_lock:
            if _hash_pool is None or _hash_pool[0] != os.getpid():
                n = min(TREE_LANES, os.cpu_count() or 1) - 1
                _hash_pool = (os.getpid(), ThreadPoolExecutor(n, "taskmill-hash") if n else None,
                              n + 1)
            pool = _hash_pool
    return pool[1], pool[2]


def _sha256_each(chunks: list[memoryview]) -> list[bytes]:
    return [hashlib.sha256(c).digest() for c in chunks]  # (hashlib lets go of the GIL)


def _chunk_digests(buf: Any) -> bytes:
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


class Wire:
    """Signs, checks, packs and unpacks messages for one process with one key."""

    def __init__(self, key: bytes, *, max_message: int = DEFAULT_MAX_MESSAGE,
                 max_frames: int | None = None) -> None:
        if not key:
            raise ValueError("a taskmill key must not be empty")
        self.key = key
        self._mac = HmacSha256(key)
        self.max_message = max_message
        self.max_frames = max_frames  # None: no limit (a message from the controller)
        self.sid = os.urandom(8)
        self._seq = itertools.count()
        # Each sender's last sequence number, at most `max_senders` of them (the longest silent
        # go first). A sender is a Wire of a key holder: nobody without the key can add one.
        self._last_seq: dict[bytes, int] = {}
        self.max_senders = MAX_SENDERS
        self.refused: Counter[str] = Counter()
        # One Packer per Wire (a Wire belongs to one socket, used by one thread at a time):
        # cheaper than msgpack.packb, which makes a Packer per call.
        self._pack = msgpack.Packer(use_bin_type=True).pack

    # -- signing ----------------------------------------------------------------------------
    def _sign(self, data: Any) -> bytes:
        return self._mac.digest(data)

    def payload_mac(self, frames: Sequence[Frame]) -> bytes:
        """HMAC over payload frames, each prefixed by its length so boundaries count too.

        A frame of TREE_MIN bytes or more enters the HMAC as the SHA-256 digests of its
        TREE_LANES equal chunks instead of as itself (its length, which comes first, says
        which), so that the chunks can be hashed on several cores at once."""
        if len(frames) == 1:
            b = _buf(frames[0])
            n = memoryview(b).nbytes
            if n < SMALL_PAYLOAD:  # one update over a small copy beats two
                return self._mac.digest(n.to_bytes(8, "little") + b)
        h = self._mac.start()
        for f in frames:
            b = _buf(f)
            n = memoryview(b).nbytes
            h.update(n.to_bytes(8, "little"))
            h.update(_chunk_digests(b) if n >= TREE_MIN else b)
        return self._mac.finish(h)

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
        return [self.seal(self._pack(header)), *frames]

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
        env = _buf(msg[0])
        if not isinstance(env, bytes):
            env = bytes(env)
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
        seen = self._last_seq
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


# ZeroMQ's own heartbeats on every connection: a connection whose peer vanished (a machine
# that went away, a network cut) is closed within TRANSPORT_TIMEOUT, so its routing identity is
# free again for the peer's next connection (ROUTERs refuse a second connection with an
# identity in use: see the controller).
TRANSPORT_HEARTBEAT_MS = 1000
TRANSPORT_TIMEOUT_MS = 5000


def apply_transport_heartbeat(sock: Any) -> None:
    """Turn on ZeroMQ's connection heartbeats (ZMTP PING/PONG, in ZeroMQ's I/O thread)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, TRANSPORT_HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, TRANSPORT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, TRANSPORT_TIMEOUT_MS)


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
    last = len(parts) - 1
    for i, part in enumerate(parts):
        copy = type(part) is bytes and len(part) < _COPY_BELOW
        _send(sock, part, _SNDMORE if i < last else 0, copy)


# -- user payloads -------------------------------------------------------------------------
# Values the standard pickler handles exactly as cloudpickle would (no functions, classes or
# objects that may live in __main__), so a result like None or a few numbers skips
# cloudpickle's per-object Python hooks.
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes})


def _is_plain(obj: Any) -> bool:
    t = type(obj)
    if t in _PLAIN:
        return True
    if t is tuple or t is list:
        return len(obj) <= PLAIN_CONTAINER_MAX and all(type(x) in _PLAIN for x in obj)
    if t is dict:
        return len(obj) <= PLAIN_CONTAINER_MAX and all(type(k) in _PLAIN and type(v) in _PLAIN
                                      for k, v in obj.items())
    return False


class _LargeBytes:
    """Stands in for a large bytes or bytearray while pickling: pickle never hands those to
    the buffer callback, and copying one into the pickle costs ~10x a memcpy."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Unpickled as bytes(buffer) / bytearray(buffer): one copy out of the received frame.
        return type(self.value), (pickle.PickleBuffer(self.value),)


def _swap_large(obj: Any) -> Any:
    """`obj` with a large bytes/bytearray (itself, or an item of a small tuple, list or dict)
    replaced by a _LargeBytes, or `obj` itself if it has none."""
    t = type(obj)
    if t is bytes or t is bytearray:
        return _swap_large_item(obj)
    if (t is tuple or t is list) and len(obj) <= PLAIN_CONTAINER_MAX:
        items = [_swap_large_item(x) for x in obj]
        if any(a is not b for a, b in zip(items, obj, strict=True)):
            return t(items)
    elif t is dict and len(obj) <= PLAIN_CONTAINER_MAX:
        values = {k: _swap_large_item(v) for k, v in obj.items()}
        if any(values[k] is not v for k, v in obj.items()):
            return values
    return obj


def _swap_large_item(x: Any) -> Any:
    t = type(x)
    if (t is bytes or t is bytearray) and len(x) >= OUT_OF_BAND_MIN:
        return _LargeBytes(x)
    return x


def dumps(obj: Any) -> list[Any]:
    """Pickle `obj` (cloudpickle, protocol 5); large buffers become frames of their own."""
    swapped = _swap_large(obj)
    if swapped is not obj:
        return _dumps_buffers(swapped)
    if _is_plain(obj):
        return [pickle.dumps(obj, protocol=5)]
    return _dumps_buffers(obj)


def _dumps_buffers(obj: Any) -> list[Any]:
    buffers: list[Any] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # in-band: small buffers are cheaper inside the pickle
        buffers.append(raw)
        return False

    with io.BytesIO() as file:
        _Pickler(file, protocol=5, buffer_callback=keep).dump(obj)
        return [file.getvalue(), *buffers]


def dumps_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """Pickle a call's `(args, kwargs)`, with the plain-data fast path for each."""
    swapped_args, swapped_kwargs = _swap_large(args), _swap_large(kwargs)
    if swapped_args is not args or swapped_kwargs is not kwargs:
        return _dumps_buffers((swapped_args, swapped_kwargs))
    if _is_plain(args) and _is_plain(kwargs):
        return [pickle.dumps((args, kwargs), protocol=5)]
    return _dumps_buffers((args, kwargs))


def loads(frames: Sequence[Frame], namespace: dict[str, Any] | None = None) -> Any:
    """Unpickle what `dumps` made; out-of-band buffers are used in place, not copied.

    With a `namespace` (an engine's), the functions defined interactively that the payload
    holds are rebuilt over it, and the globals they bring are set in it (see `load_into`)."""
    if namespace is not None:
        return load_into(frames, namespace)[0]
    if not frames:
        raise ValueError("no payload frames to unpickle")
    return pickle.loads(_buf(frames[0]), buffers=[_buf(f) for f in frames[1:]])


# -- functions defined interactively, and modules beside the client's script ---------------------
# cloudpickle pickles a function defined in `__main__` (a script, a notebook, a console) by
# value, with a fresh globals dict holding the globals its code names that exist where it was
# pickled. taskmill pickles such a function with the same state but two other callables, so
# that an engine rebuilds it over its own namespace (as the seed did, and ipyparallel's
# `@interactive`): the function sees what earlier tasks set there, its `global` statements
# write there, and the globals it brought are set there first. Without an engine namespace
# (a client unpickling a result, the controller a `depend`) it is cloudpickle's function.

try:
    from cloudpickle.cloudpickle import _function_setstate as _cp_function_setstate
    from cloudpickle.cloudpickle import _make_function as _cp_make_function
except ImportError:  # pragma: no cover - another cloudpickle: no interactive functions
    _cp_function_setstate = _cp_make_function = None

_into = threading.local()  # .target: (namespace, [globals set]) while `load_into` runs


def _make_interactive(code: types.CodeType, base_globals: dict[str, Any], name: Any,
                      argdefs: Any, closure: Any) -> types.FunctionType:
    """Unpickling: the function skeleton, over the engine's namespace if there is one."""
    target = getattr(_into, "target", None)
    if target is None:
        return _cp_make_function(code, base_globals, name, argdefs, closure)
    return types.FunctionType(code, target[0], name, argdefs, closure)


def _interactive_setstate(func: types.FunctionType, state: tuple[dict[str, Any], dict[str, Any]]
                          ) -> None:
    """Unpickling: the rest of the function (as cloudpickle's `_function_setstate`), its
    globals set in the engine's namespace rather than in a dict of its own."""
    target = getattr(_into, "target", None)
    if target is None or func.__globals__ is not target[0]:
        _cp_function_setstate(func, state)
        return
    attributes, slots = state
    func.__dict__.update(attributes)
    shipped = slots.pop("__globals__")
    closure = slots.pop("__closure__")
    slots.pop("_cloudpickle_submodules", None)  # (imported already, by being unpickled)
    if shipped:
        target[0].update(shipped)
        target[1].append(shipped)
    if closure is not None:
        for cell, value in zip(func.__closure__ or (), closure, strict=False):
            try:
                cell.cell_contents = value.cell_contents
            except ValueError:  # an empty cell stays empty
                pass
    for key, value in slots.items():
        setattr(func, key, value)


def load_into(frames: Sequence[Frame], namespace: dict[str, Any]
              ) -> tuple[Any, list[dict[str, Any]]]:
    """Unpickle `frames` on an engine whose namespace is `namespace`: every function defined
    interactively in the payload (the task's function, one among its arguments as `map`
    sends them, a helper it calls, a method, a lambda in a partial...) gets `namespace` as
    its globals, and the globals that came with it are set there, in the order they are
    unpickled (a helper's before the function that names it). Returns the object and those
    globals dicts, which a cached function sets again before each later run."""
    applied: list[dict[str, Any]] = []
    previous = getattr(_into, "target", None)
    _into.target = (namespace, applied)
    try:
        if not frames:
            raise ValueError("no payload frames to unpickle")
        value = pickle.loads(_buf(frames[0]), buffers=[_buf(f) for f in frames[1:]])
    finally:
        _into.target = previous
    return value, applied


# Modules that live beside the client's script or in its working folder and are not
# installed: the engines cannot import them, so a client pickles them by value (cloudpickle's
# `register_pickle_by_value`), deciding once per module, when it first pickles something of it.
_local_modules = False
_module_checked: dict[str, bool] = {}
_installed_names: set[str] | None = None


def ship_local_modules(on: bool = True) -> None:
    """Pickle local modules by value from now on in this process (a client turns it on;
    engines do not, so that what they return travels by name as before)."""
    global _local_modules
    _local_modules = on


def _note_module(name: Any) -> None:
    """Register module `name` to be pickled by value if it is local (see `is_local_module`)."""
    if not _local_modules or type(name) is not str or name in _module_checked:
        return
    local = is_local_module(name)
    if local:
        cloudpickle.register_pickle_by_value(sys.modules[name])
    _module_checked[name] = local  # (after registering: another thread may be pickling)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


_libraries: list[str] | None = None


def _library_folders() -> list[str]:
    """The standard library's and site-packages' folders (of this venv and its base)."""
    global _libraries
    if _libraries is not None:
        return _libraries
    import site
    import sysconfig

    folders = set()
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        paths = sysconfig.get_paths(vars=scheme_vars or None)
        folders.update(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")
                       if k in paths)
    try:
        folders.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - an old virtualenv's site module
        pass
    if site.ENABLE_USER_SITE:
        folders.add(site.getusersitepackages())
    _libraries = [os.path.realpath(f) for f in folders if f]
    return _libraries


def _installed(top: str) -> bool:
    """Whether an installed distribution provides the top-level import name `top`."""
    global _installed_names
    if _installed_names is None:
        import importlib.metadata

        try:
            _installed_names = set(importlib.metadata.packages_distributions())
        except Exception:  # noqa: BLE001 - broken metadata: assume nothing is installed
            _installed_names = set()
    return top in _installed_names


def is_local_module(name: str) -> bool:
    """Whether the module `name` (imported here) is one the engines cannot import: its file
    lies in the folder of this process's script (`sys.argv[0]`'s) or in its working folder,
    not in the standard library or site-packages, and no installed distribution provides it.
    Never taskmill itself, `__main__` (pickled by value anyway) or a built-in module."""
    top = name.partition(".")[0]
    if top in ("__main__", "__mp_main__", "taskmill") or top in sys.stdlib_module_names:
        return False
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return False
    try:
        cwd = os.getcwd()
    except OSError:  # (the working folder was removed)
        cwd = None
    roots = [os.path.realpath(cwd)] if cwd else []
    if _SCRIPT_FOLDER is not None:
        roots.append(_SCRIPT_FOLDER)
    path = os.path.realpath(file)
    if not any(_inside(path, root) for root in roots):
        return False
    if any(_inside(path, lib) for lib in _library_folders()):
        return False
    return not _installed(top)


def _script_folder() -> str | None:
    """The folder of the script this process runs (`python script.py`: the folder Python put
    first on sys.path), as it was when taskmill was imported; None for `-c`, a console, or a
    program started from the standard library or site-packages (pytest, a Jupyter kernel).
    (Not sys.path[0] now: a program or a test runner may have put another folder there.)"""
    argv = getattr(sys, "argv", None) or [""]
    if not isinstance(argv[0], str) or not os.path.isfile(argv[0]):
        return None
    return os.path.dirname(os.path.realpath(argv[0]))


_SCRIPT_FOLDER = _script_folder()


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's Pickler, but a function defined in `__main__` is rebuilt on an engine over
    the engine's namespace (see `load_into`), and, in a client, a local module's functions and
    classes travel by value (see `ship_local_modules`)."""

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is types.FunctionType:
            module = obj.__module__
            if _local_modules:
                _note_module(module)
            reduced = super().reducer_override(obj)
            if (module == "__main__" and type(reduced) is tuple and len(reduced) == 6
                    and reduced[0] is _cp_make_function
                    and reduced[5] is _cp_function_setstate):
                return (_make_interactive, *reduced[1:5], _interactive_setstate)
            return reduced
        if _local_modules:
            if t is types.ModuleType:
                _note_module(obj.__name__)
            elif isinstance(obj, type):
                _note_module(getattr(obj, "__module__", None))
        return super().reducer_override(obj)


# -- functions, pickled once -------------------------------------------------------------------
FUNCTION_CACHE_SIZE = 128
FUNCTION_CACHE_MAX_BYTES = 64 * 1024
# Objects of these exact types cannot change: the same object always pickles the same.
_SCALARS = _PLAIN | {type(Ellipsis), type(NotImplemented), types.CodeType}
_NESTING = 4  # deeper than this, tuples and functions are not looked into (not cached)

try:  # the very test cloudpickle uses to choose between by reference and by value
    from cloudpickle.cloudpickle import _should_pickle_by_reference
except ImportError:  # pragma: no cover - another cloudpickle: then nothing is cached
    _should_pickle_by_reference = None


def _by_reference(obj: Any) -> bool:
    """Whether cloudpickle pickles `obj` (a function, class or module) as a name to import,
    so that what the client does to the object itself never travels."""
    if _should_pickle_by_reference is None:
        return False
    if _local_modules:  # (decided before the pickle is made, which may then ship it by value)
        _note_module(obj.__name__ if type(obj) is types.ModuleType
                     else getattr(obj, "__module__", None))
    try:
        return bool(_should_pickle_by_reference(obj))
    except Exception:  # noqa: BLE001 - unsure: pickled every time
        return False


def _frozen(value: Any, depth: int = 0) -> bool:
    """Whether `value` is immutable all the way down: a str, number, bytes, None, code, or a
    tuple/frozenset of those (exact types: a subclass may carry a mutable __dict__)."""
    t = type(value)
    if t in _SCALARS:
        return True
    if (t is tuple or t is frozenset) and depth < _NESTING:
        return all(_frozen(x, depth + 1) for x in value)
    return False


class _Mutable(Exception):
    """Something a pickle of the function is made of could change in place."""


def _function_state(func: Any) -> tuple[Any, ...] | None:
    """The objects a pickle of `func` is made of, or None if one of them could change without
    becoming another object (then the function must be pickled every time).

    The pickle is made of these objects alone (what cloudpickle reads; see its
    `_function_getstate` and `_function_getnewargs`), and each of them either cannot change or
    travels as a name, so the same objects (compared by identity) make the same pickle:
    - a function, class or module that cloudpickle pickles by reference: a name the engine
      imports, so what this process does to the object never travels. Not a package, though
      (a module whose `__package__` is set): cloudpickle sends along the submodules of a
      package that are in `sys.modules` at the time, so a function naming one is not cached;
    - a builtin function whose `__self__` is such a module (not a method bound to an object);
    - a frozen value (see `_frozen`);
    - a function pickled by value (defined in __main__, a notebook, a module registered by
      value): itself, its code, name, qualname, module, doc, defaults, keyword defaults and
      annotations (the dicts item by item), the base globals cloudpickle sends (`__name__`,
      `__package__`, `__path__`, `__file__`), and the values of its closure cells and of every
      global its code (or code nested in it) may name, each of them qualifying in turn. Its
      `__dict__` must be empty.
    Nothing else qualifies: not a class pickled by value (defined in __main__: its attributes
    can be set, `Params.alpha = 10`), a module registered by value, a list, dict, set, array,
    an instance of any class, a bound method.
    """
    state: list[Any] = []
    try:
        _add(func, state, set(), 0)
    except _Mutable:
        return None
    return tuple(state)


def _add(value: Any, state: list[Any], seen: set[int], depth: int) -> None:
    state.append(value)
    t = type(value)
    if t in _SCALARS:
        return
    if t is types.FunctionType:
        if id(value) in seen or _by_reference(value):
            return
        seen.add(id(value))
        _add_function(value, state, seen, depth)
    elif t is types.BuiltinFunctionType:
        owner = value.__self__
        if not (owner is None or (type(owner) is types.ModuleType and _module_ok(owner))):
            raise _Mutable
    elif t is types.ModuleType:
        if not _module_ok(value):
            raise _Mutable
    elif isinstance(value, type):
        if not _by_reference(value):
            raise _Mutable
    elif not _frozen(value):
        raise _Mutable


def _module_ok(module: types.ModuleType) -> bool:
    return not getattr(module, "__package__", None) and _by_reference(module)


def _add_function(func: types.FunctionType, state: list[Any], seen: set[int],
                  depth: int) -> None:
    if depth >= _NESTING or func.__dict__ or getattr(func, "__type_params__", None):
        raise _Mutable
    code, module, doc, defaults = func.__code__, func.__module__, func.__doc__, func.__defaults__
    if type(module) not in _SCALARS or type(doc) not in _SCALARS:
        raise _Mutable
    state += (code, func.__name__, func.__qualname__, module, doc, defaults)
    if defaults:  # (a tuple: assigning new defaults makes another one)
        for value in defaults:
            _add(value, state, seen, depth + 1)
    for mapping in (func.__kwdefaults__, func.__annotations__):
        state.append(mapping)  # (None, or a dict: the same one, with the same items)
        if mapping:
            state.append(len(mapping))
            for key, value in mapping.items():
                state.append(key)
                _add(value, state, seen, depth + 1)
    g = func.__globals__
    missing = _MISSING
    for name in _BASE_GLOBALS:
        value = g.get(name, missing)
        state.append(value)
        if value is not missing and type(value) not in _SCALARS and not _frozen(value):
            raise _Mutable
    for cell in func.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = missing
        if value is missing or type(value) in _SCALARS:
            state.append(value)
        else:
            _add(value, state, seen, depth + 1)
    for name in _code_names(code):
        value = g.get(name, missing)
        if value is missing or type(value) in _SCALARS:
            state.append(value)
        else:
            _add(value, state, seen, depth + 1)


_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")
_MISSING = object()
_NAMES: dict[types.CodeType, tuple[str, ...]] = {}


def _code_names(code: types.CodeType) -> tuple[str, ...]:
    """Every name the code (and code nested in it) may look up, a superset of its globals."""
    names = _NAMES.get(code)
    if names is None:
        found = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.update(_code_names(const))
        names = _NAMES[code] = tuple(sorted(found))
        if len(_NAMES) > 4096:
            _NAMES.clear()
    return names


class FunctionPickles:
    """A client's cache of function pickles: a function sent again unchanged is not pickled
    again (cloudpickle takes ~30 us for a function defined in __main__). A pickle is reused
    only while every object it was made of is the same object and immutable (see
    _function_state); anything else is pickled every time."""

    def __init__(self, size: int = FUNCTION_CACHE_SIZE) -> None:
        self.size = size
        self._cache: OrderedDict[int, tuple[tuple[Any, ...], list[Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def dumps(self, func: Any) -> list[Any]:
        t = type(func)
        if t is not types.FunctionType and t is not types.BuiltinFunctionType:
            return dumps(func)
        state = _function_state(func)
        if state is None:
            return dumps(func)
        with self._lock:
            hit = self._cache.get(id(func))
            if hit is not None and len(hit[0]) == len(state) and all(
                    map(operator.is_, hit[0], state)):
                self._cache.move_to_end(id(func))
                return hit[1]
        frames = dumps(func)
        if len(frames) == 1 and len(frames[0]) <= FUNCTION_CACHE_MAX_BYTES:
            with self._lock:
                self._cache[id(func)] = (state, frames)  # state[0] is func: its id stays its own
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        return frames


class FunctionLoads:
    """An engine's cache of unpickled functions, by their pickle's bytes (checked already).

    With a `namespace` (the engine's; `_reset` clears it in place, so it stays the same dict),
    functions defined interactively are rebuilt over it (see `load_into`), and a cached one
    sets the globals it brought in it again before each run: a task that cleared the namespace
    (`clear_before`) or changed one of those names still runs with the client's values.
    A function is kept only if what it is made of cannot change in place (the client cache's
    rule, `_function_state`): a list, dict, instance, class defined in a script... in its
    globals, defaults or closure is unpickled afresh for every task, as the client sent it,
    never as an earlier task on this engine left it."""

    def __init__(self, size: int = FUNCTION_CACHE_SIZE,
                 namespace: dict[str, Any] | None = None) -> None:
        self.size = size
        self.namespace = namespace
        # bytes -> (function, globals dicts to set before each run), or _FRESH: load each time
        self._cache: OrderedDict[bytes, Any] = OrderedDict()

    def _load(self, frames: Sequence[Frame]) -> tuple[Any, list[dict[str, Any]]]:
        if self.namespace is None:
            return loads(frames), []
        return load_into(frames, self.namespace)

    def loads(self, frames: Sequence[Frame]) -> Any:
        if len(frames) != 1:
            return self._load(frames)[0]
        key = bytes(_buf(frames[0]))
        if len(key) > FUNCTION_CACHE_MAX_BYTES:
            return self._load(frames)[0]
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            if hit is _FRESH:
                return self._load(frames)[0]
            func, applied = hit
            for shipped in applied:
                self.namespace.update(shipped)  # type: ignore[union-attr]
            return func
        func, applied = self._load(frames)
        self._cache[key] = (func, applied) if _function_state(func) is not None else _FRESH
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return func


_FRESH = object()  # a FunctionLoads entry: this pickle is unpickled for every task
