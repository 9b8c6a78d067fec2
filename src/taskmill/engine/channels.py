"""When an engine's connections to the controller have gone deaf: the watch that decides to
connect again, on new connections with new routing ids.

Why it is needed: the controller's ROUTER socket never hands a routing id that a connection
still holds to another connection (so that a peer cannot take over another peer's routing
identity). ZeroMQ reconnects an engine's sockets by itself, with the same ids; when such a
reconnection reaches the controller before it has seen the old connection end (a reset lost on
the way, a NAT that forgot the connection and told one side only, a busy controller), ZeroMQ
keeps the new connection open and ignores it for good. The engine then looks connected, but
what it sends on that socket goes nowhere and nothing comes back on it: its heartbeats go
unanswered, its task messages never arrive, its results are lost, or (its heart socket) it is
declared dead while it runs. The fault soak found tasks stuck on such engines for ever.

So the engine watches for the signs and, past `silent_after` seconds (defaults.py), opens new sockets with
new routing ids and registers them under its own uuid: the controller moves the engine, with
its engine id and its tasks, to them (engines.py `register`). The signs:
- no heartbeat answered for `silent_after` (the control socket, or a controller that is down:
  then new connections cost nothing);
- the controller has sent task messages that never arrived here, for `silent_after` (each
  heartbeat answer names the last one it sent: the task socket);
- the controller asked again for a result this engine sent (the result socket), or declared
  this engine dead while it ran (its heart socket): at once;
- a connection of the task or control socket broke (a reset: ZeroMQ's monitor says so, and
  ZeroMQ's own reconnection under the same ids may reach a controller that has not seen the
  old connection end): at once, and again at most once per `spacing` (a heartbeat), however
  the silence backs off: the controller declares an engine dead after 3 heartbeats, long
  before `silent_after` (the fault soak's connection resets did, before).
Reconnections back off (doubling up to BACKOFF_MAX while the silence lasts; an answer resets
it). The wait for task messages that have not arrived doubles too, each time it ran out and
the engine reconnected without a message arriving in between (up to BEHIND_MAX): a message
too large for the link to carry within `silent_after` (megabytes of arguments over a slow
link) is still on its way, not lost, and connecting anew would only start it over, for ever
(the heartbeat answers, small, keep arriving). It goes back to `silent_after` once the engine
has caught up with a message of its current connections. Pure: it is told the time and what
happened, and answers whether to reconnect now.
"""

from __future__ import annotations

BACKOFF_MAX = 30.0  # seconds between reconnections at most while the silence lasts
BEHIND_MAX = 3600.0  # seconds a task message may take to arrive, at most, once it has doubled


class ChannelWatch:
    """Whether an engine's connections have gone deaf (see the module's docstring)."""

    def __init__(self, silent: float, now: float) -> None:
        self.silent = silent
        self.heard_at = now  # the controller's last answer (or the last reconnection)
        self.behind_since: float | None = None  # task messages sent, not yet arrived, since
        self.urgent: str | None = None  # a reason to reconnect at once
        self.backoff = silent
        self.not_before = now  # no reconnection before this
        self.moved_at = float("-inf")  # the last reconnection
        self.behind_factor = 1.0  # `silent` times this: the wait for task messages (docstring)

    def set_silent(self, silent: float) -> None:
        """The controller's dead_after is known (at registration): the bound follows it."""
        self.silent = self.backoff = silent

    def heard(self, now: float) -> None:
        """The controller answered (a heartbeat, a hello, a registration)."""
        self.heard_at = now
        self.backoff = self.silent

    def task_numbers(self, now: float, sent: int, seen: int) -> None:
        """A heartbeat answer: the controller has sent task messages up to `sent`; this
        engine has received up to `seen`."""
        if sent <= seen:
            self.behind_since = None
            if seen > 0:  # (a message of these connections arrived: they carry them)
                self.behind_factor = 1.0
        elif self.behind_since is None:
            self.behind_since = now

    def alarm(self, reason: str) -> None:
        """A sign that needs no waiting (see the module's docstring)."""
        if self.urgent is None:
            self.urgent = reason

    def broke(self, spacing: float) -> None:
        """A connection broke: connect anew at once, or `spacing` after the last time."""
        self.alarm("a connection to the controller broke")
        self.not_before = min(self.not_before, self.moved_at + spacing)

    def due(self, now: float) -> str | None:
        """Why to connect again now, or None. Once it answers, the watch starts over."""
        reason = self.urgent
        if reason is None and now - self.heard_at > self.silent:
            reason = f"no answer from the controller for {now - self.heard_at:.1f}s"
        behind = False
        if (reason is None and self.behind_since is not None
                and now - self.behind_since > self.silent * self.behind_factor):
            reason = (f"task messages the controller sent {now - self.behind_since:.1f}s ago "
                      "never arrived")
            behind = True
        if reason is None or now < self.not_before:
            return None
        if behind:  # (next time, wait longer: it may be a large message on a slow link)
            self.behind_factor = min(2 * self.behind_factor, BEHIND_MAX / self.silent)
        self.urgent = None
        self.behind_since = None
        self.heard_at = self.moved_at = now  # the new connections get their own time
        self.not_before = now + self.backoff
        self.backoff = min(2 * self.backoff, BACKOFF_MAX)
        return reason
