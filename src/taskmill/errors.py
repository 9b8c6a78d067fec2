"""The error vocabulary of taskmill.

Every error about a task is a `TaskError`. Remote exceptions keep their own type where the
client can rebuild it; otherwise they arrive as `RemoteError`. This module imports nothing of
taskmill and does no I/O.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class TaskError(Exception):
    """Base class of every error taskmill raises about a task."""


class TaskAborted(TaskError):
    """The task was aborted by a client before it finished."""


class TaskTimeout(TaskError):
    """The task ran past its `timeout`, or no engine satisfied its `depend` in time."""


class TaskRejectError(TaskError):
    """Raised by task code to say "not on this engine, not now": the task goes back to the
    queue and skips that engine for 1 s (or until its properties change). It counts no attempt
    but uses a retry; with none left, once every live engine was offered it, it is the result."""


class EngineDied(TaskError):
    """The engine running the task died (exited, was killed, or stopped heartbeating)."""


class DependencyError(TaskError):
    """A task named in `after` failed, was aborted, or is unknown, so this task never ran."""


class SerializationError(TaskError, TypeError):
    """A task's function, arguments or result could not be pickled or unpickled."""


class ControllerUnreachable(TimeoutError):
    """No controller answered within the client's timeout."""


class ClientClosed(RuntimeError):
    """The client was closed (close(), another thread's, or at exit) while this waited; its
    tasks go on on the controller (another client can read their results)."""

    def __init__(self, message: str = "the client was closed") -> None:
        super().__init__(message)


class ClientForgotten(ControllerUnreachable):
    """The controller forgot this client: it heard nothing from it for longer than its
    `--forget-clients-after` (the client's process was stopped, or cut off) and dropped what
    waited to be sent to it. The futures and requests that waited fail with this; their tasks
    run on (get_task_result(taskid) fetches their results), and the client goes on under new
    connections for its later calls."""


def too_slow(what: str, timeout: float | None) -> TimeoutError:
    """The error of a blocking verb's request not answered within the caller's `timeout`."""
    return TimeoutError(f"{what} did not finish within {timeout:g}s (timeout=); the tasks are "
                        "untouched")


class StoreError(RuntimeError):
    """The controller's task store could not write (disk full, file locked, I/O error), or
    could not be opened. A request it concerns is refused with this error and changes nothing:
    a submit refused so was not accepted (its tasks never run, its taskids are never used)."""


class RunNotStored(TaskError):
    """Tasks that `run()` had returned taskids for were not stored and will never run (the
    controller refused them, or its lease of taskids to the client had ended): raised by the
    client's next call, as `run()` may return before its task is stored. `taskids`: every
    such id since the call before (of every batch refused), which read as unknown."""

    def __init__(self, taskids: list[int], why: str) -> None:
        super().__init__(f"the tasks run() returned {ids_text(taskids)} for were not stored "
                         f"and will not run (their ids read as unknown): {why}")
        self.taskids = list(taskids)


class StoreRunNotStored(RunNotStored, StoreError):
    """`RunNotStored` because the controller's store could not write."""


def ids_text(tids: list[int]) -> str:
    """`taskid 4`, `taskids 4..9` (a run of ids), or `taskids 4, 7, 12` (the first 8 of them
    and how many in all)."""
    if len(tids) == 1:
        return f"taskid {tids[0]}"
    if tids == list(range(tids[0], tids[0] + len(tids))):
        return f"taskids {tids[0]}..{tids[-1]}"
    more = f", ... ({len(tids)} in all)" if len(tids) > 8 else ""
    return f"taskids {', '.join(map(str, tids[:8]))}{more}"


class ConnectionFileError(RuntimeError):
    """A connection file is missing, malformed, or readable by others."""


class RemoteTraceback(Exception):
    """Carries the engine's traceback text; attached as ``__cause__`` of remote exceptions."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class RemoteError(TaskError):
    """A remote exception whose type could not be rebuilt on the client."""

    def __init__(
        self,
        type_name: str,
        message: str,
        remote_traceback: str = "",
        engineid: int | None = None,
        taskid: int | None = None,
    ) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.engineid = engineid
        self.taskid = taskid

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            RemoteError,
            (self.type_name, self.message, self.remote_traceback, self.engineid, self.taskid),
        )


class MapFailure(NamedTuple):
    """One failed element of a map: where it was, where it ran, and what it raised."""

    index: int
    engineid: int | None
    exception: BaseException
    traceback: str


class CompositeError(TaskError):
    """Every failure of a map, in input order. `elist` is the list of `MapFailure`s."""

    def __init__(self, message: str, elist: list[MapFailure]) -> None:
        super().__init__(message)
        self.message = message
        self.elist = list(elist)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CompositeError, (self.message, self.elist))

    def __str__(self) -> str:
        lines = [f"{self.message} ({len(self.elist)} failed)"]
        for f in self.elist:
            lines.append(
                f"[{f.index}] engine {f.engineid}: {type(f.exception).__name__}: {f.exception}"
            )
        return "\n".join(lines)

    def raise_exception(self, i: int = 0) -> None:
        """Raise the exception of failure `i` (the first by default)."""
        if not self.elist:
            raise IndexError("this CompositeError holds no failures")
        raise self.elist[i].exception


_CONTROLLER_ERRORS: dict[str, type[TaskError]] = {
    cls.__name__: cls
    for cls in (TaskAborted, TaskTimeout, TaskRejectError, EngineDied, DependencyError,
                SerializationError)
}


def controller_error(type_name: str, message: str) -> TaskError:
    """Build one of taskmill's own errors from its name (used for controller-decided failures)."""
    cls = _CONTROLLER_ERRORS.get(type_name)
    if cls is None:
        return RemoteError(type_name, message)
    return cls(message)
