"""Objectives against independent formulas, plain loops and finite differences."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stopwise.objectives import (
    act_halting,
    act_loss,
    act_output,
    gain_loss,
    joint_loss,
    l2s_stage1_loss,
    l2s_stage2_loss,
    pondernet_loss,
    random_horizon_bound,
    weighted_exit_loss,
)
from stopwise.stoptime import StopTime, random_horizon_log_prior


def hazards_for(q: torch.Tensor) -> torch.Tensor:
    """Hazard logits whose stop-time distribution is ``q`` (λ_t = q_t / remaining mass)."""
    remaining = 1 - torch.cumsum(q, -1) + q
    lam = (q / remaining).clamp(1e-12, 1 - 1e-12)
    return torch.logit(lam)


def test_stage1_gradient_equals_softmin_gradient():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    beta = 0.28
    (grad,) = torch.autograd.grad(l2s_stage1_loss(losses, beta), losses)
    softmin = (beta * -torch.logsumexp(-losses / beta, dim=-1)).mean()
    (expected,) = torch.autograd.grad(softmin, losses)
    torch.testing.assert_close(grad, expected)
    # and a finite difference on one entry of the soft-min
    eps = 1e-6
    bumped = losses.detach().clone()
    bumped[2, 3] += eps
    fd = ((beta * -torch.logsumexp(-bumped / beta, -1)).mean() - softmin.detach()) / eps
    assert grad[2, 3].item() == pytest.approx(fd.item(), rel=1e-4)


def test_stage1_respects_mask():
    losses = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    loss = l2s_stage1_loss(losses, 1.0, mask=torch.tensor([1, 0, 1]))
    w = [math.exp(-1.0), math.exp(-2.0)]
    assert loss.item() == pytest.approx((w[0] * 1 + w[1] * 2) / sum(w), rel=1e-6)


def test_stage1_uniform_mixes_in_deep_supervision_by_a_plain_loop():
    g = torch.Generator().manual_seed(3)
    losses = torch.rand(4, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([1, 1, 0, 1, 1])
    beta, share = 0.4, 0.25
    expected = 0.0
    for row in losses.tolist():
        valid = [t for t in range(5) if mask[t]]
        z = sum(math.exp(-row[t] / beta) for t in valid)
        for t in valid:
            weight = (1 - share) * math.exp(-row[t] / beta) / z + share / len(valid)
            expected += weight * row[t] / len(losses)
    got = l2s_stage1_loss(losses, beta, mask=mask, uniform=share)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # the extremes: the paper's stage I, and deep supervision's mean over the valid steps
    assert (
        l2s_stage1_loss(losses, beta, mask, 0.0).item()
        == l2s_stage1_loss(losses, beta, mask).item()
    )
    mean_valid = losses[:, mask.bool()].mean().item()
    assert l2s_stage1_loss(losses, beta, mask, 1.0).item() == pytest.approx(mean_valid, rel=1e-12)
    with pytest.raises(ValueError, match="uniform"):
        l2s_stage1_loss(losses, beta, uniform=1.5)


def test_stage2_soft_is_forward_kl_and_hard_is_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, generator=g, dtype=torch.float64)
    losses = torch.rand(4, 5, generator=g, dtype=torch.float64)
    beta = 0.5
    stop = StopTime(logits)
    q = stop.probs
    expected_kl, expected_ce = 0.0, 0.0
    for i in range(4):
        target = [math.exp(-v / beta) for v in losses[i].tolist()]
        target = [v / sum(target) for v in target]
        expected_kl += sum(p * math.log(p / q[i, t].item()) for t, p in enumerate(target))
        expected_ce += -math.log(q[i, int(losses[i].argmin())].item())
    assert l2s_stage2_loss(stop, losses, beta).item() == pytest.approx(expected_kl / 4)
    assert l2s_stage2_loss(stop, losses, beta, hard=True).item() == pytest.approx(expected_ce / 4)


def test_stage2_with_a_mask_imitates_the_oracle_over_the_valid_steps_by_a_plain_loop():
    """Masked stage II against loops: q(t) = λ_t ∏(1 − λ_τ) over the valid steps τ < t, the
    last valid step taking the rest; soft target q*(t) = exp(−ℓ_t/β) / Σ_valid exp(−ℓ_τ/β),
    KL(q* ‖ q) summed over valid steps; hard target argmin over valid steps. Each row's
    unmasked argmin sits on a masked step (the last step, for row 1: the step after the
    absorbing one), for a shared ``(T,)`` mask and a per-row ``(B, T)`` one."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 5, generator=g, dtype=torch.float64)
    losses = torch.tensor(
        [[0.9, 0.1, 0.7, 0.5, 0.8], [0.6, 0.9, 0.4, 0.7, 0.05], [0.3, 0.02, 0.6, 0.5, 0.4]],
        dtype=torch.float64,
    )
    beta = 0.3
    shared = torch.tensor([True, False, True, True, False])
    per_row = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    for mask in (shared, per_row):
        rows = mask.expand(3, 5).tolist()
        expected_kl, expected_ce = 0.0, 0.0
        for i in range(3):
            valid = [t for t in range(5) if rows[i][t]]
            q, survive = {}, 1.0
            for t in valid:
                lam = 1 / (1 + math.exp(-logits[i, t].item()))
                q[t] = survive if t == valid[-1] else lam * survive
                survive *= 1 - lam
            z = sum(math.exp(-losses[i, t].item() / beta) for t in valid)
            for t in valid:
                p = math.exp(-losses[i, t].item() / beta) / z
                expected_kl += p * math.log(p / q[t]) / 3
            best = min(valid, key=lambda t, i=i: losses[i, t].item())
            assert best != int(losses[i].argmin())
            expected_ce += -math.log(q[best]) / 3
        stop = StopTime(logits, mask)
        assert l2s_stage2_loss(stop, losses, beta).item() == pytest.approx(expected_kl, rel=1e-10)
        hard = l2s_stage2_loss(stop, losses, beta, hard=True).item()
        assert hard == pytest.approx(expected_ce, rel=1e-10)


