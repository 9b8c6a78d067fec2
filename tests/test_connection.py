"""Connection files: private from birth, found in the documented order, refused when readable."""

from __future__ import annotations

import os
import stat

import pytest

from taskmill import ConnectionFileError
from taskmill.connection import (
    default_connection_file,
    find_connection_file,
    new_connection_info,
    read_connection_file,
    write_connection_file,
)


def test_written_0600_in_0700_dir(tmp_path):
    path = tmp_path / "sub" / "conn.json"
    info = new_connection_info()
    write_connection_file(path, info)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    back = read_connection_file(path)
    assert back.key == info.key and back.client_url == info.client_url
    assert back.signature_scheme == "hmac-sha256"


def test_never_visible_with_a_wider_mode(tmp_path, monkeypatch):
    """The file is opened 0600 from the start: even a permissive umask cannot widen it."""
    old = os.umask(0)
    try:
        path = write_connection_file(tmp_path / "c.json", new_connection_info())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_readable_by_others_is_refused_with_the_fix(tmp_path):
    path = write_connection_file(tmp_path / "c.json", new_connection_info())
    os.chmod(path, 0o644)
    with pytest.raises(ConnectionFileError, match="chmod 600"):
        read_connection_file(path)


def test_missing_and_malformed(tmp_path):
    with pytest.raises(ConnectionFileError, match="taskmill cluster start"):
        read_connection_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"{not json")
    os.close(fd)
    with pytest.raises(ConnectionFileError, match="malformed"):
        read_connection_file(bad)


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKMILL_CONNECTION", str(tmp_path / "env.json"))
    assert find_connection_file(tmp_path / "explicit.json") == tmp_path / "explicit.json"
    assert find_connection_file() == tmp_path / "env.json"
    monkeypatch.delenv("TASKMILL_CONNECTION")
    monkeypatch.setenv("TASKMILL_DIR", str(tmp_path / "home"))
    assert find_connection_file() == default_connection_file()
    assert str(default_connection_file()).startswith(str(tmp_path / "home"))


def test_folders_taskmill_makes_are_0700_and_an_existing_one_keeps_its_mode(tmp_path):
    path = write_connection_file(tmp_path / "a" / "b" / "conn.json", new_connection_info())
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700  # parents too
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    shared = tmp_path / "readable"
    shared.mkdir()
    os.chmod(shared, 0o755)  # others may read it: the file itself is 0600, so that is fine
    path = write_connection_file(shared / "conn.json", new_connection_info())
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755, "an existing folder was chmodded"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o722], ids=lambda m: f"{m:04o}")
def test_a_folder_others_can_write_is_refused_with_the_fix(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    with pytest.raises(ConnectionFileError, match=r"can be written by others .*chmod go-w"):
        write_connection_file(shared / "conn.json", new_connection_info())
    assert stat.S_IMODE(shared.stat().st_mode) == mode, "the folder's mode was changed"
    assert not list(shared.iterdir()), "something was written into it"


def test_the_cli_reports_a_writable_folder_without_a_traceback(tmp_path, capsys):
    from taskmill.cli import main

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    assert main(["curve-key", "bob", "--dir", str(shared)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("taskmill: the folder") and "chmod go-w" in err
    assert not list(shared.iterdir())
