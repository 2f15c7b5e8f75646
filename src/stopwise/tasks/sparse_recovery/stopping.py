"""Exits, stopping rules and their measurement for the stop models (LISTA-stop and its stronger
variant): oracle-mass exit pruning, per-step errors and hazards of a split, rules calibrated on
validation, and real adaptive execution on the test set.

Pruning (L2S §5.1): after stage I the oracle q*(t) = softmax_t(−ℓ_t/β) is averaged over the
validation samples; exits whose mean mass is below a threshold (1e-3) are pruned, giving the
``valid_steps`` mask that stage II and inference use (a pruned step still runs, it just cannot
stop).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...inference import (
    CumulativeThreshold,
    HazardThreshold,
    fit_threshold,
    hazard_trajectory,
    run_adaptive,
    stop_indices,
)
from ...stoptime import oracle
from .data import SparseBatch
from .metrics import error_columns, nmse_columns, nmse_db

__all__ = [
    "oracle_mass",
    "prune_exits",
    "split_hazards",
    "errors_at",
    "budget_grid",
    "calibrate_by_nmse",
    "tradeoff_curve",
    "evaluate_rule",
    "oracle_stop",
    "RULE_KINDS",
]

RULE_KINDS = {"hazard": HazardThreshold, "cumulative": CumulativeThreshold}


def oracle_mass(step_errors: torch.Tensor, beta: float) -> torch.Tensor:
    """``(T,)`` mean over samples of the oracle q*(t) = softmax_t(−ℓ_t/β), ℓ = ``step_errors (B, T)``."""
    return oracle(step_errors.double(), beta).mean(0)


def prune_exits(mass: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(T,)`` bool mask of the exits whose mean oracle mass is at least ``threshold``.

    If no exit reaches it, the exit of the largest mass is kept (a model needs one exit)."""
    valid = mass >= threshold
    if not bool(valid.any()):
        valid[int(mass.argmax())] = True
    return valid


@torch.no_grad()
def split_hazards(model, policy, y: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """``(B, T)`` hazard logits of ``policy`` at every step of ``model`` on ``y``, in chunks."""
    return torch.cat(
        [hazard_trajectory(model, policy, y[i : i + chunk]) for i in range(0, y.shape[0], chunk)]
    )


def errors_at(step_errors: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ‖x_{index} − x*‖² picked from per-step errors ``(B, T)`` at 0-based ``index (B,)``."""
    return step_errors.gather(1, index.long().view(-1, 1)).squeeze(1)


def budget_grid(valid: torch.Tensor, points: int) -> list[float]:
    """``points`` mean-step budgets from the first valid exit to the last, evenly spaced."""
    steps = valid.nonzero().flatten() + 1
    first, last = float(steps.min()), float(steps.max())
    if points < 2 or first == last:
        return [last]
    return [first + (last - first) * i / (points - 1) for i in range(points)]


def _selected_nmse(step_errors, energies, hazards, rule, valid) -> tuple[float, float]:
    index = stop_indices(hazards, rule, valid)
    return nmse_db(errors_at(step_errors, index), energies), float((index + 1).double().mean())


def calibrate_by_nmse(
    val_errors: torch.Tensor,
    val_energies: torch.Tensor,
    val_hazards: torch.Tensor,
    valid: torch.Tensor,
    kind: str,
    points: int,
) -> dict[str, Any]:
    """Choose a threshold rule on validation: for each budget of :func:`budget_grid`, the rule of
    that mean depth (:func:`~stopwise.inference.fit_threshold`); keep the one of least validation
    NMSE (ties: fewer steps). Returns the rule and every candidate's validation numbers."""
    candidates = []
    for budget in budget_grid(valid, points):
        rule = fit_threshold(val_hazards, budget, kind=kind, valid_steps=valid)
        nmse, steps = _selected_nmse(val_errors, val_energies, val_hazards, rule, valid)
        candidates.append({"budget": budget, "rule": rule, "nmse": nmse, "mean_steps": steps})
    best = min(candidates, key=lambda c: (c["nmse"], c["mean_steps"]))
    return {
        "rule": best["rule"],
        "kind": kind,
        "score_threshold": float(best["rule"].score_threshold),
        "validation_nmse": best["nmse"],
        "validation_steps": best["mean_steps"],
        "candidates": [{k: v for k, v in c.items() if k != "rule"} for c in candidates],
    }


def tradeoff_curve(
    val_hazards: torch.Tensor,
    test_errors: torch.Tensor,
    test_energies: torch.Tensor,
    test_hazards: torch.Tensor,
    valid: torch.Tensor,
    kind: str,
    points: int,
) -> list[dict[str, float]]:
    """Test NMSE against test mean steps for rules calibrated on validation to each budget."""
    curve = []
    for budget in budget_grid(valid, points):
        rule = fit_threshold(val_hazards, budget, kind=kind, valid_steps=valid)
        nmse, steps = _selected_nmse(test_errors, test_energies, test_hazards, rule, valid)
        curve.append({"budget": budget, "nmse": nmse, "mean_steps": steps})
    return curve


@torch.no_grad()
def evaluate_rule(
    model,
    policy,
    split: SparseBatch,
    rule,
    valid: torch.Tensor,
    snrs: list[float],
    mode: str = "shrink",
    step_costs: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Run ``model`` with ``policy`` and ``rule`` on ``split`` through
    :func:`~stopwise.inference.run_adaptive` (``mode``) and measure NMSE per column, steps
    (overall and per SNR) and cost. Returns numbers plus the ``stop_index`` tensor."""
    result = run_adaptive(model, policy, split.y, rule, mode, valid, step_costs)
    steps = result.steps_used.double()
    per_snr_steps = {f"{s:g}dB": float(steps[split.snr == s].mean()) for s in snrs}
    return {
        **nmse_columns(result.predictions, split.x, split.snr, snrs),
        "mean_steps": float(steps.mean()),
        "mean_steps_per_snr": per_snr_steps,
        "mean_cost": float(result.cost.double().mean()),
        "stop_index": result.stop_index,
    }


def oracle_stop(
    test_errors: torch.Tensor,
    test_energies: torch.Tensor,
    snr: torch.Tensor,
    snrs: list[float],
    valid: torch.Tensor,
) -> dict[str, Any]:
    """The best valid exit in hindsight per sample (needs x*): the bound a policy can approach."""
    masked = test_errors.masked_fill(~valid.to(test_errors.device), math.inf)
    index = masked.argmin(dim=1)
    columns = error_columns(errors_at(test_errors, index), test_energies, snr, snrs)
    steps = (index + 1).double()
    return {
        **columns,
        "mean_steps": float(steps.mean()),
        "mean_steps_per_snr": {f"{s:g}dB": float(steps[snr == s].mean()) for s in snrs},
        "stop_index": index,
    }
