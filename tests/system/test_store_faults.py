"""A store that cannot write: nothing lost, no taskid given twice, the controller serves on.

The faults are real: another process holding SQLite's write lock past the busy timeout, and a
small tmpfs filled up (root only, as in CI). A second controller on the same store is refused.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest
from systest import (
    TASKMILL,
    ControllerProcess,
    controller_process,
    fill_disk,
    poll,
    small_tmpfs,
    wait_for_file,
)

from taskmill import DependencyError, MapTask, StoreError, TaskClient


def tag(value):
    """A task whose result says which task it was (to catch a result under the wrong id)."""
    return f"result of {value}"


@pytest.fixture
def controller(tmp_path):
    with controller_process(tmp_path, engines=2) as ctl:
        tc = TaskClient(ctl.conn, timeout=30)
        poll(lambda: len(tc.engines()) >= 2, what="2 engines")
        yield ctl, tc
        tc.close()


def _check_results(tc, given: dict[int, str]) -> None:
    """Every taskid a client was given has its own task's result, and ids were never reused."""
    for tid, marker in given.items():
        assert tc.get_task_result(tid, block=True) == tag(marker), tid


@pytest.mark.timeout(120)
def test_store_locked_by_another_process_refuses_submits_and_loses_nothing(controller, tmp_path):
    ctl, tc = controller
    given: dict[int, str] = {}
    for i in range(5):
        given[tc.run(MapTask(tag, (f"before-{i}",)))] = f"before-{i}"
    started, release = tmp_path / "started", tmp_path / "release"
    running = tc.run(MapTask(wait_for_file, (str(release),)))
    tc.run(MapTask(lambda s, r: (open(s, "w").close(), wait_for_file(r)), (str(started),
                                                                          str(release))))
    tc.barrier(list(given))  # (their results committed: all 7 may go in one batch, SPEC §4)
    poll(lambda: started.exists(), what="a task to start")
    locker = sqlite3.connect(ctl.db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # the write lock, held past the busy timeout
    try:
        with pytest.raises(StoreError, match="locked") as refused:
            tc.run(MapTask(tag, ("refused",)))
        assert "not accepted" in str(refused.value)
        fut = tc.submit(tag, "refused too")
        with pytest.raises(StoreError):
            fut.result(timeout=30)
        status = tc.queue_status()  # the controller keeps answering what needs no write
        assert status["pending"] == 2
        release.touch()  # the running tasks finish while nothing can be written ...
        poll(lambda: tc.queue_status()["pending"] == 0, what="the two tasks to finish")
        # ... so their results wait: unfinished to a look, answered at once (it used to wait
        # for the store, and the client gave up on the controller after 30 s)
        assert tc.get_task_result(running) is None
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert tc.get_task_result(running, block=True) is not None
    for i in range(5):
        given[tc.run(MapTask(tag, (f"after-{i}",)))] = f"after-{i}"
    # 0-4 before, 5 and 6 running, 7 refused (the submit's: never given out, never used
    # again; the refused run() was refused its lease of taskids, and so given none).
    assert sorted(given) == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]
    with pytest.raises(IndexError):
        tc.get_task_result(7)
    ctl.kill9()
    ctl.start()
    for i in range(5):
        given[tc.run(MapTask(tag, (f"restarted-{i}",)))] = f"restarted-{i}"
    assert sorted(given)[10:] == [13, 14, 15, 16, 17]  # no id was given twice
    _check_results(tc, given)
    assert tc.queue_status()["failed"] == 0
    log = ctl.log_text()
    assert log.count("cannot write") == 1, log  # the cause, logged once
    assert "writes again" in log


