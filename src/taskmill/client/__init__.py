"""The client side of taskmill: `TaskClient` (blocking) and, in `taskmill.client.aio`
(also `taskmill.aio`), `AsyncTaskClient`.

How the package is laid out, from the bottom up (each module's docstring says more):

    codec.py       pure functions: tasks -> submit entries, result entries -> values
    steps.py       requests as values (what to send, how to read the reply) and the other
                   steps a verb may ask for (wait for futures, abort, ...)
    connection.py  the sockets and the I/O thread (reconnects, reconnect_timeout)
    futures.py     TaskFuture
    objects.py     ObjectRef: a value put once (`put`), which tasks take as an argument
    submitter.py   the Submitter (batched submits) and the Watcher (results of older tasks)
    backend.py     Backend: what both fronts share, and the blocking way to carry out a verb
    options.py     TaskOptions
    maps.py        the pieces of map, imap and run_all, none of which waits
    executor.py    TaskExecutor: a concurrent.futures.Executor over TaskClient
    verbs.py       every verb, once: a generator of steps that never blocks
    seedmap.py     the seed's mapper and @parallel
    blocking.py    TaskClient: each verb in one line over `Backend.run`
    aio.py         AsyncTaskClient: each verb in one line over an awaiting driver
    joblib_backend the joblib backend of `TaskClient.register_joblib_backend` (imports joblib
                   only when called)

A call's path: TaskClient.map -> verbs.map_elements yields steps -> Backend.run sends each
Request over the Connection and waits for task futures -> the I/O thread resolves them ->
the verb assembles the results. The async front runs the very same verbs, awaiting instead.

Besides its own names, this package has those a program written for IPython.kernel finds in
its `client` module (TaskClient, StringTask, MapTask, TaskResult, ResultNS, CompositeError,
TaskRejectError), so that `from IPython.kernel import client` -> `from taskmill import client`
is enough.
"""

from __future__ import annotations

from ..errors import CompositeError as CompositeError
from ..errors import TaskRejectError as TaskRejectError
from ..task import BaseTask as BaseTask
from ..task import MapTask as MapTask
from ..task import ResultNS as ResultNS
from ..task import StringTask as StringTask
from ..task import TaskResult as TaskResult
from .backend import Backend, check_client_timeouts
from .blocking import BlockingTaskClient, TaskClient
from .codec import refusal, split_results, taskid_list
from .connection import RECONNECT_TIMEOUT
from .executor import TaskExecutor
from .futures import TaskFuture
from .objects import ObjectRef
from .options import NO_OPTIONS, TaskOptions

__all__ = [
    "NO_OPTIONS",
    "RECONNECT_TIMEOUT",
    "BaseTask",
    "BlockingTaskClient",
    "CompositeError",
    "MapTask",
    "ObjectRef",
    "ResultNS",
    "Backend",
    "StringTask",
    "TaskClient",
    "TaskExecutor",
    "TaskFuture",
    "TaskOptions",
    "TaskRejectError",
    "TaskResult",
    "check_client_timeouts",
    "refusal",
    "split_results",
    "taskid_list",
]
