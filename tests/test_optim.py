"""The lazy optimizer update: dropped neurons and connections do not move, through any optimizer."""

import dataclasses

import pytest
import torch
from torch import nn

from asymviz.errors import ConfigError
from asymviz.model import MLP
from asymviz.optim import AsymmetricOptimizer

pytestmark = pytest.mark.usefixtures("numerics_path")  # fast (C kernels, PyTorch ops) and plain


def two_steps(name, strategy, update="lazy", granularity="batch"):
    """Two optimizer steps on a small MLP; returns (layer, weights after step 1, after step 2)."""
    torch.manual_seed(0)
    model = MLP(6, [20], 3, strategy=strategy, sparsity=0.8, conn_sparsity=0.5, granularity=granularity)
    opt = AsymmetricOptimizer(model, name, lr=0.1, update=update)
    layer = model.linears[0]
    snapshots = []
    for step in range(2):
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        snapshots.append((layer.weight.detach().clone(), layer.bias.detach().clone()))
    return layer, snapshots


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("strategy", ["neuron", "excessive", "refined"])
@pytest.mark.parametrize("granularity", ["batch", "example"])
def test_dropped_entries_are_bit_for_bit_unchanged(name, strategy, granularity):
    layer, [(w1, b1), (w2, b2)] = two_steps(name, strategy, granularity=granularity)
    sup = layer.state.weight_support  # the second step's support
    touched = torch.zeros_like(w1, dtype=torch.bool)
    if sup.cols is not None:
        touched[sup.rows.unsqueeze(1), sup.cols.unsqueeze(0)] = True
    elif sup.mask is not None:
        touched[sup.rows] = sup.mask
    else:
        touched[sup.rows] = True
    assert torch.equal(w2[~touched], w1[~touched])  # momentum/Adam state did not move them
    rows = torch.zeros(len(b1), dtype=torch.bool)
    rows[layer.state.bias_support.rows] = True
    assert torch.equal(b2[~rows], b1[~rows])
    assert not torch.equal(w2[touched], w1[touched])  # and the kept entries did learn


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_dense_update_moves_dropped_rows(name):
    """The `dense` option is PyTorch's optimizer: momentum keeps moving dropped rows."""
    layer, [(w1, _), (w2, _)] = two_steps(name, "neuron", update="dense")
    dropped = torch.ones(w1.shape[0], dtype=torch.bool)
    dropped[layer.state.weight_support.rows] = False
    assert not torch.equal(w2[dropped], w1[dropped])


def textbook_step(name, w, g, touched, state, lr, mu=0.9, b1=0.9, b2=0.999, eps=1e-8):
    """One float64 step of the textbook update on the touched entries only; the others keep their
    value and their state (m, v, buf, t in `state`, zeros at first)."""
    m, v, buf, t = (state.setdefault(k, torch.zeros_like(w)) for k in ("m", "v", "buf", "t"))
    if name == "sgd":
        new = w - lr * g
    elif name == "momentum":
        state["buf"] = buf = torch.where(touched, mu * buf + g, buf)
        new = w - lr * buf
    else:
        state["t"] = t = torch.where(touched, t + 1, t)
        state["m"] = m = torch.where(touched, b1 * m + (1 - b1) * g, m)
        state["v"] = v = torch.where(touched, b2 * v + (1 - b2) * g * g, v)
        tt = t.clamp(min=1)
        new = w - lr * (m / (1 - b1**tt)) / ((v / (1 - b2**tt)).sqrt() + eps)
    return torch.where(touched, new, w)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_lazy_update_matches_float64_reference(name):
    """Per entry that received gradient: the textbook update with that entry's own state."""
    torch.manual_seed(1)
    model = MLP(5, [12], 3, strategy="excessive", sparsity=0.5, conn_sparsity=0.5)
    layer = model.linears[0]
    lr, mu = 0.05, 0.9
    opt = AsymmetricOptimizer(model, name, lr=lr, momentum=mu)
    w = layer.weight.detach().double().clone()
    state = {}
    for _ in range(4):
        x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        g = layer.weight.grad.double()
        sup = layer.state.weight_support
        touched = torch.zeros_like(w, dtype=torch.bool)
        touched[sup.rows] = sup.mask
        opt.step()
        w = textbook_step(name, w, g, touched, state, lr, mu)
        torch.testing.assert_close(layer.weight.detach().double(), w, rtol=1e-5, atol=1e-6)


