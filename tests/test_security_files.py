"""Attacks on the files of a lab server: no link, form, queued config or stored config can make
the lab read, write or lock a file it did not store itself from an upload.

A CSV reaches a run only as `{"upload": <sha256 id>, "label": ...}`, resolved inside
$ASYMVIZ_HOME/uploads; a file path is for the local command line alone. Each test tries one
way around that and checks that nothing of the target file leaks into what a user sees."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asymviz import data
from asymviz.errors import AsymvizError, DataError
from asymviz.executors import execute
from asymviz.jobs import Runner
from asymviz.store import Store
from asymviz.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TRAIN = "pages/1_Train.py"
CANARY = "canary-7d1f3b"  # a secret that must never reach a page, an error or the store
GOOD = b"a,b,label\n" + b"".join(b"%d,%d,%s\n" % (i, i * 3 % 7, b"yes" if i % 2 else b"no")
                                 for i in range(40))


@pytest.fixture
def secret_file(tmp_path):
    """A server file a student must not read: a well-formed CSV whose header is the secret (so
    'label column not found; available columns: ...' would print it, as it once did)."""
    path = tmp_path / "secret.csv"
    path.write_text(f"{CANARY},x\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    return path


def page_text(at) -> str:
    """Everything the page shows: sidebar and main, every element's text."""
    parts = []
    for kind in ("error", "warning", "info", "caption", "markdown", "success", "text"):
        parts += [str(getattr(e, "value", "")) for e in at.get(kind)]
        parts += [str(getattr(e, "value", "")) for e in at.sidebar.get(kind)]
    return "\n".join(parts)


def store_text(home: Path) -> str:
    """Every run's config, error and events, as text."""
    with Store(home / "asymviz.db") as store:
        runs = store.list_runs()
        return json.dumps([(r, store.events(r["id"])) for r in runs], default=str)


def attack_paths(home: Path, secret: Path) -> list[str]:
    return [str(secret), "/proc/self/environ", "/etc/passwd", "../../../../etc/passwd",
            str(home / "asymviz.db"), str(secret.parent / ".." / secret.parent.name / secret.name)]


# --------------------------------------------------------------------------------- links


@pytest.mark.parametrize("which", range(6))
def test_a_link_cannot_name_a_server_file(page, home, secret_file, monkeypatch, which):
    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", CANARY)  # what /proc/self/environ held
    target = attack_paths(home, secret_file)[which]
    options = json.dumps({"path": target, "label": "zz"})
    at = page(TRAIN, query_params={"dataset": "csv", "dataset_options": options})
    text = page_text(at)
    assert CANARY not in text and "root:" not in text
    assert "cannot name a file on the server" in text
    assert at.button(key="train_start").disabled  # nothing to train on until an upload


@pytest.mark.parametrize("upload", ["../secret", "../../etc/passwd", "/etc/passwd", "0" * 63,
                                    "A" * 64, "0" * 64 + "/../x", ["0" * 64], {"a": 1}])
def test_a_link_upload_id_must_be_one_the_lab_issued(page, home, upload):
    options = json.dumps({"upload": upload, "label": "label"})
    at = page(TRAIN, query_params={"dataset": "csv", "dataset_options": options})
    assert not at.exception
    assert any("is not one; upload the file again" in w for w in page_text(at).splitlines())
    assert at.button(key="train_start").disabled


def test_a_link_to_an_upload_reproduces_the_run(page, home):
    upload_id = _store_upload(home, GOOD)
    options = json.dumps({"upload": upload_id, "label": "label"})
    at = page(TRAIN, query_params={"dataset": "csv", "dataset_options": options}, state={"owner": "ana"})
    assert "Using the CSV from the link" in page_text(at)
    assert not at.button(key="train_start").disabled
    at.button(key="train_start").click().run()
    (run,) = Store(home / "asymviz.db").list_runs()
    assert run["config"]["dataset_options"] == {"upload": upload_id, "label": "label"}


# ------------------------------------------------------------------------------- uploads dir


def _store_upload(home: Path, raw: bytes) -> str:
    upload_id = data.store_upload(raw, "label")
    assert (home / "uploads" / f"{upload_id}.csv").read_bytes() == raw
    return upload_id


def test_a_symlink_planted_in_uploads_is_not_followed(home, secret_file):
    upload_id = hashlib.sha256(secret_file.read_bytes()).hexdigest()  # even with the right hash
    (home / "uploads").mkdir()
    (home / "uploads" / f"{upload_id}.csv").symlink_to(secret_file)
    with pytest.raises(DataError, match="no longer on this server") as err:
        data.load_dataset("csv", {"upload": upload_id, "label": "zz"})
    assert CANARY not in str(err.value)


def test_a_fifo_or_folder_in_uploads_is_refused_without_blocking(home):
    (home / "uploads").mkdir()
    fifo, folder = "1" * 64, "2" * 64
    os.mkfifo(home / "uploads" / f"{fifo}.csv")
    (home / "uploads" / f"{folder}.csv").mkdir()
    for upload_id in (fifo, folder):
        with pytest.raises(DataError, match="no longer on this server"):
            data.read_upload(upload_id)


