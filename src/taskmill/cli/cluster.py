"""`taskmill cluster start|stop|status`: a cluster (controller and engines) as a background job.

`start` makes the launcher the options ask for (`--launcher local|ssh|mpi|slurm`), removes the
store the previous cluster left (unless `--resume`: store.remove_store, which refuses a store
another controller holds), then runs a `taskmill.cluster.Cluster` in this process (or, with
--daemon, in a new one started the same way) and records it in the profile's `cluster.json`
(pid, engines, connection file, the launcher's own record, kept up to date); the cluster's logs
go to the profile's `logs` folder (logs.py), where they stay after it stops. `stop` signals that
process, or stops what its launcher left if it is gone; `status` reads the record back.
`gone_cluster` tells `taskmill status` (commands.py) that the record names a process that died
without `cluster stop` (a SIGKILL, a crash). Failures print one line (`one_line`) and exit 1.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..connection import (
    default_connection_file,
    ensure_private_dir,
    profile_dir,
    read_connection_file,
)
from .logs import fresh_log_dir

if TYPE_CHECKING:
    from ..cluster import Cluster
    from ..launchers import Launcher

STOP_WAIT = 120.0  # seconds `cluster stop` waits for the cluster process (Slurm: squeue)
CONTROLLER_STOP_WAIT = 10.0  # ... and for the controller a killed cluster process left

def env_of(pairs: list[str] | None) -> dict[str, str]:
    """`--env KEY=VALUE` options as a dict (ValueError naming a malformed one)."""
    env = {}
    for pair in pairs or ():
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"--env {pair!r}: give KEY=VALUE")
        env[key] = value
    return env


def cluster_state_file() -> Path:
    """The profile's record of the cluster `taskmill cluster start` runs (cluster.json)."""
    return profile_dir() / "cluster.json"


def read_cluster_record(state: Path) -> dict[str, Any] | None:
    """The record in `state` (cluster.json), or None when there is none or it is unreadable."""
    try:
        record = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def gone_cluster(connection_file: Path) -> str | None:
    """The one line to print when the profile's cluster record names `connection_file` and a
    process that is gone (killed or crashed without `taskmill cluster stop`); else None."""
    record = read_cluster_record(cluster_state_file())
    if record is None or cluster_alive(record):
        return None
    if Path(record.get("connection_file", "")).resolve() != connection_file.resolve():
        return None
    return (f"the cluster started in this profile (pid {record['pid']}) is gone: it was killed "
            "or crashed without `taskmill cluster stop`; `taskmill cluster stop` cleans up "
            "after it and `taskmill cluster start` starts a new one")


def unconfirmed(record: dict[str, Any]) -> str:
    """What to say of a cluster whose process ended without confirming its engines stopped."""
    return (f"the cluster started in this profile (pid {record['pid']}) ended without "
            f"confirming that its engines stopped: {record['unstopped']}")


def gone_controller(connection_file: Path) -> str | None:
    """The one line to print when no controller answered at `connection_file` and the
    profile's cluster record names it with a running cluster whose controller process is gone
    (not started again: a store in memory, or it died too often) or stopped; else None."""
    record = read_cluster_record(cluster_state_file())
    if record is None or not cluster_alive(record):
        return None
    if Path(record.get("connection_file", "")).resolve() != connection_file.resolve():
        return None
    ctl, started = record.get("controller_pid"), record.get("controller_started")
    if not isinstance(ctl, int):
        return None
    if pid_alive(ctl) and process_started(ctl) in (None, started):
        if process_state(ctl) not in ("T", "t"):
            return None  # (running: busy, or being started again)
        return (f"the controller (pid {ctl}) of the cluster started in this profile is "
                f"stopped (SIGSTOP, a debugger): it answers once it runs again (`kill -CONT "
                f"{ctl}`)")
    return (f"the cluster started in this profile (pid {record['pid']}) runs, but its "
            f"controller (pid {ctl}) is gone and was not started again (its store was in "
            "memory, or it died too often: see the profile's cluster.log); `taskmill cluster "
            "stop`, then `taskmill cluster start`")


# A DEBUG or INFO record of a taskmill log (commands.setup_logging's format): left out of the
# one line an error is printed as (a controller's log tail says much before it says why).
QUIET_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ \S+\[\d+\] (DEBUG|INFO) ")


