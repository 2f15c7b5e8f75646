"""The training methods compared on one multi-exit backbone.

Every method of a seed starts from the same initial weights (the backbone is built after
``context.manual_seed("init")``), sees the same mini-batches in the same order
(:class:`~stopwise.training.EpochBatches` seeded from the stream ``"train-batches"``) and makes
the same number of SGD updates with the same cosine learning-rate schedule. With ``ℓ_ik`` the
cross-entropy of sample i at exit k:

* ``uniform`` — Σ_k mean_i ℓ_ik (deep supervision, every exit weighted 1);
* ``sdn`` — Σ_k c_k mean_i ℓ_ik with fixed weights growing with depth (the schedule of SDN,
  Kaya et al. 2019, held at its final value), normalised so Σ_k c_k = K like ``uniform``;
* ``l2w`` / ``l2w-fo`` — mean_i Σ_k w_ik ℓ_ik with w from the meta-learned weight network of
  :mod:`.l2w` (full second-order meta gradient / its first-order approximation);
* ``l2s`` — stage I: K·mean_i Σ_k q*_ik ℓ_ik, q*_i = softmax_k(−ℓ_ik/β) detached (L2S Eq. 8–9,
  scaled by K so that β → ∞ is ``uniform``); stage II: the network frozen, an
  :class:`~.models.ExitPolicy` imitates the oracle (L2S Eq. 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...contract import JobContext
from ...objectives import weighted_exit_loss
from ...training import EpochBatches, fit_oracle, fit_policy, fit_predictor, optimize
from .config import MultiExitConfig
from .data import Splits
from .l2w import MetaStep, WeightNet
from .models import ExitPolicy, MultiExitCNN, count_step_macs, exit_losses

__all__ = ["build_model", "sdn_weights", "NegativeWeights", "Trained", "train_method"]


def build_model(config: MultiExitConfig, splits: Splits) -> MultiExitCNN:
    """The backbone (initialised from torch's global generator) with its MACs counted."""
    model = MultiExitCNN(
        splits.dims, config.channels, config.strides, config.head_width, splits.classes,
        stem=config.stem,
    )  # fmt: skip
    model.set_step_costs(count_step_macs(model, splits.train_x[:1]))
    return model


def sdn_weights(weights: list[float]) -> torch.Tensor:
    """SDN's exit weights normalised to sum to K."""
    c = torch.tensor(weights, dtype=torch.float32)
    return c * len(c) / c.sum()


class NegativeWeights:
    """Count of negative L2W weights per exit over training (checkpointed with the loop)."""

    def __init__(self, exits: int):
        self.counts = torch.zeros(exits, dtype=torch.long)

    def add(self, w: torch.Tensor) -> None:
        self.counts += (w < 0).sum(0)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = state["counts"].clone()

    def summary(self, rows: int) -> dict[str, Any]:
        """The share of negative (sample, exit) weights over ``rows`` samples, and per exit."""
        return {
            "fraction": float(self.counts.sum()) / max(rows * len(self.counts), 1),
            "per_exit_fraction": (self.counts.double() / max(rows, 1)).tolist(),
        }


@dataclass
class Trained:
    """What a method leaves besides the trained backbone."""

    updates: int
    policy: ExitPolicy | None = None
    weight_net: WeightNet | None = None
    negative_weights: dict[str, Any] | None = None


def train_method(
    method: str, model: MultiExitCNN, splits: Splits, config: MultiExitConfig, context: JobContext
) -> Trained:
    """Train ``model`` in place with ``method`` (see the module docstring); the backbone's
    training is timed as ``"train"``, L2S's stage II as ``"policy"``."""
    K = model.max_steps
    updates = config.epochs * (len(splits.train_y) // config.batch_size)

    def batches(stream: str) -> EpochBatches:
        data = (splits.train_x, splits.train_y)
        return EpochBatches(data, config.batch_size, context.stream_seed(stream))

    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    common = {
        "optimizer": optimizer,
        "num_steps": updates,
        "settings": context.loop_settings(log_every=config.log_every),
        "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=updates),
    }
    trained = Trained(updates)
    with context.timed("train"):
        if method in ("uniform", "sdn"):
            weights = torch.ones(K) if method == "uniform" else sdn_weights(config.sdn_weights)
            fit_predictor(
                model, batches("train-batches"), exit_losses, step_weights=weights, stage="train",
                **common,
            )  # fmt: skip
        elif method in ("l2w", "l2w-fo"):
            context.manual_seed("l2w-weight-net")
            mode = "full" if method == "l2w" else "first_order"
            trained = _train_l2w(model, batches("train-batches"), config, mode, common)
        elif method == "l2s":
            # K·ℓ with temperature K·β gives oracle weights softmax(−ℓ/β) on a loss scaled by K.
            fit_oracle(
                model, batches("train-batches"), lambda p, y: K * exit_losses(p, y),
                beta=K * config.l2s.beta, stage="stage1", **common,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown method {method!r}")
    if method == "l2s":
        with context.timed("policy"):
            context.manual_seed("l2s-policy-init")
            trained.policy = _train_policy(model, batches("policy-batches"), config, common)
    return trained


def _train_l2w(model, batches, config: MultiExitConfig, mode: str, common) -> Trained:
    """Train with L2W (the weight net is initialised from torch's global generator)."""
    c, K, optimizer = config.l2w, model.max_steps, common["optimizer"]
    weight_net = WeightNet(K, c.hidden, c.delta, c.clamp)
    meta_optimizer = torch.optim.Adam(weight_net.parameters(), lr=c.meta_lr, weight_decay=c.meta_wd)
    meta = MetaStep(weight_net, meta_optimizer, c.p, mode)
    negatives = NegativeWeights(K)

    def loss(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batches(step)
        metrics = meta(model, optimizer, x, y) if step % c.interval == 0 else {}
        losses = exit_losses(model(x), y)
        with torch.no_grad():
            w = weight_net(losses.detach())
        negatives.add(w)
        return weighted_exit_loss(losses, w), {
            "negative_weights": float((w < 0).float().mean()),
            **{f"w{k + 1}": float(w[:, k].mean()) for k in range(K)},
            **metrics,
        }

    model.train()
    state = {
        "model": model,
        "weight_net": weight_net,
        "meta_optimizer": meta_optimizer,
        "negatives": negatives,
    }
    optimize("train", loss_and_metrics=loss, state=state, **common)
    rows = common["num_steps"] * config.batch_size
    return Trained(
        common["num_steps"], weight_net=weight_net, negative_weights=negatives.summary(rows)
    )


def _train_policy(model, batches, config: MultiExitConfig, common) -> ExitPolicy:
    """L2S stage II on the frozen backbone (the policy is initialised from torch's global
    generator)."""
    c = config.l2s
    policy = ExitPolicy(model.max_steps, tuple(c.policy_hidden))
    fit_policy(
        model, policy, batches, exit_losses, torch.optim.Adam(policy.parameters(), lr=c.policy_lr),
        c.policy_updates, beta=c.beta, hard=c.hard, settings=common["settings"], stage="stage2",
    )  # fmt: skip
    return policy.eval()
