"""Plotly figure builders for the dashboard: pure functions, records in, `go.Figure` out.

    from asymviz import figures
    fig = figures.loss_figure(store.steps_downsampled(run_id, 300), store.epochs(run_id))
    text = figures.to_json(figures.loss_figure.spec(steps, epochs))   # the same figure, unvalidated

Inputs are the flat dicts the store returns (step records, epoch records, mask records,
selection counts, bench rows); nothing here reads a store, a file or the clock. Every figure
has a bounded size whatever the run length: curves are downsampled to `MAX_POINTS` points and
mask heatmaps binned to at most `MAX_STEPS` x `MAX_NEURONS` cells, so a long run costs the
browser and the server no more than a short one.

The run figures are written once, as plain dicts: `loss_figure(...)` validates them into a
`go.Figure` (the readable path, for pages, notebooks and tests); `loss_figure.spec(...)` returns
the dict as it is, and `to_json` writes it as plotly's own `to_json` would, about ten times
faster. The live views take that second path (asymviz.live), and a test holds both to the
same JSON.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from typing import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

MAX_POINTS = 400  # points per curve
MAX_STEPS = 300  # heatmap columns (steps)
MAX_NEURONS = 256  # heatmap rows (neurons)
MAX_SCATTER = 600  # data points drawn under a decision boundary

# One palette everywhere: the forward pass is blue, the backward pass (kept, gradient) orange.
FORWARD = "#2563eb"
BACKWARD = "#f97316"
DROPPED = "#cbd5e1"
TRAIN = "#2563eb"
VAL = "#f97316"
TEST = "#16a34a"
REFERENCE = "#64748b"
CLASS_COLORS = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea",
                "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"]
SERIES_COLORS = CLASS_COLORS

# The template is left minimal on purpose: the dashboard applies Streamlit's theme, and an embedded
# template (several KB) would travel with every live refresh. Pass a figure through
# `fig.update_layout(template="plotly_white")` to style it for use outside the dashboard.
TEMPLATE = "none"
# The legend sits left, between the title and the plot: the plotly toolbar takes the top right corner.
_LAYOUT = dict(template=TEMPLATE, margin=dict(l=50, r=20, t=72, b=45), height=320,
               legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0.0),
               hovermode="x unified")


class _Spec:
    """A figure as plain dicts, validated once by `go.Figure` at the end: several times faster
    than `add_trace` / `update_layout` call by call, which matters for a live view that rebuilds
    its figures every second."""

    def __init__(self, title: str, x_title: str | None = None, y_title: str | None = None, **layout):
        self.data: list[dict] = []
        self.shapes: list[dict] = []
        self.annotations: list[dict] = []
        self.layout = {**_LAYOUT, "title": dict(text=title, x=0.0, y=0.975, yanchor="top", font=dict(size=15)),
                       "xaxis": {"title": {"text": x_title}} if x_title else {},
                       "yaxis": {"title": {"text": y_title}} if y_title else {}, **layout}

    def trace(self, kind: str, **trace) -> None:
        self.data.append({"type": kind, **trace})

    def xaxis(self, **axis) -> None:
        self.layout["xaxis"].update(axis)

    def yaxis(self, **axis) -> None:
        self.layout["yaxis"].update(axis)

    def hline(self, y: float, line: dict, text: str | None = None, x: float = 0.0, anchor: str = "left") -> None:
        """A horizontal line across the plot at data height y, with an optional label above it."""
        self.shapes.append(dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=y, y1=y, line=line))
        if text:
            self.annotations.append(dict(text=text, xref="paper", x=x, xanchor=anchor, yref="y", y=y,
                                         yanchor="bottom", showarrow=False, font=dict(size=11, color=line["color"])))

    def note(self, text: str, **where) -> None:
        self.annotations.append(dict(text=text, xref="paper", yref="paper", showarrow=False,
                                     font=dict(size=11, color=REFERENCE), **where))

    def to_dict(self) -> dict:
        """The figure as plotly's dict form ({"data", "layout"}), not validated."""
        layout = dict(self.layout)
        if self.shapes:
            layout["shapes"] = self.shapes
        if self.annotations:
            layout["annotations"] = self.annotations
        return {"data": self.data, "layout": layout}

    def figure(self) -> go.Figure:
        return go.Figure(self.to_dict())

    def empty(self, text: str = "No data yet") -> _Spec:
        """The figure with no data and a line of text in the middle."""
        self.data = []
        self.annotations = [dict(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                                 font=dict(size=14, color=REFERENCE))]
        self.xaxis(showticklabels=False, showgrid=False, zeroline=False)
        self.yaxis(showticklabels=False, showgrid=False, zeroline=False)
        return self


