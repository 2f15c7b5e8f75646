"""Property tests of the core's math against independent references written from the
docstrings' contracts: plain Python loops and closed forms, on small random problems with the
edge cases a newcomer's results meet (one row, one step, ties, ±∞ and NaN scores, skipped
steps, float32 hazards, one seed, identical paired values)."""

import math

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_inference import LinearPolicy, RandomStepModel

from stopwise.inference import (
    CumulativeThreshold,
    HazardThreshold,
    MixedRule,
    ScoreThreshold,
    hazard_trajectory,
    run_adaptive,
    stop_indices,
)

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
VALUES = [-math.inf, -3.0, -0.5, 0.0, 0.5, 1.25, 3.0, math.inf, math.nan]


def _sigmoid(h: float) -> float:
    if h == math.inf:
        return 1.0
    if h == -math.inf:
        return 0.0
    return 1.0 / (1.0 + math.exp(-h)) if h >= 0 else math.exp(h) / (1.0 + math.exp(h))


def _reaches(score: float, threshold: float) -> bool:
    """A score reaches θ when score ≥ θ; +∞ is reached by nothing, −∞ by everything (NaN too)."""
    return threshold == -math.inf or (threshold < math.inf and score >= threshold)


@st.composite
def problems(draw, max_rows=6, max_steps=6):
    """``(rows, valid)``: hazard logits as Python floats (N, T) and a mask with a valid step."""
    N = draw(st.integers(1, max_rows))
    T = draw(st.integers(1, max_steps))
    rows = [[draw(st.sampled_from(VALUES)) for _ in range(T)] for _ in range(N)]
    valid = draw(st.lists(st.booleans(), min_size=T, max_size=T))
    if not any(valid):
        valid[draw(st.integers(0, T - 1))] = True
    return rows, valid


def _thresholds(draw, T, choices):
    """A scalar threshold or one per step."""
    if draw(st.booleans()):
        return draw(st.sampled_from(choices))
    return [draw(st.sampled_from(choices)) for _ in range(T)]


def _at(threshold, t):
    return threshold[t] if isinstance(threshold, list) else threshold


def _loop(rows, valid, decide):
    """The first valid step before the last valid one where ``decide(i, row, t, scores)`` says
    stop, else the last valid step; ``scores`` is the row's running state (a dict)."""
    last = max(t for t, ok in enumerate(valid) if ok)
    out = []
    for i, row in enumerate(rows):
        state = {"survive": 1.0}
        stop = last
        for t in range(last):
            if valid[t] and decide(i, row, t, state):
                stop = t
                break
        out.append(stop)
    return out


def _score_decider(threshold):
    return lambda i, row, t, state: _reaches(row[t], _at(threshold, t))


def _hazard_decider(p):
    """λ_t = σ(h) ≥ p; p = 0 is reached by every row (NaN too), p = 1 by none."""

    def decide(i, row, t, state):
        if p == 0:
            return True
        return p < 1 and not math.isnan(row[t]) and _sigmoid(row[t]) >= p

    return decide


def _cumulative_decider(threshold):
    """1 − ∏_{valid τ ≤ t} (1 − σ(h_τ)) ≥ θ (invalid steps ask no policy, so add nothing)."""

    def decide(i, row, t, state):
        state["survive"] *= 1.0 - _sigmoid(row[t])
        return _reaches(1.0 - state["survive"], _at(threshold, t))

    return decide


def _mixed_decider(first, second, share):
    """Row i follows ``first`` when frac((i + 1)/φ) < share, else ``second``."""

    def decide(i, row, t, state):
        follow = ((i + 1) * GOLDEN) % 1.0 < share
        return (first if follow else second)(i, row, t, state)

    return decide


SCORE_THRESHOLDS = [-math.inf, -1.0, 0.0, 0.5, 0.7, 3.0, math.inf]
PROBABILITIES = [0.0, 0.3, 0.5, 0.9, 1.0]
CUMULATIVE = [-math.inf, 0.2, 0.45, 0.8, 0.97, math.inf]


