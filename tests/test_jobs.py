"""Tests of asymviz.jobs: limits and ownership, the store callback (metrics, masks, grids, stop),
failed runs, and worker pools in real processes (finish, stop, hard kill, SIGKILL, shutdown,
restart reconciliation, owner death)."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import asymviz.jobs as jobs
from asymviz.errors import ConfigError, DataError
from asymviz.jobs import (GRID_KIND, INTERRUPTED_BY_PARENT, INTERRUPTED_BY_SHUTDOWN, LimitExceeded,
                          Limits, NotOwner, Runner, StoreCallback, config_key, find_reference_run)
from asymviz.owners import ADMIN
from asymviz.sparse import MaskRecord
from asymviz.store import RunStateError, Store, unpack_mask
from asymviz.train import Callback, TrainConfig, fit, predict_grid
from helpers import until

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
QUICK = {"dataset": "moons", "hidden": [16], "epochs": 2}
LONG = {"dataset": "moons", "hidden": [16], "epochs": 200, "batch_size": 8}  # many seconds


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_HOME", str(tmp_path))
    monkeypatch.setenv("ASYMVIZ_WORKER_THREADS", "1")  # see one_thread
    for name in ("ASYMVIZ_WORKERS", "ASYMVIZ_EXTERNAL_WORKERS", "ASYMVIZ_STOP_GRACE",
                 "ASYMVIZ_STOP_CHECK_S", "ASYMVIZ_STALE_AFTER", *jobs.LIMIT_VARIABLES.values()):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Training in this process: one torch thread (two spinning threads on a busy 2-core
    machine are many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "runs.db"


@pytest.fixture
def store(path):
    with Store(path) as s:
        yield s


def claimed(store, config, pid=None, host=HOST, owner="ana"):
    """A run taken by a worker (pid) as claim_next leaves it."""
    run_id = store.create_run(config, owner=owner)
    run = store.claim_next(pid or os.getpid(), host)
    assert run["id"] == run_id
    return run


def started_events(store, run_id):
    return [e for e in store.events(run_id, limit=None) if e["kind"] == "started"]


# -- limits, ownership, config keys (no processes) ----------------------------------------

@pytest.mark.parametrize("limits, config, variable", [
    (Limits(max_epochs=5), {**QUICK, "epochs": 6}, "ASYMVIZ_MAX_EPOCHS"),
    (Limits(max_params=10_000), {"dataset": "digits", "hidden": [512]}, "ASYMVIZ_MAX_PARAMS"),
    (Limits(max_params=10_000), {"dataset": "mnist", "hidden": [16]}, "ASYMVIZ_MAX_PARAMS"),
])
def test_a_run_over_a_limit_is_refused_with_its_sentence(path, limits, config, variable):
    runner = Runner(path, workers=0, limits=limits)
    with pytest.raises(LimitExceeded, match=variable) as err:
        runner.submit(config, owner="ana")
    assert str(err.value).count(".") >= 1 and "\n" not in str(err.value)
    assert runner.store.list_runs() == []


def test_parameter_limit_counts_the_model_that_would_be_built(path):
    params = 64 * 512 + 512 + 512 * 10 + 10  # digits: 64 features, 10 classes
    Runner(path, workers=0, limits=Limits(max_params=params)).submit(
        {"dataset": "digits", "hidden": [512]})
    with pytest.raises(LimitExceeded, match=f"{params:,}") as err:
        Runner(path, workers=0, limits=Limits(max_params=params - 1)).submit(
            {"dataset": "digits", "hidden": [512]})
    assert f"{params - 1:,} parameters" in str(err.value)


def test_queue_limits_hold_for_submitters_in_different_processes(path):
    """Six processes (a dashboard, CLI calls, ...) submit for one owner at the same moment: the
    count and the insert are one store transaction, so exactly the limit gets in."""
    code = ("import sys, time; from asymviz.jobs import Runner, Limits, LimitExceeded\n"
            "runner = Runner(sys.argv[1], workers=0, limits=Limits(max_runs_per_owner=3, max_queue=0))\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "try:\n    print('queued', runner.submit({'dataset': 'moons', 'hidden': [16]}, owner='ana'))\n"
            "except LimitExceeded as err:\n    print('refused', err)\n")
    Store(path).close()  # the schema exists before they race
    start = time.time() + 8.0  # after every interpreter has imported torch
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(start)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    lines = [out.strip() for out, _ in outputs]
    assert sum(line.startswith("queued") for line in lines) == 3, lines
    assert sum("ana already has 3 queued or running runs" in line for line in lines) == 3, lines
    assert Store(path).count(("queued",), owner="ana") == 3


def test_per_owner_and_queue_limits(path):
    runner = Runner(path, workers=0, limits=Limits(max_runs_per_owner=2, max_queue=3))
    a1, a2 = runner.submit(QUICK, owner="ana"), runner.submit(QUICK, owner="ana")
    with pytest.raises(LimitExceeded, match=r"ana already has 2 .*ASYMVIZ_MAX_RUNS_PER_OWNER"):
        runner.submit(QUICK, owner="ana")
    runner.submit(QUICK, owner="bob")
    with pytest.raises(LimitExceeded, match=r"queue is full: 3 .*ASYMVIZ_MAX_QUEUE"):
        runner.submit(QUICK, owner="cy")
    runner.stop(a1, owner="ana")  # a queued run stops at once and frees its place
    assert runner.status(a1)["status"] == "stopped"
    assert runner.submit(QUICK, owner="ana") > a2


def test_limits_from_env(monkeypatch):
    assert Limits.from_env() == Limits(5_000_000, 500, 4, 50)
    monkeypatch.setenv("ASYMVIZ_MAX_EPOCHS", "7")
    monkeypatch.setenv("ASYMVIZ_MAX_QUEUE", "0")  # 0 = no limit
    assert Limits.from_env() == Limits(5_000_000, 7, 4, 0)
    monkeypatch.setenv("ASYMVIZ_MAX_PARAMS", "lots")
    with pytest.raises(ConfigError, match="ASYMVIZ_MAX_PARAMS must be a whole number"):
        Limits.from_env()


def test_unlimited_instance_accepts(path):
    runner = Runner(path, workers=0, limits=Limits(0, 0, 0, 0))
    ids = [runner.submit({**QUICK, "epochs": 10_000}, owner="ana") for _ in range(6)]
    assert [r["id"] for r in runner.store.list_runs()] == ids[::-1]


def test_submit_validates_and_stores_the_canonical_config(path):
    runner = Runner(path, workers=0)
    run_id = runner.submit(TrainConfig(dataset="moons", hidden=[8], strategy="symmetric",
                                       sparsity=0.5), owner="ana", tag="exp1")
    run = runner.status(run_id)
    assert run["status"] == "queued" and run["owner"] == "ana" and run["tag"] == "exp1"
    assert run["config"]["sparsity"] == 0.0 and run["config"]["dropout"] == 0.0
    with pytest.raises(ConfigError, match="sparsity must be in"):
        runner.submit({**QUICK, "sparsity": 1.5})
    with pytest.raises(ConfigError, match="Unknown config field"):
        runner.submit({**QUICK, "colour": "red"})
    with pytest.raises(DataError, match="Unknown dataset"):
        runner.submit({**QUICK, "dataset": "nope"})
    with pytest.raises(ConfigError, match="owner"):
        runner.submit(QUICK, owner=" ")
    assert len(runner.store.list_runs()) == 1


def test_only_the_owner_stops_or_deletes(path):
    runner = Runner(path, workers=0)
    run_id = runner.submit(QUICK, owner="alice")
    with pytest.raises(NotOwner) as err:
        runner.stop(run_id, owner="bob")
    assert str(err.value) == (f"Run {run_id} belongs to alice; only its owner can stop or "
                              "delete it.")
    with pytest.raises(NotOwner):
        runner.delete(run_id, owner="bob")
    assert runner.status(run_id)["status"] == "queued"
    for nobody in (None, "", "ALICE"):  # no one signed in, an empty name, a look-alike
        with pytest.raises(NotOwner):
            runner.stop(run_id, owner=nobody)
    runner.stop(run_id, owner="alice")
    assert runner.status(run_id)["status"] == "stopped"
    assert runner.store.events(run_id)[0]["message"] == "Stop requested by alice."
    runner.delete(run_id, owner=ADMIN)  # an administrator (the CLI, the Instructor page)
    assert runner.store.list_runs() == []


def test_the_administrator_stops_any_run_and_says_so(path):
    runner = Runner(path, workers=0)
    run_id = runner.submit(QUICK, owner="alice")
    runner.stop(run_id, owner=ADMIN)
    assert runner.status(run_id)["status"] == "stopped"
    assert runner.store.events(run_id)[0]["message"] == "Stop requested by an administrator."
    with pytest.raises(ConfigError, match="owner"):  # a run always has a name; the CLI's is "cli"
        runner.submit(QUICK, owner=ADMIN)


def test_a_running_run_cannot_be_deleted(store):
    run = claimed(store, QUICK)
    runner = Runner(store, workers=0)
    with pytest.raises(RunStateError, match="stop it before deleting it"):
        runner.delete(run["id"], owner=ADMIN)
    runner.stop(run["id"], owner=ADMIN)  # running: flagged for its worker
    assert runner.status(run["id"])["stop_requested"] and store.stop_requested(run["id"])
    with pytest.raises(TimeoutError, match=f"Run {run['id']} is still running after 0.3 s"):
        runner.wait(run["id"], timeout=0.3, poll=0.05)


def test_config_key_and_reference_run(store):
    neuron = TrainConfig(dataset="moons", hidden=[16], strategy="neuron", sparsity=0.8).validated()
    symmetric = TrainConfig(dataset="moons", hidden=[16], strategy="symmetric", update="dense",
                            selection="random").validated().to_dict()
    assert config_key(neuron, strategy="symmetric") == config_key(symmetric)
    assert config_key(neuron) != config_key(symmetric)
    assert json.loads(config_key(neuron))["sparsity"] == 0.8
    assert config_key(neuron, strategy="symmetric", lr=0.1) != config_key(symmetric)

    assert find_reference_run(store, neuron.to_dict()) is None
    older, newer = (store.create_run(symmetric, owner="ana") for _ in range(2))
    other = store.create_run({**symmetric, "seed": 1}, owner="ana")
    for run_id in (older, newer, other):
        store.claim_next(os.getpid(), HOST)
        store.set_status(run_id, "finished")
    store.create_run(symmetric, owner="ana")  # queued: not a reference
    assert find_reference_run(store, neuron.to_dict())["id"] == newer
    assert find_reference_run(store, {**neuron.to_dict(), "seed": 1})["id"] == other
    assert find_reference_run(store, {**neuron.to_dict(), "seed": 2}) is None


# -- the store callback, in this process ---------------------------------------------------

def test_mask_sampling_is_bounded():
    for total in (50, 200, 201, 1000, 10_000, 123_457):
        due = [s for s in range(1, total + 1) if jobs.mask_step_due(s, total)]
        assert due[: min(total, 200)] == list(range(1, min(total, 200) + 1))
        assert len(due) <= jobs.MASK_MAX_RECORDS
        if total >= 10_000:
            assert len(due) >= 0.9 * jobs.MASK_MAX_RECORDS and due[-1] > 0.99 * total


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
    monkeypatch.setattr(jobs, "MAX_GRIDS", 10)  # 30 epochs: at most every 3rd
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
    model = jobs.MLP(2, [8], 3, strategy="symmetric")
    x = torch.randn(40, 2)
    grid = jobs.decision_grid(model, x, resolution=7)
    prob = torch.tensor(predict_grid(model, x, resolution=7)["prob"])
    assert grid["cls"] == prob.argmax(-1).tolist()
    assert torch.allclose(torch.tensor(grid["conf"]), prob.max(-1).values, atol=5e-4)


def test_decision_grid_of_a_diverged_model_is_still_json():
    model = jobs.MLP(2, [4], 2, strategy="symmetric")
    with torch.no_grad():
        model.linears[0].weight.fill_(float("nan"))
    grid = jobs.decision_grid(model, torch.randn(10, 2), resolution=4)
    assert grid["conf"] == [[0.0] * 4] * 4
    json.dumps(grid, allow_nan=False)


def test_connection_snapshots_of_wide_layers_are_subsampled():
    kept = torch.tensor([0, 5, 900, 1199])
    cols = torch.arange(0, 600, 3)
    rec = MaskRecord(1200, 600, kept, torch.zeros(1200), 1, conn_cols=cols)
    snapshot = jobs.connection_snapshot(rec)
    full = rec.connection_mask().numpy()
    assert snapshot.shape == (400, 300) and (snapshot == full[::3, ::2]).all()
    assert jobs.connection_snapshot(MaskRecord(8, 4, kept[:1], torch.zeros(8), 1,
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
                             interrupt=lambda: INTERRUPTED_BY_SHUTDOWN if next(counter) == 5 else None)
    result = fit(config, [callback])
    row = store.get_run(run["id"])
    assert row["status"] == "interrupted" and row["error"] == INTERRUPTED_BY_SHUTDOWN
    assert result["steps"] == 6 and len(store.steps(run["id"])) == 6


class Boom(Callback):
    def on_step_end(self, ctx, record):
        if ctx.step == 5:
            raise RuntimeError("boom at step 5")


def test_a_run_whose_code_raises_ends_failed_with_its_sentence(store, monkeypatch):
    bad = claimed(store, {**QUICK, "dataset_options": {"noise": "loud"}})
    assert jobs.execute(store, bad) == "failed"
    row = store.get_run(bad["id"])
    assert row["status"] == "failed" and "noise" in row["error"] and "\n" not in row["error"]
    assert not row["error"].startswith("DataError")  # an AsymvizError is its own sentence

    real_fit = jobs.fit
    monkeypatch.setattr(jobs, "fit", lambda config, callbacks, **kw: real_fit(config, [*callbacks, Boom()], **kw))
    crash = claimed(store, TrainConfig(**QUICK).validated().to_dict())
    assert jobs.execute(store, crash) == "failed"
    row = store.get_run(crash["id"])
    assert row["status"] == "failed" and row["error"] == "RuntimeError: boom at step 5"
    assert [s["step"] for s in store.steps(crash["id"])] == [1, 2, 3, 4, 5]  # kept


def test_a_run_deleted_while_training_just_ends(store, monkeypatch):
    config = TrainConfig(dataset="moons", hidden=[16], epochs=50)
    run = claimed(store, config.validated().to_dict())

    class Deleter(Callback):
        def on_step_end(self, ctx, record):
            if ctx.step == 3:
                store.delete_run(run["id"], force=True)

    real_fit = jobs.fit
    monkeypatch.setattr(jobs, "fit", lambda config, callbacks, **kw: real_fit(config, [Deleter(), *callbacks], **kw))
    assert jobs.execute(store, run) == "deleted"
    assert store.list_runs() == []


# -- restart reconciliation ----------------------------------------------------------------

def dead_pid():
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_start_reconciles_orphaned_runs(store, path, monkeypatch):
    orphan = claimed(store, QUICK, pid=dead_pid())
    with store.writer(orphan["id"]) as w:
        for step in range(1, 8):
            w.add_step({"step": step, "epoch": 1, "train/loss": 1.0 / step})
    silent = claimed(store, QUICK, pid=1, host="another-host")  # alive there, but no heartbeat
    live = claimed(store, QUICK)  # this process: alive, heartbeat fresh
    monkeypatch.setenv("ASYMVIZ_EXTERNAL_WORKERS", "1")
    monkeypatch.setenv("ASYMVIZ_STALE_AFTER", "0.5")
    time.sleep(0.7)
    store.heartbeat(live["id"])
    runner = Runner(path)
    runner.start()  # external workers: reconcile only, no pool
    assert runner.workers_alive() == 0
    assert store.get_run(orphan["id"])["status"] == "interrupted"
    assert "is gone" in store.get_run(orphan["id"])["error"]
    assert len(store.steps(orphan["id"])) == 7  # metrics kept
    assert store.get_run(silent["id"])["status"] == "interrupted"
    assert "heartbeat" in store.get_run(silent["id"])["error"]
    assert store.get_run(live["id"])["status"] == "running"
    runner.shutdown()


def test_workers_that_die_young_are_replaced_after_a_growing_backoff(path, capsys):
    class Dead:
        def __init__(self, pid):
            self.pid, self.exitcode = pid, 1

    runner = Runner(path, workers=0)
    now = time.monotonic()
    for backoff in (1, 2, 4, 8, 16, 30, 30):
        runner._born[7] = time.monotonic()  # died at once: cannot start (an import error, ...)
        runner._plan_replacements([Dead(7)])
        assert runner._backoff == backoff and runner._next_spawn >= now + backoff
    runner._born[8] = time.monotonic() - jobs.EARLY_DEATH_S - 1  # lived: replaced at once
    runner._plan_replacements([Dead(8)])
    assert runner._backoff == 0 and runner._next_spawn <= time.monotonic()
    assert "worker pid 8 exited with code 1; a new one starts in 0 s" in capsys.readouterr().err


# -- worker pools in real processes --------------------------------------------------------

@pytest.fixture
def make_runner(path):
    runners = []

    def make(**kwargs):
        runner = Runner(path, **kwargs)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.shutdown(grace=2)
        assert runner.store.list_runs(status="running") == []


def test_a_pool_trains_every_submit_once(make_runner):
    runner = make_runner(workers=2)
    configs = [{**QUICK, "strategy": s} for s in ("neuron", "excessive", "refined", "symmetric")]
    configs += [{"dataset": "digits", "hidden": [32], "epochs": 2}, {**QUICK, "epochs": 3}]
    ids = [runner.submit(c, owner="ana" if i % 2 else "bob") for i, c in enumerate(configs)]
    runner.start()
    runner.start()  # idempotent
    assert runner.workers_alive() == 2
    pids = set(runner.worker_pids())
    for run_id, config in zip(ids, configs):
        run = runner.wait(run_id, timeout=120)
        assert run["status"] == "finished", run["error"]
        summary = run["summary"]
        assert summary["epochs"] == config["epochs"] and run["worker_pid"] in pids
        assert [s["step"] for s in runner.store.steps(run_id)] == list(range(1, summary["steps"] + 1))
        assert len(runner.store.epochs(run_id)) == config["epochs"]
        assert len(started_events(runner.store, run_id)) == 1  # never run twice
        has_masks = bool(runner.store.masks(run_id))
        assert has_masks == (config.get("strategy", "neuron") != "symmetric")
        grid_epochs = [g["epoch"] for g in runner.store.artifacts(run_id, GRID_KIND)]
        if config["dataset"] == "moons":  # the first and the last always, others within budget
            assert grid_epochs[0] == 1 and grid_epochs[-1] == config["epochs"]
        else:
            assert grid_epochs == []
    assert runner.workers_alive() == 2 and set(runner.worker_pids()) == pids


def test_stop_mid_run_in_a_pool(make_runner):
    runner = make_runner(workers=1)
    run_id = runner.submit(LONG, owner="ana")
    runner.start()
    until(lambda: len(runner.store.steps(run_id)) >= 20, what="the first steps")
    requested = time.monotonic()
    runner.stop(run_id, owner="ana")
    run = runner.wait(run_id, timeout=30)
    assert run["status"] == "stopped" and run["summary"]["stop_reason"] == "stopped"
    assert time.monotonic() - requested < 10
    assert run["summary"]["steps"] < 200 * 88 and len(runner.store.steps(run_id)) == run["summary"]["steps"]
    kinds = [e["kind"] for e in runner.store.events(run_id, limit=None)][::-1]
    assert kinds == ["queued", "started", "stop_requested", "stopped"]


def test_a_worker_that_ignores_a_stop_is_killed_after_the_grace(make_runner, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_STOP_CHECK_S", "1000")  # its worker never looks
    monkeypatch.setenv("ASYMVIZ_STOP_GRACE", "1")
    runner = make_runner(workers=1)
    run_id = runner.submit(LONG, owner="ana")
    runner.start()
    run = until(lambda: (r := runner.status(run_id))["status"] == "running" and r, what="running")
    until(lambda: runner.store.steps(run_id), what="the first steps")
    runner.stop(run_id, owner=ADMIN)
    run = runner.wait(run_id, timeout=30)
    assert run["status"] == "stopped"
    assert "killed" in [e["kind"] for e in runner.store.events(run_id)]
    assert runner.store.steps(run_id)  # metrics kept
    first_pid = run["worker_pid"]
    until(lambda: runner.workers_alive() == 1 and runner.worker_pids() != [first_pid],
          what="a replacement worker")
    again = runner.submit(QUICK, owner="ana")
    assert runner.wait(again, timeout=60)["status"] == "finished"


def test_sigkill_of_a_worker_interrupts_its_run_and_the_pool_goes_on(make_runner, store):
    runner = make_runner(workers=1)
    broken = store.create_run({**QUICK, "dataset_options": {"noise": "loud"}}, owner="ana")
    long_id = runner.submit(LONG, owner="ana")
    short_id = runner.submit(QUICK, owner="ana")
    runner.start()
    until(lambda: len(runner.store.steps(long_id)) >= 20, what="the first steps")
    victim = runner.status(long_id)["worker_pid"]
    assert runner.status(broken)["status"] == "failed"
    assert runner.status(broken)["worker_pid"] == victim  # the worker survived the failed run
    os.kill(victim, signal.SIGKILL)
    seen = len(runner.store.steps(long_id))
    run = runner.wait(long_id, timeout=30)
    assert run["status"] == "interrupted" and f"pid {victim}" in run["error"]
    assert len(runner.store.steps(long_id)) >= seen >= 20  # written before the kill: kept
    short = runner.wait(short_id, timeout=60)
    assert short["status"] == "finished" and short["worker_pid"] != victim
    assert runner.workers_alive() == 1

    last = runner.submit(LONG, owner="ana")  # shutdown with a run in flight
    until(lambda: runner.store.steps(last), what="the first steps")
    runner.shutdown(grace=10)
    run = runner.status(last)
    assert run["status"] == "interrupted" and run["error"] == INTERRUPTED_BY_SHUTDOWN
    assert runner.workers_alive() == 0 and runner.store.list_runs(status="running") == []


OWNER_SCRIPT = """
import sys, time
from asymviz.jobs import Runner
runner = Runner(sys.argv[1], workers=1)
run_id = runner.submit({"dataset": "moons", "hidden": [16], "epochs": 200, "batch_size": 8})
runner.start()
print(run_id, runner.worker_pids()[0], flush=True)
time.sleep(600)
"""


def test_workers_end_their_run_and_exit_when_their_owner_dies(path, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stderr = open(tmp_path / "owner.err", "w")  # its resource tracker reports the killed owner
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, str(path)], env=env,
                             stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        run_id, worker = map(int, owner.stdout.readline().split())
        with Store(path) as store:
            until(lambda: store.steps(run_id), what="the first steps")
            owner.kill()  # SIGKILL: no atexit, no shutdown
            owner.wait(10)
            until(lambda: store.get_run(run_id)["status"] != "running", what="the run to end")
            run = store.get_run(run_id)
            assert run["status"] == "interrupted" and run["error"] == INTERRUPTED_BY_PARENT
            assert store.steps(run_id)

        def gone():
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{worker}/stat") as f:  # a zombie waiting for its reaper is gone too
                return f.read().split()[2] == "Z"

        until(gone, timeout=30, what="the worker to exit")
    finally:
        owner.kill()
        owner.wait(10)
        stderr.close()


def test_get_runner_is_a_started_singleton(path, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_EXTERNAL_WORKERS", "1")  # server mode: no pool of its own
    first = jobs.get_runner(path)
    try:
        assert jobs.get_runner(str(path)) is first and first._started
        assert first.workers_alive() == 0
    finally:
        first.shutdown()
        jobs._RUNNERS.clear()


@pytest.mark.parametrize("files,quota", [
    ({"cpu.max": "400000 100000\n"}, 4.0),  # cgroup v2, docker run --cpus 4
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),  # v2, no quota
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no quota
    ({"cpu.max": "garbage\n"}, None),
    ({}, None),  # no cgroup files at all
])
def test_cpu_quota_reads_the_containers_cgroup(tmp_path, files, quota):
    from asymviz.jobs import cpu_count, cpu_quota

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota(str(tmp_path)) == quota
    cores = len(os.sched_getaffinity(0))
    expected = cores if quota is None else max(1, min(cores, math.ceil(quota)))
    assert cpu_count(str(tmp_path)) == expected


def test_a_quota_caps_the_default_worker_count(tmp_path, monkeypatch):
    import asymviz.jobs as jobs

    (tmp_path / "cpu.max").write_text("100000 100000\n")  # docker run --cpus 1
    monkeypatch.setattr(jobs, "CGROUP_ROOT", str(tmp_path))
    monkeypatch.delenv("ASYMVIZ_WORKERS", raising=False)
    runner = jobs.Runner(tmp_path / "runs.db")
    try:
        assert jobs.cpu_count() == 1 and runner.workers == 1
    finally:
        runner.store.close()
