#!/usr/bin/env python3
"""Many engines killed at once, mid-flood: every task still finishes once, and the controller
answers meanwhile.

N light engines (one process: `many_engines.py --serve`, which speaks the engine protocol over
four sockets per engine) take a flood of T no-op tasks submitted with `retries=2`. Once a
quarter of them has finished, that process is killed with SIGKILL: N engines vanish together,
holding tasks. While the controller finds them dead (no heartbeat for 3 of its `--heartbeat`
seconds) and fails and queues again what they held, this script times `queue_status()` every
0.1 s; then N fresh light engines register and the flood runs to its end. The figures: the
slowest `queue_status()` answer during the deaths, and the outcome of every future (a result,
EngineDied, anything else), with the controller's own counts.

    python benchmarks/engines_vanish.py                      # 1,000 engines, 20,000 tasks
    python benchmarks/engines_vanish.py --engines 1000 --tasks 100000
    PYTHONPATH=<other tree>/src python benchmarks/engines_vanish.py   # another tree's controller

Exit status 1 if a future ended otherwise than with its result (the retries cover two deaths).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from many_engines import live_engines, start_light, stop

from taskmill import TaskClient


def noop() -> None:
    return None


def wait_for(what: str, ok, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def run(engines: int, tasks: int, heartbeat: float, watch: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="taskmill-vanish-") as tmp:
        conn = Path(tmp) / "connection.json"
        ctl = subprocess.Popen(
            [sys.executable, "-m", "taskmill", "controller", "--connection-file", str(conn),
             "--no-dashboard", "--db", str(Path(tmp) / "tasks.db"), "--log-level", "ERROR",
             "--heartbeat", str(heartbeat)], stdin=subprocess.DEVNULL)
        lights: list[subprocess.Popen] = []
        try:
            wait_for("the controller's connection file", conn.exists, 60)
            first = start_light(engines, conn)
            lights.append(first)
            with TaskClient(str(conn)) as tc:
                t0 = time.monotonic()
                wait_for(f"{engines} engines registered", lambda: live_engines(tc) >= engines, 300)
                registered = time.monotonic() - t0
                futures = [tc.options(retries=2).submit(noop) for _ in range(tasks)]
                wait_for("a quarter of the flood",
                         lambda: sum(f.done() for f in futures) >= tasks // 4, 300)
                done_at_kill = sum(f.done() for f in futures)
                first.send_signal(signal.SIGKILL)
                first.wait()
                killed = time.monotonic()
                slowest = 0.0
                while time.monotonic() - killed < watch:
                    t = time.monotonic()
                    tc.queue_status()
                    slowest = max(slowest, time.monotonic() - t)
                    time.sleep(0.1)
                alive_after = live_engines(tc)
                lights.append(start_light(engines, conn))
                ok = died = other = 0
                for f in futures:
                    try:
                        f.result(timeout=300)
                        ok += 1
                    except Exception as e:  # noqa: BLE001 - counted by kind
                        if type(e).__name__ == "EngineDied":
                            died += 1
                        else:
                            other += 1
                            print(f"a future ended with {type(e).__name__}: {e}",
                                  file=sys.stderr)
                stats = tc.statistics()
            return {"engines": engines, "tasks": tasks, "registered_s": registered,
                    "done_at_kill": done_at_kill, "slowest_status_ms": slowest * 1000,
                    "alive_after_deaths": alive_after, "ok": ok, "engine_died": died,
                    "other": other, "engines_died": stats["engines_died"],
                    "finished": stats["finished"], "submitted": stats["submitted"]}
        finally:
            stop(*lights, ctl)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=int, default=1000, help="light engines (default 1000)")
    p.add_argument("--tasks", type=int, default=20_000, help="no-op tasks (default 20000)")
    p.add_argument("--heartbeat", type=float, default=1.0,
                   help="the controller's --heartbeat (default 1: dead after 3 s)")
    p.add_argument("--watch", type=float, default=8.0,
                   help="seconds queue_status() is timed after the kill (default 8)")
    a = p.parse_args(argv)
    r = run(a.engines, a.tasks, a.heartbeat, a.watch)
    print(f"# {a.engines:,} engines killed at once mid-flood ({time.strftime('%Y-%m-%d %H:%M')})")
    print()
    print(f"    python benchmarks/engines_vanish.py --engines {a.engines} --tasks {a.tasks}")
    print()
    print("| engines | tasks | done at the kill | slowest queue_status meanwhile (ms) | "
          "alive after | futures: result / EngineDied / other | engines_died | finished |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    print(f"| {r['engines']:,} | {r['tasks']:,} | {r['done_at_kill']:,} | "
          f"{r['slowest_status_ms']:.0f} | {r['alive_after_deaths']} | "
          f"{r['ok']:,} / {r['engine_died']:,} / {r['other']:,} | {r['engines_died']:,} | "
          f"{r['finished']:,} of {r['submitted']:,} |")
    return 0 if r["other"] == 0 and r["engine_died"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
