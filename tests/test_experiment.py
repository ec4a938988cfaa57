"""The thesis experiment: the spec and its cells, the two-stage protocol (no seed both chooses and
tests), scheduling through the store, statistics against scipy, the margin rules, Holm, the
verdicts, the width-sweep curve, the report, the stale-report check and the command line."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from asymviz import experiment as ex
from asymviz import figures_experiment as fx
from asymviz.errors import ConfigError
from asymviz.experiment import provenance, results, schedule, stats
from asymviz.owners import NotOwner
from asymviz.policy import LimitExceeded, Limits
from asymviz.store import Store
from asymviz.train import TrainConfig, fit

TINY = dict(datasets=["moons"], hidden="8", strategies="dropout,neuron", sparsities=[0.5, 0.9], dropouts=[0.5],
            lrs=[0.01], budgets=["equal"], epochs=1, max_epochs=3, patience=1, selection_seeds=1,
            confirmation_seeds=2, speed_widths=[], meprop=False)


class FakeRunner:
    """Stands in for asymviz.jobs.Runner: the store, the limits, stop."""

    def __init__(self, store, limits=None):
        self.store, self.limits = store, limits

    def stop(self, run_id, owner=None):
        self.store.request_stop(run_id)


def finish(store, run_id, status="finished", **summary):
    store.set_status(run_id, "running")
    store.set_status(run_id, status, summary={"status": status, **summary})


def train_all(store):
    """Train every queued run in this process, the way a worker would (epochs recorded)."""
    n = 0
    while (run := store.claim_next(os.getpid(), "test")) is not None:
        result = fit(TrainConfig.from_dict(run["config"]))
        with store.writer(run["id"]) as w:
            for epoch in range(1, result["epochs"] + 1):
                w.add_epoch({"epoch": epoch, "train/acc": result["train_acc"], "val/acc": result["val_acc"],
                             "gap": result["gap"]})
        store.set_status(run["id"], result["status"], summary=result)
        n += 1
    return n


# ------------------------------------------------------------------------------------ the spec


def test_arms_candidates_and_cell_counts():
    spec = ex.ExperimentSpec(**{**TINY, "strategies": "symmetric,dropout,neuron,refined", "ablate": "neuron",
                                "selections": "topk,random", "updates": ["lazy", "dense"], "lrs": "0.001,0.003",
                                "dropouts": "0.2,0.5", "budgets": "equal,converge", "selection_seeds": 2,
                                "confirmation_seeds": 3}).validated()
    assert [a.label for a in spec.arms()] == ["symmetric", "dropout", "neuron", "refined", "neuron [random]",
                                              "neuron [dense update]"]
    assert spec.base_arm(ex.Arm("neuron", selection="random")) == ex.Arm("neuron")
    assert [s.label(ex.Arm("dropout")) for s in spec.candidates(ex.Arm("dropout"))] == [
        "p=0.2 lr=0.001", "p=0.2 lr=0.003", "p=0.5 lr=0.001", "p=0.5 lr=0.003"]
    # per group: symmetric 2 + dropout 4 + 4 sparse arms x (2 sparsities x 2 lrs) = 22 candidates x 2 seeds
    assert spec.n_selection() == 2 * 22 * 2 == len(spec.selection_cells())
    assert spec.n_confirmation() == 2 * 6 * 3
    cells = spec.selection_cells()
    assert len({c.key for c in cells}) == len(cells)
    random = [c for c in cells if c.arm.selection == "random"]
    assert random and all(c.config.strategy == "neuron" and c.config.selection == "random" for c in random)
    dense = [c for c in cells if c.arm.update == "dense"]
    assert dense and all(c.config.update == "dense" for c in dense)
    equal = [c for c in cells if c.group.budget == "equal"]
    assert all((c.config.epochs, c.config.patience) == (1, 0) for c in equal)
    assert all((c.config.epochs, c.config.patience) == (3, 1) for c in cells if c.group.budget == "converge")
    assert {c.config.lr for c in cells} == {0.001, 0.003}


def test_dataset_tokens_set_the_training_set_size():
    spec = ex.ExperimentSpec(**{**TINY, "datasets": "mnist:5000, mnist1d, fashion_mnist:1000,mnist:1000"}).validated()
    assert spec.datasets == ["mnist1d", "mnist:1000", "mnist:5000", "fashion_mnist:1000"]  # registry, then size
    cell = spec.confirmation_cells(ex.Group("mnist:5000", "8", "equal"), ex.Arm("dropout"),
                                   spec.candidates(ex.Arm("dropout"))[0])[0]
    assert cell.config.dataset == "mnist" and cell.config.dataset_options == {"limit": 5000}
    assert ("mnist", {"limit": 1000}) in spec.datasets_used()


def test_hidden_is_a_list_of_architectures_to_sweep():
    spec = ex.ExperimentSpec(**{**TINY, "hidden": "64,64; 16"}).validated()
    assert spec.hidden == ["16", "64,64"]
    assert {c.config.hidden[0] for c in spec.selection_cells()} == {16, 64}
    assert ex.ExperimentSpec(**{**TINY, "hidden": [32, 32]}).validated().hidden == ["32,32"]


def test_spec_json_round_trip_and_stable_id():
    spec = ex.ExperimentSpec(**{**TINY, "sparsities": "0.9, 0.5"})
    again = ex.ExperimentSpec.from_json(spec.to_json())
    assert again == spec
    v = spec.validated()
    assert v.sparsities == [0.5, 0.9] and v.strategies == ["dropout", "neuron"]
    assert ex.experiment_id(spec) == ex.experiment_id(ex.ExperimentSpec.from_dict(v.to_dict()))
    assert ex.experiment_id(spec) != ex.experiment_id(ex.ExperimentSpec(**{**TINY, "confirmation_seeds": 3}))
    assert ex.experiment_id(spec).startswith("exp-")


def test_presets():
    quick, standard, full = ex.preset("quick"), ex.preset("standard"), ex.preset("full")
    assert quick.datasets == ["digits", "mnist1d"] and not quick.meprop  # embedded data only: no download
    assert quick.n_cells() < standard.n_cells() < full.n_cells() <= ex.MAX_CELLS
    assert standard.datasets == ["mnist1d", "mnist:5000"] and standard.confirmation_seeds >= 10
    assert standard.meprop and standard.meprop_seeds >= 5 and standard.speed_widths == [256, 1024, 2048, 4096]
    assert len(standard.lrs) > 1 and standard.budgets == ["equal", "converge"]
    assert standard.max_epochs >= 10 * standard.patience  # a cap that patience, not the cap, ends runs by
    assert {"neuron [random]", "neuron [dense update]"} <= {a.label for a in standard.arms()}
    assert ex.estimate(full)["total_s"] > ex.estimate(standard)["total_s"] > ex.estimate(quick)["total_s"] > 0
    assert "CPU-hours" in ex.estimate_text(full)


def test_fields_declare_every_grid_field_once():
    names = [f.name for f in ex.FIELDS]
    assert len(names) == len(set(names))
    assert set(names) == {f for f in ex.ExperimentSpec.__dataclass_fields__} - {"split_seed"}


@pytest.mark.parametrize("change,message", [
    ({"datasets": []}, "List at least one of the datasets"),
    ({"datasets": ["nope"]}, "Unknown dataset 'nope'"),
    ({"datasets": ["csv"]}, "not on an uploaded CSV"),
    ({"datasets": ["mnist1d:500"]}, "A training-set size ('mnist1d:500') is available for mnist and fashion_mnist"),
    ({"datasets": ["mnist:lots"]}, "The training-set size in 'mnist:lots' must be a whole number"),
    ({"datasets": ["mnist:5"]}, "must be a whole number of at least 20"),
    ({"strategies": ["neuron", "symmetric"]}, "must include the dropout baseline"),
    ({"strategies": ["dropout", "symmetric"]}, "at least one asymmetric strategy"),
    ({"strategies": ["dropout", "fancy"]}, "Unknown strategy 'fancy'"),
    ({"selections": ["best"]}, "Unknown selection 'best' in selections"),
    ({"updates": ["eager"]}, "Unknown update 'eager' in updates"),
    ({"ablate": ["refined"]}, "ablate names 'refined', which is not among the strategies"),
    ({"sparsities": []}, "List at least one value in sparsities"),
    ({"sparsities": [1.0]}, "sparsity must be in [0, 1)"),
    ({"sparsities": ["x"]}, "sparsities must hold numbers"),
    ({"dropouts": [0.0]}, "Every dropout probability must be in (0, 1)"),
    ({"lrs": [-1]}, "Every learning rate must be in (0, 10]"),
    ({"lrs": [float("nan")]}, "lrs must hold finite numbers"),
    ({"confirmation_seeds": 1}, "at least 2 seeds are needed"),
    ({"selection_seeds": 2.5}, "selection_seeds must be a whole number"),
    ({"confirmation_seeds": 1001}, "confirmation_seeds must be between 2 and 1000"),
    ({"budgets": ["forever"]}, "Unknown budget 'forever'"),
    ({"epochs": 0}, "epochs must be between 1"),
    ({"budgets": ["converge"], "patience": 10, "max_epochs": 5}, "patience (10) must be smaller than max_epochs (5)"),
    ({"hidden": "8,x"}, "Architecture '8,x' is not valid"),
    ({"margin_acc": 0}, "Every margin_acc must be in (0, 1]"),
    ({"speed_widths": [256], "speed_repeats": 1}, "at least 2 repeats are needed"),
    ({"meprop": "maybe"}, "meprop must be yes or no"),
    ({"device": "tpu"}, "Unknown device 'tpu'"),
    ({"selection_seeds": 1000, "sparsities": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "lrs": [0.1, 0.2, 0.3, 0.4]},
     "an experiment allows at most 20000"),
])
def test_bad_grids_are_refused_with_one_sentence(change, message):
    with pytest.raises(ConfigError) as err:
        ex.ExperimentSpec(**{**TINY, **change}).validated()
    text = str(err.value)
    assert message in text
    assert "\n" not in text and text.endswith(".")


def test_unknown_fields_bad_json_and_presets_are_refused():
    with pytest.raises(ConfigError, match="Unknown experiment field"):
        ex.ExperimentSpec.from_dict({"datasets": ["moons"], "colour": "red"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        ex.ExperimentSpec.from_json("{")
    with pytest.raises(ConfigError, match="Unknown preset"):
        ex.preset("huge")


# ------------------------------------------------------------------------------- the protocol


@pytest.mark.parametrize("name", ["quick", "standard"])
def test_no_seed_both_selects_and_confirms(name):
    spec = ex.preset(name)
    selection = {c.seed for c in spec.selection_cells()}
    confirmation = set()
    for group in spec.groups():
        for arm in spec.arms():
            for setting in spec.candidates(arm):  # whichever setting selection picks
                confirmation |= {c.seed for c in spec.confirmation_cells(group, arm, setting)}
    anchor = {c.seed for c in spec.anchor_cells()}
    assert selection and confirmation and not selection & confirmation
    assert not anchor & (selection | confirmation)
    assert len(confirmation) == spec.confirmation_seeds
    assert all(c.config.seed == c.seed for c in spec.selection_cells() + spec.anchor_cells())


def test_the_seed_ranges_stay_apart_at_their_limits():
    full = ex.preset("full")
    assert not set(full.selection_seed_list()) & set(full.confirmation_seed_list() + full.anchor_seed_list())
    spec = ex.ExperimentSpec(**{**TINY, "selection_seeds": 1000, "confirmation_seeds": 1000, "sparsities": [0.5, 0.9],
                                "meprop": True, "meprop_seeds": 1000}).validated()
    sel, conf, anchor = spec.selection_seed_list(), spec.confirmation_seed_list(), spec.anchor_seed_list()
    assert max(sel) < min(conf) and max(conf) < min(anchor)


def _selection_runs(spec, metric, test=None):
    """Fake finished runs of every selection cell: validation metric(cell), test test(cell)."""
    runs = {}
    for i, cell in enumerate(spec.selection_cells()):
        val = metric(cell)
        runs[cell.key] = {"id": i, "status": "finished", "config": cell.config.to_dict(), "created_at": 0.0,
                          "summary": {"val_acc": val, "best_val_acc": val,
                                      "test_acc": test(cell) if test else val}}
    return runs


def test_selection_picks_the_best_mean_validation_accuracy_never_the_test():
    spec = ex.ExperimentSpec(**{**TINY, "selection_seeds": 2}).validated()
    # s=0.9 has the higher validation accuracy on average; s=0.5 the higher test accuracy
    runs = _selection_runs(spec, lambda c: 0.80 + 0.05 * (c.setting.sparsity == 0.9) + 0.01 * c.seed,
                           test=lambda c: 0.90 if c.setting.sparsity == 0.5 else 0.70)
    group = spec.groups()[0]
    chosen = ex.decisions(spec, runs)
    assert chosen[(group, ex.Arm("neuron"))].sparsity == 0.9
    assert chosen[(group, ex.Arm("dropout"))].dropout == 0.5  # a single candidate is its own choice
    table = results.selection_table(spec, runs)
    row = table[(table["arm"] == "neuron") & table["chosen"]].iloc[0]
    assert row["setting"] == "s=0.9 lr=0.01" and row["metric"] == pytest.approx(0.855) and row["n"] == 2


def test_ties_go_to_the_first_candidate_and_undecided_arms_wait():
    spec = ex.ExperimentSpec(**TINY).validated()
    runs = _selection_runs(spec, lambda c: 0.8)
    group = spec.groups()[0]
    assert ex.decisions(spec, runs)[(group, ex.Arm("neuron"))].sparsity == 0.5
    first = spec.selection_cells()[0].key
    runs[first]["status"] = "running"
    assert ex.decisions(spec, runs)[(group, ex.Arm("neuron"))] is None


def test_the_converge_budget_selects_on_the_checkpoints_validation_accuracy():
    spec = ex.ExperimentSpec(**{**TINY, "budgets": ["converge"]}).validated()
    runs = _selection_runs(spec, lambda c: 0.5)
    for key, run in runs.items():  # final val acc favours s=0.5, the checkpoint's (best) favours s=0.9
        s = run["config"]["sparsity"]
        run["summary"].update(val_acc=0.9 if s == 0.5 else 0.6, best_val_acc=0.8 if s == 0.5 else 0.85)
    assert ex.decisions(spec, runs)[(spec.groups()[0], ex.Arm("neuron"))].sparsity == 0.9


# ------------------------------------------------------------------------------- scheduling


def test_launch_queues_stage_one_and_advance_queues_stage_two():
    store = Store(":memory:")
    spec = ex.ExperimentSpec(**TINY)
    exp_id = ex.launch(spec, FakeRunner(store), owner="ana")
    runs = store.experiment_runs(exp_id)
    assert sorted(r["cell"].split("|")[0] for r in runs) == ["confirmation"] * 2 + ["selection"] * 2
    # dropout has one candidate, so its confirmation is queued at once; neuron's waits for its selection
    assert {r["config"]["strategy"] for r in runs if r["cell"].startswith("confirmation")} == {"dropout"}
    p = ex.progress(store, exp_id)
    assert (p["queued"], p["waiting"], p["total"], p["complete"]) == (4, 2, 6, False)
    assert ex.advance(store, exp_id) == 0  # nothing new: the selection is still running
    for run in store.experiment_runs(exp_id):
        if run["cell"].startswith("selection"):
            s = run["config"]["sparsity"]
            finish(store, run["id"], val_acc=0.9 if s == 0.9 else 0.8, test_acc=0.5)
    assert ex.advance(store, exp_id) == 2
    neuron = [r for r in store.experiment_runs(exp_id) if r["cell"].startswith("confirmation|moons|8|equal|neuron")]
    assert len(neuron) == 2 and {r["config"]["sparsity"] for r in neuron} == {0.9}
    assert {r["config"]["seed"] for r in neuron} == {ex.CONFIRMATION_SEED0, ex.CONFIRMATION_SEED0 + 1}
    assert {r["tag"] for r in store.experiment_runs(exp_id)} == {exp_id}
    assert ex.advance(store, exp_id) == 0  # never twice


def test_resume_requeues_failed_cells_and_stop_stops():
    store = Store(":memory:")
    runner = FakeRunner(store)
    exp_id = ex.launch(ex.ExperimentSpec(**TINY), runner, owner="ana")
    runs = store.experiment_runs(exp_id)
    finish(store, runs[0]["id"], status="failed")
    p = ex.progress(store, exp_id)
    assert p["failed"] == 1 and ex.advance(store, exp_id) == 0  # a failure waits for the next launch
    with pytest.raises(NotOwner, match=f"Experiment {exp_id} was launched by ana"):
        ex.stop(runner, exp_id, owner="bob")  # only its launcher (or an administrator) stops it ...
    assert not ex.progress(store, exp_id)["stopped"]  # ... and bob's attempt stopped nothing
    assert ex.stop(runner, exp_id, owner="ana") == 3
    p = ex.progress(store, exp_id)
    assert p["stopped"] and p["complete"] and p["queued"] == 0
    assert ex.advance(store, exp_id) == 0
    ex.launch(ex.ExperimentSpec(**TINY), runner, owner="ana")  # resumes: the failed and stopped cells again
    assert ex.progress(store, exp_id)["queued"] == 4 and not ex.progress(store, exp_id)["stopped"]
    assert len(store.experiment_runs(exp_id)) == 8
    assert [e["id"] for e in ex.list_experiments(store)] == [exp_id]


def test_two_processes_advancing_at_once_never_queue_a_cell_twice(tmp_path):
    path = tmp_path / "a.db"
    exp_id = ex.launch(ex.ExperimentSpec(**TINY), FakeRunner(Store(path)), owner="ana")
    script = ("import sys; from asymviz.store import Store; from asymviz import experiment as ex\n"
              "s = Store(sys.argv[1])\n"
              "for run in s.experiment_runs(sys.argv[2]):\n"
              "    pass\n"
              "print(sum(ex.advance(s, sys.argv[2]) for _ in range(5)))")
    store = Store(path)
    for run in store.experiment_runs(exp_id):
        finish(store, run["id"], val_acc=0.8, test_acc=0.8)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), exp_id], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    queued = sum(int(p.communicate(timeout=120)[0]) for p in procs)
    assert queued == 2 and len(store.experiment_runs(exp_id)) == 6


def test_an_experiment_is_admitted_as_a_whole():
    store = Store(":memory:")
    limits = Limits(max_runs_per_owner=1, max_queue=2)
    exp_id = ex.launch(ex.ExperimentSpec(**TINY), FakeRunner(store, limits), owner="ana")
    assert len(store.experiment_runs(exp_id)) == 4  # more than either queue limit
    from asymviz.jobs import Runner

    runner = Runner(store, workers=0, limits=limits)
    runner.submit(TrainConfig(dataset="moons", hidden=[4], epochs=1), owner="ben")  # the queue is not full for ben
    with pytest.raises(LimitExceeded, match="ana already has experiment"):
        ex.launch(ex.ExperimentSpec(**{**TINY, "confirmation_seeds": 3}), FakeRunner(store, limits), owner="ana")
    ex.launch(ex.ExperimentSpec(**TINY), FakeRunner(store, limits), owner="ana")  # the same one: a resume


def test_launch_checks_each_cells_limits():
    store = Store(":memory:")
    with pytest.raises(LimitExceeded, match="at most 2 epochs"):
        ex.launch(ex.ExperimentSpec(**{**TINY, "epochs": 3}), FakeRunner(store, Limits(max_epochs=2)), owner="ana")
    assert store.experiments() == []


def test_unknown_and_legacy_experiments_are_one_sentence(tmp_path):
    with pytest.raises(ex.ExperimentNotFound, match="No experiment 'exp-0000000000'"):
        ex.progress(Store(":memory:"), "exp-0000000000")
    store = Store(tmp_path / "a.db")
    store.add_experiment("exp-old", "ana", {"datasets": ["digits"], "seeds": 3, "budget": "both"})
    assert ex.list_experiments(store) == [] and ex.list_experiments(store, include_legacy=True)[0]["legacy"]
    with pytest.raises(ex.ExperimentNotFound, match="made by an earlier asymviz"):
        ex.progress(store, "exp-old")


def test_legacy_experiment_events_move_to_the_table(tmp_path, monkeypatch):
    """A store from before the experiments table keeps its experiments (spec as it was)."""
    from asymviz import store as store_module

    path = tmp_path / "old.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:2])
    with Store(path) as old:
        old.add_event(None, "experiment", json.dumps({"id": "exp-1234567890", "owner": "ana",
                                                      "spec": {"datasets": ["digits"], "seeds": 3}}))
        old.add_event(None, "experiment", "not json")
    monkeypatch.undo()
    with Store(path) as new:
        (row,) = new.experiments()
        assert (row["id"], row["owner"], row["spec"]) == ("exp-1234567890", "ana", {"datasets": ["digits"], "seeds": 3})


# ------------------------------------------------------------------------------- statistics


def test_mean_ci_is_scipys_t_interval():
    x = [0.80, 0.83, 0.84, 0.79]
    n, mean, lo, hi = ex.mean_ci(x + [None, float("nan")])
    ref = sst.t.interval(0.95, 3, loc=np.mean(x), scale=sst.sem(x))
    assert n == 4 and mean == pytest.approx(np.mean(x)) and (lo, hi) == pytest.approx(ref)
    assert ex.mean_ci([0.5])[:2] == (1, 0.5) and math.isnan(ex.mean_ci([0.5])[2])
    assert ex.mean_ci([0.3, 0.3, 0.3])[1:] == (0.3, 0.3, 0.3)  # no spread: a point, no warning artefacts


def test_compare_matches_scipys_one_sided_tests():
    d = np.array([0.012, 0.020, 0.015, 0.009, 0.018])
    margin = 0.005
    c = stats.compare(d, margin, "higher")
    assert c.p == pytest.approx(sst.ttest_1samp(d, 0).pvalue)
    assert c.p_better == pytest.approx(sst.ttest_1samp(d, margin, alternative="greater").pvalue)
    assert c.p_worse == pytest.approx(sst.ttest_1samp(d, -margin, alternative="less").pvalue)
    assert c.p_equivalent == pytest.approx(max(sst.ttest_1samp(d, -margin, alternative="greater").pvalue,
                                               sst.ttest_1samp(d, margin, alternative="less").pvalue))
    assert (c.lo, c.hi) == pytest.approx(sst.t.interval(0.95, 4, loc=d.mean(), scale=sst.sem(d)))
    assert c.effect == pytest.approx(d.mean() / d.std(ddof=1))
    assert c.candidate == "better"
    lower = stats.compare(-d, margin, "lower")  # the same data, lower is better: mirrored
    assert lower.p_better == pytest.approx(c.p_better) and lower.candidate == "better"


def _data(mean, half, n=10):
    """n paired differences whose 95 % t interval is mean +- half exactly."""
    z = np.linspace(-1, 1, n)
    z = z / z.std(ddof=1)
    sd = half * math.sqrt(n) / sst.t.ppf(0.975, n - 1)
    return mean + sd * z


@pytest.mark.parametrize("mean,half,better,verdict", [
    (0.020, 0.010, "higher", "better"),  # interval [0.010, 0.030], wholly above +0.005
    (0.008, 0.006, "higher", "inconclusive"),  # [0.002, 0.014]: above 0, but not beyond the margin
    (0.000, 0.004, "higher", "equivalent"),  # [-0.004, 0.004] inside +-0.005
    (-0.020, 0.010, "higher", "worse"),
    (0.000, 0.020, "higher", "inconclusive"),
    (-0.020, 0.010, "lower", "better"),  # a gap: lower is better
    (0.020, 0.010, "lower", "worse"),
])
def test_margin_rules(mean, half, better, verdict):
    c = stats.compare(_data(mean, half), 0.005, better)
    assert (c.lo, c.hi) == pytest.approx((mean - half, mean + half))
    assert stats.judge_family([c])[0][0] == verdict


def test_equal_differences_are_never_p_zero():
    for d in ([0.01] * 5, [0.0] * 5, [0.1 + 1e-17] * 3):
        c = stats.compare(d, 0.005)
        assert math.isnan(c.p) and math.isnan(c.p_better) and "without spread" in c.note
        assert stats.judge_family([c])[0][0] == "inconclusive"
    assert "at least 2" in stats.compare([0.1], 0.005).note


def test_holm_against_hand_values():
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, 1 x 0.04 -> 0.06
    assert stats.holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(stats.holm(p)[4])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_holm_can_overturn_a_verdict_within_its_family():
    alone = stats.compare(_data(0.0125, 0.0070), 0.005)  # lower bound 0.0055 > margin: better alone
    assert stats.judge_family([alone])[0][0] == "better"
    family = [alone] + [stats.compare(_data(0.0, 0.05), 0.005) for _ in range(3)]
    verdict, p = stats.judge_family(family)[0]
    assert verdict == "inconclusive" and p == pytest.approx(min(1.0, 4 * alone.p_better))


def test_log_ratio_comparison_of_timings():
    dense = [10.0, 10.5, 9.8, 10.2, 10.1, 9.9]
    sparse = [2.0, 2.1, 2.0, 2.05, 1.95, 2.0]
    r = stats.log_ratio_comparison(sparse, dense, 0.10)
    assert r["speedup"] == pytest.approx(math.exp(-np.mean(np.log(sparse) - np.log(dense))))
    assert r["speedup_lo"] < r["speedup"] < r["speedup_hi"] and r["comparison"].candidate == "better"
    slower = stats.log_ratio_comparison(dense, sparse, 0.10)
    assert slower["speedup"] < 1 and slower["comparison"].candidate == "worse"


# ------------------------------------------------------------------------ results and verdicts


def _confirmation_frame(spec, values):
    """A collect()-like frame of confirmation runs: values[arm] = (test accs, gaps) per seed."""
    rows = []
    group = spec.groups()[0]
    for arm, (accs, gaps) in values.items():
        for i, (acc, gap) in enumerate(zip(accs, gaps)):
            row = {c: np.nan for c in results.RUN_COLUMNS}
            row.update(stage="confirmation", dataset=group.dataset, hidden=group.hidden, budget=group.budget,
                       arm=arm, strategy=arm.split()[0], seed=ex.CONFIRMATION_SEED0 + i, status="finished",
                       test_acc=acc, gap=gap, sparsity=0.0)
            rows.append(row)
    return pd.DataFrame(rows, columns=results.RUN_COLUMNS)


def test_claims_compare_each_strategy_with_dropout_on_the_confirmation_seeds():
    spec = ex.ExperimentSpec(**{**TINY, "strategies": "dropout,neuron,refined", "ablate": "neuron",
                                "updates": "lazy,dense"}).validated()
    df = _confirmation_frame(spec, {
        "dropout": ([0.80, 0.81, 0.82, 0.80], [0.10, 0.11, 0.12, 0.10]),
        "neuron": ([0.83, 0.84, 0.86, 0.83], [0.05, 0.055, 0.06, 0.05]),
        "refined": ([0.80, 0.81, 0.82, 0.80], [0.10, 0.11, 0.12, 0.10]),
        "neuron [dense update]": ([0.83, 0.85, 0.85, 0.84], [0.05, 0.05, 0.06, 0.05]),
    })
    v = results.verdict_table(results.claim_comparisons(spec, df)).set_index(["family", "arm"])
    gap = v.loc[("1", "neuron")]
    assert gap["diff"] == pytest.approx(-0.05375) and gap["margin"] == pytest.approx(0.1 * 0.1075)
    assert gap["verdict"] == "better"
    assert v.loc[("1", "refined"), "verdict"] == "inconclusive"  # identical: no spread, no t-test
    assert v.loc[("2", "neuron"), "diff"] == pytest.approx(0.0325)
    assert v.loc[("ablation", "neuron [dense update]"), "baseline"] == "neuron"
    assert ("1", "neuron [dense update]") not in v.index  # ablation arms are not part of the claims
    assert set(v.reset_index()["family"]) == {"1", "2", "ablation"}


def test_claim_one_margin_has_a_floor():
    spec = ex.ExperimentSpec(**TINY).validated()
    df = _confirmation_frame(spec, {"dropout": ([0.8] * 3, [0.01, 0.012, 0.011]),
                                    "neuron": ([0.8] * 3, [0.02, 0.03, 0.025])})
    (gap,) = [c for c in results.claim_comparisons(spec, df) if c["family"] == "1"]
    assert gap["comparison"].margin == 0.005  # 10 % of 0.011 would be 0.0011


def test_tested_models_train_accuracy_and_gap():
    equal = {"config": {"patience": 0}, "summary": {"train_acc": 0.99, "best_gap": 0.1, "best_val_acc": 0.8}}
    converge = {"config": {"patience": 5}, "summary": {"train_acc": 0.99, "best_gap": 0.1, "best_val_acc": 0.8}}
    assert results.tested_train_acc(equal) == 0.99
    assert results.tested_train_acc(converge) == pytest.approx(0.9)  # the checkpoint's, not the last epoch's


def test_speed_curve_says_from_which_width_the_backward_pays():
    rng = np.random.default_rng(0)

    def row(width, ratio):
        dense = 10 + rng.normal(0, 0.1, 12)
        sparse = dense / ratio * np.exp(rng.normal(0, 0.005, 12))  # jitter: a measured ratio is never exact
        return {"strategy": "neuron", "width": width, "sparsity": 0.9, "widths": [width, width], "keep": [1],
                "samples": {"dense": [[1.0, t, 1.0] for t in dense], "sparse": [[1.0, t, 1.0] for t in sparse]}}

    spec = ex.ExperimentSpec(**{**TINY, "speed_widths": [256, 1024, 2048, 4096]}).validated()
    speed = {"rows": [row(256, 0.7), row(1024, 1.03), row(2048, 2.0), row(4096, 4.0)]}
    v = results.verdict_table(results.speed_comparisons(spec, speed))
    table = results.speed_table(spec, speed, v)
    assert table["backward_verdict"].tolist() == ["worse", "equivalent", "better", "better"]
    assert table["backward_speedup"].tolist() == pytest.approx([0.7, 1.03, 2.0, 4.0], rel=0.01)
    curve = results.speed_curves(table).iloc[0]
    assert curve["backward_from"] == 2048
    fig = fx.width_sweep(table, "backward", "claim 3")
    assert any(t.name == "neuron s=0.9" for t in fig.data) and fig.layout.xaxis.type == "log"


# --------------------------------------------------------------------------- end to end, report


def test_a_tiny_experiment_end_to_end_and_its_report(tmp_path):
    store = Store(tmp_path / "a.db")
    spec = ex.ExperimentSpec(**{**TINY, "speed_widths": [16], "speed_sparsities": [0.5], "speed_strategies": "neuron",
                                "speed_repeats": 3})
    exp_id = ex.launch(spec, FakeRunner(store), owner="ana")
    assert train_all(store) == 4 and ex.advance(store, exp_id) == 2 and train_all(store) == 2
    assert ex.progress(store, exp_id)["complete"] and ex.speed_due(store, exp_id)
    ex.measure_speed(store, exp_id, threads=1)
    assert not ex.speed_due(store, exp_id) and ex.progress(store, exp_id)["speed"] == "done"
    results_md = tmp_path / "RESULTS.md"
    paths = ex.write_report(store, exp_id, tmp_path / "out", notes=["A note."], results=results_md,
                            head={"command": "python -m asymviz experiment ...", "data": ex.prepare_data(spec)})
    runs = pd.read_csv(paths["runs.csv"])
    assert len(runs) == 6 and set(runs["stage"]) == {"selection", "confirmation"}
    assert set(runs[runs["stage"] == "confirmation"]["seed"]) == {1000, 1001}
    md = open(paths["report.md"], encoding="utf-8").read()
    assert md.startswith(f"# asymviz experiment {exp_id}") and "A note." in md
    for section in ("## What came out", "## Verdicts", "## Selection stage", "## Confirmation stage",
                    "## Claim 3: the width sweep", "- moons: 700 train, 150 validation, 150 test."):
        assert section in md
    assert provenance.report_commit(md) is None or len(provenance.report_commit(md)[0]) == 40
    assert "[runs.csv](runs.csv)" in md
    assert "[runs.csv](out/runs.csv)" in results_md.read_text(encoding="utf-8")  # links relative to RESULTS.md
    page = open(paths["report.html"], encoding="utf-8").read()
    assert page.count("* plotly.js v") == 1 and '<script src="http' not in page  # embedded once: offline
    data = json.load(open(paths["report.json"], encoding="utf-8"))
    assert data["experiment"] == exp_id and {v["family"] for v in data["verdicts"]} == {"1", "2", "3", "3 step"}
    a = ex.analyze(store, exp_id)
    assert len(a["confirmation"]) == 2 and a["selection"]["chosen"].sum() == 2
    assert fx.confirmation_metric(a["confirmation"], "test_acc", "t").data


def test_timings_are_medians_of_the_step_records(tmp_path):
    store = Store(tmp_path / "a.db")
    exp_id = ex.launch(ex.ExperimentSpec(**TINY), FakeRunner(store), "ana")
    spiky, plain = [r["id"] for r in store.experiment_runs(exp_id)][:2]
    store.set_status(spiky, "running")
    with store.writer(spiky) as w:  # 5 warm-up steps (ignored), then 0.3 ms with one 50 ms spike
        for step in range(1, 16):
            ms = 9.0 if step <= 5 else 50.0 if step == 10 else 0.3
            w.add_step({"step": step, "epoch": 1, "time/backward_ms": ms, "time/step_ms": 2 * ms})
    store.set_status(spiky, "finished", summary={"status": "finished", "backward_ms_mean": 5.27, "test_acc": 0.5})
    finish(store, plain, backward_ms_mean=1.5, step_ms_mean=3.0)  # no step records: the summary's mean
    df = ex.collect(store, exp_id).set_index("run_id")
    assert df.loc[spiky, "backward_ms"] == pytest.approx(0.3) and df.loc[spiky, "step_ms"] == pytest.approx(0.6)
    assert (df.loc[plain, "backward_ms"], df.loc[plain, "step_ms"]) == (1.5, 3.0)


# ------------------------------------------------------------------------ the stale-report check


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A throwaway git repository with the numerics files, one commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path / "repo"
    for name in provenance.NUMERICS + ("README.md",):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    _git(root.parent, "init", "-q", str(root))
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    return root


def _report(root, commit, state="clean"):
    path = root / "RESULTS.md"
    path.write_text(f"# report\n\n| | |\n|---|---|\n| **Commit** | `{commit}` ({state}: no uncommitted change) |\n")
    return path


def test_a_fresh_report_passes(repo):
    commit = _git(repo, "rev-parse", "HEAD")
    assert provenance.commit_info(repo) == {"commit": commit, "dirty": False, "changed": []}
    assert provenance.check_report(_report(repo, commit), repo) == []
    (repo / "README.md").write_text("other files may change\n")
    assert provenance.check_report(_report(repo, commit), repo) == []


def test_a_changed_numerics_file_makes_the_report_stale(repo):
    commit = _git(repo, "rev-parse", "HEAD")
    (repo / "asymviz" / "optim.py").write_text("# a new update rule\n")
    (problem,) = provenance.check_report(_report(repo, commit), repo)
    assert f"changed since commit {commit[:12]}" in problem and "asymviz/optim.py" in problem
    assert provenance.REGENERATE in problem
    info = provenance.commit_info(repo)
    assert info["dirty"] and info["changed"] == ["asymviz/optim.py"]
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")  # committed: still stale
    assert "asymviz/optim.py" in provenance.check_report(_report(repo, commit), repo)[0]


@pytest.mark.parametrize("text, message", [
    ("# report without a header\n", "names no commit"),
    (None, "uncommitted changes"),
    ("| **Commit** | `" + "a" * 40 + "` (clean) |\n", "which this clone does not have"),
])
def test_reports_that_cannot_vouch_for_the_code(repo, text, message):
    path = _report(repo, _git(repo, "rev-parse", "HEAD"), state="dirty")
    if text is not None:
        path.write_text(text)
    assert any(message in p for p in provenance.check_report(path, repo))
    assert "cannot be read" in provenance.check_report(repo / "missing.md", repo)[0]


def test_the_header_names_the_commit_so_the_check_can_read_it(repo):
    info = provenance.commit_info(repo)
    line = f"| **Commit** | {provenance.commit_text(info)} |"
    assert provenance.report_commit(line) == (info["commit"], True)


# ------------------------------------------------------------------------------ the command line


def test_cli_runs_resumes_and_reports(tmp_path):
    env = {**os.environ, "ASYMVIZ_HOME": str(tmp_path), "ASYMVIZ_EXTERNAL_WORKERS": ""}
    args = [sys.executable, "-m", "asymviz", "experiment", "--datasets", "moons", "--hidden", "8",
            "--strategies", "dropout,neuron", "--sparsities", "0.5,0.9", "--dropouts", "0.5", "--lrs", "0.01",
            "--budgets", "equal", "--epochs", "1", "--selection-seeds", "1", "--confirmation-seeds", "2",
            "--speed-widths", "16", "--speed-sparsities", "0.5", "--speed-strategies", "neuron",
            "--speed-repeats", "3", "--workers", "1", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "RESULTS.md")]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert "6/6 runs done" in p.stderr and "width sweep measured" in p.stderr
    assert "**Claim 1. reduces overfitting**" in p.stdout
    md = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    assert "| **Command** | `python -m asymviz experiment --datasets moons" in md
    assert (tmp_path / "out" / "runs.csv").exists() and (tmp_path / "out" / "report.html").exists()
    q = subprocess.run(args + ["--json"], capture_output=True, text=True, timeout=300, env=env)
    assert q.returncode == 0, q.stderr
    data = json.loads(q.stdout)
    assert data["progress"]["done"] == 6 and {v["family"] for v in data["verdicts"]} >= {"1", "2", "3"}
    with Store(tmp_path / "asymviz.db") as store:
        assert len(store.experiment_runs(data["experiment"])) == 6  # nothing was run twice
    est = subprocess.run(args[:4] + ["--preset", "standard", "--estimate"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert est.returncode == 0 and "598 training runs" in est.stdout and "Estimated CPU time" in est.stdout
    for bad, message in ((["--confirmation-seeds", "1"], "at least 2 seeds"), (["--preset", "huge"], "Unknown preset"),
                         (["--datasets", "mnist1d:100"], "training-set size")):
        r = subprocess.run(args[:4] + bad, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_a_report_vouches_only_for_the_code_that_trained_its_runs(repo):
    from asymviz.experiment.report import trained_commit

    now = provenance.commit_info(repo)
    same = [{"at": 1.0, "commit": now["commit"], "dirty": False}]
    assert trained_commit(same, now) == now
    for launches in ([{"at": 1.0, "commit": "b" * 40, "dirty": False}], same + [{"at": 2.0, "commit": now["commit"],
                                                                                  "dirty": True}]):
        marked = trained_commit(launches, now)
        text = f"| **Commit** | {provenance.commit_text(marked)} |"
        assert provenance.report_commit(text) == (now["commit"], False)  # dirty: the stale check fails
        assert "runs were trained by other code" in text


def test_launches_record_the_code_that_ran():
    store = Store(":memory:")
    exp_id = ex.launch(ex.ExperimentSpec(**TINY), FakeRunner(store), owner="ana")
    ex.launch(ex.ExperimentSpec(**TINY), FakeRunner(store), owner="ana")
    code = store.experiments(exp_id)[0]["code"]
    assert len(code) == 2 and code[0]["commit"] == provenance.commit_info()["commit"]
