"""Functions pickled once: the client's cache of function pickles, the engine's of functions.

A client sends the same function with many tasks (`map`): `FunctionPickles.dumps` reuses the
pickle it made while every object that pickle was made of is the same object and cannot change
in place (`function_state`, the rule both caches share), and pickles anything else every time.
An engine receives the same pickle many times: `FunctionLoads.loads` keeps the unpickled
function by the pickle's bytes (already checked against their MAC), under the same rule, and
sets the globals a function defined interactively brought in the engine's namespace again
before each run. Pickling itself is pickles.py's; whether cloudpickle pickles an object by
reference is cloudpickle's own test (cloudpickle_internals.py).
"""

from __future__ import annotations

import operator
import threading
import types
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from . import local_modules
from .cloudpickle_internals import should_pickle_by_reference as _should_pickle_by_reference
from .framing import Frame, frame_buffer
from .local_modules import note_module
from .pickles import PLAIN_TYPES, dumps, load_into, loads

FUNCTION_CACHE_SIZE = 128
FUNCTION_CACHE_MAX_BYTES = 64 * 1024
# Objects of these exact types cannot change: the same object always pickles the same.
_SCALARS = PLAIN_TYPES | {type(Ellipsis), type(NotImplemented), types.CodeType}
_NESTING = 4  # deeper than this, tuples and functions are not looked into (not cached)


def _by_reference(obj: Any) -> bool:
    """Whether cloudpickle pickles `obj` (a function, class or module) as a name to import,
    so that what the client does to the object itself never travels."""
    if _should_pickle_by_reference is None:
        return False
    if local_modules.shipping:  # (decided before the pickle is made, which may then ship it by value)
        note_module(obj.__name__ if type(obj) is types.ModuleType
                     else getattr(obj, "__module__", None))
    try:
        return bool(_should_pickle_by_reference(obj))
    except Exception:  # noqa: BLE001 - unsure: pickled every time
        return False


def _frozen(value: Any, depth: int = 0) -> bool:
    """Whether `value` is immutable all the way down: a str, number, bytes, None, code, or a
    tuple/frozenset of those (exact types: a subclass may carry a mutable __dict__)."""
    t = type(value)
    if t in _SCALARS:
        return True
    if (t is tuple or t is frozenset) and depth < _NESTING:
        return all(_frozen(x, depth + 1) for x in value)
    return False


class _Mutable(Exception):
    """Something a pickle of the function is made of could change in place."""


def function_state(func: Any) -> tuple[Any, ...] | None:
    """The objects a pickle of `func` is made of, or None if one of them could change without
    becoming another object (then the function must be pickled every time).

    The pickle is made of these objects alone (what cloudpickle reads; see its
    `_function_getstate` and `_function_getnewargs`), and each of them either cannot change or
    travels as a name, so the same objects (compared by identity) make the same pickle:
    - a function, class or module that cloudpickle pickles by reference: a name the engine
      imports, so what this process does to the object never travels. Not a package, though
      (a module whose `__package__` is set): cloudpickle sends along the submodules of a
      package that are in `sys.modules` at the time, so a function naming one is not cached;
    - a builtin function whose `__self__` is such a module (not a method bound to an object);
    - a frozen value (see `_frozen`);
    - a function pickled by value (defined in __main__, a notebook, a module registered by
      value): itself, its code, name, qualname, module, doc, defaults, keyword defaults and
      annotations (the dicts item by item), the base globals cloudpickle sends (`__name__`,
      `__package__`, `__path__`, `__file__`), and the values of its closure cells and of every
      global its code (or code nested in it) may name, each of them qualifying in turn. Its
      `__dict__` must be empty.
    Nothing else qualifies: not a class pickled by value (defined in __main__: its attributes
    can be set, `Params.alpha = 10`), a module registered by value, a list, dict, set, array,
    an instance of any class, a bound method.
    """
    state: list[Any] = []
    try:
        _add(func, state, set(), 0)
    except _Mutable:
        return None
    return tuple(state)


def _add(value: Any, state: list[Any], seen: set[int], depth: int) -> None:
    state.append(value)
    t = type(value)
    if t in _SCALARS:
        return
    if t is types.FunctionType:
        if id(value) in seen or _by_reference(value):
            return
        seen.add(id(value))
        _add_function(value, state, seen, depth)
    elif t is types.BuiltinFunctionType:
        owner = value.__self__
        if not (owner is None or (type(owner) is types.ModuleType and _module_ok(owner))):
            raise _Mutable
    elif t is types.ModuleType:
        if not _module_ok(value):
            raise _Mutable
    elif isinstance(value, type):
        if not _by_reference(value):
            raise _Mutable
    elif not _frozen(value):
        raise _Mutable


def _module_ok(module: types.ModuleType) -> bool:
    return not getattr(module, "__package__", None) and _by_reference(module)


