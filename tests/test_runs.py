"""run()'s queue (client/runs.py) against a stand-in connection: when batches leave, what the
next call waits for and raises."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from taskmill import ControllerUnreachable, RunNotStored, StoreError
from taskmill.client.codec import Encoded
from taskmill.client.runs import Runs


class FakeConnection:
    """Records what is sent; answers only when the test says so."""

    max_message = 1 << 20

    class info:  # noqa: N801 - (read as conn.info.client_url)
        client_url = "tcp://nowhere:1"

    def __init__(self) -> None:
        self.sent: list[tuple[dict, Future]] = []
        self.lock = threading.Lock()

    def send(self, header, frames=(), stream=None) -> Future:
        fut: Future = Future()
        with self.lock:
            self.sent.append((header, fut))
        return fut

    def check_process(self) -> None:
        """(Connection's refusal in a forked child: this one is never forked)"""

    def submits(self) -> list[dict]:
        with self.lock:
            return [h for h, _ in self.sent if h["type"] == "submit"]


def encoded() -> Encoded:
    enc = Encoded([{"nodes": [{"exec": {"kind": "map"}}], "after": []}, [b"x"]])
    enc.size = 64
    return enc


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.001)


@pytest.fixture
def runs():
    conn = FakeConnection()
    r = Runs(conn)
    r.conn = conn  # (for the tests)
    yield r
    r.close()


def test_a_lone_run_goes_at_once_and_the_next_ones_wait_for_its_answer_or_the_timer(runs):
    conn = runs.conn
    assert runs.add(encoded()) is None and runs.lease_wanted() == 16
    runs.leased(100, 16)
    assert runs.add(encoded()) == 100
    assert [s["tids"] for s in conn.submits()] == [[100]]  # at once: nothing was unanswered
    assert runs.add(encoded()) == 101 and runs.add(encoded()) == 102
    # Unanswered: they wait, but not for long (the flusher thread sends them by itself).
    wait_for(lambda: len(conn.submits()) == 2)
    assert conn.submits()[1]["tids"] == [101, 102]


def test_the_next_call_sends_what_waits_gives_the_lease_back_and_waits_for_the_answers(runs):
    conn = runs.conn
    runs.leased(0, 16)
    runs.add(encoded())
    runs.add(encoded())
    sent = runs.begin()
    headers = [h for h, _ in conn.sent]
    assert headers[-1].get("release") and headers[-1]["tids"] == [1]
    assert runs.lease_wanted() == 32  # (given back: the next run() asks again, for more)
    for _, fut in conn.sent:
        fut.set_result(({"type": "reply", "ok": True}, []))
    runs.end(sent, 1.0)
    assert not runs.busy()


def test_one_lease_request_at_a_time_the_other_threads_wait_for_it(runs):
    """Two threads of one client whose lease is used up: one asks, the other waits for that
    answer (two answers would overwrite each other, and a release of the second would end
    the first with its ids in use: one taskid went to two tasks)."""
    assert runs.add(encoded()) is None and runs.lease_wanted() == 16
    other = runs.lease_wanted()  # (the second thread's run())
    assert isinstance(other, Future) and not other.done()
    runs.leased(0, 16)
    runs.asked()
    assert other.done() and runs.lease_wanted() is None  # (its run() adds again)
    assert [runs.add(encoded()), runs.add(encoded())] == [0, 1]


def test_a_lease_request_that_failed_lets_the_waiting_thread_ask(runs):
    assert runs.add(encoded()) is None and runs.lease_wanted() == 16
    other = runs.lease_wanted()
    runs.asked()  # (no answer: unreachable, interrupted)
    assert other.done() and runs.lease_wanted() == 16


def test_a_refused_batch_is_raised_once_by_the_next_call(runs):
    conn = runs.conn
    runs.leased(0, 16)
    runs.add(encoded())
    conn.sent[0][1].set_result(({"type": "reply", "ok": False, "error_type": "StoreError",
                                 "error": "disk full"}, []))
    sent = runs.begin()
    for _, fut in conn.sent[1:]:
        fut.set_result(({"type": "reply", "ok": True}, []))
    with pytest.raises(RunNotStored, match="taskid 0 .*disk full") as e:
        runs.end(sent, 1.0)
    assert isinstance(e.value, StoreError) and e.value.taskids == [0]
    runs.end([], 1.0)  # (said once)


def refuse(fut: Future, error_type: str = "StoreError", error: str = "disk full") -> None:
    fut.set_result(({"type": "reply", "ok": False, "error_type": error_type, "error": error},
                    []))


