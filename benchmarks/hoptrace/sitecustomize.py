"""Hop tracer for benchmarks/payload_hops.py: times chosen taskmill functions in every process.

Python imports `sitecustomize` at start from the first folder of PYTHONPATH that has one;
payload_hops.py puts this folder there and sets HOPTRACE to a folder of its own, and then every
process of the run (the client, the controller, the engines) wraps the functions of TRACED and
writes one line per call, `begin end name` (CLOCK_MONOTONIC ns, the same clock in every process
of a machine), to `$HOPTRACE/<pid>.tsv` when it exits. Without HOPTRACE this does nothing.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

# (module, function or Class.method): the steps of a round trip, in the order they happen.
TRACED = [
    ("taskmill.client.blocking", "TaskClient.submit"),
    ("taskmill.client.codec", "encode_task"),
    ("taskmill.wire.pickles", "dumps_arguments"),
    ("taskmill.wire.pickles", "dumps"),
    ("taskmill.wire.framing", "Wire.payload_mac"),
    ("taskmill.wire.framing", "Wire.check_payload"),
    ("taskmill.wire.framing", "Wire.encode"),
    ("taskmill.wire.framing", "Wire.decode"),
    ("taskmill.wire.framing", "send_message"),
    ("taskmill.wire.framing", "recv_message"),
    ("taskmill.controller.core", "ControllerCore.on_client"),
    ("taskmill.controller.core", "ControllerCore.on_engine"),
    ("taskmill.store.sqlite", "SQLiteStore.commit"),
    ("taskmill.store.files", "FrameFiles.write"),
    ("taskmill.engine.running", "TaskCode.execute"),
    ("taskmill.wire.pickles", "loads"),
    ("taskmill.client.codec", "decode_result"),
    ("taskmill.client.futures", "TaskFuture.result"),
]


def _install(folder: str) -> None:
    events: list[tuple[int, int, str]] = []
    ns = time.monotonic_ns

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def traced(*args: Any, **kwargs: Any) -> Any:
            t = ns()
            try:
                return fn(*args, **kwargs)
            finally:
                events.append((t, ns(), name))
        return traced

    def dump() -> None:
        with open(os.path.join(folder, f"{os.getpid()}.tsv"), "w") as out:
            out.write("#" + " ".join(sys.argv) + "\n")
            out.writelines(f"{b}\t{e}\t{n}\n" for b, e, n in events)

    atexit.register(dump)
    replaced: dict[int, Callable[..., Any]] = {}
    for modname, attr in TRACED:
        owner: Any = importlib.import_module(modname)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        fn = getattr(owner, name)
        traced = wrap(attr, fn)
        setattr(owner, name, traced)
        if not path:
            replaced[id(fn)] = traced
    # Modules that imported a traced function by name hold the original: give them the wrapper.
    for modname, module in list(sys.modules.items()):
        if modname.startswith("taskmill") and module is not None:
            for key, value in list(vars(module).items()):
                if id(value) in replaced:
                    setattr(module, key, replaced[id(value)])


if os.environ.get("HOPTRACE"):
    _install(os.environ["HOPTRACE"])
