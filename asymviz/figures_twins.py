"""Twins overlaid: pure functions from the records of a run and its symmetric and dropout twins
(asymviz.twins) to plotly Figures, as the live Train page and the Runs page draw them.

    twins_curve_figure([(label, color, epochs), ...], "gap")
    twins_timing_figure([(label, color, steps), ...])

Curves share one x axis (epochs, or steps for timings), one color per role (the run being
watched in orange, symmetric in slate, dropout in green).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from asymviz.figures import BACKWARD, REFERENCE, TEMPLATE, TEST, downsample, series

ROLE_COLORS = {"main": BACKWARD, "symmetric": REFERENCE, "dropout": TEST}
CURVES = {"val/acc": "Validation accuracy", "gap": "Generalization gap (train - validation accuracy)",
          "train/loss": "Training loss", "val/loss": "Validation loss"}
_LAYOUT = dict(template=TEMPLATE, height=300, margin=dict(l=50, r=15, t=75, b=40), hovermode="x unified",
               legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0.0))


def _figure(data: list, title: str, x_title: str, y_title: str, y_format: str | None = None) -> go.Figure:
    layout = dict(_LAYOUT, title=dict(text=title, x=0.0, y=0.97, yanchor="top", font=dict(size=15)),
                  xaxis=dict(title=dict(text=x_title)), yaxis=dict(title=dict(text=y_title)))
    if y_format:
        layout["yaxis"]["tickformat"] = y_format
    fig = go.Figure(data=data, layout=layout)
    if not any(len(t.get("x", ())) for t in data):
        fig.add_annotation(text="No data yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                           font=dict(size=14, color=REFERENCE))
    return fig


def twins_curve_figure(runs: Sequence[tuple[str, str, Sequence[dict]]], key: str = "val/acc") -> go.Figure:
    """One epoch curve (key of the epoch records) per run: (label, color, epoch records)."""
    data = []
    for label, color, epochs in runs:
        x, y = series(downsample(list(epochs)), key, x="epoch")
        data.append(dict(type="scatter", x=x, y=y, mode="lines+markers" if len(x) <= 60 else "lines", name=label,
                         line=dict(color=color, width=2), marker=dict(size=5)))
    percent = key.endswith("acc") or key == "gap"
    return _figure(data, CURVES.get(key, key), "epoch", "", ".0%" if percent else None)


def rolling_median(values: np.ndarray, window: int) -> np.ndarray:
    """The median of each value's trailing window (fewer at the start): per-step timings are noisy."""
    if window <= 1 or len(values) == 0:
        return values
    values = np.asarray(values)
    head = [np.median(values[:i + 1]) for i in range(min(window - 1, len(values)))]  # the short windows
    full = np.median(np.lib.stride_tricks.sliding_window_view(values, window), axis=1) if len(values) >= window else []
    return np.concatenate([np.asarray(head, dtype=np.float32), np.asarray(full, dtype=np.float32)])


def twins_timing_figure(runs: Sequence[tuple[str, str, Sequence[dict]]], key: str = "time/backward_ms") -> go.Figure:
    """Backward time per step of each run: (label, color, step records), smoothed by a rolling
    median over about a fiftieth of the points (at least 1)."""
    data = []
    for label, color, steps in runs:
        x, y = series(downsample(list(steps)), key)
        y = rolling_median(y, max(1, len(y) // 50))
        data.append(dict(type="scatter", x=x, y=y, mode="lines", name=label, line=dict(color=color, width=2)))
    return _figure(data, "Backward time per step (rolling median)", "step", "ms")
