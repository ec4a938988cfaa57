"""The training loop: a serializable `TrainConfig` in, flat metric dicts out through callbacks.

    from asymviz.train import TrainConfig, fit
    result = fit(TrainConfig(dataset="digits", strategy="neuron", sparsity=0.9, epochs=20))
    result["test_acc"]

No UI and no store here: the job runner attaches a store callback, the CLI a printer.
Per step the loop emits loss, batch accuracy, forward / backward / optimizer milliseconds
(synchronized on CUDA) and the kept fraction per layer; per epoch train and validation loss
and accuracy on the full splits in eval mode, and the generalization gap.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from asymviz.errors import ConfigError
from asymviz.model import ACTIVATIONS, MLP, count_parameters, parse_architecture
from asymviz.optim import OPTIMIZERS, UPDATES, AsymmetricOptimizer
from asymviz.sparse import check_sparsity
from asymviz.strategies import GRANULARITIES, SELECTIONS, check_choice, get_strategy
from asymviz.values import boolean, dataset_options, integer, number

DEVICES = ("auto", "cpu", "cuda")
WARMUP_STEPS = 5  # excluded from the mean step timings (first steps pay allocation costs)
YIELD = "yield"  # the stop reason of a run that pauses itself with a checkpoint (FitContext.request_yield)


class JSONConfig:
    """Dataclass mixin: to/from dict and JSON; unknown fields and bad JSON are ConfigErrors."""

    _noun = "config"  # how error sentences name it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"Unknown {cls._noun} field(s) {', '.join(unknown)}; valid fields: {', '.join(names)}.")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"The {cls._noun} is not valid JSON ({e.msg} at line {e.lineno}).") from None
        if not isinstance(d, dict):
            raise ConfigError(f"The {cls._noun} must be a JSON object of field: value pairs.")
        return cls.from_dict(d)


@dataclass
class TrainConfig(JSONConfig):
    """Everything that defines a run; round-trips to JSON so any run can be repeated."""

    dataset: str = "digits"  # a name from asymviz.data.DATASETS, or "csv"
    dataset_options: dict = field(default_factory=dict)  # loader options (n_samples, noise, upload, label, ...)
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # hidden widths; in/out come from the data
    activation: str = "relu"  # relu | tanh | sigmoid | gelu
    strategy: str = "neuron"  # symmetric | dropout | neuron | excessive | refined
    sparsity: float = 0.9  # neuron sparsity s: the backward keeps max(1, round((1-s) n)) neurons
    conn_sparsity: float = 0.0  # connection sparsity c (excessive, refined)
    selection: str = "topk"  # topk (largest |g|) | random (same count: the ablation)
    granularity: str = "batch"  # batch (one set per mini-batch) | example (one set per example)
    dropout: float | None = None  # forward dropout p; None = the strategy's default (0.5 for dropout, else 0)
    sparse_output: bool = False  # make the output layer asymmetric too
    optimizer: str = "adam"  # sgd | momentum | adam
    lr: float = 1e-3
    momentum: float = 0.9  # for the momentum optimizer
    weight_decay: float = 0.0
    update: str = "lazy"  # lazy: dropped entries and their optimizer state stay frozen | dense
    batch_size: int = 64
    epochs: int = 20
    patience: int = 0  # early stopping on validation accuracy after this many epochs without gain; 0 = off
    seed: int = 0  # initialization, shuffling, dropout and random selection
    split_seed: int = 0  # the dataset's train/validation/test split
    device: str = "auto"  # auto | cpu | cuda

    def validated(self) -> "TrainConfig":
        """A checked, canonical copy: unused options zeroed, defaults resolved.

        Raises ConfigError with one sentence naming the field and what it accepts.
        """
        c = dataclasses.replace(self, dataset_options=dataset_options(self.dataset_options))
        preset = get_strategy(c.strategy)
        c.hidden = parse_architecture(c.hidden)
        check_choice("activation", c.activation, tuple(ACTIVATIONS))
        check_choice("selection", c.selection, SELECTIONS)
        check_choice("granularity", c.granularity, GRANULARITIES)
        check_choice("optimizer", c.optimizer, OPTIMIZERS)
        check_choice("optimizer update", c.update, UPDATES)
        check_choice("device", c.device, DEVICES)
        if not isinstance(c.dataset, str) or not c.dataset:
            raise ConfigError(f"dataset must be a dataset name, got {c.dataset!r}.")
        c.sparsity = check_sparsity(c.sparsity, "sparsity") if preset.neuron_sparse else 0.0
        c.conn_sparsity = check_sparsity(c.conn_sparsity, "conn_sparsity") if preset.connection else 0.0
        if not preset.neuron_sparse:
            c.selection, c.granularity = "topk", "batch"
        c.dropout = preset.default_dropout if c.dropout is None else number(c.dropout, "dropout", 0.0, 1.0, right_open=True)
        if c.strategy == "dropout" and c.dropout == 0:
            raise ConfigError("The dropout strategy needs a dropout probability p in (0, 1), got 0.")
        c.lr = number(c.lr, "lr", 0.0, 10.0, left_open=True)
        c.momentum = number(c.momentum, "momentum", 0.0, 1.0, right_open=True)
        c.weight_decay = number(c.weight_decay, "weight_decay", 0.0, 1.0)
        c.batch_size = integer(c.batch_size, "batch_size", 1, 65536)
        c.epochs = integer(c.epochs, "epochs", 1, 100000)
        c.patience = integer(c.patience, "patience", 0, 100000)
        c.seed = integer(c.seed, "seed", 0, 2**31 - 1)
        c.split_seed = integer(c.split_seed, "split_seed", 0, 2**31 - 1)
        c.sparse_output = boolean(c.sparse_output, "sparse_output")
        return c


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is a ConfigError."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available here; use 'cpu' or 'auto'.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class Callback:
    """Hooks of `fit`; each gets the FitContext (call `ctx.request_stop()` to stop cooperatively)."""

    def on_fit_start(self, ctx: "FitContext") -> None: ...

    def on_step_end(self, ctx: "FitContext", record: dict) -> None: ...

    def on_epoch_end(self, ctx: "FitContext", record: dict) -> None: ...

    def on_fit_end(self, ctx: "FitContext", result: dict) -> None: ...


@dataclass
class FitContext:
    """What callbacks can see while a run trains."""

    config: TrainConfig
    model: MLP
    data: Any  # asymviz.data.Dataset
    device: torch.device
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    epoch: int = 0
    stop_reason: str | None = None

    def request_stop(self, reason: str = "stopped") -> None:
        """Finish the current step, then end the run with status `stopped`."""
        self.stop_reason = reason

    def request_yield(self) -> None:
        """Finish the current step (and its epoch's end, if it was the epoch's last), then end
        `fit` with status `yielded` and a `checkpoint` that `fit(..., resume=...)` goes on from."""
        self.stop_reason = YIELD


OPTIMIZER_STATE = {"sgd": 0, "momentum": 1, "adam": 2}  # tensors of parameter size an optimizer keeps


def training_bytes(n_params: int, optimizer: str) -> int:
    """Memory a model of n_params float32 parameters takes to train: the weights, their gradients
    and the optimizer's state (Adam: two moments, momentum: one buffer); activations not counted."""
    return 4 * n_params * (2 + OPTIMIZER_STATE.get(optimizer, 2))


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a new model on `device`: a GPU's free memory, or the machine's available
    memory capped by a container's limit; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    from asymviz.lab import memory

    mem = memory()
    free = [mb for mb in (mem["available_mb"],
                          mem["limit_mb"] - mem["used_mb"] if mem["limit_mb"] and mem["used_mb"] else None)
            if mb is not None]
    return int(min(free) * 2**20) if free else None


