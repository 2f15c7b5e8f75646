"""The halting math the parity task relies on, each checked against an independent reference:
ACT halting and remainder (a plain Python loop), PonderNet's KL direction and prior
normalisation, the random-horizon prior's marginal (the geometric) and the random-horizon bound
(a loop over horizons), the L2S stage-I gradient (the soft-min)."""

import math

import pytest
import torch

from stopwise.objectives import (
    act_halting,
    act_output,
    l2s_stage1_loss,
    pondernet_loss,
    random_horizon_bound,
)
from stopwise.stoptime import (
    StopTime,
    random_horizon_cdf,
    random_horizon_log_conditional,
    random_horizon_log_prior,
    truncated_geometric_log_prior,
)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def act_reference(logits: list[float], eps: float):
    """Graves (2016) Eqs. 6–12 for one input, step by step: (p_n, N, R, ρ)."""
    T = len(logits)
    h = [sigmoid(v) for v in logits]
    total = 0.0
    for n in range(T):
        if total + h[n] >= 1 - eps or n == T - 1:
            remainder = 1 - total
            weights = h[:n] + [remainder] + [0.0] * (T - n - 1)
            return weights, n + 1, remainder, n + 1 + remainder
        total += h[n]
    raise AssertionError("unreachable")


@pytest.mark.parametrize("eps", [0.01, 0.3])
def test_act_halting_matches_a_plain_loop(eps):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 7, generator=generator, dtype=torch.float64) * 2 - 1
    logits[0] = -20.0  # never reaches 1 − ε: the last step halts with a large remainder
    logits[1] = 20.0  # halts at the first step
    halting = act_halting(logits, eps)
    for row in range(logits.shape[0]):
        weights, steps, remainder, ponder = act_reference(logits[row].tolist(), eps)
        assert halting.weights[row].tolist() == pytest.approx(weights, abs=1e-12)
        assert int(halting.steps[row]) == steps
        assert float(halting.remainder[row]) == pytest.approx(remainder, abs=1e-12)
        assert float(halting.ponder_cost[row]) == pytest.approx(ponder, abs=1e-12)
    assert int(halting.steps[0]) == 7 and int(halting.steps[1]) == 1
    assert torch.allclose(halting.weights.sum(-1), torch.ones(64, dtype=torch.float64))


def test_act_ponder_gradient_flows_through_the_remainder_only():
    logits = torch.tensor([[-1.0, -0.5, 0.2, 3.0, 1.0]], dtype=torch.float64, requires_grad=True)
    halting = act_halting(logits, 0.01)
    halting.ponder_cost.sum().backward()
    N = int(halting.steps[0])
    h = torch.sigmoid(logits.detach())[0]
    # ρ = N + 1 − Σ_{n<N} h_n, so dρ/dz_n = −h_n(1 − h_n) before the halting step and 0 from it on.
    expected = [-(h[n] * (1 - h[n])).item() if n < N - 1 else 0.0 for n in range(5)]
    assert logits.grad[0].tolist() == pytest.approx(expected, abs=1e-12)


def test_act_output_is_the_weighted_sum():
    weights = torch.tensor([[0.2, 0.5, 0.3, 0.0]])
    outputs = torch.tensor([[1.0, -2.0, 4.0, 100.0]])
    assert float(act_output(weights, outputs)) == pytest.approx(0.2 - 1.0 + 1.2)


def test_truncated_geometric_prior_is_normalised_geometric():
    p, T = 0.3, 6
    log_prior = truncated_geometric_log_prior(p, T, dtype=torch.float64)
    raw = [p * (1 - p) ** t for t in range(T)]
    assert log_prior.exp().tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)
    mask = torch.tensor([True, False, True, True, False, False])
    masked = truncated_geometric_log_prior(p, T, mask=mask, dtype=torch.float64).exp()
    kept = [raw[t] if mask[t] else 0.0 for t in range(T)]
    assert masked.tolist() == pytest.approx([r / sum(kept) for r in kept], rel=1e-12)


