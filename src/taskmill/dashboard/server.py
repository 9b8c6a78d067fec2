"""The dashboard's HTTP server: a thread of the controller process, GET only.

`start_dashboard` binds it (a port in use falls back to a free one; one that cannot start is
logged and left out), writes its address into the connection file and starts the thread;
`Dashboard` serves until `stop`, closing the feed's client when it is idle. Each request
(`DashboardHandler`) is checked for the token (`dashboard_token`, as ?token=, cookie or
bearer; an open dashboard checks the Host header instead), then routed: the static page
(package data in taskmill/static), /api/snapshot (?since=N, ?engines=columns: the snapshot
feed.py's thread fetched last, at once, with its `age`), /api/task/<taskid> and /metrics
(fetched on demand), whose figures come from feed.py's `ControllerFeed`.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import selectors
import socket
import threading
import time
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..connection import ConnectionInfo, write_connection_file
from ..defaults import is_loopback
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import render_metrics
from .feed import (
    BadQuery,
    ControllerFeed,
    NotFound,
    parse_engines,
    parse_since,
    parse_taskid,
    task_view,
    to_json,
    with_engine_columns,
)

log = logging.getLogger("taskmill.dashboard")

TOKEN_CONTEXT = b"taskmill-dashboard"
CONNECT_TIMEOUT = 5.0
STATIC_FILES = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/engines.js": ("engines.js", "text/javascript; charset=utf-8"),
    "/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
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
            since, form = parse_since(query), parse_engines(query)
            snap = feed.latest(since)  # (at once: the feed thread keeps it fresh)
            if form == "columns":
                snap = with_engine_columns(snap)
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


def feed_client(connection_file: Path) -> Any:
    """The feed's TaskClient, made at the first request (so that the controller, which starts
    the dashboard, imports the client's side only if a page is ever asked for)."""
    from ..client import TaskClient

    return TaskClient(connection_file, timeout=CONNECT_TIMEOUT)


def start_dashboard(connection_file: Path, info: ConnectionInfo, *, ip: str = "127.0.0.1",
                    port: int | None = None, open_access: bool = False) -> Dashboard | None:
    """Start the controller's dashboard and record its address in the connection file.

    `port` None means the port this connection file recorded last time (so an open page finds
    the restarted controller), else any free one. Never raises: a dashboard that cannot start
    is logged, and None is returned.
    """
    if open_access and not is_loopback(ip):
        raise ValueError(f"an open dashboard must be bound to loopback, not {ip}")
    ports = [0]
    if port:
        ports.insert(0, port)
    else:
        recorded = info.extra.get("dashboard_port")
        if isinstance(recorded, int) and info.extra.get("dashboard_ip") == ip:
            ports.insert(0, recorded)
    feed = ControllerFeed(lambda: feed_client(connection_file))
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
