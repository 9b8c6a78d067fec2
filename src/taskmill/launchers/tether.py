"""A tether: keeps what a launcher started tied to the launcher's owner.

Local engines hold the read end of their owner's lifeline pipe and end themselves when it
closes. Processes started by mpiexec cannot (OpenMPI closes inherited descriptors), and a Slurm
job runs under slurmd, not under us. So launchers start

    python -m taskmill.launchers.tether --parent-fd FD [--on-orphan JSON_ARGV] [--remove DIR]
                                        [--done-if TEXT] [-- COMMAND...]

which runs COMMAND (mpiexec) as its child and holds the pipe for it. When the pipe closes (the
owner is gone, however it went) the tether ends COMMAND (SIGTERM, then SIGKILL to its process
group after a grace period), runs the on-orphan command (`scancel JOBID`) and removes DIR (the
launcher's work folder, with its copy of the connection file); a failed on-orphan command
(slurmctld restarting, say) is run again every RETRY_PAUSE seconds for up to RETRY_FOR seconds,
unless its output holds the --done-if text (`Invalid job id`: the job is gone already). A
SIGTERM to the tether, which the owner sends when it stops the launcher, ends COMMAND but does
not run the on-orphan command: the owner is alive and cleans up itself. When COMMAND exits by
itself, the tether exits with its status.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

GRACE = 5.0
RETRY_FOR = 600.0  # seconds a failing on-orphan command is run again
RETRY_PAUSE = 5.0  # seconds between its runs


def _end(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(GRACE)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(child.pid, signal.SIGKILL)  # what it started, too
    except ProcessLookupError:
        pass
    child.wait()


def run_on_orphan(command: list[str], done_if: str | None) -> bool:
    """Run the on-orphan command until it succeeds (or says `done_if`), for up to RETRY_FOR
    seconds; whether it did."""
    deadline = time.monotonic() + RETRY_FOR
    while True:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                  check=False)
            said = (done.stdout + done.stderr).strip()
            ok = done.returncode == 0 or bool(done_if and done_if.lower() in said.lower())
        except (OSError, subprocess.TimeoutExpired) as e:
            said, ok = str(e), False
        if said:
            print(said, flush=True)
        if ok:
            return True
        if time.monotonic() + RETRY_PAUSE > deadline:
            print(f"taskmill tether: {command} kept failing for {RETRY_FOR:g}s; giving up",
                  flush=True)
            return False
        print(f"taskmill tether: {command} failed; trying again in {RETRY_PAUSE:g}s",
              flush=True)
        time.sleep(RETRY_PAUSE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m taskmill.launchers.tether")
    p.add_argument("--parent-fd", type=int, default=None)
    p.add_argument("--on-orphan", default=None, help="a JSON list: the command to run")
    p.add_argument("--remove", default=None, help="a folder to remove when orphaned")
    p.add_argument("--done-if", default=None,
                   help="a failed on-orphan command whose output holds this text needs no retry")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    on_orphan = json.loads(a.on_orphan) if a.on_orphan else None

    wake = threading.Event()
    orphaned = threading.Event()

    def watch_lifeline() -> None:
        try:
            while os.read(a.parent_fd, 1):
                pass
        except OSError:
            pass
        orphaned.set()
        wake.set()

    signal.signal(signal.SIGTERM, lambda signum, frame: wake.set())
    child = subprocess.Popen(command, start_new_session=True) if command else None
    if child is not None:
        threading.Thread(target=lambda: (child.wait(), wake.set()), daemon=True).start()
    if a.parent_fd is not None:
        threading.Thread(target=watch_lifeline, daemon=True).start()
    while not wake.wait(1.0):
        pass
    if child is not None and child.poll() is not None and not orphaned.is_set():
        return child.returncode if child.returncode >= 0 else 128 - child.returncode
    if child is not None:
        _end(child)
    if orphaned.is_set() and on_orphan:
        print(f"taskmill tether: the owner is gone; running {on_orphan}", flush=True)
        run_on_orphan(on_orphan, a.done_if)
    if orphaned.is_set() and a.remove:
        shutil.rmtree(a.remove, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
