"""Core: sampled horizons follow the same truncated prior that random_horizon_bound averages over
exactly, so the sampled bound is an unbiased estimate of the exact one."""

import math

import pytest
import torch

from stopwise.objectives import random_horizon_bound
from stopwise.stoptime import random_horizon_log_prior, sample_random_horizon


def prior_probs(p: float, horizons: int) -> torch.Tensor:
    """p(T) for T = 0..horizons−1 from the thesis formula, written out independently."""
    s = math.sqrt(1 - p)
    return torch.tensor(
        [s**T * (1 - s ** (T + 1)) * (1 - s * s) for T in range(horizons)], dtype=torch.float64
    )


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_truncated_sampling_matches_renormalised_prior(p):
    max_horizon = 5
    draws = sample_random_horizon(p, 200_000, torch.Generator().manual_seed(0), max_horizon)
    assert int(draws.min()) >= 0 and int(draws.max()) <= max_horizon
    target = prior_probs(p, max_horizon + 1)
    target = target / target.sum()
    freq = torch.bincount(draws, minlength=max_horizon + 1).double() / draws.numel()
    stderr = (target * (1 - target) / draws.numel()).sqrt()
    assert bool(((freq - target).abs() < 5 * stderr + 1e-4).all()), (freq, target)


def test_untruncated_sampling_matches_prior():
    p = 0.3
    draws = sample_random_horizon(p, 200_000, torch.Generator().manual_seed(1))
    target = random_horizon_log_prior(p, torch.arange(12)).exp()
    freq = torch.bincount(draws, minlength=200)[:12].double() / draws.numel()
    stderr = (target * (1 - target) / draws.numel()).sqrt()
    assert bool(((freq - target).abs() < 5 * stderr + 1e-4).all())


def test_sampled_bound_estimates_the_exact_bound():
    torch.manual_seed(0)
    T, p, beta, B = 6, 0.3, 0.7, 100_000
    logits = torch.randn(1, T).expand(B, T)
    losses = torch.rand(1, T).expand(B, T)
    exact = random_horizon_bound(logits, losses, p, beta)
    horizons = sample_random_horizon(p, B, torch.Generator().manual_seed(2), max_horizon=T - 1)
    sampled = random_horizon_bound(logits, losses, p, beta, horizons=horizons)
    assert abs(float(sampled) - float(exact)) < 0.01 * abs(float(exact)) + 1e-3


def test_out_of_range_horizons_are_an_error():
    logits, losses = torch.zeros(2, 4), torch.ones(2, 4)
    with pytest.raises(ValueError, match="max_horizon=3"):
        random_horizon_bound(logits, losses, 0.3, horizons=torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="shape"):
        random_horizon_bound(logits, losses, 0.3, horizons=torch.tensor([1, 2, 3]))
