"""The two decoders that benchmarks/protocol_codec.py compares accept and refuse the same headers.

Without this the benchmark could compare a strict decoder with a lax one; with it, a ratio in its
table is a like-for-like cost.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from pathlib import Path

import msgpack
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("protocol_codec", ROOT / "benchmarks" / "protocol_codec.py")
codec = importlib.util.module_from_spec(spec)
sys.modules["protocol_codec"] = codec  # (msgspec resolves its annotations through it)
spec.loader.exec_module(codec)


def good_submit() -> dict:
    node = {"exec": {"kind": "map", "fn": 1}, "nframes": 2, "retries": 1, "timeout": 5,
            "recovery": None, "pmac": b"m" * 32, "depend": None}
    string = {"exec": {"kind": "string", "expression": "x = 1", "pull": ["x"]}, "nframes": 0,
              "recovery": 0, "depend": {"os": "linux"}}
    return {"type": "submit", "tasks": [{"nodes": [node, string], "after": [3, 4]},
                                        {"nodes": [dict(node, depend="callable", dpmac=b"d" * 32)]}]}


def verdict(fn, header: dict, nframes: int) -> bool:
    try:
        fn(msgpack.packb(header, use_bin_type=True), nframes)
    except codec.BadRequest:
        return False
    return True


def mutate(path: tuple, value) -> dict:
    h = copy.deepcopy(good_submit())
    target = h
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return h


NODE = ("tasks", 0, "nodes", 0)
BAD = [
    (("tasks",), []),
    (("tasks",), "x"),
    (("tasks", 0, "nodes"), []),
    ((*NODE, "exec"), KeyError),
    ((*NODE, "exec"), {"kind": "shell"}),
    ((*NODE, "exec", "fn"), 3),  # more function frames than the node has
    ((*NODE, "exec", "fn"), True),
    ((*NODE, "exec", "clear_before"), 1),
    ((*NODE, "nframes"), -1),
    ((*NODE, "nframes"), True),
    ((*NODE, "nframes"), 5),  # more frames than the message has
    ((*NODE, "retries"), -2),
    ((*NODE, "retries"), 1.5),
    ((*NODE, "recovery"), 2),  # beyond the task's nodes
    ((*NODE, "timeout"), 0),
    ((*NODE, "timeout"), -1.0),
    ((*NODE, "timeout"), math.nan),
    ((*NODE, "timeout"), 1e12),
    ((*NODE, "timeout"), True),
    ((*NODE, "pmac"), "not bytes"),
    ((*NODE, "pmac"), None),  # payload frames without their MAC
    ((*NODE, "depend"), 7),
    ((*NODE, "depend"), "other"),
    (("tasks", 0, "nodes", 1, "exec", "expression"), None),
    (("tasks", 0, "nodes", 1, "exec", "pull"), ["x", 1]),
    (("tasks", 0, "after"), [1, True]),
    (("tasks", 0, "after"), "1"),
]


def test_both_accept_a_good_submit():
    assert verdict(codec.hand_submit, good_submit(), 4)
    assert verdict(codec.typed_submit, good_submit(), 4)


@pytest.mark.parametrize("path,value", BAD, ids=[f"{p[-1]}={v!r}" for p, v in BAD])
def test_both_refuse_the_same_bad_submit(path, value):
    h = mutate(path, value)
    assert not verdict(codec.hand_submit, h, 4)
    assert not verdict(codec.typed_submit, h, 4)


def test_both_refuse_a_frame_count_mismatch():
    assert not verdict(codec.hand_submit, good_submit(), 5)
    assert not verdict(codec.typed_submit, good_submit(), 5)


def test_results_decoders_agree():
    good = {"type": "results", "results": [{"tid": 1, "attempt": 1, "status": "ok", "n": 1}]}
    assert verdict(codec.hand_results, good, 1) and verdict(codec.typed_results, good, 1)
    for bad in ({"tid": True, "attempt": 1, "status": "ok"}, {"tid": 1, "attempt": "1", "status": "ok"},
                {"tid": 1, "attempt": 1, "status": "ok", "n": 2}, {"tid": 1, "attempt": 1, "status": 3},
                {"tid": 1, "attempt": 1, "status": "ok", "properties": [1]}):
        h = {"type": "results", "results": [bad]}
        assert not verdict(codec.hand_results, h, 1), bad
        assert not verdict(codec.typed_results, h, 1), bad


def test_the_benchmark_prints_its_table(capsys):
    assert codec.main(["--batch", "4", "--rounds", "8"]) == 0
    out = capsys.readouterr().out
    assert out.count("| ") >= 5 and "geometric mean" in out
