"""The launcher interface: how a `Cluster` starts its engines, here or through a resource manager.

A launcher starts engines that connect to a controller that is already running (they find it
through its connection file), reports the state of what it started, stops it, and removes the
files it left behind. It never talks to the controller: engines register by themselves, and
the controller notices those that die. Each launcher keeps the promise of `Cluster` that nothing
is left running after its owner exits, however it exits: what it starts holds the owner's
"lifeline" pipe, directly (local engines), through ssh's standard input (ssh engines), or
through a tether process (mpiexec, a Slurm job; see tether.py).

A launcher is used once, by one owner: `check()`, then `launch()` one or more times, `groups()`
and `failure()` while it runs, then `stop()` and `cleanup()`. `record()` writes down what it
started, and `adopt(record)` rebuilds a launcher from that in another process (for
`taskmill cluster status|stop`), which can report and stop, but not launch.
"""

from __future__ import annotations

import abc
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..connection import ensure_private_dir, read_connection_file, taskmill_dir

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when stopping what a launcher started


class LauncherError(RuntimeError):
    """A launcher cannot start engines: a missing program, an unreachable host, a refused job."""


@dataclass(slots=True)
class EngineGroup:
    """One thing a launcher started: an engine process, an ssh session, an mpiexec, a Slurm job."""

    label: str
    engines: int
    state: str  # "running", "pending", "exited 0", "ended", "stopped", ...


@dataclass(slots=True)
class LaunchContext:
    """What a launcher needs from its cluster to start engines."""

    connection_file: Path
    state_dir: Path  # private to this cluster, on this machine (removed at stop)
    lifeline_fd: int | None  # read end of the owner's lifeline pipe (None: no lifeline)
    log_dir: Path | None = None  # where logs of local processes go (None: the state_dir)
    env: dict[str, str] | None = None  # variables the engines' processes get (check_env)
    cwd: str | None = None  # the engines' working folder (on their machines)

    def log_path(self, name: str) -> Path:
        """The path of the log file `name` (e.g. "engine-0.log") of a process started here."""
        return (self.log_dir or self.state_dir) / name


