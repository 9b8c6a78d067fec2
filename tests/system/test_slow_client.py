"""A client that stops reading its results: they wait in the controller's store, not in its
socket queues, and every future resolves once when the client reads again.

The client is a real process, stopped with SIGSTOP while 20,000 results of 1 kB stream to it:
the controller sends at most its window of them (controller/credit.py) and holds the rest as
taskids, which `statistics()` shows. The client stays stopped past the transport heartbeat's
timeout, so the client, resumed, may find its connections silent too long and open new ones,
dropping what was on its way: it sees that results were lost and gets them again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from systest import ControllerProcess, poll

from taskmill import Cluster, TaskClient
from taskmill.defaults import RESULTS_WINDOW, RESULTS_WINDOW_BYTES
from taskmill.wire import TRANSPORT_TIMEOUT_MS

N = 20_000
PAYLOAD = 1024

CLIENT = """
import collections, os, sys, threading, time
from taskmill import TaskClient

def payload(i, gate):
    import os, time
    while not os.path.exists(gate):
        time.sleep(0.005)
    return bytes([i % 251]) * PAYLOAD

conn, gate, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
# (a controller restart is ridden out: the client sends its submits again, and the new
# controller streams every result that this client has not taken in)
calls = collections.Counter()
lock = threading.Lock()
def note(i):
    def called(f):
        with lock:
            calls[i] += 1
    return called
with TaskClient(conn, timeout=30) as tc:
    futs = [tc.submit(payload, i, gate) for i in range(n)]
    for i, f in enumerate(futs):
        f.add_done_callback(note(i))
    tids = [f.taskid for f in futs]
    print("submitted", flush=True)
    right = sum(f.result(timeout=300) == bytes([i % 251]) * PAYLOAD
                for i, f in enumerate(futs))
    # (callbacks run on the client's callbacks thread: the last ones may come just after)
    deadline = time.monotonic() + 60
    while len(calls) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    with lock:
        once = sum(calls[i] == 1 for i in range(n))
    print("right", right, "once", once, "distinct", len(set(tids)), flush=True)
""".replace("PAYLOAD", str(PAYLOAD))


@pytest.fixture(scope="module")
def own_cluster():
    with Cluster(2, heartbeat=0.5) as c:
        yield c


def is_stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP is delivered asynchronously)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def streamed(stats: dict) -> tuple[int, int, int, int]:
    return (stats["results_in_flight_to_clients"], stats["result_bytes_in_flight_to_clients"],
            stats["results_held_for_clients"], stats["results_in_memory_for_clients"])


def test_a_stopped_client_holds_at_most_a_window_and_gets_every_result_once(own_cluster,
                                                                            tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    gate = tmp_path / "gate"
    with own_cluster.client() as tc:
        finished = tc.statistics()["finished"]
        proc = subprocess.Popen(
            [sys.executable, str(script), str(own_cluster.connection_file), str(gate), str(N)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline() == "submitted\n", proc.stderr.read()
            os.kill(proc.pid, signal.SIGSTOP)
            poll(lambda: is_stopped(proc.pid), 10, "the client to stop")
            gate.touch()  # the tasks run, and their results pile up for a client not reading
            most = (0, 0, 0, 0)
            stopped = time.monotonic()
            settled = None

            def all_finished_and_observed() -> bool:
                nonlocal most, settled
                stats = tc.statistics()
                now = streamed(stats)
                most = tuple(map(max, most, now))
                assert now[0] <= RESULTS_WINDOW and now[3] <= RESULTS_WINDOW, now
                assert now[1] <= RESULTS_WINDOW_BYTES, now
                if stats["finished"] - finished < N:
                    return False
                settled = settled or now
                # Past the transport heartbeat's timeout: the resumed client may open new
                # connections, and what was on its way is sent again.
                return time.monotonic() - stopped > 1.5 * TRANSPORT_TIMEOUT_MS / 1000

            poll(all_finished_and_observed, 240, "the tasks to finish while the client is stopped")
            in_flight, _, held, _ = settled
            assert in_flight > 0 and in_flight + held == N, settled
            assert held >= N - RESULTS_WINDOW, settled  # waiting in the store, as taskids
        finally:
            gate.touch()  # (whatever failed: the engines must not wait on it for ever)
            os.kill(proc.pid, signal.SIGCONT)
        try:
            out, err = proc.communicate(timeout=240)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert out.split() == ["right", str(N), "once", str(N), "distinct", str(N)], (out, err)
        stats = tc.statistics()
        assert streamed(stats)[2:] == (0, 0)  # nothing waits for it any more
        print("sent again", stats["results_sent_again_to_clients"])


def gated(i, gate):
    import os
    import time

    while not os.path.exists(gate):
        time.sleep(0.005)
    return i


def test_a_client_that_closes_with_watches_unfinished_leaves_nothing_held(own_cluster,
                                                                          tmp_path):
    gate = tmp_path / "gate"
    n = RESULTS_WINDOW + RESULTS_WINDOW // 2  # (more than a window: some would wait)
    with own_cluster.client() as tc:
        finished = tc.statistics()["finished"]
        leaving = own_cluster.client()
        futs = [leaving.submit(gated, i, str(gate)) for i in range(n)]
        assert len({f.taskid for f in futs}) == n
        leaving.close()  # its `bye`: nothing is kept for it
        gate.touch()
        poll(lambda: tc.statistics()["finished"] - finished >= n, 120, "the tasks to finish")
        assert streamed(tc.statistics()) == (0, 0, 0, 0)


@pytest.mark.timeout(300)
def test_results_held_for_a_stopped_client_reach_it_after_a_controller_restart(tmp_path):
    """The controller is killed (kill -9) while it holds a stopped client's results in its
    store; started again, it streams them to the client, which gets every one once."""
    n = 3 * RESULTS_WINDOW
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    gate = tmp_path / "gate"
    ctl = ControllerProcess(tmp_path)
    ctl.start()
    engines = [ctl.engine(), ctl.engine()]
    proc = None
    try:
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: len(tc.engines()) == 2, 60, "two engines")
        proc = subprocess.Popen([sys.executable, str(script), str(ctl.conn), str(gate), str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "submitted\n", proc.stderr.read()
        os.kill(proc.pid, signal.SIGSTOP)
        poll(lambda: is_stopped(proc.pid), 10, "the client to stop")
        gate.touch()
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.queue_status()["succeeded"] == n, 120, "the tasks to finish")
            held = streamed(tc.statistics())[2]
            assert held >= n - RESULTS_WINDOW
        ctl.kill9()
        ctl.start()
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert out.split() == ["right", str(n), "once", str(n), "distinct", str(n)], (out, err)
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        for e in engines:
            e.kill()
        ctl.stop()
