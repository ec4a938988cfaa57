"""Experiment page: test the thesis. Each arm is tuned on selection seeds, then tested on fresh
confirmation seeds against dropout, with a verdict per claim that could come out either way.

Pick a preset or change the grid in the sidebar (its fields are declared once, in
asymviz.experiment.spec.FIELDS) and launch it; the runs go to the background worker pool, and a
server-side thread (started with the runner in ui_common) queues stage 2 when a selection is done
and then measures the width sweep, so closing the tab does not stop an experiment. `?exp=ID` (or
the picker) reopens it. The views: progress, what came out in words, the verdicts, the selection
stage, the confirmation stage, the width-sweep curve of claim 3, the meProp anchor, downloads.
All of it comes from `asymviz.experiment` (the same code as `python -m asymviz experiment`).
"""

import streamlit as st

import ui_common
from asymviz import experiment as ex
from asymviz import figures_experiment as fx
from asymviz import pagekit
from asymviz.experiment import report as rp
from asymviz.experiment.spec import BUDGETS, SPARSE, STRATEGIES
from asymviz.optim import OPTIMIZERS, UPDATES
from asymviz.strategies import GRANULARITIES, SELECTIONS
from asymviz.train import DEVICES

ui_common.setup("Experiment", ":material/science:")
owner = ui_common.owner()
ss = st.session_state
EXP_PARAM = "exp"
CHOICES = {"strategies": STRATEGIES, "selections": SELECTIONS, "granularities": GRANULARITIES, "updates": UPDATES,
           "ablate": SPARSE, "budgets": BUDGETS, "speed_strategies": SPARSE, "optimizer": OPTIMIZERS,
           "device": DEVICES}
ADVANCED = {"selections", "granularities", "updates", "ablate", "optimizer", "batch_size", "device", "margin_acc",
            "margin_gap", "margin_time", "speed_widths", "speed_sparsities", "speed_strategies", "speed_depth",
            "speed_batch", "speed_repeats", "conn_sparsity"}


def widget_values(spec: ex.ExperimentSpec) -> dict:
    """The sidebar's widget values of a spec (lists of numbers as text)."""
    d = spec.to_dict()
    out = {}
    for f in ex.FIELDS:
        value = d[f.name]
        if f.kind in ("floats", "ints"):
            value = ", ".join(f"{x:g}" for x in value)
        elif f.kind == "archs":
            value = "; ".join(value)
        elif f.kind == "names" and f.name not in CHOICES:
            value = ", ".join(value)
        out[f"exp_{f.name}"] = value
    return out


def load_preset() -> None:
    ss.update(widget_values(ex.preset(ss["exp_preset"])))


def read_spec() -> ex.ExperimentSpec:
    return ex.ExperimentSpec(**{f.name: ss[f"exp_{f.name}"] for f in ex.FIELDS}).validated()


def field_widget(box, f) -> None:
    key, label = f"exp_{f.name}", f.name.replace("_", " ").capitalize()
    if f.name in CHOICES and f.kind == "names":
        box.multiselect(label, list(CHOICES[f.name]), key=key, help=f.help)
    elif f.name in CHOICES:
        box.selectbox(label, list(CHOICES[f.name]), key=key, help=f.help)
    elif f.kind == "int":
        box.number_input(label, min_value=1, max_value=100000, step=1, key=key, help=f.help)
    elif f.kind == "float":
        box.number_input(label, min_value=0.0, max_value=10.0, step=0.005, format="%g", key=key, help=f.help)
    elif f.kind == "bool":
        box.checkbox(label, key=key, help=f.help)
    else:
        box.text_input(label, key=key, help=f.help)


@st.cache_data(ttl=30, max_entries=16, show_spinner=False)
def results(path: str, exp_id: str, version: tuple) -> dict:
    """analyze() of an experiment; `version` (runs done, newest finish, sweep) invalidates it."""
    a = ex.analyze(ui_common.store(), exp_id)
    a["words"] = rp.words(a)
    return a


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
             help="quick: digits and MNIST-1D, minutes on a 2-core machine. standard: what RESULTS.md reports "
                  "(MNIST-1D and MNIST 5k, 10 confirmation seeds, the width sweep and the meProp anchor; about "
                  "90 minutes on 2 cores; MNIST is downloaded). full: sized for a cluster. Any field can then be "
                  "changed.")
for f in ex.FIELDS:
    if f.name not in ADVANCED:
        field_widget(sb, f)
with sb.expander("Ablations, margins, width sweep"):
    for f in ex.FIELDS:
        if f.name in ADVANCED:
            field_widget(st, f)

# ------------------------------------------------------------------------------- the action

