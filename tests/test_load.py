"""scripts/load_test.py, short: ten simulated browser sessions speaking Streamlit's own protocol
watch their own runs, then all watch one run (and three a lecture run with its twins), on a lab
started as `python -m asymviz serve`.
Every session keeps getting updates, every run finishes (or, watched by all, trains through
the window) and nothing errors. Timings are the
script's table to read (README, "How big a machine"), never asserted here."""

import asyncio
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "load_test.py"


def _load_test_module():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    own = next(row for name, row in rows.items() if "its own run" in name)
    # the throughput against the same queue unwatched, split at the moment every session had its page:
    # each run counted once, on one side
    assert own["joined_at"] is not None and own["steps_per_s_alone"] > 0
    assert own["throughput_joining"][0] + own["throughput_joined"][0] == 10, own


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
    (["--view-repeats", "0"], "--view-repeats must be from 1 to 10, got 0"),
])
def test_bad_arguments_are_one_sentence(argv, sentence):
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and sentence in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------- the session's protocol, no server


def _run(fragments=(), status=None):
    """ForwardMsgs of one script run: its start, a delta, and (with `status`) its finish."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    start = ForwardMsg()
    start.new_session.name = "Train"
    start.metadata.run.fragment_ids.extend(fragments)
    delta = ForwardMsg()
    delta.delta.new_element.markdown.body = "x"
    msgs = [start, delta]
    if status is not None:
        end = ForwardMsg()
        end.script_finished = getattr(ForwardMsg, status)
        end.metadata.run.fragment_ids.extend(fragments)
        msgs.append(end)
    return [m.SerializeToString() for m in msgs]


def test_a_fragment_run_relabeled_early_counts_as_served_unless_a_page_run_follows():
    """The server relabels a finished fragment run FINISHED_EARLY_FOR_RERUN when the next run
    starts before its messages went out (a real tab's two timers firing together), keeping its
    deltas for the next fragment run, dropping them for a page run: the session and the
    Chromium tab's counter must both count the first and not the second."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    lt = _load_test_module()
    frames = (_run((), "FINISHED_SUCCESSFULLY") + _run(("a",), "FINISHED_EARLY_FOR_RERUN")
              + _run(("b",), "FINISHED_FRAGMENT_RUN_SUCCESSFULLY")  # a and b served: 2
              + _run(("a",), "FINISHED_EARLY_FOR_RERUN") + _run((), "FINISHED_SUCCESSFULLY")  # a dropped
              + _run(("b",), "FINISHED_FRAGMENT_RUN_SUCCESSFULLY"))  # 3
    session, counter = lt.Session("http://127.0.0.1:9", "Train", "run=1"), lt.ServedRuns()
    session.started = 0.0
    for i, data in enumerate(frames):
        if i in (3, 9):  # a timer's rerun before each fragment run that is dropped or served early
            session.waiting.append(0.0)
        session.handle(data)
        counter.see(ForwardMsg.FromString(data), float(i))
    assert session.refreshes == 3 and len(counter.times) == 3
    assert session.full_runs == 2 and len(session.updates) == 5
    assert len(session.latencies) == 1  # the first timer's rerun, served by run a; the second's by the page run
    assert session.serving == []


def test_timers_tick_as_the_browser_s_even_while_a_run_is_under_way():
    """Streamlit 1.67's App.handleAutoRerun: a rerun on every tick of a fragment's interval,
    whether or not a run is under way; the same interval again keeps the timer, a new one
    replaces it, a page run clears them."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    lt = _load_test_module()

    class Socket:
        def __init__(self):
            self.sent = []

        async def send(self, data):
            self.sent.append(data)

        async def close(self):
            pass

    def auto_rerun(interval):
        msg = ForwardMsg()
        msg.auto_rerun.fragment_id, msg.auto_rerun.interval = "f", interval
        return msg.SerializeToString()

    async def scenario():
        session = lt.Session("http://127.0.0.1:9", "Train", "run=1")
        session.ws, session.started = Socket(), 0.0
        session.handle(_run(())[0])  # a page run starts and stays under way
        session.handle(auto_rerun(0.05))
        timer = session.timers["f"][0]
        session.handle(auto_rerun(0.05))
        assert session.timers["f"][0] is timer
        await asyncio.sleep(0.32)
        ticks = len(session.ws.sent)
        session.handle(auto_rerun(10.0))
        assert session.timers["f"][0] is not timer and session.timers["f"][1] == 10.0
        await asyncio.sleep(0)
        assert timer.cancelled()
        session.handle(_run(())[0])  # the next page run clears the timers
        assert session.timers == {}
        await session.close()
        return ticks

    ticks = asyncio.run(scenario())
    assert ticks >= 3  # about 6 ticks of 0.05 s, all sent though the run never finished


def test_the_message_cache_does_not_age_while_a_rerun_asked_for_has_not_started():
    """As the browser (App.handleScriptFinished): entries age by finished runs, except runs that
    finish between a rerun request, sent with the hashes the session then held, and the start of
    the run serving it; else the server may answer with a reference to a message aged out."""
    lt = _load_test_module()
    session = lt.Session("http://127.0.0.1:9", "Train", "run=1")
    session.started, session.max_age = 0.0, 0
    session.handle(_run(())[0])  # a page run starts
    session.cache["h"] = [session.runs, ""]
    session.started_since_rerun = False  # as send_rerun leaves it
    session.handle(_run((), "FINISHED_SUCCESSFULLY")[-1])  # the page run ends before the rerun starts
    assert "h" in session.cache and session.runs == 0
    for data in _run((), "FINISHED_SUCCESSFULLY"):  # the rerun's run starts and ends: now it ages
        session.handle(data)
    assert "h" not in session.cache and session.runs == 1
