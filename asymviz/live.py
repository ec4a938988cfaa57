"""Live views of runs, shared by every browser session that watches them.

    watch = LiveRun(run_id)                      # one per run, however many sessions watch it
    view = watch.refresh(store, max_age=0.5)     # reads only the rows written since its last read
    view.run["status"], view.last_step, view.last_epoch
    chart = watch.chart("loss")                  # Chart(json, height): built once per new data
    panel = watch.lecture(store, max_age=0.5)    # the lecture panel: pace, exact step, snapshot mark
    network, boundary = watch.network_charts(store, boundary=True)   # the network as it learns
    twins = runs.twins(store, run_id)            # a LiveRuns: the run and its twins overlaid

A class of 60 students refreshing every second must not cost 60 store reads and 240 figure
builds a second. So a run's live view is read from the store at most once per `max_age`
seconds whoever asks (the run's row, the step records since the last step read, sampled by a
StepSampler, and the epochs since the last epoch), and each figure is built and written to JSON
once per version of the data it shows (the gap chart changes once an epoch, the masks when new
masks are recorded, the network picture when a new snapshot is written), then handed out as the
same string to every session. Figures go through `figures.<builder>.spec` and `figures.to_json`,
the unvalidated path (validated once in the tests): a refresh costs a session a dictionary
look-up per chart. The lecture panel (pace, exact step, network picture or the summary of a
large network) and the twins view (a run and its symmetric and dropout twins, each read through
its own LiveRun) are read and drawn the same way, and stop being read once their runs have ended.

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
SUMMARY_EVERY_S = 5.0  # how often a large network's kept-neuron summary is read again
SETTLE_S = 5.0  # after a run ends, its last network snapshot (written just after) is looked for this long
LIVE = ("queued", "running")


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


@dataclass(frozen=True)
class Lecture:
    """What the lecture panel shows besides its pictures, as of one read of the store."""

    run: dict  # the run's row, as View.run
    pace: Any  # its asymviz.pace.Pace
    step: int  # the last step it recorded (exact: View.last_step is the newest sampled one)
    snapshot: tuple | None  # asymviz.pace.snapshot_mark of its network snapshot, None before the first


@dataclass(frozen=True)
class Twins:
    """A run and its twins overlaid, as of one read of each."""

    runs: tuple[dict, ...]  # the group's rows, the run that asked for twins first (deleted ones left out)
    last_epochs: tuple[dict, ...]  # each one's newest epoch record ({} before the first)
    charts: dict[str, Chart]  # "val/acc", "gap", "timing" ({} with fewer than two runs)


def _to_chart(spec: dict) -> Chart:
    """A figure's plain dict (a builder's `.spec`) as a Chart."""
    return Chart(figures.to_json(spec), int(spec["layout"].get("height") or 450))


def _figure_chart(fig) -> Chart:
    """A validated go.Figure as a Chart: the JSON st.plotly_chart would send for it."""
    import plotly.io as pio
    return Chart(pio.to_json(fig, validate=False), int(fig.layout.height or 450))


class _Masks:
    """One layer's mask records (step, n, kept indices), read incrementally, with running
    selection counts and the newest connection-mask snapshot; keep_records=False: the counts
    only (the summary of a large network)."""

    def __init__(self, run_id: int, layer: int, with_conn: bool, keep_records: bool = True):
        self.run_id, self.layer, self.with_conn, self.keep_records = run_id, layer, with_conn, keep_records
        self.records: list[dict] = []
        self.n_records = 0
        self.last_step: int | None = None
        self.counts = np.zeros(0, dtype=np.int64)
        self.conn: dict | None = None  # {"step", "blob"}
        self.version = 0
        self.read_at = -math.inf

    def update(self, store) -> None:
        new = store.masks(self.run_id, layer=self.layer, with_conn=self.with_conn, since_step=self.last_step)
        self.read_at = time.monotonic()
        for r in new:
            kept = np.asarray(r["kept"], dtype=np.int32)  # (k,)
            n = int(r["n"])
            if n > len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros(n - len(self.counts), np.int64)])
            self.counts[kept[(kept >= 0) & (kept < n)]] += 1
            self.n_records += 1
            self.last_step = int(r["step"])
            if self.keep_records:
                self.records.append({"step": self.last_step, "n": n, "kept": kept})
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
        self._reads = 0  # reads of the run so far (what the lecture's and the group's reads follow)
        self._stale = False  # read at the next request, whatever its max_age
        self._steps_version = self._epochs_version = 0
        self._masks: dict[int, _Masks] = {}
        self._grid: tuple[Any, dict | None] = (None, None)  # ((epochs read, status) when fetched, grid)
        self._reference: tuple[float, dict | None] = (-math.inf, None)  # (when looked up, {id, summary})
        self._points = None  # the 2-D training points under the decision boundary
        self._charts: dict[str, tuple[Any, Any]] = {}  # key -> (data version, Chart or charts)
        self._ended_at: float | None = None  # when a read first found the run ended
        self._lecture: Lecture | None = None
        self._lecture_at, self._lecture_after = -math.inf, 0  # when read, and the run read it followed
        self._group: tuple[int, ...] = (run_id,)
        self._group_after: int | None = None  # the run read after which the group was listed
        self._group_final = False
        self._counts: dict[int, _Masks] = {}  # per layer, for the summary of a large network
        self._counts_at = -math.inf
        self._twins_lock = threading.Lock()  # taken before the group's LiveRuns' own locks, never after

    # -- reading ----------------------------------------------------------------------

    def refresh(self, store, max_age: float = 0.5) -> View:
        """The view as of a read at most `max_age` seconds old (RunNotFound if the run is gone).
        A run that has ended is read once more and then never again."""
        with self._lock:
            ended = self._run is not None and self._run["status"] not in LIVE
            if not ended and (self._stale or time.monotonic() - self._read_at >= max_age):
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
        self._read_at, self._stale = time.monotonic(), False
        self._reads += 1
        if self._ended_at is None and run["status"] not in LIVE:
            self._ended_at = self._read_at

    def touch(self) -> None:
        """Read the run again at the next request, whatever its max_age (a page changed its pace)."""
        with self._lock:
            self._stale = True

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

    def _cached(self, key: str, version, build: Callable[[], Any]):
        """build(), once per version of its data (under the lock: one build for every session)."""
        with self._lock:
            cached = self._charts.get(key)
            if cached is not None and cached[0] == version:
                return cached[1]
            value = build()
            self._charts[key] = (version, value)
            return value

    def _chart(self, key: str, version, build: Callable[[], dict]) -> Chart:
        return self._cached(key, version, lambda: _to_chart(build()))

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

    # -- the lecture panel --------------------------------------------------------------

    def lecture(self, store, max_age: float = 0.5) -> Lecture:
        """The lecture panel's view: the run's row (as `refresh`), its pace, its exact last step
        and its snapshot's mark, read again after each read of the run (and, for SETTLE_S after
        its end, at most once per max_age: the worker writes the last snapshot after the end)."""
        from asymviz import pace
        with self._lock:
            view = self.refresh(store, max_age)
            now = time.monotonic()
            due = self._lecture is None or self._lecture_after != self._reads
            if not due and self._ended_at is not None:
                due = now - self._ended_at <= SETTLE_S and now - self._lecture_at >= max_age
            if due:
                self._lecture = Lecture(view.run, pace.get(store, self.run_id), pace.last_step(store, self.run_id),
                                        pace.snapshot_mark(store, self.run_id))
                self._lecture_at, self._lecture_after = now, self._reads
            return self._lecture

    def network_charts(self, store, boundary: bool) -> tuple[Chart, Chart | None]:
        """(the network picture, the live decision boundary or None) of the run's snapshot as of
        the last `lecture` read, built once per snapshot. boundary: draw it if the snapshot has
        one (2-D data)."""
        from asymviz import figures_network, pace
        with self._lock:
            mark = self._lecture.snapshot if self._lecture is not None else None

            def build():
                snap = pace.snapshot(store, self.run_id)
                network = _to_chart(figures_network.network_figure.spec(snap))
                if not (boundary and snap and snap.get("boundary")):
                    return network, None
                pts, labels, names = self.points()
                return network, _to_chart(figures.boundary_figure.spec(
                    snap["boundary"], pts, labels, names, n_classes=len(names),
                    title=f"Decision boundary at step {snap['step']:,}"))
            return self._cached("network", (mark, boundary), build)

    def summary_chart(self, store, widths: tuple, keep: tuple, dense: tuple) -> Chart:
        """A network too large to draw neuron by neuron: how often each neuron was kept
        (figures_network.summary_figure); the counts are read incrementally, at most every
        SUMMARY_EVERY_S, and once more after the run has ended."""
        from asymviz import figures_network
        with self._lock:
            now = time.monotonic()
            if self._ended_at is None:
                due = now - self._counts_at >= SUMMARY_EVERY_S
            else:  # once more after the end, then never
                due = self._counts_at < self._ended_at
            if due:
                for layer, is_dense in enumerate(dense):
                    if not is_dense:
                        self._counts.setdefault(layer, _Masks(self.run_id, layer, False, keep_records=False)).update(store)
                self._counts_at = now
            layers = [None if d else self._counts.get(layer) for layer, d in enumerate(dense)]
            version = (tuple(widths), tuple(keep), tuple(None if m is None else m.version for m in layers))
            return self._cached("summary", version, lambda: _figure_chart(figures_network.summary_figure(
                list(widths), [None if m is None else (m.counts.tolist(), m.n_records) for m in layers], list(keep))))

    # -- twins --------------------------------------------------------------------------

    def group(self, store, max_age: float = 0.5) -> tuple[int, ...]:
        """The ids of the run's twins group, the run that asked for twins first ((run_id,) for a
        run without twins). Twins are queued held and released together, so the group is
        listed again (after a read of the run) only until the run has been seen released."""
        from asymviz import twins
        with self._lock:
            run = self.refresh(store, max_age).run
            if not self._group_final and self._group_after != self._reads:
                if twins.is_twins_tag(run.get("tag")):
                    self._group = tuple(sorted(r["id"] for r in store.list_runs(tag=run["tag"])))
                self._group_after = self._reads
                self._group_final = not (run["status"] == "queued" and run.get("held") and not run.get("started_at"))
            return self._group

    def _data(self) -> tuple[tuple, list[dict], list[dict]]:
        """((steps version, epochs version), the sampled step records, the epoch records)."""
        with self._lock:
            return (self._steps_version, self._epochs_version), list(self._sampler.records), list(self._epochs)

    def twin_charts(self, members: list[tuple[LiveRun, View]]) -> dict[str, Chart]:
        """The twins charts of `members` (this run first, as read by `LiveRuns.twins`), built once
        per new data of any of them."""
        from asymviz import figures_twins, twins, pagekit
        main = members[0][1].run["id"]
        styles = [(pagekit.run_label(v.run), figures_twins.ROLE_COLORS.get(twins.role(v.run, main), figures.REFERENCE))
                  for _, v in members]
        with self._twins_lock:
            data = [watch._data() for watch, _ in members]
            steps_key = tuple((watch, d[0][0]) for (watch, _), d in zip(members, data))
            epochs_key = tuple((watch, d[0][1]) for (watch, _), d in zip(members, data))
            curves = [(label, color, d[2]) for (label, color), d in zip(styles, data)]
            out = {name: self._cached(f"twins:{name}", (epochs_key, styles), lambda name=name: _figure_chart(
                figures_twins.twins_curve_figure(curves, name))) for name in ("val/acc", "gap")}
            out["timing"] = self._cached("twins:timing", (steps_key, styles), lambda: _figure_chart(
                figures_twins.twins_timing_figure([(label, color, d[1]) for (label, color), d in zip(styles, data)])))
            return out


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

    def twins(self, store, run_id: int, max_age: float = 0.5) -> Twins:
        """The run and its twins overlaid: each read through its own LiveRun, the charts held
        by the group's first run's and built once per new data of any of them."""
        from asymviz.errors import AsymvizError
        members = []
        for i in self.get(run_id).group(store, max_age):
            watch = self.get(i)
            try:
                members.append((watch, watch.refresh(store, max_age)))
            except AsymvizError:  # deleted meanwhile
                continue
        charts = members[0][0].twin_charts(members) if len(members) >= 2 else {}
        return Twins(tuple(v.run for _, v in members), tuple(v.last_epoch for _, v in members), charts)


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


# ----------------------------------------------------------------------------- the server's load

LOAD_FACTORS = (1, 2, 3, 5, 10)  # how far the refresh interval stretches while the server is busy
SERVER_CPU_VARIABLE = "ASYMVIZ_SERVER_CPU"


def server_cpu_budget() -> float:
    """How many cores the dashboard's process may use, with every live view refreshing, before
    the views refresh less often: $ASYMVIZ_SERVER_CPU, else the cores the training workers leave
    free (at least 0.3 of one). 0: never stretch the interval."""
    from asymviz.lab import cpu_count
    from asymviz.environ import env_int, env_number

    cores = cpu_count()
    spare = cores - env_int("ASYMVIZ_WORKERS", cores)
    return env_number(SERVER_CPU_VARIABLE, max(0.3, float(spare)), 0.0)


class RefreshGovernor:
    """The factor by which every live view's refresh interval is stretched while the dashboard's
    process uses more CPU than its budget: a class of 60 students on one run at 1 s costs more
    than the cores the training workers leave, and then the server starves the workers and its
    own page loads. Watching at 2 or 3 s costs a third as much and still shows the curves move.

    `factor()` (cheap: a clock read) measures the process's CPU time over windows of `window`
    seconds (all its threads: the refreshes, page loads, the WebSocket traffic). Above `budget`
    cores it goes straight to the first of LOAD_FACTORS that would bring the load under 90 % of
    the budget (the load scales with 1 / interval; every step makes each open view restart once,
    so one step is cheaper than several). Once a lower factor would keep the load (the present
    load scaled by the ratio of the intervals) under 70 % of the budget, and that has held for
    `hold_down` seconds (a class that pauses for a moment and watches again should not make
    every view restart twice), it goes straight to the lowest such factor. A step holds at least
    `hold` seconds.

    A view takes a new interval by running its page once more, and a page run costs far more
    than a refresh: `may_restart()` lets at most `restarts_per_s` views a second do so (with a
    burst of `restart_burst`), so a step or a run that ends under a class of 60 spreads their
    page runs over half a minute instead of making them queue in front of the pages being
    opened. Windows in which views restarted after a step are not judged (their page runs are
    the step's cost, not the load it is meant to bring down), for at most `hold_down` seconds.
    Thread-safe; one per server process.
    """

    def __init__(self, budget: float, window: float = 5.0, hold: float = 15.0, hold_down: float = 60.0,
                 restarts_per_s: float = 2.0, restart_burst: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, cpu: Callable[[], float] = time.process_time):
        self.budget, self.window, self.hold, self.hold_down = budget, window, hold, hold_down
        self.restarts_per_s, self.restart_burst = restarts_per_s, restart_burst
        self._clock, self._cpu = clock, cpu
        self._lock = threading.Lock()
        self._level = 0
        self._since = self._start = clock()
        self._cpu0 = cpu()
        self._skip = False
        self._low_since: float | None = None  # since when the load would fit one step lower
        self._tokens, self._filled = restart_burst, self._since
        self._restarted: float | None = None  # when a view was last let restart
        self._stepped: float | None = None  # when the factor last changed
        self.busy: float | None = None  # cores used in the last window
        self.restarts = 0  # views let restart, in all

    def may_restart(self) -> bool:
        """Whether a live view may run its page again now to take a new interval (or to stop its
        timer once its run has ended); if not, it keeps its timer and asks again on its next
        refresh."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.restart_burst, self._tokens + (now - self._filled) * self.restarts_per_s)
            self._filled = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            self._restarted = now
            self.restarts += 1
            return True

    def factor(self) -> int:
        now = self._clock()
        if now - self._start < self.window or self.budget <= 0:
            return LOAD_FACTORS[self._level]
        with self._lock:
            if now - self._start >= self.window:
                cpu = self._cpu()
                busy = (cpu - self._cpu0) / (now - self._start)
                restarting = (self._stepped is not None and now - self._stepped < self.hold_down
                              and self._restarted is not None and self._restarted >= self._start)
                self._start, self._cpu0 = now, cpu
                if self._skip or restarting:
                    self._skip = False
                else:
                    self.busy = busy
                    self._judge(busy, now)
            return LOAD_FACTORS[self._level]

    def _fits(self, busy: float, level: int) -> list[int]:
        """The levels below `level` at which the present load would stay under 70 % of the budget."""
        return [i for i in range(level) if busy * LOAD_FACTORS[level] / LOAD_FACTORS[i] < 0.7 * self.budget]

    def _judge(self, busy: float, now: float) -> None:
        level = self._level
        fits = self._fits(busy, level)
        self._low_since = (self._low_since or now - self.window) if fits else None
        if now - self._since < self.hold:
            return
        if busy > self.budget and level < len(LOAD_FACTORS) - 1:
            needed = LOAD_FACTORS[level] * busy / (0.9 * self.budget)
            level = next((i for i, f in enumerate(LOAD_FACTORS) if f >= needed), len(LOAD_FACTORS) - 1)
        elif fits and now - self._low_since >= self.hold_down:
            level = fits[0]
        if level != self._level:
            self._level, self._since, self._stepped, self._skip, self._low_since = level, now, now, True, None
