"""Where queued runs train: the background runner's executors, and `execute`, which trains one
claimed run the same way in each of them.

    local  the runner's own pool of worker processes on this machine (asymviz.jobs; the default)
    ray    a Ray cluster: RAY_ADDRESS names one to join; unset, a local Ray head is started

    ASYMVIZ_EXECUTOR=ray RAY_ADDRESS=10.0.0.5:6379 python -m asymviz serve
    python -m asymviz experiment --preset full --executor ray

The run store stays the single source of truth on the server's machine whichever executor
trains: runs are queued, claimed, stopped and reconciled there exactly as with the local pool,
and only the training itself moves to the cluster. `RayExecutor` is the server's side: a
dispatcher thread claims queued runs (as many as the cluster has CPUs for, 1 CPU per run by
default; a `device=cuda` run asks for 1 GPU), checks each again against the instance's limits
and dataset allow-list (asymviz.policy), and sends it as a Ray task. The task runs the same
`execute` as a local worker: `fit` with a `StoreCallback` (asymviz.recording), and on the local
pool a `PaceCallback` (asymviz.pace), so a run records the same metrics, masks and grids. A run
whose code raises ends `failed` with one sentence; the worker goes on.

How metrics travel back: through a sink actor (`RunSink`) that the server starts on its own
node. The task's store callback writes into a `SinkWriter` with MetricWriter's interface; every
half second (or 200 records) it sends the batch to the sink and waits for the reply, and the
sink adds the records to a `MetricWriter` of the real store and commits them in one
transaction. Why this way:
  - the SQLite file never leaves the server's machine (no database over a network share), and
    the rows are written by the same writer as a local worker's;
  - the reply to each batch (and to the 0.2 s stop checks) says whether the run should stop,
    so Stop and shutdown need no second channel;
  - a node holds at most one unsent batch: when its worker or the node dies, every earlier
    batch is already committed, so the run ends `interrupted` with those metrics kept;
  - waiting for each reply throttles a fast run to what the store can take.

Failure handling. A task is never retried by Ray (a retry would train the run twice). When its
worker process or node dies, the dispatcher ends the run `interrupted`; a stop request not
obeyed within ASYMVIZ_STOP_GRACE seconds cancels the task (its worker is killed) and the run
ends `stopped`; a shutdown asks the tasks to stop, then cancels them, and their runs end
`interrupted`. A claimed run carries the server's pid, so when the server itself dies (and
Ray ends the tasks it owned) the next start's `Store.reconcile` marks its runs `interrupted`.

Datasets on the nodes: embedded ones are generated there; MNIST and Fashion-MNIST are
downloaded and checksummed into the node's own cache ($ASYMVIZ_HOME of the `ray start`
process); an uploaded CSV travels with the run as bytes (the lab's own upload, read by its id,
at most asymviz.data.MAX_CSV_BYTES) and the node keeps it as its own upload under the same id. The asymviz package itself travels with the
job (Ray's `py_modules`), so every node trains the server's code; the nodes need the same
Python packages (`bash scripts/setup.sh --ray`).

Environment (read by the server):
  ASYMVIZ_EXECUTOR   local (default) | ray
  RAY_ADDRESS        a cluster to join (host:port of its head, or `auto`); unset: a local head
  ASYMVIZ_RAY_CPUS   CPUs each run asks Ray for (default 1)
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from asymviz import pace
from asymviz.errors import ConfigError, error_sentence
from asymviz.config import env_number
from asymviz.lab import HOST, cpu_count
from asymviz.recording import StoreCallback, finish_run
from asymviz.store import RunNotFound, RunStateError, Store
from asymviz.train import TrainConfig, fit

EXECUTORS = ("local", "ray")
POLL_S = 0.15  # an idle worker (or the Ray dispatcher) looks for queued runs this often
SUPERVISE_S = 0.5  # a pool's supervisor checks its workers and stop requests this often
RECONCILE_S = 15.0  # ... and the whole store (stale heartbeats, other pools) this often
INTERRUPTED_BY_SHUTDOWN = "The run was interrupted: its worker pool shut down before it finished."
HEARTBEAT_S = 10.0  # the dispatcher refreshes the heartbeat of runs it has sent this often
SINK_FLUSH_RECORDS = 200  # a node sends its buffered records after this many ...
SINK_FLUSH_S = 0.5  # ... or this many seconds, whichever comes first
SINK_RECORDS = {"step": "add_step", "epoch": "add_epoch", "mask": "add_mask", "artifact": "add_artifact"}
SINK_THREADS = 8  # concurrent calls the sink actor serves (one store connection behind a lock)
LOCAL_OBJECT_STORE = 256 * 2**20  # bytes of shared memory of a local head (runs send little)
INSTALL_RAY = ("The ray executor needs Ray, which is not installed here; install it with "
               "`.venv/bin/pip install -r requirements-ray.txt`, or use the local executor "
               "(unset ASYMVIZ_EXECUTOR, or --executor local).")


def executor_name(value: str | None = None) -> str:
    """'local' or 'ray': value (a --executor flag), else $ASYMVIZ_EXECUTOR, else 'local'."""
    source = "--executor" if value is not None else "ASYMVIZ_EXECUTOR"
    text = os.environ.get("ASYMVIZ_EXECUTOR", "") if value is None else value
    name = text.strip().lower() or "local"
    if name not in EXECUTORS:
        raise ConfigError(f"{source} must be one of {', '.join(EXECUTORS)}; got {text!r}.")
    return name


def require_ray() -> None:
    """ConfigError (one sentence) unless the ray package can be imported."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(INSTALL_RAY)