@st.composite
def rules(draw, T):
    """A rule and the plain-loop decider of its contract."""
    kind = draw(st.sampled_from(["score", "hazard", "cumulative", "mixed-score", "mixed-cum"]))
    if kind == "score":
        thr = _thresholds(draw, T, SCORE_THRESHOLDS)
        return ScoreThreshold(thr), _score_decider(thr)
    if kind == "hazard":
        p = draw(st.sampled_from(PROBABILITIES))
        return HazardThreshold(p), _hazard_decider(p)
    if kind == "cumulative":
        thr = _thresholds(draw, T, CUMULATIVE)
        return CumulativeThreshold(thr), _cumulative_decider(thr)
    share = draw(st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]))
    if kind == "mixed-score":
        a, b = (_thresholds(draw, T, SCORE_THRESHOLDS) for _ in range(2))
        rule = MixedRule(ScoreThreshold(a), ScoreThreshold(b), share)
        return rule, _mixed_decider(_score_decider(a), _score_decider(b), share)
    a, b = (_thresholds(draw, T, CUMULATIVE) for _ in range(2))
    rule = MixedRule(CumulativeThreshold(a), CumulativeThreshold(b), share)
    return rule, _mixed_decider(_cumulative_decider(a), _cumulative_decider(b), share)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), problem=problems(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_stop_indices_of_every_rule_kind_follow_a_plain_loop(data, problem, dtype):
    """stop_indices for score, hazard, cumulative and mixed rules (scalar and per-step
    thresholds, ±∞ among them) equals the contract's step loop over the valid steps, with ±∞
    and NaN hazards, one row, one step, and float32 or float64 hazards. (The values are exact
    in float32, and no cumulative score lands near a threshold, so no rounding is judged.)"""
    rows, valid = problem
    rule, decide = data.draw(rules(len(valid)))
    hazards = torch.tensor(rows, dtype=dtype)
    got = stop_indices(hazards, rule, torch.tensor(valid)).tolist()
    assert got == _loop(rows, valid, decide)


@st.composite
def model_rules(draw, T):
    """A rule for a model of T steps: floors (+∞ before a step), fixed depths (−∞), mixes."""
    kind = draw(st.sampled_from(["score", "hazard", "cumulative", "mixed"]))
    per_step = st.lists(st.sampled_from(SCORE_THRESHOLDS), min_size=T, max_size=T)
    if kind == "score":
        return ScoreThreshold(draw(per_step))
    if kind == "hazard":
        return HazardThreshold(draw(st.sampled_from(PROBABILITIES)))
    if kind == "cumulative":
        return CumulativeThreshold(draw(st.sampled_from(CUMULATIVE)))
    share = draw(st.floats(0.0, 1.0))
    return MixedRule(ScoreThreshold(draw(per_step)), ScoreThreshold(draw(per_step)), share)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    steps=st.integers(1, 5),
    batch=st.integers(1, 9),
    chunk=st.one_of(st.none(), st.integers(1, 4)),
    seed=st.integers(0, 50),
)
@torch.no_grad()
def test_every_mode_stops_where_stop_indices_does_on_the_hazard_trajectory(
    data, steps, batch, chunk, seed
):
    """run_adaptive's three modes (with and without chunks) give the stop steps stop_indices
    picks from the full hazard trajectory, the prediction of each row at its own stop step (as
    run alone to that depth), and the cost of that step, for any valid mask, one step, one row."""
    model = RandomStepModel(steps=steps, seed=seed)
    torch.manual_seed(seed + 1)
    policy = LinearPolicy(6)
    x = torch.randn(batch, 6, generator=torch.Generator().manual_seed(seed + 2))
    valid = data.draw(st.lists(st.booleans(), min_size=steps, max_size=steps))
    if not any(valid):
        valid[-1] = True
    valid = torch.tensor(valid)
    rule = data.draw(model_rules(steps))
    want = stop_indices(hazard_trajectory(model, policy, x), rule, valid)
    for mode in ("dense", "masked", "shrink"):
        result = run_adaptive(model, policy, x, rule, mode, valid, chunk=chunk)
        assert result.stop_index.tolist() == want.tolist(), mode
        assert result.cost.tolist() == model.step_costs()[want].tolist(), mode
        for i, t in enumerate(want.tolist()):
            state = model.start(x[i : i + 1])
            for u in range(t + 1):
                state = model.advance(state, u)
            torch.testing.assert_close(result.predictions[i], model.predict(state, t)[0])


@st.composite
def selection_problems(draw, max_rows=7, max_steps=5):
    """Validation hazards (few distinct values: ties), a per-row quality at each step, strictly
    increasing cumulative costs and a valid mask, as tensors."""
    N = draw(st.integers(1, max_rows))
    T = draw(st.integers(1, max_steps))
    levels = st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0, 2.5])
    hazards = torch.tensor([[draw(levels) for _ in range(T)] for _ in range(N)])
    quality = torch.tensor(
        [[draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])) for _ in range(T)] for _ in range(N)],
        dtype=torch.float64,
    )
    costs = torch.tensor(
        [draw(st.sampled_from([0.5, 1.0, 1.5])) for _ in range(T)], dtype=torch.float64
    ).cumsum(0)
    valid = draw(st.lists(st.booleans(), min_size=T, max_size=T))
    if not any(valid):
        valid[draw(st.integers(0, T - 1))] = True
    return hazards, quality, costs, torch.tensor(valid)


