"""A map that ends early aborts its tasks (SPEC.md §4): Ctrl-C (a real SIGINT to a script, or
one raised at a chosen moment: inside the submit's send, between two steps of the map), a
`timeout=`, an asyncio cancel. Each test waits, with a deadline, until the controller has no
task queued or running; a test that fails aborts what it left, so that the next test starts
from an empty queue (the cluster is shared by the module).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time

import pytest
from systest import wait_until

from taskmill import AsyncTaskClient, Cluster, MapTask, TaskClient

pytestmark = pytest.mark.timeout(120, method="thread")


def slow(x, seconds=60.0):
    import time

    time.sleep(seconds)
    return x


SCRIPT = """
import sys, time
from taskmill import MapTask, TaskClient

def slow(x):
    time.sleep(60)
    return x

tc = TaskClient(sys.argv[1])
verb = sys.argv[2]
if verb == "map":
    tc.map(slow, range(8), chunksize=1)
elif verb == "options.map":
    tc.options(retries=1).map(slow, range(8))
elif verb == "mapper().map":
    tc.mapper().map(slow, range(8))
elif verb == "parallel":
    tc.parallel()(slow)(range(8))
elif verb == "run_all":
    tc.run_all(MapTask(slow, (1,)))
print("the map returned", flush=True)
"""


@pytest.fixture(scope="module")
def own_cluster():
    with Cluster(2, heartbeat=0.5, unmet_timeout=2.0) as c:
        yield c


def queue_empty(tc: TaskClient) -> bool:
    q = tc.queue_status()
    return q["scheduled"] == 0 and q["pending"] == 0


@pytest.fixture(autouse=True)
def nothing_left(own_cluster):
    """After each test, abort whatever it left queued or running (after a failure: the tests
    share the cluster, and a 60 s task left behind would fail the next one too)."""
    yield
    with own_cluster.client() as tc:
        if queue_empty(tc):
            return
        for t in range(tc.statistics()["submitted"] + 1):
            if tc.task_info(t)["state"] in ("scheduled", "pending"):
                with contextlib.suppress(Exception):  # (it may have just finished)
                    tc.abort(t)
        wait_until(lambda: queue_empty(tc), "the leftovers to be aborted", 30)


@pytest.mark.parametrize("verb", ["map", "options.map", "mapper().map", "parallel", "run_all"])
def test_ctrl_c_during_a_blocking_map_aborts_its_tasks(own_cluster, tmp_path, verb):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    with own_cluster.client() as tc:
        assert queue_empty(tc)
        proc = subprocess.Popen([sys.executable, str(script), str(own_cluster.connection_file),
                                 verb], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: tc.queue_status()["pending"] >= 1, "the map's tasks to run", 30)
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                # CPython drops a KeyboardInterrupt that its handler raises inside a weakref
                # callback ("Exception ignored in ... _get_module_lock"): press Ctrl-C again,
                # as a user would.
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert b"KeyboardInterrupt" in err and b"the map returned" not in out, err
        wait_until(lambda: queue_empty(tc), "the map's tasks to be aborted", 15)
        assert tc.queue_status()["failed"] >= 1  # (they finished as aborted)


INTERRUPTED_SEND = """
import signal, sys, time
import taskmill.client.connection as connection
from taskmill import TaskClient

def slow(x):
    time.sleep(60)
    return x

real_send = connection.send_message
def send_then_ctrl_c(sock, msg):  # Ctrl-C lands just as the submit has left
    real_send(sock, msg)
    if any(b"submit" in bytes(part)[:200] for part in msg[:1]):
        connection.send_message = real_send
        signal.raise_signal(signal.SIGINT)
connection.send_message = send_then_ctrl_c

tc = TaskClient(sys.argv[1])
try:
    tc.map(slow, range(8), chunksize=1)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def interrupted_map_aborts_its_8_tasks(cluster, tmp_path, script_text: str) -> None:
    """Run a script whose map of 8 tasks is interrupted (it prints "interrupted"): its submit
    had left, and its 8 tasks end aborted."""
    script = tmp_path / "script.py"
    script.write_text(script_text)
    with cluster.client() as tc:
        assert queue_empty(tc)
        before = tc.statistics()["submitted"], tc.queue_status()["failed"]
        proc = subprocess.run([sys.executable, str(script), str(cluster.connection_file)],
                              capture_output=True, timeout=60)
        assert b"interrupted" in proc.stdout, proc.stderr[-3000:]
        assert tc.statistics()["submitted"] == before[0] + 8  # the submit had left
        wait_until(lambda: queue_empty(tc), "the map's tasks to be aborted", 15)
        assert tc.queue_status()["failed"] == before[1] + 8  # (finished as aborted)


def test_ctrl_c_just_as_a_map_is_sent_still_aborts_its_tasks(own_cluster, tmp_path):
    """The interruption lands inside the send of the map's submit (before the map has its
    futures): the send completes, then KeyboardInterrupt, and the tasks are aborted."""
    interrupted_map_aborts_its_8_tasks(own_cluster, tmp_path, INTERRUPTED_SEND)


