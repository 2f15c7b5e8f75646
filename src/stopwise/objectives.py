"""Training objectives for halting and early exit, built on :mod:`stopwise.stoptime`.

Every function takes per-step losses ``ℓ`` of shape ``(B, T)`` (or per-step outputs, for ACT) and
returns a scalar averaged over the batch unless it says otherwise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .stoptime import (
    StopTime,
    _expand_mask,
    _last_valid,
    kl_divergence,
    oracle,
    random_horizon_log_conditional,
    random_horizon_log_prior,
    truncated_geometric_log_prior,
)

__all__ = [
    "l2s_stage1_loss",
    "l2s_stage2_loss",
    "joint_loss",
    "pondernet_loss",
    "ACTHalting",
    "act_halting",
    "act_output",
    "act_loss",
    "random_horizon_bound",
    "weighted_exit_loss",
    "gain_rates",
    "gain_loss",
]


def l2s_stage1_loss(
    losses: torch.Tensor,
    beta: float,
    mask: torch.Tensor | None = None,
    uniform: float = 0.0,
    detach: bool = True,
) -> torch.Tensor:
    """L2S stage I: the predictive model trained under the oracle, Σ_t q*(t) ℓ_t with q* detached.

    Its gradient in ℓ equals that of β·(−logsumexp_t(−ℓ_t/β)) (L2S, Eq. 9): the oracle weights
    ``softmax(−ℓ/β)`` are exactly d/dℓ of that soft-min. ``losses`` is ``(B, T)``.

    ``detach=False`` back-propagates through q* as well (the official DnCNN-stop and SDN code's
    form): the gradient in ℓ_s is then q*_s (1 − (ℓ_s − Σ_t q*_t ℓ_t)/β), which moves weight
    toward the steps that are already best.

    ``uniform`` > 0 (not in the paper) trains on (1 − uniform)·q* + uniform·(1/T over the valid
    steps): a share of deep supervision, which keeps the early steps good outputs of their own
    where q* puts almost no weight on them (what a stop curve needs at its lowest budgets).
    """
    if not 0.0 <= uniform <= 1.0:
        raise ValueError(f"uniform must lie in [0, 1]; got {uniform}")
    weights = oracle(losses.detach() if detach else losses, beta, mask=mask)
    valid = _expand_mask(mask, losses.shape, losses.device)
    if uniform > 0:
        share = valid.to(weights.dtype)
        weights = (1 - uniform) * weights + uniform * share / share.sum(-1, keepdim=True)
    # A step of weight 0 adds nothing (0·inf would be NaN), unless it is a valid step whose
    # loss is NaN: the oracle passes over it, the loss must not (a diverged step stops training).
    ignored = (weights == 0) & ~(valid & torch.isnan(losses))
    return (weights * losses.masked_fill(ignored, 0.0)).sum(-1).mean()


def l2s_stage2_loss(
    stop: StopTime, losses: torch.Tensor, beta: float, hard: bool = False
) -> torch.Tensor:
    """L2S stage II: the policy imitates the oracle (L2S, Eq. 10).

    Soft: forward KL(q* ‖ q_φ), with q* = softmax(−ℓ/β) over the valid steps of ``stop``.
    Hard: cross-entropy −log q_φ(argmin_t ℓ_t). ``losses`` is ``(B, T)`` and is detached here.
    """
    target = oracle(losses.detach(), beta, hard=hard, mask=stop.mask)
    if hard:  # a row whose every loss is NaN (the model diverged) stays NaN, as the soft loss
        nll = -stop.log_prob(target.argmax(dim=-1))
        return nll.masked_fill(target.isnan().any(dim=-1), math.nan).mean()
    return kl_divergence(target.log(), stop.log_probs, stop.mask).mean()


def joint_loss(stop: StopTime, losses: torch.Tensor, beta: float) -> torch.Tensor:
    """The joint β-VAE objective of L2S (Eq. 6): E_{q_φ}[ℓ] − β H(q_φ).

    Minimised over q_φ it is attained at the oracle q*, with value β·(−logsumexp(−ℓ/β)).
    """
    expected = (stop.probs * losses.masked_fill(~stop.mask, 0.0)).sum(-1)
    return (expected - beta * stop.entropy()).mean()


def pondernet_loss(
    stop: StopTime, losses: torch.Tensor, beta: float, prior_p: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PonderNet (Banino et al. 2021, Eq. 4): Σ_t q(t) ℓ_t + β KL(q ‖ p_G(λ_p)).

    The KL runs from the halting distribution q to the geometric prior (that direction), and the
    prior is truncated to the valid steps of ``stop`` and renormalised. Use ``StopTime(...,
    tail="renormalize")`` or the default ``"absorb"`` for PonderNet's two ways to end at step T.
    Returns the loss and its two terms (batch means) for logging.
    """
    log_prior = truncated_geometric_log_prior(
        prior_p, stop.num_steps, mask=stop.mask, dtype=stop.log_probs.dtype
    ).to(stop.log_probs.device)
    reconstruction = (stop.probs * losses.masked_fill(~stop.mask, 0.0)).sum(-1).mean()
    kl = kl_divergence(stop.log_probs, log_prior, stop.mask).mean()
    return reconstruction + beta * kl, {"reconstruction": reconstruction, "kl": kl}


