"""How each sparse-recovery method is fitted: ISTA/FISTA tuned on validation, LISTA and ALISTA
by deep supervision, the stop models by L2S stage I (oracle), exit pruning on validation and
stage II (policy). Every training stage is Adam with a cosine decay to ``lr_final`` × its
learning rate, drawing fresh samples from the named stream ``<stage>-batches``.

**ISTA / FISTA tuning.** The search starts from the paper's values (:data:`PAPER_SETTINGS`)
and is a small coordinate search: first λ over ``lambda_factors`` × the start with L fixed, then
L over ``L_factors`` × the start with the best λ fixed. The score is the mixed validation NMSE
after exactly ``budget`` iterations; the start is always a candidate, so tuning never does worse
on validation than the paper's values.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from itertools import product
from operator import itemgetter
from typing import Any

import torch

from ...contract import JobContext
from ...inference import fit_threshold, in_chunks, stop_indices
from ...selection import budget_grid, prune_exits
from ...steps import StepModel, unroll
from ...stoptime import oracle
from ...training import (
    EpochBatches,
    GeneratedBatches,
    fit_gain_head,
    fit_oracle,
    fit_policy,
    fit_predictor,
    policy_hazards,
)
from .data import SparseProblem
from .metrics import errors_at, fixed_depth_hull, nmse_db, per_step_squared_errors, step_losses
from .models import FISTA, ISTA, StopPolicy

__all__ = [
    "PAPER_SETTINGS",
    "CLASSICAL",
    "tune",
    "validation_nmse",
    "adam_cosine",
    "fit_layers",
    "Trajectories",
    "trajectories",
    "Replay",
    "replayed_losses",
    "Candidate",
    "candidates",
    "fit_candidate",
    "validation_margins",
    "Fitted",
    "StopPolicies",
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
    diverges (:func:`nmse_db` of non-finite errors)."""
    model = CLASSICAL[algorithm](A, budget, L, lam)
    return nmse_db(per_step_squared_errors(model, y, x)[:, -1], (x**2).sum(-1))


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


def fit_layers(
    model,
    problem: SparseProblem,
    context: JobContext,
    stage: str,
    steps: int,
    batch: int,
    lr: float,
    weight_decay: float = 0.0,
):
    """Train a step model's layers as training stage ``stage``, in eval mode after. Stage
    ``"stage1"`` is L2S stage I (:func:`~stopwise.training.fit_oracle`, ``stage1_uniform`` mixing
    in deep supervision's uniform weights); any other stage is deep supervision, the mean of the
    layers' losses ℓ_t = ‖x_t − x*‖² (LISTA, ALISTA)."""
    config = context.config
    optimizer, scheduler = adam_cosine(model.parameters(), steps, lr, config.lr_final, weight_decay)
    batches = GeneratedBatches(problem.sample, batch, context.stream_seed(f"{stage}-batches"))
    args = (model, batches, step_losses, optimizer, steps)
    settings = context.loop_settings(config.log_every)
    loop = {"settings": settings, "stage": stage, "scheduler": scheduler}
    if stage == "stage1":
        fit_oracle(*args, config.beta, uniform=config.stage1_uniform, **loop)
    else:
        fit_predictor(*args, **loop)
    return model.eval()


# ---------------------------------------------------------------- stage II


@dataclass
class Trajectories:
    """A frozen step model's per-step policy features ``(N, T, F)`` and losses ℓ_t ``(N, T)``."""

    features: torch.Tensor
    losses: torch.Tensor


def trajectories(model, y: torch.Tensor, x: torch.Tensor, chunk: int) -> Trajectories:
    """The trajectories of ``model`` on measurements ``y (N, m)`` with signals ``x (N, n)``."""

    def run(rows):
        y_rows, x_rows = rows
        trajectory = unroll(model, y_rows, with_features=True)
        return trajectory.features, step_losses(trajectory.predictions, x_rows)

    return Trajectories(*in_chunks(run, (y, x), chunk))


class Replay(StepModel):
    """Cached :class:`Trajectories` replayed as a step model on pool row indices ``(B,)``: the
    prediction after step t is the row's loss ℓ_t, so :func:`~stopwise.training.fit_policy`
    (with :func:`replayed_losses` as the loss) trains on exactly what the frozen model computes,
    without recomputing it for every candidate policy."""

    def __init__(self, pool: Trajectories):
        super().__init__()
        self.pool, self.max_steps = pool, pool.losses.shape[1]

    def start(self, rows):
        return rows

    def advance(self, state, t):
        return state

    def predict(self, state, t):
        return self.pool.losses[state, t]

    def features(self, state, t):
        return self.pool.features[state, t]