@pytest.mark.timeout(120)
def test_the_views_say_while_the_store_cannot_write(controller, tmp_path):
    """While the store cannot write, statistics(), `taskmill status` and /metrics say so,
    since when and why (every submit is refused meanwhile); they showed a healthy cluster,
    and only the controller's log (once) and a count of failed commits told."""
    ctl, tc = controller
    assert tc.statistics()["store_problem"] is None
    locker = sqlite3.connect(ctl.db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # the write lock, held past the busy timeout
    try:
        with pytest.raises(StoreError):
            tc.submit(tag, "refused").result(timeout=30)
        stats = tc.statistics()
        assert "locked" in stats["store_problem"] and stats["store_down_for"] >= 0
        out = subprocess.run([*TASKMILL, "status", "--connection-file", str(ctl.conn)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        said = [x for x in out.stdout.splitlines() if x.startswith("store:")]
        assert len(said) == 1 and "NOT WRITING" in said[0] and "locked" in said[0], out.stdout
        from taskmill.metrics import render_metrics

        assert "taskmill_store_writable 0" in render_metrics(stats).splitlines()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert tc.submit(tag, "after").result(timeout=30) == tag("after")
    stats = poll(lambda: [s for s in [tc.statistics()] if s["store_problem"] is None],
                 what="the store to write again")[0]
    assert stats["store_down_for"] is None


@pytest.mark.timeout(120)
def test_store_on_a_full_disk_refuses_submits_then_recovers(tmp_path):
    """A 2 MiB tmpfs holds the store; a file fills it; submits get StoreError naming the
    cause; once the file is gone, everything works and nothing was lost."""
    with small_tmpfs(tmp_path / "small", "2m") as mnt:
        _refuses_then_recovers(tmp_path, mnt)


def _refuses_then_recovers(tmp_path, mnt) -> None:
    ctl = engines = tc = None
    try:
        ctl = ControllerProcess(tmp_path, db=str(mnt / "tasks.db"))
        ctl.start()
        engines = [ctl.engine()]
        tc = TaskClient(ctl.conn, timeout=30)
        poll(lambda: len(tc.engines()) >= 1, what="an engine")
        given = {tc.run(MapTask(tag, (f"ok-{i}",))): f"ok-{i}" for i in range(3)}
        tc.barrier(list(given))  # (stored before the disk fills: run() may batch, SPEC §4)
        filler = fill_disk(mnt)
        refused = 0
        for i in range(20):  # (SQLite may still fit a few rows in pages it already has)
            try:
                tid = tc.run(MapTask(tag, ("x" * 20_000 + str(i),)))
                tc.queue_status()  # (run() may return before its task is stored: SPEC §4)
                given[tid] = "x" * 20_000 + str(i)
            except StoreError as e:
                assert "full" in str(e) or "No space" in str(e), e
                refused += 1
                break
        assert refused == 1, "the full disk never refused a submit"
        filler.unlink()
        poll(lambda: _submits(tc, given), timeout=30, what="submits to work again")
        _check_results(tc, given)
        assert tc.queue_status()["failed"] == 0
    finally:
        if tc is not None:
            tc.close()
        for e in engines or ():
            e.kill()
        if ctl is not None:
            ctl.stop()


MIB = 1024 * 1024


def filled(i, n):
    return bytes([i]) * n


def filled_once_released(release, n):
    """n bytes, once the file `release` exists (it is waited for with a deadline)."""
    import os
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return b"g" * n


@pytest.mark.timeout(180)
def test_committed_results_are_read_and_cleared_while_the_disk_is_full(tmp_path):
    """A large result does not fit on the store's disk: the store cannot write. The results
    committed before were answered only to get_task_result(block=False): a blocking read, a
    future, a barrier waited for good; a clear failed (it first committed what was queued),
    so no space could be freed through the API. Now those are answered at once, the one not
    yet written reads as unfinished, and a clear frees the space the store then writes in."""
    with small_tmpfs(tmp_path / "small", "8m") as mnt:
        _committed_results_while_full(tmp_path, mnt)


def _committed_results_while_full(tmp_path, mnt) -> None:
    ctl = engines = tc = None
    try:
        ctl = ControllerProcess(tmp_path, db=str(mnt / "tasks.db"))
        ctl.start()
        engines = [ctl.engine()]
        tc = TaskClient(ctl.conn, timeout=30)
        poll(lambda: len(tc.engines()) >= 1, what="an engine")
        futs = [tc.submit(filled, i, MIB) for i in range(3)]
        assert [f.result(timeout=60) for f in futs] == [filled(i, MIB) for i in range(3)]
        tids = [f.taskid for f in futs]
        release = tmp_path / "release"
        gated = tc.submit(filled_once_released, str(release), MIB)
        fill_disk(mnt, leave=MIB // 2)  # (less than the gated result needs)
        release.touch()
        poll(lambda: "cannot write a file" in ctl.log_text(), what="the store to fail")
        with TaskClient(ctl.conn, timeout=30) as other:  # (nothing of these tasks in memory)
            assert other.get_task_result(tids[0], block=True, timeout=15) == filled(0, MIB)
            assert other.future(tids[1]).result(timeout=15) == filled(1, MIB)
            other.barrier(tids, timeout=15)
            assert [f.result() for f in other.wait(tids, timeout=15)] == [
                filled(i, MIB) for i in range(3)]
            assert other.get_task_result(gated.taskid) is None  # (not written yet)
            with pytest.raises(TimeoutError):  # (it waits for the store)
                other.get_task_result(gated.taskid, block=True, timeout=1)
            assert other.clear(tids) == 3
        assert gated.result(timeout=30) == b"g" * MIB  # (written in the space freed)
        assert "writes again" in ctl.log_text()
        assert tc.submit(filled, 7, 10).result(timeout=30) == filled(7, 10)
        assert not any(p.name.startswith(str(tids[0])) for p in (mnt / "tasks.db.blobs").iterdir())
    finally:
        if tc is not None:
            tc.close()
        for e in engines or ():
            e.kill()
        if ctl is not None:
            ctl.stop()


def _submits(tc, given) -> bool:
    try:
        tid = tc.run(MapTask(tag, ("again",)))
        tc.queue_status()  # (run() may return before its task is stored: SPEC §4)
        given[tid] = "again"
        return True
    except StoreError:
        return False


@pytest.mark.timeout(60)
def test_a_second_controller_on_the_same_store_refuses_to_start(controller, tmp_path):
    ctl, tc = controller
    tid = tc.run(MapTask(tag, ("first",)))
    other_conn = tmp_path / "other" / "conn.json"
    second = subprocess.run(
        [*TASKMILL, "controller", "--connection-file", str(other_conn), "--db", ctl.db,
         "--no-dashboard"], capture_output=True, text=True, timeout=30)
    assert second.returncode != 0
    err = second.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err  # one clear line
    assert f"in use by another controller (pid {ctl.proc.pid})" in err, err
    assert tc.run(MapTask(tag, ("second",))) == tid + 1  # the first one serves on
    assert tc.get_task_result(tid + 1, block=True) == tag("second")


@pytest.mark.timeout(60)
def test_a_damaged_store_gives_one_clear_line(tmp_path):
    db = tmp_path / "tasks.db"
    db.write_bytes(b"garbage " * 1000)
    run = subprocess.run(
        [*TASKMILL, "controller", "--connection-file", str(tmp_path / "c.json"), "--db",
         str(db), "--no-dashboard"], capture_output=True, text=True, timeout=30)
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr, run.stderr
    assert "damaged or not a taskmill store" in run.stderr




@pytest.mark.timeout(120)
def test_a_store_deleted_under_a_running_controller_takes_no_new_tasks_and_says_why(
        controller, tmp_path):
    """Its files deleted (an `rm -rf` of the cluster's folder, a cleaner of /tmp), the store
    goes on working through the descriptors SQLite holds, but nothing written there survives
    a restart. The controller notices within a second: it takes no new task (StoreError, naming
    the cause and what to do), says so in its log once, and lets the tasks it holds finish and
    their results be read. Before, it took new tasks as if they were safe, and a restart lost
    them all."""
    import glob
    import shutil

    ctl, tc = controller
    assert tc.submit(tag, "before").result(timeout=30) == tag("before")
    started, release = tmp_path / "started", tmp_path / "release"
    held = tc.submit(lambda s, r: (open(s, "w").close(), wait_for_file(r), "held")[-1],
                     str(started), str(release))
    poll(lambda: started.exists(), what="the held task to start")
    for path in glob.glob(ctl.db + "*"):
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def refused() -> bool:
        try:
            tc.submit(tag, "after").result(timeout=30)
        except StoreError as e:
            assert "deleted or replaced" in str(e) and "--db" in str(e), e
            return True
        return False

    poll(refused, 30, "a submit to be refused")
    with pytest.raises(StoreError, match="deleted or replaced"):
        tc.run(MapTask(tag, ("a run",)))
        tc.queue_status()  # (run()'s refusal is raised by the next call)
    release.touch()
    assert held.result(timeout=60) == "held"  # (what it held finishes, and is read)
    assert tc.queue_status()["scheduled"] == 0
    assert ctl.log_text().count("deleted or replaced") == 1


@pytest.mark.timeout(120)
def test_a_controller_given_another_clusters_store_refuses_to_start_in_one_line(tmp_path):
    """A store kept from another cluster (another key): its results would fail their
    signature checks and its queued tasks be refused by every engine and failed for good.
    The controller now refuses it, in one line that says what to do."""
    db = tmp_path / "tasks.db"
    with controller_process(tmp_path / "one", db=str(db)) as ctl, \
            TaskClient(ctl.conn, timeout=30) as tc:
        tid = tc.submit(abs, -7).taskid  # (queued: no engine)
    other = subprocess.run(
        [*TASKMILL, "controller", "--connection-file", str(tmp_path / "two" / "c.json"),
         "--db", str(db), "--no-dashboard"], capture_output=True, text=True, timeout=60)
    assert other.returncode == 1
    assert other.stderr.count("\n") == 1 and "written by a cluster with another key" in \
        other.stderr, other.stderr
    with controller_process(tmp_path / "one", db=str(db), write_connection=False) as ctl, \
            TaskClient(ctl.conn, timeout=30) as tc:  # its own key: the task is still there
        assert tc.task_info(tid)["state"] == "scheduled"


@pytest.mark.timeout(120)
def test_a_store_without_its_folder_of_large_frames_is_refused_in_one_line_and_loses_nothing(
        tmp_path):
    """A store copied or moved without its `.blobs` folder (a queued task's large argument
    lives there): the controller died with a 41-line FileNotFoundError traceback. Now one
    line says what is missing and what to do; with the folder back, the task is there."""
    db = tmp_path / "tasks.db"
    with controller_process(tmp_path, db=str(db)) as ctl, TaskClient(ctl.conn, timeout=30) as tc:
        tid = tc.submit(len, b"x" * 200_000).taskid  # (queued: no engine)
    blobs = tmp_path / "tasks.db.blobs"
    assert any(blobs.iterdir())
    blobs.rename(tmp_path / "elsewhere")
    alone = subprocess.run(
        [*TASKMILL, "controller", "--connection-file", str(ctl.conn), "--db", str(db),
         "--no-dashboard"], capture_output=True, text=True, timeout=60)
    lines = [x for x in alone.stderr.splitlines() if " INFO " not in x]
    assert alone.returncode == 1 and len(lines) == 1, alone.stderr
    assert f"task {tid}'s payload cannot be read" in lines[0] and ".blobs" in lines[0]
    if blobs.exists():  # (the refused start made an empty one)
        blobs.rmdir()
    (tmp_path / "elsewhere").rename(blobs)
    with controller_process(tmp_path, db=str(db), write_connection=False, engines=1) as ctl, \
            TaskClient(ctl.conn, timeout=30) as tc:
        assert tc.future(tid).result(timeout=60) == 200_000


@pytest.mark.timeout(120)
def test_a_controller_whose_store_is_on_a_full_disk_at_start_says_so_in_one_line(tmp_path):
    """No page left for the pid in the store's lock file: an OSError traceback from the
    lock. Now one line names the file, the cause and the free space."""
    with small_tmpfs(tmp_path / "full", "1m") as mnt:
        fill_disk(mnt)
        alone = subprocess.run(
            [*TASKMILL, "controller", "--connection-file", str(tmp_path / "c.json"),
             "--db", str(mnt / "tasks.db"), "--no-dashboard"],
            capture_output=True, text=True, timeout=60)
        lines = [x for x in alone.stderr.splitlines() if " INFO " not in x]
        assert alone.returncode == 1 and len(lines) == 1, alone.stderr
        assert "No space left on device" in lines[0] and "bytes free" in lines[0]


def big(n):
    return b"x" * n


@pytest.mark.timeout(120)
def test_a_result_whose_file_was_deleted_is_an_error_naming_it_not_a_wait(controller):
    """A large result lives in a file beside the store (<db>.blobs/), which a cleaner of the
    temporary folder may delete while the store itself lives on. Reading it back failed inside
    the controller: get_task_result got "the controller failed on a result request:
    FileNotFoundError(2, ...)", and a task taking it as an argument stayed pending for ever
    (its dispatch failed half-way). Now the first is a StoreError naming the file, the second
    fails with DependencyError saying why."""
    import glob

    ctl, tc = controller
    f = tc.submit(big, 1 << 20)
    assert len(f.result(timeout=60)) == 1 << 20
    ctl.kill9()  # (the restarted controller reads it from the store, not from its cache)
    ctl.start()
    ctl.ready()
    files = glob.glob(f"{ctl.db}.blobs/{f.taskid}.result.*")
    assert files
    for path in files:
        os.unlink(path)
    with pytest.raises(StoreError, match=f"result of task {f.taskid} cannot be read.*blobs"):
        tc.get_task_result(f.taskid)
    with pytest.raises(DependencyError, match="cannot be read"):
        tc.submit(len, f).result(timeout=60)
    assert tc.queue_status()["pending"] == 0


@pytest.mark.timeout(180)
def test_a_client_of_a_controller_restarted_on_another_store_never_reads_its_tasks(tmp_path):
    """The store deleted (a cleaner of /tmp; the remedy for a lost store is a restart) and the
    controller started again on the same connection file with a new one: it numbers tasks
    from 0 again, and a client of the old store got another client's task's result for its
    taskid. Its session names its store now: the old client fails what waits with StoreError
    and refuses new requests; a new client works."""
    import shutil

    from taskmill import StringTask

    with controller_process(tmp_path) as ctl:  # (no engine yet: the task stays queued)
        old = TaskClient(ctl.conn, timeout=30)
        try:
            tid = old.run(StringTask("who = 'the old client'", pull="who"))
            fut = old.submit(tag, "old")
            old.queue_status()  # (both stored)
            ctl.kill9()
            for path in tmp_path.glob("tasks.db*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            ctl.start()
            ctl.ready()
            ctl.engines.append(ctl.engine())
            with TaskClient(ctl.conn, timeout=30) as new:
                tid2 = new.run(StringTask("who = 'the new client'", pull="who"))
                assert new.get_task_result(tid2, block=True).results == {"who": "the new client"}
                assert new.submit(tag, "new").result(timeout=60) == tag("new")
            with pytest.raises(StoreError, match="restarted on another task store"):
                fut.result(timeout=60)
            with pytest.raises(StoreError, match="restarted on another task store"):
                old.get_task_result(tid, block=True)
            with pytest.raises(StoreError, match="make a new client"):
                old.queue_status()
        finally:
            old.close()
