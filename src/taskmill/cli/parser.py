"""The `taskmill` command line: every command's options, and which function runs it.

`build_parser` makes the argparse parser; each subcommand's `func` is a command of
commands.py, cluster.py (`cluster start|stop|status`, each a subcommand of its own with only
its own options), clean.py or logs.py (which adds its own subcommand). Every option has a help
text (tests/test_cli_parser.py walks the parsers). Options that take seconds refuse NaN, negative and (unless told) zero or infinite
values here, before any command runs; days (`--keep-results`) refuse NaN and negative ones.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..checks import MIN_MEMORY_BUDGET, days, mebibytes, message_size
from ..defaults import (
    DEFAULT_HEARTBEAT,
    DEFAULT_KEEP_RESULTS,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_UNMET_TIMEOUT,
    FORGET_CLIENTS_AFTER,
    MAX_MESSAGE_SIZE,
    QUEUE_WINDOW_ENV,
)
from .clean import cmd_clean
from .cluster import cmd_cluster
from .commands import cmd_controller, cmd_curve_key, cmd_engine, cmd_run, cmd_status
from .logs import add_logs_command

DESCRIPTION = ("The `taskmill` command: controller, engine, cluster start|stop|status, status, "
               "run, clean, logs.")
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser that keeps in public what was added to it: `arguments` (its options
    and positionals, --help among them) and `commands` (subcommand name -> its parser). argparse
    keeps them in private attributes; tests walk these to check every command's options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arguments: list[argparse.Action] = []
        self.commands: dict[str, CommandParser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.arguments.append(action)
        return action

    def add_subparsers(self, **kwargs: Any) -> Any:
        group = super().add_subparsers(parser_class=CommandParser, **kwargs)
        add = group.add_parser

        def add_parser(name: str, **kw: Any) -> CommandParser:
            child: CommandParser = add(name, **kw)
            self.commands[name] = child
            return child

        group.add_parser = add_parser
        return group


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


def _checked_number(check: Callable[[str, float], float], must: str) -> Callable[[str], float]:
    """An argparse type: a number that `check(name, value)` (checks.py) accepts; else the
    error says what it `must` be."""

    def parse(text: str) -> float:
        try:
            return check("it", float(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {must}, not {text!r}") from None

    return parse


_days = _checked_number(days, "a number of days >= 0 (inf: keep them for ever)")


def _adapt_range(text: str) -> tuple[int, int]:
    """An argparse type: MIN:MAX engines of an adaptive cluster (0 <= MIN <= MAX, MAX >= 1)."""
    lo, sep, hi = text.partition(":")
    try:
        low, high = int(lo), int(hi)
    except ValueError:
        low = high = -1
    if not sep or low < 0 or high < max(1, low):
        raise argparse.ArgumentTypeError(
            f"must be MIN:MAX, two whole numbers with 0 <= MIN <= MAX and MAX >= 1 (e.g. 0:8), "
            f"not {text!r}")
    return low, high


def _keep_results(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-results", type=_days, default=DEFAULT_KEEP_RESULTS,
                        metavar="DAYS",
                        help="remove finished results completed more than DAYS days ago from "
                             f"the store when it is opened (default {DEFAULT_KEEP_RESULTS:g}; "
                             "inf: keep them)")


_mib = _checked_number(mebibytes, f"a number of MiB >= {MIN_MEMORY_BUDGET}")


def _window(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of tasks >= 1, not {text!r} "
                                         f"(from --queue-window or ${QUEUE_WINDOW_ENV})")
    return n


def _memory_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-budget", type=_mib, default=DEFAULT_MEMORY_BUDGET,
                        metavar="MIB",
                        help="MiB the controller keeps its queued tasks under (default "
                             f"{DEFAULT_MEMORY_BUDGET}): beyond a window of tasks, or of their "
                             "payload bytes (a quarter of it), they wait in the store only "
                             "(needs a store on disk, not --db :memory:)")


def _forget_clients_after(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--forget-clients-after", type=_seconds(infinite=True),
                        default=FORGET_CLIENTS_AFTER, metavar="SECONDS",
                        help="a client silent this long (killed, its machine gone; a live one "
                             "pings every second) is forgotten: its futures' watches and "
                             "waiting requests are dropped, its tasks run on (default "
                             f"{FORGET_CLIENTS_AFTER:g}; inf: never)")


def _log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="how much to log on standard error (default INFO)")


def _message_size(text: str) -> int:
    try:
        return message_size("--max-message-size", int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _prefetch(text: str) -> int | None:
    if text == "auto":
        return None
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("prefetch must be 'auto' or an int >= 1")
    return n


def build_parser() -> CommandParser:
    p = CommandParser(prog="taskmill", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"taskmill {__version__}",
                   help="print taskmill's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    _forget_clients_after(c)
    c.add_argument("--prefetch", type=_prefetch, default=None, metavar="N|auto",
                   help="tasks an engine may hold at once, the running one included (default "
                        "auto: as many as take about 2 ms by the durations it reports, so tiny "
                        "tasks never wait a round trip while long ones go one at a time; an "
                        "idle engine takes back tasks buffered on a busy one)")
    c.add_argument("--max-message-size", type=_message_size, default=None, metavar="BYTES",
                   help="larger messages are refused (default: the connection file's, else "
                        f"{MAX_MESSAGE_SIZE >> 20} MiB); written into the connection file, "
                        "from which clients and engines take the same limit")
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
    _keep_results(c)
    _memory_budget(c)
    # (For tests: the queue window itself, which overrides --memory-budget.)
    c.add_argument("--queue-window", type=_window, default=os.environ.get(QUEUE_WINDOW_ENV),
                   help=argparse.SUPPRESS)
    _log_level(c)
    c.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
    c.add_argument("--remove-if-orphaned", default=None, help=argparse.SUPPRESS)
    c.set_defaults(func=cmd_controller)

    k = sub.add_parser("curve-key", help="make a Curve key pair for a client or an engine")
    k.add_argument("name", help="the key's name: NAME.key (public) and NAME.key_secret")
    k.add_argument("--dir", default=".", help="where to write NAME.key and NAME.key_secret")
    k.set_defaults(func=cmd_curve_key)

    e = sub.add_parser("engine", help="run an engine in the foreground")
    e.add_argument("--connection-file", default=None,
                   help="the controller's connection file; `-`: its JSON as one line on "
                        "standard input (as the ssh launcher sends it)")
    e.add_argument("--property", action="append", metavar="KEY=VALUE",
                   help="an engine property (VALUE read as JSON when it parses); repeatable")
    e.add_argument("--cwd", default=None, metavar="DIR",
                   help="the working folder of the engine's tasks (default: where it starts)")
    e.add_argument("--controller-timeout", type=_seconds(), default=None, metavar="SECONDS",
                   help="exit with an error when no connection file appeared within SECONDS, "
                        "or no controller answered within SECONDS of reading it (default: wait "
                        "for them, asking again with backoff)")
    _log_level(e)
    e.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
    e.add_argument("--no-replace", action="store_true",
                   help="run the engine in this process, and start no new engine when it is "
                        "ended by its last-resort kill (task code that did not let an abort or "
                        "timeout through); by default this command does, as a Cluster's "
                        "nanny does for its engines")
    e.set_defaults(func=cmd_engine)

    _add_cluster(sub)

    s = sub.add_parser("status", help="the engines, queue and throughput of a running controller")
    s.add_argument("--json", action="store_true",
                   help='print {"queue": queue_status(), "engines": engines()} as JSON (with '
                        "--watch: one line per refresh)")
    s.add_argument("--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until Ctrl-C")
    s.add_argument("--connection-file", default=None,
                   help="the controller's connection file (default: $TASKMILL_CONNECTION, else "
                        "the default profile's)")
    s.add_argument("--timeout", type=_seconds(), default=5.0, metavar="SECONDS",
                   help="give up when the controller has not answered within SECONDS "
                        "(default 5)")
    s.set_defaults(func=cmd_status)

    cn = sub.add_parser("clean", help="remove the state folders of stopped clusters",
                        description="Remove what stopped clusters left: their folders in the "
                                    "temporary directory (logs, sockets, stores) and, in every "
                                    "profile no cluster or controller uses, the kept store "
                                    "and log. A running cluster's state is never touched.")
    cn.add_argument("--dry-run", action="store_true",
                    help="print what would be removed, remove nothing")
    cn.set_defaults(func=cmd_clean)

    r = sub.add_parser("run", help="run a script on a throw-away local cluster")
    r.add_argument("-n", type=int, default=os.cpu_count() or 1, help="number of engines")
    r.add_argument("script", help="the Python script to run")
    r.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    r.set_defaults(func=cmd_run)
    add_logs_command(sub)
    return p


def _add_cluster(sub: Any) -> None:
    """`cluster start|stop|status`: three subcommands, each with only its own options."""
    cl = sub.add_parser("cluster", help="start, stop or inspect a cluster",
                        description="A controller here and N engines started by a launcher: "
                                    "local subprocesses, ssh, mpiexec or Slurm. Its record is "
                                    "kept in the profile (cluster.json).")
    actions = cl.add_subparsers(dest="action", required=True, metavar="ACTION")
    st = actions.add_parser("start", help="start a controller and N engines",
                            description="Start a controller here and N engines started by a "
                                        "launcher. The store begins empty unless --resume.")
    stop = actions.add_parser("stop", help="stop the cluster started in this profile",
                              description="Stop the cluster started in this profile (or, if "
                                          "its process is gone, what its launcher left).")
    stop.set_defaults(func=cmd_cluster)
    status = actions.add_parser("status", help="is a cluster running in this profile, and its "
                                               "launcher's groups",
                                description="Whether a cluster runs in this profile: its pid, "
                                            "engines, connection file and launcher groups.")
    status.set_defaults(func=cmd_cluster)

    st.add_argument("-n", type=int, default=os.cpu_count() or 1,
                    help="number of engines (default: the CPU count)")
    st.add_argument("--launcher", default="local", choices=["local", "ssh", "mpi", "slurm"],
                    help="who starts the engines: local subprocesses (default), ssh, mpiexec "
                         "or a Slurm job")
    st.add_argument("--daemon", action="store_true", help="run in the background")
    st.add_argument("--resume", action="store_true",
                    help="keep the store of the cluster that ran before (its results and "
                         "taskids); without it the cluster begins with an empty store")
    _keep_results(st)
    _memory_budget(st)
    _forget_clients_after(st)
    st.add_argument("--ip", default="127.0.0.1",
                    help="interface the controller binds (0.0.0.0 for engines elsewhere)")
    st.add_argument("--location", default=None,
                    help="address engines and clients connect to (default: --ip, or this "
                         "machine's outward address for 0.0.0.0)")
    st.add_argument("--port", type=int, default=None, help="client port (default: random)")
    st.add_argument("--engine-port", type=int, default=None, help="engine port (default: random)")
    st.add_argument("--transport", choices=["tcp", "ipc"], default=None,
                    help="ipc (unix sockets in the cluster's private folder; the default with "
                         "the local launcher on loopback and no --port, --engine-port or "
                         "--location) or tcp (the default otherwise)")
    st.add_argument("--heartbeat", type=_seconds(), default=DEFAULT_HEARTBEAT,
                    help="seconds between heartbeats; an engine silent for 3 is declared dead")
    st.add_argument("--db", default=None,
                    help="task store (SQLite) path, or :memory: (default: tasks.db beside the "
                         "connection file)")
    st.add_argument("--connection-file", default=None,
                    help="where to write the connection file (default: the profile's, "
                         "~/.taskmill/profile_default/connection.json)")
    st.add_argument("--unmet-timeout", type=_seconds(zero=True), default=DEFAULT_UNMET_TIMEOUT,
                    help="seconds a task whose depend no idle engine satisfies waits before "
                         "it fails with TaskTimeout (default 30)")
    st.add_argument("--no-dashboard", action="store_true",
                    help="run the controller without its web dashboard")
    st.add_argument("--property", action="append", metavar="KEY=VALUE",
                    help="a property of every engine (VALUE read as JSON when it parses)")
    st.add_argument("--env", action="append", metavar="KEY=VALUE",
                    help="an environment variable of every engine process (on its machine: "
                         "ssh, MPI and Slurm engines too); repeatable")
    st.add_argument("--cwd", default=None, metavar="DIR",
                    help="the engines' working folder, on their machines (default: where "
                         "each starts)")
    st.add_argument("--adapt", type=_adapt_range, default=None, metavar="MIN:MAX",
                    help="adaptive: start engines while tasks wait, up to MAX, and retire "
                         "those idle for --idle-after seconds, down to MIN (-n engines first)")
    st.add_argument("--idle-after", type=_seconds(zero=True), default=60.0, metavar="SECONDS",
                    help="with --adapt: how long an engine idles before it is retired "
                         "(default 60)")
    st.add_argument("--start-timeout", type=_seconds(), default=60.0,
                    help="seconds to wait for the N engines to register (default 60)")
    st.add_argument("--no-wait", action="store_true",
                    help="do not wait for the engines (e.g. a Slurm job waiting in the queue)")
    st.add_argument("--python", default=None,
                    help="ssh, mpi, slurm: the python that runs the engines (default: this one, "
                         f"{sys.executable})")
    st.add_argument("--hosts", action="append", default=None, metavar="H1,H2",
                    help="ssh: hosts ([user@]host or ssh://user@host:port), engines spread "
                         "round-robin")
    st.add_argument("--hosts-file", default=None, help="ssh: a file of hosts, one per line")
    st.add_argument("--ssh-command", default=None,
                    help="ssh: the ssh command (default: ssh -o BatchMode=yes -o "
                         "ConnectTimeout=10)")
    st.add_argument("--connection-file-on-hosts", default=None, metavar="PATH",
                    help="ssh: the connection file is already at PATH on every host (a shared "
                         "filesystem): do not copy it")
    st.add_argument("--mpiexec", default=None, help="mpi: the mpiexec to run (default: mpiexec)")
    st.add_argument("--mpi-args", default=None,
                    help='mpi: arguments for mpiexec, e.g. --mpi-args="--hostfile hosts '
                         '--oversubscribe"')
    st.add_argument("--work-dir", default=None,
                    help="mpi, slurm: a folder the engines' machines share, for the connection "
                         "file and the batch script (default: ~/.taskmill/launch)")
    st.add_argument("--slurm-account", default=None, help="slurm: the account (sbatch --account)")
    st.add_argument("--slurm-partition", default=None,
                    help="slurm: the partition (sbatch --partition)")
    st.add_argument("--slurm-time", default=None,
                    help="slurm: the job's time limit (sbatch --time)")
    st.add_argument("--slurm-directive", action="append", default=None, metavar="OPTION",
                    help='slurm: one more #SBATCH line, e.g. --slurm-directive=--mem=4G; '
                         "repeatable")
    st.add_argument("--slurm-mode", default=None, choices=["srun", "array"],
                    help="slurm: one job of N tasks under srun (default), or a job array of N")
    st.set_defaults(func=cmd_cluster)
