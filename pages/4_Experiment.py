"""Experiment page: test the thesis. Every strategy against dropout, over seeds, with verdicts.

Pick a preset or a custom grid in the sidebar and launch it; its cells run in the background
worker pool, fed by a server-side thread (started with the runner in ui_common), so closing the tab does not stop an experiment and
`?exp=ID` (or the picker) reopens it. Progress is a live fragment; the results are the figures
against sparsity, the learning curves of one cell, the verdict table and the report downloads.
All of it comes from `asymviz.experiment` (the same code as `python -m asymviz experiment`).
"""

import streamlit as st

import ui_common
from asymviz import experiment as ex
from asymviz import figures_experiment as fx
from asymviz import ui
from asymviz.data import DATASETS

ui_common.setup("Experiment", ":material/science:")
owner = ui_common.owner()
ss = st.session_state
EXP_PARAM = "exp"
DATASET_NAMES = [name for name in ui_common.offered_datasets() if DATASETS[name].kind != "csv"]
FIELDS = {  # widget key -> spec field
    "exp_datasets": "datasets", "exp_hidden": "hidden", "exp_strategies": "strategies",
    "exp_sparsities": "sparsities", "exp_conn": "conn_sparsity", "exp_dropouts": "dropouts", "exp_seeds": "seeds",
    "exp_budget": "budget", "exp_epochs": "epochs", "exp_max_epochs": "max_epochs", "exp_patience": "patience",
}


def widget_values(spec: ex.ExperimentSpec) -> dict:
    d = spec.to_dict()
    values = {key: d[name] for key, name in FIELDS.items()}
    values["exp_hidden"] = ",".join(map(str, d["hidden"]))
    values["exp_sparsities"] = ", ".join(f"{x:g}" for x in d["sparsities"])
    values["exp_dropouts"] = ", ".join(f"{x:g}" for x in d["dropouts"])
    return values


def load_preset() -> None:
    values = widget_values(ex.preset(ss["exp_preset"]))
    values["exp_datasets"] = [d for d in values["exp_datasets"] if d in DATASET_NAMES]  # what this lab offers
    ss.update(values)


def read_spec() -> ex.ExperimentSpec:
    return ex.ExperimentSpec(**{name: ss[key] for key, name in FIELDS.items()}).validated()


@st.cache_data(ttl=30, max_entries=16, show_spinner=False)
def results(path: str, exp_id: str, version: tuple) -> dict:
    """report_data of an experiment; `version` (done cells, newest finish) invalidates it."""
    return ex.report_data(ui_common.store(), exp_id)


@st.cache_data(ttl=60, max_entries=8, show_spinner=False)
def report_file(path: str, exp_id: str, version: tuple, name: str) -> str:
    return ex.render_report(ui_common.store(), exp_id)[name]


store = ui_common.store()

# ------------------------------------------------------------------------------------ sidebar

sb = st.sidebar
sb.header("Experiment grid")
if "exp_preset" not in ss:
    ss["exp_preset"] = "quick"
    load_preset()
sb.selectbox("Start from preset", list(ex.PRESETS), key="exp_preset", on_change=load_preset,
             help="quick: digits and MNIST-1D, 3 seeds, about 10 minutes on a 2-core machine. "
                  "thesis: the full grid (5 seeds, 4 sparsities, 2 dropout p, more datasets): hours. "
                  "Any field below can then be changed.")
sb.multiselect("Datasets", DATASET_NAMES, key="exp_datasets", format_func=lambda n: ui.dataset_label(DATASETS[n]))
sb.text_input("Hidden widths", key="exp_hidden", help="One architecture for every dataset, e.g. 256,256.")
sb.multiselect("Strategies", list(ex.LABELS), key="exp_strategies",
               help="dropout is the baseline every claim is tested against; random is neuron with the kept "
                    "neurons chosen at random (the ablation that separates which neurons from how many).\n\n"
                    + ui.strategy_help())
sb.text_input("Sparsities", key="exp_sparsities", help="Fractions of neurons left out of the backward, e.g. 0.5, 0.9.")
sb.number_input("Connection sparsity (excessive, refined)", 0.0, 0.99, step=0.05, key="exp_conn")
sb.text_input("Dropout p of the baseline", key="exp_dropouts", help="One or more, e.g. 0.2, 0.5.")
sb.number_input("Seeds", 1, 100, step=1, key="exp_seeds",
                help="Each seed is one initialization and data order, shared by every strategy (paired tests).")
sb.selectbox("Budget", ["both", "equal", "converge"], key="exp_budget",
             help="equal: every cell trains the same number of epochs. converge: early stopping on validation "
                  "accuracy, the best checkpoint is tested.")
c1, c2, c3 = sb.columns(3)
c1.number_input("Epochs", 1, 1000, step=5, key="exp_epochs", help="Epochs of the equal budget.")
c2.number_input("At most", 1, 2000, step=10, key="exp_max_epochs", help="Most epochs of the converge budget.")
c3.number_input("Patience", 1, 500, step=1, key="exp_patience", help="Epochs without a better validation accuracy.")

