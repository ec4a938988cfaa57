"""Instructor page: every run of every owner, stop any of them, clear old runs, give a name a
new PIN, and the queue and the workers' load. Behind its own password,
ASYMVIZ_INSTRUCTOR_PASSWORD (unset: the page says the view is disabled and how to enable it).

The worker processes are this server's own pool (`streamlit run app.py`) or, under
`python -m asymviz serve` (the lab image), the pool that `serve` records in
$ASYMVIZ_HOME/workers.json.
"""

import os
import time

import pandas as pd
import streamlit as st

import ui_common
import ui_lecture
from asymviz import jobs, lab, live, owners, pagekit
from asymviz.owners import ADMIN
from asymviz.store import TERMINAL

ui_common.setup("Instructor", ":material/admin_panel_settings:")
ss = st.session_state
MAX_LISTED = 1000

st.title("Instructor")
password = os.environ.get("ASYMVIZ_INSTRUCTOR_PASSWORD", "")
if not password:
    st.info("The instructor view is disabled. To enable it, start the server with the environment variable "
            "ASYMVIZ_INSTRUCTOR_PASSWORD set to a password of your choice (for Docker: "
            "`docker run -e ASYMVIZ_INSTRUCTOR_PASSWORD=... asymviz`).", icon=":material/lock:")
    st.stop()
ui_common.password_gate(password, "instructor", "Instructor password",
                        "Wrong password: this view needs the instructor password.",
                        "The password set by ASYMVIZ_INSTRUCTOR_PASSWORD when the server started.")

runner = ui_common.runner()
store = runner.store
st.caption("Every run of every owner. You can stop any run and clear runs that have ended; the numbers below "
           "refresh by themselves.")
if st.sidebar.button("Leave the instructor view", key="instructor_leave", icon=":material/logout:"):
    ss.pop("instructor_token", None)
    st.rerun()


# ------------------------------------------------------------------------ queue and workers (live)

def pool() -> tuple[list[int], int | None, str]:
    """(live worker pids, configured pool size, where the pool runs)."""
    if runner.workers_alive():  # this server's own pool (`streamlit run app.py`)
        return runner.worker_pids(), runner.workers, "this server's worker pool"
    status = lab.read_pool_status()
    if status is not None:  # `python -m asymviz serve`
        return status["pids"], status["workers"], f"the worker pool of `serve` (pid {status['pid']})"
    return [], None, "no worker pool on this machine (a `python -m asymviz worker` elsewhere, or none)"


@st.fragment(run_every=max(2.0, ui_common.refresh_seconds()))
def live_view() -> None:
    pids, size, where = pool()
    running = store.list_runs(status="running")
    queued = store.count(("queued",))
    load, mem = lab.load(), lab.memory()
    limits = runner.limits
    m = st.columns(5)
    m[0].metric("Workers alive", f"{len(pids)}" + (f" of {size}" if size is not None else ""),
                help=f"Processes that train runs: {where}.")
    m[1].metric("Running", len(running))
    m[2].metric("Queued", queued, help=f"The queue holds at most {limits.max_queue} queued or running runs "
                                       "(ASYMVIZ_MAX_QUEUE)." if limits.max_queue else "No queue limit.")
    if load["load_1"] is not None:
        m[3].metric("CPU load (1 min)", f"{load['load_1']:.2f}", help=f"{load['cores']} cores; load averages "
                    f"{load['load_1']:.2f} / {load['load_5']:.2f} / {load['load_15']:.2f} over 1 / 5 / 15 min. "
                    "Above the core count, runs slow each other down.")
    if mem["limit_mb"] is not None and mem["used_mb"] is not None:
        m[4].metric("Memory (container)", f"{mem['used_mb'] / 1024:.1f} / {mem['limit_mb'] / 1024:.0f} GiB",
                    help="In use by this container, of its limit.")
    elif mem["total_mb"] is not None:
        m[4].metric("Memory (machine)", f"{(mem['total_mb'] - mem['available_mb']) / 1024:.1f} / "
                    f"{mem['total_mb'] / 1024:.0f} GiB", help="In use on this machine, of its total.")

    training = {run["worker_pid"]: run for run in running}
    if pids:
        st.dataframe(pd.DataFrame([{
            "worker pid": pid, "memory (MiB)": round(lab.rss_mb(pid) or 0),
            "training": pagekit.run_label(training[pid]) if pid in training else "idle",
            "owner": training[pid]["owner"] if pid in training else ""} for pid in pids]),
            hide_index=True, key="instructor_workers")
    else:
        st.caption(f"Workers: {where}.")

    queued_by = store.counts_by_owner(("queued",))
    running_by = store.counts_by_owner(("running",))
    owners = sorted(set(queued_by) | set(running_by), key=lambda o: (-queued_by.get(o, 0) - running_by.get(o, 0), o))
    st.subheader("The queue")
    if not owners:
        st.caption("Nothing is queued or running.")
    else:
        per_owner = (f"at most {limits.max_runs_per_owner} per person (ASYMVIZ_MAX_RUNS_PER_OWNER)"
                     if limits.max_runs_per_owner else "no per-person limit")
        st.dataframe(pd.DataFrame([{"owner": o, "queued": queued_by.get(o, 0), "running": running_by.get(o, 0)}
                                   for o in owners]), hide_index=True, key="instructor_queue")
        st.caption(f"Queued and running runs per person: {per_owner}.")


live_view()
ui_lecture.instructor_lessons()  # the lessons, and the one the lab opens on

# ------------------------------------------------------------------------------------ names and PINs


