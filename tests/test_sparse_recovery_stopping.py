"""Exit pruning, calibration by validation NMSE, the oracle stop and ISTA/FISTA tuning, against
hand computations and plain loops (the task's use of :mod:`stopwise.selection`)."""

import math
from types import SimpleNamespace

import pytest
import torch

from stopwise.inference import ScoreThreshold, stop_indices
from stopwise.selection import budget_grid, calibrate_by_metric, prune_exits
from stopwise.stats import ratio_db_upper_bound
from stopwise.tasks.sparse_recovery.data import fixed_split, sensing_matrix
from stopwise.tasks.sparse_recovery.methods import tune, validation_nmse
from stopwise.tasks.sparse_recovery.metrics import errors_at, nmse_db, oracle_stop


def test_exit_pruning_by_oracle_mass_by_hand():
    errors = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    beta = 0.5
    rows = [[math.exp(-v / beta) for v in row] for row in errors.tolist()]
    mass = [sum(r[t] / sum(r) for r in rows) / 2 for t in range(3)]  # mean q*(t) over samples
    assert mass == pytest.approx([0.4405, 0.1189, 0.4405], abs=1e-4)
    assert prune_exits(errors, beta, 0.2).tolist() == [True, False, True]
    assert prune_exits(errors, beta, 0.1).tolist() == [True, True, True]
    # nothing reaches the threshold: the exit of the largest mass survives
    assert prune_exits(torch.tensor([[5.0, 0.0, 1.0]]), 1.0, 0.99).tolist() == [False, True, False]


def test_budget_grid_spans_the_valid_exits():
    valid = torch.tensor([False, False, True, True, False, True])
    assert budget_grid(valid, 4) == pytest.approx([3.0, 4.0, 5.0, 6.0])
    assert budget_grid(torch.tensor([False, True, False]), 5) == [2.0]


def test_calibration_picks_the_budget_of_least_validation_nmse():
    generator = torch.Generator().manual_seed(0)
    N, T = 300, 6
    errors = torch.rand(N, T, generator=generator) + 0.1
    energies = torch.ones(N)
    hazards = torch.randn(N, T, generator=generator)
    valid = torch.tensor([True, True, False, True, True, True])

    def val_nmse(index):
        return nmse_db(errors_at(errors, index), energies)

    result = calibrate_by_metric(
        hazards, val_nmse, budget_grid(valid, 9), ("hazard",), valid, lower_is_better=True
    )
    assert len(result.candidates) == 9
    for candidate in result.candidates:
        assert candidate["cost"] <= candidate["budget"] + 1e-9
    assert result.value == min(c["value"] for c in result.candidates)
    assert isinstance(result.rule, ScoreThreshold)
    # the chosen rule, applied by a plain loop: first valid step before the last valid one whose
    # hazard logit reaches the threshold, else the last valid step
    threshold, last = float(result.rule.score_threshold), 5
    index = []
    for row in hazards.tolist():
        index.append(next((t for t in range(last) if valid[t] and row[t] >= threshold), last))
    index = torch.tensor(index)
    assert torch.equal(index, stop_indices(hazards, result.rule, valid))
    assert nmse_db(errors_at(errors, index), energies) == pytest.approx(result.value)
    assert float((index + 1).double().mean()) == pytest.approx(result.mean_cost)


def test_the_threshold_row_is_the_cheapest_budget_within_tolerance_with_confidence():
    """Errors fall with depth and a hazard that knows it: at confidence 0.5 the row is the
    cheapest candidate whose validation NMSE is within the tolerance (read off the candidates);
    at 0.95 the cheapest whose bound over the rows is, which costs at least as much."""
    from stopwise.tasks.sparse_recovery.experiment import threshold_row_rule

    generator = torch.Generator().manual_seed(1)
    N, T = 2000, 10
    scale = torch.rand(N, 1, generator=generator) * 4
    errors = torch.exp(-scale * torch.arange(T)) + 0.05 * torch.rand(N, T, generator=generator)
    hazards = scale * torch.arange(T) + torch.randn(N, T, generator=generator)
    valid, energies = torch.ones(T, dtype=torch.bool), torch.ones(N)

    def val_nmse(index):
        return nmse_db(errors_at(errors, index), energies)

    calibration = calibrate_by_metric(
        hazards, val_nmse, budget_grid(valid, 30), ("hazard",), valid, lower_is_better=True
    )
    full = val_nmse(torch.full((N,), T - 1))
    fitted = SimpleNamespace(valid=valid)

    def row(confidence):
        config = SimpleNamespace(threshold_row="match-full", match_tolerance=0.2,
                                 match_confidence=confidence)  # fmt: skip
        index = stop_indices(hazards, threshold_row_rule(calibration, hazards, errors, fitted,
                                                         config), valid)  # fmt: skip
        return index, float((index + 1).double().mean())

    point, point_cost = row(0.5)
    within = [c for c in calibration.candidates if c["value"] <= full + 0.2]
    assert point_cost == pytest.approx(min(c["cost"] for c in within))
    sure, sure_cost = row(0.95)
    assert sure_cost > point_cost
    assert ratio_db_upper_bound(errors_at(errors, sure), errors[:, -1], 0.95)[1] <= 0.2
    assert ratio_db_upper_bound(errors_at(errors, point), errors[:, -1], 0.95)[1] > 0.2


