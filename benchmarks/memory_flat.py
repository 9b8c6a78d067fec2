"""Controller memory while finished results pile up, and under a flood of futures.

    python benchmarks/memory_flat.py                 # 1,000,000 tiny tasks, durable store
    python benchmarks/memory_flat.py --n 100000      # a shorter run
    python benchmarks/memory_flat.py --n 0 --futures 50000,200000,1000000   # the flood only
    python benchmarks/memory_flat.py --n 0 --futures 0 --slow-client 200000  # a stopped client
    python benchmarks/memory_flat.py --n 0 --futures 0 --queued 200000,1000000  # all queued first

Seed-API run (`--n`): tiny tasks (`abs`) are mapped in batches and waited for; nothing is
cleared. The controller's resident memory (VmRSS) and peak (VmHWM) are read from /proc at
each checkpoint. The claim under test: results live on disk, so RSS stays flat as they
accumulate.

Futures flood (`--futures N[,N...]`), as a user would try it: `futs = [tc.submit(noop, i) for
i in range(N)]`, every `f.result()`, then `del futs; tc.clear()`. Each N runs in a fresh
process with a fresh cluster (2 engines, durable store), so that the client's figures are its
own: controller and client RSS at the start, at the peak (the controller's VmHWM; the client
holding its N finished futures) and after the clear. The claim under test: both give the
memory of a burst back.

Every task queued first (`--queued N[,N...]`): the flood, but the 2 engines start only once
every submit is stored, so that all N tasks are queued at once (a client that outruns its
engines all the way): controller RSS at the start, with all N queued (and how many of them it
holds in memory, how many wait in the store only: controller/backlog.py), its peak and after
the clear. The claim under test: the controller's memory stays under `--memory-budget`
(default 256 MiB) however many tasks are queued.

Slow client (`--slow-client N`): a client process submits N tasks that each return 1 kB (they
wait for a gate file, so that every submit is in first), is stopped with SIGSTOP, the gate
opens, and the results stream to a client that does not read. Controller RSS at the start,
once every task has finished (the client still stopped; at least 10 s, past the transport
heartbeat's timeout) and its peak, the controller's own figures of what it holds for clients
(`statistics()`: sent and unacknowledged, waiting in the store), then after SIGCONT how many
futures the client got, and how long that took. The claim under test: unread results wait in
the store, not in the controller's memory (controller/credit.py), and none is lost.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

from taskmill import Cluster


def proc_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def mib(pid: int, field: str = "VmRSS") -> float:
    return proc_kib(pid, field) / 1024


def disk_mib(db: str) -> tuple[float, float]:
    """The store's database and write-ahead log on disk (MiB); result files aside."""
    def size(path: str) -> float:
        return os.path.getsize(path) / 2**20 if os.path.exists(path) else 0.0
    return size(db), size(f"{db}-wal")


def noop(x: int) -> int:
    return x


def one_flood(n: int, db: str, queued: bool = False) -> dict:
    """The flood of `n` futures in this process; its figures (MiB) as a dict. `queued`: the
    engines start only once every task is stored (the client ran ahead of them all the way)."""
    me = os.getpid()
    with Cluster(0 if queued else 2, db=db) as c, c.client() as tc:
        pid = c.controller_pid
        if not queued:
            tc.submit(noop, 0).result()  # everything imported and warm
            tc.clear()
        gc.collect()
        row = {"n": n, "ctl_start": mib(pid), "cli_start": mib(me)}
        t0 = time.perf_counter()
        futs = [tc.submit(noop, i) for i in range(n)]
        if queued:
            stored = [f.taskid for f in futs]  # (each known once its submit is stored)
            assert len(stored) == n
            row["ctl_queued"] = mib(pid)
            stats = tc.statistics()
            row["held"], row["backlog"] = stats.get("queued_in_memory"), stats.get("backlog")
            c.add_engines(2)
        for f in futs:
            f.result()
        row["rate"] = n / (time.perf_counter() - t0)
        row["ctl_peak"], row["cli_peak"] = mib(pid, "VmHWM"), mib(me)
        row["db"], row["wal"] = disk_mib(db)
        del futs, f
        tc.clear()
        row["ctl_after"], row["cli_after"] = mib(pid), mib(me)
        status = tc.queue_status()
    assert status["succeeded"] == 0 and status["pending"] == 0, status
    return row


