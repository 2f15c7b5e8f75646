"""Measures of the learned-optimizers task, shared by the experiment and the report.

The *gap* of a function at θ is its suboptimality f(θ) − f(θ̂) when the family knows its optimum
(regression, quadratics) and the loss itself otherwise (the MLP's training loss); see
:func:`~.data.suboptimality`. Logarithms of gaps are floored at :data:`GAP_FLOOR`.
Every stop rule here is a threshold on a per-step score (``ScoreThreshold``), so one evaluation
serves the hand-designed rules, the ACT optimizer and the L2S policy alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ...inference import Rule, ScoreThreshold, stop_indices
from ...selection import (
    budget_grid,
    budget_sweep,
    fixed_depth_curve,
    floored_rules,
    point_rule,
    rule_record,
)
from ...stats import spearman
from ...steps import index_state, state_batch_size, unroll
from .data import FunctionFamily, full_loss, suboptimality
from .models import OptimizerRun

__all__ = [
    "GAP_FLOOR",
    "log10_gap",
    "summary",
    "StopData",
    "stop_data",
    "StopEvaluation",
    "evaluate_stop",
    "oracle_tradeoff",
    "fixed_depth_tradeoff",
    "finite_or_none",
    "diverged_as_large",
    "DIVERGED",
]

# Below this a regression gap is the rounding of θ̂ itself: the normal equations' solution is
# exact to about κ·1e-16 (κ ≤ 300 for the default input ranges), so a gap under
# (β/2)·λ_min·(κ·1e-16)² ≈ 1e-28 says nothing. (Before 2026-12-04 gaps were f(θ) − f(θ̂),
# rounding noise below ~1e-16·|f|, and the floor was 1e-15.)
GAP_FLOOR = 1e-25


def finite_or_none(value: float) -> float | None:
    """``value``, or None when it is NaN or infinite (JSON records hold no NaN)."""
    return value if math.isfinite(value) else None


DIVERGED = 1e30


def diverged_as_large(losses: torch.Tensor) -> torch.Tensor:
    """Losses with NaN and values beyond :data:`DIVERGED` (a diverged run) set to DIVERGED, so
    means and choices stay finite and comparable."""
    return losses.nan_to_num(nan=DIVERGED, posinf=DIVERGED).clamp_max(DIVERGED)


def log10_gap(gap: torch.Tensor) -> torch.Tensor:
    """log10 of gaps floored at :data:`GAP_FLOOR`; a diverged run (NaN, inf) counts as
    log10 DIVERGED = 30."""
    return torch.log10(diverged_as_large(gap.double()).clamp_min(GAP_FLOOR))


def summary(values: torch.Tensor) -> dict[str, float]:
    """Mean, sd, n and the normal 95% interval of the mean over rows (e.g. 1,000 functions)."""
    values = values.double()
    n = values.numel()
    mean = float(values.mean())
    sd = float(values.std()) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "lo": mean - half, "hi": mean + half}


@dataclass
class StopData:
    """One split's dense trajectory of an optimizer with a stop score.

    losses: ``(n, T)`` full loss f(θ_{t+1}) after each step; gap: ``(n, T)`` its suboptimality;
    scores: ``(n, T)`` the stop score after each step (a rule stops at the first score ≥ its
    threshold); difficulty: ``{name: (n,)}``.
    """

    losses: torch.Tensor
    gap: torch.Tensor
    scores: torch.Tensor
    difficulty: dict[str, torch.Tensor]

    def at(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-function values at 0-based stop steps ``index (n,)``."""
        rows = index.view(-1, 1)
        loss = self.losses.gather(1, rows).squeeze(1)
        gap = self.gap.gather(1, rows).squeeze(1)
        return {
            "steps": (index + 1).double(),
            "nll": loss.double(),
            "gap": gap.double(),
            "log10_gap": log10_gap(gap),
            "regret": (loss - self.losses.min(dim=1).values).double(),
        }

    def metric(self, index: torch.Tensor) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in self.at(index).items() if k != "steps"}


