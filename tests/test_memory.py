"""Memory after a burst (taskmill.memory and its users): index dicts rebuilt to their size, small
frames copied out of shared receive buffers, the controller settling after a burst or a big
clear, and the per-task footprint of a TaskFuture and of the scheduler's task entries.

Footprints are counted with tracemalloc (bytes Python allocated, the same on every run), never
timed.
"""

from __future__ import annotations

import gc
import platform
import subprocess
import sys
import threading
import tracemalloc
from concurrent.futures import FIRST_COMPLETED, as_completed, wait
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from schedtest import make
from test_protocol import FRAMES, call, ctl, node  # noqa: F401 - ctl is a fixture

from taskmill.client.callbacks import Callbacks
from taskmill.client.codec import encode_task
from taskmill.client.futures import FutureCondition, TaskFuture
from taskmill.client.options import NO_OPTIONS
from taskmill.memory import (
    BURST_MIN,
    COLLECT_EVERY,
    Burst,
    Collections,
    compact,
    detached,
    give_back,
)
from taskmill.protocol import Outcome
from taskmill.scheduler import Node, Submit, Withdraw
from taskmill.task import MapTask
from taskmill.wire import FunctionPickles, Wire

MANY = BURST_MIN + 2_000


# -- the pieces --------------------------------------------------------------------------------
def test_compact_shrinks_a_dict_in_place_keeping_items_and_order():
    d = {i: str(i) for i in range(100_000)}
    for i in range(100_000):
        if i % 1000:
            del d[i]
    same, items, before = d, list(d.items()), sys.getsizeof(d)
    compact(d)
    assert d is same and list(d.items()) == items
    assert sys.getsizeof(d) < before / 50, (before, sys.getsizeof(d))


def test_compact_shrinks_a_set_in_place():
    s = set(range(100_000))
    for i in range(99_990):
        s.discard(i)  # (a table never shrinks on discard)
    before = sys.getsizeof(s)
    compact(s)
    assert s == set(range(99_990, 100_000)) and sys.getsizeof(s) < before / 50


def test_a_burst_ends_when_the_count_falls_to_an_eighth_of_a_big_high_water_mark():
    b = Burst(least=1000)
    assert not any(b.ended(n) for n in (10, 500, 999, 0))  # never big enough
    assert not any(b.ended(n) for n in (1000, 4000, 3000, 501))
    assert b.ended(500)  # 4000 / 8
    assert not b.ended(0)  # once: the mark starts again from 500
    assert not b.ended(400) and b.ended(0) is False


def test_give_back_collects_at_most_once_every_so_often(monkeypatch):
    """A full collection walks every object: a program that clears often while it holds a
    million futures must not pay for one at each clear."""

    runs = []
    monkeypatch.setattr(gc, "collect", lambda *a: runs.append(a) or 0)
    monkeypatch.setattr(Collections, "last", float("-inf"))
    assert give_back(1000.0) in (True, False)
    give_back(1000.0 + COLLECT_EVERY / 2)
    assert len(runs) == 1
    give_back(1000.0 + COLLECT_EVERY)
    assert len(runs) == 2


class FakeFrame:
    """Stands for a zmq.Frame received zero-copy: `bytes` copies it out."""

    def __init__(self, data: bytes) -> None:
        self.bytes = data

    def __len__(self) -> int:
        return len(self.bytes)


def test_detached_copies_small_zero_copy_frames_and_keeps_large_ones():
    small, large = FakeFrame(b"x" * 100), FakeFrame(b"y" * (1 << 20))
    out = detached([small, large, b"already bytes"])
    assert out[0] == b"x" * 100 and type(out[0]) is bytes
    assert out[1] is large and out[2] == b"already bytes"


