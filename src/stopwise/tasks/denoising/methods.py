"""How each method trains or runs: the DnCNN stages (last output, uniform deep supervision, L2S
stage I under the oracle), L2S stage II (the policy imitates the hard oracle), and the classical
baselines (BM3D, non-local means).

Every DnCNN stage runs through the core loop (``optimize`` / ``fit_predictor`` /
``fit_oracle``: exact resume) with a :class:`ValidationSchedule` as its scheduler: every
``eval_every`` updates it measures validation PSNR, drops the learning rate ×0.1 once after
``patience`` evaluations without improvement, and keeps the best weights, which the stage ends
on. So the learning-rate drop and the checkpoint are chosen on validation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...contract import JobContext
from ...objectives import gain_loss
from ...stoptime import StopTime
from ...training import (
    EpochBatches,
    GeneratedBatches,
    ValidationSchedule,
    fit_oracle,
    fit_predictor,
    optimize,
)
from .config import DenoisingConfig, TrainStage
from .data import BM3D_MIN_SIDE, NoisySet, load_splits, sample_patches
from .metrics import exit_table
from .models import DnCNN, ImagePolicy, noise_losses

__all__ = [
    "ValidationSchedule",
    "build_dncnn",
    "stage_best_weights",
    "train_dncnn",
    "validation_psnr",
    "PolicyData",
    "policy_data",
    "policy_hazards_on",
    "train_policy",
    "gain_regression",
    "near_best_exit",
    "bm3d_denoise",
    "nlm_denoise",
]

# Gain rates below this many dB per layer count as this (the log of the regression target).
GAIN_FLOOR = 1e-6


def build_dncnn(config: DenoisingConfig, device: torch.device, depth: int | None = None) -> DnCNN:
    """A plain DnCNN of the config's size, or of ``depth`` layers (initialise the torch seed
    first)."""
    depth = config.depth if depth is None else depth
    return DnCNN(depth, config.width, config.precision, config.channels_last).to(device)


def stage_best_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The validation-chosen weights saved with a finished stage (``context.checkpoint``)."""
    return state["scheduler"]["best_state"]


def validation_psnr(model: DnCNN, data: NoisySet, criterion: str) -> dict[str, float]:
    """Mean validation PSNR of the last exit (``"last"``) and of each item's best exit
    (``"oracle"``, the official stage-I selection); ``"score"`` is the one ``criterion`` names."""
    table = exit_table(model, data).psnr
    measures = {
        "last": float(table[:, -1].mean()),
        "oracle": float(table.nan_to_num(-math.inf).amax(dim=1).mean()),
    }
    if criterion not in measures:
        raise ValueError(f"unknown criterion {criterion!r}")
    return {"score": measures[criterion], **measures}


