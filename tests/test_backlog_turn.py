"""One loop turn of a controller with a backlog (controller/backlog.py), driven in process: a
turn commits the store once, in its flush, and answers only after that commit (core.py
`flush`, outbox.py). An abort of a backlog task submitted in the same turn (its row not yet
written) is stored by that same commit and answered after it; nothing commits mid-turn."""

from __future__ import annotations

import sqlite3

import msgpack
import pytest
from test_protocol import FRAMES, node, now

from taskmill.connection import new_connection_info
from taskmill.controller import Controller
from taskmill.store import SQLiteStore
from taskmill.wire import Wire


@pytest.mark.parametrize("size", [9, 100_000])  # (a large frame goes to a file of its own)
def test_an_abort_of_a_backlog_task_submitted_in_the_same_turn_waits_for_its_commit(tmp_path,
                                                                                    size):
    info = new_connection_info()
    path = str(tmp_path / "t.db")
    ctl = Controller(info, store=SQLiteStore(path), heartbeat=3600.0, queue_window=4)
    wire = Wire(info.key_bytes)
    commits: list[str] = []
    store = ctl.store
    real_commit = store.commit

    def commit(**kw):
        commits.append("flush" if flushing else "mid-turn")
        real_commit(**kw)

    store.commit = commit
    flushing = False
    try:
        def request(header, frames=()):
            header["session"] = ctl.session
            h, f = ctl.wire.decode(wire.encode(header, list(frames)))
            ctl.core.on_client(b"client-1", h, f, now())

        # One turn: a submit of 10 tasks (6 of them beyond the window of 4) and an abort of
        # one of those, before the turn's flush.
        frames = [FRAMES[0], b"a" * size]
        request({"type": "submit", "req": 1, "tasks": [{"nodes": [node()]}] * 10},
                 frames * 10)
        assert ctl.statistics()["backlog"] == 6
        request({"type": "abort", "req": 2, "tid": 8})
        assert commits == []  # (nothing is written before the turn's flush)
        flushing = True
        out = ctl.core.flush(now())
        assert commits == ["flush"]  # one commit, which stores the submit and the abort
        replies = {h["req"]: h for _, _, h, _ in out if h and h.get("type") == "reply"}
        assert replies[1]["tids"] == list(range(10))
        assert replies[2]["ok"] and replies[2]["status"] == "aborted"
        with sqlite3.connect(path) as db:  # (what that commit wrote, read by another reader)
            state, meta = db.execute(
                "SELECT state, result_meta FROM tasks WHERE tid=8").fetchone()
        assert state == "finished" and msgpack.unpackb(meta)["status"] == "aborted"
        assert ctl.statistics()["backlog"] == 5
        assert ctl.queue_status()["failed"] == 1
        files = {f.name for f in (tmp_path / "t.db.blobs").iterdir()}
        assert "8.task.1" not in files  # (its frames were never needed on disk)
        assert files == ({f"{t}.task.1" for t in range(10) if t != 8} if size > 9 else set())
    finally:
        ctl.close()
