"""Adaptive inference: the three modes agree with each other and with a per-sample reference loop;
calibration and MSDNet thresholds agree with brute force and plain loops."""

import math
import sys

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from stopwise.inference import (
    MODES,
    CumulativeThreshold,
    HazardThreshold,
    MixedRule,
    Rule,
    SampleRule,
    ScoreThreshold,
    calibrate,
    exit_distribution,
    fit_exit_thresholds,
    fit_threshold,
    hazard_trajectory,
    in_chunks,
    rule_scores,
    run_adaptive,
    run_fixed,
    stop_indices,
)
from stopwise.steps import StepModel, unroll
from stopwise.stoptime import StopTime


class RandomStepModel(StepModel):
    """h ← tanh(W_t h + U x) with a dict state; predictions are ``(B, C)`` logits."""

    def __init__(self, dim=6, classes=3, steps=7, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.max_steps = steps
        self.W = nn.Parameter(torch.randn(steps, dim, dim) / math.sqrt(dim))
        self.U = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)
        self.rows_advanced = 0

    def start(self, x):
        return {"x": x, "h": torch.zeros_like(x)}

    def advance(self, state, t):
        self.rows_advanced += state["h"].shape[0]
        h = torch.tanh(state["h"] @ self.W[t] + self.U(state["x"]))
        return {"x": state["x"], "h": h}

    def predict(self, state, t):
        return self.head(state["h"])

    def features(self, state, t):
        return state["h"]

    def step_costs(self):
        return torch.arange(1, self.max_steps + 1, dtype=torch.float64) * 10.0


class LinearPolicy(nn.Module):
    """Hazard logit = w·features − 1 with large random w, so rows stop at many different steps."""

    def __init__(self, dim):
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim) * 3)

    def forward(self, features, t):
        return features @ self.w - 1.0


def make(seed=0, batch=64, steps=7):
    model = RandomStepModel(steps=steps, seed=seed)
    torch.manual_seed(seed + 1)
    policy = LinearPolicy(6)
    x = torch.randn(batch, 6, generator=torch.Generator().manual_seed(seed + 2))
    return model, policy, x


def reference_stop(model, policy, x, threshold, valid):
    """One sample at a time, plain Python: stop at the first valid step with λ_t ≥ threshold."""
    last = max(i for i, v in enumerate(valid) if v)
    out = []
    for i in range(x.shape[0]):
        state = model.start(x[i : i + 1])
        for t in range(last + 1):
            state = model.advance(state, t)
            if not valid[t]:
                continue
            lam = torch.sigmoid(policy(model.features(state, t), t)).item()
            if t == last or lam >= threshold:
                out.append((t, model.predict(state, t)[0]))
                break
    return out


# A floored threshold (stopwise.selection.fit_floored_threshold): no row stops before step 2.
FLOORED = ScoreThreshold(torch.tensor([math.inf, math.inf, 0.5, -0.3, 0.5, 0.1, 0.0]))
RULES = [
    HazardThreshold(0.3),
    HazardThreshold(0.6),
    CumulativeThreshold(0.5),
    SampleRule(seed=7),
    FLOORED,
    # A third of the rows floored, the rest on a plain threshold (selection's budget mixes).
    MixedRule(FLOORED, ScoreThreshold(torch.full((7,), 0.2)), 1 / 3),
    MixedRule(CumulativeThreshold(0.3), CumulativeThreshold(0.8), 0.5),
]


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("valid", [None, [1, 0, 1, 1, 0, 1, 0]])
@torch.no_grad()
def test_modes_agree(rule, valid):
    model, policy, x = make()
    valid = None if valid is None else torch.tensor(valid, dtype=torch.bool)
    results = {
        mode: run_adaptive(model, policy, x, rule, mode, valid)
        for mode in ("dense", "masked", "shrink")
    }
    for mode in ("masked", "shrink"):
        assert torch.equal(results[mode].stop_index, results["dense"].stop_index), mode
        torch.testing.assert_close(results[mode].predictions, results["dense"].predictions)
        torch.testing.assert_close(results[mode].cost, results["dense"].cost)
    stops = results["dense"].stop_index
    assert len(stops.unique()) > 1  # the test exercises real per-row stopping
    if valid is not None:
        assert valid[stops].all()


@pytest.mark.parametrize("valid", [[1] * 7, [0, 1, 1, 0, 1, 1, 0]])
@torch.no_grad()
def test_shrink_matches_per_sample_reference(valid):
    model, policy, x = make(seed=3, batch=40)
    result = run_adaptive(
        model, policy, x, HazardThreshold(0.4), "shrink", torch.tensor(valid).bool()
    )
    reference = reference_stop(model, policy, x, 0.4, valid)
    assert result.stop_index.tolist() == [t for t, _ in reference]
    torch.testing.assert_close(result.predictions, torch.stack([p for _, p in reference]))
    assert result.steps_used.tolist() == [t + 1 for t, _ in reference]
    assert result.cost.tolist() == [10.0 * (t + 1) for t, _ in reference]


class ChangingState(StepModel):
    """A state that gains a field at step 0 (``v`` starts as None) and a column at every step,
    as a CNN's feature maps change shape from block to block."""

    max_steps = 5

    def start(self, x):
        return {"h": x, "v": None}

    def advance(self, state, t):
        h = state["h"]
        v = h[:, :1] if state["v"] is None else 0.5 * state["v"] + h[:, :1]
        return {"h": torch.cat([torch.tanh(h + v), v], dim=1), "v": v}

    def predict(self, state, t):
        return state["h"][:, :3]

    def features(self, state, t):
        return state["h"][:, :6]


@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_every_mode_runs_a_state_that_changes_structure(mode):
    model, (_, policy, x) = ChangingState(), make(seed=4, batch=30)
    valid = [1, 1, 0, 1, 1]
    result = run_adaptive(model, policy, x, HazardThreshold(0.4), mode, torch.tensor(valid).bool())
    reference = reference_stop(model, policy, x, 0.4, valid)
    assert 0 < int((result.stop_index < 4).sum()) < 30  # stops spread over the steps
    assert result.stop_index.tolist() == [t for t, _ in reference]
    torch.testing.assert_close(result.predictions, torch.stack([p for _, p in reference]))


@pytest.mark.parametrize("mode", ["shrink", "masked"])
@torch.no_grad()
def test_no_policy_runs_where_a_floored_rule_cannot_stop(mode):
    """Before a floor the rule can stop no row: adaptive inference skips features and policy
    there (and the stops equal dense mode's, which scores every step)."""
    model, policy, x = make(seed=5)
    seen = []

    def counting(features, t):
        seen.append(t)
        return policy(features, t)

    result = run_adaptive(model, counting, x, FLOORED, mode)
    assert min(seen) == 2 and (result.stop_index >= 2).all()
    dense = run_adaptive(model, policy, x, FLOORED, "dense")
    assert torch.equal(result.stop_index, dense.stop_index)
    assert CumulativeThreshold(torch.full((7,), math.inf)).needs_policy(0)  # it carries P(stop)


