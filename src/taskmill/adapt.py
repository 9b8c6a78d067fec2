"""Adaptive engines: a cluster that grows while tasks wait and shrinks when its engines idle.

`Cluster.adapt(minimum, maximum, idle_after)` starts an `Adapter`: a thread in the cluster's
owner process that, every `interval` seconds, asks the controller for its engines and queue
and follows `plan()`:

    engines() + queue_status() + engines still starting --plan()--> Plan(start, retire)
              (each idle engine's `idle_since`, the controller's wall clock, which is this
              machine's: a Cluster starts its controller here, becomes `idle_for`)
    start k:  Cluster.add_engines(k) (the cluster's launcher: local processes, a Slurm job, ...)
    retire:   TaskClient.retire_engines(ids): the controller gives them no new task, asks back
              what they buffered and has not started (queued again, uncounted), lets a running
              task finish, then tells each to stop; it exits with status 0, which the local
              launcher does not restart, and a Slurm job step or array element simply ends.

So no task is lost or run twice by shrinking: an engine stops only once it holds nothing and
the controller has stored its results. `plan` is a pure function (no clock, no I/O): the rules
are tested directly (tests/test_adapt_plan.py), the thread only carries them out.

The rules (`plan`):
- work = tasks scheduled + pending (waiting in the controller, or held by an engine); the
  cluster wants one engine per task, at least `minimum` and at most `maximum`;
- engines that are idle or busy count, and so do those launched and not registered yet
  (`starting`, for at most `start_timeout` seconds); retiring and gone ones do not;
- fewer than wanted: start the difference;
- more than wanted, and no task waiting in the controller: retire the surplus among the
  engines idle for at least `idle_after` seconds, the longest idle first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .checks import seconds

log = logging.getLogger("taskmill.adapt")

LIVE_STATES = ("idle", "busy")  # engines that take tasks (not retiring, dead or retired)
HISTORY_KEPT = 1000  # the Adapter's newest decisions kept for `history`


@dataclass(frozen=True, slots=True)
class Policy:
    """How far a cluster may grow and shrink, and how long an engine idles before it goes."""

    minimum: int = 0
    maximum: int = 1
    idle_after: float = 60.0

    def __post_init__(self) -> None:
        for name in ("minimum", "maximum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"adapt: {name} must be an int >= 0, not {value!r}")
        if self.maximum < max(1, self.minimum):
            raise ValueError(f"adapt: maximum must be >= 1 and >= minimum ({self.minimum}), "
                             f"not {self.maximum!r}")
        seconds("idle_after", self.idle_after, zero=True)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now: start `start` engines, retire the engines `retire`."""

    start: int = 0
    retire: tuple[int, ...] = ()


def plan(policy: Policy, engines: list[dict[str, Any]], queue: dict[str, Any],
         starting: int = 0) -> Plan:
    """What to do, from the controller's engine table (`engines()`, each idle engine with
    `idle_for`: seconds it has idled) and `queue_status()`, with `starting` engines launched
    and not registered yet. See the module docstring."""
    live = [e for e in engines if e.get("state") in LIVE_STATES]
    work = int(queue.get("scheduled", 0)) + int(queue.get("pending", 0))
    want = max(policy.minimum, min(policy.maximum, work))
    have = len(live) + max(0, starting)
    if have < want:
        return Plan(start=want - have)
    surplus = len(live) - want
    if surplus <= 0 or queue.get("scheduled", 0):
        return Plan()
    idle = [e for e in live if e["state"] == "idle"
            and (e.get("idle_for") or 0.0) >= policy.idle_after]
    idle.sort(key=lambda e: (-(e.get("idle_for") or 0.0), e["engineid"]))
    return Plan(retire=tuple(e["engineid"] for e in idle[:surplus]))


class Starting:
    """Engines launched and not registered yet: each launch counts until as many engines
    with new ids have registered, or until `timeout` seconds have passed (a launch that never
    comes up must not keep the cluster from growing)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.launches: list[tuple[float, int]] = []  # (when, engines not seen yet), oldest first
        self.newest_id = -1

    def launched(self, k: int, now: float) -> None:
        self.launches.append((now, k))

    def count(self, engines: list[dict[str, Any]], now: float) -> int:
        new = [e["engineid"] for e in engines if e["engineid"] > self.newest_id]
        if new:
            self.newest_id = max(new)
        seen = len(new)
        left = []
        for when, k in self.launches:
            used = min(seen, k)
            seen -= used
            if k - used > 0 and now - when < self.timeout:
                left.append((when, k - used))
        self.launches = left
        return sum(k for _, k in left)


class Adapter:
    """The thread that carries out `plan` for a cluster (see the module docstring).

    `read` returns (engines, queue) from the controller; `start(k)` launches k engines;
    `retire(ids)` asks the controller to retire them. `history`: the newest decisions, each
    (time, live engines, starting, the Plan), for a notebook or a test to look at."""

    def __init__(self, policy: Policy, *, read: Callable[[], tuple[list[dict], dict]],
                 start: Callable[[int], None], retire: Callable[[list[int]], Any],
                 interval: float = 1.0, start_timeout: float = 60.0,
                 pending: Callable[[], int | None] | None = None) -> None:
        self.policy = policy
        self.interval = seconds("interval", interval)
        self._read, self._start, self._retire = read, start, retire
        # Engines the launcher's resource manager still holds queued (a Slurm job waiting
        # for room): they count as starting however long they wait, or they would be asked
        # for again each `start_timeout` (None: the launcher cannot tell).
        self._pending = pending
        self.starting = Starting(start_timeout)
        self.history: list[tuple[float, int, int, Plan]] = []
        self.largest = 0  # the most engines live at once, seen so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskmill-adapt", daemon=True)

    def begin(self, engines_now: list[dict[str, Any]], launched: int = 0) -> Adapter:
        """Start the thread; the engines registered now are not counted as launched by it,
        and those of the `launched` before it that are not live yet are (a cluster started
        with wait=False)."""
        now = time.monotonic()
        self.starting.count(engines_now, now)
        starting = launched - sum(1 for e in engines_now if e.get("state") in LIVE_STATES)
        if starting > 0:
            self.starting.launched(starting, now)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop adapting (the engines stay as they are)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def step(self) -> Plan:
        """One look at the controller and what follows from it."""
        engines, queue = self._read()
        wall = time.time()
        for e in engines:
            since = e.get("idle_since")
            e["idle_for"] = None if since is None else max(0.0, wall - since)
        now = time.monotonic()
        starting = self.starting.count(engines, now)
        queued = self._pending() if self._pending is not None else None
        if queued is not None:
            starting = max(starting, queued)
        decided = plan(self.policy, engines, queue, starting)
        live = sum(1 for e in engines if e.get("state") in LIVE_STATES)
        self.largest = max(self.largest, live)
        if decided.start or decided.retire:
            log.info("adapt: %d engines live, %d starting, %d tasks waiting or held: %s",
                     live, starting, queue.get("scheduled", 0) + queue.get("pending", 0),
                     f"starting {decided.start} more" if decided.start
                     else f"retiring engines {list(decided.retire)} (idle)")
            self.history = [*self.history[1 - HISTORY_KEPT:], (time.time(), live, starting,
                                                                decided)]
        if decided.start:
            self.starting.launched(decided.start, now)
            self._start(decided.start)
        if decided.retire:
            self._retire(list(decided.retire))
        return decided

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a controller away for a moment, a launcher
                # that refused: said, and tried again at the next look
                log.warning("adapt: %s: %s", type(e).__name__, e)
            self._stop.wait(self.interval)
