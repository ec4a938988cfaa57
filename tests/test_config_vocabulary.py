"""One vocabulary for input: ONE table of good and bad values, fed through every place that reads
the field (the command line, a link's query parameters, the dashboard's list box, the checks of
TrainConfig.validated, the experiment spec), gets the same accept/refuse answer everywhere, the
same value when accepted and, where the contexts allow, the same sentence when refused.

A value is taken as one value (`train --sparsity`, `?sparsity=`, TrainConfig) or as a list
(`bench --sparsity`, the Backward timing page, the experiment's `sparsities`), so each row says
both answers. Hostile values (NUL bytes, markup, huge numbers, digits that only look like digits)
are rows like any other.
"""

from __future__ import annotations

import json

import pytest

from asymviz import cli, config, pagekit
from asymviz.errors import AsymvizError, ConfigError, FieldError
from asymviz.experiment.spec import ExperimentSpec
from asymviz.train import TrainConfig

OK, NO = True, False
LONG = "9" * 5000

# (field, text, answer as one value, answer as a list; None: no list context reads the field)
TABLE = [
    ("sparsity", "0.9", OK, OK),
    ("sparsity", "0", OK, OK),
    ("sparsity", "0.999", OK, OK),
    ("sparsity", " 0.9 ", OK, OK),
    ("sparsity", "1e-1", OK, OK),
    ("sparsity", "0.5 0.9", NO, OK),
    ("sparsity", "0.5,0.9", NO, OK),
    ("sparsity", "0.5;0.9", NO, OK),
    ("sparsity", "0.5, 0.9;0.95", NO, OK),
    ("sparsity", "0.9,", NO, OK),
    ("sparsity", "1", NO, NO),
    ("sparsity", "1.0", NO, NO),
    ("sparsity", "-0.1", NO, NO),
    ("sparsity", "0.5,1", NO, NO),
    ("sparsity", "nan", NO, NO),
    ("sparsity", "inf", NO, NO),
    ("sparsity", "-inf", NO, NO),
    ("sparsity", "abc", NO, NO),
    ("sparsity", "", NO, NO),
    ("sparsity", ",", NO, NO),
    ("sparsity", "0.5,abc", NO, NO),
    ("sparsity", "0.5\t0.9", NO, NO),  # a tab is no separator (the spec's rule)
    ("sparsity", "0x1", NO, NO),
    ("sparsity", "[0.5]", NO, NO),
    ("sparsity", "0.9\x00", NO, NO),
    ("sparsity", "<script>alert(1)</script>", NO, NO),
    ("sparsity", "[x](http://example.com)", NO, NO),
    ("sparsity", LONG, NO, NO),  # float: inf
    ("lr", "0.001", OK, OK),
    ("lr", "3e-3", OK, OK),
    ("lr", "10", OK, OK),
    ("lr", "0.001 0.003", NO, OK),
    ("lr", "0", NO, NO),
    ("lr", "-0.001", NO, NO),
    ("lr", "10.5", NO, NO),
    ("lr", "nan", NO, NO),
    ("lr", "inf", NO, NO),
    ("lr", "fast", NO, NO),
    ("lr", "", NO, NO),
    ("lr", "1e999", NO, NO),
    ("lr", "0.001; rm -rf /", NO, NO),
    ("batch_size", "64", OK, OK),
    ("batch_size", " 64 ", OK, OK),
    ("batch_size", "65536", OK, OK),
    ("batch_size", "٦٤", OK, OK),  # Arabic-Indic digits are digits (int() reads them): 64
    ("batch_size", "64 128", NO, OK),
    ("batch_size", "64,128", NO, OK),
    ("batch_size", "64;128", NO, OK),
    ("batch_size", "0", NO, NO),
    ("batch_size", "-64", NO, NO),
    ("batch_size", "65537", NO, NO),
    ("batch_size", "1.5", NO, NO),
    ("batch_size", "64.0", NO, NO),
    ("batch_size", "+64", NO, NO),
    ("batch_size", "1e3", NO, NO),
    ("batch_size", "x", NO, NO),
    ("batch_size", "6_4", NO, NO),
    ("batch_size", "--5", NO, NO),
    ("batch_size", "²", NO, NO),  # a digit to str.isdigit, not to int()
    ("batch_size", LONG, NO, NO),
    ("batch_size", "", NO, None),  # as a list: the spec's width sweep may be empty, bench may not
    ("epochs", "20", OK, None),
    ("epochs", "100000", OK, None),
    ("epochs", "0", NO, None),
    ("epochs", "100001", NO, None),
    ("epochs", "ten", NO, None),
    ("epochs", "7.0", NO, None),
    ("epochs", "+7", NO, None),
    ("hidden", "256,256", OK, None),
    ("hidden", "256, 256", OK, None),
    ("hidden", "16384", OK, None),
    ("hidden", "64-32-10", OK, None),  # a full architecture that fits digits (64 inputs, 10 classes)
    ("hidden", "16385", NO, None),
    ("hidden", "0", NO, None),
    ("hidden", "256 256", NO, None),
    ("hidden", "256,,256", NO, None),
    ("hidden", "2x", NO, None),
    ("hidden", "-5", NO, None),
    ("hidden", "", NO, None),
    ("hidden", ",".join(["8"] * 17), NO, None),  # one layer more than allowed
    ("hidden", "[x](http://example.com)", NO, None),
    ("conn_sparsity", "0.5", OK, None),
    ("conn_sparsity", "1", NO, None),
    ("conn_sparsity", "nan", NO, None),
    ("conn_sparsity", "half", NO, None),
    ("optimizer", "adam", OK, None),
    ("optimizer", "Adam", NO, None),
    ("optimizer", " adam", NO, None),
    ("optimizer", "adamw", NO, None),
    ("optimizer", "", NO, None),
    ("device", "cpu", OK, None),
    ("device", "gpu", NO, None),
    ("split_seed", "2147483647", OK, None),
    ("split_seed", "2147483648", NO, None),
    ("split_seed", "-1", NO, None),
]

