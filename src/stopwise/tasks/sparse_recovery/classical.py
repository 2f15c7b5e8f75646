"""ISTA and FISTA with (L, λ) tuned per iteration budget on the validation set.

The search starts from the paper's values (L2S §5.1: ISTA L = 2.7, λ = 0.2 at 20 iterations and
L = 3, λ = 0.11 at 100; FISTA L = 4, λ = 0.21 at 20 and L = 4.5, λ = 0.05 at 100) and is a small
coordinate search: first λ over ``lambda_factors`` × the start with L fixed, then L over
``L_factors`` × the start with the best λ fixed. The score is the mixed validation NMSE after
exactly ``budget`` iterations; the start is always a candidate, so tuning never does worse on
validation than the paper's values.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .metrics import nmse_db, per_step_squared_errors
from .models import FISTA, ISTA

__all__ = ["PAPER_SETTINGS", "CLASSICAL", "tune", "validation_nmse"]

CLASSICAL = {"ista": ISTA, "fista": FISTA}

# (algorithm, iterations) -> (L, λ), L2S §5.1.
PAPER_SETTINGS: dict[tuple[str, int], tuple[float, float]] = {
    ("ista", 20): (2.7, 0.2),
    ("ista", 100): (3.0, 0.11),
    ("fista", 20): (4.0, 0.21),
    ("fista", 100): (4.5, 0.05),
}


def validation_nmse(
    algorithm: str, A: torch.Tensor, budget: int, L: float, lam: float, y, x
) -> float:
    """Mixed NMSE(dB) of ``algorithm`` after ``budget`` iterations on ``(y, x)``; +inf if it
    diverges (non-finite estimates)."""
    model = CLASSICAL[algorithm](A, budget, L, lam)
    errors = per_step_squared_errors(model, y, x)[:, -1]
    if not bool(torch.isfinite(errors).all()):
        return math.inf
    return nmse_db(errors, (x**2).sum(-1))


def tune(
    algorithm: str,
    A: torch.Tensor,
    budget: int,
    y: torch.Tensor,
    x: torch.Tensor,
    start: tuple[float, float],
    lambda_factors: list[float],
    L_factors: list[float],
) -> dict[str, Any]:
    """Coordinate search for (L, λ) of ``algorithm`` at ``budget`` iterations on validation
    ``(y, x)``. Returns the chosen ``L``, ``lam``, its validation NMSE and every trial."""
    if algorithm not in CLASSICAL:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(CLASSICAL)}")
    trials: dict[tuple[float, float], float] = {}

    def score(L: float, lam: float) -> float:
        key = (round(L, 10), round(lam, 10))
        if key not in trials:
            trials[key] = validation_nmse(algorithm, A, budget, L, lam, y, x)
        return trials[key]

    L0, lam0 = start
    lam_best = min(
        (lam0 * f for f in sorted({1.0, *lambda_factors})), key=lambda lam: score(L0, lam)
    )
    L_best = min((L0 * f for f in sorted({1.0, *L_factors})), key=lambda L: score(L, lam_best))
    return {
        "algorithm": algorithm,
        "budget": budget,
        "L": L_best,
        "lam": lam_best,
        "validation_nmse": score(L_best, lam_best),
        "start": {"L": L0, "lam": lam0, "validation_nmse": score(L0, lam0)},
        "trials": [{"L": L, "lam": lam, "validation_nmse": v} for (L, lam), v in trials.items()],
    }
