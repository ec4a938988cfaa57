"""The executors (asymviz.executors): the same behaviour tests for the local worker pool and for
Ray, on a local Ray head with 2 CPUs started here; the experiment through Ray against the local
pool; what is checked on the server before a run is sent to a node; choosing an executor."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from asymviz import executors
from asymviz.data import store_upload
from asymviz.errors import ConfigError
from asymviz.executors import INTERRUPTED_BY_SHUTDOWN
from asymviz.jobs import Runner
from asymviz.policy import Limits
from asymviz.recording import GRID_KIND
from asymviz.store import RunNotFound, RunStateError, Store
from asymviz.train import TrainConfig, fit
from helpers import until

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"dataset": "moons", "hidden": [16], "epochs": 2}
LONG = {"dataset": "moons", "hidden": [16], "epochs": 200, "batch_size": 8}  # many seconds
EXECUTORS = ["local", "ray"]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head with 2 CPUs, for this module; its nodes' ASYMVIZ_HOME is a folder of its
    own (the node's dataset cache), as on a machine of a cluster. Yields (address, node home)."""
    import ray

    node_home = Path(tempfile.mkdtemp(prefix="asymviz-ray-node-"))
    saved = {name: os.environ.get(name) for name in ("ASYMVIZ_HOME", "RAY_ADDRESS")}
    os.environ["ASYMVIZ_HOME"] = str(node_home)  # inherited by the head and its workers
    os.environ.pop("RAY_ADDRESS", None)
    try:
        executors.init_ray(num_cpus=2)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield ray.get_runtime_context().gcs_address, node_home
    ray.shutdown()
    shutil.rmtree(node_home, ignore_errors=True)


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_HOME", str(tmp_path))
    monkeypatch.setenv("ASYMVIZ_WORKER_THREADS", "1")
    for name in ("ASYMVIZ_WORKERS", "ASYMVIZ_EXTERNAL_WORKERS", "ASYMVIZ_STOP_GRACE", "ASYMVIZ_STOP_CHECK_S",
                 "ASYMVIZ_STALE_AFTER", "ASYMVIZ_EXECUTOR", "ASYMVIZ_DATASETS", "ASYMVIZ_RAY_CPUS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "runs.db"


@pytest.fixture
def make_runner(request, path):
    """make_runner(executor, **kwargs) -> a started Runner on `path`: the local pool with one
    worker, or the ray executor on the module's head (2 CPUs: two runs at once)."""
    runners = []

    def make(executor, **kwargs):
        if executor == "ray":
            request.getfixturevalue("ray_head")
        kwargs.setdefault("workers", 1 if executor == "local" else None)
        runner = Runner(path, executor=executor, limits=kwargs.pop("limits", Limits(max_runs_per_owner=0)),
                        **kwargs)
        runners.append(runner)
        runner.start()
        return runner

    yield make
    for runner in runners:
        runner.shutdown(grace=2)
        assert runner.store.list_runs(status="running") == []


def trainer_pid(store, run_id) -> int:
    """The pid of the process that trains a run, from its `started` event (either executor)."""
    def started():
        for event in store.events(run_id, limit=None):
            if event["kind"] == "started":
                return int(re.search(r"pid (\d+)", event["message"]).group(1))
        return None

    return until(started, timeout=120, what="the run to start")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone too
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


# -- the same behaviour through both executors ----------------------------------------------

@pytest.mark.parametrize("executor", EXECUTORS)
def test_live_metrics_masks_and_grids_reach_the_store_while_it_trains(make_runner, executor):
    runner = make_runner(executor)
    run_id = runner.submit({**LONG, "strategy": "excessive", "conn_sparsity": 0.5}, owner="ana")
    until(lambda: len(runner.store.steps(run_id)) >= 50, timeout=120, what="the first steps")
    run = runner.status(run_id)
    assert run["status"] == "running" and 0 < run["progress"] < 1
    seen = len(runner.store.steps(run_id))
    until(lambda: len(runner.store.steps(run_id)) > seen, what="more steps while it trains")
    assert runner.status(run_id)["status"] == "running"
    masks = runner.store.masks(run_id)
    assert masks and masks[0]["n"] == 16 and any(m["conn"] is not None for m in masks)
    assert runner.store.artifacts(run_id, GRID_KIND)[0]["epoch"] == 1  # the first epoch's decision grid
    assert runner.workers_alive() >= 1 and trainer_pid(runner.store, run_id) in runner.worker_pids()
    runner.stop(run_id, owner="ana")
    run = runner.wait(run_id, timeout=60)
    assert run["status"] == "stopped" and run["summary"]["stop_reason"] == "stopped"
    assert len(runner.store.steps(run_id)) == run["summary"]["steps"] >= seen
    kinds = [e["kind"] for e in runner.store.events(run_id, limit=None)][::-1]
    assert kinds == ["queued", "started", "stop_requested", "stopped"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_killing_the_training_process_interrupts_the_run_keeps_its_metrics_and_the_next_trains(
        make_runner, executor):
    runner = make_runner(executor)
    run_id = runner.submit(LONG, owner="ana")
    victim = trainer_pid(runner.store, run_id)
    until(lambda: len(runner.store.steps(run_id)) >= 20, timeout=120, what="the first steps")
    os.kill(victim, signal.SIGKILL)
    seen = len(runner.store.steps(run_id))
    run = runner.wait(run_id, timeout=60)
    assert run["status"] == "interrupted"
    assert ("Ray worker process died" if executor == "ray" else f"pid {victim}") in run["error"]
    assert len(runner.store.steps(run_id)) >= seen >= 20  # written before the kill: kept
    after = runner.submit(QUICK, owner="ana")
    run = runner.wait(after, timeout=120)
    assert run["status"] == "finished" and trainer_pid(runner.store, after) != victim


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_run_that_ignores_a_stop_is_ended_after_the_grace(make_runner, executor, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_STOP_CHECK_S", "1000")  # its trainer never looks
    monkeypatch.setenv("ASYMVIZ_STOP_GRACE", "1")
    runner = make_runner(executor)
    run_id = runner.submit(LONG, owner="ana")
    victim = trainer_pid(runner.store, run_id)
    until(lambda: runner.store.steps(run_id), timeout=120, what="the first steps")
    runner.stop(run_id, owner="ana")
    run = runner.wait(run_id, timeout=60)
    assert run["status"] == "stopped" and "killed" in [e["kind"] for e in runner.store.events(run_id)]
    assert runner.store.steps(run_id)  # metrics kept
    until(lambda: gone(victim), timeout=30, what="its trainer to be killed")
    assert runner.wait(runner.submit(QUICK, owner="ana"), timeout=120)["status"] == "finished"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_shutdown_interrupts_a_run_in_flight(make_runner, executor):
    runner = make_runner(executor)
    run_id = runner.submit(LONG, owner="ana")
    until(lambda: runner.store.steps(run_id), timeout=120, what="the first steps")
    runner.shutdown(grace=10)
    run = runner.status(run_id)
    assert run["status"] == "interrupted" and run["error"] == INTERRUPTED_BY_SHUTDOWN
    assert run["summary"]["steps"] == len(runner.store.steps(run_id)) > 0  # it ended itself, cleanly
    assert runner.workers_alive() == 0


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_server_killed_mid_run_is_reconciled_at_the_next_start(request, path, executor, tmp_path):
    """`python -m asymviz worker` (the server's pool, or the Ray driver) is SIGKILLed while a run
    trains: the trainer goes, and the next start marks the run interrupted with its metrics kept."""
    env = {**os.environ, "ASYMVIZ_EXECUTOR": executor, "ASYMVIZ_WORKERS": "1", "PYTHONPATH": str(ROOT)}
    if executor == "ray":
        env["RAY_ADDRESS"] = request.getfixturevalue("ray_head")[0]
        env.pop("ASYMVIZ_WORKERS")
    run_id = Runner(path, workers=0).submit(LONG, owner="ana")
    log = open(tmp_path / "worker.err", "w")
    server = subprocess.Popen([sys.executable, "-m", "asymviz", "worker", "--store", str(path)], env=env,
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        with Store(path) as store:
            victim = trainer_pid(store, run_id)
            until(lambda: len(store.steps(run_id)) >= 20, timeout=120, what="the first steps")
            server.kill()  # SIGKILL: no atexit, no shutdown
            server.wait(10)
            until(lambda: gone(victim), timeout=60, what="its trainer to go with the server")
            Runner(path, workers=0).start()  # the next start: reconcile only
            run = store.get_run(run_id)
            assert run["status"] == "interrupted", run
            assert len(store.steps(run_id)) >= 20
    finally:
        server.kill()
        server.wait(10)
        log.close()


def session_processes(sid: int) -> list[int]:
    """Pids of the live (not zombie) processes in session sid."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def test_a_worker_with_a_local_ray_head_stops_cleanly_on_sigterm(path, tmp_path):
    """No RAY_ADDRESS: `python -m asymviz worker` starts a Ray head of its own; SIGTERM (what
    `docker stop` sends) ends its run `interrupted` and leaves no Ray process behind."""
    env = {**os.environ, "ASYMVIZ_EXECUTOR": "ray", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    run_id = Runner(path, workers=0).submit(LONG, owner="ana")
    log = open(tmp_path / "worker.err", "w")
    server = subprocess.Popen([sys.executable, "-m", "asymviz", "worker", "--store", str(path)], env=env,
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with Store(path) as store:
            until(lambda: store.steps(run_id), timeout=180, what="the first steps")
            assert len(session_processes(server.pid)) > 2  # the head's processes, its workers
            server.terminate()
            assert server.wait(60) == 0
            run = store.get_run(run_id)
            assert run["status"] == "interrupted" and run["error"] == INTERRUPTED_BY_SHUTDOWN
        until(lambda: not session_processes(server.pid), timeout=30, what="the Ray head to stop")
    finally:
        for pid in session_processes(server.pid):
            os.kill(pid, signal.SIGKILL)
        log.close()
    assert "the ray executor" in (tmp_path / "worker.err").read_text()


DASHBOARD = """
import sys, time
from streamlit.testing.v1 import AppTest
from asymviz.store import RunNotFound, RunStateError, Store
from asymviz import owners
from asymviz.store import Store
with Store(sys.argv[2]) as claims:
    claim = owners.sign_in(claims, "ana", "2468")  # starting a run needs a signed-in name
at = AppTest.from_file(sys.argv[1], default_timeout=300)
at.session_state["owner_claim"] = {"name": claim["name"], "stamp": claim["stamp"]}
at.run()  # the home page starts the runner, from Streamlit's script thread
assert not at.exception, at.exception
at.button(key="home_try").click().run()
at.run()  # a later rerun: the script thread that started the Ray head has ended by now
store = Store(sys.argv[2])
(run,) = store.list_runs()
while store.get_run(run["id"])["status"] in ("queued", "running"):
    time.sleep(0.2)
run = store.get_run(run["id"])
print(run["status"], len(store.steps(run["id"])), flush=True)
"""


def test_the_dashboard_trains_on_a_ray_head_it_started(tmp_path):
    """ASYMVIZ_EXECUTOR=ray without RAY_ADDRESS: the dashboard's first page starts a Ray head
    from a script thread, and the head outlives that thread (its processes would otherwise be
    killed with it); "Try it" trains on Ray."""
    env = {**os.environ, "ASYMVIZ_EXECUTOR": "ray", "ASYMVIZ_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-c", DASHBOARD, str(ROOT / "app.py"), str(tmp_path / "asymviz.db")],
                       capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    status, steps = p.stdout.split()
    assert status == "finished" and int(steps) > 0


# -- Ray only: the sink, the experiment, what is checked before sending, datasets on the nodes

def test_the_sink_writes_what_a_node_sends_as_a_local_writer_would(ray_head, path):
    import ray

    store = Store(path)
    node_run, local_run = (store.create_run(QUICK, owner="ana") for _ in range(2))
    for _ in range(2):
        store.claim_next(os.getpid(), "here")
    sink = ray.remote(num_cpus=0)(executors.RunSink).remote(str(path))
    node = executors.SinkStore(sink, node_run)
    try:
        for writer, run_id in ((node.writer(node_run), node_run), (store.writer(local_run), local_run)):
            for step in range(1, 301):  # more than one batch
                writer.add_step({"step": step, "epoch": 1, "train/loss": 1 / step, "time/step_ms": float("nan")})
                writer.set_progress(step / 300)
            writer.add_epoch({"epoch": 1, "val/acc": 0.5})
            writer.add_mask(3, 0, [5, 1, 2], 16, b"\x01\x02")
            writer.add_artifact(GRID_KIND, {"resolution": 2, "cls": [[0, 1], [1, 0]]}, step=300, epoch=1)
            writer.close()
        node.add_event(node_run, "started", "Started on a node.")
        same = [lambda r: [{k: v for k, v in s.items() if k != "time/step_ms"} for s in store.steps(r)],
                store.epochs, store.masks, lambda r: [a["data"] for a in store.artifacts(r, None)],
                lambda r: store.get_run(r)["progress"]]
        for read in same:
            assert read(node_run) == read(local_run)
        assert len(store.steps(node_run)) == 300 and node.poll(fresh=0) == "go"
        store.request_stop(node_run)
        assert node.poll(fresh=0) == "stop" and node.stop_requested(node_run) and node.interrupt() is None
        node.set_status(node_run, "stopped", summary={"steps": 300})
        with pytest.raises(RunStateError, match="cannot become finished"):
            node.set_status(node_run, "finished")
        store.delete_run(node_run)
        writer = node.writer(node_run)
        writer.add_step({"step": 301})
        with pytest.raises(RunNotFound):
            writer.flush()
        ray.get(sink.shut_down.remote())
        assert node.poll(fresh=0) == "shutdown" and node.interrupt() == INTERRUPTED_BY_SHUTDOWN
    finally:
        ray.kill(sink)
        store.close()



def test_an_experiment_through_ray_equals_the_local_pool_and_resumes(ray_head, tmp_path):
    grid = ["--datasets", "moons", "--hidden", "16", "--strategies", "dropout,symmetric,neuron",
            "--sparsities", "0.9", "--dropouts", "0.5", "--selection-seeds", "1", "--confirmation-seeds", "2",
            "--epochs", "3", "--budgets", "equal", "--speed-widths", "", "--json"]
    results = {}
    for executor in ("local", "ray"):
        env = {**os.environ, "ASYMVIZ_HOME": str(tmp_path / executor), "RAY_ADDRESS": ray_head[0],
               "ASYMVIZ_WORKERS": "2"}
        args = [sys.executable, "-m", "asymviz", "experiment", *grid, "--executor", executor,
                "--out", str(tmp_path / executor / "report")]
        p = subprocess.run(args, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "6/6 runs done" in p.stderr
        assert ("ray executor" in p.stderr) == (executor == "ray")
        with Store(tmp_path / executor / "asymviz.db") as store:
            runs = store.list_runs()
            assert len(runs) == 6 and {r["status"] for r in runs} == {"finished"}
            results[executor] = {(r["config"]["strategy"], r["config"]["seed"]): r["summary"]["test_acc"]
                                 for r in runs}
            if executor == "ray":
                run_id = runs[0]["id"]
                assert store.steps(run_id) and store.epochs(run_id) and store.artifacts(run_id, GRID_KIND)
    assert results["ray"] == results["local"]  # same code, same seeds: the same numbers
    again = subprocess.run(args, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    with Store(tmp_path / "ray" / "asymviz.db") as store:
        assert len(store.list_runs()) == 6  # resumed: no finished cell ran again


def test_limits_and_the_dataset_allow_list_are_checked_before_anything_is_sent(make_runner, monkeypatch):
    """Runs queued behind the runner's back (another process, an older version) are checked again
    on the server: each ends `failed` with its sentence and never starts on a node."""
    monkeypatch.setenv("ASYMVIZ_DATASETS", "moons,digits,csv")
    runner = make_runner("ray", limits=Limits(max_epochs=5, max_params=10_000, max_runs_per_owner=0))
    store = runner.store
    bad = {store.create_run({**QUICK, "epochs": 6}, owner="eve"): "ASYMVIZ_MAX_EPOCHS",
           store.create_run({**QUICK, "hidden": [512, 512]}, owner="eve"): "ASYMVIZ_MAX_PARAMS",
           store.create_run({**QUICK, "dataset": "circles"}, owner="eve"): "ASYMVIZ_DATASETS",
           store.create_run({**QUICK, "device": "cuda"}, owner="eve"): "the Ray cluster has no GPU",
           store.create_run({**QUICK, "lr": -1}, owner="eve"): "lr must be in",
           store.create_run({**QUICK, "dataset_options": {"path": "/etc/passwd"}}, owner="eve"): "Unknown option",
           store.create_run({**QUICK, "dataset": "csv", "dataset_options": {"path": "/etc/passwd", "label": "x"}},
                            owner="eve"): "cannot name a file on the server"}
    good = store.create_run(QUICK, owner="ana")
    assert runner.wait(good, timeout=120)["status"] == "finished"
    for run_id, sentence in bad.items():
        run = runner.wait(run_id, timeout=30)
        assert run["status"] == "failed" and sentence in run["error"] and "\n" not in run["error"], run
        assert [e["kind"] for e in store.events(run_id, limit=None)][::-1] == ["failed"]  # never started


def test_an_uploaded_csv_travels_to_the_node_as_bytes(make_runner, ray_head):
    rows = ["a,b,label"] + [f"{i % 7},{(i * 3) % 11},{'yes' if i % 3 else 'no'}" for i in range(120)]
    raw = ("\n".join(rows) + "\n").encode()
    upload_id = store_upload(raw, "label")  # the server's upload, named by its sha256
    config = {"dataset": "csv", "dataset_options": {"upload": upload_id, "label": "label"}, "hidden": [8],
              "epochs": 2}
    runner = make_runner("ray")
    run = runner.wait(runner.submit(config, owner="ana"), timeout=120)
    assert run["status"] == "finished", run["error"]
    node_copy = ray_head[1] / "uploads" / f"{upload_id}.csv"
    assert node_copy.read_bytes() == raw  # the node trained on its own copy, under the same id ...
    assert run["summary"]["config"]["dataset_options"] == {"upload": upload_id, "label": "label"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the node trained it
    try:
        assert run["summary"]["test_acc"] == fit(TrainConfig(**config))["test_acc"]  # ... of the same data
    finally:
        torch.set_num_threads(threads)
    assert hashlib.sha256(raw).hexdigest() == upload_id


# -- choosing an executor ----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["dask", "Ray cluster", "1", "ray;rm -rf /"])
def test_an_unknown_executor_is_one_sentence(path, monkeypatch, value):
    monkeypatch.setenv("ASYMVIZ_EXECUTOR", value)
    with pytest.raises(ConfigError, match=r"^ASYMVIZ_EXECUTOR must be one of local, ray; got") as err:
        Runner(path, workers=0)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^--executor must be one of local, ray; got"):
        executors.executor_name(value)


def test_an_unknown_executor_flag_exits_2_with_its_sentence():
    p = subprocess.run([sys.executable, "-m", "asymviz", "experiment", "--executor", "dask", "--confirmation-seeds", "2"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip() == "error: --executor must be one of local, ray; got 'dask'."


def test_the_local_pool_stays_the_default(path):
    assert Runner(path, workers=0).executor == "local"
    assert executors.executor_name("RAY") == "ray" and executors.executor_name("") == "local"


@pytest.mark.parametrize("command", [["worker"], ["serve", "--port", "1"], ["experiment", "--confirmation-seeds", "2"]])
def test_asking_for_ray_without_it_installed_is_one_sentence(command, tmp_path):
    code = ("import sys; sys.modules['ray'] = None  # as if not installed\n"
            "from asymviz.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "ASYMVIZ_EXECUTOR": "ray", "ASYMVIZ_HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, timeout=120,
                       env=env, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip() == f"error: {executors.INSTALL_RAY}"


def test_an_unreachable_ray_address_is_one_sentence(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ASYMVIZ_EXECUTOR": "ray", "RAY_ADDRESS": f"127.0.0.1:{port}",
           "ASYMVIZ_HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "asymviz", "worker"], capture_output=True, text=True, timeout=120,
                       env=env, cwd=ROOT)
    assert p.returncode == 2 and f"No Ray head answers at RAY_ADDRESS=127.0.0.1:{port}" in p.stderr
    assert "Traceback" not in p.stderr
