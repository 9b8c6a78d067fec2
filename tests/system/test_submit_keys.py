"""A controller's store on disk over a long life: the submit keys of a client that closed are
dropped while the controller runs; those of a client still open stay (they make a submit sent
again to a restarted controller get the same taskids)."""

from __future__ import annotations

import sqlite3

import pytest
from systest import poll

from taskmill import Cluster

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
