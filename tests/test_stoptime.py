"""Stop-time math against plain-loop references, closed forms and finite differences."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stopwise.stoptime import (
    StopTime,
    kl_divergence,
    oracle,
    random_horizon_cdf,
    random_horizon_log_conditional,
    random_horizon_log_prior,
    sample_random_horizon,
    truncated_geometric_log_prior,
)


def reference_probs(logits, mask, tail="absorb"):
    """q(t) = λ_t ∏_{τ<t}(1 − λ_τ) by a plain loop in float64; last valid step takes the rest."""
    out = []
    for row, valid in zip(logits.tolist(), mask.tolist(), strict=True):
        last = max(i for i, v in enumerate(valid) if v)
        survive, q = 1.0, []
        for t, (h, v) in enumerate(zip(row, valid, strict=True)):
            if not v:
                q.append(0.0)
                continue
            lam = 1.0 / (1.0 + math.exp(-h)) if h > -700 else 0.0
            if t == last and tail == "absorb":
                q.append(survive)
            else:
                q.append(survive * lam)
            survive *= 1.0 - lam
        if tail == "renormalize":
            total = sum(q)
            q = [x / total for x in q]
        out.append(q)
    return torch.tensor(out, dtype=torch.float64)


def random_mask(B, T, generator):
    mask = torch.rand(B, T, generator=generator) < 0.6
    mask[torch.arange(B), torch.randint(T, (B,), generator=generator)] = True
    return mask


@pytest.mark.parametrize("tail", ["absorb", "renormalize"])
def test_probs_match_plain_loop(tail):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 7, generator=g, dtype=torch.float64) * 3
    mask = random_mask(16, 7, g)
    stop = StopTime(logits, mask, tail=tail)
    torch.testing.assert_close(stop.probs, reference_probs(logits, mask, tail))


def test_summaries_match_plain_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 6, generator=g, dtype=torch.float64) * 2
    mask = random_mask(10, 6, g)
    stop = StopTime(logits, mask)
    q = reference_probs(logits, mask)
    for i, row in enumerate(q.tolist()):
        entropy = -sum(p * math.log(p) for p in row if p > 0)
        mean = sum(p * (t + 1) for t, p in enumerate(row))
        cdf = [sum(row[: t + 1]) for t in range(len(row))]
        median = next(t for t, c in enumerate(cdf) if c >= 0.5 - 1e-12)
        assert stop.entropy()[i].item() == pytest.approx(entropy, abs=1e-10)
        assert stop.mean()[i].item() == pytest.approx(mean, abs=1e-10)
        assert stop.cdf()[i].tolist() == pytest.approx(cdf, abs=1e-10)
        assert stop.median()[i].item() == median
        assert stop.mode()[i].item() == max(range(len(row)), key=row.__getitem__)


def test_extreme_logits_are_exact():
    high = StopTime(torch.full((3, 5), 1e4))
    low = StopTime(torch.full((3, 5), -1e4))
    assert torch.equal(high.probs, torch.eye(5)[[0, 0, 0]])
    assert torch.equal(low.probs, torch.eye(5)[[4, 4, 4]])
    assert torch.isfinite(high.entropy()).all() and torch.isfinite(low.entropy()).all()
    mixed = StopTime(torch.tensor([[-1e4, 1e4, -1e4, 1e4]]), mask=torch.tensor([1, 0, 1, 1]))
    assert torch.equal(mixed.probs, torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
    assert mixed.mean().item() == 4.0


def test_single_step_has_all_mass():
    stop = StopTime(torch.randn(4, 1))
    assert torch.equal(stop.probs, torch.ones(4, 1))
    assert torch.equal(stop.entropy(), torch.zeros(4))


def test_bad_shapes_and_masks_are_named():
    with pytest.raises(ValueError, match="shape"):
        StopTime(torch.zeros(5))
    with pytest.raises(ValueError, match="mask has shape"):
        StopTime(torch.zeros(2, 3), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no valid step"):
        StopTime(torch.zeros(2, 3), mask=torch.tensor([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="tail"):
        StopTime(torch.zeros(2, 3), tail="cut")


@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.integers(1, 9),
    scale=st.sampled_from([0.1, 3.0, 50.0, 1e4]),
    seed=st.integers(0, 2**16),
    tail=st.sampled_from(["absorb", "renormalize"]),
)
def test_property_distribution_is_valid(B, T, scale, seed, tail):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, generator=g) * scale
    mask = random_mask(B, T, g)
    stop = StopTime(logits, mask, tail=tail)
    probs = stop.probs
    assert torch.isfinite(stop.log_probs[mask]).all()
    assert torch.isfinite(stop.entropy()).all() and (stop.entropy() >= -1e-6).all()
    assert (probs[~mask] == 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(B), atol=1e-5, rtol=0)
    assert ((stop.mean() >= 1) & (stop.mean() <= T + 1e-4)).all()
    assert mask.gather(1, stop.sample(g).unsqueeze(1)).all()
    assert mask.gather(1, stop.median().unsqueeze(1)).all()


@pytest.mark.parametrize("tail", ["absorb", "renormalize"])
def test_log_probs_gradient_matches_finite_differences(tail):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda h: StopTime(h, mask, tail).log_probs[:, mask], logits)
    assert torch.autograd.gradcheck(lambda h: StopTime(h, mask, tail).entropy(), logits)


def test_sample_frequencies_match_probs():
    logits = torch.tensor([[-1.0, 0.5, -0.3, 0.2]]).expand(40000, 4)
    stop = StopTime(logits)
    counts = torch.bincount(stop.sample(torch.Generator().manual_seed(3)), minlength=4).double()
    expected = stop.probs[0].double() * 40000
    assert ((counts - expected).abs() <= 5 * expected.sqrt()).all()


def test_oracle_is_softmax_and_hard_is_argmin():
    losses = torch.tensor([[3.0, 1.0, 2.0, 0.5], [0.2, 0.1, 0.4, 0.3]])
    beta = 0.7
    for row, ref in zip(oracle(losses, beta), losses, strict=True):
        weights = [math.exp(-v / beta) for v in ref.tolist()]
        assert row.tolist() == pytest.approx([w / sum(weights) for w in weights], rel=1e-6)
    assert oracle(losses, beta, hard=True).tolist() == [[0, 0, 0, 1], [0, 1, 0, 0]]
    masked = oracle(losses, beta, hard=True, mask=torch.tensor([1, 0, 1, 0]))
    assert masked.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    assert oracle(losses, beta, mask=torch.tensor([1, 0, 1, 0]))[:, [1, 3]].abs().sum() == 0
    with pytest.raises(ValueError, match="beta"):
        oracle(losses, 0.0)


def test_oracle_at_extreme_temperatures_is_the_hard_oracle_or_uniform():
    """−ℓ/β overflows for a tiny β: the oracle must still be the one-hot argmin (ties shared),
    not NaN; a huge β gives the uniform distribution over the valid steps."""
    losses = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.5, 0.5]])
    assert oracle(losses, 1e-39).tolist() == [[1, 0, 0], [0, 0.5, 0.5]]
    masked = oracle(losses.double(), 1e-320, mask=torch.tensor([0, 1, 1]))
    assert masked.tolist() == [[0, 1, 0], [0, 0.5, 0.5]]
    assert oracle(losses, 1e30).flatten().tolist() == pytest.approx([1 / 3] * 6)


def test_entropy_of_a_hazard_of_exactly_zero_or_one():
    """Logits ±inf give valid steps with q(t) = 0; their 0 log 0 is 0 (entropy by hand:
    q = [0, 1/2, 1/2] → log 2; q = [1, 0, 0] → 0; q = [1/2, 0, 1/2] → log 2)."""
    inf = math.inf
    logits = torch.tensor(
        [[-inf, 0.0, 0.0], [inf, 0.0, 0.0], [0.0, -inf, 0.0]], dtype=torch.float64
    )
    stop = StopTime(logits)
    assert stop.probs.tolist() == [[0, 0.5, 0.5], [1, 0, 0], [0.5, 0, 0.5]]
    assert stop.entropy().tolist() == pytest.approx([math.log(2), 0.0, math.log(2)])


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_property_kl_nonnegative_and_zero_only_at_equality(T, seed):
    g = torch.Generator().manual_seed(seed)
    log_p = torch.log_softmax(torch.randn(4, T, generator=g, dtype=torch.float64), -1)
    log_q = torch.log_softmax(torch.randn(4, T, generator=g, dtype=torch.float64), -1)
    kl = kl_divergence(log_p, log_q)
    assert (kl >= 0).all()
    assert torch.allclose(kl_divergence(log_p, log_p), torch.zeros(4, dtype=torch.float64))
    differs = (log_p - log_q).abs().amax(-1) > 1e-6
    assert (kl[differs] > 0).all()


def test_kl_handles_zero_mass_in_p():
    log_p = torch.log(torch.tensor([[0.5, 0.0, 0.5]]))
    log_q = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    assert kl_divergence(log_p, log_q).item() == pytest.approx(0.5 * math.log(2))


def test_kl_keeps_its_negative_terms_by_hand():
    """p = (1/4, 3/4), q = (1/2, 1/2): KL = ¼ log ½ + ¾ log 3/2 ≈ 0.1308, its first term
    negative. With a third step masked out (where p has mass) that step's term is dropped."""
    log_p = torch.log(torch.tensor([[0.25, 0.75]], dtype=torch.float64))
    log_q = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl_divergence(log_p, log_q).item() == pytest.approx(expected)
    log_p3 = torch.log(torch.tensor([[0.25, 0.3, 0.75]], dtype=torch.float64))
    log_q3 = torch.log(torch.tensor([[0.5, 0.1, 0.5]], dtype=torch.float64))
    mask = torch.tensor([True, False, True])
    assert kl_divergence(log_p3, log_q3, mask).item() == pytest.approx(expected)


