"""The value parsers at the bottom of the library: a number in a range, a whole number, a sparsity,
yes or no, loader options. Each refuses with one sentence (`asymviz.errors.FieldError`, a
ConfigError) whose `accepts` says what would be right.

They sit below everything that reads a value, so `TrainConfig.validated`, the layers'
`check_sparsity`, the experiment spec and `asymviz.config` (which re-exports them with the
readers built on them: lists, hidden widths, environment variables, `TRAIN_FIELDS`) all give the
same value the same answer.

    integer("64", "batch_size", 1, 65536)   # 64; '64.0', '+64', '1e3', '6_4', '²' are refused
    sparsity("0.9")                         # 0.9; True, 'nan' and 1 are refused
    boolean("no", "sparse_output")          # False
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from asymviz.errors import FieldError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _interval(lo: float, hi: float, left_open: bool, right_open: bool) -> str:
    return f"{'(' if left_open else '['}{lo:g}, {hi:g}{')' if right_open else ']'}"


def number(value: Any, name: str, lo: float, hi: float, left_open: bool = False,
           right_open: bool = False) -> float:
    """A number in the interval (hi = inf: no upper end, infinity refused); NaN, booleans and text
    that is no number are refused."""
    within = f"in {_interval(lo, hi, left_open, right_open)}" if math.isfinite(hi) else f"of {lo:g} or more"
    accepts = f"a number {within}"
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise FieldError(f"{name} must be a number, got {value!r}.", name, value, accepts) from None
    if math.isnan(x) or not ((x > lo if left_open else x >= lo) and (x < hi if right_open else x <= hi)):
        raise FieldError(f"{name} must be {within if math.isfinite(hi) else accepts}, got {value!r}.",
                         name, value, accepts)
    return x


def integer(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    """A whole number from lo to hi (no upper end when hi is None): an int, a float without a
    fraction, or text of digits with an optional minus sign ('7', ' -3 '; not '7.0', '+7', '1e3')."""
    accepts = f"a whole number from {lo} to {hi}" if hi is not None else f"a whole number of {lo} or more"
    x = None
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        try:
            x = int(value)
        except ValueError:  # more digits than int() reads (sys.get_int_max_str_digits)
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        x = value
    elif isinstance(value, float) and value.is_integer():
        x = int(value)
    if x is None:
        raise FieldError(f"{name} must be a whole number, got {value!r}.", name, value, accepts)
    if x < lo or hi is not None and x > hi:
        limits = f"between {lo} and {hi}" if hi is not None else f"a whole number of {lo} or more"
        raise FieldError(f"{name} must be {limits}, got {x}.", name, value, accepts)
    return x


def sparsity(value: Any, name: str = "sparsity") -> float:
    """A sparsity s in [0, 1): 0 keeps every neuron, 0.9 keeps 10 % (at least one)."""
    accepts = "a number in [0, 1)"
    try:
        if isinstance(value, bool):
            raise TypeError
        s = float(value)
    except (TypeError, ValueError):
        raise FieldError(f"{name} must be a number in [0, 1), got {value!r}.", name, value, accepts) from None
    if not 0.0 <= s < 1.0:  # NaN too
        raise FieldError(f"{name} must be in [0, 1) (0 keeps every neuron, 0.9 keeps 10 %), got {value!r}.",
                         name, value, accepts)
    return s


def boolean(value: Any, name: str) -> bool:
    """yes | no: a bool, or 1/true/yes/on, 0/false/no/off in any case."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise FieldError(f"{name} must be yes or no, got {value!r}.", name, value, "yes or no (1 or 0)")


def dataset_options(value: Any, name: str = "dataset_options") -> dict:
    """Loader options: a dict, or its JSON text ('' and None: none)."""
    accepts = 'a JSON object of loader options, like {"noise": 0.3}'
    if value is None or value == "":
        return {}
    options = value
    if isinstance(value, str):
        try:
            options = json.loads(value)
        except (ValueError, RecursionError):  # not JSON; nested too deep ('[' * 100000)
            options = None
    if not isinstance(options, dict):
        raise FieldError(f"{name} must be {accepts}, got {_cut(value)!r}.", name, value, accepts)
    return dict(options)


def _cut(value: Any, n: int = 80) -> Any:
    return value[:n] + "..." if isinstance(value, str) and len(value) > n else value
