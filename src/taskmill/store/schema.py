"""The SQLite store's file: its schema, the statements it runs, and opening it safely.

sqlite.py's `SQLiteStore` queues whole rows shaped as `INSERT_TASK` takes them (positions
`STATE`, `FRAMES`, `NODE`, `OK`, `RESULT_FRAMES`) and runs these statements at commit;
`delete_finished` runs a clear's. `hold_lock` takes the store's exclusive lock file for the
controller's life; `open_error` and `disk_note` turn what SQLite or the disk said into one
clear line of `StoreError`.
"""

from __future__ import annotations

import fcntl
import hmac
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import StoreError
from .base import ENGINE_ROW_AGE, MAX_TID, SUBMIT_KEY_AGE, StoredTask, new_store_id, unpack
from .retiring import RetiringEngines

log = logging.getLogger("taskmill.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (start INTEGER PRIMARY KEY, end INTEGER NOT NULL,
                                   key TEXT NOT NULL);  -- lease_rows.py
CREATE TABLE IF NOT EXISTS tasks (
    tid INTEGER PRIMARY KEY,
    state TEXT NOT NULL,            -- queued | running | finished
    submitted REAL NOT NULL,
    spec BLOB,                      -- msgpack: nodes and after
    frames BLOB,                    -- the task's payload frames (NULL once finished)
    node INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    handed_over BLOB,
    engine INTEGER,
    ok INTEGER,
    result_meta BLOB,
    result_frames BLOB
);
-- WITHOUT ROWID: one B-tree (keyed by key) instead of a rowid table plus its key index.
CREATE TABLE IF NOT EXISTS submits (key TEXT PRIMARY KEY, tids BLOB NOT NULL, at REAL NOT NULL)
    WITHOUT ROWID;
-- Which engine process (its uuid) an engine id was given to: a restarted controller knows
-- by it the engines that come back still running the tasks it had handed them.
CREATE TABLE IF NOT EXISTS engines (eid INTEGER PRIMARY KEY, uuid TEXT NOT NULL,
    registered REAL NOT NULL);
