"""Twins: a run together with the symmetric and the dropout run of the same configuration and
seed, the thesis's comparison in one click; and a run's reference, the symmetric run of the same
configuration that someone already trained.

    configs = twin_configs(config, dropout=0.5)   # [config, its symmetric twin, its dropout twin]
    tag = new_tag()                               # 'twins:3fa2c1d0': the group's tag in the store
    group(store, run)                             # the runs of a run's group, the main run first
    find_reference_run(store, config)             # the newest finished symmetric run like config

The symmetric twin is the same configuration with a plain backward (keeping the run's forward
dropout, unless the run is itself the dropout strategy); the dropout twin is symmetric training
with dropout p. A run that already is one of the two baselines gets only the other.
"""

from __future__ import annotations

import json
import math
import secrets

from asymviz.errors import AsymvizError, ConfigError
from asymviz.strategies import get_strategy
from asymviz.train import TrainConfig

TAG_PREFIX = "twins:"
DEFAULT_P = 0.5


def check_p(value) -> float:
    """The dropout twin's p, in (0, 1); ConfigError with one sentence otherwise."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        p = math.nan
    if not 0 < p < 1:
        raise ConfigError(f"The dropout twin's p must be a number between 0 and 1 (like 0.5), got {value!r}.")
    return p


def twin_configs(config: dict, dropout=DEFAULT_P) -> list[dict]:
    """[the run's config, its symmetric twin, its dropout twin] as validated dicts."""
    main = TrainConfig.from_dict(dict(config)).validated().to_dict()
    p = check_p(dropout)
    out = [main]
    if main["strategy"] != "symmetric":
        out.append({**main, "strategy": "symmetric", "dropout": 0.0 if main["strategy"] == "dropout" else main["dropout"]})
    if main["strategy"] != "dropout":
        out.append({**main, "strategy": "dropout", "dropout": p})
    return [TrainConfig.from_dict(c).validated().to_dict() for c in out]


def new_tag() -> str:
    return TAG_PREFIX + secrets.token_hex(4)


def is_twins_tag(tag) -> bool:
    return isinstance(tag, str) and tag.startswith(TAG_PREFIX)


def group(store, run: dict) -> list[dict]:
    """The runs of `run`'s twin group, oldest (the run that asked for twins) first; [run] alone
    when it has none."""
    if not is_twins_tag(run.get("tag")):
        return [run]
    return sorted(store.list_runs(tag=run["tag"]), key=lambda r: r["id"])


def groups(runs: list[dict]) -> dict[str, list[dict]]:
    """Twin groups among `runs`: tag -> runs oldest first, newest group first."""
    out: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: r["id"]):
        if is_twins_tag(run.get("tag")):
            out.setdefault(run["tag"], []).append(run)
    return dict(sorted(out.items(), key=lambda item: -item[1][0]["id"]))


def role(run: dict, main_id: int | None = None) -> str:
    """'main' for the run that asked for twins, else 'symmetric' or 'dropout'."""
    if main_id is not None and run["id"] == main_id:
        return "main"
    strategy = (run.get("config") or {}).get("strategy")
    return strategy if strategy in ("symmetric", "dropout") else "main"


# ----------------------------------------------------------------------------- reference runs

def config_key(config: dict | TrainConfig, **override) -> str:
    """Canonical JSON of a validated config with overrides, e.g. config_key(c, strategy="symmetric").

    Options without effect are normalized (a strategy without a sparse backward ignores
    sparsity, selection, sparse_output and the lazy/dense update), so equal keys mean the same
    training."""
    d = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    d.update(override)
    c = TrainConfig.from_dict(d).validated()
    if not get_strategy(c.strategy).neuron_sparse:
        c.sparse_output, c.update = False, "lazy"
    return json.dumps(c.to_dict(), sort_keys=True)


def find_reference_run(store, config: dict | TrainConfig) -> dict | None:
    """The newest finished symmetric run whose config equals this one but for the strategy
    options (strategy, sparsity, conn_sparsity, selection, granularity, ...); None if none."""
    key = config_key(config, strategy="symmetric")
    for run in store.list_runs(status="finished", strategy="symmetric"):
        try:
            if config_key(run["config"]) == key:
                return run
        except AsymvizError:  # a stored config this version no longer accepts
            continue
    return None
