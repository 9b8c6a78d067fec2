"""Ctrl-C deferred over a block: `interrupts_deferred`, for sends that must not be cut short.

    with interrupts_deferred(): send  -- a SIGINT meanwhile is noted --> raised at the block's end

The client's connection (connection.py) guards its multi-frame sends with it, the backend its
submits (whose futures a map must get to abort them). It touches only Python's signal handler.
"""

from __future__ import annotations

import _signal  # signal.signal's C function: without its enum conversions (~10x cheaper)
import signal
import threading
from _thread import get_ident
from contextlib import nullcontext
from typing import Any

SIGINT = int(signal.SIGINT)
NOT_DEFERRED = nullcontext()  # (a single frame is sent whole or not at all)
_deferring = False  # whether the main thread is inside an interrupts_deferred block (its own)
MAIN_IDENT = threading.main_thread().ident  # (a forked child's main thread keeps its ident)


class interrupts_deferred:  # noqa: N801 - used as a context manager, like a function
    """Ctrl-C waits until the block is over: it then raises KeyboardInterrupt as usual.

    Used where an interruption would leave something half done that nobody can clean up: a
    message half sent (the next one would be glued to it), a submit sent whose futures its
    verb never got (so a map could not abort them). Only in the main thread with Python's own
    SIGINT handler (anywhere else signals do not raise there, or someone else handles them).
    Costs two sigaction calls (~0.5 us), so it guards multi-frame sends and submits only."""

    __slots__ = ("old", "caught")

    def __enter__(self) -> None:
        global _deferring
        self.old: Any = None
        self.caught: Any = None
        # (inside another such block Ctrl-C is deferred already, to the outer block's end: a
        # submit's send inside the submit's block costs no more sigaction calls)
        # (Python's table says whose handler it is without a system call)
        if not _deferring and get_ident() == MAIN_IDENT \
                and _signal.getsignal(SIGINT) is signal.default_int_handler:
            self.old = _signal.signal(SIGINT, self.note)
            if self.old is not signal.default_int_handler:  # someone else's: leave it be
                _signal.signal(SIGINT, self.old)
                self.old = None
            else:
                _deferring = True

    def note(self, signum: int, frame: Any) -> None:
        self.caught = frame

    def __exit__(self, *exc: object) -> None:
        global _deferring
        if self.old is not None:
            _deferring = False
            _signal.signal(SIGINT, self.old)
            if self.caught is not None:
                self.old(SIGINT, self.caught)  # raises KeyboardInterrupt
