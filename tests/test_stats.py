"""Statistics of reports against independent references (SciPy, textbook tables, by hand)."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from stopwise.stats import (
    average_ranks,
    format_interval,
    format_mean_and_sd,
    format_mean_sd,
    interval_or_mean,
    mean_interval,
    mean_present,
    mean_sd,
    paired_difference,
    ratio_db_upper_bound,
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
    # Near the float maximum the sums overflowed (fsum raised OverflowError).
    assert mean_sd([1e308, 1e308]) == (1e308, 0.0)
    assert mean_sd([1e308, -1e308, 6.0]) == (2.0, 1e308)  # 6 keeps its digits: no subnormal
    assert mean_sd([1.5e308, -1.5e308]) == (0.0, math.inf)  # sd √2·1.5e308 is past the maximum


def test_mean_present_skips_none_only():
    assert mean_present([1.0, None, 4.0, None]) == 2.5  # (1 + 4) / 2 by hand
    assert mean_present([None, 3]) == 3.0
    assert mean_present([]) is None and mean_present([None, None]) is None
    assert math.isnan(mean_present([1.0, math.nan, None]))  # NaN is a value, not a gap
    assert math.isnan(mean_present([math.inf, -math.inf]))  # as mean_sd: no error


def test_format_interval_by_hand():
    two = {"mean": 0.1234, "lo": -0.05, "hi": 0.2968}
    assert format_interval(two) == "+0.12 [-0.05, +0.30]"
    assert format_interval(two, ".3f", scale=100) == "12.340 [-5.000, 29.680]"
    one = {"mean": -0.004, "lo": None, "hi": None}
    assert format_interval(one) == "+0.00"  # rounds to zero: no minus sign
    assert format_interval(one, scale=100, no_interval=" (n = 1)") == "-0.40 (n = 1)"
    tiny = {"mean": -0.001, "lo": -0.003, "hi": 0.001}
    assert format_interval(tiny, ".2f") == "0.00 [0.00, 0.00]"
    assert format_mean_sd([-0.001, -0.002]) == "0.00 ± 0.00"
    # differences 2, 3, 1.5: mean 13/6, sd √(7/12), t_{0.975, 2} = 4.302653 (tables)
    half = 4.302653 * math.sqrt(7 / 12) / math.sqrt(3)
    d = paired_difference({0: 3.0, 1: 5.0, 2: 4.0}, {0: 1.0, 1: 2.0, 2: 2.5})
    assert format_interval(d, "+.4f") == f"+2.1667 [{13 / 6 - half:+.4f}, {13 / 6 + half:+.4f}]"


def test_spearman_matches_scipy_with_ties():
    import numpy as np

    g = np.random.default_rng(0)
    a, b = g.integers(0, 5, 200), g.normal(size=200)
    b[:50] = a[:50]  # some dependence
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, math.nan, 3, 4], [1, 2, 3, 4]))  # scipy: nan too


def test_values_that_are_not_finite_give_an_infinite_mean_and_no_interval():
    # A diverged run's loss is +inf: the mean is +inf, the spread unbounded, no interval.
    assert mean_sd([1.0, math.inf, 2.0]) == (math.inf, math.inf)
    out = mean_interval([1.0, 2.0, math.inf])
    assert out["mean"] == math.inf and out["lo"] is None and out["hi"] is None
    assert math.isnan(mean_sd([math.inf, -math.inf])[0])
    assert mean_sd([math.inf]) == (math.inf, 0.0)


def test_interval_or_mean_gives_the_interval_or_the_one_value():
    """Two seeds (1.0, 3.0): mean 2, sd √2, t(0.975, 1) = 12.7062 from the t table, so the
    interval is 2 ± 12.7062; one seed has no interval and is judged by its value."""
    lo, hi = interval_or_mean(mean_interval([1.0, 3.0]))
    assert lo == pytest.approx(2 - 12.7062, abs=1e-3) and hi == pytest.approx(2 + 12.7062, abs=1e-3)
    assert interval_or_mean(mean_interval([0.7])) == (0.7, 0.7)
    assert interval_or_mean(paired_difference({0: 1.0}, {0: 3.0})) == (-2.0, -2.0)


def test_ratio_db_upper_bound_matches_a_bootstrap_of_the_rows():
    """The delta-method bound against the 95th percentile of 4,000 bootstrap resamples of the
    rows (paired: a row's two values are resampled together), on skewed, correlated errors."""
    rng = np.random.default_rng(0)
    b = rng.gamma(0.8, 1.0, 3000)
    a = b * rng.lognormal(0.05, 0.3, 3000) + rng.gamma(0.5, 0.05, 3000)
    gap, upper = ratio_db_upper_bound(a, b, 0.95)
    assert gap == pytest.approx(10 * math.log10(a.sum() / b.sum()), abs=1e-12)
    rows = rng.integers(0, 3000, (4000, 3000))
    boot = 10 * np.log10(a[rows].sum(1) / b[rows].sum(1))
    assert upper - gap == pytest.approx(np.quantile(boot, 0.95) - gap, rel=0.1)
    assert ratio_db_upper_bound(a, b, 0.5) == (gap, gap)
    assert ratio_db_upper_bound(a, b, 0.99)[1] > upper > gap
    with pytest.raises(ValueError):
        ratio_db_upper_bound(a, b, 0.4)
    with pytest.raises(ValueError):
        ratio_db_upper_bound(np.zeros(3), b[:3])
    with pytest.raises(ValueError, match="finite"):
        ratio_db_upper_bound([1.0, math.inf], [1.0, 2.0])


def test_a_mean_and_sd_print_the_mean_alone_for_one_value():
    assert format_mean_and_sd(0.5, 0.1, 3, scale=100) == "50.00 ± 10.00"
    assert format_mean_and_sd(0.5, 0.0, 1, scale=100) == "50.00"  # one seed: no sd to show
    # a signed format signs the mean (a difference), never the sd
    assert format_mean_sd([-1.0, 3.0], "+.2f") == "+1.00 ± 2.83"
    assert format_mean_and_sd(-0.25, 0.5, 4, "+.1f") == "-0.2 ± 0.5"
    assert format_mean_sd([1.0, 3.0]) == "2.00 ± 1.41"  # sample sd: sqrt(2)
    assert format_mean_sd([4.0]) == "4.00"


def test_identical_methods_are_neither_above_nor_below_zero():
    """Two methods equal on every seed: every difference is 0, so sd = 0 and the interval is
    [0, 0]. It does not lie above (or below) zero — "above zero" is strict: an interval that
    touches 0 does not show a gain. By hand, and for a constant positive difference it does."""
    same = paired_difference({0: 1.5, 1: 2.0, 2: 0.25}, {0: 1.5, 1: 2.0, 2: 0.25})
    assert (same["mean"], same["sd"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0, 0.0)
    assert not same["above_zero"] and not same["below_zero"]
    ahead = paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})
    assert (ahead["lo"], ahead["hi"]) == (1.0, 1.0)
    assert ahead["above_zero"] and not ahead["below_zero"]
    behind = paired_difference({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0})
    assert behind["below_zero"] and not behind["above_zero"]


