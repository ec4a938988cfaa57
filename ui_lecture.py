"""The dashboard's lecture parts (Streamlit): pace controls, the live network picture, twins and
lessons, called from a few places of app.py and pages/*.py.

- Train page: `arrive()` reads a link's lesson and flags (asymviz.lessons), `enforce()` keeps
  locked controls at the link's values and hides hidden ones, `sidebar()` offers the pace and the
  twins switch, `start()` queues the run (with its twins) at that pace, `run_panel()` shows
  Play / Pause / Step / Reset (`reset_pressed()` acts on Reset), the exact step and the network
  as it learns, inside the live view's fragment; `twins_panel()` overlays the run and its twins
  live.
- Runs page: `runs_twins()` opens a group of twins. Instructor page: `instructor_lessons()`
  lists the lessons and pins one as the start page. Home: `start_page()`, `home_lessons()`,
  `try_it()`.
Widget keys start with `lecture_`. Nothing here trains: runs go through the Runner, the pace
through the store (asymviz.pace), which the run's worker reads.
"""

from __future__ import annotations

import functools
import json
import time

import streamlit as st

import ui_common
from asymviz import lessons, pace, pagekit, snapshot, twins
from asymviz.data import DATASETS
from asymviz.errors import AsymvizError
from asymviz.policy import LimitExceeded
from asymviz.strategies import STRATEGIES

TRAIN = "pages/1_Train.py"
SPEED_LABELS = {1.0: "1 step/s", 5.0: "5 steps/s", 20.0: "20 steps/s", 0.0: "full speed"}
SHORT_LABELS = {1.0: "1/s", 5.0: "5/s", 20.0: "20/s", 0.0: "full"}  # the run's speed, beside its buttons
# The Train page's widget keys of each control a link may hide or lock (asymviz.lessons.CONTROLS).
KEYS = {
    "dataset": ["train_dataset", "train_noise", "train_csv_file", "train_csv_label"],
    "network": ["train_layers", *[f"train_width_{i}" for i in range(8)]],
    "activation": ["train_activation"], "strategy": ["train_strategy"], "sparsity": ["train_sparsity"],
    "conn_sparsity": ["train_conn_sparsity"], "selection": ["train_selection"],
    "granularity": ["train_granularity"], "dropout": ["train_dropout"], "optimizer": ["train_optimizer"],
    "lr": ["train_lr"], "batch_size": ["train_batch_size"], "epochs": ["train_epochs"], "seed": ["train_seed"],
    "device": ["train_device"],
    "advanced": ["train_sparse_output", "train_update", "train_momentum", "train_weight_decay", "train_patience",
                 "train_split_seed"],
    "pace": ["lecture_speed"], "twins": ["lecture_twins", "lecture_twins_p"],
}


def _ss():
    return st.session_state


# ------------------------------------------------------------------------------- Train: the link

def arrive() -> lessons.Flags:
    """Call before the Train page reads its query params. A short lesson link (`?lesson=x`)
    becomes the lesson's full link; a link's flags are read once, when it is opened, and kept for
    the visit (going to another page and back keeps them; a link with another configuration ends
    them). Their problems are shown by `banner()`."""
    ss = _ss()
    params = st.query_params.to_dict()
    slug = params.get("lesson")
    if slug in lessons.LESSONS and not pagekit.has_config(params):
        part = params.get("part", "1")
        part = int(part) if part.isdigit() and 1 <= int(part) <= len(lessons.LESSONS[slug].parts) else 1
        params = lessons.query(slug, part)
        st.query_params.from_dict(params)
    if params == ss.get("train_synced_params"):
        return ss.get("lecture_flags") or lessons.Flags()
    if lessons.has_flags(params):
        flags, problems = lessons.parse_flags(params)
        link_config = pagekit.full_config(pagekit.config_from_query(params)[0])
        ss["lecture_locked"] = {f: link_config[f] for f in flags.locked_fields()}
        ss["lecture_problems"] = problems
        ss["lecture_flags"] = flags
        for key in ("lecture_speed", "lecture_speed_value", "lecture_twins_value", "lecture_twins_p_value"):
            ss.pop(key, None)  # the link's pace and twins replace the session's
    elif params:  # a link of another configuration (or run) ends a lesson's flags
        ss["lecture_flags"], ss["lecture_locked"] = lessons.Flags(), {}
    return ss.get("lecture_flags") or lessons.Flags()


