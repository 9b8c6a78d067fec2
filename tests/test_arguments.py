"""arguments.py: which futures a task's arguments hold, and their placeholders filled back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskmill.arguments import CHUNK_DEPTH, USER_DEPTH, FutureLike, ResultOf, fill, swap_futures


class Fut(FutureLike):
    def __init__(self, taskid: int) -> None:
        self.taskid = taskid


leaves = st.one_of(st.integers(), st.text(max_size=3), st.none(),
                   st.integers(0, 9).map(Fut))
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
    st.dictionaries(st.text(max_size=2), inner, max_size=3)), max_leaves=25)


def found(x, depth):
    """The taskids a plain walk finds, `depth` container levels down (the reference)."""
    if isinstance(x, FutureLike):
        return [x.taskid]
    if depth > 0 and type(x) in (list, tuple):
        return [t for v in x for t in found(v, depth - 1)]
    if depth > 0 and type(x) is dict:
        return [t for v in x.values() for t in found(v, depth - 1)]
    return []


def replaced(x, depth):
    """`x` with each future `depth` levels down replaced by "value <taskid>" (the reference)."""
    if isinstance(x, FutureLike):
        return f"value {x.taskid}"
    if depth > 0 and type(x) is list:
        return [replaced(v, depth - 1) for v in x]
    if depth > 0 and type(x) is tuple:
        return tuple(replaced(v, depth - 1) for v in x)
    if depth > 0 and type(x) is dict:
        return {k: replaced(v, depth - 1) for k, v in x.items()}
    return x


@given(st.lists(values, max_size=4).map(tuple), st.dictionaries(st.text(max_size=2), values,
                                                                  max_size=2))
def test_swap_finds_every_future_the_plain_walk_finds_and_fill_puts_values_back(args, kwargs):
    for depth in (USER_DEPTH, CHUNK_DEPTH):
        new_args, new_kwargs, tids = swap_futures(args, kwargs, depth)
        want = [t for a in (*args, *kwargs.values()) for t in found(a, depth)]
        assert tids == list(dict.fromkeys(want))
        assert found(new_args, depth) == [] and found(new_kwargs, depth) == []
        back = fill(new_args, new_kwargs, {t: f"value {t}" for t in tids}, depth)
        assert back == (tuple(replaced(a, depth) for a in args),
                        {k: replaced(v, depth) for k, v in kwargs.items()})


def test_no_future_leaves_the_arguments_as_they_are():
    args, kwargs = ((1, [2, (3,)]), {"k": "v"}), {"x": 1}
    assert swap_futures(args, kwargs, CHUNK_DEPTH) == (args, kwargs, [])
    assert repr(ResultOf(3)) == "ResultOf(3)"