def _builder(make):
    """One figure, two outputs: `f(...)` is the validated `go.Figure`, `f.spec(...)` the same
    figure as a plain dict for `to_json` (make(...) returns a _Spec)."""
    @functools.wraps(make)
    def figure(*args, **kwargs) -> go.Figure:
        return make(*args, **kwargs).figure()

    figure.spec = lambda *args, **kwargs: make(*args, **kwargs).to_dict()
    return figure


# plotly.js reads NumPy arrays sent as base64 "typed arrays"; it has no 64-bit integers, so
# those are narrowed to the smallest integer type that holds them (as plotly's to_json does).
_TYPED = {"float64": "f8", "float32": "f4", "int8": "i1", "int16": "i2", "int32": "i4",
          "uint8": "u1", "uint16": "u2", "uint32": "u4"}


def _typed_array(a: np.ndarray):
    if a.size == 0:
        return []
    if a.dtype == np.int64:
        lo, hi = int(a.min()), int(a.max())
        a = a.astype(next((t for t in (np.int8, np.int16, np.int32)
                           if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max), np.int64))
    code = _TYPED.get(str(a.dtype))
    if code is None:
        return a.tolist()
    typed = {"dtype": code, "bdata": base64.b64encode(np.ascontiguousarray(a)).decode("ascii")}
    if a.ndim > 1:
        typed["shape"] = ", ".join(str(d) for d in a.shape)
    return typed


