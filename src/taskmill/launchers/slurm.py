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

slurmctld may not answer for a while (a restart, a fail-over, an overloaded controller): a
failed squeue is no answer, not an empty queue (but for "Invalid job id": the jobs left the
queue), so a job's state is then "unknown" and `failure()` does not take it for ended; `stop()`
calls scancel again until squeue confirms the jobs gone, and raises LauncherError naming what
to cancel if it cannot within CANCEL_WAIT (its tether, left running, keeps trying).
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
CANCEL_AGAIN = 1.0  # seconds between stop()'s calls of scancel and squeue
QUEUED_STATES = ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING")  # (not started yet)
SQUEUE_EVERY = 2.0  # seconds: how often failure() asks squeue at most
SQUEUE_WAIT = 15.0  # seconds a status look (groups, failure, pending) waits for squeue
GONE = "invalid job id"  # what squeue and scancel say of a job no longer in the queue
TIMED_OUT = "did not answer within"


def _slurm_command(argv: list[str], timeout: float) -> tuple[bool, str, str]:
    """Run a Slurm command: (whether it succeeded, its output, what it said on failure)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return False, "", f"{argv[0]} {TIMED_OUT} {timeout:g}s"
    why = " ".join(done.stderr.split()) or " ".join(done.stdout.split()) or \
        f"{argv[0]} exited with status {done.returncode}"
    return done.returncode == 0, done.stdout, why


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
        self._last_queue: tuple[float, dict[str, list[str]] | None] | None = None
        self._squeue_error = ""

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
        text = self.batch_script(len(properties), conn, props, ctx.env, ctx.cwd)
        script.write_text(text)
        done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True,
                              text=True, timeout=120, cwd=self.work.path, check=False)
        if done.returncode != 0:  # (the script is removed with the work folder: its options)
            options = " ".join(x.removeprefix("#SBATCH ") for x in text.splitlines()
                               if x.startswith("#SBATCH "))
            raise LauncherError(f"sbatch refused the engines' job (#SBATCH {options}): "
                                f"{done.stderr.strip() or done.stdout.strip()}")
        job = done.stdout.strip().split(";")[0]
        if not job:
            raise LauncherError(f"sbatch printed no job id for {script}: {done.stdout!r}")
        self.jobs.append((job, len(properties)))
        self._tethers.append(spawn_tether(ctx, ctx.log_path(f"slurm-tether-{job}.log"),
                                          on_orphan=["scancel", job], remove=self.work.path,
                                          done_if=GONE))

    def _queue(self, max_age: float = 0.0,
               timeout: float | None = None) -> dict[str, list[str]] | None:
        """job id -> states of its entries that squeue still lists; None if squeue failed (it
        could not reach slurmctld...: see `_squeue_error`), which is no answer, not an empty queue.

        An answer younger than `max_age` seconds is reused: `failure()` is asked many times a
        second while a cluster waits for its engines, and squeue is a call to slurmctld.
        """
        if not self.jobs:
            return {}
        if self._last_queue is not None and time.monotonic() - self._last_queue[0] < max_age:
            return self._last_queue[1]
        ok, out, why = _slurm_command(["squeue", "-h", "-r", "-o", "%F %T %r", "-j",
                                       ",".join(j for j, _ in self.jobs)],
                                      SQUEUE_WAIT if timeout is None else timeout)
        queue: dict[str, list[str]] | None = {}
        if ok or GONE in why.lower():  # ("Invalid job id specified": none is in the queue)
            for line in out.splitlines() if ok else ():
                job, _, state = line.partition(" ")
                queue.setdefault(job, []).append(state.replace(" None", ""))
        else:
            queue, self._squeue_error = None, why
        self._last_queue = (time.monotonic(), queue)
        return queue

    def pending(self) -> int | None:
        """Engines of jobs (array elements, with mode "array") Slurm still holds queued."""
        queue = self._queue(max_age=SQUEUE_EVERY)
        if queue is None:
            return None
        waiting = 0
        for job, n in self.jobs:
            held = [s for s in queue.get(job, ()) if s.split(" ")[0] in QUEUED_STATES]
            waiting += len(held) if self.mode == "array" else n if held else 0
        return waiting

    def groups(self) -> list[EngineGroup]:
        queue = self._queue()
        groups = []
        for job, n in self.jobs:
            states = None if queue is None else queue.get(job)
            if queue is None:
                state = f"unknown (squeue failed: {self._squeue_error})"
            elif not states:
                state = "cancelled" if job in self._cancelled else "ended"
            else:
                state = ", ".join(f"{k} x{c}" if c > 1 else k for k, c in Counter(states).items())
            groups.append(EngineGroup(f"slurm job {job}", n, state))
        return groups

    def failure(self) -> str | None:
        if not self.jobs or self._queue(max_age=SQUEUE_EVERY) != {}:  # (None: unknown)
            return None
        outputs = sorted(self.work.path.glob("slurm-*.out"))
        return (f"the Slurm job{'s' if len(self.jobs) > 1 else ''} "
                f"{', '.join(j for j, _ in self.jobs)} ended"
                + (f"; {outputs[0].name}:\n{tail(outputs[0])}" if outputs else
                   " without output (see `scontrol show job` or the Slurm logs)"))

    def stop(self) -> None:
        """Cancel the jobs, calling scancel again while it fails, until squeue no longer lists
        them; LauncherError if that cannot be confirmed within CANCEL_WAIT (the tethers of those
        jobs are left running: they cancel them too, once this process is gone)."""
        left = [j for j, _ in self.jobs if j not in self._cancelled]
        accepted: set[str] = set()
        deadline = time.monotonic() + CANCEL_WAIT
        reasons: list[str] = []  # why each round failed (a time-out says less than an error)
        while left:
            why = "still listed by squeue"
            if [j for j in left if j not in accepted]:  # (each call within the deadline)
                ok, _, said = _slurm_command(["scancel", *[j for j in left if j not in accepted]],
                                             max(5.0, min(60.0, deadline - time.monotonic())))
                if ok:
                    accepted.update(left)
                else:
                    why = f"scancel: {said}"
            queue = self._queue(timeout=max(5.0, min(60.0, deadline - time.monotonic())))
            if queue is None:
                why = f"squeue: {self._squeue_error}"
            else:
                self._cancelled.update(j for j in left if j not in queue)
                left = [j for j in left if j in queue]
            reasons.append(why)
            if left and time.monotonic() >= deadline:
                why = next((x for x in reversed(reasons) if TIMED_OUT not in x), why)
                n = "s" if len(left) > 1 else ""
                raise LauncherError(
                    f"could not confirm within {CANCEL_WAIT:g}s that the Slurm job{n} "
                    f"{', '.join(left)} ended ({why}): run "
                    f"`scancel {' '.join(left)}` once Slurm answers (then `squeue -j "
                    f"{','.join(left)}` shows nothing)")
            if left:
                time.sleep(CANCEL_AGAIN)
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
