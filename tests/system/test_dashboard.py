"""Observability on real clusters: statistics(), activity(), task_info(), `taskmill status`,
the dashboard's HTTP endpoints, its access token, /metrics, and the controller's dashboard
options."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from systest import (
    TASKMILL,
    ControllerProcess,
    controller_process,
    fail_loudly,
    make_blocker,
    poll,
    wait_until,
)

from taskmill import AsyncTaskClient, Cluster, MapTask, TaskClient
from taskmill.connection import read_connection_file
from taskmill.dashboard import dashboard_token


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# No proxies (the environment may name one) and no redirects: the tests look at each answer.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with OPENER.open(request, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def split_link(link: str) -> tuple[str, str]:
    base, token = link.split("?token=")
    return base.rstrip("/"), token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the statistics structure ----------------------------------------------------------------
def test_statistics_name_each_engines_task_and_heartbeat(cluster, client, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    durations_before = client.statistics()["durations"]["count"]
    tid = client.run(MapTask(make_blocker(), (str(started), str(release), 42)))
    wait_until(started.exists, "the task to start")
    stats = client.statistics()
    [engine] = [e for e in stats["engines"] if e["current_task"] == tid]
    assert engine["state"] == "busy" and engine["held"] == [tid]
    assert 0 <= engine["last_heartbeat_ago"] < 10  # heartbeats every 0.5 s: a live engine
    assert {"properties", "tasks_done", "failures", "hostname", "pid"} <= set(engine)
    assert stats["queue"]["pending"] >= 1
    info = client.task_info(tid)
    assert info["state"] == "pending" and info["engineid"] == engine["engineid"]
    assert info["started"] is not None and info["attempts"] == 1 and info["kind"] == "map"
    activity = client.activity()
    assert {"tid": tid, "engineid": engine["engineid"]}.items() <= next(
        a for a in activity["running"] if a["tid"] == tid).items()

    release.touch()
    assert client.get_task_result(tid, block=True) == 42
    info = client.task_info(tid)
    assert info["state"] == "succeeded" and info["engineid"] == engine["engineid"]
    assert info["error"] is None and info["duration"] > 0 and "pmac" not in info
    [attempt] = [a for a in client.activity(activity["seq"])["attempts"] if a["tid"] == tid]
    assert attempt["status"] == "ok" and attempt["engineid"] == engine["engineid"]
    assert attempt["start"] <= attempt["end"]
    stats = client.statistics()
    assert stats["durations"]["count"] >= durations_before + 1
    assert stats["tasks_per_second"] > 0
    assert all(e["current_task"] != tid for e in stats["engines"])


def reject_on_picky_engines():
    import taskmill

    if taskmill.current_engine().properties.get("picky"):
        raise taskmill.TaskRejectError("not on this engine")
    return "ran"


@pytest.mark.timeout(120)
def test_rejections_are_neither_tasks_done_nor_failures_of_an_engine(tmp_path):
    """A TaskRejectError is no attempt (SPEC §2): the engine that rejected every task showed
    as many tasks done and as many failed (`taskmill status`: done 6, failed 6) though every
    task succeeded elsewhere."""
    with controller_process(tmp_path) as ctl:
        ctl.engines.append(ctl.engine("--property", "picky=1"))
        with TaskClient(ctl.conn, timeout=30) as tc:
            poll(lambda: tc.engines(), what="the picky engine")
            picky = tc.engines()[0]["engineid"]
            futs = [tc.options(retries=20).submit(reject_on_picky_engines) for _ in range(6)]
            poll(lambda: any(a["status"] == "rejected" for a in tc.activity()["attempts"]),
                 what="a rejection")
            ctl.engines.append(ctl.engine())
            assert [f.result(timeout=60) for f in futs] == ["ran"] * 6
            rows = {e["engineid"]: e for e in tc.statistics()["engines"]}
            assert (rows[picky]["tasks_done"], rows[picky]["failures"]) == (0, 0)
            other = next(e for eid, e in rows.items() if eid != picky)
            assert (other["tasks_done"], other["failures"]) == (6, 0)


def test_task_info_tells_the_story_of_a_retried_task(cluster, client):
    tid = client.run(MapTask(fail_loudly, ("story",), retries=1))
    client.barrier(tid)
    story = client.task_info(tid)["story"]
    assert [(e["from"], e["to"]) for e in story] == [
        ("new", "ready"), ("ready", "running"), ("running", "ready"), ("ready", "running"),
        ("running", "finished")], story
    assert "dispatched to engine" in story[1]["why"] and "attempt 1" in story[1]["why"]
    assert "retried" in story[2]["why"] and "no retries left" in story[4]["why"]
    base, token = split_link(cluster.dashboard_url)
    status, _, body = get(f"{base}/api/task/{tid}", bearer(token))
    assert status == 200 and json.loads(body)["story"] == story


def test_task_info_of_unknown_and_bad_taskids(client):
    assert client.task_info(10**12) == {"tid": 10**12, "state": "unknown"}
    with pytest.raises(TypeError):
        client.task_info("3")


def test_a_failed_task_is_among_the_latest_failures(client):
    tid = client.run(MapTask(fail_loudly, ("dashboard boom",)))
    client.barrier(tid)
    failure = next(f for f in client.activity()["failures"] if f["tid"] == tid)
    assert failure["type"] == "ValueError" and failure["message"] == "dashboard boom"
    assert failure["status"] == "error" and failure["engineid"] is not None
    info = client.task_info(tid)
    assert info["state"] == "failed"
    assert "fail_loudly" in info["error"]["traceback"]
    assert "dashboard boom" in info["error"]["traceback"]


def test_the_async_client_reads_activity_and_task_info_too(cluster):
    async def run():
        async with AsyncTaskClient(cluster.connection_file) as tc:
            tid = await tc.run(MapTask(abs, (-3,)))
            await tc.barrier(tid)
            return tid, await tc.task_info(tid), await tc.activity()

    tid, info, activity = asyncio.run(run())
    assert info["state"] == "succeeded" and info["tid"] == tid
    assert any(a["tid"] == tid and a["status"] == "ok" for a in activity["attempts"])


# -- taskmill status -------------------------------------------------------------------------
def test_status_prints_engines_queue_throughput_and_the_dashboard_link(cluster, client):
    out = subprocess.run([*TASKMILL, "status", "--connection-file", str(cluster.connection_file)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("engines:    2 alive") for line in lines), out.stdout
    assert any(line.startswith("queue:      ") for line in lines)
    assert any(line.startswith("throughput: ") and "tasks/s" in line for line in lines)
    assert f"dashboard:  {cluster.dashboard_url}" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["engine", "state"])
    ids = sorted(int(line.split()[0]) for line in lines[header + 1:])
    assert ids == sorted(e["engineid"] for e in client.engines())


def _read_until(stream, predicate, what: str) -> str:
    for line in stream:
        if predicate(line):
            return line
    raise AssertionError(f"the output ended before {what}")


def test_status_watch_refreshes_until_interrupted(cluster, client):
    watch = subprocess.Popen(
        [*TASKMILL, "status", "--watch", "0.2", "--connection-file", str(cluster.connection_file)],
        stdout=subprocess.PIPE, text=True)
    try:
        first = _read_until(watch.stdout, lambda s: s.startswith("queue:"), "a first table")
        succeeded = int(first.split(", ")[2].split()[0])
        client.run(MapTask(abs, (-1,)), block=True)
        _read_until(watch.stdout,
                    lambda s: s.startswith("queue:") and int(s.split(", ")[2].split()[0])
                    > succeeded, "a table showing the new task")
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=30) == 0
    finally:
        watch.kill()
        watch.wait()
        watch.stdout.close()


def test_status_json_watch_prints_one_object_per_refresh(cluster):
    watch = subprocess.Popen(
        [*TASKMILL, "status", "--json", "--watch", "0.1", "--connection-file",
         str(cluster.connection_file)], stdout=subprocess.PIPE, text=True)
    try:
        views = [json.loads(watch.stdout.readline()) for _ in range(2)]
        assert all(set(v) == {"queue", "engines", "backlog", "tasks_per_second"} for v in views)
    finally:
        watch.kill()
        watch.wait()
        watch.stdout.close()


# -- the dashboard over HTTP -----------------------------------------------------------------
PATHS = ["/", "/dashboard.js", "/api/snapshot", "/api/task/0", "/metrics", "/no-such-page"]


def test_a_request_without_the_token_is_refused(cluster):
    base, token = split_link(cluster.dashboard_url)
    key = read_connection_file(cluster.connection_file).key
    assert token == dashboard_token(bytes.fromhex(key)) and key not in token
    wrong = "0" * 64
    cookie = f"taskmill_dashboard_{base.rsplit(':', 1)[1]}"
    for path in PATHS:
        status, headers, body = get(base + path)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert b"taskmill status" in body and b"Traceback" not in body
        for attempt in ({"Authorization": f"Bearer {wrong}"}, {"Cookie": f"{cookie}={wrong}"}):
            assert get(base + path, attempt)[0] == 403, (path, attempt)
        sep = "&" if "?" in path else "?"
        assert get(f"{base}{path}{sep}token={wrong}")[0] == 403, path
    status, _, body = get(base + "/", bearer(token))
    assert status == 200 and b"<title>taskmill dashboard</title>" in body


def test_the_link_keeps_the_token_in_a_cookie(cluster):
    base, token = split_link(cluster.dashboard_url)
    status, headers, _ = get(cluster.dashboard_url)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, headers, body = get(base + "/api/snapshot", {"Cookie": cookie.split(";")[0]})
    assert status == 200 and headers["Content-Type"] == "application/json"
    snap = json.loads(body)
    assert {"stats", "attempts", "running", "failures", "finished_per_second",
            "queue_per_second", "seq", "started", "now"} <= set(snap)
    assert len(snap["stats"]["engines"]) >= 2
    # The page's form: the same engines, as columns.
    status, _, body = get(base + "/api/snapshot?since=0&engines=columns",
                          {"Cookie": cookie.split(";")[0]})
    table = json.loads(body)["stats"]["engines"]
    assert status == 200 and len(table["rows"]) == len(snap["stats"]["engines"])
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    assert [(e["engineid"], e["pid"]) for e in rows] == [
        (e["engineid"], e["pid"]) for e in snap["stats"]["engines"]]


def test_metrics_parse_and_match_queue_status(cluster, client):
    base, token = split_link(cluster.dashboard_url)
    client.map(abs, [-1, -2, -3])
    client.barrier(client.run(MapTask(fail_loudly, ("for the metrics",))))

    def read_metrics():
        before = (client.queue_status(), client.engines(), client.statistics())
        status, headers, body = get(base + "/metrics", bearer(token))
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        after = (client.queue_status(), client.engines(), client.statistics())
        # A straggler of an earlier test may still change the counts: read again if so.
        if before[:2] != after[:2] or before[2]["durations"] != after[2]["durations"]:
            return None
        return after, {f.name: f for f in text_string_to_metric_families(body.decode())}

    (queue, engines, stats), families = poll(read_metrics, 60, "a quiet moment to compare")
    tasks = {s.labels["state"]: s.value for s in families["taskmill_tasks"].samples}
    assert tasks == queue
    assert queue["succeeded"] >= 3 and queue["failed"] >= 1
    by_state = {s.labels["state"]: s.value for s in families["taskmill_engines"].samples}
    assert by_state == {state: sum(1 for e in engines if e["state"] == state)
                        for state in ("idle", "busy", "retiring", "dead", "retired")}
    hist = {(s.name, s.labels.get("le")): s.value
            for s in families["taskmill_task_duration_seconds"].samples}
    assert hist[("taskmill_task_duration_seconds_count", None)] == stats["durations"]["count"]
    assert hist[("taskmill_task_duration_seconds_bucket", "+Inf")] == stats["durations"]["count"]
    refused = {s.labels["reason"]: s.value
               for s in families["taskmill_refused_messages"].samples}
    assert refused == {k: v for k, v in stats["refused"].items()}


def test_task_detail_answers_bad_and_unknown_taskids_clearly(cluster, client):
    base, token = split_link(cluster.dashboard_url)
    tid = client.run(MapTask(fail_loudly, ("detail",)))
    client.barrier(tid)
    status, _, body = get(f"{base}/api/task/{tid}", bearer(token))
    detail = json.loads(body)
    assert status == 200 and detail["state"] == "failed"
    assert detail["error"]["type"] == "ValueError" and "fail_loudly" in detail["error"]["traceback"]
    for path, code, message in [
        ("/api/task/abc", 400, "a taskid is an int >= 0, not 'abc'"),
        ("/api/task/-4", 400, "a taskid is an int >= 0, not -4"),
        ("/api/task/99999999999", 404, "no task with id 99999999999"),
        ("/api/snapshot?since=soon", 400, "since must be an int >= 0"),
        ("/api/snapshot?engines=cells", 400, "engines must be one of rows, columns"),
        ("/no-such-page", 404, "no page '/no-such-page' here"),
    ]:
        status, headers, body = get(base + path, bearer(token))
        assert status == code, path
        assert headers["Content-Type"] == "application/json"
        assert message in json.loads(body)["error"] and b"Traceback" not in body


def test_a_put_values_task_info_and_detail_say_what_it_is(cluster, client):
    """A put value holds a taskid (and a finished result): task_info and the dashboard's
    detail of it describe it, as for a task (they failed: "bad task request: 'error'", a 500,
    and a refused message counted against the asking client)."""
    ref = client.put(b"shared" * 100)
    bad_requests = client.statistics()["refused"].get("bad-request", 0)
    info = client.task_info(ref.taskid)
    assert info["state"] == "succeeded" and info["kind"] == "put" and info["error"] is None
    base, token = split_link(cluster.dashboard_url)
    status, _, body = get(f"{base}/api/task/{ref.taskid}", bearer(token))
    assert status == 200 and json.loads(body)["kind"] == "put"
    assert client.statistics()["refused"].get("bad-request", 0) == bad_requests
    ref.release()


# -- the controller's dashboard options --------------------------------------------------------
@pytest.fixture
def controllers(tmp_path):
    """Starts `taskmill controller` processes (with these arguments) on one connection file
    in `tmp_path`, each with a log of its own, no engines; stops them at the end."""
    started: list[ControllerProcess] = []

    def start(*args: str) -> ControllerProcess:
        c = ControllerProcess(tmp_path, conn=tmp_path / "connection.json",
                              log_path=tmp_path / f"controller-{len(started)}.log",
                              db=":memory:", heartbeat=None, dashboard=True,
                              write_connection=False, stop_timeout=20.0, args=args)
        c.start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def test_a_dashboard_port_in_use_falls_back_to_a_free_one(controllers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        c = controllers("--dashboard-port", str(port))
        extra = c.ready()
        assert extra["dashboard_port"] != port and extra["dashboard_url"].startswith("http://")
    log = c.log_text()
    assert f"dashboard port {port} on 127.0.0.1 is in use" in log
    token = dashboard_token(read_connection_file(c.conn).key_bytes)
    assert f"dashboard: {extra['dashboard_url']}?token={token}" in log
    assert get(extra["dashboard_url"], bearer(token))[0] == 200


def test_a_restarted_controller_serves_its_dashboard_on_the_same_port(controllers):
    first = controllers()
    port = first.ready()["dashboard_port"]
    first.stop()
    again = controllers()
    assert again.ready()["dashboard_port"] == port
    again.stop()
    third = controllers("--no-dashboard")
    extra = third.ready()
    assert not any(k.startswith("dashboard") for k in extra), extra
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_dashboard_that_cannot_listen_leaves_the_controller_running(controllers):
    # 203.0.113.1 (TEST-NET-3) is no address of this machine: binding it fails at once.
    c = controllers("--dashboard-ip", "203.0.113.1")
    extra = c.ready()
    assert not any(k.startswith("dashboard") for k in extra), extra
    assert "the dashboard could not listen on 203.0.113.1" in c.log_text()
    with TaskClient(c.conn, timeout=30) as tc:
        assert tc.queue_status() == {"scheduled": 0, "pending": 0, "succeeded": 0, "failed": 0}


def test_an_open_dashboard_needs_no_token_but_a_loopback_host(controllers):
    c = controllers("--dashboard-open")
    extra = c.ready()
    url = extra["dashboard_url"]
    assert extra["dashboard_open"] is True
    status, _, body = get(url + "api/snapshot")
    assert status == 200 and "stats" in json.loads(body)
    port = extra["dashboard_port"]
    status, _, body = get(url, {"Host": f"attacker.example:{port}"})
    assert status == 403 and b"loopback" in body


def test_a_cluster_can_do_without_a_dashboard():
    with Cluster(0, dashboard=False) as cluster:
        assert cluster.dashboard_url is None
        extra = read_connection_file(cluster.connection_file).extra
        assert not any(k.startswith("dashboard") for k in extra), extra


def test_an_open_dashboard_off_loopback_is_refused_at_start(tmp_path):
    out = subprocess.run(
        [*TASKMILL, "controller", "--connection-file", str(tmp_path / "c.json"), "--db", ":memory:",
         "--dashboard-open", "--dashboard-ip", "0.0.0.0"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--dashboard-open" in out.stderr and "loopback" in out.stderr
    assert not os.path.exists(tmp_path / "c.json")


@pytest.mark.timeout(120)
def test_a_poll_is_answered_from_the_latest_snapshot_while_the_controller_is_stopped(tmp_path):
    """The page's poll never waits on the controller: while it is stopped (SIGSTOP) the
    dashboard answers at once with the snapshot it fetched last and its age, which grows;
    fresh figures come again once the controller runs. (The dashboard here is one started in
    this process on the controller's connection file: the controller's own stops with it.)"""
    from taskmill.connection import write_connection_file
    from taskmill.dashboard import SNAPSHOT_TTL, start_dashboard

    with controller_process(tmp_path) as ctl:
        ctl.ready()
        info = read_connection_file(ctl.conn)
        dash = start_dashboard(write_connection_file(tmp_path / "dash" / "conn.json", info),
                               info, open_access=True)
        assert dash is not None
        url = dash.url + "api/snapshot?engines=columns"

        def snapshot() -> dict:
            status, _, body = get(url)
            assert status == 200, body  # (before: 503 once the controller's call timed out)
            return json.loads(body)

        try:
            first = snapshot()
            assert first["error"] is None and first["stats"]["queue"]["scheduled"] == 0
            os.kill(ctl.proc.pid, signal.SIGSTOP)
            try:
                stale = poll(lambda: [s for s in [snapshot()] if s["age"] > 8 * SNAPSHOT_TTL],
                             60, "the snapshot to grow old")[0]
                assert stale["started"] == first["started"] and "engines" in stale["stats"]
            finally:
                os.kill(ctl.proc.pid, signal.SIGCONT)
            poll(lambda: [s for s in [snapshot()] if s["age"] < 2 * SNAPSHOT_TTL
                          and s["error"] is None], 60, "a fresh snapshot")
        finally:
            dash.stop()