def replayed_losses(predictions: torch.Tensor, targets) -> torch.Tensor:
    """The loss of :class:`Replay`: its predictions ``(B, T)`` are the losses."""
    return predictions


@dataclass(frozen=True)
class Candidate:
    """One stage-II policy setting: the objective (``"l2s"``: imitate the (cost-aware) oracle,
    L2S stage II with ``step_penalty = penalty · c_t``; ``"gain"``:
    :func:`stopwise.objectives.gain_loss`), its penalty λ, the hidden width and the number of
    Adam updates. ``published``: L2S as published (λ = 0, exits pruned), the policy of the
    *sampled* row."""

    objective: str
    penalty: float
    hidden: int
    steps: int

    @property
    def name(self) -> str:
        penalty = f"-lam{self.penalty:g}" if self.objective == "l2s" else ""
        return f"{self.objective}{penalty}-h{self.hidden}-n{self.steps}"

    @property
    def published(self) -> bool:
        return self.objective == "l2s" and self.penalty == 0.0

    def plain(self) -> dict[str, Any]:
        return {"name": self.name, **vars(self)}


def candidates(stage2) -> list[Candidate]:
    """Every stage-II setting of config group ``stage2`` that validation chooses among; the
    first is L2S as published (λ = 0) at the first hidden width and length."""
    grid = (
        Candidate(objective, penalty, hidden, steps)
        for steps, hidden, objective in product(stage2.steps, stage2.hidden, stage2.objectives)
        for penalty in (stage2.penalties if objective == "l2s" else [0.0])
    )
    published = Candidate("l2s", 0.0, stage2.hidden[0], stage2.steps[0])
    return list(dict.fromkeys([published, *grid]))  # without repeats, in order


def fit_candidate(
    candidate: Candidate, pool: Trajectories, valid: torch.Tensor, context: JobContext
) -> StopPolicy:
    """Stage II of ``candidate`` on the cached ``pool`` (exits ``valid``), as training stage
    ``stage2-<name>`` (resumable)."""
    config, s2 = context.config, context.config.stage2
    T, F_ = pool.losses.shape[1], pool.features.shape[2]
    context.manual_seed("policy-init")
    init_bias = -3.0 if candidate.objective == "l2s" else 0.0
    policy = StopPolicy(F_, T, (candidate.hidden,), init_bias).to(pool.losses.device)
    policy.standardise(pool.features)
    optimizer, scheduler = adam_cosine(policy.parameters(), candidate.steps, s2.lr, config.lr_final)
    rows = torch.arange(pool.losses.shape[0])
    batches = EpochBatches((rows, rows), s2.batch, context.stream_seed("stage2-batches"))
    costs = torch.arange(1, T + 1, dtype=pool.losses.dtype, device=pool.losses.device)
    loop = {  # what both objectives' training loops share
        "mask": valid.to(pool.losses.device),
        "settings": context.loop_settings(config.log_every),
        "stage": f"stage2-{candidate.name}",
        "scheduler": scheduler,
    }
    if candidate.objective == "l2s":
        hard, penalty = s2.oracle == "hard", candidate.penalty * costs
        args = (Replay(pool), policy, batches, replayed_losses, optimizer, candidate.steps)
        fit_policy(*args, config.beta, hard=hard, step_penalty=penalty, **loop)
    else:
        args = (policy, pool.features, pool.losses, lambda step: batches(step)[0], optimizer)
        fit_gain_head(*args, candidate.steps, costs=costs, floor=s2.gain_floor, **loop)
    return policy.eval()


