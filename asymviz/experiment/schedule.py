"""Running an experiment: launch, the two stages, stop, progress, and the width sweep.

    exp_id = launch(spec, runner, owner="ana")    # records it, queues stage 1 (and the meProp anchor)
    advance(store, exp_id)                        # queues stage 2 of every arm whose selection is done
    progress(store, exp_id)                       # {"done": 37, "total": 598, "eta_s": 212.0, ...}
    measure_speed(store, exp_id)                  # the width sweep, once training is over
    stop(runner, exp_id, owner="ana")             # launching the same grid again resumes

Experiments live in the store's `experiments` table and each run's cell in `experiment_runs`.
A whole stage is queued at once: the store's claim order is fair across owners, so a big grid
does not hold up anyone else's runs, and its cells do not count against the per-person queue
limit (an owner may have one unfinished experiment at a time where the limits apply).

Stage 1 (selection) runs every candidate setting of every arm on the selection seeds. When all
of an arm's selection runs of a group are done, its setting with the highest mean selection
metric (the validation accuracy of the tested model: the last epoch's for the equal budget, the
best epoch's for the converge budget) is chosen, ties to the first candidate, and stage 2
(confirmation) queues that setting on fresh seeds. Only stage 2 is tested. `advance` makes that
step; the CLI calls it while it waits and the dashboard from one server-side thread (`Advancer`).
"""

from __future__ import annotations

import math
import os
import platform
import threading
import time
from typing import Iterable

from asymviz.errors import AsymvizError
from asymviz.experiment.spec import (ExperimentSpec, Arm, Cell, Group, Setting, MEPROP, experiment_id)

DONE = ("finished", "diverged")  # a cell with such a run is not run again
ACTIVE = ("queued", "running")


class ExperimentNotFound(AsymvizError):
    """No experiment with this id was launched in this run store."""


# --------------------------------------------------------------------------- the record


def register(store, spec: ExperimentSpec, owner: str) -> str:
    """Record the spec in the store (once per experiment); return its id."""
    spec = spec.validated()
    exp_id = experiment_id(spec)
    store.add_experiment(exp_id, owner, spec.to_dict())
    return exp_id


def _state(row: dict) -> dict:
    try:
        spec = ExperimentSpec.from_dict(row["spec"]).validated() if isinstance(row["spec"], dict) else None
    except (AsymvizError, TypeError):
        spec = None
    launched, stopped = row["launched_at"], row["stopped_at"]
    return {**row, "spec": spec, "legacy": spec is None,
            "stopped": stopped is not None and (launched is None or stopped >= launched)}


def list_experiments(store, include_legacy: bool = False) -> list[dict]:
    """Experiments newest first: {id, owner, spec (ExperimentSpec), created_at, launched_at,
    launched_by, stopped_at, stopped, speed, legacy}. Experiments of earlier asymviz versions
    (another protocol: their spec no longer reads) only with include_legacy."""
    out = [_state(row) for row in store.experiments()]
    return out if include_legacy else [e for e in out if not e["legacy"]]


def experiment_state(store, exp_id: str) -> dict:
    """One experiment's entry of list_experiments; ExperimentNotFound otherwise."""
    rows = store.experiments(exp_id) if isinstance(exp_id, str) else []
    if not rows:
        raise ExperimentNotFound(f"No experiment {exp_id!r} was launched in this run store; "
                                 "launch its grid first (the same grid gets the same id).")
    state = _state(rows[0])
    if state["legacy"]:
        raise ExperimentNotFound(f"Experiment {exp_id!r} was made by an earlier asymviz with another protocol; "
                                 f"its runs are kept (tag {exp_id} on the Runs page), but it cannot be opened here.")
    return state


def load_spec(store, exp_id: str) -> ExperimentSpec:
    return experiment_state(store, exp_id)["spec"]


