"""The web dashboard: a small HTTP server in a thread of the controller process.

How a page gets its figures:

    browser --GET /api/snapshot?since=N--> [HTTP server thread] --> ControllerFeed
    ControllerFeed --stats, activity{since}--> controller   (a TaskClient on the connection file)

The dashboard talks to its controller as an ordinary client, so it shares no state with the
controller loop and cannot stall it: the controller answers it between other requests. It polls
only while someone is looking: its client connects at the first request, fetches at most once
every SNAPSHOT_TTL seconds however many pages ask, and is closed IDLE_CLOSE seconds after the last
request. An idle dashboard sends the controller nothing and wakes up for nothing.

Paths: `/` (static/dashboard.html with its .js and .css: package data, no CDN, no build step),
`/api/snapshot?since=N`, `/api/task/<taskid>`, `/metrics` (Prometheus text). GET only.

Access: every request needs the token, HMAC-SHA256(connection key, "taskmill-dashboard"), given
as `?token=` (the page then keeps it in a cookie), as that cookie, or as
`Authorization: Bearer <token>`: without it the answer is 401, with a wrong one 403. Knowing the
token does not reveal the key. Only a dashboard bound to loopback may be opened to every user of
this machine (`--dashboard-open`); an open one still checks the Host header, so that a web site
cannot read it through DNS rebinding.

It must never break its controller: a port in use falls back to a free one, and a dashboard that
cannot start is logged and left out.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import math
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .connection import ConnectionInfo, write_connection_file
from .defaults import is_loopback
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import render_metrics
from .stats import ATTEMPT_RING

log = logging.getLogger("taskmill.dashboard")

TOKEN_CONTEXT = b"taskmill-dashboard"
SNAPSHOT_TTL = 0.5  # seconds a snapshot of the controller serves every page that asks
IDLE_CLOSE = 15.0  # seconds after the last request until the dashboard's client disconnects
CONNECT_TIMEOUT = 5.0
OUTPUT_CHARS = 100_000  # a task's stdout/stderr/traceback is cut to this many characters
STATIC_FILES = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; "
                                "frame-ancestors 'none'; form-action 'self'"),
}


def dashboard_token(key: bytes) -> str:
    """The dashboard's access token, derived from the connection key."""
    return hmac.new(key, TOKEN_CONTEXT, hashlib.sha256).hexdigest()


def dashboard_link(info: ConnectionInfo) -> str | None:
    """The URL that opens this controller's dashboard (with its token), or None if it has none."""
    url = info.extra.get("dashboard_url")
    if not isinstance(url, str):
        return None
    if info.extra.get("dashboard_open"):
        return url
    return f"{url}?token={dashboard_token(info.key_bytes)}"


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


def parse_since(query: dict[str, list[str]]) -> int:
    text = query.get("since", ["0"])[0]
    try:
        since = int(text, 10)
    except ValueError:
        raise BadQuery(f"since must be an int >= 0, not {text[:40]!r}") from None
    if since < 0:
        raise BadQuery(f"since must be an int >= 0, not {since}")
    return since


def _static(name: str) -> bytes:
    return (resources.files("taskmill") / "static" / name).read_bytes()


