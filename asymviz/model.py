"""A feed-forward network (MLP) built from an architecture spec, with asymmetric layers.

    parse_architecture("64-256-256-10", n_in=64, n_out=10)  -> [256, 256]   (full widths)
    parse_architecture("256,256")                           -> [256, 256]   (hidden widths)

Hidden layers are `AsymmetricLinear` with the chosen strategy; the output layer stays dense
unless `sparse_output=True`. Dropout (the `dropout` strategy, or added to any strategy) follows
each hidden activation.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from asymviz.errors import ConfigError
from asymviz.sparse import AsymmetricLinear, MaskRecord

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
MAX_WIDTH = 16384  # per layer; a shared instance caps the parameter count separately
MAX_HIDDEN_LAYERS = 16


def _widths(parts: list[str], spec) -> list[int]:
    widths = []
    for part in parts:
        part = part.strip()
        if not re.fullmatch(r"\d+", part):
            raise ConfigError(
                f"Architecture {spec!r} is not valid: {part!r} is not a positive whole number; "
                "write widths like '256,256' (hidden) or '64-256-256-10' (input-hidden-output)."
            )
        w = int(part)
        if not 1 <= w <= MAX_WIDTH:
            raise ConfigError(f"Architecture {spec!r} is not valid: every width must be between 1 and {MAX_WIDTH}, got {w}.")
        widths.append(w)
    return widths


def parse_architecture(spec, n_in: int | None = None, n_out: int | None = None) -> list[int]:
    """Hidden widths from a spec: a list of ints, 'h1,h2' (hidden) or 'in-h1-h2-out' (full)."""
    if isinstance(spec, (list, tuple)):
        hidden = _widths([str(w) for w in spec], spec)
    elif isinstance(spec, str) and spec.strip():
        text = spec.strip()  # blanks around a width are fine; "16 16" is no width
        if "-" in text and "," not in text:
            full = _widths(text.split("-"), spec)
            if len(full) < 2:
                raise ConfigError(f"Architecture {spec!r} is not valid: a full spec needs at least input-output, like '64-256-10'.")
            if n_in is not None and full[0] != n_in or n_out is not None and full[-1] != n_out:
                raise ConfigError(
                    f"Architecture {spec!r} does not fit the data: it must start with {n_in} inputs and end with {n_out} classes."
                )
            hidden = full[1:-1]
        else:
            hidden = _widths(text.split(","), spec)
    else:
        raise ConfigError(f"Architecture {spec!r} is not valid; write widths like '256,256' or '64-256-256-10'.")
    if len(hidden) > MAX_HIDDEN_LAYERS:
        raise ConfigError(f"Architecture {spec!r} has {len(hidden)} hidden layers; at most {MAX_HIDDEN_LAYERS} are allowed.")
    return hidden


def count_parameters(n_in: int, hidden: list[int], n_out: int) -> int:
    """Weights and biases of an MLP n_in-hidden-n_out (without building it)."""
    widths = [n_in, *hidden, n_out]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


class MLP(nn.Module):
    """Linear -> activation -> dropout for each hidden width, then a linear output layer."""

    def __init__(self, n_in: int, hidden: list[int], n_out: int, activation: str = "relu",
                 strategy: str = "neuron", sparsity: float = 0.9, conn_sparsity: float = 0.0,
                 selection: str = "topk", granularity: str = "batch", dropout: float = 0.0,
                 sparse_output: bool = False) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"Unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}.")
        sparse = dict(strategy=strategy, sparsity=sparsity, conn_sparsity=conn_sparsity,
                      selection=selection, granularity=granularity)
        layers: list[nn.Module] = []
        widths = [n_in, *hidden]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [AsymmetricLinear(a, b, **sparse), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        out_strategy = strategy if sparse_output else "symmetric"
        layers.append(AsymmetricLinear(widths[-1], n_out, **{**sparse, "strategy": out_strategy}))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def linears(self) -> list[AsymmetricLinear]:
        """The linear layers in order (hidden layers first, the output layer last)."""
        return [m for m in self.net if isinstance(m, AsymmetricLinear)]

    def record_masks(self, on: bool = True) -> None:
        """Opt in (or out) to keeping each layer's last kept sets; costs nothing when off."""
        for layer in self.linears:
            layer.state.record = on
            if not on:
                layer.state.last = None

    def last_masks(self) -> list[MaskRecord | None]:
        """Each linear layer's MaskRecord from the last backward (None: dense or not recording)."""
        return [layer.state.last for layer in self.linears]

    def kept_fractions(self) -> list[float]:
        """Kept neurons / width of each linear layer in the last backward."""
        return [layer.state.kept_fraction for layer in self.linears]
