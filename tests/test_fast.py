"""The fast path (asymviz.fast) against the plain path against the float64 reference of DESIGN.md §1,
and what only the fast path does: compaction, the CSR product, the persistent gradient buffer."""

import dataclasses
import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from asymviz import fast
from asymviz.fast import compact, gradbuf, kernels
from asymviz.model import MLP
from asymviz.optim import AsymmetricOptimizer
from asymviz.sparse import AsymmetricLinear, LayerState, SparseOptions, asymmetric_linear, keep_count
from test_sparse import STRATEGY_CONNECTION, reference_backward, run_function

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["c-kernels", "pytorch-ops"])
def kernels_on(request, monkeypatch):
    """The fast path with the compiled kernels, and with the PyTorch ops they replace."""
    if request.param == "c-kernels":
        request.getfixturevalue("kernel_lib")
    else:
        monkeypatch.setattr(kernels, "_lib", None)
        monkeypatch.setattr(kernels, "_tried", True)
    return request.param


def options(strategy, granularity="batch", selection="topk", path="auto", sparsity=0.8):
    return SparseOptions(sparsity=sparsity, conn_sparsity=0.5 if strategy != "neuron" else 0.0, selection=selection,
                         granularity=granularity, connection=STRATEGY_CONNECTION[strategy], path=path)


def three_backwards(opts, shape, plain: bool):
    """Two backwards accumulating into .grad, then torch.autograd.grad, on one layer state.

    Data come from their own generator; the global one (random selection) is seeded the same for
    both paths, so they draw the same sets. Returns (a1.grad, a2.grad, w.grad, b.grad, dW of
    autograd.grad, the three MaskRecords, the data)."""
    B, n_in, n_out = shape
    gen = torch.Generator().manual_seed(7)
    w0, b0 = torch.randn(n_out, n_in, generator=gen), torch.randn(n_out, generator=gen)
    a1, a2 = (torch.randn(B, n_in, generator=gen).requires_grad_() for _ in range(2))
    g1, g2 = torch.randn(B, n_out, generator=gen), torch.randn(B, n_out, generator=gen)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    state = LayerState()
    state.record = True
    torch.manual_seed(3)
    with fast.plain() if plain else _nothing():
        records = []
        for a, g in ((a1, g1), (a2, g2)):
            asymmetric_linear(a, w, b, opts, state).backward(g)
            records.append(state.last)
        (dw,) = torch.autograd.grad(asymmetric_linear(a1, w, b, opts, state), w, g1)
        records.append(state.last)
    return (a1.grad, a2.grad, w.grad, b.grad, dw), records, (a1.detach(), a2.detach(), w0, g1, g2)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _reference(opts, record, g, a, w):
    """The float64 formula with the record's sets where the reference cannot draw them (random)."""
    if opts.selection != "random":
        return reference_backward(g, a, w, opts)
    if opts.granularity == "batch":
        return reference_backward(g, a, w, opts, batch_kept=record.kept)
    return reference_backward(g, a, w, opts, example_mask=record.example_mask)


CASES = list(itertools.product(STRATEGY_CONNECTION, ["batch", "example"], ["topk", "random"],
                               ["compact", "dense", "auto"]))


@pytest.mark.parametrize("strategy,granularity,selection,path", CASES)
def test_fast_equals_plain_equals_float64_reference(kernels_on, strategy, granularity, selection, path):
    """Accumulation over two backwards and torch.autograd.grad, every strategy, granularity and
    selection, both fast-path computations: fast and plain give the same gradients, and both are the formula's."""
    shape = (24, 300, 200)  # large enough for the rule to compact at sparsity 0.8
    opts = options(strategy, granularity, selection, path)
    got, records, (a1, a2, w, g1, g2) = three_backwards(opts, shape, plain=False)
    want, plain_records, _ = three_backwards(opts, shape, plain=True)
    for x, y in zip(records, plain_records):  # the same kept sets ...
        assert torch.equal(x.kept, y.kept) and torch.equal(x.counts, y.counts)
    for x, y in zip(got, want):  # ... the same gradients (float32 rounding aside)
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    da1, dw1, db1 = _reference(opts, records[0], g1, a1, w)
    da2, dw2, db2 = _reference(opts, records[1], g2, a2, w)
    _, dw3, _ = _reference(opts, records[2], g1, a1, w)
    for x, y in zip(got, (da1, da2, dw1 + dw2, db1 + db2, dw3)):
        torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- compaction