class DashboardHandler(BaseHTTPRequestHandler):
    """One HTTP request to the dashboard."""

    server: DashboardHTTPServer
    server_version = "taskmill-dashboard"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if not self._authorised(url.path, query):
                return
            self._route(url.path, query)
        except BadQuery as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except NotFound as e:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(e)})
        except TimeoutError as e:  # ControllerUnreachable
            self._json(HTTPStatus.SERVICE_UNAVAILABLE,
                       {"error": f"the controller is not answering: {e}"})
        except Exception as e:  # noqa: BLE001 - answer, and log the details here
            log.exception("dashboard request %s failed", url.path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": f"the dashboard failed on this request: {type(e).__name__}"})

    # -- access ----------------------------------------------------------------------------
    def _authorised(self, path: str, query: dict[str, list[str]]) -> bool:
        srv = self.server
        if srv.open:
            host = self.headers.get("Host", "")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
            if not is_loopback(name):
                self._text(HTTPStatus.FORBIDDEN, f"this open dashboard answers only to a "
                           f"loopback host name, not {host!r}\n")
                return False
            return True
        given = query.get("token", [None])[0]
        if given is not None:
            if not srv.token_matches(given):
                self._text(HTTPStatus.FORBIDDEN, "wrong dashboard token\n")
                return False
            if path == "/":  # keep the token in a cookie, and out of the address bar
                self.send_response(HTTPStatus.SEE_OTHER)
                self.send_header("Location", "/")
                self.send_header("Set-Cookie", f"{srv.cookie_name}={given}; Path=/; HttpOnly; "
                                               "SameSite=Strict")
                self._finish_headers(0)
                return False
            return True
        candidate = self._cookie_token() or self._bearer_token()
        if candidate is None:
            self.send_response(HTTPStatus.UNAUTHORIZED)
            body = (b"this taskmill dashboard needs its token: open the link that "
                    b"`taskmill status` prints (it ends in ?token=...), or send "
                    b"'Authorization: Bearer <token>'\n")
            self.send_header("WWW-Authenticate", 'Bearer realm="taskmill dashboard"')
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self._finish_headers(len(body))
            self.wfile.write(body)
            return False
        if not srv.token_matches(candidate):
            self._text(HTTPStatus.FORBIDDEN, "wrong dashboard token\n")
            return False
        return True

    def _cookie_token(self) -> str | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        try:
            morsel = SimpleCookie(raw).get(self.server.cookie_name)
        except CookieError:
            return None
        return morsel.value if morsel is not None else None

    def _bearer_token(self) -> str | None:
        raw = self.headers.get("Authorization", "")
        scheme, _, value = raw.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    # -- pages -----------------------------------------------------------------------------
    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        feed = self.server.feed
        if path in STATIC_FILES:
            name, kind = STATIC_FILES[path]
            self._send(HTTPStatus.OK, _static(name), kind)
        elif path == "/api/snapshot":
            since = parse_since(query)
            snap = feed.snapshot(since)
            snap["now"] = time.time()
            self._send(HTTPStatus.OK, to_json(snap), "application/json")
        elif path.startswith("/api/task/"):
            tid = parse_taskid(path[len("/api/task/"):])
            self._send(HTTPStatus.OK, to_json(task_view(feed.task(tid))), "application/json")
        elif path == "/metrics":
            text = render_metrics(feed.statistics())
            self._send(HTTPStatus.OK, text.encode(), METRICS_CONTENT_TYPE)
        else:
            raise NotFound(f"no page {path!r} here: try /, /metrics, /api/snapshot or "
                           "/api/task/<taskid>")

    # -- answers ---------------------------------------------------------------------------
    def _finish_headers(self, length: int) -> None:
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self._finish_headers(len(body))
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        self._send(status, to_json(obj), "application/json")

    def _text(self, status: HTTPStatus, text: str) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8")


class DashboardHTTPServer(ThreadingHTTPServer):
    """The listening socket; each request is handled in a thread of its own."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], feed: ControllerFeed, *, token: str,
                 open_access: bool) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, DashboardHandler)
        self.timeout = 0  # handle_request() is called only once the socket is readable
        self.feed = feed
        self.open = open_access
        self._token = token
        self.cookie_name = f"taskmill_dashboard_{self.server_address[1]}"

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token.encode())

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("dashboard connection from %s failed", client_address, exc_info=True)


class Dashboard:
    """The dashboard server and the thread that runs it (see the module docstring)."""

    def __init__(self, server: DashboardHTTPServer) -> None:
        self.server = server
        self.feed = server.feed
        host, port = server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        self.port = port
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="taskmill-dashboard",
                                        daemon=True)

    def start(self) -> Dashboard:
        self._thread.start()
        return self

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.server.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                ready = sel.select(self.feed.seconds_until_idle())
                if self._stopping:
                    break
                if any(key.fileobj is self.server.socket for key, _ in ready):
                    self.server.handle_request()
                self.feed.close_if_idle()

    def stop(self) -> None:
        """Stop serving, close the socket and the client (idempotent)."""
        if self._stopping:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.server.server_close()
        self.feed.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _bind(ip: str, ports: list[int], feed: ControllerFeed, token: str,
          open_access: bool) -> DashboardHTTPServer:
    """A server on the first of `ports` that is free (0: any free port)."""
    for port in ports:
        try:
            return DashboardHTTPServer((ip, port), feed, token=token, open_access=open_access)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or port == 0:
                raise
            log.warning("dashboard port %d on %s is in use; trying another", port, ip)
    raise AssertionError("the last port tried is 0, which never is in use")


def start_dashboard(connection_file: Path, info: ConnectionInfo, *, ip: str = "127.0.0.1",
                    port: int | None = None, open_access: bool = False) -> Dashboard | None:
    """Start the controller's dashboard and record its address in the connection file.

    `port` None means the port this connection file recorded last time (so an open page finds
    the restarted controller), else any free one. Never raises: a dashboard that cannot start
    is logged, and None is returned.
    """
    from .client import TaskClient

    if open_access and not is_loopback(ip):
        raise ValueError(f"an open dashboard must be bound to loopback, not {ip}")
    ports = [0]
    if port:
        ports.insert(0, port)
    else:
        recorded = info.extra.get("dashboard_port")
        if isinstance(recorded, int) and info.extra.get("dashboard_ip") == ip:
            ports.insert(0, recorded)
    feed = ControllerFeed(lambda: TaskClient(connection_file, timeout=CONNECT_TIMEOUT))
    server = None
    try:
        server = _bind(ip, ports, feed, dashboard_token(info.key_bytes), open_access)
        dashboard = Dashboard(server)
        info.extra.update(dashboard_url=dashboard.url, dashboard_ip=ip,
                          dashboard_port=dashboard.port, dashboard_open=open_access)
        write_connection_file(connection_file, info)
        dashboard.start()
    except Exception as e:  # noqa: BLE001 - the controller runs on without its dashboard
        if isinstance(e, OSError):
            log.error("the dashboard could not listen on %s (%s); the controller runs without "
                      "it", ip, e)
        else:
            log.exception("the dashboard could not start; the controller runs without it")
        if server is not None:
            server.server_close()
        try:
            forget_dashboard(connection_file, info)
        except OSError:
            log.exception("could not remove the dashboard's address from %s", connection_file)
        return None
    log.info("dashboard: %s%s", dashboard_link(info),
             " (open to every user of this machine)" if open_access else "")
    if not is_loopback(ip):
        log.warning("the dashboard listens on %s over plain HTTP: its token and every figure it "
                    "shows travel unencrypted on that network", ip)
    return dashboard


def forget_dashboard(connection_file: Path, info: ConnectionInfo) -> None:
    """Remove a dashboard address an earlier run recorded (this run has no dashboard)."""
    keys = ("dashboard_url", "dashboard_ip", "dashboard_port", "dashboard_open")
    if any(k in info.extra for k in keys):
        for k in keys:
            info.extra.pop(k, None)
        write_connection_file(connection_file, info)
