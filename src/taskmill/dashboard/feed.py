"""What the dashboard's pages get: its controller's figures, kept fresh in the background, and
the views.

    feed thread --every SNAPSHOT_TTL while pages ask--> a TaskClient --> statistics, activity
                --> the latest snapshot (held here)
    HTTP handler (server.py) --> ControllerFeed.latest --> that snapshot at once, with its age
                             --> ControllerFeed.statistics/task --> the client (on demand)
                             <-- dicts, made JSON by `to_json`, a task cut by `task_view`

`ControllerFeed` holds the one client the dashboard talks to its controller through. A page's
poll (`latest`) never waits on the controller: it gets the snapshot the feed thread fetched
last, with its `age` in seconds (at most about SNAPSHOT_TTL while the controller answers; it
grows while it does not, and `error` then says why), so a busy or stopped controller makes the
page's figures old, never its update slow. Only the first poll, before any snapshot, waits, for
at most FIRST_SNAPSHOT_WAIT (then TimeoutError: 503). The feed thread starts at the first poll,
fetches statistics and activity every SNAPSHOT_TTL seconds while pages ask, keeps the recent
attempts (numbered, so that a page asks only for those above `since`), and pauses when nobody
has asked for IDLE_CLOSE seconds, when the client is closed too (and the snapshot forgotten).
`snapshot` is the same fetch done in the caller's thread (at most once every `ttl`), for
benchmarks and tests. `parse_taskid`/`parse_since` read a request's numbers (BadQuery: 400);
`task_view` is what /api/task/<taskid> shows (NotFound: 404). Nothing here speaks HTTP.

The page asks for `engines=columns`: `engine_columns` then sends the engine list as one list of
column names and a list of values per engine (heartbeat ages to the millisecond): at 1,000 light
engines 105 kB instead of 255 kB (benchmarks/dashboard_cost.md), quicker to encode and parse;
the statistics themselves, and the default answer, keep their fields.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..stats import ATTEMPT_RING

log = logging.getLogger("taskmill.dashboard")

SNAPSHOT_TTL = 0.5  # seconds between the feed thread's fetches (a snapshot's age, at most)
FIRST_SNAPSHOT_WAIT = 10.0  # seconds the first poll waits for the first snapshot at most
IDLE_CLOSE = 15.0  # seconds after the last request until the dashboard's client disconnects
OUTPUT_CHARS = 100_000  # a task's stdout/stderr/traceback is cut to this many characters
ENGINE_FORMS = ("rows", "columns")  # ?engines=: one object per engine, or columns (the page's)


class BadQuery(ValueError):
    """A request whose path or query makes no sense: answered 400 with the message."""


class NotFound(LookupError):
    """Answered 404 with the message."""


class ControllerFeed:
    """The dashboard's view of its controller, through one client (see the module docstring).

    `connect` makes the client (a TaskClient, or a stand-in in tests); `clock` gives monotonic
    seconds. Thread-safe: every call to the controller happens under one lock; the snapshot
    held is read and replaced under another, which no call to the controller holds.
    """

    def __init__(self, connect: Callable[[], Any], *, ttl: float = SNAPSHOT_TTL,
                 idle_close: float = IDLE_CLOSE, first_wait: float = FIRST_SNAPSHOT_WAIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._connect = connect
        self.ttl = ttl
        self.idle_close = idle_close
        self.first_wait = first_wait
        self._clock = clock
        self._lock = threading.Lock()  # the client: one call at a time
        self._held = threading.Condition()  # the snapshot below; wakes the feed thread
        self._client: Any = None
        self._last_request = -math.inf
        self._fetched_at = -math.inf  # when the snapshot held was fetched (-inf: none held)
        self._stats: dict[str, Any] | None = None
        self._activity: dict[str, Any] = {}
        self._attempts: deque[dict[str, Any]] = deque(maxlen=ATTEMPT_RING)
        self._seq = 0
        self._started: float | None = None
        self._error: str | None = None  # why the fetches since the snapshot held failed
        self._failures = 0
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _client_now(self) -> Any:
        self._last_request = self._clock()
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _refresh(self, client: Any) -> None:
        """(Under the client lock) Fetch, then replace the snapshot held."""
        stats = client.statistics()
        activity = client.activity(self._seq)
        restarted = self._started is not None and activity["started"] != self._started
        if restarted:  # a new controller on the same connection file: attempts numbered anew
            activity = client.activity(0)
        with self._held:
            if restarted:
                self._attempts.clear()
            self._started = activity["started"]
            self._attempts.extend(activity.pop("attempts"))
            self._seq = activity["seq"]
            self._stats, self._activity = stats, activity
            self._fetched_at = self._clock()
            self._error = None
            self._held.notify_all()

    def _view(self, since: int) -> dict[str, Any]:
        """(Under the snapshot lock) The snapshot held, attempts above `since`, its age."""
        return {**self._activity, "stats": self._stats,
                "attempts": [a for a in self._attempts if a["seq"] > since],
                "age": max(0.0, self._clock() - self._fetched_at), "error": self._error}

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        """Statistics and recent activity, with the attempts numbered above `since`, fetched
        in this thread if the snapshot held is `ttl` old."""
        with self._lock:
            client = self._client_now()
            if self._clock() - self._fetched_at >= self.ttl:
                self._refresh(client)
            with self._held:
                return self._view(since)

    def latest(self, since: int = 0) -> dict[str, Any]:
        """The snapshot the feed thread fetched last, at once (`age`: seconds since; `error`:
        why later fetches failed, or None); the first waits up to `first_wait` for one and then
        raises TimeoutError naming why. Starts the feed thread, or wakes it."""
        with self._held:
            self._last_request = self._clock()
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="taskmill-dashboard-feed")
                self._thread.start()
            self._held.notify_all()
            failures = self._failures
            deadline = time.monotonic() + self.first_wait
            while self._fetched_at == -math.inf:
                if self._failures != failures:
                    raise TimeoutError(self._error)
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped:
                    raise TimeoutError(f"no answer to the dashboard within "
                                       f"{self.first_wait:g} s")
                self._held.wait(left)
            return self._view(since)

    def _wanted(self) -> bool:
        return not self._stopped and self._clock() - self._last_request < self.idle_close

    def _run(self) -> None:
        """(The feed thread) Fetch every `ttl` while pages ask; pause while nobody does."""
        while True:
            with self._held:
                while not self._wanted():
                    if self._stopped:
                        return
                    self._held.wait(self.idle_close)  # (woken by the next poll)
            began = time.monotonic()
            self._fetch()
            with self._held:
                self._held.wait_for(lambda: self._stopped,
                                    max(0.0, began + self.ttl - time.monotonic()))

    def _fetch(self) -> None:
        with self._lock:
            if not self._wanted():
                return
            try:
                if self._client is None:
                    self._client = self._connect()
                self._refresh(self._client)
            except Exception as e:  # noqa: BLE001 - kept for the page, which shows it
                reason = f"{type(e).__name__}: {e}"
                with self._held:
                    if self._error != reason:
                        log.info("the dashboard's fetch from its controller failed: %s", reason)
                    self._error = reason
                    self._failures += 1
                    self._held.notify_all()

    def statistics(self) -> dict[str, Any]:
        """Fresh statistics (for /metrics, which a scraper reads seldom)."""
        with self._lock:
            return self._client_now().statistics()

    def task(self, taskid: int) -> dict[str, Any]:
        with self._lock:
            return self._client_now().task_info(taskid)

    def seconds_until_idle(self) -> float | None:
        """How long until the client should close; None while there is none and nobody has
        asked lately (a poll counts before the feed thread has made the client)."""
        left = self._last_request + self.idle_close - self._clock()
        if self._client is None and left <= 0:
            return None
        return max(0.0, left)

    def close_if_idle(self) -> None:
        """Close the client if nobody has asked for `idle_close` seconds. Never waits: the
        server's loop calls it, and a client in use (the feed thread's fetch, which waits up to
        the client's timeout on a stopped controller) is not idle. (Once it waited for that
        fetch, and then for the next ones, which took the lock first: meanwhile no poll was
        served, so the client was closed as idle and the snapshot forgotten: 503.)"""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._client is not None and self._clock() - self._last_request >= self.idle_close:
                self._close()
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the feed thread (for good) and close the client."""
        with self._held:
            self._stopped = True
            self._held.notify_all()
        with self._lock:
            self._close()

    def _close(self) -> None:
        client, self._client = self._client, None
        with self._held:
            self._fetched_at = -math.inf  # (a poll after a pause waits for a fresh one)
            self._error = None
        if client is not None:
            client.close()


