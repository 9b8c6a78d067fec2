#!/usr/bin/env python3
"""Compare taskmill with other Python task farms, every one with 2 workers, in one run.

Peers: concurrent.futures.ProcessPoolExecutor(2) and multiprocessing.Pool(2) always; ipyparallel
(`ipp.Cluster(n=2)`, LoadBalancedView), dask.distributed (`LocalCluster(n_workers=2,
threads_per_worker=1, processes=True)`) and Ray (`ray.init(num_cpus=2)`, remote functions) when
they are importable (`pip install -e '.[bench]'`).
And, as the floor no task farm can go below, a bare ZeroMQ relay: a broker and 2 workers in
Python loops, pickling but not signing, storing or scheduling (`RelayPeer`).

Metrics (sizes set by the flags below; `--quick` makes them tiny):

1. submit+wait: N no-op tasks submitted one by one, then every result gathered (tasks/s);
   taskmill through `submit` futures, and again through the seed API (`run(MapTask)`, then
   `barrier`, `get_task_result`): `run` takes its int taskid from a block leased to the
   client and sends its task in a batch, and the barrier brings the results along;
2. sequential latency: round trips of one no-op task (median and p99, ms);
3. payload: round trips of a bytes argument returned unchanged, and of a float64 numpy array
   (median ms);
4. map of no-op items: taskmill's default `map` batching against each peer's batched map;
5. startup: from the start call until both workers have each answered a task (s);
6. taskmill only: controller CPU time per task and the controller's peak RSS.

The markdown report goes to stdout (progress to stderr); `--write` also saves it to
benchmarks/results.md. A peer that is not installed is reported as such, and a measurement that
fails or times out is reported in its cell: neither stops the run.

    python benchmarks/compare.py                 # full sizes, every installed peer
    python benchmarks/compare.py --quick --peers none   # tiny sizes, taskmill + stdlib only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import logging
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKERS = 2
RESULTS_MD = Path(__file__).resolve().parent / "results.md"


# -- task functions --------------------------------------------------------------------------
# Module-level and self-contained: nothing but their arguments and what they import inside
# themselves. multiprocessing pickles them by reference (a `__main__` attribute, found again in
# forked or re-imported children); taskmill and dask pickle `__main__` functions by value with
# cloudpickle; ipyparallel rebuilds a function's code in the engine's own namespace, where this
# module's globals do not exist (hence the imports inside the bodies).


def noop(*args: Any, **kwargs: Any) -> None:
    """A task that does nothing."""
    return None


def echo(x: Any) -> Any:
    """A task that returns its argument unchanged."""
    return x


def noop_batch(items: list[Any]) -> Any:
    """`noop` over a batch of items, for peers whose map does not batch by itself (dask).

    The list of results comes back inside one object: dask.distributed serialises a returned
    plain list element by element (about 50 µs per element here, seconds for a 100,000-item
    map), and pickles any other object whole.
    """
    from types import SimpleNamespace

    return SimpleNamespace(values=[None for _ in items])


def pid_probe(delay: float) -> int:
    """Sleep a little, so a second probe sent meanwhile goes to another worker; return the pid."""
    import os
    import time

    time.sleep(delay)
    return os.getpid()


# -- measurement helpers -----------------------------------------------------------------------
class MetricTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise MetricTimeout in the main thread after `seconds` (SIGALRM); 0 means no limit."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise MetricTimeout(f"timed out after {seconds:g}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def p99(samples: list[float]) -> float:
    """The 99th percentile, nearest rank."""
    s = sorted(samples)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


def progress(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is state
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status (VmHWM, VmRSS...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"no {key} in /proc/{pid}/status")


# -- peers -------------------------------------------------------------------------------------
class Peer:
    """One system under test. Subclasses implement the verbs; `measure_peer` times them."""

    name = "?"
    map_method = ""

    def start(self) -> None:
        raise NotImplementedError

    def submit(self, func: Callable[..., Any], *args: Any) -> Any:
        """Submit one task without waiting; return a handle for `gather`."""
        raise NotImplementedError

    def gather(self, handles: list[Any]) -> list[Any]:
        raise NotImplementedError

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """One round trip: submit one task and wait for its result."""
        return self.gather([self.submit(func, *args)])[0]

    def map(self, n: int) -> list[Any]:
        raise NotImplementedError

    def tidy(self) -> None:
        """Untimed housekeeping after a measured step (taskmill drops stored results)."""

    def stop(self) -> None:
        raise NotImplementedError

    # Hooks for taskmill's controller counters; peers have none.
    def cpu_mark(self) -> float | None:
        return None

    def peak_rss_kib(self) -> int | None:
        return None


def peer_chunksize(n: int) -> int:
    """The chunk size used for the peers' batched maps: Pool.map's own default (4 per worker)."""
    return max(1, math.ceil(n / (WORKERS * 4)))


class TaskmillPeer(Peer):
    name = "taskmill"
    map_method = "`client.map(noop, items)` with its default (automatic) chunksize"

    def __init__(self, heartbeat: float, db: str | None = None) -> None:
        self.heartbeat = heartbeat
        self.db = db
        self.cluster: Any = None
        self.client: Any = None
        self._done: list[int] = []

    def start(self) -> None:
        import taskmill

        self.MapTask = taskmill.MapTask
        self.cluster = taskmill.Cluster(WORKERS, heartbeat=self.heartbeat, db=self.db)
        self.cluster.start()
        self.client = self.cluster.client()

    def submit(self, func: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(func, *args)

    def gather(self, handles: list[Any]) -> list[Any]:
        out = [f.result() for f in handles]
        self._done.extend(f.taskid for f in handles)
        return out

    def submit_seed(self, func: Callable[..., Any], *args: Any) -> int:
        """The seed API: `run(MapTask)` returns the int taskid (from a leased block)."""
        return self.client.run(self.MapTask(func, args))

    def gather_seed(self, handles: list[int]) -> list[Any]:
        self.client.barrier(handles)
        out = [self.client.get_task_result(t, block=True) for t in handles]
        self._done.extend(handles)
        return out

    def map(self, n: int) -> list[Any]:
        return self.client.map(noop, range(n))

    def tidy(self) -> None:
        # Results stay in the controller until cleared (SPEC: get_task_result may be called
        # again); a long-running user clears them, and so do we, outside the timed part.
        if self._done:
            self.client.clear(self._done)
            self._done = []

    def cpu_mark(self) -> float | None:
        return proc_cpu_seconds(self.cluster.controller_pid)

    def peak_rss_kib(self) -> int | None:
        return proc_status_kib(self.cluster.controller_pid, "VmHWM")

    def controller_finished(self) -> int:
        return int(self.client.statistics()["finished"])

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.stop()


class ProcessPoolPeer(Peer):
    name = "ProcessPoolExecutor"

    def __init__(self) -> None:
        self.ex: Any = None

    def start(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.ex = ProcessPoolExecutor(WORKERS)

    def submit(self, func: Callable[..., Any], *args: Any) -> Any:
        return self.ex.submit(func, *args)

    def gather(self, handles: list[Any]) -> list[Any]:
        return [f.result() for f in handles]

    def map(self, n: int) -> list[Any]:
        cs = peer_chunksize(n)
        self.map_method = f"`executor.map(noop, items, chunksize={cs})`"
        return list(self.ex.map(noop, range(n), chunksize=cs))

    def stop(self) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=True, cancel_futures=True)


class PoolPeer(Peer):
    name = "multiprocessing.Pool"
    map_method = "`pool.map(noop, items)` with its default chunksize (len / (4 × workers))"

    def __init__(self) -> None:
        self.pool: Any = None

    def start(self) -> None:
        import multiprocessing

        self.pool = multiprocessing.Pool(WORKERS)

    def submit(self, func: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(func, args)

    def gather(self, handles: list[Any]) -> list[Any]:
        return [r.get() for r in handles]

    def map(self, n: int) -> list[Any]:
        return self.pool.map(noop, range(n))

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _relay_broker(client_port: int, worker_port: int) -> None:
    """The relay's broker: tasks from clients to workers in turn, results back to their client."""
    import zmq

    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for sock, port in ((front, client_port), (back, worker_port)):
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind(f"tcp://127.0.0.1:{port}")
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    workers: list[bytes] = []
    turn = 0
    while True:
        events = dict(poller.poll())
        if back in events:
            msg = back.recv_multipart(copy=False)
            if len(msg) == 2:  # [worker, b"ready"]
                workers.append(msg[0].bytes)
            else:  # [worker, client, tid, *result]
                front.send_multipart(msg[1:], copy=False)
        if front in events and workers:
            msg = front.recv_multipart(copy=False)  # [client, tid, *task]
            back.send_multipart([workers[turn % len(workers)], *msg], copy=False)
            turn += 1


