"""The package's public names: each one in __all__ is importable, and lazily (PEP 562)."""

from __future__ import annotations

import subprocess
import sys

import taskmill


def test_every_public_name_resolves_and_the_lazy_table_matches_all():
    assert set(taskmill.__all__) - {"__version__"} == set(taskmill._WHERE)
    for name in taskmill.__all__:
        assert getattr(taskmill, name) is not None


def test_importing_the_engine_side_leaves_the_client_side_unimported():
    code = ("import sys, taskmill.cli; from taskmill.engine import run_engine; "
            "print('asyncio' in sys.modules, 'taskmill.client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]
