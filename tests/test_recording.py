"""Tests of asymviz.recording: the store callback in this process (metrics, masks, decision
grids, their sampling and their share of a run's time, stop requests and interrupts)."""

import json
import os
import socket
import time

import pytest
import torch

from asymviz import recording
from asymviz.model import MLP
from asymviz.recording import GRID_KIND, StoreCallback
from asymviz.sparse import MaskRecord
from asymviz.store import Store, unpack_mask
from asymviz.train import Callback, TrainConfig, fit, predict_grid
from helpers import one_torch_thread

HOST = socket.gethostname()
INTERRUPTED = "The run was interrupted: its worker pool shut down before it finished."


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One torch thread (two spinning threads on a busy 2-core machine are many times slower),
    and the default stop check."""
    monkeypatch.delenv("ASYMVIZ_STOP_CHECK_S", raising=False)
    with one_torch_thread():
        yield


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "runs.db") as s:
        yield s


def claimed(store, config):
    """A run taken by a worker (this process) as claim_next leaves it."""
    run_id = store.create_run(config, owner="ana")
    run = store.claim_next(os.getpid(), HOST)
    assert run["id"] == run_id
    return run


def test_mask_sampling_is_bounded():
    for total in (50, 200, 201, 1000, 10_000, 123_457):
        due = [s for s in range(1, total + 1) if recording.mask_step_due(s, total)]
        assert due[: min(total, 200)] == list(range(1, min(total, 200) + 1))
        assert len(due) <= recording.MASK_MAX_RECORDS
        if total >= 10_000:
            assert len(due) >= 0.9 * recording.MASK_MAX_RECORDS and due[-1] > 0.99 * total


def test_store_callback_streams_metrics_masks_and_grids(store):
    config = TrainConfig(dataset="moons", hidden=[16], strategy="excessive", conn_sparsity=0.5,
                         epochs=3, batch_size=32)
    run = claimed(store, config.validated().to_dict())
    callback = StoreCallback(store, run["id"], grid_share=1.0, mask_share=1.0)  # no thinning
    result = fit(config, [callback])
    run_id = run["id"]
    row = store.get_run(run_id)
    assert row["status"] == callback.final_status == "finished" and row["progress"] == 1.0
    assert row["summary"]["test_acc"] == result["test_acc"] and row["error"] is None
    steps = store.steps(run_id)
    assert [s["step"] for s in steps] == list(range(1, result["steps"] + 1))
    assert steps[0]["train/loss"] > 0 and "kept/layer0" in steps[0]
    assert [e["epoch"] for e in store.epochs(run_id)] == [1, 2, 3]

    masks = store.masks(run_id)  # 66 steps: every step recorded, hidden layer only
    assert [m["step"] for m in masks] == list(range(1, result["steps"] + 1))
    assert {m["layer"] for m in masks} == {0} and {m["n"] for m in masks} == {16}
    assert all(len(m["kept"]) == 2 for m in masks)  # keep = round(0.1 * 16)
    snapshots = [m for m in masks if m["conn"] is not None]
    assert [m["step"] for m in snapshots] == [1, 51]  # every 50th record
    conn = unpack_mask(snapshots[0]["conn"])
    assert conn.shape == (16, 2) and set(conn.any(1).nonzero()[0]) == set(snapshots[0]["kept"])

    grids = store.artifacts(run_id, GRID_KIND)
    assert [(g["epoch"], g["step"]) for g in grids] == [(1, 22), (2, 44), (3, 66)]
    grid = grids[-1]["data"]
    assert grid["resolution"] == 50 and len(grid["x"]) == len(grid["y"]) == 50
    assert len(grid["cls"]) == 50 and {c for row in grid["cls"] for c in row} <= {0, 1}
    assert all(0.5 <= p <= 1.0 and round(p, 3) == p for row in grid["conf"] for p in row)
    assert [e["kind"] for e in store.events(run_id)] == ["finished"]


def test_grids_keep_to_their_share_of_a_fast_run(store, monkeypatch):
    config = TrainConfig(dataset="moons", hidden=[16], epochs=30)
    run = claimed(store, config.validated().to_dict())
    fit(config, [StoreCallback(store, run["id"], grid_share=1e-6)])
    assert [g["epoch"] for g in store.artifacts(run["id"], GRID_KIND)] == [1, 30]
    monkeypatch.setattr(recording, "MAX_GRIDS", 10)  # 30 epochs: at most every 3rd
    run = claimed(store, config.validated().to_dict())
    fit(config, [StoreCallback(store, run["id"], grid_share=1.0)])
    epochs = [g["epoch"] for g in store.artifacts(run["id"], GRID_KIND)]
    assert epochs == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 30]


def test_mask_records_keep_to_their_share_of_a_fast_run(store):
    config = TrainConfig(dataset="moons", hidden=[16], epochs=2)
    run = claimed(store, config.validated().to_dict())
    fit(config, [StoreCallback(store, run["id"], mask_share=0.0)])
    assert [m["step"] for m in store.masks(run["id"])] == [1]  # the first step always
    assert len(store.steps(run["id"])) == 22  # metrics are never thinned


def test_decision_grid_is_the_argmax_of_predict_grid():
    torch.manual_seed(0)
    model = MLP(2, [8], 3, strategy="symmetric")
    x = torch.randn(40, 2)
    grid = recording.decision_grid(model, x, resolution=7)
    prob = torch.tensor(predict_grid(model, x, resolution=7)["prob"])
    assert grid["cls"] == prob.argmax(-1).tolist()
    assert torch.allclose(torch.tensor(grid["conf"]), prob.max(-1).values, atol=5e-4)


def test_decision_grid_of_a_diverged_model_is_still_json():
    model = MLP(2, [4], 2, strategy="symmetric")
    with torch.no_grad():
        model.linears[0].weight.fill_(float("nan"))
    grid = recording.decision_grid(model, torch.randn(10, 2), resolution=4)
    assert grid["conf"] == [[0.0] * 4] * 4
    json.dumps(grid, allow_nan=False)


def test_connection_snapshots_of_wide_layers_are_subsampled():
    kept = torch.tensor([0, 5, 900, 1199])
    cols = torch.arange(0, 600, 3)
    rec = MaskRecord(1200, 600, kept, torch.zeros(1200), 1, conn_cols=cols)
    snapshot = recording.connection_snapshot(rec)
    full = rec.connection_mask().numpy()
    assert snapshot.shape == (400, 300) and (snapshot == full[::3, ::2]).all()
    assert recording.connection_snapshot(MaskRecord(8, 4, kept[:1], torch.zeros(8), 1,
                                               conn_cols=cols[:1])).shape == (8, 4)


def test_no_grids_for_data_that_is_not_2d_and_no_masks_for_symmetric(store):
    config = TrainConfig(dataset="wine", hidden=[8], strategy="symmetric", epochs=2)
    run = claimed(store, config.validated().to_dict())
    fit(config, [StoreCallback(store, run["id"])])
    assert store.get_run(run["id"])["status"] == "finished"
    assert store.artifacts(run["id"], None) == [] and store.masks(run["id"]) == []
    assert len(store.epochs(run["id"])) == 2


class SlowRequester(Callback):
    """Steps of 20 ms; at step `at` someone asks the store to stop the run."""

    def __init__(self, store, run_id, at):
        self.store, self.run_id, self.at = store, run_id, at

    def on_step_end(self, ctx, record):
        time.sleep(0.02)
        if ctx.step == self.at:
            self.store.request_stop(self.run_id)


def test_a_stop_request_ends_the_run_within_a_couple_of_steps(store):
    config = TrainConfig(dataset="moons", hidden=[16], epochs=50)
    run = claimed(store, config.validated().to_dict())
    callback = StoreCallback(store, run["id"])  # checks at most every 0.2 s
    result = fit(config, [SlowRequester(store, run["id"], at=30), callback])
    row = store.get_run(run["id"])
    assert row["status"] == "stopped" and result["stop_reason"] == "stopped"
    assert 30 <= result["steps"] <= 30 + 0.2 / 0.02 + 2
    assert len(store.steps(run["id"])) == result["steps"]


def test_an_interrupt_ends_the_run_interrupted(store):
    config = TrainConfig(dataset="moons", hidden=[16], epochs=50)
    run = claimed(store, config.validated().to_dict())
    counter = iter(range(10**6))
    callback = StoreCallback(store, run["id"], check_every=0.0,
                             interrupt=lambda: INTERRUPTED if next(counter) == 5 else None)
    result = fit(config, [callback])
    row = store.get_run(run["id"])
    assert row["status"] == "interrupted" and row["error"] == INTERRUPTED
    assert result["steps"] == 6 and len(store.steps(run["id"])) == 6
