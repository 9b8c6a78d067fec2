"""System tests of the seed's blocking client against a real controller and real engines.

Every verb of `TaskClient` (the seed's `BlockingTaskClient`) is exercised through the shared
2-engine `cluster` fixture, except where a test needs engines of its own (properties, a lone
engine to interrupt): those start a `taskmill.Cluster` in a `with` block.

Rules these tests keep:
- They leave the shared engines as they found them: names a test sets in an engine's namespace
  are dropped again (`engine_names`), property changes happen only on private clusters, engines
  held by `gate` are released and waited for at teardown.
- They never sleep to wait for a condition: they poll with a deadline (`wait_until`), or hold an
  engine with a task that waits for a file the test creates. Nothing asserts on wall-clock time.
- Functions shipped to engines are defined inside tests or inside factories, so cloudpickle
  ships them by value (this module is not importable on the engines).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from systest import make_blocker, read_lines, wait_until

import taskmill
from taskmill import MapTask, StringTask, TaskResult

# A blocking wait sits in a lock acquire that SIGALRM, delivered to some other thread (zmq's,
# the client's I/O thread), does not interrupt: pytest-timeout's default signal method can then
# wait forever. The thread method always ends a hung test (dumping every thread's stack).
pytestmark = pytest.mark.timeout(120, method="thread")

TIME_FORMAT = "%Y/%m/%d %H:%M:%S"
UNKNOWN_TID = 987_654_321


# -- helpers ---------------------------------------------------------------------------------


def alive_engine_ids(tc: taskmill.TaskClient) -> list[int]:
    return sorted(e["engineid"] for e in tc.engines() if e["state"] != "dead")


def make_logger(fail: bool = True, message: str = "attempt failed"):
    """A function that appends a line (the engine id, or `tag`) to `path`, then fails if asked."""

    def log_attempt(path, tag=None):
        import taskmill

        line = str(taskmill.current_engine().engineid) if tag is None else tag
        with open(path, "a") as f:
            f.write(line + "\n")
        if fail:
            raise ValueError(f"{message} ({line})")
        return line

    return log_attempt


def make_where():
    """A function that returns the id of the engine it runs on."""

    def where(*_args):
        import taskmill

        return taskmill.current_engine().engineid

    return where


class Gate:
    """Holds engines with blocker tasks until `release()`; cleaned up by the fixture."""

    def __init__(self, tc: taskmill.TaskClient, folder: Path) -> None:
        self.tc = tc
        self.folder = folder
        self.release_file = folder / "gate-release"
        self.tids: list[int] = []
        self.started: list[Path] = []
        self.eids: list[int] = []

    def hold(self, eid: int, value=None) -> int:
        started = self.folder / f"gate-started-{len(self.tids)}"
        task = MapTask(make_blocker(), (str(started), str(self.release_file), value),
                       depend={"engineid": eid})
        tid = self.tc.run(task)
        self.tids.append(tid)
        self.started.append(started)
        self.eids.append(eid)
        return tid

    def hold_all(self, eids: list[int]) -> list[int]:
        tids = [self.hold(e, value=f"held {e}") for e in eids]
        self.wait_started()
        return tids

    def wait_started(self) -> None:
        wait_until(lambda: all(p.exists() for p in self.started), "the gate tasks to start")
        # With adaptive prefetch an engine that ran tiny tasks may buffer more behind a gate
        # task until the controller sees it run long; tests of where tasks wait need it not to.
        held = set(self.eids)
        wait_until(lambda: all(e["capacity"] == 1 for e in self.tc.engines()
                               if e["engineid"] in held), "held engines to take one task at a time")

    def release(self) -> None:
        self.release_file.touch()

    def close(self) -> None:
        self.release()
        if self.tids:
            self.tc.barrier(self.tids)


@pytest.fixture
def eids(client) -> list[int]:
    ids = alive_engine_ids(client)
    assert len(ids) == 2, f"the shared cluster should have 2 live engines, has {ids}"
    return ids


@pytest.fixture
def gate(client, tmp_path):
    g = Gate(client, tmp_path)
    yield g
    g.close()


@pytest.fixture
def engine_names(client, eids):
    """A list of names the test sets in engine namespaces; they are removed from every engine."""
    names: list[str] = []
    yield names
    if names:
        for e in eids:
            tr = client.run(StringTask(f"[globals().pop(n, None) for n in {names!r}]",
                                       depend={"engineid": e}), block=True)
            tr.raise_exception()


# -- construction-time validation ------------------------------------------------------------


@pytest.mark.parametrize("expression", [1, b"x = 1", None, ["x = 1"]])
def test_stringtask_expression_must_be_str(expression):
    with pytest.raises(TypeError):
        StringTask(expression)


@pytest.mark.parametrize("pull", [1, ["a", 2], ("a", None), {"a"}, b"a"])
def test_stringtask_pull_must_be_str_or_sequence_of_str(pull):
    with pytest.raises(TypeError):
        StringTask("a = 1", pull=pull)


@pytest.mark.parametrize("push", [[("a", 1)], "a=1", 5, ("a", 1)])
def test_stringtask_push_must_be_dict(push):
    with pytest.raises(TypeError):
        StringTask("pass", push=push)


@pytest.mark.parametrize("function", [None, 1, "len", [len]])
def test_maptask_function_must_be_callable(function):
    with pytest.raises(TypeError):
        MapTask(function)


@pytest.mark.parametrize("args", ["ab", 5, {1, 2}, {"a": 1}, range(3)])
def test_maptask_args_must_be_list_or_tuple(args):
    with pytest.raises(TypeError):
        MapTask(len, args)


@pytest.mark.parametrize("kwargs", [[("a", 1)], "a=1", 1, ("a",)])
def test_maptask_kwargs_must_be_dict(kwargs):
    with pytest.raises(TypeError):
        MapTask(len, (), kwargs)


def test_valid_forms_are_accepted_and_normalised():
    assert StringTask("a = 1").pull == ()
    assert StringTask("a = 1", pull="a").pull == ("a",)
    assert StringTask("a = 1", pull=["a", "b"]).pull == ("a", "b")
    assert StringTask("a = 1", pull=("a",)).pull == ("a",)
    assert StringTask("a = 1").push == {}
    m = MapTask(len)
    assert tuple(m.args) == () and m.kwargs == {}
    assert MapTask(len, [[1, 2]]).args == [[1, 2]]


@pytest.mark.parametrize("bad", ["0", 0.0, None, [0]])
def test_abort_and_get_task_result_need_an_int(client, bad):
    with pytest.raises(TypeError):
        client.abort(bad)
    with pytest.raises(TypeError):
        client.get_task_result(bad)


def test_options_changed_after_construction_are_checked_at_submit(client):
    task = StringTask("a = 1")
    task.push = ["not", "a", "dict"]
    with pytest.raises(TypeError):
        client.run(task)


def test_blocking_task_client_is_task_client():
    assert taskmill.BlockingTaskClient is taskmill.TaskClient


# -- run / get_task_result / TaskResult ------------------------------------------------------


@pytest.mark.parametrize(
    "pull, expected",
    [
        (None, {}),
        ("a", {"a": 1}),
        (["a", "b"], {"a": 1, "b": [2, 3]}),
        (("b", "c"), {"b": [2, 3], "c": "three"}),
    ],
)
def test_pull_forms(client, pull, expected):
    task = StringTask("a = 1; b = [2, 3]; c = 'three'", pull=pull, clear_after=True)
    tr = client.run(task, block=True)
    assert isinstance(tr, TaskResult)
    assert tr.failure is None
    assert tr.results == expected
    assert tr.keys == list(expected)


def test_pushed_values_are_usable_by_the_code(client):
    payload = bytes(range(256)) * 1000
    task = StringTask(
        "total = a + sum(b); size = len(blob); first = d['k'][0]",
        pull=["total", "size", "first"],
        push={"a": 10, "b": [1, 2, 3], "blob": payload, "d": {"k": ("x", "y")}},
        clear_after=True,
    )
    tr = client.run(task, block=True)
    assert tr.failure is None
    assert tr.results == {"total": 16, "size": len(payload), "first": "x"}


def test_pushed_values_can_be_pulled_back(client):
    value = {"nested": [1, {"two": 2.0}], "t": (None, True)}
    tr = client.run(StringTask("pass", pull="v", push={"v": value}, clear_after=True), block=True)
    assert tr.results == {"v": value}


def test_missing_pulled_name_fails_with_name_error(client):
    tid = client.run(StringTask("present = 1", pull=["present", "absent_name"], clear_after=True))
    tr = client.get_task_result(tid, block=True)  # carried, not raised
    assert isinstance(tr, TaskResult)
    assert isinstance(tr.failure, NameError)
    assert "absent_name" in str(tr.failure)
    assert tr.taskid == tid
    with pytest.raises(NameError):
        tr.raise_exception()
    with pytest.raises(NameError):
        tr.ns  # noqa: B018 - the attribute access is the test
    with pytest.raises(NameError):
        tr["present"]
    assert repr(tr).startswith(f"TaskResult[ID:{tid}]:")
    assert "absent_name" in repr(tr)


def test_task_result_fields(client, eids):
    code = "import sys; print('hello'); print('oops', file=sys.stderr); y = 6 * 7"
    tid = client.run(StringTask(code, pull="y", clear_after=True))
    tr = client.get_task_result(tid, block=True)
    assert isinstance(tr, TaskResult)
    assert tr.results == {"y": 42}
    assert tr.keys == ["y"]
    assert tr.failure is None
    assert tr.taskid == tid
    assert tr.engineid in eids
    assert tr.attempts == 1
    assert tr.stdout == "hello\n"
    assert tr.stderr == "oops\n"

    submitted = time.strptime(tr.submitted, TIME_FORMAT)
    completed = time.strptime(tr.completed, TIME_FORMAT)
    assert time.mktime(submitted) <= time.mktime(completed)
    # Local time, not UTC: the stamps are within the hour around now (a sanity bound, not timing).
    assert abs(time.mktime(completed) - time.time()) < 3600
    assert isinstance(tr.duration, float)
    assert tr.duration >= 0.0

    ns = tr.ns
    assert isinstance(ns, taskmill.ResultNS)
    assert ns.y == 42
    assert ns["y"] == 42  # item access too, as the seed's ResultNS
    assert "y" in ns and "not_pulled" not in ns
    assert repr(ns) == "NS{'y': 42}"
    with pytest.raises(KeyError):
        ns["not_pulled"]
    with pytest.raises(AttributeError):
        ns.y = 1
    with pytest.raises(AttributeError):
        ns.not_pulled  # noqa: B018
    with pytest.raises(AttributeError):
        tr.ns = None
    assert tr["y"] == 42
    with pytest.raises(KeyError):
        tr["not_pulled"]
    assert tr.raise_exception() is None
    assert repr(tr) == f"TaskResult[ID:{tid}]:{{'y': 42}}"


def test_failed_task_result_carries_the_remote_exception(client, eids):
    tid = client.run(StringTask("x = 1\nzz = x / 0", pull="zz", clear_after=True))
    tr = client.get_task_result(tid, block=True)
    assert isinstance(tr.failure, ZeroDivisionError)
    assert tr.results == {}
    assert tr.failure.taskid == tid
    assert tr.failure.engineid == tr.engineid
    assert tr.engineid in eids
    assert "ZeroDivisionError" in tr.failure.remote_traceback
    assert "zz = x / 0" in tr.failure.remote_traceback
    assert tr.failure.remote_traceback in str(tr.failure.__cause__)
    with pytest.raises(ZeroDivisionError):
        tr.ns  # noqa: B018
    with pytest.raises(ZeroDivisionError):
        tr["zz"]
    with pytest.raises(ZeroDivisionError):
        tr.raise_exception()
    assert repr(tr).startswith(f"TaskResult[ID:{tid}]:")
    assert "division" in repr(tr)


def test_run_returns_consecutive_int_ids_and_does_not_mutate_the_task(client):
    task = MapTask(len, (["a", "b"],))
    before = dict(vars(task))
    t1 = client.run(task)
    t2 = client.run(task)
    assert isinstance(t1, int) and not isinstance(t1, bool)
    assert t2 == t1 + 1
    assert vars(task) == before
    assert client.get_task_result(t1, block=True) == 2
    assert client.get_task_result(t2, block=True) == 2


def test_taskids_start_at_zero_on_a_fresh_controller():
    with taskmill.Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        tids = [tc.run(MapTask(abs, (-i,))) for i in range(3)]
        assert tids == [0, 1, 2]
        assert [tc.get_task_result(t, block=True) for t in tids] == [0, 1, 2]


def test_get_task_result_none_while_unfinished(client, gate, eids):
    gate.hold_all(eids)
    tid = client.run(MapTask(abs, (-5,)))
    st = client.run(StringTask("q = 1", pull="q", clear_after=True))
    assert client.get_task_result(tid) is None
    assert client.get_task_result(st, block=False) is None
    gate.release()
    assert client.get_task_result(tid, block=True) == 5
    assert client.get_task_result(st, block=True).results == {"q": 1}


def test_get_task_result_of_an_unknown_id_is_index_error(client):
    with pytest.raises(IndexError):
        client.get_task_result(UNKNOWN_TID)
    with pytest.raises(IndexError):
        client.get_task_result(UNKNOWN_TID, block=True)


# -- the namespace ---------------------------------------------------------------------------


def test_namespace_persists_between_tasks_on_one_engine(client, eids, engine_names):
    e, other = eids
    engine_names += ["tm_counter", "tm_pushed"]
    pin = {"engineid": e}
    client.run(StringTask("tm_counter = 41", depend=pin), block=True).raise_exception()
    client.run(StringTask("pass", push={"tm_pushed": "kept"}, depend=pin),
               block=True).raise_exception()
    tr = client.run(StringTask("tm_counter += 1", pull=["tm_counter", "tm_pushed"], depend=pin),
                    block=True)
    assert tr.failure is None
    assert tr.engineid == e
    assert tr.results == {"tm_counter": 42, "tm_pushed": "kept"}
    # The other engine has a namespace of its own.
    tr = client.run(StringTask("pass", pull="tm_counter", depend={"engineid": other}), block=True)
    assert tr.engineid == other
    assert isinstance(tr.failure, NameError)
    # Every namespace holds its engine's id.
    for k in eids:
        tr = client.run(StringTask("pass", pull="engineid", depend={"engineid": k}), block=True)
        assert tr.results == {"engineid": k}


def test_clear_before_resets_the_namespace(client, eids, engine_names):
    e = eids[0]
    pin = {"engineid": e}
    engine_names.append("tm_stale")
    client.run(StringTask("tm_stale = 'old'", depend=pin), block=True).raise_exception()
    tr = client.run(StringTask("pass", pull="tm_stale", depend=pin), block=True)
    assert tr.results == {"tm_stale": "old"}
    tr = client.run(StringTask("pass", pull="tm_stale", depend=pin, clear_before=True),
                    block=True)
    assert isinstance(tr.failure, NameError)
    # The reset keeps `engineid`, and pushed values arrive after the reset.
    tr = client.run(StringTask("s = engineid + v", pull="s", push={"v": 100}, depend=pin,
                               clear_before=True, clear_after=True), block=True)
    assert tr.results == {"s": e + 100}


def test_clear_after_runs_even_when_the_task_failed(client, eids, engine_names):
    e = eids[1]
    pin = {"engineid": e}
    engine_names += ["tm_left_ok", "tm_left_failed", "tm_pushed_ok"]
    tr = client.run(StringTask("tm_left_failed = 1; 1 / 0", depend=pin, clear_after=True),
                    block=True)
    assert isinstance(tr.failure, ZeroDivisionError)
    tr = client.run(StringTask("pass", pull="tm_left_failed", depend=pin), block=True)
    assert tr.engineid == e
    assert isinstance(tr.failure, NameError), "tm_left_failed survived clear_after"
    tr = client.run(StringTask("tm_left_ok = 2", pull="tm_left_ok",
                               push={"tm_pushed_ok": 3}, depend=pin, clear_after=True),
                    block=True)
    assert tr.results == {"tm_left_ok": 2}
    for name in ("tm_left_ok", "tm_pushed_ok"):
        tr = client.run(StringTask("pass", pull=name, depend=pin), block=True)
        assert tr.engineid == e
        assert isinstance(tr.failure, NameError), f"{name} survived clear_after"


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_stringtask_retries_are_counted_exactly(client, tmp_path, retries):
    log = tmp_path / "attempts.log"
    code = "open(log_path, 'a').write('x\\n')\nraise ValueError('always fails')"
    tr = client.run(StringTask(code, push={"log_path": str(log)}, retries=retries,
                               clear_after=True), block=True)
    assert isinstance(tr.failure, ValueError)
    assert str(tr.failure) == "always fails"
    assert tr.attempts == 1 + retries
    assert read_lines(log) == ["x"] * (1 + retries)


@pytest.mark.parametrize("retries", [0, 2])
def test_maptask_retries_are_counted_exactly(client, tmp_path, retries):
    log = tmp_path / "attempts.log"
    tid = client.run(MapTask(make_logger(), (str(log), "x"), retries=retries))
    with pytest.raises(ValueError, match="attempt failed"):
        client.get_task_result(tid, block=True)
    assert read_lines(log) == ["x"] * (1 + retries)


def test_a_retry_that_succeeds_gives_the_result(client, tmp_path):
    log = tmp_path / "attempts.log"
    code = textwrap.dedent("""\
        with open(log_path, 'a') as f:
            f.write('x\\n')
        with open(log_path) as f:
            n = len(f.readlines())
        if n < 3:
            raise RuntimeError(f'attempt {n} fails')
        """)
    tr = client.run(StringTask(code, pull="n", push={"log_path": str(log)}, retries=5,
                               clear_after=True), block=True)
    assert tr.failure is None
    assert tr.results == {"n": 3}
    assert tr.attempts == 3
    assert read_lines(log) == ["x"] * 3


def test_a_retry_goes_to_another_engine_when_one_is_idle(client, tmp_path, eids):
    log = tmp_path / "engines.log"
    tid = client.run(MapTask(make_logger(), (str(log),), retries=1))
    with pytest.raises(ValueError) as ei:
        client.get_task_result(tid, block=True)
    first, second = (int(x) for x in read_lines(log))
    assert {first, second} == set(eids)
    assert ei.value.engineid == second


def test_stringtask_retry_goes_to_another_engine(client, tmp_path, eids):
    log = tmp_path / "engines.log"
    code = "open(log_path, 'a').write(f'{engineid}\\n')\nraise KeyError('k')"
    tr = client.run(StringTask(code, push={"log_path": str(log)}, retries=1, clear_after=True),
                    block=True)
    assert isinstance(tr.failure, KeyError)
    first, second = (int(x) for x in read_lines(log))
    assert {first, second} == set(eids)
    assert tr.engineid == second
    assert tr.attempts == 2


# -- recovery tasks --------------------------------------------------------------------------


def test_recovery_task_result_is_the_stringtask_result(client, tmp_path):
    log = tmp_path / "chain.log"
    recovery = StringTask("open(log_path, 'a').write('B\\n'); r = 'recovered'", pull="r",
                          push={"log_path": str(log)}, clear_after=True)
    task = StringTask("open(log_path, 'a').write('A\\n'); 1 / 0", push={"log_path": str(log)},
                      retries=1, recovery_task=recovery, clear_after=True)
    tid = client.run(task)
    tr = client.get_task_result(tid, block=True)
    assert isinstance(tr, TaskResult)
    assert tr.taskid == tid
    assert tr.failure is None
    assert tr.results == {"r": "recovered"}
    assert read_lines(log) == ["A", "A", "B"]
    assert task.recovery_task is recovery  # submitting did not rewire the chain


def test_recovery_task_result_is_the_maptask_result(client, tmp_path):
    log = tmp_path / "chain.log"
    rescue = MapTask(make_logger(fail=False), (str(log), "B"))
    task = MapTask(make_logger(), (str(log), "A"), recovery_task=rescue)
    tid = client.run(task)
    assert client.get_task_result(tid, block=True) == "B"
    assert read_lines(log) == ["A", "B"]
    # The recovery's own taskid is never handed out: the next task gets the next id.
    nxt = client.run(MapTask(abs, (-1,)))
    assert nxt == tid + 1
    assert client.get_task_result(nxt, block=True) == 1


def test_failed_recovery_gives_the_recovery_failure(client, tmp_path):
    log = tmp_path / "chain.log"
    rescue = MapTask(make_logger(message="rescue failed"), (str(log), "B"))
    task = MapTask(make_logger(message="first failed"), (str(log), "A"), recovery_task=rescue)
    with pytest.raises(ValueError, match="rescue failed"):
        client.run(task, block=True)
    assert read_lines(log) == ["A", "B"]


def test_recovery_loop_a_b_a_runs_each_once_maptask(client, tmp_path):
    log = tmp_path / "chain.log"
    a = MapTask(make_logger(message="A failed"), (str(log), "A"))
    b = MapTask(make_logger(message="B failed"), (str(log), "B"), recovery_task=a)
    a.recovery_task = b
    tid = client.run(a)
    with pytest.raises(ValueError, match="B failed"):
        client.get_task_result(tid, block=True)
    assert read_lines(log) == ["A", "B"]


def test_recovery_loop_a_b_a_runs_each_once_stringtask(client, tmp_path):
    log = tmp_path / "chain.log"
    push = {"log_path": str(log)}
    a = StringTask("open(log_path, 'a').write('A\\n'); raise ValueError('A failed')", push=push,
                   clear_after=True)
    b = StringTask("open(log_path, 'a').write('B\\n'); raise ValueError('B failed')", push=push,
                   recovery_task=a, clear_after=True)
    a.recovery_task = b
    tr = client.run(a, block=True)
    assert isinstance(tr.failure, ValueError)
    assert str(tr.failure) == "B failed"
    assert read_lines(log) == ["A", "B"]


def test_a_task_that_is_its_own_recovery_runs_twice(client, tmp_path):
    log = tmp_path / "chain.log"
    a = MapTask(make_logger(), (str(log), "A"))
    a.recovery_task = a
    with pytest.raises(ValueError):
        client.run(a, block=True)
    assert read_lines(log) == ["A", "A"]


# -- depend ----------------------------------------------------------------------------------
#
# Each test holds the target engine with a gate task first, so the other engine is idle when
# the dependent task is submitted: a depend that were ignored (or a raising callable counted as
# True) would put the task on the idle engine at once.


def _depend_lands_on_target(client, gate, eids, depend_for):
    target, other = eids
    gate.hold(target)
    gate.wait_started()
    tid = client.run(MapTask(make_where(), depend=depend_for(target)))
    # Tasks are scheduled past the waiting one.
    free = client.run(MapTask(make_where()))
    assert client.get_task_result(free, block=True) == other
    assert client.get_task_result(tid) is None
    assert tid in client.queue_status(verbose=True)["scheduled"]
    gate.release()
    assert client.get_task_result(tid, block=True) == target


def test_depend_dict(client, gate, eids):
    _depend_lands_on_target(client, gate, eids, lambda t: {"engineid": t})


def test_depend_callable(client, gate, eids):
    _depend_lands_on_target(client, gate, eids, lambda t: (lambda props: props["engineid"] == t))


def test_depend_callable_that_raises_counts_as_false(client, gate, eids):
    def depend_for(target):
        def only_target(props):
            if props["engineid"] != target:
                raise RuntimeError("not this engine")
            return True

        return only_target

    _depend_lands_on_target(client, gate, eids, depend_for)


def test_depend_on_started_properties_and_the_hostname(client, eids):
    props = {e["engineid"]: e["properties"] for e in client.engines()}
    e = eids[1]
    depend = {"engineid": e, "hostname": props[e]["hostname"], "pid": props[e]["pid"]}
    assert client.run(MapTask(make_where(), depend=depend), block=True) == e


def test_unmet_depend_raises_task_timeout(client, eids):
    before = client.queue_status()
    tids = [
        client.run(StringTask("x = 1", pull="x", depend={"engineid": 10_000})),
        client.run(MapTask(abs, (-1,), depend={"no_such_property": True})),
        client.run(MapTask(abs, (-1,), depend=lambda props: False)),
        client.run(StringTask("x = 1", depend=lambda props: props["no_such_property"])),
    ]
    for tid in tids:
        with pytest.raises(taskmill.TaskTimeout):
            client.get_task_result(tid, block=True)
        with pytest.raises(taskmill.TaskTimeout):  # and again: it is the stored result
            client.get_task_result(tid)
    after = client.queue_status(verbose=True)
    assert set(tids) <= set(after["failed"])
    assert client.queue_status()["failed"] == before["failed"] + len(tids)


# -- abort -----------------------------------------------------------------------------------


def test_abort_queued_tasks(client, gate, eids, tmp_path):
    ran = tmp_path / "ran.log"
    gate.hold_all(eids)
    st = client.run(StringTask("open(p, 'a').write('s\\n')", push={"p": str(ran)},
                               clear_after=True))
    mt = client.run(MapTask(make_logger(fail=False), (str(ran), "m")))
    assert client.get_task_result(st) is None
    assert client.get_task_result(mt) is None
    scheduled = client.queue_status(verbose=True)["scheduled"]
    assert st in scheduled and mt in scheduled

    assert client.abort(st) is None
    assert client.abort(mt) is None
    for tid in (st, mt):
        with pytest.raises(taskmill.TaskAborted):
            client.get_task_result(tid)
        with pytest.raises(taskmill.TaskAborted):
            client.get_task_result(tid, block=True)
        with pytest.raises(IndexError) as ei:
            client.abort(tid)
        assert str(ei.value) == "Task Already Completed"
    status = client.queue_status(verbose=True)
    assert st in status["failed"] and mt in status["failed"]
    assert st not in status["scheduled"] and mt not in status["scheduled"]

    gate.release()
    client.barrier(gate.tids)
    assert [client.get_task_result(t) for t in gate.tids] == [f"held {e}" for e in eids]
    # Anything still queued would have run before these.
    for e in eids:
        client.run(StringTask("pass", depend={"engineid": e}), block=True)
    assert not ran.exists(), "an aborted task ran"


def test_abort_of_a_finished_task_is_index_error(client):
    tid = client.run(MapTask(abs, (-3,)))
    assert client.get_task_result(tid, block=True) == 3
    with pytest.raises(IndexError) as ei:
        client.abort(tid)
    assert str(ei.value) == "Task Already Completed"
    assert client.get_task_result(tid) == 3  # the result is still there

    failed = client.run(StringTask("1 / 0", clear_after=True))
    client.barrier(failed)
    with pytest.raises(IndexError, match="Task Already Completed"):
        client.abort(failed)


def test_abort_of_an_unknown_task_is_index_error(client):
    with pytest.raises(IndexError):
        client.abort(UNKNOWN_TID)


def test_abort_of_a_running_task_interrupts_it_and_the_engine_survives(tmp_path):
    started, release = tmp_path / "started", tmp_path / "never-created"
    attempts, rescued = tmp_path / "attempts.log", tmp_path / "rescued.log"
    with taskmill.Cluster(1, heartbeat=0.5) as c, c.client() as tc:
        (engine,) = tc.engines()
        rescue = MapTask(make_logger(fail=False), (str(rescued), "rescue"))
        blocker = make_blocker()

        def run_and_block(log, started, release):
            with open(log, "a") as f:
                f.write("x\n")
            return blocker(started, release)

        tid = tc.run(MapTask(run_and_block, (str(attempts), str(started), str(release)),
                             retries=2, recovery_task=rescue))
        wait_until(started.exists, "the task to start")
        assert tc.queue_status(verbose=True)["pending"] == [tid]
        tc.abort(tid)
        with pytest.raises(taskmill.TaskAborted):
            tc.get_task_result(tid, block=True)
        # Same engine, same process, still serving; no retry and no recovery ran.
        assert tc.run(MapTask(make_where()), block=True) == engine["engineid"]
        assert alive_engine_ids(tc) == [engine["engineid"]]
        assert c.engine_pids == {engine["engineid"]: engine["pid"]}
        assert read_lines(attempts) == ["x"]
        assert not rescued.exists()


# -- barrier and spin ------------------------------------------------------------------------


def test_barrier_on_an_int_and_a_list(client):
    def slow(x):
        import time

        time.sleep(0.2)
        return x

    one = client.run(MapTask(slow, (1,)))
    assert client.barrier(one) is None
    assert client.get_task_result(one) == 1

    ok = [client.run(MapTask(slow, (i,))) for i in range(4)]
    bad_map = client.run(MapTask(make_logger(), ("/nonexistent-dir/x.log",)))
    bad_string = client.run(StringTask("import time; time.sleep(0.2); 1 / 0", clear_after=True))
    assert client.barrier([*ok, bad_map, bad_string, UNKNOWN_TID]) is None
    assert [client.get_task_result(t) for t in ok] == [0, 1, 2, 3]
    with pytest.raises(OSError):
        client.get_task_result(bad_map)
    assert isinstance(client.get_task_result(bad_string).failure, ZeroDivisionError)
    assert client.barrier(tuple(ok)) is None
    assert client.barrier([]) is None
    assert client.barrier(UNKNOWN_TID) is None


def test_spin_returns_a_bool(client):
    result = client.spin()
    assert result is False  # nothing is waiting, so nothing is dispatched
    tid = client.run(MapTask(abs, (-2,)))
    assert isinstance(client.spin(), bool)
    assert client.get_task_result(tid, block=True) == 2
    assert client.spin() is False


# -- queue_status ----------------------------------------------------------------------------

KEYS = {"scheduled", "pending", "succeeded", "failed"}


def test_queue_status_counts_and_lists(client, gate, eids):
    before = client.queue_status()
    assert set(before) == KEYS
    assert before["scheduled"] == 0 and before["pending"] == 0
    assert all(isinstance(v, int) for v in before.values())

    held = gate.hold_all(eids)
    s_ok = client.run(StringTask("a = 1", clear_after=True))
    m_ok = client.run(MapTask(abs, (-1,)))
    s_bad = client.run(StringTask("1 / 0", clear_after=True))
    m_bad = client.run(MapTask(int, ("not a number",)))
    queued = [s_ok, m_ok, s_bad, m_bad]

    counts = client.queue_status()
    assert set(counts) == KEYS
    assert counts["scheduled"] == 4
    assert counts["pending"] == 2
    verbose = client.queue_status(verbose=True)
    assert set(verbose) == KEYS
    assert sorted(verbose["scheduled"]) == queued
    assert sorted(verbose["pending"]) == sorted(held)
    assert not set(queued + held) & set(verbose["succeeded"] + verbose["failed"])

    gate.release()
    client.barrier(queued + held)
    after = client.queue_status()
    assert after == {
        "scheduled": 0,
        "pending": 0,
        "succeeded": before["succeeded"] + 4,
        "failed": before["failed"] + 2,
    }
    verbose = client.queue_status(verbose=True)
    assert set(verbose) == KEYS
    assert verbose["scheduled"] == [] and verbose["pending"] == []
    assert {s_ok, m_ok, *held} <= set(verbose["succeeded"])
    assert {s_bad, m_bad} <= set(verbose["failed"])
    assert not {s_bad, m_bad} & set(verbose["succeeded"])
    assert len(verbose["succeeded"]) == after["succeeded"]
    assert len(verbose["failed"]) == after["failed"]


# -- clear -----------------------------------------------------------------------------------


def test_clear_one_id_a_list_and_missing_ids(client):
    tids = [client.run(MapTask(abs, (-i,))) for i in range(5)]
    client.barrier(tids)
    t0, t1, t2, t3, t4 = tids
    assert client.clear(t0) == 1
    with pytest.raises(IndexError):
        client.get_task_result(t0)
    assert client.clear([t1, t2]) == 2
    for t in (t1, t2):
        with pytest.raises(IndexError):
            client.get_task_result(t)
    with pytest.raises(KeyError) as ei:
        client.clear([t3, t0, UNKNOWN_TID])
    assert str(t0) in str(ei.value) and str(UNKNOWN_TID) in str(ei.value)
    with pytest.raises(IndexError):  # t3 was dropped although the call raised
        client.get_task_result(t3)
    assert client.get_task_result(t4) == 4
    with pytest.raises(KeyError):
        client.clear(t0)
    with pytest.raises(IndexError):
        client.abort(t0)  # a cleared task is unknown


def test_clear_all_leaves_queued_and_running_tasks(client, gate, eids):
    e, other = eids
    running = gate.hold(e, value="still here")
    gate.wait_started()
    queued = client.run(MapTask(make_where(), depend={"engineid": e}))
    done = client.run(StringTask("1 / 0", clear_after=True, depend={"engineid": other}))
    client.barrier(done)
    status = client.queue_status()
    assert status["failed"] >= 1
    assert client.clear() == status["succeeded"] + status["failed"]
    assert client.queue_status() == {"scheduled": 1, "pending": 1, "succeeded": 0, "failed": 0}
    with pytest.raises(IndexError):
        client.get_task_result(done)
    with pytest.raises(KeyError) as ei:
        client.clear([running, queued])
    assert str(running) in str(ei.value) and str(queued) in str(ei.value)
    assert client.clear() == 0
    gate.release()
    assert client.get_task_result(running, block=True) == "still here"
    assert client.get_task_result(queued, block=True) == e
    assert client.clear([running, queued]) == 2


# -- map, mapper, parallel -------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_client_map_results_in_order(client, chunksize):
    assert client.map(lambda x: x * x, range(40), chunksize=chunksize) == [x * x for x in range(40)]
    assert client.map(lambda a, b: a + b, [1, 2, 3], (10, 20, 30), chunksize=chunksize) == [
        11, 22, 33]
    assert client.map(abs, [], chunksize=chunksize) == []


def test_mapper_map_results_in_order(client):
    def slow_first(x):
        import time

        if x == 0:
            time.sleep(0.3)
        return -x

    assert client.mapper().map(slow_first, range(10)) == [-x for x in range(10)]
    assert client.mapper().map(pow, [2, 3], [5, 2]) == [32, 9]
    assert client.mapper().map(abs, []) == []


def test_map_sequences_of_unequal_length_are_value_error(client):
    with pytest.raises(ValueError):
        client.map(pow, [1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        client.mapper().map(pow, [1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        client.mapper(block=False).map(pow, [1], [])


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_client_map_raises_composite_error_naming_every_failure(client, eids, chunksize):
    def picky(x):
        if x % 3 == 0:
            raise ValueError(f"no multiples of three: {x}")
        return x

    with pytest.raises(taskmill.CompositeError) as ei:
        client.map(picky, range(10), chunksize=chunksize)
    ce = ei.value
    assert isinstance(ce, taskmill.TaskError)
    assert [f.index for f in ce.elist] == [0, 3, 6, 9]
    for f in ce.elist:
        assert isinstance(f.exception, ValueError)
        assert str(f.exception) == f"no multiples of three: {f.index}"
        assert f.engineid in eids
        assert "ValueError" in f.traceback and "picky" in f.traceback
    lines = str(ce).splitlines()
    assert len(lines) == 1 + 4
    for f, line in zip(ce.elist, lines[1:], strict=True):
        assert f"[{f.index}]" in line and "ValueError" in line
    with pytest.raises(ValueError, match="three: 3"):
        ce.raise_exception(1)
    with pytest.raises(ValueError, match="three: 0"):
        ce.raise_exception()


def test_mapper_map_raises_the_first_failure_itself(client):
    def fail_some(x):
        import time

        if x == 2:
            time.sleep(0.3)  # fails last, but comes first in input order
            raise KeyError(f"slow {x}")
        if x == 4:
            raise ValueError(f"fast {x}")
        return x

    with pytest.raises(KeyError) as ei:
        client.mapper().map(fail_some, range(6))
    assert type(ei.value) is KeyError
    assert "slow 2" in str(ei.value)
    assert isinstance(ei.value.taskid, int)
    assert "KeyError" in ei.value.remote_traceback


def test_mapper_without_blocking_returns_taskids(client):
    tids = client.mapper(block=False).map(lambda a, b: a * b, [1, 2, 3], [4, 5, 6])
    assert len(tids) == 3
    assert all(isinstance(t, int) for t in tids)
    assert tids == list(range(tids[0], tids[0] + 3))
    assert [client.get_task_result(t, block=True) for t in tids] == [4, 10, 18]


def test_mapper_options_reach_every_task(client, eids, tmp_path):
    target = eids[1]
    where = client.mapper(depend={"engineid": target}).map(make_where(), range(6))
    assert where == [target] * 6

    log = tmp_path / "attempts.log"
    with pytest.raises(ValueError):
        client.mapper(retries=2).map(make_logger(), [str(log)], ["x"])
    assert read_lines(log) == ["x"] * 3


def test_mapper_exposes_its_client_and_options_as_attributes(client, eids, tmp_path):
    """As the seed's TaskMapper: `task_controller` and each option, by name; a change to an
    option applies to the next map (and a bad value is refused there, before anything runs)."""
    recovery = MapTask(abs, (-1,))
    depend = {"engineid": eids[0]}
    m = client.mapper(clear_before=True, clear_after=True, retries=3, recovery_task=recovery,
                      depend=depend, block=False)
    assert m.task_controller is client
    assert (m.clear_before, m.clear_after, m.retries) == (True, True, 3)
    assert m.recovery_task is recovery and m.depend == depend and m.block is False
    d = client.mapper()
    assert d.task_controller is client
    assert (d.clear_before, d.clear_after, d.retries, d.recovery_task, d.depend, d.block) == (
        False, False, 0, None, None, True)

    log = tmp_path / "attempts.log"
    d.retries = 1
    with pytest.raises(ValueError):
        d.map(make_logger(), [str(log)], ["x"])
    assert read_lines(log) == ["x"] * 2
    d.retries = 0
    d.depend = {"engineid": eids[1]}
    assert d.map(make_where(), range(4)) == [eids[1]] * 4
    d.block = False
    tids = d.map(make_where(), range(2))
    assert [client.get_task_result(t, block=True) for t in tids] == [eids[1]] * 2
    d.retries = -1
    with pytest.raises(TypeError, match="retries"):
        d.map(make_where(), range(3))
    d.retries = 0
    more = d.map(make_where(), [0])
    assert more == [tids[-1] + 1]  # the refused map sent nothing
    assert client.get_task_result(more[0], block=True) == eids[1]


def test_parallel_decorator_on_two_functions(client):
    @client.parallel()
    def square(x):
        return x * x

    @client.parallel()
    def add(a, b):
        return a + b

    @client.parallel(block=False)
    def negate(x):
        return -x

    assert square([1, 2, 3]) == [1, 4, 9]
    assert add([1, 2], [10, 20]) == [11, 22]
    assert square(range(4)) == [0, 1, 4, 9]
    tids = negate([5, 6])
    assert all(isinstance(t, int) for t in tids)
    assert [client.get_task_result(t, block=True) for t in tids] == [-5, -6]
    assert square.__name__ == "square" and add.__name__ == "add"
    assert square.mapper is not add.mapper
    with pytest.raises(ValueError):
        add([1, 2], [1])


def test_parallel_decorator_keeps_its_options(client, eids):
    target = eids[0]

    @client.parallel(depend={"engineid": target})
    def pinned(x):
        import taskmill

        return taskmill.current_engine().engineid

    @client.parallel()
    def plain(x):
        return x + 1

    assert pinned(range(5)) == [target] * 5
    assert plain(range(3)) == [1, 2, 3]


# -- what a MapTask can ship -----------------------------------------------------------------


class Scaler:
    def __init__(self, k: int) -> None:
        self.k = k

    def scale(self, x: int) -> int:
        return self.k * x


def test_maptask_ships_lambdas_closures_partials_and_builtins(client):
    factor = 7

    def closure(x, offset=0):
        return factor * x + offset

    cases = [
        (MapTask(lambda x, y: x - y, (10, 3)), 7),
        (MapTask(closure, (3,)), 21),
        (MapTask(closure, (3,), {"offset": 1}), 22),
        (MapTask(functools.partial(int, base=2), ("101",)), 5),
        (MapTask(functools.partial(closure, offset=100), [1]), 107),
        (MapTask(divmod, (17, 5)), (3, 2)),
        (MapTask(max, ([3, 9, 2],)), 9),
        (MapTask(sorted, ([3, 1, 2],), {"reverse": True}), [3, 2, 1]),
        (MapTask("-".join, (["a", "b"],)), "a-b"),
        (MapTask(lambda: "no arguments"), "no arguments"),
    ]
    tids = [client.run(task) for task, _ in cases]
    assert [client.get_task_result(t, block=True) for t in tids] == [want for _, want in cases]


def test_maptask_ships_a_bound_method_of_a_local_instance(client):
    # Scaler lives in this test module, which the engines cannot import: it must go by value.
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        assert client.run(MapTask(Scaler(6).scale, (7,)), block=True) == 42
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_maptask_ships_a_function_defined_in_main(cluster, tmp_path):
    script = tmp_path / "main_script.py"
    script.write_text(textwrap.dedent("""\
        import taskmill

        OFFSET = 1000

        def triple(x):
            return 3 * x + OFFSET

        if __name__ == "__main__":
            with taskmill.TaskClient(timeout=30) as tc:
                print(repr(tc.run(taskmill.MapTask(triple, (5,)), block=True)))
                print(repr(tc.mapper().map(triple, [1, 2, 3])))
                print(repr(tc.map(triple, range(4))))
                def inner(x):
                    return triple(x) + 1
                print(repr(tc.map(inner, [0])))
        """))
    env = {**os.environ, "TASKMILL_CONNECTION": str(cluster.connection_file)}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "1015",
        "[1003, 1006, 1009]",
        "[1000, 1003, 1006, 1009]",
        "[1001]",
    ]


# -- remote exceptions -----------------------------------------------------------------------


def test_remote_exception_is_reraised_with_its_type_and_traceback(client, eids):
    def explode(x):
        raise LookupError(f"explode {x}")

    tid = client.run(MapTask(explode, (3,)))
    with pytest.raises(LookupError) as ei:
        client.get_task_result(tid, block=True)
    exc = ei.value
    assert type(exc) is LookupError
    assert str(exc) == "explode 3"
    assert exc.taskid == tid
    assert exc.engineid in eids
    assert "explode" in exc.remote_traceback
    assert "LookupError: explode 3" in exc.remote_traceback
    assert exc.__cause__ is not None
    assert exc.remote_traceback in str(exc.__cause__)
    # The stored result raises the same way again, and through run(block=True).
    with pytest.raises(LookupError):
        client.get_task_result(tid)
    with pytest.raises(LookupError, match="explode 4"):
        client.run(MapTask(explode, (4,)), block=True)


def test_remote_exception_of_a_class_defined_in_the_test(client):
    class Custom(Exception):
        pass

    def raise_custom():
        raise Custom("custom message")

    with pytest.raises(Exception) as ei:
        client.run(MapTask(raise_custom), block=True)
    assert type(ei.value).__name__ == "Custom"
    assert isinstance(ei.value, Custom)
    assert str(ei.value) == "custom message"
    assert "Custom: custom message" in ei.value.remote_traceback


def test_unpicklable_exception_arrives_as_remote_error(client, eids):
    def raise_odd():
        class OddError(Exception):
            def __init__(self, a, b):  # pickles, but cannot be rebuilt from its args
                super().__init__(f"odd {a} {b}")

        raise OddError(1, 2)

    tid = client.run(MapTask(raise_odd))
    with pytest.raises(taskmill.RemoteError) as ei:
        client.get_task_result(tid, block=True)
    exc = ei.value
    assert isinstance(exc, taskmill.TaskError)
    assert "OddError" in exc.type_name
    assert exc.message == "odd 1 2"
    assert exc.taskid == tid
    assert exc.engineid in eids
    assert "OddError" in exc.remote_traceback and "raise_odd" in exc.remote_traceback
    assert exc.remote_traceback in str(exc.__cause__)


def test_exception_whose_module_exists_only_on_the_engine_is_remote_error(client, eids, tmp_path):
    module = f"tm_engine_only_{uuid.uuid4().hex}"
    folder = tmp_path / "engine_only"
    folder.mkdir()
    (folder / f"{module}.py").write_text(
        "class EngineOnlyError(Exception):\n    pass\n")
    target = eids[0]

    def raise_engine_only(folder, module):
        import importlib
        import sys

        sys.path.insert(0, folder)
        mod = importlib.import_module(module)
        raise mod.EngineOnlyError("only on the engine")

    try:
        tid = client.run(MapTask(raise_engine_only, (str(folder), module),
                                 depend={"engineid": target}))
        with pytest.raises(taskmill.RemoteError) as ei:
            client.get_task_result(tid, block=True)
        exc = ei.value
        assert exc.type_name.endswith("EngineOnlyError")
        assert exc.message == "only on the engine"
        assert exc.taskid == tid
        assert exc.engineid == target
        assert "EngineOnlyError: only on the engine" in exc.remote_traceback
        assert exc.remote_traceback in str(exc.__cause__)
    finally:
        def forget(folder, module):
            import sys

            sys.modules.pop(module, None)
            while folder in sys.path:
                sys.path.remove(folder)

        client.run(MapTask(forget, (str(folder), module), depend={"engineid": target}),
                   block=True)


# -- current_engine and properties -----------------------------------------------------------


def test_current_engine_inside_a_task(client, eids):
    def describe():
        import taskmill

        eng = taskmill.current_engine()
        return eng.engineid, dict(eng.properties)

    table = {e["engineid"]: e for e in client.engines()}
    for e in eids:
        engineid, props = client.run(MapTask(describe, depend={"engineid": e}), block=True)
        assert engineid == e
        assert props["engineid"] == e
        assert props["pid"] == table[e]["pid"]
        assert props["hostname"] == table[e]["hostname"]


def test_current_engine_outside_an_engine_is_runtime_error():
    with pytest.raises(RuntimeError):
        taskmill.current_engine()


def test_engine_properties_depend_and_changes_by_task_code():
    props = [{"gpu": 1, "zone": "a"}, {"gpu": 0, "zone": "b"}]
    with taskmill.Cluster(2, heartbeat=0.5, unmet_timeout=1.0, engine_properties=props) as c, \
            c.client() as tc:
        table = {e["engineid"]: e for e in tc.engines()}
        gpu = next(eid for eid, e in table.items() if e["properties"]["gpu"] == 1)
        cpu = next(eid for eid, e in table.items() if e["properties"]["gpu"] == 0)
        assert table[gpu]["properties"]["zone"] == "a"

        def describe():
            import taskmill

            eng = taskmill.current_engine()
            return eng.engineid, dict(eng.properties)

        eid, seen = tc.run(MapTask(describe, depend={"gpu": 1}), block=True)
        assert eid == gpu
        assert seen["gpu"] == 1 and seen["zone"] == "a" and seen["engineid"] == gpu
        assert {"hostname", "pid"} <= set(seen)
        assert tc.run(MapTask(describe, depend=lambda p: p.get("zone") == "b"),
                      block=True)[0] == cpu

        def paint():
            import taskmill

            taskmill.current_engine().properties["color"] = "red"
            return taskmill.current_engine().engineid

        assert tc.run(MapTask(paint, depend={"gpu": 1}), block=True) == gpu
        table = {e["engineid"]: e for e in tc.engines()}
        assert table[gpu]["properties"]["color"] == "red"
        assert "color" not in table[cpu]["properties"]
        for _ in range(3):
            assert tc.run(MapTask(make_where(), depend={"color": "red"}), block=True) == gpu

        # clear_before restores the properties the engine was started with.
        tc.run(StringTask("pass", clear_before=True, depend={"gpu": 1}), block=True)
        table = {e["engineid"]: e for e in tc.engines()}
        assert "color" not in table[gpu]["properties"]
        assert table[gpu]["properties"]["gpu"] == 1
        with pytest.raises(taskmill.TaskTimeout):
            tc.run(MapTask(make_where(), depend={"color": "red"}), block=True)


# -- security: a client with the wrong key ---------------------------------------------------


def test_a_client_with_the_wrong_key_gets_no_answer(cluster, client, tmp_path):
    info = json.loads(Path(cluster.connection_file).read_text())
    info["key"] = secrets.token_hex(32)
    bad = tmp_path / "wrong-key.json"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    with pytest.raises(taskmill.ControllerUnreachable) as ei:
        taskmill.TaskClient(bad, timeout=1.0)
    assert isinstance(ei.value, TimeoutError)
    message = str(ei.value)
    assert info["client_url"] in message
    assert str(bad) in message
    assert "taskmill cluster start" in message
    # The controller keeps serving the real clients, old and new.
    assert client.run(MapTask(abs, (-9,)), block=True) == 9
    with cluster.client(timeout=10) as fresh:
        assert fresh.run(StringTask("k = 1", pull="k", clear_after=True), block=True)["k"] == 1
