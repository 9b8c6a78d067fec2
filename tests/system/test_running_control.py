"""System tests of control over running tasks: abort, output capture, `after=` graphs,
properties changed by task code, and TaskRejectError.

Real processes throughout: the shared 2-engine `cluster` fixture where the engines are left as
they were found, and a private `taskmill.Cluster` where a test changes engine properties or needs
to know which engine a task lands on first.

Rules these tests keep (as in tests/system/conftest.py):
- No sleeping to wait for a condition: poll with a deadline (`wait_until`), or hold an engine with
  a task that waits for a file the test creates. Nothing asserts on wall-clock durations; the
  pytest timeout is the bound. (Abort latencies are measured and printed, see `-s`.)
- Names a test sets in an engine's namespace are removed again (`engine_names`); an aborted task
  must leave its engine serving, and every abort test checks that it does.
- Functions shipped to engines are defined inside tests or factories, so cloudpickle ships them
  by value.
"""

from __future__ import annotations

import random
import textwrap
import time
from pathlib import Path

import pytest
from systest import (
    UNKNOWN_TID,
    alive_engines,
    make_blocker,
    make_logger,
    make_where,
    read_lines,
    wait_until,
)

import taskmill
from taskmill import MapTask, StringTask, TaskResult

# The thread method always ends a hung test (see tests/system/conftest.py).
pytestmark = pytest.mark.timeout(120, method="thread")

# -- helpers ---------------------------------------------------------------------------------


def make_stamp():
    """A function that returns `time.time_ns()` taken as the last thing it does."""

    def stamp(*_args):
        import time

        return time.time_ns()

    return stamp


def who_am_i(tc: taskmill.TaskClient, eid: int, extra_pull=()) -> TaskResult:
    """A StringTask pinned to engine `eid` that reports the engine's pid and id (and more)."""
    tr = tc.run(StringTask("import os as _tm_os\n_tm_pid = _tm_os.getpid()",
                           pull=["_tm_pid", "engineid", *extra_pull], depend={"engineid": eid}),
                block=True)
    assert isinstance(tr, TaskResult)
    return tr


@pytest.fixture
def engine_names(engine_names):
    """conftest's `engine_names`, with the names `who_am_i` sets: removed from every engine."""
    engine_names += ["_tm_os", "_tm_pid"]
    return engine_names


# -- 1. abort of a running task: interrupted, no retry, no recovery, same engine -------------
#
# Abort latency, from abort() to the next task pinned to the same engine having finished (so it
# includes the interruption, the engine's report and one more task), measured with `pytest -s`
# on the 2-core, loaded development machine over three runs of this file:
#   MapTask   `while True: pass` 0.010-0.021 s   `time.sleep(1000)` 0.005-0.012 s
#   StringTask `while True: pass` 0.010-0.034 s  `time.sleep(1000)` 0.008-0.014 s
#   `except Exception` loop (map / string) 0.007-0.013 s
# and in a stress run (2 x 400 aborts of both kinds, two 1-engine clusters side by side): median
# 0.017 s, max 0.156 s, the engine never replaced. get_task_result raises TaskAborted as soon as
# abort() has returned: the controller finishes the task itself.


SPIN_BODY = "while True:\n    pass\n"
SLEEP_BODY = "import time\ntime.sleep(1000)\n"
CATCH_ALL_BODY = textwrap.dedent("""\
    import time
    while True:
        try:
            time.sleep(0.01)
        except Exception:
            pass
    """)


def _string_code(body: str) -> str:
    # The first attempt marks `started` and runs `body`; a retry (there must be none) only logs,
    # so that a bug shows as an extra line in the log rather than as a hung engine.
    return textwrap.dedent("""\
        with open(tm_log, 'a') as _tm_f:
            _tm_f.write('x\\n')
        with open(tm_log) as _tm_f:
            _tm_n = len(_tm_f.readlines())
        if _tm_n == 1:
            open(tm_started, 'w').close()
        """) + textwrap.indent(body, "    ")


def _map_function(body: str):
    """A function with the same behaviour as `_string_code(body)`."""
    source = "def run_body(tm_log, tm_started):\n" + textwrap.indent(
        _string_code(body) + "return 'retried'\n", "    ")
    ns: dict = {}
    exec(compile(source, "<run_body>", "exec"), ns)
    return ns["run_body"]


