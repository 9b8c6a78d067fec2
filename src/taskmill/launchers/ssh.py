"""The ssh launcher: engines on other machines, each started through its own `ssh` session.

For each host it first checks, through ssh, that it can log in and that the remote python
imports taskmill; a host that refuses, or lacks taskmill, fails the launch with an error naming
it. Then it runs `ssh HOST 'exec PYTHON -m taskmill engine --connection-file - --parent-fd 0'`
once per engine, engines spread round-robin over the hosts, and writes the connection file's
JSON as the first line of the session's standard input: the key never rests on the remote
disk, so there is nothing to clean up there. (Or, with `connection_file_on_hosts`, it points
the engines to a connection file that is already there, e.g. on a shared filesystem.) The rest
of that standard input is the engine's lifeline: a pipe from this process through ssh, so when
the owner goes (or `stop()` closes it) the remote engine reads EOF and ends, and so does ssh.

Hosts are anything `ssh` accepts as a destination: `host`, `user@host`, or
`ssh://user@host:port`. The default command is `ssh -o BatchMode=yes`: launching must not wait
for a password, so log in with a key or an agent.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..connection import read_connection_file
from ..defaults import is_loopback
from .base import (
    STOP_GRACE,
    AdoptedProcess,
    EngineGroup,
    LaunchContext,
    Launcher,
    LauncherError,
    ProcessHandle,
    engine_command,
    process_state,
    require_programs,
    require_tcp,
    spawn,
    tail,
    terminate,
)

DEFAULT_SSH = ("ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10")
CHECK_TIMEOUT = 60.0  # seconds for the login-and-check ssh call to a host


def read_hosts_file(path: str | os.PathLike[str]) -> list[str]:
    """The hosts of a hosts file: one per line; blank lines and `#` comments are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise LauncherError(f"cannot read the hosts file {path}: {e}") from None
    hosts = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    hosts = [h for h in hosts if h]
    if not hosts:
        raise LauncherError(f"the hosts file {path} names no host (one host per line)")
    return hosts


def _check_host_name(host: str) -> None:
    """Refuse a host that ssh would read as an option, or that holds a control character."""
    if not isinstance(host, str) or not host:
        raise LauncherError(f"an ssh host must be a non-empty string, not {host!r}")
    if host.startswith("-"):
        raise LauncherError(
            f"the ssh host {host!r} starts with '-', so ssh would read it as an option; give "
            "ssh options with the ssh command (ssh=[...], CLI --ssh-command) and hosts as "
            "host, user@host or ssh://user@host:port")
    if any(ord(c) < 32 or ord(c) == 127 or c.isspace() for c in host):
        raise LauncherError(f"the ssh host {host!r} holds a space or a control character")


def host_name(host: str) -> str:
    """The machine an ssh host names: `node1` of `node1`, `alice@node1` or
    `ssh://alice@node1:2222`."""
    name = host.removeprefix("ssh://").rpartition("@")[2]
    if name.startswith("["):  # ([::1]:22)
        return name[1:].partition("]")[0]
    return name.rpartition(":")[0] if name.count(":") == 1 else name


def require_reachable(engine_url: str, hosts: Sequence[str]) -> None:
    """Refuse a controller that engines on other machines cannot reach: a loopback address
    (they would wait out the whole start, then say only that no controller answered)."""
    where = engine_url.partition("://")[2].rpartition(":")[0].strip("[]")
    far = [h for h in hosts if not is_loopback(host_name(h))]
    if is_loopback(where) and far:
        raise LauncherError(
            f"the controller listens for engines at {engine_url}, this machine's loopback "
            f"address, which engines on {far[0]} cannot reach: give the cluster an address "
            "they can reach (ip='0.0.0.0' and, if its name is not right, location=; CLI "
            "--ip 0.0.0.0 --location NAME)")


