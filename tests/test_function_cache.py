"""The client's cache of function pickles (wire.FunctionPickles) never returns a stale pickle.

The property checked everywhere: whatever was done to a function or to what it refers to, the
cache returns exactly the bytes that pickling the function now gives. Functions are defined as
a script defines them (in `__main__`, so cloudpickle pickles them by value), then something
they are made of is changed: a class attribute, a module registered by value, a global, a
closure, the function itself; a table lists the cases, and hypothesis mutates random nested
values in place. Another table checks that unchanged functions are still served from the cache
(the cache is worth ~20 µs of client CPU per submit: see README).
"""

from __future__ import annotations

import sys
import textwrap
import types

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testhelp import script

from taskmill.wire import FunctionPickles, dumps


def as_bytes(frames: list) -> list[bytes]:
    return [bytes(getattr(f, "buffer", f)) for f in frames]


def served_fresh(cache: FunctionPickles, func) -> None:
    """The property: the cache gives what pickling `func` now gives, byte for byte."""
    assert as_bytes(cache.dumps(func)) == as_bytes(dumps(func))


@pytest.fixture
def modules():
    """Modules made for a test (in sys.modules, some registered by value), removed after."""
    made: list[str] = []

    def make(name: str, source: str = "", *, by_value: bool = False,
             package: bool = False) -> types.ModuleType:
        module = types.ModuleType(name)
        if package:
            module.__path__ = []
            module.__package__ = name
        sys.modules[name] = module
        made.append(name)
        exec(textwrap.dedent(source), module.__dict__)
        if by_value:
            cloudpickle.register_pickle_by_value(module)
        return module

    yield make
    for name in reversed(made):
        module = sys.modules.pop(name, None)
        try:
            cloudpickle.unregister_pickle_by_value(module)
        except (ValueError, TypeError):
            pass


# (what, the script, what is done after the first pickle)
CHANGES = [
    ("a class attribute", """
        class Params:
            alpha = 1
        def f(x):
            return x * Params.alpha
     """, "Params.alpha = 10"),
    ("a method of a class", """
        class C:
            def m(self):
                return 1
        def f():
            return C().m()
     """, "C.m = lambda self: 2"),
    ("an attribute of an instance", """
        class C:
            pass
        obj = C()
        obj.v = 1
        def f():
            return obj.v
     """, "obj.v = 2"),
    ("a global dict, in place", """
        d = {"a": 1}
        def f():
            return d["a"]
     """, "d['a'] = 2"),
    ("a global list, in place", """
        xs = [1]
        def f():
            return sum(xs)
     """, "xs.append(2)"),
    ("a global set, in place", """
        s = {1}
        def f():
            return len(s)
     """, "s.add(2)"),
    ("a global bytearray, in place", """
        b = bytearray(b"abc")
        def f():
            return bytes(b)
     """, "b[0] = 120"),
    ("a numpy array, in place", """
        import numpy as np
        arr = np.zeros(3)
        def f():
            return arr.sum()
     """, "arr[0] = 5.0"),
    ("a list inside a global tuple", """
        t = ([1], 2)
        def f():
            return t[0][0]
     """, "t[0][0] = 3"),
    ("a global rebound", """
        K = 1
        def f():
            return K
     """, "K = 2"),
    ("a global defined later", """
        def f():
            return later
     """, "later = 3"),
    ("a global of a function it calls", """
        K = 1
        def h():
            return K
        def f():
            return h()
     """, "K = 2"),
    ("a global of a recursive function", """
        K = 1
        def f(n):
            return K if n == 0 else f(n - 1)
     """, "K = 5"),
    ("a function it calls, rebound", """
        def h():
            return 1
        def f():
            return h()
     """, "def h():\n    return 2"),
    ("a list in a closure, in place", """
        def make():
            items = [1]
            def f():
                return len(items)
            return f, items
        f, items = make()
     """, "items.append(2)"),
    ("a closure cell rebound (nonlocal)", """
        def make():
            n = 1
            def f():
                return n
            def bump():
                nonlocal n
                n += 1
            return f, bump
        f, bump = make()
     """, "bump()"),
    ("a nested function's closure", """
        def make():
            n = [1]
            def inner():
                return n[0]
            def f():
                return inner()
            return f, n
        f, n = make()
     """, "n[0] = 2"),
    ("a mutable default, in place", """
        def f(acc=[]):
            return len(acc)
     """, "f.__defaults__[0].append(1)"),
    ("the defaults, reassigned", """
        def f(k=1):
            return k
     """, "f.__defaults__ = (2,)"),
    ("the keyword defaults, in place", """
        def f(*, k=1):
            return k
     """, "f.__kwdefaults__['k'] = 2"),
    ("the annotations, in place", """
        def f(x: int) -> int:
            return x
     """, "f.__annotations__['x'] = str"),
    ("the docstring", """
        def f():
            "old"
     """, "f.__doc__ = 'new'"),
    ("the qualname", """
        def f():
            return 1
     """, "f.__qualname__ = 'g'"),
    ("the code", """
        def f():
            return 1
        def g():
            return 2
     """, "f.__code__ = g.__code__"),
    ("an attribute of the function", """
        def f():
            return 1
     """, "f.tag = 'x'"),
    ("the object behind a bound builtin method", """
        items = [1]
        push = items.append
        def f():
            return push
     """, "items.append(2)"),
    ("a lambda's global", """
        K = 1
        f = lambda: K
     """, "K = 2"),
]


