"""The Slurm launcher while slurmctld does not answer (a restart, a fail-over): fake squeue,
scancel and sbatch on PATH that fail as Slurm's do. A failed squeue is no answer (the job's state
is unknown), not an empty queue; stop() calls scancel again and, if it cannot confirm the jobs
gone, says what to cancel, and `taskmill cluster stop` fails and keeps the cluster's record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from taskmill.cli import main
from taskmill.cli.cluster import cluster_state_file, process_started
from taskmill.connection import new_connection_info, write_connection_file
from taskmill.launchers import LaunchContext, LauncherError, SlurmLauncher, slurm, tether

DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
SCANCEL_DOWN = ("scancel: error: Kill job error on job id 123: Unable to contact slurm "
                "controller (connect failure)")
GONE = "slurm_load_jobs error: Invalid job id specified"


class FakeSlurm:
    """squeue, scancel and sbatch in a folder put first on PATH. Each logs its calls to
    `<name>.calls`; it prints `<name>.out` and exits 0 if that file exists, else prints
    `<name>.err` to stderr and exits 1; `<name>.fails` (a number) makes its first calls fail."""

    def __init__(self, d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dir = d
        d.mkdir(exist_ok=True)
        for name in ("squeue", "scancel", "sbatch"):
            script = d / name
            script.write_text(textwrap.dedent(f"""\
                #!/bin/sh
                d={d}
                echo "$*" >> $d/{name}.calls
                n=$(wc -l < $d/{name}.calls)
                if [ -f $d/{name}.fails ] && [ "$n" -le "$(cat $d/{name}.fails)" ]; then
                    cat $d/{name}.err >&2; exit 1
                fi
                if [ -f $d/{name}.out ]; then cat $d/{name}.out; exit 0; fi
                cat $d/{name}.err >&2; exit 1
                """))
            script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")

    def says(self, name: str, *, out: str | None = None, err: str = "", fails: int = 0) -> None:
        (self.dir / f"{name}.out").unlink(missing_ok=True)
        if out is not None:
            (self.dir / f"{name}.out").write_text(out)
        (self.dir / f"{name}.err").write_text(err + "\n")
        (self.dir / f"{name}.fails").write_text(f"{fails}\n")

    def calls(self, name: str) -> list[str]:
        path = self.dir / f"{name}.calls"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "CANCEL_WAIT", 1.5)
    monkeypatch.setattr(slurm, "CANCEL_AGAIN", 0.05)
    return FakeSlurm(tmp_path / "bin", monkeypatch)


def adopted(tmp_path: Path, *jobs: str) -> SlurmLauncher:
    return SlurmLauncher.adopt({"launcher": "slurm", "work_dir": str(tmp_path / "work"),
                                "jobs": [[j, 1] for j in jobs]})


def test_a_failed_squeue_is_an_unknown_state_not_an_ended_job(fake, tmp_path):
    launcher = adopted(tmp_path, "123")
    fake.says("squeue", err=DOWN)
    [group] = launcher.groups()
    assert group.state == f"unknown (squeue failed: {DOWN})"
    assert launcher.failure() is None  # (not "the Slurm job 123 ended")
    fake.says("squeue", out="123 RUNNING None\n")
    assert launcher.groups()[0].state == "RUNNING"


def test_a_squeue_that_does_not_answer_holds_a_status_look_for_squeue_wait_at_most(
        fake, tmp_path, monkeypatch):
    """slurmctld unreachable (not refusing): squeue hangs. `cluster status` (groups) and the
    start's wait (failure) give up after SQUEUE_WAIT with an unknown state, not stop's minute."""
    monkeypatch.setattr(slurm, "SQUEUE_WAIT", 0.3)
    (fake.dir / "squeue").write_text("#!/bin/sh\nexec sleep 20\n")
    launcher = adopted(tmp_path, "123")
    [group] = launcher.groups()
    assert group.state == "unknown (squeue failed: squeue did not answer within 0.3s)"
    assert launcher.failure() is None


def test_squeue_saying_invalid_job_id_means_the_job_left_the_queue(fake, tmp_path):
    launcher = adopted(tmp_path, "123")
    fake.says("squeue", err=GONE)
    assert launcher.groups()[0].state == "ended"
    assert "the Slurm job 123 ended" in (launcher.failure() or "")


def test_stop_calls_scancel_again_until_slurm_answers(fake, tmp_path):
    launcher = adopted(tmp_path, "123")
    fake.says("scancel", out="", err=SCANCEL_DOWN, fails=3)
    fake.says("squeue", out="", err=DOWN, fails=3)  # (then: an empty queue)
    launcher.stop()
    assert fake.calls("scancel") == ["123"] * 4
    assert launcher.groups()[0].state == "cancelled"


def test_stop_says_which_jobs_to_cancel_when_slurm_does_not_answer(fake, tmp_path):
    launcher = adopted(tmp_path, "123", "124")
    fake.says("scancel", err=SCANCEL_DOWN)
    fake.says("squeue", err=DOWN)
    with pytest.raises(LauncherError) as e:
        launcher.stop()
    message = str(e.value)
    assert "\n" not in message and "123, 124" in message and "scancel 123 124" in message
    assert "Unable to contact slurm controller" in message
    assert len(fake.calls("scancel")) > 1  # (tried again within CANCEL_WAIT)
    fake.says("scancel", out="")  # Slurm answers again: stop() is run again
    fake.says("squeue", err=GONE)
    launcher.stop()
    assert fake.calls("scancel")[-1] == "123 124"


def test_a_job_still_listed_after_scancel_is_not_taken_for_stopped(fake, tmp_path):
    launcher = adopted(tmp_path, "123")
    fake.says("scancel", out="")
    fake.says("squeue", out="123 RUNNING None\n")
    with pytest.raises(LauncherError, match="still listed by squeue"):
        launcher.stop()


def record_of(home: Path, pid: int, job: str, **extra: object) -> Path:
    state = cluster_state_file()  # (in $TASKMILL_DIR = home)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({
        "pid": pid, "started": process_started(pid), "n": 1,
        "connection_file": str(home / "connection.json"),
        "launcher": {"launcher": "slurm", "work_dir": str(home / "launch" / "slurm-x"),
                     "jobs": [[job, 1]]}, **extra}))
    return state


def test_cluster_stop_fails_and_keeps_the_record_while_slurm_does_not_answer(
        fake, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("TASKMILL_DIR", str(home))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state = record_of(home, gone.pid, "123")  # (its process was killed)
    fake.says("scancel", err=SCANCEL_DOWN)
    fake.says("squeue", err=DOWN)
    assert main(["cluster", "stop"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scancel 123" in err and "Unable to contact" in err
    assert state.exists()  # so that it can be run again
    fake.says("scancel", out="")
    fake.says("squeue", err=GONE)
    assert main(["cluster", "stop"]) == 0
    assert f"cluster (pid {gone.pid}) stopped" in capsys.readouterr().out
    assert not state.exists()


def test_cluster_stop_says_what_the_cluster_process_could_not_stop(fake, tmp_path, monkeypatch,
                                                                   capsys):
    """The cluster process (a daemon) stops its launcher itself: if that fails, it keeps its
    record with the reason, and `cluster stop` says it and fails."""
    home = tmp_path / "home"
    monkeypatch.setenv("TASKMILL_DIR", str(home))
    unstopped = "could not confirm ... the Slurm job 123 ended (...): run `scancel 123` ..."
    state = cluster_state_file()
    daemon = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import json, signal, sys, time
        def stop(signum, frame):
            record = json.loads(open({str(state)!r}).read())
            record["unstopped"] = {unstopped!r}
            open({str(state)!r}, "w").write(json.dumps(record))
            sys.exit(1)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(60)
        """), "taskmill"], stdout=subprocess.PIPE, text=True)  # (taskmill: see AdoptedProcess)
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == "ready\n"
        record_of(home, daemon.pid, "123")
        fake.says("scancel", out="")  # (`cluster stop` itself must not cancel: it was told)
        fake.says("squeue", err=GONE)
        assert main(["cluster", "stop"]) == 1
        assert capsys.readouterr().err == f"taskmill: {unstopped}\n"
        assert state.exists() and fake.calls("scancel") == []
        assert main(["cluster", "stop"]) == 0  # (again: now by the record)
        assert fake.calls("scancel") == ["123"] and not state.exists()
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()


