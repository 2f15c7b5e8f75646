"""The halting methods compared on parity: how each one trains the shared step model and how each
one stops at inference.

Every method trains a :class:`~.models.ParityGRU` with the same Adam settings, batch size and number
of updates; per-step losses are ``ℓ_t = BCE(y_t, target)``. The halting head's stop logit ``z_t``
is read as:

* ``fixed`` — unused; the model runs exactly ``depth`` steps and is trained on the last one.
* ``act`` — Graves' halting unit h_t = σ(z_t); loss BCE(Σ_t p_t y_t) + τ·(N + R) (ACT Eq. 13).
* ``pondernet`` / ``pondernet-last`` — the hazard λ_t = σ(z_t); loss Σ_t q(t) ℓ_t +
  β KL(q ‖ truncated geometric(λ_p)) (PonderNet Eq. 4), with q renormalised over the N steps
  (``pondernet``) or the last step taking the remaining mass (``pondernet-last``).
* ``l2s`` — stage I trains the model under the oracle softmax(−ℓ/β); stage II freezes it and fits
  fresh halting heads, one per ``l2s_heads``: as hazards to the hard and the soft oracle (L2S
  Eqs. 8–10), or (``gain``, not in the paper) as a score regressed on the gain rate −log g_t
  (:func:`~stopwise.training.fit_gain_policy`), on batches of its own random stream.
* ``thesis`` — z_t sets the posterior logits a_t = −Σ_{τ<t} z_τ; loss: the random-horizon bound of
  Sander (2017) with prior parameter p and KL weight β, averaged exactly over horizons.

Inference rules (:data:`RULES`; every causal one but ``fixed`` runs through
:func:`~stopwise.inference.run_adaptive`):

* ``greedy`` (thesis, causal): stop at the first t with z_t ≥ 0, i.e. a_{t+1} ≤ a_t — the first
  local maximum of the posterior logits, found without looking past the current step.
* ``mode`` (thesis, NOT causal): run every step and stop at argmax_t a_t, the mode of the posterior
  at the largest horizon. It equals ``greedy`` whenever a_t is unimodal.
* ``sample-q`` / ``median-q`` (``pondernet``, NOT causal): the distribution renormalised PonderNet
  is trained on, q(t) = λ_t ∏_{τ<t}(1 − λ_τ) / (1 − ∏_{τ≤N}(1 − λ_τ)); its normaliser needs every
  λ up to N, so these rules run all N steps, then sample q (inverse CDF of one uniform per input)
  or take its median (first t with Σ_{τ≤t} q(τ) ≥ 1/2). ``sample`` and ``median`` follow the
  unnormalised process instead, which for ``pondernet-last`` is exactly the trained distribution.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ...contract import JobContext
from ...inference import CumulativeThreshold, HazardThreshold, SampleRule, run_adaptive, run_fixed
from ...objectives import act_halting, act_loss, act_output, pondernet_loss, random_horizon_bound
from ...steps import unroll
from ...stoptime import StopTime
from ...training import (
    GeneratedBatches,
    fit_gain_policy,
    fit_oracle,
    fit_policy,
    fit_predictor,
    optimize,
)
from .data import sample_parity
from .models import ACTRule, HaltingHead, MeanFieldACT, ParityGRU, posterior_logits, step_losses

__all__ = [
    "Method",
    "METHODS",
    "RULES",
    "train_method",
    "infer",
    "act_halting_steps",
    "renormalised_stop",
    "unroll_with_head",
]


@dataclass(frozen=True)
class Method:
    """A halting method: its table label, the config key of its swept hyperparameter (a list)
    and that hyperparameter's symbol, its inference rules (the first is the main one), the config
    keys of its own that its numbers depend on (besides those every method reads) and the config
    key of its grid of Adam learning rates (a list; the best value is chosen on validation with
    the hyperparameter)."""

    name: str
    label: str
    hyperparameter: str
    symbol: str
    rules: tuple[str, ...]
    keys: tuple[str, ...] = ()
    learning_rates: str = "lr"

    def variant_label(self, variant: str) -> str:
        return f"{self.label} ({variant})" if variant else self.label


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("fixed", "Fixed depth", "fixed_depth", "depth", ("fixed",)),
        Method("act", "ACT", "act_tau", "τ", ("act",),
               keys=("max_steps", "act_eps", "act_halting_bias"), learning_rates="act_lr"),
        Method("pondernet", "PonderNet (renormalise)", "pondernet_lambda_p", "λ_p",
               ("sample", "median", "sample-q", "median-q"), keys=("max_steps", "pondernet_beta")),
        Method("pondernet-last", "PonderNet (halt at last)", "pondernet_lambda_p", "λ_p",
               ("sample", "median"), keys=("max_steps", "pondernet_beta")),
        Method("l2s", "L2S", "l2s_beta", "β", ("hazard", "median"),
               keys=("max_steps", "policy_updates", "l2s_heads", "l2s_gain_price")),
        Method("thesis", "Random-horizon bound", "thesis_beta", "β", ("greedy", "mode"),
               keys=("max_steps", "thesis_prior_p")),
    ]
}  # fmt: skip

# rule name -> (description, causal: decided from the steps run so far)
RULES: dict[str, tuple[str, bool]] = {
    "fixed": ("all depth steps", True),
    "act": ("Σ h ≥ 1 − ε, mean-field output", True),
    "sample": ("sample λ_t", True),
    "median": ("P(stop ≤ t) ≥ 1/2", True),
    "hazard": ("λ_t ≥ 1/2", True),
    "greedy": ("first local max of a_t", True),
    "mode": ("argmax_t a_t (all steps)", False),
    "sample-q": ("sample the renormalised q (all steps)", False),
    "median-q": ("median of the renormalised q (all steps)", False),
}


def unroll_with_head(
    model: ParityGRU, x: torch.Tensor, head: HaltingHead | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (B, T), halting logits (B, T))`` of every step (``head`` defaults to the model's)."""
    trajectory = unroll(model, x, with_features=True)
    head = model.halting if head is None else head
    return trajectory.predictions, head(trajectory.features)  # one linear over (B, T, H)


