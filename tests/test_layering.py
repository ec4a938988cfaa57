"""Arrows point down: nothing under asymviz/ imports streamlit (DESIGN.md §3)."""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "asymviz"


def test_no_module_under_asymviz_imports_streamlit():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "streamlit"]
    assert offenders == []
    assert len(list(PACKAGE.glob("*.py"))) >= 8  # the scan saw the package


def test_importing_every_module_does_not_load_streamlit():
    modules = [p.stem for p in PACKAGE.glob("*.py") if p.stem != "__main__"]
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module('asymviz.' + m)\n"
            "print('streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _module_name(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> str:
    parts = ("asymviz",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, known: set[str], root: pathlib.Path = PACKAGE) -> set[str]:
    """The asymviz modules a file imports, at the top or inside a function alike.

    `from asymviz.x import y` imports the module asymviz.x.y when there is one, else asymviz.x;
    the parent packages Python runs first (asymviz/__init__.py, ...) are not counted: they hold
    no code that imports back."""
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .y import z
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {name for name in found if name in known and name != here}


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(paths)) for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """For each group of modules that import one another (a strongly connected component,
    Tarjan), a shortest cycle from its first module: [a, ..., a]."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for group in groups:  # a shortest way back to the group's first module, inside the group
        start = min(group)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            nxt = sorted(graph[path[-1]] & group)
            if start in nxt:
                cycles.append(path + [start])
                break
            for n in nxt:
                if n not in seen:
                    seen.add(n)
                    paths.append(path + [n])
    return cycles


def test_no_asymviz_module_imports_one_that_imports_it_back():
    """The modules form layers: no import cycle among them, counting imports made inside a
    function (a lazy import that hides a cycle still ties the two modules together)."""
    graph = _import_graph()
    assert {"asymviz.jobs", "asymviz.store", "asymviz.lab"} <= set(graph)  # the scan saw the package
    assert "asymviz.store" in graph["asymviz.jobs"]  # and the imports
    cycles = _cycles(graph)
    assert cycles == [], "import cycles (one per group of modules tied together): " + "; ".join(
        " -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c", "a2"}, "c": {"a", "d"}, "a2": {"a"}, "d": set(), "e": {"d"}}
    assert _cycles(graph) == [["a", "b", "a2", "a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert sorted(_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}})) == [["a", "b", "a"], ["c", "d", "c"]]


def test_the_import_scan_reads_lazy_and_relative_imports(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        "import os\nfrom asymviz.experiment import spec\n\n"
        "def f():\n    from asymviz import jobs\n    import asymviz.store\n    from .sibling import x\n"
        "    from ..lab import home\n    from asymviz.data import DATASETS\n")
    known = {"asymviz.jobs", "asymviz.lab", "asymviz.store", "asymviz.experiment", "asymviz.experiment.spec",
             "asymviz.pkg.sibling", "asymviz.pkg.m", "asymviz.train"}
    assert _imports(tmp_path / "pkg" / "m.py", known, root=tmp_path) == {
        "asymviz.experiment.spec", "asymviz.jobs", "asymviz.store", "asymviz.pkg.sibling", "asymviz.lab"}
