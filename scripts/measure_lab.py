"""Measure what a hosted lab needs: memory per process and training throughput per core.
Prints two Markdown tables (the README's "Host it for a class" numbers come from here).

    .venv/bin/python scripts/measure_lab.py                 # about 3 minutes
    .venv/bin/python scripts/measure_lab.py --seconds 30    # longer throughput windows

Memory: `python -m asymviz serve --workers 2` on a temporary ASYMVIZ_HOME, then the resident
memory (VmRSS, its peak VmHWM, and the private part, from /proc) of the serve process (it owns
the pool), the Streamlit server (before and, where Chromium and Playwright are installed, after
one browser session), an idle worker, and a worker training a default run (digits, 256-256,
neuron 0.9) and a large one (digits, 2048-2048: 4.3 M parameters, near the default
ASYMVIZ_MAX_PARAMS of 5 M).

Throughput: training steps per second of default runs (digits, 256-256, neuron 0.9, batch 64,
Adam), counted from the steps the workers write to the store over a window, for one run alone
with 1 and with 2 torch threads, and for two and four runs at once on as many 1-thread
workers. The load
average is printed with them: on a busy machine the numbers are lower and noisier.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers: polling, ports, health, /proc

from asymviz import lab  # noqa: E402
from asymviz.jobs import Runner  # noqa: E402
from asymviz.lab import cpu_count  # noqa: E402
from asymviz.owners import ADMIN  # noqa: E402
from asymviz.policy import Limits  # noqa: E402
from helpers import cmdline, free_port, healthy, process_tree, until  # noqa: E402

DEFAULT = {"dataset": "digits", "hidden": [256, 256], "strategy": "neuron", "sparsity": 0.9, "epochs": 500}
LARGE = {**DEFAULT, "hidden": [2048, 2048]}


def memory_of(pid: int) -> dict[str, float]:
    """A process's memory in MiB: rss and its peak (/proc/PID/status VmRSS, VmHWM), and private
    (Private_Clean + Private_Dirty of smaps_rollup: what this process alone adds; the rest of its
    RSS, mostly torch's libraries, is shared with the other Python processes)."""
    out = {}
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
        rollup = pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        out["private"] = sum(int(line.split()[1]) for line in rollup
                             if line.startswith(("Private_Clean:", "Private_Dirty:"))) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"rss": out.get("VmRSS", 0.0), "peak": out.get("VmHWM", 0.0), "private": out.get("private", 0.0)}