def _metric(quality):
    return lambda index: float(quality.gather(1, index.view(-1, 1).cpu()).mean())


@settings(max_examples=150, deadline=None)
@given(
    problem=selection_problems(),
    kind=st.sampled_from(["hazard", "cumulative"]),
    where=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_fit_floored_threshold_follows_a_brute_force_on_edge_problems(problem, kind, where, dtype):
    """fit_floored_threshold without mixes equals test_selection's plain-loop brute force
    (every valid floor, every observed score and ±∞ as thresholds) on one row, one step, tied
    and all-equal scores, skipped steps, float32 hazards and a budget exactly at a step's cost."""
    from test_selection import _brute_force

    from stopwise.selection import fit_floored_threshold

    hazards, quality, costs, valid = problem
    hazards = hazards.to(dtype)
    steps = valid.nonzero().flatten().tolist()
    # a budget between the first and last valid costs, or exactly at a valid step's cost
    lo, hi = float(costs[steps[0]]), float(costs[steps[-1]])
    budget = lo + where * (hi - lo)
    at_a_step = [float(costs[t]) for t in steps]
    budget = min(at_a_step, key=lambda c: abs(c - budget)) if where < 0.5 else budget
    rule, floor = fit_floored_threshold(
        hazards, budget, _metric(quality), costs, valid, lower_is_better=False, kind=kind,
        mixes=False)  # fmt: skip
    index, want_floor = _brute_force(hazards.double(), quality, costs, valid, budget, kind)
    got = stop_indices(hazards, rule, valid).tolist()
    assert (got, floor) == (index, want_floor)


@settings(max_examples=60, deadline=None)
@given(
    problem=selection_problems(),
    kind=st.sampled_from(["hazard", "cumulative"]),
    wheres=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
    mixes=st.booleans(),
    higher=st.booleans(),
)
def test_budget_sweep_keeps_its_documented_guarantees(problem, kind, wheres, mixes, higher):
    """Each point's rule, read back from its record, costs on validation what the point says,
    within its budget; the validation value never gets worse as the budget grows and is never
    worse than a fixed depth within the budget; the test numbers are those of the rule applied
    to the test hazards. Checked by plain loops over the rows."""
    from stopwise.selection import budget_sweep, point_rule

    hazards, quality, costs, valid = problem
    N, T = hazards.shape
    test_hazards = hazards.flip(0) + 0.25
    steps = valid.nonzero().flatten().tolist()
    lo, hi = float(costs[steps[0]]), float(costs[steps[-1]])
    budgets = [lo + w * (hi - lo) for w in wheres]
    sign = 1.0 if higher else -1.0
    metric = _metric(quality)  # the metric's own direction; value(): higher is better

    def value(index):
        return sum(sign * float(quality[i, t]) for i, t in enumerate(index)) / N

    points = budget_sweep(
        hazards, test_hazards, budgets, lambda index: {"value": value(index.tolist())}, kind,
        valid, costs, metric, lower_is_better=not higher, mixes=mixes)  # fmt: skip
    seen = []
    for budget, point in zip(budgets, points, strict=True):
        rule = point_rule(point, kind)
        val_index = stop_indices(hazards, rule, valid).tolist()
        val_cost = sum(float(costs[t]) for t in val_index) / N
        assert point["budget"] == budget
        assert abs(point["val_mean_cost"] - val_cost) <= 1e-12 * max(1.0, val_cost)
        assert val_cost <= budget + 1e-9
        fixed = [value([t] * N) for t in steps if float(costs[t]) <= budget + 1e-12]
        assert value(val_index) >= max(fixed) - 1e-12
        seen.append((budget, value(val_index)))
        test_index = stop_indices(test_hazards, rule, valid).tolist()
        assert point["value"] == value(test_index)
        assert point["mean_steps"] == sum(t + 1 for t in test_index) / N
        assert abs(point["mean_cost"] - sum(float(costs[t]) for t in test_index) / N) <= 1e-12 * hi
    for b1, v1 in seen:
        for b2, v2 in seen:
            if b1 <= b2:
                assert v1 <= v2 + 1e-12, (b1, v1, b2, v2)


@st.composite
def diverged_problems(draw):
    """A selection problem whose quality is NaN (a diverged estimate) at a few cells."""
    hazards, quality, costs, valid = draw(selection_problems())
    N, T = quality.shape
    cells = draw(st.lists(st.tuples(st.integers(0, N - 1), st.integers(0, T - 1)), max_size=3))
    for i, t in cells:
        quality[i, t] = math.nan
    return hazards, quality, costs, valid


def _best_fixed_depth(quality, costs, valid, budget, higher):
    """The best validation value, NaN ranked worst, of the fixed depths within ``budget``."""
    N = quality.shape[0]
    values = [
        sum(float(quality[i, t]) for i in range(N)) / N
        for t in range(quality.shape[1])
        if bool(valid[t]) and float(costs[t]) <= budget + 1e-12
    ]
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:
        return math.nan
    return max(numbers) if higher else min(numbers)


def _no_worse(value, reference, higher):
    """``value`` is a number no worse than ``reference`` (anything is, if that is NaN)."""
    if math.isnan(reference):
        return True
    return not math.isnan(value) and (value >= reference if higher else value <= reference)


@settings(max_examples=120, deadline=None)
@given(
    problem=diverged_problems(),
    kind=st.sampled_from(["hazard", "cumulative"]),
    where=st.floats(0.0, 1.0),
    higher=st.booleans(),
    mixes=st.booleans(),
)
@example(
    problem=(
        torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
        torch.tensor([[0.25, math.nan], [0.5, 1.0]], dtype=torch.float64),
        torch.tensor([1.0, 2.0], dtype=torch.float64),
        torch.tensor([True, True]),
    ),
    kind="hazard",
    where=1.0,
    higher=True,
    mixes=False,
)
def test_a_diverged_validation_value_is_never_chosen_over_a_number(
    problem, kind, where, higher, mixes
):
    """A rule whose validation metric is NaN (a row's estimate diverged where it stops) is the
    worst there is: fit_floored_threshold, budget_sweep and calibrate_by_metric never choose
    it over a fixed depth within the budget whose value is a number. (It was chosen wherever
    it was compared first: NaN compares false both ways, so min() kept it, and fixed depth
    could not displace it.)"""
    from stopwise.selection import budget_sweep, calibrate_by_metric, fit_floored_threshold

    hazards, quality, costs, valid = problem
    steps = valid.nonzero().flatten().tolist()
    lo, hi = float(costs[steps[0]]), float(costs[steps[-1]])
    budget = lo + where * (hi - lo)
    metric = _metric(quality)
    want = _best_fixed_depth(quality, costs, valid, budget, higher)

    rule, _ = fit_floored_threshold(
        hazards, budget, metric, costs, valid, lower_is_better=not higher, kind=kind,
        mixes=mixes)  # fmt: skip
    assert _no_worse(metric(stop_indices(hazards, rule, valid)), want, higher)

    (point,) = budget_sweep(
        hazards, hazards, [budget], lambda index: {"value": metric(index)}, kind, valid, costs,
        metric, lower_is_better=not higher, mixes=mixes)  # fmt: skip
    assert _no_worse(point["value"], want, higher)

    # calibrate_by_metric chooses among plain threshold rules: fixed depth is among them where
    # the budget is a valid step's cost, and each candidate's value is its own.
    depths = [float(costs[t]) for t in steps if float(costs[t]) <= budget]
    chosen = calibrate_by_metric(
        hazards, metric, depths + [budget], (kind,), valid, costs, lower_is_better=not higher
    )
    numbers = [c["value"] for c in chosen.candidates if not math.isnan(c["value"])]
    if numbers:
        assert chosen.value == (max(numbers) if higher else min(numbers))


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=12), level=st.sampled_from([0.5, 0.9, 0.95]))
@example(values=[0.1, 0.1, 0.1], level=0.95)  # identical values: sd 0, a point interval
def test_mean_interval_is_the_student_t_interval_of_the_mean(values, level):
    """mean ± t_{(1+level)/2, n−1} · sd/√n with the sample sd (n − 1 in the denominator), by
    closed form and scipy's t quantile; one value has sd 0 and no interval."""
    from scipy import stats as scipy_stats

    from stopwise.stats import mean_interval

    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    out = mean_interval(values, level)
    assert out["n"] == n and out["level"] == level
    assert math.isclose(out["mean"], mean, rel_tol=1e-12, abs_tol=1e-9)
    assert math.isclose(out["sd"], sd, rel_tol=1e-9, abs_tol=1e-9)
    if n == 1:
        assert out["sd"] == 0.0 and out["lo"] is None and out["hi"] is None
        return
    half = scipy_stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    scale = 1e-9 * (abs(mean) + half) + 1e-12  # lo and hi may cancel to near 0
    assert math.isclose(out["lo"], mean - half, abs_tol=scale)
    assert math.isclose(out["hi"], mean + half, abs_tol=scale)
    assert out["lo"] <= out["mean"] <= out["hi"]


