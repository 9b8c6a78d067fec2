"""The start path (issue 20, "start: call to 2 engines answering"): what each process leaves
out, and waits that end when their cause does rather than on a poll's timeout. No clock here:
benchmarks/startup_phases.py measures the times."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import taskmill.client.connection as client_connection
from taskmill import TaskClient

pytestmark = pytest.mark.timeout(120, method="thread")


def io_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "taskmill-client-io" and t.is_alive()}


# (Before, close() gave up joining after 2 s and destroyed the sockets under the polling
# thread, which then died of an exception: pytest's warning of it fails the test.)
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_close_wakes_the_io_thread_rather_than_waiting_for_its_poll(cluster, monkeypatch):
    # With the I/O thread's idle poll a minute long, close() still ends it at once, cleanly.
    monkeypatch.setattr(client_connection, "IDLE_POLL_MS", 60_000)
    before = io_threads()
    tc = TaskClient(cluster.connection_file, timeout=30)
    mine = io_threads() - before
    assert len(mine) == 1
    tc.engines()
    tc.close()
    assert not any(t.is_alive() for t in mine)


def test_clients_opened_and_closed_leave_no_file_descriptor_behind(cluster):
    # (Each client has sockets, a ZeroMQ context and the pipe that wakes its I/O thread.)
    TaskClient(cluster.connection_file, timeout=30).close()  # (imports, first-use caches)
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(10):
        tc = TaskClient(cluster.connection_file, timeout=30)
        tc.engines()
        tc.close()
    assert sorted(os.listdir("/proc/self/fd")) == before


def run_python(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_importing_cluster_leaves_the_client_side_for_start(tmp_path):
    # (start() spawns the controller and engines first, then imports the client's side while
    # they start.)
    out = run_python("import sys; from taskmill import Cluster; "
                     "print('taskmill.client' in sys.modules, 'cloudpickle' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_the_controller_listens_before_it_imports_the_scheduler_or_the_dashboard(tmp_path):
    # `taskmill controller` binds its sockets once its store is open, then imports the rest:
    # the sockets' first check of what this process holds stops it there.
    code = """
import sys
import taskmill.controller.sockets as sockets
bind = sockets.ControllerSockets.__init__
def bound(self, *args, **kwargs):
    bind(self, *args, **kwargs)
    print(*(m in sys.modules for m in ("taskmill.scheduler", "taskmill.controller.core",
                                        "taskmill.dashboard", "taskmill.client")))
    self.close()
    raise SystemExit(0)
sockets.ControllerSockets.__init__ = bound
from taskmill.cli import main
main(["controller", "--connection-file", sys.argv[1], "--transport", "ipc"])
"""
    out = run_python(code, str(tmp_path / "conn.json"))
    assert out.split() == ["False", "False", "False", "False"]


def test_starting_the_dashboard_leaves_the_client_side_for_its_first_page(tmp_path):
    # The controller starts its dashboard; the dashboard's own client (and with it the
    # client's side: cloudpickle's function cache, futures, ...) waits for a page to ask.
    code = """
import sys
from pathlib import Path
from taskmill.connection import new_connection_info, write_connection_file
from taskmill.dashboard import start_dashboard
info = new_connection_info()
path = write_connection_file(Path(sys.argv[1]), info)
dashboard = start_dashboard(path, info)
print(dashboard is not None, 'taskmill.client' in sys.modules)
dashboard.stop()
"""
    out = run_python(code, str(tmp_path / "conn.json"))
    assert out.split() == ["True", "False"]


def test_the_controller_does_not_import_the_engines_side(tmp_path):
    # (It watches its owner's lifeline as engines do: lifeline.py, not the engine package.)
    # Its last step before its loop, the watch, reports what the process holds.
    code = """
import sys
import taskmill.lifeline as lifeline
def watch(fd, on_exit):
    print(*(m in sys.modules for m in ("taskmill.controller.loop", "taskmill.engine",
                                        "taskmill.client")))
    raise SystemExit(0)
lifeline.watch_parent = watch
from taskmill.cli import main
main(["controller", "--connection-file", sys.argv[1], "--transport", "ipc", "--parent-fd", "0"])
"""
    out = run_python(code, str(tmp_path / "conn.json"))
    assert out.split() == ["True", "False", "False"]


def test_a_cluster_spawns_its_controller_before_it_imports_zeromq(tmp_path):
    # (The process that starts a cluster needs ZeroMQ only for its client, which it makes
    # while the controller starts; the unix socket path limit is known without it.)
    code = """
import sys
import taskmill.cluster as cluster
def spawn(*args, **kwargs):
    print("zmq" in sys.modules, "taskmill.client" in sys.modules)
    raise SystemExit(0)
cluster.spawn = spawn
cluster.Cluster(1).start()
"""
    out = run_python(code)
    assert out.split() == ["False", "False"]


@pytest.mark.timeout(120, method="thread")
def test_a_start_whose_engines_cannot_start_fails_once_they_are_all_gone(tmp_path):
    """Engines whose Python cannot start (a bad PYTHONHOME): the start waited out its whole
    timeout although every engine had exited. It ends once they all have, restarts used up,
    naming why (here the timeout is 600 s, past this test's own)."""
    from taskmill import Cluster

    c = Cluster(2, env={"PYTHONHOME": "/nonexistent"}, start_timeout=600, dashboard=False,
                db=":memory:", max_restarts=3)
    with pytest.raises(RuntimeError, match="every engine process exited") as e:
        c.start()
    assert "3 restarts" in str(e.value) and "engine-" in str(e.value)
    assert c.controller_returncode is not None  # (stopped with the rest)


@pytest.mark.timeout(60)
def test_a_start_whose_location_does_not_lead_to_the_controller_names_that_address():
    """(It said only that the controller did not answer, with an empty log.)"""
    from taskmill import Cluster, ControllerUnreachable

    c = Cluster(1, transport="tcp", ip="127.0.0.1", location="127.0.0.2", start_timeout=3,
                dashboard=False, db=":memory:")
    with pytest.raises(ControllerUnreachable, match=r"did not answer at tcp://127\.0\.0\.2:\d+ "
                       r"within 3s \(that address, the cluster's location, must lead"):
        c.start()
