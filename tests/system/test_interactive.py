"""Functions defined interactively run over the engine's namespace; local modules travel by value.

SPEC §2: a MapTask whose function was defined in `__main__` (a script, a notebook, a console)
runs with the engine's namespace as its globals: it sees what earlier tasks set there, its
`global` statements write there, and the client-side globals it names travel with it and are
set there first. Functions from importable modules keep their module's globals. A module
beside the client's script or in its working folder, which the engines cannot import, travels
by value.

Functions are "defined interactively" here as a notebook or a console defines them: by running
source in a namespace whose `__name__` is `"__main__"` (`interactive` below). The test module
itself is shipped by value (tests/conftest.py) but is not `__main__`, so its own functions keep
their globals. Two tests run real client scripts in a folder of their own (subprocesses).

Every test leaves the shared engines as it found them: the `client` fixture here clears their
namespaces after the test.
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import posixpath
import subprocess
import sys
import textwrap
import uuid

import pytest

import taskmill
from taskmill import CompositeError, MapTask, StringTask

pytestmark = pytest.mark.timeout(120, method="thread")


def interactive(source: str) -> dict:
    """Run `source` as a notebook cell or a console runs it; its namespace (`__main__`)."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), ns)
    return ns


@pytest.fixture
def client(cluster):
    tc = cluster.client()
    yield tc
    tc.run_all(StringTask("pass", clear_after=True))  # names set by the test go
    tc.close()


def pulled(tc: taskmill.TaskClient, name: str) -> dict[int, object]:
    """engineid -> the value of `name` in that engine's namespace."""
    return {eid: tr[name] for eid, tr in tc.run_all(StringTask("", pull=name)).items()}


def test_the_issue_pattern_set_up_the_engines_then_send_functions(client, eids):
    tc = client
    ns = interactive("""
        def f(*_):
            if not run:                       # `run` exists only on the engines
                raise ValueError("not yet")
            return 3.0e8
    """)
    f = ns["f"]
    tc.run_all(StringTask("run = False"))
    with pytest.raises(ValueError, match="not yet"):
        tc.submit(f).result()
    with pytest.raises(CompositeError) as info:
        tc.run_all(MapTask(f))
    assert sorted(e.engineid for e in info.value.elist) == eids
    assert all(isinstance(e.exception, ValueError) for e in info.value.elist), info.value

    tc.run_all(StringTask("run = True"))
    assert tc.run_all(MapTask(f)) == {eid: 3.0e8 for eid in eids}
    assert tc.submit(f).result() == 3.0e8
    assert tc.run(MapTask(f), block=True) == 3.0e8                 # the seed's MapTask
    assert tc.map(f, range(40)) == [3.0e8] * 40                     # chunks: run_chunk(f, ...)
    assert tc.map(f, range(40), chunksize=1) == [3.0e8] * 40
    assert tc.mapper().map(f, range(6)) == [3.0e8] * 6              # the seed's mapper
    assert list(tc.imap(f, range(10))) == [3.0e8] * 10


def test_a_global_statement_writes_the_engine_namespace(client, eids):
    tc = client
    ns = interactive("""
        def bump(*_):
            global counter
            counter += 1
            return counter
    """)
    tc.run_all(StringTask("counter = 0"))
    assert tc.run_all(MapTask(ns["bump"])) == {eid: 1 for eid in eids}
    assert tc.run_all(MapTask(ns["bump"])) == {eid: 2 for eid in eids}
    assert pulled(tc, "counter") == {eid: 2 for eid in eids}
    assert min(tc.map(ns["bump"], range(10))) >= 3  # through run_chunk, on either engine
    assert sum(pulled(tc, "counter").values()) == 4 + 10


