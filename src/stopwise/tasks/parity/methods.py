"""The halting methods compared on parity: how each one trains the shared step model and how each
one stops at inference.

Every method trains a :class:`~.model.ParityGRU` with the same Adam settings, batch size and number
of updates; per-step losses are ``ℓ_t = BCE(y_t, target)``. The halting head's stop logit ``z_t``
is read as:

* ``fixed`` — unused; the model runs exactly ``depth`` steps and is trained on the last one.
* ``act`` — Graves' halting unit h_t = σ(z_t); loss BCE(Σ_t p_t y_t) + τ·(N + R) (ACT Eq. 13).
* ``pondernet`` / ``pondernet-last`` — the hazard λ_t = σ(z_t); loss Σ_t q(t) ℓ_t +
  β KL(q ‖ truncated geometric(λ_p)) (PonderNet Eq. 4), with q renormalised over the N steps
  (``pondernet``) or the last step taking the remaining mass (``pondernet-last``).
* ``l2s`` — stage I trains the model under the oracle softmax(−ℓ/β); stage II freezes it and fits
  two fresh halting heads, as hazards, to the hard and the soft oracle (L2S Eqs. 8–10).
* ``thesis`` — z_t sets the posterior logits a_t = −Σ_{τ<t} z_τ; loss: the random-horizon bound of
  Sander (2017) with prior parameter p and KL weight β, averaged exactly over horizons.

Inference rules (all run through :func:`~stopwise.inference.run_adaptive` except ``mode``):

* ``fixed``: all ``depth`` steps. ``act``: stop when Σ_{n≤t} h_n ≥ 1 − ε, mean-field output.
* ``sample``: stop at t with probability λ_t. ``median``: stop when P(stopped by t) ≥ 1/2.
* ``hazard``: stop at the first t with λ_t ≥ 1/2.
* ``greedy`` (thesis, causal): stop at the first t with z_t ≥ 0, i.e. a_{t+1} ≤ a_t — the first
  local maximum of the posterior logits, found without looking past the current step.
* ``mode`` (thesis, NOT causal): run every step and stop at argmax_t a_t, the mode of the posterior
  at the largest horizon. It equals ``greedy`` whenever a_t is unimodal.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ...inference import (
    CumulativeThreshold,
    HazardThreshold,
    SampleRule,
    run_adaptive,
    run_fixed,
)
from ...objectives import act_halting, act_loss, act_output, pondernet_loss, random_horizon_bound
from ...steps import unroll
from ...stoptime import StopTime
from ...training import (
    GeneratedBatches,
    LoopSettings,
    fit_oracle,
    fit_policy,
    fit_predictor,
    train_loop,
)
from .model import ACTRule, HaltingHead, MeanFieldACT, ParityGRU, posterior_logits, step_losses

__all__ = ["Method", "METHODS", "RULES", "Training", "train_method", "infer"]


@dataclass(frozen=True)
class Method:
    """A halting method: its table label, the config key of its swept hyperparameter (a list),
    the symbol of that hyperparameter, its inference rules (the first is the main one) and the
    halting heads one training run produces (L2S fits a hard and a soft one)."""

    name: str
    label: str
    hyperparameter: str
    symbol: str
    rules: tuple[str, ...]
    variants: tuple[str, ...] = ("",)

    def variant_label(self, variant: str) -> str:
        return f"{self.label} ({variant})" if variant else self.label


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("fixed", "Fixed depth", "fixed_depth", "depth", ("fixed",)),
        Method("act", "ACT", "act_tau", "τ", ("act",)),
        Method("pondernet", "PonderNet (renormalise)", "pondernet_lambda_p", "λ_p",
               ("sample", "median")),
        Method("pondernet-last", "PonderNet (halt at last)", "pondernet_lambda_p", "λ_p",
               ("sample", "median")),
        Method("l2s", "L2S", "l2s_beta", "β", ("hazard", "median"), ("hard", "soft")),
        Method("thesis", "Random-horizon bound", "thesis_beta", "β", ("greedy", "mode")),
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
}


@dataclass
class Training:
    """What every method's training shares: the config, where the loop records itself, the
    sampler of training pairs ``sample(batch, generator) -> (x, y)`` and the run's seed."""

    config: dict[str, Any]
    settings: LoopSettings
    sample: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)

    def batches(self, stream: int) -> GeneratedBatches:
        """Stream 0 feeds the model; stream 1 feeds L2S's stage II. Same seed, same data."""
        return GeneratedBatches(
            self.sample, self.config["batch_size"], self.seed * 1_000_003 + 17 * stream + 1
        )

    def optimizer(self, parameters) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameters, lr=self.config["lr"])

    @property
    def grad_clip(self) -> float | None:
        return self.config["grad_clip"] or None

    @contextmanager
    def timed(self, part: str):
        """Add the wall-clock seconds of the block to ``seconds[part]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start

    def variant_seconds(self, variant: str) -> float:
        """Training seconds of one variant: the shared part plus its own (L2S's stage II)."""
        return self.seconds.get("shared", 0.0) + self.seconds.get(variant, 0.0)


LossFn = Callable[[ParityGRU, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, Any]]]


def _fit(model: ParityGRU, loss: LossFn, training: Training, stage: str) -> None:
    """Train all of ``model`` on ``loss(model, x, y) -> (loss, metrics)`` through the core loop."""
    batches = training.batches(0)
    optimizer = training.optimizer(model.parameters())

    def step_fn(step: int) -> dict[str, Any]:
        x, y = batches(step)
        value, metrics = loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if training.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        optimizer.step()
        return {"loss": value.detach(), **metrics}

    model.train()
    state = {"model": model, "optimizer": optimizer, "batches": batches}
    train_loop(stage, training.config["updates"], step_fn, state, training.settings)


