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


class FieldError(ConfigError):
    """One value of one field is refused (asymviz.config's parsers raise it).

    `str(err)` is the sentence; `field` names the field, `value` is what was given and `accepts`
    says what the field takes ("a number in [0, 1)"), so a context that words its own sentence
    (a link's warning, which falls back to the default) says the same thing about the value.
    """

    def __init__(self, sentence: str, field: str, value, accepts: str) -> None:
        super().__init__(sentence)
        self.field, self.value, self.accepts = field, value, accepts


def error_sentence(exc: BaseException) -> str:
    """The one line to show or store for an error: an AsymvizError's own sentence, else
    '<Type>: <message>' (a run that failed, a store that could not be written)."""
    if isinstance(exc, AsymvizError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())  # one line