@pytest.mark.parametrize("what, source, change", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_change_is_always_seen(what, source, change):
    ns = script(source)
    f = ns["f"]
    cache = FunctionPickles()
    served_fresh(cache, f)
    served_fresh(cache, f)
    before = as_bytes(dumps(f))
    exec(textwrap.dedent(change), ns)
    assert as_bytes(dumps(f)) != before, f"{what}: the change does not change the pickle"
    served_fresh(cache, f)


def test_a_class_attribute_changed_in_a_script_reaches_the_function():
    """The reported case, by value: the unpickled function computes with the new value."""
    ns = script("""
        class Params:
            alpha = 1
        def f(x):
            return x * Params.alpha
    """)
    cache = FunctionPickles()
    assert cloudpickle.loads(b"".join(as_bytes(cache.dumps(ns["f"]))))(1) == 1
    ns["Params"].alpha = 10
    assert cloudpickle.loads(b"".join(as_bytes(cache.dumps(ns["f"]))))(1) == 10


def test_modules_registered_by_value(modules):
    mod = modules("tm_cache_byvalue", """
        VALUE = 1
        CONFIG = {"a": 1}
        def g():
            return VALUE
        def h():
            return CONFIG["a"]
    """, by_value=True)
    ns = script("""
        import tm_cache_byvalue as mod
        def uses_attribute():
            return mod.VALUE
        def calls_function():
            return mod.g()
    """)
    cache = FunctionPickles()
    funcs = [ns["uses_attribute"], ns["calls_function"], mod.g, mod.h]
    for f in funcs:
        served_fresh(cache, f)
    mod.VALUE = 2
    mod.CONFIG["a"] = 2
    for f in funcs:
        served_fresh(cache, f)


def test_a_package_whose_submodule_is_imported_later(modules):
    """cloudpickle sends along the submodules of a package named by the function that are
    imported at the time, so the pickle depends on sys.modules."""
    modules("tm_cache_pkg", package=True)
    ns = script("""
        import tm_cache_pkg
        def f():
            return tm_cache_pkg.sub.X
    """)
    cache = FunctionPickles()
    served_fresh(cache, ns["f"])
    before = as_bytes(dumps(ns["f"]))
    modules("tm_cache_pkg.sub", "X = 1")
    assert as_bytes(dumps(ns["f"])) != before
    served_fresh(cache, ns["f"])


UNCHANGED = [
    ("a function of nothing", "def f():\n    return None"),
    ("an int global", "K = 3\ndef f(x):\n    return x * K"),
    ("a module pickled by reference", "import math\ndef f(x):\n    return math.sqrt(x)"),
    ("a class pickled by reference",
     "import fractions\ndef f():\n    return fractions.Fraction(1, 2)"),
    ("a builtin", "def f(x):\n    return len(x) + abs(x)"),
    ("a function it calls", "def h(x):\n    return x\ndef f(x):\n    return h(x) + 1"),
    ("recursion", "def f(n):\n    return 1 if n == 0 else n * f(n - 1)"),
    ("a closure over an int",
     "def make():\n    k = 2\n    def f(x):\n        return x * k\n    return f\nf = make()"),
    ("frozen defaults and annotations",
     "def f(x: int = 1, *, k: tuple = (1, 'a')) -> float:\n    return x"),
]


@pytest.mark.parametrize("what, source", UNCHANGED, ids=[u[0] for u in UNCHANGED])
def test_an_unchanged_function_is_served_from_the_cache(what, source):
    ns = script(source)
    cache = FunctionPickles()
    first = cache.dumps(ns["f"])
    assert cache.dumps(ns["f"]) is first, f"{what}: pickled again"
    served_fresh(cache, ns["f"])


def test_builtins_are_cached_unless_bound_to_an_object():
    import math

    cache = FunctionPickles()
    assert cache.dumps(len) is cache.dumps(len)
    assert cache.dumps(math.sqrt) is cache.dumps(math.sqrt)
    items = [1]
    push = items.append
    first = as_bytes(cache.dumps(push))
    items.append(2)
    assert as_bytes(cache.dumps(push)) != first
    served_fresh(cache, push)


# -- random values, changed in place ---------------------------------------------------------

leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
          | st.text(max_size=3) | st.binary(max_size=3))
