"""What an experiment found: its runs as a table, the selection and confirmation tables, the
verdicts of every claim, the width sweep and the meProp anchor.

    df = collect(store, exp_id)                   # one row per run (RUN_COLUMNS)
    t = analyze(store, exp_id)                    # {"spec", "runs", "selection", "confirmation",
                                                  #  "verdicts", "speed", "curves", "anchor", "progress"}

Claims and their families (Holm within each; the rules are in asymviz.experiment.stats):
  1  reduces overfitting    d of the train - test accuracy gap of the tested model (the last
                            epoch's model for the equal budget, the early-stopping checkpoint for
                            converge), asymmetric arm - dropout; lower is better; margin 10 % of
                            dropout's mean gap, at least 0.005. Validation picks the setting and
                            the checkpoint but is never part of this quantity.
  2  better accuracy        d of test accuracy; higher is better; margin 0.005 (half a point).
  3  less backprop time     the width sweep: per strategy, width and sparsity, the interleaved
                            sparse and dense steps' log time ratio; margin 10 %; the verdict is a
                            curve: from which width on the sparse backward pays.
     ablation               each ablation arm against its base arm, test accuracy.
     anchor                 meProp's settings against symmetric and dropout, test accuracy.
Claims 1 and 2 compare each thesis strategy's base arm (neuron, excessive, refined with the
grid's first selection, granularity and update) with dropout, on the confirmation seeds only.
"""

from __future__ import annotations

import math
from statistics import median

import numpy as np
import pandas as pd

from asymviz.experiment import stats
from asymviz.experiment.schedule import (DONE, cell_runs, decisions, known_cells, load_spec, progress,
                                         selection_metric, selection_scores)
from asymviz.experiment.spec import MEPROP, MEPROP_PUBLISHED, ExperimentSpec

RUN_COLUMNS = ["cell", "stage", "dataset", "hidden", "budget", "arm", "strategy", "selection", "granularity",
               "update", "sparsity", "dropout", "lr", "setting", "seed", "run_id", "status", "error",
               "selection_metric", "test_acc", "test_loss", "train_acc", "gap", "val_acc", "best_val_acc",
               "epochs", "best_epoch", "hit_cap", "backward_ms", "step_ms", "forward_ms_mean", "backward_ms_mean",
               "optimizer_ms_mean", "step_ms_mean", "duration_s"]
MEDIAN_SAMPLE = 400  # step records per run read for the median step times
_MEDIANS: dict[tuple, tuple] = {}  # (store path, run id) -> medians of a finished run (they never change)


def step_medians(store, run: dict) -> tuple[float | None, float | None]:
    """(backward ms, step ms): medians over the run's step records after the warm-up steps (at
    most MEDIAN_SAMPLE, spread over the run), or the summary's means without step records. A
    median ignores the few steps another process took the core from."""
    key = (str(store.path), run["id"])
    if key in _MEDIANS:
        return _MEDIANS[key]
    from asymviz.train import WARMUP_STEPS

    steps = [r for r in store.steps_downsampled(run["id"], MEDIAN_SAMPLE) if r.get("step", 0) > WARMUP_STEPS]
    out = []
    for name in ("backward", "step"):
        values = [r[f"time/{name}_ms"] for r in steps if _finite(r.get(f"time/{name}_ms"))]
        out.append(median(values) if values else (run.get("summary") or {}).get(f"{name}_ms_mean"))
    if run["status"] in DONE and store.path != ":memory:":
        _MEDIANS[key] = tuple(out)
    return tuple(out)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x) -> float:
    return float(x) if _finite(x) else math.nan


def tested_train_acc(run: dict) -> float:
    """Train accuracy of the model whose test accuracy is reported: the last epoch's for the
    equal budget, the early-stopping checkpoint's (best validation epoch) for converge."""
    s, c = run.get("summary") or {}, run["config"]
    if c.get("patience"):
        return _num(s.get("best_gap")) + _num(s.get("best_val_acc"))
    return _num(s.get("train_acc"))


