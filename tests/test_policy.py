"""Tests of asymviz.policy: the datasets a lab offers (ASYMVIZ_DATASETS) and the limits read from
the environment. How a submit meets them is tested through the Runner (tests/test_jobs.py) and
the CLI (tests/test_lab.py)."""

import pytest

from asymviz import policy
from asymviz.errors import ConfigError
from asymviz.policy import Limits


@pytest.fixture(autouse=True)
def no_limits_set(monkeypatch):
    for name in policy.LIMIT_VARIABLES.values():
        monkeypatch.delenv(name, raising=False)


def test_every_dataset_is_offered_unless_the_lab_names_some(monkeypatch):
    monkeypatch.delenv("ASYMVIZ_DATASETS", raising=False)
    assert policy.offered_datasets() == policy.all_datasets() and "csv" in policy.all_datasets()
    monkeypatch.setenv("ASYMVIZ_DATASETS", " Moons,digits ,csv")
    assert policy.offered_datasets() == ["digits", "moons", "csv"]  # the Train page's order
    policy.check_dataset("moons")
    with pytest.raises(policy.DatasetNotOffered) as err:
        policy.check_dataset("mnist")
    assert str(err.value) == ("This lab offers only the datasets digits, moons, csv (ASYMVIZ_DATASETS); "
                              "'mnist' is not one of them.")


@pytest.mark.parametrize("text, what", [("moons,imagenet", "unknown dataset(s) 'imagenet'"),
                                        (" , ", "no dataset"), ("mnist,foo,bar", "unknown dataset(s) 'foo', 'bar'")])
def test_a_bad_dataset_list_is_one_sentence(monkeypatch, text, what):
    monkeypatch.setenv("ASYMVIZ_DATASETS", text)
    with pytest.raises(ConfigError) as err:
        policy.offered_datasets()
    assert str(err.value) == (f"ASYMVIZ_DATASETS names {what}; use a comma-separated list of: "
                              f"{', '.join(policy.all_datasets())}.")


def test_limits_from_env(monkeypatch):
    assert Limits.from_env() == Limits(5_000_000, 500, 4, 50)
    monkeypatch.setenv("ASYMVIZ_MAX_EPOCHS", "7")
    monkeypatch.setenv("ASYMVIZ_MAX_QUEUE", "0")  # 0 = no limit
    assert Limits.from_env() == Limits(5_000_000, 7, 4, 0)
    monkeypatch.setenv("ASYMVIZ_MAX_PARAMS", "lots")
    with pytest.raises(ConfigError, match="ASYMVIZ_MAX_PARAMS must be a whole number"):
        Limits.from_env()
