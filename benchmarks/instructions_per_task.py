#!/usr/bin/env python3
"""The controller's work per lone round trip, counted rather than timed: A/B of source trees.

Timing a lone round trip on a shared 2-core machine varies by +-25% from run to run, which
hides a 10% change. Two counts do not vary with the machine's load:

- machine instructions (valgrind's callgrind): the controller runs under callgrind for
  `--base` and then `--base + --n` round trips of `submit(noop).result()` (one engine, SQLite
  store, ipc); the difference of the two totals over `--n` is its instructions per task
  (start-up and shut-down cancel out);
- with `--opcodes`, Python bytecodes per task, by module and function (a tracer in the
  controller, switched on and off by signals around `--n` round trips): where they go.

Each tree is a `src` folder (default: this checkout's); give several to compare them:

    python benchmarks/instructions_per_task.py --tree src --tree ../old/src
    python benchmarks/instructions_per_task.py --tree src --tree ../old/src --opcodes --top 30

With `--flood`, each run submits its tasks one by one and then gathers every result (the
`compare.py` submit+wait workload): per-task costs, with the per-turn costs spread over the
batches a turn reads (under callgrind the controller runs ~50x slower, so its batches are
larger than in a timed flood).

A count still moves a little with timing (how many loop turns a message takes): repeat a run
to see by how much (about 1% here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CLIENT = """
import os, signal, sys, time
from taskmill import TaskClient
def noop():
    return None
conn, n, ctrl, tracing = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
flood, engines = sys.argv[5] == "1", int(sys.argv[6])
with TaskClient(conn, timeout=300) as tc:
    deadline = time.monotonic() + 300
    while len(tc.engines()) < engines and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(100):  # (warm: every code path taken once before counting)
        tc.submit(noop).result()
    if flood:  # (and the flood's paths: credit, batches)
        for f in [tc.submit(noop) for _ in range(200)]:
            f.result()
    if tracing:
        os.kill(ctrl, signal.SIGUSR1)
        tc.queue_status()
    if flood:
        for f in [tc.submit(noop) for _ in range(n)]:
            f.result()
    else:
        for _ in range(n):
            tc.submit(noop).result()
    if tracing:
        os.kill(ctrl, signal.SIGUSR2)
        tc.queue_status()
"""

# Installed as sitecustomize in the traced controller only: SIGUSR1 starts counting bytecodes
# per code object of the main thread, SIGUSR2 stops and writes them to $TM_OPCODES_OUT.
TRACER = """
import collections, json, os, signal, sys
if os.environ.get("TM_OPCODES_OUT"):
    counts = collections.Counter()
    def tracer(frame, event, arg):
        if event == "opcode":
            counts[frame.f_code] += 1
        elif event == "call":
            frame.f_trace_opcodes = True
        return tracer
    def on(sig, frame):
        counts.clear()
        while frame is not None:
            frame.f_trace, frame.f_trace_opcodes, frame = tracer, True, frame.f_back
        sys.settrace(tracer)
    def off(sig, frame):
        sys.settrace(None)
        while frame is not None:
            frame.f_trace, frame = None, frame.f_back
        out = collections.Counter()
        for code, n in counts.items():
            out[f"{code.co_filename}:{code.co_name}:{code.co_firstlineno}"] += n
        with open(os.environ["TM_OPCODES_OUT"], "w") as f:
            json.dump(out, f)
    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