def _abort_running(client, cluster, eid, tmp_path, kind, body, label):
    log, started, rescued = tmp_path / "attempts.log", tmp_path / "started", tmp_path / "rescued"
    pin = {"engineid": eid}
    before = alive_engines(client)
    pid = before[eid]["pid"]

    # A name set by an earlier StringTask on that engine must survive the abort.
    client.run(StringTask("tm_kept = 'still here'", depend=pin), block=True).raise_exception()

    if kind == "string":
        rescue = StringTask("open(tm_rescued, 'w').close()", push={"tm_rescued": str(rescued)})
        task = StringTask(_string_code(body), push={"tm_log": str(log), "tm_started": str(started)},
                          retries=2, recovery_task=rescue, depend=pin)
    else:
        rescue = MapTask(make_logger(fail=False), (str(rescued), "rescue"))
        task = MapTask(_map_function(body), (str(log), str(started)), retries=2,
                       recovery_task=rescue, depend=pin)
    tid = client.run(task)
    wait_until(started.exists, "the task to start running")
    assert client.queue_status(verbose=True)["pending"] == [tid]
    assert client.get_task_result(tid) is None

    t0 = time.monotonic()
    assert client.abort(tid) is None
    # A failure decided by the controller: raised for every task type, StringTask included.
    with pytest.raises(taskmill.TaskAborted):
        client.get_task_result(tid)
    with pytest.raises(taskmill.TaskAborted):
        client.get_task_result(tid, block=True)
    with pytest.raises(IndexError, match="Task Already Completed"):
        client.abort(tid)

    # The same engine (same id, same process) runs the next task, its namespace intact.
    tr = who_am_i(client, eid, extra_pull=["tm_kept"])
    latency = time.monotonic() - t0
    print(f"\nabort latency {label}: {latency:.3f}s (abort() -> next task done on engine {eid})")
    assert tr.failure is None, tr.failure
    assert tr.engineid == eid
    assert tr.results == {"_tm_pid": pid, "engineid": eid, "tm_kept": "still here"}

    after = alive_engines(client)
    # Nothing died, nothing was replaced: the same engines with the same processes.
    assert {e: r["pid"] for e, r in after.items()} == {e: r["pid"] for e, r in before.items()}
    assert cluster.engine_pids.get(eid) == pid
    # No retry (on either engine) and no recovery ran.
    for e in after:
        client.run(StringTask("pass", depend={"engineid": e}), block=True).raise_exception()
    assert read_lines(log) == ["x"]
    assert not rescued.exists()
    status = client.queue_status(verbose=True)
    assert tid in status["failed"]
    assert tid not in status["scheduled"] + status["pending"] + status["succeeded"]


@pytest.mark.parametrize("body", [SPIN_BODY, SLEEP_BODY], ids=["spin", "sleep"])
@pytest.mark.parametrize("kind", ["map", "string"])
def test_abort_of_a_running_task_interrupts_it_on_the_same_engine(
        client, cluster, eids, engine_names, tmp_path, kind, body):
    engine_names += ["tm_kept", "tm_log", "tm_started", "tm_rescued", "_tm_f", "_tm_n", "time"]
    label = f"{kind}/{'spin' if body is SPIN_BODY else 'sleep'}"
    _abort_running(client, cluster, eids[0], tmp_path, kind, body, label)


@pytest.mark.parametrize("kind", ["map", "string"])
def test_abort_ends_a_task_that_catches_exception_in_a_loop(
        client, cluster, eids, engine_names, tmp_path, kind):
    # TaskInterrupted is a BaseException: `except Exception` in task code does not swallow it.
    engine_names += ["tm_kept", "tm_log", "tm_started", "tm_rescued", "_tm_f", "_tm_n", "time"]
    _abort_running(client, cluster, eids[1], tmp_path, kind, CATCH_ALL_BODY, f"{kind}/catch")


# -- 3. output capture -----------------------------------------------------------------------


def test_stdout_and_stderr_of_a_stringtask_are_captured(client):
    code = textwrap.dedent("""\
        import sys
        print('hello', 42)
        sys.stdout.write('no newline')
        sys.stderr.write('to stderr\\n')
        print('also stderr', file=sys.stderr)
        """)
    tr = client.run(StringTask(code, clear_after=True), block=True)
    assert tr.failure is None
    assert tr.stdout == "hello 42\nno newline"
    assert tr.stderr == "to stderr\nalso stderr\n"


