"""The network, live: pure functions from a network snapshot to a plotly Figure.

    fig = network_figure(pace.snapshot(store, run_id))     # a small network, neuron by neuron
    spec = network_figure.spec(snapshot)                  # the same as a plain dict (figures.to_json)
    fig = summary_figure(widths, counts, keep)            # a larger one: how often neurons were kept

`network_figure` draws every neuron as a circle and every connection as a line whose color is
the weight's sign (blue positive, red negative) and whose width is its magnitude: the forward
pass, which always uses all of them. Over it, in orange, what the backward pass of the
snapshot's step used: the neurons that got gradient (filled) and the connections whose weight
got gradient (a glow under the line). On 2-D data each hidden neuron shows its own output over
the input plane as a small heat map (blue positive, red negative, white zero), as TensorFlow
Playground does; the two inputs show the plane's coordinates. Hovering a neuron says whether it
was kept at this step and in how many of the steps so far.

The neuron trace is named "neurons" and carries customdata [column, index, kept (1/0)] per
neuron (column 0 is the input layer), so a page or a test can read what is highlighted.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from asymviz.figures import BACKWARD, DROPPED, FORWARD, REFERENCE, TEMPLATE
from asymviz.snapshot import dequantize

POSITIVE = FORWARD  # weight and output signs
NEGATIVE = "#dc2626"
INPUT = "#94a3b8"
MAX_COLUMN = 16  # a column with more neurons (inputs) is drawn closer together
WIDTHS_PX = (0.6, 1.3, 2.2, 3.4)  # line width by quarter of the largest |weight|
SUMMARY_BINS = 64


# ------------------------------------------------------------------------------------ helpers

def _png(rgb: np.ndarray) -> str:
    """An (h, w, 3) uint8 image as a PNG data URI (a few hundred bytes for 16 x 16)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)


def heat_rgb(values: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] (rows following y, lowest first) as an image, top row highest y:
    white at 0, toward blue for positive and red for negative."""
    v = np.clip(np.nan_to_num(values), -1, 1)[::-1]  # (h, w): image rows go top down
    white = np.full(3, 255.0, dtype=np.float32)
    pos, neg = _rgb(POSITIVE), _rgb(NEGATIVE)
    amount = np.abs(v)[..., None]
    target = np.where(v[..., None] >= 0, pos, neg)
    return (white + (target - white) * amount).round().astype(np.uint8)


def column_positions(width: int) -> tuple[np.ndarray, float]:
    """y of each neuron of a column (top first, centred on 0) and the column's spacing."""
    spacing = min(1.0, MAX_COLUMN / width)
    return ((width - 1) / 2 - np.arange(width)) * spacing, spacing


def _kept_sets(snapshot: dict) -> list[set | None]:
    """Per linear layer, the neurons that got gradient at the snapshot's step (None: all)."""
    if not snapshot.get("step"):
        return [set() for _ in snapshot["weights"]]  # before the first step nothing got any
    return [None if k is None else set(k) for k in snapshot["kept"]]


def _edge_has_gradient(conn: dict | None, kept_order: dict, i: int, j: int) -> bool:
    if conn is None:
        return True
    if "cols" in conn:
        return i in conn["_cols"]
    return bool(conn["mask"][kept_order[j]][i])


# ------------------------------------------------------------------------------ the live network

def network_figure(snapshot: dict | None, title: str | None = None) -> go.Figure:
    """A small network at the snapshot's step (see the module docstring); a note when None.
    `network_figure.spec(...)` is the same figure as a plain dict, for `figures.to_json`."""
    return go.Figure(_network_spec(snapshot, title))