class ACTHalting(NamedTuple):
    """Graves' ACT halting of a batch. All fields are batch-first.

    weights: ``(B, T)`` p_n — h_n before the halting step, the remainder R at it, 0 after.
    steps: ``(B,)`` N(x), the 1-based halting step.
    remainder: ``(B,)`` R(x) = 1 − Σ_{n<N} h_n (differentiable).
    ponder_cost: ``(B,)`` ρ(x) = N(x) + R(x).
    """

    weights: torch.Tensor
    steps: torch.Tensor
    remainder: torch.Tensor
    ponder_cost: torch.Tensor


def act_halting(
    halting_logits: torch.Tensor, eps: float = 0.01, mask: torch.Tensor | None = None
) -> ACTHalting:
    """Adaptive Computation Time halting (Graves 2016, Eqs. 6–11) from ``(B, T)`` logits of h_n.

    N(x) = min{n : Σ_{n'≤n} h_{n'} ≥ 1 − ε}, or the last valid step if the sum never gets there.
    """
    if not 0 <= eps < 1:  # ε ≥ 1 halts every row at once; Graves takes ε small and positive
        raise ValueError(f"ACT needs 0 <= eps < 1; got {eps}")
    h = torch.sigmoid(halting_logits)
    valid = _expand_mask(mask, h.shape, h.device)
    h = h.masked_fill(~valid, 0.0)
    T = h.shape[-1]
    cumulative = torch.cumsum(h, dim=-1)
    reached = (cumulative >= 1 - eps) & valid
    last = _last_valid(valid)
    halt = torch.where(reached.any(-1), reached.int().argmax(-1), last)
    steps = torch.arange(T, device=h.device)
    before = steps < halt.unsqueeze(-1)
    remainder = 1 - (h * before).sum(-1)
    weights = torch.where(before, h, 0.0) + F.one_hot(halt, T) * remainder.unsqueeze(-1)
    ponder_cost = (halt + 1).to(h.dtype) + remainder
    return ACTHalting(weights, halt + 1, remainder, ponder_cost)


def act_output(weights: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """ACT's mean-field output Σ_n p_n y_n for ``weights (B, T)`` and ``outputs (B, T, ...)``."""
    w = weights.reshape(weights.shape + (1,) * (outputs.dim() - 2))
    return (w * outputs).sum(1)


def act_loss(task_loss: torch.Tensor, halting: ACTHalting, tau: float) -> torch.Tensor:
    """ACT objective: task loss of the mean-field output + τ·mean ponder cost (Graves Eq. 13)."""
    return task_loss + tau * halting.ponder_cost.mean()


def random_horizon_bound(
    posterior_logits: torch.Tensor,
    losses: torch.Tensor,
    p: float,
    beta: float = 1.0,
    horizons: torch.Tensor | None = None,
) -> torch.Tensor:
    """Negative bound of Sander (2017) averaged over random horizons, to be minimised.

    For a horizon H (steps 0..H), the posterior is q_H(t) = softmax_{t≤H}(a_t) over the given
    ``posterior_logits`` a ``(B, T)`` (for example cumulative sums of per-step halting logits), and

        L_H = Σ_{t≤H} q_H(t) ℓ_t + β KL(q_H ‖ p(·|H)),   p(t|H) = (1−s)s^t / (1−s^{H+1}),

    a negative evidence bound when ℓ is a negative log-likelihood and β = 1. The result is the
    expectation of L_H over p(H) restricted to H ∈ {0..T−1} and renormalised (exact, when
    ``horizons`` is None), or the mean of L_H over the given ``(B,)`` sampled ``horizons``, an
    unbiased estimate of the same expectation when they are drawn with
    ``sample_random_horizon(p, B, max_horizon=T - 1)``. Horizons outside ``0..T−1`` are an error.
    """
    B, T = losses.shape
    device, dtype = losses.device, losses.dtype
    if horizons is not None:
        horizons = torch.as_tensor(horizons).to(device).long()
        if horizons.shape != (B,):
            raise ValueError(f"horizons must have shape ({B},); got {tuple(horizons.shape)}")
        if bool(((horizons < 0) | (horizons > T - 1)).any()):
            raise ValueError(
                f"horizons must lie in 0..{T - 1} (the steps available); got values in "
                f"{int(horizons.min())}..{int(horizons.max())}. Draw them with "
                f"sample_random_horizon(p, {B}, max_horizon={T - 1})"
            )
    _check_posterior_mass(posterior_logits, horizons)
    t = torch.arange(T, device=device)
    within = t.unsqueeze(0) <= t.unsqueeze(1)  # (H, t): step t exists under horizon H
    a = posterior_logits.unsqueeze(1).masked_fill(~within, -math.inf)  # (B, H, t)
    log_q = a - torch.logsumexp(a, dim=-1, keepdim=True)
    log_cond = torch.stack(
        [
            F.pad(
                random_horizon_log_conditional(p, H, dtype=dtype), (0, T - 1 - H), value=-math.inf
            )
            for H in range(T)
        ]
    ).to(device)  # (H, t): log p(t | H), −inf beyond the horizon
    q = log_q.exp()
    expected = (q * losses.unsqueeze(1).masked_fill(~within, 0.0)).sum(-1)  # (B, H)
    # 0 · log 0 = 0: a step the posterior gives no mass (a logit of −∞) adds nothing
    kl = (q * torch.where(within & (q > 0), log_q - log_cond, 0.0)).sum(-1)  # (B, H)
    per_horizon = expected + beta * kl
    if horizons is not None:
        return per_horizon.gather(1, horizons.view(B, 1)).mean()
    log_w = random_horizon_log_prior(p, torch.arange(T)).to(device=device, dtype=dtype)
    w = torch.softmax(log_w, dim=0)
    return (per_horizon * w).sum(-1).mean()


def _check_posterior_mass(posterior_logits: torch.Tensor, horizons: torch.Tensor | None) -> None:
    """q_H is a softmax over steps 0..H: a row whose logits are all −∞ there has no posterior
    under that horizon (the bound was NaN). Every horizon counts in the exact expectation, so
    there the first logit must not be −∞; with sampled horizons, some logit up to each row's."""
    possible = ~torch.isneginf(posterior_logits)  # a NaN is not caught here: it reaches the loss
    T = possible.shape[1]
    first = torch.where(possible.any(1), possible.int().argmax(1), T)
    last = horizons if horizons is not None else torch.zeros_like(first)
    bad = (first > last).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"posterior_logits of rows {bad[:5]}{' …' if len(bad) > 5 else ''} are −∞ at every "
            "step up to a horizon the bound averages over (every horizon from 0 when horizons is "
            "None), so q_H is not a distribution there; give step 0 a finite logit"
        )