@settings(max_examples=150, deadline=None)
@given(
    a=st.dictionaries(st.integers(0, 9), finite, max_size=8),
    b=st.dictionaries(st.integers(0, 9), finite, max_size=8),
    shift=st.sampled_from([None, 0.0, 0.5, -2.0]),
)
def test_paired_difference_is_the_interval_of_the_shared_seeds_differences(a, b, shift):
    """The differences over the seeds both sides have, in seed order, with mean_interval's
    numbers; a constant difference (identical values: 0) has sd 0 and a point interval, on
    one side of zero exactly when the difference is not 0; one seed has no interval."""
    import pytest

    from stopwise.stats import mean_interval, paired_difference

    if shift is not None:  # b is a copied with a constant shift: every difference equal
        b = {k: v - shift for k, v in a.items() if abs(v) < 1e3}
    shared = sorted(set(a) & set(b))
    if not shared:
        with pytest.raises(ValueError):
            paired_difference(a, b)
        return
    diffs = [a[k] - b[k] for k in shared]
    out = paired_difference(a, b)
    assert out["per_seed"] == dict(zip(shared, diffs, strict=True))
    assert list(out["per_seed"]) == shared
    want = mean_interval(diffs)
    assert {k: out[k] for k in want} == want
    if len(shared) == 1:
        assert out["lo"] is None and not out["above_zero"] and not out["below_zero"]
    if shift is not None and len(set(diffs)) == 1:
        assert out["sd"] == 0.0
        if len(shared) > 1:
            assert out["lo"] == out["hi"] == out["mean"] == diffs[0]
            assert out["above_zero"] == (diffs[0] > 0) and out["below_zero"] == (diffs[0] < 0)
    if out["lo"] is not None:
        assert out["above_zero"] == (out["lo"] > 0) and out["below_zero"] == (out["hi"] < 0)