def _loss(
    method: str, value: float, config: Any, model: ParityGRU, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The loss of a single-stage method (``act``, ``pondernet``, ``pondernet-last``, ``thesis``)
    at hyperparameter ``value`` on one batch, and the metrics its training curve logs."""
    logits, z = unroll_with_head(model, x)
    if method == "act":
        halting = act_halting(z, config.act_eps)
        task = F.binary_cross_entropy_with_logits(act_output(halting.weights, logits), y)
        return act_loss(task, halting, value), {
            "task": task.detach(),
            "steps": halting.steps.float().mean(),
            "halt_at_step_1": (halting.steps == 1).float().mean(),
        }
    if method == "thesis":
        a = posterior_logits(z)
        bound = random_horizon_bound(a, step_losses(logits, y), config.thesis_prior_p, value)
        steps = (torch.softmax(a, -1) * torch.arange(1, a.shape[-1] + 1, device=a.device)).sum(-1)
        return bound, {"steps": steps.mean().detach()}
    stop = StopTime(z, tail="renormalize" if method == "pondernet" else "absorb")
    loss, terms = pondernet_loss(stop, step_losses(logits, y), config.pondernet_beta, value)
    return loss, {k: v.detach() for k, v in terms.items()} | {"steps": stop.mean().mean().detach()}


def train_method(
    method: str, model: ParityGRU, value: float, config: Any, context: JobContext, lr: float
) -> dict[str, HaltingHead]:
    """Train ``model`` (and heads) with ``method`` at hyperparameter ``value``.

    Every method trains on the job's ``"train-batches"`` stream (the same vectors for every
    method of a seed) with Adam at learning rate ``lr`` (one value of the method's grid) and the
    same clip; L2S's stage II reads its own ``"l2s-stage2-batches"``. Wall-clock goes to
    ``context.timings["train"]`` (and ``"train-<head>"`` for L2S's stage-II heads). Returns the
    halting head of each variant (``{"": model.halting}`` except for L2S, whose heads, one per
    ``l2s_heads``, are fitted in stage II on the frozen stage-I model).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    device = next(model.parameters()).device

    def batches(stream: str) -> GeneratedBatches:
        def sample(batch: int, generator: torch.Generator):
            x, y, _ = sample_parity(batch, config.n, config.train_k, generator)
            return x.to(device), y.to(device)

        return GeneratedBatches(sample, config.batch_size, context.stream_seed(stream))

    fit = {
        "settings": context.loop_settings(config.log_every),
        "grad_clip": config.grad_clip or None,
    }
    train = batches("train-batches")

    def fit_args(parameters, data=train, updates=config.updates) -> tuple:
        """What every ``fit_*`` takes after the model (and head): batches, loss, Adam, updates."""
        return data, step_losses, torch.optim.Adam(parameters, lr=lr), updates

    if method == "l2s":
        # Stage I on the model (halting head untouched), then one fresh head per oracle kind.
        untrained = copy.deepcopy(model.halting)
        predictor = [p for name, p in model.named_parameters() if not name.startswith("halting.")]
        with context.timed("train"):
            fit_oracle(model, *fit_args(predictor), value, stage="l2s-stage1", **fit)
        heads = {}
        for variant in config.l2s_heads:
            heads[variant] = head = copy.deepcopy(untrained)
            stage2 = fit_args(
                head.parameters(), batches("l2s-stage2-batches"), config.policy_updates
            )
            with context.timed(f"train-{variant}"):
                if variant == "gain":
                    fit_gain_policy(model, head, *stage2, price=config.l2s_gain_price,
                                    stage="l2s-stage2-gain", **fit)  # fmt: skip
                else:
                    fit_policy(model, head, *stage2, value, hard=variant == "hard",
                               stage=f"l2s-stage2-{variant}", **fit)  # fmt: skip
        return heads
    with context.timed("train"):
        if method == "fixed":  # the last of the model's ``depth`` steps only
            last = F.one_hot(torch.tensor(model.max_steps - 1), model.max_steps).float()
            fit_predictor(
                model, *fit_args(model.parameters()), step_weights=last, stage="fixed", **fit
            )
        else:
            model.train()
            optimize(
                method,
                config.updates,
                lambda step: _loss(method, value, config, model, *train(step)),
                torch.optim.Adam(model.parameters(), lr=lr),
                {"model": model, "batches": train},
                **fit,
            )
    return {"": model.halting}


@torch.no_grad()
def act_halting_steps(model: ParityGRU, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``(B,)`` steps N(x) ACT's training loss uses for inputs ``x (B, n)`` (1 = halted at the
    first step, where no gradient reaches h₁: p₁ = R = 1 whatever h₁ is)."""
    model.eval()
    return act_halting(unroll_with_head(model, x)[1], eps).steps


def renormalised_stop(
    halting_logits: torch.Tensor, rule: str, sample_seed: int = 0
) -> torch.Tensor:
    """``(B,)`` 0-based stop index under the renormalised PonderNet distribution q of
    ``halting_logits (B, N)`` (``sample-q`` or ``median-q``, see the module docstring); the
    uniforms of ``sample-q`` are drawn from ``sample_seed``."""
    stop = StopTime(halting_logits.float(), tail="renormalize")
    if rule == "median-q":
        return stop.median()
    if rule != "sample-q":
        raise ValueError(f"unknown renormalised rule {rule!r}; choose sample-q or median-q")
    u = torch.rand(
        halting_logits.shape[0], generator=torch.Generator().manual_seed(sample_seed)
    ).to(halting_logits.device)
    below = (stop.cdf() < u.unsqueeze(-1)).sum(-1)
    return below.clamp(max=halting_logits.shape[-1] - 1)  # rounding guard: cdf(N) may be < u


@torch.no_grad()
def infer(
    rule: str,
    model: ParityGRU,
    head: HaltingHead,
    x: torch.Tensor,
    mode: str = "shrink",
    act_eps: float = 0.01,
    sample_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run inference rule ``rule`` (see :data:`RULES`) on ``x (B, n)`` in ``run_adaptive``'s
    ``mode``: ``(logits (B,), 0-based stop index (B,))``. ``sample`` draws from ``sample_seed``."""
    model.eval()
    if rule not in RULES:
        raise ValueError(f"unknown inference rule {rule!r}; choose one of {sorted(RULES)}")
    if rule == "fixed":
        logits = run_fixed(model, x)
        return logits, torch.full_like(logits, model.max_steps - 1, dtype=torch.long)
    if not RULES[rule][1]:  # not causal: run every step, then choose where to stop
        logits, z = unroll_with_head(model, x, head)
        if rule == "mode":
            index = posterior_logits(z).argmax(dim=-1)
        else:
            index = renormalised_stop(z, rule, sample_seed)
        return logits.gather(1, index.unsqueeze(-1)).squeeze(-1), index
    rules = {
        "act": lambda: ACTRule(act_eps),
        "sample": lambda: SampleRule(sample_seed),
        "median": lambda: CumulativeThreshold(0.5),
        "hazard": lambda: HazardThreshold(0.5),
        "greedy": lambda: HazardThreshold(0.5),
    }
    stepper = MeanFieldACT(model) if rule == "act" else model
    result = run_adaptive(stepper, head, x, rules[rule](), mode)
    return result.predictions, result.stop_index
