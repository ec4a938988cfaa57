"""The training loop: config, determinism, callbacks, stop, divergence."""

import itertools
import json

import pytest
import torch

from asymviz.data import DATASETS
from asymviz.errors import ConfigError
from asymviz.strategies import STRATEGIES
from asymviz.train import Callback, TrainConfig, fit

QUICK = dict(hidden=[32], epochs=2, batch_size=64)
EMBEDDED = [name for name, info in DATASETS.items() if info.kind == "embedded"]


class Recorder(Callback):
    def __init__(self):
        self.calls, self.steps, self.epochs, self.result = [], [], [], None

    def on_fit_start(self, ctx):
        self.calls.append("fit_start")

    def on_step_end(self, ctx, record):
        self.steps.append(record)

    def on_epoch_end(self, ctx, record):
        self.epochs.append(record)

    def on_fit_end(self, ctx, result):
        self.calls.append("fit_end")
        self.result = result


def test_config_json_round_trip():
    c = TrainConfig(dataset="moons", dataset_options={"noise": 0.3}, hidden=[8, 4], strategy="refined",
                    conn_sparsity=0.5, seed=7).validated()
    assert TrainConfig.from_json(c.to_json()) == c


def test_validated_config_is_canonical():
    c = TrainConfig(strategy="symmetric", sparsity=0.9, conn_sparsity=0.5, selection="random").validated()
    assert (c.sparsity, c.conn_sparsity, c.selection, c.dropout) == (0.0, 0.0, "topk", 0.0)
    assert TrainConfig(strategy="dropout").validated().dropout == 0.5
    assert TrainConfig(strategy="neuron", conn_sparsity=0.5).validated().conn_sparsity == 0.0
    assert TrainConfig(hidden="128,64").validated().hidden == [128, 64]


@pytest.mark.parametrize("changes,match", [
    ({"sparsity": 1.0}, "sparsity must be in"),
    ({"strategy": "excessive", "conn_sparsity": -1}, "conn_sparsity must be in"),
    ({"strategy": "nope"}, "Unknown strategy 'nope'"),
    ({"lr": 0}, r"lr must be in \(0, 10\]"),
    ({"batch_size": 0}, "batch_size must be between 1 and 65536"),
    ({"epochs": 2.5}, "epochs must be a whole number"),
    ({"optimizer": "lbfgs"}, "Unknown optimizer 'lbfgs'"),
    ({"device": "tpu"}, "Unknown device 'tpu'; choose one of: auto, cpu, cuda"),
    ({"strategy": "dropout", "dropout": 0.0}, "needs a dropout probability"),
    ({"hidden": "64--10"}, "is not valid"),
])
def test_bad_configs_are_rejected_with_a_sentence(changes, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**changes).validated()


def test_unknown_config_fields_are_named():
    with pytest.raises(ConfigError, match="Unknown config field"):
        TrainConfig.from_dict({"dataset": "digits", "sparsty": 0.5})
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_json("{oops")


def test_same_config_and_seed_give_identical_metrics():
    cfg = TrainConfig(dataset="digits", strategy="neuron", selection="random", dropout=0.1, **QUICK)
    a, b = Recorder(), Recorder()
    fit(cfg, [a])
    fit(cfg, [b])
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rs]
    assert strip(a.steps) == strip(b.steps) and strip(a.epochs) == strip(b.epochs)
    c = Recorder()
    fit(TrainConfig(dataset="digits", strategy="neuron", selection="random", dropout=0.1, seed=1, **QUICK), [c])
    assert strip(c.steps) != strip(a.steps)


def test_callbacks_get_flat_metric_records():
    rec = Recorder()
    result = fit(TrainConfig(dataset="wine", strategy="excessive", conn_sparsity=0.5, **QUICK), [rec])
    assert rec.calls == ["fit_start", "fit_end"] and rec.result is result
    steps_per_epoch = -(-len_train("wine") // 64)
    assert len(rec.steps) == 2 * steps_per_epoch and [e["epoch"] for e in rec.epochs] == [1, 2]
    s = rec.steps[0]
    for key in ("step", "epoch", "train/loss", "train/batch_acc", "time/forward_ms", "time/backward_ms",
                "time/optimizer_ms", "time/step_ms", "kept/layer0", "kept/layer1"):
        assert key in s
    assert s["kept/layer0"] == pytest.approx(3 / 32) and s["kept/layer1"] == 1.0
    e = rec.epochs[-1]
    assert e["gap"] == pytest.approx(e["train/acc"] - e["val/acc"])
    for key in ("status", "train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "gap",
                "backward_ms_mean", "step_ms_mean", "epochs", "config"):
        assert key in result
    assert result["status"] == "finished" and 0 <= result["test_acc"] <= 1
    json.dumps(result)


def len_train(name):
    from asymviz.data import load_dataset
    return len(load_dataset(name).x_train)


def test_cooperative_stop_ends_the_run_as_stopped():
    class StopAt(Callback):
        def on_step_end(self, ctx, record):
            if record["step"] == 3:
                ctx.request_stop()

    rec = Recorder()
    result = fit(TrainConfig(dataset="digits", **QUICK), [StopAt(), rec])
    assert result["status"] == "stopped" and len(rec.steps) == 3 and result["steps"] == 3
    assert result["test_acc"] is not None


def test_divergence_ends_with_status_and_metrics_so_far():
    rec = Recorder()
    result = fit(TrainConfig(dataset="digits", optimizer="sgd", lr=10.0, hidden=[64], epochs=5), [rec])
    assert result["status"] == "diverged"
    assert rec.steps and result["test_acc"] is None
    json.dumps(result)


def test_early_stopping_reports_the_best_checkpoint():
    result = fit(TrainConfig(dataset="moons", hidden=[16], epochs=60, patience=2, lr=0.01))
    assert result["epochs"] < 60 and result["best_epoch"] == result["epochs"] - 2


def test_cuda_when_unavailable_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        fit(TrainConfig(device="cuda", **QUICK))


@pytest.mark.parametrize("dataset,strategy", list(itertools.product(EMBEDDED, STRATEGIES)))
def test_every_strategy_runs_on_every_embedded_dataset(dataset, strategy):
    options = {"n_samples": 600} if dataset == "mnist1d" else {}
    result = fit(TrainConfig(dataset=dataset, dataset_options=options, strategy=strategy, conn_sparsity=0.5,
                             hidden=[24, 24], epochs=1, batch_size=128))
    assert result["status"] == "finished" and result["test_acc"] is not None


def test_example_granularity_trains():
    result = fit(TrainConfig(dataset="digits", granularity="example", hidden=[64], epochs=3))
    assert result["status"] == "finished" and result["test_acc"] > 0.5
