"""The command line of the background runner: submit -> worker -> runs show / list / export,
Ctrl-C of a worker, and one-sentence errors (exit 2) for unknown ids, formats and paths."""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from asymviz import cli
from asymviz.store import Store
from helpers import until

ROOT = Path(__file__).resolve().parents[1]


def run_cli(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "asymviz", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_HOME", str(tmp_path))
    for name in ("ASYMVIZ_WORKERS", "ASYMVIZ_EXTERNAL_WORKERS", "ASYMVIZ_MAX_EPOCHS",
                 "ASYMVIZ_MAX_PARAMS", "ASYMVIZ_MAX_RUNS_PER_OWNER", "ASYMVIZ_MAX_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def store(home):
    with Store(home / "asymviz.db") as s:
        yield s


def recorded_run(store, status="finished", owner="ana"):
    """A run with a few steps and epochs, as a worker would leave it (no training)."""
    run_id = store.create_run({"dataset": "moons", "strategy": "neuron", "sparsity": 0.9,
                               "epochs": 2}, owner=owner)
    store.claim_next(os.getpid(), "here")
    with store.writer(run_id) as w:
        for step in range(1, 5):
            w.add_step({"step": step, "epoch": 1 + step // 3, "train/loss": 1.0 / step,
                        "time/backward_ms": 0.25 * step})
        w.add_epoch({"epoch": 1, "step": 2, "val/acc": 0.75, "train/loss": 0.5})
        w.add_epoch({"epoch": 2, "step": 4, "val/acc": 0.875, "train/loss": 0.25})
    if status != "running":
        store.set_status(run_id, status, summary={"test_acc": 0.8125, "epochs": 2})
    return run_id


def main(capsys, *argv):
    """cli.main in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- the round trip through real processes -------------------------------------------------

def test_submit_worker_show_export_round_trip(home):
    env = {**os.environ, "ASYMVIZ_HOME": str(home), "ASYMVIZ_WORKERS": "1",
           "ASYMVIZ_WORKER_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = run_cli(env, "submit", "--dataset", "moons", "--hidden", "16", "--epochs", "3",
                "--strategy", "refined", "--conn-sparsity", "0.5", "--owner", "ana")
    assert p.returncode == 0, p.stderr
    run_id = int(p.stdout.strip())
    p = run_cli(env, "submit", "--dataset", "moons", "--hidden", "16", "--epochs", "200",
                "--batch-size", "8")
    long_id = int(p.stdout.strip())

    worker = subprocess.Popen([sys.executable, "-m", "asymviz", "worker"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Store(home / "asymviz.db") as store:
            until(lambda: store.get_run(run_id)["status"] == "finished", what="the first run")
            until(lambda: len(store.steps(long_id)) >= 10, what="the second run's first steps")
            worker.send_signal(signal.SIGINT)  # Ctrl-C with a run in flight
            _, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            assert "Traceback" not in err and "stopped" in err
            long_run = store.get_run(long_id)
            assert long_run["status"] == "interrupted" and store.steps(long_id)
            assert store.list_runs(status="running") == []
            fields, rows = store.to_csv_rows(run_id)
            export = store.export_run(run_id)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()

    p = run_cli(env, "runs", "show", str(run_id), "--json")
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert shown["run"]["status"] == "finished" and shown["run"]["owner"] == "ana"
    assert shown["run"]["config"]["strategy"] == "refined" and shown["last_epoch"]["epoch"] == 3
    assert shown["run"]["summary"]["test_acc"] is not None

    p = run_cli(env, "runs", "show", str(run_id))
    assert p.returncode == 0 and "finished" in p.stdout and "test_acc" in p.stdout

    out = home / "run.csv"
    p = run_cli(env, "runs", "export", str(run_id), "--format", "csv", "--out", str(out))
    assert p.returncode == 0, p.stderr
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == fields
        written = list(reader)
    assert len(written) == len(rows) == shown["run"]["summary"]["steps"] + 3
    for got, want in zip(written, rows):
        assert {k: v for k, v in got.items() if v != ""} == {k: str(v) for k, v in want.items()}

    p = run_cli(env, "runs", "export", str(run_id), "--format", "json", "--out", str(home / "r.json"))
    assert p.returncode == 0, p.stderr
    assert json.loads((home / "r.json").read_text()) == json.loads(json.dumps(export))

    p = run_cli(env, "runs", "list")
    lines = p.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "status", "owner"]
    assert lines[1].split()[:2] == [str(long_id), "interrupted"]
    assert lines[2].split()[:5] == [str(run_id), "finished", "ana", "moons", "refined"]


# -- in this process -----------------------------------------------------------------------

def test_runs_list_json_and_filters(store, capsys):
    a, b = recorded_run(store, owner="ana"), recorded_run(store, status="running", owner="bob")
    code, out, _ = main(capsys, "runs", "list", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [b, a]
    code, out, _ = main(capsys, "runs", "list", "--owner", "ana", "--json")
    assert [r["id"] for r in json.loads(out)] == [a]
    code, out, _ = main(capsys, "runs", "list", "--status", "running")
    assert code == 0 and len(out.splitlines()) == 2 and out.splitlines()[1].split()[1] == "running"
    row = main(capsys, "runs", "list")[1].splitlines()[2].split()
    assert row[:7] == [str(a), "finished", "ana", "moons", "neuron", "0.9", "2/2"]
    assert row[7] == "0.8125"


def test_runs_list_of_an_empty_store(home, capsys):
    code, out, err = main(capsys, "runs", "list")
    assert code == 0 and out == "" and "No runs" in err


def test_stop_and_delete(store, capsys):
    running = recorded_run(store, status="running")
    code, _, err = main(capsys, "runs", "delete", str(running))
    assert code == 2 and f"runs stop {running}" in err and len(err.splitlines()) == 1
    code, out, _ = main(capsys, "runs", "stop", str(running))
    assert code == 0 and "Stop requested" in out and store.get_run(running)["stop_requested"]
    store.set_status(running, "stopped")
    code, out, _ = main(capsys, "runs", "stop", str(running))
    assert code == 0 and "already stopped" in out
    code, out, _ = main(capsys, "runs", "delete", str(running))
    assert code == 0 and store.list_runs() == []


def test_submit_prints_the_run_id_and_refuses_over_a_limit(home, store, capsys, monkeypatch):
    code, out, _ = main(capsys, "submit", "--dataset", "moons", "--hidden", "8", "--epochs", "3",
                        "--tag", "t1")
    run = store.get_run(int(out))
    assert code == 0 and run["status"] == "queued" and run["owner"] == "cli" and run["tag"] == "t1"
    monkeypatch.setenv("ASYMVIZ_MAX_EPOCHS", "2")
    code, out, err = main(capsys, "submit", "--dataset", "moons", "--epochs", "3")
    assert code == 2 and out == "" and "ASYMVIZ_MAX_EPOCHS" in err and len(err.splitlines()) == 1
    assert len(store.list_runs()) == 1


@pytest.mark.parametrize("argv, message", [
    (["runs", "show", "99"], "Run 99 does not exist."),
    (["runs", "stop", "99"], "Run 99 does not exist."),
    (["runs", "delete", "99"], "Run 99 does not exist."),
    (["runs", "export", "99", "--format", "csv", "--out", "x.csv"], "Run 99 does not exist."),
    (["runs", "export", "{run}", "--format", "csv", "--out", "/nonexistent/dir/x.csv"],
     "Cannot write /nonexistent/dir/x.csv: No such file or directory."),
    (["runs", "export", "{run}", "--format", "json", "--out", "{home}"], "Is a directory"),
    (["worker", "--workers", "0"], "--workers must be at least 1"),
    (["submit", "--sparsity", "2"], "sparsity must be in [0, 1)"),
])
def test_bad_input_is_one_sentence_and_exit_2(store, home, capsys, argv, message):
    run_id = recorded_run(store)
    argv = [a.format(run=run_id, home=home) for a in argv]
    code, out, err = main(capsys, *argv)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_bad_format_is_refused_by_the_parser(store, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["runs", "export", "1", "--format", "xml", "--out", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'xml'" in err and len(err.splitlines()) == 1


def test_export_to_stdout(store, capsys):
    run_id = recorded_run(store)
    code, out, _ = main(capsys, "runs", "export", str(run_id), "--format", "json", "--out", "-")
    assert code == 0 and json.loads(out)["steps"] == store.steps(run_id)


def test_tensorboard_export_without_the_package_says_how_to_get_it(store, capsys, monkeypatch):
    run_id = recorded_run(store)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    code, _, err = main(capsys, "runs", "export", str(run_id), "--format", "tensorboard",
                        "--out", str(store.path) + ".tb")
    assert code == 2 and "pip install tensorboard" in err and len(err.splitlines()) == 1


def test_tensorboard_export_writes_the_scalars(store, home, capsys):
    # tensorboard is a dev requirement: this runs in CI rather than skipping
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_id = recorded_run(store)
    out = home / "tb"
    code, _, err = main(capsys, "runs", "export", str(run_id), "--format", "tensorboard",
                        "--out", str(out))
    assert code == 0, err
    events = EventAccumulator(str(out))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"step/train/loss", "step/time/backward_ms",
                                             "epoch/val/acc", "epoch/train/loss"}
    loss = events.Scalars("step/train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4] and loss[1].value == pytest.approx(0.5)
    assert [(e.step, e.value) for e in events.Scalars("epoch/val/acc")] == [(2, 0.75), (4, 0.875)]
    (home / "file").write_text("x")
    code, _, err = main(capsys, "runs", "export", str(run_id), "--format", "tensorboard",
                        "--out", str(home / "file"))
    assert code == 2 and "Cannot write TensorBoard files" in err
