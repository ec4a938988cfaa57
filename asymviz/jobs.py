"""The background runner: runs queued in the store, trained by a pool of worker processes.

    runner = Runner()                        # the default store ($ASYMVIZ_HOME/asymviz.db)
    runner.start()                           # worker processes: one per core, or $ASYMVIZ_WORKERS
    run_id = runner.submit(TrainConfig(dataset="moons", epochs=5), owner="ana")
    runner.wait(run_id)["status"]            # 'finished'; metrics are in runner.store
    runner.shutdown()                        # running runs end `interrupted`, never `running`

The interface (submit / stop / status) is the seam of the executors (DESIGN.md §3): this
pool is the `local` one; with ASYMVIZ_EXECUTOR=ray the runner sends the same queue to a Ray
cluster instead (asymviz.executors), and the store stays where it is. Nothing here knows
about Streamlit. Who runs the workers: by default the process that
needs them (`get_runner()`: the dashboard server starts a pool on first use and it stops with
the server); `python -m asymviz worker` runs a standalone pool, and a server started with
ASYMVIZ_EXTERNAL_WORKERS=1 then starts none. Several pools may share one store: a worker
claims a queued run atomically (`Store.claim_next`), so no run is trained twice.

A submit is checked against the lab's policy (asymviz.policy: `Limits`, the datasets offered);
acting on a run takes its owner or owners.ADMIN (`NotOwner` otherwise). A worker trains each
run it claims with `executors.execute`: `fit` with a `StoreCallback` (asymviz.recording: metrics,
masks, decision grids, stop checks, the final status) and a `PaceCallback` (asymviz.pace: the
run's lecture pace, giving the worker back with a checkpoint when a run stays paused).

Stop is cooperative (a worker looks at most every 0.2 s) with a hard kill after a grace period.
Crash safety: a dead worker's run ends `interrupted` with its metrics kept (the pool's
supervisor, or `Store.reconcile` at the next start); a run whose code raises ends `failed`
with one sentence and the worker takes the next run. A store that fails (read-only, immutable,
deleted, full disk) never ends a worker or the supervisor: each logs it once with what to do
(`lab.Trouble`), retries with back-off, and a run whose end could not be written is ended `failed`
with the store's sentence as soon as the store works again. A worker ends its run and exits
when its parent process is gone (it checks with every stop check and every idle poll).
`clear_ended_runs` deletes the runs that ended long ago (the Instructor page).

Environment:
  ASYMVIZ_EXECUTOR            local (this pool; default) | ray (see asymviz.executors)
  ASYMVIZ_WORKERS             pool size (default: one per core; 0 = no pool)
  ASYMVIZ_EXTERNAL_WORKERS=1  `Runner.start()` starts no pool (a `python -m asymviz worker` does)
  ASYMVIZ_STOP_GRACE          seconds after a stop request before the worker is killed (10)
  ASYMVIZ_STALE_AFTER         a running run without heartbeat this long is interrupted (120)
  ASYMVIZ_STOP_CHECK_S        how often a worker checks for a stop request (0.2; asymviz.recording)
  ASYMVIZ_WORKER_THREADS      torch threads per worker (default: cores / workers)
  ASYMVIZ_PAUSE_YIELD_S       a paused run gives its worker back after this many seconds (60)
  ASYMVIZ_MAX_PARAMS, ASYMVIZ_MAX_EPOCHS, ASYMVIZ_MAX_RUNS_PER_OWNER, ASYMVIZ_MAX_QUEUE
                              limits of a shared instance (asymviz.policy.Limits; 0 = no limit)
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from asymviz import executors
from asymviz import store as store_module
from asymviz.errors import ConfigError, error_sentence
from asymviz.executors import INTERRUPTED_BY_SHUTDOWN, POLL_S, RECONCILE_S, SUPERVISE_S, execute
from asymviz.config import env_int, env_number
from asymviz.lab import HOST, MAX_BACKOFF_S, Trouble, cpu_count, external_workers, log_fatal_signals, pid_alive
from asymviz.owners import ADMIN, Administrator, NotOwner
from asymviz.policy import LimitExceeded, Limits  # (LimitExceeded: what `submit` raises, importable here)
from asymviz.recording import finish_run
from asymviz.store import TERMINAL, RunNotFound, Store, StoreError, store_advice
from asymviz.train import TrainConfig, fit, resolve_device

EARLY_DEATH_S = 20.0  # a worker that dies younger than this is replaced only after a backoff,
# doubling up to lab.MAX_BACKOFF_S (a worker that cannot start must not spin)
INTERRUPTED_BY_PARENT = "The run was interrupted: the process that owned its worker exited."
DAY_S = 86_400.0  # (clear_ended_runs counts in days)


# ----------------------------------------------------------------------------- worker process

_TERMINATED = threading.Event()  # set by SIGTERM inside a worker process


def _worker_main(path: str, threads: int, parent_pid: int) -> None:
    """A worker process: claim queued runs one at a time and train them until told to exit
    (SIGTERM) or until its parent process is gone."""
    log_fatal_signals()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the pool decides
    signal.signal(signal.SIGTERM, lambda *_: _TERMINATED.set())
    torch.set_num_threads(threads)
    try:
        store = Store(path)
    except StoreError as exc:  # the supervisor logs the exit and starts another after a back-off
        print(f"asymviz worker pid {os.getpid()}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    _warm_up()

    def interrupt() -> str | None:
        if _TERMINATED.is_set():
            return INTERRUPTED_BY_SHUTDOWN
        if os.getppid() != parent_pid:
            return INTERRUPTED_BY_PARENT
        return None

    work(store, interrupt, _TERMINATED)
    store.close()


def work(store: Store, interrupt: Callable[[], str | None], wake: threading.Event,
         trouble: Trouble | None = None) -> None:
    """A worker's loop: claim the oldest queued run, train it, repeat, until interrupt() gives a
    reason (idle, it looks every POLL_S; `wake` set ends a wait early).

    A store error never ends the loop: it is logged once (`trouble`) and retried with back-off.
    A run whose end could not be written (the store failed while it trained) is ended `failed`
    with the store's sentence before any other run is claimed, so it does not stay `running`."""
    trouble = trouble or Trouble(f"worker pid {os.getpid()}")
    unended: tuple[int, str] | None = None  # (run id, sentence) of a run whose end is not written
    while interrupt() is None:
        try:
            if unended is not None:
                finish_run(store, unended[0], "failed", error=unended[1])
                unended = None
            run = store.claim_next(os.getpid(), HOST) if store.count(("queued",)) else None
        except StoreError as exc:
            wake.wait(trouble.failed(exc, store_advice(store.path, exc)))
            continue
        trouble.recovered()
        if run is None:
            wake.wait(POLL_S)
            continue
        try:
            execute(store, run, interrupt)
        except StoreError as exc:
            unended = (run["id"], error_sentence(exc))
            wake.wait(trouble.failed(exc, store_advice(store.path, exc)))


