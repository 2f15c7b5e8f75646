"""Config refusals the other config tests left open: each bound at its own edge, max_len, a
value of another type given to build(), and a group's own check()."""

from dataclasses import dataclass

import pytest
from test_config import Sample

from stopwise.config import Config, ConfigError, build, group, param, validate


@dataclass
class Bounded(Config):
    at_least: float = param(1.0, ge=1)
    above: float = param(2.0, gt=1)
    at_most: float = param(1.0, le=1)
    below: float = param(0.0, lt=1)
    pair: list[int] = param([1, 2], min_len=2, max_len=2)


# Each bound at 0.5, exactly 1 and 1.5, and whether the value is allowed, written out by hand:
# ge and le take the bound itself, gt and lt do not.
@pytest.mark.parametrize(
    "key, allowed",
    [
        ("at_least", {0.5: False, 1.0: True, 1.5: True}),
        ("above", {0.5: False, 1.0: False, 1.5: True}),
        ("at_most", {0.5: True, 1.0: True, 1.5: False}),
        ("below", {0.5: True, 1.0: False, 1.5: False}),
    ],
)
def test_each_bound_takes_or_refuses_its_own_edge(key, allowed):
    for value, ok in allowed.items():
        config = build(Bounded, {key: value})
        if ok:
            validate(config, "bounded")
        else:
            with pytest.raises(ConfigError, match=f"{key}={value} must be"):
                validate(config, "bounded")


def test_a_list_longer_than_its_max_len_is_refused():
    validate(build(Bounded, {"pair": [3, 4]}), "bounded")
    with pytest.raises(ConfigError, match=r"pair=\[1, 2, 3\] needs at most 2 item"):
        validate(build(Bounded, {"pair": [1, 2, 3]}), "bounded")
    with pytest.raises(ConfigError, match=r"pair=\[1\] needs at least 2 item"):
        validate(build(Bounded, {"pair": [1]}), "bounded")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("stage1.steps", True, "an integer"),  # a bool is not taken for an int ...
        ("beta", False, "a number"),  # ... nor for a float
        ("sizes", 3, "a list of integers"),  # a scalar is not a one-item list
        ("names", "a", "a list of strings"),  # nor is a string a list of its letters
        ("kind", 1, "a string"),
        ("flag", "true", "a boolean"),  # text is parsed by --set, not by build
    ],
)
def test_build_refuses_a_value_of_another_type(key, value, expected):
    with pytest.raises(ConfigError, match=f"{key}={value!r}: expected {expected}"):
        build(Sample, {key: value})


@dataclass
class Checked:
    lo: int = param(1)
    hi: int = param(2)

    def check(self):
        if self.lo > self.hi:
            raise ValueError(f"window.lo must be <= window.hi; got {self.lo} > {self.hi}")


@dataclass
class WithCheckedGroup(Config):
    window: Checked = group(Checked)


def test_a_groups_own_check_runs_in_validate():
    validate(build(WithCheckedGroup, {"window.lo": 2, "window.hi": 2}), "windowed")
    with pytest.raises(ConfigError, match="windowed: window.lo must be <= window.hi; got 3 > 2"):
        validate(build(WithCheckedGroup, {"window.lo": 3}), "windowed")
