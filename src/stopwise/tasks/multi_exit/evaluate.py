"""Evaluation of a trained multi-exit network: anytime accuracy, MSDNet's budgeted protocol, the
L2S policy's curve, accuracy at fixed budgets, and real wall-clock through ``run_adaptive``.

Budgeted batch classification (Huang et al. 2018, §5): for a target exit distribution
q_k ∝ p^k, per-exit confidence thresholds are fitted on the *validation* split
(:func:`~stopwise.inference.fit_exit_thresholds`) and applied unchanged to the test split; each p
gives one (mean MACs, accuracy) point. Threshold arithmetic is the core's
(:func:`~stopwise.inference.stop_indices`), the same that :func:`~stopwise.inference.run_adaptive`
applies step by step.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np
import torch

from ...inference import (
    HazardThreshold,
    exit_distribution,
    fit_exit_thresholds,
    fit_threshold,
    run_adaptive,
    run_fixed,
    stop_indices,
)
from ...policies import ConfidencePolicy
from ...steps import unroll
from ...training import policy_hazards

__all__ = [
    "P_GRID",
    "exit_logits",
    "confidence_scores",
    "curve_point",
    "budgeted_curve",
    "policy_curve",
    "accuracy_at_budgets",
    "time_thresholds",
]

# MSDNet's 39 exit distributions: p = 0.05, 0.10, ..., 1.95.
P_GRID = [round(0.05 * i, 2) for i in range(1, 40)]


@torch.no_grad()
def exit_logits(model, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """``(N, K, C)`` logits of every exit, in eval mode, ``batch`` rows at a time."""
    model.eval()
    return torch.cat([unroll(model, x[i : i + batch]).predictions for i in range(0, len(x), batch)])


def confidence_scores(logits: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` float64 logit of the max softmax probability at each exit: the hazard logit
    of :class:`~stopwise.policies.ConfidencePolicy`, so a threshold on it is a threshold on the
    confidence."""
    policy = ConfidencePolicy()
    return torch.stack([policy(logits[:, k], k) for k in range(logits.shape[1])], 1).double()


def curve_point(index: torch.Tensor, correct: torch.Tensor, costs: torch.Tensor) -> dict[str, Any]:
    """Accuracy, mean cost and exit fractions of stop indices ``(N,)`` given ``correct (N, K)``."""
    rows = torch.arange(len(index))
    K = correct.shape[1]
    return {
        "accuracy": float(correct[rows, index].double().mean()),
        "mean_macs": float(costs[index].mean()),
        "exit_fractions": torch.bincount(index, minlength=K).double().div(len(index)).tolist(),
    }


def budgeted_curve(
    val_logits: torch.Tensor,
    test_logits: torch.Tensor,
    test_y: torch.Tensor,
    costs: torch.Tensor,
    p_grid: list[float] = P_GRID,
) -> list[dict[str, Any]]:
    """One point per p: thresholds fitted on validation for q ∝ p^k, then applied to test."""
    K = val_logits.shape[1]
    val_scores, test_scores = confidence_scores(val_logits), confidence_scores(test_logits)
    correct = test_logits.argmax(-1) == test_y.unsqueeze(1)
    points = []
    for p in p_grid:
        thresholds = fit_exit_thresholds(val_scores, exit_distribution(p, K))
        rule = HazardThreshold.from_score_threshold(thresholds)
        val_index = stop_indices(val_scores, rule)
        point = curve_point(stop_indices(test_scores, rule), correct, costs)
        point |= {
            "p": p,
            "thresholds": thresholds.tolist(),
            "val_mean_macs": float(costs[val_index].mean()),
        }
        points.append(point)
    return points