def test_stage2_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    losses = torch.rand(3, 4, generator=g, dtype=torch.float64)
    for hard in (False, True):
        assert torch.autograd.gradcheck(
            lambda h, hard=hard: l2s_stage2_loss(StopTime(h), losses, 0.3, hard), logits
        )


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 7), beta=st.floats(0.05, 3.0), seed=st.integers(0, 2**16))
def test_property_joint_objective_is_minimised_at_the_oracle(T, beta, seed):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(3, T, generator=g, dtype=torch.float64) * 2
    target = torch.softmax(-losses / beta, -1)
    at_oracle = joint_loss(StopTime(hazards_for(target)), losses, beta)
    softmin = (beta * -torch.logsumexp(-losses / beta, -1)).mean()
    assert at_oracle.item() == pytest.approx(softmin.item(), abs=1e-8)
    other = joint_loss(StopTime(torch.randn(3, T, generator=g, dtype=torch.float64)), losses, beta)
    assert other.item() >= at_oracle.item() - 1e-9


def test_pondernet_matches_plain_loop_and_kl_direction():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, generator=g, dtype=torch.float64)
    losses = torch.rand(2, 5, generator=g, dtype=torch.float64)
    beta, lam = 0.1, 0.2
    for tail in ("absorb", "renormalize"):
        stop = StopTime(logits, tail=tail)
        prior = [lam * (1 - lam) ** t for t in range(5)]
        prior = [p / sum(prior) for p in prior]
        expected = 0.0
        for i in range(2):
            q = stop.probs[i].tolist()
            rec = sum(qt * lt for qt, lt in zip(q, losses[i].tolist(), strict=True))
            kl = sum(qt * math.log(qt / pt) for qt, pt in zip(q, prior, strict=True))
            reverse = sum(pt * math.log(pt / qt) for qt, pt in zip(q, prior, strict=True))
            assert abs(kl - reverse) > 1e-3  # the two directions differ here
            expected += rec + beta * kl
        loss, parts = pondernet_loss(stop, losses, beta, lam)
        assert loss.item() == pytest.approx(expected / 2)
        assert set(parts) == {"reconstruction", "kl"}


def test_pondernet_prior_is_renormalised_over_valid_steps():
    mask = torch.tensor([1, 1, 0, 1], dtype=torch.bool)
    stop = StopTime(torch.zeros(1, 4, dtype=torch.float64), mask)
    prior = torch.tensor([0.5 * 0.5**t for t in (0, 1, 3)], dtype=torch.float64)
    prior = prior / prior.sum()
    q = stop.probs[0, mask]
    expected = float((q * (q / prior).log()).sum())
    _, parts = pondernet_loss(stop, torch.zeros(1, 4, dtype=torch.float64), 1.0, 0.5)
    assert parts["kl"].item() == pytest.approx(expected)


