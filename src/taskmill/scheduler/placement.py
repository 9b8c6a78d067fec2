"""The scheduling pass: which ready task goes to which free engine, steals, and unmet timers.

`run_pass(book)` runs after every event (or once after a batch, see `RunPass`): it moves
parked tasks whose engine may have come free back to the ready heap, gives the oldest ready
task to the longest-free engine that satisfies it (preferring one it has not failed on),
parks what no free engine satisfies, asks a buffering engine to give back a task when
another engine holds nothing (`Revoke`), and arms or cancels the `unmet` timers. It reads
and changes only the `Book`, and its actions go to `Book.out`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from itertools import chain

from .book import Book, EngineEntry, TaskEntry
from .records import ArmTimer, CancelTimer, Dispatch, Revoke
from .states import PARKED, READY, RUNNING


def run_pass(b: Book) -> None:
    if not b.engines and b.ready:
        park_depends(b)
    if b.parked:
        unpark(b)
    else:
        b.fresh.clear()
    tasks = b.tasks
    while b.free and b.ready:
        tid = heapq.heappop(b.ready)
        t = tasks.get(tid)
        if t is None or t.state is not READY:
            continue
        eid = choose_engine(b, t)
        if eid is None:
            b.move(t, PARKED, "no free engine satisfies it")
            b.parked.add(tid)
        else:
            dispatch(b, t, eid)
    if b.free and b.buffering:
        steal(b)
    check_unmet(b)


def choose_engine(b: Book, t: TaskEntry) -> int | None:
    fallback = None
    full = None
    idle_only = b.waits_for_idle(t)
    for eid in b.free:
        e = b.engines[eid]
        if e.slots is None and len(e.running) >= e.cap:
            full = [*(full or ()), eid]  # its capacity shrank since it was freed
            continue
        if eid in t.skip or (idle_only and e.running):
            continue
        if not b.satisfies(t, e):
            continue
        if eid not in t.avoid:
            fallback = eid
            break
        if fallback is None:
            fallback = eid
    for eid in full or ():
        del b.free[eid]
    return fallback


def dispatch(b: Book, t: TaskEntry, eid: int) -> None:
    e = b.engines[eid]
    t.engine = eid
    t.tries += 1
    t.attempts += 1
    b.move(t, RUNNING, ("dispatched to engine {} (attempt {})", eid, t.attempts))
    e.running[t.tid] = t.attempts
    b.busy_slots += 1
    held = len(e.running)
    if held > 1:
        b.buffering.add(eid)
    elif e.cap > 1:  # (its first)
        b.watch_head(e)
    del b.free[eid]
    if held < e.cap:
        b.free[eid] = None  # still has room: goes to the back of the line
    if b.unmet:
        token = b.unmet.pop(t.tid, None)
        if token is not None:
            b.out.append(CancelTimer(("unmet", t.tid, token)))
    b.out.append(Dispatch(t.tid, eid, t.node, t.attempts, t.tries,
                          tuple(sorted(t.handed_over)) if t.handed_over else ()))


def unpark(b: Book) -> None:
    fresh = [b.engines[e] for e in b.fresh if e in b.free]
    b.fresh.clear()
    if not fresh or not b.parked:
        return
    for tid in sorted(b.parked):
        t = b.tasks[tid]
        idle_only = b.waits_for_idle(t)
        if any(e.eid not in t.skip and not (idle_only and e.running) and b.satisfies(t, e)
               for e in fresh):
            b.parked.discard(tid)
            b.make_ready(t, "an engine that may satisfy it is free")


def unmet_now(b: Book, tid: int) -> bool:
    """Whether parked task `tid` (every engine idle) has no engine that satisfies it: with
    none at all, if it has a depend; else unless it only waits for a skip to end."""
    t = b.tasks[tid]
    if not b.engines:
        return t.nodes[t.node].depend is not None
    return not any(b.satisfies(t, b.engines[eid]) for eid in t.skip)


def park_depends(b: Book) -> None:
    """With no engine at all, a task with a depend is unmet (and its timer runs)."""
    keep = []
    for tid in b.ready:
        t = b.tasks.get(tid)
        if t is None or t.state is not READY:
            continue
        if t.nodes[t.node].depend is not None:
            b.move(t, PARKED, "no engine is registered, and it has a depend")
            b.parked.add(tid)
        else:
            keep.append(tid)
    heapq.heapify(keep)
    b.ready = keep


def steal(b: Book) -> None:
    """Each engine that holds nothing asks for one task buffered behind another's.

    The tasks that may be asked back (buffered, not an engine's first, not asked for before)
    come in one order, the most loaded engine's first and each engine's newest first; each
    idle engine takes the first of them it may run. They are listed only once an idle
    engine that asked for none is found, and only as far as the idle engines need (usually
    one engine's newest task); an engine found to hold none leaves `b.buffering` until a task
    is buffered there again (the only way it gets one). In a flood over 1,000 engines that
    each keep what they buffer (every revoke answered "no": they had started it), listing
    every buffering engine's tasks on each pass took ~17% of the controller's main thread."""
    engines, thieves = b.engines, b.thieves
    hungry = (eid for eid in b.free if eid not in thieves and not engines[eid].running)
    first = next(hungry, None)
    if first is None:
        return
    victims = [engines[eid] for eid in b.buffering]
    victims.sort(key=lambda e: (-len(e.running), e.eid))
    offers = _offers(b, victims)
    passed: list[tuple[EngineEntry, TaskEntry]] = []  # listed, not taken yet (in order)
    listed_all = False
    for eid in chain((first,), hungry):
        thief = engines[eid]
        taken = next((i for i, (_, t) in enumerate(passed)
                      if eid not in t.skip and b.satisfies(t, thief)), None)
        if taken is not None:
            victim, t = passed.pop(taken)
        elif listed_all:
            continue
        else:
            for victim, t in offers:
                if eid not in t.skip and b.satisfies(t, thief):
                    break
                passed.append((victim, t))
            else:
                listed_all = True
                if not passed:
                    return
                continue
        t.steal_tried = True
        thieves[eid] = (victim.eid, t.tid, t.attempts)
        b.note(t, f"engine {eid} is idle: engine {victim.eid} is asked to give it "
                  f"back (attempt {t.attempts})")
        b.out.append(Revoke(victim.eid, t.tid, t.attempts))
        if listed_all and not passed:
            return


def _offers(b: Book, victims: list[EngineEntry]) -> Iterator[tuple[EngineEntry, TaskEntry]]:
    """The tasks `victims` hold that may be asked back, in order; a victim that holds none
    leaves `b.buffering` as it is passed."""
    for victim in victims:
        tasks = stealable(b, victim)
        if not tasks:
            b.buffering.discard(victim.eid)
        for t in tasks:
            yield victim, t


def stealable(b: Book, victim: EngineEntry) -> list[TaskEntry]:
    """The tasks buffered on `victim` (not its first) not asked back yet, newest first."""
    out = []
    held = list(victim.running)
    for tid in reversed(held[1:]):
        t = b.tasks.get(tid)
        if (t is None or t.state is not RUNNING or t.engine != victim.eid or t.steal_tried
                or victim.running[tid] != t.attempts):
            continue
        out.append(t)
    return out


def check_unmet(b: Book) -> None:
    if b.busy_slots == 0:
        for tid in b.parked:
            if tid in b.unmet or not unmet_now(b, tid):
                continue
            b.token += 1
            b.unmet[tid] = b.token
            b.out.append(ArmTimer(("unmet", tid, b.token), b.unmet_timeout))
    elif b.unmet:
        for tid, token in b.unmet.items():
            b.out.append(CancelTimer(("unmet", tid, token)))
        b.unmet.clear()

