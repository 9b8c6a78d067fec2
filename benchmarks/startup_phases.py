"""Where the start of a 2-engine local cluster goes: compare.py's "startup" row, by phase.

    python benchmarks/startup_phases.py [--rounds 5]

1. Fresh interpreters (best of N, wall time of the whole process; a difference of two for a
   step): `python -c pass`, the imports of a controller process (until it listens, then the
   rest), of an engine process, and of the process that starts the cluster.
2. The controller's own steps, in this process (best of N): opening a new SQLite store, starting
   the dashboard, binding its sockets (`Controller(...)`).
3. Timelines of `Cluster(2).start()` (each round), from the controller's and engines' logs
   (wall clock, ms): spawn -> controller listening -> each engine registered -> start()
   returned -> both engines answered a probe (compare.py's startup: start + client + probes).

Rounds alternate with nothing else; the machine may be shared, so read the best and the median.

    python benchmarks/startup_phases.py --ab OTHER/src [--rounds 5]

A/B instead: compare.py's own startup measurement (its `TaskmillPeer`: `import taskmill`,
`Cluster(2).start()`, a client, probes until both engines answered), each sample in a fresh
process, alternating between this tree's taskmill and the one under OTHER/src; best and median.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import taskmill
from taskmill.connection import new_connection_info, write_connection_file

PY = sys.executable
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")

# What each process imports, in the order it does (cli/commands.py: the controller binds its
# sockets between the two steps; an engine imports the engine package and the MPI rank check).
CONTROLLER_BEFORE_LISTENING = ("import taskmill.cli, taskmill.cli.commands, taskmill.store, "
                               "taskmill.controller.sockets")
CONTROLLER_ALL = (CONTROLLER_BEFORE_LISTENING + "; import taskmill.controller.loop, "
                  "taskmill.dashboard, taskmill.lifeline")
ENGINE_ALL = "import taskmill.cli, taskmill.cli.commands, taskmill.engine, taskmill.launchers.mpi"
PARENT_CLUSTER = "import taskmill; taskmill.Cluster"
PARENT_ALL = PARENT_CLUSTER + "; import taskmill.client"


def pid_probe(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def proc_wall(code: str, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run([PY, "-c", code], check=True)
        best = min(best, time.perf_counter() - t)
    return best


def best_of(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        best = min(best, fn())
    return best


def time_store() -> float:
    from taskmill.store import open_store

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        store = open_store(os.path.join(d, "tasks.db"))
        dt = time.perf_counter() - t
        store.close()
    return dt


def time_bind() -> float:
    from taskmill.controller import Controller

    with tempfile.TemporaryDirectory() as d:
        info = new_connection_info("127.0.0.1", None, None, None, ipc_dir=Path(d))
        t = time.perf_counter()
        c = Controller(info)
        dt = time.perf_counter() - t
        c.close()
    return dt


def time_dashboard() -> float:
    from taskmill.dashboard import start_dashboard

    with tempfile.TemporaryDirectory() as d:
        info = new_connection_info("127.0.0.1", None, None, None, ipc_dir=Path(d))
        path = write_connection_file(Path(d) / "connection.json", info)
        t = time.perf_counter()
        dash = start_dashboard(path, info)
        dt = time.perf_counter() - t
        if dash is not None:
            dash.stop()
    return dt


def stamps(path: Path, pattern: str) -> list[float]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = STAMP.match(line)
        if m and re.search(pattern, line):
            out.append(datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                       .timestamp())
    return out


def timeline() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as logs:
        os.chmod(logs, 0o700)
        t0 = time.time()
        c = taskmill.Cluster(2, log_dir=logs)
        c.start()
        t_started = time.time()
        with c.client() as tc:
            seen: set[int] = set()
            while len(seen) < 2:
                seen.update(f.result() for f in [tc.submit(pid_probe, 0.02) for _ in range(2)])
        t_probed = time.time()
        c.stop()
        listening = stamps(Path(logs) / "controller.log", r"listening")
        regs = sorted(stamps(Path(logs) / "controller.log", r"engine \d+ registered"))
    return {
        "controller loop started (its \"listening\" line)": listening[0] - t0,
        "1st engine registered": regs[0] - t0,
        "2nd engine registered": regs[1] - t0,
        "start() returned": t_started - t0,
        "probes answered (= compare.py's startup)": t_probed - t0,
    }


AB_SAMPLE = """
import os, runpy, sys, time
def pid_probe(delay):
    import os, time
    time.sleep(delay)
    return os.getpid()
