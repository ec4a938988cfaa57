"""A server that never ends up half alive, and the robustness defects found by attacking a lab:
`serve` (and the lab recipe's entry point) killed outright takes every child along; a server
whose workers are gone says so on every page and refuses new runs; a failing or vanished run
store is logged once, retried with back-off and never ends a process or leaves a run `running`;
and the small ones (hidden-layer limit, a dropout link, overflowing CSV values, a model too large
for memory, a closed pipe, cuda without a GPU).

Every test starts its processes in their own session and kills what is left at the end; the
waits are bounded (helpers.until)."""

import json
import os
import pathlib
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch

from asymviz import cli, data, lab, train
from asymviz.errors import DataError
from asymviz.jobs import Runner, work
from asymviz.lab import Trouble
from asymviz.model import MAX_HIDDEN_LAYERS, count_parameters
from asymviz.store import Store, StoreReplaced
from asymviz.train import TrainConfig
from conftest import ROOT
from helpers import FakePool, cmdline, descendants, free_port, healthy, until
from test_lab import Tree, gone, lab_env, start_serve

TRAIN, PAGES = "pages/1_Train.py", ["app.py", "pages/1_Train.py", "pages/2_Runs.py", "pages/3_Backward_timing.py",
                                    "pages/4_Experiment.py", "pages/5_Instructor.py"]
QUICK = {"dataset": "moons", "hidden": [16], "epochs": 2}
LONG = {"dataset": "moons", "hidden": [16], "epochs": 300, "batch_size": 8}  # a minute or more


@pytest.fixture
def scratch():
    path = pathlib.Path(tempfile.mkdtemp(prefix="asymviz-sec-"))
    yield path
    subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)  # if a test left it immutable
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def port_free(port: int) -> bool:
    """Whether a new server could listen on 127.0.0.1:port (as a restarted `serve` would)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def queued(config: dict) -> dict:
    return TrainConfig(**config).validated().to_dict()


def error_lines(capsys) -> list[str]:
    """The command line's own sentences on stderr (not log lines of threads still running)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------ a killed parent

def start_entrypoint(home, port):
    """scripts/entrypoint.sh as the lab recipe runs it (`python` from PATH: this environment's)."""
    env = lab_env(home, PORT=str(port), PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    return Tree(["bash", str(ROOT / "scripts/entrypoint.sh"), "--address", "127.0.0.1", "--workers", "1"], env,
                home / "entrypoint.log")


@pytest.mark.timeout(400)
@pytest.mark.parametrize("how", ["serve", "entrypoint"])
def test_sigkill_of_the_server_takes_every_child_along_and_frees_the_port(scratch, how):
    port = free_port()
    tree = start_serve(scratch, port, "--workers", "1") if how == "serve" else start_entrypoint(scratch, port)
    try:
        until(lambda: healthy(port) or tree.proc.poll() is not None, 240, "the health endpoint", every=0.5)
        assert tree.proc.poll() is None, tree.output()
        assert "asymviz" in cmdline(tree.proc.pid)  # (the entry point exec'd: the server is its process)
        kids = until(lambda: (k := descendants(tree.proc.pid)) and len(k) >= 2 and k, 60, "the server and a worker")
        assert any("streamlit run" in cmdline(pid) for pid in kids), [cmdline(pid) for pid in kids]
        assert any("_worker_main" in cmdline(pid) for pid in kids), [cmdline(pid) for pid in kids]

        os.kill(tree.proc.pid, signal.SIGKILL)  # no signal handler, no atexit, no finally
        tree.proc.wait(timeout=10)
        until(lambda: gone(kids), 30, "every child of the killed server to exit")
        until(lambda: port_free(port), 10, f"port {port} to be free")
    finally:
        tree.kill()


# ------------------------------------------------------------- a server whose workers are gone

def pool_file(home, pid, workers=1, pids=()):
    (home / lab.POOL_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "workers": workers,
                                                  "pids": list(pids), "updated_at": time.time()}))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def runs_of(home):
    with Store(home / "asymviz.db") as store:
        return store.list_runs()


