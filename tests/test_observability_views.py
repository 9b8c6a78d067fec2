"""The views of statistics() without a controller: the status table, /metrics, and the
dashboard's feed, JSON and request parsing."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskmill.connection import new_connection_info
from taskmill.dashboard import (
    BadQuery,
    ControllerFeed,
    NotFound,
    dashboard_link,
    dashboard_token,
    engine_columns,
    parse_engines,
    parse_since,
    parse_taskid,
    task_view,
    to_json,
    with_engine_columns,
)
from taskmill.metrics import render_metrics
from taskmill.stats import RecentActivity
from taskmill.status import render_status


def make_stats(**changes):
    activity = RecentActivity(100.0)
    for tid, d in enumerate((0.002, 0.3, 7.0)):
        activity.finished(tid, "ok", 101.0, duration=d)
    stats = {
        "time": 130.0, "uptime": 3725.0, "messages_in": 40, "messages_out": 44,
        "submitted": 9, "finished": 7, "engines_died": 1,
        "refused": {"bad-signature": 3, 'we"ird\nreason': 1},
        "queue": {"scheduled": 2, "pending": 1, "succeeded": 5, "failed": 2},
        "engines": [
            {"engineid": 0, "hostname": "alpha", "pid": 11, "state": "busy", "tasks_done": 4,
             "failures": 1, "current_task": 8, "held": [8, 9], "last_heartbeat_ago": 0.25,
             "properties": {"engineid": 0, "hostname": "alpha", "pid": 11, "gpu": 1}},
            {"engineid": 1, "hostname": "beta", "pid": 12, "state": "idle", "tasks_done": 3,
             "failures": 0, "current_task": None, "held": [], "last_heartbeat_ago": 75.0,
             "properties": {"engineid": 1, "hostname": "beta", "pid": 12}},
            {"engineid": 2, "hostname": "beta", "pid": 13, "state": "dead", "tasks_done": 0,
             "failures": 0, "current_task": None, "held": [], "last_heartbeat_ago": 30.0,
             "properties": {"engineid": 2, "hostname": "beta", "pid": 13}},
        ],
        "tasks_per_second": 1.5, "durations": activity.durations.as_dict(),
    }
    stats.update(changes)
    return stats


# -- taskmill status -------------------------------------------------------------------------
def test_the_status_table_counts_retiring_engines_alive_and_retired_ones_gone():
    stats = make_stats()
    extra = [dict(stats["engines"][1], engineid=3, state="retiring"),
             dict(stats["engines"][2], engineid=4, state="retired"),
             dict(stats["engines"][2], engineid=5, state="retired")]
    text = render_status(make_stats(engines=[*stats["engines"], *extra]))
    assert "engines:    3 alive (1 busy, 1 idle, 1 retiring), 1 dead, 2 retired" in \
        text.splitlines()
    rows = {line.split()[0]: line.split() for line in text.splitlines()[6:] if line.strip()}
    assert rows["3"][1] == "retiring" and rows["4"][1] == "retired" and rows["4"][5] == "-"


def test_the_status_table_shows_engines_queue_and_throughput():
    text = render_status(make_stats(), controller="tcp://127.0.0.1:5555",
                         dashboard="http://127.0.0.1:8000/?token=abc")
    lines = text.splitlines()
    assert lines[0] == "controller: tcp://127.0.0.1:5555, up 1h02m"
    assert "engines:    2 alive (1 busy, 1 idle), 1 dead" in lines
    assert "queue:      2 scheduled, 1 pending, 5 succeeded, 2 failed" in lines
    assert any(line.startswith("throughput: 1.50 tasks/s over the last minute") for line in lines)
    assert "refused:    bad-signature 3, we\"ird" in text
    assert "dashboard:  http://127.0.0.1:8000/?token=abc" in lines
    header = next(line for line in lines if line.split()[:2] == ["engine", "state"])
    assert header.split() == ["engine", "state", "task", "done", "failed", "heartbeat", "host",
                              "pid", "properties"]
    rows = lines[lines.index(header) + 1:]
    assert rows[0].split()[:4] == ["0", "busy", "8", "(+1"]
    assert rows[0].endswith("gpu=1") and "0.2s ago" in rows[0]
    assert rows[1].split()[:3] == ["1", "idle", "-"] and "1m15s ago" in rows[1]
    assert rows[2].split()[:2] == ["2", "dead"]
    # columns line up: every row starts its host at the same offset as the header
    offset = header.index("host")
    assert all(row[offset:].startswith(("alpha", "beta")) for row in rows)


def test_the_status_table_shows_the_backlog_beside_the_queue():
    text = render_status(make_stats(backlog=7000, queued_in_memory=32768, queue_window=32768))
    lines = text.splitlines()
    queue = lines.index("queue:      2 scheduled, 1 pending, 5 succeeded, 2 failed")
    assert lines[queue + 1] == ("backlog:    7000 of the scheduled wait in the store only; "
                                "32768 active in memory (window 32768)")
    # a store in memory keeps no backlog (no window), and a controller that does not say: no line
    for stats in (make_stats(backlog=0, queued_in_memory=5, queue_window=None), make_stats()):
        assert "backlog:" not in render_status(stats)


def test_the_status_table_without_engines_says_so():
    text = render_status(make_stats(engines=[], refused={}))
    assert text.splitlines()[-1] == "no engines registered yet"
    assert "refused:" not in text and "dashboard:" not in text


def test_the_status_table_says_first_that_the_store_cannot_write():
    text = render_status(make_stats(store_problem="the task store x.db cannot write: disk full",
                                    store_down_for=75.0))
    assert text.splitlines()[1] == ("store:      NOT WRITING for 1m15s: the task store x.db "
                                    "cannot write: disk full")
    assert "store:" not in render_status(make_stats(store_problem=None, store_down_for=None))
    assert "taskmill_store_writable 0" in render_metrics(make_stats(
        store_problem="gone", store_down_for=None)).splitlines()
    assert "taskmill_store_writable 1" in render_metrics(make_stats()).splitlines()


def test_a_json_watch_says_in_json_that_the_controller_does_not_answer():
    """`taskmill status --json --watch` prints one JSON object a line, also while the
    controller does not answer (it printed a line of text among them)."""
    import io

    from taskmill.status import show_status

    answers = iter([{"queue": {}}, TimeoutError("the controller did not answer within 1s"),
                    {"queue": {}}, KeyboardInterrupt()])

    def fetch():
        a = next(answers)
        if isinstance(a, BaseException):
            raise a
        return a

    out = io.StringIO()
    assert show_status(fetch, as_json=True, watch=0.0, out=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines == [{"queue": {}}, {"error": "the controller did not answer within 1s"},
                     {"queue": {}}]


# -- /metrics --------------------------------------------------------------------------------
def test_metrics_parse_and_carry_every_figure():
    stats = make_stats()
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(stats))}
    tasks = {s.labels["state"]: s.value for s in families["taskmill_tasks"].samples}
    assert tasks == {"scheduled": 2, "pending": 1, "succeeded": 5, "failed": 2}
    engines = {s.labels["state"]: s.value for s in families["taskmill_engines"].samples}
    assert engines == {"idle": 1, "busy": 1, "dead": 1, "retiring": 0, "retired": 0}
    refused = {s.labels["reason"]: s.value
               for s in families["taskmill_refused_messages"].samples}
    assert refused == {"bad-signature": 3, 'we"ird\nreason': 1}  # escaped and read back
    hist = {(s.name, s.labels.get("le")): s.value
            for s in families["taskmill_task_duration_seconds"].samples}
    assert hist[("taskmill_task_duration_seconds_count", None)] == 3
    assert hist[("taskmill_task_duration_seconds_bucket", "0.005")] == 1
    assert hist[("taskmill_task_duration_seconds_bucket", "0.5")] == 2
    assert hist[("taskmill_task_duration_seconds_bucket", "+Inf")] == 3
    assert hist[("taskmill_task_duration_seconds_sum", None)] == pytest.approx(7.302)
    done = {s.labels["engineid"]: s.value
            for s in families["taskmill_engine_tasks_done"].samples}
    assert done == {"0": 4, "1": 3, "2": 0}
    assert families["taskmill_tasks_per_second"].samples[0].value == 1.5
    assert families["taskmill_engine_deaths"].samples[0].value == 1


def test_metrics_carry_the_backlog():
    stats = make_stats(backlog=7000, queued_in_memory=32768)
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(stats))}
    assert families["taskmill_tasks_backlog"].samples[0].value == 7000
    assert families["taskmill_tasks_in_memory"].samples[0].value == 32768


# -- the dashboard's feed ----------------------------------------------------------------------
class FakeClient:
    """Stands in for a TaskClient: statistics() and activity(since) as a controller gives them."""

    def __init__(self, started: float = 1.0) -> None:
        self.started = started
        self.attempts: list[dict] = []
        self.calls: list[tuple] = []
        self.closed = False

    def add_attempt(self, tid: int) -> None:
        self.attempts.append({"seq": len(self.attempts) + 1, "tid": tid})

    def statistics(self) -> dict:
        self.calls.append(("stats",))
        return {"queue": {}}

    def activity(self, since: int) -> dict:
        self.calls.append(("activity", since))
        return {"started": self.started, "seq": len(self.attempts), "time": 0.0, "running": [],
                "attempts": [a for a in self.attempts if a["seq"] > since]}

    def task_info(self, tid: int) -> dict:
        self.calls.append(("task", tid))
        return {"tid": tid, "state": "unknown"}

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_feed_connects_at_the_first_request_and_shares_snapshots():
    clients: list[FakeClient] = []
    clock = Clock()

    def connect():
        clients.append(FakeClient())
        return clients[-1]

    feed = ControllerFeed(connect, ttl=0.5, idle_close=10.0, clock=clock)
    assert not feed.connected and feed.seconds_until_idle() is None  # idle: nothing at all
    assert clients == []
    feed.snapshot()
    [fake] = clients
    fake.add_attempt(7)
    clock.now = 0.2
    assert feed.snapshot()["attempts"] == []  # within the ttl: the same snapshot, no call
    assert fake.calls == [("stats",), ("activity", 0)]
    clock.now = 0.8
    assert [a["tid"] for a in feed.snapshot()["attempts"]] == [7]
    assert fake.calls[-1] == ("activity", 0)
    fake.add_attempt(8)
    clock.now = 1.4
    snap = feed.snapshot(since=1)
    assert fake.calls[-1] == ("activity", 1)  # only what is new is asked for
    assert [a["tid"] for a in snap["attempts"]] == [8]
    assert [a["tid"] for a in feed.snapshot(since=0)["attempts"]] == [7, 8]  # kept here


def test_the_feed_closes_its_client_when_nobody_looks():
    clients: list[FakeClient] = []
    clock = Clock()
    feed = ControllerFeed(lambda: clients.append(FakeClient()) or clients[-1], idle_close=10.0,
                          clock=clock)
    feed.task(3)
    clock.now = 4.0
    assert feed.seconds_until_idle() == pytest.approx(6.0)
    feed.close_if_idle()
    assert feed.connected
    clock.now = 10.0
    feed.close_if_idle()
    assert not feed.connected and clients[0].closed
    feed.snapshot()  # someone looks again: a new client
    assert len(clients) == 2 and feed.connected


def test_the_feed_starts_afresh_when_the_controller_restarted():
    fake = FakeClient(started=1.0)
    clock = Clock()
    feed = ControllerFeed(lambda: fake, ttl=0.0, clock=clock)
    for tid in (1, 2, 3):
        fake.add_attempt(tid)
    assert len(feed.snapshot()["attempts"]) == 3
    fake.started, fake.attempts = 2.0, []  # a new controller, whose attempts start at 1 again
    fake.add_attempt(10)
    clock.now = 1.0
    snap = feed.snapshot()
    assert [a["tid"] for a in snap["attempts"]] == [10] and snap["started"] == 2.0


class HangingClient(FakeClient):
    """A FakeClient whose statistics() waits (bounded) while `hang` is set, as a stopped
    controller would; `waiting` is set while it does. `fail` makes it raise instead."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = threading.Event()
        self.waiting = threading.Event()
        self.fail: Exception | None = None

    def statistics(self) -> dict:
        if self.fail is not None:
            raise self.fail
        if self.hang.is_set():
            self.waiting.set()
            deadline = time.monotonic() + 30
            while self.hang.is_set() and time.monotonic() < deadline:
                time.sleep(0.005)
            self.waiting.clear()
        return super().statistics()