def _json_default(value):
    if isinstance(value, np.ndarray):
        return _typed_array(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@functools.lru_cache(maxsize=4)
def _template(name: str) -> dict:
    """A named template as the dict go.Figure puts in its place (plotly.js knows no names)."""
    return json.loads(go.Figure(layout=dict(template=name)).to_json())["layout"]["template"]


def to_json(spec: dict) -> str:
    """A figure's plain dict (`builder.spec(...)`) as the JSON that plotly's `to_json` writes
    for the validated figure: NumPy arrays as base64 typed arrays, the template spelled out.
    Not validated: for the builders of this module, whose output the tests validate."""
    layout = spec.get("layout") or {}
    if isinstance(layout.get("template"), str):
        spec = {**spec, "layout": {**layout, "template": _template(layout["template"])}}
    try:
        return json.dumps(spec, default=_json_default, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN or an infinity outside the arrays: plotly's encoder writes null
        from plotly.io.json import to_json_plotly
        return to_json_plotly(json.loads(json.dumps(spec, default=_json_default)))


def _empty(fig: go.Figure, text: str = "No data yet") -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font=dict(size=14, color=REFERENCE))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


def _finite(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# -------------------------------------------------------------------------------------- helpers


def downsample(records: Sequence, max_points: int = MAX_POINTS) -> list:
    """At most max_points records spread evenly over the list, first and last included."""
    n = len(records)
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1; got {max_points}.")
    if n <= max_points:
        return list(records)
    if max_points == 1:
        return [records[-1]]
    return [records[(i * (n - 1)) // (max_points - 1)] for i in range(max_points)]


def series(records: Iterable[dict], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys) arrays of the records that have a finite `key` (missing and NaN values are
    skipped). ys are float32: plotly sends NumPy arrays as compact base64, and a chart needs no
    more precision."""
    records = list(records)
    ys = np.fromiter((_number(r.get(key)) for r in records), dtype=np.float64, count=len(records))
    xv = [r.get(x) for r in records]
    keep = np.isfinite(ys) & np.fromiter((v is not None for v in xv), dtype=bool, count=len(xv))
    return np.asarray([v for v, k in zip(xv, keep) if k]), ys[keep].astype(np.float32)


def _number(value) -> float:
    """A metric as a float; NaN for a missing or non-numeric one."""
    if type(value) is float or type(value) is int:
        return value
    x = _finite(value)
    return math.nan if x is None else x


def _epoch_mode(x) -> str:
    return "lines+markers" if len(x) <= 60 else "lines"


def _epoch_x(epochs: Sequence[dict], use_steps: bool) -> str:
    return "step" if use_steps and all(r.get("step") is not None for r in epochs) else "epoch"


# ------------------------------------------------------------------------------ the home picture


def network_figure(widths: Sequence[int] = (3, 6, 6, 2), kept: Sequence[Sequence[int]] | None = None,
                   height: int = 330) -> go.Figure:
    """Two copies of one small network: the forward pass lights every edge, the backward pass
    only the edges into the kept neurons (the output layer stays dense).

    widths: neurons per layer, input first; kept[i]: the kept neurons of hidden layer i
    (default: every other neuron, a 50 % sparsity).
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"A network needs at least an input and an output layer; got {widths}.")
    hidden = widths[1:-1]
    if kept is None:
        kept = [[j for j in range(w) if (j + i) % 2 == 0] for i, w in enumerate(hidden)]
    kept_sets = [set(k) for k in kept] + [set(range(widths[-1]))]  # output layer: dense
    tall = max(widths)

    def y_of(layer: int, j: int) -> float:
        return (tall - 1) / 2 - (widths[layer] - 1) / 2 + j

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        "Forward pass: every weight is used", "Backward pass: only kept neurons get gradient"))
    for col, phase in ((1, "forward"), (2, "backward")):
        lit_x, lit_y, dim_x, dim_y = [], [], [], []
        for layer in range(len(widths) - 1):
            for j in range(widths[layer + 1]):
                on = phase == "forward" or j in kept_sets[layer]
                xs, ys = (lit_x, lit_y) if on else (dim_x, dim_y)
                for i in range(widths[layer]):
                    xs += [layer, layer + 1, None]
                    ys += [y_of(layer, i), y_of(layer + 1, j), None]
        color = FORWARD if phase == "forward" else BACKWARD
        fig.add_trace(go.Scatter(x=dim_x, y=dim_y, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color=DROPPED, width=1, dash="dot")), 1, col)
        fig.add_trace(go.Scatter(x=lit_x, y=lit_y, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color=color, width=1.6)), 1, col)
        nx, ny, ncolor, ntext = [], [], [], []
        for layer, w in enumerate(widths):
            for j in range(w):
                is_hidden = 0 < layer < len(widths) - 1
                on = phase == "forward" or not is_hidden or j in kept_sets[layer - 1]
                nx.append(layer)
                ny.append(y_of(layer, j))
                if phase == "backward" and layer == 0:
                    ncolor.append("#94a3b8")  # inputs take no gradient
                else:
                    ncolor.append(color if on else "#ffffff")
                role = "input" if layer == 0 else "output" if layer == len(widths) - 1 else f"hidden {layer}"
                ntext.append(f"{role} neuron {j}" + ("" if on else ": dropped from the backward"))
        fig.add_trace(go.Scatter(x=nx, y=ny, mode="markers", text=ntext, hoverinfo="text", showlegend=False,
                                 marker=dict(size=17, color=ncolor, line=dict(color="#334155", width=1.5))),
                      1, col)
    fig.add_annotation(text="data flows left to right →", x=0.22, y=-0.08, xref="paper", yref="paper",
                       showarrow=False, font=dict(color=FORWARD))
    fig.add_annotation(text="← error flows right to left", x=0.78, y=-0.08, xref="paper", yref="paper",
                       showarrow=False, font=dict(color=BACKWARD))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(template=TEMPLATE, height=height, margin=dict(l=10, r=10, t=40, b=30),
                      hovermode="closest")
    return fig


