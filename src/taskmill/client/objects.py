"""Values put once: `tc.put(obj)` -> an `ObjectRef`, which tasks take as an argument.

    client   put(backend, obj): the value pickled (out-of-band buffers as frames) and signed
             (pmac), sent in one `put` request; the controller stores it as a finished result
             under a taskid of its own (kind "put") and answers that id after its commit
    task     an ObjectRef among a task's arguments stands for the value, as a TaskFuture
             stands for its result (arguments.py): the value goes from the store to each
             engine once, and the engine keeps it for later tasks (engine/running.py
             KeptValues, bounded; the controller says what to keep and to forget)
    release  `ref.release()` or `tc.clear(ref.taskid)` drops it from the store; it survives a
             controller restart like any result
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..arguments import FutureLike
from ..errors import SerializationError
from ..protocol import Put, to_request
from ..wire import Wire, dumps, frame_len
from .steps import Request

PUT_OVERHEAD = 1024  # bytes of a put message besides the value's frames


class ObjectRef(FutureLike):
    """A value stored once in the controller's store (`TaskClient.put`). Pass it to tasks
    (at the top level of their arguments, or directly inside a list, tuple or dict there):
    each engine gets the value once and keeps it. `taskid` is its id in the store."""

    def __init__(self, taskid: int, release: Callable[[], Any], nbytes: int) -> None:
        self.taskid = taskid
        self.nbytes = nbytes
        self._release = release

    def release(self) -> Any:
        """Drop the value from the store (as `clear(ref.taskid)`); tasks that take it and
        have not started yet fail with DependencyError."""
        return self._release()

    def __repr__(self) -> str:
        return f"<ObjectRef taskid={self.taskid} {self.nbytes} bytes>"

    def __reduce__(self) -> Any:
        raise TypeError(
            f"an ObjectRef (task {self.taskid}) cannot be pickled: pass it to a task at the top "
            "level of its arguments, or directly inside a list, tuple or dict there")


def put_request(obj: Any, wire: Wire, max_message: int) -> tuple[Request, int]:
    """The `put` request for `obj`, and the size of its value in bytes."""
    try:
        frames = dumps(obj)
    except Exception as e:
        raise SerializationError(f"cannot put {type(obj).__name__}: it cannot be pickled "
                                 f"({type(e).__name__}: {e})") from e
    nbytes = sum(frame_len(f) for f in frames)
    if nbytes > max_message - PUT_OVERHEAD:
        raise ValueError(f"cannot put a value of {nbytes} bytes: a message holds at most "
                         f"{max_message} (the controller's --max-message)")
    header = to_request(Put(wire.payload_mac(frames)))
    return Request(header, frames, read=lambda reply, _: reply.tids[0]), nbytes
