"""Shared data: one large array that many tasks read, put once against sent with each task.

    python benchmarks/shared_data.py                     # 200 MB, 100 tasks, 2 engines/workers
    python benchmarks/shared_data.py --mb 20 --tasks 20 --peers none     # a quick look

Each system starts 2 engines/workers (processes) on this machine; then, timed: the array is
made available (taskmill `tc.put`, dask `client.scatter`, Ray `ray.put`) and `--tasks` tasks
each read one slice of it (a sum), all results gathered. taskmill's own baseline sends the
array in each task's arguments instead (`--baseline-tasks` of them, as that costs the array's
size per task: controller store and engine alike). For taskmill the bytes the controller sent
to engines as task arguments are counted (`statistics()["argument_bytes_out"]`): with `put`,
each engine gets the array once. Times are of one run on a shared machine: compare ratios.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

WORKERS = 2


def slice_sum(arr: Any, i: int) -> float:
    n = len(arr)
    return float(arr[i * n // 100:(i + 1) * n // 100].sum())


def timed(f: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def run_taskmill(arr: np.ndarray, tasks: int, baseline: int) -> list[dict[str, Any]]:
    from taskmill import Cluster

    rows = []
    with Cluster(WORKERS) as c:
        tc = c.client()
        tc.map(abs, range(-20, 0))  # (engines warm: functions and imports in place)
        before = tc.statistics()["argument_bytes_out"]

        def with_put() -> list[float]:
            ref = tc.put(arr)
            futs = [tc.submit(slice_sum, ref, i % 100) for i in range(tasks)]
            out = [f.result() for f in futs]
            ref.release()
            return out

        secs, out = timed(with_put)
        sent = tc.statistics()["argument_bytes_out"] - before
        rows.append({"system": "taskmill `tc.put` + submit(f, ref)", "tasks": tasks,
                     "seconds": secs, "per_task_ms": 1000 * secs / tasks,
                     "to_engines_mb": sent / 1e6, "check": sum(out)})

        def in_args() -> list[float]:
            futs = [tc.submit(slice_sum, arr, i % 100) for i in range(baseline)]
            out = [f.result() for f in futs]
            tc.clear()
            return out

        secs, out = timed(in_args)
        rows.append({"system": "taskmill submit(f, array) (the array in each task)",
                     "tasks": baseline, "seconds": secs, "per_task_ms": 1000 * secs / baseline,
                     "to_engines_mb": baseline * arr.nbytes / 1e6, "check": sum(out)})
    return rows


def run_dask(arr: np.ndarray, tasks: int) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        client.gather(client.map(abs, range(-20, 0)))

        def go() -> list[float]:
            fut = client.scatter(arr)
            futs = [client.submit(slice_sum, fut, i % 100, pure=False) for i in range(tasks)]
            return client.gather(futs)

        secs, out = timed(go)
    return {"system": "dask.distributed `client.scatter` + submit(f, future)", "tasks": tasks,
            "seconds": secs, "per_task_ms": 1000 * secs / tasks, "to_engines_mb": None,
            "check": sum(out)}


def run_ray(arr: np.ndarray, tasks: int) -> dict[str, Any]:
    import ray

    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, configure_logging=False)
    try:
        f = ray.remote(slice_sum)
        ray.get([f.remote(np.zeros(100), 0) for _ in range(20)])

        def go() -> list[float]:
            ref = ray.put(arr)
            return ray.get([f.remote(ref, i % 100) for i in range(tasks)])

        secs, out = timed(go)
    finally:
        ray.shutdown()
    return {"system": "Ray `ray.put` + f.remote(ref)", "tasks": tasks, "seconds": secs,
            "per_task_ms": 1000 * secs / tasks, "to_engines_mb": None, "check": sum(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=200.0, help="the array's size in MB")
    p.add_argument("--tasks", type=int, default=100, help="tasks that read it")
    p.add_argument("--baseline-tasks", type=int, default=10,
                   help="tasks of taskmill's baseline (the array sent with each)")
    p.add_argument("--peers", default="dask,ray", help="dask,ray or none")
    a = p.parse_args()
    arr = np.random.default_rng(0).random(int(a.mb * 1e6 / 8))
    rows = run_taskmill(arr, a.tasks, a.baseline_tasks)
    peers = [] if a.peers == "none" else a.peers.split(",")
    for name, run in (("dask", run_dask), ("ray", run_ray)):
        if name in peers:
            try:
                rows.append(run(arr, a.tasks))
            except ImportError as e:
                print(f"({name} skipped: {e})")
    expect = rows[0]["check"] * 1.0
    print(f"# Shared data: a {arr.nbytes / 1e6:.0f} MB float64 array read by many tasks "
          f"({time.strftime('%Y-%m-%d %H:%M')}, {WORKERS} engines/workers)\n")
    print("| system | tasks | seconds | ms per task | MB sent to engines |")
    print("|---|--:|--:|--:|--:|")
    for r in rows:
        mb = "" if r["to_engines_mb"] is None else f"{r['to_engines_mb']:,.0f}"
        print(f"| {r['system']} | {r['tasks']} | {r['seconds']:.2f} | {r['per_task_ms']:.1f} "
              f"| {mb} |")
        if r["tasks"] == a.tasks and abs(r["check"] - expect) > 1e-6 * abs(expect):
            raise SystemExit(f"{r['system']} computed {r['check']}, not {expect}")


if __name__ == "__main__":
    main()
