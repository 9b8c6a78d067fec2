"""msgspec typed records against msgpack plus hand checks, on taskmill's hottest headers.

Issue 17 asks whether typed protocol records (msgspec: msgpack structs validated while they are
decoded) cost less or more than what taskmill does today: `msgpack.unpackb` to dicts, then
checks written by hand field by field (as the controller did before protocol.py took them over).
This measures exactly that step, on headers shaped like the real ones, in one process and one run
(so the ratio means something on a shared machine even where the absolute figures do not):

- `submit`: a client's batch of N map tasks (what `tc.map`/`submit` send), decoded and checked
  as the controller does before storing anything;
- `results`: an engine's batch of N results, decoded and checked;
- `dispatch`: the controller's header to an engine, encoded (the encode side of the hot path).

The typed side decodes into the controller's own records (taskmill.protocol) and checks with its
node_rules. Both sides reject the same malformed inputs (a test in tests/test_protocol_codec.py checks that the
two decoders agree on good and bad headers, so the comparison is like for like).

    python benchmarks/protocol_codec.py [--batch 64] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Annotated, Any

import msgpack
import msgspec

from taskmill.protocol import (
    MAX_TIMEOUT,
    NodeSpec,
    ProtocolError,
    ResultEntry,
    TaskSpec,
    node_rules,
)


class BadRequest(ValueError):
    pass


# -- before protocol.py: msgpack to dicts, then checks by hand, as the controller did ----------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_exec(ex: dict[str, Any], nframes: int) -> dict[str, Any]:
    kind = ex.get("kind")
    clear_before, clear_after = ex.get("clear_before", False), ex.get("clear_after", False)
    if not isinstance(clear_before, bool) or not isinstance(clear_after, bool):
        raise BadRequest("clear_before and clear_after must be bools")
    if kind == "string":
        expression, pull = ex.get("expression"), ex.get("pull", [])
        if not isinstance(expression, str):
            raise BadRequest("a string task needs its expression as a str")
        if not isinstance(pull, list) or not all(isinstance(x, str) for x in pull):
            raise BadRequest("pull must be a list of names")
        return {"kind": kind, "expression": expression, "pull": pull,
                "clear_before": clear_before, "clear_after": clear_after}
    if kind == "map":
        fn = ex.get("fn")
        if fn is not None and not (_is_int(fn) and 0 < fn <= nframes):
            raise BadRequest("fn must count the function's frames")
        if nframes == 0:
            raise BadRequest("a map task needs its function's payload frames")
        return {"kind": kind, "fn": fn, "clear_before": clear_before, "clear_after": clear_after}
    raise BadRequest("exec kind must be 'string' or 'map'")


def hand_submit(raw: bytes, nframes_total: int) -> list[list[dict[str, Any]]]:
    h = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if not isinstance(h, dict) or not isinstance(h.get("type"), str):
        raise BadRequest("header is not a map with a str 'type'")
    specs = h.get("tasks")
    if not isinstance(specs, list) or not specs:
        raise BadRequest("tasks must be a non-empty list")
    out, pos = [], 0
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("nodes"), list) or not spec["nodes"]:
            raise BadRequest("each task needs a non-empty list of nodes")
        n = len(spec["nodes"])
        nodes = []
        for meta in spec["nodes"]:
            if not isinstance(meta, dict) or not isinstance(meta.get("exec"), dict):
                raise BadRequest("each node needs an exec map")
            nf, df = meta.get("nframes", 0), meta.get("dframes", 0)
            retries, recovery = meta.get("retries", 0), meta.get("recovery")
            if not _is_int(nf) or not _is_int(df) or nf < 0 or df < 0:
                raise BadRequest("nframes and dframes must be ints >= 0")
            if not _is_int(retries) or retries < 0:
                raise BadRequest("retries must be an int >= 0")
            if recovery is not None and not (_is_int(recovery) and 0 <= recovery < n):
                raise BadRequest("recovery must index a node of the same task")
            if pos + nf + df > nframes_total:
                raise BadRequest("more payload frames than the message has")
            depend = meta.get("depend")
            if depend not in (None, "callable") and not isinstance(depend, dict):
                raise BadRequest("depend must be null, a map, or 'callable'")
            timeout = meta.get("timeout")
            if timeout is not None and not (isinstance(timeout, int | float)
                                            and not isinstance(timeout, bool)
                                            and 0 < timeout <= MAX_TIMEOUT):
                raise BadRequest("bad timeout")
            pmac = meta.get("pmac")
            if (nf or pmac is not None) and not isinstance(pmac, bytes):
                raise BadRequest("a node with payload frames needs their pmac (bytes)")
            nodes.append({"exec": _check_exec(meta["exec"], nf), "nframes": nf, "dframes": df,
                          "retries": retries, "recovery": recovery, "timeout": timeout,
                          "pmac": pmac, "depend": depend})
            pos += nf + df
        after = spec.get("after", [])
        if after != [] and (not isinstance(after, list) or not all(_is_int(x) for x in after)):
            raise BadRequest("after must be a list of ints")
        out.append(nodes)
    if pos != nframes_total:
        raise BadRequest("frame count mismatch")
    return out


def hand_results(raw: bytes, nframes_total: int) -> list[dict[str, Any]]:
    h = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if not isinstance(h, dict) or not isinstance(h.get("type"), str):
        raise BadRequest("header is not a map with a str 'type'")
    entries = h.get("results")
    if not isinstance(entries, list):
        raise BadRequest("results must be a list")
    pos = 0
    for entry in entries:
        n = entry.get("n", 0) if isinstance(entry, dict) else -1
        if not isinstance(n, int) or n < 0 or pos + n > nframes_total:
            raise BadRequest("a result describes more payload frames than the message has")
        if not _is_int(entry.get("tid")) or not _is_int(entry.get("attempt")):
            raise BadRequest("a result needs int tid and attempt")
        if not isinstance(entry.get("status"), str):
            raise BadRequest("status must be a str")
        props = entry.get("properties")
        if props is not None and not isinstance(props, dict):
            raise BadRequest("properties must be a map")
        duration = entry.get("duration")
        if not isinstance(duration, int | float):
            entry["duration"] = None
        pos += n
    return entries


# -- msgspec: the controller's own typed records (taskmill.protocol), validated while decoding --
# Only the envelopes are this benchmark's: a message's header with its common fields, decoded
# straight from bytes (the controller converts from a dict the Wire unpacked).

class SubmitHeader(msgspec.Struct, frozen=True):
    type: str
    tasks: Annotated[list[TaskSpec], msgspec.Meta(min_length=1)]
    sid: bytes | None = None
    seq: int | None = None
    session: str | None = None
    req: int | None = None
    key: str | None = None
    watch: bool = False
    resent: bool = False


class ResultsHeader(msgspec.Struct, frozen=True):
    type: str
    results: list[ResultEntry]
    sid: bytes | None = None
    seq: int | None = None
    session: str | None = None


_submit_decoder = msgspec.msgpack.Decoder(SubmitHeader)
_results_decoder = msgspec.msgpack.Decoder(ResultsHeader)


def typed_submit(raw: bytes, nframes_total: int) -> list[list[NodeSpec]]:
    try:
        h = _submit_decoder.decode(raw)
    except msgspec.ValidationError as e:
        raise BadRequest(str(e)) from None
    out, pos = [], 0
    for spec in h.tasks:  # what a type cannot say: how nodes index each other and the frames
        for node in spec.nodes:
            try:
                node_rules(spec, node, pos, nframes_total)
            except ProtocolError as e:
                raise BadRequest(str(e)) from None
            pos += node.nframes + node.dframes
        out.append(spec.nodes)
    if pos != nframes_total:
        raise BadRequest("frame count mismatch")
    return out


def typed_results(raw: bytes, nframes_total: int) -> list[ResultEntry]:
    try:
        h = _results_decoder.decode(raw)
    except msgspec.ValidationError as e:
        raise BadRequest(str(e)) from None
    pos = 0
    for entry in h.results:
        pos += entry.n
        if pos > nframes_total:
            raise BadRequest("a result describes more payload frames than the message has")
    return h.results


# -- the shapes measured -------------------------------------------------------------------------

def submit_header(batch: int) -> tuple[bytes, int]:
    tasks = []
    for _ in range(batch):
        node = {"exec": {"kind": "map", "fn": 1, "clear_before": False, "clear_after": False},
                "nframes": 2, "retries": 0, "timeout": None, "recovery": None,
                "pmac": os.urandom(32), "depend": None}
        tasks.append({"nodes": [node], "after": []})
    h = {"type": "submit", "tasks": tasks, "sid": os.urandom(16), "seq": 7, "session": "s" * 32,
         "req": 3, "key": "k" * 32, "watch": True}
    return msgpack.packb(h, use_bin_type=True), 2 * batch


def results_header(batch: int) -> tuple[bytes, int]:
    entries = [{"tid": 1000 + i, "attempt": 1, "status": "ok", "n": 1, "duration": 0.0012,
                "meta": {"started": 1.7e9, "completed": 1.7e9 + 0.001}} for i in range(batch)]
    h = {"type": "results", "results": entries, "sid": os.urandom(16), "seq": 9, "session": "s" * 32}
    return msgpack.packb(h, use_bin_type=True), batch


class Dispatch(msgspec.Struct, array_like=False):
    type: str
    tid: int
    attempt: int
    exec: dict[str, Any]
    timeout: float | None
    nframes: int
    pmac: bytes
    sid: bytes
    seq: int
    session: str


def dispatch_dict() -> dict[str, Any]:
    return {"type": "task", "tid": 12345, "attempt": 1,
            "exec": {"kind": "map", "fn": 1, "clear_before": False, "clear_after": False},
            "timeout": None, "nframes": 2, "pmac": os.urandom(32), "sid": os.urandom(16),
            "seq": 11, "session": "s" * 32}


def best_of(fn: Any, rounds: int, repeat: int = 5) -> float:
    """Best mean seconds per call over `repeat` runs of `rounds` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        times.append((time.perf_counter() - t0) / rounds)
    return min(times)


