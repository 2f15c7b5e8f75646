"""Property tests of the stop-time math against independent references: closed forms written
out from the papers in arbitrary precision (mpmath), plain loops, brute force and gradcheck."""

import math

import mpmath
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from stopwise.objectives import (
    act_halting,
    gain_rates,
    l2s_stage1_loss,
    l2s_stage2_loss,
    pondernet_loss,
    random_horizon_bound,
)
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

mpmath.mp.dps = 60
fast = settings(max_examples=40, deadline=None)

# Hazard logits that stress log space: zero, moderate, large and infinite in both directions.
logit = st.one_of(
    st.floats(-30, 30),
    st.sampled_from([0.0, -1e4, 1e4, -1e30, 1e30, -math.inf, math.inf, -88.0, 88.0, 700.0]),
)
probability = st.one_of(
    st.floats(1e-300, 1 - 1e-12),
    st.sampled_from([1e-17, 1e-14, 1e-9, 0.5, 1 - 1e-9, 1e-300]),
)


def rows(T, elements):
    return st.lists(st.lists(elements, min_size=T, max_size=T), min_size=1, max_size=3)


@st.composite
def hazard_problems(draw):
    T = draw(st.integers(1, 7))
    logits = draw(rows(T, logit))
    mask = [draw(st.lists(st.booleans(), min_size=T, max_size=T)) for _ in logits]
    for row in mask:
        row[draw(st.integers(0, T - 1))] = True
    return logits, mask


def mp_log_sigmoid(h):
    if h == math.inf:
        return mpmath.mpf(0)
    if h == -math.inf:
        return mpmath.mpf("-inf")
    return -mpmath.log1p(mpmath.exp(-mpmath.mpf(h)))


def reference_log_probs(logits, mask, tail):
    """log q(t) = log λ_t + Σ_{τ<t} log(1 − λ_τ) (L2S Eq. 4) over the valid steps, in 60 digits;
    absorb: the last valid step takes ∏(1 − λ); renormalize: divide by the sum (a sum of 0: the
    last valid step takes everything)."""
    out = []
    for row, valid in zip(logits, mask, strict=True):
        last = max(i for i, v in enumerate(valid) if v)
        log_survive, q = mpmath.mpf(0), []
        for t, (h, v) in enumerate(zip(row, valid, strict=True)):
            if not v:
                q.append(None)
                continue
            if t == last and tail == "absorb":
                q.append(log_survive)
            else:
                q.append(log_survive + mp_log_sigmoid(h))
            log_survive += mp_log_sigmoid(-h)
        finite = [x for x in q if x is not None and x != mpmath.mpf("-inf")]
        if tail == "renormalize":
            if not finite:
                q = [None] * len(q)
                q[last] = mpmath.mpf(0)
            else:
                top = max(finite)
                total = top + mpmath.log(mpmath.fsum(mpmath.exp(x - top) for x in finite))
                q = [None if x is None else x - total for x in q]
        out.append([-math.inf if x is None else float(x) for x in q])
    return torch.tensor(out, dtype=torch.float64)


