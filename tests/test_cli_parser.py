"""The `taskmill` command line's shape: every option has a help text, `cluster start|stop|status`
are subcommands with only their own options, `--version`, and the new options' values."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys

import pytest

import taskmill
from taskmill.cli import build_parser
from taskmill.cli.parser import CommandParser
from taskmill.defaults import DEFAULT_KEEP_RESULTS


def subparsers(parser: CommandParser, path=("taskmill",)):
    """(command path, parser) for the parser and every subcommand's, recursively."""
    yield path, parser
    for name, sub in parser.commands.items():
        yield from subparsers(sub, (*path, name))


def options(parser: CommandParser) -> set[str]:
    return {s for a in parser.arguments for s in a.option_strings}


def test_every_option_and_argument_of_every_command_has_a_help_text():
    missing = []
    walked = []
    for path, parser in subparsers(build_parser()):
        walked.append(" ".join(path))
        for action in parser.arguments:
            if action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert "taskmill cluster start" in walked and "taskmill status" in walked
    assert "taskmill clean" in walked and len(walked) >= 11
    assert missing == []


@pytest.mark.parametrize("action", ["stop", "status"])
def test_cluster_stop_and_status_show_only_their_own_options(action):
    parsers = dict(subparsers(build_parser()))
    assert options(parsers[("taskmill", "cluster", action)]) == {"-h", "--help"}
    start = options(parsers[("taskmill", "cluster", "start")])
    assert {"-n", "--launcher", "--daemon", "--resume", "--keep-results", "--slurm-mode"} <= start
    with pytest.raises(SystemExit) as e:  # a start option is refused by stop and status
        build_parser().parse_args(["cluster", action, "--launcher", "ssh"])
    assert e.value.code == 2


def test_existing_command_lines_still_parse():
    a = build_parser().parse_args(["cluster", "start", "-n", "2", "--daemon", "--no-dashboard"])
    assert (a.action, a.n, a.daemon, a.resume, a.keep_results) == ("start", 2, True, False,
                                                                   DEFAULT_KEEP_RESULTS)
    assert build_parser().parse_args(["cluster", "stop"]).action == "stop"
    assert build_parser().parse_args(["cluster", "status"]).action == "status"
    a = build_parser().parse_args(["controller", "--log-level", "warning", "--keep-results", "inf"])
    assert (a.log_level, a.keep_results) == ("WARNING", math.inf)


@pytest.mark.parametrize("argv", [["controller", "--keep-results", "-1"],
                                  ["cluster", "start", "--keep-results", "nan"],
                                  ["controller", "--keep-results", "soon"]])
def test_keep_results_refuses_what_is_not_a_number_of_days(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert "argument --keep-results: must be a number of days" in capsys.readouterr().err


def test_max_message_size_is_an_int_of_at_least_64_kib(capsys):
    assert build_parser().parse_args(["controller"]).max_message_size is None  # (the file's)
    a = build_parser().parse_args(["controller", "--max-message-size", "65536"])
    assert a.max_message_size == 65536
    with pytest.raises(SystemExit):
        build_parser().parse_args(["controller", "--max-message-size", "1000"])
    assert "--max-message-size must be at least 65536 bytes" in capsys.readouterr().err


def test_log_level_refuses_a_level_that_does_not_exist(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["engine", "--log-level", "loud"])
    assert "invalid choice" in capsys.readouterr().err


def test_version():
    out = subprocess.run([sys.executable, "-m", "taskmill", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"taskmill {taskmill.__version__}"
