"""Estimate pi by Monte Carlo on every engine of a cluster.

Run it on a throw-away local cluster:  taskmill run -n 4 examples/monte_carlo_pi.py
It uses the three ways to give taskmill work: StringTask (code in the engine's namespace),
MapTask (a function call), and map (a load-balanced map with a progress bar).
"""

import random
import sys

from taskmill import MapTask, StringTask, TaskClient


def darts(n: int, seed: int) -> int:
    """How many of n random darts land inside the unit quarter circle."""
    rng = random.Random(seed)
    return sum(1 for _ in range(n) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    per_batch = 50_000
    with TaskClient() as tc:
        print(f"{len(tc.engines())} engines")
        # 1. StringTask: set up each engine's namespace once and pull a value back.
        tid = tc.run(StringTask("import random, math\nready = math.pi > 3", pull="ready"))
        print("StringTask says the engine is ready:", tc.get_task_result(tid, block=True).ns.ready)
        # 2. MapTask: one function call, result returned as is.
        hits = tc.run(MapTask(darts, (per_batch, 0)), block=True)
        print(f"one MapTask: pi ~ {4 * hits / per_batch:.4f}")
        # 3. map: many calls, load balanced, with a progress bar.
        counts = tc.map(darts, [per_batch] * batches, range(batches), chunksize=4, progress=True)
        total = per_batch * batches
        print(f"map over {batches} batches ({total:,} darts): pi ~ {4 * sum(counts) / total:.5f}")
        print("queue:", tc.queue_status())


if __name__ == "__main__":
    main()