def cell_runs(store, exp_id: str) -> dict[str, dict]:
    """{cell key: the run that stands for it}: a finished (or diverged) run if any, else an
    active one, else the newest (failed, stopped, interrupted)."""
    rank = {status: 0 for status in DONE} | {status: 1 for status in ACTIVE}
    best: dict[str, dict] = {}
    for run in store.experiment_runs(exp_id):  # newest first
        old = best.get(run["cell"])
        if old is None or rank.get(run["status"], 2) < rank.get(old["status"], 2):
            best[run["cell"]] = run
    return best


# ------------------------------------------------------------------------- the two stages


def selection_metric(run: dict | None) -> float:
    """The validation accuracy of the tested model (NaN unless the run finished): the last
    epoch's for the equal budget, the best epoch's (the checkpoint tested) for converge."""
    if run is None or run["status"] != "finished":
        return math.nan
    summary, config = run.get("summary") or {}, run["config"]
    value = summary.get("best_val_acc") if config.get("patience") else summary.get("val_acc")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def selection_scores(spec: ExperimentSpec, runs: dict[str, dict], group: Group, arm: Arm,
                     cells: Iterable[Cell] | None = None) -> list[dict]:
    """Per candidate setting of an arm in a group: {setting, values (per selection seed), mean,
    n, done (every selection run of it is finished or diverged)}, in candidate order."""
    by_setting: dict[Setting, list[Cell]] = {}
    for cell in cells if cells is not None else spec.selection_cells():
        if cell.group == group and cell.arm == arm:
            by_setting.setdefault(cell.setting, []).append(cell)
    out = []
    for setting in spec.candidates(arm):
        mine = by_setting.get(setting, [])
        values = [selection_metric(runs.get(c.key)) for c in mine]
        finite = [v for v in values if math.isfinite(v)]
        out.append({"setting": setting, "values": values, "n": len(finite),
                    "mean": sum(finite) / len(finite) if finite else math.nan,
                    "done": all(runs.get(c.key) is not None and runs[c.key]["status"] in DONE for c in mine)})
    return out


def decisions(spec: ExperimentSpec, runs: dict[str, dict]) -> dict[tuple[Group, Arm], Setting | None]:
    """The setting chosen for each (group, arm), or None while its selection runs are not all
    done. An arm with a single candidate is its own choice."""
    cells = spec.selection_cells()
    out = {}
    for group in spec.groups():
        for arm in spec.arms():
            candidates = spec.candidates(arm)
            if len(candidates) == 1:
                out[(group, arm)] = candidates[0]
                continue
            scores = selection_scores(spec, runs, group, arm, cells)
            if not all(s["done"] for s in scores):
                out[(group, arm)] = None
                continue
            best = max(range(len(scores)), key=lambda i: (scores[i]["mean"] if math.isfinite(scores[i]["mean"])
                                                          else -math.inf, -i))
            out[(group, arm)] = scores[best]["setting"]
    return out


def known_cells(spec: ExperimentSpec, runs: dict[str, dict]) -> tuple[list[Cell], list[tuple[Group, Arm]]]:
    """(every cell that can be run now: selection, anchor and the confirmation of decided arms;
    the (group, arm) pairs still waiting for their selection)."""
    cells = spec.selection_cells() + spec.anchor_cells()
    waiting = []
    for (group, arm), setting in decisions(spec, runs).items():
        if setting is None:
            waiting.append((group, arm))
        else:
            cells += spec.confirmation_cells(group, arm, setting)
    return cells, waiting


# ------------------------------------------------------------------------------- launching


def check_limits(spec: ExperimentSpec, runner, owner: str) -> None:
    """Raise (LimitExceeded or DatasetNotOffered, one sentence) if a cell breaks a limit no
    wait can lift (epochs, parameters, the lab's datasets), or if the owner already has an
    unfinished experiment while the runner has a per-person limit."""
    from asymviz.jobs import LimitExceeded

    limits = getattr(runner, "limits", None)
    if limits is None:
        return
    seen = set()
    for cell in spec._first_cells():
        c = cell.config
        key = (c.dataset, tuple(sorted(c.dataset_options.items())), tuple(c.hidden), c.epochs)
        if key not in seen:
            seen.add(key)
            limits.check_config(c)
    if getattr(limits, "max_runs_per_owner", 0):
        exp_id = experiment_id(spec)
        for e in list_experiments(runner.store):
            if e["id"] != exp_id and (e["launched_by"] or e["owner"]) == owner and not e["stopped"] \
                    and e["launched_at"] is not None and not progress(runner.store, e["id"])["complete"]:
                raise LimitExceeded(f"{owner} already has experiment {e['id']} running; this instance allows one "
                                    "unfinished experiment per person, so stop it or wait for it to finish.")