def _network_spec(snapshot: dict | None, title: str | None = None) -> dict:
    if not snapshot:
        return {"data": [], "layout": dict(
            template=TEMPLATE, height=320, xaxis=dict(visible=False), yaxis=dict(visible=False),
            title=dict(text=title or "Network", x=0.0),
            annotations=[dict(text="No picture of the network yet: it appears once the run has started.",
                              showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                              font=dict(size=14, color=REFERENCE))])}
    widths = [int(w) for w in snapshot["widths"]]
    weights = [np.asarray(w, dtype=np.float32) for w in snapshot["weights"]]
    kept = _kept_sets(snapshot)
    conns = [None if c is None else {**c, "_cols": set(c.get("cols", ()))} for c in snapshot["conn"]]
    counts, counted = snapshot.get("counts") or [None] * len(weights), int(snapshot.get("counted") or 0)
    columns = [column_positions(w) for w in widths]
    tall = min(max(widths), MAX_COLUMN)
    height = int(max(340, min(720, 80 + 48 * tall)))
    top, bottom = 45, 15
    y_span = tall + 0.6
    ppu = (height - top - bottom) / y_span  # pixels per unit of y
    size = min(40.0, 0.8 * ppu)
    wmax = max((float(np.abs(w).max()) for w in weights if w.size), default=1.0) or 1.0

    glow_x, glow_y = [], []
    buckets: dict[tuple[bool, int], tuple[list, list]] = {}
    for layer, w in enumerate(weights):  # layer l connects column l to column l + 1
        ys_in, ys_out = columns[layer][0], columns[layer + 1][0]
        conn, keep = conns[layer], kept[layer]
        # excessive: the mask's rows follow the kept neurons in their recorded order
        order = {j: pos for pos, j in enumerate(snapshot["kept"][layer])} if conn and "mask" in conn else {}
        for j in range(w.shape[0]):
            got = keep is None or j in keep
            for i in range(w.shape[1]):
                value = float(w[j, i])
                xs, ys = [layer, layer + 1, None], [ys_in[i], ys_out[j], None]
                bin_ = min(3, int(4 * abs(value) / wmax))
                bx, by = buckets.setdefault((value >= 0, bin_), ([], []))
                bx += xs
                by += ys
                if got and _edge_has_gradient(conn, order, i, j):
                    glow_x += xs
                    glow_y += ys

    data = [dict(type="scatter", x=glow_x, y=glow_y, mode="lines", hoverinfo="skip", name="got gradient",
                 line=dict(color=BACKWARD, width=7), opacity=0.35)]
    for (positive, bin_), (bx, by) in sorted(buckets.items()):
        data.append(dict(type="scatter", x=bx, y=by, mode="lines", hoverinfo="skip",
                         name=f"{'positive' if positive else 'negative'} weights",
                         line=dict(color=POSITIVE if positive else NEGATIVE, width=WIDTHS_PX[bin_]), opacity=0.7))

    two_d = snapshot.get("neurons") is not None
    nx, ny, sizes, fill, outline, lw, custom, text = [], [], [], [], [], [], [], []
    last = len(widths) - 1
    for col, (ys, spacing) in enumerate(columns):
        role = "input" if col == 0 else "output" if col == last else f"hidden layer {col}"
        for j, y in enumerate(ys):
            got = col > 0 and (kept[col - 1] is None or j in kept[col - 1])
            nx.append(col)
            ny.append(float(y))
            sizes.append(size * spacing)
            custom.append([col, j, int(got)])
            if col == 0:
                fill.append("rgba(0,0,0,0)" if two_d else INPUT)
                outline.append("#475569")
                lw.append(1.2)
                text.append(f"input {j}: inputs take no gradient")
                continue
            fill.append("rgba(0,0,0,0)" if two_d and col < last else (BACKWARD if got else "#ffffff"))
            outline.append(BACKWARD if got and two_d and col < last else ("#334155" if got else DROPPED))
            lw.append(4.0 if got and two_d and col < last else 1.5)
            line = f"{role}, neuron {j}: " + ("got gradient at this step" if got else "no gradient at this step")
            c = counts[col - 1]
            if c is None:
                line += "<br>kept at every step (its layer's backward is dense)"
            elif counted:
                line += f"<br>kept in {c[j]:,} of {counted:,} steps ({c[j] / counted:.0%})"
            text.append(line)
    data.append(dict(type="scatter", x=nx, y=ny, mode="markers", name="neurons", customdata=custom,
                     hovertext=text, hoverinfo="text",
                     marker=dict(size=sizes, color=fill, line=dict(color=outline, width=lw))))

    images = _heat_maps(snapshot, columns, size / ppu) if two_d else []
    step, epoch = snapshot.get("step", 0), snapshot.get("epoch")
    default = (f"Network at step {step:,}" + (f" (epoch {epoch})" if epoch else "")) if step else \
        "Network before its first step"
    layout = dict(template=TEMPLATE, height=height, margin=dict(l=10, r=10, t=top, b=bottom),
                  title=dict(text=title or default, x=0.0, font=dict(size=15)), showlegend=False,
                  hovermode="closest",
                  xaxis=dict(visible=False, range=[-0.45, last + 0.45], fixedrange=True),
                  yaxis=dict(visible=False, range=[-y_span / 2, y_span / 2], fixedrange=True))
    if images:  # (plotly leaves an empty list out)
        layout["images"] = images
    return {"data": data, "layout": layout}


