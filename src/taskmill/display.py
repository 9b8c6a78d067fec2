"""HTML views for notebooks: what `Cluster`, `TaskResult` and `TaskFuture._repr_html_` show.

    an object's fields (label, value) --> `html_table`: a small two-column table under a title,
        every value escaped here (`text`, `value_html`: repr shortened, then escaped), so that
        a value whose repr holds markup (`<script>`) shows as text --> Jupyter renders it

Package-internal: the three `_repr_html_` methods (cluster.py, task.py, client/futures.py)
are its only users. Nothing here does I/O; callers gather what they show.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

REPR_LIMIT = 400  # characters of a value's repr shown
OUTPUT_LIMIT = 2000  # characters of stdout / stderr shown (the end: the latest lines)

STATE_COLOURS = {"succeeded": "#2e7d32", "finished": "#2e7d32", "running": "#1565c0",
                 "failed": "#c62828", "cancelled": "#6d4c41", "pending": "#757575",
                 "stopped": "#757575", "unreachable": "#c62828"}


class Markup(str):
    """HTML that is already safe (made here): `html_table` shows it as it is."""


def text(value: object, limit: int = REPR_LIMIT) -> Markup:
    """`str(value)`, shortened to `limit` characters, escaped."""
    s = str(value)
    if len(s) > limit:
        s = s[:limit] + f"… ({len(s) - limit} more characters)"
    return Markup(html.escape(s))


def value_html(value: Any, limit: int = REPR_LIMIT) -> Markup:
    """A value as its repr, shortened and escaped, in <code>."""
    try:
        r = repr(value)
    except Exception as e:  # noqa: BLE001 - a broken __repr__ must not break the view
        r = f"<{type(value).__name__} whose repr raised {type(e).__name__}>"
    return Markup(f"<code>{text(r, limit)}</code>")


def state_html(state: str) -> Markup:
    """A state word, coloured."""
    colour = STATE_COLOURS.get(state, "#424242")
    return Markup(f'<span style="color:{colour};font-weight:bold">{html.escape(state)}</span>')


def link_html(url: str, label: str) -> Markup:
    """A link opening in a new tab (the url escaped; only http(s) links)."""
    if not url.startswith(("http://", "https://")):
        return text(url)
    return Markup(f'<a href="{html.escape(url, quote=True)}" target="_blank" '
                  f'rel="noopener">{html.escape(label)}</a>')


def output_html(output: str) -> Markup:
    """Captured stdout or stderr: its end, escaped, in <pre>."""
    if len(output) > OUTPUT_LIMIT:
        output = f"[… {len(output) - OUTPUT_LIMIT} characters before]\n" + output[-OUTPUT_LIMIT:]
    return Markup('<pre style="margin:0;max-height:12em;overflow:auto">'
                  f"{html.escape(output)}</pre>")


def duration_text(seconds: float) -> str:
    """A duration for people: "96 µs", "12.5 ms", "3.2 s"."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def html_table(title: str, rows: list[tuple[str, Any]]) -> str:
    """A titled two-column table; a value that is not `Markup` is shown as escaped text, a row
    whose value is None is left out."""
    cells = []
    for label, value in rows:
        if value is None:
            continue
        shown = value if isinstance(value, Markup) else text(value)
        cells.append(f'<tr><th style="text-align:left;padding-right:1em">{html.escape(label)}'
                     f'</th><td style="text-align:left">{shown}</td></tr>')
    return (f'<div class="taskmill"><strong>{html.escape(title)}</strong>'
            f'<table>{"".join(cells)}</table></div>')


def cluster_html(title: str, status: Callable[[], tuple[list[dict[str, Any]], dict[str, Any]]],
                 dashboard_url: str | None, connection_file: str) -> str:
    """A running Cluster's notebook view: `status()` gives its engines and queue (or raises:
    shown as unreachable)."""
    from .defaults import ENGINE_GONE_STATES

    rows: list[tuple[str, Any]] = []
    try:
        engines, queue = status()
    except Exception as e:  # noqa: BLE001 - a view must show, not raise
        rows.append(("status", state_html("unreachable")))
        rows.append(("why", f"{type(e).__name__}: {e}"))
    else:
        states: dict[str, int] = {}
        for e in engines:
            states[e["state"]] = states.get(e["state"], 0) + 1
        alive = sum(n for s, n in states.items() if s not in ENGINE_GONE_STATES)
        rows.append(("status", state_html("running")))
        rows.append(("engines", f"{alive} alive ("
                     + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"))
        rows.append(("queue", ", ".join(f"{n} {k}" for k, n in queue.items())))
    rows.append(("dashboard", link_html(dashboard_url, "open the dashboard")
                 if dashboard_url else None))
    rows.append(("connection file", connection_file))
    return html_table(title, rows)
