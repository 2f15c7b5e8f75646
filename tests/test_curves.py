"""The budget-curve verdict against fixed depth (stopwise.curves), checked against hand-worked
mixes and against a linear program over every distribution of rows across the depths."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from stopwise.curves import best_fixed_mix, dominance, dominance_line, mean_curve

FIXED = [
    {"mean_steps": 1, "acc": 0.5},
    {"mean_steps": 2, "acc": 0.9},
    {"mean_steps": 3, "acc": 0.95},
]


def test_mixes_by_hand():
    assert best_fixed_mix(FIXED, 2.0, "acc", higher_is_better=True) == pytest.approx(0.9)
    assert best_fixed_mix(FIXED, 1.5, "acc", higher_is_better=True) == pytest.approx(0.7)
    # outside the range: the end depths (no fixed depth is cheaper than the first)
    assert best_fixed_mix(FIXED, 0.5, "acc", higher_is_better=True) == 0.5
    assert best_fixed_mix(FIXED, 4.0, "acc", higher_is_better=True) == 0.95
    # not concave: half the rows at depth 1 and half at 3 beat depth 2 alone
    bumpy = [{"mean_steps": 1, "acc": 0.5}, {"mean_steps": 2, "acc": 0.52},
             {"mean_steps": 3, "acc": 0.99}]  # fmt: skip
    assert best_fixed_mix(bumpy, 2.0, "acc", higher_is_better=True) == pytest.approx(0.745)
    # a cheaper depth that is better is the one to run, at the full cost and beyond it too
    dip = [{"mean_steps": 1, "acc": 0.5}, {"mean_steps": 2, "acc": 0.9},
           {"mean_steps": 3, "acc": 0.8}]  # fmt: skip
    assert best_fixed_mix(dip, 3.0, "acc", higher_is_better=True) == pytest.approx(0.9)
    assert best_fixed_mix(dip, 2.5, "acc", higher_is_better=True) == pytest.approx(0.9)
    # lower is better: the lower hull
    err = [{"mean_steps": d, "e": e} for d, e in ((1, 10.0), (2, 9.9), (3, 1.0))]
    assert best_fixed_mix(err, 2.0, "e", higher_is_better=False) == pytest.approx(5.5)
    # two depths of the same least cost: the better of them, at that cost and below it
    tied = [{"mean_steps": 1, "acc": 0.5}, {"mean_steps": 1, "acc": 0.9},
            {"mean_steps": 2, "acc": 0.95}]  # fmt: skip
    for cost in (0.5, 1.0):
        assert best_fixed_mix(tied, cost, "acc", higher_is_better=True) == 0.9
        assert best_fixed_mix(tied, cost, "acc", higher_is_better=False) == 0.5


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=2, max_size=7),
    st.floats(0, 1),
    st.booleans(),
)
def test_the_mix_is_the_best_distribution_over_depths(values, where, higher):
    """Against a linear program: the best expected quality over all shares of rows per depth
    whose mean depth is at most the cost."""
    depths = np.arange(1, len(values) + 1, dtype=float)
    cost = 1 + where * (len(values) - 1)
    fixed = [{"mean_steps": d, "q": v} for d, v in zip(depths, values, strict=True)]
    sign = 1.0 if higher else -1.0
    lp = linprog(-sign * np.array(values), A_eq=np.ones((1, len(values))), b_eq=[1.0],
                 A_ub=depths[None], b_ub=[cost], bounds=[(0, None)] * len(values))  # fmt: skip
    assert lp.success
    best = -lp.fun * sign
    assert best_fixed_mix(fixed, cost, "q", higher_is_better=higher) == pytest.approx(
        best, abs=1e-7
    )


def test_dominance_verdicts():
    above = [{"mean_steps": 1.5, "acc": 0.8}, {"mean_steps": 2.5, "acc": 0.93}]
    verdict = dominance([above], [FIXED], "acc", higher_is_better=True)
    assert verdict["dominates"] and verdict["strictly_better_lower_half"] and verdict["met"]
    assert verdict["best_lower_half_gain"] == pytest.approx(0.1)  # 0.8 − 0.7 at 1.5 steps
    assert verdict["worst_gain"] == pytest.approx(0.005) and verdict["worst_gain_at"] == 2.5
    # equal to fixed depth everywhere: dominates, but not strictly better
    equal = dominance([FIXED], [FIXED], "acc", higher_is_better=True)
    assert equal["dominates"] and not equal["met"]
    # better only in the upper half: not met
    late = [{"mean_steps": 1.5, "acc": 0.7}, {"mean_steps": 2.6, "acc": 0.99}]
    assert not dominance([late], [FIXED], "acc", higher_is_better=True)["met"]
    # one point below: does not dominate, and the worst gain says where and by how much
    below = [{"mean_steps": 1.5, "acc": 0.9}, {"mean_steps": 2.0, "acc": 0.85}]
    verdict = dominance([below], [FIXED], "acc", higher_is_better=True)
    assert not verdict["dominates"] and verdict["strictly_better_lower_half"]
    assert verdict["worst_gain"] == pytest.approx(-0.05) and verdict["worst_gain_at"] == 2.0
    # lower is better: the sign of the gains follows
    errors = [{"mean_steps": p["mean_steps"], "e": 1 - p["acc"]} for p in above]
    fixed = [{"mean_steps": p["mean_steps"], "e": 1 - p["acc"]} for p in FIXED]
    flipped = dominance([errors], [fixed], "e", higher_is_better=False)
    assert flipped["worst_gain"] == pytest.approx(0.005) and flipped["met"]
    with pytest.raises(ValueError, match="non-empty"):
        dominance([[]], [FIXED], "acc", higher_is_better=True)


def test_a_diverged_point_fails_the_curve_wherever_it_falls():
    above = [{"mean_steps": 1.5, "acc": 0.8}, {"mean_steps": 2.0, "acc": 0.9},
             {"mean_steps": 2.5, "acc": 0.93}]  # fmt: skip
    for i in range(3):
        diverged = [dict(p) for p in above]
        diverged[i]["acc"] = math.nan
        verdict = dominance([diverged, above], [FIXED, FIXED], "acc", higher_is_better=True)
        assert not verdict["dominates"] and not verdict["met"], i
        assert (
            math.isnan(verdict["worst_gain"]) and verdict["worst_gain_at"] == above[i]["mean_steps"]
        )


def test_each_seed_is_compared_with_its_own_fixed_depth():
    """Seed 0's model is good at depth 1, seed 1's at depth 2: the mean of the seeds' fixed
    depths is a weaker comparator than each seed's own, and the verdict uses each seed's own."""
    fixed = [
        [{"mean_steps": 1, "acc": 0.9}, {"mean_steps": 2, "acc": 0.9}],
        [{"mean_steps": 1, "acc": 0.5}, {"mean_steps": 2, "acc": 0.9}],
    ]
    curves = [[{"mean_steps": 1.0, "acc": 0.85}], [{"mean_steps": 2.0, "acc": 0.9}]]
    verdict = dominance(curves, fixed, "acc", higher_is_better=True)
    # per seed: 0.85 − 0.9 at 1 step, 0.9 − 0.9 at 2 steps; mean −0.025 at 1.5 mean steps
    # with the 95% t interval over the 2 seeds' gains (−0.05, 0): t(0.975, 1 df) = 12.706
    half = 12.7062 * (0.05 / math.sqrt(2)) / math.sqrt(2)
    assert verdict["gains"] == [
        {"cost": 1.5, "gain": pytest.approx(-0.025), "lo": pytest.approx(-0.025 - half, rel=1e-4),
         "hi": pytest.approx(-0.025 + half, rel=1e-4)}
    ]  # fmt: skip
    assert verdict["worst_gain_interval"] == [verdict["gains"][0]["lo"], verdict["gains"][0]["hi"]]
    assert not verdict["dominates"]
    line = dominance_line("two seeds", verdict, "points", 100)
    assert "-2.5 [-34.3, +29.3] points at 1.5 steps" in line and "over 2 seeds" in line
    # the mean curve (0.875 at 1.5) against the mean fixed depth (0.7, 0.9 → 0.8) would say +0.075
    with pytest.raises(ValueError, match="fixed-depth"):
        dominance(curves, fixed[:1], "acc", higher_is_better=True)


def test_the_line_says_the_verdict_and_the_numbers():
    below = [{"mean_steps": 1.5, "acc": 0.9}, {"mean_steps": 2.0, "acc": 0.85}]
    line = dominance_line(
        "L2S", dominance([below], [FIXED], "acc", higher_is_better=True), "points", 100
    )
    assert line.startswith("L2S:") and "— no" in line and "-5 points at 2 steps" in line
    assert "+20 points at 1.5 steps" in line


def test_mean_curve_averages_each_field_over_the_seeds_where_it_is_a_number():
    """A Spearman ρ undefined on one seed (None) is averaged over the others; text is dropped."""
    seed_a = [{"cost": 1.0, "rho": None, "label": "a"}, {"cost": 3.0, "rho": 0.5, "label": "a"}]
    seed_b = [{"cost": 2.0, "rho": 0.2, "label": "b"}, {"cost": 5.0, "rho": None, "label": "b"}]
    assert mean_curve([seed_a, seed_b]) == [{"cost": 1.5, "rho": 0.2}, {"cost": 4.0, "rho": 0.5}]
    with pytest.raises(ValueError):
        mean_curve([seed_a, seed_b[:1]])


def test_strictly_better_needs_the_interval_over_seeds_above_zero():
    """DESIGN: a target is met when the interval says so. Three seeds whose lower-half gains
    average above zero but scatter across it are not strictly better; gains that stay above
    zero are. The interval is written out with scipy's t quantile."""
    from scipy.stats import t as student_t

    fixed = [{"mean_steps": 1, "acc": 0.5}, {"mean_steps": 3, "acc": 0.9}]
    upper = {"mean_steps": 3.0, "acc": 0.9}  # equal to fixed depth at full cost

    def curves(lower_gains):  # one lower-half point per seed at 1 step, gain = acc − 0.5
        return [[{"mean_steps": 1.0, "acc": 0.5 + g}, upper] for g in lower_gains]

    scattered = [0.10, 0.10, -0.15]
    verdict = dominance(curves(scattered), [fixed] * 3, "acc", higher_is_better=True)
    mean, sd = np.mean(scattered), np.std(scattered, ddof=1)
    lo = mean - student_t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert mean > 0 > lo
    assert verdict["best_lower_half_gain"] == pytest.approx(mean)
    assert verdict["best_lower_half_interval"][0] == pytest.approx(lo, rel=1e-6)
    assert verdict["dominates"] and not verdict["strictly_better_lower_half"]
    assert not verdict["met"]
    line = dominance_line("scattered", verdict, "points", 100)
    assert "better in the lower half (its interval above zero) — no" in line
    assert "at every budget (no point's mean gain below zero)" in line  # says which rule

    steady = [0.10, 0.12, 0.11]
    verdict = dominance(curves(steady), [fixed] * 3, "acc", higher_is_better=True)
    assert verdict["best_lower_half_interval"][0] > 0 and verdict["met"]
    # one seed has no interval: its gain decides
    assert dominance(curves([0.1]), [fixed], "acc", higher_is_better=True)["met"]


