"""Hosting asymviz: the machine and the processes a lab runs on. No Streamlit here, and no other
asymviz module but `errors`: the store, the Runner, the executors, `serve` (cli.py), the
dashboard (ui_common.py, pages/5_Instructor.py) and scripts/measure_lab.py all build on it.

    home()                    $ASYMVIZ_HOME (default ~/.asymviz): the store, caches, uploads, pool file
    cpu_count()               the cores this process may use, capped by a container's CPU quota
    pid_alive(pid, host)      whether a process runs (a zombie does not)
    read_pool_status()        which processes train for this lab (the pool status file)
    rss_mb(pid), memory(), load()   the numbers the Instructor page shows
    die_with_parent(args)     a child command that cannot outlive this process
    Trouble("worker")         a long-lived loop's failure, logged once, retried with back-off

The pool status file ($ASYMVIZ_HOME/workers.json) is how a server started by `serve` (whose
Streamlit process runs no workers: ASYMVIZ_EXTERNAL_WORKERS=1) learns which processes train,
and `pool_problem` whether any will (the dashboard says so on every page and refuses new runs
when none will). `die_with_parent` is how `serve` keeps its Streamlit child from outliving it.
"""

from __future__ import annotations

import faulthandler
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

from asymviz.errors import error_sentence
from asymviz.environ import env_flag

HOST = socket.gethostname()
POOL_FILE = "workers.json"  # in $ASYMVIZ_HOME, next to asymviz.db
CGROUP_ROOT = "/sys/fs/cgroup"
MAX_BACKOFF_S = 30.0  # a failing loop (or a worker that cannot start) retries at least this often


def home() -> Path:
    """$ASYMVIZ_HOME (default ~/.asymviz): the store, the dataset cache and uploads."""
    return Path(os.environ.get("ASYMVIZ_HOME") or "~/.asymviz").expanduser()


# ----------------------------------------------------------------------------- cores

def cpu_quota(root: str | None = None) -> float | None:
    """The CPUs a container's CFS quota allows (`docker run --cpus N`: N), or None without one.

    cgroup v2: `cpu.max` ("QUOTA PERIOD" or "max PERIOD"); v1: `cpu/cpu.cfs_quota_us` and
    `cpu/cpu.cfs_period_us` (quota -1: none). Read at the cgroup root, which is the container's own.
    """
    base = Path(root or CGROUP_ROOT)
    try:
        quota, period = (base / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((base / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def cpu_count(root: str | None = None) -> int:
    """The cores this process may use: its affinity mask, capped by a container's CPU quota
    (rounded up), so `--cpus 4` on a 64-core host means 4 worker processes, not 64."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cpu_quota(root)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


# ----------------------------------------------------------------------------- the pool's status

def write_pool_status(runner, path: Path | None = None) -> dict:
    """Record which processes train for this store (called by `serve` about once a second)."""
    status = {"pid": os.getpid(), "host": HOST, "workers": runner.workers,
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
    if status.get("host") != HOST or not pid_alive(status.get("pid")):
        return None
    status["pids"] = [pid for pid in status.get("pids", []) if pid_alive(pid)]
    return status


def external_workers() -> bool:
    """$ASYMVIZ_EXTERNAL_WORKERS (yes or no): a `python -m asymviz worker` pool trains, so a Runner
    in this process starts none of its own."""
    return env_flag("ASYMVIZ_EXTERNAL_WORKERS")


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
    if not external_workers():
        return None
    try:
        status = json.loads((path or home() / POOL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or status.get("host") != HOST:
        return None
    if not pid_alive(status.get("pid")):
        return True, (f"The worker pool of this lab (the `python -m asymviz serve` process, pid "
                      f"{status.get('pid')}) is gone, so no run can train and new runs are refused; "
                      "restart the lab (`python -m asymviz serve`, or its container).")
    if status.get("executor", "local") == "local" and status.get("workers") \
            and not any(pid_alive(pid) for pid in status.get("pids") or []):  # (ray: pids of runs in flight)
        return False, "No training worker is alive right now; new ones are starting, so queued runs wait."
    return None


# ----------------------------------------------------------------------------- processes

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


def pid_alive(pid, host: str | None = None) -> bool:
    """Whether process `pid` runs on `host` (None or "": this host). A zombie (exited, not yet
    reaped by its parent) does not run; a process on another host is assumed to run, since
    this one cannot see it."""
    if host and host != HOST:
        return True
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return process_state(pid) not in ("Z", "X")


def log_fatal_signals() -> None:
    """Let a fatal signal (SIGBUS, SIGSEGV, ...) leave a Python traceback on stderr, so a process
    of the lab never ends without a line in its log (a no-op where stderr is not a file)."""
    try:
        faulthandler.enable()
    except (OSError, ValueError, AttributeError):
        pass


class Trouble:
    """A problem a long-lived loop keeps meeting (a store that cannot be written, a status file
    that cannot be replaced): logged once with what to do when it starts (again only if its
    sentence changes) and once when it is over; `failed` says how long to wait before the next
    try, doubling from `first` up to `cap` seconds.

        trouble = Trouble("supervisor")
        try: ...; trouble.recovered()
        except StoreError as exc: time.sleep(trouble.failed(exc, store_advice(path, exc)))
    """

    def __init__(self, who: str, first: float = 1.0, cap: float = MAX_BACKOFF_S):
        self.who, self.first, self.cap = who, first, cap
        self.failures = 0
        self.delay = 0.0
        self._since = 0.0
        self._said: str | None = None

    def failed(self, exc: BaseException, advice: str | None = None) -> float:
        """Count one failure (log it if it is new); the seconds to wait before trying again."""
        sentence = error_sentence(exc)
        if not self.failures:
            self._since = time.monotonic()
        self.failures += 1
        self.delay = min(self.cap, 2 * self.delay if self.delay else self.first)
        if sentence != self._said:
            self._said = sentence
            fix = f" To fix it, {advice}." if advice and advice not in sentence else ""
            self._log(f"{sentence}{fix} Retrying with back-off (up to every {self.cap:g} s); logged again "
                      "only if this changes, and when it works again.")
        return self.delay

    def recovered(self) -> None:
        """The last try worked: say so once if it had been failing."""
        if self.failures:
            self._log(f"works again, after {self.failures} failed tries in "
                      f"{time.monotonic() - self._since:.0f} s.")
            self.failures, self.delay, self._said = 0, 0.0, None

    def _log(self, text: str) -> None:
        try:
            print(f"asymviz {self.who}: {text}", file=sys.stderr, flush=True)
        except OSError:  # the log itself cannot be written (it may live on the same failing disk)
            pass


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
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        one = five = fifteen = None
    return {"load_1": one, "load_5": five, "load_15": fifteen, "cores": cpu_count()}
