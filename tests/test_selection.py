"""Floored thresholds (stopwise.selection.fit_floored_threshold) against a brute force written
out with plain loops, and the guarantees they exist for: within a budget, never worse on
validation than fixed depth, and (with mixes) than a mix of two fixed depths."""

import math

import pytest
import torch

from stopwise.inference import THRESHOLD_KINDS, MixedRule, stop_indices
from stopwise.selection import (
    budget_sweep,
    calibrate_by_metric,
    fit_floored_threshold,
    floored_rules,
    point_rule,
    prune_exits,
    rule_record,
)


def _problem(seed: int, rows: int = 40, steps: int = 5):
    g = torch.Generator().manual_seed(seed)
    hazards = torch.randn(rows, steps, generator=g, dtype=torch.float64).round(decimals=1)
    quality = torch.rand(rows, steps, generator=g, dtype=torch.float64).cumsum(1)
    costs = torch.rand(steps, generator=g, dtype=torch.float64).add(0.1).cumsum(0)
    valid = torch.ones(steps, dtype=torch.bool)
    valid[1] = False
    return hazards, quality, costs, valid


def _kind_scores(hazards, valid, kind):
    """The score each kind thresholds, by a plain loop: the hazard logit, or P(stopped by t) =
    1 − ∏ (1 − σ(h_τ)) over the valid steps τ ≤ t."""
    N, T = hazards.shape
    if kind == "hazard":
        return hazards.tolist()
    out = []
    for i in range(N):
        survive, row = 1.0, []
        for t in range(T):
            if valid[t]:
                survive *= 1 - 1 / (1 + math.exp(-float(hazards[i, t])))
            row.append(1 - survive)
        out.append(row)
    return out


def _stop(row, allowed, threshold):
    """The first allowed step (but the last) whose score ≥ threshold, else the last allowed."""
    steps = [t for t, ok in enumerate(allowed) if ok]
    for t in steps[:-1]:
        if row[t] >= threshold:
            return t
    return steps[-1]


def _brute_force(hazards, quality, costs, valid, budget, kind, decision=None):
    """Every valid floor; at each, the threshold of most cost within the budget (trying every
    observed score and ±inf) and −inf; the best mean quality, then the least cost. Under a
    floor f a row stopping at t costs costs[t] less the decision costs of valid steps < f."""
    N, T = hazards.shape
    scores = _kind_scores(hazards, valid, kind)
    observed = sorted({v for i in range(N) for t in range(T) if valid[t] for v in [scores[i][t]]})
    best = None
    for floor in range(T):
        if not valid[floor]:
            continue
        allowed = [bool(valid[t]) and t >= floor for t in range(T)]

        # Only a hazard rule skips the policy before its floor; a cumulative one sums every
        # hazard from the first step on, so its floor saves nothing.
        skips = decision and kind == "hazard"
        saved = sum(float(decision[u]) for u in range(floor) if valid[u]) if skips else 0.0

        def run(threshold, allowed=allowed, saved=saved):
            index = [_stop(scores[i], allowed, threshold) for i in range(N)]
            cost = sum(float(costs[t]) - saved for t in index) / N
            value = sum(float(quality[i, t]) for i, t in enumerate(index)) / N
            return index, cost, value

        feasible = [
            r for r in (run(th) for th in [-math.inf, math.inf, *observed])
            if r[1] <= budget + 1e-12
        ]  # fmt: skip
        if not feasible:
            continue
        spending = max(feasible, key=lambda r: r[1])
        # better, then cheaper, then fixed depth (its cost does not depend on the input)
        for (index, cost, value), fixed in ((spending, False), (run(-math.inf), True)):
            key = (-value, cost, not fixed)
            if best is None or key < best[0]:
                best = (key, index, floor)
    return best[1], best[2]


@pytest.mark.parametrize("decided", [False, True], ids=["no-decision-costs", "decision-costs"])
@pytest.mark.parametrize("kind", ["hazard", "cumulative"])
@pytest.mark.parametrize("seed", range(4))
def test_floored_threshold_against_a_brute_force(seed, kind, decided):
    hazards, quality, costs, valid = _problem(seed)
    decision = [0.05, 0.3, 0.02, 0.1, 0.0] if decided else None

    def metric(index):
        return float(quality.gather(1, index.view(-1, 1)).mean())

    budgets = torch.linspace(float(costs[0]), float(costs[-1]), 7, dtype=torch.float64)
    for budget in budgets.tolist():
        rule, floor = fit_floored_threshold(
            hazards, budget, metric, costs, valid, kind=kind,
            decision_costs=None if decision is None else torch.tensor(decision), mixes=False,
            lower_is_better=False)  # fmt: skip
        index, want_floor = _brute_force(hazards, quality, costs, valid, budget, kind, decision)
        assert floor == want_floor
        assert stop_indices(hazards, rule, valid).tolist() == index
        assert isinstance(rule, THRESHOLD_KINDS[kind])


