"""The controller's statistics in the Prometheus text exposition format (served at /metrics).

`render_metrics` is a pure function of one `statistics()` structure: tasks by queue state,
engines by state, per-engine task counters, the task-duration histogram, tasks/s, messages and
refused messages by reason. Counters start again from zero when the controller restarts
(Prometheus treats that as a counter reset); the task counts by state come from the task store
and survive a restart.
"""

from __future__ import annotations

import math
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENGINE_STATES = ("idle", "busy", "retiring", "dead", "retired")


def _label(value: Any) -> str:
    text = str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: Any) -> None:
        if labels:
            inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {_number(value)}")
        else:
            self.lines.append(f"{name} {_number(value)}")


def render_metrics(stats: dict[str, Any]) -> str:
    """Prometheus text (format 0.0.4) for one `TaskClient.statistics()` structure."""
    out = _Exposition()
    out.family("taskmill_tasks", "gauge",
               "Tasks by state, as queue_status() counts them (scheduled, pending, succeeded, "
               "failed).")
    for state, n in stats["queue"].items():
        out.sample("taskmill_tasks", n, state=state)
    out.family("taskmill_tasks_in_memory", "gauge",
               "Tasks the controller holds in memory (queued or running; at most the queue "
               "window of --memory-budget).")
    out.sample("taskmill_tasks_in_memory", stats.get("queued_in_memory", 0))
    out.family("taskmill_tasks_backlog", "gauge",
               "Queued tasks beyond the window, kept only in the store.")
    out.sample("taskmill_tasks_backlog", stats.get("backlog", 0))

    engines = stats["engines"]
    out.family("taskmill_engines", "gauge", "Engines by state.")
    for state in ENGINE_STATES:
        out.sample("taskmill_engines", sum(1 for e in engines if e["state"] == state),
                   state=state)
    out.family("taskmill_engine_tasks_done_total", "counter",
               "Task attempts each engine has reported.")
    for e in engines:
        out.sample("taskmill_engine_tasks_done_total", e["tasks_done"],
                   engineid=e["engineid"], hostname=e["hostname"])
    out.family("taskmill_engine_failures_total", "counter",
               "Task attempts each engine has reported as failed.")
    for e in engines:
        out.sample("taskmill_engine_failures_total", e.get("failures", 0),
                   engineid=e["engineid"], hostname=e["hostname"])

    out.family("taskmill_tasks_submitted_total", "counter",
               "Tasks submitted since the controller started.")
    out.sample("taskmill_tasks_submitted_total", stats["submitted"])
    out.family("taskmill_tasks_finished_total", "counter",
               "Tasks finished (in any way) since the controller started.")
    out.sample("taskmill_tasks_finished_total", stats["finished"])
    out.family("taskmill_tasks_per_second", "gauge",
               "Tasks finished per second over the last minute.")
    out.sample("taskmill_tasks_per_second", stats["tasks_per_second"])

    durations = stats["durations"]
    out.family("taskmill_task_duration_seconds", "histogram",
               "Run time of finished tasks, as their engine measured it.")
    for bound, n in durations["buckets"]:
        le = "+Inf" if bound is None else _number(float(bound))
        out.sample("taskmill_task_duration_seconds_bucket", n, le=le)
    out.sample("taskmill_task_duration_seconds_sum", float(durations["sum"]))
    out.sample("taskmill_task_duration_seconds_count", durations["count"])

    out.family("taskmill_refused_messages_total", "counter",
               "Messages the controller refused (bad signature, replay, malformed, ...), by "
               "reason.")
    for reason, n in sorted(stats["refused"].items()):
        out.sample("taskmill_refused_messages_total", n, reason=reason)
    out.family("taskmill_messages_received_total", "counter", "Messages the controller read.")
    out.sample("taskmill_messages_received_total", stats["messages_in"])
    out.family("taskmill_messages_sent_total", "counter", "Messages the controller sent.")
    out.sample("taskmill_messages_sent_total", stats["messages_out"])
    out.family("taskmill_engine_deaths_total", "counter",
               "Engines declared dead since the controller started.")
    out.sample("taskmill_engine_deaths_total", stats["engines_died"])
    out.family("taskmill_store_writable", "gauge",
               "1 while the task store takes work, 0 while it cannot write (a full disk, a "
               "locked or deleted file: submits are refused meanwhile).")
    out.sample("taskmill_store_writable", int(stats.get("store_problem") is None))
    out.family("taskmill_uptime_seconds", "gauge", "Seconds since the controller started.")
    out.sample("taskmill_uptime_seconds", float(stats["uptime"]))
    return "\n".join(out.lines) + "\n"