def test_oracle_stop_is_the_best_valid_exit():
    errors = torch.tensor([[5.0, 1.0, 0.5], [0.2, 3.0, 1.0], [4.0, 0.1, 2.0]])
    valid = torch.tensor([True, False, True])
    assert oracle_stop(errors, valid).tolist() == [2, 0, 2]
    assert oracle_stop(errors, torch.ones(3, dtype=torch.bool)).tolist() == [2, 0, 1]


def test_tuning_returns_the_best_trial_and_never_loses_to_the_start():
    A = sensing_matrix(20, 40, 5.0, torch.Generator().manual_seed(0))
    val = fixed_split(A, 20, 0.1, [20.0, 30.0, 40.0], torch.Generator().manual_seed(3))
    result = tune("ista", A, 10, val.y, val.x, (2.7, 0.2), [0.5, 2.0], [0.8, 1.3])
    scores = {(t["L"], t["lam"]): t["validation_nmse"] for t in result["trials"]}
    assert len(scores) == 5  # 3 λ values, then 2 more L values
    assert result["validation_nmse"] == min(scores.values())
    assert result["validation_nmse"] <= result["start"]["validation_nmse"]
    assert result["validation_nmse"] == pytest.approx(
        validation_nmse("ista", A, 10, result["L"], result["lam"], val.y, val.x)
    )
    with pytest.raises(ValueError, match="unknown algorithm"):
        tune("nesterov", A, 10, val.y, val.x, (2.7, 0.2), [1.0], [1.0])


def test_the_domination_verdict_needs_the_interval_below_zero_in_the_lower_half():
    """Sparse recovery's own verdict (its comparator mixes depths in linear NMSE) uses the same
    rule as stopwise.curves.dominance: a lower-half margin counts only when its 95% interval over
    seeds is below zero; more than one sd below zero is not enough."""
    from stopwise.tasks.sparse_recovery.report import _domination

    seeds, T = [0, 1, 2], 8

    def point(budget, steps, margin, sd, interval):
        per_seed = {s: {"mean_steps": steps, "mixed": -10.0} for s in seeds}
        return {"budget": budget, "mean_steps": steps, "margin": margin, "margin_sd": sd,
                "margin_interval": interval, "per_seed": per_seed}  # fmt: skip

    rows = {
        s: {"m-full": {"mixed": -12.0}, "m-threshold": {"mixed": -12.0, "mean_steps": 8}}
        for s in seeds
    }
    noisy = point(2, 2.0, -0.2, 0.1, [-0.5, 0.1])  # 2 sd below zero, interval across it
    upper = point(8, 8.0, 0.0, 0.0, [0.0, 0.0])
    verdict = _domination([noisy, upper], rows, "m", seeds, T, 0.1)
    assert verdict["dominates"] and not verdict["strictly_better_lower_half"]
    clear = point(3, 3.0, -0.15, 0.05, [-0.3, -0.02])
    verdict = _domination([noisy, clear, upper], rows, "m", seeds, T, 0.1)
    assert verdict["strictly_better_lower_half"]
    assert verdict["best_lower_half"]["budget"] == 3  # the separated point, not the larger mean
    one = _domination([point(2, 2.0, -0.2, 0.0, [None, None]), upper], rows, "m", [0], T, 0.1)
    assert one["strictly_better_lower_half"]


def test_the_full_depth_target_is_judged_on_the_threshold_row_by_its_interval():
    """The threshold row (its budget chosen on validation) must be within the tolerance of full
    depth and at ≤ 75% of the layers by the tops of the 95% t intervals over seeds; the cheapest
    curve point within the tolerance on test is picked on test and decides nothing."""
    import numpy as np
    from scipy.stats import t as student_t

    from stopwise.tasks.sparse_recovery.report import _domination

    def top(values):
        values = np.asarray(values)
        return values.mean() + student_t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(
            len(values)
        )

    seeds, T, full = [0, 1, 2], 20, -25.0
    # every seed's test curve reaches full depth's NMSE at 8 steps: the best case is "met"
    curve = [
        {"budget": b, "mean_steps": b, "margin": 0.0, "margin_sd": 0.0, "margin_interval": [0.0, 0.0],
         "per_seed": {s: {"mean_steps": b, "mixed": full if b >= 8 else -20.0} for s in seeds}}
        for b in (2.0, 8.0, 20.0)
    ]  # fmt: skip

    def verdict(gaps, steps):
        rows = {
            s: {"m-full": {"mixed": full}, "m-threshold": {"mixed": full + g, "mean_steps": n}}
            for s, g, n in zip(seeds, gaps, steps, strict=True)
        }
        return _domination(curve, rows, "m", seeds, T, 0.1)

    scattered = [0.08, 0.04, 0.12]  # mean 0.08 within 0.1, the interval's top is not
    assert np.mean(scattered) <= 0.1 < top(scattered)
    missed = verdict(scattered, [10.9, 11.0, 11.1])
    assert missed["full_depth_reached_mean"] == 8.0 and not missed["full_depth_met"]
    assert missed["threshold_row_gap"]["hi"] == pytest.approx(top(scattered))
    assert verdict([0.03, 0.04, 0.05], [10.9, 11.0, 11.1])["full_depth_met"]
    many_steps = [14.0, 15.0, 15.5]  # mean 14.8 ≤ 15, the interval's top is not
    assert np.mean(many_steps) <= 15 < top(many_steps)
    assert not verdict([0.03, 0.04, 0.05], many_steps)["full_depth_met"]


