"""Figure builders are pure and bounded; the UI helpers round-trip configs through the URL."""

import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest

from asymviz import figures


def _steps(n):
    return [{"step": i + 1, "epoch": i // 10 + 1, "train/loss": 2.0 / (i + 1), "train/batch_acc": min(1.0, i / n),
             "time/forward_ms": 1.0, "time/backward_ms": 2.0, "time/optimizer_ms": 0.5, "time/step_ms": 3.5,
             "kept/layer0": 0.1} for i in range(n)]


def _epochs(n):
    return [{"epoch": e, "step": 10 * e, "train/loss": 1.0 / e, "train/acc": 0.8 + 0.01 * e,
             "val/loss": 1.2 / e, "val/acc": 0.75 + 0.01 * e, "gap": 0.05} for e in range(1, n + 1)]


def _points(fig):
    return sum(len(t.x) for t in fig.data if getattr(t, "x", None) is not None)


def test_downsample_keeps_ends_and_bounds():
    data = list(range(10_000))
    out = figures.downsample(data, 300)
    assert len(out) == 300 and out[0] == 0 and out[-1] == 9_999
    assert out == sorted(out)
    assert figures.downsample(data[:5], 300) == data[:5]
    assert figures.downsample(data, 1) == [9_999]
    with pytest.raises(ValueError):
        figures.downsample(data, 0)


def test_series_skips_missing_and_nan():
    xs, ys = figures.series([{"step": 1, "a": 1.0}, {"step": 2}, {"step": 3, "a": float("nan")},
                             {"step": 4, "a": 2}], "a")
    assert xs.tolist() == [1, 4] and ys.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("builder", [figures.loss_figure, figures.accuracy_figure])
def test_curves_are_bounded_whatever_the_run_length(builder):
    fig = builder(_steps(50_000), _epochs(5000), max_points=200)
    assert isinstance(fig, go.Figure)
    assert all(len(t.x) <= 200 for t in fig.data)
    assert {t.name for t in fig.data} >= {"train", "validation"}


@pytest.mark.parametrize("builder", [figures.loss_figure, figures.accuracy_figure])
def test_curves_without_data_say_so(builder):
    fig = builder([], [])
    assert not fig.data and "Waiting" in fig.layout.annotations[0].text


def test_gap_and_timing():
    assert sum(len(t.x) for t in figures.gap_figure(_epochs(5)).data) == 5
    assert not figures.gap_figure([]).data
    assert sum(len(t.x) for t in figures.gap_figure(_epochs(5000), max_points=100).data) == 100
    fig = figures.timing_figure(_steps(1000), reference={"backward_ms_mean": 4.0, "label": "run #3"}, max_points=100)
    assert {t.name for t in fig.data} == {"backward", "forward", "optimizer"}
    assert all(len(t.x) <= 100 for t in fig.data)
    assert any("run #3" in (s.text or "") for s in fig.layout.annotations)
    assert not figures.timing_figure([]).data
    spiky = _steps(200)
    spiky[50]["time/backward_ms"] = 500.0
    fig = figures.timing_figure(spiky)
    assert fig.layout.yaxis.range[1] < 100 and any("cut off" in (a.text or "") for a in fig.layout.annotations)


def test_mask_matrix_bins_steps_and_neurons():
    n = 1000
    masks = [{"step": s, "layer": 0, "n": n, "kept": list(range(0, n, 10))} for s in range(2000)]
    z, steps, bin_size = figures.mask_matrix(masks, max_steps=300, max_neurons=256)
    assert z.shape[1] == len(steps) <= 300 and z.shape[0] <= 256
    assert bin_size == 4 and steps[0] == 0 and steps[-1] == 1999
    assert np.all((z >= 0) & (z <= 1))
    assert math.isclose(float(z.mean()), 0.1, rel_tol=0.05)  # every 10th neuron kept
    small = [{"step": 1, "n": 4, "kept": [1, 3]}]
    z, steps, bin_size = figures.mask_matrix(small)
    assert z[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0] and bin_size == 1


def test_mask_heatmap_and_selection():
    masks = [{"step": s, "layer": 0, "n": 64, "kept": [s % 64, 5]} for s in range(500)]
    fig = figures.mask_heatmap(masks, layer=0)
    assert isinstance(fig.data[0], go.Heatmap)
    assert np.asarray(fig.data[0].z).shape == (64, 300)
    assert not figures.mask_heatmap([]).data
    counts = [0] * 1000
    counts[5] = 500
    fig = figures.selection_figure(counts, 500, keep=100)
    assert len(fig.data[0].x) <= figures.MAX_NEURONS * 2
    assert max(fig.data[0].y) <= 1.0
    assert not figures.selection_figure([], 0).data


def test_connection_figure_block_averages():
    mask = np.zeros((1000, 600), dtype=bool)
    mask[:, :300] = True
    fig = figures.connection_figure(mask, max_size=100)
    z = np.asarray(fig.data[0].z)
    assert z.shape[0] <= 100 and z.shape[1] <= 100
    assert math.isclose(float(np.nanmean(z)), 0.5, abs_tol=0.02)
    assert not figures.connection_figure(None).data