def test_one_seed_is_said_alone_and_several_in_order():
    from stopwise.stats import over_seeds

    assert over_seeds([4]) == "seed 4 alone (no sd)"
    assert over_seeds((2, 0, 1)) == "mean ± sd over 3 seeds [2, 0, 1]"
    assert over_seeds(iter([7, 8])) == "mean ± sd over 2 seeds [7, 8]"


@settings(max_examples=200, deadline=None)
@given(
    increments=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=6),
    valid=st.lists(st.booleans(), min_size=6, max_size=6),
    points=st.integers(0, 9),
)
@example(
    increments=[1.188953629653764, 0.296570315522101, 3.082639995, 3.0168504],
    valid=[True] * 6,
    points=6,
)  # the last budget came out an ulp below the last cost: 7.585014340175864 < …8645
def test_budget_grid_spans_the_valid_costs_exactly_and_evenly(increments, valid, points):
    """``points`` budgets from the first valid step's cost to the last, both exactly, evenly
    spaced and non-decreasing; one budget (the last cost) for fewer than two points."""
    from stopwise.selection import budget_grid

    T = len(increments)
    valid = valid[:T]
    if not any(valid):
        valid[-1] = True
    costs = torch.tensor(increments, dtype=torch.float64).cumsum(0)
    kept = [float(costs[t]) for t in range(T) if valid[t]]
    grid = budget_grid(torch.tensor(valid), points, costs)
    if points < 2 or kept[0] == kept[-1]:
        assert grid == [kept[-1]]
        return
    assert len(grid) == points
    assert grid[0] == kept[0] and grid[-1] == kept[-1]
    assert all(b <= c for b, c in zip(grid, grid[1:], strict=False))
    step = (kept[-1] - kept[0]) / (points - 1)
    for i, b in enumerate(grid):
        assert math.isclose(b, kept[0] + i * step, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    rows=st.integers(1, 12),
    exits=st.integers(1, 5),
    p=st.sampled_from([0.3, 0.5, 1.0, 1.7]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_exit_thresholds_take_the_highest_scores_left_as_the_docstring_says(
    data, rows, exits, p, dtype
):
    """fit_exit_thresholds against its contract by a plain loop: exit k's threshold is the
    ⌊N q_k⌋-th highest score among the rows no earlier exit took (NaN ranking lowest), +∞
    where it takes none or too few are left, −∞ at the last exit; and ScoreThreshold of
    them sends each row to the first exit that took it. Ties, ±∞, NaN, one row, one exit."""
    from stopwise.inference import exit_distribution, fit_exit_thresholds

    values = st.sampled_from([-math.inf, 0.0, 0.25, 0.5, 0.75, math.inf, math.nan])
    scores = [[data.draw(values) for _ in range(exits)] for _ in range(rows)]
    q = exit_distribution(p, exits)
    want = [math.inf] * exits
    want[-1] = -math.inf
    taken_at = [None] * rows
    for k in range(exits - 1):
        n_k = math.floor(rows * float(q[k]))
        left = [scores[i][k] for i in range(rows) if taken_at[i] is None]
        left = sorted((-math.inf if math.isnan(s) else s for s in left), reverse=True)
        if 0 < n_k <= len(left):
            want[k] = left[n_k - 1]
        for i in range(rows):
            if taken_at[i] is None and _reaches(scores[i][k], want[k]):
                taken_at[i] = k
    got = fit_exit_thresholds(torch.tensor(scores, dtype=dtype), q)
    assert got.tolist() == want
    exit_of = [exits - 1 if k is None else k for k in taken_at]
    assert stop_indices(torch.tensor(scores, dtype=dtype), ScoreThreshold(got)).tolist() == exit_of


@settings(max_examples=100, deadline=None)
@given(p=st.floats(1e-6, 1e6), exits=st.integers(1, 40))
def test_exit_distribution_is_proportional_to_p_to_the_k(p, exits):
    """q_k ∝ p^k, k = 1..K: a distribution whose consecutive ratios are p (where both are
    representable), by logs."""
    from stopwise.inference import exit_distribution

    q = exit_distribution(p, exits).tolist()
    assert len(q) == exits and math.isclose(math.fsum(q), 1.0, rel_tol=1e-12)
    logs = [k * math.log(p) for k in range(1, exits + 1)]
    top = max(logs)
    norm = top + math.log(math.fsum(math.exp(v - top) for v in logs))
    for qk, v in zip(q, logs, strict=True):
        assert math.isclose(qk, math.exp(v - norm), rel_tol=1e-9, abs_tol=1e-300)


def _lp_best(fixed, cost, higher):
    """The best mean quality over all shares of rows per depth with mean cost ≤ ``cost``; below
    the cheapest depth, the best of the cheapest (the docstring's generous comparison)."""
    import numpy as np
    from scipy.optimize import linprog

    xs = np.array([x for x, _ in fixed])
    vs = np.array([v for _, v in fixed])
    sign = 1.0 if higher else -1.0
    if cost <= xs.min():
        return sign * max(sign * v for x, v in fixed if x == xs.min())
    lp = linprog(-sign * vs, A_eq=np.ones((1, len(vs))), b_eq=[1.0], A_ub=xs[None],
                 b_ub=[cost], bounds=[(0, None)] * len(vs))  # fmt: skip
    assert lp.success
    return -lp.fun * sign


quality = st.sampled_from([0.0, 0.1, 0.5, 0.8, 0.9, 1.0])
costs_ = st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.0, 7.0])


