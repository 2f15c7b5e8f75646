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
* ``l2w-last`` — ``l2w`` with the meta loss on the last exit only (no meta-data allocation);
* ``l2w-all`` — ``l2w`` with every meta sample scored at every exit (no allocation, MW-Net's
  objective summed over the exits);
* ``l2s`` — stage I: K·mean_i Σ_k q*_ik ℓ_ik, q*_i = softmax_k(−ℓ_ik/β) detached (L2S Eq. 8–9,
  scaled by K so that β → ∞ is ``uniform``); stage II: the network frozen, an
  :class:`~.models.ExitPolicy` imitates the oracle (L2S Eq. 10). One network per β.

With ``gain_head``, every trained network also gets a stop head for budgets (:func:`fit_gain`,
not in the papers), fitted on the frozen network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...contract import JobContext
from ...objectives import weighted_exit_loss
from ...training import EpochBatches, fit_gain_head, fit_oracle, fit_policy, fit_predictor, optimize
from .config import MultiExitConfig
from .data import Splits
from .l2w import MetaStep, WeightNet
from .metrics import exit_logits
from .models import ExitPolicy, MultiExitCNN, count_policy_macs, count_step_macs, exit_losses

__all__ = [
    "build_model",
    "WeightLog",
    "meta_lr_at",
    "Trained",
    "train_method",
    "build_weight_net",
    "head_costs",
    "fit_gain",
]


def build_model(config: MultiExitConfig, splits: Splits) -> MultiExitCNN:
    """The backbone (initialised from torch's global generator) with its MACs counted."""
    model = MultiExitCNN(
        splits.dims, config.channels, config.strides, config.head_width, splits.classes,
        stem=config.stem,
    )  # fmt: skip
    model.set_step_costs(count_step_macs(model, splits.train_x[:1]))
    return model


class WeightLog:
    """What L2W's weights did over training (checkpointed with the loop): negative weights per
    exit, the smallest and largest weight seen, the number of meta steps and the mean norm of
    the meta gradient in each quarter of training."""

    QUARTERS = 4

    def __init__(self, exits: int, updates: int):
        self.updates = updates
        self.negative = torch.zeros(exits, dtype=torch.long)
        self.rows = 0
        self.low, self.high = math.inf, -math.inf
        self.grad_norm_sum = torch.zeros(self.QUARTERS, dtype=torch.float64)
        self.grad_norm_count = torch.zeros(self.QUARTERS, dtype=torch.long)

    def weights(self, w: torch.Tensor) -> None:
        """Weights ``(B, K)`` used by one real update."""
        self.negative += (w < 0).sum(0)
        self.rows += w.shape[0]
        self.low, self.high = min(self.low, float(w.min())), max(self.high, float(w.max()))

    def meta_step(self, step: int, grad_norm: float) -> None:
        quarter = min(self.QUARTERS * step // max(self.updates, 1), self.QUARTERS - 1)
        self.grad_norm_sum[quarter] += grad_norm
        self.grad_norm_count[quarter] += 1

    def state_dict(self) -> dict[str, Any]:
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v.clone() if isinstance(v, torch.Tensor) else v)

    def summary(self) -> dict[str, Any]:
        counts = self.grad_norm_count.clamp_min(1).double()
        return {
            "meta_steps": int(self.grad_norm_count.sum()),
            "negative_fraction": float(self.negative.sum())
            / max(self.rows * len(self.negative), 1),
            "negative_per_exit_fraction": (self.negative.double() / max(self.rows, 1)).tolist(),
            "min_seen": self.low,
            "max_seen": self.high,
            "meta_grad_norm_by_quarter": (self.grad_norm_sum / counts).tolist(),
        }


def meta_lr_at(step: int, updates: int, lr: float, schedule: str) -> float:
    """The weight net's learning rate at update ``step``: constant, or the official cosine
    schedule to 0 over all updates, lr·½(1 + cos(π·step/updates))."""
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1 + math.cos(math.pi * step / max(updates, 1)))


@dataclass
class Trained:
    """What a method leaves besides the trained backbone (and its checkpoints: L2S's policy,
    L2W's weight net)."""

    updates: int
    weight_log: dict[str, Any] | None = None  # L2W's (WeightLog.summary)


