"""Runs page: every run of this server in a table; select several to compare them.

Filter by dataset, strategy, status and owner; the selected runs' curves are overlaid, their
final numbers tabulated (with the backward speedup against the symmetric run of the same
config), exported as CSV or JSON; their owner, signed in, can stop or delete them.
"""

import csv
import hashlib
import io
import json

import pandas as pd
import streamlit as st

import ui_common
import ui_lecture
from asymviz import figures, pagekit
from asymviz.store import STATUSES
from asymviz.strategies import STRATEGIES

ui_common.setup("Runs", ":material/table_chart:")
owner = ui_common.owner()
ss = st.session_state
store = ui_common.store()
MAX_LISTED = 500  # the table shows the newest runs that match
MAX_COMPARED = 10
CURVES = {"val/acc": "Validation accuracy", "train/acc": "Training accuracy", "gap": "Generalization gap",
          "val/loss": "Validation loss", "train/loss": "Training loss"}

st.title("Runs")
st.caption("Every run on this server, newest first. Select rows to compare them; only a run's owner can stop "
           "or delete it.")

everything = store.list_runs(limit=MAX_LISTED)
if not everything:
    st.info("No runs yet: start one on the Train page.", icon=":material/info:")
    st.page_link("pages/1_Train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

# ----------------------------------------------------------------------------------- filters
ANY = "any"
f = st.columns(4)
datasets = sorted({r["config"].get("dataset", "?") for r in everything})
owners = sorted({r["owner"] for r in everything})
dataset = f[0].selectbox("Dataset", [ANY, *datasets], key="runs_dataset")
strategy = f[1].selectbox("Strategy", [ANY, *STRATEGIES], key="runs_strategy")
status = f[2].selectbox("Status", [ANY, *STATUSES], key="runs_status")
who = f[3].selectbox("Owner", [ANY, *owners], key="runs_owner",
                     format_func=lambda o: f"{o} (you)" if o == owner else o)
runs = store.list_runs(dataset=None if dataset == ANY else dataset, strategy=None if strategy == ANY else strategy,
                       status=None if status == ANY else status, owner=None if who == ANY else who, limit=MAX_LISTED)
if not runs:
    st.info("No run matches these filters.", icon=":material/filter_alt_off:")
    st.stop()

ids = [r["id"] for r in runs]
by_id = {r["id"]: r for r in runs}
remembered = [i for i in ss.get("runs_selected_ids", []) if i in by_id]
# The key follows the listed ids, so a selection never slides onto another run when rows come or go.
table_key = "runs_table_" + hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:10]
event = st.dataframe(
    pd.DataFrame(pagekit.runs_table(runs, me=owner)), key=table_key, on_select="rerun", selection_mode="multi-row",
    hide_index=True, height=min(420, 38 + 35 * len(runs)),
    selection_default={"selection": {"rows": [ids.index(i) for i in remembered]}},
    column_config={
        "id": st.column_config.NumberColumn("run", format="#%d", width="small"),
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "test acc": st.column_config.NumberColumn("test acc", format="percent"),
        "sparsity": st.column_config.NumberColumn("sparsity", format="%.2f"),
    })
selected = [ids[i] for i in event.selection.rows if i < len(ids)]
ss["runs_selected_ids"] = selected

live_ids = frozenset(r["id"] for r in runs if r["status"] in pagekit.LIVE)


def watch_live(watched: frozenset) -> None:
    """Redraw the page when a listed run starts or ends (statuses in the table stay true)."""
    now_live = frozenset(r["id"] for r in store.list_runs(status=list(pagekit.LIVE)) if r["id"] in by_id)
    if now_live != watched:
        ui_common.restart_page()


if live_ids:
    st.fragment(watch_live, run_every=max(2.0, ui_common.refresh_seconds()))(live_ids)
    st.caption(f"{len(live_ids)} run(s) training: the table updates when one starts or ends.")

ui_lecture.runs_twins(runs)  # a group of twins, opened together on the Train page
if not selected:
    st.info("Select one or more runs in the table (the boxes on the left) to compare, export, stop or delete them.",
            icon=":material/check_box:")
    st.stop()

# ----------------------------------------------------------------------------------- actions
chosen = [by_id[i] for i in selected]
mine = [r for r in chosen if owner is not None and r["owner"] == owner]
a = st.columns([1, 1, 1, 3], vertical_alignment="center")
if len(chosen) == 1 and a[0].button("Open in Train", key="runs_open", icon=":material/open_in_new:",
                                    use_container_width=True):
    run = chosen[0]
    st.switch_page("pages/1_Train.py", query_params={**pagekit.config_to_query(run["config"]), pagekit.RUN_PARAM: str(run["id"])})
