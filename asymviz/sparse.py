"""The sparsification operator and the asymmetric linear layer (DESIGN.md §1).

A linear layer computes z = a W^T + b. Its forward here is exactly `nn.Linear`'s; only the
backward changes. Given g = dL/dz, a neuron mask m (which output neurons take part) and a
connection mask M (which weights take part), with g~ = g * m:

    dW = (g~^T a) * M      db = sum_b g~      da = g~ (W * M)

Dropped neurons get no update and pass no error back; dropped connections get no update and
carry no error. This is deliberately *not* the true gradient (so `gradcheck` fails for keep < n).

Trio in PyTorch's documented shape: `AsymmetricLinearFunction` / `asymmetric_linear` /
`AsymmetricLinear`. In `batch` granularity only the kept rows (and, for `refined`, the kept
columns) enter the matmuls; `example` granularity masks.

The last backward's kept sets are observable through an opt-in recorder (`record=True` on the
layer's `state`) and its gradient support (which rows/columns/elements received gradient) is
kept for the lazy optimizer update in `asymviz.optim`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asymviz.errors import ConfigError
from asymviz.strategies import GRANULARITIES, SELECTIONS, check_choice, get_strategy


def keep_count(n: int, sparsity: float) -> int:
    """How many of n entries survive a sparsity s: max(1, round((1 - s) * n))."""
    return max(1, round((1.0 - sparsity) * n))


def check_sparsity(value: float, name: str = "sparsity") -> float:
    """A sparsity must be a number in [0, 1): 0 keeps everything, 0.9 keeps 10 %."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}.") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ConfigError(f"{name} must be in [0, 1) (0 keeps every neuron, 0.9 keeps 10 %), got {value!r}.")
    return s


@dataclass(frozen=True)
class SparseOptions:
    """Backward options of one layer (plain values; saved on ctx, not as tensors)."""

    sparsity: float = 0.9  # neuron sparsity s: keep max(1, round((1-s) n_out)) neurons
    conn_sparsity: float = 0.0  # connection sparsity c (excessive / refined only)
    selection: str = "topk"  # topk: largest |g| | random: same count at random (ablation)
    granularity: str = "batch"  # batch: one set per mini-batch | example: one set per example
    connection: str | None = None  # None | "weight" (excessive) | "activity" (refined)


@dataclass
class Support:
    """Where the last backward put gradient: the lazy optimizer touches only these entries.

    rows: kept output neurons (None = all); cols: kept input units (None = all);
    mask: bool (len(rows), len(cols)) elementwise mask inside that block (None = all).
    """

    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class MaskRecord:
    """The kept sets of one backward, for visualization.

    kept: indices of the kept neurons (example granularity: the k neurons kept by the most
    examples); counts: per neuron, how many examples kept it (batch: 0 or batch size);
    conn_mask (excessive): the per-row connection mask of the kept rows;
    conn_cols (refined): the kept input units; example_mask (example granularity): the
    (B, n_out) neuron mask of every example.
    """

    n_out: int
    n_in: int
    kept: torch.Tensor
    counts: torch.Tensor
    n_examples: int
    conn_mask: torch.Tensor | None = None
    conn_cols: torch.Tensor | None = None
    example_mask: torch.Tensor | None = None

    def connection_mask(self) -> torch.Tensor:
        """The full (n_out, n_in) connection mask of the kept rows (built only on demand)."""
        m = torch.zeros(self.n_out, self.n_in, dtype=torch.bool, device=self.kept.device)
        if self.conn_mask is not None:
            m[self.kept] = self.conn_mask  # rows aligned with kept
        elif self.conn_cols is not None:
            m[self.kept.unsqueeze(1), self.conn_cols.unsqueeze(0)] = True
        else:
            m[self.kept] = True
        return m


class LayerState:
    """Mutable per-layer state shared between a module and its backward."""

    def __init__(self) -> None:
        self.record = False  # opt-in recorder: keep the last MaskRecord
        self.last: MaskRecord | None = None
        self.weight_support: Support | None = None
        self.bias_support: Support | None = None
        self.kept_fraction = 1.0  # kept neurons / n_out of the last backward


def _select(scores: torch.Tensor, k: int, selection: str) -> torch.Tensor:
    """Indices of the k kept entries along the last dim: largest score, or random."""
    if selection == "random":
        scores = torch.rand(scores.shape, device=scores.device)
    return scores.topk(k, dim=-1, sorted=False).indices


