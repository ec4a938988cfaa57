"""Named errors of asymviz.

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
