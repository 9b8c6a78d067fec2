"""Throughput with the durable SQLite store against `:memory:`, side by side in one run.

    python benchmarks/store_overhead.py [--n 20000] [--rounds 3]

Each round runs the same work on a fresh 2-engine cluster with each store, alternating, so
both see the same machine load: `--n` tiny tasks submitted in one go, then a barrier.
Reported: the median tasks/s of each, and the store's throughput as a share of `:memory:`'s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from taskmill import Cluster


def run(n: int, db: str) -> float:
    with Cluster(2, db=db) as c, c.client() as tc:
        tc.barrier(tc.mapper(block=False).map(abs, range(200)))  # warm up
        t = time.perf_counter()
        tc.barrier(tc.mapper(block=False).map(abs, range(n)))
        return n / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    rates: dict[str, list[float]] = {"sqlite": [], ":memory:": []}
    with tempfile.TemporaryDirectory(prefix="taskmill-bench-") as tmp:  # (removed at the end)
        for i in range(a.rounds):
            for name in rates:
                db = name if name == ":memory:" else os.path.join(tmp, f"round{i}.db")
                rates[name].append(run(a.n, db))
    mem, disk = statistics.median(rates[":memory:"]), statistics.median(rates["sqlite"])
    print(f"# store overhead ({time.strftime('%Y-%m-%d')}; command: "
          f"{' '.join([os.path.basename(sys.executable), *sys.argv])})\n")
    print("| store | tasks/s (median of rounds) | each round |")
    print("|---|--:|---|")
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):,.0f} | {', '.join(f'{x:,.0f}' for x in r)} |")
    print(f"\nSQLite store throughput = {100 * disk / mem:.0f}% of :memory: "
          f"(target: at least 80%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
