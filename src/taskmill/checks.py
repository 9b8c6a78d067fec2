"""Checks of settings given in seconds (heartbeat, unmet_timeout, forget_clients_after,
timeouts), days (keep_results) or MiB (memory_budget), shared by the Python API, the CLI and the
controller, so that NaN or a negative number is refused where it is given, naming the setting,
instead of looping forever or ending the controller later; and of `Cluster`'s engine properties
and transport. This module imports nothing of taskmill and does no I/O.
"""

from __future__ import annotations

import math
from typing import Any


def seconds(name: str, value: object, *, zero: bool = False, infinite: bool = False) -> float:
    """`value` as a float number of seconds, or ValueError/TypeError naming `name` and `value`.

    Always refused: NaN, negative numbers, bools and non-numbers. `zero` admits 0, `infinite`
    admits math.inf ("no limit")."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    v = float(value)
    ok = (not math.isnan(v) and (v > 0 or (zero and v == 0))
          and (infinite or not math.isinf(v)))
    if not ok:
        what = ">= 0" if zero else "> 0"
        what += "" if infinite else " and finite"
        raise ValueError(f"{name} must be a number of seconds {what}, not {value!r}")
    return v


def days(name: str, value: object) -> float:
    """`value` as a float number of days >= 0 (math.inf: "for ever"), or ValueError/TypeError
    naming `name` and `value` (NaN, negative numbers, bools and non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of days, not {value!r}")
    v = float(value)
    if math.isnan(v) or v < 0:
        raise ValueError(f"{name} must be a number of days >= 0 (inf: for ever), not {value!r}")
    return v


MIN_MESSAGE_SIZE = 64 * 1024  # bytes: a message's headers alone may take a few KiB


def message_size(name: str, value: object) -> int:
    """`value` as an int number of bytes >= MIN_MESSAGE_SIZE (a message size limit), or
    TypeError/ValueError naming `name` and `value`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of bytes, not {value!r}")
    if value < MIN_MESSAGE_SIZE:
        raise ValueError(f"{name} must be at least {MIN_MESSAGE_SIZE} bytes, not {value!r}")
    return value


MIN_MEMORY_BUDGET = 16  # MiB: below this the window would hold too few tasks to be useful


def mebibytes(name: str, value: object) -> float:
    """`value` as a finite float number of MiB >= MIN_MEMORY_BUDGET (a memory budget), or
    ValueError naming `name` and `value`."""
    v = float("nan") if isinstance(value, bool) or not isinstance(value, int | float) \
        else float(value)
    if not MIN_MEMORY_BUDGET <= v < math.inf:
        raise ValueError(f"{name} must be a number of MiB >= {MIN_MEMORY_BUDGET}, "
                         f"not {value!r}")
    return v


def per_engine_properties(props: Any, k: int) -> list[dict[str, Any]]:
    """`Cluster`'s `engine_properties` (None, one dict for every engine, or a list of `k`
    dicts) as one dict per engine, or ValueError."""
    if props is None:
        return [{} for _ in range(k)]
    if isinstance(props, dict):
        return [dict(props) for _ in range(k)]
    if isinstance(props, list | tuple) and len(props) == k and all(isinstance(p, dict) for p in props):
        return [dict(p) for p in props]
    raise ValueError(
        f"engine properties must be one dict for every engine or a list of {k} dicts, "
        f"not {props!r}")


def choose_transport(choice: object, local: bool, where: str) -> str:
    """`Cluster`'s `transport`: "ipc" or "tcp", None for ipc when the cluster is all on this
    machine (`local`, as `where` says), else tcp; or ValueError."""
    if choice is None:
        return "ipc" if local else "tcp"
    if choice not in ("ipc", "tcp"):
        raise ValueError(f"transport must be 'ipc', 'tcp' or None (ipc for a cluster all on "
                         f"this machine), not {choice!r}")
    if choice == "ipc" and not local:
        raise ValueError(
            "transport='ipc' (unix sockets) is for a cluster all on this machine: the local "
            f"launcher, a loopback ip and no port, engine_port or location; not {where}")
    return str(choice)