def test_adam_bias_correction_uses_each_entrys_own_step_count():
    """A neuron kept for the first time at step 2 takes Adam's first step: lr * sign(g)."""
    torch.manual_seed(0)
    model = MLP(4, [10], 2, strategy="neuron", sparsity=0.9)
    opt = AsymmetricOptimizer(model, "adam", lr=0.01)
    layer = model.linears[0]
    kept_before = set()
    for _ in range(6):
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        before = layer.weight.detach().clone()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grad = layer.weight.grad.clone()
        opt.step()
        (row,) = layer.state.weight_support.rows.tolist()
        if row not in kept_before:
            step = before[row] - layer.weight.detach()[row]
            torch.testing.assert_close(step, 0.01 * grad[row].sign(), rtol=1e-4, atol=1e-6)
            kept_before.add(row)
    assert kept_before


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "rmsprop"}, "Unknown optimizer 'rmsprop'; choose one of: sgd, momentum, adam"),
    ({"update": "eager"}, "Unknown optimizer update 'eager'; choose one of: lazy, dense"),
])
def test_bad_optimizer_names(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AsymmetricOptimizer(MLP(2, [3], 2), **kwargs)


@pytest.mark.parametrize("strategy,granularity", [("neuron", "batch"), ("neuron", "example"), ("refined", "batch")])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("path", ["compact", "dense"])
def test_lazy_adam_matches_float64_reference_on_every_support_kind(strategy, granularity, weight_decay, path):
    """Rows (the in-place fast path, per-row step counts, the backward's dW block) and row x column blocks."""
    torch.manual_seed(2)
    model = MLP(7, [16], 3, strategy=strategy, sparsity=0.75, conn_sparsity=0.5, granularity=granularity)
    layer = model.linears[0]
    layer.options = dataclasses.replace(layer.options, path=path)
    lr, (b1, b2), eps = 0.05, (0.9, 0.999), 1e-8
    opt = AsymmetricOptimizer(model, "adam", lr=lr, weight_decay=weight_decay)
    w = layer.weight.detach().double().clone()
    m, v, t = (torch.zeros_like(w) for _ in range(3))
    for _ in range(5):
        x, y = torch.randn(6, 7), torch.randint(0, 3, (6,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        sup = layer.state.weight_support
        touched = torch.zeros_like(w, dtype=torch.bool)
        if sup.cols is not None:
            touched[sup.rows.unsqueeze(1), sup.cols.unsqueeze(0)] = True
        else:
            touched[sup.rows] = True
        g = layer.weight.grad.double() + weight_decay * w
        opt.step()
        t = torch.where(touched, t + 1, t)
        m = torch.where(touched, b1 * m + (1 - b1) * g, m)
        v = torch.where(touched, b2 * v + (1 - b2) * g * g, v)
        tt = t.clamp(min=1)
        w = torch.where(touched, w - lr * (m / (1 - b1**tt)) / ((v / (1 - b2**tt)).sqrt() + eps), w)
        torch.testing.assert_close(layer.weight.detach().double(), w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["compact", "dense"])
def test_zero_grad_sets_none_and_step_without_backward_is_a_no_op(path):
    torch.manual_seed(0)
    model = MLP(6, [20], 3, strategy="neuron", sparsity=0.8)
    opt = AsymmetricOptimizer(model, "adam", lr=0.1)
    layer = model.linears[0]
    layer.options = dataclasses.replace(layer.options, path=path)
    nn.functional.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
    opt.step()
    opt.zero_grad()
    assert layer.weight.grad is None  # set_to_none, as for every parameter
    opt.zero_grad(set_to_none=False)  # a second zero_grad changes nothing
    assert layer.weight.grad is None
    assert model.linears[1].weight.grad is None  # other parameters follow set_to_none
    before = layer.weight.detach().clone()
    opt.step()  # no backward since zero_grad: nothing moves (Adam's momentum included)
    assert torch.equal(layer.weight, before)


@pytest.mark.parametrize("edit", ["in place", "replaced"])
def test_adam_reads_an_edited_gradient_not_the_backwards_copy(edit, numerics_path):
    """The row fast path reuses the backward's dW block only while .grad is untouched (e.g. no clipping)."""
    def run(scale_loss: bool):
        torch.manual_seed(3)
        model = MLP(7, [16], 3, strategy="neuron", sparsity=0.75)
        layer = model.linears[0]
        layer.options = dataclasses.replace(layer.options, path="compact")
        opt = AsymmetricOptimizer(model, "adam", lr=0.1, eps=1.0)  # a large eps: Adam's step depends on |g|
        for _ in range(3):
            x, y = torch.randn(6, 7), torch.randint(0, 3, (6,))
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            (loss * 0.5 if scale_loss else loss).backward()
            if not scale_loss:
                if numerics_path != "plain":  # the backward's dW rows, which the fast path would otherwise reuse
                    assert layer.state.workspace.grad.block is not None
                if edit == "in place":
                    layer.weight.grad.mul_(0.5)
                else:
                    layer.weight.grad = layer.weight.grad * 0.5
                for p in model.parameters():
                    if p is not layer.weight:
                        p.grad.mul_(0.5)
            opt.step()
        return layer.weight.detach()

    torch.testing.assert_close(run(scale_loss=False), run(scale_loss=True), rtol=0, atol=0)


# ----------------------------------------------------------------------------- torch.optim.Optimizer

def _batches(n, seed=9):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(n)]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("strategy", ["neuron", "excessive", "refined"])
def test_state_dict_round_trip_continues_bit_for_bit(name, strategy, tmp_path):
    """Train 5 steps, save, load into a fresh model and optimizer, go on: the same bits as never stopping."""
    batches = _batches(9)

    def build():
        torch.manual_seed(0)
        model = MLP(6, [20, 16], 3, strategy=strategy, sparsity=0.75, conn_sparsity=0.5)
        return model, AsymmetricOptimizer(model, name, lr=0.05, weight_decay=0.01)

    whole, opt = build()
    _train(whole, opt, batches)
    first, opt1 = build()
    _train(first, opt1, batches[:5])
    torch.save({"model": first.state_dict(), "optimizer": opt1.state_dict()}, tmp_path / "saved.pt")
    saved = torch.load(tmp_path / "saved.pt", weights_only=True)
    again, opt2 = build()
    again.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["optimizer"])
    assert opt2.state_dict()["steps"] == 5
    _train(again, opt2, batches[5:])
    for a, b in zip(whole.parameters(), again.parameters()):
        assert torch.equal(a, b)
    for (p, s), (q, t) in zip(opt.state.items(), opt2.state.items()):
        assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)


