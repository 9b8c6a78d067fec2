"""The engine: a Python process with a persistent namespace that runs one task at a time.

How a task travels through an engine:

    controller --tasks--> [task socket] I/O thread: the backlog (numbered messages; a skipped
                                          |          number is a lost message, reported)
                                          v
                          main thread: takes the next task while it holds a lease; for each:
                                          |  check pmac, unpickle body,
                                          |  clear_before, push, exec / call, pull, clear_after
                                          |  (stdout/stderr captured, what task code logs
                                          |  too; TaskRejectError -> rejected)
    controller <-results- [result socket] +  pickled value or exception, traceback text,
                                             timings, properties when task code changed them;
                                             kept until the controller acknowledges them
    controller <--hb-->   [control socket] I/O thread: registration, heartbeats (what this
                                          engine holds, its lease), interrupts, revokes
    controller <-ping->   [heart socket]  a ZeroMQ device echoing pings without the GIL

Three threads: the main thread runs task code and sends results; the I/O thread owns the task
and control sockets (registration, heartbeats, interrupts, revokes, acknowledgements); the
heart thread is ZeroMQ's own C device, so the controller hears this engine live even while
task code holds the GIL. The I/O thread interrupts the running task on `abort` by sending the
main thread a signal whose handler raises `TaskInterrupted` in the task code.

Being honest under faults:
- A task starts only under a lease: within a share of the controller's `dead_after` of a
  heartbeat it answered. An engine stopped or cut off longer than that (so perhaps declared
  dead, its tasks failed or given elsewhere) waits for a fresh answer before it starts another
  task; if the answer says it was declared dead, it drops every task it held, interrupts the
  running one, and registers anew.
- A result is kept until the controller acknowledges it (after storing it): a lost message
  or a controller restart costs a resend, never the result. After a restart, the engine
  drops the tasks waiting in its backlog (they never started) and registers naming the task
  it runs and the results not yet acknowledged, so the new controller adopts them.
- The heartbeat names the tasks held and the task messages received, so the controller
  finds a lost `tasks` message within a heartbeat and queues its tasks again.
- Connections that go deaf (ZeroMQ reconnected with routing ids the controller still holds,
  which it then ignores for good): heartbeats unanswered, task messages that never arrive,
  results asked for again, being declared dead while running, or (at once) a connection
  its sockets' monitors saw break make the engine open new connections with new routing ids
  and register them; the controller moves it there, with
  its id and its tasks (channels.py).

An engine may hold several tasks (the controller's prefetch). Each carries `dseq`, the
controller's dispatch number, which rises in the order the engine runs them. So "not started
yet" is `dseq > the last started`, and the I/O thread can promise a task back to the
controller (`revoke`) without asking the main thread: a revoked task is dropped when its turn
comes, never run and never reported.

What lives where: core.py (`Engine`: lifecycle, the main thread's task loop), control.py
(`EngineControl`: identity, the state both threads share, the I/O thread: heartbeats, tasks
in, revokes, interrupts, sending results), registration.py (its registration part: welcome,
registered, reregister), sockets.py (the four sockets, the
heart, opening them anew), channels.py (when to: `ChannelWatch`), running.py (running
a task's code, capture, the result or error it makes), results.py (results kept until
acknowledged, batched), process.py (`run_engine`, `parse_property`; `watch_parent` from
taskmill/lifeline.py).
"""

from __future__ import annotations

from .control import (
    CONTROL_TICK,
    INTERRUPT_SIGNAL,
    KILL_GRACE,
    REGISTER_RETRY_FIRST,
    REGISTER_RETRY_MAX,
    RESIGNAL_EVERY,
    EngineControl,
)
from .core import Engine, current_engine
from .process import parse_property, run_engine, watch_parent
from .registration import LEASE_SHARE, RESULT_HEADROOM
from .results import RESULT_BATCH, RESULT_BATCH_BYTES, RESULT_DELAY, ResultOutbox
from .running import OUTPUT_LIMIT, Capture, TaskCode, TaskInterrupted

__all__ = [
    "CONTROL_TICK", "INTERRUPT_SIGNAL", "KILL_GRACE", "LEASE_SHARE", "OUTPUT_LIMIT",
    "REGISTER_RETRY_FIRST", "REGISTER_RETRY_MAX", "RESIGNAL_EVERY", "RESULT_BATCH",
    "RESULT_BATCH_BYTES", "RESULT_DELAY", "RESULT_HEADROOM", "Capture", "Engine",
    "EngineControl", "ResultOutbox", "TaskCode", "TaskInterrupted", "current_engine",
    "parse_property", "run_engine", "watch_parent",
]
