"""run() without a round trip: taskids from a lease, tasks sent in batches (client/runs.py,
controller/leases.py).

What a user can see: one client's ids rise by 1 whatever it calls; a run's task reads as
unfinished to every client at once, and is stored once another call of its client returns (or
within a moment by itself); a client killed before its task was sent leaves an id that reads
as unknown, never runs and is never given out again; a controller killed with a lease out
never gives those ids again; a batch the controller refuses is raised by the next call.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest
from systest import controller_process, controller_thread, poll

import taskmill
from taskmill import AsyncTaskClient, MapTask, RunNotStored, StoreError, TaskClient

pytestmark = pytest.mark.timeout(180, method="thread")


def test_one_clients_ids_rise_by_one_whatever_it_calls():
    with taskmill.Cluster(1, heartbeat=0.5, db=":memory:") as c, c.client() as tc:
        ids = [tc.run(MapTask(abs, (-1,))), tc.run(MapTask(abs, (-2,)))]
        ids.append(tc.submit(abs, -3).taskid)
        ids.append(tc.run(MapTask(abs, (-4,))))
        ids.extend(tc.mapper(block=False).map(abs, [-5, -6]))
        ids.append(tc.run(MapTask(abs, (-7,))))
        ids.append(tc.put(8).taskid)
        ids.append(tc.run(MapTask(abs, (-9,))))
        assert ids == list(range(9))
        assert [tc.get_task_result(t, block=True) for t in ids if t != 7] == \
            [1, 2, 3, 4, 5, 6, 7, 9]


def test_threads_of_one_client_that_run_and_read_get_their_own_ids_and_results(cluster):
    """Two threads share one client, each looping run() then get_task_result() (which gives
    the rest of the lease back). Before, their lease requests crossed: one taskid went to two
    tasks (one read the other's result), and others were refused as off the lease."""
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def loop(tc: TaskClient, k: int) -> None:
        try:
            start.wait(30)
            for i in range(40):
                v = 1000 * k + i
                tid = tc.run(MapTask(abs, (-v,)))
                got.setdefault(tid, []).append(v)
                tc.get_task_result(tid)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with cluster.client() as tc:
        threads = [threading.Thread(target=loop, args=(tc, k)) for k in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert sum(map(len, got.values())) == 80
        assert {t: vs for t, vs in got.items() if len(vs) > 1} == {}
        tc.barrier(list(got))
        assert {t: tc.get_task_result(t) for t in got} == {t: vs[0] for t, vs in got.items()}


def test_coroutines_of_one_async_client_that_run_and_read_get_their_own_ids(cluster):
    """The same on the asyncio front: three coroutines on one loop (before: RunNotStored)."""
    async def loop(atc: AsyncTaskClient, k: int) -> list[tuple[int, int]]:
        out = []
        for i in range(30):
            tid = await atc.run(MapTask(abs, (-(1000 * k + i),)))
            out.append((tid, 1000 * k + i))
            await atc.get_task_result(tid)
        return out

    async def main() -> list[tuple[int, int]]:
        async with AsyncTaskClient(cluster.connection_file) as atc:
            got = [p for ps in await asyncio.wait_for(
                asyncio.gather(*(loop(atc, k) for k in (1, 2, 3))), 120) for p in ps]
            await atc.barrier([t for t, _ in got])
            return [(t, await atc.get_task_result(t)) for t, _ in got] + got

    pairs = asyncio.run(main())
    read, ran = pairs[:90], pairs[90:]
    assert len({t for t, _ in ran}) == 90 and read == ran


def test_a_runs_task_reads_as_unfinished_at_once_and_is_seen_by_others(cluster, client):
    with cluster.client() as other:
        tid = client.run(MapTask(abs, (-5,)))
        assert other.get_task_result(tid) in (None, 5)  # never unknown, even before it is sent
        poll(lambda: other.task_info(tid)["state"] != "unknown", 10, "the task to be stored")
        assert other.get_task_result(tid, block=True) == 5
        tids = [client.run(MapTask(abs, (-i,))) for i in range(50)]
        client.queue_status()  # another call of the client: every task it ran is stored now
        assert all(other.task_info(t)["state"] != "unknown" for t in tids)
        other.barrier(tids)
        assert [client.get_task_result(t) for t in tids] == list(range(50))


def test_async_run_takes_leased_ids_too(cluster):
    async def main():
        async with AsyncTaskClient(cluster.connection_file) as atc:
            tids = [await atc.run(MapTask(abs, (-i,))) for i in range(5)]
            assert tids == list(range(tids[0], tids[0] + 5))
            await atc.barrier(tids)
            return [await atc.get_task_result(t) for t in tids], await atc.run(
                MapTask(abs, (-7,)), block=True)

    assert asyncio.run(main()) == ([0, 1, 2, 3, 4], 7)


KILLED_CLIENT = textwrap.dedent("""
    import os, signal, sys
    from concurrent.futures import Future
    from taskmill import MapTask, TaskClient
    def append_line(path, text):
        with open(path, "a") as f:
            f.write(text + "\\n")
    tc = TaskClient(sys.argv[1])
    conn = tc.backend.connection
    send = conn.send
    def never_submit(header, frames=(), stream=None):
        # (dies before its run() task leaves: as a kill -9 between run() and the send)
        return Future() if header["type"] == "submit" else send(header, frames, stream)
    conn.send = never_submit
    print(tc.run(MapTask(append_line, (sys.argv[2], "ran"))), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_client_killed_before_its_task_was_sent_leaves_an_unknown_id(cluster, client,
                                                                       tmp_path):
    ran = tmp_path / "ran.txt"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_CLIENT, str(cluster.connection_file), str(ran)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    tid = int(proc.stdout.split()[0])
    assert client.get_task_result(tid) is None  # unfinished: its lease lasts a while yet

    def unknown() -> bool:  # (unfinished while the lease holds: until its holder is silent)
        try:
            client.get_task_result(tid)
        except IndexError:
            return True
        return False

    poll(unknown, 60, "the dead client's id to read as unknown")
    client.barrier([tid])  # (an unknown id: no wait)
    new = client.run(MapTask(abs, (-1,)))
    assert new > tid  # never given out again
    assert client.get_task_result(new, block=True) == 1
    with pytest.raises(IndexError):
        client.get_task_result(tid, block=True)
    assert not ran.exists()  # it never ran


def test_a_controller_killed_with_a_lease_out_never_gives_its_ids_again(tmp_path, keep_leases):
    with controller_process(tmp_path, engines=1) as ctl:
        tc = TaskClient(ctl.conn, timeout=30)
        other = TaskClient(ctl.conn, timeout=30)
        try:
            tids = [tc.run(MapTask(abs, (-i,))) for i in range(3)]
            # Stored (seen by another client), while tc keeps its lease: tc makes no call.
            poll(lambda: all(other.task_info(t)["state"] != "unknown" for t in tids), 30,
                 "the tasks to be stored")
            ctl.kill9()
            ctl.start()
            poll(lambda: _answers(other), 60, "the restarted controller")
            late = other.run(MapTask(abs, (-10,)))
            assert late >= tids[-1] + 2  # beyond the lease tc held (its ids were leased)
            poll(lambda: _answers(tc), 60, "the client to hear the restart")
            again = [tc.run(MapTask(abs, (-i,))) for i in range(3)]
            everyone = [*tids, late, *again]
            assert len(set(everyone)) == len(everyone), everyone  # no id given twice
            assert [tc.get_task_result(t, block=True) for t in everyone] == [0, 1, 2, 10,
                                                                             0, 1, 2]
        finally:
            tc.close()
            other.close()


def _answers(tc: TaskClient) -> bool:
    try:
        tc.queue_status()
    except (taskmill.ControllerUnreachable, RunNotStored):
        return False
    return True


def test_a_refused_batch_is_raised_by_the_next_call_naming_its_taskids(tmp_path):
    with controller_process(tmp_path, engines=1) as ctl:
        tc = TaskClient(ctl.conn, timeout=30)
        other = TaskClient(ctl.conn, timeout=30)
        try:
            first = tc.run(MapTask(abs, (-1,)))  # (takes a lease, which tc keeps: no call)
            poll(lambda: other.task_info(first)["state"] == "succeeded", 30, "the first task")
            locker = sqlite3.connect(ctl.db, isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")  # the store cannot write
            try:
                tid = tc.run(MapTask(abs, (-2,)))  # (from the lease: no round trip, no error)
                # (the first goes at once, alone; this one in a batch of its own, after it)
                tid2 = tc.run(MapTask(abs, (-2,)))
                with pytest.raises(RunNotStored) as refused:
                    tc.queue_status()
                assert isinstance(refused.value, StoreError)
                # Both batches' ids (it named the first batch's alone, before).
                assert refused.value.taskids == [tid, tid2]
                text = str(refused.value)
                assert f"taskids {tid}..{tid2} " in text and "locked" in text
                assert "will not run" in str(refused.value)
                tc.queue_status()  # (said once)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            for refused_tid in (tid, tid2):
                with pytest.raises(IndexError):
                    tc.get_task_result(refused_tid)
            assert tc.run(MapTask(abs, (-3,)), block=True) == 3
        finally:
            tc.close()
            other.close()


def test_results_a_barrier_brought_along_are_handed_out_as_the_controller_has_them(client):
    tids = [client.run(MapTask(abs, (-i,))) for i in range(20)]
    client.barrier(tids)  # (its reply carries their results: get_task_result needs no trip)
    assert [client.get_task_result(t) for t in tids[:10]] == list(range(10))
    assert client.get_task_result(tids[0], block=True) == 0  # (asked again: still there)
    assert client.clear(tids[10:15]) == 5
    for t in tids[10:15]:  # cleared by this client: no longer handed out
        with pytest.raises(IndexError):
            client.get_task_result(t)
    assert [client.get_task_result(t) for t in tids[15:]] == list(range(15, 20))
    client.barrier(tids[15:])
    client.clear()
    with pytest.raises(IndexError):
        client.get_task_result(tids[16])


EXITS_WITHOUT_CLOSE = textwrap.dedent("""
    import sys
    from taskmill import MapTask, TaskClient
    tc = TaskClient(sys.argv[1])
    print(*[tc.run(MapTask(abs, (-i,))) for i in range(int(sys.argv[2]))], flush=True)
""")


EXITS_WITH_A_LARGE_QUEUE = textwrap.dedent("""
    import sys
    import taskmill.client.runs
    from taskmill import MapTask, TaskClient
    taskmill.client.runs.FLUSH_DELAY = 3600  # (what waits is sent by the next call, or at exit)
    tc = TaskClient(sys.argv[1])
    print(tc.run(MapTask(len, (b"x",))), flush=True)  # (takes a lease; sent at once)
    sys.stdin.readline()  # (it was stored; then the controller was stopped: no answer comes)
    big = b"x" * 100_000  # (a frame sent without a copy: pyzmq's garbage collector starts)
    print(*[tc.run(MapTask(len, (big,))) for _ in range(12)], flush=True)
""")


def test_runs_queued_in_large_frames_at_exit_are_stored(tmp_path):
    # The queue run() leaves at exit is sent by an atexit handler. pyzmq's own atexit handler
    # stops its garbage collector for good, after which a frame sent without a copy raises; it
    # must run after ours (once, under load, 503 of 1,000 run() tasks were dropped at exit:
    # "zmq gc socket requested during shutdown").
    with controller_process(tmp_path) as ctl:
        proc = subprocess.Popen([sys.executable, "-c", EXITS_WITH_A_LARGE_QUEUE, str(ctl.conn)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            first = int(proc.stdout.readline())
            with TaskClient(ctl.conn, timeout=30) as other:  # (answered: the next run goes at once)
                poll(lambda: other.task_info(first)["state"] != "unknown", 30, "the first run")
            ctl.proc.send_signal(signal.SIGSTOP)
            try:
                proc.stdin.write("go\n")
                proc.stdin.flush()
                tids = [int(t) for t in proc.stdout.readline().split()]
            finally:
                ctl.proc.send_signal(signal.SIGCONT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0 and len(tids) == 12, err
        assert "not stored" not in err, err
        with TaskClient(ctl.conn, timeout=30) as tc:
            states = [tc.task_info(t)["state"] for t in [first, *tids]]
        assert states == ["scheduled"] * 13, (states, err)


@pytest.mark.parametrize("n", [2, 2, 2, 1000])
def test_a_script_that_exits_without_closing_its_client_exits_and_its_runs_are_stored(
        cluster, client, n):
    # The seed's scripts run() tasks and end. The client is closed at exit, as close() would:
    # the tasks queued for the next batch are stored first (once 131 of 1,000 were lost), and
    # teardown never waits for a lock its stopped threads hold (once: stuck for good).
    proc = subprocess.run(
        [sys.executable, "-c", EXITS_WITHOUT_CLOSE, str(cluster.connection_file), str(n)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    tids = [int(t) for t in proc.stdout.split()]
    assert len(tids) == n
    client.barrier(tids)
    assert [client.get_task_result(t) for t in tids] == list(range(n))


STOPPED_CLIENT = textwrap.dedent("""
    import sys
    import time

    from taskmill import MapTask, RunNotStored, TaskClient
    from taskmill.client import runs

    runs.IDLE_RELEASE = 600.0  # (it keeps its lease while idle: the controller ends it)
    with TaskClient(sys.argv[1], timeout=30) as tc:
        first = [tc.run(MapTask(abs, (-i,))) for i in range(3)]
        print("first", *first, flush=True)
        sys.stdin.readline()  # (stopped meanwhile, past the controller's bound)
        lone = tc.run(MapTask(abs, (-3,)))  # (sent at once: nothing else is in flight)
        deadline = time.monotonic() + 30
        while not tc.backend.runs._failed and time.monotonic() < deadline:
            time.sleep(0.01)  # (until its refusal is in)
        after, refused = [], []
        for i in range(4, 40):
            try:
                after.append(tc.run(MapTask(abs, (-i,))))
            except RunNotStored as e:  # (said by the next run(), before it takes an id)
                refused += e.taskids
                after.append(tc.run(MapTask(abs, (-i,))))
        try:
            tc.barrier(first + after)
        except RunNotStored as e:
            refused += e.taskids
        print("lone", lone, flush=True)
        print("refused", *refused, flush=True)
        print("after", *after, flush=True)
        kept = [t for t in first + after if t not in refused]
        print("results", *[tc.get_task_result(t, block=True) for t in kept], flush=True)
""")


def test_a_client_stopped_past_its_lease_takes_a_new_one_and_loses_one_batch_at_most(
        tmp_path, monkeypatch):
    """A client stopped (SIGSTOP) while it holds a lease of run() ids is silent, and the
    controller ends its lease. When it goes on, its next run() batch is refused ("not leased")
    and raised as RunNotStored naming those ids, as before; but the client now drops the lease
    it was told is gone and asks for a new one, so its later runs are stored. Before, it went
    on numbering from the dead lease, and every run() was refused until that lease was used
    up (up to 4,096 of them)."""
    from taskmill.controller import leases

    monkeypatch.setattr(leases, "HOLDER_SILENCE", 1.0)  # (10 s; in-process, so it can be cut)
    with controller_thread(tmp_path, engines=1) as small:
        proc = subprocess.Popen([sys.executable, "-c", STOPPED_CLIENT, str(small.conn)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().split() == ["first", "0", "1", "2"]
            with TaskClient(small.conn, timeout=30) as other:  # (all three stored first)
                poll(lambda: sum(other.queue_status().values()) == 3, 30, "the tasks")
            held = small.ctl.core.ctx.leases.by_holder
            assert held  # (the client holds ids 3..15)
            proc.send_signal(signal.SIGSTOP)
            poll(lambda: not held, 30, "the stopped client's lease to end")
            proc.send_signal(signal.SIGCONT)
            out, err = proc.communicate("go\n", timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err[-3000:]
        lines = {line.split()[0]: [int(x) for x in line.split()[1:]]
                 for line in out.splitlines()}
        assert lines["refused"] == lines["lone"], out  # (the batch sent on the ended lease)
        after = lines["after"]
        assert after == list(range(after[0], after[0] + 36)), out  # (a new lease's ids)
        assert after[0] > 15  # (past the ended lease: its ids are never given out again)
        assert lines["results"] == [0, 1, 2, *range(4, 40)], out


def test_a_controller_killed_while_a_client_runs_loses_none_of_its_runs(tmp_path):
    """kill -9 of the controller while a client's loop of run() goes on: the tasks queued in
    the client or in flight then, and those of its lease from before, are stored by the
    restarted controller (its store kept the lease, and the client claims it), so no run()
    is refused and the client's taskids rise by 1 across the restart. Before, the lease
    ended with the controller: the batches queued or in flight were raised as RunNotStored,
    and the ids jumped past the lease."""
    with controller_process(tmp_path, engines=1) as ctl:
        tc = TaskClient(ctl.conn, timeout=60)
        try:
            first = [tc.run(MapTask(abs, (-i,))) for i in range(3)]
            assert first == [0, 1, 2]
            stop, tids, errors = threading.Event(), [], []

            def loop() -> None:
                i = 3
                while not stop.is_set():
                    try:
                        tids.append((tc.run(MapTask(abs, (-i,))), i))
                    except Exception as e:  # noqa: BLE001 - the test reads them
                        errors.append(e)
                    i += 1

            thread = threading.Thread(target=loop)
            thread.start()
            try:
                poll(lambda: len(tids) >= 200, 60, "runs before the kill")
                ctl.kill9()
                at_kill = len(tids)
                ctl.start()
                poll(lambda: len(tids) >= at_kill + 200, 60, "runs after the restart")
            finally:
                stop.set()
                thread.join(60)
            assert errors == []
            tc.barrier([t for t, _ in tids])
            results = [tc.get_task_result(t) for t, _ in tids]
            assert [t for t, _ in tids] == list(range(3, 3 + len(tids)))  # (rising by 1)
            assert results == [i for _, i in tids]
            assert [tc.get_task_result(t) for t in first] == [0, 1, 2]
        finally:
            tc.close()


def _stored(tc: TaskClient, tid: int) -> bool:
    return tc.task_info(tid)["state"] != "unknown"


def test_a_task_after_another_clients_leased_id_waits_for_it_to_be_stored(cluster,
                                                                          keep_leases):
    """SPEC §4: an id run() returned (or leased, not yet used) reads as unfinished to every
    client until it is stored. A task of another client `after` it waits for it, then runs
    after it. Before, the controller took the id for unknown: DependencyError at once
    (probe G, p25: 15 of 20 failed although the task they waited for then succeeded)."""
    with cluster.client() as holder, cluster.client() as other:
        t0 = holder.run(MapTask(abs, (-1,)))  # (holder then calls nothing: it keeps its lease)
        poll(lambda: _stored(other, t0), 30, "the first run() task to be stored")
        f = other.options(after=[t0 + 1]).submit(abs, -7)  # (leased to holder, not used yet)
        assert other.get_task_result(f.taskid) is None  # waits (before: DependencyError)
        # (every verb says the leased id is unfinished; before, task_info said unknown)
        assert other.task_info(t0 + 1)["state"] == "scheduled"
        assert other.task_info(t0 + 1)["leased"] is True
        assert other.get_task_result(t0 + 1) is None
        assert holder.run(MapTask(abs, (-2,))) == t0 + 1
        assert f.result(timeout=60) == 7
        assert other.get_task_result(t0 + 1, block=True) == 2
        assert other.task_info(f.taskid)["started"] >= other.task_info(t0 + 1)["completed"]


def test_a_task_after_a_leased_id_that_is_given_back_fails_with_dependency_error(
        cluster, keep_leases):
    holder = cluster.client()
    try:
        with cluster.client() as other:
            t0 = holder.run(MapTask(abs, (-1,)))
            poll(lambda: _stored(other, t0), 30, "the first run() task to be stored")
            f = other.options(after=[t0 + 1]).submit(abs, -7)
            assert other.get_task_result(f.taskid) is None
            holder.close()  # (the rest of its lease goes back: t0 + 1 is never stored)
            with pytest.raises(taskmill.DependencyError, match=f"task {t0 + 1}"):
                f.result(timeout=60)
            with pytest.raises(IndexError):
                other.get_task_result(t0 + 1)
    finally:
        holder.close()


def test_a_task_after_a_leased_id_waits_for_it_across_a_controller_restart(tmp_path,
                                                                           keep_leases):
    """The lease is kept in the store: after a kill -9 of the controller the reloaded task
    still waits for that id, and runs once its client, back, stores it."""
    with controller_process(tmp_path, engines=1) as ctl:
        holder = TaskClient(ctl.conn, timeout=60)
        other = TaskClient(ctl.conn, timeout=60)
        try:
            t0 = holder.run(MapTask(abs, (-1,)))
            poll(lambda: _stored(other, t0), 30, "the first run() task to be stored")
            dep = other.options(after=[t0 + 1]).submit(abs, -7).taskid
            assert other.get_task_result(dep) is None
            ctl.kill9()
            ctl.start()
            poll(lambda: _answers(other), 60, "the restarted controller")
            assert other.get_task_result(dep) is None  # (before: it ran, or failed)
            # (its next run() takes t0 + 1 from its lease: it claims it from the new controller)
            assert holder.run(MapTask(abs, (-2,))) == t0 + 1
            assert other.get_task_result(dep, block=True) == 7
            assert other.get_task_result(t0 + 1, block=True) == 2
        finally:
            holder.close()
            other.close()


def test_a_task_after_a_higher_taskid_waits_for_it_when_both_are_reloaded(tmp_path,
                                                                          keep_leases):
    """run()'s leased taskids are not in submit order: a task may wait for a higher one (from
    a later lease). A restart reloads queued tasks in taskid order, so the task came back
    before the one it waits for, which it took for done (cleared): it was ready at once."""
    with controller_process(tmp_path) as ctl:  # (no engine: both stay queued)
        a = TaskClient(ctl.conn, timeout=60)
        b = TaskClient(ctl.conn, timeout=60)
        try:
            a0 = a.run(MapTask(abs, (-1,)))  # (a's lease comes first)
            b0 = b.run(MapTask(abs, (-2,)))
            assert b0 > a0 + 1
            # (seen by b: a calls nothing but run(), which keeps its lease)
            poll(lambda: _stored(b, b0) and _stored(b, a0), 30, "the run() tasks to be stored")
            a1 = a.run(MapTask(abs, (-3,), after=[b0]))
            assert a1 < b0
            poll(lambda: _stored(b, a1), 30, "the dependent run() task to be stored")
            assert b.task_info(a1)["story"][-1]["to"] == "waiting"
            ctl.kill9()
            ctl.start()
            poll(lambda: _answers(b), 60, "the restarted controller")
            assert b.task_info(a1)["story"][-1]["to"] == "waiting"  # (before: ready)
            ctl.engines.append(ctl.engine())
            assert [b.get_task_result(t, block=True) for t in (a0, b0, a1)] == [1, 2, 3]
            assert b.task_info(a1)["started"] >= b.task_info(b0)["completed"]
        finally:
            a.close()
            b.close()


def test_an_idle_clients_unused_leased_ids_go_back_so_that_waits_on_them_end(cluster):
    """A client whose last call was run() held the rest of its lease for as long as it made
    no other call: a barrier or a blocking read of another client on such an id (leased, never
    returned by run()) waited that long, and a task `after` it too, while task_info, abort
    and clear called the id unknown (probe J, p12). The client gives it back once its run()
    has been idle for runs.IDLE_RELEASE seconds: then the id reads as unknown to every verb."""
    with cluster.client() as holder, cluster.client() as other:
        t0 = holder.run(MapTask(abs, (-1,)))  # (holder then calls nothing)
        f = other.options(after=[t0 + 1]).submit(abs, -7)
        other.barrier([t0, t0 + 1], timeout=30)  # (before: TimeoutError)
        with pytest.raises(IndexError):
            other.get_task_result(t0 + 1, block=True)
        assert other.task_info(t0 + 1)["state"] == "unknown"
        with pytest.raises(taskmill.DependencyError, match=f"task {t0 + 1}"):
            f.result(timeout=60)
        assert other.get_task_result(t0) == 1
        assert holder.run(MapTask(abs, (-2,)), block=True) == 2  # (a new lease: it goes on)