def open_in_browser(url: str) -> bool:
    """Open the home page and the Train page once in headless Chromium (if installed), so the
    server has loaded what a session needs; False where no browser is available."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return False
    if not os.path.exists("/usr/bin/chromium"):
        return False
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.set_default_timeout(180_000)
        page.goto(url)
        page.get_by_role("button", name="Try it: train on two moons").wait_for()
        page.goto(url + "/Train")
        page.get_by_role("button", name="Start").wait_for()
        browser.close()
    return True


def steps_done(store, run_id: int, seen: dict) -> int:
    """The highest step a run has written so far (read incrementally)."""
    new = store.steps(run_id, since_step=seen.get(run_id, 0))
    if new:
        seen[run_id] = max(r["step"] for r in new)
    return seen.get(run_id, 0)


# ----------------------------------------------------------------------------------- memory

def measure_memory(settle: float) -> list[tuple[str, dict]]:
    home = pathlib.Path(tempfile.mkdtemp(prefix="asymviz-measure-"))
    port = free_port()
    env = {**os.environ, "ASYMVIZ_HOME": str(home), "ASYMVIZ_WORKER_THREADS": "1"}
    for name in ("ASYMVIZ_EXTERNAL_WORKERS", "ASYMVIZ_PASSWORD", "ASYMVIZ_DATASETS"):
        env.pop(name, None)
    log = open(home / "serve.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "asymviz", "serve", "--workers", "2", "--port", str(port),
                              "--address", "127.0.0.1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    rows = []
    try:
        until(lambda: healthy(port) or serve.poll() is not None, 300, "the dashboard")
        status = until(lambda: lab.read_pool_status(home / lab.POOL_FILE), 60, "the pool")
        workers = status["pids"]
        [server] = [pid for pid in process_tree().get(serve.pid, []) if "streamlit" in cmdline(pid)]
        time.sleep(settle)  # workers import torch and poll: let them settle
        rows += [("serve process (owns the pool; imports torch)", memory_of(serve.pid)),
                 ("Streamlit server, no browser open yet", memory_of(server)),
                 ("worker, idle", memory_of(workers[0]))]
        if open_in_browser(f"http://127.0.0.1:{port}"):
            rows.append(("Streamlit server, after one session opened Home and Train", memory_of(server)))
        runner = Runner(home / "asymviz.db", workers=0, limits=Limits(0, 0, 0, 0))
        for label, config in (("worker, training digits 256-256 (85 k parameters)", DEFAULT),
                              ("worker, training digits 2048-2048 (4.3 M parameters)", LARGE)):
            run_id = runner.submit(config, owner="measure")
            run = until(lambda: (r := runner.status(run_id))["status"] == "running" and (r["progress"] or 0) > 0
                        and r, 300, "a run to train")
            pid = run["worker_pid"]
            time.sleep(settle)
            rows.append((label, memory_of(pid)))
            runner.stop(run_id, owner=ADMIN)
            until(lambda: runner.status(run_id)["status"] != "running", 60, "the run to stop")
        runner.store.close()
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------------- throughput

def measure_throughput(workers: int, threads: int, runs: int, seconds: float) -> list[float]:
    """Steps per second of each of `runs` concurrent default runs on `workers` x `threads`."""
    home = pathlib.Path(tempfile.mkdtemp(prefix="asymviz-measure-"))
    os.environ["ASYMVIZ_WORKER_THREADS"] = str(threads)  # read when the pool spawns its workers
    runner = Runner(home / "asymviz.db", workers=workers, limits=Limits(0, 0, 0, 0))
    try:
        runner.start(force=True)
        ids = [runner.submit({**DEFAULT, "seed": i}, owner="measure") for i in range(runs)]
        seen: dict[int, int] = {}
        until(lambda: all(steps_done(runner.store, i, seen) >= 30 for i in ids), 600, "the runs to warm up")
        start = {i: steps_done(runner.store, i, seen) for i in ids}
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        rates = [(steps_done(runner.store, i, seen) - start[i]) / elapsed for i in ids]
        for i in ids:
            runner.stop(i, owner=ADMIN)
        return rates
    finally:
        runner.shutdown(grace=5)
        runner.store.close()
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="throughput window per setting (default 20)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before reading memory (default 5)")
    args = parser.parse_args()
    os.chdir(ROOT)  # worker processes import asymviz from here

    print(f"{cpu_count()} cores, load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} at the start\n")
    print("| process | RSS (MiB) | peak RSS (MiB) | private (MiB) |\n|---|---:|---:|---:|")
    for label, m in measure_memory(args.settle):
        print(f"| {label} | {m['rss']:.0f} | {m['peak']:.0f} | {m['private']:.0f} |", flush=True)

    print("\n| setting | steps/s per run | steps/s in all |\n|---|---:|---:|")
    for label, workers, threads, runs in (("1 run, 1 worker x 1 thread", 1, 1, 1),
                                          ("1 run, 1 worker x 2 threads", 1, 2, 1),
                                          ("2 runs at once, 2 workers x 1 thread", 2, 1, 2),
                                          ("4 runs at once, 4 workers x 1 thread", 4, 1, 4)):
        rates = measure_throughput(workers, threads, runs, args.seconds)
        per_run = " / ".join(f"{r:.0f}" for r in rates)
        print(f"| {label} | {per_run} | {sum(rates):.0f} |", flush=True)
    print(f"\nload average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
