"""`taskmill logs [ENGINE]`: the logs a `taskmill cluster` keeps in its profile's folder.

    taskmill cluster start --> `fresh_log_dir()`: <profile>/logs/ (the previous cluster's logs
        moved to <profile>/logs.previous/) --> Cluster(log_dir=...): controller.log,
        engine-<slot>.log (local launcher), ssh-<i>.log, mpiexec-<i>.log, ... kept after stop
    taskmill logs [ENGINE] --> `cmd_logs`: every log, each under a `==> name <==` line; or,
        for ENGINE "controller", the controller's; for an engine id, the lines of the engine
        process that registered as that engine (found by its "registered as engine N" line;
        each line belongs to the process named by the `name[pid]` of the last line that had one)

`add_logs_command` is the parser's hook (parser.py). Log lines have the engine's and the
controller's format (commands.py `LOG_FORMAT`: time, `logger[pid]`, level, message).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from ..connection import ensure_private_dir, profile_dir

REGISTERED = re.compile(r"taskmill\.engine\[(\d+)\] \w+ (?:registered as engine|engine) (\d+)\b")
LINE_PID = re.compile(r"^\S+ \S+ [\w.]+\[(\d+)\] ")


def cluster_log_dir() -> Path:
    """Where `taskmill cluster start` keeps its cluster's logs: the profile's `logs` folder."""
    return profile_dir() / "logs"


def fresh_log_dir() -> Path:
    """The cluster log folder, emptied for a new cluster: the logs there (the last cluster's)
    move to `logs.previous` beside it, replacing what was there."""
    folder = cluster_log_dir()
    if folder.exists() and any(folder.iterdir()):
        previous = folder.with_name(folder.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        folder.rename(previous)
    return ensure_private_dir(folder)


def log_files(folder: Path) -> list[Path]:
    """The logs in `folder`: the controller's first, then the others by name (engine-2 before
    engine-10)."""
    def key(p: Path) -> tuple[bool, list[object]]:
        parts = re.split(r"(\d+)", p.stem)
        return p.stem != "controller", [int(x) if x.isdigit() else x for x in parts]

    return sorted((p for p in folder.glob("*.log") if p.is_file()), key=key)


def engine_pids(files: list[Path]) -> dict[int, tuple[int, Path]]:
    """engine id -> (pid, log file) of every engine whose registration a log records."""
    found: dict[int, tuple[int, Path]] = {}
    for path in files:
        for m in REGISTERED.finditer(path.read_text(errors="replace")):
            found[int(m.group(2))] = (int(m.group(1)), path)
    return found


def lines_of(path: Path, pid: int) -> list[str]:
    """The lines of `path` that process `pid` wrote (a line without a `name[pid]` belongs to
    the process of the last line that had one: a traceback, what was printed between tasks)."""
    owner: int | None = None
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        m = LINE_PID.match(line)
        if m:
            owner = int(m.group(1))
        if owner == pid:
            kept.append(line)
    return kept


def cmd_logs(a: argparse.Namespace) -> int:
    folder = Path(a.dir) if a.dir else cluster_log_dir()
    files = log_files(folder) if folder.is_dir() else []
    if not files:
        print(f"taskmill: no logs in {folder} (`taskmill cluster start` keeps its cluster's "
              "logs there)", file=sys.stderr)
        return 1

    def show(title: str, lines: list[str]) -> None:
        print(f"==> {title} <==")
        for line in lines[-a.lines:] if a.lines else lines:
            print(line)

    if a.engine is None:
        for i, path in enumerate(files):
            if i:
                print()
            show(path.name, path.read_text(errors="replace").splitlines())
        return 0
    if a.engine == "controller":
        path = folder / "controller.log"
        if not path.exists():
            print(f"taskmill: no controller.log in {folder}", file=sys.stderr)
            return 1
        show(path.name, path.read_text(errors="replace").splitlines())
        return 0
    engines = engine_pids(files)
    if not a.engine.isdigit() or int(a.engine) not in engines:
        known = ", ".join(str(e) for e in sorted(engines)) or "none"
        print(f"taskmill: no engine {a.engine} in the logs of {folder} (ENGINE is an engine id "
              f"or `controller`; engines there: {known})", file=sys.stderr)
        return 1
    pid, path = engines[int(a.engine)]
    show(f"engine {a.engine} (pid {pid}, {path.name})", lines_of(path, pid))
    return 0


def add_logs_command(sub: Any) -> None:
    """Add `taskmill logs` to `sub`, what `ArgumentParser.add_subparsers()` returned (the
    parser's hook)."""
    g = sub.add_parser("logs", help="show the logs of the cluster `taskmill cluster start` ran",
                       description="The logs of the last `taskmill cluster start` of this "
                                   "profile (kept after it stops): all of them, the "
                                   "controller's, or one engine's.")
    g.add_argument("engine", nargs="?", default=None, metavar="ENGINE",
                   help="an engine id (as `taskmill status` shows it) or `controller` "
                        "(default: every log)")
    g.add_argument("-n", "--lines", type=int, default=None, metavar="N",
                   help="only the last N lines of each log")
    g.add_argument("--dir", default=None,
                   help="the folder of the logs (default: the profile's logs folder, "
                        f"{cluster_log_dir()})")
    g.set_defaults(func=cmd_logs)
