"""A controller's store on disk over a long life: the submit keys of a client that closed are
dropped while the controller runs; those of a client still open stay (they make a submit sent
again to a restarted controller get the same taskids)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest
from systest import controller_process, poll

from taskmill import Cluster, ControllerUnreachable, TaskClient

pytestmark = pytest.mark.timeout(120)


def noop() -> None:
    return None


def keys_by_client(db: str) -> dict[str, int]:
    """The submit keys in the store, counted by client (the key's prefix: its id and ':')."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT substr(key, 1, 33), COUNT(*) FROM submits GROUP BY 1"))
    finally:
        con.close()


def test_a_closed_clients_submit_keys_leave_the_store_and_an_open_ones_stay(tmp_path):
    db = str(tmp_path / "tasks.db")
    with Cluster(1, db=db) as c, c.client() as stays:
        for _ in range(4):
            stays.submit(noop).result()
        leaves = c.client()
        for _ in range(6):
            leaves.submit(noop).result()
        both = poll(lambda: (k := keys_by_client(db)) and sorted(k.values()) == [4, 6] and k,
                    what="both clients' submit keys stored")
        kept = next(p for p, n in both.items() if n == 4)
        leaves.close()

        def only_kept() -> bool:
            stays.submit(noop).result()  # (the keys go at a commit, a few each second)
            return set(keys_by_client(db)) == {kept}

        poll(only_kept, what="the closed client's submit keys dropped")
        assert keys_by_client(db)[kept] >= 5


def test_a_client_that_reconnects_keeps_its_submit_keys_in_the_store(tmp_path):
    # A client that finds the controller unreachable goes on under new socket ids but the same
    # key prefix; its `bye` for the old ids must not drop its keys, or a submit it sends
    # again to a later restarted controller would run twice.
    with controller_process(tmp_path, engines=1) as ctl:
        ctl.ready()
        tc = TaskClient(ctl.conn, timeout=30, reconnect_timeout=1)
        try:
            for _ in range(3):
                tc.submit(noop).result()
            os.kill(ctl.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(ControllerUnreachable):
                    tc.queue_status()  # (fails once the client declares it unreachable)
            finally:
                os.kill(ctl.proc.pid, signal.SIGCONT)

            def answers() -> bool:
                try:
                    tc.queue_status()
                    return True
                except ControllerUnreachable:
                    return False

            poll(answers, what="the client using the controller again")
            sent = 3
            # Submits for 3 s of the controller's commits (its closed-client keys go at a
            # commit once a second): every key of this client stays.
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                tc.submit(noop).result()
                sent += 1
                assert sorted(keys_by_client(ctl.db).values()) == [sent]
        finally:
            tc.close()


def test_an_unanswered_request_says_whether_it_may_have_taken_effect(tmp_path):
    """A request the controller never answered said only that it did not: of a submit or an
    abort, which it may have carried out, the caller could not tell that trying again may do
    it twice. (A quick request now waits out the controller's silence, up to the client's
    `reconnect_timeout`.)"""
    with controller_process(tmp_path, engines=1) as ctl:
        ctl.ready()
        with TaskClient(ctl.conn, timeout=1, reconnect_timeout=1) as tc:
            tid = tc.submit(noop).taskid
            os.kill(ctl.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(ControllerUnreachable,
                                   match=r"abort or clear it had not answered may or may not "
                                         r"have taken effect"):
                    tc.abort(tid)
            finally:
                os.kill(ctl.proc.pid, signal.SIGCONT)
