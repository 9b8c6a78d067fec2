"""System tests of the client people expect today: futures, options, imap, map, run_all, wait.

They run on the shared 2-engine `cluster` fixture and leave it as they found it: engines held
by a gate are released and waited for, and no test changes an engine's properties. Nothing
asserts on wall-clock time; conditions are polled with a deadline. Functions shipped to the
engines are defined in this module or in systest.py, which conftest registers for pickling by
value.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import io
import os

import pytest
from systest import (
    alive_engine_ids,
    fail_on_multiples_of_seven,
    raise_keyerror,
    square,
    wait_until,
)

import taskmill
from taskmill import CompositeError, MapTask, StringTask, TaskAborted, TaskResult

# A blocking wait sits in a lock acquire that SIGALRM does not interrupt: use the thread method.
pytestmark = pytest.mark.timeout(180, method="thread")

METADATA_KEYS = {"engineid", "submitted", "started", "completed", "duration", "stdout",
                 "stderr", "attempts"}


# -- helpers ---------------------------------------------------------------------------------


class CustomError(Exception):
    """An exception type of this module, raised on an engine and rebuilt here."""


def raise_custom(message):
    raise CustomError(message)


def talk_and_return(x):
    import sys

    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x + 1


def echo_kwargs(x, **kwargs):
    return x, kwargs


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


# -- futures ---------------------------------------------------------------------------------


def test_as_completed_yields_each_of_1000_task_futures_with_its_value(client):
    futs = [client.submit(square, i) for i in range(1000)]
    assert all(isinstance(f, cf.Future) for f in futs)
    seen = {}
    for f in cf.as_completed(futs, timeout=120):
        assert f not in seen
        seen[f] = f.result()
    assert len(seen) == 1000
    assert [seen[f] for f in futs] == [i * i for i in range(1000)]
    tids = [f.taskid for f in futs]
    assert len(set(tids)) == 1000 and all(isinstance(t, int) for t in tids)
    assert tids == sorted(tids)  # one client's submits get rising ids


def test_task_future_works_with_wait_callbacks_and_asyncio(client):
    called = []
    f = client.submit(square, 12)
    f.add_done_callback(called.append)
    done, not_done = cf.wait([f], timeout=60)
    assert done == {f} and not not_done
    wait_until(lambda: called == [f], "the done callback")
    assert f.result() == 144 and f.exception() is None and not f.cancelled()

    async def awaited():
        return await asyncio.wrap_future(client.submit(square, 5))

    assert asyncio.run(awaited()) == 25
    later = client.submit(square, 3)
    later.result(timeout=60)
    late_calls = []
    later.add_done_callback(late_calls.append)  # added after it finished: called at once
    assert late_calls == [later]


def test_a_done_callback_may_wait_for_other_futures_and_call_the_client(client, gate):
    """Callbacks ran on the client's I/O thread, the one that reads every answer: a callback
    that chained a task (`tc.submit(g, f.result()).result()`) froze the whole client for good,
    and `cancel()` there raised. Now they run on a thread of their own, in order."""
    import threading

    held = gate.hold_every_engine()
    queued = client.submit(square, 9)  # (waits behind the held engines: cancelled below)
    got: list = []
    done = threading.Event()

    def chain(f):
        try:
            got.append(threading.current_thread().name)
            got.append(client.submit(square, f.result()).result(timeout=60))
            got.append(client.queue_status()["succeeded"] >= 2)
            got.append(queued.cancel())
        except BaseException as e:  # noqa: BLE001 - checked below
            got.append(e)
        finally:
            done.set()

    first = client.submit(square, 3)
    first.add_done_callback(chain)
    gate.release()
    assert [h.result(timeout=60) for h in held] == ["released"] * len(held)
    assert done.wait(60), got
    assert got[1:] == [81, True, True] or got[1:] == [81, True, False], got
    assert got[0] == "taskmill-callbacks"
    assert client.submit(square, 4).result(timeout=60) == 16  # the client goes on


def script_with_callbacks(cluster, tmp_path, callback: str):
    """Run a script that submits 20 tasks in a `with TaskClient()` block, gives each future
    the done-callback `callback` (the body of `def callback(f)`, which writes to the file
    sys.argv[2]), prints the sum of the results and ends: (its CompletedProcess, that file)."""
    import subprocess
    import sys

    out = tmp_path / "written"
    script = tmp_path / "script.py"
    script.write_text(
        "import sys, time\n"
        "from taskmill import TaskClient\n"
        "def callback(f):\n" + "".join(f"    {line}\n" for line in callback.splitlines())
        + "with TaskClient(sys.argv[1]) as tc:\n"
        "    futs = [tc.submit(abs, -i) for i in range(20)]\n"
        "    for f in futs:\n"
        "        f.add_done_callback(callback)\n"
        "    print(sum(f.result(timeout=60) for f in futs))\n")
    done = subprocess.run([sys.executable, str(script), str(cluster.connection_file), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["190"], done.stderr
    return done, out


def test_done_callbacks_queued_when_a_script_ends_all_run(cluster, tmp_path):
    """The callbacks thread is a daemon: a script that read its results, closed its client
    and ended lost the callbacks still queued (8 of 20). close() runs them first now."""
    _, out = script_with_callbacks(cluster, tmp_path, (
        "time.sleep(0.05)\n"
        "with open(sys.argv[2], 'a') as o:\n"
        "    o.write(f'{f.result()}\\n')"))
    assert sorted(int(x) for x in out.read_text().split()) == list(range(20))


def test_done_callbacks_queued_when_a_script_ends_may_still_use_the_client(cluster, client,
                                                                          tmp_path):
    """Chaining (futures.md: `f.add_done_callback(lambda f: tc.submit(g, f.result()))`) at
    the end of a `with TaskClient()` block: close() ran the queued callbacks after closing the
    connection, so every chained submit failed with ClientClosed (logged) and its task was
    never sent (0 of 20). They run while the client is open now, and their tasks are stored."""
    done, out = script_with_callbacks(cluster, tmp_path, (
        "time.sleep(0.02)\n"
        "tid = tc.submit(abs, -10 * f.result()).taskid\n"
        "with open(sys.argv[2], 'a') as o:\n"
        "    o.write(f'{tid}\\n')"))
    assert "ClientClosed" not in done.stderr, done.stderr
    tids = [int(x) for x in out.read_text().split()] if out.exists() else []
    assert len(tids) == 20
    values = [client.get_task_result(t, block=True, timeout=60) for t in tids]
    assert sorted(values) == [10 * i for i in range(20)]


def test_metadata_fields_are_filled_when_the_task_finishes(client):
    f = client.submit(talk_and_return, 41)
    assert f.result(timeout=60) == 42
    md = f.metadata
    assert set(md) == METADATA_KEYS
    assert md["engineid"] in alive_engine_ids(client)
    for key in ("submitted", "started", "completed", "duration"):
        assert isinstance(md[key], float), key
    assert md["submitted"] <= md["started"] <= md["completed"]
    assert md["duration"] >= 0
    assert "out 41" in md["stdout"] and "err 41" in md["stderr"]
    assert md["attempts"] == 1


def test_exceptions_are_raised_again_with_their_type(client):
    f = client.submit(raise_keyerror, "missing")
    with pytest.raises(KeyError) as info:
        f.result(timeout=60)
    err = info.value
    assert err.taskid == f.taskid and err.engineid == f.metadata["engineid"]
    assert "raise_keyerror" in err.remote_traceback
    assert "raise_keyerror" in str(err.__cause__)
    assert f.exception() is err  # decoded once, kept

    g = client.submit(raise_custom, "mine")
    with pytest.raises(CustomError, match="mine"):
        g.result(timeout=60)

    # A StringTask's failure is carried in its TaskResult, as get_task_result does.
    tid = client.run(StringTask("1 / 0"))
    tr = client.future(tid).result(timeout=60)
    assert isinstance(tr, TaskResult) and isinstance(tr.failure, ZeroDivisionError)

    with pytest.raises(IndexError):
        client.future(987_654_321).result(timeout=60)


def test_future_follows_a_task_submitted_with_run(client):
    tid = client.run(MapTask(square, (9,)))
    f = client.future(tid)
    assert f.taskid == tid and f.result(timeout=60) == 81
    assert f.metadata["attempts"] == 1


def test_cancel_aborts_a_queued_future_and_not_a_finished_one(client, gate):
    held = gate.hold_every_engine()
    f = client.submit(square, 7)
    assert not f.done()
    assert set(f.metadata.values()) == {None}  # nothing is known before it finishes
    assert f.cancel() is True
    assert f.cancelled() and f.done()
    with pytest.raises(cf.CancelledError):
        f.result(timeout=1)
    assert list(cf.as_completed([f], timeout=5)) == [f]  # waiters hear of the cancel
    assert cf.wait([f], timeout=5).done == {f}
    assert f.cancel() is True  # cancelling again: still cancelled
    with pytest.raises(TaskAborted):  # the controller says the same
        client.get_task_result(f.taskid, block=True)
    assert not any(h.done() for h in held)

    gate.release()
    assert [h.result() for h in held] == ["released"] * len(held)
    done = client.submit(square, 2)
    assert done.result(timeout=60) == 4
    assert done.cancel() is False and not done.cancelled()


def test_closing_the_client_fails_its_waiting_futures(cluster, gate):
    gate.hold_every_engine()
    tc = cluster.client()
    f = tc.submit(square, 5)
    assert isinstance(f.taskid, int)
    tc.close()
    with pytest.raises(taskmill.ClientClosed, match="closed"):
        f.result(timeout=10)
    with pytest.raises(RuntimeError, match="closed"):
        tc.submit(square, 6)


def test_a_map_whose_client_is_closed_by_another_thread_says_so(cluster, gate):
    """It raised a CompositeError saying every element had failed ("engine None:
    RuntimeError: the client was closed"), though none had."""
    import threading

    gate.hold_every_engine()
    tc = cluster.client()
    got: list = []
    calls = {"map": lambda: tc.map(square, range(6), chunksize=1),
             "run_all": lambda: tc.run_all(MapTask(square, (2,)))}

    def call(name):
        try:
            got.append((name, calls[name]()))
        except BaseException as e:  # noqa: BLE001 - checked below
            got.append((name, e))

    threads = [threading.Thread(target=call, args=(n,)) for n in calls]
    for t in threads:
        t.start()
    wait_until(lambda: tc.queue_status()["scheduled"] >= 6, "the maps' tasks to be queued")
    tc.close()
    for t in threads:
        t.join(60)
    assert sorted(n for n, _ in got) == ["map", "run_all"]
    assert all(type(e) is taskmill.ClientClosed for _, e in got), got


# -- options ---------------------------------------------------------------------------------


def test_options_are_kept_apart_from_the_function_keywords(client):
    opts = client.options(retries=1, timeout=30)
    f = opts.submit(echo_kwargs, 1, retries=5, timeout="mine", after="also mine")
    assert f.result(timeout=60) == (1, {"retries": 5, "timeout": "mine", "after": "also mine"})
    assert opts.map(square, range(5)) == [0, 1, 4, 9, 16]
    assert list(opts.options(clear_after=True).imap(square, iter(range(4)))) == [0, 1, 4, 9]
    assert "retries=1" in repr(opts)


def test_after_accepts_futures(client):
    bad = client.submit(raise_keyerror, "x")
    follower = client.options(after=[bad]).submit(square, 3)
    with pytest.raises(taskmill.DependencyError):
        follower.result(timeout=60)
    good = client.submit(square, 2)
    assert client.options(after=good).submit(square, 4).result(timeout=60) == 16


def test_bad_options_are_refused_at_once(client):
    with pytest.raises(TypeError):
        client.options(retries=-1)
    with pytest.raises(TypeError):
        client.options(depend=42)
    with pytest.raises(TypeError):
        client.options().options(retires=1)
    with pytest.raises(ValueError, match="recovery_task"):
        client.options(recovery_task=MapTask(square, (1,))).map(square, [1, 2])


# -- imap ------------------------------------------------------------------------------------


def test_imap_ordered_and_unordered_over_a_generator(client):
    ordered = list(client.imap(square, (i for i in range(3000)), max_outstanding=500))
    assert ordered == [i * i for i in range(3000)]
    unordered = list(client.imap(square, (i for i in range(3000)), ordered=False))
    assert sorted(unordered) == [i * i for i in range(3000)]
    assert list(client.imap(square, iter([]))) == []
    assert list(client.imap(square, range(10), chunksize=3)) == [i * i for i in range(10)]


def test_imap_raises_a_failed_element_at_its_turn(client):
    it = client.imap(fail_on_multiples_of_seven, range(1, 100), chunksize=4)
    got = []
    with pytest.raises(ValueError, match="7 is a multiple of 7") as info:
        for x in it:
            got.append(x)
    assert got == [1, 2, 3, 4, 5, 6]
    assert "fail_on_multiples_of_seven" in info.value.remote_traceback


def test_imap_over_ten_million_items_keeps_client_and_controller_memory_bounded(client,
                                                                                 cluster):
    list(client.imap(square, range(2000)))  # warm up: imports, caches
    before = client.queue_status()
    client_before = rss_mib()
    controller_before = rss_mib(cluster.controller_pid)
    source = (i for i in range(10_000_000))
    results = client.imap(square, source, max_outstanding=5000)
    n = 0
    for value in results:
        assert value == n * n
        n += 1
        if n == 50_000:
            break
    results.close()
    pulled = next(source)
    source.close()
    assert 50_000 <= pulled <= 50_000 + 5000  # never more than max_outstanding ahead
    client_growth = rss_mib() - client_before
    controller_growth = rss_mib(cluster.controller_pid) - controller_before
    # A materialised list of 10 million ints alone would be ~400 MiB.
    assert client_growth < 100, f"client RSS grew by {client_growth:.0f} MiB"
    assert controller_growth < 150, f"controller RSS grew by {controller_growth:.0f} MiB"
    # Every chunk's result, aborted or not, is dropped from the controller again.
    wait_until(lambda: client.queue_status() == before, "imap's results to be cleared")


# -- map -------------------------------------------------------------------------------------


def test_map_of_100000_ints_equals_builtin_map_in_far_fewer_tasks(client):
    submitted = client.statistics()["submitted"]
    items = list(range(100_000))
    assert client.map(square, items) == list(map(square, items))
    tasks = client.statistics()["submitted"] - submitted
    assert 1 <= tasks <= 1000
    assert client.map(pow, [2, 3, 4], [5, 2, 1]) == list(map(pow, [2, 3, 4], [5, 2, 1]))
    assert client.map(square, []) == []


def test_map_composite_error_names_every_failed_index(client):
    with pytest.raises(CompositeError) as info:
        client.map(fail_on_multiples_of_seven, range(50), chunksize=6)
    err = info.value
    expected = [i for i in range(50) if i % 7 == 0]
    assert [f.index for f in err.elist] == expected
    text = str(err)
    for i in expected:
        assert f"[{i}] engine " in text
    assert all(isinstance(f.exception, ValueError) for f in err.elist)
    assert all("fail_on_multiples_of_seven" in f.traceback for f in err.elist)


def test_map_progress_bar_is_drawn_when_asked(client, capsys):
    assert client.map(square, range(500), progress=True) == [i * i for i in range(500)]
    err = capsys.readouterr().err
    assert "square" in err and "500/500" in err and "100%" in err
    client.map(square, range(10))  # the default: no bar
    client.wait([client.submit(square, 1)])  # None: only on a terminal, and this is not one
    assert capsys.readouterr().err == ""


def test_wait_and_barrier_draw_progress_for_taskids_and_futures(client, capsys):
    tids = [client.run(MapTask(square, (i,))) for i in range(20)]
    futs = client.wait(tids + [client.submit(square, 5)], progress=True)
    assert [f.result() for f in futs] == [i * i for i in range(20)] + [25]
    client.barrier(tids, progress=True)
    err = capsys.readouterr().err
    assert "21/21" in err and "20/20" in err
    with pytest.raises(TimeoutError):
        client.wait([cf.Future()], timeout=0.05, progress=False)


# -- run_all ---------------------------------------------------------------------------------


def test_run_all_runs_one_copy_on_every_engine(client):
    eids = alive_engine_ids(client)
    out = client.run_all(StringTask("here = engineid", pull="here"))
    assert sorted(out) == eids
    assert all(out[e].ns.here == e for e in eids)
    pids = client.run_all(MapTask(os.getpid))
    assert set(pids.values()) == {e["pid"] for e in client.engines() if e["state"] != "dead"}
    with pytest.raises(CompositeError) as info:
        client.run_all(MapTask(raise_keyerror, ("set-up",)))
    assert sorted(f.engineid for f in info.value.elist) == eids


def test_progress_can_be_written_to_a_file_object(client, monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr("sys.stderr", buf)
    assert list(client.imap(square, range(50), progress=True)) == [i * i for i in range(50)]
    assert "50/50" in buf.getvalue()


def test_a_future_keeps_the_client_it_came_from_alive(cluster):
    """`cluster.client().submit(f).result()`: nothing else names that client, and dropping it
    must not close the connection its future waits on."""
    import gc

    futures = [cluster.client().submit(square, x) for x in range(3)]
    gc.collect()
    assert [f.result(timeout=60) for f in futures] == [0, 1, 4]
    assert cluster.client().submit(square, 9).result(timeout=60) == 81
