#!/usr/bin/env python3
"""Where a map's time goes: items/s and CPU per item of every thread of a 2-engine cluster.

`tc.map(func, range(N))` (the default automatic chunksize, as in compare.py's map row) on
`Cluster(2)` (its default SQLite store unless --db), repeated --rounds times; printed: the median
wall time and items/s, then the CPU ns per item of each thread of the controller, both engines
and this client process (utime+stime of /proc/<pid>/task/<tid>/stat summed over the rounds;
clock ticks, so use enough rounds). `--func` picks the mapped function: noop (returns None) or
square (x * x, a small real function whose results are ints).

    python benchmarks/map_costs.py                      # 100,000 noop items, 20 rounds
    python benchmarks/map_costs.py --func square --items 200000 --rounds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from cpu_per_task import thread_cpu  # (this folder: run as a script)

from taskmill import Cluster


def noop(*args: Any, **kwargs: Any) -> None:
    return None


def square(x: int) -> int:
    return x * x


FUNCS = {"noop": noop, "square": square}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000, help="items per map (default 100000)")
    p.add_argument("--rounds", type=int, default=20, help="maps timed (default 20)")
    p.add_argument("--func", choices=sorted(FUNCS), default="noop")
    p.add_argument("--chunksize", type=int, default=None, help="default: automatic")
    p.add_argument("--db", default=None, help="task store: a path or :memory: (default: the "
                                              "cluster's own SQLite file)")
    a = p.parse_args()
    func = FUNCS[a.func]
    with Cluster(2, dashboard=False, db=a.db) as c, c.client() as tc:
        for _ in range(3):  # warm up both engines and the function caches
            tc.map(func, range(a.items), chunksize=a.chunksize)
        pids = {"controller": c.controller_pid, "client": os.getpid()}
        for i, pid in enumerate(sorted(c.engine_pids.values())):
            pids[f"engine{i}"] = pid
        before = {k: thread_cpu(p) for k, p in pids.items()}
        walls = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            out = tc.map(func, range(a.items), chunksize=a.chunksize)
            walls.append(time.perf_counter() - t0)
            assert len(out) == a.items
        after = {k: thread_cpu(p) for k, p in pids.items()}
        n = a.items * a.rounds
        wall = statistics.median(walls)
        print(f"map({a.func}, range({a.items:,})) x {a.rounds}: median {wall * 1e3:.1f} ms, "
              f"{a.items / wall:,.0f} items/s (best {a.items / min(walls):,.0f}); "
              f"wall {1e9 * sum(walls) / n:.0f} ns per item")
        for k in pids:
            spent = {t: after[k][t] - s for t, s in before[k].items() if t in after[k]}
            total = sum(spent.values())
            cells = ", ".join(f"{t} {1e9 * s / n:.0f}" for t, s in spent.items() if s > 0)
            print(f"- {k}: {1e9 * total / n:.0f} ns/item ({cells or 'below one clock tick'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
