"""Running one task's code on the engine's main thread, and what its result message says.

    task (spec, payload frames) --> TaskCode.execute: unpickle (functions through the cache,
        rebuilt over the namespace), exec the string or call the function, pull the names
    --> the value or the exception --> reply_body: the value pickled (or a SerializationError
        if it cannot be, or is larger than the controller accepts), else the error's fields
        (`error_fields`: type, message, the task code's traceback) and the exception pickled
        if it survives a round trip

`TaskCode.active` is True exactly while task code runs: the I/O thread interrupts a task (abort,
timeout, drop) only then, by a signal whose handler raises `TaskInterrupted` in the task code
(see control.py). Captured stdout and stderr go to bounded `Capture`s, through the engine's
two `TaskStream`s: while a task runs, `sys.stdout` and `sys.stderr` are those streams, aimed at
the task's captures; between tasks they aim at the engine's own streams (its log). So records
that task code sends through `logging` land in the task's stderr: Python's last-resort handler
(no handler configured, WARNING and above, as in a fresh interpreter) writes to `sys.stderr` as
it is at the time, and a handler task code makes on `sys.stderr` (`logging.basicConfig`) holds a
`TaskStream`, so it writes into the capture of whichever task runs, never into an old one's.
The engine's own records (the `taskmill` loggers) have a handler of their own on the real
stderr (commands.py) and never reach the root logger. The engine (core.py) holds the timeout,
the last-resort kill and the reply's bookkeeping.
"""

from __future__ import annotations

import io
import linecache
import os
import traceback
from typing import Any

from ..arguments import fill
from ..errors import DependencyError, SerializationError, TaskRejectError
from ..wire import FunctionLoads, Refused, Wire, dumps, frame_buffer, loads

OUTPUT_LIMIT = 1 << 20  # bytes of stdout (and of stderr) kept per task
_HERE = os.path.dirname(__file__)  # the folder of the engine's own files (not task code)


class TaskInterrupted(BaseException):
    """Raised inside task code when the controller interrupts it (abort).

    A BaseException, so that task code's `except Exception` does not swallow it.
    """


class Capture(io.TextIOBase):
    """A bounded text sink for one task's stdout or stderr."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        room = self.limit - self.size
        if room > 0:
            kept = s[:room]
            self.parts.append(kept)
            self.size += len(kept)
            self.dropped += len(s) - len(kept)
        else:
            self.dropped += len(s)
        return len(s)

    def getvalue(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[taskmill: output truncated, {self.dropped} more characters dropped]\n"
        return text


class TaskStream(io.TextIOBase):
    """`sys.stdout` or `sys.stderr` of an engine while it runs a task: whatever is written goes
    to `target`, the running task's `Capture` (`aim`), or else the engine's own stream (`reset`).

    Code that keeps the stream it found (a logging handler made by `basicConfig`, a library that
    saved `sys.stderr`) thereby writes into the task that runs at the time, or the engine's log
    between tasks: never into a finished task's capture, never into the next one's by mistake.
    """

    def __init__(self, base: Any) -> None:
        self.base = base
        self.target: Any = base

    def aim(self, capture: Capture) -> TaskStream:
        self.target = capture
        return self

    def reset(self) -> None:
        self.target = self.base

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.base, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        return self.target.write(s)

    def flush(self) -> None:
        self.target.flush()


def format_remote_traceback(exc: BaseException) -> str:
    """The traceback of task code, without the engine's own frames."""
    tb = exc.__traceback__
    while tb is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == _HERE:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def utf8_text(s: str) -> str:
    """`s` as text UTF-8 can carry: a lone surrogate (what `os.fsdecode` gives for a file
    name's undecodable byte) becomes a backslash escape (else the reply could not be sent)."""
    try:
        s.encode()
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode()
    return s


def error_fields(exc: BaseException) -> dict[str, Any]:
    """A failed task's `error` entry: what a client shows of the exception (task code's
    exception may fail even to be shown: its `__str__` raising, or returning no str)."""
    try:
        message = str(exc)
    except BaseException as e:  # noqa: BLE001 - whatever task code's __str__ does
        message = f"<str() of this {type(exc).__name__} failed: {type(e).__name__}>"
    try:
        tb = format_remote_traceback(exc)
    except BaseException as e:  # noqa: BLE001 - the same, inside the traceback's formatting
        tb = f"<the traceback could not be formatted: {type(e).__name__}>"
    return {"error": {
        "type": type(exc).__qualname__, "module": type(exc).__module__,
        "message": utf8_text(message), "traceback": utf8_text(tb), "pickled": False,
    }}


def pickle_exception(exc: BaseException, info: dict[str, Any]) -> list[Any]:
    """The exception pickled, if it survives a round trip here; else nothing (RemoteError)."""
    try:
        exc.__traceback__ = None
        body = dumps(exc)
        loads(body)
    except BaseException:  # noqa: BLE001 - unpicklable exceptions become RemoteError (its
        return []  # __reduce__ may raise anything: nothing can interrupt a finished task)
    info["pickled"] = True
    return body


