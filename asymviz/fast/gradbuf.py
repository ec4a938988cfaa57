"""The layer's persistent weight-gradient buffer: no fresh n_out x n_in dW per step.

Plainly, the backward returns a new dense dW each step: an n_out x n_in allocation, zeroed, with
k rows written. At 2048 x 2048 that costs more than the k-row matmuls themselves (fresh
megabyte-sized CPU allocations page-fault). Instead each layer keeps one buffer across steps:

    deliver(...)    what the backward returns for W (the compact path's k rows, or the full dW):
      - `.grad` is None (after zero_grad(set_to_none=True), asymviz's or PyTorch's, or a first
        step) and autograd will accumulate: the buffer, with last step's rows re-zeroed where
        this step does not overwrite them and the new rows copied in; autograd takes it over as
        `.grad` without a copy (no one else holds that tensor);
      - `.grad` is set (gradients accumulating over several backwards): the k rows as a sparse
        COO tensor, so that autograd's add touches k rows, not n_out;
      - otherwise (torch.autograd.grad, create_graph): a fresh dense dW.
    zero_(...)      zero_grad(set_to_none=False): zero only the rows written since the last zeroing
    block_of(...)   the backward's dW rows, for the optimizer to read instead of gathering them

When is the buffer known to be zero outside the rows written? The buffer keeps a detached alias
of the tensor it handed out: same storage, same version counter, no reference to that tensor.
It is reused in place only when (1) its version counter shows no write since ours (a gradient
clipped or edited in place: it is cleared whole), and (2) nobody else holds its storage (the old
`.grad`, a view of it, a detached copy a user kept: then a fresh buffer is made and the old one
is left to its holder). A write through `.data` bypasses the version counter and is not seen.

Private PyTorch calls, each with a safe fallback (a fresh dense dW, as the plain path returns):
`torch._C._will_engine_execute_node` (will the weight's AccumulateGrad run?),
`torch._C._storage_Use_Count` (checked against a probe once; without it nothing is reused), and
`Tensor._version`. The buffer stays allocated while the layer lives, also after
zero_grad(set_to_none=True); `release(state)` gives it back.
"""

from __future__ import annotations

import torch

from asymviz.fast import kernels
from asymviz.fast.workspace import workspace


class GradBuffer:
    """One layer's buffer and what is known of its contents."""

    __slots__ = ("alias", "version", "rows", "block")

    def __init__(self) -> None:
        self.alias: torch.Tensor | None = None  # storage and version counter of the tensor handed out
        self.version = -1  # the version counter right after our last write
        self.rows: list[torch.Tensor] = []  # rows written since the buffer was last all zero
        self.block: torch.Tensor | None = None  # the last compact dW rows (their values in the buffer)

    def holds(self, grad: torch.Tensor | None) -> bool:
        """True when `grad` is this buffer, unchanged since the layer last wrote it."""
        alias = self.alias
        return (grad is not None and alias is not None and grad.layout == torch.strided
                and grad._version == self.version and alias._version == self.version
                and grad.data_ptr() == alias.data_ptr() and grad.shape == alias.shape
                and grad.stride() == alias.stride())

    def track(self, buf: torch.Tensor, rows: list[torch.Tensor], block: torch.Tensor | None) -> None:
        self.alias = buf.detach()
        self.version, self.rows, self.block = buf._version, rows, block

    def forget(self) -> None:
        self.alias, self.rows, self.block = None, [], None


def buffer(state) -> GradBuffer:
    """The layer's buffer (made on first use; `state` is the layer's LayerState)."""
    ws = workspace(state)
    if ws.grad is None:
        ws.grad = GradBuffer()
    return ws.grad


def release(state) -> None:
    """Let go of a layer's buffer (its memory returns once `.grad` no longer holds it)."""
    if state.workspace is not None and state.workspace.grad is not None:
        state.workspace.grad.forget()


# ----------------------------------------------------------------------------- PyTorch internals

def will_accumulate(weight: torch.Tensor, ctx) -> bool:
    """True when autograd will accumulate the weight gradient into `weight.grad` (a .backward()
    through the weight's AccumulateGrad node), False for torch.autograd.grad or create_graph."""
    if not weight.is_leaf or torch.is_grad_enabled():
        return False
    try:
        return bool(torch._C._will_engine_execute_node(ctx.next_functions[1][0]))
    except Exception:
        return False


_probe: int | None = None  # storage use count of a tensor held once; 0: the count cannot be trusted


def _sole_user(t: torch.Tensor) -> bool:
    """True when no tensor other than `t` uses t's storage."""
    global _probe
    try:
        count = lambda x: torch._C._storage_Use_Count(x.untyped_storage()._cdata)  # noqa: E731
        if _probe is None:
            x = torch.empty(1)
            base, y = count(x), x.detach()
            ok = count(y) == base + 1
            del x
            _probe = base if ok and count(y) == base else 0
        return _probe > 0 and count(t) == _probe
    except Exception:
        _probe = 0
        return False


