"""Which engine heartbeats the controller answers (controller/engine_tasks.py `heartbeat`), and
the lease that rides on `tasks` messages instead.

An idle engine's heartbeat (it holds nothing, no result waits to be acknowledged, no task message
is missing) is answered only once per `idle_answer_every` (a share of the span after which an
engine that hears nothing connects anew): at 1,000 idle engines each answer is a message in
ZeroMQ's I/O thread. Every other heartbeat is answered, as each answer renews the lease of an
engine with tasks to start. Driven in process: messages straight into the controller's core,
what it sends read from its flush, at the times the test gives."""

from __future__ import annotations

import time

import pytest
from testhelp import core_controller, inject

from taskmill.controller import Now
from taskmill.defaults import dead_after, idle_answer_every, silent_after
from taskmill.protocol import HbAnswer, Tasks, from_controller

NODE = {"exec": {"kind": "map", "fn": 1}, "nframes": 2, "pmac": b"m" * 32}
HEARTBEAT = 1.0
T0 = time.monotonic()


@pytest.fixture
def ctl():
    with core_controller(heartbeat=HEARTBEAT, prefetch=1) as c:
        yield c


def send(ctl, who: int, ident: bytes, header: dict, at: float, frames=()) -> list:
    """A message (from a client: `who` 0; an engine: 1) handled `at` seconds after T0; what the
    turn sends (ident, header)."""
    out = inject(ctl, bool(who), ident, header, frames, Now(T0 + at, time.time()))
    return [(ident, h) for _, ident, h, _ in out if h]


def register(ctl, at: float = 0.0) -> None:
    send(ctl, 1, b"e.t", {"type": "register", "uuid": "e", "ctl_ident": b"e.c",
                          "res_ident": b"e.r", "heart_ident": b"e.h", "hostname": "host",
                          "pid": 4242, "t": 0.0}, at)


def heartbeat(ctl, at: float, held=(), unacked=(), mseq: int = 0) -> HbAnswer | None:
    """The engine's heartbeat at `at` (its own clock reads `at` too): the answer, or None."""
    out = send(ctl, 1, b"e.c", {"type": "hb", "t": at, "held": list(held),
                                "unacked": list(unacked), "mseq": mseq, "gen": 1}, at)
    answers = [from_controller(h) for _, h in out if h.get("type") == "hb"]
    assert len(answers) <= 1
    return answers[0] if answers else None


def test_an_idle_engine_is_answered_once_per_idle_span_and_told_so_in_the_statistics(ctl):
    register(ctl)
    every = idle_answer_every(dead_after(HEARTBEAT))
    # (the engine hears from the controller often enough not to connect anew)
    assert 2 * HEARTBEAT <= every <= silent_after(dead_after(HEARTBEAT)) / 2
    answered = [t for t in range(0, 20) if heartbeat(ctl, float(t)) is not None]
    # the first, then one each `every` seconds: the answers never leave a gap of `every` + one
    # heartbeat, and most heartbeats go unanswered
    assert answered[0] == 0
    assert all(b - a <= every + HEARTBEAT for a, b in zip(answered, answered[1:], strict=False))
    assert all(b - a >= every for a, b in zip(answered, answered[1:], strict=False))
    stats = ctl.core.views.statistics(Now(T0 + 20, time.time()))
    assert stats.heartbeats_unanswered == 20 - len(answered) > 0


def test_an_engine_with_something_to_be_told_is_answered_every_time(ctl):
    register(ctl)
    assert heartbeat(ctl, 0.0) is not None
    out = send(ctl, 0, b"client", {"type": "submit", "req": 1, "watch": True,
                                   "tasks": [{"nodes": [NODE]}]}, 0.5, [b"function", b"args"])
    (task,) = [t for _, h in out if h.get("type") == "tasks" for t in h["tasks"]]
    key = [task["tid"], task["attempt"]]
    # it holds a task: each answer renews its lease
    for t in (1.0, 2.0, 3.0):
        assert heartbeat(ctl, t, held=[key], mseq=1) is not None
    # the task message has not arrived yet (its number is behind): answered (the answer
    # names the last message sent, so that an engine whose task socket went deaf finds out)
    answer = heartbeat(ctl, 4.0, held=[], mseq=0)
    assert answer is not None
    mseq = answer.mseq  # (an empty message went too, to show whether the task's was lost)
    # a result not yet acknowledged: answered, until the acknowledgement has gone
    send(ctl, 1, b"e.r", {"type": "results", "results": [
        {"tid": key[0], "attempt": key[1], "kind": "map", "status": "ok", "n": 1,
         "duration": 0.1, "pmac": b"p" * 32}]}, 4.5, [b"value"])
    answer = heartbeat(ctl, 5.0, unacked=[key], mseq=mseq)
    assert answer is not None and [list(k) for k in answer.ack] == [key]
    acked = heartbeat(ctl, 6.0, mseq=mseq)  # (what the report named is acknowledged again)
    assert acked is not None and [list(k) for k in acked.ack] == [key]
    # and then nothing to tell: not answered until the idle span has passed
    assert heartbeat(ctl, 7.0, mseq=mseq) is None
    assert heartbeat(ctl, 6.0 + idle_answer_every(dead_after(HEARTBEAT)), mseq=mseq) is not None


