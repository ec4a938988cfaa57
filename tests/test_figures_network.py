"""The lecture's pure parts: the network picture, the twins' overlays, twin configs, lesson flags."""

import base64
import struct
import zlib

import numpy as np
import pytest

from asymviz import figures_network as fn
from asymviz import figures_twins, lessons, twins
from asymviz.errors import ConfigError
from asymviz.snapshot import quantize

import torch


def snap(**changes):
    """A 2-3-2 network after a step that kept neurons 0 and 2 of its hidden layer."""
    s = {"step": 5, "epoch": 1, "widths": [2, 3, 2],
         "weights": [[[0.5, -0.1], [0.2, 0.3], [-0.9, 0.05]], [[1.0, -1.0, 0.5], [0.1, 0.2, -0.3]]],
         "kept": [[0, 2], None], "conn": [None, None], "counts": [[5, 1, 4], None], "counted": 5}
    s.update(changes)
    return s


def neurons(fig):
    (trace,) = [t for t in fig.data if t.name == "neurons"]
    return [tuple(c) for c in trace.customdata], list(trace.hovertext)


def glow_segments(fig):
    (trace,) = [t for t in fig.data if t.name == "got gradient"]
    xs, ys = list(trace.x), list(trace.y)
    return [(xs[i], ys[i], xs[i + 1], ys[i + 1]) for i in range(0, len(xs), 3)]


def test_the_kept_neurons_and_their_connections_are_highlighted():
    fig = fn.network_figure(snap())
    custom, text = neurons(fig)
    assert [c for c in custom if c[0] == 1] == [(1, 0, 1), (1, 1, 0), (1, 2, 1)]
    assert all(c[2] == 1 for c in custom if c[0] == 2) and all(c[2] == 0 for c in custom if c[0] == 0)
    assert len(glow_segments(fig)) == 2 * 2 + 3 * 2  # into the kept hidden neurons, and the dense output
    assert "kept in 1 of 5 steps (20%)" in text[3] and "every step" in text[5]
    drawn = sum(len(t.x) // 3 for t in fig.data if t.name.endswith("weights"))
    assert drawn == 2 * 3 + 3 * 2  # the forward pass: every connection
    assert {t.line.color for t in fig.data if t.name == "negative weights"} == {fn.NEGATIVE}


def test_before_the_first_step_nothing_is_highlighted():
    fig = fn.network_figure(snap(step=0, kept=[None, None]))
    assert not any(c[2] for c in neurons(fig)[0]) and glow_segments(fig) == []
    assert fig.layout.title.text == "Network before its first step"


def test_connection_masks_limit_the_glowing_connections():
    ys_in = fn.column_positions(2)[0]
    refined = fn.network_figure(snap(conn=[{"cols": [1]}, None]))
    into_hidden = [s for s in glow_segments(refined) if s[0] == 0]
    assert len(into_hidden) == 2 and {s[1] for s in into_hidden} == {ys_in[1]}  # only from input 1
    excessive = fn.network_figure(snap(conn=[{"mask": [[1, 0], [0, 1]]}, None]))  # rows follow kept [0, 2]
    ys_hidden = fn.column_positions(3)[0]
    into_hidden = {(s[1], s[3]) for s in glow_segments(excessive) if s[0] == 0}
    assert into_hidden == {(ys_in[0], ys_hidden[0]), (ys_in[1], ys_hidden[2])}


def test_2d_heat_maps_sit_in_the_neurons_as_pngs():
    grid = torch.linspace(-1, 1, 16 * 16)
    fig = fn.network_figure(snap(neurons={"resolution": 16, "x": [-2, 2], "y": [-2, 2],
                                          "layers": [[quantize(grid), quantize(-grid), quantize(grid * 0)]]}))
    assert len(fig.layout.images) == 2 + 3
    png = base64.b64decode(fig.layout.images[2].source.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (16, 16)
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4:idat])[0]
    assert len(zlib.decompress(png[idat + 4:idat + 4 + length])) == 16 * (1 + 3 * 16)
    rgb = fn.heat_rgb(np.array([[1.0, 0.0, -1.0]]))
    assert rgb[0, 0].tolist() == [0x25, 0x63, 0xEB] and rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[0, 2].tolist() == [0xDC, 0x26, 0x26]


