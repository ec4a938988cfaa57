"""The compiled CPU kernels against the PyTorch ops they replace, the build, and the fallback."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from asymviz.fast import kernels
from asymviz.model import MLP
from asymviz.optim import AsymmetricOptimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (128, 2048), (64, 1000)])  # the last two use several threads
def test_abs_colsum_is_the_batch_summed_magnitude(kernel_lib, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    torch.testing.assert_close(kernels.abs_colsum(x), x.abs().sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,kc", [(3, 2), (205, 1024)])
def test_gather_and_scatter_block_are_row_column_indexing(kernel_lib, k, kc):
    torch.manual_seed(1)
    full = torch.randn(2048, 2048)
    rows = torch.randperm(2048)[:k].sort().values
    cols = torch.randperm(2048)[:kc].sort().values
    assert torch.equal(kernels.gather_block(full, rows, cols), full[rows][:, cols])
    block = torch.randn(k, kc)
    expected = full.clone()
    expected[rows.unsqueeze(1), cols.unsqueeze(0)] = block
    assert torch.equal(kernels.scatter_block(full, rows, cols, block), expected)


@pytest.mark.parametrize("k,n", [(3, 5), (205, 2048)])
def test_row_and_column_copies_are_indexing(kernel_lib, k, n):
    torch.manual_seed(2)
    full = torch.randn(2048, n)
    rows = torch.randperm(2048)[:k].sort().values
    assert torch.equal(kernels.gather_rows(full, rows), full[rows])
    x = torch.randn(128, n)
    cols = torch.randperm(n)[: max(1, n // 2)].sort().values
    assert torch.equal(kernels.gather_cols(x, cols), x[:, cols])
    d = torch.randn(128, len(cols))
    expected = torch.zeros(128, n)
    expected[:, cols] = d
    assert torch.equal(kernels.expand_cols(d, cols, n), expected)


@pytest.mark.parametrize("unsorted", [False, True])
def test_replace_rows_zeroes_the_stale_rows_and_copies_the_new(kernel_lib, unsorted):
    """The gradient buffer's next step: last step's rows not kept now become zero, new rows are copied."""
    torch.manual_seed(3)
    buf = torch.zeros(2048, 300)
    old = torch.randperm(2048)[:400].sort().values
    buf[old] = torch.randn(400, 300)
    rows = torch.cat([old[:150], torch.randperm(2048)[:250]]).unique()  # overlaps last step's rows
    if unsorted:  # correct either way (sorted lists only save work)
        rows, old = rows[torch.randperm(len(rows))], old[torch.randperm(len(old))]
    block = torch.randn(len(rows), 300)
    expected = torch.zeros(2048, 300)
    expected[rows] = block
    assert torch.equal(kernels.replace_rows(buf, rows, block, old), expected)
    kernels.clear_rows(buf, rows)
    assert torch.count_nonzero(buf) == 0


def _model(strategy, name, granularity):
    """A 2-hidden-layer MLP wide enough for the compact path and threaded kernels (k x kc >= 65536)."""
    torch.manual_seed(3)
    model = MLP(64, [1024, 1024], 5, strategy=strategy, sparsity=0.8, conn_sparsity=0.5, granularity=granularity)
    for layer in model.linears[:-1]:  # example granularity's wide union would take the dense path
        layer.options = dataclasses.replace(layer.options, path="compact")
    return model, AsymmetricOptimizer(model, name, lr=0.01, weight_decay=0.01)


def _step(model, opt, x, y, use_kernels: bool, kernel_lib):
    kernels._lib = kernel_lib if use_kernels else None
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("strategy,granularity", [("neuron", "batch"), ("excessive", "batch"), ("refined", "batch"),
                                                  ("neuron", "example"), ("refined", "example")])
def test_training_with_and_without_kernels_agrees(kernel_lib, monkeypatch, name, strategy, granularity):
    """Same selections, same updates, step after step: the kernels change how, not what.

    The two models run in lockstep and the PyTorch one is re-synchronized to the other's weights
    after each comparison (float32 rounding differs; Adam would amplify it into other selections)."""
    monkeypatch.setattr(kernels, "_tried", True)
    monkeypatch.setattr(kernels, "_lib", kernel_lib)  # restored afterwards; `_step` switches it
    fast, opt_fast = _model(strategy, name, granularity)
    slow, opt_slow = _model(strategy, name, granularity)
    gen = torch.Generator().manual_seed(4)
    for step in range(4):
        x, y = torch.randn(256, 64, generator=gen), torch.randint(0, 5, (256,), generator=gen)
        _step(fast, opt_fast, x, y, True, kernel_lib)
        _step(slow, opt_slow, x, y, False, kernel_lib)
        assert {layer.state.path for layer in fast.linears[:-1]} == {"compact"}  # the kernels' paths ran
        for a, b in zip(fast.parameters(), slow.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)  # 0.2 % of a step (lr 0.01): rounding near g = 0
            with torch.no_grad():
                b.copy_(a)


def test_a_float64_model_uses_the_pytorch_ops(kernel_lib):
    """The kernels take float32 only; other dtypes go the PyTorch way and still train."""
    torch.manual_seed(0)
    model = MLP(6, [40], 3, strategy="refined", sparsity=0.5, conn_sparsity=0.5).double()
    opt = AsymmetricOptimizer(model, "adam", lr=0.1)
    before = model.linears[0].weight.detach().clone()
    torch.nn.functional.cross_entropy(model(torch.randn(8, 6, dtype=torch.float64)), torch.randint(0, 3, (8,))).backward()
    opt.step()
    assert not torch.equal(model.linears[0].weight, before)


def _fresh(monkeypatch, tmp_path, **env):
    monkeypatch.setenv("ASYMVIZ_KERNEL_DIR", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_tried", False)


def test_builds_into_the_kernel_dir_once(kernel_lib, monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    assert kernels.library() is not None
    built = list(tmp_path.glob("asymviz_kernels_*.so"))
    assert len(built) == 1 and built[0] == kernels.library_path()
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_tried", False)
    assert kernels.library() is not None and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert "compiled C kernels" in kernels.status()


def test_without_a_compiler_everything_falls_back(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path, CC=str(tmp_path / "no-such-cc"))
    assert kernels.library() is None
    assert "no C compiler" in kernels.status() and "PyTorch ops" in kernels.status()
    torch.manual_seed(0)
    model = MLP(6, [40], 3, strategy="neuron", sparsity=0.5)
    AsymmetricOptimizer(model, "adam").step()  # no gradient yet: nothing to do, no error
    torch.nn.functional.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()


def test_switched_off_by_environment(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path, ASYMVIZ_KERNELS="0")
    assert kernels.library() is None and "ASYMVIZ_KERNELS=0" in kernels.status()
    assert not list(tmp_path.iterdir())  # nothing was built


def test_cli_kernels_reports_and_fails_cleanly_without_a_compiler(tmp_path):
    env = {**os.environ, "ASYMVIZ_KERNEL_DIR": str(tmp_path), "CC": str(tmp_path / "no-such-cc")}
    env.pop("ASYMVIZ_KERNELS", None)
    run = subprocess.run([sys.executable, "-m", "asymviz", "kernels"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 1
    assert "unavailable (no C compiler" in run.stdout and "Traceback" not in run.stderr
    assert "install a C compiler" in run.stderr


def test_cli_kernels_builds_and_reports(kernel_lib, tmp_path):
    env = {**os.environ, "ASYMVIZ_KERNEL_DIR": str(tmp_path)}
    env.pop("ASYMVIZ_KERNELS", None)
    run = subprocess.run([sys.executable, "-m", "asymviz", "kernels"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("asymviz CPU kernels: compiled C kernels") and str(tmp_path) in run.stdout


def test_threads_only_on_torchs_own_openmp_pool(monkeypatch):
    """Small work, or an OpenMP runtime that is not torch's: one thread (no second pool competing)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(kernels, "_gomp", True)
    assert kernels._threads(10**6) == 4 and kernels._threads(1000) == 1
    monkeypatch.setattr(kernels, "_gomp", False)
    assert kernels._threads(10**6) == 1


