"""Backward timing: dense vs sparse backprop, side by side, with the FLOP limit (DESIGN.md §5).

    python -m asymviz bench --hidden 2048,2048 --batch 128 --sparsity 0,0.5,0.9,0.95 --threads 2
    python -m asymviz bench --strategy refined --conn-sparsity 0.5 --json

What is measured is what trains: the project's MLP n_in-widths-n_out (`asymviz.model.MLP`) and
`AsymmetricOptimizer`. The dense baseline is the same MLP with strategy `symmetric` (plain
autograd, the nn.Linear path) stepped by PyTorch's fused optimizer; the sparse variant uses the
chosen strategy with the lazy update. Both start from the same weights and see the same batch.
Dense and sparse steps alternate inside one loop (warm-up first), so drift on a shared machine
hits both; each reported time is the median over the repeats. On CUDA every timer synchronizes.
"backward" is `optimizer.zero_grad()` + `loss.backward()`: setting grads to None is free for the
dense baseline; the sparse backward re-zeroes the stale rows of its reused gradient storage, and that is counted.

The ideal speedup is the FLOP ratio of the backward for the whole network (matmuls only):

    layer (n_in -> n_out), batch B, k kept neurons, kc kept input units (refined; else n_in):
    dense  dW: 2 B n_out n_in      dx: 2 B n_out n_in  (not for the first layer: x needs no grad)
    sparse dW: 2 B k kc            dx: 2 B k kc        (excessive masks inside the k rows: kc = n_in)
    ideal = sum dense / sum sparse, with the output layer dense in both.

For 784-2048-2048-10, batch 128: 9.6x at sparsity 0.9, 18.6x at 0.95. Efficiency = speedup /
ideal says how much of that a fixed cost (top-k, indexing, autograd, launches) eats.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from asymviz import fast
from asymviz.fast import kernels
from asymviz.errors import ConfigError
from asymviz.model import MLP, parse_architecture
from asymviz.optim import AsymmetricOptimizer, OPTIMIZERS
from asymviz.sparse import PATHS, check_sparsity, keep_count
from asymviz.strategies import GRANULARITIES, check_choice, get_strategy
from asymviz.train import timed_step

COLUMNS = [  # (key, header, format) of the text table
    ("strategy", "strategy", "{}"), ("sparsity", "sparsity", "{:g}"), ("keep", "keep", "{}"),
    ("dense_backward_ms", "dense bwd ms", "{:.2f}"), ("sparse_backward_ms", "sparse bwd ms", "{:.2f}"),
    ("backward_speedup", "bwd speedup", "{:.2f}x"), ("ideal", "ideal", "{:.1f}x"),
    ("efficiency", "efficiency", "{:.0%}"), ("dense_step_ms", "dense step ms", "{:.2f}"),
    ("sparse_step_ms", "sparse step ms", "{:.2f}"), ("step_speedup", "step speedup", "{:.2f}x"),
    ("path", "path", "{}"),
]


def backward_flops(n_in: int, widths: list[int], n_out: int, batch: int, keep: list[int] | None = None,
                   conn_keep: list[int] | None = None) -> float:
    """Matmul FLOPs of the backward of MLP n_in-widths-n_out (see the module docstring).

    keep[i] / conn_keep[i]: kept neurons / kept input units of hidden layer i (None: dense).
    """
    sizes = [n_in, *widths, n_out]
    total = 0.0
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        k = fan_out if keep is None or i >= len(widths) else keep[i]
        kc = fan_in if conn_keep is None or i >= len(widths) else conn_keep[i]
        sides = 1 if i == 0 else 2  # dW, plus dx except for the first layer
        total += sides * 2.0 * batch * k * kc
    return total


CLOCKS = ("wall", "cpu")


def _timer(device: torch.device, clock: str = "wall"):
    """A clock that waits for the device first (CUDA kernels are asynchronous).

    wall: elapsed time (what a user waits for); cpu: this process's CPU time, which a busy shared
    machine inflates far less (meaningful with one thread: more threads add their spin-waits).
    """
    check_choice("clock", clock, CLOCKS)
    if clock == "cpu":
        if device.type == "cuda":
            raise ConfigError("clock 'cpu' does not measure GPU work; use clock 'wall' with device cuda.")
        return time.process_time
    if device.type == "cuda":
        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return now
    return time.perf_counter


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"Unknown device {name!r}; choose one of: auto, cpu, cuda.")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available here; use 'cpu'.")
    return torch.device(name)


def _check(widths, batch, sparsities, strategy, conn_sparsity, granularity, optimizer, repeats, warmup):
    widths = parse_architecture(list(widths))
    if not widths:
        raise ConfigError("bench needs at least one hidden layer, like --hidden 2048,2048.")
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a whole number >= 1, got {batch!r}.")
    sparsities = [check_sparsity(s) for s in sparsities]
    if not sparsities:
        raise ConfigError("bench needs at least one sparsity, like --sparsity 0.9.")
    preset = get_strategy(strategy)
    conn_sparsity = check_sparsity(conn_sparsity, "conn_sparsity") if preset.connection else 0.0
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}.")
    return widths, sparsities, preset, conn_sparsity


def backward_table(widths: list[int] = [2048, 2048], batch: int = 128,
                   sparsities: list[float] = [0.0, 0.5, 0.9, 0.95], strategy: str = "neuron",
                   conn_sparsity: float = 0.0, granularity: str = "batch", n_in: int = 784,
                   n_out: int = 10, optimizer: str = "adam", device: str = "cpu", repeats: int = 20,
                   warmup: int = 3, seed: int = 0, path: str = "auto", clock: str = "wall",
                   samples: bool = False) -> list[dict]:
    """Dense vs sparse timings of MLP n_in-widths-n_out, one row per sparsity (times in ms, medians).

    Row keys: strategy, sparsity, keep (kept neurons per hidden layer), widths, batch,
    dense_backward_ms, sparse_backward_ms, backward_speedup, ideal (backward FLOP ratio),
    efficiency (speedup / ideal), dense_step_ms, sparse_step_ms, step_speedup (forward +
    backward + optimizer), forward_ms (the sparse model's forward), path (how the sparse
    backward ran: "compact", "dense-fallback" or "autograd" (nothing dropped: plain autograd)).
    path: "auto" (the `use_compact` rule), or force "compact" / "dense" for every hidden layer.
    clock: "wall" (default) or "cpu" (process CPU time: steadier on a busy machine, one thread).
    samples: also return every timed repeat, {"dense": [[forward, backward, optimizer] ms, ...],
    "sparse": [...]} under "samples" (repeat i of both ran back to back: a paired measurement).
    """
    widths, sparsities, preset, conn_sparsity = _check(widths, batch, sparsities, strategy, conn_sparsity,
                                                       granularity, optimizer, repeats, warmup)
    check_choice("path", path, PATHS)
    dev = _resolve_device(device)
    now = _timer(dev, clock)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_in, generator=gen).to(dev)
    y = torch.randint(0, n_out, (batch,), generator=gen).to(dev)
    rows = []
    for s in sparsities:
        torch.manual_seed(seed)
        dense = MLP(n_in, widths, n_out, strategy="symmetric").to(dev)
        torch.manual_seed(seed)
        sparse = MLP(n_in, widths, n_out, strategy=strategy, sparsity=s, conn_sparsity=conn_sparsity,
                     granularity=granularity).to(dev)
        for layer in sparse.linears:
            layer.options = dataclasses.replace(layer.options, path=path)
        opt_d = AsymmetricOptimizer(dense, optimizer)
        opt_s = AsymmetricOptimizer(sparse, optimizer)
        times = {"dense": [], "sparse": []}
        for r in range(warmup + repeats):
            order = (("dense", dense, opt_d), ("sparse", sparse, opt_s))
            if r % 2:
                order = order[::-1]  # alternate who goes first
            for name, model, opt in order:
                t = timed_step(model, opt, x, y, now)[2]
                if r >= warmup:
                    times[name].append(t)
        med = {name: [statistics.median(t[i] for t in ts) * 1e3 for i in range(3)] for name, ts in times.items()}
        med_step = {name: statistics.median(sum(t) for t in ts) * 1e3 for name, ts in times.items()}
        hidden = sparse.linears[:-1]
        keep = [layer.keep for layer in hidden] if preset.neuron_sparse else list(widths)
        conn_keep = None
        if preset.connection == "activity":
            conn_keep = [keep_count(layer.in_features, conn_sparsity) for layer in hidden]
        ideal = backward_flops(n_in, widths, n_out, batch) / backward_flops(n_in, widths, n_out, batch, keep, conn_keep)
        speedup = med["dense"][1] / med["sparse"][1]
        rows.append({
            "strategy": strategy, "sparsity": s, "keep": keep, "widths": list(widths), "batch": batch,
            "conn_sparsity": conn_sparsity, "granularity": granularity, "device": str(dev),
            "dense_backward_ms": med["dense"][1], "sparse_backward_ms": med["sparse"][1],
            "backward_speedup": speedup, "ideal": ideal, "efficiency": speedup / ideal,
            "dense_step_ms": med_step["dense"], "sparse_step_ms": med_step["sparse"],
            "step_speedup": med_step["dense"] / med_step["sparse"], "forward_ms": med["sparse"][0],
            "dense_forward_ms": med["dense"][0], "sparse_optimizer_ms": med["sparse"][2],
            "dense_optimizer_ms": med["dense"][2], "path": _path(sparse), "clock": clock,
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "kernels": kernel_note(dev),
        })
        if samples:
            rows[-1]["samples"] = {name: [[t * 1e3 for t in step] for step in ts] for name, ts in times.items()}
    return rows


def symmetric_overhead(widths: list[int] = [2048, 2048], batch: int = 128, n_in: int = 784, n_out: int = 10,
                       optimizer: str = "adam", device: str = "cpu", repeats: int = 20, warmup: int = 3,
                       seed: int = 0, clock: str = "wall") -> dict:
    """`symmetric` through AsymmetricLinear vs the same network of plain `nn.Linear` (ms, medians).

    Both use PyTorch's fused optimizer on the same weights and batch, steps interleaved.
    Returns {"widths", "batch", "nn_backward_ms", "asym_backward_ms", "nn_step_ms", "asym_step_ms",
    "backward_overhead", "step_overhead"} (overhead = asym / nn - 1).
    """
    widths, _, _, _ = _check(widths, batch, [0.0], "symmetric", 0.0, "batch", optimizer, repeats, warmup)
    dev = _resolve_device(device)
    now = _timer(dev, clock)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_in, generator=gen).to(dev)
    y = torch.randint(0, n_out, (batch,), generator=gen).to(dev)
    torch.manual_seed(seed)
    asym = MLP(n_in, widths, n_out, strategy="symmetric").to(dev)
    sizes = [n_in, *widths, n_out]
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths):
            layers.append(torch.nn.ReLU())
    plain = torch.nn.Sequential(*layers).to(dev)
    with torch.no_grad():
        for p_plain, p_asym in zip(plain.parameters(), asym.parameters()):
            p_plain.copy_(p_asym)  # the same weights
    opt_a = AsymmetricOptimizer(asym, optimizer)
    opt_p = AsymmetricOptimizer(plain, optimizer)  # no asymmetric layer: all PyTorch's fused optimizer
    times = {"nn": [], "asym": []}
    for r in range(warmup + repeats):
        order = (("nn", plain, opt_p), ("asym", asym, opt_a))
        for name, model, opt in (order if r % 2 else order[::-1]):
            t = timed_step(model, opt, x, y, now)[2]
            if r >= warmup:
                times[name].append(t)
    bwd = {k: statistics.median(t[1] for t in ts) * 1e3 for k, ts in times.items()}
    step = {k: statistics.median(sum(t) for t in ts) * 1e3 for k, ts in times.items()}
    return {"widths": list(widths), "batch": batch, "nn_backward_ms": bwd["nn"], "asym_backward_ms": bwd["asym"],
            "nn_step_ms": step["nn"], "asym_step_ms": step["asym"],
            "backward_overhead": bwd["asym"] / bwd["nn"] - 1, "step_overhead": step["asym"] / step["nn"] - 1}


def kernel_note(device: torch.device) -> str:
    """Which implementation ran the CPU hot loops: "C" (asymviz.fast.kernels) or "PyTorch ops"."""
    if not fast.enabled():
        return "none (ASYMVIZ_FAST=0: the plain path)"
    if device.type != "cpu":
        return "PyTorch ops (GPU)"
    return "C" if kernels.library() is not None else "PyTorch ops"


def _path(model: MLP) -> str:
    """How the hidden layers' backward ran in the last step."""
    paths = {getattr(layer.state, "path", None) or ("autograd" if layer.dense_backward else "compact")
             for layer in model.linears[:-1]}
    return "/".join(sorted(paths))