def cpus_per_run() -> int:
    """$ASYMVIZ_RAY_CPUS (a whole number, at least 1; default 1)."""
    text = os.environ.get("ASYMVIZ_RAY_CPUS", "").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"ASYMVIZ_RAY_CPUS must be a whole number of CPUs, at least 1; got {text!r}.")
    return int(text)


# ----------------------------------------------------------------------------- one run, on either executor

def execute(store: Store, run: dict, interrupt: Callable[[], str | None] | None = None,
            check_every: float | None = None) -> str:
    """Train one claimed (running) run into the store; return its final status ("deleted" if
    it was deleted meanwhile). Errors end the run `failed` with one sentence; none escape but a
    StoreError that kept even that end from being written (the local worker's loop, `jobs.work`,
    writes it later).
    store: a Store, or on a Ray node the sink's stand-in (`SinkStore`)."""
    run_id = run["id"]
    callback = StoreCallback(store, run_id, interrupt=interrupt, check_every=check_every)
    try:
        callbacks, resume = [callback], None
        if isinstance(store, Store):  # pace (pause, step, yield) is the local pool's; a Ray run trains at full speed
            callbacks.append(pace.PaceCallback(store, run, callback._check_stop, lambda: callback.writer.flush()))
            pace.prune_checkpoints(store)
            resume = pace.resume_point(store, run)  # a paused run that gave its worker back goes on
        store.add_event(run_id, "started", f"Started by worker pid {os.getpid()} on {HOST}." if resume is None else
                        f"Resumed at step {resume['step']} by worker pid {os.getpid()} on {HOST}.")
        fit(TrainConfig.from_dict(run["config"]), callbacks, resume=resume)
        return callback.final_status or "finished"
    except pace.Held:  # released, but paused again before its first step: back to the queue
        callback.close()
        pace.requeue(store, run_id)
        return "held"
    except RunNotFound:
        return "deleted"
    except Exception as exc:  # the worker survives whatever the run's code raises
        callback.close()  # keep every metric written before the error
        finish_run(store, run_id, "failed", error=error_sentence(exc))
        return "failed"


# ----------------------------------------------------------------------------- connecting