def test_every_page_says_the_workers_are_gone_and_start_refuses(page, home, monkeypatch):
    """The Streamlit child of a `serve` killed where nothing killed the child with it: the pool
    status file names a dead serve process."""
    monkeypatch.setenv("ASYMVIZ_EXTERNAL_WORKERS", "1")
    pid = dead_pid()
    pool_file(home, pid)
    sentence = (f"The worker pool of this lab (the `python -m asymviz serve` process, pid {pid}) is gone, so no "
                "run can train and new runs are refused; restart the lab (`python -m asymviz serve`, or its "
                "container).")
    for path in PAGES:
        at = page(path)
        assert sentence in [e.value for e in at.error], (path, [e.value for e in at.error])
    at = page(TRAIN, state={"owner": "ana"})
    at.button(key="train_start").click().run()
    assert not at.exception and [e.value for e in at.error].count(sentence) == 2  # the banner and Start's answer
    at = page("app.py", state={"owner": "ana"})
    at.button(key="home_try").click().run()
    assert not at.exception and [e.value for e in at.error].count(sentence) == 2
    assert runs_of(home) == []


def test_a_pool_restarting_its_workers_is_a_warning_and_start_still_queues(page, home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_EXTERNAL_WORKERS", "1")
    pool_file(home, os.getpid(), workers=2, pids=[dead_pid()])  # serve alive, no worker alive right now
    at = page(TRAIN, state={"owner": "ana"})
    warning = "No training worker is alive right now; new ones are starting, so queued runs wait."
    assert warning in [w.value for w in at.warning] and not at.error
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error
    assert [r["owner"] for r in runs_of(home)] == ["ana"]


def test_pool_problem_of_a_server_with_its_own_pool(scratch, monkeypatch):
    monkeypatch.delenv("ASYMVIZ_EXTERNAL_WORKERS", raising=False)
    runner = Runner(scratch / "asymviz.db", workers=1)
    assert lab.pool_problem(runner) is None  # not started: no pool to judge
    runner.start()
    try:
        until(lambda: runner.workers_alive() == 1, 30, "the worker")
        assert lab.pool_problem(runner) is None
    finally:
        runner.shutdown(grace=2)
    dead = threading.Thread(target=lambda: None)  # a pool whose supervisor thread is gone
    dead.start()
    dead.join()
    runner._procs, runner._supervisor = [FakePool([])], dead
    try:
        assert lab.pool_problem(runner) == (True, "The training workers of this server stopped, so no run can "
                                                  "train and new runs are refused; restart the dashboard.")
    finally:
        runner._procs, runner._supervisor = [], None


# -------------------------------------------------------------------------- store errors

def deny(store: Store, on: bool) -> None:
    """Make every statement of this Store's connection fail in SQLite ('not authorized'), or stop."""
    with store._lock:
        store._conn.set_authorizer((lambda *args: sqlite3.SQLITE_DENY) if on else None)


def run_worker(store: Store, trouble: Trouble):
    """jobs.work in a thread, as a worker process runs it; returns (thread, stop event)."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(store, lambda: "stop" if stop.is_set() else None, stop, trouble),
                              daemon=True)
    thread.start()
    return thread, stop


def test_a_failing_store_is_logged_once_and_the_run_ends_failed_when_it_works_again(scratch, capsys, one_thread):
    path = scratch / "asymviz.db"
    mine, other = Store(path), Store(path)  # the worker's connection, and everybody else's
    run_id = other.create_run(queued(LONG), owner="ana")
    thread, stop = run_worker(mine, Trouble("worker test"))
    try:
        until(lambda: other.steps(run_id), 120, "the first steps")
        deny(mine, True)
        time.sleep(4.0)  # several flushes and retries
        assert other.get_run(run_id)["status"] == "running" and thread.is_alive()
        deny(mine, False)
        run = until(lambda: (r := other.get_run(run_id))["status"] != "running" and r, 60, "the run's end")
        assert run["status"] == "failed" and run["error"] == f"The run store at {path} failed: not authorized."
        assert other.steps(run_id)  # the metrics written before stay
        again = other.create_run(queued(QUICK), owner="ana")  # the worker goes on
        assert until(lambda: (r := other.get_run(again))["status"] not in ("queued", "running") and r,
                     120, "the next run")["status"] == "finished"
    finally:
        stop.set()
        deny(mine, False)
        thread.join(60)
    assert not thread.is_alive()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("asymviz worker test:")]
    assert len(lines) == 2, lines  # once when it starts, once when it works again
    assert lines[0].startswith(f"asymviz worker test: The run store at {path} failed: not authorized. To fix it, "
                               f"check that {scratch} and its files asymviz.db, asymviz.db-wal and asymviz.db-shm "
                               "can be written")
    assert "works again, after" in lines[1]
    mine.close()
    other.close()


def test_the_supervisor_logs_a_failing_store_once_and_backs_off(scratch, capfd):
    """The supervisor reads the store every half second; failing, it says so once, not twenty
    times in ten seconds (capfd: the worker process writes to the same stderr)."""
    runner = Runner(scratch / "asymviz.db", workers=1)
    runner.start()
    try:
        until(lambda: runner.workers_alive() == 1, 60, "the worker")
        deny(runner.store, True)
        time.sleep(5.0)
        deny(runner.store, False)
        time.sleep(5.0)  # the back-off reached 4 s: the next try comes within it
    finally:
        deny(runner.store, False)
        runner.shutdown(grace=2)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("asymviz supervisor:")]
    assert len(lines) == 2 and "not authorized" in lines[0] and "works again, after" in lines[1], lines


def chattr_works(folder: pathlib.Path) -> bool:
    probe = folder / "probe"
    probe.write_text("")
    try:
        ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    except OSError:
        return False
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    probe.unlink()
    return ok


@pytest.mark.timeout(300)
def test_store_files_made_immutable_during_a_run_end_nothing(scratch, capfd, one_thread):
    """chattr -R +i on the store while a worker trains (needs root and a file system with the
    immutable flag): SQLite would write its -shm through a memory map and die of SIGBUS."""
    if not chattr_works(scratch):
        pytest.skip("chattr +i does not work here (not root, or no such flag on this file system)")
    home = scratch / "home"
    runner = Runner(home / "asymviz.db", workers=1)
    run_id = runner.submit(LONG, owner="ana")
    runner.start()
    try:
        until(lambda: runner.store.steps(run_id), 120, "the first steps")
        worker = runner.status(run_id)["worker_pid"]
        subprocess.run(["chattr", "-R", "+i", str(home)], check=True)
        time.sleep(6.0)
        assert lab.pid_alive(worker) and runner.worker_pids() == [worker]  # not killed by SIGBUS
        subprocess.run(["chattr", "-R", "-i", str(home)], check=True)
        run = until(lambda: (r := runner.status(run_id))["status"] != "running" and r, 60, "the run's end")
        assert run["status"] == "failed" and "became read-only or immutable" in run["error"]
        again = runner.submit(QUICK, owner="ana")
        assert runner.wait(again, timeout=120)["status"] == "finished"
    finally:
        subprocess.run(["chattr", "-R", "-i", str(home)], capture_output=True)
        runner.shutdown(grace=2)
    err = capfd.readouterr().err
    for who in (f"asymviz worker pid {worker}:", "asymviz supervisor:"):
        said = [line for line in err.splitlines() if line.startswith(who) and "immutable" in line]
        assert len(said) <= 1, said  # once per process, not once per try
    assert "Bus error" not in err and f"worker pid {worker} exited" not in err


@pytest.mark.timeout(400)
def test_serve_outlives_an_immutable_home_and_says_so_once(scratch):
    if not chattr_works(scratch):
        pytest.skip("chattr +i does not work here (not root, or no such flag on this file system)")
    home, port = scratch / "home", free_port()
    home.mkdir()
    tree = Tree([sys.executable, "-m", "asymviz", "serve", "--port", str(port), "--workers", "1"], lab_env(home),
                scratch / "serve.log")  # the log outside the home made immutable
    try:
        until(lambda: healthy(port) or tree.proc.poll() is not None, 240, "the health endpoint", every=0.5)
        assert tree.proc.poll() is None, tree.output()
        subprocess.run(["chattr", "-R", "+i", str(home)], check=True)
        time.sleep(8.0)
        assert tree.proc.poll() is None and healthy(port), tree.output()
        subprocess.run(["chattr", "-R", "-i", str(home)], check=True)
        until(lambda: "asymviz serve (pool status file): works again, after" in tree.output(), 60,
              "a line saying it works again")
        tree.proc.send_signal(signal.SIGINT)
        assert tree.proc.wait(timeout=120) == 0, tree.output()
    finally:
        subprocess.run(["chattr", "-R", "-i", str(home)], capture_output=True)
        tree.kill()
    log = pathlib.Path(tree.log_path).read_text(errors="replace")
    pool_lines = [line for line in log.splitlines() if line.startswith("asymviz serve (pool status file):")]
    assert len(pool_lines) == 2 and "Operation not permitted" in pool_lines[0], log  # it fails, it works again
    assert "Bus error" not in log and "internal error" not in log


# --------------------------------------------------------------------- the store file deleted

def test_a_store_whose_file_was_deleted_refuses_with_one_sentence(scratch):
    path = scratch / "asymviz.db"
    server = Store(path)
    server.create_run(queued(QUICK), owner="ana")
    os.unlink(path)  # while the server runs
    cli_store = Store(path)  # a new file at the same path, as the next CLI call makes
    new_id = cli_store.create_run(queued(QUICK), owner="cli")
    problem = server.file_problem()
    assert problem == (f"The run store file {path} was deleted or replaced while this process had it open, so "
                       "runs can be neither shown nor recorded here; restart the lab (every asymviz process) so "
                       "that it opens the file now at that path (a deleted file cannot be recovered: restore a "
                       "backup with the lab stopped).")
    for call in (server.list_runs, lambda: server.create_run(queued(QUICK), owner="ana"),
                 lambda: server.claim_next(1, "h")):
        with pytest.raises(StoreReplaced) as err:
            call()
        assert str(err.value) == problem
    assert cli_store.file_problem() is None and [r["id"] for r in cli_store.list_runs()] == [new_id]
    server.close()
    again = Store(path)  # a restarted server opens the file now at the path
    assert [r["owner"] for r in again.list_runs()] == ["cli"]
    again.close()
    cli_store.close()


def test_a_replaced_store_file_is_noticed_too(scratch):
    path = scratch / "asymviz.db"
    server = Store(path)
    copy = Store(scratch / "backup.db")
    copy.close()
    os.replace(scratch / "backup.db", path)  # `mv backup.db asymviz.db` while the server runs
    assert "was deleted or replaced" in server.file_problem()
    server.close()


def test_every_page_says_the_store_file_was_deleted(page, home, capfd):
    at = page(TRAIN, state={"owner": "ana"})
    assert not at.error
    os.unlink(home / "asymviz.db")
    at.run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert error.startswith(f"The run store file {home / 'asymviz.db'} was deleted or replaced while this process")
    assert not at.button  # the page stopped there: nothing to press
    at.switch_page("pages/2_Runs.py").run()
    assert [e.value for e in at.error] == [error] and not at.exception
    assert capfd.readouterr().err.count(f"asymviz dashboard: {error}") == 1  # logged once


def test_a_worker_refuses_a_deleted_store_file_once_and_writes_nothing_to_it(scratch, capsys, one_thread):
    path = scratch / "asymviz.db"
    mine = Store(path)
    thread, stop = run_worker(mine, Trouble("worker test"))
    try:
        time.sleep(0.5)
        os.unlink(path)
        cli_store = Store(path)
        run_id = cli_store.create_run(queued(QUICK), owner="cli")
        time.sleep(4.0)
        assert cli_store.get_run(run_id)["status"] == "queued"  # not claimed from a file it cannot see
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("asymviz worker test:")]
    assert len(lines) == 1 and "was deleted or replaced" in lines[0], lines
    mine.close()
    cli_store.close()


# ------------------------------------------------------------------------------ low ones

def test_a_link_with_up_to_the_librarys_hidden_layer_limit_opens_unchanged(page):
    widths = [8 + i for i in range(12)]
    at = page(TRAIN, query_params={"dataset": "moons", "hidden": ",".join(map(str, widths))})
    assert at.number_input(key="train_layers").value == 12
    assert [at.number_input(key=f"train_width_{i}").value for i in range(12)] == widths
    assert at.query_params["hidden"] == ",".join(map(str, widths)) and not at.warning
    assert not at.button(key="train_start").disabled
    too_many = ",".join(["8"] * (MAX_HIDDEN_LAYERS + 1))
    at = page(TRAIN, query_params={"dataset": "moons", "hidden": too_many})
    assert any("for hidden was not understood, so the default 256,256 is used" in w.value for w in at.warning)


def test_a_dropout_link_out_of_range_falls_back_to_the_strategys_preset(page):
    at = page(TRAIN, query_params={"strategy": "dropout", "dropout": "5"})
    assert at.slider(key="train_dropout").value == 0.5
    assert any(w.value.startswith("The link's value `5` for dropout was not understood, so the default auto is used")
               for w in at.warning)
    at = page(TRAIN, query_params={"strategy": "dropout", "dropout": "0.95"})  # a p the slider does not reach
    assert at.slider(key="train_dropout").value == 0.5
    assert "The dropout 0.95 is outside 0 to 0.9, so 0.5 is used." in [w.value for w in at.warning]
    assert not at.button(key="train_start").disabled and not at.error


def test_csv_values_that_overflow_standardization_are_refused():
    rows = ["a,b,c,y"] + [f"{i % 7},{1e300 if i % 5 == 0 else i},{-1e200 * (i % 3)},{i % 2}" for i in range(60)]
    with pytest.raises(DataError) as err:
        data.load_csv("\n".join(rows).encode(), "y")
    assert str(err.value) == (
        "The features cannot be standardized: feature column(s) 2, 3 (counted from 1 in file order, the label "
        "column left out) hold values so large that their mean or spread overflows; rescale them (e.g. divide by "
        "a power of ten) so that they stay far below 1e150.")
    rows = ["a,b,y"] + [f"{i % 7},{i * 1e100},{i % 2}" for i in range(60)]  # large, but fine
    assert torch.isfinite(data.load_csv("\n".join(rows).encode(), "y").x_train).all()


def test_a_model_too_large_for_memory_is_refused_before_it_is_built(monkeypatch, capsys):
    monkeypatch.setattr(train, "available_bytes", lambda device: 2**20)  # 1 MiB free
    small = ["train", "--dataset", "moons", "--hidden", "256,256", "--epochs", "1"]
    assert cli.main(small) == 2
    params = count_parameters(2, [256, 256], 2)
    assert error_lines(capsys) == [
        f"error: This model has {params:,} parameters: training it needs about {16 * params / 2**20:.1f} MiB "
        "(weights, gradients and the adam optimizer's state, float32), but only 1.0 MiB of memory is free here; "
        "use fewer or narrower hidden layers."]
    monkeypatch.setattr(train, "available_bytes", lambda device: 4 * 2**30)
    big = ["train", "--dataset", "moons", "--hidden", "16384,16384,16384,16384", "--optimizer", "sgd"]
    assert cli.main(big) == 2
    params = count_parameters(2, [16384] * 4, 2)
    assert (f"This model has {params:,} parameters: training it needs about {8 * params / 2**30:.1f} GiB "
            "(weights, gradients and the sgd optimizer's state, float32), but only 4.0 GiB") in error_lines(capsys)[0]


@pytest.mark.parametrize("mem, free_mb", [
    ({"total_mb": 16000, "available_mb": 8000, "limit_mb": None, "used_mb": None}, 8000),  # a machine
    ({"total_mb": 16000, "available_mb": 8000, "limit_mb": 4096, "used_mb": 1000}, 3096),  # a container's limit
    ({"total_mb": 16000, "available_mb": 2000, "limit_mb": 4096, "used_mb": 1000}, 2000),
    ({"total_mb": None, "available_mb": None, "limit_mb": None, "used_mb": None}, None),  # unknown: no check
])
def test_available_memory_is_the_machines_or_the_containers(monkeypatch, mem, free_mb):
    monkeypatch.setattr(lab, "memory", lambda: mem)
    free = train.available_bytes(torch.device("cpu"))
    assert free == (None if free_mb is None else free_mb * 2**20)


def test_a_closed_output_pipe_ends_a_command_quietly(scratch):
    path = scratch / "asymviz.db"
    with Store(path) as store:
        run_id = store.create_run(queued(QUICK), owner="ana")
    proc = subprocess.Popen([sys.executable, "-m", "asymviz", "runs", "show", str(run_id), "--store", str(path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    proc.stdout.close()  # the reader is gone before the first line (`| head -0`)
    try:
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert err == "" and code == 128 + signal.SIGPIPE


def test_submit_refuses_cuda_without_a_gpu_as_train_does(scratch, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = scratch / "asymviz.db"
    flags = ["--dataset", "moons", "--hidden", "8", "--epochs", "1", "--device", "cuda"]
    assert cli.main(["train", *flags]) == 2
    refused = error_lines(capsys)
    assert refused == ["error: device 'cuda' was asked for but no CUDA GPU is available here; use 'cpu' or "
                       "'auto'."]
    assert cli.main(["submit", *flags, "--store", str(path)]) == 2
    assert error_lines(capsys) == refused
    with Store(path) as store:
        assert store.list_runs() == []
