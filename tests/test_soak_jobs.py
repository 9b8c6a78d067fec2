"""The fault soak's checks of dependent tasks (benchmarks/soak_jobs.py), on runs logs made by
hand: a dependent task that started before its dependency's counted run ended is found; a run
of the dependency on an engine declared dead meanwhile (stopped, then continued: its result
not taken) that ends later is not held against it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from soak_jobs import Given, RunsLog, after_problems, counted_pid  # noqa: E402

pytestmark = pytest.mark.timeout(30)

A, B = Given("mA", 2), Given("mB", 0, "after", dep=1)


def problems(lines: list[str], dep_pid: int | None, dep_outcome: str = "ok",
             outcome: str = "ok") -> list[str]:
    return after_problems(2, B, outcome, dep_outcome, A, dep_pid, RunsLog("\n".join(lines)))


def test_a_dependent_task_that_started_before_its_dependency_ended_is_found():
    log = ["mA 10", "mB 11", "mA 10 end", "mB 11 end"]
    assert problems(log, 10) and problems(log, None)


def test_a_dependent_task_after_the_counted_run_passes_whatever_a_dead_engines_run_did():
    # mA ran on 10 (stopped, declared dead, continued later) and again on 20, whose result
    # counted; mB started once 20's run ended, before 10's zombie run ended.
    log = ["mA 10", "mA 20", "mA 20 end", "mB 11", "mA 10 end", "mB 11 end"]
    assert problems(log, 20) == []
    assert problems(log, 10)  # (had 10's run counted, mB started too early)


def test_after_a_dependency_that_failed_the_task_must_never_run():
    assert problems(["mA 10"], 10, "ValueError", "DependencyError") == []
    assert problems(["mA 10", "mB 11"], 10, "ValueError", "DependencyError")
    assert problems(["mA 10", "mA 10 end", "mB 11", "mB 11 end"], 10, "ok",
                    "DependencyError")


def test_the_counted_run_is_read_from_the_tasks_output():
    assert counted_pid({"stdout": "soak pid 4711\n"}) == 4711
    assert counted_pid({"stdout": ""}) is None and counted_pid({}) is None


def test_the_pid_an_engine_died_message_names_is_read():
    from soak_jobs import died_pid

    assert died_pid("engine 3 (vm pid 4711) died while it held task 17") == 4711
    assert died_pid("engine 3 died") is None


def test_a_map_element_refused_by_a_full_disk_passes_only_if_it_never_ran():
    from soak_jobs import MapRun, map_problems

    refused = "the submit was not accepted, none of its tasks will run: No space left on device"
    run = MapRun(["m-i0", "m-i1"], 0, "CompositeError",
                 failures=((1, "StoreError", refused),))
    assert map_problems(run, RunsLog("m-i0 10\nm-i0 10 end"), set()) == []
    assert map_problems(run, RunsLog("m-i0 10\nm-i1 10"), set())  # (refused, yet it ran)
    other = MapRun(["m-i0"], 0, "CompositeError", failures=((0, "ValueError", "boom"),))
    assert map_problems(other, RunsLog(""), set())


def test_the_soak_counts_a_run_refused_by_anything_but_the_store_as_a_problem():
    """The soak's calls are made again after a RunNotStored (run() said some ids would not
    be stored). A full disk may refuse them (StoreRunNotStored); anything else (a lease a
    restart ended, say) is a problem of its own."""
    from fault_soak import Calls

    from taskmill.errors import RunNotStored, StoreRunNotStored

    calls = Calls()
    for error in (StoreRunNotStored([3, 4], "the disk is full"),
                  RunNotStored([7], "its lease had ended")):
        def call(raised=[error]):  # noqa: B006 - (raised once, then it answers)
            if raised:
                raise raised.pop()
            return "done"

        assert calls(call) == "done"
    assert calls.not_stored == [3, 4, 7]
    assert len(calls.run_refusals) == 1 and "taskid 7" in calls.run_refusals[0]
