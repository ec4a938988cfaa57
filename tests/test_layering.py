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