# ---------------------------------------------------------------------------------- run curves


def _curves(spec: _Spec, steps: Sequence[dict], epochs: Sequence[dict], step_key: str, step_name: str,
            epoch_keys: tuple[str, str], max_points: int) -> None:
    """Faint per-step values, then the train and validation values of every epoch, against steps."""
    xs, ys = series(downsample(steps, max_points), step_key)
    if len(xs):
        spec.trace("scatter", x=xs, y=ys, name=step_name, mode="lines", line=dict(color=TRAIN, width=1), opacity=0.35)
    ex = _epoch_x(epochs, bool(steps))
    if ex == "epoch" and not len(xs):
        spec.xaxis(title={"text": "epoch"})
    epochs = downsample(epochs, max_points)
    for key, name, color in ((epoch_keys[0], "train", TRAIN), (epoch_keys[1], "validation", VAL)):
        x, y = series(epochs, key, ex)
        if len(x):
            spec.trace("scatter", x=x, y=y, name=name, mode=_epoch_mode(x), line=dict(color=color, width=2.5))


@_builder
def loss_figure(steps: Sequence[dict], epochs: Sequence[dict], max_points: int = MAX_POINTS) -> _Spec:
    """Training loss per step (faint) and train / validation loss per epoch, against steps."""
    spec = _Spec("Loss", "step", "cross-entropy")
    _curves(spec, steps, epochs, "train/loss", "batch loss", ("train/loss", "val/loss"), max_points)
    return spec if spec.data else spec.empty("Waiting for the first step ...")


@_builder
def accuracy_figure(steps: Sequence[dict], epochs: Sequence[dict], max_points: int = MAX_POINTS) -> _Spec:
    """Batch accuracy per step (faint) and train / validation accuracy per epoch."""
    spec = _Spec("Accuracy", "step", "accuracy")
    _curves(spec, steps, epochs, "train/batch_acc", "batch accuracy", ("train/acc", "val/acc"), max_points)
    if not spec.data:
        return spec.empty("Waiting for the first step ...")
    spec.yaxis(range=[0, 1.02], tickformat=".0%")
    return spec


@_builder
def gap_figure(epochs: Sequence[dict], max_points: int = MAX_POINTS) -> _Spec:
    """Generalization gap (train accuracy - validation accuracy) per epoch: above 0 is overfitting."""
    spec = _Spec("Generalization gap (train − validation accuracy)", "epoch", "gap",
                 showlegend=False, hovermode="closest", bargap=0.1)
    x, y = series(downsample(epochs, max_points), "gap", "epoch")
    if not len(x):
        return spec.empty("The gap appears after the first epoch")
    m = float(np.abs(y).max()) or 1.0
    spec.trace("bar", x=x, y=y, name="gap", marker=dict(  # orange above 0 (overfitting), blue below
        color=y, cmin=-m, cmax=m, colorscale=[[0, TRAIN], [0.5, TRAIN], [0.5, VAL], [1, VAL]]),
        hovertemplate="epoch %{x}<br>gap %{y:.2%}<extra></extra>")
    spec.hline(0.0, dict(color=REFERENCE, width=1))
    spec.yaxis(tickformat=".1%")
    return spec


