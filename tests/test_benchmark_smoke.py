"""The benchmarks run end to end with tiny sizes and print their tables (no timing checks)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run a script of benchmarks/ (its name there, or a path) with `args`, output captured."""
    path = script if "/" in script else str(ROOT / "benchmarks" / script)
    return subprocess.run([sys.executable, path, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)

METRICS = [
    "startup:",
    "submit+wait:",
    "sequential latency, no-op round trip, median",
    "sequential latency, no-op round trip, p99",
    "bytes echoed",
    "float64 ndarray echoed",
    "map of",
    "controller CPU per task",
    "controller CPU per map item",
    "controller peak RSS",
]


@pytest.mark.timeout(120)
def test_compare_quick_runs_and_prints_the_table():
    proc = bench("compare.py", "--quick", "--peers", "none", "--timeout", "60", timeout=110)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    out = proc.stdout
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table, out
    header = table[0]
    for col in ("metric", "better", "taskmill", "ProcessPoolExecutor", "multiprocessing.Pool",
                "ZeroMQ relay (floor)"):
        assert col in header, header
    # --peers none measures neither third-party peer.
    assert "ipyparallel" not in header and "dask" not in header, header
    for name in METRICS:
        rows = [line for line in table if name in line]
        assert rows, f"no row for {name!r} in:\n{out}"
    # Every measured cell of the taskmill column holds a number, not an error.
    for row in table[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] and not cells[2].startswith(("error", "not ")), row
    # The relay (the transport's floor) is measured too: no cell of its column is an error.
    relay = [c.strip() for c in header.strip("|").split("|")].index("ZeroMQ relay (floor)")
    for row in table[2:]:
        cell = [c.strip() for c in row.strip("|").split("|")][relay]
        assert cell and not cell.startswith(("error", "not ")), row
    assert "--quick --peers none" in out  # the exact command line is printed
    assert "- taskmill bytecode: " in out  # (whether processes compile taskmill at start)


@pytest.mark.timeout(60)
def test_payload_costs_runs_and_prints_a_number_in_every_cell():
    proc = bench("payload_costs.py", "--repeat", "1", timeout=50)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1 MiB")
            or line.startswith("| 8 MB")]
    assert len(rows) == 2, proc.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert len(cells) == 5 and all(float(c) >= 0 for c in cells), row


@pytest.mark.timeout(120)
def test_payload_hops_traces_every_process_of_a_round_trip():
    proc = bench("payload_hops.py", "--quick", timeout=110)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    out = proc.stdout
    assert "round trip without the tracer: median" in out, out
    for process in ("client", "controller", "engine"):
        assert f"| {process}" in out, out
    # The steps of each hop are traced in the process that runs them.
    for step in ("| client | encode_task |", "| controller | SQLiteStore.commit |",
                 "| controller | └ FrameFiles.write |", "| engine | TaskCode.execute |",
                 "| engine | Wire.check_payload |", "| client | decode_result |"):
        assert step in out, out
    assert "| payload MACs (BLAKE3) |" in out and "| between traced steps" in out, out


@pytest.mark.timeout(120)
def test_cpu_per_task_runs_and_reports_each_process():
    proc = bench("cpu_per_task.py", "--lone", "20", "--flood", "200", "--db", ":memory:", timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert out.count("tasks/s") == 2, out
    for who in ("controller", "engine", "client"):
        assert out.count(f"- {who}: ") == 2, out


@pytest.mark.timeout(180)
def test_many_engines_registers_light_engines_and_fills_its_table():
    proc = bench("many_engines.py", "--engines", "2,20", "--tasks", "200", "--idle", "0.5", timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 2 ")
            or line.startswith("| 20 ")]
    assert len(rows) == 2, proc.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 9 and float(cells[3].replace(",", "")) > 0, row
    assert "engines alive at the end" not in proc.stdout, proc.stdout


@pytest.mark.timeout(180)
def test_shared_data_puts_once_per_engine():
    """(The put row's bytes to engines are at most one copy per engine; the baseline's are one
    per task.)"""
    proc = bench("shared_data.py", "--mb", "4", "--tasks", "10", "--baseline-tasks", "3", "--peers", "none", timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("| taskmill")]
    assert len(rows) == 2, proc.stdout
    put_mb, per_task_mb = float(rows[0][4]), float(rows[1][4])
    assert 4 <= put_mb <= 8 + 0.1 and per_task_mb >= 12, proc.stdout


@pytest.mark.timeout(180)
def test_memory_flat_prints_a_stopped_clients_figures():
    proc = bench("memory_flat.py", "--n", "0", "--futures", "0", "--slow-client", "1500", "--give-up", "60", timeout=170)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "| peak (VmHWM) |" in proc.stdout, proc.stdout
    assert "results_held_for_clients" in proc.stdout, proc.stdout
    assert ("1,500 futures done (1,500 with the right value), 0 never resolved"
            in proc.stdout), proc.stdout


@pytest.mark.timeout(120)
def test_killed_clients_forgets_each_one_and_holds_nothing_for_them():
    proc = bench("killed_clients.py", "--rounds", "2", "--futures", "300", "--forget-after", "1",
                 timeout=110)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("| ")]
    # round, RSS, clients, forgotten, results held, in flight: the observer alone is left
    assert [r[2:] for r in rows[-2:]] == [["1", "1", "0", "0"], ["1", "2", "0", "0"]], rows
    assert "growth over 2 rounds" in proc.stdout


