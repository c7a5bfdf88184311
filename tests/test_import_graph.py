"""lmforge's subpackages and top-level modules import each other without a cycle, counting the imports inside
functions too (a cycle hidden in a function is still a cycle of the design). The package's __init__ (the public
API) and cli/ (which imports everything) are left out."""

from __future__ import annotations

import ast
from pathlib import Path

import lmforge

ROOT = Path(lmforge.__file__).parent


def unit_of(module: str) -> str | None:
    """The subpackage or top-level module `module` (a dotted lmforge name) belongs to; None for the package
    itself and for cli/."""
    parts = module.split(".")
    if parts[0] != "lmforge" or len(parts) == 1 or parts[1] == "cli":
        return None
    return parts[1]


def imported_modules(path: Path, module: str) -> set[str]:
    """Every lmforge module `path` imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from lmforge import config`
    return {name for name in found if name.startswith("lmforge.")}


def import_graph() -> dict[str, set[str]]:
    units = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = ".".join(("lmforge",) + path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        source = unit_of(module)
        if source is None:
            continue
        targets = {unit_of(name) for name in imported_modules(path, module)}
        graph.setdefault(source, set()).update(t for t in targets if t in units and t != source)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that returns to its start, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node, [])
        if cycle:
            return cycle
    return None


def test_the_import_graph_finds_imports_inside_functions_and_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    assert "generate" in graph["evaluate"]  # evaluate/run.py and the decoding lab call generate()
    assert "models" in graph["generate"] and "hub" in graph["generate"]  # hub only inside a method


def test_lmforge_subpackages_import_each_other_without_a_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle between lmforge's parts: " + " -> ".join(cycle)
