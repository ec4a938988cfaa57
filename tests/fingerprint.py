"""A fingerprint of the training numerics: short trainings whose parameters are hashed bit for bit.

    PYTHONPATH=. python tests/fingerprint.py                    # JSON {case: sha256[:16]}, C kernels
    PYTHONPATH=. ASYMVIZ_KERNELS=0 python tests/fingerprint.py  # the same cases on the PyTorch ops
    PYTHONPATH=. ASYMVIZ_FAST=0 python tests/fingerprint.py     # the same cases on the plain path
    PYTHONPATH=. python tests/fingerprint.py --write            # record all three in tests/fingerprint.json

Each case builds a small MLP (or a layer), trains it a few steps with fixed seeds and hashes the
bytes of every parameter and of the last step's gradients. `tests/test_fingerprint.py` compares
the hashes with the ones recorded in `fingerprint.json` on the same kind of machine (torch build
and CPU vector unit: float reductions round differently elsewhere), so a change that moves a
single bit of the sparse backward or the lazy update fails there. Record new hashes (`--write`)
only for a change meant to alter the numbers, and say so in its commit. Cases: every strategy, both granularities,
topk and random selection, the compact and the dense backward (forced and chosen by the rule),
sgd / momentum / adam with and without weight decay, the dense update, dropout, a sparse output
layer, zero_grad without set_to_none, gradients accumulated over two backwards,
torch.autograd.grad, a user's plain loop (torch.optim.Adam, model.zero_grad) and a whole `fit`.
Layers wide enough for the kernels' threaded loops are in the `wide` cases.

Only public entry points are used (MLP, AsymmetricOptimizer, the layer's `options`, fit), so the
same script measures the code before and after a refactoring.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from asymviz.model import MLP
from asymviz.optim import AsymmetricOptimizer

THREADS = 2  # fixed, so that the recorded hashes do not depend on the machine's core count


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def model_digest(model: nn.Module) -> str:
    params = list(model.parameters())
    return digest(params + [p.grad.to_dense() if p.grad is not None else None for p in params])


def build(n_in, hidden, n_out, path="auto", seed=0, **kwargs) -> MLP:
    torch.manual_seed(seed)
    model = MLP(n_in, hidden, n_out, **kwargs)
    for layer in model.linears:
        layer.options = dataclasses.replace(layer.options, path=path)
    return model


def train(model, opt, steps, batch, n_in, n_out, seed=1, backwards=1, set_to_none=True, plain=False):
    """`steps` steps of cross-entropy on random batches (the same batches for a given seed)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # random selection and dropout draw from the global generator
    for _ in range(steps):
        if plain:
            model.zero_grad(set_to_none=set_to_none)
        else:
            opt.zero_grad(set_to_none=set_to_none)
        for _ in range(backwards):
            x, y = torch.randn(batch, n_in, generator=gen), torch.randint(0, n_out, (batch,), generator=gen)
            nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model_digest(model)


def small_cases() -> dict[str, str]:
    """Every strategy x granularity x backward path x optimizer on a 10-24-20-4 network."""
    out = {}
    conn = {"neuron": 0.0, "excessive": 0.5, "refined": 0.5}
    for strategy, cs in conn.items():
        for granularity in ("batch", "example"):
            for path in ("compact", "dense"):
                for name in ("sgd", "momentum", "adam"):
                    model = build(10, [24, 20], 4, path, strategy=strategy, sparsity=0.75, conn_sparsity=cs,
                                  granularity=granularity)
                    opt = AsymmetricOptimizer(model, name, lr=0.05, weight_decay=0.01 if name == "adam" else 0.0)
                    out[f"small/{strategy}/{granularity}/{path}/{name}"] = train(model, opt, 3, 16, 10, 4)
                model = build(10, [24, 20], 4, path, strategy=strategy, sparsity=0.6, conn_sparsity=cs,
                              granularity=granularity, selection="random")
                opt = AsymmetricOptimizer(model, "adam", lr=0.05)
                out[f"small/{strategy}/{granularity}/{path}/random"] = train(model, opt, 3, 16, 10, 4)
    return out


def wide_cases() -> dict[str, str]:
    """Layers where the rule compacts and the kernels run threaded (k x kc >= 65536)."""
    out = {}
    for strategy, cs in (("neuron", 0.0), ("excessive", 0.5), ("refined", 0.5)):
        for name in ("momentum", "adam"):
            model = build(64, [512, 512], 5, "auto", strategy=strategy, sparsity=0.8, conn_sparsity=cs)
            opt = AsymmetricOptimizer(model, name, lr=0.01, weight_decay=0.01)
            out[f"wide/{strategy}/batch/auto/{name}"] = train(model, opt, 2, 128, 64, 5)
        model = build(64, [512, 512], 5, "compact", strategy=strategy, sparsity=0.9, conn_sparsity=cs,
                      granularity="example")
        opt = AsymmetricOptimizer(model, "adam", lr=0.01)
        out[f"wide/{strategy}/example/compact/adam"] = train(model, opt, 2, 64, 64, 5)
        for path in ("auto", "dense"):  # few neurons per example: with dense products, da as a CSR product
            model = build(64, [512, 512], 5, path, strategy=strategy, sparsity=0.95, conn_sparsity=cs,
                          granularity="example")
            opt = AsymmetricOptimizer(model, "sgd", lr=0.01)
            out[f"wide/{strategy}/example/{path}/sgd"] = train(model, opt, 2, 128, 64, 5)
    return out


