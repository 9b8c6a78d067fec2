"""A farm of StringTasks in the original task client's style: push, pull, queue_status.

Each task computes one row of a multiplication table from values pushed into the engine's
namespace and pulls the result back; the script watches the queue while the tasks run,
aborts the last few that are still waiting, and collects the others.

    taskmill run -n 4 examples/classic/task_farm.py

Written for IPython.kernel, it would begin `from IPython.kernel import client`; here only
that import changes.
"""

import time

from taskmill import client

tc = client.TaskClient()

code = """\
import time
time.sleep(pause)
row = [n * k for k in range(1, 11)]
"""

taskids = []
for n in range(1, 41):
    t = client.StringTask(code, push=dict(n=n, pause=0.05), pull="row")
    taskids.append(tc.run(t))
print("submitted tasks", taskids[0], "to", taskids[-1])

print("queue status:", tc.queue_status())
print("verbose:", {k: len(v) for k, v in tc.queue_status(verbose=True).items()}, "(ids)")

# Abort the last few tasks that are still waiting in the controller.
scheduled = tc.queue_status(verbose=True)["scheduled"]
aborted = scheduled[-4:]
for tid in aborted:
    try:
        tc.abort(tid)
    except IndexError:  # it finished meanwhile: "Task Already Completed"
        aborted.remove(tid)
print("aborted", len(aborted), "waiting tasks")

while True:  # poll, as the original examples do
    status = tc.queue_status()
    if status["scheduled"] == 0 and status["pending"] == 0:
        break
    time.sleep(0.2)

tc.barrier(taskids)
rows = {}
for tid in taskids:
    if tid in aborted:
        continue
    tr = tc.get_task_result(tid)
    tr.raise_exception()
    rows[tid] = tr.ns.row
assert all(row == [row[0] * k for k in range(1, 11)] for row in rows.values())
print("final queue status:", tc.queue_status())
print(f"collected {len(rows)} rows; sum of all products: {sum(map(sum, rows.values()))}")
