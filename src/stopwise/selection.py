"""Choices made on validation, and the one place test numbers come from.

Every helper that *chooses* something — which exits to keep, which threshold meets a budget,
which rule kind or setting is best — takes validation data only (its arguments are named
``val_*``). Test numbers are produced after all choices by applying them unchanged:
:func:`budget_sweep` applies validation-calibrated thresholds to test hazards, and a task's test
split is wrapped in :class:`Heldout`, which opens once per job.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from .inference import (
    THRESHOLD_KINDS,
    ScoreThreshold,
    ThresholdRule,
    fit_threshold,
    rule_scores,
    stop_indices,
)
from .stoptime import oracle

__all__ = [
    "Heldout",
    "prune_exits",
    "budget_grid",
    "Calibration",
    "calibrate_by_metric",
    "floored_costs",
    "fit_floored_threshold",
    "budget_sweep",
    "fixed_depth_curve",
]

T = TypeVar("T")


class Heldout(Generic[T]):
    """A test split that can be opened once: test numbers are computed once, after every
    choice has been made on validation."""

    def __init__(self, data: T, name: str = "test"):
        self._data, self.name, self.opened = data, name, False

    def open(self) -> T:
        if self.opened:
            raise RuntimeError(
                f"the {self.name} split was opened already: test numbers are computed once, "
                "after all selection on validation"
            )
        self.opened = True
        return self._data


def prune_exits(val_losses: torch.Tensor, beta: float, min_mass: float) -> torch.Tensor:
    """``(T,)`` bool mask of the exits kept: those whose mean oracle mass
    mean_i softmax_t(−ℓ_it/β) on validation losses ``(N, T)`` is at least ``min_mass``
    (L2S §5.1 prunes at 1e-3). If none reaches it, the exit of largest mass is kept."""
    mass = oracle(val_losses.double(), beta).mean(0)
    valid = mass >= min_mass
    if not bool(valid.any()):
        valid[int(mass.argmax())] = True
    return valid


def budget_grid(valid: torch.Tensor, points: int, costs: torch.Tensor | None = None) -> list[float]:
    """``points`` budgets evenly spaced from the cost of the first valid step to the last
    (costs default to steps used, 1..T)."""
    T = valid.shape[0]
    costs = torch.arange(1, T + 1, dtype=torch.float64) if costs is None else costs.double()
    kept = costs[valid.bool().cpu()]
    first, last = float(kept.min()), float(kept.max())
    if points < 2 or first == last:
        return [last]
    return [first + (last - first) * i / (points - 1) for i in range(points)]


@dataclass
class Calibration:
    """The rule :func:`calibrate_by_metric` chose, and every candidate's validation numbers."""

    rule: ThresholdRule
    kind: str
    budget: float
    value: float
    mean_cost: float
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def plain(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "score_threshold": self.rule.score_threshold.tolist(),
            "budget": self.budget,
            "validation_value": self.value,
            "validation_mean_cost": self.mean_cost,
            "candidates": self.candidates,
        }


def calibrate_by_metric(
    val_hazards: torch.Tensor,
    val_metric: Callable[[torch.Tensor], float],
    budgets: Sequence[float],
    kinds: Sequence[str] = ("hazard",),
    valid: torch.Tensor | None = None,
    costs: torch.Tensor | None = None,
    lower_is_better: bool = True,
) -> Calibration:
    """The threshold rule with the best validation metric among rules fitted to each budget and
    kind. ``val_metric(stop_index (N,)) -> float`` scores validation stop steps (e.g. NMSE of
    the estimates there); ties go to the cheaper rule."""
    T = val_hazards.shape[1]
    costs = torch.arange(1, T + 1, dtype=torch.float64) if costs is None else costs.double()
    candidates, best = [], None
    for kind in kinds:
        for budget in budgets:
            rule = fit_threshold(val_hazards, budget, costs, kind, valid)
            index = stop_indices(val_hazards, rule, valid)
            value, mean_cost = float(val_metric(index)), float(costs[index.cpu()].mean())
            candidates.append({"kind": kind, "budget": budget, "value": value, "cost": mean_cost})
            sign = 1.0 if lower_is_better else -1.0
            key = (sign * value, mean_cost)
            if best is None or key < best[0]:
                best = (key, Calibration(rule, kind, budget, value, mean_cost))
    best[1].candidates = candidates
    return best[1]


def floored_costs(
    costs: torch.Tensor, decision_costs: torch.Tensor | None, valid: torch.Tensor, floor: int
) -> torch.Tensor:
    """``(T,)`` cumulative cost of stopping at each step under a floor: ``costs`` less the
    decision costs of the valid steps before the floor, which a rule that cannot stop there
    does not spend (:meth:`stopwise.inference.Rule.needs_policy`)."""
    if decision_costs is None or floor == 0:
        return costs
    before = (decision_costs.double().cpu() * valid.double())[:floor].sum()
    return costs - before