def test_no_snapshot_says_so_and_a_big_network_gets_a_summary():
    assert "No picture of the network yet" in fn.network_figure(None).layout.annotations[0].text
    fig = fn.summary_figure([784, 512, 512, 10], [([1] * 256 + [0] * 256, 2), ([0] * 512, 0), None], [52, 52, None])
    heat = fig.data[0]
    assert len(heat.z) == 3 and len(heat.z[0]) == fn.SUMMARY_BINS
    assert heat.z[0][0] == 0.5 and heat.z[0][-1] == 0.0 and heat.z[2][0] is None  # a dense layer is not drawn
    assert heat.zmax == 0.5 and list(heat.y)[2] == "output layer (10), dense"


def test_twins_overlays():
    epochs = [{"epoch": e, "val/acc": 0.5 + e / 10, "gap": e / 20} for e in range(1, 4)]
    steps = [{"step": s, "time/backward_ms": 1.0 + (s % 3)} for s in range(1, 200)]
    fig = figures_twins.twins_curve_figure([("a", "#000000", epochs), ("b", "#111111", epochs[:1])], "gap")
    assert [len(t.x) for t in fig.data] == [3, 1] and fig.layout.yaxis.tickformat == ".0%"
    timing = figures_twins.twins_timing_figure([("a", "#000000", steps)])
    assert len(timing.data[0].y) == 199 and max(timing.data[0].y) <= 3.0
    empty = figures_twins.twins_curve_figure([("a", "#000000", [])])
    assert empty.layout.annotations[0].text == "No data yet"


@pytest.mark.parametrize("n", [0, 1, 4, 7, 8, 9, 401])
@pytest.mark.parametrize("window", [1, 2, 8])
def test_rolling_median_is_each_trailing_windows_median(n, window):
    values = np.random.default_rng(n).random(n).astype(np.float32)
    if n > 5:
        values[5] = np.nan  # a missing timing spoils its windows, as np.median has it
    expected = np.array([np.median(values[max(0, i - window + 1):i + 1]) for i in range(n)], dtype=np.float32)
    got = figures_twins.rolling_median(values, window)
    assert len(got) == n and np.array_equal(got, expected, equal_nan=True)


def test_network_spec_is_the_validated_figure():
    import json

    import plotly.io as pio

    from asymviz import figures
    for s in (snap(), snap(step=0, kept=[None, None]), snap(conn=[{"mask": [[1, 0], [0, 1]]}, None]), None):
        assert json.loads(figures.to_json(fn.network_figure.spec(s))) == json.loads(pio.to_json(fn.network_figure(s)))


def test_twin_configs():
    main = {"dataset": "moons", "hidden": [8], "strategy": "neuron", "sparsity": 0.9, "seed": 7}
    a, sym, drop = twins.twin_configs(main, 0.3)
    assert (a["strategy"], sym["strategy"], drop["strategy"]) == ("neuron", "symmetric", "dropout")
    assert a["seed"] == sym["seed"] == drop["seed"] == 7 and drop["dropout"] == 0.3 and sym["dropout"] == 0.0
    assert [c["strategy"] for c in twins.twin_configs({**main, "strategy": "symmetric"})] == ["symmetric", "dropout"]
    d, s = twins.twin_configs({**main, "strategy": "dropout", "dropout": 0.2})
    assert (d["dropout"], s["strategy"], s["dropout"]) == (0.2, "symmetric", 0.0)
    for bad in (0, 1, -0.5, "half", None, float("nan")):
        with pytest.raises(ConfigError, match="dropout twin's p"):
            twins.twin_configs(main, bad)


def test_flags_round_trip_through_the_url():
    flags, problems = lessons.parse_flags({"hide": "dataset, optimizer", "lock": "strategy", "pace": "full",
                                           "twins": "1", "twins_p": "0.3", "lesson": "chosen-neurons", "part": "2"})
    assert problems == [] and flags.speed == 0.0 and flags.locked_fields() == {"strategy"}
    again, problems = lessons.parse_flags(flags.to_query())
    assert problems == [] and again == flags
    assert lessons.parse_flags({"hide": ["dataset", "optimizer"]})[0].hide == {"optimizer"}  # a repeated flag: the last
