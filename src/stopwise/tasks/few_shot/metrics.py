"""The few-shot task's measures: per-task, per-step trajectories of a split (query loss,
accuracy or MSE, support loss, hazards), summaries by K, intervals over tasks and the
multiply-add counts of one inner step and of the policy."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...macs import count_macs
from ...stats import mean_interval, spearman
from .data import TaskSet
from .models import AdaptedLearner, SupportLossStop, task_loss

__all__ = [
    "quality",
    "inf_if_not_finite",
    "trajectory",
    "at_steps",
    "by_shots",
    "interval",
    "paired_over_tasks",
    "step_macs",
    "stop_step_correlation",
]


def quality(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B,)`` per-task quality of query outputs: accuracy (logits ``(B, Q, C)``, labels
    ``(B, Q)``) or mean squared error (outputs and targets ``(B, Q)``)."""
    if outputs.dim() == targets.dim() + 1:
        return (outputs.argmax(-1) == targets).double().mean(-1)
    return ((outputs - targets) ** 2).double().mean(-1)


@torch.no_grad()
def trajectory(
    model: AdaptedLearner,
    policy: nn.Module | None,
    tasks: TaskSet,
    chunk: int,
    gain: nn.Module | None = None,
    with_features: bool = False,
) -> dict[str, torch.Tensor]:
    """Adapt every task for all T steps (in chunks of ``chunk`` tasks) and record, per task and
    step, ``(N, T)`` float64: ``query_loss``, ``quality`` (+inf for a task whose inner loop
    diverged), ``hand_score`` (the support-loss stop's score), ``hazard`` (the policy's logit;
    absent without a policy), ``gain`` (the gain head's score, with ``gain``) and, with
    ``with_features``, the policy features ``(N, T, F)``."""
    T = model.max_steps
    parts: list[dict[str, torch.Tensor]] = []
    hand = None
    for start in range(0, len(tasks), chunk):
        part = tasks.select(slice(start, start + chunk))
        state = model.start(part.inputs())
        rows: dict[str, list[torch.Tensor]] = {"query_loss": [], "quality": [], "hand_score": []}
        if policy is not None:
            rows["hazard"] = []
        if gain is not None:
            rows["gain"] = []
        if with_features:
            rows["features"] = []
        for t in range(T):
            state = model.advance(state, t)
            outputs, features = model.observe(state, t)
            if hand is None:
                hand = SupportLossStop((features.shape[1] - 4) // 2)
            rows["query_loss"].append(inf_if_not_finite(task_loss(outputs, part.query_y)))
            rows["quality"].append(inf_if_not_finite(quality(outputs, part.query_y)))
            rows["hand_score"].append(hand(features, t).double())
            if policy is not None:
                rows["hazard"].append(policy(features, t).double())
            if gain is not None:
                rows["gain"].append(gain(features, t).double())
            if with_features:
                rows["features"].append(features.float())
        parts.append({k: torch.stack(v, dim=1) for k, v in rows.items()})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def inf_if_not_finite(values: torch.Tensor) -> torch.Tensor:
    """A diverged task's loss or MSE (inf or NaN) as +inf, so that orderings and means hold."""
    values = values.double()
    return torch.where(torch.isfinite(values), values, torch.inf)


def at_steps(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(N,)`` the entries of ``values (N, T)`` at 0-based steps ``index (N,)``."""
    return values.gather(1, index.view(-1, 1).long()).squeeze(1)


def interval(values: torch.Tensor, scale: float = 1.0) -> dict[str, Any]:
    """Mean over tasks with its 95% Student-t interval (``scale``: e.g. 100 for points)."""
    out = mean_interval([scale * float(v) for v in values])
    return {k: out[k] for k in ("mean", "lo", "hi", "n")}


def paired_over_tasks(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> dict[str, Any]:
    """``a − b`` over the same tasks: mean difference with its 95% interval."""
    out = interval(a.double() - b.double(), scale)
    out["above_zero"] = out["lo"] is not None and out["lo"] > 0
    out["below_zero"] = out["hi"] is not None and out["hi"] < 0
    return out


def by_shots(shots: torch.Tensor, **columns: torch.Tensor) -> list[dict[str, Any]]:
    """Per K: the number of tasks and the mean of every ``(N,)`` column."""
    rows = []
    for k in shots.unique().tolist():
        mask = shots == k
        rows.append(
            {
                "shots": int(k),
                "tasks": int(mask.sum()),
                **{name: float(v[mask].double().mean()) for name, v in columns.items()},
            }
        )
    return rows


def stop_step_correlation(steps: torch.Tensor, shots: torch.Tensor) -> float | None:
    """Spearman's correlation of the stop step with K over tasks (None if either is constant)."""
    rho = spearman(steps.double().numpy(), shots.double().numpy())
    return None if math.isnan(rho) else rho


def step_macs(learner: nn.Module, support_x: torch.Tensor, query_x: torch.Tensor) -> float:
    """Multiply-adds of one inner step of one task: the support forward and backward (counted
    as 3 forwards) plus the query forward."""
    return 3.0 * count_macs(learner, support_x) + count_macs(learner, query_x)