# Where the experiment spec reads each field: as one value, and as a list.
SPEC_ONE = {"batch_size": "batch_size", "epochs": "epochs", "hidden": "hidden", "conn_sparsity": "conn_sparsity",
            "optimizer": "optimizer", "device": "device", "split_seed": "split_seed"}
SPEC_LIST = {"sparsity": ("sparsities", "speed_sparsities"), "lr": ("lrs",), "batch_size": ("speed_widths",)}

# Where TrainConfig.validated and the experiment spec still disagree with each other, or one fails
# with a bare ValueError instead of a sentence: none now (both read values with asymviz.values). A
# case put here is a strict xfail, so it fails the day it is fixed.
KNOWN: dict = {}


# ------------------------------------------------------------------------------ the contexts
#
# Each returns (accepted, the value or the refusal sentence).


def _reference(field, text):
    try:
        return True, config.TRAIN_FIELDS[field].read(text)
    except FieldError as err:
        return False, err


EXTRA = {"conn_sparsity": {"strategy": "excessive"}}  # a strategy that uses the field


def cli_one(field, text, monkeypatch, capsys):
    """`python -m asymviz train --FIELD=TEXT --json` (training replaced by a stub that returns the
    validated config: only the command line's reading of the flags runs)."""
    import asymviz.train

    monkeypatch.setattr(asymviz.train, "fit", lambda c, *a, **k: {"status": "finished", "config": c.to_dict()})
    capsys.readouterr()
    extra = [f"--{k}={v}" for k, v in EXTRA.get(field, {}).items()]
    code = cli.main(["train", f"{config.TRAIN_FIELDS[field].flag}={text}", *extra, "--json"])
    out, err = capsys.readouterr()
    if code == 0:
        return True, json.loads(out.splitlines()[-1])["config"][field]
    assert code == 2 and err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, (code, err)
    assert err.startswith("error: ")
    return False, err[len("error: "):].rstrip("\n")


def url_one(field, text, monkeypatch, capsys):
    """A link's query parameter ?FIELD=TEXT, read by the Train page."""
    values, problems = pagekit.config_from_query({field: text})
    if not problems:
        assert field in values
        return True, values[field]
    assert field not in values and len(problems) == 1
    return False, problems[0]


def validated_one(field, text, monkeypatch, capsys):
    """TrainConfig(FIELD=TEXT).validated(), the check every run passes (with a strategy that uses it)."""
    try:
        return True, getattr(TrainConfig(**{field: text, **EXTRA.get(field, {})}).validated(), field)
    except ConfigError as err:
        return False, str(err)


