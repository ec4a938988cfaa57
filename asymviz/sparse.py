"""The sparsification operator and the asymmetric linear layer (DESIGN.md §1).

A linear layer computes z = a W^T + b. Its forward here is exactly `nn.Linear`'s; only the
backward changes. Given g = dL/dz, a neuron mask m (which output neurons take part) and a
connection mask M (which weights take part), with g~ = g * m:

    dW = (g~^T a) * M      db = sum_b g~      da = g~ (W * M)

Dropped neurons get no update and pass no error back; dropped connections get no update and
carry no error. This is deliberately *not* the true gradient (so `gradcheck` fails for keep < n).

The backward reads in three steps: `select` (which neurons: top-k of |g| summed over the batch,
or per example, or at random; which connections: by |W| per kept row, or by input activity),
the masks m and M it implies, and `masked_products`, the three products above. That plain path
is the reference. `asymviz.fast` computes the same result faster (the products on the kept rows
only, a persistent gradient buffer, compiled kernels) and is what runs by default; ASYMVIZ_FAST=0
(or `asymviz.fast.plain()`) runs the plain path instead, and the tests compare the two.

Trio in PyTorch's documented shape: `AsymmetricLinearFunction` / `asymmetric_linear` /
`AsymmetricLinear`. The last backward's kept sets are observable through an opt-in recorder
(`record=True` on the layer's `state`) and its gradient support (which rows/columns/elements
received gradient) is kept for the lazy optimizer update in `asymviz.optim`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from asymviz import fast
from asymviz.errors import ConfigError
from asymviz.fast import compact
from asymviz.strategies import GRANULARITIES, SELECTIONS, check_choice, get_strategy
from asymviz import values

PATHS = ("auto", "compact", "dense")


def keep_count(n: int, sparsity: float) -> int:
    """How many of n entries survive a sparsity s: max(1, round((1 - s) * n))."""
    return max(1, round((1.0 - sparsity) * n))


def check_sparsity(value: float, name: str = "sparsity") -> float:
    """A sparsity must be a number in [0, 1): 0 keeps everything, 0.9 keeps 10 % (asymviz.values)."""
    return values.sparsity(value, name)


@dataclass(frozen=True)
class SparseOptions:
    """Backward options of one layer (plain values; saved on ctx, not as tensors)."""

    sparsity: float = 0.9  # neuron sparsity s: keep max(1, round((1-s) n_out)) neurons
    conn_sparsity: float = 0.0  # connection sparsity c (excessive / refined only)
    selection: str = "topk"  # topk: largest |g| | random: same count at random (ablation)
    granularity: str = "batch"  # batch: one set per mini-batch | example: one set per example
    connection: str | None = None  # None | "weight" (excessive) | "activity" (refined)
    path: str = "auto"  # fast path: auto (`asymviz.fast.compact.use_compact` decides) | compact | dense

    def __post_init__(self) -> None:
        check_choice("path", self.path, PATHS)


class NeedsInputGrad(NamedTuple):
    """Which of the Function's tensor inputs want a gradient (ctx.needs_input_grad, named)."""

    input: bool
    weight: bool
    bias: bool


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
        self.path: str | None = None  # how the last backward ran: "compact" | "dense-fallback" | "plain"
        self.backwards = 0  # backward passes so far (the optimizer skips layers without a new one)
        self.workspace = None  # the fast path's reusable storage (asymviz.fast.compact.Workspace)


# ----------------------------------------------------------------------------- select