def test_a_later_floor_can_fit_a_budget_an_earlier_one_cannot():
    """Every row stopped at the second step costs 2.0 (its exit head is costly); at the third
    only 2.9 − 1.2 = 1.7, that head saved: a budget of 1.95 fits the third step's floor but not
    the second's, and the search must not stop at the first floor that does not fit."""
    hazards = torch.zeros(6, 3, dtype=torch.float64)
    costs = torch.tensor([1.0, 2.0, 2.9], dtype=torch.float64)
    decision = torch.tensor([0.0, 1.2, 0.0], dtype=torch.float64)
    quality = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64).expand(6, 3)

    def metric(index):
        return float(quality.gather(1, index.view(-1, 1)).mean())

    rule, floor = fit_floored_threshold(
        hazards, 1.95, metric, costs, decision_costs=decision, lower_is_better=False)  # fmt: skip
    assert floor == 2 and stop_indices(hazards, rule).tolist() == [2] * 6


def test_a_floor_saves_the_decision_costs_before_it():
    """Every row at fixed depth 3 under a floor at step 3 (0-based 2): the budget curve costs it
    at costs[2] less the decision costs of the valid steps 0 and 1 (step 1 is not valid)."""
    hazards = torch.full((10, 4), -5.0, dtype=torch.float64)
    quality = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64).expand(10, 4)
    costs = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    decision = torch.tensor([0.25, 0.5, 0.125, 0.0], dtype=torch.float64)
    valid = torch.tensor([True, False, True, True])

    def metric(index):
        return float(quality.gather(1, index.view(-1, 1)).mean())

    (point,) = budget_sweep(hazards, hazards, [2.75], lambda i: {}, valid=valid, costs=costs,
                            val_metric=metric, decision_costs=decision,
                            lower_is_better=False)  # fmt: skip
    assert point["floor_steps"] == 3 and point["mean_cost"] == 3.0 - 0.25


def test_a_cumulative_floor_saves_no_decision_costs():
    """A cumulative rule asks the policy at every step (it sums the hazards from the first one),
    so a floor at step 3 costs the full 3.0, not 3.0 − 2 × 0.5: over a budget of 2.0, where the
    hazard kind may take it."""
    hazards = torch.full((4, 3), -5.0, dtype=torch.float64)
    quality = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64).expand(4, 3)
    costs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    decision = torch.full((3,), 0.5, dtype=torch.float64)

    def metric(index):
        return float(quality.gather(1, index.view(-1, 1)).mean())

    for kind, stop in (("cumulative", 1), ("hazard", 2)):
        (point,) = budget_sweep(hazards, hazards, [2.0], lambda i: {}, kind, costs=costs,
                                val_metric=metric, decision_costs=decision,
                                lower_is_better=False)  # fmt: skip
        rule = point_rule(point, kind)
        assert stop_indices(hazards, rule).tolist() == [stop] * 4, kind
        assert rule.needs_policy(0) == (kind == "cumulative")
        assert point["val_mean_cost"] == 2.0


def test_grid_thresholds_are_compared_as_the_rules_compare_them():
    """float32 scores one ulp apart: a quantile between two of them, kept in float64, would stop
    rows the returned float32 rule does not (or the other way round), so a mix judged better on
    validation could be worse when run. Over many such problems the chosen rule, run, is never
    worse on validation than the best single rule or than any fixed depth within the budget."""
    eps = torch.finfo(torch.float32).eps
    costs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for trial in range(300):
        g = torch.Generator().manual_seed(trial)
        hazards = 1.0 + torch.randint(0, 3, (5, 3), generator=g).float() * eps
        quality = torch.randn(5, 3, generator=g, dtype=torch.float64)
        budget = 1.0 + 2.0 * float(torch.rand(1, generator=g))

        def metric(index, quality=quality):
            return float(quality.gather(1, index.view(-1, 1)).mean())

        mixed, _ = fit_floored_threshold(hazards, budget, metric, costs, lower_is_better=False)
        single, _ = fit_floored_threshold(
            hazards, budget, metric, costs, mixes=False, lower_is_better=False
        )
        got = metric(stop_indices(hazards, mixed))
        fixed = max(metric(torch.full((5,), t)) for t in range(3) if costs[t] <= budget)
        assert got >= metric(stop_indices(hazards, single)) - 1e-12, trial
        assert got >= fixed - 1e-12, trial


