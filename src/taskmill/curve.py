"""CurveZMQ encryption with an allow-list of client keys (the "ironhouse" model).

With `taskmill controller --curve`, every connection is encrypted and authenticated:
- the controller has a key pair; its public key is in the connection file (`curve_server_key`),
  its secret key in `<connection file>.server-key` (mode 0600), which never leaves its machine;
- clients and engines each present a key pair; only public keys in the allow-list directory
  `<connection file>.allowed-keys/` may connect (ZeroMQ's ZAP handshake checks them);
- the connection file carries one default client key pair, allowed from the start, so that
  whoever holds the connection file can connect, as without Curve. A client or engine may use a
  key pair of its own instead (`$TASKMILL_CURVE_SECRET_KEY`, a secret certificate made by
  `taskmill curve-key NAME`), whose public half must be copied into the allow-list.
HMAC signing stays on top of the encryption. This module only configures sockets.

The allow-list is every `*.key` file in the directory (names starting with a dot are skipped,
as editors' temporary files). The controller looks at it again every half heartbeat and fails
closed: a missing or unreadable directory, or any `*.key` file that is not a public
certificate with a valid key, allows nobody until it is fixed, and the controller logs why
once per change. Only new connections are checked: a client or engine already connected stays
connected when its key is removed (stop it, or restart the controller, to cut it off).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

from .connection import ConnectionInfo, ensure_private_dir

log = logging.getLogger("taskmill.curve")

SECRET_KEY_ENV = "TASKMILL_CURVE_SECRET_KEY"


def server_key_file(connection_file: Path) -> Path:
    return connection_file.with_name(connection_file.name + ".server-key")


def allow_dir(connection_file: Path) -> Path:
    return connection_file.with_name(connection_file.name + ".allowed-keys")


def enabled(info: ConnectionInfo) -> bool:
    return "curve_server_key" in info.extra


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def add_curve(info: ConnectionInfo, connection_file: Path) -> None:
    """Give `info` Curve keys; write the server's secret key and the allow-list beside the file."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    info.extra.update(curve_server_key=server_public.decode(),
                      curve_client_public=client_public.decode(),
                      curve_client_secret=client_secret.decode())
    ensure_private_dir(connection_file.parent)
    _write_private(server_key_file(connection_file),
                   f"{server_public.decode()}\n{server_secret.decode()}\n")
    allowed = ensure_private_dir(allow_dir(connection_file))
    _write_public_cert(allowed / "connection-file-default.key", client_public)


def _write_public_cert(path: Path, public: bytes) -> None:
    path.write_text(
        "#   ZeroMQ CURVE Public Certificate (taskmill)\n"
        "metadata\n"
        "curve\n"
        f'    public-key = "{public.decode()}"\n')


def make_key(directory: Path, name: str) -> tuple[Path, Path]:
    """A new client/engine key pair as ZeroMQ certificates: (public file, secret file)."""
    ensure_private_dir(directory)
    import zmq.auth  # (here: zmq.auth pulls in asyncio, which a plain process never needs)

    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


class AllowListError(ValueError):
    """The allow-list directory is missing, unreadable, or holds a file that is no certificate."""


def _valid_public_key(key: bytes) -> bool:
    try:
        return len(key) == 40 and z85.encode(z85.decode(key)) == key
    except (KeyError, ValueError, IndexError, OverflowError):
        return False


def read_allow_list(directory: Path) -> frozenset[bytes]:
    """The z85 public keys of the `*.key` certificates in `directory`.

    Raise AllowListError naming the problem when the directory cannot be listed or any of
    those files cannot be read or holds no valid public key (the caller then allows nobody).
    """
    import zmq.auth  # (here: zmq.auth pulls in asyncio, which a plain process never needs)

    try:
        names = sorted(n for n in os.listdir(directory)
                       if n.endswith(".key") and not n.startswith("."))
    except FileNotFoundError:
        raise AllowListError(f"the allow-list directory {directory} does not exist") from None
    except OSError as e:
        raise AllowListError(f"cannot list the allow-list directory {directory}: {e}") from None
    keys = set()
    for name in names:
        path = directory / name
        try:
            public, _ = zmq.auth.load_certificate(path)
        except OSError as e:
            raise AllowListError(f"cannot read the certificate {path}: {e}") from None
        except (ValueError, IndexError):  # (pyzmq: "No public key found in ...")
            public = None
        if not public or not _valid_public_key(public):
            raise AllowListError(
                f"{path} is not a public certificate with a valid key (it needs a line "
                '`public-key = "<40 z85 characters>"`, as `taskmill curve-key` writes)')
        keys.add(public)
    return frozenset(keys)


def _fingerprint(directory: Path) -> Any:
    """What changes when the allow-list may have changed: the directory and each `*.key` file
    (a file rewritten in place changes no directory's mtime)."""
    try:
        st = directory.stat()
        files = []
        with os.scandir(directory) as it:
            for e in it:
                if e.name.endswith(".key") and not e.name.startswith("."):
                    f = e.stat()
                    files.append((e.name, f.st_ino, f.st_size, f.st_mtime_ns, f.st_ctime_ns))
    except OSError as e:
        return ("unreadable", type(e).__name__, e.errno)
    return (st.st_ino, st.st_mtime_ns, tuple(sorted(files)))


class _AllowedKeys:
    """The ZAP authenticator's credentials provider: the keys allowed now (swapped whole)."""

    def __init__(self) -> None:
        self.keys: frozenset[bytes] = frozenset()

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class CurveServer:
    """The controller's side: its key pair and the ZAP authenticator over the allow-list."""

    def __init__(self, ctx: zmq.Context, connection_file: Path) -> None:
        lines = server_key_file(connection_file).read_text().split()
        self.public, self.secret = lines[0].encode(), lines[1].encode()
        self.allowed = allow_dir(connection_file)
        from zmq.auth.thread import ThreadAuthenticator

        self._keys = _AllowedKeys()
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self._keys)
        self._fingerprint: Any = object()
        self._failed = False
        self.reload()

    @property
    def allowed_keys(self) -> frozenset[bytes]:
        return self._keys.keys

    def reload(self) -> None:
        """Read the allow-list again if it changed (keys may be added or removed while running).

        Fails closed: when the directory is missing or unreadable, or any certificate in it is
        malformed, nobody is allowed (logged once per change) until it is fixed."""
        fingerprint = _fingerprint(self.allowed)
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        try:
            keys = read_allow_list(self.allowed)
        except AllowListError as e:
            self._keys.keys = frozenset()
            self._failed = True
            log.error("Curve allow-list: %s. Refusing every new client and engine connection "
                      "until it is fixed.", e)
            return
        self._keys.keys = keys
        if self._failed:
            log.warning("Curve allow-list %s is readable again: %d key(s) allowed", self.allowed,
                        len(keys))
        else:
            log.info("Curve allow-list %s: %d key(s) allowed", self.allowed, len(keys))
        self._failed = False

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        self.auth.stop()


def apply_client(sock: zmq.Socket, info: ConnectionInfo) -> None:
    """Configure a client or engine socket for Curve, if the connection file asks for it."""
    if not enabled(info):
        return
    own = os.environ.get(SECRET_KEY_ENV)
    if own:
        import zmq.auth

        public, secret = zmq.auth.load_certificate(own)
        if secret is None:
            raise ValueError(f"{own} holds no secret key (${SECRET_KEY_ENV} must name a "
                             "*.key_secret file made by `taskmill curve-key`)")
    else:
        public = info.extra["curve_client_public"].encode()
        secret = info.extra["curve_client_secret"].encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = info.extra["curve_server_key"].encode()

