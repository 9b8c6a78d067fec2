"""TaskRejectError: a task says "not here, not now" until an engine is ready for it.

Every engine starts with `run = False` in its namespace. Ten MapTasks, each with 20 retries,
reject themselves wherever `run` is false; the controller keeps offering them around (each
rejection uses a retry, and an engine that rejected a task is skipped for it for a second or
until its properties change). Then `run = True` is set on two of the engines, and the tasks
finish there, and only there.

    taskmill run -n 4 examples/classic/task_reject.py
"""

import time

from taskmill import TaskRejectError, client

tc = client.TaskClient()

tc.run_all(client.StringTask("run = False"))


def map_task():
    if not run:  # noqa: F821 - `run` lives in the engine's namespace, set above
        raise TaskRejectError("task dependency not met")
    import taskmill

    return 3.0e8, taskmill.current_engine().engineid


taskids = [tc.run(client.MapTask(map_task, retries=20)) for _ in range(10)]
time.sleep(0.5)  # (let them be rejected a few times, as the original's interactive session)
print("while no engine is ready:", tc.queue_status())

ready = sorted(e["engineid"] for e in tc.engines() if e["state"] != "dead")[:2]
for eid in ready:
    tc.run(client.StringTask("run = True", depend={"engineid": eid}), block=True)
print("engines ready:", ready)

results = [tc.get_task_result(tid, block=True) for tid in taskids]
where = sorted({eid for _, eid in results})
print("all", len(results), "tasks returned", {value for value, _ in results},
      "on engines", where)
assert {value for value, _ in results} == {3.0e8} and set(where) <= set(ready)