@pytest.mark.parametrize("seed", range(6))
def test_no_budget_is_worse_on_validation_than_fixed_depth_within_it(seed):
    """Even for a score that knows nothing (random hazards), each budget's rule is at least as
    good on validation as every fixed depth that fits in the budget. Quality here is concave
    in cost, so at a budget equal to a depth's cost the plain threshold (a random mix of depths
    of that mean cost) is worse than that depth: checked too, so the test can fail."""
    hazards, _, costs, valid = _problem(seed, rows=200)
    g = torch.Generator().manual_seed(seed)
    quality = 1 - torch.exp(-costs) + 0.01 * torch.rand(200, 5, generator=g, dtype=torch.float64)

    def metric(index):
        return float(quality.gather(1, index.view(-1, 1)).mean())

    def measure(index):
        return {"q": metric(index)}

    budgets = costs[valid].tolist()
    floored = budget_sweep(hazards, hazards, budgets, measure, "hazard", valid, costs,
                           val_metric=metric, lower_is_better=False)  # fmt: skip
    plain = budget_sweep(hazards, hazards, budgets, measure, "hazard", valid, costs)
    fixed = {t: float(quality[:, t].mean()) for t in range(5) if valid[t]}

    def best_fixed(budget):
        return max(q for t, q in fixed.items() if costs[t] <= budget + 1e-9)

    for point in floored:
        assert point["val_mean_cost"] <= point["budget"] + 1e-9
        assert point["q"] >= best_fixed(point["budget"]) - 1e-12
        assert 1 <= point["floor_steps"] <= 5 and valid[point["floor_steps"] - 1]
    assert all(f["q"] >= p["q"] - 1e-12 for f, p in zip(floored, plain, strict=True))
    assert any(p["q"] < best_fixed(p["budget"]) - 1e-3 for p in plain)


def test_a_floored_rule_is_a_per_step_threshold_run_adaptive_can_apply():
    """The rule is a (T,) threshold, +inf before the floor, so a record's point rebuilds it."""
    hazards, quality, costs, valid = _problem(0)
    rule, floor = fit_floored_threshold(
        hazards, float(costs[3]), lambda i: float(quality.gather(1, i.view(-1, 1)).mean()),
        costs, valid, mixes=False, lower_is_better=False)  # fmt: skip
    threshold = rule.score_threshold
    assert threshold.shape == (5,)
    assert torch.isinf(threshold[:floor]).all() and (threshold[:floor] > 0).all()
    index = stop_indices(hazards, rule, valid)
    assert (index >= floor).all()


def _best_mix_of_fixed_depths(quality, costs, valid, budget):
    """Plain loops: the best mean quality of stopping a share of the rows at depth i and the
    rest at depth j, mean cost exactly the budget (or a single depth within it)."""
    means = {t: float(quality[:, t].mean()) for t in range(len(costs)) if valid[t]}
    best = max(q for t, q in means.items() if costs[t] <= budget)
    for i, qi in means.items():
        for j, qj in means.items():
            ci, cj = float(costs[i]), float(costs[j])
            if ci <= budget < cj:
                share = (budget - ci) / (cj - ci)
                best = max(best, (1 - share) * qi + share * qj)
    return best


@pytest.mark.parametrize("kind", ["hazard", "cumulative"])
@pytest.mark.parametrize("seed", range(4))
def test_mixes_are_never_worse_than_a_mix_of_two_fixed_depths(seed, kind):
    """Quality convex in cost (a late jump) and a score that knows nothing: between depths the
    hull of fixed depths lies above every single floored rule. With mixes each budget's rule
    reaches that hull on validation, to within two rows' share, spends at most the budget and
    is never worse than the best single rule; without them it falls below: checked too, so the
    test can fail."""
    rows, steps = 300, 6
    g = torch.Generator().manual_seed(seed)
    hazards = torch.randn(rows, steps, generator=g, dtype=torch.float64)
    costs = torch.arange(1, steps + 1, dtype=torch.float64)
    valid = torch.ones(steps, dtype=torch.bool)
    depth_quality = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.6, 1.0], dtype=torch.float64)
    quality = depth_quality + 0.05 * torch.rand(rows, steps, generator=g, dtype=torch.float64)

    def metric(index):
        return float(quality.gather(1, index.view(-1, 1)).mean())

    spread = float(quality.max() - quality.min())
    gaps = []
    for budget in [1.5, 2.3, 3.5, 4.2, 5.5]:
        mixed, floor = fit_floored_threshold(
            hazards, budget, metric, costs, valid, kind=kind, lower_is_better=False
        )
        single, _ = fit_floored_threshold(
            hazards, budget, metric, costs, valid, kind=kind, mixes=False, lower_is_better=False
        )
        index = stop_indices(hazards, mixed, valid)
        hull = _best_mix_of_fixed_depths(quality, costs, valid, budget)
        assert float(costs[index].mean()) <= budget + 1e-9
        assert metric(index) >= hull - 2 * spread / rows
        assert metric(index) >= metric(stop_indices(hazards, single, valid)) - 1e-12
        assert bool((index >= floor).all())
        gaps.append(hull - metric(stop_indices(hazards, single, valid)))
        if isinstance(mixed, MixedRule):
            assert isinstance(mixed.first, THRESHOLD_KINDS[kind])
    assert max(gaps) > 0.05  # single rules alone fall below the hull


