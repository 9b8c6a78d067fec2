"""Launchers for real: local subprocesses, mpiexec (Open MPI), a local sshd, a one-node Slurm.

Each resource manager is the real one, started by a fixture that stops it however the test
ends: sshd on a loopback port with a host key and a user key made for the test; munged,
slurmctld and slurmd with a slurm.conf, a munge key and sockets in a temp folder. Those need
root (as `.ci/run` is) and the programs of .ci/debian-packages; without them the tests say so.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from systest import (
    TASKMILL,
    ControllerProcess,
    gone,
    need_programs,
    need_root,
    stop_process,
    wait_until,
)

from taskmill import Cluster, MapTask, TaskClient, current_engine
from taskmill.connection import free_port
from taskmill.launchers import LauncherError, SlurmLauncher

MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


class Profile:
    """A TASKMILL_DIR of its own, and the `taskmill` command run with it."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.env = dict(os.environ, TASKMILL_DIR=str(home), **env)

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TASKMILL, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    @property
    def connection_file(self) -> Path:
        return self.home / "profile_default" / "connection.json"

    def record(self) -> dict:
        return json.loads((self.home / "profile_default" / "cluster.json").read_text())

    def stop_if_running(self) -> subprocess.CompletedProcess[str] | None:
        if (self.home / "profile_default" / "cluster.json").exists():
            return self("cluster", "stop")
        return None


@pytest.fixture
def profile(tmp_path):
    p = Profile(tmp_path / "home")
    yield p
    p.stop_if_running()


def engine_facts():
    import os
    import sys

    from taskmill import current_engine

    props = current_engine().properties
    # (the engine runs in a child of the `taskmill engine` command, which replaces it after a
    # last-resort kill: its parent is that command, and the parent's parent what started it)
    with open(f"/proc/{os.getppid()}/stat") as f:
        grandparent = int(f.read().rpartition(")")[2].split()[1])
    with open(f"/proc/{grandparent}/comm") as f:
        parent = f.read().strip()
    return {"executable": sys.executable, "pid": os.getpid(), "parent": parent,
            "mpi_rank": props.get("mpi_rank"), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "array_task": os.environ.get("SLURM_ARRAY_TASK_ID")}


def my_rank():
    return current_engine().properties["mpi_rank"]


# -- local -------------------------------------------------------------------------------

def env_and_cwd():
    import os

    return os.environ.get("TM_GREETING"), os.getcwd()


def test_local_launcher_reports_its_engines(profile):
    started = profile("cluster", "start", "-n", "2", "--launcher", "local", "--daemon")
    assert started.returncode == 0, started.stderr
    status = profile("cluster", "status")
    assert status.returncode == 0, status.stderr
    assert "launcher local:" in status.stdout
    assert status.stdout.count(": running (1 engine)") == 2
    pids = profile.record()["launcher"]["pids"]
    with TaskClient(profile.connection_file) as tc:
        assert sorted(e["pid"] for e in tc.engines()) == sorted(pids)
    assert profile("cluster", "stop").returncode == 0
    wait_until(lambda: all(gone(p) for p in pids), "the local engines to exit")


def test_cluster_takes_a_launcher_by_name_or_object():
    from taskmill.launchers import LocalLauncher

    with Cluster(1, launcher="local", heartbeat=0.5) as c:
        assert isinstance(c.launcher, LocalLauncher)
        assert [g.state for g in c.launcher.groups()] == ["running"]
    with pytest.raises(TypeError, match="launcher must be"):
        Cluster(1, launcher=42)


# -- engines that start before their controller -------------------------------------------