class ProcessHandle(Protocol):
    """What launchers use of a `subprocess.Popen` (an adopted process offers the same)."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class AdoptedProcess:
    """A process started by another process (named in a cluster record), seen through its pid.

    It counts as ours only while its command line still mentions taskmill, so a pid reused by
    an unrelated process is never signalled.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def _ours(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return b"taskmill" in cmdline and not zombie

    def poll(self) -> int | None:
        if self.returncode is None and not self._ours():
            self.returncode = 0  # its real status went to its parent
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                self.returncode = 0

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return self.returncode or 0

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def process_state(proc: ProcessHandle) -> str:
    status = proc.poll()
    if status is None:
        return "running"
    if isinstance(proc, AdoptedProcess):
        return "ended"  # its exit status went to the process that started it
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"exited {status}"
    return f"exited {status}"


def poll_with_group(p: ProcessHandle) -> int | None:
    """`p.poll()`; but once a process we spawned (its own session: `spawn`) has ended, first
    SIGKILL what is left of its process group: what its code started and left (task code's
    `os.system("sleep 300 &")`, a forked copy of an engine) would outlive it, and the cluster.
    (Checked without reaping it: while it is unreaped its pid names that group only.)"""
    if isinstance(p, subprocess.Popen) and p.returncode is None:
        try:
            ended = os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # (reaped already)
            ended = None
        if ended is not None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return p.poll()


def _ended_within(p: ProcessHandle, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while poll_with_group(p) is None:
        if time.monotonic() >= end:
            return False
        time.sleep(0.01)
    return True


def terminate(procs: list[ProcessHandle], grace: float = STOP_GRACE) -> list[ProcessHandle]:
    """SIGTERM every process still running, then SIGKILL those still there after `grace`
    (and, of those we spawned, what is left of their process groups: `poll_with_group`);
    returns those it killed."""
    live = [p for p in procs if poll_with_group(p) is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
        p.send_signal(signal.SIGCONT)  # (a stopped one takes its SIGTERM only once woken)
    deadline = time.monotonic() + grace
    killed = []
    for p in live:
        if not _ended_within(p, max(0.1, deadline - time.monotonic())):
            p.kill()
            if not _ended_within(p, grace):
                p.wait()  # (SIGKILL: it cannot take long)
            killed.append(p)
    return killed


def spawn(cmd: list[str], log_path: Path, *, pass_fds: tuple[int, ...] = (),
          stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start `cmd` in a session of its own, its output appended to `log_path`."""
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it from here
    try:
        return subprocess.Popen(cmd, pass_fds=pass_fds, stdin=stdin, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def spawn_tether(ctx: LaunchContext, log_path: Path, command: list[str] | None = None,
                 on_orphan: list[str] | None = None,
                 remove: Path | None = None,
                 done_if: str | None = None) -> subprocess.Popen[bytes]:
    """Start a tether (tether.py): when the owner goes, it ends `command`, runs `on_orphan`
    (again while it fails, unless its output holds `done_if`) and removes the folder `remove`."""
    cmd = [sys.executable, "-m", "taskmill.launchers.tether"]
    fds: tuple[int, ...] = ()
    if ctx.lifeline_fd is not None:
        cmd += ["--parent-fd", str(ctx.lifeline_fd)]
        fds = (ctx.lifeline_fd,)
    if on_orphan:
        cmd += ["--on-orphan", json.dumps(on_orphan)]
    if remove is not None:
        cmd += ["--remove", str(remove)]
    if done_if:
        cmd += ["--done-if", done_if]
    if command:
        cmd += ["--", *command]
    return spawn(cmd, log_path, pass_fds=fds)


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file, or a note that it does not exist."""
    if not path.exists():
        return f"(no {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def property_args(props: dict[str, Any]) -> list[str]:
    """`taskmill engine` arguments that give an engine these properties."""
    args: list[str] = []
    for k, v in props.items():
        args += ["--property", f"{k}={json.dumps(v)}"]
    return args


def engine_command(python: str, connection_file: str | os.PathLike[str],
                   props: dict[str, Any], *extra: str, env: dict[str, str] | None = None,
                   cwd: str | None = None) -> list[str]:
    """The command line of one engine: `python -m taskmill engine --connection-file F ...`,
    run through `env K=V ...` with `env` (so its process starts with them, on whichever machine
    a launcher runs it: ssh, mpiexec and srun run the same line), and `--cwd DIR` with `cwd`."""
    cmd = [python, "-m", "taskmill", "engine", "--connection-file", str(connection_file),
           *extra, *(["--cwd", str(cwd)] if cwd else []), *property_args(props)]
    if env:
        cmd = ["env", *(f"{k}={v}" for k, v in env.items()), *cmd]
    return cmd


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env(env: Any) -> dict[str, str]:
    """Engine environment variables as given to Cluster(env=...) or `--env KEY=VALUE`:
    names of letters, digits and underscores (not starting with a digit), str values."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise TypeError(f"env must be a dict of str to str, not {type(env).__name__}")
    for k, v in env.items():
        if not isinstance(k, str) or not ENV_NAME.fullmatch(k):
            raise ValueError(f"env: {k!r} is not a variable name (letters, digits, _)")
        if not isinstance(v, str) or "\0" in v:
            raise ValueError(f"env: the value of {k} must be a str without NUL, not {v!r}")
    return dict(env)


def require_programs(launcher: str, *programs: str, how: str) -> None:
    """Raise LauncherError naming every program of `programs` that is not on PATH."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise LauncherError(
            f"--launcher {launcher} needs {', '.join(repr(m) for m in missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH; {how}")


def require_tcp(launcher: str, connection_file: Path) -> None:
    """Raise LauncherError when the controller listens on unix sockets (`ipc://`), which
    engines started through a resource manager (perhaps on other machines) cannot reach."""
    info = read_connection_file(connection_file)
    if info.is_ipc:
        raise LauncherError(
            f"the {launcher} launcher starts engines that may run on other machines, but the "
            f"controller listens on unix sockets ({info.engine_url}), which only this machine "
            "reaches: give the cluster TCP (Cluster(transport='tcp'), or an ip the engines "
            "can reach such as ip='0.0.0.0')")


def one_set_of_properties(launcher: str, properties: list[dict[str, Any]]) -> dict[str, Any]:
    """The properties shared by every engine, for launchers that start all with one command."""
    first = properties[0] if properties else {}
    if any(p != first for p in properties):
        raise LauncherError(
            f"the {launcher} launcher starts all its engines with one command, so they all get "
            f"the same properties, not {properties!r}; give one dict (engines can still be told "
            "apart by the properties they set themselves, such as mpi_rank)")
    return first


class SharedWorkDir:
    """A private folder that engines on other machines can read (the connection file, scripts).

    A fresh subfolder of `parent`, by default taskmill's profile root (`$TASKMILL_DIR` or
    `~/.taskmill`) + `/launch`, which clusters usually share between nodes. `remove()` deletes
    the subfolder, never `parent`.
    """

    def __init__(self, prefix: str, parent: str | os.PathLike[str] | None = None) -> None:
        base = Path(parent) if parent else taskmill_dir() / "launch"
        self.path = base / f"{prefix}-{secrets.token_hex(4)}"
        self._made = False

    @classmethod
    def existing(cls, path: str | os.PathLike[str]) -> SharedWorkDir:
        """The work folder of a record (see `Launcher.adopt`)."""
        work = cls("adopted")
        work.path = Path(path)
        return work

    def connection_file(self, source: Path) -> Path:
        """A copy of `source` in this folder (mode 0600, in a 0700 folder)."""
        ensure_private_dir(self.path)
        self._made = True
        target = self.path / "connection.json"
        if not target.exists():
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(source.read_bytes())
        return target

    def remove(self) -> None:
        if self._made or self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)


class Launcher(abc.ABC):
    """Starts engines for a cluster. Subclasses: local, ssh, mpi, slurm."""

    name: ClassVar[str]
    restarts: int = 0  # engines started again after they exited (only the local launcher does)

    def check(self) -> None:  # noqa: B027 - most launchers have something to check; some not
        """Raise LauncherError when this launcher cannot work here (e.g. a missing program)."""

    @abc.abstractmethod
    def launch(self, ctx: LaunchContext, properties: list[dict[str, Any]]) -> None:
        """Start `len(properties)` more engines, engine i with `properties[i]`."""

    def pending(self) -> int | None:
        """Engines asked for that the resource manager still holds queued (not started yet);
        None when this launcher cannot tell (`Cluster.adapt` counts them as starting)."""
        return None

    @abc.abstractmethod
    def groups(self) -> list[EngineGroup]:
        """What this launcher started, and the state of each."""

    def failure(self) -> str | None:
        """Why no engine launched so far can still come up (all have ended), else None."""
        return None

    def reap(self) -> list[tuple[int, int]]:
        """(pid, status) of local engine processes that exited since the last call."""
        return []

    def wants_rows(self) -> bool | None:
        """Whether the nanny should ask the controller for its engine rows for `settle`:
        None never, False now and then, True as soon as it can (an exit waits for them)."""
        return None

    def settle(self, asked_at: float, rows: list[dict[str, Any]]) -> None:  # noqa: B027
        """The controller's engine rows (`engines()`), asked for at `asked_at` (monotonic):
        what a launcher of local processes needs to know of their states (local.py)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every engine this launcher started (idempotent)."""

    def cleanup(self) -> None:  # noqa: B027 - not every launcher leaves files
        """Remove what the engines or the launcher left behind (after `stop()`)."""

    def logs(self) -> list[Path]:
        """Log files of what this launcher started, the most telling first."""
        return []

    def record(self) -> dict[str, Any]:
        """What this launcher started, as JSON-able data (see `adopt`)."""
        return {"launcher": self.name}

    @classmethod
    def adopt(cls, record: dict[str, Any]) -> Launcher:
        """A launcher for what another process started, from its `record()`."""
        raise NotImplementedError(f"the {cls.name} launcher cannot adopt a record")