network_figure.spec = _network_spec


def _heat_maps(snapshot: dict, columns: list, diameter: float) -> list[dict]:
    """Layout images: each hidden neuron's output (and the inputs' coordinates) inside its circle."""
    neurons = snapshot["neurons"]
    res = int(neurons["resolution"])
    side = 0.62 * diameter  # a square inside the circle
    out = []

    def place(col: int, j: int, rgb: np.ndarray, spacing: float) -> None:
        out.append(dict(source=_png(rgb), xref="x", yref="y", x=col, y=float(columns[col][0][j]),
                        sizex=1.0, sizey=side * spacing, xanchor="center", yanchor="middle",
                        sizing="contain", layer="above"))

    ramp = np.linspace(-1, 1, res, dtype=np.float32)
    inputs = [np.tile(ramp, (res, 1)), np.tile(ramp[:, None], (1, res))]  # x1 varies along x, x2 along y
    for j, grid in enumerate(inputs[: int(snapshot["widths"][0])]):
        place(0, j, heat_rgb(grid), columns[0][1])
    for layer, layer_neurons in enumerate(neurons["layers"]):
        for j, neuron in enumerate(layer_neurons):
            scale = float(neuron["scale"]) or 1.0
            place(layer + 1, j, heat_rgb(dequantize(neuron, res) / scale), columns[layer + 1][1])
    return out


# ------------------------------------------------------------------------------ larger networks

def summary_figure(widths: Sequence[int], counts: Sequence[tuple[Sequence[int], int] | None],
                   keep: Sequence[int | None] | None = None, title: str | None = None) -> go.Figure:
    """A network too large to draw neuron by neuron: one row per layer with a backward mask,
    how often each neuron (binned to at most SUMMARY_BINS per row) was kept in the recorded
    steps. counts[l]: (counts per neuron, records) of linear layer l, None for a dense layer."""
    rows, labels, hover = [], [], []
    for layer, entry in enumerate(counts):
        n = int(widths[layer + 1])
        name = f"hidden layer {layer + 1}" if layer + 2 < len(widths) else "output layer"
        k = keep[layer] if keep else None
        labels.append(f"{name} ({n})" + (", dense" if entry is None else ""))
        edges = np.linspace(0, n, min(n, SUMMARY_BINS) + 1).round().astype(int)
        if entry is None or not entry[1]:
            freq = np.full(len(edges) - 1, np.nan if entry is None else 0.0)  # a dense layer is not drawn
        else:
            c = np.asarray(list(entry[0]) + [0] * (n - len(entry[0])), dtype=np.float64)[:n] / entry[1]
            freq = np.array([c[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
        rows.append(freq)
        if entry is None:
            hover.append(["every neuron gets gradient at every step (dense backward)"] * len(freq))
        else:
            hover.append([f"{name}, neurons {a}-{b - 1}: kept in {f:.0%} of {entry[1]:,} recorded steps"
                          + (f"; k = {k} per step" if k else "") for a, b, f in zip(edges[:-1], edges[1:], freq)])
    cols = max((len(r) for r in rows), default=1)
    z = [[None if np.isnan(v) else float(v) for v in r] + [None] * (cols - len(r)) for r in rows]
    text = [h + [""] * (cols - len(h)) for h in hover]
    top = max([v for r in z for v in r if v is not None] + [0.01])  # the colors span what was observed
    fig = go.Figure(data=[dict(type="heatmap", z=z, y=labels, text=text, hoverinfo="text", zmin=0, zmax=top,
                               colorscale=[[0, "#ffffff"], [1, BACKWARD]], xgap=1, ygap=4,
                               colorbar=dict(title=dict(text="kept"), tickformat=".0%", len=0.8))],
                    layout=dict(template=TEMPLATE, height=max(220, 90 + 60 * len(rows)),
                                margin=dict(l=140, r=20, t=50, b=30),
                                title=dict(text=title or "How often each neuron was kept (too large to draw "
                                                         "neuron by neuron)", x=0.0, font=dict(size=15)),
                                xaxis=dict(visible=False), yaxis=dict(autorange="reversed")))
    return fig