def enforce(flags: lessons.Flags, apply_config, read_config) -> None:
    """Locked controls get the link's values back (whatever the page sent), hidden and locked
    ones are styled out. Call after the page has put the link's config into its widgets."""
    locked = _ss().get("lecture_locked") or {}
    if locked:
        try:
            current = read_config()
        except (KeyError, TypeError, ValueError):  # widgets not set up yet: the locked values over the defaults
            current = pagekit.full_config({})
        if any(current.get(f) != v for f, v in locked.items()):
            apply_config({**current, **locked})
    rules = []
    for name in flags.hide:
        rules += [f".st-key-{key}" for key in KEYS[name]]
    if "advanced" in flags.hide:
        rules.append('[data-testid="stExpander"]:has(.st-key-train_update)')
    css = ""
    if rules:
        css += ", ".join(rules) + " { display: none !important; }\n"
    lock_rules = [f".st-key-{key}" for name in flags.lock if name not in flags.hide for key in KEYS[name]]
    if lock_rules:
        css += ", ".join(lock_rules) + " { pointer-events: none; opacity: 0.55; }\n"
    if css:
        st.html(f"<style>{css}</style>")
    if flags.lock:
        st.sidebar.caption(":material/lock: Fixed by this link: " + ", ".join(sorted(flags.lock)) + ".")


def query(flags: lessons.Flags) -> dict[str, str]:
    """The flags to keep in the page's URL, with the sidebar's current pace and twins."""
    ss = _ss()
    out = flags.to_query()
    if "lecture_speed_value" in ss:
        out["pace"] = f"{ss['lecture_speed_value']:g}"
    if "lecture_twins_value" in ss:
        out["twins"] = "1" if ss["lecture_twins_value"] else "0"
        if ss["lecture_twins_value"]:
            out["twins_p"] = f"{ss['lecture_twins_p_value']:g}"
    return out


def banner(flags: lessons.Flags) -> None:
    """The lesson's title, point and part, and the link's problems (each one sentence)."""
    ss = _ss()
    for sentence in ss.pop("lecture_problems", []) or []:
        st.warning(sentence, icon=":material/link_off:")
    if not flags.lesson:
        return
    lesson = lessons.LESSONS[flags.lesson]
    part = lesson.parts[flags.part - 1]
    with st.container(border=True, key="lecture_banner"):
        st.markdown(f"**Lesson: {lesson.title}.** {lesson.point}")
        if len(lesson.parts) > 1:
            cols = st.columns(len(lesson.parts) + 2)
            for i, p in enumerate(lesson.parts, start=1):
                cols[i - 1].page_link(TRAIN, label=f"{i}. {p.name}", query_params=lessons.query(lesson.slug, i),
                                      icon=":material/radio_button_checked:" if i == flags.part
                                      else ":material/radio_button_unchecked:")
        st.markdown(part.text)


# ----------------------------------------------------------------------------- Train: the sidebar

