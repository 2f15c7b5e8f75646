"""Stage II of the sparse-recovery stop models against independent references: the gain rate
against a plain loop, the claim that thresholding −log g reproduces the cost-aware oracle for every
price λ, the gain regression, replayed trajectories against the model, the candidate grid, the
best fixed-depth mix against hand computations, and the support-oracle least-squares bound
against the normal equations."""

import math

import numpy as np
import pytest
import torch

from stopwise.inference import ScoreThreshold, stop_indices
from stopwise.objectives import gain_loss, gain_rates, l2s_stage2_loss
from stopwise.policies import MLPPolicy
from stopwise.steps import unroll
from stopwise.stoptime import StopTime
from stopwise.tasks.sparse_recovery.config import Stage2
from stopwise.tasks.sparse_recovery.data import fixed_split, sensing_matrix
from stopwise.tasks.sparse_recovery.methods import (
    Candidate,
    Replay,
    candidates,
    replayed_losses,
    trajectories,
)
from stopwise.tasks.sparse_recovery.metrics import (
    cost_aware_oracle_stop,
    fixed_depth_hull,
    step_losses,
    support_oracle_errors,
)
from stopwise.tasks.sparse_recovery.models import ALISTA, LISTA, support_sizes
from stopwise.training import policy_hazards