class SSHLauncher(Launcher):
    """Engines started through ssh, spread round-robin over `hosts`."""

    name = "ssh"

    def __init__(
        self,
        hosts: Sequence[str] | None = None,
        *,
        hosts_file: str | os.PathLike[str] | None = None,
        ssh: Sequence[str] = DEFAULT_SSH,
        python: str = sys.executable,
        connection_file_on_hosts: str | None = None,
    ) -> None:
        if isinstance(hosts, str):
            raise LauncherError(f"hosts must be a list of hosts, not the string {hosts!r}")
        found = list(hosts or [])
        if hosts_file is not None:
            found += read_hosts_file(hosts_file)
        if not found:
            raise LauncherError("the ssh launcher needs hosts: give hosts=[...] or hosts_file= "
                                "(CLI: --hosts a,b or --hosts-file FILE)")
        for host in found:
            _check_host_name(host)
        self.hosts = found
        self.ssh = list(ssh)
        self.python = python
        self.connection_file_on_hosts = connection_file_on_hosts
        self._checked: list[str] = []
        self._sessions: list[tuple[str, ProcessHandle]] = []
        self._stdins: list[Any] = []
        self._ctx: LaunchContext | None = None

    def check(self) -> None:
        require_programs(self.name, self.ssh[0],
                         how="install an OpenSSH client (Debian: openssh-client)")

    def ssh_argv(self, host: str, command: str) -> list[str]:
        """The command line that runs `command` on `host`; `--` ends ssh's options first
        (when the ssh command is OpenSSH's `ssh`), so a host is never read as an option."""
        end = ["--"] if os.path.basename(self.ssh[0]) == "ssh" else []
        return [*self.ssh, *end, host, command]

    def _ssh(self, host: str, command: str) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(self.ssh_argv(host, command), stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=CHECK_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise LauncherError(f"ssh to {host} did not finish within {CHECK_TIMEOUT:g}s "
                                f"(command: {command})") from None

    def _check_host(self, host: str) -> None:
        """Log in to `host` and check that the remote python imports taskmill."""
        py = shlex.quote(self.python)
        command = (f"command -v {py} >/dev/null 2>&1 || {{ echo 'no python at {py}' >&2; "
                   f"exit 3; }}; {py} -c 'import taskmill'")
        if self.connection_file_on_hosts:
            f = shlex.quote(self.connection_file_on_hosts)
            command += (f" && {{ test -r {f} || {{ echo 'no connection file at {f}' >&2; "
                        "exit 4; }; }")
        done = self._ssh(host, command)
        why = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        if done.returncode == 255:
            raise LauncherError(f"ssh could not log in to {host}: {why}")
        if done.returncode != 0:
            raise LauncherError(
                f"cannot start engines on {host} with {self.python}: {why}. Install taskmill "
                f"there, or give the python that has it (python=..., CLI --python)")
        self._checked.append(host)

    def launch(self, ctx: LaunchContext, properties: list[dict[str, Any]]) -> None:
        self._ctx = ctx
        require_tcp(self.name, ctx.connection_file)
        require_reachable(read_connection_file(ctx.connection_file).engine_url, self.hosts)
        line = b""
        if not self.connection_file_on_hosts:  # one line of JSON, then the lifeline
            compact = json.dumps(json.loads(ctx.connection_file.read_text()),
                                 separators=(",", ":"))
            line = compact.encode() + b"\n"
        start = len(self._sessions)
        for i, props in enumerate(properties):
            host = self.hosts[(start + i) % len(self.hosts)]
            if host not in self._checked:
                self._check_host(host)
            cmd = engine_command(self.python, self.connection_file_on_hosts or "-", props,
                                 "--parent-fd", "0", env=ctx.env, cwd=ctx.cwd)
            remote = "exec " + " ".join(shlex.quote(c) for c in cmd)
            slot = len(self._sessions)
            proc = spawn(self.ssh_argv(host, remote), ctx.log_path(f"ssh-{slot}.log"),
                         stdin=subprocess.PIPE)
            self._sessions.append((host, proc))
            self._stdins.append(proc.stdin)
            if line and proc.stdin is not None:
                try:
                    proc.stdin.write(line)
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass  # ssh already ended; groups() and failure() say so

    def groups(self) -> list[EngineGroup]:
        return [EngineGroup(f"ssh {host} (pid {p.pid})", 1, process_state(p))
                for host, p in self._sessions]

    def failure(self) -> str | None:
        if not self._sessions or any(p.poll() is None for _, p in self._sessions):
            return None
        host, first = self._sessions[0]
        log = self.logs()[0] if self.logs() else None
        return (f"every ssh session ended (the first, to {host}: {process_state(first)})"
                + (f"; its log:\n{tail(log)}" if log else ""))

    def stop(self) -> None:
        for f in self._stdins:  # the engines' lifeline: they end on EOF, then ssh exits
            if f is not None and not f.closed:
                f.close()
        self._stdins = []
        sessions = [p for _, p in self._sessions]
        deadline = time.monotonic() + STOP_GRACE
        while any(p.poll() is None for p in sessions) and time.monotonic() < deadline:
            time.sleep(0.05)
        terminate(sessions)

    def logs(self) -> list[Path]:
        if self._ctx is None:
            return []
        return [self._ctx.log_path(f"ssh-{i}.log") for i in range(len(self._sessions))]

    def record(self) -> dict[str, Any]:
        return {"launcher": self.name, "sessions": [[h, p.pid] for h, p in self._sessions]}

    @classmethod
    def adopt(cls, record: dict[str, Any]) -> SSHLauncher:
        sessions = [(h, AdoptedProcess(pid)) for h, pid in record.get("sessions", [])]
        launcher = cls([h for h, _ in sessions] or ["(none)"])
        launcher._sessions = list(sessions)
        return launcher
