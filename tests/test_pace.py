"""Lecture pace: pause, step, play and speed of runs a worker trains; a paused run gives its
worker back after ASYMVIZ_PAUSE_YIELD_S and goes on bit for bit; network snapshots."""

import math
import os
import socket
import threading
import time

import pytest
import torch

from asymviz import checkpoint, pace
from asymviz.errors import ConfigError
from asymviz.executors import execute
from asymviz.jobs import Runner
from asymviz.owners import NotOwner
from asymviz.policy import LimitExceeded, Limits
from asymviz.snapshot import Recorder, dequantize, is_small, quantize
from asymviz.store import Store
from asymviz.train import Callback, TrainConfig, fit
from helpers import until

HOST = socket.gethostname()
CONFIG = {"dataset": "moons", "hidden": [8, 8], "strategy": "neuron", "sparsity": 0.5, "epochs": 4,
          "batch_size": 32, "lr": 0.01, "seed": 5}  # 22 steps per epoch; k = 4 of 8 per layer
SPE = 22


@pytest.fixture(autouse=True)
def env(monkeypatch):
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("ASYMVIZ_STOP_CHECK_S", "0.05")
    monkeypatch.delenv(pace.YIELD_VARIABLE, raising=False)
    for name in ("ASYMVIZ_MAX_RUNS_PER_OWNER", "ASYMVIZ_MAX_QUEUE", "ASYMVIZ_MAX_EPOCHS", "ASYMVIZ_MAX_PARAMS"):
        monkeypatch.delenv(name, raising=False)
    yield
    torch.set_num_threads(torch_threads)


@pytest.fixture
def runner(tmp_path):
    r = Runner(tmp_path / "asymviz.db", workers=0)
    yield r
    r.store.close()


class Worker:
    """A worker's loop in a thread: claim a queued run, train it, again, until told to end."""

    def __init__(self, store):
        self.store, self.done, self.results = store, threading.Event(), []
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.done.is_set():
            run = self.store.claim_next(os.getpid(), HOST)
            if run is None:
                time.sleep(0.05)
                continue
            self.results.append(execute(self.store, run))

    def close(self):
        self.done.set()
        self.thread.join(60)


def status(store, run_id):
    return store.get_run(run_id)["status"]


def not_timing(records):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def test_pause_step_yield_and_play_end_as_an_uninterrupted_run(runner, monkeypatch):
    store = runner.store
    (baseline,) = pace.submit(runner, [CONFIG], owner="ana")
    worker = Worker(store)
    try:
        until(lambda: status(store, baseline) == "finished", 120, "the uninterrupted run")
        monkeypatch.setenv(pace.YIELD_VARIABLE, "1")  # read by each run's worker when it starts it
        (run_id,) = pace.submit(runner, [CONFIG], owner="ana", paused=True)

        # paused before its first step: the page gets the untrained network
        first = until(lambda: pace.snapshot(store, run_id), 60, "the step-0 snapshot")
        assert first["step"] == 0 and pace.last_step(store, run_id) == 0

        pace.step(store, [run_id], owner="ana")  # one batch, even if the run waits held meanwhile
        until(lambda: pace.last_step(store, run_id) == 1, 60, "step 1")
        until(lambda: (pace.snapshot(store, run_id) or {}).get("step") == 1, 30, "the step-1 snapshot")
        time.sleep(0.6)
        assert pace.last_step(store, run_id) == 1  # exactly one
        assert pace.get(store, run_id).holding == 1  # and its worker says where it holds it
        snap = pace.snapshot(store, run_id)
        assert [len(k) for k in snap["kept"][:2]] == [4, 4] and snap["kept"][2] is None

        pace.step(store, [run_id], epoch=True, owner="ana")  # the rest of the first epoch
        until(lambda: len(store.epochs(run_id)) == 1, 60, "the first epoch's end")
        assert pace.last_step(store, run_id) == SPE

        # paused past ASYMVIZ_PAUSE_YIELD_S: the run gives its worker back, with a checkpoint
        run = until(lambda: pace.is_held(store.get_run(run_id)) and store.get_run(run_id), 60, "the yield")
        assert run["worker_pid"] is None and pace.last_step(store, run_id) == SPE
        assert checkpoint.path_of(store.path, run_id).exists()
        assert any(e["kind"] == "yielded" for e in store.events(run_id, limit=None))
        time.sleep(0.4)
        assert pace.is_held(store.get_run(run_id))  # no worker takes it while paused

        pace.play(store, [run_id], owner="ana")
        until(lambda: status(store, run_id) == "finished", 120, "the resumed run to finish")
    finally:
        worker.close()
    assert not checkpoint.path_of(store.path, run_id).exists()  # cleaned up with the run
    assert any(e["message"].startswith(f"Resumed at step {SPE}") for e in store.events(run_id, limit=None))
    a, b = store.get_run(baseline), store.get_run(run_id)
    for key in ("train_acc", "val_acc", "test_acc", "test_loss", "gap", "steps", "epochs", "best_epoch"):
        assert a["summary"][key] == b["summary"][key], key
    assert not_timing(store.epochs(baseline)) == not_timing(store.epochs(run_id))
    assert not_timing(store.steps(baseline)) == not_timing(store.steps(run_id))
    final_a, final_b = pace.snapshot(store, baseline), pace.snapshot(store, run_id)  # the trained weights
    assert final_a["step"] == final_b["step"] == 4 * SPE and final_a["weights"] == final_b["weights"]
    assert final_a["counts"] == final_b["counts"] and final_b["counted"] == 4 * SPE