@pytest.mark.timeout(120)
def test_memory_flat_prints_the_seed_run_and_the_futures_flood():
    proc = bench("memory_flat.py", "--n", "2000", "--batch", "1000", "--futures", "1500", timeout=110)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    seed = [r for r in rows if r.startswith("| 2,000 |")]
    flood = [r for r in rows if r.startswith("| 1,500 |")]
    assert len(seed) == 1 and len(flood) == 1, proc.stdout
    # controller start / peak / after, client start / with futures / after: all numbers
    cells = [c.strip() for c in flood[0].strip("|").split("|")]
    figures = [float(x) for cell in cells[1:3] for x in cell.split(" / ")]
    assert len(figures) == 6 and all(x > 0 for x in figures), flood[0]
    # the store on disk (database / WAL, MiB) in both tables
    for row, cell in ((flood[0], cells[3]), (seed[0], seed[0].strip("|").split("|")[3])):
        assert len([float(x) for x in cell.split(" / ")]) == 2, row


@pytest.mark.timeout(180)
def test_adapt_burst_runs_and_the_cluster_grows_and_shrinks_back():
    proc = bench("adapt_burst.py", "--tasks", "12", "--seconds", "0.3", "--min", "1", "--max", "3", "--idle-after", "0.5", timeout=170)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "tasks run once each: True" in proc.stdout, proc.stdout
    assert "the most engines live at once: 3 (MAX 3)" in proc.stdout, proc.stdout


@pytest.mark.timeout(180)
def test_dashboard_cost_polls_each_engine_form_and_fills_its_tables():
    proc = bench("dashboard_cost.py", "--engines", "5", "--rounds", "1", "--window", "1.5", "--calls", "3", timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("| 5 ")]
    assert [r[1] for r in rows[:2]] == ["rows", "columns"], proc.stdout
    for r in rows[:2]:
        assert len(r) == 6 and float(r[3]) >= 0 and float(r[4].split(" / ")[0]) > 0, r
    assert len(rows) == 3 and len(rows[2]) == 3, proc.stdout  # the statistics/activity table