def validation_margins(
    val_scores: torch.Tensor,
    val_errors: torch.Tensor,
    energies: torch.Tensor,
    budgets: list[float],
    kind: str,
    valid: torch.Tensor,
) -> list[dict[str, float]]:
    """The stop curve on validation (thresholds fitted and measured on the same split) against
    the same model at fixed depth (:func:`fixed_depth_hull`): per budget the mean steps, both
    NMSEs (dB) and the margin (negative: the stop curve is better). Budgets the policy cannot
    meet are skipped."""
    fixed = [nmse_db(errors, energies) for errors in val_errors.T]
    points = []
    for budget in budgets:
        try:
            rule = fit_threshold(val_scores, budget, None, kind, valid)
        except ValueError:  # below the first valid exit
            continue
        index = stop_indices(val_scores, rule, valid)
        steps = float((index + 1).double().mean())
        value = nmse_db(errors_at(val_errors, index), energies)
        hull = fixed_depth_hull(fixed, steps)
        points.append(
            {
                "budget": budget,
                "mean_steps": steps,
                "nmse": value,
                "hull": hull,
                "margin": value - hull,
            }
        )
    return points


@dataclass
class Fitted:
    """One stage-II policy chosen on validation: its setting, threshold kind, exits ``valid``
    ``(T,)`` and scores on validation ``(N, T)``."""

    candidate: Candidate
    policy: StopPolicy
    kind: str
    valid: torch.Tensor
    scores: torch.Tensor


@dataclass
class StopPolicies:
    """Stage II's outcome for one stop model, everything chosen on validation: ``published``,
    L2S as published (exits pruned; the λ = 0 candidate of least mean validation margin), the
    policy of the *sampled* row; ``chosen``, the cost-aware candidate of least mean validation
    margin over fixed depth, the policy of the threshold row and the budget curve. ``val``: the
    model's validation trajectories; ``mass``: mean oracle mass per exit; ``selection``: every
    candidate's validation numbers."""

    published: Fitted
    chosen: Fitted
    val: Trajectories
    mass: torch.Tensor
    selection: list[dict[str, Any]]


def fit_stop_policy(model, problem: SparseProblem, context: JobContext) -> StopPolicies:
    """Exit pruning on validation, stage II of every :func:`candidates` setting on one cached
    pool of fresh training samples, and the choice among them on validation.

    Exits whose mean validation oracle mass mean_i q*_i(t) is below ``prune_mass`` are pruned for
    the published L2S policy (L2S §5.1); the other candidates may stop at every exit. Each
    candidate is scored by the mean margin of its validation stop curve over the same model at
    fixed depth (:func:`validation_margins`, over ``budget_points`` budgets, with each threshold
    kind its objective allows) and the least wins.
    """
    config, val, chunk = context.config, problem.val, context.config.eval_chunk
    val_traj = trajectories(model, val.y, val.x, chunk)
    energies = (val.x**2).sum(-1)
    mass = oracle(val_traj.losses.double(), config.beta).mean(0)
    pruned = prune_exits(val_traj.losses, config.beta, config.prune_mass)
    every = torch.ones(model.max_steps, dtype=torch.bool)
    pool_y, pool_x = problem.sample(config.stage2.pool, context.generator("stage2-pool"))
    pool = trajectories(model, pool_y, pool_x, chunk)
    l2s_kinds = (
        ("cumulative", "hazard") if config.threshold_rule == "best" else (config.threshold_rule,)
    )
    budgets = budget_grid(every, config.budget_points)
    selection, fitted = [], {}
    for candidate in candidates(config.stage2):
        valid = pruned if candidate.published else every
        policy = fit_candidate(candidate, pool, valid, context)
        with torch.no_grad():
            scores = policy_hazards(policy, val_traj.features)
        kinds = l2s_kinds if candidate.objective == "l2s" else ("hazard",)
        for kind in kinds:
            points = validation_margins(scores, val_traj.losses, energies, budgets, kind, valid)
            margins = [p["margin"] for p in points]
            selection.append(
                {
                    **candidate.plain(),
                    "kind": kind,
                    "published": candidate.published,
                    "mean_margin": statistics.fmean(margins),
                    "worst_margin": max(margins),
                    "points": points,
                }
            )
        fitted[candidate.name] = (candidate, policy, valid, scores)

    def least_margin(entries) -> Fitted:
        best = min(entries, key=itemgetter("mean_margin"))
        candidate, policy, valid, scores = fitted[best["name"]]
        return Fitted(candidate, policy, best["kind"], valid, scores)

    published = least_margin(s for s in selection if s["published"])
    others = [s for s in selection if not s["published"]]
    chosen = least_margin(others) if others else published
    return StopPolicies(published, chosen, val_traj, mass, selection)
