"""The `taskmill` command: controller, engine, cluster start|stop|status, status, run.

    argv --> parser.py (`build_parser`: options, checked) --> a command: commands.py (one
    process: controller, engine, curve-key, status, run) or cluster.py (cluster start|stop|
    status) --> its exit status

`main` is the console script (`taskmill = taskmill.cli:main`) and `python -m taskmill`.
"""

from __future__ import annotations

import sys

from ..errors import ConnectionFileError
from .cluster import LAUNCHER_OPTIONS, cmd_cluster
from .commands import BIND_ERRORS, cmd_controller, cmd_curve_key, cmd_engine, cmd_run, cmd_status
from .parser import build_parser

__all__ = ["BIND_ERRORS", "LAUNCHER_OPTIONS", "build_parser", "cmd_cluster", "cmd_controller",
           "cmd_curve_key", "cmd_engine", "cmd_run", "cmd_status", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ConnectionFileError as e:
        print(f"taskmill: {e}", file=sys.stderr)
        return 1