@fast
@given(
    problem=hazard_problems(),
    tail=st.sampled_from(["absorb", "renormalize"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
@example(problem=([[math.inf, math.inf]], [[True, True]]), tail="renormalize", dtype=torch.float32)
@example(
    problem=([[-1e4, -1e4, 0.0]], [[True, True, False]]), tail="renormalize", dtype=torch.float32
)
def test_stop_time_log_probs_match_the_product_formula_in_60_digits(problem, tail, dtype):
    logits, mask = problem
    h = torch.tensor(logits, dtype=dtype)
    stop = StopTime(h, torch.tensor(mask), tail=tail)
    want = reference_log_probs(h.double().tolist(), mask, tail)  # the logits as rounded to dtype
    got = stop.log_probs.double()
    assert not torch.isnan(got).any()
    assert (torch.isneginf(got) == torch.isneginf(want)).all(), (got, want)
    finite = torch.isfinite(want)
    eps = torch.finfo(dtype).eps
    # log q is exact to a few ulps of its own magnitude (the sums of logsigmoids it is made of)
    tol = 8 * eps * (1 + want.abs() * 7)
    assert ((got - want).abs()[finite] <= tol[finite]).all(), (got, want)
    torch.testing.assert_close(stop.probs.double().sum(-1), torch.ones(len(logits)).double())
    entropy = stop.entropy()
    assert torch.isfinite(entropy).all() and (entropy >= -1e-6).all()


@settings(max_examples=15, deadline=None)
@given(
    T=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([0.5, 5.0, 30.0]),
    tail=st.sampled_from(["absorb", "renormalize"]),
)
def test_stop_time_gradients_match_finite_differences_with_a_mask(T, seed, scale, tail):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, T, generator=g, dtype=torch.float64) * scale).requires_grad_()
    mask = torch.rand(2, T, generator=g) < 0.7
    mask[:, 0] = True
    w = torch.randn(2, T, generator=g, dtype=torch.float64)

    def summaries(h):
        stop = StopTime(h, mask, tail)
        return stop.probs, stop.mean(), stop.entropy(), (stop.log_probs.masked_fill(~mask, 0) * w)

    assert torch.autograd.gradcheck(summaries, logits)


def mp_oracle(losses, beta, valid):
    """softmax_t(−ℓ_t/β) over the valid, non-NaN steps, in 60 digits; a row of all ±inf shares
    the mass among its least steps (the limit)."""
    out = []
    for row, ok in zip(losses, valid, strict=True):
        steps = [t for t, (x, v) in enumerate(zip(row, ok, strict=True)) if v and x == x]
        least = min(row[t] for t in steps)
        q = [mpmath.mpf(0)] * len(row)
        if math.isinf(least):
            tied = [t for t in steps if row[t] == least]
            for t in tied:
                q[t] = mpmath.mpf(1) / len(tied)
        else:
            # exp(−∞/β) = 0 for every β, including β = ∞
            z = {
                t: mpmath.exp(-(mpmath.mpf(row[t]) - least) / beta) if row[t] < math.inf else 0
                for t in steps
            }
            total = mpmath.fsum(z.values())
            for t in steps:
                q[t] = z[t] / total
        out.append([float(x) for x in q])
    return torch.tensor(out, dtype=torch.float64)


loss_value = st.one_of(
    st.floats(-1e6, 1e6),
    st.sampled_from([0.0, 1.0, 1.0 + 2**-20, -math.inf, math.inf, math.nan, 1e30, 1e-30]),
)


@fast
@given(
    T=st.integers(1, 6),
    data=st.data(),
    beta=st.one_of(st.floats(1e-30, 1e30), st.sampled_from([1e-300, 5e-324, 1e300])),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_oracle_is_the_softmin_of_the_valid_steps_in_60_digits(T, data, beta, dtype):
    losses = data.draw(rows(T, loss_value))
    valid = [data.draw(st.lists(st.booleans(), min_size=T, max_size=T)) for _ in losses]
    for row, ok in zip(losses, valid, strict=True):
        t = data.draw(st.integers(0, T - 1))
        ok[t] = True
        if math.isnan(row[t]):
            row[t] = 0.0  # every row keeps a valid number (an all-NaN row is NaN by design)
    check_oracle(losses, valid, beta, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [1e39, 1e300, math.inf])
def test_oracle_with_a_beta_past_the_dtypes_range_gives_an_infinite_loss_no_mass(beta, dtype):
    # the β became inf in float32, and inf / inf = NaN took the whole row: [[nan, nan]]
    check_oracle([[0.0, math.inf], [0.0, -math.inf], [1.0, 2.0]], [[True] * 2] * 3, beta, dtype)


def check_oracle(losses, valid, beta, dtype):
    T = len(losses[0])
    x = torch.tensor(losses, dtype=dtype)
    got = oracle(x, beta, mask=torch.tensor(valid))
    # the reference sees the losses as the tensor holds them (rounded to dtype), and the
    # temperature the dtype can hold (a β below its least normal number is that number)
    b = max(beta, torch.finfo(torch.promote_types(dtype, torch.float32)).tiny)
    want = mp_oracle(x.double().tolist(), mpmath.mpf(b), valid)
    torch.testing.assert_close(got.double(), want, atol=4 * torch.finfo(dtype).eps, rtol=0)
    hard = oracle(x, beta, hard=True, mask=torch.tensor(valid))
    index = []
    for row, ok in zip(x.double().tolist(), valid, strict=True):
        usable = [t for t in range(T) if ok[t] and not math.isnan(row[t])]
        best = min(usable, key=lambda t: (row[t], t))  # the first least valid number
        index.append(best if row[best] < math.inf else usable[0])
    assert hard.argmax(-1).tolist() == index
    assert (hard.sum(-1) == 1).all()


@fast
@given(p=probability, H=st.integers(0, 40))
@example(p=1e-17, H=3)  # s = √(1 − p) rounds to 1: log1p(−1) was a math domain error
@example(p=1e-14, H=0)  # 1 − s lost 3 of its digits to cancellation
def test_random_horizon_prior_and_conditional_match_the_thesis_in_60_digits(p, H):
    # digits enough that 1 − s = 1 − √(1 − p) keeps 40 of them however small p is
    with mpmath.workdps(40 + int(-math.log10(p))):
        P = mpmath.mpf(p)
        s = mpmath.sqrt(1 - P)
        cond = [(1 - s) * s**t / (1 - s ** (H + 1)) for t in range(H + 1)]
        got = random_horizon_log_conditional(p, H, dtype=torch.float64)
        want = torch.tensor([float(mpmath.log(c)) for c in cond], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert got.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
        horizons = torch.arange(H + 1)
        prior = [s**T * (1 - s ** (T + 1)) * (1 - s**2) for T in range(H + 1)]
        want_prior = torch.tensor([float(mpmath.log(x)) for x in prior], dtype=torch.float64)
        torch.testing.assert_close(
            random_horizon_log_prior(p, horizons), want_prior, rtol=1e-12, atol=1e-12
        )
        want_cdf = [float(mpmath.fsum(prior[: T + 1])) for T in range(H + 1)]
        torch.testing.assert_close(
            random_horizon_cdf(p, horizons),
            torch.tensor(want_cdf, dtype=torch.float64),
            rtol=1e-12,
            atol=0,
        )


def mp_horizon_cdf(s, T):
    """P(T' ≤ T) = 1 − P(T' ≥ T + 1), with P(T' ≥ k) = (1 + s)s^k − s^{2k+1} (the thesis)."""
    return 1 - ((1 + s) * s ** (T + 1) - s ** (2 * T + 3)) if T >= 0 else mpmath.mpf(0)


@fast
@given(
    p=probability,
    max_horizon=st.one_of(st.none(), st.integers(0, 8)),
    seed=st.integers(0, 2**16),
)
@example(p=1e-9, max_horizon=3, seed=0)  # drew only T ∈ {0, 1}, never 2 or 3
@example(p=1e-17, max_horizon=3, seed=0)  # drew −2⁶³
def test_sampled_horizons_are_the_smallest_with_cdf_at_least_the_uniform(p, max_horizon, seed):
    assume(max_horizon is not None or p > 1e-6)  # untruncated horizons stay below 2⁵³ / 10⁶
    assume(p > 1e-150)  # P(T ≤ max_horizon) ≈ p² must not underflow float64
    draws = sample_random_horizon(p, 64, torch.Generator().manual_seed(seed), max_horizon)
    U = torch.rand(64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with mpmath.workdps(40 + 2 * int(-math.log10(p))):  # the CDF cancels to about p²
        s = mpmath.sqrt(1 - mpmath.mpf(p))
        scale = 1 if max_horizon is None else mp_horizon_cdf(s, max_horizon)
        for T, u in zip(draws.tolist(), U.tolist(), strict=True):
            target = mpmath.mpf(u) * scale
            assert 0 <= T and (max_horizon is None or T <= max_horizon)
            above, below = mp_horizon_cdf(s, T), mp_horizon_cdf(s, T - 1)
            # within rounding of a CDF step either side is fine
            assert above >= target * (1 - mpmath.mpf(1e-9)), (T, u)
            assert below < target * (1 + mpmath.mpf(1e-9)), (T, u)


@fast
@given(
    p=st.one_of(st.floats(1e-12, 1.0), st.sampled_from([1.0, 1e-300, 1 - 1e-16])),
    T=st.integers(1, 8),
    data=st.data(),
)
def test_truncated_geometric_prior_is_p_one_minus_p_to_the_t_renormalised(p, T, data):
    valid = data.draw(st.lists(st.booleans(), min_size=T, max_size=T))
    valid[data.draw(st.integers(0, T - 1))] = True
    got = truncated_geometric_log_prior(p, T, mask=torch.tensor(valid), dtype=torch.float64)
    P = mpmath.mpf(p)
    weights = [P * (1 - P) ** t if v else mpmath.mpf(0) for t, v in enumerate(valid)]
    if p == 1:  # 0^0 = 1: the first step; the first valid one once renormalised (the limit)
        weights = [mpmath.mpf(t == valid.index(True)) for t in range(T)]
    total = mpmath.fsum(weights)
    want = torch.tensor([float(w / total) for w in weights], dtype=torch.float64)
    torch.testing.assert_close(got.exp(), want, rtol=1e-12, atol=1e-300)
    assert got.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


@fast
@given(
    T=st.integers(1, 6),
    data=st.data(),
)
def test_kl_divergence_is_the_plain_sum_with_zero_log_zero(T, data):
    check_kl(T, data)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_divergence_is_infinite_where_p_underflows_in_exp_and_q_is_zero(dtype):
    # p(1) = e^-800 > 0 and q(1) = 0: the term is +inf, not 0 · inf = NaN
    log_p = torch.tensor([[0.0, -800.0]], dtype=dtype)
    log_q = torch.tensor([[0.0, -math.inf]], dtype=dtype)
    assert kl_divergence(log_p, log_q).item() == math.inf


def check_kl(T, data):
    def distribution():
        w = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=T, max_size=T))
        w[data.draw(st.integers(0, T - 1))] = 1.0
        return [x / sum(w) for x in w]

    p, q = distribution(), distribution()
    q = [(x + 1e-3) / (1 + 1e-3 * T) for x in q]  # q > 0 wherever p is
    want = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)
    got = kl_divergence(
        torch.tensor([p], dtype=torch.float64).log(), torch.tensor([q], dtype=torch.float64).log()
    )
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-15)