def _warm_up() -> None:
    """Pay the one-time costs (imports, first backward, optimizer kernels) before the first run,
    so the first run's first point reaches the dashboard as fast as the next ones."""
    try:
        import asymviz.data  # noqa: F401  (scikit-learn: a second or two)
        from asymviz.fast import kernels

        kernels.library()  # built (a fraction of a second) or loaded before any run
        fit(TrainConfig(dataset="xor", dataset_options={"n_samples": 64}, hidden=[8], epochs=1, batch_size=32))
    except Exception:  # a warm-up must never keep a worker from working
        pass


class _WorkerProcess:
    """One worker: a fresh `python` running `_worker_main` (a plain subprocess, not
    multiprocessing's spawn, which would re-run the parent's main script — under
    `streamlit run`, whichever page script is `__main__` at that moment — in every worker)."""

    _CODE = "import sys; from asymviz.jobs import _worker_main; _worker_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))"

    def __init__(self, path: str, threads: int) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # so `import asymviz` works from any cwd
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.popen = subprocess.Popen([sys.executable, "-c", self._CODE, path, str(threads), str(os.getpid())],
                                      env=env, stdin=subprocess.DEVNULL)
        self.pid = self.popen.pid

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self) -> None:
        if self.is_alive():
            self.popen.terminate()  # SIGTERM: interrupt the run at its next check, then exit

    def kill(self) -> None:
        if self.is_alive():
            self.popen.kill()

    @property
    def exitcode(self) -> int | None:
        return self.popen.returncode


# ----------------------------------------------------------------------------- runner

