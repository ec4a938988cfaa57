"""Train page: configure a run in the sidebar, start and stop it, watch it live.

The whole configuration lives in the URL (one query parameter per TrainConfig field, see
asymviz.pagekit.config_to_query), so a link reproduces a run's config, seed included; `?run=ID`
selects the run to watch. The live view is an `st.fragment(run_every=...)` that only reads
the store (training happens in the runner's worker processes).
"""

import json
import time

import streamlit as st
import torch

import ui_common
import ui_lecture
from asymviz import pagekit
from asymviz.config import sparsity_problem
from asymviz.data import DATASETS, store_upload
from asymviz.model import MAX_HIDDEN_LAYERS, MAX_WIDTH
from asymviz.recording import MASK_DENSE_STEPS, MASK_MAX_RECORDS
from asymviz.sparse import keep_count
from asymviz.store import RunNotFound
from asymviz.strategies import GRANULARITIES, SELECTIONS, STRATEGIES

ui_common.setup("Train", ":material/model_training:")
owner = ui_common.owner()
ss = st.session_state

DATASET_NAMES = ui_common.offered_datasets()  # all of them, or this lab's $ASYMVIZ_DATASETS
DEFAULT_DATASET = "digits" if "digits" in DATASET_NAMES else DATASET_NAMES[0]
START_CONFIG = {**pagekit.DEFAULTS, "dataset": DEFAULT_DATASET}  # a first visit's configuration
DEVICES = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ACTIVATIONS = ["relu", "tanh", "sigmoid", "gelu"]
OPTIMIZERS = ["adam", "momentum", "sgd"]
MAX_LAYERS = MAX_HIDDEN_LAYERS  # the library's limit: a link the CLI accepts opens here unchanged
TOY_NOISE_MAX = 1.0


# ---------------------------------------------------------------------------------- config <-> widgets


def apply_config(config: dict) -> list[str]:
    """Put a config into the widgets' session state; one sentence per value that does not fit."""
    c = pagekit.full_config(config)
    problems = []

    def choice(key, value, options, default, name):
        if value in options:
            ss[key] = value
        else:
            ss[key] = default
            problems.append(f"The {name} {value!r} is not offered here, so {default!r} is used.")

    def number(key, value, lo, hi, name, cast=float, fallback=None):
        try:
            x = cast(value)
        except (TypeError, ValueError):
            x = None
        if x is None or not lo <= x <= hi:
            default = (pagekit.DEFAULTS.get(name, lo) or lo) if fallback is None else fallback
            x = min(max(cast(default), lo), hi)
            problems.append(f"The {name} {value!r} is outside {lo:g} to {hi:g}, so {x:g} is used.")
        ss[key] = x

    choice("train_dataset", c["dataset"], DATASET_NAMES, DEFAULT_DATASET, "dataset")
    options = dict(c["dataset_options"] or {})
    info = DATASETS[ss["train_dataset"]]
    if info.is_2d:
        number("train_noise", options.pop("noise", info.options.get("noise", 0.2)), 0.0, TOY_NOISE_MAX, "noise")
    if info.kind == "csv":  # a link names an upload by the id the lab gave it, never a file
        upload, label = options.pop("upload", None), options.pop("label", None)
        if options.pop("path", None) is not None:
            problems.append("A link cannot name a file on the server; upload the CSV instead.")
        ss["train_csv_upload"], ss["train_csv_label"] = None, None
        if upload is not None:
            problem = pagekit.upload_problem(upload, label)
            if problem:
                problems.append(problem)
            else:
                ss["train_csv_upload"], ss["train_csv_label"] = upload, label
    ss["train_extra_options"] = (ss["train_dataset"], options)  # e.g. n_samples from a link
    hidden = list(c["hidden"]) or [256]
    if len(hidden) > MAX_LAYERS:  # (a link's are refused by pagekit.config_from_query already)
        problems.append(f"The network has {len(hidden)} hidden layers; at most {MAX_LAYERS} are allowed, so "
                        f"only the first {MAX_LAYERS} are used.")
        hidden = hidden[:MAX_LAYERS]
    ss["train_layers"] = len(hidden)
    for i, w in enumerate(hidden):
        number(f"train_width_{i}", w, 1, MAX_WIDTH, "width", int)
    choice("train_activation", c["activation"], ACTIVATIONS, "relu", "activation")
    choice("train_strategy", c["strategy"], list(STRATEGIES), "neuron", "strategy")
    number("train_sparsity", c["sparsity"], 0.0, 1.0, "sparsity")
    number("train_conn_sparsity", c["conn_sparsity"], 0.0, 1.0, "conn_sparsity")
    choice("train_selection", c["selection"], list(SELECTIONS), "topk", "selection")
    choice("train_granularity", c["granularity"], list(GRANULARITIES), "batch", "granularity")
    preset_dropout = STRATEGIES[ss["train_strategy"]].default_dropout  # what a bad value falls back to
    dropout = preset_dropout if c["dropout"] is None else c["dropout"]
    number("train_dropout", dropout, 0.0, 0.9, "dropout", fallback=preset_dropout)
    ss["train_sparse_output"] = bool(c["sparse_output"])
    choice("train_optimizer", c["optimizer"], OPTIMIZERS, "adam", "optimizer")
    number("train_lr", c["lr"], 0.0, 10.0, "lr")
    number("train_momentum", c["momentum"], 0.0, 0.999, "momentum")
    number("train_weight_decay", c["weight_decay"], 0.0, 1.0, "weight_decay")
    choice("train_update", c["update"], ["lazy", "dense"], "lazy", "update")
    number("train_batch_size", c["batch_size"], 1, 65536, "batch_size", int)
    number("train_epochs", c["epochs"], 1, 100000, "epochs", int)
    number("train_patience", c["patience"], 0, 100000, "patience", int)
    number("train_seed", c["seed"], 0, 2**31 - 1, "seed", int)
    number("train_split_seed", c["split_seed"], 0, 2**31 - 1, "split_seed", int)
    choice("train_device", c["device"], DEVICES, "auto", "device")
    return problems


