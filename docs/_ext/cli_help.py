"""The `taskmill-help` directive: the `--help` text of `taskmill` and of every subcommand, run at
build time, so the command-line page always shows the options the code has.

It runs `python -m taskmill [SUBCOMMAND ...] --help` with this checkout's src/ first on the
path, and finds subcommands to any depth among the names argparse lists, indented by four,
under "positional arguments" (or in its `{a,b,c}` choices), keeping those whose own --help
starts with their usage line.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

SRC = Path(__file__).resolve().parents[2] / "src"
CHOICES = re.compile(r"^\s+\{([\w,-]+)\}", re.MULTILINE)
LISTED = re.compile(r"^    ([a-z][\w-]*)(?:\s|$)", re.MULTILINE)


@functools.cache
def run_help(args: tuple[str, ...]) -> str:
    env = dict(os.environ, COLUMNS="88", PYTHONPATH=os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]))
    run = subprocess.run([sys.executable, "-m", "taskmill", *args, "--help"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"taskmill {' '.join(args)} --help failed:\n{run.stderr}")
    return run.stdout


def help_text(args: list[str]) -> str:
    return run_help(tuple(args))


def commands(args: list[str] | None = None) -> list[tuple[list[str], str]]:
    """(subcommand path, its help text) for `taskmill` and everything below it, depth first."""
    args = args or []
    text = help_text(args)
    found = [(args, text)]
    positionals = text.partition("positional arguments:")[2].partition("\noptions:")[0]
    match = CHOICES.search(positionals)
    names = match.group(1).split(",") if match else LISTED.findall(positionals)
    for name in dict.fromkeys(names):
        # a positional argument is no subcommand: its --help is its parent's, or fails
        try:
            own = help_text([*args, name])
        except RuntimeError:
            continue
        if own.startswith(f"usage: {' '.join(['taskmill', *args, name])}"):
            found += commands([*args, name])
    return found


class TaskmillHelp(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        for args, text in commands():
            title = " ".join(["taskmill", *args])
            out.append(nodes.rubric(title, title, ids=[nodes.make_id("cli " + title)]))
            out.append(nodes.literal_block(text, text, language="text"))
        return out


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("taskmill-help", TaskmillHelp)
    return {"version": "1", "parallel_read_safe": True}
