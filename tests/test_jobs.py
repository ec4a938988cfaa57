"""Tests of asymviz.jobs: limits and ownership through the Runner, failed runs (a worker's
`executors.execute`), and worker pools in real processes (finish, stop, hard kill, SIGKILL,
shutdown, restart reconciliation, owner death). The store callback has tests/test_recording.py."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import asymviz.jobs as jobs
from asymviz import executors, lab, policy
from asymviz.errors import ConfigError, DataError
from asymviz.executors import INTERRUPTED_BY_SHUTDOWN
from asymviz.jobs import INTERRUPTED_BY_PARENT, Runner
from asymviz.owners import ADMIN, NotOwner
from asymviz.policy import LimitExceeded, Limits
from asymviz.recording import GRID_KIND
from asymviz.store import RunStateError, Store
from asymviz.train import Callback, TrainConfig
from helpers import one_torch_thread, until

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
QUICK = {"dataset": "moons", "hidden": [16], "epochs": 2}
LONG = {"dataset": "moons", "hidden": [16], "epochs": 200, "batch_size": 8}  # many seconds


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_HOME", str(tmp_path))
    monkeypatch.setenv("ASYMVIZ_WORKER_THREADS", "1")  # see one_thread
    for name in ("ASYMVIZ_WORKERS", "ASYMVIZ_EXTERNAL_WORKERS", "ASYMVIZ_STOP_GRACE",
                 "ASYMVIZ_STOP_CHECK_S", "ASYMVIZ_STALE_AFTER", *policy.LIMIT_VARIABLES.values()):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture
def path(tmp_path):
    return tmp_path / "runs.db"


@pytest.fixture
def store(path):
    with Store(path) as s:
        yield s


def claimed(store, config, pid=None, host=HOST, owner="ana"):
    """A run taken by a worker (pid) as claim_next leaves it."""
    run_id = store.create_run(config, owner=owner)
    run = store.claim_next(pid or os.getpid(), host)
    assert run["id"] == run_id
    return run


def started_events(store, run_id):
    return [e for e in store.events(run_id, limit=None) if e["kind"] == "started"]


# -- limits, ownership (no processes) ------------------------------------------------------

@pytest.mark.parametrize("limits, config, variable", [
    (Limits(max_epochs=5), {**QUICK, "epochs": 6}, "ASYMVIZ_MAX_EPOCHS"),
    (Limits(max_params=10_000), {"dataset": "digits", "hidden": [512]}, "ASYMVIZ_MAX_PARAMS"),
    (Limits(max_params=10_000), {"dataset": "mnist", "hidden": [16]}, "ASYMVIZ_MAX_PARAMS"),
])
def test_a_run_over_a_limit_is_refused_with_its_sentence(path, limits, config, variable):
    runner = Runner(path, workers=0, limits=limits)
    with pytest.raises(LimitExceeded, match=variable) as err:
        runner.submit(config, owner="ana")
    assert str(err.value).count(".") >= 1 and "\n" not in str(err.value)
    assert runner.store.list_runs() == []


def test_parameter_limit_counts_the_model_that_would_be_built(path):
    params = 64 * 512 + 512 + 512 * 10 + 10  # digits: 64 features, 10 classes
    Runner(path, workers=0, limits=Limits(max_params=params)).submit(
        {"dataset": "digits", "hidden": [512]})
    with pytest.raises(LimitExceeded, match=f"{params:,}") as err:
        Runner(path, workers=0, limits=Limits(max_params=params - 1)).submit(
            {"dataset": "digits", "hidden": [512]})
    assert f"{params - 1:,} parameters" in str(err.value)


def test_queue_limits_hold_for_submitters_in_different_processes(path):
    """Six processes (a dashboard, CLI calls, ...) submit for one owner at the same moment: the
    count and the insert are one store transaction, so exactly the limit gets in."""
    code = ("import sys, time; from asymviz.jobs import Runner; from asymviz.policy import Limits, LimitExceeded\n"
            "runner = Runner(sys.argv[1], workers=0, limits=Limits(max_runs_per_owner=3, max_queue=0))\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "try:\n    print('queued', runner.submit({'dataset': 'moons', 'hidden': [16]}, owner='ana'))\n"
            "except LimitExceeded as err:\n    print('refused', err)\n")
    Store(path).close()  # the schema exists before they race
    start = time.time() + 8.0  # after every interpreter has imported torch
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(start)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    lines = [out.strip() for out, _ in outputs]
    assert sum(line.startswith("queued") for line in lines) == 3, lines
    assert sum("ana already has 3 queued or running runs" in line for line in lines) == 3, lines
    assert Store(path).count(("queued",), owner="ana") == 3


def test_per_owner_and_queue_limits(path):
    runner = Runner(path, workers=0, limits=Limits(max_runs_per_owner=2, max_queue=3))
    a1, a2 = runner.submit(QUICK, owner="ana"), runner.submit(QUICK, owner="ana")
    with pytest.raises(LimitExceeded, match=r"ana already has 2 .*ASYMVIZ_MAX_RUNS_PER_OWNER"):
        runner.submit(QUICK, owner="ana")
    runner.submit(QUICK, owner="bob")
    with pytest.raises(LimitExceeded, match=r"queue is full: 3 .*ASYMVIZ_MAX_QUEUE"):
        runner.submit(QUICK, owner="cy")
    runner.stop(a1, owner="ana")  # a queued run stops at once and frees its place
    assert runner.status(a1)["status"] == "stopped"
    assert runner.submit(QUICK, owner="ana") > a2


def test_unlimited_instance_accepts(path):
    runner = Runner(path, workers=0, limits=Limits(0, 0, 0, 0))
    ids = [runner.submit({**QUICK, "epochs": 10_000}, owner="ana") for _ in range(6)]
    assert [r["id"] for r in runner.store.list_runs()] == ids[::-1]


def test_submit_validates_and_stores_the_canonical_config(path):
    runner = Runner(path, workers=0)
    run_id = runner.submit(TrainConfig(dataset="moons", hidden=[8], strategy="symmetric",
                                       sparsity=0.5), owner="ana", tag="exp1")
    run = runner.status(run_id)
    assert run["status"] == "queued" and run["owner"] == "ana" and run["tag"] == "exp1"
    assert run["config"]["sparsity"] == 0.0 and run["config"]["dropout"] == 0.0
    with pytest.raises(ConfigError, match="sparsity must be in"):
        runner.submit({**QUICK, "sparsity": 1.5})
    with pytest.raises(ConfigError, match="Unknown config field"):
        runner.submit({**QUICK, "colour": "red"})
    with pytest.raises(DataError, match="Unknown dataset"):
        runner.submit({**QUICK, "dataset": "nope"})
    with pytest.raises(ConfigError, match="owner"):
        runner.submit(QUICK, owner=" ")
    assert len(runner.store.list_runs()) == 1


def test_only_the_owner_stops_or_deletes(path):
    runner = Runner(path, workers=0)
    run_id = runner.submit(QUICK, owner="alice")
    with pytest.raises(NotOwner) as err:
        runner.stop(run_id, owner="bob")
    assert str(err.value) == (f"Run {run_id} belongs to alice; only its owner can stop or "
                              "delete it.")
    with pytest.raises(NotOwner):
        runner.delete(run_id, owner="bob")
    assert runner.status(run_id)["status"] == "queued"
    for nobody in (None, "", "ALICE"):  # no one signed in, an empty name, a look-alike
        with pytest.raises(NotOwner):
            runner.stop(run_id, owner=nobody)
    runner.stop(run_id, owner="alice")
    assert runner.status(run_id)["status"] == "stopped"
    assert runner.store.events(run_id)[0]["message"] == "Stop requested by alice."
    runner.delete(run_id, owner=ADMIN)  # an administrator (the CLI, the Instructor page)
    assert runner.store.list_runs() == []


def test_the_administrator_stops_any_run_and_says_so(path):
    runner = Runner(path, workers=0)
    run_id = runner.submit(QUICK, owner="alice")
    runner.stop(run_id, owner=ADMIN)
    assert runner.status(run_id)["status"] == "stopped"
    assert runner.store.events(run_id)[0]["message"] == "Stop requested by an administrator."
    with pytest.raises(ConfigError, match="owner"):  # a run always has a name; the CLI's is "cli"
        runner.submit(QUICK, owner=ADMIN)


def test_a_running_run_cannot_be_deleted(store):
    run = claimed(store, QUICK)
    runner = Runner(store, workers=0)
    with pytest.raises(RunStateError, match="stop it before deleting it"):
        runner.delete(run["id"], owner=ADMIN)
    runner.stop(run["id"], owner=ADMIN)  # running: flagged for its worker
    assert runner.status(run["id"])["stop_requested"] and store.stop_requested(run["id"])
    with pytest.raises(TimeoutError, match=f"Run {run['id']} is still running after 0.3 s"):
        runner.wait(run["id"], timeout=0.3, poll=0.05)


def test_ended_runs_by_age_and_clearing_them(path):
    runner = Runner(path, workers=0)
    store = runner.store
    ids = {}
    for name, status in (("queued", "queued"), ("running", "running"), ("old", "finished"),
                         ("new", "failed")):
        ids[name] = store.create_run({"dataset": "moons"}, owner=name)
        if status != "queued":
            store.set_status(ids[name], "running")
            if status != "running":
                store.set_status(ids[name], status)
    now = time.time()
    with store._transaction() as db:  # the old run ended ten days ago
        db.execute("UPDATE runs SET finished_at = ? WHERE id = ?", (now - 10 * jobs.DAY_S, ids["old"]))
    assert [r["id"] for r in jobs.ended_runs(store, 7)] == [ids["old"]]
    assert {r["id"] for r in jobs.ended_runs(store, 0)} == {ids["old"], ids["new"]}
    assert jobs.clear_ended_runs(runner, 7) == [ids["old"]]
    assert jobs.clear_ended_runs(runner, 0) == [ids["new"]]
    assert {r["id"] for r in store.list_runs()} == {ids["queued"], ids["running"]}
    store.close()


# -- a run's code that raises, a run deleted while it trains -----------------------------------

class Boom(Callback):
    def on_step_end(self, ctx, record):
        if ctx.step == 5:
            raise RuntimeError("boom at step 5")


def test_a_run_whose_code_raises_ends_failed_with_its_sentence(store, monkeypatch):
    bad = claimed(store, {**QUICK, "dataset_options": {"noise": "loud"}})
    assert executors.execute(store, bad) == "failed"
    row = store.get_run(bad["id"])
    assert row["status"] == "failed" and "noise" in row["error"] and "\n" not in row["error"]
    assert not row["error"].startswith("DataError")  # an AsymvizError is its own sentence

    real_fit = executors.fit
    monkeypatch.setattr(executors, "fit", lambda config, callbacks, **kw: real_fit(config, [*callbacks, Boom()], **kw))
    crash = claimed(store, TrainConfig(**QUICK).validated().to_dict())
    assert executors.execute(store, crash) == "failed"
    row = store.get_run(crash["id"])
    assert row["status"] == "failed" and row["error"] == "RuntimeError: boom at step 5"
    assert [s["step"] for s in store.steps(crash["id"])] == [1, 2, 3, 4, 5]  # kept


def test_a_run_deleted_while_training_just_ends(store, monkeypatch):
    config = TrainConfig(dataset="moons", hidden=[16], epochs=50)
    run = claimed(store, config.validated().to_dict())

    class Deleter(Callback):
        def on_step_end(self, ctx, record):
            if ctx.step == 3:
                store.delete_run(run["id"], force=True)

    real_fit = executors.fit
    monkeypatch.setattr(executors, "fit", lambda config, callbacks, **kw: real_fit(config, [Deleter(), *callbacks], **kw))
    assert executors.execute(store, run) == "deleted"
    assert store.list_runs() == []


# -- restart reconciliation ----------------------------------------------------------------

def dead_pid():
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_start_reconciles_orphaned_runs(store, path, monkeypatch):
    orphan = claimed(store, QUICK, pid=dead_pid())
    with store.writer(orphan["id"]) as w:
        for step in range(1, 8):
            w.add_step({"step": step, "epoch": 1, "train/loss": 1.0 / step})
    silent = claimed(store, QUICK, pid=1, host="another-host")  # alive there, but no heartbeat
    live = claimed(store, QUICK)  # this process: alive, heartbeat fresh
    monkeypatch.setenv("ASYMVIZ_EXTERNAL_WORKERS", "1")
    monkeypatch.setenv("ASYMVIZ_STALE_AFTER", "0.5")
    time.sleep(0.7)
    store.heartbeat(live["id"])
    runner = Runner(path)
    runner.start()  # external workers: reconcile only, no pool
    assert runner.workers_alive() == 0
    assert store.get_run(orphan["id"])["status"] == "interrupted"
    assert "is gone" in store.get_run(orphan["id"])["error"]
    assert len(store.steps(orphan["id"])) == 7  # metrics kept
    assert store.get_run(silent["id"])["status"] == "interrupted"
    assert "heartbeat" in store.get_run(silent["id"])["error"]
    assert store.get_run(live["id"])["status"] == "running"
    runner.shutdown()


def test_workers_that_die_young_are_replaced_after_a_growing_backoff(path, capsys):
    class Dead:
        def __init__(self, pid):
            self.pid, self.exitcode = pid, 1

    runner = Runner(path, workers=0)
    now = time.monotonic()
    for backoff in (1, 2, 4, 8, 16, 30, 30):
        runner._born[7] = time.monotonic()  # died at once: cannot start (an import error, ...)
        runner._plan_replacements([Dead(7)])
        assert runner._backoff == backoff and runner._next_spawn >= now + backoff
    runner._born[8] = time.monotonic() - jobs.EARLY_DEATH_S - 1  # lived: replaced at once
    runner._plan_replacements([Dead(8)])
    assert runner._backoff == 0 and runner._next_spawn <= time.monotonic()
    assert "worker pid 8 exited with code 1; a new one starts in 0 s" in capsys.readouterr().err


# -- worker pools in real processes --------------------------------------------------------

@pytest.fixture
def make_runner(path):
    runners = []

    def make(**kwargs):
        runner = Runner(path, **kwargs)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.shutdown(grace=2)
        assert runner.store.list_runs(status="running") == []


def test_a_pool_trains_every_submit_once(make_runner):
    runner = make_runner(workers=2)
    configs = [{**QUICK, "strategy": s} for s in ("neuron", "excessive", "refined", "symmetric")]
    configs += [{"dataset": "digits", "hidden": [32], "epochs": 2}, {**QUICK, "epochs": 3}]
    ids = [runner.submit(c, owner="ana" if i % 2 else "bob") for i, c in enumerate(configs)]
    runner.start()
    runner.start()  # idempotent
    assert runner.workers_alive() == 2
    pids = set(runner.worker_pids())
    for run_id, config in zip(ids, configs):
        run = runner.wait(run_id, timeout=120)
        assert run["status"] == "finished", run["error"]
        summary = run["summary"]
        assert summary["epochs"] == config["epochs"] and run["worker_pid"] in pids
        assert [s["step"] for s in runner.store.steps(run_id)] == list(range(1, summary["steps"] + 1))
        assert len(runner.store.epochs(run_id)) == config["epochs"]
        assert len(started_events(runner.store, run_id)) == 1  # never run twice
        has_masks = bool(runner.store.masks(run_id))
        assert has_masks == (config.get("strategy", "neuron") != "symmetric")
        grid_epochs = [g["epoch"] for g in runner.store.artifacts(run_id, GRID_KIND)]
        if config["dataset"] == "moons":  # the first and the last always, others within budget
            assert grid_epochs[0] == 1 and grid_epochs[-1] == config["epochs"]
        else:
            assert grid_epochs == []
    assert runner.workers_alive() == 2 and set(runner.worker_pids()) == pids


def test_stop_mid_run_in_a_pool(make_runner):
    runner = make_runner(workers=1)
    run_id = runner.submit(LONG, owner="ana")
    runner.start()
    until(lambda: len(runner.store.steps(run_id)) >= 20, what="the first steps")
    requested = time.monotonic()
    runner.stop(run_id, owner="ana")
    run = runner.wait(run_id, timeout=30)
    assert run["status"] == "stopped" and run["summary"]["stop_reason"] == "stopped"
    assert time.monotonic() - requested < 10
    assert run["summary"]["steps"] < 200 * 88 and len(runner.store.steps(run_id)) == run["summary"]["steps"]
    kinds = [e["kind"] for e in runner.store.events(run_id, limit=None)][::-1]
    assert kinds == ["queued", "started", "stop_requested", "stopped"]


def test_a_worker_that_ignores_a_stop_is_killed_after_the_grace(make_runner, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_STOP_CHECK_S", "1000")  # its worker never looks
    monkeypatch.setenv("ASYMVIZ_STOP_GRACE", "1")
    runner = make_runner(workers=1)
    run_id = runner.submit(LONG, owner="ana")
    runner.start()
    run = until(lambda: (r := runner.status(run_id))["status"] == "running" and r, what="running")
    until(lambda: runner.store.steps(run_id), what="the first steps")
    runner.stop(run_id, owner=ADMIN)
    run = runner.wait(run_id, timeout=30)
    assert run["status"] == "stopped"
    assert "killed" in [e["kind"] for e in runner.store.events(run_id)]
    assert runner.store.steps(run_id)  # metrics kept
    first_pid = run["worker_pid"]
    until(lambda: runner.workers_alive() == 1 and runner.worker_pids() != [first_pid],
          what="a replacement worker")
    again = runner.submit(QUICK, owner="ana")
    assert runner.wait(again, timeout=60)["status"] == "finished"


def test_sigkill_of_a_worker_interrupts_its_run_and_the_pool_goes_on(make_runner, store):
    runner = make_runner(workers=1)
    broken = store.create_run({**QUICK, "dataset_options": {"noise": "loud"}}, owner="ana")
    long_id = runner.submit(LONG, owner="ana")
    short_id = runner.submit(QUICK, owner="ana")
    runner.start()
    until(lambda: len(runner.store.steps(long_id)) >= 20, what="the first steps")
    victim = runner.status(long_id)["worker_pid"]
    assert runner.status(broken)["status"] == "failed"
    assert runner.status(broken)["worker_pid"] == victim  # the worker survived the failed run
    os.kill(victim, signal.SIGKILL)
    seen = len(runner.store.steps(long_id))
    run = runner.wait(long_id, timeout=30)
    assert run["status"] == "interrupted" and f"pid {victim}" in run["error"]
    assert len(runner.store.steps(long_id)) >= seen >= 20  # written before the kill: kept
    short = runner.wait(short_id, timeout=60)
    assert short["status"] == "finished" and short["worker_pid"] != victim
    assert runner.workers_alive() == 1

    last = runner.submit(LONG, owner="ana")  # shutdown with a run in flight
    until(lambda: runner.store.steps(last), what="the first steps")
    runner.shutdown(grace=10)
    run = runner.status(last)
    assert run["status"] == "interrupted" and run["error"] == INTERRUPTED_BY_SHUTDOWN
    assert runner.workers_alive() == 0 and runner.store.list_runs(status="running") == []


OWNER_SCRIPT = """
import sys, time
from asymviz.jobs import Runner
runner = Runner(sys.argv[1], workers=1)
run_id = runner.submit({"dataset": "moons", "hidden": [16], "epochs": 200, "batch_size": 8})
runner.start()
print(run_id, runner.worker_pids()[0], flush=True)
time.sleep(600)
"""


def test_workers_end_their_run_and_exit_when_their_owner_dies(path, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stderr = open(tmp_path / "owner.err", "w")  # its resource tracker reports the killed owner
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, str(path)], env=env,
                             stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        run_id, worker = map(int, owner.stdout.readline().split())
        with Store(path) as store:
            until(lambda: store.steps(run_id), what="the first steps")
            owner.kill()  # SIGKILL: no atexit, no shutdown
            owner.wait(10)
            until(lambda: store.get_run(run_id)["status"] != "running", what="the run to end")
            run = store.get_run(run_id)
            assert run["status"] == "interrupted" and run["error"] == INTERRUPTED_BY_PARENT
            assert store.steps(run_id)

        def gone():
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{worker}/stat") as f:  # a zombie waiting for its reaper is gone too
                return f.read().split()[2] == "Z"

        until(gone, timeout=30, what="the worker to exit")
    finally:
        owner.kill()
        owner.wait(10)
        stderr.close()


def test_get_runner_is_a_started_singleton(path, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_EXTERNAL_WORKERS", "1")  # server mode: no pool of its own
    first = jobs.get_runner(path)
    try:
        assert jobs.get_runner(str(path)) is first and first._started
        assert first.workers_alive() == 0
    finally:
        first.shutdown()
        jobs._RUNNERS.clear()


def test_a_quota_caps_the_default_worker_count(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # docker run --cpus 1
    monkeypatch.setattr(lab, "CGROUP_ROOT", str(tmp_path))
    monkeypatch.delenv("ASYMVIZ_WORKERS", raising=False)
    runner = Runner(tmp_path / "runs.db")
    try:
        assert lab.cpu_count() == 1 and runner.workers == 1
    finally:
        runner.store.close()
