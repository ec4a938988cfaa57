"""One vocabulary for input: a parser for each kind of value a user gives (a number in a range, a
whole number, a sparsity, a name from a list, yes or no, hidden widths, lists of them, environment
variables), each with its one sentence, so the same value gets the same answer wherever it is read.

    sparsity("0.9")                      # 0.9; FieldError "sparsity must be in [0, 1) (...), got '1'."
    sparsities("0.5 0.9")                # [0.5, 0.9]: a list splits on commas, semicolons and spaces
    TRAIN_FIELDS["lr"].read("3e-3")      # one TrainConfig field from text: 0.003
    TRAIN_FIELDS["lr"].help              # 'learning rate; a number in (0, 10] (default 0.001)'
    env_int("ASYMVIZ_WORKERS", 4)        # an environment variable, by the same rules

A refused value raises `asymviz.errors.FieldError`: one sentence saying what was wrong, and its
`accepts` says what would be right. The rules are those of the checks every run and experiment
pass: one value as `TrainConfig.validated` takes it (both read with `asymviz.values`), a list as
the experiment spec (`asymviz.experiment.spec`) takes its lists, with the same sentences;
tests/test_config_vocabulary.py holds every reader to them.

`TRAIN_FIELDS` describes each field of `asymviz.train.TrainConfig`: its type and default come from
the dataclass, its help from the field's comment there (or `HELP` below where the comment is for
programmers), its range from `TRAIN_RULES`. The CLI's `train` / `submit` flags and the Train
page's URL parser (`asymviz.pagekit.config_from_query`) are generated from it; `bench` and the
Backward timing page read their lists with `sparsities` / `integers` / `names`.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import re
import tokenize
from dataclasses import dataclass
from typing import Any, Callable

from asymviz.errors import FieldError
from asymviz.model import ACTIVATIONS, MAX_HIDDEN_LAYERS, MAX_WIDTH, parse_architecture
from asymviz.optim import OPTIMIZERS, UPDATES
from asymviz.strategies import GRANULARITIES, SELECTIONS, STRATEGIES
from asymviz.train import DEVICES, TrainConfig
from asymviz.environ import env_choice, env_flag, env_int, env_number  # noqa: F401 (re-exported)
from asymviz.values import _interval, boolean, dataset_options, integer, number, sparsity  # noqa: F401 (re-exported)

AUTO = ("", "auto", "none")  # a dropout given as text: the strategy's default


# ------------------------------------------------------------------------------ one value
#
# number, integer, sparsity, boolean and dataset_options live in asymviz.values (below the
# numerics, which read values with them too), the environment readers in asymviz.environ; the
# readers here build on them.


def choice(value: Any, name: str, valid: tuple[str, ...], kind: str | None = None) -> str:
    """One of `valid`, exactly (no case folding); `kind` words the field in the sentence."""
    if not isinstance(value, str) or value not in valid:
        raise FieldError(f"Unknown {kind or name} {value!r}; choose one of: {', '.join(valid)}.", name, value,
                         "one of " + ", ".join(valid))
    return value


WIDTHS_ACCEPTS = (f"widths like 256,256 (at most {MAX_HIDDEN_LAYERS} hidden layers of 1 to {MAX_WIDTH} neurons), "
                  "or a full architecture like 64-256-256-10")


def widths(value: Any, name: str = "hidden") -> list[int]:
    """Hidden widths: a list of ints, '256,256', or a full 'in-256-256-out' (its hidden part)."""
    try:
        return parse_architecture(value)
    except ValueError as err:  # ConfigError, the one sentence of asymviz.model
        raise FieldError(str(err), name, value, WIDTHS_ACCEPTS) from None


DROPOUT_ACCEPTS = "a number in [0, 1), or auto for the strategy's own (0.5 for dropout, else 0)"


def dropout(value: Any, name: str = "dropout") -> float | None:
    """A forward dropout p in [0, 1), or None (text: auto) for the strategy's default."""
    if value is None or isinstance(value, str) and value.strip().lower() in AUTO:
        return None
    try:
        return number(value, name, 0.0, 1.0, right_open=True)
    except FieldError as err:
        raise FieldError(str(err), name, value, DROPOUT_ACCEPTS) from None


def dataset_name(value: Any, name: str = "dataset") -> str:
    """A dataset name: any non-empty text here (the loader says which names exist)."""
    if not isinstance(value, str) or not value:
        raise FieldError(f"dataset must be a dataset name, got {value!r}.", name, value, "a dataset name")
    return value


def shown(value: Any, n: int = 40) -> str:
    """A user's value for a sentence rendered as Markdown (a page's warning): cut short, as a
    code span, so no link or formatting in it renders (backticks and line breaks replaced)."""
    text = str(value)
    text = text if len(text) <= n else text[: n - 3] + "..."
    return "`" + re.sub(r"[`\r\n]", "?", text) + "`"