def test_the_middle_of_the_depth_range_is_in_the_lower_half():
    """Fixed depths 1..3: the middle is 2. A point at exactly 2 steps counts as lower half
    (0.95 against depth 2's 0.9: +0.05 there); one just above it (2.001 steps) does not, so a
    curve whose only gain is there is not strictly better in the lower half."""
    at_middle = [{"mean_steps": 2.0, "acc": 0.95}, {"mean_steps": 3.0, "acc": 0.95}]
    verdict = dominance([at_middle], [FIXED], "acc", higher_is_better=True)
    assert verdict["best_lower_half_at"] == 2.0
    assert verdict["best_lower_half_gain"] == pytest.approx(0.05)
    assert verdict["strictly_better_lower_half"] and verdict["met"]
    above = [{"mean_steps": 2.001, "acc": 0.99}, {"mean_steps": 3.0, "acc": 0.95}]
    verdict = dominance([above], [FIXED], "acc", higher_is_better=True)
    assert verdict["best_lower_half_gain"] is None and verdict["best_lower_half_at"] is None
    assert verdict["dominates"] and not verdict["strictly_better_lower_half"]


def test_best_lower_half_prefers_a_gain_whose_interval_is_above_zero():
    """Three seeds, fixed depths 1 (0.5) and 3 (0.9), so a mix at 1.5 steps reaches 0.6. The
    point at 1 step gains 0.3, 0.3, −0.2 (mean 0.133, its interval crosses zero); the point at
    1.5 steps gains 0.05, 0.06, 0.055 (mean 0.055, its interval above zero): the second is the
    best lower-half point, though its mean gain is smaller."""
    fixed = [{"mean_steps": 1, "acc": 0.5}, {"mean_steps": 3, "acc": 0.9}]
    noisy, steady = [0.3, 0.3, -0.2], [0.05, 0.06, 0.055]
    curves = [
        [{"mean_steps": 1.0, "acc": 0.5 + a}, {"mean_steps": 1.5, "acc": 0.6 + b},
         {"mean_steps": 3.0, "acc": 0.9}]
        for a, b in zip(noisy, steady, strict=True)
    ]  # fmt: skip
    verdict = dominance(curves, [fixed] * 3, "acc", higher_is_better=True)
    first = verdict["gains"][0]
    assert first["gain"] == pytest.approx(0.4 / 3) and first["lo"] < 0
    assert verdict["best_lower_half_at"] == 1.5
    assert verdict["best_lower_half_gain"] == pytest.approx(0.055)
    assert verdict["best_lower_half_interval"][0] > 0
    assert verdict["strictly_better_lower_half"] and verdict["met"]