def _connection_rows(w_rows: torch.Tensor, kc: int) -> torch.Tensor:
    """Excessive: per row, the kc connections with the largest |W|, as a bool mask."""
    top = w_rows.abs().topk(kc, dim=1, sorted=False).indices
    return torch.zeros(w_rows.shape, dtype=torch.bool, device=w_rows.device).scatter_(1, top, True)


def _backward_batch(g, a, w, opts: SparseOptions, state: LayerState, need):
    """One neuron set for the mini-batch (scores summed over it); compacted matmuls."""
    B, n_out = g.shape
    n_in = a.shape[1]
    k = keep_count(n_out, opts.sparsity)
    idx = _select(g.abs().sum(0), k, opts.selection).sort().values  # (k,)
    g_k = g.index_select(1, idx)  # (B, k)   g~ restricted to kept neurons
    w_k = w.index_select(0, idx)  # (k, n_in)
    grad_a = grad_w = grad_b = None
    conn_mask = cols = None
    if opts.connection is None:
        if need[1]:
            grad_w = g.new_zeros(n_out, n_in).index_copy_(0, idx, g_k.t() @ a)  # rows idx of g~^T a
        if need[0]:
            grad_a = g_k @ w_k  # (B, n_in)   g~ W
    elif opts.connection == "weight":
        conn_mask = _connection_rows(w_k, keep_count(n_in, opts.conn_sparsity))  # (k, n_in)
        if need[1]:
            grad_w = g.new_zeros(n_out, n_in).index_copy_(0, idx, (g_k.t() @ a) * conn_mask)
        if need[0]:
            grad_a = g_k @ (w_k * conn_mask)  # g~ (W * M)
    else:  # "activity": keep the input units with the largest sum_b |a_bj|
        cols = a.abs().sum(0).topk(keep_count(n_in, opts.conn_sparsity), sorted=False).indices.sort().values
        a_c = a.index_select(1, cols)  # (B, kc)
        w_kc = w_k.index_select(1, cols)  # (k, kc)
        if need[1]:
            block = g.new_zeros(k, n_in).index_copy_(1, cols, g_k.t() @ a_c)  # (k, n_in)
            grad_w = g.new_zeros(n_out, n_in).index_copy_(0, idx, block)
        if need[0]:
            grad_a = g.new_zeros(B, n_in).index_copy_(1, cols, g_k @ w_kc)
    if need[2]:
        grad_b = g.new_zeros(n_out).index_copy_(0, idx, g_k.sum(0))
    state.weight_support = Support(rows=idx, cols=cols, mask=conn_mask)
    state.bias_support = Support(rows=idx)
    state.kept_fraction = k / n_out
    if state.record:
        counts = torch.zeros(n_out, dtype=torch.int32, device=g.device).index_fill_(0, idx, B)
        state.last = MaskRecord(n_out, n_in, idx, counts, B, conn_mask=conn_mask, conn_cols=cols)
    return grad_a, grad_w, grad_b


def _backward_example(g, a, w, opts: SparseOptions, state: LayerState, need):
    """Each example keeps its own top-k neurons (meProp's original form); masked matmuls."""
    B, n_out = g.shape
    n_in = a.shape[1]
    k = keep_count(n_out, opts.sparsity)
    sel = _select(g.abs(), k, opts.selection)  # (B, k)
    m = torch.zeros_like(g).scatter_(1, sel, 1.0)  # (B, n_out) neuron mask per example
    gm = g * m  # g~
    counts = m.sum(0)  # (n_out,) examples that kept each neuron
    rows = torch.nonzero(counts, as_tuple=True)[0]  # neurons kept by any example
    conn = cols = None
    w_eff = w
    if opts.connection == "weight":
        conn = _connection_rows(w, keep_count(n_in, opts.conn_sparsity))  # (n_out, n_in)
        w_eff = w * conn
    elif opts.connection == "activity":
        cols = a.abs().sum(0).topk(keep_count(n_in, opts.conn_sparsity), sorted=False).indices.sort().values
        conn = torch.zeros(n_in, dtype=torch.bool, device=g.device).index_fill_(0, cols, True)
        w_eff = w * conn  # broadcast over rows: column mask
    grad_a = gm @ w_eff if need[0] else None  # g~ (W * M)
    grad_w = None
    if need[1]:
        grad_w = gm.t() @ a  # (n_out, n_in)
        if conn is not None:
            grad_w = grad_w * conn
    grad_b = gm.sum(0) if need[2] else None
    row_mask = conn.index_select(0, rows) if opts.connection == "weight" else None
    state.weight_support = Support(rows=rows, cols=cols, mask=row_mask)
    state.bias_support = Support(rows=rows)
    state.kept_fraction = k / n_out
    if state.record:
        kept = counts.topk(k, sorted=False).indices.sort().values
        state.last = MaskRecord(
            n_out, n_in, kept, counts.to(torch.int32), B,
            conn_mask=conn.index_select(0, kept) if opts.connection == "weight" else None,
            conn_cols=cols, example_mask=m.bool(),
        )
    return grad_a, grad_w, grad_b