@torch.no_grad()
def policy_curve(
    policy,
    val_logits: torch.Tensor,
    test_logits: torch.Tensor,
    test_y: torch.Tensor,
    costs: torch.Tensor,
    budgets: list[float],
) -> list[dict[str, Any]]:
    """The L2S policy's curve: for each budget (mean MACs on validation), the hazard threshold
    fitted on validation (:func:`~stopwise.inference.fit_threshold`), applied to test."""
    policy.eval()
    val_h, test_h = policy_hazards(policy, val_logits), policy_hazards(policy, test_logits)
    correct = test_logits.argmax(-1) == test_y.unsqueeze(1)
    points = []
    for budget in budgets:
        rule = fit_threshold(val_h, budget, costs)
        point = curve_point(stop_indices(test_h, rule), correct, costs)
        logit = float(rule.score_threshold)
        point |= {
            "val_budget": budget,
            "hazard_threshold": 1 / (1 + math.exp(-logit)) if math.isfinite(logit) else logit,
            "val_mean_macs": float(costs[stop_indices(val_h, rule)].mean()),
        }
        points.append(point)
    return points


def accuracy_at_budgets(points: list[dict[str, Any]], budgets: list[float]) -> list[float | None]:
    """Accuracy linearly interpolated at each budget (mean test MACs) along a curve sorted by
    cost; None outside the curve's range of costs."""
    pairs = sorted((pt["mean_macs"], pt["accuracy"]) for pt in points)
    x, y = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    return [
        float(np.interp(b, x, y)) if x[0] - 1e-9 <= b <= x[-1] + 1e-9 else None for b in budgets
    ]


def _chunks(x: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return [x[i : i + batch] for i in range(0, len(x), batch)]


@torch.no_grad()
def time_thresholds(
    model,
    test_x: torch.Tensor,
    test_logits: torch.Tensor,
    thresholds: list[list[float]],
    batch: int = 1000,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """Wall-clock of confidence early exit (``run_adaptive(..., mode="shrink")``, finished rows
    leave the batch) at each set of per-exit thresholds vs the full network (``run_fixed``: every
    block and head), ``batch`` test rows per call, interleaved, median of ``repeats``.

    Also checks that the shrink run's predictions and exits equal the dense evaluation's.
    """
    model.eval()
    costs = model.step_costs()
    scores = confidence_scores(test_logits)
    chunks = _chunks(test_x, batch)
    policy = ConfidencePolicy()
    rules = [HazardThreshold.from_score_threshold(torch.tensor(t)) for t in thresholds]
    for chunk in chunks[:1]:  # warm-up
        run_fixed(model, chunk)
    full, adaptive = [], [[] for _ in rules]
    results: list[Any] = [None] * len(rules)
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk in chunks:
            run_fixed(model, chunk)
        full.append(time.perf_counter() - start)
        for i, rule in enumerate(rules):
            start = time.perf_counter()
            outs = [run_adaptive(model, policy, chunk, rule, mode="shrink") for chunk in chunks]
            adaptive[i].append(time.perf_counter() - start)
            results[i] = outs
    rows = []
    full_s = statistics.median(full)
    for i, rule in enumerate(rules):
        index = torch.cat([r.stop_index for r in results[i]])
        predictions = torch.cat([r.predictions for r in results[i]])
        dense_index = stop_indices(scores, rule)
        dense_predictions = test_logits[torch.arange(len(index)), dense_index]
        seconds = statistics.median(adaptive[i])
        mac_ratio = float(costs[-1] / costs[index].mean())
        rows.append(
            {
                "thresholds": thresholds[i],
                "mean_macs": float(costs[index].mean()),
                "full_seconds": full_s,
                "adaptive_seconds": seconds,
                "speedup": full_s / seconds,
                "mac_ratio": mac_ratio,
                "speedup_over_mac_ratio": full_s / seconds / mac_ratio,
                "matches_dense": bool(torch.equal(index, dense_index))
                and bool(torch.allclose(predictions, dense_predictions, atol=1e-5, rtol=1e-5)),
                "batch": batch,
                "repeats": repeats,
            }
        )
    return rows
