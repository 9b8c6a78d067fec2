"""A fault soak: thousands of tasks while the controller, engines, network and disk fail.

    python benchmarks/fault_soak.py --minutes 10          # the README's run
    python benchmarks/fault_soak.py --seconds 60 --json r.json   # tests/system/test_fault_soak.py
    python benchmarks/fault_soak.py --minutes 10 --curve  # every link encrypted (--curve)

A controller (TCP, a durable store), engines and one client that reach it through TCP proxies
that can break their connections; the client keeps submitting tasks (with and without
retries; the seed's `run` and futures' `submit`, by turns; most of them plain, the rest with
a timeout they overrun, a recovery task, a dependency (`after`) on a task given lately,
StringTasks, payloads of 64-256 KiB (which the store keeps in files), or a value put once:
soak_jobs.py; now and then it aborts one it submitted, clears one that finished, maps over
4-40 elements with `client.map`, or puts a new value for the tasks that take one), and a
second client, asyncio's (`AsyncTaskClient`, on a thread of its own), keeps 20 futures of its
own in flight, while a fault thread, every 1.5-4 s, does one of:
- kill -9 the controller and start it again on the same store and connection file;
- SIGSTOP the controller for 0.5-8 s (past 1.5 s its engines' dead_after has gone by, past 5 s
  they move to new connections), then SIGCONT it: it must not take its own silence for theirs;
- SIGKILL an engine (and start a new one);
- SIGTERM an engine, as `cluster stop`, systemd or scancel do (and start a new one): it gives
  back the tasks it held unstarted (`leaving`), which must run elsewhere exactly once; or the
  same while the controller is SIGSTOPped (for 0.2-3 s more), which must take the leaving
  engine's last messages when it wakes;
- SIGSTOP an engine for 0.5-3 s (past 1.5 s it is declared dead), then SIGCONT it;
- reset every engine connection (the proxy sends RST both ways);
- reset the client's connection, or cut it on the client's side only (the controller keeps
  the old connection, silent, until its transport heartbeat gives up on it, while the
  client's new one, with the same routing id, comes in);
- cut one engine off (its connections drop everything, either way, and tell neither side: a
  partition; the engine goes on, must move to new connections, and the controller must
  declare it dead and refuse its late results);
- cut both clients off the same way (their calls must still return within their bounds);
- lose one message: the next one the controller sends to an engine's task socket, the next
  interrupt to an engine, the next message to the client, or the next one an engine sends
  with its results or the client with its requests, is dropped and that connection reset;
- fill the store's disk for 1-3 s (a 512 MiB tmpfs, room for the soak's own store; only
  when run as root);
- retire an engine (`retire_engines`, as `Cluster.adapt` shrinks a cluster) and start another
  in its place, and half the time kill -9 the controller right after the answer: the retiring
  one must stop by itself, with status 0, whatever faults come meanwhile.

Each task appends its marker (unique per submitted task) to a log file when its code starts,
then sleeps a little, notes its end and returns the marker. At the end, with every fault
stopped:
- every taskid the client was given finished, once (its result is fetched; the queue holds
  nothing; `succeeded` + `failed` list each id once);
- no result came back under the wrong id (each value is its own task's marker);
- a task never outlived its timeout; a task with a recovery task ended with the recovery's
  value (the recovery ran at most once); a task `after` another that succeeded started only
  once that one's run had ended, and one after a task that did not succeed failed with
  DependencyError without running (soak_jobs.py; `by_kind`, `kind_wrong` in the report);
- a map returned its elements' values in order, or failed only with EngineDied of engines a
  fault touched, and no element ran more often than its retries allow (`maps_wrong`);
- the asyncio client's futures ended with their own values, or failed only as they could
  (their own ValueError, EngineDied of a touched engine, StoreError of a submit refused and
  never run), and ran as their retries allow (`async_wrong`);
- each task's code ran at most `retries + 1` times (with `retries=0`: exactly once, or at most
  once when it failed with EngineDied); a refused submit's task never ran;
- an abort answered "aborted" left its task aborted (TaskAborted), one answered "already
  completed" left it as it finished; a clear that dropped a result left it unknown (its
  answers are kept for a request sent again, across a restart: controller/control_verbs.py);
- every EngineDied names an engine process a fault killed, stopped or cut off (the message's
  pid; one that the controller lost track of across its restart: the pid that ran the task),
  so that an engine declared dead while it lived (a paused controller's error, say) is a
  problem;
- no client call waited out its bound (every call has one: the client's timeout or
  `reconnect_timeout`; the controller is never away for long, so such a wait is a request
  or an answer the client lost), and the longest wait is reported;
- the controller's memory (RSS) at the end, with every result cleared, against the controller
  of the same lifetime after its first tasks.
Exit status 1 if any check fails. The report (`--json`) has every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "system"))  # the fault proxy is shared with the tests

from faultproxy import proxied  # noqa: E402
from soak_jobs import (  # noqa: E402
    FAULT_OUTCOMES,
    AsyncSide,
    Given,
    RunsLog,
    after_problems,
    async_problems,
    counted_pid,
    died_pid,
    digest,
    failure_of,
    kind_problems,
    map_problems,
    new_job,
    payload,
    run_map,
    soak_task,
    value_of,
)

from taskmill import MapTask, StoreError, TaskClient  # noqa: E402
from taskmill.connection import (  # noqa: E402
    new_connection_info,
    read_connection_file,
    write_connection_file,
)
from taskmill.curve import add_curve  # noqa: E402
from taskmill.errors import ControllerUnreachable, RunNotStored, StoreRunNotStored  # noqa: E402

TASKMILL = [sys.executable, "-m", "taskmill"]
HEARTBEAT = 0.5  # the controller's; an engine silent 1.5 s is declared dead
CALL_TIMEOUT = 30.0  # the client's timeout for each request
RECONNECT_TIMEOUT = 60.0  # ... and how long it rides out a controller that does not answer
IN_FLIGHT = 200  # tasks submitted and not yet finished, at most
# No task (0.3 s of work at most) may take longer than this to finish once it can: past it, it
# is reported stuck, with the scheduler's story of it, instead of the soak waiting for ever.
STUCK_AFTER = 60.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise KeyError("VmRSS")


class Cluster:
    """The processes of the soak: a controller, engines behind a proxy, a small disk."""

    def __init__(self, work: Path, engines: int, small_disk: bool, curve: bool = False) -> None:
        self.work = work
        self.curve = curve
        self.disk: Path | None = None
        if small_disk:
            self.disk = work / "disk"
            self.disk.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(self.disk)],
                           check=True)
        self.db = str((self.disk or work) / "tasks.db")
        info = new_connection_info()
        if curve:  # (the server's key and the allow-list beside the file, as --curve makes)
            add_curve(info, work / "conn.json")
        self.conn = write_connection_file(work / "conn.json", info)
        self.log = open(work / "processes.log", "ab")  # noqa: SIM115
        self.controller: subprocess.Popen | None = None
        self.start_controller()
        # The proxies' listening ports come from the same pool as the controller's, chosen
        # before it binds them: made before it listens, a proxy could take one of its ports.
        self.wait_listening()
        self.proxy, self.engine_conn = proxied(self.conn, "engine_url",
                                               work / "via-proxy" / "conn.json")
        self.client_proxy, self.client_conn = proxied(self.conn, "client_url",
                                                      work / "client-via-proxy" / "conn.json")
        self.engines: list[subprocess.Popen] = [self.new_engine() for _ in range(engines)]
        self.retiring: list[subprocess.Popen] = []  # engines told to retire (Faults)
        self.stopped: set[int] = set()

    def start_controller(self) -> None:
        self.controller = subprocess.Popen(
            [*TASKMILL, "controller", "--connection-file", str(self.conn), "--db", self.db,
             "--heartbeat", str(HEARTBEAT), "--no-dashboard", *(["--curve"] if self.curve else [])],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_listening(self, bound: float = 60.0) -> None:
        """Wait (at most `bound` seconds) until the controller accepts connections on both of
        its ports; a controller that exits meanwhile ends the soak with its log."""
        info = read_connection_file(self.conn)
        ports = [int(url.rsplit(":", 1)[1]) for url in (info.client_url, info.engine_url)]
        deadline = time.monotonic() + bound
        while ports:
            self.check_controller()
            try:
                socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
                ports.pop(0)
                continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the controller did not listen within {bound:g}s: "
                                   + self.log_tail())
            time.sleep(0.05)

    def log_tail(self, lines: int = 5) -> str:
        self.log.flush()
        tail = (self.work / "processes.log").read_text(errors="replace").splitlines()[-lines:]
        return " | ".join(tail)

    def check_controller(self) -> None:
        """A controller that exits by itself (e.g. it cannot open its store) ends the soak."""
        if self.controller.poll() is not None and self.controller.returncode != -9:
            raise RuntimeError(f"the controller exited with status {self.controller.returncode}: "
                               + self.log_tail())

    def new_engine(self) -> subprocess.Popen:
        return subprocess.Popen([*TASKMILL, "engine", "--no-replace", "--connection-file", str(self.engine_conn)],
                                stdout=self.log, stderr=subprocess.STDOUT)

    def retired_badly(self, bound: float = 60.0) -> list[str]:
        """The engines told to retire that did not stop by themselves, with status 0, within
        `bound` seconds (they hold nothing by now)."""
        deadline = time.monotonic() + bound
        while any(p.poll() is None for p in self.retiring) and time.monotonic() < deadline:
            time.sleep(0.1)
        return [f"engine pid {p.pid}, told to retire, " + (
            "never stopped" if p.returncode is None else f"ended with status {p.returncode}")
            for p in self.retiring if p.returncode != 0]

    def close(self) -> None:
        for p in [*self.engines, *self.retiring]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait()
        if self.controller is not None:
            self.controller.terminate()
            try:
                self.controller.wait(30)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait()
        self.proxy.close()
        self.client_proxy.close()
        self.log.close()
        if self.disk is not None:
            subprocess.run(["umount", "-l", str(self.disk)], check=False)


class Faults(threading.Thread):
    """Every 1.5-4 s, one fault of a random kind (see the module docstring)."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        super().__init__(name="faults", daemon=True)
        self.c = cluster
        self.rng = rng
        self.stop_event = threading.Event()
        self.done: Counter[str] = Counter()
        self.kinds = {"controller kill -9": self._kill_controller,
                      "controller SIGSTOP": self._stop_controller,
                      "engine SIGKILL": self._kill_engine,
                      "engine SIGTERM": self._terminate_engine,
                      "engine SIGTERM, controller stopped": self._terminate_engine_unheard,
                      "engine SIGSTOP": self._stop_engine,
                      "connection reset": self._reset_connections,
                      "client link reset": self.c.client_proxy.reset_all,
                      "client link cut": self._cut_client_link,
                      "engine partitioned": self._partition_engine,
                      "clients partitioned": self._partition_clients,
                      "message lost": self._lose_message}
        if cluster.disk is not None:
            self.kinds["disk full"] = self._fill_disk
        self.kinds["engine retired"] = self._retire_engine
        self.error: BaseException | None = None
        self.tc: TaskClient | None = None  # (the fault thread's own, to retire engines)
        self.touched: set[int] = set()  # engine pids killed, stopped or cut off
        self.partitioned_links = 0  # connections that partitions cut

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.rng.uniform(1.5, 4.0)):
                kind = self.rng.choice(sorted(self.kinds))
                self.note(f"{kind} begins")
                self.kinds[kind]()
                self.note(f"{kind} ends")
                self.done[kind] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e

    def note(self, what: str) -> None:
        """A line in the processes' log, as theirs read (to tell when each fault was)."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{now % 1 * 1000:03.0f}"
        self.c.log.write(f"{stamp} soak[{os.getpid()}] FAULT {what}\n".encode())
        self.c.log.flush()

    def _kill_controller(self) -> None:
        self.c.controller.send_signal(signal.SIGKILL)
        self.c.controller.wait()
        self.c.start_controller()

    def _stop_controller(self) -> None:
        victim = self.c.controller
        victim.send_signal(signal.SIGSTOP)
        try:
            self.stop_event.wait(self.rng.uniform(0.5, 8.0))
        finally:
            victim.send_signal(signal.SIGCONT)

    def _kill_engine(self) -> None:
        i = self.rng.randrange(len(self.c.engines))
        victim = self.c.engines[i]
        self.touched.add(victim.pid)
        victim.kill()
        victim.wait()
        self.c.engines[i] = self.c.new_engine()

    def _terminate_engine(self) -> None:
        i = self.rng.randrange(len(self.c.engines))
        victim = self.c.engines[i]
        self.touched.add(victim.pid)  # (its running task ends as EngineDied)
        victim.terminate()
        try:
            victim.wait(30)
        except subprocess.TimeoutExpired:  # (a stopped one: SIGSTOP came first)
            victim.kill()
            victim.wait()
        self.c.engines[i] = self.c.new_engine()

    def _terminate_engine_unheard(self) -> None:
        """SIGTERM an engine while its controller is SIGSTOPped: its results and `leaving`
        wait in the sockets' buffers for the controller, which must take them when it wakes."""
        victim = self.c.controller
        victim.send_signal(signal.SIGSTOP)
        try:
            self._terminate_engine()
            self.stop_event.wait(self.rng.uniform(0.2, 3.0))
        finally:
            victim.send_signal(signal.SIGCONT)

    def _stop_engine(self) -> None:
        victim = self.rng.choice(self.c.engines)
        self.touched.add(victim.pid)
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            self.stop_event.wait(self.rng.uniform(0.5, 3.0))
        finally:
            os.kill(victim.pid, signal.SIGCONT)

    def _retire_engine(self) -> None:
        """Retire an engine and start another in its place (`Cluster.retiring`: checked at
        the end). One registering again after a restart is left alone this time."""
        if self.tc is None:
            self.tc = TaskClient(self.c.conn, timeout=CALL_TIMEOUT,
                                 reconnect_timeout=RECONNECT_TIMEOUT)
        i = self.rng.randrange(len(self.c.engines))
        victim = self.c.engines[i]
        eids = [e["engineid"] for e in self.tc.engines()
                if e["pid"] == victim.pid and e["state"] in ("idle", "busy")][:1]
        if eids and self.tc.retire_engines(eids) == eids:
            self.c.retiring.append(victim)
            self.c.engines[i] = self.c.new_engine()
            if self.rng.random() < 0.5:  # (the restarted controller must keep it retiring)
                self._kill_controller()

    def _partition_engine(self) -> None:
        """Cut one engine off while it goes on: whatever it and the controller send each other
        on its connections is dropped, and neither is told (the controller must declare it
        dead, the engine must move to new connections, and its late results be refused)."""
        victim = self.rng.choice(self.c.engines)
        self.touched.add(victim.pid)
        self.partitioned_links += self.c.proxy.blackhole_process(victim.pid)

    def _partition_clients(self) -> None:
        """Cut both clients off: their connections drop everything either way and neither
        side is told (ZeroMQ's heartbeats on client links end them within ~6 s, and the
        clients go on on new ones: every call still returns within its bound)."""
        self.partitioned_links += self.c.client_proxy.blackhole_all()

    def _lose_message(self) -> None:
        """One message is lost and its connection reset: the next one the controller sends
        to an engine's task socket, the next interrupt (an abort) to an engine's control
        socket, or the next message to the client; or the next one an engine sends with its
        results or the client with its requests. (Past 150 bytes, or holding the word
        looked for: a message, not the connection's greeting.)"""
        proxy, marker, from_peer, contains = self.rng.choice([
            (self.c.proxy, b".t", False, b""), (self.c.proxy, b".r", True, b""),
            (self.c.proxy, b".c", False, b"aborted"),  # (an interrupt: its reason)
            (self.c.client_proxy, b".r", False, b""), (self.c.client_proxy, b".s", True, b"")])
        if self.c.curve:  # (encrypted: any of that proxy's links, any message)
            marker = contains = b""
        proxy.drop_next(1 if contains else 150, marker, contains, from_peer=from_peer)

    def _reset_connections(self) -> None:
        self.c.proxy.reset_all()

    def _cut_client_link(self) -> None:
        """Cut on the client's side only: the controller holds the old connection until its
        transport heartbeat gives up on it, while the client's new one comes in."""
        self.c.client_proxy.cut_peer_side_all()

    def _fill_disk(self) -> None:
        filler = self.c.disk / "filler"
        with open(filler, "wb", buffering=0) as f:
            for size in (1 << 20, 65536, 4096, 512):
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * size)
        try:
            self.stop_event.wait(self.rng.uniform(1.0, 3.0))
        finally:
            filler.unlink()


