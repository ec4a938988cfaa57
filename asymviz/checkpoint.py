"""Checkpoints of a run in the middle of training, so `fit` can stop and go on bit for bit.

    result = fit(config, [cb])                 # a callback called ctx.request_yield()
    result["status"]                           # 'yielded'
    save(path, result["checkpoint"])           # torch.save, written atomically
    fit(config, resume=load(path))             # ends as if it had never stopped

A checkpoint holds everything the rest of the run depends on: the model's parameters, the
optimizer's state (asymmetric layers' moments and per-neuron step counts, the dense optimizer's
state), the data order (the shuffling generator and, mid-epoch, the epoch's permutation), the
global RNG (dropout, random selection), where the loop stands (epoch, batch index, step), and
what the loop has gathered (timings, the best epoch for early stopping, the last epoch record).
The lab writes checkpoints itself (a paused run that gives its worker back, asymviz.pace) and
reads only its own: files under the store's folder named by run id, loaded with
`torch.load(weights_only=True)` (tensors and plain values, never code).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from asymviz.errors import ConfigError

VERSION = 1
FOLDER = "checkpoints"  # beside the run store: $ASYMVIZ_HOME/checkpoints/run-<id>.pt


def _cpu(value: Any) -> Any:
    """Tensors (nested in dicts and lists) detached, copied and moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def optimizer_state(optimizer) -> dict:
    """An AsymmetricOptimizer's `state_dict()`, on the CPU."""
    return _cpu(optimizer.state_dict())


def load_optimizer_state(optimizer, saved: dict) -> None:
    """Put `optimizer_state`'s output back into a freshly built optimizer of the same model
    (ConfigError when it does not fit). Checkpoints written before the optimizer had a
    state_dict ({"lazy", "step_count", "dense"}, parameters numbered in the same order) load too."""
    if isinstance(saved, dict) and "lazy" in saved:
        saved = {"state": {int(i): s for i, s in saved["lazy"].items()},
                 "param_groups": optimizer.state_dict()["param_groups"],
                 "dense": saved["dense"], "steps": int(saved["step_count"])}
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError):
        raise ConfigError("The run's checkpoint holds an optimizer state that does not fit this run; "
                          "start the run again.") from None


def capture(ctx, optimizer, shuffle: torch.Generator, epoch: int, index: int,
            order: torch.Tensor | None, times: dict, best: dict, last_epoch: dict,
            epoch_seconds: float) -> dict:
    """The state of `fit`'s loop just before batch `index` of `epoch` (order: that epoch's
    permutation, None when the epoch has not started)."""
    device = ctx.device
    return {
        "version": VERSION,
        "config": ctx.config.to_dict(),
        "step": ctx.step, "epoch": epoch, "index": index,
        "order": None if order is None else _cpu(order),
        "model": _cpu(ctx.model.state_dict()),
        "optimizer": optimizer_state(optimizer),
        "shuffle": shuffle.get_state(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "times": {k: list(v) for k, v in times.items()},
        "best": {**best, "state": _cpu(best["state"]) if best.get("state") is not None else None},
        "last_epoch": dict(last_epoch),
        "epoch_seconds": float(epoch_seconds),
    }


def restore(saved: dict, ctx, optimizer, shuffle: torch.Generator) -> dict:
    """Load a checkpoint into a fresh fit (model, optimizer, generators, ctx.step); return the
    loop's position and gathered values {epoch, index, order, times, best, last_epoch,
    epoch_seconds}. ConfigError when it was made for another config or version."""
    if not isinstance(saved, dict) or saved.get("version") != VERSION:
        raise ConfigError("The run's checkpoint was written by another version of asymviz; start the run again.")
    if saved.get("config") != ctx.config.to_dict():
        raise ConfigError("The run's checkpoint belongs to another configuration; start the run again.")
    device = ctx.device
    ctx.model.load_state_dict(saved["model"])
    load_optimizer_state(optimizer, saved["optimizer"])
    shuffle.set_state(saved["shuffle"])
    torch.set_rng_state(saved["rng"])
    if device.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    ctx.step = int(saved["step"])
    best = dict(saved["best"])
    if best.get("state") is not None:
        best["state"] = _to(best["state"], device)
    order = saved["order"]
    return {"epoch": int(saved["epoch"]), "index": int(saved["index"]),
            "order": None if order is None else order.to(device),
            "times": {k: list(v) for k, v in saved["times"].items()}, "best": best,
            "last_epoch": dict(saved["last_epoch"]), "epoch_seconds": float(saved["epoch_seconds"])}


# ------------------------------------------------------------------------------------- files

def folder_of(store_path: str | os.PathLike) -> Path | None:
    """Where the checkpoints of a store's runs live (None for an in-memory store)."""
    if str(store_path) == ":memory:":
        return None
    return Path(store_path).expanduser().parent / FOLDER


def path_of(store_path: str | os.PathLike, run_id: int) -> Path | None:
    """The checkpoint file of one run: named by its integer id only."""
    folder = folder_of(store_path)
    return None if folder is None else folder / f"run-{int(run_id)}.pt"


def save(path: Path, checkpoint: dict) -> None:
    """Write atomically (a temporary file, then a rename): a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict:
    """A checkpoint the lab wrote; ConfigError with one sentence when it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError("The paused run's checkpoint is missing, so it cannot go on; start it again.") from None
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(f"The paused run's checkpoint cannot be read ({type(exc).__name__}); "
                          "start the run again.") from None


def prune(store_path: str | os.PathLike, keep: set[int]) -> list[int]:
    """Delete the checkpoint files of runs not in `keep`; the run ids whose files went."""
    folder = folder_of(store_path)
    gone = []
    if folder is None or not folder.is_dir():
        return gone
    for entry in folder.glob("run-*.pt"):
        stem = entry.stem[len("run-"):]
        if stem.isdigit() and int(stem) not in keep:
            entry.unlink(missing_ok=True)
            gone.append(int(stem))
    return gone
