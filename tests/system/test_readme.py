"""Every Python block of the README runs as written.

Each block is saved as a script and run the way the README tells a user to run a script:
`taskmill run -n 2 block.py` (a throw-away cluster that `TaskClient()` inside finds), or plain
`python block.py` when the block starts its own `Cluster`. A block may be left out only with an
HTML comment right above it that says why (`<!-- readme-test: not run (...) -->`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SKIP = re.compile(r"<!-- readme-test: not run \((.+)\) -->\s*$")


def python_blocks() -> list[tuple[int, str, str | None]]:
    """(line, code, reason to skip or None) of each ```python block."""
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            m = SKIP.search(lines[start - 1]) if start else None
            blocks.append((start + 1, "\n".join(lines[start + 1:j]) + "\n",
                           m.group(1) if m else None))
            i = j
        i += 1
    return blocks


BLOCKS = python_blocks()


def test_the_readme_has_its_blocks_and_skips_at_most_one():
    assert len(BLOCKS) >= 7
    assert sum(reason is not None for _, _, reason in BLOCKS) <= 1


@pytest.mark.timeout(240)
@pytest.mark.parametrize("line,code,reason", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_a_readme_block_runs_as_written(tmp_path, line, code, reason):
    if reason is not None:
        pytest.skip(f"README line {line}: {reason}")
    script = tmp_path / f"readme_line{line}.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMILL")}
    env["TQDM_DISABLE"] = "1"
    if "Cluster(" in code:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "taskmill", "run", "-n", "2", str(script)]
    env["PYTHONFAULTHANDLER"] = "1"  # (so that SIGABRT prints where each thread stands)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:  # stuck: show where (the script and `taskmill run`)
        os.killpg(proc.pid, signal.SIGABRT)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"README block at line {line} did not end within 200 s; its threads:\n"
                    f"{out[-2000:]}\n{err[-8000:]}")
    assert proc.returncode == 0, (
        f"README block at line {line} failed (exit {proc.returncode}):\n"
        f"{out[-2000:]}\n{err[-4000:]}")
    assert "Traceback" not in err, err[-4000:]