def test_an_undefined_fixed_depth_leaves_the_comparison_undefined():
    """A NaN fixed depth at the cheapest end made the comparator −inf and a far worse stop point
    a gain of +inf (the curve 'met' the target); in the middle it was skipped (an audit)."""
    values = [math.nan, 0.6, 0.7, 0.8, 0.9]
    fixed = [{"mean_steps": d + 1, "q": v} for d, v in enumerate(values)]
    for cost in (1.0, 1.5, 3.0):
        assert math.isnan(best_fixed_mix(fixed, cost, "q", higher_is_better=True))
    curve = [{"mean_steps": 1.5, "q": 0.1}, {"mean_steps": 5.0, "q": 0.95}]
    verdict = dominance([curve], [fixed], "q", higher_is_better=True)
    assert math.isnan(verdict["worst_gain"]) and not verdict["met"]


def test_over_seeds_a_gain_without_an_interval_is_not_separated():
    """Three seeds, one with an infinite gain: the mean is +inf and no interval exists; it was
    counted as 'strictly better' on its mean alone (an audit)."""
    fixed = [{"mean_steps": d, "loss": v} for d, v in ((1, 2.0), (2, 1.0), (3, 0.5))]
    infinite = [{"mean_steps": 1, "loss": math.inf}, *fixed[1:]]
    curve = [{"mean_steps": 1.0, "loss": 0.5}, {"mean_steps": 3.0, "loss": 0.5}]
    verdict = dominance([curve] * 3, [infinite, fixed, fixed], "loss", higher_is_better=False)
    assert verdict["gains"][0]["gain"] == math.inf and verdict["gains"][0]["lo"] is None
    assert not verdict["strictly_better_lower_half"] and not verdict["met"]


def test_a_curve_equal_to_fixed_depth_dominates_with_no_tolerance():
    """Every gain is exactly 0, and "no mean gain below −tolerance" holds for 0 at tolerance 0."""
    verdict = dominance([FIXED], [FIXED], "acc", higher_is_better=True, tolerance=0.0)
    assert verdict["worst_gain"] == 0.0 and verdict["dominates"]