stoppable = [r for r in mine if r["status"] in pagekit.LIVE]
deletable = [r for r in mine if r["status"] not in pagekit.LIVE]
stop = a[1].button("Stop", key="runs_stop", icon=":material/stop:", disabled=not stoppable, use_container_width=True,
                   help="Stop the selected runs that are yours and still training.")
delete = a[2].button("Delete", key="runs_delete", icon=":material/delete:", disabled=not deletable,
                     use_container_width=True,
                     help="Delete the selected runs that are yours and have ended, with all their metrics.")
if owner is None:
    a[3].caption(ui_common.sign_in_hint("stop or delete your runs") + " Anyone can compare and export.")
elif len(mine) < len(chosen):
    others = sorted({r["owner"] for r in chosen if r["owner"] != owner})
    a[3].caption(f"Runs of {', '.join(others)} can be compared and exported; only their owner can stop or delete them.")
if stop or delete:
    done, failed = [], []
    for run in (stoppable if stop else deletable):
        try:
            if stop:
                ui_common.runner().stop(run["id"], owner=owner)
            else:
                ui_common.runner().delete(run["id"], owner=owner)
            done.append(f"#{run['id']}")
        except Exception as err:
            failed.append(pagekit.friendly_error(err))
    for sentence in failed:
        st.error(sentence)
    if done:
        st.toast(("Stopping " if stop else "Deleted ") + ", ".join(done))
        if delete:
            ss["runs_selected_ids"] = []
        st.rerun()

# ----------------------------------------------------------------------------------- compare
compared = chosen[:MAX_COMPARED]
if len(chosen) > MAX_COMPARED:
    st.caption(f"Comparing the first {MAX_COMPARED} selected runs.")
ss.setdefault("runs_curve", "val/acc")
curve = st.segmented_control("Curve", list(CURVES), key="runs_curve", format_func=CURVES.get) or "val/acc"
epochs = {r["id"]: store.epochs(r["id"]) for r in compared}
st.plotly_chart(figures.compare_figure([(pagekit.run_label(r), epochs[r["id"]]) for r in compared], curve),
                key="runs_fig_compare")


@st.cache_data(ttl=15, max_entries=256, show_spinner=False)
def reference_of(config_json: str) -> dict | None:
    from asymviz.twins import find_reference_run
    try:
        ref = find_reference_run(store, json.loads(config_json))
    except Exception:
        return None
    return None if ref is None else {"id": ref["id"], "summary": ref["summary"]}


rows = []
for r in compared:
    ref = reference_of(json.dumps(r["config"], sort_keys=True)) if r["config"].get("strategy") != "symmetric" else None
    rows.append(pagekit.metrics_row(r, ref))
metrics = pd.DataFrame(rows)
st.subheader("Final numbers")
st.dataframe(metrics, key="runs_metrics", hide_index=True, column_config={
    **{k: st.column_config.NumberColumn(k, format="percent") for k in ("train acc", "val acc", "test acc", "gap")},
    **{k: st.column_config.NumberColumn(k, format="%.2f") for k in ("backward ms", "step ms")},
    **{k: st.column_config.NumberColumn(k, format="%.2fx") for k in ("backward speedup", "step speedup")},
})
st.caption("Speedup: mean backward (and whole-step) time of the symmetric run with the same configuration "
           "divided by this run's; empty when no such finished symmetric run exists. Times are means over "
           "each run's steps after a short warm-up, measured while other runs may have shared the machine.")

# ----------------------------------------------------------------------------------- export
st.subheader("Export")
e = st.columns(4)
e[0].download_button("Table as CSV", metrics.to_csv(index=False), file_name="asymviz-compare.csv",
                     mime="text/csv", key="runs_export_table", icon=":material/download:")


def run_json(run_id: int):
    return lambda: json.dumps(store.export_run(run_id), indent=1, default=str)


def run_csv(run_id: int):
    def build() -> str:
        fields, records = store.to_csv_rows(run_id)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    return build


for i, r in enumerate(compared[:6]):
    col = e[1 + i % 3]
    col.download_button(f"#{r['id']} metrics CSV", run_csv(r["id"]), file_name=f"asymviz-run-{r['id']}.csv",
                        mime="text/csv", key=f"runs_export_csv_{r['id']}", on_click="ignore")
    col.download_button(f"#{r['id']} JSON", run_json(r["id"]), file_name=f"asymviz-run-{r['id']}.json",
                        mime="application/json", key=f"runs_export_json_{r['id']}", on_click="ignore")
st.caption("A run's CSV has one row per step and per epoch; its JSON adds the config, summary and event log.")