@dataclass
class Selection:
    """Which neurons and connections take part in one backward: the masks m and M.

    rows: the kept neurons, sorted (example granularity: those any example kept);
    k: neurons kept per example; example_mask: (B, n_out) bool, m of every example (None in
    batch granularity: m is 1 on `rows` for every example); counts: (n_out,) examples that kept
    each neuron (example granularity); cols (refined): kept input units, sorted, M = 1 on them;
    conn (excessive): (len(rows), n_in) bool, the rows of M that are not all zero.
    """

    rows: torch.Tensor
    k: int
    example_mask: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    conn: torch.Tensor | None = None

    def neuron_mask(self, g: torch.Tensor) -> torch.Tensor:
        """m: (n_out,) 0/1 in batch granularity, (B, n_out) bool per example."""
        if self.example_mask is not None:
            return self.example_mask
        return g.new_zeros(g.shape[1]).index_fill_(0, self.rows, 1.0)

    def weight_mask(self, w: torch.Tensor) -> torch.Tensor | None:
        """M as an (n_out, n_in) bool matrix where it is not column-structured (excessive); else None."""
        if self.conn is None:
            return None
        return torch.zeros(w.shape, dtype=torch.bool, device=w.device).index_copy_(0, self.rows, self.conn)

    def column_mask(self, a: torch.Tensor) -> torch.Tensor | None:
        """refined: c (n_in,) 0/1 on the kept input units, M = 1 c^T (every row keeps the same
        units); None otherwise. a: the layer's input (B, n_in)."""
        if self.cols is None:
            return None
        return torch.zeros(a.shape[1], dtype=a.dtype, device=a.device).index_fill_(0, self.cols, 1.0)


def select(g: torch.Tensor, a: torch.Tensor, w: torch.Tensor, opts: SparseOptions, state: LayerState) -> Selection:
    """The kept neurons (top-k of |g|, or k at random) and connections of one backward."""
    B, n_out = g.shape
    n_in = a.shape[1]
    k = keep_count(n_out, opts.sparsity)
    if opts.granularity == "batch":  # one set for the mini-batch, scores summed over it
        rows = _top(_batch_magnitude(g, state, "abs_g"), k, opts.selection).sort().values  # (k,)
        sel = Selection(rows, k)
    else:  # each example keeps its own k neurons
        top = _top(_magnitude(g, state), k, opts.selection)  # (B, k)
        m = torch.zeros(B, n_out, dtype=torch.bool, device=g.device).scatter_(1, top, True)  # (B, n_out)
        counts = torch.bincount(top.reshape(-1), minlength=n_out)  # (n_out,) examples that kept each neuron
        sel = Selection(torch.nonzero(counts, as_tuple=True)[0], k, example_mask=m, counts=counts)
    kc = keep_count(n_in, opts.conn_sparsity)
    if opts.connection == "activity":  # refined: the kc input units with the largest sum_b |a_bj|
        sel.cols = _batch_magnitude(a, state, "abs_a").topk(kc, sorted=False).indices.sort().values  # (kc,)
    elif opts.connection == "weight":  # excessive: in each kept row, the kc largest |W_ij|
        top = w.index_select(0, sel.rows).abs().topk(kc, dim=1, sorted=False).indices
        sel.conn = torch.zeros(sel.rows.shape[0], n_in, dtype=torch.bool, device=w.device).scatter_(1, top, True)
    return sel


def _top(scores: torch.Tensor, k: int, selection: str) -> torch.Tensor:
    """Indices of the k kept entries along the last dim: largest score, or random."""
    if selection == "random":
        scores = torch.rand(scores.shape, device=scores.device)
    return scores.topk(k, dim=-1, sorted=False).indices


def _batch_magnitude(x: torch.Tensor, state: LayerState, name: str) -> torch.Tensor:
    """sum_b |x_bj| (n,)."""
    if fast.enabled():
        return compact.abs_colsum(x, state, name)
    return x.abs().sum(0)


def _magnitude(x: torch.Tensor, state: LayerState) -> torch.Tensor:
    """|x| (B, n)."""
    return compact.abs_(x, state) if fast.enabled() else x.abs()


# ----------------------------------------------------------------------------- the three products

def masked_products(g: torch.Tensor, a: torch.Tensor, w: torch.Tensor, sel: Selection, needs: NeedsInputGrad):
    """dW = (g~^T a) * M, db = sum_b g~, da = g~ (W * M) with g~ = g * m. Returns (da, dW, db).

    The plain full-size products: the reference the fast path is tested against.
    """
    gm = g * sel.neuron_mask(g)  # (B, n_out)   g~
    M, c = sel.weight_mask(w), sel.column_mask(a)  # M (n_out, n_in) bool, or M = 1 c^T (refined)
    grad_a = grad_w = grad_b = None
    if needs.weight:
        grad_w = gm.t() @ a  # (n_out, n_in)   g~^T a
        if M is not None:
            grad_w.mul_(M)  # * M
        elif c is not None:
            grad_w.mul_(c)
    if needs.input:
        grad_a = gm @ (w * M if M is not None else w)  # (B, n_in)   g~ (W * M)
        if c is not None:
            grad_a.mul_(c)  # M = 1 c^T: g~ (W * M) = (g~ W) * c
    if needs.bias:
        grad_b = gm.sum(0)  # (n_out,)   sum_b g~
    return grad_a, grad_w, grad_b


