"""The sparse backward's products, computed where the work is (DESIGN.md §5).

The plain path (`asymviz.sparse.masked_products`) multiplies full-size matrices by the masked
g~ = g * m. Most of g~ is zero, so the same result comes from smaller products:

- compact: only the k kept rows of g~ (and, for `refined`, the kept columns of a) enter the
  matmuls: g_k = g~[:, kept] (B, k), dW_k = g_k^T a (k, n_in), da = g_k W[kept] (B, n_in).
  `example` granularity compacts on the union of the neurons any example kept.
- dense fallback: the plain full-size products, where compaction cannot win: large keep
  fractions (the gathers cost more than the saved work) and tiny layers (overhead-bound).
  With `example` granularity and few neurons per example, da = g~ W runs as a sparse (CSR)
  product, since the union of kept neurons usually covers the whole layer.

`use_compact` is the rule; `SparseOptions.path` forces one or the other. dW goes out through
the layer's persistent gradient buffer (`asymviz.fast.gradbuf`). Temporaries that never leave
the backward (|g|, W[kept], flat indices) live in storage reused from step to step
(`asymviz.fast.workspace`).
On the CPU the compiled kernels (`asymviz.fast.kernels`, when built) do the column sums and the
row and column copies in one pass each; everything else, and all of it on CUDA, is PyTorch ops,
with no host synchronization in `batch` granularity (`example` needs one for the union's size).
"""

from __future__ import annotations

import warnings

import torch

from asymviz.fast import gradbuf, kernels
from asymviz.fast.workspace import workspace

COMPACT_MAX_FRACTION = 0.8  # compact only while kept work / full work is at most this ...
COMPACT_MIN_SAVING = 3_000_000  # ... and it saves at least this many multiply-adds per matmul
CSR_MAX_FRACTION = 0.15  # example granularity: da = g~ W as a sparse (CSR) product up to this keep


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


# ----------------------------------------------------------------------------- selection scores

def abs_colsum(x: torch.Tensor, state, name: str) -> torch.Tensor:
    """sum_b |x_bj| (n,), the batch-summed magnitude: one read with the C kernel, else |x| in
    reused storage (`name`: which temporary)."""
    if not torch.is_grad_enabled() and kernels.accepts(x):
        return kernels.abs_colsum(x)
    buf = workspace(state).temp(name, tuple(x.shape), x)
    return (x.abs() if buf is None else torch.abs(x, out=buf)).sum(0)


def abs_(x: torch.Tensor, state) -> torch.Tensor:
    """|x| in reused storage."""
    buf = workspace(state).temp("abs_g", tuple(x.shape), x)
    return x.abs() if buf is None else torch.abs(x, out=buf)


# ----------------------------------------------------------------------------- the products

def backward(g, a, w, sel, opts, needs, state, ctx, *, masked_products):
    """The layer's three gradients for the selection `sel`, fast. Returns (da, dW, db, path).

    g (B, n_out), a (B, n_in), w (n_out, n_in); needs: which of (input, weight, bias) want a
    gradient; masked_products: the plain full-size products (`asymviz.sparse`), run where
    compaction cannot win. path: "compact" or "dense-fallback".
    """
    B, n_out = g.shape
    n_in = a.shape[1]
    rows, cols = sel.rows, sel.cols
    kc = n_in if cols is None else cols.shape[0]
    compact = use_compact(B, n_in, n_out, rows.shape[0], kc) if opts.path == "auto" else opts.path == "compact"
    workspace(state)
    grad_w = grad_b = None
    if compact:
        if sel.example_mask is None:  # batch: one set; g~[:, rows] = g[:, rows]
            g_k = g.index_select(1, rows)  # (B, k)
            if needs.bias:
                grad_b = g.new_zeros(n_out).index_copy_(0, rows, g_k.sum(0))
        else:  # example: g~ is zero outside the union `rows`
            gm = g * sel.example_mask  # (B, n_out)   g~
            g_k = gm.index_select(1, rows)  # (B, u)
            if needs.bias:
                grad_b = gm.sum(0)
        grad_a, block = _compact(g_k, a, w, sel, needs, state)
        if needs.weight:
            grad_w = gradbuf.deliver(w, ctx, state, rows, block=block, cols=cols)
        return grad_a, grad_w, grad_b, "compact"
    csr = _csr(g, sel, needs, n_in) if sel.example_mask is not None else None
    if csr is None:
        grad_a, full, grad_b = masked_products(g, a, w, sel, needs)
    else:  # da from the CSR product, dW and db from the plain ones
        _, full, grad_b = masked_products(g, a, w, sel, needs._replace(input=False))
        M, c = sel.weight_mask(w), sel.column_mask(a)
        grad_a = csr @ (w * M if M is not None else w)  # (B, n_in)
        if c is not None:
            grad_a.mul_(c)
    if needs.weight:
        grad_w = gradbuf.deliver(w, ctx, state, rows, full=full)
    return grad_a, grad_w, grad_b, "dense-fallback"


