"""Live views of runs, shared by every browser session that watches them.

    watch = LiveRun(run_id)                      # one per run, however many sessions watch it
    view = watch.refresh(store, max_age=0.5)     # reads only the rows written since its last read
    view.run["status"], view.last_step, view.last_epoch
    chart = watch.chart("loss")                  # Chart(json, height): built once per new data

A class of 60 students refreshing every second must not cost 60 store reads and 240 figure
builds a second. So a run's live view is read from the store at most once per `max_age`
seconds whoever asks (the run's row, the step records since the last step read, sampled by a
StepSampler, and the epochs since the last epoch), and each figure is built and written to JSON
once per version of the data it shows (the gap chart changes once an epoch, the masks when new
masks are recorded), then handed out as the same string to every session. Figures go through
`figures.<builder>.spec` and `figures.to_json`, the unvalidated path (validated once in the
tests): a refresh costs a session a dictionary look-up per chart.

`LiveRuns` holds one LiveRun per run, the least recently used dropped beyond `max_runs`.
`read_refresh` / `write_refresh` keep the instructor's lab-wide refresh interval. Nothing here
imports Streamlit (ui_common.py holds the registry for the dashboard).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from asymviz import figures

REFERENCE_EVERY_S = 15.0  # how often the timing view looks for a finished symmetric run
REFRESH_FILE = "refresh.json"  # in $ASYMVIZ_HOME: the instructor's refresh interval
REFRESH_RANGE = (0.5, 60.0)  # seconds an instructor may choose


# ----------------------------------------------------------------------------- step records


class StepSampler:
    """A bounded, evenly strided sample of a growing run's step records, read incrementally.

    `update(store)` reads only the rows written since the last call (those whose step is a
    multiple of the current stride), and when the sample exceeds 2 * max_points it keeps every
    other record and doubles the stride. So one update costs O(new steps / stride) and the sample
    stays O(max_points) however long the run. The first call on a long run reads one strided
    pass instead of every row."""

    def __init__(self, run_id: int, max_points: int = 400):
        self.run_id, self.max_points = run_id, max_points
        self.stride = 1
        self.records: list[dict] = []
        self.last_step: int | None = None

    def update(self, store) -> list[dict]:
        if self.last_step is None:  # first read: pick a stride that fits the run so far
            last = store.steps_downsampled(self.run_id, 1)
            if last:
                while last[0]["step"] / self.stride > self.max_points:
                    self.stride *= 2
        new = store.steps(self.run_id, since_step=self.last_step, every=self.stride if self.stride > 1 else None)
        if new:
            self.records.extend(new)
            self.last_step = new[-1]["step"]
        elif self.last_step is None:
            self.last_step = 0 if self.stride == 1 else None
        while len(self.records) > 2 * self.max_points:
            self.stride *= 2
            self.records = [r for r in self.records if r["step"] % self.stride == 0]
        return self.records


# ----------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class View:
    """What a live view shows besides its charts, as of one read of the store."""

    run: dict  # the run's row (status, progress, config, summary, error, ...)
    last_step: dict  # the newest step record read ({} before the first)
    last_epoch: dict  # the newest epoch record ({} before the first)


@dataclass(frozen=True)
class Chart:
    """A figure ready for the page: plotly JSON and its height in pixels."""

    json: str
    height: int


class _Masks:
    """One layer's mask records (step, n, kept indices), read incrementally, with running
    selection counts and the newest connection-mask snapshot."""

    def __init__(self, run_id: int, layer: int, with_conn: bool):
        self.run_id, self.layer, self.with_conn = run_id, layer, with_conn
        self.records: list[dict] = []
        self.counts = np.zeros(0, dtype=np.int64)
        self.conn: dict | None = None  # {"step", "blob"}
        self.version = 0
        self.read_at = -math.inf

    def update(self, store) -> None:
        since = self.records[-1]["step"] if self.records else None
        new = store.masks(self.run_id, layer=self.layer, with_conn=self.with_conn, since_step=since)
        self.read_at = time.monotonic()
        for r in new:
            kept = np.asarray(r["kept"], dtype=np.int32)  # (k,)
            n = int(r["n"])
            if n > len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros(n - len(self.counts), np.int64)])
            self.counts[kept[(kept >= 0) & (kept < n)]] += 1
            self.records.append({"step": int(r["step"]), "n": n, "kept": kept})
            if r.get("conn"):
                self.conn = {"step": int(r["step"]), "blob": r["conn"]}
        if new:
            self.version += 1


class LiveRun:
    """One run's live view: read at most once per `max_age` seconds, figures built once per data
    version. Thread-safe: the sessions of a class call it from their own threads."""

    def __init__(self, run_id: int, max_points: int = figures.MAX_POINTS):
        self.run_id = run_id
        self._lock = threading.RLock()
        self._sampler = StepSampler(run_id, max_points)
        self._epochs: list[dict] = []
        self._run: dict | None = None
        self._read_at = -math.inf
        self._steps_version = self._epochs_version = 0
        self._masks: dict[int, _Masks] = {}
        self._grid: tuple[Any, dict | None] = (None, None)  # ((epochs read, status) when fetched, grid)
        self._reference: tuple[float, dict | None] = (-math.inf, None)  # (when looked up, {id, summary})
        self._points = None  # the 2-D training points under the decision boundary
        self._charts: dict[str, tuple[Any, Chart]] = {}

    # -- reading ----------------------------------------------------------------------

    def refresh(self, store, max_age: float = 0.5) -> View:
        """The view as of a read at most `max_age` seconds old (RunNotFound if the run is gone).
        A run that has ended is read once more and then never again."""
        with self._lock:
            ended = self._run is not None and self._run["status"] not in ("queued", "running")
            if not ended and time.monotonic() - self._read_at >= max_age:
                self._read(store)
            return View(self._run, self._sampler.records[-1] if self._sampler.records else {},
                        self._epochs[-1] if self._epochs else {})

    def _read(self, store) -> None:
        run = store.get_run(self.run_id)  # first: rows written before a run ends are then read too
        n_steps = len(self._sampler.records), self._sampler.last_step
        self._sampler.update(store)
        if (len(self._sampler.records), self._sampler.last_step) != n_steps:
            self._steps_version += 1
        new = store.epochs(self.run_id, since_epoch=self._epochs[-1]["epoch"] if self._epochs else None)
        if new:
            self._epochs.extend(new)
            self._epochs_version += 1
        self._run = run
        self._read_at = time.monotonic()

    def _layer_masks(self, store, layer: int, with_conn: bool) -> _Masks:
        """One layer's masks (read only for layers someone looks at), read again after each
        read of the run."""
        masks = self._masks.get(layer)
        if masks is None:
            masks = self._masks[layer] = _Masks(self.run_id, layer, with_conn)
        if masks.read_at < self._read_at:
            masks.update(store)
        return masks

    def grid(self, store) -> dict | None:
        """The newest decision-boundary grid artifact (fetched again only after a new epoch)."""
        from asymviz.recording import GRID_KIND
        with self._lock:
            seen = (len(self._epochs), self._run["status"])  # a grid is recorded at each epoch's end
            if self._grid[0] != seen:
                found = store.artifacts(self.run_id, GRID_KIND, last_only=True)
                self._grid = (seen, found[0] if found else None)
            return self._grid[1]

    def reference(self, store) -> dict | None:
        """The finished symmetric run of the same config, {id, summary}, looked up every 15 s."""
        from asymviz.twins import find_reference_run
        with self._lock:
            when, ref = self._reference
            if time.monotonic() - when >= REFERENCE_EVERY_S:
                try:
                    found = find_reference_run(store, self._run["config"])
                except Exception:
                    found = None
                ref = None if found is None or found["id"] == self.run_id else \
                    {"id": found["id"], "summary": found["summary"]}
                self._reference = (time.monotonic(), ref)
            return ref

    def points(self) -> tuple[list, list, list[str]]:
        """(points, labels, class names): at most MAX_SCATTER training points of the run's
        2-D dataset, standardized as the model sees them."""
        with self._lock:
            if self._points is None:
                from asymviz.data import load_dataset
                c = self._run["config"]
                data = load_dataset(c["dataset"], c.get("dataset_options") or {}, split_seed=int(c.get("split_seed", 0)))
                idx = figures.downsample(list(range(len(data.y_train))), figures.MAX_SCATTER)
                self._points = (data.x_train[idx].tolist(), data.y_train[idx].tolist(), list(data.class_names))
            return self._points

    # -- charts -----------------------------------------------------------------------

    def _chart(self, key: str, version, build: Callable[[], dict]) -> Chart:
        with self._lock:
            cached = self._charts.get(key)
            if cached is not None and cached[0] == version:
                return cached[1]
            spec = build()
            chart = Chart(figures.to_json(spec), int(spec["layout"].get("height") or 450))
            self._charts[key] = (version, chart)
            return chart

    def chart(self, name: str) -> Chart:
        """"loss", "accuracy", "gap": the curves of the data read so far."""
        with self._lock:
            steps, epochs = self._sampler.records, self._epochs
            if name == "loss":
                return self._chart(name, (self._steps_version, self._epochs_version),
                                   lambda: figures.loss_figure.spec(steps, epochs))
            if name == "accuracy":
                return self._chart(name, (self._steps_version, self._epochs_version),
                                   lambda: figures.accuracy_figure.spec(steps, epochs))
            if name == "gap":
                return self._chart(name, self._epochs_version, lambda: figures.gap_figure.spec(epochs))
        raise ValueError(f"No live chart named {name!r}.")

    def timing_chart(self, store) -> tuple[Chart, dict | None]:
        """(the time-per-step chart with the reference run's mean backward time, the reference)."""
        with self._lock:
            ref = self.reference(store) if self._run["config"].get("strategy") != "symmetric" else None
            reference = dict(ref["summary"] or {}, label=f"symmetric run #{ref['id']}") if ref else None
            steps = self._sampler.records
            chart = self._chart("timing", (self._steps_version, ref and ref["id"]),
                                lambda: figures.timing_figure.spec(steps, reference))
            return chart, ref

    def mask_charts(self, store, layer: int, n_default: int, keep_of: Callable[[int], int], with_conn: bool) -> dict:
        """The masks view of one layer: {"heatmap", "selection", "conn" (a Chart, or None without
        connection masks), "records" (how many mask records so far)}."""
        with self._lock:
            masks = self._layer_masks(store, layer, with_conn)
            records = masks.records
            n = records[-1]["n"] if records else n_default
            version = (layer, masks.version)
            out = {"records": len(records), "conn": None}
            out["heatmap"] = self._chart(f"masks:{layer}", version,
                                         lambda: figures.mask_heatmap.spec(records, layer, n=n or None))
            out["selection"] = self._chart(f"selection:{layer}", version, lambda: figures.selection_figure.spec(
                masks.counts[:n].tolist() if n else [], len(records) if n else 0, layer,
                keep=keep_of(n) if n else None))
            if with_conn:
                from asymviz.store import unpack_mask
                snap = masks.conn
                title = f"Connection mask at step {snap['step']}, layer {layer + 1}" if snap else "Connection mask"
                out["conn"] = self._chart(f"conn:{layer}", (layer, snap and snap["step"]),
                                          lambda: figures.connection_figure.spec(
                                              unpack_mask(snap["blob"]) if snap else None, title=title))
            return out

    def boundary_chart(self, store) -> tuple[Chart, dict | None]:
        """(the decision-boundary chart of the newest grid, that grid's artifact or None)."""
        with self._lock:
            grid = self.grid(store)

            def build():
                pts, labels, names = self.points()
                title = f"Decision boundary after epoch {grid['epoch']}" if grid else "Decision boundary"
                return figures.boundary_figure.spec(grid["data"] if grid else None, pts, labels, names,
                                                    title=title, n_classes=len(names))
            return self._chart("boundary", grid and grid["id"], build), grid


class LiveRuns:
    """One LiveRun per run, shared by every session of a server; the least recently used are
    dropped beyond max_runs (a run's view is read again from the store if asked for later)."""

    def __init__(self, max_runs: int = 48):
        self.max_runs = max_runs
        self._runs: OrderedDict[int, LiveRun] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: int) -> LiveRun:
        with self._lock:
            watch = self._runs.get(run_id)
            if watch is None:
                watch = self._runs[run_id] = LiveRun(run_id)
            self._runs.move_to_end(run_id)
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
            return watch

    def __len__(self) -> int:
        return len(self._runs)


# ----------------------------------------------------------------------------- the lab's refresh


def read_refresh(home: str | Path) -> float | None:
    """The refresh interval the instructor chose for the whole lab, in seconds; None if none
    (or if the file is unreadable: the server's own setting then holds)."""
    try:
        value = float(json.loads((Path(home) / REFRESH_FILE).read_text())["refresh_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    lo, hi = REFRESH_RANGE
    return min(max(value, lo), hi) if math.isfinite(value) else None


def write_refresh(home: str | Path, seconds: float) -> None:
    """Set the lab-wide refresh interval; ValueError outside REFRESH_RANGE."""
    path = Path(home) / REFRESH_FILE
    lo, hi = REFRESH_RANGE
    if isinstance(seconds, bool) or not (isinstance(seconds, (int, float)) and lo <= seconds <= hi):
        raise ValueError(f"The refresh interval must be from {lo:g} to {hi:g} seconds; got {seconds!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps({"refresh_s": float(seconds)}))
    tmp.replace(path)
