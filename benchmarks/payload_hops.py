#!/usr/bin/env python3
"""Where one payload round trip's time goes, hop by hop, in every process of a local cluster.

    python benchmarks/payload_hops.py [--payload bytes|array] [--size BYTES] [--trips N]
                                      [--src DIR] [--quick] [--no-trace]

A task `echo(x)` (returns its argument) is given a payload (default: 1 MiB of bytes; `array`:
an 8 MB float64 ndarray) and waited for, `--trips` times, on `Cluster(2)` with its durable
SQLite store, as the payload rows of compare.py do. First untimed by any tracer (the round
trip's median), then again with the hop tracer (hoptrace/sitecustomize.py) in the client, the
controller and the engines: each traced step's median start (ms after `submit` was called)
and median duration (└: inside the step above it, in the same process), and the same round
trip's median with the tracer's own cost in it; then the sums by kind, and what is left
between the traced steps (sockets, wake-ups, hand-offs between threads, untraced code).
`--src` runs another checkout's `src` folder (an A/B in one session: run it on the old tree,
then this one, and again). Every process's CPU time and minor page faults per round trip come
from /proc. The markdown goes to stdout.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
WARMUP = 20
CLEAR_EVERY = 50  # finished results cleared between round trips, untimed
PICKLING = {"dumps_arguments", "dumps", "loads"}


def echo(x: Any) -> Any:
    return x


def proc_stat(pid: int) -> tuple[int, float]:
    """(minor faults, CPU seconds) of a process so far, its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident set so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(args: argparse.Namespace) -> int:
    """The measured client: prints its median round trip and /proc figures, one line each."""
    import numpy as np

    import taskmill

    value: Any = (os.urandom(args.size) if args.payload == "bytes"
                  else np.random.default_rng(0).random(args.size // 8))
    with taskmill.Cluster(2, dashboard=False) as cluster:
        tc = cluster.client()
        for _ in range(WARMUP):
            tc.submit(echo, value).result()
        pids = {"client": os.getpid(), "controller": cluster.controller_pid,
                **{f"engine {k}": p for k, p in cluster.engine_pids.items()}}
        before = {name: proc_stat(pid) for name, pid in pids.items()}
        times, done = [], []
        for _ in range(args.trips):
            t = time.perf_counter()
            fut = tc.submit(echo, value)
            out = fut.result()
            times.append(time.perf_counter() - t)
            done.append(fut.taskid)
            if len(done) >= CLEAR_EVERY:
                tc.clear(done)
                done = []
        after = {name: proc_stat(pid) for name, pid in pids.items()}
        assert len(out) == len(value)
        print(f"median {statistics.median(times) * 1e3:.3f}")
        for name in pids:
            faults = (after[name][0] - before[name][0]) / args.trips
            cpu = (after[name][1] - before[name][1]) / args.trips * 1e3
            print(f"proc {name}\t{cpu:.2f}\t{faults:.0f}\t{peak_rss_mib(pids[name]):.0f}")
        tc.close()
    return 0


def run_child(args: argparse.Namespace, trace_dir: str | None) -> list[str]:
    env = dict(os.environ)
    path = [args.src] if trace_dir is None else [str(HERE / "hoptrace"), args.src]
    env["PYTHONPATH"] = os.pathsep.join(path + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("HOPTRACE", None)
    if trace_dir is not None:
        env["HOPTRACE"] = trace_dir
    cmd = [sys.executable, __file__, "--child", "--payload", args.payload, "--size",
           str(args.size), "--trips", str(args.trips)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"the measured client failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.splitlines()


def load_trace(folder: str) -> tuple[list[tuple[int, int, str, str]], list[tuple[int, int]]]:
    """Every traced call of every process as (begin, end, process, step), sorted, and the
    client's round trips (submit called, result returned), past the warm-up."""
    calls: list[tuple[int, int, str, str]] = []
    for path in Path(folder).glob("*.tsv"):
        lines = path.read_text().splitlines()
        argv = lines[0]
        role = ("controller" if " controller " in argv else "engine" if " engine " in argv
                else "client")
        for line in lines[1:]:
            b, e, name = line.split("\t")
            calls.append((int(b), int(e), role, name))
    calls.sort()
    submits = [c for c in calls if c[2] == "client" and c[3] == "TaskClient.submit"]
    results = [c for c in calls if c[2] == "client" and c[3] == "TaskFuture.result"]
    trips = []
    for s in submits[WARMUP:]:
        i = bisect.bisect_left(results, (s[0],))
        if i < len(results):
            trips.append((s[0], results[i][1]))
    return calls, trips


def hop_table(folder: str) -> list[str]:
    calls, trips = load_trace(folder)
    starts = [c[0] for c in calls]
    steps: dict[tuple[str, str, int], list[tuple[float, float, bool]]] = \
        collections.defaultdict(list)
    for t0, t1 in trips:
        seen: collections.Counter[tuple[str, str]] = collections.Counter()
        open_until: dict[str, int] = {}  # per process: the end of the outermost open step
        i = bisect.bisect_left(starts, t0)
        while i < len(calls) and calls[i][0] <= t1:
            b, e, role, name = calls[i]
            i += 1
            if role == "client" and name in ("TaskClient.submit", "TaskFuture.result"):
                continue
            nested = open_until.get(role, 0) >= e
            if not nested:
                open_until[role] = e
            seen[role, name] += 1
            steps[role, name, seen[role, name]].append(((b - t0) / 1e6, (e - b) / 1e6, nested))
    rows = []
    for (role, name, k), v in steps.items():
        if len(v) >= 0.8 * len(trips):  # (steps of most round trips, not a heartbeat's)
            rows.append((statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
                         role, name, k, sum(x[2] for x in v) * 2 > len(v)))
    rows.sort()
    trip = statistics.median((t1 - t0) / 1e6 for t0, t1 in trips)
    out = [f"round trip with the tracer: median {trip:.3f} ms ({len(trips)} round trips)", "",
           "| starts at (ms) | takes (ms) | process | step |", "|--:|--:|---|---|"]
    sums: collections.Counter[str] = collections.Counter()
    for at, took, role, name, k, nested in rows:
        label = ("└ " if nested else "") + name + (f" #{k}" if k > 1 else "")
        out.append(f"| {at:.3f} | {took:.3f} | {role} | {label} |")
        if name == "Wire.payload_mac":
            sums["payload MACs (BLAKE3)"] += took
        elif name == "FrameFiles.write":
            sums["store: large frames' file writes"] += took
        elif name == "SQLiteStore.commit":
            sums["store: the rest of the commits"] += took
        elif name in PICKLING:
            sums["pickling and unpickling"] += took
        if not nested:
            sums["(traced steps, not nested)"] += took
    sums["store: the rest of the commits"] -= sums["store: large frames' file writes"]
    out += ["", "| share of the traced round trip | ms |", "|---|--:|"]
    for key in ("payload MACs (BLAKE3)", "store: large frames' file writes",
                "store: the rest of the commits", "pickling and unpickling"):
        out.append(f"| {key} | {sums[key]:.3f} |")
    out.append(f"| between traced steps: sockets, wake-ups, thread hand-offs, untraced code | "
               f"{trip - sums['(traced steps, not nested)']:.3f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--payload", choices=("bytes", "array"), default="bytes")
    p.add_argument("--size", type=int, help="payload bytes (1 MiB for bytes, 8,000,000 for "
                   "an array)")
    p.add_argument("--trips", type=int, default=200, help="round trips (default 200)")
    p.add_argument("--src", default=str(SRC), help="the taskmill source folder to run")
    p.add_argument("--no-trace", action="store_true",
                   help="the untraced run only (round trip, CPU, page faults, peak RSS)")
    p.add_argument("--quick", action="store_true", help="64 KiB, 30 round trips (a smoke run)")
    p.add_argument("--timeout", type=float, default=600.0, help="per measured client (s)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.size is None:
        args.size = (64 << 10) if args.quick else (1 << 20) if args.payload == "bytes" \
            else 8_000_000
    if args.quick:
        args.trips = min(args.trips, 30)
    if args.size < 8 or args.trips < 1:
        p.error("--size must be >= 8 and --trips >= 1")
    if args.child:
        return child(args)
    plain = run_child(args, None)
    table: list[str] = []
    if not args.no_trace:
        with tempfile.TemporaryDirectory(prefix="taskmill-hops-") as folder:
            run_child(args, folder)
            table = hop_table(folder)
    what = "bytes" if args.payload == "bytes" else "float64 ndarray"
    print(f"{args.size:,} B {what} echoed, 2 engines, durable store, {args.trips} round trips; "
          f"`{' '.join(['payload_hops.py', *(argv if argv is not None else sys.argv[1:])])}`\n")
    print(f"round trip without the tracer: {plain[0]} ms\n")
    print("| process | CPU per round trip (ms) | minor page faults per round trip "
          "| peak RSS (MiB) |")
    print("|---|--:|--:|--:|")
    for line in plain[1:]:
        _, name, cpu, faults, rss = line.replace("proc ", "proc\t", 1).split("\t")
        print(f"| {name} | {cpu} | {faults} | {rss} |")
    print()
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
