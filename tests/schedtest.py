"""Helpers shared by the scheduler's unit tests (test_scheduler*.py): a scheduler with a short
unmet timeout, and picking actions out of what `Scheduler.handle` returned."""

from __future__ import annotations

from typing import Any

from taskmill.scheduler import ArmTimer, Scheduler

UNMET = 5.0


def make(**kw: Any) -> Scheduler:
    kw.setdefault("unmet_timeout", UNMET)
    return Scheduler(**kw)


def of(actions: list, cls: type) -> list:
    return [a for a in actions if isinstance(a, cls)]


def one(actions: list, cls: type) -> Any:
    found = of(actions, cls)
    assert len(found) == 1, actions
    return found[0]


def arm_keys(actions: list) -> list[tuple]:
    return [a.key for a in of(actions, ArmTimer)]
