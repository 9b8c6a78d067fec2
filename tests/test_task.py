"""Unit tests of task.py's plain data: ResultNS (SPEC.md §3, §6.3)."""

from __future__ import annotations

import pytest

from taskmill import ResultNS, TaskResult


def make_result(results: dict, failure: BaseException | None = None) -> TaskResult:
    return TaskResult(results, failure, taskid=3, engineid=0, submitted="2026/01/01 00:00:00",
                      completed="2026/01/01 00:00:01", duration=1.0)


def test_result_ns_gives_values_as_attributes_and_items():
    ns = make_result({"a": 17, "foo": [0, 1, 2]}).ns
    assert isinstance(ns, ResultNS)
    assert ns.a == 17 and ns["a"] == 17
    assert ns.foo == [0, 1, 2] and ns["foo"] == [0, 1, 2]
    assert "a" in ns and "foo" in ns
    assert "b" not in ns and 17 not in ns
    assert list(ns) == ["a", "foo"]
    with pytest.raises(KeyError, match="'b'"):
        ns["b"]
    with pytest.raises(AttributeError, match="'b'"):
        ns.b  # noqa: B018 - the attribute access is the test


def test_result_ns_repr_is_the_seeds():
    assert repr(make_result({"a": 17}).ns) == "NS{'a': 17}"
    # the seed listed the names in sorted order (it used dir())
    assert repr(make_result({"z": 1, "a": "x"}).ns) == "NS{'a': 'x', 'z': 1}"
    assert repr(make_result({}).ns) == "NS{}"


def test_result_ns_is_read_only():
    tr = make_result({"a": 17})
    ns = tr.ns
    with pytest.raises(AttributeError):
        ns.a = 1
    with pytest.raises(AttributeError):
        del ns.a
    with pytest.raises(TypeError):
        ns["a"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        tr.ns = None  # type: ignore[misc]
    assert ns["a"] == 17


def test_result_ns_reraises_the_failure():
    tr = make_result({}, ZeroDivisionError("boom"))
    with pytest.raises(ZeroDivisionError):
        tr.ns  # noqa: B018


def test_a_recovery_task_set_after_construction_is_checked_at_run():
    """A non-task recovery_task set after construction gave AttributeError ('str' object has
    no attribute 'recovery_task') from deep inside run()."""
    from taskmill import MapTask, StringTask
    from taskmill.client.codec import encode_task
    from taskmill.wire import Wire

    wire = Wire(b"k" * 32)
    for bad in ("x", 42):
        task = StringTask("1/0")
        task.recovery_task = bad
        with pytest.raises(TypeError, match="recovery_task must be a StringTask or MapTask"):
            encode_task(task, wire)
        inner = StringTask("q = 1")
        inner.recovery_task = bad  # (deeper in the chain)
        with pytest.raises(TypeError, match="recovery_task must be"):
            encode_task(MapTask(abs, (1,), recovery_task=inner), wire)


@pytest.mark.parametrize("after", [0, [3], (5, 6)])
def test_a_recovery_tasks_after_is_refused_not_ignored(after):
    """A recovery task's after= was dropped without a word (the recovery ran whatever
    became of those tasks); it is refused, naming what to do instead."""
    from taskmill import StringTask
    from taskmill.client.codec import encode_task
    from taskmill.wire import Wire

    wire = Wire(b"k" * 32)
    task = StringTask("1/0", recovery_task=StringTask("q = 1", after=after))
    with pytest.raises(ValueError, match="a recovery task's after= .* cannot be honoured"):
        encode_task(task, wire)
    encode_task(StringTask("1/0", after=after, recovery_task=StringTask("q = 1")), wire)
    encode_task(StringTask("1/0", recovery_task=StringTask("q = 1", after=[])), wire)
