"""The mapper and the parallel decorator, in the original task client's style.

    taskmill run -n 4 examples/classic/map_and_parallel.py
"""

from taskmill import client

tc = client.TaskClient()


def collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


# One MapTask per element, load balanced; results in input order.
m = tc.mapper(retries=1, block=True)
print("mapper:", m.task_controller is tc, "retries", m.retries, "block", m.block)
steps = m.map(collatz_steps, range(1, 21))
print("collatz steps of 1..20:", steps)
assert steps == [collatz_steps(n) for n in range(1, 21)]

# block=False gives the taskids instead.
tids = tc.mapper(block=False).map(pow, [2, 3, 4], [10, 10, 10])
print("powers:", [tc.get_task_result(t, block=True) for t in tids])


@tc.parallel()
def square(x):
    return x * x


print("squares:", square(range(10)))
assert square(range(10)) == [x * x for x in range(10)]
print("map:", tc.map(lambda a, b: a + b, range(5), range(5, 10)))
