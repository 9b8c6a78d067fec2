"""Controller memory while clients are killed with kill -9, one after another.

    python benchmarks/killed_clients.py                          # 20 rounds of 10,000 futures
    python benchmarks/killed_clients.py --forget-after inf       # never forget (as before)
    PYTHONPATH=/path/to/old/src python benchmarks/killed_clients.py --forget-after none
                                                   # a controller without the flag at all

Each round, a client process submits `--futures` tasks as futures (each watched: its results
would stream to it), and is killed with SIGKILL as soon as the controller has acknowledged
them (so it never says `bye`, and never reads a result). The tasks then finish on 2 engines;
the round ends once all have finished and `--forget-after` seconds (plus one) have passed.
The controller's resident memory (VmRSS, from /proc) is read after each round, with what it
holds for clients (`statistics()`). The claim under test: a controller that forgets silent
clients (controller/clients.py) stays flat, one that does not grows by what it queued for
each dead client.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from taskmill import TaskClient
from taskmill.connection import new_connection_info, write_connection_file

CLIENT = """
import sys
from taskmill import TaskClient

def noop(i):
    return i

with TaskClient(sys.argv[1], timeout=60) as tc:
    futs = [tc.submit(noop, i) for i in range(int(sys.argv[2]))]
    futs[-1].taskid  # (every submit acknowledged)
    print("submitted", flush=True)
    sys.stdin.read()  # (killed here)
"""


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--futures", type=int, default=10_000)
    ap.add_argument("--forget-after", default="2",
                    help="the controller's --forget-clients-after (inf: never; none: the flag "
                         "is not given, for a controller that does not know it)")
    args = ap.parse_args()
    wait = 0.0 if args.forget_after in ("none", "inf") else float(args.forget_after)
    flag = [] if args.forget_after == "none" else ["--forget-clients-after", args.forget_after]
    taskmill = [sys.executable, "-m", "taskmill"]
    with tempfile.TemporaryDirectory() as d:
        conn = write_connection_file(Path(d) / "conn.json", new_connection_info())
        log = open(Path(d) / "log", "ab")  # noqa: SIM115
        ctl = subprocess.Popen([*taskmill, "controller", "--connection-file", str(conn),
                                "--db", str(Path(d) / "tasks.db"), "--no-dashboard", *flag],
                               stdout=log, stderr=subprocess.STDOUT)
        engines = [subprocess.Popen([*taskmill, "engine", "--no-replace", "--connection-file", str(conn)],
                                    stdout=log, stderr=subprocess.STDOUT) for _ in range(2)]
        script = Path(d) / "client.py"
        script.write_text(CLIENT)
        try:
            with TaskClient(conn, timeout=60) as tc:
                wait_for(lambda: len(tc.engines()) == 2, 60, "the engines")
                print(f"command: {' '.join(sys.argv)} (pid {os.getpid()})")
                print(f"controller --forget-clients-after: {args.forget_after}; "
                      f"{args.futures} futures a round\n")
                print("| round | controller RSS MiB | clients | forgotten | results held "
                      "| in flight |")
                print("|---:|---:|---:|---:|---:|---:|")
                start = rss_mib(ctl.pid)
                first = start  # (after round 1: the store's cache and the allocator warmed up)
                print(f"| 0 | {start:.1f} | | | | |")
                for r in range(1, args.rounds + 1):
                    finished = tc.statistics()["finished"]
                    client = subprocess.Popen(
                        [sys.executable, str(script), str(conn), str(args.futures)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    assert client.stdout.readline() == "submitted\n"
                    client.kill()
                    client.wait()
                    killed = time.monotonic()
                    wait_for(lambda f=finished: tc.statistics()["finished"] - f
                             >= args.futures, 300, "the round's tasks")
                    # (this observer speaks meanwhile: with a --forget-after as short as its
                    # 1-s pings, a ping a little late had it forgotten too)
                    while time.monotonic() < killed + wait + 1.0:
                        tc.statistics()
                        time.sleep(0.1)
                    if wait:
                        wait_for(lambda r=r: tc.statistics().get("clients_forgotten", 0)
                                 >= r, 60, "the killed client to be forgotten")
                    s = tc.statistics()
                    print(f"| {r} | {rss_mib(ctl.pid):.1f} | {s.get('clients', '-')} | "
                          f"{s.get('clients_forgotten', '-')} | "
                          f"{s['results_held_for_clients']} | "
                          f"{s['results_in_flight_to_clients']} |", flush=True)
                    if r == 1:
                        first = rss_mib(ctl.pid)
                end = rss_mib(ctl.pid)
                print(f"\ngrowth over {args.rounds} rounds: {end - start:+.1f} MiB "
                      f"(from the end of round 1: {end - first:+.1f} MiB)")
        finally:
            for p in engines:
                p.kill()
                p.wait()
            ctl.terminate()
            ctl.wait(30)
            log.close()


if __name__ == "__main__":
    main()