def measure(batch: int, rounds: int) -> list[tuple[str, float, float]]:
    raw_s, nf_s = submit_header(batch)
    raw_r, nf_r = results_header(batch)
    d = dispatch_dict()
    ds = Dispatch(**d)
    enc = msgspec.msgpack.Encoder()
    rows = []
    for name, a, b, per in (
        (f"submit, {batch} map tasks (decode+check)",
         lambda: hand_submit(raw_s, nf_s), lambda: typed_submit(raw_s, nf_s), batch),
        (f"results, {batch} entries (decode+check)",
         lambda: hand_results(raw_r, nf_r), lambda: typed_results(raw_r, nf_r), batch),
        ("submit, 1 task (decode+check)",
         lambda: hand_submit(*submit_header(1)), lambda: typed_submit(*submit_header(1)), 1),
        ("dispatch header (encode)",
         lambda: msgpack.packb(d, use_bin_type=True), lambda: enc.encode(ds), 1),
    ):
        ta, tb = best_of(a, max(1, rounds // per)), best_of(b, max(1, rounds // per))
        rows.append((name, ta / per * 1e6, tb / per * 1e6))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64, help="tasks or results per message (default 64)")
    p.add_argument("--rounds", type=int, default=20000, help="items decoded per timing (default 20000)")
    a = p.parse_args(argv)
    rows = measure(a.batch, a.rounds)
    print(f"# protocol codec: msgpack + hand checks vs msgspec typed records "
          f"(msgspec {msgspec.__version__}, msgpack {msgpack.version}, Python {sys.version.split()[0]})")
    print("| step | msgpack + hand checks, µs per item | msgspec records, µs per item | ratio |")
    print("|---|---|---|---|")
    for name, ta, tb in rows:
        print(f"| {name} | {ta:.2f} | {tb:.2f} | {ta / tb:.2f}x |")
    print(f"\n(geometric mean of the ratios: "
          f"{statistics.geometric_mean([ta / tb for _, ta, tb in rows]):.2f}x; above 1 = msgspec faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
