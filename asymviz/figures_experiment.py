"""Figures of the thesis experiment: pure functions, result tables in, `go.Figure` out.

    from asymviz import experiment as ex, figures_experiment as fx
    a = ex.analyze(store, exp_id)
    fx.confirmation_metric(a["confirmation"], "test_acc", "test accuracy")   # one panel per group
    fx.width_sweep(a["speed"], "backward", "claim 3")                      # speedup against width
    fx.meprop_comparison(a["anchor"], "meProp")                            # ours next to the paper
    fx.learning_curves(ex.curves(store, a["runs"], ...), "curves")

Intervals are the tables' 95 % t intervals (error bars or bands).
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = {"symmetric": "#64748b", "dropout": "#0f172a", "neuron": "#2563eb", "excessive": "#f97316",
          "refined": "#16a34a", "random": "#9333ea"}
DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]
METRIC_TITLES = {"test_acc": "test accuracy", "gap": "train - test gap of the tested model",
                 "test_loss": "test loss", "selection_metric": "validation accuracy", "backward_ms": "backward ms"}
# The legend stands right of the plots, below the top margin where the plotly toolbar appears.
_LAYOUT = dict(template="plotly_white", margin=dict(l=55, r=20, t=70, b=45), height=380,
               legend=dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02))


def _color(strategy: str) -> str:
    return COLORS.get(strategy, "#9333ea")


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _err(mean, lo, hi) -> tuple[list, list]:
    plus = [h - m if math.isfinite(h) and math.isfinite(m) else 0 for m, h in zip(mean, hi)]
    minus = [m - lo_ if math.isfinite(lo_) and math.isfinite(m) else 0 for m, lo_ in zip(mean, lo)]
    return plus, minus


def confirmation_metric(conf: pd.DataFrame, metric: str, title: str) -> go.Figure:
    """`metric` per arm with its interval (error bars), one panel per group (dataset,
    architecture, budget), from results.summarize(df, "confirmation")."""
    groups = list(dict.fromkeys(zip(conf["dataset"], conf["hidden"], conf["budget"]))) if len(conf) else []
    fig = make_subplots(rows=1, cols=max(1, len(groups)), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"{d}, {h}, {b}" for d, h, b in groups] or None)
    fig.update_layout(**_LAYOUT, title=dict(text=title, x=0.0, font=dict(size=15)), showlegend=False)
    fig.update_yaxes(title_text=METRIC_TITLES.get(metric, metric), row=1, col=1)
    for col, (d, h, b) in enumerate(groups, start=1):
        g = conf[(conf["dataset"] == d) & (conf["hidden"] == h) & (conf["budget"] == b)]
        plus, minus = _err(g[metric].tolist(), g[f"{metric}_lo"].tolist(), g[f"{metric}_hi"].tolist())
        fig.add_trace(go.Scatter(x=g["arm"].tolist(), y=g[metric].tolist(), mode="markers",
                                 marker=dict(size=10, color=[_color(s) for s in g["strategy"]]),
                                 error_y=dict(type="data", array=plus, arrayminus=minus, thickness=1.5),
                                 text=g["setting"].tolist(), hovertemplate="%{x}<br>%{text}<br>%{y:.4f}<extra></extra>"),
                      row=1, col=col)
    if not groups:
        fig.add_annotation(text="No confirmation runs yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def width_sweep(speed: pd.DataFrame, which: str, title: str, margin: float = 0.10) -> go.Figure:
    """Claim 3 as a curve: `which` ("backward" or "step") speedup (dense / sparse, with its
    interval as a band) against width, one line per (strategy, sparsity); 1x and the margin are
    drawn, and each point says its verdict."""
    fig = go.Figure()
    fig.update_layout(**_LAYOUT, title=dict(text=title, x=0.0, font=dict(size=15)))
    fig.update_xaxes(title_text="hidden width (log scale)", type="log")
    fig.update_yaxes(title_text=f"{which} speedup, dense / sparse (x)", type="log")
    if not len(speed):
        fig.add_annotation(text="The width sweep has not been measured yet", showarrow=False, xref="paper",
                           yref="paper", x=0.5, y=0.5)
        return fig
    widths = sorted(set(speed["width"]))
    for y, name, dash in ((1.0, "1x (as fast as dense)", "solid"), (1 + margin, f"+{margin:.0%} (the margin)", "dot")):
        fig.add_trace(go.Scatter(x=[widths[0], widths[-1]], y=[y, y], mode="lines", name=name,
                                 line=dict(color="#94a3b8", width=1, dash=dash)))
    for i, ((strategy, s), g) in enumerate(speed.groupby(["strategy", "sparsity"], sort=False)):
        g = g.sort_values("width")
        color = _color(strategy)
        lo, hi = g[f"{which}_lo"].tolist(), g[f"{which}_hi"].tolist()
        pts = [(w, a, b) for w, a, b in zip(g["width"], lo, hi) if math.isfinite(a) and math.isfinite(b)]
        if pts:
            xs, los, his = zip(*pts)
            fig.add_trace(go.Scatter(x=list(xs) + list(xs)[::-1], y=list(his) + list(los)[::-1], fill="toself",
                                     fillcolor=_rgba(color, 0.12), line=dict(width=0), hoverinfo="skip",
                                     showlegend=False))
        fig.add_trace(go.Scatter(x=g["width"].tolist(), y=g[f"{which}_speedup"].tolist(), mode="lines+markers",
                                 name=f"{strategy} s={s:g}", text=g[f"{which}_verdict"].tolist(),
                                 line=dict(color=color, width=2, dash=DASHES[i % len(DASHES)]),
                                 hovertemplate="width %{x}<br>%{y:.2f}x<br>%{text}<extra></extra>"))
    return fig


def meprop_comparison(anchor: pd.DataFrame, title: str) -> go.Figure:
    """The meProp anchor: our test accuracy per arm (with its interval) next to the published
    figures, and our backward speedup next to theirs."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["test accuracy", "backward speedup against dense"],
                        horizontal_spacing=0.1)
    fig.update_layout(**_LAYOUT, title=dict(text=title, x=0.0, font=dict(size=15)), barmode="group")
    if not len(anchor):
        return fig
    plus, minus = _err(anchor["test_acc"].tolist(), anchor["test_acc_lo"].tolist(), anchor["test_acc_hi"].tolist())
    fig.add_trace(go.Bar(x=anchor["arm"], y=anchor["test_acc"], name="ours", marker_color="#2563eb",
                         error_y=dict(type="data", array=plus, arrayminus=minus)), row=1, col=1)
    fig.add_trace(go.Bar(x=anchor["arm"], y=anchor["published_test_acc"], name="meProp paper",
                         marker_color="#f97316"), row=1, col=1)
    accs = [x for x in list(anchor["test_acc_lo"]) + list(anchor["published_test_acc"]) if math.isfinite(x)]
    if accs:
        fig.update_yaxes(range=[min(accs) - 0.01, 1.0], row=1, col=1)
    sparse = anchor[anchor["backward_speedup"].notna() | anchor["published_speedup"].notna()]
    plus, minus = _err(sparse["backward_speedup"].tolist(), sparse["backward_speedup_lo"].tolist(),
                       sparse["backward_speedup_hi"].tolist())
    fig.add_trace(go.Bar(x=sparse["arm"], y=sparse["backward_speedup"], name="ours (backward)", marker_color="#2563eb",
                         error_y=dict(type="data", array=plus, arrayminus=minus), showlegend=False), row=1, col=2)
    fig.add_trace(go.Bar(x=sparse["arm"], y=sparse["published_speedup"], name="paper (backprop)",
                         marker_color="#f97316", showlegend=False), row=1, col=2)
    return fig


def learning_curves(curves: pd.DataFrame, title: str) -> go.Figure:
    """Validation accuracy (solid) and train accuracy (dotted) per epoch of every arm, from
    experiment.curves()."""
    fig = go.Figure()
    fig.update_layout(**_LAYOUT, title=dict(text=title, x=0.0, font=dict(size=15)), hovermode="x unified")
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="accuracy (solid: validation, dotted: train)")
    if not len(curves):
        fig.add_annotation(text="No finished runs yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        return fig
    for arm, g in curves.groupby("arm", sort=False):
        color = _color(g["strategy"].iloc[0])
        dash = "dash" if "[" in arm else "solid"  # ablation arms: dashed, in their strategy's color
        fig.add_trace(go.Scatter(x=g["epoch"], y=g["val_acc"], mode="lines", name=arm, legendgroup=arm,
                                 line=dict(color=color, width=2, dash=dash)))
        fig.add_trace(go.Scatter(x=g["epoch"], y=g["train_acc"], mode="lines", name=f"{arm} (train)",
                                 legendgroup=arm, showlegend=False, line=dict(color=color, width=1, dash="dot")))
    return fig