def reference_bound(a, losses, p, beta, only_last=False):
    """E_{p(H) | H ≤ T−1}[Σ_{t≤H} q_H ℓ + β KL(q_H ‖ p(·|H))] by plain loops in 60 digits
    (``only_last``: L_H at H = T − 1 alone)."""
    P = mpmath.mpf(p)
    s = mpmath.sqrt(1 - P)
    T = len(losses)
    weights = [s**H * (1 - s ** (H + 1)) * (1 - s**2) for H in range(T)]
    if only_last:
        weights = [0] * (T - 1) + [1]
    total = mpmath.fsum(weights)
    value = mpmath.mpf(0)
    for H in range(T):
        z = [mpmath.exp(a[t]) for t in range(H + 1)]
        q = [x / mpmath.fsum(z) for x in z]
        prior = [(1 - s) * s**t / (1 - s ** (H + 1)) for t in range(H + 1)]
        L = mpmath.fsum(q[t] * losses[t] for t in range(H + 1))
        L += beta * mpmath.fsum(q[t] * mpmath.log(q[t] / prior[t]) for t in range(H + 1))
        value += weights[H] / total * L
    return float(value)


@fast
@given(
    T=st.integers(1, 5),
    p=st.one_of(st.floats(1e-3, 0.99), st.sampled_from([1e-14, 1e-17, 1 - 1e-9])),
    beta=st.floats(0.0, 10.0),
    seed=st.integers(0, 2**16),
)
@example(T=3, p=1e-17, beta=1.0, seed=0)  # p(t|H) raised a math domain error
def test_random_horizon_bound_matches_the_thesis_average_and_its_gradient(T, p, beta, seed):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(1, T, generator=g, dtype=torch.float64) * 3).requires_grad_()
    losses = torch.rand(1, T, generator=g, dtype=torch.float64).requires_grad_()
    got = random_horizon_bound(a, losses, p, beta)
    with mpmath.workdps(40 + 2 * int(-math.log10(p))):
        want = reference_bound(a[0].tolist(), losses[0].tolist(), p, beta)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    # a sampled horizon per row gives that horizon's L_H: the bound of the prior p(H) = δ_H
    for H in range(T):
        one = random_horizon_bound(a, losses, p, beta, horizons=torch.tensor([H]))
        with mpmath.workdps(40 + 2 * int(-math.log10(p))):
            want_H = reference_bound(a[0, : H + 1].tolist(), losses[0, : H + 1].tolist(), p, beta,
                                     only_last=True)  # fmt: skip
        assert one.item() == pytest.approx(want_H, rel=1e-10, abs=1e-12)
    assert torch.autograd.gradcheck(lambda a, l: random_horizon_bound(a, l, p, beta), (a, losses))