"""


def run_once(tree: Path, n: int, *, callgrind: bool, tracing: bool, flood: bool = False,
             engines: int = 1) -> dict[str, int]:
    """One controller, `engines` engines, n lone round trips (or a flood of n tasks):
    {"Ir": total} or the opcode counts."""
    work = Path(tempfile.mkdtemp(prefix="tm-instr-"))
    try:
        env = dict(os.environ, PYTHONPATH=str(tree))
        env.pop("TASKMILL_CONNECTION", None)
        cmd = [sys.executable, "-m", "taskmill", "controller", "--connection-file",
               str(work / "conn.json"), "--db", str(work / "tasks.db"), "--no-dashboard",
               "--heartbeat", "5", "--transport", "ipc"]
        if callgrind:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work / 'cg.out'}",
                   *cmd]
        if tracing:
            (work / "site").mkdir()
            (work / "site" / "sitecustomize.py").write_text(TRACER)
            env = dict(env, PYTHONPATH=f"{work / 'site'}:{tree}",
                       TM_OPCODES_OUT=str(work / "opcodes.json"))
        log = open(work / "controller.log", "wb")  # noqa: SIM115 - closed below
        ctrl = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        started: list[subprocess.Popen] = []
        try:
            deadline = time.monotonic() + 300
            while not (work / "conn.json").exists():
                if ctrl.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the controller did not start: "
                                       + (work / "controller.log").read_text()[-2000:])
                time.sleep(0.05)
            plain = dict(os.environ, PYTHONPATH=str(tree))
            for _ in range(engines):
                started.append(subprocess.Popen(
                    [sys.executable, "-m", "taskmill", "engine", "--connection-file",
                     str(work / "conn.json")], env=plain, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL))
            subprocess.run([sys.executable, "-c", CLIENT, str(work / "conn.json"), str(n),
                            str(ctrl.pid), "1" if tracing else "0", "1" if flood else "0",
                            str(engines)], env=plain, check=True, timeout=1800)
        finally:
            for engine in started:
                engine.terminate()
            for engine in started:
                engine.wait(60)
            ctrl.send_signal(signal.SIGTERM)
            ctrl.wait(600)
            log.close()
        if tracing:
            return json.loads((work / "opcodes.json").read_text())
        for line in (work / "cg.out").read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return {"Ir": int(line.split()[1])}
        raise RuntimeError("callgrind wrote no totals")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def module_of(key: str) -> str:
    path = key.split(":", 1)[0]
    return path.split("/taskmill/", 1)[1] if "/taskmill/" in path else Path(path).name


def part_of(key: str) -> str:
    """taskmill's package or module (controller.py and controller/core.py: "controller"), so
    that trees before and after a module became a package compare; else the file's name."""
    path = key.split(":", 1)[0]
    if "/taskmill/" not in path:
        return Path(path).name
    return path.split("/taskmill/", 1)[1].split("/", 1)[0].removesuffix(".py")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", type=Path,
                   help="a src folder (repeat to compare; default: this checkout's)")
    p.add_argument("--n", type=int, default=500, help="round trips counted (default 500)")
    p.add_argument("--base", type=int, default=50,
                   help="round trips of the baseline run (default 50)")
    p.add_argument("--opcodes", action="store_true",
                   help="count Python bytecodes per module/function instead of instructions")
    p.add_argument("--top", type=int, default=20, help="functions shown with --opcodes")
    p.add_argument("--flood", action="store_true",
                   help="a flood instead of lone round trips: --n tasks submitted one by one, "
                        "then every result gathered (after 100 lone and a flood of 200 to warm)")
    p.add_argument("--engines", type=int, default=1, help="engines (default 1)")
    a = p.parse_args()
    trees = [t.resolve() for t in (a.tree or [ROOT / "src"])]
    if not a.opcodes and shutil.which("valgrind") is None:
        p.error("valgrind is not installed (apt-get install valgrind), or use --opcodes")
    if a.opcodes:
        counts = {t: run_once(t, a.n, callgrind=False, tracing=True, flood=a.flood,
                              engines=a.engines) for t in trees}
        for t, c in counts.items():
            print(f"{t}: {sum(c.values()) / a.n:,.0f} bytecodes per task in the controller")
        modules = {t: Counter() for t in trees}
        for t, c in counts.items():
            for k, v in c.items():
                modules[t][part_of(k)] += v
        names = sorted({m for c in modules.values() for m in c},
                       key=lambda m: -max(c[m] for c in modules.values()))
        print("\nper part of taskmill (bytecodes per task):", " | ".join(str(t) for t in trees))
        for m in names[:a.top]:
            print(f"  {m:40s}", " ".join(f"{modules[t][m] / a.n:8.1f}" for t in trees))
        print(f"\nfunctions of {trees[0]} (bytecodes per task):")
        for k, v in Counter(counts[trees[0]]).most_common(a.top):
            print(f"  {v / a.n:8.1f}  {module_of(k)}:{k.split(':', 2)[1]}")
        return 0
    what = "task of a flood" if a.flood else "lone round trip"
    print(f"controller instructions per {what} ({a.n} counted, callgrind):")
    first = None
    for t in trees:
        base = run_once(t, a.base, callgrind=True, tracing=False, flood=a.flood,
                        engines=a.engines)["Ir"]
        more = run_once(t, a.base + a.n, callgrind=True, tracing=False, flood=a.flood,
                        engines=a.engines)["Ir"]
        per = (more - base) / a.n
        first = first or per
        print(f"  {per:12,.0f}  ({per / first:.3f}x)  {t}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