def test_a_mixed_point_round_trips_through_its_record():
    """budget_sweep records a mix's two rules and share; point_rule rebuilds the same rule."""
    rows = 200
    g = torch.Generator().manual_seed(1)
    hazards = torch.randn(rows, 4, generator=g, dtype=torch.float64)
    quality = torch.tensor([0.0, 0.1, 0.2, 1.0], dtype=torch.float64).expand(rows, 4)

    def metric(index):
        return float(quality.gather(1, index.view(-1, 1)).mean())

    (point,) = budget_sweep(hazards, hazards, [2.5], lambda i: {"q": metric(i)},
                            val_metric=metric, lower_is_better=False)  # fmt: skip
    assert "mix" in point and 0 < point["mix"]["share"] < 1
    rule = point_rule(point)
    assert isinstance(rule, MixedRule) and rule_record(rule) == {
        k: point[k] for k in ("score_threshold", "mix")
    }
    assert stop_indices(hazards, rule).tolist() != stop_indices(hazards, rule.first).tolist()
    assert point["q"] == pytest.approx(metric(stop_indices(hazards, rule)))
    assert point["mean_cost"] <= 2.5 + 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_a_mix_with_decision_costs_is_costed_from_its_earlier_floor(seed):
    """Shrink asks the policy for every row from a mix's earlier floor on: costed so (decisions
    saved only before it), the mix still spends at most the budget on validation."""
    rows, steps = 120, 5
    g = torch.Generator().manual_seed(seed)
    hazards = torch.randn(rows, steps, generator=g, dtype=torch.float64)
    costs = torch.arange(1, steps + 1, dtype=torch.float64)
    decision = torch.full((steps,), 0.3, dtype=torch.float64)
    quality = torch.tensor([0.0, 0.0, 0.1, 0.2, 1.0], dtype=torch.float64).expand(rows, steps)

    def metric(index):
        return float(quality.gather(1, index.view(-1, 1)).mean())

    found_mix = False
    for budget in [1.2, 2.0, 2.6, 3.1, 3.9]:
        rule, floor = fit_floored_threshold(
            hazards, budget, metric, costs, decision_costs=decision, lower_is_better=False
        )
        index = stop_indices(hazards, rule)
        saved = sum(float(decision[u]) for u in range(floor))  # plain: decisions before it
        assert float((costs[index] - saved).mean()) <= budget + 1e-9
        found_mix |= isinstance(rule, MixedRule)
    assert found_mix


@pytest.mark.parametrize("kind", ["hazard", "cumulative"])
def test_floored_rules_span_every_floor_and_include_fixed_depth(kind):
    """The grid for objectives that are not budgets: per valid floor some rules (+inf before it,
    no stop before it), one of them every row at the floor; so the best of them for mean
    quality − λ · steps is never worse than the best fixed depth (a plain loop)."""
    hazards, quality, costs, valid = _problem(2, rows=60, steps=6)
    rules = floored_rules(hazards, valid, kind)
    steps = torch.arange(1, 7, dtype=torch.float64)
    floors = set()
    for rule in rules:
        assert isinstance(rule, THRESHOLD_KINDS[kind])
        threshold = rule.score_threshold
        floor = int((~torch.isinf(threshold) | (threshold < 0)).nonzero().min())
        floors.add(floor)
        assert bool((stop_indices(hazards, rule, valid) >= floor).all())
    assert floors == {t for t in range(6) if valid[t]}
    stops = [stop_indices(hazards, rule, valid) for rule in rules]
    for t in floors:
        assert any(bool((index == t).all()) for index in stops)
    for cost in (0.0, 0.1, 1.0):
        best_fixed = max(float(quality[:, t].mean()) - cost * (t + 1) for t in floors)
        best_rule = max(
            float(quality.gather(1, index.view(-1, 1)).mean() - cost * steps[index].mean())
            for index in stops
        )
        assert best_rule >= best_fixed - 1e-12