@pytest.mark.parametrize("strategy,granularity,shape",
                         list(itertools.product(STRATEGY_CONNECTION, ["batch", "example"],
                                                [(16, 24, 40), (64, 300, 200), (3, 7, 5)])))
def test_compact_path_equals_dense_fallback_equals_reference(kernels_on, strategy, granularity, shape):
    """Both computations of the fast path give the same masked result, and it is the float64 formula's."""
    B, n_in, n_out = shape
    grads = {}
    for path in ("compact", "dense"):
        opts = options(strategy, granularity, path=path)
        a, w, b, g, state = run_function(B, n_in, n_out, opts, seed=11)
        assert state.path == ("compact" if path == "compact" else "dense-fallback")
        grads[path] = (a.grad, w.grad, b.grad)
    for x, y in zip(grads["compact"], grads["dense"]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    for x, y in zip(grads["compact"], reference_backward(g, a.detach(), w.detach(), opts)):
        torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5)


def test_fallback_rule():
    assert compact.use_compact(128, 2048, 2048, 205)  # the reference network at 90 % sparsity
    assert compact.use_compact(128, 2048, 2048, 1024, 1024)  # refined 0.5 / 0.5: a quarter of the work
    assert not compact.use_compact(128, 2048, 2048, 1843)  # keep 90 %: the gathers cost more than they save
    assert not compact.use_compact(16, 16, 16, 2)  # tiny: overhead-bound
    assert not compact.use_compact(64, 64, 256, 26)  # a classroom layer: still overhead-bound


def test_the_path_taken_is_recorded(kernels_on):
    layer = AsymmetricLinear(2048, 2048, sparsity=0.9)
    layer(torch.randn(8, 2048)).sum().backward()
    assert layer.state.path == "compact"
    small = AsymmetricLinear(8, 8, sparsity=0.5)
    small(torch.randn(4, 8)).sum().backward()
    assert small.state.path == "dense-fallback"
    with fast.plain():
        layer(torch.randn(8, 2048)).sum().backward()
    assert layer.state.path == "plain"


@pytest.mark.parametrize("strategy", list(STRATEGY_CONNECTION))
def test_example_granularity_sparse_product_matches_reference(kernels_on, strategy):
    """Few neurons per example and a union covering the layer: da = g~ W runs as a CSR product."""
    opts = options(strategy, "example", sparsity=0.95)
    a, w, b, g, state = run_function(64, 300, 400, opts, seed=5)
    assert len(state.weight_support.rows) > 0.8 * 400
    assert state.path == ("compact" if strategy == "refined" else "dense-fallback")  # refined: half the columns
    for x, y in zip((a.grad, w.grad, b.grad), reference_backward(g, a.detach(), w.detach(), opts)):
        torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5)
    assert state.last.example_mask.sum(1).tolist() == [keep_count(400, 0.95)] * 64


# ----------------------------------------------------------------------------- the gradient buffer

def _loop(strategy, loop, path="compact", steps=4, set_to_none=True):
    """A layer trained by asymviz's optimizer or by a plain loop (torch.optim.SGD, model.zero_grad):
    yields (step, layer, a, g) after each backward, before the optimizer step."""
    torch.manual_seed(4)
    layer = AsymmetricLinear(9, 12, strategy=strategy, sparsity=0.75, conn_sparsity=0.5)
    layer.options = dataclasses.replace(layer.options, path=path)
    opt = AsymmetricOptimizer(layer, "sgd", lr=0.1) if loop == "asymviz" else torch.optim.SGD(layer.parameters(), lr=0.1)
    for step in range(steps):
        if loop == "asymviz":
            opt.zero_grad(set_to_none=set_to_none)
        else:
            layer.zero_grad(set_to_none=set_to_none)
        a, g = torch.randn(6, 9), torch.randn(6, 12)
        layer(a).backward(g)
        yield step, layer, a, g
        opt.step()