def poll_until(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    return value


def test_a_poll_gets_the_latest_snapshot_at_once_while_the_controller_does_not_answer():
    fake = HangingClient()
    feed = ControllerFeed(lambda: fake, ttl=0.01)
    try:
        first = feed.latest()  # (the first waits for the feed thread's first fetch)
        assert first["stats"] == {"queue": {}} and first["error"] is None and first["age"] >= 0
        fake.add_attempt(7)
        poll_until(lambda: feed.latest()["attempts"], "the feed thread to fetch again")
        fake.hang.set()
        poll_until(fake.waiting.is_set, "a fetch that hangs")
        # The feed thread is stuck in its call to the controller; polls are answered anyway,
        # from the snapshot it fetched last, whose age keeps growing.
        ages = [feed.latest(since=0)["age"] for _ in range(3)]
        assert fake.waiting.is_set()
        assert ages == sorted(ages)
        assert [a["tid"] for a in feed.latest()["attempts"]] == [7]
        fake.hang.clear()
        fake.add_attempt(8)
        snap = poll_until(lambda: [s for s in [feed.latest(since=1)] if s["attempts"]],
                          "a fresh snapshot")[0]
        assert [a["tid"] for a in snap["attempts"]] == [8]
    finally:
        feed.close()


def test_the_first_poll_waits_for_a_snapshot_with_a_bound():
    fake = HangingClient()
    fake.hang.set()
    feed = ControllerFeed(lambda: fake, ttl=0.01, first_wait=0.05)
    try:
        with pytest.raises(TimeoutError, match="no answer to the dashboard within 0.05 s"):
            feed.latest()
    finally:
        fake.hang.clear()
        feed.close()
    fake = HangingClient()
    fake.fail = TimeoutError("the controller is not answering")
    feed = ControllerFeed(lambda: fake, ttl=0.01, first_wait=30.0)
    try:
        with pytest.raises(TimeoutError, match="TimeoutError: the controller is not answering"):
            feed.latest()  # (a failed fetch ends the wait at once, with its reason)
    finally:
        feed.close()


def test_a_failed_fetch_leaves_the_snapshot_held_and_says_why():
    fake = HangingClient()
    feed = ControllerFeed(lambda: fake, ttl=0.01)
    try:
        assert feed.latest()["error"] is None
        fake.fail = ConnectionError("gone")
        snap = poll_until(lambda: [s for s in [feed.latest()] if s["error"]], "a failed fetch")[0]
        assert snap["error"] == "ConnectionError: gone" and snap["stats"] == {"queue": {}}
        fake.fail = None
        poll_until(lambda: feed.latest()["error"] is None, "a good fetch again")
    finally:
        feed.close()


def test_the_feed_thread_pauses_and_the_client_closes_when_nobody_polls():
    clients: list[FakeClient] = []
    clock = Clock()
    feed = ControllerFeed(lambda: clients.append(FakeClient()) or clients[-1], ttl=0.01,
                          idle_close=10.0, clock=clock)
    try:
        feed.latest()
        poll_until(lambda: len(clients[0].calls) >= 4, "the feed thread's fetches")
        clock.now = 10.0  # nobody has polled for idle_close: the thread pauses
        feed.close_if_idle()
        assert not feed.connected and clients[0].closed
        calls = len(clients[0].calls)
        feed.seconds_until_idle()
        assert len(clients) == 1 and len(clients[0].calls) == calls
        snap = feed.latest()  # someone looks again: a new client, a fresh snapshot
        assert len(clients) == 2 and snap["age"] == 0.0
    finally:
        feed.close()


def test_the_idle_check_never_waits_for_a_fetch_in_progress():
    """The server's loop calls close_if_idle between requests: while the feed thread's fetch
    waits on a stopped controller, it must return at once (the page's polls are served
    meanwhile) and leave the client open (in use, so not idle)."""
    client = HangingClient()
    clock = Clock()
    feed = ControllerFeed(lambda: client, ttl=0.0, idle_close=10.0, clock=clock)
    try:
        feed.latest()
        client.hang.set()
        poll_until(client.waiting.is_set, "the feed thread's fetch to wait")
        clock.now = 20.0  # (as if nobody had polled for idle_close while the server waited)
        done = threading.Event()
        threading.Thread(target=lambda: (feed.close_if_idle(), done.set()), daemon=True).start()
        assert done.wait(10), "close_if_idle waited for the fetch in progress"
        assert client.waiting.is_set() and feed.connected and not client.closed
    finally:
        client.hang.clear()
        feed.close()


def test_a_poll_counts_toward_idle_before_the_client_is_made():
    """The server's loop sleeps until seconds_until_idle(): a poll whose client the feed thread
    has not made yet must not leave it sleeping with no bound (and the client open for good)."""
    clock = Clock()

    def connect():
        raise ConnectionError("not yet")

    feed = ControllerFeed(connect, idle_close=10.0, clock=clock)
    try:
        with pytest.raises(TimeoutError, match="ConnectionError: not yet"):
            feed.latest()
        assert not feed.connected and feed.seconds_until_idle() == 10.0
        clock.now = 10.0
        assert feed.seconds_until_idle() is None
    finally:
        feed.close()


def test_task_view_cuts_long_texts_and_unknown_tasks_are_not_found():
    with pytest.raises(NotFound, match="no task with id 5"):
        task_view({"tid": 5, "state": "unknown"})
    view = task_view({"tid": 1, "state": "failed", "stdout": "x" * 200_000,
                      "error": {"type": "E", "traceback": "t" * 200_000}})
    assert len(view["stdout"]) < 100_100 and "more characters" in view["stdout"]
    assert len(view["error"]["traceback"]) < 100_100


@pytest.mark.parametrize("text", ["abc", "1.5", "", "-3", "0x10"])
def test_a_bad_taskid_is_a_clear_error(text):
    with pytest.raises(BadQuery, match="a taskid is an int >= 0"):
        parse_taskid(text)


def test_since_must_be_a_count():
    assert parse_since({}) == 0 and parse_since({"since": ["12"]}) == 12
    for bad in ("x", "-1"):
        with pytest.raises(BadQuery, match="since must be an int >= 0"):
            parse_since({"since": [bad]})


def test_the_engine_list_as_columns_holds_every_field_of_every_engine():
    engines = make_stats()["engines"]
    engines[0]["last_heartbeat_ago"] = 0.123456789
    table = json.loads(to_json(engine_columns(engines)))
    rebuilt = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    assert rebuilt[0]["last_heartbeat_ago"] == 0.123  # heartbeat ages to the millisecond
    rebuilt[0]["last_heartbeat_ago"] = engines[0]["last_heartbeat_ago"]
    assert rebuilt == engines
    assert engine_columns([]) == {"columns": [], "rows": []}
    snap = {"seq": 3, "stats": make_stats()}
    lean = with_engine_columns(snap)
    assert lean["stats"]["engines"]["columns"][0] == "engineid" and lean["seq"] == 3
    assert {k: v for k, v in lean["stats"].items() if k != "engines"} == {
        k: v for k, v in snap["stats"].items() if k != "engines"}
    assert isinstance(snap["stats"]["engines"], list)  # the feed's own snapshot is left alone


def test_the_engine_form_is_rows_or_columns():
    assert parse_engines({}) == "rows" and parse_engines({"engines": ["columns"]}) == "columns"
    with pytest.raises(BadQuery, match="engines must be one of rows, columns"):
        parse_engines({"engines": ["cells"]})


def test_json_has_no_nan_and_shows_bytes():
    data = json.loads(to_json({"a": math.nan, "b": [math.inf, 1.0], "c": b"\x01\x02"}))
    assert data == {"a": None, "b": [None, 1.0], "c": "0102"}


def test_the_dashboard_link_carries_a_token_derived_from_the_key():
    info = new_connection_info()
    assert dashboard_link(info) is None
    info.extra["dashboard_url"] = "http://127.0.0.1:9/"
    token = dashboard_token(info.key_bytes)
    assert dashboard_link(info) == f"http://127.0.0.1:9/?token={token}"
    assert info.key not in token and len(token) == 64
    info.extra["dashboard_open"] = True
    assert dashboard_link(info) == "http://127.0.0.1:9/"