class AsymmetricLinearFunction(torch.autograd.Function):
    """z = a W^T + b forward; the sparsified backward of DESIGN.md §1."""

    @staticmethod
    def forward(input, weight, bias, opts, state):
        return F.linear(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, opts, state = inputs
        ctx.save_for_backward(input, weight)
        ctx.opts = opts
        ctx.state = state
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        g = grad_output.reshape(-1, grad_output.shape[-1])  # (B, n_out)
        a = input.reshape(-1, input.shape[-1])  # (B, n_in)
        step = _backward_batch if ctx.opts.granularity == "batch" else _backward_example
        grad_a, grad_weight, grad_bias = step(g, a, weight, ctx.opts, ctx.state, need)
        if grad_a is not None:
            grad_input = grad_a.reshape(input.shape)
        return grad_input, grad_weight, grad_bias, None, None


def asymmetric_linear(input, weight, bias=None, opts: SparseOptions | None = None, state: LayerState | None = None):
    """Functional form: a dense linear forward with the sparsified backward."""
    return AsymmetricLinearFunction.apply(input, weight, bias, opts or SparseOptions(), state or LayerState())


class AsymmetricLinear(nn.Module):
    """A linear layer whose backward keeps only some neurons (and connections).

    strategy: a name from `asymviz.strategies` (symmetric, dropout, neuron, excessive, refined);
    options a strategy does not use are ignored (symmetric/dropout have no sparsity, neuron no
    connection sparsity). Forward output equals `nn.Linear` with the same weights.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, strategy: str = "neuron",
                 sparsity: float = 0.9, conn_sparsity: float = 0.0, selection: str = "topk",
                 granularity: str = "batch", device=None, dtype=None) -> None:
        super().__init__()
        preset = get_strategy(strategy)
        sparsity = check_sparsity(sparsity, "sparsity")
        conn_sparsity = check_sparsity(conn_sparsity, "conn_sparsity")
        check_choice("selection", selection, SELECTIONS)
        check_choice("granularity", granularity, GRANULARITIES)
        self.in_features, self.out_features, self.strategy = in_features, out_features, strategy
        self.options = SparseOptions(
            sparsity=sparsity if preset.neuron_sparse else 0.0,
            conn_sparsity=conn_sparsity if preset.connection else 0.0,
            selection=selection, granularity=granularity, connection=preset.connection,
        )
        self.state = LayerState()
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    @property
    def keep(self) -> int:
        """Neurons kept in the backward."""
        return keep_count(self.out_features, self.options.sparsity)

    @property
    def dense_backward(self) -> bool:
        """True when the backward is plain backprop (nothing dropped): use autograd's own."""
        o = self.options
        return self.keep == self.out_features and (o.connection is None or keep_count(self.in_features, o.conn_sparsity) == self.in_features)

    def reset_parameters(self) -> None:
        # Same initialization as nn.Linear, so a seed gives the same network for every strategy.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.dense_backward:
            self.state.weight_support = self.state.bias_support = None
            self.state.kept_fraction = 1.0
            self.state.last = None
            return F.linear(input, self.weight, self.bias)
        return AsymmetricLinearFunction.apply(input, self.weight, self.bias, self.options, self.state)

    def extra_repr(self) -> str:
        o = self.options
        text = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, strategy={self.strategy}"
        if o.sparsity:
            text += f", sparsity={o.sparsity:g} (keep {self.keep})"
        if o.connection:
            text += f", conn_sparsity={o.conn_sparsity:g}"
        if o.sparsity or o.connection:
            text += f", selection={o.selection}, granularity={o.granularity}"
        return text
