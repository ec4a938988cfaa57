"""The thesis experiment: every strategy against dropout, over seeds, with statistics and verdicts.

    python -m asymviz experiment --preset quick        # about 10 minutes on 2 cores, then a report

    from asymviz import experiment as ex
    spec = ex.preset("quick")                          # or ExperimentSpec(datasets=[...], ...)
    exp_id = ex.launch(spec, runner, owner="ana")      # one queued run per cell, tagged exp_id
    ex.progress(runner.store, exp_id)                  # {"done": 37, "total": 120, "eta_s": 212.0, ...}
    df = ex.collect(runner.store, exp_id)              # one row per cell run
    tables = ex.summarize(df)                          # means, 95 % t intervals, paired differences
    ex.verdicts(tables)                                # one row per dataset, budget and claim
    ex.write_report(runner.store, exp_id, "out/")      # CSV, Markdown and standalone HTML

The thesis claims that asymmetric training, compared with symmetric training with dropout,
(1) reduces overfitting, (2) reaches better accuracy and (3) reduces backprop time. A grid of
cells (dataset x budget x strategy x sparsity or dropout p x seed) is run by the background
runner; the experiment id is a hash of the grid, so launching the same grid again resumes it.

Two budgets: `equal` trains every cell for the same number of epochs and tests the final model;
`converge` trains up to `max_epochs` with early stopping on validation accuracy (`patience`)
and tests the best checkpoint. "The model" below is the one whose test accuracy is reported.

Verdict rules. A claim is judged on the paired difference d = asymmetric - dropout over seeds
(same seed, dataset and budget; mean and 95 % t interval [lo, hi] of d):
  claim 1, reduces overfitting: d of the model's gap (train minus validation accuracy; at the end
           for `equal`, at the best epoch for `converge`), lower is better, margin 0.01;
  claim 2, better accuracy:     d of test accuracy, higher is better, margin 0.01;
  claim 3, less backprop time:  d of the run's median backward ms per step, lower is better,
           margin 5 % of the dropout baseline's mean.
  holds          the interval lies wholly on the better side of 0;
  does not hold  the interval lies wholly on the worse side of 0, or wholly inside +-margin
                 (no difference that matters);
  inconclusive at n seeds  otherwise (or fewer than 2 paired seeds).
The dropout baseline of a dataset and budget is the dropout p with the highest mean validation
accuracy of the model (chosen on validation, never on test). The headline verdict of a claim
judges the asymmetric setting (neuron / excessive / refined at a sparsity) with the highest
mean validation accuracy, the one a practitioner would pick; the report also counts in how many
of all asymmetric settings the claim holds. `random` (neuron with random selection) is an
ablation and `symmetric` a reference: both are compared but never picked for the headline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from asymviz.errors import AsymvizError, ConfigError
from asymviz.model import parse_architecture
from asymviz.sparse import check_sparsity
from asymviz.train import JSONConfig, TrainConfig

# Strategy labels of a grid: the five strategies plus `random`, the selection ablation of `neuron`.
LABELS = ("symmetric", "dropout", "neuron", "excessive", "refined", "random")
ASYMMETRIC = ("neuron", "excessive", "refined")  # the thesis's strategies: eligible for headlines
SPARSE = ("neuron", "excessive", "refined", "random")  # labels that take a sparsity
BUDGETS = ("equal", "converge")
DONE = ("finished", "diverged")  # a cell with such a run is not run again
ACTIVE = ("queued", "running")
MAX_CELLS = 5000
LEVEL = 0.95  # confidence level of every interval


class ExperimentNotFound(AsymvizError):
    """No experiment with this id was launched in this run store."""


@dataclass
class ExperimentSpec(JSONConfig):
    """A grid of runs; round-trips to JSON. Its hash is the experiment id."""

    _noun = "experiment"

    datasets: list[str] = field(default_factory=lambda: ["digits", "mnist1d"])
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # hidden widths, one architecture for all
    strategies: list[str] = field(default_factory=lambda: list(LABELS))  # labels from LABELS
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9, 0.95])  # for neuron/excessive/refined/random
    conn_sparsity: float = 0.5  # connection sparsity c of excessive and refined
    dropouts: list[float] = field(default_factory=lambda: [0.5])  # p of the dropout baseline(s)
    seeds: int = 5  # seeds 0 .. seeds-1; each seed is one initialization, shared by all strategies
    budget: str = "both"  # equal | converge | both
    epochs: int = 30  # equal budget: every cell trains this many epochs
    max_epochs: int = 200  # converge budget: at most this many epochs ...
    patience: int = 10  # ... stopping after this many epochs without a better validation accuracy
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 64
    split_seed: int = 0
    device: str = "auto"

    def validated(self) -> "ExperimentSpec":
        """A checked, canonical copy (lists sorted, duplicates dropped); ConfigError otherwise."""
        from asymviz.data import DATASETS

        s = dataclasses.replace(self)
        s.datasets = _names(s.datasets, "datasets", list(DATASETS))
        if "csv" in s.datasets:
            raise ConfigError("An experiment runs on registered datasets, not on an uploaded CSV; "
                              "choose among: " + ", ".join(d for d in DATASETS if d != "csv") + ".")
        for name in s.datasets:
            if name not in DATASETS:
                raise ConfigError(f"Unknown dataset {name!r}; choose among: "
                                  + ", ".join(d for d in DATASETS if d != "csv") + ".")
        s.datasets = [d for d in DATASETS if d in s.datasets]  # registry order: one grid, one id
        s.hidden = parse_architecture(s.hidden)
        s.strategies = _names(s.strategies, "strategies", LABELS)
        for name in s.strategies:
            if name not in LABELS:
                raise ConfigError(f"Unknown strategy {name!r}; choose among: {', '.join(LABELS)}.")
        s.strategies = [x for x in LABELS if x in s.strategies]
        if "dropout" not in s.strategies:
            raise ConfigError("The grid must include the dropout baseline: every claim is tested against it.")
        if len(s.strategies) < 2:
            raise ConfigError("The grid needs at least one strategy besides dropout to compare with it.")
        s.sparsities = sorted({check_sparsity(_float(x, "sparsities"), "sparsity") for x in _seq(s.sparsities)})
        if any(x in SPARSE for x in s.strategies) and not s.sparsities:
            raise ConfigError("List at least one sparsity (like 0.9) for the asymmetric strategies.")
        if not any(x in SPARSE for x in s.strategies):
            s.sparsities = []
        s.conn_sparsity = check_sparsity(_float(s.conn_sparsity, "conn_sparsity"), "conn_sparsity")
        s.dropouts = sorted({_float(x, "dropouts") for x in _seq(s.dropouts)})
        if not s.dropouts:
            raise ConfigError("List at least one dropout probability p for the dropout baseline, like 0.5.")
        for p in s.dropouts:
            if not 0 < p < 1:
                raise ConfigError(f"Every dropout probability must be in (0, 1), got {p:g}.")
        s.seeds = _int(s.seeds, "seeds", 2, 1000, "at least 2 seeds are needed for a confidence interval")
        if s.budget not in ("equal", "converge", "both"):
            raise ConfigError(f"Unknown budget {s.budget!r}; choose one of: equal, converge, both.")
        s.epochs = _int(s.epochs, "epochs", 1, 100000)
        s.max_epochs = _int(s.max_epochs, "max_epochs", 1, 100000)
        s.patience = _int(s.patience, "patience", 1, 100000, "early stopping needs a patience of at least 1 epoch")
        if "converge" in self.budgets_of(s.budget) and s.patience >= s.max_epochs:
            raise ConfigError(f"patience ({s.patience}) must be smaller than max_epochs ({s.max_epochs}), "
                              "or early stopping can never stop.")
        base = self.cell_config(s, s.datasets[0], "equal", "dropout", 0.0, s.dropouts[0], 0)
        s.optimizer, s.lr, s.batch_size = base.optimizer, base.lr, base.batch_size
        s.split_seed, s.device = base.split_seed, base.device
        n = s.n_cells()
        if n > MAX_CELLS:
            raise ConfigError(f"This grid has {n} cells; an experiment allows at most {MAX_CELLS}, "
                              "so use fewer datasets, sparsities or seeds.")
        return s

    @staticmethod
    def budgets_of(budget: str) -> tuple[str, ...]:
        return BUDGETS if budget == "both" else (budget,)

    @staticmethod
    def cell_config(s: "ExperimentSpec", dataset: str, budget: str, label: str, sparsity: float,
                    dropout: float, seed: int) -> TrainConfig:
        """The validated TrainConfig of one cell."""
        strategy = "neuron" if label == "random" else label
        return TrainConfig(
            dataset=dataset, hidden=list(s.hidden), strategy=strategy, sparsity=sparsity,
            conn_sparsity=s.conn_sparsity, selection="random" if label == "random" else "topk",
            dropout=dropout, optimizer=s.optimizer, lr=s.lr, batch_size=s.batch_size,
            epochs=s.epochs if budget == "equal" else s.max_epochs,
            patience=0 if budget == "equal" else s.patience,
            seed=seed, split_seed=s.split_seed, device=s.device,
        ).validated()

    def settings(self) -> list[tuple[str, float, float]]:
        """(label, sparsity, dropout p) of every setting, in display order."""
        out = []
        for label in self.strategies:
            if label == "symmetric":
                out.append((label, 0.0, 0.0))
            elif label == "dropout":
                out += [(label, 0.0, p) for p in self.dropouts]
            else:
                out += [(label, s, 0.0) for s in self.sparsities]
        return out

    def n_cells(self) -> int:
        return len(self.datasets) * len(self.budgets_of(self.budget)) * len(self.settings()) * int(self.seeds)

    def describe(self) -> str:
        """The grid in one paragraph."""
        budgets = []
        if "equal" in self.budgets_of(self.budget):
            budgets.append(f"equal ({self.epochs} epochs)")
        if "converge" in self.budgets_of(self.budget):
            budgets.append(f"converge (early stopping, patience {self.patience}, at most {self.max_epochs} epochs)")
        return (f"Datasets {', '.join(self.datasets)}; hidden {','.join(map(str, self.hidden))}; strategies "
                f"{', '.join(self.strategies)}; sparsities {', '.join(f'{x:g}' for x in self.sparsities) or '-'} "
                f"(connection sparsity {self.conn_sparsity:g} for excessive and refined); dropout p "
                f"{', '.join(f'{x:g}' for x in self.dropouts)}; {self.seeds} seeds; budgets {' and '.join(budgets)}; "
                f"{self.optimizer} lr {self.lr:g}, batch {self.batch_size}: {self.n_cells()} cells.")


def _seq(value) -> list:
    if isinstance(value, str):
        return [v for v in value.replace(";", ",").replace(" ", ",").split(",") if v]
    if value is None:
        return []
    try:
        return list(value)
    except TypeError:
        return [value]


def _names(value, what: str, valid) -> list[str]:
    names = [str(v).strip() for v in _seq(value) if str(v).strip()]
    if not names:
        raise ConfigError(f"List at least one of the {what}: {', '.join(valid)}.")
    return list(dict.fromkeys(names))


def _float(value, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must hold numbers, got {value!r}.") from None
    if not math.isfinite(x):
        raise ConfigError(f"{what} must hold finite numbers, got {value!r}.")
    return x


def _int(value, what: str, lo: int, hi: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{what} must be a whole number, got {value!r}.")
    try:
        x = float(value)
    except ValueError:
        raise ConfigError(f"{what} must be a whole number, got {value!r}.") from None
    if not x.is_integer():
        raise ConfigError(f"{what} must be a whole number, got {value!r}.")
    if not lo <= x <= hi:
        raise ConfigError(f"{what} must be between {lo} and {hi}, got {int(x)}" + (f": {why}." if why else "."))
    return int(x)


PRESETS: dict[str, dict] = {
    # About 10 minutes with 2 workers on a 2-core machine (measured; see RESULTS.md).
    "quick": dict(datasets=["digits", "mnist1d"], hidden=[256, 256], sparsities=[0.5, 0.9], dropouts=[0.5],
                  seeds=3, budget="both", epochs=30, max_epochs=100, patience=10),
    # The full grid: hours on a laptop; MNIST and Fashion-MNIST are downloaded once.
    "thesis": dict(datasets=["digits", "mnist1d", "breast_cancer", "mnist", "fashion_mnist"], hidden=[256, 256],
                   sparsities=[0.5, 0.8, 0.9, 0.95], dropouts=[0.2, 0.5], seeds=5, budget="both", epochs=50,
                   max_epochs=200, patience=15),
}


def preset(name: str) -> ExperimentSpec:
    """The validated spec of a named preset (quick | thesis)."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return ExperimentSpec(**PRESETS[name]).validated()


