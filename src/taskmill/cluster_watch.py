"""`ControllerWatch`: a cluster starts its controller again when that process dies.

The controller keeps every task and result in its store (a file: the default), so a new one
on the same store and connection file goes on where the dead one stopped: taskids continue,
queued tasks run, and clients and engines reconnect by themselves (docs/durability.md). It
is what a user does by hand after a kill -9 or the kernel's OOM killer; a cluster left with a
dead controller said it was running while every client waited in vain. With `db=":memory:"`
there is nothing to go on from: that is logged once, and the controller is not started
again. Cluster's nanny thread calls `check` a few times a second.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from .launchers.base import process_state, spawn

log = logging.getLogger("taskmill.cluster")


class ControllerWatch:
    def __init__(self, cmd: list[str], log_path: Path, pass_fds: tuple[int, ...], *,
                 durable: bool, limit: int) -> None:
        self.cmd, self.log_path, self.pass_fds = cmd, log_path, pass_fds
        self.durable, self.limit = durable, limit
        self.restarts = 0
        self._said = False

    def check(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes] | None:
        """A new controller process if `proc` has ended and may be replaced; else None."""
        if proc.poll() is None:
            return None
        if not self.durable or self.restarts >= self.limit:
            if not self._said:
                self._said = True
                log.error("the controller (pid %d) ended: %s; it is not started again (%s)",
                          proc.pid, process_state(proc),
                          "its store was in memory: nothing to go on from" if not self.durable
                          else f"the limit of {self.limit} restarts is reached")
            return None
        self.restarts += 1
        new = spawn(self.cmd, self.log_path, pass_fds=self.pass_fds)
        log.warning("the controller (pid %d) ended: %s; started again on the same store and "
                    "connection file as pid %d (restart %d of at most %d)", proc.pid,
                    process_state(proc), new.pid, self.restarts, self.limit)
        return new
