"""Tasks and their results: plain data and validation, nothing else.

`StringTask` runs code in an engine's persistent namespace; `MapTask` calls a function. Both carry
the common options of `BaseTask` as plain attributes that may be changed after construction; they
are validated again when submitted. This module does no I/O and never pickles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .checks import seconds
from .display import duration_text, html_table, output_html, state_html, value_html

MAX_TIMEOUT = 366 * 24 * 3600.0  # a year: beyond that, say None


def _check_common(task: BaseTask) -> None:
    if not isinstance(task.clear_before, bool):
        raise TypeError(f"clear_before must be a bool, not {type(task.clear_before).__name__}")
    if not isinstance(task.clear_after, bool):
        raise TypeError(f"clear_after must be a bool, not {type(task.clear_after).__name__}")
    if not isinstance(task.retries, int) or isinstance(task.retries, bool) or task.retries < 0:
        raise TypeError(f"retries must be an int >= 0, not {task.retries!r}")
    if task.recovery_task is not None and not isinstance(task.recovery_task, BaseTask):
        raise TypeError(
            "recovery_task must be a StringTask or MapTask (or None), "
            f"not {type(task.recovery_task).__name__}"
        )
    if task.depend is not None and not (callable(task.depend) or isinstance(task.depend, dict)):
        raise TypeError(
            "depend must be None, a callable f(properties) -> bool, or a dict of property "
            f"values, not {type(task.depend).__name__}"
        )
    if task.timeout is not None:
        if isinstance(task.timeout, bool) or not isinstance(task.timeout, int | float):
            raise TypeError(f"timeout must be a number of seconds or None, not {task.timeout!r}")
        if not 0 < task.timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeout must be > 0 and at most {MAX_TIMEOUT:g} seconds (None for "
                             f"no timeout), not {task.timeout!r}")


def check_seconds(value: Any, name: str, *, none: bool = True) -> None:
    """TypeError/ValueError unless `value` is a number of seconds >= 0, math.inf included (or
    None if `none`): the rule of `checks.seconds` for the `timeout=` of blocking calls."""
    if value is None and none:
        return
    seconds(name, value, zero=True, infinite=True)


def normalize_after(after: Any) -> tuple[int, ...]:
    """`after` as a tuple of ints: accepts None, an int, a future, or a sequence of those."""
    if after is None:
        return ()
    if isinstance(after, int | str | bytes) or hasattr(after, "taskid"):
        after = [after]
    try:
        items = list(after)
    except TypeError:
        raise TypeError(
            f"after must be a taskid, a future, or a sequence of them, not {type(after).__name__}"
        ) from None
    out = []
    for item in items:
        tid = getattr(item, "taskid", item)
        if isinstance(tid, bool) or not isinstance(tid, int):
            raise TypeError(f"after holds {item!r}, which is neither a taskid (int) nor a future")
        out.append(tid)
    return tuple(out)


class BaseTask:
    """The options common to every task (the seed's, plus `timeout` and `after`).

    `after`: taskids (or futures) that must finish successfully first. One that failed, was
    aborted or is unknown makes the task fail with DependencyError without running; an int
    that cannot be a taskid at all (negative, or 2**63 and beyond, e.g. 2**64) counts as an
    unknown id, not as an error at the call."""

    def __init__(
        self,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: BaseTask | None = None,
        depend: Callable[[dict], bool] | dict | None = None,
        *,
        timeout: float | None = None,
        after: Any = None,
    ) -> None:
        self.clear_before = clear_before
        self.clear_after = clear_after
        self.retries = retries
        self.recovery_task = recovery_task
        self.depend = depend
        self.timeout = timeout
        self.after = after
        self.validate()

    def validate(self) -> None:
        """Raise TypeError/ValueError if an attribute holds something the task cannot carry."""
        _check_common(self)
        normalize_after(self.after)


def _normalize_pull(pull: Any) -> tuple[str, ...]:
    if pull is None:
        return ()
    if isinstance(pull, str):
        return (pull,)
    if isinstance(pull, list | tuple):
        for name in pull:
            if not isinstance(name, str):
                raise TypeError(f"pull must hold only str names, but holds {name!r}")
        return tuple(pull)
    raise TypeError(f"pull must be None, a str, or a list/tuple of str, not {type(pull).__name__}")


class StringTask(BaseTask):
    """Code run in an engine's namespace: clear_before, push, execute, pull, clear_after."""

    def __init__(
        self,
        expression: str,
        pull: str | list[str] | tuple[str, ...] | None = None,
        push: dict[str, Any] | None = None,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: BaseTask | None = None,
        depend: Callable[[dict], bool] | dict | None = None,
        *,
        timeout: float | None = None,
        after: Any = None,
    ) -> None:
        self.expression = expression
        self.pull = pull
        self.push = push
        super().__init__(
            clear_before, clear_after, retries, recovery_task, depend, timeout=timeout, after=after
        )

    def validate(self) -> None:
        if not isinstance(self.expression, str):
            raise TypeError(f"expression must be a str of code, not {type(self.expression).__name__}")
        self.pull = _normalize_pull(self.pull)
        if self.push is None:
            self.push = {}
        if not isinstance(self.push, dict):
            raise TypeError(f"push must be a dict of names to values, not {type(self.push).__name__}")
        for name in self.push:
            if not isinstance(name, str):
                raise TypeError(f"push keys must be str names, not {name!r}")
        super().validate()

    def __repr__(self) -> str:
        return f"StringTask({self.expression!r}, pull={self.pull!r})"


class MapTask(BaseTask):
    """A function called with `args` and `kwargs` on an engine."""

    def __init__(
        self,
        function: Callable[..., Any],
        args: list | tuple | None = None,
        kwargs: dict[str, Any] | None = None,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: BaseTask | None = None,
        depend: Callable[[dict], bool] | dict | None = None,
        *,
        timeout: float | None = None,
        after: Any = None,
    ) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs
        super().__init__(
            clear_before, clear_after, retries, recovery_task, depend, timeout=timeout, after=after
        )

    def validate(self) -> None:
        if not callable(self.function):
            raise TypeError(f"function must be callable, not {type(self.function).__name__}")
        if self.args is None:
            self.args = ()
        if not isinstance(self.args, list | tuple):
            raise TypeError(f"args must be a list or tuple, not {type(self.args).__name__}")
        if self.kwargs is None:
            self.kwargs = {}
        if not isinstance(self.kwargs, dict):
            raise TypeError(f"kwargs must be a dict, not {type(self.kwargs).__name__}")
        super().validate()

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", repr(self.function))
        return f"MapTask({name}, args={self.args!r}, kwargs={self.kwargs!r})"


class ResultNS:
    """Read-only access to a StringTask's pulled values, as attributes (`ns.a`) and items
    (`ns['a']`), like the seed's ResultNS; `'a' in ns` and iteration give the names."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no result named {name!r}; pulled: {sorted(self._values)}") from None

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"no result named {name!r}; pulled: {sorted(self._values)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ResultNS is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("ResultNS is read-only")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __dir__(self) -> list[str]:
        return sorted(self._values)

    def __repr__(self) -> str:
        # As the seed's: "NS" and the values by name, in sorted order (it listed dir()).
        return "NS" + repr(dict(sorted(self._values.items())))


class TaskResult:
    """The result of a StringTask: pulled values or the failure, plus where and when it ran."""

    def __init__(
        self,
        results: dict[str, Any] | None,
        failure: BaseException | None,
        *,
        taskid: int,
        engineid: int | None,
        submitted: str,
        completed: str,
        duration: float,
        stdout: str = "",
        stderr: str = "",
        attempts: int = 1,
    ) -> None:
        self.results = results if results is not None else {}
        self.keys = list(self.results.keys())
        self.failure = failure
        self.taskid = taskid
        self.engineid = engineid
        self.submitted = submitted
        self.completed = completed
        self.duration = duration
        self.stdout = stdout
        self.stderr = stderr
        self.attempts = attempts

    @property
    def ns(self) -> ResultNS:
        """The pulled values as attributes; re-raises the failure if the task failed."""
        self.raise_exception()
        return ResultNS(self.results)

    def __getitem__(self, name: str) -> Any:
        self.raise_exception()
        return self.results[name]

    def raise_exception(self) -> None:
        """Raise the task's failure, if it has one."""
        if self.failure is not None:
            raise self.failure

    def __repr__(self) -> str:
        return f"TaskResult[ID:{self.taskid}]:{self.failure or self.results!r}"

    def _repr_html_(self) -> str:
        """A notebook's view: status, the pulled values or the failure, where and how long it
        ran, its output (everything escaped: see display.py)."""
        failed = self.failure is not None
        rows: list[tuple[str, Any]] = [("status", state_html("failed" if failed else "succeeded"))]
        if failed:
            rows.append(("failure", value_html(self.failure)))
        else:
            rows += [(name, value_html(value)) for name, value in self.results.items()]
        rows += [("engine", self.engineid), ("duration", duration_text(self.duration)),
                 ("attempts", self.attempts if self.attempts != 1 else None),
                 ("stdout", output_html(self.stdout) if self.stdout else None),
                 ("stderr", output_html(self.stderr) if self.stderr else None)]
        return html_table(f"TaskResult {self.taskid}", rows)


def recovery_chain(task: BaseTask) -> list[BaseTask]:
    """The distinct tasks reachable through `recovery_task`, the given one first (loops kept once)."""
    chain: list[BaseTask] = []
    seen: dict[int, int] = {}
    node: BaseTask | None = task
    while node is not None and id(node) not in seen:
        if not isinstance(node, BaseTask):  # (set after construction: checked only now)
            raise TypeError("recovery_task must be a StringTask or MapTask (or None), not "
                            f"{type(node).__name__}")
        seen[id(node)] = len(chain)
        chain.append(node)
        node = node.recovery_task
    return chain


def chain_links(chain: list[BaseTask]) -> list[int | None]:
    """For each task of `recovery_chain`, the index of its recovery task in the chain."""
    index = {id(t): i for i, t in enumerate(chain)}
    return [None if t.recovery_task is None else index[id(t.recovery_task)] for t in chain]
