"""Shared fixtures: a private TASKMILL_DIR per run and a shared 2-engine cluster."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest

# Never touch the user's ~/.taskmill from tests.
os.environ["TASKMILL_DIR"] = tempfile.mkdtemp(prefix="taskmill-test-home-")
os.environ.pop("TASKMILL_CONNECTION", None)

# A run started from a background job (`make test &`; make keeps an ignored signal ignored)
# inherits SIGINT ignored: Python then never raises KeyboardInterrupt, here or in the scripts
# the tests start, and every test that presses Ctrl-C waits in vain. Python's own handler
# here; the children then start with the default (a handler is not inherited across exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def cluster():
    """A 2-engine cluster shared by the tests that do not need one of their own.

    Tests using it must leave the engines as they found them (no lasting properties, no
    killed engines); tests that break things start their own `Cluster`.
    """
    from taskmill import Cluster

    with Cluster(2, heartbeat=0.5, unmet_timeout=2.0) as c:
        yield c


@pytest.fixture
def client(cluster):
    tc = cluster.client()
    yield tc
    tc.close()


def pytest_collection_finish(session):
    """Ship test-module functions by value: engines cannot import the test modules."""
    import sys

    import cloudpickle

    modules = {item.module for item in session.items if getattr(item, "module", None)}
    if "systest" in sys.modules:  # tests/system/systest.py, the shared helpers
        modules.add(sys.modules["systest"])
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
