"""The results credit (controller/credit.py with the client's client/credit.py), as pure code.

A model of one client and its controller: results finish (their payload kept, or only their
taskid), the controller takes what its credit allows into a pipe, the pipe delivers to the
client's Intake, drops everything in it (a connection ZeroMQ closed), carries acks and ping
replies, and something the client said may arrive again; the controller may restart (a new Credits; the client starts counting again and asks
again for what it has not got). Whatever the order, the client takes in every result exactly
once, and the controller never has more than its window unacknowledged.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from taskmill.client.credit import LOST_ASK_EVERY, Intake
from taskmill.controller.credit import RESULT_OVERHEAD, Credits, result_size

RT = b"client.r"
WINDOW = 5
WINDOW_BYTES = 3 * RESULT_OVERHEAD + 300


def payload(tid: int) -> list[bytes]:
    return [b"x" * (tid * 37 % 250)] if tid % 3 else []


def stored(tid: int) -> tuple[dict, list[bytes]]:
    frames = payload(tid)
    return {"tid": tid, "nframes": len(frames)}, frames


class Model:
    def __init__(self) -> None:
        self.credits = Credits(WINDOW, WINDOW_BYTES)
        self.intake = Intake()
        self.pipe: list[tuple[str, dict, list]] = []  # controller -> client, in order
        self.back: list[dict] = []  # client -> controller, in order
        self.finished: list[int] = []
        self.taken: list[int] = []
        self.now = 0.0
        self.said: list[dict] = []  # what the client said, for `repeat`

    def finish(self, keep: bool) -> None:
        tid = len(self.finished) + 1
        self.finished.append(tid)
        meta, frames = stored(tid)
        self.credits.offer(RT, 7, tid, meta if keep else None, frames)

    def flush(self) -> None:
        for rt, req, at, entries, frames, ask in self.credits.take(stored):
            assert rt == RT and req == 7
            header = {"type": "done", "at": at, "results": entries}
            if ask:
                header["ask"] = True
            self.pipe.append(("done", header, frames))
        c = self.credits.clients.get(RT)
        if c is not None:  # never more than the window unacknowledged
            assert len(c.inflight) <= WINDOW
            assert len(c.inflight) == 1 or c.inflight_bytes <= WINDOW_BYTES
            assert c.inflight_bytes == sum(s.size for s in c.inflight)

    def ping(self) -> None:
        said = self.intake.tick()
        if said is not None:
            self.back.append(said)
        self.pipe.append(("pong", {"sent": self.credits.probe(RT)}, []))

    def deliver(self, n: int) -> None:
        for kind, header, frames in self.pipe[:n]:
            if kind == "pong":
                said = self.intake.probe(header["sent"], self.now)
            else:
                fresh, said = self.intake.take(header, frames, self.now)
                if fresh is not None:
                    h, fr = fresh
                    pos = 0
                    for meta in h["results"]:
                        assert fr[pos:pos + meta["nframes"]] == payload(meta["tid"])
                        pos += meta["nframes"]
                        self.taken.append(meta["tid"])
            if said is not None:
                self.back.append(said)
                self.said.append(said)
        del self.pipe[:n]

    def repeat(self, back: int) -> None:
        """Something the client said arrives again (it said it again: an ack at a ping, a
        loss reported again after LOST_ASK_EVERY), `back` messages before its last."""
        if self.said:
            self.back.append(self.said[-1 - back % len(self.said)])

    def answer(self, n: int) -> None:
        for m in self.back[:n]:
            if m.get("lost"):
                self.credits.lost(RT, m["got"])
            else:
                self.credits.acked(RT, m["got"])
        del self.back[:n]

    def drop(self) -> None:
        self.pipe.clear()

    def restart(self) -> None:
        """A new controller: the client counts from 0 and watches again what it lacks."""
        self.credits = Credits(WINDOW, WINDOW_BYTES)
        self.pipe.clear()
        self.back.clear()
        self.said.clear()
        self.intake.reset()
        for tid in self.finished:
            if tid not in self.taken:
                meta, frames = stored(tid)
                self.credits.offer(RT, 7, tid, meta, frames)

    def settle(self) -> None:
        for _ in range(10 * len(self.finished) + 20):
            self.now += LOST_ASK_EVERY
            self.flush()
            self.ping()
            self.deliver(len(self.pipe))
            self.answer(len(self.back))


# (op, argument): finish keeping the payload or not; deliver/answer that many messages;
# let that many seconds pass; the rest take none. The commoner ones appear more often.
OPS = st.tuples(st.sampled_from(
    ["finish"] * 3 + ["flush"] * 3 + ["deliver"] * 3 + ["answer"] * 3 + ["ping"] * 2
    + ["repeat"] * 2 + ["drop", "restart", "time"]), st.integers(0, 4))
@settings(max_examples=600, deadline=None)
@given(st.lists(OPS, min_size=20, max_size=150))
def test_every_result_is_taken_in_once_and_the_window_holds(ops):
    m = Model()
    for op, arg in ops:
        if op == "finish":
            m.finish(arg % 2 == 0)
        elif op == "time":
            m.now += arg
        elif op in ("deliver", "answer", "repeat"):
            getattr(m, op)(arg)
        else:
            getattr(m, op)()
        assert len(m.taken) == len(set(m.taken))  # never twice
    m.settle()
    assert sorted(m.taken) == m.finished


def test_a_client_that_does_not_read_gets_one_window_and_the_rest_waits_as_taskids():
    credits = Credits(WINDOW, 10**9)
    for tid in range(1, 101):
        credits.offer(RT, 1, tid, *stored(tid))
    batches = credits.take(stored)
    assert sum(len(b[3]) for b in batches) == WINDOW
    assert batches[-1][5]  # results wait: the last message asks for an ack
    assert credits.take(stored) == []  # nothing more until it acknowledges
    held = credits.held()
    assert held["results_in_flight_to_clients"] == WINDOW
    assert held["results_held_for_clients"] == 100 - WINDOW
    assert held["results_in_memory_for_clients"] == 0  # beyond the window: in the store only
    credits.acked(RT, 2)
    assert [b[2] for b in credits.take(stored)] == [WINDOW]  # numbered on
    assert credits.held()["results_in_flight_to_clients"] == WINDOW


def test_while_a_window_is_in_flight_a_second_one_waits_with_its_payload():
    """A client a little late with its ack: the results that come meanwhile keep their
    payload up to a second window (sent without a read from the store once the ack comes);
    only those beyond it wait as taskids and are read back."""
    credits = Credits(WINDOW, 10**9)
    for tid in range(1, WINDOW + 1):
        credits.offer(RT, 1, tid, *stored(tid))
    assert sum(len(b[3]) for b in credits.take(stored)) == WINDOW  # in flight: a full window
    for tid in range(WINDOW + 1, 3 * WINDOW + 1):  # two windows more come meanwhile
        credits.offer(RT, 1, tid, *stored(tid))
    held = credits.held()
    assert held["results_held_for_clients"] == 2 * WINDOW
    assert held["results_in_memory_for_clients"] == WINDOW  # the second window; the third
    reads = []

    def load(tid: int) -> tuple[dict, list[bytes]]:
        reads.append(tid)
        return stored(tid)

    credits.acked(RT, WINDOW)
    batches = credits.take(load)
    assert [e["tid"] for b in batches for e in b[3]] == list(range(WINDOW + 1, 2 * WINDOW + 1))
    assert reads == [] and credits.held()["results_read_back_for_clients"] == 0
    credits.acked(RT, 2 * WINDOW)
    batches = credits.take(load)
    assert [e["tid"] for b in batches for e in b[3]] == list(range(2 * WINDOW + 1,
                                                                   3 * WINDOW + 1))
    assert reads == list(range(2 * WINDOW + 1, 3 * WINDOW + 1))  # (waited as taskids)
    assert credits.held()["results_read_back_for_clients"] == WINDOW


def test_a_result_larger_than_the_byte_window_waits_as_a_taskid_while_another_is_in_flight():
    credits = Credits(WINDOW, 100)
    big = [b"y" * 1000]
    credits.offer(RT, 1, 1, {"tid": 1, "nframes": 1}, big)  # nothing in flight: kept, goes now
    assert credits.held()["results_in_memory_for_clients"] == 1
    (batch,) = credits.take(stored)
    credits.offer(RT, 1, 2, {"tid": 2, "nframes": 1}, big)  # one in flight: in the store only
    assert credits.held()["results_in_memory_for_clients"] == 0


def test_a_result_larger_than_the_byte_window_goes_alone():
    credits = Credits(WINDOW, 100)
    big = [b"y" * 1000]
    credits.offer(RT, 1, 1, {"tid": 1, "nframes": 1}, big)
    credits.offer(RT, 1, 2, {"tid": 2, "nframes": 1}, big)
    (batch,) = credits.take(lambda tid: ({"tid": tid, "nframes": 1}, big))
    assert batch[3] == [{"tid": 1, "nframes": 1}] and batch[5]
    assert credits.held()["result_bytes_in_flight_to_clients"] == result_size(big)
    credits.acked(RT, 1)
    (batch,) = credits.take(lambda tid: ({"tid": tid, "nframes": 1}, big))
    assert batch[2] == 1 and batch[3] == [{"tid": 2, "nframes": 1}]


def test_lost_results_are_sent_again_under_the_same_numbers():
    credits = Credits(WINDOW, 10**9)
    for tid in range(1, 4):
        credits.offer(RT, 1, tid, *stored(tid))
    first = credits.take(stored)
    credits.lost(RT, 1)  # the client got one, lost the others
    again = credits.take(stored)
    assert [(b[2], [e["tid"] for e in b[3]]) for b in again] == [(1, [2, 3])]
    assert again[-1][5] and first[0][2] == 0
    assert credits.held()["results_sent_again_to_clients"] == 2


def test_the_client_takes_results_in_order_once():
    intake = Intake()

    def done(at: int, tids: list[int], ask: bool = False) -> dict:
        return {"type": "done", "at": at, "results": [{"tid": t, "nframes": 1} for t in tids],
                **({"ask": True} if ask else {})}

    def frames(tids: list[int]) -> list[bytes]:
        return [b"%d" % t for t in tids]

    fresh, said = intake.take(done(0, [10, 11]), frames([10, 11]), 0.0)
    assert [m["tid"] for m in fresh[0]["results"]] == [10, 11] and said is None
    assert intake.take(done(0, [10, 11]), frames([10, 11]), 0.0) == (None, None)  # seen
    fresh, said = intake.take(done(1, [11, 12], ask=True), frames([11, 12]), 0.0)
    assert fresh == ({**done(1, [11, 12], ask=True), "results": [{"tid": 12, "nframes": 1}]},
                     [b"12"])  # the part it has not seen
    assert said == {"type": "ack", "req": 0, "got": 3, "lost": False}  # (built from Ack)
    fresh, said = intake.take(done(5, [15]), frames([15]), 0.0)  # 3 and 4 were lost
    assert fresh is None and said == {"type": "ack", "req": 0, "got": 3, "lost": True}
    assert intake.take(done(6, [16]), frames([16]), 1.0) == (None, None)  # (said already)
    assert intake.probe(7, LOST_ASK_EVERY + 1)["lost"]  # not heard: said again
    assert intake.probe(3, 99.0) is None and intake.tick() is None


def test_a_window_of_fewer_than_two_is_refused():
    import pytest

    with pytest.raises(ValueError, match="results window"):
        Credits(1, 100)