def test_a_tasks_message_carries_the_time_of_the_engines_latest_heartbeat(ctl):
    register(ctl)
    heartbeat(ctl, 0.0)
    assert heartbeat(ctl, 1.0) is None
    assert heartbeat(ctl, 2.0) is None  # (heard, not answered)
    out = send(ctl, 0, b"client", {"type": "submit", "req": 1, "watch": True,
                                   "tasks": [{"nodes": [NODE]}]}, 2.5, [b"function", b"args"])
    (tasks,) = [from_controller(h) for ident, h in out if h.get("type") == "tasks"]
    assert isinstance(tasks, Tasks) and tasks.t == 2.0


class PausedPoll:
    """A poller whose poll returns `paused` seconds late with nothing read: as a process
    stopped (SIGSTOP) in its poll and resumed, before its ZeroMQ thread has read anything."""

    def __init__(self, paused: float) -> None:
        self.paused = paused

    def poll(self, timeout_ms: int) -> list:
        time.sleep(self.paused)  # (the pause itself: nothing to wait for)
        return []


def test_a_paused_controller_counts_its_engines_silence_from_when_it_runs_again():
    """The loop's poll returns far later than it asked (the process was paused): the engines
    are heard from that moment on, and the heartbeat check due at once declares none dead;
    only once they stay silent for dead_after after the pause are they dead."""
    with core_controller(heartbeat=0.2) as ctl:  # (dead after 0.6 s)
        at = time.monotonic() - T0
        register(ctl, at)
        assert heartbeat(ctl, at) is not None
        ctl.turn(PausedPoll(1.0), 0)  # (the pause: > dead_after; every timer due after it)
        assert [rec.dead for rec in ctl.engines.values()] == [False]
        assert ctl.core.views.statistics(Now(time.monotonic(), time.time())).engines_died == 0
        # silent on after the pause: dead within a few checks past dead_after
        deadline = time.monotonic() + 30
        while ctl.core.views.statistics(Now(time.monotonic(), time.time())).engines_died == 0:
            assert time.monotonic() < deadline, "the silent engine was never declared dead"
            ctl.turn(PausedPoll(0.0), 50)


# -- an abort the engine does not act on (controller/engine_tasks.py `abort_overdue`) -------

def running_task(ctl) -> list:
    """Register the engine and give it a task it reports running: [taskid, attempt]."""
    register(ctl)
    heartbeat(ctl, 0.0)
    out = send(ctl, 0, b"client", {"type": "submit", "req": 1, "watch": True,
                                   "tasks": [{"nodes": [NODE]}]}, 0.5, [b"function", b"args"])
    (task,) = [t for _, h in out if h.get("type") == "tasks" for t in h["tasks"]]
    key = [task["tid"], task["attempt"]]
    send(ctl, 1, b"e.c", {"type": "hb", "t": 1.0, "held": [key], "unacked": [], "mseq": 1,
                          "current": key, "gen": 1}, 1.0)
    return key


def live_until(ctl, start: float, end: float, reports: list | None) -> float | None:
    """Half-second turns from `start` to `end`: due timers fire, the engine's heart echoes
    every ping, and (`reports`: the task it names as running) its I/O thread reports. When
    the engine was declared dead, or None."""
    t = start
    while t <= end:
        now = Now(T0 + t, time.time())
        ctl.core.fire_timers(now)
        ctl.core.flush(now)
        if ctl.engines[0].dead:
            return t
        if ctl.core.engines.pings:
            ctl.core.on_pong(b"e.h", ctl.core.engines.pings[-1], now)
        if reports is not None:
            send(ctl, 1, b"e.c", {"type": "hb", "t": t, "held": [reports], "unacked": [],
                                  "mseq": 1, "current": reports, "gen": 1}, t)
        t += 0.5
    return None


