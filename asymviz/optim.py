"""Optimizers that keep "no update" true for dropped neurons and connections (DESIGN.md §1).

With momentum or Adam a zero gradient still moves a weight. The default `lazy` update touches
only the entries of an asymmetric layer that received gradient in the last backward (its
`Support`), and their optimizer state (moments, step counts) stays frozen otherwise, as
`torch.optim.SparseAdam` does. Bias correction uses a per-entry step count, so a neuron that
was dropped for a while resumes exactly where it stopped. `update="dense"` steps every
parameter with PyTorch's own optimizer instead.

`AsymmetricOptimizer` is a `torch.optim.Optimizer`: one parameter group whose hyperparameters
(lr, momentum, weight_decay, betas, eps) are read at every step, so `torch.optim.lr_scheduler`
works; `state_dict()` / `load_state_dict()` round-trip everything a run depends on.

`_lazy_update` is the reference: gather the supported entries, apply the textbook rule to them
and to their state, scatter both back. `asymviz.fast.lazy` does the same in one pass of a
compiled kernel (CPU, float32) or in place on whole rows (Adam, `neuron`), and is what runs by
default (ASYMVIZ_FAST=0: the reference everywhere). Parameters of layers whose backward is dense
(the output layer, symmetric strategies) and every parameter under `dense` use PyTorch's own
optimizer with fused kernels where available (the non-fused CPU Adam was measured to erase the
sparse gain).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from asymviz import fast
from asymviz.errors import ConfigError
from asymviz.fast import gradbuf
from asymviz.fast import lazy as fast_lazy
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

    def __init__(self, shape: torch.Size, support: Support | None, flat: torch.Tensor | None = None):
        self.rows = self.flat = self.mask = None
        if support is None:
            return
        if support.cols is not None:  # rows x cols block of a matrix: flat indices (into `flat`'s storage)
            n_in = shape[1]
            r, c = support.rows.unsqueeze(1) * n_in, support.cols.unsqueeze(0)
            if flat is not None and flat.numel() >= r.numel() * c.numel():
                self.flat = torch.add(r, c, out=flat[: r.numel() * c.numel()].view(r.numel(), c.numel())).view(-1)
            else:
                self.flat = (r + c).reshape(-1)
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
            t.view(-1).scatter_(0, self.flat, new.reshape(-1))  # t[flat] = new (faster than index_copy_)
        elif self.rows is not None:
            t.index_copy_(0, self.rows, new)
        else:
            t.copy_(new)


class AsymmetricOptimizer(torch.optim.Optimizer):
    """SGD, SGD+momentum or Adam over a model; asymmetric layers get the lazy update.

    zero_grad() follows `set_to_none` for every parameter (a lazy layer keeps its gradient
    storage for its next backward: `asymviz.fast.gradbuf`).
    step() skips a lazy layer that had no backward since zero_grad(), as PyTorch skips None grads.
    """

    def __init__(self, model: nn.Module, name: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 update: str = "lazy") -> None:
        if name not in OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}.")
        if update not in UPDATES:
            raise ConfigError(f"Unknown optimizer update {update!r}; choose one of: {', '.join(UPDATES)}.")
        params = [p for p in model.parameters() if p.requires_grad]
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "betas": tuple(betas), "eps": eps}
        super().__init__(params, defaults)
        self.name, self.update = name, update
        self._lazy: list[tuple[nn.Parameter, AsymmetricLinear, str]] = []  # (parameter, its layer, "weight" | "bias")
        if update == "lazy":
            for m in model.modules():
                if isinstance(m, AsymmetricLinear) and not m.dense_backward:
                    self._lazy.append((m.weight, m, "weight"))
                    if m.bias is not None:
                        self._lazy.append((m.bias, m, "bias"))
        lazy = {p for p, _, _ in self._lazy}
        self._weight_layer = {p: m for p, m, kind in self._lazy if kind == "weight"}
        self._seen: dict[AsymmetricLinear, int] = {}  # layer -> its backward count at the last zero_grad
        self._dense = _torch_optimizer([p for p in params if p not in lazy], name, lr, momentum, weight_decay,
                                       tuple(betas), eps)
        self._steps = 0  # step() calls: no entry's step count exceeds it
        self._tables: dict[tuple, tuple[tuple, torch.Tensor, torch.Tensor]] = {}  # Adam's coefficients by step count
        self._workspace: dict = {}  # the fast path's reused buffers (asymviz.fast.lazy)

    # ------------------------------------------------------------------------- zero_grad, step

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            layer = self._weight_layer.get(p)
            if layer is not None:
                self._seen[layer] = layer.state.backwards
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            elif layer is not None and fast.enabled():
                gradbuf.zero_(p, layer.state)  # only the rows written since the last zeroing
            else:
                p.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        self._steps += 1
        if self._dense is not None:
            self._dense_step(group)
        done: set[nn.Parameter] = set()
        for p, layer, kind in self._lazy:
            if p.grad is None or self._seen.get(layer) == layer.state.backwards or p in done:
                continue  # no gradient since zero_grad()
            support = layer.state.weight_support if kind == "weight" else layer.state.bias_support
            rowwise = kind == "bias" or layer.options.connection is None  # supports are whole rows
            if fast.enabled() and fast_lazy.step(self, p, layer, kind, support, rowwise, group, done):
                continue
            self._lazy_update(p, support, rowwise, group)
            done.add(p)
        return loss

    def _dense_step(self, group: dict) -> None:
        """PyTorch's optimizer on the dense parameters, with this group's current hyperparameters."""
        for g in self._dense.param_groups:
            g["lr"], g["weight_decay"] = group["lr"], group["weight_decay"]
            if self.name == "adam":
                g["betas"], g["eps"] = group["betas"], group["eps"]
            elif self.name == "momentum":
                g["momentum"] = group["momentum"]
        self._dense.step()

    # ------------------------------------------------------------------------- the reference update

    def _lazy_update(self, p: torch.Tensor, support: Support | None, rowwise: bool, group: dict) -> None:
        """The lazy update: the textbook rule on the entries that received gradient, nowhere else.

        Gather those entries of p, p.grad and the state, update them, scatter them back; every
        other entry keeps its value and its state (moments, step count) bit for bit.
        """
        lr, wd = group["lr"], group["weight_decay"]
        at = _Block(p.shape, support)
        s = self._state(p, rowwise)
        w = at.get(p)  # only the entries that received gradient
        g = at.get(p.grad)
        if wd:
            g = g.add(w, alpha=wd)
        if self.name == "sgd":
            new = w.sub(g, alpha=lr)
        elif self.name == "momentum":
            old = at.get(s["momentum_buffer"])
            buf = old.mul(group["momentum"]).add_(g)  # v <- mu v + g
            at.put(s["momentum_buffer"], buf, old)
            new = w.sub(buf, alpha=lr)
        else:  # adam, bias-corrected with each entry's (or row's) own step count
            b1, b2 = group["betas"]
            old_t = at.get(s["step"])
            t = old_t + 1  # integer step counts, per entry
            old_m, old_v = at.get(s["exp_avg"]), at.get(s["exp_avg_sq"])
            m = old_m.lerp(g, 1 - b1)  # b1 m + (1 - b1) g
            v = old_v.mul(b2).addcmul_(g, g, value=1 - b2)  # b2 v + (1 - b2) g^2
            scale, shift = (c.index_select(0, t.reshape(-1)).view_as(t) for c in self.adam_table(p))
            denom = v.sqrt().mul_(scale).add_(shift)  # (sqrt(v_hat) + eps) / (lr / bc1)
            new = w - torch.div(m, denom, out=denom)  # w - lr m_hat / (sqrt(v_hat) + eps)
            at.put(s["exp_avg"], m, old_m)
            at.put(s["exp_avg_sq"], v, old_v)
            at.put(s["step"], t, old_t)
        at.put(p, new, w)

    def _state(self, p: torch.Tensor, rowwise: bool) -> dict[str, torch.Tensor]:
        """p's lazy state, made on first use: Adam's step count per entry, or per row (an integer)
        where every support is whole rows; Adam's moments or the momentum buffer."""
        s = self.state[p]
        if not s:
            if rowwise:
                s["step"] = torch.zeros((p.shape[0],) + (1,) * (p.dim() - 1), dtype=torch.long, device=p.device)
            else:
                s["step"] = torch.zeros(p.shape, dtype=torch.int32, device=p.device)
            if self.name == "adam":
                s["exp_avg"], s["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            elif self.name == "momentum":
                s["momentum_buffer"] = torch.zeros_like(p)
        return s

    def adam_table(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adam's bias correction by step count t, as two factors (float64, rounded once to p's dtype):

            lr m_hat / (sqrt(v_hat) + eps) = m / (sqrt(v) scale[t] + shift[t])
            scale[t] = bc1 / (lr sqrt(bc2)),  shift[t] = eps bc1 / lr,  bc = 1 - beta^t

        Grown as step counts grow; built again when lr, betas or eps change (a scheduler)."""
        group = self.param_groups[0]
        need = self._steps + 1
        hyper = (group["lr"], tuple(group["betas"]), group["eps"])
        key = (p.device, p.dtype)
        held = self._tables.get(key)
        if held is None or held[0] != hyper or len(held[1]) <= need:
            lr, (b1, b2), eps = hyper
            t = torch.arange(max(64, 2 * need), dtype=torch.float64)
            bc1, bc2 = -torch.expm1(t * math.log(b1)), -torch.expm1(t * math.log(b2))
            bc1[0] = bc2[0] = 1.0  # t = 0 never indexes (counts start at 1)
            scale, shift = (c.to(device=p.device, dtype=p.dtype).contiguous() for c in
                            (bc1 / (lr * bc2.sqrt()), bc1 * (eps / lr)))
            held = self._tables[key] = (hyper, scale, shift)
        return held[1], held[2]

    # ------------------------------------------------------------------------- state_dict

    def state_dict(self) -> dict:
        """PyTorch's optimizer state dict (the lazy state per parameter, the group), plus the
        dense parameters' optimizer ("dense") and the number of steps taken ("steps")."""
        sd = super().state_dict()
        sd["dense"] = self._dense.state_dict() if self._dense is not None else None
        sd["steps"] = self._steps
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load `state_dict()`'s output (e.g. read back with torch.load) into this optimizer of
        the same model; ValueError with one sentence when it does not fit."""
        state_dict = dict(state_dict)
        dense, steps = state_dict.pop("dense", None), state_dict.pop("steps", None)
        if not isinstance(steps, int) or steps < 0 or (dense is None) != (self._dense is None):
            raise ValueError("This optimizer state was saved by another kind of optimizer or model.")
        params = self.param_groups[0]["params"]
        for key, s in state_dict.get("state", {}).items():
            if not isinstance(key, int) or not 0 <= key < len(params):
                raise ValueError(f"This optimizer state names parameter {key!r}, which the model does not have.")
            _check_lazy_state(params[key], s, steps)
        super().load_state_dict(state_dict)
        for p, s in self.state.items():  # PyTorch keeps "step" where it was loaded: put it beside p
            s["step"] = s["step"].to(p.device)
        if self._dense is not None:
            self._dense.load_state_dict(dense)
        self._steps = steps
        self._tables.clear()


def _check_lazy_state(p: torch.Tensor, s: dict, steps: int) -> None:
    """A loaded lazy state fits its parameter and no step count exceeds the steps taken."""
    shapes = {"exp_avg": p.shape, "exp_avg_sq": p.shape, "momentum_buffer": p.shape}
    row = (p.shape[0],) + (1,) * (p.dim() - 1)
    ok = isinstance(s, dict) and isinstance(s.get("step"), torch.Tensor)
    if ok:
        step = s["step"]
        ok = ((step.dtype == torch.long and tuple(step.shape) in (row, (p.shape[0],)))
              or (step.dtype == torch.int32 and step.shape == p.shape))
        ok = ok and (step.numel() == 0 or 0 <= int(step.min()) and int(step.max()) <= steps)
        ok = ok and all(isinstance(s[k], torch.Tensor) and s[k].shape == shape for k, shape in shapes.items() if k in s)
    if not ok:
        raise ValueError("This optimizer state does not fit the model's parameters (shapes or step counts differ).")
