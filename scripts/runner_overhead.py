"""What the job runner costs: training throughput of one config run bare (`fit`, as
`python -m asymviz train` runs it) and through the runner (a worker process streaming every
step and epoch, sampled masks and, for 2-D data, decision grids into a SQLite store).

    .venv/bin/python scripts/runner_overhead.py                 # the default configs
    .venv/bin/python scripts/runner_overhead.py --repeats 11 --threads 2

Steps per second are steps / seconds of the whole run (evaluations included), two ways:
wall time (bare: around `fit` in this process; runner: the store's started_at -> finished_at,
from the worker's claim to the final status) and CPU time (bare: this process; runner: the
worker process, from /proc, Linux only). CPU time is the steadier measure on a machine that
other jobs share. The worker gets the same torch threads as this process (--threads, default 1:
on a small shared machine two spinning threads per process measure the neighbours, not the
runner). Runs alternate bare / runner after one warm-up each; the table shows medians.

The last column is the direct cost, steadier still: the share of a run's time spent inside
the store callback's hooks (metrics, masks, grids, flushes, stop checks), measured in this
process on the same run. What the runner adds per step is small (a JSON line, sampled masks, a batched SQLite write
every 0.5 s; masks and decision grids are held to about 3 % of the run's time each); per run
it adds a few transactions (claim, events, final status), which only a sub-second run notices.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from asymviz.jobs import Runner  # noqa: E402
from asymviz.lab import cpu_count  # noqa: E402
from asymviz.recording import StoreCallback  # noqa: E402
from asymviz.store import Store  # noqa: E402
from asymviz.train import TrainConfig, fit  # noqa: E402

CONFIGS = {
    "digits 64-512-512-10 neuron s=0.9": TrainConfig(
        dataset="digits", hidden=[512, 512], strategy="neuron", sparsity=0.9, epochs=20, device="cpu"),
    "digits 64-256-256-10 refined s=0.9 c=0.5": TrainConfig(
        dataset="digits", hidden=[256, 256], strategy="refined", sparsity=0.9, conn_sparsity=0.5,
        epochs=30, device="cpu"),
    "moons 2-16-2 neuron s=0.5 (tiny network)": TrainConfig(
        dataset="moons", hidden=[16], strategy="neuron", sparsity=0.5, epochs=200, device="cpu"),
    "moons 2-16-2 neuron s=0.5 (tiny, 0.3 s run)": TrainConfig(
        dataset="moons", hidden=[16], strategy="neuron", sparsity=0.5, epochs=40, device="cpu"),
}


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # fields[11], [12]: utime, stime
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare(config: TrainConfig) -> tuple[int, float, float]:
    """(steps, wall s, CPU s) of one run in this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit(config)
    return result["steps"], time.perf_counter() - wall, time.process_time() - cpu


def through(runner: Runner, config: TrainConfig) -> tuple[int, float, float]:
    """(steps, wall s, CPU s of the worker) of one run through the runner."""
    (pid,) = runner.worker_pids()
    cpu = process_cpu(pid)
    run = runner.wait(runner.submit(config, owner="bench"), timeout=600, poll=0.05)
    cpu = process_cpu(pid) - cpu
    if run["status"] != "finished":
        raise SystemExit(f"run {run['id']} ended {run['status']}: {run['error']}")
    return run["summary"]["steps"], run["finished_at"] - run["started_at"], cpu


class TimedCallback(StoreCallback):
    """A StoreCallback that adds up the time spent in its hooks."""

    spent = 0.0

    def _timed(self, hook, *args) -> None:
        start = time.perf_counter()
        hook(*args)
        self.spent += time.perf_counter() - start

    def on_fit_start(self, ctx):
        self._timed(super().on_fit_start, ctx)

    def on_step_end(self, ctx, record):
        self._timed(super().on_step_end, ctx, record)

    def on_epoch_end(self, ctx, record):
        self._timed(super().on_epoch_end, ctx, record)

    def on_fit_end(self, ctx, result):
        self._timed(super().on_fit_end, ctx, result)


def hook_share(store: Store, config: TrainConfig) -> float:
    """Share of one in-process run's wall time spent inside the store callback."""
    run_id = store.create_run(config.validated().to_dict(), owner="bench")
    store.claim_next(os.getpid(), "bench")
    callback = TimedCallback(store, run_id)
    start = time.perf_counter()
    fit(config, [callback])
    return callback.spent / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, bare and in the worker")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["ASYMVIZ_WORKER_THREADS"] = str(args.threads)  # the worker inherits it
    with tempfile.TemporaryDirectory() as home:
        runner = Runner(Path(home) / "bench.db", workers=1)
        scratch = Store(Path(home) / "scratch.db")
        runner.start()
        try:
            print(f"{cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s), "
                  f"load average {os.getloadavg()[0]:.1f}, median of {args.repeats} runs\n")
            print(f"{'':<46} {'':>6} {'steps/s by wall time':^32}  {'steps/s by CPU time':^32}  "
                  f"{'in hooks':>9}")
            print(f"{'config':<46} {'steps':>6} {'bare':>10} {'runner':>10} {'ratio':>10}  "
                  f"{'bare':>10} {'runner':>10} {'ratio':>10}  {'of run':>9}")
            for name, config in CONFIGS.items():
                bare(config), through(runner, config)  # warm-up: data caches, allocator
                rates: dict[str, list[float]] = {"bare wall": [], "bare cpu": [], "runner wall": [],
                                                 "runner cpu": [], "hooks": []}
                for _ in range(args.repeats):
                    rates["hooks"].append(hook_share(scratch, config))
                    for kind, (steps, wall, cpu) in (("bare", bare(config)),
                                                     ("runner", through(runner, config))):
                        rates[f"{kind} wall"].append(steps / wall)
                        rates[f"{kind} cpu"].append(steps / max(cpu, 1e-9))
                m = {key: statistics.median(values) for key, values in rates.items()}
                print(f"{name:<46} {steps:>6} {m['bare wall']:>10.0f} {m['runner wall']:>10.0f} "
                      f"{m['runner wall'] / m['bare wall']:>10.1%}  {m['bare cpu']:>10.0f} "
                      f"{m['runner cpu']:>10.0f} {m['runner cpu'] / m['bare cpu']:>10.1%}  "
                      f"{m['hooks']:>9.1%}", flush=True)
        finally:
            runner.shutdown()
            scratch.close()


if __name__ == "__main__":
    main()
