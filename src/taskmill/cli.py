"""The `taskmill` command: controller, engine, cluster start|stop|status, status, run."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from .connection import (
    check_ipc_folder,
    default_connection_file,
    ensure_private_dir,
    find_connection_file,
    ipc_urls,
    new_connection_info,
    profile_dir,
    read_connection_file,
    read_connection_line,
    wait_for_connection_file,
    write_connection_file,
)
from .curve import add_curve
from .curve import enabled as curve_enabled
from .defaults import DEFAULT_HEARTBEAT, DEFAULT_UNMET_TIMEOUT, MAX_MESSAGE_SIZE, is_loopback
from .errors import ConnectionFileError

if TYPE_CHECKING:
    from .launchers import Launcher

# Errors of binding the controller's sockets, reported as one line instead of a traceback.
BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.ENOENT,
               errno.ENAMETOOLONG, errno.EINVAL)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def cmd_controller(a: argparse.Namespace) -> int:
    from .controller import run_controller
    from .dashboard import forget_dashboard, start_dashboard
    from .engine import watch_parent
    from .errors import StoreError
    from .store import open_store

    _setup_logging(a.log_level)
    if a.dashboard_open and not is_loopback(a.dashboard_ip):
        raise SystemExit(f"taskmill: --dashboard-open serves the dashboard without its token, "
                         f"which is allowed on loopback only, not on {a.dashboard_ip}; drop "
                         "--dashboard-open (the link `taskmill status` prints carries the token)")
    path = Path(a.connection_file) if a.connection_file else default_connection_file()
    log = logging.getLogger("taskmill")
    db = a.db or str(ensure_private_dir(path.parent) / "tasks.db")
    try:  # first: a controller that cannot have its store writes and binds nothing
        store = open_store(db)
    except StoreError as e:  # in use by another controller, locked, damaged: one clear line
        print(f"taskmill controller: {e}", file=sys.stderr)
        return 1
    if path.exists():
        info = read_connection_file(path)  # reuse key and addresses: old peers reconnect
        if a.curve and not curve_enabled(info):
            raise SystemExit(f"taskmill: {path} was made without --curve; remove it (clients "
                             "and engines then need the new file) or drop --curve")
        made_for = "ipc" if info.is_ipc else "tcp"
        if a.transport is not None and a.transport != made_for:
            raise SystemExit(f"taskmill: {path} was made for --transport {made_for}; remove it "
                             f"(clients and engines then need the new file) or drop --transport")
    else:
        ipc_dir = None
        if a.transport == "ipc":
            if {a.ip, a.location, a.port, a.engine_port} - {"127.0.0.1", None}:
                raise SystemExit("taskmill: --transport ipc listens on unix sockets beside the "
                                 "connection file: drop --ip, --location, --port, --engine-port")
            ipc_dir = ensure_private_dir(path.parent)
            if ipc_urls(ipc_dir, path.stem + ".") is None:
                raise SystemExit(f"taskmill: --transport ipc: the folder {ipc_dir} is too deep "
                                 "for unix sockets; put the connection file in a shorter one")
        info = new_connection_info(a.ip, a.port, a.engine_port, a.location, ipc_dir=ipc_dir,
                                   ipc_prefix=path.stem + ".")
        if a.curve:
            add_curve(info, path)
        if info.is_ipc:
            check_ipc_folder(info)  # before the file that names the sockets exists
        write_connection_file(path, info)
        log.info("wrote connection file %s", path)
    if info.is_ipc:
        check_ipc_folder(info)
        log.info("listening on unix sockets %s (clients) and %s (engines), in a folder only "
                 "this user can enter", info.client_url, info.engine_url)
    else:
        log.info("binding %s; clients and engines connect to %s and %s", info.ip,
                 info.client_url, info.engine_url)
    if not info.is_ipc and not is_loopback(info.ip) and not curve_enabled(info):
        log.warning(
            "binding %s without --curve: messages travel unencrypted, so anyone on that network "
            "can read every task and result, and anyone who obtains the key in %s can run any "
            "code on every engine. Use --curve on networks you do not trust.", info.ip, path)
    logging.getLogger("taskmill").info("task store: %s", db)
    orphaned = []
    if a.parent_fd is not None:
        def _parent_gone() -> None:
            orphaned.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

        watch_parent(a.parent_fd, _parent_gone)
    dashboard = None
    if a.no_dashboard:
        forget_dashboard(path, info)
    else:
        dashboard = start_dashboard(path, info, ip=a.dashboard_ip, port=a.dashboard_port,
                                    open_access=a.dashboard_open)
    try:
        run_controller(info, store=store, unmet_timeout=a.unmet_timeout, heartbeat=a.heartbeat,
                       connection_file=path, prefetch=a.prefetch,
                       max_message=a.max_message_size)
    except zmq.ZMQError as e:
        if e.errno not in BIND_ERRORS:
            raise
        hint = (" (another program, or another controller, listens there: choose other ports "
                "with --port/--engine-port, or stop it)" if e.errno == errno.EADDRINUSE else "")
        raise SystemExit(f"taskmill controller: cannot listen: {e}{hint}") from None
    finally:
        if dashboard is not None:
            dashboard.stop()
        if orphaned and a.remove_if_orphaned:
            # The owner (a Cluster) died without stop(), e.g. by SIGKILL: nobody else will
            # remove its state directory (logs, and the store unless it lives elsewhere).
            shutil.rmtree(a.remove_if_orphaned, ignore_errors=True)
    return 0


def cmd_curve_key(a: argparse.Namespace) -> int:
    from .curve import SECRET_KEY_ENV, make_key

    public, secret = make_key(Path(a.dir), a.name)
    print(f"public key: {public}  (copy it into the controller's "
          "<connection file>.allowed-keys/ directory)")
    print(f"secret key: {secret}  (keep it private; use it with {SECRET_KEY_ENV}={secret})")
    return 0


def cmd_engine(a: argparse.Namespace) -> int:
    from .engine import parse_property, run_engine
    from .errors import ConnectionFileError, ControllerUnreachable
    from .launchers.mpi import mpi_rank_from_environment

    _setup_logging(a.log_level)
    props = dict(parse_property(p) for p in a.property or [])
    rank = mpi_rank_from_environment()
    if rank is not None:
        props.setdefault("mpi_rank", rank)
    try:
        if a.connection_file == "-":
            info = read_connection_line(0)
        else:
            info = wait_for_connection_file(find_connection_file(a.connection_file),
                                            a.controller_timeout)
        run_engine(info, props, parent_fd=a.parent_fd, register_timeout=a.controller_timeout)
    except (ConnectionFileError, ControllerUnreachable) as e:
        print(f"taskmill engine: {e}", file=sys.stderr)
        return 1
    return 0


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

    from .launchers import LauncherError, make_launcher

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
    from .launchers import LauncherError

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
        from .launchers import adopt

        print(f"launcher {s['launcher']['launcher']}:")
        for g in adopt(s["launcher"]).groups():
            print(f"  {g.label}: {g.state} ({g.engines} engine{'s' if g.engines != 1 else ''})")
    return 0


def _stop_cluster(state: Path) -> int:
    """Stop the cluster process; if it is gone or does not stop, stop what its launcher left."""
    from .launchers import adopt

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
    from .cluster import Cluster
    from .engine import parse_property
    from .launchers import LauncherError

    conn = Path(a.connection_file) if a.connection_file else default_connection_file()
    props = dict(parse_property(p) for p in a.property or [])
    try:
        cluster = Cluster(a.n, ip=a.ip, location=a.location, port=a.port,
                          engine_port=a.engine_port, db=a.db, connection_file=conn,
                          unmet_timeout=a.unmet_timeout, heartbeat=a.heartbeat,
                          launcher=launcher, engine_properties=props,
                          start_timeout=a.start_timeout, wait=not a.no_wait,
                          dashboard=not a.no_dashboard, transport=a.transport)
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


def cmd_status(a: argparse.Namespace) -> int:
    from .client import TaskClient
    from .dashboard import dashboard_link
    from .status import show_status

    path = find_connection_file(a.connection_file)
    info = read_connection_file(path)
    with TaskClient(path, timeout=a.timeout) as tc:
        return show_status(
            tc.statistics, as_json=a.json,
            json_view=lambda: {"queue": tc.queue_status(), "engines": tc.engines()},
            watch=a.watch, controller=info.client_url, dashboard=dashboard_link(info))


def cmd_run(a: argparse.Namespace) -> int:
    from .cluster import Cluster

    with Cluster(a.n) as cluster:
        env = dict(os.environ, TASKMILL_CONNECTION=str(cluster.connection_file))
        return subprocess.call([sys.executable, a.script, *a.args], env=env)


def _seconds(*, zero: bool = False, infinite: bool = False) -> Callable[[str], float]:
    """An argparse type: a number of seconds, refusing NaN, negative (and 0, inf unless told)."""
    from .checks import seconds

    def parse(text: str) -> float:
        try:
            return seconds("it", float(text), zero=zero, infinite=infinite)
        except ValueError:
            what = (">= 0" if zero else "> 0") + ("" if infinite else " and finite")
            raise argparse.ArgumentTypeError(
                f"must be a number of seconds {what}, not {text!r}") from None

    return parse


def _prefetch(text: str) -> int | None:
    if text == "auto":
        return None
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("prefetch must be 'auto' or an int >= 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskmill", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("controller", help="run a controller in the foreground")
    c.add_argument("--ip", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; 0.0.0.0: every interface)")
    c.add_argument("--location", default=None,
                   help="address that clients and engines connect to, written into the "
                        "connection file (default: the --ip, or for 0.0.0.0 this machine's "
                        "outward address)")
    c.add_argument("--port", type=int, default=None, help="client port (default: random)")
    c.add_argument("--engine-port", type=int, default=None, help="engine port (default: random)")
    c.add_argument("--db", default=None,
                   help="task store (SQLite) path, or :memory: (default: tasks.db beside the "
                        "connection file)")
    c.add_argument("--connection-file", default=None,
                   help="reused when it exists (same key and addresses), else written")
    c.add_argument("--unmet-timeout", type=_seconds(zero=True), default=DEFAULT_UNMET_TIMEOUT,
                   help="seconds a task whose depend no idle engine satisfies waits before it "
                        "fails with TaskTimeout (default 30)")
    c.add_argument("--heartbeat", type=_seconds(), default=DEFAULT_HEARTBEAT,
                   help="seconds between heartbeats; an engine silent for 3 is declared dead")
    c.add_argument("--prefetch", type=_prefetch, default=None, metavar="N|auto",
                   help="tasks an engine may hold at once, the running one included (default "
                        "auto: as many as take about 2 ms by the durations it reports, so tiny "
                        "tasks never wait a round trip while long ones go one at a time; an "
                        "idle engine takes back tasks buffered on a busy one)")
    c.add_argument("--max-message-size", type=int, default=MAX_MESSAGE_SIZE,
                   help="bytes; larger messages are refused (default 512 MiB)")
    c.add_argument("--curve", action="store_true",
                   help="encrypt with CurveZMQ; only allowed client/engine keys may connect")
    c.add_argument("--transport", choices=["tcp", "ipc"], default=None,
                   help="tcp (default, for engines and clients anywhere) or ipc: unix sockets "
                        "beside the connection file, in its 0700 folder, so that only this "
                        "user on this machine can connect")
    c.add_argument("--dashboard-port", type=int, default=None,
                   help="port of the web dashboard (default: the one this connection file "
                        "recorded, else a free one)")
    c.add_argument("--dashboard-ip", default="127.0.0.1",
                   help="address the dashboard binds (default 127.0.0.1)")
    c.add_argument("--dashboard-open", action="store_true",
                   help="serve the dashboard without its token (loopback only)")
    c.add_argument("--no-dashboard", action="store_true", help="run without the web dashboard")
    c.add_argument("--log-level", default="INFO")
    c.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
    c.add_argument("--remove-if-orphaned", default=None, help=argparse.SUPPRESS)
    c.set_defaults(func=cmd_controller)

    k = sub.add_parser("curve-key", help="make a Curve key pair for a client or an engine")
    k.add_argument("name")
    k.add_argument("--dir", default=".", help="where to write NAME.key and NAME.key_secret")
    k.set_defaults(func=cmd_curve_key)

    e = sub.add_parser("engine", help="run an engine in the foreground")
    e.add_argument("--connection-file", default=None,
                   help="the controller's connection file; `-`: its JSON as one line on "
                        "standard input (as the ssh launcher sends it)")
    e.add_argument("--property", action="append", metavar="KEY=VALUE",
                   help="an engine property (VALUE read as JSON when it parses); repeatable")
    e.add_argument("--controller-timeout", type=_seconds(), default=None, metavar="SECONDS",
                   help="exit with an error when no connection file appeared within SECONDS, "
                        "or no controller answered within SECONDS of reading it (default: wait "
                        "for them, asking again with backoff)")
    e.add_argument("--log-level", default="INFO")
    e.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
    e.set_defaults(func=cmd_engine)

    cl = sub.add_parser("cluster", help="start, stop or inspect a cluster",
                        description="A controller here and N engines started by a launcher: "
                                    "local subprocesses, ssh, mpiexec or Slurm.")
    cl.add_argument("action", choices=["start", "stop", "status"])
    cl.add_argument("-n", type=int, default=os.cpu_count() or 1, help="number of engines")
    cl.add_argument("--launcher", default="local", choices=["local", "ssh", "mpi", "slurm"])
    cl.add_argument("--daemon", action="store_true", help="run in the background")
    cl.add_argument("--ip", default="127.0.0.1",
                    help="interface the controller binds (0.0.0.0 for engines elsewhere)")
    cl.add_argument("--location", default=None,
                    help="address engines and clients connect to (default: --ip, or this "
                         "machine's outward address for 0.0.0.0)")
    cl.add_argument("--port", type=int, default=None, help="client port (default: random)")
    cl.add_argument("--engine-port", type=int, default=None, help="engine port (default: random)")
    cl.add_argument("--transport", choices=["tcp", "ipc"], default=None,
                    help="ipc (unix sockets in the cluster's private folder; the default with "
                         "the local launcher on loopback and no --port, --engine-port or "
                         "--location) or tcp (the default otherwise)")
    cl.add_argument("--heartbeat", type=_seconds(), default=DEFAULT_HEARTBEAT,
                    help="seconds between heartbeats; an engine silent for 3 is declared dead")
    cl.add_argument("--db", default=None)
    cl.add_argument("--connection-file", default=None)
    cl.add_argument("--unmet-timeout", type=_seconds(zero=True), default=DEFAULT_UNMET_TIMEOUT)
    cl.add_argument("--no-dashboard", action="store_true",
                    help="run the controller without its web dashboard")
    cl.add_argument("--property", action="append", metavar="KEY=VALUE",
                    help="a property of every engine (VALUE read as JSON when it parses)")
    cl.add_argument("--start-timeout", type=_seconds(), default=60.0,
                    help="seconds to wait for the N engines to register (default 60)")
    cl.add_argument("--no-wait", action="store_true",
                    help="do not wait for the engines (e.g. a Slurm job waiting in the queue)")
    cl.add_argument("--python", default=None,
                    help="ssh, mpi, slurm: the python that runs the engines (default: this one, "
                         f"{sys.executable})")
    cl.add_argument("--hosts", action="append", default=None, metavar="H1,H2",
                    help="ssh: hosts ([user@]host or ssh://user@host:port), engines spread "
                         "round-robin")
    cl.add_argument("--hosts-file", default=None, help="ssh: a file of hosts, one per line")
    cl.add_argument("--ssh-command", default=None,
                    help="ssh: the ssh command (default: ssh -o BatchMode=yes -o "
                         "ConnectTimeout=10)")
    cl.add_argument("--connection-file-on-hosts", default=None, metavar="PATH",
                    help="ssh: the connection file is already at PATH on every host (a shared "
                         "filesystem): do not copy it")
    cl.add_argument("--mpiexec", default=None, help="mpi: the mpiexec to run (default: mpiexec)")
    cl.add_argument("--mpi-args", default=None,
                    help='mpi: arguments for mpiexec, e.g. --mpi-args="--hostfile hosts '
                         '--oversubscribe"')
    cl.add_argument("--work-dir", default=None,
                    help="mpi, slurm: a folder the engines' machines share, for the connection "
                         "file and the batch script (default: ~/.taskmill/launch)")
    cl.add_argument("--slurm-account", default=None)
    cl.add_argument("--slurm-partition", default=None)
    cl.add_argument("--slurm-time", default=None,
                    help="slurm: the job's time limit (sbatch --time)")
    cl.add_argument("--slurm-directive", action="append", default=None, metavar="OPTION",
                    help='slurm: one more #SBATCH line, e.g. --slurm-directive=--mem=4G; '
                         "repeatable")
    cl.add_argument("--slurm-mode", default=None, choices=["srun", "array"],
                    help="slurm: one job of N tasks under srun (default), or a job array of N")
    cl.set_defaults(func=cmd_cluster)

    s = sub.add_parser("status", help="the engines, queue and throughput of a running controller")
    s.add_argument("--json", action="store_true",
                   help='print {"queue": queue_status(), "engines": engines()} as JSON (with '
                        "--watch: one line per refresh)")
    s.add_argument("--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until Ctrl-C")
    s.add_argument("--connection-file", default=None)
    s.add_argument("--timeout", type=_seconds(), default=5.0)
    s.set_defaults(func=cmd_status)

    r = sub.add_parser("run", help="run a script on a throw-away local cluster")
    r.add_argument("-n", type=int, default=os.cpu_count() or 1, help="number of engines")
    r.add_argument("script")
    r.add_argument("args", nargs=argparse.REMAINDER)
    r.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ConnectionFileError as e:
        print(f"taskmill: {e}", file=sys.stderr)
        return 1

