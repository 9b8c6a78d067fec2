"""The pickling pieces behind SPEC §2's interactive functions and local modules (taskmill.wire).

- A function defined in `__main__` unpickled with an engine namespace (`load_into`) has that
  namespace as its globals, and the globals it brought are set there; without one it is
  cloudpickle's function, as before. Functions of modules keep their globals.
- The engine's cache (`FunctionLoads`) sets those globals again on every hit, and keeps no
  function made of something that can change in place.
- `is_local_module` / `ship_local_modules`: modules beside the script or in the working folder,
  not installed, are pickled by value, and the client's function-pickle cache never serves a
  pickle made before that.
The system tests (tests/system/test_interactive.py) run all of it on real engines.
"""

from __future__ import annotations

import builtins
import importlib
import sys
import uuid

import cloudpickle
import pytest
from testhelp import script

from taskmill import wire
from taskmill.wire import (
    FunctionLoads,
    FunctionPickles,
    dumps,
    is_local_module,
    load_into,
    loads,
    local_modules,
)


def engine_namespace(**names) -> dict:
    return {"__name__": "__main__", "__builtins__": builtins, "engineid": 0, **names}


def one_frame(frames: list) -> list[bytes]:
    assert len(frames) == 1
    return [bytes(getattr(frames[0], "buffer", frames[0]))]


def test_a_main_function_is_rebuilt_over_the_engine_namespace():
    ns = script('''
        K = 5
        def helper(x):
            return x * K
        def f(x, *, twice=False):
            "doc"
            global seen
            seen = helper(x) + offset
            return 2 * seen if twice else seen
        f.tag = "kept"
    ''')
    engine = engine_namespace(offset=100, K=0)
    f, applied = load_into(dumps(ns["f"]), engine)
    assert f.__globals__ is engine and engine["helper"].__globals__ is engine
    assert engine["K"] == 5  # the client's value, set first
    assert f(1) == 105 and engine["seen"] == 105 and f(1, twice=True) == 210
    assert (f.__name__, f.__qualname__, f.__doc__, f.__module__, f.tag, f.__kwdefaults__) == (
        "f", "f", "doc", "__main__", "kept", {"twice": False})
    assert {"K", "helper"} <= {k for g in applied for k in g}


def test_recursion_closures_lambdas_partials_and_methods():
    import functools

    ns = script('''
        def fact(n):
            return base if n == 0 else n * fact(n - 1)
        def make(k):
            def add(x):
                return x + k + base
            return add
        class C:
            def m(self, x):
                return x * base
        lam = lambda x: x - base
    ''')
    payload = (ns["fact"], ns["make"](10), functools.partial(ns["lam"], 1), ns["C"]().m)
    engine = engine_namespace(base=2)
    fact, add, part, method = loads(dumps(payload), engine)
    assert (fact(3), add(1), part(), method(4)) == (12, 13, -1, 8)
    assert all(g.__globals__ is engine for g in (fact, add, part.func, method.__func__))


def test_without_an_engine_namespace_it_is_cloudpickles_function():
    """A client unpickling a result, or the controller a `depend`: the function's own globals."""
    ns = script('''
        K = 3
        def f():
            return K
    ''')
    f = loads(dumps(ns["f"]))
    assert f() == 3 and f.__globals__ is not ns and f.__globals__["K"] == 3
    assert cloudpickle.loads(one_frame(dumps(ns["f"]))[0])() == 3


@pytest.fixture
def module_by_value():
    """A module registered by value (as the engines' tests are), removed after."""
    name = f"tm_interactive_mod_{uuid.uuid4().hex[:8]}"
    module = type(sys)(name)
    sys.modules[name] = module
    exec("K = 'module'\ndef f():\n    return K\n", module.__dict__)
    cloudpickle.register_pickle_by_value(module)
    yield module
    cloudpickle.unregister_pickle_by_value(module)
    sys.modules.pop(name, None)


def test_functions_of_modules_keep_their_globals(module_by_value):
    engine = engine_namespace(K="engine")
    f, applied = load_into(dumps(module_by_value.f), engine)
    assert f() == "module" and f.__globals__ is not engine
    assert applied == [] and engine["K"] == "engine"


