"""Statistics of reports against independent references (SciPy, textbook tables, by hand)."""

import math

import pytest
from scipy import stats as scipy_stats

from stopwise.stats import (
    format_mean_sd,
    mean_interval,
    mean_sd,
    paired_difference,
    spearman,
    t_quantile,
)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 19, 60, 500])
@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(q, df):
    assert t_quantile(q, df) == pytest.approx(scipy_stats.t.ppf(q, df), rel=1e-8, abs=1e-9)


def test_t_quantile_table_values():
    # Two-sided 95% critical values of Student's t (any statistics textbook's table).
    for df, value in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)]:
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)


def test_mean_interval_by_hand():
    values = [1.0, 2.0, 4.0]
    mean, sd = 7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    out = mean_interval(values)
    assert out["mean"] == pytest.approx(mean) and out["sd"] == pytest.approx(sd)
    half = 4.302652729911275 * sd / math.sqrt(3)
    assert out["lo"] == pytest.approx(mean - half) and out["hi"] == pytest.approx(mean + half)
    single = mean_interval([5.0])
    assert single["lo"] is None and single["sd"] == 0.0


def test_paired_difference_uses_shared_seeds_only():
    a = {0: 1.0, 1: 2.0, 2: 3.5, 7: 100.0}
    b = {0: 0.5, 1: 1.0, 2: 2.0}
    out = paired_difference(a, b)
    assert out["per_seed"] == {0: 0.5, 1: 1.0, 2: 1.5} and out["n"] == 3
    assert out["mean"] == pytest.approx(1.0)
    # sd 0.5, half-width 4.303 · 0.5 / √3 = 1.24: the interval includes 0
    assert out["lo"] == pytest.approx(1.0 - 4.302652729911275 * 0.5 / math.sqrt(3))
    assert not out["above_zero"] and not out["below_zero"]
    tight = paired_difference({0: 1.9, 1: 2.0, 2: 2.1}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert tight["above_zero"] and not tight["below_zero"]
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_mean_sd_and_format():
    assert mean_sd([2.0, 4.0]) == (3.0, pytest.approx(math.sqrt(2)))
    assert format_mean_sd([0.1, 0.3], ".1f", scale=100) == "20.0 ± 14.1"
    assert format_mean_sd([0.5]) == "0.50"


def test_spearman_matches_scipy_with_ties():
    import numpy as np

    g = np.random.default_rng(0)
    a, b = g.integers(0, 5, 200), g.normal(size=200)
    b[:50] = a[:50]  # some dependence
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_values_that_are_not_finite_give_an_infinite_mean_and_no_interval():
    # A diverged run's loss is +inf: the mean is +inf, the spread unbounded, no interval.
    assert mean_sd([1.0, math.inf, 2.0]) == (math.inf, math.inf)
    out = mean_interval([1.0, 2.0, math.inf])
    assert out["mean"] == math.inf and out["lo"] is None and out["hi"] is None
    assert math.isnan(mean_sd([math.inf, -math.inf])[0])
    assert mean_sd([math.inf]) == (math.inf, 0.0)
