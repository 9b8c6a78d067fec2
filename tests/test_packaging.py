"""The wheel as a user gets it: built from this tree, installed into a fresh venv.

It must carry the dashboard's static files, `py.typed` and the license, pull in nothing heavy, and
a cluster started from that venv (not from this checkout) must serve its dashboard.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What `pip install taskmill` may bring: taskmill, its six dependencies, and what venv itself
# puts there. Anything else (numpy, an async framework, ...) is a heavy surprise for a user.
# (msgspec, which depends on nothing, decodes the controller's typed protocol records.)
# (blake3, the payload MAC the SPEC names, brings typing_extensions: pure Python, small.)
ALLOWED = {"taskmill", "pyzmq", "cloudpickle", "msgpack", "msgspec", "tqdm", "blake3",
           "typing_extensions", "pip", "setuptools"}

CHECK = r'''
import importlib.metadata as md, json, sys, urllib.request
from pathlib import Path
import taskmill
from taskmill import Cluster
here = Path(taskmill.__file__).resolve().parent
out = {"file": str(here), "typed": (here / "py.typed").is_file(),
       "license": md.metadata("taskmill")["License-Expression"],
       "dists": sorted(d.metadata["Name"].lower() for d in md.distributions())}
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with Cluster(n=1, transport="ipc") as cluster:
    base, token = cluster.dashboard_url.split("?token=")
    pages = {}
    for path in ("/", "/dashboard.js", "/engines.js", "/charts.js", "/dashboard.css"):
        request = urllib.request.Request(base.rstrip("/") + path,
                                         headers={"Authorization": f"Bearer {token}"})
        with opener.open(request, timeout=30) as r:
            pages[path] = [r.status, len(r.read())]
    out["pages"] = pages
    out["answer"] = cluster.client().submit(pow, 2, 10).result(timeout=60)
print(json.dumps(out))
'''


@pytest.mark.timeout(600)
def test_the_wheel_installs_into_a_fresh_venv_and_serves_the_dashboard(tmp_path):
    # From a copy of the sources only: a build/ folder left in the checkout would feed the wheel.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".hypothesis"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(source)], check=True, timeout=300, stdin=subprocess.DEVNULL)
    (wheel,) = wheels.glob("taskmill-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True,
                   timeout=300, env=env, stdin=subprocess.DEVNULL)
    proc = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True,
                          timeout=240, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(env_dir)), out["file"]  # not this checkout
    assert out["typed"] and out["license"] == "BSD-3-Clause"
    assert set(out["dists"]) <= ALLOWED, set(out["dists"]) - ALLOWED
    for path, (status, size) in out["pages"].items():
        assert status == 200 and size > 1000, (path, status, size)
    assert out["answer"] == 1024
