"""Figures of the thesis experiment: pure functions, summary tables in, `go.Figure` out.

    from asymviz import experiment as ex, figures_experiment as fx
    tables = ex.summarize(ex.collect(store, exp_id))
    fx.metric_vs_sparsity(tables["settings"].query("dataset == 'digits'"), "test_acc", "digits")

Asymmetric strategies are lines over sparsity with their 95 % interval as a band; symmetric
and each dropout p do not depend on sparsity, so they are horizontal lines with a band.
One subplot per budget (equal, converge).
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = {"symmetric": "#64748b", "dropout": "#0f172a", "neuron": "#2563eb", "excessive": "#f97316",
          "refined": "#16a34a", "random": "#9333ea"}
DASHES = ["dash", "dot", "dashdot", "longdash"]
SPARSE = ("neuron", "excessive", "refined", "random")
METRIC_TITLES = {"test_acc": "test accuracy", "best_val_acc": "best validation accuracy",
                 "model_gap": "gap of the tested model (train - val acc)", "gap": "gap at the end",
                 "best_gap": "gap at the best epoch", "backward_ms": "backward ms per step",
                 "step_ms": "step ms per step", "epochs": "epochs trained"}
# The legend stands right of the plots, below the top margin where the plotly toolbar appears.
_LAYOUT = dict(template="plotly_white", margin=dict(l=55, r=20, t=70, b=45), height=360,
               legend=dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02))


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _frame(budgets: list[str], title: str, y_title: str) -> go.Figure:
    fig = make_subplots(rows=1, cols=max(1, len(budgets)), shared_yaxes=True,
                        subplot_titles=[f"{b} budget" for b in budgets] or None, horizontal_spacing=0.06)
    fig.update_layout(**_LAYOUT, title=dict(text=title, x=0.0, font=dict(size=15)))
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    for i in range(len(budgets)):
        fig.update_xaxes(title_text="sparsity s (fraction of neurons dropped in backward)", row=1, col=i + 1)
    return fig


def _band(fig, x, lo, hi, color, group, col) -> None:
    pts = [(a, b, c) for a, b, c in zip(x, lo, hi) if math.isfinite(b) and math.isfinite(c)]
    if not pts:
        return
    xs, los, his = zip(*pts)
    fig.add_trace(go.Scatter(x=list(xs) + list(xs)[::-1], y=list(his) + list(los)[::-1], fill="toself",
                             fillcolor=_rgba(color, 0.15), line=dict(width=0), hoverinfo="skip",
                             showlegend=False, legendgroup=group), row=1, col=col)


def _budgets(settings: pd.DataFrame) -> list[str]:
    return [b for b in ("equal", "converge") if b in set(settings["budget"])]


def metric_vs_sparsity(settings: pd.DataFrame, metric: str, title: str) -> go.Figure:
    """`metric` (a column of summarize()'s settings, with _lo/_hi) against sparsity, one
    subplot per budget; the rows should be of one dataset."""
    budgets = _budgets(settings) if len(settings) else []
    fig = _frame(budgets, title, METRIC_TITLES.get(metric, metric))
    if not len(settings):
        return fig
    sparse = settings[settings["strategy"].isin(SPARSE)]
    x_range = [float(sparse["sparsity"].min()), float(sparse["sparsity"].max())] if len(sparse) else [0.0, 1.0]
    if x_range[0] == x_range[1]:
        x_range = [x_range[0] - 0.05, x_range[1] + 0.05]
    for col, budget in enumerate(budgets, start=1):
        g = settings[settings["budget"] == budget]
        for label in SPARSE:
            s = g[g["strategy"] == label].sort_values("sparsity")
            if not len(s):
                continue
            x = s["sparsity"].tolist()
            _band(fig, x, s[f"{metric}_lo"].tolist(), s[f"{metric}_hi"].tolist(), COLORS[label], label, col)
            fig.add_trace(go.Scatter(x=x, y=s[metric].tolist(), mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=col == 1,
                                     line=dict(color=COLORS[label], width=2,
                                               dash="dot" if label == "random" else "solid")), row=1, col=col)
        flat = g[~g["strategy"].isin(SPARSE)]
        for i, r in enumerate(flat.itertuples()):
            color = COLORS[r.strategy]
            name = r.setting
            y, lo, hi = getattr(r, metric), getattr(r, f"{metric}_lo"), getattr(r, f"{metric}_hi")
            _band(fig, x_range, [lo, lo], [hi, hi], color, name, col)
            fig.add_trace(go.Scatter(x=x_range, y=[y, y], mode="lines", name=name, legendgroup=name,
                                     showlegend=col == 1,
                                     line=dict(color=color, width=1.5, dash=DASHES[i % len(DASHES)])), row=1, col=col)
    return fig


def speedup_vs_sparsity(settings: pd.DataFrame, title: str) -> go.Figure:
    """Backward speedup versus symmetric (ratio of mean backward ms) against sparsity, one
    subplot per budget; above 1 is faster. Dropout is a horizontal line."""
    budgets = _budgets(settings) if len(settings) else []
    fig = _frame(budgets, title, "backward speedup vs symmetric (x)")
    if not len(settings):
        return fig
    sparse = settings[settings["strategy"].isin(SPARSE)]
    x_range = [float(sparse["sparsity"].min()), float(sparse["sparsity"].max())] if len(sparse) else [0.0, 1.0]
    for col, budget in enumerate(budgets, start=1):
        g = settings[settings["budget"] == budget]
        fig.add_trace(go.Scatter(x=x_range, y=[1, 1], mode="lines", name="symmetric (1x)", legendgroup="symmetric",
                                 showlegend=col == 1, line=dict(color=COLORS["symmetric"], width=1)), row=1, col=col)
        for label in SPARSE:
            s = g[g["strategy"] == label].sort_values("sparsity")
            if len(s):
                fig.add_trace(go.Scatter(x=s["sparsity"].tolist(), y=s["backward_speedup"].tolist(),
                                         mode="lines+markers", name=label, legendgroup=label, showlegend=col == 1,
                                         line=dict(color=COLORS[label], width=2,
                                                   dash="dot" if label == "random" else "solid")), row=1, col=col)
        for i, r in enumerate(g[g["strategy"] == "dropout"].itertuples()):
            fig.add_trace(go.Scatter(x=x_range, y=[r.backward_speedup] * 2, mode="lines", name=r.setting,
                                     legendgroup=r.setting, showlegend=col == 1,
                                     line=dict(color=COLORS["dropout"], width=1.5, dash=DASHES[i % len(DASHES)])),
                          row=1, col=col)
    return fig


def learning_curves(curves: pd.DataFrame, title: str) -> go.Figure:
    """Validation accuracy (solid) and train accuracy (dotted) per epoch of every setting of a
    cell, from experiment.curves()."""
    fig = go.Figure()
    fig.update_layout(**_LAYOUT, title=dict(text=title, x=0.0, font=dict(size=15)), hovermode="x unified")
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="accuracy (solid: validation, dotted: train)")
    if not len(curves):
        fig.add_annotation(text="No finished runs yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        return fig
    seen: dict[str, int] = {}
    for setting, g in curves.groupby("setting", sort=False):
        label = g["strategy"].iloc[0]
        i = seen[label] = seen.get(label, -1) + 1
        color = COLORS.get(label, "#000000")
        width = 2 if label in ("neuron", "excessive", "refined") else 1.5
        fig.add_trace(go.Scatter(x=g["epoch"], y=g["val_acc"], mode="lines", name=setting, legendgroup=setting,
                                 line=dict(color=color, width=width, dash="solid" if i == 0 else DASHES[i % 4])))
        fig.add_trace(go.Scatter(x=g["epoch"], y=g["train_acc"], mode="lines", name=f"{setting} (train)",
                                 legendgroup=setting, showlegend=False, line=dict(color=color, width=1, dash="dot")))
    return fig