# ----------------------------------------------------------------------------- backward

def sparse_backward(g, a, w, opts: SparseOptions, state: LayerState, needs: NeedsInputGrad, ctx=None):
    """The asymmetric backward of one layer: select -> masks -> the three products.

    g (B, n_out), a (B, n_in), w (n_out, n_in). Returns (da, dW, db), None where not needed.
    ctx: the autograd node (the fast path's gradient buffer needs to know where dW goes).
    """
    sel = select(g, a, w, opts, state)
    if fast.enabled():
        grad_a, grad_w, grad_b, path = compact.backward(g, a, w, sel, opts, needs, state, ctx,
                                                        masked_products=masked_products)
    else:
        (grad_a, grad_w, grad_b), path = masked_products(g, a, w, sel, needs), "plain"
    n_out = g.shape[1]
    state.weight_support = Support(rows=sel.rows, cols=sel.cols, mask=sel.conn)
    state.bias_support = Support(rows=sel.rows)
    state.kept_fraction = sel.k / n_out
    state.path = path
    if state.record:
        state.last = _record(sel, g.shape[0], n_out, a.shape[1])
    return grad_a, grad_w, grad_b


def _record(sel: Selection, B: int, n_out: int, n_in: int) -> MaskRecord:
    if sel.example_mask is None:
        counts = torch.zeros(n_out, dtype=torch.int32, device=sel.rows.device).index_fill_(0, sel.rows, B)
        return MaskRecord(n_out, n_in, sel.rows, counts, B, conn_mask=sel.conn, conn_cols=sel.cols)
    kept = sel.counts.topk(sel.k, sorted=False).indices.sort().values  # the k neurons kept most often
    conn_mask = sel.conn.index_select(0, torch.searchsorted(sel.rows, kept)) if sel.conn is not None else None
    return MaskRecord(n_out, n_in, kept, sel.counts.to(torch.int32), B, conn_mask=conn_mask, conn_cols=sel.cols,
                      example_mask=sel.example_mask)


# ----------------------------------------------------------------------------- autograd

class AsymmetricLinearFunction(torch.autograd.Function):
    """z = a W^T + b forward; the sparsified backward of DESIGN.md §1."""

    @staticmethod
    def forward(ctx, input, weight, bias, opts, state):
        # The combined form (ctx in forward, no setup_context): with a separate setup_context,
        # every `apply` binds its arguments through inspect.signature (~50 us a call here).
        ctx.save_for_backward(input, weight)
        ctx.opts = opts
        ctx.state = state
        ctx.has_bias = bias is not None
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        needs = NeedsInputGrad(*ctx.needs_input_grad[:2], ctx.has_bias and ctx.needs_input_grad[2])
        g = grad_output.reshape(-1, grad_output.shape[-1])  # (B, n_out)
        a = input.reshape(-1, input.shape[-1])  # (B, n_in)
        grad_a, grad_weight, grad_bias = sparse_backward(g, a, weight, ctx.opts, ctx.state, needs, ctx)
        ctx.state.backwards += 1
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

    In any training loop (asymviz's, or a plain one with a PyTorch optimizer and
    `model.zero_grad()`), the layer keeps its weight-gradient storage from step to step
    (`asymviz.fast.gradbuf`); `release_grad_buffer()` gives that memory back.
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

    def release_grad_buffer(self) -> None:
        """Give back the weight-gradient storage the layer keeps between steps (e.g. after training)."""
        from asymviz.fast import gradbuf

        gradbuf.release(self.state)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.dense_backward:
            state = self.state
            if state.weight_support is not None or state.last is not None:
                state.weight_support = state.bias_support = state.last = None
                state.kept_fraction = 1.0
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
