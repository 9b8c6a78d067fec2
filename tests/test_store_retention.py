"""What a store forgets: results older than `--keep-results` days, and a whole store
(`taskmill cluster start` without --resume, `taskmill clean`)."""

from __future__ import annotations

import math
import os
import time

import pytest

from taskmill.connection import new_connection_info
from taskmill.controller import Controller, Now
from taskmill.controller.core import RETENTION_EVERY
from taskmill.errors import StoreError
from taskmill.store import (
    MemoryStore,
    SQLiteStore,
    StoredResult,
    StoredTask,
    drop_old_results,
    remove_store,
    store_files,
)

DAY = 86400.0
NOW = 1_800_000_000.0  # the time the tests say it is


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "t.db"))
    yield s
    s.close()


def _finished(store, completed_days_ago, frames=(b"r",), submitted_days_ago=None,
              status="ok"):
    """A task finished `completed_days_ago` days before NOW (submitted when told, else then)."""
    submitted = NOW - DAY * (completed_days_ago if submitted_days_ago is None
                             else submitted_days_ago)
    tid = store.allocate()
    store.add(StoredTask(tid, {"nodes": [], "after": []}, [b"body"], submitted))
    store.finish(tid, StoredResult({"status": status, "submitted": submitted,
                                    "completed": NOW - DAY * completed_days_ago},
                                   list(frames)))
    return tid


def test_results_older_than_the_retention_are_dropped_and_younger_ones_kept(store):
    old = _finished(store, 10)
    old_failed = _finished(store, 8, status="error")
    young = _finished(store, 2)
    # Submitted 30 days ago but finished an hour ago: its result is young.
    long_running = _finished(store, 1 / 24, submitted_days_ago=30)
    running = store.allocate()
    store.add(StoredTask(running, {"nodes": [], "after": []}, [b"body"], NOW - 20 * DAY))
    store.commit()
    assert store.counts() == (3, 1)
    assert drop_old_results(store, 7, now=NOW) == 2
    assert store.counts() == (2, 0)
    assert store.result(old) is None and store.result(old_failed) is None
    assert store.result(young).frames == [b"r"]
    assert store.result(long_running) is not None
    assert store.task(running) is not None  # unfinished tasks are never dropped
    ok, failed = store.finished_ids()
    assert sorted(ok + failed) == [young, long_running]
    assert drop_old_results(store, 7, now=NOW) == 0
    assert drop_old_results(store, math.inf, now=NOW + 1000 * DAY) == 0
    assert drop_old_results(store, 0, now=NOW) == 2


def test_the_retention_holds_across_a_reopen_and_removes_large_result_files(tmp_path):
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    big = b"x" * (256 * 1024)  # kept in a file of its own beside the database
    old = _finished(s, 30, frames=(big,))
    young = _finished(s, 1, frames=(big,))
    s.close()
    assert len(list((tmp_path / "t.db.blobs").iterdir())) == 2
    s = SQLiteStore(path)
    try:
        assert drop_old_results(s, 7, now=NOW) == 1
        assert s.counts() == (1, 0)
    finally:
        s.close()
    s = SQLiteStore(path)
    try:
        assert s.result(old) is None and s.result(young).frames == [big]
        assert len(list((tmp_path / "t.db.blobs").iterdir())) == 1
        assert s.allocate() == young + 1  # taskids are never given twice
    finally:
        s.close()


def test_remove_store_removes_every_file_of_a_store(tmp_path):
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    _finished(s, 1, frames=(b"x" * (256 * 1024),))
    s.commit()
    s.abandon()  # as a killed controller leaves it: WAL and all
    assert len(store_files(path)) >= 3
    assert remove_store(path) > 256 * 1024
    assert store_files(path) == [] and os.listdir(tmp_path) == []
    assert remove_store(path) == 0  # nothing there: nothing to do
    s = SQLiteStore(path)  # and a store opened there again is empty
    try:
        assert s.counts() == (0, 0) and s.allocate() == 0
    finally:
        s.close()


def test_remove_store_refuses_a_store_a_controller_holds(tmp_path):
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    try:
        _finished(s, 1)
        s.commit()
        with pytest.raises(StoreError, match="in use by another controller"):
            remove_store(path)
        assert s.result(0) is not None and os.path.exists(path)
    finally:
        s.close()


def test_remove_store_refuses_a_file_that_is_not_a_store(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    with pytest.raises(StoreError, match="not a taskmill store"):
        remove_store(str(path))
    assert path.read_text() == "my notes\n"


def test_a_running_controller_drops_old_results_at_start_and_every_hour(tmp_path):
    """The core's retention timer: at start, then every RETENTION_EVERY seconds (the test
    hands the core the times; nothing waits)."""
    store = SQLiteStore(str(tmp_path / "t.db"))
    wall = time.time()
    for days_ago in (10, 6.5, 1):
        tid = store.allocate()
        store.add(StoredTask(tid, {"nodes": [], "after": []}, [b"body"], wall - days_ago * DAY))
        store.finish(tid, StoredResult({"status": "ok", "completed": wall - days_ago * DAY},
                                       [b"r"]))
    store.commit()
    ctl = Controller(new_connection_info(), store=store, heartbeat=3600.0, keep_results=7)
    try:
        mono = time.monotonic()
        ctl.core.fire_timers(Now(mono, wall))
        ctl.core.flush(Now(mono, wall))  # (the end of the turn: the next pass counts from here)
        assert sorted(sum(store.finished_ids(), [])) == [1, 2]  # (task 0: 10 days old)
        ctl.core.fire_timers(Now(mono + RETENTION_EVERY / 2, wall + DAY))
        assert sorted(sum(store.finished_ids(), [])) == [1, 2]  # not due yet
        ctl.core.fire_timers(Now(mono + RETENTION_EVERY + 1, wall + DAY))
        assert sorted(sum(store.finished_ids(), [])) == [2]  # task 1 is now 7.5 days old
        assert ctl.core.ctx.store.counts() == (1, 0)
    finally:
        ctl.close()


@pytest.mark.parametrize("settings, message", [
    ({"keep_results": -1}, "keep_results must be a number of days >= 0"),
    ({"keep_results": math.nan}, "keep_results must be a number of days >= 0"),
    ({"key": "not hex"}, "key must be a hex string"),
])
def test_cluster_refuses_a_retention_or_key_that_makes_no_sense(settings, message):
    from taskmill import Cluster

    with pytest.raises(ValueError, match=message):
        Cluster(1, **settings)
    assert Cluster(1, keep_results=math.inf, key="ab" * 32).keep_results == math.inf
