"""A TCP proxy between engines (or clients) and a controller that can break connections.

Engines connect to the proxy's port; each connection is forwarded to the controller. Faults:
- `reset_all()`: every connection is reset (RST), as a network blip or a NAT that forgot them;
- `cut_peer_side_all(suffixes)`: every connection (or those whose peer's routing id ends with
  one of `suffixes`, e.g. b".c" for engines' control sockets) is reset on the peer's side only; the controller's side stays open and
  silent (a NAT or firewall that forgot the connection and told only one side), so the peer's
  reconnection arrives while the controller still holds its old one;
- `drop_next(min_bytes, marker, contains, hold, from_peer)`: the next chunk of at least
  `min_bytes` (holding `contains`) the controller sends down a connection whose first bytes
  from the peer contain `marker` (e.g. the routing id of an engine's task socket, b".t"), or
  with `from_peer` the next such chunk the peer sends up it, is lost, and that connection is
  reset: one message lost at the wrong moment, while the peer reconnects and
  goes on (`hold`: new connections are reset until `release()`, e.g. while the controller is
  killed and started again);
- `blackhole_all(suffixes)`: every connection (or those of peers whose routing id ends with
  one of `suffixes`) drops whatever is sent either way from then on and tells neither side (a
  firewall that started dropping a flow; a peer that only ZeroMQ's timers would find gone);
- `blackhole_process(pid)`: the same, for the connections of one process (one engine cut off
  from the controller while it goes on, as a partition);
- `mute(suffix)`: what the controller sends down the connections of peers whose routing id ends
  with `suffix` is dropped from then on, the connections kept (e.g. heartbeat answers lost);
- `throttle(rate)`: every connection carries at most `rate` bytes a second each way from then
  on, nothing lost (a slow link: a large message takes seconds to cross it).
A thread per direction per connection; the proxy is for tests, not for speed.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from taskmill.connection import read_connection_file, write_connection_file


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Pair:
    def __init__(self, proxy: FaultProxy, down: socket.socket, up: socket.socket) -> None:
        self.proxy = proxy
        self.down = down  # to the peer (engine / client)
        self.up = up  # to the controller
        self.hello = b""  # the first bytes from the peer (its ZMTP greeting and routing id)
        self.closed = False
        self.frozen = False  # cut on the peer's side: nothing passes, the controller's side open

    def start(self) -> None:
        threading.Thread(target=self._pump, args=(self.down, self.up, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.up, self.down, False),
                         daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_peer: bool) -> None:
        try:
            while True:
                rate = self.proxy.rate
                # (throttled: small reads, each followed by its time on the slow link; what
                # waits stays in the sender's socket buffers, as on a slow link)
                data = src.recv(65536 if rate is None else max(1, min(16384, rate // 20)))
                if not data:
                    break
                if rate is not None:
                    time.sleep(len(data) / rate)
                if self.frozen:
                    continue  # (the controller's side: read and dropped, never answered)
                if from_peer and len(self.hello) < 512:
                    self.hello += data[:512]
                if self.proxy._should_drop(self, data, from_peer):
                    self.proxy.dropped += 1
                    self.close()
                    return
                if self.proxy._count(self, from_peer):
                    continue  # (muted)
                dst.sendall(data)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.frozen and not self.proxy._stopped:
            _reset(self.down)  # the controller's side stays until it gives up on it
            return
        if not self.closed:
            self.closed = True
            _reset(self.down)
            _reset(self.up)

    def routing_id(self) -> bytes | None:
        """The peer's routing id, from its ZMTP handshake (the READY command's Identity)."""
        at = self.hello.find(b"\x08Identity")
        if at < 0 or len(self.hello) < at + 13:
            return None
        n = struct.unpack(">I", self.hello[at + 9:at + 13])[0]
        return self.hello[at + 13:at + 13 + n]

    def cut_peer_side(self) -> None:
        self.frozen = True
        _reset(self.down)


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._drop: tuple[int, bytes, bytes, bool, bool] | None = None
        self.holding = False  # new connections are reset (drop_next's hold, until release)
        self.dropped = 0
        self.resets = 0
        self.accepted = 0  # connections accepted and forwarded
        self._frozen: list[_Pair] = []  # cut on the peer's side; closed with the proxy
        self._muted: set[bytes] = set()
        self.rate: int | None = None  # bytes a second each way (`throttle`); None: as fast
        # chunks passed (or muted) by (peer's routing id suffix, "from peer" / "to peer")
        self.chunks: Counter[tuple[bytes, str]] = Counter()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            if self.holding:
                _reset(down)
                continue
            try:
                up = socket.create_connection(self.target, timeout=5)
                up.settimeout(None)
            except OSError:
                _reset(down)
                continue
            pair = _Pair(self, down, up)
            with self._lock:
                self.accepted += 1
                self._pairs = [p for p in self._pairs if not p.closed] + [pair]
            pair.start()

    def _count(self, pair: _Pair, from_peer: bool) -> bool:
        """Count a chunk by the suffix of its peer's routing id (the last two bytes, e.g.
        b".c") and direction; whether it is to be dropped (muted)."""
        suffix = (pair.routing_id() or b"")[-2:]
        with self._lock:
            self.chunks[(suffix, "from peer" if from_peer else "to peer")] += 1
            return not from_peer and suffix in self._muted

    def mute(self, suffix: bytes) -> None:
        """From now on, drop everything the controller sends down connections whose peer's
        routing id ends with `suffix` (e.g. b".c": an engine's heartbeat answers), new ones
        too; the connections stay open and what the peers send passes."""
        with self._lock:
            self._muted.add(suffix)

    def throttle(self, rate: int | None) -> None:
        """From now on every connection (new ones too) carries at most `rate` bytes a second
        each way (None: as fast as it can)."""
        self.rate = rate

    def _should_drop(self, pair: _Pair, data: bytes, from_peer: bool) -> bool:
        with self._lock:
            if self._drop is None:
                return False
            min_bytes, marker, contains, hold, up = self._drop
            if (up == from_peer and len(data) >= min_bytes and marker in pair.hello
                    and contains in data):
                self._drop = None
                self.holding = hold
                return True
        return False

    def drop_next(self, min_bytes: int, marker: bytes, contains: bytes = b"",
                  hold: bool = False, from_peer: bool = False) -> None:
        """Lose the next chunk of at least `min_bytes` (holding `contains`) sent to a peer
        whose greeting holds `marker` (`from_peer`: sent by it), and reset that connection
        (`hold`: and every new one until `release`)."""
        with self._lock:
            self._drop = (min_bytes, marker, contains, hold, from_peer)

    def release(self) -> None:
        """New connections pass again (after drop_next's `hold`)."""
        self.holding = False

    def cut_peer_side_all(self, suffixes: tuple[bytes, ...] = ()) -> int:
        """Cut, on the peer's side only, the connections whose routing id ends with one of
        `suffixes` (all with none); how many."""
        pairs = self._freeze(self._by_suffix(suffixes))
        for p in pairs:
            p.cut_peer_side()
        self.resets += 1
        return len(pairs)

    def _freeze(self, chosen: Callable[[_Pair], bool]) -> list[_Pair]:
        """The open connections `chosen` picks, moved to the frozen ones (closed with the
        proxy)."""
        with self._lock:
            pairs = [p for p in self._pairs if not p.closed and not p.frozen and chosen(p)]
            self._frozen.extend(pairs)
            self._pairs = [p for p in self._pairs if p not in pairs]
        return pairs

    @staticmethod
    def _by_suffix(suffixes: tuple[bytes, ...]) -> Callable[[_Pair], bool]:
        """Connections whose peer's routing id ends with one of `suffixes` (all with none)."""
        return lambda p: not suffixes or (p.routing_id() or b"").endswith(suffixes)

    def _blackhole(self, chosen: Callable[[_Pair], bool]) -> int:
        pairs = self._freeze(chosen)
        for p in pairs:
            p.frozen = True
        return len(pairs)

    def blackhole_all(self, suffixes: tuple[bytes, ...] = ()) -> int:
        """Drop what either side sends on the connections whose peer's routing id ends with
        one of `suffixes` (all with none), telling neither side; how many."""
        return self._blackhole(self._by_suffix(suffixes))

    def blackhole_process(self, pid: int) -> int:
        """Drop what either side sends on the connections of process `pid` (found by its TCP
        ports), telling neither side; how many."""
        ports = process_ports(pid)
        return self._blackhole(lambda p: _peer_port(p.down) in ports)

    def reset_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for p in pairs:
            p.close()
        self.resets += 1

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self.listener.close()
        self.reset_all()
        with self._lock:
            frozen, self._frozen = self._frozen, []
        for p in frozen:
            p.close()


def _peer_port(sock: socket.socket) -> int | None:
    try:
        return sock.getpeername()[1]
    except OSError:
        return None


def process_ports(pid: int) -> set[int]:
    """The local ports of process `pid`'s TCP sockets (IPv4), from /proc: its socket inodes
    (/proc/PID/fd) looked up in /proc/net/tcp."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = fd.readlink().name
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if len(cols) > 9 and cols[9] in inodes:
            ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def proxied(connection_file: Path | str, url: str, out: Path) -> tuple[FaultProxy, Path]:
    """A FaultProxy in front of one of a controller's addresses (`url`: "engine_url" or
    "client_url" of its connection file), and a copy of that file naming the proxy instead,
    written to `out`: (proxy, the copy's path)."""
    info = read_connection_file(connection_file)
    host, port = getattr(info, url).rsplit(":", 1)
    proxy = FaultProxy(host.split("//")[1], int(port))
    setattr(info, url, f"tcp://127.0.0.1:{proxy.port}")
    return proxy, write_connection_file(out, info)