bench = runpy.run_path(sys.argv[1], run_name="compare_bench")
import taskmill  # (compare.py has imported it, for its version, before it measures)
peer = bench["TaskmillPeer"](1.0)
t0 = time.perf_counter()
peer.start()
seen = set()
while len(seen) < 2:
    seen.update(peer.gather([peer.submit(pid_probe, 0.02) for _ in range(2)]))
dt = time.perf_counter() - t0
peer.stop()
print(dt)
"""


def ab(other_src: str, rounds: int) -> None:
    here = str(Path(__file__).resolve().parent.parent / "src")
    compare = str(Path(__file__).resolve().parent / "compare.py")
    trees = {"this tree": here, other_src: other_src}
    got: dict[str, list[float]] = {k: [] for k in trees}
    for i in range(rounds):
        for name in (list(trees) if i % 2 == 0 else list(trees)[::-1]):
            env = dict(os.environ, PYTHONPATH=trees[name])
            out = subprocess.run([PY, "-c", AB_SAMPLE, compare], env=env, check=True,
                                 capture_output=True, text=True).stdout
            got[name].append(float(out.split()[-1]))
    print(f"compare.py startup, s ({rounds} alternating samples each, fresh processes):\n")
    print("| taskmill | best | median | all |\n|---|---|---|---|")
    for name, v in got.items():
        print(f"| {name} | {min(v):.3f} | {statistics.median(v):.3f} | "
              + " ".join(f"{x:.3f}" for x in v) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ab", metavar="OTHER_SRC",
                   help="A/B compare.py's startup against the taskmill under this src folder")
    a = p.parse_args()
    n = a.rounds
    if a.ab:
        ab(a.ab, n)
        return 0
    print(f"# startup phases ({datetime.date.today()}, best of {n}, "
          f"load {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs)\n")
    print("| step | ms |\n|---|---|")
    bare = proc_wall("pass", n)
    ctl_before = proc_wall(CONTROLLER_BEFORE_LISTENING, n)
    parent_cluster = proc_wall(PARENT_CLUSTER, n)
    parent_base = proc_wall("import taskmill", n)
    rows = [
        ("python -c pass", bare),
        ("controller: interpreter + imports until it listens (cli, store, sockets)",
         ctl_before),
        ("controller: + the rest it imports before its loop (scheduler, loop, dashboard)",
         proc_wall(CONTROLLER_ALL, n) - ctl_before),
        ("engine: interpreter + imports", proc_wall(ENGINE_ALL, n)),
        ("parent: `taskmill.Cluster` after `import taskmill` (before it spawns)",
         parent_cluster - parent_base),
        ("parent: the client's side (start() imports it after spawning)",
         proc_wall(PARENT_ALL, n) - parent_cluster),
        ("controller: open a new SQLite store", best_of(time_store, n)),
        ("controller: start the dashboard", best_of(time_dashboard, n)),
        ("controller: bind its sockets, build its core", best_of(time_bind, n)),
    ]
    for name, v in rows:
        print(f"| {name} | {v * 1e3:.1f} |")
    runs = [timeline() for _ in range(n)]
    print("\nTimeline of Cluster(2).start(), ms after the call (best / median of "
          f"{n} rounds):\n")
    print("| event | best | median |\n|---|---|---|")
    for k in runs[0]:
        vals = [r[k] for r in runs]
        print(f"| {k} | {min(vals) * 1e3:.0f} | {statistics.median(vals) * 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