def _finite(obj: Any) -> Any:
    """`obj` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    return repr(obj)


def to_json(obj: Any) -> bytes:
    try:
        text = json.dumps(obj, default=_json_default, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(obj), default=_json_default, allow_nan=False)
    return text.encode()


def _cut(text: Any) -> Any:
    if isinstance(text, str) and len(text) > OUTPUT_CHARS:
        return text[:OUTPUT_CHARS] + f"\n… ({len(text) - OUTPUT_CHARS} more characters)"
    return text


def task_view(info: dict[str, Any]) -> dict[str, Any]:
    """What /api/task/<taskid> shows of one task: long texts cut, unknown ids a NotFound."""
    if info.get("state") == "unknown":
        raise NotFound(f"no task with id {info.get('tid')}: it is unknown, or its result was "
                       "cleared")
    view = {k: _cut(v) for k, v in info.items()}
    error = view.get("error")
    if isinstance(error, dict):
        view["error"] = {k: _cut(v) for k, v in error.items()}
    return view


def parse_taskid(text: str) -> int:
    try:
        tid = int(text, 10)
    except ValueError:
        raise BadQuery(f"a taskid is an int >= 0, not {text[:40]!r}") from None
    if tid < 0:
        raise BadQuery(f"a taskid is an int >= 0, not {tid}")
    return tid


def engine_columns(engines: list[dict[str, Any]]) -> dict[str, Any]:
    """statistics()["engines"] as {"columns": [name, ...], "rows": [[value, ...], ...]}."""
    columns = list(engines[0]) if engines else []
    rows = [[e.get(c) for c in columns] for e in engines]
    if "last_heartbeat_ago" in columns:
        k = columns.index("last_heartbeat_ago")
        for row in rows:
            if isinstance(row[k], float) and math.isfinite(row[k]):
                row[k] = round(row[k], 3)
    return {"columns": columns, "rows": rows}


def with_engine_columns(snap: dict[str, Any]) -> dict[str, Any]:
    """A snapshot whose statistics carry their engine list as `engine_columns`."""
    stats = dict(snap["stats"] or {})
    stats["engines"] = engine_columns(stats.get("engines") or [])
    return {**snap, "stats": stats}


def parse_engines(query: dict[str, list[str]]) -> str:
    text = query.get("engines", ["rows"])[0]
    if text not in ENGINE_FORMS:
        raise BadQuery(f"engines must be one of {', '.join(ENGINE_FORMS)}, not {text[:40]!r}")
    return text


def parse_since(query: dict[str, list[str]]) -> int:
    text = query.get("since", ["0"])[0]
    try:
        since = int(text, 10)
    except ValueError:
        raise BadQuery(f"since must be an int >= 0, not {text[:40]!r}") from None
    if since < 0:
        raise BadQuery(f"since must be an int >= 0, not {since}")
    return since
