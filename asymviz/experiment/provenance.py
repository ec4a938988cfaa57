"""Where a report came from, and whether it is still true of the code.

A report's header names the git commit it was generated at (and whether `asymviz/` had
uncommitted changes), the package versions, the machine and the wall time. `check_report`
reads that commit back from a report (RESULTS.md) and lists what makes the report stale: a
dirty tree, a commit this clone does not have, or a NUMERICS file that changed since, so CI
fails until the report is regenerated with REGENERATE.

    problems = check_report("RESULTS.md")         # [] while the report is fresh
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

# The files whose change can change a reported number: the training numerics, the data, and
# the experiment's protocol and statistics (not its report formatting).
NUMERICS = (
    "asymviz/sparse.py", "asymviz/optim.py", "asymviz/train.py", "asymviz/model.py", "asymviz/data.py",
    "asymviz/strategies.py", "asymviz/fast/__init__.py", "asymviz/fast/compact.py", "asymviz/fast/gradbuf.py",
    "asymviz/fast/workspace.py", "asymviz/fast/lazy.py", "asymviz/fast/kernels.py", "asymviz/fast/_kernels.c",
    "asymviz/experiment/spec.py", "asymviz/experiment/schedule.py", "asymviz/experiment/stats.py",
    "asymviz/experiment/results.py", "asymviz/values.py",
)
REGENERATE = ".venv/bin/python -m asymviz experiment --preset standard --out results/standard --results RESULTS.md"
_COMMIT_LINE = re.compile(r"\*\*Commit\*\*\s*\|?\s*`([0-9a-f]{40})`\s*\((clean|dirty)")


def repo_root() -> Path | None:
    """The git checkout this package runs from, or None (an installed copy)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / ".git").exists() else None


def git(root: Path, *args: str, strip: bool = True) -> str | None:
    """git's stdout, or None if git is missing or fails."""
    try:
        p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if p.returncode != 0:
        return None
    return p.stdout.strip() if strip else p.stdout


def commit_info(root: Path | None = None) -> dict:
    """{"commit": sha or None, "dirty": bool, "changed": [tracked files under asymviz/ with
    uncommitted changes]} of a checkout (default: this package's)."""
    root = root or repo_root()
    if root is None:
        return {"commit": None, "dirty": False, "changed": []}
    commit = git(root, "rev-parse", "HEAD")
    status = git(root, "status", "--porcelain", "--untracked-files=no", "--", "asymviz", strip=False)
    changed = [line[3:] for line in (status or "").splitlines() if line.strip()]
    return {"commit": commit, "dirty": bool(changed), "changed": changed}


def versions() -> dict[str, str]:
    """Versions of Python and the packages the numbers depend on."""
    import numpy
    import pandas
    import scipy
    import sklearn
    import torch

    from asymviz import __version__

    return {"asymviz": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "scipy": scipy.__version__, "pandas": pandas.__version__,
            "scikit-learn": sklearn.__version__}


def machine_line() -> str:
    """CPU, cores and operating system of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def commit_text(info: dict) -> str:
    """The header's commit cell: '`<sha>` (clean)' or '`<sha>` (dirty: a.py, b.py)'."""
    if not info.get("commit"):
        return "unknown (not run from a git checkout)"
    if info.get("dirty"):
        why = info.get("reason") or f"uncommitted changes in {', '.join(info.get('changed') or ['asymviz/'])}"
        return f"`{info['commit']}` (dirty: {why})"
    return f"`{info['commit']}` (clean: no uncommitted change under asymviz/)"


def report_commit(text: str) -> tuple[str, bool] | None:
    """(commit, clean) named by a report's header, or None if it names none."""
    m = _COMMIT_LINE.search(text)
    return (m.group(1), m.group(2) == "clean") if m else None


def check_report(report: str | os.PathLike, root: Path | None = None, files=NUMERICS) -> list[str]:
    """Sentences saying why a report is stale (empty: it is fresh): it names no commit, was
    generated from a dirty tree, names a commit this clone lacks, or a file of `files` differs
    between that commit and the working tree."""
    root = root or repo_root()
    name = Path(report).name
    try:
        text = Path(report).read_text(encoding="utf-8")
    except OSError as err:
        return [f"{name} cannot be read ({err.strerror or err}); regenerate it with: {REGENERATE}"]
    found = report_commit(text)
    if found is None:
        return [f"{name} names no commit in its header; regenerate it with: {REGENERATE}"]
    commit, clean = found
    problems = []
    if not clean:
        problems.append(f"{name} was generated from a working tree with uncommitted changes; regenerate it from a "
                        f"clean checkout with: {REGENERATE}")
    if root is None or git(root, "cat-file", "-e", f"{commit}^{{commit}}") is None:
        problems.append(f"{name} names commit {commit[:12]}, which this clone does not have (a shallow clone "
                        "fetches too little history); fetch it, or regenerate the report.")
        return problems
    changed = git(root, "diff", "--name-only", commit, "--", *files)
    if changed is None:
        problems.append(f"git could not compare commit {commit[:12]} with the working tree.")
    elif changed:
        problems.append(f"These files changed since commit {commit[:12]}, which {name} was generated at: "
                        f"{', '.join(changed.splitlines())}; regenerate it with: {REGENERATE}")
    return problems
