"""What task code logs lands in the task's stderr; the engine's own records stay in its log.

Task code sees logging as a fresh interpreter has it: no handler, the root logger at WARNING.
So `logging.warning(...)` (Python's last-resort handler) and anything a handler task code set up
itself (`logging.basicConfig(level=INFO)`) reach the running task's captured stderr
(`TaskResult.stderr`, `metadata["stderr"]`), while `logging.info` without any set-up is dropped,
as it is in a plain script. The engine's records (`taskmill.engine`) go to the engine's log.
"""

from __future__ import annotations

import logging

import pytest

from taskmill import Cluster, MapTask, StringTask

pytestmark = pytest.mark.timeout(120, method="thread")


def log_warning(message):
    logging.getLogger("mylib.part").warning(message)
    return message


def log_info(message):
    logging.info(message)
    return message


def configure_info():
    # force: an earlier task's `logging.warning(...)` made a handler already (basicConfig), as
    # in a plain script; the engine keeps logging's set-up from task to task like its namespace
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        force=True)


@pytest.fixture(scope="module")
def cluster():
    with Cluster(1, heartbeat=0.5) as c:  # one engine: every task runs on the same one
        yield c


@pytest.fixture
def tc(cluster):
    with cluster.client() as tc:
        yield tc


def test_a_warning_logged_by_a_stringtask_is_in_its_stderr(tc):
    tr = tc.run(StringTask("import logging; logging.warning('disk almost full'); x = 1",
                           pull="x"), block=True)
    assert tr.failure is None and tr.results == {"x": 1}
    assert "disk almost full" in tr.stderr
    assert tr.stdout == ""


def test_a_record_from_a_maptask_and_a_submit_is_in_metadata_stderr(tc):
    tid = tc.run(MapTask(log_warning, ("from a MapTask",)))
    assert tc.get_task_result(tid, block=True) == "from a MapTask"
    g = tc.future(tid)
    assert g.result(timeout=60) == "from a MapTask"
    assert "from a MapTask" in g.metadata["stderr"]
    f = tc.submit(log_warning, "from submit")
    assert f.result(timeout=60) == "from submit"
    assert "from submit" in f.metadata["stderr"]
    assert "from a MapTask" not in f.metadata["stderr"]  # no leak into the next task


def test_info_needs_a_level_as_in_a_plain_script_and_then_reaches_later_tasks(tc, cluster):
    # No set-up: the root logger is at WARNING, as in a fresh interpreter; info is dropped.
    quiet = tc.submit(log_info, "quiet info")
    assert quiet.result(timeout=60) == "quiet info"
    assert "quiet info" not in quiet.metadata["stderr"]
    try:
        tc.submit(configure_info).result(timeout=60)
        first = tc.submit(log_info, "first info")
        second = tc.submit(log_info, "second info")
        assert second.result(timeout=60) and first.result(timeout=60)
        # The handler basicConfig made in one task writes into each later task's own stderr.
        assert first.metadata["stderr"] == "INFO root: first info\n"
        assert second.metadata["stderr"] == "INFO root: second info\n"
        tr = tc.run(StringTask("pass"), block=True)
        assert tr.stderr == ""
    finally:
        tc.run(StringTask("import logging; logging.getLogger().handlers.clear(); "
                          "logging.getLogger().setLevel(logging.WARNING)"), block=True)
    # The engine's own records stay in its log, and task records never go there.
    log = cluster.log_tail("engine-0", 10_000)
    assert "taskmill.engine" in log and "registered as engine" in log
    for message in ("disk almost full", "first info", "second info", "from submit"):
        assert message not in log, log
