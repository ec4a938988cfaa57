"""Hosting asymviz for a class: the lab's configuration from the environment, the worker pool's
status file, and the process and machine numbers the instructor view shows. No Streamlit here:
`python -m asymviz serve`, the dashboard (ui_common.py, pages/5_Instructor.py) and
scripts/measure_lab.py share it.

    ASYMVIZ_DATASETS=digits,moons,csv   the datasets this lab offers (default: all of them)
    ASYMVIZ_PASSWORD                    one password for the whole instance (checked by ui_common)
    ASYMVIZ_INSTRUCTOR_PASSWORD         the instructor view's password (unset: the view is disabled)
    ASYMVIZ_AUTH=oidc                   log in with Streamlit's st.login instead (README)

The pool status file ($ASYMVIZ_HOME/workers.json) is how a server started by `serve` (whose
Streamlit process runs no workers: ASYMVIZ_EXTERNAL_WORKERS=1) learns which processes train,
and `pool_problem` whether any will (the dashboard says so on every page and refuses new runs
when none will). `die_with_parent` is how `serve` keeps its Streamlit child from outliving it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import sys
import time
from pathlib import Path

from asymviz.errors import ConfigError

POOL_FILE = "workers.json"  # in $ASYMVIZ_HOME, next to asymviz.db
DAY_S = 86_400.0


def home() -> Path:
    """$ASYMVIZ_HOME (default ~/.asymviz): the store, the dataset cache and uploads."""
    return Path(os.environ.get("ASYMVIZ_HOME") or "~/.asymviz").expanduser()


# ----------------------------------------------------------------------------- datasets

class DatasetNotOffered(ConfigError):
    """A run asks for a dataset this lab does not offer (ASYMVIZ_DATASETS)."""


def all_datasets() -> list[str]:
    """Every dataset name in the order the Train page lists them: embedded, download, csv."""
    from asymviz.data import list_datasets

    return [info.name for kind in ("embedded", "download", "csv") for info in list_datasets(kind)]


def offered_datasets() -> list[str]:
    """The datasets this lab offers: $ASYMVIZ_DATASETS (comma-separated names; `csv` allows
    uploads), in display order; all of them when unset. ConfigError for an unknown name."""
    known = all_datasets()
    text = os.environ.get("ASYMVIZ_DATASETS", "").strip()
    if not text:
        return known
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        what = f"unknown dataset(s) {', '.join(map(repr, unknown))}" if unknown else "no dataset"
        raise ConfigError(f"ASYMVIZ_DATASETS names {what}; use a comma-separated list of: {', '.join(known)}.")
    return [n for n in known if n in names]


def check_dataset(name: str) -> None:
    """Raise DatasetNotOffered (one sentence) if this lab does not offer dataset `name`."""
    if name not in all_datasets():
        return  # not a dataset at all: the loader says so, listing the valid names
    offered = offered_datasets()
    if name not in offered:
        raise DatasetNotOffered(f"This lab offers only the datasets {', '.join(offered)} "
                                f"(ASYMVIZ_DATASETS); {name!r} is not one of them.")


# ----------------------------------------------------------------------------- passwords

def password_token(password: str) -> str:
    """What a session keeps once it has entered `password` (never the password itself)."""
    return hashlib.sha256(b"asymviz-lab\0" + password.encode()).hexdigest()


def password_matches(entered: str, expected: str) -> bool:
    """Constant-time comparison (of digests, so the length does not leak either)."""
    return hmac.compare_digest(password_token(entered or ""), password_token(expected))


def auth_mode() -> str:
    """'oidc' when ASYMVIZ_AUTH=oidc (Streamlit's st.login), else 'password' (maybe none)."""
    mode = os.environ.get("ASYMVIZ_AUTH", "").strip().lower()
    if mode not in ("", "password", "oidc"):
        raise ConfigError(f"ASYMVIZ_AUTH must be 'oidc' or unset, got {mode!r}.")
    return mode or "password"


# ----------------------------------------------------------------------------- the pool's status

def write_pool_status(runner, path: Path | None = None) -> dict:
    """Record which processes train for this store (called by `serve` about once a second)."""
    status = {"pid": os.getpid(), "host": socket.gethostname(), "workers": runner.workers,
              "executor": getattr(runner, "executor", "local"), "pids": runner.worker_pids(),
              "updated_at": time.time()}
    path = path or home() / POOL_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(status), encoding="utf-8")
    os.replace(tmp, path)  # readers never see half a file
    return status


def clear_pool_status(path: Path | None = None) -> None:
    """Forget the pool (at `serve`'s exit)."""
    try:
        (path or home() / POOL_FILE).unlink()
    except FileNotFoundError:
        pass


