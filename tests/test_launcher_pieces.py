"""Launcher pieces that need no process: rank detection, batch scripts, hosts, addresses."""

from __future__ import annotations

import pytest

from taskmill.connection import default_location, new_connection_info
from taskmill.launchers import (
    LauncherError,
    MPILauncher,
    SlurmLauncher,
    SSHLauncher,
    make_launcher,
)
from taskmill.launchers.base import one_set_of_properties
from taskmill.launchers.mpi import mpi_rank_from_environment
from taskmill.launchers.ssh import read_hosts_file


def test_mpi_rank_comes_from_whichever_runtime_set_it():
    assert mpi_rank_from_environment({}) is None
    assert mpi_rank_from_environment({"OMPI_COMM_WORLD_RANK": "3"}) == 3
    assert mpi_rank_from_environment({"PMIX_RANK": "2"}) == 2
    assert mpi_rank_from_environment({"PMI_RANK": "7"}) == 7
    assert mpi_rank_from_environment({"PMI_RANK": "x", "PMIX_RANK": "1"}) == 1


def test_srun_batch_script(tmp_path):
    launcher = SlurmLauncher(account="proj1", partition="gpu", time_limit="1:00:00",
                             directives=["--mem=4G", "#SBATCH --gres=gpu:1"],
                             python="/opt/py env/bin/python", work_dir=tmp_path)
    script = launcher.batch_script(3, tmp_path / "c.json", {"site": "lab"})
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    for line in ("#SBATCH --ntasks=3", "#SBATCH --account=proj1", "#SBATCH --partition=gpu",
                 "#SBATCH --time=1:00:00", "#SBATCH --mem=4G", "#SBATCH --gres=gpu:1"):
        assert line in lines
    assert not any("--array" in line for line in lines)
    assert lines[-1].startswith("exec srun '/opt/py env/bin/python' -m taskmill engine "
                                f"--connection-file {tmp_path}/c.json")
    assert lines[-1].endswith("--property 'site=\"lab\"'")


def test_array_batch_script(tmp_path):
    script = SlurmLauncher(mode="array", work_dir=tmp_path).batch_script(
        4, tmp_path / "c.json", {})
    assert "#SBATCH --array=0-3" in script and "#SBATCH --ntasks=1" in script
    assert "slurm-%A_%a.out" in script
    assert "\nexec " in script and "srun" not in script
    assert "--account" not in script and "--partition" not in script


def test_slurm_options_are_checked():
    with pytest.raises(LauncherError, match="mode must be one of"):
        SlurmLauncher(mode="batch")
    with pytest.raises(LauncherError, match="list of sbatch options"):
        SlurmLauncher(directives="--mem=4G")


@pytest.mark.parametrize("option, value", [
    ("directives", ["--mem=4G\n#SBATCH --wrap='rm -rf ~'"]),
    ("directives", ["--mem=4G", "--gres=gpu:1\r"]),
    ("account", "proj1\nexec evil"),
    ("partition", "cpu\x00"),
    ("time_limit", "1:00:00\n"),
    ("job_name", "jobs\x1b[2J"),
])
def test_a_slurm_option_with_a_newline_or_control_character_is_refused(tmp_path, option, value):
    with pytest.raises(LauncherError, match="newline or another control character"):
        SlurmLauncher(work_dir=tmp_path, **{option: value})


def test_a_slurm_work_dir_with_a_newline_is_refused(tmp_path):
    with pytest.raises(LauncherError, match="work_dir"):
        SlurmLauncher(work_dir=tmp_path / "a\n#SBATCH --wrap=x")


def test_slurm_options_on_one_line_stay_one_line_each(tmp_path):
    launcher = SlurmLauncher(account="proj1", directives=["--mem=4G", "--cpus-per-task=2"],
                             work_dir=tmp_path)
    lines = launcher.batch_script(2, tmp_path / "c.json", {}).splitlines()
    assert [ln for ln in lines if ln.startswith("#SBATCH")][-3:] == [
        "#SBATCH --account=proj1", "#SBATCH --mem=4G", "#SBATCH --cpus-per-task=2"]


@pytest.mark.parametrize("host", ["-oProxyCommand=touch /tmp/pwned", "-", "--", "node1 -v",
                                  "node\n2", ""])
def test_an_ssh_host_that_ssh_would_read_as_an_option_is_refused(tmp_path, host):
    with pytest.raises(LauncherError, match="starts with '-'|space or a control|non-empty"):
        SSHLauncher(["node1", host])
    hosts = tmp_path / "hosts"
    hosts.write_text(f"node1\n{host}\n")
    if host.strip() and "\n" not in host:  # (a hosts file has one host per line)
        with pytest.raises(LauncherError, match="starts with '-'|space or a control"):
            SSHLauncher(hosts_file=hosts)


