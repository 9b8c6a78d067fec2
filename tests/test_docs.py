"""The documentation (docs/, built by `make docs`): the API reference covers every public name,
every page is reachable, docstrings cite no file the package does not ship, and the Sphinx
build gives no warning (CI runs `make docs`, which fails on one, after `make test`)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import taskmill

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_the_api_reference_documents_every_public_name():
    api = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. (?:auto\w+|py:data):: (?:taskmill\.)?(\w+)", api, re.M))
    missing = set(taskmill.__all__) - {"__version__"} - documented
    assert not missing, f"docs/api.rst does not document {sorted(missing)}"


def test_every_page_is_in_the_table_of_contents():
    index = (DOCS / "index.md").read_text()
    pages = {p.stem for p in DOCS.glob("*.md")} | {p.stem for p in DOCS.glob("*.rst")}
    listed = set(re.findall(r"^([\w-]+)$", index, re.M))
    assert pages - {"index"} <= listed, sorted(pages - {"index"} - listed)


def test_docstrings_and_comments_cite_no_unshipped_spec():
    # The contract SPEC.md is not shipped with the package: say what it means instead.
    cited = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "src").rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"SPEC(\.md)?\b|§", line)]
    assert not cited, cited


def test_the_docs_build_without_a_warning(tmp_path):
    for module in ("sphinx", "myst_parser", "furo"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (`make docs` installs it and runs this build)")
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E", "-b", "html",
         str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr[-5000:]
    cli = (tmp_path / "html" / "cli.html").read_text()
    for command in ("taskmill controller", "taskmill cluster start", "taskmill status"):
        assert f">{command}<" in cli, command  # each subcommand's --help, to any depth
    assert "--connection-file" in cli
    api = (tmp_path / "html" / "api.html").read_text()
    assert 'id="taskmill.TaskClient.submit"' in api  # autodoc found the methods


def python_blocks() -> list[tuple[str, str]]:
    """(page, code) of every ```python block of the pages."""
    return [(page.name, block) for page in sorted(DOCS.glob("*.md"))
            for block in re.findall(r"^```python\n(.*?)^```$", page.read_text(), re.M | re.S)]


def test_every_python_example_in_the_docs_is_the_readmes_or_starts_its_own_cluster():
    # tests/system/test_readme.py runs the README's blocks; the pages show the same ones, and
    # each of their own starts a Cluster (test_the_pages_own_examples_run runs them).
    readme = (ROOT / "README.md").read_text()
    blocks = python_blocks()
    assert len(blocks) >= 8
    stray = [page for page, code in blocks if code not in readme and "Cluster(" not in code]
    assert not stray, f"python blocks neither in the README nor starting a Cluster: {stray}"


@pytest.mark.parametrize("page,code", [
    (page, code) for page, code in python_blocks()
    if code not in (ROOT / "README.md").read_text()])
def test_the_pages_own_examples_run(page, code, tmp_path):
    (tmp_path / "example.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMILL")}
    env["TASKMILL_DIR"] = str(tmp_path / "state")
    run = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=90, check=False)
    assert run.returncode == 0, f"{page}:\n{run.stdout}\n{run.stderr}"
