"""Code and environment on engines (issue 18 item 5): `Cluster(env=..., cwd=...)` and
`taskmill cluster start --env KEY=VALUE --cwd DIR` set the engines' environment (in their
process, as it starts) and working folder; every launcher runs the same engine command line
(`env K=V python -m taskmill engine ... --cwd DIR`)."""

from __future__ import annotations

import os
import subprocess

import pytest
from systest import TASKMILL

from taskmill import Cluster, TaskClient
from taskmill.launchers.base import check_env, engine_command

pytestmark = pytest.mark.timeout(120, method="thread")


def where_and_what():
    import os

    with open("note.txt") as f:  # (relative: the working folder's)
        note = f.read()
    return os.getcwd(), os.environ.get("TM_GREETING"), os.environ.get("TM_EMPTY"), note


def test_cluster_env_and_cwd_reach_the_engines(tmp_path):
    (tmp_path / "note.txt").write_text("from the cwd")
    with Cluster(1, env={"TM_GREETING": "hello world", "TM_EMPTY": ""}, cwd=tmp_path,
                 dashboard=False) as c:
        tc = c.client()
        cwd, greeting, empty, note = tc.submit(where_and_what).result(timeout=60)
    assert os.path.realpath(cwd) == os.path.realpath(tmp_path)
    assert (greeting, empty, note) == ("hello world", "", "from the cwd")


def test_bad_env_or_cwd_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="not a variable name"):
        Cluster(1, env={"1BAD": "x"})
    with pytest.raises(ValueError, match="str without NUL"):
        Cluster(1, env={"OK": 3})
    with pytest.raises(ValueError, match="no such folder"):
        Cluster(1, cwd=tmp_path / "missing")
    assert check_env(None) == {}


def test_every_launcher_runs_the_engine_through_env_with_its_cwd():
    cmd = engine_command("python3", "conn.json", {"gpu": 1}, "--parent-fd", "0",
                         env={"A": "1", "B": "two words"}, cwd="/data/run")
    assert cmd[:3] == ["env", "A=1", "B=two words"]
    assert cmd[3:7] == ["python3", "-m", "taskmill", "engine"]
    assert cmd[cmd.index("--cwd") + 1] == "/data/run"
    assert engine_command("python3", "c", {})[0] == "python3"  # (without: as before)


@pytest.mark.timeout(300)
def test_cluster_start_takes_env_and_cwd(tmp_path):
    (tmp_path / "note.txt").write_text("cli cwd")
    env = dict(os.environ, TASKMILL_DIR=str(tmp_path / "home"))
    env.pop("TASKMILL_CONNECTION", None)

    def taskmill(*args):
        return subprocess.run([*TASKMILL, *args], capture_output=True, text=True, timeout=120,
                              env=env)

    out = taskmill("cluster", "start", "-n", "1", "--daemon", "--no-dashboard",
                   "--env", "TM_GREETING=hi=there", "--cwd", str(tmp_path))
    assert out.returncode == 0, out.stderr
    try:
        conn = tmp_path / "home" / "profile_default" / "connection.json"
        with TaskClient(conn, timeout=30) as tc:
            cwd, greeting, _, note = tc.submit(where_and_what).result(timeout=60)
        assert os.path.realpath(cwd) == os.path.realpath(tmp_path)
        assert (greeting, note) == ("hi=there", "cli cwd")
    finally:
        taskmill("cluster", "stop")
    bad = taskmill("cluster", "start", "-n", "1", "--env", "NOEQUALS")
    assert bad.returncode != 0 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr
