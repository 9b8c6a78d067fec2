"""The `taskmill` command: controller, engine, cluster start|stop|status, status, run, clean,
logs.

    argv --> parser.py (`build_parser`: options, checked) --> a command: commands.py (one
    process: controller, engine, curve-key, status, run), cluster.py (cluster start|stop|
    status), clean.py (clean) or logs.py (logs) --> its exit status

`main` is the console script (`taskmill = taskmill.cli:main`) and `python -m taskmill`. An
expected failure (no connection file or a bad one, no controller answering, a store that cannot
be opened, a file or folder it cannot write) is one line on standard error and exit status 1,
never a traceback.
"""

from __future__ import annotations

import os
import sys

from ..errors import ConnectionFileError, ControllerUnreachable, StoreError
from .clean import cmd_clean
from .cluster import LAUNCHER_OPTIONS, cmd_cluster, one_line
from .commands import BIND_ERRORS, cmd_controller, cmd_curve_key, cmd_engine, cmd_run, cmd_status
from .parser import build_parser

__all__ = ["BIND_ERRORS", "LAUNCHER_OPTIONS", "build_parser", "cmd_clean", "cmd_cluster",
           "cmd_controller",
           "cmd_curve_key", "cmd_engine", "cmd_run", "cmd_status", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ConnectionFileError, ControllerUnreachable, StoreError) as e:
        print(f"taskmill: {one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.filename is None:  # (not a file's: a bug, whose traceback says where)
            raise
        # A file or folder it cannot make or write (permissions, a read-only or full disk).
        where = os.path.dirname(os.fspath(e.filename)) or "."
        print(f"taskmill: cannot use {e.filename}: {e.strerror or e} (check that you can write "
              f"to {where}, and that its disk has room)", file=sys.stderr)
        return 1
