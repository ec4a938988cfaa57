"""asymviz.live: a run's live view is read incrementally, at most once per max_age whoever asks,
and each figure is built once per new data and handed out as the validated figure's JSON."""

import json
import threading
import time
from collections import Counter

import numpy as np
import plotly.io as pio
import pytest

from asymviz import figures, live
from asymviz.errors import ConfigError
from asymviz.recording import GRID_KIND
from asymviz.store import Store, pack_mask


class CountingStore:
    """A Store that counts its read calls and the arguments they got."""

    def __init__(self, store):
        self.store, self.calls = store, []

    def __getattr__(self, name):
        method = getattr(self.store, name)

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return method(*args, **kwargs)
        return call

    def count(self, name=None):
        return sum(1 for c in self.calls if name is None or c[0] == name)


@pytest.fixture
def store():
    s = Store(":memory:")
    yield s
    s.close()


def running(store, **config):
    run_id = store.create_run({"dataset": "moons", "hidden": [16, 8], "strategy": "neuron", "sparsity": 0.5,
                               "epochs": 5, **config}, owner="ana")
    store.claim_next(1, "test")
    return run_id


def write(store, run_id, first, last, epoch=None, masks=False, grid=False):
    with store.writer(run_id) as w:
        for s in range(first, last + 1):
            w.add_step({"step": s, "epoch": epoch or 1, "train/loss": 1.0 / s, "train/batch_acc": 0.5,
                        "time/forward_ms": 1.0, "time/backward_ms": 2.0, "time/optimizer_ms": 0.5})
            if masks:
                w.add_mask(s, 0, [s % 16, 3], 16, conn=pack_mask(np.eye(16, 4, dtype=bool)) if s % 10 == 0 else None)
        if epoch:
            w.add_epoch({"epoch": epoch, "step": last, "train/acc": 0.8, "val/acc": 0.75, "gap": 0.05,
                         "train/loss": 0.5, "val/loss": 0.6})
            if grid:
                w.add_artifact(GRID_KIND, {"resolution": 2, "x": [-2.0, 2.0], "y": [-2.0, 2.0],
                                           "cls": [[0, 1], [1, 1]], "conf": [[0.9, 0.6], [0.7, 0.99]]}, epoch=epoch)


def test_step_sampler_reads_incrementally_and_stays_bounded(store):
    run_id = store.create_run({"dataset": "digits"}, owner="ana")
    sampler = live.StepSampler(run_id, max_points=50)
    assert sampler.update(store) == []
    step = 0
    for chunk in (30, 70, 500, 5000):
        with store.writer(run_id) as w:
            for _ in range(chunk):
                step += 1
                w.add_step({"step": step, "train/loss": 1.0 / step})
        records = sampler.update(store)
        assert len(records) <= 100 and records[0]["step"] in (1, sampler.stride)
        steps = [r["step"] for r in records]
        assert steps == sorted(set(steps)) and all(s % sampler.stride == 0 for s in steps[1:])
        assert step - steps[-1] < sampler.stride  # never more than a stride behind
    late = live.StepSampler(run_id, max_points=50)  # joining a long run: one strided read
    assert 25 <= len(late.update(store)) <= 100


def test_a_view_reads_only_new_rows_and_at_most_once_per_max_age(store):
    run_id = running(store)
    counting = CountingStore(store)
    watch = live.LiveRun(run_id)
    write(store, run_id, 1, 20, epoch=1)
    view = watch.refresh(counting, max_age=0)
    assert view.run["status"] == "running" and view.last_step["step"] == 20 and view.last_epoch["epoch"] == 1
    reads = counting.count()
    write(store, run_id, 21, 40, epoch=2)
    assert watch.refresh(counting, max_age=60).last_step["step"] == 20  # fresh enough: no read
    assert counting.count() == reads
    view = watch.refresh(counting, max_age=0)
    assert view.last_step["step"] == 40 and view.last_epoch["epoch"] == 2
    since = [c[2] for c in counting.calls if c[0] in ("steps", "epochs")][-2:]
    assert since == [{"since_step": 20, "every": None}, {"since_epoch": 1}]  # only what is new