# ------------------------------------------------------------------------------------ cells


def expand(spec: ExperimentSpec) -> list[TrainConfig]:
    """Every cell of the grid as a validated TrainConfig (dataset, budget, setting, seed order)."""
    spec = spec.validated()
    return [spec.cell_config(spec, dataset, budget, label, s, p, seed)
            for dataset in spec.datasets
            for budget in spec.budgets_of(spec.budget)
            for label, s, p in spec.settings()
            for seed in range(spec.seeds)]


def label_of(config: dict | TrainConfig) -> str:
    """The grid label of a config: its strategy, or `random` for neuron with random selection."""
    c = config.to_dict() if isinstance(config, TrainConfig) else config
    return "random" if c["strategy"] == "neuron" and c.get("selection") == "random" else c["strategy"]


def budget_of(config: dict | TrainConfig) -> str:
    c = config.to_dict() if isinstance(config, TrainConfig) else config
    return "converge" if c.get("patience") else "equal"


def cell_key(config: dict | TrainConfig) -> str:
    """A stable key of a cell, e.g. 'digits/equal/neuron/s=0.9/p=0/seed=2' (from a validated config)."""
    c = config.to_dict() if isinstance(config, TrainConfig) else config
    return (f"{c['dataset']}/{budget_of(c)}/{label_of(c)}/s={float(c.get('sparsity') or 0):g}"
            f"/p={float(c.get('dropout') or 0):g}/seed={int(c['seed'])}")