def reference_act(halting_probs: list[float], eps: float):
    """Graves (2016) halting for one sample, step by step."""
    total, weights = 0.0, []
    for n, h in enumerate(halting_probs):
        last = n == len(halting_probs) - 1
        if total + h >= 1 - eps or last:
            remainder = 1 - total
            weights.append(remainder)
            weights += [0.0] * (len(halting_probs) - n - 1)
            return weights, n + 1, remainder
        total += h
        weights.append(h)
    raise AssertionError


def test_act_halting_matches_reference_loop():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(50, 6, generator=g, dtype=torch.float64) * 2 - 1
    halting = act_halting(logits, eps=0.01)
    for i in range(50):
        weights, N, R = reference_act(torch.sigmoid(logits[i]).tolist(), 0.01)
        assert halting.weights[i].tolist() == pytest.approx(weights)
        assert halting.steps[i].item() == N
        assert halting.remainder[i].item() == pytest.approx(R)
        assert halting.ponder_cost[i].item() == pytest.approx(N + R)
    torch.testing.assert_close(halting.weights.sum(-1), torch.ones(50, dtype=torch.float64))


def test_act_ponder_cost_gradient_and_output():
    """Three rows halting at different steps (the third never reaches 1 − ε and takes the
    last): the output is Σ_n p_n y_n with the reference loop's weights, and the ACT loss is
    task + τ · Σ_i (N_i + R_i) / B with N, R from the reference loop — a batch mean."""
    logits = torch.tensor(
        [[-1.0, -0.5, 0.3, 2.0], [0.5, 1.5, -2.0, 0.0], [-3.0, -3.0, -3.0, -3.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    assert torch.autograd.gradcheck(lambda h: act_halting(h).ponder_cost, logits)
    outputs = torch.arange(24, dtype=torch.float64).view(3, 4, 2)
    halting = act_halting(logits)
    references = [reference_act(torch.sigmoid(row).tolist(), 0.01) for row in logits.detach()]
    assert [N for _, N, _ in references] == [3, 2, 4]
    for i, (weights, _, _) in enumerate(references):
        expected = sum(weights[n] * outputs[i, n] for n in range(4))
        torch.testing.assert_close(act_output(halting.weights, outputs)[i], expected)
    tau = 0.1
    expected_loss = 1 + tau * sum(N + R for _, N, R in references) / 3
    assert act_loss(torch.tensor(1.0), halting, tau).item() == pytest.approx(expected_loss)


def reference_bound(a, losses, p, beta, H):
    s = math.sqrt(1 - p)
    z = sum(math.exp(a[t]) for t in range(H + 1))
    total = 0.0
    for t in range(H + 1):
        q = math.exp(a[t]) / z
        prior = (1 - s) * s**t / (1 - s ** (H + 1))
        total += q * losses[t] + beta * q * math.log(q / prior)
    return total


def test_random_horizon_bound_matches_plain_loop():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 5, generator=g, dtype=torch.float64)
    losses = torch.rand(3, 5, generator=g, dtype=torch.float64)
    p, beta = 0.3, 0.7
    weights = torch.softmax(random_horizon_log_prior(p, torch.arange(5)), 0).tolist()
    expected = (
        sum(
            sum(
                weights[H] * reference_bound(a[i].tolist(), losses[i].tolist(), p, beta, H)
                for H in range(5)
            )
            for i in range(3)
        )
        / 3
    )
    assert random_horizon_bound(a, losses, p, beta).item() == pytest.approx(expected)
    horizons = torch.tensor([0, 4, 2])
    sampled = (
        sum(
            reference_bound(a[i].tolist(), losses[i].tolist(), p, beta, int(horizons[i]))
            for i in range(3)
        )
        / 3
    )
    assert random_horizon_bound(a, losses, p, beta, horizons).item() == pytest.approx(sampled)


def test_random_horizon_bound_takes_a_step_of_no_posterior_mass_as_0_log_0():
    """A posterior logit of −∞ (a halting probability of exactly 0) gives the limit of very
    negative logits, with finite gradients (0 · (−∞) made it NaN: an audit)."""
    losses = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    at_inf = torch.tensor([[0.0, -math.inf, 0.0]], dtype=torch.float64, requires_grad=True)
    near = torch.tensor([[0.0, -1e30, 0.0]], dtype=torch.float64, requires_grad=True)
    for horizons in (None, torch.tensor([2])):
        a = random_horizon_bound(at_inf, losses, 0.3, 1.0, horizons)
        b = random_horizon_bound(near, losses, 0.3, 1.0, horizons)
        assert a.item() == pytest.approx(b.item(), rel=1e-12) and math.isfinite(a.item())
        (ga,) = torch.autograd.grad(a, at_inf)
        (gb,) = torch.autograd.grad(b, near)
        torch.testing.assert_close(ga, gb)


def test_random_horizon_bound_refuses_a_horizon_with_no_posterior_mass():
    """Logits all −∞ up to a horizon averaged over made the bound NaN; now a ValueError naming
    the rows. A sampled horizon past the first finite logit is fine (and −∞ later too)."""
    losses = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.2, 0.1]], dtype=torch.float64)
    logits = torch.tensor([[0.0, 0.0, 0.0], [-math.inf, 0.0, -math.inf]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"rows \[1\] are −∞"):
        random_horizon_bound(logits, losses, 0.3)
    with pytest.raises(ValueError, match=r"rows \[1\] are −∞"):
        random_horizon_bound(logits, losses, 0.3, horizons=torch.tensor([2, 0]))
    value = random_horizon_bound(logits, losses, 0.3, horizons=torch.tensor([0, 1]))
    assert math.isfinite(value.item())
    # Row 1 under horizon 1 puts all its mass on step 1: L = ℓ_1 − log p(1 | H=1), with
    # p(t | H) = (1 − s)s^t / (1 − s^{H+1}) and s = √(1 − p) (Sander 2017).
    s = math.sqrt(1 - 0.3)
    log_prior = math.log((1 - s) * s / (1 - s**2))
    row0 = 1.0 - math.log(1.0)  # horizon 0: q = p = δ_0
    assert value.item() == pytest.approx((row0 + 0.2 - log_prior) / 2)
    nan = logits.clone()
    nan[1, 0] = math.nan  # a NaN is not a missing step: it reaches the loss (and diverged())
    assert math.isnan(random_horizon_bound(nan, losses, 0.3).item())


def test_random_horizon_bound_is_tight_at_the_posterior():
    """With β = 1 and ℓ = −log p(y|t), L_H ≥ −log Σ_{t≤H} p(t|H) e^{−ℓ_t}, with equality at the
    exact posterior q(t) ∝ p(t|H) e^{−ℓ_t} (the evidence bound)."""
    p, H = 0.4, 4
    s = math.sqrt(1 - p)
    losses = torch.tensor([[2.0, 1.0, 0.3, 0.2, 0.9]], dtype=torch.float64)
    prior = torch.tensor(
        [(1 - s) * s**t / (1 - s ** (H + 1)) for t in range(H + 1)], dtype=torch.float64
    )
    evidence = -torch.log((prior * torch.exp(-losses[0])).sum())
    posterior_logits = (prior.log() - losses[0]).unsqueeze(0)
    tight = random_horizon_bound(posterior_logits, losses, p, horizons=torch.tensor([H]))
    loose = random_horizon_bound(
        torch.zeros(1, 5, dtype=torch.float64), losses, p, horizons=torch.tensor([H])
    )
    assert tight.item() == pytest.approx(evidence.item())
    assert loose.item() > evidence.item()


def test_weighted_exit_loss():
    losses = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    weights = torch.tensor([[0.5, 1.5], [1.0, 1.0]])
    assert weighted_exit_loss(losses, weights).item() == pytest.approx((0.5 + 3 + 3 + 4) / 2)
    with pytest.raises(ValueError, match="must match"):
        weighted_exit_loss(losses, weights[:, :1])


def test_gain_loss_with_one_valid_step_is_a_zero_with_a_gradient():
    """Nothing to decide (a single kept exit): the regression is empty, so the loss is 0, not
    the NaN of a mean over nothing, and training a head on it leaves the head as it is."""
    scores = torch.randn(4, 3, requires_grad=True)
    losses = torch.rand(4, 3) + 0.1
    only_last = torch.tensor([False, False, True])
    loss = gain_loss(scores, losses, torch.arange(1.0, 4.0), only_last, 1e-6)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(scores.grad, torch.zeros(4, 3))


def test_gain_loss_steps_do_not_depend_on_the_first_rows_values():
    """Which steps are regressed depends on the valid mask alone (every valid step but the
    last), not on whether row 0's rates are finite: an infinite loss in row 0 or in row 1 gives
    the same (infinite) loss, and reordering the rows changes nothing."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 5, generator=g, dtype=torch.float64)
    losses = torch.rand(2, 5, generator=g, dtype=torch.float64) + 0.1
    costs = torch.tensor([1.0, 2.0, 4.0, 5.0, 7.0], dtype=torch.float64)
    valid = torch.tensor([True, True, False, True, True])
    finite = gain_loss(scores, losses, costs, valid, 1e-6)
    swapped = gain_loss(scores.flip(0), losses.flip(0), costs, valid, 1e-6)
    assert finite.item() == pytest.approx(swapped.item(), rel=1e-12)
    for row in (0, 1):
        broken = losses.clone()
        broken[row, 0] = math.inf
        assert gain_loss(scores, broken, costs, valid, 1e-6).item() == math.inf


@pytest.mark.parametrize("tail", ["absorb", "renormalize"])
def test_joint_loss_gradient_matches_finite_differences_with_a_mask(tail):
    """gradcheck (float64, central finite differences) of the joint objective in both its
    float inputs, the hazard logits and the per-step losses, under a shared ``(T,)`` mask and a
    per-row ``(B, T)`` one (the mask itself is not differentiable, so it is closed over)."""
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    losses = torch.rand(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    shared = torch.tensor([True, True, False, True, True])
    per_row = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 1]], dtype=torch.bool)
    for mask in (shared, per_row):
        assert torch.autograd.gradcheck(
            lambda h, ell, mask=mask: joint_loss(StopTime(h, mask, tail=tail), ell, 0.4),
            (logits, losses),
        )


@pytest.mark.parametrize("tail", ["absorb", "renormalize"])
def test_pondernet_gradient_matches_finite_differences_with_a_mask(tail):
    """gradcheck (float64) of PonderNet's loss and of each logged term in the hazard logits and
    the losses, with a valid-step mask (shared and per row) under both ways to end at step T;
    the mask and the prior's λ_p are fixed, non-differentiable inputs."""
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    losses = torch.rand(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    shared = torch.tensor([True, False, True, True, True])
    per_row = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 1]], dtype=torch.bool)

    def terms(h, ell, mask):
        loss, parts = pondernet_loss(StopTime(h, mask, tail=tail), ell, 0.3, 0.2)
        return loss, parts["reconstruction"], parts["kl"]

    for mask in (shared, per_row):
        assert torch.autograd.gradcheck(
            lambda h, ell, mask=mask: terms(h, ell, mask), (logits, losses)
        )


