"""Helpers shared by the system tests: polling with a deadline, file gates for tasks, the
functions the tests send to engines, and the controllers a test starts of its own.

Functions here that are sent to engines are pickled by value (tests/conftest.py registers this
module), since engines cannot import the tests. The fixtures built on these helpers (`eids`,
`gate`, `engine_names`) are in tests/system/conftest.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TASKMILL = [sys.executable, "-m", "taskmill"]

TIME_FORMAT = "%Y/%m/%d %H:%M:%S"  # TaskResult.submitted, .completed, as the seed wrote them
UNKNOWN_TID = 987_654_321  # a taskid no test's controller ever gives


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


async def wait_until_async(predicate, what: str, timeout: float = 60.0) -> None:
    """`wait_until` for a coroutine function `predicate`, in a running event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


def refused(tc, reason: str) -> int:
    """How many messages the controller has refused for `reason` (its statistics)."""
    return tc.statistics()["refused"].get(reason, 0)


def wait_refused(tc, reason: str, at_least: int, timeout: float = 30.0) -> dict:
    """Wait until the controller has refused `at_least` messages for `reason`; the `refused`
    counts of the statistics that showed it."""

    def reached():
        counts = tc.statistics()["refused"]
        return [counts] if counts.get(reason, 0) >= at_least else None

    return poll(reached, timeout, f"refused[{reason!r}] to reach {at_least}")[0]


def read_lines(path: Path | str) -> list[str]:
    """The lines of the file at `path`; none if there is no such file yet."""
    path = Path(path)
    return path.read_text().splitlines() if path.exists() else []


def wait_for_file(path: str, timeout: float = 60.0) -> int:
    """Run on an engine: block until `path` exists (tests release tasks this way); its pid."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def wrong_key_file(connection_file, path) -> tuple[Path, dict]:
    """A copy of a connection file at `path` (mode 0600) with a key of its own: a peer holding
    it is one the controller must not hear. Returns the path and the settings written."""
    import json
    import secrets

    settings = json.loads(Path(connection_file).read_text())
    settings["key"] = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(settings, f)
    return Path(path), settings


def record(log, tag, gate=None):
    """Task code: note this run (a line `tag` in the file `log`), then (optionally) wait for
    `gate` to exist; returns the engine's pid. (Shipped by value, as code of this folder.)"""
    import os
    import time

    with open(log, "a") as f:
        f.write(f"{tag}\n")
    end = time.monotonic() + 90
    while gate is not None and not os.path.exists(gate):
        if time.monotonic() > end:
            raise TimeoutError("gate never opened")
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


def block_until(release: str, started: str, deadline: float = 90.0) -> str:
    """Run on an engine: mark `started`, then wait (bounded) until `release` exists."""
    open(started, "w").close()
    end = time.monotonic() + deadline
    while not os.path.exists(release):
        if time.monotonic() > end:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.01)
    return "released"


def make_logger(fail: bool = True, message: str = "attempt failed"):
    """A function that appends a line (the engine id, or `tag`) to `path`, then fails if asked."""

    def log_attempt(path, tag=None):
        import taskmill

        line = str(taskmill.current_engine().engineid) if tag is None else tag
        with open(path, "a") as f:
            f.write(line + "\n")
        if fail:
            raise ValueError(f"{message} ({line})")
        return line

    return log_attempt


def make_where():
    """A function that returns the id of the engine it runs on."""

    def where(*_args):
        import taskmill

        return taskmill.current_engine().engineid

    return where


def square(x):
    return x * x


def fail_on_multiples_of_seven(x):
    if x % 7 == 0:
        raise ValueError(f"{x} is a multiple of 7")
    return x


def raise_keyerror(key):
    raise KeyError(key)


def fail_loudly(message):
    raise ValueError(message)


def alive_engines(tc) -> dict[int, dict]:
    """engineid -> the engine's entry in `tc.engines()`, for the engines not dead."""
    return {e["engineid"]: e for e in tc.engines() if e["state"] != "dead"}


def alive_engine_ids(tc) -> list[int]:
    return sorted(alive_engines(tc))