def fit_floored_threshold(
    val_hazards: torch.Tensor,
    budget: float,
    val_metric: Callable[[torch.Tensor], float],
    costs: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    lower_is_better: bool = False,
    kind: str = "hazard",
    decision_costs: torch.Tensor | None = None,
) -> tuple[ThresholdRule, int]:
    """The best rule on validation within ``budget`` among "no row stops before step f; from f
    on, stop at the first step whose score (the ``kind`` rule's) reaches a threshold", over every
    valid floor f, each with the threshold that spends the most within the budget (as
    :func:`fit_threshold`) and with −∞ (every row stops at f: fixed depth f).

    The floor at the first valid step with its spending threshold is the plain threshold rule;
    since every fixed depth within the budget is a candidate, the rule chosen is never worse on
    validation than fixed depth, and the stop model's score decides which rows go past the
    floor. ``val_metric(stop_index (N,)) -> float`` scores validation stop steps (ties go to
    the cheaper rule). ``decision_costs (T,)``: the part of each step's cost spent only to
    decide there (features, policy, an exit head), which adaptive inference skips before a floor
    (:func:`floored_costs`). Returns the rule (a per-step threshold, +∞ before the floor) and
    the 0-based floor.
    """
    T = val_hazards.shape[1]
    costs = torch.arange(1, T + 1, dtype=torch.float64) if costs is None else costs.double()
    valid = torch.ones(T, dtype=torch.bool) if valid is None else valid.bool().cpu()
    rule_cls = THRESHOLD_KINDS[kind]
    # The kind's own score at every step (its recurrence over the valid steps), thresholded
    # from the floor on as plain scores.
    scores = rule_scores(val_hazards.detach(), rule_cls(0.0), valid).to(torch.float64)
    sign = 1.0 if lower_is_better else -1.0
    best = None
    for floor in valid.nonzero().flatten().tolist():
        allowed = valid & (torch.arange(T) >= floor)
        floor_costs = floored_costs(costs, decision_costs, valid, floor)
        try:
            spending = fit_threshold(scores, budget, floor_costs, "hazard", allowed)
        except ValueError:  # stopping every row at the floor already costs more than the budget
            continue  # (not break: a later floor may cost less once decisions are saved)
        for threshold in (float(spending.score_threshold), -math.inf):  # −∞: fixed depth
            index = stop_indices(scores, ScoreThreshold(threshold), allowed)
            key = (sign * float(val_metric(index)), float(floor_costs[index.cpu()].mean()))
            if best is None or key < best[0]:
                best = (key, threshold, floor)
    if best is None:
        raise ValueError(f"budget {budget:.6g} is below the cost of the first valid step")
    _, threshold, floor = best
    per_step = torch.full((T,), math.inf, dtype=torch.float64)
    per_step[floor:] = threshold
    return rule_cls(per_step), floor


def budget_sweep(
    val_hazards: torch.Tensor,
    test_hazards: torch.Tensor,
    budgets: Sequence[float],
    test_metric: Callable[[torch.Tensor], dict[str, float]],
    kind: str = "hazard",
    valid: torch.Tensor | None = None,
    costs: torch.Tensor | None = None,
    val_metric: Callable[[torch.Tensor], float] | None = None,
    lower_is_better: bool = False,
    decision_costs: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """The stop model's budget curve: for each budget a threshold fitted on validation
    (mean cost ≤ budget there), applied unchanged to the test hazards.

    ``test_metric(stop_index (N,)) -> {name: value}`` measures the test stop steps. With
    ``val_metric`` (validation stop steps → a number; ``lower_is_better`` says which way), each
    budget's rule is :func:`fit_floored_threshold`'s: the best on validation of a threshold
    after a floor step, so no budget's rule is worse on validation than fixed depth within it
    (costed with ``decision_costs`` saved before the floor, :func:`floored_costs`). Each point: ``budget``, ``score_threshold``,
    ``val_mean_cost``, ``mean_cost``, ``mean_steps``, (with ``val_metric``) ``floor_steps`` —
    the steps every row runs — and the metric's values.
    """
    if kind not in THRESHOLD_KINDS:
        raise ValueError(f"unknown threshold kind {kind!r}; choose one of {list(THRESHOLD_KINDS)}")
    T = test_hazards.shape[1]
    costs = torch.arange(1, T + 1, dtype=torch.float64) if costs is None else costs.double()
    points = []
    valid_cpu = torch.ones(T, dtype=torch.bool) if valid is None else valid.bool().cpu()
    for budget in budgets:
        floor, spent = {}, costs
        if val_metric is None:
            rule = fit_threshold(val_hazards, budget, costs, kind, valid)
        else:
            rule, step = fit_floored_threshold(
                val_hazards, budget, val_metric, costs, valid, lower_is_better, kind,
                decision_costs,
            )  # fmt: skip
            floor = {"floor_steps": step + 1}
            spent = floored_costs(costs, decision_costs, valid_cpu, step)
        val_index = stop_indices(val_hazards, rule, valid).cpu()
        index = stop_indices(test_hazards, rule, valid)
        points.append(
            {
                "budget": float(budget),
                "score_threshold": rule.score_threshold.tolist(),
                "val_mean_cost": float(spent[val_index].mean()),
                "mean_cost": float(spent[index.cpu()].mean()),
                "mean_steps": float((index + 1).double().mean()),
                **floor,
                **test_metric(index),
            }
        )
    return points


def fixed_depth_curve(
    num_rows: int,
    test_metric: Callable[[torch.Tensor], dict[str, float]],
    valid: torch.Tensor,
    costs: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """The same model truncated at each valid depth: every row stops at step t."""
    T = valid.shape[0]
    costs = torch.arange(1, T + 1, dtype=torch.float64) if costs is None else costs.double()
    return [
        {
            "depth": t + 1,
            "mean_cost": float(costs[t]),
            "mean_steps": float(t + 1),
            **test_metric(torch.full((num_rows,), t, dtype=torch.long)),
        }
        for t in range(T)
        if bool(valid[t])
    ]
