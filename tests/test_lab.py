"""Hosting for a class: asymviz.lab (numbers from the environment, the container's CPU quota,
which processes are alive, the pool status, the machine's numbers), the limits set by
environment variables as `submit` meets them, `python -m asymviz serve`'s start and stop, and the
lab image's recipe run outside Docker (scripts/install.sh into a fresh virtual environment, then
scripts/entrypoint.sh), as CI does since no Docker engine runs here.

The recipe test is an integration test (`-m integration` selects it, `-m "not integration"`
skips it): it pip-installs the requirements (a minute or more) and trains real runs.
"""

import json
import math
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from asymviz import cli, lab
from asymviz.errors import ConfigError
from asymviz.store import Store
from conftest import ROOT
from helpers import FakePool, cmdline, descendants, free_port, healthy, until

TINY = ["--dataset", "moons", "--hidden", "8", "--epochs", "2"]
LONG = ["--dataset", "digits", "--hidden", "512,512", "--epochs", "400"]  # minutes: stopped long before
LAB_VARIABLES = ("ASYMVIZ_EXTERNAL_WORKERS", "ASYMVIZ_PASSWORD", "ASYMVIZ_INSTRUCTOR_PASSWORD", "ASYMVIZ_AUTH",
                 "ASYMVIZ_DATASETS", "ASYMVIZ_MAX_PARAMS", "ASYMVIZ_MAX_EPOCHS", "ASYMVIZ_MAX_RUNS_PER_OWNER",
                 "ASYMVIZ_MAX_QUEUE", "ASYMVIZ_WORKERS", "ASYMVIZ_WORKER_THREADS")


# ------------------------------------------------------------------------------------- helpers

def environ(pid: int) -> dict[str, str]:
    try:
        raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def gone(pids) -> bool:
    return not any(lab.pid_alive(pid) for pid in pids)


def lab_env(home: pathlib.Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAB_VARIABLES}
    return {**env, "ASYMVIZ_HOME": str(home), **extra}


class Tree:
    """A process started in its own session, killed with everything under it at the end."""

    def __init__(self, args, env, log_path, cwd=ROOT):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        return pathlib.Path(self.log_path).read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its session
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


