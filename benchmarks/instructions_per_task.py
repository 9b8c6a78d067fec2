#!/usr/bin/env python3
"""A process's work per lone round trip, counted rather than timed: A/B of source trees.

Timing a lone round trip on a shared 2-core machine varies by +-25% from run to run, which
hides a 10% change. Counts do not vary with the machine's load:

- machine instructions (valgrind's callgrind): one process (`--process controller`, the
  default, `engine` or `client`) runs under callgrind for `--base` and then `--base + --n`
  round trips of `submit(noop).result()` (one engine, SQLite store, ipc); the difference of
  the two totals over `--n` is its instructions per task (start-up and shut-down cancel out),
  also by thread (callgrind's --separate-threads: main, ..., the I/O thread) and, with
  `--functions N`, by C function (the N whose own instructions differ most between trees);
- with `--opcodes`, Python bytecodes and calls per task, by thread, part and function (a
  tracer in every thread of that process, switched on and off by signals around `--n` round
  trips): where they go;
- with `--syscalls`, system calls per task by name (strace -f -c, the same two runs).

Each tree is a `src` folder (default: this checkout's); give several to compare them. Only
the `taskmill` command line and `TaskClient` are used, so trees from before and after the
restructure (client.py, engine.py, wire.py as single modules) compare:

    python benchmarks/instructions_per_task.py --tree src --tree ../old/src
    python benchmarks/instructions_per_task.py --process client --tree src --tree ../old/src
    python benchmarks/instructions_per_task.py --process engine --opcodes --top 30 --tree src
    python benchmarks/instructions_per_task.py --keep /tmp/cg   # then callgrind_parts.py

With `--flood`, each run submits its tasks one by one and then gathers every result (the
`compare.py` submit+wait workload): per-task costs, with the per-turn costs spread over the
batches a turn reads (under callgrind the controller runs ~50x slower, so its batches are
larger than in a timed flood).

A count still moves a little with timing (how many loop turns a message takes, whether a
gen-0 collection falls inside the counted round trips): repeat a run to see by how much
(about 1% here).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CLIENT = """
import os, signal, sys, time
from pathlib import Path
from taskmill import TaskClient
def noop():
    return None
conn, n, target, ack = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
flood, engines = sys.argv[5] == "1", int(sys.argv[6])
def switch(sig, name):
    # ask the traced process (maybe this one) to switch its tracer; wait for its answer file
    os.kill(target or os.getpid(), sig)
    deadline = time.monotonic() + 600
    while not Path(ack, name).exists():
        if time.monotonic() > deadline:
            raise SystemExit("the traced process did not answer " + name)
        if target:
            tc.queue_status()  # (the controller's main thread wakes on a message)
        time.sleep(0.01)
with TaskClient(conn, timeout=300) as tc:
    deadline = time.monotonic() + 300
    while len(tc.engines()) < engines and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(100):  # (warm: every code path taken once before counting)
        tc.submit(noop).result()
    if flood:  # (and the flood's paths: credit, batches)
        for f in [tc.submit(noop) for _ in range(200)]:
            f.result()
    if ack:
        switch(signal.SIGRTMIN + 1, "on")
    if flood:
        for f in [tc.submit(noop) for _ in range(n)]:
            f.result()
    else:
        for _ in range(n):
            tc.submit(noop).result()
    if ack:
        switch(signal.SIGRTMIN + 2, "off")
"""

# Installed as sitecustomize in the traced process only. A global trace function in every
# thread (sys.settrace, and threading.settrace for the threads started later) does nothing
# until SIGRTMIN+1: then it counts bytecodes and calls per thread and code object, the frames
# already running (an I/O thread's loop) included; SIGRTMIN+2 stops and writes the counts to
# $TM_OPCODES_OUT. Each switch answers with a file ("on", "off") in $TM_OPCODES_ACK.
TRACER = """
import collections, json, os, signal, sys, threading
if os.environ.get("TM_OPCODES_OUT"):
    ops, calls = collections.Counter(), collections.Counter()
    active = False
    get_ident = threading.get_ident
    def local(frame, event, arg):
        if active and event == "opcode":
            ops[get_ident(), frame.f_code] += 1
        return local
    def glob(frame, event, arg):
        if not active:
            return None
        calls[get_ident(), frame.f_code] += 1
        frame.f_trace_opcodes = True
        return local
    def answer(name):
        with open(os.path.join(os.environ["TM_OPCODES_ACK"], name), "w") as f:
            f.write(name)
    def on(sig, frame):
        global active
        ops.clear()
        calls.clear()
        for top in sys._current_frames().values():
            while top is not None:
                top.f_trace, top.f_trace_opcodes, top = local, True, top.f_back
        active = True
        answer("on")
    def off(sig, frame):
        global active
        active = False
        names = {t.ident: t.name for t in threading.enumerate()}
        def keyed(counts):
            out = collections.Counter()
            for (tid, code), n in counts.items():
                thread = names.get(tid, str(tid))
                out[f"{thread}|{code.co_filename}:{code.co_name}:{code.co_firstlineno}"] += n
            return out
        with open(os.environ["TM_OPCODES_OUT"], "w") as f:
            json.dump({"ops": keyed(ops), "calls": keyed(calls)}, f)
        answer("off")
    sys.settrace(glob)
    threading.settrace(glob)
    signal.signal(signal.SIGRTMIN + 1, on)
    signal.signal(signal.SIGRTMIN + 2, off)