def test_log_prob_matches_plain_loop():
    """log q(index) at given 0-based indices: the log of the plain loop's q at each row's own
    index, for both tails: rows asked for different steps at once, every step in turn (−inf at
    a masked step)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 6, generator=g, dtype=torch.float64) * 2
    mask = random_mask(12, 6, g)
    for tail in ("absorb", "renormalize"):
        q = reference_probs(logits, mask, tail).tolist()
        stop = StopTime(logits, mask, tail=tail)
        for shift in range(6):
            index = (torch.arange(12) + shift) % 6
            expected = [math.log(q[i][t]) if q[i][t] > 0 else -math.inf
                        for i, t in enumerate(index.tolist())]  # fmt: skip
            assert stop.log_prob(index).tolist() == pytest.approx(expected, rel=1e-9), tail


def test_truncated_geometric_prior_at_p_one_is_the_first_step():
    """p = 1: p(t) ∝ 1 · 0^t, all the mass on step 0 — log prior (0, −inf, −inf, −inf)."""
    log_prior = truncated_geometric_log_prior(1.0, 4, dtype=torch.float64)
    assert log_prior.tolist() == [0.0, -math.inf, -math.inf, -math.inf]
    # Step 0 masked: the limit p → 1 of the renormalised prior, all on the first valid step
    # (it was 0/0: NaN everywhere; p = 1 − 1e-6 gives ≈ (0, 1, 0)).
    masked = truncated_geometric_log_prior(1.0, 3, mask=torch.tensor([[0, 1, 1], [1, 1, 0]]))
    assert masked.exp().tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    near = truncated_geometric_log_prior(
        1 - 1e-6, 3, mask=torch.tensor([0, 1, 1]), dtype=torch.float64
    )
    assert near.exp().tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-5)


def test_truncated_geometric_prior():
    log_prior = truncated_geometric_log_prior(0.3, 6, dtype=torch.float64)
    prior = log_prior.exp()
    unnormalised = [0.3 * 0.7**t for t in range(6)]
    assert prior.tolist() == pytest.approx([u / sum(unnormalised) for u in unnormalised])
    masked = truncated_geometric_log_prior(0.3, 4, mask=torch.tensor([1, 0, 1, 1])).exp()
    assert masked[1] == 0 and masked.sum().item() == pytest.approx(1.0)
    assert masked[3] / masked[2] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="0 < p"):
        truncated_geometric_log_prior(0.0, 3)
    # A row with no valid step has no prior to renormalise (it was NaN, or silently step 0 at p = 1).
    for p in (0.3, 1.0):
        with pytest.raises(ValueError, match="no valid step"):
            truncated_geometric_log_prior(p, 3, mask=torch.tensor([[1, 0, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="mask has shape"):
        truncated_geometric_log_prior(0.3, 3, mask=torch.tensor([1, 1]))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_random_horizon_prior_marginal_is_geometric(p):
    horizons = torch.arange(0, 2000)
    prior = random_horizon_log_prior(p, horizons).exp()
    assert prior.sum().item() == pytest.approx(1.0, abs=1e-12)
    for t in range(6):
        marginal = sum(
            prior[H].item() * random_horizon_log_conditional(p, H, torch.float64)[t].exp().item()
            for H in range(t, 2000)
        )
        assert marginal == pytest.approx(p * (1 - p) ** t, rel=1e-9)
    torch.testing.assert_close(random_horizon_cdf(p, horizons[:50]), prior.cumsum(0)[:50])


def test_random_horizon_conditional_keeps_the_st_factor():
    p, H = 0.36, 4
    s = math.sqrt(1 - p)
    conditional = random_horizon_log_conditional(p, H, torch.float64).exp()
    assert conditional.tolist() == pytest.approx(
        [(1 - s) * s**t / (1 - s ** (H + 1)) for t in range(H + 1)]
    )
    assert conditional.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.5, 5e-324, 1e-310])
def test_random_horizon_prior_refuses_a_p_outside_the_normal_floats_below_one(p):
    """A subnormal p made ½ log(1 − p) round to 0: the conditional raised a bare math domain
    error and the prior gave −inf; now every function names the range."""
    for call in (
        lambda: random_horizon_log_prior(p, torch.arange(3)),
        lambda: random_horizon_log_conditional(p, 3),
        lambda: random_horizon_cdf(p, torch.arange(3)),
        lambda: sample_random_horizon(p, 3),
    ):
        with pytest.raises(ValueError, match="random-horizon prior needs"):
            call()


def test_random_horizon_sampler_refuses_draws_it_cannot_represent():
    """At p = 1e-19 untruncated draws pass 2⁶³ (they were returned as −2⁶³), and at p = 1e-200
    P(T ≤ 100) underflows to 0 (every truncated draw was 0): both are errors now; a truncated
    draw at p = 1e-19 is fine, and the smallest normal p still gives a finite prior."""
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="pass max_horizon"):
        sample_random_horizon(1e-19, 50, g)
    with pytest.raises(ValueError, match="underflows"):
        sample_random_horizon(1e-200, 50, g, max_horizon=100)
    draws = sample_random_horizon(1e-19, 2000, g, max_horizon=100)
    assert 0 <= int(draws.min()) and int(draws.max()) <= 100 and len(set(draws.tolist())) > 50
    tiny = 2.2250738585072014e-308
    assert torch.isfinite(random_horizon_log_prior(tiny, torch.arange(3))).all()
    torch.testing.assert_close(
        random_horizon_log_conditional(tiny, 3, torch.float64),
        torch.full((4,), -math.log(4), dtype=torch.float64),
    )


def test_random_horizon_sampler_matches_prior():
    p, n = 0.2, 200_000
    samples = sample_random_horizon(p, n, torch.Generator().manual_seed(4))
    counts = torch.bincount(samples, minlength=30)[:30].double()
    expected = random_horizon_log_prior(p, torch.arange(30)).exp() * n
    assert ((counts - expected).abs() <= 5 * expected.sqrt() + 1).all()
    assert samples.min() >= 0


def reference_horizon_cdf(p: float, up_to: int) -> list[float]:
    """P(T ≤ n) for n = 0..up_to−1 as a running (compensated) sum of the prior written out from
    its definition, p(T) = s^T (1 − s^{T+1})(1 − s²) with s = √(1 − p)."""
    s = math.sqrt(1 - p)
    total, carry, out = 0.0, 0.0, []
    for T in range(up_to):
        x = s**T * (1 - s ** (T + 1)) * (1 - s * s)
        new = total + x
        carry += (total - new) + x if abs(total) >= abs(x) else (x - new) + total
        total = new
        out.append(total + carry)
    return out


@pytest.mark.parametrize("p", [0.001, 0.3, 0.999])
@pytest.mark.parametrize("max_horizon", [None, 3])
def test_random_horizon_sampler_is_the_exact_inverse_cdf(p, max_horizon):
    """Exact reproduction of ``sample_random_horizon``'s draws, not a frequency test: with the
    same seed, the sampler's uniforms are ``torch.rand(size, dtype=float64)`` (scaled by
    P(T ≤ max_horizon) when truncated, so that the draw is from p(T | T ≤ max_horizon)), and
    each draw must be the smallest T whose CDF reaches its uniform, found here by a search over
    the tabulated CDF rather than by the sampler's quadratic solve. The closed-form
    ``random_horizon_cdf`` used for that table is first checked against a compensated running
    sum of the prior written out independently, over the whole range the draws can reach
    (up to CDF = 1 in float64), and the inversion is repeated on the independent sums, which
    must agree except for uniforms within rounding of a CDF step (there are none here)."""
    s = math.sqrt(1 - p)
    n = math.ceil(40 / -math.log(s)) + 10  # s^(n+1) < e^-40: the CDF is 1.0 in float64 there
    table = random_horizon_cdf(p, torch.arange(n))
    independent = torch.tensor(reference_horizon_cdf(p, n), dtype=torch.float64)
    torch.testing.assert_close(table, independent, rtol=0, atol=1e-13)
    assert table[-1].item() == 1.0 and bool((table[1:] >= table[:-1]).all())  # sorted: search ok

    size = (40, 50)
    draws = sample_random_horizon(p, size, torch.Generator().manual_seed(21), max_horizon)
    U = torch.rand(size, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    if max_horizon is not None:
        assert table[max_horizon].item() == pytest.approx(independent[max_horizon].item())
        U = U * table[max_horizon]
    expected = torch.searchsorted(table, U.flatten()).view(size)  # first T with CDF(T) >= U
    assert draws.dtype == torch.long and draws.shape == size
    assert torch.equal(draws, expected)
    if max_horizon is not None:
        assert int(draws.max()) <= max_horizon
    by_sums = torch.searchsorted(independent, U.flatten())
    below = independent[(by_sums - 1).clamp_min(0)]  # the CDF steps either side of each U
    above = independent[by_sums.clamp_max(n - 1)]
    assert not bool(((U.flatten() - below).abs().lt(1e-12) & (by_sums > 0)).any())
    assert not bool((above - U.flatten()).abs().lt(1e-12).any())
    assert torch.equal(by_sums.view(size), draws)
    # the draws cover more than one horizon (except where p(0) is near 1 and only 2000 draws)
    assert len(draws.unique()) >= (2 if p == 0.999 else min(4, (max_horizon or 99) + 1))


def test_median_at_a_cdf_of_exactly_one_half_is_that_step():
    """The median is the smallest step with cdf ≥ 1/2, so a cdf of exactly 1/2 (λ = σ(0) = 1/2,
    exact in binary) puts the median there, not one step later. By hand: q = (1/2, 1/2, 0) → 0;
    λ_0 = 0 gives q = (0, 1/2, 1/2) → 1, as does step 0 masked out; q = (1/2, 1/4, 1/4) → 0."""
    inf = math.inf
    logits = torch.tensor(
        [[0.0, 5.0, 5.0], [-inf, 0.0, 7.0], [9.0, 0.0, 3.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    stop = StopTime(logits, mask)
    expected = [[0.5, 0.5, 0], [0, 0.5, 0.5], [0, 0.5, 0.5], [0.5, 0.25, 0.25]]
    assert stop.probs.tolist() == expected  # exact: the ties are real
    assert reference_probs(logits, mask).tolist() == expected
    for i, row in enumerate(expected):  # the definition, by a plain loop
        cdf = [sum(row[: t + 1]) for t in range(3)]
        assert stop.median()[i].item() == next(t for t in range(3) if cdf[t] >= 0.5)
    assert stop.median().tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_a_beta_that_underflows_gives_the_hard_oracle(dtype):
    """β = 1e-300 rounded to a float32 0: the least step was 0/0 (NaN, and a run failed as
    'diverged'). The limit β → 0 is the argmin, ties split evenly."""
    losses = torch.tensor([[0.7, 0.69, 0.71], [0.5, 0.25, 0.25]], dtype=dtype)
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 0.5]], dtype=dtype)
    for beta in (1e-300, 1e-45, 1e-30):
        got = oracle(losses, beta)
        assert got.dtype == dtype and torch.equal(got, expected), (beta, got)


def test_a_nan_loss_is_the_worst_step_and_an_all_nan_row_stays_nan():
    """torch's argmin/amin pick a NaN: a step that diverged became the oracle's best step."""
    nan = math.nan
    losses = torch.tensor([[nan, 1.0, 2.0], [0.5, 0.2, nan], [nan, nan, nan]])
    hard = oracle(losses, 1.0, hard=True)
    assert hard[:2].tolist() == [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    assert torch.isnan(hard[2]).all()
    soft = oracle(losses, 1.0)
    # softmax(−ℓ/β) over the finite steps only, by hand
    first = [0.0, 1 / (1 + math.exp(-1.0)), math.exp(-1.0) / (1 + math.exp(-1.0))]
    second = [math.exp(-0.5) / (math.exp(-0.5) + math.exp(-0.2))]
    second += [1 - second[0], 0.0]
    assert soft[:2].flatten().tolist() == pytest.approx(first + second, abs=1e-6)
    assert torch.isnan(soft[2]).all()


def test_infinite_losses_give_the_limit_not_nan():
    """ℓ = −inf at some steps: in the limit all the mass is shared by them; every step +inf:
    the losses are equal, so q* is uniform (both were 0/0 = NaN)."""
    inf = math.inf
    losses = torch.tensor([[1.0, -inf, -inf, 0.0], [inf, inf, inf, inf]], dtype=torch.float64)
    for beta in (1e-3, 1.0, 1e3):
        assert oracle(losses, beta).tolist() == [[0, 0.5, 0.5, 0], [0.25] * 4]
    assert oracle(losses, 1.0, hard=True)[0].tolist() == [0, 1, 0, 0]


def test_renormalized_stop_time_of_a_row_that_never_stops_is_its_last_valid_step():
    inf = math.inf
    logits = torch.tensor([[-inf, -inf, -inf], [-inf, -inf, -inf], [0.0, -inf, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    probs = StopTime(logits, mask, tail="renormalize").probs
    # row 3 by the definition: q ∝ (1/2, 0, 1/2 · 1/2) over the valid steps
    assert probs.flatten().tolist() == pytest.approx([0, 0, 1, 0, 1, 0, 2 / 3, 0, 1 / 3])


def test_the_hard_oracle_of_a_row_of_infinite_valid_losses_is_its_first_valid_step():
    """argmin over a row of +inf took step 0, which the mask had ruled out (an audit)."""
    inf = math.inf
    losses = torch.tensor([[1.0, inf, inf], [math.nan, inf, inf]])
    mask = torch.tensor([False, True, True])
    assert oracle(losses, 1.0, hard=True, mask=mask).tolist() == [[0, 1, 0], [0, 1, 0]]
    assert oracle(losses, 1.0, mask=mask).tolist() == [[0, 0.5, 0.5], [0, 0.5, 0.5]]


def test_renormalized_probabilities_are_exact_for_hazard_logits_of_minus_1e4_in_float32():
    """Equal hazards renormalised over T steps give 1/T each. In float32 at logits of −1e4 a
    plain subtraction of the logsumexp lost digits (0.249894 each, summing to 0.999576)."""
    stop = StopTime(torch.full((1, 4), -1e4), tail="renormalize")
    assert stop.probs.tolist() == [[0.25, 0.25, 0.25, 0.25]]
