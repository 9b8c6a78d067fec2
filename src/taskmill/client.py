"""The blocking client, `TaskClient` (the seed's `BlockingTaskClient`).

How a call travels:

    caller thread --request--> [send socket, under a lock] --> controller
    controller --reply/done--> [receive socket] I/O thread --> resolves the caller's Future

The caller sends on its own socket, so a submit never waits for another thread; the I/O thread
owns the receive socket, and every reply carries `rt`, the id of that socket, so the controller
answers there. What crosses the wire is a small header plus opaque payload frames: tasks are
pickled here, once, and results are unpickled here, lazily, by the caller that asked for them.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import msgpack
import zmq

from .connection import find_connection_file, read_connection_file
from .curve import apply_client as apply_curve
from .errors import (
    ControllerUnreachable,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskError,
    controller_error,
)
from .task import (
    BaseTask,
    MapTask,
    StringTask,
    TaskResult,
    chain_links,
    normalize_after,
    recovery_chain,
)
from .wire import Refused, Wire, dumps, loads

SUBMIT_BATCH = 1000
PING_INTERVAL = 1.0
# Requests sent again to a restarted controller (reads, and submits, which it de-duplicates).
RESENDABLE = frozenset({"submit", "result", "wait", "watch"})
TIME_FORMAT = "%Y/%m/%d %H:%M:%S"
_CONTROLLER_DECIDED = ("aborted", "unmet_timeout", "dependency")


def _fmt_time(ts: float | None) -> str:
    return "" if ts is None else time.strftime(TIME_FORMAT, time.localtime(ts))


class _Connection:
    """Two DEALER sockets to the controller and the I/O thread that reads replies."""

    def __init__(self, connection: Any, timeout: float) -> None:
        self.path = find_connection_file(connection)
        self.info = read_connection_file(self.path)
        # One Wire per socket: each sending socket has its own (sid, seq) stream, and replay
        # checks hold per receiving socket, where messages arrive in order.
        self.wire = Wire(self.info.key_bytes)  # the receive socket's (I/O thread only)
        self._send_wire = Wire(self.info.key_bytes)  # the send socket's (under _send_lock)
        self.timeout = timeout
        self.ctx = zmq.Context()
        base = uuidlib.uuid4().hex.encode()
        self.recv_ident = base + b".r"
        self._send_lock = threading.Lock()
        self._send_sock = self._dealer(base + b".s")
        self._recv_sock = self._dealer(self.recv_ident)
        self._req = itertools.count(1)
        self._futures: dict[int, Future] = {}
        self._outstanding: dict[int, tuple[dict[str, Any], list[Any]]] = {}
        self._controller_sid: bytes | None = None
        self._key_prefix = base.decode() + ":"
        self._streams: dict[int, Callable[[dict[str, Any], list[Any]], bool]] = {}
        self._closed = threading.Event()
        self._hello: Future = Future()
        self._thread = threading.Thread(target=self._io_loop, name="taskmill-client-io", daemon=True)
        self._thread.start()
        try:
            self.hello = self._hello.result(timeout)
        except FutureTimeout:
            self.close()
            raise ControllerUnreachable(
                f"no taskmill controller answered at {self.info.client_url} within {timeout:g}s "
                f"(connection file {self.path}). Start one with `taskmill cluster start` "
                "(or `taskmill controller`), or pass the right connection file."
            ) from None

    def _dealer(self, ident: bytes) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.ROUTING_ID, ident)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        apply_curve(s, self.info)
        s.connect(self.info.client_url)
        return s

    def _io_loop(self) -> None:
        sock = self._recv_sock
        next_ping = 0.0
        while not self._closed.is_set():
            now = time.monotonic()
            if now >= next_ping:
                # Said from the receive socket, so the controller knows its id before any
                # reply; after the hello, pings tell a restarted controller from the old one.
                kind = "ping" if self._hello.done() else "hello"
                try:  # never block here: with no connection yet, a DEALER's send would wait
                    sock.send_multipart(self.wire.encode({"type": kind, "req": 0}),
                                        flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    pass
                next_ping = now + (PING_INTERVAL if self._hello.done() else 0.5)
            if not sock.poll(100):
                continue
            msg = sock.recv_multipart(copy=False)
            try:
                header, frames = self.wire.decode(msg)
            except Refused:
                continue
            if header["sid"] != self._controller_sid:
                if self._controller_sid is not None:
                    self._controller_restarted()
                self._controller_sid = header["sid"]
            req = header.get("req")
            if req == 0:
                if not self._hello.done():
                    self._hello.set_result(header)
                continue
            stream = self._streams.get(req)
            if stream is not None:
                if stream(header, frames):
                    del self._streams[req]
                    self._outstanding.pop(req, None)
                continue
            self._outstanding.pop(req, None)
            fut = self._futures.pop(req, None)
            if fut is not None and not fut.done():
                fut.set_result((header, frames))
        sock.close(0)

    def _controller_restarted(self) -> None:
        """A new controller answered: send again what the old one never answered."""
        with self._send_lock:
            for req, (header, frames) in list(self._outstanding.items()):
                if header["type"] in RESENDABLE:
                    self._send_sock.send_multipart(self._send_wire.encode(header, frames),
                                                   copy=False)
                    continue
                del self._outstanding[req]
                fut = self._futures.pop(req, None)
                if fut is not None and not fut.done():
                    fut.set_exception(ControllerUnreachable(
                        f"the controller at {self.info.client_url} restarted before it answered "
                        f"a {header['type']!r} request, which may or may not have taken effect"))

    def send(self, header: dict[str, Any], frames: Sequence[Any] = (),
             stream: Callable[[dict[str, Any], list[Any]], bool] | None = None) -> Future:
        """Send a request; the Future resolves to the reply (header, frames)."""
        if self._closed.is_set():
            raise RuntimeError("this client is closed")
        fut: Future = Future()
        with self._send_lock:
            req = next(self._req)
            header["req"] = req
            header["rt"] = self.recv_ident
            if header["type"] == "submit":
                header["key"] = self._key_prefix + str(req)  # lets a resend be recognised
            if stream is not None:
                self._streams[req] = stream
            else:
                self._futures[req] = fut
            self._outstanding[req] = (header, list(frames))
            self._send_sock.send_multipart(self._send_wire.encode(header, frames), copy=False)
        return fut

    def call(self, header: dict[str, Any], frames: Sequence[Any] = (),
             timeout: float | None = -1.0) -> tuple[dict[str, Any], list[Any]]:
        """A request and its reply; `timeout=None` waits as long as it takes."""
        fut = self.send(header, frames)
        wait = self.timeout if timeout == -1.0 else timeout
        try:
            reply, frames = fut.result(wait)
        except FutureTimeout:
            self._forget(header["req"])
            raise ControllerUnreachable(
                f"the controller at {self.info.client_url} did not answer a "
                f"{header['type']!r} request within {wait:g}s"
            ) from None
        if not reply.get("ok", True):
            raise TaskError(reply.get("error", "the controller refused the request"))
        return reply, frames

    def _forget(self, req: int) -> None:
        with self._send_lock:
            self._outstanding.pop(req, None)
            self._futures.pop(req, None)
            self._streams.pop(req, None)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        with self._send_lock:
            self._send_sock.close(0)
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(RuntimeError("the client was closed"))
        self.ctx.destroy(linger=0)


class TaskClient:
    """Submit tasks to a taskmill controller and collect their results (SPEC.md §4)."""

    def __init__(self, connection: str | os.PathLike[str] | None = None, *,
                 timeout: float = 10.0) -> None:
        self._conn = _Connection(connection, timeout)
        self.connection_file = self._conn.path

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    # -- encoding tasks --------------------------------------------------------------------
    def _encode(self, task: BaseTask) -> tuple[dict[str, Any], list[Any]]:
        if not isinstance(task, BaseTask):
            raise TypeError(f"run() takes a StringTask or MapTask, not {type(task).__name__}")
        chain = recovery_chain(task)
        links = chain_links(chain)
        nodes, frames = [], []
        wire = self._conn.wire
        for t, link in zip(chain, links, strict=True):
            t.validate()
            if not isinstance(t, StringTask | MapTask):
                raise TypeError(f"unknown task type {type(t).__name__}")
            try:
                if isinstance(t, StringTask):
                    ex = {"kind": "string", "expression": t.expression, "pull": list(t.pull)}
                    body = dumps(t.push) if t.push else []
                else:
                    ex = {"kind": "map"}
                    body = dumps((t.function, tuple(t.args), t.kwargs))
            except Exception as e:
                raise SerializationError(
                    f"cannot send {t!r}: its function, arguments or pushed values cannot be "
                    f"pickled ({type(e).__name__}: {e})") from e
            ex["clear_before"], ex["clear_after"] = t.clear_before, t.clear_after
            node: dict[str, Any] = {
                "exec": ex, "nframes": len(body), "retries": t.retries, "timeout": t.timeout,
                "recovery": link, "pmac": wire.payload_mac(body) if body else None,
            }
            dframes: list[Any] = []
            if isinstance(t.depend, dict):
                try:
                    msgpack.packb(t.depend, use_bin_type=True)
                except Exception as e:
                    raise TypeError(f"a dict depend must hold plain values: {e}") from None
                node["depend"] = t.depend
            elif t.depend is not None:
                try:
                    dframes = dumps(t.depend)
                except Exception as e:
                    raise SerializationError(f"cannot pickle depend {t.depend!r}: {e}") from e
                node.update(depend="callable", dframes=len(dframes),
                            dpmac=wire.payload_mac(dframes))
            nodes.append(node)
            frames.extend(body)
            frames.extend(dframes)
        return {"nodes": nodes, "after": list(normalize_after(task.after))}, frames

    def _submit_encoded(self, encoded: list[tuple[dict[str, Any], list[Any]]]) -> list[int]:
        tids: list[int] = []
        for i in range(0, len(encoded), SUBMIT_BATCH):
            batch = encoded[i:i + SUBMIT_BATCH]
            frames = [f for _, fr in batch for f in fr]
            reply, _ = self._conn.call({"type": "submit", "tasks": [s for s, _ in batch]}, frames)
            tids.extend(reply["tids"])
        return tids

    def _submit_tasks(self, tasks: Iterable[BaseTask]) -> list[int]:
        return self._submit_encoded([self._encode(t) for t in tasks])

    # -- decoding results ------------------------------------------------------------------
    def _rebuild_exception(self, meta: dict[str, Any], frames: list[Any]) -> BaseException:
        err = meta.get("error") or {}
        tb = err.get("traceback", "")
        exc: BaseException | None = None
        if err.get("controller"):
            exc = controller_error(err.get("type", "TaskError"), err.get("message", ""))
        elif err.get("pickled") and frames:
            try:
                self._conn.wire.check_payload(frames, meta.get("pmac"))
                exc = loads(frames)
            except Exception:  # noqa: BLE001 - fall back to RemoteError below
                exc = None
        if not isinstance(exc, BaseException):
            module = err.get("module", "")
            name = err.get("type", "Exception")
            type_name = name if module in ("builtins", "") else f"{module}.{name}"
            exc = RemoteError(type_name, err.get("message", ""), tb)
        for attr, value in (("engineid", meta.get("engineid")), ("taskid", meta.get("tid")),
                            ("remote_traceback", tb)):
            try:
                setattr(exc, attr, value)
            except Exception:  # noqa: BLE001 - exceptions without a __dict__
                pass
        if tb:
            exc.__cause__ = RemoteTraceback(tb)
        return exc

    def _decode(self, meta: dict[str, Any] | None, frames: list[Any], *,
                carry: bool = True) -> Any:
        """A result entry from the controller: the value, a TaskResult, or a raised error.

        With `carry=False`, a MapTask's failure is returned as (False, exc) instead of raised.
        """
        if meta is None:
            return None
        tid = meta.get("tid")
        if meta.get("unknown"):
            raise IndexError(f"no task with id {tid}: it is unknown, or its result was cleared")
        status = meta["status"]
        if status in _CONTROLLER_DECIDED:
            raise self._rebuild_exception(meta, frames)
        failure: BaseException | None = None
        value: Any = None
        if status == "ok":
            if frames:
                try:
                    self._conn.wire.check_payload(frames, meta.get("pmac"))
                except Refused as e:
                    raise SerializationError(f"result of task {tid} was refused: {e}") from None
                try:
                    value = loads(frames)
                except Exception as e:
                    failure = SerializationError(
                        f"the result of task {tid} cannot be unpickled here "
                        f"({type(e).__name__}: {e}); is a module missing on the client?")
        else:
            failure = self._rebuild_exception(meta, frames)
        if meta.get("kind") == "string":
            return TaskResult(
                value if failure is None else None, failure, taskid=tid,
                engineid=meta.get("engineid"), submitted=_fmt_time(meta.get("submitted")),
                completed=_fmt_time(meta.get("completed")), duration=meta.get("duration", 0.0),
                stdout=meta.get("stdout", ""), stderr=meta.get("stderr", ""),
                attempts=meta.get("attempts", 1),
            )
        if failure is not None:
            if carry:
                raise failure
            return _Failed(failure, meta.get("engineid"))
        return value

    def _results(self, tids: list[int], block: bool) -> list[tuple[dict[str, Any] | None, list[Any]]]:
        reply, frames = self._conn.call({"type": "result", "tids": tids, "block": block},
                                        timeout=None if block else -1.0)
        out, pos = [], 0
        for meta in reply["results"]:
            n = meta["nframes"] if meta else 0
            out.append((meta, frames[pos:pos + n]))
            pos += n
        return out

    # -- the seed's verbs ------------------------------------------------------------------
    def run(self, task: BaseTask, block: bool = False) -> Any:
        """Submit `task`; return its taskid, or with `block=True` its result."""
        tid = self._submit_tasks([task])[0]
        if block:
            return self.get_task_result(tid, block=True)
        return tid

    def get_task_result(self, taskid: int, block: bool = False) -> Any:
        """The result of a task (SPEC.md §3), or None while it runs and `block` is false."""
        _check_taskid(taskid)
        (meta, frames), = self._results([taskid], block)
        return self._decode(meta, frames)

    def abort(self, taskid: int) -> None:
        """Abort a queued or running task (it finishes as TaskAborted)."""
        _check_taskid(taskid)
        reply, _ = self._conn.call({"type": "abort", "tid": taskid})
        if reply["status"] == "finished":
            raise IndexError("Task Already Completed")
        if reply["status"] == "unknown":
            raise IndexError(f"no task with id {taskid}: it is unknown, or its result was cleared")

    def barrier(self, taskids: int | Sequence[int]) -> None:
        """Wait until every task in `taskids` has finished (failed and unknown ones count)."""
        tids = [taskids] if isinstance(taskids, int) else list(taskids)
        for t in tids:
            _check_taskid(t)
        if tids:
            self._conn.call({"type": "wait", "tids": tids}, timeout=None)

    def spin(self) -> bool:
        """Run the scheduler once; True if it dispatched anything."""
        reply, _ = self._conn.call({"type": "spin"})
        return bool(reply["dispatched"])

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        """`scheduled`, `pending`, `succeeded`, `failed`: counts, or taskid lists if verbose."""
        reply, _ = self._conn.call({"type": "status", "verbose": bool(verbose)})
        return dict(reply["status"])

    def clear(self, taskids: int | Sequence[int] | None = None) -> int:
        """Drop finished results (all, one id, or a list); return how many were dropped."""
        if taskids is None:
            tids = None
        else:
            tids = [taskids] if isinstance(taskids, int) else list(taskids)
            for t in tids:
                _check_taskid(t)
        reply, _ = self._conn.call({"type": "clear", "tids": tids})
        if reply["missing"]:
            raise KeyError(
                f"no finished result for task ids {reply['missing']} (unknown, unfinished, or "
                f"already cleared); {reply['dropped']} other result(s) were cleared")
        return int(reply["dropped"])

    def map(self, func: Callable[..., Any], *sequences: Iterable[Any],
            chunksize: int | None = None, progress: bool = False) -> list[Any]:
        """Load-balanced `map`; every failure is reported in one CompositeError."""
        from .mapper import client_map

        return client_map(self, func, sequences, chunksize=chunksize, progress=progress)

    def mapper(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
               recovery_task: BaseTask | None = None, depend: Any = None,
               block: bool = True) -> Any:
        """A seed-compatible mapper: one MapTask per element, the first failure raised."""
        from .mapper import TaskMapper

        return TaskMapper(self, clear_before=clear_before, clear_after=clear_after,
                          retries=retries, recovery_task=recovery_task, depend=depend,
                          block=block)

    def parallel(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
                 recovery_task: BaseTask | None = None, depend: Any = None,
                 block: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A decorator: the decorated function maps itself over the sequences it is given."""
        from .mapper import ParallelFunction

        def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
            m = self.mapper(clear_before, clear_after, retries, recovery_task, depend, block)
            return ParallelFunction(m, f)

        return decorate

    # -- beyond the seed -------------------------------------------------------------------
    def engines(self) -> list[dict[str, Any]]:
        """Every engine the controller knows: id, host, pid, properties, state, tasks done."""
        reply, _ = self._conn.call({"type": "engines"})
        return list(reply["engines"])

    def statistics(self) -> dict[str, Any]:
        """The controller's counters: messages, tasks, engine deaths, refused messages by reason."""
        reply, _ = self._conn.call({"type": "stats"})
        return dict(reply["stats"])

    def _watch(self, tids: list[int], on_done: Callable[[int, dict[str, Any], list[Any]], None]) -> Future:
        """Call `on_done(tid, meta, frames)` as each task finishes; the Future ends after the last."""
        finished: Future = Future()
        left = set(tids)

        def stream(header: dict[str, Any], frames: list[Any]) -> bool:
            tid = header["tid"]
            try:
                if tid in left:
                    left.discard(tid)
                    on_done(tid, header["result"], frames)
            except BaseException as e:  # noqa: BLE001 - hand it to the waiting caller
                if not finished.done():
                    finished.set_exception(e)
            if not left:
                if not finished.done():
                    finished.set_result(None)
                return True
            return False

        if not tids:
            finished.set_result(None)
        else:
            self._conn.send({"type": "watch", "tids": tids}, stream=stream)
        return finished


class _Failed:
    """A MapTask failure held rather than raised (used by maps)."""

    __slots__ = ("exception", "engineid")

    def __init__(self, exception: BaseException, engineid: int | None) -> None:
        self.exception = exception
        self.engineid = engineid


def _check_taskid(taskid: Any) -> None:
    if isinstance(taskid, bool) or not isinstance(taskid, int):
        raise TypeError(f"a taskid is an int, not {type(taskid).__name__}")


BlockingTaskClient = TaskClient