@settings(max_examples=80, deadline=None)
@given(
    fixed=st.lists(
        st.lists(st.tuples(costs_, quality), min_size=1, max_size=5), min_size=1, max_size=3
    ),  # fmt: skip
    data=st.data(),
    higher=st.booleans(),
)
def test_dominance_follows_its_docstring_with_a_linear_program_as_the_comparator(
    fixed, data, higher
):
    """dominance over seeds against the docstring, with each seed's comparator from a linear
    program over shares of depths (uneven and tied depth costs, a point cheaper than every
    depth): the mean gain per point with its Student-t interval (scipy), the worst gain,
    "dominates" (no mean gain below −tol), "strictly better in the lower half" (a point whose
    mean cost is at most the middle of the depths' range, gaining more than tol, its whole
    interval above tol over two seeds or more)."""
    import pytest
    from scipy import stats as scipy_stats

    from stopwise.curves import dominance

    seeds, tol = len(fixed), 1e-9
    n_points = data.draw(st.integers(1, 4))
    curves = [
        [{"mean_steps": data.draw(st.sampled_from([0.5, 1.0, 2.5, 5.0])), "q": data.draw(quality)}
         for _ in range(n_points)]
        for _ in range(seeds)
    ]  # fmt: skip
    fixed_points = [[{"mean_steps": x, "q": v} for x, v in f] for f in fixed]
    out = dominance(curves, fixed_points, "q", higher_is_better=higher, tolerance=tol)
    sign = 1.0 if higher else -1.0
    everything = [x for f in fixed for x, _ in f]
    middle = (min(everything) + max(everything)) / 2
    gains = []
    for j in range(n_points):
        per_seed = [
            sign * (c[j]["q"] - _lp_best(f, c[j]["mean_steps"], higher))
            for c, f in zip(curves, fixed, strict=True)
        ]
        mean = sum(per_seed) / seeds
        lo = hi = None
        if seeds > 1:
            sd = math.sqrt(sum((g - mean) ** 2 for g in per_seed) / (seeds - 1))
            half = scipy_stats.t.ppf(0.975, seeds - 1) * sd / math.sqrt(seeds)
            lo, hi = mean - half, mean + half
        cost = sum(c[j]["mean_steps"] for c in curves) / seeds
        gains.append((cost, mean, lo, hi))
    for (cost, mean, lo, hi), got in zip(gains, out["gains"], strict=True):
        assert got["cost"] == pytest.approx(cost) and got["gain"] == pytest.approx(mean, abs=1e-7)
        if lo is None:
            assert got["lo"] is None and got["hi"] is None
        else:
            assert got["lo"] == pytest.approx(lo, abs=1e-6)
            assert got["hi"] == pytest.approx(hi, abs=1e-6)
    worst = min(g[1] for g in gains)
    assert out["worst_gain"] == pytest.approx(worst, abs=1e-7)
    # verdicts away from the tolerance's edge (an LP's rounding is ~1e-9)
    if all(abs(g[1] + tol) > 1e-6 for g in gains):
        assert out["dominates"] == (worst >= -tol)
    lower = [g for g in gains if g[0] <= middle]
    edge = any(abs(g[1] - tol) < 1e-6 or (g[2] is not None and abs(g[2] - tol) < 1e-6)
               for g in lower)  # fmt: skip
    if not edge:
        separated = [g for g in lower if g[1] > tol and (seeds == 1 or g[2] > tol)]
        assert out["strictly_better_lower_half"] == bool(separated)
        assert out["met"] == (out["dominates"] and bool(separated))


