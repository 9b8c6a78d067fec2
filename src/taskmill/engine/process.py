"""The engine process: reading `KEY=VALUE` properties, its signals, and its parent's death.

`taskmill engine` (cli/commands.py) calls `run_engine`: one `Engine` (core.py) until SIGTERM
(which ends running task code at once, its task unreported: the controller fails it with
EngineDied, as a dead engine's, and its retries apply; else it ends after the task) or until the write end of
`parent_fd` closes (the process that started it died: the engine ends with it; lifeline.py's
`watch_parent`, re-exported here).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from ..connection import ConnectionInfo
from ..lifeline import watch_parent
from .core import Engine
from .running import TaskInterrupted


def parse_property(text: str) -> tuple[str, Any]:
    """`KEY=VALUE`, VALUE read as JSON when it parses (1, true, "x"), else kept as a str."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"a property must look like KEY=VALUE, not {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value



def run_engine(info: ConnectionInfo, properties: dict[str, Any] | None = None,
               parent_fd: int | None = None, register_timeout: float | None = None,
               kill_report_fd: int | None = None) -> None:
    """Run one engine in this process until it is stopped (SIGTERM) or its parent dies;
    `kill_report_fd`: where its last-resort kills are reported (supervise.py)."""
    engine = Engine(info, properties, register_timeout=register_timeout)
    engine.kill_report_fd = kill_report_fd

    def _term(signum: int, frame: Any) -> None:
        engine.stop()
        if engine.code.active:  # (ends the task code unreported, as a dead engine's: the
            raise TaskInterrupted("drop")  # controller fails it with EngineDied, retries apply)

    signal.signal(signal.SIGTERM, _term)
    if parent_fd is not None:
        watch_parent(parent_fd, lambda: os._exit(0))
    engine.run()
