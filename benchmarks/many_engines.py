#!/usr/bin/env python3
"""One controller, many engines: dispatch throughput, controller CPU and RSS at 2 … 1,000 engines.

Real engines are processes of ~30 MB each; a thousand of them do not fit on this machine. So the
engines here are *light*: one process (`--serve N`) holds N engines' sockets (four DEALERs each,
as a real engine has) and speaks the engine protocol over them — hello, register, heartbeats
with what the engine holds, echoing pings, taking `tasks` messages and answering each task at
once with a `None` result, keeping results until acknowledged. The controller cannot tell them
from real engines, so what is measured is the controller's own cost of many engines:

- heartbeat load: the controller's CPU while idle with N engines (pings out, echoes and
  heartbeat reports in), as a share of one core, and how much of it is ZeroMQ's I/O thread
  (ZMTP heartbeats on each of the 4 connections per engine) rather than the Python loop;
- dispatch: T no-op tasks submitted as futures and gathered (tasks/s), and the controller's CPU
  per task;
- the controller's RSS after registration and at the end.

    python benchmarks/many_engines.py                        # 2, 100, 1000 engines
    python benchmarks/many_engines.py --engines 2,1000 --tasks 5000 --write
    python benchmarks/many_engines.py --engines 1000 --profile ctl.prof   # cProfile the controller

The light engines share two cores with the controller and the client here, so each row also
pays for their process's work (its CPU per task is a column); `--light-procs P` spreads them.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from taskmill import TaskClient
from taskmill.connection import read_connection_file
from taskmill.wire import Refused, Wire, dumps, recv_message, send_message

ROOT = Path(__file__).resolve().parent


def noop() -> None:
    return None


# -- the light engines -----------------------------------------------------------------------------
class LightEngine:
    """One engine's sockets and protocol state; answers every task at once with None."""

    def __init__(self, ctx: zmq.Context, url: str, key: bytes, touched: set[int]) -> None:
        self.uuid = uuid.uuid4().hex.encode()
        self.socks: dict[str, zmq.Socket] = {}
        for kind in ("t", "c", "r", "h"):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            s.setsockopt(zmq.ROUTING_ID, self.uuid + b"." + kind.encode())
            s.connect(url)
            self.socks[kind] = s
        self.wires = {k: Wire(key) for k in ("t", "c", "r")}
        self.session: bytes | None = None
        self.engineid: int | None = None
        self.gen = 0
        self.mseq = 0
        self.unacked: dict[tuple[int, int], dict[str, Any]] = {}
        self.result_body = dumps(None)
        self.pmac = self.wires["r"].payload_mac(self.result_body)
        self.next_hb = 0.0
        self.next_hello = 0.0
        self.heartbeat = 1.0
        self.fds = {k: s.getsockopt(zmq.FD) for k, s in self.socks.items()}
        self.touched = touched  # (the descriptors of sockets sent on: see serve)

    def send(self, kind: str, header: dict[str, Any], frames: list[Any] | None = None) -> None:
        send_message(self.socks[kind], self.wires[kind].encode(header, frames or []))
        self.touched.add(self.fds[kind])

    def tick(self, now: float) -> None:
        if self.engineid is None:
            if now >= self.next_hello:
                self.send("t", {"type": "hello"})
                self.next_hello = now + 1.0
        elif now >= self.next_hb:
            self.send("c", {"type": "hb", "engineid": self.engineid, "gen": self.gen,
                            "session": self.session, "t": now, "held": [], "current": None,
                            "unacked": [list(k) for k in self.unacked], "mseq": self.mseq,
                            "missing": []})
            self.next_hb = now + self.heartbeat

    def on_message(self, kind: str, msg: list[Any]) -> None:
        if kind == "h":  # a ping: echo it, as the real engine's ZeroMQ device does
            send_message(self.socks["h"], msg)
            self.touched.add(self.fds["h"])
            return
        try:
            h, frames = self.wires[kind].decode(msg)
        except Refused:
            return
        t = h["type"]
        if t == "welcome" and self.engineid is None:
            self.session = h.get("session")
            self.send("t", {"type": "register", "uuid": self.uuid.decode(),
                            "ctl_ident": self.uuid + b".c", "res_ident": self.uuid + b".r",
                            "heart_ident": self.uuid + b".h", "hostname": socket.gethostname(),
                            "pid": os.getpid(), "properties": {}, "session": self.session,
                            "prev_session": None, "running": None, "finished": [],
                            "t": time.monotonic()})
        elif t == "registered" and h.get("session") == self.session:
            self.engineid = h["engineid"]
            self.heartbeat = float(h.get("heartbeat", 1.0))
            self.gen += 1
        elif t == "tasks" and h.get("session") == self.session:
            self.mseq = max(self.mseq, h.get("mseq", 0))
            entries, frames_out = [], []
            for entry in h.get("tasks") or ():
                reply = {"tid": entry["tid"], "attempt": entry["attempt"],
                         "kind": entry["exec"]["kind"], "duration": 0.0, "stdout": "",
                         "stderr": "", "status": "ok", "n": len(self.result_body),
                         "pmac": self.pmac}
                self.unacked[(entry["tid"], entry["attempt"])] = reply
                entries.append(reply)
                frames_out.extend(self.result_body)
            if entries:
                self.send("r", {"type": "results", "session": self.session, "results": entries},
                          frames_out)
        elif t == "hb" and h.get("session") == self.session:
            for key in h.get("ack") or ():
                self.unacked.pop((key[0], key[1]), None)
        elif t == "revoke":
            self.send("c", {"type": "revoked", "tid": h.get("tid"), "attempt": h.get("attempt"),
                            "ok": False, "session": self.session})


