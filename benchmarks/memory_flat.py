"""Controller memory while finished results pile up: RSS at 10k, 100k and 1M results.

    python benchmarks/memory_flat.py                 # 1,000,000 tiny tasks, durable store
    python benchmarks/memory_flat.py --n 100000      # a shorter run

Tiny tasks (`abs`) are submitted in batches and waited for; nothing is cleared. The
controller's resident memory (VmRSS) and peak (VmHWM) are read from /proc at each checkpoint.
The claim under test: results live on disk, so RSS stays flat as they accumulate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from taskmill import Cluster


def proc_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--db", default=None, help="store path (default: a file in a temp dir)")
    a = p.parse_args()
    checkpoints = sorted({c for c in (10_000, 100_000, 1_000_000, a.n) if c <= a.n})
    db = a.db or os.path.join(tempfile.mkdtemp(prefix="taskmill-bench-"), "tasks.db")
    print(f"# controller memory with finished results piling up ({time.strftime('%Y-%m-%d')})")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}; store: {db}")
    print()
    print("| finished results | controller RSS (MiB) | controller peak RSS (MiB) | tasks/s so far |")
    print("|--:|--:|--:|--:|")
    rows = []
    with Cluster(2, db=db) as c, c.client() as tc:
        pid = c.controller_pid
        mapper = tc.mapper(block=False)
        done = 0
        t0 = time.perf_counter()
        for mark in checkpoints:
            while done < mark:
                k = min(a.batch, mark - done)
                tc.barrier(mapper.map(abs, range(k)))
                done += k
            rss, hwm = proc_kib(pid, "VmRSS") / 1024, proc_kib(pid, "VmHWM") / 1024
            rate = done / (time.perf_counter() - t0)
            rows.append((mark, rss))
            print(f"| {mark:,} | {rss:.1f} | {hwm:.1f} | {rate:,.0f} |", flush=True)
        status = tc.queue_status()
    assert status["succeeded"] == a.n, status
    if len(rows) >= 2:
        growth = rows[-1][1] - rows[-2][1]
        print(f"\nRSS growth from {rows[-2][0]:,} to {rows[-1][0]:,} results: {growth:+.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