def sidebar(flags: lessons.Flags, info) -> None:
    """Pace and twins for the runs this page starts (in the Train page's sidebar)."""
    ss, sb = _ss(), st.sidebar
    default_speed = pace.TOY_SPEED if info.is_2d else 0.0
    speed = flags.speed if flags.speed is not None else default_speed
    if "pace" in flags.lock:
        ss["lecture_speed"] = speed
    elif "lecture_speed" not in ss:
        previous = ss.get("lecture_speed_value")
        follows = previous is None or previous == ss.get("lecture_speed_default")
        ss["lecture_speed"] = speed if follows or previous not in pace.SPEEDS else previous
    elif ss.get("lecture_speed") == ss.get("lecture_speed_default") and flags.speed is None:
        ss["lecture_speed"] = default_speed  # untouched: follows the dataset (toy sets go slower)
    if ss["lecture_speed"] not in pace.SPEEDS:
        ss["lecture_speed"] = speed if speed in pace.SPEEDS else default_speed
    ss["lecture_speed_default"] = default_speed
    sb.subheader("Pace and comparison")
    sb.select_slider("Pace", list(pace.SPEEDS), key="lecture_speed", format_func=SPEED_LABELS.get,
                     help="How fast the run trains: slow enough to watch the network and the boundary change, or "
                          "full speed. Play, Pause and Step are above the charts once it runs.")
    ss["lecture_speed_value"] = float(ss["lecture_speed"])
    twins_on = flags.twins if flags.twins is not None else ss.get("lecture_twins_value", False)
    p = flags.twins_p if flags.twins_p is not None else ss.get("lecture_twins_p_value", twins.DEFAULT_P)
    if "twins" in flags.lock or "lecture_twins" not in ss:
        ss["lecture_twins"] = bool(twins_on)
    sb.toggle("Compare with symmetric and dropout", key="lecture_twins",
              help="Start the symmetric run and the dropout run of this same configuration and seed with it; "
                   "their curves, gap and backward time are overlaid below.")
    ss["lecture_twins_value"] = bool(ss["lecture_twins"])
    if "twins" in flags.lock or "lecture_twins_p" not in ss:
        ss["lecture_twins_p"] = min(0.9, max(0.05, round(float(p) / 0.05) * 0.05))
    if ss["lecture_twins"]:
        sb.slider("Dropout p of the dropout twin", 0.05, 0.9, step=0.05, key="lecture_twins_p")
    ss["lecture_twins_p_value"] = float(ss["lecture_twins_p"])


def start(config: dict, owner: str) -> int:
    """Queue the run (and its twins) at the sidebar's pace; the run's id. A locked field that
    differs, a limit, a bad config: an AsymvizError with one sentence, nothing queued."""
    ui_common.check_can_train()  # no worker will ever train it: refuse, queue nothing
    ss = _ss()
    for field, value in (ss.get("lecture_locked") or {}).items():
        if config.get(field) != value:
            raise AsymvizError(f"This link fixes {field} at {value!r}; the run was not started.")
    runner = ui_common.runner()
    speed = float(ss.get("lecture_speed_value", 0.0))
    if not ss.get("lecture_twins_value"):
        return pace.submit(runner, [config], owner=owner, speed=speed)[0]
    configs = twins.twin_configs(config, ss.get("lecture_twins_p_value", twins.DEFAULT_P))
    limit = runner.limits.max_runs_per_owner
    mine = runner.store.count(owner=owner)
    if limit and mine + len(configs) > limit:
        raise LimitExceeded(f"Comparing with symmetric and dropout starts {len(configs)} runs, and {owner} has "
                            f"{mine} queued or running of the {limit} this instance allows per person "
                            "(ASYMVIZ_MAX_RUNS_PER_OWNER); wait for some to finish or stop them.")
    return pace.submit(runner, configs, owner=owner, speed=speed, tag=twins.new_tag())[0]


def try_it(owner: str) -> int:
    """Home's "Try it" run, at the toy sets' pace."""
    ui_common.check_can_train()
    return pace.submit(ui_common.runner(), [dict(pagekit.TRY_IT_CONFIG)], owner=owner, speed=pace.TOY_SPEED)[0]


# ------------------------------------------------------------------------------ Train: the panel

NO_MODEBAR = {"displayModeBar": False}  # the network picture's plotly config


@functools.lru_cache(maxsize=32)
def _shape(name: str, options_json: str, split_seed: int) -> tuple | None:
    """(features, classes, is 2-D) of a dataset, None where it cannot load here (remembered too:
    the panel does not load it again at every refresh)."""
    try:
        return pagekit.dataset_shape(name, json.loads(options_json), split_seed)
    except Exception:
        return None