def _unroll(
    model: ParityGRU, x: torch.Tensor, head: HaltingHead | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (B, T), halting logits (B, T))`` of every step (``head`` defaults to the model's)."""
    trajectory = unroll(model, x, with_features=True)
    head = model.halting if head is None else head
    return trajectory.predictions, head(trajectory.features)  # one linear over (B, T, H)


def _act_loss(tau: float, eps: float) -> LossFn:
    def loss(model, x, y):
        logits, z = _unroll(model, x)
        halting = act_halting(z, eps)
        task = F.binary_cross_entropy_with_logits(act_output(halting.weights, logits), y)
        return act_loss(task, halting, tau), {
            "task": task.detach(),
            "steps": halting.steps.float().mean(),
        }

    return loss


def _pondernet_loss(lambda_p: float, beta: float, tail: str) -> LossFn:
    def loss(model, x, y):
        logits, z = _unroll(model, x)
        stop = StopTime(z, tail=tail)
        value, terms = pondernet_loss(stop, step_losses(logits, y), beta, lambda_p)
        return value, {k: v.detach() for k, v in terms.items()} | {
            "steps": stop.mean().mean().detach()
        }

    return loss


def _thesis_loss(beta: float, prior_p: float) -> LossFn:
    def loss(model, x, y):
        logits, z = _unroll(model, x)
        a = posterior_logits(z)
        value = random_horizon_bound(a, step_losses(logits, y), prior_p, beta)
        steps = (torch.softmax(a, -1) * torch.arange(1, a.shape[-1] + 1, device=a.device)).sum(-1)
        return value, {"steps": steps.mean().detach()}

    return loss


def train_method(
    method: str, model: ParityGRU, value: float, training: Training
) -> dict[str, HaltingHead]:
    """Train ``model`` (and heads) with ``method`` at hyperparameter ``value``.

    Returns the halting head of each variant (``{"": model.halting}`` except for L2S, whose
    ``"hard"`` and ``"soft"`` heads are fitted in stage II on the frozen stage-I model).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    if method == "l2s":
        return _train_l2s(model, value, training)
    with training.timed("shared"):
        _train_single(method, model, value, training)
    return {"": model.halting}


def _train_single(method: str, model: ParityGRU, value: float, training: Training) -> None:
    config = training.config
    if method == "fixed":
        depth = model.max_steps
        fit_predictor(
            model,
            training.batches(0),
            step_losses,
            training.optimizer(model.parameters()),
            config["updates"],
            step_weights=F.one_hot(torch.tensor(depth - 1), depth).float(),
            settings=training.settings,
            stage="fixed",
            grad_clip=training.grad_clip,
        )
    elif method == "act":
        _fit(model, _act_loss(value, config["act_eps"]), training, "act")
    elif method in ("pondernet", "pondernet-last"):
        tail = "renormalize" if method == "pondernet" else "absorb"
        _fit(model, _pondernet_loss(value, config["pondernet_beta"], tail), training, method)
    elif method == "thesis":
        _fit(model, _thesis_loss(value, config["thesis_prior_p"]), training, "thesis")


def _train_l2s(model: ParityGRU, beta: float, training: Training) -> dict[str, HaltingHead]:
    """Stage I on the model (halting head untouched), then one fresh head per oracle kind."""
    config = training.config
    untrained = copy.deepcopy(model.halting)
    predictor = [p for name, p in model.named_parameters() if not name.startswith("halting.")]
    with training.timed("shared"):
        fit_oracle(
            model,
            training.batches(0),
            step_losses,
            training.optimizer(predictor),
            config["updates"],
            beta,
            settings=training.settings,
            stage="l2s-stage1",
            grad_clip=training.grad_clip,
        )
    heads = {}
    for variant in METHODS["l2s"].variants:
        head = copy.deepcopy(untrained)
        with training.timed(variant):
            fit_policy(
                model,
                head,
                training.batches(1),
                step_losses,
                training.optimizer(head.parameters()),
                config["policy_updates"],
                beta,
                hard=variant == "hard",
                settings=training.settings,
                stage=f"l2s-stage2-{variant}",
                grad_clip=training.grad_clip,
            )
        heads[variant] = head
    return heads


@torch.no_grad()
def infer(
    rule: str,
    model: ParityGRU,
    head: HaltingHead,
    x: torch.Tensor,
    config: dict[str, Any],
    sample_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run inference rule ``rule`` (see :data:`RULES`): ``(logits (B,), 0-based stop index (B,))``."""
    model.eval()
    mode = config["inference_mode"]
    if rule == "fixed":
        logits = run_fixed(model, x)
        return logits, torch.full_like(logits, model.max_steps - 1, dtype=torch.long)
    if rule == "mode":
        logits, z = _unroll(model, x, head)
        index = posterior_logits(z).argmax(dim=-1)
        return logits.gather(1, index.unsqueeze(-1)).squeeze(-1), index
    if rule == "act":
        result = run_adaptive(MeanFieldACT(model), head, x, ACTRule(config["act_eps"]), mode)
        return result.predictions, result.stop_index
    rules = {
        "sample": lambda: SampleRule(sample_seed),
        "median": lambda: CumulativeThreshold(0.5),
        "hazard": lambda: HazardThreshold(0.5),
        "greedy": lambda: HazardThreshold(0.5),
    }
    if rule not in rules:
        raise ValueError(f"unknown inference rule {rule!r}; choose one of {sorted(RULES)}")
    result = run_adaptive(model, head, x, rules[rule](), mode)
    return result.predictions, result.stop_index