"""

PROCESSES = ("controller", "engine", "client")


def stop(proc: subprocess.Popen, wrapped: bool) -> None:
    """SIGTERM to a process, or under strace (which keeps it) to the process it runs."""
    pids = [proc.pid]
    if wrapped:
        with suppress(OSError):
            pids = [int(p) for p in
                    Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    for pid in pids:
        with suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def run_task_load(tree: Path, n: int, process: str, *, callgrind: bool, tracing: bool,
             syscalls: bool = False, keep: Path | None = None, flood: bool = False,
             engines: int = 1) -> dict[str, Any]:
    """One controller, `engines` engines (the first one counted), a client doing n lone
    round trips (or a flood of n tasks); `process` runs under
    callgrind ({"Ir": total, "threads": [Ir of each thread]}) or the tracer (its counts).
    `keep`: a path to copy callgrind's files to (one per thread: KEEP-01, KEEP-02, ...)."""
    work = Path(tempfile.mkdtemp(prefix="tm-instr-"))
    try:
        plain = dict(os.environ, PYTHONPATH=str(tree))
        plain.pop("TASKMILL_CONNECTION", None)
        cg = work / "cg.out"
        wrap = (["valgrind", "-q", "--tool=callgrind", "--separate-threads=yes",
                 f"--callgrind-out-file={cg}"] if callgrind else [])
        if syscalls:
            wrap = ["strace", "-f", "-c", "-o", str(work / "strace.txt")]
        traced = plain
        if tracing:
            (work / "site").mkdir()
            (work / "site" / "sitecustomize.py").write_text(TRACER)
            (work / "ack").mkdir()
            traced = dict(plain, PYTHONPATH=f"{work / 'site'}:{tree}",
                          TM_OPCODES_OUT=str(work / "opcodes.json"),
                          TM_OPCODES_ACK=str(work / "ack"))

        def command(name: str, cmd: list[str]) -> tuple[list[str], dict[str, str]]:
            return ([*wrap, *cmd], traced) if name == process else (cmd, plain)

        cmd, env = command("controller", [
            sys.executable, "-m", "taskmill", "controller", "--connection-file",
            str(work / "conn.json"), "--db", str(work / "tasks.db"), "--no-dashboard",
            "--heartbeat", "5", "--transport", "ipc"])
        log = open(work / "controller.log", "wb")  # noqa: SIM115 - closed below
        ctrl = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        engine, others = None, []
        try:
            deadline = time.monotonic() + 300
            while not (work / "conn.json").exists():
                if ctrl.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the controller did not start: "
                                       + (work / "controller.log").read_text()[-2000:])
                time.sleep(0.05)
            cmd, env = command("engine", [sys.executable, "-m", "taskmill", "engine", "--no-replace",
                                          "--connection-file", str(work / "conn.json")])
            engine = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            others = [subprocess.Popen(
                [sys.executable, "-m", "taskmill", "engine", "--no-replace", "--connection-file",
                 str(work / "conn.json")], env=plain, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) for _ in range(engines - 1)]
            target = {"controller": ctrl.pid, "engine": engine.pid, "client": 0}[process]
            cmd, env = command("client", [
                sys.executable, "-c", CLIENT, str(work / "conn.json"), str(n), str(target),
                str(work / "ack") if tracing else "", "1" if flood else "0", str(engines)])
            subprocess.run(cmd, env=env, check=True, timeout=3600)
        finally:
            for other in others:
                other.terminate()
                other.wait(120)
            if engine is not None:
                stop(engine, syscalls and process == "engine")
                engine.wait(120)
            stop(ctrl, syscalls and process == "controller")
            ctrl.wait(600)
            log.close()
        if tracing:
            return json.loads((work / "opcodes.json").read_text())
        if syscalls:  # strace -c's table: "% time seconds usecs/call calls [errors] syscall"
            calls: Counter[str] = Counter()
            for line in (work / "strace.txt").read_text().splitlines():
                parts = line.split()
                if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
                    calls[parts[-1]] += int(parts[3])
            return {"calls": calls}
        threads, functions = [], Counter()
        for out in sorted(work.glob("cg.out*")):  # one file per thread: cg.out-01, -02, ...
            total = self_costs(out, functions)
            if total is not None:
                threads.append(total)
        if not threads:
            raise RuntimeError("callgrind wrote no totals")
        if keep is not None:  # (TREE-N.out-01: the main thread's, -02 ...: the others')
            for out in work.glob("cg.out*"):
                shutil.copy(out, keep.with_name(keep.name + out.name.removeprefix("cg.out")))
        return {"Ir": sum(threads), "threads": threads, "functions": functions}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def self_costs(path: Path, into: Counter[str]) -> int | None:
    """Add each function's own instructions in a callgrind file to `into` (the cost line
    after a `calls=` line is the callee's, not counted); return the file's total."""
    names: dict[str, str] = {}
    fn, skip, total = "?", False, None
    with open(path) as f:
        for line in f:
            c = line[0]
            if c.isdigit() or c in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) > 1:
                    into[fn] += int(parts[1])
            elif line.startswith("fn="):
                ref, _, name = line[3:].rstrip("\n").partition(" ")
                if name:
                    names[ref] = name
                fn = names.get(ref, ref)
            elif line.startswith("cfn="):  # (a name may be defined at a call first)
                ref, _, name = line[4:].rstrip("\n").partition(" ")
                if name:
                    names[ref] = name
            elif line.startswith("calls="):
                skip = True
            elif line.startswith(("summary:", "totals:")) and total is None:
                total = int(line.split()[1])
    return total


