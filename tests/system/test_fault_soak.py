"""The fault soak, short: `benchmarks/fault_soak.py --seconds 45` must find nothing.

The soak kills and restarts the controller, kills and stops engines, resets their connections
and (as root) fills the store's disk, while a client submits tasks; then it checks that every
taskid the client was given finished once with its own result, that no task ran more often
than its retries allow, and that no client call waited past its bound. See its docstring.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(330)
def test_fault_soak_finds_nothing(tmp_path):
    report_path = tmp_path / "report.json"
    # (45 s of faults, ~60 s without load; a stuck task costs at most 2 x STUCK_AFTER more,
    # and is then reported with its story rather than waited for)
    # In a session of its own: if it must be killed, its controller and engines go with it
    # (subprocess.run's timeout kills only the soak, and they ran on for the next tests).
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "fault_soak.py"), "--seconds", "45",
         "--json", str(report_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=320)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    assert report_path.exists(), out[-3000:] + err[-3000:]
    report = json.loads(report_path.read_text())
    assert report["problems"] == [], digest(report)
    assert proc.returncode == 0, err[-3000:]
    assert report["ok"] and report["lost"] == 0 and report["finished_twice"] == 0
    assert report["stuck"] == 0
    assert report["wrong_results"] == 0 and report["over_runs"] == 0
    assert report["unexplained_deaths"] == 0 and report["abort_or_clear_wrong"] == 0
    assert report["retired_badly"] == 0 and report["kind_wrong"] == 0
    assert report["maps_wrong"] == 0 and report["async_wrong"] == 0
    assert report["async_futures"] >= 50, report  # (the asyncio client's, beside)
    # (every kind of task was tried: timeouts, recovery tasks, dependencies, StringTasks,
    # payloads, put values)
    assert set(report["by_kind"]) == {"plain", "timeout", "recovery", "after", "string",
                                      "payload", "shared"}
    assert report["tasks"] >= 300, report  # (a soak that ran almost nothing tested nothing)
    assert sum(report["faults"].values()) >= 8, report["faults"]
    assert len(report["faults"]) >= 3, report["faults"]
    assert report["longest_call_s"] <= report["call_bound_s"], report
    # (a partition that cut nothing would be no fault: the proxy finds an engine's links by
    # its process's TCP ports)
    if report["faults"].get("engine partitioned"):
        assert report["partitioned_links"] > 0, report


def digest(report: dict) -> str:
    """A failed soak's report, short enough to survive pytest's and CI's truncation: the
    counts, the first problems, and (when tasks were stuck) the engines and the log's end."""
    head = {k: v for k, v in report.items()
            if k not in ("problems", "engines_at_end", "log_tail")}
    parts = [json.dumps(head, sort_keys=True), f"{len(report['problems'])} problem(s), first 4:",
             *report["problems"][:4]]
    for e in report.get("engines_at_end", []):
        parts.append(f"engine: {e}")
    parts += ["log (warnings and errors, last lines):", *report.get("log_tail", [])]
    return "\n".join(parts)

