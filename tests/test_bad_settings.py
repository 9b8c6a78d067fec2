"""Settings in seconds that would loop forever or end the controller later (NaN, inf, negative)
are refused where they are given, naming the setting and the value."""

from __future__ import annotations

import math

import pytest

from taskmill import Cluster
from taskmill.checks import seconds
from taskmill.cli import build_parser
from taskmill.connection import new_connection_info
from taskmill.controller import Controller
from taskmill.scheduler import Scheduler

NAN, INF = math.nan, math.inf


def test_seconds():
    assert seconds("x", 2) == 2.0 and seconds("x", 0.5) == 0.5
    assert seconds("x", 0, zero=True) == 0.0
    assert seconds("x", INF, infinite=True) == INF
    for bad in (NAN, -1, -INF, 0, INF):
        with pytest.raises(ValueError, match="x must be a number of seconds"):
            seconds("x", bad)
    with pytest.raises(ValueError):
        seconds("x", NAN, zero=True, infinite=True)
    for bad in ("1", None, True):
        with pytest.raises(TypeError, match="x must be a number of seconds"):
            seconds("x", bad)


@pytest.mark.parametrize("option, value", [
    ("heartbeat", NAN), ("heartbeat", INF), ("heartbeat", 0), ("heartbeat", -1.0),
    ("unmet_timeout", NAN), ("unmet_timeout", INF), ("unmet_timeout", -0.5),
    ("start_timeout", NAN), ("start_timeout", -1), ("start_timeout", INF),
    ("forget_clients_after", NAN), ("forget_clients_after", 0), ("forget_clients_after", -5.0),
])
def test_cluster_refuses_at_construction(option, value):
    with pytest.raises(ValueError, match=rf"^{option} must be .* not {value!r}$"):
        Cluster(1, **{option: value})


def test_cluster_accepts_meaningful_values():
    c = Cluster(1, heartbeat=0.25, unmet_timeout=0, start_timeout=5)
    assert (c.heartbeat, c.unmet_timeout, c.start_timeout) == (0.25, 0.0, 5.0)
    assert c.forget_clients_after == 300.0  # (defaults.FORGET_CLIENTS_AFTER)
    assert Cluster(1, forget_clients_after=INF).forget_clients_after == INF  # never
    assert Cluster(1, forget_clients_after=2).forget_clients_after == 2.0


@pytest.mark.parametrize("value", ["300", None, True])
def test_cluster_refuses_a_forget_bound_that_is_not_a_number(value):
    with pytest.raises(TypeError, match=rf"^forget_clients_after must be a number of seconds, "
                                        rf"not {value!r}$"):
        Cluster(1, forget_clients_after=value)


@pytest.mark.parametrize("value", [NAN, -1.0])
def test_wait_for_engines_refuses_a_timeout_that_never_ends_or_makes_no_sense(value):
    with pytest.raises(ValueError, match=rf"timeout must be .* not {value!r}"):
        Cluster(1).wait_for_engines(1, value)


@pytest.mark.parametrize("argv", [
    ["controller", "--heartbeat", "nan"], ["controller", "--heartbeat", "0"],
    ["controller", "--unmet-timeout", "nan"], ["controller", "--unmet-timeout", "-3"],
    ["controller", "--unmet-timeout", "inf"],
    ["cluster", "start", "--heartbeat", "inf"], ["cluster", "start", "--unmet-timeout", "NaN"],
    ["cluster", "start", "--start-timeout", "nan"], ["cluster", "start", "--start-timeout", "-1"],
    ["engine", "--controller-timeout", "nan"], ["status", "--timeout", "-2"],
    ["controller", "--heartbeat", "soon"],
    ["cluster", "start", "--forget-clients-after", "nan"],
    ["cluster", "start", "--forget-clients-after", "0"],
    ["cluster", "start", "--forget-clients-after", "-1"],
    ["cluster", "start", "--forget-clients-after", "soon"],
])
def test_the_cli_refuses_with_a_clear_message(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-2]}: must be a number of seconds" in err and repr(argv[-1]) in err


def test_the_cli_accepts_meaningful_values():
    a = build_parser().parse_args(["controller", "--heartbeat", "0.5", "--unmet-timeout", "0"])
    assert (a.heartbeat, a.unmet_timeout) == (0.5, 0.0)
    for option in (["cluster", "start"], ["controller"]):
        assert build_parser().parse_args(option).forget_clients_after == 300.0
        for text, value in (("2", 2.0), ("inf", INF)):
            a = build_parser().parse_args([*option, "--forget-clients-after", text])
            assert a.forget_clients_after == value


@pytest.mark.parametrize("option, value", [
    ("heartbeat", NAN), ("heartbeat", INF), ("heartbeat", 0.0), ("unmet_timeout", NAN),
    ("unmet_timeout", -1.0), ("unmet_timeout", INF),
])
def test_controller_refuses_before_it_binds(option, value):
    made = []
    try:
        with pytest.raises(ValueError, match=rf"^{option} must be .* not {value!r}$"):
            made.append(Controller(new_connection_info(), **{option: value}))
    finally:
        for ctl in made:
            ctl.close()


@pytest.mark.parametrize("value", [NAN, INF, -1.0])
def test_scheduler_refuses_an_unmet_timeout(value):
    with pytest.raises(ValueError, match=rf"^unmet_timeout must be .* not {value!r}$"):
        Scheduler(unmet_timeout=value)
    assert Scheduler(unmet_timeout=0).unmet_timeout == 0
