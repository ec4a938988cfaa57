"""The backward benchmark: well-formed rows, the FLOP formula, the CLI (no wall-clock thresholds)."""

import json
import subprocess
import sys

import pytest

from asymviz.fast import kernels
from asymviz.bench import backward_flops, backward_table, format_table
from asymviz.errors import ConfigError

KEYS = {"strategy", "sparsity", "keep", "widths", "batch", "dense_backward_ms", "sparse_backward_ms",
        "backward_speedup", "ideal", "efficiency", "dense_step_ms", "sparse_step_ms", "step_speedup",
        "forward_ms", "path"}
TINY = dict(widths=[32, 24], batch=8, n_in=12, n_out=3, repeats=2, warmup=1)


def test_ideal_is_the_backward_flop_ratio_of_the_reference_network():
    dense = backward_flops(784, [2048, 2048], 10, 128)
    assert dense / backward_flops(784, [2048, 2048], 10, 128, keep=[205, 205]) == pytest.approx(9.64, abs=0.01)
    assert dense / backward_flops(784, [2048, 2048], 10, 128, keep=[102, 102]) == pytest.approx(18.6, abs=0.05)
    # refined halves both sides of every hidden layer's matmuls (kc of n_in input units)
    half = backward_flops(784, [2048, 2048], 10, 128, keep=[1024, 1024], conn_keep=[392, 1024])
    full = backward_flops(784, [2048, 2048], 10, 128, keep=[1024, 1024])
    assert half < 0.55 * full


@pytest.mark.parametrize("strategy,granularity", [("neuron", "batch"), ("refined", "batch"), ("excessive", "example")])
def test_backward_table_rows_are_well_formed(strategy, granularity):
    rows = backward_table(**TINY, sparsities=[0.0, 0.5], strategy=strategy, conn_sparsity=0.5, granularity=granularity)
    assert [r["sparsity"] for r in rows] == [0.0, 0.5]
    for r in rows:
        assert KEYS <= set(r)
        assert r["widths"] == [32, 24] and r["batch"] == 8 and r["strategy"] == strategy
        assert len(r["keep"]) == 2
        for key in ("dense_backward_ms", "sparse_backward_ms", "dense_step_ms", "sparse_step_ms", "forward_ms"):
            assert r[key] > 0
        assert r["backward_speedup"] == pytest.approx(r["dense_backward_ms"] / r["sparse_backward_ms"])
        assert r["efficiency"] == pytest.approx(r["backward_speedup"] / r["ideal"])
        assert r["kernels"] == ("C" if kernels.library() is not None else "PyTorch ops")
    assert rows[1]["keep"] == [16, 12] and rows[1]["ideal"] > 1
    text = format_table(rows)
    assert "bwd speedup" in text and len(text.splitlines()) == 4


def test_plain_neuron_at_sparsity_zero_is_autograd():
    (row,) = backward_table(**TINY, sparsities=[0.0])
    assert row["path"] == "autograd" and row["ideal"] == 1.0


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsities": [1.0]}, "sparsity must be in"),
    ({"strategy": "magic"}, "Unknown strategy"),
    ({"granularity": "neuron"}, "Unknown granularity"),
    ({"optimizer": "lbfgs"}, "Unknown optimizer"),
    ({"widths": []}, "at least one hidden layer"),
    ({"batch": 0}, "batch must be"),
    ({"device": "tpu"}, "Unknown device"),
    ({"path": "fast"}, "Unknown path"),
    ({"clock": "gpu"}, "Unknown clock"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        backward_table(**{**TINY, **kwargs})


def run(*args):
    return subprocess.run([sys.executable, "-m", "asymviz", "bench", *args], capture_output=True, text=True, timeout=120)


def test_cli_bench_json_on_a_tiny_config():
    p = run("--hidden", "16,16", "--n-in", "8", "--batch", "4,8", "--sparsity", "0,0.5", "--repeats", "2",
            "--warmup", "0", "--strategy", "neuron,refined", "--conn-sparsity", "0.5", "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 * 2 * 2 and KEYS <= set(rows[0])
    assert {r["strategy"] for r in rows} == {"neuron", "refined"} and {r["batch"] for r in rows} == {4, 8}


def test_cli_bench_table():
    p = run("--width", "16", "--depth", "1", "--n-in", "8", "--sparsity", "0.5", "--repeats", "1", "--warmup", "0")
    assert p.returncode == 0, p.stderr
    assert "8-16-10" in p.stdout and "bwd speedup" in p.stdout
    assert "CPU hot loops: C" in p.stdout or "CPU hot loops: PyTorch ops" in p.stdout


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "0.5,x"], "sparsities must hold numbers, got 'x'."),
    (["--batch", "4 x"], "batch must be a whole number, got 'x'."),
    (["--sparsity", "1.5"], "sparsity must be in [0, 1)"),
    (["--strategy", "nope"], "Unknown strategy 'nope'"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--hidden", "16", "--width", "8"], "either --hidden or --width"),
])
def test_cli_bench_bad_input_exits_2_with_one_sentence(args, message):
    p = run("--hidden", "16", "--n-in", "8", "--repeats", "1", *args) if "--hidden" not in args else run("--n-in", "8", *args)
    if "cuda" in args and p.returncode == 0:
        pytest.skip("a GPU is present")
    assert p.returncode == 2
    assert message in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("path,expected", [("compact", "compact"), ("dense", "dense-fallback")])
def test_path_can_be_forced(path, expected):
    (row,) = backward_table(**TINY, sparsities=[0.5], path=path)
    assert row["path"] == expected


def test_symmetric_overhead_is_well_formed():
    from asymviz.bench import symmetric_overhead

    r = symmetric_overhead([16], batch=4, n_in=6, n_out=3, repeats=2, warmup=1)
    assert r["nn_backward_ms"] > 0 and r["asym_step_ms"] > 0
    assert r["step_overhead"] == pytest.approx(r["asym_step_ms"] / r["nn_step_ms"] - 1)


def test_user_loop_table_is_well_formed():
    from asymviz.bench import user_loop_table

    (row,) = user_loop_table([16, 12], batch=4, sparsities=[0.5], n_in=6, n_out=3, repeats=2, warmup=1)
    assert row["keep"] == 8 and row["widths"] == [16, 12]
    for loop in ("user", "library"):
        assert row[f"{loop}_dense_backward_ms"] > 0 and row[f"{loop}_sparse_backward_ms"] > 0
        assert row[f"{loop}_backward_speedup"] == pytest.approx(
            row[f"{loop}_dense_backward_ms"] / row[f"{loop}_sparse_backward_ms"])
    assert row["user_vs_library"] == pytest.approx(row["user_backward_speedup"] / row["library_backward_speedup"])
