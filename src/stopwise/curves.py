"""A stop model's budget curve against fixed depth: does learning to stop pay?

A budget curve is a list of points (dicts) with a cost (``mean_steps`` by default) and a quality
(``key``), one per threshold. The comparator at a mean cost is the best *fixed-depth* strategy
that costs no more: every row stops at depth a or b in the shares that give that mean, so its
quality is the linear mix of the two depths' (exact for a quality that is a mean over rows:
accuracy, mean PSNR, mean log suboptimality). Taking the best pair, not only the two neighbouring
depths, and any cheaper depth, makes the comparator the monotone hull of the fixed-depth points.

:func:`dominance` gives issue 17's verdict for one curve: at every point at least as good as
that comparator, and strictly better somewhere in the lower half of the fixed depths' cost range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import fmean
from typing import Any

from .reporting import format_number
from .stats import mean_interval

__all__ = ["mean_curve", "best_fixed_mix", "dominance", "dominance_line"]


def mean_curve(curves: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, float]]:
    """Point-wise mean over seeds of curves with the same points (numeric fields only; a field
    is averaged over the seeds where it is a number, e.g. a Spearman ρ undefined on some)."""
    out = []
    for points in zip(*curves, strict=True):
        numbers: dict[str, list[float]] = {}
        for point in points:
            for k, v in point.items():
                if isinstance(v, int | float):
                    numbers.setdefault(k, []).append(v)
        out.append({k: fmean(values) for k, values in numbers.items()})
    return out


def best_fixed_mix(
    fixed: Sequence[dict[str, Any]],
    cost: float,
    key: str,
    *,
    higher_is_better: bool,
    x: str = "mean_steps",
) -> float:
    """The best ``key`` a mix of two fixed depths reaches at a mean ``x`` of at most ``cost``
    (a cheaper depth that is better counts: running it costs less than the budget).

    ``fixed``: one point per depth with ``x`` and ``key``. Below the cheapest depth the cheapest
    depth's value is returned (no fixed depth is cheaper, so the comparison there is generous to
    fixed depth).
    """
    points = sorted((float(p[x]), float(p[key])) for p in fixed)
    if not points:
        raise ValueError("no fixed-depth points to compare with")
    sign = 1.0 if higher_is_better else -1.0
    cheapest = points[0][0]
    if cost <= cheapest:  # the best of the cheapest depths (two may cost the same)
        candidates = [sign * v for xv, v in points if xv == cheapest]
    else:
        candidates = []
        for i, (xa, va) in enumerate(points):
            if xa > cost:
                break
            candidates.append(sign * va)
            for xb, vb in points[i + 1 :]:
                if xb > cost:  # the shares of a and b whose mean cost is exactly ``cost``
                    share = (cost - xa) / (xb - xa)
                    candidates.append(sign * ((1 - share) * va + share * vb))
    # A depth whose value is undefined (NaN: it diverged) leaves the comparison undefined, so
    # no gain over it is claimed (max() would keep or drop a NaN by its place in the list).
    if any(math.isnan(c) for c in candidates):
        return math.nan
    return sign * max(candidates)


def dominance(
    curves: Sequence[Sequence[dict[str, Any]]],
    fixed: Sequence[Sequence[dict[str, Any]]],
    key: str,
    *,
    higher_is_better: bool,
    x: str = "mean_steps",
    tolerance: float = 1e-9,
) -> dict[str, Any]:
    """Issue 17's target for one stop model's budget curve against the same model at fixed depth,
    over seeds: ``curves[s]`` and ``fixed[s]`` are seed s's curve and fixed-depth points (one
    seed: ``[curve]``, ``[fixed]``); curve points are matched by position across seeds.

    A point's *gain* is, averaged over seeds, its quality minus :func:`best_fixed_mix` of the
    same seed at its cost, signed so that positive means the stop model is better (each seed's
    model against its own fixed depth), with the 95% Student-t interval of that mean over seeds
    (``lo``/``hi``; None for one seed): how far a miss or a gain stands out from seed noise.
    The curve ``dominates`` when no mean gain is below ``−tolerance`` (by the mean: where the
    two are equal no interval can show "equal or better", and the mean rule is stricter than
    asking only that no point's interval lie below zero; the worst point's interval is
    reported beside it); it is
    ``strictly_better_lower_half`` when some point whose mean cost is at most the middle of the
    fixed depths' range gains more than ``tolerance`` and, over two seeds or more, the whole
    95% interval of that gain is above ``tolerance`` (a target is met when the interval says
    so, not when the mean crosses a line; one seed has no interval and is judged by its gain);
    ``met`` is both. ``best_lower_half_*`` is the lower-half point with the largest such
    gain, or with the largest mean gain where none is above its noise.
    """
    if not curves or not all(curves) or len({len(c) for c in curves}) != 1:
        raise ValueError("budget curves must be non-empty, one per seed, of equal length")
    if len(fixed) != len(curves):
        raise ValueError(f"{len(curves)} curves but {len(fixed)} fixed-depth curves")
    sign = 1.0 if higher_is_better else -1.0

    def gain(point: dict[str, Any], seed_fixed) -> float:
        best = best_fixed_mix(seed_fixed, float(point[x]), key, higher_is_better=higher_is_better,
                              x=x)  # fmt: skip
        return sign * (float(point[key]) - best)

    gains = []
    for points in zip(*curves, strict=True):
        per_seed = mean_interval([gain(p, f) for p, f in zip(points, fixed, strict=True)])
        gains.append({"cost": fmean(float(p[x]) for p in points), "gain": per_seed["mean"],
                      "lo": per_seed["lo"], "hi": per_seed["hi"]})  # fmt: skip
    costs = [float(p[x]) for seed_fixed in fixed for p in seed_fixed]
    middle = (min(costs) + max(costs)) / 2

    # An undefined gain (a diverged point: NaN quality) is the worst, wherever it falls.
    def ranked(g: dict[str, Any]) -> tuple[bool, float]:
        return not math.isnan(g["gain"]), g["gain"]

    worst = min(gains, key=ranked)
    lower = [g for g in gains if g["cost"] <= middle]
    one_seed = len(curves) == 1  # no interval: judged by its gain
    separated = [
        g
        for g in lower
        if g["gain"] > tolerance and (one_seed or (g["lo"] is not None and g["lo"] > tolerance))
    ]
    best_lower = max(separated or lower, key=ranked) if lower else None
    dominates = worst["gain"] >= -tolerance  # False for NaN
    strictly = bool(separated)
    return {
        "quality": key,
        "cost": x,
        "higher_is_better": higher_is_better,
        "seeds": len(curves),
        "points": len(gains),
        "gains": gains,
        "worst_gain": worst["gain"],
        "worst_gain_at": worst["cost"],
        "worst_gain_interval": [worst["lo"], worst["hi"]],
        "best_lower_half_gain": best_lower and best_lower["gain"],
        "best_lower_half_at": best_lower and best_lower["cost"],
        "best_lower_half_interval": best_lower and [best_lower["lo"], best_lower["hi"]],
        "dominates": dominates,
        "strictly_better_lower_half": strictly,
        "met": dominates and strictly,
    }


def dominance_line(
    label: str, verdict: dict[str, Any], unit: str, scale: float = 1.0, cost_unit: str = "steps"
) -> str:
    """One sentence for a table: the verdict, the worst gain and the best lower-half gain
    (``scale`` multiplies the gains, e.g. 100 for accuracy in points)."""

    def signed(value: float) -> str:
        return format_number(scale * value, "+.3g")

    def interval(bounds) -> str:  # " [lo, hi]" over seeds, "" for one seed (or older records)
        if not bounds or bounds[0] is None:
            return ""
        return f" [{signed(bounds[0])}, {signed(bounds[1])}]"

    worst = (
        f"{signed(verdict['worst_gain'])}{interval(verdict.get('worst_gain_interval'))} "
        f"{unit} at {verdict['worst_gain_at']:.3g} {cost_unit}"
    )
    if verdict["best_lower_half_gain"] is None:
        lower = "no point in the lower half of the fixed depths' range"
    else:
        lower = (
            f"best in the lower half {signed(verdict['best_lower_half_gain'])}"
            f"{interval(verdict.get('best_lower_half_interval'))} {unit} at "
            f"{verdict['best_lower_half_at']:.3g} {cost_unit}"
        )
    answer = "yes" if verdict["met"] else "no"
    seeds = verdict.get("seeds", 1)
    over = f"; [95% interval over {seeds} seeds]" if seeds > 1 else ""
    separated = " (its interval above zero)" if seeds > 1 else ""
    # "equal or better" cannot be shown by an interval where the two are equal, so it is
    # judged by the mean: stricter than "no point's interval below zero"
    by_mean = " (no point's mean gain below zero)" if seeds > 1 else ""
    return (
        f"{label}: no worse than fixed depth at every budget{by_mean} and better in the lower "
        f"half{separated} "
        f"— {answer} "
        f"(worst gain over fixed depth {worst}; {lower}; a positive gain: the stop model is "
        f"better{over})"
    )