def test_clear_before_then_a_task_that_uses_shipped_globals(client, eids):
    """The engine keeps the function (unpickled once); a task that clears the namespace first
    still finds the globals the function brought (a helper, a constant)."""
    tc = client
    ns = interactive("""
        K = 5
        def helper(x):
            return x * K
        def f(x):
            global seen
            seen = helper(x)
            return seen
    """)
    f = ns["f"]
    assert tc.run_all(MapTask(f, (2,))) == {eid: 10 for eid in eids}
    tc.run_all(StringTask("K = 0; helper = None; other = 1"))
    for x in (3, 4):  # the second time too: the function comes from the engine's cache
        assert tc.run_all(MapTask(f, (x,), clear_before=True)) == {eid: 5 * x for eid in eids}
        assert pulled(tc, "seen") == {eid: 5 * x for eid in eids}
    assert pulled(tc, "K") == {eid: 5 for eid in eids}
    with pytest.raises(NameError):  # cleared, and not brought back
        pulled(tc, "other")


def test_a_client_global_is_set_over_the_engine_value_of_that_name(client, eids):
    tc = client
    tc.run_all(StringTask("K = 'engine'; other = 'engine'"))
    ns = interactive("""
        K = 'client'
        def f():
            return K, other
    """)
    assert tc.run_all(MapTask(ns["f"])) == {eid: ("client", "engine") for eid in eids}
    assert pulled(tc, "K") == {eid: "client" for eid in eids}  # set there first, and stays
    ns["K"] = "client, changed"
    assert tc.submit(ns["f"]).result() == ("client, changed", "engine")
    tc.run_all(StringTask("K = 'engine again'"))
    assert tc.run_all(MapTask(ns["f"])) == {eid: ("client, changed", "engine") for eid in eids}


def test_a_mutable_global_arrives_as_the_client_has_it_every_time(client, eids):
    """The engine's function cache never hands a task the list an earlier task changed."""
    tc = client
    ns = interactive("""
        data = [1]
        def grow():
            data.append(0)
            return len(data)
    """)
    for _ in range(3):
        assert tc.run_all(MapTask(ns["grow"])) == {eid: 2 for eid in eids}
    ns["data"].append(5)
    assert tc.run_all(MapTask(ns["grow"])) == {eid: 3 for eid in eids}


def test_lambdas_closures_partials_methods_pushes_and_helpers(client, eids):
    """Every way a function defined interactively reaches an engine sees its namespace."""
    tc = client
    tc.run_all(StringTask("offset = 100"))
    ns = interactive("""
        import functools

        def helper(x):
            return x + offset
        def calls_helper(x):
            return helper(x)
        def fact(n):                      # recursion: itself among its globals
            return 1 + offset if n == 0 else n * fact(n - 1)
        def make_adder(k):
            def add(x):
                return x + k + offset
            return add
        class Model:
            scale = 2
            def predict(self, x):
                return self.scale * x + offset
            @staticmethod
            def static(x):
                return x - offset
        shifted = lambda x: x + offset
    """)
    assert tc.submit(ns["shifted"], 1).result() == 101
    assert tc.submit(ns["calls_helper"], 2).result() == 102
    assert tc.submit(ns["fact"], 3).result() == 6 * 101
    assert tc.submit(ns["make_adder"](10), 3).result() == 113
    assert tc.submit(functools.partial(ns["helper"], 4)).result() == 104
    assert tc.submit(ns["Model"]().predict, 5).result() == 110
    assert tc.submit(ns["Model"].static, 5).result() == -95
    assert tc.map(ns["make_adder"](1), [1, 2]) == [102, 103]        # a closure, as an argument
    assert tc.map(functools.partial(ns["helper"]), [1]) == [101]    # a partial, as an argument
    assert tc.mapper().map(ns["Model"]().predict, [1]) == [102]
    # A function sent as an argument or a pushed value is rebuilt over the namespace too.
    assert tc.submit(lambda g, x: g(x), ns["helper"], 7).result() == 107
    got = tc.run_all(StringTask("y = g(1)", push={"g": ns["calls_helper"]}, pull="y"))
    assert {eid: tr["y"] for eid, tr in got.items()} == {eid: 101 for eid in eids}


