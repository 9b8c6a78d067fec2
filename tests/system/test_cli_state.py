"""The `taskmill` command as a new user meets it (issue 19): an expected failure is one line on
standard error and a non-zero exit, never a traceback; `cluster start` begins with an empty
store unless --resume; `taskmill clean` removes what stopped clusters left, never a running
cluster's state. Every test runs the real command in a TASKMILL_DIR of its own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from systest import TASKMILL, poll

from taskmill import StringTask, TaskClient
from taskmill.connection import new_connection_info, write_connection_file


class Profile:
    """A TASKMILL_DIR (and, when told, a TMPDIR) of its own; calling it runs `taskmill`."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.env = dict(os.environ, TASKMILL_DIR=str(home), **env)
        self.env.pop("TASKMILL_CONNECTION", None)

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TASKMILL, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    @property
    def folder(self) -> Path:
        return self.home / "profile_default"

    def record(self) -> dict:
        return json.loads((self.folder / "cluster.json").read_text())

    def client(self) -> TaskClient:
        return TaskClient(self.folder / "connection.json", timeout=30)


@pytest.fixture
def profile(tmp_path):
    p = Profile(tmp_path / "home")
    yield p
    if (p.folder / "cluster.json").exists():
        p("cluster", "stop")


def one_line_failure(out: subprocess.CompletedProcess[str]) -> str:
    """The one line an expected failure printed (and nothing else: no traceback)."""
    assert out.returncode != 0, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("taskmill"), lines[0]
    return lines[0]


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


# -- one line, no traceback -------------------------------------------------------------------

def test_status_without_a_cluster(profile):
    line = one_line_failure(profile("status"))
    assert "no connection file" in line and "taskmill cluster start" in line


def test_cluster_stop_without_a_cluster(profile):
    line = one_line_failure(profile("cluster", "stop"))
    assert "no cluster is running" in line


def test_status_when_no_controller_answers(profile, tmp_path):
    path = write_connection_file(tmp_path / "c.json", new_connection_info())
    line = one_line_failure(profile("status", "--connection-file", str(path), "--timeout", "0.5"))
    assert "no taskmill controller answered" in line and str(path) in line


