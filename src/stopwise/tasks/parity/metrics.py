"""Measurements of one inference rule on a parity test set: accuracy (overall, per k,
interpolation / extrapolation), steps used, and whether compute follows difficulty."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...stats import spearman

__all__ = ["evaluate_rule", "share_by_k", "SUCCESS_ACCURACY"]

SUCCESS_ACCURACY = 0.99  # a seed "succeeds" when its interpolation accuracy exceeds this


def evaluate_rule(
    logits: torch.Tensor,
    stop_index: torch.Tensor,
    y: torch.Tensor,
    k: torch.Tensor,
    train_k: tuple[int, int],
) -> dict[str, Any]:
    """Accuracy and steps of one rule on one test set, from ``(B,)`` parity logits, 0-based stop
    steps, targets and k; vectors whose k lies in ``train_k`` count as interpolation, the others
    as extrapolation (None without such vectors). ``spearman`` (steps vs k) is None when the
    steps are constant; ``per_k`` is a list of ``{"k", "count", "accuracy", "mean_steps"}``."""
    correct = ((logits > 0).float() == y).cpu().numpy()
    steps = (stop_index + 1).cpu().numpy().astype(np.float64)
    k = k.cpu().numpy()
    inside = (k >= train_k[0]) & (k <= train_k[1])

    def mean(values, rows):
        return float(values[rows].mean()) if rows.any() else None

    rho = spearman(steps, k)
    return {
        "accuracy": float(correct.mean()),
        "interpolation": mean(correct, inside),
        "extrapolation": mean(correct, ~inside),
        "mean_steps": float(steps.mean()),
        "spearman": rho if math.isfinite(rho) else None,
        "per_k": _per_k(k, accuracy=correct, mean_steps=steps),
    }


def share_by_k(flags: torch.Tensor, k: torch.Tensor) -> dict[str, Any]:
    """The share of rows where ``flags (B,)`` (bool) holds, overall and per value of ``k (B,)``:
    ``{"inputs", "overall", "per_k": [{"k", "count", "share"}]}``."""
    flags, k = flags.cpu().numpy().astype(np.float64), k.cpu().numpy()
    return {
        "inputs": int(len(k)),
        "overall": float(flags.mean()),
        "per_k": _per_k(k, share=flags),
    }


def _per_k(k: np.ndarray, **columns: np.ndarray) -> list[dict[str, Any]]:
    """``[{"k", "count", <column>: its mean over the rows of that k, ...}]`` per value of ``k``."""
    return [
        {
            "k": int(v),
            "count": int((k == v).sum()),
            **{name: float(values[k == v].mean()) for name, values in columns.items()},
        }
        for v in np.unique(k)
    ]
