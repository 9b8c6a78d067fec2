"""How fast running tasks are stopped: abort and timeout, on a 2-engine local cluster.

    python benchmarks/control_latency.py [--rounds 5]

abort: from `abort(tid)` of a running task (pure-Python loop, or time.sleep) until the same
engine has finished the next task. timeout: from `run(MapTask(f, timeout=0.5))` until
`get_task_result` raises TaskTimeout (the timeout itself included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from taskmill import Cluster, MapTask, TaskTimeout


def spin() -> None:
    while True:
        pass


def sleep_long() -> None:
    time.sleep(1000)


def started(path: str, fn_name: str) -> None:
    open(path, "w").close()
    {"spin": spin, "sleep": sleep_long}[fn_name]()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    rows = []
    with Cluster(2, db=":memory:") as c, c.client() as tc:
        eid = tc.engines()[0]["engineid"]
        for name in ("spin", "sleep"):
            times = []
            for _ in range(a.rounds):
                flag = os.path.join(tempfile.mkdtemp(), "started")
                tid = tc.run(MapTask(started, (flag, name), depend={"engineid": eid}))
                while not os.path.exists(flag):
                    time.sleep(0.001)
                t = time.perf_counter()
                tc.abort(tid)
                tc.run(MapTask(abs, (-1,), depend={"engineid": eid}), block=True)
                times.append(time.perf_counter() - t)
            rows.append((f"abort of a running {name} task -> next task done on the same engine",
                         times))
        for name, fn in (("spin", spin), ("sleep", sleep_long)):
            times = []
            for _ in range(a.rounds):
                t = time.perf_counter()
                tid = tc.run(MapTask(fn, timeout=0.5))
                try:
                    tc.get_task_result(tid, block=True)
                except TaskTimeout:
                    times.append(time.perf_counter() - t)
            rows.append((f"timeout=0.5 on a {name} task -> TaskTimeout raised", times))
    print(f"# stopping running tasks ({time.strftime('%Y-%m-%d')}; command: "
          f"{' '.join([os.path.basename(sys.executable), *sys.argv])})\n")
    print("| what | median (s) | max (s) | rounds |")
    print("|---|--:|--:|--:|")
    for what, times in rows:
        print(f"| {what} | {statistics.median(times):.3f} | {max(times):.3f} | {len(times)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
