"""Defaults and limits named once.

Every default that more than one module (or the command line) uses lives here, with the reason
for its value; modules import the name instead of repeating the number.
"""

from __future__ import annotations

#: seconds a task whose `depend` is unmet everywhere waits before it fails (TaskTimeout)
DEFAULT_UNMET_TIMEOUT = 30.0

#: days a finished result is kept in the store (`--keep-results`): a store that is reopened
#: for weeks does not grow without end
DEFAULT_KEEP_RESULTS = 7.0

#: seconds between heartbeats (engines ping the controller; the controller checks engines)
DEFAULT_HEARTBEAT = 1.0

#: an engine that has not answered for this many heartbeats is declared dead
DEAD_AFTER_HEARTBEATS = 3

#: ... but never sooner than this many seconds (a very short heartbeat would misfire)
DEAD_AFTER_MIN = 0.5

#: an engine that hears nothing from the controller for silent_after(dead_after) seconds opens
#: new connections (engine/channels.py): at least SILENT_MIN seconds, and SILENT_DEAD_AFTERS
#: times the controller's dead_after (a busy controller answers late; connecting again then
#: costs what was in flight, which is sent again)
SILENT_MIN = 5.0
SILENT_DEAD_AFTERS = 3

#: the controller answers the heartbeat of an engine with nothing to be told (it holds no task,
#: no result waits for an acknowledgement, no task message is missing) only this many times per
#: silent_after span: each answer is a message in ZeroMQ's I/O thread, which at 1,000 idle
#: engines costs a few % of a core; an engine's lease rides on its task messages instead
#: (controller/engine_tasks.py `heartbeat`)
IDLE_ANSWERS_PER_SILENCE = 3

#: seconds past an abort (or a task's timeout) before an engine whose task code has not let the
#: interruption through ends its own process (engine/control.py); the controller declares an
#: engine dead that neither ended an aborted task nor sent a report within this and
#: ABORT_REPORTS_MISSED heartbeats (controller/engine_tasks.py `abort_overdue`)
KILL_GRACE = 3.0
ABORT_REPORTS_MISSED = 2

#: engine states (`engines()`, statistics) of an engine that is gone: declared dead, or
#: retired (stopped on purpose once it held nothing); the others (idle, busy, retiring) live
ENGINE_GONE_STATES = frozenset({"dead", "retired"})

#: the engine links (the controller's engine-facing socket, an engine's four sockets) carry no
#: ZeroMQ (ZMTP) heartbeats: at 1,000 engines those cost ~20% of a core in ZeroMQ's I/O thread,
#: and our own heartbeats already find a dead engine (the controller) or a deaf controller (an
#: engine's ChannelWatch). The kernel's TCP keepalive reaps a connection to a vanished host at no
#: userspace cost instead: probes after this many idle seconds ...
ENGINE_LINK_KEEPALIVE_IDLE = 10
#: ... every this many seconds ...
ENGINE_LINK_KEEPALIVE_INTERVAL = 5
#: ... and the connection is closed after this many unanswered
ENGINE_LINK_KEEPALIVE_PROBES = 3
#: milliseconds data sent on an engine link may stay unacknowledged before the kernel closes it
#: (TCP_USER_TIMEOUT, ZeroMQ's TCP_MAXRT): keepalive probes only an idle connection, and one
#: whose peer vanished while something was on its way (a ping, a heartbeat) is not idle
ENGINE_LINK_USER_TIMEOUT_MS = 1000 * (ENGINE_LINK_KEEPALIVE_IDLE
                                      + ENGINE_LINK_KEEPALIVE_INTERVAL
                                      * ENGINE_LINK_KEEPALIVE_PROBES)

#: seconds a client waits for a silent controller before its calls raise ControllerUnreachable
#: (the client's `reconnect_timeout`): a controller restart or a network cut shorter than this
#: is ridden out
RECONNECT_TIMEOUT = 120.0

#: seconds between a client's pings to the controller (its I/O thread; fewer when its
#: reconnect_timeout is short: client/connection.py)
CLIENT_PING_INTERVAL = 1.0

