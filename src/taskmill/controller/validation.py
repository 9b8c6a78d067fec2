"""Checking what peers send: submits, registrations, result and heartbeat fields.

A message that passed the Wire (signed, fresh, well formed msgpack) may still make no sense:
these pure functions read its fields and either return them rebuilt from what was checked, or
raise `BadRequest` (answered with an error, never acted on). Data flows one way: a header
goes in, checked values come out; nothing here reads the store, the scheduler or a clock.

- `check_task` / `check_exec`: one task of a `submit` (its nodes, frame spans, depend, timeout),
  so a stored node always has the fields dispatch and reload rely on.
- `check_int_list`: the taskid lists of `result`, `watch`, `wait`, `clear` and `after`.
- `check_register`: the fields of an engine's `register`.
- `pairs`: an engine's [tid, attempt] lists (heartbeats, claims), malformed items dropped.
"""

from __future__ import annotations

from typing import Any

from ..task import MAX_TIMEOUT

__all__ = ["BadRequest", "check_exec", "check_int_list", "check_register", "check_task",
           "is_int", "pairs"]


class BadRequest(Exception):
    """A well-signed message whose contents make no sense: answered with an error, never acted on."""


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_exec(ex: dict[str, Any], nframes: int) -> dict[str, Any]:
    """What an engine is told to do with a node, rebuilt from its checked fields."""
    kind = ex.get("kind")
    clear_before, clear_after = ex.get("clear_before", False), ex.get("clear_after", False)
    if not isinstance(clear_before, bool) or not isinstance(clear_after, bool):
        raise BadRequest("clear_before and clear_after must be bools")
    if kind == "string":
        expression, pull = ex.get("expression"), ex.get("pull", [])
        if not isinstance(expression, str):
            raise BadRequest("a string task needs its expression as a str")
        if not isinstance(pull, list) or not all(isinstance(x, str) for x in pull):
            raise BadRequest("pull must be a list of names")
        return {"kind": kind, "expression": expression, "pull": pull,
                "clear_before": clear_before, "clear_after": clear_after}
    if kind == "map":
        fn = ex.get("fn")
        if fn is not None and not (is_int(fn) and 0 < fn <= nframes):
            raise BadRequest("fn must count the function's frames (an int within nframes)")
        if nframes == 0:
            raise BadRequest("a map task needs its function's payload frames")
        return {"kind": kind, "fn": fn, "clear_before": clear_before, "clear_after": clear_after}
    raise BadRequest("exec kind must be 'string' or 'map'")


def pairs(value: Any) -> set[tuple[int, int]]:
    """An engine's list of [tid, attempt] pairs, as a set (malformed items are ignored)."""
    if not isinstance(value, list):
        return set()
    return {(x[0], x[1]) for x in value
            if isinstance(x, list) and len(x) == 2 and is_int(x[0]) and is_int(x[1])}


def check_int_list(value: Any, what: str) -> list[int]:
    if value == []:  # (the usual `after`)
        return value
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        raise BadRequest(f"{what} must be a list of ints")
    return value


REGISTER_FIELDS = (("uuid", str), ("ctl_ident", bytes), ("res_ident", bytes),
                   ("heart_ident", bytes), ("hostname", str), ("pid", int))


def check_register(header: dict[str, Any]) -> None:
    """The fields an engine's `register` must carry (the header is used as is after this)."""
    if "uuid" not in header:  # (a missing field of any message is a KeyError: a bad message)
        raise KeyError("uuid")
    for name, kind in REGISTER_FIELDS:
        if not isinstance(header.get(name), kind):
            raise BadRequest(f"register needs {name} as {kind.__name__}")
    if not isinstance(header.get("properties") or {}, dict):
        raise BadRequest("register needs properties as a map")


def check_task(spec: Any, frames: list[Any], pos: int) -> tuple[int, list[dict]]:
    """Check one task of a submit message; return where its frames end and its nodes,
    rebuilt from the checked fields only (with their frame spans). So whatever a client
    sent, a stored node always has the fields dispatch and reload rely on."""
    if not isinstance(spec, dict) or not isinstance(spec.get("nodes"), list) or not spec["nodes"]:
        raise BadRequest("each task needs a non-empty list of nodes")
    start = pos
    n = len(spec["nodes"])
    nodes = []
    for meta in spec["nodes"]:
        if not isinstance(meta, dict) or not isinstance(meta.get("exec"), dict):
            raise BadRequest("each node needs an exec map")
        nf, df = meta.get("nframes", 0), meta.get("dframes", 0)
        retries, recovery = meta.get("retries", 0), meta.get("recovery")
        if not is_int(nf) or not is_int(df) or nf < 0 or df < 0:
            raise BadRequest("nframes and dframes must be ints >= 0")
        if not is_int(retries) or retries < 0:
            raise BadRequest("retries must be an int >= 0")
        if recovery is not None and not (is_int(recovery) and 0 <= recovery < n):
            raise BadRequest("recovery must index a node of the same task")
        if pos + nf + df > len(frames):
            raise BadRequest("the tasks describe more payload frames than the message has")
        depend = meta.get("depend")
        if depend not in (None, "callable") and not isinstance(depend, dict):
            raise BadRequest("depend must be null, a map, or 'callable'")
        timeout = meta.get("timeout")
        if timeout is not None and not (isinstance(timeout, int | float)
                                        and not isinstance(timeout, bool)
                                        and 0 < timeout <= MAX_TIMEOUT):
            raise BadRequest(f"timeout must be null or a number > 0 and <= {MAX_TIMEOUT:g}")
        pmac, dpmac = meta.get("pmac"), meta.get("dpmac")
        if (nf or pmac is not None) and not isinstance(pmac, bytes):
            raise BadRequest("a node with payload frames needs their pmac (bytes)")
        if depend == "callable" and not isinstance(dpmac, bytes):
            raise BadRequest("a callable depend needs its dpmac (bytes)")
        node = {"exec": check_exec(meta["exec"], nf), "nframes": nf, "dframes": df,
                "retries": retries, "recovery": recovery, "timeout": timeout,
                "pmac": pmac, "depend": depend, "span": [pos - start, pos - start + nf]}
        if depend == "callable":
            node["dpmac"] = dpmac
        pos += nf
        node["dspan"] = [pos - start, pos - start + df]
        pos += df
        nodes.append(node)
    return pos, nodes
