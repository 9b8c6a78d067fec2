"""`Cluster`: a local controller and engines started by a launcher (default: local subprocesses).

Every child holds the read end of a "lifeline" pipe whose write end only this process holds. When
this process exits, however it exits (`stop()`, a normal exit, SIGKILL), the pipe closes and
every child ends itself. So nothing is left running after the owner is gone. Launchers that
start engines elsewhere (ssh, mpi, slurm; see launchers/) extend the lifeline to them.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .adapt import Adapter, Policy
from .checks import choose_transport, days, mebibytes, message_size, per_engine_properties, seconds
from .cluster_watch import ControllerWatch, EngineRows, told
from .connection import (
    ensure_private_dir,
    new_connection_info,
    read_connection_file,
    write_connection_file,
)
from .defaults import (
    DEFAULT_HEARTBEAT,
    DEFAULT_KEEP_RESULTS,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_UNMET_TIMEOUT,
    ENGINE_GONE_STATES,
    FORGET_CLIENTS_AFTER,
    is_loopback,
)
from .display import cluster_html, html_table, state_html
from .errors import ControllerUnreachable
from .launchers import LaunchContext, Launcher, LocalLauncher, make_launcher
from .launchers.base import check_env, spawn, tail, terminate
from .protocol import EngineExited, to_request

if TYPE_CHECKING:
    from .client import TaskClient

log = logging.getLogger("taskmill.cluster")

_LIVE: weakref.WeakSet[Cluster] = weakref.WeakSet()
NANNY_INTERVAL = 0.2
# A cluster's state folder: tempfile's folder / STATE_PREFIX + random, mode 0700. OWNER_FILE in
# it holds the owner's pid and the controller's, one a line: while either lives the cluster
# runs (`taskmill clean` leaves it alone); `stop()` removes the folder.
STATE_PREFIX = "taskmill-cluster-"
OWNER_FILE = "owner.pid"
CONTROLLER_PROBE = 0.5  # seconds: how long start() asks the controller before checking it lives
WAIT_PAUSE_FIRST, WAIT_PAUSE_MAX = 0.001, 0.01  # seconds between wait_for_engines' requests


def _stop_all_at_exit() -> None:
    for cluster in list(_LIVE):
        try:
            cluster.stop()
        except RuntimeError as e:  # (LauncherError: engines it cannot confirm stopped; said)
            log.error("%s", e)


atexit.register(_stop_all_at_exit)


class Cluster:
    """A local controller and `n` engines (default: the CPU count), started by `start()`.

    `launcher` starts the engines: "local" (default), "ssh", "mpi", "slurm", or a `Launcher`
    built with its options (e.g. `SSHLauncher(["node1", "node2"])`). For engines on other
    machines, bind an interface they can reach (`ip="0.0.0.0"`) and, if needed, name the
    address they should connect to (`location=`). With `wait=False`, `start()` returns once the
    engines are launched (a Slurm job may wait in the queue); use `wait_for_engines` later.

    `keep_results`: days a finished result stays in the store (default 7; math.inf: always),
    which matters for a `db` that outlives the cluster. `memory_budget`: MiB the controller
    keeps its queued tasks under (default 256; beyond a window of tasks, or of their payload
    bytes: a quarter of it, they wait in the store only, which needs a `db` on disk: the
    default, not ":memory:"). `key` (hex): the key that signs messages and results (default:
    a new one); a cluster that opens a `db` kept from an earlier one needs that one's key to
    hand out its results (`cluster start --resume` keeps it). `forget_clients_after`: seconds
    of silence after which the controller forgets a client (killed, or stopped: its futures
    then fail with ClientForgotten; default 300; math.inf: never; see controller/clients.py).

    `transport`: "ipc" (unix sockets in the cluster's 0700 state folder, so that no other user
    of this machine can connect) or "tcp". The default is "ipc" for a cluster that is all on
    this machine (the local launcher, a loopback `ip`, no `port`, `engine_port` or
    `location`), else "tcp". (When the state folder is too deep for a unix socket's path,
    `start()` falls back to TCP on `ip` and logs why; `transport` then says "tcp".)

    Logs (controller.log, engine-<i>.log, ...) go to the state folder, a temporary folder
    removed at `stop()`, unless `log_dir` names a folder where they are kept (appended to);
    `taskmill cluster start` keeps them in the profile's folder (see `taskmill logs`).

    `max_message_size`: bytes one message may hold (default 512 MiB); the controller refuses
    larger ones, and a task or result above it fails with an error that names it.

    `env` (names to str values) is set in every engine's process as it starts, and `cwd` is
    the engines' working folder, on their machines (each launcher's engines alike: the engine's
    command runs through `env`, with `--cwd`).
    """

    def __init__(
        self,
        n: int | None = None,
        *,
        ip: str = "127.0.0.1",
        db: str | None = None,
        engine_properties: dict[str, Any] | list[dict[str, Any]] | None = None,
        unmet_timeout: float = DEFAULT_UNMET_TIMEOUT,
        heartbeat: float = DEFAULT_HEARTBEAT,
        connection_file: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
        max_restarts: int = 10,
        prefetch: int | None = None,
        launcher: str | Launcher | None = None,
        location: str | None = None,
        port: int | None = None,
        engine_port: int | None = None,
        wait: bool = True,
        dashboard: bool = True,
        transport: str | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        keep_results: float = DEFAULT_KEEP_RESULTS,
        memory_budget: float = DEFAULT_MEMORY_BUDGET,
        forget_clients_after: float = FORGET_CLIENTS_AFTER,
        key: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        max_message_size: int | None = None,
    ) -> None:
        self.n = (os.cpu_count() or 1) if n is None else n
        if not isinstance(self.n, int) or self.n < 0:
            raise ValueError(f"n must be an int >= 0, not {n!r}")
        self.ip = ip
        self.location = location
        self.port = port
        self.engine_port = engine_port
        self.db = db
        self.engine_properties = per_engine_properties(engine_properties, self.n)
        self.unmet_timeout = seconds("unmet_timeout", unmet_timeout, zero=True)
        self.heartbeat = seconds("heartbeat", heartbeat)
        self.prefetch = prefetch
        self.dashboard = dashboard
        self.start_timeout = seconds("start_timeout", start_timeout)
        self.keep_results = days("keep_results", keep_results)
        self.memory_budget = mebibytes("memory_budget", memory_budget)
        self.forget_clients_after = seconds("forget_clients_after", forget_clients_after,
                                            infinite=True)
        if key is not None:
            try:
                bytes.fromhex(key)
            except (TypeError, ValueError):
                raise ValueError(f"key must be a hex string, not {key!r}") from None
        self.key = key
        self.max_message_size = (None if max_message_size is None
                                 else message_size("max_message_size", max_message_size))
        self.wait = wait
        self._requested_connection_file = Path(connection_file) if connection_file else None
        self.state_dir: Path | None = None
        self.log_dir: Path | None = Path(log_dir) if log_dir is not None else None
        self.env = check_env(env)
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.connection_file: Path | None = None
        self._controller: subprocess.Popen[bytes] | None = None
        self.max_restarts = max_restarts
        if launcher is None or launcher == "local":
            launcher = LocalLauncher(max_restarts=max_restarts)
        elif isinstance(launcher, str):
            launcher = make_launcher(launcher)
        if not isinstance(launcher, Launcher):
            raise TypeError(f"launcher must be a launcher's name or a Launcher, not {launcher!r}")
        self.launcher: Launcher = launcher
        if self.cwd is not None and launcher.name == "local":
            if not os.path.isdir(self.cwd):
                raise ValueError(f"cwd={self.cwd!r}: no such folder (the engines' working "
                                 "folder)")
            self.cwd = os.path.abspath(self.cwd)
        self.transport = self._choose_transport(transport)
        self._nanny: threading.Thread | None = None
        self._watch: ControllerWatch | None = None
        self._lifeline: tuple[int, int] | None = None
        self._client: TaskClient | None = None
        self._adapter: tuple[Adapter, TaskClient] | None = None
        self._started = False

    def _choose_transport(self, choice: str | None) -> str:
        local = (self.launcher.name == "local" and is_loopback(self.ip)
                 and self.port is None and self.engine_port is None and self.location is None)
        return choose_transport(choice, local, (
            f"launcher={self.launcher.name!r}, ip={self.ip!r}, port={self.port!r}, "
            f"engine_port={self.engine_port!r}, location={self.location!r}"))

    @property
    def restarts(self) -> int:
        """Engines started again after they exited (the local launcher's nanny does that)."""
        return self.launcher.restarts

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Cluster:
        if self._started:
            return self
        self.launcher.check()  # a missing program fails here, before anything starts
        self._started = True
        _LIVE.add(self)
        try:
            self.state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX))  # mode 0700
            if self.log_dir is not None:
                ensure_private_dir(self.log_dir)  # (logs may hold what tasks printed)
            info = new_connection_info(
                self.ip, self.port, self.engine_port, self.location,
                ipc_dir=self.state_dir if self.transport == "ipc" else None)
            self.transport = "ipc" if info.is_ipc else "tcp"
            if self.key is not None:
                info.key = self.key
            if self.max_message_size is not None:  # (the controller, clients, engines read it)
                info.extra["max_message"] = self.max_message_size
            self.connection_file = write_connection_file(
                self._requested_connection_file or self.state_dir / "connection.json", info)
            self._lifeline = os.pipe()
            cmd = [sys.executable, "-m", "taskmill", "controller",
                   "--connection-file", str(self.connection_file),
                   "--unmet-timeout", str(self.unmet_timeout),
                   "--heartbeat", str(self.heartbeat),
                   "--keep-results", str(self.keep_results),
                   "--memory-budget", str(self.memory_budget),
                   "--forget-clients-after", str(self.forget_clients_after),
                   "--prefetch", "auto" if self.prefetch is None else str(self.prefetch),
                   "--parent-fd", str(self._lifeline[0]),
                   "--remove-if-orphaned", str(self.state_dir)]
            if self.db is not None:
                cmd += ["--db", self.db]
            if not self.dashboard:
                cmd += ["--no-dashboard"]
            self._watch = ControllerWatch(cmd, self._context().log_path("controller.log"),
                                          (self._lifeline[0],), durable=self.db != ":memory:",
                                          limit=self.max_restarts)
            self._controller = spawn(cmd, self._watch.log_path, pass_fds=self._watch.pass_fds)
            (self.state_dir / OWNER_FILE).write_text(f"{os.getpid()}\n{self._controller.pid}\n")
            self.launcher.launch(self._context(), self.engine_properties)
            if self.wait:
                self.wait_for_engines(self.n, self.start_timeout)
            else:
                self.wait_for_engines(0, self.start_timeout)  # the controller answers
            self._nanny = threading.Thread(target=self._watch_engines, name="taskmill-nanny",
                                           daemon=True)
            self._nanny.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _context(self) -> LaunchContext:
        assert self.connection_file is not None and self.state_dir is not None
        return LaunchContext(self.connection_file, self.state_dir,
                             self._lifeline[0] if self._lifeline else None, self.log_dir,
                             self.env, self.cwd)

    def _watch_engines(self) -> None:
        """The nanny: tell the controller at once when a local engine process exits (the
        local launcher starts a replacement in `reap()`, or in `settle()` with the engine rows
        it asks for: launchers/local.py); start the controller again if it dies
        (cluster_watch.py)."""
        rows = EngineRows()
        while self._started:
            new = self._watch.check(self._controller) if self._watch and self._controller \
                else None
            if new is not None:  # (stop() joins this thread before it ends the controller)
                self._controller = new
                if self.state_dir is not None:
                    (self.state_dir / OWNER_FILE).write_text(f"{os.getpid()}\n{new.pid}\n")
            for pid, status in self.launcher.reap():
                try:  # (not waiting for the answer: a dead controller must not stop the rounds)
                    self._own_client().backend.connection.send(
                        to_request(EngineExited(pid, status))).add_done_callback(told)
                except Exception as e:  # noqa: BLE001 - the heartbeat will notice instead
                    log.warning("could not tell the controller that pid %d exited: %s", pid, e)
            if (want := self.launcher.wants_rows()) is not None and (want or self._client):
                try:  # (nor waiting for these: launchers/local.py `settle`)
                    rows.ask(self._own_client().backend.connection.send, want)
                    if (got := rows.take()) is not None:
                        self.launcher.settle(*got)
                except Exception as e:  # noqa: BLE001 - asked again in a later round
                    log.debug("the engines' states (engines()) did not come: %s", e)
            time.sleep(NANNY_INTERVAL)

    def stop(self) -> None:
        """Stop every process of this cluster (idempotent)."""
        if not self._started:
            return
        self._started = False
        _LIVE.discard(self)
        self._stop_adapting()
        if self._nanny is not None and self._nanny is not threading.current_thread():
            self._nanny.join(timeout=5)
            self._nanny = None
        if self._client is not None:
            self._client.close()
            self._client = None
        try:  # (engines first: each gives back what it never started, which the controller
            self.launcher.stop()  # queues again and stores: a restart on the store runs it)
        finally:
            if self._controller is not None:
                terminate([self._controller])
            try:
                self.launcher.cleanup()
            except Exception as e:  # noqa: BLE001 - stopping must finish
                log.warning("the %s launcher could not clean up: %s", self.launcher.name, e)
            if self._lifeline is not None:
                for fd in self._lifeline:
                    os.close(fd)
                self._lifeline = None
            if self._requested_connection_file and self.connection_file:
                self.connection_file.unlink(missing_ok=True)
            if self.state_dir is not None:
                shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- using it --------------------------------------------------------------------------
    def client(self, timeout: float = 10.0, reconnect_timeout: float = 120.0) -> TaskClient:
        """A new TaskClient connected to this cluster (its `timeout` and `reconnect_timeout`
        are TaskClient's)."""
        # (Imported here, not with this module: start() has its processes starting before
        # this process spends its time importing the client's side.)
        from .client import TaskClient

        if self.connection_file is None:
            raise RuntimeError("the cluster is not started: call start() or use `with`")
        return TaskClient(self.connection_file, timeout=timeout,
                          reconnect_timeout=reconnect_timeout)

    def _own_client(self) -> TaskClient:
        if self._client is None:
            self._client = self._await_controller()
            self._client.backend.connection.timeout = self.start_timeout  # (its requests')
        return self._client

    def _check_controller(self) -> None:
        """Raise RuntimeError, with the end of its log, if the controller process has exited."""
        if self._controller is not None and self._controller.poll() is not None:
            raise RuntimeError(
                f"the controller exited with status {self._controller.returncode}:\n"
                + self.log_tail("controller"))

    def _await_controller(self) -> TaskClient:
        """A client, once the controller answers it; raise at once if the controller's process
        exits first (it cannot bind its port, say), rather than waiting `start_timeout`."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            self._check_controller()
            left = deadline - time.monotonic()
            try:
                return self.client(timeout=max(0.01, min(CONTROLLER_PROBE, left)))
            except ControllerUnreachable:
                self._check_controller()  # (it may have exited while we asked)
                if time.monotonic() >= deadline:
                    url = read_connection_file(self.connection_file).client_url \
                        if self.connection_file else "?"
                    raise ControllerUnreachable(
                        f"the controller (pid {self.controller_pid}) did not answer at {url} "
                        f"within {self.start_timeout:g}s (that address, the cluster's "
                        "location, must lead to the one it listens on, its ip); the end of "
                        "its log:\n"
                        + self.log_tail("controller")) from None

    def add_engines(self, k: int, properties: dict[str, Any] | list[dict[str, Any]] | None = None) -> None:
        """Start `k` more engines (they register on their own; see wait_for_engines)."""
        if not self._started:
            raise RuntimeError("the cluster is not started")
        self.launcher.launch(self._context(), per_engine_properties(properties, k))

    def adapt(self, minimum: int = 0, maximum: int | None = None, idle_after: float = 60.0, *,
              interval: float = 1.0, properties: dict[str, Any] | None = None) -> Adapter:
        """Grow while tasks wait and shrink when engines idle, between `minimum` and `maximum`
        engines (default: the `n` this cluster started with), as dask's and Ray's clusters do.

        Every `interval` seconds: while there are more tasks (waiting or held by engines) than
        engines, start engines (with this cluster's launcher, each with `properties`, default
        those of its first engine); when engines have been idle for `idle_after` seconds and no
        task waits, retire them (`TaskClient.retire_engines`: no task is lost or run twice).
        Returns the `Adapter` (its `stop()`, `history`, `largest`); calling `adapt` again
        replaces it, and `stop()` of the cluster ends it. See taskmill/adapt.py."""
        if not self._started:
            raise RuntimeError("the cluster is not started")
        if maximum is None:
            maximum = max(1, self.n, minimum)
        policy = Policy(minimum, maximum, idle_after)
        if properties is None:
            properties = self.engine_properties[0] if self.engine_properties else {}
        props = dict(properties)
        self._stop_adapting()
        tc = self.client(timeout=self.start_timeout)

        def start(k: int) -> None:
            self.launcher.launch(self._context(), [dict(props) for _ in range(k)])

        adapter = Adapter(policy, read=lambda: (tc.engines(), tc.queue_status()),
                          start=start, retire=tc.retire_engines, interval=interval,
                          start_timeout=self.start_timeout, pending=self.launcher.pending)
        self._adapter = (adapter, tc)
        return adapter.begin(tc.engines(), launched=self.n)  # (wait=False: not all here yet)

    def _stop_adapting(self) -> None:
        if self._adapter is not None:
            adapter, tc = self._adapter
            self._adapter = None
            adapter.stop()
            tc.close()

    def wait_for_engines(self, k: int, timeout: float = 60.0) -> None:
        """Wait until at least `k` engines have registered in all (`timeout` may be math.inf)."""
        timeout = seconds("timeout", timeout, zero=True, infinite=True)
        deadline = time.monotonic() + timeout
        pause = WAIT_PAUSE_FIRST
        while True:
            self._check_controller()
            if k <= 0:
                self._own_client()
                return
            if len(self._own_client().engines()) >= k:
                return
            failure = self.launcher.failure()
            if failure is not None:
                raise RuntimeError(
                    f"only {len(self._own_client().engines())} of {k} engines registered, and "
                    f"no more will: {failure}")
            if time.monotonic() > deadline:
                logs = self.launcher.logs()
                raise TimeoutError(
                    f"only {len(self._own_client().engines())} of {k} engines registered within "
                    f"{timeout:g}s ({self.launcher.name} launcher: "
                    f"{', '.join(f'{g.label} {g.state}' for g in self.launcher.groups())})"
                    + (f"; {logs[0].name}:\n{tail(logs[0], 30)}" if logs else ""))
            # Engines starting beside their controller register within a few ms of its
            # first answer: ask again soon, then every WAIT_PAUSE_MAX (a request costs the
            # controller little).
            time.sleep(pause)
            pause = min(2 * pause, WAIT_PAUSE_MAX)

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The end of the log of `name`: "controller" or "engine-<i>" (local launcher)."""
        if self.state_dir is None:
            return ""
        return tail((self.log_dir or self.state_dir) / f"{name}.log", lines)

    def _repr_html_(self) -> str:
        """A notebook's view: the engines by state, the queue, the dashboard link (asks the
        controller, giving up after 2 s; everything escaped: see display.py)."""
        title = f"taskmill Cluster ({self.launcher.name} launcher, {self.n} engines asked for)"
        if not self._started or self.connection_file is None:
            return html_table(title, [("status", state_html("stopped"))])
        def status() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            with self.client(timeout=2.0, reconnect_timeout=2.0) as tc:
                return tc.engines(), tc.queue_status()

        return cluster_html(title, status, self.dashboard_url, str(self.connection_file))

    @property
    def dashboard_url(self) -> str | None:
        """The link (with its token) to the controller's web dashboard; None without one."""
        if self.connection_file is None:
            return None
        from .dashboard import dashboard_link

        return dashboard_link(read_connection_file(self.connection_file))

    @property
    def controller_pid(self) -> int | None:
        return self._controller.pid if self._controller else None

    @property
    def controller_restarts(self) -> int:
        """Times the controller process died and was started again (cluster_watch.py)."""
        return self._watch.restarts if self._watch else 0

    @property
    def controller_returncode(self) -> int | None:
        """The controller process's exit status once it has ended (None while it runs, or
        before start)."""
        return self._controller.poll() if self._controller else None

    @property
    def engine_pids(self) -> dict[int, int]:
        """engineid -> pid of every live engine."""
        return {e["engineid"]: e["pid"] for e in self._own_client().engines()
                if e["state"] not in ENGINE_GONE_STATES}
