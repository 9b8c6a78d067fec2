"""System tests of the joblib backend (`TaskClient.register_joblib_backend`, issue 18 item 2).

They run on the shared 2-engine `cluster`: joblib's `Parallel` and scikit-learn's
`GridSearchCV` inside `joblib.parallel_config(backend="taskmill")` run their batches as tasks,
which the tests count on the controller (`statistics()["submitted"]`) and follow to the
engines (each task reports its pid). Nothing asserts on wall-clock time.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from systest import alive_engines, fail_on_multiples_of_seven, wait_until

from taskmill import SerializationError

joblib = pytest.importorskip("joblib")
from joblib import Parallel, delayed, parallel_config  # noqa: E402

pytestmark = pytest.mark.timeout(180, method="thread")


def pid_and_square(x):
    time.sleep(0.05)  # long enough that both engines get batches
    return os.getpid(), x * x


def nap_then_fail(x):
    if x == 0:
        time.sleep(0.5)
        raise KeyError("item 0 fails")
    time.sleep(60)
    return x


def nap(x):
    time.sleep(0.3)
    return x


def submitted(tc) -> int:
    return tc.statistics()["submitted"]


@pytest.fixture
def taskmill_joblib(client):
    client.register_joblib_backend()  # name="taskmill"
    return client


def test_parallel_runs_on_the_engines_with_results_in_order(taskmill_joblib):
    tc = taskmill_joblib
    engine_pids = {e["pid"] for e in alive_engines(tc).values()}
    before, stored = submitted(tc), tc.queue_status()["succeeded"]
    with parallel_config(backend="taskmill"):
        out = Parallel(n_jobs=-1, batch_size=1)(delayed(pid_and_square)(i) for i in range(30))
    assert tc.queue_status()["succeeded"] == stored  # the results read were cleared
    assert [sq for _, sq in out] == [i * i for i in range(30)]
    pids = {pid for pid, _ in out}
    assert os.getpid() not in pids
    assert pids <= engine_pids
    assert len(pids) > 1, "every batch ran on one engine"
    assert submitted(tc) - before == 30  # batch_size=1: one task per item


def test_n_jobs_minus_one_is_the_engine_count(taskmill_joblib):
    engines = len(alive_engines(taskmill_joblib))
    assert engines == 2
    with parallel_config(backend="taskmill"):
        assert joblib.effective_n_jobs(-1) == engines
        assert joblib.effective_n_jobs(1) == 1
        assert joblib.effective_n_jobs(5) == 5


def test_auto_batching_sends_fewer_tasks_than_items(taskmill_joblib):
    tc = taskmill_joblib
    before = submitted(tc)
    with parallel_config(backend="taskmill"):
        out = Parallel(n_jobs=-1)(delayed(abs)(-i) for i in range(3000))
    assert out == list(range(3000))
    tasks = submitted(tc) - before
    assert 2 <= tasks < 3000 // 4, tasks


def test_an_exception_propagates_as_joblib_raises_it(taskmill_joblib):
    with parallel_config(backend="taskmill"):
        with pytest.raises(ValueError, match="^(7|14|21|28) is a multiple of 7$"):
            Parallel(n_jobs=-1, batch_size=1)(
                delayed(fail_on_multiples_of_seven)(x) for x in range(1, 30))
        # the backend is still good for the next call
        assert Parallel(n_jobs=-1)(delayed(abs)(-x) for x in range(10)) == list(range(10))
    # as joblib's own backends raise it
    with pytest.raises(ValueError, match="multiple of 7"):
        Parallel(n_jobs=2, backend="threading")(
            delayed(fail_on_multiples_of_seven)(x) for x in range(1, 30))


def test_a_failure_aborts_the_batches_still_out(taskmill_joblib):
    tc = taskmill_joblib
    stored = tc.queue_status()["failed"]
    with parallel_config(backend="taskmill"):
        with pytest.raises(KeyError, match="item 0 fails"):
            Parallel(n_jobs=2, batch_size=1)(delayed(nap_then_fail)(x) for x in range(6))
    # the minute-long batches were aborted, not left to run
    wait_until(lambda: not any(tc.queue_status()[k] for k in ("scheduled", "pending")),
               "the batches still out to be aborted", timeout=20)
    # and the failure and the aborts are not left in the store
    assert tc.queue_status()["failed"] == stored


def test_n_jobs_caps_the_batches_out_at_once(taskmill_joblib, cluster):
    tc = taskmill_joblib
    watcher = cluster.client()
    base = watcher.statistics()
    most = 0
    stop = threading.Event()

    def watch():
        nonlocal most
        while not stop.is_set():
            s = watcher.statistics()
            most = max(most, (s["submitted"] - base["submitted"])
                       - (s["finished"] - base["finished"]))

    t = threading.Thread(target=watch)
    t.start()
    try:
        with parallel_config(backend="taskmill"):
            # pre_dispatch="all": joblib hands every batch over at once; the backend holds
            # all but n_jobs of them until one finishes
            out = Parallel(n_jobs=2, batch_size=1, pre_dispatch="all")(
                delayed(nap)(x) for x in range(8))
    finally:
        stop.set()
        t.join()
        watcher.close()
    assert out == list(range(8))
    assert submitted(tc) - base["submitted"] == 8
    assert 1 <= most <= 2, most


def test_grid_search_runs_on_the_engines(taskmill_joblib):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    tc = taskmill_joblib
    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.01, 1.0, 100.0], "kernel": ["linear", "rbf"]}
    local = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(X, y)

    before = submitted(tc)
    with parallel_config(backend="taskmill"):
        remote = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    assert remote.best_params_ == local.best_params_
    assert list(remote.cv_results_["mean_test_score"]) == list(
        local.cv_results_["mean_test_score"])
    assert submitted(tc) - before >= 2  # 18 fits, in joblib's batches, on the engines


def test_no_joblib_is_a_clear_import_error(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "joblib", None)  # import joblib -> ImportError
    with pytest.raises(ImportError, match="pip install joblib"):
        client.register_joblib_backend()


def test_make_default_and_a_generator_of_results(client, monkeypatch):
    import joblib.parallel

    monkeypatch.setattr(joblib.parallel, "DEFAULT_BACKEND", joblib.parallel.DEFAULT_BACKEND)
    client.register_joblib_backend(name="taskmill-default", make_default=True)
    before = submitted(client)
    gen = Parallel(n_jobs=-1, batch_size=1, return_as="generator")(
        delayed(pid_and_square)(i) for i in range(6))
    out = list(gen)
    assert [sq for _, sq in out] == [i * i for i in range(6)]
    assert os.getpid() not in {pid for pid, _ in out}
    assert submitted(client) - before == 6


def test_a_batch_that_cannot_be_sent_fails_the_call(taskmill_joblib):
    # pre_dispatch="all" with n_jobs=2: the last batch waits in the backend and is sent from
    # its callback thread when one finishes; its pickling error reaches joblib's caller
    items = [1, 2, 3, threading.Lock()]
    with parallel_config(backend="taskmill"):
        with pytest.raises(SerializationError, match="cannot pickle '_thread.lock'"):
            Parallel(n_jobs=2, batch_size=1, pre_dispatch="all")(
                delayed(repr)(x) for x in items)


def hold_batch(x, release, started):
    """Mark `started`, then wait (bounded) until `release` exists."""
    open(f"{started}-{x}", "w").close()
    end = time.monotonic() + 90
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.01)
    return x


def test_a_timeout_with_a_stalled_controller_ends_the_call_without_waiting_for_it(tmp_path,
                                                                                  caplog):
    """`Parallel(timeout=...)` with the controller stopped raised joblib's TimeoutError only
    once the controller resumed (up to timeout + reconnect_timeout): abort_everything
    cancelled each batch still out, one blocking round trip each, then cleared them, blocking
    too. The aborts are waited for within joblib's timeout now (less once the controller is
    silent), a warning names those unconfirmed, and they and the clears go out once it
    answers. The watchdog resumes the controller after 40 s: the old code ends only then."""
    import logging
    from multiprocessing import TimeoutError as JoblibTimeout  # (what joblib raises)

    from systest import controller_process, poll, stalled

    import taskmill

    release, started = tmp_path / "release", tmp_path / "started"
    with controller_process(tmp_path, engines=2) as ctl, \
            taskmill.TaskClient(ctl.conn, timeout=30, reconnect_timeout=90) as tc:
        poll(lambda: len(alive_engines(tc)) == 2, 60, "both engines")
        tc.register_joblib_backend()
        stored = tc.queue_status()["failed"]
        stop = threading.Event()
        box: list = []

        def stop_the_controller_once_both_run() -> None:
            poll(lambda: stop.is_set() or len(list(tmp_path.glob("started-*"))) == 2, 60,
                 "both batches to start")
            if not stop.is_set():
                box.append(stalled(ctl.proc))
                box.append(box[0].__enter__())

        helper = threading.Thread(target=stop_the_controller_once_both_run)
        helper.start()
        try:
            with caplog.at_level(logging.WARNING, logger="taskmill.client"), \
                    parallel_config(backend="taskmill"), pytest.raises(JoblibTimeout):
                Parallel(n_jobs=2, batch_size=1, timeout=5)(
                    delayed(hold_batch)(x, str(release), str(started)) for x in range(6))
            stop.set()
            helper.join(60)
            assert len(box) == 2, "the controller was not stopped before the timeout"
            assert not box[1].is_set(), "Parallel's timeout waited for the stalled controller"
            said = [r.getMessage() for r in caplog.records if "not confirmed" in r.getMessage()]
            assert len(said) == 1 and "taskids 0..1" in said[0], said
        finally:
            stop.set()
            helper.join(60)
            if box:
                box[0].__exit__(None, None, None)
            release.touch()
        # Once the controller answers, the batches are aborted and their results cleared.
        poll(lambda: not any(tc.queue_status()[k] for k in ("scheduled", "pending")), 60,
             "the aborts, sent again")
        poll(lambda: tc.queue_status()["failed"] == stored, 60, "the aborted batches cleared")
