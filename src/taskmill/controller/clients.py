"""Clients: who is connected, by the routing id of its receive socket (`rt`), and who was
forgotten for its silence.

    any client message --heard(rt, now)--> its last-heard time (False: a forgotten client,
        whose message the core refuses with error_type "forgotten")
    a client's `bye` --left(rt)--> gone for good (the client closed, or moved to new ids)
    the core's ("clients",) timer, every CHECK_EVERY s --silent(now)--> the clients silent for
        `forget_after` seconds: the core drops what it kept for each (core.forget_silent:
        results.forget_client, the same as a `bye`) and they are remembered as forgotten

A live client's I/O thread pings every second (defaults.CLIENT_PING_INTERVAL), so only a
client that died without its `bye` (kill -9, its machine gone) or one stopped or cut off for
that long is this silent. Its tasks run on and their results stay in the store (any client
fetches them by taskid); what goes is what waited to be sent to it: its watches (futures), its
waiting `result`/`wait` requests, the results queued under its credit (credit.py). (Its
leases of run() ids end after 10 s of silence anyway: leases.py.)

A forgotten client that speaks again (SIGCONT, its network back) is told so: every message
from its `rt` is refused with error_type "forgotten", and the client fails what waited with
ClientForgotten and goes on under new ids (its `bye` for the old id ends the record here).
At most FORGOTTEN_KEPT forgotten ids are remembered (the oldest go first). A loop turn that ran
long does not count as silence (as for engines: the pings wait unread). Pure: no clock, no
socket.
"""

from __future__ import annotations

from ..checks import seconds

CHECK_EVERY = 1.0  # seconds between looks for silent clients (at most: see check_every)
FORGOTTEN_KEPT = 10_000  # forgotten receive ids remembered, to tell them when they speak


class Clients:
    def __init__(self, forget_after: float) -> None:
        # (math.inf: never forget a client)
        self.forget_after = seconds("forget_clients_after", forget_after, infinite=True)
        self.seen: dict[bytes, float] = {}  # rt -> monotonic time it was last heard from
        self.forgotten: dict[bytes, None] = {}  # rt of clients forgotten, oldest first
        self.forgotten_total = 0  # clients forgotten for their silence since the start

    def check_every(self) -> float:
        """Seconds between looks for silent clients: so a client is forgotten at most a
        quarter of the bound late."""
        return min(CHECK_EVERY, self.forget_after / 4)

    def heard(self, rt: bytes, mono: float) -> bool:
        """A message of client `rt` at `mono`; False if that client was forgotten."""
        if rt in self.forgotten:
            return False
        self.seen[rt] = mono
        return True

    def left(self, rt: bytes) -> None:
        """Client `rt` said `bye`: nothing more comes from it."""
        self.seen.pop(rt, None)
        self.forgotten.pop(rt, None)

    def silent(self, mono: float, stall_end: float) -> list[bytes]:
        """The clients silent for longer than `forget_after` at `mono` (a loop stall that
        ended at `stall_end` not counted), now forgotten."""
        bound = self.forget_after
        gone = [rt for rt, seen in self.seen.items() if mono - max(seen, stall_end) > bound]
        forgotten = self.forgotten
        for rt in gone:
            del self.seen[rt]
            forgotten[rt] = None
        while len(forgotten) > FORGOTTEN_KEPT:
            del forgotten[next(iter(forgotten))]
        self.forgotten_total += len(gone)
        return gone

    def forgotten_text(self) -> str:
        """The refusal a forgotten client's message gets."""
        return (f"the controller forgot this client: it heard nothing from it for more than "
                f"{self.forget_after:g}s (the process was stopped, or cut off), and dropped "
                "what waited to be sent to it (its futures' results, its waiting requests); its "
                "tasks run on, and get_task_result(taskid) fetches their results")

    def held(self) -> dict[str, int]:
        """For statistics(): clients heard from and not gone, and clients forgotten so far."""
        return {"clients": len(self.seen), "clients_forgotten": self.forgotten_total}