BETWEEN_STEPS = """
import sys, time
import taskmill.client.backend as backend
from taskmill import TaskClient

def slow(x):
    time.sleep(60)
    return x

# Ctrl-C lands in the blocking loop's own code right after the submit was answered, before
# the map has its taskids (where a real SIGINT sometimes landed): the first line that loop
# runs next raises KeyboardInterrupt, as a signal handler would.
real_perform = backend.Backend.perform
armed = []
def perform(self, step, *rest):
    value = real_perform(self, step, *rest)
    if getattr(step, "header", {}).get("type") == "submit":
        armed.append(True)
    return value
backend.Backend.perform = perform

def trace(frame, event, arg):
    if frame.f_code is not backend.Backend.stream.__code__:
        return None
    def line(frame, event, arg):
        if event == "line" and armed:
            armed.clear()
            raise KeyboardInterrupt
        return line
    return line
sys.settrace(trace)

tc = TaskClient(sys.argv[1])
try:
    tc.mapper().map(slow, range(8))
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_between_two_steps_of_a_map_still_aborts_its_tasks(own_cluster, tmp_path):
    """The interruption lands after the submit's reply was read, in the loop that carries the
    map's steps out, not in a wait: the map still learns its taskids and aborts them."""
    interrupted_map_aborts_its_8_tasks(own_cluster, tmp_path, BETWEEN_STEPS)


def test_a_map_that_times_out_aborts_its_tasks(own_cluster):
    with own_cluster.client() as tc:
        with pytest.raises(TimeoutError, match="aborted"):
            tc.map(slow, range(6), chunksize=1, timeout=0.5)
        wait_until(lambda: queue_empty(tc), "the map's tasks to be aborted", 15)
        with pytest.raises(TimeoutError):
            tc.mapper().map(slow, range(6), timeout=0.5)
        wait_until(lambda: queue_empty(tc), "the seed mapper's tasks to be aborted", 15)
        with pytest.raises(TimeoutError):
            tc.run_all(MapTask(slow, (1,)), timeout=0.5)
        wait_until(lambda: queue_empty(tc), "run_all's tasks to be aborted", 15)
        assert tc.map(abs, [-1, -2], timeout=60) == [1, 2]  # the engines survived


def test_cancelling_an_async_map_aborts_its_tasks(own_cluster):
    async def main() -> None:
        async with AsyncTaskClient(own_cluster.connection_file) as atc:
            for start in (lambda: atc.map(slow, range(6), chunksize=1),
                          lambda: atc.run_all(MapTask(slow, (1,)))):
                task = asyncio.create_task(start())
                deadline = time.monotonic() + 30
                while (await atc.queue_status())["pending"] < 1:
                    assert time.monotonic() < deadline, "the map's tasks never ran"
                    await asyncio.sleep(0.01)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                deadline = time.monotonic() + 15
                while True:
                    q = await atc.queue_status()
                    if q["scheduled"] == 0 and q["pending"] == 0:
                        break
                    assert time.monotonic() < deadline, f"tasks left after the cancel: {q}"
                    await asyncio.sleep(0.01)
            with pytest.raises(TimeoutError, match="aborted"):
                await atc.map(slow, range(4), chunksize=1, timeout=0.3)
        with own_cluster.client() as tc:
            wait_until(lambda: queue_empty(tc), "the timed-out map's tasks to be aborted", 15)

    asyncio.run(main())


def test_wait_and_barrier_leave_tasks_they_did_not_submit_alone(own_cluster):
    with own_cluster.client() as tc:
        fut = tc.submit(slow, 3, 0.5)
        wait_until(lambda: tc.queue_status()["pending"] >= 1, "the task to run", 30)
        with pytest.raises(TimeoutError):
            tc.barrier(fut, timeout=0.05)
        with pytest.raises(TimeoutError):
            tc.wait([fut], timeout=0.05)
        assert fut.result(timeout=60) == 3


def test_a_map_timing_out_while_the_controller_is_stopped_aborts_its_tasks_once_it_resumes(
        tmp_path):
    """With the controller stopped (SIGSTOP, a slow restart), a map's timeout came 10 s late
    (the abort waited for an answer), and the tasks whose submit was not answered yet were
    never aborted: once the controller resumed they ran. The abort waits little for a silent
    controller now, and the rest are aborted once their taskids come."""
    import os

    from systest import controller_process, poll

    with controller_process(tmp_path, engines=2) as ctl, TaskClient(ctl.conn, timeout=30) as tc:
        wait_until(lambda: len(tc.engines()) == 2, "two engines")
        busy = [tc.submit(slow, i) for i in range(2)]  # (both engines busy: the map waits)
        assert [f.taskid for f in busy] == [0, 1]
        os.kill(ctl.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError):
                tc.map(slow, range(4), chunksize=1, timeout=1)
        finally:
            os.kill(ctl.proc.pid, signal.SIGCONT)

        def the_maps_tasks_aborted() -> bool:
            q = tc.queue_status(verbose=True)
            left = [t for t in q["scheduled"] + q["pending"] if t >= 2]
            return not left and len(q["failed"]) == 4

        poll(the_maps_tasks_aborted, 60, "the map's 4 tasks to be aborted")
        for f in busy:
            tc.abort(f.taskid)
