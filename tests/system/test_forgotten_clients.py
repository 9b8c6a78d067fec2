"""A client that vanishes without its `bye` (kill -9), or is stopped past the controller's
`--forget-clients-after`, with real processes (controller/clients.py, client/connection.py).

- kill -9: the controller forgets the client once it has been silent for the bound (its
  watches, its blocking request, the results that would have streamed to it), as its
  statistics show; its tasks still finish, and another client fetches their results.
- SIGSTOP past the bound, then SIGCONT: the client is told it was forgotten, so its futures and
  its blocked call fail with ClientForgotten (not a hang), and its later calls work (under new
  connections): it fetches the results of those tasks by taskid, and a new future resolves.
  The same for an AsyncTaskClient: its futures and its awaited blocking call raise it.
- The bound given to `Cluster(forget_clients_after=)` or `taskmill cluster start
  --forget-clients-after` is the controller's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from systest import TASKMILL, controller_process, poll

from taskmill import Cluster, TaskClient

pytestmark = pytest.mark.timeout(180, method="thread")

BOUND = 2.0  # the controller's --forget-clients-after in these tests (seconds)
N = 2000

CLIENT = """
import os, sys, threading, time
from taskmill import TaskClient

def gated(i, gate):
    import os, time
    end = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.005)
    return i * i

conn, gate, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tc = TaskClient(conn, timeout=30)
futs = [tc.submit(gated, i, gate) for i in range(n)]
tids = [f.taskid for f in futs]
box = []

def blocking():
    try:
        box.append(tc.get_task_result(tids[-1], block=True, timeout=60))
    except BaseException as e:
        box.append(e)

waiting = tc.statistics().get("requests_waiting", 0)
threading.Thread(target=blocking, daemon=True).start()
end = time.monotonic() + 30  # (until the controller holds the blocked request too)
while tc.statistics().get("requests_waiting", 0) <= waiting and time.monotonic() < end:
    time.sleep(0.01)
print("ready", tids[0], tids[-1], flush=True)
# (the test kills or stops this process here)
errors = sorted({type(f.exception(timeout=60)).__name__ for f in futs})
end = time.monotonic() + 60
while not box and time.monotonic() < end:
    time.sleep(0.01)
print("futures", *errors, flush=True)
print("blocking", type(box[0]).__name__ if box else "still-blocked", flush=True)
open(gate, "w").close()
print("after", tc.get_task_result(tids[3], block=True, timeout=60), flush=True)
print("new", tc.submit(gated, 5, gate).result(timeout=60), flush=True)
tc.close()
"""


def start_client(tmp_path, conn, source: str = CLIENT,
                 n: int = N) -> tuple[subprocess.Popen, str, list[int]]:
    script = tmp_path / "client.py"
    script.write_text(source)
    gate = str(tmp_path / "gate")
    proc = subprocess.Popen([sys.executable, str(script), str(conn), gate, str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line[:1] == ["ready"], proc.communicate(timeout=60)
    first, last = int(line[1]), int(line[2])
    return proc, gate, list(range(first, last + 1))


def kept(stats: dict) -> tuple[int, ...]:
    """What the controller keeps for clients: clients, their watching ones, their requests
    waiting for tasks, results in flight to them or held for them."""
    return (stats["clients"], stats["clients_watching"], stats["requests_waiting"],
            stats["results_in_flight_to_clients"], stats["results_held_for_clients"])


@pytest.fixture
def ctl(tmp_path):
    with controller_process(tmp_path, engines=1,
                            args=("--forget-clients-after", f"{BOUND:g}")) as c:
        yield c


def test_a_killed_client_is_forgotten_and_its_tasks_finish_for_others(ctl, tmp_path):
    with TaskClient(ctl.conn, timeout=60) as tc:
        poll(lambda: tc.engines(), 60, "the engine to register")
        proc, gate, tids = start_client(tmp_path, ctl.conn)
        try:
            stats = tc.statistics()
            assert len(tids) == N and stats["clients"] == 2 and stats["clients_watching"] == 1
            assert stats["requests_waiting"] >= 2  # its watches and its blocked request
            proc.kill()  # kill -9: no `bye`
            proc.wait(30)
            poll(lambda: tc.statistics()["clients_forgotten"] == 1, 60,
                 "the killed client to be forgotten")
            assert kept(tc.statistics()) == (1, 0, 0, 0, 0)  # only this client is left
        finally:
            open(gate, "w").close()
            proc.kill()
            proc.communicate(timeout=30)
        tc.barrier(tids, timeout=120)  # they ran on
        assert tc.queue_status()["succeeded"] == N
        assert [tc.get_task_result(t) for t in tids[:3]] == [0, 1, 4]
        assert tc.get_task_result(tids[-1]) == (N - 1) ** 2
        # Nothing of theirs was queued for the dead client.
        assert kept(tc.statistics()) == (1, 0, 0, 0, 0)


def is_stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def stopped_past_the_bound(tc: TaskClient, proc, gate) -> tuple[str, str]:
    """SIGSTOP the client process `proc` until the controller has forgotten it (and kept
    nothing for it), then SIGCONT it and return its output once it ends (its tasks' `gate`
    opened, and the process killed, whatever happens)."""
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        poll(lambda: is_stopped(proc.pid), 10, "the client to stop")
        poll(lambda: tc.statistics()["clients_forgotten"] == 1, 60,
             "the stopped client to be forgotten")
        assert kept(tc.statistics())[:3] == (1, 0, 0)
        os.kill(proc.pid, signal.SIGCONT)
        return proc.communicate(timeout=120)
    finally:
        open(gate, "w").close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()


def test_a_client_stopped_past_the_bound_is_told_it_was_forgotten(ctl, tmp_path):
    with TaskClient(ctl.conn, timeout=60) as tc:
        poll(lambda: tc.engines(), 60, "the engine to register")
        proc, gate, tids = start_client(tmp_path, ctl.conn)
        out, err = stopped_past_the_bound(tc, proc, gate)
        assert proc.returncode == 0, err
        assert out.splitlines() == ["futures ClientForgotten", "blocking ClientForgotten",
                                    "after 9", "new 25"], (out, err)
        assert "forgot this client" in err  # (its log says what happened)
        stats = tc.statistics()
        assert stats["clients"] == 1 and stats["refused"].get("forgotten-client", 0) >= 1


ASYNC_CLIENT = """
import asyncio, os, sys, time
from taskmill import AsyncTaskClient

