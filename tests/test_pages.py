"""Every dashboard page through streamlit.testing's AppTest: renders, widgets by key, bad input
gives one st.error sentence and launches nothing, the URL carries the config both ways."""

import json

import pytest

from asymviz import pagekit
from asymviz.recording import GRID_KIND
from asymviz.store import Store, pack_mask
from asymviz.train import TrainConfig

TRAIN, RUNS, TIMING = "pages/1_Train.py", "pages/2_Runs.py", "pages/3_Backward_timing.py"
TRAIN_KEYS = ["train_dataset", "train_layers", "train_width_0", "train_width_1", "train_activation",
              "train_strategy", "train_sparsity", "train_selection", "train_granularity", "train_dropout",
              "train_optimizer", "train_lr", "train_batch_size", "train_epochs", "train_seed", "train_device",
              "train_start", "owner_sign_out"]


def runs_of(home):
    with Store(home / "asymviz.db") as store:
        return store.list_runs()


def errors(at):
    return [e.value for e in at.error]


def finished_run(home, owner="ana", steps=60, **config):
    """A finished run with step, epoch, mask and grid records, as a worker would leave it."""
    c = TrainConfig(**{"dataset": "moons", "hidden": [16, 8], "epochs": 3, **config}).validated()
    with Store(home / "asymviz.db") as store:
        run_id = store.create_run(c.to_dict(), owner=owner)
        store.claim_next(1, "test")
        with store.writer(run_id) as w:
            for s in range(1, steps + 1):
                w.add_step({"step": s, "epoch": 1 + s * 3 // (steps + 1), "train/loss": 1.0 / s,
                            "train/batch_acc": 0.5, "time/forward_ms": 1.0, "time/backward_ms": 2.0,
                            "time/optimizer_ms": 0.5, "time/step_ms": 3.5})
                w.add_mask(s, 0, [s % 16, 3], 16, pack_mask([[True, False] * 1] * 16) if s == 1 else None)
            for e in range(1, 4):
                w.add_epoch({"epoch": e, "step": e * 20, "train/loss": 0.5 / e, "train/acc": 0.8 + e / 100,
                             "val/loss": 0.6 / e, "val/acc": 0.78 + e / 100, "gap": 0.02})
                w.add_artifact(GRID_KIND, {"resolution": 2, "x": [-2.0, 2.0], "y": [-2.0, 2.0],
                                           "cls": [[0, 1], [1, 1]], "conf": [[0.9, 0.6], [0.7, 0.99]]}, epoch=e)
        summary = {"status": "finished", "test_acc": 0.9, "val_acc": 0.81, "train_acc": 0.83, "gap": 0.02,
                   "backward_ms_mean": 2.0 if c.strategy != "symmetric" else 4.0, "step_ms_mean": 3.5, "epochs": 3}
        store.set_status(run_id, "finished", summary=summary)
    return run_id


# ----------------------------------------------------------------------------------- home


def test_home_renders_and_try_it_launches_a_run_and_opens_it(page, home):
    at = page("app.py", state={"owner": "ana"})
    assert at.title[0].value.startswith("asymviz")
    assert len(at.get("plotly_chart")) == 1
    at.button(key="home_try").click().run()
    assert not at.exception
    runs = runs_of(home)
    assert len(runs) == 1 and runs[0]["owner"] == "ana" and runs[0]["config"]["dataset"] == "moons"
    assert at.query_params["run"] == str(runs[0]["id"]) and at.query_params["dataset"] == "moons"
    assert at.session_state["train_dataset"] == "moons"  # the Train page opened with its config


