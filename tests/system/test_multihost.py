"""Engines on other "machines": Linux network namespaces joined by a bridge, as root.

Three namespaces stand for three hosts: `ctl` runs the controller (bound to 0.0.0.0, advertising
its bridge address with --location), `a` and `b` run two engines each, and this process reaches
the controller through a fourth link from the root namespace. Each link is a veth pair, so
`ip link set eth0 down` in `a` cuts host a off, as a pulled cable would.

What a 10 s cut does depends on the heartbeat, and both ways lose no task:
- heartbeat 1 s: after 3 missed heartbeats the controller declares a's engines dead and their
  running tasks fail with EngineDied; the map has retries, so those tasks run again on b; the
  results a's engines finish during the cut arrive late and are counted, never reported a
  second time. When the link is back, a's engines (the same processes) hear that the
  controller no longer knows them, register again as new engines, and take tasks again.
- heartbeat 8 s (dead after 24 s): the cut goes unnoticed; a's results wait in TCP's buffers
  and arrive when the link is back, so even a map without retries completes.
A client on a cut host is answered when its link is back: its send socket's transport
heartbeat ends its dead connections (the kernel's TCP user timeout the controller's side), and
the client connects anew and asks again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from systest import TASKMILL, gone, need_programs, need_root, wait_until

from taskmill import TaskClient
from taskmill.connection import read_connection_file


class Hosts:
    """Namespaces ctl, a, b on a bridge in ctl; this process joins it through a host link.

    A context manager: leaving it (however) kills every process started in the namespaces and
    removes the namespaces and links, so nothing is left even when the test fails.
    """

    NAMES = ("ctl", "a", "b")

    def __init__(self, tag: str | None = None) -> None:
        pid = os.getpid()
        self.tag = tag or f"tm{pid % 100000}"
        net = f"10.{200 + pid % 50}.{(pid // 50) % 250}"
        self.address = {"ctl": f"{net}.1", "a": f"{net}.2", "b": f"{net}.3", "host": f"{net}.254"}
        self.procs: list[subprocess.Popen[bytes]] = []

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def __enter__(self) -> Hosts:
        try:
            self._build()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _build(self) -> None:
        ctl = self.ns("ctl")
        for name in self.NAMES:
            self._ip("netns", "add", self.ns(name))
            self._ip("-n", self.ns(name), "link", "set", "lo", "up")
        self._ip("-n", ctl, "link", "add", "br0", "type", "bridge")
        self._ip("-n", ctl, "addr", "add", f"{self.address['ctl']}/24", "dev", "br0")
        self._ip("-n", ctl, "link", "set", "br0", "up")
        for name in ("a", "b"):  # eth0 in the host's namespace, its peer on ctl's bridge
            outer, inner = f"{self.tag}{name}0", f"{self.tag}{name}1"
            self._ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self._ip("link", "set", outer, "netns", self.ns(name))
            self._ip("-n", self.ns(name), "link", "set", outer, "name", "eth0")
            self._ip("-n", self.ns(name), "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
            self._ip("-n", self.ns(name), "link", "set", "eth0", "up")
            self._ip("link", "set", inner, "netns", ctl)
            self._ip("-n", ctl, "link", "set", inner, "master", "br0", "up")
        host, peer = f"{self.tag}h", f"{self.tag}hc"
        self._ip("link", "add", host, "type", "veth", "peer", "name", peer)
        self._ip("link", "set", peer, "netns", ctl)
        self._ip("-n", ctl, "link", "set", peer, "master", "br0", "up")
        self._ip("addr", "add", f"{self.address['host']}/24", "dev", host)
        self._ip("link", "set", host, "up")

    def spawn(self, name: str, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Run `cmd` in namespace `name` (`ip netns exec` execs it: the pid is the command's)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(name), *cmd],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def cut(self, name: str) -> None:
        self._ip("-n", self.ns(name), "link", "set", "eth0", "down")

    def restore(self, name: str) -> None:
        self._ip("-n", self.ns(name), "link", "set", "eth0", "up")

    def remaining(self) -> list[str]:
        """Namespaces and links of this object that still exist."""
        listed = self._ip("netns", "list", check=False).stdout.split()
        left = [n for n in map(self.ns, self.NAMES) if n in listed]
        if self._ip("link", "show", f"{self.tag}h", check=False).returncode == 0:
            left.append(f"{self.tag}h")
        return left

    def remove(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for name in self.NAMES:
            self._ip("netns", "del", self.ns(name), check=False)
        self._ip("link", "del", f"{self.tag}h", check=False)  # gone with ctl, unless half-built


@pytest.fixture
def hosts():
    need_root("create network namespaces")
    need_programs("ip")
    with Hosts() as h:
        yield h
    assert not h.remaining(), f"left behind: {h.remaining()}"


def work(x):
    import time

    from taskmill import current_engine

    time.sleep(0.03)
    return x * x, current_engine().properties["host"]


def test_namespaces_are_removed_even_when_the_test_fails(tmp_path):
    need_root("create network namespaces")
    need_programs("ip")
    h = Hosts(tag=f"tmx{os.getpid() % 10000}")
    with pytest.raises(RuntimeError, match="the test failed"):
        with h:
            sleeper = h.spawn("a", [sys.executable, "-c", "import time; time.sleep(120)"],
                              tmp_path / "sleeper.log")
            assert len(h.remaining()) == 4
            raise RuntimeError("the test failed")
    assert h.remaining() == []
    assert gone(sleeper.pid)


def start_engines_then_controller(hosts: Hosts, tmp_path: Path, heartbeat: float) -> Path:
    """Two engines in a and two in b, then (once they wait) the controller in ctl."""
    conn = tmp_path / "connection.json"
    logs = []
    for name in ("a", "b"):
        for i in range(2):
            logs.append(tmp_path / f"engine-{name}{i}.log")
            hosts.spawn(name, [*TASKMILL, "engine", "--no-replace", "--connection-file", str(conn),
                               "--property", f"host={name}"], logs[-1])
    # Started before the controller, the engines wait for it instead of dying.
    wait_until(lambda: all("waiting for the connection file" in p.read_text() for p in logs),
               "the engines to say they wait for the connection file")
    hosts.spawn("ctl", [*TASKMILL, "controller", "--ip", "0.0.0.0",
                        "--location", hosts.address["ctl"], "--connection-file", str(conn),
                        "--db", ":memory:", "--heartbeat", str(heartbeat)],
                tmp_path / "controller.log")
    wait_until(conn.exists, "the controller to write its connection file")
    info = read_connection_file(conn)  # bound to every interface, advertising one address
    assert info.ip == "0.0.0.0"
    assert info.engine_url.startswith(f"tcp://{hosts.address['ctl']}:")
    return conn


def map_in_background(tc: TaskClient, retries: int, n: int = 1000):
    """Start `tc.options(retries=...).map(work, range(n))` in a thread; (thread, outcome)."""
    outcome: dict = {}

    def run_map():
        try:
            outcome["values"] = tc.options(retries=retries).map(work, range(n), chunksize=1)
        except BaseException as e:  # noqa: BLE001 - the test reports it
            outcome["error"] = e

    thread = threading.Thread(target=run_map, daemon=True)
    thread.start()
    return thread, outcome


def cut_for_ten_seconds(hosts: Hosts, tc: TaskClient, *, declared_dead: bool) -> None:
    """Cut host a's link once 100 tasks finished, hold it 10 s while b works, restore it."""
    wait_until(lambda: tc.queue_status()["succeeded"] >= 100, "100 tasks to finish")
    hosts.cut("a")
    cut_at = time.monotonic()
    assert tc.queue_status()["scheduled"] > 0, "the map ended before the cut"
    if declared_dead:
        wait_until(lambda: all(e["state"] == "dead" for e in tc.engines()
                               if e["properties"]["host"] == "a"),
                   "the controller to declare a's engines dead", timeout=30)
    done = tc.queue_status()["succeeded"]
    wait_until(lambda: tc.queue_status()["succeeded"] > done,
               "b's engines to keep finishing tasks during the cut", timeout=30)
    wait_until(lambda: time.monotonic() - cut_at >= 10.0, "the 10 s cut to last")
    if not declared_dead:
        assert all(e["state"] != "dead" for e in tc.engines())
    hosts.restore("a")