def spec_one(field, text, monkeypatch, capsys):
    """ExperimentSpec(FIELD=TEXT).validated() (the CLI's `experiment --FIELD` and the Experiment page)."""
    name = SPEC_ONE[field]
    try:
        value = getattr(ExperimentSpec(**{name: text}).validated(), name)
    except ConfigError as err:
        return False, str(err)
    return True, [int(w) for w in value[0].split(",")] if field == "hidden" else value


ONE = {"cli": cli_one, "url": url_one, "validated": validated_one, "spec": spec_one}


def bench_list(field, text, monkeypatch, capsys):
    """`python -m asymviz bench --sparsity TEXT` / `--batch TEXT` (the timing replaced by a stub
    that returns a row per sparsity and batch: only the command line's reading of the flags runs)."""
    import asymviz.bench

    monkeypatch.setattr(asymviz.bench, "backward_table",
                        lambda widths, batch, sparsities, **k: [{"batch": batch, "sparsity": s} for s in sparsities])
    flag = {"sparsity": "--sparsity", "batch_size": "--batch"}[field]
    capsys.readouterr()
    code = cli.main(["bench", "--hidden", "8", f"{flag}={text}", "--json"])
    out, err = capsys.readouterr()
    if code == 0:
        rows = json.loads(out)
        return True, sorted({r["sparsity" if field == "sparsity" else "batch"] for r in rows})
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, (code, err)
    return False, err[len("error: "):].rstrip("\n")


def dashboard_list(field, text, monkeypatch, capsys):
    """The Backward timing page's Sparsities box (pages/3_Backward_timing.py)."""
    try:
        return True, config.sparsities(text, at_most=8)
    except FieldError as err:
        return False, str(err)


def spec_list(field, text, monkeypatch, capsys, name):
    try:
        return True, getattr(ExperimentSpec(**{name: text}).validated(), name)
    except ConfigError as err:
        return False, str(err)


LIST = {"bench": bench_list, "dashboard": dashboard_list}


def _list_reference(field, text, what):
    """config's list parser with the spec's rules for that list (its name in the sentences)."""
    try:
        if field == "sparsity":
            return True, config.sparsities(text, what=what)
        if field == "batch_size":
            return True, config.integers(text, what, 1, 65536)
        return True, config.numbers(text, what, lambda x: config.number(x, "learning rate", 0, 10, left_open=True))
    except FieldError as err:
        return False, err


# ------------------------------------------------------------------------------ the cases


def _case(row, context):
    field, text = row[0], row[1]
    reason = KNOWN.get((field, text, context))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(*row, context, marks=marks, id=f"{field}={text[:20]!r}-{context}")


ONE_CASES = [_case(row, c) for row in TABLE for c in ONE if c != "spec" or row[0] in SPEC_ONE]
LIST_CASES = [_case(row, c) for row in TABLE if row[3] is not None
              for c in ([*LIST] if row[0] in ("sparsity", "batch_size") else []) + ["spec-list"]
              if c != "dashboard" or row[0] == "sparsity"]


@pytest.mark.parametrize("field,text,one,listed,context", ONE_CASES)
def test_one_value_gets_one_answer_everywhere(field, text, one, listed, context, monkeypatch, capsys):
    ok, got = ONE[context](field, text, monkeypatch, capsys)
    ref_ok, ref = _reference(field, text)
    assert ok == one and ref_ok == one, (ok, got, ref)
    if ok:
        assert got == ref  # the same value, whoever read it
        return
    sentence = str(ref)
    assert sentence.endswith(".") and "\n" not in sentence
    if context in ("cli", "validated"):
        assert got == sentence  # the very sentence
    elif context == "url":  # the page's own sentence (the default stands), saying what the field takes
        assert got.startswith(f"The link's value {config.shown(text)} for {field} was not understood")
        assert got.endswith(f"; {field} takes {ref.accepts}.") and "\n" not in got
    elif field in ("batch_size", "epochs", "split_seed", "hidden", "optimizer", "device") and text:
        assert got == sentence  # the spec words whole numbers, widths and choices as TrainConfig does
    else:
        assert got.endswith(".") and "\n" not in got


