#!/usr/bin/env python3
"""Where the slow lone round trips come from: each trip timed, beside the controller's fsyncs.

    python benchmarks/lone_tail.py [--trips 5000] [--rounds 2]

A `Cluster(2)` with its durable SQLite store; after 300 warm-up trips, `--trips` lone
`submit(noop).result()` round trips, each timed on CLOCK_MONOTONIC, while `perf record -k
CLOCK_MONOTONIC` notes every fdatasync of the controller (its main thread's and its WAL
checkpointer's). Prints the median, p95, p99 and max, how many of the slowest 1% and 5% trips
overlapped an fdatasync (of the main thread, of any thread), and the fdatasyncs' count and
length. The fdatasyncs need `perf` (linux-perf) and the permission to trace the controller
(root); without them (or with `--no-perf`) only the trips' figures are printed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def noop() -> None:
    return None


def fsync_spans(perf_data: str) -> list[tuple[int, float, float]]:
    """(thread id, start, end) of each fdatasync perf recorded."""
    out = subprocess.run(["perf", "script", "-i", perf_data, "-F", "tid,time,event"],
                         capture_output=True, text=True, check=True).stdout
    spans, started = [], {}
    for line in out.splitlines():
        tid, at, event = line.split()[:3]
        t = float(at.rstrip(":"))
        if "enter" in event:
            started[int(tid)] = t
        elif int(tid) in started:
            spans.append((int(tid), started.pop(int(tid)), t))
    return spans


def start_perf(ctl: int, perf_data: str) -> subprocess.Popen | None:
    """`perf record` of the controller's fdatasyncs, attached; None if it cannot be."""
    if shutil.which("perf") is None:
        print("  (no perf: fdatasyncs not recorded)")
        return None
    perf = subprocess.Popen(
        ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-e",
         "syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync", "-p", str(ctl),
         "-o", perf_data], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(perf_data).exists():  # (perf is attached once it made its file)
        if time.monotonic() > deadline or perf.poll() is not None:
            perf.kill()
            print("  (perf record did not start: fdatasyncs not recorded)")
            return None
        time.sleep(0.01)
    return perf


def one_round(trips: int, use_perf: bool) -> None:
    from taskmill import Cluster

    with Cluster(2) as cluster, tempfile.TemporaryDirectory() as tmp:
        tc = cluster.client()
        for _ in range(300):
            tc.submit(noop).result()
        ctl = cluster.controller_pid
        assert ctl is not None
        perf_data = str(Path(tmp) / "perf.data")
        perf = start_perf(ctl, perf_data) if use_perf else None
        rows = []
        for _ in range(trips):
            start = time.monotonic()
            tc.submit(noop).result()
            rows.append((start, time.monotonic() - start))
        spans = None
        if perf is not None:
            perf.send_signal(2)
            perf.wait(30)
            spans = fsync_spans(perf_data)
    times = sorted(d for _, d in rows)

    def q(p: float) -> float:
        return times[int(p * (len(times) - 1))]

    print(f"{trips} lone round trips: median {q(.5) * 1e3:.3f} ms, p95 {q(.95) * 1e3:.3f}, "
          f"p99 {q(.99) * 1e3:.3f}, max {times[-1] * 1e3:.2f}")
    if spans is None:
        return
    main = ctl  # (the main thread's id is the process's)
    for name, p in (("slowest 1%", .99), ("slowest 5%", .95)):
        slow = [(s, d) for s, d in rows if d >= q(p)]

        def overlapping(tids: set[int], slow: list = slow) -> int:
            return sum(any(tid in tids and a < s + d and b > s for tid, a, b in spans)
                       for s, d in slow)

        print(f"  {name} ({len(slow)} trips, >= {q(p) * 1e3:.2f} ms): overlapping an "
              f"fdatasync of the controller's main thread {overlapping({main})}, of any of "
              f"its threads {overlapping({t for t, _, _ in spans})}")
    mains = [b - a for tid, a, b in spans if tid == main]
    others = [b - a for tid, a, b in spans if tid != main]
    print(f"  fdatasyncs: main thread {len(mains)} ({sum(mains) * 1e3:.1f} ms in all, longest "
          f"{max(mains, default=0) * 1e3:.1f}), other threads {len(others)} "
          f"({sum(others) * 1e3:.1f} ms, longest {max(others, default=0) * 1e3:.1f}), over "
          f"{rows[-1][0] - rows[0][0]:.1f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trips", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-perf", action="store_true", help="time the trips only")
    a = p.parse_args()
    for _ in range(a.rounds):
        one_round(a.trips, not a.no_perf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