def check_map(thread: threading.Thread, outcome: dict, tc: TaskClient) -> dict:
    thread.join(timeout=120)
    assert not thread.is_alive(), "the map did not finish"
    assert "error" not in outcome, outcome.get("error")
    values = outcome["values"]
    assert [v for v, _ in values] == [x * x for x in range(1000)]  # no task lost
    assert {host for _, host in values} == {"a", "b"}
    stats = tc.statistics()
    assert stats["queue"] == {"scheduled": 0, "pending": 0, "succeeded": 1000, "failed": 0}
    assert stats["finished"] == stats["submitted"] == 1000  # none finished twice
    return stats


def test_map_across_hosts_survives_a_cut_link(hosts, tmp_path):
    """Heartbeat 1 s: a's engines are declared dead during the cut, retries rerun their tasks,
    and the same processes register again (as new engines) once the link is back."""
    conn = start_engines_then_controller(hosts, tmp_path, heartbeat=1)
    with TaskClient(conn, timeout=60) as tc, TaskClient(conn, timeout=60) as mapper:
        wait_until(lambda: len(tc.engines()) == 4, "4 engines to register", timeout=60)
        before = {e["engineid"] for e in tc.engines()}
        pids_a = sorted(e["pid"] for e in tc.engines() if e["properties"]["host"] == "a")
        thread, outcome = map_in_background(mapper, retries=3)
        cut_for_ten_seconds(hosts, tc, declared_dead=True)
        stats = check_map(thread, outcome, tc)
        assert stats["engines_died"] == 2

        def back():
            return sorted(e["pid"] for e in tc.engines()
                          if e["properties"]["host"] == "a" and e["state"] != "dead")
        wait_until(lambda: back() == pids_a, "a's engines to register again", timeout=60)
        again = tc.options(depend={"host": "a"}).map(work, range(20), chunksize=1)
        assert again == [(x * x, "a") for x in range(20)]
        new_ids = {e["engineid"] for e in tc.engines() if e["state"] != "dead"} - before
        assert len(new_ids) == 2