@pytest.mark.parametrize("mode", ["dense", "masked", "shrink"])
@torch.no_grad()
def test_mixed_rule_runs_each_rule_on_its_share_of_rows(mode):
    """Row i follows the first rule iff frac((i + 1)·(√5 − 1)/2) < share, written out here in
    plain Python; its stop and prediction are then that rule's own."""
    model, policy, x = make(seed=6, batch=90)
    first, second = FLOORED, HazardThreshold(0.7)
    mixed = run_adaptive(model, policy, x, MixedRule(first, second, 0.25), mode)
    alone = {rule: run_adaptive(model, policy, x, rule, "dense") for rule in (first, second)}
    golden = (5**0.5 - 1) / 2
    follows = [((i + 1) * golden) % 1.0 < 0.25 for i in range(90)]
    assert abs(sum(follows) - 0.25 * 90) <= 2  # an even share
    for i, use_first in enumerate(follows):
        expected = alone[first if use_first else second]
        assert int(mixed.stop_index[i]) == int(expected.stop_index[i])
        torch.testing.assert_close(mixed.predictions[i], expected.predictions[i])
    assert MixedRule(first, second, 0.0).follows_first(50).sum() == 0
    assert MixedRule(first, second, 1.0).follows_first(50).all()
    assert not MixedRule(first, FLOORED, 0.5).needs_policy(1)
    assert MixedRule(first, second, 0.5).needs_policy(1)
    with pytest.raises(ValueError, match="one kind"):
        MixedRule(first, CumulativeThreshold(0.5), 0.5)


@torch.no_grad()
def test_shrink_only_advances_rows_still_running():
    model, policy, x = make(seed=4, batch=100)
    model.rows_advanced = 0
    result = run_adaptive(model, policy, x, HazardThreshold(0.5), "shrink")
    assert model.rows_advanced == int(result.steps_used.sum())
    model.rows_advanced = 0
    run_adaptive(model, policy, x, HazardThreshold(0.5), "masked")
    assert model.rows_advanced == 100 * 7
    assert int(result.steps_used.sum()) < 100 * 7


class ConvStepModel(StepModel):
    """3×3 convolutions on channels-last maps; records the layout each step receives."""

    def __init__(self, steps=4, channels=3):
        super().__init__()
        torch.manual_seed(0)
        self.max_steps = steps
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(steps)
        )
        self.to(memory_format=torch.channels_last)
        self.layouts: list[bool] = []

    def start(self, x):
        return x.contiguous(memory_format=torch.channels_last)

    def advance(self, state, t):
        self.layouts.append(state.is_contiguous(memory_format=torch.channels_last))
        return torch.tanh(self.convs[t](state))

    def predict(self, state, t):
        return state.mean((1, 2, 3))

    def features(self, state, t):
        return state.mean((2, 3))