def test_an_engine_whose_reports_stop_after_an_abort_is_declared_dead(ctl):
    """Task code holding the GIL in one C call: the engine's I/O thread cannot run (no report,
    and its own last-resort kill is never armed) while its heart echoes every ping. It was
    taken for alive and busy for good; it is declared dead once KILL_GRACE and two
    heartbeats have passed since the abort."""
    from taskmill.defaults import ABORT_REPORTS_MISSED, KILL_GRACE

    key = running_task(ctl)
    send(ctl, 0, b"client", {"type": "abort", "req": 2, "tid": key[0]}, 2.0)
    overdue = 2.0 + KILL_GRACE + ABORT_REPORTS_MISSED * HEARTBEAT
    died = live_until(ctl, 2.0, overdue + 2 * HEARTBEAT, None)
    assert died is not None and overdue <= died <= overdue + HEARTBEAT, died
    assert "holds the GIL" in ctl.core.engines.death_reasons[0][1]


def test_an_engine_that_reports_after_an_abort_is_left_to_its_own_kill(ctl):
    """Reports keep coming, the aborted task still running (code that swallows interruptions):
    the engine's I/O thread runs, so its own kill ends the process at KILL_GRACE; the
    controller does not declare it dead meanwhile, only once its reports stop."""
    from taskmill.defaults import ABORT_REPORTS_MISSED, KILL_GRACE

    key = running_task(ctl)
    send(ctl, 0, b"client", {"type": "abort", "req": 2, "tid": key[0]}, 2.0)
    overdue = 2.0 + KILL_GRACE + ABORT_REPORTS_MISSED * HEARTBEAT
    assert live_until(ctl, 2.0, overdue + 5 * HEARTBEAT, key) is None
    end = overdue + 5.5 * HEARTBEAT
    died = live_until(ctl, end, end + 4 * HEARTBEAT, None)
    assert died is not None and "holds the GIL" in ctl.core.engines.death_reasons[0][1]


def test_an_abort_overdue_after_the_controllers_own_pause_waits_for_the_engines_reports(ctl):
    """The controller itself paused (SIGSTOP) right after an abort: the engine's reports wait
    unread in its socket, so their silence counts from when it runs again, not from the last
    one read (the GIL rule declared a reporting engine dead at once after SIGCONT)."""
    from taskmill.defaults import ABORT_REPORTS_MISSED, KILL_GRACE

    key = running_task(ctl)
    send(ctl, 0, b"client", {"type": "abort", "req": 2, "tid": key[0]}, 2.0)
    overdue = 2.0 + KILL_GRACE + ABORT_REPORTS_MISSED * HEARTBEAT
    resumed = overdue + 1.0  # (paused from 2.0 on: the timer is due as it runs again)
    ctl.core.stall_end = T0 + resumed
    assert live_until(ctl, resumed, resumed + 1.0, key) is None  # (its reports read again)
    died = live_until(ctl, resumed + 1.5, resumed + 1.5 + 4 * HEARTBEAT, None)
    assert died is not None and "holds the GIL" in ctl.core.engines.death_reasons[0][1]


def test_a_step_of_the_wall_clock_never_turns_an_engine_death_into_a_timeout(ctl):
    """A task with a 20 s timeout ran 3 s when its engine died, while the controller's wall
    clock had stepped an hour forward (an NTP correction, a VM resumed): the controller
    compared wall times and failed it with TaskTimeout ("ran past its timeout ... so the
    engine was ended") for a plain EngineDied. It measures on the monotonic clock now."""
    at = time.monotonic() - T0  # (from now: the controller's timers count from its start)
    register(ctl, at)
    heartbeat(ctl, at)
    node = {**NODE, "timeout": 20.0}
    out = send(ctl, 0, b"client", {"type": "submit", "req": 1, "watch": True,
                                   "tasks": [{"nodes": [node]}]}, at + 0.5, [b"function", b"args"])
    (task,) = [t for _, h in out if h.get("type") == "tasks" for t in h["tasks"]]
    step = 3600.0
    t = at + 1.0
    while not ctl.engines[0].dead:  # (the engine is silent from here: it died)
        assert t < at + 30, "the silent engine was never declared dead"
        now = Now(T0 + t, time.time() + step)
        ctl.core.turn_start = now.mono  # (a turn begins: the loop is not stalled)
        ctl.core.fire_timers(now)
        ctl.core.flush(now)
        t += 0.5
    result = ctl.core.ctx.store.result(task["tid"])
    assert result is not None and result.meta["error"]["type"] == "EngineDied", result.meta
    assert result.meta["duration"] < 60  # (the time it ran, on the monotonic clock)
