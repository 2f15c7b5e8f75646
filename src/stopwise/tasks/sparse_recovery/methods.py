"""How each sparse-recovery method is fitted: ISTA/FISTA tuned on validation, LISTA and ALISTA
by deep supervision, the stop models by L2S stage I (oracle), exit pruning on validation and
stage II (policy). Every training stage is Adam with a cosine decay to ``lr_final`` × its
learning rate, drawing fresh samples from the named stream ``<stage>-batches``.

**ISTA / FISTA tuning.** The search starts from the paper's values (L2S §5.1: ISTA L = 2.7, λ = 0.2 at 20 iterations and
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

from ...contract import JobContext
from ...selection import prune_exits
from ...stoptime import oracle
from ...training import GeneratedBatches, fit_oracle, fit_policy, fit_predictor
from .data import SparseProblem
from .metrics import nmse_db, per_step_squared_errors, step_losses
from .models import FISTA, ISTA, StopPolicy

__all__ = [
    "PAPER_SETTINGS",
    "CLASSICAL",
    "tune",
    "validation_nmse",
    "adam_cosine",
    "fit_deep_supervision",
    "fit_stage1",
    "fit_stop_policy",
]

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


# ---------------------------------------------------------------- training stages


def adam_cosine(parameters, steps: int, lr: float, lr_final: float, weight_decay: float = 0.0):
    """Adam and a cosine decay of its learning rate from ``lr`` to ``lr · lr_final`` over
    ``steps`` updates (``lr_final = 1``: constant, as in the paper)."""
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=steps, eta_min=lr * lr_final
    )
    return optimizer, scheduler


def _batches(problem: SparseProblem, context: JobContext, stage: str, batch: int):
    return GeneratedBatches(problem.sample, batch, context.stream_seed(f"{stage}-batches"))


def fit_deep_supervision(model, problem: SparseProblem, context: JobContext, stage: str, schedule):
    """Train ``model`` on the mean of its layers' losses ℓ_t = ‖x_t − x*‖² (LISTA, ALISTA);
    ``schedule`` has ``steps``, ``batch`` and ``lr``. Returns the model in eval mode."""
    optimizer, scheduler = adam_cosine(
        model.parameters(), schedule.steps, schedule.lr, context.config.lr_final
    )
    fit_predictor(
        model,
        _batches(problem, context, stage, schedule.batch),
        step_losses,
        optimizer,
        schedule.steps,
        settings=context.loop_settings(context.config.log_every),
        stage=stage,
        scheduler=scheduler,
    )
    return model.eval()


def fit_stage1(
    model,
    problem: SparseProblem,
    context: JobContext,
    steps: int,
    batch: int,
    lr: float,
    weight_decay: float,
):
    """L2S stage I: Σ_t q*(t) ℓ_t with q* = softmax_t(−ℓ_t/β) detached (the gradient of
    −β logsumexp(−ℓ/β)), as stage ``stage1``. Returns the model in eval mode."""
    config = context.config
    optimizer, scheduler = adam_cosine(model.parameters(), steps, lr, config.lr_final, weight_decay)
    fit_oracle(
        model,
        _batches(problem, context, "stage1", batch),
        step_losses,
        optimizer,
        steps,
        config.beta,
        settings=context.loop_settings(config.log_every),
        stage="stage1",
        scheduler=scheduler,
    )
    return model.eval()


def fit_stop_policy(model, problem: SparseProblem, context: JobContext, steps: int):
    """Exit pruning on validation, then L2S stage II for the frozen ``model`` (stage ``stage2``).

    Exits whose mean validation oracle mass mean_i q*_i(t) is below ``prune_mass`` are pruned
    (L2S §5.1); the :class:`StopPolicy` then imitates the hard oracle argmin_t ℓ_t (or the soft
    q*, ``stage2.oracle``) on the valid exits. Returns ``(policy in eval mode, valid (T,) bool,
    oracle mass (T,), validation errors (N, T))``.
    """
    config, val = context.config, problem.val
    val_errors = per_step_squared_errors(model, val.y, val.x, config.eval_chunk)
    mass = oracle(val_errors.double(), config.beta).mean(0)
    valid = prune_exits(val_errors, config.beta, config.prune_mass)
    m, n = problem.A.shape
    context.manual_seed("policy-init")
    hidden, summaries = tuple(config.stage2.hidden), config.stage2.summaries
    policy = StopPolicy(m, n, model.max_steps, hidden, summaries).to(problem.A.device)
    optimizer, scheduler = adam_cosine(
        policy.parameters(), steps, config.stage2.lr, config.lr_final
    )
    fit_policy(
        model,
        policy,
        _batches(problem, context, "stage2", config.stage2.batch),
        step_losses,
        optimizer,
        steps,
        config.beta,
        hard=config.stage2.oracle == "hard",
        mask=valid.to(problem.A.device),
        settings=context.loop_settings(config.log_every),
        stage="stage2",
        scheduler=scheduler,
    )
    return policy.eval(), valid, mass, val_errors