# ------------------------------------------------------------------------------- lists
#
# The experiment spec's rules: text splits on commas, semicolons and spaces (a list is taken as
# it is); every item is a finite number (numbers lists), then checked; an empty list is refused
# unless the field allows it.


def split(value: Any) -> list:
    """A list from text ('0.5, 0.9', '0.5;0.9', '0.5 0.9'), a list or tuple, one value, or None."""
    if isinstance(value, str):
        return [v.strip() for v in value.replace(";", ",").replace(" ", ",").split(",") if v.strip()]
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _finite(value: Any, what: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise FieldError(f"{what} must hold numbers, got {value!r}.", what, value, "numbers") from None
    if not math.isfinite(x):
        raise FieldError(f"{what} must hold finite numbers, got {value!r}.", what, value, "finite numbers")
    return x


def _listed(items: list, what: str, empty_ok: bool, at_most: int | None) -> list:
    if not items and not empty_ok:
        raise FieldError(f"List at least one value in {what}.", what, items, "at least one value")
    if at_most is not None and len(items) > at_most:
        raise FieldError(f"List at most {at_most} values in {what} (got {len(items)}).", what, items,
                         f"at most {at_most} values")
    return items


def numbers(value: Any, what: str, check: Callable[[float], float], canonical: bool = True,
            empty_ok: bool = False, at_most: int | None = None) -> list[float]:
    """Finite numbers, each passed through `check`; sorted without repeats when canonical."""
    items = [check(_finite(v, what)) for v in split(value)]
    items = sorted(set(items)) if canonical else items
    return _listed(items, what, empty_ok, at_most)


def sparsities(value: Any, what: str = "sparsities", canonical: bool = True, empty_ok: bool = False,
               at_most: int | None = None) -> list[float]:
    """Sparsities, each in [0, 1): '0, 0.5 0.9' -> [0.0, 0.5, 0.9]."""
    return numbers(value, what, lambda x: sparsity(x, "sparsity"), canonical, empty_ok, at_most)


def integers(value: Any, what: str, lo: int, hi: int | None = None, canonical: bool = True,
             empty_ok: bool = False) -> list[int]:
    """Whole numbers from lo to hi (sizes, widths): '128, 256' -> [128, 256]."""
    items = [integer(v, what, lo, hi) for v in split(value)]
    return _listed(sorted(set(items)) if canonical else items, what, empty_ok, None)


def names(value: Any, what: str, valid: tuple[str, ...], singular: str, empty_ok: bool = False) -> list[str]:
    """Names from `valid`, in the order given, without repeats: 'neuron, refined'."""
    items = [str(v).strip() for v in split(value) if str(v).strip()]
    if not items and not empty_ok:
        raise FieldError(f"List at least one of the {what}: {', '.join(valid)}.", what, value,
                         "one or more of " + ", ".join(valid))
    for item in items:
        if item not in valid:
            raise FieldError(f"Unknown {singular} {item!r} in {what}; choose among: {', '.join(valid)}.", what,
                             value, "one or more of " + ", ".join(valid))
    return list(dict.fromkeys(items))


# ------------------------------------------------------------------------------ the dashboard


def sparsity_problem(value: Any, what: str = "Sparsity", unit: str = "neuron") -> str | None:
    """One sentence if a slider's sparsity is refused (1 would leave nothing), else None."""
    try:
        sparsity(value)
        return None
    except FieldError:
        pass
    try:
        s = float(value)
    except (TypeError, ValueError):
        s = math.nan
    if s >= 1.0:
        return (f"{what} {s:.2f} would leave no {unit} in the backward pass; choose a value below 1 "
                f"(0.99 keeps 1 % of each layer's {unit}s, at least one).")
    return f"{what} must be a number from 0 to 0.99, got {value!r}."


# ------------------------------------------------------------------------------ TrainConfig


@dataclass(frozen=True)
class Rule:
    """How one field's value is read: `check(value, name)`, and what it accepts in words
    (`in_help`: whether a help text should say so, or its description already does)."""

    check: Callable[[Any, str], Any]
    accepts: str
    in_help: bool = True


def _number_rule(lo, hi, left_open=False, right_open=False) -> Rule:
    return Rule(lambda v, n: number(v, n, lo, hi, left_open, right_open),
                f"a number in {_interval(lo, hi, left_open, right_open)}")


def _integer_rule(lo, hi) -> Rule:
    return Rule(lambda v, n: integer(v, n, lo, hi), f"a whole number from {lo} to {hi}")


def _choice_rule(valid, kind=None) -> Rule:
    valid = tuple(valid)
    return Rule(lambda v, n: choice(v, n, valid, kind), "one of " + ", ".join(valid))


# The range of each TrainConfig field: the checks of TrainConfig.validated, declared once
# (tests/test_config_vocabulary.py holds the two to the same answers).
TRAIN_RULES: dict[str, Rule] = {
    "dataset": Rule(lambda v, n: dataset_name(v, n), "a dataset name", in_help=False),
    "dataset_options": Rule(lambda v, n: dataset_options(v, n), "a JSON object of loader options", in_help=False),
    "hidden": Rule(lambda v, n: widths(v, n), WIDTHS_ACCEPTS, in_help=False),
    "activation": _choice_rule(ACTIVATIONS),
    "strategy": _choice_rule(STRATEGIES, "strategy"),
    "sparsity": Rule(lambda v, n: sparsity(v, n), "a number in [0, 1)"),
    "conn_sparsity": Rule(lambda v, n: sparsity(v, n), "a number in [0, 1)"),
    "selection": _choice_rule(SELECTIONS),
    "granularity": _choice_rule(GRANULARITIES),
    "dropout": Rule(lambda v, n: dropout(v, n), DROPOUT_ACCEPTS),
    "sparse_output": Rule(lambda v, n: boolean(v, n), "yes or no", in_help=False),
    "optimizer": _choice_rule(OPTIMIZERS),
    "lr": _number_rule(0.0, 10.0, left_open=True),
    "momentum": _number_rule(0.0, 1.0, right_open=True),
    "weight_decay": _number_rule(0.0, 1.0),
    "update": _choice_rule(UPDATES, "optimizer update"),
    "batch_size": _integer_rule(1, 65536),
    "epochs": _integer_rule(1, 100000),
    "patience": _integer_rule(0, 100000),
    "seed": _integer_rule(0, 2**31 - 1),
    "split_seed": _integer_rule(0, 2**31 - 1),
    "device": _choice_rule(DEVICES),
}

# Help where TrainConfig's comment is missing or written for programmers.
HELP = {
    "dataset": "dataset name (see `python -m asymviz datasets`)",
    "dataset_options": "dataset loader options (n_samples, noise, ...)",
    "hidden": "hidden widths '256,256', or a full architecture '64-256-256-10'",
    "dropout": "forward dropout p",
    "lr": "learning rate",
    "momentum": "momentum of the momentum optimizer",
    "weight_decay": "L2 weight decay",
    "batch_size": "mini-batch size",
    "epochs": "training epochs",
    "seed": "seed of the initialization, shuffling, dropout and random selection",
    "split_seed": "seed of the dataset's train/validation/test split",
}


def field_comments(cls: type) -> dict[str, str]:
    """The comment after each field of a dataclass's source ({} when the source is not at hand)."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for line in lines:
        head = re.match(r"\s+(\w+)\s*:", line)
        if not head or head.group(1) not in names:
            continue
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
        except (tokenize.TokenError, SyntaxError):
            continue
        comments = [t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT]
        if comments and comments[0]:
            out[head.group(1)] = comments[0]
    return out


@dataclass(frozen=True)
class Field:
    """One TrainConfig field: name, type and default (from the dataclass), help and rule."""

    name: str
    type: Any
    default: Any
    description: str
    rule: Rule

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def accepts(self) -> str:
        return self.rule.accepts

    @property
    def help(self) -> str:
        """'learning rate; a number in (0, 10] (default 0.001)': the description, what the field
        accepts (unless the description lists it) and the default."""
        text = self.description
        listed = self.accepts.removeprefix("one of ").split(", ")  # a choice's names
        if self.rule.in_help and not (self.accepts.startswith("one of ") and all(v in text for v in listed)):
            text += f"; {self.accepts}"
        default = self.default
        if isinstance(default, bool):
            default = "yes" if default else "no"
        elif default is None:
            default = "auto"
        elif isinstance(default, list):
            default = ",".join(map(str, default))
        elif isinstance(default, float):
            default = f"{default:g}"
        return f"{text} (default {default})" if default not in ({}, "") else text

    def read(self, value: Any) -> Any:
        """The field's value from text (a flag, a query parameter) or from a Python value (JSON);
        FieldError with one sentence if refused. Blanks around a number are allowed, around a
        name they are not (as TrainConfig.validated and the experiment spec take them)."""
        return self.rule.check(value, self.name)


def _train_fields() -> dict[str, Field]:
    defaults, comments = TrainConfig().to_dict(), field_comments(TrainConfig)
    fields = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in TRAIN_RULES:
            raise RuntimeError(f"asymviz.config declares no rule for TrainConfig.{f.name}; add one to TRAIN_RULES.")
        description = f.metadata.get("help") or HELP.get(f.name) or comments.get(f.name) or f.name.replace("_", " ")
        fields[f.name] = Field(f.name, f.type, defaults[f.name], description, TRAIN_RULES[f.name])
    return fields


TRAIN_FIELDS: dict[str, Field] = _train_fields()
