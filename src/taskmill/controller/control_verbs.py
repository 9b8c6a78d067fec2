"""The client verbs that change what the controller holds, apart from submits: abort, clear,
retire, spin, engine_exited. Those that may not be carried out twice (abort, clear, retire,
spin) keep their answers a while, so that one sent again is answered as the first time:

    abort / clear / retire / spin, with the client's `key` for the request
        --> carried out; the answer is kept under the key (the last KEPT answers), and those
            of abort, clear and retire also in the store, in the transaction that carries
            them out (a retiring engine's uuid is stored: store/retiring.py)
    the same request again, `resent` (the client's connection broke before the answer came,
    or the controller restarted: client/links.py) --> the kept answer, to the connection it
    came on; none kept (the first never arrived, or it was not stored before a crash)
    --> carried out now

Carried out twice, they would do no harm but answer wrongly: the tasks cleared the first time
are unknown the second, a task aborted the first time has finished by the second, an engine
that retired meanwhile is no longer retiring, a second pass dispatches nothing. A restarted
controller answers abort, clear and retire from its store (their effects are stored with
their answers: one that did not reach the disk is carried out again); it knows no pass of its
predecessor, so it carries out a spin sent again (a pass now).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from ..memory import BURST_MIN
from ..protocol import (
    Abort,
    AbortReply,
    Clear,
    ClearReply,
    EmptyReply,
    EngineExited,
    Retire,
    RetireReply,
    Spin,
    SpinReply,
)
from .context import Context
from .engines import Engines
from .submits import Submits

KEPT = 10_000  # answers kept (small records; a resend comes within seconds of the first)
EMPTY = EmptyReply()


class ControlVerbs:
    def __init__(self, ctx: Context, engines: Engines, submits: Submits,
                 settle_memory: Callable[[], None]) -> None:
        self.ctx = ctx
        self.engines = engines
        self.submits = submits
        self.settle_memory = settle_memory
        self.kept: OrderedDict[str, tuple[Any, bool]] = OrderedDict()  # key -> (answer, now)

    def once(self, rt: bytes, req: Any, m: Abort | Clear | Retire | Spin,
             carry_out: Callable[[], None], stored: type[msgspec.Struct] | None = None) -> None:
        """Carry out a request that may not be carried out twice (`carry_out`), keeping its
        answer under its key; or, resent, answer it as the first time (`stored`: the type of
        its answer, which the store keeps too)."""
        key = m.key
        if not key:
            carry_out()
            return
        # (looked up even when not marked resent: a client never sends one key twice unless
        # resending, so a second one is a replay, of a sender the replay table forgot)
        kept = self.kept.get(key)
        if kept is None and m.resent and stored is not None:
            answer = self.ctx.store.answered(key)  # (a restarted controller's predecessor's)
            if answer is not None:
                kept = (msgspec.convert(answer, stored), True)
        if kept is not None:
            self.ctx.counters.answers_given_again += 1
            self.ctx.outbox.reply(rt, req, kept[0], now=kept[1])
            return
        answers = self.ctx.outbox.answers = []
        try:
            carry_out()
        finally:
            self.ctx.outbox.answers = None
        if answers:  # (one: each of these verbs answers once)
            self.kept[key] = answers[-1]
        while len(self.kept) > KEPT:
            self.kept.popitem(last=False)

    def abort(self, rt: bytes, req: Any, m: Abort, frames: list[Any]) -> None:
        def carry_out() -> None:
            answer = self.aborted(m.tid)
            if m.key:  # (written by this turn's commit, with the abort's result)
                self.ctx.store.remember_answer(m.key, msgspec.to_builtins(answer))
            self.ctx.outbox.reply(rt, req, answer)

        self.once(rt, req, m, carry_out, AbortReply)

    def aborted(self, tid: int) -> AbortReply:
        ctx = self.ctx
        if tid in ctx.backlog:  # (read back now, to finish as aborted at once)
            self.submits.promote(tid)
        if ctx.sched.abort(tid):
            return AbortReply("aborted")
        if ctx.store.result_meta(tid) is not None:
            return AbortReply("finished")
        return AbortReply("unknown")

    def clear(self, rt: bytes, req: Any, m: Clear, frames: list[Any]) -> None:
        # (answered even while the store cannot write: the clear's rows are committed)
        self.once(rt, req, m, lambda: self.ctx.outbox.reply(rt, req, self.cleared(m),
                                                            committed=True), ClearReply)

    def cleared(self, m: Clear) -> ClearReply:
        ctx = self.ctx
        if ctx.backlog.doomed:  # (stored before the failure they follow is cleared)
            self.submits.fail_doomed()
        dropped, missing = ctx.store.clear(m.tids, m.key)  # (its answer kept with it)
        if dropped >= BURST_MIN:
            self.settle_memory()  # (given back at the end of this turn if it is quiet)
        return ClearReply(dropped, missing)

    def retire(self, rt: bytes, req: Any, m: Retire, frames: list[Any]) -> None:
        """Take engines out of scheduling; each stops once it holds nothing (engines.py).
        Answered with the ids that are retiring (the others are unknown or gone), once the
        store has it (a restarted controller retires them when they come back)."""
        def carry_out() -> None:
            answer = RetireReply(self.engines.retire(m.engines))
            if m.key:
                self.ctx.store.remember_answer(m.key, msgspec.to_builtins(answer))
            self.ctx.outbox.reply(rt, req, answer)

        self.once(rt, req, m, carry_out, RetireReply)

    def spin(self, rt: bytes, req: Any, m: Spin, frames: list[Any]) -> None:
        self.once(rt, req, m, lambda: self.ctx.outbox.reply(
            rt, req, SpinReply(self.ctx.sched.spin()), now=True))

    def engine_exited(self, rt: bytes, req: Any, m: EngineExited, frames: list[Any]) -> None:
        """A local nanny saw an engine process exit: no need to wait for its heartbeat."""
        self.engines.process_exited(m.pid, m.status)
        self.ctx.outbox.reply(rt, req, EMPTY)