@pytest.fixture
def lab_home():
    path = pathlib.Path(tempfile.mkdtemp(prefix="asymviz-lab-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------- environment, cores, processes

@pytest.mark.parametrize("files,quota", [
    ({"cpu.max": "400000 100000\n"}, 4.0),  # cgroup v2, docker run --cpus 4
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),  # v2, no quota
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no quota
    ({"cpu.max": "garbage\n"}, None),
    ({}, None),  # no cgroup files at all
])
def test_cpu_quota_reads_the_containers_cgroup(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert lab.cpu_quota(str(tmp_path)) == quota
    cores = len(os.sched_getaffinity(0))
    expected = cores if quota is None else max(1, min(cores, math.ceil(quota)))
    assert lab.cpu_count(str(tmp_path)) == expected


def test_a_zombie_is_not_alive_and_other_hosts_are_not_judged():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        until(lambda: lab.process_state(child.pid) == "Z", 30, "the child to exit (unreaped)")
        assert not lab.pid_alive(child.pid)  # exited; only its entry waits for this process
        assert lab.pid_alive(child.pid, "another-host")  # cannot be seen from here: assumed alive
    finally:
        child.wait()
    assert not lab.pid_alive(child.pid) and not lab.pid_alive(child.pid, lab.HOST)
    assert lab.pid_alive(os.getpid()) and lab.pid_alive(os.getpid(), "") and lab.pid_alive(1)
    assert not any(lab.pid_alive(pid) for pid in (None, 0, -5, "12", 999_999_999))


# ------------------------------------------------------------------------- pool status, machine

def test_pool_status_lists_live_workers_only(lab_home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_HOME", str(lab_home))
    assert lab.read_pool_status() is None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lab.write_pool_status(FakePool([sleeper.pid, 999_999_999]))
        status = lab.read_pool_status()
        assert status["pid"] == os.getpid() and status["workers"] == 2 and status["pids"] == [sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert lab.read_pool_status()["pids"] == []  # a dead (reaped) worker is not listed
    lab.clear_pool_status()
    assert lab.read_pool_status() is None and not (lab_home / lab.POOL_FILE).exists()


def test_machine_numbers():
    assert lab.rss_mb(os.getpid()) > 10 and lab.rss_mb(999_999_999) is None
    mem = lab.memory()
    assert mem["total_mb"] > 0 and 0 <= mem["available_mb"] <= mem["total_mb"]
    load = lab.load()
    assert load["cores"] >= 1 and load["load_1"] >= 0


# --------------------------------------------------------------------------- limits by environment

@pytest.mark.parametrize("variable, value, first, second, sentence", [
    ("ASYMVIZ_MAX_EPOCHS", "5", None, ["--epochs", "6"],
     "error: This instance allows at most 5 epochs per run (ASYMVIZ_MAX_EPOCHS); this run asks for 6."),
    ("ASYMVIZ_MAX_PARAMS", "1000", None, ["--hidden", "64,64"],
     "error: This instance allows models of at most 1,000 parameters (ASYMVIZ_MAX_PARAMS); this one has 4,482, "
     "so use fewer or narrower hidden layers."),
    ("ASYMVIZ_MAX_RUNS_PER_OWNER", "1", ["--owner", "ana"], ["--owner", "ana"],
     "error: ana already has 1 queued or running runs, the most this instance allows per person "
     "(ASYMVIZ_MAX_RUNS_PER_OWNER); wait for one to finish or stop one."),
    ("ASYMVIZ_MAX_QUEUE", "1", ["--owner", "ana"], ["--owner", "ben"],
     "error: The queue is full: 1 runs are queued or running, the most this instance allows (ASYMVIZ_MAX_QUEUE); "
     "try again when some have finished."),
])
def test_a_submit_over_a_limit_set_by_environment_is_refused_with_its_sentence(
        lab_home, monkeypatch, capsys, variable, value, first, second, sentence):
    for name in LAB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ASYMVIZ_HOME", str(lab_home))
    monkeypatch.setenv(variable, value)
    base = ["submit", "--dataset", "moons", "--epochs", "2", "--hidden", "8"]
    if first is not None:
        assert cli.main(base + first) == 0
    capsys.readouterr()
    assert cli.main(base + second) == 2
    assert capsys.readouterr().err.strip() == sentence
    with Store(lab_home / "asymviz.db") as store:
        assert store.count(("queued",)) == (0 if first is None else 1)


# ----------------------------------------------------------------------------- serve: start, stop

def test_serve_refuses_a_bad_lab_configuration_before_starting_anything(lab_home, monkeypatch, capsys):
    monkeypatch.setenv("ASYMVIZ_HOME", str(lab_home))
    monkeypatch.setenv("ASYMVIZ_DATASETS", "moons,imagenet")
    before = set(descendants(os.getpid()))
    assert cli.main(["serve", "--port", str(free_port())]) == 2
    assert "ASYMVIZ_DATASETS names unknown dataset(s) 'imagenet'" in capsys.readouterr().err
    assert set(descendants(os.getpid())) <= before and not (lab_home / lab.POOL_FILE).exists()


def start_serve(home, port, *flags, python=sys.executable, env=None):
    return Tree([python, "-m", "asymviz", "serve", "--port", str(port), "--address", "127.0.0.1", *flags],
                env or lab_env(home), home / "serve.log")


def test_serve_runs_pool_and_server_as_one_tree_and_ctrl_c_stops_both(lab_home):
    port = free_port()
    tree = start_serve(lab_home, port, "--workers", "1")
    try:
        until(lambda: healthy(port) or tree.proc.poll() is not None, 180, "the health endpoint")
        assert tree.proc.poll() is None, tree.output()
        kids = descendants(tree.proc.pid)
        [server] = [pid for pid in kids if "streamlit" in cmdline(pid)]
        assert environ(server)["ASYMVIZ_EXTERNAL_WORKERS"] == "1"  # the server starts no pool of its own
        status = until(lambda: lab.read_pool_status(lab_home / lab.POOL_FILE), 60, "the pool status file")
        assert status["pid"] == tree.proc.pid and status["workers"] == 1
        assert len(status["pids"]) == 1 and status["pids"][0] in kids
        tree.proc.send_signal(signal.SIGINT)
        assert tree.proc.wait(timeout=120) == 0, tree.output()
        until(lambda: gone(kids), 30, "every process of the tree to exit")
        assert not (lab_home / lab.POOL_FILE).exists()
        assert "asymviz serve: stopped." in tree.output()
    finally:
        tree.kill()


def test_serve_stops_its_workers_when_the_server_cannot_start(lab_home):
    port = free_port()
    with socket.socket() as taken:  # the port is in use: streamlit exits, so must the pool
        taken.bind(("127.0.0.1", port))
        taken.listen()
        tree = start_serve(lab_home, port, "--workers", "1")
        try:
            code = tree.proc.wait(timeout=240)
            assert code != 0
            assert "the Streamlit server exited with code" in tree.output()
            assert not (lab_home / lab.POOL_FILE).exists()
        finally:
            tree.kill()


# -------------------------------------------------------------------- the image's recipe, no Docker

def cli_json(python, env, *args):
    out = subprocess.run([python, "-m", "asymviz", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def submit(python, env, *flags) -> int:
    out = subprocess.run([python, "-m", "asymviz", "submit", *flags], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[0])


@pytest.mark.integration
@pytest.mark.timeout(2400)
def test_the_image_recipe_installs_serves_trains_and_stops_cleanly():
    """scripts/install.sh into a fresh venv; scripts/entrypoint.sh; a run submitted through the
    CLI finishes; SIGTERM (as `docker stop` sends) while a run trains: exit 0, the run is
    `interrupted`, nothing is left `running`, and no process of the tree is left."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="asymviz-recipe-"))
    venv, home = work / "venv", work / "data"
    tree = None
    try:
        python3 = shutil.which("python3") or sys.executable
        install_env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        install = subprocess.run(["bash", str(ROOT / "scripts/install.sh"), str(venv)], cwd=work,
                                 env={**install_env, "TORCH_INDEX": "", "PYTHON": python3},
                                 capture_output=True, text=True, timeout=1500)
        assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-4000:]
        assert "installed torch 2.13.0" in install.stdout

        python = str(venv / "bin" / "python")
        port = free_port()
        kernel_dir = work / "kernels"  # the image's ASYMVIZ_KERNEL_DIR, built as the Dockerfile does
        env = lab_env(home, PORT=str(port), ASYMVIZ_WORKERS="1", VIRTUAL_ENV=str(venv),
                      ASYMVIZ_KERNEL_DIR=str(kernel_dir),
                      PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        env.pop("PYTHONPATH", None)
        build = subprocess.run([python, "-m", "asymviz", "kernels"], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=300)
        if shutil.which(os.environ.get("CC") or "cc") or os.environ.get("ASYMVIZ_REQUIRE_KERNELS"):
            assert build.returncode == 0 and "compiled C kernels" in build.stdout, build.stdout + build.stderr
            assert len(list(kernel_dir.glob("asymviz_kernels_*.so"))) == 1
        tree = Tree(["bash", str(ROOT / "scripts/entrypoint.sh"), "--address", "127.0.0.1"], env,
                    work / "entrypoint.log")
        until(lambda: healthy(port) or tree.proc.poll() is not None, 300, "the health endpoint", every=1.0)
        assert tree.proc.poll() is None, tree.output()
        assert "asymviz" in cmdline(tree.proc.pid) and "bash" not in cmdline(tree.proc.pid)  # exec'd: the server is PID
        assert (home / "asymviz.db").exists()

        tiny = submit(python, env, *TINY, "--owner", "ci")
        run = until(lambda: (r := cli_json(python, env, "runs", "show", str(tiny), "--json")["run"])["status"]
                    not in ("queued", "running") and r, 600, "the tiny run to end", every=2.0)
        assert run["status"] == "finished" and run["summary"]["test_acc"] is not None

        long = submit(python, env, *LONG, "--owner", "ci")
        until(lambda: (r := cli_json(python, env, "runs", "show", str(long), "--json")["run"])["status"] == "running"
              and (r["progress"] or 0) > 0, 600, "the long run to train", every=2.0)
        kids = descendants(tree.proc.pid)
        [server] = [pid for pid in kids if "streamlit" in cmdline(pid)]
        assert cmdline(server).startswith(python + " -m streamlit run")  # the fresh venv's (first on PATH)
        assert environ(server)["ASYMVIZ_EXTERNAL_WORKERS"] == "1" and len(kids) >= 2  # the pool is serve's

        tree.proc.send_signal(signal.SIGTERM)  # what `docker stop` sends to PID 1
        assert tree.proc.wait(timeout=180) == 0, tree.output()
        until(lambda: gone(kids), 60, "every process of the tree to exit")

        runs = {r["id"]: r for r in cli_json(python, env, "runs", "list", "--json")}
        assert [r for r in runs.values() if r["status"] == "running"] == []
        assert runs[tiny]["status"] == "finished" and runs[long]["status"] == "interrupted"
        assert "shut down" in runs[long]["error"]
        log = tree.output()
        assert "SIGTERM: stopping the dashboard, then the workers" in log and "asymviz serve: stopped." in log
        if build.returncode == 0:  # the server found the kernels the recipe built
            assert "asymviz serve: CPU kernels: compiled C kernels" in log and str(kernel_dir) in log
    finally:
        if tree is not None:
            tree.kill()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("text,external", [("1", True), ("YES", True), (" on ", True), ("0", False), ("no", False),
                                           ("", False)])
def test_external_workers_reads_yes_or_no(monkeypatch, text, external):
    monkeypatch.setenv("ASYMVIZ_EXTERNAL_WORKERS", text)
    assert lab.external_workers() is external


def test_external_workers_refuses_what_is_no_yes_or_no(monkeypatch):
    """A typo in the lab's settings is one sentence, not silently 'no' (which would start a second pool)."""
    monkeypatch.setenv("ASYMVIZ_EXTERNAL_WORKERS", "maybe")
    with pytest.raises(ConfigError, match="^ASYMVIZ_EXTERNAL_WORKERS must be yes or no, got 'maybe'.$"):
        lab.external_workers()
