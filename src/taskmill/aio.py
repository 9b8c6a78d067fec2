"""`taskmill.aio`: the import path of the asyncio client, which lives in `taskmill.client.aio`
(see there: the same verbs as `TaskClient`, as coroutines, over the same core)."""

from .client.aio import AsyncTaskClient, AsyncTaskFuture

__all__ = ["AsyncTaskClient", "AsyncTaskFuture"]