def test_status_with_a_malformed_connection_file(profile, tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    path.chmod(0o600)
    line = one_line_failure(profile("status", "--connection-file", str(path)))
    assert f"connection file {path} is malformed" in line


def test_status_with_a_connection_file_others_can_read(profile, tmp_path):
    path = write_connection_file(tmp_path / "c.json", new_connection_info())
    path.chmod(0o644)
    line = one_line_failure(profile("status", "--connection-file", str(path)))
    assert f"chmod 600 {path}" in line


@pytest.mark.parametrize("daemon", [False, True])
def test_cluster_start_on_a_port_in_use(profile, daemon):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        out = profile("cluster", "start", "-n", "1", "--no-dashboard", "--port", str(port),
                      *(["--daemon"] if daemon else []))
    line = one_line_failure(out)
    assert "Address already in use" in line and f"127.0.0.1:{port}" in line, line
    assert "choose other ports" in line
    assert not (profile.folder / "cluster.json").exists()


def test_a_bare_controller_on_a_port_in_use(profile, tmp_path):
    """(Its stderr is its log, yet nothing is logged before it listens: one line.)"""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        out = profile("controller", "--port", str(port), "--no-dashboard", "--db", ":memory:",
                      "--connection-file", str(profile.folder / "conn.json"))
    line = one_line_failure(out)
    assert "Address already in use" in line and "choose other ports" in line, line


def test_cluster_start_with_a_db_that_is_not_a_store(profile, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    line = one_line_failure(profile("cluster", "start", "-n", "1", "--db", str(notes)))
    assert "not a taskmill store" in line
    assert notes.read_text() == "mine\n"


def test_cluster_start_that_cannot_write_in_its_profile_says_so_in_one_line(profile):
    """(A profile folder made read-only or immutable gave a PermissionError traceback; here
    the daemon's log is a folder, which fails the same way for root too.)"""
    (profile.folder / "cluster.log").mkdir(parents=True, mode=0o700)
    profile.folder.chmod(0o700)
    line = one_line_failure(profile("cluster", "start", "-n", "1", "--no-dashboard",
                                    "--daemon"))
    assert "cannot use" in line and "cluster.log" in line, line
    assert not (profile.folder / "cluster.json").exists()


@pytest.mark.timeout(300)
def test_a_killed_cluster_is_reported_as_gone(profile):
    started = profile("cluster", "start", "-n", "1", "--daemon", "--no-dashboard")
    assert started.returncode == 0, started.stderr
    again = profile("cluster", "start", "-n", "1", "--daemon", "--no-dashboard")
    assert "already running" in one_line_failure(again)
    pid = profile.record()["pid"]
    os.kill(pid, signal.SIGKILL)
    poll(lambda: pid_gone(pid), 30, "the cluster process gone")
    line = one_line_failure(profile("status"))
    assert f"(pid {pid}) is gone" in line and "taskmill cluster start" in line
    status = profile("cluster", "status")
    assert status.returncode == 1 and f"(pid {pid}) is gone" in status.stdout
    stopped = profile("cluster", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "no connection file" not in one_line_failure(profile("status", "--timeout", "0.5"))


def test_status_of_a_cluster_whose_controller_is_gone_says_so(profile):
    """A cluster runs but its controller died and was not started again (its store was in
    memory): `taskmill status` said no controller answered and to start one with `taskmill
    cluster start`, which refuses (a cluster runs). It names the dead controller now."""
    started = profile("cluster", "start", "-n", "1", "--daemon", "--no-dashboard",
                      "--db", ":memory:")
    assert started.returncode == 0, started.stderr
    record = profile.record()
    os.kill(record["controller_pid"], signal.SIGKILL)
    poll(lambda: pid_gone(record["controller_pid"]), 30, "the controller gone")
    line = one_line_failure(profile("status", "--timeout", "1"))
    assert f"controller (pid {record['controller_pid']}) is gone" in line, line
    assert "taskmill cluster stop" in line and f"(pid {record['pid']}) runs" in line


def test_status_of_a_cluster_whose_controller_is_stopped_says_so(profile):
    """A stopped (SIGSTOP) controller: `taskmill status` said no controller answered and to
    start one with `taskmill cluster start`; it says the controller is stopped now."""
    started = profile("cluster", "start", "-n", "1", "--daemon", "--no-dashboard")
    assert started.returncode == 0, started.stderr
    ctl = profile.record()["controller_pid"]
    os.kill(ctl, signal.SIGSTOP)
    try:
        line = one_line_failure(profile("status", "--timeout", "1"))
        assert f"controller (pid {ctl})" in line and "is stopped" in line, line
        assert f"kill -CONT {ctl}" in line
        status = profile("cluster", "status")
        assert status.returncode == 1 and f"controller (pid {ctl}) is stopped" in status.stdout
    finally:
        os.kill(ctl, signal.SIGCONT)


@pytest.mark.timeout(120)
def test_a_pid_given_to_another_process_is_not_taken_for_the_cluster(profile):
    """The cluster was killed and its pid went to another process: `cluster status` said it
    ran, `cluster start` refused, and `cluster stop` killed that other process. The record
    keeps the process's start time now, and a pid that started at another time is not it."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        profile.folder.mkdir(parents=True, mode=0o700)
        (profile.folder / "cluster.json").write_text(json.dumps(
            {"pid": victim.pid, "started": 1, "n": 1, "launcher": None,
             "connection_file": str(profile.folder / "connection.json")}))
        status = profile("cluster", "status")
        assert status.returncode == 1 and "is gone" in status.stdout, status.stdout
        assert profile("cluster", "stop").returncode == 0
        assert victim.poll() is None  # (never signalled)
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.timeout(300)
def test_two_cluster_starts_at_once_give_one_cluster(profile):
    """Both said "cluster started": two clusters ran (one never stopped), or the one that
    failed removed the live one's connection file. One takes the profile's lock now."""
    procs = [subprocess.Popen([*TASKMILL, "cluster", "start", "-n", "1", "--no-dashboard",
                               "--daemon"], env=profile.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=200) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    assert any("already running" in err for _, err in outs), outs
    record = profile.record()
    with profile.client() as tc:
        assert tc.submit(abs, -3).result(timeout=60) == 3
    assert profile("cluster", "stop").returncode == 0
    poll(lambda: pid_gone(record["pid"]) and pid_gone(record["controller_pid"]), 30,
         "the cluster and its controller to end")


@pytest.mark.timeout(300)
def test_cluster_stop_stops_a_stopped_cluster(profile):
    """A SIGSTOPped cluster process: stop waited 120 s, said "stopped" and left the cluster
    process and its controller running. It wakes it now (SIGCONT), so that it stops."""
    assert profile("cluster", "start", "-n", "1", "--daemon", "--no-dashboard").returncode == 0
    record = profile.record()
    os.kill(record["pid"], signal.SIGSTOP)
    stopped = profile("cluster", "stop", timeout=200)
    assert stopped.returncode == 0, stopped.stderr
    poll(lambda: pid_gone(record["pid"]) and pid_gone(record["controller_pid"]), 30,
         "the cluster and its controller to end")


# -- fresh state ------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_cluster_start_begins_empty_and_resume_keeps_the_results(profile):
    def start(*extra):
        out = profile("cluster", "start", "-n", "1", "--daemon", "--no-dashboard", *extra)
        assert out.returncode == 0, out.stderr

    start()
    with profile.client() as tc:
        assert tc.map(abs, [-1, -2]) == [1, 2]
        first = tc.queue_status(verbose=True)["succeeded"]
    assert len(first) == 2
    assert profile("cluster", "stop").returncode == 0

    start()  # a new cluster: none of the previous one's results
    with profile.client() as tc:
        assert tc.queue_status() == {"scheduled": 0, "pending": 0, "succeeded": 0, "failed": 0}
        tid = tc.run(StringTask("y = 3", pull="y"))
        assert tc.get_task_result(tid, block=True).ns.y == 3
        kept = tc.queue_status(verbose=True)["succeeded"]
    assert kept == [tid]
    assert profile("cluster", "stop").returncode == 0

    start("--resume")  # ...unless asked to resume: the results and taskids go on
    with profile.client() as tc:
        assert tc.queue_status(verbose=True)["succeeded"] == kept
        assert tc.get_task_result(tid, block=True).ns.y == 3  # (signed with the kept key)
        assert tc.map(abs, [-4]) == [4]
        assert max(tc.queue_status(verbose=True)["succeeded"]) > max(kept)
    assert profile("cluster", "stop").returncode == 0


@pytest.mark.timeout(300)
def test_a_plain_start_says_it_dropped_the_unfinished_tasks_kept_for_resume(profile):
    """`cluster stop` keeps the store for `--resume`, unfinished tasks too; a plain `cluster
    start` begins empty, as it should, but dropped them without a word."""
    out = profile("cluster", "start", "-n", "1", "--daemon", "--no-dashboard")
    assert out.returncode == 0, out.stderr
    with profile.client() as tc:  # (no engine satisfies them: they stay queued)
        tids = [tc.run(StringTask("x = 1", depend={"gpu": 1})) for _ in range(3)]
        assert tc.queue_status(verbose=True)["scheduled"] == tids
    assert profile("cluster", "stop").returncode == 0
    out = profile("cluster", "start", "-n", "1", "--daemon", "--no-dashboard")
    assert out.returncode == 0, out.stderr
    said = [x for x in out.stderr.splitlines() if "unfinished" in x]
    assert len(said) == 1 and "held 3 unfinished task(s)" in said[0] and "--resume" in said[0]
    with profile.client() as tc:
        assert tc.queue_status()["scheduled"] == 0
    assert profile("cluster", "stop").returncode == 0


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.timeout(300)
def test_clean_removes_stopped_clusters_state_and_never_a_running_ones(tmp_path):
    tmp = tmp_path / "t"
    tmp.mkdir()
    profile = Profile(tmp_path / "home", TMPDIR=str(tmp))
    other = profile.home / "profile_other"  # a profile whose cluster was stopped
    other.mkdir(parents=True, mode=0o700)
    (other / "tasks.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    (other / "tasks.db.blobs").mkdir()
    (other / "tasks.db.blobs" / "1.result.0").write_bytes(b"x" * 1000)
    (other / "cluster.log").write_text("old log\n")
    (other / "connection.json").write_text("{}")
    stopped = tmp / "taskmill-cluster-stopped"  # a cluster killed with its controller
    stopped.mkdir()
    (stopped / "owner.pid").write_text(f"{_dead_pid()}\n{_dead_pid()}\n")
    (stopped / "controller.log").write_text("log\n")
    older = tmp / "taskmill-cluster-older"  # without owner.pid: not known to be stopped
    older.mkdir()
    started = profile("cluster", "start", "-n", "1", "--daemon", "--no-dashboard")
    assert started.returncode == 0, started.stderr
    try:
        running = [p for p in tmp.glob("taskmill-cluster-*") if p not in (stopped, older)]
        assert len(running) == 1 and (running[0] / "owner.pid").exists()
        dry = profile("clean", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert stopped.exists() and (other / "tasks.db").exists()

        out = profile("clean")
        assert out.returncode == 0, out.stderr
        assert not stopped.exists() and older.exists() and running[0].exists()
        assert sorted(p.name for p in other.iterdir()) == ["connection.json"]
        assert (profile.folder / "tasks.db").exists()  # the running cluster's store
        assert f"kept {running[0]}: its cluster is running" in out.stdout
        with profile.client() as tc:
            assert tc.map(abs, [-5]) == [5]
    finally:
        assert profile("cluster", "stop").returncode == 0
    out = profile("clean")
    assert out.returncode == 0, out.stderr
    assert not (profile.folder / "tasks.db").exists() and older.exists()
    assert not running[0].exists()  # (stop removed it)