def _relay_worker(worker_port: int) -> None:
    import pickle

    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{worker_port}")
    sock.send(b"ready")
    while True:
        client, tid, head, *buffers = sock.recv_multipart(copy=False)
        func, args = pickle.loads(head.buffer, buffers=[b.buffer for b in buffers])
        out: list[Any] = []
        head = pickle.dumps(func(*args), protocol=5, buffer_callback=out.append)
        sock.send_multipart([client, tid, head, *out], copy=False)


class RelayPeer(Peer):
    """The transport's floor, not a task farm: a bare ZeroMQ broker and 2 worker processes in
    Python loops, pickle protocol 5 with out-of-band buffers, no signatures, no store, no
    scheduling beyond taking turns, no retries. What taskmill costs above plain messaging."""

    name = "ZeroMQ relay (floor)"

    def __init__(self) -> None:
        self.procs: list[Any] = []
        self.ctx: Any = None
        self.sock: Any = None
        self._next = 0
        self._results: dict[int, Any] = {}

    def start(self) -> None:
        import multiprocessing
        import socket

        import zmq

        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        mp = multiprocessing.get_context("fork")
        self.procs = [mp.Process(target=_relay_broker, args=ports, daemon=True)]
        self.procs += [mp.Process(target=_relay_worker, args=(ports[1],), daemon=True)
                       for _ in range(WORKERS)]
        for proc in self.procs:
            proc.start()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(f"tcp://127.0.0.1:{ports[0]}")

    def submit(self, func: Callable[..., Any], *args: Any) -> Any:
        import pickle

        tid = self._next
        self._next += 1
        out: list[Any] = []
        head = pickle.dumps((func, args), protocol=5, buffer_callback=out.append)
        self.sock.send_multipart([tid.to_bytes(8, "little"), head, *out], copy=False)
        return tid

    def gather(self, handles: list[Any]) -> list[Any]:
        import pickle

        for tid in handles:
            while tid not in self._results:
                got, head, *buffers = self.sock.recv_multipart(copy=False)
                self._results[int.from_bytes(got.bytes, "little")] = pickle.loads(
                    head.buffer, buffers=[b.buffer for b in buffers])
        return [self._results.pop(tid) for tid in handles]

    def map(self, n: int) -> list[Any]:
        cs = peer_chunksize(n)
        self.map_method = (f"batches of {cs} items, each one task of `noop_batch` "
                           "(the relay has no map of its own)")
        batches = [list(range(i, min(n, i + cs))) for i in range(0, n, cs)]
        out: list[Any] = []
        for part in self.gather([self.submit(noop_batch, b) for b in batches]):
            out.extend(part.values)
        return out

    def stop(self) -> None:
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
        for proc in self.procs:
            proc.terminate()
            proc.join(10)