def test_a_run_released_but_still_paused_before_its_first_step_waits_held(runner, monkeypatch):
    monkeypatch.setenv(pace.YIELD_VARIABLE, "0")
    store = runner.store
    (run_id,) = pace.submit(runner, [CONFIG], owner="ana", paused=True)
    run = store.claim_next(os.getpid(), HOST)
    assert execute(store, run) == "held"
    run = store.get_run(run_id)
    assert pace.is_held(run) and run["worker_pid"] is None and pace.last_step(store, run_id) == 0
    assert store.claim_next(os.getpid(), HOST) is None
    pace.step(store, [run_id], owner="ana")  # released; one step, then paused again: yields at once
    assert execute(store, store.claim_next(os.getpid(), HOST)) == "yielded"
    assert pace.last_step(store, run_id) == 1 and pace.is_held(store.get_run(run_id))


def test_a_stop_while_paused_stops_the_run(runner):
    store = runner.store
    (run_id,) = pace.submit(runner, [CONFIG], owner="ana", paused=True)
    worker = Worker(store)
    try:
        until(lambda: status(store, run_id) == "running", 60, "the claim")
        runner.stop(run_id, owner="ana")
        until(lambda: status(store, run_id) == "stopped", 30, "the stop")
    finally:
        worker.close()


class FakeClock:
    def __init__(self):
        self.now, self.slept = 1000.0, 0.0

    def monotonic(self):
        return self.now

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.slept += seconds
        self.now += seconds

    def time(self):
        return self.now


def test_speed_spaces_the_steps(runner, monkeypatch):
    store = runner.store
    (run_id,) = pace.submit(runner, [{**CONFIG, "epochs": 1}], owner="ana", speed=5)
    clock = FakeClock()
    monkeypatch.setattr(pace, "time", clock)
    execute(store, store.claim_next(os.getpid(), HOST))
    assert status(store, run_id) == "finished"
    assert clock.slept == pytest.approx((SPE - 1) / 5, abs=0.25)  # 5 steps per second, outside the steps


def test_pace_controls_check_owner_and_values(runner):
    store = runner.store
    ids = pace.submit(runner, [CONFIG, {**CONFIG, "seed": 6}], owner="ana", speed=20)
    assert pace.get(store, ids[1]) == pace.Pace(paused=False, speed=20.0)
    with pytest.raises(NotOwner, match="only its owner"):
        pace.pause(store, ids, owner="bob")
    pace.pause(store, ids, owner="ana")
    pace.step(store, ids[:1], owner="ana")
    pace.step(store, ids[:1], owner="ana")
    assert pace.get(store, ids[0]) == pace.Pace(paused=True, speed=20.0, budget=2)
    pace.step(store, ids[1:], epoch=True, owner="ana")
    assert pace.get(store, ids[1]).to_epoch_end
    pace.set_speed(store, ids, 0, owner="ana")
    pace.play(store, ids, owner="ana")
    assert pace.get(store, ids[0]) == pace.Pace()
    for bad in ("fast", -1, float("nan"), math.inf, 1e9, None, "1; DROP TABLE runs"):
        with pytest.raises(ConfigError, match="steps per second"):
            pace.set_speed(store, ids, bad, owner="ana")


def test_twins_are_queued_all_or_nothing(tmp_path):
    runner = Runner(tmp_path / "asymviz.db", workers=0, limits=Limits(max_runs_per_owner=2))
    configs = [CONFIG, {**CONFIG, "strategy": "symmetric"}, {**CONFIG, "strategy": "dropout", "dropout": 0.5}]
    with pytest.raises(LimitExceeded):
        pace.submit(runner, configs, owner="ana", tag="twins:x")
    assert runner.store.list_runs() == []
    ids = pace.submit(runner, configs[:2], owner="ana", tag="twins:x")
    runs = runner.store.list_runs(tag="twins:x")
    assert sorted(r["id"] for r in runs) == ids and not any(r["held"] for r in runs)
    runner.store.close()


