"""Connection files: where the controller listens and the key that signs every message.

A connection file is JSON with `key` (hex), `signature_scheme`, `client_url`, `engine_url` and
`ip`. Over TCP, the two URLs carry the address that clients and engines connect to (the
controller's "location", which other machines must be able to reach); `ip` is the interface the
controller binds, with the ports of the URLs (`0.0.0.0` binds every interface). A cluster that
is all on this machine uses `ipc://PATH` URLs instead: unix sockets in a folder of mode 0700, so
that no other user of the machine can even connect; the controller binds those same paths.
The connection file is created with mode
0600 from birth (never written first and restricted after) in a directory of mode 0700, and
refused when readable by others. It is found through an explicit path, then
`$TASKMILL_CONNECTION`, then the default profile (`$TASKMILL_DIR` or `~/.taskmill`, then
`profile_default/connection.json`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import stat
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .defaults import MAX_MESSAGE_SIZE
from .errors import ConnectionFileError

SIGNATURE_SCHEME = "hmac-sha256"

log = logging.getLogger("taskmill.connection")
MAX_CONNECTION_LINE = 64 * 1024


@dataclass(slots=True)
class ConnectionInfo:
    key: str
    client_url: str
    engine_url: str
    ip: str = "127.0.0.1"
    signature_scheme: str = SIGNATURE_SCHEME
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key_bytes(self) -> bytes:
        return bytes.fromhex(self.key)

    @property
    def client_bind_url(self) -> str:
        """Where the controller binds its client socket: `ip` with the port of `client_url`
        (an `ipc://` URL: itself)."""
        return _with_host(self.client_url, self.ip)

    @property
    def engine_bind_url(self) -> str:
        """Where the controller binds its engine socket: `ip` with the port of `engine_url`
        (an `ipc://` URL: itself)."""
        return _with_host(self.engine_url, self.ip)

    @property
    def max_message(self) -> int:
        """Bytes one message may hold (the controller's `--max-message-size`): the controller
        refuses larger ones, and clients and engines receive up to as much (a file without
        it: the default)."""
        v = self.extra.get("max_message")
        ok = isinstance(v, int) and not isinstance(v, bool) and v > 0
        return v if ok else MAX_MESSAGE_SIZE

    @property
    def is_ipc(self) -> bool:
        """True when the controller listens on unix sockets (clients and engines on this
        machine only), False for TCP."""
        return is_ipc(self.client_url) or is_ipc(self.engine_url)

    def to_json(self) -> str:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return json.dumps(d, indent=2, sort_keys=True)


def taskmill_dir() -> Path:
    """The root folder of taskmill's profiles: `$TASKMILL_DIR` or `~/.taskmill`."""
    env = os.environ.get("TASKMILL_DIR")
    return Path(env) if env else Path.home() / ".taskmill"


def profile_dir(profile: str = "default") -> Path:
    """The folder of one profile (created 0700 on demand by `ensure_private_dir`)."""
    return taskmill_dir() / f"profile_{profile}"


def default_connection_file(profile: str = "default") -> Path:
    return profile_dir(profile) / "connection.json"


def find_connection_file(connection: str | os.PathLike[str] | None = None) -> Path:
    """The connection file to use: explicit, then `$TASKMILL_CONNECTION`, then the default."""
    if connection is not None:
        return Path(connection)
    env = os.environ.get("TASKMILL_CONNECTION")
    if env:
        return Path(env)
    return default_connection_file()


def ensure_private_dir(path: Path) -> Path:
    """`path` as a folder for taskmill's private files (connection file, keys, task store).

    A folder taskmill creates here (`path` and each missing parent) gets mode 0700. A folder
    that exists already is left as it is (files taskmill writes into it are 0600), except that
    one others can write to is refused with ConnectionFileError: they could replace or add
    files there (the connection file, a certificate, the task store's journal).
    """
    path = Path(path)
    missing = []
    folder = path
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by someone else: checked below
            continue
        os.chmod(d, 0o700)  # (mkdir's mode passes through the umask, which may narrow it)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConnectionFileError(f"{path} is not a folder; taskmill needs a folder there for "
                                  "its private files (connection file, keys, task store)")
    if st.st_mode & 0o022:
        raise ConnectionFileError(
            f"the folder {path} can be written by others (mode {stat.S_IMODE(st.st_mode):04o}), "
            "so they could replace the files taskmill keeps there (connection file, keys, task "
            f"store). Fix: `chmod go-w {path}`, or use a folder only you can write to (e.g. one "
            "made with `mkdir -m 700`)")
    return path


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `ip`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