def read_config() -> dict:
    """The config the widgets describe (not yet validated)."""
    dataset = ss["train_dataset"]
    info = DATASETS[dataset]
    extra_for, extra = ss.get("train_extra_options", (None, {}))
    options = dict(extra) if extra_for == dataset else {}
    if info.is_2d and ss.get("train_noise") is not None and ss["train_noise"] != info.options.get("noise"):
        options["noise"] = round(float(ss["train_noise"]), 3)
    if info.kind == "csv":
        options.update(upload=ss.get("train_csv_upload"), label=ss.get("train_csv_label"))
    strategy = ss["train_strategy"]
    return pagekit.full_config({
        "dataset": dataset, "dataset_options": options,
        "hidden": [int(ss[f"train_width_{i}"]) for i in range(int(ss["train_layers"]))],
        "activation": ss["train_activation"], "strategy": strategy,
        "sparsity": float(ss["train_sparsity"]), "conn_sparsity": float(ss["train_conn_sparsity"]),
        "selection": ss["train_selection"], "granularity": ss["train_granularity"],
        "dropout": float(ss["train_dropout"]), "sparse_output": bool(ss["train_sparse_output"]),
        "optimizer": ss["train_optimizer"], "lr": float(ss["train_lr"]), "momentum": float(ss["train_momentum"]),
        "weight_decay": float(ss["train_weight_decay"]), "update": ss["train_update"],
        "batch_size": int(ss["train_batch_size"]), "epochs": int(ss["train_epochs"]),
        "patience": int(ss["train_patience"]), "seed": int(ss["train_seed"]),
        "split_seed": int(ss["train_split_seed"]), "device": ss["train_device"],
    })


def load_run_config(run_id: int) -> None:
    """Button callback: copy a run's config into the sidebar."""
    try:
        ss["train_url_problems"] = apply_config(ui_common.store().get_run(run_id)["config"])
    except Exception as err:
        ss["train_url_problems"] = [pagekit.friendly_error(err)]


def pick_run() -> None:
    ss["train_selected"] = ss.get("train_run_pick")


def strategy_changed() -> None:
    """Dropout follows the presets: switching to `dropout` with p = 0 (invalid) gives it the
    preset's p, and leaving it with the preset's p untouched goes back to the new preset's."""
    old = STRATEGIES.get(ss.get("train_prev_strategy", ""))
    preset = STRATEGIES[ss["train_strategy"]]
    if preset.default_dropout and not ss.get("train_dropout"):
        ss["train_dropout"] = preset.default_dropout
    elif old is not None and old.default_dropout and ss.get("train_dropout") == old.default_dropout:
        ss["train_dropout"] = preset.default_dropout


