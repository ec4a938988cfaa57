"""Tests of asymviz.store: schema migrations, round trips, filters, the run lifecycle,
batched writes, downsampling, and several processes sharing one file."""

import json
import math
import multiprocessing
import os
import pickle
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import asymviz.store as store_module
from asymviz import lab
from asymviz.errors import AsymvizError, ConfigError
from asymviz.store import (MIGRATIONS, STATUSES, TERMINAL, RunNotFound, RunStateError, Store,
                           StoreError, default_path, pack_mask, unpack_mask)
from helpers import until

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"dataset": "digits", "strategy": "neuron", "sparsity": 0.9, "seed": 0}


@pytest.fixture
def store():
    with Store(":memory:") as s:
        yield s


def run_children(code, *argv_lists, timeout=60):
    """Start one Python process per argv list running `code`; wait; return their stdouts."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in argv_lists]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        assert "locked" not in err
        outs.append(out)
    return outs


# -- opening and migrations ---------------------------------------------------------------

def test_empty_file_gets_the_whole_schema(tmp_path):
    with Store(tmp_path / "a.db") as s:
        assert s.schema_version == len(MIGRATIONS)
    db = sqlite3.connect(tmp_path / "a.db")
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schema_version", "runs", "steps", "epochs", "masks", "events", "artifacts", "owners"} <= tables
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopening_does_not_rerun_migrations(tmp_path):
    path = tmp_path / "a.db"
    with Store(path) as s:
        run_id = s.create_run(CONFIG, owner="ana")
    first = sqlite3.connect(path).execute("SELECT * FROM schema_version").fetchall()
    with Store(path) as s:
        assert s.get_run(run_id)["config"] == CONFIG
    assert sqlite3.connect(path).execute("SELECT * FROM schema_version").fetchall() == first


def test_old_file_migrates_forward(tmp_path, monkeypatch):
    path = tmp_path / "a.db"
    with Store(path) as s:
        run_id = s.create_run(CONFIG, owner="ana")
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS + [
        "ALTER TABLE runs ADD COLUMN note TEXT;",
        "UPDATE runs SET note = 'migrated'; CREATE INDEX runs_by_note ON runs (note);"])
    with Store(path) as s:
        assert s.schema_version == len(MIGRATIONS) + 2
        assert s.get_run(run_id)["note"] == "migrated"
    versions = sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchall()
    assert [v for (v,) in versions] == list(range(1, len(MIGRATIONS) + 3))


def test_failed_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "a.db"
    Store(path).close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS + [
        "ALTER TABLE runs ADD COLUMN note TEXT;", "SELECT * FROM no_such_table;"])
    with pytest.raises(StoreError, match="Cannot open the run store"):
        Store(path)
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store(path) as s:
        assert s.schema_version == len(MIGRATIONS)
        assert "note" not in s.get_run(s.create_run(CONFIG, owner="ana"))


def test_file_from_a_newer_asymviz_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "a.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS + ["SELECT 1;"])
    Store(path).close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with pytest.raises(StoreError, match="newer than this asymviz"):
        Store(path)


def test_default_path_follows_asymviz_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / "asymviz.db"
    with Store() as s:
        assert s.path == str(tmp_path / "home" / "asymviz.db")
    assert (tmp_path / "home" / "asymviz.db").exists()


@pytest.mark.parametrize("where, reason", [
    ("file/asymviz.db", ".*file is a file, not a directory"),  # where a folder should be
    ("file", "file is not a database"),
])
def test_unusable_path_is_a_store_error(tmp_path, where, reason):
    (tmp_path / "file").write_text("not a directory, not a database")
    with pytest.raises(StoreError, match=rf"^Cannot open the run store at .*: {reason}\.$"):
        Store(tmp_path / where)


def test_closed_store_says_so(tmp_path):
    s = Store(tmp_path / "a.db")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="is closed"):
        s.list_runs()


def test_importing_the_store_stays_light():
    code = ("import sys, asymviz.store; "
            "print(sorted({'torch', 'streamlit', 'numpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- runs ----------------------------------------------------------------------------------

def test_run_round_trip(store):
    config = {**CONFIG, "layers": [64, 32], "optimizer": {"name": "adam", "lr": 1e-3}}
    run_id = store.create_run(config, owner="ana", tag="exp-1")
    run = store.get_run(run_id)
    assert run["config"] == config and run["owner"] == "ana" and run["tag"] == "exp-1"
    assert run["status"] == "queued" and run["stop_requested"] is False
    assert run["summary"] is None and run["started_at"] is None
    assert run["created_at"] == pytest.approx(time.time(), abs=5)


def test_run_ids_are_never_reused(store):
    first = store.create_run(CONFIG, owner="ana")
    store.delete_run(first)
    assert store.create_run(CONFIG, owner="ana") > first


def test_list_runs_filters_newest_first(store):
    a = store.create_run({"dataset": "digits", "strategy": "neuron"}, owner="ana", tag="t1")
    b = store.create_run({"dataset": "moons", "strategy": {"name": "refined", "c": 0.5}},
                         owner="bob", tag="t1")
    c = store.create_run({"dataset": {"name": "digits"}, "strategy": "symmetric"}, owner="ana")
    store.claim_next(1, "h")  # a is running
    assert [r["id"] for r in store.list_runs()] == [c, b, a]
    assert [r["id"] for r in store.list_runs(owner="ana")] == [c, a]
    assert [r["id"] for r in store.list_runs(tag="t1")] == [b, a]
    assert [r["id"] for r in store.list_runs(dataset="digits")] == [c, a]
    assert [r["id"] for r in store.list_runs(strategy="refined")] == [b]
    assert [r["id"] for r in store.list_runs(status="running")] == [a]
    assert [r["id"] for r in store.list_runs(status=("queued", "running"), limit=2)] == [c, b]
    assert store.list_runs(owner="ana", dataset="moons") == []


def test_counts_for_submit_limits(store):
    for owner in ("ana", "ana", "bob"):
        store.create_run(CONFIG, owner=owner)
    store.set_status(store.claim_next(1, "h")["id"], "finished")
    assert store.counts_by_owner() == {"ana": 1, "bob": 1}
    assert store.counts_by_owner(statuses=STATUSES) == {"ana": 2, "bob": 1}
    assert store.count() == 2
    assert store.count(owner="ana") == 1
    assert store.count(statuses=["finished"]) == 1


def test_lifecycle_and_transitions(store):
    assert set(TERMINAL) < set(STATUSES)
    run_id = store.create_run(CONFIG, owner="ana")
    run = store.claim_next(worker_pid=42, worker_host="box")
    assert run["id"] == run_id and run["status"] == "running"
    assert run["worker_pid"] == 42 and run["worker_host"] == "box"
    assert run["started_at"] == run["heartbeat_at"] is not None
    store.heartbeat(run_id, progress=0.5)
    assert store.get_run(run_id)["progress"] == 0.5
    store.set_status(run_id, "failed", error="The loss became NaN at step 3.",
                     summary={"steps": 3})
    run = store.get_run(run_id)
    assert run["status"] == "failed" and run["error"] == "The loss became NaN at step 3."
    assert run["summary"] == {"steps": 3} and run["finished_at"] >= run["started_at"]
    with pytest.raises(RunStateError, match="Run 1 is failed, so it cannot become running."):
        store.set_status(run_id, "running")


def test_claim_takes_the_oldest_queued_run(store):
    ids = [store.create_run({"i": i}, owner="ana") for i in range(3)]
    store.request_stop(ids[0])  # a queued run stops at once and is never claimed
    assert store.get_run(ids[0])["status"] == "stopped"
    assert store.claim_next(1, "h")["id"] == ids[1]
    assert store.claim_next(1, "h")["id"] == ids[2]
    assert store.claim_next(1, "h") is None


def test_claim_is_fair_across_owners(store):
    """A whole experiment grid queued by one person does not make others wait behind it: the
    next run is the oldest of the owner with the fewest running runs."""
    grid = [store.create_run({"i": i}, owner="ana") for i in range(5)]
    late = store.create_run({"i": 9}, owner="ben")
    order = [store.claim_next(1, "h")["id"] for _ in range(4)]
    assert order == [grid[0], late, grid[1], grid[2]]  # ana 1 running, ben 0: ben's; then only ana's are left
    store.set_status(grid[0], "finished")
    other = store.create_run({"i": 10}, owner="cy")
    assert store.claim_next(1, "h")["id"] == other  # cy runs nothing; ana runs 2, ben 1


def test_experiment_runs_are_queued_once_and_not_counted_by_the_queue_limits(store):
    assert store.add_experiment("exp-1", "ana", {"datasets": ["moons"]})
    assert not store.add_experiment("exp-1", "bob", {"other": 1})  # once
    store.update_experiment("exp-1", launched_at=time.time(), launched_by="ana")
    ids = store.create_experiment_runs("exp-1", "ana", [("a", CONFIG), ("b", CONFIG), ("a", CONFIG)])
    assert len(ids) == 2  # a cell is queued once
    assert store.create_experiment_runs("exp-1", "ana", [("a", CONFIG), ("c", CONFIG)]) == [ids[-1] + 1]
    assert {r["cell"] for r in store.experiment_runs("exp-1")} == {"a", "b", "c"}
    assert {r["tag"] for r in store.experiment_runs("exp-1")} == {"exp-1"}
    seen = []
    store.create_run(CONFIG, owner="ana", admit=lambda active, mine: seen.append((active, mine)))
    assert seen == [(0, 0)]  # the experiment's three queued runs are not single runs
    store.update_experiment("exp-1", stopped_at=time.time() + 1)
    assert store.create_experiment_runs("exp-1", "ana", [("d", CONFIG)]) == []  # stopped: nothing queued
    (exp,) = store.experiments("exp-1")
    assert exp["owner"] == "ana" and exp["spec"] == {"datasets": ["moons"]} and exp["launched_by"] == "ana"
    store.update_experiment("exp-1", speed={"rows": [1, 2]})
    assert store.experiments("exp-1")[0]["speed"] == {"rows": [1, 2]}
    with pytest.raises(ValueError):
        store.update_experiment("exp-1", owner="eve")
    store.delete_run(ids[0])
    assert {r["cell"] for r in store.experiment_runs("exp-1")} == {"b", "c"}


def test_stop_is_cooperative(store):
    run_id = store.create_run(CONFIG, owner="ana")
    store.claim_next(1, "h")
    assert store.stop_requested(run_id) is False
    store.request_stop(run_id)
    assert store.stop_requested(run_id) is True
    assert store.get_run(run_id)["status"] == "running"  # the worker decides when
    store.set_status(run_id, "stopped")
    store.request_stop(run_id)  # a finished run is left alone
    assert store.get_run(run_id)["status"] == "stopped"
    assert store.stop_requested(12345) is True  # a deleted run: its worker should stop


@pytest.mark.parametrize("call, error, message", [
    (lambda s: s.get_run(99), RunNotFound, "Run 99 does not exist."),
    (lambda s: s.heartbeat(99), RunNotFound, "Run 99 does not exist."),
    (lambda s: s.set_status(99, "running"), RunNotFound, "Run 99 does not exist."),
    (lambda s: s.request_stop(99), RunNotFound, "Run 99 does not exist."),
    (lambda s: s.delete_run(99), RunNotFound, "Run 99 does not exist."),
    (lambda s: s.writer(99), RunNotFound, "Run 99 does not exist."),
    (lambda s: s.add_event(99, "x", "y"), RunNotFound, "Run 99 does not exist."),
    (lambda s: s.set_status(s.create_run({}, "a"), "done"), RunStateError,
     "Unknown run status 'done'; expected one of queued, running, finished, stopped, failed, "
     "diverged, interrupted."),
    (lambda s: s.set_status(s.create_run({}, "a"), "finished"), RunStateError,
     "Run 1 is queued, so it cannot become finished."),
    (lambda s: (s.create_run({}, "a"), s.claim_next(1, "h"), s.delete_run(1)), RunStateError,
     "Run 1 is running; stop it before deleting it."),
    (lambda s: s.create_run({"lr": math.nan}, "a"), ConfigError, None),
    (lambda s: s.create_run({"f": object()}, "a"), ConfigError, None),
])
def test_errors_are_named_sentences(store, call, error, message):
    with pytest.raises(error) as info:
        call(store)
    assert isinstance(info.value, AsymvizError)
    if message is not None:
        assert str(info.value) == message
    assert str(info.value).endswith(".")


def test_run_not_found_pickles_with_its_run_id():
    err = pickle.loads(pickle.dumps(RunNotFound(12)))
    assert str(err) == "Run 12 does not exist." and err.run_id == 12


# -- metrics -------------------------------------------------------------------------------

def make_running(store, **config):
    run_id = store.create_run({**CONFIG, **config}, owner="ana")
    store.claim_next(os.getpid(), socket.gethostname())
    return run_id


def test_steps_and_epochs_round_trip(store):
    run_id = make_running(store)
    steps = [{"step": i, "epoch": i // 4, "train/loss": 1 / (i + 1), "time/backward_ms": 0.5,
              "kept/layer0": 0.1} for i in range(10)]
    epochs = [{"epoch": e, "val/acc": 0.5 + e / 10, "gap": -0.01} for e in range(3)]
    with store.writer(run_id) as w:
        for record in steps:
            w.add_step(record)
        for record in epochs:
            w.add_epoch(record)
        w.add_step({"step": 10, "train/loss": math.nan, "batch/acc": np.float32(0.25)})
    assert store.steps(run_id)[:10] == steps
    last = store.steps(run_id)[10]
    assert math.isnan(last["train/loss"]) and last["batch/acc"] == 0.25 and "epoch" not in last
    assert store.epochs(run_id) == epochs
    assert [r["step"] for r in store.steps(run_id, since_step=7)] == [8, 9, 10]
    assert [r["step"] for r in store.steps(run_id, every=5)] == [0, 5, 10]
    assert store.epochs(run_id, since_epoch=0) == epochs[1:] and store.epochs(run_id, since_epoch=2) == []
    assert store.steps(999) == [] and store.epochs(999) == []


def test_downsampling_spreads_over_the_whole_run(store):
    run_id = make_running(store)
    with store.writer(run_id, flush_every=10_000) as w:
        for i in range(1000):
            w.add_step({"step": 3 * i, "loss": float(i)})
    points = store.steps_downsampled(run_id, max_points=50)
    steps = [p["step"] for p in points]
    assert len(steps) == 50 and steps[0] == 0 and steps[-1] == 2997
    gaps = {b - a for a, b in zip(steps, steps[1:])}
    assert max(gaps) - min(gaps) <= 3  # one row apart at most: evenly spread
    assert points[10]["loss"] == steps[10] / 3
    assert len(store.steps_downsampled(run_id, max_points=5000)) == 1000
    assert [p["step"] for p in store.steps_downsampled(run_id, max_points=1)] == [2997]
    assert [p["step"] for p in store.steps_downsampled(run_id, max_points=2)] == [0, 2997]
    assert store.steps_downsampled(999, max_points=10) == []


@pytest.mark.parametrize("kept, n", [
    ([1, 3], 10),  # sparse: uint16 array
    (list(range(0, 64, 2)), 64),  # dense: bitset
    ([0, 65536, 69999], 70000),  # wide: uint32 array
    ([], 16),
    (list(range(2048)), 2048),
])
def test_mask_round_trip(store, kept, n):
    run_id = make_running(store)
    with store.writer(run_id) as w:
        w.add_mask(step=5, layer=1, kept_indices=kept, n=n)
    assert store.masks(run_id) == [{"step": 5, "layer": 1, "n": n, "kept": kept, "conn": None}]


def test_masks_are_compact():
    encode = store_module._encode_kept
    assert len(encode(list(range(0, 2048, 100)), 2048)) == 1 + 2 * 21
    assert len(encode(list(range(0, 2048, 2)), 2048)) == 1 + 2048 // 8
    assert store_module._decode_kept(encode(np.array([7, 3, 3, 0]), 8)) == [0, 3, 7]
    with pytest.raises(ValueError, match="must lie in 0..7"):
        encode([8], 8)


def test_masks_filters_sampling_and_connection_snapshots(store):
    run_id = make_running(store)
    rng = np.random.default_rng(0)
    conn = rng.random((6, 5)) < 0.5
    expected = []
    with store.writer(run_id, flush_every=7) as w:
        for step in range(0, 100, 10):
            for layer in (0, 1):
                kept = sorted(rng.choice(32, size=8, replace=False).tolist())
                blob = pack_mask(conn) if step == 50 and layer == 0 else None
                w.add_mask(step, layer, np.array(kept), 32, conn=blob)
                expected.append({"step": step, "layer": layer, "n": 32, "kept": kept,
                                 "conn": blob})
    assert store.masks(run_id) == expected
    assert store.masks(run_id, layer=1) == [m for m in expected if m["layer"] == 1]
    assert (unpack_mask(store.masks(run_id, layer=0)[5]["conn"]) == conn).all()
    sampled = store.masks(run_id, layer=0, max_steps=3)
    assert [m["step"] for m in sampled] == [0, 40, 90]
    assert [m["step"] for m in store.masks(run_id, max_steps=2)] == [0, 0, 90, 90]
    assert "conn" not in store.masks(run_id, with_conn=False)[0]
    assert store.masks(run_id, layer=1, since_step=70) == [m for m in expected if m["layer"] == 1 and m["step"] > 70]
    with pytest.raises(ValueError):
        store.masks(run_id, max_steps=2, since_step=70)

    counts, n_records = store.layer_selection_counts(run_id, layer=1)
    tally = Counter(i for m in expected if m["layer"] == 1 for i in m["kept"])
    assert n_records == 10 and counts == [tally[i] for i in range(32)]
    assert store.layer_selection_counts(run_id, layer=7) == ([], 0)


def test_writer_flushes_on_size(store):
    run_id = make_running(store)
    w = store.writer(run_id, flush_every=3, flush_seconds=3600)
    w.add_step({"step": 0})
    w.add_epoch({"epoch": 0})
    assert store.steps(run_id) == [] and store.epochs(run_id) == []
    before = store.get_run(run_id)["heartbeat_at"]
    w.add_mask(0, 0, [1], 4)  # the third record
    assert len(store.steps(run_id)) == len(store.epochs(run_id)) == len(store.masks(run_id)) == 1
    assert store.get_run(run_id)["heartbeat_at"] > before
    w.add_step({"step": 1})
    w.set_progress(0.25)
    w.close()
    assert len(store.steps(run_id)) == 2 and store.get_run(run_id)["progress"] == 0.25


def test_writer_flushes_on_time(store):
    run_id = make_running(store)
    w = store.writer(run_id, flush_every=1000, flush_seconds=0.2)
    w.add_step({"step": 0})
    assert store.steps(run_id) == []
    time.sleep(0.25)
    w.add_step({"step": 1})
    assert [r["step"] for r in store.steps(run_id)] == [0, 1]
    w.add_step({"step": 2})
    assert len(store.steps(run_id)) == 2
    w.close()


def test_writer_of_a_deleted_run_raises_run_not_found(store):
    run_id = make_running(store)
    w = store.writer(run_id, flush_every=1000)
    w.add_step({"step": 0})
    store.delete_run(run_id, force=True)
    with pytest.raises(RunNotFound):
        w.flush()


def test_events(store):
    a, b = store.create_run(CONFIG, owner="ana"), store.create_run(CONFIG, owner="bob")
    store.add_event(None, "server", "Server started.")
    first = store.add_event(a, "queued", "Run queued.")
    store.add_event(b, "queued", "Run queued.")
    store.add_event(a, "started", "Run started.")
    assert [e["message"] for e in store.events(a)] == ["Run started.", "Run queued."]
    assert store.events(a)[1] == {"id": first, "run_id": a, "at": pytest.approx(time.time(), abs=5),
                                  "kind": "queued", "message": "Run queued."}
    assert len(store.events()) == 4 and len(store.events(limit=2)) == 2


def test_delete_run_cascades(store):
    keep, gone = make_running(store), make_running(store)
    for run_id in (keep, gone):
        with store.writer(run_id) as w:
            w.add_step({"step": 0, "loss": 1.0})
            w.add_epoch({"epoch": 0, "acc": 0.5})
            w.add_mask(0, 0, [1, 2], 8)
        store.add_event(run_id, "note", "Hello.")
        store.set_status(run_id, "finished")
    store.add_event(None, "server", "Server started.")
    store.delete_run(gone)
    with pytest.raises(RunNotFound):
        store.get_run(gone)
    assert store.steps(gone) == store.epochs(gone) == store.masks(gone) == store.events(gone) == []
    assert len(store.steps(keep)) == len(store.masks(keep)) == len(store.events(keep)) == 1
    assert len(store.events()) == 2


def test_artifacts_round_trip_and_cascade(store):
    run_id, other = make_running(store), make_running(store)
    grid = {"resolution": 2, "x": [0.0, 1.0], "y": [0.0, 1.0], "cls": [[0, 1], [1, 1]],
            "conf": [[0.5, 0.9], [0.75, 1.0]]}
    first = store.add_artifact(run_id, "decision_grid", grid, step=10, epoch=1)
    store.add_artifact(run_id, "note", {"text": "hello"})
    store.add_artifact(run_id, "decision_grid", {**grid, "cls": [[1, 1], [1, 1]]}, step=20, epoch=2)
    store.add_artifact(other, "decision_grid", grid, epoch=1)
    grids = store.artifacts(run_id, "decision_grid")
    assert [(a["step"], a["epoch"]) for a in grids] == [(10, 1), (20, 2)]
    assert grids[0] == {"id": first, "step": 10, "epoch": 1, "kind": "decision_grid", "data": grid}
    last = store.artifacts(run_id, "decision_grid", last_only=True)
    assert len(last) == 1 and last[0]["data"]["cls"] == [[1, 1], [1, 1]]
    assert [a["kind"] for a in store.artifacts(run_id, None)] == ["decision_grid", "note",
                                                                  "decision_grid"]
    assert store.artifacts(run_id, "nothing") == [] and store.artifacts(run_id, "x", True) == []
    with pytest.raises(RunNotFound):
        store.add_artifact(999, "note", {})
    store.set_status(run_id, "finished")
    store.delete_run(run_id)
    assert store.artifacts(run_id, None) == [] and len(store.artifacts(other, None)) == 1


def test_writer_buffers_artifacts(store):
    run_id = make_running(store)
    w = store.writer(run_id, flush_every=3, flush_seconds=3600)
    w.add_artifact("decision_grid", {"cls": [[0]]}, step=4, epoch=1)
    w.add_step({"step": 4})
    assert store.artifacts(run_id, "decision_grid") == []
    w.add_epoch({"epoch": 1})  # the third record flushes all kinds together
    assert store.artifacts(run_id, "decision_grid")[0]["data"] == {"cls": [[0]]}
    w.add_artifact("decision_grid", {"cls": [[1]]}, epoch=2)
    w.close()
    assert [a["epoch"] for a in store.artifacts(run_id, "decision_grid")] == [1, 2]


def test_a_version_1_file_gains_the_artifacts_table(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
    with Store(path) as s:
        run_id = s.create_run(CONFIG, owner="ana")
        assert s.schema_version == 1
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store(path) as s:
        assert s.schema_version == len(MIGRATIONS) >= 2
        s.add_artifact(run_id, "note", [1, 2])
        assert s.get_run(run_id)["owner"] == "ana" and s.artifacts(run_id, "note")[0]["data"] == [1, 2]


def test_export_and_csv_rows(store):
    run_id = make_running(store)
    with store.writer(run_id) as w:
        w.add_step({"step": 0, "epoch": 0, "train/loss": 2.0})
        w.add_step({"step": 1, "epoch": 0, "train/loss": 1.5, "time/backward_ms": 3.0})
        w.add_epoch({"epoch": 0, "val/acc": 0.8})
    store.add_event(run_id, "started", "Run started.")
    store.add_event(run_id, "finished", "Run finished.")
    store.set_status(run_id, "finished", summary={"test/acc": 0.79})
    export = store.export_run(run_id)
    assert export["run"]["summary"] == {"test/acc": 0.79}
    assert export["steps"] == store.steps(run_id) and export["epochs"] == store.epochs(run_id)
    assert [e["kind"] for e in export["events"]] == ["started", "finished"]
    json.dumps(export)
    fields, rows = store.to_csv_rows(run_id)
    assert fields == ["kind", "step", "epoch", "time/backward_ms", "train/loss", "val/acc"]
    assert rows == [{"kind": "step", "step": 0, "epoch": 0, "train/loss": 2.0},
                    {"kind": "step", "step": 1, "epoch": 0, "train/loss": 1.5,
                     "time/backward_ms": 3.0},
                    {"kind": "epoch", "epoch": 0, "val/acc": 0.8}]
    with pytest.raises(RunNotFound):
        store.export_run(99)


# -- crash recovery ------------------------------------------------------------------------

def test_reconcile_interrupts_runs_whose_worker_died(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # started and waited for: that pid is gone
    here = socket.gethostname()
    orphan = store.create_run(CONFIG, owner="ana")
    store.claim_next(dead_pid, here)
    with store.writer(orphan) as w:
        for i in range(5):
            w.add_step({"step": i, "loss": 1.0})
    alive = store.create_run(CONFIG, owner="ana")
    store.claim_next(os.getpid(), here)
    remote = store.create_run(CONFIG, owner="ana")
    store.claim_next(dead_pid, "some-other-host")  # cannot be checked from here: alive

    assert store.reconcile() == [orphan]
    run = store.get_run(orphan)
    assert run["status"] == "interrupted" and run["finished_at"] is not None
    assert run["error"] == (f"The run was interrupted: its worker process (pid {dead_pid} on "
                            f"{here}) is gone.")
    assert len(store.steps(orphan)) == 5
    assert store.events(orphan)[0]["kind"] == "interrupted"
    assert store.get_run(alive)["status"] == store.get_run(remote)["status"] == "running"
    assert store.reconcile() == []

    time.sleep(0.02)
    assert store.reconcile(is_alive=lambda pid, host: True, stale_after=0.01) == [alive, remote]
    assert "no heartbeat" in store.get_run(remote)["error"]


def test_reconcile_interrupts_a_run_whose_worker_is_a_zombie(store):
    """A worker that has exited but is not yet reaped by its parent (a zombie) still answers
    kill(pid, 0); it trains nothing, so its run is interrupted."""
    worker = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        until(lambda: lab.process_state(worker.pid) == "Z", 30, "the worker to exit (unreaped)")
        run_id = store.create_run(CONFIG, owner="ana")
        store.claim_next(worker.pid, socket.gethostname())
        assert store.reconcile(stale_after=None) == [run_id]
        assert store.get_run(run_id)["error"] == (f"The run was interrupted: its worker process (pid "
                                                  f"{worker.pid} on {socket.gethostname()}) is gone.")
    finally:
        worker.wait()


# -- threads and processes -----------------------------------------------------------------

def test_one_store_shared_by_threads(store):
    errors = []

    def work(owner):
        try:
            for i in range(25):
                run_id = store.create_run({"i": i}, owner=owner)
                with store.writer(run_id, flush_every=2) as w:
                    for step in range(4):
                        w.add_step({"step": step})
                store.list_runs(owner=owner)
                store.steps(run_id)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"user{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts_by_owner() == {f"user{k}": 25 for k in range(4)}


def test_store_carried_into_a_forked_child_reconnects(tmp_path):
    s = Store(tmp_path / "a.db")
    s.create_run(CONFIG, owner="parent")

    def child():
        s.create_run(CONFIG, owner="child")
        s.close()

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert sorted(r["owner"] for r in s.list_runs()) == ["child", "parent"]
    s.close()


CLAIM = """
import json, os, sys, time
from asymviz.store import Store
store = Store(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start all together
taken = []
while (run := store.claim_next(os.getpid(), "test")) is not None:
    taken.append(run["id"])
    time.sleep(0.002)
print(json.dumps({"pid": os.getpid(), "taken": taken}))
"""


def test_claim_next_never_gives_a_run_twice(tmp_path):
    path = tmp_path / "a.db"
    with Store(path) as s:
        ids = [s.create_run({"i": i}, owner="ana") for i in range(40)]
    start = time.time() + 1.5
    results = [json.loads(out) for out in run_children(CLAIM, *[[path, start]] * 4)]
    taken = [run_id for r in results for run_id in r["taken"]]
    assert sorted(taken) == ids  # each run claimed exactly once
    with Store(path) as s:
        for r in results:
            for run_id in r["taken"]:
                assert s.get_run(run_id)["worker_pid"] == r["pid"]
        assert s.count(statuses=["queued"]) == 0


WRITE = """
import os, sys, time
from asymviz.store import Store
store = Store(sys.argv[1])
run_id = int(sys.argv[2])
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
with store.writer(run_id, flush_every=5) as w:
    for step in range(300):
        w.add_step({"step": step, "loss": 1.0 / (step + 1), "pid": os.getpid()})
        if step % 50 == 0:
            w.add_mask(step, 0, list(range(0, 64, 3)), 64)
        if step % 100 == 99:
            w.add_epoch({"epoch": step // 100})
            store.add_event(run_id, "epoch", "Epoch done.")
store.set_status(run_id, "finished")
"""


def test_concurrent_writers_from_several_processes(tmp_path):
    path = tmp_path / "a.db"
    with Store(path) as s:
        run_ids = [s.create_run({"i": i}, owner="ana") for i in range(3)]
        for _ in run_ids:
            s.claim_next(1, "test")
        start = time.time() + 1.5
        done = []
        reader = threading.Thread(target=lambda: done.append(run_children(
            WRITE, *[[path, run_id, start] for run_id in run_ids])))
        reader.start()
        while reader.is_alive():  # read while they write
            for run_id in run_ids:
                s.steps_downsampled(run_id, 50)
                s.list_runs()
            time.sleep(0.01)
        reader.join()
        assert len(done) == 1
        for run_id in run_ids:
            assert [r["step"] for r in s.steps(run_id)] == list(range(300))
            assert len(s.epochs(run_id)) == 3 and len(s.masks(run_id)) == 6
            assert len(s.events(run_id)) == 3
            assert s.get_run(run_id)["status"] == "finished"


def test_lock_held_elsewhere_is_waited_out(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "a.db"
    s = Store(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock ...
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()  # ... for 0.3 s
    assert s.create_run(CONFIG, owner="ana") == 1  # beyond the busy timeout: retried

    monkeypatch.setattr(store_module, "WRITE_RETRIES", 2)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # held for good
    with pytest.raises(StoreError, match="stayed locked by other processes for too long"):
        s.create_run(CONFIG, owner="ana")
    other.execute("ROLLBACK")
    s.close()