def gated(i, gate):
    import os, time
    end = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.005)
    return i * i

async def main(conn, gate, n):
    async with AsyncTaskClient(conn, timeout=30) as tc:
        futs = [tc.submit(gated, i, gate) for i in range(n)]
        tids = [f.taskid for f in futs]
        waiting = (await tc.statistics()).get("requests_waiting", 0)
        blocked = asyncio.ensure_future(tc.get_task_result(tids[-1], block=True, timeout=60))
        end = time.monotonic() + 30  # (until the controller holds the awaited request too)
        while (await tc.statistics()).get("requests_waiting", 0) <= waiting \\
                and time.monotonic() < end:
            await asyncio.sleep(0.01)
        print("ready", tids[0], tids[-1], flush=True)
        # (the test stops this process here, past the bound, and lets it go on)
        got = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 60)
        print("futures", *sorted({type(r).__name__ for r in got}), flush=True)
        try:
            print("awaited", await asyncio.wait_for(blocked, 60), flush=True)
        except Exception as e:
            print("awaited", type(e).__name__, flush=True)
        open(gate, "w").close()
        print("after", await tc.get_task_result(tids[3], block=True, timeout=60), flush=True)
        print("new", await asyncio.wait_for(tc.submit(gated, 5, gate), 60), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_an_async_client_stopped_past_the_bound_is_told_it_was_forgotten(ctl, tmp_path):
    """The same with AsyncTaskClient: its futures and its awaited blocking call raise
    ClientForgotten once it runs again, and its later calls work."""
    with TaskClient(ctl.conn, timeout=60) as tc:
        poll(lambda: tc.engines(), 60, "the engine to register")
        proc, gate, tids = start_client(tmp_path, ctl.conn, ASYNC_CLIENT, n=200)
        out, err = stopped_past_the_bound(tc, proc, gate)
        assert proc.returncode == 0, err
        assert out.splitlines() == ["futures ClientForgotten", "awaited ClientForgotten",
                                    "after 9", "new 25"], (out, err)
        assert len(tids) == 200 and "forgot this client" in err


def a_killed_client_is_forgotten(conn) -> None:
    """A client process connects and is killed (-9: no `bye`); the controller forgets it
    within a minute (only with a bound well below the default of 300 s)."""
    with TaskClient(conn, timeout=60) as tc:
        clients = tc.statistics()["clients"]  # (this one, and a Cluster's own)
        proc = subprocess.Popen([sys.executable, "-c", (
            "import sys, time; from taskmill import TaskClient; tc = TaskClient(sys.argv[1]); "
            "print('ready', flush=True); time.sleep(600)"), str(conn)],
            stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline() == "ready\n"
            assert tc.statistics()["clients"] == clients + 1
        finally:
            proc.kill()
            proc.communicate(timeout=30)
        poll(lambda: tc.statistics()["clients_forgotten"] == 1, 60,
             "the killed client to be forgotten")


def test_a_cluster_hands_its_forget_bound_to_the_controller():
    with Cluster(0, forget_clients_after=BOUND, dashboard=False, db=":memory:") as c:
        a_killed_client_is_forgotten(c.connection_file)


def test_cluster_start_hands_its_forget_bound_to_the_controller(tmp_path):
    env = dict(os.environ, TASKMILL_DIR=str(tmp_path / "home"))
    run = lambda *a: subprocess.run([*TASKMILL, *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120, env=env)
    started = run("cluster", "start", "-n", "0", "--daemon", "--no-dashboard", "--db",
                  ":memory:", "--forget-clients-after", f"{BOUND:g}")
    assert started.returncode == 0, started.stderr
    try:
        a_killed_client_is_forgotten(tmp_path / "home" / "profile_default" / "connection.json")
    finally:
        assert run("cluster", "stop").returncode == 0