# --------------------------------------------------------------------------- sync with the URL

lecture = ui_lecture.arrive()  # a lesson link, and a link's hide / lock / pace / twins flags
params = st.query_params.to_dict()
if params != ss.get("train_synced_params"):  # a link, or arriving from another page
    url_config, problems = pagekit.config_from_query(params)
    url_run = pagekit.run_from_query(params)
    base = ss.get("train_config") or START_CONFIG
    if url_config:
        base = pagekit.full_config(url_config)
    elif url_run is not None:
        try:
            base = ui_common.store().get_run(url_run)["config"]
        except Exception:
            problems.append(f"Run {url_run} does not exist (it may have been deleted).")
    problems += apply_config(base)
    ss["train_url_problems"] = problems
    if url_run is not None:
        ss["train_selected"] = url_run
else:  # re-assert the widgets' values: widget state does not survive a visit to another page
    try:
        current = read_config()
    except (KeyError, TypeError, ValueError):
        current = ss.get("train_config") or START_CONFIG
    apply_config(current)
for i in range(MAX_LAYERS):  # widths of layers not shown keep a value for when they are added
    ss.setdefault(f"train_width_{i}", ss.get(f"train_width_{i - 1}", 256) if i else 256)
ui_lecture.enforce(lecture, apply_config, read_config)  # locked controls keep the link's values


@st.cache_data(max_entries=32, show_spinner=False)
def shape_of(name: str, options_json: str, split_seed: int):
    """(features, classes, is 2-D), or the one-sentence error of loading the dataset."""
    try:
        return pagekit.dataset_shape(name, json.loads(options_json), split_seed), None
    except Exception as err:
        return None, pagekit.friendly_error(err)


# ------------------------------------------------------------------------------------ sidebar

errors = {}  # control -> sentence; any error disables Start
sb = st.sidebar
sb.header("Run configuration")

sb.subheader("Data")
sb.selectbox("Dataset", DATASET_NAMES, key="train_dataset", format_func=lambda n: pagekit.dataset_label(DATASETS[n]),
             help="Built-in datasets work offline. MNIST and Fashion-MNIST are downloaded once (about 50 MB). "
                  "Or upload your own CSV.")
data_slot = sb.empty()  # a download that fails on Start says so here, next to the dataset
info = DATASETS[ss["train_dataset"]]
if info.kind != "csv":
    sb.caption(info.description)
if info.kind == "download":
    sb.caption(":material/cloud_download: Needs a download the first time; without internet access it cannot start.")
if info.is_2d:
    sb.slider("Noise", 0.0, TOY_NOISE_MAX, step=0.05, key="train_noise",
              help="How much the 2-D points are jittered: more noise, harder to separate.")
if info.kind == "csv":
    upload = sb.file_uploader("CSV file", type=["csv"], key="train_csv_file",
                              help="A header row, numeric feature columns and one label column; at most 20 MB.")
    if upload is not None:
        raw = upload.getvalue()
        try:
            columns = pagekit.csv_columns(raw)
        except Exception as err:
            ss["train_csv_upload"] = None
            errors["csv"] = pagekit.friendly_error(err)
            sb.error(errors["csv"])
        else:
            if ss.get("train_csv_label") not in columns:
                ss["train_csv_label"] = columns[-1]
            sb.selectbox("Label column", columns, key="train_csv_label", help="The column that holds the class.")
            try:  # checked in full before it is kept: a file the lab refuses is not stored
                ss["train_csv_upload"] = store_upload(raw, ss["train_csv_label"])
            except Exception as err:
                ss["train_csv_upload"] = None
                errors["csv"] = pagekit.friendly_error(err)
                sb.error(errors["csv"])
    elif ss.get("train_csv_upload"):
        sb.caption(f"Using the CSV from the link (label column {ss.get('train_csv_label')!r}).")
    else:
        errors["csv"] = "Upload a CSV file to train on your own data."
        sb.info(errors["csv"])

config = read_config()
shape, data_error = (None, None)
if info.kind == "csv" and "csv" in errors:
    pass
