"""The Experiment page through streamlit.testing's AppTest: it renders, a bad or hostile grid gives
one st.error sentence and launches nothing, Launch queues stage 1, and a finished experiment in a
temporary store shows what came out, the verdicts, the selection and confirmation stages, the
width-sweep curve, the meProp comparison and the downloads."""

import numpy as np

from asymviz import experiment as ex
from asymviz.store import Store

PAGE = "pages/4_Experiment.py"
TINY = dict(datasets=["wine"], hidden="8", strategies="symmetric,dropout,neuron", sparsities=[0.5, 0.9],
            dropouts=[0.5], lrs=[0.01], budgets=["equal", "converge"], epochs=2, max_epochs=4, patience=1,
            selection_seeds=1, confirmation_seeds=3, speed_widths=[256, 1024], speed_sparsities=[0.9],
            speed_strategies=["neuron"], speed_repeats=4, meprop=True, meprop_seeds=2, meprop_epochs=1)


class QueueOnly:
    """Stands in for the runner: the store, no limits."""

    def __init__(self, store):
        self.store = store


def _finish_all(store, exp_id):
    for run in store.experiment_runs(exp_id):
        if run["status"] != "queued":
            continue
        c = run["config"]
        base = {"symmetric": 0.80, "dropout": 0.82, "neuron": 0.85}[c["strategy"]] + 0.01 * (c["seed"] % 7) \
            + 0.02 * (c["sparsity"] == 0.9)
        store.set_status(run["id"], "running")
        with store.writer(run["id"]) as w:
            for e in (1, 2):
                w.add_epoch({"epoch": e, "train/acc": base + 0.05 * e, "val/acc": base + 0.02 * e, "gap": 0.03 * e})
        store.set_status(run["id"], "finished", summary={
            "status": "finished", "test_acc": base, "test_loss": 1 - base, "val_acc": base + 0.04,
            "best_val_acc": base + 0.04, "train_acc": base + 0.1 - 0.02 * (c["strategy"] == "neuron"),
            "best_gap": 0.05, "best_epoch": 2, "epochs": 2, "gap": 0.06,
            "backward_ms_mean": 1.0 - 0.5 * (c["strategy"] == "neuron") + 0.01 * (c["seed"] % 7), "step_ms_mean": 2.0})


def finished_experiment(home, owner="ana") -> str:
    """A small experiment whose every run finished with made-up, seed-dependent numbers, and a
    measured width sweep."""
    with Store(home / "asymviz.db") as store:
        exp_id = ex.launch(ex.ExperimentSpec(**TINY), QueueOnly(store), owner=owner)
        _finish_all(store, exp_id)
        assert ex.advance(store, exp_id) > 0
        _finish_all(store, exp_id)
        rng = np.random.default_rng(0)

        def row(width, ratio, granularity="batch", sparsity=0.9):
            dense = 10 + rng.normal(0, 0.2, 4)
            sparse = dense / ratio * np.exp(rng.normal(0, 0.01, 4))
            return {"strategy": "neuron", "width": width, "widths": [width, width], "sparsity": sparsity,
                    "keep": [3], "path": "compact", "ideal": 9.0, "granularity": granularity,
                    "dense_backward_ms": 10.0, "sparse_backward_ms": 10.0 / ratio, "dense_step_ms": 20.0,
                    "sparse_step_ms": 20.0 / ratio, "samples": {"dense": [[5.0, d, 5.0] for d in dense],
                                                                "sparse": [[5.0, s, 5.0] for s in sparse]}}

        store.update_experiment(exp_id, speed={
            "rows": [row(256, 0.8), row(1024, 3.0)], "threads": 2, "wall_s": 5.0, "busy_runs": 0,
            "meprop_rows": [row(500, r, g, s) for g in ("example", "batch") for s, r in ((0.84, 1.5), (0.96, 2.5))]})
        assert ex.progress(store, exp_id)["complete"]
    return exp_id


def errors(at):
    return [e.value for e in at.error]


def test_page_renders_with_the_quick_preset(page):
    at = page(PAGE)
    assert at.title[0].value.startswith("Experiment")
    assert at.session_state["exp_preset"] == "quick"
    assert at.session_state["exp_datasets"] == "digits, mnist1d"
    assert not errors(at)
    assert any("54 training runs" in c.value for c in at.caption)
    assert any("No experiment yet" in i.value for i in at.info)
    assert not at.button(key="exp_launch").disabled


def test_the_standard_preset_loads_into_the_form(page):
    at = page(PAGE)
    at.selectbox(key="exp_preset").set_value("standard").run()
    assert at.session_state["exp_datasets"] == "mnist1d, mnist:5000"
    assert at.session_state["exp_meprop"] is True and at.session_state["exp_confirmation_seeds"] == 10
    assert any("598 training runs" in c.value for c in at.caption) and not errors(at)


