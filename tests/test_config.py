"""Typed configs: parsing, dotted keys, types, ranges, choices, cross-key checks, presets."""

from dataclasses import dataclass

import pytest

from stopwise.config import (
    Config,
    ConfigError,
    build,
    describe,
    distinct,
    flatten,
    group,
    param,
    parse_value,
    to_plain,
    validate,
)
from stopwise.contract import Experiment, Report
from stopwise.experiments import get_experiment, resolve_config


@dataclass
class Stage:
    steps: int = param(10, ge=1, help="updates")
    lr: float = param(0.1, gt=0, le=1)


@dataclass
class Sample(Config):
    beta: float = param(0.5, gt=0)
    kind: str = param("hard", choices=("hard", "soft"))
    sizes: list[int] = param([1, 2], ge=1, min_len=1)
    names: list[str] = param(["a"])
    flag: bool = param(False)
    stage1: Stage = group(Stage)

    def check(self):
        if self.flag and self.stage1.steps < 5:
            raise ValueError(f"flag needs stage1.steps >= 5; got {self.stage1.steps}")


def experiment(presets=None):
    return Experiment(
        "sample",
        "a test experiment",
        Sample,
        jobs=lambda c: [],
        run_job=lambda j, c: {},
        report=lambda r, c: Report({}, ""),
        presets=presets or {"quick": {}},
    )


def test_defaults_nested_keys_and_plain_round_trip():
    config = build(Sample, {"stage1.steps": 3, "stage1": {"lr": 0.5}, "beta": 2})
    assert config.stage1.steps == 3 and config.stage1.lr == 0.5
    assert config.beta == 2.0 and isinstance(config.beta, float)  # an int is taken for a float
    plain = to_plain(config)
    assert plain["stage1"] == {"steps": 3, "lr": 0.5} and plain["seeds"] == [0]
    assert flatten(plain)["stage1.steps"] == 3
    assert to_plain(build(Sample, plain)) == plain
    assert Sample().sizes is not Sample().sizes  # list defaults are not shared


@pytest.mark.parametrize(
    "key, text, kind, expected",
    [
        ("a", "3", int, 3),
        ("a", "0.25", float, 0.25),
        ("a", "yes", bool, True),
        ("a", "off", bool, False),
        ("a", "x y", str, "x y"),
        ("a", "0,1,2", list[int], [0, 1, 2]),
        ("a", "[0, 1]", list[int], [0, 1]),
        ("a", "[3, 0.5]", list[float], [3.0, 0.5]),
        ("a", "u,v", list[str], ["u", "v"]),
        ("a", "[u, v]", list[str], ["u", "v"]),  # bare words in brackets, like [1, 2]
        ("a", '["u", "v,w"]', list[str], ["u", "v,w"]),  # JSON, where an item holds a comma
        ("a", "[]", list[str], []),
        ("a", "", list[int], []),
    ],
)
def test_parse_value(key, text, kind, expected):
    assert parse_value(key, text, kind) == expected


@pytest.mark.parametrize(
    "text, kind",
    [("x", int), ("2.5", int), ("maybe", bool), ("1,a", list[int]), ("[1.5]", list[int])],
)
def test_parse_value_refuses_with_the_key_and_an_example(text, kind):
    with pytest.raises(ConfigError, match=r"--set k=.*: expected .*like k="):
        parse_value("k", text, kind)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"beta": 0}, "beta=0.0 must be > 0"),
        ({"kind": "medium"}, "kind='medium' must be one of ['hard', 'soft']"),
        ({"sizes": []}, "sizes=[] needs at least 1 item"),
        ({"sizes": [1, 0]}, "sizes=[1, 0] must be >= 1"),
        ({"stage1.lr": 2.0}, "stage1.lr=2.0 must be > 0 and <= 1"),
        ({"seeds": [0, 0]}, "seeds=[0, 0] must not repeat"),
        ({"threads": 0}, "threads=0 must be >= 1"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"inference_mode": "fast"}, "inference_mode='fast' must be one of"),
        ({"beta": float("nan")}, "beta=NaN must be a finite number"),
        ({"beta": float("inf")}, "beta=Infinity must be a finite number"),
        ({"flag": True, "stage1.steps": 2}, "flag needs stage1.steps >= 5; got 2"),
    ],
)
def test_validate_names_key_value_and_range(values, message):
    config = build(Sample, values)
    with pytest.raises(ConfigError) as error:
        validate(config, "sample")
    assert message in str(error.value)


