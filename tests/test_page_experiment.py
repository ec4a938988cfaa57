"""The Experiment page through streamlit.testing's AppTest: it renders, a bad grid gives one
st.error sentence and launches nothing, Launch queues cells, and a finished experiment in a
temporary store shows its verdict table, figures and downloads."""

from asymviz import experiment as ex
from asymviz.store import Store

PAGE = "pages/4_Experiment.py"
TINY = dict(datasets=["wine"], hidden=[8], strategies=["symmetric", "dropout", "neuron"], sparsities=[0.5, 0.9],
            dropouts=[0.5], seeds=2, budget="both", epochs=2, max_epochs=4, patience=1)


class QueueOnly:
    """Queues runs in the store, as the runner's submit does (no limits)."""

    def __init__(self, store):
        self.store = store

    def submit(self, config, owner="cli", tag=None):
        return self.store.create_run(config.to_dict(), owner=owner, tag=tag)


def finished_experiment(home, owner="ana") -> str:
    """A tiny experiment whose every cell finished with made-up, seed-dependent numbers."""
    with Store(home / "asymviz.db") as store:
        exp_id = ex.launch(ex.ExperimentSpec(**TINY), QueueOnly(store), owner=owner)
        for run in store.list_runs(tag=exp_id):
            c = run["config"]
            base = {"symmetric": 0.80, "dropout": 0.82, "neuron": 0.85}[c["strategy"]] + 0.01 * c["seed"]
            store.set_status(run["id"], "running")
            with store.writer(run["id"]) as w:
                for e in (1, 2):
                    w.add_epoch({"epoch": e, "train/acc": base + 0.05 * e, "val/acc": base + 0.02 * e, "gap": 0.03 * e})
            store.set_status(run["id"], "finished", summary={
                "status": "finished", "test_acc": base, "val_acc": base + 0.04, "best_val_acc": base + 0.04,
                "train_acc": base + 0.1, "gap": 0.06 - 0.02 * (c["strategy"] == "neuron") + 0.001 * c["seed"],
                "best_gap": 0.05, "best_epoch": 2, "epochs": 2,
                "backward_ms_mean": 1.0 - 0.5 * (c["strategy"] == "neuron") + 0.01 * c["seed"],
                "step_ms_mean": 2.0})
    return exp_id


def errors(at):
    return [e.value for e in at.error]


def test_page_renders_with_the_quick_preset(page):
    at = page(PAGE)
    assert at.title[0].value.startswith("Experiment")
    assert at.session_state["exp_preset"] == "quick"
    assert at.session_state["exp_datasets"] == ["digits", "mnist1d"]
    assert not errors(at)
    assert any("120 cells" in c.value for c in at.caption)
    assert any("No experiment yet" in i.value for i in at.info)
    assert not at.button(key="exp_launch").disabled


def test_bad_grid_shows_one_sentence_and_launches_nothing(page, home):
    at = page(PAGE)
    at.number_input(key="exp_seeds").set_value(1).run()
    assert any("at least 2 seeds" in e for e in errors(at))
    assert at.button(key="exp_launch").disabled
    at.number_input(key="exp_seeds").set_value(3)
    at.multiselect(key="exp_strategies").set_value(["neuron", "refined"]).run()
    assert errors(at) == ["The grid must include the dropout baseline: every claim is tested against it."]
    with Store(home / "asymviz.db") as store:
        assert store.list_runs() == []


def test_launch_queues_cells_and_opens_the_experiment(page, home):
    at = page(PAGE, state={"owner": "ana"})
    for key, value in (("exp_datasets", ["wine"]), ("exp_strategies", ["dropout", "neuron"])):
        at.multiselect(key=key).set_value(value)
    for key, value in (("exp_hidden", "8"), ("exp_sparsities", "0.5")):
        at.text_input(key=key).set_value(value)
    at.selectbox(key="exp_budget").set_value("equal")
    at.number_input(key="exp_seeds").set_value(2)
    at.number_input(key="exp_epochs").set_value(1).run()
    at.button(key="exp_launch").click().run()
    assert not at.exception and not errors(at)
    exp_id = at.query_params["exp"]
    with Store(home / "asymviz.db") as store:
        runs = store.list_runs(tag=exp_id)
        assert [e["id"] for e in ex.list_experiments(store)] == [exp_id]
    assert 1 <= len(runs) <= 4 and {r["owner"] for r in runs} == {"ana"}  # fed within the runner's limits
    assert at.session_state["exp_open"] == exp_id


def test_finished_experiment_shows_verdicts_figures_and_downloads(page, home):
    exp_id = finished_experiment(home)
    at = page(PAGE, query_params={"exp": exp_id}, state={"owner": "ana"})
    assert at.session_state["exp_open"] == exp_id
    table = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    assert list(table["claim"]) == ["1. reduces overfitting", "2. reaches better accuracy",
                                    "3. reduces backprop time"] * 2
    assert set(table["dataset"]) == {"wine"} and set(table["budget"]) == {"equal", "converge"}
    assert all(v in ("holds", "does not hold") or v.startswith("inconclusive") for v in table["verdict"])
    assert table["verdict"].iloc[2] == "holds"  # neuron's backward is 0.5 ms faster on every seed
    assert len(at.get("plotly_chart")) == 4  # accuracy, gap, speedup against sparsity; learning curves
    assert len(at.get("download_button")) == 4
    assert any("16 of 16 cells done" in str(p.proto) for p in at.get("progress"))
    assert not at.exception
