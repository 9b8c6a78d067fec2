"""`taskmill clean`: remove what stopped clusters left behind, never a running cluster's state.

Two kinds of state are looked at:

- a `Cluster`'s folder in the temporary directory (`taskmill-cluster-*`, mode 0700, ours): its
  logs, unix sockets, and the connection file and store of a `Cluster(n)`. `stop()` removes it,
  and so does its controller when the owner dies; a SIGKILL of both leaves it. It belongs to a
  stopped cluster when no pid its `owner.pid` names (the owner's, the controller's) is alive. A
  folder without that file (made by an older taskmill) is left alone and counted.
- a profile (`~/.taskmill/profile_*`, or under $TASKMILL_DIR): the store that
  `taskmill cluster start` keeps there for `--resume` (tasks.db and its files) and cluster.log,
  when no cluster runs there. `store.remove_store` refuses a store that a controller holds, so a
  `taskmill controller` using it keeps it. A profile whose cluster.json names a process that is
  gone is left for `taskmill cluster stop` (which stops what its launcher left, e.g. a Slurm
  job). Connection files and Curve keys are kept.

    folders, profiles --> `stopped_state` (what may go, what stays and why) --> removed, or
    printed with --dry-run
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from ..connection import taskmill_dir
from .cluster import cluster_alive, pid_alive, read_cluster_record


def size_of(path: Path) -> int:
    """Bytes held by a file, or by the files in a folder (a store: by all its files)."""
    if path.name == "tasks.db":
        from ..store import store_files

        return sum(size_of(f) for f in store_files(path) if f != path) + (
            path.lstat().st_size if path.exists() else 0)
    if path.is_dir() and not path.is_symlink():
        return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file())
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def folder_running(folder: Path) -> bool | None:
    """Whether the cluster of a state folder runs: None when its owner file is missing."""
    from ..cluster import OWNER_FILE

    try:
        text = (folder / OWNER_FILE).read_text()
    except OSError:
        return None
    pids = [int(x) for x in text.split() if x.isdigit()]
    return any(pid_alive(p) for p in pids)


def temp_state_folders(tmp: Path) -> list[Path]:
    """This user's cluster state folders in the temporary directory `tmp`."""
    from ..cluster import STATE_PREFIX

    uid = os.getuid()
    found = []
    for p in sorted(tmp.glob(STATE_PREFIX + "*")):
        try:
            if p.is_dir() and not p.is_symlink() and p.stat().st_uid == uid:
                found.append(p)
        except OSError:
            continue
    return found


def stopped_state(tmp: Path, root: Path) -> tuple[list[Path], list[str]]:
    """(what may be removed, what is kept and why): stopped clusters' folders in `tmp`, and the
    stores (named by their tasks.db) and logs of profiles under `root` where no cluster runs."""
    from ..cluster import OWNER_FILE
    from ..store import store_files

    remove: list[Path] = []
    kept: list[str] = []
    for folder in temp_state_folders(tmp):
        running = folder_running(folder)
        if running is None:
            kept.append(f"{folder}: made by an older taskmill (no {OWNER_FILE}); remove it by "
                        "hand once no cluster of yours runs")
        elif running:
            kept.append(f"{folder}: its cluster is running")
        else:
            remove.append(folder)
    for profile in sorted(root.glob("profile_*")) if root.is_dir() else []:
        record = read_cluster_record(profile / "cluster.json")
        if record is not None:
            if cluster_alive(record):
                kept.append(f"{profile}: its cluster is running (pid {record['pid']})")
            else:
                kept.append(f"{profile}: its cluster (pid {record['pid']}) was killed; "
                            "`taskmill cluster stop` cleans up after it, then clean again")
            continue
        if store_files(profile / "tasks.db"):
            remove.append(profile / "tasks.db")
        if (profile / "cluster.log").exists():
            remove.append(profile / "cluster.log")
    return remove, kept


def cmd_clean(a: argparse.Namespace) -> int:
    from ..errors import StoreError
    from ..store import remove_store

    tmp = Path(tempfile.gettempdir())
    remove, kept = stopped_state(tmp, taskmill_dir())
    freed, errors = 0, 0
    for path in remove:
        size = size_of(path)
        if a.dry_run:
            print(f"would remove {path} ({size:,} bytes)")
            freed += size
            continue
        try:
            if path.name == "tasks.db":
                size = remove_store(path)  # (StoreError when a controller holds it)
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except (StoreError, OSError) as e:
            kept.append(f"{path}: {e}")
            errors += 1
            continue
        print(f"removed {path} ({size:,} bytes)")
        freed += size
    for why in kept:
        print(f"kept {why}")
    verb = "would free" if a.dry_run else "freed"
    print(f"{verb} {freed:,} bytes")
    return 1 if errors else 0