def test_try_it_over_a_limit_says_so_and_launches_nothing(page, home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_MAX_EPOCHS", "5")
    at = page("app.py")
    at.button(key="home_try").click().run()
    assert not at.exception
    assert any("at most 5 epochs" in e for e in errors(at))
    assert runs_of(home) == []


# ----------------------------------------------------------------------------------- train


def test_train_renders_with_every_widget_found_by_key(page):
    at = page(TRAIN)
    for key in TRAIN_KEYS:
        at.get_by_key(key)  # KeyError if missing
    assert "cuda" not in at.selectbox(key="train_device").options or __import__("torch").cuda.is_available()
    assert at.selectbox(key="train_dataset").options[0] == "Handwritten digits (8x8)"
    assert "(needs a download)" in " ".join(at.selectbox(key="train_dataset").options)
    assert any("26 of 256" in c.value for c in at.sidebar.caption)  # k per layer at sparsity 0.9
    assert not errors(at)
    assert at.query_params["dataset"] == "digits" and at.query_params["seed"] == "0"


def test_train_url_round_trips_the_config(page):
    config = TrainConfig(dataset="moons", hidden=[32, 16, 8], strategy="excessive", sparsity=0.75,
                         conn_sparsity=0.5, dropout=0.1, seed=1234, lr=0.003, epochs=7, batch_size=48,
                         dataset_options={"noise": 0.3}).to_dict()
    at = page(TRAIN, query_params=pagekit.config_to_query(config))
    assert not errors(at) and not at.warning
    assert at.selectbox(key="train_strategy").value == "excessive"
    assert at.number_input(key="train_layers").value == 3 and at.number_input(key="train_width_2").value == 8
    assert at.slider(key="train_sparsity").value == 0.75 and at.slider(key="train_conn_sparsity").value == 0.5
    assert at.number_input(key="train_seed").value == 1234
    back, problems = pagekit.config_from_query(at.query_params)
    assert problems == [] and pagekit.full_config(back) == config
    at.number_input(key="train_seed").set_value(99).run()  # and the URL follows the widgets
    assert at.query_params["seed"] == "99" and at.query_params["strategy"] == "excessive"


def test_train_link_with_bad_values_warns_and_uses_defaults(page):
    at = page(TRAIN, query_params={"strategy": "magic", "sparsity": "lots", "seed": "5"})
    assert not at.exception
    assert len(at.warning) == 2
    assert at.selectbox(key="train_strategy").value == "neuron" and at.number_input(key="train_seed").value == 5


def test_sparsity_leaving_no_neuron_is_an_error_and_start_launches_nothing(page, home):
    at = page(TRAIN)
    at.slider(key="train_sparsity").set_value(1.0).run()
    assert errors(at) == ["Sparsity 1.00 would leave no neuron in the backward pass; choose a value below 1 "
                          "(0.99 keeps 1 % of each layer's neurons, at least one)."]
    assert at.button(key="train_start").disabled  # (AppTest, like a browser, cannot click it)
    assert runs_of(home) == []


def test_start_queues_a_run_owned_by_the_session_and_selects_it(page, home):
    at = page(TRAIN, query_params={"dataset": "moons", "epochs": "3", "seed": "42"}, state={"owner": "ana"})
    at.button(key="train_start").click().run()
    assert not at.exception and not errors(at)
    (run,) = runs_of(home)
    assert run["owner"] == "ana" and run["config"]["seed"] == 42 and run["config"]["epochs"] == 3
    assert at.query_params["run"] == str(run["id"])
    assert at.button(key="train_stop")  # a queued run of ours can be stopped ...
    at.button(key="train_stop").click().run()
    assert runs_of(home)[0]["status"] == "stopped"  # ... and a queued run stops at once


def test_limit_exceeded_is_one_sentence(page, home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_MAX_PARAMS", "1000")
    at = page(TRAIN)
    at.button(key="train_start").click().run()
    assert not at.exception
    (sentence,) = errors(at)
    assert "at most 1,000 parameters" in sentence and "\n" not in sentence
    assert runs_of(home) == []


def test_offline_download_is_one_sentence_next_to_the_dataset(page, home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_MNIST_URL", "http://127.0.0.1:9/")  # nothing listens there
    at = page(TRAIN, query_params={"dataset": "mnist"})
    assert not errors(at)
    at.button(key="train_start").click().run()
    assert not at.exception
    sidebar_errors = [e.value for e in at.sidebar.error]
    assert len(sidebar_errors) == 1 and sidebar_errors[0].startswith("Could not download MNIST")
    assert runs_of(home) == []


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01garbage", "at least two columns"),
    (b"a,b,label\n" + b"".join(b"x,%d,%d\n" % (i, i % 2) for i in range(30)), "must be numeric"),
])
def test_malformed_csv_is_one_sentence(page, home, content, message):
    at = page(TRAIN)
    at.selectbox(key="train_dataset").set_value("csv").run()
    assert any("Upload a CSV" in i.value for i in at.sidebar.info)
    assert at.button(key="train_start").disabled
    at.sidebar.file_uploader[0].upload("data.csv", content, "text/csv")
    at.run()
    assert not at.exception
    assert len(errors(at)) == 1 and message in errors(at)[0]
    assert at.button(key="train_start").disabled
    assert runs_of(home) == []


def test_good_csv_trains_from_the_upload(page, home):
    content = b"a,b,c,label\n" + b"".join(b"%d,%d,%d,%s\n" % (i, i * 2 % 7, i % 3, b"yes" if i % 2 else b"no")
                                            for i in range(60))
    at = page(TRAIN, state={"owner": "ana"})
    at.selectbox(key="train_dataset").set_value("csv").run()
    at.sidebar.file_uploader[0].upload("data.csv", content, "text/csv")
    at.run()
    assert not errors(at)
    assert at.selectbox(key="train_csv_label").value == "label"
    at.button(key="train_start").click().run()
    (run,) = runs_of(home)
    assert run["config"]["dataset"] == "csv" and run["config"]["dataset_options"]["label"] == "label"
    options = run["config"]["dataset_options"]
    assert set(options) == {"upload", "label"}  # an id the lab issued, never a path
    assert (home / "uploads" / f"{options['upload']}.csv").read_bytes() == content


def test_live_view_of_a_run_selected_by_link(page, home):
    run_id = finished_run(home, strategy="excessive", conn_sparsity=0.5)
    at = page(TRAIN, query_params={"run": str(run_id)})
    assert at.selectbox(key="train_strategy").value == "excessive"  # ?run=ID alone loads its config
    charts = {c.proto.id for c in at.get("plotly_chart")}
    assert len(charts) == 4  # loss, accuracy, gap and the decision boundary (a 2-D dataset)
    assert "Finished" in at.get("progress")[0].proto.text
    at.segmented_control(key="train_view").set_value("Gradient masks").run()
    assert not at.exception and len(at.get("plotly_chart")) == 6  # + heatmap, histogram, connection mask
    at.segmented_control(key="train_view").set_value("Backward time").run()
    assert not at.exception and len(at.get("plotly_chart")) == 4


def test_symmetric_reference_appears_in_the_timing_view(page, home):
    finished_run(home, strategy="symmetric")
    run_id = finished_run(home, strategy="neuron", sparsity=0.5)
    at = page(TRAIN, query_params={"run": str(run_id)})
    at.segmented_control(key="train_view").set_value("Backward time").run()
    assert any("2.00x" in c.value for c in at.caption)


def test_dropout_follows_the_strategy_presets(page):
    at = page(TRAIN)
    at.selectbox(key="train_strategy").set_value("dropout").run()
    assert at.slider(key="train_dropout").value == 0.5 and not errors(at)
    at.selectbox(key="train_strategy").set_value("refined").run()
    assert at.slider(key="train_dropout").value == 0.0
    assert at.slider(key="train_conn_sparsity")  # refined uses a connection sparsity
    at.selectbox(key="train_strategy").set_value("dropout").run()
    at.slider(key="train_dropout").set_value(0.0).run()
    assert len(errors(at)) == 1 and at.button(key="train_start").disabled


def test_unknown_run_in_link_is_a_warning(page):
    at = page(TRAIN, query_params={"run": "999"})
    assert any("999" in w.value for w in at.warning)


# ----------------------------------------------------------------------------------- runs


def test_runs_page_guard_when_empty(page):
    at = page(RUNS)
    assert "No runs yet" in at.info[0].value


def test_runs_compare_export_and_owner_rules(page, home):
    ref = finished_run(home, owner="bob", strategy="symmetric")
    mine = finished_run(home, owner="ana", strategy="neuron", sparsity=0.5)
    at = page(RUNS, state={"owner": "ana", "runs_selected_ids": [mine, ref]})
    for key in ("runs_dataset", "runs_strategy", "runs_status", "runs_owner", "runs_curve", "runs_stop",
                "runs_delete", "runs_export_table", f"runs_export_json_{mine}", f"runs_export_csv_{ref}"):
        at.get_by_key(key)
    assert len(at.get("plotly_chart")) == 1
    metrics = at.dataframe[1].value  # (a dataframe without selection keeps no key in AppTest)
    row = metrics[metrics["reference run"] == f"#{ref}"].iloc[0]
    assert row["backward speedup"] == pytest.approx(2.0)
    assert at.button(key="runs_stop").disabled  # nothing of ana's is live
    at.button(key="runs_delete").click().run()  # deletes ana's run only; bob's stays
    assert [r["id"] for r in runs_of(home)] == [ref]


def test_runs_filters(page, home):
    finished_run(home, owner="bob", strategy="symmetric")
    finished_run(home, owner="ana", dataset="circles")
    at = page(RUNS)
    at.selectbox(key="runs_owner").set_value("bob").run()
    assert len(at.dataframe[0].value) == 1
    at.selectbox(key="runs_dataset").set_value("circles").run()
    assert "No run matches" in at.info[0].value


def test_runs_stop_own_live_run_and_not_others(page, home):
    with Store(home / "asymviz.db") as store:
        mine = store.create_run(TrainConfig().to_dict(), owner="ana")
        theirs = store.create_run(TrainConfig().to_dict(), owner="bob")
    at = page(RUNS, state={"owner": "ana", "runs_selected_ids": [theirs]})
    assert at.button(key="runs_stop").disabled and at.button(key="runs_delete").disabled
    at = page(RUNS, state={"owner": "ana", "runs_selected_ids": [mine, theirs]})
    at.button(key="runs_stop").click().run()
    status = {r["id"]: r["status"] for r in runs_of(home)}
    assert status == {mine: "stopped", theirs: "queued"}


# ----------------------------------------------------------------------------------- timing


def test_backward_timing_bad_input_and_a_small_measurement(page):
    at = page(TIMING)
    for key in ("bench_layers", "bench_width", "bench_batch", "bench_sparsities", "bench_strategy", "bench_repeats",
                "bench_device", "bench_run"):
        at.get_by_key(key)
    at.text_input(key="bench_sparsities").set_value("0, 1.5").run()
    assert len(errors(at)) == 1 and at.button(key="bench_run").disabled
    at.number_input(key="bench_width").set_value(8192).run()
    at.number_input(key="bench_batch").set_value(4096).run()
    assert any("would take about" in e for e in errors(at))
    at.text_input(key="bench_sparsities").set_value("0, 0.9").run()
    at.number_input(key="bench_width").set_value(64).run()
    at.number_input(key="bench_batch").set_value(16).run()
    at.number_input(key="bench_repeats").set_value(3).run()
    assert not errors(at)
    at.button(key="bench_run").click().run()
    future = at.session_state["bench_future"]
    future.result(timeout=120)
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 1 and len(at.dataframe[0].value) == 2
    assert at.warning or at.success  # an honest verdict either way
    assert json.dumps(at.session_state["bench_job"]["sparsities"]) == "[0.0, 0.9]"
