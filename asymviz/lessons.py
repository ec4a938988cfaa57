"""Built-in lessons, and the link flags that shape the Train page for a class.

    lesson = LESSONS["overfitting"]
    query("overfitting", part=1)       # the Train page's query params: config + flags
    flags, problems = parse_flags(st.query_params.to_dict())

A lesson makes one point, in one or more parts; each part is a run configuration (over the
TrainConfig defaults) with a pace and, where the point is a comparison, twins (asymviz.twins).
Each is a URL of the Train page: `?lesson=overfitting` opens part 1 with its configuration,
`&part=2` the second part.

Link flags, for any Train link (a lesson sets them too):
  hide=dataset,optimizer,...   hides those controls (names: CONTROLS)
  lock=dataset,strategy,...    locks them at the link's values: the page shows them but does
                               not let them change, and a run always starts with them
  pace=5                       steps per second for the runs started (0 or full: full speed)
  twins=1, twins_p=0.5         start runs with their symmetric and dropout twins
Everything a link carries is checked here: an unknown control or lesson, or a value out of
range, is one sentence and is ignored; no flag names anything but a control of this list.

The lesson an instructor pins as the lab's start page is stored in the store's `settings` table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from asymviz import pace
from asymviz import twins as twins_module
from asymviz.errors import ConfigError

# control name -> the config fields it sets ("pace" and "twins" are run options, not config)
CONTROLS: dict[str, tuple[str, ...]] = {
    "dataset": ("dataset", "dataset_options"),
    "network": ("hidden",),
    "activation": ("activation",),
    "strategy": ("strategy",),
    "sparsity": ("sparsity",),
    "conn_sparsity": ("conn_sparsity",),
    "selection": ("selection",),
    "granularity": ("granularity",),
    "dropout": ("dropout",),
    "optimizer": ("optimizer",),
    "lr": ("lr",),
    "batch_size": ("batch_size",),
    "epochs": ("epochs",),
    "seed": ("seed",),
    "device": ("device",),
    "advanced": ("sparse_output", "update", "momentum", "weight_decay", "patience", "split_seed"),
    "pace": (),
    "twins": (),
}
FLAGS = ("lesson", "part", "hide", "lock", "pace", "twins", "twins_p")
MAX_FLAG_CHARS = 300
START_LESSON = "start_lesson"  # the settings key of the pinned lesson


@dataclass(frozen=True)
class Part:
    name: str
    text: str  # what to do and what to look at (markdown)
    config: dict  # TrainConfig fields over the defaults
    speed: float = 0.0  # steps per second, 0: full speed
    twins: bool = False
    twins_p: float = twins_module.DEFAULT_P


@dataclass(frozen=True)
class Lesson:
    slug: str
    title: str
    point: str  # the one point it makes
    parts: tuple[Part, ...]
    hide: tuple[str, ...] = ()
    lock: tuple[str, ...] = ()


_MOONS = {"dataset": "moons", "hidden": [8, 8], "activation": "relu", "sparsity": 0.5, "epochs": 30,
          "batch_size": 32, "lr": 0.01, "seed": 0}

LESSONS: dict[str, Lesson] = {lesson.slug: lesson for lesson in (
    Lesson(
        "overfitting", "Overfitting, and how asymmetric training and dropout shrink it",
        "A network that memorizes its training set does worse on new data; a sparse backward and "
        "dropout both narrow that gap.",
        (Part("The three of them", "Press **Start**: the run and its two twins (plain symmetric training and "
              "dropout) train on MNIST-1D with the same seed. Watch the **generalization gap** (training "
              "minus validation accuracy) below: symmetric training memorizes the 3,500 training signals and "
              "its gap grows; see how far the sparse backward and dropout keep theirs down, and what each "
              "costs in validation accuracy. In this lab's own experiment (RESULTS.md, 10 seeds), at the "
              "settings validation chose, the sparse backward did not shrink the gap on MNIST-1D (it came out "
              "a little wider than symmetric training's), while dropout narrowed it and kept the most "
              "accuracy: check it here.",
              {"dataset": "mnist1d", "hidden": [256, 256], "strategy": "neuron", "sparsity": 0.5, "epochs": 30,
               "batch_size": 64, "lr": 0.001, "seed": 0}, speed=0.0, twins=True, twins_p=0.5),),
        hide=("device", "advanced", "granularity", "conn_sparsity", "activation"), lock=("dataset",)),
    Lesson(
        "chosen-neurons", "Which neurons get chosen",
        "Top-k keeps the neurons with the largest gradient, so some are chosen again and again; "
        "random keeps as many, spread evenly.",
        (Part("Top-k", "Press **Start**, then **Pause** and **Step** through a few batches: in the picture the "
              "orange neurons got gradient at this step (k = 4 of 8 per layer). Hover a neuron to see in how "
              "many steps it was kept so far, and open **Gradient masks** below for the whole history.",
              {**_MOONS, "strategy": "neuron", "selection": "topk"}, speed=5.0),
         Part("Random", "The same network, the same number of neurons, chosen at random: hover the neurons "
              "again. Their counts even out, and the boundary forms differently.",
              {**_MOONS, "strategy": "neuron", "selection": "random"}, speed=5.0)),
        hide=("dataset", "network", "activation", "optimizer", "lr", "batch_size", "epochs", "device", "advanced",
              "granularity", "conn_sparsity", "dropout", "twins"),
        lock=("dataset", "network", "strategy")),
    Lesson(
        "sparse-speed", "When is a sparse backward faster",
        "Skipping neurons saves multiplications, but choosing them costs time too: on small layers the "
        "choosing wins, on wide ones the saving does.",
        (Part("Narrow: 64 neurons", "Press **Start**: the run and its twins train a 64-64 network. In **backward "
              "time** below, the sparse backward is no faster than the dense ones, usually slower: at this width "
              "the fixed costs (choosing the top k, indexing) outweigh the saved work.",
              {"dataset": "digits", "hidden": [64, 64], "strategy": "neuron", "sparsity": 0.9, "epochs": 10,
               "batch_size": 128, "seed": 0}, twins=True),
         Part("Wide: 2048 neurons", "Now 2048-2048, keeping 5 % of the neurons: the dense backward multiplies "
              "2048 x 2048 matrices and the sparse one about a twentieth of them, so its backward time drops well "
              "below the twins'. The **Backward timing** page measures this for any width.",
              {"dataset": "digits", "hidden": [2048, 2048], "strategy": "neuron", "sparsity": 0.95, "epochs": 3,
               "batch_size": 128, "seed": 0}, twins=True)),
        hide=("dataset", "network", "activation", "device", "advanced", "granularity", "conn_sparsity", "selection"),
        lock=("dataset", "network")),
    Lesson(
        "connections", "Connections too: excessive and refined",
        "Besides neurons, the backward can skip connections: excessive by the smallest weights, refined by "
        "the least active inputs.",
        (Part("Excessive", "Press **Start** and **Pause**: of each kept neuron only half of its incoming "
              "connections glow orange, those with the largest weights (the thickest lines), so each neuron "
              "picks its own.", {**_MOONS, "strategy": "excessive", "conn_sparsity": 0.5}, speed=5.0),
         Part("Refined", "Refined keeps whole inputs instead: the glowing connections all come from the same "
              "few neurons of the layer before, the ones most active over the batch (a dead ReLU never is).",
              {**_MOONS, "strategy": "refined", "conn_sparsity": 0.5}, speed=5.0)),
        hide=("dataset", "network", "activation", "optimizer", "lr", "batch_size", "epochs", "device", "advanced",
              "granularity", "selection", "dropout", "twins"),
        lock=("dataset", "network", "strategy")),
)}


def part_of(slug: str, part: int = 1) -> Part:
    """A lesson's part, numbered from 1."""
    return LESSONS[slug].parts[part - 1]