def test_the_engine_cache_sets_the_globals_again_on_every_hit():
    ns = script('''
        K = 5
        def f():
            return K
    ''')
    engine = engine_namespace()
    cache = FunctionLoads(namespace=engine)
    frames = one_frame(FunctionPickles().dumps(ns["f"]))
    f = cache.loads(frames)
    engine.clear()  # as the engine's clear_before does: the same dict, emptied, and its
    engine.update(engine_namespace(K="engine"))  # own names set again
    assert cache.loads(frames) is f and f() == 5 and engine["K"] == 5


def test_the_engine_cache_keeps_nothing_that_can_change_in_place():
    ns = script('''
        data = [1]
        def grow(acc=[]):
            data.append(0)
            acc.append(0)
            return len(data), len(acc)
    ''')
    engine = engine_namespace()
    cache = FunctionLoads(namespace=engine)
    frames = one_frame(dumps(ns["grow"]))
    assert [cache.loads(frames)() for _ in range(3)] == [(2, 1)] * 3
    plain = FunctionLoads()  # (no namespace: a by-value function with globals of its own)
    assert [plain.loads(frames)() for _ in range(3)] == [(2, 1)] * 3


def test_the_engine_cache_never_serves_a_function_a_task_changed_by_rebinding(
        module_by_value):
    """A closure's cell rebound (`nonlocal`), an attribute set on the function, a global of a
    module sent by value rebound: the cached function ran as the earlier task left it
    ([1, 2, 3, 4] where the client's function gives 1 each time)."""
    ns = script('''
        def make():
            n = 0
            def count():
                nonlocal n
                n += 1
                return n
            return count
        count = make()
        def tagged():
            tagged.calls = getattr(tagged, "calls", 0) + 1
            return tagged.calls
    ''')
    module_by_value.counter = 0
    exec("def bump():\n    global counter\n    counter += 1\n    return counter",
         module_by_value.__dict__)
    for func in (ns["count"], ns["tagged"], module_by_value.bump):
        cache = FunctionLoads(namespace=engine_namespace())
        frames = one_frame(FunctionPickles().dumps(func))
        assert [cache.loads(frames)() for _ in range(4)] == [1, 1, 1, 1], func
    unchanged = script('''
        def same(x=2):
            return x
    ''')["same"]
    cache = FunctionLoads(namespace=engine_namespace())
    frames = one_frame(FunctionPickles().dumps(unchanged))
    assert cache.loads(frames) is cache.loads(frames)  # (still served from the cache)


# -- local modules ------------------------------------------------------------------------------


@pytest.fixture
def local_module(tmp_path, monkeypatch):
    """A module file in a fresh working folder, imported from there; forgotten after (and the
    process-wide switch and registrations put back as they were)."""
    name = f"tm_local_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("K = 1\n\ndef f():\n    return K\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(local_modules, "shipping", False)
    module = importlib.import_module(name)
    yield module
    local_modules.checked.pop(name, None)
    if name in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.unregister_pickle_by_value(module)
    sys.modules.pop(name, None)


def test_which_modules_are_local(local_module, tmp_path, monkeypatch):
    import json

    import taskmill

    assert is_local_module(local_module.__name__)  # in the working folder, not installed
    for name in ("json", "cloudpickle", "pytest", "taskmill", "taskmill.wire", "sys"):
        assert not is_local_module(name), name
    assert taskmill and json
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # elsewhere, and not beside this process's script
    assert not is_local_module(local_module.__name__)


def test_a_local_module_travels_by_value_and_the_cache_sees_the_switch(local_module, tmp_path):
    """Pickled by reference while the switch is off (a process that is no client); by value
    once a client turns it on, and the client's function-pickle cache does not serve the
    pickle it made before."""
    cache = FunctionPickles()
    by_reference = one_frame(cache.dumps(local_module.f))
    assert by_reference == one_frame(dumps(local_module.f))
    wire.ship_local_modules()
    by_value = one_frame(cache.dumps(local_module.f))
    assert by_value != by_reference and by_value == one_frame(dumps(local_module.f))
    assert cache.dumps(local_module.f) == cache.dumps(local_module.f)
    name = local_module.__name__
    folder = str(tmp_path)
    saved = sys.modules.pop(name)  # as on an engine, which cannot import it
    sys.path.remove(folder)
    try:
        assert loads(by_value)() == 1
        with pytest.raises(ModuleNotFoundError):
            loads(by_reference)
    finally:
        sys.path.insert(0, folder)
        sys.modules[name] = saved