class Calls:
    """Every client call, timed: none may wait past its bound. A call that raises
    RunNotStored (tasks that run() had given ids for were refused, e.g. by a full disk: the
    client's next call says so, and does nothing else) notes their ids in `not_stored` and is
    made again. Only the store may refuse them (StoreRunNotStored): the soak's run()s are
    well formed, its clients are never silent for a lease's 10 s, and a restarted controller
    keeps their leases; any other refusal is noted in `run_refusals`, a problem."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_what = ""  # the call that took `longest`
        self.count = 0
        self.raised: Counter[str] = Counter()
        self.not_stored: list[int] = []
        self.run_refusals: list[str] = []

    def __call__(self, fn, *args, **kwargs):
        t0 = time.monotonic()
        try:
            for _ in range(10):
                try:
                    return fn(*args, **kwargs)
                except RunNotStored as e:
                    self.raised[type(e).__name__] += 1
                    self.not_stored.extend(e.taskids)
                    if not isinstance(e, StoreRunNotStored):
                        self.run_refusals.append(f"run() refused, not by the store: {e}")
            return fn(*args, **kwargs)
        except BaseException as e:
            self.raised[type(e).__name__] += 1
            raise
        finally:
            took = time.monotonic() - t0
            if took > self.longest:
                self.longest = took
                self.longest_what = getattr(fn, "__qualname__", repr(fn))
            self.count += 1


def soak(seconds: float, engines: int, seed: int, work: Path, curve: bool = False) -> dict:
    rng = random.Random(seed)
    small_disk = os.geteuid() == 0
    cluster = Cluster(work, engines, small_disk, curve)
    runs_log = str(work / "runs.log")
    calls = Calls()
    given: dict[int, Given] = {}  # taskid -> what it must end as
    depended: set[int] = set()  # taskids an after job waits for (never cleared)
    maps: list = []  # client.map runs (MapRun)
    shared = None  # (ObjectRef, digest) of the value put last
    puts = 0
    refused: list[str] = []  # markers of submits refused with StoreError
    unsure: list[str] = []  # submits whose fate the client could not learn
    futures: dict = {}
    aborts: dict[int, str] = {}  # taskid -> what its abort answered
    cleared: set[int] = set()  # taskids whose result a clear dropped
    faults = Faults(cluster, rng)
    tc = None
    side: AsyncSide | None = None  # the second client, asyncio's
    try:
        kwargs = {"timeout": CALL_TIMEOUT}
        try:
            tc = TaskClient(cluster.client_conn, reconnect_timeout=RECONNECT_TIMEOUT, **kwargs)
        except ControllerUnreachable as e:
            cluster.check_controller()
            raise RuntimeError(f"{e} The processes' log ends: {cluster.log_tail()}") from e
        except TypeError:  # (a client without reconnect_timeout)
            tc = TaskClient(cluster.client_conn, **kwargs)
        deadline = time.monotonic() + 60
        while len(tc.engines()) < engines:
            if time.monotonic() > deadline:
                raise RuntimeError("the engines did not register")
            time.sleep(0.05)
        warm = [calls(tc.run, MapTask(soak_task, (runs_log, f"warm-{i}", 0.0, False)))
                for i in range(20)]
        for tid in warm:
            calls(tc.get_task_result, tid, block=True)
        rss_start = rss_kib(cluster.controller.pid)
        controller_at_start = cluster.controller.pid
        side = AsyncSide(cluster.client_conn, runs_log, seed, CALL_TIMEOUT, RECONNECT_TIMEOUT,
                         STUCK_AFTER)
        side.start()
        faults.start()
        end = time.monotonic() + seconds
        n = 0
        outstanding: list[int] = []
        while time.monotonic() < end:
            if faults.error is not None:
                raise faults.error
            cluster.check_controller()
            if len(outstanding) + len(futures) >= IN_FLIGHT:
                oldest = outstanding.pop(0) if outstanding else None
                if oldest is not None:
                    with contextlib.suppress(TimeoutError):  # (stuck: found by check())
                        calls(tc.barrier, [oldest], timeout=STUCK_AFTER)
                for f in [f for f in futures if f.done()]:
                    futures.pop(f)
                if not outstanding and futures:
                    f = next(iter(futures))
                    with contextlib.suppress(Exception):
                        calls(f.result, CALL_TIMEOUT + RECONNECT_TIMEOUT)
                    futures.pop(f)
                continue
            if given and rng.random() < 0.02:
                abort_or_clear(tc, calls, rng, given, aborts, cleared, depended)
            if rng.random() < 0.01:  # (a map blocks this loop while it runs: it is short)
                maps.append(run_map(tc, calls, rng, runs_log, f"map{len(maps)}", STUCK_AFTER))
            if shared is None or rng.random() < 0.005:  # (a value put for shared jobs)
                data = payload(f"put{puts}", rng.choice((64 * 1024, 200_000)))
                with contextlib.suppress(StoreError):  # (a full disk: the last one stays)
                    shared = (calls(tc.put, data), digest(data))
                    puts += 1
            marker = f"m{n}-{uuid.uuid4().hex[:8]}"
            job = new_job(rng, runs_log, marker,
                          [t for t in itertools.islice(reversed(given), 60)
                           if t not in cleared], shared)
            if job.given.dep is not None:
                depended.add(job.given.dep)
            n += 1
            try:
                if n % 2 or job.options is None:
                    tid = calls(tc.run, job.task)
                    given[tid] = job.given
                    outstanding.append(tid)
                else:
                    fut = calls(tc.options(**job.options).submit, job.function, *job.args)
                    futures[fut] = job.given
                    given_tid = calls(lambda f=fut: f.taskid)
                    given[given_tid] = job.given
            except StoreError:
                refused.extend(job.given.markers)
            except (TimeoutError, RuntimeError, ConnectionError) as e:  # fate unknown
                unsure.append(f"{marker}: {type(e).__name__}: {e}")
        faults.stop_event.set()
        faults.join(60)
        if faults.error is not None:
            raise faults.error
        side.stop_event.set()
        side.join(STUCK_AFTER + 30)
        if side.error is not None:
            raise side.error
        # Everything settles: every task the client was given finishes (but those whose
        # run() was refused, which read as unknown and must never run: checked as the
        # refused submits are; a barrier passes over them, and is the last call to learn).
        tids = sorted(given)
        with contextlib.suppress(TimeoutError):  # (stuck: found by check())
            calls(tc.barrier, tids, timeout=STUCK_AFTER)
        for tid in calls.not_stored:
            refused.extend(given.pop(tid).markers)
        for tid in cleared:  # (their results are gone: checked as unknown)
            given.pop(tid, None)
        report = check(tc, calls, given, refused, runs_log, faults.touched, aborts, cleared)
        log = RunsLog(Path(runs_log).read_text())
        wrong = [p for m in maps for p in map_problems(m, log, faults.touched)]
        async_wrong = async_problems(side.records, log, faults.touched)
        if side.is_alive():
            async_wrong.append(f"the asyncio client's futures did not settle within "
                               f"{STUCK_AFTER + 30:g} s")
        report["problems"] += wrong + async_wrong + calls.run_refusals
        report.update(puts=puts, maps=len(maps),
                      map_outcomes=dict(Counter(m.outcome for m in maps)),
                      map_elements=sum(len(m.markers) for m in maps), maps_wrong=len(wrong),
                      async_futures=len(side.records),
                      async_outcomes=dict(Counter(r[3] for r in side.records)),
                      async_wrong=len(async_wrong),
                      ok=report["ok"] and not wrong and not async_wrong)
        badly = cluster.retired_badly()
        report["problems"] += badly
        report.update(engines_retired=len(cluster.retiring), retired_badly=len(badly),
                      ok=report["ok"] and not badly)
        # The controller is never away for long (it is started again at once), so no call
        # may wait out its bound: such a wait is a request or an answer the client lost.
        waited_out = {k: calls.raised[k] for k in ("TimeoutError", "ControllerUnreachable")
                      if calls.raised[k]}
        if waited_out or unsure:
            report["problems"].append(f"client calls that waited out their bound: {waited_out}; "
                                      f"submits whose fate the client never learnt: {unsure[:5]}")
            report["ok"] = False
        if report["stuck"]:  # what the controller and the processes' log say, to find why
            report["engines_at_end"] = calls(tc.engines)
            report["log_tail"] = log_tail(work / "processes.log", 120)
        kept = sorted(given)  # (not the ids of runs the store refused: those never existed)
        for chunk in range(0, len(kept), 1000):
            with contextlib.suppress(KeyError):  # (a stuck task has no result: reported above)
                calls(tc.clear, kept[chunk:chunk + 1000])
        rss_end = rss_kib(cluster.controller.pid)
        stats = calls(tc.statistics)  # (the last controller's counts)
        report["last_controller"] = {k: stats[k] for k in (
            "engines_died", "engines_moved", "tasks_lost_in_transit", "refused")}
        report.update(
            seconds=seconds, engines=engines, seed=seed, faults=dict(faults.done),
            submitted=n, refused_submits=len(refused), unsure_submits=unsure,
            runs_not_stored=len(calls.not_stored),
            client_calls=calls.count, client_raised=dict(calls.raised),
            longest_call_s=round(calls.longest, 2), longest_call=calls.longest_what,
            call_bound_s=CALL_TIMEOUT + RECONNECT_TIMEOUT,
            controller_rss_kib={"start": rss_start, "end": rss_end,
                                "same_controller": cluster.controller.pid ==
                                controller_at_start},
            disk_faults=small_disk, proxy_dropped_or_reset=cluster.proxy.resets,
            client_links_reset_or_cut=cluster.client_proxy.resets,
            partitioned_links=faults.partitioned_links,
            messages_lost=cluster.proxy.dropped + cluster.client_proxy.dropped)
        return report
    finally:
        faults.stop_event.set()
        if side is not None:
            side.stop_event.set()
        for client in (tc, faults.tc):
            if client is not None:
                client.close()
        cluster.close()


def log_tail(path: Path, n: int) -> list[str]:
    """The last `n` warnings and errors of the controller's and engines' log."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [ln for ln in lines if "WARNING" in ln or "ERROR" in ln][-n:]


