"""The lazy optimizer update, fast: the same arithmetic as `AsymmetricOptimizer._lazy_update`.

The reference gathers the supported entries of p, p.grad and each state tensor, updates them
with a dozen PyTorch ops and scatters them back. Here, one named call, `step(...)`, does it:

- with the compiled kernels (CPU, float32): one pass over the kept entries for SGD, momentum
  and Adam, on rows, row x column blocks (`refined`) and masks (`excessive`); the weight and
  bias rows of a neuron share one Adam step count;
- otherwise, Adam on whole rows (`neuron`): the moments gathered into reused buffers, updated in
  place, the parameter written by one scatter-add; the backward's dW rows (`gradbuf.block_of`)
  stand in for gathering them from `.grad`.
Anything else returns False and the reference runs.
"""

from __future__ import annotations

import math

import torch

from asymviz.fast import gradbuf, kernels


def step(opt, p: torch.Tensor, layer, kind: str, support, rowwise: bool, group: dict, done: set) -> bool:
    """Update p (and, for Adam on rows, its layer's bias) if a fast way applies; False: it did nothing."""
    if _kernel_step(opt, p, layer, kind, support, rowwise, group, done):
        return True
    if opt.name == "adam" and kind == "weight" and rowwise and support is not None and support.mask is None \
            and support.cols is None:
        bias = layer.bias if layer.bias is not None and layer.bias.grad is not None else None
        _adam_layer(opt, p, bias, support.rows, gradbuf.block_of(p, layer.state), group)  # weight and bias rows together
        done.update((p, bias))
        return True
    return False


def _kernel_step(opt, p, layer, kind, support, rowwise, group, done) -> bool:
    """The lazy update in one pass of the C kernel; False: not possible here.

    Per-row step counts for whole rows (weight and bias of a neuron share one), per-entry
    counts for column blocks and masks.
    """
    if support is None or support.rows is None or p.dtype != torch.float32 or p.grad.dtype != torch.float32:
        return False
    bias = None
    if kind == "weight" and rowwise and opt.name == "adam" and layer.bias is not None and layer.bias.grad is not None:
        bias = layer.bias  # updated here too, with the weight rows' step counts
    mask = support.mask.contiguous() if support.mask is not None else None
    s = opt._state(p, rowwise)
    tensors = [p, p.grad, support.rows, support.cols, mask, *s.values()]
    if bias is not None:
        tensors += [bias, bias.grad, *opt._state(bias, True).values()]
    if (not kernels.accepts(*tensors) or support.rows.dtype != torch.int64
            or (support.cols is not None and support.cols.dtype != torch.int64)
            or s["step"].dtype != (torch.int64 if rowwise else torch.int32)):
        return False
    block = gradbuf.block_of(p, layer.state) if kind == "weight" else None
    if block is not None and not block.is_contiguous():
        block = None
    grad, in_block = (p.grad, False) if block is None else (block, True)
    at = kernels.Entries(support.rows, support.cols, mask)
    lr, wd = group["lr"], group["weight_decay"]
    if opt.name == "sgd":
        kernels.sgd_(p, grad, at, lr=lr, weight_decay=wd, grad_is_block=in_block)
    elif opt.name == "momentum":
        kernels.momentum_(p, grad, s["momentum_buffer"], at, lr=lr, momentum=group["momentum"], weight_decay=wd,
                          grad_is_block=in_block)
    else:
        coefficients = kernels.AdamCoefficients(*opt.adam_table(p), tuple(group["betas"]))
        if rowwise:
            steps = s["step"].view(-1)
            t = steps.index_select(0, support.rows).add_(1)  # (k,) this step's count per row
            steps.index_copy_(0, support.rows, t)
            kernels.adam_(p, grad, s["exp_avg"], s["exp_avg_sq"], at, coefficients, row_t=t, weight_decay=wd,
                          grad_is_block=in_block)
            if bias is not None:
                sb = opt._state(bias, True)
                sb["step"] = steps  # the bias rows are the weight rows: one count per neuron
                kernels.adam_(bias, bias.grad, sb["exp_avg"], sb["exp_avg_sq"], kernels.Entries(support.rows),
                              coefficients, row_t=t, weight_decay=wd)
                done.add(bias)
        else:
            kernels.adam_(p, grad, s["exp_avg"], s["exp_avg_sq"], at, coefficients, entry_step=s["step"],
                          weight_decay=wd, grad_is_block=in_block)
    done.add(p)
    return True


def _buffer(opt, p: torch.Tensor, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat tensor of at least numel entries, reused from step to step (fresh large CPU buffers page-fault)."""
    key = (id(p), name)
    buf = opt._workspace.get(key)
    if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != p.device:
        buf = opt._workspace[key] = torch.empty(numel, dtype=dtype, device=p.device)
    return buf


def _gather(opt, p: torch.Tensor, t: torch.Tensor, rows: torch.Tensor, name: str) -> torch.Tensor:
    """t[rows] (t: p or one of its p-shaped tensors) into reused storage."""
    shape = (rows.shape[0], *t.shape[1:])
    numel = math.prod(shape)
    return torch.index_select(t, 0, rows, out=_buffer(opt, p, name, numel, t.dtype)[:numel].view(shape))


def _adam_layer(opt, weight, bias, rows, block, group) -> None:
    """Adam on whole rows of a layer's weight and bias (the `neuron` case), row step counts shared.

    The reference's update, rearranged so that every (k, n_in) pass is in place and the
    parameter is written by one scatter-add (the two per-row coefficients looked up by step
    count in `opt.adam_table`).
    """
    s = opt._state(weight, True)
    t = s["step"].index_select(0, rows).add_(1)  # (k, 1)
    s["step"].index_copy_(0, rows, t)
    scale, shift = (c.index_select(0, t.view(-1)).view_as(t) for c in opt.adam_table(weight))  # (k, 1)
    _adam_rows(opt, weight, s, rows, scale, shift, group, block)
    if bias is not None:
        sb = opt._state(bias, True)
        sb["step"] = s["step"].view(-1)  # the bias rows are the weight rows: one count per neuron
        _adam_rows(opt, bias, sb, rows, scale.view(-1), shift.view(-1), group)


def _adam_rows(opt, p, s, rows, scale, shift, group, block=None) -> None:
    """block: p.grad[rows] as the backward computed it (private to the layer: used as scratch)."""
    b1, b2 = group["betas"]
    g = block if block is not None else _gather(opt, p, p.grad, rows, "g")  # (k, n_in) rows with gradient
    if group["weight_decay"]:
        g.add_(p.index_select(0, rows), alpha=group["weight_decay"])
    m = _gather(opt, p, s["exp_avg"], rows, "m").lerp_(g, 1 - b1)  # b1 m + (1 - b1) g
    v = _gather(opt, p, s["exp_avg_sq"], rows, "v").mul_(b2).addcmul_(g, g, value=1 - b2)  # b2 v + (1 - b2) g^2
    s["exp_avg"].index_copy_(0, rows, m)
    s["exp_avg_sq"].index_copy_(0, rows, v)
    update = torch.sqrt(v, out=g).mul_(scale).add_(shift)  # g is no longer needed: reuse it
    torch.div(m, update, out=update)  # lr m_hat / (sqrt(v_hat) + eps)
    p.index_add_(0, rows, update, alpha=-1.0)
