"""cloudpickle's private functions that taskmill relies on, in this one place.

They are cloudpickle's own (not ours): `_make_function` and `_function_setstate` are what a
function pickled by value is rebuilt with (pickles.py swaps them for its own to rebuild a
function defined interactively over an engine's namespace), and `_should_pickle_by_reference`
is the very test cloudpickle uses to choose between by reference and by value (functions.py's
cache rule). Each is None with a cloudpickle that lacks it: then functions defined
interactively get their own globals, and no function pickle is cached.
"""

from __future__ import annotations

try:
    from cloudpickle.cloudpickle import _function_setstate as function_setstate
    from cloudpickle.cloudpickle import _make_function as make_function
except ImportError:  # pragma: no cover - another cloudpickle: no interactive functions
    function_setstate = make_function = None

try:
    from cloudpickle.cloudpickle import (
        _should_pickle_by_reference as should_pickle_by_reference,
    )
except ImportError:  # pragma: no cover - another cloudpickle: then nothing is cached
    should_pickle_by_reference = None
