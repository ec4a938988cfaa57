"""The Train page's live view through AppTest: its charts are the elements st.plotly_chart would
send, it refreshes on the lab's interval while a run trains, less often while it is queued and
not at all once it has ended, and the instructor sets that interval for everyone."""

import json

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import ui_common
from asymviz import live
from asymviz.store import Store
from asymviz.train import TrainConfig
from conftest import ROOT

TRAIN = "pages/1_Train.py"


def add_run(home, status="queued", owner="ana"):
    with Store(home / "asymviz.db") as store:
        config = TrainConfig(dataset="moons", hidden=[8], epochs=3).validated().to_dict()
        run_id = store.create_run(config, owner=owner)
        if status != "queued":
            store.claim_next(1, "test")  # pid 1 is alive: the run stays running
            with store.writer(run_id) as w:
                for s in range(1, 11):
                    w.add_step({"step": s, "epoch": 1, "train/loss": 1.0 / s, "time/backward_ms": 1.0})
            if status != "running":
                store.set_status(run_id, status)
    return run_id


@pytest.fixture
def timers(monkeypatch):
    """The run_every of every live view the Train page starts (the lecture panel's own fragment,
    ui_lecture, is not counted here)."""
    seen = []
    fragment = st.fragment

    def recording(func=None, *, run_every=None):
        if getattr(func, "__name__", None) == "live_view":
            seen.append(run_every)
        return fragment(func, run_every=run_every)
    monkeypatch.setattr(st, "fragment", recording)
    monkeypatch.setitem(ui_common._LAB_REFRESH, "read_at", -1e9)  # read the lab's setting afresh
    return seen


def watch(run_id):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.switch_page(TRAIN)
    at.query_params.update({"run": str(run_id)})
    at.run()
    assert not at.exception, at.exception
    return at


def test_a_running_run_refreshes_on_the_labs_interval(home, timers):
    at = watch(add_run(home, "running"))
    assert timers == [1.0] and "Running" in at.get("progress")[0].proto.text
    assert len(at.get("plotly_chart")) == 4  # loss, accuracy, gap, decision boundary


def test_a_queued_run_is_looked_at_less_often(home, timers):
    at = watch(add_run(home, "queued"))
    assert timers == [3.0] and "Queued" in at.get("progress")[0].proto.text
    # nothing trained yet: its status line only, no empty metrics or charts sent every refresh
    assert not at.get("plotly_chart") and not at.metric


def test_a_run_queued_again_after_training_still_shows_what_it_learned(home, timers):
    from asymviz import pace

    run_id = add_run(home, "running")
    with Store(home / "asymviz.db") as store:
        pace.requeue(store, run_id)  # gave its worker back (a lecture's Pause): queued, with its steps
    at = watch(run_id)
    assert timers == [3.0] and "Queued" in at.get("progress")[0].proto.text
    assert len(at.get("plotly_chart")) == 4 and at.metric


def test_an_ended_run_is_drawn_once_without_a_timer(home, timers):
    at = watch(add_run(home, "stopped"))
    assert timers == [] and "Stopped" in at.get("progress")[0].proto.text
    assert len(at.get("plotly_chart")) == 4


def test_the_instructor_sets_the_refresh_for_everyone(home, timers, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", "chalk")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/5_Instructor.py").run()
    at.text_input(key="instructor_password").input("chalk")
    at.get("button")[0].click().run()
    assert at.number_input(key="instructor_refresh").value == 1.0
    at.number_input(key="instructor_refresh").set_value(4.0).run()
    at.button(key="instructor_refresh_apply").click().run()
    assert not at.exception and live.read_refresh(home) == 4.0
    timers.clear()
    watch(add_run(home, "running"))
    assert timers == [4.0]


@pytest.mark.parametrize("config", [None, {"displayModeBar": False}])
def test_a_live_chart_is_the_element_st_plotly_chart_sends(home, monkeypatch, config):
    """ui_common.chart sends the same PlotlyChart (spec, config, theme, layout) as st.plotly_chart
    with the figure validated; and with FAST_CHARTS off it is st.plotly_chart."""
    from streamlit.delta_generator import DeltaGenerator

    layouts = []
    enqueue = DeltaGenerator._enqueue

    def recording(self, delta_type, element_proto, layout_config=None, **kwargs):
        if delta_type == "plotly_chart":
            layouts.append((layout_config.width, layout_config.height))
        return enqueue(self, delta_type, element_proto, layout_config, **kwargs)
    monkeypatch.setattr(DeltaGenerator, "_enqueue", recording)

    def script():
        import streamlit as st

        import ui_common
        from asymviz import figures
        from asymviz.live import Chart
        epochs = [{"epoch": 1, "gap": 0.1}, {"epoch": 2, "gap": -0.05}]
        path, config = st.session_state.get("path", "fast"), st.session_state.get("config")
        if path == "plain":
            st.plotly_chart(figures.gap_figure(epochs), key="gap", config=config)
        else:
            ui_common.FAST_CHARTS = path == "fast"
            ui_common.chart(st, Chart(figures.to_json(figures.gap_figure.spec(epochs)), 320), key="gap", config=config)
            ui_common.FAST_CHARTS = True

    monkeypatch.syspath_prepend(str(ROOT))
    protos = {}
    for path in ("fast", "plain", "fallback"):
        at = AppTest.from_function(script, default_timeout=60)
        at.session_state["path"] = path
        at.session_state["config"] = config
        at.run()
        assert not at.exception, at.exception
        [element] = at.get("plotly_chart")
        protos[path] = element.proto
    for path in ("fast", "fallback"):
        a, b = protos[path], protos["plain"]
        assert json.loads(a.spec) == json.loads(b.spec)
        assert (a.config, a.theme, a.form_id, list(a.selection_mode)) == (b.config, b.theme, b.form_id,
                                                                          list(b.selection_mode))
        assert a.id.endswith("-gap") and a.id.startswith("$$ID-")
        assert json.loads(a.config) == (config or {})
    assert layouts == [("stretch", 320)] * 3


def test_live_slots_serve_page_loads_first_then_in_order_and_bound_the_holders():
    import threading
    import time

    slots = ui_common._Slots(1)
    order, threads = [], []

    def waiter(name, priority):
        with slots.hold(priority):
            order.append(name)

    with slots.hold(1):
        for name, priority in (("refresh a", 1), ("refresh b", 1), ("page", 0), ("refresh c", 1)):
            threads.append(threading.Thread(target=waiter, args=(name, priority)))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while len(slots._line) < len(threads) and time.monotonic() < deadline:
                time.sleep(0.01)  # queued before the next one arrives
    for t in threads:
        t.join(10)
    assert order == ["page", "refresh a", "refresh b", "refresh c"]

    slots, inside, most = ui_common._Slots(2), [0], [0]
    lock = threading.Lock()

    def busy():
        with slots.hold(1):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=busy) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] == 2 and inside[0] == 0 and slots._free == 2