# ------------------------------------------------------------------------------- the action

st.title("Experiment: test the thesis")
st.caption("The thesis claims that asymmetric training, compared with symmetric training with dropout, (1) reduces "
           "overfitting, (2) reaches better accuracy and (3) reduces backprop time. Run every strategy against "
           "dropout over several seeds and see where each claim holds on this machine.")

spec, problem = None, None
try:
    spec = read_spec()
except Exception as err:
    problem = ui.friendly_error(err)
known = {e["id"]: e for e in ex.list_experiments(store)}
b1, b2 = st.columns([1, 4], vertical_alignment="center")
launch = b1.button("Launch", type="primary", key="exp_launch", icon=":material/rocket_launch:",
                   disabled=spec is None or owner is None, width="stretch",
                   help="Queue the grid's cells for the worker pool; the same grid again resumes it.")
if problem:
    st.error(problem)
else:
    exp_id = ex.experiment_id(spec)
    again = " This grid was launched before: launching resumes it, keeping finished cells." if exp_id in known else ""
    who = (f"Runs as **{owner}**; closing the tab does not stop it." if owner is not None else
           ui_common.sign_in_hint("launch it"))
    b2.caption(f"{spec.describe()} Experiment id **{exp_id}**.{again} {who}")
if launch and spec is not None and owner is not None:
    try:
        ui_common.check_can_train()
        with st.spinner("Preparing the data ..."):
            ex.prepare_data(spec)
        launched = ex.launch(spec, ui_common.runner(), owner=owner)
    except Exception as err:
        ui_common.error(err)
    else:
        ss["exp_open"] = launched
        st.query_params[EXP_PARAM] = launched
        known = {e["id"]: e for e in ex.list_experiments(store)}

# ------------------------------------------------------------------------------------ views

if not known:
    st.info("No experiment yet. Choose a grid on the left (the quick preset is a good start) and press **Launch**.",
            icon=":material/info:")
    st.stop()
wanted = st.query_params.get(EXP_PARAM) or ss.get("exp_open")
ids = list(known)
ss["exp_open"] = wanted if wanted in known else ids[0]


def picked() -> None:
    st.query_params[EXP_PARAM] = ss["exp_open"]


st.divider()
st.selectbox("Experiment", ids, key="exp_open", on_change=picked,
             format_func=lambda i: f"{i} · {known[i]['launched_by'] or known[i]['owner']} · "
                                   f"{', '.join(known[i]['spec'].datasets)} · {known[i]['spec'].n_cells()} cells · "
                                   f"{ui.created_text(known[i]['created_at'])}")
exp_id = ss["exp_open"]
state = known[exp_id]
exp_spec = state["spec"]
st.caption(exp_spec.describe())


def live_progress(exp_id: str, was_complete: bool) -> None:
    p = ex.progress(store, exp_id)
    st.progress(p["done"] / max(1, p["total"]), text=f"{p['done']} of {p['total']} cells done")
    parts = [f"{p['running']} running", f"{p['queued'] + p['pending']} waiting", f"{p['failed']} failed or stopped",
             f"{ui.format_duration(p['elapsed_s'])} elapsed"]
    if not p["complete"]:
        parts.append(f"about {ui.format_duration(p['eta_s'])} left")
    elif p["stopped"]:
        parts.append("stopped: launch the same grid to resume")
    else:
        parts.append("finished")
    st.caption(" · ".join(parts))
    if p["complete"] != was_complete:
        st.rerun(scope="app")  # the results below are drawn once the experiment ends


prog = ex.progress(store, exp_id)
if prog["complete"]:
    live_progress(exp_id, True)
else:
    st.fragment(live_progress, run_every=max(2.0, ui_common.refresh_seconds()))(exp_id, False)
mine = owner is not None and (state["launched_by"] or state["owner"]) == owner
a1, a2, a3 = st.columns([1, 1, 4], vertical_alignment="center")
if not prog["complete"] and a1.button("Stop", key="exp_stop", icon=":material/stop:", disabled=not mine,
                                      width="stretch",
                                      help="Stop its queued and running cells; finished cells stay."):
    try:
        ex.stop(ui_common.runner(), exp_id, owner=owner)
    except Exception as err:
        ui_common.error(err)
    else:
        st.rerun()
if prog["complete"] and (prog["failed"] or prog["stopped"]) and a1.button(
        "Resume", key="exp_resume", icon=":material/replay:", width="stretch", disabled=owner is None,
        help="Launch the grid again: failed, stopped and missing cells are run, finished ones kept.") and owner:
    try:
        ui_common.check_can_train()
        ex.launch(exp_spec, ui_common.runner(), owner=owner)
    except Exception as err:
        ui_common.error(err)
    else:
        st.rerun()
if not prog["complete"]:
    a3.caption("Results so far are below; they are redrawn when the experiment ends, or press Refresh.")
    a2.button("Refresh", key="exp_refresh", icon=":material/refresh:", width="stretch")

if prog["done"] == 0:
    st.info("No cell has finished yet; the results appear here as they do.", icon=":material/hourglass_top:")
    st.stop()