def check_memory(config: TrainConfig, n_in: int, n_out: int, device: torch.device) -> None:
    """ConfigError (one sentence, with the estimate) when the model cannot fit in memory, before
    any of it is allocated."""
    params = count_parameters(n_in, config.hidden, n_out)
    need, free = training_bytes(params, config.optimizer), available_bytes(device)
    if free is not None and need > free:
        where = "on the GPU" if device.type == "cuda" else "here"
        raise ConfigError(f"This model has {params:,} parameters: training it needs about {_gib(need)} "
                          f"(weights, gradients and the {config.optimizer} optimizer's state, float32), but only "
                          f"{_gib(free)} of memory is free {where}; use fewer or narrower hidden layers.")


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def build_model(config: TrainConfig, n_in: int, n_out: int) -> MLP:
    """The MLP a (validated) config describes; seeded, so a seed means one initialization."""
    torch.manual_seed(config.seed)
    return MLP(n_in, config.hidden, n_out, activation=config.activation, strategy=config.strategy,
               sparsity=config.sparsity, conn_sparsity=config.conn_sparsity, selection=config.selection,
               granularity=config.granularity, dropout=config.dropout, sparse_output=config.sparse_output)


@torch.no_grad()
def evaluate(model: MLP, x: torch.Tensor, y: torch.Tensor, batch: int = 8192) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch):
        out = model(x[i : i + batch])
        loss_sum += F.cross_entropy(out, y[i : i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i : i + batch]).sum().item()
    model.train(was_training)
    n = max(1, len(x))
    return loss_sum / n, correct / n


