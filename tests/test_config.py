"""asymviz.config: the field parsers, their sentences, the TrainConfig fields described once,
the flags generated from them, the environment readers."""

import argparse
import dataclasses
import math

import pytest

from asymviz import config
from asymviz.cli import build_parser
from asymviz.errors import ConfigError, FieldError
from asymviz.train import TrainConfig

PROBES = [-1, 0, 1e-9, 0.5, 0.999, 1, 1.5, 10, 10.5, 16, 65536, 65537, 100000, 100001, 2**31 - 1, 2**31,
          "x", "", None, math.nan, math.inf, -math.inf, True, False, "7", " 7 ", "7.0", "-0", [1], {}, "relu",
          "adam", "cpu", "topk", "batch", "lazy", "neuron", "digits", "auto", "256,256", '{"noise": 0.1}']


def _answer(read):
    try:
        return "ok", read()
    except ConfigError as err:
        return "no", str(err)
    except (TypeError, ValueError) as err:  # TrainConfig.validated on some hostile values
        return "crash", type(err).__name__


def _differs_by_design(name, value, ours, theirs) -> bool:
    """Where config's rule is the sensible one and TrainConfig.validated is not: a JSON
    boolean is no number; sparse_output is yes or no, not Python's bool() of anything; loader
    options are an object (or its JSON text); a dropout given as text 'auto' / '' / None is the strategy's own."""
    number_field = config.TRAIN_FIELDS[name].accepts.startswith("a number") or name == "dropout"
    if isinstance(value, bool) and number_field:
        return ours[0] == "no"
    if name == "sparse_output" and not isinstance(value, bool):
        return ours[0] == "no" or theirs[0] == "ok"
    if name == "dataset_options" and not isinstance(value, dict):
        return ours[0] == "no" or isinstance(value, str)  # text: the JSON of the object (a link's form)
    if name == "dropout" and value in ("", None, "auto"):
        return ours == ("ok", None)
    return False


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrainConfig)])
def test_each_field_reads_as_trainconfig_validated_does(name):
    """config's rule and TrainConfig.validated give the same answer, the same value and the same
    sentence for every probe (declared differences aside, each with its reason)."""
    extra = {"strategy": "excessive"} if name == "conn_sparsity" else {}
    for value in PROBES:
        ours = _answer(lambda: config.TRAIN_FIELDS[name].read(value))
        assert ours[0] != "crash", (name, value, ours)
        theirs = _answer(lambda: getattr(TrainConfig(**{name: value, **extra}).validated(), name))
        if _differs_by_design(name, value, ours, theirs):
            continue
        if ours[0] == "ok" and isinstance(ours[1], float) and math.isnan(ours[1]):
            pytest.fail(f"{name} accepted NaN")
        assert ours == theirs, (name, value)


def test_every_field_is_described_from_the_dataclass():
    fields = dataclasses.fields(TrainConfig)
    assert list(config.TRAIN_FIELDS) == [f.name for f in fields]
    defaults = TrainConfig().to_dict()
    comments = config.field_comments(TrainConfig)
    assert comments["sparsity"].startswith("neuron sparsity s") and "lr" not in comments
    for f in fields:
        described = config.TRAIN_FIELDS[f.name]
        assert described.type == f.type and described.default == defaults[f.name]
        assert described.help and "\n" not in described.help and described.accepts
        if f.name not in config.HELP and f.name in comments:
            assert described.help.startswith(comments[f.name])  # the dataclass's own words
    assert config.TRAIN_FIELDS["lr"].help == "learning rate; a number in (0, 10] (default 0.001)"
    assert config.TRAIN_FIELDS["activation"].help == "relu | tanh | sigmoid | gelu (default relu)"


def test_a_field_without_a_rule_is_caught_at_import(monkeypatch):
    monkeypatch.delitem(config.TRAIN_RULES, "lr")
    with pytest.raises(RuntimeError, match="no rule for TrainConfig.lr"):
        config._train_fields()


