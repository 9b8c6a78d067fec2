"""What the controller's parts share: the time they are handed, their counters, their settings.

The loop (loop.py) reads the clock and hands the time to the core as a `Now` (both clocks at
once: the monotonic one for deadlines, heartbeats and timers, the wall clock for what is stored
and shown); every part reads `Context.now` and never a clock of its own. `Counters` are the
controller's running totals (messages, submits, finishes, engine deaths, revokes, store
refusals): with `RecentActivity` (stats.py) and the queue they make up `statistics()` (see
views.py), which `taskmill status` (status.py), /metrics and the dashboard render.

`Context` is built once by the core and given to each part (engines, submits, waiters, views;
the clients heard from: clients.py):
the parts talk through the collaborators it names, never through each other's attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ..defaults import dead_after
from ..stats import RecentActivity
from ..store import TaskStore
from ..wire import Wire
from .backlog import Backlog
from .clients import Clients
from .leases import Leases
from .outbox import Outbox
from .sched_calls import SchedulerCalls
from .timers import Timers


class Now(NamedTuple):
    """The time a message or a timer is handled at, read by the loop once for it. (A tuple:
    the loop builds several a task, with `new_now(Now, (mono, wall))`, a C call where a
    dataclass runs its __init__ in Python.)"""

    mono: float  # time.monotonic(): deadlines, heartbeats, timers
    wall: float  # time.time(): what is stored and shown (submitted, started, completed)


new_now = tuple.__new__


@dataclass(slots=True)
class Counters:
    """The controller's running totals, shown by statistics()."""

    started: float  # wall clock
    messages_in: int = 0
    messages_out: int = 0
    submitted: int = 0
    finished: int = 0
    engines_died: int = 0
    engines_retired: int = 0  # stopped on purpose once they held nothing (retire)
    revokes_sent: int = 0  # an idle engine asked for a task buffered on another
    revokes_granted: int = 0  # ... and got it
    tasks_lost_in_transit: int = 0  # dispatches an engine never got, queued again
    heartbeats_unanswered: int = 0  # idle engines' heartbeats with nothing to answer
    answers_given_again: int = 0  # resent abort/clear/retire answered as the first time
    engines_moved: int = 0  # live engines that moved to new connections (old ones deaf)
    argument_bytes_out: int = 0  # bytes of results sent to engines as task arguments
    store_refusals: int = 0  # submits refused because the store could not write
    memory_settled: int = 0  # bursts after which memory was given back (core.settle_memory)


@dataclass(slots=True)
class Settings:
    heartbeat: float
    unmet_timeout: float
    dead_after: float = field(init=False)

    def __post_init__(self) -> None:
        self.dead_after = dead_after(self.heartbeat)


@dataclass(slots=True)
class Context:
    session: bytes  # random per controller start: every message of a peer names it
    settings: Settings
    wire: Wire  # (its `refused` counter is shared by everything that refuses a message)
    store: TaskStore
    sched: SchedulerCalls
    outbox: Outbox
    leases: Leases  # blocks of taskids clients number their run() tasks from
    clients: Clients  # who is connected; who was forgotten for its silence
    timers: Timers
    activity: RecentActivity
    counters: Counters
    now: Now
    backlog: Backlog  # queued tasks kept only in the store (the scheduler's, as `sched.backlog`)
    # tid -> its attempt's dispatch: the monotonic time (a step of the wall clock must not
    # make it look as if it ran past its timeout) and the wall time (shown)
    started: dict[int, Now] = field(default_factory=dict)
    # tid -> (attempt, monotonic time from which its engine is known to run it: the dispatch to an
    # engine that held nothing else, or the report that made it the first the engine holds);
    # what a task the controller ends (aborted, its engine dead) ran counts from there
    running_since: dict[int, tuple[int, float]] = field(default_factory=dict)