@torch.no_grad()
def predict_grid(model: MLP, x: torch.Tensor, resolution: int = 60, margin: float = 0.5) -> dict:
    """Class probabilities on a grid over 2-D inputs (for decision-boundary plots)."""
    lo = (x.min(0).values - margin).tolist()
    hi = (x.max(0).values + margin).tolist()
    xs = torch.linspace(lo[0], hi[0], resolution)
    ys = torch.linspace(lo[1], hi[1], resolution)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")  # (res, res): rows follow y
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(x.device)
    was_training = model.training
    model.eval()
    prob = F.softmax(model(pts), 1).cpu()
    model.train(was_training)
    return {"x": xs.tolist(), "y": ys.tolist(), "prob": prob.reshape(resolution, resolution, -1).tolist()}


def timed_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, now) -> tuple:
    """One training step: (logits, loss, (forward, backward, optimizer) seconds by `now`)."""
    t0 = now()
    out = model(x)
    loss = F.cross_entropy(out, y)
    t1 = now()
    optimizer.zero_grad()
    loss.backward()
    t2 = now()
    optimizer.step()
    t3 = now()
    return out, loss, (t1 - t0, t2 - t1, t3 - t2)


def _mean(values: list[float]) -> float | None:
    if len(values) > 2 * WARMUP_STEPS:
        values = values[WARMUP_STEPS:]
    return sum(values) / len(values) if values else None