def test_an_engine_waits_for_a_controller_that_starts_later(tmp_path):
    controller = ControllerProcess(tmp_path, conn=tmp_path / "connection.json", db=":memory:",
                                   heartbeat=None, dashboard=True)
    conn = controller.conn
    log = tmp_path / "engine.log"
    with open(log, "wb") as out:
        engine = subprocess.Popen([*TASKMILL, "engine", "--no-replace", "--connection-file", str(conn)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "no answer from the controller" in log.read_text(),
                   "the engine to say it waits for its controller")
        assert engine.poll() is None
        controller.start()
        with TaskClient(conn, timeout=30) as tc:
            wait_until(lambda: len(tc.engines()) == 1, "the engine to register", timeout=60)
            assert tc.run(MapTask(os.getpid), block=True) == engine.pid
    finally:
        engine.terminate()
        engine.wait(10)
        controller.stop()


def test_an_engine_gives_up_after_its_controller_timeout(tmp_path):
    from taskmill.connection import new_connection_info, write_connection_file

    info = new_connection_info()
    conn = write_connection_file(tmp_path / "connection.json", info)
    done = subprocess.run([*TASKMILL, "engine", "--no-replace", "--connection-file", str(conn),
                           "--controller-timeout", "1.5"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert f"no taskmill controller answered at {info.engine_url} within 1.5s" in done.stderr
    missing = subprocess.run([*TASKMILL, "engine", "--no-replace", "--connection-file",
                              str(tmp_path / "absent.json"), "--controller-timeout", "0.5"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no connection file at" in missing.stderr


# -- bad input -----------------------------------------------------------------------------

def test_a_missing_program_is_named(profile, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    profile.env["PATH"] = str(empty)
    for launcher, program in (("slurm", "sbatch"), ("mpi", "mpiexec"), ("ssh", "ssh")):
        extra = ["--hosts", "somewhere"] if launcher == "ssh" else []
        done = profile("cluster", "start", "--launcher", launcher, "-n", "1", *extra)
        assert done.returncode == 2
        assert f"--launcher {launcher} needs '{program}'" in done.stderr
        assert "not on PATH" in done.stderr
    assert not (profile.home / "profile_default" / "cluster.json").exists()


def test_options_of_another_launcher_are_refused(profile):
    done = profile("cluster", "start", "--launcher", "mpi", "-n", "1", "--hosts", "a,b")
    assert done.returncode == 2
    assert "--hosts is an option of --launcher ssh, not of --launcher mpi" in done.stderr
    done = profile("cluster", "start", "--launcher", "ssh", "-n", "1")
    assert done.returncode == 2 and "the ssh launcher needs hosts" in done.stderr


def test_an_ssh_host_that_refuses_is_named(profile):
    need_programs("ssh")
    port = free_port()  # nothing listens there
    host = f"ssh://root@127.0.0.1:{port}"
    done = profile("cluster", "start", "--launcher", "ssh", "-n", "1", "--hosts", host)
    assert done.returncode == 1
    assert f"ssh could not log in to {host}" in done.stderr
    assert "Connection refused" in done.stderr


# -- MPI -----------------------------------------------------------------------------------

def test_mpi_launcher_engines_carry_their_rank(tmp_path):
    need_programs("mpiexec")
    profile = Profile(tmp_path / "home", **MPI_AS_ROOT)
    try:
        started = profile("cluster", "start", "--launcher", "mpi", "-n", "4",
                          "--mpi-args=--oversubscribe", "--daemon", "--env", "TM_GREETING=mpi")
        assert started.returncode == 0, started.stderr + started.stdout
        status = profile("cluster", "status")
        assert "mpiexec -n 4" in status.stdout and "running (4 engines)" in status.stdout
        with TaskClient(profile.connection_file) as tc:
            engines = tc.engines()
            assert sorted(e["properties"]["mpi_rank"] for e in engines) == [0, 1, 2, 3]
            by_rank = {e["properties"]["mpi_rank"]: e["engineid"] for e in engines}
            for rank in range(4):
                f = tc.options(depend={"mpi_rank": rank}).submit(my_rank)
                assert f.result(timeout=60) == rank
                assert f.metadata["engineid"] == by_rank[rank]
            facts = tc.run(MapTask(engine_facts), block=True)
            assert facts["executable"] == sys.executable
            assert tc.submit(env_and_cwd).result(timeout=60)[0] == "mpi"
            pids = [e["pid"] for e in engines]
        work_dirs = list((profile.home / "launch").glob("mpi-*"))
        assert len(work_dirs) == 1
    finally:
        stopped = profile.stop_if_running()
    assert stopped is not None and stopped.returncode == 0, stopped and stopped.stderr
    wait_until(lambda: all(gone(p) for p in pids), "the MPI engines to exit")
    assert not work_dirs[0].exists()


def test_an_mpiexec_that_fails_fails_the_start_with_its_output(tmp_path):
    need_programs("mpiexec")
    profile = Profile(tmp_path / "home", **MPI_AS_ROOT)
    done = profile("cluster", "start", "--launcher", "mpi", "-n", "2",
                   "--mpi-args=--no-such-mpiexec-option")
    assert done.returncode == 1
    assert "2 engines registered, and no more will: mpiexec ended (exited" in done.stderr
    assert "no-such-mpiexec-option" in done.stderr  # mpiexec's own complaint
    assert not (profile.home / "profile_default" / "cluster.json").exists()


def test_mpi_engines_end_when_their_owner_is_killed(tmp_path):
    need_programs("mpiexec")
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import json, time
        from taskmill import Cluster
        from taskmill.launchers import MPILauncher
        c = Cluster(2, launcher=MPILauncher(mpi_args=["--oversubscribe"])).start()
        tether = c.launcher.record()["runs"][0][1]
        print(json.dumps([str(c.state_dir), c.controller_pid, tether, *c.engine_pids.values()]),
              flush=True)
        time.sleep(600)
    """))
    env = dict(os.environ, TASKMILL_DIR=str(tmp_path / "home"), **MPI_AS_ROOT)
    def after_the_kill(pids: list[int]) -> None:
        assert len(pids) == 4
        wait_until(lambda: all(gone(p) for p in pids), "mpiexec's engines to end", timeout=30)
        wait_until(lambda: not list((tmp_path / "home" / "launch").glob("mpi-*")),
                   "the tether to remove the copy of the connection file")

    kill_the_owner(script, env, after_the_kill)


def kill_the_owner(script: Path, env: dict[str, str], check) -> None:
    """Run `script` (it prints its state folder and the pids it started, then sleeps), SIGKILL
    it, and `check(pids)`; its state folder is removed whatever happens."""
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env=env)
    state_dir = None
    try:
        state_dir, *pids = json.loads(owner.stdout.readline())
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        check(pids)
    finally:
        owner.kill()
        owner.wait()
        if state_dir:  # a killed owner cannot remove its logs
            shutil.rmtree(state_dir, ignore_errors=True)


# -- SSH -----------------------------------------------------------------------------------

class SSHServer:
    def __init__(self, port: int, user_key: Path) -> None:
        self.port = port
        self.host = f"ssh://root@127.0.0.1:{port}"
        self.ssh = ["ssh", "-i", str(user_key), "-o", "BatchMode=yes",
                    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "LogLevel=ERROR"]


@pytest.fixture
def sshd(tmp_path_factory):
    need_root("run sshd and log in as root")
    need_programs("sshd", "ssh", "ssh-keygen")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True, timeout=30)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(textwrap.dedent(f"""
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {d / 'host_key'}
        AuthorizedKeysFile {d / 'authorized_keys'}
        PidFile {d / 'sshd.pid'}
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
    """))
    # sshd's privilege-separation folder, which its service would make. It stays (empty, in
    # the /run tmpfs): removing it could pull it from under another test run's sshd.
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(d / "sshd.log", "wb") as log:
        server = subprocess.Popen([shutil.which("sshd"), "-D", "-e", "-f", str(d / "sshd_config")],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_until(listening, "sshd to listen", timeout=30)
        yield SSHServer(port, d / "user_key")
    finally:
        stop_process(server)


def test_ssh_launcher_starts_engines_through_sshd(sshd, profile):
    remote_home = Path(pwd.getpwuid(0).pw_dir)
    home_before = sorted(p.name for p in remote_home.iterdir())
    started = profile("cluster", "start", "--launcher", "ssh", "-n", "2", "--hosts", sshd.host,
                      "--ssh-command", " ".join(sshd.ssh), "--daemon")
    assert started.returncode == 0, started.stderr + started.stdout
    ssh_pids = [pid for _, pid in profile.record()["launcher"]["sessions"]]
    status = profile("cluster", "status")
    assert status.stdout.count(f"ssh {sshd.host} (pid ") == 2, status.stdout
    with TaskClient(profile.connection_file) as tc:
        assert len(tc.engines()) == 2
        facts = list(tc.run_all(MapTask(engine_facts)).values())
        assert [f["executable"] for f in facts] == [sys.executable] * 2  # the venv's python
        assert {f["parent"] for f in facts} == {"sshd"}  # started by sshd, not by us
        assert tc.map(abs, range(-20, 0)) == list(range(20, 0, -1))
        pids = [f["pid"] for f in facts]
    # The connection info went through ssh's stdin: nothing was written on the "remote" host.
    assert sorted(p.name for p in remote_home.iterdir()) == home_before
    stopped = profile("cluster", "stop")
    assert stopped.returncode == 0, stopped.stderr
    wait_until(lambda: all(gone(p) for p in [*pids, *ssh_pids]),
               "the engines and their ssh sessions to end")


def test_ssh_launcher_can_point_to_a_connection_file_already_on_the_host(sshd, tmp_path):
    from taskmill.launchers import SSHLauncher

    shared = tmp_path / "shared" / "connection.json"  # as on a shared filesystem
    launcher = SSHLauncher([sshd.host], ssh=sshd.ssh, connection_file_on_hosts=str(shared))
    with Cluster(1, launcher=launcher, connection_file=shared, heartbeat=0.5,
                 env={"TM_GREETING": "via ssh"}, cwd=str(tmp_path)) as c:  # (env, cwd: item 5)
        with c.client() as tc:
            assert tc.run(MapTask(engine_facts), block=True)["parent"] == "sshd"
            assert tc.submit(env_and_cwd).result(timeout=60) == ("via ssh", str(tmp_path))
    missing = SSHLauncher([sshd.host], ssh=sshd.ssh,
                          connection_file_on_hosts=str(tmp_path / "nowhere.json"))
    with pytest.raises(LauncherError, match=f"cannot start engines on {sshd.host}.*no connection"):
        Cluster(1, launcher=missing).start()


def test_ssh_engines_end_when_their_owner_is_killed(sshd, tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import json, time
        from taskmill import Cluster
        from taskmill.launchers import SSHLauncher
        launcher = SSHLauncher([{sshd.host!r}], ssh={sshd.ssh!r})
        c = Cluster(1, launcher=launcher).start()
        ssh = [pid for _, pid in launcher.record()["sessions"]]
        print(json.dumps([str(c.state_dir), c.controller_pid, *ssh, *c.engine_pids.values()]),
              flush=True)
        time.sleep(600)
    """))
    env = dict(os.environ, TASKMILL_DIR=str(tmp_path / "home"))
    def after_the_kill(pids: list[int]) -> None:
        assert len(pids) == 3
        wait_until(lambda: all(gone(p) for p in pids),
                   "the engine to read EOF on its stdin, and its ssh session to end")

    kill_the_owner(script, env, after_the_kill)


# -- Slurm ---------------------------------------------------------------------------------

class SlurmCluster:
    """A one-node Slurm cluster of this machine, with munge, in a folder of its own."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.conf = d / "slurm.conf"
        self.munge_socket = d / "munge" / "munge.socket"
        self.daemons: list[subprocess.Popen[bytes]] = []

    def squeue(self) -> list[str]:
        done = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True,
                              timeout=60, check=True)
        return done.stdout.splitlines()

    def job(self, job: str) -> str:
        return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                              timeout=60).stdout

    def write_config(self) -> None:
        """slurm.conf for one node of 2 CPUs (config_overrides: whatever this machine has)."""
        d, node = self.dir, socket.gethostname()
        for sub in ("state", "spool", "munge"):
            (d / sub).mkdir(mode=0o700)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(textwrap.dedent(f"""
            ClusterName=taskmilltest
            SlurmctldHost={node}(127.0.0.1)
            SlurmctldPort={free_port()}
            SlurmdPort={free_port()}
            SlurmUser=root
            SlurmdUser=root
            AuthType=auth/munge
            CredType=cred/munge
            AuthInfo=socket={self.munge_socket}
            StateSaveLocation={d / 'state'}
            SlurmdSpoolDir={d / 'spool'}
            SlurmctldPidFile={d / 'slurmctld.pid'}
            SlurmdPidFile={d / 'slurmd.pid'}
            SlurmctldLogFile={d / 'slurmctld.log'}
            SlurmdLogFile={d / 'slurmd.log'}
            ProctrackType=proctrack/pgid
            TaskPlugin=task/none
            JobAcctGatherType=jobacct_gather/none
            AccountingStorageType=accounting_storage/none
            SelectType=select/cons_tres
            SelectTypeParameters=CR_Core
            MpiDefault=none
            ReturnToService=2
            InactiveLimit=0
            MinJobAge=2
            KillWait=5
            SlurmdParameters=config_overrides
            NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN
            PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
        """))

    def start(self) -> None:
        """munged, slurmctld and slurmd in the foreground, as children of this process."""
        m = self.dir / "munge"
        self._daemon(["munged", "--foreground", f"--socket={self.munge_socket}",
                      f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                      f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munge.seed'}",
                      "--force"], "munged")
        wait_until(self.munge_socket.exists, "munged to listen", timeout=30)
        self._daemon(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._daemon(["slurmd", "-D", "-f", str(self.conf)], "slurmd")

        def idle():
            done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                  timeout=60)
            return done.stdout.strip() == "idle"
        wait_until(idle, "the Slurm node to be idle", timeout=60)

    def _daemon(self, cmd: list[str], name: str) -> None:
        with open(self.dir / f"{name}.out", "wb") as out:
            self.daemons.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=subprocess.STDOUT))

    def stop(self) -> None:
        """Cancel every job, wait until squeue is empty, then stop the daemons."""
        try:
            jobs = [line.split()[0] for line in self.squeue()] if self.daemons else []
            if jobs:
                subprocess.run(["scancel", *jobs], timeout=60)
                wait_until(lambda: not self.squeue(), "squeue to be empty", timeout=60)
        finally:
            for daemon in reversed(self.daemons):  # slurmd, slurmctld, then munged
                stop_process(daemon, 30)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    need_root("run munged, slurmctld and slurmd")
    need_programs("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo",
                  "scontrol")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.write_config()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)  # for the commands of the tests and launchers
    try:
        cluster.start()
        yield cluster
        assert cluster.squeue() == [], "a test left a job in the queue"
    finally:
        try:
            cluster.stop()
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old


def test_slurm_launcher_submits_a_job_and_cluster_stop_cancels_it(slurm, tmp_path):
    profile = Profile(tmp_path / "home")
    try:
        started = profile("cluster", "start", "--launcher", "slurm", "-n", "2",
                          "--slurm-time", "10", "--slurm-partition", "debug",
                          "--slurm-directive=--comment=from-a-taskmill-test", "--daemon")
        assert started.returncode == 0, started.stderr + started.stdout
        [[job, engines]] = profile.record()["launcher"]["jobs"]
        assert engines == 2
        assert [line.split()[1] for line in slurm.squeue()] == ["RUNNING"]
        shown = slurm.job(job)
        assert "TimeLimit=00:10:00" in shown and "Comment=from-a-taskmill-test" in shown
        assert "NumTasks=2" in shown and "Partition=debug" in shown
        status = profile("cluster", "status")
        assert f"slurm job {job}: RUNNING (2 engines)" in status.stdout
        with TaskClient(profile.connection_file) as tc:
            assert len(tc.engines()) == 2
            facts = list(tc.run_all(MapTask(engine_facts)).values())
            assert {f["slurm_job"] for f in facts} == {job}  # they run inside the job
            assert [f["executable"] for f in facts] == [sys.executable] * 2
            assert tc.map(abs, range(-50, 0)) == list(range(50, 0, -1))
    finally:
        stopped = profile.stop_if_running()
    assert stopped is not None and stopped.returncode == 0, stopped and stopped.stderr
    assert slurm.squeue() == []
    assert not list((profile.home / "launch").glob("slurm-*"))


def test_slurm_job_array_through_the_python_api(slurm):
    launcher = SlurmLauncher(mode="array", time_limit="5")
    with Cluster(2, launcher=launcher, heartbeat=0.5, env={"TM_GREETING": "via slurm"}) as c, \
            c.client() as tc:
        assert tc.submit(env_and_cwd).result(timeout=60)[0] == "via slurm"
        [group] = launcher.groups()
        assert group.engines == 2 and group.state == "RUNNING x2"
        facts = list(tc.run_all(MapTask(engine_facts)).values())
        assert sorted(f["array_task"] for f in facts) == ["0", "1"]
        assert tc.map(abs, [-1, -2, -3]) == [1, 2, 3]
    assert slurm.squeue() == []
    assert not launcher.work.path.exists()


def nap_where(seconds):
    import os
    import time

    time.sleep(seconds)
    return os.environ.get("SLURM_JOB_ID")


def test_an_adaptive_cluster_on_slurm_starts_engines_as_jobs_and_they_end_when_idle(slurm):
    """adapt with the Slurm launcher (issue 18 item 7): each growth is a job (array elements
    here); a retired engine exits 0 and its job ends; nothing is lost."""
    launcher = SlurmLauncher(mode="array", time_limit="5")
    with Cluster(1, launcher=launcher, heartbeat=0.5) as c, c.client() as tc:
        [first_job] = [j for j, _ in launcher.jobs]
        adapter = c.adapt(1, 2, idle_after=1.0, interval=0.3)  # (the node has 2 CPUs)
        jobs = [f.result(timeout=120) for f in [tc.submit(nap_where, 0.5) for _ in range(24)]]
        assert len(jobs) == 24 and adapter.largest == 2
        assert len(launcher.jobs) == 2  # it grew by submitting a job
        assert set(jobs) == {first_job, launcher.jobs[1][0]}  # tasks ran in both
        wait_until(lambda: sum(e["state"] in ("idle", "busy") for e in tc.engines()) == 1,
                   "the cluster to shrink to one engine")
        wait_until(lambda: len(slurm.squeue()) == 1, "the retired engine's job to end")
        stats = tc.statistics()
        assert stats["engines_died"] == 0 and stats["engines_retired"] >= 1
        adapter.stop()
    assert slurm.squeue() == []


def test_a_slurm_job_is_cancelled_when_its_owner_is_killed(slurm, tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import json, time
        from taskmill import Cluster
        c = Cluster(1, launcher="slurm").start()
        print(json.dumps([str(c.state_dir), c.launcher.jobs[0][0]]), flush=True)
        time.sleep(600)
    """))
    env = dict(os.environ, TASKMILL_DIR=str(tmp_path / "home"))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env=env)
    state_dir = None
    try:
        state_dir, job = json.loads(owner.stdout.readline())
        assert [line.split()[0] for line in slurm.squeue()] == [job]
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        wait_until(lambda: slurm.squeue() == [], "the tether to cancel the orphaned job")
    finally:
        owner.kill()
        owner.wait()
        if state_dir:  # a killed owner cannot remove its logs
            shutil.rmtree(state_dir, ignore_errors=True)
