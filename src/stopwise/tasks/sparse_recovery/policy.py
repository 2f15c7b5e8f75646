"""The stage-II stopping policy of LISTA-stop: an MLP on ``[y, y − A x_t, x_t, step encoding]``.

The features are the step model's (``(B, 2m + n)``, see :mod:`.models`). A ReLU MLP on raw
vectors cannot easily form the norms that reveal the noise level (‖y − A x_t‖ levels off at the
noise norm), so the policy also feeds the MLP four label-free summaries of the same features,
log(‖y‖²/m), log(‖r‖²/m), log(‖x_t‖²/n + ε) and log(‖r‖²/‖y‖²); ``summaries=False`` drops them.
"""

from __future__ import annotations

import torch
from torch import nn

from ...policies import MLPPolicy

__all__ = ["StopPolicy"]

_EPS = 1e-12


class StopPolicy(nn.Module):
    """Hazard logits ``(B,)`` from features ``(B, 2m + n)`` at 0-based step ``t``.

    Args:
        m, n: the problem's sizes (features are split into y, r, x).
        max_steps: T, for the one-hot step encoding.
        hidden: hidden widths of the MLP.
        summaries: append the four log-norm summaries to the raw features.
        init_bias: initial hazard logit (negative: rarely stop at first).
    """

    def __init__(
        self,
        m: int,
        n: int,
        max_steps: int,
        hidden: tuple[int, ...] = (64,),
        summaries: bool = True,
        init_bias: float = -3.0,
    ):
        super().__init__()
        self.m, self.n, self.summaries = m, n, summaries
        width = 2 * m + n + (4 if summaries else 0)
        self.mlp = MLPPolicy(width, max_steps, hidden=tuple(hidden), init_bias=init_bias)

    def summary(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, 4)`` log-norm summaries of ``features (B, 2m + n)``."""
        y, r, x = features.split([self.m, self.m, self.n], dim=-1)
        y2, r2, x2 = (y * y).sum(-1), (r * r).sum(-1), (x * x).sum(-1)
        return torch.stack(
            [
                torch.log(y2 / self.m + _EPS),
                torch.log(r2 / self.m + _EPS),
                torch.log(x2 / self.n + _EPS),
                torch.log((r2 + _EPS) / (y2 + _EPS)),
            ],
            dim=-1,
        )

    def forward(self, features: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        expected = 2 * self.m + self.n
        if features.dim() != 2 or features.shape[1] != expected:
            raise ValueError(
                f"policy features must have shape (B, 2m + n = {expected}); "
                f"got {tuple(features.shape)}"
            )
        if self.summaries:
            features = torch.cat([features, self.summary(features)], dim=-1)
        return self.mlp(features, t)

    def macs(self) -> int:
        """Multiply-adds per sample and step of the MLP (the summaries add ~2m + n)."""
        return sum(
            layer.in_features * layer.out_features
            for layer in self.mlp.net
            if isinstance(layer, nn.Linear)
        ) + (2 * self.m + self.n if self.summaries else 0)
