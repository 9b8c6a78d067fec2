"""The lifeline: a child process's watch on a pipe whose write end only its owner holds.

    owner (a Cluster) holds the write end --its process ends, however it ends--> EOF
    --> `watch_parent`'s thread in the child (an engine, the controller) --> on_exit()

Engines and the controller both watch one (`--parent-fd`); it lives here, importing nothing of
either, so that the controller does not import the engine's side to watch its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def watch_parent(fd: int, on_exit: Callable[[], object]) -> None:
    """Call `on_exit()` when the write end of pipe `fd` closes (its owner died)."""

    def wait() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        on_exit()

    threading.Thread(target=wait, name="taskmill-parent-watch", daemon=True).start()