def random_losses(rows=40, T=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # mostly decreasing with noise and plateaus, like per-layer errors
    steps = torch.rand(rows, T, generator=generator) * torch.rand(rows, 1, generator=generator)
    return (5.0 - steps.cumsum(1) + 0.3 * torch.rand(rows, T, generator=generator)).double()


def gain_rates_loop(losses, costs, valid):
    out = []
    for row in losses.tolist():
        rates = []
        for t in range(len(row)):
            later = [
                (row[t] - row[u]) / (costs[u] - costs[t])
                for u in range(t + 1, len(row))
                if valid[u]
            ]
            rates.append(max(later) if later else -math.inf)
        out.append(rates)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("uneven", [False, True])
def test_gain_rates_match_a_plain_loop(uneven):
    losses = random_losses()
    T = losses.shape[1]
    costs = torch.arange(1, T + 1, dtype=torch.float64)
    valid = torch.ones(T, dtype=torch.bool)
    if uneven:
        costs = torch.tensor([1.0, 3.0, 4.0, 7.0, 8.0, 8.5, 12.0], dtype=torch.float64)
        valid = torch.tensor([True, False, True, True, False, True, True])
    expected = gain_rates_loop(losses, costs.tolist(), valid.tolist())
    torch.testing.assert_close(gain_rates(losses, costs, valid), expected)


def first_minimiser_loop(row, penalty):
    objective = [loss + penalty * (t + 1) for t, loss in enumerate(row)]
    return min(range(len(row)), key=lambda t: (objective[t], t))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholding_minus_log_gain_is_the_cost_aware_oracle_for_every_price(seed):
    losses = random_losses(rows=60, T=9, seed=seed)
    T = losses.shape[1]
    costs = torch.arange(1, T + 1, dtype=torch.float64)
    every = torch.ones(T, dtype=torch.bool)
    scores = -torch.log(gain_rates(losses, costs, every).clamp_min(1e-300))
    for penalty in [0.0, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 10.0]:
        oracle = cost_aware_oracle_stop(losses, penalty)
        expected = [first_minimiser_loop(row, penalty) for row in losses.tolist()]
        assert oracle.tolist() == expected
        if penalty > 0:  # the rule "stop at the first score ≥ −log λ", applied step by step
            rule = ScoreThreshold(-math.log(penalty))
            assert stop_indices(scores, rule, every).tolist() == expected, penalty


def test_gain_loss_is_zero_at_the_target_and_pulls_scores_towards_it():
    losses = random_losses(rows=16, T=6).float()
    costs = torch.arange(1, 7, dtype=torch.float32)
    valid = torch.tensor([True, True, False, True, True, True])
    rates = gain_rates_loop(losses.double(), costs.tolist(), valid.tolist())
    decided = [0, 1, 3, 4]  # valid steps with a valid step after them
    target = -torch.log(rates[:, decided].clamp_min(1e-3)).float()
    scores = torch.zeros(16, 6)
    scores[:, decided] = target
    assert float(gain_loss(scores, losses, costs, valid, 1e-3)) == pytest.approx(0.0, abs=1e-6)
    scores = torch.zeros(16, 6, requires_grad=True)
    gain_loss(scores, losses, costs, valid, 1e-3).backward()
    grad = scores.grad
    assert torch.all(grad[:, [2, 5]] == 0)  # an invalid step and the last: no decision
    assert torch.all((grad[:, decided] < 0) == (target > 0))  # gradient descent moves to target


def test_replay_gives_fit_policy_the_models_own_trajectories():
    A = sensing_matrix(12, 24, 5.0, torch.Generator().manual_seed(4))
    split = fixed_split(A, 10, 0.2, [20.0, 30.0, 40.0], torch.Generator().manual_seed(1))
    model = LISTA(A, 5, 3.0, 0.1)
    pool = trajectories(model, split.y, split.x, chunk=7)
    trajectory = unroll(model, split.y, with_features=True)
    torch.testing.assert_close(pool.features, trajectory.features)
    torch.testing.assert_close(pool.losses, step_losses(trajectory.predictions, split.x))
    rows = torch.tensor([3, 0, 17])
    replayed = unroll(Replay(pool), rows, with_features=True)
    torch.testing.assert_close(replayed_losses(replayed.predictions, None), pool.losses[rows])
    torch.testing.assert_close(replayed.features, pool.features[rows])
    # the stage-II loss on replayed rows is the loss on the model's own trajectory
    policy = MLPPolicy(model.feature_dim, 5, hidden=(4,))
    on_pool = l2s_stage2_loss(
        StopTime(policy_hazards(policy, replayed.features)), pool.losses[rows], 0.3
    )
    fresh = unroll(model, split.y[rows], with_features=True)
    direct = l2s_stage2_loss(
        StopTime(policy_hazards(policy, fresh.features)),
        step_losses(fresh.predictions, split.x[rows]),
        0.3,
    )
    torch.testing.assert_close(on_pool, direct)


def test_candidates_start_with_l2s_as_published_and_cover_the_grid_once():
    stage2 = Stage2(
        steps=[10, 20], hidden=[8, 16], objectives=["gain", "l2s"], penalties=[0.1, 0.0]
    )
    grid = candidates(stage2)
    assert grid[0] == Candidate("l2s", 0.0, 8, 10) and grid[0].published
    assert len(grid) == len(set(grid)) == 2 * 2 * (1 + 2)  # gain, l2s λ=0.1, l2s λ=0
    assert sum(c.published for c in grid) == 4
    assert len({c.name for c in grid}) == len(grid)
    only_gain = candidates(Stage2(steps=[10], hidden=[8], objectives=["gain"], penalties=[]))
    assert [c.objective for c in only_gain] == ["l2s", "gain"]  # the published one is always there


def test_fixed_depth_hull_by_hand():
    curve = [-10.0, -20.0, -21.0]
    assert fixed_depth_hull(curve, 2.0) == pytest.approx(-20.0)
    mix = 10 * math.log10(0.5 * 10 ** (-1.0) + 0.5 * 10 ** (-2.0))  # half at depth 1, half at 2
    assert fixed_depth_hull(curve, 1.5) == pytest.approx(mix)
    # not convex: mixing depths 1 and 3 beats depth 2 alone and the (2, 3) mix
    bumpy = [-10.0, -10.5, -30.0]
    one_three = 10 * math.log10(0.5 * 10 ** (-1.0) + 0.5 * 10 ** (-3.0))
    assert fixed_depth_hull(bumpy, 2.0) == pytest.approx(one_three)
    assert fixed_depth_hull(bumpy, 2.0) < -10.5
    # NMSE worse at the last depth: the cheaper, better depth 2 counts at any mean depth above 2
    rising = [-10.0, -20.0, -19.0]
    assert fixed_depth_hull(rising, 3.0) == pytest.approx(-20.0)
    assert fixed_depth_hull(rising, 2.5) == pytest.approx(-20.0)
    assert fixed_depth_hull(rising, 1.5) == pytest.approx(mix)
    with pytest.raises(ValueError, match="mean_steps"):
        fixed_depth_hull(curve, 3.5)


def test_support_oracle_is_least_squares_on_the_true_support():
    A = sensing_matrix(30, 60, 5.0, torch.Generator().manual_seed(0))
    split = fixed_split(A, 4, 0.1, [20.0, 40.0], torch.Generator().manual_seed(2))
    errors = support_oracle_errors(A, split.y, split.x)
    A64 = A.double().numpy()
    for i in range(split.y.shape[0]):
        x, y = split.x[i].double().numpy(), split.y[i].double().numpy()
        support = np.flatnonzero(x)
        if support.size == 0:
            assert float(errors[i]) == 0.0
            continue
        AS = A64[:, support]
        estimate = np.linalg.solve(AS.T @ AS, AS.T @ y)  # the normal equations
        assert float(errors[i]) == pytest.approx(
            float(((estimate - x[support]) ** 2).sum()), rel=1e-8
        )
    # more noise, larger error: the 20 dB block is worse than the 40 dB block on average
    assert float(errors[:4].mean()) > float(errors[4:].mean())


def test_policy_features_of_alista_need_no_extra_residual():
    A = sensing_matrix(12, 24, 5.0, torch.Generator().manual_seed(4))
    model = ALISTA(A, 3, 0.6, 0.1, support_sizes(24, 3, 0.05, 0.2))
    state = model.advance(model.start(torch.randn(2, 12)), 0)
    assert set(state) == {"y", "y_level", "x", "r"}
    torch.testing.assert_close(state["r"], state["x"] @ A.T - state["y"])


@pytest.mark.parametrize("oracle", ["hard", "soft"])
def test_an_l2s_candidate_imitates_its_own_oracle_priced_at_lambda_per_step(
    tmp_path, monkeypatch, oracle
):
    """fit_candidate hands fit_policy the config's oracle (hard: argmin, soft: KL to q*) and
    the step penalty λ·c_t with c_t = t + 1, written out, for every l2s candidate's λ."""
    from stopwise.contract import Job, JobContext, PlannedJob, RunDir
    from stopwise.experiments import get_experiment, resolve_config
    from stopwise.tasks.sparse_recovery import methods

    config = resolve_config(get_experiment("sparse-recovery"), "tiny", [f"stage2.oracle={oracle}"])[
        0
    ]
    g = torch.Generator().manual_seed(0)
    pool = methods.Trajectories(torch.randn(80, 5, 3, generator=g), torch.rand(80, 5, generator=g))
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs)

    monkeypatch.setattr(methods, "fit_policy", spy)
    planned = PlannedJob("lista-stop-s0", Job("lista-stop"), 0, {}, ())
    context = JobContext(RunDir(tmp_path), config, planned, progress=False)
    for penalty in (0.0, 0.03, 0.5):
        candidate = methods.Candidate("l2s", penalty, 4, 2)
        methods.fit_candidate(candidate, pool, torch.ones(5, dtype=torch.bool), context)
        assert seen[-1]["hard"] is (oracle == "hard")
        expected = [penalty * (t + 1) for t in range(5)]
        assert seen[-1]["step_penalty"].tolist() == pytest.approx(expected)
    assert len(seen) == 3
