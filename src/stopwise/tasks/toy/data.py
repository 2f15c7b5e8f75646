"""Noisy streams: a latent μ ~ N(0, 1) observed T times with noise σ drawn per stream."""

from __future__ import annotations

import torch

__all__ = ["sample_streams"]


def sample_streams(
    batch: int, steps: int, noise_levels: list[float], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(observations (B, T), target μ (B,))`` with σ drawn uniformly from ``noise_levels``."""
    mu = torch.randn(batch, generator=generator)
    levels = torch.tensor(noise_levels)
    sigma = levels[torch.randint(len(levels), (batch,), generator=generator)]
    noise = torch.randn(batch, steps, generator=generator) * sigma.unsqueeze(-1)
    return mu.unsqueeze(-1) + noise, mu
