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