def test_distinct_integers_are_compared_exactly():
    # eight-digit seeds agree to six significant digits but are different seeds (job names
    # hold the whole integer); floats are compared as :g writes them in job names
    assert distinct([20261201, 20261202]) is None
    assert distinct([0, 0]) is not None
    assert distinct([0.1, 0.1000000001]) is not None


def test_build_refuses_unknown_keys_and_wrong_types():
    with pytest.raises(
        ConfigError, match="unknown key 'steps' for x .*did you mean 'stage1.steps'"
    ):
        build(Sample, {"steps": 3}, "x")
    # every key of that name, not the first alone (sparse recovery's `steps` suggested only
    # alista.steps, not problem.steps)
    sparse = get_experiment("sparse-recovery")
    with pytest.raises(ConfigError, match=r"did you mean 'alista.steps' or [^)]*'problem.steps'"):
        resolve_config(sparse, "tiny", ["steps=3"])
    with pytest.raises(ConfigError, match=r"'stage1' is a group: set its keys, e.g. 'stage1\."):
        resolve_config(experiment({"quick": {}}), "quick", ["stage1=5"])
    with pytest.raises(ConfigError, match="beta='high': expected a number"):
        build(Sample, {"beta": "high"})
    with pytest.raises(ConfigError, match="flag=1: expected a boolean"):
        build(Sample, {"flag": 1})


def test_resolve_config_applies_preset_then_overrides():
    exp = experiment({"quick": {}, "big": {"stage1": {"steps": 100}, "beta": 3.0}})
    config, preset = resolve_config(exp, "big", ["stage1.lr=0.2", "seeds=1,2"])
    assert preset == "big" and config.stage1.steps == 100 and config.beta == 3.0
    assert config.stage1.lr == 0.2 and config.seeds == [1, 2]
    with pytest.raises(ConfigError, match="unknown preset 'huge' for sample; choose one of"):
        resolve_config(exp, "huge")
    with pytest.raises(ConfigError, match="unknown key 'stage2.steps'"):
        resolve_config(exp, None, ["stage2.steps=3"])
    with pytest.raises(ConfigError, match="--set takes key=value"):
        resolve_config(exp, None, ["beta"])
    with pytest.raises(ConfigError, match="sample: stage1.steps=0 must be >= 1"):
        resolve_config(exp, None, ["stage1.steps=0"])


def test_presets_with_unknown_keys_are_refused_at_registration():
    with pytest.raises(ValueError, match="preset 'bad'.*unknown key 'betta'"):
        experiment({"quick": {}, "bad": {"betta": 1.0}})


def test_describe_lists_every_key_with_type_range_and_help():
    entries = {e["key"]: e for e in describe(Sample)}
    assert entries["stage1.steps"] == {
        "key": "stage1.steps",
        "type": "an integer",
        "default": 10,
        "allowed": ">= 1",
        "help": "updates",
    }
    assert entries["sizes"]["type"] == "a list of integers"
    assert "seeds" in entries and "threads" in entries


def test_a_check_returning_a_bool_is_a_mistake_named_as_such():
    """A ``check`` returns the problem as text or None. One written as a predicate passed every
    bad value (False is no problem) and refused the good ones as "beta=0.01 True"."""

    @dataclass
    class Predicate(Config):
        beta: float = param(0.5, check=lambda v: v > 0)

    with pytest.raises(TypeError, match="returns the problem as text, or None; .* returned True"):
        validate(build(Predicate, {"beta": 0.01}))
