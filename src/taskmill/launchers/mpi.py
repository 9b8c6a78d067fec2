"""The MPI launcher: `mpiexec -n N python -m taskmill engine ...`, and the rank of each engine.

Every engine started by an MPI launcher (this one, or `mpiexec`/`srun` run by hand) finds its
rank in the environment that the MPI runtime gives it (OMPI_COMM_WORLD_RANK for Open MPI,
PMIX_RANK for PMIx, PMI_RANK for MPICH and Intel MPI) and carries it as the `mpi_rank`
property, so tasks can `depend` on it. No MPI library (mpi4py) is needed for that.

mpiexec runs under a tether (tether.py) that ends it when the launcher's owner goes. The
engines read a copy of the connection file in a fresh folder under `work_dir` (default
`~/.taskmill/launch`, see `SharedWorkDir`), so that engines on other nodes of a hostfile can
read it too. `mpi_args` go to mpiexec before the
engine command: `--hostfile FILE`, `--oversubscribe`, `--allow-run-as-root`, ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import (
    AdoptedProcess,
    EngineGroup,
    LaunchContext,
    Launcher,
    ProcessHandle,
    SharedWorkDir,
    engine_command,
    one_set_of_properties,
    process_state,
    require_programs,
    require_tcp,
    spawn_tether,
    tail,
    terminate,
)

RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")


def mpi_rank_from_environment(env: Mapping[str, str] = os.environ) -> int | None:
    """This process's MPI rank, from the variables MPI runtimes set; None outside MPI."""
    for name in RANK_VARIABLES:
        value = env.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return None


class MPILauncher(Launcher):
    """Engines as the ranks of one `mpiexec` per launch."""

    name = "mpi"

    def __init__(
        self,
        *,
        mpiexec: str = "mpiexec",
        mpi_args: Sequence[str] = (),
        python: str = sys.executable,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.mpiexec = mpiexec
        self.mpi_args = list(mpi_args)
        self.python = python
        self.work = SharedWorkDir("mpi", work_dir)
        self._runs: list[tuple[int, ProcessHandle]] = []  # (engines, tether running mpiexec)
        self._ctx: LaunchContext | None = None

    def check(self) -> None:
        require_programs(self.name, self.mpiexec,
                         how="install an MPI (Debian: openmpi-bin) or give mpiexec= / --mpiexec")

    def launch(self, ctx: LaunchContext, properties: list[dict[str, Any]]) -> None:
        if not properties:
            return
        self._ctx = ctx
        props = one_set_of_properties(self.name, properties)
        require_tcp(self.name, ctx.connection_file)
        conn = self.work.connection_file(ctx.connection_file)
        cmd = [self.mpiexec, "-n", str(len(properties)), *self.mpi_args,
               *engine_command(self.python, conn, props, env=ctx.env, cwd=ctx.cwd)]
        log = ctx.log_path(f"mpiexec-{len(self._runs)}.log")
        tether = spawn_tether(ctx, log, command=cmd, remove=self.work.path)
        self._runs.append((len(properties), tether))

    def groups(self) -> list[EngineGroup]:
        return [EngineGroup(f"mpiexec -n {n} (tether pid {p.pid})", n, process_state(p))
                for n, p in self._runs]

    def failure(self) -> str | None:
        if not self._runs or any(p.poll() is None for _, p in self._runs):
            return None
        _, first = self._runs[0]
        return (f"mpiexec ended ({process_state(first)}); its output:\n"
                f"{tail(self.logs()[0])}")

    def stop(self) -> None:
        terminate([p for _, p in self._runs], grace=15.0)

    def cleanup(self) -> None:
        self.work.remove()

    def logs(self) -> list[Path]:
        if self._ctx is None:
            return []
        return [self._ctx.log_path(f"mpiexec-{i}.log") for i in range(len(self._runs))]

    def record(self) -> dict[str, Any]:
        return {"launcher": self.name, "work_dir": str(self.work.path),
                "runs": [[n, p.pid] for n, p in self._runs]}

    @classmethod
    def adopt(cls, record: dict[str, Any]) -> MPILauncher:
        launcher = cls()
        if record.get("work_dir"):
            launcher.work = SharedWorkDir.existing(record["work_dir"])
        launcher._runs = [(n, AdoptedProcess(pid)) for n, pid in record.get("runs", [])]
        return launcher
