"""The package's shape, read from its source: no import cycles, `evaluate` never reaches into
`data`, and the modules a spec, a data builder or a report needs do not pull in torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "backdoorlab"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _nodes(tree: ast.Module, top_level_only: bool) -> list[ast.AST]:
    """The statements that run: module level only, or anywhere (inside functions too), never
    what `if TYPE_CHECKING:` guards."""
    if top_level_only:  # `if TYPE_CHECKING:` and other guarded imports are not module level
        return [n for n in tree.body if not isinstance(n, ast.If)]
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if _type_checking(node):
            todo += node.orelse
            continue
        found.append(node)
        todo += ast.iter_child_nodes(node)
    return found


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """backdoorlab modules `path` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in _nodes(tree, top_level_only):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("backdoorlab")}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if not mod.startswith("backdoorlab"):
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # `from . import chat`
    return found


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    return {m: _imports(p, top_level_only) & set(MODULES) for m, p in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(m: str, stack: list[str]) -> list[str] | None:
        if m in stack:
            return [*stack[stack.index(m) :], m]
        if m in done:
            return None
        for d in sorted(graph[m]):
            if found := visit(d, [*stack, m]):
                return found
        done.add(m)
        return None

    return next((c for m in sorted(graph) if (c := visit(m, []))), None)


def test_no_import_cycles():
    """Among module-level imports: a package's __init__ importing its own submodules is how
    Python packages work, and a submodule's `from . import x` finds its package loading."""
    graph = {
        m: {d for d in deps if d != m and not m.startswith(d + ".") and not d.startswith(m + ".")}
        for m, deps in _graph(top_level_only=True).items()
    }
    assert (cycle := _cycle(graph)) is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycles_through_lazy_imports():
    """Imports inside functions too, and what importing `a.b.c` runs first: package `a.b`'s
    __init__ (so an __init__ that lazily imports its submodules is part of any circle through
    them). A circle here works only as long as nobody calls the lazy import at import time."""

    def ran(d: str) -> set[str]:  # `a.b.c` and the packages above it
        parts = d.split(".")
        return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}

    graph = {
        m: {x for d in deps for x in ran(d) & set(MODULES) if x != m and not m.startswith(x + ".")}
        for m, deps in _graph(top_level_only=False).items()
    }
    assert (cycle := _cycle(graph)) is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("backdoorlab.evaluate", "backdoorlab.data"),
        ("backdoorlab.defenses", "backdoorlab.experiment"),
    ],
)
def test_lower_layers_never_import_upper_ones(lower, upper):
    """evaluate never imports the data builders; defenses never import the orchestrator."""
    for m, deps in _graph(top_level_only=False).items():
        if m.startswith(lower):
            bad = sorted(d for d in deps if d.startswith(upper))
            assert not bad, f"{m} imports {bad}"


@pytest.mark.parametrize(
    "module",
    ["backdoorlab.spec", "backdoorlab.catalog", "backdoorlab.report", "backdoorlab.gates",
     "backdoorlab.data.birds", "backdoorlab.cli", "backdoorlab", "backdoorlab.api",
     "backdoorlab.results"],
)  # fmt: skip
def test_torch_free_at_import(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, f"{module} imports torch"


def test_attributes_used_on_our_modules_exist():
    """`mod.name` where `mod` is one of our modules imported by name: `name` must exist there
    (moving a function out of a module must move every caller with it)."""
    import importlib

    missing = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        here = m.split(".")
        package = here if path.name == "__init__.py" else here[:-1]
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(
                    [
                        *package[: len(package) - node.level + 1],
                        *([node.module] if node.module else []),
                    ]
                )
                for a in node.names:
                    if f"{base}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{base}.{a.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                target = aliases.get(node.value.id)
                if target and not hasattr(importlib.import_module(target), node.attr):
                    missing.append(f"{m}: {target}.{node.attr}")
    assert not missing, missing


def test_the_command_line_is_a_thin_layer():
    """Nothing in the library imports the command line, and each command's body (after its
    docstring: options checked, the library called, results printed) stays short; library
    logic in a command would be a second home for it."""
    for m, deps in _graph(top_level_only=False).items():
        if not m.startswith("backdoorlab.cli") and m != "backdoorlab.__main__":
            assert not [d for d in deps if d.startswith("backdoorlab.cli")], m
    long = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for fn in ast.parse(path.read_text()).body:
            commands = [d for d in getattr(fn, "decorator_list", []) if "command" in ast.unparse(d)]
            if not commands:
                continue
            first = fn.body[0]
            docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            start = (first.end_lineno + 1) if docstring else first.lineno
            if fn.end_lineno - start + 1 > 60:
                long.append(f"{path.name}:{fn.name} ({fn.end_lineno - start + 1} lines)")
    assert not long, long
