"""No import circle in engine/ or tui/: a graph of every import the code makes, read with ``ast``.

Module-level and function-level imports count (a function's import runs too, only later);
``from X import Y`` where X.Y is a module counts as an import of X.Y; relative imports are
resolved. Imports under ``if TYPE_CHECKING:`` never run and are left out. Importing a module
runs its packages' ``__init__`` first, but a package that imports its own submodules is no
circle, so only the module named is an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "tui")


def module_names(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under the packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(child)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """{module: the modules of ``packages`` it imports}."""
    modules = module_names(root, packages)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package this module is in
                    package = name.split(".")
                    if not is_package:
                        package = package[:-1]
                    package = package[:len(package) - (node.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                # `import engine.train.loop` names engine.train.loop; a name inside a module
                # names that module: the longest module the dotted name starts with
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (first module repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return path[path.index(target):] + [target]
            if target not in done:
                found = visit(target)
                if found:
                    return found
        on_path.discard(path.pop())
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            found = visit(module)
            if found:
                return found
    return None


def test_engine_and_tui_import_no_circle():
    graph = import_graph(ROOT, PACKAGES)
    assert "engine.cli" in graph and "tui.app" in graph  # the graph covers both folders
    assert "engine.pipeline" in graph["engine.cli"]  # function-level imports count
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_graph_finds_a_circle_through_a_function_level_and_a_from_import(tmp_path):
    # the fit -> cli circle this project had: a function-level `from engine.cli import ...`
    package = tmp_path / "engine"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text("from engine import pipeline\n")
    (package / "pipeline.py").write_text("def run():\n    from engine.sub import fit\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "fit.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine import other\n"
        "def main():\n    from ..cli import default_run_dir\n")
    (package / "other.py").write_text("import engine.sub.fit\n")
    graph = import_graph(tmp_path, ("engine",))
    assert graph["engine.sub.fit"] == {"engine.cli"}  # relative, and TYPE_CHECKING left out
    assert graph["engine.pipeline"] == {"engine.sub.fit"}  # `from X import Y`, Y a module
    assert find_circle(graph) == ["engine.cli", "engine.pipeline", "engine.sub.fit", "engine.cli"]
    (package / "sub" / "fit.py").write_text("DEFAULT = 'saved'\n")
    assert find_circle(import_graph(tmp_path, ("engine",))) is None
