"""The engine's last-resort kill (engine/control.py `arm_kill_locked`) when it cannot be armed."""

from __future__ import annotations

import faulthandler
import time
from types import SimpleNamespace

from taskmill.engine.control import EngineControl


def test_an_engine_that_cannot_start_the_kills_watchdog_thread_runs_on(monkeypatch, caplog):
    """At a thread or process limit (a pids cgroup), faulthandler cannot start the watchdog
    thread of the kill armed for a task with a timeout (or an abort): its RuntimeError ended
    the engine, and the task it had not even started was reported as EngineDied, or as a
    TaskTimeout of code that 'did not let the interruption through'. Now the task runs
    without that safety net, and the log says why."""
    def no_thread(*args: object, **kwargs: object) -> None:
        raise RuntimeError("can't start new thread")

    reported: list[bytes] = []
    engine = SimpleNamespace(kill_at=None, kill_report_fd=None, _report_kill=reported.append)
    monkeypatch.setattr(faulthandler, "dump_traceback_later", no_thread)
    EngineControl.arm_kill_locked(engine, time.monotonic() + 5.0)  # (raised RuntimeError)
    assert engine.kill_at is None and reported == []  # (nothing armed, nothing reported)
    assert "cannot arm the last-resort kill" in caplog.text
    assert "thread or process limit" in caplog.text


def test_an_engine_killed_with_sigkill_is_said_to_be_perhaps_out_of_memory():
    """The kernel's OOM killer (or a cgroup's memory limit) ends an engine with SIGKILL: the
    EngineDied message said only "process exited with status -9 (SIGKILL)"."""
    from taskmill.controller.engines import exit_text

    assert "out-of-memory killer" in exit_text(-9)
    assert "memory" not in exit_text(-15) and "memory" not in exit_text(1)