@pytest.mark.parametrize("chunk", [None, 3])
@torch.no_grad()
def test_shrink_keeps_a_channels_last_state_channels_last(chunk):
    """Rows leaving the batch must not turn the maps of the rows that go on channels-first."""
    model = ConvStepModel()
    x = torch.randn(10, 3, 5, 5)
    rule = SampleRule(seed=1)  # stops rows at every step
    policy = LinearPolicy(3)
    result = run_adaptive(model, policy, x, rule, "shrink", chunk=chunk)
    assert len(set(result.stop_index.tolist())) > 2 and model.layouts and all(model.layouts)
    dense = run_adaptive(model, policy, x, rule, "dense")
    assert torch.equal(result.stop_index, dense.stop_index)
    torch.testing.assert_close(result.predictions, dense.predictions)


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("chunk", [1, 7, 20, 64, 100])
@torch.no_grad()
def test_chunks_change_no_decision(rule, chunk):
    """Any mode with ``chunk`` equals the one-batch dense run, whatever pooling shrink does
    across chunks: a MixedRule's split and a SampleRule's draws follow a row's position in the
    inputs, not in its chunk (a chunk of 1 would otherwise give every row the same share)."""
    model, policy, x = make(seed=8, batch=64)
    valid = torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    whole = run_adaptive(model, policy, x, rule, "dense", valid)
    expected_index, expected = whole.stop_index, whole.predictions
    for mode in ("dense", "masked", "shrink"):
        result = run_adaptive(model, policy, x, rule, mode, valid, chunk=chunk)
        assert torch.equal(result.stop_index, expected_index), mode
        torch.testing.assert_close(result.predictions, expected)
        torch.testing.assert_close(result.cost, model.step_costs()[expected_index])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_hazard_threshold_is_exact_for_scores_of_every_float_dtype(dtype):
    """λ_t ≥ p judged on logits: the score just below logit(p) in the scores' dtype does not
    stop, the one just above does (the threshold was cast to that dtype, to nearest, and a
    float32 score with σ = 0.6999999972 stopped at 0.7). Reference: the score, exact in
    float64, against the float64 logit the rule holds (σ is increasing)."""
    for p in (0.7, 0.123, 0.5):
        logit = math.log(p / (1 - p))
        nearest = torch.tensor(logit, dtype=torch.float64).to(dtype)
        up = torch.nextafter(nearest, torch.tensor(math.inf, dtype=dtype))
        down = torch.nextafter(nearest, torch.tensor(-math.inf, dtype=dtype))
        scores = torch.stack([down, nearest, up]).unsqueeze(-1)
        scores = torch.cat([scores, torch.full_like(scores, math.inf)], dim=1)  # stop at step 1
        expected = [0 if float(s) >= logit else 1 for s in scores[:, 0]]
        assert stop_indices(scores, HazardThreshold(p)).tolist() == expected, (p, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_a_threshold_rule_decides_exactly_as_float64_compares(dtype):
    """``decide`` compares each score with a cutoff rounded into the scores' dtype once; it must
    stop exactly the rows a float64 comparison stops. Scores: each threshold's neighbours in
    ``dtype`` (nearest, one up, one down), ±∞, NaN, 0 and the dtype's extremes. Thresholds:
    ordinary ones, one exact in every dtype (0.5), ones beyond the dtype's range, ±∞ (+∞: never
    reached, not even by +∞; −∞: reached by every score, NaN too); alone and in a MixedRule.
    Reference: Python floats (every dtype widens to them exactly)."""
    info = torch.finfo(dtype)
    thresholds = [0.7, -0.123456789, 0.5, 1e-30, 1e300, -1e300, math.inf, -math.inf]
    for theta in thresholds:
        nearest = torch.tensor(theta, dtype=torch.float64).to(dtype)
        up = torch.nextafter(nearest, torch.tensor(math.inf, dtype=dtype))
        down = torch.nextafter(nearest, torch.tensor(-math.inf, dtype=dtype))
        others = torch.tensor(
            [math.inf, -math.inf, math.nan, 0.0, info.max, -info.max, info.tiny], dtype=dtype
        )
        scores = torch.cat([torch.stack([down, nearest, up]), others])
        expected = [(float(s) >= theta and theta < math.inf) or theta == -math.inf for s in scores]
        for rule in (
            ScoreThreshold(theta),
            ScoreThreshold(torch.tensor([0.0, theta], dtype=torch.float64)),
        ):
            stop, _ = rule.decide(scores, 1, None)
            assert stop.dtype == torch.bool and stop.tolist() == expected, (theta, dtype, rule)
        # A mix: each row by its own rule's comparison (the other rule: a threshold of 0).
        mix = MixedRule(ScoreThreshold(theta), ScoreThreshold(0.0), 0.5)
        carry = mix.init_carry(len(scores), 2, None)
        follows = carry[0].tolist()
        at_zero = [float(s) >= 0.0 for s in scores]
        mixed = [a if f else b for f, a, b in zip(follows, expected, at_zero, strict=True)]
        assert 0 < sum(follows) < len(follows)
        assert mix.decide(scores, 1, carry)[0].tolist() == mixed, (theta, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_threshold_rule_stays_exact_when_the_cpu_flushes_subnormals(dtype):
    """With ``torch.set_flush_denormal(True)`` a subnormal cutoff reads as 0 in a compare: a
    threshold of 1e-40 (its float32 cutoff is subnormal) stopped a score of 0. Such a rule
    compares in float64 instead."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        info = torch.finfo(dtype)
        scores = torch.tensor([0.0, -0.0, info.tiny, -info.tiny, 1.0, -1.0], dtype=dtype)
        for theta in (1e-40, -1e-40, 1e-30, 1e-6, -1e-6):
            expected = [float(x) >= theta for x in scores]
            per_step = torch.tensor([0.0, theta], dtype=torch.float64)
            for rule in (ScoreThreshold(theta), ScoreThreshold(per_step)):
                assert rule.decide(scores, 1, None)[0].tolist() == expected, (theta, dtype)
    finally:
        torch.set_flush_denormal(False)


@torch.no_grad()
def test_a_threshold_of_minus_inf_stops_every_row_without_asking_the_policy():
    """−∞ at a step means "every row stops here", NaN scores too, in every mode; shrink and
    masked ask no policy there and run no later step (a cheapest budget point is a rule of
    −∞ at every step: its policy and features cost time and saved nothing)."""
    model, _, x = make(seed=14, batch=12)
    asked: list[int] = []

    def policy(features, t):
        asked.append(t)
        score = features.sum(-1)
        return torch.where(features[:, 0] > 0.3, math.nan, score)  # some rows NaN

    rule = ScoreThreshold(torch.tensor([math.inf, 0.0, -math.inf, 0, 0, 0, 0]))
    both = MixedRule(rule, ScoreThreshold(torch.tensor([0.0, 0.5, -math.inf, 0, 0, 0, 0])), 0.5)
    half = MixedRule(rule, ScoreThreshold(0.0), 0.5)  # one rule goes on at step 2
    hazards = torch.stack([policy(torch.ones(12, 6) * (t - 3), t) for t in range(7)], 1)

    def stored(features, t):
        return hazards[:, t]

    for r, steps_asked in ((rule, [1]), (both, [0, 1]), (half, [0, 1, 2, 3, 4, 5])):
        reference = run_adaptive(model, policy, x, r, "dense")
        if r is not half:
            assert reference.stop_index.max().item() <= 2  # NaN rows stop at step 2 at the latest
            assert (reference.stop_index == 2).any()
        for mode in ("masked", "shrink"):
            asked.clear()
            model.rows_advanced = 0
            result = run_adaptive(model, policy, x, r, mode)
            assert torch.equal(result.stop_index, reference.stop_index), (r, mode)
            torch.testing.assert_close(result.predictions, reference.predictions)
            assert sorted(set(asked)) == steps_asked, (r, mode, asked)
            if r is not half:
                expected = 12 * 3 if mode == "masked" else int(result.steps_used.sum())
                assert model.rows_advanced == expected, (r, mode)
        # stop_indices on stored hazards agrees with a run that asks for them (masked: all rows)
        replay = run_adaptive(model, stored, x, r, "masked")
        assert torch.equal(stop_indices(hazards, r), replay.stop_index)


@torch.no_grad()
def test_a_threshold_of_inf_is_never_reached_even_by_a_score_of_inf():
    """+∞ before a floor means "no stop here": a policy scoring +∞ must not stop rows there in
    dense mode or in stop_indices while masked and shrink skip the policy (they stop at the
    floor, step 2, in every mode); a MixedRule of two such rules too."""
    model, _, x = make(seed=12, batch=10)

    def certain(features, t):
        return torch.full((features.shape[0],), math.inf)

    floored = ScoreThreshold(torch.tensor([math.inf, math.inf, 0.0, 0, 0, 0, 0]))
    later = ScoreThreshold(torch.tensor([math.inf] * 4 + [0.0] * 3))
    expected = {floored: [2] * 10, MixedRule(floored, later, 0.5): None}
    for rule, want in expected.items():
        runs = [run_adaptive(model, certain, x, rule, mode).stop_index for mode in MODES]
        hazards = torch.full((10, 7), math.inf)
        runs.append(stop_indices(hazards, rule))
        want = runs[-1].tolist() if want is None else want
        assert min(want) >= 2 and all(r.tolist() == want for r in runs), rule


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
@torch.no_grad()
def test_shrink_when_a_share_of_rows_stops_at_the_first_step(share):
    """Few or most rows stop at step 0 (shrink copies the batch at once when most do), the rest
    later: the same stops and predictions as dense mode."""
    model, policy, x = make(seed=10, batch=50)
    first = hazard_trajectory(model, policy, x)[:, 0]
    threshold = torch.full((7,), 0.5)
    threshold[0] = torch.quantile(first, 1 - share)
    rule = ScoreThreshold(threshold)
    shrink = run_adaptive(model, policy, x, rule, "shrink")
    dense = run_adaptive(model, policy, x, rule, "dense")
    stopped_first = float((shrink.stop_index == 0).double().mean())
    assert abs(stopped_first - share) <= 0.03 and (shrink.stop_index > 0).any()
    assert torch.equal(shrink.stop_index, dense.stop_index)
    torch.testing.assert_close(shrink.predictions, dense.predictions)


@torch.no_grad()
def test_shrink_pools_the_rows_that_go_on_across_chunks():
    """Each step runs once ``chunk`` rows wait for it (or the inputs are used up), not once per
    chunk: counted batch sizes of every ``advance`` call."""
    model, policy, x = make(seed=9, batch=200)
    calls = []
    advance = model.advance

    def counting(state, t):
        calls.append((t, state["h"].shape[0]))
        return advance(state, t)

    model.advance = counting
    rule = HazardThreshold(0.5)
    result = run_adaptive(model, policy, x, rule, "shrink", chunk=25)
    running = [int((result.stop_index >= t).sum()) for t in range(7)]
    for t in range(7):
        sizes = [size for step, size in calls if step == t]
        assert sum(sizes) == running[t]  # every running row once, no row twice
        assert all(size >= 25 for size in sizes[:-1])  # only the last call may be short
        assert len(sizes) <= -(-running[t] // 25)  # ⌈rows / chunk⌉ calls at most
        assert max(sizes) <= (t + 1) * 25 - t  # a pool joins fewer than a chunk waiting
    assert running[1] < 200 and running[-1] > 0  # rows leave along the way
    calls.clear()
    for i in range(0, 200, 25):  # chunk by chunk: each chunk's survivors run every step
        run_adaptive(model, policy, x[i : i + 25], rule, "shrink")
    assert len([1 for step, _ in calls if step == 6]) > -(-running[6] // 25)


@torch.no_grad()
def test_extreme_thresholds_and_run_fixed():
    model, policy, x = make(seed=5)
    assert (run_adaptive(model, policy, x, HazardThreshold(0.0)).stop_index == 0).all()
    everything = run_adaptive(model, policy, x, HazardThreshold(1.0))
    assert (everything.stop_index == 6).all()
    torch.testing.assert_close(everything.predictions, run_fixed(model, x))
    torch.testing.assert_close(run_fixed(model, x, 3), unroll(model, x).predictions[:, 2])


@torch.no_grad()
def test_sampled_stops_follow_the_stop_time_distribution():
    class FixedHazard(nn.Module):
        def forward(self, features, t):
            return torch.full((features.shape[0],), [-1.0, 0.0, -0.5, 1.0, 0.0][t])

    model = RandomStepModel(steps=5)
    x = torch.randn(40000, 6)
    result = run_adaptive(model, FixedHazard(), x, SampleRule(seed=1), "shrink")
    counts = torch.bincount(result.stop_index, minlength=5).double()
    expected = StopTime(torch.tensor([[-1.0, 0.0, -0.5, 1.0, 0.0]])).probs[0].double() * 40000
    assert ((counts - expected).abs() <= 5 * expected.sqrt()).all()


def test_cumulative_rule_matches_stop_time_cdf():
    logits = torch.randn(200, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    index = stop_indices(logits, CumulativeThreshold(0.5))
    cdf = StopTime(logits).cdf()
    expected = ((cdf >= 0.5) | (torch.arange(6) == 5)).int().argmax(-1)
    assert torch.equal(index, expected)


def brute_force_threshold(hazards, budget, costs):
    """Try every observed hazard as a threshold; keep the most expensive within budget (to a
    relative 1e-12: rounding, as fit_threshold documents). A row stops at its first step whose
    hazard reaches the threshold, else at the last (plain loops)."""
    rows, T = hazards.tolist(), hazards.shape[1]
    best = None
    for value in sorted(set(hazards.flatten().tolist())) + [math.inf]:
        stops = [next((t for t, h in enumerate(row) if h >= value), T - 1) for row in rows]
        cost = sum(float(costs[t]) for t in stops) / len(rows)
        if cost <= budget + 1e-12 * max(1.0, abs(budget)) and (best is None or cost >= best[1]):
            best = (value, cost)
    return best


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), budget=st.floats(1.0, 6.0))
def test_fit_threshold_matches_brute_force(seed, budget):
    g = torch.Generator().manual_seed(seed)
    hazards = torch.randn(30, 6, generator=g, dtype=torch.float64)
    costs = torch.arange(1, 7, dtype=torch.float64)
    rule = fit_threshold(hazards, budget, costs)
    cost = float(costs[stop_indices(hazards, rule)].mean())
    _, best_cost = brute_force_threshold(hazards, budget, costs)
    assert cost <= budget + 1e-12 * max(1.0, abs(budget))
    assert cost == pytest.approx(best_cost)


@pytest.mark.parametrize("kind", ["hazard", "cumulative"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_fitted_threshold_keeps_its_decisions_when_scores_move_by_rounding(kind, dtype):
    """The threshold sat on a validation score, so that row's decision flipped when its score
    came out 1 ulp lower (another batch composition in shrink mode or in chunks). Midway
    between the scores it separates, no score moving by less than half that gap flips. The
    scores that decide are each row's running maximum up to each step but the last (a row
    stops at the first score reaching the threshold; what it scores later decides nothing),
    listed here by a plain loop."""
    g = torch.Generator().manual_seed(3)
    hazards = torch.randn(200, 6, generator=g, dtype=torch.float64).to(dtype)
    for budget in (1.7, 2.5, 3.9, 5.2):
        rule = fit_threshold(hazards, budget, kind=kind)
        scores = rule_scores(hazards, rule, torch.ones(6, dtype=torch.bool)).tolist()
        deciding = torch.tensor(
            [max(row[: k + 1]) for row in scores for k in range(5)], dtype=torch.float64
        )
        threshold = float(rule.score_threshold)
        assert not bool((deciding == threshold).any())  # no row sits on it
        below, above = deciding[deciding < threshold].max(), deciding[deciding > threshold].min()
        assert threshold == pytest.approx(float(below + above) / 2, rel=1e-12)
        before = stop_indices(hazards, rule)
        for limit in (-math.inf, math.inf):  # every score 1 ulp down, then 1 ulp up
            moved = torch.nextafter(hazards, torch.full_like(hazards, limit))
            assert torch.equal(stop_indices(moved, rule), before)


@pytest.mark.parametrize("kind", ["hazard", "cumulative"])
@pytest.mark.parametrize("budget", [6.0, 100.0])
def test_fit_threshold_at_or_above_full_cost_runs_every_step(budget, kind):
    """A budget of at least full depth (costs 1..6: 6.0 exactly, and far above) affords every
    row every step: the threshold is +inf and every row stops at the last step, even the row
    whose score is the largest observed (a finite threshold would stop it early)."""
    g = torch.Generator().manual_seed(0)
    hazards = torch.randn(30, 6, generator=g, dtype=torch.float64)
    hazards[7, 1] = 50.0  # the largest score, at an early step
    costs = torch.arange(1, 7, dtype=torch.float64)
    rule = fit_threshold(hazards, budget, costs, kind)
    assert float(rule.score_threshold) == math.inf
    assert stop_indices(hazards, rule).tolist() == [5] * 30


@pytest.mark.parametrize("kind", ["hazard", "cumulative"])
def test_fit_threshold_at_the_least_cost_stops_new_rows_at_the_first_step_too(kind):
    """A budget of one step (costs 1..6) stops every validation row at step 1, whichever
    threshold up to the least observed score is chosen; the rule must do the same on new rows,
    even one whose scores are all below every validation score (it would run on otherwise)."""
    g = torch.Generator().manual_seed(0)
    hazards = torch.randn(30, 6, generator=g, dtype=torch.float64)
    costs = torch.arange(1, 7, dtype=torch.float64)
    rule = fit_threshold(hazards, 1.0, costs, kind)
    assert float(rule.score_threshold) == -math.inf
    new_rows = torch.cat([hazards, torch.full((1, 6), -40.0, dtype=torch.float64)])
    assert stop_indices(new_rows, rule).tolist() == [0] * 31


def test_a_lower_score_after_every_rows_first_step_does_not_hold_back_the_minus_inf_threshold():
    """Every row must stop at its first step; the scores after it (−10, below both first
    scores) decide nothing, yet the threshold was fitted between them (−5), so a new row
    scoring −6 at step 0 ran on and the policy was asked."""
    hazards = torch.tensor([[0.0, -10.0, 5.0], [1.0, -10.0, 5.0]])
    rule = fit_threshold(hazards, budget=1.0)
    assert float(rule.score_threshold) == -math.inf
    assert stop_indices(torch.tensor([[-6.0, 0.0, 0.0]]), rule).tolist() == [0]


@pytest.mark.parametrize("seed, budget", [(0, 2.0), (1, 3.4), (2, 4.5), (3, 1.0)])
def test_fit_threshold_cumulative_matches_a_brute_force(seed, budget):
    """The cumulative kind against a brute force by plain loops: scores P(stopped by t) =
    1 − ∏(1 − σ(h_τ)) over the valid steps τ ≤ t (step 2 is not valid); every observed score
    (and +inf) tried as the threshold, a row stopping at its first valid step before the last
    valid one whose score reaches it, else the last valid one; the most expensive mean cost
    within the budget wins."""
    g = torch.Generator().manual_seed(seed)
    hazards = torch.randn(12, 6, generator=g, dtype=torch.float64) - 1.0
    costs = [1.0, 2.0, 3.5, 4.0, 5.5, 6.0]
    valid = [True, True, False, True, True, True]
    steps = [t for t in range(6) if valid[t]]
    scores = []
    for row in hazards.tolist():
        survive, out = 1.0, {}
        for t in steps:
            survive *= 1 - 1 / (1 + math.exp(-row[t]))
            out[t] = 1 - survive
        scores.append(out)

    def stops(threshold):
        return [next((t for t in steps[:-1] if s[t] >= threshold), steps[-1]) for s in scores]

    def mean_cost(threshold):
        return sum(costs[t] for t in stops(threshold)) / len(scores)

    tried = sorted({v for s in scores for v in s.values()}) + [math.inf]
    best = max(mean_cost(v) for v in tried if mean_cost(v) <= budget + 1e-12)
    rule = fit_threshold(hazards, budget, torch.tensor(costs), "cumulative", torch.tensor(valid))
    assert isinstance(rule, CumulativeThreshold)
    index = stop_indices(hazards, rule, torch.tensor(valid)).tolist()
    # the threshold is one of the scores, computed in log space: compared with a rounding margin
    assert index == stops(float(rule.score_threshold) - 1e-12)
    assert sum(costs[t] for t in index) / len(index) == pytest.approx(best)


def test_fit_threshold_cumulative_and_errors():
    hazards = torch.randn(500, 8, generator=torch.Generator().manual_seed(7))
    rule = fit_threshold(hazards, 3.0, kind="cumulative")
    assert isinstance(rule, CumulativeThreshold)
    mean_steps = float((stop_indices(hazards, rule) + 1).double().mean())
    assert 2.9 <= mean_steps <= 3.0
    with pytest.raises(ValueError, match="below the least achievable"):
        fit_threshold(hazards, 0.5)
    with pytest.raises(ValueError, match="kind"):
        fit_threshold(hazards, 3.0, kind="median")


@torch.no_grad()
def test_calibrated_rule_meets_budget_when_run():
    from stopwise.inference import calibrate

    model, policy, x = make(seed=8, batch=300)
    rule = calibrate(model, policy, x, budget=35.0)  # costs are 10 per step
    result = run_adaptive(model, policy, x, rule, "shrink")
    assert float(result.cost.mean()) <= 35.0
    hazards = hazard_trajectory(model, policy, x)
    assert torch.equal(stop_indices(hazards, rule), result.stop_index)


def reference_msdnet_thresholds(confidences, q):
    """MSDNet's dynamic-evaluation loop, one sample at a time."""
    N, K = len(confidences), len(confidences[0])
    thresholds, filtered = [math.inf] * K, [False] * N
    for k in range(K - 1):
        want, count = math.floor(N * q[k]), 0
        for i in sorted(range(N), key=lambda i: -confidences[i][k]):
            if not filtered[i]:
                count += 1
                if count == want:
                    thresholds[k] = confidences[i][k]
                    break
        for i in range(N):
            filtered[i] = filtered[i] or confidences[i][k] >= thresholds[k]
    thresholds[-1] = -math.inf
    return thresholds


@pytest.mark.parametrize("p", [0.05, 0.6, 1.0, 1.95])
def test_exit_thresholds_reproduce_target_distribution(p):
    scores = torch.rand(1000, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    q = exit_distribution(p, 5)
    thresholds = fit_exit_thresholds(scores, q)
    assert thresholds.tolist() == reference_msdnet_thresholds(scores.tolist(), q.tolist())
    exits = stop_indices(scores, ScoreThreshold(thresholds))
    counts = torch.bincount(exits, minlength=5)
    assert counts[:-1].tolist() == [math.floor(1000 * float(v)) for v in q[:-1]]
    assert int(counts.sum()) == 1000


def test_a_nan_exit_score_ranks_lowest_as_the_rule_decides():
    """A NaN confidence ranked highest in topk: it took one of exit 0's ⌊N q_0⌋ rows without
    ever exiting there (ScoreThreshold stops no NaN score but at −∞), so exit 0 got 52 rows
    of 53 and a higher threshold than with the NaN put last."""
    scores = torch.rand(100, 4, generator=torch.Generator().manual_seed(0))
    q = exit_distribution(0.5, 4)
    as_lowest = scores.clone()
    as_lowest[3, 0] = -math.inf
    scores[3, 0] = math.nan
    thresholds = fit_exit_thresholds(scores, q)
    assert torch.equal(thresholds, fit_exit_thresholds(as_lowest, q))
    counts = torch.bincount(stop_indices(scores, ScoreThreshold(thresholds)), minlength=4)
    assert counts[:-1].tolist() == [math.floor(100 * float(v)) for v in q[:-1]]


def test_exit_distribution():
    q = exit_distribution(0.5, 4)
    assert q.tolist() == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert exit_distribution(1.0, 3).tolist() == pytest.approx([1 / 3] * 3)


def test_exit_distribution_of_a_large_p_or_many_exits_is_a_distribution_and_nan_p_is_named():
    """p^k overflowed float64 (p = 2, 1100 exits; p = 1e6, 200 exits) and inf / inf gave NaN
    for the last exits; a p of NaN or inf gave a NaN distribution without a word."""
    for p, exits in ((2.0, 1100), (1e6, 200)):
        q = exit_distribution(p, exits)
        assert not q.isnan().any() and float(q.sum()) == pytest.approx(1.0)
        assert float(q[-1]) == pytest.approx(1 - 1 / p) and bool((q[1:] >= q[:-1]).all())
    for p in (math.nan, math.inf):
        with pytest.raises(ValueError, match="p must be a finite number > 0"):
            exit_distribution(p, 3)


def test_bad_arguments_are_named():
    model, policy, x = make()
    with pytest.raises(ValueError, match="mode"):
        run_adaptive(model, policy, x, HazardThreshold(0.5), mode="fast")
    with pytest.raises(ValueError, match="valid_steps"):
        run_adaptive(model, policy, x, HazardThreshold(0.5), valid_steps=torch.ones(3).bool())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        HazardThreshold(1.5)
    # a sampling rule has no score to threshold (an AttributeError about 'score' before)
    with pytest.raises(ValueError, match="mixes two threshold rules; got SampleRule"):
        MixedRule(SampleRule(0), HazardThreshold(0.5), 0.5)
    with pytest.raises(ValueError, match="mixes rules of one kind of score"):
        MixedRule(HazardThreshold(0.5), CumulativeThreshold(0.5), 0.5)


def test_in_chunks_equals_one_pass_for_tensors_and_states():
    x = torch.randn(23, 4, generator=torch.Generator().manual_seed(0))
    whole = torch.tanh(x) * 2
    assert torch.equal(in_chunks(lambda c: torch.tanh(c) * 2, x, chunk=5), whole)
    pair = in_chunks(lambda s: (s["a"].sum(-1), s["b"]), {"a": x, "b": x[:, 0]}, chunk=4)
    assert torch.equal(pair[0], x.sum(-1)) and torch.equal(pair[1], x[:, 0])
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        in_chunks(torch.tanh, x, chunk=0)


def test_time_adaptive_reports_medians_and_the_rules_steps():
    from stopwise.inference import time_adaptive

    model, policy, x = make(seed=3, batch=64)
    rules = {"early": HazardThreshold(0.0), "never": HazardThreshold(1.0)}
    timing = time_adaptive(model, policy, x, rules, repeats=2, chunk=20)
    assert timing["rows"] == 64 and timing["full_seconds"] > 0
    assert timing["rules"]["early"]["mean_steps"] == 1.0
    assert timing["rules"]["never"]["mean_steps"] == model.max_steps
    assert timing["rules"]["never"]["mean_cost"] == float(model.step_costs()[-1])
    assert timing["full_cpu_seconds"] >= 0  # process CPU time beside the wall clock
    assert all(row["cpu_seconds"] >= 0 for row in timing["rules"].values())
    both = time_adaptive(model, policy, x, rules, repeats=1, chunk=20, unpooled=True)
    assert all(row["unpooled_speedup"] > 0 for row in both["rules"].values())
    assert "unpooled_speedup" not in timing["rules"]["early"]


def _scripted_clocks(monkeypatch, durations):
    """Wall and CPU clocks that only move inside run_fixed and run_adaptive, by scripted
    amounts: ``durations[kind]`` is a list of (wall, cpu) seconds, one per call of that kind
    ("full" for run_fixed, or the rows of run_adaptive's inputs). Returns the calls made."""
    import time

    import stopwise.inference as inference

    now = {"wall": 0.0, "cpu": 0.0}
    calls = []
    real_fixed, real_adaptive = inference.run_fixed, inference.run_adaptive

    def tick(kind):
        calls.append(kind)
        wall, cpu = durations[kind].pop(0)
        now["wall"] += wall
        now["cpu"] += cpu

    def run_fixed(model, inputs, *args, **kwargs):
        tick("full")
        return real_fixed(model, inputs, *args, **kwargs)

    def run_adaptive(model, policy, inputs, *args, **kwargs):
        tick(inputs.shape[0])
        return real_adaptive(model, policy, inputs, *args, **kwargs)

    monkeypatch.setattr(inference, "run_fixed", run_fixed)
    monkeypatch.setattr(inference, "run_adaptive", run_adaptive)
    monkeypatch.setattr(time, "perf_counter", lambda: now["wall"])
    monkeypatch.setattr(time, "process_time", lambda: now["cpu"])
    return calls


def test_time_adaptive_takes_medians_of_scripted_clocks(monkeypatch):
    """Full runs of 3, 1, 2 s wall (6, 2, 4 s CPU) and a rule of 1, 1, 4 s wall (1, 3, 8 s
    CPU), after a warm-up of 100 s that is not timed: by hand the medians are 2 s and 1 s
    (speedup 2) and 4 s and 3 s of CPU (CPU speedup 4/3)."""
    from stopwise.inference import time_adaptive

    model, policy, x = make(seed=3, batch=16)
    calls = _scripted_clocks(monkeypatch, {
        "full": [(100.0, 100.0), (3.0, 6.0), (1.0, 2.0), (2.0, 4.0)],
        16: [(100.0, 100.0), (1.0, 1.0), (1.0, 3.0), (4.0, 8.0)],
    })  # fmt: skip
    timing = time_adaptive(model, policy, x, {"r": HazardThreshold(0.5)}, repeats=3, warmup=1)
    assert calls == ["full", 16] * 4
    assert timing["full_seconds"] == 2.0 and timing["full_cpu_seconds"] == 4.0
    rule = timing["rules"]["r"]
    assert rule["seconds"] == 1.0 and rule["cpu_seconds"] == 3.0
    assert rule["speedup"] == 2.0
    assert rule["cpu_speedup"] == pytest.approx(4.0 / 3.0)


def test_time_adaptive_unpooled_runs_each_chunk_on_its_own(monkeypatch):
    """64 rows in chunks of 20: the full model runs 4 chunks (1 s each), the pooled rule one
    call on all 64 rows (1 s), and the unpooled rule one call per chunk — 20, 20, 20 and 4
    rows — of 0.5 s each: 2 s, so its speedup is 4 / 2 = 2 against the pooled 4 / 1 = 4."""
    from stopwise.inference import time_adaptive

    model, policy, x = make(seed=3, batch=64)
    calls = _scripted_clocks(monkeypatch, {
        "full": [(1.0, 1.0)] * 4, 64: [(1.0, 1.0)], 20: [(0.5, 0.5)] * 3, 4: [(0.5, 0.5)],
    })  # fmt: skip
    rules = {"r": HazardThreshold(0.5)}
    timing = time_adaptive(model, policy, x, rules, repeats=1, chunk=20, warmup=0, unpooled=True)
    assert calls == ["full"] * 4 + [64, 20, 20, 20, 4]
    rule = timing["rules"]["r"]
    assert timing["full_seconds"] == 4.0
    assert (rule["seconds"], rule["speedup"]) == (1.0, 4.0)
    assert (rule["unpooled_seconds"], rule["unpooled_speedup"]) == (2.0, 2.0)


def test_time_adaptive_times_inference_without_autograd():
    """Timing runs without a graph: with one, a trainable model keeps every step's activations
    (on a GPU the denoising timing ran out of 140 GiB that way) and the clock counts autograd."""
    from stopwise.inference import time_adaptive

    model, policy, x = make(seed=3, batch=16)
    seen = []
    advance = model.advance

    def recording(state, t):
        seen.append(torch.is_grad_enabled())
        return advance(state, t)

    model.advance = recording
    assert any(p.requires_grad for p in model.parameters())
    time_adaptive(model, policy, x, {"half": HazardThreshold(0.5)}, repeats=1)
    assert seen and not any(seen)


class _StepByStep(Rule):
    """``rule``'s decisions behind a plain :class:`Rule`, so stop_indices takes its step loop."""

    def __init__(self, rule):
        self.rule = rule

    def init_carry(self, batch, num_steps, device):
        return self.rule.init_carry(batch, num_steps, device)

    def decide(self, hazard_logits, t, carry):
        return self.rule.decide(hazard_logits, t, carry)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_step", [False, True])
def test_score_threshold_stop_steps_are_the_step_loops(dtype, per_step):
    """The vectorised first-reaching pass of stop_indices equals run_adaptive's step-by-step
    decisions: ties, NaN and infinite scores, invalid steps, scalar and per-step thresholds,
    a float64 threshold compared in the scores' dtype."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(-3, 4, (400, 9), generator=g).to(dtype) / 2  # many ties
    scores[torch.rand(400, 9, generator=g) < 0.05] = math.nan
    scores[torch.rand(400, 9, generator=g) < 0.05] = math.inf
    scores[torch.rand(400, 9, generator=g) < 0.05] = -math.inf
    valid = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 0], dtype=torch.bool)  # last valid: step 6
    thresholds = [-math.inf, -1.0, 0.5, 0.1 + 1e-9, 1.5, math.inf]
    if per_step:
        thresholds = [torch.linspace(-1.5, 1.5, 9, dtype=torch.float64), torch.full((9,), 0.5)]
    for threshold in thresholds:
        rule = ScoreThreshold(threshold)
        fast = stop_indices(scores, rule, valid)
        loop = stop_indices(scores, _StepByStep(rule), valid)
        assert torch.equal(fast, loop), threshold
        assert int(fast.max()) <= 6 and not bool(((fast == 0) | (fast == 3)).any())


def test_a_budget_equal_to_the_full_cost_gets_full_depth_despite_rounding():
    """The mean of N equal float64 costs can round an ulp above them (here 49 × 2.649…): a
    budget of exactly the full cost must still give full depth, not a cheaper threshold."""
    costs = torch.tensor([0.6779, 1.6717, 2.6490001], dtype=torch.float64)
    found = 0
    for N in range(2, 200):
        if float(costs[-1].repeat(N).mean()) > float(costs[-1]):  # rounding above the cost
            hazards = torch.randn(N, 3, generator=torch.Generator().manual_seed(N))
            rule = fit_threshold(hazards, float(costs[-1]), costs)
            assert stop_indices(hazards, rule).tolist() == [2] * N, N
            found += 1
    assert found  # the rounding case occurs for these costs


def test_fit_threshold_refuses_what_it_cannot_fit_and_takes_masks_as_lists():
    hazards = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="needs rows and a budget; got 6 rows, budget nan"):
        fit_threshold(hazards, float("nan"))
    with pytest.raises(ValueError, match="got 0 rows"):
        fit_threshold(torch.zeros(0, 3), 2.0)
    with pytest.raises(ValueError, match="budget -inf is below the least achievable"):
        fit_threshold(hazards, -math.inf)  # (a rule of score −∞ came back: −∞ + ∞ is NaN)
    with pytest.raises(ValueError, match="step_costs must be cumulative"):
        fit_threshold(hazards, 2.5, torch.tensor([1.0, 3.0, 2.0]))
    with pytest.raises(ValueError, match=r"hazard threshold must lie in \[0, 1\]"):
        HazardThreshold(float("nan"))
    # a mask given as a list, as run_adaptive takes it (an AttributeError before)
    as_list = fit_threshold(hazards, 2.0, valid_steps=[True, False, True])
    as_tensor = fit_threshold(hazards, 2.0, valid_steps=torch.tensor([True, False, True]))
    assert torch.equal(as_list.score_threshold, as_tensor.score_threshold)
    assert (
        stop_indices(hazards, as_list, [True, False, True]).tolist()
        == stop_indices(hazards, as_tensor, torch.tensor([True, False, True])).tolist()
    )


def test_fit_threshold_names_costs_of_the_wrong_shape_or_not_finite_and_hazards_not_2d():
    """Costs one short failed with 'IndexError: index 2 is out of bounds', a NaN cost (which
    passes the order check) with another IndexError, and 1-d hazards with 'not enough values to
    unpack' (run_adaptive names costs of the wrong shape too)."""
    hazards = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    for costs in ([1.0, 2.0], [1.0, 2.0, 3.0, 4.0]):
        with pytest.raises(ValueError, match=r"step_costs must have shape \(3,\)"):
            fit_threshold(hazards, 2.0, torch.tensor(costs))
    for odd in (math.nan, math.inf):
        with pytest.raises(ValueError, match="step_costs must be finite"):
            fit_threshold(hazards, 2.0, torch.tensor([1.0, odd, 3.0]))
    # a cost at a skipped step is never spent
    fit_threshold(hazards, 2.0, torch.tensor([1.0, math.nan, 3.0]), valid_steps=[1, 0, 1])
    with pytest.raises(ValueError, match=r"hazard_logits must have shape \(N, T\); got \(6,\)"):
        fit_threshold(hazards[:, 0], 2.0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    share=st.floats(0.0, 1.0),
    odd=st.sampled_from([math.inf, -math.inf, math.nan]),
)
@example(seed=1137, share=0.67, odd=-math.inf)  # a budget equal to a mix's cost, in float32
def test_fit_threshold_matches_a_plain_loop_with_ties_infinities_nan_and_skipped_steps(
    seed, share, odd
):
    """Scores with ties, some ±∞ or NaN (a NaN reaches no threshold but −∞), a skipped step and
    uneven costs: the fitted rule's mean cost on the rows is the most expensive that any
    threshold (each observed score, ±∞, the greatest float) reaches within the budget, by plain
    loops. (NaN scores failed the fit; thresholds between the greatest finite score and +∞ were
    never tried.)"""
    g = torch.Generator().manual_seed(seed)
    hazards = torch.randn(25, 6, generator=g, dtype=torch.float64).mul(2).round()
    hazards[torch.rand(25, 6, generator=g) < 0.1] = odd
    valid = [True, True, False, True, True, True]
    # The float32 values the fit gets (3.2 is not a float32): a budget equal to a mix's mean
    # cost in Python floats was above it in float32 costs, and the reference chose that mix.
    costs = torch.tensor([1.0, 2.5, 3.0, 3.2, 6.0, 9.0]).tolist()
    steps = [t for t in range(6) if valid[t]]
    budget = 1.0 + share * 8.0
    rows = hazards.tolist()

    def mean_cost(threshold: float) -> float:
        def reaches(score: float) -> bool:
            return threshold == -math.inf or (threshold < math.inf and score >= threshold)

        stops = [next((t for t in steps[:-1] if reaches(row[t])), steps[-1]) for row in rows]
        return sum(costs[t] for t in stops) / len(stops)

    tried = {v for row in rows for v in row if not math.isnan(v)}
    tried |= {math.inf, -math.inf, sys.float_info.max}  # above any finite score: +∞ reaches it
    best = max(c for c in map(mean_cost, tried) if c <= budget + 1e-12 * budget)
    rule = fit_threshold(hazards, budget, torch.tensor(costs), valid_steps=valid)
    index = stop_indices(hazards, rule, valid)
    assert sum(costs[t] for t in index.tolist()) / 25 == pytest.approx(best, rel=1e-12)


def test_rule_scores_follow_each_rule_over_the_valid_steps_by_a_plain_loop():
    """``rule_scores``: a hazard rule's score is the logit itself; a cumulative rule's is
    P(stopped by t) = 1 − ∏_{valid τ ≤ t}(1 − σ(h_τ)), the invalid steps skipped (their hazards
    never enter the product); every invalid step scores −inf (it can never stop a row)."""
    from stopwise.inference import rule_scores

    g = torch.Generator().manual_seed(31)
    logits = torch.randn(5, 6, generator=g, dtype=torch.float64) * 2
    valid = torch.tensor([True, False, True, True, False, True])
    hazard = rule_scores(logits, ScoreThreshold(0.0), valid)
    cumulative = rule_scores(logits, CumulativeThreshold(0.5), valid)
    for i, row in enumerate(logits.tolist()):
        survive = 1.0
        for t, h in enumerate(row):
            if not valid[t]:
                assert hazard[i, t].item() == -math.inf
                assert cumulative[i, t].item() == -math.inf
                continue
            survive *= 1 - 1 / (1 + math.exp(-h))
            assert hazard[i, t].item() == h
            assert cumulative[i, t].item() == pytest.approx(1 - survive, rel=1e-12)


# ---------------------------------------------------------------- arguments a run cannot use


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("length", [5, 10])
def test_per_step_thresholds_of_another_length_are_named(mode, length):
    """10 thresholds for 7 steps ran silently in masked and shrink mode (and broke in a
    broadcast in dense); 5 gave an IndexError."""
    model, policy, x = make()
    wrong = ScoreThreshold(torch.zeros(length))
    for rule in (wrong, MixedRule(HazardThreshold(0.5), wrong, 0.5)):
        with pytest.raises(ValueError, match=rf"shape \({length},\).*\(7,\)"):
            run_adaptive(model, policy, x, rule, mode)


def test_a_nan_threshold_is_refused():
    """No score reaches NaN: the rule silently never stopped."""
    with pytest.raises(ValueError, match="NaN"):
        ScoreThreshold(math.nan)
    with pytest.raises(ValueError, match="NaN"):
        ScoreThreshold(torch.tensor([0.0, math.nan]))


@pytest.mark.parametrize("chunk", [2.5, "8", 0, True])
def test_a_chunk_that_is_not_a_whole_number_of_rows_is_named(chunk):
    model, policy, x = make()
    with pytest.raises(ValueError, match="chunk"):
        run_adaptive(model, policy, x, HazardThreshold(0.5), "shrink", chunk=chunk)
    with pytest.raises(ValueError, match="chunk"):
        in_chunks(lambda part: part, x, chunk)


def test_run_fixed_refuses_a_depth_outside_the_model():
    model, _, x = make()
    for steps in (0, -1, 8):
        with pytest.raises(ValueError, match=r"num_steps must lie in 1\.\.7"):
            run_fixed(model, x, steps)


def test_unroll_refuses_a_depth_outside_the_model():
    """0 steps failed with 'stack expects a non-empty TensorList', T + 1 with the model's own
    IndexError; run_fixed names both."""
    model, _, x = make()
    for steps in (0, -1, 8):
        with pytest.raises(ValueError, match=r"num_steps must lie in 1\.\.7"):
            unroll(model, x, steps)
    assert unroll(model, x, 3).predictions.shape == (64, 3, 3)


def test_in_chunks_of_no_rows_gives_fn_of_no_rows():
    empty = torch.zeros(0, 6)
    assert in_chunks(lambda part: part * 2, empty, 4).shape == (0, 6)
    out = in_chunks(lambda part: {"a": part.sum(1), "b": part[:, :2]}, empty, 4)
    assert out["a"].shape == (0,) and out["b"].shape == (0, 2)


class SharedMatrix(RandomStepModel):
    """Keeps a (dim, dim) matrix every row shares in its state: rows cannot be selected."""

    def start(self, x):
        return {**super().start(x), "shared": self.W[0].detach()}

    def advance(self, state, t):
        return {**super().advance(state, t), "shared": state["shared"]}


def test_shrink_names_a_state_tensor_without_a_row_per_input():
    model, policy, x = make()
    shared = SharedMatrix()
    shared.load_state_dict(model.state_dict())
    for mode in ("dense", "masked"):  # they never select rows
        run_adaptive(shared, policy, x, HazardThreshold(0.5), mode)
    with pytest.raises(ValueError, match=r"shapes \[\(6, 6\)\]"):
        run_adaptive(shared, policy, x, HazardThreshold(0.5), "shrink")


class SharedMatrixFirst(SharedMatrix):
    """The shared matrix is the state's first tensor."""

    def start(self, x):
        return {"shared": self.W[0].detach(), **RandomStepModel.start(self, x)}

    def advance(self, state, t):
        return {"shared": state["shared"], **RandomStepModel.advance(self, state, t)}


@pytest.mark.parametrize("rows", [1, 3, 6])
@pytest.mark.parametrize("mode", ["dense", "masked"])
def test_a_shared_matrix_first_in_the_state_leaves_the_rows_to_the_predictions(mode, rows):
    """Masked mode (what shrink's refusal of a shared matrix points to) and dense counted the
    rows from the state's first tensor: with the (6, 6) matrix first, 3 rows failed with 'the
    policy must return hazard logits of shape (6,)', and 1 row did too."""
    model, policy, x = make()
    first = SharedMatrixFirst()
    first.load_state_dict(model.state_dict())
    rule = CumulativeThreshold(0.6)  # a rule with a carry of one entry per row
    expected = run_adaptive(model, policy, x[:rows], rule, "shrink")
    for chunk in (None, 2):
        result = run_adaptive(first, policy, x[:rows], rule, mode, chunk=chunk)
        assert torch.equal(result.stop_index, expected.stop_index)
        torch.testing.assert_close(result.predictions, expected.predictions)


def test_hazards_and_calibration_of_a_state_with_a_shared_matrix_first():
    """hazard_trajectory (and so calibrate) counted the rows from the state's first tensor too:
    'the policy must return hazard logits of shape (6,) at step 0; got (64,)'."""
    model, policy, x = make()
    first = SharedMatrixFirst()
    first.load_state_dict(model.state_dict())
    assert torch.equal(hazard_trajectory(first, policy, x), hazard_trajectory(model, policy, x))
    fitted = calibrate(first, policy, x, budget=30.0)
    assert torch.equal(fitted.score_threshold, calibrate(model, policy, x, 30.0).score_threshold)


class StepCounterFirst(RandomStepModel):
    """A 0-d step counter as the state's first tensor."""

    def start(self, x):
        return {"n": torch.tensor(0), **super().start(x)}

    def advance(self, state, t):
        return {"n": state["n"] + 1, **super().advance(state, t)}


def test_shrink_says_it_counts_the_rows_from_the_states_first_tensor():
    """With a shared matrix first, shrink named the rows' own tensors as the ones without a row
    per input ('a state of 6 rows holds tensors of shapes [(3, 6), (3, 6)]'), and a 0-d first
    tensor failed with 'IndexError: tuple index out of range'."""
    model, policy, x = make()
    first = SharedMatrixFirst()
    first.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match=r"from its first tensor \(shape \(6, 6\)\)"):
        run_adaptive(first, policy, x[:3], HazardThreshold(0.5), "shrink")
    counter = StepCounterFirst()
    counter.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match=r"first tensor \(shape \(\)\); its tensors of shapes"):
        run_adaptive(counter, policy, x, HazardThreshold(0.5), "shrink")


