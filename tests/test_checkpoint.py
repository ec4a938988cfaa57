"""A run that yields with a checkpoint and resumes ends bit for bit as an uninterrupted one."""

import pathlib

import pytest
import torch

from asymviz import checkpoint
from asymviz.errors import ConfigError
from asymviz.train import Callback, TrainConfig, fit

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOT_TIMINGS = ("train_loss", "train_acc", "val_loss", "val_acc", "gap", "test_loss", "test_acc", "best_epoch",
               "best_val_acc", "best_gap", "epochs", "steps", "status")


class Keep(Callback):
    """Records epochs and step losses; yields at the given steps; keeps the final weights."""

    def __init__(self, yield_at=()):
        self.yield_at = set(yield_at)
        self.epochs, self.losses, self.state = [], [], None

    def on_step_end(self, ctx, record):
        self.losses.append((record["step"], record["train/loss"], record["train/batch_acc"]))
        if ctx.step in self.yield_at:
            ctx.request_yield()

    def on_epoch_end(self, ctx, record):
        self.epochs.append({k: v for k, v in record.items() if not k.startswith("time/")})

    def on_fit_end(self, ctx, result):
        self.state = {k: v.clone() for k, v in ctx.model.state_dict().items()}


def run_in_pieces(config, yield_at, tmp_path):
    """Train, yielding at each step of yield_at; every checkpoint goes through a file."""
    keep = Keep(yield_at)
    result = fit(config, [keep])
    pieces = 1
    while result["status"] == "yielded":
        path = tmp_path / f"piece-{pieces}.pt"
        checkpoint.save(path, result["checkpoint"])
        result = fit(config, [keep], resume=checkpoint.load(path))
        pieces += 1
    return keep, result, pieces


CONFIGS = {
    "neuron-adam-lazy": dict(strategy="neuron", sparsity=0.5, optimizer="adam"),
    "random-selection-dropout": dict(strategy="neuron", sparsity=0.7, selection="random", dropout=0.2),
    "excessive-momentum": dict(strategy="excessive", sparsity=0.5, conn_sparsity=0.5, optimizer="momentum", lr=0.05),
    "refined-example-sgd": dict(strategy="refined", sparsity=0.5, conn_sparsity=0.3, granularity="example",
                                optimizer="sgd", lr=0.1),
    "symmetric-adam": dict(strategy="symmetric"),
    "dropout-strategy": dict(strategy="dropout", dropout=0.3),
    "dense-update": dict(strategy="neuron", sparsity=0.6, update="dense"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_yielded_and_resumed_run_ends_as_an_uninterrupted_one(name, tmp_path):
    config = TrainConfig(dataset="moons", hidden=[16, 8], epochs=4, batch_size=64, seed=3, **CONFIGS[name])
    whole = Keep()
    expected = fit(config, [whole])
    steps_per_epoch = expected["steps"] // 4
    # mid-epoch, at an epoch's last step (the yield follows its end), and once more later
    keep, result, pieces = run_in_pieces(config, [3, steps_per_epoch, steps_per_epoch * 2 + 5], tmp_path)
    assert pieces == 4
    assert {k: result[k] for k in NOT_TIMINGS} == {k: expected[k] for k in NOT_TIMINGS}
    assert keep.losses == whole.losses  # every step's loss, bit for bit
    assert keep.epochs == whole.epochs
    for key, value in whole.state.items():
        assert torch.equal(keep.state[key], value), key


def test_early_stopping_resumes_with_its_best_epoch(tmp_path):
    config = TrainConfig(dataset="xor", hidden=[8], epochs=30, patience=2, lr=0.05, seed=1)
    whole = Keep()
    expected = fit(config, [whole])
    assert expected["epochs"] < 30  # it did stop early
    spe = expected["steps"] // expected["epochs"]
    keep, result, _ = run_in_pieces(config, [spe * k for k in range(1, expected["epochs"])], tmp_path)
    assert {k: result[k] for k in NOT_TIMINGS} == {k: expected[k] for k in NOT_TIMINGS}
    for key, value in whole.state.items():
        assert torch.equal(keep.state[key], value), key


def test_a_yield_in_the_last_epoch_just_finishes():
    config = TrainConfig(dataset="xor", hidden=[8], epochs=2, seed=1)
    steps = fit(config)["steps"]
    result = fit(config, [Keep([steps])])  # the very last step: nothing left to go on with
    assert result["status"] == "finished" and result["test_acc"] is not None


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    config = TrainConfig(dataset="xor", hidden=[8], epochs=3, seed=1)
    saved = fit(config, [Keep([2])])["checkpoint"]
    with pytest.raises(ConfigError, match="another configuration"):
        fit(TrainConfig(dataset="xor", hidden=[8], epochs=3, seed=2), resume=saved)
    with pytest.raises(ConfigError, match="another version"):
        fit(config, resume={**saved, "version": 99})


def test_checkpoint_files_are_named_by_run_id_and_unreadable_ones_are_one_sentence(tmp_path):
    path = checkpoint.path_of(tmp_path / "asymviz.db", 12)
    assert path == tmp_path / "checkpoints" / "run-12.pt"
    assert checkpoint.path_of(":memory:", 12) is None
    with pytest.raises(ConfigError, match="missing"):
        checkpoint.load(path)
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        checkpoint.load(path)
    (path.parent / "run-13.pt").write_bytes(b"x")
    (path.parent / "notes.txt").write_text("kept")
    assert sorted(checkpoint.prune(tmp_path / "asymviz.db", keep={13})) == [12]
    assert sorted(p.name for p in path.parent.iterdir()) == ["notes.txt", "run-13.pt"]


def test_a_checkpoint_written_before_the_optimizer_had_a_state_dict_still_resumes():
    """tests/data/checkpoint-v1-neuron-adam.pt was written by the previous optimizer ({"lazy",
    "step_count", "dense"}) at step 5 of this config: resumed now, the run ends as an uninterrupted one."""
    config = TrainConfig(dataset="moons", hidden=[16, 8], epochs=3, batch_size=64, seed=3, strategy="neuron",
                         sparsity=0.5, optimizer="adam")
    saved = checkpoint.load(ROOT / "tests" / "data" / "checkpoint-v1-neuron-adam.pt")
    assert set(saved["optimizer"]) == {"lazy", "step_count", "dense"}
    whole, resumed = Keep(), Keep()
    fit(config, [whole])
    assert fit(config, [resumed], resume=saved)["status"] == "finished"
    for key, value in whole.state.items():
        assert torch.equal(resumed.state[key], value), key


def test_an_optimizer_state_that_does_not_fit_is_one_sentence():
    config = TrainConfig(dataset="xor", hidden=[8], epochs=3, seed=1)
    saved = fit(config, [Keep([2])])["checkpoint"]
    saved["optimizer"]["state"] = {0: {"step": torch.zeros(3, dtype=torch.long)}}
    with pytest.raises(ConfigError, match="optimizer state that does not fit"):
        fit(config, resume=saved)