def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect this process to Ray: to `address` (default $RAY_ADDRESS) if one is given, else
    to a new local head with num_cpus CPUs (default: this machine's cores). The asymviz package
    travels with the job, so the nodes import the server's code."""
    require_ray()
    import ray

    package = str(Path(__file__).resolve().parent)
    address = (address if address is not None else os.environ.get("RAY_ADDRESS", "")).strip()
    options: dict[str, Any] = {"runtime_env": {"py_modules": [package]}, "logging_level": logging.WARNING}
    if address and address != "local":
        _check_reachable(address)
        options["address"] = address
    else:  # "local": a new head even where another cluster runs here (ray.init() alone would join it)
        options.update(address="local", num_cpus=num_cpus or cpu_count(), include_dashboard=False,
                       object_store_memory=LOCAL_OBJECT_STORE)
    if threading.current_thread() is not threading.main_thread():
        _init_in_keeper(options)
        return
    on_term = signal.getsignal(signal.SIGTERM)
    ray.init(**options)
    if on_term not in (None, signal.SIG_DFL):  # ray.init replaces SIGTERM's handler: keep the
        signal.signal(signal.SIGTERM, on_term)  # command's own (serve, worker), else Ray's clean exit


def _init_in_keeper(options: dict) -> None:
    """ray.init from a thread that lives as long as this process. A local head's processes die
    with the thread that started them (Linux's parent-death signal is per thread), and the
    dashboard's first call comes from a script thread that ends after each rerun."""
    import ray

    done, outcome = threading.Event(), {}

    def keeper() -> None:
        try:
            ray.init(**options)
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc
        done.set()
        if "error" not in outcome:
            threading.Event().wait()  # forever: the head's parent thread

    threading.Thread(target=keeper, daemon=True, name="asymviz-ray-head").start()
    done.wait()
    if "error" in outcome:
        raise outcome["error"]


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A head that does not answer is one sentence now (ray.init would end the process after a minute)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"RAY_ADDRESS must be host:port of a Ray head (e.g. 10.0.0.5:6379) or 'auto'; "
                          f"got {address!r}.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"No Ray head answers at RAY_ADDRESS={address} ({exc.strerror or exc}); start one "
                          "there with `ray start --head`, or unset RAY_ADDRESS for a local head.") from None


# ----------------------------------------------------------------------------- the server's side: the sink

class RunSink:
    """The Ray actor on the server's node that writes what the nodes send into the run store.

    Every method returns its result, or the AsymvizError it met (RunNotFound, RunStateError),
    which the node raises again: a returned exception crosses Ray as itself."""

    def __init__(self, store_path: str):
        self.store = Store(store_path)
        self.writers: dict[int, Any] = {}
        self.workers: dict[int, tuple[int, str]] = {}  # run id -> (pid, host) of its Ray worker
        self.shutting_down = False
        self.lock = threading.Lock()

    def hello(self, run_id: int, pid: int, host: str) -> None:
        with self.lock:
            self.workers[run_id] = (pid, host)

    def write(self, run_id: int, records: list, progress: float | None) -> Any:
        """Add a node's batch of records to the run's MetricWriter and commit them (one
        transaction, which also refreshes the heartbeat); then `poll`."""
        try:
            with self.lock:
                writer = self.writers.get(run_id)
                if writer is None:
                    writer = self.writers[run_id] = self.store.writer(run_id, flush_every=1 << 30,
                                                                      flush_seconds=math.inf)
            for kind, args in records:
                getattr(writer, SINK_RECORDS[kind])(*args)
            if progress is not None:
                writer.set_progress(progress)
            writer.flush()
        except RunNotFound as exc:
            self._forget(run_id)
            return exc
        except BaseException:  # not committed: the node keeps the batch and sends it again
            with self.lock:
                self.writers.pop(run_id, None)
            raise
        return self.poll(run_id)

    def poll(self, run_id: int) -> str:
        """'shutdown' (the server is stopping), 'stop' (stop requested, or the run ended or was
        deleted meanwhile) or 'go'."""
        if self.shutting_down:
            return "shutdown"
        return "stop" if self.store.stop_requested(run_id) else "go"

    def set_status(self, run_id: int, status: str, error: str | None, summary: dict | None) -> Any:
        try:
            self.store.set_status(run_id, status, error=error, summary=summary)
        except (RunNotFound, RunStateError) as exc:
            return exc
        finally:
            if status not in ("queued", "running"):
                self._forget(run_id)
        return None

    def add_event(self, run_id: int, kind: str, message: str) -> Any:
        try:
            return self.store.add_event(run_id, kind, message)
        except RunNotFound as exc:
            return exc

    def worker_pids(self, run_ids: list[int], host: str) -> list[int]:
        """Pids of the Ray workers on `host` that train these runs."""
        with self.lock:
            return [pid for run_id, (pid, where) in self.workers.items() if run_id in run_ids and where == host]

    def shut_down(self) -> None:
        self.shutting_down = True

    def _forget(self, run_id: int) -> None:
        with self.lock:
            self.writers.pop(run_id, None)
            self.workers.pop(run_id, None)


# ----------------------------------------------------------------------------- the node's side

