"""A new engine in place of one ended by its last-resort kill, for engines no nanny watches.

An engine whose task code does not let an abort or a timeout through is ended by its
last-resort kill (faulthandler's, KILL_GRACE after the interruption: the process exits with
status 1), and a new engine (a new id) takes its place. A `Cluster`'s nanny starts that new
engine for its local engines; `taskmill engine` started by hand, or by the ssh, MPI or Slurm
launchers on other machines, does it itself: `supervise` forks the engine process (before any
thread or socket exists) and forks a new one when the last one ended by its kill, which the
engine reports as it arms and cancels it (`b"k"`, `b"-"` on a pipe: `Engine.kill_report_fd`).
Any other end of the engine (SIGTERM, its controller gone for good, an error) ends the command
with its status. SIGTERM, SIGINT and SIGHUP to the command go to the engine; the engine ends
when the command does, however it ends (a pipe it watches, as its `--parent-fd`).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("taskmill.engine")

KILLED_STATUS = 1  # the status faulthandler's kill ends the process with
REPLACE_MAX = 10  # new engines at most within REPLACE_WINDOW seconds (then it ends: a loop)
REPLACE_WINDOW = 60.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def supervise(run: Callable[[int, int], None]) -> int:
    """Run `run(kill_report_fd, lifeline_fd)` in a forked child (the engine), and again in a new
    child each time the last one ended by its last-resort kill; the status to exit with."""
    replaced: deque[float] = deque(maxlen=REPLACE_MAX)
    child = 0

    def forward(signum: int, frame: object) -> None:
        if child:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for s in FORWARDED:
        signal.signal(s, forward)
    while True:
        reports_r, reports_w = os.pipe()
        life_r, life_w = os.pipe()
        child = os.fork()
        if child == 0:  # the engine
            os.close(reports_r)
            os.close(life_w)
            for s in FORWARDED:
                signal.signal(s, signal.SIG_DFL)
            code = 0
            try:
                run(reports_w, life_r)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - said, and the child's status says it
                log.exception("the engine failed")
                code = 1
            os._exit(code)
        os.close(reports_w)
        os.close(life_r)
        status, armed = wait_reporting(child, reports_r)
        os.close(reports_r)
        os.close(life_w)
        code = os.waitstatus_to_exitcode(status)
        if not (code == KILLED_STATUS and armed):
            return code if code >= 0 else 128 - code
        now = time.monotonic()
        if len(replaced) == REPLACE_MAX and now - replaced[0] < REPLACE_WINDOW:
            log.error("the engine was ended by its last-resort kill %d times within %gs: no "
                      "new engine is started (is every task's code stuck?)", REPLACE_MAX,
                      REPLACE_WINDOW)
            return code
        replaced.append(now)
        log.warning("the engine (pid %d) was ended by its last-resort kill (its task's code did "
                    "not let the interruption through): a new engine takes its place", child)


def wait_reporting(child: int, reports: int) -> tuple[int, bool]:
    """Wait for `child` to end, reading its kill reports; (its wait status, whether its kill
    was armed when it ended)."""
    armed = False
    open_ = True
    while True:
        if open_:
            try:
                ready, _, _ = select.select([reports], [], [], 0.5)
            except InterruptedError:
                ready = []
            if ready:
                data = os.read(reports, 4096)
                if data:
                    armed = data[-1:] == b"k"
                else:
                    open_ = False  # (the child closed it, or ended)
        try:  # (its report pipe closed: it is ending, so wait for it)
            pid, status = os.waitpid(child, os.WNOHANG if open_ else 0)
        except ChildProcessError:
            return 0, False
        if pid == child:
            while open_:  # (what it said last, before it ended)
                data = os.read(reports, 4096)
                if not data:
                    break
                armed = data[-1:] == b"k"
            return status, armed
