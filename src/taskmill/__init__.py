"""taskmill: a load-balanced task farm for Python (one controller, many engines, many clients)."""

__version__ = "0.1.0"

from .aio import AsyncTaskClient, AsyncTaskFuture  # noqa: E402
from .client import BlockingTaskClient, TaskClient, TaskFuture, TaskOptions  # noqa: E402
from .cluster import Cluster  # noqa: E402
from .engine import current_engine  # noqa: E402
from .errors import (  # noqa: E402
    CompositeError,
    ConnectionFileError,
    ControllerUnreachable,
    DependencyError,
    EngineDied,
    MapFailure,
    RemoteError,
    SerializationError,
    TaskAborted,
    TaskError,
    TaskRejectError,
    TaskTimeout,
)
from .task import BaseTask, MapTask, ResultNS, StringTask, TaskResult  # noqa: E402

__all__ = [
    "AsyncTaskClient",
    "AsyncTaskFuture",
    "BaseTask",
    "BlockingTaskClient",
    "Cluster",
    "CompositeError",
    "ConnectionFileError",
    "ControllerUnreachable",
    "DependencyError",
    "EngineDied",
    "MapFailure",
    "MapTask",
    "RemoteError",
    "ResultNS",
    "SerializationError",
    "StringTask",
    "TaskAborted",
    "TaskClient",
    "TaskError",
    "TaskFuture",
    "TaskOptions",
    "TaskRejectError",
    "TaskResult",
    "TaskTimeout",
    "current_engine",
    "__version__",
]
