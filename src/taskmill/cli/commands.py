"""The commands that run one process: `controller`, `engine`, `curve-key`, `status`, `run`.

Each takes the parsed arguments (parser.py) and returns the exit status. They import what they
run when they run (the controller, the engine, the client), so that `taskmill engine` starts
without importing the controller's side and the other way round.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import zmq

from ..connection import (
    check_ipc_folder,
    default_connection_file,
    ensure_private_dir,
    find_connection_file,
    ipc_urls,
    new_connection_info,
    read_connection_file,
    read_connection_line,
    wait_for_connection_file,
    write_connection_file,
)
from ..curve import add_curve
from ..curve import enabled as curve_enabled
from ..defaults import is_loopback, queue_window, queue_window_bytes
from ..errors import ControllerUnreachable
from .cluster import gone_cluster, gone_controller, one_line

# Errors of binding the controller's sockets, reported as one line instead of a traceback.
BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.ENOENT,
               errno.ENAMETOOLONG, errno.EINVAL)


LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=LOG_FORMAT)


def setup_engine_logging(level: str) -> None:
    """An engine's logging: its own records (the `taskmill` loggers) go to its stderr, its log,
    at `level`; the root logger stays as a fresh interpreter has it (no handler, WARNING), for
    task code, whose records reach the running task's stderr (engine/running.py)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    own = logging.getLogger("taskmill")
    own.addHandler(handler)
    own.setLevel(getattr(logging, level.upper(), logging.INFO))
    own.propagate = False


def cmd_controller(a: argparse.Namespace) -> int:
    from ..controller.sockets import ControllerSockets
    from ..errors import StoreError
    from ..store import open_store

    setup_logging(a.log_level)
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
        if a.max_message_size is not None and a.max_message_size != info.max_message:
            log.warning("--max-message-size %d: the connection file said %d; it says %d from "
                        "now on (clients and engines connected before keep the old limit "
                        "until they start again)", a.max_message_size, info.max_message,
                        a.max_message_size)
            info.extra["max_message"] = a.max_message_size
            write_connection_file(path, info)
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
        if a.max_message_size is not None:
            info.extra["max_message"] = a.max_message_size
        if info.is_ipc:
            check_ipc_folder(info)  # before the file that names the sockets exists
        write_connection_file(path, info)
        log.debug("wrote connection file %s", path)
    try:
        store.check_key(info.key_bytes)
    except StoreError as e:
        store.close()
        print(f"taskmill controller: {e}", file=sys.stderr)
        return 1
    if info.is_ipc:
        check_ipc_folder(info)
        # (DEBUG until it listens: a controller that cannot bind says so in one line; the
        # controller logs what it listens on once it does)
        log.debug("listening on unix sockets %s (clients) and %s (engines), in a folder only "
                  "this user can enter", info.client_url, info.engine_url)
    else:
        log.debug("binding %s; clients and engines connect to %s and %s", info.ip,
                  info.client_url, info.engine_url)
    if not info.is_ipc and not is_loopback(info.ip) and not curve_enabled(info):
        log.warning(
            "binding %s without --curve: messages travel unencrypted, so anyone on that network "
            "can read every task and result, and anyone who obtains the key in %s can run any "
            "code on every engine. Use --curve on networks you do not trust.", info.ip, path)
    logging.getLogger("taskmill").debug("task store: %s", db)
    try:
        sockets = ControllerSockets(info, connection_file=path, max_message=info.max_message)
    except zmq.ZMQError as e:
        if e.errno not in BIND_ERRORS:
            raise
        hint = (" (another program, or another controller, listens there: choose other ports "
                "with --port/--engine-port, or stop it)" if e.errno == errno.EADDRINUSE else "")
        raise SystemExit(f"taskmill controller: cannot listen: {e}{hint}") from None
    # Listening: engines and clients started beside this process connect now, and what they
    # send waits in the sockets until the loop, built from here on, reads it.
    from ..controller import run_controller
    from ..dashboard import forget_dashboard, start_dashboard
    from ..lifeline import watch_parent

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
                       max_message=info.max_message, keep_results=a.keep_results,
                       sockets=sockets, forget_clients_after=a.forget_clients_after,
                       queue_window=a.queue_window or queue_window(a.memory_budget),
                       queue_bytes=queue_window_bytes(a.memory_budget))
    except StoreError as e:  # (a store it cannot read back: one line, as at its open)
        print(f"taskmill controller: {e}", file=sys.stderr)
        return 1
    finally:
        if dashboard is not None:
            dashboard.stop()
        if orphaned and a.remove_if_orphaned:
            # The owner (a Cluster) died without stop(), e.g. by SIGKILL: nobody else will
            # remove its state directory (logs, and the store unless it lives elsewhere).
            shutil.rmtree(a.remove_if_orphaned, ignore_errors=True)
    return 0


