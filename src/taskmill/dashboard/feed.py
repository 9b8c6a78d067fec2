"""What the dashboard's pages get: its controller's figures, fetched on demand, and the views.

    HTTP handler (server.py) --> ControllerFeed.snapshot/statistics/task --> a TaskClient
                             <-- dicts, made JSON by `to_json`, a task cut by `task_view`

`ControllerFeed` holds the one client the dashboard talks to its controller through: it
connects at the first request, fetches statistics and activity at most once every
SNAPSHOT_TTL seconds however many pages ask, keeps the recent attempts (numbered, so that a
page asks only for those above `since`), and closes IDLE_CLOSE seconds after the last request.
`parse_taskid`/`parse_since` read a request's numbers (BadQuery: 400); `task_view` is what
/api/task/<taskid> shows (NotFound: 404). Nothing here speaks HTTP.

The page asks for `engines=columns`: `engine_columns` then sends the engine list as one list of
column names and a list of values per engine (heartbeat ages to the millisecond): at 1,000 light
engines 105 kB instead of 255 kB (benchmarks/dashboard_cost.md), quicker to encode and parse;
the statistics themselves, and the default answer, keep their fields.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..stats import ATTEMPT_RING

SNAPSHOT_TTL = 0.5  # seconds a snapshot of the controller serves every page that asks
IDLE_CLOSE = 15.0  # seconds after the last request until the dashboard's client disconnects
OUTPUT_CHARS = 100_000  # a task's stdout/stderr/traceback is cut to this many characters
ENGINE_FORMS = ("rows", "columns")  # ?engines=: one object per engine, or columns (the page's)


class BadQuery(ValueError):
    """A request whose path or query makes no sense: answered 400 with the message."""


class NotFound(LookupError):
    """Answered 404 with the message."""


class ControllerFeed:
    """The dashboard's view of its controller, fetched on demand through one client.

    `connect` makes the client (a TaskClient, or a stand-in in tests); `clock` gives monotonic
    seconds. Thread-safe: every call to the controller happens under one lock.
    """

    def __init__(self, connect: Callable[[], Any], *, ttl: float = SNAPSHOT_TTL,
                 idle_close: float = IDLE_CLOSE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._connect = connect
        self.ttl = ttl
        self.idle_close = idle_close
        self._clock = clock
        self._lock = threading.Lock()
        self._client: Any = None
        self._last_request = -math.inf
        self._fetched_at = -math.inf
        self._stats: dict[str, Any] | None = None
        self._activity: dict[str, Any] = {}
        self._attempts: deque[dict[str, Any]] = deque(maxlen=ATTEMPT_RING)
        self._seq = 0
        self._started: float | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _client_now(self) -> Any:
        self._last_request = self._clock()
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _refresh(self, client: Any) -> None:
        stats = client.statistics()
        activity = client.activity(self._seq)
        if self._started is not None and activity["started"] != self._started:
            # A new controller on the same connection file: its attempts are numbered anew.
            self._attempts.clear()
            self._seq = 0
            activity = client.activity(0)
        self._started = activity["started"]
        self._attempts.extend(activity.pop("attempts"))
        self._seq = activity["seq"]
        self._stats, self._activity = stats, activity
        self._fetched_at = self._clock()

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        """Statistics and recent activity, with the attempts numbered above `since`."""
        with self._lock:
            client = self._client_now()
            if self._clock() - self._fetched_at >= self.ttl:
                self._refresh(client)
            return {**self._activity, "stats": self._stats,
                    "attempts": [a for a in self._attempts if a["seq"] > since]}

    def statistics(self) -> dict[str, Any]:
        """Fresh statistics (for /metrics, which a scraper reads seldom)."""
        with self._lock:
            return self._client_now().statistics()

    def task(self, taskid: int) -> dict[str, Any]:
        with self._lock:
            return self._client_now().task_info(taskid)

    def seconds_until_idle(self) -> float | None:
        """How long until the client should close; None while there is none."""
        if self._client is None:
            return None
        return max(0.0, self._last_request + self.idle_close - self._clock())

    def close_if_idle(self) -> None:
        with self._lock:
            if self._client is not None and self._clock() - self._last_request >= self.idle_close:
                self._close()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        client, self._client = self._client, None
        self._fetched_at = -math.inf
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
