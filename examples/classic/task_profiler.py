"""How well does the task farm use its engines? Many short sleeps, timed.

Each task sleeps a random time between -t and -T seconds; the script reports the time the
sleeps add up to, the time the farm took, and the speed-up over running them one by one.

    taskmill run -n 4 examples/classic/task_profiler.py -n 64 -t 0.05 -T 0.15
"""

import argparse
import random
import time

from taskmill import client


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=64, help="the number of tasks")
    parser.add_argument("-t", type=float, default=0.05, help="the shortest task, seconds")
    parser.add_argument("-T", type=float, default=0.15, help="the longest task, seconds")
    opts = parser.parse_args()
    assert opts.T >= opts.t, "-T must not be smaller than -t"

    tc = client.TaskClient()
    engines = sum(1 for e in tc.engines() if e["state"] != "dead")
    tc.run_all(client.StringTask("import time"))  # set every engine up

    times = [random.uniform(opts.t, opts.T) for _ in range(opts.n)]
    tasks = [client.StringTask(f"time.sleep({t:f})") for t in times]
    serial = sum(times)
    print(f"executing {opts.n} tasks, totalling {serial:.1f} s, on {engines} engines")
    start = time.time()
    taskids = [tc.run(t) for t in tasks]
    tc.barrier(taskids)
    took = time.time() - start
    assert tc.queue_status()["failed"] == 0
    speedup = serial / took
    print(f"executed {serial:.1f} s of tasks in {took:.1f} s")
    print(f"speed-up {speedup:.2f}x on {engines} engines "
          f"({100 * speedup / engines:.0f}% of the ideal)")


if __name__ == "__main__":
    main()