def _ista_nmse_by_hand(A, y, x, iterations, L, lam):
    """NMSE(dB) of plain ISTA, x ← η_{λ/L}(x − Aᵀ(Ax − y)/L) from 0, written out in float64."""
    A, y, x = A.double(), y.double(), x.double()
    estimate = torch.zeros_like(x)
    for _ in range(iterations):
        v = estimate - (estimate @ A.T - y) @ A / L
        estimate = v.sign() * (v.abs() - lam / L).clamp_min(0)
    return 10 * math.log10(float(((estimate - x) ** 2).sum()) / float((x**2).sum()))


def test_tuning_searches_L_at_the_best_lambda_not_at_the_start():
    """The coordinate search: λ over the grid at the start's L, then L over its grid at the
    *best* λ. A start λ ten times too large makes the best λ differ from the start, so the L
    sweep must be the one at the chosen λ (by plain ISTA in float64)."""
    A = sensing_matrix(20, 40, 5.0, torch.Generator().manual_seed(0))
    val = fixed_split(A, 20, 0.1, [20.0, 30.0, 40.0], torch.Generator().manual_seed(3))
    L0, lam0, lam_factors, L_factors = 2.7, 2.0, [0.1], [0.8, 1.3]
    result = tune("ista", A, 10, val.y, val.x, (L0, lam0), lam_factors, L_factors)

    def nmse(L, lam):
        return _ista_nmse_by_hand(A, val.y, val.x, 10, L, lam)

    lams = [lam0 * f for f in (1.0, *lam_factors)]
    lam_best = min(lams, key=lambda lam: nmse(L0, lam))
    assert lam_best == pytest.approx(0.2)  # the start's λ is not the best: the case at hand
    Ls = [L0 * f for f in (1.0, *L_factors)]
    L_best = min(Ls, key=lambda L: nmse(L, lam_best))
    assert result["lam"] == pytest.approx(lam_best)
    assert result["L"] == pytest.approx(L_best)
    assert result["validation_nmse"] == pytest.approx(nmse(L_best, lam_best), abs=1e-3)
    tried = {(round(t["L"], 6), round(t["lam"], 6)) for t in result["trials"]}
    expected = {(round(L0, 6), round(lam, 6)) for lam in lams}
    expected |= {(round(L, 6), round(lam_best, 6)) for L in Ls}
    assert tried == expected


def test_validation_margins_count_steps_from_one_and_compare_with_fixed_depth():
    """validation_margins on scores that stop each row at a known exit whatever the threshold
    (a hazard logit of +50 there, −50 before): mean steps 1-based, the stop curve's NMSE that
    of the stopped errors, the hull the linear-NMSE mix of fixed depths, by hand."""
    from stopwise.tasks.sparse_recovery.methods import validation_margins

    stop = torch.tensor([0, 0, 1, 2])  # 0-based exits: mean steps (1 + 1 + 2 + 3) / 4 = 1.75
    T = 3
    scores = torch.full((4, T), -50.0)
    scores[torch.arange(4), stop] = 50.0
    errors = torch.tensor([[1.0, 0.5, 0.25], [2.0, 1.0, 0.5], [4.0, 1.0, 0.5], [8.0, 4.0, 1.0]])
    energies = torch.tensor([10.0, 10.0, 10.0, 10.0])
    valid = torch.ones(T, dtype=torch.bool)
    points = validation_margins(scores, errors, energies, [1.75], "hazard", valid)
    assert len(points) == 1  # the budget the policy meets exactly
    stopped = sum(errors[i, int(stop[i])] for i in range(4))
    nmse = 10 * math.log10(float(stopped) / 40.0)
    depth = [float(errors[:, t].sum()) / 40.0 for t in range(T)]  # linear NMSE per fixed depth
    hull = 10 * math.log10(0.25 * depth[0] + 0.75 * depth[1])  # mean depth 1.75: 1 and 2 mixed
    point = points[0]
    assert point["mean_steps"] == pytest.approx(1.75)
    assert point["nmse"] == pytest.approx(nmse)
    assert point["hull"] == pytest.approx(hull)  # mixing depths 1 and 3 would do worse here
    assert point["margin"] == pytest.approx(nmse - hull)
