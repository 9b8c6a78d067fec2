#!/usr/bin/env python3
"""Where a controller's instructions go, by shared object and by C entry point, per task.

Reads callgrind output files (`instructions_per_task.py --keep DIR` keeps them as
TREE-N.out-TT, N the round trips counted, TT the thread: 01 the main one) and prints, per task, the instructions each shared
object executes itself (self cost: the Python interpreter, libsqlite3, libcrypto, ...) and
the inclusive cost of each call from the interpreter into a C extension (the sqlite3
module's `execute`, msgpack's `pack`, hashlib's `digest`, ...: everything under it, malloc
included), with calls per task. Given two files, their difference over `--n` (start-up and
shut-down cancel out); given one, it over `--n`.

    python benchmarks/callgrind_parts.py /tmp/cg/wt-src-550.out-01 /tmp/cg/wt-src-50.out-01 --n 500

callgrind_annotate reads the same files (`callgrind_annotate --inclusive=yes FILE`), but it
neither subtracts two runs nor sums by object.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

NAMED = re.compile(r"\((\d+)\)(?: (.*))?")


class Profile:
    """Self cost by (object, function), and the cost and count of calls between them."""

    def __init__(self, path: Path) -> None:
        self.self_cost: Counter[tuple[str, str]] = Counter()
        self.call_cost: Counter[tuple[str, str, str, str]] = Counter()
        self.calls: Counter[tuple[str, str, str, str]] = Counter()
        names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
        ob = fn = cfn = ""
        cob: str | None = None
        edge: tuple[str, str, str, str] | None = None

        def name(kind: str, value: str) -> str:
            m = NAMED.match(value)
            if not m:
                return value
            key, text = m.groups()
            if text is not None:
                names[kind][key] = text
            return names[kind].get(key, "?" + key)

        with open(path, errors="replace") as f:
            for line in f:
                c = line[:1]
                if c.isdigit() or c in "+-*":
                    parts = line.split()
                    if len(parts) < 2:
                        continue
                    if edge is not None:
                        self.call_cost[edge] += int(parts[1])
                        edge = None
                    else:
                        self.self_cost[(ob, fn)] += int(parts[1])
                    continue
                key, _, value = line.rstrip("\n").partition("=")
                if key == "ob":
                    ob, cob = name("ob", value), None
                elif key == "fn":
                    fn = name("fn", value)
                elif key == "cob":
                    cob = name("ob", value)
                elif key == "cfn":
                    cfn = name("fn", value)
                elif key == "calls":
                    edge = (ob, fn, cob or ob, cfn)
                    cob = None
                    self.calls[edge] += int(value.split()[0])

    def by_object(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (ob, _), v in self.self_cost.items():
            out[Path(ob).name] += v
        return out

    def entries(self) -> tuple[Counter[str], Counter[str]]:
        """Cost and count of the calls from the interpreter into other objects, by callee."""
        cost: Counter[str] = Counter()
        count: Counter[str] = Counter()
        for edge, v in self.call_cost.items():
            ob, _, cob, cfn = edge
            if "libpython" in ob and ".cpython-" in cob:  # (an extension module)
                key = f"{Path(cob).name}:{cfn}"
                cost[key] += v
                count[key] += self.calls[edge]
        return cost, count


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("more", type=Path, help="callgrind output of the longer run")
    p.add_argument("base", type=Path, nargs="?", help="... of the shorter run (subtracted)")
    p.add_argument("--n", type=int, default=500, help="tasks the difference counts (500)")
    p.add_argument("--top", type=int, default=25, help="entry points shown (25)")
    a = p.parse_args()
    more = Profile(a.more)
    base = Profile(a.base) if a.base else None

    def per_task(c: Counter[str], b: Counter[str] | None) -> dict[str, float]:
        return {k: (v - (b[k] if b is not None else 0)) / a.n for k, v in c.items()}

    objects = per_task(more.by_object(), base.by_object() if base else None)
    total = sum(objects.values())
    print(f"instructions per task: {total:,.0f}\n\nself, by shared object:")
    for k, v in sorted(objects.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {v:10,.0f}  {100 * v / total:5.1f}%  {k}")
    cost, count = more.entries()
    bcost, bcount = base.entries() if base else (None, None)
    cost_t, count_t = per_task(cost, bcost), per_task(count, bcount)
    print("\ncalls from the interpreter into C extensions, inclusive (instructions, calls "
          "per task):")
    for k, v in sorted(cost_t.items(), key=lambda kv: -kv[1])[:a.top]:
        print(f"  {v:10,.0f}  {count_t[k]:6.2f}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
