"""Pickling user payloads: values, functions, arguments, results and exceptions.

`dumps` makes the payload frames of a value (cloudpickle, protocol 5): plain data (None, a few
numbers or strings) skips cloudpickle's per-object hooks, and a large bytes or buffer becomes a
frame of its own, never copied into the pickle. `loads` reads them back, using out-of-band
frames in place. On an engine, `load_into` rebuilds each function defined interactively
(in `__main__`) over the engine's namespace, as the seed did: such a function is pickled by
`_Pickler` with the same state as cloudpickle's but two other callables (cloudpickle's own
ones, which this needs, are in cloudpickle_internals.py). While a client ships local modules
(local_modules.py), the pickler notes each module it meets so that those travel by value.
The frames' MAC is framing.py's business; the function caches are in functions.py.
"""

from __future__ import annotations

import io
import pickle
import threading
import types
from collections.abc import Sequence
from typing import Any

import cloudpickle

from ..defaults import OUT_OF_BAND_MIN, PLAIN_CONTAINER_MAX
from . import local_modules
from .cloudpickle_internals import function_setstate as _cp_function_setstate
from .cloudpickle_internals import make_function as _cp_make_function
from .framing import Frame, frame_buffer
from .local_modules import note_module

# Values the standard pickler handles exactly as cloudpickle would (no functions, classes or
# objects that may live in __main__), so a result like None or a few numbers skips
# cloudpickle's per-object Python hooks.
PLAIN_TYPES = frozenset({type(None), bool, int, float, complex, str, bytes})


def _is_plain(obj: Any) -> bool:
    t = type(obj)
    if t in PLAIN_TYPES:
        return True
    if t is tuple or t is list:
        return len(obj) <= PLAIN_CONTAINER_MAX and all(type(x) in PLAIN_TYPES for x in obj)
    if t is dict:
        return len(obj) <= PLAIN_CONTAINER_MAX and all(
            type(k) in PLAIN_TYPES and type(v) in PLAIN_TYPES for k, v in obj.items())
    return False


class _LargeBytes:
    """Stands in for a large bytes or bytearray while pickling: pickle never hands those to
    the buffer callback, and copying one into the pickle costs ~10x a memcpy."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Unpickled as bytes(buffer) / bytearray(buffer): one copy out of the received frame.
        return type(self.value), (pickle.PickleBuffer(self.value),)


def _swap_large(obj: Any) -> Any:
    """`obj` with a large bytes/bytearray (itself, or an item of a small tuple, list or dict)
    replaced by a _LargeBytes, or `obj` itself if it has none."""
    t = type(obj)
    if t is bytes or t is bytearray:
        return _swap_large_item(obj)
    if (t is tuple or t is list) and len(obj) <= PLAIN_CONTAINER_MAX:
        items = [_swap_large_item(x) for x in obj]
        if any(a is not b for a, b in zip(items, obj, strict=True)):
            return t(items)
    elif t is dict and len(obj) <= PLAIN_CONTAINER_MAX:
        values = {k: _swap_large_item(v) for k, v in obj.items()}
        if any(values[k] is not v for k, v in obj.items()):
            return values
    return obj


def _swap_large_item(x: Any) -> Any:
    t = type(x)
    if (t is bytes or t is bytearray) and len(x) >= OUT_OF_BAND_MIN:
        return _LargeBytes(x)
    return x


def dumps(obj: Any) -> list[Any]:
    """Pickle `obj` (cloudpickle, protocol 5); large buffers become frames of their own."""
    swapped = _swap_large(obj)
    if swapped is not obj:
        return _dumps_buffers(swapped)
    if _is_plain(obj):
        return [pickle.dumps(obj, protocol=5)]
    return _dumps_buffers(obj)


def _dumps_buffers(obj: Any) -> list[Any]:
    buffers: list[Any] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # in-band: small buffers are cheaper inside the pickle
        buffers.append(raw)
        return False

    with io.BytesIO() as file:
        _Pickler(file, protocol=5, buffer_callback=keep).dump(obj)
        return [file.getvalue(), *buffers]


def dumps_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """Pickle a call's `(args, kwargs)`, with the plain-data fast path for each."""
    swapped_args, swapped_kwargs = _swap_large(args), _swap_large(kwargs)
    if swapped_args is not args or swapped_kwargs is not kwargs:
        return _dumps_buffers((swapped_args, swapped_kwargs))
    if _is_plain(args) and _is_plain(kwargs):
        return [pickle.dumps((args, kwargs), protocol=5)]
    return _dumps_buffers((args, kwargs))