class CopyingFrame:
    """Stands for a zmq.Frame as it is: its `bytes` property copies the frame out and keeps
    that copy in the frame (so a large frame kept would be held twice)."""

    def __init__(self, size: int) -> None:
        self.size, self.copies = size, 0

    def __len__(self) -> int:
        return self.size

    @property
    def bytes(self) -> bytes:
        self.copies += 1
        return b"z" * self.size


LARGE_FREED = """
import sys
from taskmill.memory import map_large
if sys.argv[1] == "map":
    assert map_large()
def anon():
    with open("/proc/self/status") as f:
        return int(f.read().split("RssAnon:")[1].split()[0]) >> 10
first = b"x" * (8 << 20)
del first  # (glibc's own threshold rises to a mapped block's size as it is freed: 8 MiB)
start = anon()
blocks, kept = [], []
for i in range(30):  # 120 MiB of payloads, each with something small kept beside it
    blocks.append(b"x" * (4 << 20))
    kept.append(b"y" * 100_000)
del blocks
print(anon() - start)
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_large_payloads_freed_go_back_to_the_system_with_map_large():
    def kept_mib(how):
        return int(subprocess.run([sys.executable, "-c", LARGE_FREED, how], check=True,
                                  capture_output=True, text=True, timeout=50).stdout)

    assert kept_mib("map") < 16  # (without map_large glibc keeps them: ~120 MiB here)


def test_detached_never_copies_a_large_frame_out():
    small, large = CopyingFrame(100), CopyingFrame(4 << 20)
    out = detached([small, large])
    assert out[1] is large and large.copies == 0  # (not even looked at: hasattr would)
    assert out[0] == b"z" * 100 and small.copies >= 1


# -- the client's futures ----------------------------------------------------------------------
class Owner:
    """What a TaskFuture asks of its client: decoding is the identity on the first frame."""

    connection: Any = SimpleNamespace(timeout=1.0, reconnect_timeout=1.0,
                                      on_io_thread=lambda: False)
    callbacks = Callbacks()

    def front(self) -> Any:
        return None

    def decode(self, meta: Outcome | None, frames: list[Any]) -> Any:
        assert meta is not None and meta.status == "ok" and meta.pmac == b"m" * 32
        return (meta.tid, bytes(frames[0]))

    def abort(self, taskid: int) -> None:
        raise AssertionError("not used here")


def entry(tid: int) -> Outcome:
    """A successful map's result entry as the controller sends it, read into its record as
    the client reads a `done` message (protocol.from_done)."""
    return msgspec.convert(
        {"tid": tid, "engineid": 1, "attempts": 1, "submitted": 1.5, "completed": 2.5,
         "started": 2.0, "status": "ok", "kind": "map", "error": None, "duration": 0.25,
         "stdout": "", "stderr": "", "pmac": b"m" * 32, "nframes": 1}, Outcome)


def test_a_future_decodes_from_what_it_kept_and_fills_its_metadata():
    owner = Owner()
    f = TaskFuture(owner, 7)
    md = f.metadata
    assert set(md.values()) == {None}
    f.set_outcome(entry(7), [FakeFrame(b"value")])
    assert f.result() == (7, b"value")
    assert f.metadata is md and md["engineid"] == 1 and md["duration"] == 0.25
    g = TaskFuture(owner, 8)  # metadata read only after it finished
    g.set_outcome(entry(8), [b"v"])
    assert g.metadata["completed"] == 2.5 and g.result() == (8, b"v")


def test_done_callbacks_run_whether_added_before_or_after_the_result():
    """(The list of callbacks is made for the first one.) One added before runs on the
    client's callbacks thread; one added after, at once, here."""
    import threading

    f, seen = TaskFuture(Owner(), 1), []
    ran = threading.Event()

    def before(fut):
        seen.append(("before", fut.result(), threading.current_thread().name))
        ran.set()

    f.add_done_callback(before)
    f.on_done(lambda fut: seen.append(("ours", fut.result(), threading.current_thread().name)))
    f.set_outcome(entry(1), [b"x"])
    assert ran.wait(10)
    f.add_done_callback(lambda fut: seen.append(("after", fut.result(),
                                                 threading.current_thread().name)))
    here = threading.current_thread().name
    assert sorted(seen) == [("after", (1, b"x"), here), ("before", (1, b"x"), "taskmill-callbacks"),
                            ("ours", (1, b"x"), here)]