def format_table(rows: list[dict]) -> str:
    """An aligned text table of `backward_table` rows (keep shows the first hidden layer's)."""
    if not rows:
        return "(no rows)"
    head = [h for _, h, _ in COLUMNS]
    body = []
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            if key == "keep" and isinstance(value, list):
                value = "/".join(map(str, value)) if len(set(value)) > 1 else value[0]
            cells.append("-" if value is None else fmt.format(value))
        body.append(cells)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def user_loop_table(widths: list[int] = [2048, 2048], batch: int = 128, sparsities: list[float] = [0.9, 0.95],
                    n_in: int = 784, n_out: int = 10, device: str = "cpu", repeats: int = 20, warmup: int = 3,
                    seed: int = 0, clock: str = "wall") -> list[dict]:
    """The drop-in layer in a user's own loop against asymviz's loop (ms, medians; `neuron`, batch).

    user: `nn.Sequential` of `AsymmetricLinear` hidden layers (ReLU between, an `nn.Linear`
    output), `torch.optim.Adam`, `model.zero_grad(set_to_none=True)`; its dense baseline is the
    same Sequential of `nn.Linear`. library: `backward_table`'s pair (MLP + AsymmetricOptimizer).
    All four step in turn on the same batch, from the same weights. "backward" is zero_grad +
    loss.backward() in both loops. Row keys: sparsity, keep, user_dense_backward_ms,
    user_sparse_backward_ms, user_backward_speedup, library_dense_backward_ms,
    library_sparse_backward_ms, library_backward_speedup, user_vs_library (user speedup /
    library speedup).
    """
    widths, sparsities, _, _ = _check(widths, batch, sparsities, "neuron", 0.0, "batch", "adam", repeats, warmup)
    dev = _resolve_device(device)
    now = _timer(dev, clock)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_in, generator=gen).to(dev)
    y = torch.randint(0, n_out, (batch,), generator=gen).to(dev)

    def sequential(sparsity: float | None) -> torch.nn.Sequential:
        from asymviz.sparse import AsymmetricLinear

        torch.manual_seed(seed)
        sizes, layers = [n_in, *widths], []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b) if sparsity is None else AsymmetricLinear(a, b, sparsity=sparsity),
                       torch.nn.ReLU()]
        return torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], n_out)).to(dev)

    def user_step(model, opt) -> float:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        t0 = now()
        model.zero_grad(set_to_none=True)
        loss.backward()
        t1 = now()
        opt.step()
        return t1 - t0

    rows = []
    for s in sparsities:
        user = {name: sequential(sp) for name, sp in (("dense", None), ("sparse", s))}
        user_opt = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in user.items()}
        torch.manual_seed(seed)
        lib = {"dense": MLP(n_in, widths, n_out, strategy="symmetric").to(dev)}
        torch.manual_seed(seed)
        lib["sparse"] = MLP(n_in, widths, n_out, strategy="neuron", sparsity=s).to(dev)
        lib_opt = {name: AsymmetricOptimizer(m, "adam") for name, m in lib.items()}
        times = {key: [] for key in ("user/dense", "user/sparse", "library/dense", "library/sparse")}
        for r in range(warmup + repeats):
            order = list(times) if r % 2 == 0 else list(times)[::-1]
            for key in order:
                loop, name = key.split("/")
                if loop == "user":
                    t = user_step(user[name], user_opt[name])
                else:
                    t = timed_step(lib[name], lib_opt[name], x, y, now)[2][1]
                if r >= warmup:
                    times[key].append(t * 1e3)
        med = {key: statistics.median(ts) for key, ts in times.items()}
        user_speedup = med["user/dense"] / med["user/sparse"]
        lib_speedup = med["library/dense"] / med["library/sparse"]
        rows.append({"sparsity": s, "keep": keep_count(widths[0], s), "widths": list(widths), "batch": batch,
                     "user_dense_backward_ms": med["user/dense"], "user_sparse_backward_ms": med["user/sparse"],
                     "user_backward_speedup": user_speedup, "library_dense_backward_ms": med["library/dense"],
                     "library_sparse_backward_ms": med["library/sparse"], "library_backward_speedup": lib_speedup,
                     "user_vs_library": user_speedup / lib_speedup, "clock": clock,
                     "threads": torch.get_num_threads() if dev.type == "cpu" else None})
    return rows