@pytest.mark.parametrize("field,text,one,listed,context", LIST_CASES)
def test_a_list_gets_one_answer_everywhere(field, text, one, listed, context, monkeypatch, capsys):
    if context == "spec-list":
        for name in SPEC_LIST[field]:
            ok, got = spec_list(field, text, monkeypatch, capsys, name)
            ref_ok, ref = _list_reference(field, text, name)
            assert ok == listed and ref_ok == listed, (name, got, ref)
            if ok:
                assert got == ref
            elif field != "lr":  # the spec's learning rates speak of "Every learning rate"
                assert got == str(ref)
        return
    ok, got = LIST[context](field, text, monkeypatch, capsys)
    what = "sparsities" if field == "sparsity" else "batch"
    ref_ok, ref = _list_reference(field, text, what)
    assert ok == listed and ref_ok == listed, (got, ref)
    assert got == ref if ok else got == str(ref)


def test_the_table_covers_every_context():
    """Every context reads some value it accepts and some it refuses (a table that only ever
    says yes, or no, would prove nothing)."""
    for context in ONE:
        answers = {row[2] for row in TABLE if context != "spec" or row[0] in SPEC_ONE}
        assert answers == {OK, NO}, context
    assert {row[3] for row in TABLE if row[0] == "sparsity"} == {OK, NO}
    assert any(row[2] == NO and row[3] == OK for row in TABLE)  # "0.5 0.9": a list, not one value


# ------------------------------------------------------------------------------ the known gaps


def test_widths_with_a_blank_are_not_run_together():
    """'16 16' is no width (it was read as one layer of 1616); blanks around a width are fine."""
    with pytest.raises(FieldError, match="'16 16' is not a positive whole number"):
        config.TRAIN_FIELDS["hidden"].read("16 16")
    with pytest.raises(ConfigError, match="'16 16' is not a positive whole number"):
        TrainConfig(hidden="16 16").validated()
    assert config.TRAIN_FIELDS["hidden"].read(" 16 , 16 ") == [16, 16]
    assert config.TRAIN_FIELDS["hidden"].read("64 - 16 - 10") == [16]


@pytest.mark.parametrize("field,value", [("lr", True), ("sparsity", False), ("momentum", True)])
def test_a_json_boolean_is_no_number(field, value):
    """true/false is no number: config, TrainConfig.validated and the spec all refuse it (a stored
    config once read them as 1.0 / 0.0)."""
    with pytest.raises(FieldError, match="must be a number"):
        config.TRAIN_FIELDS[field].read(value)
    with pytest.raises(FieldError, match="must be a number"):
        TrainConfig(**{field: value, "strategy": "neuron", "optimizer": "momentum"}).validated()


@pytest.mark.parametrize("value", ["no", "false", "0"])
def test_sparse_output_text_no_is_no(value):
    """'no' is False everywhere (TrainConfig.validated once took bool('no'), which is True)."""
    assert config.TRAIN_FIELDS["sparse_output"].read(value) is False
    assert pagekit.config_from_query({"sparse_output": value})[0] == {"sparse_output": False}
    assert TrainConfig(sparse_output=value).validated().sparse_output is False


@pytest.mark.parametrize("value", ["abc", "[1]", 5, '{"noise": 0.3'])
def test_dataset_options_that_are_no_object_are_one_sentence(value):
    """Loader options that are no JSON object are refused with a sentence, not a bare ValueError."""
    with pytest.raises(FieldError, match="dataset_options must be a JSON object"):
        TrainConfig(dataset_options=value).validated()
    assert TrainConfig(dataset_options='{"noise": 0.3}').validated().dataset_options == {"noise": 0.3}


def test_a_refused_flag_is_one_sentence_not_argparse_noise(capsys):
    assert cli.main(["train", "--sparsity=lots"]) == 2
    assert capsys.readouterr().err == "error: sparsity must be a number in [0, 1), got 'lots'.\n"


def test_any_error_of_a_field_is_an_asymviz_error():
    """Callers that catch AsymvizError (the CLI, the pages) catch every refusal of config."""
    assert issubclass(FieldError, ConfigError) and issubclass(FieldError, AsymvizError)