WILDCARD_IPS = ("0.0.0.0", "*")
IPC = "ipc://"


def is_ipc(url: str) -> bool:
    return url.startswith(IPC)


def ipc_path(url: str) -> Path:
    """The socket file of an `ipc://` URL."""
    return Path(url[len(IPC):])


def ipc_path_limit() -> int:
    """The longest path a unix socket address holds: sizeof(sun_path) - 1, as ZeroMQ's
    IPC_PATH_MAX_LEN says (107 bytes on Linux, 103 on macOS and the BSDs). Known here without
    importing ZeroMQ, which a Cluster's process needs only once its controller is starting."""
    return 103 if sys.platform == "darwin" or "bsd" in sys.platform else 107


def ipc_urls(folder: str | os.PathLike[str], prefix: str = "") -> tuple[str, str] | None:
    """`ipc://` URLs for a controller's client and engine sockets in `folder` (which must be
    private: see `check_ipc_folder`), or None when a path would be longer than a unix socket
    address holds."""
    folder = Path(folder).absolute()
    paths = [folder / f"{prefix}client.sock", folder / f"{prefix}engine.sock"]
    if any(len(os.fsencode(p)) > ipc_path_limit() for p in paths):
        return None
    return f"{IPC}{paths[0]}", f"{IPC}{paths[1]}"


def check_ipc_folder(info: ConnectionInfo) -> None:
    """Make sure the folder of `info`'s unix sockets exists with mode 0700 (a connection file
    may outlive its folder: then it is made again), so that no other user can connect."""
    for url in (info.client_url, info.engine_url):
        if not is_ipc(url):
            continue
        folder = ensure_private_dir(ipc_path(url).parent)
        st = folder.stat()
        if stat.S_IMODE(st.st_mode) & 0o077 or st.st_uid != os.getuid():
            raise ConnectionFileError(
                f"the controller's unix sockets ({url}) would be in {folder}, which has mode "
                f"{stat.S_IMODE(st.st_mode):04o} and owner uid {st.st_uid}: other users could "
                f"connect to them. Fix: `chmod 700 {folder}` (as its owner), or use TCP")


def _with_host(url: str, host: str) -> str:
    if is_ipc(url):
        return url  # a unix socket: the same path for binding and connecting
    port = url.rsplit(":", 1)[1]
    if host == "*":
        host = "0.0.0.0"
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def default_location(ip: str) -> str:
    """The address to advertise for a controller bound to `ip`.

    A specific address advertises itself. A wildcard bind advertises this machine's address on
    the interface that routes outwards (no packet is sent to find it), else its hostname.
    """
    if ip not in WILDCARD_IPS:
        return ip
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return str(s.getsockname()[0])
    except OSError:
        return socket.gethostname()


def new_connection_info(
    ip: str = "127.0.0.1",
    client_port: int | None = None,
    engine_port: int | None = None,
    location: str | None = None,
    *,
    ipc_dir: str | os.PathLike[str] | None = None,
    ipc_prefix: str = "",
) -> ConnectionInfo:
    """A fresh key and a pair of (free, unless given) ports on `ip`.

    The URLs carry `location` (default: `default_location(ip)`), the address that clients and
    engines connect to; the controller binds `ip`. With `ipc_dir` (a private folder, for a
    cluster that is all on this machine) the URLs are unix sockets in it instead, unless their
    paths would be too long for a unix socket: then TCP on `ip` it is, and a warning says why.
    """
    if ipc_dir is not None:
        urls = ipc_urls(ipc_dir, ipc_prefix)
        if urls is not None:
            return ConnectionInfo(key=secrets.token_hex(32), client_url=urls[0],
                                  engine_url=urls[1], ip=ip)
        log.warning("the folder %s is too deep for unix sockets (paths of at most %d bytes): "
                    "the controller listens on TCP on %s instead (set TMPDIR to a shorter "
                    "folder to get unix sockets)", ipc_dir, ipc_path_limit(), ip)
    bind = "0.0.0.0" if ip == "*" else ip
    cp = client_port or free_port(bind)
    ep = engine_port or free_port(bind)
    while ep == cp:
        ep = free_port(bind)
    host = location or default_location(bind)
    return ConnectionInfo(
        key=secrets.token_hex(32),
        client_url=_with_host(f"tcp://x:{cp}", host),
        engine_url=_with_host(f"tcp://x:{ep}", host),
        ip=bind,
    )