@pytest.mark.timeout(240)
def test_startup_phases_fills_its_tables_and_its_ab():
    script = str(ROOT / "benchmarks" / "startup_phases.py")
    proc = bench(script, "--rounds", "1", timeout=200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| step", "| event"))]
    assert len(rows) == 9 + 5, proc.stdout
    for row in rows:  # a number in every cell after the name
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert cells and all(c.replace(".", "").lstrip("-").isdigit() for c in cells), row
    # The A/B of compare.py's startup, here against this same tree: a sample for each side.
    proc = bench(script, "--ab", str(ROOT / "src"), "--rounds", "1", timeout=200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("| this tree |") == 1 and str(ROOT / "src") in proc.stdout


@pytest.mark.timeout(120)
def test_client_replies_prints_a_figure_for_every_step():
    script = str(ROOT / "benchmarks" / "client_replies.py")
    proc = bench(script, "--repeat", "3", timeout=100)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 5 and all(float(r[1]) > 0 for r in rows), proc.stdout


@pytest.mark.timeout(180)
def test_instructions_per_task_counts_bytecodes_by_part_and_function():
    # (the callgrind mode needs valgrind, which CI does not install; the tracer needs nothing)
    proc = bench("instructions_per_task.py", "--opcodes", "--n", "20", "--top", "40",
                 timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    per_task = float(out.split(" bytecodes per task")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert per_task > 100, out  # a round trip runs the controller's loop, scheduler, store
    for part in ("controller", "scheduler", "store", "wire"):
        assert f"  {part} " in out, out
    assert "functions of" in out and "controller/loop.py:" in out, out


@pytest.mark.parametrize(("process", "part", "thread"), [
    ("client", "client/submitter.py:", "taskmill-client-io"),
    ("engine", "engine/core.py:", "taskmill-io"),
])
def test_instructions_per_task_counts_the_client_and_an_engine_too(process, part, thread):
    """Every thread of the process is traced: the client's and the engine's I/O threads
    (started before counting begins) count too."""
    proc = bench("instructions_per_task.py", "--process", process, "--opcodes", "--n", "20",
                 "--top", "60", timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    per_task = float(out.split(" bytecodes per task")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert per_task > 100 and f"per task in the {process}" in out, out
    assert part in out and thread in out and "MainThread" in out, out


@pytest.mark.timeout(180)
def test_instructions_per_task_counts_a_flood():
    proc = bench("instructions_per_task.py", "--opcodes", "--flood", "--engines", "2", "--n",
                 "50", "--top", "40", timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    per_task = float(out.split(" bytecodes per task")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert per_task > 100, out
    # (a flood's tasks are stored, scheduled, dispatched and streamed back as `done` results)
    for name in ("store/sqlite.py:add", "engine_tasks.py:dispatch", "credit.py:take"):
        assert name in out, out


def test_lone_tail_times_the_trips_and_says_where_the_fsyncs_fell():
    proc = bench("lone_tail.py", "--trips", "60", "--rounds", "1", timeout=110)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "60 lone round trips: median" in out and "p99" in out, out
    # (with perf: the slowest trips against the controller's fdatasyncs; without, said so)
    assert ("slowest 1% (" in out and "fdatasyncs: main thread" in out) or \
        "fdatasyncs not recorded" in out, out


@pytest.mark.timeout(60)
def test_wakeups_prints_a_positive_figure_for_every_step():
    proc = bench("wakeups.py", "--n", "400", "--rounds", "1", timeout=55)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 5, proc.stdout
    for row in rows:
        assert float(row.rstrip(" |").rsplit("|", 1)[1]) > 0, row


def test_round_trip_hops_times_every_segment_of_a_lone_round_trip():
    proc = bench("round_trip_hops.py", "--trips", "20", "--rounds", "1", "--runs", "relay,hops",
                 timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "bare ZeroMQ relay" in out and "instrumented" in out, out[-3000:]
    # Every process of the trip shows up on the critical path, with a figure.
    for where in ("| client |", "| controller", "| engine"):
        rows = [line for line in out.splitlines() if line.startswith(where)]
        assert rows and all(line.rstrip(" |").split("|")[-1].strip().isdigit()
                            for line in rows), (where, out[-3000:])


@pytest.mark.timeout(120)
def test_map_costs_reports_each_process_and_compare_runs_only_the_map():
    proc = bench("map_costs.py", "--items", "2000", "--rounds", "2", "--func", "square",
                 "--db", ":memory:", timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for who in ("controller", "client", "engine0", "engine1"):
        assert f"- {who}: " in proc.stdout, proc.stdout
    proc = bench("compare.py", "--quick", "--peers", "none", "--no-stdlib", "--only", "map",
                 timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip()
            for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    assert [v for k, v in rows.items() if k.startswith("map of")][0].replace(",", "").isdigit()
    assert [v for k, v in rows.items() if k.startswith("submit+wait")] == ["not measured (--only)"]


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind (callgrind)")
def test_map_instructions_counts_the_client_and_the_engines():
    proc = bench("map_instructions.py", "--items", "400", "--n", "1", timeout=290)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = proc.stdout.splitlines()[-1]
    assert "client " in line and "engine " in line, proc.stdout


CALLGRIND_OUT = """version: 1
creator: callgrind-3.19.0
positions: line
events: Ir
summary: {total}

ob=(1) /lib/libpython3.11.so.1.0
fl=(1) ceval.c
fn=(1) _PyEval_EvalFrameDefault
10 {py}
cob=(2) /x/_cmsgpack.cpython-311-x86_64-linux-gnu.so
cfi=(2) pack.c
cfn=(2) pack
calls={calls} 5
11 {ext}

ob=(2)
fl=(2)
fn=(2)
5 {ext}
"""


def test_callgrind_parts_subtracts_two_runs_by_object_and_entry_point(tmp_path):
    """callgrind_parts.py on two small callgrind files: per task, the difference of each
    object's self cost and of each call into an extension (cost and count)."""
    more, base = tmp_path / "more.out", tmp_path / "base.out"
    more.write_text(CALLGRIND_OUT.format(total=900, py=600, ext=300, calls=4))
    base.write_text(CALLGRIND_OUT.format(total=450, py=300, ext=150, calls=2))
    proc = bench("callgrind_parts.py", str(more), str(base), "--n", "2", timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "instructions per task: 225" in out
    assert "150   66.7%  libpython3.11.so.1.0" in out and "75   33.3%  _cmsgpack" in out
    assert "75    1.00  _cmsgpack.cpython-311-x86_64-linux-gnu.so:pack" in out


@pytest.mark.timeout(180)
def test_engines_vanish_kills_every_engine_mid_flood_and_every_task_finishes_once():
    proc = bench("engines_vanish.py", "--engines", "20", "--tasks", "400", "--watch", "4",
                 timeout=170)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| 20 ")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "400 / 0 / 0", row  # every future: its result
    assert cells[6] == "20", row  # all twenty engines were found dead
    assert cells[7] == "400 of 400", row


def test_floors_measures_the_relay_digests_and_writes_of_each_payload():
    proc = bench("floors.py", "--trips", "3", timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].split("(")[0].strip() for r in rows[1:]] == [
        "1 MiB bytes", "8 MB float64 array"], proc.stdout
    for row in rows[1:]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        relay, digest, write, floor = (float(cells[i]) for i in (1, 3, 4, 5))
        assert relay > 0 and digest > 0 and write > 0
        assert abs(floor - (relay + 4 * digest + 2 * write)) < 0.02  # (its own arithmetic)
    assert rows[1].split("|")[8].strip() != "n/a" and rows[2].split("|")[8].strip() == "n/a"