else:
    shape, data_error = shape_of(config["dataset"], json.dumps(config["dataset_options"], sort_keys=True),
                                 int(config["split_seed"]))
    if data_error:
        errors["data"] = data_error
        sb.error(data_error)

sb.subheader("Network")
sb.number_input("Hidden layers", 1, MAX_LAYERS, step=1, key="train_layers",
                help="How many hidden layers between the input and the output.")
n_layers = int(ss["train_layers"])
cols = sb.columns(min(n_layers, 4))
for i in range(n_layers):
    cols[i % len(cols)].number_input(f"Layer {i + 1}", 1, MAX_WIDTH, step=16, key=f"train_width_{i}",
                                     help="Neurons in this hidden layer.")
sb.selectbox("Activation", ACTIVATIONS, key="train_activation", help="The nonlinearity after each hidden layer.")
config = read_config()
sb.caption(pagekit.architecture_caption(shape[0] if shape else None, config["hidden"], shape[1] if shape else None))

sb.subheader("Backward pass")
sb.selectbox("Strategy", list(STRATEGIES), key="train_strategy", format_func=lambda n: STRATEGIES[n].title,
             on_change=strategy_changed, help=pagekit.strategy_help())
preset = STRATEGIES[ss["train_strategy"]]
ss["train_prev_strategy"] = ss["train_strategy"]
sb.caption(preset.summary)
if preset.neuron_sparse:
    sb.slider("Sparsity", 0.0, 1.0, step=0.01, key="train_sparsity",
              help="The fraction of each hidden layer's neurons left out of the backward pass: "
                   "k = max(1, round((1 - s) n)) neurons are kept.")
    problem = sparsity_problem(ss["train_sparsity"])
    if problem:
        errors["sparsity"] = problem
        sb.error(problem)
    else:
        sb.caption(pagekit.keep_caption(config["hidden"], ss["train_sparsity"]))
if preset.connection:
    sb.slider("Connection sparsity", 0.0, 1.0, step=0.01, key="train_conn_sparsity",
              help="Within each kept neuron, the fraction of connections left out: by smallest |W| (excessive) "
                   "or by least active input (refined).")
    problem = sparsity_problem(ss["train_conn_sparsity"], "Connection sparsity", "connection")
    if problem:
        errors["conn_sparsity"] = problem
        sb.error(problem)
if preset.neuron_sparse:
    sb.radio("Selection", list(SELECTIONS), key="train_selection", horizontal=True,
             format_func={"topk": "top-k |gradient|", "random": "random"}.get,
             help="Which neurons to keep: those with the largest gradient, or as many chosen at random "
                  "(the ablation that separates 'which' from 'how many').")
    sb.radio("Granularity", list(GRANULARITIES), key="train_granularity", horizontal=True,
             format_func={"batch": "per batch", "example": "per example"}.get,
             help="One neuron set for the whole mini-batch (fast), or one per example (meProp's original).")
sb.slider("Dropout p", 0.0, 0.9, step=0.05, key="train_dropout",
          help="Forward dropout after each hidden layer; the dropout strategy needs p > 0.")
if ss["train_strategy"] == "dropout" and not ss["train_dropout"]:
    errors["dropout"] = "The dropout strategy needs a dropout probability above 0; move the slider or pick another strategy."
    sb.error(errors["dropout"])

sb.subheader("Training")
sb.selectbox("Optimizer", OPTIMIZERS, key="train_optimizer", help="Adam adapts the step size per weight; "
             "momentum and plain SGD use the learning rate as it is.")
sb.number_input("Learning rate", 0.0, 10.0, step=0.0005, format="%.4f", key="train_lr",
                help="Step size of the optimizer; 0.001 suits Adam, 0.01-0.1 suits SGD.")
if float(ss["train_lr"]) <= 0:
    errors["lr"] = "The learning rate must be above 0 (0.001 is a good start for Adam)."
    sb.error(errors["lr"])
c1, c2 = sb.columns(2)
c1.number_input("Batch size", 1, 65536, step=16, key="train_batch_size", help="Examples per step.")
c2.number_input("Epochs", 1, 100000, step=5, key="train_epochs", help="Passes over the training set.")
c1.number_input("Seed", 0, 2**31 - 1, step=1, key="train_seed",
                help="Initialization, shuffling and random choices: the same seed gives the same initialization.")
