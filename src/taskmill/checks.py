"""Checks of settings given in seconds (heartbeat, unmet_timeout, timeouts) or days
(keep_results), shared by the Python API, the CLI and the controller, so that NaN or a negative
number is refused where it is given, naming the setting, instead of looping forever or ending
the controller later. This module imports nothing of taskmill and does no I/O.
"""

from __future__ import annotations

import math


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