runs_now = store.list_runs(tag=exp_id, status="finished", limit=1)
version = (prog["done"], prog["failed"], runs_now[0]["finished_at"] if runs_now else 0.0)
data = results(str(ui_common.home_folder()), exp_id, version)
settings, shown = data["tables"]["settings"], data["shown"]

# ---------------------------------------------------------------------------------- verdicts
st.subheader("Verdicts")
COLORS = {"holds": "background-color: #dcfce7", "does not hold": "background-color: #fee2e2"}
verdict_frame = shown["verdicts"]
st.dataframe(verdict_frame.style.map(lambda v: COLORS.get(v, "background-color: #fef9c3"
                                                            if str(v).startswith("inconclusive") else ""),
                                     subset=["verdict"]),
             key="exp_verdicts", hide_index=True, width="stretch", height=min(900, 38 + 35 * len(verdict_frame)))
with st.expander("How the verdicts are decided"):
    st.markdown(ex.RULES)

# ----------------------------------------------------------------------------------- figures
st.subheader("Against sparsity")
datasets = [d for d in exp_spec.datasets if len(settings) and d in set(settings["dataset"])]
if not datasets:
    st.info("No dataset has finished cells yet.")
    st.stop()
dataset = st.segmented_control("Dataset", datasets, key="exp_dataset", default=datasets[0]) or datasets[0]
mine_settings = settings[settings["dataset"] == dataset]
st.plotly_chart(fx.metric_vs_sparsity(mine_settings, "test_acc", f"{dataset}: test accuracy (95 % interval bands)"),
                key="exp_fig_acc")
st.plotly_chart(fx.metric_vs_sparsity(mine_settings, "model_gap",
                                      f"{dataset}: generalization gap of the tested model"), key="exp_fig_gap")
st.plotly_chart(fx.speedup_vs_sparsity(mine_settings, f"{dataset}: backward speedup vs symmetric"),
                key="exp_fig_speedup")
st.caption("Symmetric and dropout do not depend on sparsity: they are the horizontal lines. Speedups are ratios of "
           "mean backward milliseconds, measured while other runs shared the machine: small networks are "
           "overhead-bound, so a sparse backward need not be faster there.")

st.subheader("Learning curves of one cell")
budgets = [b for b in exp_spec.budgets_of(exp_spec.budget)]
l1, l2, l3 = st.columns(3)
budget = l1.selectbox("Budget", budgets, key="exp_curve_budget")
sparsity = l2.selectbox("Sparsity", exp_spec.sparsities or [None], key="exp_curve_sparsity",
                        format_func=lambda s: "-" if s is None else f"{s:g}")
seed = l3.selectbox("Seed", ["mean over seeds", *range(exp_spec.seeds)], key="exp_curve_seed")
curve = ex.curves(store, data["runs"], dataset, budget, sparsity, None if seed == "mean over seeds" else int(seed))
title = f"{dataset}, {budget} budget" + (f", sparsity {sparsity:g}" if sparsity is not None else "")
st.plotly_chart(fx.learning_curves(curve, title), key="exp_fig_curves")

with st.expander("Tables per dataset and budget"):
    for b in budgets:
        part = shown.get((dataset, b))
        if part is None:
            continue
        st.markdown(f"**{dataset}, {b} budget**: mean and 95 % interval over seeds")
        st.dataframe(part["settings"], key=f"exp_table_{dataset}_{b}", hide_index=True, width="stretch")
        if part["baseline"] and len(part["paired"]):
            st.markdown(f"Paired against {part['baseline']} (same seeds), asymmetric minus dropout")
            st.dataframe(part["paired"], key=f"exp_paired_{dataset}_{b}", hide_index=True, width="stretch")

# ----------------------------------------------------------------------------------- downloads
st.subheader("Report")
path = str(ui_common.home_folder())
d = st.columns(4)
d[0].download_button("Report (HTML)", lambda: report_file(path, exp_id, version, "report.html"),
                     file_name=f"asymviz-{exp_id}.html", mime="text/html", key="exp_dl_html",
                     icon=":material/download:", on_click="ignore")
d[1].download_button("Report (Markdown)", lambda: report_file(path, exp_id, version, "report.md"),
                     file_name=f"asymviz-{exp_id}.md", mime="text/markdown", key="exp_dl_md",
                     icon=":material/download:", on_click="ignore")
d[2].download_button("Summary (CSV)", data["tables"]["settings"].to_csv(index=False),
                     file_name=f"asymviz-{exp_id}-summary.csv", mime="text/csv", key="exp_dl_summary",
                     icon=":material/download:", on_click="ignore")
d[3].download_button("Every run (CSV)", data["runs"].to_csv(index=False), file_name=f"asymviz-{exp_id}-runs.csv",
                     mime="text/csv", key="exp_dl_runs", icon=":material/download:", on_click="ignore")
st.caption("The HTML report is standalone (plotly embedded, works offline). The same report from the shell: "
           "`python -m asymviz experiment --report-only` with this grid's flags, or see RESULTS.md.")
