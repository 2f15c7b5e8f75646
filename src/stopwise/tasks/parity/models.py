"""The one step model every method trains: a GRU cell that reads the whole parity vector at every
step, with an output head and a halting head (Graves 2016, §2 and §3.1).

Step t (0-based) runs ``h_t = GRUCell([x, 1{t = 0}], h_{t−1})`` from ``h_{−1} = 0``; the output head
gives the parity logit ``y_t = w_y·h_t + b_y`` and the halting head a stop logit ``z_t = w_h·h_t +
b_h``. What ``z_t`` means depends on the method (an ACT halting unit, a PonderNet or L2S hazard, a
thesis posterior increment); :mod:`.methods` says which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...inference import Rule
from ...policies import register_policy
from ...steps import StepModel

__all__ = ["HaltingHead", "ParityGRU", "MeanFieldACT", "ACTRule", "step_losses", "posterior_logits"]


@register_policy("parity-halting", lambda: (HaltingHead(8, bias=-1.0), torch.randn(6, 8), 4))
class HaltingHead(nn.Module):
    """Linear stop logit of the hidden state: ``(B, H) -> (B,)``. Called as a policy
    ``head(features, t)``; it ignores ``t`` (the state carries everything the head sees)."""

    def __init__(self, hidden: int, bias: float | None = None):
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        if bias is not None:
            nn.init.constant_(self.linear.bias, bias)

    def forward(self, features: torch.Tensor, t: int | torch.Tensor = 0) -> torch.Tensor:
        return self.linear(features).squeeze(-1)


class ParityGRU(StepModel):
    """GRU step model for parity vectors of ``n`` elements, at most ``max_steps`` steps.

    State: ``{"x": (B, n), "h": (B, hidden)}``. ``predict`` gives ``(B,)`` parity logits and
    ``features`` the hidden state ``(B, hidden)``, which is what the halting head reads.
    """

    def __init__(self, n: int, hidden: int, max_steps: int, halting_bias: float | None = None):
        super().__init__()
        if min(n, hidden, max_steps) < 1:
            raise ValueError(
                f"n, hidden and max_steps must be >= 1; got n={n}, hidden={hidden}, "
                f"max_steps={max_steps}"
            )
        self.n, self.hidden, self.max_steps = n, hidden, max_steps
        self.cell = nn.GRUCell(n + 1, hidden)
        self.output = nn.Linear(hidden, 1)
        self.halting = HaltingHead(hidden, halting_bias)

    def start(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 2 or x.shape[-1] != self.n:
            raise ValueError(
                f"expected parity vectors of shape (B, {self.n}); got {tuple(x.shape)}"
            )
        return {"x": x, "h": x.new_zeros(x.shape[0], self.hidden)}

    def advance(self, state: dict[str, torch.Tensor], t: int) -> dict[str, torch.Tensor]:
        x = state["x"]
        flag = x.new_full((x.shape[0], 1), 1.0 if t == 0 else 0.0)
        return {"x": x, "h": self.cell(torch.cat([x, flag], dim=-1), state["h"])}

    def predict(self, state: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        return self.output(state["h"]).squeeze(-1)

    def features(self, state: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        return state["h"]


class MeanFieldACT(StepModel):
    """ACT's mean-field output as a step model, so that :func:`run_adaptive` can run ACT.

    Wraps a :class:`ParityGRU`. Its prediction after step t is the output ACT would emit if it
    halted at t (Graves Eqs. 10–11): ``Σ_{n<t} h_n y_n + R_t y_t`` with ``R_t = 1 − Σ_{n<t} h_n``,
    where ``h_n = σ(z_n)`` are the halting units. The running sums are part of the state; pair it
    with :class:`ACTRule` and the model's halting head.
    """

    def __init__(self, model: ParityGRU):
        super().__init__()
        self.model = model
        self.max_steps = model.max_steps

    def start(self, x):
        state = self.model.start(x)  # checks the shape of x
        zeros = x.new_zeros(x.shape[0])
        return {**state, "halted": zeros, "output": zeros}

    def advance(self, state, t):
        halted, output = state["halted"], state["output"]
        if t > 0:  # fold step t−1 into the running sums
            h = torch.sigmoid(self.model.halting(state["h"]))
            halted = halted + h
            output = output + h * self.model.predict(state, t - 1)
        return {**self.model.advance(state, t), "halted": halted, "output": output}

    def predict(self, state, t):
        return state["output"] + (1 - state["halted"]) * self.model.predict(state, t)

    def features(self, state, t):
        return state["h"]


class ACTRule(Rule):
    """ACT's halting: stop at the first step where Σ_{n≤t} σ(z_n) ≥ 1 − ε (Graves Eq. 8)."""

    def __init__(self, eps: float = 0.01):
        if not 0 < eps < 1:
            raise ValueError(f"ACT needs 0 < eps < 1; got {eps}")
        self.eps = eps

    def init_carry(self, batch, num_steps, device):
        return torch.zeros(batch, device=device)  # Σ of halting units so far

    def decide(self, hazard_logits, t, carry):
        carry = carry + torch.sigmoid(hazard_logits)
        return carry >= 1 - self.eps, carry

    def __repr__(self):
        return f"ACTRule(eps={self.eps:g})"


def step_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` binary cross-entropy of per-step logits ``(B, T)`` against targets ``y (B,)``."""
    return F.binary_cross_entropy_with_logits(
        logits, y.unsqueeze(-1).expand_as(logits), reduction="none"
    )


def posterior_logits(halting_logits: torch.Tensor) -> torch.Tensor:
    """The thesis posterior's logits ``a_t = −Σ_{τ<t} z_τ`` (``(B, T)``, ``a_0 = 0``).

    The stop-time posterior under horizon H is softmax_{t≤H}(a_t). Since ``a_{t+1} − a_t = −z_t``
    is known after step t, "z_t ≥ 0" says that step t+1 has no more posterior mass than step t —
    which is what makes the greedy stopping rule causal (see :mod:`.methods`).
    """
    return -F.pad(torch.cumsum(halting_logits[:, :-1], dim=-1), (1, 0))
