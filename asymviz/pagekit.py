"""Helpers the dashboard pages share, with no Streamlit in them (so they are unit-tested).

    params = config_to_query(config)                # TrainConfig dict -> URL query params
    config, problems = config_from_query(params)    # and back; problems: one sentence each
    keep_per_layer([256, 256], 0.9)                 # -> [26, 26]

A run config is data (asymviz.train.TrainConfig); in the dashboard it lives in the URL as one
query parameter per config field (`?dataset=digits&hidden=256,256&seed=0`), so a link
reproduces a run's configuration, seed included. `run=ID` selects a run to watch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from typing import Any, Mapping

from asymviz.config import TRAIN_FIELDS, shown
from asymviz.errors import AsymvizError, FieldError
from asymviz.sparse import keep_count
from asymviz.strategies import STRATEGIES
from asymviz.train import TrainConfig

CONFIG_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
DEFAULTS = TrainConfig().to_dict()
RUN_PARAM = "run"  # ?run=ID selects the run shown on the Train page
LIVE = ("queued", "running")

# "Try it": a small, fast, visual run (a few seconds on a laptop CPU).
TRY_IT_CONFIG = {"dataset": "moons", "hidden": [32, 32], "activation": "relu", "strategy": "neuron",
                 "sparsity": 0.5, "epochs": 40, "batch_size": 32, "lr": 0.01, "seed": 0}


# ------------------------------------------------------------------------- config <-> URL


def config_to_query(config: Mapping[str, Any]) -> dict[str, str]:
    """Every config field as a query-parameter string (defaults included, so a link keeps
    meaning the same run even if a default changes later)."""
    out: dict[str, str] = {}
    for name in CONFIG_FIELDS:
        value = config.get(name, DEFAULTS[name])
        if name == "hidden":
            out[name] = ",".join(str(int(w)) for w in value)
        elif name == "dataset_options":
            if value:
                out[name] = json.dumps(value, sort_keys=True, separators=(",", ":"))
        elif name == "dropout":
            out[name] = "auto" if value is None else f"{float(value):g}"
        elif isinstance(value, bool):
            out[name] = "1" if value else "0"
        elif isinstance(value, float):
            out[name] = f"{value:g}"
        else:
            out[name] = str(value)
    return out


def config_from_query(params: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """(config fields found in the query params, one sentence per value refused). Each value is
    read by its field's rule (asymviz.config.TRAIN_FIELDS: the same answer as the command line's
    flag); a refused one is left out, so the default stands. Only fields present in `params` are
    returned; list values (a repeated parameter) use their last item; unknown parameters are
    ignored."""
    config: dict[str, Any] = {}
    problems: list[str] = []
    for name, field in TRAIN_FIELDS.items():
        if name not in params:
            continue
        raw = params[name]
        if isinstance(raw, (list, tuple)):
            raw = raw[-1] if raw else ""
        try:
            config[name] = field.read(str(raw))
        except AsymvizError as err:
            accepts = err.accepts if isinstance(err, FieldError) else field.accepts
            default = config_to_query(DEFAULTS).get(name) or "value"
            problems.append(f"The link's value {shown(str(raw))} for {name} was not understood, so the "
                            f"default {default} is used; {name} takes {accepts}.")
    return config, problems


def run_from_query(params: Mapping[str, Any]) -> int | None:
    """The run id of `?run=ID`, or None when absent or not a whole number."""
    raw = params.get(RUN_PARAM)
    if isinstance(raw, (list, tuple)):
        raw = raw[-1] if raw else None
    try:
        run_id = int(str(raw))
    except (TypeError, ValueError):
        return None
    return run_id if run_id > 0 else None


def has_config(params: Mapping[str, Any]) -> bool:
    """Whether the query params carry any config field."""
    return any(name in params for name in CONFIG_FIELDS)


def full_config(partial: Mapping[str, Any]) -> dict:
    """The defaults overlaid with `partial` (unknown keys dropped)."""
    return {**DEFAULTS, **{k: v for k, v in partial.items() if k in DEFAULTS}}


def validate(config: Mapping[str, Any]) -> tuple[TrainConfig | None, str | None]:
    """(validated TrainConfig, None) or (None, the sentence of the first problem)."""
    try:
        return TrainConfig.from_dict(dict(config)).validated(), None
    except AsymvizError as err:
        return None, str(err)
    except (TypeError, ValueError) as err:  # a value of the wrong type that validated() did not catch
        return None, f"The configuration is not valid ({err})."


# ----------------------------------------------------------------------------- sentences


def keep_per_layer(hidden: list[int], sparsity: float) -> list[int]:
    """Kept neurons k = max(1, round((1 - s) n)) of each hidden layer."""
    return [keep_count(int(n), float(sparsity)) for n in hidden]


def keep_caption(hidden: list[int], sparsity: float) -> str:
    """'keeps k = 26 of 256, 26 of 256 neurons per step (10 %)'."""
    keep = keep_per_layer(hidden, sparsity)
    parts = ", ".join(f"{k} of {n}" for k, n in zip(keep, hidden))
    return f"Backward keeps k = {parts} neurons per step ({1 - float(sparsity):.0%})."


def architecture_caption(n_in: int | None, hidden: list[int], n_out: int | None) -> str:
    """'64 → 256 → 256 → 10, 84,234 parameters' (inputs and outputs come from the data)."""
    from asymviz.model import count_parameters
    widths = [str(n_in) if n_in else "in", *map(str, hidden), str(n_out) if n_out else "out"]
    text = " → ".join(widths)
    if n_in and n_out:
        text += f", {count_parameters(n_in, hidden, n_out):,} parameters"
    return text


def strategy_help() -> str:
    """One line per strategy, for a widget's help text."""
    return "\n\n".join(f"**{s.title}**: {s.summary}" for s in STRATEGIES.values())


