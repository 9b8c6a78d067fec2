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
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq

from .connection import ConnectionInfo, ensure_private_dir

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


class CurveServer:
    """The controller's side: its key pair and the ZAP authenticator over the allow-list."""

    def __init__(self, ctx: zmq.Context, connection_file: Path) -> None:
        lines = server_key_file(connection_file).read_text().split()
        self.public, self.secret = lines[0].encode(), lines[1].encode()
        self.allowed = allow_dir(connection_file)
        from zmq.auth.thread import ThreadAuthenticator

        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self._mtime = -1.0
        self.reload()

    def reload(self) -> None:
        """Read the allow-list again if it changed (keys may be added while running)."""
        mtime = self.allowed.stat().st_mtime if self.allowed.exists() else 0.0
        if mtime != self._mtime:
            self._mtime = mtime
            self.auth.configure_curve(domain="*", location=str(self.allowed))

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