def query(slug: str, part: int = 1) -> dict[str, str]:
    """The Train page's query params for a lesson's part: its whole config and its flags."""
    from asymviz import pagekit

    lesson, p = LESSONS[slug], part_of(slug, part)
    params = pagekit.config_to_query(pagekit.full_config(p.config))
    params.update(lesson=slug, part=str(part), pace=f"{p.speed:g}", twins="1" if p.twins else "0",
                  twins_p=f"{p.twins_p:g}")
    if lesson.hide:
        params["hide"] = ",".join(lesson.hide)
    if lesson.lock:
        params["lock"] = ",".join(lesson.lock)
    return params


# ------------------------------------------------------------------------------------- link flags

@dataclass
class Flags:
    """What a link's flags ask of the Train page (None: the page's own default)."""

    lesson: str | None = None
    part: int = 1
    hide: frozenset = field(default_factory=frozenset)
    lock: frozenset = field(default_factory=frozenset)
    speed: float | None = None
    twins: bool | None = None
    twins_p: float | None = None

    def locked_fields(self) -> set[str]:
        return {f for name in self.lock for f in CONTROLS[name]}

    def to_query(self) -> dict[str, str]:
        """The flags as query params (only those set)."""
        out: dict[str, str] = {}
        if self.lesson:
            out.update(lesson=self.lesson, part=str(self.part))
        if self.hide:
            out["hide"] = ",".join(sorted(self.hide))
        if self.lock:
            out["lock"] = ",".join(sorted(self.lock))
        if self.speed is not None:
            out["pace"] = f"{self.speed:g}"
        if self.twins is not None:
            out["twins"] = "1" if self.twins else "0"
        if self.twins_p is not None:
            out["twins_p"] = f"{self.twins_p:g}"
        return out