@fast
@given(
    T=st.integers(1, 7),
    data=st.data(),
    price=st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0]),
)
def test_gain_rates_stop_at_the_first_minimiser_of_loss_plus_price_times_cost(T, data, price):
    # dyadic losses and integer costs: every comparison below is exact in float64
    losses = data.draw(st.lists(st.integers(-8, 8), min_size=T, max_size=T))
    increments = data.draw(st.lists(st.integers(1, 3), min_size=T, max_size=T))
    costs = [sum(increments[: t + 1]) for t in range(T)]
    valid = data.draw(st.lists(st.booleans(), min_size=T, max_size=T))
    valid[data.draw(st.integers(0, T - 1))] = True
    rates = gain_rates(
        torch.tensor([losses], dtype=torch.float64),
        torch.tensor(costs, dtype=torch.float64),
        torch.tensor(valid),
    )[0].tolist()
    first = next(t for t in range(T) if valid[t] and rates[t] <= price)
    objective = [losses[t] + price * costs[t] if valid[t] else math.inf for t in range(T)]
    assert first == objective.index(min(objective))


@fast
@given(
    problem=hazard_problems(),
    eps=st.one_of(st.sampled_from([0.0, 0.01, 0.5]), st.floats(0.0, 0.99)),
)
@example(problem=([[math.inf, 0.0]], [[True, True]]), eps=0.0)  # h = 1 halts at once
def test_act_halting_follows_graves_by_a_plain_loop(problem, eps):
    logits, mask = problem
    x = torch.tensor(logits, dtype=torch.float64)
    got = act_halting(x, eps, torch.tensor(mask))
    for b, (row, valid) in enumerate(zip(x.tolist(), mask, strict=True)):
        h = [1 / (1 + math.exp(-v)) if v > -700 else 0.0 for v in row]
        h = [a if v else 0.0 for a, v in zip(h, valid, strict=True)]
        # Graves Eq. 7: N = min{n : Σ_{n'≤n} h_n' ≥ 1 − ε}, else the last valid step
        total, halt = 0.0, max(t for t, v in enumerate(valid) if v)
        for t, a in enumerate(h):
            total += a
            if valid[t] and total >= 1 - eps:
                assume(abs(total - (1 - eps)) > 1e-12)  # not within rounding of the threshold
                halt = t
                break
        remainder = 1 - sum(h[:halt])
        weights = h[:halt] + [remainder] + [0.0] * (len(h) - halt - 1)
        assert got.steps[b].item() == halt + 1
        assert got.weights[b].tolist() == pytest.approx(weights, abs=1e-12)
        assert got.ponder_cost[b].item() == pytest.approx(halt + 1 + remainder, abs=1e-12)
        assert sum(weights) == pytest.approx(1.0)