def collect(store, exp_id: str, spec: ExperimentSpec | None = None, runs: dict | None = None) -> pd.DataFrame:
    """One row per cell that has a run (RUN_COLUMNS), in stage and grid order. `gap` is the
    tested model's train minus test accuracy; backward_ms and step_ms are the run's median step
    times (the *_mean columns are the training loop's means)."""
    spec = spec or load_spec(store, exp_id)
    runs = cell_runs(store, exp_id) if runs is None else runs
    cells, _ = known_cells(spec, runs)
    rows = []
    for cell in sorted(cells, key=lambda c: ("selection", "confirmation", "anchor").index(c.stage)):
        run = runs.get(cell.key)
        if run is None:
            continue
        s, c = run.get("summary") or {}, run["config"]
        backward, step = step_medians(store, run) if run["status"] in DONE else (None, None)
        test_acc, train_acc = _num(s.get("test_acc")), tested_train_acc(run)
        group = cell.group
        rows.append({
            "cell": cell.key, "stage": cell.stage,
            "dataset": group.dataset if group else MEPROP["dataset"],
            "hidden": group.hidden if group else ",".join(map(str, MEPROP["hidden"])),
            "budget": group.budget if group else "equal",
            "arm": cell.arm.label, "strategy": cell.arm.strategy, "selection": cell.arm.selection,
            "granularity": cell.arm.granularity, "update": cell.arm.update,
            "sparsity": cell.setting.sparsity, "dropout": cell.setting.dropout, "lr": cell.setting.lr,
            "setting": cell.setting.label(cell.arm), "seed": cell.seed, "run_id": run["id"],
            "status": run["status"], "error": run.get("error"),
            "selection_metric": selection_metric(run), "test_acc": test_acc, "test_loss": _num(s.get("test_loss")),
            "train_acc": train_acc, "gap": train_acc - test_acc, "val_acc": _num(s.get("val_acc")),
            "best_val_acc": _num(s.get("best_val_acc")), "epochs": _num(s.get("epochs")),
            "best_epoch": _num(s.get("best_epoch")),
            "hit_cap": bool(c.get("patience")) and _num(s.get("epochs")) >= c["epochs"],
            "backward_ms": _num(backward), "step_ms": _num(step),
            **{f"{k}_ms_mean": _num(s.get(f"{k}_ms_mean")) for k in ("forward", "backward", "optimizer", "step")},
            "duration_s": (run["finished_at"] - run["started_at"])
            if run.get("finished_at") and run.get("started_at") else math.nan,
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


# ----------------------------------------------------------------------------------- tables


def selection_table(spec: ExperimentSpec, runs: dict) -> pd.DataFrame:
    """Stage 1: per group, arm and candidate setting, the selection metric (mean validation
    accuracy of the tested model over the selection seeds) and which one was chosen."""
    chosen = decisions(spec, runs)
    cells = spec.selection_cells()
    rows = []
    for group in spec.groups():
        for arm in spec.arms():
            pick = chosen[(group, arm)]
            candidates = spec.candidates(arm)
            scores = selection_scores(spec, runs, group, arm, cells) if len(candidates) > 1 else \
                [{"setting": candidates[0], "values": [], "n": 0, "mean": math.nan, "done": True}]
            for score in scores:
                rows.append({"dataset": group.dataset, "hidden": group.hidden, "budget": group.budget,
                             "arm": arm.label, "setting": score["setting"].label(arm), "n": score["n"],
                             "metric": score["mean"],
                             "seeds": ", ".join("-" if not math.isfinite(v) else f"{v:.4f}" for v in score["values"]),
                             "chosen": pick is not None and score["setting"] == pick,
                             "only": len(candidates) == 1, "decided": pick is not None})
    return pd.DataFrame(rows, columns=["dataset", "hidden", "budget", "arm", "setting", "n", "metric", "seeds",
                                       "chosen", "only", "decided"])


SUMMARY_METRICS = ["test_acc", "gap", "test_loss", "selection_metric", "epochs", "backward_ms", "step_ms"]


def summarize(df: pd.DataFrame, stage: str) -> pd.DataFrame:
    """Per group and arm of a stage: n, failures, runs that hit the epoch cap, and the mean with
    its 95 % t interval (`_lo`, `_hi`) of every SUMMARY_METRICS column."""
    part = df[df["stage"] == stage] if len(df) else df
    rows = []
    for keys, g in part.groupby(["dataset", "hidden", "budget", "arm"], sort=False):
        good = g[g["status"].isin(DONE)]
        row = dict(zip(["dataset", "hidden", "budget", "arm"], keys))
        row.update(setting=g["setting"].iloc[0], strategy=g["strategy"].iloc[0], n=int(good["test_acc"].notna().sum()),
                   n_failed=int(len(g) - len(good)), n_diverged=int((g["status"] == "diverged").sum()),
                   hit_cap=int(good["hit_cap"].sum()))
        for metric in SUMMARY_METRICS:
            _, row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = stats.mean_ci(good[metric])
        rows.append(row)
    return pd.DataFrame(rows)


VERDICT_COLUMNS = ["family", "claim", "dataset", "hidden", "budget", "arm", "baseline", "metric", "n", "diff", "lo",
                   "hi", "margin", "verdict", "p_holm", "p", "effect", "baseline_mean", "mean", "note"]
FAMILIES = {"1": "1. reduces overfitting", "2": "2. reaches better accuracy",
            "3": "3. reduces backprop time (backward)", "3 step": "3. reduces the whole training step",
            "ablation": "ablation", "anchor": "meProp anchor"}


def _paired(df: pd.DataFrame, arm: str, baseline: str, metric: str) -> tuple[np.ndarray, float, float]:
    """(paired differences over common seeds, baseline mean, arm mean) of finished runs."""
    a = df[(df["arm"] == arm) & df["status"].isin(DONE)].set_index("seed")[metric]
    b = df[(df["arm"] == baseline) & df["status"].isin(DONE)].set_index("seed")[metric]
    seeds = sorted(set(a.index) & set(b.index))
    d = stats.paired_differences(a.loc[seeds].tolist(), b.loc[seeds].tolist())
    return d, float(np.nanmean(b.to_numpy(dtype=float))) if len(b) else math.nan, \
        float(np.nanmean(a.to_numpy(dtype=float))) if len(a) else math.nan


def claim_comparisons(spec: ExperimentSpec, df: pd.DataFrame) -> list[dict]:
    """Every comparison of claims 1, 2, the ablations and the anchor (before Holm)."""
    out = []
    conf = df[df["stage"] == "confirmation"] if len(df) else df
    base_arms = [a for a in spec.arms() if a.sparse and spec.base_arm(a) == a]
    ablations = [a for a in spec.arms() if a.sparse and spec.base_arm(a) != a]
    for group in spec.groups():
        g = conf[(conf["dataset"] == group.dataset) & (conf["hidden"] == group.hidden)
                 & (conf["budget"] == group.budget)] if len(conf) else conf
        where = dict(dataset=group.dataset, hidden=group.hidden, budget=group.budget)
        for arm in base_arms:
            d, base_mean, mean = _paired(g, arm.label, "dropout", "gap")
            margin = max(spec.margin_gap * abs(base_mean), 0.005) if math.isfinite(base_mean) else 0.005
            out.append(dict(family="1", arm=arm.label, baseline="dropout", metric="gap", baseline_mean=base_mean,
                            mean=mean, comparison=stats.compare(d, margin, "lower"), **where))
            d, base_mean, mean = _paired(g, arm.label, "dropout", "test_acc")
            out.append(dict(family="2", arm=arm.label, baseline="dropout", metric="test_acc", baseline_mean=base_mean,
                            mean=mean, comparison=stats.compare(d, spec.margin_acc, "higher"), **where))
        for arm in ablations:
            base = spec.base_arm(arm).label
            d, base_mean, mean = _paired(g, arm.label, base, "test_acc")
            out.append(dict(family="ablation", arm=arm.label, baseline=base, metric="test_acc",
                            baseline_mean=base_mean, mean=mean,
                            comparison=stats.compare(d, spec.margin_acc, "higher"), **where))
    anchor = df[df["stage"] == "anchor"] if len(df) else df
    for arm, setting in spec.anchor_arms() if spec.meprop else []:
        if not arm.sparse:
            continue
        mine = anchor[(anchor["arm"] != arm.label) | np.isclose(anchor["sparsity"], setting.sparsity)] \
            if len(anchor) else anchor
        for baseline in ("symmetric", "dropout"):
            d, base_mean, mean = _paired(mine, arm.label, baseline, "test_acc")
            out.append(dict(family="anchor", arm=f"{arm.label} top-{round((1 - setting.sparsity) * MEPROP['hidden'][0])}",
                            baseline=baseline, metric="test_acc", baseline_mean=base_mean, mean=mean,
                            comparison=stats.compare(d, spec.margin_acc, "higher"), dataset=MEPROP["dataset"],
                            hidden=",".join(map(str, MEPROP["hidden"])), budget="equal"))
    return out


def verdict_table(comparisons: list[dict]) -> pd.DataFrame:
    """One row per comparison with its verdict after Holm within its family."""
    rows = []
    for family in FAMILIES:
        mine = [c for c in comparisons if c["family"] == family]
        for c, (verdict, p_holm) in zip(mine, stats.judge_family([m["comparison"] for m in mine])):
            k = c["comparison"]
            rows.append({"family": family, "claim": FAMILIES[family], "dataset": c.get("dataset"),
                         "hidden": c.get("hidden"), "budget": c.get("budget"), "arm": c["arm"],
                         "baseline": c["baseline"], "metric": c["metric"], "n": k.n, "diff": k.diff, "lo": k.lo,
                         "hi": k.hi, "margin": k.margin, "verdict": verdict, "p_holm": p_holm, "p": k.p,
                         "effect": k.effect, "baseline_mean": c.get("baseline_mean", math.nan),
                         "mean": c.get("mean", math.nan), "note": k.note,
                         **{x: c[x] for x in ("width", "sparsity", "strategy", "speedup", "speedup_lo",
                                              "speedup_hi") if x in c}})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS + [x for x in ("width", "sparsity", "strategy", "speedup",
                                                                     "speedup_lo", "speedup_hi")
                                                         if any(x in r for r in rows)])


def speed_comparisons(spec: ExperimentSpec, speed: dict | None) -> list[dict]:
    """Claim 3's comparisons from the width sweep: per row, backward and whole step."""
    out = []
    for r in (speed or {}).get("rows", []):
        samples = r.get("samples") or {}
        dense, sparse = samples.get("dense") or [], samples.get("sparse") or []
        common = dict(strategy=r["strategy"], width=r["width"], sparsity=r["sparsity"], baseline="dense",
                      dataset=None, hidden=",".join([str(r["width"])] * len(r.get("widths", [r["width"]]))),
                      budget=None, arm=f"{r['strategy']} s={r['sparsity']:g}")
        for family, pick in (("3", lambda t: t[1]), ("3 step", lambda t: sum(t))):
            c = stats.log_ratio_comparison([pick(t) for t in sparse], [pick(t) for t in dense], spec.margin_time)
            out.append(dict(family=family, metric="backward ms" if family == "3" else "step ms",
                            comparison=c["comparison"], speedup=c["speedup"], speedup_lo=c["speedup_lo"],
                            speedup_hi=c["speedup_hi"], **common))
    return out


def speed_table(spec: ExperimentSpec, speed: dict | None, verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per (strategy, width, sparsity) of the sweep: medians, ideal, path, backward and
    step speedups with their intervals and verdicts."""
    rows = []
    v = verdicts.set_index(["family", "strategy", "width", "sparsity"]) if "width" in verdicts.columns and len(
        verdicts[verdicts["family"].isin(["3", "3 step"])]) else None
    for r in (speed or {}).get("rows", []):
        row = {k: r.get(k) for k in ("strategy", "width", "sparsity", "dense_backward_ms", "sparse_backward_ms",
                                     "ideal", "dense_step_ms", "sparse_step_ms", "path")}
        row["keep"] = (r.get("keep") or [None])[0]
        for family, name in (("3", "backward"), ("3 step", "step")):
            hit = v.loc[(family, r["strategy"], r["width"], r["sparsity"])] if v is not None else None
            if isinstance(hit, pd.DataFrame):
                hit = hit.iloc[0]
            row[f"{name}_speedup"] = hit["speedup"] if hit is not None else math.nan
            row[f"{name}_lo"] = hit["speedup_lo"] if hit is not None else math.nan
            row[f"{name}_hi"] = hit["speedup_hi"] if hit is not None else math.nan
            row[f"{name}_verdict"] = hit["verdict"] if hit is not None else "inconclusive"
        rows.append(row)
    return pd.DataFrame(rows)


def speed_curves(speed_rows: pd.DataFrame) -> pd.DataFrame:
    """Claim 3 as a curve: per (strategy, sparsity), the smallest width from which the sparse
    backward (and the whole step) is better by the margin at every wider width of the sweep."""
    rows = []
    if not len(speed_rows):
        return pd.DataFrame(rows, columns=["strategy", "sparsity", "backward_from", "step_from", "widths"])
    for (strategy, s), g in speed_rows.groupby(["strategy", "sparsity"], sort=False):
        g = g.sort_values("width")
        row = {"strategy": strategy, "sparsity": s, "widths": ", ".join(str(w) for w in g["width"])}
        for name in ("backward", "step"):
            from_width = None
            for width, verdict in zip(reversed(g["width"].tolist()), reversed(g[f"{name}_verdict"].tolist())):
                if verdict != "better":
                    break
                from_width = width
            row[f"{name}_from"] = from_width
        rows.append(row)
    return pd.DataFrame(rows)


def anchor_table(spec: ExperimentSpec, df: pd.DataFrame, speed: dict | None) -> pd.DataFrame:
    """The meProp anchor: each arm's test accuracy over the anchor seeds and backward speedup
    (this machine's interleaved timing), next to the published figures."""
    if not spec.meprop:
        return pd.DataFrame()
    part = df[df["stage"] == "anchor"] if len(df) else df
    timing = {(r["granularity"], round(r["sparsity"], 4)): r for r in (speed or {}).get("meprop_rows", [])}
    rows = []
    for arm, setting in spec.anchor_arms():
        g = part[(part["arm"] == arm.label) & np.isclose(part["sparsity"], setting.sparsity)] if len(part) else part
        good = g[g["status"].isin(DONE)] if len(g) else g
        n, mean, lo, hi = stats.mean_ci(good["test_acc"] if len(good) else [])
        k = round((1 - setting.sparsity) * MEPROP["hidden"][0]) if arm.sparse else None
        t = timing.get((arm.granularity, round(setting.sparsity, 4))) if arm.sparse else None
        c = None
        if t and t.get("samples"):
            c = stats.log_ratio_comparison([x[1] for x in t["samples"]["sparse"]],
                                           [x[1] for x in t["samples"]["dense"]], spec.margin_time)
        published = (MEPROP_PUBLISHED["symmetric_test_acc"] if arm.strategy == "symmetric" else
                     MEPROP_PUBLISHED["top80_test_acc"] if k == 80 and arm.granularity == "example" else math.nan)
        rows.append({"arm": arm.label if not arm.sparse else f"{arm.label} top-{k}",
                     "setting": setting.label(arm), "n": n, "test_acc": mean, "test_acc_lo": lo, "test_acc_hi": hi,
                     "published_test_acc": published,
                     "backward_speedup": c["speedup"] if c else math.nan,
                     "backward_speedup_lo": c["speedup_lo"] if c else math.nan,
                     "backward_speedup_hi": c["speedup_hi"] if c else math.nan,
                     "published_speedup": MEPROP_PUBLISHED["backprop_speedup"]
                     if k == 80 and arm.granularity == "example" else math.nan,
                     "path": t.get("path") if t else None})
    return pd.DataFrame(rows)


def analyze(store, exp_id: str) -> dict:
    """Everything a report shows, computed once."""
    from asymviz.experiment.schedule import experiment_state

    state = experiment_state(store, exp_id)
    spec = state["spec"]
    runs = cell_runs(store, exp_id)
    df = collect(store, exp_id, spec, runs)
    comparisons = claim_comparisons(spec, df) + speed_comparisons(spec, state["speed"])
    verdicts = verdict_table(comparisons)
    speed = speed_table(spec, state["speed"], verdicts)
    return {"id": exp_id, "spec": spec, "state": state, "progress": progress(store, exp_id), "runs": df,
            "selection": selection_table(spec, runs), "confirmation": summarize(df, "confirmation"),
            "verdicts": verdicts, "speed": speed, "curves": speed_curves(speed),
            "anchor": anchor_table(spec, df, state["speed"]), "speed_raw": state["speed"]}



def curves(store, df: pd.DataFrame, dataset: str, hidden: str, budget: str, stage: str = "confirmation",
           seed: int | None = None) -> pd.DataFrame:
    """Learning curves of one group's runs of a stage, every arm overlaid: rows (arm, strategy,
    epoch, train_acc, val_acc, gap), averaged over seeds (or of one seed)."""
    sel = df[(df["stage"] == stage) & (df["dataset"] == dataset) & (df["hidden"] == hidden)
             & (df["budget"] == budget) & df["status"].isin(DONE)] if len(df) else df
    if seed is not None and len(sel):
        sel = sel[sel["seed"] == seed]
    rows = []
    for run in sel.itertuples():
        for r in store.epochs(int(run.run_id)):
            rows.append({"arm": run.arm, "strategy": run.strategy, "epoch": r["epoch"],
                         "train_acc": r.get("train/acc"), "val_acc": r.get("val/acc"), "gap": r.get("gap")})
    out = pd.DataFrame(rows, columns=["arm", "strategy", "epoch", "train_acc", "val_acc", "gap"])
    if not len(out):
        return out
    return out.groupby(["arm", "strategy", "epoch"], sort=False, as_index=False)[["train_acc", "val_acc", "gap"]].mean()
