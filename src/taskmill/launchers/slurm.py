"""The Slurm launcher: a batch script submitted with `sbatch`, stopped with `scancel`.

Each launch writes one batch script into a fresh folder under `work_dir` (default
`~/.taskmill/launch`, which clusters usually share with their nodes), beside a copy of the
connection file the engines read, and submits it. Two shapes:

- `mode="srun"` (default): one job of N tasks, `srun python -m taskmill engine ...`, so the
  engines share one allocation (`#SBATCH --ntasks=N`);
- `mode="array"`: a job array of N one-task jobs (`#SBATCH --array=0-(N-1)`), which the
  scheduler may start one by one as room appears.

`account`, `partition` and `time_limit` (sbatch's --time) become `#SBATCH` lines, and so does
each of `directives` (`"--mem=4G"`, `"--cpus-per-task=2"`, ...). `stop()` cancels the job and
waits until `squeue` no longer lists it; a tether (tether.py) cancels it too if the owner goes
without stopping. The job's output goes to `slurm-<jobid>.out` in the work folder.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import (
    EngineGroup,
    LaunchContext,
    Launcher,
    LauncherError,
    ProcessHandle,
    SharedWorkDir,
    engine_command,
    one_set_of_properties,
    require_programs,
    require_tcp,
    spawn_tether,
    tail,
    terminate,
)

MODES = ("srun", "array")
CANCEL_WAIT = 60.0  # seconds stop() waits for squeue to drop a cancelled job
SQUEUE_EVERY = 2.0  # seconds: how often failure() asks squeue at most


def _one_line(what: str, value: object) -> None:
    """Refuse a value that would not stay on its own `#SBATCH` line of the batch script."""
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise LauncherError(
            f"the slurm launcher's {what} {value!r} holds a newline or another control "
            "character, which would put a line of its own into the batch script; give each "
            "option on one line (several directives as several list items / "
            "--slurm-directive options)")


class SlurmLauncher(Launcher):
    """Engines in a Slurm job (N tasks under srun) or a job array (N one-task jobs)."""

    name = "slurm"

    def __init__(
        self,
        *,
        account: str | None = None,
        partition: str | None = None,
        time_limit: str | None = None,
        directives: Sequence[str] = (),
        mode: str = "srun",
        job_name: str = "taskmill-engines",
        python: str = sys.executable,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise LauncherError(f"the slurm launcher's mode must be one of {MODES}, not {mode!r}")
        if isinstance(directives, str):
            raise LauncherError(f"directives must be a list of sbatch options, not the string "
                                f"{directives!r}")
        self.account = account
        self.partition = partition
        self.time_limit = time_limit
        self.directives = [d.removeprefix("#SBATCH").strip() for d in directives]
        self.mode = mode
        self.job_name = job_name
        self.python = python
        self.work = SharedWorkDir("slurm", work_dir)
        for what, value in (("account", account), ("partition", partition),
                            ("time_limit", time_limit), ("job_name", job_name),
                            ("work_dir", str(self.work.path)),
                            *(("directive", d) for d in directives)):
            _one_line(what, value)
        self.jobs: list[tuple[str, int]] = []  # (job id, engines)
        self._tethers: list[ProcessHandle] = []
        self._cancelled: set[str] = set()
        self._last_queue: tuple[float, dict[str, list[str]]] | None = None

    def check(self) -> None:
        require_programs(self.name, "sbatch", "scancel", "squeue",
                         how="run on a machine where Slurm's commands work (Debian: slurm-client)")

    def batch_script(self, engines: int, connection_file: Path, props: dict[str, Any],
                     env: dict[str, str] | None = None, cwd: str | None = None) -> str:
        """The text of the batch script that starts `engines` engines."""
        out = self.work.path / ("slurm-%A_%a.out" if self.mode == "array" else "slurm-%j.out")
        lines = ["#!/bin/sh", f"#SBATCH --job-name={self.job_name}", f"#SBATCH --output={out}"]
        if self.mode == "array":
            lines += ["#SBATCH --ntasks=1", f"#SBATCH --array=0-{engines - 1}"]
        else:
            lines += [f"#SBATCH --ntasks={engines}"]
        for option, value in (("account", self.account), ("partition", self.partition),
                              ("time", self.time_limit)):
            if value:
                lines.append(f"#SBATCH --{option}={value}")
        lines += [f"#SBATCH {d}" for d in self.directives]
        command = " ".join(shlex.quote(c) for c in engine_command(
            self.python, connection_file, props, env=env, cwd=cwd))
        lines += ["", f"exec srun {command}" if self.mode == "srun" else f"exec {command}", ""]
        return "\n".join(lines)

    def launch(self, ctx: LaunchContext, properties: list[dict[str, Any]]) -> None:
        if not properties:
            return
        props = one_set_of_properties(self.name, properties)
        require_tcp(self.name, ctx.connection_file)
        conn = self.work.connection_file(ctx.connection_file)
        script = self.work.path / f"engines-{len(self.jobs)}.sbatch"
        script.write_text(self.batch_script(len(properties), conn, props, ctx.env, ctx.cwd))
        done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True,
                              text=True, timeout=120, cwd=self.work.path, check=False)
        if done.returncode != 0:
            raise LauncherError(f"sbatch refused the engines' job ({script}): "
                                f"{done.stderr.strip() or done.stdout.strip()}")
        job = done.stdout.strip().split(";")[0]
        if not job:
            raise LauncherError(f"sbatch printed no job id for {script}: {done.stdout!r}")
        self.jobs.append((job, len(properties)))
        self._tethers.append(spawn_tether(ctx, ctx.log_path(f"slurm-tether-{job}.log"),
                                          on_orphan=["scancel", job], remove=self.work.path))

    def _queue(self, max_age: float = 0.0) -> dict[str, list[str]]:
        """job id -> states of its entries that squeue still lists.

        An answer younger than `max_age` seconds is reused: `failure()` is asked many times a
        second while a cluster waits for its engines, and squeue is a call to slurmctld.
        """
        if not self.jobs:
            return {}
        if self._last_queue is not None and time.monotonic() - self._last_queue[0] < max_age:
            return self._last_queue[1]
        done = subprocess.run(["squeue", "-h", "-o", "%F %T %r", "-j",
                               ",".join(j for j, _ in self.jobs)],
                              capture_output=True, text=True, timeout=60, check=False)
        queue: dict[str, list[str]] = {}
        for line in done.stdout.splitlines():
            job, _, state = line.partition(" ")
            queue.setdefault(job, []).append(state.replace(" None", ""))
        self._last_queue = (time.monotonic(), queue)
        return queue

    def groups(self) -> list[EngineGroup]:
        queue = self._queue()
        groups = []
        for job, n in self.jobs:
            states = queue.get(job)
            if not states:
                state = "cancelled" if job in self._cancelled else "ended"
            else:
                state = ", ".join(f"{k} x{c}" if c > 1 else k for k, c in Counter(states).items())
            groups.append(EngineGroup(f"slurm job {job}", n, state))
        return groups

    def failure(self) -> str | None:
        if not self.jobs or self._queue(max_age=SQUEUE_EVERY):
            return None
        outputs = sorted(self.work.path.glob("slurm-*.out"))
        return (f"the Slurm job{'s' if len(self.jobs) > 1 else ''} "
                f"{', '.join(j for j, _ in self.jobs)} ended"
                + (f"; {outputs[0].name}:\n{tail(outputs[0])}" if outputs else
                   " without output (see `scontrol show job` or the Slurm logs)"))

    def stop(self) -> None:
        jobs = [j for j, _ in self.jobs if j not in self._cancelled]
        if jobs:
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=60, check=False)
            self._cancelled.update(jobs)
            deadline = time.monotonic() + CANCEL_WAIT
            while self._queue() and time.monotonic() < deadline:
                time.sleep(0.2)
        terminate(self._tethers)

    def cleanup(self) -> None:
        self.work.remove()

    def logs(self) -> list[Path]:
        return sorted(self.work.path.glob("slurm-*.out")) if self.work.path.exists() else []

    def record(self) -> dict[str, Any]:
        return {"launcher": self.name, "work_dir": str(self.work.path),
                "jobs": [[j, n] for j, n in self.jobs]}

    @classmethod
    def adopt(cls, record: dict[str, Any]) -> SlurmLauncher:
        launcher = cls()
        if record.get("work_dir"):
            launcher.work = SharedWorkDir.existing(record["work_dir"])
        launcher.jobs = [(str(j), int(n)) for j, n in record.get("jobs", [])]
        return launcher