def prepare_data(spec: ExperimentSpec) -> list[dict]:
    """Load every dataset of the grid once, so a missing download fails here with one sentence
    (DataError) and generated data is cached for the workers; what was loaded, per dataset:
    {dataset, name, n_train, n_val, n_test, source (download datasets), origin, skipped}."""
    from asymviz import data

    out = []
    for name, options in spec.validated().datasets_used():
        ds = data.load_dataset(name, options, split_seed=spec.split_seed)
        row = {"dataset": name + (f":{options['limit']}" if "limit" in options else ""), "name": name,
               "n_train": len(ds.y_train), "n_val": len(ds.y_val), "n_test": len(ds.y_test)}
        if data.DATASETS[name].kind == "download":
            row.update(data.source_info(name))
        out.append(row)
    return out


def launch(spec: ExperimentSpec, runner, owner: str = "cli") -> str:
    """Record a launch and queue every cell that needs a run now (stage 1, the anchor, and stage
    2 of arms already decided); return the experiment id. Launching the same grid again resumes
    it: finished cells are kept, failed, stopped and interrupted ones are queued again."""
    spec = spec.validated()
    check_limits(spec, runner, owner)
    from asymviz.experiment.provenance import commit_info

    store = runner.store
    exp_id = register(store, spec, owner)
    now = time.time()
    info = commit_info()
    code = store.experiments(exp_id)[0]["code"] + [{"at": now, "commit": info["commit"], "dirty": info["dirty"]}]
    store.update_experiment(exp_id, launched_at=now, launched_by=owner, code=code)
    advance(store, exp_id)
    return exp_id


def advance(store, exp_id: str) -> int:
    """Queue what can run now (see `launch`): how many runs were queued."""
    state = experiment_state(store, exp_id)
    if state["stopped"] or state["launched_at"] is None:
        return 0
    cells, _ = known_cells(state["spec"], cell_runs(store, exp_id))
    owner = state["launched_by"] or state["owner"]
    return len(store.create_experiment_runs(exp_id, owner, [(c.key, c.config.to_dict()) for c in cells]))


def stop(runner, exp_id: str, owner) -> int:
    """Stop queueing the experiment and stop its queued and running runs (finished ones stay;
    launching again resumes); how many runs were asked to stop. Only the one who last launched
    it, or owners.ADMIN (the CLI, the Instructor page), may: NotOwner otherwise, and nothing is
    stopped."""
    from asymviz.jobs import NotOwner
    from asymviz.owners import ADMIN

    store = runner.store
    state = experiment_state(store, exp_id)
    launcher = state["launched_by"] or state["owner"]
    if owner is not ADMIN and not (isinstance(owner, str) and owner and owner == launcher):
        raise NotOwner(f"Experiment {exp_id} was launched by {launcher}; only they can stop it.")
    store.update_experiment(exp_id, stopped_at=time.time())
    n = 0
    for run in store.experiment_runs(exp_id):
        if run["status"] in ACTIVE and (owner is ADMIN or run["owner"] == owner):
            if hasattr(runner, "stop"):
                runner.stop(run["id"], owner=owner)
            else:
                store.request_stop(run["id"])
            n += 1
    return n


def _needs_run(run: dict | None, state: dict) -> bool:
    if state["stopped"]:
        return False
    if run is None:
        return True
    return run["status"] not in DONE + ACTIVE and run["created_at"] < (state["launched_at"] or 0.0)


