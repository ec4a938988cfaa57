"""Named errors of asymviz, and the one sentence an error is shown as (`error_sentence`).

Every error a user can cause carries one sentence saying what was wrong and what is
accepted; the CLI prints it and exits 2, the dashboard shows it with `st.error`.
"""


class AsymvizError(ValueError):
    """Base class: bad input a user can fix. `str(err)` is the sentence to show."""


class ConfigError(AsymvizError):
    """A configuration value (architecture, sparsity, strategy name, ...) is invalid."""


class DataError(AsymvizError):
    """A dataset cannot be loaded: unknown name, unreadable CSV, failed download."""


def error_sentence(exc: BaseException) -> str:
    """The one line to show or store for an error: an AsymvizError's own sentence, else
    '<Type>: <message>' (a run that failed, a store that could not be written)."""
    if isinstance(exc, AsymvizError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())  # one line