def test_calibrate_by_metric_prefers_the_better_then_the_cheaper_rule_by_hand():
    """Four rows, three steps (costs 1, 2, 3). The rule fitted to each budget stops the rows at
    (0-based) 0,0,0,0 (budget 1, mean cost 1), 0,0,0,2 (1.5), 0,1,2,2 (2.25) and 2,2,2,2 (3).
    Higher is better with "rows past step 0, at most 2": values 0, 1, 2, 2 — budgets 2.25
    and 3 tie and the cheaper (2.25) is chosen. Lower is better with "mean steps, at least
    1.5": values 1.5, 1.5, 2.25, 3 — budgets 1 and 1.5 tie and budget 1 is chosen."""
    hazards = torch.tensor(
        [[2.0, 0.0, 0.0], [-1.0, 2.0, 0.0], [-1.0, -1.0, 0.0], [-2.0, -2.0, 0.0]],
        dtype=torch.float64,
    )
    budgets = [1.0, 1.5, 2.25, 3.0]

    def past_first(index):
        return float(min(sum(int(t) >= 1 for t in index.tolist()), 2))

    def mean_steps_at_least(index):
        return max(sum(int(t) + 1 for t in index.tolist()) / len(index), 1.5)

    higher = calibrate_by_metric(hazards, past_first, budgets, lower_is_better=False)
    assert [c["cost"] for c in higher.candidates] == pytest.approx([1.0, 1.5, 2.25, 3.0])
    assert [c["value"] for c in higher.candidates] == [0.0, 1.0, 2.0, 2.0]
    assert (higher.budget, higher.value, higher.mean_cost) == (2.25, 2.0, 2.25)
    assert stop_indices(hazards, higher.rule).tolist() == [0, 1, 2, 2]
    lower = calibrate_by_metric(hazards, mean_steps_at_least, budgets, lower_is_better=True)
    assert [c["value"] for c in lower.candidates] == pytest.approx([1.5, 1.5, 2.25, 3.0])
    assert (lower.budget, lower.value, lower.mean_cost) == (1.0, 1.5, 1.0)
    assert stop_indices(hazards, lower.rule).tolist() == [0, 0, 0, 0]


def test_calibrate_by_metric_names_an_empty_choice():
    """No budget (or no kind) failed with "TypeError: 'NoneType' object is not subscriptable"."""
    hazards = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    for budgets, kinds in (([], ("hazard",)), ([2.0], ())):
        with pytest.raises(ValueError, match="needs a budget and a kind to choose among"):
            calibrate_by_metric(hazards, lambda i: 0.0, budgets, kinds, lower_is_better=True)


def test_a_larger_budget_keeps_a_cheaper_rule_that_is_better_on_validation():
    """Each row is best at its own step d (1..3) and worse after it: the policy that stops at d
    costs 2 steps on average and scores 1. At a budget of 6 steps the search's own candidates
    (thresholds spending up to 6, fixed depths) are worse (at best depth 3: 1/3 + 2/3 · 0.8),
    so the budget takes the 2-step budget's rule; no budget is worse on validation than a
    smaller one. Quality is recomputed from the recorded rule by hand."""
    rows, steps = 300, 6
    done = torch.arange(rows) % 3  # 0-based step each row is done at
    hazards = torch.full((rows, steps), -5.0, dtype=torch.float64)
    hazards[torch.arange(rows), done] = 5.0
    t = torch.arange(steps).expand(rows, steps)
    quality = torch.where(t == done[:, None], 1.0, torch.where(t > done[:, None], 0.8, 0.0))

    def metric(index):
        return float(quality.gather(1, index.view(-1, 1)).double().mean())

    budgets = [1.0, 2.0, 3.0, 6.0]
    points = budget_sweep(hazards, hazards, budgets, lambda i: {"q": metric(i)},
                          val_metric=metric, lower_is_better=False)  # fmt: skip
    by_hand = [metric(stop_indices(hazards, point_rule(p))) for p in points]
    assert [p["q"] for p in points] == pytest.approx(by_hand)
    assert by_hand == sorted(by_hand)  # never worse as the budget grows
    top = points[-1]
    assert top["q"] == pytest.approx(1.0) and top["mean_cost"] == pytest.approx(2.0)
    assert top["rule_of_budget"] in (2.0, 3.0)
    assert max(float(quality[:, d].double().mean()) for d in range(steps)) < 0.9