@pytest.mark.parametrize("strategy", list(STRATEGY_CONNECTION))
@pytest.mark.parametrize("loop", ["asymviz", "plain loop"])
@pytest.mark.parametrize("path", ["compact", "dense"])
def test_the_buffer_gives_each_steps_gradient_and_is_reused_across_set_to_none(kernels_on, strategy, loop, path):
    """zero_grad(set_to_none=True), asymviz's or PyTorch's: the next backward writes into the same
    storage (compact path), re-zeroing only stale rows; every step's .grad is exact."""
    storage = None  # the address only: holding the tensor would keep it from being reused
    for step, layer, a, g in _loop(strategy, loop, path):
        assert layer.weight.grad.layout == torch.strided
        if path == "compact":
            storage = layer.weight.grad.data_ptr() if storage is None else storage
            assert layer.weight.grad.data_ptr() == storage
        _, dW, _ = reference_backward(g, a, layer.weight.detach(), layer.options)
        torch.testing.assert_close(layer.weight.grad.double(), dW, rtol=1e-5, atol=1e-5)
    assert gradbuf.buffer(layer.state).holds(layer.weight.grad) == (path == "compact")


@pytest.mark.parametrize("strategy", list(STRATEGY_CONNECTION))
@pytest.mark.parametrize("loop", ["asymviz", "plain loop"])
def test_zero_grad_without_set_to_none_zeroes_in_place_and_accumulation_stays_exact(kernels_on, strategy, loop):
    """The same tensor, zeroed (asymviz: only the rows written); the next backwards add k rows into it."""
    torch.manual_seed(5)
    layer = AsymmetricLinear(9, 12, strategy=strategy, sparsity=0.75, conn_sparsity=0.5)
    layer.options = dataclasses.replace(layer.options, path="compact")
    opt = AsymmetricOptimizer(layer, "sgd", lr=0.1)
    layer(torch.randn(6, 9)).backward(torch.randn(6, 12))
    first = layer.weight.grad
    for _ in range(3):
        if loop == "asymviz":
            opt.zero_grad(set_to_none=False)
        else:
            layer.zero_grad(set_to_none=False)
        assert layer.weight.grad is first and torch.count_nonzero(first) == 0
        expected = 0
        for _ in range(2):  # two backwards accumulate
            a, g = torch.randn(6, 9), torch.randn(6, 12)
            layer(a).backward(g)
            expected = expected + reference_backward(g, a, layer.weight.detach(), layer.options)[1]
        assert layer.weight.grad is first
        torch.testing.assert_close(first.double(), expected, rtol=1e-5, atol=1e-5)
        if loop == "asymviz":  # known rows: the next zeroing touches only them (PyTorch's zero_() is a write)
            assert gradbuf.buffer(layer.state).holds(first)