def setting_name(label: str, sparsity: float, dropout: float) -> str:
    """'symmetric', 'dropout p=0.5', 'neuron s=0.9'."""
    if label == "symmetric":
        return "symmetric"
    if label == "dropout":
        return f"dropout p={dropout:g}"
    return f"{label} s={sparsity:g}"


def experiment_id(spec: ExperimentSpec) -> str:
    """'exp-' and 10 hex digits of the hash of the validated spec: the same grid, the same id."""
    digest = hashlib.sha256(spec.validated().to_json().encode()).hexdigest()
    return f"exp-{digest[:10]}"


# ----------------------------------------------------------------------- launch and progress
#
# The store records an experiment as events (run_id NULL): "experiment" (its spec, once),
# "experiment_launch" (each launch) and "experiment_stop". The runner's limits (runs per owner,
# queue length) allow only a few queued runs at a time, so cells are submitted by `feed` as room
# frees up: the CLI feeds from its progress loop, the dashboard from a `Feeder` thread that
# outlives the browser tab.

_FEED_LOCK = threading.Lock()  # one feed at a time in a process: no cell is submitted twice


def register(store, spec: ExperimentSpec, owner: str) -> str:
    """Record the spec in the store (once per experiment) so that any process can reopen the
    experiment by id; return the id."""
    spec = spec.validated()
    exp_id = experiment_id(spec)
    if not any(e["id"] == exp_id for e in list_experiments(store)):
        store.add_event(None, "experiment", json.dumps({"id": exp_id, "owner": owner, "spec": spec.to_dict()}))
    return exp_id


def _experiment_events(store) -> dict[str, dict]:
    """{id: {id, owner, spec, created_at, launched_at, launched_by, stopped_at}} from one scan."""
    found: dict[str, dict] = {}
    for event in reversed(store.events(None, limit=None)):  # oldest first
        if not event["kind"].startswith("experiment"):
            continue
        try:
            d = json.loads(event["message"])
            exp_id = d["id"]
            if event["kind"] == "experiment":
                if exp_id not in found:
                    found[exp_id] = {"id": exp_id, "owner": d.get("owner"), "spec": ExperimentSpec.from_dict(d["spec"]),
                                     "created_at": event["at"], "launched_at": None, "launched_by": None,
                                     "stopped_at": None}
            elif exp_id in found and event["kind"] == "experiment_launch":
                found[exp_id].update(launched_at=event["at"], launched_by=d.get("owner"))
            elif exp_id in found and event["kind"] == "experiment_stop":
                found[exp_id]["stopped_at"] = event["at"]
        except (ValueError, KeyError, TypeError, AsymvizError):
            continue
    for e in found.values():
        e["stopped"] = e["stopped_at"] is not None and (e["launched_at"] is None or e["stopped_at"] >= e["launched_at"])
    return found


def list_experiments(store) -> list[dict]:
    """Experiments recorded in the store, newest first: {id, owner, spec (ExperimentSpec),
    created_at, launched_at, launched_by, stopped_at, stopped}."""
    return sorted(_experiment_events(store).values(), key=lambda e: e["created_at"], reverse=True)


def experiment_state(store, exp_id: str) -> dict:
    """One experiment's entry of list_experiments; ExperimentNotFound if it was never launched here."""
    state = _experiment_events(store).get(exp_id)
    if state is None:
        raise ExperimentNotFound(f"No experiment {exp_id!r} was launched in this run store; "
                                 "launch its grid first (the same grid gets the same id).")
    return state


def load_spec(store, exp_id: str) -> ExperimentSpec:
    """The spec of an experiment launched in this store; ExperimentNotFound otherwise."""
    return experiment_state(store, exp_id)["spec"]


def cell_runs(store, exp_id: str) -> dict[str, dict]:
    """{cell key: the run that stands for it}: a finished run if any, else an active one, else
    the newest (failed, stopped, interrupted)."""
    rank = {status: 0 for status in DONE} | {status: 1 for status in ACTIVE}
    best: dict[str, dict] = {}
    for run in store.list_runs(tag=exp_id):  # newest first
        try:
            key = cell_key(run["config"])
        except (KeyError, TypeError, ValueError):
            continue
        old = best.get(key)
        if old is None or rank.get(run["status"], 2) < rank.get(old["status"], 2):
            best[key] = run
    return best


def _needs_run(run: dict | None, state: dict) -> bool:
    """A cell is (re)submitted when it has no run, or only one that failed, stopped or was
    interrupted before the latest launch; never while the experiment is stopped."""
    if state["stopped"]:
        return False
    if run is None:
        return True
    return run["status"] not in DONE + ACTIVE and run["created_at"] < (state["launched_at"] or 0.0)


def check_limits(spec: ExperimentSpec, runner) -> None:
    """Raise (LimitExceeded, one sentence) if a cell breaks a limit no wait can lift (epochs,
    parameters); queue limits are handled by feeding."""
    limits = getattr(runner, "limits", None)
    if limits is None:
        return
    seen = set()
    for config in expand(spec):
        key = (config.dataset, config.epochs)
        if key not in seen:
            seen.add(key)
            limits.check_config(config)


def prepare_data(spec: ExperimentSpec) -> None:
    """Load every dataset of the grid once: a missing download fails here with one sentence
    (DataError) instead of in every cell, and generated data (MNIST-1D) is cached for the workers."""
    from asymviz.data import load_dataset

    for name in spec.validated().datasets:
        load_dataset(name, {}, split_seed=spec.split_seed)


def launch(spec: ExperimentSpec, runner, owner: str = "cli") -> str:
    """Record a launch and submit the cells that need a run, as many as the runner's limits
    allow now (`feed` submits the rest as room frees up); return the experiment id.

    Launching the same grid again resumes it: finished cells are kept, failed, stopped and
    interrupted ones are submitted again."""
    spec = spec.validated()
    check_limits(spec, runner)
    store = runner.store
    exp_id = register(store, spec, owner)
    store.add_event(None, "experiment_launch", json.dumps({"id": exp_id, "owner": owner}))
    feed(runner, exp_id)
    return exp_id


