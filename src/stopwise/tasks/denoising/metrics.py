"""The denoising measures: PSNR and SSIM of the clamped estimate, per-exit tables of a DnCNN on
a noisy set, and means per noise level.

PSNR = 10 log10(1 / MSE) with data range 1, of clamp(estimate, 0, 1) against the clean image
(the official ``batch_PSNR``: skimage's ``peak_signal_noise_ratio`` on the clamped estimate);
SSIM is scikit-image's ``structural_similarity`` with data range 1 (7×7 uniform window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .data import NoisySet
from .models import DnCNN

__all__ = ["psnr", "ssim", "by_sigma", "ExitTable", "exit_table", "estimate"]


def estimate(noisy: torch.Tensor, predicted_noise: torch.Tensor) -> torch.Tensor:
    """The clamped clean estimate clamp(noisy − predicted noise, 0, 1)."""
    return (noisy - predicted_noise).clamp(0.0, 1.0)


def psnr(estimate: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``(n,)`` PSNR in dB (data range 1) of ``(n, 1, H, W)`` estimates, clamped to [0, 1]."""
    error = (estimate.double().clamp(0.0, 1.0) - clean.double()) ** 2
    return (-10.0 * torch.log10(error.flatten(1).mean(-1))).float()


def ssim(estimate: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``(n,)`` SSIM (data range 1) of ``(n, 1, H, W)`` estimates, clamped to [0, 1]."""
    from skimage.metrics import structural_similarity

    values = [
        structural_similarity(
            e[0].double().clamp(0.0, 1.0).cpu().numpy(),
            c[0].double().cpu().numpy(),
            data_range=1.0,
        )
        for e, c in zip(estimate, clean, strict=True)
    ]
    return torch.tensor(values, dtype=torch.float32)


def by_sigma(values, sigma: torch.Tensor, sigmas: list[float]) -> list[float]:
    """Means of per-item ``values (N,)`` for each noise level of ``sigmas`` (NaN if none)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    out = []
    for s in sigmas:
        rows = sigma == float(s)
        out.append(float(values[rows].mean()) if bool(rows.any()) else math.nan)
    return out


@dataclass
class ExitTable:
    """A DnCNN on every item of a noisy set, at every exit with a head.

    psnr, loss: ``(N, T)`` (NaN at exits without a head); loss is the oracle's ℓ_t, the summed
    squared error of the unclamped estimate. ``last`` and ``best``: per item, the clamped
    ``(1, H, W)`` estimate at the last exit and at its best-PSNR exit (None unless kept).
    """

    psnr: torch.Tensor
    loss: torch.Tensor
    last: list[torch.Tensor]
    best: list[torch.Tensor]
    hazards: torch.Tensor | None = None

    def best_index(self, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``(N,)`` each item's best-PSNR exit among ``valid`` ones (the oracle stop)."""
        table = self.psnr.nan_to_num(-math.inf)
        if valid is not None:
            table = table.masked_fill(~valid.bool().view(1, -1), -math.inf)
        return table.argmax(dim=1)


@torch.no_grad()
def exit_table(
    model: DnCNN,
    data: NoisySet,
    keep_images: bool = False,
    policy=None,
    valid: torch.Tensor | None = None,
) -> ExitTable:
    """Run ``model`` (eval mode) over ``data`` group by group; PSNR and ℓ at every headed exit.

    With ``keep_images`` the estimates at the last and the best exit of every item are kept
    (``ExitTable.last`` / ``best``: lists of ``(1, H, W)`` tensors in item order; the best among
    the exits ``valid`` marks, default every headed exit, as ``best_index(valid)``). With a
    ``policy`` its hazard logits are recorded at those exits, from the same features adaptive
    inference gives it.
    """
    model.eval()
    T = model.max_steps
    psnr_table = torch.full((data.size, T), math.nan)
    loss_table = torch.full((data.size, T), math.nan)
    last: list = [None] * data.size
    best: list = [None] * data.size
    hazards = torch.zeros(data.size, T) if policy is not None else None
    for index, clean, noisy in data.groups:
        state = model.start(noisy)
        best_psnr = torch.full((len(index),), -math.inf)
        for t in range(T):
            state = model.advance(state, t)
            if not model.has_exit(t):
                continue
            noise, features = model.observe(state, t)
            if policy is not None and (valid is None or bool(valid[t])):
                hazards[index, t] = policy(features, t).float().cpu()
            raw = noisy - noise
            psnr_t = psnr(raw, clean).cpu()
            psnr_table[index, t] = psnr_t
            loss_table[index, t] = ((raw - clean) ** 2).flatten(1).sum(-1).float().cpu()
            if keep_images and (valid is None or bool(valid[t])):
                better = psnr_t > best_psnr
                best_psnr = torch.where(better, psnr_t, best_psnr)
                for row in better.nonzero().flatten().tolist():
                    best[int(index[row])] = raw[row].clamp(0, 1).cpu()
            if keep_images and t == T - 1:
                for row in range(len(index)):
                    last[int(index[row])] = raw[row].clamp(0, 1).cpu()
    return ExitTable(psnr_table, loss_table, last, best, hazards)