def test_ssh_options_end_before_the_host():
    launcher = SSHLauncher(["alice@node1"], ssh=["/usr/bin/ssh", "-i", "key"])
    assert launcher.ssh_argv("alice@node1", "exec x") == [
        "/usr/bin/ssh", "-i", "key", "--", "alice@node1", "exec x"]
    # Another program (a wrapper) may not know `--`: it gets the host as before.
    wrapped = SSHLauncher(["node1"], ssh=["my-ssh-wrapper", "-q"])
    assert wrapped.ssh_argv("node1", "exec x") == ["my-ssh-wrapper", "-q", "node1", "exec x"]


def test_hosts_file(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# the lab\nnode1\n\n  alice@node2   # the big one\nssh://bob@node3:2222\n")
    assert read_hosts_file(path) == ["node1", "alice@node2", "ssh://bob@node3:2222"]
    launcher = SSHLauncher(["node0"], hosts_file=path)
    assert launcher.hosts == ["node0", "node1", "alice@node2", "ssh://bob@node3:2222"]
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(LauncherError, match="names no host"):
        read_hosts_file(tmp_path / "empty")
    with pytest.raises(LauncherError, match="cannot read the hosts file"):
        read_hosts_file(tmp_path / "absent")
    with pytest.raises(LauncherError, match="needs hosts"):
        SSHLauncher([])
    with pytest.raises(LauncherError, match="not the string"):
        SSHLauncher("node1")


def test_one_command_launchers_need_one_set_of_properties():
    assert one_set_of_properties("mpi", [{"a": 1}, {"a": 1}]) == {"a": 1}
    with pytest.raises(LauncherError, match="same properties"):
        one_set_of_properties("mpi", [{"a": 1}, {"a": 2}])


def test_make_launcher():
    assert isinstance(make_launcher("mpi", mpi_args=["-x", "A"]), MPILauncher)
    with pytest.raises(LauncherError, match="no launcher called 'pbs'"):
        make_launcher("pbs")


def test_the_connection_file_advertises_the_location_and_the_controller_binds_ip():
    info = new_connection_info("0.0.0.0", location="ctl.example.org")
    assert info.ip == "0.0.0.0"
    assert info.client_url.startswith("tcp://ctl.example.org:")
    assert info.client_bind_url == "tcp://0.0.0.0:" + info.client_url.rsplit(":", 1)[1]
    assert info.engine_bind_url == "tcp://0.0.0.0:" + info.engine_url.rsplit(":", 1)[1]
    plain = new_connection_info()
    assert plain.client_url == plain.client_bind_url and plain.ip == "127.0.0.1"
    assert default_location("10.1.2.3") == "10.1.2.3"
    assert default_location("0.0.0.0") not in ("0.0.0.0", "")


def test_connection_info_as_one_line_leaves_the_rest_of_the_stream():
    import json
    import os

    from taskmill.connection import read_connection_line
    from taskmill.errors import ConnectionFileError

    info = new_connection_info()
    r, w = os.pipe()
    try:
        line = json.dumps(json.loads(info.to_json()), separators=(",", ":"))
        os.write(w, line.encode() + b"\nthe lifeline")
        assert read_connection_line(r) == info
        assert os.read(r, 100) == b"the lifeline"
        os.close(w)
        w = -1
        with pytest.raises(ConnectionFileError, match="no connection info"):
            read_connection_line(r)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_ssh_engines_on_other_machines_are_not_pointed_at_this_ones_loopback():
    """(They waited out the whole start, and the error said only that no controller answered
    at tcp://127.0.0.1:...)"""
    from taskmill.launchers.ssh import host_name, require_reachable

    assert [host_name(h) for h in ("node1", "alice@node1", "ssh://bob@node3:2222",
                                   "ssh://[::1]:22")] == ["node1", "node1", "node3", "::1"]
    require_reachable("tcp://127.0.0.1:5000", ["localhost", "alice@127.0.0.1"])
    require_reachable("tcp://10.0.0.1:5000", ["node1"])
    with pytest.raises(LauncherError, match=r"loopback address, which engines on node2 cannot "
                       r"reach: give the cluster an address they can reach \(ip='0.0.0.0'"):
        require_reachable("tcp://127.0.0.1:5000", ["localhost", "node2"])