def progress(store, exp_id: str, now: float | None = None) -> dict:
    """{done, total, running, queued, pending, waiting, failed, eta_s, elapsed_s, complete,
    stopped, speed}.

    done: cells with a finished (or diverged) run; pending: cells that need a run (queued by
    the next `advance`); waiting: confirmation cells whose arm is still being selected; failed:
    cells whose run failed, stopped or was interrupted, and those a stop or a failed selection
    left without a run (launch again to redo them). complete: no training left to do or to wait
    for. speed: "none" (no width sweep), "pending" or "done". eta_s: time left, from the mean
    duration of finished cells of the same dataset, shared over the workers busy now."""
    now = time.time() if now is None else now
    state = experiment_state(store, exp_id)
    spec = state["spec"]
    runs = cell_runs(store, exp_id)
    cells, waiting = known_cells(spec, runs)
    count = {"done": 0, "running": 0, "queued": 0, "pending": 0, "waiting": 0, "failed": 0}
    durations: dict[str, list[float]] = {}
    todo: list[tuple[str, float]] = []
    for cell in cells:
        run = runs.get(cell.key)
        where = _dataset_key(cell)
        if _needs_run(run, state):
            count["pending"] += 1
            todo.append((where, 1.0))
        elif run is None:
            count["failed"] += 1
        elif run["status"] in DONE:
            count["done"] += 1
        elif run["status"] in ACTIVE:
            count[run["status"]] += 1
            todo.append((where, 1.0 - float(run.get("progress") or 0.0) if run["status"] == "running" else 1.0))
        else:
            count["failed"] += 1
        if run and run["status"] == "finished" and run.get("started_at") and run.get("finished_at"):
            durations.setdefault(where, []).append(run["finished_at"] - run["started_at"])
    blocked = _blocked(spec, runs, state)
    for group, arm in waiting:
        if (group, arm) in blocked:
            count["failed"] += spec.confirmation_seeds
        else:
            count["waiting"] += spec.confirmation_seeds
            todo += [(group.dataset, 1.0)] * spec.confirmation_seeds
    left = count["running"] + count["queued"] + count["pending"] + count["waiting"]
    all_durations = [d for ds in durations.values() for d in ds]
    workers = {(r.get("worker_host"), r.get("worker_pid")) for r in runs.values()
               if r["status"] == "running" or (r.get("finished_at") or 0) > now - 120}
    eta = 0.0 if left == 0 else None
    if left and all_durations and workers:
        mean = {k: sum(v) / len(v) for k, v in durations.items()}
        overall = sum(all_durations) / len(all_durations)
        eta = sum(mean.get(k, overall) * max(0.0, min(1.0, f)) for k, f in todo) / len(workers)
    started = [r["started_at"] for r in runs.values() if r.get("started_at")]
    ended = [r.get("finished_at") or now for r in runs.values() if r.get("started_at")]
    end = now if left else max(ended, default=now)
    speed = "none" if not spec.speed_widths else "done" if state["speed"] else "pending"
    return {**count, "total": spec.n_cells(), "eta_s": eta, "elapsed_s": (end - min(started)) if started else 0.0,
            "complete": left == 0, "stopped": state["stopped"], "speed": speed}


def _dataset_key(cell: Cell) -> str:
    return cell.group.dataset if cell.group is not None else MEPROP["dataset"]


def _blocked(spec: ExperimentSpec, runs: dict[str, dict], state: dict) -> set[tuple[Group, Arm]]:
    """(group, arm) pairs whose selection cannot finish under this launch: a selection run
    failed, stopped or was interrupted after it, or the experiment is stopped."""
    out = set()
    for cell in spec.selection_cells():
        run = runs.get(cell.key)
        if state["stopped"] and (run is None or run["status"] not in DONE):
            out.add((cell.group, cell.arm))
        elif run is not None and run["status"] not in DONE + ACTIVE and not _needs_run(run, state):
            out.add((cell.group, cell.arm))
    return out


# ----------------------------------------------------------------------------- the width sweep


def speed_due(store, exp_id: str) -> bool:
    """Whether the width sweep should run now: the spec has one, it has not been measured, and
    training is over (so the sweep has the machine to itself as far as this experiment goes)."""
    p = progress(store, exp_id)
    return p["speed"] == "pending" and p["complete"] and not p["stopped"]


