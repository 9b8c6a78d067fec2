"""The controller's core: (peer, message, now) in; what to send and what to store out.

It touches no socket and reads no clock: the loop (loop.py) hands it each decoded message with
the time (`on_client`, `on_engine`, `on_pong`), the due timers (`fire_timers`) and the end of
each turn (`flush`), which commits the store and returns the messages to send, in order. What
to store goes to the store as it is decided (rows wait in memory until `flush` commits them).

Messages are found in explicit verb tables (`client_verbs`, `engine_verbs`); each verb gets
its header as a typed record (taskmill.protocol: `client_record`, `engine_record`), so a header
whose fields do not fit is refused before any verb runs; each verb answers with its reply
record (protocol.replies, through the outbox), which the client reads back. The parts:
- engines.py: the registry, registration, heartbeats, deaths;
- engine_tasks.py: tasks sent to engines and their results;
- submits.py and validation.py: new tasks, checked, stored, taken back, reloaded; backlog.py:
  the queued tasks beyond the queue window (`--memory-budget`), kept only in the store;
- results.py: what a finished task stores, and the requests waiting for it;
- views.py: queue status, engines, one task, statistics;
- sched_calls.py: every call into the scheduler; `apply` carries out the actions it returns;
- outbox.py: what the turn sends, in its durability order; timers.py: when;
- the store's retention: results older than `keep_results` days are dropped at start and then
  hourly (`retention_pass`, store/retention.py), as a client's `clear` would drop them.

Client messages (every one carries `req`; the reply echoes it):
  hello, ping, ack{got, lost} (results taken in: credit.py), bye (a client closed, or left an
  old receive socket; a client silent for `forget_clients_after` seconds is forgotten as if it
  had said it, and its later messages are refused: clients.py), submit{tasks, watch},
  result{tids, block}, watch{tids}, wait{tids, budget}, abort{tid}, spin, status{verbose},
  clear{tids}, engines, stats, engine_exited{pid, status} (from a nanny), retire{engines}
  (take engines out of scheduling; each stops once it holds nothing; abort, clear and retire
  keep their answers for a resend: control_verbs.py),
  activity{since} and task{tid} (read-only, for the dashboard: stats.py keeps what they read),
  lease{n} and release (taskids a client numbers its run() tasks from: leases.py; a submit
  may then carry `tids` from its lease, and `release`)
  A submit with `watch` is answered with its taskids, then with `done` messages as its tasks
  finish (one request instead of a submit and a watch), within the client's credit: at most
  a window of them unacknowledged, the rest wait in the store (credit.py).
Engine control messages: register, hb (heartbeat), revoked, retired  ->  registered, hb (with
  `retire` once a retiring engine holds nothing), reregister,
  interrupt, revoke{dseq} (give back a buffered task, see the scheduler's stealing; `dseq`, not
  `seq`, which every header carries for the Wire's replay check)
Engine task messages: tasks (controller -> engine), results (engine -> controller)

Memory: when a burst of tasks has ended (the active count fell to an eighth of its peak) or a
clear dropped many results, `settle_memory` rebuilds the indexes by taskid to their size, and
once few tasks are active free memory goes back to the system (taskmill.memory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..defaults import DEFAULT_KEEP_RESULTS, FORGET_CLIENTS_AFTER
from ..depend import DependRunner
from ..errors import StoreError
from ..memory import QUIET, Burst, compact, give_back
from ..protocol import (
    Ack,
    HelloReply,
    PingReply,
    ResultQuery,
    Tids,
    client_record,
    engine_record,
)
from ..scheduler import (
    ArmTimer,
    CancelTimer,
    Dispatch,
    Drained,
    Finish,
    Interrupt,
    Revoke,
    Scheduler,
)
from ..stats import RecentActivity
from ..store import TaskStore, retention_pass
from ..wire import Wire
from .backlog import Backlog
from .clients import Clients
from .context import Context, Counters, Now, Settings
from .control_verbs import ControlVerbs
from .engine_tasks import EngineTasks
from .engines import STALL_SHARE, Engines
from .leases import CHECK_EVERY as LEASE_CHECK_EVERY
from .leases import Leases
from .outbox import ENGINE, Outbox, Outgoing
from .results import FailureContext, Results
from .sched_calls import Report, SchedulerCalls
from .submits import Submits
from .timers import Timers
from .validation import BadRequest
from .views import Views

log = logging.getLogger("taskmill.controller")

# Client requests that need not name the controller session (they change nothing; their
# replies tell it).
SESSIONLESS = frozenset({"hello", "ping"})
IDLE_POLL = 1.0  # seconds the loop waits at most when nothing is due
RETENTION_EVERY = 3600.0  # seconds between removals of results older than `keep_results`

REQ_TYPES = (int, str, bytes)  # what a request's `req` may be (a tuple: `int | str | bytes`
# builds a union object on every test)
ClientVerb = Callable[[bytes, Any, Any, list[Any]], None]  # (reply_to, req, record, frames)


class ControllerCore:
    """The scheduler, the store, the engine registry and the requests, without I/O."""

    def __init__(self, *, session: bytes, wire: Wire, store: TaskStore, heartbeat: float,
                 unmet_timeout: float, prefetch: int | None, now: Now,
                 keep_results: float = DEFAULT_KEEP_RESULTS,
                 forget_clients_after: float = FORGET_CLIENTS_AFTER,
                 queue_window: int | None = None, queue_bytes: int | None = None) -> None:
        # (`queue_window`: tasks held in memory at most, `queue_bytes` their payload bytes;
        # None, or no store on disk: no limit)
        backlog = Backlog(queue_window if store.durable else None, window_bytes=queue_bytes)
        sched = SchedulerCalls(Scheduler(unmet_timeout=unmet_timeout, slots=prefetch),
                               self.apply, backlog)
        self.sched = sched.sched  # (the scheduler itself: read-only, for tests and tools)
        self.depends = DependRunner()  # callable depends run with a deadline
        counters = Counters(started=now.wall)
        self.ctx = ctx = Context(
            session=session, settings=Settings(heartbeat, unmet_timeout), wire=wire,
            store=store, sched=sched, outbox=Outbox(session, store, wire.max_message, now.mono),
            leases=Leases(store, now.mono), clients=Clients(forget_clients_after),
            timers=Timers(), activity=RecentActivity(counters.started), counters=counters,
            now=now, backlog=backlog)
        self.engines = Engines(ctx)
        self.engine_tasks = EngineTasks(ctx, self.engines)
        slow_depends: set[int] = set()
        raised_depends: dict[int, str] = {}
        self.results = Results(ctx, FailureContext(
            death_reasons=self.engines.death_reasons, heard_last=self.engines.heard_last,
            lost_expired=self.engines.lost_expired,
            lost_grace=self.engines.lost_grace, slow_depends=slow_depends,
            depend_budget=self.depends.budget, unmet_timeout=unmet_timeout,
            raised_depends=raised_depends))
        self.submits = Submits(ctx, self.engines, self.results, self.depends, slow_depends,
                               raised_depends)
        self.views = Views(ctx, self.engines, self.results.waiting)
        self.turn_start = now.mono
        self.burst = Burst()  # when a burst of tasks has ended (see settle_memory)
        self.memory_to_give = False  # a burst ended: give memory back once it is quiet
        self.stall_end = float("-inf")  # monotonic end of the last loop turn that ran long
        et = self.engine_tasks
        self.engine_verbs: dict[str, Callable[..., None]] = {
            "hb": et.heartbeat, "results": et.results, "revoked": et.revoked,
            "leaving": et.leaving,
            "retired": lambda rec, ident, m, frames: self.engines.retired(rec)}
        cv = self.control_verbs = ControlVerbs(ctx, self.engines, self.submits,
                                               self.settle_memory)
        self.client_verbs: dict[str, ClientVerb] = {
            "hello": self.hello, "ping": self.ping, "submit": self.submits.submit,
            "result": self.result, "watch": self.watch, "wait": self.wait, "abort": cv.abort,
            "spin": cv.spin, "status": self.views.status, "clear": cv.clear,
            "engines": self.views.engines_verb, "stats": self.views.stats,
            "activity": self.views.activity, "retire": cv.retire,
            "task": self.views.task, "engine_exited": cv.engine_exited, "put": self.submits.put,
            "ack": self.ack, "bye": self.bye,
            "lease": self.submits.lease, "release": self.submits.release,
        }
        # What carries out each kind of action (the report goes to a Finish only).
        self.actions: dict[type, Callable[[Any, Report | None], None]] = {
            Dispatch: et.dispatch, Finish: self.results.finish, Interrupt: et.interrupt,
            Revoke: et.revoke, Drained: lambda a, report: self.engines.drained(a.eid),
            ArmTimer: lambda a, report: ctx.timers.arm(a.key, a.delay),
            CancelTimer: lambda a, report: ctx.timers.cancel(a.key),
        }
        ctx.timers.arm(("heartbeat-check",), self.check_interval())
        ctx.timers.arm(("ping",), 0.0)
        self.keep_results = keep_results  # days a finished result is kept
        ctx.timers.arm(("retention",), 0.0)
        ctx.timers.arm(("leases",), LEASE_CHECK_EVERY)
        ctx.timers.arm(("clients",), ctx.clients.check_every())
        self.submits.reload()
        ctx.timers.settle(now.mono)

    def check_interval(self) -> float:
        """Seconds between heartbeat checks: STALL_SHARE of a heartbeat."""
        return STALL_SHARE * self.ctx.settings.heartbeat

    # -- the loop's entry points -----------------------------------------------------------
    # Each one is handed the time it happens at; after each one (a message, a timer pass, a
    # flush) the loop reports the time its work was done (`settle_timers`): the timers it
    # armed count from then (see timers.py). A driver that does not (tests) has them count
    # from its next call.
    # The turn-level entry points take the monotonic time alone (a float).
    def settle_timers(self, mono: float) -> None:
        if self.ctx.timers.pending:
            self.ctx.timers.settle(mono)

    def on_client(self, ident: bytes, header: dict[str, Any], frames: list[Any],
                  now: Now) -> None:
        """A decoded client request."""
        ctx = self.ctx
        ctx.now = now
        if ctx.timers.pending:  # (by a driver that did not settle them)
            ctx.timers.settle(now.mono)
        outbox = ctx.outbox
        refused = ctx.wire.refused
        kind = header["type"]
        req = header.get("req")
        reply_to = header.get("rt", ident)
        if not isinstance(reply_to, bytes):
            reply_to = ident
        if kind != "bye" and not ctx.clients.heard(reply_to, now.mono):
            refused["forgotten-client"] += 1
            outbox.refuse(reply_to, req, ctx.clients.forgotten_text(), "forgotten")
            return
        if ctx.leases.by_holder:
            ctx.leases.seen(reply_to, now.mono)
        handler = self.client_verbs.get(kind)
        if handler is None:
            refused["unknown-type"] += 1
            outbox.refuse(reply_to, req, f"unknown request type {kind!r}")
            return
        if req is not None and not isinstance(req, REQ_TYPES):
            # (Results for one request travel together, keyed by it: it must be a plain key.)
            refused["bad-request"] += 1
            outbox.refuse(reply_to, req, f"bad {kind} request: req must be an int or a str")
            return
        if kind not in SESSIONLESS and header.get("session") != self.ctx.session:
            # Sent to an earlier controller (a client resends it, stamped anew), or a message
            # captured before a restart and replayed: it does nothing.
            refused["wrong-session"] += 1
            outbox.refuse(reply_to, req, f"a {kind} request for another controller session "
                          "(sent before the controller restarted, or replayed); it did nothing",
                          "session")
            return
        try:
            handler(reply_to, req, client_record(kind, header), frames)
        except StoreError as e:
            outbox.refuse(reply_to, req, str(e), "StoreError")
        except (BadRequest, KeyError, TypeError, ValueError, IndexError) as e:
            refused["bad-request"] += 1
            outbox.refuse(reply_to, req, f"bad {kind} request: {e}",
                          getattr(e, "error_type", None))
        except Exception as e:  # noqa: BLE001 - a bug here must not leave the client waiting
            refused["internal-error"] += 1
            log.exception("error handling a %r request", kind)
            outbox.refuse(reply_to, req, f"the controller failed on a {kind} request: {e!r}")

    def on_engine(self, ident: bytes, header: dict[str, Any], frames: list[Any],
                  now: Now) -> None:
        """A decoded engine message."""
        ctx = self.ctx
        ctx.now = now
        if ctx.timers.pending:
            ctx.timers.settle(now.mono)
        kind = header["type"]
        engines = self.engines
        eid = engines.by_ident.get(ident)
        rec = engines.records.get(eid) if eid is not None else None
        if rec is not None and rec.dead:
            rec = None
        if rec is not None:
            rec.last_seen = now.mono
        try:
            if kind == "hello":  # (no side effect: anyone connected may learn the session)
                engines.welcome(ident)
            elif kind == "register":
                engines.register(ident, engine_record(kind, header), header.get("session"))
            elif rec is None or header.get("session") != ctx.session:
                # An engine this controller does not know (it restarted, or declared it dead),
                # or a message of another controller session.
                if kind == "hb":
                    engines.reregister(ident, header.get("gen"))
                elif kind == "results":
                    engines.late_results(ident, header)
            elif (verb := self.engine_verbs.get(kind)) is not None:
                verb(rec, ident, engine_record(kind, header), frames)
            else:
                ctx.wire.refused["unknown-type"] += 1
        except (BadRequest, KeyError, TypeError, ValueError) as e:
            ctx.wire.refused["bad-engine-message"] += 1
            log.warning("bad %s message from engine %s: %r", kind, engines.by_ident.get(ident),
                        e)

    def on_pong(self, ident: bytes, payload: bytes, now: Now) -> None:
        """An engine's heart socket echoed a ping."""
        self.ctx.now = now
        self.engines.on_pong(ident, payload)

    def begin_turn(self, mono: float) -> None:
        self.turn_start = mono

    def polled(self, waited: float, timeout: float) -> None:
        """The poll returned after `waited` s, asked to wait `timeout`. Far longer: the whole
        process was paused (SIGSTOP, a suspended VM), its ZeroMQ thread too: silences count
        from now, as after a stalled turn (nobody is held to messages nothing read)."""
        if waited > timeout + STALL_SHARE * self.ctx.settings.heartbeat:
            self.stall_end = self.turn_start

    def end_turn(self, mono: float) -> None:
        if mono - self.turn_start > STALL_SHARE * self.ctx.settings.heartbeat:
            # This turn kept the loop from reading for a while (e.g. a slow depend): no
            # engine is held to answers it could not have been heard giving.
            self.stall_end = mono

    def fire_timers(self, now: Now) -> bool:
        """Handle the timers due at `now`; True if the heartbeat check was among them."""
        ctx = self.ctx
        ctx.now = now
        if ctx.timers.pending:
            ctx.timers.settle(now.mono)
        timers = ctx.timers
        checked = False
        while (key := timers.pop_due(now.mono)) is not None:
            if key[0] == "heartbeat-check":
                self.check_heartbeats(now)
                ctx.activity.sample_queue(now.wall, *ctx.sched.counts())
                checked = True
                timers.arm(key, self.check_interval())
            elif key[0] == "ping":
                self.engines.ping()
                timers.arm(key, ctx.settings.heartbeat)
            elif key[0] == "lost":
                self.engines.lost_engine_gone(key[1])
            elif key[0] == "abort-overdue":
                self.engine_tasks.abort_overdue(*key[1:], self.stall_end)
            elif key[0] == "leases":
                self.results.gone(ctx.leases.expire(now.mono, self.stall_end))
                timers.arm(key, LEASE_CHECK_EVERY)
            elif key[0] == "clients":
                self.forget_silent(now)
                timers.arm(key, ctx.clients.check_every())
            elif key[0] == "retention":
                retention_pass(ctx.store, self.keep_results, now.wall)
                timers.arm(key, RETENTION_EVERY)
            else:
                ctx.sched.timer_fired(key)
        return checked

    def forget_silent(self, now: Now) -> None:
        """Forget every client silent for `forget_clients_after` seconds (clients.py), as if
        it had said `bye`; a turn that kept the loop busy does not count as silence."""
        mono = now.mono
        if mono - self.turn_start > STALL_SHARE * self.ctx.settings.heartbeat:
            return  # (the clients' pings wait unread)
        for rt in self.ctx.clients.silent(mono, self.stall_end):
            log.info("forgot client %r: silent for over %gs", rt, self.ctx.clients.forget_after)
            self.results.forget_client(rt)

    def check_heartbeats(self, now: Now) -> None:
        """Declare dead every engine silent for longer than dead_after."""
        self.ctx.now = now
        self.engines.check_heartbeats(self.turn_start, self.stall_end)

    def flush(self, now: Now) -> list[Outgoing]:
        """Commit, then what to send, in order: what depends on nothing stored, then (once
        the commit is done) the submits' answers, to engines, to clients. While the store
        fails, only what depends on nothing stored goes out."""
        ctx = self.ctx
        ctx.now = now
        if ctx.timers.pending:
            ctx.timers.settle(now.mono)
        if ctx.backlog.doomed:  # (failed with what they wait for: stored in this commit)
            self.submits.fail_doomed()
        if ctx.backlog.n:  # (its rows were committed by an earlier turn: read before this one's)
            self.submits.refill()
        outbox = ctx.outbox
        held = outbox.held()
        error = outbox.commit(now.mono, held)
        if error is not None:
            self.submits.take_back(error)
        out = outbox.take_now() if outbox.now_out else []
        stored = self.engines.acking and not ctx.store.dirty()
        if held and (outbox.store_down_since is None or not ctx.store.dirty()):
            # (Each step is skipped when it has nothing to do: this runs every turn.)
            if outbox.new_submits:
                self.submits.answer()
            if outbox.to_engines or outbox.tasks_out:
                control, tasks = outbox.take_tasks()
                out.extend((ENGINE, ident, header, frames) for ident, header, frames in control)
                out.extend(self.engine_tasks.number_tasks(tasks))
            if outbox.to_clients or outbox.credits.ready:
                out.extend(outbox.take_client_messages())
        elif held and (outbox.to_clients or outbox.credits.ready):
            # (the store cannot write: what needs only committed rows goes, e.g. a result
            # committed before, so that a blocking read of it is answered as a quick one)
            out.extend(outbox.take_committed(ctx.store.unsaved))
        if stored:  # (after the clients' messages: an early ack is on no one's path)
            out.extend(self.engines.acks_stored())
        ctx.counters.messages_out += len(out)
        active = ctx.sched.active_count()
        if self.burst.ended(active):
            self.settle_memory()
        if self.memory_to_give and active <= QUIET:
            self.memory_to_give = False
            give_back(now.mono)
            ctx.counters.memory_settled += 1
        return out

    def settle_memory(self) -> None:
        """A burst of tasks has ended (or a clear dropped many results): rebuild the indexes
        by taskid to their size now, and give free memory back once at most QUIET tasks are
        active (its full collection then walks few objects; see taskmill.memory)."""
        ctx = self.ctx
        ctx.sched.compact()
        ctx.store.compact()
        for index in (self.results.waiters, ctx.started, ctx.running_since, ctx.activity.open,
                      self.engines.seq_of):
            compact(index)
        self.memory_to_give = True

    def wake_at(self, mono: float) -> float:
        """When the loop must run again at the latest (monotonic; `mono` is now): at once if
        something can be sent or tasks read back from the backlog, else at the next timer
        (or IDLE_POLL from now), or sooner the commit that uncommitted writes wait for."""
        ctx = self.ctx
        if ctx.outbox.pending(mono) or (ctx.backlog.n > 0 and self.submits.refill_due()):
            return mono
        deadline = ctx.timers.next_deadline()
        if deadline is None:
            deadline = mono + IDLE_POLL
        commit = ctx.outbox.commit_deadline()
        return deadline if commit is None else min(deadline, commit)

    def close(self) -> None:
        self.ctx.store.close()
        self.depends.close()

    # -- carrying out the scheduler's actions ----------------------------------------------
    def apply(self, actions: list[Any], report: Report | None = None) -> None:
        """Carry out actions in order; `report`: the engine report a RESULT Finish stores."""
        table = self.actions
        for a in actions:
            try:
                table[type(a)](a, report)
            except Exception:  # noqa: BLE001 - the other actions must still be carried out
                self.ctx.wire.refused["internal-error"] += 1
                log.exception("carrying out %r failed", a)

    # -- client verbs ----------------------------------------------------------------------
    def hello(self, rt: bytes, req: Any, m: Any, frames: list[Any]) -> None:
        if m.owner:  # (a client back after a restart: the run() leases it held are its)
            self.ctx.leases.claim(rt, m.owner, self.ctx.now.mono)
        self.ctx.outbox.reply(rt, req, HelloReply(__version__, self.engines.alive(),
                                                  self.ctx.wire.max_message), now=True)

    def ping(self, rt: bytes, req: Any, m: Any, frames: list[Any]) -> None:
        # `sent`: the results sent to this client so far (credit.py): a client that got
        # fewer lost some (they all left before this reply) and asks for them again.
        self.ctx.outbox.reply(rt, req, PingReply(self.ctx.outbox.credits.probe(rt)), now=True)

    def bye(self, rt: bytes, req: Any, m: Any, frames: list[Any]) -> None:
        """The client (its receive socket `rt`) is gone: nothing more is sent to it; closed
        for good (`keys`), its submit keys go too; gone to a new receive socket (`to`), its
        run() leases go there. No reply."""
        if m.to:
            self.ctx.leases.move(rt, m.to, self.ctx.now.mono)
        self.ctx.clients.left(rt)
        self.results.forget_client(rt)
        if m.keys:
            self.ctx.store.forget_keys(m.keys)

    def ack(self, rt: bytes, req: Any, m: Ack, frames: list[Any]) -> None:
        """The client took in its first `got` results (and, `lost`, missed the next ones):
        credit returns (credit.py). No reply."""
        self.ctx.outbox.credits.acked(rt, m.got, lost=bool(m.lost))

    def result(self, rt: bytes, req: Any, m: ResultQuery, frames: list[Any]) -> None:
        if m.block:
            self.results.add_waiter(rt, req, "result", m.tids)
        else:
            self.results.reply_results(rt, req, m.tids, asked=True)

    def watch(self, rt: bytes, req: Any, m: Tids, frames: list[Any]) -> None:
        self.results.add_waiter(rt, req, "watch", m.tids)

    def wait(self, rt: bytes, req: Any, m: Tids, frames: list[Any]) -> None:
        self.results.add_waiter(rt, req, "wait", m.tids, budget=m.budget)