-- The engines told to retire, by uuid, until they stopped (retiring.py).
CREATE TABLE IF NOT EXISTS retiring (uuid TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
-- (No index on state: each insert and finish would pay for it. A restart finds the unfinished
-- tasks from meta's low_tid, below which every task had finished: see SQLiteStore.commit.)
"""

# sqlite3 binds an int, float or str parameter as it is, but looks a bytes or None one up as
# something to adapt, and the failed look-up raises and clears an AttributeError inside
# (~3,000 instructions; a task's rows bind ~10 of them). A registered adapter is found at
# once: these return the value itself, from C (no Python frame). Kept if one is registered.
IDENTITY_ADAPTERS = {bytes: bytes, type(None): {}.get}
for _kind, _adapter in IDENTITY_ADAPTERS.items():
    sqlite3.adapters.setdefault((_kind, sqlite3.PrepareProtocol), _adapter)

# A task's row goes in whole: a task dispatched (or even finished) before its first commit
# is inserted in that state, with no UPDATE after its INSERT.
INSERT_TASK = ("INSERT INTO tasks (tid, state, submitted, spec, frames, node, attempts, "
               "tries, handed_over, engine, ok, result_meta, result_frames) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# ... and, when no row of a commit needs the later columns (their defaults are NULL), only its
# first ones: each NULL or blob a statement binds costs the sqlite3 module an adapter lookup
# (~3,000 instructions: a queued row has 5 NULLs, a running one 3).
INSERT_RUNNING = ("INSERT INTO tasks (tid, state, submitted, spec, frames, node, attempts, "
                  "tries, handed_over, engine) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_QUEUED = ("INSERT INTO tasks (tid, state, submitted, spec, frames, node, attempts, "
                 "tries) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
# (engine NULL: the attempt was given back unstarted, and the task is queued again)
MARK_RUNNING = ("UPDATE tasks SET engine=?1, state=CASE WHEN ?1 IS NULL THEN 'queued' ELSE "
                "'running' END, node=?2, attempts=?3, tries=?4, handed_over=?5 WHERE tid=?6")
# The running marks of a commit that share their values (a flood's: first attempts on one
# engine) go in statements of MARK_RUNNING_SIZES taskids each (`mark_running_rows`), the
# rest one by one: an UPDATE's statement costs about as much as the row it changes.
MARK_RUNNING_SIZES = (64, 16, 4)
MARK_RUNNING_IN = {n: MARK_RUNNING.replace("tid=?6", f"tid IN ({', '.join('?' * n)})")
                   for n in MARK_RUNNING_SIZES}
FINISH_TASK = ("UPDATE tasks SET state='finished', ok=?, result_meta=?, result_frames=?, "
               "frames=NULL WHERE tid=?")
REMEMBER_SUBMIT = "INSERT OR REPLACE INTO submits VALUES (?, ?, ?)"
REMEMBER_ENGINE = "INSERT OR REPLACE INTO engines VALUES (?, ?, ?)"
SET_META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
# What a restart reads back (every unfinished task above meta's low_tid), and the backlog
# (controller/backlog.py: queued tasks between two taskids); rows as `read_task` takes them.
_SELECT = ("SELECT t.tid, t.state, t.submitted, t.spec, t.frames, t.node, t.attempts, t.tries, "
           "t.handed_over, t.engine, e.uuid FROM tasks t LEFT JOIN engines e ON e.eid = t.engine ")
SELECT_UNFINISHED = _SELECT + "WHERE t.tid >= ? AND t.state != 'finished' ORDER BY t.tid"
SELECT_QUEUED = _SELECT + "WHERE t.tid BETWEEN ? AND ? AND t.state = 'queued' ORDER BY t.tid"
# Positions in an insert row.
STATE, FRAMES, NODE, OK, RESULT_FRAMES = 1, 4, 5, 10, 12
HANDED, ENGINE = 8, 9


def insert_rows(rows: list[list[Any]]) -> tuple[str, list[Any]]:
    """The statement that inserts these rows (shaped as INSERT_TASK takes them), with the
    rows cut to the columns it binds: the fewest that no row has a value past."""
    cut = HANDED
    for r in rows:
        if r[OK] is not None:
            return INSERT_TASK, rows
        if r[ENGINE] is not None or r[HANDED] is not None:
            cut = OK
    return (INSERT_QUEUED if cut == HANDED else INSERT_RUNNING), [r[:cut] for r in rows]

# How long a commit waits for a lock another process holds on the database before it fails
# (and is tried again later): the controller's loop must not stall behind it.
BUSY_TIMEOUT = 0.1
OPEN_TIMEOUT = 2.0  # ... and how long opening the store waits for it
LOW_DISK = 16 * 1024 * 1024  # bytes free below which a store error names the free space

EMPTY_LIST = b"\x90"  # msgpack of []


def connect(path: str) -> sqlite3.Connection:
    """The store's connection (autocommit: the store runs its own transactions; bytes and
    None are bound through IDENTITY_ADAPTERS, registered when this module is imported)."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=OPEN_TIMEOUT)


def mark_running_rows(db: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """MARK_RUNNING for each row (engine, node, attempts, tries, handed_over, tid), in the
    caller's transaction: rows with the same values together (MARK_RUNNING_IN)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        key = row[:5]
        tids = groups.get(key)
        if tids is None:
            groups[key] = [row[5]]
        else:
            tids.append(row[5])
    singles = []
    for key, tids in groups.items():
        i, n = 0, len(tids)
        for size in MARK_RUNNING_SIZES:
            while n - i >= size:
                db.execute(MARK_RUNNING_IN[size], (*key, *tids[i:i + size]))
                i += size
        singles.extend((*key, tid) for tid in tids[i:])
    if singles:
        db.executemany(MARK_RUNNING, singles)


def read_counters(db: sqlite3.Connection) -> tuple[int, int, int]:
    """A store's counters as written: the next taskid and engine id (past the highest row of
    each, and past what `meta` says: a lease's end, an id given to a task refused), and
    `low_tid`, below which every task had finished."""
    def meta(key: str) -> int | None:
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    top = db.execute("SELECT MAX(tid) FROM tasks").fetchone()[0]
    top_eid = db.execute("SELECT MAX(eid) FROM engines").fetchone()[0]
    return (max(meta("next_tid") or 0, (top + 1) if top is not None else 0),
            max(meta("next_eid") or 0, (top_eid + 1) if top_eid is not None else 0),
            meta("low_tid") or 0)


def forget_old_rows(db: sqlite3.Connection, now: float, low_tid: int, next_eid: int) -> None:
    """At open: drop the submit keys older than SUBMIT_KEY_AGE (by the clock now, and before
    the newest key) and the engines registered before ENGINE_ROW_AGE that no unfinished task
    names (and retiring ones that never came back); write `next_eid`."""
    db.execute("BEGIN")
    # Aged against the newest key too, not the wall clock alone: one corrected forward (NTP,
    # a VM resumed) made the keys of the run before look old, so a client's resent submit
    # found no key and its task ran twice.
    db.execute("DELETE FROM submits WHERE at < ? AND at < (SELECT MAX(at) FROM submits) - ?",
               (now - SUBMIT_KEY_AGE, SUBMIT_KEY_AGE))
    db.execute("DELETE FROM engines WHERE registered < ? AND eid NOT IN "
               "(SELECT engine FROM tasks WHERE tid >= ? AND state='running' "
               "AND engine IS NOT NULL)", (now - ENGINE_ROW_AGE, low_tid))
    RetiringEngines.forget_old(db, now - ENGINE_ROW_AGE)
    db.execute(SET_META, ("next_eid", next_eid))
    db.execute("COMMIT")


def write_all(db: sqlite3.Connection, writes: list[tuple[str, Any]]) -> None:
    """Run each (statement, rows) of `writes`, in order, as one transaction (BEGIN ...
    COMMIT; the caller rolls back on an error). A single row (a lone task's result) is one
    statement in autocommit: a transaction of its own, written and made durable as BEGIN ...
    COMMIT would. MARK_RUNNING's rows go through `mark_running_rows`."""
    if len(writes) == 1 and len(writes[0][1]) == 1:
        db.execute(writes[0][0], next(iter(writes[0][1])))
        return
    db.execute("BEGIN")
    for sql, rows in writes:
        if sql is MARK_RUNNING:
            mark_running_rows(db, rows)
        else:
            db.executemany(sql, rows)
    db.execute("COMMIT")


def read_task(row: tuple[Any, ...], read: Callable[[bytes], list[Any]]
              ) -> tuple[StoredTask, dict[str, Any]]:
    """A row of SELECT_UNFINISHED as a task and its scheduling counters (`read`: its frames
    from the row's blob, files.py)."""
    tid, state, submitted, spec, frames, node, attempts, tries, handed, eng, uuid = row
    running = state == "running"
    try:
        payload = read(frames)
    except OSError as e:  # (a large frame's file: see files.py)
        raise StoreError(
            f"task {tid}'s payload cannot be read from the store ({e.strerror or e}: "
            f"{e.filename}): was the store moved or copied without the folder of large frames "
            "beside it (its name ends in .blobs)? Put that folder back and start again"
        ) from None
    return StoredTask(tid, unpack(spec), payload, submitted), {
        "state": state, "node": node, "attempts": attempts, "tries": tries,
        "handed_over": unpack(handed) if handed else [], "engine": eng if running else None,
        "engine_uuid": uuid if running else None}


def delete_finished(db: sqlite3.Connection, tids: list[int] | None, next_tid: int
                    ) -> tuple[list[tuple[int, int, bytes | None]], list[int]]:
    """In the caller's transaction: delete the finished rows of `tids` (None: every one);
    (tid, ok, result_frames) of each row deleted, and the ids that had none. Clearing may drop
    the highest taskids: the next one (`next_tid`) is kept in `meta` (it is otherwise known
    from the highest row), so no taskid is ever given out twice."""
    db.execute(SET_META, ("next_tid", next_tid))
    if tids is None:
        return db.execute("DELETE FROM tasks WHERE state='finished' "
                          "RETURNING tid, ok, result_frames").fetchall(), []
    dropped, missing = [], []
    for tid in tids:
        row = None
        if 0 <= tid <= MAX_TID:
            row = db.execute("DELETE FROM tasks WHERE tid=? AND state='finished' "
                             "RETURNING tid, ok, result_frames", (tid,)).fetchone()
        if row is None:
            missing.append(tid)
        else:
            dropped.append(row)
    return dropped, missing


def hold_lock(path: str) -> int:
    """Take the store's exclusive lock (`<path>.lock`, flock) for this process's life.

    The kernel drops it when the process dies, however it dies, so a kill -9 leaves no stale
    lock; the pid written inside only names the holder in the error a second controller gets.
    The lock file goes beside the store's real file (symlinks resolved).
    """
    # Beside the file itself: a store reached through a symlink (or a path through one) is
    # the same store, and SQLite follows the link for its own files too.
    lock_path = f"{os.path.realpath(path)}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StoreError(f"cannot create the task store's lock file {lock_path}: "
                         f"{e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(
            f"the task store {path} is in use by another controller (pid {holder}); one store "
            "serves one controller: stop that one first (`taskmill cluster stop`, or kill "
            f"{holder}), or give this controller a store of its own (--db PATH)") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:  # (a full disk: no page for the pid)
        os.close(fd)
        raise StoreError(f"cannot write the task store's lock file {lock_path}: "
                         f"{e.strerror or e}{disk_note(path)}") from None
    return fd


def disk_note(path: str) -> str:
    """' (the disk holding it has N bytes free)' when that is little, else ''."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return ""
    return f" (the disk holding it has {free:,} bytes free)" if free < LOW_DISK else ""


def roll_back(db: sqlite3.Connection, path: str, cause: BaseException) -> None:
    """Roll back the transaction a failed write left open; a failed ROLLBACK is logged, never
    raised in the cause's place (the queued rows are kept and tried again)."""
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error as e:
        log.error("the task store %s: ROLLBACK failed (%s) after a write failed (%s); the "
                  "queued rows are kept and tried again", path, e, cause)


def clear_rows(db: sqlite3.Connection, tids: list[int] | None, next_tid: int,
               key_row: Callable[[dict[str, Any]], tuple[Any, ...]] | None, path: str
               ) -> tuple[list[tuple[int, int, bytes | None]], list[int]]:
    """A clear's transaction: `delete_finished`, and (`key_row`: the row of the clear's
    answer, {"dropped": n, "missing": [...]}) its answer. On failure a rollback and a
    StoreError that says nothing was cleared and what to do."""
    try:
        if db.in_transaction:  # (a ROLLBACK that failed left one open)
            db.execute("ROLLBACK")
        db.execute("BEGIN")
        dropped, missing = delete_finished(db, tids, next_tid)
        if key_row is not None:
            db.execute(REMEMBER_SUBMIT, key_row({"dropped": len(dropped), "missing": missing}))
        db.execute("COMMIT")
    except sqlite3.Error as e:
        roll_back(db, path, e)
        raise StoreError(
            f"the task store {path} cannot write: {e}{disk_note(path)}; nothing was cleared: "
            "free space on the disk that holds it (or let go of whatever holds its lock) "
            "and clear again") from None
    return dropped, missing


def unwritten_error(cause: StoreError, tids: list[int]) -> StoreError:
    """The error of a clear that names results not yet written while the store cannot write."""
    some = ", ".join(map(str, tids[:10])) + (", ..." if len(tids) > 10 else "")
    return StoreError(
        f"{cause}; nothing was cleared: the results of tasks {some} are not written yet (they "
        "are once the store can write). Clear the results that are written (a "
        "get_task_result(block=False) that returns them), or all (clear() drops every result "
        "written), then clear these")


def open_error(path: str, e: BaseException) -> StoreError:
    """The one-line StoreError for a store that cannot be opened (in use, damaged, ...)."""
    text = str(e) + disk_note(path)
    if "locked" in text or "busy" in text:
        return StoreError(
            f"the task store {path} is locked by another process ({text}); close whatever "
            "holds it (e.g. a sqlite3 shell inside a transaction) and start again")
    if isinstance(e, sqlite3.DatabaseError) and ("not a database" in text
                                                 or "malformed" in text or "corrupt" in text):
        return StoreError(
            f"the task store {path} is damaged or not a taskmill store ({text}); move it aside "
            "to keep it and start with an empty store, or give another --db")
    return StoreError(f"cannot open the task store {path}: {text}")



KEY_CHECK = "key_check"  # meta: a digest of the key the store's payloads are signed with


def key_check(key: bytes) -> int:
    """What `meta` keeps of a cluster's key: 56 bits of an HMAC of a fixed text (the key
    cannot be read back from it)."""
    return int.from_bytes(hmac.digest(key, b"taskmill: the key of this store", "sha256")[:7],
                          "big")


def store_identity(db: sqlite3.Connection) -> int:
    """The store's random identity, made once when the store is new: a controller restarted
    on another store (the old one deleted, another --db) names another in its session, and
    a client of the old store then fails what it holds instead of reading another task's
    result under its taskid. 0 (unknown: clients compare nothing) if it cannot be written."""
    row = db.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
    if row is not None:
        return int(row[0])
    made = new_store_id()
    try:
        db.execute(SET_META, ("store_id", made))
    except sqlite3.Error:  # (a full disk: made again at the next start)
        return 0
    return made


def check_key(db: sqlite3.Connection, key: bytes, path: str) -> None:
    """StoreError if the store at `path` was written by a cluster with another key (its
    results would not pass their signature checks, and its queued tasks would be refused by
    every engine); a store without a check (new, or older than it) takes this key's."""
    want = key_check(key)
    row = db.execute("SELECT value FROM meta WHERE key=?", (KEY_CHECK,)).fetchone()
    if row is None:
        try:
            db.execute(SET_META, (KEY_CHECK, want))
        except sqlite3.Error:  # (a full disk: checked at the next start)
            pass
        return
    if row[0] != want:
        raise StoreError(
            f"the task store {path} was written by a cluster with another key, so its results "
            "and queued tasks could not be read or run with this one: start with that "
            "cluster's key (`taskmill cluster start --resume` keeps it beside the store; "
            "Cluster(key=...); its connection file), or give another --db")