def measure_speed(store, exp_id: str, threads: int | None = None, say=None) -> dict:
    """Run the width sweep of claim 3 and the meProp timing, store them with the experiment and
    return them: dense and sparse steps interleaved in this process (asymviz.bench), one row per
    (strategy, width, sparsity) with every repeat's forward / backward / optimizer ms."""
    import torch

    from asymviz import bench
    from asymviz.jobs import cpu_count

    spec = load_spec(store, exp_id)
    old_threads = torch.get_num_threads()
    threads = threads or cpu_count()
    torch.set_num_threads(threads)
    busy = store.count(("running",))
    load = _load()
    t0 = time.time()
    rows, meprop_rows = [], []
    try:
        for width in spec.speed_widths:
            for strategy in spec.speed_strategies:
                if say:
                    say(f"width sweep: {strategy} at width {width} ...")
                got = bench.backward_table(widths=[width] * spec.speed_depth, batch=spec.speed_batch,
                                           sparsities=spec.speed_sparsities, strategy=strategy,
                                           conn_sparsity=spec.conn_sparsity if strategy != "neuron" else 0.0,
                                           repeats=spec.speed_repeats, samples=True, optimizer=spec.optimizer)
                rows += [{**r, "width": width} for r in got]
        if spec.meprop:
            for granularity in MEPROP["granularities"]:
                if say:
                    say(f"meProp timing: {granularity} granularity ...")
                got = bench.backward_table(widths=list(MEPROP["hidden"]), batch=MEPROP["batch_size"],
                                           sparsities=list(MEPROP["sparsities"]), strategy="neuron",
                                           granularity=granularity, repeats=spec.speed_repeats, samples=True)
                meprop_rows += [{**r, "width": MEPROP["hidden"][0]} for r in got]
    finally:
        torch.set_num_threads(old_threads)
    result = {"rows": rows, "meprop_rows": meprop_rows, "threads": threads, "wall_s": time.time() - t0,
              "measured_at": t0, "busy_runs": max(busy, store.count(("running",))),
              "load": [load, _load()], "machine": platform.machine()}
    store.update_experiment(exp_id, speed=result)
    return result


def _load() -> float | None:
    """The 1-minute load average (how busy the machine was), where the system has one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------------ the dashboard's helper


class Advancer:
    """Advances every launched, unstopped experiment of a runner's store from a daemon thread
    (queues stage 2 as selections finish, then runs the width sweep), so an experiment keeps
    going when the browser tab that launched it is closed.

        Advancer(runner).start()     # the dashboard keeps one per server (st.cache_resource)
    """

    def __init__(self, runner, every: float = 5.0):
        self.runner, self.every = runner, every
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._settled: set[tuple] = set()  # (id, launched_at) with nothing left to do

    def start(self) -> "Advancer":
        if self._thread is None or not self._thread.is_alive():
            self._halt.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True, name="asymviz-experiment-advancer")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def step(self) -> int:
        """One pass over the store's experiments; how many runs were queued."""
        n = 0
        store = self.runner.store
        for e in list_experiments(store):
            mark = (e["id"], e["launched_at"])
            if e["stopped"] or e["launched_at"] is None or mark in self._settled:
                continue
            n += advance(store, e["id"])
            if speed_due(store, e["id"]):
                measure_speed(store, e["id"])
            p = progress(store, e["id"])
            if p["complete"] and p["speed"] != "pending":
                self._settled.add(mark)
        return n

    def _loop(self) -> None:
        from asymviz.jobs import Trouble
        from asymviz.store import StoreReplaced, store_advice

        trouble = Trouble("experiment advancer")
        pause = self.every
        while not self._halt.wait(pause):
            try:
                self.step()
                trouble.recovered()
                pause = self.every
            except StoreReplaced:  # for good in this process; every page says so (ui_common)
                return
            except Exception as exc:  # a failing store, a deleted run: logged once, tried again later
                pause = max(self.every, trouble.failed(exc, store_advice(self.runner.store.path, exc)))
