"""Helpers shared by the unit tests in tests/ (the system tests have tests/system/systest.py)."""

from __future__ import annotations

import builtins
import contextlib
import textwrap
import time
from collections.abc import Iterator
from typing import Any


def script(source: str) -> dict:
    """Run `source` as a script's `__main__` would; its namespace."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(textwrap.dedent(source), "<script>", "exec"), ns)
    return ns


@contextlib.contextmanager
def core_controller(store: Any = None, info: Any = None, **options: Any) -> Iterator[Any]:
    """A `Controller` with an in-memory store (or `store`; `info`: its connection's, new by
    default) and `options`, driven in process: no loop runs; messages go straight into its
    core (`inject`), signed with its key as a peer's would be."""
    from taskmill.connection import new_connection_info
    from taskmill.controller import Controller
    from taskmill.store import MemoryStore
    from taskmill.wire import Wire

    info = info or new_connection_info()
    ctl = Controller(info, store=store or MemoryStore(), **options)
    ctl.test_wires = (Wire(info.key_bytes), Wire(info.key_bytes))  # client, engine
    try:
        yield ctl
    finally:
        ctl.close()


def inject(ctl: Any, engine: bool, ident: bytes, header: dict, frames: Any = (),
           now: Any = None) -> list:
    """A message from a client (or an `engine`) with routing id `ident`, read by the controller
    of `core_controller` at `now` (the clock's by default): what its turn then sends (flush)."""
    from taskmill.controller import Now

    header.setdefault("session", ctl.session)
    h, f = ctl.wire.decode(ctl.test_wires[engine].encode(header, list(frames)))
    now = now or Now(time.monotonic(), time.time())
    (ctl.core.on_engine if engine else ctl.core.on_client)(ident, h, f, now)
    return ctl.core.flush(now)
