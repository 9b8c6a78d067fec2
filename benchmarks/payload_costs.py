"""What one payload costs a sender or a receiver, in this process, without any network.

    python benchmarks/payload_costs.py [--repeat 30]

For a 1 MiB `bytes` and an 8 MB float64 array: pickling in the pickle (`pickle.dumps`) against
taskmill's `dumps` (large buffers out of band), and one SHA-256 pass over the data on one
core (the payload hash before 2026-12-05) against taskmill's `payload_mac` (keyed BLAKE3 of
each frame; on one core below 16 MiB, see wire/signing.py). A round trip pays one `dumps` and
one `loads` on each side and four MAC passes (each side digests what it sends and checks what
it gets). Medians in ms.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from taskmill.wire import Wire, dumps, loads


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args()
    wire = Wire(os.urandom(32))
    values = {"1 MiB bytes": os.urandom(1 << 20),
              "8 MB float64 array": np.random.default_rng(0).random(1_000_000)}
    print(f"cores: {os.cpu_count()}; medians of {args.repeat}, ms\n")
    print("| payload | pickle.dumps | taskmill dumps | taskmill loads | SHA-256, one core "
          "| taskmill payload_mac |")
    print("|---|--:|--:|--:|--:|--:|")
    for name, value in values.items():
        frames = dumps(value)
        data = memoryview(value).cast("B") if isinstance(value, np.ndarray) else value
        row = [
            median_ms(lambda v=value: pickle.dumps(v, protocol=5), args.repeat),
            median_ms(lambda v=value: dumps(v), args.repeat),
            median_ms(lambda f=frames: loads(f), args.repeat),
            median_ms(lambda d=data: hashlib.sha256(d).digest(), args.repeat),
            median_ms(lambda f=frames: wire.payload_mac(f), args.repeat),
        ]
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
