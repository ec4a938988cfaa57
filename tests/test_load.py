"""scripts/load_test.py, short: ten simulated browser sessions speaking Streamlit's own protocol
watch their own runs, then all watch one run (and three a lecture run with its twins), on a lab
started as `python -m asymviz serve`.
Every session keeps getting updates, every run finishes (or, watched by all, trains through
the window) and nothing errors. Timings are the
script's table to read (README, "How big a machine"), never asserted here."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "load_test.py"


def _harness(*args: str) -> dict:
    """The harness's rows by scenario, after checking it ran and the server logged no traceback."""
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--no-browser", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["scenario"]: row for row in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert "server log" not in rows, rows.get("server log")  # no traceback from the server or its workers
    return rows


def test_ten_sessions_get_updates_and_nothing_errors():
    rows = _harness("--sessions", "10", "--seconds", "20", "--scenarios", "own,same", "--baseline-seconds", "3")
    watched = [row for row in rows.values() if row.get("sessions", 0) == 10]
    assert len(watched) == 2, list(rows)
    for row in watched:
        assert row["errors"] == 0, row["error_samples"]
        # every session got its page; on one live run, updates after it too (on its own short run,
        # a session that joins late may find the run already ended: its page is then the last word)
        assert row["fewest_updates"] >= (2 if "all on one run" in row["scenario"] else 1), row
        done, of = row["runs"].split()[0].split("/")
        assert done == of and "(" not in row["runs"], row["runs"]  # every run finished, or trained throughout
        assert row["page_loads"] >= 5 and row["page_load_failed"] == 0
    same = next(row for name, row in rows.items() if "all on one run" in name)
    assert same["refreshes"] >= 10 * 5 and same["p95_s"] is not None  # fragment reruns, timed


def test_sessions_on_a_lecture_run_get_its_pictures_and_nothing_errors():
    rows = _harness("--sessions", "3", "--seconds", "10", "--scenarios", "lecture", "--baseline-seconds", "2")
    (row,) = [row for name, row in rows.items() if "lecture run" in name]
    assert row["errors"] == 0, row["error_samples"]
    assert row["lecture_pictures"] == 3 and row["fewest_updates"] >= 2, row  # panel, boundary and twins on each
    assert row["refreshes"] >= 3 * 3


@pytest.mark.parametrize("argv, sentence", [
    (["--sessions", "0"], "--sessions must be from 1 to 200, got 0"),
    (["--sessions", "5000"], "--sessions must be from 1 to 200, got 5000"),
    (["--seconds", "100000"], "--seconds must be from 5 to 900"),
    (["--scenarios", "views,everything"], "--scenarios takes views, own, same and lecture, got everything"),
])
def test_bad_arguments_are_one_sentence(argv, sentence):
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and sentence in proc.stderr and "Traceback" not in proc.stderr
