"""A `taskmill cluster`'s logs stay in its profile's folder after it stops; `taskmill logs`
shows them: all, the controller's, or one engine's. `Cluster(log_dir=...)` keeps them too."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from systest import TASKMILL

from taskmill import Cluster, MapTask, TaskClient

pytestmark = pytest.mark.timeout(240, method="thread")


def chatter(text):
    print(text)
    return os.getpid()


def test_a_cluster_keeps_its_logs_in_log_dir_after_stop(tmp_path):
    logs = tmp_path / "logs"
    with Cluster(1, heartbeat=0.5, log_dir=logs) as c, c.client() as tc:
        assert tc.run(MapTask(abs, (-3,)), block=True) == 3
        state_dir = c.state_dir
    assert not state_dir.exists()  # the temporary state folder is gone...
    assert "registered as engine 0" in (logs / "engine-0.log").read_text()  # ...the logs stay
    assert "task store" in (logs / "controller.log").read_text()
    assert "registered as engine 0" in c.log_tail("engine-0")
    assert oct(logs.stat().st_mode & 0o777) == "0o700"


def test_taskmill_logs_shows_a_stopped_clusters_logs(tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, TASKMILL_DIR=str(home))
    run = lambda *a: subprocess.run([*TASKMILL, *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120, env=env)
    started = run("cluster", "start", "-n", "2", "--daemon", "--no-dashboard")
    assert started.returncode == 0, started.stderr
    try:
        conn = json.loads((home / "profile_default" / "cluster.json").read_text())
        with TaskClient(conn["connection_file"]) as tc:
            pids = {e["engineid"]: e["pid"] for e in tc.engines()}
            assert sorted(pids) == [0, 1]
            # What task code prints between tasks' captures goes to its task, not to the log.
            assert tc.run(MapTask(chatter, ("said in a task",)), block=True) in pids.values()
    finally:
        stopped = run("cluster", "stop")
    assert stopped.returncode == 0, stopped.stderr
    folder = home / "profile_default" / "logs"
    assert {p.name for p in folder.glob("*.log")} == {
        "controller.log", "engine-0.log", "engine-1.log"}

    everything = run("logs")
    assert everything.returncode == 0, everything.stderr
    out = everything.stdout
    headers = re.findall(r"^==> (.+) <==$", out, re.M)
    assert headers == ["controller.log", "engine-0.log", "engine-1.log"], out
    assert "registered as engine 0" in out and "registered as engine 1" in out
    assert "said in a task" not in out

    for eid, pid in pids.items():
        one = run("logs", str(eid))
        assert one.returncode == 0, one.stderr
        lines = one.stdout.splitlines()
        assert re.fullmatch(rf"==> engine {eid} \(pid {pid}, engine-\d\.log\) <==", lines[0])
        assert any(f"registered as engine {eid}" in line for line in lines)
        named = set(re.findall(r"^\S+ \S+ [\w.]+\[(\d+)\] ", one.stdout, re.M))
        assert named == {str(pid)}, one.stdout  # only that engine's process

    controller = run("logs", "controller", "-n", "3")
    assert controller.returncode == 0, controller.stderr
    assert controller.stdout.splitlines()[0] == "==> controller.log <=="
    assert len(controller.stdout.splitlines()) == 4
    assert "taskmill.controller" in (folder / "controller.log").read_text()

    missing = run("logs", "7")
    assert missing.returncode == 1
    assert "no engine 7" in missing.stderr and "engines there: 0, 1" in missing.stderr

    # A new cluster starts a fresh folder; the last one's logs move to logs.previous.
    again = run("cluster", "start", "-n", "1", "--daemon", "--no-dashboard")
    assert again.returncode == 0, again.stderr
    assert run("cluster", "stop").returncode == 0
    assert {p.name for p in folder.glob("*.log")} == {"controller.log", "engine-0.log"}
    previous = folder.with_name("logs.previous")
    assert {p.name for p in previous.glob("*.log")} == {
        "controller.log", "engine-0.log", "engine-1.log"}


def test_taskmill_logs_without_logs_says_where_it_looked(tmp_path):
    env = dict(os.environ, TASKMILL_DIR=str(tmp_path / "empty"))
    out = subprocess.run([*TASKMILL, "logs"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 1
    assert "no logs in" in out.stderr and "taskmill cluster start" in out.stderr
