"""The multi-exit measures: exit logits of a whole split, MSDNet's budgeted protocol, accuracy at
fixed budgets, accuracy by difficulty group and wall-clock of real early exit.

Budgeted batch classification (Huang et al. 2018, §5): for a target exit distribution
q_k ∝ p^k, per-exit thresholds on the confidence are fitted on the *validation* split
(:func:`~stopwise.inference.fit_exit_thresholds`) and applied unchanged to the test split; each p
gives one (mean MACs, accuracy) point. Threshold arithmetic is the core's
(:func:`~stopwise.inference.stop_indices`), the same that :func:`~stopwise.inference.run_adaptive`
applies step by step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...inference import (
    ScoreThreshold,
    exit_distribution,
    fit_exit_thresholds,
    in_chunks,
    stop_indices,
    time_adaptive,
)
from ...policies import ConfidencePolicy
from ...selection import point_rule
from ...steps import unroll
from ...training import policy_hazards
from .models import fastest_inference_copy

__all__ = [
    "P_GRID",
    "exit_logits",
    "exit_hazards",
    "exit_metric",
    "msdnet_thresholds",
    "msdnet_rule",
    "apply_thresholds",
    "accuracy_at_budgets",
    "with_validation_accuracy",
    "choose_on_validation",
    "accuracy_by_group",
    "time_early_exit",
]

# MSDNet's 39 exit distributions: p = 0.05, 0.10, ..., 1.95.
P_GRID = [round(0.05 * i, 2) for i in range(1, 40)]


def exit_logits(model, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """``(N, K, C)`` logits of every exit, in eval mode, ``chunk`` rows at a time."""
    model.eval()
    return in_chunks(lambda rows: unroll(model, rows).predictions, x, chunk)


@torch.no_grad()
def exit_hazards(policy, logits: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` float64 hazard logits of ``policy`` at every exit of ``logits (N, K, C)``.
    With :class:`~stopwise.policies.ConfidencePolicy` they are the logits of the max softmax
    probability, so a threshold on them is a threshold on the confidence."""
    return policy_hazards(policy, logits).double()


def exit_metric(correct: torch.Tensor) -> Callable[[torch.Tensor], dict[str, Any]]:
    """``metric(stop_index (N,)) -> {"accuracy", "exit_fractions"}`` given ``correct (N, K)``
    (whether exit k classifies row i correctly)."""
    rows = torch.arange(correct.shape[0])

    def metric(index: torch.Tensor) -> dict[str, Any]:
        index = index.cpu()
        fractions = torch.bincount(index, minlength=correct.shape[1]).double() / len(index)
        return {
            "accuracy": float(correct[rows, index].double().mean()),
            "exit_fractions": fractions.tolist(),
        }

    return metric


def msdnet_thresholds(val_scores: torch.Tensor, costs: torch.Tensor) -> list[dict[str, Any]]:
    """For each p of ``P_GRID``, MSDNet's per-exit thresholds fitted on validation scores
    ``(N, K)`` for q_k ∝ p^k, and the mean cost they give there:
    ``[{"p", "score_threshold", "val_mean_cost"}]``."""
    points = []
    for p in P_GRID:
        thresholds = fit_exit_thresholds(val_scores, exit_distribution(p, val_scores.shape[1]))
        cost = float(costs[stop_indices(val_scores, ScoreThreshold(thresholds))].mean())
        points.append({"p": p, "score_threshold": thresholds.tolist(), "val_mean_cost": cost})
    return points


def msdnet_rule(fitted: list[dict[str, Any]], key: str, value: float) -> ScoreThreshold:
    """MSDNet's thresholds of the :func:`msdnet_thresholds` point whose ``key``
    (``"val_mean_cost"``: the budget, ``"p"``: the exit distribution q ∝ p^k) is nearest to
    ``value``."""
    point = min(fitted, key=lambda pt: abs(pt[key] - value))
    return ScoreThreshold(point["score_threshold"])


def apply_thresholds(
    fitted: list[dict[str, Any]],
    test_scores: torch.Tensor,
    test_metric: Callable[[torch.Tensor], dict[str, Any]],
    costs: torch.Tensor,
) -> list[dict[str, Any]]:
    """The budget curve: every fitted point's thresholds applied unchanged to test scores."""
    curve = []
    for point in fitted:
        index = stop_indices(test_scores, ScoreThreshold(point["score_threshold"]))
        cost, steps = float(costs[index].mean()), float((index + 1).double().mean())
        curve.append({**point, "mean_cost": cost, "mean_steps": steps, **test_metric(index)})
    return curve


