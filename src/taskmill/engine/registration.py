"""An engine's registration with the controller (a part of `EngineControl`, kept here to keep
control.py small).

    hello --> welcome{session}     --> register{what runs here, what finished}
          --> registered{engineid, heartbeat, dead_after, the lease's start}
    a heartbeat's answer may be `reregister`: the controller restarted (another session: what
    waited here is dropped, what runs goes on) or declared this engine dead (same session:
    everything held here is dropped, the running task interrupted), and the engine registers
    anew. An engine that moved to new connections (channels.py) keeps its id and its tasks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import msgpack

from ..defaults import silent_after
from ..protocol import Register, Registered, Reregister, Welcome, to_controller
from .channels import ChannelWatch
from .results import ResultOutbox

log = logging.getLogger("taskmill.engine")

RESULT_HEADROOM = 64 * 1024  # bytes of a result message kept for its header
# An engine starts a task only within this share of the controller's `dead_after` of a
# heartbeat the controller answered (see Engine._next_task).
LEASE_SHARE = 0.6


class Registration:
    """The registration part of `EngineControl` (which sets every attribute named here)."""

    uuid: str
    hostname: str
    pid: int
    start_properties: dict[str, Any]
    properties: dict[str, Any]
    sent_properties: dict[str, Any]
    # Declared dead and registered anew: the namespace and the properties task code set are
    # dropped before the next task (they were the dead engine's; a new engine has none).
    reset_due = False
    current_since = 0.0  # when (monotonic) the current task started (for an adopter)
    namespace: dict[str, Any]
    sockets: Any  # EngineSockets
    watch: ChannelWatch
    lock: threading.Lock
    work: threading.Condition
    engineid: int | None
    heartbeat: float
    lease: float
    lease_until: float
    max_result: int
    session: bytes | None
    registered: bool
    need_register: bool
    moving: bool
    current: tuple[int, int] | None
    backlog: deque
    skip: set[tuple[int, int]]
    revoked: set[int]
    last_started: int
    outbox: ResultOutbox
    _prev_session: bytes | None
    _mseq_seen: int
    _missing: set[int]
    _generation: int

    def _send(self, sock: Any, header: dict[str, Any], frames: Any = ()) -> None:
        raise NotImplementedError  # (EngineControl's)

    def send_results(self, sock: Any, batch: list[Any]) -> None:
        raise NotImplementedError  # (EngineControl's)

    def take_unsent(self) -> list[Any]:
        raise NotImplementedError  # (EngineControl's)

    def _request_interrupt_locked(self, key: tuple[int, int], reason: str) -> None:
        raise NotImplementedError  # (EngineControl's)

    def _on_welcome(self, m: Welcome) -> None:
        """The controller's session: register with it (the registration names what this
        engine still runs or has finished for the controller before it, if it restarted)."""
        session = m.session
        self.watch.heard(time.monotonic())
        with self.lock:
            if not self.need_register:
                return
            if self.session is not None and session != self.session:
                self._restarted(session)
            self.session = session
            running = list(self.current) if self.current else None
            finished = [list(k) for k in self.outbox.unacked]
        self._send(self.sockets.task, to_controller(Register(
            self.uuid, **self.sockets.idents(), hostname=self.hostname, pid=self.pid,
            properties=self._properties_now(), running=running, finished=finished,
            running_for=time.monotonic() - self.current_since if running else None,
            t=time.monotonic()),
            session))

    def _properties_now(self) -> dict[str, Any]:
        """The properties to register with: as they are now, task code's changes included
        (the namespace they describe outlives a controller restart, so a depend on them must
        see them), else, if they are not plain data, the last ones the controller accepted,
        else those the engine started with. Declared dead, it starts afresh: those."""
        if self.reset_due:  # (its namespace goes before its next task: so do they)
            return dict(self.start_properties)
        for props in (self.properties, self.sent_properties):
            try:
                now = dict(props)  # (task code may be changing them: then the next choice)
                msgpack.packb(now, use_bin_type=True)
            except Exception:  # noqa: BLE001 - anything task code put there
                continue
            if now:
                return now
        return dict(self.start_properties)

    def _on_registered(self, m: Registered) -> None:
        if m.session != self.session:
            return
        first = self.engineid is None
        self.watch.heard(time.monotonic())
        with self.lock:
            if not self.need_register:
                return  # (an answer to a repeated register)
            # Moved to new connections (channels.py), the controller keeps this engine as it
            # was; if it declared it dead meanwhile, what it held here was failed or given
            # elsewhere (after a controller restart, see _restarted instead).
            moved = self.moving and m.again and m.engineid == self.engineid
            if self.moving and not moved and self._prev_session is None:
                self._drop_held()
            self.moving = False
            self.engineid = m.engineid
            self.heartbeat = m.heartbeat
            # The controller declares this engine dead after `dead_after` seconds without a
            # sign of it; the lease stays well inside that.
            self.lease = LEASE_SHARE * m.dead_after
            self.watch.set_silent(silent_after(m.dead_after))
            if isinstance(m.t, int | float) and not isinstance(m.t, bool):
                self.lease_until = m.t + self.lease
            self.max_result = m.max_message - min(RESULT_HEADROOM, m.max_message // 2)
            self.namespace["engineid"] = self.engineid
            self.properties["engineid"] = self.engineid
            self.sent_properties = dict(m.properties)
            # A registration numbers its messages from the start again, and a new one its
            # dispatches too (a moved engine may still hold tasks given back, see revoked).
            if not moved:
                self.last_started = 0
                self.revoked.clear()
            self._mseq_seen = 0
            self._missing.clear()
            self._prev_session = None
            self._generation += 1
            self.need_register = False
            self.registered = True
            resend = list(self.outbox.unacked.values())  # results the controller may not have
            self.work.notify_all()
        if moved:
            log.info("engine %d moved to its new connections", self.engineid)
        else:
            log.info("registered as engine %d%s", self.engineid, "" if first else " (again)")
        if resend:
            self.send_results(self.sockets.ctl, resend)

    def _on_reregister(self, m: Reregister) -> None:
        """The controller does not know this engine: it restarted (another session), or it
        declared this engine dead (same session: a SIGSTOP, a network cut). Then every task
        held here has been failed or given to another engine: drop them all, interrupt the
        running one, and register anew."""
        session = m.session
        with self.lock:
            if m.gen != self._generation or self.need_register:
                return  # stale: an answer to a heartbeat sent before the latest registration
            self.need_register = True
            self.registered = False
            if session != self.session:
                log.warning("the controller restarted: registering again (what runs here "
                            "goes on; what waited here is dropped)")
                self._restarted(session)
                self.session = session
                return
            log.warning("the controller declared this engine dead (was it stopped, or cut "
                        "off?): dropping every task it held and registering anew")
            self._drop_held()
            self.reset_due = True
            self.session = None
        # Its pings may have gone nowhere (channels.py): new connections, at once.
        self.watch.alarm("declared dead while it ran")

    def _drop_held(self) -> None:
        """(Under the lock.) The controller failed or gave elsewhere every task held here:
        drop them, and the results it has not acknowledged; interrupt the running one."""
        self.backlog.clear()
        self.skip.clear()
        self.outbox.unacked.clear()
        self.take_unsent()
        if self.current is not None:
            self._request_interrupt_locked(self.current, "drop")

    def _restarted(self, session: bytes) -> None:
        """(Under the lock.) A new controller session: the tasks waiting here never started
        (its registration says which run or finished; it queues the rest again)."""
        if self._prev_session is None:
            self._prev_session = self.session
        self.backlog.clear()
        self.skip.clear()