values = st.recursive(
    leaves,
    lambda inner: (st.lists(inner, max_size=3) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=2), inner, max_size=3)
                   | st.frozensets(st.integers(), max_size=3) | st.sets(st.integers(), max_size=3)
                   | st.builds(bytearray, st.binary(min_size=1, max_size=3))),
    max_leaves=8)


def _containers(value, out: list) -> list:
    """Every object inside `value` (itself included) that can be changed in place."""
    if isinstance(value, list | dict | set | bytearray):
        out.append(value)
    if isinstance(value, list | tuple | set | frozenset):
        for x in value:
            _containers(x, out)
    elif isinstance(value, dict):
        for x in value.values():
            _containers(x, out)
    return out


def _change(container, marker: int) -> None:
    if isinstance(container, list):
        container.append(marker)
    elif isinstance(container, dict):
        container[f"k{marker}"] = marker
    elif isinstance(container, set):
        container.add(marker)
    else:
        container[0] = (container[0] + 1) % 256


SHAPES = {
    "global": "def f():\n    return V",
    "closure": "def make(v):\n    def f():\n        return v\n    return f\nf = make(V)",
    "default": "def f(v=V):\n    return v",
    "called": "def h():\n    return V\ndef f():\n    return h()",
}


@settings(max_examples=150, deadline=None)
@given(value=values, shape=st.sampled_from(sorted(SHAPES)), data=st.data())
def test_random_values_changed_in_place_or_rebound(value, shape, data):
    ns = {"__name__": "__main__", "__builtins__": __builtins__, "V": value}
    exec(SHAPES[shape], ns)
    f = ns["f"]
    cache = FunctionPickles()
    served_fresh(cache, f)
    for marker in range(3):
        inside = _containers(value, [])
        if inside:
            _change(data.draw(st.sampled_from(inside)), 1000 + marker)
        elif shape == "global":
            ns["V"] = value = data.draw(values)
        served_fresh(cache, f)
