"""The package's public names: each one in __all__ is importable, and lazily (PEP 562)."""

from __future__ import annotations

import subprocess
import sys

import taskmill


def test_every_public_name_resolves_and_the_lazy_table_matches_all():
    # In a fresh interpreter, the names dir() lists that the module does not hold yet are
    # exactly the lazy ones (PEP 562): they must be __all__.
    code = ("import taskmill; lazy = set(dir(taskmill)) - set(vars(taskmill)); "
            "print(sorted(lazy) == sorted(set(taskmill.__all__) - {'__version__'}), len(lazy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    same, n = out.stdout.split()
    assert same == "True" and int(n) > 20, out.stdout
    for name in taskmill.__all__:
        assert getattr(taskmill, name) is not None


def test_importing_the_engine_side_leaves_the_client_side_unimported():
    code = ("import sys, taskmill.cli; from taskmill.engine import run_engine; "
            "print('asyncio' in sys.modules, 'taskmill.client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]
