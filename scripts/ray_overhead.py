"""What training through Ray costs against the local worker pool, on this machine: steps per
second of one digits run, and the time from submit to the first metric row in the store.

    .venv/bin/python scripts/ray_overhead.py                  # a local Ray head with 2 CPUs
    .venv/bin/python scripts/ray_overhead.py --repeats 9 --epochs 30

Both runners get one run at a time (the local pool one worker with one torch thread, Ray one
CPU per run, hence one thread) and their own store; runs alternate local / Ray. The first run
of each is shown apart ("cold"): it is submitted right after its runner starts, so it waits
for a training process to start (the local pool's worker process; for Ray the sink actor and a
Ray worker: imports, the asymviz package unpacked from the job), but not for the Ray head, whose
start is timed apart. The next runs ("warm", medians) find a process waiting. Steps/s is steps over the store's started_at ->
finished_at (from the claim to the final status); CPU s/step is the training process's own CPU
time (/proc, Linux), the steadier measure on a machine other jobs share. Bounded: about
(2 x repeats + 2) runs of a few seconds each, plus starting the head.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers: the process tree, command lines

from asymviz import executors  # noqa: E402
from asymviz.jobs import Runner  # noqa: E402
from asymviz.policy import Limits  # noqa: E402
from asymviz.train import TrainConfig  # noqa: E402
from helpers import cmdline, descendants  # noqa: E402


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return 0.0


def ray_memory() -> dict[str, list[float]]:
    """RSS (MiB) of the local head's processes under this one: the sink actor, Ray's workers
    (one that has trained has torch loaded), and the rest of the head (GCS, raylet, agents, ...)."""
    groups: dict[str, list[float]] = {"head (GCS, raylet, agents, monitors)": [], "sink actor": [],
                                      "Ray worker": []}
    for pid in descendants(os.getpid()):
        command = cmdline(pid)
        if "RunSink" in command:
            groups["sink actor"].append(rss_mib(pid))
        elif command.startswith(("ray::IDLE", "ray::train_on_node")):
            groups["Ray worker"].append(rss_mib(pid))
        elif "ray" in command:
            groups["head (GCS, raylet, agents, monitors)"].append(rss_mib(pid))
    return groups


def one_run(runner: Runner, config: TrainConfig, timeout: float = 300.0) -> dict:
    """Submit, watch the store every 5 ms for the first step row, wait for the end."""
    store = runner.store
    t0 = time.monotonic()
    run_id = runner.submit(config, owner="bench")
    first = None
    pid = cpu0 = None
    while time.monotonic() - t0 < timeout:
        if pid is None:
            started = [e for e in store.events(run_id, limit=None) if e["kind"] == "started"]
            if started:
                pid = int(re.search(r"pid (\d+)", started[0]["message"]).group(1))
                cpu0 = process_cpu(pid)
        if first is None and store.steps(run_id):
            first = time.monotonic() - t0
        run = store.get_run(run_id)
        if run["status"] not in ("queued", "running"):
            break
        time.sleep(0.005)
    else:
        raise SystemExit(f"run {run_id} did not end within {timeout:g} s")
    if run["status"] != "finished":
        raise SystemExit(f"run {run_id} ended {run['status']}: {run['error']}")
    steps = run["summary"]["steps"]
    cpu = process_cpu(pid) - cpu0 if pid else float("nan")
    return {"steps": steps, "rate": steps / (run["finished_at"] - run["started_at"]),
            "cpu_ms": 1000 * cpu / steps, "first": first, "total": time.monotonic() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm runs of each executor (default 5)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the digits run (default 20)")
    args = parser.parse_args()
    config = TrainConfig(dataset="digits", hidden=[256, 256], strategy="neuron", sparsity=0.9,
                         epochs=args.epochs, device="cpu")
    os.environ["ASYMVIZ_WORKER_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as home:
        started = time.monotonic()
        executors.init_ray(address="local", num_cpus=2)
        head_s = time.monotonic() - started
        local = Runner(Path(home) / "local.db", workers=1, executor="local", limits=Limits(max_runs_per_owner=0))
        ray_runner = Runner(Path(home) / "ray.db", workers=1, executor="ray", limits=Limits(max_runs_per_owner=0))
        try:
            results: dict[str, list[dict]] = {"local": [], "ray": []}
            for name, runner in (("local", local), ("ray", ray_runner)):  # cold: right after its start
                runner.start()
                results[name].append(one_run(runner, config))
            for _ in range(args.repeats):
                for name, runner in (("local", local), ("ray", ray_runner)):
                    results[name].append(one_run(runner, config))
            memory = ray_memory()
            memory["local worker (has trained)"] = [rss_mib(pid) for pid in local.worker_pids()]
        finally:
            local.shutdown()
            ray_runner.shutdown()
            import ray

            ray.shutdown()
    load = os.getloadavg()[0]
    print(f"digits 64-256-256-10 neuron s=0.9, {args.epochs} epochs ({results['local'][0]['steps']} steps), "
          f"1 thread per run; {os.cpu_count()} cores, load average {load:.1f}; local Ray head up in "
          f"{head_s:.1f} s; warm = median of {args.repeats}\n")
    print(f"{'executor':<9} {'run':<5} {'steps/s':>8} {'CPU ms/step':>12} {'submit -> first row':>20} "
          f"{'submit -> finished':>19}")
    for name in ("local", "ray"):
        cold, warm = results[name][0], results[name][1:]
        rows = [("cold", cold)]
        if warm:
            rows.append(("warm", {key: statistics.median(r[key] for r in warm) for key in cold}))
        for label, r in rows:
            print(f"{name:<9} {label:<5} {r['rate']:>8.0f} {r['cpu_ms']:>12.2f} {r['first']:>18.2f} s "
                  f"{r['total']:>17.2f} s")
    print(f"\n{'memory after the runs':<38} {'processes':>9} {'RSS MiB, each':>22}")
    for name, sizes in memory.items():
        each = ", ".join(f"{size:.0f}" for size in sorted(sizes)) or "-"
        print(f"{name:<38} {len(sizes):>9} {each:>22}")


if __name__ == "__main__":
    main()
