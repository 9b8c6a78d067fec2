"""Checking what peers send, beyond the types: submits' nodes, heartbeat pairs.

A message that passed the Wire (signed, fresh, well formed msgpack) is turned into its typed
record (taskmill.protocol: every field's type and range checked as it is built). What a type cannot
say is checked here, next to the records' own rules (protocol.node_rules): these pure functions
either return values rebuilt from what was checked, or raise `BadRequest` (answered with an
error, never acted on). Data flows one way: a record goes in, checked values come out; nothing
here reads the store, the scheduler or a clock.

- `stored_nodes`: the nodes of one task of a `submit` as the store keeps them (with their frame
  spans), so a stored node always has the fields dispatch and reload rely on.
- `pairs`: an engine's [tid, attempt] lists (heartbeats, claims), malformed items dropped.
"""

from __future__ import annotations

from typing import Any

from ..protocol import MapExec, ProtocolError, StringExec, TaskSpec, node_rules

__all__ = ["BadRequest", "LeaseEnded", "exec_map", "is_int", "pairs", "stored_nodes"]


class BadRequest(Exception):
    """A well-signed message whose contents make no sense: answered with an error, never acted on."""

    error_type: str | None = None  # (the refusal's, for the client to act on)


class LeaseEnded(BadRequest):
    """Taskids from a run() lease that has ended: the client must ask for a new one."""

    error_type = "lease-ended"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def exec_map(ex: StringExec | MapExec) -> dict[str, Any]:
    """What an engine is told to do with a node, as the store keeps it."""
    if type(ex) is StringExec:
        return {"kind": "string", "expression": ex.expression, "pull": ex.pull,
                "clear_before": ex.clear_before, "clear_after": ex.clear_after}
    return {"kind": "map", "fn": ex.fn, "clear_before": ex.clear_before,
            "clear_after": ex.clear_after}


def pairs(value: Any) -> set[tuple[int, int]]:
    """An engine's list of [tid, attempt] pairs, as a set (malformed items are ignored)."""
    if not isinstance(value, list):
        return set()
    return {(x[0], x[1]) for x in value
            if isinstance(x, list) and len(x) == 2 and is_int(x[0]) and is_int(x[1])}


def stored_nodes(task: TaskSpec, frames: list[Any], pos: int) -> tuple[int, list[dict]]:
    """Check one task of a submit beyond its types; return where its frames end and its nodes
    as the store keeps them (with their frame spans)."""
    start = pos
    nodes = []
    nframes = len(frames)
    for meta in task.nodes:
        try:
            node_rules(task, meta, pos, nframes)
        except ProtocolError as e:
            raise BadRequest(str(e)) from None
        nf, df = meta.nframes, meta.dframes
        node = {"exec": exec_map(meta.exec), "nframes": nf, "dframes": df,
                "retries": meta.retries, "recovery": meta.recovery, "timeout": meta.timeout,
                "pmac": meta.pmac, "depend": meta.depend, "span": [pos - start, pos - start + nf]}
        if meta.depend == "callable":
            node["dpmac"] = meta.dpmac
        if meta.args_from:
            node["args_from"] = list(meta.args_from)
        pos += nf
        node["dspan"] = [pos - start, pos - start + df]
        pos += df
        nodes.append(node)
    return pos, nodes