@pytest.mark.parametrize("command", ["train", "submit"])
def test_train_flags_are_generated_from_the_fields(command):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    options = {a.dest: a for a in sub._actions}
    for name, field in config.TRAIN_FIELDS.items():
        if name == "dataset_options":
            assert {"data_option", "csv", "label"} <= set(options)
            continue
        action = options[name]
        assert action.option_strings[0] == field.flag and action.help == field.help.replace("%", "%%")
    assert isinstance(options["sparse_output"], argparse.BooleanOptionalAction)
    args = parser.parse_args([command, "--sparsity", "0.5", "--no-sparse-output", "--dropout", "auto"])
    assert (args.sparsity, args.sparse_output, args.dropout) == ("0.5", False, "auto")


def test_flags_keep_their_meaning():
    from asymviz.cli import config_from_args

    def cfg(*argv):
        return config_from_args(build_parser().parse_args(["train", *argv]))

    c = cfg("--dataset", "moons", "--hidden", "16,8", "--strategy", "refined", "--sparsity", "0.8",
            "--conn-sparsity", "0.5", "--lr", "0.01", "--epochs", "3", "--batch-size", "32", "--seed", "4",
            "--sparse-output", "--data-option", "noise=0.3")
    assert (c.dataset, c.hidden, c.strategy, c.sparsity, c.conn_sparsity, c.lr, c.epochs, c.batch_size, c.seed,
            c.sparse_output, c.dataset_options) == ("moons", [16, 8], "refined", 0.8, 0.5, 0.01, 3, 32, 4, True,
                                                    {"noise": 0.3})
    assert cfg("--strategy", "dropout", "--dropout", "auto").dropout == 0.5  # auto: the strategy's
    assert cfg("--dropout", "0.2").dropout == 0.2
    assert cfg().to_dict() == TrainConfig().validated().to_dict()  # no flag: the defaults