@pytest.mark.parametrize(
    "values", [[10, 20, 20], [3.0, 1.0, 2.0], [5, 5, 5, 5], [2, 1, 2, 1, 3], [0.5, -1.0, 0.5, 7.0]]
)
def test_average_ranks_match_scipy_rankdata(values):
    """1-based ranks with ties sharing the mean of the ranks they span, as scipy's "average"."""
    expected = scipy_stats.rankdata(values, method="average")
    assert average_ranks(values).tolist() == expected.tolist()


def test_ratio_db_upper_bound_by_hand():
    """a = (1, 2, 3), b = (1, 1, 2): ā = 2, b̄ = 4/3, gap = 10 log10(1.5); the per-row terms
    a_i/ā − b_i/b̄ are (−1/4, 1/4, 0), of sample variance (1/16 + 1/16) / (3 − 1) = 1/16, so
    se = (1/4)/√3 in log units and the bound is gap + z(0.95) · 10/ln 10 · se."""
    gap, upper = ratio_db_upper_bound([1.0, 2.0, 3.0], [1.0, 1.0, 2.0], 0.95)
    z = scipy_stats.norm.ppf(0.95)
    assert gap == pytest.approx(10 * math.log10(1.5), abs=1e-12)
    assert upper == pytest.approx(gap + z * 10 / math.log(10) * 0.25 / math.sqrt(3), abs=1e-12)


def test_a_mapping_where_values_are_expected_and_a_list_where_seeds_are_are_refused():
    """Iterating ``{seed: value}`` gives the seeds: mean_sd averaged them (10.50 ± 0.71 for
    {10: 0.5, 11: 0.7}); paired_difference took a list's values for seeds (mean 0.5 for
    [3, 1, 2] − [1, 2, 0] instead of 1.0)."""
    by_seed = {10: 0.5, 11: 0.7}
    with pytest.raises(TypeError, match=r"pass \.values\(\)"):
        mean_sd(by_seed)
    with pytest.raises(TypeError, match=r"pass \.values\(\)"):
        format_mean_sd(by_seed)
    assert mean_sd(by_seed.values()) == pytest.approx((0.6, math.sqrt(0.02)))
    with pytest.raises(TypeError, match="two {seed: value} mappings"):
        paired_difference([3, 1, 2], [1, 2, 0])
    assert paired_difference(dict(enumerate([3, 1, 2])), dict(enumerate([1, 2, 0])))["mean"] == 1.0
