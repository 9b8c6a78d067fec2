#!/usr/bin/env python3
"""A map's per-item work in the client and in the engines, counted rather than timed: A/B of trees.

`map_costs.py` times a whole map on a cluster, which varies by +-25% on a shared machine. This
counts machine instructions (valgrind's callgrind) of the same pieces of work in one process,
without sockets or the controller:

- client: `tc.map`'s own work over `range(--items)` with the automatic chunksize for 2 engines:
  `map_arguments`, `chunked`, `encode_chunks` (each chunk's task pickled, MAC'd, packed), then
  each chunk's result decoded (`decode_result`, the MAC checked) and `assemble_map`;
- engine: for every chunk, what an engine does besides its sockets: check the payload MAC,
  unpickle the chunk's arguments over a namespace (`load_into`), `run_chunk`, pickle the result
  (`dumps`) and MAC it.

Each is run under callgrind for 1 and for 1 + --n maps; the difference over --n maps and
--items items is its instructions per item (start-up and shut-down cancel out). Each tree is a
`src` folder (default: this checkout's):

    python benchmarks/map_instructions.py --tree src --tree /tmp/bis/t-7e16ac1/src
    python benchmarks/map_instructions.py --func square --items 20000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def noop(*args: Any, **kwargs: Any) -> None:
    return None


def square(x: int) -> int:
    return x * x


FUNCS = {"noop": noop, "square": square}


class Done:
    """Stands in for a finished chunk's TaskFuture (assemble_map reads these)."""

    def __init__(self, value: Any, taskid: int) -> None:
        self.value, self.taskid, self.metadata = value, taskid, {"engineid": 0}

    def result(self) -> Any:
        return self.value


def child(part: str, rounds: int, items: int, func_name: str) -> None:
    """Run `rounds` maps' worth of `part` (after the set-up, which both runs share)."""
    from taskmill.client.codec import decode_result, encode_task, too_big
    from taskmill.client.maps import (
        assemble_map,
        auto_chunksize,
        chunked,
        encode_chunks,
        map_arguments,
    )
    from taskmill.client.options import TaskOptions
    from taskmill.mapper import run_chunk
    from taskmill.protocol import Outcome
    from taskmill.wire import FunctionPickles, Wire, dumps, loads
    from taskmill.wire.pickles import load_into

    func = FUNCS[func_name]
    func.__module__ = "__main__"  # as compare.py's: pickled by value, rebuilt over a namespace
    wire = Wire(b"k" * 32)
    functions = FunctionPickles()
    opts = TaskOptions()

    class Backend:
        def encode(self, task: Any) -> Any:
            return encode_task(task, wire, functions)

        def too_big(self, enc: Any, what: str | None = None) -> Any:
            return too_big(enc, 1 << 29, what)

    backend: Any = Backend()

    def client_encode() -> tuple[Any, Any]:
        args = map_arguments(opts, [range(items)], None)
        chunks, encoded = encode_chunks(backend, opts, func, chunked(args, auto_chunksize(
            len(args), 2)), split=True)
        return chunks, encoded

    def engine(encoded: Any) -> list[tuple[bytes, list[Any]]]:
        out = []
        for enc in encoded:
            spec, frames = enc
            node = spec["nodes"][0]
            wire.check_payload(frames, node["pmac"])
            fn = node["exec"]["fn"]
            assert loads(frames[:fn]) is run_chunk  # (by reference; an engine caches it)
            args, kwargs = load_into(frames[fn:], {})[0]
            value = run_chunk(*args, **kwargs)
            result = dumps(value)
            out.append((wire.payload_mac(result), result))
        return out

    chunks, encoded = client_encode()
    results = engine(encoded)  # (set-up: in both runs, so not counted)
    for _ in range(rounds):
        if part == "client":
            chunks, _encoded = client_encode()
            futs = [Done(decode_result(Outcome(i, nframes=len(fr), status="ok", kind="map",
                                               pmac=mac), fr, wire), i)
                    for i, (mac, fr) in enumerate(results)]
            assemble_map(func_name, futs, chunks, items)
        else:
            engine(encoded)


def count(tree: str, part: str, rounds: int, a: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--child", part, "--rounds", str(rounds),
                        "--items", str(a.items), "--func", a.func],
                       env=env, check=True, capture_output=True)
        text = Path(out).read_text()
    m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    assert m, "no totals in the callgrind output"
    return int(m.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", help="a src folder (repeat to compare)")
    p.add_argument("--items", type=int, default=100_000, help="items per map (default 100000)")
    p.add_argument("--n", type=int, default=2, help="maps counted (default 2)")
    p.add_argument("--func", choices=sorted(FUNCS), default="noop")
    p.add_argument("--child", choices=("client", "engine"), help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.rounds, a.items, a.func)
        return 0
    trees = a.tree or [str(ROOT / "src")]
    print(f"instructions per item, map({a.func}, range({a.items:,})), 2 engines' chunking:")
    for tree in trees:
        cells = []
        for part in ("client", "engine"):
            base = count(tree, part, 1, a)
            more = count(tree, part, 1 + a.n, a)
            cells.append(f"{part} {(more - base) / (a.n * a.items):,.0f}")
        print(f"- {tree}: " + ", ".join(cells) + " (engine: both engines' work together)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
