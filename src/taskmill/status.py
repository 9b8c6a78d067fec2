"""`taskmill status`: the controller's statistics as a terminal table, once or refreshed.

`render_status` is a pure function of one `statistics()` structure (so it is tested without a
controller): the controller, its engines, the queue (and its backlog: the queued tasks kept only
in the store, beyond the window held in memory, controller/backlog.py), the throughput.
`show_status` fetches and prints, with `--watch` in a loop and `--json` for scripts.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .defaults import ENGINE_GONE_STATES

CLEAR_SCREEN = "\x1b[H\x1b[J"
BUILTIN_PROPERTIES = ("engineid", "hostname", "pid")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def _ago(seconds: float) -> str:
    return f"{seconds:.1f}s ago" if seconds < 60 else f"{_duration(seconds)} ago"


def _properties(props: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in props.items()
                    if k not in BUILTIN_PROPERTIES)


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return [line(header), *(line(r) for r in rows)]


def render_status(stats: dict[str, Any], *, controller: str = "",
                  dashboard: str | None = None) -> str:
    """The table `taskmill status` prints for one `TaskClient.statistics()` structure."""
    engines = stats["engines"]
    alive = [e for e in engines if e["state"] not in ENGINE_GONE_STATES]
    busy = sum(1 for e in alive if e["state"] == "busy")
    retiring = sum(1 for e in alive if e["state"] == "retiring")
    gone = {s: sum(1 for e in engines if e["state"] == s) for s in ("dead", "retired")}
    q = stats["queue"]
    lines = [
        f"controller: {controller or 'answering'}, up {_duration(stats['uptime'])}",
        f"engines:    {len(alive)} alive ({busy} busy, {len(alive) - busy - retiring} idle"
        + (f", {retiring} retiring)" if retiring else ")")
        + "".join(f", {n} {s}" for s, n in gone.items() if n),
        f"queue:      {q['scheduled']} scheduled, {q['pending']} pending, "
        f"{q['succeeded']} succeeded, {q['failed']} failed",
        f"throughput: {stats['tasks_per_second']:.2f} tasks/s over the last minute "
        f"({stats['finished']} finished since the controller started)",
    ]
    window = stats.get("queue_window")
    if window is not None or stats.get("backlog"):  # (none: a store in memory, no backlog)
        lines.insert(3, f"backlog:    {stats.get('backlog', 0)} of the scheduled wait in the "
                     f"store only; {stats.get('queued_in_memory', 0)} active in memory "
                     f"(window {window if window is not None else '-'})")
    problem = stats.get("store_problem")
    if problem is not None:  # (submits are refused: say so above all)
        down = stats.get("store_down_for")
        lines.insert(1, "store:      NOT WRITING" + (f" for {_duration(down)}" if down is not None
                                                    else "") + f": {problem}")
    refused = {k: v for k, v in stats.get("refused", {}).items() if v}
    if refused:
        lines.append("refused:    " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    if dashboard:
        lines.append(f"dashboard:  {dashboard}")
    lines.append("")
    if not engines:
        lines.append("no engines registered yet")
        return "\n".join(lines)
    rows = []
    for e in engines:
        held = e.get("held") or []
        task = "-" if e.get("current_task") is None else str(e["current_task"])
        if len(held) > 1:
            task += f" (+{len(held) - 1} queued)"
        heartbeat = "-" if e["state"] in ENGINE_GONE_STATES else _ago(e.get("last_heartbeat_ago", 0.0))
        rows.append([str(e["engineid"]), e["state"], task, str(e["tasks_done"]),
                     str(e.get("failures", 0)), heartbeat, e["hostname"], str(e["pid"]),
                     _properties(e["properties"])])
    header = ["engine", "state", "task", "done", "failed", "heartbeat", "host", "pid",
              "properties"]
    lines += _table(header, rows, right={0, 3, 4, 7})
    return "\n".join(lines)


def show_status(fetch: Callable[[], dict[str, Any]], *, as_json: bool = False,
                json_view: Callable[[], dict[str, Any]] | None = None,
                watch: float | None = None, controller: str = "", dashboard: str | None = None,
                out: TextIO | None = None) -> int:
    """Print the status once, or every `watch` seconds until interrupted (then return 0).

    `fetch` gives `statistics()`; `json_view` gives what `--json` prints. A controller that
    stops answering while watched is reported on the screen (with --json as {"error": why}),
    and watching goes on.
    """
    out = sys.stdout if out is None else out  # (the one of the call, not of the import)
    clear = watch is not None and not as_json and out.isatty()
    try:
        while True:
            try:
                if as_json:
                    view = json_view() if json_view is not None else fetch()
                    text = json.dumps(view, indent=None if watch is not None else 2)
                else:
                    text = render_status(fetch(), controller=controller, dashboard=dashboard)
            except TimeoutError as e:  # ControllerUnreachable
                if watch is None:
                    raise
                # (--json: still one JSON object a line, which says why it has no figures)
                text = json.dumps({"error": str(e)}) if as_json else f"taskmill: {e}"
            if clear:
                out.write(CLEAR_SCREEN)
            elif watch is not None and not as_json:
                out.write(f"--- {time.strftime('%H:%M:%S')}\n")
            out.write(text + "\n")
            out.flush()
            if watch is None:
                return 0
            time.sleep(watch)
    except KeyboardInterrupt:
        return 0
