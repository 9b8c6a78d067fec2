"""The scheduler: a pure state machine that decides which task runs where and when it is done.

One entry point: `Scheduler.handle(event) -> list[Action]`. The shell (the controller) turns
what happens (a submit, an engine's report or death, a timer) into an event record, and
carries out the actions returned, in order. The scheduler reads no clock, touches no socket
and does no pickling: time enters only as timers it asks the shell to arm (`ArmTimer`) and
that the shell reports back (`TimerFired`). So every scheduling rule is a direct unit test.

Where things are:
  records.py    events in, actions out (and `Node`, `TaskView`); what `tries` and
                `attempts` mean
  states.py     TaskState, the transition table, the per-task story and its bounds
  book.py       the state (tasks, engines, queues) and the primitives that change it
  placement.py  the scheduling pass: ready task -> free engine, parking, stealing, unmet
  machine.py    Scheduler: one handler per event, and the read-only queries

Events                                 Actions
  Submit(tid, nodes, after=...,          Dispatch(tid, eid, node, attempt; tries, handed_over)
         resume=Resume(...))
  AddEngine(eid, properties, adopt=...)  Finish(tid, outcome, ok, engineid, detail, ...)
  SetProperties(eid, properties)         Interrupt(eid, tid, reason, attempt)
  TaskDone(eid, tid, attempt, status,    Revoke(eid, tid, attempt)
           duration=...)                 ArmTimer(key, delay) / CancelTimer(key)
  RevokeAnswered(eid, tid, attempt, ok)  Answer(value): the yes/no of Abort and Spin
  EngineGone(eid), Withdraw(tids)
  LostReturned(tid), LostExpired(tid)
  Abort(tid), TimerFired(key), Spin(), RunPass()
  Retire(eid)                            Drained(eid): a retiring engine holds nothing now

Every move of a task between states goes through the transition table (an impossible one
raises SchedulerBug) and is written to the task's story: `Scheduler.story(tid)`.

Rules, in one place:
- The queue is FIFO by taskid: each pass gives the oldest runnable task to the longest-idle
  engine that satisfies its `depend` (a dict of property values, or a callable on the engine's
  properties; an exception counts as False) and that the task does not skip (see `rejected`).
- A failed attempt is retried while the current node has retries left, preferring an engine that
  has not failed it. Then the node's recovery task runs under the same taskid, unless that
  recovery task has already handed over to a recovery of its own (checked before marking the
  failed node as handed over), so chains cannot loop.
- `after`: a task waits for those tasks; when one fails, it finishes with `dependency` at once,
  and so do its own dependents.
  One not submitted yet (`awaits`: a run()'s leased taskid) is waited for the same way once it
  is submitted; withdrawn instead (it will never be stored), it fails its dependents too.
- Unmet `depend`: if every registered engine is idle and none satisfies a waiting task for
  `unmet_timeout` seconds, it finishes with `unmet_timeout`. A task that waits only for a skip
  to end (below) is not unmet: an engine satisfies it, it just may not have it yet.
- `rejected` (TaskRejectError from task code: "not on this engine, not now"), as in the seed:
  - It counts no attempt (the next dispatch has the same attempt number), but it uses one of
    the node's retries, as a failed attempt does (both count against `retries`).
  - The task goes back to the queue and skips that engine until the engine's skip timer
    (`("skip", tid, eid, token)`, `reject_skip` = 1 s) fires or the engine's properties change
    (`SetProperties`, or properties reported with any result, this rejection's own excepted:
    they are taken before the rejection). Other engines may take it at once; the skipped one
    gets it again after the skip, whether or not the task has retries left.
  - A node's task is "offered" to an engine once that engine reported an attempt of it (ok,
    error or rejected; a revoked or a died-with attempt was not offered).
  - Rejected with no retries left, the node is over only when every live engine that
    satisfies its `depend` (now, with the properties this report brought) has been offered
    it; until then it goes back to the queue as above. Engines that registered since it was
    submitted count (it goes to them too); engines that died do not. So with `retries=0` and
    four engines it goes to each of the four once before it is over (to one a second time
    only if the others stay busy past its skip).
  - A node that is over this way is treated like one whose last attempt failed: its recovery
    task runs (with no skips, and offered to no engine yet), else the task finishes with the
    rejecting engine's report (`RESULT`, not ok); that final rejection is the one attempt it
    counts. Its `after` dependents then fail with `dependency`.
  - Skip timers die with what they guard: a finished, aborted or withdrawn task, a hand-over
    to a recovery task, a removed engine and a property change each cancel theirs
    (`CancelTimer`). A skipped engine never steals the task either.
- Unmet `depend` while no engine is registered counts as unmet too: a task with a depend
  fails after `unmet_timeout` if no engine arrives.
- Abort of a running task finishes it at once and interrupts its engine; the engine's slot stays
  taken until the engine reports, and that report is dropped.
- An engine that dies (or is declared dead) fails every attempt it held: the running one and
  those buffered behind it, which may have started since the engine last reported (an
  attempt is counted whenever the task's code may have run, so a task with `retries=0` runs
  at most once). Retries then apply. A task given back for sure (a granted revoke, a lost
  `tasks` message, a backlog an engine dropped) is queued again without counting an attempt.
- After a controller restart a task that was running is `lost` until its engine registers
  again: adopted (running there, as it was) if the engine still runs it or has its result,
  queued again without counting an attempt if the engine never started it, and failed like
  an engine death (`LostExpired`) if the engine does not come back.
- Prefetch: an engine may hold several tasks, run in dispatch order (the first is running, the
  others are buffered on the engine). With a fixed number of slots it holds at most that many.
  Adaptive (the default): an engine whose tasks took `d` seconds lately (a moving average of
  the durations it reports) holds about `buffer_seconds / d` of them, at least 1 and at most
  `max_slots`; an engine with no history holds 1. So tiny tasks are buffered and an engine
  never waits a round trip between them, while long tasks are handed out one at a time. When
  an adaptive engine takes a task while holding more than one, a timer (`slow`) is armed: if
  that task is still the one it runs `2 * buffer_seconds` later, the engine's average is
  raised to that, so nothing more is buffered behind a task that turned out long.
- Stealing: an engine that holds nothing while another holds a buffered task it qualifies for
  asks for it back (`Revoke`). The engine answers: `ok` means it will never run that task nor
  report it, so its slot is free and the task is queued again (no attempt counted); not `ok`
  means it had started it (the task stays where it is and is not asked for again). One revoke
  is in flight per idle engine at a time. So a long task that arrives behind a burst of tiny
  ones never holds up the tasks buffered behind it while another engine is idle.
- Retiring (to stop an engine without losing a task, e.g. when a cluster shrinks): a retiring
  engine gets no new task, never steals and is never stolen from; every task it holds is asked
  back (`Revoke`; one it has started stays and finishes there), and once it holds nothing the
  scheduler says `Drained(eid)`, after which the shell stops it and reports `EngineGone`. A
  retiring engine does not count among those a rejected task must be offered to.
"""


