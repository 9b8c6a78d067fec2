#!/usr/bin/env python3
"""What reading the controller's answers through their records costs the client, per task.

The client reads every reply and `done` message into its record (taskmill.protocol.replies:
`from_reply`, `from_done`, msgspec `convert` with every field checked) before anything reads
it. On the per-task paths that is the `done` message of a watching submit (one entry a task)
and the submit's reply (one a batch). This measures, in one process (no sockets), the I/O
thread's whole handling of a `done` message (read into its record, split, each future marked
done: `from_done` + `split_results` + `TaskFuture.set_outcome`) and the record's share of it
(`from_done` alone), for a lone task's message and for 64 entries a message; and the submit
reply (`from_reply("submit")`) of a batch of 64. Best of --repeat rounds.

    python benchmarks/client_replies.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import msgspec

from taskmill.client.codec import split_results
from taskmill.client.futures import TaskFuture
from taskmill.protocol import from_done, from_reply

OWNER = SimpleNamespace(front=lambda: None, connection=SimpleNamespace(
    timeout=1.0, reconnect_timeout=1.0, on_io_thread=lambda: True))
ENTRY = {"tid": 0, "engineid": 1, "attempts": 1, "submitted": 1.5e9, "completed": 1.5e9 + 1,
         "started": 1.5e9 + 0.5, "status": "ok", "kind": "map", "error": None, "duration": 0.25,
         "stdout": "", "stderr": "", "pmac": b"m" * 32, "nframes": 1}


def done_header(n: int) -> dict[str, Any]:
    """A `done` message of n results as the client's Wire hands it over."""
    return {"type": "done", "req": 1, "sid": b"s" * 16, "seq": 5,
            "results": [dict(ENTRY, tid=i) for i in range(n)]}


def best_of(setup: Callable[[], Any], step: Callable[[Any], Any], repeat: int) -> float:
    """The fastest of `repeat` rounds of `step(setup())`, in seconds (setup not counted)."""
    best = float("inf")
    for _ in range(repeat):
        arg = setup()
        t0 = time.perf_counter()
        step(arg)
        best = min(best, time.perf_counter() - t0)
    return best


def handle_done(arg: tuple[dict[str, Any], list[Any], list[TaskFuture]]) -> None:
    header, frames, futs = arg
    for (meta, fr), f in zip(split_results(from_done(header), frames), futs, strict=True):
        f.set_outcome(meta, fr)


def measure(repeat: int) -> list[tuple[str, float]]:
    rows = []
    for n in (1, 64):
        def setup(n: int = n) -> tuple[dict[str, Any], list[Any], list[TaskFuture]]:
            return done_header(n), [b"x"] * n, [TaskFuture(OWNER, i) for i in range(n)]
        whole = best_of(setup, handle_done, repeat) / n
        record = best_of(setup, lambda arg: from_done(arg[0]), repeat) / n
        rows.append((f"done, {n} entr{'y' if n == 1 else 'ies'}: the I/O thread's handling",
                     whole))
        rows.append((f"done, {n} entr{'y' if n == 1 else 'ies'}: of which from_done", record))
    reply = {"type": "reply", "req": 1, "ok": True, "session": b"s" * 8, "tids": list(range(64))}
    rows.append(("submit reply, 64 taskids: from_reply",
                 best_of(lambda: reply, lambda r: from_reply("submit", r), repeat) / 64))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=2000)
    a = p.parse_args(argv)
    print(f"# client replies: reading the controller's answers into records "
          f"(msgspec {msgspec.__version__}), best of {a.repeat}")
    print("| step | µs per task |")
    print("|---|---|")
    for name, seconds in measure(a.repeat):
        print(f"| {name} | {seconds * 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