def _max_age() -> float:
    """How old a shared read of a run may be for a refresh (as the live view's)."""
    return min(0.5, ui_common.refresh_seconds() / 2)


def _group(watch, store) -> list[dict]:
    """The rows of the run's twins group (itself alone without twins), oldest first, each read
    through its run's shared reader (asymviz.live); runs deleted meanwhile left out."""
    rows = []
    for run_id in watch.group(store, _max_age()):
        try:
            rows.append(ui_common.live_run(run_id).refresh(store, _max_age()).run)
        except AsymvizError:
            continue
    return rows


def _reset(run: dict, group: list[dict], owner: str, speed: float) -> None:
    """Stop the run (and its twins) and queue the same configurations again, paused before
    their first step, then watch the new run."""
    runner = ui_common.runner()
    for r in group:
        if r["status"] in pagekit.LIVE:
            runner.stop(r["id"], owner=owner)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(runner.store.get_run(r["id"])["status"] in pagekit.LIVE for r in group):
        time.sleep(0.1)  # a stopping run still counts against the limits
    tag = twins.new_tag() if len(group) > 1 else None
    ids = pace.submit(runner, [r["config"] for r in group], owner=owner, speed=speed, paused=True, tag=tag)
    _ss()["train_selected"] = ids[0]


def reset_pressed(reset) -> None:
    """After the panel and the live view are drawn: start the group again if Reset was pressed
    (then the whole page reruns), or say in one sentence why not."""
    if reset is None:
        return
    where, args = reset
    try:
        _reset(*args)
    except AsymvizError as err:
        ui_common.error(err, where)
    else:
        st.rerun(scope="app")


def run_panel(run_id: int, owner: str):
    """Draw the pace controls and the network as it learns, above the Train page's live view (the
    controls act on its live twins too), read through the run's shared reader (asymviz.live):
    whoever watches, the store is read once per refresh interval and each picture built once
    per new snapshot. Drawn inside the live view's fragment (pages/1_Train.py), so one timer and
    one run per refresh serve both. Returns what Reset needs when it was pressed (for
    `reset_pressed`, outside the live slot), else None."""
    ss, store = _ss(), ui_common.store()
    watch = ui_common.live_run(run_id)
    try:
        lecture = watch.lecture(store, _max_age())
        group = _group(watch, store)
    except Exception:  # deleted meanwhile, or the store failed: the live view below says which
        return None
    run, p, step = lecture.run, lecture.pace, lecture.step
    ids = [r["id"] for r in group if r["status"] in pagekit.LIVE]
    mine = run["owner"] == owner
    cols = st.columns([1, 1, 1, 1, 1, 2.2, 1.6], vertical_alignment="center")
    who = "" if mine else f" Only {run['owner']} can do this."
    can = mine and bool(ids)
    act = dict(on_click=_act, use_container_width=True)
    cols[0].button("Play", key="lecture_play", icon=":material/play_arrow:", disabled=not can or not p.paused,
                   help="Go on training." + who, args=("play", ids, owner), **act)
    cols[1].button("Pause", key="lecture_pause", icon=":material/pause:", disabled=not can or p.paused,
                   help="Hold the run after its current step." + who, args=("pause", ids, owner), **act)
    cols[2].button("Step", key="lecture_step", icon=":material/skip_next:", disabled=not can,
                   help="Pause, and train exactly one more batch." + who, args=("step", ids, owner), **act)
    cols[3].button("Epoch", key="lecture_step_epoch", icon=":material/fast_forward:", disabled=not can,
                   help="Pause, and train to the end of the current epoch." + who, args=("epoch", ids, owner), **act)
    reset = None
    if cols[4].button("Reset", key="lecture_reset", icon=":material/restart_alt:", use_container_width=True,
                      disabled=not mine, help="Start this configuration again from its first step, paused "
                                              "(twins too)." + who):
        reset = (st.empty(), (run, group, owner, p.speed))
    if ss.get("lecture_pace_error"):
        st.error(ss.pop("lecture_pace_error"))
    ss["lecture_run_speed"] = p.speed if p.speed in pace.SPEEDS else None
    cols[5].segmented_control("Speed", list(pace.SPEEDS), key="lecture_run_speed", format_func=SHORT_LABELS.get,
                              label_visibility="collapsed", disabled=not can, on_change=_speed_changed,
                              args=(ids, owner), help="Steps per second this run (and its twins) trains at "
                                                        "from now on.")
    total = _total_steps(run, step)
    with cols[6].container(key="lecture_step_counter"):
        st.markdown(f"Step **{step:,}**" + (f" of {total:,}" if total else ""))
    with st.container(key="lecture_pace_line"):
        st.caption(_pace_line(run, p, step))
    try:
        _network(watch, lecture, store)
    except Exception as err:  # the store failed: one sentence, the next refresh tries again
        ui_common.error(err)
    return reset


