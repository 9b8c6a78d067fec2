"""`taskmill cluster start|stop|status`: a cluster (controller and engines) as a background job.

`start` makes the launcher the options ask for (`--launcher local|ssh|mpi|slurm`), then runs a
`taskmill.cluster.Cluster` in this process (or, with --daemon, in a new one started the same way)
and records it in the profile's `cluster.json` (pid, engines, connection file, the launcher's
own record, kept up to date); the cluster's logs go to the profile's `logs` folder (logs.py),
where they stay after it stops. `stop` signals that process, or stops what its launcher left if it
is gone; `status` reads the record back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..connection import default_connection_file, ensure_private_dir, profile_dir
from .logs import fresh_log_dir

if TYPE_CHECKING:
    from ..launchers import Launcher

def _cluster_state_file() -> Path:
    return profile_dir() / "cluster.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    state = _cluster_state_file()
    if a.action == "start":
        if state.exists():
            old = json.loads(state.read_text())
            if _pid_alive(old["pid"]):
                print(f"taskmill: a cluster is already running (pid {old['pid']}); "
                      "`taskmill cluster stop` first", file=sys.stderr)
                return 1
            state.unlink()
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
    if not state.exists() or not _pid_alive(json.loads(state.read_text())["pid"]):
        print("no cluster running")
        return 1
    s = json.loads(state.read_text())
    print(f"cluster running: pid {s['pid']}, {s['n']} engines, connection file "
          f"{s['connection_file']}")
    if s.get("launcher"):
        from ..launchers import adopt

        print(f"launcher {s['launcher']['launcher']}:")
        for g in adopt(s["launcher"]).groups():
            print(f"  {g.label}: {g.state} ({g.engines} engine{'s' if g.engines != 1 else ''})")
    return 0


def _stop_cluster(state: Path) -> int:
    """Stop the cluster process; if it is gone or does not stop, stop what its launcher left."""
    from ..launchers import adopt

    if not state.exists():
        print("taskmill: no cluster is running in this profile", file=sys.stderr)
        return 1
    s = json.loads(state.read_text())
    pid = s["pid"]
    stopped_itself = False
    if _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120  # a Slurm launcher waits for squeue to drop its job
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped_itself = not _pid_alive(pid)
    if not stopped_itself and s.get("launcher"):
        launcher = adopt(s["launcher"])
        launcher.stop()
        launcher.cleanup()
    state.unlink(missing_ok=True)
    print(f"cluster (pid {pid}) stopped")
    return 0


def _run_cluster_foreground(a: argparse.Namespace, state: Path, launcher: Launcher) -> int:
    from ..cluster import Cluster
    from ..engine import parse_property
    from ..launchers import LauncherError

    conn = Path(a.connection_file) if a.connection_file else default_connection_file()
    props = dict(parse_property(p) for p in a.property or [])
    try:
        cluster = Cluster(a.n, ip=a.ip, location=a.location, port=a.port,
                          engine_port=a.engine_port, db=a.db, connection_file=conn,
                          unmet_timeout=a.unmet_timeout, heartbeat=a.heartbeat,
                          launcher=launcher, engine_properties=props,
                          start_timeout=a.start_timeout, wait=not a.no_wait,
                          dashboard=not a.no_dashboard, transport=a.transport,
                          log_dir=fresh_log_dir())
    except ValueError as e:
        print(f"taskmill: {e}", file=sys.stderr)
        return 2
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        cluster.start()
    except (LauncherError, RuntimeError, TimeoutError) as e:
        print(f"taskmill: the cluster did not start: {e}", file=sys.stderr)
        return 1
    ensure_private_dir(state.parent)

    def write_state() -> dict[str, Any]:
        record = cluster.launcher.record()
        state.write_text(json.dumps({"pid": os.getpid(), "n": cluster.n,
                                     "connection_file": str(cluster.connection_file),
                                     "launcher": record}))
        return record

    written = write_state()
    print(f"cluster started: {cluster.n} engines ({cluster.launcher.name} launcher); "
          f"connection file {cluster.connection_file}", flush=True)
    try:
        while not stopping:
            time.sleep(0.5)
            if cluster.launcher.record() != written:  # e.g. a local engine was restarted
                written = write_state()
    finally:
        cluster.stop()
        state.unlink(missing_ok=True)
    return 0


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
        if state.exists():
            print(f"cluster started in the background (pid {proc.pid}); log: {log}")
            return 0
        if proc.poll() is not None:
            print(f"taskmill: the cluster failed to start; see {log}:\n"
                  + "\n".join(log.read_text(errors="replace").splitlines()[-5:]),
                  file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"taskmill: the cluster did not come up within {limit:g}s; see {log}", file=sys.stderr)
    return 1