def serve(n: int, connection_file: str) -> None:
    """Run n light engines in this process until SIGTERM.

    The sockets are watched through their notification descriptors with epoll, so a loop turn
    costs the sockets that have something, not all 4 x n of them (zmq_poll over 4,000 sockets
    cost this process ~85 µs per task at 1,000 engines, more than the controller's own work).
    ZeroMQ's descriptor only says that a socket's events may have changed: a socket it names,
    or one this process sent on (a send may take the signal of a message that came meanwhile),
    is read until it has nothing more."""
    info = read_connection_file(connection_file)
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 4 * n + 64)
    touched: set[int] = set()
    engines = [LightEngine(ctx, info.engine_url, info.key_bytes, touched) for _ in range(n)]
    ep = select.epoll()
    by_fd: dict[int, tuple[zmq.Socket, LightEngine, str]] = {}
    for e in engines:
        for kind in ("t", "c", "r", "h"):
            sock = e.socks[kind]
            fd = sock.getsockopt(zmq.FD)
            by_fd[fd] = (sock, e, kind)
            ep.register(fd, select.EPOLLIN)
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    next_tick = 0.0
    dirty = set(by_fd)  # (every socket once at the start)
    while not stop:
        now = time.monotonic()
        if now >= next_tick:
            for e in engines:
                e.tick(now)
            next_tick = now + 0.05
        for fd, _ in ep.poll(0 if dirty else 0.05):
            dirty.add(fd)
        todo, dirty = dirty, set()
        for fd in todo:
            sock, e, kind = by_fd[fd]
            for _ in range(64):
                try:
                    msg = (recv_message(sock, zmq.NOBLOCK) if kind != "h"
                           else sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                e.on_message(kind, msg)
            else:
                dirty.add(fd)  # (more waiting: come back after the others)
        dirty |= touched
        touched.clear()
    ep.close()
    ctx.destroy(linger=0)


def start_light(n: int, connection_file: Path | str) -> subprocess.Popen:
    """A process of `n` light engines for the controller of `connection_file` (`serve`)."""
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(n),
                             "--connection-file", str(connection_file)],
                            stdin=subprocess.DEVNULL)


def live_engines(tc: TaskClient) -> int:
    """How many engines the controller lists as not dead."""
    return len([e for e in tc.engines() if e.get("state") != "dead"])


