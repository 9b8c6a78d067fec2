"""Futures, task options, a streaming imap and the asyncio client, on one cluster.

Run it:  taskmill run -n 2 examples/futures_and_imap.py
(or plain `python examples/futures_and_imap.py`, which starts a throw-away 2-engine cluster).
"""

import asyncio
import concurrent.futures
import itertools
import os

from taskmill import AsyncTaskClient, Cluster, StringTask, TaskClient


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def scaled(x: float, factor: float = 1.0) -> float:
    return x * factor


def demo(tc: TaskClient) -> None:
    # submit -> a concurrent.futures.Future with .taskid and .metadata
    futures = [tc.submit(collatz_steps, n) for n in range(1, 201)]
    longest = max(f.result() for f in concurrent.futures.as_completed(futures))
    print("longest Collatz run below 201:", longest, "steps")
    print("metadata of one task:", futures[0].metadata)

    # task options live apart from the function's own keywords
    f = tc.options(retries=2, timeout=30).submit(scaled, 3.0, factor=2.0)
    print("scaled:", f.result())

    # imap streams any iterable, even an endless one, in bounded memory
    for n, steps in zip(itertools.count(1),
                        tc.imap(collatz_steps, itertools.count(1), max_outstanding=5000)):
        if steps > 200:
            print("first n whose Collatz run passes 200 steps:", n)
            break

    # run_all: one copy on every engine, e.g. for set-up
    print("engine pids:", {k: r["pid"] for k, r in
                           tc.run_all(StringTask("import os; pid = os.getpid()",
                                                 pull="pid")).items()})


async def async_demo(connection: str) -> None:
    async with AsyncTaskClient(connection) as tc:
        values = await asyncio.gather(*(tc.submit(collatz_steps, n) for n in range(1, 51)))
        print("async: total steps below 51:", sum(values))
        print("async map:", await tc.map(scaled, [1, 2, 3], [10, 10, 10]))


def main() -> None:
    if os.environ.get("TASKMILL_CONNECTION"):  # under `taskmill run`
        with TaskClient() as tc:
            demo(tc)
            asyncio.run(async_demo(str(tc.connection_file)))
        return
    with Cluster(2) as cluster, cluster.client() as tc:
        demo(tc)
        asyncio.run(async_demo(str(cluster.connection_file)))


if __name__ == "__main__":
    main()
