"""`Callbacks`: where the done-callbacks a user adds to a client's futures run.

    the I/O thread marks a future done --> its callbacks: ours (`TaskFuture.on_done`: quick,
        never blocking: they run there) and the user's (`add_done_callback`), queued here
    --> one thread of the client's own runs the user's, in the order their futures finished
        (as dask.distributed runs its futures' callbacks on a thread of their own)

A user's callback may wait: for another future (`tc.submit(g, f.result()).result()`, the
usual way to chain), for the client's calls, for `cancel()`. On the I/O thread that froze the
whole client for good: the thread that would have read the answer was the one waiting. Here
it only holds back the callbacks queued behind it. The thread ends after IDLE seconds without
a callback and starts again with the next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

IDLE = 1.0  # seconds without a callback before the thread ends

log = logging.getLogger("concurrent.futures")  # (where Future logs a callback's exception)


class Callbacks:
    def __init__(self, name: str = "taskmill-callbacks") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[tuple[Callable[[Any], object], Any]] = deque()
        self._running = False
        self._busy = False  # a callback runs now

    def call(self, fn: Callable[[Any], object], fut: Any) -> None:
        """Run `fn(fut)` on the callbacks' thread, after those queued before it."""
        with self._lock:
            self._queue.append((fn, fut))
            if self._running:
                self._wake.notify()
                return
            self._running = True
        threading.Thread(target=self._loop, name=self._name, daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    if not self._wake.wait(IDLE) and not self._queue:
                        self._running = False
                        self._wake.notify_all()  # (`drain`)
                        return
                fn, fut = self._queue.popleft()
                self._busy = True
            try:
                run(fn, fut)
            finally:
                with self._lock:
                    self._busy = False
                    self._wake.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait, at most `timeout` seconds, until every callback queued has run (the client
        closes: a script that ends right after would lose them, the thread being a daemon);
        not from a callback itself (it would wait for itself). Whether none is left."""
        if threading.current_thread().name == self._name:
            return True
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
        return True


def run(fn: Callable[[Any], object], fut: Any) -> None:
    """`fn(fut)`; an exception is logged, as Future does with its callbacks' (SystemExit and
    KeyboardInterrupt too: raised in this thread they would end it, and every later callback
    of the client with it)."""
    try:
        fn(fut)
    except BaseException:  # noqa: BLE001 - a callback's own failure is not the client's
        log.exception("exception calling callback for %r", fut)


class UserCallback:
    """A user's callback in a future's list: called (on the thread that finished the
    future) with the future, it queues `fn` on `callbacks`."""

    __slots__ = ("fn", "callbacks")

    def __init__(self, fn: Callable[[Any], object], callbacks: Callbacks) -> None:
        self.fn = fn
        self.callbacks = callbacks

    def __call__(self, fut: Any) -> None:
        self.callbacks.call(self.fn, fut)