def _compact(g_k, a, w, sel, needs, state):
    """Matmuls on the kept rows only: g_k = g~[:, rows] (B, k).

    Returns (da, dW block): the block is (k, n_in), for `refined` (k, kc): the kept columns only.
    """
    B = g_k.shape[0]
    n_in = a.shape[1]
    rows, cols, conn = sel.rows, sel.cols, sel.conn
    grad_a = block = None
    if cols is not None:  # refined: kept columns too; dW and da live in (k, kc) and (B, kc)
        fast = not torch.is_grad_enabled() and kernels.accepts(a, g_k, cols)
        if needs.weight:
            a_c = kernels.gather_cols(a, cols) if fast else a.index_select(1, cols)  # (B, kc)
            block = g_k.t() @ a_c  # (k, kc)
        if needs.input:
            d_c = g_k @ _block_of(w, rows, cols, state)  # (B, kc)
            grad_a = kernels.expand_cols(d_c, cols, n_in) if fast else g_k.new_zeros(B, n_in).index_copy_(1, cols, d_c)
        return grad_a, block
    if needs.weight:
        block = g_k.t() @ a  # (k, n_in)   rows of g~^T a
        if conn is not None:
            block.mul_(conn)  # * M
    if needs.input:
        w_k = _rows(w, rows, state)  # (k, n_in)
        if conn is not None:
            w_k.mul_(conn)  # W * M
        grad_a = g_k @ w_k  # (B, n_in)   g~ (W * M)
    return grad_a, block


def _rows(w: torch.Tensor, rows: torch.Tensor, state) -> torch.Tensor:
    """w[rows] (a copy, in reused storage)."""
    buf = state.workspace.temp("w_k", (rows.shape[0], *w.shape[1:]), w)
    if buf is None:
        return w.index_select(0, rows)
    if w.dim() == 2 and kernels.accepts(w, rows, buf):
        return kernels.gather_rows(w, rows, out=buf)
    return torch.index_select(w, 0, rows, out=buf)


def _block_of(w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, state) -> torch.Tensor:
    """W[rows][:, cols] (k, kc), in reused storage."""
    buf = state.workspace.temp("w_kc", (rows.shape[0], cols.shape[0]), w)
    if buf is not None and kernels.accepts(w, rows, cols, buf):
        return kernels.gather_block(w, rows, cols, out=buf)
    return _rows(w, rows, state).index_select(1, cols)


def _csr(g: torch.Tensor, sel, needs, n_in: int):
    """g~ as a sparse CSR matrix when few neurons per example are kept (None: not worth it):
    da = g~ W then costs B k n_in multiply-adds instead of B n_out n_in."""
    B, n_out = g.shape
    k = sel.k
    if not (needs.input and k <= CSR_MAX_FRACTION * n_out and (1 - k / n_out) * B * n_in * n_out >= COMPACT_MIN_SAVING):
        return None
    m = sel.example_mask
    # exactly k entries per row, in row-major order: the CSR form of g~ (B, n_out)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.arange(0, B * k + 1, k, device=g.device), m.nonzero()[:, 1],
                                       g.masked_select(m), (B, n_out), check_invariants=False)