def test_grid_thresholds_of_infinite_scores_are_numbers():
    """A hazard logit of −∞ (a hazard of exactly 0) makes quantiles interpolate between −∞ and
    −∞, which is NaN; the grid takes the lower score there, so no rule has a NaN threshold and
    the lowest of each floor stops every row at the floor (fixed depth)."""
    hazards = torch.tensor([[-math.inf, 0.1, 0.2], [-math.inf, -math.inf, 0.3],
                            [0.5, 0.4, 0.6], [-math.inf, 0.7, 0.8]])  # fmt: skip
    rules = floored_rules(hazards)
    thresholds = torch.stack([r.score_threshold for r in rules])  # (rules, T), +inf before floor
    assert not thresholds.isnan().any()
    floors = (thresholds == math.inf).long().cumprod(1).sum(1)  # leading +inf: the floor
    for floor in range(3):
        at_floor = thresholds[floors == floor, floor]
        lowest = rules[int((floors == floor).nonzero()[int(at_floor.argmin())])]
        assert stop_indices(hazards, lowest).tolist() == [floor] * 4


@pytest.mark.parametrize("kind", ["hazard", "cumulative"])
def test_a_nan_validation_hazard_places_no_grid_threshold(kind):
    """A policy's NaN hazard on one validation row (a NaN score reaches no threshold but −∞, as
    fit_threshold takes it): numpy's quantiles of scores with a NaN in them are all NaN, and the
    mix search refused its own grid rules with 'a threshold must not be NaN'."""
    hazards, quality, costs, valid = _problem(0, rows=20, steps=3)
    valid[1] = True
    hazards[0] = math.nan
    metric = lambda index: float(quality[torch.arange(20), index].mean())  # noqa: E731
    for budget in (float(costs[0]), float(costs.mean()), float(costs[-1])):
        rule, floor = fit_floored_threshold(
            hazards, budget, metric, costs, valid, lower_is_better=False, kind=kind
        )
        index = stop_indices(hazards, rule, valid)
        assert float(costs[index].mean()) <= budget + 1e-9 and bool((index >= floor).all())
        fixed = [float(quality[:, t].mean()) for t in range(3) if float(costs[t]) <= budget]
        assert metric(index) >= max(fixed) - 1e-12
    for rules in (floored_rules(hazards, valid, kind), floored_rules(hazards[:1], valid, kind)):
        assert not torch.stack([r.score_threshold for r in rules]).isnan().any()


def _plain_fit_cost(hazards, costs, valid, budget):
    """By a plain loop: the largest mean cost within ``budget`` of a hazard threshold (every
    observed score and ±inf) on these rows — the cost the fitted plain rule must spend."""
    N, T = hazards.shape
    allowed = [bool(v) for v in valid]
    observed = {float(hazards[i, t]) for i in range(N) for t in range(T) if allowed[t]}
    spent = []
    for threshold in [-math.inf, math.inf, *observed]:
        cost = sum(float(costs[_stop(hazards[i].tolist(), allowed, threshold)]) for i in range(N))
        if cost / N <= budget + 1e-12:
            spent.append(cost / N)
    return max(spent)