c2.selectbox("Device", DEVICES, key="train_device",
             help="Where the workers train: auto picks a GPU when there is one." +
                  ("" if "cuda" in DEVICES else " No CUDA GPU is available here."))
with sb.expander("Advanced"):
    st.checkbox("Sparse output layer", key="train_sparse_output",
                help="Apply the strategy to the output layer too (it stays dense by default).")
    st.radio("Optimizer update", ["lazy", "dense"], key="train_update", horizontal=True,
             help="Lazy: weights that got no gradient, and their optimizer state, stay frozen (default). "
                  "Dense: every weight moves with its momentum.")
    st.number_input("Momentum", 0.0, 0.999, step=0.05, key="train_momentum", help="For the momentum optimizer.")
    st.number_input("Weight decay", 0.0, 1.0, step=0.0001, format="%.4f", key="train_weight_decay")
    st.number_input("Early-stopping patience (epochs, 0 = off)", 0, 100000, step=1, key="train_patience")
    st.number_input("Split seed", 0, 2**31 - 1, step=1, key="train_split_seed",
                    help="Which examples go to train, validation and test.")
ui_lecture.sidebar(lecture, info)

config = read_config()
_, problem = pagekit.validate(config)
if problem and not errors:
    errors["config"] = problem
ss["train_config"] = config

# the URL follows the widgets: a link reproduces this configuration
new_params = pagekit.config_to_query(config)
new_params.update(ui_lecture.query(lecture))
if ss.get("train_selected"):
    new_params[pagekit.RUN_PARAM] = str(ss["train_selected"])


def sync_url() -> None:
    if st.query_params.to_dict() != new_params:
        st.query_params.from_dict(new_params)
    ss["train_synced_params"] = dict(new_params)


sync_url()

# ------------------------------------------------------------------------------- the action

st.title("Train")
st.caption("Forward pass dense, backward pass sparse: pick a configuration on the left and press Start. "
           "The address bar always holds the configuration, seed included, so a link reproduces a run.")
for sentence in ss.pop("train_url_problems", []) or []:
    st.warning(sentence, icon=":material/link_off:")
ui_lecture.banner(lecture)

store = ui_common.store()
b1, b2, b3 = st.columns([1, 1, 4], vertical_alignment="center")
start = b1.button("Start", type="primary", key="train_start", icon=":material/play_arrow:",
                  disabled=bool(errors) or owner is None, use_container_width=True,
                  help="Queue a run with this configuration; a worker starts it within a second.")
if errors:
    b3.caption("Fix the problem shown in the sidebar to start a run.")
    if "config" in errors:
        st.error(errors["config"])
elif owner is None:
    b3.caption(ui_common.sign_in_hint("start a run"))
if start and not errors and owner is not None:
    try:
        if info.kind == "download":  # fetch it here, so an offline server says so at once
            from asymviz.data import load_dataset
            with st.spinner(f"Downloading {info.title} (once) ..."):
                load_dataset(config["dataset"], config["dataset_options"], split_seed=config["split_seed"])
        run_id = ui_lecture.start(dict(config), owner=owner)  # at the sidebar's pace, with twins if asked
    except Exception as err:
        from asymviz.errors import DataError
        ui_common.error(err, data_slot if isinstance(err, DataError) else None)
    else:
        ss["train_selected"] = run_id
        new_params[pagekit.RUN_PARAM] = str(run_id)
        sync_url()

selected = ss.get("train_selected")
run = None
if selected:
    try:
        run = store.get_run(int(selected))
    except Exception:
        st.warning(f"Run {selected} does not exist (it may have been deleted).")
        ss["train_selected"] = None

if run is not None and run["status"] in pagekit.LIVE:
    mine = owner is not None and run["owner"] == owner
    if b2.button("Stop", key="train_stop", icon=":material/stop:", disabled=not mine, use_container_width=True,
                 help="Stop this run after its current step." if mine else f"Only {run['owner']} can stop this run."):
        try:
            ui_common.runner().stop(run["id"], owner=owner)
        except Exception as err:
            ui_common.error(err)
        else:
            st.toast(f"Stopping run {run['id']} ...")
if not errors and owner is not None:
    b3.caption(f"Starts as **{owner}**. The run trains in the background; closing the tab does not stop it.")

# ------------------------------------------------------------------------------------ views