class IpyparallelPeer(Peer):
    name = "ipyparallel"
    module = "ipyparallel"

    def __init__(self) -> None:
        self.cluster: Any = None
        self.rc: Any = None
        self.view: Any = None
        self._ipythondir: str | None = None
        self._old_ipythondir: str | None = None

    def start(self) -> None:
        import ipyparallel as ipp

        # A throw-away profile: leave the user's ~/.ipython alone.
        self._ipythondir = tempfile.mkdtemp(prefix="taskmill-bench-ipython-")
        self._old_ipythondir = os.environ.get("IPYTHONDIR")
        os.environ["IPYTHONDIR"] = self._ipythondir
        self.cluster = ipp.Cluster(n=WORKERS, log_level=logging.WARNING)
        self.rc = self.cluster.start_and_connect_sync()
        self.view = self.rc.load_balanced_view()

    def submit(self, func: Callable[..., Any], *args: Any) -> Any:
        return self.view.apply_async(func, *args)

    def gather(self, handles: list[Any]) -> list[Any]:
        self.rc.wait(handles)
        return [ar.get() for ar in handles]

    def map(self, n: int) -> list[Any]:
        cs = peer_chunksize(n)
        self.map_method = f"`LoadBalancedView.map_sync(noop, items, chunksize={cs})`"
        return list(self.view.map_sync(noop, range(n), chunksize=cs))

    def stop(self) -> None:
        try:
            if self.rc is not None:
                self.rc.close()
            if self.cluster is not None:
                self.cluster.stop_cluster_sync()
        finally:
            if self._old_ipythondir is None:
                os.environ.pop("IPYTHONDIR", None)
            else:
                os.environ["IPYTHONDIR"] = self._old_ipythondir
            if self._ipythondir:
                shutil.rmtree(self._ipythondir, ignore_errors=True)


