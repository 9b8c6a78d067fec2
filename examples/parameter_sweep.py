"""A parameter sweep of a damped oscillator, farmed out over a cluster.

Run it:  taskmill run -n 4 examples/parameter_sweep.py
Each engine gets the model once (a StringTask defines it in the engine namespace); each
parameter point is then a StringTask that pushes its parameters and pulls the result, and the
same sweep is also done with map over a plain function.
"""

import inspect
import math

from taskmill import StringTask, TaskClient


def settle_time(damping: float, stiffness: float, dt: float = 1e-3, tol: float = 1e-3) -> float:
    x, v, t = 1.0, 0.0, 0.0
    while t < 100.0:
        a = -stiffness * x - damping * v
        v += a * dt
        x += v * dt
        t += dt
        if abs(x) < tol and abs(v) < tol:
            return t
    return math.inf


# The same function as StringTask code: its source, run in each engine's namespace.
MODEL = "import math\n" + inspect.getsource(settle_time)


def main() -> None:
    dampings = [0.2 * i for i in range(1, 11)]
    stiffness = 4.0
    with TaskClient() as tc:
        # The model goes into every task's namespace with the task itself (engines keep it).
        tids = [
            tc.run(StringTask(MODEL + "t = settle_time(d, k)", push={"d": d, "k": stiffness},
                              pull="t"))
            for d in dampings
        ]
        tc.barrier(tids)
        by_string = [tc.get_task_result(t).ns.t for t in tids]
        by_map = tc.map(settle_time, dampings, [stiffness] * len(dampings), progress=True)
        assert by_string == by_map, (by_string, by_map)
        best = min(zip(by_map, dampings, strict=True))
        for d, t in zip(dampings, by_map, strict=True):
            print(f"damping {d:4.1f}: settles in {t:7.3f} s")
        print(f"fastest settling: damping {best[1]:.1f} ({best[0]:.3f} s)")


if __name__ == "__main__":
    main()
