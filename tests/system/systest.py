"""Helpers shared by the system tests: polling with a deadline, and file gates for tasks.

Functions here that are sent to engines are pickled by value (tests/conftest.py registers this
module), since engines cannot import the tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TASKMILL = [sys.executable, "-m", "taskmill"]


def poll(condition, timeout: float = 60.0, what: str = "condition"):
    """Call `condition` until it returns something true, and return that; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    """Poll `predicate` until it is true; fail the test after `timeout` seconds."""
    poll(predicate, timeout, what)


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for_file(path: str, timeout: float = 60.0) -> int:
    """Run on an engine: block until `path` exists (tests release tasks this way); its pid."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def make_blocker():
    """A function that marks `started`, then waits (bounded) until `release` exists."""

    def block_until_released(started, release, value=None, deadline=90.0):
        import os
        import time

        open(started, "w").close()
        end = time.monotonic() + deadline
        while not os.path.exists(release):
            if time.monotonic() > end:
                raise TimeoutError(f"{release} never appeared")
            time.sleep(0.01)
        return value

    return block_until_released


def need_programs(*names: str) -> None:
    """Skip the calling test, naming what is missing, unless every program is on PATH.

    Under `.ci/run` (TASKMILL_REQUIRE_SYSTEM_TESTS=1) a missing program fails the test instead:
    CI installs them all (.ci/debian-packages), so none is ever skipped silently there.
    """
    import shutil

    import pytest

    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    why = (f"needs {', '.join(missing)} (Debian packages in .ci/debian-packages; "
           "`make test` installs them when run as root)")
    if os.environ.get("TASKMILL_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(why)
    pytest.skip(why)


def need_root(what: str) -> None:
    """Skip the calling test unless it runs as root (namespaces, daemons); fail so under CI."""
    import pytest

    if os.geteuid() == 0:
        return
    why = f"needs root to {what} (`.ci/run` runs as root)"
    if os.environ.get("TASKMILL_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(why)
    pytest.skip(why)


def gone(pid: int) -> bool:
    """True when process `pid` has exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


class ControllerProcess:
    """A `taskmill controller` of a test's own (TCP on 127.0.0.1, a store in `tmp_path`),
    to kill -9 and start again on the same connection file and store."""

    TASKMILL = TASKMILL

    def __init__(self, tmp_path, *, db: str | None = None, args: tuple[str, ...] = ()):
        from taskmill.connection import new_connection_info, write_connection_file

        self.conn = write_connection_file(tmp_path / "conn.json", new_connection_info())
        self.db = db or str(tmp_path / "tasks.db")
        self.log_path = tmp_path / "controller.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.args = list(args)
        self.proc: subprocess.Popen | None = None

    def start(self, *extra: str) -> subprocess.Popen:
        self.proc = subprocess.Popen(
            [*TASKMILL, "controller", "--connection-file", str(self.conn), "--db", self.db,
             "--heartbeat", "0.5", "--no-dashboard", *self.args, *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        return self.proc

    def engine(self, *extra: str) -> subprocess.Popen:
        """An engine process for this controller (the caller kills it)."""
        return subprocess.Popen([*TASKMILL, "engine", "--connection-file", str(self.conn),
                                 *extra], stdout=self.log, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