class Gate:
    """Holds engines with blocking tasks until `release()`; the `gate` fixture closes it.

    `hold(eid)` holds one engine with a MapTask (its taskid kept for `close()`'s barrier);
    `hold_every_engine()` holds each live engine with a future of `submit`, which `release()`
    waits for.
    """

    def __init__(self, tc, folder: Path) -> None:
        self.tc = tc
        self.folder = folder
        self.release_file = folder / "gate-release"
        self.tids: list[int] = []
        self.started: list[Path] = []
        self.eids: list[int] = []
        self.held: list = []  # the futures of hold_every_engine()

    def hold(self, eid: int, value=None) -> int:
        from taskmill import MapTask

        started = self.folder / f"gate-started-{len(self.tids)}"
        task = MapTask(make_blocker(), (str(started), str(self.release_file), value),
                       depend={"engineid": eid})
        tid = self.tc.run(task)
        self.tids.append(tid)
        self.started.append(started)
        self.eids.append(eid)
        return tid

    def hold_all(self, eids: list[int]) -> list[int]:
        tids = [self.hold(e, value=f"held {e}") for e in eids]
        self.wait_started()
        return tids

    def hold_every_engine(self) -> list:
        """Hold each live engine with a future of `block_until`; those futures."""
        eids = alive_engine_ids(self.tc)
        for eid in eids:
            self.held.append(self.tc.options(depend={"engineid": eid}).submit(
                block_until, str(self.release_file), str(self.folder / f"started-{eid}")))
        wait_until(lambda: all((self.folder / f"started-{e}").exists() for e in eids),
                   "the gate tasks to start")
        return self.held

    def wait_started(self) -> None:
        wait_until(lambda: all(p.exists() for p in self.started), "the gate tasks to start")
        # With adaptive prefetch an engine that ran tiny tasks may buffer more behind a gate
        # task until the controller sees it run long; tests of where tasks wait need it not to.
        held = set(self.eids)
        wait_until(lambda: all(e["capacity"] == 1 for e in self.tc.engines()
                               if e["engineid"] in held), "held engines to take one task at a time")

    def release(self) -> None:
        self.release_file.touch()
        if self.held:
            cf.wait(self.held, timeout=60)

    def close(self) -> None:
        self.release()
        if self.tids:
            self.tc.barrier(self.tids)


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


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of `size` (e.g. "2m") mounted at `path` (made here) while the block runs: a
    disk that fills up for real (root only: `need_root` first)."""
    need_root("mount a small tmpfs")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Fill the disk holding `folder` to its last block with a file there, then free `leave`
    bytes of it again; the file (remove it to give the space back)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
        if leave:
            f.truncate(f.tell() - leave)
    return filler


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


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate `proc` and wait for it; kill it if it is still there after `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ControllerProcess:
    """A `taskmill controller` process of a test's own (TCP on 127.0.0.1 unless `args` say
    otherwise), to kill -9 and start again on the same connection file and store.

    By default the test writes the connection file (`folder/conn.json`) before the controller
    starts, the store is `folder/tasks.db`, the heartbeat 0.5 s and there is no dashboard.
    `conn=`, `log_path=`, `db=` (`""`: no `--db`, the controller's own default),
    `heartbeat=` (None: the controller's default), `dashboard=True` and `write_connection=False`
    (the controller writes the file, as with `--curve` or `--transport ipc`) change that;
    `stop()` waits `stop_timeout` seconds for it to end before it kills it.
    """

    TASKMILL = TASKMILL

    def __init__(self, folder, *, db: str | None = None, args: tuple[str, ...] = (),
                 conn: Path | None = None, log_path: Path | None = None,
                 heartbeat: float | None = 0.5, dashboard: bool = False,
                 write_connection: bool = True, stop_timeout: float = 10.0):
        folder = Path(folder)
        self.conn = Path(conn) if conn is not None else folder / "conn.json"
        if write_connection:
            from taskmill.connection import new_connection_info, write_connection_file

            self.conn = write_connection_file(self.conn, new_connection_info())
        self.db = str(folder / "tasks.db") if db is None else db
        self.log_path = log_path if log_path is not None else folder / "controller.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.args = [*(["--heartbeat", f"{heartbeat:g}"] if heartbeat is not None else []),
                     *([] if dashboard else ["--no-dashboard"]), *args]
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None

    def start(self, *extra: str) -> subprocess.Popen:
        store = ["--db", self.db] if self.db else []
        self.proc = subprocess.Popen(
            [*TASKMILL, "controller", "--connection-file", str(self.conn), *store, *self.args,
             *extra], stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        return self.proc

    def wait_for_connection_file(self, timeout: float = 30.0) -> None:
        """Wait (at most `timeout`) until the controller has written its connection file."""
        deadline = time.monotonic() + timeout
        while not self.conn.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def ready(self) -> dict:
        """Wait until it answers a client; the connection file's `extra` fields then."""
        from taskmill import TaskClient
        from taskmill.connection import read_connection_file

        poll(lambda: self.conn.exists() or self.proc.poll() is not None, 60, "the connection file")
        assert self.proc.poll() is None, self.log_text()
        with TaskClient(self.conn, timeout=60):
            pass
        return read_connection_file(self.conn).extra

    def engine(self, *extra: str) -> subprocess.Popen:
        """An engine process for this controller (the caller kills it)."""
        return subprocess.Popen([*TASKMILL, "engine", "--no-replace", "--connection-file", str(self.conn),
                                 *extra], stdin=subprocess.DEVNULL, stdout=self.log,
                                stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            stop_process(self.proc, self.stop_timeout)
        self.log.close()


@contextlib.contextmanager
def controller_process(folder, *, engines: int = 0, **options):
    """A started ControllerProcess (`options` as its constructor takes) with `engines` engine
    processes; they are killed and the controller stopped at the end. The engines are in
    `ctl.engines`, where a test may add its own for the same cleanup."""
    ctl = ControllerProcess(folder, **options)
    ctl.start()
    ctl.engines = [ctl.engine() for _ in range(engines)]
    try:
        yield ctl
    finally:
        for e in ctl.engines:
            e.kill()
            e.wait()
        ctl.stop()


@contextlib.contextmanager
def stalled(proc: subprocess.Popen, resume_after: float = 40.0):
    """The controller process `proc` stopped (SIGSTOP, seen in /proc) until the block ends,
    or until `resume_after` seconds have passed (a watchdog: code that waits for the
    controller is freed then, so a test of "does not wait for a stalled controller" fails
    instead of hanging). Yields an Event set when the watchdog resumed it."""
    resumed = threading.Event()

    def resume() -> None:
        resumed.set()
        os.kill(proc.pid, signal.SIGCONT)

    os.kill(proc.pid, signal.SIGSTOP)
    watchdog = threading.Timer(resume_after, resume)
    watchdog.daemon = True
    watchdog.start()
    try:
        poll(lambda: Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1].split()[0]
             in ("T", "t"), 30, "the controller to be stopped")
        yield resumed
    finally:
        watchdog.cancel()
        os.kill(proc.pid, signal.SIGCONT)


class ControllerThread:
    """A `Controller` serving in a thread of this process: see `controller_thread`."""

    def __init__(self, info, conn: Path, ctl, thread: threading.Thread) -> None:
        self.info, self.conn, self.ctl, self.thread = info, conn, ctl, thread


@contextlib.contextmanager
def controller_thread(folder, *, engines: int = 0, **options):
    """A `Controller` (heartbeat 0.5 s and `options`, e.g. `max_message=`, as the
    `taskmill controller` flags would set them) serving in a thread of this process, its
    connection file in `folder/small/`, with `engines` engine processes registered with it.
    Yields a ControllerThread; at the end the engines are killed and the controller stopped."""
    from taskmill import TaskClient
    from taskmill.connection import new_connection_info, write_connection_file
    from taskmill.controller import Controller

    info = new_connection_info()
    if "max_message" in options:  # (as the flag does: clients and engines read it there)
        info.extra["max_message"] = options["max_message"]
    conn = write_connection_file(Path(folder) / "small" / "connection.json", info)
    ctl = Controller(info, **{"heartbeat": 0.5, **options})
    thread = threading.Thread(target=ctl.serve_forever, name="small-controller", daemon=True)
    thread.start()
    procs = [subprocess.Popen([*TASKMILL, "engine", "--no-replace", "--connection-file", str(conn)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(engines)]
    try:
        if engines:
            with TaskClient(conn, timeout=10) as tc:
                wait_until(lambda: len(tc.engines()) == engines,
                           "the engine to register" if engines == 1 else "the engines to register",
                           60)
        yield ControllerThread(info, conn, ctl, thread)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        ctl.stop()
        thread.join(10)
