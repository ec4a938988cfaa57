"""asymviz.live for the lecture panel and the twins view: however many sessions watch a run, its
pace, exact step and snapshot are read once per refresh interval, each picture is built once per
new snapshot (or new data of a twin), a run that has ended is not read again, and the pictures
are the validated figures' JSON. Through AppTest: the panel's and the twins' timers follow the
live view's (the lab's interval while training, less often while queued, none once ended)."""

import json
import threading
from collections import Counter

import plotly.io as pio
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import ui_common
from asymviz import figures, figures_network, figures_twins, live, pace, twins
from asymviz.snapshot import Recorder
from asymviz.store import Store
from asymviz.train import Callback, TrainConfig, fit
from conftest import ROOT
from test_live import CountingStore, write

SESSIONS = 8
MOONS = {"dataset": "moons", "hidden": [8, 8], "strategy": "neuron", "sparsity": 0.5, "epochs": 3, "seed": 5}


class Clock:
    """asymviz.live's clock, moved by hand (refreshes and max_age without sleeping)."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(live, "time", fake)
    return fake


@pytest.fixture
def store():
    s = Store(":memory:")
    yield s
    s.close()


class _Capture(Callback):
    def on_fit_start(self, ctx):
        self.recorder = Recorder(ctx.model, ctx.data, ctx.device)

    def on_step_end(self, ctx, record):
        self.recorder.count()

    def on_fit_end(self, ctx, result):
        self.snapshot = self.recorder.capture(ctx.step, ctx.epoch)


@pytest.fixture(scope="module")
def snapshot():
    """A real snapshot of a small network trained on two moons (with neuron maps and boundary)."""
    capture = _Capture()
    fit(TrainConfig(**{**MOONS, "epochs": 1}).validated(), [capture])
    return capture.snapshot


def running(store, config=MOONS, **fields):
    run_id = store.create_run(dict(config), owner="ana", **fields)
    store.claim_next(1, "test")
    return run_id


def sessions(work, n=SESSIONS):
    """Run work(i) in n threads released together (a class refreshing at once); their results."""
    barrier, out = threading.Barrier(n), [None] * n

    def session(i):
        barrier.wait()
        out[i] = work(i)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.fixture
def builds(monkeypatch):
    """How many times each figure of the lecture parts was built."""
    built = Counter()

    def spy(owner, name, label):
        make = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, **k: built.update([label]) or make(*a, **k))
    spy(figures_network.network_figure, "spec", "network")
    spy(figures.boundary_figure, "spec", "boundary")
    spy(figures_network, "summary_figure", "summary")
    spy(figures_twins, "twins_curve_figure", "twins curves")
    spy(figures_twins, "twins_timing_figure", "twins timing")
    return built


def panel(watch, reads, max_age=0.5):
    """What one session's lecture panel asks of the run's shared reader on a refresh."""
    lecture = watch.lecture(reads, max_age)
    return lecture, watch.network_charts(reads, boundary=True) if lecture.snapshot else None


# ------------------------------------------------------------------------------ the lecture panel

def test_a_class_on_one_run_costs_one_read_and_one_picture_per_new_snapshot(store, snapshot, clock, builds):
    run_id = running(store)
    write(store, run_id, 1, 10)
    pace.write_snapshot(store, run_id, {**snapshot, "step": 10})
    watch, reads = live.LiveRun(run_id), CountingStore(store)

    seen = sessions(lambda i: panel(watch, reads))
    assert all(s[0] is seen[0][0] and s[1] is seen[0][1] for s in seen)  # one view and one picture for all
    lecture, (network, boundary) = seen[0]
    assert lecture.step == 10 and lecture.snapshot[:2] == (10, snapshot["epoch"]) and lecture.pace == pace.Pace()
    assert "Network at step 10" in network.json and "Decision boundary at step 10" in boundary.json
    first = Counter(c[0] for c in reads.calls)
    assert first == {"get_run": 1, "steps_downsampled": 1, "steps": 1, "epochs": 1, "_query": 4}  # 3 panel + 1 snapshot
    assert builds == {"network": 1, "boundary": 1}

    clock.now += 0.2  # refreshes within max_age: nothing read, nothing built
    assert all(s[1] is seen[0][1] for s in sessions(lambda i: panel(watch, reads)))
    assert Counter(c[0] for c in reads.calls) == first and builds == {"network": 1, "boundary": 1}

    clock.now += 1  # nothing new: one incremental read for the class, no snapshot read, no picture
    assert all(s[1] is seen[0][1] for s in sessions(lambda i: panel(watch, reads)))
    assert reads.count("get_run") == 2 and reads.count("_query") == 4 + 3 and builds == {"network": 1, "boundary": 1}

    write(store, run_id, 11, 12)
    pace.write_snapshot(store, run_id, {**snapshot, "step": 12})
    clock.now += 1
    again = sessions(lambda i: panel(watch, reads))
    assert all(s[1] is again[0][1] for s in again) and again[0][1] is not seen[0][1]
    assert again[0][0].step == 12 and "Network at step 12" in again[0][1][0].json
    assert reads.count("get_run") == 3 and builds == {"network": 2, "boundary": 2}
    assert [c[2] for c in reads.calls if c[0] == "steps"][-1]["since_step"] == 10  # only the new rows


def test_a_pace_change_is_read_at_the_next_refresh_whatever_max_age(store, snapshot, clock):
    run_id = running(store)
    watch = live.LiveRun(run_id)
    assert not watch.lecture(store, max_age=60).pace.paused
    pace.pause(store, [run_id])
    assert not watch.lecture(store, max_age=60).pace.paused  # within max_age: the shared read stands
    watch.touch()  # what the panel's Pause button does after writing the pace
    assert watch.lecture(store, max_age=60).pace.paused


def test_an_ended_runs_panel_reads_its_last_snapshot_then_nothing(store, snapshot, clock, builds):
    run_id = running(store)
    write(store, run_id, 1, 20)
    pace.write_snapshot(store, run_id, {**snapshot, "step": 19})
    watch, reads = live.LiveRun(run_id), CountingStore(store)
    panel(watch, reads)
    store.set_status(run_id, "finished", summary={"test_acc": 0.9})
    clock.now += 1
    lecture, _ = panel(watch, reads)
    assert lecture.run["status"] == "finished" and lecture.step == 20
    pace.write_snapshot(store, run_id, {**snapshot, "step": 20})  # the worker's last one, after the end
    clock.now += 1
    lecture, (network, _) = panel(watch, reads)
    assert lecture.snapshot[0] == 20 and "Network at step 20" in network.json
    done = reads.count()
    for _ in range(5):
        clock.now += live.SETTLE_S
        sessions(lambda i: panel(watch, reads))
    assert reads.count() == done and builds["network"] == 2  # no read and no picture any more


def test_pictures_are_the_validated_figures(store, snapshot, clock):
    run_id = running(store)
    pace.write_snapshot(store, run_id, snapshot)
    watch = live.LiveRun(run_id)
    watch.lecture(store)
    network, boundary = watch.network_charts(store, boundary=True)
    assert json.loads(network.json) == json.loads(pio.to_json(figures_network.network_figure(snapshot)))
    pts, labels, names = watch.points()
    expected = figures.boundary_figure(snapshot["boundary"], pts, labels, names, n_classes=len(names),
                                       title=f"Decision boundary at step {snapshot['step']:,}")
    assert json.loads(boundary.json) == json.loads(pio.to_json(expected))
    assert network.height == figures_network.network_figure(snapshot).layout.height
    assert watch.network_charts(store, boundary=False)[1] is None  # not 2-D data on the page: no boundary
    empty = figures_network.network_figure.spec(None)
    assert json.loads(figures.to_json(empty)) == json.loads(pio.to_json(figures_network.network_figure(None)))


def test_a_large_networks_summary_counts_incrementally(store, clock, builds):
    config = {"dataset": "digits", "hidden": [32], "strategy": "neuron", "sparsity": 0.5, "epochs": 2}
    run_id = running(store, config)
    with store.writer(run_id) as w:
        for s in range(1, 31):
            w.add_step({"step": s, "epoch": 1, "train/loss": 1.0})
            w.add_mask(s, 0, [s % 32, 3], 32)
    watch, reads = live.LiveRun(run_id), CountingStore(store)
    widths, keep, dense = (64, 32, 10), (16, None), (False, True)
    watch.lecture(reads)
    charts = sessions(lambda i: watch.summary_chart(reads, widths, keep, dense))
    assert all(c is charts[0] for c in charts) and reads.count("masks") == 1 and builds["summary"] == 1
    counts = store.layer_selection_counts(run_id, 0)  # what the page counted from every record before

    with store.writer(run_id) as w:
        for s in range(31, 41):
            w.add_mask(s, 0, [1, 2], 32)
    clock.now += 1  # within SUMMARY_EVERY_S: the counts are not read again
    assert watch.summary_chart(reads, widths, keep, dense) is charts[0] and reads.count("masks") == 1
    clock.now += live.SUMMARY_EVERY_S
    chart = watch.summary_chart(reads, widths, keep, dense)
    assert chart is not charts[0] and builds["summary"] == 2
    assert [c[2]["since_step"] for c in reads.calls if c[0] == "masks"] == [None, 30]  # only the new records
    assert "of 40 recorded steps" in chart.json

    store.set_status(run_id, "finished")
    clock.now += 1
    watch.lecture(reads)
    watch.summary_chart(reads, widths, keep, dense)  # once more after the end ...
    done = reads.count("masks")
    clock.now += 10 * live.SUMMARY_EVERY_S
    watch.summary_chart(reads, widths, keep, dense)  # ... then never
    assert done == 3 and reads.count("masks") == 3
    expected = figures_network.summary_figure(list(widths), [counts, None], list(keep))
    assert json.loads(charts[0].json) == json.loads(pio.to_json(expected))


# ------------------------------------------------------------------------------------------ twins

def twin_group(store, claimed=True):
    """A run and its two twins as pace.submit queues them (held, then released together), and
    (claimed) taken by a worker."""
    tag = twins.new_tag()
    ids = [store.create_run(c, owner="ana", tag=tag, held=True) for c in twins.twin_configs(MOONS)]
    pace.release(store, ids)
    for _ in ids if claimed else ():
        store.claim_next(1, "test")
    return ids


def test_a_class_on_twins_costs_one_read_per_twin_and_one_chart_per_new_data(store, clock, builds):
    ids = twin_group(store)
    for i, run_id in enumerate(ids):
        write(store, run_id, 1, 10, epoch=1)
    runs, reads = live.LiveRuns(), CountingStore(store)
    # sessions watch the run and each of its twins: the same group, the same charts
    seen = sessions(lambda i: runs.twins(reads, ids[i % 3], max_age=0.5))
    assert [r["id"] for r in seen[0].runs] == ids and all(v.charts == seen[0].charts for v in seen)
    assert all(v.charts[name] is seen[0].charts[name] for v in seen for name in ("val/acc", "gap", "timing"))
    assert reads.count("get_run") == 3 and reads.count("list_runs") == 3  # per run, not per session
    assert builds == {"twins curves": 2, "twins timing": 1}
    assert f"#{ids[1]} symmetric" in seen[0].charts["gap"].json and seen[0].last_epochs[2]["epoch"] == 1

    clock.now += 1  # nothing new: no chart built
    listed = reads.count("list_runs")
    view = sessions(lambda i: runs.twins(reads, ids[0], max_age=0.5))[0]
    assert view.charts["timing"] is seen[0].charts["timing"] and sum(builds.values()) == 3
    assert reads.count("list_runs") == listed  # the group is complete once released: not listed again

    write(store, ids[2], 11, 15)  # new steps of one twin, no new epoch: the timing chart only
    clock.now += 1
    view = sessions(lambda i: runs.twins(reads, ids[0], max_age=0.5))[0]
    assert view.charts["timing"] is not seen[0].charts["timing"] and view.charts["gap"] is seen[0].charts["gap"]
    assert builds == {"twins curves": 2, "twins timing": 2}

    for run_id in ids:
        store.set_status(run_id, "finished", summary={"test_acc": 0.8, "backward_ms_mean": 1.0})
    clock.now += 1
    view = runs.twins(reads, ids[0], max_age=0.5)
    assert {r["status"] for r in view.runs} == {"finished"}
    done = reads.count()
    for _ in range(3):
        clock.now += 10
        sessions(lambda i: runs.twins(reads, ids[0], max_age=0.5))
    assert reads.count() == done  # all ended: nothing read any more


def test_a_deleted_twin_is_left_out(store, clock):
    ids = twin_group(store)
    runs = live.LiveRuns()
    assert len(runs.twins(store, ids[0]).runs) == 3
    store.delete_run(ids[2], force=True)
    clock.now += 1
    view = runs.twins(store, ids[0])
    assert [r["id"] for r in view.runs] == ids[:2] and set(view.charts) == {"val/acc", "gap", "timing"}


def test_a_group_seen_before_its_release_is_listed_again_until_released(store, clock):
    tag = twins.new_tag()
    first = store.create_run(dict(MOONS), owner="ana", tag=tag, held=True)
    watch = live.LiveRun(first)
    assert watch.group(store) == (first,)  # its twins are not queued yet
    second = store.create_run(dict(MOONS, strategy="symmetric"), owner="ana", tag=tag, held=True)
    pace.release(store, [first, second])
    clock.now += 1
    assert watch.group(store) == (first, second)


# --------------------------------------------------------------------------------- the page's timers

@pytest.fixture
def timers(monkeypatch):
    """The run_every of each fragment the Train page starts, by the fragment's function name."""
    seen = []
    fragment = st.fragment

    def recording(func=None, *, run_every=None):
        seen.append((getattr(func, "__name__", None), run_every))
        return fragment(func, run_every=run_every)
    monkeypatch.setattr(st, "fragment", recording)
    monkeypatch.setitem(ui_common._LAB_REFRESH, "read_at", -1e9)
    return seen


def open_train(run_id):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/1_Train.py")
    at.query_params.update({"run": str(run_id)})
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.mark.parametrize("status, expected", [
    ("running", [("live_view", 1.0), ("_twins", 1.0)]),  # the panel is drawn in the live view's fragment
    ("queued", [("live_view", 3.0), ("_twins", 3.0)]),  # a queued run is looked at less often
    ("stopped", []),  # ended: drawn once, no timer
])
def test_the_panel_and_twins_refresh_as_the_live_view_does(home, timers, status, expected):
    with Store(home / "asymviz.db") as s:
        ids = twin_group(s, claimed=status != "queued")
        if status == "stopped":
            for run_id in ids:
                s.set_status(run_id, "stopped")
    at = open_train(ids[0])
    assert timers == expected
    at.get_by_key("lecture_twins_time")
    assert at.get_by_key("lecture_step_counter") is not None
