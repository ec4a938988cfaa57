"""The thesis experiment: grid expansion and validation, resume, statistics against hand-computed
values, verdict rules, and the report files from a tiny grid."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from asymviz import experiment as ex
from asymviz import figures_experiment as fx
from asymviz.errors import ConfigError
from asymviz.jobs import LimitExceeded, NotOwner
from asymviz.owners import ADMIN
from asymviz.store import Store
from asymviz.train import TrainConfig, fit

# t quantile and paired-t p-value with 2 degrees of freedom in closed form (Student's t, df = 2):
# F(t) = 1/2 + t / (2 sqrt(t^2 + 2)), so t_q = (2q - 1) / sqrt(2 q (1 - q)), p(|T| > t) = 1 - t / sqrt(t^2 + 2).
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # 4.302652729...


def p_two_sided_df2(t):
    return 1 - abs(t) / math.sqrt(t * t + 2)


TINY = dict(datasets=["moons"], hidden=[8], sparsities=[0.5], dropouts=[0.5], seeds=2, budget="equal", epochs=1,
            max_epochs=3, patience=1)


class FakeRunner:
    """Stands in for asymviz.jobs.Runner: queues runs in the store (at most max_active at once,
    like the runner's limits); tests finish them by hand or with `train_all`."""

    def __init__(self, store, max_active=None):
        self.store, self.max_active, self.submitted = store, max_active, []

    def submit(self, config, owner="cli", tag=None):
        if self.max_active is not None and self.store.count(("queued", "running")) >= self.max_active:
            raise LimitExceeded("The queue is full.")
        run_id = self.store.create_run(config.to_dict(), owner=owner, tag=tag)
        self.submitted.append(run_id)
        return run_id

    def stop(self, run_id, owner=None):
        self.store.request_stop(run_id)


def finish(store, run_id, status="finished", **summary):
    store.set_status(run_id, "running")
    store.set_status(run_id, status, summary={"status": status, **summary})


def train_all(store):
    """Train every queued run in this process, the way a worker would (epochs recorded)."""
    while (run := store.claim_next(os.getpid(), "test")) is not None:
        config = TrainConfig.from_dict(run["config"])
        result = fit(config)
        with store.writer(run["id"]) as w:
            for epoch in range(1, result["epochs"] + 1):
                w.add_epoch({"epoch": epoch, "train/acc": result["train_acc"], "val/acc": result["val_acc"],
                             "gap": result["gap"]})
        store.set_status(run["id"], result["status"], summary=result)


# ------------------------------------------------------------------------------ the grid


def test_expand_counts_and_cells():
    spec = ex.ExperimentSpec(datasets=["moons"], hidden=[8], sparsities=[0.9, 0.5, 0.5], dropouts=[0.5, 0.2],
                             seeds=2, budget="both", epochs=3, max_epochs=7, patience=2)
    cells = ex.expand(spec)
    # per budget: symmetric 1 + dropout 2 + (neuron, excessive, refined, random) x 2 sparsities = 11 settings
    assert len(cells) == 2 * 11 * 2 == spec.validated().n_cells()
    keys = [ex.cell_key(c) for c in cells]
    assert len(set(keys)) == len(keys)
    assert "moons/equal/neuron/s=0.9/p=0/seed=1" in keys and "moons/converge/dropout/s=0/p=0.2/seed=0" in keys
    random = [c for c in cells if ex.label_of(c) == "random"]
    assert random and all(c.strategy == "neuron" and c.selection == "random" for c in random)
    assert all((c.epochs, c.patience) == (3, 0) for c in cells if ex.budget_of(c) == "equal")
    assert all((c.epochs, c.patience) == (7, 2) for c in cells if ex.budget_of(c) == "converge")
    assert {c.conn_sparsity for c in cells if c.strategy in ("excessive", "refined")} == {0.5}
    assert {c.dropout for c in cells if c.strategy != "dropout"} == {0.0}
    # a key survives the trip through the store's JSON
    assert [ex.cell_key(json.loads(json.dumps(c.to_dict()))) for c in cells] == keys


def test_spec_json_round_trip_and_stable_id():
    spec = ex.ExperimentSpec(datasets=["wine", "moons"], sparsities="0.9, 0.5", strategies=["neuron", "dropout"],
                             seeds=3)
    again = ex.ExperimentSpec.from_json(spec.to_json())
    assert again == spec
    v = spec.validated()
    assert v.datasets == ["moons", "wine"] and v.sparsities == [0.5, 0.9] and v.strategies == ["dropout", "neuron"]
    assert ex.experiment_id(spec) == ex.experiment_id(ex.ExperimentSpec.from_dict(v.to_dict()))
    assert ex.experiment_id(spec) != ex.experiment_id(ex.ExperimentSpec(**{**spec.to_dict(), "seeds": 4}))
    assert ex.experiment_id(spec).startswith("exp-")


def test_presets_are_valid_and_quick_is_small():
    quick, thesis = ex.preset("quick"), ex.preset("thesis")
    assert quick.datasets == ["digits", "mnist1d"] and quick.budget == "both"
    assert quick.n_cells() < thesis.n_cells()
    assert set(ex.LABELS) <= set(thesis.strategies) and thesis.seeds == 5
    assert thesis.sparsities == [0.5, 0.8, 0.9, 0.95] and thesis.dropouts == [0.2, 0.5]


@pytest.mark.parametrize("change,message", [
    ({"datasets": []}, "List at least one of the datasets"),
    ({"datasets": ["nope"]}, "Unknown dataset 'nope'"),
    ({"datasets": ["csv"]}, "not on an uploaded CSV"),
    ({"strategies": ["neuron", "symmetric"]}, "must include the dropout baseline"),
    ({"strategies": ["dropout"]}, "at least one strategy besides dropout"),
    ({"strategies": ["dropout", "fancy"]}, "Unknown strategy 'fancy'"),
    ({"sparsities": []}, "List at least one sparsity"),
    ({"sparsities": [1.0]}, "sparsity must be in [0, 1)"),
    ({"sparsities": ["x"]}, "sparsities must hold numbers"),
    ({"dropouts": [0.0]}, "Every dropout probability must be in (0, 1)"),
    ({"dropouts": []}, "List at least one dropout probability"),
    ({"seeds": 1}, "at least 2 seeds are needed"),
    ({"seeds": 2.5}, "seeds must be a whole number"),
    ({"budget": "forever"}, "Unknown budget 'forever'"),
    ({"epochs": 0}, "epochs must be between 1"),
    ({"budget": "converge", "patience": 10, "max_epochs": 5}, "patience (10) must be smaller than max_epochs (5)"),
    ({"hidden": "8,x"}, "Architecture '8,x' is not valid"),
    ({"lr": -1}, "lr must be in"),
    ({"seeds": 1000, "sparsities": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}, "at most 5000"),
])
def test_bad_grids_are_refused_with_one_sentence(change, message):
    with pytest.raises(ConfigError) as err:
        ex.ExperimentSpec(**{**TINY, **change}).validated()
    text = str(err.value)
    assert message in text
    assert "\n" not in text and text.endswith(".")


def test_unknown_fields_and_bad_json_are_refused():
    with pytest.raises(ConfigError, match="Unknown experiment field"):
        ex.ExperimentSpec.from_dict({"datasets": ["moons"], "colour": "red"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        ex.ExperimentSpec.from_json("{")
    with pytest.raises(ConfigError, match="Unknown preset"):
        ex.preset("huge")


# ------------------------------------------------------------------------- launch and resume


def test_resume_skips_finished_cells_and_resubmits_failed_ones():
    store = Store(":memory:")
    runner = FakeRunner(store)
    spec = ex.ExperimentSpec(**TINY)
    exp_id = ex.launch(spec, runner, owner="ana")
    n = spec.validated().n_cells()
    assert len(runner.submitted) == n == 12
    assert ex.progress(store, exp_id) | {"eta_s": None, "elapsed_s": 0} == {
        "done": 0, "running": 0, "queued": n, "pending": 0, "failed": 0, "total": n, "eta_s": None,
        "elapsed_s": 0, "complete": False, "stopped": False}
    runs = runner.submitted
    for run_id in runs[:8]:
        finish(store, run_id, test_acc=0.9)
    finish(store, runs[8], status="failed")
    store.set_status(runs[9], "running")
    store.set_status(runs[9], "interrupted")
    p = ex.progress(store, exp_id)
    assert (p["done"], p["failed"], p["queued"], p["complete"]) == (8, 2, 2, False)

    runner.submitted = []
    assert ex.launch(spec, runner, owner="ana") == exp_id  # the same grid resumes
    assert len(runner.submitted) == 2  # only the failed and the interrupted cell; queued ones wait
    redone = {ex.cell_key(store.get_run(r)["config"]) for r in runner.submitted}
    assert redone == {ex.cell_key(store.get_run(r)["config"]) for r in runs[8:10]}
    assert ex.progress(store, exp_id)["queued"] == 4
    # a cell that fails again after this launch stays failed until the next launch
    finish(store, runner.submitted[0], status="failed")
    runner.submitted = []
    assert ex.feed(runner, exp_id) == 0 and ex.progress(store, exp_id)["failed"] == 1


def test_feed_respects_the_runner_limits_and_stop():
    store = Store(":memory:")
    runner = FakeRunner(store, max_active=3)
    exp_id = ex.launch(ex.ExperimentSpec(**TINY), runner, owner="ana")
    assert len(runner.submitted) == 3
    assert ex.progress(store, exp_id)["pending"] == 9
    assert [store.get_run(r)["config"]["seed"] for r in runner.submitted] == [0, 0, 0]  # seed by seed
    for run_id in list(runner.submitted):
        finish(store, run_id)
    feeder = ex.Feeder(runner)
    assert feeder.feed_all() == 3  # the dashboard's thread tops up as room frees
    with pytest.raises(NotOwner, match=f"Experiment {exp_id} was launched by ana"):
        ex.stop(runner, exp_id, owner="bob")  # only its launcher (or an administrator) stops it ...
    assert not ex.progress(store, exp_id)["stopped"]  # ... and bob's attempt stopped nothing
    assert ex.stop(runner, exp_id, owner="ana") == 3
    p = ex.progress(store, exp_id)
    assert p["stopped"] and p["pending"] == 0 and p["complete"] and p["failed"] == 3 + 6  # 3 stopped, 6 never submitted
    assert feeder.feed_all() == 0 and ex.feed(runner, exp_id) == 0
    ex.launch(ex.ExperimentSpec(**TINY), runner, owner="ana")  # launching again resumes
    assert ex.progress(store, exp_id)["queued"] == 3
    assert [e["id"] for e in ex.list_experiments(store)] == [exp_id]


def test_unknown_experiment_is_one_sentence():
    with pytest.raises(ex.ExperimentNotFound, match="No experiment 'exp-0000000000'"):
        ex.progress(Store(":memory:"), "exp-0000000000")


# ------------------------------------------------------------------------------ statistics


def test_mean_ci_matches_the_hand_formula():
    n, mean, lo, hi = ex.mean_ci([0.80, 0.82, 0.84, None, float("nan")])
    half = T975_DF2 * 0.02 / math.sqrt(3)  # sd of (0.80, 0.82, 0.84) is 0.02
    assert n == 3 and mean == pytest.approx(0.82)
    assert (lo, hi) == pytest.approx((0.82 - half, 0.82 + half))
    assert ex.mean_ci([0.5])[0] == 1 and math.isnan(ex.mean_ci([0.5])[2])
    assert ex.mean_ci([])[0] == 0


def test_paired_t_matches_the_hand_formula():
    # differences 0.10, 0.05, 0.05: mean 1/15, sd 0.05/sqrt(3), t = mean / (sd / sqrt 3) = 4
    r = ex.paired_t([0.90, 0.85, 0.88], [0.80, 0.80, 0.83])
    sd = 0.05 / math.sqrt(3)
    assert r["n"] == 3 and r["diff"] == pytest.approx(1 / 15)
    assert r["p"] == pytest.approx(p_two_sided_df2(4.0))  # 0.0572
    half = T975_DF2 * sd / math.sqrt(3)
    assert (r["lo"], r["hi"]) == pytest.approx((1 / 15 - half, 1 / 15 + half))
    assert ex.paired_t([1.0, 1.0], [0.5, 0.5])["p"] == 0.0  # no spread, a difference
    assert ex.paired_t([1.0, 1.0], [1.0, 1.0])["p"] == 1.0
    assert ex.paired_t([1.0, None, 2.0], [0.0, 1.0, float("nan")])["n"] == 1  # incomplete pairs dropped


@pytest.mark.parametrize("claim,lo,hi,n,base,verdict", [
    (0, -0.05, -0.01, 3, 0, "holds"),  # gap: lower is better
    (0, 0.01, 0.05, 3, 0, "does not hold"),
    (0, -0.05, 0.02, 3, 0, "inconclusive at 3 seeds"),
    (0, -0.005, 0.009, 5, 0, "does not hold"),  # within +-0.01: no difference that matters
    (1, 0.001, 0.02, 3, 0, "holds"),  # accuracy: higher is better
    (1, -0.03, -0.02, 3, 0, "does not hold"),
    (2, -0.2, -0.1, 3, 2.0, "holds"),  # time: lower is better, margin 5 % of 2.0 ms = 0.1
    (2, -0.09, 0.09, 3, 2.0, "does not hold"),
    (2, -0.11, 0.09, 3, 2.0, "inconclusive at 3 seeds"),
    (1, 0.1, 0.2, 1, 0, "inconclusive at 1 seeds"),
])
def test_verdict_rules(claim, lo, hi, n, base, verdict):
    assert ex.judge(ex.CLAIMS[claim], n, lo, hi, base)[0] == verdict


def hand_table() -> pd.DataFrame:
    """Dataset d, equal budget, seeds 0-2; validation accuracy = test accuracy."""
    cells = {  # (strategy, sparsity, dropout): (test acc, gap, backward ms) per seed
        ("symmetric", 0.0, 0.0): ([0.80, 0.82, 0.84], [0.10, 0.12, 0.14], [2.0, 2.0, 2.0]),
        ("dropout", 0.0, 0.2): ([0.79, 0.79, 0.79], [0.08, 0.08, 0.08], [2.1, 2.1, 2.1]),
        ("dropout", 0.0, 0.5): ([0.80, 0.80, 0.83], [0.06, 0.06, 0.06], [2.2, 2.2, 2.2]),
        ("neuron", 0.5, 0.0): ([0.70, 0.71, 0.72], [0.06, 0.06, 0.06], [1.5, 1.5, 1.5]),
        ("neuron", 0.9, 0.0): ([0.90, 0.85, 0.88], [0.02, 0.03, 0.04], [1.0, 1.1, 1.2]),
    }
    rows = []
    for (strategy, s, p), (acc, gap, ms) in cells.items():
        for seed in range(3):
            row = {c: np.nan for c in ex.RESULT_COLUMNS}
            row.update(dataset="d", budget="equal", strategy=strategy, sparsity=s, dropout=p, seed=seed,
                       status="finished", setting=ex.setting_name(strategy, s, p), test_acc=acc[seed],
                       val_acc=acc[seed], best_val_acc=acc[seed], model_val_acc=acc[seed], gap=gap[seed],
                       best_gap=gap[seed], model_gap=gap[seed], backward_ms=ms[seed], step_ms=2 * ms[seed],
                       epochs=5)
            rows.append(row)
    return pd.DataFrame(rows, columns=ex.RESULT_COLUMNS)


def test_summary_against_hand_computed_values():
    tables = ex.summarize(hand_table())
    s = tables["settings"].set_index("setting")
    assert list(s.index) == ["symmetric", "dropout p=0.2", "dropout p=0.5", "neuron s=0.5", "neuron s=0.9"]
    half = T975_DF2 * 0.02 / math.sqrt(3)
    assert s.loc["symmetric", ["test_acc", "test_acc_lo", "test_acc_hi"]].tolist() == pytest.approx(
        [0.82, 0.82 - half, 0.82 + half])
    assert s.loc["neuron s=0.9", "backward_speedup"] == pytest.approx(2.0 / 1.1)
    assert s.loc["dropout p=0.2", "backward_speedup"] == pytest.approx(2.0 / 2.1)
    assert s["reference"].tolist() == [False, False, True, False, False]  # dropout p=0.5 has the best val acc

    p = tables["paired"]
    row = p[(p["setting"] == "neuron s=0.9") & p["reference"]].iloc[0]
    # test acc: d = 0.10, 0.05, 0.05 (t = 4); gap: d = -0.04, -0.03, -0.02 (sd 0.01); time: d = -1.2, -1.1, -1.0
    assert row["test_acc_diff"] == pytest.approx(1 / 15) and row["test_acc_p"] == pytest.approx(p_two_sided_df2(4.0))
    assert row["claim2"] == "inconclusive at 3 seeds"  # lo = 1/15 - 4.30 * 0.0289 / 1.73 < 0
    t_gap = -0.03 / (0.01 / math.sqrt(3))
    assert row["model_gap_diff"] == pytest.approx(-0.03) and row["model_gap_p"] == pytest.approx(p_two_sided_df2(t_gap))
    assert row["model_gap_hi"] == pytest.approx(-0.03 + T975_DF2 * 0.01 / math.sqrt(3))
    assert row["claim1"] == "holds" and row["claim3"] == "holds"
    other = p[(p["setting"] == "neuron s=0.5") & p["reference"]].iloc[0]
    assert (other["claim1"], other["claim2"], other["claim3"]) == ("does not hold", "does not hold", "holds")
    assert set(p["baseline"]) == {"dropout p=0.2", "dropout p=0.5"}  # every dropout p is compared


def test_headline_verdicts_pick_the_best_validation_setting():
    v = ex.verdicts(ex.summarize(hand_table())).set_index("claim")
    assert list(v.index) == ["1. reduces overfitting", "2. reaches better accuracy", "3. reduces backprop time"]
    assert set(v["setting"]) == {"neuron s=0.9"} and set(v["baseline"]) == {"dropout p=0.5"}
    assert v["verdict"].tolist() == ["holds", "inconclusive at 3 seeds", "holds"]
    assert v[["holds", "fails", "of"]].values.tolist() == [[1, 1, 2], [0, 1, 2], [2, 0, 2]]
    assert v.loc["3. reduces backprop time", "diff"] == pytest.approx(-1.1)


def test_failed_cells_are_counted_not_averaged():
    df = hand_table()
    df.loc[(df["setting"] == "neuron s=0.9") & (df["seed"] == 2), ["status", "test_acc"]] = ["failed", np.nan]
    tables = ex.summarize(df)
    s = tables["settings"].set_index("setting")
    assert s.loc["neuron s=0.9", "n"] == 2 and s.loc["neuron s=0.9", "n_failed"] == 1
    assert s.loc["neuron s=0.9", "test_acc"] == pytest.approx(0.875)
    row = tables["paired"].query("setting == 'neuron s=0.9' and reference").iloc[0]
    assert row["test_acc_n"] == 2


def test_figures_draw_bands_and_reference_lines():
    settings = ex.summarize(hand_table())["settings"]
    fig = fx.metric_vs_sparsity(settings, "test_acc", "d")
    names = {t.name for t in fig.data if t.name}
    assert {"neuron", "symmetric", "dropout p=0.5", "dropout p=0.2"} <= names
    assert any(t.fill == "toself" for t in fig.data)  # interval bands
    assert len(fx.speedup_vs_sparsity(settings, "d").data) >= 3
    assert fx.metric_vs_sparsity(settings.iloc[0:0], "test_acc", "empty") is not None
    assert fx.learning_curves(pd.DataFrame(columns=["setting", "strategy", "epoch", "train_acc", "val_acc"]), "x")


# ------------------------------------------------------------------------------ the report


def test_report_files_from_a_tiny_grid(tmp_path):
    store = Store(tmp_path / "a.db")
    runner = FakeRunner(store)
    spec = ex.ExperimentSpec(**{**TINY, "datasets": ["moons", "wine"]})
    exp_id = ex.launch(spec, runner, owner="ana")
    train_all(store)
    assert ex.progress(store, exp_id)["complete"]
    paths = ex.write_report(store, exp_id, tmp_path / "out", notes=["A note."])
    assert set(paths) == {"runs.csv", "summary.csv", "paired.csv", "verdicts.csv", "report.md", "report.html",
                          "report.json"}
    runs = pd.read_csv(paths["runs.csv"])
    assert len(runs) == 24 and set(runs["status"]) == {"finished"}
    assert len(pd.read_csv(paths["verdicts.csv"])) == 2 * 3  # two datasets, one budget, three claims
    md = open(paths["report.md"], encoding="utf-8").read()
    assert md.startswith(f"# asymviz experiment {exp_id}") and "## Verdicts" in md and "A note." in md
    assert "### wine, equal budget, 1 epochs" in md and "Paired against dropout p=0.5" in md
    assert any(w in md for w in ("holds", "does not hold", "inconclusive at 2 seeds"))
    page = open(paths["report.html"], encoding="utf-8").read()
    assert page.count("Plotly.newPlot") == 8  # four figures per dataset
    assert page.count("* plotly.js v") == 1 and '<script src="http' not in page  # embedded once: offline
    data = json.load(open(paths["report.json"], encoding="utf-8"))
    assert data["experiment"] == exp_id and len(data["verdicts"]) == 6


def test_cli_runs_resumes_and_reports(tmp_path):
    env = {**os.environ, "ASYMVIZ_HOME": str(tmp_path), "ASYMVIZ_EXTERNAL_WORKERS": ""}
    args = [sys.executable, "-m", "asymviz", "experiment", "--datasets", "moons", "--hidden", "8",
            "--sparsities", "0.5", "--strategies", "symmetric,dropout,neuron", "--seeds", "2", "--epochs", "1",
            "--budget", "equal", "--workers", "1", "--out", str(tmp_path / "out")]
    p = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stderr
    assert "6/6 cells done" in p.stderr and "| dataset | budget | claim |" in p.stdout
    assert (tmp_path / "out" / "report.html").exists()
    q = subprocess.run(args + ["--json"], capture_output=True, text=True, timeout=180, env=env)
    assert q.returncode == 0, q.stderr
    data = json.loads(q.stdout)
    assert data["progress"]["done"] == 6 and len(data["verdicts"]) == 3
    with Store(tmp_path / "asymviz.db") as store:
        assert len(store.list_runs(tag=data["experiment"])) == 6  # nothing was run twice
    bad = subprocess.run(args[:4] + ["--seeds", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "at least 2 seeds" in bad.stderr and "Traceback" not in bad.stderr


def test_timings_are_medians_of_the_step_records(tmp_path):
    store = Store(tmp_path / "a.db")
    exp_id = ex.launch(ex.ExperimentSpec(**{**TINY, "strategies": ["dropout", "neuron"]}), FakeRunner(store), "ana")
    runs = store.list_runs(tag=exp_id)
    spiky, plain = runs[0]["id"], runs[1]["id"]
    store.set_status(spiky, "running")
    with store.writer(spiky) as w:  # 5 warm-up steps (ignored), then 0.3 ms with one 50 ms preemption spike
        for step in range(1, 16):
            ms = 9.0 if step <= 5 else 50.0 if step == 10 else 0.3
            w.add_step({"step": step, "epoch": 1, "time/backward_ms": ms, "time/step_ms": 2 * ms})
    store.set_status(spiky, "finished", summary={"status": "finished", "backward_ms_mean": 5.27, "test_acc": 0.5})
    finish(store, plain, backward_ms_mean=1.5, step_ms_mean=3.0)  # no step records: the summary's mean
    df = ex.collect(store, exp_id).set_index("run_id")
    assert df.loc[spiky, "backward_ms"] == pytest.approx(0.3) and df.loc[spiky, "step_ms"] == pytest.approx(0.6)
    assert df.loc[spiky, "backward_ms_mean"] == pytest.approx(5.27)
    assert (df.loc[plain, "backward_ms"], df.loc[plain, "step_ms"]) == (1.5, 3.0)