def test_boundary_two_and_three_classes():
    grid = {"x": [0.0, 1.0, 2.0], "y": [0.0, 1.0], "prob": [[[0.9, 0.1]] * 3, [[0.2, 0.8]] * 3]}
    pts = np.random.default_rng(0).normal(size=(5000, 2))
    labels = (pts[:, 0] > 0).astype(int)
    fig = figures.boundary_figure(grid, pts, labels, ["a", "b"])
    assert isinstance(fig.data[0], go.Image) and isinstance(fig.data[1], go.Contour)
    assert sum(len(t.x) for t in fig.data if isinstance(t, go.Scatter)) <= figures.MAX_SCATTER
    assert {t.name for t in fig.data if isinstance(t, go.Scatter)} == {"a", "b"}
    # the runner's compact form: class index and confidence per cell
    compact = {"resolution": 2, "x": [0.0, 1.0], "y": [0.0, 1.0], "cls": [[0, 0], [2, 1]],
               "conf": [[0.9, 0.5], [0.8, 0.34]]}
    cls, conf, c = figures.grid_classes(compact)
    assert c == 3 and cls.tolist() == [[0, 0], [2, 1]]
    fig = figures.boundary_figure(compact)
    assert [type(t) for t in fig.data] == [go.Image]
    assert figures.grid_classes(grid)[0].tolist() == [[0, 0, 0], [1, 1, 1]]
    assert not figures.boundary_figure(None).data


def test_network_figure_lights_kept_edges_only_in_backward():
    fig = figures.network_figure((2, 3, 2), kept=[[1]])
    forward_lit, backward_dim, backward_lit = fig.data[1], fig.data[3], fig.data[4]
    edges = lambda trace: sum(1 for v in trace.x if v is None)  # noqa: E731
    assert edges(forward_lit) == 2 * 3 + 3 * 2
    assert edges(backward_lit) == 2 * 1 + 3 * 2  # into the kept neuron, and the dense output layer
    assert edges(backward_dim) == 2 * 2
    with pytest.raises(ValueError):
        figures.network_figure((3,))


def test_compare_and_bench():
    fig = figures.compare_figure([("#1", _epochs(3)), ("#2", _epochs(4)), ("#3", [])])
    assert [t.name for t in fig.data] == ["#1", "#2"]
    rows = [{"sparsity": s, "dense_backward_ms": 2.0, "sparse_backward_ms": 2.0 * (1 - s) + 0.3,
             "backward_speedup": 2.0 / (2.0 * (1 - s) + 0.3), "ideal": 1 / (1 - s), "forward_ms": 1.0,
             "step_speedup": 1.1} for s in (0.9, 0.0, 0.5)]
    fig = figures.bench_figure(rows)
    assert list(fig.data[0].x) == [0.0, 0.5, 0.9]
    assert {"ideal (FLOP ratio)", "measured speedup"} <= {t.name for t in fig.data}
    assert not figures.bench_figure([]).data


def _cases():
    masks = [{"step": s, "layer": 0, "n": 300, "kept": np.array([s % 300, 5, 7])} for s in range(500)]
    grid = {"x": [0.0, 1.0, 2.0], "y": [0.0, 1.0], "prob": [[[0.9, 0.1]] * 3, [[0.2, 0.8]] * 3]}
    compact = {"x": [0.0, 1.0], "y": [0.0, 1.0], "cls": [[0, 0], [2, 1]], "conf": [[0.9, 0.5], [0.8, 0.34]]}
    pts = np.random.default_rng(0).normal(size=(800, 2))
    spiky = _steps(200)
    spiky[50]["time/backward_ms"] = 500.0
    return [
        (figures.loss_figure, (_steps(900), _epochs(30))), (figures.loss_figure, ([], [])),
        (figures.accuracy_figure, (_steps(900), _epochs(30))), (figures.accuracy_figure, ([], _epochs(3))),
        (figures.gap_figure, (_epochs(70),)), (figures.gap_figure, ([],)),
        (figures.timing_figure, (spiky, {"backward_ms_mean": 3.0, "label": "run #2"})), (figures.timing_figure, ([],)),
        (figures.mask_heatmap, (masks,)), (figures.mask_heatmap, ([],)),
        (figures.selection_figure, ([3] * 600, 500, 1, 30)), (figures.selection_figure, ([], 0)),
        (figures.connection_figure, (np.eye(300, 600, dtype=bool),)), (figures.connection_figure, (None,)),
        (figures.boundary_figure, (grid, pts, (pts[:, 0] > 0).astype(int), ["a", "b"])),
        (figures.boundary_figure, (compact, None, None, None, "title", 3)), (figures.boundary_figure, (None,)),
        (figures.compare_figure, ([("#1", _epochs(3)), ("#2", [])],)),
    ]


@pytest.mark.parametrize("builder, args", _cases(), ids=lambda v: getattr(v, "__name__", ""))
def test_the_plain_spec_writes_the_same_json_as_the_validated_figure(builder, args):
    import plotly.io as pio

    text = figures.to_json(builder.spec(*args))
    assert json.loads(text) == json.loads(pio.to_json(builder(*args)))
    assert "NaN" not in text and "Infinity" not in text


def test_to_json_writes_arrays_as_plotly_does():
    spec = {"data": [{"type": "scatter", "x": np.arange(3), "y": np.array([1.5, np.nan, 2], np.float32),
                      "z": np.zeros((2, 3), np.uint8), "w": np.array([2**40]), "e": np.array([])}],
            "layout": {"title": {"text": np.float64(1.5)}, "yaxis": {"range": [0, float("nan")]}}}
    out = json.loads(figures.to_json(spec))
    trace = out["data"][0]
    assert trace["x"]["dtype"] == "i1" and trace["y"]["dtype"] == "f4" and trace["e"] == []
    assert trace["z"]["shape"] == "2, 3" and trace["w"] == [2**40]  # plotly.js has no int64: a plain list
    assert out["layout"]["title"]["text"] == 1.5 and out["layout"]["yaxis"]["range"] == [0, None]  # NaN: null