def test_random_horizon_bound_gradient_matches_finite_differences():
    """gradcheck (float64) of Sander's random-horizon bound in the posterior logits and the
    losses: the exact average over horizons (``horizons=None``) and the sampled estimate at
    fixed integer horizons (closed over: they are not differentiable), including H = 0 and
    H = T − 1, at two priors p and temperatures β."""
    g = torch.Generator().manual_seed(13)
    a = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    losses = torch.rand(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    horizons = torch.tensor([0, 4, 2])
    for p, beta in ((0.3, 0.7), (0.8, 1.0)):
        assert torch.autograd.gradcheck(
            lambda x, ell, p=p, beta=beta: random_horizon_bound(x, ell, p, beta), (a, losses)
        )
        assert torch.autograd.gradcheck(
            lambda x, ell, p=p, beta=beta: random_horizon_bound(x, ell, p, beta, horizons),
            (a, losses),
        )


class _Stage1AgainstPotential(torch.autograd.Function):
    """Value: the potential Φ(ℓ) = mean_b[(1 − u)·β·(−logsumexp_{valid t}(−ℓ_t/β))
    + u·mean_{valid t} ℓ_t], written here independently of the library. Backward: the autograd
    gradient of ``l2s_stage1_loss``. gradcheck on this compares the library's gradient with
    finite differences of Φ, which is the claim of the docstring (q* = d/dℓ of the soft-min;
    the uniform share = d/dℓ of the mean over the valid steps)."""

    @staticmethod
    def forward(ctx, losses, beta, mask, uniform):
        valid = mask.expand(losses.shape)
        softmin = -beta * torch.logsumexp((-losses / beta).masked_fill(~valid, -math.inf), -1)
        mean_valid = losses.masked_fill(~valid, 0.0).sum(-1) / valid.sum(-1)
        with torch.enable_grad():
            ell = losses.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(l2s_stage1_loss(ell, beta, mask, uniform), ell)
        ctx.save_for_backward(grad)
        return ((1 - uniform) * softmin + uniform * mean_valid).mean()

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None, None


def test_stage1_gradient_with_a_mask_matches_finite_differences_of_the_softmin():
    """L2S stage I detaches q*, so its value is not the function whose gradient it has:
    gradcheck (float64) of its autograd gradient against central finite differences of the
    masked soft-min potential, mixed with the valid-step mean for ``uniform`` > 0. Invalid
    steps carry a huge loss that must neither enter the value nor get a gradient."""
    g = torch.Generator().manual_seed(14)
    losses = torch.rand(3, 5, generator=g, dtype=torch.float64)
    shared = torch.tensor([True, True, False, True, False])
    per_row = torch.tensor([[1, 0, 1, 1, 1], [0, 0, 1, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for mask in (shared, per_row):
        ell = losses.masked_fill(~mask.expand(3, 5), 1e6).requires_grad_(True)
        for beta, uniform in ((0.3, 0.0), (0.3, 0.25), (1.5, 1.0)):
            assert torch.autograd.gradcheck(
                lambda x, beta=beta, mask=mask, uniform=uniform: _Stage1AgainstPotential.apply(
                    x, beta, mask, uniform
                ),
                (ell,),
            )
            (grad,) = torch.autograd.grad(l2s_stage1_loss(ell, beta, mask, uniform), ell)
            assert (grad[~mask.expand(3, 5)] == 0).all()


def reference_act_masked(halting_probs: list[float], valid: list[bool], eps: float):
    """Graves (2016) halting for one sample, step by step over the valid steps only: halt at
    the first valid n with Σ_{valid m≤n} h_m ≥ 1 − ε, else at the last valid step; weight h_n
    on the valid steps before it, R = 1 − Σ_{valid m<N} h_m at it, 0 elsewhere. N is the
    1-based position of the halting step."""
    last = max(n for n, v in enumerate(valid) if v)
    total, weights = 0.0, [0.0] * len(halting_probs)
    for n, (h, v) in enumerate(zip(halting_probs, valid, strict=True)):
        if not v:
            continue
        if total + h >= 1 - eps or n == last:
            weights[n] = 1 - total
            return weights, n + 1, 1 - total
        total += h
        weights[n] = h
    raise AssertionError


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_act_halting_with_a_mask_and_eps_matches_reference_loop(eps):
    """ACT with a valid-step mask (shared ``(T,)`` and per-row ``(B, T)``) and ε ≠ 0.01 against
    a plain loop from Graves' description that skips invalid steps. Both ends are exercised:
    rows that reach 1 − ε and rows that halt at their last valid step, some of whose last
    valid step is not the last step. The ponder cost's and the weights' gradients are checked
    against finite differences too."""
    g = torch.Generator().manual_seed(15)
    B, T = 60, 7
    logits = torch.randn(B, T, generator=g, dtype=torch.float64) * 1.5 - 1.5
    shared = torch.tensor([True, False, True, True, False, True, False])
    per_row = torch.rand(B, T, generator=g) < 0.6
    per_row[torch.arange(B), torch.randint(T, (B,), generator=g)] = True
    for mask in (shared, per_row):
        rows = mask.expand(B, T).tolist()
        halting = act_halting(logits, eps=eps, mask=mask)
        reached, at_last, last_not_final = 0, 0, 0
        for i in range(B):
            h = torch.sigmoid(logits[i]).tolist()
            weights, N, R = reference_act_masked(h, rows[i], eps)
            assert halting.weights[i].tolist() == pytest.approx(weights, abs=1e-12)
            assert halting.steps[i].item() == N
            assert halting.remainder[i].item() == pytest.approx(R, abs=1e-12)
            assert halting.ponder_cost[i].item() == pytest.approx(N + R, abs=1e-12)
            last = max(n for n in range(T) if rows[i][n])
            if N - 1 < last:  # halted before its last valid step: it reached 1 − ε
                reached += 1
            else:
                at_last += 1
                last_not_final += last < T - 1
        assert reached > 0 and at_last > 0 and last_not_final > 0
        torch.testing.assert_close(halting.weights.sum(-1), torch.ones(B, dtype=torch.float64))
        small = logits[:4].clone().requires_grad_(True)
        small_mask = mask if mask.dim() == 1 else mask[:4]
        assert torch.autograd.gradcheck(
            lambda x, m=small_mask: act_halting(x, eps, m)[0::3], (small,)
        )


def test_stage1_ignores_the_losses_of_steps_it_gives_no_weight():
    """A step the oracle gives weight 0 — masked out, or with a loss of +inf (a diverged step)
    — contributes nothing, not 0·inf = NaN: Σ_t q*(t) ℓ_t over the steps with q*(t) > 0, by
    hand. Row 0: step 1 masked (its loss inf); row 1: step 2 has loss inf (q* = 0 there)."""
    inf = math.inf
    losses = torch.tensor([[1.0, inf, 2.0], [0.5, 1.5, inf]], dtype=torch.float64)
    losses.requires_grad_(True)
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    beta = 0.5
    w0 = [math.exp(-1.0 / beta), math.exp(-2.0 / beta)]
    w1 = [math.exp(-0.5 / beta), math.exp(-1.5 / beta)]
    row0 = (w0[0] * 1.0 + w0[1] * 2.0) / sum(w0)
    row1 = (w1[0] * 0.5 + w1[1] * 1.5) / sum(w1)
    loss = l2s_stage1_loss(losses, beta, mask=mask)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, losses)
    assert torch.isfinite(grad).all()
    assert grad[0, 1].item() == 0.0 and grad[1, 2].item() == 0.0
    # the weights themselves, by hand: q*(t) / B on the steps with weight
    assert grad[0, [0, 2]].tolist() == pytest.approx([w / sum(w0) / 2 for w in w0])


def test_stage2_treats_the_oracle_as_a_fixed_target():
    """Stage II detaches the losses: the policy imitates q*, it does not move q* (nor, through
    the losses, the step model). Its gradient reaches the hazard logits only, and there it is
    the gradient of Σ_t q*(t)(log q*(t) − log q_φ(t)) with q* a constant: −Σ_t q*(t) ∂log q_φ(t),
    checked against central differences of a plain-loop KL whose target is fixed numbers."""
    g = torch.Generator().manual_seed(21)
    logits = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    losses = torch.rand(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    beta = 0.4
    for hard in (False, True):
        loss = l2s_stage2_loss(StopTime(logits), losses, beta, hard=hard)
        grads = torch.autograd.grad(loss, (logits, losses), allow_unused=True)
        assert grads[1] is None or bool((grads[1] == 0).all())
    (grad_logits,) = torch.autograd.grad(l2s_stage2_loss(StopTime(logits), losses, beta), logits)
    target = [[math.exp(-v / beta) for v in row] for row in losses.detach().tolist()]
    target = [[v / sum(row) for v in row] for row in target]

    def kl(h):
        total = 0.0
        for i, row in enumerate(h.tolist()):
            survive = 1.0
            for t, x in enumerate(row):
                lam = 1 / (1 + math.exp(-x))
                q = survive if t == len(row) - 1 else lam * survive
                survive *= 1 - lam
                total += target[i][t] * math.log(target[i][t] / q) / len(target)
        return total

    eps, base = 1e-6, logits.detach()
    for i, t in [(0, 0), (0, 2), (1, 1)]:
        up, down = base.clone(), base.clone()
        up[i, t] += eps
        down[i, t] -= eps
        fd = (kl(up) - kl(down)) / (2 * eps)
        assert grad_logits[i, t].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_act_halts_where_the_sum_reaches_exactly_one_minus_eps():
    """Graves: N = min{n : Σ_{n'≤n} h_{n'} ≥ 1 − ε}, so a sum that lands exactly on 1 − ε halts
    there. h = σ(0) = 1/2 is exact: with ε = 1/2 the first step halts (N = 1, R = 1); with ε = 0
    the second does (Σ = 1: N = 2, R = 1/2), not the third. Against the plain reference loop."""
    logits = torch.zeros(1, 3, dtype=torch.float64)
    for eps, N, R in [(0.5, 1, 1.0), (0.0, 2, 0.5)]:
        weights, n_ref, r_ref = reference_act([0.5, 0.5, 0.5], eps)
        assert (n_ref, r_ref) == (N, R)
        halting = act_halting(logits, eps=eps)
        assert halting.steps.tolist() == [N]
        assert halting.remainder.tolist() == [R]
        assert halting.weights[0].tolist() == weights
        assert halting.ponder_cost.tolist() == [N + R]


@pytest.mark.parametrize("eps", [-0.1, 1.0, 2.0])
def test_act_eps_outside_its_range_is_refused(eps):
    with pytest.raises(ValueError, match="0 <= eps < 1"):
        act_halting(torch.zeros(2, 3), eps=eps)


def test_hard_stage2_of_a_row_that_diverged_is_nan_as_the_soft_one():
    """Every loss NaN: the soft loss is NaN (a diverged run is caught); the hard one trained the
    row toward step 0 (argmax of a NaN row)."""
    hazards = torch.zeros(2, 3, dtype=torch.float64)
    losses = torch.tensor([[1.0, 2.0, 3.0], [math.nan] * 3], dtype=torch.float64)
    for hard in (False, True):
        assert math.isnan(float(l2s_stage2_loss(StopTime(hazards), losses, 0.5, hard=hard)))
    finite = l2s_stage2_loss(StopTime(hazards[:1]), losses[:1], 0.5, hard=True)
    assert float(finite) == pytest.approx(math.log(2))  # −log q(0), q(0) = σ(0)


@pytest.mark.parametrize("detach", [True, False])
def test_stage1_gradient_in_the_losses_by_its_closed_form(detach):
    """d/dℓ_s of Σ_t q*_t ℓ_t, q* = softmax(−ℓ/β) over the valid steps: q*_s with the weights
    detached (L2S Eq. 9); q*_s (1 − (ℓ_s − Σ_t q*_t ℓ_t)/β) through them (the official DnCNN-stop
    form). Written out per row, per step, in plain Python."""
    g = torch.Generator().manual_seed(5)
    losses = torch.rand(3, 5, generator=g, dtype=torch.float64).requires_grad_()
    mask = torch.tensor([True, True, False, True, True])
    beta = 0.3
    l2s_stage1_loss(losses, beta, mask, detach=detach).backward()
    rows = losses.detach().tolist()
    for b, row in enumerate(rows):
        valid = [t for t in range(5) if mask[t]]
        z = sum(math.exp(-row[t] / beta) for t in valid)
        q = {t: math.exp(-row[t] / beta) / z for t in valid}
        mean = sum(q[t] * row[t] for t in valid)
        for s in range(5):
            expected = 0.0 if s not in q else q[s] * (1 if detach else 1 - (row[s] - mean) / beta)
            assert float(losses.grad[b, s]) == pytest.approx(expected / 3, abs=1e-12)


def test_stage1_with_a_diverged_valid_step_is_nan_and_an_invalid_one_is_ignored():
    """The oracle gives a NaN step weight 0; the loss must still be NaN so the run stops as
    diverged (it was a finite number, and training went on; an audit)."""
    losses = torch.tensor([[math.nan, 1.0, 2.0], [0.5, 0.2, 0.9]])
    assert math.isnan(float(l2s_stage1_loss(losses, 0.5)))
    masked = l2s_stage1_loss(losses, 0.5, mask=torch.tensor([False, True, True]))
    q = [1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))]  # softmax(−ℓ/β), β = 0.5
    second = [1 / (1 + math.exp(-1.4)), math.exp(-1.4) / (1 + math.exp(-1.4))]
    expected = (q[0] * 1.0 + q[1] * 2.0 + second[0] * 0.2 + second[1] * 0.9) / 2
    assert float(masked) == pytest.approx(expected)


@pytest.mark.parametrize("pruned_loss", [math.inf, math.nan])
def test_joint_and_pondernet_losses_ignore_the_losses_of_pruned_steps(pruned_loss):
    """A pruned step has no stop mass, so its loss (inf or NaN where that exit diverged or was
    never computed) must not reach the objective: the same value as with any finite loss there,
    and the plain sums over the valid steps."""
    g = torch.Generator().manual_seed(3)
    hazards = torch.randn(4, 5, generator=g, dtype=torch.float64)
    losses = torch.rand(4, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False])
    stop = StopTime(hazards, mask)
    broken = losses.clone()
    broken[:, ~mask] = pruned_loss
    q = stop.probs[:, mask]
    expected_loss = (q * losses[:, mask]).sum(-1)
    entropy = -(q * q.log()).sum(-1)
    assert joint_loss(stop, broken, 0.3).item() == pytest.approx(
        (expected_loss - 0.3 * entropy).mean().item(), rel=1e-12
    )
    loss, parts = pondernet_loss(stop, broken, 0.3, 0.4)
    assert parts["reconstruction"].item() == pytest.approx(expected_loss.mean().item(), rel=1e-12)
    assert loss.item() == pytest.approx(pondernet_loss(stop, losses, 0.3, 0.4)[0].item(), rel=1e-12)
