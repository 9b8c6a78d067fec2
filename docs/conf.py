"""Sphinx configuration of taskmill's documentation (`make docs` builds it into docs/_build/html).

The pages are MyST Markdown; the API reference comes from the docstrings (autodoc + napoleon);
the command-line page is made at build time from `taskmill --help` (see _ext/cli_help.py), so it
never goes stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))  # document this checkout, whatever is installed
sys.path.insert(0, str(HERE / "_ext"))

import taskmill  # noqa: E402

project = "taskmill"
author = "the taskmill developers"
copyright = "the taskmill developers"
release = version = taskmill.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
    "cli_help",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# Docstrings write names in single backquotes, as Markdown does: link them where they resolve.
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"taskmill {release}"

# Docstrings are written for people reading the source, in the Markdown habit: "`MapFailure`s".
# reStructuredText wants a closing backquote followed by no letter; an escaped space fixes that.
_GLUED = re.compile(r"(?<![`\\])(`[^`\s][^`]*`)(?=\w)")


def _unglue(app: object, what: str, name: str, obj: object, options: object,
            lines: list[str]) -> None:
    lines[:] = [_GLUED.sub(r"\1\\ ", line) for line in lines]


def setup(app: object) -> None:
    app.connect("autodoc-process-docstring", _unglue)  # type: ignore[attr-defined]
