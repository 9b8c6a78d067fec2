"""Launchers: how a cluster starts its engines (local subprocesses, ssh, mpiexec, Slurm).

`make_launcher("mpi", mpi_args=[...])` builds one by name; `Cluster(launcher=...)` takes a
name or a launcher; `taskmill cluster start --launcher NAME` builds one from its options.
base.py holds the interface every launcher keeps.
"""

from __future__ import annotations

from typing import Any

from .base import EngineGroup, LaunchContext, Launcher, LauncherError
from .local import LocalLauncher
from .mpi import MPILauncher, mpi_rank_from_environment
from .slurm import SlurmLauncher
from .ssh import SSHLauncher

LAUNCHERS: dict[str, type[Launcher]] = {
    "local": LocalLauncher,
    "ssh": SSHLauncher,
    "mpi": MPILauncher,
    "slurm": SlurmLauncher,
}


def make_launcher(name: str, **options: Any) -> Launcher:
    """The launcher called `name` (local, ssh, mpi, slurm), built with `options`."""
    try:
        cls = LAUNCHERS[name]
    except KeyError:
        raise LauncherError(f"no launcher called {name!r}; choose one of "
                            f"{', '.join(LAUNCHERS)}") from None
    return cls(**options)


def adopt(record: dict[str, Any]) -> Launcher:
    """A launcher for what another process started (the `record()` it wrote down)."""
    return LAUNCHERS[record["launcher"]].adopt(record)


__all__ = [
    "LAUNCHERS",
    "EngineGroup",
    "LaunchContext",
    "Launcher",
    "LauncherError",
    "LocalLauncher",
    "MPILauncher",
    "SSHLauncher",
    "SlurmLauncher",
    "adopt",
    "make_launcher",
    "mpi_rank_from_environment",
]
