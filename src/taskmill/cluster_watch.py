"""`ControllerWatch`: a cluster starts its controller again when that process dies.

The controller keeps every task and result in its store (a file: the default), so a new one
on the same store and connection file goes on where the dead one stopped: taskids continue,
queued tasks run, and clients and engines reconnect by themselves (docs/durability.md). It
is what a user does by hand after a kill -9 or the kernel's OOM killer; a cluster left with a
dead controller said it was running while every client waited in vain. With `db=":memory:"`
there is nothing to go on from: that is logged once, and the controller is not started
again. Cluster's nanny thread calls `check` a few times a second.

`EngineRows`: the controller's engine rows for the nanny's launcher (launchers/local.py
`settle`), asked for without waiting for the answer: a dead controller must not stop the
nanny's rounds.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from .launchers.base import process_state, spawn
from .protocol import EnginesQuery, from_reply, to_request

ROWS_EVERY = 1.0  # seconds between the nanny's requests for engine rows (unless one is urgent)
ROWS_WAIT = 10.0  # seconds an unanswered request waits before another one goes

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


def told(answer: Future) -> None:
    """The end of the nanny's report of an engine's exit (the heartbeat notices otherwise)."""
    if not answer.cancelled() and answer.exception() is not None:
        log.info("could not tell the controller that an engine exited: %s", answer.exception())


class EngineRows:
    """One request for the engine rows at a time: `ask` sends it (`urgent`: now, else once
    ROWS_EVERY has passed), and `take` gives the latest answer once, with when it was asked."""

    def __init__(self) -> None:
        self._asked_at = -ROWS_WAIT  # (monotonic)
        self._waiting = False
        self._got: tuple[float, list[dict[str, Any]]] | None = None
        self._lock = threading.Lock()

    def ask(self, send: Callable[[dict[str, Any]], Future], urgent: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._asked_at < (ROWS_WAIT if self._waiting else 0 if urgent
                                       else ROWS_EVERY):
                return
            self._asked_at, self._waiting = now, True
        send(to_request(EnginesQuery())).add_done_callback(
            lambda answer: self._answer(now, answer))

    def _answer(self, asked_at: float, answer: Future) -> None:
        try:
            reply = from_reply("engines", answer.result()[0])
            rows = [e.as_map() for e in reply.engines]  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - refused, unreachable: the next one may do
            log.debug("the controller's engine rows did not come: %s", e)
            rows = None
        with self._lock:
            if asked_at == self._asked_at:
                self._waiting = False
            if rows is not None and (self._got is None or self._got[0] <= asked_at):
                self._got = (asked_at, rows)

    def take(self) -> tuple[float, list[dict[str, Any]]] | None:
        with self._lock:
            got, self._got = self._got, None
            return got