def test_an_upload_changed_on_disk_is_refused(home, secret_file):
    upload_id = _store_upload(home, GOOD)
    (home / "uploads" / f"{upload_id}.csv").write_bytes(secret_file.read_bytes())
    with pytest.raises(DataError, match="no longer on this server") as err:
        data.load_dataset("csv", {"upload": upload_id, "label": "zz"})
    assert CANARY not in str(err.value)


def test_a_rejected_upload_is_not_kept(home):
    bad = b"a,color,label\n" + b"".join(b"%d,red,%d\n" % (i, i % 2) for i in range(30))
    with pytest.raises(DataError, match="must be numeric"):
        data.store_upload(bad, "label")
    with pytest.raises(DataError, match="not found"):
        data.store_upload(GOOD, "nope")
    assert not (home / "uploads").exists() or not any((home / "uploads").iterdir())


def test_a_rejected_upload_in_the_page_is_not_kept(page, home):
    at = page(TRAIN)
    at.selectbox(key="train_dataset").set_value("csv").run()
    bad = b"a,b,label\n" + b"".join(b"%d,%d,same\n" % (i, i) for i in range(30))  # one class
    at.sidebar.file_uploader[0].upload("data.csv", bad, "text/csv")
    at.run()
    assert any("single class" in e.value for e in at.sidebar.error)
    assert at.button(key="train_start").disabled
    assert not (home / "uploads").exists() or not any((home / "uploads").iterdir())


# ------------------------------------------------------------------------ queue and store


@pytest.mark.parametrize("which", range(6))
def test_the_queue_refuses_a_config_naming_a_file(home, secret_file, which):
    path = attack_paths(home, secret_file)[which]
    config = TrainConfig(dataset="csv", dataset_options={"path": path, "label": "zz"}, hidden=[4])
    runner = Runner(home / "asymviz.db", workers=0)
    with pytest.raises(AsymvizError, match="cannot name a file on the server") as err:
        runner.submit(config, owner="mallory")
    assert CANARY not in str(err.value)
    assert runner.store.list_runs() == []


def test_a_stored_config_naming_a_file_fails_without_reading_it(home, secret_file):
    """A config planted in the store (or left by an older version) reaches a worker as it is."""
    store = Store(home / "asymviz.db")
    config = TrainConfig(dataset="csv", dataset_options={"path": str(secret_file), "label": "zz"},
                         hidden=[4], epochs=1).to_dict()
    run_id = store.create_run(config, owner="mallory")
    run = store.claim_next(os.getpid(), "test")
    assert execute(store, run) == "failed"
    assert "cannot name a file on the server" in store.get_run(run_id)["error"]
    assert CANARY not in store_text(home)


def test_the_store_itself_cannot_be_named(home):
    """Reading asymviz.db through a CSV path once made the server drop its SQLite lock."""
    store = Store(home / "asymviz.db")
    config = TrainConfig(dataset="csv", dataset_options={"path": str(store.path), "label": "x"})
    with pytest.raises(DataError, match="cannot name a file on the server"):
        Runner(store, workers=0).submit(config)


# ------------------------------------------------------------------------------ command line


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ASYMVIZ_HOME": str(home), "ASYMVIZ_WORKERS": "0"}
    return subprocess.run([sys.executable, "-m", "asymviz", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_submit_copies_a_local_csv_into_uploads(home, tmp_path):
    path = tmp_path / "mine.csv"
    path.write_bytes(GOOD)
    p = run_cli(home, "submit", "--csv", str(path), "--label", "label", "--hidden", "8")
    assert p.returncode == 0, p.stderr
    run = Store(home / "asymviz.db").get_run(int(p.stdout.split()[0]))
    upload_id = hashlib.sha256(GOOD).hexdigest()
    assert run["config"]["dataset_options"] == {"upload": upload_id, "label": "label"}
    assert (home / "uploads" / f"{upload_id}.csv").read_bytes() == GOOD


def test_submit_of_a_config_file_naming_a_path_uploads_it(home, tmp_path, secret_file):
    """`submit --config` is the local user's: their path is copied in (and checked) first."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"dataset": "csv", "hidden": [4],
                                  "dataset_options": {"path": str(secret_file), "label": "x"}}))
    p = run_cli(home, "submit", "--config", str(config))
    assert p.returncode == 0, p.stderr
    run = Store(home / "asymviz.db").get_run(int(p.stdout.split()[0]))
    assert set(run["config"]["dataset_options"]) == {"upload", "label"}


def test_train_keeps_local_paths(tmp_path, home):
    path = tmp_path / "mine.csv"
    path.write_bytes(GOOD)
    p = run_cli(home, "train", "--csv", str(path), "--label", "label", "--hidden", "8",
                "--epochs", "1", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["status"] == "finished"