def reply_body(reply: dict[str, Any], value: Any, exc: BaseException | None,
               max_result: int) -> list[Any]:
    """Fill in `reply`'s status (and error) for a task that returned `value` or raised `exc`,
    and return the payload frames: the value pickled, else the exception if it pickles."""
    tid = reply["tid"]
    body: list[Any] = []
    if reply["stdout"] or reply["stderr"]:  # (most tasks print nothing)
        reply["stdout"], reply["stderr"] = utf8_text(reply["stdout"]), utf8_text(reply["stderr"])
    if exc is None:
        try:
            body = dumps(value)
            reply["status"] = "ok"
        except BaseException as e:  # noqa: BLE001 - any pickling failure (see above)
            why = error_fields(e)["error"]["message"]
            exc = SerializationError(f"task {tid}'s result ({type(value).__name__}) cannot be "
                                     f"pickled: {type(e).__name__}: {why}")
        else:
            size = sum(memoryview(f).nbytes for f in body)
            output = len(reply["stdout"].encode()) + len(reply["stderr"].encode())
            if size + output > max_result:
                body = []
                exc = SerializationError(
                    f"task {tid}'s result is {size} bytes pickled, more than the "
                    f"controller accepts ({max_result} bytes; see its "
                    "--max-message-size); return less, or write it to shared storage")
    if exc is not None:
        reply["status"] = "rejected" if isinstance(exc, TaskRejectError) else "error"
        reply.update(error_fields(exc))
        body = pickle_exception(exc, reply["error"])
        body = fit_error(reply, body, max_result)
    return body


def _text_bytes(*texts: str) -> int:
    return sum(len(t.encode()) for t in texts)


def _shortened(text: str, keep: int) -> str:
    """`text` cut to about `keep` characters: its start and its end (the latest frames)."""
    if len(text) <= keep:
        return text
    half = keep // 2
    return (f"{text[:half]}\n... [{len(text) - 2 * half} characters left out: the whole would "
            f"pass the controller's message size limit] ...\n{text[-half:]}")


