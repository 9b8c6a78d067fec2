"""The controller: the only process that listens. A thin I/O shell around the scheduler.

How a task travels (reading order below follows it):

    client --submit--> [client ROUTER] --> store.add + scheduler.handle(Submit)
                                              |
                                   Dispatch(tid, eid) action
                                              v
    engine <--task--- [engine ROUTER] <-- store.task(tid) body frames, sent as opaque bytes
    engine ---result--> [engine ROUTER] --> scheduler.handle(TaskDone) --> Finish action
                                              |
                                 store.finish + wake the waiters
                                              v
    client <--reply--- [client ROUTER] (replies are sent after the store has committed)

One thread, one loop: poll both sockets, handle every message that is waiting, fire due timers,
commit the store once (group commit), then send what that commit allowed. The controller
never unpickles user data, except a callable `depend`, which it must call.

One loop turn commits first, then sends to engines, then to clients: a task reaches an engine
only once its row and its running mark are on disk (so a restarted controller knows where it
went and never gives its taskid to another task), and a taskid or a result a client hears of
is on disk. Messages to one engine in one turn travel as one `tasks` message, and results for
one client request in one turn as one `done` message. Only messages that depend on nothing
stored (heartbeats, hello, refusals) go out without waiting for the commit.

When the store cannot write (disk full, locked by another process), nothing that depends on
the failed commit is sent: the rows stay queued and the commit is tried again with a growing
pause; the submits of that commit are taken back (their taskids are never used) and answered
with StoreError; what depends only on rows committed before (a result read or waited for,
a clear, which commits on its own and frees space) is answered; everything else waits until
the store writes again. The controller keeps serving meanwhile and logs the cause once.

The package, from the outside in:
- sockets.py: `ControllerSockets`, the two listening sockets (Curve included), which
  `taskmill controller` binds before it imports the rest;
- loop.py: `Controller` and `run_controller`: the poll loop around those sockets, the clock;
- core.py: `ControllerCore`: (peer, message, now) in, what to send out; the verb tables and
  the messages of both protocols (listed there; each header is read through its typed record
  in taskmill/protocol/);
- engines.py, engine_tasks.py: the engine registry and protocol; submits.py, validation.py:
  new tasks; results.py: finished tasks and their waiters; control_verbs.py: abort, clear,
  retire, spin and engine_exited (the answers of the first three kept, for a request sent
  again after a broken connection); views.py: statistics and the other
  read-only views; sched_calls.py: every call into the scheduler; backlog.py: the queued
  tasks beyond the queue window (`--memory-budget`), kept only in the store; outbox.py: what
  a turn sends and in which order; timers.py; context.py: what the parts share.

The names below are imported on first use (PEP 562): importing sockets.py, which the start of
`taskmill controller` does, does not import the rest of the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .context import Counters, Now
    from .core import ControllerCore
    from .engines import EngineRecord
    from .loop import Controller, run_controller
    from .validation import BadRequest

_WHERE = {"BadRequest": "validation", "Controller": "loop", "ControllerCore": "core",
          "Counters": "context", "EngineRecord": "engines", "Now": "context",
          "run_controller": "loop"}


__getattr__, __dir__ = lazy_names(__name__, _WHERE)


__all__ = ["BadRequest", "Controller", "ControllerCore", "Counters", "EngineRecord", "Now",
           "run_controller"]
