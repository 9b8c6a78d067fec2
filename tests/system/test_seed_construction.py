"""The seed API, making tasks and clients: what StringTask, MapTask and the client accept, and
a client with the wrong key.

The seed's blocking client (`TaskClient`, the seed's `BlockingTaskClient`) against a real
controller and real engines: the shared 2-engine `cluster` fixture, or a `taskmill.Cluster` of
a test's own where it needs engines of its own (properties, a lone engine to interrupt). The
rules these tests keep are in tests/system/conftest.py; the other verbs are in the other
test_seed_*.py files.
"""

from __future__ import annotations

import pytest
from systest import wrong_key_file

import taskmill
from taskmill import MapTask, StringTask

# The thread method always ends a hung test (see tests/system/conftest.py).
pytestmark = pytest.mark.timeout(120, method="thread")


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


# -- security: a client with the wrong key ---------------------------------------------------


def test_a_client_with_the_wrong_key_gets_no_answer(cluster, client, tmp_path):
    bad, info = wrong_key_file(cluster.connection_file, tmp_path / "wrong-key.json")
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