def loads(frames: Sequence[Frame], namespace: dict[str, Any] | None = None) -> Any:
    """Unpickle what `dumps` made; out-of-band buffers are used in place, not copied.

    With a `namespace` (an engine's), the functions defined interactively that the payload
    holds are rebuilt over it, and the globals they bring are set in it (see `load_into`)."""
    if namespace is not None:
        return load_into(frames, namespace)[0]
    if not frames:
        raise ValueError("no payload frames to unpickle")
    return pickle.loads(frame_buffer(frames[0]), buffers=[frame_buffer(f) for f in frames[1:]])



# -- functions defined interactively, and modules beside the client's script ---------------------
# cloudpickle pickles a function defined in `__main__` (a script, a notebook, a console) by
# value, with a fresh globals dict holding the globals its code names that exist where it was
# pickled. taskmill pickles such a function with the same state but two other callables, so
# that an engine rebuilds it over its own namespace (as the seed did, and ipyparallel's
# `@interactive`): the function sees what earlier tasks set there, its `global` statements
# write there, and the globals it brought are set there first. Without an engine namespace
# (a client unpickling a result, the controller a `depend`) it is cloudpickle's function.

_into = threading.local()  # .target: (namespace, [globals set]) while `load_into` runs


def _make_interactive(code: types.CodeType, base_globals: dict[str, Any], name: Any,
                      argdefs: Any, closure: Any) -> types.FunctionType:
    """Unpickling: the function skeleton, over the engine's namespace if there is one."""
    target = getattr(_into, "target", None)
    if target is None:
        return _cp_make_function(code, base_globals, name, argdefs, closure)
    return types.FunctionType(code, target[0], name, argdefs, closure)


def _interactive_setstate(func: types.FunctionType, state: tuple[dict[str, Any], dict[str, Any]]
                          ) -> None:
    """Unpickling: the rest of the function (as cloudpickle's `_function_setstate`), its
    globals set in the engine's namespace rather than in a dict of its own."""
    target = getattr(_into, "target", None)
    if target is None or func.__globals__ is not target[0]:
        _cp_function_setstate(func, state)
        return
    attributes, slots = state
    func.__dict__.update(attributes)
    shipped = slots.pop("__globals__")
    closure = slots.pop("__closure__")
    slots.pop("_cloudpickle_submodules", None)  # (imported already, by being unpickled)
    if shipped:
        target[0].update(shipped)
        target[1].append(shipped)
    if closure is not None:
        for cell, value in zip(func.__closure__ or (), closure, strict=False):
            try:
                cell.cell_contents = value.cell_contents
            except ValueError:  # an empty cell stays empty
                pass
    for key, value in slots.items():
        setattr(func, key, value)


def load_into(frames: Sequence[Frame], namespace: dict[str, Any]
              ) -> tuple[Any, list[dict[str, Any]]]:
    """Unpickle `frames` on an engine whose namespace is `namespace`: every function defined
    interactively in the payload (the task's function, one among its arguments as `map`
    sends them, a helper it calls, a method, a lambda in a partial...) gets `namespace` as
    its globals, and the globals that came with it are set there, in the order they are
    unpickled (a helper's before the function that names it). Returns the object and those
    globals dicts, which a cached function sets again before each later run."""
    applied: list[dict[str, Any]] = []
    previous = getattr(_into, "target", None)
    _into.target = (namespace, applied)
    try:
        if not frames:
            raise ValueError("no payload frames to unpickle")
        value = pickle.loads(frame_buffer(frames[0]), buffers=[frame_buffer(f) for f in frames[1:]])
    finally:
        _into.target = previous
    return value, applied



class _Pickler(cloudpickle.Pickler):
    """cloudpickle's Pickler, but a function defined in `__main__` is rebuilt on an engine over
    the engine's namespace (see `load_into`), and, in a client, a local module's functions and
    classes travel by value (see `ship_local_modules`)."""

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is types.FunctionType:
            module = obj.__module__
            if local_modules.shipping:
                note_module(module)
            reduced = super().reducer_override(obj)
            if (module == "__main__" and type(reduced) is tuple and len(reduced) == 6
                    and reduced[0] is _cp_make_function
                    and reduced[5] is _cp_function_setstate):
                return (_make_interactive, *reduced[1:5], _interactive_setstate)
            return reduced
        if local_modules.shipping:
            if t is types.ModuleType:
                note_module(obj.__name__)
            elif isinstance(obj, type):
                note_module(getattr(obj, "__module__", None))
        return super().reducer_override(obj)
