"""Modules that live beside the client's script or in its working folder, and are not installed.

The engines cannot import such a module, so a client pickles it by value (cloudpickle's
`register_pickle_by_value`), deciding once per module, when it first pickles something of it:
pickles.py's Pickler and functions.py's cache call `note_module` for every module they meet
while `shipping` is on (`ship_local_modules()`, which a client calls; engines do not, so that
what they return travels by name). `checked` remembers each module's verdict.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import cloudpickle

shipping = False  # whether this process pickles local modules by value (see ship_local_modules)
checked: dict[str, bool] = {}  # module name -> local (registered by value) or not
_installed_names: set[str] | None = None


def ship_local_modules(on: bool = True) -> None:
    """Pickle local modules by value from now on in this process (a client turns it on;
    engines do not, so that what they return travels by name as before)."""
    global shipping
    shipping = on


def ship_module(module: Any) -> None:
    """Send `module` (a module, or its name; with its submodules) to engines by value: for a
    module that is neither installed where the engines run nor beside the client's script or
    in its working folder (those travel by value by themselves). Its functions and classes
    then reach the engines with the tasks that use them."""
    if isinstance(module, str):
        if module not in sys.modules:
            raise ValueError(f"ship_module({module!r}): no module of that name is imported")
        module = sys.modules[module]
    if not isinstance(module, types.ModuleType):
        raise TypeError(f"ship_module takes a module or its name, not {type(module).__name__}")
    cloudpickle.register_pickle_by_value(module)
    checked[module.__name__] = True


def note_module(name: Any) -> None:
    """Register module `name` to be pickled by value if it is local (see `is_local_module`)."""
    if not shipping or type(name) is not str or name in checked:
        return
    local = is_local_module(name)
    if local:
        cloudpickle.register_pickle_by_value(sys.modules[name])
    checked[name] = local  # (after registering: another thread may be pickling)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


_libraries: list[str] | None = None


def _library_folders() -> list[str]:
    """The standard library's and site-packages' folders (of this venv and its base)."""
    global _libraries
    if _libraries is not None:
        return _libraries
    import site
    import sysconfig

    folders = set()
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        paths = sysconfig.get_paths(vars=scheme_vars or None)
        folders.update(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")
                       if k in paths)
    try:
        folders.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - an old virtualenv's site module
        pass
    if site.ENABLE_USER_SITE:
        folders.add(site.getusersitepackages())
    _libraries = [os.path.realpath(f) for f in folders if f]
    return _libraries


def _installed(top: str) -> bool:
    """Whether an installed distribution provides the top-level import name `top`."""
    global _installed_names
    if _installed_names is None:
        import importlib.metadata

        try:
            _installed_names = set(importlib.metadata.packages_distributions())
        except Exception:  # noqa: BLE001 - broken metadata: assume nothing is installed
            _installed_names = set()
    return top in _installed_names


def is_local_module(name: str) -> bool:
    """Whether the module `name` (imported here) is one the engines cannot import: its file
    lies in the folder of this process's script (`sys.argv[0]`'s) or in its working folder,
    not in the standard library or site-packages, and no installed distribution provides it.
    Never taskmill itself, `__main__` (pickled by value anyway) or a built-in module."""
    top = name.partition(".")[0]
    if top in ("__main__", "__mp_main__", "taskmill") or top in sys.stdlib_module_names:
        return False
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return False
    try:
        cwd = os.getcwd()
    except OSError:  # (the working folder was removed)
        cwd = None
    roots = [os.path.realpath(cwd)] if cwd else []
    if _SCRIPT_FOLDER is not None:
        roots.append(_SCRIPT_FOLDER)
    path = os.path.realpath(file)
    if not any(_inside(path, root) for root in roots):
        return False
    if any(_inside(path, lib) for lib in _library_folders()):
        return False
    return not _installed(top)


def _script_folder() -> str | None:
    """The folder of the script this process runs (`python script.py`: the folder Python put
    first on sys.path), as it was when taskmill was imported; None for `-c`, a console, or a
    program started from the standard library or site-packages (pytest, a Jupyter kernel).
    (Not sys.path[0] now: a program or a test runner may have put another folder there.)"""
    argv = getattr(sys, "argv", None) or [""]
    if not isinstance(argv[0], str) or not os.path.isfile(argv[0]):
        return None
    return os.path.dirname(os.path.realpath(argv[0]))


_SCRIPT_FOLDER = _script_folder()