from .book import BUFFER_SECONDS, DURATION_WEIGHT, MAX_SLOTS, REJECT_SKIP_SECONDS
from .machine import Scheduler
from .records import (
    ABORTED,
    DEPENDENCY,
    ENGINE_DIED,
    ERROR,
    NO_ENGINE,
    OK,
    REJECTED,
    RESULT,
    UNMET_TIMEOUT,
    Abort,
    Action,
    AddEngine,
    Answer,
    ArmTimer,
    CancelTimer,
    Dispatch,
    Drained,
    EngineGone,
    Event,
    Finish,
    Interrupt,
    LostExpired,
    LostReturned,
    Node,
    Resume,
    Retire,
    Revoke,
    RevokeAnswered,
    RunPass,
    SetProperties,
    Spin,
    Submit,
    TaskDone,
    TaskView,
    TimerFired,
    Withdraw,
    split_answer,
)
from .states import (
    FINISHED,
    LOST,
    NEW,
    PARKED,
    READY,
    RUNNING,
    STORIES_KEPT,
    STORY_LENGTH,
    TRANSITIONS,
    WAITING,
    WITHDRAWN,
    SchedulerBug,
    StoryEntry,
    TaskState,
)

__all__ = [
    "ABORTED", "BUFFER_SECONDS", "DEPENDENCY", "DURATION_WEIGHT", "ENGINE_DIED", "ERROR",
    "FINISHED", "LOST", "MAX_SLOTS", "NEW", "NO_ENGINE", "OK", "PARKED", "READY", "REJECTED",
    "REJECT_SKIP_SECONDS", "RESULT", "RUNNING", "STORIES_KEPT", "STORY_LENGTH", "TRANSITIONS",
    "UNMET_TIMEOUT", "WAITING", "WITHDRAWN", "Abort", "Action", "AddEngine", "Answer",
    "ArmTimer", "CancelTimer", "Dispatch", "Drained", "EngineGone", "Event", "Finish", "Interrupt",
    "LostExpired", "LostReturned", "Node", "Resume", "Retire", "Revoke", "RevokeAnswered", "RunPass", "Scheduler",
    "SchedulerBug", "SetProperties", "Spin", "StoryEntry", "Submit", "TaskDone", "TaskState",
    "TaskView", "TimerFired", "Withdraw", "split_answer",
]