@pytest.mark.parametrize("floored", [False, True], ids=["plain", "floored"])
@pytest.mark.parametrize("seed", range(3))
def test_budget_sweep_fits_on_validation_and_measures_on_test(seed, floored):
    """Validation and test are different draws (different hazards and an unrelated test quality),
    so a rule fitted on the wrong one, or a point measured on the wrong one, shows. Each point's
    rule is fitted on validation (its validation stops are a brute force's over the validation
    rows) and every test number is a plain loop over its stops on the test hazards."""
    val, val_quality, costs, valid = _problem(seed)
    test, _, _, _ = _problem(seed + 100)
    g = torch.Generator().manual_seed(1000 + seed)
    test_quality = torch.randn(test.shape, generator=g, dtype=torch.float64)
    N = test.shape[0]

    def val_metric(index):
        return float(val_quality.gather(1, index.view(-1, 1)).mean())

    def test_metric(index):
        return {"q": sum(float(test_quality[i, t]) for i, t in enumerate(index.tolist())) / N}

    budgets = torch.linspace(float(costs[0]), float(costs[-1]), 6, dtype=torch.float64).tolist()
    points = budget_sweep(val, test, budgets, test_metric, "hazard", valid, costs,
                          val_metric=val_metric if floored else None, mixes=False,
                          lower_is_better=False)  # fmt: skip
    if floored:  # the brute force's rule per budget, then a cheaper budget's where better
        fits = [_brute_force(val, val_quality, costs, valid, b, "hazard") for b in budgets]
        fitted = []
        for index, floor in fits:
            cost = sum(float(costs[t]) for t in index) / N
            value = sum(float(val_quality[i, t]) for i, t in enumerate(index)) / N
            fitted.append((index, floor, cost, value))
    for b, (budget, point) in enumerate(zip(budgets, points, strict=True)):
        rule = point_rule(point)
        val_index = stop_indices(val, rule, valid).tolist()
        test_index = stop_indices(test, rule, valid).tolist()
        assert point["val_mean_cost"] == pytest.approx(sum(float(costs[t]) for t in val_index) / N)
        assert point["mean_cost"] == pytest.approx(sum(float(costs[t]) for t in test_index) / N)
        assert point["mean_steps"] == pytest.approx(sum(t + 1 for t in test_index) / N)
        assert point["q"] == pytest.approx(
            sum(float(test_quality[i, t]) for i, t in enumerate(test_index)) / N
        )
        if floored:
            within = [f for f in fitted if f[2] <= budget + 1e-12]
            best = min(within, key=lambda f: (-f[3], f[2]))
            if best[3] <= fitted[b][3]:
                best = fitted[b]
            assert val_index == best[0] and point["floor_steps"] == best[1] + 1, b
        else:
            assert point["val_mean_cost"] == pytest.approx(
                _plain_fit_cost(val, costs, valid, budget)
            )
    # the two draws differ where it matters: the test stops are not the validation stops
    assert any(
        stop_indices(val, point_rule(p), valid).tolist()
        != stop_indices(test, point_rule(p), valid).tolist()
        for p in points
    )


def test_a_tie_with_fixed_depth_goes_to_fixed_depth():
    """At a budget equal to the floor's cost, a finite threshold below every validation score
    and fixed depth (−∞) both stop every validation row at the floor: same value, same cost.
    Fixed depth must win: the threshold lets a test row scoring below it run to the last step,
    spending three times the budget."""
    val = torch.rand(6, 3, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.3
    costs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    rule, floor = fit_floored_threshold(
        val, 1.0, lambda index: 0.0, costs, mixes=False, lower_is_better=False
    )
    assert floor == 0 and rule.score_threshold[0] == -math.inf
    test = torch.full((4, 3), 0.01)  # scores below every validation score
    assert stop_indices(test, rule).tolist() == [0, 0, 0, 0]


def test_a_mix_of_fixed_depths_stays_fixed_on_another_split():
    """Scores that mislead (the rows depth 3 fixes score highest at depth 2): the best rule at
    budget 2.5 mixes fixed depth 1 with fixed depth 3. Its dearer side must be −∞ from its floor,
    not the validation minimum score, or a test split scoring lower runs past it (2.865 > 2.5
    before the fix)."""
    g = torch.Generator().manual_seed(0)
    N = 400
    costs = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    u = torch.rand(N, generator=g)
    correct = torch.zeros(N, 4, dtype=torch.bool)
    correct[:, 0], correct[:, 1] = u < 0.2, u < 0.4
    correct[:, 2:] = (u < 0.9).unsqueeze(1)
    val = torch.randn(N, 4, generator=g, dtype=torch.float64)
    val[:, 1] += 3.0 * ((u >= 0.4) & (u < 0.9)).double()

    def metric(index):
        return float(correct[torch.arange(N), index].double().mean())

    rule, _ = fit_floored_threshold(val, 2.5, metric, costs, lower_is_better=False)
    assert float(costs[stop_indices(val, rule)].mean()) == pytest.approx(2.5)
    test = torch.randn(N, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    test[:, 2] -= 3.0  # lower scores at depth 3 than validation ever showed
    assert float(costs[stop_indices(test, rule)].mean()) == pytest.approx(2.5)


def test_fixed_depth_curve_has_one_point_per_valid_depth_by_hand():
    """``fixed_depth_curve``: every row stops at step t, for each valid t only; the point
    carries the 1-based depth and steps, the cumulative cost of step t and the metric of the
    stop steps (here the mean of a per-row, per-step table at column t, by hand)."""
    from stopwise.selection import fixed_depth_curve

    table = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 5.0, 0.0]], dtype=torch.float64)
    costs = torch.tensor([0.5, 1.5, 4.0, 4.5], dtype=torch.float64)
    seen = []

    def metric(index):
        seen.append(index.tolist())
        return {"quality": float(table.gather(1, index.view(-1, 1)).mean())}

    curve = fixed_depth_curve(2, metric, torch.tensor([True, False, True, True]), costs)
    assert curve == [
        {"depth": 1, "mean_cost": 0.5, "mean_steps": 1.0, "quality": 2.0},
        {"depth": 3, "mean_cost": 4.0, "mean_steps": 3.0, "quality": 4.0},
        {"depth": 4, "mean_cost": 4.5, "mean_steps": 4.0, "quality": 2.0},
    ]
    assert seen == [[0, 0], [2, 2], [3, 3]]
    # default costs: steps used
    plain = fixed_depth_curve(2, metric, torch.tensor([False, True]))
    assert [(p["depth"], p["mean_cost"], p["mean_steps"]) for p in plain] == [(2, 2.0, 2.0)]