st.title("Experiment: test the thesis")
st.caption("The thesis claims that asymmetric training, compared with symmetric training with dropout, (1) reduces "
           "overfitting, (2) reaches better accuracy and (3) reduces backprop time. Each arm's setting (sparsity, "
           "dropout p, learning rate) is chosen on selection seeds by validation accuracy; the chosen settings then "
           "run on fresh confirmation seeds, and only those are tested, with a practical margin per claim.")

spec, problem = None, None
try:
    spec = read_spec()
except Exception as err:
    problem = pagekit.friendly_error(err)
known = {e["id"]: e for e in ex.list_experiments(store)}
b1, b2 = st.columns([1, 4], vertical_alignment="center")
launch = b1.button("Launch", type="primary", key="exp_launch", icon=":material/rocket_launch:",
                   disabled=spec is None or owner is None, width="stretch",
                   help="Queue the grid's first stage for the worker pool; the same grid again resumes it.")
if problem:
    st.error(problem)
else:
    exp_id = ex.experiment_id(spec)
    again = " This grid was launched before: launching resumes it, keeping finished runs." if exp_id in known else ""
    who = (f"Runs as **{owner}**; closing the tab does not stop it." if owner is not None else
           ui_common.sign_in_hint("launch it"))
    b2.caption(f"{spec.describe()} Experiment id **{exp_id}**.{again} {who}")
if launch and spec is not None and owner is not None:
    try:
        ui_common.check_can_train()
        ex.schedule.check_limits(spec, ui_common.runner(), owner)  # before any download
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
                                   f"{', '.join(known[i]['spec'].datasets)} · {known[i]['spec'].n_cells()} runs · "
                                   f"{pagekit.created_text(known[i]['created_at'])}")
exp_id = ss["exp_open"]
state = known[exp_id]
exp_spec = state["spec"]
st.caption(exp_spec.describe())


def live_progress(exp_id: str, was_complete: bool) -> None:
    p = ex.progress(store, exp_id)
    st.progress(p["done"] / max(1, p["total"]), text=f"{p['done']} of {p['total']} runs done")
    parts = [f"{p['running']} running", f"{p['queued'] + p['pending']} queued",
             f"{p['waiting']} waiting for their selection", f"{p['failed']} failed or stopped",
             f"{pagekit.format_duration(p['elapsed_s'])} elapsed"]
    if not p["complete"]:
        parts.append(f"about {pagekit.format_duration(p['eta_s'])} left")
    elif p["stopped"]:
        parts.append("stopped: launch the same grid to resume")
    elif p["speed"] == "pending":
        parts.append("training done; the width sweep is being measured")
    else:
        parts.append("finished")
    st.caption(" · ".join(parts))
    if (p["complete"] and p["speed"] != "pending") != was_complete:
        st.rerun(scope="app")  # the results below are drawn once the experiment ends


prog = ex.progress(store, exp_id)
settled = prog["complete"] and prog["speed"] != "pending"
if settled:
    live_progress(exp_id, True)
else:
    st.fragment(live_progress, run_every=max(2.0, ui_common.refresh_seconds()))(exp_id, False)
mine = owner is not None and (state["launched_by"] or state["owner"]) == owner
a1, a2, a3 = st.columns([1, 1, 4], vertical_alignment="center")
if not prog["complete"] and a1.button("Stop", key="exp_stop", icon=":material/stop:", disabled=not mine,
                                      width="stretch", help="Stop its queued and running runs; finished runs stay."):
    try:
        ex.stop(ui_common.runner(), exp_id, owner=owner)
    except Exception as err:
        ui_common.error(err)
    else:
        st.rerun()
if prog["complete"] and (prog["failed"] or prog["stopped"]) and a1.button(
        "Resume", key="exp_resume", icon=":material/replay:", width="stretch", disabled=owner is None,
        help="Launch the grid again: failed, stopped and missing runs are run, finished ones kept.") and owner:
    try:
        ui_common.check_can_train()
        ex.launch(exp_spec, ui_common.runner(), owner=owner)
    except Exception as err:
        ui_common.error(err)
    else:
        st.rerun()
if not settled:
    a3.caption("Results so far are below; they are redrawn when the experiment ends, or press Refresh.")
    a2.button("Refresh", key="exp_refresh", icon=":material/refresh:", width="stretch")

if prog["done"] == 0:
    st.info("No run has finished yet; the results appear here as they do.", icon=":material/hourglass_top:")
    st.stop()

runs_now = store.list_runs(tag=exp_id, status="finished", limit=1)
version = (prog["done"], prog["failed"], runs_now[0]["finished_at"] if runs_now else 0.0, prog["speed"])
a = results(str(ui_common.home_folder()), exp_id, version)

COLORS = {"better": "background-color: #dcfce7", "worse": "background-color: #fee2e2",
          "equivalent": "background-color: #e0f2fe", "inconclusive": "background-color: #fef9c3"}