@_builder
def timing_figure(steps: Sequence[dict], reference: dict | None = None,
                  max_points: int = MAX_POINTS) -> _Spec:
    """Forward, backward and optimizer milliseconds per step; with `reference` (the summary or
    mean timings of the symmetric run of the same config: backward_ms_mean, step_ms_mean,
    and optional "label") a dashed line marks its mean backward time. Rare spikes (another
    process, a garbage collection) are cut off rather than flattening the rest."""
    spec = _Spec("Time per step", "step", "milliseconds")
    points = downsample(steps, max_points)
    values = []
    for key, name, color, dash in (("time/backward_ms", "backward", BACKWARD, None),
                                   ("time/forward_ms", "forward", FORWARD, None),
                                   ("time/optimizer_ms", "optimizer", TEST, "dot")):
        x, y = series(points, key)
        if len(x):
            line = dict(color=color, width=1.5, **({"dash": dash} if dash else {}))
            spec.trace("scatter", x=x, y=y, name=name, mode="lines", line=line)
            values.append(y)
    if not spec.data:
        return spec.empty("Waiting for the first step ...")
    values = np.concatenate(values).astype(np.float64)
    top = float(values.max())
    if len(values) >= 20 and top > float(np.percentile(values, 95)) * 2.5:
        top = float(np.percentile(values, 95)) * 2.5
        spec.note("rare spikes are cut off", x=1.0, y=-0.12, xanchor="right", yanchor="top")
    ref = _finite((reference or {}).get("backward_ms_mean"))
    if ref is not None:
        label = (reference or {}).get("label") or "symmetric run"
        spec.hline(ref, dict(color=REFERENCE, width=2, dash="dash"), f"{label}: backward {ref:.2f} ms")
        top = max(top, ref)
    spec.yaxis(range=[0, top * 1.08])
    return spec


# ---------------------------------------------------------------------------------- masks