def test_charts_are_built_once_per_data_and_match_the_validated_figures(store, monkeypatch):
    run_id = running(store)
    write(store, run_id, 1, 30, epoch=1)
    watch = live.LiveRun(run_id)
    watch.refresh(store, max_age=0)
    built = Counter()
    to_json = figures.to_json
    monkeypatch.setattr(figures, "to_json", lambda spec: built.update([spec["layout"]["title"]["text"]]) or to_json(spec))
    first = {name: watch.chart(name) for name in ("loss", "accuracy", "gap")}
    assert all(watch.chart(name) is chart for name, chart in first.items())  # the same string, not rebuilt
    assert sum(built.values()) == 3
    steps, epochs = store.steps(run_id), store.epochs(run_id)
    assert json.loads(first["loss"].json) == json.loads(pio.to_json(figures.loss_figure(steps, epochs)))
    assert json.loads(first["gap"].json) == json.loads(pio.to_json(figures.gap_figure(epochs)))
    assert first["loss"].height == 320

    write(store, run_id, 31, 35)  # new steps, no new epoch: the gap chart stays
    watch.refresh(store, max_age=0)
    assert watch.chart("loss") is not first["loss"] and watch.chart("accuracy") is not first["accuracy"]
    assert watch.chart("gap") is first["gap"]
    assert sorted(built.values()) == [1, 2, 2]  # loss and accuracy again, the gap chart once
    with pytest.raises(ValueError):
        watch.chart("nope")