def verdict_frame(frame, key: str) -> None:
    styled = frame.style.map(lambda v: COLORS.get(v, ""), subset=["verdict"]) if "verdict" in frame else frame
    st.dataframe(styled, key=key, hide_index=True, width="stretch")


st.subheader("What came out")
st.markdown("\n".join(a["words"]))

tabs = st.tabs(["Verdicts", "Selection stage", "Confirmation stage", "Width sweep (claim 3)", "meProp anchor",
                "Report"])
with tabs[0]:
    v = a["verdicts"]
    for family, title in ex.results.FAMILIES.items():
        if len(v) and (v["family"] == family).any():
            st.markdown(f"**{title}**")
            verdict_frame(rp.shown_verdicts(v, family), f"exp_verdicts_{family}")
    with st.expander("How the verdicts are decided"):
        st.markdown(rp.RULES)

with tabs[1]:
    st.caption(f"Each arm's candidate settings on {exp_spec.selection_seeds} selection seed(s). The selection metric "
               "is the mean validation accuracy of the tested model; ✓ marks the setting chosen for confirmation, "
               "… an arm still being selected. The test set plays no part here.")
    st.dataframe(rp.shown_selection(a["selection"]), key="exp_selection", hide_index=True, width="stretch")

with tabs[2]:
    conf = a["confirmation"]
    if not len(conf):
        st.info("No confirmation run has finished yet: they start as each arm's selection is done.")
    else:
        st.plotly_chart(fx.confirmation_metric(conf, "test_acc", "Test accuracy (95 % interval over confirmation "
                                                                 "seeds)"), key="exp_fig_acc")
        st.plotly_chart(fx.confirmation_metric(conf, "gap", "Train - test gap of the tested model"), key="exp_fig_gap")
        st.dataframe(rp.shown_confirmation(conf), key="exp_confirmation", hide_index=True, width="stretch")
        groups = [g.label for g in exp_spec.groups()]
        pick = st.selectbox("Learning curves of", groups, key="exp_curve_group")
        group = exp_spec.groups()[groups.index(pick)]
        curve = ex.curves(store, a["runs"], group.dataset, group.hidden, group.budget)
        st.plotly_chart(fx.learning_curves(curve, f"{pick}: mean over confirmation seeds"), key="exp_fig_curves")

with tabs[3]:
    if not exp_spec.speed_widths:
        st.info("This grid has no width sweep (speed widths is empty).")
    elif not len(a["speed"]):
        st.info("The width sweep runs once training is over, with the machine as quiet as this experiment can "
                "leave it.", icon=":material/hourglass_top:")
    else:
        st.plotly_chart(fx.width_sweep(a["speed"], "backward", "Backward speedup against width (dense / sparse)",
                                       exp_spec.margin_time), key="exp_fig_sweep")
        st.plotly_chart(fx.width_sweep(a["speed"], "step", "Whole training step speedup against width",
                                       exp_spec.margin_time), key="exp_fig_sweep_step")
        st.dataframe(rp.shown_speed(a["speed"]), key="exp_speed", hide_index=True, width="stretch")

with tabs[4]:
    if not exp_spec.meprop:
        st.info("This grid does not run the meProp anchor (the standard preset does).")
    else:
        st.plotly_chart(fx.meprop_comparison(a["anchor"], "meProp anchor: ours next to the paper"),
                        key="exp_fig_meprop")
        st.dataframe(rp.shown_anchor(a["anchor"]), key="exp_anchor", hide_index=True, width="stretch")
        st.caption(ex.MEPROP_PUBLISHED["source"] + ".")

with tabs[5]:
    path = str(ui_common.home_folder())
    d = st.columns(4)
    d[0].download_button("Report (HTML)", lambda: report_file(path, exp_id, version, "report.html"),
                         file_name=f"asymviz-{exp_id}.html", mime="text/html", key="exp_dl_html",
                         icon=":material/download:", on_click="ignore")
    d[1].download_button("Report (Markdown)", lambda: report_file(path, exp_id, version, "report.md"),
                         file_name=f"asymviz-{exp_id}.md", mime="text/markdown", key="exp_dl_md",
                         icon=":material/download:", on_click="ignore")
    d[2].download_button("Verdicts (CSV)", a["verdicts"].to_csv(index=False), file_name=f"asymviz-{exp_id}-verdicts.csv",
                         mime="text/csv", key="exp_dl_verdicts", icon=":material/download:", on_click="ignore")
    d[3].download_button("Every run (CSV)", a["runs"].to_csv(index=False), file_name=f"asymviz-{exp_id}-runs.csv",
                         mime="text/csv", key="exp_dl_runs", icon=":material/download:", on_click="ignore")
    st.caption("The HTML report is standalone (plotly embedded, works offline). The same report from the shell: "
               "`python -m asymviz experiment --report-only` with this grid's flags; RESULTS.md is the standard "
               "preset's.")