def test_status_and_start_name_a_cluster_that_could_not_confirm_its_engines_stopped(
        fake, tmp_path, monkeypatch, capsys):
    """A cluster process that ended without confirming its Slurm jobs ended (its record notes
    why) is not "killed or crashed" to `cluster status`, and `cluster start` keeps its record
    (the jobs may run on) rather than forget it."""
    home = tmp_path / "home"
    monkeypatch.setenv("TASKMILL_DIR", str(home))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    why = "could not confirm that the Slurm job 123 ended: run `scancel 123` once Slurm answers"
    state = record_of(home, gone.pid, "123", unstopped=why)
    assert main(["cluster", "status"]) == 1
    out = capsys.readouterr().out
    assert why in out and "killed or crashed" not in out and "cluster stop" in out
    assert main(["cluster", "start", "-n", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and "`taskmill cluster stop` first" in err
    assert json.loads(state.read_text())["unstopped"] == why  # (kept for `cluster stop`)
    assert fake.calls("sbatch") == [] and fake.calls("scancel") == []


def test_the_cluster_process_keeps_its_record_when_its_launcher_cannot_stop(tmp_path, capsys):
    from taskmill.cli.cluster import stop_keeping_record

    class Unstoppable:
        def stop(self) -> None:
            raise LauncherError("could not confirm ... run `scancel 123` once Slurm answers")

    state = tmp_path / "cluster.json"
    state.write_text(json.dumps({"pid": 1, "launcher": {"launcher": "slurm", "jobs": []}}))
    assert stop_keeping_record(Unstoppable(), state) is True  # type: ignore[arg-type]
    assert json.loads(state.read_text())["unstopped"].endswith("once Slurm answers")
    assert "scancel 123" in capsys.readouterr().err


def test_the_tether_calls_its_failing_scancel_again(fake, monkeypatch):
    monkeypatch.setattr(tether, "RETRY_PAUSE", 0.05)
    fake.says("scancel", out="", err=SCANCEL_DOWN, fails=2)
    r, w = os.pipe()
    os.close(w)  # (the owner is gone)
    try:
        assert tether.main(["--parent-fd", str(r), "--on-orphan", '["scancel", "123"]',
                            "--done-if", "invalid job id"]) == 0
    finally:
        os.close(r)
    assert fake.calls("scancel") == ["123"] * 3


def test_the_tether_does_not_call_scancel_again_for_a_job_that_is_gone(fake, monkeypatch):
    monkeypatch.setattr(tether, "RETRY_PAUSE", 0.05)
    fake.says("scancel", err="scancel: error: Kill job error on job id 123: Invalid job id "
                             "specified")
    assert tether.run_on_orphan(["scancel", "123"], "invalid job id") is True
    assert fake.calls("scancel") == ["123"]
    monkeypatch.setattr(tether, "RETRY_FOR", 0.2)
    assert tether.run_on_orphan(["scancel", "124"], None) is False  # (gives up in the end)


def test_an_sbatch_refusal_says_the_scripts_options_which_its_cleanup_removes(fake, tmp_path):
    fake.says("sbatch", err="sbatch: error: invalid partition specified: nosuch\n"
                            "sbatch: error: Batch job submission failed: Invalid partition "
                            "name specified")
    conn = tmp_path / "connection.json"
    write_connection_file(conn, new_connection_info(ip="0.0.0.0"))
    launcher = SlurmLauncher(partition="nosuch", time_limit="10", work_dir=tmp_path / "launch")
    ctx = LaunchContext(conn, tmp_path / "state", None)
    with pytest.raises(LauncherError) as e:
        launcher.launch(ctx, [{}])
    launcher.cleanup()
    message = str(e.value)
    assert "--partition=nosuch" in message and "--time=10" in message
    assert "Invalid partition name" in message
    assert not any(Path(w).exists() for w in message.split() if w.endswith(".sbatch"))


def test_engines_slurm_still_holds_queued_are_pending(fake, tmp_path):
    """(`Cluster.adapt` counts them as starting however long they wait: it asked for more
    jobs every start_timeout while earlier ones waited in the queue, far past `maximum`.)"""
    def launcher(mode: str = "srun") -> SlurmLauncher:
        one = SlurmLauncher.adopt({"launcher": "slurm", "work_dir": str(tmp_path / "work"),
                                   "jobs": [["7", 3], ["8", 2]]})
        one.mode = mode
        return one

    fake.says("squeue", out="7 RUNNING None\n8 PENDING Resources\n")
    assert launcher().pending() == 2  # (job 8's two engines; srun mode: a job is one line)
    assert "-r" in fake.calls("squeue")[-1].split()  # (array elements one a line)
    fake.says("squeue", out="7 RUNNING None\n7 PENDING Resources\n7 PENDING Resources\n")
    assert launcher("array").pending() == 2
    fake.says("squeue", err=DOWN)
    assert launcher().pending() is None