def show_functions(trees: list[Path], per: dict[Path, Counter[str]], top: int) -> None:
    """The functions whose own instructions per task differ most from the first tree's (with
    one tree: the most costly)."""
    first = per[trees[0]]
    names = set().union(*per.values())
    if len(trees) == 1:
        order = sorted(names, key=lambda f: -first[f])
    else:
        order = sorted(names, key=lambda f: -max(abs(per[t][f] - first[f]) for t in trees))
    print("\nown instructions per task by function:", " | ".join(str(t) for t in trees))
    for name in order[:top]:
        print("  ", " ".join(f"{per[t][name]:9,.0f}" for t in trees), f" {name[:90]}")


def split_key(key: str) -> tuple[str, str]:
    """(thread name, "file:function:line") of a counted key."""
    thread, _, where = key.partition("|")
    return thread, where


def module_of(where: str) -> str:
    path = where.split(":", 1)[0]
    return path.split("/taskmill/", 1)[1] if "/taskmill/" in path else Path(path).name


def part_of(where: str) -> str:
    """taskmill's package or module (controller.py and controller/core.py: "controller"), so
    that trees before and after a module became a package compare; else the file's name."""
    path = where.split(":", 1)[0]
    if "/taskmill/" not in path:
        return Path(path).name
    return path.split("/taskmill/", 1)[1].split("/", 1)[0].removesuffix(".py")


def thread_kind(name: str) -> str:
    """A thread's name without its number ("Thread-3 (io_loop)" -> "Thread (io_loop)")."""
    head, sep, tail = name.partition(" ")
    return head.split("-", 1)[0] + sep + tail if head.startswith("Thread-") else name


