"""The sparsification operator and the asymmetric linear layer (DESIGN.md §1).

A linear layer computes z = a W^T + b. Its forward here is exactly `nn.Linear`'s; only the
backward changes. Given g = dL/dz, a neuron mask m (which output neurons take part) and a
connection mask M (which weights take part), with g~ = g * m:

    dW = (g~^T a) * M      db = sum_b g~      da = g~ (W * M)

Dropped neurons get no update and pass no error back; dropped connections get no update and
carry no error. This is deliberately *not* the true gradient (so `gradcheck` fails for keep < n).

Trio in PyTorch's documented shape: `AsymmetricLinearFunction` / `asymmetric_linear` /
`AsymmetricLinear`. The last backward's kept sets are observable through an opt-in recorder
(`record=True` on the layer's `state`) and its gradient support (which rows/columns/elements
received gradient) is kept for the lazy optimizer update in `asymviz.optim`.

Two ways to compute the same masked result (DESIGN.md §5), chosen per layer by `use_compact`:
- compact: only the k kept rows of g~ (and, for `refined`, the kept columns of a) enter the
  matmuls: g_k = g[:, kept] (B, k), dW_k = g_k^T a (k, n_in), da = g_k W[kept] (B, n_in).
  `example` granularity compacts on the union of the neurons any example kept.
- dense: the full matmuls on the masked g~. Used where compaction cannot win: large keep
  fractions (the gathers cost more than the saved work) and tiny layers (overhead-bound).
  With `example` granularity and few neurons per example, da = g~ W runs as a sparse (CSR)
  product, since the union of kept neurons usually covers the whole layer.
`SparseOptions.path` forces one of them (tests check that both give the same gradients).

No step allocates or clears a full dW: `AsymmetricOptimizer.zero_grad` (`reset_weight_grad`)
sets `.grad` to None and keeps its storage in the layer state; the next backward re-zeroes the
rows it does not overwrite, copies the k new rows in and returns that tensor, which autograd
takes over as `.grad` without a copy. When `.grad` already holds a gradient (accumulation over
several backwards) the k rows go out as a sparse COO tensor, so autograd's add touches k rows.
`p.grad` is always the dense, correct masked gradient after `backward()` (and
`torch.autograd.grad` gets a dense one). The compact dW rows also stay in the state
(`grad_block`) for the optimizer, which uses them only while `.grad` is unchanged. Temporaries
that never leave the backward (|g|, W[kept]) live in storage reused from step to step.
On the CPU, the compiled kernels of `asymviz.kernels` (when built) do the column sums, the row
and column copies and the gradient buffer's update in one pass each; everything else, and all
of it on CUDA, is PyTorch ops, with no host synchronization in `batch` granularity (`example`
needs one for the size of the kept union).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asymviz import kernels
from asymviz.errors import ConfigError
from asymviz.strategies import GRANULARITIES, SELECTIONS, check_choice, get_strategy

PATHS = ("auto", "compact", "dense")
COMPACT_MAX_FRACTION = 0.8  # compact only while kept work / full work is at most this ...
COMPACT_MIN_SAVING = 3_000_000  # ... and it saves at least this many multiply-adds per matmul
CSR_MAX_FRACTION = 0.15  # example granularity: da = g~ W as a sparse (CSR) product up to this keep


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


def use_compact(batch: int, n_in: int, n_out: int, k: int, kc: int | None = None) -> bool:
    """The fallback rule: compact when the saved matmul work pays for the extra operations.

    k of n_out rows (and kc of n_in columns for `refined`) take part, a fraction f of the work
    W = batch * n_in * n_out. Compacting costs a few gathers, a scatter of dW and ~10 more small
    operations (tens of microseconds on 2 CPU threads, whatever the size), so it needs
    (1 - f) W >= COMPACT_MIN_SAVING; and above f = 0.8 the copies of the kept blocks cost about
    what they save. Measured per layer with `--path compact` vs `--path dense` (BENCHMARKS.md).
    """
    kc = n_in if kc is None else kc
    f = (k * kc) / (n_out * n_in)
    return f <= COMPACT_MAX_FRACTION and (1.0 - f) * batch * n_in * n_out >= COMPACT_MIN_SAVING


@dataclass(frozen=True)
class SparseOptions:
    """Backward options of one layer (plain values; saved on ctx, not as tensors)."""

    sparsity: float = 0.9  # neuron sparsity s: keep max(1, round((1-s) n_out)) neurons
    conn_sparsity: float = 0.0  # connection sparsity c (excessive / refined only)
    selection: str = "topk"  # topk: largest |g| | random: same count at random (ablation)
    granularity: str = "batch"  # batch: one set per mini-batch | example: one set per example
    connection: str | None = None  # None | "weight" (excessive) | "activity" (refined)
    path: str = "auto"  # auto: `use_compact` decides | compact | dense: same result, other kernels

    def __post_init__(self) -> None:
        check_choice("path", self.path, PATHS)


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
        self.path: str | None = None  # "compact" | "dense-fallback" of the last backward
        self.backwards = 0  # backward passes so far (the optimizer skips layers without a new one)
        # The persistent weight-gradient buffer. While it is `.grad`: its storage (not the tensor:
        # autograd takes over without a copy only a gradient tensor nobody else holds), known to
        # be zero outside `_grad_rows` while its version counter is `_grad_version` (any other
        # write: unknown). After `reset_weight_grad(set_to_none=True)`: held here as `_stash`.
        self._grad_storage = None
        self._grad_version = -1
        self._grad_rows: list[torch.Tensor] = []
        self._stash: torch.Tensor | None = None
        self._stash_rows: list[torch.Tensor] = []
        # The last compact dW block (its rows of `.grad`, same values), for the optimizer to
        # read instead of gathering them again; valid while `.grad` is unchanged.
        self.grad_block: torch.Tensor | None = None
        self._scratch: dict[str, torch.Tensor] = {}  # reusable storage for internal temporaries

    def owns(self, grad: torch.Tensor | None) -> bool:
        """True when `grad` is this layer's buffer, unchanged since the layer last wrote it."""
        held = self._grad_storage
        return (grad is not None and held is not None and grad._version == self._grad_version
                and grad.layout == torch.strided and grad.is_contiguous() and grad.storage_offset() == 0
                and grad.untyped_storage().data_ptr() == held.data_ptr() and grad.nbytes == held.nbytes())

    def _track(self, buf: torch.Tensor, rows: list[torch.Tensor], block: torch.Tensor | None) -> None:
        self._grad_storage = buf.untyped_storage()
        self._grad_version = buf._version
        self._grad_rows = rows
        self.grad_block = block

    def _forget(self) -> None:
        self._grad_storage, self._grad_rows, self.grad_block = None, [], None
        self._stash, self._stash_rows = None, []


