"""The web dashboard: a small HTTP server in a thread of the controller process.

How a page gets its figures:

    browser --GET /api/snapshot?since=N--> [HTTP server thread] --> ControllerFeed.latest
            <-- the latest snapshot, at once, with its `age` (seconds)
    [feed thread] --stats, activity{since}, every SNAPSHOT_TTL s--> controller
                                               (a TaskClient on the connection file)

The dashboard talks to its controller as an ordinary client, so it shares no state with the
controller loop and cannot stall it: the controller answers it between other requests; nor can
the controller stall a page, whose poll gets what the feed thread fetched last (a busy or
stopped controller makes the figures old, and the page says how old, never the poll slow). It
polls only while someone is looking: its client connects at the first request, the feed
thread fetches every SNAPSHOT_TTL seconds however many pages ask, and both stop IDLE_CLOSE
seconds after the last request. An idle dashboard sends the controller nothing and wakes up for
nothing.

Paths: `/` (static/dashboard.html with its .js and .css: package data, no CDN, no build step),
`/api/snapshot?since=N` (`&engines=columns`: the engine list as columns, as the page asks),
`/api/task/<taskid>`, `/metrics` (Prometheus text). GET only.

Access: every request needs the token, HMAC-SHA256(connection key, "taskmill-dashboard"), given
as `?token=` (the page then keeps it in a cookie), as that cookie, or as
`Authorization: Bearer <token>`: without it the answer is 401, with a wrong one 403. Knowing the
token does not reveal the key. Only a dashboard bound to loopback may be opened to every user of
this machine (`--dashboard-open`); an open one still checks the Host header, so that a web site
cannot read it through DNS rebinding.

It must never break its controller: a port in use falls back to a free one, and a dashboard that
cannot start is logged and left out.

What lives where: server.py (the HTTP server, its thread, access checks, start and forget),
feed.py (`ControllerFeed` and the JSON views of what it fetches).
"""

from __future__ import annotations

from .feed import (
    ENGINE_FORMS,
    FIRST_SNAPSHOT_WAIT,
    IDLE_CLOSE,
    OUTPUT_CHARS,
    SNAPSHOT_TTL,
    BadQuery,
    ControllerFeed,
    NotFound,
    engine_columns,
    parse_engines,
    parse_since,
    parse_taskid,
    task_view,
    to_json,
    with_engine_columns,
)
from .server import (
    CONNECT_TIMEOUT,
    SECURITY_HEADERS,
    STATIC_FILES,
    TOKEN_CONTEXT,
    Dashboard,
    DashboardHandler,
    DashboardHTTPServer,
    dashboard_link,
    dashboard_token,
    forget_dashboard,
    start_dashboard,
)

__all__ = [
    "CONNECT_TIMEOUT", "ENGINE_FORMS", "FIRST_SNAPSHOT_WAIT", "IDLE_CLOSE", "OUTPUT_CHARS", "SECURITY_HEADERS", "SNAPSHOT_TTL",
    "STATIC_FILES", "TOKEN_CONTEXT", "BadQuery", "ControllerFeed", "Dashboard",
    "DashboardHTTPServer", "DashboardHandler", "NotFound", "dashboard_link", "dashboard_token",
    "engine_columns", "forget_dashboard", "parse_engines", "parse_since", "parse_taskid",
    "start_dashboard", "task_view", "to_json", "with_engine_columns",
]
