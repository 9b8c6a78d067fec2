"""Names of a package imported on first use (PEP 562), for `taskmill` and `taskmill.controller`.

A package lists where each of its public names lives (`{"Cluster": "cluster", ...}`) and gets
its module-level `__getattr__` and `__dir__` from `lazy_names`: the first use of a name imports
its module and keeps the value in the package's namespace, so later uses cost nothing. So a
process imports only what it uses (an engine none of the client side, `taskmill controller`
its sockets before the rest).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, where: dict[str, str],
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`, whose name N lives in module `where[N]`."""

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        vars(sys.modules[package])[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return getattr_, dir_
