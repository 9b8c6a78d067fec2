"""engine/channels.py: when an engine decides its connections have gone deaf (pure: no
sockets, the time is given)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskmill.defaults import SILENT_MIN, silent_after
from taskmill.engine.channels import BACKOFF_MAX, ChannelWatch


def test_silent_after_follows_dead_after_with_a_floor():
    assert silent_after(3.0) == 9.0
    assert silent_after(0.1) == SILENT_MIN


def test_answered_heartbeats_never_reconnect():
    w = ChannelWatch(3.0, now=0.0)
    for t in range(1, 100):
        w.heard(float(t))
        assert w.due(float(t) + 0.5) is None


def test_silence_past_the_bound_reconnects_then_waits_for_the_new_connections():
    w = ChannelWatch(3.0, now=0.0)
    assert w.due(3.0) is None
    assert "no answer from the controller for 3.1s" in w.due(3.1)
    assert w.due(3.2) is None  # the new connections get their own time
    assert w.due(6.0) is None
    assert w.due(6.2) is not None  # still silent: again, after backoff (3 s) and silence


def test_task_messages_that_never_arrive_reconnect():
    w = ChannelWatch(3.0, now=0.0)
    w.heard(1.0)
    w.task_numbers(1.0, sent=5, seen=4)  # behind
    w.heard(2.0)
    w.task_numbers(2.0, sent=5, seen=5)  # caught up: forgotten
    w.heard(3.5)
    w.task_numbers(3.5, sent=6, seen=5)
    for t in (4.0, 5.0, 6.0):
        w.heard(t)
        w.task_numbers(t, sent=6, seen=5)
        assert w.due(t) is None
    w.heard(6.6)
    w.task_numbers(6.6, sent=6, seen=5)
    assert "never arrived" in w.due(6.6)


def test_an_alarm_reconnects_at_once_but_not_twice_within_the_backoff():
    w = ChannelWatch(3.0, now=0.0)
    w.alarm("results [7] were lost")
    assert w.due(0.1) == "results [7] were lost"
    w.heard(0.2)
    w.alarm("declared dead while it ran")
    assert w.due(1.0) is None  # within the backoff: kept ...
    assert w.due(3.2) == "declared dead while it ran"  # ... and acted on after it


def test_a_broken_connection_reconnects_at_once_then_at_most_once_per_spacing():
    """A reset connection (the socket's monitor) cannot wait out the silence's backoff: the
    controller would declare the engine dead after 3 heartbeats."""
    w = ChannelWatch(3.0, now=0.0)
    w.broke(0.5)
    assert w.due(0.1) == "a connection to the controller broke"
    w.heard(0.2)
    w.broke(0.5)  # (another reset, within the silence's backoff of 3 s)
    assert w.due(0.3) is None  # at most once per spacing ...
    assert w.due(0.6) == "a connection to the controller broke"  # ... not after the backoff
    w.heard(0.7)  # (the new ones are answered)
    assert w.due(0.8) is None and w.due(3.5) is None
    w.broke(0.5)
    assert w.due(3.6) == "a connection to the controller broke"


@given(st.lists(st.floats(min_value=0.01, max_value=50.0), min_size=1, max_size=60))
def test_reconnections_back_off_to_at_most_one_per_backoff_max(gaps):
    """Whatever the silence, reconnections are at least `silent` apart, growing to
    BACKOFF_MAX; one answer puts the backoff back to `silent`."""
    w = ChannelWatch(3.0, now=0.0)
    t, last = 0.0, None
    for gap in gaps:
        t += gap
        if w.due(t) is not None:
            if last is not None:
                assert t - last >= 3.0
            last = t
    assert w.backoff <= BACKOFF_MAX
    w.heard(t)
    assert w.backoff == 3.0


def test_a_task_message_slower_than_the_bound_gets_longer_each_time_until_it_arrives():
    """A task message that takes longer than `silent` to arrive (megabytes over a slow link;
    the heartbeat answers, small, keep arriving) is on its way, not lost: connecting anew
    starts it over. Each reconnection for it doubles the wait (before, a 3 MB task over a
    1 Mbit/s link was sent again every 11 s for ever, the engine reconnecting each time), and
    once a message of the current connections has arrived the wait is `silent` again."""
    w = ChannelWatch(3.0, now=0.0)
    t, reconnects = 0.0, []
    while t < 60.0:  # the message would take 20 s; it never arrives in this loop
        t += 0.5
        w.heard(t)
        w.task_numbers(t, sent=1, seen=0)
        if w.due(t) is not None:
            reconnects.append(t)
    assert len(reconnects) >= 2
    gaps = [b - a for a, b in zip(reconnects, reconnects[1:], strict=False)]
    assert all(b > a for a, b in zip(gaps, gaps[1:], strict=False)) and gaps[-1] > 20.0
    # After the move the controller has sent nothing new yet (0, 0): no reason to trust it.
    w.task_numbers(t, sent=0, seen=0)
    w.task_numbers(t + 0.5, sent=1, seen=0)
    for dt in (5.0, 10.0, 20.0):
        w.heard(t + dt)
        assert w.due(t + dt) is None  # the wait is still the doubled one
    w.heard(t + 21.0)
    w.task_numbers(t + 21.0, sent=1, seen=1)  # it arrived: the connections carry messages
    w.task_numbers(t + 22.0, sent=2, seen=1)
    w.heard(t + 24.9)
    assert w.due(t + 24.9) is None
    w.heard(t + 25.1)
    assert "never arrived" in w.due(t + 25.1)  # `silent` (3 s) again


@given(st.lists(st.tuples(st.floats(min_value=0.01, max_value=100.0), st.booleans()),
                min_size=1, max_size=80))
def test_the_wait_for_task_messages_stays_within_its_bounds(steps):
    from taskmill.engine.channels import BEHIND_MAX

    w = ChannelWatch(3.0, now=0.0)
    t = 0.0
    for gap, arrived in steps:
        t += gap
        w.heard(t)
        w.task_numbers(t, sent=2, seen=2 if arrived else 1)
        w.due(t)
        assert 3.0 <= w.silent * w.behind_factor <= BEHIND_MAX
