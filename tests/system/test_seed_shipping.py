"""The seed API, what travels: the functions a MapTask can ship, and remote exceptions.

The seed's blocking client (`TaskClient`, the seed's `BlockingTaskClient`) against a real
controller and real engines: the shared 2-engine `cluster` fixture, or a `taskmill.Cluster` of
a test's own where it needs engines of its own (properties, a lone engine to interrupt). The
rules these tests keep are in tests/system/conftest.py; the other verbs are in the other
test_seed_*.py files.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

import taskmill
from taskmill import MapTask

# The thread method always ends a hung test (see tests/system/conftest.py).
pytestmark = pytest.mark.timeout(120, method="thread")


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


def test_ship_module_sends_a_module_the_engines_cannot_import(client, tmp_path, monkeypatch):
    """A module neither installed nor beside the script (here: a folder only this process has
    on sys.path) cannot be imported by engines; `taskmill.ship_module` sends it by value, with
    its submodules."""
    import importlib

    import taskmill

    pkg = tmp_path / "only_here_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("def triple(x):\n    return 3 * x\n")
    (pkg / "sub" / "__init__.py").write_text("OFFSET = 7\ndef plus(x):\n    return x + OFFSET\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("only_here_pkg")
    sub = importlib.import_module("only_here_pkg.sub")
    with pytest.raises(Exception, match="only_here_pkg"):
        client.submit(mod.triple, 2).result(timeout=60)
    taskmill.ship_module(mod)
    assert client.submit(mod.triple, 2).result(timeout=60) == 6
    assert client.submit(sub.plus, 1).result(timeout=60) == 8
    taskmill.ship_module("only_here_pkg.sub")  # (by name too)
    with pytest.raises(ValueError, match="no module of that name"):
        taskmill.ship_module("not_imported_anywhere")
