"""The training methods compared on one multi-exit backbone, and the L2S exit policy.

Every method starts from the same initial weights (the seed builds the model), sees the same
mini-batches in the same order (:class:`~stopwise.training.EpochBatches` with the seed) and makes
the same number of SGD updates with the same learning-rate schedule. With ``ℓ_ik`` the
cross-entropy of sample i at exit k:

* ``uniform`` — Σ_k mean_i ℓ_ik (deep supervision, every exit weighted 1);
* ``sdn`` — Σ_k c_k mean_i ℓ_ik with fixed weights growing with depth (the schedule of SDN,
  Kaya et al. 2019, held at its final value), normalised so Σ_k c_k = K like ``uniform``;
* ``l2w`` / ``l2w-fo`` — mean_i Σ_k w_ik ℓ_ik with w from the meta-learned weight network of
  :mod:`.l2w` (full second-order meta gradient / its first-order approximation);
* ``l2s`` — stage I: K·mean_i Σ_k q*_ik ℓ_ik, q*_i = softmax_k(−ℓ_ik/β) detached (L2S Eq. 8–9,
  scaled by K so that β → ∞ is ``uniform``); stage II: the network frozen, a policy over exit
  features (max probability, entropy, margin, one-hot exit) imitates the oracle (L2S Eq. 10).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...objectives import weighted_exit_loss
from ...policies import MLPPolicy, classifier_features
from ...training import (
    EpochBatches,
    LoopSettings,
    fit_oracle,
    fit_policy,
    fit_predictor,
    train_loop,
)
from .l2w import MetaStep, WeightNet
from .model import MultiExitCNN, exit_losses

__all__ = ["METHODS", "ExitPolicy", "Training", "NegativeWeights", "train_method"]

METHODS = {
    "uniform": "Uniform Σ_k CE_k",
    "sdn": "SDN fixed weights",
    "l2w": "L2W",
    "l2w-fo": "L2W (first-order)",
    "l2s": "L2S",
}


class ExitPolicy(nn.Module):
    """L2S stage-II policy for a classifier: ``(B, C)`` exit logits → ``(B,)`` hazard logits,
    an MLP over :func:`~stopwise.policies.classifier_features` and a one-hot exit encoding."""

    def __init__(self, exits: int, hidden: tuple[int, ...] = (32,), init_bias: float = 0.0):
        super().__init__()
        self.mlp = MLPPolicy(3, exits, hidden=hidden, init_bias=init_bias)

    def forward(self, logits: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return self.mlp(classifier_features(logits), t)


@dataclass
class Training:
    """What every method of one (seed, run) shares: config, training split, loop settings."""

    config: dict[str, Any]
    train_x: torch.Tensor
    train_y: torch.Tensor
    seed: int
    settings: LoopSettings
    job: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def updates(self) -> int:
        return self.config["epochs"] * self.per_epoch

    @property
    def per_epoch(self) -> int:
        return len(self.train_y) // self.config["batch_size"]

    def batches(self, stream: int = 0) -> EpochBatches:
        return EpochBatches(
            (self.train_x, self.train_y), self.config["batch_size"], self.seed * 7919 + stream
        )

    def optimizer(self, model: nn.Module) -> torch.optim.SGD:
        c = self.config
        return torch.optim.SGD(
            model.parameters(), lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"]
        )

    def scheduler(self, optimizer) -> torch.optim.lr_scheduler.CosineAnnealingLR:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.updates)

    def stage(self, part: str) -> str:
        return f"{self.job}.{part}"

    def timed(self, part: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start


class NegativeWeights:
    """Running count of negative L2W weights over training (checkpointed with the loop)."""

    def __init__(self):
        self.negative, self.total = 0, 0
        self.per_exit: list[int] = []

    def add(self, w: torch.Tensor) -> None:
        negative = (w < 0).sum(0)
        if not self.per_exit:
            self.per_exit = [0] * w.shape[1]
        self.per_exit = [a + int(b) for a, b in zip(self.per_exit, negative, strict=True)]
        self.negative += int(negative.sum())
        self.total += w.numel()

    def state_dict(self) -> dict[str, Any]:
        return {"negative": self.negative, "total": self.total, "per_exit": list(self.per_exit)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.negative, self.total = state["negative"], state["total"]
        self.per_exit = list(state["per_exit"])

    def summary(self, rows: int) -> dict[str, Any]:
        return {
            "fraction": self.negative / max(self.total, 1),
            "per_exit_fraction": [n / max(rows, 1) for n in self.per_exit],
        }


def sdn_weights(config: dict[str, Any], exits: int) -> torch.Tensor:
    c = torch.tensor(config["sdn_weights"], dtype=torch.float32)
    if c.shape != (exits,) or bool((c <= 0).any()):
        raise ValueError(
            f"sdn_weights must be {exits} positive numbers; got {config['sdn_weights']}"
        )
    return c * exits / c.sum()


def _fixed(model: MultiExitCNN, training: Training, weights: torch.Tensor) -> dict[str, Any]:
    optimizer = training.optimizer(model)
    fit_predictor(
        model,
        training.batches(),
        exit_losses,
        optimizer,
        training.updates,
        step_weights=weights,
        settings=training.settings,
        stage=training.stage("train"),
        scheduler=training.scheduler(optimizer),
    )
    return {}


def _l2w(model: MultiExitCNN, training: Training, mode: str) -> dict[str, Any]:
    c = training.config
    K = model.max_steps
    torch.manual_seed(training.seed * 7919 + 11)
    weight_net = WeightNet(K, c["l2w_hidden"], c["l2w_delta"], c["l2w_clamp"])
    meta_optimizer = torch.optim.Adam(
        weight_net.parameters(), lr=c["l2w_meta_lr"], weight_decay=c["l2w_meta_wd"]
    )
    meta = MetaStep(weight_net, meta_optimizer, c["l2w_p"], mode)
    optimizer = training.optimizer(model)
    scheduler = training.scheduler(optimizer)
    batches = training.batches()
    negatives = NegativeWeights()
    interval = c["l2w_interval"]

    def step_fn(step: int) -> dict[str, Any]:
        x, y = batches(step)
        metrics: dict[str, Any] = {}
        if step % interval == 0:
            metrics.update(meta(model, optimizer, x, y))
        losses = exit_losses(model(x), y)
        with torch.no_grad():
            w = weight_net(losses.detach())
        negatives.add(w)
        loss = weighted_exit_loss(losses, w)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return {
            "loss": loss.detach(),
            "negative_weights": float((w < 0).float().mean()),
            **{f"w{k + 1}": float(w[:, k].mean()) for k in range(K)},
            **metrics,
        }

    model.train()
    state = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "weight_net": weight_net,
        "meta_optimizer": meta_optimizer,
        "negatives": negatives,
    }
    train_loop(training.stage("train"), training.updates, step_fn, state, training.settings)
    rows = training.updates * c["batch_size"]
    return {"weight_net": weight_net, "negative_weights": negatives.summary(rows)}


def _l2s(model: MultiExitCNN, training: Training) -> dict[str, Any]:
    c = training.config
    K = model.max_steps
    optimizer = training.optimizer(model)

    def scaled_losses(predictions, targets):
        return K * exit_losses(predictions, targets)

    # K·ℓ with temperature K·β gives oracle weights softmax(−ℓ/β) on a loss scaled by K.
    training.timed(
        "stage1",
        lambda: fit_oracle(
            model,
            training.batches(),
            scaled_losses,
            optimizer,
            training.updates,
            beta=K * c["l2s_beta"],
            settings=training.settings,
            stage=training.stage("stage1"),
            scheduler=training.scheduler(optimizer),
        ),
    )
    torch.manual_seed(training.seed * 7919 + 13)
    policy = ExitPolicy(K, tuple(c["policy_hidden"]))
    training.timed(
        "stage2",
        lambda: fit_policy(
            model,
            policy,
            training.batches(stream=1),
            exit_losses,
            torch.optim.Adam(policy.parameters(), lr=c["policy_lr"]),
            c["policy_updates"],
            beta=c["l2s_beta"],
            hard=c["l2s_hard"],
            settings=training.settings,
            stage=training.stage("stage2"),
        ),
    )
    return {"policy": policy}


def train_method(method: str, model: MultiExitCNN, training: Training) -> dict[str, Any]:
    """Train ``model`` in place with ``method``; returns extras (weight net, policy, counts)."""
    K = model.max_steps
    if method == "uniform":
        return training.timed("train", lambda: _fixed(model, training, torch.ones(K)))
    if method == "sdn":
        weights = sdn_weights(training.config, K)
        return training.timed("train", lambda: _fixed(model, training, weights))
    if method in ("l2w", "l2w-fo"):
        mode = "full" if method == "l2w" else "first_order"
        return training.timed("train", lambda: _l2w(model, training, mode))
    if method == "l2s":
        return _l2s(model, training)
    raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
