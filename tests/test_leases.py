"""Leases of taskids (controller/leases.py) over both stores: what a client may use, what reads
as pending, what goes back, and that a lease is durable before it is answered."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmill.controller.leases import HOLDER_SILENCE, Leases
from taskmill.controller.validation import BadRequest
from taskmill.store import MemoryStore, SQLiteStore, StoredTask


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "t.db"))
    yield s
    s.close()


def _add(store, tid):
    store.add(StoredTask(tid, {"nodes": [], "after": []}, [], 1.0))


def test_a_holder_uses_its_own_ids_once_in_rising_order(store):
    leases = Leases(store)
    a = leases.grant(b"a", 4, 0.0)
    b = leases.grant(b"b", 4, 0.0)
    assert (a.start, a.end, b.start, b.end) == (0, 4, 4, 8)
    assert store.allocate() == 8  # (the counter is past both)
    assert all(leases.pending(t) for t in range(8)) and not leases.pending(8)
    assert leases.take(b"a", [0, 1]) == [0, 1]
    assert not leases.pending(0) and leases.pending(2)
    for holder, tids in ((b"a", [1]), (b"a", [5]), (b"b", [2]), (b"a", [3, 2]), (b"c", [0])):
        with pytest.raises(BadRequest):
            leases.take(holder, tids)
    assert leases.take(b"a", [3]) == [2, 3]  # 2 skipped: it passes as unknown
    assert not leases.pending(2)


def test_a_refused_batch_burns_its_ids(store):
    leases = Leases(store)
    leases.grant(b"a", 8, 0.0)
    assert leases.burn(b"a", [0, 1, 2]) == [0, 1, 2]
    with pytest.raises(BadRequest):
        leases.take(b"a", [2])
    assert leases.take(b"a", [3]) == [3]


def test_released_ids_go_back_only_when_nothing_came_after(store):
    leases = Leases(store)
    leases.grant(b"a", 8, 0.0)
    leases.take(b"a", [0, 1])
    assert leases.release(b"a") == list(range(2, 8))
    assert store.allocate() == 2  # given back: the next id is the next one of the client
    leases.grant(b"a", 8, 0.0)  # 3..10
    store.allocate()  # 11: after the lease
    assert leases.release(b"a") == list(range(3, 11))
    assert store.allocate() == 12  # not given back: ids never go backwards past one given


def test_a_silent_holder_loses_its_lease_and_its_ids_for_good(store):
    leases = Leases(store)
    leases.grant(b"a", 8, 0.0)
    leases.grant(b"b", 8, 0.0)
    leases.take(b"a", [0])
    leases.seen(b"b", HOLDER_SILENCE)
    assert leases.expire(HOLDER_SILENCE + 1) == list(range(1, 8))
    assert not leases.pending(1) and leases.pending(8)
    with pytest.raises(BadRequest, match="not leased to this client"):
        leases.take(b"a", [1])
    assert store.allocate() == 16  # (never given out again)


def test_a_lease_is_written_before_it_is_answered_and_a_restart_looks_at_it(tmp_path):
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    leases = Leases(s)
    leases.grant(b"a", 16, 0.0)
    assert s.dirty()  # (the controller commits before it answers the lease)
    s.commit()
    leases.take(b"a", [3])
    _add(s, 3)
    s.commit()  # (low_tid, written with the lease, must not have passed over it)
    s.abandon()  # as a kill -9 leaves it
    s2 = SQLiteStore(path)
    try:
        assert [t.tid for t, _ in s2.unfinished()] == [3]
        assert s2.allocate() == 16  # the leased ids are never given out again
    finally:
        s2.close()


# -- the counter across a kill -9: no id is given out twice, whatever came before ------------
_RUN = itertools.count()
_OPS = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(1, 3)),  # ids taken and their rows stored
    st.tuples(st.just("refuse"), st.integers(1, 3)),  # ids taken, no row (a refused submit)
    st.tuples(st.just("lease"), st.integers(1, 4)),
    st.tuples(st.just("give_back"), st.integers(0, 4)),  # the last lease ends, some unused
    st.tuples(st.just("clear"), st.just(0)),
    st.tuples(st.just("commit"), st.just(0)),
    st.tuples(st.just("kill"), st.just(0)),  # kill -9 (what is not committed is lost)
), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_no_taskid_is_given_out_twice_across_kills(tmp_path, ops):
    path = str(tmp_path / f"k{next(_RUN)}.db")
    store = SQLiteStore(path)
    given: set[int] = set()  # ids answered (after the commit that stored them): never again
    pending: set[int] = set()  # handed out, their answer waits for the next commit
    burned: set[int] = set()  # refused, never told to anyone: not again while the store lives
    leases: list[tuple[int, int]] = []
    try:
        for op, n in ops:
            if op == "lease":
                start = store.lease(n)
                tids = list(range(start, start + n))
                leases.append((start, start + n))
            elif op in ("submit", "refuse"):
                tids = [store.allocate() for _ in range(n)]
            if op in ("submit", "refuse", "lease"):
                assert not set(tids) & (given | pending | burned), (op, tids)
            if op == "submit":
                for t in tids:
                    _add(store, t)
                pending.update(tids)
            elif op == "refuse":
                burned.update(tids)
            elif op == "lease":
                pending.update(tids)  # (a lease is answered after the commit that writes it)
            elif op == "give_back" and leases:
                start, end = leases.pop()
                unused_from = max(start, end - n)
                store.end_lease(start, unused_from)
                pending.difference_update(range(unused_from, end))
                given.difference_update(range(unused_from, end))  # (never used by a task)
            elif op in ("clear", "commit"):
                store.clear(None) if op == "clear" else store.commit()
                given |= pending  # an answer goes out only after its commit
                pending.clear()
            elif op == "kill":
                store.abandon()
                store = SQLiteStore(path)
                pending.clear()  # never answered: those ids may be given again
                burned.clear()
                leases.clear()
        store.commit()
        given |= pending
        store.abandon()
        store = SQLiteStore(path)
        assert store.allocate() > max(given, default=-1)
    finally:
        store.close()


def test_a_lease_asked_again_by_its_key_is_the_one_granted_and_moves_to_the_asker(store):
    """A client whose answer was lost asks again, from a new connection, with the request's
    key: it gets the block granted first (a second one would skip its ids), now held by the
    new connection; a new key gets a new block; a lease ended forgets its key."""
    leases = Leases(store)
    a = leases.grant(b"old", 8, 0.0, "c:1")
    assert leases.known("c:1") and not leases.known("c:2") and not leases.known("")
    again = leases.grant(b"new", 8, 1.0, "c:1")
    assert again is a and store.allocate() == 8  # (no second block)
    assert leases.take(b"new", [0, 1]) == [0, 1]
    with pytest.raises(BadRequest):
        leases.take(b"old", [2])  # (the old connection holds nothing now)
    b = leases.grant(b"new", 4, 2.0, "c:2")
    assert (b.start, b.end) == (9, 13)
    assert sorted(leases.release(b"new")) == [*range(2, 8), *range(9, 13)]
    assert not leases.known("c:1") and not leases.known("c:2")
    assert leases.grant(b"new", 4, 3.0, "c:1").start == 9  # (ended: granted anew)


def test_a_lease_taken_back_ends_wherever_it_is_held(store):
    """A commit that failed takes back the lease it carried, though the client's connection
    that asked has moved it meanwhile; its ids go back and read as unknown, not pending."""
    leases = Leases(store)
    a = leases.grant(b"old", 8, 0.0, "c:1")
    leases.grant(b"new", 8, 0.0, "c:1")
    assert leases.holds(a.start)
    assert leases.take_back(a.start) == list(range(8))
    assert not leases.holds(a.start) and not leases.pending(0) and not leases.known("c:1")
    assert leases.take_back(a.start) == []
    assert store.allocate() == 0  # (given back: nothing came after it)


def test_a_lease_outlives_a_kill_and_waits_for_its_client_to_claim_it(tmp_path):
    """The SQLite store writes each lease's row (its owner: the client's key prefix) with the
    counter; a restarted controller holds it for that client, with the ids it has not used
    yet pending, until the client claims it (its hello, a keyed request) and goes on numbering
    from it; one not claimed ends as a silent holder's. A lease ended goes with its row."""
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    leases = Leases(s)
    leases.grant(b"a.r", 16, 0.0, "client-a:7")
    leases.grant(b"b.r", 8, 0.0, "client-b:3")
    leases.grant(b"c.r", 4, 0.0, "client-c:1")
    s.commit()
    assert leases.take(b"a.r", [0, 1, 2]) == [0, 1, 2]
    for t in (0, 1, 2):
        _add(s, t)
    assert sorted(leases.release(b"c.r")) == [24, 25, 26, 27]  # (given back: its row goes)
    s.commit()
    s.abandon()  # as a kill -9 leaves it
    s2 = SQLiteStore(path)
    try:
        assert s2.stored_leases == [(0, 16, "client-a:7", 3), (16, 24, "client-b:3", 16)]
        restarted = Leases(s2, 100.0)
        assert restarted.pending(3) and restarted.pending(16) and not restarted.pending(24)
        assert s2.allocate() == 24  # (past both, and c's given back)
        with pytest.raises(BadRequest):
            restarted.take(b"new-a.r", [3])  # (not claimed yet)
        restarted.claim(b"new-a.r", "client-a", 101.0)
        assert restarted.take(b"new-a.r", [3, 4]) == [3, 4]
        restarted.claim(b"other.r", "client-x", 101.0)  # (holds nothing: nothing happens)
        again = restarted.grant(b"new-b.r", 8, 101.0, "client-b:3")  # (its answer was lost)
        assert (again.start, again.end, again.next) == (16, 24, 16) and s2.allocate() == 25
        restarted.seen_at[b"new-b.r"] = 100.0  # (then b is silent)
        assert restarted.expire(100.0 + HOLDER_SILENCE + 0.5) == list(range(16, 24))
        assert not restarted.pending(16) and restarted.pending(5)
        s2.commit()
    finally:
        s2.abandon()
    s3 = SQLiteStore(path)  # (b's lease ended with its expiry; a's goes on from 5)
    try:
        assert s3.stored_leases == [(0, 16, "client-a:7", 3)]  # (no row stored for 3, 4 yet)
    finally:
        s3.close()