def _feed_order(configs: list[TrainConfig]) -> list[TrainConfig]:
    """Seed by seed: an experiment cut short has whole seeds, so it can already be summarized."""
    return sorted(configs, key=lambda c: c.seed)  # stable: grid order within a seed


def feed(runner, exp_id: str) -> int:
    """Submit cells that need a run until the runner's queue limits say no; return how many."""
    from asymviz.jobs import LimitExceeded

    with _FEED_LOCK:
        store = runner.store
        state = experiment_state(store, exp_id)
        if state["stopped"]:
            return 0
        runs = cell_runs(store, exp_id)
        owner = state["launched_by"] or state["owner"] or "cli"
        n = 0
        for config in _feed_order(expand(state["spec"])):
            if not _needs_run(runs.get(cell_key(config)), state):
                continue
            try:
                runner.submit(config, owner=owner, tag=exp_id)
            except LimitExceeded:
                break
            n += 1
        return n


def stop(runner, exp_id: str, owner) -> int:
    """Stop feeding the experiment and stop its queued and running cells (finished ones stay;
    launching again resumes); return how many runs were asked to stop. Only the one who last
    launched it, or owners.ADMIN (the CLI, the Instructor page), may: NotOwner otherwise, and
    nothing is stopped."""
    from asymviz.jobs import NotOwner
    from asymviz.owners import ADMIN

    state = experiment_state(runner.store, exp_id)
    launcher = state["launched_by"] or state["owner"]
    if owner is not ADMIN and not (isinstance(owner, str) and owner and owner == launcher):
        raise NotOwner(f"Experiment {exp_id} was launched by {launcher}; only they can stop it.")
    runner.store.add_event(None, "experiment_stop",
                           json.dumps({"id": exp_id, "owner": None if owner is ADMIN else owner}))
    n = 0
    for run in runner.store.list_runs(tag=exp_id, status=ACTIVE):
        if owner is ADMIN or run["owner"] == owner:  # cells queued by an earlier launcher stay theirs
            runner.stop(run["id"], owner=owner)
            n += 1
    return n


def progress(store, exp_id: str, now: float | None = None) -> dict:
    """{done, total, running, queued, pending, failed, eta_s, elapsed_s, complete, stopped}.

    done counts cells with a finished (or diverged) run; pending those still to be submitted;
    failed those whose run failed, stopped or was interrupted, and those a stop left unsubmitted
    (launch again to redo them).
    eta_s estimates the time left from the durations of finished cells of the same dataset and
    budget, shared over the cells running now (None while unknown)."""
    now = time.time() if now is None else now
    state = experiment_state(store, exp_id)
    keys = [cell_key(c) for c in expand(state["spec"])]
    runs = cell_runs(store, exp_id)
    count = {"done": 0, "running": 0, "queued": 0, "pending": 0, "failed": 0}
    durations: dict[tuple, list[float]] = {}
    for key in keys:
        run = runs.get(key)
        if _needs_run(run, state):
            count["pending"] += 1
        elif run is None:  # never submitted, and the experiment was stopped
            count["failed"] += 1
        elif run["status"] in DONE:
            count["done"] += 1
        elif run["status"] in ACTIVE:
            count[run["status"]] += 1
        else:
            count["failed"] += 1
        if run and run["status"] == "finished" and run.get("started_at") and run.get("finished_at"):
            durations.setdefault(tuple(key.split("/")[:2]), []).append(run["finished_at"] - run["started_at"])
    all_durations = [d for ds in durations.values() for d in ds]
    left = count["running"] + count["queued"] + count["pending"]
    eta = 0.0 if left == 0 else None
    # workers busy on this experiment: running its cells now, or finished one in the last 2 minutes
    workers = {(r.get("worker_host"), r.get("worker_pid")) for r in runs.values()
               if r["status"] == "running" or (r.get("finished_at") or 0) > now - 120}
    if left and all_durations and workers:
        work = 0.0
        for key in keys:
            run = runs.get(key)
            active = run is not None and run["status"] in ACTIVE
            if not (active or _needs_run(run, state)):
                continue
            ds = durations.get(tuple(key.split("/")[:2])) or all_durations
            todo = 1.0 - float(run.get("progress") or 0.0) if active and run["status"] == "running" else 1.0
            work += float(np.mean(ds)) * min(1.0, max(0.0, todo))
        eta = work / len(workers)
    started = [r["started_at"] for r in runs.values() if r.get("started_at")]
    ended = [r.get("finished_at") or now for r in runs.values() if r.get("started_at")]
    end = now if left else max(ended, default=now)  # a finished experiment's clock stops at its last run
    return {**count, "total": len(keys), "eta_s": eta, "elapsed_s": (end - min(started)) if started else 0.0,
            "complete": left == 0, "stopped": state["stopped"]}


class Feeder:
    """Feeds every launched, unstopped experiment of a runner's store from a daemon thread, so
    an experiment keeps going when the browser tab that launched it is closed.

        feeder = Feeder(runner).start()     # the dashboard keeps one per server (st.cache_resource)
    """

    def __init__(self, runner, every: float = 1.0):
        self.runner, self.every = runner, every
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._complete: set[tuple] = set()  # (id, launched_at) of experiments with nothing left

    def start(self) -> "Feeder":
        if self._thread is None or not self._thread.is_alive():
            self._halt.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True, name="asymviz-experiment-feeder")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def feed_all(self) -> int:
        """One pass over the store's experiments; how many runs were submitted."""
        n = 0
        for e in list_experiments(self.runner.store):
            mark = (e["id"], e["launched_at"])
            if e["stopped"] or e["launched_at"] is None or mark in self._complete:
                continue
            n += feed(self.runner, e["id"])
            if progress(self.runner.store, e["id"])["complete"]:
                self._complete.add(mark)
        return n

    def _loop(self) -> None:
        from asymviz.jobs import Trouble
        from asymviz.store import StoreReplaced, store_advice

        trouble = Trouble("experiment feeder")
        pause = self.every
        while not self._halt.wait(pause):
            try:
                self.feed_all()
                trouble.recovered()
                pause = self.every
            except StoreReplaced:  # for good in this process; every page says so (ui_common)
                return
            except Exception as exc:  # a failing store, a deleted run: logged once, tried again later
                pause = max(self.every, trouble.failed(exc, store_advice(self.runner.store.path, exc)))


# ---------------------------------------------------------------------------------- results

MEDIAN_SAMPLE = 400  # step records per run read for the median step times
_MEDIANS: dict[tuple, tuple] = {}  # (store path, run id) -> medians of a finished run (they never change)