def abort_or_clear(tc, calls, rng: random.Random, given: dict, aborts: dict[int, str],
                   cleared: set[int], depended: set[int]) -> None:
    """Abort a task given lately (queued, running or done), or clear one's result if it is
    done and no after job waits for it; note what the controller answered."""
    recent = sorted(given)[-400:]  # (in flight: the last IN_FLIGHT or so; before: done)
    abort = rng.random() < 0.7
    tid = rng.choice(recent[-250:] if abort else recent[:200])
    if tid in aborts or tid in cleared or (not abort and tid in depended):
        return
    if abort:
        try:
            calls(tc.abort, tid)
            aborts[tid] = "aborted"
        except IndexError as e:  # ("Task Already Completed"; unknown: a problem, in check)
            aborts[tid] = "finished" if "Completed" in str(e) else f"IndexError: {e}"
    elif calls(tc.task_info, tid)["state"] not in ("scheduled", "pending"):
        try:
            dropped = calls(tc.clear, tid)
        except StoreError:  # (a full disk: nothing was cleared)
            return
        except KeyError as e:  # (a finished task's result the controller does not have)
            aborts[tid] = f"clear: KeyError: {e}"
            return
        if dropped == 1:
            cleared.add(tid)


def check(tc, calls, given: dict, refused: list, runs_log: str, touched: set[int],
          aborts: dict[int, str], cleared: set[int]) -> dict:
    """The checks of the module docstring; `touched`: the engine pids faults killed or
    stopped; `aborts`, `cleared`: what the aborts and clears made answered."""
    log = RunsLog(Path(runs_log).read_text() if Path(runs_log).exists() else "")
    problems: list[str] = []
    outcomes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    ended: dict[int, str] = {}  # taskid -> its outcome
    counted: dict[int, int | None] = {}  # taskid -> the engine pid of its counted run
    kind_wrong = 0
    for tid, g in sorted(given.items()):
        marker, retries = g.marker, g.retries
        info = calls(tc.task_info, tid)
        if info["state"] in ("scheduled", "pending"):  # the barrier gave up on it: stuck
            problems.append(f"task {tid} ({marker}) never finished: {info}")
            outcomes["stuck"] += 1
            continue
        try:
            value = calls(tc.get_task_result, tid, block=True)
            failure = failure_of(g, value)
        except Exception as e:  # noqa: BLE001 - a task's failure is an outcome
            value, failure = None, e
        outcome = "ok" if failure is None else type(failure).__name__
        if outcome == "EngineDied":
            named = died_pid(str(failure))
            died = ({named} if named is not None else  # (else the pids that ran it)
                    {pid for m in g.markers for pid in log.pids.get(m, ())})
            if died and not died & touched:
                problems.append(f"task {tid} ({marker}): EngineDied, but no fault touched "
                                f"the engine (pids {sorted(died)}): {failure}")
                outcomes["unexplained EngineDied"] += 1
        if outcome == "ok" and value_of(g, value) != marker:
            problems.append(f"task {tid}: result {value_of(g, value)!r:.200} is not its own "
                            f"({marker!r})")
        ended[tid] = outcome
        counted[tid] = counted_pid(info)
        outcomes[outcome] += 1
        by_kind.setdefault(g.kind, Counter())[outcome] += 1
        said = aborts.get(tid)
        if said is not None and said not in ("aborted", "finished"):
            problems.append(f"task {tid} ({marker}): {said}")
        elif said is not None and (said == "aborted") != (outcome == "TaskAborted"):
            problems.append(f"task {tid} ({marker}): its abort answered {said!r}, yet it "
                            f"ended {outcome}")
        ran = log.runs(marker)
        if ran > retries + 1 and g.kind != "recovery":  # (a recovery's: kind_problems)
            problems.append(f"task {tid} ({marker}, retries={retries}) ran {ran} times")
        if outcome == "ok" and ran < 1:
            problems.append(f"task {tid} ({marker}) succeeded without running")
        if (retries == 0 and g.kind in ("plain", "string", "after", "payload", "shared")
                and ran != 1 and outcome not in (*FAULT_OUTCOMES, "DependencyError")):
            problems.append(f"task {tid} ({marker}, retries=0, {outcome}) ran {ran} times")
        wrong = kind_problems(tid, g, outcome, log)
        kind_wrong += len(wrong)
        problems += wrong
    for tid, g in sorted(given.items()):
        if g.kind == "after" and tid in ended and (g.dep not in given or g.dep in ended):
            wrong = after_problems(tid, g, ended[tid], ended.get(g.dep), given.get(g.dep),
                                   counted.get(g.dep), log)
            kind_wrong += len(wrong)
            problems += wrong
    for tid in sorted(cleared):
        try:
            calls(tc.get_task_result, tid)
            problems.append(f"task {tid}: its result was cleared, yet it is still there")
        except IndexError:
            pass
        except Exception as e:  # noqa: BLE001 - any other answer is a problem
            problems.append(f"task {tid}: cleared, then read: {type(e).__name__}: {e}")
    for marker in refused:
        if log.runs(marker):
            problems.append(f"{marker}: its submit was refused, yet it ran "
                            f"{log.runs(marker)} times")
    status = calls(tc.queue_status, verbose=True)
    finished = status["succeeded"] + status["failed"]
    counts = Counter(finished)
    twice = [t for t, k in counts.items() if k > 1]
    missing = sorted(set(given) - set(finished))
    if set(finished) & cleared:
        problems.append(f"cleared, yet listed as finished: {sorted(set(finished) & cleared)[:10]}")
    if status["scheduled"] or status["pending"]:
        problems.append(f"still queued or running: {status['scheduled']} {status['pending']}")
    if twice:
        problems.append(f"finished twice: {twice[:10]}")
    if missing:
        problems.append(f"given but not finished: {missing[:10]}")
    extra_runs = sum(max(0, log.runs(m) - 1) for g in given.values() for m in g.markers)
    return {"tasks": len(given), "outcomes": dict(outcomes), "lost": len(missing),
            "stuck": outcomes["stuck"],
            "finished_twice": len(twice), "wrong_results": sum("is not its own" in p
                                                               for p in problems),
            "over_runs": sum("ran" in p and "times" in p for p in problems),
            "reruns_within_retries": extra_runs,
            "unexplained_deaths": outcomes["unexplained EngineDied"],
            "aborts": dict(Counter(aborts.values())), "cleared": len(cleared),
            "abort_or_clear_wrong": sum("abort answered" in p or "cleared" in p
                                        for p in problems),
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            "kind_wrong": kind_wrong,
            "problems": problems[:50],
            "ok": not problems}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--engines", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None, help="write the report here too")
    p.add_argument("--curve", action="store_true",
                   help="every link encrypted (the controller's --curve)")
    a = p.parse_args()
    seconds = a.seconds if a.seconds is not None else 60 * (a.minutes or 10)
    work = Path(tempfile.mkdtemp(prefix="taskmill-soak-"))
    t0 = time.time()
    report = soak(seconds, a.engines, a.seed, work, a.curve)
    if report["ok"]:
        shutil.rmtree(work, ignore_errors=True)
    else:  # kept: its processes' log tells what happened
        report["work_dir"] = str(work)
    report["wall_s"] = round(time.time() - t0, 1)
    report["command"] = " ".join(["python", "benchmarks/fault_soak.py", *sys.argv[1:]])
    report["date"] = time.strftime("%Y-%m-%d %H:%M")
    text = json.dumps(report, indent=2, sort_keys=True)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
