"""--prefetch: engines hold more than one task; buffered tasks can be aborted and survive deaths."""

from __future__ import annotations

import os
import signal

import pytest
from systest import poll, wait_for_file

from taskmill import Cluster, MapTask, TaskAborted

pytestmark = pytest.mark.timeout(180, method="thread")








def test_prefetch_buffers_tasks_and_they_can_be_aborted_or_rescued(tmp_path):
    gate = str(tmp_path / "gate")
    with Cluster(1, heartbeat=0.5, prefetch=3) as c, c.client() as tc:
        tids = [tc.run(MapTask(wait_for_file, (gate,))) for _ in range(4)]
        # One running and two buffered on the engine; the fourth waits in the controller.
        status = poll(lambda: (s := tc.queue_status())["pending"] == 3 and s)
        assert status["scheduled"] == 1
        tc.abort(tids[1])  # buffered on the engine
        with pytest.raises(TaskAborted):
            tc.get_task_result(tids[1])
        pid = next(iter(c.engine_pids.values()))
        os.kill(pid, signal.SIGKILL)  # the running task fails, buffered ones go back
        c.wait_for_engines(2, timeout=60)  # the nanny's replacement
        open(gate, "w").close()
        with pytest.raises(Exception, match="died"):
            tc.get_task_result(tids[0], block=True)
        new_pids = {tc.get_task_result(t, block=True) for t in tids[2:]}
        assert pid not in new_pids and len(new_pids) == 1
        assert tc.map(abs, range(-50, 0)) == list(range(50, 0, -1))