def dataset_label(info) -> str:
    """A dataset's select-box label; downloadable ones say they need a download."""
    if info.kind == "download":
        return f"{info.title} (needs a download)"
    if info.kind == "csv":
        return "Upload a CSV file ..."
    return info.title


def friendly_error(err: BaseException) -> str:
    """The one sentence to show for an exception: ours carry it; anything else gets a
    generic sentence (never a traceback)."""
    if isinstance(err, AsymvizError):
        return str(err)
    return f"Something went wrong ({type(err).__name__}); the action was not carried out. Please try again."


# --------------------------------------------------------------------------------- runs


def progress_of(run: Mapping[str, Any], steps_done: int | None = None, total_steps: int | None = None) -> float:
    """Progress 0..1 of a run (1 when it has ended)."""
    if run.get("status") == "finished":
        return 1.0
    p = run.get("progress")
    if p is None and steps_done is not None and total_steps:
        p = steps_done / total_steps
    return min(1.0, max(0.0, float(p or 0.0)))


def eta_seconds(run: Mapping[str, Any], now: float) -> float | None:
    """Seconds left for a running run, from its progress and its start time; None if unknown."""
    p, started = run.get("progress"), run.get("started_at")
    if run.get("status") != "running" or not p or not started or p <= 0:
        return None
    elapsed = max(0.0, now - started)
    return max(0.0, elapsed * (1.0 - p) / p)


