"""The local launcher (the default): engines as subprocesses of this process, on this machine.

Each engine holds the read end of the owner's lifeline pipe and ends itself when the pipe
closes. An engine that exits with a failure (a status other than 0, or a signal) is started
again (at most `max_restarts` times in all). One that exits with status 0 may have ended on
purpose (it retired: `TaskClient.retire_engines`, `Cluster.adapt`; or it was told to stop with
SIGTERM, and said so: `leaving`), or its task code ended it (`os._exit(0)`): the controller
knows which, so the slot waits for its engine rows (`settle`, asked by the nanny after the
exit was reported), and is started again unless the engine retired or left. An engine the
controller declared dead whose process is still there (stopped, wedged in a C call that holds
the GIL) is killed (SIGKILL) by `settle`, and so started again. `reap()` reports each exit's
pid so that the cluster can tell the controller at once, without waiting for missed
heartbeats. `launch()` may be called while the cluster runs (`add_engines`, the adapt thread)
alongside the nanny's `reap()` and `settle()`: a lock keeps them apart.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..defaults import ENGINE_GONE_STATES
from .base import (
    AdoptedProcess,
    EngineGroup,
    LaunchContext,
    Launcher,
    ProcessHandle,
    engine_command,
    poll_with_group,
    process_state,
    spawn,
    tail,
    terminate,
)

log = logging.getLogger("taskmill.launchers.local")

# Seconds an engine that exited with status 0 waits for the controller's rows to say whether
# it retired or left (then it is not started again) or died (then it is); past it, with no
# answer (no controller), it counts as ended on purpose.
SETTLE_WAIT = 30.0


class LocalLauncher(Launcher):
    """Engines as local subprocesses, replaced when they exit."""

    name = "local"

    def __init__(self, *, python: str = sys.executable, max_restarts: int = 10) -> None:
        self.python = python
        self.max_restarts = max_restarts
        self.restarts = 0
        self._ctx: LaunchContext | None = None
        self._procs: list[ProcessHandle] = []
        self._props: list[dict[str, Any]] = []
        self._gone: set[int] = set()  # slots whose engine exited and was not replaced
        self._stopping = False
        self._lock = threading.Lock()
        self._exits: list[tuple[int, int]] = []  # reaped by `failure`, for the next `reap`
        # Slots whose engine exited with status 0: slot -> [pid, when reap() reported the
        # exit (monotonic; None: not yet), when it was seen]; they are in _gone meanwhile.
        self._undecided: dict[int, list[Any]] = {}
        self._spawned: list[float] = []  # when each slot's process started (monotonic)
        self._seen: set[int] = set()  # slots whose process the controller listed alive

    def launch(self, ctx: LaunchContext, properties: list[dict[str, Any]]) -> None:
        with self._lock:
            self._ctx = ctx
            for p in properties:
                self._procs.append(self._spawn(p, len(self._procs)))
                self._props.append(p)
                self._spawned.append(time.monotonic())

    def _spawn(self, props: dict[str, Any], slot: int) -> subprocess.Popen[bytes]:
        ctx = self._ctx
        assert ctx is not None
        extra: list[str] = ["--no-replace"]  # (the nanny replaces a killed engine)
        fds: tuple[int, ...] = ()
        if ctx.lifeline_fd is not None:
            extra, fds = [*extra, "--parent-fd", str(ctx.lifeline_fd)], (ctx.lifeline_fd,)
        return spawn(engine_command(self.python, ctx.connection_file, props, *extra,
                                    env=ctx.env, cwd=ctx.cwd),
                     ctx.log_path(f"engine-{slot}.log"), pass_fds=fds)

    def reap(self) -> list[tuple[int, int]]:
        with self._lock:
            exits, self._exits = [*self._exits, *self._reap()], []
            now = time.monotonic()
            for entry in self._undecided.values():
                if entry[1] is None:  # (reported now: rows asked from here on know of it)
                    entry[1] = now
            return exits

    def wants_rows(self) -> bool | None:
        with self._lock:
            return None if self._stopping else bool(self._undecided)

    def settle(self, asked_at: float, rows: list[dict[str, Any]]) -> None:
        """Start again each engine that exited with status 0 although the controller says it
        died (it did not retire, and did not say it was leaving); kill each engine process
        that is still there although the controller declared it dead (and had listed it
        alive: a process that has not registered yet may have the pid of a dead one)."""
        host = socket.gethostname()
        mine: dict[int, list[dict[str, Any]]] = {}
        for r in sorted(rows, key=lambda r: r["engineid"]):
            if r.get("hostname") == host:
                mine.setdefault(r["pid"], []).append(r)
        with self._lock:
            if self._stopping:
                return
            now = time.monotonic()
            for slot, (pid, told_at, since) in list(self._undecided.items()):
                last = mine.get(pid, [None])[-1]
                if told_at is None or asked_at < told_at or (
                        last is not None and last["state"] not in ENGINE_GONE_STATES):
                    if now - since < SETTLE_WAIT:
                        continue  # (the controller has not taken the exit in yet)
                    last = None
                del self._undecided[slot]
                if last is None or last["state"] == "retired" or last.get("left"):
                    log.info("engine pid %d ended (status 0: it retired or was told to stop); "
                             "not restarted", pid)
                else:
                    self._gone.discard(slot)
                    self._restart(slot, pid, 0, "the controller declared it dead")
            for slot, proc in enumerate(self._procs):
                states = mine.get(proc.pid)
                if not states or slot in self._gone or proc.poll() is not None:
                    continue
                if any(r["state"] not in ENGINE_GONE_STATES for r in states):
                    if asked_at >= self._spawned[slot]:
                        self._seen.add(slot)
                elif slot in self._seen and states[-1]["state"] == "dead" \
                        and not states[-1].get("left"):
                    log.warning("engine pid %d was declared dead by the controller (engine %d) "
                                "but is still there: killed (SIGKILL), to be started again",
                                proc.pid, states[-1]["engineid"])
                    proc.kill()

    def failure(self) -> str | None:
        """Why no engine can come up any more: every one exited and was not started again
        (status 0, or the restart limit reached). Those that failed are restarted here first,
        as the nanny does once the cluster runs (a start waited out its whole timeout for
        engines that could not start)."""
        with self._lock:
            self._exits += self._reap()
            if not self._procs or len(self._gone) < len(self._procs):
                return None
            last = self._procs[-1]
        logs = self.logs()
        return (f"every engine process exited (the last, pid {last.pid}: {process_state(last)};"
                f" {self.restarts} restarts)"
                + (f"; {logs[-1].name}:\n{tail(logs[-1])}" if logs else ""))

    def _reap(self) -> list[tuple[int, int]]:
        exits: list[tuple[int, int]] = []
        for slot, proc in enumerate(list(self._procs)):
            status = poll_with_group(proc)
            if status is None or slot in self._gone or self._stopping:
                continue
            exits.append((proc.pid, status))
            if status == 0:  # on purpose (retired, or told to stop)? The controller knows
                log.info("engine pid %d ended with status 0; restarted unless the controller "
                         "says it retired or was told to stop", proc.pid)
                self._gone.add(slot)
                self._undecided[slot] = [proc.pid, None, time.monotonic()]
                continue
            self._restart(slot, proc.pid, status)
        return exits

    def _restart(self, slot: int, pid: int, status: int, why: str = "") -> None:
        """Start slot `slot`'s engine again (its process `pid` exited with `status`)."""
        how = f"exited with status {status}" + (f" ({why})" if why else "")
        if self.restarts >= self.max_restarts:
            log.error("engine pid %d %s; not restarted: the limit of %d restarts is reached",
                      pid, how, self.max_restarts)
            self._gone.add(slot)
            return
        new = self._spawn(self._props[slot], slot)
        self._procs[slot] = new
        self.restarts += 1  # (once the new process is in place: `record()` names it)
        self._spawned[slot] = time.monotonic()
        self._seen.discard(slot)
        log.warning("engine pid %d %s; restarted as pid %d (restart %d of at most %d)", pid,
                    how, new.pid, self.restarts, self.max_restarts)

    def groups(self) -> list[EngineGroup]:
        return [EngineGroup(f"engine pid {p.pid}", 1, process_state(p)) for p in self._procs]

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        terminate(self._procs)

    def logs(self) -> list[Path]:
        if self._ctx is None:
            return []
        return sorted(self._ctx.log_path("").glob("engine-*.log"))

    def record(self) -> dict[str, Any]:
        return {"launcher": self.name, "pids": [p.pid for p in self._procs]}

    @classmethod
    def adopt(cls, record: dict[str, Any]) -> LocalLauncher:
        launcher = cls(max_restarts=0)
        launcher._procs = [AdoptedProcess(pid) for pid in record.get("pids", [])]
        launcher._stopping = True  # it reports and stops; it never restarts
        return launcher
