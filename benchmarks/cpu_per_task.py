#!/usr/bin/env python3
"""CPU time per task of every thread of a 2-engine local cluster, read from /proc.

Two workloads on `Cluster(2)` (the default SQLite store unless --db):
  lone:  N round trips of one no-op task at a time (`submit(noop).result()`);
  flood: N no-op tasks submitted one by one, then every result gathered.
For each, the wall time per task and the CPU µs per task of each thread of the controller,
one engine and this client process (utime+stime of /proc/<pid>/task/<tid>/stat; the kernel
counts them in clock ticks, so short runs are coarse).

    python benchmarks/cpu_per_task.py                  # 2,000 lone, 10,000 flood
    python benchmarks/cpu_per_task.py --lone 200 --flood 1000 --db :memory:
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from taskmill import Cluster


def noop() -> None:
    return None


def thread_cpu(pid: int) -> dict[str, float]:
    """'name/tid' -> CPU seconds of each thread of `pid`."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def measure(pids: dict[str, int], n: int, work: Callable[[], None]) -> list[str]:
    before = {k: thread_cpu(p) for k, p in pids.items()}
    t0 = time.perf_counter()
    work()
    wall = time.perf_counter() - t0
    after = {k: thread_cpu(p) for k, p in pids.items()}
    lines = [f"wall {1e6 * wall / n:.0f} µs per task ({n / wall:,.0f} tasks/s)"]
    for k in pids:
        spent = {t: after[k][t] - c for t, c in before[k].items() if t in after[k]}
        cells = ", ".join(f"{t} {1e6 * s / n:.0f}" for t, s in spent.items() if s > 0)
        lines.append(f"- {k}: {cells or 'below one clock tick'}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lone", type=int, default=2000, help="lone round trips (default 2000)")
    p.add_argument("--flood", type=int, default=10_000, help="flood tasks (default 10000)")
    p.add_argument("--db", default=None, help="task store: a path or :memory: (default: the "
                                              "cluster's own SQLite file)")
    a = p.parse_args()
    with Cluster(2, dashboard=False, db=a.db) as c, c.client() as tc:
        for _ in range(50):  # warm up both engines and the function caches
            tc.submit(noop).result()
        engine = next(iter(c.engine_pids.values()))
        pids = {"controller": c.controller_pid, "engine": engine, "client": os.getpid()}

        def lone() -> None:
            for _ in range(a.lone):
                tc.submit(noop).result()

        def flood() -> None:
            futures = [tc.submit(noop) for _ in range(a.flood)]
            for f in futures:
                f.result()

        print(f"# CPU per task ({time.strftime('%Y-%m-%d')}; store {a.db or 'SQLite'})")
        print(f"\n## lone round trips ({a.lone}), CPU µs per task by thread\n")
        print("\n".join(measure(pids, a.lone, lone)))
        tc.clear()
        print(f"\n## flood ({a.flood}), CPU µs per task by thread\n")
        print("\n".join(measure(pids, a.flood, flood)))
        tc.clear()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
