#!/usr/bin/env python3
"""What the dashboard costs its controller at many engines, and what one poll carries.

One controller (durable store, its dashboard on) and N light engines (`many_engines.py --serve`,
one process speaking the engine protocol for all of them). What one poll of the page
(GET /api/snapshot?since=SEQ, once a second) costs the controller process is two parts:

- its loop answers `statistics()` and `activity()`: timed from an ordinary client, back to back
  (time per call, and the controller's CPU per call above its idle rate, from /proc);
- its dashboard makes those two calls through its client (send, receive, decode: the feed
  thread, every SNAPSHOT_TTL while a page looks) and writes the JSON (per poll): the same code
  (`ControllerFeed.snapshot`) run here, its CPU from this process's clock.

Each with the engine list in either form: one object per engine (`rows`, the default) or as
columns (`columns`, what the page asks for). Also the real thing, in alternating windows: the
controller's CPU share while nobody looks and while one page polls (at 1,000 engines the
difference is lost in the heartbeats' noise), the time a poll takes to answer, its bytes, and
the age of the snapshot it gets (a poll is answered from the one the feed thread fetched last).

    python benchmarks/dashboard_cost.py                          # 1,000 engines
    python benchmarks/dashboard_cost.py --engines 100,1000 --write

Timings on a shared 2-core machine are noisy (the light engines, the controller and this script
share the cores): read the figures as sizes, not as exact values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from many_engines import proc_cpu, start_light, stop

from taskmill import TaskClient
from taskmill.connection import read_connection_file
from taskmill.dashboard import ControllerFeed, dashboard_link, to_json, with_engine_columns

ROOT = Path(__file__).resolve().parent
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> bytes:
    with OPENER.open(url, timeout=60) as r:
        return r.read()


def start(tmp: Path, n: int, heartbeat: float) -> tuple[subprocess.Popen, subprocess.Popen, Path]:
    conn = tmp / "connection.json"
    ctl = subprocess.Popen(
        [sys.executable, "-m", "taskmill", "controller", "--connection-file", str(conn),
         "--db", str(tmp / "tasks.db"), "--heartbeat", str(heartbeat), "--log-level", "WARNING"],
        stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (conn.exists() and "dashboard_url" in read_connection_file(conn).extra):
        if time.monotonic() > deadline or ctl.poll() is not None:
            ctl.kill()
            raise RuntimeError("the controller did not start with its dashboard")
        time.sleep(0.05)
    return ctl, start_light(n, conn), conn


def cpu_window(pid: int, seconds: float, work: Any = None) -> tuple[float, float, int]:
    """(controller CPU seconds, wall seconds, times `work` ran) over a window of `seconds`;
    `work` runs once a second (a page's poll), or not at all."""
    c0, t0 = proc_cpu(pid), time.perf_counter()
    runs = 0
    while (now := time.perf_counter()) - t0 < seconds:
        if work is not None and now - t0 >= runs:
            work()
            runs += 1
        else:
            time.sleep(0.01)
    return proc_cpu(pid) - c0, time.perf_counter() - t0, runs


def feed_work(conn: Path, form: str, polls: int) -> float:
    """CPU seconds per poll of the dashboard's own work, done here as its thread does it in the
    controller process: the feed's statistics() and activity() calls through its client (sending,
    receiving, decoding), then the page's JSON. (Measured in this process, whose CPU nothing
    else uses, instead of the controller's, where the heartbeats of many engines drown it.)"""
    feed = ControllerFeed(lambda: TaskClient(str(conn)), ttl=0.0)
    try:
        seq = feed.snapshot(0)["seq"]
        c0 = time.process_time()
        for _ in range(polls):
            snap = feed.snapshot(seq)
            to_json(with_engine_columns(snap) if form == "columns" else snap)
        return (time.process_time() - c0) / polls
    finally:
        feed.close()


FORMS = ("rows", "columns")  # ?engines=: one object per engine (the default), or the page's


def measure(n: int, rounds: int, window: float, calls: int, heartbeat: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taskmill-dash-") as tmpdir:
        ctl, lights, conn = start(Path(tmpdir), n, heartbeat)
        try:
            with TaskClient(str(conn)) as tc:
                t0 = time.perf_counter()
                while len(tc.engines()) < n:  # (one may be declared dead on a loaded machine)
                    if time.perf_counter() - t0 > 300:
                        raise RuntimeError(f"only {len(tc.engines())} of {n} engines registered")
                    time.sleep(0.2)
                link = dashboard_link(read_connection_file(conn))
                assert link is not None
                base, token = link.split("?token=")
                seq = 0
                seen: dict[str, dict[str, list[float]]] = {
                    f: {"times": [], "sizes": [], "engine_bytes": [], "ages": []} for f in FORMS}

                def poller(form: str) -> Any:
                    def poll() -> None:
                        nonlocal seq
                        w0 = time.perf_counter()
                        body = get(f"{base}api/snapshot?since={seq}&engines={form}&token={token}")
                        seen[form]["times"].append(time.perf_counter() - w0)
                        snap = json.loads(body)
                        seq = snap["seq"]
                        seen[form]["sizes"].append(len(body))
                        seen[form]["engine_bytes"].append(len(json.dumps(snap["stats"]["engines"])))
                        seen[form]["ages"].append(snap.get("age", 0.0))
                    return poll

                time.sleep(2.0)  # (let registration's own traffic settle)
                poller("rows")()  # the dashboard's client connects
                for f in FORMS:
                    seen[f] = {k: [] for k in seen[f]}
                idle = [0.0, 0.0]
                page = {f: [0.0, 0.0, 0] for f in FORMS}  # cpu, wall, polls
                for _ in range(rounds):  # idle and each form in turn, so that drifts average out
                    cpu, wall, _ = cpu_window(ctl.pid, window)
                    idle = [idle[0] + cpu, idle[1] + wall]
                    for f in FORMS:
                        cpu, wall, runs = cpu_window(ctl.pid, window, poller(f))
                        page[f] = [page[f][0] + cpu, page[f][1] + wall, page[f][2] + runs]
                idle_share = idle[0] / idle[1]

                call_rows = {}
                for name in ("statistics", "activity"):
                    fn = getattr(tc, name)
                    fn()
                    c0, w0, walls = proc_cpu(ctl.pid), time.perf_counter(), []
                    for _ in range(calls):
                        s0 = time.perf_counter()
                        fn()
                        walls.append(time.perf_counter() - s0)
                    wall = time.perf_counter() - w0
                    cpu = proc_cpu(ctl.pid) - c0 - idle_share * wall
                    call_rows[name] = (st.median(walls), cpu / calls)
                states = Counter(e["state"] for e in tc.engines())
                feed_cpu = {f: feed_work(conn, f, calls) for f in FORMS}
            forms = {f: {"page_share": page[f][0] / page[f][1], "polls": page[f][2],
                         "feed_cpu": feed_cpu[f],
                         "poll_median": st.median(seen[f]["times"]),
                         "poll_max": max(seen[f]["times"]), "bytes": st.median(seen[f]["sizes"]),
                         "engine_bytes": st.median(seen[f]["engine_bytes"]),
                         "age_median": st.median(seen[f]["ages"]),
                         "age_max": max(seen[f]["ages"])} for f in FORMS}
            return {"engines": n, "states": dict(states), "idle_share": idle_share,
                    "forms": forms, "calls": call_rows}
        finally:
            stop(lights, ctl)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default="1000", help="engine counts (default 1000)")
    p.add_argument("--rounds", type=int, default=3, help="idle/page window pairs (default 3)")
    p.add_argument("--window", type=float, default=10.0, help="seconds a window lasts (default 10)")
    p.add_argument("--calls", type=int, default=50,
                   help="statistics() and activity() calls timed (default 50)")
    p.add_argument("--heartbeat", type=float, default=1.0,
                   help="the controller's --heartbeat (default 1.0, its default)")
    p.add_argument("--write", action="store_true", help="also write benchmarks/dashboard_cost.md")
    a = p.parse_args(argv)
    rows = []
    for n in [int(x) for x in a.engines.split(",")]:
        print(f"... {n} engines", file=sys.stderr, flush=True)
        rows.append(measure(n, a.rounds, a.window, a.calls, a.heartbeat))
    load = os.getloadavg()[0]
    out = [f"# The dashboard's cost to its controller ({time.strftime('%Y-%m-%d %H:%M')}, "
           f"{os.cpu_count()} cores, load average {load:.1f} at the end)", "",
           f"    python benchmarks/dashboard_cost.py --engines {a.engines} --rounds {a.rounds} "
           f"--window {a.window:g} --calls {a.calls} --heartbeat {a.heartbeat:g}", "",
           "One page's polls (GET /api/snapshot once a second), the engine list as one object per "
           "engine (`rows`, the default) or as columns (`columns`, what the page asks for):", "",
           "| engines | engine list | controller CPU idle / with a page open (% of a core) | "
           "the dashboard thread's CPU per poll (ms) | poll answered in, median / max (ms) | "
           "poll size (kB; its engine list) |",
           "|--:|:--|--:|--:|--:|--:|"]
    for r in rows:
        for f in FORMS:
            m = r["forms"][f]
            out.append(
                f"| {r['engines']:,} | {f} | {100 * r['idle_share']:.1f} / "
                f"{100 * m['page_share']:.1f} | {1000 * m['feed_cpu']:.1f} | "
                f"{1000 * m['poll_median']:.1f} / {1000 * m['poll_max']:.1f} | "
                f"{m['bytes'] / 1000:.0f} ({m['engine_bytes'] / 1000:.0f}) |")
        if r["states"].get("idle") != r["engines"]:
            out.append(f"|  | (engine states at the end: {r['states']}) | | | | |")
    ages = "; ".join(f"{r['engines']:,} engines, {f}: {1000 * r['forms'][f]['age_median']:.0f}"
                     f" / {1000 * r['forms'][f]['age_max']:.0f}" for r in rows for f in FORMS)
    out += ["", "A poll is answered from the snapshot the dashboard's feed thread fetched last; "
            f"its age, median / max (ms): {ages}."]
    out += ["", "The two calls each refresh of the feed makes, from an ordinary client, back to back:", "",
            "| engines | statistics(): answered in (ms) / controller CPU (ms) | "
            "activity(): answered in (ms) / controller CPU (ms) |", "|--:|--:|--:|"]
    for r in rows:
        (s_ms, s_cpu), (a_ms, a_cpu) = r["calls"]["statistics"], r["calls"]["activity"]
        out.append(f"| {r['engines']:,} | {1000 * s_ms:.1f} / {1000 * s_cpu:.1f} | "
                   f"{1000 * a_ms:.1f} / {1000 * a_cpu:.1f} |")
    text = "\n".join(out)
    print(text)
    if a.write:
        (ROOT / "dashboard_cost.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