def test_load_state_dict_refuses_what_does_not_fit():
    torch.manual_seed(0)
    model = MLP(6, [20], 3, strategy="neuron", sparsity=0.75)
    opt = AsymmetricOptimizer(model, "adam")
    _train(model, opt, _batches(2))
    good = opt.state_dict()
    other = AsymmetricOptimizer(MLP(6, [12], 3, strategy="neuron", sparsity=0.75), "adam")
    with pytest.raises(ValueError, match="does not fit the model"):
        other.load_state_dict(good)
    bad = {**good, "state": {k: dict(v) for k, v in good["state"].items()}}
    bad["state"][0]["step"] = bad["state"][0]["step"] + 100  # step counts beyond the steps taken
    with pytest.raises(ValueError, match="step counts"):
        AsymmetricOptimizer(model, "adam").load_state_dict(bad)
    with pytest.raises(ValueError, match="another kind of optimizer"):
        AsymmetricOptimizer(model, "adam").load_state_dict({k: v for k, v in good.items() if k != "steps"})


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_an_lr_scheduler_drives_the_lazy_and_the_dense_update(name):
    """StepLR halves the group's lr every 2 steps: the lazy layer follows the float64 reference
    with that lr, and the dense output layer (PyTorch's optimizer inside) follows it too."""
    torch.manual_seed(1)
    model = MLP(5, [12], 3, strategy="neuron", sparsity=0.5)
    hidden, out = model.linears
    opt = AsymmetricOptimizer(model, name, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    w = hidden.weight.detach().double().clone()
    state = {}
    lrs = []
    for _ in range(6):
        lr = opt.param_groups[0]["lr"]
        lrs.append(lr)
        x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        g = hidden.weight.grad.double()
        touched = torch.zeros_like(w, dtype=torch.bool)
        touched[hidden.state.weight_support.rows] = True
        out_before, out_grad = out.weight.detach().clone(), out.weight.grad.clone()
        opt.step()
        sched.step()
        if name == "sgd":
            torch.testing.assert_close(out.weight.detach(), out_before - lr * out_grad)
        w = textbook_step(name, w, g, touched, state, lr)
        torch.testing.assert_close(hidden.weight.detach().double(), w, rtol=1e-5, atol=1e-6)
    assert lrs == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]


def test_is_a_torch_optimizer_with_one_group():
    model = MLP(6, [20], 3, strategy="refined", sparsity=0.75, conn_sparsity=0.5)
    opt = AsymmetricOptimizer(model, "momentum", lr=0.2, momentum=0.8)
    assert isinstance(opt, torch.optim.Optimizer)
    (group,) = opt.param_groups
    assert group["lr"] == 0.2 and group["momentum"] == 0.8
    assert group["params"] == [p for p in model.parameters()]
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    assert torch.is_tensor(opt.step(closure))
