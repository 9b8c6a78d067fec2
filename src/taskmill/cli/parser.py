"""The `taskmill` command line: every command's options, and which function runs it.

`build_parser` makes the argparse parser; each subcommand's `func` is a command of
commands.py or cluster.py. Options that take seconds refuse NaN, negative and (unless told)
zero or infinite values here, before any command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ..defaults import DEFAULT_HEARTBEAT, DEFAULT_UNMET_TIMEOUT, MAX_MESSAGE_SIZE
from .cluster import cmd_cluster
from .commands import cmd_controller, cmd_curve_key, cmd_engine, cmd_run, cmd_status
from .logs import add_logs_command

DESCRIPTION = "The `taskmill` command: controller, engine, cluster start|stop|status, status, run."


def _seconds(*, zero: bool = False, infinite: bool = False) -> Callable[[str], float]:
    """An argparse type: a number of seconds, refusing NaN, negative (and 0, inf unless told)."""
    from ..checks import seconds

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
    p = argparse.ArgumentParser(prog="taskmill", description=DESCRIPTION)
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
    add_logs_command(sub)
    return p
