"""A Monte Carlo option pricer: set every engine up once, then farm MapTasks.

The pricing code and the market data that never change are sent to every engine's namespace
first (`run_all`, `push`); each MapTask then prices one (strike, volatility) pair with a
function defined here, in the script, which runs on the engine with that namespace as its
globals, so it finds the pricer and the market data set up there. This is the original's
pattern; it needs nothing installed on the engines but numpy.

    taskmill run -n 4 examples/classic/option_pricer.py
"""

import numpy as np

from taskmill import client

tc = client.TaskClient()

pricer_code = '''
import numpy as np

def simulate(S, K, sigma, r, days, paths, seed):
    """European and Asian call and put prices by Monte Carlo (geometric Brownian motion)."""
    rng = np.random.default_rng(seed)
    dt = 1.0 / days
    steps = (r - 0.5 * sigma ** 2) * dt + sigma * np.sqrt(dt) * rng.standard_normal((paths, days))
    prices = S * np.exp(np.cumsum(steps, axis=1))
    discount = np.exp(-r)
    final, average = prices[:, -1], prices.mean(axis=1)
    return {
        "vanilla_call": discount * np.maximum(final - K, 0).mean(),
        "vanilla_put": discount * np.maximum(K - final, 0).mean(),
        "asian_call": discount * np.maximum(average - K, 0).mean(),
        "asian_put": discount * np.maximum(K - average, 0).mean(),
    }
'''
# Set every engine up: the pricer, and the market data that do not change.
tc.run_all(client.StringTask(pricer_code, push=dict(S=100.0, r=0.05, days=260, paths=4000)))


def price(K, sigma):
    """Runs on an engine: `simulate`, S, r, days and paths are the engine's, set up above."""
    return K, sigma, simulate(S, K, sigma, r, days, paths,  # noqa: F821 - the engine's names
                              seed=int(K * 1000 + sigma * 100))


strikes = np.linspace(90.0, 110.0, 5)
vols = np.linspace(0.1, 0.3, 5)
taskids = [tc.run(client.MapTask(price, (float(K), float(sigma))))
           for K in strikes for sigma in vols]
print("submitted", len(taskids), "pricing tasks")
tc.barrier(taskids)

print(" strike  vol   call    put  asian call  asian put")
worst = 0.0
for tid in taskids:
    K, sigma, p = tc.get_task_result(tid)
    print(f"{K:7.1f} {sigma:4.2f} {p['vanilla_call']:6.2f} {p['vanilla_put']:6.2f} "
          f"{p['asian_call']:11.2f} {p['asian_put']:10.2f}")
    # Put-call parity: C - P = S - K e^(-r T), up to Monte Carlo error.
    parity = p["vanilla_call"] - p["vanilla_put"] - (100.0 - K * np.exp(-0.05))
    worst = max(worst, abs(parity))
print(f"put-call parity holds for all {len(taskids)} to within {worst:.2f}")
assert worst < 2.0
