"""What issue 20's payload targets leave room for, given what was decided about every payload.

Two decisions fix a cost per payload byte whatever the code around them does: every payload
frame carries a keyed BLAKE3 digest computed by its sender and checked by its receiver (4 digests
per echo: the argument and the result, each signed and checked), and every task and result is
written to the store before it moves on (2 writes of the payload per echo). A taskmill echo also
crosses the same 4 sockets as the bare ZeroMQ relay of compare.py (client -> broker -> worker ->
broker -> client), pickling as it does. So no taskmill echo can be faster than

    floor = the relay's echo + 4 digests + 2 writes into the store's (cached) files

measured here in one run with taskmill's own digest code (`Wire.payload_mac`) and the store's
cheapest write (over a spare file whose pages are cached, as the store reuses files of rows it
dropped). The floor leaves out everything else taskmill does (scheduling, SQLite, signing the
headers, the hand-offs between threads), so it is a lower bound.

    python benchmarks/floors.py [--trips 100] [--ray]

`--ray` also measures Ray's echo (its object store passes large values through shared memory),
the peer issue 20's 8 MB target is set against.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import payload_costs  # noqa: E402
from compare import RayPeer, RelayPeer, echo  # noqa: E402

PAYLOADS = {"1 MiB bytes": lambda: os.urandom(1 << 20),
            "8 MB float64 array": lambda: __import__("numpy").random.random(1_000_000)}
TARGETS = {"1 MiB bytes": ("<= 1.5x the relay", lambda relay, ray: 1.5 * relay),
           "8 MB float64 array": ("<= 0.8x the best peer (Ray)",
                                  lambda relay, ray: None if ray is None else 0.8 * ray)}


def median_ms(fn: Callable[[], Any], trips: int) -> float:
    fn()  # (warm-up: first-touch page faults, imports)
    return payload_costs.median_ms(fn, trips)


def frames_of(value: Any) -> list[Any]:
    """The payload frames taskmill sends for `value`: large bytes travel as a frame of their
    own, an array's buffer out of band (pickle protocol 5)."""
    import pickle

    if isinstance(value, bytes):
        return [value]
    out: list[Any] = []
    pickle.dumps(value, protocol=5, buffer_callback=out.append)
    return [b.raw() for b in out]


def echo_ms(peer: Any, value: Any, trips: int) -> float:
    peer.start()
    try:
        return median_ms(lambda: peer.gather([peer.submit(echo, value)]), trips)
    finally:
        peer.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trips", type=int, default=100, help="echoes (and digests, writes) per median")
    p.add_argument("--ray", action="store_true", help="also measure Ray's echo")
    a = p.parse_args(argv)
    from taskmill.wire import Wire

    wire = Wire(os.urandom(32))
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TASKMILL_DIR") or None) as d:
        spare = Path(d) / "spare"
        for name, make in PAYLOADS.items():
            value = make()
            frames = frames_of(value)
            size = sum(memoryview(f).nbytes for f in frames)
            mac = median_ms(lambda: wire.payload_mac(frames), a.trips)  # noqa: B023
            spare.write_bytes(b"\0" * size)

            def write() -> None:
                with open(spare, "r+b") as f:
                    for fr in frames:  # noqa: B023
                        f.write(fr)

            store = median_ms(write, a.trips)
            relay = echo_ms(RelayPeer(), value, a.trips)
            ray = echo_ms(RayPeer(), value, a.trips) if a.ray else None
            floor = relay + 4 * mac + 2 * store
            label, target_of = TARGETS[name]
            rows.append((name, size, relay, ray, mac, store, floor, label, target_of(relay, ray)))
    print(f"# Floors of a taskmill echo ({time.strftime('%Y-%m-%d %H:%M')}, load average "
          f"{os.getloadavg()[0]:.1f}, median of {a.trips})\n")
    print("| payload | relay echo (ms) | Ray echo | one digest | one store write | floor = relay "
          "+ 4 digests + 2 writes | target | target (ms) | floor / target |")
    print("|---|--:|--:|--:|--:|--:|---|--:|--:|")
    for name, size, relay, ray, mac, store, floor, label, target in rows:
        ray_cell = "n/a" if ray is None else f"{ray:.2f}"
        t_cell = "n/a" if target is None else f"{target:.2f}"
        r_cell = "n/a" if target is None else f"{floor / target:.2f}"
        print(f"| {name} ({size:,} B) | {relay:.2f} | {ray_cell} | {mac:.3f} | {store:.3f} | "
              f"{floor:.2f} | {label} | {t_cell} | {r_cell} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