def cmd_curve_key(a: argparse.Namespace) -> int:
    from ..curve import SECRET_KEY_ENV, make_key

    public, secret = make_key(Path(a.dir), a.name)
    print(f"public key: {public}  (copy it into the controller's "
          "<connection file>.allowed-keys/ directory)")
    print(f"secret key: {secret}  (keep it private; use it with {SECRET_KEY_ENV}={secret})")
    return 0


def cmd_engine(a: argparse.Namespace) -> int:
    from ..engine import parse_property, run_engine
    from ..engine.supervise import supervise
    from ..errors import ConnectionFileError, ControllerUnreachable
    from ..launchers.mpi import mpi_rank_from_environment
    from ..lifeline import watch_parent

    setup_engine_logging(a.log_level)
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
        if a.cwd is not None:
            try:
                os.chdir(a.cwd)
            except OSError as e:
                print(f"taskmill engine: --cwd {a.cwd}: {e.strerror or e}", file=sys.stderr)
                return 1
    except (ConnectionFileError, ControllerUnreachable) as e:
        print(f"taskmill engine: {e}", file=sys.stderr)
        return 1

    def run(kill_report_fd: int | None = None, lifeline_fd: int | None = None) -> None:
        if lifeline_fd is not None:  # (the supervising process ended: so does the engine)
            watch_parent(lifeline_fd, lambda: os._exit(0))
        try:
            run_engine(info, props, parent_fd=a.parent_fd, register_timeout=a.controller_timeout,
                       kill_report_fd=kill_report_fd)
        except ControllerUnreachable as e:
            print(f"taskmill engine: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    if a.no_replace:  # (a Cluster's local engine: its nanny starts the new one)
        try:
            run()
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        return 0
    return supervise(run)


def cmd_status(a: argparse.Namespace) -> int:
    from ..client import TaskClient
    from ..dashboard import dashboard_link
    from ..status import show_status

    path = find_connection_file(a.connection_file)
    gone = gone_cluster(path)
    if gone is not None:  # (rather than waiting --timeout for a controller that is gone)
        print(f"taskmill: {gone}", file=sys.stderr)
        return 1
    info = read_connection_file(path)
    try:
        tc = TaskClient(path, timeout=a.timeout)
    except ControllerUnreachable:
        why = gone_controller(path)  # (a cluster runs here: "start one" would be wrong)
        if why is None:
            raise
        print(f"taskmill: {why}", file=sys.stderr)
        return 1
    with tc:
        def fetch() -> dict[str, Any]:
            return statistics_within(tc, a.timeout, info.client_url)

        return show_status(
            fetch, as_json=a.json, json_view=lambda: json_status(fetch()),
            watch=a.watch, controller=info.client_url, dashboard=dashboard_link(info))


def statistics_within(tc: Any, timeout: float, url: str) -> dict[str, Any]:
    """`tc.statistics()`, or past `timeout` seconds ControllerUnreachable naming the controller.
    (A quick request rides out a stopped controller for the client's reconnect_timeout, 120 s:
    meanwhile `--watch` kept the last figures on the screen as if they were current.)"""
    from ..client import steps

    try:
        return tc.backend.run(steps.statistics(),
                              deadline=steps.Deadline.of(timeout, "statistics"))
    except ControllerUnreachable:
        raise
    except TimeoutError:
        raise ControllerUnreachable(
            f"the controller at {url} did not answer within {timeout:g}s (--timeout): it is "
            "stopped, overloaded or restarting") from None


def json_status(stats: dict[str, Any]) -> dict[str, Any]:
    """What `taskmill status --json` prints, from one `statistics()` answer (one moment; three
    requests gave a queue and engines of different moments): the queue, the engines (each as
    `engines()` gives it), the backlog (queued tasks kept only in the store, beyond the window
    held in memory) and the throughput."""
    from ..protocol import EngineRow

    fields = EngineRow.__struct_fields__
    return {"queue": stats["queue"],
            "engines": [{k: e[k] for k in fields} for e in stats["engines"]],
            "backlog": {k: stats.get(k) for k in ("backlog", "queued_in_memory", "queue_window")},
            "tasks_per_second": stats.get("tasks_per_second")}


def cmd_run(a: argparse.Namespace) -> int:
    from ..cluster import Cluster
    from ..launchers import LauncherError

    cluster = Cluster(a.n)
    try:
        cluster.start()
    except (LauncherError, RuntimeError, TimeoutError) as e:
        print(f"taskmill: the cluster did not start: {one_line(e)}", file=sys.stderr)
        return 1
    with cluster:
        env = dict(os.environ, TASKMILL_CONNECTION=str(cluster.connection_file))
        return subprocess.call([sys.executable, a.script, *a.args], env=env)