recent = store.list_runs(limit=30)
ids = [r["id"] for r in recent]
if run is not None and run["id"] not in ids:
    recent.insert(0, run)
    ids.insert(0, run["id"])
labels = {r["id"]: f"{pagekit.run_label(r)} · {r['owner']}" for r in recent}
if not ids:
    st.info("No runs yet. Press **Start** to train the configuration on the left.", icon=":material/info:")
    st.stop()
if run is None:
    st.info("Pick a run to watch, or press **Start**.", icon=":material/info:")
ss["train_run_pick"] = run["id"] if run is not None else None
p1, p2 = st.columns([4, 1], vertical_alignment="bottom")
p1.selectbox("Watch run", ids, key="train_run_pick", format_func=lambda i: labels.get(i, f"#{i}"),
             on_change=pick_run, placeholder="Choose a run ...")
if run is not None:
    p2.button("Load its config", key="train_load_config", on_click=load_run_config, args=(run["id"],),
              help="Copy this run's configuration into the sidebar (and the URL).", use_container_width=True)
if run is None:
    st.stop()


def live_view(run_id: int, owner: str, shown: str | None = None, lab: float | None = None) -> None:
    """The lecture panel (pace controls, the network as it learns) and everything about one run,
    from its LiveRun (asymviz.live): shared by every session that watches the run, read from the
    store at most twice per refresh interval, each figure built once per new data. As one
    fragment (run_every) while the run is live, started for the status `shown` and the lab's
    refresh `lab` of that moment: one timer, so each refresh is one run of the page's fragment
    (two fragments on the same interval would cost two runs, their start and finish messages)."""
    with ui_common.live_slot():  # a few sessions at a time (see there)
        reset = ui_lecture.run_panel(run_id, owner)  # Play / Pause / Step / Reset, the network
        draw_run(run_id, None if reset else shown, lab)  # no page rerun that would drop the click
    ui_lecture.reset_pressed(reset)  # outside the slot: it waits for the runs to stop


def outdated(run: dict, shown: str, lab: float) -> bool:
    """Whether the page should rerun to start the live view again: the run started or ended, or
    the instructor changed the lab's refresh."""
    return run["status"] != shown or ui_common.refresh_seconds() != lab