def stop(*procs: subprocess.Popen) -> None:
    """SIGTERM to each process still running, then wait for each (killed after 30 s)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# -- the measurement -------------------------------------------------------------------------------
def proc_cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def zmq_io_cpu(pid: int) -> float:
    """CPU seconds of the process's ZeroMQ I/O threads ("ZMQbg/IO/..."): the transport's own
    work (ZMTP heartbeats on every connection, reading and writing), apart from the loop's."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except FileNotFoundError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        if name.startswith("ZMQbg/IO"):
            total += (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    return total


def proc_kib(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(n: int, tasks: int, procs: int, idle: float, profile: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taskmill-many-") as tmp:
        conn = Path(tmp) / "connection.json"
        ctl_cmd = [sys.executable, "-m", "taskmill", "controller", "--connection-file", str(conn),
                   "--no-dashboard", "--db", str(Path(tmp) / "tasks.db"), "--log-level", "WARNING"]
        if profile:  # (the controller writes its profile when SIGTERM ends it)
            ctl_cmd[1:1] = ["-m", "cProfile", "-o", profile]
        ctl = subprocess.Popen(ctl_cmd, stdin=subprocess.DEVNULL)
        lights: list[subprocess.Popen] = []
        try:
            deadline = time.monotonic() + 60
            while not conn.exists():
                if time.monotonic() > deadline or ctl.poll() is not None:
                    raise RuntimeError("the controller did not start")
                time.sleep(0.05)
            share = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
            lights.extend(start_light(k, conn) for k in share if k)
            with TaskClient(str(conn)) as tc:
                t0 = time.perf_counter()
                while (live := live_engines(tc)) < n:
                    if time.perf_counter() - t0 > 300:
                        raise RuntimeError(f"only {live} of {n} engines registered and alive "
                                           f"after 300 s")
                    time.sleep(0.2)
                registered = time.perf_counter() - t0
                time.sleep(2.0)  # (let registration's own traffic settle)
                rss_idle = proc_kib(ctl.pid, "VmRSS")
                c0, z0, w0 = proc_cpu(ctl.pid), zmq_io_cpu(ctl.pid), time.perf_counter()
                time.sleep(idle)
                w = time.perf_counter() - w0
                idle_share = (proc_cpu(ctl.pid) - c0) / w
                idle_zmq_share = (zmq_io_cpu(ctl.pid) - z0) / w
                for _ in range(3):  # warm up (submits: a light engine's None is no map chunk)
                    for f in [tc.submit(noop) for _ in range(2 * n)]:
                        f.result(timeout=300)
                tc.clear()
                c0, t0 = proc_cpu(ctl.pid), time.perf_counter()
                l0 = sum(proc_cpu(p.pid) for p in lights)
                rb0 = tc.statistics().get("results_read_back_for_clients")  # (None: older src)
                futures = [tc.submit(noop) for _ in range(tasks)]
                for f in futures:
                    f.result(timeout=300)
                wall = time.perf_counter() - t0
                cpu = proc_cpu(ctl.pid) - c0
                light_cpu = sum(proc_cpu(p.pid) for p in lights) - l0
                rb1 = tc.statistics().get("results_read_back_for_clients")
                read_back = None if rb0 is None or rb1 is None else rb1 - rb0
                tc.clear()
                alive = live_engines(tc)
            return {"engines": n, "alive_after": alive, "register_s": registered,
                    "idle_core_share": idle_share, "idle_zmq_share": idle_zmq_share,
                    "tasks_per_s": tasks / wall,
                    "cpu_us_per_task": cpu / tasks * 1e6,
                    "light_cpu_us_per_task": light_cpu / tasks * 1e6,
                    "read_back_share": None if read_back is None else read_back / tasks,
                    "rss_idle_mib": rss_idle / 1024,
                    "rss_hwm_mib": proc_kib(ctl.pid, "VmHWM") / 1024}
        finally:
            stop(*lights, ctl)


def read_back_cell(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default="2,100,1000", help="engine counts (default 2,100,1000)")
    p.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per count (default 20000)")
    p.add_argument("--idle", type=float, default=10.0,
                   help="seconds the idle controller's CPU is read (default 10)")
    p.add_argument("--light-procs", type=int, default=1, help="processes for the light engines")
    p.add_argument("--profile", default=None, help="cProfile the controller into this file "
                                                   "(of the last engine count)")
    p.add_argument("--write", action="store_true",
                   help="also add the table to benchmarks/many_engines.md (appended)")
    p.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--connection-file", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve is not None:
        serve(a.serve, a.connection_file)
        return 0
    counts = [int(x) for x in a.engines.split(",")]
    rows = []
    for i, n in enumerate(counts):
        print(f"... {n} engines", file=sys.stderr, flush=True)
        rows.append(measure(n, a.tasks, a.light_procs, a.idle,
                            a.profile if i == len(counts) - 1 else None))
    base = rows[0]["tasks_per_s"]
    out = [f"# One controller, many engines ({time.strftime('%Y-%m-%d %H:%M')}, "
           f"{os.cpu_count()} cores, {a.tasks:,} no-op tasks per row, light engines in "
           f"{a.light_procs} process(es))", "",
           f"    python benchmarks/many_engines.py --engines {a.engines} --tasks {a.tasks}", "",
           "| engines | registered in (s) | idle controller CPU (% of a core; of it in ZeroMQ's "
           "I/O thread) | tasks/s | "
           f"vs {counts[0]} engines | controller CPU µs/task | light engines' CPU µs/task | "
           "results read back from the store | controller RSS idle / peak (MiB) |",
           "|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        out.append(f"| {r['engines']:,} | {r['register_s']:.1f} | {100 * r['idle_core_share']:.1f} "
                   f"({100 * r['idle_zmq_share']:.1f} I/O) | "
                   f"{r['tasks_per_s']:,.0f} | {r['tasks_per_s'] / base:.2f}x | "
                   f"{r['cpu_us_per_task']:.0f} | {r['light_cpu_us_per_task']:.0f} | "
                   f"{read_back_cell(r['read_back_share'])} | {r['rss_idle_mib']:.0f} / {r['rss_hwm_mib']:.0f} |")
        if r["alive_after"] != r["engines"]:
            out.append(f"|  | (only {r['alive_after']} engines alive at the end) | | | | | | | |")
    text = "\n".join(out)
    print(text)
    if a.write:
        with open(ROOT / "many_engines.md", "a") as f:  # (a new section: the file keeps history)
            f.write("\n" + text.replace("# One controller", "## One controller", 1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