def test_many_sessions_at_once_build_each_chart_once(store, monkeypatch):
    run_id = running(store)
    write(store, run_id, 1, 50, epoch=1)
    watch = live.LiveRun(run_id)
    builds = []
    to_json = figures.to_json
    monkeypatch.setattr(figures, "to_json", lambda spec: builds.append(1) or to_json(spec))
    barrier, seen, reads = threading.Barrier(8), [], CountingStore(store)

    def session():
        barrier.wait()
        watch.refresh(reads, max_age=5)
        seen.append(watch.chart("loss"))

    threads = [threading.Thread(target=session) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and all(chart is seen[0] for chart in seen)
    assert len(builds) == 1 and reads.count("get_run") == 1


def test_an_ended_run_is_read_once_more_then_never(store):
    run_id = running(store)
    write(store, run_id, 1, 10, epoch=1)
    watch = live.LiveRun(run_id)
    counting = CountingStore(store)
    watch.refresh(counting, max_age=0)
    write(store, run_id, 11, 20, epoch=2)
    store.set_status(run_id, "finished", summary={"test_acc": 0.9})
    view = watch.refresh(counting, max_age=0)
    assert view.run["status"] == "finished" and view.last_step["step"] == 20  # the rows before the end
    reads = counting.count()
    for _ in range(3):
        watch.refresh(counting, max_age=0)
    assert counting.count() == reads


def test_masks_view_counts_incrementally(store):
    run_id = running(store, strategy="excessive", conn_sparsity=0.5)
    write(store, run_id, 1, 25, masks=True)
    watch = live.LiveRun(run_id)
    watch.refresh(store, max_age=0)
    counting = CountingStore(store)
    charts = watch.mask_charts(counting, 0, 16, lambda n: 8, with_conn=True)
    assert charts["records"] == 25 and charts["conn"] is not None
    write(store, run_id, 26, 40, masks=True)
    watch.refresh(store, max_age=0)
    charts = watch.mask_charts(counting, 0, 16, lambda n: 8, with_conn=True)
    assert charts["records"] == 40
    assert [c[2]["since_step"] for c in counting.calls if c[0] == "masks"] == [None, 25]
    counts, n_records = figures.selection_counts(store.masks(run_id, layer=0), 16)
    expected = figures.selection_figure(counts, n_records, 0, keep=8)
    assert json.loads(charts["selection"].json) == json.loads(pio.to_json(expected))
    assert "step 40" in json.loads(charts["conn"].json)["layout"]["title"]["text"]
    assert watch.mask_charts(counting, 0, 16, lambda n: 8, with_conn=True)["heatmap"] is charts["heatmap"]


def test_boundary_follows_the_newest_grid(store):
    run_id = running(store)
    write(store, run_id, 1, 10, epoch=1, grid=True)
    watch = live.LiveRun(run_id)
    watch.refresh(store, max_age=0)
    chart, grid = watch.boundary_chart(store)
    assert grid["epoch"] == 1 and "after epoch 1" in chart.json and chart.height == 400
    traces = [t["type"] for t in json.loads(chart.json)["data"]]
    assert traces[:2] == ["image", "contour"] and "scatter" in traces  # regions, boundary, the data
    assert watch.boundary_chart(store)[0] is chart
    write(store, run_id, 11, 20, epoch=2, grid=True)
    watch.refresh(store, max_age=0)
    assert watch.boundary_chart(store)[1]["epoch"] == 2


def test_timing_view_finds_the_symmetric_reference(store):
    config = {"dataset": "moons", "hidden": [16, 8], "epochs": 5}
    ref = store.create_run({**config, "strategy": "symmetric"}, owner="bo")
    store.claim_next(1, "test")
    store.set_status(ref, "finished", summary={"backward_ms_mean": 4.0})
    run_id = running(store)
    write(store, run_id, 1, 10)
    watch = live.LiveRun(run_id)
    watch.refresh(store, max_age=0)
    chart, found = watch.timing_chart(store)
    assert found["id"] == ref and f"symmetric run #{ref}" in chart.json


def test_live_runs_keeps_one_view_per_run_and_drops_the_oldest():
    runs = live.LiveRuns(max_runs=3)
    first = runs.get(1)
    assert runs.get(1) is first
    for run_id in (2, 3, 4):
        runs.get(run_id)
    assert len(runs) == 3 and runs.get(1) is not first  # 1 was the least recently used


def test_lab_refresh_round_trips_and_refuses_out_of_range(tmp_path):
    assert live.read_refresh(tmp_path) is None
    live.write_refresh(tmp_path, 2.5)
    assert live.read_refresh(tmp_path) == 2.5
    for bad in (0.1, 61, float("nan"), float("inf"), True, "2"):
        with pytest.raises(ValueError, match="from 0.5 to 60 seconds"):
            live.write_refresh(tmp_path, bad)
    assert live.read_refresh(tmp_path) == 2.5


@pytest.mark.parametrize("content, expected", [
    ('{"refresh_s": 0.001}', 0.5), ('{"refresh_s": 1e9}', 60.0), ('{"refresh_s": NaN}', None),
    ('{"refresh_s": "fast"}', None), ('[1, 2]', None), ('not json', None), ('{"refresh_s": [3]}', None),
    ('{"refresh_s": -Infinity}', None)])
def test_a_tampered_refresh_file_is_ignored_or_clamped(tmp_path, content, expected):
    (tmp_path / live.REFRESH_FILE).write_text(content)
    assert live.read_refresh(tmp_path) == expected


# ----------------------------------------------------------------------------- the server's load


class FakeProcess:
    """A clock and a process CPU counter the test moves by hand: `run(seconds, cores)`."""

    def __init__(self):
        self.now, self.used = 100.0, 0.0

    def run(self, seconds, cores):
        self.now += seconds
        self.used += seconds * cores


def governor(budget=0.5, **kw):
    p = FakeProcess()
    return p, live.RefreshGovernor(budget, window=5.0, hold=15.0, hold_down=60.0, clock=lambda: p.now,
                                   cpu=lambda: p.used, **kw)


def load(p, g, cores, seconds, every=1.0):
    """`seconds` of a load of `cores` at factor 1, asking for the factor every `every` seconds;
    the load at another factor is the same work spread over the longer interval."""
    factors = []
    for _ in range(int(seconds / every)):
        f = g.factor()
        factors.append(f)
        p.run(every, cores / f)
    return factors


def test_an_idle_server_keeps_the_chosen_interval():
    p, g = governor()
    assert set(load(p, g, 0.1, 120)) == {1}
    assert g.busy == pytest.approx(0.1)


def test_a_busy_server_stretches_the_interval_in_one_step_to_fit_its_budget():
    """1.2 cores of refreshes at 1 s against a budget of 0.5: straight to x3 (0.4 cores; x2 would
    still be 0.6), within the first windows, and there it stays."""
    p, g = governor()
    factors = load(p, g, 1.2, 200)
    assert factors[:5] == [1] * 5 and factors[-1] == 3 and max(factors) == 3
    steps = [i for i in range(1, len(factors)) if factors[i] != factors[i - 1]]
    assert [factors[i] for i in steps] == [3] and steps[0] < 30
    assert g.busy == pytest.approx(0.4)


def test_a_load_that_grows_stretches_the_interval_again_after_the_hold():
    """The class grows while the interval is x2: the next step comes once the first has held."""
    p, g = governor()
    load(p, g, 0.8, 60)  # 0.8 / 0.45 -> x2 (0.4 cores)
    assert g.factor() == 2
    factors = load(p, g, 2.0, 60)  # now 1.0 cores at x2 -> 2.0 * 1 / 0.45 -> x5
    assert factors[-1] == 5 and set(factors) == {2, 5}


def test_the_interval_comes_back_in_one_step_a_minute_after_the_class_leaves():
    """Every step makes each open view restart once: from x3 straight back to x1, not via x2."""
    p, g = governor()
    load(p, g, 1.2, 200)
    assert g.factor() == 3
    factors = load(p, g, 0.05, 200)
    assert factors[-1] == 1 and sorted(set(factors), reverse=True) == [3, 1]
    steps = [i for i in range(1, len(factors)) if factors[i] != factors[i - 1]]
    assert len(steps) == 1 and 55 <= steps[0] <= 70  # after a minute of low load


def test_a_step_down_goes_only_as_far_as_the_load_fits():
    """At x10 a load of 0.06 cores would be 0.6 at x1 and 0.3 at x2 (over 70 % of 0.5 = 0.35 at
    x1, under it at x2): back to x2, and there it stays."""
    p, g = governor()
    load(p, g, 50.0, 100)
    assert g.factor() == 10
    factors = load(p, g, 0.6, 300)
    assert factors[-1] == 2 and sorted(set(factors), reverse=True) == [10, 2]


def test_views_restart_a_few_a_second():
    """60 views asking every second to take a new interval: two at once, then two a second;
    every one of them has restarted within about half a minute."""
    p, g = governor()
    waiting, restarted_at = set(range(60)), {}
    for second in range(60):
        for view in sorted(waiting):
            if g.may_restart():
                waiting.discard(view)
                restarted_at[view] = second
        p.run(1.0, 0.0)
    assert not waiting and g.restarts == 60
    per_second = Counter(restarted_at.values())
    assert per_second[0] == 2 and max(per_second.values()) == 2 and max(restarted_at.values()) <= 30


def test_one_view_restarts_at_once():
    p, g = governor()
    assert g.may_restart()
    p.run(30.0, 0.0)
    assert g.may_restart() and g.may_restart()  # the burst refilled while idle


def test_the_page_runs_of_a_step_do_not_count_as_load():
    """After a step to x3, the views' page runs (here 0.3 cores while they restart) would push
    the load over the budget again; windows with restarts after a step are not judged."""
    p, g = governor()
    load(p, g, 1.2, 20)  # the step comes after the first hold, at 15 s
    assert g.factor() == 3
    for _ in range(40):  # 40 s of views restarting, two a second, at 0.15 cores each
        g.factor()
        g.may_restart()
        p.run(1.0, 0.4 + 0.3)
    assert g.factor() == 3
    assert load(p, g, 1.2, 60)[-1] == 3  # and then it judges again: 0.4 cores, it fits


def test_restarts_stop_hiding_the_load_a_minute_after_a_step():
    p, g = governor()
    load(p, g, 1.2, 20)
    factors = []
    for _ in range(120):  # restarts that never end: after a minute they are load like any
        factors.append(g.factor())
        g.may_restart()
        p.run(1.0, 0.7)
    assert factors[:40] == [3] * 40 and factors[-1] > 3


def test_restarts_without_a_step_are_load_like_any():
    """Views that restart because their runs start and end (no step) are judged as ever."""
    p, g = governor()
    for _ in range(60):
        g.factor()
        g.may_restart()
        p.run(1.0, 1.2)
    assert g.factor() == 3


def test_a_short_pause_of_the_class_does_not_shrink_the_interval():
    """The class stops watching for 30 s and comes back: the interval stays stretched."""
    p, g = governor()
    load(p, g, 1.2, 200)
    assert set(load(p, g, 0.0, 30)) == {3}
    assert set(load(p, g, 1.2, 60)) == {3}


def test_a_load_just_under_the_budget_does_not_flap():
    """At x2 the load is 0.425 (budget 0.5); x1 would be 0.85, over 70 % of the budget: it stays."""
    p, g = governor()
    factors = load(p, g, 0.85, 300)
    assert factors[-250:] == [2] * 250


def test_the_interval_stretches_at_most_ten_fold():
    p, g = governor()
    assert load(p, g, 50.0, 400)[-1] == live.LOAD_FACTORS[-1] == 10


def test_a_budget_of_zero_never_stretches():
    p, g = governor(budget=0.0)
    assert set(load(p, g, 5.0, 100)) == {1}


def test_the_budget_is_the_cores_the_workers_leave(monkeypatch):
    from asymviz import lab

    monkeypatch.setattr(lab, "cpu_count", lambda: 8)
    monkeypatch.delenv(live.SERVER_CPU_VARIABLE, raising=False)
    monkeypatch.setenv("ASYMVIZ_WORKERS", "6")
    assert live.server_cpu_budget() == 2.0
    monkeypatch.setenv("ASYMVIZ_WORKERS", "8")
    assert live.server_cpu_budget() == 0.3  # none left: a small share anyway
    monkeypatch.setenv(live.SERVER_CPU_VARIABLE, "1.5")
    assert live.server_cpu_budget() == 1.5


@pytest.mark.parametrize("text", ["lots", "-1", "nan", "inf"])
def test_a_bad_budget_is_one_sentence(monkeypatch, text):
    monkeypatch.setenv(live.SERVER_CPU_VARIABLE, text)
    with pytest.raises(ConfigError, match=r"^ASYMVIZ_SERVER_CPU must be a number"):
        live.server_cpu_budget()


def test_the_governor_measures_this_process_by_default():
    """With the real clocks: a busy loop reads as a share of a core (at most one, this thread), not 0."""
    g = live.RefreshGovernor(100.0, window=0.3, hold=0.0)
    end = time.monotonic() + 0.45
    while time.monotonic() < end:
        g.factor()
    assert g.busy is not None and 0.05 < g.busy <= 1.5
