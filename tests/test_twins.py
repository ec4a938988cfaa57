"""Tests of asymviz.twins' reference runs: the config key that ignores what a strategy does not
use, and the newest finished symmetric run of the same configuration."""

import json
import os
import socket

import pytest

from asymviz.store import Store
from asymviz.train import TrainConfig
from asymviz.twins import config_key, find_reference_run

HOST = socket.gethostname()


@pytest.fixture
def store():
    with Store(":memory:") as s:
        yield s


def test_config_key_and_reference_run(store):
    neuron = TrainConfig(dataset="moons", hidden=[16], strategy="neuron", sparsity=0.8).validated()
    symmetric = TrainConfig(dataset="moons", hidden=[16], strategy="symmetric", update="dense",
                            selection="random").validated().to_dict()
    assert config_key(neuron, strategy="symmetric") == config_key(symmetric)
    assert config_key(neuron) != config_key(symmetric)
    assert json.loads(config_key(neuron))["sparsity"] == 0.8
    assert config_key(neuron, strategy="symmetric", lr=0.1) != config_key(symmetric)

    assert find_reference_run(store, neuron.to_dict()) is None
    older, newer = (store.create_run(symmetric, owner="ana") for _ in range(2))
    other = store.create_run({**symmetric, "seed": 1}, owner="ana")
    for run_id in (older, newer, other):
        store.claim_next(os.getpid(), HOST)
        store.set_status(run_id, "finished")
    store.create_run(symmetric, owner="ana")  # queued: not a reference
    assert find_reference_run(store, neuron.to_dict())["id"] == newer
    assert find_reference_run(store, {**neuron.to_dict(), "seed": 1})["id"] == other
    assert find_reference_run(store, {**neuron.to_dict(), "seed": 2}) is None
