"""Architecture specs and the MLP."""

import pytest
import torch

from asymviz.errors import ConfigError
from asymviz.model import MLP, count_parameters, parse_architecture
from asymviz.sparse import AsymmetricLinear


@pytest.mark.parametrize("spec,n_in,n_out,hidden", [
    ("64-256-256-10", 64, 10, [256, 256]),
    ("256,256", None, None, [256, 256]),
    ("128", None, None, [128]),
    ([32, 16], None, None, [32, 16]),
    ("64-10", 64, 10, []),
    (" 64 - 32 - 10 ", 64, 10, [32]),
])
def test_parse_architecture(spec, n_in, n_out, hidden):
    assert parse_architecture(spec, n_in, n_out) == hidden


@pytest.mark.parametrize("spec,match", [
    ("abc", "'abc' is not a positive whole number"),
    ("64--10", "'' is not a positive whole number"),
    ("256,0", "every width must be between 1 and 16384, got 0"),
    ("256,-3", "'-3' is not a positive whole number"),
    ("256,99999999", "every width must be between 1 and 16384"),
    ("", "is not valid"),
    (",".join(["8"] * 17), "at most 16 are allowed"),
    ("10", None),
])
def test_bad_architecture_specs(spec, match):
    if match is None:
        assert parse_architecture(spec) == [10]
        return
    with pytest.raises(ConfigError, match=match):
        parse_architecture(spec)


def test_full_spec_must_fit_the_data():
    with pytest.raises(ConfigError, match="must start with 64 inputs and end with 10 classes"):
        parse_architecture("13-32-3", 64, 10)


def test_mlp_layers_output_dense_by_default():
    m = MLP(64, [32, 16], 10, strategy="neuron", sparsity=0.5, dropout=0.2, activation="tanh")
    layers = m.linears
    assert [type(l) for l in layers] == [AsymmetricLinear] * 3
    assert [l.strategy for l in layers] == ["neuron", "neuron", "symmetric"]
    assert layers[-1].dense_backward and not layers[0].dense_backward
    assert sum(isinstance(x, torch.nn.Dropout) for x in m.net) == 2
    assert m(torch.randn(5, 64)).shape == (5, 10)
    assert sum(p.numel() for p in m.parameters()) == count_parameters(64, [32, 16], 10)


def test_sparse_output_makes_the_last_layer_asymmetric():
    m = MLP(8, [16], 4, strategy="neuron", sparsity=0.5, sparse_output=True)
    assert m.linears[-1].strategy == "neuron" and not m.linears[-1].dense_backward


def test_mask_recording_is_opt_in():
    m = MLP(8, [16], 4, strategy="neuron", sparsity=0.75)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(m(x), y).backward()
    assert m.last_masks() == [None, None]
    m.record_masks(True)
    torch.nn.functional.cross_entropy(m(x), y).backward()
    rec = m.last_masks()[0]
    assert len(rec.kept) == 4 and m.last_masks()[1] is None  # the dense output layer records nothing
    assert m.kept_fractions() == [0.25, 1.0]


@pytest.mark.parametrize("kwargs,match", [
    ({"activation": "swish"}, "Unknown activation 'swish'; choose one of: relu, tanh, sigmoid, gelu"),
    ({"dropout": 1.0}, "dropout must be in"),
])
def test_bad_mlp_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MLP(4, [4], 2, **kwargs)