@torch.no_grad()
def stop_data(
    family: FunctionFamily,
    run: OptimizerRun,
    functions: Any,
    score: Callable[[torch.Tensor, int], torch.Tensor],
    chunk: int = 1000,
) -> tuple[StopData, torch.Tensor]:
    """Run ``run`` densely on ``functions`` (``chunk`` rows at a time) and score every step with
    ``score(features (n, F), t) -> (n,)``. Returns the :class:`StopData` and the features
    ``(n, T, F)``."""
    losses, gap_parts, features = [], [], []
    n = state_batch_size(functions)
    for lo in range(0, n, chunk):
        part = index_state(functions, slice(lo, lo + chunk))
        trajectory = unroll(run, part, with_features=True)
        m, T, D = trajectory.predictions.shape
        repeated = index_state(part, torch.arange(m).repeat_interleave(T))
        flat_theta = trajectory.predictions.reshape(m * T, D)
        losses.append(full_loss(family, flat_theta, repeated).view(m, T))
        gap_parts.append(suboptimality(family, flat_theta, repeated).view(m, T))
        features.append(trajectory.features)
    losses_all, features_all = diverged_as_large(torch.cat(losses)), torch.cat(features)
    difficulty = family.difficulty(functions) if hasattr(family, "difficulty") else {}
    gap = diverged_as_large(torch.cat(gap_parts))
    data = StopData(losses_all, gap, torch.empty(0), difficulty)
    return rescored(data, features_all, score), features_all


def rescored(
    data: StopData, features: torch.Tensor, score: Callable[[torch.Tensor, int], torch.Tensor]
) -> StopData:
    """``data`` with every step scored by ``score`` from its ``features (n, T, F)`` (another
    stop rule on the same runs: no optimizer step is rerun)."""
    scores = torch.stack([score(features[:, t], t) for t in range(features.shape[1])], dim=1)
    return replace(data, scores=scores.detach())


@dataclass
class StopEvaluation:
    """What :func:`evaluate_stop` needs besides the two splits."""

    step_costs: list[float]  # λ of the trade-off f + λ·steps
    curve_points: int
    reference_val_nll: float  # the LSTM optimizer's mean NLL at its horizon (validation)
    reference_test_nll: float  # and on the test functions
    nll_tolerance: float


def _reaches(nll: float, reference: float, tolerance: float) -> bool:
    return nll <= reference + tolerance * abs(reference)