def show_opcodes(trees: list[Path], counts: dict[Path, dict[str, dict[str, int]]],
                 process: str, n: int, top: int) -> None:
    for t, c in counts.items():
        print(f"{t}: {sum(c['ops'].values()) / n:,.0f} bytecodes per task in the {process} "
              f"({sum(c['calls'].values()) / n:,.0f} Python calls)")
    for what, label in (("ops", "bytecodes"), ("calls", "Python calls")):
        groups: dict[Path, Counter[tuple[str, str]]] = {t: Counter() for t in trees}
        for t, c in counts.items():
            for k, v in c[what].items():
                thread, where = split_key(k)
                groups[t][thread_kind(thread), part_of(where)] += v
        names = sorted({g for c in groups.values() for g in c},
                       key=lambda g: -max(c[g] for c in groups.values()))
        print(f"\nper thread and part of taskmill ({label} per task):",
              " | ".join(str(t) for t in trees))
        for g in names[:top]:
            print(f"  {g[0][:24]:24s} {g[1]:24s}",
                  " ".join(f"{groups[t][g] / n:8.1f}" for t in trees))
    for t in trees:
        print(f"\nfunctions of {t} (bytecodes, calls per task):")
        calls = counts[t]["calls"]
        for k, v in Counter(counts[t]["ops"]).most_common(top):
            thread, where = split_key(k)
            print(f"  {v / n:8.1f} {calls.get(k, 0) / n:5.1f}  {thread_kind(thread)[:20]:20s} "
                  f"{module_of(where)}:{where.split(':', 2)[1]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", type=Path,
                   help="a src folder (repeat to compare; default: this checkout's)")
    p.add_argument("--process", choices=PROCESSES, default="controller",
                   help="the process counted (default: the controller)")
    p.add_argument("--n", type=int, default=500, help="round trips counted (default 500)")
    p.add_argument("--base", type=int, default=50,
                   help="round trips of the baseline run (default 50)")
    p.add_argument("--opcodes", action="store_true",
                   help="count Python bytecodes per module/function instead of instructions")
    p.add_argument("--top", type=int, default=20, help="functions shown with --opcodes")
    p.add_argument("--syscalls", action="store_true",
                   help="count system calls per task by name (strace -f -c) instead")
    p.add_argument("--functions", type=int, default=0, metavar="N",
                   help="with callgrind: the N C and interpreter functions whose own "
                        "instructions per task differ most between the trees")
    p.add_argument("--flood", action="store_true",
                   help="a flood instead of lone round trips: --n tasks submitted one by one, "
                        "then every result gathered (after 100 lone and a flood of 200 to warm)")
    p.add_argument("--engines", type=int, default=1, help="engines (default 1)")
    p.add_argument("--keep", type=Path, default=None,
                   help="a folder to keep callgrind's files in, named TREE-N.out-TT (N: "
                        "round trips, TT: thread, 01 the main one; see callgrind_parts.py)")
    a = p.parse_args()
    run_once = functools.partial(run_task_load, flood=a.flood, engines=a.engines)
    trees = [t.resolve() for t in (a.tree or [ROOT / "src"])]
    if a.syscalls:
        print(f"system calls of the {a.process} per lone round trip (strace -f -c, "
              f"{a.base + a.n} minus {a.base} round trips):", " | ".join(map(str, trees)))
        per: dict[Path, Counter[str]] = {}
        for t in trees:
            base = run_once(t, a.base, a.process, callgrind=False, tracing=False, syscalls=True)
            more = run_once(t, a.base + a.n, a.process, callgrind=False, tracing=False,
                            syscalls=True)
            per[t] = Counter({k: (v - base["calls"][k]) / a.n for k, v in more["calls"].items()})
        for name in sorted(set().union(*per.values()), key=lambda k: -per[trees[0]][k]):
            if any(abs(per[t][name]) >= 0.05 for t in trees):
                print(f"  {name:20s}", " ".join(f"{per[t][name]:7.2f}" for t in trees))
        print(f"  {'total':20s}", " ".join(f"{sum(per[t].values()):7.2f}" for t in trees))
        return 0
    if not a.opcodes and shutil.which("valgrind") is None:
        p.error("valgrind is not installed (apt-get install valgrind), or use --opcodes")
    if a.opcodes:
        counts = {t: run_once(t, a.n, a.process, callgrind=False, tracing=True)
                  for t in trees}
        show_opcodes(trees, counts, a.process, a.n, a.top)
        return 0
    what = "task of a flood" if a.flood else "lone round trip"
    print(f"{a.process} instructions per {what} ({a.n} counted, callgrind; "
          "then by thread in the order they started):")
    first = None
    functions: dict[Path, Counter[str]] = {}
    if a.keep is not None:
        a.keep.mkdir(parents=True, exist_ok=True)

    def kept(t: Path, n: int) -> Path | None:
        name = "-".join(t.parts[-2:]).replace("/", "-")
        return None if a.keep is None else a.keep / f"{name}-{n}.out"

    for t in trees:
        base = run_once(t, a.base, a.process, callgrind=True, tracing=False,
                        keep=kept(t, a.base))
        more = run_once(t, a.base + a.n, a.process, callgrind=True, tracing=False,
                        keep=kept(t, a.base + a.n))
        per = (more["Ir"] - base["Ir"]) / a.n
        first = first or per
        threads = [(m - b) / a.n for b, m in zip(base["threads"], more["threads"], strict=False)]
        print(f"  {per:12,.0f}  ({per / first:.3f}x)  {t}")
        print("      threads:", "  ".join(f"{x:,.0f}" for x in threads), flush=True)
        functions[t] = Counter({k: (v - base["functions"][k]) / a.n
                                for k, v in more["functions"].items()})
    if a.functions:
        show_functions(trees, functions, a.functions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
