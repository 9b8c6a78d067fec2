"""Cluster lifecycle and the `taskmill` command, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from systest import TASKMILL, gone, poll

from taskmill import Cluster, ControllerUnreachable, MapTask, TaskClient


def _wait_gone(pids, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return
        time.sleep(0.05)
    raise AssertionError(f"still running: {[p for p in pids if not gone(p)]}")


def test_constructing_starts_nothing_and_stop_is_idempotent():
    c = Cluster(1, heartbeat=0.5)
    assert c.controller_pid is None and c.connection_file is None
    c.stop()  # stopping a cluster never started is fine
    with c:
        pids = [c.controller_pid, *c.engine_pids.values()]
        assert len(pids) == 2
        with c.client() as tc:
            assert tc.run(MapTask(os.getpid), block=True) in c.engine_pids.values()
    c.stop()
    _wait_gone(pids)


def test_engine_properties_and_add_engines():
    with Cluster(2, heartbeat=0.5, engine_properties=[{"role": "a"}, {"role": "b"}]) as c:
        with c.client() as tc:
            roles = sorted(e["properties"]["role"] for e in tc.engines())
            assert roles == ["a", "b"]
            c.add_engines(1, properties={"role": "c", "gpu": 1})
            c.wait_for_engines(3, timeout=60)
            props = {e["properties"]["role"]: e["properties"] for e in tc.engines()}
            assert props["c"]["gpu"] == 1
            for p in props.values():
                assert {"engineid", "hostname", "pid"} <= set(p)
            pid = tc.run(MapTask(os.getpid, depend={"role": "c"}), block=True)
            assert pid == props["c"]["pid"]
            assert set(c.engine_pids.values()) == {p["pid"] for p in props.values()}


def test_nothing_left_running_after_the_owner_is_killed(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import json, sys, time
        from taskmill import Cluster
        c = Cluster(2, heartbeat=0.5).start()
        print(json.dumps([str(c.state_dir), c.controller_pid, *c.engine_pids.values()]),
              flush=True)
        time.sleep(600)
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        state_dir, *pids = json.loads(owner.stdout.readline())
        assert len(pids) == 3 and (Path(state_dir) / "controller.log").exists()
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        _wait_gone(pids)
        # ...and its state directory (logs, connection file, store) does not stay behind.
        poll(lambda: not Path(state_dir).exists(), timeout=30, what="state dir removed")
    finally:
        owner.kill()


def test_nothing_left_running_after_a_normal_exit_without_stop(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import json
        from taskmill import Cluster
        c = Cluster(1, heartbeat=0.5).start()
        print(json.dumps([c.controller_pid, *c.engine_pids.values()]), flush=True)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, check=True)
    _wait_gone(json.loads(out.stdout))


def test_taskmill_run_gives_the_script_a_cluster(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import sys
        from taskmill import TaskClient
        with TaskClient() as tc:
            print(sorted(tc.map(abs, [-1, -2, -3])), len(tc.engines()), sys.argv[1:])
    """))
    out = subprocess.run([*TASKMILL, "run", "-n", "2", str(script), "x", "--flag"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2, 3] 2 ['x', '--flag']"


def test_cluster_start_daemon_status_and_stop(tmp_path):
    env = dict(os.environ, TASKMILL_DIR=str(tmp_path / "home"))
    run = lambda *a: subprocess.run([*TASKMILL, *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120, env=env)
    started = run("cluster", "start", "-n", "2", "--daemon", "--no-dashboard")
    assert started.returncode == 0, started.stderr
    try:
        assert run("cluster", "status").returncode == 0
        state = json.loads((tmp_path / "home" / "profile_default" / "cluster.json").read_text())
        conn = json.loads(open(state["connection_file"]).read())
        assert "dashboard_url" not in conn  # --no-dashboard reached the controller
        assert conn["client_url"].startswith("ipc://")  # the local launcher: unix sockets
        assert conn["engine_url"].startswith("ipc://")
        st = run("status", "--json")
        assert st.returncode == 0, st.stderr
        data = json.loads(st.stdout)
        assert set(data["queue"]) == {"scheduled", "pending", "succeeded", "failed"}
        assert len(data["engines"]) == 2
        assert data["backlog"]["backlog"] == 0 and data["backlog"]["queue_window"] > 0
        assert data["tasks_per_second"] >= 0
        table = run("status")
        assert "engine" in table.stdout and "queue:" in table.stdout
    finally:
        stopped = run("cluster", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert run("cluster", "status").returncode == 1


def test_cluster_status_counts_the_engines_that_run_not_those_asked_for(tmp_path):
    """`cluster status` said "1 engines" (the start's -n) for an adapting cluster whose engine
    had retired (and "0 engines" for one grown from 0): it counts its launcher's running
    engines now, beside what the start asked for."""
    env = dict(os.environ, TASKMILL_DIR=str(tmp_path / "home"))
    run = lambda *a: subprocess.run([*TASKMILL, *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120, env=env)
    started = run("cluster", "start", "-n", "1", "--adapt", "0:1", "--idle-after", "1",
                  "--daemon", "--no-dashboard")
    assert started.returncode == 0, started.stderr
    try:
        def status_line(want: str):
            out = run("cluster", "status")
            first = out.stdout.splitlines()[0] if out.stdout else ""
            return first if want in first else None

        assert poll(lambda: status_line("1 engine running (started with 1)"), 60,
                    "the engine counted")
        poll(lambda: status_line("0 engines running (started with 1)"), 60,
             "the retired engine no longer counted")
    finally:
        stopped = run("cluster", "stop")
    assert stopped.returncode == 0, stopped.stderr


def test_unreachable_controller_is_a_clear_error(tmp_path):
    from taskmill.connection import new_connection_info, write_connection_file

    path = write_connection_file(tmp_path / "c.json", new_connection_info())
    with pytest.raises(ControllerUnreachable) as e:
        TaskClient(path, timeout=0.5)
    msg = str(e.value)
    assert "tcp://127.0.0.1" in msg and str(path) in msg and "taskmill cluster start" in msg
    assert isinstance(e.value, TimeoutError)


def test_status_json_matches_queue_status_and_engines(cluster, client):
    client.map(abs, [-1, -2])

    def status_json():
        before = {"queue": client.queue_status(verbose=False), "engines": client.engines()}
        out = subprocess.run([*TASKMILL, "status", "--json", "--connection-file",
                              str(cluster.connection_file)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        after = {"queue": client.queue_status(verbose=False), "engines": client.engines()}
        # A straggler of an earlier test may change the figures meanwhile: then look again.
        return (json.loads(out.stdout), after) if before == after else None

    data, expected = poll(status_json, 60, "a quiet moment to compare")
    assert {"queue": data["queue"], "engines": data["engines"]} == expected
    assert set(data) == {"queue", "engines", "backlog", "tasks_per_second"}
    assert set(data["backlog"]) == {"backlog", "queued_in_memory", "queue_window"}
    assert data["queue"]["succeeded"] >= 2 and len(data["engines"]) >= 2


def test_status_json_is_one_moment_of_the_controller(cluster, client, monkeypatch, capsys):
    """`taskmill status --json` is read from one statistics() answer: it asked for the queue,
    the engines and the statistics one after another, so a queue could say `pending 2` beside
    engines that were all idle by then (11 of 160 outputs at the end of short bursts)."""
    from taskmill.cli import main

    client.map(abs, [-1, -2])

    def refuse(*args, **kwargs):
        raise AssertionError("a second request: its answer is of another moment")

    monkeypatch.setattr(TaskClient, "queue_status", refuse)
    monkeypatch.setattr(TaskClient, "engines", refuse)
    assert main(["status", "--json", "--connection-file", str(cluster.connection_file)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"queue", "engines", "backlog", "tasks_per_second"}
    assert data["queue"]["succeeded"] >= 2 and len(data["engines"]) >= 2
    monkeypatch.undo()
    assert [sorted(e) for e in data["engines"]] == [sorted(e) for e in client.engines()]


@pytest.mark.timeout(120)
def test_status_watch_says_so_when_the_controller_stops_answering(tmp_path):
    """`taskmill status --watch` against a controller that is stopped (SIGSTOP) says within
    its --timeout that the controller does not answer, and shows the figures again once it
    runs. It waited out the client's reconnect_timeout (120 s), the last table on the screen
    as if it were current."""
    import queue
    import threading

    from systest import controller_process

    with controller_process(tmp_path) as ctl:
        ctl.ready()
        watch = subprocess.Popen(
            [*TASKMILL, "status", "--watch", "0.2", "--timeout", "1", "--connection-file",
             str(ctl.conn)], stdout=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in watch.stdout],
                         daemon=True).start()

        def read_until(predicate, what: str, timeout: float = 30.0) -> str:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise AssertionError(f"no line of the watch said {what}") from None
                if predicate(line):
                    return line

        try:
            read_until(lambda s: s.startswith("queue:"), "the queue")
            os.kill(ctl.proc.pid, signal.SIGSTOP)
            said = read_until(lambda s: s.startswith("taskmill:"), "that nobody answers")
            assert "did not answer within 1s" in said and "stopped" in said
            os.kill(ctl.proc.pid, signal.SIGCONT)
            read_until(lambda s: s.startswith("queue:"), "the queue again")
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0
        finally:
            os.kill(ctl.proc.pid, signal.SIGCONT)
            watch.kill()
            watch.wait()


@pytest.mark.parametrize("which", ["port", "engine_port"])
def test_a_busy_port_is_reported_at_once_with_the_controllers_error(which):
    """The controller cannot bind: start() raises its error line as soon as it exits (before,
    it waited start_timeout for an answer and then blamed a missing controller)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        c = Cluster(1, heartbeat=0.5, start_timeout=30, **{which: port})
        with pytest.raises(RuntimeError, match="the controller exited with status") as e:
            c.start()
    msg = str(e.value)
    assert "cannot listen: Address already in use" in msg and f"127.0.0.1:{port}" in msg, msg
    assert "choose other ports" in msg
    assert c.controller_pid is not None and gone(c.controller_pid)
