"""Registry of training strategies: presets of the sparsification operator (DESIGN.md §2).

A strategy says which neurons and connections take part in the backward pass.
These readings of the thesis's three strategies are this project's own; the operator in
`asymviz.sparse` is general, so other combinations can be composed from its options.
"""

from __future__ import annotations

from dataclasses import dataclass

from asymviz.errors import ConfigError


@dataclass(frozen=True)
class Strategy:
    name: str
    title: str
    summary: str  # one line for the UI and --help
    neuron_sparse: bool  # backward keeps only the top-k neurons of each asymmetric layer
    connection: str | None  # None | "weight" (excessive) | "activity" (refined)
    default_dropout: float = 0.0  # forward dropout p the preset uses when none is given


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy(
            "symmetric", "Symmetric", "Plain backprop: every neuron and connection gets gradient (the baseline).",
            neuron_sparse=False, connection=None,
        ),
        Strategy(
            "dropout", "Dropout", "Symmetric training with dropout: a random mask p in the forward, the same mask in the backward.",
            neuron_sparse=False, connection=None, default_dropout=0.5,
        ),
        Strategy(
            "neuron", "Neuron (strategy 1)", "Forward uses all neurons; backward keeps only the top-k neurons per layer by gradient magnitude.",
            neuron_sparse=True, connection=None,
        ),
        Strategy(
            "excessive", "Excessive (strategy 2)", "Top-k neurons, and in each kept row only the connections with the largest |W|.",
            neuron_sparse=True, connection="weight",
        ),
        Strategy(
            "refined", "Refined (strategy 3)", "Top-k neurons, and only the input units most active over the batch (column mask).",
            neuron_sparse=True, connection="activity",
        ),
    ]
}

SELECTIONS = ("topk", "random")
GRANULARITIES = ("batch", "example")


def get_strategy(name: str) -> Strategy:
    """The preset called `name`, or a ConfigError listing the valid names."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"Unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}.") from None


def check_choice(kind: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ConfigError(f"Unknown {kind} {value!r}; choose one of: {', '.join(valid)}.")
    return value