def test_every_refused_batch_since_the_last_call_is_named_by_the_next(runs):
    # Two batches refused before the next call: its RunNotStored names the taskids of both
    # (it named the first batch's alone, and the second's were never said to be unknown).
    conn = runs.conn
    runs.leased(0, 16)
    runs.add(encoded())  # (goes at once: batch [0])
    runs.add(encoded())
    runs.add(encoded())  # (wait for the answer or the timer: batch [1, 2])
    wait_for(lambda: len(conn.submits()) == 2)
    runs.add(encoded())  # (batch [3]: sent once those two are answered)
    refuse(conn.sent[0][1])
    refuse(conn.sent[1][1])
    sent = runs.begin()
    assert [h["tids"] for h in conn.submits()][2] == [3]
    for _, fut in conn.sent[2:]:
        refuse(fut, "ValueError", "too big")
    with pytest.raises(RunNotStored, match=r"taskids 0\.\.3 .*disk full; too big") as e:
        runs.end(sent, 1.0)
    assert e.value.taskids == [0, 1, 2, 3]
    assert not isinstance(e.value, StoreError)  # (not all of them were the store's)
    runs.end([], 1.0)  # (said once)


def test_a_refusal_and_a_lost_answer_are_each_said_once(runs):
    conn = runs.conn
    runs.leased(10, 16)
    runs.add(encoded())
    runs.add(encoded())
    wait_for(lambda: len(conn.submits()) == 2)
    conn.sent[0][1].set_exception(ControllerUnreachable("gone"))
    refuse(conn.sent[1][1])
    sent = runs.begin()
    for _, fut in conn.sent[2:]:
        fut.set_result(({"type": "reply", "ok": True}, []))
    with pytest.raises(RunNotStored, match="taskid 11 ") as e:  # (the sure news first)
        runs.end(sent, 1.0)
    assert isinstance(e.value, StoreError) and e.value.taskids == [11]
    with pytest.raises(ControllerUnreachable, match="taskid 10 for may or may not be stored"):
        runs.end([], 1.0)
    runs.end([], 1.0)


def test_taskids_that_are_not_a_run_are_listed():
    from taskmill.errors import ids_text

    assert ids_text([7]) == "taskid 7"
    assert ids_text([3, 4, 5]) == "taskids 3..5"
    assert ids_text([3, 5, 9]) == "taskids 3, 5, 9"
    assert ids_text(list(range(0, 40, 2))) == "taskids 0, 2, 4, 6, 8, 10, 12, 14, ... (20 in all)"


def test_a_batch_never_answered_is_not_said_to_be_refused(runs):
    conn = runs.conn
    runs.leased(0, 16)
    runs.add(encoded())
    with pytest.raises(ControllerUnreachable, match="may or may not be stored"):
        runs.end(runs.begin(), 0.05)
    conn.sent[0][1].set_exception(ControllerUnreachable("gone"))
    with pytest.raises(ControllerUnreachable, match="taskid 0 for may or may not be stored"):
        runs.end([], 1.0)


def test_an_idle_run_gives_back_the_rest_of_its_lease_by_itself(runs, monkeypatch):
    """run() has taken no id for IDLE_RELEASE seconds: the flusher gives the rest back (those
    ids read as unfinished to every client until then: a wait on them would last as long as
    this client stays idle), after the batches of the lease; the next run() asks anew."""
    from taskmill.client import runs as runs_module

    monkeypatch.setattr(runs_module, "IDLE_RELEASE", 0.05)
    conn = runs.conn
    runs.leased(0, 16)
    assert runs.add(encoded()) == 0
    wait_for(lambda: any(h["type"] == "release" for h, _ in conn.sent))
    assert [h["type"] for h, _ in conn.sent] == ["submit", "release"]
    assert runs.lease_wanted() == 32  # (given back: the next run() asks again)
    for _, fut in conn.sent:
        fut.set_result(({"type": "reply", "ok": True}, []))
    runs.end(runs.begin(), 1.0)
    assert not runs.busy()


def test_a_give_back_that_cannot_be_sent_is_not_raised_as_a_refused_run(runs, monkeypatch):
    from taskmill.client import runs as runs_module

    monkeypatch.setattr(runs_module, "IDLE_RELEASE", 0.0)
    sent = threading.Event()

    def closed(header, frames=(), stream=None):
        sent.set()
        raise RuntimeError("the client is closed")

    runs.conn.send = closed
    runs.leased(0, 16)
    assert sent.wait(10)
    wait_for(lambda: runs.lease_wanted() == 32)
    runs.raise_failure()  # (nothing: no taskid was refused)