class Runner:
    """Submit, stop and watch runs; `start()` adds a pool of worker processes to train them.

    store: a Store, a path, or None for `default_path()`. workers: pool size (None:
    $ASYMVIZ_WORKERS or one per core; 0: no pool). limits: None for `Limits.from_env()`.
    executor: where runs train (None: $ASYMVIZ_EXECUTOR, default "local": this runner's pool;
    "ray": a Ray cluster, see asymviz.executors, where `workers` caps the runs in flight and
    None means as many as the cluster has CPUs for)."""

    def __init__(self, store: Store | str | Path | None = None, workers: int | None = None,
                 limits: Limits | None = None, executor: str | None = None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.workers = env_int("ASYMVIZ_WORKERS", cpu_count()) if workers is None else int(workers)
        if self.workers < 0:
            raise ConfigError(f"The number of workers must be 0 or more, got {self.workers}.")
        self.executor = executors.executor_name(executor)
        if self.executor == "ray" and self.workers:
            executors.require_ray()
        self._auto_workers = workers is None and not os.environ.get("ASYMVIZ_WORKERS", "").strip()
        self._remote: executors.RayExecutor | None = None  # the ray executor while started
        self.limits = limits if limits is not None else Limits.from_env()
        self.stop_grace = env_number("ASYMVIZ_STOP_GRACE", 10.0)
        self.stale_after = env_number("ASYMVIZ_STALE_AFTER", 120.0)
        self._lock = threading.RLock()
        self._procs: list[_WorkerProcess] = []
        self._halt = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._stopping: dict[int, float] = {}  # run id -> when its stop request was first seen
        self._born: dict[int, float] = {}  # worker pid -> when it was started
        self._backoff = 0.0
        self._next_spawn = 0.0  # no replacement before this time (monotonic)
        self._started = False
        self._atexit = False

    # -- the pool ---------------------------------------------------------------------

    def start(self, force: bool = False) -> None:
        """Reconcile orphaned runs, then start the worker pool (idempotent). No pool when
        ASYMVIZ_EXTERNAL_WORKERS=1 (unless force) or workers == 0."""
        with self._lock:
            if self._started:
                return
            self.store.reconcile(stale_after=self.stale_after)
            self._started = True
            external = external_workers()
            if (external and not force) or self.workers == 0:
                return
            if self.store.path == ":memory:":
                self._started = False
                raise ConfigError("Worker processes cannot share an in-memory store; give the "
                                  "runner a store file.")
            self._halt.clear()
            if self.executor == "ray":
                self._start_remote()
            else:
                for _ in range(self.workers):
                    self._spawn()
                self._supervisor = threading.Thread(target=self._supervise_loop, daemon=True,
                                                    name="asymviz-supervisor")
                self._supervisor.start()
            if not self._atexit:  # the pool stops with this process
                atexit.register(self.shutdown)
                self._atexit = True

    def _start_remote(self) -> None:
        remote = executors.RayExecutor(self.store, self.limits, self.stop_grace, self.stale_after,
                                       max_runs=None if self._auto_workers else self.workers)
        try:
            remote.start()
        except BaseException:
            self._started = False
            raise
        self._remote = remote
        self.workers = remote.max_runs

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop the pool: workers interrupt their runs at the next check; any still alive after
        `grace` seconds is killed. Runs they held end `interrupted`, never left `running`."""
        self._halt.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=30)
        self._supervisor = None
        with self._lock:
            if not self._started:
                return
            self._started = False
            if self._remote is not None:
                remote, self._remote = self._remote, None
                remote.shutdown(grace)
                return
            procs, self._procs = self._procs, []
            if not procs:
                return
            for proc in procs:
                proc.terminate()
            deadline = time.monotonic() + grace
            for proc in procs:
                proc.join(max(0.0, deadline - time.monotonic()))
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
            try:
                self._interrupt_runs_of({proc.pid for proc in procs}, INTERRUPTED_BY_SHUTDOWN)
            except StoreError as exc:  # the next start's reconcile ends them `interrupted`
                print(f"asymviz: the runs of the stopped workers could not be marked interrupted "
                      f"(the next start does it): {exc}", file=sys.stderr, flush=True)

    def workers_alive(self) -> int:
        """How many of this runner's worker processes are alive now (ray: runs in flight)."""
        with self._lock:
            if self._remote is not None:
                return self._remote.workers_alive()
            return sum(proc.is_alive() for proc in self._procs)

    def pool_alive(self) -> bool | None:
        """Whether this runner's own worker pool is being kept (its supervisor thread runs);
        None when it has none (ASYMVIZ_EXTERNAL_WORKERS=1, 0 workers, or not started)."""
        with self._lock:
            supervisor = self._supervisor
            if supervisor is None:
                return False if self._procs else None
            return supervisor.is_alive()

    def worker_pids(self) -> list[int]:
        """Process ids of this runner's live workers (ray: of its workers on this machine
        that train runs now)."""
        with self._lock:
            if self._remote is not None:
                return self._remote.worker_pids()
            return [proc.pid for proc in self._procs if proc.is_alive()]

    def _spawn(self) -> None:
        threads = env_int("ASYMVIZ_WORKER_THREADS", 0) or max(1, cpu_count() // max(1, self.workers))
        proc = _WorkerProcess(str(self.store.path), threads)
        self._procs.append(proc)
        self._born[proc.pid] = time.monotonic()

    def _supervise_loop(self) -> None:
        trouble = Trouble("supervisor")
        next_reconcile = time.monotonic() + RECONCILE_S
        pause = SUPERVISE_S
        while not self._halt.wait(pause):
            try:
                self._supervise()
                if time.monotonic() >= next_reconcile:  # other pools' dead workers, stale runs
                    self.store.reconcile(stale_after=self.stale_after)
                    next_reconcile = time.monotonic() + RECONCILE_S
                trouble.recovered()
                pause = SUPERVISE_S
            except Exception as exc:  # the supervisor outlives a failing store or a failed spawn
                pause = max(SUPERVISE_S, trouble.failed(exc, store_advice(self.store.path, exc)))

    def _supervise(self) -> None:
        """Replace dead workers (their runs end interrupted) and hard-stop runs past grace."""
        with self._lock:
            if self._halt.is_set():
                return
            dead = [proc for proc in self._procs if not proc.is_alive()]
            if dead:
                self._procs = [proc for proc in self._procs if proc not in dead]
                self._plan_replacements(dead)
            while len(self._procs) < self.workers and time.monotonic() >= self._next_spawn:
                self._spawn()
            if dead:  # (a failing store raises here; the periodic reconcile catches up later)
                self._reconcile_dead({proc.pid for proc in dead})
            self._enforce_stops()

    def _plan_replacements(self, dead: list) -> None:
        """Log dead workers; replace them at once unless they died young (then back off)."""
        now = time.monotonic()
        young = [p for p in dead if now - self._born.pop(p.pid, now) < EARLY_DEATH_S]
        self._backoff = min(MAX_BACKOFF_S, max(1.0, 2 * self._backoff)) if young else 0.0
        self._next_spawn = now + self._backoff
        for proc in dead:
            print(f"asymviz: worker pid {proc.pid} exited with code {proc.exitcode}; a new one "
                  f"starts in {self._backoff:g} s.", file=sys.stderr, flush=True)

    def _reconcile_dead(self, pids: set[int]) -> list[int]:
        def alive(pid: int, host: str) -> bool:
            return not (pid in pids and host == HOST) and pid_alive(pid, host)

        return self.store.reconcile(is_alive=alive, stale_after=None)

    def _enforce_stops(self) -> None:
        """Kill the worker of a run that is still running stop_grace s after its stop request."""
        now = time.monotonic()
        mine = {proc.pid: proc for proc in self._procs}
        flagged = {run["id"]: run for run in self.store.list_runs(status="running")
                   if run["stop_requested"] and run["worker_host"] == HOST
                   and run["worker_pid"] in mine}
        self._stopping = {run_id: self._stopping.get(run_id, now) for run_id in flagged}
        for run_id, since in list(self._stopping.items()):
            if now - since >= self.stop_grace:
                self._kill_for_stop(run_id, mine[flagged[run_id]["worker_pid"]])

    def _kill_for_stop(self, run_id: int, proc) -> None:
        run = self.store.get_run(run_id)  # again: it may have stopped by itself meanwhile
        if run["status"] != "running" or run["worker_pid"] != proc.pid:
            return
        proc.kill()
        proc.join(5)
        self._procs.remove(proc)
        self._born.pop(proc.pid, None)
        self._stopping.pop(run_id, None)
        sentence = (f"The run did not stop within {self.stop_grace:g} s of the stop request "
                    "(ASYMVIZ_STOP_GRACE), so its worker process was killed.")
        if finish_run(self.store, run_id, "stopped"):
            self.store.add_event(run_id, "killed", sentence)
        self._reconcile_dead({proc.pid})

    def _interrupt_runs_of(self, pids: set[int], sentence: str) -> None:
        for run in self.store.list_runs(status="running"):
            if run["worker_host"] == HOST and run["worker_pid"] in pids:
                finish_run(self.store, run["id"], "interrupted", error=sentence)

    # -- runs -------------------------------------------------------------------------

    def submit(self, config: TrainConfig | dict, owner: str = "cli", tag: str | None = None,
               held: bool = False) -> int:
        """Validate (ConfigError), check the limits (LimitExceeded) and queue; the run id.
        held: no worker takes it until it is released (asymviz.pace.release)."""
        if isinstance(config, dict):
            config = TrainConfig.from_dict(config)
        elif not isinstance(config, TrainConfig):
            raise ConfigError(f"A run config must be a TrainConfig or a dict, got "
                              f"{type(config).__name__}.")
        if not isinstance(owner, str) or not owner.strip():
            raise ConfigError(f"A run's owner must be a non-empty name, got {owner!r}.")
        config = config.validated()
        resolve_device(config.device)  # `cuda` without a GPU here: refused as `train` refuses it
        self.limits.check_config(config)
        # Counting and inserting in one write transaction: concurrent submitters, in this
        # process or others (the dashboard, the CLI), cannot both pass a queue limit.
        run_id = self.store.create_run(config.to_dict(), owner=owner, tag=tag, held=held,
                                       admit=lambda active, mine: self.limits.admit(active, mine, owner))
        self.store.add_event(run_id, "queued", f"Queued by {owner}.")
        return run_id

    def stop(self, run_id: int, owner: str | Administrator) -> None:
        """Ask a run to stop, as its owner or as owners.ADMIN (the CLI, the Instructor page).
        A queued run stops at once, a running one at its worker's next step (killed after
        ASYMVIZ_STOP_GRACE s)."""
        run = self._owned(run_id, owner)
        if run["status"] in TERMINAL:
            return
        self.store.request_stop(run_id)
        self.store.add_event(run_id, "stop_requested", f"Stop requested by {owner}.")

    def delete(self, run_id: int, owner: str | Administrator) -> None:
        """Delete a run and everything recorded for it, as its owner or as owners.ADMIN; a
        running run must be stopped first."""
        self._owned(run_id, owner)
        self.store.delete_run(run_id)

    def status(self, run_id: int) -> dict:
        """The run as the store has it (`store.get_run`)."""
        return self.store.get_run(run_id)

    def wait(self, run_id: int, timeout: float | None = None, poll: float = 0.2) -> dict:
        """Block until the run ends; its row. TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.store.get_run(run_id)
            if run["status"] in TERMINAL:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"Run {run_id} is still {run['status']} after {timeout:g} s.")
            time.sleep(poll)

    def _owned(self, run_id: int, owner: str | Administrator) -> dict:
        """The run, if `owner` may act on it: ADMIN, or the name it belongs to (a page with no
        signed-in name passes None, which owns nothing)."""
        run = self.store.get_run(run_id)
        if owner is not ADMIN and not (isinstance(owner, str) and owner and run["owner"] == owner):
            raise NotOwner(f"Run {run_id} belongs to {run['owner']}; only its owner can stop "
                           "or delete it.")
        return run


_RUNNERS: dict[str, Runner] = {}
_RUNNERS_LOCK = threading.Lock()


def get_runner(path: str | Path | None = None) -> Runner:
    """The process-wide started Runner of a store (default: `default_path()`)."""
    key = str(Path(path or store_module.default_path()).expanduser().resolve())
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = Runner(key)
            _RUNNERS[key] = runner
        runner.start()
        return runner


# ----------------------------------------------------------------------------- old runs

def ended_runs(store: Store, older_than_days: float = 0.0, now: float | None = None) -> list[dict]:
    """Runs that have ended (finished, stopped, failed, diverged, interrupted) more than
    `older_than_days` days ago; 0 means every ended run."""
    cutoff = (now or time.time()) - max(0.0, older_than_days) * DAY_S
    return [run for run in store.list_runs(status=sorted(TERMINAL))
            if older_than_days <= 0 or (run["finished_at"] or run["created_at"] or 0) < cutoff]


def clear_ended_runs(runner: Runner, older_than_days: float = 0.0) -> list[int]:
    """Delete (as an administrator) the runs `ended_runs` lists; their ids."""
    deleted = []
    for run in ended_runs(runner.store, older_than_days):
        try:
            runner.delete(run["id"], owner=ADMIN)
        except RunNotFound:  # deleted meanwhile by its owner
            continue
        deleted.append(run["id"])
    return deleted