class SinkStore:
    """On a node: the part of Store that `execute`, `StoreCallback` and `finish_run` use,
    answered by the server's sink actor."""

    def __init__(self, sink, run_id: int):
        self.sink, self.run_id = sink, run_id
        self._poll = ("go", -math.inf)  # the last answer, and when it came (monotonic)

    def call(self, method: str, *args) -> Any:
        import ray

        result = ray.get(getattr(self.sink, method).remote(*args))
        if isinstance(result, BaseException):
            raise result
        return result

    def writer(self, run_id: int) -> "SinkWriter":
        return SinkWriter(self, run_id)

    def add_event(self, run_id: int, kind: str, message: str) -> None:
        self.call("add_event", run_id, kind, message)

    def set_status(self, run_id: int, status: str, error: str | None = None,
                   summary: dict | None = None) -> None:
        self.call("set_status", run_id, status, error, summary)

    def poll(self, fresh: float = 0.05) -> str:
        """The sink's 'go' / 'stop' / 'shutdown' for this run (one answer serves both checks of a step)."""
        if time.monotonic() - self._poll[1] > fresh:
            self.remember(self.call("poll", self.run_id))
        return self._poll[0]

    def remember(self, answer: str) -> None:
        self._poll = (answer, time.monotonic())

    def stop_requested(self, run_id: int) -> bool:
        return self.poll() == "stop"

    def interrupt(self) -> str | None:
        return INTERRUPTED_BY_SHUTDOWN if self.poll() == "shutdown" else None


