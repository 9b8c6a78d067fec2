"""The local launcher (the default): engines as subprocesses of this process, on this machine.

Each engine holds the read end of the owner's lifeline pipe and ends itself when the pipe
closes. An engine that exits with a failure (a status other than 0, or a signal) is started
again (at most `max_restarts` times in all); one that exits with status 0 ended on purpose (it
retired: `TaskClient.retire_engines`, `Cluster.adapt`; or it was told to stop with SIGTERM)
and is not. `reap()` reports each exit's pid so that the cluster can tell the controller at
once, without waiting for missed heartbeats. `launch()` may be called while the cluster runs
(`add_engines`, the adapt thread) alongside the nanny's `reap()`: a lock keeps them apart.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from .base import (
    AdoptedProcess,
    EngineGroup,
    LaunchContext,
    Launcher,
    ProcessHandle,
    engine_command,
    process_state,
    spawn,
    tail,
    terminate,
)

log = logging.getLogger("taskmill.launchers.local")


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

    def launch(self, ctx: LaunchContext, properties: list[dict[str, Any]]) -> None:
        with self._lock:
            self._ctx = ctx
            for p in properties:
                self._procs.append(self._spawn(p, len(self._procs)))
                self._props.append(p)

    def _spawn(self, props: dict[str, Any], slot: int) -> subprocess.Popen[bytes]:
        ctx = self._ctx
        assert ctx is not None
        extra: list[str] = []
        fds: tuple[int, ...] = ()
        if ctx.lifeline_fd is not None:
            extra, fds = ["--parent-fd", str(ctx.lifeline_fd)], (ctx.lifeline_fd,)
        return spawn(engine_command(self.python, ctx.connection_file, props, *extra,
                                    env=ctx.env, cwd=ctx.cwd),
                     ctx.log_path(f"engine-{slot}.log"), pass_fds=fds)

    def reap(self) -> list[tuple[int, int]]:
        with self._lock:
            exits, self._exits = [*self._exits, *self._reap()], []
            return exits

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
            status = proc.poll()
            if status is None or slot in self._gone or self._stopping:
                continue
            exits.append((proc.pid, status))
            if status == 0:  # it ended on purpose (retired, or told to stop)
                log.info("engine pid %d ended (status 0: it retired or was told to stop); "
                         "not restarted", proc.pid)
                self._gone.add(slot)
                continue
            if self.restarts >= self.max_restarts:
                log.error("engine pid %d exited with status %s; not restarted: the limit of %d "
                          "restarts is reached", proc.pid, status, self.max_restarts)
                self._gone.add(slot)
                continue
            self.restarts += 1
            new = self._spawn(self._props[slot], slot)
            self._procs[slot] = new
            log.warning("engine pid %d exited with status %s; restarted as pid %d (restart %d "
                        "of at most %d)", proc.pid, status, new.pid, self.restarts,
                        self.max_restarts)
        return exits

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