def train_dncnn(
    model: DnCNN,
    config: DenoisingConfig,
    stage_config: TrainStage,
    objective: str,
    context: JobContext,
    val: NoisySet,
    stage: str,
    batch_stream: str,
    beta: float | None = None,
) -> dict[str, Any]:
    """Train ``model`` for one stage and leave it on its best validation weights.

    ``objective``: ``"last"`` (Σ_px (n̂ − n)² of the full-depth output, the plain DnCNN),
    ``"uniform"`` (the mean over exits of ℓ_t: uniform deep supervision) or ``"oracle"``
    (L2S stage I, Σ_t q*(t) ℓ_t with q* = softmax(−ℓ/β), detached as in L2S Eq. 9 unless
    ``config.oracle_detached`` is false). Batches come from
    the named stream ``batch_stream`` (the same patches for every method of a seed). Returns the
    schedule's summary (best score and step, learning-rate drop, validation curve).
    """
    device = context.device
    images = load_splits(config.images_dir).train.images

    def sample(batch: int, generator: torch.Generator):
        noisy, noise = sample_patches(images, batch, config.patch, config.train_sigmas, generator)
        return noisy.to(device), noise.to(device)

    batches = GeneratedBatches(sample, config.batch, context.stream_seed(batch_stream))
    optimizer = torch.optim.Adam(model.parameters(), lr=stage_config.lr)
    criterion = "oracle" if objective == "oracle" else "last"
    schedule = ValidationSchedule(
        model,
        optimizer,
        lambda: validation_psnr(model, val, criterion),
        stage_config.steps,
        config.eval_every,
        config.patience,
    )
    settings = context.loop_settings(log_every=max(1, min(50, stage_config.steps // 4)))
    common = {"settings": settings, "stage": stage, "scheduler": schedule}
    if objective == "last":

        def loss(step: int):
            noisy, noise = batches(step)
            per_patch = ((model(noisy) - noise) ** 2).flatten(1).sum(-1)
            return per_patch.mean(), {}

        model.train()
        state = {"model": model, "batches": batches}
        optimize(stage, stage_config.steps, loss, optimizer, state, settings, scheduler=schedule)
    elif objective == "uniform":
        fit_predictor(model, batches, noise_losses, optimizer, stage_config.steps, **common)
    elif objective == "oracle":
        fit_oracle(
            model, batches, noise_losses, optimizer, stage_config.steps, beta,
            detach_oracle=config.oracle_detached, **common,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown objective {objective!r}")
    schedule.restore_best()
    model.eval()
    return {**schedule.summary(), "criterion": criterion}


# ---------------------------------------------------------------- L2S stage II


class PolicyData:
    """A frozen DnCNN's trajectories on fixed crops: what the policy learns from or is scored on.

    noisy: ``(N, 1, h, w)``; noise_hat: ``(N, T, 1, h, w)`` the noise predicted at each exit
    (zeros where an exit has no head); losses: ``(N, T)`` ℓ_t (summed squared error).
    """

    def __init__(self, noisy: torch.Tensor, noise_hat: torch.Tensor, losses: torch.Tensor):
        self.noisy, self.noise_hat, self.losses = noisy, noise_hat, losses

    def features(self, rows: torch.Tensor | slice, t: int) -> torch.Tensor:
        """``(b, 3, h, w)`` policy features ``[noisy, n̂_t, noisy − n̂_t]`` at exit ``t``."""
        noisy, noise = self.noisy[rows], self.noise_hat[rows, t]
        return torch.cat([noisy, noise, noisy - noise], dim=1)


@torch.no_grad()
def policy_data(model: DnCNN, noisy: torch.Tensor, noise: torch.Tensor, chunk: int = 64):
    """:class:`PolicyData` of ``model`` (eval mode) on same-size crops ``noisy``, ``noise``
    ``(N, 1, h, w)``."""
    model.eval()
    T = model.max_steps
    predicted = torch.zeros(noisy.shape[0], T, *noisy.shape[1:])
    for start in range(0, noisy.shape[0], chunk):
        rows = slice(start, start + chunk)
        state = model.start(noisy[rows])
        for t in range(T):
            state = model.advance(state, t)
            if model.has_exit(t):
                predicted[rows, t] = model.predict(state, t).cpu()
    losses = noise_losses(predicted, noise.cpu())
    return PolicyData(noisy.cpu(), predicted, losses)


def policy_hazards_on(policy: ImagePolicy, data: PolicyData, rows, valid: torch.Tensor):
    """``(b, T)`` hazard logits of ``policy`` at every exit (0 where ``valid`` is False), on
    the CPU beside ``data``; the policy itself may sit on another device."""
    device = next(policy.parameters()).device
    columns = []
    for t in range(data.noise_hat.shape[1]):
        if valid[t]:
            columns.append(policy(data.features(rows, t).to(device), t).float().cpu())
        else:
            columns.append(data.noisy.new_zeros(data.noisy[rows].shape[0]))
    return torch.stack(columns, dim=1)


def near_best_exit(
    losses: torch.Tensor, valid: torch.Tensor | None = None, tolerance_db: float = 0.0
) -> torch.Tensor:
    """``(N,)`` the hard stop target: each row's first valid exit whose loss is within
    ``tolerance_db`` of its least one, ℓ_t ≤ min_s ℓ_s · 10^(δ/10) (δ dB of PSNR, as ℓ is a
    squared error). δ = 0 is the official hard oracle argmin_t ℓ_t (the first on ties); δ > 0
    is a cost-aware variant (issue 17): stop as soon as further exits gain less than δ dB.
    ``losses`` is ``(N, T)``."""
    masked = losses.double()
    if valid is not None:
        masked = masked.masked_fill(~valid.bool().view(1, -1), math.inf)
    least = masked.amin(dim=1, keepdim=True)
    good = masked <= least * 10.0 ** (tolerance_db / 10.0)
    return good.int().argmax(dim=1)


def gain_regression(
    hazards: torch.Tensor,
    losses: torch.Tensor,
    costs: torch.Tensor,
    valid: torch.Tensor,
    price: float,
) -> torch.Tensor:
    """The gain head's loss on ``hazards, losses (B, T)``: ``hazards − log price`` regressed on
    −log g_t, g_t = max over later kept exits t' of (PSNR_t' − PSNR_t) / (c_t' − c_t), in dB
    per unit of ``costs`` (PSNR_t = const − 10·log10 ℓ_t per crop), so the rule
    "stop once the logit ≥ 0" stops where going on buys less than ``price`` dB per unit."""
    scores = hazards - math.log(price)
    return gain_loss(scores, 10 * torch.log10(losses), costs, valid, GAIN_FLOOR)


def train_policy(
    policy: ImagePolicy,
    train: PolicyData,
    val: list[PolicyData],
    valid: torch.Tensor,
    config: DenoisingConfig,
    context: JobContext,
    gain_costs: torch.Tensor | None = None,
) -> dict[str, Any]:
    """L2S stage II on a frozen DnCNN's cached trajectories: minimise −log q_φ(t*) over the
    kept exits, with t* = argmin_t ℓ_t (the official hard oracle, which needs no β; L2S Eq. 10
    with the one-hot q*) or, with ``policy.tolerance_db`` > 0, :func:`near_best_exit`.

    With ``gain_costs`` (``(T,)`` cumulative cost of stopping at each exit, in layers) the
    gain stage II instead (not in the paper; :func:`stopwise.objectives.gain_loss`): the score
    regresses on −log g_t, g_t the most dB of PSNR per layer that going on from exit t can still
    buy (the loss in dB, 10·log10 ℓ_t, is −PSNR up to a constant per crop), shifted by
    −log ``gain_price``; thresholding it is the cost-aware oracle at every price.

    The policy checkpoint and its learning-rate drop are chosen on the validation objective.
    Returns the schedule's summary."""
    stage = config.policy
    gain = gain_costs is not None
    order = EpochBatches(
        [torch.arange(train.noisy.shape[0])],
        stage.batch,
        context.stream_seed("gain-head-batches" if gain else "policy-batches"),
    )
    optimizer = torch.optim.Adam(policy.parameters(), lr=stage.lr)

    def objective(data: PolicyData, rows) -> torch.Tensor:
        hazards = policy_hazards_on(policy, data, rows, valid)
        losses = data.losses[rows]
        if gain:
            return gain_regression(hazards, losses, gain_costs, valid, config.gain_price)
        stop = StopTime(hazards, valid)
        return -stop.log_prob(near_best_exit(losses, valid, stage.tolerance_db)).mean()

    def val_score() -> dict[str, float]:
        with torch.no_grad():
            total = sum(float(objective(d, slice(None))) * len(d.losses) for d in val)
        return {"score": -total / sum(len(d.losses) for d in val)}

    schedule = ValidationSchedule(
        policy, optimizer, val_score, stage.steps, config.eval_every, config.patience
    )

    def loss(step: int):
        (rows,) = order(step)
        return objective(train, rows), {}

    policy.train()
    settings = context.loop_settings(log_every=max(1, min(50, stage.steps // 4)))
    name = "stage2-gain" if gain else "stage2"
    optimize(name, stage.steps, loss, optimizer, {"policy": policy}, settings, schedule)
    schedule.restore_best()
    policy.eval()
    criterion = (
        "minus validation gain-regression loss" if gain else "minus validation cross-entropy"
    )
    return {**schedule.summary(), "criterion": criterion}


# ---------------------------------------------------------------- classical baselines


def bm3d_denoise(noisy: torch.Tensor, sigma: float, profile: str = "np") -> torch.Tensor:
    """BM3D (``bm3d`` package) of one ``(1, H, W)`` noisy image given its true σ (0–255), on
    torch's thread count (the package defaults to every core, and its multi-threaded
    aggregation is not bit-reproducible)."""
    import bm3d
    from bm3d import profiles

    kinds = {
        "np": profiles.BM3DProfile,
        "vn": profiles.BM3DProfileVN,
        "high": profiles.BM3DProfileHigh,
    }
    if min(noisy.shape[-2:]) < BM3D_MIN_SIDE:  # the package segfaults on 11×11, refuses 8×8
        raise ValueError(
            f"BM3D needs images of at least {BM3D_MIN_SIDE}×{BM3D_MIN_SIDE} pixels; "
            f"got {tuple(noisy.shape[-2:])}"
        )
    settings = kinds[profile]()
    settings.num_threads = torch.get_num_threads()
    out = bm3d.bm3d(noisy[0].double().numpy(), sigma / 255.0, profile=settings)
    return torch.from_numpy(np.asarray(out, dtype=np.float32)).reshape(noisy.shape)


def nlm_denoise(noisy: torch.Tensor, sigma: float, h_factor: float) -> torch.Tensor:
    """scikit-image non-local means of one ``(1, H, W)`` image: h = ``h_factor`` · σ, 7×7
    patches, 11-pixel search distance, fast mode, σ given."""
    from skimage.restoration import denoise_nl_means

    s = sigma / 255.0
    out = denoise_nl_means(
        noisy[0].double().numpy(),
        h=h_factor * s,
        sigma=s,
        patch_size=7,
        patch_distance=11,
        fast_mode=True,
    )
    return torch.from_numpy(np.asarray(out, dtype=np.float32)).reshape(noisy.shape)