def test_output_of_a_function_called_by_a_stringtask_is_captured(client):
    # A MapTask has no TaskResult; its functions print the same way, checked through a StringTask
    # that calls one (pushed, so it is the same shipped function a MapTask would call).
    def chatty(n):
        import sys

        for i in range(n):
            print(f"line {i}")
        sys.stderr.write("warned\n")
        return n

    tr = client.run(StringTask("tm_r = chatty(3)", pull="tm_r", push={"chatty": chatty},
                               clear_after=True), block=True)
    assert tr.failure is None
    assert tr.results == {"tm_r": 3}
    assert tr.stdout == "line 0\nline 1\nline 2\n"
    assert tr.stderr == "warned\n"
    # The same function as a MapTask runs fine, and its output does not leak into the captures
    # of the next task.
    assert client.run(MapTask(chatty, (2,)), block=True) == 2
    tr = client.run(StringTask("pass", clear_after=True), block=True)
    assert tr.stdout == "" and tr.stderr == ""


def test_failed_stringtask_keeps_its_output(client):
    tr = client.run(StringTask("print('before'); import sys; sys.stderr.write('e'); 1 / 0",
                               clear_after=True), block=True)
    assert isinstance(tr.failure, ZeroDivisionError)
    assert tr.stdout == "before\n"
    assert tr.stderr == "e"


def _vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_100_mb_of_output_is_truncated(client, cluster, eids, engine_names):
    limit = 1 << 20
    hwm_before = _vm_kib(cluster.controller_pid, "VmHWM")
    code = textwrap.dedent("""\
        import sys
        for _ in range(100):
            sys.stdout.write('x' * 1_000_000)
        for _ in range(100):
            sys.stderr.write('e' * 1_000_000)
        done = True
        """)
    tr = client.run(StringTask(code, pull="done", clear_after=True), block=True)
    assert tr.failure is None
    assert tr.results == {"done": True}
    for text, char in ((tr.stdout, "x"), (tr.stderr, "e")):
        assert len(text) <= limit + 200, len(text)
        assert text.startswith(char * 1000)
        kept = text.rstrip("\n").rsplit("\n", 1)[0]
        assert set(kept) == {char}
        assert len(kept) >= limit // 2
        marker = text[len(kept):]
        assert "truncated" in marker.lower(), marker

    # The controller did not hold the 100 MB (its peak RSS rose by far less), and it serves on.
    hwm_after = _vm_kib(cluster.controller_pid, "VmHWM")
    assert hwm_after - hwm_before < 64 * 1024, (hwm_before, hwm_after)
    for e in eids:
        assert who_am_i(client, e).engineid == e
    # Stored results of other tasks are unaffected; this one can be fetched again.
    again = client.get_task_result(tr.taskid)
    assert again.stdout == tr.stdout
    client.clear(tr.taskid)


# -- 4. after= graphs ------------------------------------------------------------------------


def test_a_1000_task_diamond_lattice_runs_in_dependency_order(client, tmp_path):
    started, release = tmp_path / "root-started", tmp_path / "root-release"

    def root_task(started, release):
        import os
        import time

        open(started, "w").close()
        end = time.monotonic() + 90
        while not os.path.exists(release):
            if time.monotonic() > end:
                raise TimeoutError("never released")
            time.sleep(0.01)
        return time.time_ns()

    stamp = make_stamp()
    width = 499
    deps: dict[int, list[int]] = {}
    root = client.run(MapTask(root_task, (str(started), str(release))))
    deps[root] = []
    middle = [client.run(MapTask(stamp, (i,), after=root)) for i in range(width)]  # an int
    for t in middle:
        deps[t] = [root]
    lower = []
    for i in range(width):
        pair = [middle[i], middle[(i + 1) % width]]  # a list
        t = client.run(MapTask(stamp, (i,), after=pair))
        deps[t] = pair
        lower.append(t)
    sink = client.run(MapTask(stamp, after=tuple(lower)))  # a tuple
    deps[sink] = list(lower)
    assert len(deps) == 1000

    # Nothing below the root runs while the root is held.
    wait_until(started.exists, "the root to start")
    status = client.queue_status(verbose=True)
    assert status["pending"] == [root]
    assert set(deps) - {root} <= set(status["scheduled"])
    assert client.get_task_result(middle[0]) is None
    assert client.get_task_result(sink) is None

    release.touch()
    client.barrier(list(deps))
    stamps = {t: client.get_task_result(t, block=True) for t in deps}
    assert all(isinstance(s, int) for s in stamps.values())
    late = [(t, d) for t, ds in deps.items() for d in ds if not stamps[t] > stamps[d]]
    assert not late, f"{len(late)} tasks ran before a task they wait for, e.g. {late[:5]}"
    assert stamps[sink] == max(stamps.values())
    client.clear(list(deps))