@fast
@given(
    problem=hazard_problems(),
    tail=st.sampled_from(["absorb", "renormalize"]),
    beta=st.floats(0.0, 5.0),
    prior_p=st.one_of(st.floats(1e-6, 1.0), st.just(1.0)),
    seed=st.integers(0, 2**16),
)
# q(1) = e^-1e4 > 0 where the prior (p = 1) has no mass: KL = +inf, was NaN (0 · inf)
@example(
    problem=([[0.0, -1e4, 0.0]], [[True, True, True]]), tail="absorb", beta=0.0, prior_p=1.0, seed=0
)
def test_pondernet_loss_is_the_expected_loss_plus_beta_kl_to_the_truncated_geometric(
    problem, tail, beta, prior_p, seed
):
    logits, mask = problem
    losses = torch.rand(len(logits), len(logits[0]), generator=torch.Generator().manual_seed(seed))
    losses = losses.double()
    stop = StopTime(torch.tensor(logits, dtype=torch.float64), torch.tensor(mask), tail)
    got, terms = pondernet_loss(stop, losses, beta, prior_p)
    log_q = reference_log_probs(logits, mask, tail).tolist()
    P = mpmath.mpf(prior_p)
    recs, kls = [], []
    for row_q, row_l, valid in zip(log_q, losses.tolist(), mask, strict=True):
        first = valid.index(True)
        prior = [
            (P * (1 - P) ** t if prior_p < 1 else mpmath.mpf(t == first)) if v else 0
            for t, v in enumerate(valid)
        ]
        prior = [x / mpmath.fsum(prior) for x in prior]
        q = [mpmath.exp(x) for x in row_q]
        recs.append(mpmath.fsum(a * b for a, b in zip(q, row_l, strict=True)))
        kl = mpmath.fsum(
            a * (mpmath.log(a) - mpmath.log(r)) for a, r in zip(q, prior, strict=True) if a > 0
        )
        kls.append(kl)
    rec, kl = float(mpmath.fsum(recs) / len(recs)), float(mpmath.fsum(kls) / len(kls))
    assert terms["reconstruction"].item() == pytest.approx(rec, rel=1e-9, abs=1e-12)
    if math.isinf(kl):  # q puts mass where the prior has none (prior_p = 1)
        assert terms["kl"].item() == math.inf
        return
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-9, abs=1e-9)
    assert got.item() == pytest.approx(rec + beta * kl, rel=1e-9, abs=1e-9)