# ----------------------------------------------------------------------------- the typed interface

@pytest.mark.parametrize("call,message", [
    (lambda: kernels.abs_colsum(torch.randn(4, 5, dtype=torch.float64)), "x must be torch.float32"),
    (lambda: kernels.abs_colsum(torch.randn(5, 4).t()), "x must be a contiguous CPU tensor"),
    (lambda: kernels.gather_rows(torch.randn(6, 3), torch.tensor([0, 6])), "a row index is out of range"),
    (lambda: kernels.gather_rows(torch.randn(6, 3), torch.tensor([-1])), "a row index is out of range"),
    (lambda: kernels.gather_rows(torch.randn(6, 3), torch.tensor([1], dtype=torch.int32)), "rows must be torch.int64"),
    (lambda: kernels.gather_cols(torch.randn(2, 3), torch.tensor([3])), "a column index is out of range"),
    (lambda: kernels.gather_block(torch.randn(6, 3), torch.tensor([1]), torch.tensor([0]), out=torch.empty(2, 1)),
     "out must have shape (1, 1)"),
    (lambda: kernels.scatter_block(torch.zeros(6, 3), torch.tensor([1, 2]), torch.tensor([0]), torch.ones(1, 1)),
     "block must have shape (2, 1)"),
    (lambda: kernels.expand_cols(torch.randn(2, 2), torch.tensor([0]), 4), "one index per column of x"),
    (lambda: kernels.replace_rows(torch.zeros(4, 3), torch.tensor([0]), torch.ones(1, 3), torch.tensor([9])),
     "a row index is out of range"),
    (lambda: kernels.sgd_(torch.zeros(4, 3), torch.zeros(4, 2), kernels.Entries(torch.tensor([0])), lr=0.1),
     "grad must have shape (4, 3)"),
    (lambda: kernels.adam_(torch.zeros(4, 3), torch.ones(4, 3), torch.zeros(4, 3), torch.zeros(4, 3),
                           kernels.Entries(torch.tensor([1])),
                           kernels.AdamCoefficients(torch.ones(3), torch.ones(3), (0.9, 0.999)),
                           row_t=torch.tensor([3])), "a step count is beyond the coefficient table"),
    (lambda: kernels.adam_(torch.zeros(4, 3), torch.ones(4, 3), torch.zeros(4, 3), torch.zeros(4, 3),
                           kernels.Entries(torch.tensor([1])),
                           kernels.AdamCoefficients(torch.ones(3), torch.ones(3), (0.9, 0.999))), "exactly one of"),
])
def test_bad_arguments_are_refused_with_a_sentence(kernel_lib, call, message):
    with pytest.raises(kernels.KernelArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_a_refused_index_touches_nothing(kernel_lib):
    """The C code checks every index before it writes: a bad one leaves the parameter and its state as they were."""
    p, m = torch.randn(5, 4), torch.randn(5, 4)
    before = (p.clone(), m.clone())
    with pytest.raises(kernels.KernelArgumentError, match="row index"):
        kernels.momentum_(p, torch.ones(5, 4), m, kernels.Entries(torch.tensor([0, 2, 5])), lr=0.1, momentum=0.9)
    with pytest.raises(kernels.KernelArgumentError, match="column index"):
        kernels.momentum_(p, torch.ones(5, 4), m, kernels.Entries(torch.tensor([0]), torch.tensor([1, 4])), lr=0.1,
                          momentum=0.9)
    assert torch.equal(p, before[0]) and torch.equal(m, before[1])


def test_accepts_names_what_can_go_to_the_kernels(kernel_lib):
    x = torch.randn(3, 4)
    assert kernels.accepts(x, torch.tensor([1]), None, torch.zeros(2, dtype=torch.bool))
    assert not kernels.accepts(x.t())  # not contiguous
    assert not kernels.accepts(x.double())
    assert not kernels.accepts(x.to_sparse())
