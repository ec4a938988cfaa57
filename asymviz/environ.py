"""The lab's environment variables, read by the rules of `asymviz.values` (a whole number, a
number in a range, yes or no, a name from a list), so a typo in a lab's settings is one sentence
(`asymviz.errors.FieldError`) naming the variable, never a silent default.

    env_int("ASYMVIZ_WORKERS", 4)              # unset or blank: 4; 'four' is refused
    env_flag("ASYMVIZ_EXTERNAL_WORKERS")       # yes or no (1/0, true/false, on/off)

At the bottom of the library with `values` and `errors`, so `lab` can read them too;
`asymviz.config` re-exports them with the rest of the vocabulary.
"""

from __future__ import annotations

import math
import os

from asymviz.errors import FieldError
from asymviz.values import boolean, integer, number


def env_int(variable: str, default: int, lo: int = 0, hi: int | None = None) -> int:
    """$variable as a whole number from lo (to hi); unset or blank: default."""
    text = os.environ.get(variable, "").strip()
    return default if not text else integer(text, variable, lo, hi)


def env_number(variable: str, default: float, lo: float = 0.0, hi: float = math.inf) -> float:
    """$variable as a finite number from lo (to hi); unset or blank: default."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    return number(text, variable, lo, hi, right_open=math.isinf(hi))


def env_choice(variable: str, default: str, valid: tuple[str, ...]) -> str:
    """$variable as one of `valid` (case folded); unset or blank: default."""
    text = os.environ.get(variable, "").strip().lower()
    if text and text not in valid:
        raise FieldError(f"Unknown value of {variable} {text!r}; choose one of: {', '.join(valid)}.", variable,
                         text, "one of " + ", ".join(valid))
    return text or default


def env_flag(variable: str, default: bool = False) -> bool:
    """$variable as yes or no; unset or blank: default."""
    text = os.environ.get(variable, "").strip()
    return default if not text else boolean(text, variable)