def bytes_per_future(tids: range) -> tuple[float, float, list[TaskFuture]]:
    """Bytes each finished future holds (traced) before and after its result() is read."""
    owner = Owner()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        futs = [TaskFuture(owner, tid) for tid in tids]
        for f in futs:
            f.set_outcome(entry(f.known_taskid), [FakeFrame(b"a pickled value")])
        held = (tracemalloc.get_traced_memory()[0] - before) / len(tids)
        for f in futs:
            f.result()
        decoded = (tracemalloc.get_traced_memory()[0] - before) / len(tids)
    finally:
        tracemalloc.stop()
    return held, decoded, futs


@pytest.mark.timeout(60)
def test_a_finished_future_is_small():
    """~3.2 kB a future before (a threading.Condition each, the whole result entry, zero-copy
    frames); the bound leaves room for the interpreter's versions."""
    held, decoded, _ = bytes_per_future(range(2000))
    assert held < 1000, held
    assert decoded < 900, decoded


@pytest.mark.timeout(60)
def test_a_finished_future_is_smaller_still():
    """Slots instead of a __dict__, the condition being the lock itself, no list of waiters
    until one is added, the times packed: ~555 bytes held (~625 before), ~660 decoded (~735)."""
    gc.collect()  # (empties the free lists, whose spare tuples would not be counted)
    held, decoded, futs = bytes_per_future(range(1000, 3000))
    assert held < 600, held
    assert decoded < 700, decoded
    md = futs[5].metadata  # the packed times come back as they were
    assert (md["submitted"], md["started"], md["completed"], md["duration"]) == (
        1.5, 2.0, 2.5, 0.25)


def noop(x: int) -> int:
    return x


@pytest.mark.timeout(60)
def test_a_queued_submit_is_small():
    """What a client holds for a task submitted but not sent yet (a flood of submits queues
    behind the one unanswered submit): its encoded entry, its pending future and its place
    in the queue. ~1.9 kB before (the spec as dicts, the MapTask itself kept for errors);
    ~0.8 kB with the spec kept packed, as the message will carry it."""
    wire, functions, owner = Wire(b"k" * 32), FunctionPickles(), Owner()
    encode_task(NO_OPTIONS.task(noop, (0,), {}), wire, functions, validated=True)  # (cached)
    n = 2000
    gc.collect()  # (empties the free lists, whose spare tuples would not be counted)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        queue = [(encode_task(NO_OPTIONS.task(noop, (i,), {}), wire, functions,
                              validated=True), TaskFuture(owner)) for i in range(1000, 1000 + n)]
        per_task = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert per_task < 1000, per_task
    enc = queue[0][0]  # still readable as the pair it was
    spec, frames = enc
    assert spec["nodes"][0]["exec"]["kind"] == "map" and frames is enc.frames
    assert enc.what == "a MapTask calling noop" and not enc.synchronous


def test_an_encoded_task_knows_whether_only_the_controller_can_judge_it():
    wire = Wire(b"k" * 32)
    enc = encode_task(MapTask(abs, (1,), depend=bool), wire)
    assert enc.synchronous and enc.what == "a MapTask calling abs"
    assert not encode_task(MapTask(abs, (1,), depend={"gpu": 1}), wire).synchronous