@fast
@given(
    T=st.integers(1, 6),
    data=st.data(),
    beta=st.one_of(st.floats(1e-3, 1e3), st.sampled_from([1e-30, 1e30])),
    uniform=st.sampled_from([0.0, 0.25, 1.0]),
)
def test_stage1_loss_is_the_oracle_weighted_loss_mixed_with_uniform(T, data, beta, uniform):
    losses = data.draw(rows(T, st.one_of(st.floats(-50, 50), st.just(math.inf))))
    valid = [data.draw(st.lists(st.booleans(), min_size=T, max_size=T)) for _ in losses]
    for row, ok in zip(losses, valid, strict=True):
        t = data.draw(st.integers(0, T - 1))
        ok[t], row[t] = True, min(row[t], 0.0)  # a valid finite step in every row
    x = torch.tensor(losses, dtype=torch.float64)
    got = l2s_stage1_loss(x, beta, torch.tensor(valid), uniform)
    q = mp_oracle(losses, mpmath.mpf(beta), valid).tolist()
    total = mpmath.mpf(0)
    for row, ok, weights in zip(losses, valid, q, strict=True):
        for t in range(T):
            w = (1 - uniform) * weights[t] + (uniform / sum(ok) if ok[t] else 0)
            if w > 0:
                total += w * mpmath.mpf(row[t])
    want = float(total / len(losses))
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(
    T=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    beta=st.sampled_from([0.05, 1.0, 20.0]),
    uniform=st.sampled_from([0.0, 0.3]),
    detach=st.booleans(),
)
def test_stage1_gradient_matches_finite_differences(T, seed, beta, uniform, detach):
    g = torch.Generator().manual_seed(seed)
    losses = (torch.rand(2, T, generator=g, dtype=torch.float64) * 3).requires_grad_()
    mask = torch.rand(2, T, generator=g) < 0.7
    mask[:, -1] = True
    if not detach:  # the loss is its own function of ℓ, q* included
        assert torch.autograd.gradcheck(
            lambda x: l2s_stage1_loss(x, beta, mask, uniform, detach=False), losses
        )
        return

    # detached q*: the gradient of −β·logsumexp(−ℓ/β) over the valid steps (L2S Eq. 9), mixed
    # with the uniform weights' gradient of the mean valid loss
    def surrogate(x):
        softmin = -beta * torch.logsumexp(-x.masked_fill(~mask, math.inf) / beta, -1)
        deep = x.masked_fill(~mask, 0).sum(-1) / mask.sum(-1)
        return ((1 - uniform) * softmin + uniform * deep).mean()

    l2s_stage1_loss(losses, beta, mask, uniform).backward()
    (want,) = torch.autograd.grad(surrogate(losses), losses)
    torch.testing.assert_close(losses.grad, want)


