"""Small snapshots of a training network, for the live network picture (asymviz.figures_network).

    if is_small(widths):
        recorder = Recorder(model, data, device)
        recorder.count()                      # after each step: who got gradient
        data = recorder.capture(step, epoch)  # a JSON-able dict

Only small networks are snapshotted (at most MAX_HIDDEN_LAYERS hidden layers of at most
MAX_WIDTH neurons, at most MAX_INPUTS inputs and MAX_OUTPUTS classes); a larger one gets the
summary view, from the mask records. A snapshot is

    {"step", "epoch", "widths": [n_in, *hidden, n_out],
     "weights": per linear layer its (n_out, n_in) weights, rounded to 4 decimals,
     "kept":    per linear layer the output neurons that got gradient in the last step
                (None: every one, a dense backward; example granularity: kept by any example),
     "conn":    per linear layer None (every connection of a kept neuron), {"cols": inputs kept}
                (refined) or {"mask": one 0/1 row over the inputs per kept neuron} (excessive),
     "counts":  per linear layer, in how many of the `counted` steps each neuron got gradient
                (None: every step), "counted": steps counted,
     "neurons": 2-D data only: {"resolution", "x": [lo, hi], "y": [lo, hi], "layers": per hidden
                layer, per neuron {"scale": max |output|, "q": base64 of resolution^2 bytes,
                round((output / scale + 1) * 127.5), rows following y}},
     "boundary": 2-D data only: the decision grid of asymviz.recording.decision_grid}

Neuron outputs and the boundary are computed in eval mode on a grid over the training points
(no randomness is drawn, so a snapshotted run trains exactly as one that is not).
"""

from __future__ import annotations

import base64

import numpy as np
import torch

from asymviz.model import ACTIVATIONS
from asymviz.recording import decision_grid, grid_axes

MAX_HIDDEN_LAYERS = 8
MAX_WIDTH = 16
MAX_INPUTS = 64
MAX_OUTPUTS = 16
NEURON_RESOLUTION = 16  # each hidden neuron's heat map is 16 x 16
BOUNDARY_RESOLUTION = 40


def is_small(widths) -> bool:
    """Whether a network [n_in, *hidden, n_out] is drawn neuron by neuron."""
    widths = [int(w) for w in widths]
    hidden = widths[1:-1]
    return (len(widths) >= 2 and len(hidden) <= MAX_HIDDEN_LAYERS and all(1 <= w <= MAX_WIDTH for w in hidden)
            and widths[0] <= MAX_INPUTS and widths[-1] <= MAX_OUTPUTS)


def quantize(values: torch.Tensor) -> dict:
    """One neuron's outputs on the grid as {"scale", "q"}: bytes centred on 128 for 0."""
    v = values.float().nan_to_num(0.0)
    scale = float(v.abs().max())
    q = torch.full_like(v, 127.5) if scale == 0 else (v / scale + 1) * 127.5
    data = q.round().clamp(0, 255).to(torch.uint8).cpu().numpy().tobytes()
    return {"scale": round(scale, 6), "q": base64.b64encode(data).decode("ascii")}


def dequantize(neuron: dict, resolution: int) -> np.ndarray:
    """The (resolution, resolution) outputs in [-scale, scale] that `quantize` encoded."""
    q = np.frombuffer(base64.b64decode(neuron["q"]), dtype=np.uint8).astype(np.float32)
    return ((q / 127.5 - 1.0) * float(neuron["scale"])).reshape(resolution, resolution)


class Recorder:
    """Counts who got gradient step by step and captures snapshots of one run's model."""

    def __init__(self, model, data, device: torch.device, counts: list | None = None, counted: int = 0):
        self.model, self.data, self.device = model, data, device
        self.linears = model.linears
        self.widths = [self.linears[0].in_features] + [layer.out_features for layer in self.linears]
        self.counts = [torch.zeros(layer.out_features, dtype=torch.long) for layer in self.linears]
        self.counted = 0
        if counts is not None and len(counts) == len(self.linears):  # going on from a stored snapshot
            for i, c in enumerate(counts):
                if c is not None and len(c) == self.linears[i].out_features:
                    self.counts[i] = torch.tensor(c, dtype=torch.long)
            self.counted = int(counted)
        self._points = None  # the 2-D grids, made on first use

    def count(self) -> None:
        """Add the last backward's kept neurons to the counts (call once per step)."""
        self.counted += 1
        for layer, counts in zip(self.linears, self.counts):
            support = layer.state.weight_support
            if support is not None and support.rows is not None:
                counts.index_add_(0, support.rows.cpu(), torch.ones(len(support.rows), dtype=torch.long))

    @torch.no_grad()
    def capture(self, step: int, epoch: int) -> dict:
        kept, conn, counts = [], [], []
        for layer, c in zip(self.linears, self.counts):
            support = layer.state.weight_support
            if support is None or support.rows is None:
                kept.append(None)
                conn.append(None)
                counts.append(None)
                continue
            kept.append(support.rows.tolist())
            if support.cols is not None:
                conn.append({"cols": support.cols.tolist()})
            elif support.mask is not None:
                conn.append({"mask": support.mask.to(torch.uint8).tolist()})
            else:
                conn.append(None)
            counts.append(c.tolist())
        out = {"step": int(step), "epoch": int(epoch), "widths": self.widths,
               "weights": [np.round(layer.weight.detach().float().cpu().numpy(), 4).tolist() for layer in self.linears],
               "kept": kept, "conn": conn, "counts": counts, "counted": self.counted}
        if getattr(self.data, "is_2d", False):
            out.update(self._grids())
        return out

    def _grids(self) -> dict:
        model = self.model
        if self._points is None:
            x = self.data.x_train.to(self.device)
            xs, ys, pts = grid_axes(x, NEURON_RESOLUTION)
            self._points = (xs, ys, pts, grid_axes(x, BOUNDARY_RESOLUTION), x)
        xs, ys, pts, boundary_axes, x = self._points
        was_training = model.training
        model.eval()
        try:
            layers, h = [], pts
            activations = tuple(ACTIVATIONS.values())
            for module in model.net:
                h = module(h)
                if isinstance(module, activations):  # a hidden layer's outputs, (res * res, width)
                    layers.append([quantize(h[:, j]) for j in range(h.shape[1])])
        finally:
            model.train(was_training)
        boundary = decision_grid(model, x, resolution=BOUNDARY_RESOLUTION, axes=boundary_axes)
        return {"neurons": {"resolution": NEURON_RESOLUTION, "x": [float(xs[0]), float(xs[-1])],
                            "y": [float(ys[0]), float(ys[-1])], "layers": layers},
                "boundary": boundary}