def _scratch(state: LayerState, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
    """Reusable storage for a temporary that never leaves the backward (None: allocate normally).

    Fresh megabyte-sized CPU allocations cost page faults every step; reusing them does not.
    Off when the backward itself is being recorded (create_graph=True).
    """
    if torch.is_grad_enabled():
        return None
    numel = math.prod(shape)
    buf = state._scratch.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
        buf = like.new_empty(numel)
        state._scratch[name] = buf
    return buf[:numel].view(shape)


# ----------------------------------------------------------------------------- selection

def _select(scores: torch.Tensor, k: int, selection: str) -> torch.Tensor:
    """Indices of the k kept entries along the last dim: largest score, or random."""
    if selection == "random":
        scores = torch.rand(scores.shape, device=scores.device)
    return scores.topk(k, dim=-1, sorted=False).indices


def _connection_rows(w_rows: torch.Tensor, kc: int) -> torch.Tensor:
    """Excessive: per row, the kc connections with the largest |W|, as a bool mask."""
    top = w_rows.abs().topk(kc, dim=1, sorted=False).indices
    return torch.zeros(w_rows.shape, dtype=torch.bool, device=w_rows.device).scatter_(1, top, True)


def _abs_sum(x: torch.Tensor, state: LayerState, name: str) -> torch.Tensor:
    """sum_b |x_bj|, the batch-summed magnitude (one read with the C kernel; else |x| in reused storage)."""
    if not torch.is_grad_enabled() and kernels.usable(x):
        return kernels.abs_colsum(x)
    buf = _scratch(state, name, tuple(x.shape), x)
    return (x.abs() if buf is None else torch.abs(x, out=buf)).sum(0)


def _rows(w: torch.Tensor, rows: torch.Tensor, state: LayerState, name: str = "w_k") -> torch.Tensor:
    """w[rows] (a copy, in reused storage)."""
    buf = _scratch(state, name, (len(rows), *w.shape[1:]), w)
    if buf is None:
        return w.index_select(0, rows)
    if w.dim() == 2 and kernels.usable(w, rows):
        return kernels.gather_rows(w, rows, out=buf)
    return torch.index_select(w, 0, rows, out=buf)


def _active_columns(a: torch.Tensor, kc: int, state: LayerState) -> torch.Tensor:
    """Refined: the kc input units with the largest activity sum_b |a_bj|, sorted."""
    return _abs_sum(a, state, "abs_a").topk(kc, sorted=False).indices.sort().values


# ----------------------------------------------------------------------------- gradient delivery

def _will_accumulate(weight: torch.Tensor, node) -> bool:
    """True when autograd will accumulate our weight gradient into `weight.grad` (not torch.autograd.grad)."""
    if not weight.is_leaf or torch.is_grad_enabled():
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except Exception:
        return False


def _weight_grad(weight, node, state: LayerState, rows: torch.Tensor, block=None, full=None, cols=None):
    """What the backward returns for W, whose non-zero rows are `rows`.

    block: those rows, (k, n_in), or with `cols` (refined) only their kept columns, (k, kc)
    (compact path); full: the whole (n_out, n_in) gradient (dense path).
    - `.grad` is None (after `reset_weight_grad`) and a buffer is stashed: the rows the last step
      wrote are re-zeroed where this one does not overwrite them, the new block copied in, and
      the buffer returned dense; autograd takes it over as `.grad` without a copy (nobody else
      holds it).
    - `.grad` is this layer's dense buffer (gradients accumulating over several backwards): a
      sparse COO tensor of the k rows, so that autograd's add touches k rows, not n_out.
    - otherwise (torch.autograd.grad, a first step, a foreign `.grad`): a fresh dense gradient.
    """
    if full is not None:
        if _will_accumulate(weight, node) and weight.grad is not None:
            state._forget()  # most rows written: the next reset lets go of it
        return full
    if not _will_accumulate(weight, node):
        return _scatter(block.new_zeros(weight.shape), rows, block, cols, state)  # fresh dense dW
    grad = weight.grad
    if grad is None:
        buf, written = state._stash, state._stash_rows
        state._stash, state._stash_rows = None, []
        if buf is None or buf.shape != weight.shape or buf.dtype != block.dtype or buf.device != block.device:
            buf = block.new_zeros(weight.shape)
        elif cols is None and len(written) == 1 and kernels.usable(buf, block, rows, written[0]):
            kernels.replace_rows(buf, rows, block, written[0])  # stale rows zeroed and new ones copied, one pass
            state._track(buf, [rows], block)
            return buf
        else:
            for old in written:  # rows written last step; whole rows are overwritten now, column blocks are not
                stale = old if cols is not None else old[~torch.isin(old, rows)]
                if kernels.usable(buf, stale):
                    kernels.clear_rows(buf, stale)
                else:
                    buf.index_fill_(0, stale, 0.0)
        _scatter(buf, rows, block, cols, state)
        state._track(buf, [rows], block)
        return buf
    if grad.layout == torch.strided and grad.shape == weight.shape and grad.dtype == block.dtype:
        if state.owns(grad):
            state._track(grad, state._grad_rows + [rows], None)
            state._grad_version += 1  # autograd's in-place add
        else:
            state._forget()  # contents unknown: the next reset clears it whole
        if cols is not None:  # the (k, kc) block as whole rows, zero outside the kept columns
            block = block.new_zeros(len(rows), weight.shape[1]).index_copy_(1, cols, block)
        return torch.sparse_coo_tensor(rows.unsqueeze(0), block, weight.shape, is_coalesced=True,
                                       check_invariants=False)
    return _scatter(block.new_zeros(weight.shape), rows, block, cols, state)


def _scatter(dst: torch.Tensor, rows: torch.Tensor, block: torch.Tensor, cols, state: LayerState) -> torch.Tensor:
    """dst[rows] = block, or dst[rows][:, cols] = block (refined), in place; returns dst."""
    if cols is None:
        return dst.index_copy_(0, rows, block)
    if kernels.usable(dst, block, rows, cols):
        return kernels.scatter_block(dst, rows, cols, block)
    flat = _flat_index(rows, cols, dst.shape[1], state)
    dst.view(-1).scatter_(0, flat, block.reshape(-1))  # faster than index_copy_ / index_put_ here
    return dst


def reset_weight_grad(weight: torch.Tensor, state: LayerState, set_to_none: bool = True) -> None:
    """Zero a lazy layer's `weight.grad`, keeping its storage for the next backward.

    set_to_none (default, like PyTorch): `.grad` becomes None and the buffer is stashed in the
    layer state; the next backward re-zeroes only the rows it does not overwrite. Otherwise
    `.grad` stays a tensor, zeroed in place: only the rows written since the last reset when
    the buffer is known (its version counter tells), whole otherwise. After a dense-fallback
    backward (most rows written) nothing is kept: the next gradient is autograd's own.
    """
    buf = weight.grad
    if buf is None:
        return
    known = state.owns(buf) and buf.layout == torch.strided and state.path != "dense-fallback"
    rows = state._grad_rows
    state._forget()
    if set_to_none:
        weight.grad = None
        if known:
            state._stash, state._stash_rows = buf, rows
        return
    if known:
        for r in rows:
            buf.index_fill_(0, r, 0.0)
    else:
        buf.zero_()
    state._track(buf, [], None)


# ----------------------------------------------------------------------------- the two paths

def _compact(g_k, rows, a, w, state: LayerState, cols, conn, need):
    """Matmuls on the kept rows only: g_k = g~[:, rows] (B, k).

    Returns (da, dW block): the block is (k, n_in), for `refined` (k, kc): the kept columns only.
    """
    B = g_k.shape[0]
    n_in = a.shape[1]
    grad_a = block = None
    if cols is not None:  # refined: kept columns too; dW and da live in (k, kc) and (B, kc)
        fast = not torch.is_grad_enabled() and kernels.usable(a, g_k, cols)
        if need[1]:
            a_c = kernels.gather_cols(a, cols) if fast else a.index_select(1, cols)  # (B, kc)
            block = g_k.t() @ a_c  # (k, kc)
        if need[0]:
            d_c = g_k @ _block_of(w, rows, cols, state)  # (B, kc)
            grad_a = kernels.expand_cols(d_c, cols, n_in) if fast else g_k.new_zeros(B, n_in).index_copy_(1, cols, d_c)
        return grad_a, block
    if need[1]:
        block = g_k.t() @ a  # (k, n_in)   rows of g~^T a
        if conn is not None:
            block.mul_(conn)  # * M
    if need[0]:
        w_k = _rows(w, rows, state)  # (k, n_in)
        if conn is not None:
            w_k.mul_(conn)  # W * M
        grad_a = g_k @ w_k  # (B, n_in)   g~ (W * M)
    return grad_a, block


def _block_of(w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, state: LayerState) -> torch.Tensor:
    """W[rows][:, cols] (k, kc), in reused storage."""
    buf = _scratch(state, "w_kc", (len(rows), len(cols)), w)
    if buf is not None and kernels.usable(w, rows, cols):
        return kernels.gather_block(w, rows, cols, out=buf)
    return _rows(w, rows, state).index_select(1, cols)


def _flat_index(rows: torch.Tensor, cols: torch.Tensor, n_in: int, state: LayerState) -> torch.Tensor:
    """rows x cols as flat row-major indices into an (n_out, n_in) matrix (in reused storage)."""
    r, c = (rows * n_in).unsqueeze(1), cols.unsqueeze(0)
    buf = _scratch(state, "flat", (len(rows), len(cols)), rows)
    return (r + c if buf is None else torch.add(r, c, out=buf)).view(-1)


def _dense(gm, rows, a, w, opts: SparseOptions, cols, conn, need, gm_csr=None):
    """The same result with full matmuls on the masked g~ (B, n_out). Returns (da, full dW).

    gm_csr: g~ as a sparse CSR matrix (example granularity, few kept per example): da = g~ W
    then costs B k n_in multiply-adds instead of B n_out n_in.
    """
    n_out, n_in = w.shape
    M = colmask = None
    if conn is not None:  # excessive: row masks of the kept rows, zero elsewhere
        M = torch.zeros(n_out, n_in, dtype=torch.bool, device=w.device).index_copy_(0, rows, conn)
    elif cols is not None:  # refined: a column mask
        colmask = torch.zeros(n_in, dtype=gm.dtype, device=w.device).index_fill_(0, cols, 1.0)
    grad_a = grad_w = None
    if need[1]:
        grad_w = gm.t() @ a  # (n_out, n_in)
        if M is not None:
            grad_w.mul_(M)
        elif colmask is not None:
            grad_w.mul_(colmask)
    if need[0]:
        grad_a = (gm if gm_csr is None else gm_csr) @ (w * M if M is not None else w)  # (B, n_in)
        if colmask is not None:
            grad_a.mul_(colmask)  # g~ (W * M) with a column mask
    return grad_a, grad_w


def _choose(opts: SparseOptions, B: int, n_in: int, n_out: int, k: int, kc: int) -> bool:
    if opts.path == "auto":
        return use_compact(B, n_in, n_out, k, kc)
    return opts.path == "compact"


def _backward_batch(g, a, w, opts: SparseOptions, state: LayerState, need, node=None):
    """One neuron set for the mini-batch (scores summed over it)."""
    B, n_out = g.shape
    n_in = a.shape[1]
    k = keep_count(n_out, opts.sparsity)
    idx = _select(_abs_sum(g, state, "abs_g"), k, opts.selection).sort().values  # (k,) kept neurons
    cols = conn = None
    kc = n_in
    if opts.connection == "activity":
        kc = keep_count(n_in, opts.conn_sparsity)
        cols = _active_columns(a, kc, state)  # (kc,)
    elif opts.connection == "weight":
        conn = _connection_rows(w.index_select(0, idx), keep_count(n_in, opts.conn_sparsity))  # (k, n_in)
    compact = _choose(opts, B, n_in, n_out, k, kc)
    grad_w = None
    if compact:
        g_k = g.index_select(1, idx)  # (B, k)   g~ restricted to kept neurons
        grad_a, block = _compact(g_k, idx, a, w, state, cols, conn, need)
        if need[1]:
            grad_w = _weight_grad(w, node, state, idx, block=block, cols=cols)
        grad_b = g.new_zeros(n_out).index_copy_(0, idx, g_k.sum(0)) if need[2] else None
    else:
        m = g.new_zeros(n_out).index_fill_(0, idx, 1.0)  # neuron mask
        gm = g * m  # (B, n_out)   g~
        grad_a, full = _dense(gm, idx, a, w, opts, cols, conn, need)
        if need[1]:
            grad_w = _weight_grad(w, node, state, idx, full=full)
        grad_b = gm.sum(0) if need[2] else None
    _note(state, idx, cols, conn, k / n_out, compact)
    if state.record:
        counts = torch.zeros(n_out, dtype=torch.int32, device=g.device).index_fill_(0, idx, B)
        state.last = MaskRecord(n_out, n_in, idx, counts, B, conn_mask=conn, conn_cols=cols)
    return grad_a, grad_w, grad_b


def _note(state: LayerState, rows, cols, conn, kept_fraction: float, compact: bool) -> None:
    """What the last backward did: its gradient support (for the lazy optimizer), kept fraction, path."""
    state.weight_support = Support(rows=rows, cols=cols, mask=conn)
    state.bias_support = Support(rows=rows)
    state.kept_fraction = kept_fraction
    state.path = "compact" if compact else "dense-fallback"


def _backward_example(g, a, w, opts: SparseOptions, state: LayerState, need, node=None):
    """Each example keeps its own top-k neurons (meProp's original form).

    g~ is built by a gather/scatter of the kept entries; the matmuls then compact on the union
    of the neurons any example kept (exact: g~ is zero outside it) when that union is small.
    """
    B, n_out = g.shape
    n_in = a.shape[1]
    k = keep_count(n_out, opts.sparsity)
    buf = _scratch(state, "abs_g", tuple(g.shape), g)
    sel = _select(g.abs() if buf is None else torch.abs(g, out=buf), k, opts.selection)  # (B, k)
    m = torch.zeros(B, n_out, dtype=torch.bool, device=g.device).scatter_(1, sel, True)  # neuron mask
    gm = g * m  # (B, n_out)   g~
    counts = torch.bincount(sel.reshape(-1), minlength=n_out)  # (n_out,) examples that kept each neuron
    rows = torch.nonzero(counts, as_tuple=True)[0]  # neurons kept by any example (sorted)
    cols = conn = None
    kc = n_in
    if opts.connection == "activity":
        kc = keep_count(n_in, opts.conn_sparsity)
        cols = _active_columns(a, kc, state)
    elif opts.connection == "weight":
        conn = _connection_rows(w.index_select(0, rows), keep_count(n_in, opts.conn_sparsity))  # (u, n_in)
    compact = _choose(opts, B, n_in, n_out, len(rows), kc)
    grad_w = None
    if compact:
        g_u = gm.index_select(1, rows)  # (B, u)
        grad_a, block = _compact(g_u, rows, a, w, state, cols, conn, need)
        if need[1]:
            grad_w = _weight_grad(w, node, state, rows, block=block, cols=cols)
    else:
        gm_csr = None
        if need[0] and k <= CSR_MAX_FRACTION * n_out and (1 - k / n_out) * B * n_in * n_out >= COMPACT_MIN_SAVING:
            # exactly k entries per row, in row-major order: the CSR form of g~ (B, n_out)
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                gm_csr = torch.sparse_csr_tensor(torch.arange(0, B * k + 1, k, device=g.device), m.nonzero()[:, 1],
                                                 g.masked_select(m), (B, n_out), check_invariants=False)
        grad_a, full = _dense(gm, rows, a, w, opts, cols, conn, need, gm_csr)
        if need[1]:
            grad_w = _weight_grad(w, node, state, rows, full=full)
    grad_b = gm.sum(0) if need[2] else None
    _note(state, rows, cols, conn, k / n_out, compact)
    if state.record:
        kept = counts.topk(k, sorted=False).indices.sort().values
        conn_mask = conn.index_select(0, torch.searchsorted(rows, kept)) if conn is not None else None
        state.last = MaskRecord(n_out, n_in, kept, counts.to(torch.int32), B, conn_mask=conn_mask,
                                conn_cols=cols, example_mask=m)
    return grad_a, grad_w, grad_b


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
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        g = grad_output.reshape(-1, grad_output.shape[-1])  # (B, n_out)
        a = input.reshape(-1, input.shape[-1])  # (B, n_in)
        step = _backward_batch if ctx.opts.granularity == "batch" else _backward_example
        node = ctx.next_functions[1][0] if need[1] else None  # the weight's AccumulateGrad (leaf)
        grad_a, grad_weight, grad_bias = step(g, a, weight, ctx.opts, ctx.state, need, node)
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