def test_bad_and_hostile_grids_show_one_sentence_and_launch_nothing(page, home):
    at = page(PAGE)
    for key, value, message in (
            ("exp_confirmation_seeds", 1, "at least 2 seeds"),
            ("exp_datasets", "../../etc/passwd", "Unknown dataset '../../etc/passwd'"),
            ("exp_datasets", "csv", "not on an uploaded CSV"),
            ("exp_hidden", "9999999999", "Architecture"),
            ("exp_lrs", "1e400", "finite numbers")):
        widget = at.number_input(key=key) if key == "exp_confirmation_seeds" else at.text_input(key=key)
        widget.set_value(value).run()
        (sentence,) = errors(at)
        assert message in sentence and "\n" not in sentence
        assert at.button(key="exp_launch").disabled
        at.selectbox(key="exp_preset").set_value("standard").run()
        at.selectbox(key="exp_preset").set_value("quick").run()  # back to a good grid
        assert not errors(at)
    at.multiselect(key="exp_strategies").set_value(["neuron", "refined"]).run()
    assert errors(at) == ["The grid must include the dropout baseline: every claim is tested against it."]
    with Store(home / "asymviz.db") as store:
        assert store.list_runs() == [] and store.experiments() == []


def test_launch_queues_the_first_stage_and_opens_the_experiment(page, home):
    at = page(PAGE, state={"owner": "ana"})
    at.text_input(key="exp_datasets").set_value("wine")
    at.multiselect(key="exp_strategies").set_value(["dropout", "neuron"])
    for key, value in (("exp_hidden", "8"), ("exp_sparsities", "0.5, 0.9"), ("exp_speed_widths", "")):
        at.text_input(key=key).set_value(value)
    at.number_input(key="exp_confirmation_seeds").set_value(2)
    at.number_input(key="exp_epochs").set_value(1).run()
    assert not errors(at)
    at.button(key="exp_launch").click().run()
    assert not at.exception and not errors(at)
    exp_id = at.query_params["exp"]
    with Store(home / "asymviz.db") as store:
        runs = store.experiment_runs(exp_id)
        assert [e["id"] for e in ex.list_experiments(store)] == [exp_id]
    # the whole first stage at once: neuron's 2 candidates x 2 selection seeds, dropout's confirmation
    assert len(runs) == 4 + 2 and {r["owner"] for r in runs} == {"ana"}
    assert at.session_state["exp_open"] == exp_id
    assert any("waiting for their selection" in c.value for c in at.caption)


def test_a_lab_that_does_not_offer_a_dataset_refuses_before_any_download(page, home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_DATASETS", "digits,wine")
    at = page(PAGE, state={"owner": "ana"})
    at.text_input(key="exp_datasets").set_value("mnist:1000").run()
    at.button(key="exp_launch").click().run()
    assert any("'mnist' is not one of them" in e for e in errors(at))
    assert not (home / "cache" / "mnist").exists()


def test_finished_experiment_shows_both_stages_the_sweep_and_the_anchor(page, home):
    exp_id = finished_experiment(home)
    at = page(PAGE, query_params={"exp": exp_id}, state={"owner": "ana"})
    assert at.session_state["exp_open"] == exp_id and not at.exception
    said = "\n".join(m.value for m in at.markdown)
    assert "**Claim 1. reduces overfitting**" in said and "**Claim 3. reduces backprop time**" in said
    assert "neuron at sparsity 0.9: the sparse backward pays from width 1024 up" in said
    assert "**meProp anchor**" in said
    frames = {d.proto.id: d.value for d in at.dataframe}
    tables = [d.value for d in at.dataframe]
    verdicts = next(t for t in tables if "verdict" in t.columns and "vs" in t.columns)
    assert set(verdicts["verdict"]) <= {"better", "equivalent", "worse", "inconclusive"}
    selection = next(t for t in tables if "selection metric (mean val acc)" in t.columns)
    assert "✓" in set(selection["chosen"]) and "only candidate" in set(selection["selection metric (mean val acc)"])
    assert any("test acc" in t.columns and "chosen setting" in t.columns for t in tables)
    speed = next(t for t in tables if "backward speedup" in t.columns)
    assert list(speed["backward"]) == ["worse", "better"]
    anchor = next(t for t in tables if "test acc (meProp paper)" in t.columns)
    assert "0.9827" in set(anchor["test acc (meProp paper)"]) and "5.9x" in set(anchor["backprop speedup (paper)"])
    assert frames
    charts = at.get("plotly_chart")
    assert len(charts) == 6  # test acc, gap, learning curves, backward and step sweeps, meProp
    assert len(at.get("download_button")) == 4
    assert any("of" in str(p.proto) and "runs done" in str(p.proto) for p in at.get("progress"))


def test_an_unknown_experiment_in_the_link_opens_the_newest(page, home):
    exp_id = finished_experiment(home)
    at = page(PAGE, query_params={"exp": "exp-'; DROP TABLE runs; --"}, state={"owner": "ana"})
    assert not at.exception and at.session_state["exp_open"] == exp_id