def with_validation_accuracy(
    points: list[dict[str, Any]], val_scores: torch.Tensor, val_correct: torch.Tensor
) -> list[dict[str, Any]]:
    """Add ``val_accuracy`` to every curve point: its rule (thresholds, and a mix where the
    point has one) applied to the validation scores ``(N, K)`` it was fitted on, scored with
    ``val_correct (N, K)``."""
    metric = exit_metric(val_correct)
    for point in points:
        point["val_accuracy"] = metric(stop_indices(val_scores, point_rule(point)))["accuracy"]
    return points


def accuracy_at_budgets(
    points: list[dict[str, Any]],
    budgets: list[float],
    cost: str = "mean_cost",
    accuracy: str = "accuracy",
) -> list[float | None]:
    """Accuracy linearly interpolated at each budget along a curve (by default the test
    accuracy over the mean test cost; ``cost="val_mean_cost", accuracy="val_accuracy"`` reads
    the validation curve); None outside the curve's range of costs. It chooses nothing."""
    x, y = np.array(sorted((pt[cost], pt[accuracy]) for pt in points)).T
    return [
        float(np.interp(b, x, y)) if x[0] - 1e-9 <= b <= x[-1] + 1e-9 else None for b in budgets
    ]


def choose_on_validation(
    curves: dict[str, list[dict[str, Any]]], budgets: list[float]
) -> list[dict[str, Any]]:
    """For each budget, the candidate curve (name → points with ``val_mean_cost``,
    ``val_accuracy``, ``mean_cost``, ``accuracy``) most accurate on validation at that budget
    (interpolated along the validation costs), among those whose validation curve reaches it;
    ``{"choice", "val_accuracy", "accuracy"}`` with its test accuracy there (None where the
    chosen curve's test costs do not reach the budget; all None when no candidate's validation
    curve does). The test curves play no part in the choice. Ties go to the first candidate."""
    val = {
        name: accuracy_at_budgets(c, budgets, cost="val_mean_cost", accuracy="val_accuracy")
        for name, c in curves.items()
    }
    test = {name: accuracy_at_budgets(c, budgets) for name, c in curves.items()}
    picks = []
    for i in range(len(budgets)):
        reached = [n for n in curves if val[n][i] is not None]
        best = max(reached, key=lambda n: val[n][i], default=None)
        val_acc, acc = (None, None) if best is None else (val[best][i], test[best][i])
        picks.append({"choice": best, "val_accuracy": val_acc, "accuracy": acc})
    return picks


def accuracy_by_group(
    index: torch.Tensor, correct: torch.Tensor, group: torch.Tensor, levels: list[float]
) -> list[dict[str, Any]]:
    """Mean exit (1-based) and accuracy of stop indices ``(N,)`` per difficulty group."""
    rows = torch.arange(len(index))
    right = correct[rows, index].double()
    return [
        {
            "group": g,
            "level": levels[g],
            "mean_exit": float((index[group == g] + 1).double().mean()),
            "accuracy": float(right[group == g].mean()),
        }
        for g in sorted(set(group.tolist()))
    ]


def time_early_exit(
    model, test_x: torch.Tensor, rules: dict[str, ScoreThreshold], batch: int, repeats: int
) -> dict[str, Any]:
    """Wall-clock and CPU time of confidence early exit (``shrink`` mode: finished rows leave the
    batch) against the full network, side by side (:func:`~stopwise.inference.time_adaptive`),
    on the model's :func:`~.models.fastest_inference_copy` (BatchNorm and stem folded,
    channels-last from the step that runs the network fastest on ``batch`` test rows here),
    with each rule's MAC ratio (full cost / mean cost: the ideal speedup) and the measured
    speedup over it. ``same_exits`` is the share of test rows whose exit the copy chooses as
    the trained model does (folding and the layout change rounding only)."""
    fast = fastest_inference_copy(model, test_x[:batch])
    timing = time_adaptive(fast, ConfidencePolicy(), test_x, rules, repeats=repeats, chunk=batch)
    full = float(model.step_costs()[-1])
    scores = exit_hazards(ConfidencePolicy(), exit_logits(model, test_x, batch))
    fast_scores = exit_hazards(ConfidencePolicy(), exit_logits(fast, test_x, batch))
    for name, row in timing["rules"].items():
        row["mac_ratio"] = full / row["mean_cost"]
        row["speedup_over_mac_ratio"] = row["speedup"] / row["mac_ratio"]
        if row.get("cpu_speedup") is not None:
            row["cpu_speedup_over_mac_ratio"] = row["cpu_speedup"] / row["mac_ratio"]
        same = stop_indices(scores, rules[name]) == stop_indices(fast_scores, rules[name])
        row["same_exits"] = float(same.double().mean())
    layout = {"channels_last_from": fast.channels_last_from, "seconds": fast.layout_seconds}
    return {**timing, "batch": batch, "model": "fastest_inference_copy", "layout": layout}