@settings(max_examples=100, deadline=None)
@given(
    problem=selection_problems(),
    wheres=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
    kinds=st.sampled_from([("hazard",), ("cumulative",), ("hazard", "cumulative")]),
    higher=st.booleans(),
)
def test_calibrate_by_metric_picks_the_best_then_cheapest_candidate_by_plain_loops(
    problem, wheres, kinds, higher
):
    """Every (kind, budget) is a candidate, in that order, with its rule's validation value and
    mean cost (recomputed here by loops over the rows); the chosen one is the best, ties to
    the cheaper, then to the first."""
    from stopwise.inference import fit_threshold
    from stopwise.selection import calibrate_by_metric

    hazards, quality, costs, valid = problem
    N = hazards.shape[0]
    steps = valid.nonzero().flatten().tolist()
    lo, hi = float(costs[steps[0]]), float(costs[steps[-1]])
    budgets = [lo + w * (hi - lo) for w in wheres]
    metric = _metric(quality)
    out = calibrate_by_metric(
        hazards, metric, budgets, kinds, valid, costs, lower_is_better=not higher
    )
    sign = 1.0 if higher else -1.0
    rows = []
    for kind in kinds:
        for budget in budgets:
            index = stop_indices(hazards, fit_threshold(hazards, budget, costs, kind, valid), valid)
            index = index.tolist()
            value = sum(float(quality[i, t]) for i, t in enumerate(index)) / N
            cost = sum(float(costs[t]) for t in index) / N
            rows.append((kind, budget, value, cost))
    assert [(c["kind"], c["budget"]) for c in out.candidates] == [r[:2] for r in rows]
    for c, (_, _, value, cost) in zip(out.candidates, rows, strict=True):
        assert math.isclose(c["value"], value, abs_tol=1e-12)
        assert math.isclose(c["cost"], cost, abs_tol=1e-12)
    best = max(rows, key=lambda r: sign * r[2])
    tied = [r for r in rows if abs(r[2] - best[2]) <= 1e-12]
    cheapest = min(r[3] for r in tied)
    first = next(r for r in tied if abs(r[3] - cheapest) <= 1e-12)
    assert (out.kind, out.budget) == first[:2]
    assert out.value == metric(stop_indices(hazards, out.rule, valid))