def draw_run(run_id: int, shown: str | None, lab: float | None) -> None:
    watch = ui_common.live_run(run_id)
    try:
        view = watch.refresh(store, max_age=min(0.5, ui_common.refresh_seconds() / 2))
    except RunNotFound:
        st.warning(f"Run {run_id} no longer exists.")
        return
    except Exception as err:  # the store is unreachable: one sentence, the next refresh tries again
        ui_common.error(err)
        return
    run = view.run
    if shown is not None and outdated(run, shown, lab):
        ui_common.restart_page()  # redraw the page once, with a new timer (or none once the run has ended)
    c = run["config"]
    preset = STRATEGIES.get(c["strategy"])
    st.progress(pagekit.progress_of(run), text=pagekit.status_line(run, time.time()))
    if shown is not None and lab is not None and lab > ui_common.chosen_refresh():
        st.caption(f"The server is busy, so this view refreshes every {lab:g} s for now.")
    if run["status"] == "queued" and not run.get("started_at"):  # nothing to draw yet: the line above is all
        return
    if run["status"] == "failed":
        st.error(run.get("error") or "The run failed.")
    last_step, last_epoch = view.last_step, view.last_epoch
    # Rows are horizontal containers rather than st.columns: every element is a message to each
    # watching browser every second, and a row of columns costs one more per column.
    m = st.container(horizontal=True, wrap=False)
    m.metric("Step", f"{last_step.get('step', 0):,}")
    m.metric("Epoch", f"{last_epoch.get('epoch', 0)} / {c['epochs']}")
    m.metric("Batch loss", f"{last_step['train/loss']:.4f}" if "train/loss" in last_step else "–")
    m.metric("Validation accuracy", f"{last_epoch['val/acc']:.1%}" if "val/acc" in last_epoch else "–")
    m.metric("Generalization gap", f"{last_epoch['gap']:+.1%}" if "gap" in last_epoch else "–",
             help="Train accuracy minus validation accuracy: above 0 the network fits the training set "
                  "better than unseen data.")
    row = st.container(horizontal=True, wrap=False)
    ui_common.chart(row, watch.chart("loss"), key="train_fig_loss")
    ui_common.chart(row, watch.chart("accuracy"), key="train_fig_acc")
    ui_common.chart(row, watch.chart("gap"), key="train_fig_gap")

    views = ["Backward time", "Gradient masks"]
    info = DATASETS.get(c["dataset"])
    if info is not None and info.is_2d:
        views.insert(0, "Decision boundary")
    if ss.get("train_view") not in views:
        ss["train_view"] = views[0]
    view_name = st.segmented_control("Detail", views, key="train_view", label_visibility="collapsed") or views[0]
    if view_name == "Decision boundary":
        chart, _ = watch.boundary_chart(store)
        left, right = st.columns([3, 2])
        ui_common.chart(left, chart, key="train_fig_boundary")
        right.markdown("Each region has the color of the class the network predicts there, paler where it is "
                       "unsure; dots are training points. It is redrawn after every epoch.")
    elif view_name == "Backward time":
        chart, ref = watch.timing_chart(store)
        ui_common.chart(st, chart, key="train_fig_timing")
        s = run.get("summary") or {}
        reference = ""
        if ref and s.get("backward_ms_mean") and (ref["summary"] or {}).get("backward_ms_mean"):
            speed = ref["summary"]["backward_ms_mean"] / s["backward_ms_mean"]
            reference = (f"Mean backward {s['backward_ms_mean']:.2f} ms against {ref['summary']['backward_ms_mean']:.2f} "
                         f"ms for symmetric run #{ref['id']}: {speed:.2f}x.\n\n")
        elif not ref and c["strategy"] != "symmetric":
            reference = ("No finished symmetric run with this configuration yet: start one (strategy Symmetric, "
                         "same seed) to get a timing reference here.\n\n")
        st.caption(reference + "Small networks are overhead-bound: top-k selection, indexing and Python overhead can "
                   "cost more than the multiplications a sparse backward saves, so do not expect speed below a few "
                   "hundred neurons per layer. The Backward timing page measures where sparsity starts to pay.")
    else:
        hidden = list(c["hidden"])
        n_layers = len(hidden) + (1 if c.get("sparse_output") else 0)
        if preset is None or not preset.neuron_sparse:
            st.info("This strategy's backward keeps every neuron, so there is no gradient mask to show.")
            return
        if n_layers > 1:
            if ss.get("train_mask_layer") not in range(n_layers):
                ss["train_mask_layer"] = 0
            layer = st.segmented_control("Layer", list(range(n_layers)), key="train_mask_layer",
                                         format_func=lambda i: f"layer {i + 1}") or 0
        else:
            layer = 0
        charts = watch.mask_charts(store, layer, hidden[layer] if layer < len(hidden) else 0,
                                   lambda n: keep_count(n, c["sparsity"]), with_conn=bool(preset.connection))
        left, right = st.columns(2)
        ui_common.chart(left, charts["heatmap"], key="train_fig_masks")
        ui_common.chart(right, charts["selection"], key="train_fig_selection")
        if preset.connection:
            ui_common.chart(st, charts["conn"], key="train_fig_conn")
            st.caption("Orange: weights of kept neurons that received gradient. " + (
                "Excessive keeps, in each kept row, the connections with the largest |W|." if preset.connection == "weight"
                else "Refined keeps whole input columns: the units most active over the batch."))
        st.caption(f"Masks are recorded at every step up to {MASK_DENSE_STEPS} and then sampled (about "
                   f"{MASK_MAX_RECORDS:,} per layer per run); "
                   f"{charts['records']} recorded so far. The dashed line is what choosing k neurons at random would give.")


with ui_common.page_run():  # a page being opened: its live parts go before other sessions' refreshes
    try:
        status = ui_common.live_run(run["id"]).refresh(store, max_age=0).run["status"]  # as fresh as `run`
    except Exception:  # deleted meanwhile, or the store failed: the view says which
        status = run["status"]
    if status in pagekit.LIVE:  # refreshed on a timer until the run ends; then drawn once, no timer
        every = ui_common.refresh_for(status)
        st.fragment(live_view, run_every=every)(run["id"], owner, status, ui_common.refresh_seconds())
    else:
        live_view(run["id"], owner)
    ui_lecture.twins_panel(run)  # the run and its symmetric and dropout twins, overlaid