SLOW_CLIENT = """
import concurrent.futures as cf, sys, time
from taskmill import TaskClient

def kb(i, gate):
    import os, time
    while not os.path.exists(gate):
        time.sleep(0.01)
    return bytes([i % 251]) * 1024

conn, gate, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with TaskClient(conn, timeout=60) as tc:
    futs = [tc.submit(kb, i, gate) for i in range(n)]
    for f in futs:
        f.taskid
    print("submitted", flush=True)
    sys.stdin.readline()  # (the benchmark says when it has let this process go on)
    t0 = time.perf_counter()
    done, missing = cf.wait(futs, timeout=float(sys.argv[4]))
    right = sum(f.result() == bytes([i % 251]) * 1024 for i, f in enumerate(futs) if f.done())
    print(len(done), len(missing), right, round(time.perf_counter() - t0, 1), flush=True)
"""

HELD_KEYS = ("results_in_flight_to_clients", "result_bytes_in_flight_to_clients",
             "results_held_for_clients", "results_in_memory_for_clients",
             "results_sent_again_to_clients")


def slow_client(n: int, db: str, give_up: float) -> None:
    """The controller's memory while a stopped client's `n` results of 1 kB pile up."""
    import signal

    print(f"\n## a stopped client: {n:,} results of 1 kB stream to it (2 engines, durable "
          "store)\n")
    with tempfile.TemporaryDirectory(prefix="taskmill-slow-") as tmp, \
            Cluster(2, db=db) as c, c.client() as tc:
        pid = c.controller_pid
        script, gate = os.path.join(tmp, "client.py"), os.path.join(tmp, "gate")
        with open(script, "w") as f:
            f.write(SLOW_CLIENT)
        start = mib(pid)
        base = tc.statistics()["finished"]
        proc = subprocess.Popen([sys.executable, script, str(c.connection_file), gate, str(n),
                                 str(give_up)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline() == "submitted\n"
        os.kill(proc.pid, signal.SIGSTOP)
        until = time.monotonic() + 10  # (SIGSTOP is delivered asynchronously)
        while proc_state(proc.pid) != "T" and time.monotonic() < until:
            time.sleep(0.01)
        submitted = mib(pid)
        t0 = time.perf_counter()
        open(gate, "w").close()
        deadline = time.monotonic() + 600 + n / 100
        while (tc.statistics()["finished"] - base < n or time.perf_counter() - t0 < 10) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        stats = tc.statistics()
        piled = mib(pid)
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=give_up + 120)
        got, missing, right, secs = out.split()
        after = mib(pid)
        again = tc.statistics().get("results_sent_again_to_clients")
        print("| controller RSS (MiB) | |\n|--|--:|")
        print(f"| at the start | {start:.0f} |\n| the {n:,} tasks submitted | {submitted:.0f} |")
        print(f"| every task finished, the client stopped ({time.perf_counter() - t0:.0f} s) "
              f"| {piled:.0f} |\n| peak (VmHWM) | {mib(pid, 'VmHWM'):.0f} |")
        print(f"| after the client read them | {after:.0f} |\n")
        held = ", ".join(f"{k} {stats[k]:,}" for k in HELD_KEYS if k in stats)
        print(f"held for clients while it was stopped: {held or '(not reported by this build)'}")
        print(f"after SIGCONT: {int(got):,} futures done ({int(right):,} with the right value), "
              f"{int(missing):,} never resolved within {give_up:g} s; reading took {secs} s"
              + ("" if again is None else f"; {again:,} results were sent again (lost with "
                 "the connection the controller's ZeroMQ dropped while the client was stopped)"))


def queued_table(sizes: list[int], tmp: str) -> None:
    print("\n## every task queued first: the flood with its engines started only once every "
          "submit is stored (2 engines, durable store, one process each)\n")
    print("| N futures | controller RSS start / all queued / peak / after clear (MiB) | held in "
          "memory / in the backlog when all queued | tasks/s |")
    print("|--:|--:|--:|--:|")
    for i, n in enumerate(sizes):
        path = os.path.join(tmp, f"queued-{i}.db")
        proc = subprocess.run([sys.executable, __file__, "--one-flood", str(n), "--db", path,
                               "--queued-first"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=600 + n / 100)
        if proc.returncode != 0:
            raise SystemExit(f"the queued flood of {n:,} failed:\n{proc.stderr[-4000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        held = "-" if r["held"] is None else f"{r['held']:,} / {r['backlog']:,}"
        print(f"| {n:,} | {r['ctl_start']:.0f} / {r['ctl_queued']:.0f} / {r['ctl_peak']:.0f} / "
              f"{r['ctl_after']:.0f} | {held} | {r['rate']:,.0f} |", flush=True)


def flood_table(sizes: list[int], path: str, header: bool = True) -> None:
    if header:
        print("\n## a flood of futures: `futs = [tc.submit(noop, i) for i in range(N)]`, every "
              "`f.result()`, `del futs; tc.clear()` (2 engines, durable store, one process "
              "each)\n")
        print("| N futures | controller RSS start / peak / after clear (MiB) | client RSS start "
              "/ with futures / after (MiB) | store on disk: database / WAL (MiB) | tasks/s |")
        print("|--:|--:|--:|--:|--:|")
    for n in sizes:
        proc = subprocess.run([sys.executable, __file__, "--one-flood", str(n), "--db", path],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=600 + n / 100)
        if proc.returncode != 0:
            raise SystemExit(f"the flood of {n:,} failed:\n{proc.stderr[-4000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {n:,} | {r['ctl_start']:.0f} / {r['ctl_peak']:.0f} / {r['ctl_after']:.0f} "
              f"| {r['cli_start']:.0f} / {r['cli_peak']:.0f} / {r['cli_after']:.0f} "
              f"| {r['db']:.0f} / {r['wal']:.0f} | {r['rate']:,.0f} |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="seed-API run: results kept (0: none)")
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--futures", default="20000",
                   help="futures flood: N[,N...] futures outstanding at once (0: none)")
    p.add_argument("--slow-client", type=int, default=0,
                   help="a stopped client: N results of 1 kB pile up for it (0: none)")
    p.add_argument("--give-up", type=float, default=120.0,
                   help="seconds the slow client waits for its futures once resumed")
    p.add_argument("--db", default=None, help="store path (default: a file in a temp dir)")
    p.add_argument("--queued", default="0",
                   help="the flood with every task queued before the engines start: "
                        "N[,N...] (0: none)")
    p.add_argument("--one-flood", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--queued-first", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one_flood is not None:
        print(json.dumps(one_flood(a.one_flood, a.db, a.queued_first)))
        return 0
    sizes = [int(x) for x in a.futures.replace("_", "").split(",") if int(x) > 0]
    print(f"# controller memory with finished results piling up, and under a flood of futures "
          f"({time.strftime('%Y-%m-%d')})")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="taskmill-bench-") as tmp:
        # (a store of 10M results is ~4.5 GB: removed at the end unless --db names one)
        if a.n > 0:
            seed_run(a, a.db or os.path.join(tmp, "seed.db"))
        for i, n in enumerate(sizes):
            flood_table([n], a.db or os.path.join(tmp, f"flood-{i}.db"), header=i == 0)
        queued = [int(x) for x in a.queued.replace("_", "").split(",") if int(x) > 0]
        if queued:
            queued_table(queued, tmp)
        if a.slow_client > 0:
            slow_client(a.slow_client, a.db or os.path.join(tmp, "slow.db"), a.give_up)
    return 0


def seed_run(a: argparse.Namespace, db: str) -> None:
    checkpoints = sorted({c for c in (10_000, 100_000, 1_000_000, a.n) if c <= a.n})
    print(f"\n## the seed API: results piling up (store: {db})\n")
    print("| finished results | controller RSS (MiB) | controller peak RSS (MiB) | store on disk: "
          "database / WAL (MiB) | tasks/s so far |")
    print("|--:|--:|--:|--:|--:|")
    rows = []
    with Cluster(2, db=db) as c, c.client() as tc:
        pid = c.controller_pid
        mapper = tc.mapper(block=False)
        done = 0
        t0 = time.perf_counter()
        for mark in checkpoints:
            while done < mark:
                k = min(a.batch, mark - done)
                tc.barrier(mapper.map(abs, range(k)))
                done += k
            rss, hwm = proc_kib(pid, "VmRSS") / 1024, proc_kib(pid, "VmHWM") / 1024
            rate = done / (time.perf_counter() - t0)
            rows.append((mark, rss))
            db_mib, wal_mib = disk_mib(db)
            print(f"| {mark:,} | {rss:.1f} | {hwm:.1f} | {db_mib:.0f} / {wal_mib:.0f} "
                  f"| {rate:,.0f} |", flush=True)
        status = tc.queue_status()
    assert status["succeeded"] == a.n, status
    if len(rows) >= 2:
        growth = rows[-1][1] - rows[-2][1]
        print(f"\nRSS growth from {rows[-2][0]:,} to {rows[-1][0]:,} results: {growth:+.1f} MiB")


if __name__ == "__main__":
    raise SystemExit(main())