@pytest.mark.timeout(60)
def test_futures_wait_and_as_completed_still_hear_of_a_result_from_another_thread():
    owner = Owner()
    futs = [TaskFuture(owner, tid) for tid in range(3)]
    go = threading.Event()

    def finish() -> None:
        go.wait(10)
        for tid, f in enumerate(futs):
            f.set_outcome(entry(tid), [b"r"])

    t = threading.Thread(target=finish)
    t.start()
    go.set()
    done, _ = wait(futs, timeout=10, return_when=FIRST_COMPLETED)
    assert done
    assert sorted(f.result(timeout=10) for f in as_completed(futs, timeout=10)) == [
        (0, b"r"), (1, b"r"), (2, b"r")]
    t.join(10)


def test_a_waiter_added_before_the_result_hears_of_it():
    """(A future's list of waiters is made by the first `wait` or `as_completed`.) One thread:
    as_completed installs its waiter on both futures and hands out the finished one; the
    other finishes after that, and as_completed hears of it without waiting."""
    owner = Owner()
    futs = [TaskFuture(owner, tid) for tid in range(2)]
    futs[0].set_outcome(entry(0), [b"r"])
    it = as_completed(futs, timeout=10)
    assert next(it) is futs[0]
    futs[1].set_outcome(entry(1), [b"s"])
    assert next(it) is futs[1] and list(it) == []
    done, pending = wait(futs, timeout=0)  # (and a second waiter after the first is gone)
    assert done == set(futs) and not pending


def test_future_condition_waits_with_a_timeout_and_is_notified():
    c = FutureCondition()
    with c:
        assert c.wait(0.01) is False  # nobody notifies
        c.notify_all()  # nobody waits: nothing happens
    woken = []
    ready = threading.Event()

    def waiter() -> None:
        with c:
            ready.set()  # (holding the lock until wait() releases it)
            woken.append(c.wait(10))

    t = threading.Thread(target=waiter)
    t.start()
    assert ready.wait(10)
    with c:  # got once the waiter waits
        c.notify_all()
    t.join(10)
    assert woken == [True]
    with c, c:  # re-entrant, as the Condition of a Future is
        pass


# -- the scheduler -----------------------------------------------------------------------------
def test_a_queued_task_costs_the_scheduler_little():
    """Its sets of engines are shared until one is added (216 bytes each otherwise)."""
    s = make()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for tid in range(2000):
            s.handle(Submit(tid, [Node()], dispatch=False))
        per_task = (tracemalloc.get_traced_memory()[0] - before) / 2000
    finally:
        tracemalloc.stop()
    assert per_task < 900, per_task
    s.handle(Withdraw(list(range(2000))))
    assert s.active_count() == 0


# -- the controller ----------------------------------------------------------------------------
def submit_many(ctl, n: int) -> list[int]:  # noqa: F811 - the fixture
    tids: list[int] = []
    for start in range(0, n, 1000):
        k = min(1000, n - start)
        reply = call(ctl, {"type": "submit", "watch": True,
                           "tasks": [{"nodes": [node()]} for _ in range(k)]}, FRAMES * k)
        tids.extend(reply["tids"])
    return tids


@pytest.mark.timeout(120)
def test_the_controller_settles_its_memory_when_a_burst_has_ended(ctl):  # noqa: F811
    tids = submit_many(ctl, MANY)  # no engine: all queued, each watched
    waiters = ctl.core.results.waiters
    full = sys.getsizeof(waiters)
    assert len(waiters) == MANY and ctl.counters.memory_settled == 0
    for tid in tids:  # each aborted: the burst ends as the last ones go
        assert call(ctl, {"type": "abort", "tid": tid})["ok"]
    assert ctl.core.sched.active_count() == 0
    assert ctl.counters.memory_settled == 1
    assert ctl.core.results.waiters is waiters and not waiters
    # rebuilt when an eighth of the burst was left, and not grown since
    assert sys.getsizeof(waiters) <= full / 6, (full, sys.getsizeof(waiters))
    # A clear that drops many results settles it again.
    assert call(ctl, {"type": "clear", "tids": None})["dropped"] == MANY
    assert ctl.counters.memory_settled == 2
