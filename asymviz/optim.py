"""Optimizers that keep "no update" true for dropped neurons and connections (DESIGN.md §1).

With momentum or Adam a zero gradient still moves a weight. The default `lazy` update touches
only the entries of an asymmetric layer that received gradient in the last backward (its
`Support`), and their optimizer state (moments, step counts) stays frozen otherwise, as
`torch.optim.SparseAdam` does. Bias correction uses a per-entry step count, so a neuron that
was dropped for a while resumes exactly where it stopped. `update="dense"` steps every
parameter with PyTorch's own optimizer instead.

Parameters of layers whose backward is dense (the output layer, symmetric strategies) and every
parameter under `dense` use PyTorch's own optimizer with fused kernels where available (the
non-fused CPU Adam was measured to erase the sparse gain).

Speed (DESIGN.md §5): the lazy step costs what the kept rows cost. `zero_grad()` hands each lazy
layer's weight-gradient storage back to the layer for reuse (`reset_weight_grad`); Adam on whole
rows (`neuron`) takes the kept rows of the gradient as the backward computed them (or gathers
them if `.grad` was edited since), gathers the moments into reused buffers, updates them in
place with one step count per neuron (bias-correction coefficients looked up in a table) and
scatters them back. Row x column blocks (`refined`) and masks (`excessive`) take the general path.
On the CPU with float32 parameters, all of that is one pass of a compiled kernel
(`asymviz.kernels.update`, same arithmetic) when the kernels are built.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from asymviz import kernels
from asymviz.errors import ConfigError
from asymviz.sparse import AsymmetricLinear, Support, reset_weight_grad

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


class AsymmetricOptimizer:
    """SGD, SGD+momentum or Adam over a model; asymmetric layers get the lazy update.

    zero_grad() follows `set_to_none` for every parameter; a lazy layer's weight-gradient storage
    is kept for its next backward, which re-zeroes only the rows it does not overwrite
    (`asymviz.sparse.reset_weight_grad`).
    step() skips a lazy layer that had no backward since zero_grad(), as PyTorch skips None grads.
    """

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
        self._buffers = {id(p): m for p, m, kind in self.lazy if kind == "weight"}  # persistent dW
        self._seen: dict[int, int] = {}  # layer -> its backward count at the last zero_grad
        dense = [p for p in model.parameters() if id(p) not in lazy_ids and p.requires_grad]
        self.dense = _torch_optimizer(dense, name, lr, momentum, weight_decay, betas, eps)
        self.state: dict[int, dict[str, torch.Tensor]] = {}
        self._scratch: dict[tuple[int, str], torch.Tensor] = {}  # reused gather buffers
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # Adam's coefficients by step count
        self._step_count = 0  # step() calls: no entry's step count exceeds it
        self.params = [p for p in model.parameters() if p.requires_grad]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            layer = self._buffers.get(id(p))
            if layer is not None:
                reset_weight_grad(p, layer.state, set_to_none)
                self._seen[id(layer)] = layer.state.backwards
            elif set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        self._step_count += 1
        if self.dense is not None:
            self.dense.step()
        done: set[int] = set()
        for p, layer, kind in self.lazy:
            if p.grad is None or self._seen.get(id(layer)) == layer.state.backwards or id(p) in done:
                continue  # no gradient since zero_grad()
            support = layer.state.weight_support if kind == "weight" else layer.state.bias_support
            rowwise = kind == "bias" or layer.options.connection is None  # supports are whole rows
            if self._kernel_step(p, layer, kind, support, rowwise, done):
                continue
            if self.name == "adam" and kind == "weight" and rowwise and support.mask is None and support.cols is None:
                bias = layer.bias if layer.bias is not None and layer.bias.grad is not None else None
                self._adam_layer(p, bias, support.rows, self._block(p, layer))  # weight and bias rows together
                done.update((id(p), id(bias)))
            else:
                flat = None
                if support is not None and support.cols is not None:
                    flat = self._buffer(p, "flat", len(support.rows) * len(support.cols), torch.long)
                grad = self._block(p, layer) if kind == "weight" else None
                self._lazy_step(p, _Block(p.shape, support, flat), rowwise, grad)

    def _kernel_step(self, p: torch.Tensor, layer: AsymmetricLinear, kind: str, support: Support | None,
                     rowwise: bool, done: set[int]) -> bool:
        """The lazy update in one pass with the C kernel (`asymviz.kernels`); False: not possible here.

        The same arithmetic as `_lazy_step` / `_adam_layer`: per-row step counts for whole rows
        (weight and bias of a neuron share one), per-entry counts for column blocks and masks.
        """
        if support is None or support.rows is None or p.dtype != torch.float32 or p.grad.dtype != torch.float32:
            return False
        bias = None
        if kind == "weight" and rowwise and self.name == "adam" and layer.bias is not None and layer.bias.grad is not None:
            bias = layer.bias  # updated here too, with the weight rows' step counts
        mask = support.mask.contiguous() if support.mask is not None else None
        s = self._state(p, rowwise)
        tensors = [p, p.grad, support.rows, support.cols, mask, *s.values()]
        if bias is not None:
            tensors += [bias, bias.grad, *self._state(bias, True).values()]
        if (not kernels.usable(*tensors) or support.rows.dtype != torch.int64
                or (support.cols is not None and support.cols.dtype != torch.int64)
                or s["step"].dtype != (torch.int64 if rowwise else torch.int32)):
            return False
        block = self._block(p, layer) if kind == "weight" else None
        if block is not None and not block.is_contiguous():
            block = None
        grad = p.grad if block is None else block
        rows, hyper = support.rows, {"lr": self.lr, "weight_decay": self.weight_decay}
        if self.name == "sgd":
            kernels.update("sgd", p, grad, block is not None, rows, cols=support.cols, mask=mask, **hyper)
        elif self.name == "momentum":
            kernels.update("momentum", p, grad, block is not None, rows, m=s["momentum_buffer"], cols=support.cols,
                           mask=mask, momentum=self.momentum, **hyper)
        else:
            scale, shift = self._adam_table(p)
            adam = {"m": s["exp_avg"], "v": s["exp_avg_sq"], "scale": scale, "shift": shift, "betas": self.betas,
                    "weight_decay": self.weight_decay}
            if rowwise:
                steps = s["step"].view(-1)
                t = steps.index_select(0, rows).add_(1)  # (k,) this step's count per row
                steps.index_copy_(0, rows, t)
                kernels.update("adam", p, grad, block is not None, rows, row_t=t, **adam)
                if bias is not None:
                    sb = self._state(bias, True)
                    sb["step"] = steps  # the bias rows are the weight rows: one count per neuron
                    kernels.update("adam", bias, bias.grad, False, rows, m=sb["exp_avg"], v=sb["exp_avg_sq"],
                                   row_t=t, scale=scale, shift=shift, betas=self.betas,
                                   weight_decay=self.weight_decay)
                    done.add(id(bias))
            else:
                kernels.update("adam", p, grad, block is not None, rows, cols=support.cols, mask=mask,
                               entry_step=s["step"], **adam)
        done.add(id(p))
        return True

    def _state(self, p: torch.Tensor, rowwise: bool) -> dict[str, torch.Tensor]:
        s = self.state.get(id(p))
        if s is None:
            # Adam's step count per entry; per row (an integer) where every support is whole rows.
            if rowwise:
                s = {"step": torch.zeros((p.shape[0],) + (1,) * (p.dim() - 1), dtype=torch.long, device=p.device)}
            else:
                s = {"step": torch.zeros(p.shape, dtype=torch.int32, device=p.device)}
            if self.name == "adam":
                s["exp_avg"], s["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            elif self.name == "momentum":
                s["momentum_buffer"] = torch.zeros_like(p)
            self.state[id(p)] = s
        return s

    def _lazy_step(self, p: torch.Tensor, block: _Block, rowwise: bool = False,
                   grad: torch.Tensor | None = None) -> None:
        """Gather the supported entries, apply the textbook update to them, scatter them back.

        grad: those entries of p.grad as the backward computed them (None: gather them).
        """
        s = self._state(p, rowwise)
        w = block.get(p)  # only the entries that received gradient
        g = block.get(p.grad) if grad is None else grad.view(w.shape)
        if self.weight_decay:
            g = g.add(w, alpha=self.weight_decay)
        if self.name == "sgd":
            new = w.sub(g, alpha=self.lr)
        elif self.name == "momentum":
            old = block.get(s["momentum_buffer"])
            buf = old.mul(self.momentum).add_(g)  # v <- mu v + g
            block.put(s["momentum_buffer"], buf, old)
            new = w.sub(buf, alpha=self.lr)
        else:  # adam, bias-corrected with each entry's (or row's) own step count
            b1, b2 = self.betas
            old_t = block.get(s["step"])
            t = old_t + 1  # integer step counts, per entry
            old_m, old_v = block.get(s["exp_avg"]), block.get(s["exp_avg_sq"])
            m = old_m.lerp(g, 1 - b1)  # b1 m + (1 - b1) g
            v = old_v.mul(b2).addcmul_(g, g, value=1 - b2)  # b2 v + (1 - b2) g^2
            scale, shift = (c.index_select(0, t.reshape(-1)).view_as(t) for c in self._adam_table(p))
            denom = v.sqrt().mul_(scale).add_(shift)  # (sqrt(v_hat) + eps) / (lr / bc1)
            new = w - torch.div(m, denom, out=denom)  # w - lr m_hat / (sqrt(v_hat) + eps)
            block.put(s["exp_avg"], m, old_m)
            block.put(s["exp_avg_sq"], v, old_v)
            block.put(s["step"], t, old_t)
        block.put(p, new, w)

    def _buffer(self, p: torch.Tensor, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A flat tensor of at least numel entries, reused from step to step (fresh large CPU buffers page-fault)."""
        key = (id(p), name)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != p.device:
            buf = self._scratch[key] = torch.empty(numel, dtype=dtype, device=p.device)
        return buf

    def _gather(self, p: torch.Tensor, t: torch.Tensor, rows: torch.Tensor, name: str) -> torch.Tensor:
        """t[rows] (t: p or one of its p-shaped tensors) into reused storage."""
        shape = (len(rows), *t.shape[1:])
        numel = math.prod(shape)
        return torch.index_select(t, 0, rows, out=self._buffer(p, name, numel, t.dtype)[:numel].view(shape))

    @staticmethod
    def _block(p: torch.Tensor, layer: AsymmetricLinear) -> torch.Tensor | None:
        """The rows of p.grad the last backward wrote, as it computed them (None: gather them)."""
        state = layer.state
        block, state.grad_block = state.grad_block, None  # handed over once: the step writes into it
        return block if state.owns(p.grad) else None

    def _adam_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor,
                    block: torch.Tensor | None = None) -> None:
        """Adam on whole rows of a layer's weight and bias (the `neuron` case), row step counts shared.

        The same update as `_lazy_step`, rearranged so that every (k, n_in) pass is in place and
        the parameter is written by one scatter-add: with per-row bc1 = 1 - b1^t, bc2 = 1 - b2^t,
        lr m_hat / (sqrt(v_hat) + eps) = m / (sqrt(v) * bc1 / (lr sqrt(bc2)) + eps bc1 / lr),
        the two per-row coefficients looked up by step count in a table.
        """
        s = self._state(weight, True)
        t = s["step"].index_select(0, rows).add_(1)  # (k, 1)
        s["step"].index_copy_(0, rows, t)
        scale, shift = (c.index_select(0, t.view(-1)).view_as(t) for c in self._adam_table(weight))  # (k, 1)
        self._adam_rows(weight, s, rows, scale, shift, block)
        if bias is not None:
            sb = self._state(bias, True)
            sb["step"] = s["step"].view(-1)  # the bias rows are the weight rows: one count per neuron
            self._adam_rows(bias, sb, rows, scale.view(-1), shift.view(-1))

    def _adam_table(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """By step count t: scale[t] = bc1 / (lr sqrt(bc2)), shift[t] = eps bc1 / lr (grown as needed)."""
        need = self._step_count + 1
        key = (p.device, p.dtype, self.lr, self.betas, self.eps)  # a changed lr makes a new table
        table = self._tables.get(key)
        if table is None or len(table[0]) <= need:
            b1, b2 = self.betas
            t = torch.arange(max(64, 2 * need), dtype=torch.float64)
            bc1, bc2 = -torch.expm1(t * math.log(b1)), -torch.expm1(t * math.log(b2))
            bc1[0] = bc2[0] = 1.0  # t = 0 never indexes (counts start at 1)
            table = self._tables[key] = tuple(c.to(device=p.device, dtype=p.dtype).contiguous() for c in
                                              (bc1 / (self.lr * bc2.sqrt()), bc1 * (self.eps / self.lr)))
        return table

    def _adam_rows(self, p: torch.Tensor, s: dict[str, torch.Tensor], rows: torch.Tensor,
                   scale: torch.Tensor, shift: torch.Tensor, block: torch.Tensor | None = None) -> None:
        """block: p.grad[rows] as the backward computed it (private to the layer: used as scratch)."""
        b1, b2 = self.betas
        g = block if block is not None else self._gather(p, p.grad, rows, "g")  # (k, n_in) rows with gradient
        if self.weight_decay:
            g.add_(p.index_select(0, rows), alpha=self.weight_decay)
        m = self._gather(p, s["exp_avg"], rows, "m").lerp_(g, 1 - b1)  # b1 m + (1 - b1) g
        v = self._gather(p, s["exp_avg_sq"], rows, "v").mul_(b2).addcmul_(g, g, value=1 - b2)  # b2 v + (1 - b2) g^2
        s["exp_avg"].index_copy_(0, rows, m)
        s["exp_avg_sq"].index_copy_(0, rows, v)
        update = torch.sqrt(v, out=g).mul_(scale).add_(shift)  # g is no longer needed: reuse it
        torch.div(m, update, out=update)  # lr m_hat / (sqrt(v_hat) + eps)
        p.index_add_(0, rows, update, alpha=-1.0)