@pytest.mark.parametrize("tail", ["absorb", "renormalize"])
def test_pondernet_kl_runs_from_the_halting_distribution_to_the_prior(tail):
    logits = torch.tensor([[0.3, -1.2, 0.8, -0.1], [2.0, 0.0, -3.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([[0.9, 0.4, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    beta, p = 0.7, 0.4
    stop = StopTime(logits, tail=tail)
    loss, terms = pondernet_loss(stop, losses, beta, p)

    # Halting distribution by hand: q(t) = λ_t ∏_{τ<t}(1 − λ_τ), last step absorbing or renormalised.
    q_rows = []
    for row in logits.tolist():
        lam = [sigmoid(v) for v in row]
        q, survive = [], 1.0
        for t, value in enumerate(lam):
            q.append(survive * (1.0 if (tail == "absorb" and t == len(lam) - 1) else value))
            survive *= 1 - value
        total = sum(q)
        q_rows.append([v / total for v in q])
    raw = [p * (1 - p) ** t for t in range(4)]
    prior = [r / sum(raw) for r in raw]
    forward = [sum(qt * math.log(qt / pt) for qt, pt in zip(q, prior, strict=True)) for q in q_rows]
    reverse = [sum(pt * math.log(pt / qt) for qt, pt in zip(q, prior, strict=True)) for q in q_rows]
    expected_kl = sum(forward) / 2
    assert float(terms["kl"]) == pytest.approx(expected_kl, rel=1e-10)
    assert abs(expected_kl - sum(reverse) / 2) > 1e-3  # the directions really differ here
    reconstruction = sum(
        sum(qt * lt for qt, lt in zip(q, ls, strict=True))
        for q, ls in zip(q_rows, losses.tolist(), strict=True)
    )
    assert float(loss) == pytest.approx(reconstruction / 2 + beta * expected_kl, rel=1e-10)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_random_horizon_marginal_is_the_geometric(p):
    horizons = 3000 if p < 0.1 else 400
    log_prior = random_horizon_log_prior(p, torch.arange(horizons))
    prior = log_prior.exp()
    assert float(prior.sum()) == pytest.approx(1.0, abs=1e-10)
    assert torch.allclose(prior.cumsum(0)[:50], random_horizon_cdf(p, torch.arange(50)))
    for t in range(8):
        marginal = sum(
            math.exp(
                float(log_prior[T]) + float(random_horizon_log_conditional(p, T, torch.float64)[t])
            )
            for T in range(t, horizons)
        )
        assert marginal == pytest.approx(p * (1 - p) ** t, rel=1e-9)


def bound_reference(a, losses, p, beta):
    """Sander (2017): E_{H ~ p(H | H ≤ T−1)} [Σ_{t≤H} q_H ℓ_t + β KL(q_H ‖ p(·|H))], one row."""
    T = len(a)
    s = math.sqrt(1 - p)
    weights = [s**H * (1 - s ** (H + 1)) * (1 - s * s) for H in range(T)]
    total = 0.0
    for H in range(T):
        z = sum(math.exp(a[t]) for t in range(H + 1))
        q = [math.exp(a[t]) / z for t in range(H + 1)]
        cond = [(1 - s) * s**t / (1 - s ** (H + 1)) for t in range(H + 1)]
        value = sum(q[t] * losses[t] + beta * q[t] * math.log(q[t] / cond[t]) for t in range(H + 1))
        total += weights[H] / sum(weights) * value
    return total


def test_random_horizon_bound_matches_a_loop_over_horizons():
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    losses = torch.rand(3, 5, generator=generator, dtype=torch.float64)
    p, beta = 0.25, 0.6
    expected = sum(bound_reference(a[i].tolist(), losses[i].tolist(), p, beta) for i in range(3))
    assert float(random_horizon_bound(a, losses, p, beta)) == pytest.approx(expected / 3, rel=1e-10)
    horizons = torch.tensor([0, 4, 2])
    sampled = random_horizon_bound(a, losses, p, beta, horizons=horizons)
    s = math.sqrt(1 - p)
    per_row = []
    for i, H in enumerate(horizons.tolist()):
        z = sum(math.exp(v) for v in a[i, : H + 1].tolist())
        q = [math.exp(v) / z for v in a[i, : H + 1].tolist()]
        cond = [(1 - s) * s**t / (1 - s ** (H + 1)) for t in range(H + 1)]
        per_row.append(
            sum(
                q[t] * float(losses[i, t]) + beta * q[t] * math.log(q[t] / cond[t])
                for t in range(H + 1)
            )
        )
    assert float(sampled) == pytest.approx(sum(per_row) / 3, rel=1e-10)


def test_l2s_stage1_gradient_is_the_soft_min_gradient():
    losses = torch.tensor(
        [[0.9, 0.2, 0.5], [0.1, 0.1, 2.0]], dtype=torch.float64, requires_grad=True
    )
    beta = 0.3
    l2s_stage1_loss(losses, beta).backward()
    ours = losses.grad.clone()
    losses.grad = None
    soft_min = -beta * torch.logsumexp(-losses / beta, dim=-1)
    soft_min.mean().backward()
    assert torch.allclose(ours, losses.grad)


def _fixed_batch(T=4):
    from stopwise.tasks.parity import ParityGRU, sample_parity

    torch.manual_seed(0)
    model = ParityGRU(6, 8, T, halting_bias=-1.0)
    with torch.no_grad():
        model.halting.linear.weight.mul_(3)
    x, y, _ = sample_parity(32, 6, (1, 6), torch.Generator().manual_seed(1))
    with torch.no_grad():  # per step, by a plain loop over the model's steps
        logits, z = [], []
        state = model.start(x)
        for t in range(T):
            state = model.advance(state, t)
            prediction, features = model.observe(state, t)
            logits.append(prediction)
            z.append(model.halting(features))
    logits, z = torch.stack(logits, 1), torch.stack(z, 1)
    bce = torch.stack(
        [torch.nn.functional.binary_cross_entropy_with_logits(logits[:, t], y, reduction="none")
         for t in range(T)], 1,
    )  # fmt: skip
    return model, x, y, z, bce


@pytest.mark.parametrize(
    "method, tail", [("pondernet", "renormalize"), ("pondernet-last", "absorb")]
)
def test_pondernets_training_loss_on_a_fixed_batch(method, tail):
    """_loss of PonderNet at λ_p = value: pondernet_loss(StopTime(z, tail), BCE per step, β =
    config.pondernet_beta, λ_p = value) — renormalised for ``pondernet``, the last step taking
    the remaining mass for ``pondernet-last``."""
    from types import SimpleNamespace

    from stopwise.tasks.parity.methods import _loss

    model, x, y, z, bce = _fixed_batch()
    config = SimpleNamespace(pondernet_beta=0.3)
    with torch.no_grad():
        loss, _ = _loss(method, 0.1, config, model, x, y)
        expected, _ = pondernet_loss(StopTime(z, tail=tail), bce, 0.3, 0.1)
        others = [
            pondernet_loss(StopTime(z, tail=other), bce, b, p)[0]
            for other in ("renormalize", "absorb")
            for b, p in ((0.3, 0.1), (0.1, 0.3))
            if (other, b) != (tail, 0.3)
        ]
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert all(abs(float(o) - float(expected)) > 1e-3 for o in others)  # each swap shows


def test_the_random_horizon_training_loss_on_a_fixed_batch():
    """_loss of the thesis method at β = value: the bound of a loop over horizons with
    a_t = −Σ_{τ<t} z_τ, prior p = config.thesis_prior_p, KL weight β = value."""
    from types import SimpleNamespace

    from stopwise.tasks.parity.methods import _loss

    model, x, y, z, bce = _fixed_batch()
    config = SimpleNamespace(thesis_prior_p=0.2)
    with torch.no_grad():
        loss, _ = _loss("thesis", 0.6, config, model, x, y)
    a = [[-sum(row[:t]) for t in range(len(row))] for row in z.double().tolist()]
    losses = bce.double().tolist()
    expected = sum(bound_reference(a[i], losses[i], 0.2, 0.6) for i in range(32)) / 32
    swapped = sum(bound_reference(a[i], losses[i], 0.6, 0.2) for i in range(32)) / 32
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert abs(swapped - expected) > 1e-3


def test_fixed_depth_trains_its_last_step_only(tmp_path, monkeypatch):
    """train_method("fixed") weights the per-step losses by one_hot(T − 1): the last of its
    ``depth`` steps only."""
    from stopwise.contract import Job, JobContext, PlannedJob, RunDir
    from stopwise.experiments import get_experiment, resolve_config
    from stopwise.tasks.parity import ParityGRU, methods

    config = resolve_config(get_experiment("parity"), "tiny")[0]
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(methods, "fit_predictor", spy)
    job = Job("fixed-3-lr0.003", params={"method": "fixed", "value": 3, "lr": 0.003})
    context = JobContext(RunDir(tmp_path), config, PlannedJob("f-s0", job, 0, {}, ()), False)
    methods.train_method("fixed", ParityGRU(8, 16, 3), 3, config, context, lr=0.003)
    assert seen["step_weights"].tolist() == [0.0, 0.0, 1.0]
