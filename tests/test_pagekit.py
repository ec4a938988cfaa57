"""asymviz.pagekit: configs round-trip through URL query params; sentences, run helpers."""

import pytest

from asymviz import pagekit
from asymviz.errors import ConfigError, DataError
from asymviz.train import TrainConfig


def test_config_round_trips_through_query_params():
    config = TrainConfig(dataset="moons", hidden=[32, 16, 8], strategy="excessive", sparsity=0.75,
                         conn_sparsity=0.5, dropout=0.1, seed=1234, lr=0.003, sparse_output=True,
                         dataset_options={"noise": 0.3}).to_dict()
    params = pagekit.config_to_query(config)
    assert all(isinstance(v, str) for v in params.values())
    assert params["seed"] == "1234" and params["hidden"] == "32,16,8"
    back, problems = pagekit.config_from_query(params)
    assert problems == [] and back == config
    default = TrainConfig().to_dict()
    assert pagekit.full_config(pagekit.config_from_query(pagekit.config_to_query(default))[0]) == default


def test_bad_query_values_become_sentences():
    config, problems = pagekit.config_from_query({"sparsity": "lots", "hidden": "2x", "seed": "7", "other": "x",
                                             "epochs": ["3", "4"]})
    assert config == {"seed": 7, "epochs": 4}
    assert len(problems) == 2 and all(p.endswith(".") and "\n" not in p for p in problems)
    assert "The link's value `lots` for sparsity was not understood, so the default 0.9 is used; sparsity takes a " \
           "number in [0, 1)." in problems
    assert pagekit.run_from_query({"run": "12"}) == 12
    assert pagekit.run_from_query({"run": "x"}) is None and pagekit.run_from_query({}) is None
    assert pagekit.has_config({"seed": "1"}) and not pagekit.has_config({"run": "1"})


def test_validate_and_sentences():
    cfg, err = pagekit.validate(pagekit.full_config({"sparsity": 1.0}))
    assert cfg is None and err and "\n" not in err
    cfg, err = pagekit.validate(pagekit.full_config({}))
    assert err is None and cfg.dataset == "digits"
    assert pagekit.keep_per_layer([256, 10], 0.9) == [26, 1]
    assert "26 of 256" in pagekit.keep_caption([256], 0.9)
    assert pagekit.friendly_error(ConfigError("Bad.")) == "Bad."
    assert "Traceback" not in pagekit.friendly_error(RuntimeError("boom"))


def test_run_helpers():
    run = {"id": 3, "status": "running", "progress": 0.25, "started_at": 100.0, "owner": "ana",
           "config": {"dataset": "digits", "strategy": "neuron", "sparsity": 0.9, "hidden": [256, 256]},
           "summary": None, "created_at": 100.0}
    assert pagekit.eta_seconds(run, 110.0) == pytest.approx(30.0)
    assert "about 30 s left" in pagekit.status_line(run, 110.0)
    assert pagekit.run_label(run) == "#3 neuron s=0.9 on digits (256,256)"
    assert pagekit.format_duration(125) == "2 min 05 s"
    assert pagekit.runs_table([run], me="ana")[0]["owner"] == "ana (you)"
    done = {**run, "status": "finished", "summary": {"backward_ms_mean": 2.0, "step_ms_mean": 5.0, "test_acc": 0.9}}
    ref = {"id": 1, "summary": {"backward_ms_mean": 6.0, "step_ms_mean": 10.0}}
    row = pagekit.metrics_row(done, ref)
    assert row["backward speedup"] == pytest.approx(3.0) and row["reference run"] == "#1"
    assert pagekit.metrics_row(done)["backward speedup"] is None
    assert pagekit.overhead_bound([{"sparsity": 0.9, "backward_speedup": 0.8, "efficiency": 0.1}])
    assert not pagekit.overhead_bound([{"sparsity": 0.9, "backward_speedup": 6.0, "efficiency": 0.7}])


def test_csv_helpers(tmp_path):
    good = b"a,b,label\n" + b"".join(b"%d,%d,%d\n" % (i, i * 2, i % 2) for i in range(30))
    assert pagekit.csv_columns(good) == ["a", "b", "label"]
    for bad in [b"", b"just one column\n1\n2\n", b"\x00\x01\x02"]:
        with pytest.raises(DataError):
            pagekit.csv_columns(bad)


def test_dataset_shape():
    assert pagekit.dataset_shape("moons") == (2, 2, True)
    assert pagekit.dataset_shape("mnist") == (784, 10, False)  # not downloaded just to count
    with pytest.raises(DataError):
        pagekit.dataset_shape("nope")


def test_the_load_line_says_when_the_server_stretched_the_refresh():
    assert pagekit.load_line(1.0, 1.0, None) == "Now: live views refresh every 1 s (the dashboard's load: not measured yet)."
    assert pagekit.load_line(1.0, 1.0, 0.123) == "Now: live views refresh every 1 s (the dashboard's load: 0.12 cores)."
    assert pagekit.load_line(0.5, 1.5, 0.9) == ("Now: the dashboard is busy (0.90 cores), so live views refresh "
                                                "every 1.5 s instead of 0.5 s.")