def format_duration(seconds: float | None) -> str:
    """'8 s', '3 min 05 s', '1 h 02 min'; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def load_line(chosen: float, every: float, busy: float | None) -> str:
    """The Instructor page's line on the live refresh now: the chosen interval, the one in use,
    and the cores the dashboard used over its last measured window."""
    if every > chosen:
        return (f"Now: the dashboard is busy ({busy or 0:.2f} cores), so live views refresh every {every:g} s "
                f"instead of {chosen:g} s.")
    used = "not measured yet" if busy is None else f"{busy:.2f} cores"
    return f"Now: live views refresh every {every:g} s (the dashboard's load: {used})."


def status_line(run: Mapping[str, Any], now: float) -> str:
    """One line about where a run stands."""
    status = run.get("status", "?")
    if status == "queued":
        if run.get("held"):  # a paused run that gave its worker back (asymviz.pace)
            return "Paused: its worker was given back to other runs; it goes on from where it was on Play or Step."
        return "Queued: waiting for a free worker."
    if status == "running":
        eta = eta_seconds(run, now)
        return f"Running: {progress_of(run):.0%} done" + (f", about {format_duration(eta)} left." if eta is not None else ".")
    took = None
    if run.get("started_at") and run.get("finished_at"):
        took = run["finished_at"] - run["started_at"]
    text = {"finished": "Finished", "stopped": "Stopped", "failed": "Failed", "diverged": "Diverged (the loss became NaN or infinite)",
            "interrupted": "Interrupted"}.get(status, status.capitalize())
    if took is not None:
        text += f" after {format_duration(took)}"
    if run.get("error"):
        text += f": {run['error']}"
    return text if text.endswith(".") else text + "."


def run_label(run: Mapping[str, Any]) -> str:
    """'#12 neuron s=0.9 on digits (256,256)'."""
    c = run.get("config") or {}
    strategy = c.get("strategy", "?")
    sparse = STRATEGIES.get(strategy)
    s = f" s={c.get('sparsity', 0):g}" if sparse and sparse.neuron_sparse else ""
    if sparse and sparse.connection:
        s += f" c={c.get('conn_sparsity', 0):g}"
    hidden = ",".join(str(w) for w in c.get("hidden", []))
    return f"#{run.get('id')} {strategy}{s} on {c.get('dataset', '?')} ({hidden})"


def created_text(ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def runs_table(runs: list[dict], me: str | None = None) -> list[dict]:
    """One flat row per run for the runs table."""
    rows = []
    for run in runs:
        c, s = run.get("config") or {}, run.get("summary") or {}
        rows.append({
            "id": run["id"],
            "status": run["status"],
            "owner": run["owner"] + (" (you)" if me and run["owner"] == me else ""),
            "dataset": c.get("dataset"),
            "strategy": c.get("strategy"),
            "sparsity": c.get("sparsity"),
            "hidden": ",".join(str(w) for w in c.get("hidden", [])),
            "epochs": c.get("epochs"),
            "seed": c.get("seed"),
            "progress": progress_of(run),
            "test acc": s.get("test_acc"),
            "created": created_text(run.get("created_at")),
        })
    return rows


def metrics_row(run: Mapping[str, Any], reference: Mapping[str, Any] | None = None) -> dict:
    """Final numbers of one run, with the backward speedup versus `reference` (the symmetric
    run of the same config) when there is one."""
    s = run.get("summary") or {}
    ref_s = (reference or {}).get("summary") or {}
    bwd, ref_bwd = s.get("backward_ms_mean"), ref_s.get("backward_ms_mean")
    step, ref_step = s.get("step_ms_mean"), ref_s.get("step_ms_mean")
    return {
        "run": run_label(run),
        "status": run.get("status"),
        "train acc": s.get("train_acc"),
        "val acc": s.get("val_acc"),
        "test acc": s.get("test_acc"),
        "gap": s.get("gap"),
        "backward ms": bwd,
        "step ms": step,
        "reference run": f"#{reference['id']}" if reference else None,
        "backward speedup": (ref_bwd / bwd) if bwd and ref_bwd else None,
        "step speedup": (ref_step / step) if step and ref_step else None,
    }


def overhead_bound(rows: list[dict]) -> bool:
    """Whether a bench result is overhead-bound: at the highest sparsity the measured backward
    speedup reaches less than half of the ideal (or the sparse backward is slower than dense)."""
    if not rows:
        return False
    last = max(rows, key=lambda r: r["sparsity"])
    if last["sparsity"] <= 0:
        return False
    return last["backward_speedup"] < 1.0 or last.get("efficiency", 1.0) < 0.5


# ---------------------------------------------------------------------------------- data


def csv_columns(raw: bytes) -> list[str]:
    """The header of an uploaded CSV; DataError with one sentence when it cannot be read."""
    import io

    import pandas as pd

    from asymviz.errors import DataError
    try:
        head = pd.read_csv(io.BytesIO(raw), nrows=5)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"Could not read the file as CSV ({reason}); upload comma-separated text "
                        "with a header row.") from None
    columns = [str(c).strip() for c in head.columns]
    if len(columns) < 2:
        raise DataError("The CSV needs at least two columns: numeric features and a label column.")
    return columns


def upload_problem(upload_id: Any, label: Any) -> str | None:
    """One sentence if a link's CSV (an upload id and a label column) cannot be used, else None.
    Only the lab's own uploads resolve (asymviz.data.read_upload); nothing else is opened."""
    from asymviz.data import read_upload
    from asymviz.errors import DataError

    if not isinstance(label, str) or not label.strip():
        return "The link's CSV names no label column; upload the CSV again and pick one."
    try:
        read_upload(upload_id)
    except DataError as err:
        return str(err)
    return None


def dataset_shape(name: str, options: dict | None = None, split_seed: int = 0) -> tuple[int, int, bool]:
    """(features, classes, is 2-D) of a dataset; downloadable ones are not loaded (784, 10)."""
    from asymviz.data import DATASETS, load_dataset
    info = DATASETS.get(name)
    if info is not None and info.kind == "download":
        return 784, 10, False
    data = load_dataset(name, options or {}, split_seed=split_seed)
    return data.n_features, data.n_classes, bool(data.is_2d)