def read_pool_status(path: Path | None = None) -> dict | None:
    """The pool status `serve` wrote, with only the worker pids that are alive; None if there
    is no pool on this host (no file, or its serve process is gone)."""
    try:
        status = json.loads((path or home() / POOL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if status.get("host") != socket.gethostname() or not pid_alive(status.get("pid")):
        return None
    status["pids"] = [pid for pid in status.get("pids", []) if pid_alive(pid)]
    return status


def pool_problem(runner, path: Path | None = None) -> tuple[bool, str] | None:
    """What is wrong with the workers that train this server's runs: (fatal, sentence), or None
    when nothing is (or nothing is known: without a pool of its own and without a `serve` pool
    file, a `python -m asymviz worker` may train elsewhere).

    fatal: no process will train a queued run (the `serve` process that owned the pool is gone,
    or this server's own pool stopped), so new runs must be refused. Not fatal: the pool is kept
    but no worker is alive right now (it is starting new ones); queued runs wait."""
    own = runner.pool_alive()
    if own is not None:
        if not own:
            return True, ("The training workers of this server stopped, so no run can train and new runs "
                          "are refused; restart the dashboard.")
        if runner.workers_alive() == 0:
            return False, "No training worker is alive right now; new ones are starting, so queued runs wait."
        return None
    if os.environ.get("ASYMVIZ_EXTERNAL_WORKERS", "").lower() not in ("1", "true", "yes"):
        return None
    try:
        status = json.loads((path or home() / POOL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or status.get("host") != socket.gethostname():
        return None
    if not pid_alive(status.get("pid")):
        return True, (f"The worker pool of this lab (the `python -m asymviz serve` process, pid "
                      f"{status.get('pid')}) is gone, so no run can train and new runs are refused; "
                      "restart the lab (`python -m asymviz serve`, or its container).")
    if status.get("executor", "local") == "local" and status.get("workers") \
            and not any(pid_alive(pid) for pid in status.get("pids") or []):  # (ray: pids of runs in flight)
        return False, "No training worker is alive right now; new ones are starting, so queued runs wait."
    return None


# ----------------------------------------------------------------------------- child processes

_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: killed with the parent
if os.getppid() != parent:  # the parent died before the line above
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def die_with_parent(args: list[str]) -> list[str]:
    """The command that runs `python *args` as a child that is killed (SIGKILL) when this
    process dies, even by SIGKILL: Linux's PR_SET_PDEATHSIG, set in a tiny launcher that then
    execs the real command (the setting survives exec). Call it from a thread that lives as long
    as the process (the main thread): the kernel ties the signal to the creating thread. Elsewhere
    than Linux the command runs without that guard."""
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *args]


def pid_alive(pid) -> bool:
    """Whether process `pid` exists on this host (and is not a zombie)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return process_state(pid) not in ("Z", "X")


# ----------------------------------------------------------------------------- machine numbers

def _status_fields(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def process_state(pid: int) -> str | None:
    """The one-letter state of /proc/PID/status (R, S, Z, ...); None if unknown."""
    state = _status_fields(pid).get("State", "").strip()
    return state[:1] or None


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (VmRSS of /proc/PID/status); None if unknown."""
    text = _status_fields(pid).get("VmRSS", "").split()
    return int(text[0]) / 1024 if text and text[0].isdigit() else None


def memory() -> dict:
    """The machine's memory in MiB: total and available (/proc/meminfo), and the container's
    limit and use where a cgroup sets one (limit None when unlimited or unknown)."""
    out = {"total_mb": None, "available_mb": None, "limit_mb": None, "used_mb": None}
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            info = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)}
        out["total_mb"], out["available_mb"] = info["MemTotal"] / 1024, info["MemAvailable"] / 1024
    except (OSError, ValueError, KeyError):
        pass
    for limit_file, used_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            used = int(Path(used_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: no limit
            out["limit_mb"] = int(limit) / 2**20
        out["used_mb"] = used / 2**20
        break
    return out


def load() -> dict:
    """CPU load: the 1, 5 and 15 minute load averages and the cores this process may use."""
    from asymviz.jobs import cpu_count

    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        one = five = fifteen = None
    return {"load_1": one, "load_5": five, "load_15": fifteen, "cores": cpu_count()}


# ----------------------------------------------------------------------------- old runs

def ended_runs(store, older_than_days: float = 0.0, now: float | None = None) -> list[dict]:
    """Runs that have ended (finished, stopped, failed, diverged, interrupted) more than
    `older_than_days` days ago; 0 means every ended run."""
    from asymviz.store import TERMINAL

    cutoff = (now or time.time()) - max(0.0, older_than_days) * DAY_S
    return [run for run in store.list_runs(status=sorted(TERMINAL))
            if older_than_days <= 0 or (run["finished_at"] or run["created_at"] or 0) < cutoff]


def clear_ended_runs(runner, older_than_days: float = 0.0) -> list[int]:
    """Delete (as an administrator) the runs `ended_runs` lists; their ids."""
    from asymviz.owners import ADMIN
    from asymviz.store import RunNotFound

    deleted = []
    for run in ended_runs(runner.store, older_than_days):
        try:
            runner.delete(run["id"], owner=ADMIN)
        except RunNotFound:  # deleted meanwhile by its owner
            continue
        deleted.append(run["id"])
    return deleted
