"""The shape the code keeps (issue 17): small modules, no import circle, no private member of one
of our modules used from another (tests included).

These read the source with `ast` (nothing is imported), so they hold for code paths no test runs,
lazy imports inside functions and TYPE_CHECKING blocks included.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "taskmill"
MAX_LINES = 500

# Private names of other libraries we use on purpose, each in one place with its reason.
FOREIGN_PRIVATE = {
    "os._exit",  # leave a forked or doomed process without running Python's clean-up
    "sys._getframe",
    "cloudpickle.cloudpickle._function_setstate",  # wire/cloudpickle_internals.py says why
    "cloudpickle.cloudpickle._make_function",
    "cloudpickle.cloudpickle._should_pickle_by_reference",
    "concurrent.futures._base.CANCELLED",  # a Future's state, set as Future.cancel() would
}
NAMEDTUPLE = {"_replace", "_asdict", "_fields", "_make"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def resolve(mod: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (before its imported names)."""
    if not node.level:
        return node.module or ""
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def test_no_source_file_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (at most {MAX_LINES} lines each): {long}"


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(mod, path, node)
                # `from pkg import name`: the submodule pkg.name if there is one, else pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for target in targets:
                while target and target not in mods:  # `import a.b.c` -> the deepest we have
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40 and graph["taskmill.controller.loop"], "the graph was not read"
    found = cycles(graph)
    assert not found, f"modules that import each other (directly or round a circle): {found}"


def test_the_circle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def private_uses(path: Path, ours: set[str], mod: str | None) -> list[str]:
    """`_name`s this file takes from another module: imported, or read off an object whose
    class this file does not define (self._x and names this file defines are its own)."""
    tree = ast.parse(path.read_text())
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            own.add(node.target.id)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = resolve(mod, path, node) if mod is not None else (node.module or "")
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    if f"{base}.{a.name}" not in FOREIGN_PRIVATE:
                        found.append(f"{path.name}:{node.lineno} imports {base}.{a.name}")
        elif isinstance(node, ast.Attribute):
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in NAMEDTUPLE:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if name in own or ast.unparse(node) in FOREIGN_PRIVATE:
                continue
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {ast.unparse(node)}")
    return found


def test_no_private_member_is_used_across_modules():
    mods = modules()
    ours = set(mods)
    found = [use for mod, path in mods.items() for use in private_uses(path, ours, mod)]
    found += [use for path in sorted((ROOT / "tests").rglob("*.py"))
              for use in private_uses(path, ours, None)]
    assert not found, ("give these a public name (package-internal if need be) or use a "
                       "public seam:\n" + "\n".join(found))