@fast
@given(
    problem=hazard_problems(),
    data=st.data(),
    beta=st.one_of(st.floats(1e-3, 1e3), st.sampled_from([1e-30, 1e30])),
    tail=st.sampled_from(["absorb", "renormalize"]),
)
def test_stage2_is_the_forward_kl_to_the_oracle_or_the_cross_entropy_of_its_argmin(
    problem, data, beta, tail
):
    logits, mask = problem
    T = len(logits[0])
    losses = data.draw(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=T,
                                         max_size=T), min_size=len(logits), max_size=len(logits)))  # fmt: skip
    stop = StopTime(torch.tensor(logits, dtype=torch.float64), torch.tensor(mask), tail)
    x = torch.tensor(losses, dtype=torch.float64)
    log_q = [
        [mpmath.mpf(v) for v in row] for row in reference_log_probs(logits, mask, tail).tolist()
    ]
    target = mp_oracle(losses, mpmath.mpf(beta), mask).tolist()
    kls, nlls = [], []
    for row_p, row_q, row_l, ok in zip(target, log_q, losses, mask, strict=True):
        terms = [
            mpmath.inf if q == -mpmath.inf else p * (mpmath.log(p) - q)
            for p, q in zip(row_p, row_q, strict=True)
            if p > 0
        ]
        kls.append(mpmath.fsum(terms))
        best = min((row_l[t], t) for t in range(T) if ok[t])[1]
        nlls.append(-row_q[best])
    soft = l2s_stage2_loss(stop, x, beta).item()
    hard = l2s_stage2_loss(stop, x, beta, hard=True).item()
    for got, values in ((soft, kls), (hard, nlls)):
        want = float(mpmath.fsum(values) / len(values))
        if math.isinf(want):
            assert got == math.inf
        else:
            assert got == pytest.approx(want, rel=1e-7, abs=1e-9)


@fast
@given(
    problem=hazard_problems(),
    tail=st.sampled_from(["absorb", "renormalize"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_stop_time_summaries_follow_the_exact_distribution(problem, tail, dtype):
    logits, mask = problem
    h = torch.tensor(logits, dtype=dtype)
    stop = StopTime(h, torch.tensor(mask), tail)
    exact = reference_log_probs(h.double().tolist(), mask, tail).tolist()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for b, row in enumerate(exact):
        q = [mpmath.exp(x) for x in row]
        cdf = [mpmath.fsum(q[: t + 1]) for t in range(len(q))]
        mean = mpmath.fsum((t + 1) * x for t, x in enumerate(q))
        assert stop.mean()[b].item() == pytest.approx(float(mean), abs=tol * len(q))
        torch.testing.assert_close(
            stop.cdf()[b].double(), torch.tensor([float(c) for c in cdf], dtype=torch.float64),
            atol=tol, rtol=0,
        )  # fmt: skip
        if all(abs(c - 0.5) > 10 * tol for c in cdf):  # not within rounding of 1/2
            assert stop.median()[b].item() == next(t for t, c in enumerate(cdf) if c >= 0.5)
        best = max(q)
        if sum(1 for x in q if x >= best * (1 - 10 * tol)) == 1:  # no near-tie
            assert stop.mode()[b].item() == q.index(best)
        entropy = -mpmath.fsum(x * mpmath.log(x) for x in q if x > 0)
        assert stop.entropy()[b].item() == pytest.approx(float(entropy), abs=tol * 10)