def _touch(ids: list[int]) -> None:
    """The runs' shared readers read them again at the next refresh (their pace changed)."""
    for run_id in ids:
        ui_common.live_run(run_id).touch()


def _act(action: str, ids: list[int], owner: str) -> None:
    """Button callback (before the panel redraws, so the buttons show the new state)."""
    store = ui_common.store()
    try:
        if action == "play":
            pace.play(store, ids, owner=owner)
        elif action == "pause":
            pace.pause(store, ids, owner=owner)
        else:
            pace.step(store, ids, epoch=action == "epoch", owner=owner)
    except AsymvizError as err:
        _ss()["lecture_pace_error"] = str(err)
    _touch(ids)


def _speed_changed(ids: list[int], owner: str) -> None:
    value = _ss().get("lecture_run_speed")
    if value is not None:
        try:
            pace.set_speed(ui_common.store(), ids, value, owner=owner)
        except AsymvizError as err:
            _ss()["lecture_pace_error"] = str(err)
        _touch(ids)


def _total_steps(run: dict, step: int) -> int | None:
    """The run's steps in all, from its progress (step / total, written with the same records)."""
    progress = run.get("progress")
    return round(step / progress) if progress and step else None


def _pace_line(run: dict, p: pace.Pace, step: int) -> str:
    speed = "full speed" if not p.speed else f"{p.speed:g} steps per second"
    if pace.is_held(run):
        return (f"Paused at step {step:,}. It gave its worker back to other runs while it waits; Play or Step "
                "goes on from exactly here.")
    if run["status"] == "queued":
        return ("Waiting for a free worker; it will start paused." if p.paused else
                f"Waiting for a free worker; it will train at {speed}.")
    if run["status"] == "running":
        if p.paused and p.holding is not None:
            return (f"Paused after step {p.holding:,}. **Step** trains one more batch, **Epoch** the rest of the "
                    f"epoch, **Play** goes on at {speed}. After {pace.yield_seconds():g} s paused it gives its worker "
                    "to other runs and later goes on from here.")
        if p.paused:
            return "Pausing after the current step ..."
        return f"Training at {speed}."
    return f"{run['status'].capitalize()} after step {step:,}. **Reset** starts the same configuration again."