def step_medians(store, run: dict) -> tuple[float | None, float | None]:
    """(backward ms, step ms): medians over the run's step records after the warm-up steps
    (at most MEDIAN_SAMPLE of them, spread over the run), or the summary's means when the
    store holds no step records. A median ignores the spikes a shared machine adds to a
    few steps (another process took the core), which dominate a mean on a busy machine."""
    key = (str(store.path), run["id"])
    if key in _MEDIANS:
        return _MEDIANS[key]
    from statistics import median

    from asymviz.train import WARMUP_STEPS

    steps = [r for r in store.steps_downsampled(run["id"], MEDIAN_SAMPLE) if r.get("step", 0) > WARMUP_STEPS]
    out = []
    for name in ("backward", "step"):
        values = [r[f"time/{name}_ms"] for r in steps if _finite(r.get(f"time/{name}_ms"))]
        out.append(median(values) if values else (run.get("summary") or {}).get(f"{name}_ms_mean"))
    if run["status"] in DONE and store.path != ":memory:":  # in-memory stores share a path: no cache
        _MEDIANS[key] = tuple(out)
    return tuple(out)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


RESULT_COLUMNS = ["cell", "dataset", "budget", "strategy", "sparsity", "dropout", "seed", "setting", "run_id",
                  "status", "error", "test_acc", "val_acc", "best_val_acc", "model_val_acc", "train_acc", "gap",
                  "best_gap", "model_gap", "best_epoch", "epochs", "backward_ms", "step_ms", "forward_ms_mean",
                  "backward_ms_mean", "optimizer_ms_mean", "step_ms_mean", "duration_s"]


def collect(store, exp_id: str) -> pd.DataFrame:
    """One row per cell that has a run (see RESULT_COLUMNS), in grid order.

    model_gap and model_val_acc belong to the model whose test accuracy is reported: the final
    epoch's for the equal budget, the best epoch's for the converge budget. backward_ms and
    step_ms are the run's median step times (see step_medians); the *_mean columns are the
    means the training loop reports."""
    spec = load_spec(store, exp_id)
    runs = cell_runs(store, exp_id)
    rows = []
    for config in expand(spec):
        key = cell_key(config)
        run = runs.get(key)
        if run is None:
            continue
        c, s = run["config"], run.get("summary") or {}
        budget = budget_of(c)
        backward, step = step_medians(store, run) if run["status"] in DONE else (None, None)
        rows.append({
            "cell": key, "dataset": c["dataset"], "budget": budget, "strategy": label_of(c),
            "sparsity": float(c.get("sparsity") or 0.0), "dropout": float(c.get("dropout") or 0.0),
            "seed": int(c["seed"]), "setting": setting_name(label_of(c), float(c.get("sparsity") or 0),
                                                            float(c.get("dropout") or 0)),
            "run_id": run["id"], "status": run["status"], "error": run.get("error"),
            "test_acc": s.get("test_acc"), "val_acc": s.get("val_acc"), "best_val_acc": s.get("best_val_acc"),
            "model_val_acc": s.get("val_acc") if budget == "equal" else s.get("best_val_acc"),
            "train_acc": s.get("train_acc"), "gap": s.get("gap"), "best_gap": s.get("best_gap"),
            "model_gap": s.get("gap") if budget == "equal" else s.get("best_gap"),
            "best_epoch": s.get("best_epoch"), "epochs": s.get("epochs"),
            "backward_ms": backward, "step_ms": step,
            "forward_ms_mean": s.get("forward_ms_mean"), "backward_ms_mean": s.get("backward_ms_mean"),
            "optimizer_ms_mean": s.get("optimizer_ms_mean"), "step_ms_mean": s.get("step_ms_mean"),
            "duration_s": (run["finished_at"] - run["started_at"])
            if run.get("finished_at") and run.get("started_at") else None,
        })
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    numeric = RESULT_COLUMNS[RESULT_COLUMNS.index("test_acc"):]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    return df


# ------------------------------------------------------------------------------- statistics


def mean_ci(values: Iterable[float], level: float = LEVEL) -> tuple[int, float, float, float]:
    """(n, mean, lo, hi): the t interval mean +- t_{(1+level)/2, n-1} * sd / sqrt(n) of the finite
    values (lo = hi = NaN when n < 2)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return 1, mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return n, mean, mean - half, mean + half


def paired_t(x: Iterable[float], y: Iterable[float], level: float = LEVEL) -> dict:
    """Paired comparison of x against y (same order = same seed; pairs with a missing value are
    dropped): {n, diff (mean of x - y), lo, hi (t interval of the mean difference), p (two-sided
    paired t-test)}. With no spread at all, p is 0 for a nonzero difference and 1 for none."""
    from scipy import stats

    d = [a - b for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    n, mean, lo, hi = mean_ci(d, level)
    p = math.nan
    if n >= 2:
        sd = float(np.std(d, ddof=1))
        if sd == 0:
            p = 0.0 if mean != 0 else 1.0
        else:
            t = mean / (sd / math.sqrt(n))
            p = float(2 * stats.t.sf(abs(t), n - 1))
    return {"n": n, "diff": mean, "lo": lo, "hi": hi, "p": p}


@dataclass(frozen=True)
class Claim:
    number: int
    text: str  # "reduces overfitting"
    metric: str  # column of collect()
    better: str  # "lower" | "higher"
    margin: float  # differences inside +-margin do not matter
    relative: bool = False  # margin is a fraction of the baseline's mean


CLAIMS = (
    Claim(1, "reduces overfitting", "model_gap", "lower", 0.01),
    Claim(2, "reaches better accuracy", "test_acc", "higher", 0.01),
    Claim(3, "reduces backprop time", "backward_ms", "lower", 0.05, relative=True),
)
VERDICTS = ("holds", "does not hold", "inconclusive")


def judge(claim: Claim, n: int, lo: float, hi: float, baseline_mean: float = math.nan) -> tuple[str, str]:
    """(verdict, reason) of one claim from the interval [lo, hi] of the paired difference; the
    rules are in this module's docstring."""
    if n < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"inconclusive at {n} seeds", "fewer than 2 paired seeds"
    margin = claim.margin * abs(baseline_mean) if claim.relative else claim.margin
    better = hi < 0 if claim.better == "lower" else lo > 0
    worse = lo > 0 if claim.better == "lower" else hi < 0
    if better:
        return "holds", f"{claim.better} than dropout, the interval excludes 0"
    if worse:
        return "does not hold", f"{'higher' if claim.better == 'lower' else 'lower'} than dropout, the interval excludes 0"
    if math.isfinite(margin) and -margin < lo and hi < margin:
        return "does not hold", f"no difference beyond +-{margin:.3g}"
    return f"inconclusive at {n} seeds", "the interval includes 0"


