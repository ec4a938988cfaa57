"""Recording a run into the store while it trains: `StoreCallback` and what it samples.

    fit(config, [StoreCallback(store, run_id)])   # what a worker does (asymviz.executors.execute)
    store.artifacts(run_id, GRID_KIND)            # the decision grids it recorded

The callback streams into the store through its batched writer: every step and epoch record,
heartbeat and progress; the kept neuron set of each asymmetric layer at sampled steps (every
step up to step 200, then a stride that keeps a run under about 1000 records per layer, and
fewer where writing them would take over 3 % of a fast run's time: MASK_*; read back with
`store.masks` / `store.layer_selection_counts`), with a connection-mask snapshot every 50th
record for excessive / refined (`store.unpack_mask`; a layer wider than 512 on a side is
subsampled with a stride, so the snapshot's own shape says which rows and columns it shows:
CONN_*); and for 2-D datasets a decision grid at epoch ends (the first and the last epoch
always; between them at most 100 per run, and fewer where grids would take over 3 % of a fast
run's time: MAX_GRIDS, GRID_SHARE), stored as the artifact kind GRID_KIND; its data is
{"resolution", "x" and "y" (the axes, res values each), "cls" (res x res class indices, rows
follow y), "conf" (res x res max probability, 3 decimals)}. Training points are not stored: the
figure reloads the dataset.

It checks for a stop request at most every ASYMVIZ_STOP_CHECK_S seconds (0.2) and sets the
run's final status (`finish_run`): finished, stopped, diverged, or interrupted when its
`interrupt` says why (the worker pool is shutting down, its owner died). The store may also be a
Ray node's stand-in for the server's store (asymviz.executors.SinkStore).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from asymviz.errors import AsymvizError
from asymviz.config import env_number
from asymviz.model import MLP
from asymviz.sparse import MaskRecord
from asymviz.store import MetricWriter, RunNotFound, RunStateError, Store, pack_mask
from asymviz.train import Callback, FitContext

MASK_DENSE_STEPS = 200  # masks of every step up to here are recorded ...
MASK_MAX_RECORDS = 1000  # ... then a stride keeps a run under about this many per layer
MASK_SHARE = 0.03  # ... and mask records take at most about this share of a run's time
CONN_EVERY = 50  # a connection-mask snapshot with every 50th mask record of a layer
CONN_MAX_SIDE = 512  # wider snapshots are subsampled with a stride to at most this per side
GRID_KIND = "decision_grid"  # artifact kind of the decision-boundary grids (2-D datasets)
GRID_RESOLUTION = 50
MAX_GRIDS = 100  # per run: longer runs store the grid of every k-th epoch (and the last)
GRID_SHARE = 0.03  # ... and grids take at most about this share of a run's time (fast runs skip some)
DIVERGED = "The run diverged (the loss became NaN or infinite); try a smaller learning rate."


# ----------------------------------------------------------------------------- what is sampled

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


# ----------------------------------------------------------------------------- the callback

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
        self.check_every = env_number("ASYMVIZ_STOP_CHECK_S", 0.2) if check_every is None \
            else check_every
        self.masks, self.grids = masks, grids
        self.grid_share, self.mask_share = grid_share, mask_share
        self.writer: MetricWriter | None = None
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
