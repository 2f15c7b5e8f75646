"""NMSE in dB, the measure of the L2S paper's Table 2, on whole sets and per SNR block.

    NMSE(dB) = 10 log10( mean_i ‖x̂_i − x*_i‖² / mean_i ‖x*_i‖² )

a ratio of means over the samples (not a mean of per-sample ratios), per SNR on that SNR's block.
"""

from __future__ import annotations

import math

import torch

from ...curves import best_fixed_mix
from ...inference import in_chunks
from ...steps import unroll

__all__ = [
    "squared_errors",
    "step_losses",
    "nmse_db",
    "nmse_columns",
    "error_columns",
    "column_names",
    "errors_at",
    "oracle_stop",
    "cost_aware_oracle_stop",
    "fixed_depth_hull",
    "support_oracle_errors",
    "per_step_squared_errors",
]


def squared_errors(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ‖x̂_i − x*_i‖² for ``estimate`` and ``target`` of shape ``(B, n)``."""
    if estimate.shape != target.shape:
        raise ValueError(
            f"estimate {tuple(estimate.shape)} and target {tuple(target.shape)} must match"
        )
    return ((estimate - target) ** 2).sum(-1)


def step_losses(predictions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` ℓ_t = Σ_coords (x_t − x*)², the per-step loss of stage I and LISTA training,
    for ``predictions (B, T, n)`` and ``target (B, n)``."""
    return ((predictions - target.unsqueeze(1)) ** 2).sum(-1)


def nmse_db(errors: torch.Tensor, energies: torch.Tensor) -> float:
    """10 log10(mean errors / mean energies) from per-sample ``‖x̂ − x*‖²`` and ``‖x*‖²`` ``(B,)``;
    +inf (the worst) when an estimate diverged (a non-finite error), −inf for no error at all."""
    total = float(energies.double().sum())
    if total <= 0:
        raise ValueError("NMSE is undefined: every target signal is zero")
    ratio = float(errors.double().sum()) / total
    if not math.isfinite(ratio):
        return math.inf
    return 10 * math.log10(ratio) if ratio > 0 else -math.inf


def column_names(snrs: list[float]) -> list[str]:
    """Result keys of :func:`nmse_columns`: ``"mixed"`` then ``"<snr>dB"`` per level."""
    return ["mixed", *(f"{snr:g}dB" for snr in snrs)]


def nmse_columns(
    estimate: torch.Tensor, target: torch.Tensor, snr: torch.Tensor, snrs: list[float]
) -> dict[str, float]:
    """NMSE(dB) over all samples (``"mixed"``) and on each SNR's block (``"20dB"``, ...)."""
    return error_columns(squared_errors(estimate, target), (target**2).sum(-1), snr, snrs)


def error_columns(
    errors: torch.Tensor, energies: torch.Tensor, snr: torch.Tensor, snrs: list[float]
) -> dict[str, float]:
    """:func:`nmse_columns` from per-sample ``‖x̂ − x*‖²`` and ``‖x*‖²`` ``(B,)``."""
    energies, snr = energies.to(errors.device), snr.to(errors.device)
    columns = {"mixed": nmse_db(errors, energies)}
    for level in snrs:
        rows = snr == level
        if not bool(rows.any()):
            raise ValueError(
                f"no sample has SNR {level:g} dB; levels present: {snr.unique().tolist()}"
            )
        columns[f"{level:g}dB"] = nmse_db(errors[rows], energies[rows])
    return columns


def errors_at(step_errors: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ‖x_{index} − x*‖² from per-step errors ``(B, T)`` at 0-based ``index (B,)``."""
    return step_errors.gather(1, index.long().to(step_errors.device).view(-1, 1)).squeeze(1)


def oracle_stop(step_errors: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(N,)`` 0-based index of each row's best valid exit in hindsight (needs x*): the bound a
    stopping policy can approach. ``step_errors (N, T)``, ``valid (T,)`` bool."""
    return step_errors.masked_fill(~valid.to(step_errors.device), math.inf).argmin(dim=1)


def cost_aware_oracle_stop(step_errors: torch.Tensor, penalty: float) -> torch.Tensor:
    """``(N,)`` 0-based first minimiser of ℓ_t + λ c_t per row (needs x*): the depth a per-sample
    budget at price λ per step (c_t = t + 1) would choose. Swept over λ it traces the best curve
    any stopping policy can reach on these errors ``(N, T)``."""
    costs = torch.arange(1, step_errors.shape[1] + 1, dtype=torch.float64)
    return (step_errors.double() + penalty * costs.to(step_errors.device)).argmin(dim=1)


def fixed_depth_hull(nmse_per_depth: list[float], mean_steps: float) -> float:
    """NMSE(dB) of the best mix of two fixed depths with mean depth at most ``mean_steps``
    (:func:`stopwise.curves.best_fixed_mix`, the rule of every task), mixed in linear NMSE: a
    ratio of means over the same signals, so the mix's error is the linear mix of the depths'.
    ``nmse_per_depth[t]``: the NMSE(dB) of stopping every sample after step t (depth t + 1)."""
    T = len(nmse_per_depth)
    if not 1 - 1e-9 <= mean_steps <= T + 1e-9:
        raise ValueError(f"mean_steps must lie in [1, {T}]; got {mean_steps}")
    linear = [{"depth": t + 1, "nmse": 10 ** (v / 10)} for t, v in enumerate(nmse_per_depth)]
    best = best_fixed_mix(linear, mean_steps, "nmse", higher_is_better=False, x="depth")
    return 10 * math.log10(best)


def support_oracle_errors(A: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` ‖x̂ − x*‖² of least squares on each sample's true support (needs x*): x̂ is zero
    off the support and argmin ‖A_S x_S − y‖ on it. No method that must find the support can
    beat it on average. ``A (m, n)``, ``y (N, m)``, ``x (N, n)``; float64, one solve per row."""
    A64, errors = A.double().cpu(), torch.zeros(x.shape[0], dtype=torch.float64)
    for i, (y_i, x_i) in enumerate(zip(y.double().cpu(), x.double().cpu(), strict=True)):
        support = x_i.nonzero().flatten()
        if support.numel():
            solution = torch.linalg.lstsq(A64[:, support], y_i.unsqueeze(-1)).solution
            errors[i] = ((solution.squeeze(-1) - x_i[support]) ** 2).sum()
    return errors


def per_step_squared_errors(model, y: torch.Tensor, target: torch.Tensor, chunk: int = 1000):
    """``(B, T)`` ‖x_t − x*‖² of every step of ``model`` on ``y (B, m)``, in chunks of rows."""

    def errors(rows: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return step_losses(unroll(model, rows[0]).predictions, rows[1])

    return in_chunks(errors, (y, target), chunk)