@pytest.mark.parametrize("valid", [None, [1, 0, 1, 1, 0]])
def test_sampled_stops_are_the_first_step_whose_seeded_uniform_falls_below_the_hazard(valid):
    """SampleRule(seed) draws u ~ U(0, 1) for every row and step from a generator seeded with
    ``seed`` and stops at the first valid step t with u_t < λ_t (a plain loop over the same
    uniforms drawn here)."""
    g = torch.Generator().manual_seed(11)
    hazards = torch.randn(200, 5, generator=g, dtype=torch.float64)
    u = torch.rand(200, 5, generator=torch.Generator().manual_seed(4))
    steps = [t for t in range(5) if valid is None or valid[t]]
    expected = []
    for i in range(200):
        hit = [t for t in steps[:-1] if u[i, t] < torch.sigmoid(hazards[i, t])]
        expected.append(hit[0] if hit else steps[-1])
    mask = None if valid is None else torch.tensor(valid, dtype=torch.bool)
    assert stop_indices(hazards, SampleRule(seed=4), mask).tolist() == expected


@pytest.mark.parametrize("kind", ["hazard", "cumulative"])
def test_fit_threshold_at_the_first_valid_steps_cost_stops_new_rows_there_too(kind):
    """Step 0 pruned, costs 1..3: a budget of 2 is every row stopping at its first valid step
    (index 1), and a new row with low scores must stop there as well (threshold −∞), whatever
    the scores at the pruned step."""
    g = torch.Generator().manual_seed(2)
    hazards = torch.randn(30, 3, generator=g, dtype=torch.float64)
    valid = torch.tensor([False, True, True])
    rule = fit_threshold(hazards, 2.0, kind=kind, valid_steps=valid)
    assert float(rule.score_threshold) == -math.inf
    new_rows = torch.cat([hazards, torch.full((1, 3), -40.0, dtype=torch.float64)])
    assert stop_indices(new_rows, rule, valid).tolist() == [1] * 31


@pytest.mark.parametrize("mode", ["dense", "masked", "shrink"])
@torch.no_grad()
def test_the_policy_is_asked_only_at_valid_steps_before_the_last(mode):
    """A pruned step can stop no row and the last valid step stops every row: no mode may ask
    the policy there (its features may not exist at a pruned exit)."""
    model, policy, x = make(seed=6)
    valid = [1, 0, 1, 1, 0, 1, 0]
    seen = set()

    def counting(features, t):
        seen.add(t)
        return policy(features, t)

    run_adaptive(model, counting, x, HazardThreshold(0.9), mode, torch.tensor(valid).bool())
    assert seen == {0, 2, 3}
