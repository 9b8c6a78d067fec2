"""Helpers shared by the unit tests in tests/ (the system tests have tests/system/systest.py)."""

from __future__ import annotations

import builtins
import textwrap


def script(source: str) -> dict:
    """Run `source` as a script's `__main__` would; its namespace."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(textwrap.dedent(source), "<script>", "exec"), ns)
    return ns