def test_a_memory_store_keeps_no_lease_across_a_restart():
    s = MemoryStore()
    Leases(s).grant(b"a.r", 8, 0.0, "client-a:1")
    assert MemoryStore().stored_leases == []


@pytest.mark.parametrize("crash", ["kill", "close"])
def test_a_restarted_controller_gives_a_client_its_lease_back(tmp_path, crash):
    """Driven in process (messages straight into the controller's core): a client's lease
    outlives the controller (killed: nothing more written; or closed). Started again on the
    same store, the controller refuses the lease's ids to a client that has not named itself,
    and gives the lease to the one whose hello names its key prefix; a lease request sent
    again (its answer lost with the first controller) gets the block it got the first time."""
    from testhelp import core_controller, inject

    from taskmill.connection import new_connection_info

    node = {"exec": {"kind": "map", "fn": 1}, "nframes": 2, "pmac": b"m" * 32}

    def request(ctl, header, frames=(), rt=b"a.r"):
        out = inject(ctl, False, rt, {"req": 7, **header}, frames)
        (reply,) = [h for _, ident, h, _ in out if h and h.get("type") == "reply"
                    and ident == rt]
        return reply

    def run(ctl, tids, key, rt):
        return request(ctl, {"type": "submit", "tasks": [{"nodes": [node]}] * len(tids),
                             "tids": tids, "key": key}, [b"function", b"args"] * len(tids), rt)

    path = str(tmp_path / "tasks.db")
    info = new_connection_info()
    running = core_controller(store=SQLiteStore(path), info=info, heartbeat=3600.0)
    first = running.__enter__()
    assert request(first, {"type": "lease", "n": 16, "key": "client-a:1"})["start"] == 0
    assert run(first, [0, 1], "client-a:2", b"a.r")["tids"] == [0, 1]
    if crash == "kill":
        first.store.abandon()
        first.sockets.close()
    else:
        running.__exit__(None, None, None)
    with core_controller(store=SQLiteStore(path), info=info, heartbeat=3600.0) as second:
        refused = run(second, [2], "client-b:1", b"b.r")  # (not this client's)
        assert refused["ok"] is False and refused["error_type"] == "lease-ended"
        request(second, {"type": "hello", "owner": "client-a"}, rt=b"a-again.r")
        assert run(second, [3, 4], "client-a:3", b"a-again.r")["tids"] == [3, 4]
        again = request(second, {"type": "lease", "n": 16, "key": "client-a:1",
                                 "resent": True}, rt=b"a-again.r")
        assert (again["start"], again["n"]) == (0, 16)  # (the same block: no ids skipped)
        assert request(second, {"type": "lease", "n": 16, "key": "client-a:4"},
                       rt=b"a-again.r")["start"] == 16  # (a new request: a new block)