def test_every_help_text_prints(capsys):
    for command in ("train", "submit", "bench"):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([command, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "--sparsity" in out and "Traceback" not in out


# ------------------------------------------------------------------------------ one value


def test_numbers_and_whole_numbers():
    assert config.number(" 3e-3 ", "lr", 0, 10, left_open=True) == 0.003
    for bad, sentence in [("0", "lr must be in (0, 10], got '0'."), ("x", "lr must be a number, got 'x'."),
                          (True, "lr must be a number, got True."), ("nan", "lr must be in (0, 10], got 'nan'.")]:
        with pytest.raises(FieldError) as err:
            config.number(bad, "lr", 0, 10, left_open=True)
        assert str(err.value) == sentence and err.value.field == "lr" and err.value.accepts == "a number in (0, 10]"
    assert config.integer(" 12 ", "epochs", 1, 100) == 12 and config.integer(12.0, "epochs", 1, 100) == 12
    for bad in ["12.0", "+12", "1e1", "1_2", "--5", "²", "9" * 5000, 1.5, True, None, [12]]:
        with pytest.raises(FieldError, match="^epochs must be a whole number, got"):
            config.integer(bad, "epochs", 1, 100)
    with pytest.raises(FieldError, match=r"^epochs must be between 1 and 100, got 101\.$"):
        config.integer("101", "epochs", 1, 100)
    with pytest.raises(FieldError, match=r"^workers must be a whole number of 0 or more, got -1\.$"):
        config.integer("-1", "workers", 0)


def test_choices_booleans_widths_dropout_options():
    assert config.choice("adam", "optimizer", ("sgd", "adam")) == "adam"
    with pytest.raises(FieldError, match=r"^Unknown optimizer update 'Lazy'; choose one of: lazy, dense\.$"):
        config.TRAIN_FIELDS["update"].read("Lazy")
    assert [config.boolean(v, "x") for v in ("YES", " on ", "0", False, 1)] == [True, True, False, False, True]
    with pytest.raises(FieldError, match="must be yes or no"):
        config.boolean("maybe", "meprop")
    assert config.widths("64-32-10") == [32] and config.widths([8, 8]) == [8, 8]
    with pytest.raises(FieldError) as err:
        config.widths("2x")
    assert str(err.value).startswith("Architecture '2x' is not valid") and "256,256" in err.value.accepts
    assert config.dropout("AUTO") is None and config.dropout(0.25) == 0.25
    with pytest.raises(FieldError, match=r"dropout must be in \[0, 1\)"):
        config.dropout("1")
    assert config.dataset_options('{"noise": 0.2}') == {"noise": 0.2} and config.dataset_options("") == {}
    for bad in ["[1]", "{", "[" * 100000, "null", 3]:
        with pytest.raises(FieldError, match="must be a JSON object"):
            config.dataset_options(bad)


# ------------------------------------------------------------------------------ lists


def test_lists_split_on_commas_semicolons_and_spaces():
    assert config.split("0.5, 0.9;0.95 0.99,") == ["0.5", "0.9", "0.95", "0.99"]
    assert config.split([0.5, "0.9"]) == [0.5, "0.9"] and config.split(None) == [] and config.split(0.5) == [0.5]
    assert config.sparsities("0.9 0 0.5 0.5") == [0.0, 0.5, 0.9]
    assert config.sparsities("0.9 0 0.5 0.5", canonical=False) == [0.9, 0.0, 0.5, 0.5]
    assert config.integers("256;64 128", "speed_widths", 1, 65536) == [64, 128, 256]
    assert config.names("refined, neuron neuron", "strategies", ("neuron", "refined"), "strategy") == \
        ["refined", "neuron"]
    for text, sentence in [("", "List at least one value in sparsities."),
                           ("0.5 x", "sparsities must hold numbers, got 'x'."),
                           ("0.5 inf", "sparsities must hold finite numbers, got 'inf'."),
                           ("0.5 1", "sparsity must be in [0, 1) (0 keeps every neuron, 0.9 keeps 10 %), got 1.0.")]:
        with pytest.raises(FieldError) as err:
            config.sparsities(text)
        assert str(err.value) == sentence
    with pytest.raises(FieldError, match=r"^List at most 8 values in sparsities \(got 9\)\.$"):
        config.sparsities(" ".join(f"0.{i}" for i in range(1, 10)), at_most=8)
    with pytest.raises(FieldError, match=r"^Unknown strategy 'nope' in strategies; choose among: neuron\.$"):
        config.names("neuron nope", "strategies", ("neuron",), "strategy")


def test_slider_sparsity_sentences():
    assert config.sparsity_problem(0.99) is None and config.sparsity_problem(0) is None
    assert config.sparsity_problem(1.0).startswith("Sparsity 1.00 would leave no neuron")
    assert config.sparsity_problem(1.0, "Connection sparsity", "connection").startswith(
        "Connection sparsity 1.00 would leave no connection")
    for bad in (-0.1, math.nan, "x", None):
        assert config.sparsity_problem(bad).startswith("Sparsity must be a number from 0 to 0.99")


def test_a_shown_value_cannot_format_a_page():
    assert config.shown("[x](http://e.com)") == "`[x](http://e.com)`"
    assert config.shown("a`b\nc") == "`a?b?c`"
    assert len(config.shown("9" * 1000)) <= 42


# ------------------------------------------------------------------------------ environment


def test_environment_readers(monkeypatch):
    monkeypatch.delenv("ASYMVIZ_TEST_N", raising=False)
    assert config.env_int("ASYMVIZ_TEST_N", 4) == 4 and config.env_flag("ASYMVIZ_TEST_N") is False
    for text, value in [("7", 7), (" 0 ", 0)]:
        monkeypatch.setenv("ASYMVIZ_TEST_N", text)
        assert config.env_int("ASYMVIZ_TEST_N", 4) == value
    for text in ["-1", "x", "²", "1.5", "9" * 5000]:
        monkeypatch.setenv("ASYMVIZ_TEST_N", text)
        with pytest.raises(FieldError, match="^ASYMVIZ_TEST_N must be a whole number"):
            config.env_int("ASYMVIZ_TEST_N", 4)
    monkeypatch.setenv("ASYMVIZ_TEST_N", "2.5")
    assert config.env_number("ASYMVIZ_TEST_N", 60.0) == 2.5
    for text in ["-1", "inf", "nan", "soon"]:
        monkeypatch.setenv("ASYMVIZ_TEST_N", text)
        with pytest.raises(FieldError, match="^ASYMVIZ_TEST_N must"):
            config.env_number("ASYMVIZ_TEST_N", 60.0)
    monkeypatch.setenv("ASYMVIZ_TEST_N", "Ray")
    assert config.env_choice("ASYMVIZ_TEST_N", "local", ("local", "ray")) == "ray"
    monkeypatch.setenv("ASYMVIZ_TEST_N", "dask")
    with pytest.raises(FieldError, match=r"^Unknown value of ASYMVIZ_TEST_N 'dask'; choose one of: local, ray\.$"):
        config.env_choice("ASYMVIZ_TEST_N", "local", ("local", "ray"))
    monkeypatch.setenv("ASYMVIZ_TEST_N", "yes")
    assert config.env_flag("ASYMVIZ_TEST_N") is True
    monkeypatch.setenv("ASYMVIZ_TEST_N", "perhaps")
    with pytest.raises(FieldError, match="must be yes or no"):
        config.env_flag("ASYMVIZ_TEST_N")


@pytest.mark.parametrize("default, text, value", [(4, "", 4), (4, " 7 ", 7), (4, "0", 0), (0.2, "1.5", 1.5),
                                                  (10.0, "0", 0.0), (10.0, "", 10.0)])
def test_the_labs_environment_numbers_are_read_by_the_defaults_kind(monkeypatch, default, text, value):
    """ASYMVIZ_WORKERS, _WORKER_THREADS and the ASYMVIZ_MAX_* counts are whole numbers; the
    seconds (ASYMVIZ_STOP_GRACE, _STALE_AFTER, _STOP_CHECK_S) are numbers; blank: the default."""
    monkeypatch.setenv("ASYMVIZ_TEST_NUMBER", text)
    got = (config.env_int if isinstance(default, int) else config.env_number)("ASYMVIZ_TEST_NUMBER", default)
    assert got == value and type(got) is type(default)


@pytest.mark.parametrize("default, text, sentence", [
    (4, "2.5", "ASYMVIZ_TEST_NUMBER must be a whole number, got '2.5'."),
    (4, "-1", "ASYMVIZ_TEST_NUMBER must be a whole number of 0 or more, got -1."),
    (4, "\u00b2", "ASYMVIZ_TEST_NUMBER must be a whole number, got '\u00b2'."),
    (0.2, "soon", "ASYMVIZ_TEST_NUMBER must be a number, got 'soon'."),
    (0.2, "-0.5", "ASYMVIZ_TEST_NUMBER must be a number of 0 or more, got '-0.5'."),
    (0.2, "nan", "ASYMVIZ_TEST_NUMBER must be a number of 0 or more, got 'nan'."),
    (0.2, "inf", "ASYMVIZ_TEST_NUMBER must be a number of 0 or more, got 'inf'."),
])
def test_the_labs_environment_numbers_refuse_anything_else_with_one_sentence(monkeypatch, default, text, sentence):
    monkeypatch.setenv("ASYMVIZ_TEST_NUMBER", text)
    with pytest.raises(ConfigError) as err:
        (config.env_int if isinstance(default, int) else config.env_number)("ASYMVIZ_TEST_NUMBER", default)
    assert str(err.value) == sentence
