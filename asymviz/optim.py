"""Optimizers that keep "no update" true for dropped neurons and connections (DESIGN.md §1).

With momentum or Adam a zero gradient still moves a weight. The default `lazy` update touches
only the entries of an asymmetric layer that received gradient in the last backward (its
`Support`), and their optimizer state (moments, step counts) stays frozen otherwise, as
`torch.optim.SparseAdam` does. Bias correction uses a per-entry step count, so a neuron that
was dropped for a while resumes exactly where it stopped. `update="dense"` steps every
parameter with PyTorch's own optimizer instead.

Parameters of layers whose backward is dense (the output layer, symmetric strategies) and every
parameter under `dense` use PyTorch's own optimizer with fused kernels where available (the non-fused CPU Adam was measured to erase the sparse gain).
"""

from __future__ import annotations

import torch
from torch import nn

from asymviz.errors import ConfigError
from asymviz.sparse import AsymmetricLinear, Support

OPTIMIZERS = ("sgd", "momentum", "adam")
UPDATES = ("lazy", "dense")


def _torch_optimizer(params, name, lr, momentum, weight_decay, betas, eps):
    """PyTorch's optimizer for the dense parameters, fused when the build supports it."""
    if not params:
        return None
    for kernel in ({"fused": True}, {"foreach": True}, {}):
        try:
            if name == "adam":
                return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kernel)
            mu = momentum if name == "momentum" else 0.0
            return torch.optim.SGD(params, lr=lr, momentum=mu, weight_decay=weight_decay, **kernel)
        except (RuntimeError, ValueError, TypeError):
            continue
    raise RuntimeError("no usable optimizer kernel")  # unreachable: {} always works


class _Block:
    """Read and write the entries of a parameter-shaped tensor named by a Support."""

    def __init__(self, shape: torch.Size, support: Support | None):
        self.rows = self.flat = self.mask = None
        if support is None:
            return
        if support.cols is not None:  # rows x cols block of a matrix: flat indices
            n_in = shape[1]
            self.flat = (support.rows.unsqueeze(1) * n_in + support.cols.unsqueeze(0)).reshape(-1)
        else:
            self.rows = support.rows
            self.mask = support.mask  # (len(rows), n_in) or None

    def get(self, t: torch.Tensor) -> torch.Tensor:
        if self.flat is not None:
            return t.reshape(-1).index_select(0, self.flat)
        if self.rows is not None:
            return t.index_select(0, self.rows)
        return t.clone()

    def put(self, t: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> None:
        if self.mask is not None:
            new = torch.where(self.mask, new, old)  # dropped connections keep their value
        if self.flat is not None:
            t.view(-1).index_copy_(0, self.flat, new)
        elif self.rows is not None:
            t.index_copy_(0, self.rows, new)
        else:
            t.copy_(new)


class AsymmetricOptimizer:
    """SGD, SGD+momentum or Adam over a model; asymmetric layers get the lazy update."""

    def __init__(self, model: nn.Module, name: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 update: str = "lazy") -> None:
        if name not in OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}.")
        if update not in UPDATES:
            raise ConfigError(f"Unknown optimizer update {update!r}; choose one of: {', '.join(UPDATES)}.")
        self.name, self.lr, self.momentum, self.weight_decay = name, lr, momentum, weight_decay
        self.betas, self.eps, self.update = betas, eps, update
        self.lazy: list[tuple[nn.Parameter, AsymmetricLinear, str]] = []
        if update == "lazy":
            for m in model.modules():
                if isinstance(m, AsymmetricLinear) and not m.dense_backward:
                    self.lazy.append((m.weight, m, "weight"))
                    if m.bias is not None:
                        self.lazy.append((m.bias, m, "bias"))
        lazy_ids = {id(p) for p, _, _ in self.lazy}
        dense = [p for p in model.parameters() if id(p) not in lazy_ids and p.requires_grad]
        self.dense = _torch_optimizer(dense, name, lr, momentum, weight_decay, betas, eps)
        self.state: dict[int, dict[str, torch.Tensor]] = {}
        self.params = [p for p in model.parameters() if p.requires_grad]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        if self.dense is not None:
            self.dense.step()
        for p, layer, kind in self.lazy:
            if p.grad is None:
                continue
            support = layer.state.weight_support if kind == "weight" else layer.state.bias_support
            self._lazy_step(p, _Block(p.shape, support))

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.state.get(id(p))
        if s is None:
            s = {"step": torch.zeros_like(p)}
            if self.name == "adam":
                s["exp_avg"], s["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            elif self.name == "momentum":
                s["momentum_buffer"] = torch.zeros_like(p)
            self.state[id(p)] = s
        return s

    def _lazy_step(self, p: torch.Tensor, block: _Block) -> None:
        s = self._state(p)
        w, g = block.get(p), block.get(p.grad)  # only the entries that received gradient
        if self.weight_decay:
            g = g.add(w, alpha=self.weight_decay)
        if self.name == "sgd":
            new = w - self.lr * g
        elif self.name == "momentum":
            buf = block.get(s["momentum_buffer"]).mul_(self.momentum).add_(g)  # v <- mu v + g
            block.put(s["momentum_buffer"], buf, block.get(s["momentum_buffer"]))
            new = w - self.lr * buf
        else:  # adam, bias-corrected with each entry's own step count
            b1, b2 = self.betas
            t = block.get(s["step"]) + 1
            old_m, old_v = block.get(s["exp_avg"]), block.get(s["exp_avg_sq"])
            m = old_m * b1 + g * (1 - b1)
            v = old_v * b2 + g * g * (1 - b2)
            denom = (v / (1 - b2**t)).sqrt_().add_(self.eps)
            new = w - self.lr * (m / (1 - b1**t)) / denom
            block.put(s["exp_avg"], m, old_m)
            block.put(s["exp_avg_sq"], v, old_v)
            block.put(s["step"], t, t - 1)
        block.put(p, new, w)
