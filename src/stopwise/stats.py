"""Statistics for reports over seeds: mean ± sd, Student-t intervals, paired differences.

A comparison between two methods is paired: both run on the same seeds (same data, same initial
weights), and the interval is that of the mean of the per-seed differences,
mean ± t_{0.975, n−1} · sd / √n. A target is met when the interval says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .reporting import format_number

__all__ = [
    "mean_sd",
    "mean_present",
    "t_quantile",
    "mean_interval",
    "paired_difference",
    "format_mean_sd",
    "format_mean_and_sd",
    "over_seeds",
    "format_interval",
    "interval_or_mean",
    "ratio_db_upper_bound",
    "average_ranks",
    "spearman",
]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value). Raises on an empty sequence.

    Values that are not finite (a diverged run's loss) give their mean (±inf, or NaN for both
    signs) and, for two values or more, an infinite sd, where :func:`statistics.stdev` would fail.
    """
    if isinstance(values, Mapping):  # iterating it would average the keys (the seeds)
        raise TypeError("mean_sd takes a sequence of values; for {seed: value}, pass .values()")
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_sd of no values")
    if len(values) == 1:
        return values[0], 0.0
    if not all(math.isfinite(v) for v in values):
        return sum(values) / len(values), math.inf
    largest = max(abs(v) for v in values)
    if largest > 2.0**960:  # near the float maximum the sums overflow: scale by a power of two
        scale = 2.0 ** (960 - math.frexp(largest)[1])  # exact both ways, small values stay normal
        mean, sd = mean_sd([v * scale for v in values])
        return mean / scale, sd / scale  # an sd beyond the float maximum is inf
    return statistics.fmean(values), statistics.stdev(values)


def mean_present(values: Sequence[float | None]) -> float | None:
    """:func:`mean_sd`'s mean of the values that are not None (a seed where a number is
    undefined is left out); None when no value is present."""
    present = [v for v in values if v is not None]
    return mean_sd(present)[0] if present else None


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1); got {q}")
    if df <= 0:
        raise ValueError(f"df must be > 0; got {df}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, sd, n and the two-sided Student-t interval of the mean (None bounds for n < 2 or
    values that are not all finite)."""
    mean, sd = mean_sd(values)
    n = len(values)
    if n < 2 or not math.isfinite(sd):
        return {"mean": mean, "sd": sd, "n": n, "lo": None, "hi": None, "level": level}
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "lo": mean - half, "hi": mean + half, "level": level}


def paired_difference(
    a: Mapping[Any, float], b: Mapping[Any, float], level: float = 0.95
) -> dict[str, Any]:
    """``a − b`` over the keys (seeds) both have: mean, sd, interval and the per-seed values.

    ``above_zero`` / ``below_zero`` say whether the whole interval lies on one side of 0.
    """
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)):  # a list's values are no seeds
        raise TypeError("paired_difference takes two {seed: value} mappings")
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ValueError("paired_difference: the two sides share no seed")
    diffs = [float(a[k]) - float(b[k]) for k in keys]
    out = mean_interval(diffs, level)
    out["per_seed"] = dict(zip(keys, diffs, strict=True))
    out["above_zero"] = out["lo"] is not None and out["lo"] > 0
    out["below_zero"] = out["hi"] is not None and out["hi"] < 0
    return out


def format_mean_sd(values: Sequence[float], fmt: str = ".2f", scale: float = 1.0) -> str:
    """``"m ± s"`` of the values times ``scale`` (just ``"m"`` for one value)."""
    mean, sd = mean_sd(values)
    return format_mean_and_sd(mean, sd, len(values), fmt, scale)


def format_mean_and_sd(mean: float, sd: float, n: int, fmt: str = ".2f", scale: float = 1.0) -> str:
    """``"m ± s"`` of a mean and sd over ``n`` values, times ``scale``; just ``"m"`` for one
    value, which has no sd to show. A sign in ``fmt`` (``"+.2f"``) applies to the mean only."""
    if n < 2:
        return format_number(scale * mean, fmt)
    return f"{format_number(scale * mean, fmt)} ± {format_number(abs(scale) * sd, fmt.lstrip('+'))}"


def over_seeds(seeds: Sequence[int]) -> str:
    """What a table's cells are over ``seeds``: ``"mean ± sd over 3 seeds [0, 1, 2]"``, or for
    one seed ``"seed 4 alone (no sd)"``, as :func:`format_mean_sd` shows it."""
    seeds = list(seeds)
    if len(seeds) == 1:
        return f"seed {seeds[0]} alone (no sd)"
    return f"mean ± sd over {len(seeds)} seeds {seeds}"


def format_interval(
    d: Mapping[str, Any], fmt: str = "+.2f", scale: float = 1.0, no_interval: str = ""
) -> str:
    """``"m [lo, hi]"`` of a :func:`mean_interval` or :func:`paired_difference` result, each
    number times ``scale`` and formatted with ``fmt``; where the interval is undefined (one
    seed) the mean alone, followed by ``no_interval``."""
    text = format_number(scale * d["mean"], fmt)
    if d["lo"] is None:
        return text + no_interval
    return f"{text} [{format_number(scale * d['lo'], fmt)}, {format_number(scale * d['hi'], fmt)}]"


def interval_or_mean(d: Mapping[str, Any]) -> tuple[float, float]:
    """``(lo, hi)`` of a :func:`mean_interval` or :func:`paired_difference` result, or
    ``(mean, mean)`` where the interval is undefined (one seed): what a target over seeds is
    judged by ("met when the interval says so"; one seed can only be judged by its value)."""
    if d["lo"] is None:
        return d["mean"], d["mean"]
    return d["lo"], d["hi"]


def ratio_db_upper_bound(a, b, confidence: float = 0.95) -> tuple[float, float]:
    """``(gap, upper)`` in dB of the ratio of two paired sums, gap = 10 log10(Σa / Σb), and the
    one-sided ``confidence`` upper bound gap + z · se over the rows (delta method: the log of a
    ratio of two means has variance Var(a_i / ā − b_i / b̄) / n to first order). ``a``, ``b``:
    ``(n,)`` per-row values of the same rows (e.g. squared errors of one model at two depths).
    ``confidence`` 0.5 gives the gap itself."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError("ratio_db_upper_bound needs two paired 1-D arrays of ≥ 2 rows")
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must lie in [0.5, 1); got {confidence}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("ratio_db_upper_bound needs finite values")
    if not (a.mean() > 0 and b.mean() > 0):
        raise ValueError("ratio_db_upper_bound needs positive means (a ratio in dB)")
    gap = 10.0 * math.log10(a.mean() / b.mean())
    se = np.std(a / a.mean() - b / b.mean(), ddof=1) / math.sqrt(len(a))
    z = statistics.NormalDist().inv_cdf(confidence)
    return gap, gap + z * 10.0 / math.log(10.0) * float(se)


def average_ranks(values) -> np.ndarray:
    """1-based ranks of a 1-D array, ties sharing the mean of the ranks they span."""
    values = np.asarray(values)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # the last 1-based rank of each distinct value
    return ((ends - counts + 1 + ends) / 2.0)[inverse.reshape(-1)]


def spearman(a, b) -> float:
    """Spearman's rank correlation with average ranks for ties; NaN when either side is constant
    or has a NaN."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths; got {a.shape[0]} and {b.shape[0]}")
    if np.isnan(a).any() or np.isnan(b).any():
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else math.nan