# ----------------------------------------------------------------------------- the named calls

def deliver(weight: torch.Tensor, ctx, state, rows: torch.Tensor, block: torch.Tensor | None = None,
            cols: torch.Tensor | None = None, full: torch.Tensor | None = None) -> torch.Tensor:
    """What the backward returns for W, whose non-zero rows are `rows`.

    block: those rows, (k, n_in), or with `cols` (refined) only their kept columns, (k, kc)
    (compact path); full: the whole (n_out, n_in) gradient (the full-size products).
    """
    buf = buffer(state)
    if full is not None:  # most rows written: the next step starts a buffer afresh
        buf.forget()
        return full
    if not will_accumulate(weight, ctx):
        return _scatter(block.new_zeros(weight.shape), rows, block, cols, state)  # fresh dense dW
    grad = weight.grad
    if grad is None:
        dst = _reusable(buf, weight, block)
        if dst is None:
            buf.forget()
            dst = block.new_zeros(weight.shape)
        elif cols is None and len(buf.rows) == 1 and kernels.accepts(dst, block, rows, buf.rows[0]):
            kernels.replace_rows(dst, rows, block, buf.rows[0])  # stale rows zeroed and new ones copied, one pass
            buf.track(dst, [rows], block)
            return dst
        else:
            for old in buf.rows:  # rows written last step; whole rows are overwritten now, column blocks are not
                stale = old if cols is not None else old[~torch.isin(old, rows)]
                if kernels.accepts(dst, stale):
                    kernels.clear_rows(dst, stale)
                else:
                    dst.index_fill_(0, stale, 0.0)
        _scatter(dst, rows, block, cols, state)
        buf.track(dst, [rows], block)
        return dst
    if grad.layout == torch.strided and grad.shape == weight.shape and grad.dtype == block.dtype:
        if buf.holds(grad):
            buf.rows, buf.block = buf.rows + [rows], None
            buf.version += 1  # autograd's in-place add
        else:
            buf.forget()  # contents unknown
        if cols is not None:  # the (k, kc) block as whole rows, zero outside the kept columns
            block = block.new_zeros(rows.shape[0], weight.shape[1]).index_copy_(1, cols, block)
        return torch.sparse_coo_tensor(rows.unsqueeze(0), block, weight.shape, is_coalesced=True,
                                       check_invariants=False)
    return _scatter(block.new_zeros(weight.shape), rows, block, cols, state)


def _reusable(buf: GradBuffer, weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor | None:
    """A new tensor over the buffer's storage when it can be written now (None: make a fresh one).
    Contents unknown (written since): cleared whole, and the rows list emptied."""
    alias = buf.alias
    if (alias is None or alias.shape != weight.shape or alias.dtype != block.dtype or alias.device != block.device
            or not _sole_user(alias)):
        return None
    dst = alias.detach()  # a tensor nobody else holds (autograd takes it over without a copy)
    if alias._version != buf.version:
        dst.zero_()
        buf.rows = []
    return dst


def _scatter(dst: torch.Tensor, rows: torch.Tensor, block: torch.Tensor, cols, state) -> torch.Tensor:
    """dst[rows] = block, or dst[rows][:, cols] = block (refined), in place; returns dst."""
    if cols is None:
        return dst.index_copy_(0, rows, block)
    if kernels.accepts(dst, block, rows, cols):
        return kernels.scatter_block(dst, rows, cols, block)
    n_in = dst.shape[1]
    r, c = (rows * n_in).unsqueeze(1), cols.unsqueeze(0)
    flat = state.workspace.temp("flat", (rows.shape[0], cols.shape[0]), rows)
    flat = (r + c if flat is None else torch.add(r, c, out=flat)).view(-1)  # rows x cols, flat row-major
    dst.view(-1).scatter_(0, flat, block.reshape(-1))  # faster than index_copy_ / index_put_ here
    return dst


def zero_(weight: torch.Tensor, state) -> None:
    """zero_grad(set_to_none=False) of a lazy layer's weight: `.grad` stays the same tensor,
    zeroed in place: only the rows written since the last zeroing when the buffer is known, whole otherwise."""
    grad = weight.grad
    if grad is None:
        return
    buf = buffer(state)
    if buf.holds(grad):
        for r in buf.rows:
            grad.index_fill_(0, r, 0.0)
    else:
        grad.zero_()
    buf.track(grad, [], None)


def block_of(weight: torch.Tensor, state) -> torch.Tensor | None:
    """The rows of weight.grad the last backward wrote, as it computed them, handed over once
    (the optimizer may write into it); None when `.grad` changed since (then gather them)."""
    ws = state.workspace
    if ws is None or ws.grad is None:
        return None
    buf = ws.grad
    block, buf.block = buf.block, None
    return block if buf.holds(weight.grad) else None
