"""A process that holds a client forks (os.fork, multiprocessing's 'fork' start method): the
child cannot use the parent's client. It used to try: a submit's future waited for ever (no I/O
thread runs in the child), a query waited `timeout + reconnect_timeout` and then blamed the
controller, and run() handed out the parent's next leased taskid, never stored. Now every verb
in the child raises ClientClosed at once, saying to make a new client there.

On the shared 2-engine `cluster`; nothing asserts on wall-clock time (the parent waits for
the child with a deadline).
"""

from __future__ import annotations

import os
import time

import pytest
from systest import square

from taskmill import ClientClosed, MapTask

pytestmark = pytest.mark.timeout(120, method="thread")

CHILD_WAIT = 60.0  # seconds the parent waits for the child to report and exit


def child_report(client, w: int) -> None:
    """(In the forked child) Try the client's verbs; write what each did to `w`."""
    said = []
    for call in (lambda: client.run(MapTask(square, (4,))),
                 lambda: client.submit(square, 5),
                 client.queue_status):
        try:
            call()
            said.append("used")
        except ClientClosed as e:
            said.append("refused" if "fork" in str(e) and "new TaskClient" in str(e) else repr(e))
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which asserts
            said.append(repr(e))
    os.write(w, ",".join(said).encode())


def test_a_forked_child_is_refused_the_parents_client_and_takes_none_of_its_taskids(client):
    first = client.run(MapTask(square, (3,)))  # (run() leases ids: the child would take the next)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            child_report(client, w)
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + CHILD_WAIT
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    with os.fdopen(r, "rb") as pipe:
        said = pipe.read().decode()
    assert said == "refused,refused,refused", said
    second = client.run(MapTask(square, (6,)))
    assert second == first + 1
    assert client.get_task_result(first, block=True, timeout=30) == 9
    assert client.get_task_result(second, block=True, timeout=30) == 36
