"""Fixtures shared by the system tests on the shared 2-engine `cluster` (tests/conftest.py).

- `eids`: the ids of the cluster's live engines (there must be 2).
- `gate`: a `systest.Gate` that holds engines with blocking tasks; released and waited for
  at teardown, so the engines are free again for the next test.
- `engine_names`: names the test sets in engine namespaces; removed from every engine after.

Rules the tests on the shared cluster keep (test_seed_*.py, test_running_control.py, ...):
- They leave the shared engines as they found them: names a test sets in an engine's namespace
  are dropped again (`engine_names`), property changes happen only on private clusters, engines
  held by `gate` are released and waited for at teardown.
- They never sleep to wait for a condition: they poll with a deadline (`wait_until`), or hold an
  engine with a task that waits for a file the test creates. Nothing asserts on wall-clock time.
- Functions shipped to engines are defined inside tests, inside factories, in the test modules
  or in systest.py: tests/conftest.py registers all of them for pickling by value (the engines
  cannot import them).
- A blocking wait sits in a lock acquire that SIGALRM, delivered to some other thread (zmq's,
  the client's I/O thread), does not interrupt: pytest-timeout's default signal method can then
  wait forever. Their modules use `pytest.mark.timeout(..., method="thread")`, which always
  ends a hung test (dumping every thread's stack).
"""

from __future__ import annotations

import pytest
from systest import Gate, alive_engine_ids

from taskmill import StringTask


@pytest.fixture
def keep_leases(monkeypatch):
    """This process's clients keep the rest of their run() lease while idle (else given back
    after runs.IDLE_RELEASE seconds without a run()): for tests of what a held lease does."""
    from taskmill.client import runs

    monkeypatch.setattr(runs, "IDLE_RELEASE", 600.0)


@pytest.fixture
def eids(client) -> list[int]:
    ids = alive_engine_ids(client)
    assert len(ids) == 2, f"the shared cluster should have 2 live engines, has {ids}"
    return ids


@pytest.fixture
def gate(client, tmp_path):
    g = Gate(client, tmp_path)
    yield g
    g.close()


@pytest.fixture
def engine_names(client, eids):
    """A list of names the test sets in engine namespaces; they are removed from every engine."""
    names: list[str] = []
    yield names
    if names:
        for e in eids:
            tr = client.run(StringTask(f"[globals().pop(n, None) for n in {names!r}]",
                                       depend={"engineid": e}), block=True)
            tr.raise_exception()
