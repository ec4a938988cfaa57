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

A worker trains with a `StoreCallback`, which streams into the store through its batched
writer: every step and epoch record, heartbeat and progress; the kept neuron set of each
asymmetric layer at sampled steps (every step up to step 200, then a stride that keeps a run
under about 1000 records per layer, and fewer where writing them would take over 3 % of a fast
run's time; read back with `store.masks` / `store.layer_selection_counts`), with a
connection-mask snapshot every 50th record for excessive / refined (`store.unpack_mask`; a
layer wider than 512 on a side is subsampled with a stride, so the snapshot's own shape says
which rows and columns it shows); and for 2-D datasets a decision grid at epoch ends (the
first and the last epoch always; between them at most 100 per run, and fewer where grids
would take over 3 % of a fast run's time), stored as the artifact kind GRID_KIND and read with
`store.artifacts(run_id, GRID_KIND)`; its data is {"resolution", "x" and "y" (the axes, res
values each), "cls" (res x res class indices, rows follow y), "conf" (res x res max
probability, 3 decimals)}. Training points are not stored: the figure reloads the dataset.

Next to it a `PaceCallback` (asymviz.pace) keeps the run's lecture pace: its speed, Pause and
Step, giving the worker back (with a checkpoint) when a run stays paused, and for small networks
the latest network snapshot.

Stop is cooperative (a worker looks at most every 0.2 s) with a hard kill after a grace period.
Crash safety: a dead worker's run ends `interrupted` with its metrics kept (the pool's
supervisor, or `Store.reconcile` at the next start); a run whose code raises ends `failed`
with one sentence and the worker takes the next run. A store that fails (read-only, immutable,
deleted, full disk) never ends a worker or the supervisor: each logs it once with what to do
(`Trouble`), retries with back-off, and a run whose end could not be written is ended `failed`
with the store's sentence as soon as the store works again. A worker ends its run and exits
when its parent process is gone (it checks with every stop check and every idle poll).

Environment:
  ASYMVIZ_EXECUTOR            local (this pool; default) | ray (see asymviz.executors)
  ASYMVIZ_WORKERS             pool size (default: one per core; 0 = no pool)
  ASYMVIZ_EXTERNAL_WORKERS=1  `Runner.start()` starts no pool (a `python -m asymviz worker` does)
  ASYMVIZ_STOP_GRACE          seconds after a stop request before the worker is killed (10)
  ASYMVIZ_STALE_AFTER         a running run without heartbeat this long is interrupted (120)
  ASYMVIZ_STOP_CHECK_S        how often a worker checks for a stop request (0.2)
  ASYMVIZ_WORKER_THREADS      torch threads per worker (default: cores / workers)
  ASYMVIZ_PAUSE_YIELD_S       a paused run gives its worker back after this many seconds (60)
  ASYMVIZ_MAX_PARAMS, ASYMVIZ_MAX_EPOCHS, ASYMVIZ_MAX_RUNS_PER_OWNER, ASYMVIZ_MAX_QUEUE
                              limits of a shared instance (see Limits; 0 = no limit)
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from asymviz import executors
from asymviz import store as store_module
from asymviz.errors import AsymvizError, ConfigError
from asymviz.model import MLP, count_parameters
from asymviz.owners import ADMIN, Administrator
from asymviz.sparse import MaskRecord
from asymviz.store import (TERMINAL, RunNotFound, RunStateError, Store, StoreError, pack_mask,
                           store_advice)
from asymviz.strategies import get_strategy
from asymviz.train import Callback, FitContext, TrainConfig, fit, resolve_device

HOST = socket.gethostname()
POLL_S = 0.15  # an idle worker looks for queued runs this often
SUPERVISE_S = 0.5  # the pool's supervisor checks its workers and stop requests this often
RECONCILE_S = 15.0  # ... and the whole store (stale heartbeats, other pools) this often
EARLY_DEATH_S = 20.0  # a worker that dies younger than this is replaced only after a backoff ...
MAX_BACKOFF_S = 30.0  # ... doubling up to this (a worker that cannot start must not spin)
MASK_DENSE_STEPS = 200  # masks of every step up to here are recorded ...
MASK_MAX_RECORDS = 1000  # ... then a stride keeps a run under about this many per layer
CONN_EVERY = 50  # a connection-mask snapshot with every 50th mask record of a layer
CONN_MAX_SIDE = 512  # wider snapshots are subsampled with a stride to at most this per side
GRID_KIND = "decision_grid"  # artifact kind of the decision-boundary grids (2-D datasets)
GRID_RESOLUTION = 50
MAX_GRIDS = 100  # per run: longer runs store the grid of every k-th epoch (and the last)
GRID_SHARE = 0.03  # ... and grids take at most about this share of a run's time (fast runs skip some)
MASK_SHARE = 0.03  # mask records likewise: a tiny fast network records fewer steps
INTERRUPTED_BY_SHUTDOWN = "The run was interrupted: its worker pool shut down before it finished."
INTERRUPTED_BY_PARENT = "The run was interrupted: the process that owned its worker exited."
DIVERGED = "The run diverged (the loss became NaN or infinite); try a smaller learning rate."


class LimitExceeded(AsymvizError):
    """A submit over one of this instance's limits (the sentence names it and its variable)."""


class NotOwner(AsymvizError):
    """Someone other than a run's owner (or an administrator) tried to stop or delete it."""


# ----------------------------------------------------------------------------- limits

LIMIT_VARIABLES = {"max_params": "ASYMVIZ_MAX_PARAMS", "max_epochs": "ASYMVIZ_MAX_EPOCHS",
                   "max_runs_per_owner": "ASYMVIZ_MAX_RUNS_PER_OWNER",
                   "max_queue": "ASYMVIZ_MAX_QUEUE"}


@dataclass
class Limits:
    """What one submit may ask of a shared instance; 0 means no limit."""

    max_params: int = 5_000_000  # weights and biases of one model
    max_epochs: int = 500
    max_runs_per_owner: int = 4  # queued + running runs of one owner
    max_queue: int = 50  # queued + running runs of everyone

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults, overridden by ASYMVIZ_MAX_PARAMS, _EPOCHS, _RUNS_PER_OWNER, _QUEUE."""
        defaults = cls()
        return cls(**{f.name: _env_int(LIMIT_VARIABLES[f.name], getattr(defaults, f.name))
                      for f in fields(cls)})

    def check_config(self, config: TrainConfig) -> None:
        """Raise LimitExceeded if this (validated) config breaks a limit on the run itself (epochs,
        model size) and DatasetNotOffered if the lab does not offer its dataset (ASYMVIZ_DATASETS).
        The queue limits are `admit`'s, inside `Runner.submit`'s store transaction."""
        from asymviz.lab import check_dataset

        check_dataset(config.dataset)
        if self.max_epochs and config.epochs > self.max_epochs:
            raise LimitExceeded(f"This instance allows at most {self.max_epochs} epochs per run "
                                f"(ASYMVIZ_MAX_EPOCHS); this run asks for {config.epochs}.")
        if self.max_params:
            params = model_parameters(config)
            if params > self.max_params:
                raise LimitExceeded(f"This instance allows models of at most {self.max_params:,} "
                                    f"parameters (ASYMVIZ_MAX_PARAMS); this one has {params:,}, so "
                                    "use fewer or narrower hidden layers.")

    def admit(self, active: int, mine: int, owner: str) -> None:
        """The limits on the queue, given the queued + running runs of everyone and of owner."""
        if self.max_queue and active >= self.max_queue:
            raise LimitExceeded(f"The queue is full: {active} runs are queued or running, the "
                                f"most this instance allows (ASYMVIZ_MAX_QUEUE); try again "
                                "when some have finished.")
        if self.max_runs_per_owner and mine >= self.max_runs_per_owner:
            raise LimitExceeded(f"{owner} already has {mine} queued or running runs, the most "
                                "this instance allows per person (ASYMVIZ_MAX_RUNS_PER_OWNER); "
                                "wait for one to finish or stop one.")


def model_parameters(config: TrainConfig) -> int:
    """Weights and biases of the model a validated config describes (loads embedded data)."""
    from asymviz.data import DATASETS, load_dataset

    info = DATASETS.get(config.dataset)
    if info is not None and info.kind == "download":
        n_in, n_out = 784, 10  # MNIST and Fashion-MNIST: no download just to count
    else:
        data = load_dataset(config.dataset, config.dataset_options, split_seed=config.split_seed)
        n_in, n_out = data.n_features, data.n_classes
    return count_parameters(n_in, config.hidden, n_out)


# ----------------------------------------------------------------------------- configs

def config_key(config: dict | TrainConfig, **override) -> str:
    """Canonical JSON of a validated config with overrides, e.g. config_key(c, strategy="symmetric").

    Options without effect are normalized (a strategy without a sparse backward ignores
    sparsity, selection, sparse_output and the lazy/dense update), so equal keys mean the same
    training."""
    d = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    d.update(override)
    c = TrainConfig.from_dict(d).validated()
    if not get_strategy(c.strategy).neuron_sparse:
        c.sparse_output, c.update = False, "lazy"
    return json.dumps(c.to_dict(), sort_keys=True)


def find_reference_run(store: Store, config: dict | TrainConfig) -> dict | None:
    """The newest finished symmetric run whose config equals this one but for the strategy
    options (strategy, sparsity, conn_sparsity, selection, granularity, ...); None if none."""
    key = config_key(config, strategy="symmetric")
    for run in store.list_runs(status="finished", strategy="symmetric"):
        try:
            if config_key(run["config"]) == key:
                return run
        except AsymvizError:  # a stored config this version no longer accepts
            continue
    return None


# ----------------------------------------------------------------------------- store callback

def mask_step_due(step: int, total_steps: int) -> bool:
    """Whether the masks of (1-based) `step` are recorded: every step up to MASK_DENSE_STEPS,
    then every stride-th, so a run records at most about MASK_MAX_RECORDS per layer."""
    if step <= MASK_DENSE_STEPS:
        return True
    stride = math.ceil((total_steps - MASK_DENSE_STEPS) / (MASK_MAX_RECORDS - MASK_DENSE_STEPS))
    return (step - MASK_DENSE_STEPS) % max(1, stride) == 0


def connection_snapshot(rec: MaskRecord, max_side: int = CONN_MAX_SIDE):
    """The (n_out, n_in) connection mask as a bool numpy array, every s-th row and column
    when a side is wider than max_side; None for a layer too large to build it (> 16M)."""
    if rec.n_out * rec.n_in > 1 << 24:
        return None
    mask = rec.connection_mask()  # (n_out, n_in)
    rows, cols = math.ceil(rec.n_out / max_side), math.ceil(rec.n_in / max_side)
    return mask[::rows, ::cols].cpu().numpy()


def grid_axes(x: torch.Tensor, resolution: int = GRID_RESOLUTION, margin: float = 0.5):
    """The grid `predict_grid` evaluates over 2-D inputs x: axes xs, ys (res,) and the
    points (res * res, 2) on x's device, rows following y."""
    lo = (x.min(0).values - margin).tolist()
    hi = (x.max(0).values + margin).tolist()
    xs = torch.linspace(lo[0], hi[0], resolution)
    ys = torch.linspace(lo[1], hi[1], resolution)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")  # (res, res)
    return xs, ys, torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(x.device)


@torch.no_grad()
def decision_grid(model: MLP, x: torch.Tensor, resolution: int = GRID_RESOLUTION,
                  axes: tuple | None = None) -> dict:
    """Compact decision-boundary grid over 2-D inputs x (the cells of `predict_grid`): class
    index and max probability (3 decimals) per cell, rows following y. axes: a cached
    `grid_axes(x, resolution)`."""
    xs, ys, points = axes or grid_axes(x, resolution)
    was_training = model.training
    model.eval()
    conf, cls = torch.softmax(model(points), 1).max(1)  # (res * res,)
    model.train(was_training)
    conf = torch.nan_to_num(conf, nan=0.0)  # a diverged model
    milli = (conf * 1000).round().to(torch.int32).reshape(resolution, resolution).tolist()
    return {"resolution": resolution,
            "x": [round(v, 4) for v in xs.tolist()], "y": [round(v, 4) for v in ys.tolist()],
            "cls": cls.reshape(resolution, resolution).tolist(),
            "conf": [[m / 1000 for m in row] for row in milli]}


class StoreCallback(Callback):
    """Streams one run into the store (metrics, masks, grids, heartbeat, progress), checks
    for stop requests cheaply, and sets the run's final status.

    interrupt: called with the stop checks; a sentence it returns ends the run `interrupted`
    (the worker pool is shutting down, or its owner died)."""

    def __init__(self, store: Store, run_id: int, interrupt: Callable[[], str | None] | None = None,
                 check_every: float | None = None, masks: bool = True, grids: bool = True,
                 grid_share: float = GRID_SHARE, mask_share: float = MASK_SHARE):
        self.store, self.run_id = store, run_id
        self.interrupt = interrupt or (lambda: None)
        self.check_every = _env_float("ASYMVIZ_STOP_CHECK_S", 0.2) if check_every is None \
            else check_every
        self.masks, self.grids = masks, grids
        self.grid_share, self.mask_share = grid_share, mask_share
        self.writer: store_module.MetricWriter | None = None
        self.interrupted: str | None = None
        self.final_status: str | None = None
        self._recording = False
        self._mask_records: dict[int, int] = {}  # layer -> records written
        self._grid_every = 1
        self._last_grid_epoch = 0
        self._grid_axes: tuple | None = None
        self._grid_seconds = self._grid_cost = 0.0  # all grids so far, the last one
        self._mask_seconds = 0.0
        self._t0 = time.perf_counter()
        self._last_check = 0.0

    def on_fit_start(self, ctx: FitContext) -> None:
        self.writer = self.store.writer(self.run_id)
        self._grid_every = max(1, math.ceil(ctx.config.epochs / MAX_GRIDS))
        self._last_check = time.monotonic()
        self._t0 = time.perf_counter()
        self._set_recording(ctx, self.masks)

    def on_step_end(self, ctx: FitContext, record: dict) -> None:
        self.writer.set_progress(ctx.step / ctx.total_steps)
        self.writer.add_step(record)
        if self._recording:
            start = time.perf_counter()
            self._write_masks(ctx)
            self._mask_seconds += time.perf_counter() - start
        self._set_recording(ctx, self._mask_due(ctx.step + 1, ctx.total_steps))
        now = time.monotonic()
        if now - self._last_check >= self.check_every:
            self._last_check = now
            self._check_stop(ctx)

    def on_epoch_end(self, ctx: FitContext, record: dict) -> None:
        self.writer.add_epoch(record)
        if self._grid_due(ctx.epoch, ctx.config.epochs):
            self._write_grid(ctx, ctx.epoch)

    def on_fit_end(self, ctx: FitContext, result: dict) -> None:
        self._set_recording(ctx, False)
        if result["status"] == "yielded":  # paused for long: asymviz.pace puts it back in the queue
            self.writer.close()
            self.final_status = "yielded"
            return
        if result["epochs"] > self._last_grid_epoch and result["status"] != "diverged":
            self._write_grid(ctx, result["epochs"])  # stopped mid-way: the final model's
        self.writer.close()
        status = "interrupted" if self.interrupted else result["status"]
        error = self.interrupted or (DIVERGED if status == "diverged" else None)
        finish_run(self.store, self.run_id, status, error=error, summary=result)
        self.final_status = status

    def close(self) -> None:
        """Write what is buffered (after an error); never raises."""
        if self.writer is not None:
            try:
                self.writer.close()
            except (AsymvizError, OSError):
                pass

    def _check_stop(self, ctx: FitContext) -> None:
        reason = self.interrupt()
        if reason:
            self.interrupted = reason
            ctx.request_stop("interrupted")
        elif self.store.stop_requested(self.run_id):
            ctx.request_stop("stopped")

    def _set_recording(self, ctx: FitContext, on: bool) -> None:
        """Mask recording only for the steps that are written (it costs a little per step)."""
        if on != self._recording:
            ctx.model.record_masks(on)
            self._recording = on

    def _write_masks(self, ctx: FitContext) -> None:
        for layer, rec in enumerate(ctx.model.last_masks()):
            if rec is None:  # dense backward: nothing dropped
                continue
            count = self._mask_records.get(layer, 0)
            conn = None
            if (rec.conn_mask is not None or rec.conn_cols is not None) and count % CONN_EVERY == 0:
                snapshot = connection_snapshot(rec)
                conn = None if snapshot is None else pack_mask(snapshot)
            self.writer.add_mask(ctx.step, layer, rec.kept.tolist(), rec.n_out, conn)
            self._mask_records[layer] = count + 1

    def _mask_due(self, step: int, total_steps: int) -> bool:
        """On mask_step_due's schedule while mask records stay within mask_share of the time."""
        return (self.masks and mask_step_due(step, total_steps)
                and self._mask_seconds <= self.mask_share * (time.perf_counter() - self._t0))

    def _grid_due(self, epoch: int, epochs: int) -> bool:
        """The first and last epoch always; between them at most every k-th (MAX_GRIDS) and
        only while grids stay within grid_share of the time so far."""
        if self._last_grid_epoch == 0 or epoch == epochs:
            return True
        if epoch - self._last_grid_epoch < self._grid_every:
            return False
        spent = self._grid_seconds + self._grid_cost
        return spent <= self.grid_share * (time.perf_counter() - self._t0)

    def _write_grid(self, ctx: FitContext, epoch: int) -> None:
        if self.grids and ctx.data.is_2d:
            start = time.perf_counter()
            if self._grid_axes is None:
                self._grid_axes = grid_axes(ctx.data.x_train.to(ctx.device))
            grid = decision_grid(ctx.model, ctx.data.x_train, axes=self._grid_axes)
            self.writer.add_artifact(GRID_KIND, grid, step=ctx.step, epoch=epoch)
            self._last_grid_epoch = epoch
            self._grid_cost = time.perf_counter() - start
            self._grid_seconds += self._grid_cost


def error_sentence(exc: BaseException) -> str:
    """The one sentence a failed run stores: an AsymvizError's own, else '<Type>: <message>'."""
    if isinstance(exc, AsymvizError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())  # one line


def finish_run(store: Store, run_id: int, status: str, error: str | None = None,
               summary: dict | None = None) -> bool:
    """Set a run's final status and log it; False if the run had already ended (e.g. marked
    interrupted by reconcile) or was deleted."""
    try:
        store.set_status(run_id, status, error=error, summary=summary)
    except (RunStateError, RunNotFound):
        return False
    message = error or f"Run {status}."
    if status == "finished" and summary and summary.get("test_acc") is not None:
        message = f"Run finished: test accuracy {summary['test_acc']:.4f}."
    try:
        store.add_event(run_id, status, message)
    except RunNotFound:
        pass
    return True


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


def execute(store: Store, run: dict, interrupt: Callable[[], str | None] | None = None,
            check_every: float | None = None) -> str:
    """Train one claimed (running) run into the store; return its final status ("deleted" if
    it was deleted meanwhile). Errors end the run `failed` with one sentence; none escape but a
    StoreError that kept even that end from being written (`work` writes it later).
    store: a Store, or on a Ray node the sink's stand-in (asymviz.executors.SinkStore)."""
    from asymviz import pace  # (it imports this module)

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


# ----------------------------------------------------------------------------- worker process

_TERMINATED = threading.Event()  # set by SIGTERM inside a worker process


def log_fatal_signals() -> None:
    """Let a fatal signal (SIGBUS, SIGSEGV, ...) leave a Python traceback on stderr, so a process
    of the lab never ends without a line in its log (a no-op where stderr is not a file)."""
    try:
        faulthandler.enable()
    except (OSError, ValueError, AttributeError):
        pass


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
        self.workers = _env_int("ASYMVIZ_WORKERS", cpu_count()) if workers is None else int(workers)
        if self.workers < 0:
            raise ConfigError(f"The number of workers must be 0 or more, got {self.workers}.")
        self.executor = executors.executor_name(executor)
        if self.executor == "ray" and self.workers:
            executors.require_ray()
        self._auto_workers = workers is None and not os.environ.get("ASYMVIZ_WORKERS", "").strip()
        self._remote: executors.RayExecutor | None = None  # the ray executor while started
        self.limits = limits if limits is not None else Limits.from_env()
        self.stop_grace = _env_float("ASYMVIZ_STOP_GRACE", 10.0)
        self.stale_after = _env_float("ASYMVIZ_STALE_AFTER", 120.0)
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
            external = os.environ.get("ASYMVIZ_EXTERNAL_WORKERS", "").lower() in ("1", "true", "yes")
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
        threads = _env_int("ASYMVIZ_WORKER_THREADS", 0) or max(1, cpu_count() // max(1, self.workers))
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
            return not (pid in pids and host == HOST) and store_module._pid_alive(pid, host)

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


# ----------------------------------------------------------------------------- environment

CGROUP_ROOT = "/sys/fs/cgroup"


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


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise ConfigError(f"{name} must be a whole number of 0 or more, got {text!r}.")
    return int(text)


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or math.isinf(value):
        raise ConfigError(f"{name} must be a number of seconds of 0 or more, got {text!r}.")
    return value
