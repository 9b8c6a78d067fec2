"""`Cluster`: a local controller and engines as subprocesses of this one.

Every child holds the read end of a "lifeline" pipe whose write end only this process holds. When
this process exits, however it exits (`stop()`, a normal exit, SIGKILL), the pipe closes and
every child ends itself. So nothing is left running after the owner is gone.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from .client import TaskClient
from .connection import new_connection_info, read_connection_file, write_connection_file

log = logging.getLogger("taskmill.cluster")

_LIVE: weakref.WeakSet[Cluster] = weakref.WeakSet()
NANNY_INTERVAL = 0.2


def _stop_all_at_exit() -> None:
    for cluster in list(_LIVE):
        cluster.stop()


atexit.register(_stop_all_at_exit)


def _property_args(props: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for k, v in props.items():
        args += ["--property", f"{k}={json.dumps(v)}"]
    return args


class Cluster:
    """A local controller and `n` engines (default: the CPU count), started by `start()`."""

    def __init__(
        self,
        n: int | None = None,
        *,
        ip: str = "127.0.0.1",
        db: str | None = None,
        engine_properties: dict[str, Any] | list[dict[str, Any]] | None = None,
        unmet_timeout: float = 30.0,
        heartbeat: float = 1.0,
        connection_file: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
        max_restarts: int = 10,
        prefetch: int = 1,
        dashboard: bool = True,
    ) -> None:
        self.n = (os.cpu_count() or 1) if n is None else n
        if not isinstance(self.n, int) or self.n < 0:
            raise ValueError(f"n must be an int >= 0, not {n!r}")
        self.ip = ip
        self.db = db
        self.engine_properties = self._per_engine(engine_properties, self.n)
        self.unmet_timeout = unmet_timeout
        self.heartbeat = heartbeat
        self.prefetch = prefetch
        self.dashboard = dashboard
        self.start_timeout = start_timeout
        self._requested_connection_file = Path(connection_file) if connection_file else None
        self.state_dir: Path | None = None
        self.connection_file: Path | None = None
        self._controller: subprocess.Popen[bytes] | None = None
        self._engines: list[subprocess.Popen[bytes]] = []
        self._engine_props: list[dict[str, Any]] = []
        self.max_restarts = max_restarts
        self.restarts = 0
        self._nanny: threading.Thread | None = None
        self._lifeline: tuple[int, int] | None = None
        self._client: TaskClient | None = None
        self._started = False

    @staticmethod
    def _per_engine(props: Any, k: int) -> list[dict[str, Any]]:
        if props is None:
            return [{} for _ in range(k)]
        if isinstance(props, dict):
            return [dict(props) for _ in range(k)]
        if isinstance(props, list | tuple) and len(props) == k and all(isinstance(p, dict) for p in props):
            return [dict(p) for p in props]
        raise ValueError(
            f"engine properties must be one dict for every engine or a list of {k} dicts, "
            f"not {props!r}")

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Cluster:
        if self._started:
            return self
        self._started = True
        _LIVE.add(self)
        try:
            self.state_dir = Path(tempfile.mkdtemp(prefix="taskmill-cluster-"))
            info = new_connection_info(self.ip)
            self.connection_file = write_connection_file(
                self._requested_connection_file or self.state_dir / "connection.json", info)
            self._lifeline = os.pipe()
            cmd = [sys.executable, "-m", "taskmill", "controller",
                   "--connection-file", str(self.connection_file),
                   "--unmet-timeout", str(self.unmet_timeout),
                   "--heartbeat", str(self.heartbeat), "--prefetch", str(self.prefetch)]
            if self.db is not None:
                cmd += ["--db", self.db]
            if not self.dashboard:
                cmd += ["--no-dashboard"]
            self._controller = self._spawn(cmd, "controller")
            self._spawn_engines(self.engine_properties)
            self.wait_for_engines(self.n, self.start_timeout)
            self._nanny = threading.Thread(target=self._watch_engines, name="taskmill-nanny",
                                           daemon=True)
            self._nanny.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        assert self.state_dir is not None and self._lifeline is not None
        r = self._lifeline[0]
        log = open(self.state_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            return subprocess.Popen(
                [*cmd, "--parent-fd", str(r)], pass_fds=(r,), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()

    def _spawn_engines(self, props: list[dict[str, Any]]) -> None:
        for p in props:
            self._engines.append(self._spawn_engine(p, len(self._engines)))
            self._engine_props.append(p)

    def _spawn_engine(self, props: dict[str, Any], slot: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "taskmill", "engine",
               "--connection-file", str(self.connection_file), *_property_args(props)]
        return self._spawn(cmd, f"engine-{slot}")

    def _watch_engines(self) -> None:
        """The nanny: tell the controller at once when an engine process exits, and replace it."""
        while self._started:
            for slot, proc in enumerate(list(self._engines)):
                status = proc.poll()
                if status is None or isinstance(proc, _Exited) or not self._started:
                    continue
                try:
                    self._own_client()._conn.call(
                        {"type": "engine_exited", "pid": proc.pid, "status": status})
                except Exception as e:  # noqa: BLE001 - the heartbeat will notice instead
                    log.warning("could not tell the controller that pid %d exited: %s",
                                proc.pid, e)
                if self.restarts >= self.max_restarts:
                    log.error("engine pid %d exited with status %s; not restarted: the limit "
                              "of %d restarts is reached", proc.pid, status, self.max_restarts)
                    self._engines[slot] = _Exited(proc.pid, status)
                    continue
                self.restarts += 1
                new = self._spawn_engine(self._engine_props[slot], slot)
                self._engines[slot] = new
                log.warning("engine pid %d exited with status %s; restarted as pid %d "
                            "(restart %d of at most %d)", proc.pid, status, new.pid,
                            self.restarts, self.max_restarts)
            time.sleep(NANNY_INTERVAL)

    def stop(self) -> None:
        """Stop every process of this cluster (idempotent)."""
        if not self._started:
            return
        self._started = False
        _LIVE.discard(self)
        if self._nanny is not None and self._nanny is not threading.current_thread():
            self._nanny.join(timeout=5)
            self._nanny = None
        if self._client is not None:
            self._client.close()
            self._client = None
        procs = [p for p in [*self._engines, self._controller]
                 if p is not None and not isinstance(p, _Exited)]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
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
    def client(self, timeout: float = 10.0) -> TaskClient:
        """A new TaskClient connected to this cluster."""
        if self.connection_file is None:
            raise RuntimeError("the cluster is not started: call start() or use `with`")
        return TaskClient(self.connection_file, timeout=timeout)

    def _own_client(self) -> TaskClient:
        if self._client is None:
            self._client = self.client(timeout=self.start_timeout)
        return self._client

    def add_engines(self, k: int, properties: dict[str, Any] | list[dict[str, Any]] | None = None) -> None:
        """Start `k` more engines (they register on their own; see wait_for_engines)."""
        if not self._started:
            raise RuntimeError("the cluster is not started")
        self._spawn_engines(self._per_engine(properties, k))

    def wait_for_engines(self, k: int, timeout: float = 60.0) -> None:
        """Wait until at least `k` engines have registered in all."""
        deadline = time.monotonic() + timeout
        while True:
            if self._controller is not None and self._controller.poll() is not None:
                raise RuntimeError(
                    f"the controller exited with status {self._controller.returncode}:\n"
                    + self.log_tail("controller"))
            if k <= 0:
                self._own_client()
                return
            if len(self._own_client().engines()) >= k:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(self._own_client().engines())} of {k} engines registered within "
                    f"{timeout:g}s; engine log:\n{self.log_tail('engine-0')}")
            time.sleep(0.05)

    def log_tail(self, name: str, lines: int = 30) -> str:
        if self.state_dir is None:
            return ""
        path = self.state_dir / f"{name}.log"
        if not path.exists():
            return f"(no {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

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
    def engine_pids(self) -> dict[int, int]:
        """engineid -> pid of every live engine."""
        return {e["engineid"]: e["pid"] for e in self._own_client().engines()
                if e["state"] != "dead"}


class _Exited:
    """Stands in the engine list for an engine process that exited and was not replaced."""

    def __init__(self, pid: int, status: int) -> None:
        self.pid = pid
        self.returncode = status

    def poll(self) -> int:
        return self.returncode
