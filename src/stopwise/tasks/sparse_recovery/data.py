"""The sparse-recovery problem of the L2S paper (Chen et al. 2020, §5.1), generated from a seed.

    y = A x* + ε,   A ∈ R^{m×n} (m = 250, n = 500)

* ``A``: entries N(0, 1/m); its singular values are then replaced by ``logspace(0, log10(1/κ), m)``
  (condition number κ = 5) rescaled so that their squares sum to ``n``; finally every column is
  normalised to unit ℓ2 norm. One ``A`` per seed, from its ``sensing-matrix`` stream.
* ``x*``: support Bernoulli(p = 0.1), non-zero values N(0, 1).
* ``ε``: per sample, i.i.d. N(0, σ²) with σ = std(A x*) · 10^(−SNR/20), the (population) standard
  deviation taken over that sample's m entries. Training SNRs are drawn uniformly from
  {20, 30, 40} dB at every step; validation and test sets hold a fixed number of samples per SNR,
  in blocks of increasing SNR, from the seed's ``validation`` and ``test`` streams.

All tensors are batch-first: ``x (B, n)``, ``y (B, m)``, ``snr (B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ...selection import Heldout

__all__ = [
    "SparseBatch",
    "target_singular_values",
    "with_singular_values",
    "sensing_matrix",
    "sample_signals",
    "add_noise",
    "sample_batch",
    "fixed_split",
    "SparseProblem",
    "make_problem",
]


class SparseBatch(NamedTuple):
    """``y (B, m)`` measurements, ``x (B, n)`` the sparse signals x*, ``snr (B,)`` in dB."""

    y: torch.Tensor
    x: torch.Tensor
    snr: torch.Tensor


def target_singular_values(m: int, n: int, condition: float) -> torch.Tensor:
    """``(m,)`` float64: ``logspace(0, log10(1/condition), m)`` rescaled so Σ σ_i² = n."""
    s = torch.logspace(0.0, math.log10(1.0 / condition), m, dtype=torch.float64)
    return s * math.sqrt(n / float((s * s).sum()))


def with_singular_values(matrix: torch.Tensor, singular_values: torch.Tensor) -> torch.Tensor:
    """``U diag(s) Vᵀ`` from the thin SVD ``U S Vᵀ`` of ``matrix (m, n)``, m <= n (float64)."""
    U, _, Vh = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    return (U * singular_values.to(torch.float64)) @ Vh


def sensing_matrix(m: int, n: int, condition: float, generator: torch.Generator) -> torch.Tensor:
    """The ``(m, n)`` float32 sensing matrix of the protocol (module docstring)."""
    gaussian = torch.randn(m, n, generator=generator, dtype=torch.float64) / math.sqrt(m)
    A = with_singular_values(gaussian, target_singular_values(m, n, condition))
    return (A / A.norm(dim=0, keepdim=True)).to(torch.float32)


def sample_signals(batch: int, n: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """``(batch, n)`` x*: support Bernoulli(``sparsity``), non-zero values N(0, 1)."""
    support = torch.rand(batch, n, generator=generator) < sparsity
    return torch.randn(batch, n, generator=generator) * support


def add_noise(
    clean: torch.Tensor, snr_db: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """``clean (B, m) + ε`` with ε_i ~ N(0, σ_i²), σ_i = std(clean_i) · 10^(−snr_i/20)."""
    sigma = clean.std(dim=-1, correction=0, keepdim=True) * 10.0 ** (-snr_db.unsqueeze(-1) / 20.0)
    return clean + sigma * torch.randn(clean.shape, generator=generator)


def sample_batch(
    A: torch.Tensor,
    batch: int,
    sparsity: float,
    snrs: list[float] | torch.Tensor,
    generator: torch.Generator,
) -> SparseBatch:
    """Fresh training samples with each sample's SNR drawn uniformly from ``snrs``."""
    levels = torch.as_tensor(snrs, dtype=torch.float32)
    snr = levels[torch.randint(len(levels), (batch,), generator=generator)]
    x = sample_signals(batch, A.shape[1], sparsity, generator)
    return SparseBatch(add_noise(x @ A.T, snr, generator), x, snr)


def fixed_split(
    A: torch.Tensor, per_snr: int, sparsity: float, snrs: list[float], generator: torch.Generator
) -> SparseBatch:
    """An evaluation set: ``per_snr`` samples at each SNR, in blocks of ``snrs`` order."""
    snr = torch.as_tensor(snrs, dtype=torch.float32).repeat_interleave(per_snr)
    x = sample_signals(snr.shape[0], A.shape[1], sparsity, generator)
    return SparseBatch(add_noise(x @ A.T, snr, generator), x, snr)


@dataclass
class SparseProblem:
    """The sensing matrix ``A (m, n)`` and validation split on ``device``, the test split held
    out (opened once, after every choice), and the training sampler (fresh samples each call)."""

    A: torch.Tensor
    val: SparseBatch
    test: Heldout[SparseBatch]
    sparsity: float
    snrs: list[float]

    def __post_init__(self):
        # Training batches are drawn on the CPU (the same draws on any device): A's host copy
        # is made once, not on every batch.
        self._host_A = self.A.cpu()

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y (batch, m), x (batch, n))`` on A's device, SNR drawn per sample."""
        drawn = sample_batch(self._host_A, batch, self.sparsity, self.snrs, generator)
        return drawn.y.to(self.A.device), drawn.x.to(self.A.device)


def make_problem(
    problem, generator: Callable[[str], torch.Generator], device: torch.device | str = "cpu"
) -> SparseProblem:
    """The problem of config group ``problem`` (m, n, condition, sparsity, snrs, per_snr), its
    randomness from the named streams ``generator(name)`` gives (``context.generator``)."""
    A = sensing_matrix(problem.m, problem.n, problem.condition, generator("sensing-matrix"))
    args = (A, problem.per_snr, problem.sparsity, problem.snrs)

    def split(name: str) -> SparseBatch:
        return SparseBatch(*(t.to(device) for t in fixed_split(*args, generator(name))))

    return SparseProblem(
        A.to(device), split("validation"), Heldout(split("test")), problem.sparsity, problem.snrs
    )