def mask_matrix(masks: Sequence[dict], n: int | None = None, max_steps: int = MAX_STEPS,
                max_neurons: int = MAX_NEURONS) -> tuple[np.ndarray, list[int], int]:
    """(z (neuron bins, step columns) of kept fractions, column steps, neurons per bin).

    masks: one layer's records {step, n, kept}; more than max_steps records are strided,
    more than max_neurons neurons are binned (a cell is the fraction of its neurons kept).
    """
    records = downsample(sorted(masks, key=lambda r: r["step"]), max_steps)
    if n is None:
        n = max((int(r["n"]) for r in records), default=0)
    bin_size = max(1, math.ceil(n / max_neurons)) if n else 1
    rows = math.ceil(n / bin_size) if n else 0
    z = np.zeros((rows, len(records)), dtype=np.float32)
    per_bin = np.bincount(np.arange(n) // bin_size, minlength=rows).astype(np.float32) if n else np.ones(0)
    for c, r in enumerate(records):
        kept = np.asarray(r["kept"], dtype=np.int64)
        kept = kept[(kept >= 0) & (kept < n)]
        if kept.size:
            z[:, c] = np.bincount(kept // bin_size, minlength=rows)[:rows]
    if rows:
        z /= per_bin[:, None]
    return z, [int(r["step"]) for r in records], bin_size


@_builder
def mask_heatmap(masks: Sequence[dict], layer: int = 0, n: int | None = None,
                 max_steps: int = MAX_STEPS, max_neurons: int = MAX_NEURONS) -> _Spec:
    """Steps x neurons heatmap of which neurons the backward kept in one layer."""
    spec = _Spec(f"Kept neurons per step, hidden layer {layer + 1}", "step", "neuron", hovermode="closest")
    z, steps, bin_size = mask_matrix(masks, n, max_steps, max_neurons)
    if not steps or z.size == 0:
        return spec.empty("No gradient masks recorded yet")
    label = "neuron" if bin_size == 1 else f"neurons (bins of {bin_size})"
    spec.trace("heatmap", z=z, x=np.asarray(steps), y=np.arange(z.shape[0]) * bin_size, zmin=0, zmax=1,
               colorscale=[[0, "#f8fafc"], [1, BACKWARD]],
               colorbar=dict(title=dict(text="kept"), thickness=10, tickformat=".0%"),
               hovertemplate="step %{x}<br>" + label + " %{y}<br>kept %{z:.0%}<extra></extra>")
    spec.yaxis(title={"text": label}, autorange="reversed")
    return spec


@_builder
def selection_figure(counts: Sequence[int], n_records: int, layer: int = 0, keep: int | None = None,
                     max_neurons: int = MAX_NEURONS * 2, sort: bool = False) -> _Spec:
    """How often each neuron was kept (fraction of recorded steps), one bar per neuron (binned
    beyond max_neurons). With `keep` (kept neurons per step) a dashed line marks what a uniform
    choice would give, keep / n: bars far above it are neurons the top-k keeps choosing."""
    spec = _Spec(f"How often each neuron was kept, hidden layer {layer + 1}", "neuron", "fraction of steps",
                 hovermode="closest", showlegend=False, bargap=0.05)
    n = len(counts)
    if not n or n_records <= 0:
        return spec.empty("No gradient masks recorded yet")
    freq = np.asarray(counts, dtype=np.float64) / float(n_records)
    if sort:
        freq = np.sort(freq)[::-1]
        spec.xaxis(title={"text": "neurons, most often kept first"})
    bin_size = max(1, math.ceil(n / max_neurons))
    if bin_size > 1:
        pad = (-n) % bin_size
        freq = np.concatenate([freq, np.full(pad, np.nan)]).reshape(-1, bin_size)
        freq = np.nanmean(freq, axis=1)
    spec.trace("bar", x=np.arange(len(freq)) * bin_size, y=freq.astype(np.float32), marker=dict(color=BACKWARD),
               name="kept", hovertemplate="neuron %{x}<br>kept in %{y:.0%} of steps<extra></extra>")
    if keep:
        spec.hline(keep / n, dict(color=REFERENCE, width=1.5, dash="dash"), f"uniform choice: {keep / n:.0%}",
                   x=1.0, anchor="right")
    spec.yaxis(range=[0, 1.02], tickformat=".0%")
    return spec


@_builder
def connection_figure(mask, title: str = "Connection mask", max_size: int = MAX_NEURONS) -> _Spec:
    """A snapshot of one layer's connection mask (n_out x n_in booleans: which weights got
    gradient), block-averaged to at most max_size x max_size cells."""
    spec = _Spec(title, "input unit", "output neuron", hovermode="closest")
    m = np.asarray(mask, dtype=np.float32) if mask is not None else np.zeros((0, 0), np.float32)
    if m.ndim != 2 or m.size == 0:
        return spec.empty("No connection mask recorded yet")
    br, bc = max(1, math.ceil(m.shape[0] / max_size)), max(1, math.ceil(m.shape[1] / max_size))
    if br > 1 or bc > 1:
        rows, cols = math.ceil(m.shape[0] / br), math.ceil(m.shape[1] / bc)
        padded = np.full((rows * br, cols * bc), np.nan, np.float32)
        padded[: m.shape[0], : m.shape[1]] = m
        m = np.nanmean(padded.reshape(rows, br, cols, bc), axis=(1, 3))
    spec.trace("heatmap", z=m, x=np.arange(m.shape[1]) * bc, y=np.arange(m.shape[0]) * br, zmin=0, zmax=1,
               colorscale=[[0, "#f8fafc"], [1, BACKWARD]], colorbar=dict(title=dict(text="used"), thickness=10),
               hovertemplate="output %{y}<br>input %{x}<br>used %{z:.0%}<extra></extra>")
    spec.yaxis(autorange="reversed")
    return spec


# ---------------------------------------------------------------------------- decision boundary


def grid_classes(grid: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(cls (ny, nx) predicted class, conf (ny, nx) its probability, number of classes) of a
    decision grid in either form: {"cls", "conf"} (asymviz.recording.decision_grid) or
    {"prob": ny x nx x C} (asymviz.train.predict_grid)."""
    if grid.get("prob") is not None:
        prob = np.asarray(grid["prob"], dtype=np.float32)  # (ny, nx, C)
        return prob.argmax(-1), prob.max(-1), prob.shape[-1]
    cls = np.asarray(grid["cls"], dtype=np.int64)  # (ny, nx)
    conf = np.asarray(grid["conf"], dtype=np.float32)  # (ny, nx)
    return cls, conf, int(grid.get("n_classes") or (cls.max() + 1 if cls.size else 0))


def _blend(color: str, amount: np.ndarray) -> np.ndarray:
    """(..., 3) RGB between white (amount 0) and `color` (amount 1)."""
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)
    return 255.0 + (rgb - 255.0) * amount[..., None]


@_builder
def boundary_figure(grid: dict | None, points: Sequence[Sequence[float]] | None = None,
                    labels: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                    title: str = "Decision boundary", n_classes: int | None = None,
                    max_points: int = MAX_SCATTER) -> _Spec:
    """The model's decision regions over a 2-D input grid, with the data on top.

    grid: {"x": [nx], "y": [ny]} with {"cls", "conf"} (ny x nx predicted class and its
    probability) or {"prob": ny x nx x C}; points / labels: data to scatter (at most max_points
    are drawn, evenly strided). Each region has its class's color, paler where the model is unsure;
    with two classes a black line marks the boundary (probability 0.5).
    """
    spec = _Spec(title, "x₁", "x₂", hovermode="closest", height=400)
    has_grid = bool(grid) and (len(grid.get("prob") or []) > 0 or len(grid.get("cls") or []) > 0)
    if has_grid:
        cls, conf, c = grid_classes(grid)
        c = max(c, n_classes or 0, 2)
        sure = np.clip((conf - 1.0 / c) / (1.0 - 1.0 / c), 0.0, 1.0) * 0.45  # white at chance, pale when certain
        rgb = np.zeros(cls.shape + (3,), dtype=np.float32)
        for k in range(c):
            sel = cls == k
            rgb[sel] = _blend(CLASS_COLORS[k % len(CLASS_COLORS)], sure[sel])
        xs, ys = list(grid["x"]), list(grid["y"])
        dx = (xs[-1] - xs[0]) / max(1, len(xs) - 1)
        dy = (ys[-1] - ys[0]) / max(1, len(ys) - 1)
        spec.trace("image", z=rgb.astype(np.uint8), x0=xs[0], dx=dx, y0=ys[0], dy=dy, hoverinfo="skip")
        if c == 2:
            p1 = np.where(cls == 1, conf, 1.0 - conf).astype(np.float32)  # P(class 1)
            spec.trace("contour", x=np.asarray(xs), y=np.asarray(ys), z=p1, showscale=False, hoverinfo="skip",
                       showlegend=False, contours=dict(start=0.5, end=0.5, size=1, coloring="none"),
                       line=dict(color="#0f172a", width=2))
    if points is not None and labels is not None and len(points):
        pts = np.asarray(points, dtype=np.float32)
        lab = np.asarray(labels)
        idx = np.asarray(downsample(list(range(len(pts))), max_points), dtype=np.int64)
        pts, lab = pts[idx], lab[idx]
        for k in sorted(set(lab.tolist())):
            sel = lab == k
            name = class_names[k] if class_names and k < len(class_names) else f"class {k}"
            spec.trace("scatter", x=pts[sel, 0], y=pts[sel, 1], mode="markers", name=name,
                       marker=dict(size=6, color=CLASS_COLORS[k % len(CLASS_COLORS)],
                                   line=dict(color="#0f172a", width=0.6)))
    if not spec.data:
        return spec.empty("The boundary appears after the first epoch")
    if has_grid:
        spec.xaxis(range=[min(grid["x"]), max(grid["x"])], showgrid=False)
        spec.yaxis(range=[min(grid["y"]), max(grid["y"])], showgrid=False, autorange=False)
    return spec


# ----------------------------------------------------------------------------------- compare


@_builder
def compare_figure(runs: Sequence[tuple[str, Sequence[dict]]], key: str = "val/acc",
                   title: str | None = None, x: str = "epoch") -> _Spec:
    """One curve per run: runs is [(label, epoch records)], plotted as `key` against `x`."""
    titles = {"val/acc": "Validation accuracy", "train/acc": "Training accuracy", "val/loss": "Validation loss",
              "train/loss": "Training loss", "gap": "Generalization gap"}
    spec = _Spec(title or titles.get(key, key), x, key)
    for i, (label, records) in enumerate(runs):
        xs, ys = series(downsample(records, MAX_POINTS), key, x)
        if len(xs):
            spec.trace("scatter", x=xs, y=ys, name=label, mode=_epoch_mode(xs),
                       line=dict(color=SERIES_COLORS[i % len(SERIES_COLORS)], width=2))
    if not spec.data:
        return spec.empty("Select runs that have finished at least one epoch")
    if key.endswith("acc") or key == "gap":
        spec.yaxis(tickformat=".0%")
    return spec


# ---------------------------------------------------------------------------------- bench


def bench_figure(rows: Sequence[dict]) -> go.Figure:
    """Backward timing on this machine: left, dense vs sparse backward milliseconds per
    sparsity; right, the measured speedup against the ideal (FLOP-ratio) speedup, with the
    break-even line at 1x. Rows are asymviz.bench.backward_table rows."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "Backward time per step", "Speedup of the backward over dense"))
    fig.update_layout(template=TEMPLATE, height=380, margin=dict(l=55, r=20, t=60, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=-0.32, x=0.0), hovermode="x unified")
    rows = sorted(rows, key=lambda r: r["sparsity"])
    if not rows:
        return _empty(fig, "Run a measurement to see the timings")
    s = [r["sparsity"] for r in rows]
    fig.add_trace(go.Scatter(x=s, y=[r["dense_backward_ms"] for r in rows], name="dense backward",
                             mode="lines+markers", line=dict(color=FORWARD, width=2)), 1, 1)
    fig.add_trace(go.Scatter(x=s, y=[r["sparse_backward_ms"] for r in rows], name="sparse backward",
                             mode="lines+markers", line=dict(color=BACKWARD, width=2.5)), 1, 1)
    if all(r.get("forward_ms") is not None for r in rows):
        fig.add_trace(go.Scatter(x=s, y=[r["forward_ms"] for r in rows], name="forward (stays dense)",
                                 mode="lines", line=dict(color=REFERENCE, width=1.5, dash="dot")), 1, 1)
    fig.add_trace(go.Scatter(x=s, y=[r["ideal"] for r in rows], name="ideal (FLOP ratio)", mode="lines+markers",
                             line=dict(color=REFERENCE, width=2, dash="dash")), 1, 2)
    fig.add_trace(go.Scatter(x=s, y=[r["backward_speedup"] for r in rows], name="measured speedup",
                             mode="lines+markers", line=dict(color=BACKWARD, width=2.5)), 1, 2)
    if all(r.get("step_speedup") is not None for r in rows):
        fig.add_trace(go.Scatter(x=s, y=[r["step_speedup"] for r in rows], name="whole-step speedup",
                                 mode="lines+markers", line=dict(color=TEST, width=1.5, dash="dot")), 1, 2)
    fig.add_hline(y=1.0, line=dict(color="#0f172a", width=1), row=1, col=2)
    fig.add_annotation(text="break-even: below it, sparse is slower", x=1.0, xref="x2 domain", xanchor="right",
                       y=0.0, yref="y2", yanchor="top", showarrow=False,  # y in log10 units on a log axis
                       font=dict(size=11, color="#0f172a"))
    speeds = [v for r in rows for v in (r["ideal"], r["backward_speedup"], r.get("step_speedup") or 1.0)]
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200)
             if min(speeds) / 2.5 <= t <= max(speeds) * 2.5]
    fig.update_xaxes(title_text="sparsity", tickformat=".0%")
    fig.update_yaxes(title_text="milliseconds", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="× faster (log scale)", type="log", tickvals=ticks,
                     ticktext=[f"{t:g}x" for t in ticks], row=1, col=2)
    return fig


def selection_counts(masks: Iterable[dict], n: int) -> tuple[list[int], int]:
    """(counts, records): counts[i] is how many of these mask records kept neuron i."""
    counts = np.zeros(n, dtype=np.int64)
    records = 0
    for r in masks:
        kept = np.asarray(r["kept"], dtype=np.int64)
        kept = kept[(kept >= 0) & (kept < n)]
        counts += np.bincount(kept, minlength=n)[:n]
        records += 1
    return counts.tolist(), records