def set_pin() -> None:
    """The PIN form's callback: the new PIN is used, then forgotten."""
    name, pin = ss.get("instructor_pin_name") or "", ss.get("instructor_pin_new") or ""
    ss["instructor_pin_new"] = ""
    try:
        ss["instructor_pin_done"] = owners.set_pin(store, name, pin)
    except Exception as err:
        ss["instructor_pin_problem"] = pagekit.friendly_error(err)


st.subheader("Names and PINs")
named = owners.claims(store)
if named:
    now = time.time()
    st.dataframe(pd.DataFrame([{
        "name": c["name"], "claimed": pagekit.created_text(c["claimed_at"]), "PIN set": pagekit.created_text(c["pin_set_at"]),
        "attempts since the last right PIN": c["failures"],
        "locked": f"{pagekit.format_duration(c['locked_until'] - now)} more" if (c["locked_until"] or 0) > now else "",
    } for c in named]), hide_index=True, key="instructor_names")
else:
    st.caption("No one has signed in yet.")
with st.form("instructor_pin_form"):
    n1, n2, n3 = st.columns([2, 2, 1], vertical_alignment="bottom")
    n1.text_input("Name", key="instructor_pin_name", max_chars=40)
    n2.text_input("New PIN", key="instructor_pin_new", type="password", max_chars=owners.PIN_MAX)
    n3.form_submit_button("Set PIN", key="instructor_pin_set", icon=":material/key:", on_click=set_pin,
                          use_container_width=True)
st.caption("Students sign in with a name and a PIN they choose; for one who forgot their PIN, or whose name "
           "someone else took, set a new PIN here and tell them. It unlocks the name, and sessions signed in with "
           "the old PIN must sign in again. PINs are stored only as salted hashes.")
if "instructor_pin_done" in ss:
    st.success(f"{ss.pop('instructor_pin_done')} has a new PIN.", icon=":material/key:")
if "instructor_pin_problem" in ss:
    st.error(ss.pop("instructor_pin_problem"))

# ------------------------------------------------------------------------------- live refresh

st.subheader("Live refresh")
r1, r2 = st.columns([3, 1], vertical_alignment="bottom")
lo, hi = live.REFRESH_RANGE
every = r1.number_input("Students' live views refresh every (seconds)", lo, hi, step=0.5, key="instructor_refresh",
                        value=min(max(float(ui_common.chosen_refresh()), lo), hi))
if r2.button("Apply to everyone", key="instructor_refresh_apply", use_container_width=True):
    ui_common.set_lab_refresh(float(every))
    st.success(f"Live views now refresh every {every:g} s; open pages follow within a few seconds "
               "(two pages a second take their new timer: a class of 60 within half a minute).")
governor = ui_common.refresh_governor()
st.caption("Every browser watching a run costs the server a little CPU at each refresh (README, \"How big a "
           "machine\"): for a large class, refreshing less often leaves more of it to training. "
           f"When the dashboard uses more than {governor.budget:g} cores (`ASYMVIZ_SERVER_CPU`), live views "
           "refresh 2, 3, 5 or 10 times less often until the load falls.")
st.caption(pagekit.load_line(ui_common.chosen_refresh(), ui_common.refresh_seconds(), governor.busy))

# ------------------------------------------------------------------------------------ all runs

st.subheader("All runs")
runs = store.list_runs(limit=MAX_LISTED)
if not runs:
    st.info("No runs yet.", icon=":material/info:")
    st.stop()
st.dataframe(pd.DataFrame(pagekit.runs_table(runs)), hide_index=True, key="instructor_runs",
             height=min(420, 38 + 35 * len(runs)),
             column_config={
                 "id": st.column_config.NumberColumn("run", format="#%d", width="small"),
                 "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0,
                                                             format="percent"),
                 "test acc": st.column_config.NumberColumn("test acc", format="percent")})
if len(runs) == MAX_LISTED:
    st.caption(f"The newest {MAX_LISTED} runs.")

live = {run["id"]: run for run in runs if run["status"] in pagekit.LIVE}
c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
to_stop = c1.multiselect("Stop runs", list(live), key="instructor_stop_ids",
                         format_func=lambda i: f"{pagekit.run_label(live[i])} · {live[i]['owner']} · {live[i]['status']}",
                         placeholder="Pick queued or running runs of anyone" if live else "Nothing is queued or running")
if c2.button("Stop", key="instructor_stop", icon=":material/stop:", disabled=not to_stop, use_container_width=True):
    for run_id in to_stop:
        try:
            runner.stop(run_id, owner=ADMIN)
        except Exception as err:
            ui_common.error(err)
    st.success(f"Stop requested for run{'s' if len(to_stop) > 1 else ''} "
               f"{', '.join(f'#{i}' for i in to_stop)}.", icon=":material/stop:")

# ------------------------------------------------------------------------------ clear old runs

st.subheader("Clear old runs")
d1, d2 = st.columns([3, 1], vertical_alignment="bottom")
days = d1.number_input("Runs that ended more than this many days ago (0 = every run that has ended)", 0.0, 3650.0,
                       value=7.0, step=1.0, key="instructor_clear_days")
old = jobs.ended_runs(store, float(days))
if d2.button(f"Delete {len(old)} run{'' if len(old) == 1 else 's'}", key="instructor_clear",
             icon=":material/delete:", disabled=not old, use_container_width=True):
    deleted = jobs.clear_ended_runs(runner, float(days))
    ss["instructor_cleared"] = len(deleted)
    st.rerun()
st.caption(f"Deletes the runs (of every owner) that ended — {', '.join(sorted(TERMINAL))} — with their metrics. "
           "Queued and running runs are never cleared. Back up $ASYMVIZ_HOME/asymviz.db first if you may need them.")
if "instructor_cleared" in ss:
    st.success(f"Deleted {ss.pop('instructor_cleared')} run(s).", icon=":material/delete:")