def _add_function(func: types.FunctionType, state: list[Any], seen: set[int],
                  depth: int) -> None:
    if depth >= _NESTING or func.__dict__ or getattr(func, "__type_params__", None):
        raise _Mutable
    code, module, doc, defaults = func.__code__, func.__module__, func.__doc__, func.__defaults__
    if type(module) not in _SCALARS or type(doc) not in _SCALARS:
        raise _Mutable
    state += (code, func.__name__, func.__qualname__, module, doc, defaults)
    if defaults:  # (a tuple: assigning new defaults makes another one)
        for value in defaults:
            _add(value, state, seen, depth + 1)
    for mapping in (func.__kwdefaults__, func.__annotations__):
        state.append(mapping)  # (None, or a dict: the same one, with the same items)
        if mapping:
            state.append(len(mapping))
            for key, value in mapping.items():
                state.append(key)
                _add(value, state, seen, depth + 1)
    g = func.__globals__
    missing = _MISSING
    for name in _BASE_GLOBALS:
        value = g.get(name, missing)
        state.append(value)
        if value is not missing and type(value) not in _SCALARS and not _frozen(value):
            raise _Mutable
    for cell in func.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = missing
        if value is missing or type(value) in _SCALARS:
            state.append(value)
        else:
            _add(value, state, seen, depth + 1)
    for name in _code_names(code):
        value = g.get(name, missing)
        if value is missing or type(value) in _SCALARS:
            state.append(value)
        else:
            _add(value, state, seen, depth + 1)


_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")
_MISSING = object()
_NAMES: dict[types.CodeType, tuple[str, ...]] = {}


def _code_names(code: types.CodeType) -> tuple[str, ...]:
    """Every name the code (and code nested in it) may look up, a superset of its globals."""
    names = _NAMES.get(code)
    if names is None:
        found = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.update(_code_names(const))
        names = _NAMES[code] = tuple(sorted(found))
        if len(_NAMES) > 4096:
            _NAMES.clear()
    return names


class FunctionPickles:
    """A client's cache of function pickles: a function sent again unchanged is not pickled
    again (cloudpickle takes ~30 us for a function defined in __main__). A pickle is reused
    only while every object it was made of is the same object and immutable (see
    function_state); anything else is pickled every time."""

    def __init__(self, size: int = FUNCTION_CACHE_SIZE) -> None:
        self.size = size
        self._cache: OrderedDict[int, tuple[tuple[Any, ...], list[Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def dumps(self, func: Any) -> list[Any]:
        t = type(func)
        if t is not types.FunctionType and t is not types.BuiltinFunctionType:
            return dumps(func)
        state = function_state(func)
        if state is None:
            return dumps(func)
        with self._lock:
            hit = self._cache.get(id(func))
            if hit is not None and len(hit[0]) == len(state) and all(
                    map(operator.is_, hit[0], state)):
                self._cache.move_to_end(id(func))
                return hit[1]
        frames = dumps(func)
        if len(frames) == 1 and len(frames[0]) <= FUNCTION_CACHE_MAX_BYTES:
            with self._lock:
                self._cache[id(func)] = (state, frames)  # state[0] is func: its id stays its own
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        return frames


class FunctionLoads:
    """An engine's cache of unpickled functions, by their pickle's bytes (checked already).

    With a `namespace` (the engine's; `_reset` clears it in place, so it stays the same dict),
    functions defined interactively are rebuilt over it (see `load_into`), and a cached one
    sets the globals it brought in it again before each run: a task that cleared the namespace
    (`clear_before`) or changed one of those names still runs with the client's values.
    A function is kept only if what it is made of cannot change in place (the client cache's
    rule, `function_state`): a list, dict, instance, class defined in a script... in its
    globals, defaults or closure is unpickled afresh for every task, as the client sent it,
    never as an earlier task on this engine left it. What task code can still change by
    rebinding (a closure's cell, `nonlocal n; n += 1`; an attribute set on the function; a
    global of a module sent by value) is checked at each use: the objects it is made of must
    be those it was loaded with, or it is loaded again."""

    def __init__(self, size: int = FUNCTION_CACHE_SIZE,
                 namespace: dict[str, Any] | None = None) -> None:
        self.size = size
        self.namespace = namespace
        # bytes -> (function, globals dicts to set before each run, what it was made of when
        # loaded), or _FRESH: load each time
        self._cache: OrderedDict[bytes, Any] = OrderedDict()

    def _load(self, frames: Sequence[Frame]) -> tuple[Any, list[dict[str, Any]]]:
        if self.namespace is None:
            return loads(frames), []
        return load_into(frames, self.namespace)

    def loads(self, frames: Sequence[Frame]) -> Any:
        if len(frames) != 1:
            return self._load(frames)[0]
        key = bytes(frame_buffer(frames[0]))
        if len(key) > FUNCTION_CACHE_MAX_BYTES:
            return self._load(frames)[0]
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            if hit is _FRESH:
                return self._load(frames)[0]
            func, applied, state = hit
            for shipped in applied:
                self.namespace.update(shipped)  # type: ignore[union-attr]
            now = function_state(func)
            if now is not None and len(now) == len(state) and all(
                    a is b for a, b in zip(now, state, strict=True)):
                return func
        func, applied = self._load(frames)  # (new, or changed by a task since: load again)
        state = function_state(func)
        self._cache[key] = (func, applied, state) if state is not None else _FRESH
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return func


_FRESH = object()  # a FunctionLoads entry: this pickle is unpickled for every task