def write_connection_file(path: str | os.PathLike[str], info: ConnectionInfo) -> Path:
    """Write `info` to `path` with mode 0600 from birth; the parent directory is made 0700."""
    path = Path(path)
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(info.to_json())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_connection_file(path: str | os.PathLike[str]) -> ConnectionInfo:
    """Read and check a connection file; refuse one that others can read."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConnectionFileError(
            f"no connection file at {path}: start a controller (`taskmill cluster start` or "
            "`taskmill controller`) or point $TASKMILL_CONNECTION at its connection file"
        ) from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConnectionFileError(
            f"connection file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it holds the key "
            f"that runs code on every engine, so only its owner may read it. Fix: chmod 600 {path}"
        )
    return parse_connection_info(path.read_text(), f"connection file {path}")


def parse_connection_info(text: str, source: str) -> ConnectionInfo:
    """The ConnectionInfo in `text` (a connection file's JSON); `source` names it in errors."""
    try:
        d = json.loads(text)
        known = {"key", "client_url", "engine_url", "ip", "signature_scheme"}
        info = ConnectionInfo(
            key=d["key"],
            client_url=d["client_url"],
            engine_url=d["engine_url"],
            ip=d.get("ip", "127.0.0.1"),
            signature_scheme=d.get("signature_scheme", SIGNATURE_SCHEME),
            extra={k: v for k, v in d.items() if k not in known},
        )
        bytes.fromhex(info.key)
    except (ValueError, KeyError, TypeError) as e:
        raise ConnectionFileError(f"{source} is malformed: {e!r}") from None
    if info.signature_scheme != SIGNATURE_SCHEME:
        raise ConnectionFileError(
            f"{source} asks for signature scheme {info.signature_scheme!r}; "
            f"taskmill speaks only {SIGNATURE_SCHEME!r}"
        )
    return info


def read_connection_line(fd: int = 0) -> ConnectionInfo:
    """A connection file's JSON sent as one line on `fd` (the ssh launcher's engines get it so).

    Read byte by byte, never past the newline: what follows stays for the next reader (an
    engine then watches the same stdin as its lifeline). Nothing is written to disk.
    """
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
        if len(line) > MAX_CONNECTION_LINE:
            raise ConnectionFileError(
                f"the connection info on file descriptor {fd} is longer than "
                f"{MAX_CONNECTION_LINE} bytes without a newline")
    if not line.strip():
        raise ConnectionFileError(
            f"no connection info on file descriptor {fd} (`--connection-file -` reads the "
            "connection file's JSON as one line from standard input)")
    return parse_connection_info(line.decode(errors="replace"), "the connection info on stdin")


def wait_for_connection_file(
    path: str | os.PathLike[str], timeout: float | None = None
) -> ConnectionInfo:
    """`read_connection_file(path)`, first waiting while the file does not exist yet.

    An engine may start before its controller has written the file (on a shared filesystem, or
    in the same batch job): it checks again after 0.1 s, doubling to every 2 s, for at most
    `timeout` seconds (None: no limit). A file that exists but is unusable fails at once.
    """
    path = Path(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.1
    logged = False
    while not path.exists():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break  # read_connection_file names the missing file and how to get one
        if not logged:
            log.warning("waiting for the connection file %s (a controller writes it when it "
                        "starts)", path)
            logged = True
        time.sleep(delay if deadline is None else min(delay, deadline - now))
        delay = min(delay * 2, 2.0)
    return read_connection_file(path)