def test_a_yield_while_a_stop_was_asked_ends_stopped_and_stale_checkpoints_are_ignored(runner):
    store = runner.store
    (run_id,) = pace.submit(runner, [CONFIG], owner="ana")
    run = store.claim_next(os.getpid(), HOST)
    store.request_stop(run_id)
    pace.requeue(store, run_id)
    assert status(store, run_id) == "stopped"
    (other,) = pace.submit(runner, [CONFIG], owner="ana")
    path = checkpoint.path_of(store.path, other)
    saved = fit(TrainConfig(**CONFIG), [YieldAt(3)])["checkpoint"]
    checkpoint.save(path, dict(saved, run={"id": other, "created_at": 1.0}))  # another store's run
    assert pace.resume_point(store, store.get_run(other)) is None and not path.exists()
    assert run["id"] == run_id


class YieldAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, ctx, record):
        if ctx.step == self.step:
            ctx.request_yield()


def test_yield_limit_variable_is_checked(monkeypatch):
    monkeypatch.setenv(pace.YIELD_VARIABLE, "soon")
    with pytest.raises(ConfigError, match="^ASYMVIZ_PAUSE_YIELD_S must be a number, got 'soon'.$"):
        pace.yield_seconds()
    for text in ("-1", "inf", "nan"):
        monkeypatch.setenv(pace.YIELD_VARIABLE, text)
        with pytest.raises(ConfigError, match="^ASYMVIZ_PAUSE_YIELD_S must be a number of 0 or more, got"):
            pace.yield_seconds()
    monkeypatch.setenv(pace.YIELD_VARIABLE, "2.5")
    assert pace.yield_seconds() == 2.5


# ------------------------------------------------------------------------------------- snapshots

class Snap(Callback):
    def __init__(self, at):
        self.at, self.recorder, self.snapshot = at, None, None

    def on_fit_start(self, ctx):
        self.recorder = Recorder(ctx.model, ctx.data, ctx.device)

    def on_step_end(self, ctx, record):
        self.recorder.count()
        if ctx.step == self.at:
            self.snapshot = self.recorder.capture(ctx.step, ctx.epoch)


def test_is_small():
    assert is_small([2, 8, 8, 2]) and is_small([64, *[16] * 8, 10])
    assert not is_small([2, 17, 2]) and not is_small([2, *[8] * 9, 2]) and not is_small([784, 16, 10])


@pytest.mark.parametrize("strategy, extra, conn_key", [
    ("neuron", {}, None), ("excessive", {"conn_sparsity": 0.5}, "mask"), ("refined", {"conn_sparsity": 0.5}, "cols"),
])
def test_snapshot_records_who_got_gradient(strategy, extra, conn_key):
    snap = Snap(at=30)
    fit(TrainConfig(**{**CONFIG, "strategy": strategy, **extra, "epochs": 2}), [snap])
    s = snap.snapshot
    assert s["widths"] == [2, 8, 8, 2] and [len(w) for w in s["weights"]] == [8, 8, 2]
    assert [len(k) for k in s["kept"][:2]] == [4, 4] and s["kept"][2] is None  # the output layer is dense
    assert s["counted"] == 30 and [sum(c) for c in s["counts"][:2]] == [4 * 30, 4 * 30]
    if conn_key == "mask":
        assert [len(row) for row in s["conn"][1]["mask"]] == [8] * 4 and all(sum(r) == 4 for r in s["conn"][1]["mask"])
    elif conn_key == "cols":
        assert len(s["conn"][1]["cols"]) == 4 and len(s["conn"][0]["cols"]) == 1  # round(0.5 * 2)
    else:
        assert s["conn"] == [None, None, None]
    neurons = s["neurons"]
    assert [len(layer) for layer in neurons["layers"]] == [8, 8]
    grid = dequantize(neurons["layers"][0][0], neurons["resolution"])
    assert grid.shape == (16, 16) and grid.min() >= -neurons["layers"][0][0]["scale"] - 1e-6
    assert s["boundary"]["resolution"] == 40


def test_quantize_round_trips_within_a_step():
    values = torch.linspace(-3, 1, 256)
    back = dequantize(quantize(values), 16).reshape(-1)
    assert abs(back - values.numpy()).max() <= 3 / 127.5 and quantize(torch.zeros(4))["scale"] == 0


def test_a_bad_yield_limit_fails_the_run_with_its_sentence_and_the_worker_goes_on(runner, monkeypatch):
    monkeypatch.setenv(pace.YIELD_VARIABLE, "soon")
    store = runner.store
    (run_id,) = pace.submit(runner, [CONFIG], owner="ana")
    assert execute(store, store.claim_next(os.getpid(), HOST)) == "failed"
    assert store.get_run(run_id)["error"].startswith("ASYMVIZ_PAUSE_YIELD_S must be a number, got 'soon'.")