def fit_error(reply: dict[str, Any], body: list[Any], max_result: int) -> list[Any]:
    """A failure's report within the controller's message size limit (one larger is dropped by
    ZeroMQ, and the task would never end): its output is shortened first, then the pickled
    exception goes (a RemoteError then), then its message and traceback are shortened."""
    error = reply["error"]
    budget = max_result - 4096  # (the rest of the header)

    def size() -> int:
        return (sum(memoryview(f).nbytes for f in body)
                + _text_bytes(error["message"], error["traceback"], reply["stdout"],
                              reply["stderr"]))

    keep = max(budget // 16, 256)  # characters (up to 4 bytes each)
    for key in ("stdout", "stderr"):
        if size() > budget:
            reply[key] = _shortened(reply[key], keep)
    if size() > budget:
        body, error["pickled"] = [], False
    for key in ("message", "traceback"):
        if size() > budget:
            error[key] = _shortened(error[key], keep)
    return body


class TaskCode:
    """The namespace task code runs in (one per engine, cleared in place, so that functions
    defined interactively, rebuilt over it, stay valid), the cache of MapTask functions, and
    running a task's code in them."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.functions = FunctionLoads(namespace=namespace)  # MapTask functions
        self.active = False  # task code runs now (exec, or the function's call)

    def execute(self, tid: int, spec: dict[str, Any], frames: list[Any],
                engineid: int | None, values: dict[int, Any] | None = None) -> Any:
        """Run a task's code: a StringTask's source (pushed values set first, pulled ones
        returned as a dict) or a MapTask's call; returns what it gives, raises what it raises."""
        if spec["kind"] == "string":
            ns = self.namespace
            if frames:
                ns.update(self.unpickle(tid, frames, "pushed values", engineid, self.load_here))
            filename = f"<taskmill task {tid}>"
            source = spec["expression"]
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            code = compile(source, filename, "exec")
            self.active = True
            exec(code, ns)
            self.active = False
            results = {}
            for name in spec.get("pull", ()):
                if name not in ns:
                    raise NameError(f"name {name!r} is not defined (pulled by task {tid})")
                results[name] = ns[name]
            return results
        n = spec.get("fn")
        if isinstance(n, int) and 0 < n <= len(frames):
            func = self.unpickle(tid, frames[:n], "function", engineid, self.functions.loads)
            args, kwargs = self.unpickle(tid, frames[n:], "arguments", engineid, self.load_here)
        else:
            func, args, kwargs = self.unpickle(tid, frames, "function or arguments", engineid,
                                               self.load_here)
        if values:
            args, kwargs = fill(args, kwargs, values)
        self.active = True
        return func(*args, **kwargs)

    def load_here(self, frames: list[Any]) -> Any:
        """Unpickle a task's payload: functions defined interactively in it (the task's
        function, one passed as an argument as `map` does, a pushed one) get this engine's
        namespace as their globals, and the globals they brought are set there (as in the seed)."""
        return loads(frames, self.namespace)

    def unpickle(self, tid: int, frames: list[Any], what: str, engineid: int | None,
                 load: Any = None) -> Any:
        try:
            return (load or loads)(frames)
        except Exception as e:
            raise SerializationError(
                f"task {tid}'s {what} cannot be unpickled on engine {engineid} "
                f"({type(e).__name__}: {e}); is every module it needs installed on the "
                "engine's machine?") from e


def split_tasks(entries: list[Any], frames: list[Any]) -> list[tuple[dict, list[Any]]] | None:
    """The (entry, its frames) of each task of a `tasks` message; None if the entries do not
    match the frames (each entry names its `n` frames, its tid and attempt)."""
    batch, pos = [], 0
    for entry in entries:
        n = entry.get("n", 0) if isinstance(entry, dict) else -1
        if (not isinstance(n, int) or n < 0 or pos + n > len(frames)
                or not isinstance(entry.get("tid"), int)
                or not isinstance(entry.get("attempt"), int)):
            return None
        batch.append((entry, frames[pos:pos + n]))
        pos += n
    return batch


class KeptValue:
    """One kept value's frames, and whether they were checked against their pmac (once:
    a 200 MB value costs a check of ~0.3 s, which must not be paid by every task)."""

    __slots__ = ("frames", "checked")

    def __init__(self, frames: list[Any]) -> None:
        # Read-only: every task on this engine that takes the value unpickles it from these
        # very buffers (an array is not copied), so none may change what the next one reads.
        self.frames = [memoryview(frame_buffer(f)).toreadonly() for f in frames]
        self.checked = False


class KeptValues:
    """The `put` values this engine keeps (by pmac), as the controller tells it in each task
    entry (controller engine_tasks.with_arguments): noted as the `tasks` message arrives (so
    that a task given back still counts), in the order the controller sent them."""

    LIMIT = 256  # values, at most (a safety net: the controller's own bounds are lower)

    def __init__(self) -> None:
        self.values: dict[bytes, KeptValue] = {}

    def receive(self, entry: dict[str, Any], frames: list[Any]) -> None:
        """A task entry as it arrives: the kept values it takes are looked up now (a later
        entry may tell this engine to forget them before the task runs: `kept_frames`), then
        its `forget`, then the values it brings to keep."""
        args = entry.get("args") or ()
        if not args and not entry.get("forget"):  # (most tasks: nothing kept or forgotten)
            return
        found = {pmac: self.values.get(pmac) for _d, n, pmac, keep in args if keep and not n}
        for pmac in entry.get("forget") or ():
            self.values.pop(pmac, None)
        end = len(frames)
        for _dep, n, pmac, keep in reversed(args):
            if keep and n:
                self.values.pop(pmac, None)
                found[pmac] = self.values[pmac] = KeptValue(frames[end - n:end])
            end -= n
        if found:
            entry["kept_frames"] = found
        while len(self.values) > self.LIMIT:
            del self.values[next(iter(self.values))]


def take_arguments(tid: int, header: dict[str, Any], frames: list[Any],
                   wire: Wire) -> tuple[list[Any], dict[int, Any]]:
    """A task's own payload frames, and the values of the results it takes as arguments
    (arguments.py), which travel after them (or, for a `put` value sent before, are kept
    here), each checked against its own pmac."""
    if header.get("too_large"):
        raise SerializationError(f"task {tid} cannot be sent to an engine: {header['too_large']}")
    if header.get("too_big"):
        raise DependencyError(f"task {tid}: {header['too_big']}")
    if header.get("unreadable"):
        raise DependencyError(f"task {tid} takes a result as an argument that cannot be "
                              f"read: {header['unreadable']}")
    if header.get("missing"):
        raise DependencyError(
            f"task {tid} takes the results of tasks {header['missing']} as arguments, and they "
            "were cleared before it ran")
    args = header.get("args")
    if not args:
        return frames, {}
    end = len(frames)
    values: dict[int, Any] = {}
    for dep, n, pmac, keep in reversed(args):
        part, end = frames[end - n:end], end - n
        kept: KeptValue | None = None
        if keep:
            kept = (header.get("kept_frames") or {}).get(pmac)
            if kept is None:
                raise DependencyError(f"task {tid}: the value put as task {dep} is not kept on "
                                      "this engine any more; run the task again")
            part = kept.frames
        if not part:  # (a result of None has no frames)
            values[dep] = None
            continue
        try:
            if kept is None or not kept.checked:
                wire.check_payload(part, pmac)
                if kept is not None:
                    kept.checked = True
            values[dep] = loads(part)
        except Refused as e:
            raise SerializationError(f"the result of task {dep} was refused: {e}") from None
        except Exception as e:
            raise SerializationError(
                f"the result of task {dep}, an argument of task {tid}, cannot be unpickled "
                f"here ({type(e).__name__}: {e})") from e
    return frames[:end], values