@pytest.mark.parametrize("hold", ["the tensor", "a view", "a detached alias"])
def test_a_gradient_someone_holds_is_never_overwritten(kernels_on, hold):
    """After set_to_none, an old gradient still held (or a view or alias of it) keeps its values:
    the next backward writes into fresh storage."""
    kept = []
    for step, layer, a, g in _loop("neuron", "plain loop"):
        if kept:
            old, values = kept[-1]
            assert torch.equal(old.view(values.shape), values)  # untouched by this step's backward
            assert layer.weight.grad.data_ptr() != old.data_ptr()
        grad = layer.weight.grad
        held = {"the tensor": grad, "a view": grad.view(-1), "a detached alias": grad.detach()}[hold]
        kept.append((held, grad.clone()))
        del grad, held
        _, dW, _ = reference_backward(g, a, layer.weight.detach(), layer.options)
        torch.testing.assert_close(layer.weight.grad.double(), dW, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("edit", ["add_", "clip_grad_norm_"])
def test_a_gradient_edited_in_place_is_cleared_whole_before_reuse(kernels_on, edit):
    """An in-place write (every entry non-zero, or clipping) bumps the version counter: the buffer's
    rows list no longer describes it, so the next backward clears it whole; gradients stay exact."""
    for step, layer, a, g in _loop("neuron", "plain loop", steps=3):
        _, dW, _ = reference_backward(g, a, layer.weight.detach(), layer.options)
        torch.testing.assert_close(layer.weight.grad.double(), dW, rtol=1e-5, atol=1e-5)
        if edit == "add_":
            layer.weight.grad.add_(1.0)
        else:
            nn.utils.clip_grad_norm_(layer.parameters(), 1e-3)
        assert not gradbuf.buffer(layer.state).holds(layer.weight.grad)


def test_a_foreign_gradient_is_zeroed_whole_and_not_taken_as_the_buffer(kernels_on):
    opts = SparseOptions(sparsity=0.5, path="compact")
    w = torch.randn(10, 6, requires_grad=True)
    layer = AsymmetricLinear(6, 10, bias=False, sparsity=0.5)
    layer.options = opts
    with torch.no_grad():
        layer.weight.copy_(w)
    opt = AsymmetricOptimizer(layer, "sgd", lr=0.0)
    layer(torch.randn(4, 6)).backward(torch.randn(4, 10))
    layer.weight.grad = torch.ones(10, 6)  # e.g. a user's own gradient
    opt.zero_grad(set_to_none=False)
    assert torch.count_nonzero(layer.weight.grad) == 0
    a, g = torch.randn(4, 6), torch.randn(4, 10)
    layer(a).backward(g)
    torch.testing.assert_close(layer.weight.grad.double(), reference_backward(g, a, w, opts)[1], rtol=1e-5, atol=1e-5)


def test_autograd_grad_gets_a_fresh_dense_gradient(kernels_on):
    """torch.autograd.grad never receives the layer's buffer, and .grad stays as it was."""
    layer = AsymmetricLinear(6, 10, sparsity=0.5)
    layer.options = dataclasses.replace(layer.options, path="compact")
    layer(torch.randn(4, 6)).backward(torch.randn(4, 10))
    grad, values = layer.weight.grad, layer.weight.grad.clone()
    a, g = torch.randn(4, 6), torch.randn(4, 10)
    (dw,) = torch.autograd.grad(layer(a), layer.weight, g)
    assert dw.layout == torch.strided and dw.data_ptr() != grad.data_ptr()
    assert layer.weight.grad is grad and torch.equal(grad, values)
    torch.testing.assert_close(dw.double(), reference_backward(g, a, layer.weight.detach(), layer.options)[1],
                               rtol=1e-5, atol=1e-5)


def test_without_the_storage_count_nothing_is_reused(kernels_on, monkeypatch):
    """Where PyTorch's storage use count cannot be trusted, every step gets a fresh buffer."""
    monkeypatch.setattr(gradbuf, "_probe", 0)
    seen = set()
    for step, layer, a, g in _loop("neuron", "plain loop"):
        seen.add(layer.weight.grad.data_ptr())
        _, dW, _ = reference_backward(g, a, layer.weight.detach(), layer.options)
        torch.testing.assert_close(layer.weight.grad.double(), dW, rtol=1e-5, atol=1e-5)
    assert gradbuf.buffer(layer.state).holds(layer.weight.grad)  # tracked, just not reused


def test_release_grad_buffer_lets_go(kernels_on):
    for step, layer, a, g in _loop("neuron", "plain loop", steps=2):
        pass
    buf = gradbuf.buffer(layer.state)
    assert buf.alias is not None
    layer.release_grad_buffer()
    assert buf.alias is None and buf.rows == []


# ----------------------------------------------------------------------------- the switch

def test_asymviz_fast_0_runs_the_plain_path_everywhere():
    code = ("import torch; from asymviz import fast; from asymviz.model import MLP; "
            "from asymviz.optim import AsymmetricOptimizer; m = MLP(64, [2048], 3, sparsity=0.9); "
            "o = AsymmetricOptimizer(m, 'adam'); o.zero_grad(); m(torch.randn(8, 64)).sum().backward(); o.step(); "
            "print(fast.enabled(), m.linears[0].state.path, m.linears[0].state.workspace, fast.status())")
    env = {**os.environ, "ASYMVIZ_FAST": "0", "PYTHONPATH": ROOT}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "plain", "None", "plain", "reference", "path", "(ASYMVIZ_FAST=0)"]


def test_the_benchmark_says_when_the_plain_path_ran():
    from asymviz.bench import kernel_note

    with fast.plain():
        assert kernel_note(torch.device("cpu")) == "none (ASYMVIZ_FAST=0: the plain path)"
    assert kernel_note(torch.device("cpu")) in ("C", "PyTorch ops")