#: seconds of silence after which the controller forgets a client (`--forget-clients-after`):
#: drops its watches, its waiting requests and the results queued for it (controller/clients.py).
#: A live client pings every second, so only a dead one (kill -9, its machine gone) or a stopped
#: or cut-off one is this silent. Longer than RECONNECT_TIMEOUT, so that a cut the client rides
#: out (its calls go on) never costs it its futures; short enough that what a dead client held
#: goes within minutes.
FORGET_CLIENTS_AFTER = 2.5 * RECONNECT_TIMEOUT

#: a --forget-clients-after below this many seconds (a few pings) is warned of at the start: a
#: live client whose ping is late (a busy machine, a process paused a moment) would be forgotten
FORGET_CLIENTS_AFTER_WARN = 5 * CLIENT_PING_INTERVAL

#: bytes one message may hold; larger ones are refused (`--max-message-size`)
MAX_MESSAGE_SIZE = 512 * 1024 * 1024

#: results streamed to one client (a watch's `done` messages) that may be sent and not yet
#: acknowledged; as many again wait with their payload, the rest in the store, so a client
#: that stops reading costs the controller two windows (controller/credit.py); by count, ...
RESULTS_WINDOW = 1000

#: ... and by bytes (payload frames plus 512 bytes of metadata a result; a larger one goes alone)
RESULTS_WINDOW_BYTES = 16 * 1024 * 1024

#: MiB the controller stays under (`--memory-budget`): it sets the queue window, the tasks it
#: holds in memory at most (queued or running); the other queued tasks wait in the store
#: (controller/backlog.py). A `:memory:` store has no window: the budget needs a store on disk.
DEFAULT_MEMORY_BUDGET = 256
#: bytes a task held in the controller costs, at most (~2.6 kB a small task with its watch,
#: measured with tracemalloc: benchmarks/memory_flat.md); the window is sized with this ...
HELD_TASK_BYTES = 4096
#: ... to take this share of the budget (the rest: the process itself, the results in flight
#: to clients, the store's cache) ...
HELD_SHARE = 0.5
#: ... and is never smaller than this (a smaller one would starve a few hundred engines)
MIN_QUEUE_WINDOW = 1000
#: the share of the budget the payload bytes of the tasks held in memory may take (their
#: argument frames, kept until each task is done): past it, new tasks wait in the store too,
#: however few are held (but one task is always held, however large: queue_window_bytes)
HELD_BYTES_SHARE = 0.25
#: the queue window itself, set in the controller's environment: for tests, which need a
#: small one (it overrides --memory-budget)
QUEUE_WINDOW_ENV = "TASKMILL_QUEUE_WINDOW"

#: a tuple, list or dict with at most this many plain items is encoded with msgpack rather than pickled
PLAIN_CONTAINER_MAX = 64

#: frames of at least this many bytes travel out of band (not copied into the pickle stream)
OUT_OF_BAND_MIN = 64 * 1024

#: sets that remember what was already logged once (so a flood logs once) are reset at this size
LOGGED_ONCE_MAX = 10_000

#: addresses that name this machine
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def queue_window(budget_mib: float) -> int:
    """The tasks the controller holds in memory at most under a budget of `budget_mib` MiB."""
    return max(MIN_QUEUE_WINDOW, int(budget_mib * 1024 * 1024 * HELD_SHARE) // HELD_TASK_BYTES)


def queue_window_bytes(budget_mib: float) -> int:
    """The payload bytes of the tasks the controller holds in memory at most (past them new
    tasks wait in the store, as past the queue window) under a budget of `budget_mib` MiB."""
    return int(budget_mib * 1024 * 1024 * HELD_BYTES_SHARE)


def dead_after(heartbeat: float) -> float:
    """Seconds of silence after which an engine with this heartbeat is declared dead."""
    return max(DEAD_AFTER_HEARTBEATS * heartbeat, DEAD_AFTER_MIN)


def silent_after(dead_after: float) -> float:
    """How long the controller may stay unheard before an engine connects again."""
    return max(SILENT_MIN, SILENT_DEAD_AFTERS * dead_after)


def idle_answer_every(dead_after: float) -> float:
    """Seconds between the controller's answers to an idle engine's heartbeats, at least."""
    return silent_after(dead_after) / IDLE_ANSWERS_PER_SILENCE


def is_loopback(ip: str) -> bool:
    """True when `ip` names this machine."""
    return ip in LOOPBACK_NAMES or ip.startswith("127.")
