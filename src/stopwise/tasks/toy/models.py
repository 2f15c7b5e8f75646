"""The toy's step model: a running mean with learnable gains, and its per-step loss."""

from __future__ import annotations

import torch
from torch import nn

from stopwise.steps import StepModel

__all__ = ["RunningMean", "squared_error"]


class RunningMean(StepModel):
    """Step t: m ← m + a_t (z_t − m), with learnable gains a_t (initialised to 1/(t+1), the
    plain running mean); tracks the running second moment so a policy can see the spread."""

    def __init__(self, steps: int):
        super().__init__()
        self.max_steps = steps
        self.gain_logits = nn.Parameter(
            torch.logit(1.0 / torch.arange(1.0, steps + 1).clamp(1.0001))
        )

    def start(self, observations):
        zeros = observations.new_zeros(observations.shape[0])
        return {"z": observations, "mean": zeros, "square": zeros}

    def advance(self, state, t):
        a = torch.sigmoid(self.gain_logits[t])
        z = state["z"][:, t]
        return {
            "z": state["z"],
            "mean": state["mean"] + a * (z - state["mean"]),
            "square": state["square"] + (z * z - state["square"]) / (t + 1),
        }

    def predict(self, state, t):
        return state["mean"]

    def features(self, state, t):
        spread = (state["square"] - state["mean"] ** 2).clamp_min(0).sqrt()
        return torch.stack([state["mean"], spread], dim=-1)


def squared_error(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` per-step squared error of predictions ``(B, T)`` against ``targets (B,)``."""
    return (predictions - targets.unsqueeze(-1)) ** 2