class SinkWriter:
    """MetricWriter's interface on a node: buffers records and sends them to the sink in batches
    (SINK_FLUSH_RECORDS records or SINK_FLUSH_S seconds), waiting for each to be committed."""

    def __init__(self, store: SinkStore, run_id: int):
        self.store, self.run_id = store, run_id
        self._records: list[tuple[str, tuple]] = []
        self._progress: float | None = None
        self._last_flush = time.monotonic()

    def add_step(self, record: dict) -> None:
        self._add("step", record)

    def add_epoch(self, record: dict) -> None:
        self._add("epoch", record)

    def add_mask(self, step: int, layer: int, kept_indices, n: int, conn: bytes | None = None) -> None:
        self._add("mask", step, layer, list(kept_indices), n, conn)

    def add_artifact(self, kind: str, data: Any, step: int | None = None, epoch: int | None = None) -> None:
        self._add("artifact", kind, data, step, epoch)

    def set_progress(self, progress: float) -> None:
        self._progress = float(progress)

    def _add(self, kind: str, *args) -> None:
        self._records.append((kind, args))
        if len(self._records) >= SINK_FLUSH_RECORDS or time.monotonic() - self._last_flush >= SINK_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Send what is buffered; it is dropped here only once the sink has committed it."""
        self.store.remember(self.store.call("write", self.run_id, self._records, self._progress))
        self._records = []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()


def train_on_node(run: dict, sink, csv: bytes | None, check_every: float, threads: int) -> str:
    """The Ray task: train one claimed run with the same code as a local worker; its status."""
    import ray
    import torch

    torch.set_num_threads(threads)
    config = dict(run["config"])
    if config.get("device") == "auto" and not ray.get_gpu_ids():
        config["device"] = "cpu"  # a task that asked for no GPU uses none, even on a GPU node
    if csv is not None:  # the run's options name the upload by id; the node keeps its own copy
        _keep_upload(csv, config["dataset_options"]["label"])
    store = SinkStore(sink, run["id"])
    store.call("hello", run["id"], os.getpid(), HOST)
    return execute(store, {**run, "config": config}, interrupt=store.interrupt, check_every=check_every)


def csv_payload(config) -> bytes | None:
    """On the server: the bytes of a CSV run's upload (only ever the lab's own uploads, by the id
    its options name; asymviz.data.read_upload), which travel with the run; None for other
    datasets. DataError with one sentence if the upload is gone."""
    if config.dataset != "csv":
        return None
    from asymviz.data import read_upload

    return read_upload(config.dataset_options.get("upload"))


def _keep_upload(payload: bytes, label: str) -> None:
    """On a node: the CSV's bytes as the node's own upload, under the same id (their SHA-256)."""
    from asymviz.data import store_upload

    store_upload(payload, label)


# ----------------------------------------------------------------------------- the server's side: dispatch

class RayExecutor:
    """Sends the store's queued runs to a Ray cluster and watches them (see the module docstring).

    max_runs: runs in flight at once (None: the cluster's CPUs / ASYMVIZ_RAY_CPUS, re-read as
    nodes come and go). limits: the instance's Limits, checked again before a run is sent."""

    def __init__(self, store: Store, limits, stop_grace: float, stale_after: float,
                 max_runs: int | None = None):
        self.store, self.limits = store, limits
        self.stop_grace, self.stale_after = stop_grace, stale_after
        self.check_every = env_number("ASYMVIZ_STOP_CHECK_S", 0.2)  # the server's setting governs the nodes
        self.cpus = cpus_per_run()
        self._fixed_runs = max_runs
        self.max_runs = max_runs or 1
        self._inflight: dict[int, Any] = {}  # run id -> the ObjectRef of its task
        self._stopping: dict[int, float] = {}  # run id -> when its stop request was first seen
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink = self._task = None
        self._owns_ray = False
        self._gpus = 0.0

    # -- life -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to Ray (unless this process already is), start the sink on this node and the
        dispatcher thread. ConfigError (one sentence) when Ray is missing or unreachable."""
        require_ray()
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not ray.is_initialized():
            init_ray()
            self._owns_ray = True
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        sink_class = ray.remote(num_cpus=0, max_concurrency=SINK_THREADS)(RunSink)
        self._sink = sink_class.options(scheduling_strategy=here).remote(str(self.store.path))
        self._task = ray.remote(max_retries=0, retry_exceptions=False)(train_on_node)  # never trained twice
        self._read_cluster()
        self._halt.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="asymviz-ray-dispatcher")
        self._thread.start()

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop sending; ask running tasks to stop (their runs end `interrupted`), cancel those
        still running after `grace` seconds, and disconnect from Ray (ending a local head)."""
        import ray

        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            inflight, self._inflight = dict(self._inflight), {}
        try:
            if inflight:
                ray.get(self._sink.shut_down.remote(), timeout=30)
                refs = list(inflight.values())
                _, running = ray.wait(refs, num_returns=len(refs), timeout=grace)
                for ref in running:
                    ray.cancel(ref, force=True)
            ray.kill(self._sink)
        except Exception as exc:  # the cluster may be gone already: the runs still end below
            print(f"asymviz ray executor: {type(exc).__name__} while shutting down.", file=sys.stderr)
        finally:
            for run_id in inflight:
                self._end_if_running(run_id, "interrupted", INTERRUPTED_BY_SHUTDOWN)
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False

    def workers_alive(self) -> int:
        """Runs in flight on the cluster."""
        with self._lock:
            return len(self._inflight)

    def worker_pids(self) -> list[int]:
        """Pids of the Ray worker processes on this machine that train runs now."""
        import ray

        with self._lock:
            run_ids = list(self._inflight)
        return ray.get(self._sink.worker_pids.remote(run_ids, HOST)) if run_ids else []

    # -- the dispatcher ---------------------------------------------------------------

    def _loop(self) -> None:
        now = time.monotonic()
        next_stops, next_beat, next_reconcile = now, now + HEARTBEAT_S, now + RECONCILE_S
        while not self._halt.wait(POLL_S):
            try:
                self._settle()
                now = time.monotonic()
                if now >= next_stops:
                    self._enforce_stops()
                    next_stops = now + SUPERVISE_S
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + HEARTBEAT_S
                if now >= next_reconcile:  # other pools' dead workers, stale runs; nodes that joined
                    self.store.reconcile(stale_after=self.stale_after)
                    self._read_cluster()
                    next_reconcile = now + RECONCILE_S
                self._dispatch()
            except Exception as exc:  # the dispatcher outlives a locked store or a Ray hiccup
                print(f"asymviz ray dispatcher: {error_sentence(exc)}", file=sys.stderr, flush=True)

    def _read_cluster(self) -> None:
        import ray

        resources = ray.cluster_resources()
        self._gpus = resources.get("GPU", 0.0)
        if self._fixed_runs is None:
            self.max_runs = max(1, int(resources.get("CPU", 0.0) // self.cpus))

    def _dispatch(self) -> None:
        """Claim queued runs while the cluster has room, and send them; a run that cannot be
        sent ends `failed` with one sentence (never left `running`)."""
        while not self._halt.is_set() and self.workers_alive() < self.max_runs:
            if not self.store.count(("queued",)):
                return
            run = self.store.claim_next(os.getpid(), HOST)
            if run is None:
                return
            try:
                self._send(run)
            except Exception as exc:
                finish_run(self.store, run["id"], "failed", error=error_sentence(exc))

    def _send(self, run: dict) -> None:
        # A stored config is checked again here: nothing over a limit leaves the server.
        config = TrainConfig.from_dict(run["config"]).validated()
        self.limits.check_config(config)
        csv = csv_payload(config)
        gpus = 1 if config.device == "cuda" else 0
        if gpus and self._gpus < 1:
            raise ConfigError("This run asks for device cuda, but the Ray cluster has no GPU; choose "
                              "device cpu or auto, or add a node with a GPU.")
        ref = self._task.options(num_cpus=self.cpus, num_gpus=gpus).remote(
            {**run, "config": config.to_dict()}, self._sink, csv, self.check_every, self.cpus)
        with self._lock:
            self._inflight[run["id"]] = ref

    def _settle(self) -> None:
        """Runs whose task has ended: a task that died leaves its run `interrupted` (metrics kept)."""
        import ray

        with self._lock:
            refs = {ref: run_id for run_id, ref in self._inflight.items()}
        if not refs:
            return
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            run_id = refs[ref]
            status, error = _outcome(ref)
            if status is not None:
                self._end_if_running(run_id, status, error)
            with self._lock:
                self._inflight.pop(run_id, None)
            self._stopping.pop(run_id, None)

    def _enforce_stops(self) -> None:
        """Cancel the task of a run still running stop_grace s after its stop request (ends `stopped`)."""
        import ray

        with self._lock:
            mine = dict(self._inflight)
        now = time.monotonic()
        flagged = [run["id"] for run in self.store.list_runs(status="running")
                   if run["stop_requested"] and run["id"] in mine]
        self._stopping = {run_id: self._stopping.get(run_id, now) for run_id in flagged}
        for run_id, since in list(self._stopping.items()):
            if now - since < self.stop_grace:
                continue
            if self.store.get_run(run_id)["status"] != "running":  # it stopped by itself meanwhile
                continue
            ray.cancel(mine[run_id], force=True)  # kills the worker process
            with self._lock:
                self._inflight.pop(run_id, None)
            self._stopping.pop(run_id)
            if finish_run(self.store, run_id, "stopped"):
                self.store.add_event(run_id, "killed", f"The run did not stop within {self.stop_grace:g} s of "
                                     "the stop request (ASYMVIZ_STOP_GRACE), so its Ray task was cancelled.")

    def _end_if_running(self, run_id: int, status: str, error: str | None) -> None:
        """Give a run whose task has gone its final status, unless the task set one itself."""
        try:
            if self.store.get_run(run_id)["status"] == "running":
                finish_run(self.store, run_id, status, error=error)
        except RunNotFound:
            pass

    def _heartbeat(self) -> None:
        """Runs in flight are alive while this server is (a task may wait for a node, or download)."""
        with self._lock:
            run_ids = list(self._inflight)
        for run_id in run_ids:
            try:
                self.store.heartbeat(run_id)
            except RunNotFound:
                pass


def _outcome(ref) -> tuple[str | None, str | None]:
    """(status, error) to give a run whose task ended; (None, None) when the task set its own."""
    import ray
    from ray import exceptions as rex

    try:
        ray.get(ref)
        return "interrupted", "The run was interrupted: its Ray task ended without a final status."
    except rex.TaskCancelledError:
        return None, None  # cancelled by a stop or a shutdown, which set the status
    except rex.NodeDiedError:
        return "interrupted", "The run was interrupted: the Ray node it trained on went away."
    except rex.OutOfMemoryError:
        return "interrupted", "The run was interrupted: Ray killed its worker because the node ran out of memory."
    except (rex.WorkerCrashedError, rex.ObjectLostError):
        return "interrupted", "The run was interrupted: its Ray worker process died."
    except rex.RayTaskError as exc:  # the task's own code raised past `execute` (e.g. the sink is gone)
        return "failed", error_sentence(exc.cause if isinstance(exc.cause, BaseException) else exc)
    except rex.RayError as exc:
        return "interrupted", f"The run was interrupted: Ray reported {type(exc).__name__}."