def train_method(
    method: str,
    model: MultiExitCNN,
    splits: Splits,
    config: MultiExitConfig,
    context: JobContext,
    beta: float | None = None,
) -> Trained:
    """Train ``model`` in place with ``method`` (see the module docstring; ``beta``: L2S's
    oracle temperature); the backbone's training is timed as ``"train"``, L2S's stage II as
    ``"policy"``."""
    K = model.max_steps
    updates = config.epochs * (len(splits.train_y) // config.batch_size)

    def batches(stream: str) -> EpochBatches:
        data = (splits.train_x, splits.train_y)
        return EpochBatches(data, config.batch_size, context.stream_seed(stream))

    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
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
            c = torch.ones(K) if method == "uniform" else torch.tensor(config.sdn_weights)
            fit_predictor(  # the exit weights normalised to sum to K
                model, batches("train-batches"), exit_losses, step_weights=c * K / c.sum(),
                stage="train", **common,
            )  # fmt: skip
        elif method in L2W_VARIANTS:
            context.manual_seed("l2w-weight-net")
            mode, meta_loss = L2W_VARIANTS[method]
            trained = _train_l2w(
                model, batches("train-batches"), batches("l2w-meta-batches"), config, mode,
                meta_loss or config.l2w.meta_loss, common,
            )  # fmt: skip
        elif method == "l2s":
            if beta is None:
                raise ValueError("l2s needs its oracle temperature beta")
            # K·ℓ with temperature K·β gives oracle weights softmax(−ℓ/β) on a loss scaled by K.
            fit_oracle(
                model, batches("train-batches"), lambda p, y: K * exit_losses(p, y),
                beta=K * beta, stage="stage1", **common,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown method {method!r}")
    if method == "l2s":  # stage II on the frozen backbone, imitating the oracle of temperature β
        c = config.l2s
        with context.timed("policy"):
            context.manual_seed("l2s-policy-init")  # the policy starts from torch's generator
            policy = ExitPolicy(K, tuple(c.policy_hidden))
            fit_policy(
                model, policy, batches("policy-batches"), exit_losses,
                torch.optim.Adam(policy.parameters(), lr=c.policy_lr), c.policy_updates, beta=beta,
                hard=c.hard, settings=common["settings"], stage="stage2",
            )  # fmt: skip
    return trained


# The L2W methods: (meta gradient, meta loss form; None: the config's l2w.meta_loss).
L2W_VARIANTS = {
    "l2w": ("full", None),
    "l2w-fo": ("first_order", None),
    "l2w-last": ("full", "last"),
    "l2w-all": ("full", "all"),
}


def _train_l2w(
    model, batches, meta_batches, config: MultiExitConfig, mode: str, meta_loss: str, common
) -> Trained:
    """Train with L2W (the weight net is initialised from torch's global generator). A meta
    step every ``l2w.interval`` updates, before the real one: the virtual step on the training
    batch and the meta loss on a separate batch as large (``meta_batch="full"``, drawn from the
    training rows with its own stream), or on the two halves of the training batch (``"half"``)."""
    c, K, optimizer, updates = config.l2w, model.max_steps, common["optimizer"], common["num_steps"]
    weight_net = build_weight_net(config, K)
    meta_optimizer = torch.optim.Adam(weight_net.parameters(), lr=c.meta_lr, weight_decay=c.meta_wd)
    meta = MetaStep(weight_net, meta_optimizer, c.p, mode, meta_loss)
    log = WeightLog(K, updates)

    def loss(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batches(step)
        metrics = {}
        if step % c.interval == 0:
            for group in meta_optimizer.param_groups:
                group["lr"] = meta_lr_at(step, updates, c.meta_lr, c.meta_lr_schedule)
            if c.meta_batch == "full":
                metrics = meta(model, optimizer, (x, y), meta_batches(step))
            else:
                half = x.shape[0] // 2
                metrics = meta(model, optimizer, (x[:half], y[:half]), (x[half:], y[half:]))
            log.meta_step(step, metrics["meta_grad_norm"])
        losses = exit_losses(model(x), y)
        with torch.no_grad():
            w = weight_net(losses.detach())
        log.weights(w)
        return weighted_exit_loss(losses, w), {
            "unweighted": float(losses.detach().sum(1).mean()),
            "negative_weights": float((w < 0).float().mean()),
            **{f"w{k + 1}": float(w[:, k].mean()) for k in range(K)},
            **metrics,
        }

    model.train()
    state = dict(model=model, weight_net=weight_net, meta_optimizer=meta_optimizer, weight_log=log)
    optimize("train", loss_and_metrics=loss, state=state, **common)
    return Trained(updates, log.summary())


def build_weight_net(config: MultiExitConfig, exits: int) -> WeightNet:
    """L2W's weight network for ``exits`` exits (initialised from torch's global generator)."""
    c = config.l2w
    return WeightNet(exits, c.hidden, c.delta, c.clamp, c.output_init)


def head_costs(model: MultiExitCNN, head: ExitPolicy) -> torch.Tensor:
    """``(K,)`` cumulative multiply-adds of stopping at each exit with a stop ``head`` (the L2S
    policy, the gain head) deciding: the network's and the head's, asked once at every exit
    reached but the last (every row stops there: ``run_adaptive`` asks no one)."""
    asked = count_policy_macs(head, model.max_steps, model.classes)
    asked[-1] = asked[-2] if len(asked) > 1 else 0.0
    return model.step_costs() + asked


def fit_gain(
    model: MultiExitCNN, splits: Splits, config: MultiExitConfig, context: JobContext
) -> ExitPolicy:
    """A stop head for budgets on the frozen, trained ``model`` (:func:`stopwise.fit_gain_head`):
    an :class:`~.models.ExitPolicy` (the L2S policy's features and width) whose score regresses
    on −log of the gain rate g_k = max_{k' > k} (ℓ_k − ℓ_k') / (c_k' − c_k), the best decrease of
    the cross-entropy per unit of cost that going on from exit k can still buy, with the costs of
    :func:`head_costs` as fractions of the last exit's, on the training rows' exits (eval mode,
    computed once); ``gain_updates`` Adam updates (lr 10⁻³) on batches of ``batch_size`` rows.
    Thresholding its score is then the cost-aware oracle's rule at every price."""
    logits = exit_logits(model, splits.train_x, config.eval_batch)
    losses = exit_losses(logits, splits.train_y)
    context.manual_seed("gain-head-init")
    head = ExitPolicy(model.max_steps)
    costs = head_costs(model, head)
    rows = EpochBatches(
        (torch.arange(len(losses)),), config.batch_size, context.stream_seed("gain-head-batches")
    )
    fit_gain_head(
        head, logits, losses, lambda step: rows(step)[0],
        torch.optim.Adam(head.parameters(), lr=1e-3), config.gain_updates,
        costs=costs / costs[-1], price=config.gain_price,
        settings=context.loop_settings(log_every=config.log_every), stage="gain-head",
    )  # fmt: skip
    return head.eval()