def _network(watch, lecture, store) -> None:
    """The network picture (small networks) or its summary, and the live decision boundary,
    from the run's shared reader: built once per new snapshot (or new mask counts)."""
    run = lecture.run
    c = run["config"]
    info = DATASETS.get(c.get("dataset"))
    hidden = list(c.get("hidden") or [])
    if lecture.snapshot is not None:
        two_d = bool(info is not None and info.is_2d)
        network, boundary = watch.network_charts(store, boundary=two_d)
        if boundary is not None:
            left, right = st.columns([3, 2])
            ui_common.chart(left, network, key="lecture_fig_network", config=NO_MODEBAR)
            ui_common.chart(right, boundary, key="lecture_fig_boundary")
        else:
            ui_common.chart(st, network, key="lecture_fig_network", config=NO_MODEBAR)
        st.caption("Every line is a weight, blue positive and red negative, thicker for larger: the forward pass "
                   "uses all of them. Orange is the backward pass at this step: the neurons that got gradient "
                   "(filled or ringed) and the connections whose weights got it (glowing). "
                   + ("Inside each neuron, its output over the input plane (blue positive, red negative). "
                      if two_d else "")
                   + "Hover a neuron to see how often it was kept. Forward dropout masks are not drawn.")
        return
    preset = STRATEGIES.get(c.get("strategy"))
    if preset is None or not preset.neuron_sparse:
        st.caption("This strategy's backward keeps every neuron, so there are no kept sets to draw.")
        return
    shape = _shape(c["dataset"], json.dumps(c.get("dataset_options") or {}, sort_keys=True), int(c.get("split_seed", 0)))
    if shape is None:  # a dataset that cannot load here: no summary
        return
    widths = (shape[0], *hidden, shape[1])
    if snapshot.is_small(widths):
        st.caption("The network picture appears once a worker has started the run." if run["status"] in pagekit.LIVE
                   else "No picture of the network was recorded for this run.")
        return
    keep = tuple(pagekit.keep_per_layer(hidden, c.get("sparsity", 0.0))) + ((None,) if not c.get("sparse_output") else
                                                                        (pagekit.keep_per_layer([shape[1]], c["sparsity"])[0],))
    dense = tuple([False] * len(hidden) + [not c.get("sparse_output")])
    ui_common.chart(st, watch.summary_chart(store, widths, keep, dense), key="lecture_fig_summary")


# ------------------------------------------------------------------------------ Train: the twins

def twins_panel(run: dict) -> None:
    """The run and its twins overlaid (below the Train page's live view), read through their
    shared readers (asymviz.live.LiveRuns.twins: each chart built once per new data, whoever
    watches). Refreshed while any of them trains (less often while they all wait in the
    queue); once the last has ended, the page starts again and it is drawn once, untimed."""
    try:
        view = ui_common.live_runs().twins(ui_common.store(), run["id"], _max_age())
    except Exception:  # deleted meanwhile, or the store failed: the live view says which
        return
    if len(view.runs) < 2:
        return
    status = _group_status(view.runs)
    if status in pagekit.LIVE:
        st.fragment(_twins, run_every=max(1.0, ui_common.refresh_for(status)))(run["id"], status,
                                                                             ui_common.refresh_seconds())
    else:
        _twins(run["id"])


def _group_status(runs: list[dict]) -> str:
    """"running" if any of the runs trains, else "queued" if any waits, else "ended"."""
    statuses = {r["status"] for r in runs}
    return next((s for s in ("running", "queued") if s in statuses), "ended")


def _twins(run_id: int, shown: str | None = None, lab: float | None = None) -> None:
    with ui_common.live_slot():  # as the live view: a few sessions at a time
        _draw_twins(run_id, shown, lab)