@settings(max_examples=100, deadline=None)
@given(
    decision=st.lists(
        st.sampled_from([0.0, 0.25, 1.0, math.inf, math.nan]), min_size=5, max_size=5
    ),  # fmt: skip
    valid=st.lists(st.booleans(), min_size=5, max_size=5),
    floor=st.integers(0, 4),
)
@example(decision=[0.25, math.inf, 0.0, 0.0, 0.0], valid=[True, False, True, True, True], floor=3)
def test_floored_costs_save_the_decisions_of_the_valid_steps_before_the_floor(
    decision, valid, floor
):
    """costs − Σ_{valid u < floor} decision_u at every step, by a plain sum; a skipped step's
    decision cost (never spent, like its step cost in fit_threshold: possibly ∞ or NaN where
    no exit head exists) does not enter it, nor does one at or after the floor."""
    from stopwise.selection import floored_costs

    costs = torch.tensor([1.0, 2.0, 4.0, 5.0, 9.0], dtype=torch.float64)
    if not any(valid):
        valid[floor] = True
    # a valid step before the floor spends its decision cost: a finite one
    decision = [
        0.5 if ok and u < floor and not math.isfinite(d) else d
        for u, (d, ok) in enumerate(zip(decision, valid, strict=True))
    ]
    saved = sum(decision[u] for u in range(floor) if valid[u])
    got = floored_costs(costs, torch.tensor(decision), torch.tensor(valid), floor)
    want = costs.tolist() if floor == 0 else [c - saved for c in costs.tolist()]
    assert got.tolist() == want
    assert floored_costs(costs, None, torch.tensor(valid), floor).tolist() == costs.tolist()


@settings(max_examples=60, deadline=None)
@given(
    problem=selection_problems(),
    kind=st.sampled_from(["hazard", "cumulative"]),
    wheres=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
    higher=st.booleans(),
    decision=st.lists(st.sampled_from([0.0, 0.1, 0.4]), min_size=5, max_size=5),
)
def test_budget_sweep_with_decision_costs_costs_each_point_from_its_floor(
    problem, kind, wheres, higher, decision
):
    """With decision costs (mixes included), each point's recorded validation cost is its
    rule's stops costed with the decisions before its floor saved (a hazard rule only: a
    cumulative one asks the policy at every step), within its budget; no row stops before
    the floor; and no fixed depth within the budget (costed the same way) is better."""
    from stopwise.selection import budget_sweep, point_rule

    hazards, quality, costs, valid = problem
    N, T = hazards.shape
    decision = decision[:T]
    steps = valid.nonzero().flatten().tolist()

    def saved(floor):
        return sum(decision[u] for u in range(floor) if valid[u]) if kind == "hazard" else 0.0

    lo = min(float(costs[t]) - saved(t) for t in steps)
    hi = float(costs[steps[-1]])
    budgets = [lo + w * (hi - lo) for w in wheres]
    sign = 1.0 if higher else -1.0
    metric = _metric(quality)
    points = budget_sweep(
        hazards, hazards, budgets, lambda index: {"value": metric(index)}, kind, valid, costs,
        metric, lower_is_better=not higher,
        decision_costs=torch.tensor(decision, dtype=torch.float64))  # fmt: skip
    for budget, point in zip(budgets, points, strict=True):
        index = stop_indices(hazards, point_rule(point, kind), valid).tolist()
        floor = point["floor_steps"] - 1
        cost = sum(float(costs[t]) - saved(floor) for t in index) / N
        assert math.isclose(cost, point["val_mean_cost"], abs_tol=1e-12)
        assert cost <= budget + 1e-9 and min(index) >= floor
        fixed = [
            sign * sum(float(quality[i, t]) for i in range(N)) / N
            for t in steps
            if float(costs[t]) - saved(t) <= budget + 1e-12
        ]
        value = sum(float(quality[i, t]) for i, t in enumerate(index)) / N
        assert sign * value >= max(fixed) - 1e-12


@settings(max_examples=50, deadline=None)
@given(
    valid=st.lists(st.booleans(), min_size=1, max_size=6),
    rows=st.integers(1, 5),
    with_costs=st.booleans(),
)
def test_fixed_depth_curve_has_each_valid_depth_with_its_cost_and_metric(valid, rows, with_costs):
    """One point per valid depth t, in order: depth t + 1, its cumulative cost (steps used
    without costs), and the metric of every row stopping at t."""
    from stopwise.selection import fixed_depth_curve

    if not any(valid):
        valid[0] = True
    T = len(valid)
    costs = torch.tensor([0.5 * (t + 1) ** 2 for t in range(T)], dtype=torch.float64)
    curve = fixed_depth_curve(
        rows, lambda index: {"stops": index.tolist()}, torch.tensor(valid),
        costs if with_costs else None)  # fmt: skip
    want = [
        {
            "depth": t + 1,
            "mean_cost": float(costs[t]) if with_costs else float(t + 1),
            "mean_steps": float(t + 1),
            "stops": [t] * rows,
        }
        for t in range(T)
        if valid[t]
    ]
    assert curve == want