def has_flags(params: Mapping[str, Any]) -> bool:
    return any(name in params for name in FLAGS)


def _text(params: Mapping[str, Any], name: str) -> str | None:
    raw = params.get(name)
    if isinstance(raw, (list, tuple)):
        raw = raw[-1] if raw else None
    return None if raw is None else str(raw).strip()


def _shown(text: str) -> str:
    """A user's value for a sentence: cut short, as a code span (markdown renders no link or
    formatting inside one; backticks and line breaks are replaced)."""
    text = text if len(text) <= 24 else text[:21] + "..."
    return "`" + re.sub(r"[`\r\n]", "?", text) + "`"


def _names(params, name: str, problems: list[str]) -> frozenset:
    text = _text(params, name)
    if not text:
        return frozenset()
    if len(text) > MAX_FLAG_CHARS:
        problems.append(f"The link's {name} flag is too long (at most {MAX_FLAG_CHARS} characters), so it is ignored.")
        return frozenset()
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTROLS]
    if unknown:
        problems.append(f"The link's {name} flag names {', '.join(_shown(n) for n in unknown[:3])}"
                        f"{' and more' if len(unknown) > 3 else ''}, which "
                        f"{'is not a control' if len(unknown) == 1 else 'are not controls'} here, so "
                        f"{'it is' if len(unknown) == 1 else 'they are'} ignored; the controls are "
                        f"{', '.join(CONTROLS)}.")
    return frozenset(n for n in names if n in CONTROLS)


def parse_flags(params: Mapping[str, Any]) -> tuple[Flags, list[str]]:
    """(the flags of a link, one sentence per flag that was not understood and is ignored)."""
    problems: list[str] = []
    flags = Flags(hide=_names(params, "hide", problems), lock=_names(params, "lock", problems))
    slug = _text(params, "lesson")
    if slug:
        if slug in LESSONS:
            flags.lesson = slug
            part = _text(params, "part") or "1"
            count = len(LESSONS[slug].parts)
            if part.isdigit() and 1 <= int(part) <= count:
                flags.part = int(part)
            else:
                problems.append(f"The lesson {slug!r} has parts 1 to {count}, not {_shown(part)}, so part 1 is shown.")
        else:
            problems.append(f"There is no lesson {_shown(slug)}; the lessons are {', '.join(LESSONS)}.")
    speed = _text(params, "pace")
    if speed:
        try:
            flags.speed = 0.0 if speed.lower() == "full" else pace.check_speed(speed)
        except ConfigError:
            problems.append(f"The link's pace {_shown(speed)} is not a number of steps per second from 0 to "
                            f"{pace.MAX_SPEED:g} (0 or full: full speed), so the page's default is used.")
    value = _text(params, "twins")
    if value:
        if value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            flags.twins = value.lower() in ("1", "true", "yes", "on")
        else:
            problems.append(f"The link's twins flag must be 1 or 0, not {_shown(value)}, so it is ignored.")
    p = _text(params, "twins_p")
    if p:
        try:
            flags.twins_p = twins_module.check_p(p)
        except ConfigError:
            problems.append(f"The link's twins_p {_shown(p)} is not a dropout p between 0 and 1 (like 0.5), so "
                            "the page's default is used.")
    return flags, problems


def lesson_flags(slug: str, part: int = 1) -> Flags:
    """The flags a lesson's part sets."""
    flags, _ = parse_flags(query(slug, part))
    return flags


# ------------------------------------------------------------------------------ the start page

def pinned(store) -> str | None:
    """The lesson pinned as the lab's start page (None: Home)."""
    rows = store._query("SELECT value FROM settings WHERE key = ?", (START_LESSON,))
    if not rows:
        return None
    try:
        slug = json.loads(rows[0]["value"])
    except ValueError:
        return None
    return slug if slug in LESSONS else None


def pin(store, slug: str | None) -> None:
    """Pin a lesson as the start page (None: Home again); ConfigError for an unknown one."""
    if slug is not None and slug not in LESSONS:
        raise ConfigError(f"There is no lesson {_shown(str(slug))}; the lessons are {', '.join(LESSONS)}.")
    with store._transaction() as db:
        if slug is None:
            db.execute("DELETE FROM settings WHERE key = ?", (START_LESSON,))
        else:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (START_LESSON, json.dumps(slug)))