def evaluate_stop(
    val: StopData,
    test: StopData,
    candidates: dict[str, float],
    natural: str | None,
    setting: StopEvaluation,
) -> dict[str, Any]:
    """Every number of one stop rule family (one score, thresholds chosen on validation).

    ``candidates`` names thresholds on the score (for the trade-off and the "reaches" row the
    choice is among them, on validation); ``natural`` names the rule's own threshold (the ACT
    optimizer's Δq_t ≤ 0, L2S's λ_t ≥ 1/2) or None. Returns the natural rule's test numbers,
    the budget curve (thresholds fitted on validation for mean-step budgets) beside the same
    optimizer at every fixed depth, the trade-off per λ, the cheapest candidate that reaches the
    reference NLL on validation, and Spearman correlations of the stop step with difficulty.
    """
    T = test.losses.shape[1]
    valid = torch.ones(T, dtype=torch.bool)
    budgets = budget_grid(valid, setting.curve_points)
    curve = budget_sweep(
        val.scores, test.scores, budgets, test.metric,
        val_metric=lambda index: val.metric(index)["log10_gap"], lower_is_better=True,
    )  # fmt: skip
    options: dict[str, Rule] = {name: ScoreThreshold(thr) for name, thr in candidates.items()}
    for point in curve:  # floored: a threshold per step (or a mix of two)
        options[f"budget {point['budget']:.4g}"] = point_rule(point)
    # Floored rules of every cost, so that the trade-off and the cheapest rule reaching the
    # reference are chosen from more than the curve's few budgets (the same for every rule).
    for k, rule in enumerate(floored_rules(val.scores)):
        options[f"floored {k}"] = rule

    def index(split: StopData, rule: Rule) -> torch.Tensor:
        return stop_indices(split.scores, rule)

    val_at = {name: val.at(index(val, thr)) for name, thr in options.items()}
    record: dict[str, Any] = {
        "curve": curve,
        "fixed_depth": fixed_depth_curve(test.losses.shape[0], test.metric, valid),
    }

    def test_row(name: str) -> dict[str, Any]:
        at = test.at(index(test, options[name]))
        return {
            "rule": name,
            **rule_record(options[name]),
            **{k: float(v.mean()) for k, v in at.items()},
            "log10_gap_interval": summary(at["log10_gap"]),
            "reaches_reference": _reaches(
                float(at["nll"].mean()), setting.reference_test_nll, setting.nll_tolerance
            ),
            "step_saving": 1.0 - float(at["steps"].mean()) / T,
            "spearman": {
                name: finite_or_none(spearman(at["steps"].numpy(), values.numpy()))
                for name, values in test.difficulty.items()
            },
        }

    if natural is not None:
        record["natural"] = test_row(natural)
    reaching = [
        name
        for name in options
        if _reaches(
            float(val_at[name]["nll"].mean()), setting.reference_val_nll, setting.nll_tolerance
        )
    ]
    if reaching:
        cheapest = min(reaching, key=lambda name: float(val_at[name]["steps"].mean()))
        record["reach"] = {
            **test_row(cheapest),
            "val_steps": float(val_at[cheapest]["steps"].mean()),
        }
    else:
        record["reach"] = None
    tradeoff = []
    for cost in setting.step_costs:

        def value(at: dict[str, torch.Tensor], cost=cost) -> torch.Tensor:
            return at["gap"] + cost * at["steps"]

        chosen = min(options, key=lambda name: float(value(val_at[name]).mean()))
        at = test.at(index(test, options[chosen]))
        tradeoff.append(
            {
                "step_cost": cost,
                "rule": chosen,
                "val_value": float(value(val_at[chosen]).mean()),
                "value": summary(value(at)),
                "mean_steps": float(at["steps"].mean()),
                "gap": float(at["gap"].mean()),
            }
        )
    record["tradeoff"] = tradeoff
    record["fixed_tradeoff"] = fixed_depth_tradeoff(val, test, setting.step_costs)
    return record


def fixed_depth_tradeoff(
    val: StopData, test: StopData, step_costs: list[float]
) -> list[dict[str, Any]]:
    """Per λ, the same optimizer run for one fixed number of steps for every function, the
    number chosen on validation (min mean gap + λ·steps), measured on test."""
    steps = torch.arange(1, val.gap.shape[1] + 1, dtype=torch.float64)
    out = []
    for cost in step_costs:
        depth = int((val.gap.double().mean(0) + cost * steps).argmin())
        values = test.gap[:, depth].double() + cost * (depth + 1)
        out.append(
            {
                "step_cost": cost,
                "depth": depth + 1,
                "value": summary(values),
                "gap": float(test.gap[:, depth].double().mean()),
            }
        )
    return out


def oracle_tradeoff(test: StopData, step_costs: list[float]) -> list[dict[str, Any]]:
    """Per λ, each test function stopped at argmin_t gap_t + λ(t + 1) (needs the optimum: an
    upper bound on any stop rule of this optimizer)."""
    out = []
    steps = torch.arange(1, test.gap.shape[1] + 1, dtype=torch.float64)
    for cost in step_costs:
        values = test.gap.double() + cost * steps
        best = values.min(dim=1)
        steps_used = (best.indices + 1).double()
        out.append(
            {
                "step_cost": cost,
                "value": summary(best.values),
                "mean_steps": float(steps_used.mean()),
                "spearman": {
                    name: finite_or_none(spearman(steps_used.numpy(), measure.numpy()))
                    for name, measure in test.difficulty.items()
                },
            }
        )
    return out