def weighted_exit_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L2W's weighted multi-exit loss: mean over samples of Σ_k w_{ik} ℓ_{ik} (``(B, K)`` each)."""
    if losses.shape != weights.shape:
        raise ValueError(
            f"losses {tuple(losses.shape)} and weights {tuple(weights.shape)} must match"
        )
    return (weights * losses).sum(-1).mean()


def gain_rates(losses: torch.Tensor, costs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` g_t = max over valid t' > t of (ℓ_t − ℓ_t') / (c_t' − c_t): the best decrease
    of the loss per unit of cost that going on from step t can buy (−inf where no valid step
    follows). ``losses (B, T)``, cumulative ``costs (T,)``, ``valid (T,)`` bool.

    The first valid step t with g_t ≤ λ is the first minimiser of ℓ_t + λ c_t over the valid
    steps (the hard cost-aware oracle), for every λ ≥ 0 at once: at the minimiser no later step
    is worth its cost, and at every earlier step the minimiser itself is.
    """
    valid = valid.to(losses.device)
    c = costs.to(losses)
    later = (torch.arange(len(c)).view(-1, 1) < torch.arange(len(c)).view(1, -1)).to(valid)
    later = later & valid.view(1, -1)  # (t, t'): t' > t and t' valid
    span = (c.view(1, -1) - c.view(-1, 1)).clamp_min(1e-30)
    rates = (losses.unsqueeze(2) - losses.unsqueeze(1)) / span  # (B, t, t')
    return rates.masked_fill(~later, -math.inf).amax(-1)


def gain_loss(
    scores: torch.Tensor,
    losses: torch.Tensor,
    costs: torch.Tensor,
    valid: torch.Tensor,
    floor: float,
) -> torch.Tensor:
    """Regression of the policy's score on −log g_t (:func:`gain_rates`, floored at ``floor``),
    Huber in log units, over the valid steps that still have a decision (all but the last valid
    one). ``scores, losses (B, T)``. A score that equals −log g_t makes the rule "stop at the
    first step whose score ≥ −log λ" the hard cost-aware oracle for every λ ≥ ``floor``."""
    rates = gain_rates(losses, costs, valid)
    valid = valid.to(losses.device)
    decided = valid & (valid.flip(0).cumsum(0).flip(0) > 1)  # a valid step follows
    if not bool(decided.any()):  # one valid step: nothing to decide, nothing to regress
        return scores.sum() * 0.0
    target = -torch.log(rates[:, decided].clamp_min(floor))
    return F.smooth_l1_loss(scores[:, decided], target)