def fit(config: TrainConfig, callbacks: list[Callback] | tuple = (), data=None,
        local_files: bool = False, resume: dict | None = None) -> dict:
    """Train one run and return its summary (a JSON-able dict with `status`).

    data: an already loaded Dataset (else the config's dataset is loaded). local_files: whether
    a CSV config may name a local file path (the local command line's `train --csv`); configs
    from the queue, the dashboard or the store name uploads by id (see asymviz.data).

    Status is `finished`, `stopped` (a callback asked) or `diverged` (NaN/inf loss: the run ends
    with the metrics so far; no exception escapes). Bad configs raise ConfigError before training,
    and so does a model too large for the memory free (`check_memory`).
    A callback's `ctx.request_yield()` ends it `yielded` with `result["checkpoint"]`; `resume=`
    that checkpoint (asymviz.checkpoint) goes on from there and ends exactly as an uninterrupted
    run of the same config would (same weights, same metrics; timings aside).
    """
    from asymviz import checkpoint
    from asymviz import data as datasets  # imported here: data pulls in scikit-learn

    config = config.validated()
    device = resolve_device(config.device)
    if data is None:
        data = datasets.load_dataset(config.dataset, config.dataset_options,
                                     split_seed=config.split_seed, local_files=local_files)
    check_memory(config, data.n_features, data.n_classes, device)
    model = build_model(config, data.n_features, data.n_classes).to(device)
    optimizer = AsymmetricOptimizer(model, config.optimizer, lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay, update=config.update)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    n = len(x_train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    ctx = FitContext(config, model, data, device, steps_per_epoch, steps_per_epoch * config.epochs)
    shuffle = torch.Generator().manual_seed(config.seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def now() -> float:
        sync()
        return time.perf_counter()

    times = {"forward": [], "backward": [], "optimizer": [], "step": []}
    status, last_epoch = "finished", {}
    best = {"val_acc": -1.0, "epoch": 0, "state": None, "record": {}}
    start = {"epoch": 1, "index": 0, "order": None, "epoch_seconds": 0.0}
    if resume is not None:
        start = checkpoint.restore(resume, ctx, optimizer, shuffle)
        times, best, last_epoch = start["times"], start["best"], start["last_epoch"]
    saved = None  # the checkpoint of a yield
    for cb in callbacks:
        cb.on_fit_start(ctx)
    model.train()
    for epoch in range(start["epoch"], config.epochs + 1):
        ctx.epoch = epoch
        t_epoch = time.perf_counter() - start["epoch_seconds"]
        order = start["order"] if start["order"] is not None else torch.randperm(n, generator=shuffle).to(device)
        first, start = start["index"], {"epoch": 0, "index": 0, "order": None, "epoch_seconds": 0.0}
        for i in range(first, steps_per_epoch):
            batch = order[i * config.batch_size : (i + 1) * config.batch_size]
            xb, yb = x_train.index_select(0, batch), y_train.index_select(0, batch)
            out, loss, (t_fwd, t_bwd, t_opt) = timed_step(model, optimizer, xb, yb, now)
            ctx.step += 1
            loss_value = loss.item()
            record = {
                "step": ctx.step, "epoch": epoch,
                "train/loss": loss_value,
                "train/batch_acc": (out.argmax(1) == yb).float().mean().item(),
                "time/forward_ms": t_fwd * 1e3, "time/backward_ms": t_bwd * 1e3,
                "time/optimizer_ms": t_opt * 1e3, "time/step_ms": (t_fwd + t_bwd + t_opt) * 1e3,
            }
            for j, frac in enumerate(model.kept_fractions()):
                record[f"kept/layer{j}"] = frac
            for key in times:
                times[key].append(record[f"time/{key}_ms"])
            if not math.isfinite(loss_value):
                status = "diverged"
            for cb in callbacks:
                cb.on_step_end(ctx, record)
            if status == "diverged" or ctx.stop_reason:
                break
        if status == "diverged":
            break
        if ctx.stop_reason and i < steps_per_epoch - 1:
            status = "stopped"
            if ctx.stop_reason == YIELD:
                status = "yielded"
                saved = checkpoint.capture(ctx, optimizer, shuffle, epoch, i + 1, order, times, best,
                                           last_epoch, time.perf_counter() - t_epoch)
            break
        train_loss, train_acc = evaluate(model, x_train, y_train)
        val_loss, val_acc = evaluate(model, x_val, y_val)
        last_epoch = {
            "epoch": epoch, "step": ctx.step,
            "train/loss": train_loss, "train/acc": train_acc, "val/loss": val_loss, "val/acc": val_acc,
            "gap": train_acc - val_acc, "time/epoch_s": time.perf_counter() - t_epoch,
        }
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            status = "diverged"
        for cb in callbacks:
            cb.on_epoch_end(ctx, last_epoch)
        if status == "diverged":
            break
        if val_acc > best["val_acc"]:
            best = {"val_acc": val_acc, "epoch": epoch, "record": last_epoch,
                    "state": copy.deepcopy(model.state_dict()) if config.patience else None}
        patience_over = bool(config.patience and epoch - best["epoch"] >= config.patience)
        if ctx.stop_reason == YIELD and (patience_over or epoch == config.epochs):
            ctx.stop_reason = None  # the run ends here anyway: nothing to go on with
        if ctx.stop_reason == YIELD:
            status = "yielded"
            saved = checkpoint.capture(ctx, optimizer, shuffle, epoch + 1, 0, None, times, best,
                                       last_epoch, 0.0)
            break
        if ctx.stop_reason:
            status = "stopped"
            break
        if patience_over:
            break

    if status == "yielded":
        result = {"status": status, "stop_reason": YIELD, "epochs": last_epoch.get("epoch", 0),
                  "steps": ctx.step, "checkpoint": saved, "config": config.to_dict()}
        for cb in callbacks:
            cb.on_fit_end(ctx, result)
        return result

    if config.patience and best["state"] is not None and status != "diverged":
        model.load_state_dict(best["state"])  # report the best checkpoint (early stopping)
    test_loss = test_acc = None
    if status != "diverged":
        test_loss, test_acc = evaluate(model, data.x_test.to(device), data.y_test.to(device))
    result = {
        "status": status,
        "stop_reason": ctx.stop_reason,
        "epochs": last_epoch.get("epoch", 0),
        "steps": ctx.step,
        "train_loss": last_epoch.get("train/loss"), "train_acc": last_epoch.get("train/acc"),
        "val_loss": last_epoch.get("val/loss"), "val_acc": last_epoch.get("val/acc"),
        "gap": last_epoch.get("gap"),
        "best_epoch": best["epoch"], "best_val_acc": best["val_acc"] if best["epoch"] else None,
        "best_gap": best["record"].get("gap"),
        "test_loss": test_loss, "test_acc": test_acc,
        "forward_ms_mean": _mean(times["forward"]), "backward_ms_mean": _mean(times["backward"]),
        "optimizer_ms_mean": _mean(times["optimizer"]), "step_ms_mean": _mean(times["step"]),
        "params": count_parameters(data.n_features, config.hidden, data.n_classes),
        "device": str(device),
        "config": config.to_dict(),
    }
    for cb in callbacks:
        cb.on_fit_end(ctx, result)
    return result
