"""The fault soak's tasks (benchmarks/fault_soak.py): what it submits, and what each must end as.

Most are plain: `soak_task` notes its start (marker and pid) in the runs log, sleeps, notes its
end, and returns its marker (or fails on purpose). Beside them, so that the features built on
the queue are tried under the same faults:
- `timeout`: a task that would sleep 2 s with a 0.15 s timeout: it must never succeed;
- `recovery`: a task that fails on purpose, with a recovery task: the task's result must be the
  recovery's marker, and the recovery must run at most once;
- `after`: a task given `after=[A]` for a task A given lately: if A succeeded, it must start
  only after A's successful run ended (the runs log is in time order); otherwise it must fail
  with DependencyError without running;
- `string`: a StringTask that calls `soak_task` pushed into the engine's namespace and pulls
  its value;
- `payload`: 64-256 KiB of bytes (made from the marker) sent and returned with the marker:
  frames that large are kept in files beside the store's database, and must come back
  whole;
- `shared`: a task given a value the client stored once with `put` (64-200 KB, a new one
  now and then): it returns a digest of the value it got, which must be the value put.
`Given` is what the soak keeps of each taskid; `kind_problems` and `after_problems` the checks
of these kinds (the soak's own checks cover every kind: ran at most `retries + 1` times, once
with `retries=0`, finished once, no unexplained EngineDied).
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from dataclasses import dataclass
from typing import Any

from taskmill import MapTask, StringTask

KINDS = (("plain", 0.55), ("timeout", 0.07), ("recovery", 0.1), ("after", 0.11),
         ("string", 0.1), ("payload", 0.03), ("shared", 0.04))
PAYLOAD_SIZES = (64 * 1024, 100_000, 256 * 1024)  # (from 64 KiB on, the store's own files)
TIMEOUT = 0.15  # the timeout kind's
TIMEOUT_SLEEP = 2.0  # ... and what its code would sleep
# Outcomes any task may end with under the faults, besides its own: its engine was killed or
# stopped (checked apart: the engine must be one a fault touched), or the soak aborted it.
FAULT_OUTCOMES = ("EngineDied", "TaskAborted")


def soak_task(log: str, marker: str, seconds: float, fail: bool) -> str:
    """Task code: note this run's start (and the engine's pid), sleep, note its end, return the
    marker (or fail on purpose, without an end). Its output names the engine's pid, so that
    the task's `task_info` says which run's result counted."""
    import os
    import time

    def note(line: str) -> None:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    note(f"{marker} {os.getpid()}\n")
    print(f"soak pid {os.getpid()}")  # (the run whose result counts: in its task_info)
    time.sleep(seconds)
    if fail:
        raise ValueError(f"{marker} failed on purpose")
    note(f"{marker} {os.getpid()} end\n")
    return marker


def payload(marker: str, size: int) -> bytes:
    """`size` bytes made from `marker` (each job's its own)."""
    import hashlib

    block = hashlib.blake2b(marker.encode()).digest()  # (64 bytes)
    return (block * (size // len(block) + 1))[:size]


def soak_payload(log: str, marker: str, seconds: float, fail: bool, data: bytes) -> tuple:
    """`soak_task`, returning its payload with its marker."""
    return soak_task(log, marker, seconds, fail), data


def digest(data: bytes) -> str:
    import hashlib

    return hashlib.blake2b(data).hexdigest()


def soak_shared(log: str, marker: str, seconds: float, fail: bool, data: bytes) -> tuple:
    """`soak_task`, returning a digest of the value it was given (a put one)."""
    return soak_task(log, marker, seconds, fail), digest(data)


def died_pid(text: str) -> int | None:
    """The engine pid an EngineDied's message names ("engine 3 (host pid 4711) died ..."),
    or None."""
    named = re.search(r"\bpid (\d+)\)", text)
    return int(named[1]) if named else None


@dataclass
class Given:
    """A taskid the client was given: `marker` is the value it must return (the recovery's
    for a recovery job), `first` the failing task's marker of a recovery job, `dep` the taskid
    an after job waits for."""

    marker: str
    retries: int
    kind: str = "plain"
    first: str | None = None
    dep: int | None = None
    size: int = 0  # a payload job's bytes
    fail: bool = False  # its code fails on purpose (ValueError)
    expect: str | None = None  # a shared job's digest of its put value

    @property
    def markers(self) -> tuple[str, ...]:
        """Every marker its code may note (a refused submit's must never be noted)."""
        return (self.marker,) if self.first is None else (self.first, self.marker)


@dataclass
class Job:
    """One submission: `task` for `run`; for `submit`, `options` of `client.options`, the
    function and its `args` (`options` None: this kind goes through `run` only)."""

    given: Given
    task: Any
    options: dict[str, Any] | None
    args: tuple[Any, ...]
    function: Any = soak_task


def new_job(rng: random.Random, log: str, marker: str, recent: list[int],
            shared: tuple[Any, str] | None = None) -> Job:
    """A job of a kind drawn at random; `recent`: taskids given lately (an after job waits
    for one of them); `shared`: an ObjectRef the client put, and its value's digest."""
    kinds, weights = zip(*KINDS, strict=True)
    kind = rng.choices(kinds, weights)[0]
    if (kind == "after" and not recent) or (kind == "shared" and shared is None):
        kind = "plain"
    retries = rng.choice((0, 0, 2))
    duration = rng.choice((0.0, 0.002, 0.01, 0.02, 0.3))
    fail = rng.random() < 0.03
    if kind == "timeout":
        args = (log, marker, TIMEOUT_SLEEP, False)
        return Job(Given(marker, retries, kind), MapTask(soak_task, args, retries=retries,
                                                         timeout=TIMEOUT),
                   {"retries": retries, "timeout": TIMEOUT}, args)
    if kind == "recovery":
        first = f"{marker}-fails"
        recovery = MapTask(soak_task, (log, marker, duration, False))
        task = MapTask(soak_task, (log, first, duration, True), retries=retries,
                       recovery_task=recovery)
        return Job(Given(marker, retries, kind, first=first), task, None, ())
    if kind == "payload":
        size = rng.choice(PAYLOAD_SIZES)
        args = (log, marker, duration, fail, payload(marker, size))
        return Job(Given(marker, retries, kind, size=size, fail=fail),
                   MapTask(soak_payload, args, retries=retries), {"retries": retries}, args,
                   soak_payload)
    if kind == "shared":
        assert shared is not None
        args = (log, marker, duration, fail, shared[0])
        return Job(Given(marker, retries, kind, fail=fail, expect=shared[1]),
                   MapTask(soak_shared, args, retries=retries), {"retries": retries}, args,
                   soak_shared)
    if kind == "string":
        task = StringTask("y = soak(log, marker, seconds, fail)", pull="y", retries=retries,
                          push={"soak": soak_task, "log": log, "marker": marker,
                                "seconds": duration, "fail": fail})
        return Job(Given(marker, retries, kind, fail=fail), task, None, ())
    args = (log, marker, duration, fail)
    if kind == "after":
        dep = rng.choice(recent[-50:])
        return Job(Given(marker, retries, kind, dep=dep, fail=fail),
                   MapTask(soak_task, args, retries=retries, after=[dep]),
                   {"retries": retries, "after": [dep]}, args)
    return Job(Given(marker, retries, fail=fail), MapTask(soak_task, args, retries=retries),
               {"retries": retries}, args)


class RunsLog:
    """The runs log read back: each marker's runs (the engine pid of each start), the
    positions of its starts in the log, and of its ends with their pid (the log is appended
    to in time order)."""

    def __init__(self, text: str) -> None:
        self.pids: dict[str, list[int]] = {}
        self.starts: dict[str, list[int]] = {}
        self.ends: dict[str, list[tuple[int, int]]] = {}
        for i, line in enumerate(text.splitlines()):
            marker, pid, *end = line.split()
            if end:
                self.ends.setdefault(marker, []).append((i, int(pid)))
            else:
                self.pids.setdefault(marker, []).append(int(pid))
                self.starts.setdefault(marker, []).append(i)

    def runs(self, marker: str) -> int:
        return len(self.pids.get(marker, ()))


def value_of(g: Given, value: Any) -> Any:
    """The marker a finished task's value holds (a StringTask's pulled `y`; a payload job's
    first item, if its bytes came back whole)."""
    if g.kind == "string":
        return getattr(value, "results", {}).get("y", value)
    if g.kind == "payload":
        whole = (type(value) is tuple and len(value) == 2
                 and value[1] == payload(g.marker, g.size))
        return value[0] if whole else f"<a payload that is not its {g.size} bytes>"
    if g.kind == "shared":
        own = type(value) is tuple and len(value) == 2 and value[1] == g.expect
        return value[0] if own else f"<a digest {value!r:.80} of another value than put>"
    return value


def failure_of(g: Given, value: Any) -> BaseException | None:
    """The exception a StringTask's result carries (`get_task_result` returns a failed
    StringTask's TaskResult, as the seed did, rather than raising)."""
    return getattr(value, "failure", None) if g.kind == "string" else None


def kind_problems(tid: int, g: Given, outcome: str, log: RunsLog) -> list[str]:
    """What is wrong with how a job ended, for its kind: a failure it could not have (besides
    the faults' EngineDied and the soak's aborts, only its own ValueError if it fails on
    purpose, DependencyError for an after job); a timeout job's success; a recovery job's
    failure or extra runs. (The runs of other kinds are the soak's own checks.)"""
    if g.kind in ("plain", "after", "string", "payload", "shared"):
        may = {"ok", *FAULT_OUTCOMES} | ({"ValueError"} if g.fail else set()) | (
            {"DependencyError"} if g.kind == "after" else set())
        if outcome not in may:
            return [f"task {tid} ({g.marker}, {g.kind}) ended {outcome}"]
        return []
    if g.kind == "timeout" and outcome not in ("TaskTimeout", *FAULT_OUTCOMES):
        return [f"task {tid} ({g.marker}): timeout {TIMEOUT} s on a {TIMEOUT_SLEEP} s task, yet "
                f"it ended {outcome}"]
    if g.kind == "recovery":
        problems = []
        if outcome not in ("ok", *FAULT_OUTCOMES):
            problems.append(f"task {tid} ({g.first}): failed with a recovery task, yet it "
                            f"ended {outcome}")
        if log.runs(g.marker) > 1:
            problems.append(f"task {tid}: its recovery ({g.marker}) ran "
                            f"{log.runs(g.marker)} times")
        if log.runs(g.first) > g.retries + 1:
            problems.append(f"task {tid} ({g.first}, retries={g.retries}) ran "
                            f"{log.runs(g.first)} times")
        return problems
    return []


def counted_pid(info: dict[str, Any]) -> int | None:
    """The engine pid of the run whose result counted, from a task's `task_info` (its
    output: `soak_task` prints it), or None."""
    pids = re.findall(r"soak pid (\d+)", info.get("stdout") or "")
    return int(pids[-1]) if pids else None


def after_problems(tid: int, g: Given, outcome: str, dep_outcome: str | None,
                   dep: Given | None, dep_pid: int | None, log: RunsLog) -> list[str]:
    """What is wrong with an after job's end, given how the task it waited for ended
    (`dep_outcome` None: that task does not exist, its submit refused) and the engine pid of
    that task's counted run (`dep_pid`; None: unknown). A run of that task on an engine that
    was declared dead while it ran (stopped, then continued) may end after this one starts:
    its result was not taken, so only the counted run's end is compared."""
    ran = log.runs(g.marker)
    if dep_outcome != "ok":
        if outcome not in ("DependencyError", "TaskAborted") or ran:
            return [f"task {tid} ({g.marker}) after {g.dep}, which ended {dep_outcome}: "
                    f"it ended {outcome} and ran {ran} times (DependencyError, never run)"]
        return []
    if outcome == "DependencyError":
        return [f"task {tid} ({g.marker}) after {g.dep}, which succeeded: DependencyError"]
    assert dep is not None
    ends = [i for i, pid in log.ends.get(dep.marker, []) if dep_pid in (None, pid)]
    end = ends[-1 if dep_pid is not None else 0] if ends else None  # (the counted run's)
    starts = log.starts.get(g.marker, [])
    if starts and (end is None or starts[0] < end):
        return [f"task {tid} ({g.marker}) started before {g.dep} ({dep.marker}, its counted "
                f"run on pid {dep_pid}), which it comes after, ended (runs log lines "
                f"{starts[0]} and {end})"]
    return []


@dataclass
class MapRun:
    """A `client.map` of soak tasks made under the faults, and how it ended: `values` if it
    returned, `failures` (index, exception name, text) of its CompositeError, or `outcome` the
    name of what else it raised."""

    markers: list[str]
    retries: int
    outcome: str
    values: list[Any] | None = None
    failures: tuple[tuple[int, str, str], ...] = ()


def run_map(tc: Any, calls: Any, rng: random.Random, log: str, prefix: str,
            timeout: float) -> MapRun:
    """A map of 4-40 soak tasks (none fails by itself) in chunks of 1, 3, 8 or the default."""
    from taskmill import CompositeError, StoreError

    k = rng.randint(4, 40)
    retries = rng.choice((0, 2))
    markers = [f"{prefix}-i{i}" for i in range(k)]
    durations = [rng.choice((0.0, 0.002, 0.01)) for _ in range(k)]
    try:
        values = calls(tc.options(retries=retries).map, soak_task, [log] * k, markers,
                       durations, [False] * k, chunksize=rng.choice((1, 3, 8, None)),
                       timeout=timeout)
        return MapRun(markers, retries, "ok", values=values)
    except CompositeError as e:
        return MapRun(markers, retries, "CompositeError", failures=tuple(
            (f.index, type(f.exception).__name__, str(f.exception)) for f in e.elist))
    except StoreError:  # (a full disk refused one of its chunks: the others are aborted)
        return MapRun(markers, retries, "StoreError")
    except Exception as e:  # noqa: BLE001 - a problem, reported by map_problems
        return MapRun(markers, retries, f"{type(e).__name__}: {e}")


def map_problems(m: MapRun, log: RunsLog, touched: set[int]) -> list[str]:
    """What is wrong with how a map ended: its values must be its markers in order; its
    only failures, EngineDied of an engine a fault touched, or StoreError of an element
    whose submit a full disk refused (it must never have run); no element may run more than
    retries + 1 times, and with retries=0 every element that did not fail ran once."""
    what = f"map {m.markers[0].rsplit('-i', 1)[0]} (retries={m.retries})"
    problems = []
    if m.outcome not in ("ok", "CompositeError", "StoreError"):
        problems.append(f"{what} raised {m.outcome}")
    if m.outcome == "ok" and m.values != m.markers:
        problems.append(f"{what} returned {m.values!r:.200} for {m.markers!r:.200}")
    failed = {i for i, _, _ in m.failures}
    for i, name, text in m.failures:
        pid = died_pid(text)
        if name == "StoreError":
            if log.runs(m.markers[i]):
                problems.append(f"{what}: element {i} failed with StoreError, yet it ran: "
                                f"{text:.200}")
        elif name != "EngineDied" or (pid is not None and pid not in touched):
            problems.append(f"{what}: element {i} failed with {name}: {text:.200}")
    for i, marker in enumerate(m.markers):
        ran = log.runs(marker)
        if ran > m.retries + 1:
            problems.append(f"{what}: element {i} ({marker}) ran {ran} times")
        elif m.outcome in ("ok", "CompositeError") and i not in failed and (
                ran < 1 or (m.retries == 0 and ran != 1)):
            problems.append(f"{what}: element {i} ({marker}) succeeded, and ran {ran} times")
    return problems


class AsyncSide(threading.Thread):
    """A second client beside the soak's, asyncio's (`AsyncTaskClient`), on a thread of its
    own: it keeps IN_FLIGHT futures of `soak_task` submitted (retries 0 or 2; 3% fail on
    purpose), awaits each within `bound` seconds and notes how it ended (`records`: marker,
    retries, fails, outcome, value or error text) until `stop_event`, then settles them."""

    IN_FLIGHT = 20

    def __init__(self, conn: str, log: str, seed: int, timeout: float,
                 reconnect_timeout: float, bound: float) -> None:
        super().__init__(name="soak-async-client", daemon=True)
        self.conn, self.log, self.bound = conn, log, bound
        self.timeout, self.reconnect_timeout = timeout, reconnect_timeout
        self.rng = random.Random(seed)
        self.records: list[tuple[str, int, bool, str, Any]] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - the soak reports it
            self.error = e

    async def _main(self) -> None:
        from taskmill import AsyncTaskClient

        async with AsyncTaskClient(self.conn, timeout=self.timeout,
                                   reconnect_timeout=self.reconnect_timeout) as ac:
            pending: set[asyncio.Task] = set()
            n = 0
            while not self.stop_event.is_set():
                while len(pending) < self.IN_FLIGHT:
                    n += 1
                    marker = f"a{n}-{self.rng.getrandbits(32):08x}"
                    pending.add(asyncio.ensure_future(self._one(ac, marker)))
                _, pending = await asyncio.wait(pending, timeout=0.5,
                                                return_when=asyncio.FIRST_COMPLETED)
            if pending:
                await asyncio.wait(pending)

    async def _one(self, ac: Any, marker: str) -> None:
        retries = self.rng.choice((0, 0, 2))
        fail = self.rng.random() < 0.03
        duration = self.rng.choice((0.0, 0.002, 0.01, 0.05))
        try:
            fut = ac.options(retries=retries).submit(soak_task, self.log, marker, duration, fail)
            value = await asyncio.wait_for(fut, self.bound)
            outcome = "ok"
        except Exception as e:  # noqa: BLE001 - how it ended is what is checked
            outcome, value = type(e).__name__, str(e)
        self.records.append((marker, retries, fail, outcome, value))


def async_problems(records: list[tuple[str, int, bool, str, Any]], log: RunsLog,
                   touched: set[int]) -> list[str]:
    """What is wrong with how the asyncio client's futures ended: a value not its own; a
    failure it could not have (its own ValueError only if it fails on purpose; EngineDied only
    of an engine a fault touched; StoreError, a submit refused by a full disk, only if it
    never ran); more runs than its retries allow, or not exactly one with retries=0."""
    problems = []
    for marker, retries, fail, outcome, value in records:
        ran = log.runs(marker)
        what = f"async future {marker} (retries={retries})"
        if outcome == "ok" and value != marker:
            problems.append(f"{what}: value {value!r:.100} is not its own")
        elif outcome == "StoreError" and ran:
            problems.append(f"{what}: its submit was refused, yet it ran {ran} times")
        elif outcome == "EngineDied":
            pid = died_pid(str(value))
            if pid is not None and pid not in touched:
                problems.append(f"{what}: EngineDied, but no fault touched the engine: {value}")
        elif outcome not in ("ok", "StoreError") and not (outcome == "ValueError" and fail):
            problems.append(f"{what}: ended {outcome}: {value!s:.200}")
        if ran > retries + 1:
            problems.append(f"{what} ran {ran} times")
        elif retries == 0 and outcome in ("ok", "ValueError") and ran != 1:
            problems.append(f"{what}, {outcome}, ran {ran} times")
    return problems