class DaskPeer(Peer):
    name = "dask.distributed"
    module = "distributed"

    def __init__(self) -> None:
        self.cluster: Any = None
        self.client: Any = None

    def start(self) -> None:
        from distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(logging.ERROR)
        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None,
                                    silence_logs=logging.ERROR)
        self.client = Client(self.cluster)

    def submit(self, func: Callable[..., Any], *args: Any) -> Any:
        # pure=False: every call is a new task (no deduplication, no hashing of the arguments).
        return self.client.submit(func, *args, pure=False)

    def gather(self, handles: list[Any]) -> list[Any]:
        return self.client.gather(handles)

    def map(self, n: int) -> list[Any]:
        cs = peer_chunksize(n)
        self.map_method = (f"`client.map(noop_batch, batches, pure=False)` over batches of {cs} "
                           "items, then `client.gather`; each batch's results come back in one "
                           "object (a returned plain list is serialised per element by dask, "
                           "about 50 µs each)")
        items = list(range(n))
        batches = [items[i:i + cs] for i in range(0, n, cs)]
        futures = self.client.map(noop_batch, batches, pure=False)
        return [x for part in self.client.gather(futures) for x in part.values]

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class RayPeer(Peer):
    name = "Ray"
    module = "ray"

    def __init__(self) -> None:
        self.ray: Any = None
        self._remote: dict[Callable[..., Any], Any] = {}

    def start(self) -> None:
        import ray

        self.ray = ray
        # 2 CPUs: Ray starts a worker per CPU on demand and runs one task per worker at a time.
        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=False)

    def _fn(self, func: Callable[..., Any]) -> Any:
        fn = self._remote.get(func)
        if fn is None:
            fn = self._remote[func] = self.ray.remote(func)
        return fn

    def submit(self, func: Callable[..., Any], *args: Any) -> Any:
        return self._fn(func).remote(*args)

    def gather(self, handles: list[Any]) -> list[Any]:
        return self.ray.get(handles)

    def map(self, n: int) -> list[Any]:
        cs = peer_chunksize(n)
        self.map_method = (f"remote `noop_batch` over batches of {cs} items, then `ray.get` "
                           "(Ray has no map of its own over remote functions)")
        items = list(range(n))
        refs = [self._fn(noop_batch).remote(items[i:i + cs]) for i in range(0, n, cs)]
        return [x for part in self.ray.get(refs) for x in part.values]

    def stop(self) -> None:
        if self.ray is not None:
            self.ray.shutdown()


OPTIONAL_PEERS: dict[str, type[Peer]] = {"ipyparallel": IpyparallelPeer, "dask": DaskPeer,
                                         "ray": RayPeer}


# -- the measurements --------------------------------------------------------------------------
@dataclass
class Sizes:
    tasks: int
    latency: int
    payload: int
    payload_bytes: int
    array_bytes: int
    map_items: int
    probe_delay: float = 0.02


@dataclass
class Metric:
    key: str
    label: str
    better: str  # "higher", "lower", or "" (no ratio)
    ratio: bool = True


def metric_rows(sz: Sizes) -> list[Metric]:
    return [
        Metric("startup", f"startup: start call → {WORKERS} workers each answered a task (s)",
               "lower"),
        Metric("submit", f"submit+wait: {sz.tasks:,} no-op tasks one by one, then gather (tasks/s)",
               "higher"),
        Metric("submit_seed", f"taskmill seed API: {sz.tasks:,} × `run(MapTask)`, then "
               "`get_task_result` (tasks/s)", "higher", ratio=False),
        Metric("lat_med", f"sequential latency, no-op round trip, median of {sz.latency} (ms)",
               "lower"),
        Metric("lat_p99", f"sequential latency, no-op round trip, p99 of {sz.latency} (ms)",
               "lower"),
        Metric("bytes", f"payload: {human_bytes(sz.payload_bytes)} bytes echoed, median of "
               f"{sz.payload} (ms)", "lower"),
        Metric("array", f"payload: {human_bytes(sz.array_bytes)} float64 ndarray echoed, median of "
               f"{sz.payload} (ms)", "lower"),
        Metric("map", f"map of {sz.map_items:,} no-op items, best batching (items/s)", "higher"),
        Metric("cpu_task", "taskmill controller CPU per task during submit+wait (µs/task)",
               "lower", ratio=False),
        Metric("cpu_map", "taskmill controller CPU per map item (µs/item)", "lower", ratio=False),
        Metric("rss", "taskmill controller peak RSS, VmHWM (MiB)", "lower", ratio=False),
    ]


