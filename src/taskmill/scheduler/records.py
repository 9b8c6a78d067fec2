"""The scheduler's records: what goes in (events), what comes out (actions), and `Node`.

Data flows one way: the shell (the controller) builds an event and hands it to
`Scheduler.handle`, which returns the actions to carry out, in order. Every record here is a
frozen dataclass with slots: a value, never shared state. Events name what happened (a
submit, an engine's report, a timer); actions name what the shell must do (send a task,
store a result, arm a timer). `Answer` is the one action that asks nothing of the shell: it
carries the yes/no of `Abort` (was the task active?) and `Spin` (did the pass dispatch?),
read with `split_answer`.

Two counters travel with a task, and each name means one thing:
- `attempts`: how many times the task's code may have run, over its whole recovery chain; it
  is the attempt number a `Dispatch` carries and the count a `Finish` reports. A rejection, a
  granted revoke and a task given back unstarted count none.
- `tries`: how much of the current node's `retries` budget is used: each dispatch of the node
  uses one, a rejection keeps it used, a task given back unstarted gives it back. The node is
  retried while `tries <= retries`; a hand-over to a recovery node starts again at 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterable
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any, TypeVar, dataclass_transform

from .states import TaskState

R = TypeVar("R")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[R]) -> type[R]:
    """`@dataclass(frozen=True, slots=True)`, built faster: a frozen dataclass's own
    `__init__` stores each field through `object.__setattr__` (about 0.1 µs a field: 1.3 µs
    for a Submit, several records per task), so this one stores them through the slots'
    descriptors instead. Same signature and defaults, and the instances stay frozen."""
    cls = dataclass(frozen=True, slots=True)(cls)
    old = cls.__init__
    params = list(inspect.signature(old).parameters.values())[1:]
    args, kwonly = [], []
    for p in params:
        (kwonly if p.kind is p.KEYWORD_ONLY else args).append(p.name)
    head = ", ".join(["self", *args, *(["*", *kwonly] if kwonly else [])])
    body = "".join(f"    _set_{f.name}(self, {f.name})\n" for f in fields(cls)) or "    pass\n"
    scope = {f"_set_{f.name}": cls.__dict__[f.name].__set__ for f in fields(cls)}
    exec(f"def __init__({head}):\n{body}", scope)  # noqa: S102 - built from field names only
    init = scope["__init__"]
    init.__defaults__, init.__kwdefaults__ = old.__defaults__, old.__kwdefaults__
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = old.__doc__
    cls.__init__ = init
    return cls

# Outcomes of Finish.
RESULT = "result"  # the engine's report of the last attempt is the task's result
ENGINE_DIED = "engine_died"
ABORTED = "aborted"
UNMET_TIMEOUT = "unmet_timeout"
DEPENDENCY = "dependency"
# The detail of an UNMET_TIMEOUT Finish whose timer ran out with no engine registered at all.
NO_ENGINE = "no_engine"

# Statuses an engine reports for an attempt.
OK = "ok"
ERROR = "error"
REJECTED = "rejected"


@dataclass(slots=True)
class Node:
    """What the scheduler needs of one task of a recovery chain."""

    retries: int = 0
    depend: dict | Callable[[Any], Any] | None = None
    recovery: int | None = None
    timeout: float | None = None


# -- events -----------------------------------------------------------------------------------
@record
class Resume:
    """Where a task reloaded after a controller restart was: its node, its counters, the
    nodes it handed over from; `lost`: it was running, and waits for its engine to come back
    (see `AddEngine`)."""

    node: int = 0
    attempts: int = 0
    tries: int = 0
    handed_over: Iterable[int] = ()
    lost: bool = False


@record
class Submit:
    """A new task, or (`resume`) one reloaded after a restart.

    `after` holds the taskids this task still waits for, each active in this scheduler;
    `awaits` those it waits for that are not submitted yet (a run()'s leased taskid not yet
    stored, a task still to be reloaded): the task waits for their own Submit and then for
    them as for `after` tasks, and fails with `dependency` if one is withdrawn instead (an id
    that will never be stored is withdrawn: `Withdraw`); `broken_after` names one that
    already failed or is unknown (the task fails at once).
    With `dispatch=False` no scheduling pass runs: the caller sends `RunPass` after a batch
    of events, and gets the same dispatches it would have got one by one."""

    tid: int
    nodes: list[Node]
    _: KW_ONLY
    after: Iterable[int] = ()
    broken_after: int | None = None
    awaits: Iterable[int] = ()
    resume: Resume | None = None
    dispatch: bool = True


@record
class AddEngine:
    """A new engine; `slots` overrides the scheduler's prefetch for it. `adopt` names `lost`
    tasks it still runs (or has results of): they run there, as they were."""

    eid: int
    properties: dict[str, Any]
    slots: int | None = None
    adopt: Iterable[int] = ()


@record
class SetProperties:
    eid: int
    properties: dict[str, Any]


@record
class TaskDone:
    """An engine reports an attempt: `ok`, `error` or `rejected`, and how long it ran.
    (`dispatch=False`: see `Submit`.)"""

    eid: int
    tid: int
    attempt: int
    status: str
    properties: dict[str, Any] | None = None
    duration: float | None = None
    dispatch: bool = True


@record
class RunPass:
    """A scheduling pass (after events given with `dispatch=False`)."""


@record
class EngineGone:
    """An engine died or left: its current attempts fail with ENGINE_DIED."""

    eid: int


@record
class RevokeAnswered:
    """Engine `eid` answers a Revoke: `ok` if it will never run that attempt."""

    eid: int
    tid: int
    attempt: int
    ok: bool


@record
class Withdraw:
    """Forget tasks as if they had never been submitted (their submit could not be stored):
    no Finish; a slot one took is free again. A task that waits for one of them fails with
    `dependency` (also for one never submitted: a Submit's `awaits`)."""

    tids: Collection[int]


@record
class LostReturned:
    """A `lost` task's engine came back without it (it never started, or waited there
    unstarted and was dropped): queued again, no attempt counted."""

    tid: int


@record
class LostExpired:
    """A `lost` task's engine did not come back: its attempt failed as if the engine had
    died (retries apply)."""

    tid: int


@record
class Abort:
    """Abort an active task. Answered (`Answer`) with whether it was active here."""

    tid: int


@record
class TimerFired:
    """A timer armed by `ArmTimer` went off (one cancelled by `CancelTimer` never does)."""

    key: tuple


@record
class Spin:
    """Run a pass. Answered (`Answer`) with whether it dispatched anything."""


@record
class Retire:
    """Take engine `eid` out of scheduling, to stop it without losing a task: it gets no new
    task, what it holds buffered is asked back (`Revoke`), what it runs finishes, and once it
    holds nothing, `Drained(eid)` says it may be stopped. Answered (`Answer`) with whether
    the engine is registered here (retiring one already retiring is a yes)."""

    eid: int


Event = (Submit | AddEngine | SetProperties | TaskDone | RunPass | EngineGone | RevokeAnswered
         | Withdraw | LostReturned | LostExpired | Abort | TimerFired | Spin | Retire)


# -- actions ----------------------------------------------------------------------------------
@record
class Dispatch:
    """Send attempt `attempt` of node `node` of task `tid` to engine `eid`. `tries` and
    `handed_over` (the nodes the task has handed over from, sorted) are the task's counters
    after this dispatch, for the shell's record of it; they follow from the task's history,
    so they take no part in comparing two Dispatch records."""

    tid: int
    eid: int
    node: int
    attempt: int
    tries: int = field(default=0, compare=False)
    handed_over: tuple[int, ...] = field(default=(), compare=False)


@record
class Finish:
    tid: int
    outcome: str
    ok: bool
    engineid: int | None = None
    detail: Any = None
    attempts: int = 0
    node: int = 0  # the node of the recovery chain that ran last


@record
class Interrupt:
    """Tell engine `eid` to stop attempt `attempt` of task `tid` (the attempt it holds)."""

    eid: int
    tid: int
    reason: str
    attempt: int | None


@record
class Revoke:
    """Ask engine `eid` to give back a buffered attempt (it answers with RevokeAnswered)."""

    eid: int
    tid: int
    attempt: int


@record
class ArmTimer:
    key: tuple
    delay: float


@record
class CancelTimer:
    key: tuple


@record
class Drained:
    """Retiring engine `eid` holds no task now: the shell may stop it (then `EngineGone`)."""

    eid: int


@record
class Answer:
    """The yes/no of an event that asks a question (`Abort`, `Spin`, `Retire`); always the
    last action."""

    value: bool


Action = Dispatch | Finish | Interrupt | Revoke | ArmTimer | CancelTimer | Drained | Answer


def split_answer(actions: list[Action]) -> tuple[bool, list[Action]]:
    """(the answer, the other actions) of what `Abort`, `Spin` or `Retire` returned."""
    if actions and isinstance(actions[-1], Answer):
        return actions[-1].value, actions[:-1]
    raise ValueError("these actions carry no Answer")


# -- query results ----------------------------------------------------------------------------
@record
class TaskView:
    """A snapshot of one active task (`Scheduler.task`): its state, the engine that holds its
    current attempt (if any), its node and its counters (see the module docstring)."""

    tid: int
    state: TaskState
    engine: int | None
    node: int
    tries: int
    attempts: int
    handed_over: tuple[int, ...]
