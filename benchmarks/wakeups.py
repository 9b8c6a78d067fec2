"""What this machine charges for the steps a lone round trip is made of, with no taskmill in it.

    python benchmarks/wakeups.py              # a markdown table
    python benchmarks/wakeups.py --n 2000     # fewer rounds (the smoke test)

A lone `submit(noop).result()` crosses four process boundaries, and on the way wakes ZeroMQ's
I/O threads and two thread hand-offs (the engine's I/O thread to its main thread, the
client's I/O thread to the caller), each a sleeping thread woken by another. On these shared
VMs what a system call and a wake-up cost moves from machine to machine (2026-12-07: the same
code ran lone round trips in 2.4 ms where the day before it took 1.2, with ProcessPool's and
the bare relay's only 20-40% slower): run this beside `compare.py` to tell a slow machine
from a slow change. Each row is the median of `--rounds` timings of `--n` round trips.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path


def syscall(n: int) -> float:
    """µs per `os.getppid()` (a system call that does nothing)."""
    t0 = time.perf_counter()
    for _ in range(n):
        os.getppid()
    return (time.perf_counter() - t0) / n * 1e6


def thread_events(n: int) -> float:
    """µs per round trip between two threads of one process (threading.Event both ways)."""
    go, back = threading.Event(), threading.Event()

    def other() -> None:
        for _ in range(n):
            go.wait()
            go.clear()
            back.set()

    t = threading.Thread(target=other, daemon=True)
    t.start()
    t0 = time.perf_counter()
    for _ in range(n):
        go.set()
        back.wait()
        back.clear()
    took = time.perf_counter() - t0
    t.join(10)
    return took / n * 1e6


def process_pipes(n: int) -> float:
    """µs per round trip between two processes over a pair of pipes (one byte each way)."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:  # (the child: echoes, then leaves without cleanup)
        for _ in range(n):
            os.read(r1, 1)
            os.write(w2, b"x")
        os._exit(0)
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(w1, b"x")
        os.read(r2, 1)
    took = time.perf_counter() - t0
    os.waitpid(pid, 0)
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    return took / n * 1e6


ECHO = """
import sys, zmq
s = zmq.Context().socket(zmq.PAIR)
s.connect(sys.argv[1])
for _ in range(int(sys.argv[2])):
    s.send(s.recv())
s.close(linger=1000)
"""


def zmq_ipc(n: int, gap: float = 0.0) -> float:
    """µs per round trip of a small message between two processes over ZeroMQ PAIR sockets on
    ipc:// (each way: the sender's I/O thread, the receiver's I/O thread, the receiver); with
    `gap` seconds of idleness before each (the timing leaves the gap out)."""
    import zmq

    folder = tempfile.mkdtemp(prefix="taskmill-wakeups-")
    url = f"ipc://{folder}/pair"
    ctx = zmq.Context()
    s = ctx.socket(zmq.PAIR)
    s.bind(url)
    child = subprocess.Popen([sys.executable, "-c", ECHO, url, str(n + 10)])
    for _ in range(10):  # (connected and warm)
        s.send(b"x")
        s.recv()
    took = 0.0
    for _ in range(n):
        if gap:
            time.sleep(gap)
        t0 = time.perf_counter()
        s.send(b"x")
        s.recv()
        took += time.perf_counter() - t0
    child.wait(30)
    s.close(0)
    ctx.term()
    Path(folder, "pair").unlink(missing_ok=True)
    os.rmdir(folder)
    return took / n * 1e6


def median_of(fn: Callable[[int], float], n: int, rounds: int) -> float:
    return statistics.median(fn(n) for _ in range(rounds))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="round trips per timing")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    n, rounds = a.n, a.rounds
    rows = [
        ("a system call (`os.getppid`)", median_of(syscall, n * 10, rounds)),
        ("two threads, threading.Event each way", median_of(thread_events, n, rounds)),
        ("two processes, a pipe each way", median_of(process_pipes, n, rounds)),
        ("two processes, ZeroMQ PAIR on ipc://", median_of(zmq_ipc, n // 4, rounds)),
        ("the same after 1 ms idle each time",
         median_of(lambda k: zmq_ipc(k, 0.001), max(1, n // 40), rounds)),
    ]
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    print(f"# Wake-ups on this machine ({stamp} UTC; load {os.getloadavg()[0]:.2f}; "
          f"median of {rounds})\n")
    print("| step | µs per round trip (a call, for the first row) |")
    print("|---|--:|")
    for what, us in rows:
        print(f"| {what} | {us:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