def one_line(e: BaseException) -> str:
    """An error's message on one line: its first line, then its other lines (a log's tail, a
    launcher's output) but the DEBUG and INFO log records among them, joined by " | "."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(e).__name__
    rest = [x for x in lines[1:] if not QUIET_LOG_LINE.match(x)]
    return f"{lines[0].rstrip(':')}: {' | '.join(rest)}" if rest else lines[0]


def pid_alive(pid: int) -> bool:
    """Whether a process of that pid runs (ours or another user's; a zombie, killed but not yet
    reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # (no /proc: not Linux)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def process_started(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot: /proc/PID/stat's 22nd field);
    None where there is no /proc, or no such process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_state(pid: int) -> str | None:
    """Process `pid`'s state letter (/proc/PID/stat: R, S, T stopped, ...); None if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def cluster_alive(record: dict[str, Any]) -> bool:
    """Whether the cluster process of a record (cluster.json) runs: its pid does, and started
    when the record says (a pid given to another process after the cluster was killed is
    not the cluster: `cluster stop` must never signal it)."""
    pid = record["pid"]
    if not pid_alive(pid):
        return False
    started = record.get("started")
    return not isinstance(started, int) or process_started(pid) in (None, started)


LAUNCHER_OPTIONS = {  # option (argparse dest) -> the launchers it is for
    "hosts": ("ssh",), "hosts_file": ("ssh",), "ssh_command": ("ssh",),
    "connection_file_on_hosts": ("ssh",), "mpiexec": ("mpi",), "mpi_args": ("mpi",),
    "slurm_account": ("slurm",), "slurm_partition": ("slurm",), "slurm_time": ("slurm",),
    "slurm_directive": ("slurm",), "slurm_mode": ("slurm",),
    "python": ("ssh", "mpi", "slurm"), "work_dir": ("mpi", "slurm"),
}


def _launcher_from_args(a: argparse.Namespace) -> Launcher:
    """The launcher that `cluster start --launcher NAME [options]` asks for."""
    import shlex

    from ..launchers import LauncherError, make_launcher

    for dest, launchers in LAUNCHER_OPTIONS.items():
        if getattr(a, dest) is not None and a.launcher not in launchers:
            flag = "--" + dest.replace("_", "-")
            raise LauncherError(f"{flag} is an option of --launcher {' or '.join(launchers)}, "
                                f"not of --launcher {a.launcher}")
    options: dict[str, Any] = {}
    if a.python is not None:
        options["python"] = a.python
    if a.work_dir is not None:
        options["work_dir"] = a.work_dir
    if a.launcher == "local":
        return make_launcher("local")
    if a.launcher == "ssh":
        hosts = [h.strip() for part in a.hosts or [] for h in part.split(",") if h.strip()]
        if a.ssh_command:
            options["ssh"] = shlex.split(a.ssh_command)
        return make_launcher("ssh", hosts=hosts, hosts_file=a.hosts_file,
                             connection_file_on_hosts=a.connection_file_on_hosts, **options)
    if a.launcher == "mpi":
        if a.mpiexec:
            options["mpiexec"] = a.mpiexec
        return make_launcher("mpi", mpi_args=shlex.split(a.mpi_args or ""), **options)
    return make_launcher("slurm", account=a.slurm_account, partition=a.slurm_partition,
                         time_limit=a.slurm_time, directives=a.slurm_directive or [],
                         mode=a.slurm_mode or "srun", **options)


def cmd_cluster(a: argparse.Namespace) -> int:
    from ..launchers import LauncherError

    state = cluster_state_file()
    if a.action == "start":
        old = read_cluster_record(state)
        if old is not None and cluster_alive(old):
            print(f"taskmill: a cluster is already running (pid {old['pid']}); "
                  "`taskmill cluster stop` first", file=sys.stderr)
            return 1
        if old is not None and old.get("unstopped"):  # (its engines may run on: keep it)
            print(f"taskmill: {unconfirmed(old)}; `taskmill cluster stop` first",
                  file=sys.stderr)
            return 1
        state.unlink(missing_ok=True)
        try:
            launcher = _launcher_from_args(a)
            launcher.check()
        except LauncherError as e:
            print(f"taskmill: {e}", file=sys.stderr)
            return 2
        if a.daemon:
            return _start_daemon(a, state)
        return _run_cluster_foreground(a, state, launcher)
    if a.action == "stop":
        return _stop_cluster(state)
    # status
    s = read_cluster_record(state)
    if s is None:
        print("no cluster running")
        return 1
    if not cluster_alive(s) and s.get("unstopped"):
        print(f"no cluster process running, but {unconfirmed(s)}; `taskmill cluster stop` "
              "tries again")
        return 1
    if not cluster_alive(s):
        print(f"no cluster running: the one started in this profile (pid {s['pid']}) is gone, "
              "killed or crashed without `taskmill cluster stop` (which cleans up after it)")
        return 1
    ctl, ctl_started = s.get("controller_pid"), s.get("controller_started")
    if isinstance(ctl, int) and isinstance(ctl_started, int) and not (
            pid_alive(ctl) and process_started(ctl) == ctl_started):
        print(f"cluster running: pid {s['pid']}, but its controller (pid {ctl}) is gone: it is "
              "started again unless its store was in memory or it died too often (see the "
              "profile's cluster.log); `taskmill cluster stop`, then start, if it stays so")
        return 1
    if isinstance(ctl, int) and process_state(ctl) in ("T", "t"):
        print(f"cluster running: pid {s['pid']}, but its controller (pid {ctl}) is stopped "
              f"(SIGSTOP, a debugger) and answers nobody until it runs again (`kill -CONT {ctl}`)")
        return 1
    # (`n` is what the start asked for: engines that ended, were replaced, or came and went
    # with --adapt change what runs, which the launcher's groups say)
    groups = []
    if s.get("launcher"):
        from ..launchers import adopt

        groups = adopt(s["launcher"]).groups()
    running = sum(g.engines for g in groups if g.state.lower() == "running")
    print(f"cluster running: pid {s['pid']}, "
          + (f"{running} engine{'s' if running != 1 else ''} running (started with {s['n']})"
             if s.get("launcher") else f"started with {s['n']} engines")
          + f", connection file {s['connection_file']}")
    if s.get("launcher"):
        print(f"launcher {s['launcher']['launcher']}:")
        for g in groups:
            print(f"  {g.label}: {g.state} ({g.engines} engine{'s' if g.engines != 1 else ''})")
    return 0


def _stop_cluster(state: Path) -> int:
    """Stop the cluster process; if it is gone or does not stop, stop what its launcher left."""
    from ..launchers import LauncherError, adopt
    from ..launchers.base import AdoptedProcess, terminate

    s = read_cluster_record(state)
    if s is None:
        print("taskmill: no cluster is running in this profile (`taskmill cluster start` "
              "starts one)", file=sys.stderr)
        return 1
    pid = s["pid"]
    stopped_itself = killed = False
    if cluster_alive(s):  # (woken if stopped; killed if it does not answer: what it started
        killed = bool(terminate([AdoptedProcess(pid)], STOP_WAIT))  # is stopped below)
        stopped_itself = not killed
    left = read_cluster_record(state) if stopped_itself else None
    if left is not None and left.get("pid") == pid and left.get("unstopped"):
        print(f"taskmill: {left['unstopped']}", file=sys.stderr)  # (it kept the record)
        return 1
    if not stopped_itself:
        ctl, started = s.get("controller_pid"), s.get("controller_started")
        if isinstance(ctl, int) and isinstance(started, int) and process_started(ctl) == started:
            terminate([AdoptedProcess(ctl)], CONTROLLER_STOP_WAIT)
        if s.get("launcher"):
            launcher = adopt(s["launcher"])
            try:
                launcher.stop()
            except LauncherError as e:  # (the record is kept: `cluster stop` again)
                print(f"taskmill: {one_line(e)}", file=sys.stderr)
                return 1
            launcher.cleanup()
    state.unlink(missing_ok=True)
    if killed:
        print(f"taskmill: the cluster (pid {pid}) did not stop within {STOP_WAIT:g}s of "
              "SIGTERM: it was killed, and its controller and engines stopped", file=sys.stderr)
        return 1
    print(f"cluster (pid {pid}) stopped")
    return 0



def hold_profile_lock(state: Path) -> int | None:
    """Take the profile's lock (cluster.lock beside `state`, flock) for this process's life:
    one cluster per profile, however many starts run at once (the kernel drops it when the
    process dies, however it dies); None if another process holds it."""
    ensure_private_dir(state.parent)
    fd = os.open(state.parent / "cluster.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _run_cluster_foreground(a: argparse.Namespace, state: Path, launcher: Launcher) -> int:
    from ..cluster import Cluster
    from ..engine import parse_property
    from ..errors import StoreError
    from ..launchers import LauncherError
    from ..store import remove_store, unfinished_in

    if hold_profile_lock(state) is None:  # (before anything of the profile is touched)
        print("taskmill: a cluster is already running in this profile (another `taskmill "
              "cluster start` holds it); `taskmill cluster stop` first", file=sys.stderr)
        return 1

    conn = Path(a.connection_file) if a.connection_file else default_connection_file()
    db = a.db or str(conn.parent / "tasks.db")  # (where the controller puts it without --db)
    # The kept results were signed with the key of the cluster that stored them: a resumed
    # cluster signs with it again (it is kept beside the store, and removed with it).
    key_file = Path(f"{db}.key")
    key = None
    if a.resume and db != ":memory:" and key_file.exists():
        key = key_file.read_text().strip()
    props = dict(parse_property(p) for p in a.property or [])
    try:
        cluster = Cluster(a.n, ip=a.ip, location=a.location, port=a.port,
                          engine_port=a.engine_port, db=db, connection_file=conn,
                          unmet_timeout=a.unmet_timeout, heartbeat=a.heartbeat,
                          launcher=launcher, engine_properties=props,
                          start_timeout=a.start_timeout, wait=not a.no_wait,
                          dashboard=not a.no_dashboard, transport=a.transport,
                          log_dir=fresh_log_dir(), keep_results=a.keep_results, key=key,
                          memory_budget=a.memory_budget,
                          forget_clients_after=a.forget_clients_after,
                          env=env_of(a.env), cwd=a.cwd)
    except ValueError as e:
        print(f"taskmill: {e}", file=sys.stderr)
        return 2
    dropped = 0  # (unfinished tasks `cluster stop` kept for --resume: said, not silent)
    if not a.resume and db != ":memory:":
        try:
            dropped = unfinished_in(db)
            remove_store(db)  # a new cluster begins empty (refused if a controller holds it)
        except (StoreError, OSError) as e:
            print(f"taskmill: {one_line(e)}", file=sys.stderr)
            return 1
        say_dropped(dropped)
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    def _abort_start(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # (start() stops what it started, then it is said below)

    signal.signal(signal.SIGTERM, _abort_start)  # (Ctrl-C waited out the start's timeout)
    signal.signal(signal.SIGINT, _abort_start)
    try:
        cluster.start()
    except KeyboardInterrupt:
        print("taskmill: the cluster's start was interrupted; what it had started is stopped",
              file=sys.stderr)
        return 130
    except (LauncherError, RuntimeError, TimeoutError) as e:
        print(f"taskmill: the cluster did not start: {one_line(e)}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ensure_private_dir(state.parent)
    if db != ":memory:":
        assert cluster.connection_file is not None
        key_file.unlink(missing_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(read_connection_file(cluster.connection_file).key + "\n")

    def write_state() -> tuple[dict[str, Any], int | None]:
        record = cluster.launcher.record()
        ctl = cluster.controller_pid
        state.write_text(json.dumps({
            "pid": os.getpid(), "started": process_started(os.getpid()), "n": cluster.n,
            "connection_file": str(cluster.connection_file), "launcher": record,
            "controller_pid": ctl, "dropped": dropped,
            "controller_started": None if ctl is None else process_started(ctl)}))
        return record, ctl

    written = write_state()
    adapting = ""
    if a.adapt is not None:
        cluster.adapt(*a.adapt, idle_after=a.idle_after)
        adapting = f", adapting between {a.adapt[0]} and {a.adapt[1]}"
    print(f"cluster started: {cluster.n} engines ({cluster.launcher.name} launcher{adapting}); "
          f"connection file {cluster.connection_file}", flush=True)
    try:
        while not stopping:
            time.sleep(0.5)
            # (e.g. a local engine, or the controller, was started again)
            if (cluster.launcher.record(), cluster.controller_pid) != written:
                written = write_state()
    finally:
        unstopped = stop_keeping_record(cluster, state)
    return 1 if unstopped else 0


def stop_keeping_record(cluster: Cluster, state: Path) -> bool:
    """Stop the cluster this process runs and remove its record; but if its launcher cannot
    confirm its engines stopped (LauncherError: e.g. slurmctld does not answer), say so and keep
    the record, noting why, for `cluster stop` (which says it, and can be run again)."""
    from ..launchers import LauncherError

    try:
        cluster.stop()
    except LauncherError as e:
        record = read_cluster_record(state) or {}
        state.write_text(json.dumps({**record, "unstopped": one_line(e)}))
        print(f"taskmill: {one_line(e)}", file=sys.stderr, flush=True)
        return True
    state.unlink(missing_ok=True)
    return False


def say_dropped(n: int) -> None:
    if n:
        print(f"taskmill: the previous cluster's store held {n} unfinished task(s): removed, "
              "as a new cluster begins empty (`taskmill cluster start --resume` keeps them)",
              file=sys.stderr, flush=True)


def _start_daemon(a: argparse.Namespace, state: Path) -> int:
    ensure_private_dir(state.parent)
    log = state.parent / "cluster.log"
    cmd = [sys.executable, "-m", "taskmill", *[x for x in a.argv if x != "--daemon"]]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    limit = a.start_timeout + 60
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        record = read_cluster_record(state)
        if record is not None and record["pid"] == proc.pid:  # (not another start's record)
            say_dropped(record.get("dropped") or 0)  # (the background start's: said here)
            print(f"cluster started in the background (pid {proc.pid}); log: {log}")
            return 0
        if proc.poll() is not None:
            said = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            why = (said[-1].removeprefix("taskmill: ").removeprefix("the cluster did not "
                                                                     "start: ")
                   if said else f"status {proc.returncode}")
            print(f"taskmill: the cluster failed to start ({why}); see {log}", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"taskmill: the cluster did not come up within {limit:g}s; see {log}", file=sys.stderr)
    return 1
