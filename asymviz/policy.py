"""What a lab lets one run ask for: the datasets it offers and the limits of a shared instance.

    check_dataset("mnist")            # DatasetNotOffered unless ASYMVIZ_DATASETS offers it
    limits = Limits.from_env()        # ASYMVIZ_MAX_PARAMS, _EPOCHS, _RUNS_PER_OWNER, _QUEUE
    limits.check_config(config)       # LimitExceeded: epochs, model size (and the dataset above)
    limits.admit(active, mine, "ana") # LimitExceeded: the queue, inside the store's transaction

The Runner checks every submit (`Runner.submit`), and the Ray executor checks a run again before
it leaves the server; the Train page lists `offered_datasets()`. Each refusal is one sentence
that names the variable that set the limit.

    ASYMVIZ_DATASETS=digits,moons,csv   the datasets this lab offers (default: all of them)
    ASYMVIZ_MAX_PARAMS, ASYMVIZ_MAX_EPOCHS, ASYMVIZ_MAX_RUNS_PER_OWNER, ASYMVIZ_MAX_QUEUE
                                        see Limits (0 = no limit)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from asymviz.errors import AsymvizError, ConfigError
from asymviz.config import env_int, env_number
from asymviz.model import count_parameters
from asymviz.train import TrainConfig


class DatasetNotOffered(ConfigError):
    """A run asks for a dataset this lab does not offer (ASYMVIZ_DATASETS)."""


class LimitExceeded(AsymvizError):
    """A submit over one of this instance's limits (the sentence names it and its variable)."""


# ----------------------------------------------------------------------------- datasets

def all_datasets() -> list[str]:
    """Every dataset name in the order the Train page lists them: embedded, download, csv."""
    from asymviz.data import list_datasets  # (scikit-learn: imported when first needed)

    return [info.name for kind in ("embedded", "download", "csv") for info in list_datasets(kind)]


def offered_datasets() -> list[str]:
    """The datasets this lab offers: $ASYMVIZ_DATASETS (comma-separated names; `csv` allows
    uploads), in display order; all of them when unset. ConfigError for an unknown name."""
    known = all_datasets()
    text = os.environ.get("ASYMVIZ_DATASETS", "").strip()
    if not text:
        return known
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        what = f"unknown dataset(s) {', '.join(map(repr, unknown))}" if unknown else "no dataset"
        raise ConfigError(f"ASYMVIZ_DATASETS names {what}; use a comma-separated list of: {', '.join(known)}.")
    return [n for n in known if n in names]


def check_dataset(name: str) -> None:
    """Raise DatasetNotOffered (one sentence) if this lab does not offer dataset `name`."""
    if name not in all_datasets():
        return  # not a dataset at all: the loader says so, listing the valid names
    offered = offered_datasets()
    if name not in offered:
        raise DatasetNotOffered(f"This lab offers only the datasets {', '.join(offered)} "
                                f"(ASYMVIZ_DATASETS); {name!r} is not one of them.")


# ----------------------------------------------------------------------------- limits

LIMIT_VARIABLES = {"max_params": "ASYMVIZ_MAX_PARAMS", "max_epochs": "ASYMVIZ_MAX_EPOCHS",
                   "max_runs_per_owner": "ASYMVIZ_MAX_RUNS_PER_OWNER",
                   "max_queue": "ASYMVIZ_MAX_QUEUE"}


@dataclass
class Limits:
    """What one submit may ask of a shared instance; 0 means no limit."""

    max_params: int = 5_000_000  # weights and biases of one model
    max_epochs: int = 500
    max_runs_per_owner: int = 4  # queued + running runs of one owner
    max_queue: int = 50  # queued + running runs of everyone

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults, overridden by ASYMVIZ_MAX_PARAMS, _EPOCHS, _RUNS_PER_OWNER, _QUEUE."""
        defaults = cls()

        def read(name: str):
            default = getattr(defaults, name)
            return (env_int if isinstance(default, int) else env_number)(LIMIT_VARIABLES[name], default)

        return cls(**{f.name: read(f.name) for f in fields(cls)})

    def check_config(self, config: TrainConfig) -> None:
        """Raise LimitExceeded if this (validated) config breaks a limit on the run itself (epochs,
        model size) and DatasetNotOffered if the lab does not offer its dataset (ASYMVIZ_DATASETS).
        The queue limits are `admit`'s, inside `Runner.submit`'s store transaction."""
        check_dataset(config.dataset)
        if self.max_epochs and config.epochs > self.max_epochs:
            raise LimitExceeded(f"This instance allows at most {self.max_epochs} epochs per run "
                                f"(ASYMVIZ_MAX_EPOCHS); this run asks for {config.epochs}.")
        if self.max_params:
            params = model_parameters(config)
            if params > self.max_params:
                raise LimitExceeded(f"This instance allows models of at most {self.max_params:,} "
                                    f"parameters (ASYMVIZ_MAX_PARAMS); this one has {params:,}, so "
                                    "use fewer or narrower hidden layers.")

    def admit(self, active: int, mine: int, owner: str) -> None:
        """The limits on the queue, given the queued + running runs of everyone and of owner."""
        if self.max_queue and active >= self.max_queue:
            raise LimitExceeded(f"The queue is full: {active} runs are queued or running, the "
                                f"most this instance allows (ASYMVIZ_MAX_QUEUE); try again "
                                "when some have finished.")
        if self.max_runs_per_owner and mine >= self.max_runs_per_owner:
            raise LimitExceeded(f"{owner} already has {mine} queued or running runs, the most "
                                "this instance allows per person (ASYMVIZ_MAX_RUNS_PER_OWNER); "
                                "wait for one to finish or stop one.")


def model_parameters(config: TrainConfig) -> int:
    """Weights and biases of the model a validated config describes (loads embedded data)."""
    from asymviz.data import DATASETS, load_dataset

    info = DATASETS.get(config.dataset)
    if info is not None and info.kind == "download":
        n_in, n_out = 784, 10  # MNIST and Fashion-MNIST: no download just to count
    else:
        data = load_dataset(config.dataset, config.dataset_options, split_seed=config.split_seed)
        n_in, n_out = data.n_features, data.n_classes
    return count_parameters(n_in, config.hidden, n_out)