def test_which_way_a_validation_metric_is_better_is_never_guessed():
    """A metric's direction has no default: an MSE read as "higher is better" picks the worst
    rule without a sign of trouble (a README example did, with the old default)."""
    hazards = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    metric = lambda index: float(index.double().mean())  # noqa: E731
    with pytest.raises(ValueError, match="lower_is_better"):
        budget_sweep(hazards, hazards, [2.0], lambda i: {}, val_metric=metric)
    with pytest.raises(TypeError, match="lower_is_better"):
        fit_floored_threshold(hazards, 2.0, metric)
    with pytest.raises(TypeError, match="lower_is_better"):
        calibrate_by_metric(hazards, metric, [2.0])


def _two_depths(quality):
    """Constant hazards over 2 steps: every rule is fixed depth 1 (cost 1) or 2 (cost 2)."""
    rows = quality.shape[0]
    hazards = torch.zeros(rows, 2, dtype=torch.float64)
    return hazards, lambda index: float(quality[torch.arange(rows), index].double().mean())


def test_a_mix_that_only_ties_the_single_rule_on_validation_is_not_taken():
    """Budget 1.5, 4 rows: half go to depth 2. By position (frac((i+1)/φ) < 0.5: rows 1, 3 stay
    at depth 1) only rows 0 and 2 go deeper, and depth 2 helps only rows 1 and 3: the mix's line
    (0.25) beats depth 1 (0) but its realised value ties it, so the single rule is kept."""
    quality = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    hazards, metric = _two_depths(quality)
    rule, floor = fit_floored_threshold(hazards, 1.5, metric, lower_is_better=False)
    assert not isinstance(rule, MixedRule)
    assert floor == 0 and rule.score_threshold.tolist() == [-math.inf, -math.inf]


def test_a_mix_over_budget_grows_its_cheap_share_one_row_at_a_time():
    """Budget 1.4 mixes depths 1 and 2 with a share 0.6 of depth 1; by position (frac((i+1)/φ) =
    .618, .236, .854, .472) that sends 2 of 4 rows deep (mean cost 1.5 > 1.4), so the share
    grows by 1/4 to 0.85 (3 rows at depth 1, cost 1.25)."""
    hazards, metric = _two_depths(torch.tensor([[0.0, 1.0]] * 4))
    rule, floor = fit_floored_threshold(hazards, 1.4, metric, lower_is_better=False)
    assert isinstance(rule, MixedRule) and floor == 0
    assert rule.share == pytest.approx(0.6 + 0.25)
    assert stop_indices(hazards, rule).tolist() == [0, 0, 1, 0]


def test_a_budget_whose_own_rule_ties_a_cheaper_one_keeps_its_own():
    """A metric no depth changes: budget 2's own rule is as good as budget 1's on validation, so
    it is not marked as taking budget 1's rule (only a better cheaper rule is taken)."""
    hazards, metric = _two_depths(torch.zeros(4, 2))
    points = budget_sweep(hazards, hazards, [1.0, 2.0], lambda i: {"q": metric(i)},
                          val_metric=metric, lower_is_better=False)  # fmt: skip
    assert ["rule_of_budget" in p for p in points] == [False, False]


def test_prune_exits_keeps_an_exit_whose_mass_is_exactly_the_minimum():
    """Equal losses at 2 exits: each has oracle mass exactly 1/2, which is "at least" 1/2."""
    assert prune_exits(torch.tensor([[1.0, 1.0]]), 1.0, 0.5).tolist() == [True, True]