def test_a_failure_fails_exactly_its_descendants(client, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    rng = random.Random(20240611)
    n, failing = 150, 12

    def fail_when_released(started, release):
        import os
        import time

        open(started, "w").close()
        end = time.monotonic() + 90
        while not os.path.exists(release):
            if time.monotonic() > end:
                raise TimeoutError("never released")
            time.sleep(0.01)
        raise ValueError("the failing node")

    def ident(i):
        return i

    tids: list[int] = []
    parents: list[list[int]] = []  # indices
    for i in range(n):
        k = 0 if i == 0 else rng.choice([0, 1, 1, 2, 2, 3])
        ps = sorted(rng.sample(range(i), min(k, i)))
        if i > failing and i % 7 == 0 and failing not in ps:
            ps.append(failing)  # make sure the failing node has descendants
        parents.append(ps)
        after = [tids[p] for p in ps]
        if len(after) == 1 and i % 2:
            after = after[0]  # an int now and then
        if i == failing:
            task = MapTask(fail_when_released, (str(started), str(release)), after=after)
        elif i % 2:
            task = StringTask(f"tm_r = {i}", pull="tm_r", clear_after=True, after=after)
        else:
            task = MapTask(ident, (i,), after=after)
        tids.append(client.run(task))
        if i == failing:
            wait_until(started.exists, "the failing node to start")

    descendants: set[int] = set()
    for i in range(failing + 1, n):
        if any(p == failing or p in descendants for p in parents[i]):
            descendants.add(i)
    assert len(descendants) >= 10
    assert len(set(range(n)) - descendants - {failing}) >= 10

    release.touch()
    client.barrier(tids)
    with pytest.raises(ValueError, match="the failing node"):
        client.get_task_result(tids[failing], block=True)
    for i in range(n):
        if i == failing:
            continue
        if i in descendants:
            # Raised for every task type (StringTask included), not carried in a TaskResult.
            with pytest.raises(taskmill.DependencyError):
                client.get_task_result(tids[i], block=True)
        elif i % 2:
            tr = client.get_task_result(tids[i], block=True)
            assert tr.failure is None, (i, tr.failure)
            assert tr.results == {"tm_r": i}
        else:
            assert client.get_task_result(tids[i], block=True) == i
    status = client.queue_status(verbose=True)
    assert {tids[i] for i in descendants} <= set(status["failed"])
    client.clear(tids)


def test_after_an_unknown_failed_or_aborted_task_fails_at_once(client):
    stamp = make_stamp()
    failed_string = client.run(StringTask("1 / 0", clear_after=True))
    failed_map = client.run(MapTask(int, ("not a number",)))
    never = client.run(MapTask(stamp, depend={"engineid": -1}))  # no engine satisfies it
    client.abort(never)
    ok = client.run(MapTask(abs, (-1,)))
    client.barrier([failed_string, failed_map, never, ok])
    assert client.get_task_result(ok) == 1

    for bad in (UNKNOWN_TID, failed_string, failed_map, never):
        for after in (bad, [ok, bad], (bad,)):
            for task in (MapTask(stamp, after=after),
                         StringTask("tm_x = 1", clear_after=True, after=after)):
                tid = client.run(task)
                # Finished when the taskid comes back: no need to block.
                with pytest.raises(taskmill.DependencyError):
                    client.get_task_result(tid)
                with pytest.raises(taskmill.DependencyError):
                    client.get_task_result(tid, block=True)


def test_after_accepts_an_int_a_list_and_a_tuple_of_finished_tasks(client):
    first = client.run(MapTask(abs, (-1,)))
    second = client.run(StringTask("tm_v = 2", pull="tm_v", clear_after=True))
    client.barrier([first, second])
    assert client.run(MapTask(abs, (-3,), after=first), block=True) == 3
    assert client.run(MapTask(abs, (-4,), after=[first, second]), block=True) == 4
    assert client.run(MapTask(abs, (-5,), after=(second,)), block=True) == 5
    assert client.run(MapTask(abs, (-6,), after=[]), block=True) == 6
    tr = client.run(StringTask("tm_w = 7", pull="tm_w", clear_after=True, after=first),
                    block=True)
    assert tr.results == {"tm_w": 7}


# -- 5. properties changed by task code ------------------------------------------------------


def test_properties_set_by_task_code_reach_the_controller_with_the_result(tmp_path):
    order, release, started = tmp_path / "order.log", tmp_path / "release", tmp_path / "started"
    with taskmill.Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        (eid,) = alive_engines(tc)
        blocker = make_blocker()

        def paint_when_released(started, release):
            import taskmill

            blocker(started, release)
            taskmill.current_engine().properties["k"] = "v"
            return taskmill.current_engine().engineid

        def note(path, tag):
            with open(path, "a") as f:
                f.write(tag + "\n")
            return tag

        waiting = tc.run(MapTask(note, (str(order), "waiting"), depend={"k": "v"}))
        assert tc.get_task_result(waiting) is None
        painter = tc.run(MapTask(paint_when_released, (str(started), str(release))))
        wait_until(started.exists, "the painter to start")
        plain = tc.run(MapTask(note, (str(order), "plain")))
        status = tc.queue_status(verbose=True)
        assert status["pending"] == [painter]
        assert sorted(status["scheduled"]) == [waiting, plain]

        release.touch()
        assert tc.get_task_result(painter, block=True) == eid
        # The properties came with the result: the controller knows them as soon as it is in.
        assert tc.engines()[0]["properties"]["k"] == "v"
        assert tc.get_task_result(waiting, block=True) == "waiting"
        assert tc.get_task_result(plain, block=True) == "plain"
        # The waiting task was made runnable by that very report, so it (the older one) ran
        # before the plain task queued behind it; had the properties come later (heartbeat),
        # the plain task would have gone first.
        assert read_lines(order) == ["waiting", "plain"]

        # A StringTask changes properties too, and a callable depend sees the change.
        waiting2 = tc.run(MapTask(make_where(), depend=lambda p: p.get("level") == 2))
        assert tc.get_task_result(waiting2) is None
        tr = tc.run(StringTask("import taskmill\ntaskmill.current_engine().properties['level'] = 2"),
                    block=True)
        assert tr.failure is None
        assert tc.engines()[0]["properties"]["level"] == 2
        assert tc.get_task_result(waiting2, block=True) == eid


# -- 6. TaskRejectError ----------------------------------------------------------------------


def make_picky(reject_all: bool = False):
    """Logs its engine id, then rejects engine 0 (or every engine)."""

    def picky(path):
        import taskmill

        eid = taskmill.current_engine().engineid
        with open(path, "a") as f:
            f.write(f"{eid}\n")
        if reject_all or eid == 0:
            raise taskmill.TaskRejectError(f"not on engine {eid}")
        return eid

    return picky


PICKY_CODE = textwrap.dedent("""\
    import taskmill
    tm_eid = taskmill.current_engine().engineid
    with open(tm_path, 'a') as f:
        f.write(f'{tm_eid}\\n')
    if tm_reject_all or tm_eid == 0:
        raise taskmill.TaskRejectError(f'not on engine {tm_eid}')
    """)


def test_a_rejected_task_goes_to_another_engine(tmp_path):
    """Engine 0 rejects; engine 1 is held. The task goes back to the queue, skips engine 0
    for 1 s, is offered to engine 0 again after that (it has no retries left, but engine 1
    has not been offered it yet), and runs on engine 1 once that one is free. No rejection
    counts an attempt."""
    with taskmill.Cluster(2, heartbeat=0.5) as c, c.client() as tc:
        c.wait_for_engines(2, 30)
        assert sorted(alive_engines(tc)) == [0, 1]
        for kind in ("map", "string"):
            log = tmp_path / f"{kind}.log"
            started, release = tmp_path / f"{kind}-started", tmp_path / f"{kind}-release"
            # Hold engine 1, so the task goes to engine 0 first.
            gate = tc.run(MapTask(make_blocker(), (str(started), str(release)),
                                  depend={"engineid": 1}))
            wait_until(started.exists, "engine 1 to be held")
            if kind == "map":
                tid = tc.run(MapTask(make_picky(), (str(log),)))  # retries=0
            else:
                tid = tc.run(StringTask(PICKY_CODE, pull="tm_eid", clear_after=True,
                                        push={"tm_path": str(log), "tm_reject_all": False}))
            wait_until(lambda: read_lines(log) == ["0"], "engine 0 to reject the task")  # noqa: B023
            # Back in the queue (once the controller has the report), waiting for engine 1.
            wait_until(lambda: tid in tc.queue_status(verbose=True)["scheduled"],  # noqa: B023
                       "the rejected task to be queued again")
            assert tc.get_task_result(tid) is None
            # Its skip of engine 0 ends (1 s): engine 0 is asked again, and rejects again.
            wait_until(lambda: read_lines(log)[:2] == ["0", "0"],  # noqa: B023
                       "engine 0 to be offered the task again after its skip")
            assert tc.get_task_result(tid) is None
            release.touch()
            if kind == "map":
                assert tc.get_task_result(tid, block=True) == 1
            else:
                tr = tc.get_task_result(tid, block=True)
                assert tr.failure is None, tr.failure
                assert tr.engineid == 1
                assert tr.results == {"tm_eid": 1}
                assert tr.attempts == 1  # a rejection is not a failed attempt
            lines = read_lines(log)
            assert lines[-1] == "1" and set(lines[:-1]) == {"0"} and len(lines) >= 3, lines
            tc.barrier(gate)
            # Engine 0 still takes other tasks.
            assert tc.run(MapTask(make_where(), depend={"engineid": 0}), block=True) == 0


def test_a_task_every_engine_rejects_fails_with_task_reject_error(tmp_path):
    """Each rejection uses a retry; with none left, the task fails with TaskRejectError once
    every live engine has been offered it."""
    with taskmill.Cluster(2, heartbeat=0.5) as c, c.client() as tc:
        c.wait_for_engines(2, 30)
        log = tmp_path / "map.log"
        tid = tc.run(MapTask(make_picky(reject_all=True), (str(log),), retries=2))
        with pytest.raises(taskmill.TaskRejectError, match="not on engine"):
            tc.get_task_result(tid, block=True)
        lines = read_lines(log)  # three offers (retries + 1), on both engines
        assert len(lines) == 3 and set(lines) == {"0", "1"}, lines

        log = tmp_path / "string.log"
        tr = tc.run(StringTask(PICKY_CODE, clear_after=True,
                               push={"tm_path": str(log), "tm_reject_all": True}), block=True)
        assert isinstance(tr, TaskResult)
        assert isinstance(tr.failure, taskmill.TaskRejectError)
        with pytest.raises(taskmill.TaskRejectError):
            tr.raise_exception()
        assert sorted(read_lines(log)) == ["0", "1"]  # retries=0: once on each engine
        assert tid in tc.queue_status(verbose=True)["failed"]
        # Both engines still serve.
        for e in (0, 1):
            assert tc.run(MapTask(make_where(), depend={"engineid": e}), block=True) == e


REJECT_UNLESS_RUN = textwrap.dedent("""\
    from taskmill import TaskRejectError
    if not run:
        with open(tm_path, 'a') as f:
            f.write(f'{engineid}\\n')
        raise TaskRejectError('not yet')
    x = engineid
    """)


def test_the_seeds_example_tasks_wait_by_rejecting_until_engines_are_ready(tmp_path):
    """The original's example: 10 tasks with retries=20 reject every engine until `run` is
    set on two of four; they all finish, on those two."""
    with taskmill.Cluster(4, heartbeat=0.5) as c, c.client() as tc:
        c.wait_for_engines(4, 30)
        assert sorted(alive_engines(tc)) == [0, 1, 2, 3]
        tc.run_all(StringTask("run = False"))
        log = tmp_path / "rejections.log"
        tids = [tc.run(StringTask(REJECT_UNLESS_RUN, pull="x", push={"tm_path": str(log)},
                                  retries=20)) for _ in range(10)]
        ready = (1, 3)
        for k in ready:
            tc.run(StringTask("run = True", depend={"engineid": k}))
        results = [tc.get_task_result(tid, block=True) for tid in tids]
        for tr in results:
            assert tr.failure is None, tr.failure
            assert tr.engineid in ready and tr.ns.x == tr.engineid
            assert tr.attempts == 1  # the rejections counted none
        # Every engine was held with run = False when the first four tasks arrived.
        assert len(read_lines(log)) >= 4
        assert set(read_lines(log)) <= {"0", "1", "2", "3"}


def test_retries_0_rejected_everywhere_is_offered_to_each_live_engine_once(tmp_path):
    with taskmill.Cluster(4, heartbeat=0.5) as c, c.client() as tc:
        c.wait_for_engines(4, 30)
        assert sorted(alive_engines(tc)) == [0, 1, 2, 3]
        log = tmp_path / "once.log"
        tr = tc.run(StringTask(PICKY_CODE, clear_after=True,
                               push={"tm_path": str(log), "tm_reject_all": True}), block=True)
        assert isinstance(tr.failure, taskmill.TaskRejectError)
        assert tr.engineid in (0, 1, 2, 3)
        assert sorted(read_lines(log)) == ["0", "1", "2", "3"]  # each engine once, then final
        # With retries, each rejection uses one: retries + 1 offers, every engine among them
        # (the first four at once, the others after a 1 s skip).
        log = tmp_path / "retries.log"
        tid = tc.run(MapTask(make_picky(reject_all=True), (str(log),), retries=5))
        with pytest.raises(taskmill.TaskRejectError):
            tc.get_task_result(tid, block=True)
        lines = read_lines(log)
        assert len(lines) == 6 and set(lines) == {"0", "1", "2", "3"}, lines


# -- durations of the tasks the controller ends ----------------------------------------------


def _marks_start_then_sleeps(path: str) -> None:
    import time

    with open(path + ".tmp", "w") as f:
        f.write(repr(time.time()))
    import os

    os.replace(path + ".tmp", path)
    time.sleep(60)


def test_an_aborted_or_engine_dead_running_task_reports_the_time_it_ran(tmp_path):
    """A running task that is aborted, or whose engine dies, reported `duration` 0.0 (probe
    G, item C): the controller wrote 0.0 for every outcome it decides. It is now the time
    from when its engine was known to run it (its dispatch to an engine that held nothing
    else) to the abort, or to when the dead engine was last heard: at least the time the
    task itself saw pass before then, and within started..completed."""
    import os
    import signal

    with taskmill.Cluster(1, heartbeat=0.5, dashboard=False) as c, c.client() as tc:
        # aborted
        mark = tmp_path / "aborted"
        f = tc.submit(_marks_start_then_sleeps, str(mark))
        wait_until(mark.exists, "the task to start running")
        ran_from = float(mark.read_text())
        asked = time.time()
        f.cancel()
        with pytest.raises(taskmill.TaskAborted):
            tc.get_task_result(f.taskid, block=True, timeout=60)
        meta = f.metadata
        assert meta["duration"] >= asked - ran_from - 1e-3, meta
        assert meta["duration"] <= meta["completed"] - meta["started"] + 1e-6, meta
        assert tc.task_info(f.taskid)["duration"] == meta["duration"]
        # its engine killed
        mark = tmp_path / "killed"
        g = tc.submit(_marks_start_then_sleeps, str(mark))
        wait_until(mark.exists, "the second task to start running")
        ran_from = float(mark.read_text())
        heard = {}

        def heard_after_the_start() -> bool:
            stats = tc.statistics()
            for e in stats["engines"]:
                if e["state"] != "dead":
                    heard["at"] = stats["time"] - e["last_heartbeat_ago"]
            return heard.get("at", 0.0) > ran_from

        wait_until(heard_after_the_start, "a heartbeat after the task started")
        (eid, pid), = [(e["engineid"], e["pid"]) for e in tc.engines() if e["state"] != "dead"]
        os.kill(pid, signal.SIGKILL)
        died = g.exception(timeout=60)
        meta = g.metadata
        assert isinstance(died, taskmill.EngineDied) and f"engine {eid}" in str(died), died
        assert meta["duration"] >= heard["at"] - ran_from - 1e-3 > 0, meta
        assert meta["duration"] <= meta["completed"] - meta["started"] + 1e-6, meta