def _draw_twins(run_id: int, shown: str | None, lab: float | None) -> None:
    try:
        view = ui_common.live_runs().twins(ui_common.store(), run_id, _max_age())
    except Exception:
        return
    if shown is not None and (_group_status(view.runs) != shown or ui_common.refresh_seconds() != lab):
        ui_common.restart_page()  # one started or the last one ended, or the lab's refresh changed: a new timer (or none)
    if len(view.runs) < 2:
        return
    st.subheader("Twins: the same configuration and seed, symmetric and with dropout")
    cols = st.columns(3)
    ui_common.chart(cols[0], view.charts["val/acc"], key="lecture_twins_acc")
    ui_common.chart(cols[1], view.charts["gap"], key="lecture_twins_gap")
    ui_common.chart(cols[2], view.charts["timing"], key="lecture_twins_time")
    rows = []
    for r, last in zip(view.runs, view.last_epochs):
        s = r.get("summary") or {}
        rows.append({"run": pagekit.run_label(r), "status": r["status"], "epoch": last.get("epoch"),
                     "val acc": last.get("val/acc"), "gap": last.get("gap"), "test acc": s.get("test_acc"),
                     "backward ms": s.get("backward_ms_mean")})
    st.dataframe(rows, hide_index=True, key="lecture_twins_table", column_config={
        "val acc": st.column_config.NumberColumn(format="percent"), "gap": st.column_config.NumberColumn(format="percent"),
        "test acc": st.column_config.NumberColumn(format="percent"),
        "backward ms": st.column_config.NumberColumn(format="%.3f")})
    st.caption("Orange: the run you started; slate: its symmetric twin; green: its dropout twin. Backward time is the "
               "rolling median per step; the mean over the run is in the table once it has finished.")


# -------------------------------------------------------------------------------------- Runs page

def runs_twins(runs: list[dict]) -> None:
    """Open a group of twins (listed runs that were started together) on the Train page."""
    groups = twins.groups(runs)
    if not groups:
        return
    tags = list(groups)
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    tag = c1.selectbox("Twins", tags, key="runs_twins_pick",
                       format_func=lambda t: " · ".join(pagekit.run_label(r) for r in groups[t]),
                       help="Runs started with their symmetric and dropout twins (same configuration and seed).")
    if c2.button("Open together", key="runs_twins_open", icon=":material/compare:", use_container_width=True):
        main = groups[tag][0]
        st.switch_page(TRAIN, query_params={**pagekit.config_to_query(main["config"]), pagekit.RUN_PARAM: str(main["id"])})


# --------------------------------------------------------------------------------- Home, Instructor

def start_page() -> None:
    """Home: once per browser session, go to the lesson an instructor pinned as start page."""
    ss = _ss()
    if ss.get("lecture_start_seen"):
        return
    ss["lecture_start_seen"] = True
    slug = lessons.pinned(ui_common.store())
    if slug:
        st.switch_page(TRAIN, query_params=lessons.query(slug))


def home_lessons() -> None:
    """Home: the built-in lessons, each a link."""
    st.subheader("Lessons")
    st.caption("Each opens the Train page set up to make one point, with the controls it does not need hidden. "
               "The address bar then holds the lesson: hand the link to a class.")
    cols = st.columns(2)
    for i, lesson in enumerate(lessons.LESSONS.values()):
        with cols[i % 2]:
            st.page_link(TRAIN, label=f"**{lesson.title}**", icon=":material/school:",
                         query_params={"lesson": lesson.slug})
            st.caption(lesson.point)


def instructor_lessons() -> None:
    """Instructor page: the lessons with their links, and which one the lab opens on."""
    store = ui_common.store()
    st.subheader("Lessons")
    st.caption("Links to hand out (relative to this lab's address). Add `hide=...` to hide more controls, "
               "`lock=...` to fix them, `pace=5` for a speed, `twins=1` to start the twins with each run.")
    st.dataframe([{"lesson": lesson.title, "link": "/Train?lesson=" + lesson.slug, "parts": len(lesson.parts),
                   "point": lesson.point} for lesson in lessons.LESSONS.values()],
                 hide_index=True, key="instructor_lessons_table")
    current = lessons.pinned(store)
    options = [None, *lessons.LESSONS]
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    choice = c1.selectbox("Start page of this lab", options, index=options.index(current), key="instructor_start_page",
                          format_func=lambda s: "Home (no lesson)" if s is None else lessons.LESSONS[s].title,
                          help="Where a browser opening the lab's address lands (once per session).")
    if c2.button("Save", key="instructor_start_save", icon=":material/push_pin:", use_container_width=True):
        lessons.pin(store, choice)
        st.success("The lab now opens on " + ("Home." if choice is None else
                                               f"the lesson “{lessons.LESSONS[choice].title}”."))