def human_bytes(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000} MB"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000} kB"
    return f"{n} B"


@dataclass
class PeerResult:
    name: str
    values: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    status: str = ""  # "" when measured; else why nothing was ("not installed", ...)
    map_method: str = ""


def short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= 90 else text[:87] + "..."


STEPS = ("submit", "submit_seed", "latency", "bytes", "array", "map")  # what --only picks from


def measure_peer(peer: Peer, sz: Sizes, limit: float,
                 only: frozenset[str] | None = None) -> PeerResult:
    """Every step (startup first, always), or with `only` those of STEPS it names."""
    res = PeerResult(peer.name)

    def step(key: str | tuple[str, ...], fn: Callable[[], Any]) -> bool:
        keys = (key,) if isinstance(key, str) else key
        name = "latency" if keys[0] == "lat_med" else keys[0]
        if only is not None and name in STEPS and name not in only:
            for k in keys:
                res.errors[k] = "not measured (--only)"
            return False
        progress(f"{peer.name}: {keys[0]}")
        try:
            with time_limit(limit):
                fn()
            return True
        except BaseException as e:  # noqa: BLE001 - reported in the cell, never fatal
            if isinstance(e, KeyboardInterrupt):
                raise
            for k in keys:
                if k not in res.values:
                    res.errors[k] = "error: " + short_error(e)
            progress(f"{peer.name}: {keys[0]} failed: {short_error(e)}")
            return False
        finally:
            with contextlib.suppress(BaseException):
                with time_limit(limit):
                    peer.tidy()

    def startup() -> None:
        t0 = time.perf_counter()
        peer.start()
        seen: set[Any] = set()
        while len(seen) < WORKERS:
            handles = [peer.submit(pid_probe, sz.probe_delay) for _ in range(WORKERS)]
            seen.update(peer.gather(handles))
        res.values["startup"] = time.perf_counter() - t0

    if not step("startup", startup):
        for m in ("submit", "submit_seed", "lat_med", "lat_p99", "bytes", "array", "map"):
            res.errors[m] = "not measured: the start failed"
        with contextlib.suppress(BaseException), time_limit(limit):
            peer.stop()
        return res

    def submit_wait() -> None:
        cpu0 = peer.cpu_mark()
        t0 = time.perf_counter()
        handles = [peer.submit(noop) for _ in range(sz.tasks)]
        out = peer.gather(handles)
        dt = time.perf_counter() - t0
        cpu1 = peer.cpu_mark()
        if len(out) != sz.tasks or any(x is not None for x in out):
            raise AssertionError("wrong results")
        res.values["submit"] = sz.tasks / dt
        if cpu0 is not None and cpu1 is not None:
            res.values["cpu_task"] = (cpu1 - cpu0) / sz.tasks * 1e6

    def submit_wait_seed() -> None:
        assert isinstance(peer, TaskmillPeer)
        t0 = time.perf_counter()
        handles = [peer.submit_seed(noop) for _ in range(sz.tasks)]
        out = peer.gather_seed(handles)
        dt = time.perf_counter() - t0
        if len(out) != sz.tasks or any(x is not None for x in out):
            raise AssertionError("wrong results")
        res.values["submit_seed"] = sz.tasks / dt

    def round_trips(n: int, arg: Any, same: Callable[[Any, Any], bool]) -> list[float]:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            if arg is None:
                out = peer.call(noop)
            else:
                out = peer.call(echo, arg)
            times.append(time.perf_counter() - t0)
            if i == 0 and not same(out, arg):
                raise AssertionError("the echoed value differs from the one sent")
            peer.tidy()
        return times

    def latency() -> None:
        times = round_trips(sz.latency, None, lambda a, b: a is None)
        res.values["lat_med"] = statistics.median(times) * 1e3
        res.values["lat_p99"] = p99(times) * 1e3

    def payload_bytes() -> None:
        data = os.urandom(sz.payload_bytes)
        res.values["bytes"] = statistics.median(round_trips(sz.payload, data, bytes.__eq__)) * 1e3

    def payload_array() -> None:
        try:
            import numpy as np
        except ImportError:
            res.errors["array"] = "numpy not installed"
            return
        arr = np.random.default_rng(0).random(max(1, sz.array_bytes // 8))
        times = round_trips(sz.payload, arr, lambda a, b: bool(np.array_equal(a, b)))
        res.values["array"] = statistics.median(times) * 1e3

    def do_map() -> None:
        cpu0 = peer.cpu_mark()
        t0 = time.perf_counter()
        out = peer.map(sz.map_items)
        dt = time.perf_counter() - t0
        cpu1 = peer.cpu_mark()
        if len(out) != sz.map_items or any(x is not None for x in out):
            raise AssertionError("wrong map results")
        res.values["map"] = sz.map_items / dt
        if cpu0 is not None and cpu1 is not None:
            res.values["cpu_map"] = (cpu1 - cpu0) / sz.map_items * 1e6

    step(("submit", "cpu_task"), submit_wait)
    if isinstance(peer, TaskmillPeer):
        step("submit_seed", submit_wait_seed)
    step(("lat_med", "lat_p99"), latency)
    step("bytes", payload_bytes)
    step("array", payload_array)
    step(("map", "cpu_map"), do_map)
    if isinstance(peer, TaskmillPeer):
        step("rss", lambda: res.values.__setitem__("rss", peer.peak_rss_kib() / 1024))
    res.map_method = peer.map_method
    progress(f"{peer.name}: stop")
    try:
        with time_limit(limit):
            peer.stop()
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        progress(f"{peer.name}: stop failed: {short_error(e)}")
    return res


# -- the report --------------------------------------------------------------------------------
def fmt_value(key: str, v: float) -> str:
    if key in ("submit", "map"):
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def cell(r: PeerResult, key: str) -> str:
    if r.status:
        return r.status
    if key in r.values:
        return fmt_value(key, r.values[key])
    return r.errors.get(key, "—")


def ratio_cell(base: PeerResult, r: PeerResult, m: Metric) -> str:
    if not m.ratio or r.status:
        return ""
    a, b = base.values.get(m.key), r.values.get(m.key)
    if a is None or b is None or a == 0:
        return ""
    return f"{b / a:.3g}×"


def bytecode_line() -> str:
    """How many of taskmill's modules have up-to-date bytecode (.pyc): each process compiles
    the others from source at its start (PYTHONDONTWRITEBYTECODE=1 keeps them uncompiled), and
    the startup row pays that in the controller, each engine and this process."""
    spec = importlib.util.find_spec("taskmill")
    if spec is None or not spec.submodule_search_locations:
        return "- taskmill bytecode: taskmill not found"
    fresh = total = 0
    for src in Path(list(spec.submodule_search_locations)[0]).rglob("*.py"):
        total += 1
        with contextlib.suppress(OSError, ValueError):
            head = Path(importlib.util.cache_from_source(str(src))).read_bytes()[:16]
            st = src.stat()
            # (magic, flags 0 = checked by time and size, source mtime, source size)
            fresh += (head[:4] == importlib.util.MAGIC_NUMBER and head[4:8] == bytes(4)
                      and int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
                      and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF)
    note = (", PYTHONDONTWRITEBYTECODE set" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "")
    return (f"- taskmill bytecode: {fresh} of {total} modules have an up-to-date .pyc{note} "
            "(each process compiles the others at its start: the startup row pays it)")


def machine_lines() -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    load = ""
    with contextlib.suppress(OSError):
        load = ", load average at start " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: nproc {usable} (os.cpu_count {os.cpu_count()}), {model}, "
        f"{platform.system()} {platform.release()}{load}",
        f"- python: {platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})",
        bytecode_line(),
    ]


def versions() -> str:
    out = []
    for mod in ("taskmill", "ipyparallel", "distributed", "numpy", "zmq"):
        try:
            out.append(f"{mod} {importlib.import_module(mod).__version__}")
        except Exception:  # noqa: BLE001
            continue
    return ", ".join(out)


def report(results: list[PeerResult], sz: Sizes, args: argparse.Namespace,
           header: list[str], wall: float) -> str:
    base = results[0]
    peers = results[1:]
    cols = ["metric", "better", "taskmill"]
    for r in peers:
        cols += [r.name, f"{r.name} / taskmill"]
    lines = ["# taskmill compared with its peers", "", *header,
             f"- versions: {versions()}",
             f"- command: `{shlex.join(getattr(sys, 'orig_argv', [sys.executable, *sys.argv]))}`",
             f"- workers: {WORKERS} engines/worker processes for every system; taskmill "
             f"heartbeat {args.heartbeat:g}s, task store "
             f"{'taskmill default (Cluster(db=None))' if args.taskmill_db is None else repr(args.taskmill_db)}; "
             f"per-measurement time limit {args.timeout:g}s; "
             f"whole run {wall:.0f}s",
             "",
             "| " + " | ".join(cols) + " |",
             "|" + "|".join(["---", ":-:", "--:"] + ["--:", "--:"] * len(peers)) + "|"]
    for m in metric_rows(sz):
        row = [m.label, "higher ↑" if m.better == "higher" else "lower ↓", cell(base, m.key)]
        for r in peers:
            if not m.ratio and not r.status:
                row += ["n/a", ""]
            else:
                row += [cell(r, m.key), ratio_cell(base, r, m)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "**Reading the ratios:** each ratio is the peer's value ÷ taskmill's value. On rows marked "
        "*higher ↑* (throughput) a ratio above 1 means the peer is faster than taskmill; on rows "
        "marked *lower ↓* (times) a ratio above 1 means taskmill is faster than the peer.",
        "",
        "Ratios, peer ÷ taskmill, with who wins each metric:",
        "",
    ]
    if not peers:
        lines.append("- (no peer was measured)")
    for r in peers:
        if r.status:
            lines.append(f"- {r.name}: {r.status}")
            continue
        parts = []
        for m in metric_rows(sz):
            rc = ratio_cell(base, r, m)
            if not rc:
                continue
            q = r.values[m.key] / base.values[m.key]
            peer_better = q > 1 if m.better == "higher" else q < 1
            winner = r.name if peer_better else "taskmill"
            parts.append(f"{m.key} {rc} ({winner} better)")
        lines.append(f"- {r.name}: " + ("; ".join(parts) if parts else "no ratio (no values)"))
    lines += ["", "How each system was driven:", ""]
    lines.append("- taskmill: submit = `client.submit(f, *args)` (a TaskFuture; submits made while "
                 "one is unanswered travel together); gather = `future.result()` each; the seed "
                 "row: `client.run(MapTask(f, args))` per task, then `client.barrier(tids)` and "
                 "`client.get_task_result(tid, block=True)` per id; each stored result is "
                 "cleared after a measured step, untimed")
    drive = {
        "ProcessPoolExecutor": "submit = `executor.submit`; gather = `future.result()` each",
        RelayPeer.name: "a bare ZeroMQ broker (ROUTER/ROUTER) and 2 DEALER workers, Python loops, "
                        "pickle protocol 5 with out-of-band buffers; no signatures, no store, no "
                        "scheduling beyond taking turns: the transport's floor, not a peer one "
                        "would use",
        "multiprocessing.Pool": "submit = `pool.apply_async`; gather = `result.get()` each",
        "ipyparallel": "`ipp.Cluster(n=2).start_and_connect_sync()`, LoadBalancedView; submit = "
                       "`view.apply_async`; gather = `client.wait(ars)` then `ar.get()` each",
        "dask.distributed": "`LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`; "
                            "submit = `client.submit(f, *args, pure=False)`; gather = "
                            "`client.gather(futures)`",
        RayPeer.name: "`ray.init(num_cpus=2)`; submit = `ray.remote(f).remote(*args)` (the remote "
                      "function made once per function); gather = `ray.get(refs)`",
    }
    for r in peers:
        lines.append(f"- {r.name}: {drive.get(r.name, '')}")
    lines += ["", "Map method of each system:", ""]
    for r in results:
        lines.append(f"- {r.name}: {r.map_method or r.status or '—'}")
    lines += [
        "",
        "Notes: latency and payload rows time one submit plus one wait for the result, one task "
        "at a time. Startup excludes imports and includes the probe tasks (each sleeps "
        f"{sz.probe_delay * 1e3:g} ms so that both workers get one). Controller CPU is "
        "utime+stime from /proc/<controller_pid>/stat around the step; peak RSS is VmHWM of the "
        "controller at the end of its run. The peers' own schedulers are not measured there "
        "(n/a). The machine may run other work meanwhile: numbers are noisy (on this VM, "
        "identical runs differ by 10-30%).",
        "",
    ]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark taskmill against ProcessPoolExecutor, multiprocessing.Pool, "
                    "ipyparallel and dask.distributed (2 workers each); prints markdown.")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke run (flags given explicitly still win)")
    p.add_argument("--tasks", type=int, help="no-op tasks for submit+wait (default 5000)")
    p.add_argument("--latency", type=int, help="round trips for latency (default 200)")
    p.add_argument("--payload", type=int, help="round trips per payload (default 200)")
    p.add_argument("--payload-bytes", type=int, help="bytes argument size (default 1 MiB)")
    p.add_argument("--array-bytes", type=int,
                   help="float64 ndarray size in bytes (default 8,000,000)")
    p.add_argument("--map-items", type=int, help="items for the map (default 100000)")
    p.add_argument("--peers", default="all",
                   help="optional third-party peers: all (default), none, or a comma list of "
                        f"{','.join(OPTIONAL_PEERS)}; taskmill, the stdlib peers and the relay always run")
    p.add_argument("--no-stdlib", action="store_true",
                   help="skip ProcessPoolExecutor, multiprocessing.Pool and the ZeroMQ relay")
    p.add_argument("--heartbeat", type=float, default=1.0, help="taskmill heartbeat (s)")
    p.add_argument("--taskmill-db", default=None,
                   help="taskmill's task store, passed as Cluster(db=...): a SQLite path or "
                        ":memory: (default: taskmill's own default)")
    p.add_argument("--only", default=None,
                   help=f"a comma list of the steps to run, from {','.join(STEPS)} (startup "
                        "always runs; default: all)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="time limit of each single measurement, 0 for none (default 600 s)")
    p.add_argument("--write", action="store_true", help=f"also write the report to {RESULTS_MD}")
    args = p.parse_args(argv)
    quick = dict(tasks=200, latency=20, payload=10, payload_bytes=64 << 10,
                 array_bytes=512_000, map_items=2000)
    full = dict(tasks=5000, latency=200, payload=200, payload_bytes=1 << 20,
                array_bytes=8_000_000, map_items=100_000)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    args.only_steps = None
    if args.only is not None:
        args.only_steps = frozenset(x.strip() for x in args.only.split(",") if x.strip())
        if not args.only_steps or not args.only_steps <= set(STEPS):
            p.error(f"--only takes a comma list of {','.join(STEPS)}")
    if args.peers.strip() in ("all", ""):
        args.peer_names = list(OPTIONAL_PEERS)
    elif args.peers.strip() == "none":
        args.peer_names = []
    else:
        args.peer_names = [x.strip() for x in args.peers.split(",") if x.strip()]
        unknown = [x for x in args.peer_names if x not in OPTIONAL_PEERS]
        if unknown:
            p.error(f"unknown peer(s) {unknown}; choose from {list(OPTIONAL_PEERS)}, all, none")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sz = Sizes(args.tasks, args.latency, args.payload, args.payload_bytes, args.array_bytes,
               args.map_items)
    header = machine_lines()
    started = time.perf_counter()
    warnings.simplefilter("ignore")  # dask's large-graph warnings and the like, on stderr

    peers: list[Peer] = []
    if not args.no_stdlib:
        # First, while this process has no threads of its own yet: multiprocessing may fork.
        peers += [ProcessPoolPeer(), PoolPeer(), RelayPeer()]
    peers.append(TaskmillPeer(args.heartbeat, args.taskmill_db))
    results: dict[str, PeerResult] = {}
    skipped: list[PeerResult] = []
    for name, cls in OPTIONAL_PEERS.items():
        r = PeerResult(cls.name)
        if name not in args.peer_names:
            r.status = "not selected"
        elif importlib.util.find_spec(cls.module) is None:
            r.status = "not installed"
        else:
            try:
                importlib.import_module(cls.module)
            except Exception as e:  # noqa: BLE001
                r.status = "import failed: " + short_error(e)
        if r.status:
            if name in args.peer_names:
                skipped.append(r)
        else:
            peers.append(cls())

    # Third-party libraries may print; keep stdout for the report.
    with contextlib.redirect_stdout(sys.stderr):
        for peer in peers:
            results[peer.name] = measure_peer(peer, sz, args.timeout, args.only_steps)
    ordered = [results["taskmill"]] + [results[p.name] for p in peers if p.name != "taskmill"]
    ordered += skipped
    text = report(ordered, sz, args, header, time.perf_counter() - started)
    print(text, flush=True)
    if args.write:
        RESULTS_MD.write_text(text + "\n")
        progress(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
