"""Where a lone round trip's time goes: hop-by-hop wall-clock timestamps in every process.

    python benchmarks/round_trip_hops.py [--trips 2000] [--rounds 2] [--db PATH] [--write]

One client, a local Cluster of 2 engines with the durable SQLite store (its default), one
`tc.submit(noop).result()` at a time. Each round runs, each in a fresh client process: the bare
ZeroMQ relay and ProcessPoolExecutor of compare.py (the references the targets are ratios
to), taskmill over ipc:// (the local default) and over tcp://, and taskmill instrumented.

The instrumented run's processes (client, controller, both engines) are wrapped from the
outside: this script writes a `sitecustomize.py` into a temporary folder put first on
PYTHONPATH, which (with TASKMILL_HOPS set) imports this module and calls `install()`: it wraps
functions of taskmill and pyzmq (poll returns, decode, handlers, the store's commit and its SQL
statements, sends, the engine's thread hand-over, the future's completion) so that each appends
(time.perf_counter_ns(), label) to a list, written to TASKMILL_HOPS/<pid>.pkl at exit.
perf_counter is CLOCK_MONOTONIC, shared by the processes of one machine. Product code is
untouched; every wrapper costs ~0.3-1 µs (compare the instrumented run with the plain one).

The report cuts the timeline into trips at the client's calls and gives (1) the critical path
in segments, each ending at the first event of its label after its start, with its median over
the trips, and (2) every event in order with its median time since the call, over the trips
whose set of events is the most common one (a heartbeat or a ping in a trip changes it), in
the order of their medians.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import functools
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EVENTS: list[tuple[int, str]] = []
_now = time.perf_counter_ns


def mark(label: str) -> None:
    EVENTS.append((_now(), label))


def _thread() -> str:
    name = threading.current_thread().name
    return {"MainThread": "main", "taskmill-io": "io", "taskmill-client-io": "io"}.get(name, name)


def wrap(owner: Any, name: str, before: str | None = None, after: str | None = None,
         label: Any = None) -> None:
    """Replace owner.name by a wrapper marking `before` on entry and `after` on return
    (`label(args)` may add a suffix, e.g. the message's type)."""
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        extra = label(args) if label else ""
        if before:
            EVENTS.append((_now(), before + extra))
        out = fn(*args, **kwargs)
        if after:
            EVENTS.append((_now(), after + extra))
        return out

    setattr(owner, name, wrapper)


def _install_zmq(role: str) -> None:
    import zmq

    poll = zmq.Poller.poll

    def timed_poll(self: Any, timeout: Any = None) -> Any:
        if role == "eng":  # (the others' extra polls, for acks and pings, blur the trips)
            EVENTS.append((_now(), f"{role}.{_thread()}.poll-sleeps"))
        out = poll(self, timeout)
        if out:
            EVENTS.append((_now(), f"{role}.{_thread()}.poll-wakes"))
        return out

    zmq.Poller.poll = timed_poll


def _install_controller() -> None:
    from taskmill.controller import core, loop
    from taskmill.store import sqlite

    _install_zmq("ctl")

    def kind(a: Any) -> str:  # on_client/on_engine(self, ident, header, ...)
        return "." + str(a[2].get("type"))

    wrap(core.ControllerCore, "on_client", "ctl.handle-client", "ctl.handled-client", kind)
    wrap(core.ControllerCore, "on_engine", "ctl.handle-engine", "ctl.handled-engine", kind)
    wrap(loop.Controller, "flush", "ctl.flush", "ctl.flushed")
    wrap(sqlite.SQLiteStore, "commit", "ctl.commit", "ctl.committed")
    init = sqlite.SQLiteStore.__init__

    def store_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.db = SQLProbe(self.db)
        wrap(self.files, "write", None, "ctl.commit.files-written")

    sqlite.SQLiteStore.__init__ = store_init
    wrap(loop.Wire, "decode", "ctl.decode", "ctl.decoded")
    wrap(loop.Wire, "encode", "ctl.encode", "ctl.encoded")
    send = loop.send_message
    names: dict[int, str] = {}
    flush = loop.Controller.flush

    def flush_named(self: Any) -> None:
        if not names:
            names.update({id(self.client_sock): "to-client", id(self.engine_sock): "to-engine"})
        flush(self)

    loop.Controller.flush = flush_named

    def sent(sock: Any, msg: Any, *a: Any, **k: Any) -> Any:
        out = send(sock, msg, *a, **k)
        EVENTS.append((_now(), f"ctl.sent.{names.get(id(sock), '?')}"))
        return out

    loop.send_message = sent


class SQLProbe:
    """A sqlite3.Connection that marks the end of each statement (by its first words)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def execute(self, sql: str, *args: Any) -> Any:
        out = self._db.execute(sql, *args)
        EVENTS.append((_now(), "ctl.commit.sql." + "-".join(sql.split()[:3])))
        return out

    def executemany(self, sql: str, rows: Any) -> Any:
        out = self._db.executemany(sql, rows)
        EVENTS.append((_now(), "ctl.commit.sql." + "-".join(sql.split()[:3])))
        return out


def _install_engine() -> None:
    from taskmill.engine import control, core, running, sockets

    _install_zmq("eng")
    wrap(control.EngineControl, "_take_tasks", "eng.io.take-tasks", "eng.io.queued")
    wrap(core.Engine, "_next_task", None, "eng.main.has-task")
    wrap(running.TaskCode, "execute", "eng.main.execute", "eng.main.executed")
    wrap(core.Engine, "_run_task", "eng.main.run-task", "eng.main.ran-task")
    wrap(sockets.EngineSockets, "send", None, "eng.sent",
         label=lambda a: "." + str(a[2].get("type")))
    wrap(sockets.EngineSockets, "decode", "eng.decode", "eng.decoded")
    wrap(core, "reply_body", "eng.main.reply-body", "eng.main.replied")
    wrap(core.Engine, "_queue_result", "eng.main.queue-result", "eng.main.queued-result")
    wrap(control.EngineControl, "send_results", "eng.main.send-results", None)
    wrap(control, "to_controller", None, "eng.header-built")


def _install_client() -> None:
    from taskmill.client import backend, connection, futures, verbs

    _install_zmq("cli")
    if hasattr(connection, "zmq_poll"):  # (the client's I/O loop polls without a Poller)
        zmq_poll = connection.zmq_poll

        def timed_zmq_poll(sockets: Any, timeout: int = -1) -> Any:
            out = zmq_poll(sockets, timeout)
            if out:
                EVENTS.append((_now(), f"cli.{_thread()}.poll-wakes"))
            return out

        connection.zmq_poll = timed_zmq_poll
    wrap(verbs, "submit", "cli.main.submit", "cli.main.submitted")
    wrap(connection.Connection, "send", "cli.main.send", "cli.main.sent")
    wrap(backend.Backend, "encode", "cli.main.encode-task", "cli.main.encoded-task")
    wrap(backend.Backend, "submit_futures", "cli.main.submit-futures", None)
    wrap(connection.Connection, "_on_message", "cli.io.on-message", "cli.io.handled")
    wrap(connection.Wire, "decode", "cli.decode", "cli.decoded")
    wrap(futures.TaskFuture, "result", "cli.main.result", "cli.main.got-result")


def install() -> None:
    """(In each process, from sitecustomize.) Wrap what this process's role runs."""
    argv = sys.orig_argv[1:4]
    if argv == ["-m", "taskmill", "controller"]:
        _install_controller()
    elif argv == ["-m", "taskmill", "engine"]:
        _install_engine()
    else:
        return
    atexit.register(dump)


def dump() -> None:
    out = Path(os.environ["TASKMILL_HOPS"]) / f"{os.getpid()}.pkl"
    out.write_bytes(pickle.dumps((sys.argv, EVENTS)))


SITECUSTOMIZE = f"""\
import os, sys
if os.environ.get("TASKMILL_HOPS"):
    sys.path.insert(0, {str(HERE)!r})
    import round_trip_hops
    round_trip_hops.install()
    del sys.path[0]
"""


def noop() -> None:
    return None


# -- the parent: run the trips, then read every process's events ---------------------------
def run_trips(trips: int, db: str | None, instrument: bool, transport: str) -> list[float]:
    import taskmill

    if instrument:
        _install_client()
    with taskmill.Cluster(2, db=db, transport=transport) as cluster:
        tc = cluster.client()
        for _ in range(200):  # warm-up (imports, first pickles, caches)
            tc.submit(noop).result()
        EVENTS.clear()
        times = []
        for _ in range(trips):
            t0 = _now()
            EVENTS.append((t0, "cli.main.call"))
            tc.submit(noop).result()
            t1 = _now()
            EVENTS.append((t1, "cli.main.end"))
            times.append((t1 - t0) / 1e3)
        tc.close()
    return times


def reference_trips(name: str, trips: int) -> list[float]:
    """Lone round trips of compare.py's bare ZeroMQ relay or its ProcessPoolExecutor peer."""
    sys.path.insert(0, str(HERE))
    import compare

    peer = compare.RelayPeer() if name == "relay" else compare.ProcessPoolPeer()
    peer.start()
    try:
        for _ in range(200):
            peer.call(compare.noop)
        times = []
        for _ in range(trips):
            t0 = _now()
            peer.call(compare.noop)
            times.append((_now() - t0) / 1e3)
        return times
    finally:
        peer.stop()


def analyse(events: list[tuple[int, str]]) -> tuple[list[tuple[str, float, float]], int, int]:
    events.sort()
    trips: list[list[tuple[int, str]]] = []
    for t, label in events:
        if label == "cli.main.call":
            trips.append([(t, label)])
        elif trips:
            trips[-1].append((t, label))
    numbered = []
    for trip in trips:
        end = next((i for i, (_, lab) in enumerate(trip) if lab == "cli.main.end"), None)
        if end is None:
            continue
        seen: collections.Counter[str] = collections.Counter()
        row = []
        for t, lab in trip[:end + 1]:
            seen[lab] += 1
            row.append((t - trip[0][0], f"{lab}#{seen[lab]}" if seen[lab] > 1 else lab))
        numbered.append(row)
    # (The processes run at once: the order of their events varies from trip to trip, so a
    # trip's shape is the set of its events.)
    shapes = collections.Counter(frozenset(lab for _, lab in row) for row in numbered)
    shape, count = shapes.most_common(1)[0]
    kept = [dict((lab, t) for t, lab in row) for row in numbered
            if frozenset(lab for _, lab in row) == shape]
    order = sorted(shape, key=lambda lab: statistics.median(row[lab] for row in kept))
    table = []
    last = 0.0
    for lab in order:
        at = statistics.median(row[lab] for row in kept) / 1e3
        table.append((lab, at, at - last))
        last = at
    return table, count, len(numbered)


# The critical path, in segments between two events: (where, what, from, to).
SEGMENTS = [
    ("client", "encode the task (pickles, spec)", "cli.main.call", "cli.main.encoded-task"),
    ("client", "submit bookkeeping (future, queue)", "cli.main.encoded-task", "cli.main.send"),
    ("client", "request header, sign, zmq send", "cli.main.send", "cli.main.sent"),
    ("wire", "client -> controller: zmq, wake-up", "cli.main.sent", "ctl.main.poll-wakes"),
    ("controller", "read, verify (turn 1)", "ctl.main.poll-wakes", "ctl.decoded"),
    ("controller", "handle submit (validate, schedule, store.add)", "ctl.decoded",
     "ctl.handled-client.submit"),
    ("controller", "to the commit (turn 1)", "ctl.handled-client.submit", "ctl.commit"),
    ("controller", "SQLite commit (turn 1)", "ctl.commit", "ctl.committed"),
    ("controller", "build, sign, send the task", "ctl.committed", "ctl.sent.to-engine"),
    ("wire", "controller -> engine: zmq, wake-up", "ctl.sent.to-engine", "eng.io.poll-wakes"),
    ("engine", "read, verify (I/O thread)", "eng.io.poll-wakes", "eng.decoded"),
    ("engine", "queue the task (I/O thread)", "eng.decoded", "eng.io.queued"),
    ("engine", "hand-off: I/O thread -> main thread", "eng.io.queued", "eng.main.has-task"),
    ("engine", "prepare (payload check, unpickle)", "eng.main.has-task", "eng.main.execute"),
    ("engine", "run noop", "eng.main.execute", "eng.main.executed"),
    ("engine", "build the result (pickle, MAC, outbox)", "eng.main.executed",
     "eng.header-built"),
    ("engine", "sign, zmq send", "eng.header-built", "eng.sent.results"),
    ("wire", "engine -> controller: zmq, wake-up", "eng.sent.results", "ctl.main.poll-wakes"),
    ("controller", "read, verify (turn 2)", "ctl.main.poll-wakes", "ctl.decoded"),
    ("controller", "handle the result (schedule, store.finish)", "ctl.decoded",
     "ctl.handled-engine.results"),
    ("controller", "to the commit (turn 2)", "ctl.handled-engine.results", "ctl.commit"),
    ("controller", "SQLite commit (turn 2)", "ctl.commit", "ctl.committed"),
    ("controller", "build, sign, send `done`", "ctl.committed", "ctl.sent.to-client"),
    ("wire", "controller -> client: zmq, wake-up", "ctl.sent.to-client",
     "cli.io.poll-wakes"),
    ("client", "read, verify (I/O thread)", "cli.io.poll-wakes", "cli.decoded"),
    ("client", "take the result, set the future (I/O thread)", "cli.decoded",
     "cli.io.handled"),
    ("client", "hand-off: I/O thread -> caller, unpickle", "cli.io.handled", "cli.main.end"),
]


assert all(SEGMENTS[i][2] == SEGMENTS[i - 1][3] for i in range(1, len(SEGMENTS)))


def segments(events: list[tuple[int, str]]) -> tuple[list[tuple[str, str, float]], float, int]:
    """Median µs of each critical-path segment, the median total of the trips measured, and
    how many they are. Each segment's end is the first event of its label after its start
    (so a label that comes twice in a trip, as the controller's wake-up, is told apart)."""
    events = sorted(events)
    trips: list[list[tuple[int, str]]] = []
    for t, label in events:
        if label == "cli.main.call":
            trips.append([])
        if trips:
            trips[-1].append((t, label))
    rows: list[list[int]] = []
    totals = []
    for trip in trips:
        at, i, before, row = trip[0][0], 0, 0, []
        for where, _, _, b in SEGMENTS:  # (each starts where the one before ends)
            # A sender's mark comes after its send returns, and it may lose its CPU to the
            # threads the send wakes: the receiver's wake-up may come before it. So the end
            # of a "wire" segment is looked for from the start of the segment before.
            first = before if where == "wire" else i
            j = next((k for k in range(first, len(trip)) if trip[k][1] == b), None)
            if j is None:
                break
            row.append(trip[j][0] - at)
            at, i, before = trip[j][0], j, i
        else:
            rows.append(row)
            totals.append(at - trip[0][0])
    medians = [(where, what, statistics.median(row[k] for row in rows) / 1e3)
               for k, (where, what, _, _) in enumerate(SEGMENTS)]
    return medians, statistics.median(totals) / 1e3, len(rows)


def child(args: argparse.Namespace) -> None:
    """(A client process.) Run the trips, print the figures as a pickle on stdout."""
    if args.child in ("relay", "pool"):
        times, events = reference_trips(args.child, args.trips), []
    else:
        times = run_trips(args.trips, args.db, args.child == "hops", args.transport)
        events = list(EVENTS)
    sys.stdout.buffer.write(pickle.dumps((times, events)))


RUNS = ("relay", "pool", "ipc", "tcp", "hops")  # (each round runs them all, in this order)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trips", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2, help="rounds of every run, alternated")
    p.add_argument("--db", default=None, help="Cluster(db=...): default taskmill's own (SQLite)")
    p.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    p.add_argument("--transport", default="ipc", help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true", help="write benchmarks/round_trip_hops.md")
    p.add_argument("--runs", default=",".join(RUNS),
                   help=f"which runs, comma-separated (default: {','.join(RUNS)})")
    p.add_argument("--save", help="also pickle every run's times and events to this file")
    p.add_argument("--load", help="report on the runs --save wrote instead of running")
    args = p.parse_args()
    if args.child:
        return child(args)
    results: dict[str, list[Any]] = {}
    if args.load:
        results = pickle.loads(Path(args.load).read_bytes())
    else:
        results["load"] = [uptime()]
        runs = [r for r in RUNS if r in args.runs.split(",")]
        for _ in range(args.rounds):
            for run in runs:
                results.setdefault(run, []).append(run_child(run, args))
        results["load"].append(uptime())
    if args.save:
        Path(args.save).write_bytes(pickle.dumps(results))
    lines = report(args, results)
    print("\n".join(lines))
    if args.write:
        (HERE / "round_trip_hops.md").write_text("\n".join(lines) + "\n")


def run_child(run: str, args: argparse.Namespace) -> tuple[list[float], list[Any]]:
    with tempfile.TemporaryDirectory(prefix="hops-") as tmp:
        env = dict(os.environ)
        if run == "hops":
            Path(tmp, "sitecustomize.py").write_text(SITECUSTOMIZE)
            env["TASKMILL_HOPS"] = tmp
            env["PYTHONPATH"] = os.pathsep.join([tmp, *filter(None, [env.get("PYTHONPATH")])])
        cmd = [sys.executable, __file__, "--child", run, "--trips", str(args.trips),
               "--transport", "tcp" if run == "tcp" else "ipc"]
        cmd += ["--db", args.db] if args.db else []
        out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE).stdout
        times, events = pickle.loads(out)
        for f in Path(tmp).glob("*.pkl"):
            events.extend(pickle.loads(f.read_bytes())[1])
    return times, events


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def report(args: argparse.Namespace, results: dict[str, list[Any]]) -> list[str]:
    def medians(run: str) -> str:
        return ", ".join(f"{statistics.median(t):.0f}" for t, _ in results[run])

    def p99s(run: str) -> str:
        return ", ".join(f"{statistics.quantiles(t, n=100)[98]:.0f}" for t, _ in results[run])

    if "hops" not in results:
        return [f"| {r} | {medians(r)} | {p99s(r)} |" for r in RUNS if r in results]
    times, events = results["hops"][-1]
    table, count, total = analyse(events)
    seg_rows, seg_total, n_seg = segments(events)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:10]
    names = {"relay": "bare ZeroMQ relay (compare.py's, tcp)",
             "pool": "ProcessPoolExecutor (2 workers)",
             "ipc": "taskmill, ipc:// (the local default), not instrumented",
             "tcp": "taskmill, tcp:// loopback, not instrumented",
             "hops": "taskmill, ipc://, instrumented (the wrappers' cost included)"}
    lines = [
        "# Where a lone round trip goes, hop by hop",
        "",
        f"`python benchmarks/round_trip_hops.py --trips {args.trips} --rounds {args.rounds}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python "
        f"{platform.python_version()}; 2 engines, durable SQLite store (the Cluster default), "
        "one `tc.submit(noop).result()` at a time after 200 warm-up trips.",
        "",
        f"Load (`uptime`) before and after: `{results['load'][0]}`; `{results['load'][1]}`. "
        "Other helpers share this 2-core machine: compare within this run, not with other runs.",
        "",
        "```", *lscpu, "```",
        "",
        f"| run ({args.trips} lone round trips each, in rounds: relay, pool, ipc, tcp, hops) "
        "| median µs per round | p99 µs per round |",
        "|---|---|---|",
        *(f"| {names[r]} | {medians(r)} | {p99s(r)} |" for r in RUNS if r in results),
        "",
        f"## The critical path in segments (last instrumented run, {n_seg} trips that have "
        "every event below, each segment ending at the first event of its label after its start)",
        "",
        "| where | segment | median µs |",
        "|---|---|---|",
        *(f"| {where} | {what} | {us:.0f} |" for where, what, us in seg_rows),
        f"| | sum of the medians | {sum(us for _, _, us in seg_rows):.0f} |",
        f"| | median of those trips' totals | {seg_total:.0f} |",
        "",
        "| where | sum of its segments' medians, µs |",
        "|---|---|",
        *(f"| {where} | {sum(us for w, _, us in seg_rows if w == where):.0f} |"
          for where in ("client", "controller", "engine", "wire")),
        "",
        "## Every event, in order",
        "",
        f"Timeline of the last instrumented run: {count} of {total} trips had the most common "
        "set of events (the others had a heartbeat, a ping or an ack in them) and are the "
        "ones summarised, in the order of their medians. `at`: median µs since the client's "
        "call; `step`: `at` less the row before's. (Threads of different processes interleave "
        "differently from trip to trip, and `#n` numbers a label's repeats within a trip, "
        "whatever they were for: the segments above are the ones to read.) Events: "
        "`process.thread.what`; `X`/`Xed`: entry to and return from a function; `poll-wakes`: "
        "a zmq poll returned with something to read; `sent.*`: a send_message returned.",
        "",
        "| # | event | at µs | step µs |",
        "|---|---|---|---|",
    ]
    for i, (lab, at, step) in enumerate(table):
        lines.append(f"| {i} | {lab} | {at:.0f} | {step:.0f} |")
    return lines


if __name__ == "__main__":
    main()