def test_a_long_heartbeat_rides_out_a_cut_link(hosts, tmp_path):
    """Heartbeat 8 s (dead after 24 s): a 10 s cut goes unnoticed, so no retries are needed
    and a's engines keep their ids; their results arrive when the link is back."""
    conn = start_engines_then_controller(hosts, tmp_path, heartbeat=8)
    with TaskClient(conn, timeout=60) as tc, TaskClient(conn, timeout=60) as mapper:
        wait_until(lambda: len(tc.engines()) == 4, "4 engines to register", timeout=60)
        ids_a = sorted(e["engineid"] for e in tc.engines() if e["properties"]["host"] == "a")
        thread, outcome = map_in_background(mapper, retries=0)
        cut_for_ten_seconds(hosts, tc, declared_dead=False)
        stats = check_map(thread, outcome, tc)
        assert stats["engines_died"] == 0
        again = tc.options(depend={"host": "a"}).map(work, range(20), chunksize=1)
        assert again == [(x * x, "a") for x in range(20)]
        assert sorted(e["engineid"] for e in tc.engines()
                      if e["properties"]["host"] == "a" and e["tasks_done"] > 0) == ids_a


def connections_from(hosts: Hosts, name: str, port: int) -> list[str]:
    """The TCP connections to the controller's `port` from host `name`, in any state the
    kernel still holds (`ss` in ctl's namespace)."""
    out = subprocess.run(["ip", "netns", "exec", hosts.ns("ctl"), "ss", "-Htn",
                          f"( sport = :{port} )"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if f"{hosts.address[name]}:" in line]


@pytest.mark.timeout(180)
def test_the_kernel_ends_the_controllers_connections_to_a_vanished_host(hosts, tmp_path):
    """The engine links carry no ZeroMQ heartbeats (at 1,000 engines they cost a fifth of a
    core): the controller's own heartbeats declare a vanished host's engines dead, and the
    kernel's TCP keepalive and user timeout (defaults.ENGINE_LINK_*) end its connections to
    that host, even those with a ping on its way (keepalive alone would leave them to TCP's
    retransmissions, ~15 minutes), within about ENGINE_LINK_USER_TIMEOUT_MS."""
    need_programs("ss")
    conn = start_engines_then_controller(hosts, tmp_path, heartbeat=1)
    port = int(read_connection_file(conn).engine_url.rsplit(":", 1)[1])
    with TaskClient(conn, timeout=60) as tc:
        wait_until(lambda: len(tc.engines()) == 4, "4 engines to register", timeout=60)
        assert len(connections_from(hosts, "a", port)) == 8  # 2 engines x 4 sockets
        hosts.cut("a")
        wait_until(lambda: all(e["state"] == "dead" for e in tc.engines()
                               if e["properties"]["host"] == "a"),
                   "the controller to declare a's engines dead", timeout=30)
        wait_until(lambda: not connections_from(hosts, "a", port),
                   "the kernel to end the connections to host a", timeout=120)
        assert all(e["state"] != "dead" for e in tc.engines() if e["properties"]["host"] == "b")


CUT_CLIENT = """
import sys

from taskmill import TaskClient


def slow():
    import time

    time.sleep(4)
    return "done"


with TaskClient(sys.argv[1], timeout=30, reconnect_timeout=300) as tc:
    fut = tc.options(depend={"host": "b"}).submit(slow)
    tid = fut.taskid
    print("waiting", flush=True)
    print("result", tc.get_task_result(tid, block=True), fut.result(), flush=True)
"""


def test_a_client_cut_off_without_a_word_is_answered_when_its_link_is_back(hosts, tmp_path):
    """A client on host a waits in a blocking call (and on a future) when a's link goes down
    for 10 s: no reset reaches either side, and the task it waits for finishes on b meanwhile.
    The transport heartbeat of the client's send socket ends its dead connections (the
    controller's side ends within TCP's user timeout); when the link is back the client
    connects anew under new ids and asks again, and both calls return the result, long before the
    client's reconnect_timeout (300 s). (Before, the answer sent during the cut was lost and
    the blocking call waited for ever.)"""
    conn = start_engines_then_controller(hosts, tmp_path, heartbeat=8)  # (a's engines ride it out)
    log = tmp_path / "client-a.log"
    with TaskClient(conn, timeout=60) as tc:
        wait_until(lambda: len(tc.engines()) == 4, "4 engines to register", timeout=60)
        hosts.spawn("a", [sys.executable, "-c", CUT_CLIENT, str(conn)], log)
        wait_until(lambda: "waiting" in log.read_text(), "the client on a to wait", timeout=60)
        wait_until(lambda: tc.statistics()["requests_waiting"] >= 2,
                   "its blocking call and its future's watch to reach the controller")
        hosts.cut("a")
        cut_at = time.monotonic()
        wait_until(lambda: tc.queue_status()["succeeded"] >= 1,
                   "the task to finish on b during the cut", timeout=30)
        wait_until(lambda: time.monotonic() - cut_at >= 10.0, "the 10 s cut to last")
        hosts.restore("a")
        wait_until(lambda: "result done done" in log.read_text(),
                   "the client on a to get its answers", timeout=60)
