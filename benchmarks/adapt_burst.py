"""An adaptive cluster under a burst (issue 18 item 7): it grows to MAX and shrinks back to MIN.

    python benchmarks/adapt_burst.py                      # 200 one-second tasks, adapt 1..8
    python benchmarks/adapt_burst.py --tasks 40 --seconds 0.2 --write

A `Cluster(MIN)` with the local launcher adapts between MIN and MAX engines (idle_after 5 s);
200 tasks that each sleep a second are submitted at once. Every half second the engine table is
sampled (live, busy, retiring, retired) until the burst is done and the cluster is back to MIN.
Each task notes its run in a file: the check is that every task ran exactly once, none failed
and no engine died. The timeline goes to standard output (and to adapt_burst.md with --write).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from taskmill import Cluster


def nap_noted(i: int, path: str, seconds: float) -> int:
    import time

    with open(path, "a") as f:
        f.write(f"{i}\n")
    time.sleep(seconds)
    return i


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--seconds", type=float, default=1.0, help="each task's nap")
    p.add_argument("--min", type=int, default=1)
    p.add_argument("--max", type=int, default=8)
    p.add_argument("--idle-after", type=float, default=5.0)
    p.add_argument("--write", action="store_true", help="write benchmarks/adapt_burst.md")
    a = p.parse_args(argv)
    rows: list[tuple[float, int, int, int, int, int]] = []
    with tempfile.TemporaryDirectory() as tmp, Cluster(a.min) as c, c.client() as tc:
        runs = Path(tmp) / "runs"
        adapter = c.adapt(a.min, a.max, idle_after=a.idle_after, interval=0.5)
        t0 = time.monotonic()
        futs = [tc.submit(nap_noted, i, str(runs), a.seconds) for i in range(a.tasks)]
        burst_done = None
        while True:
            states = Counter(e["state"] for e in tc.engines())
            done = sum(f.done() for f in futs)
            now = time.monotonic() - t0
            rows.append((now, states["idle"] + states["busy"], states["busy"],
                         states["retiring"], states["retired"], done))
            if done == len(futs) and burst_done is None:
                burst_done = now
            if burst_done is not None and states["idle"] + states["busy"] == a.min \
                    and not states["retiring"]:
                break
            if now > 600:
                raise SystemExit("the cluster did not shrink back within 600 s")
            time.sleep(0.5)
        assert [f.result() for f in futs] == list(range(a.tasks))
        counts = Counter(runs.read_text().split())
        twice = [i for i, n in counts.items() if n != 1]
        stats = tc.statistics()
        adapter.stop()
    lines = [f"# An adaptive cluster under a burst ({time.strftime('%Y-%m-%d %H:%M')}, "
             f"{a.tasks} tasks of {a.seconds:g} s, adapt {a.min}..{a.max}, idle_after "
             f"{a.idle_after:g} s, local launcher)", "",
             f"    python benchmarks/adapt_burst.py --tasks {a.tasks} --seconds {a.seconds:g} "
             f"--min {a.min} --max {a.max}", "",
             f"- the burst took {burst_done:.1f} s; the most engines live at once: "
             f"{adapter.largest} (MAX {a.max}); back to {a.min} engine(s) at {rows[-1][0]:.1f} s",
             f"- tasks run once each: {len(counts) == a.tasks and not twice} "
             f"(run twice: {twice or 'none'}); engines retired {stats['engines_retired']}, "
             f"died {stats['engines_died']}; restarts {c.restarts}", "",
             "| t (s) | live | busy | retiring | retired | tasks done |",
             "|--:|--:|--:|--:|--:|--:|"]
    last = None
    for t, live, busy, retiring, retired, done in rows:
        key = (live, busy, retiring, retired)
        if key != last or t == rows[-1][0]:
            lines.append(f"| {t:.1f} | {live} | {busy} | {retiring} | {retired} | {done} |")
            last = key
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        Path(__file__).with_name("adapt_burst.md").write_text(text)
    ok = (not twice and len(counts) == a.tasks and stats["engines_died"] == 0
          and adapter.largest == a.max)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