def loop_cases() -> dict[str, str]:
    """Variations of the loop around the layer."""
    out = {}
    for strategy in ("symmetric", "dropout"):
        model = build(10, [24, 20], 4, strategy=strategy, dropout=0.2 if strategy == "dropout" else 0.0)
        out[f"loop/{strategy}/adam"] = train(model, AsymmetricOptimizer(model, "adam", lr=0.05), 3, 16, 10, 4)
    model = build(10, [24, 20], 4, strategy="neuron", sparsity=0.75, dropout=0.3)
    out["loop/neuron+dropout/adam"] = train(model, AsymmetricOptimizer(model, "adam", lr=0.05), 3, 16, 10, 4)
    model = build(10, [24, 20], 4, strategy="refined", sparsity=0.75, conn_sparsity=0.5, sparse_output=True)
    out["loop/refined-sparse-output/momentum"] = train(model, AsymmetricOptimizer(model, "momentum", lr=0.05),
                                                       3, 16, 10, 4)
    for name in ("momentum", "adam"):
        model = build(10, [24, 20], 4, strategy="neuron", sparsity=0.75)
        opt = AsymmetricOptimizer(model, name, lr=0.05, update="dense")
        out[f"loop/neuron/dense-update/{name}"] = train(model, opt, 3, 16, 10, 4)
    for strategy, cs in (("neuron", 0.0), ("excessive", 0.5), ("refined", 0.5)):
        for path in ("compact", "dense"):
            model = build(10, [24, 20], 4, path, strategy=strategy, sparsity=0.75, conn_sparsity=cs)
            opt = AsymmetricOptimizer(model, "adam", lr=0.05)
            out[f"loop/{strategy}/{path}/no-set-to-none"] = train(model, opt, 3, 16, 10, 4, set_to_none=False)
            model = build(10, [24, 20], 4, path, strategy=strategy, sparsity=0.75, conn_sparsity=cs)
            opt = AsymmetricOptimizer(model, "adam", lr=0.05)
            out[f"loop/{strategy}/{path}/two-backwards"] = train(model, opt, 3, 8, 10, 4, backwards=2)
            for set_to_none in (True, False):  # a user's own loop: PyTorch's Adam, model.zero_grad
                model = build(10, [24, 20], 4, path, strategy=strategy, sparsity=0.75, conn_sparsity=cs)
                opt = torch.optim.Adam(model.parameters(), lr=0.05)
                out[f"loop/{strategy}/{path}/torch-adam/set_to_none={set_to_none}"] = train(
                    model, opt, 3, 16, 10, 4, set_to_none=set_to_none, plain=True)
            model = build(10, [24, 20], 4, path, strategy=strategy, sparsity=0.75, conn_sparsity=cs)
            model.linears[0].weight.grad = torch.zeros_like(model.linears[0].weight)  # left alone by autograd.grad
            gen = torch.Generator().manual_seed(2)
            x, y = torch.randn(16, 10, generator=gen), torch.randint(0, 4, (16,), generator=gen)
            grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
            out[f"loop/{strategy}/{path}/autograd.grad"] = digest([*grads, model.linears[0].weight.grad])
    return out


def fit_cases() -> dict[str, str]:
    """Whole runs through `fit` on the embedded moons data (the loop the lab and the experiment use)."""
    from asymviz.train import Callback, TrainConfig, fit

    out = {}
    for strategy, extra in (("neuron", {}), ("refined", {"conn_sparsity": 0.5}), ("excessive", {"conn_sparsity": 0.5})):
        config = TrainConfig(dataset="moons", hidden="32,32", strategy=strategy, sparsity=0.75, epochs=2,
                             batch_size=32, seed=3, device="cpu", **extra)
        states = []

        class Keep(Callback):
            def on_fit_end(self, ctx, result):
                states.append([t.clone() for t in ctx.model.state_dict().values()])

        result = fit(config, [Keep()])
        assert result["status"] == "finished", result
        out[f"fit/{strategy}"] = digest(states[0])
    return out


def compute() -> dict[str, str]:
    torch.set_num_threads(THREADS)
    out = {}
    for part in (small_cases, wide_cases, loop_cases, fit_cases):
        out.update(part())
    return out


def machine() -> dict[str, str]:
    """What the hashes depend on besides the code: torch's build and the CPU's vector unit."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


RECORD = Path(__file__).with_name("fingerprint.json")
MODES = {  # the environment of each recorded mode: the fast path with and without the C kernels, the plain path
    "c-kernels": {"ASYMVIZ_KERNELS": "1", "ASYMVIZ_FAST": "1"},
    "pytorch-ops": {"ASYMVIZ_KERNELS": "0", "ASYMVIZ_FAST": "1"},
    "plain": {"ASYMVIZ_KERNELS": "0", "ASYMVIZ_FAST": "0"},
}


def run(mode: str) -> dict:
    """{"machine", "hashes"} of a fresh process in one mode (the kernels switch is read once per process)."""
    env = {**os.environ, **MODES[mode], "PYTHONPATH": str(RECORD.parents[1])}
    p = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout)


def write() -> None:
    runs = {mode: run(mode) for mode in MODES}
    record = {"machine": runs["c-kernels"]["machine"], **{mode: r["hashes"] for mode, r in runs.items()}}
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        json.dump({"machine": machine(), "hashes": compute()}, sys.stdout, indent=1, sort_keys=True)
        print()