def test_functions_from_importable_modules_keep_their_module_globals(client, eids, cluster):
    """(A guard: this held before interactive functions, and must go on holding.) Names in
    the engine namespace that shadow a module's globals change nothing for its functions, also
    when a function defined interactively calls them."""
    tc = client
    tc.run_all(StringTask("os = None; _get_sep = None; fspath = None; sep = '!'; "
                          "zip_sequences = None"))
    assert tc.submit(posixpath.join, "a", "b").result() == "a/b"
    assert tc.submit(os.getpid).result() in set(cluster.engine_pids.values())
    assert tc.map(posixpath.basename, ["x/y", "z"]) == ["y", "z"]
    # taskmill is installed on the engines: its functions travel by name
    from taskmill.client.maps import zip_sequences
    assert tc.submit(zip_sequences, [[1, 2], "ab"]).result() == [(1, "a"), (2, "b")]
    ns = interactive("""
        import posixpath
        def joined(a, b):
            return posixpath.join(a, b)
    """)
    assert tc.map(ns["joined"], ["a", "c"], ["b", "d"]) == ["a/b", "c/d"]


# -- modules beside the client's script or in its working folder ------------------------------

MODULE = """
    SCALE = 3

    def scale(x):
        return x * SCALE          # the module's SCALE, never the engine's

    class Point:
        def __init__(self, v):
            self.v = v
"""

CLIENT = """
    import json, sys
    import taskmill
    from taskmill import StringTask
    from {module} import Point, scale
    from {package}.core import double

    def uses_engine_name(x):   # this script's own function: over the engine namespace
        return greeting + str(x)

    tc = taskmill.TaskClient()
    tc.run_all(StringTask("SCALE = 1000; greeting = 'hi '"))
    out = {{
        "map": tc.map(scale, range(5)),
        "submit": tc.submit(scale, 7).result(),
        "package": tc.map(double, [1, 2]),
        "point": isinstance(tc.submit(lambda p: Point(p.v + 1), Point(1)).result(), Point),
        "main": tc.map(uses_engine_name, [1]),
    }}
    print(json.dumps(out))
    tc.close()
"""


def _write_local_modules(folder, module: str, package: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(MODULE))
    (folder / package).mkdir()
    (folder / package / "__init__.py").write_text("")
    (folder / package / "util.py").write_text("FACTOR = 2\n")
    (folder / package / "core.py").write_text(
        "from . import util\n\ndef double(x):\n    return x * util.FACTOR\n")


def _not_importable_on_engines(tc: taskmill.TaskClient, names: list[str]) -> None:
    got = tc.run_all(StringTask("import importlib.util as _u\n"
                                "found = [n for n in names if _u.find_spec(n) is not None]",
                                push={"names": names}, pull="found"))
    assert all(tr["found"] == [] for tr in got.values()), got


@pytest.mark.parametrize("where", ["beside the script", "in the working folder"])
def test_a_local_module_travels_by_value(client, cluster, tmp_path, where):
    """A client in a folder of its own (the engines run elsewhere and cannot import its
    modules) maps a function of a module it imported from beside its script, or from its
    working folder (a console, `python -c`): the module travels by value."""
    tag = uuid.uuid4().hex[:8]
    module, package = f"tm_local_mod_{tag}", f"tm_local_pkg_{tag}"
    _not_importable_on_engines(client, [module, package])
    script_dir, cwd = tmp_path / "script", tmp_path / "work"
    cwd.mkdir()
    source = textwrap.dedent(CLIENT.format(module=module, package=package))
    if where == "beside the script":
        _write_local_modules(script_dir, module, package)
        (script_dir / "client.py").write_text(source)
        cmd = [sys.executable, str(script_dir / "client.py")]
    else:
        _write_local_modules(cwd, module, package)
        cmd = [sys.executable, "-c", source]
    env = dict(os.environ, TASKMILL_CONNECTION=str(cluster.connection_file))
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"map": [0, 3, 6, 9, 12], "submit": 21, "package": [2, 4], "point": True,
                   "main": ["hi 1"]}
    _not_importable_on_engines(client, [module, package])  # still not: it came by value
