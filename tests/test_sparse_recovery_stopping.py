"""Exit pruning, validation calibration, the oracle stop and ISTA/FISTA tuning, against hand
computations and brute force."""

import math

import pytest
import torch

from stopwise.inference import HazardThreshold, stop_indices
from stopwise.tasks.sparse_recovery.classical import tune, validation_nmse
from stopwise.tasks.sparse_recovery.data import fixed_split, sensing_matrix
from stopwise.tasks.sparse_recovery.metrics import nmse_db
from stopwise.tasks.sparse_recovery.stopping import (
    budget_grid,
    calibrate_by_nmse,
    errors_at,
    oracle_mass,
    oracle_stop,
    prune_exits,
)


def test_oracle_mass_and_pruning_by_hand():
    errors = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    beta = 0.5
    rows = [[math.exp(-v / beta) for v in row] for row in errors.tolist()]
    expected = [sum(r[t] / sum(r) for r in rows) / 2 for t in range(3)]
    mass = oracle_mass(errors, beta)
    assert mass.tolist() == pytest.approx(expected)
    assert prune_exits(mass, 0.2).tolist() == [e >= 0.2 for e in expected]
    # nothing reaches the threshold: the exit of the largest mass survives
    assert prune_exits(torch.tensor([0.2, 0.5, 0.3]), 0.9).tolist() == [False, True, False]


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
    result = calibrate_by_nmse(errors, energies, hazards, valid, "hazard", 9)
    assert len(result["candidates"]) == 9
    for candidate in result["candidates"]:
        assert candidate["mean_steps"] <= candidate["budget"] + 1e-9
    assert result["validation_nmse"] == min(c["nmse"] for c in result["candidates"])
    assert isinstance(result["rule"], HazardThreshold)
    # the chosen rule, applied by a plain loop: first valid step before the last valid one whose
    # hazard logit reaches the threshold, else the last valid step
    threshold, last = result["score_threshold"], 5
    index = []
    for row in hazards.tolist():
        chosen = next((t for t in range(last) if valid[t] and row[t] >= threshold), last)
        index.append(chosen)
    index = torch.tensor(index)
    assert torch.equal(index, stop_indices(hazards, result["rule"], valid))
    assert nmse_db(errors_at(errors, index), energies) == pytest.approx(result["validation_nmse"])
    assert float((index + 1).double().mean()) == pytest.approx(result["validation_steps"])


def test_oracle_stop_is_the_best_valid_exit():
    errors = torch.tensor([[5.0, 1.0, 0.5], [0.2, 3.0, 1.0], [4.0, 0.1, 2.0]])
    energies = torch.tensor([1.0, 2.0, 3.0])
    snr = torch.tensor([20.0, 20.0, 30.0])
    valid = torch.tensor([True, False, True])
    best = oracle_stop(errors, energies, snr, [20.0, 30.0], valid)
    assert best["stop_index"].tolist() == [2, 0, 2]
    assert best["mixed"] == pytest.approx(10 * math.log10((0.5 + 0.2 + 2.0) / 6.0))
    assert best["20dB"] == pytest.approx(10 * math.log10(0.7 / 3.0))
    assert best["mean_steps"] == pytest.approx((3 + 1 + 3) / 3)


def test_tuning_returns_the_best_trial_and_never_loses_to_the_start():
    A = sensing_matrix(20, 40, 5.0, seed=0)
    val = fixed_split(A, 20, 0.1, [20.0, 30.0, 40.0], seed=3)
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