_KEYS = ["dataset", "budget", "strategy", "sparsity", "dropout"]
_SUMMARY_METRICS = ["test_acc", "best_val_acc", "model_val_acc", "gap", "best_gap", "model_gap", "epochs",
                    "backward_ms", "step_ms"]


def _order(df: pd.DataFrame) -> pd.DataFrame:
    rank = {label: i for i, label in enumerate(LABELS)}
    key = df["strategy"].map(rank).astype(float) * 10 + df["sparsity"] + df["dropout"]
    budget = df["budget"].map({b: i for i, b in enumerate(BUDGETS)})
    return (df.assign(_o=key, _b=budget).sort_values(["dataset", "_b", "_o"], kind="stable")
            .drop(columns=["_o", "_b"]))


def summarize(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables of a collect() frame:

    settings  one row per (dataset, budget, setting): n, n_failed, and mean / ci_lo / ci_hi of
              each metric; backward and step speedup versus symmetric (ratio of means);
    paired    one row per (dataset, budget, setting, dropout baseline): the paired difference
              setting - baseline over common seeds of test_acc, model_gap and backward_ms
              (diff, lo, hi, p, n), `reference` marking the baseline the verdicts use, and the
              verdict of each claim (claim1..claim3, with why1..why3)."""
    ok = df[df["status"].isin(DONE)] if len(df) else df
    rows = []
    for keys, g in df.groupby(_KEYS, sort=False):
        good = g[g["status"].isin(DONE)]
        row = dict(zip(_KEYS, keys))
        row["setting"] = setting_name(row["strategy"], row["sparsity"], row["dropout"])
        row["n"] = int(good["test_acc"].notna().sum())
        row["n_failed"] = int(len(g) - len(good))
        row["n_diverged"] = int((g["status"] == "diverged").sum())
        for metric in _SUMMARY_METRICS:
            _, row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = mean_ci(good[metric].tolist())
        rows.append(row)
    settings = pd.DataFrame(rows)
    if len(settings):
        settings = _order(settings).reset_index(drop=True)
        for what in ("backward_ms", "step_ms"):
            sym = settings[settings["strategy"] == "symmetric"].set_index(["dataset", "budget"])[what]
            ref = [sym.get((d, b), math.nan) for d, b in zip(settings["dataset"], settings["budget"])]
            settings[f"{what.split('_')[0]}_speedup"] = np.asarray(ref, dtype=float) / settings[what]
        settings["reference"] = False
        for (dataset, budget), g in settings[settings["strategy"] == "dropout"].groupby(["dataset", "budget"]):
            best = g["model_val_acc"].fillna(-1).idxmax()
            settings.loc[best, "reference"] = True

    paired = []
    for (dataset, budget), g in ok.groupby(["dataset", "budget"], sort=False):
        baselines = g[g["strategy"] == "dropout"]
        for p, base in baselines.groupby("dropout"):
            base = base.set_index("seed")
            is_ref = bool(len(settings) and settings[(settings["dataset"] == dataset) & (settings["budget"] == budget)
                                                     & (settings["strategy"] == "dropout")
                                                     & (settings["dropout"] == p)]["reference"].any())
            for keys, other in g[g["strategy"] != "dropout"].groupby(_KEYS, sort=False):
                other = other.set_index("seed")
                seeds = sorted(set(other.index) & set(base.index))
                row = dict(zip(_KEYS, keys))
                row["setting"] = setting_name(row["strategy"], row["sparsity"], row["dropout"])
                row["baseline"] = setting_name("dropout", 0.0, p)
                row["baseline_dropout"] = p
                row["reference"] = is_ref
                for claim in CLAIMS:
                    m = claim.metric
                    r = paired_t(other.loc[seeds, m].tolist(), base.loc[seeds, m].tolist())
                    for k, v in r.items():
                        row[f"{m}_{k}"] = v
                    verdict, why = judge(claim, r["n"], r["lo"], r["hi"], float(base[m].mean()))
                    row[f"claim{claim.number}"], row[f"why{claim.number}"] = verdict, why
                paired.append(row)
    paired = pd.DataFrame(paired)
    if len(paired):
        paired = _order(paired).reset_index(drop=True)
    return {"settings": settings, "paired": paired}


def verdicts(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The headline: one row per (dataset, budget, claim) with the verdict of the asymmetric
    setting with the highest mean validation accuracy against the reference dropout baseline,
    and in how many asymmetric settings the claim holds (holds / of)."""
    settings, paired = tables["settings"], tables["paired"]
    columns = ["dataset", "budget", "claim", "verdict", "setting", "baseline", "metric", "diff", "lo", "hi", "p",
               "n", "holds", "fails", "of", "why"]
    rows = []
    if not len(settings):
        return pd.DataFrame(rows, columns=columns)
    for (dataset, budget), g in settings.groupby(["dataset", "budget"], sort=False):
        candidates = g[g["strategy"].isin(ASYMMETRIC) & (g["n"] > 0) & g["model_val_acc"].notna()]
        pick = candidates.loc[candidates["model_val_acc"].idxmax()] if len(candidates) else None
        ref = g[g["reference"]]
        baseline = ref.iloc[0]["setting"] if len(ref) else "dropout"
        mine = paired[(paired["dataset"] == dataset) & (paired["budget"] == budget) & paired["reference"]] \
            if len(paired) else paired
        pool = mine[mine["strategy"].isin(ASYMMETRIC)] if len(mine) else mine
        for claim in CLAIMS:
            m = claim.metric
            row = {"dataset": dataset, "budget": budget, "claim": f"{claim.number}. {claim.text}",
                   "setting": None if pick is None else pick["setting"], "baseline": baseline, "metric": m,
                   "diff": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan, "n": 0,
                   "holds": int((pool[f"claim{claim.number}"] == "holds").sum()) if len(pool) else 0,
                   "fails": int((pool[f"claim{claim.number}"] == "does not hold").sum()) if len(pool) else 0,
                   "of": len(pool)}
            hit = mine[mine["setting"] == row["setting"]] if len(mine) else mine
            if pick is None or not len(hit):
                row["verdict"], row["why"] = "inconclusive at 0 seeds", "no finished runs to compare"
            else:
                h = hit.iloc[0]
                row.update(diff=h[f"{m}_diff"], lo=h[f"{m}_lo"], hi=h[f"{m}_hi"], p=h[f"{m}_p"], n=int(h[f"{m}_n"]),
                           verdict=h[f"claim{claim.number}"], why=h[f"why{claim.number}"])
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def curves(store, df: pd.DataFrame, dataset: str, budget: str, sparsity: float | None = None,
           seed: int | None = None) -> pd.DataFrame:
    """Learning curves of one cell of the grid, every setting overlaid: rows (setting, strategy,
    epoch, train_acc, val_acc, gap), averaged over seeds (or of one seed). Settings with a
    sparsity other than `sparsity` are left out (symmetric and dropout are always in)."""
    sel = df[(df["dataset"] == dataset) & (df["budget"] == budget) & df["status"].isin(DONE)]
    if sparsity is not None:
        sel = sel[~sel["strategy"].isin(SPARSE) | np.isclose(sel["sparsity"], sparsity)]
    if seed is not None:
        sel = sel[sel["seed"] == seed]
    rows = []
    for run in sel.itertuples():
        for r in store.epochs(int(run.run_id)):
            rows.append({"setting": run.setting, "strategy": run.strategy, "epoch": r["epoch"],
                         "train_acc": r.get("train/acc"), "val_acc": r.get("val/acc"), "gap": r.get("gap")})
    out = pd.DataFrame(rows, columns=["setting", "strategy", "epoch", "train_acc", "val_acc", "gap"])
    if not len(out):
        return out
    return out.groupby(["setting", "strategy", "epoch"], sort=False, as_index=False)[
        ["train_acc", "val_acc", "gap"]].mean()


# ----------------------------------------------------------------------------------- report


def _num(x, spec: str = ".3f") -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if not math.isfinite(x) else format(x, spec)


def _interval(mean, lo, hi, spec: str = ".3f") -> str:
    if not math.isfinite(float(lo if lo is not None else math.nan)):
        return _num(mean, spec)
    return f"{_num(mean, spec)} [{_num(lo, spec)}, {_num(hi, spec)}]"


def _p(p) -> str:
    try:
        p = float(p)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def display_tables(tables: dict[str, pd.DataFrame], verdict_table: pd.DataFrame) -> dict:
    """Human-readable frames for the report and the dashboard: {"verdicts": frame,
    (dataset, budget): {"settings": frame, "paired": frame, "baseline": str}}."""
    out: dict = {}
    v = verdict_table
    out["verdicts"] = pd.DataFrame({
        "dataset": v["dataset"], "budget": v["budget"], "claim": v["claim"], "verdict": v["verdict"],
        "asymmetric setting (best validation)": v["setting"].fillna("-"), "vs": v["baseline"],
        "difference [95 % CI]": [_interval(d, lo, hi, "+.4f" if m != "backward_ms" else "+.3f")
                                 for d, lo, hi, m in zip(v["diff"], v["lo"], v["hi"], v["metric"])],
        "p": [_p(p) for p in v["p"]], "seeds": v["n"],
        "holds in": [f"{h} of {o} settings" for h, o in zip(v["holds"], v["of"])],
    })
    s, pr = tables["settings"], tables["paired"]
    for (dataset, budget), g in (s.groupby(["dataset", "budget"], sort=False) if len(s) else []):
        ref = g[g["reference"]]
        frame = pd.DataFrame({
            "setting": g["setting"], "n": g["n"],
            "test acc": [_interval(*r) for r in zip(g["test_acc"], g["test_acc_lo"], g["test_acc_hi"])],
            "best val acc": [_interval(*r) for r in zip(g["best_val_acc"], g["best_val_acc_lo"], g["best_val_acc_hi"])],
            "gap (end)": [_interval(*r) for r in zip(g["gap"], g["gap_lo"], g["gap_hi"])],
            "gap (best epoch)": [_interval(*r) for r in zip(g["best_gap"], g["best_gap_lo"], g["best_gap_hi"])],
            "epochs": [_num(x, ".1f") for x in g["epochs"]],
            "backward ms": [_interval(m, lo, hi, ".3f") for m, lo, hi in zip(g["backward_ms"], g["backward_ms_lo"],
                                                                             g["backward_ms_hi"])],
            "backward speedup": [_num(x, ".2f") + "x" if math.isfinite(x) else "-" for x in g["backward_speedup"]],
            "step speedup": [_num(x, ".2f") + "x" if math.isfinite(x) else "-" for x in g["step_speedup"]],
        })
        failed = [f"{n}" if n else "" for n in g["n_failed"]]
        if any(failed):
            frame["failed"] = failed
        part = {"settings": frame, "baseline": ref.iloc[0]["setting"] if len(ref) else None}
        mine = pr[(pr["dataset"] == dataset) & (pr["budget"] == budget) & pr["reference"]] if len(pr) else pr
        part["paired"] = pd.DataFrame({
            "setting": mine["setting"] if len(mine) else [],
            **{f"Δ {label} [95 % CI]": [_interval(d, lo, hi, "+.4f" if m != "backward_ms" else "+.3f")
                                       for d, lo, hi in zip(mine[f"{m}_diff"], mine[f"{m}_lo"], mine[f"{m}_hi"])]
               if len(mine) else []
               for label, m in (("test acc", "test_acc"), ("gap", "model_gap"), ("backward ms", "backward_ms"))},
            **{f"p ({label})": [_p(x) for x in mine[f"{m}_p"]] if len(mine) else []
               for label, m in (("acc", "test_acc"), ("gap", "model_gap"), ("ms", "backward_ms"))},
            **{f"claim {c.number}": mine[f"claim{c.number}"] if len(mine) else [] for c in CLAIMS},
        })
        out[(dataset, budget)] = part
    return out


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of a frame of strings and numbers."""
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


RULES = """\
**How to read the verdicts.** For each claim the asymmetric setting with the highest mean validation
accuracy (neuron, excessive or refined at some sparsity, picked on validation, never on test) is compared
with the dropout baseline (the dropout p with the highest mean validation accuracy) on the same seeds.
d is the mean paired difference, asymmetric minus dropout, with its 95 % t interval:
claim 1 uses the generalization gap (train minus validation accuracy) of the model whose test accuracy
is reported (the last epoch for the equal budget, the best epoch for the converge budget), claim 2 the
test accuracy, claim 3 the backward milliseconds per step (each run's median step: robust to the
spikes other processes cause on a shared machine).
*holds*: the interval lies wholly on the claimed side of 0. *does not hold*: it lies wholly on the
other side, or wholly within ±0.01 (accuracy, gap) or ±5 % of dropout's time: no difference that
matters. *inconclusive at n seeds*: anything else; more seeds narrow the interval.
"holds in" counts the asymmetric settings (all strategies and sparsities) for which the claim holds.
p is the two-sided paired t-test p-value; it is not corrected for the many settings compared."""


def machine_line() -> str:
    """Where the numbers were measured: CPU, cores, torch."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def report_markdown(spec: ExperimentSpec, exp_id: str, prog: dict, shown: dict, notes: Iterable[str] = ()) -> str:
    """The report as Markdown."""
    from asymviz import __version__

    lines = [f"# asymviz experiment {exp_id}", "",
             f"{spec.describe()}", "",
             f"Cells: {prog['done']} of {prog['total']} done"
             + (f", {prog['failed']} failed or stopped" if prog["failed"] else "")
             + (f", {prog['running'] + prog['queued'] + prog['pending']} still to run" if not prog["complete"] else "")
             + ".",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} by asymviz {__version__} on {machine_line()}.", ""]
    lines += list(notes)
    lines += ["## Verdicts", "", markdown_table(shown["verdicts"]), "", RULES, ""]
    for dataset in spec.datasets:
        lines += [f"## {dataset}", ""]
        for budget in spec.budgets_of(spec.budget):
            part = shown.get((dataset, budget))
            if part is None:
                continue
            title = (f"equal budget, {spec.epochs} epochs" if budget == "equal" else
                     f"converge budget, early stopping with patience {spec.patience} (at most {spec.max_epochs} epochs)")
            lines += [f"### {dataset}, {title}", "",
                      "Mean and 95 % t interval over seeds. backward ms is each run's median step; speedups are "
                      "ratios of those times against symmetric (above 1: faster).", "",
                      markdown_table(part["settings"]), ""]
            if part["baseline"] and len(part["paired"]):
                lines += [f"Paired against {part['baseline']} (same seeds), asymmetric minus dropout:", "",
                          markdown_table(part["paired"]), ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#0f172a}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}th,td{border:1px solid #cbd5e1;padding:3px 8px;text-align:left}
th{background:#f1f5f9}td.holds{background:#dcfce7}td.fails{background:#fee2e2}td.inconclusive{background:#fef9c3}
p.small{font-size:13px;color:#475569}"""


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for x in row:
            text = str(x)
            cls = ("holds" if text == "holds" else "fails" if text == "does not hold"
                   else "inconclusive" if text.startswith("inconclusive") else "")
            cells.append(f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def report_figures(store, spec: ExperimentSpec, df: pd.DataFrame, tables: dict) -> list[tuple[str, Any]]:
    """(title, Figure) pairs of the report: per dataset accuracy, gap and speedup against
    sparsity, and the learning curves of the headline cell."""
    from asymviz import figures_experiment as fx

    out = []
    settings = tables["settings"]
    for dataset in spec.datasets:
        s = settings[settings["dataset"] == dataset] if len(settings) else settings
        if not len(s):
            continue
        out.append((dataset, fx.metric_vs_sparsity(s, "test_acc", f"{dataset}: test accuracy vs sparsity")))
        out.append((dataset, fx.metric_vs_sparsity(s, "model_gap", f"{dataset}: generalization gap vs sparsity")))
        out.append((dataset, fx.speedup_vs_sparsity(s, f"{dataset}: backward speedup vs symmetric")))
        budget = spec.budgets_of(spec.budget)[0]
        sp = spec.sparsities[len(spec.sparsities) // 2] if spec.sparsities else None
        c = curves(store, df, dataset, budget, sp)
        out.append((dataset, fx.learning_curves(c, f"{dataset}, {budget} budget"
                                                + (f", sparsity {sp:g}" if sp is not None else "")
                                                + ": learning curves (mean over seeds)")))
    return out


def report_html(spec: ExperimentSpec, exp_id: str, markdown_head: str, shown: dict, figs: list) -> str:
    """A standalone HTML report: tables and plotly figures, plotly.js embedded once (works offline)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>asymviz {exp_id}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>asymviz experiment {html.escape(exp_id)}</h1>",
             markdown_head, "<h2>Verdicts</h2>", _html_table(shown["verdicts"]),
             "<p class='small'>" + html.escape(RULES.replace("*", "")) + "</p>"]
    first = True
    for dataset in spec.datasets:
        parts.append(f"<h2>{html.escape(dataset)}</h2>")
        for title, fig in figs:
            if title == dataset:
                parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
                first = False
        for budget in spec.budgets_of(spec.budget):
            part = shown.get((dataset, budget))
            if part is None:
                continue
            parts.append(f"<h3>{html.escape(dataset)}, {budget} budget</h3>")
            parts.append(_html_table(part["settings"]))
            if part["baseline"] and len(part["paired"]):
                parts.append(f"<p>Paired against {html.escape(part['baseline'])}, asymmetric minus dropout:</p>")
                parts.append(_html_table(part["paired"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _jsonable(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records")) if len(frame) else []


def report_data(store, exp_id: str) -> dict:
    """Everything a report shows: {spec, progress, runs, tables, verdicts, shown}."""
    spec = load_spec(store, exp_id)
    df = collect(store, exp_id)
    tables = summarize(df)
    v = verdicts(tables)
    return {"spec": spec, "progress": progress(store, exp_id), "runs": df, "tables": tables, "verdicts": v,
            "shown": display_tables(tables, v)}


def render_report(store, exp_id: str, notes: Iterable[str] = (), data: dict | None = None) -> dict[str, str]:
    """The report files as text, {file name: content}: runs.csv (one row per cell run),
    summary.csv, paired.csv, verdicts.csv, report.md, report.html (standalone) and report.json."""
    d = data or report_data(store, exp_id)
    files = {"runs.csv": d["runs"].to_csv(index=False), "summary.csv": d["tables"]["settings"].to_csv(index=False),
             "paired.csv": d["tables"]["paired"].to_csv(index=False), "verdicts.csv": d["verdicts"].to_csv(index=False)}
    text = report_markdown(d["spec"], exp_id, d["progress"], d["shown"], notes)
    files["report.md"] = text
    head = "".join(f"<p>{html.escape(line)}</p>" for line in text.split("\n## Verdicts")[0].splitlines()[1:] if line)
    figs = report_figures(store, d["spec"], d["runs"], d["tables"])
    files["report.html"] = report_html(d["spec"], exp_id, head, d["shown"], figs)
    files["report.json"] = json.dumps(report_json(d, exp_id), indent=1)
    return files


def write_report(store, exp_id: str, out_dir: str | os.PathLike, notes: Iterable[str] = ()) -> dict[str, str]:
    """Write the files of render_report into out_dir; return {file name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in render_report(store, exp_id, notes).items():
        (out / name).write_text(text, encoding="utf-8")
        paths[name] = str(out / name)
    return paths


def report_json(d: dict, exp_id: str) -> dict:
    """The report for machines (NaN becomes null)."""
    return {"experiment": exp_id, "spec": d["spec"].to_dict(), "progress": d["progress"],
            "verdicts": _jsonable(d["verdicts"]), "settings": _jsonable(d["tables"]["settings"]),
            "paired": _jsonable(d["tables"]["paired"])}
