"""taskmill: a load-balanced task farm for Python (one controller, many engines, many clients).

The names below are imported on first use (PEP 562), so a controller or engine process, which
needs none of the client side (asyncio among it), starts without importing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_names

__version__ = "0.1.0"

_WHERE = {
    "AsyncTaskClient": "aio", "AsyncTaskFuture": "aio",
    "BlockingTaskClient": "client", "TaskClient": "client", "TaskFuture": "client",
    "TaskExecutor": "client", "TaskOptions": "client", "ObjectRef": "client",
    "Cluster": "cluster",
    "current_engine": "engine",
    "ClientClosed": "errors", "ClientForgotten": "errors", "CompositeError": "errors", "ConnectionFileError": "errors",
    "ControllerUnreachable": "errors", "DependencyError": "errors", "EngineDied": "errors",
    "MapFailure": "errors", "RemoteError": "errors", "SerializationError": "errors",
    "StoreError": "errors", "RunNotStored": "errors",
    "TaskAborted": "errors", "TaskError": "errors", "TaskRejectError": "errors",
    "TaskTimeout": "errors", "ship_module": "wire",
    "BaseTask": "task", "MapTask": "task", "ResultNS": "task", "StringTask": "task",
    "TaskResult": "task",
}

if TYPE_CHECKING:
    from .aio import AsyncTaskClient, AsyncTaskFuture
    from .client import (
        BlockingTaskClient,
        ObjectRef,
        TaskClient,
        TaskExecutor,
        TaskFuture,
        TaskOptions,
    )
    from .cluster import Cluster
    from .engine import current_engine
    from .errors import (
        ClientClosed,
        ClientForgotten,
        CompositeError,
        ConnectionFileError,
        ControllerUnreachable,
        DependencyError,
        EngineDied,
        MapFailure,
        RemoteError,
        RunNotStored,
        SerializationError,
        StoreError,
        TaskAborted,
        TaskError,
        TaskRejectError,
        TaskTimeout,
    )
    from .task import BaseTask, MapTask, ResultNS, StringTask, TaskResult
    from .wire import ship_module


__getattr__, __dir__ = lazy_names(__name__, _WHERE)


__all__ = [
    "AsyncTaskClient",
    "AsyncTaskFuture",
    "BaseTask",
    "BlockingTaskClient",
    "ClientClosed",
    "ClientForgotten",
    "Cluster",
    "CompositeError",
    "ConnectionFileError",
    "ControllerUnreachable",
    "DependencyError",
    "EngineDied",
    "MapFailure",
    "MapTask",
    "ObjectRef",
    "RemoteError",
    "ResultNS",
    "RunNotStored",
    "SerializationError",
    "StoreError",
    "StringTask",
    "TaskAborted",
    "TaskClient",
    "TaskError",
    "TaskExecutor",
    "TaskFuture",
    "TaskOptions",
    "TaskRejectError",
    "TaskResult",
    "TaskTimeout",
    "current_engine",
    "ship_module",
    "__version__",
]
