"""The sparse backward against a float64 reference written from DESIGN.md §1's formulas.

Every test runs on the fast path (with and without the C kernels) and on the plain reference
path; `test_fast.py` compares the two directly and tests what only the fast path does."""

import itertools

import pytest
import torch
from torch import nn

from asymviz.errors import ConfigError
from asymviz.sparse import (AsymmetricLinear, AsymmetricLinearFunction, LayerState, SparseOptions,
                            asymmetric_linear, keep_count)

pytestmark = pytest.mark.usefixtures("numerics_path")  # fast (C kernels, PyTorch ops) and plain

STRATEGY_CONNECTION = {"neuron": None, "excessive": "weight", "refined": "activity"}
SHAPES = [(7, 5, 9), (32, 24, 16), (1, 13, 3), (64, 40, 50)]  # (B, n_in, n_out)


def reference_backward(g, a, w, opts, batch_kept=None, example_mask=None):
    """dW = (g~^T a) * M, db = sum_b g~, da = g~ (W * M) with g~ = g * m, in float64.

    The masks are chosen here from the definitions (top-k by |g|, summed over the batch or per
    example; M from |W| per row or from sum_b |a_bj|), or taken as given for random selection.
    """
    g, a, w = g.double(), a.double(), w.double()
    B, n_out = g.shape
    n_in = a.shape[1]
    k = keep_count(n_out, opts.sparsity)
    if example_mask is not None:
        m = example_mask.double()
    elif opts.granularity == "batch":
        idx = batch_kept if batch_kept is not None else torch.argsort(g.abs().sum(0), descending=True)[:k]
        m = torch.zeros(n_out, dtype=torch.float64)
        m[idx] = 1.0
        m = m.expand(B, n_out)
    else:
        m = torch.zeros(B, n_out, dtype=torch.float64)
        for b in range(B):
            m[b, torch.argsort(g[b].abs(), descending=True)[:k]] = 1.0
    kc = keep_count(n_in, opts.conn_sparsity)
    M = torch.ones(n_out, n_in, dtype=torch.float64)
    if opts.connection == "weight":
        M = torch.zeros(n_out, n_in, dtype=torch.float64)
        for i in range(n_out):
            M[i, torch.argsort(w[i].abs(), descending=True)[:kc]] = 1.0
    elif opts.connection == "activity":
        cols = torch.argsort(a.abs().sum(0), descending=True)[:kc]
        M = torch.zeros(n_out, n_in, dtype=torch.float64)
        M[:, cols] = 1.0
    gt = g * m
    return gt @ (w * M), (gt.t() @ a) * M, gt.sum(0)


def run_function(B, n_in, n_out, opts, seed, record=True):
    torch.manual_seed(seed)
    a = torch.randn(B, n_in, requires_grad=True)
    w = torch.randn(n_out, n_in, requires_grad=True)
    b = torch.randn(n_out, requires_grad=True)
    g = torch.randn(B, n_out)
    state = LayerState()
    state.record = record
    out = asymmetric_linear(a, w, b, opts, state)
    out.backward(g)
    return a, w, b, g, state


@pytest.mark.parametrize("strategy,granularity,selection,shape,sparsity",
                         list(itertools.product(STRATEGY_CONNECTION, ["batch", "example"], ["topk", "random"],
                                                SHAPES, [0.5, 0.9])))
def test_backward_matches_float64_reference(strategy, granularity, selection, shape, sparsity):
    B, n_in, n_out = shape
    opts = SparseOptions(sparsity=sparsity, conn_sparsity=0.5 if strategy != "neuron" else 0.0,
                         selection=selection, granularity=granularity, connection=STRATEGY_CONNECTION[strategy])
    a, w, b, g, state = run_function(B, n_in, n_out, opts, seed=hash(shape) % 1000)
    batch_kept = example_mask = None
    if selection == "random":  # the reference cannot draw the same random set: use the recorded one
        if granularity == "batch":
            batch_kept = state.last.kept
        else:
            example_mask = state.last.example_mask
    da, dW, db = reference_backward(g, a.detach(), w.detach(), opts, batch_kept, example_mask)
    torch.testing.assert_close(a.grad.double(), da, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), dW, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad.double(), db, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("granularity", ["batch", "example"])
@pytest.mark.parametrize("connection", [None, "weight", "activity"])
def test_full_keep_equals_dense_autograd(granularity, connection):
    opts = SparseOptions(sparsity=0.0, conn_sparsity=0.0, granularity=granularity, connection=connection)
    a, w, b, g, _ = run_function(16, 12, 10, opts, seed=3)
    a2, w2, b2 = (t.detach().clone().requires_grad_() for t in (a, w, b))
    (a2 @ w2.t() + b2).backward(g)
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


@pytest.mark.parametrize("strategy", ["symmetric", "neuron", "excessive", "refined"])
def test_forward_equals_nn_linear(strategy):
    torch.manual_seed(0)
    layer = AsymmetricLinear(20, 30, strategy=strategy, sparsity=0.8, conn_sparsity=0.5)
    ref = nn.Linear(20, 30)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(8, 20)
    torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=0)


def test_same_seed_same_initialization_as_nn_linear():
    torch.manual_seed(5)
    layer = AsymmetricLinear(9, 4)
    torch.manual_seed(5)
    ref = nn.Linear(9, 4)
    assert torch.equal(layer.weight, ref.weight) and torch.equal(layer.bias, ref.bias)


