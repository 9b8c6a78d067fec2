"""Task states, the moves between them, and each task's story.

A task's state changes only through `Book.move` (book.py), which consults
`TRANSITIONS` and raises `SchedulerBug` for a move the table does not allow: that is a bug in
the scheduler, never a bad input. Every move is also written to the task's story, a bounded
list of (event, from, to, why) entries: the event that caused it, the two states and a few
words on the rule that decided. A finished task's story is kept for a while (for the newest
`STORIES_KEPT` finished tasks at least, twice that at most), so `Scheduler.story(tid)` can
explain what happened to it.

    NEW      -> WAITING (for `after` tasks) | READY | LOST (reloaded while it ran) | FINISHED
    WAITING  -> READY                 READY <-> PARKED (no free engine satisfies it)
    READY    -> RUNNING -> READY      (a retry, a recovery node, a rejection, given back)
    LOST     -> RUNNING (adopted) | READY (given back, or retried)
    any      -> FINISHED (a Finish was sent); any but NEW -> WITHDRAWN (never stored)
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

STORY_LENGTH = 32  # entries kept per task (the newest)
STORIES_KEPT = 1000  # finished tasks whose story is kept (the newest)


class TaskState(StrEnum):
    NEW = "new"  # not yet in the scheduler (the first entry of every story starts here)
    WAITING = "waiting"  # for `after` tasks
    READY = "ready"  # in the ready heap
    PARKED = "parked"  # no free engine satisfies it right now
    RUNNING = "running"  # an engine holds its current attempt (running or buffered)
    LOST = "lost"  # was running when the controller restarted; its engine has not come back yet
    FINISHED = "finished"  # over: a Finish was sent (it is no longer in the scheduler)
    WITHDRAWN = "withdrawn"  # taken back as if never submitted (no Finish)


NEW = TaskState.NEW
WAITING = TaskState.WAITING
READY = TaskState.READY
PARKED = TaskState.PARKED
RUNNING = TaskState.RUNNING
LOST = TaskState.LOST
FINISHED = TaskState.FINISHED
WITHDRAWN = TaskState.WITHDRAWN

# Every move a task may make; anything else is a bug.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    NEW: frozenset({WAITING, READY, LOST, FINISHED}),
    WAITING: frozenset({READY, FINISHED, WITHDRAWN}),
    READY: frozenset({PARKED, RUNNING, FINISHED, WITHDRAWN}),
    PARKED: frozenset({READY, FINISHED, WITHDRAWN}),
    RUNNING: frozenset({READY, FINISHED, WITHDRAWN}),
    LOST: frozenset({RUNNING, READY, FINISHED, WITHDRAWN}),
    FINISHED: frozenset(),
    WITHDRAWN: frozenset(),
}


class SchedulerBug(RuntimeError):
    """The scheduler tried a move its transition table forbids: an internal error."""


class StoryEntry(NamedTuple):
    """One move of a task: the event that caused it, from and to which state, and why."""

    event: str
    before: TaskState
    after: TaskState
    why: str


# A story as stored: one flat tuple, the newest STORY_LENGTH entries, oldest first, each as
# ENTRY items (event, before, after, why) with the states as plain strings (NAMES) and `why`
# a str or, on the hot path, a (format, *args) tuple formatted only when the story is read
# (`read_story`: task_info). Appending an entry is one tuple concatenation, about a third of
# the cost of formatting it into a line; and a tuple of strings and ints holds no reference
# the collector follows, so it untracks the tuple once it has looked at it (the stories of the
# active tasks and of the finished ones kept cost its full collections nothing; an enum member
# in it would keep it tracked for good).
Story = tuple
ENTRY = 4  # items of one entry
STORY_ITEMS = STORY_LENGTH * ENTRY
NAMES: dict[TaskState, str] = {state: state.value for state in TaskState}  # (plain str: a
# tuple holding an enum member could never be untracked)


def read_story(story: Story) -> list[StoryEntry]:
    """A story as stored, as StoryEntry records (each `why` formatted now)."""
    out = []
    for i in range(0, len(story), ENTRY):
        event, before, after, why = story[i:i + ENTRY]
        out.append(StoryEntry(event, TaskState(before), TaskState(after), why_text(why)))
    return out


def why_text(why: str | tuple) -> str:
    """A story entry's `why` as text (a (format, *args) tuple formatted)."""
    return why if type(why) is str else why[0].format(*why[1:])


class FinishedStories:
    """The stories of the tasks that left the scheduler: the newest `limit` of them at least,
    `2 * limit` at most (when it holds that many, the older half is dropped at once, so
    keeping one costs a dict insert)."""

    __slots__ = ("limit", "stories")

    def __init__(self, limit: int = STORIES_KEPT) -> None:
        self.limit = limit
        self.stories: dict[int, Story] = {}

    def keep(self, tid: int, story: Story) -> None:
        stories = self.stories
        stories[tid] = story
        if len(stories) >= 2 * self.limit:
            self.stories = dict(list(stories.items())[-self.limit:])

    def get(self, tid: int) -> Story | None:
        return self.stories.get(tid)

    def __len__(self) -> int:
        return len(self.stories)