@pytest.mark.parametrize("granularity", ["batch", "example"])
def test_random_selection_keeps_exactly_k(granularity):
    """With W = I, da = g~ (W * M) = g * m reveals each example's neuron mask."""
    B, n, s = 12, 40, 0.75
    opts = SparseOptions(sparsity=s, selection="random", granularity=granularity)
    a = torch.randn(B, n, requires_grad=True)
    w = torch.eye(n, requires_grad=True)
    g = torch.randn(B, n)
    asymmetric_linear(a, w, None, opts, LayerState()).backward(g)
    kept = (a.grad != 0).sum(1)
    assert kept.tolist() == [keep_count(n, s)] * B
    if granularity == "batch":  # the same set for every example
        assert all(torch.equal(a.grad[0] != 0, row != 0) for row in a.grad)


def test_random_selection_is_not_topk():
    torch.manual_seed(1)
    opts = SparseOptions(sparsity=0.9, selection="random")
    _, _, _, g, state = run_function(32, 10, 100, opts, seed=1)
    topk = set(g.abs().sum(0).topk(10).indices.tolist())
    assert set(state.last.kept.tolist()) != topk


def test_recorder_is_opt_in_and_reports_kept_sets():
    opts = SparseOptions(sparsity=0.75, conn_sparsity=0.5, connection="activity")
    _, _, _, g, state = run_function(8, 6, 8, opts, seed=2, record=False)
    assert state.last is None
    a, _, _, g, state = run_function(8, 6, 8, opts, seed=2, record=True)
    rec = state.last
    assert rec.kept.tolist() == sorted(g.abs().sum(0).topk(2).indices.tolist())
    assert rec.conn_cols.tolist() == sorted(a.detach().abs().sum(0).topk(3).indices.tolist())
    M = rec.connection_mask()
    assert M.shape == (8, 6) and M.sum().item() == 2 * 3


def test_needs_input_grad_is_respected():
    opts = SparseOptions(sparsity=0.5)
    a = torch.randn(4, 6)  # no grad wanted for the input
    w = torch.randn(5, 6, requires_grad=True)
    out = AsymmetricLinearFunction.apply(a, w, None, opts, LayerState())
    out.sum().backward()
    assert a.grad is None and w.grad is not None


def test_higher_rank_inputs():
    opts = SparseOptions(sparsity=0.5)
    a = torch.randn(2, 3, 6, requires_grad=True)
    w = torch.randn(4, 6, requires_grad=True)
    out = asymmetric_linear(a, w, None, opts, LayerState())
    assert out.shape == (2, 3, 4)
    out.sum().backward()
    assert a.grad.shape == a.shape


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 1.0}, "sparsity must be in"),
    ({"sparsity": -0.1}, "sparsity must be in"),
    ({"sparsity": "lots"}, "sparsity must be a number"),
    ({"conn_sparsity": 1.5, "strategy": "refined"}, "conn_sparsity must be in"),
    ({"strategy": "magic"}, "Unknown strategy 'magic'; choose one of: symmetric, dropout, neuron, excessive, refined"),
    ({"selection": "best"}, "Unknown selection 'best'; choose one of: topk, random"),
    ({"granularity": "neuron"}, "Unknown granularity 'neuron'; choose one of: batch, example"),
])
def test_bad_options_are_rejected_with_a_sentence(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AsymmetricLinear(4, 4, **kwargs)


def test_keep_count_keeps_at_least_one():
    assert keep_count(10, 0.99) == 1
    assert keep_count(2048, 0.9) == 205
    assert keep_count(100, 0.0) == 100


def test_extra_repr_shows_strategy_and_sparsity():
    text = repr(AsymmetricLinear(10, 20, strategy="refined", sparsity=0.9, conn_sparsity=0.5))
    assert "strategy=refined" in text and "sparsity=0.9 (keep 2)" in text and "conn_sparsity=0.5" in text
    assert "sparsity" not in repr(AsymmetricLinear(10, 20, strategy="symmetric", sparsity=0.9)).split("strategy=symmetric")[1]


# ----------------------------------------------------------------------------- accumulation, autograd.grad

def test_grad_accumulates_across_backwards_without_reset():
    opts = SparseOptions(sparsity=0.5)
    w = torch.randn(10, 6, requires_grad=True)
    a1, a2, g1, g2 = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 10), torch.randn(4, 10)
    asymmetric_linear(a1, w, None, opts, LayerState()).backward(g1)
    asymmetric_linear(a2, w, None, opts, LayerState()).backward(g2)
    expected = reference_backward(g1, a1, w.detach(), opts)[1] + reference_backward(g2, a2, w.detach(), opts)[1]
    torch.testing.assert_close(w.grad.double(), expected, rtol=1e-5, atol=1e-5)


def test_autograd_grad_returns_a_dense_gradient_and_leaves_grad_alone():
    opts = SparseOptions(sparsity=0.5)
    w = torch.randn(10, 6, requires_grad=True)
    w.grad = torch.zeros(10, 6)
    a, g = torch.randn(4, 6), torch.randn(4, 10)
    (dw,) = torch.autograd.grad(asymmetric_linear(a, w, None, opts, LayerState()), w, g)
    assert dw.layout == torch.strided
    torch.testing.assert_close(dw.double(), reference_backward(g, a, w.detach(), opts)[1], rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(w.grad) == 0
