"""The learners MAML adapts, one inner step of adaptation written with ``torch.func``, the
adapted learner as a step model (one step = one inner SGD update of every task's own weights),
the set-level policy of MAML-stop and the hand-made support-loss stop.

A learner is an ``nn.Module`` whose ``forward(x) -> (outputs, features)`` gives the predictions
and the penultimate features; MAML calls it through ``torch.func.functional_call`` with each
task's own parameters, so nothing is patched in place.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ...policies import register_policy, step_encoding
from ...steps import StepModel, state_batch_size

__all__ = [
    "Conv4",
    "SineMLP",
    "task_loss",
    "example_losses",
    "summary_dim",
    "measure_task",
    "AdaptedLearner",
    "SetPolicy",
    "SupportLossStop",
    "support_groups",
    "make_learner",
    "STAT_NAMES",
]


class Conv4(nn.Module):
    """The Conv4 of MAML: 4 × [3×3 conv (``width`` filters), BatchNorm with batch statistics
    (``track_running_stats=False``: the statistics of the batch at hand, support or query, in
    training and at test time), ReLU, 2×2 max-pool], then a linear layer to ``ways`` logits.

    The convolutions have no bias: a batch-statistics BatchNorm removes it (its gradient is 0).
    Input ``(n, 1, 28, 28)`` → logits ``(n, ways)`` and features ``(n, width · s²)`` (s = 1 at 28).
    """

    def __init__(self, ways: int, width: int = 64, size: int = 28, channels: int = 1):
        super().__init__()
        blocks, cin = [], channels
        for _ in range(4):
            blocks += [
                nn.Conv2d(cin, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width, track_running_stats=False),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            cin = width
            size //= 2
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width * size * size, ways)
        self.feature_dim = width * size * size

    # BatchNorm couples the examples of a batch: padding a support set would change the others.
    padding_is_exact = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).flatten(1)
        return self.head(features), features


class SineMLP(nn.Module):
    """Finn et al.'s regression learner: 1 → 40 → 40 → 1 with ReLU (widths ``hidden``).
    Input ``(n, 1)`` → outputs ``(n,)`` and features ``(n, hidden[-1])``."""

    def __init__(self, hidden: tuple[int, ...] = (40, 40)):
        super().__init__()
        layers, width = [], 1
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        self.feature_dim = width

    # Examples do not interact: a padded support set with a mask gives the unpadded numbers.
    padding_is_exact = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features).squeeze(-1), features


def example_losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (class logits ``(..., n, C)``, labels ``(..., n)``) or squared
    error (outputs and targets ``(..., n)``): ``(..., n)``."""
    if outputs.dim() == targets.dim() + 1:
        log_p = torch.log_softmax(outputs, dim=-1)
        return -log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (outputs - targets) ** 2


def task_loss(
    outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of :func:`example_losses` over the n examples, ``(...)``; with ``mask (..., n)``
    the mean over the examples the mask keeps (padding excluded)."""
    losses = example_losses(outputs, targets)
    if mask is None:
        return losses.mean(-1)
    return (losses * mask).sum(-1) / mask.sum(-1)


# ---------------------------------------------------------------- one task at a time

STAT_NAMES = ("log_support_loss", "support_fit", "query_confidence", "log_support_size")


def summary_dim(feature_dim: int) -> int:
    """Width of the policy features: two set summaries of ``feature_dim`` plus the stats."""
    return 2 * feature_dim + len(STAT_NAMES)


def _set_stats(
    support_out: torch.Tensor,
    support_y: torch.Tensor,
    query_out: torch.Tensor,
    loss: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """``(4,)`` label-free (for the query) set statistics of the learner at one step:
    log support loss; support fit (accuracy, or −log(1 + MSE) for regression); query confidence
    (mean max-probability, or 0 for regression); log support size (``mask (n,)`` marks the
    real support examples)."""
    if support_out.dim() == support_y.dim() + 1:
        correct = (support_out.argmax(-1) == support_y).to(loss.dtype)
        fit = (correct * mask).sum() / mask.sum()
        confidence = torch.softmax(query_out, -1).amax(-1).mean()
    else:
        fit = -torch.log1p(loss)
        confidence = torch.zeros((), dtype=loss.dtype)
    return torch.stack([torch.log(loss + 1e-6), fit, confidence, torch.log(mask.sum())])


def measure_task(
    learner: nn.Module,
    params: dict[str, torch.Tensor],
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    want_grad: bool = True,
    want_query: bool = True,
    support_mask: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One task's learner at parameters ``params``: support loss, its gradient (``want_grad``;
    differentiable in ``params`` when the caller's autograd records, i.e. second-order MAML),
    the query outputs (``want_query``) and the policy features. ``support_mask (n,)``: which
    support rows are real (a padded set; only for learners whose examples do not interact).

    Policy features ``(2W + 4,)``: DeepSets summaries mean_i softplus(h_i) of the support and
    query penultimate features (each ``(W,)``; the policy applies its linear map) and
    :func:`_set_stats`, clamped to ±1e4 (NaN → 0). They are detached (the official code's
    policy sees detached features).
    Returns ``{"support_loss", "features"}`` and, when asked for, ``"grad"`` and ``"query_out"``.
    """
    mask = (
        torch.ones(support_x.shape[0], dtype=support_x.dtype)
        if support_mask is None
        else support_mask.to(support_x.dtype)
    )

    def support_objective(p):
        outputs, hidden = functional_call(learner, p, (support_x,))
        loss = task_loss(outputs, support_y, None if support_mask is None else mask)
        return loss, (outputs, hidden)

    if want_grad:
        grads, (loss, (support_out, support_h)) = grad_and_value(support_objective, has_aux=True)(
            params
        )
    else:
        grads = None
        loss, (support_out, support_h) = support_objective(params)
    query_out, query_h = (
        functional_call(learner, params, (query_x,)) if want_query else (None, None)
    )
    with torch.no_grad():
        summary_s = (F.softplus(support_h) * mask.unsqueeze(-1)).sum(0) / mask.sum()
        summary_q = (
            F.softplus(query_h).mean(0) if query_h is not None else torch.zeros_like(summary_s)
        )
        stats = _set_stats(
            support_out,
            support_y,
            query_out if query_out is not None else support_out,
            loss.detach(),
            mask,
        )
        # A diverged inner loop gives infinite summaries: NaN → 0, everything within ±1e4.
        features = torch.nan_to_num(torch.cat([summary_s, summary_q, stats]), nan=0.0)
        features = features.clamp(-1e4, 1e4).detach()
    out = {"support_loss": loss, "features": features}
    if grads is not None:
        out["grad"] = grads
    if query_out is not None:
        out["query_out"] = query_out
    return out


# ---------------------------------------------------------------- tasks in a batch


def support_groups(
    learner: nn.Module, support_n: torch.Tensor, width: int
) -> list[tuple[torch.Tensor, int, torch.Tensor | None]]:
    """How a batch of tasks is adapted together: ``[(rows, n, mask)]``. Tasks of equal support
    size n form a group (``mask`` None); a learner whose examples do not interact
    (``padding_is_exact``) takes every task in one group, its supports padded to ``width``
    with ``mask (G, width)`` marking the real rows."""
    if getattr(learner, "padding_is_exact", False):
        mask = torch.arange(width).unsqueeze(0) < support_n.unsqueeze(1)
        return [(torch.arange(support_n.shape[0]), width, mask)]
    return [((support_n == n).nonzero().squeeze(1), int(n), None) for n in support_n.unique()]


class AdaptedLearner(StepModel):
    """MAML's adaptation as a step model over a batch of tasks: step t (0-based) is inner SGD
    update t + 1 of every task's own weights, θ_{t+1} = θ_t − α ∇L_support(θ_t)
    (Finn et al. 2017, Eq. 1), and the prediction after step t is the query output at θ_{t+1}.

    State (batch-first, one row per task): the inputs (support padded to the largest set,
    ``support_n``), each task's parameters, the support gradient at them (for the next update),
    the query outputs and the policy features (:func:`measure_task`). A task's support forward
    at θ_t gives the features for the decision at step t and the gradient of update t + 1, so a
    task that stops after step t has run t + 1 updates and one extra support and query forward
    (at θ_0, measured so that every step's state has the same shapes).

    ``vmap``: adapt the tasks of equal support size together with ``torch.func.vmap`` instead of
    one at a time (faster for small MLPs, slower for the Conv4 on CPU: see docs/few_shot.md).
    """

    def __init__(self, learner: nn.Module, inner_lr: float, steps: int, vmap: bool = False):
        super().__init__()
        self.learner = learner
        self.inner_lr, self.max_steps, self.use_vmap = inner_lr, steps, vmap

    def start(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        B = state_batch_size(inputs)
        params = {
            name: p.detach().unsqueeze(0).expand(B, *p.shape).clone()
            for name, p in self.learner.named_parameters()
        }
        # The query is measured at θ_0 too (never predicted from), so every step's state has the
        # same keys and shapes.
        return {**inputs, "params": params, **self._measure(inputs, params, 0)}

    def advance(self, state: dict[str, Any], t: int) -> dict[str, Any]:
        params = {
            name: p - self.inner_lr * state["grad"][name] for name, p in state["params"].items()
        }
        inputs = {k: state[k] for k in ("support_x", "support_y", "support_n", "query_x")}
        measured = self._measure(inputs, params, t + 1)
        return {**inputs, "params": params, **measured}

    def predict(self, state: dict[str, Any], t: int) -> torch.Tensor:
        return state["query_out"]

    def features(self, state: dict[str, Any], t: int) -> torch.Tensor:
        return state["features"]

    def _measure(self, inputs, params, updates_done: int) -> dict[str, Any]:
        """Measure every task at its ``params`` (after ``updates_done`` updates), by support
        size group; the gradient is skipped after the last update."""
        want_grad = updates_done < self.max_steps
        B = state_batch_size(inputs)
        pieces: list[tuple[torch.Tensor, dict[str, Any]]] = []
        width = inputs["support_x"].shape[1]
        for rows, n, mask in support_groups(self.learner, inputs["support_n"], width):
            sx, sy = inputs["support_x"][rows, :n], inputs["support_y"][rows, :n]
            qx = inputs["query_x"][rows]
            group = {name: p[rows] for name, p in params.items()}
            masks = mask if mask is not None else torch.ones(rows.shape[0], n, dtype=torch.bool)
            padded = mask is not None
            if self.use_vmap:

                def one(p, a, b, c, m, padded=padded):
                    return measure_task(
                        self.learner, p, a, b, c, want_grad, support_mask=m if padded else None
                    )

                pieces.append((rows, vmap(one)(group, sx, sy, qx, masks)))
            else:
                tasks = [
                    measure_task(
                        self.learner,
                        {name: p[i] for name, p in group.items()},
                        sx[i],
                        sy[i],
                        qx[i],
                        want_grad,
                        support_mask=masks[i] if padded else None,
                    )
                    for i in range(rows.shape[0])
                ]
                pieces.append((rows, _stack(tasks)))
        out = _scatter(pieces, B)
        if not want_grad:  # zeros, not absent: the state keeps its shapes (see start)
            out["grad"] = {name: torch.zeros_like(p) for name, p in params.items()}
        return out


def _stack(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, first in tasks[0].items():
        if isinstance(first, dict):
            out[key] = {name: torch.stack([t[key][name] for t in tasks]) for name in first}
        else:
            out[key] = torch.stack([t[key] for t in tasks])
    return out


def _scatter(pieces: list[tuple[torch.Tensor, dict[str, Any]]], B: int) -> dict[str, Any]:
    """Put each group's rows back in batch order."""
    out: dict[str, Any] = {}
    for key in pieces[0][1]:
        values = [(rows, piece[key]) for rows, piece in pieces]
        if isinstance(values[0][1], dict):
            out[key] = {name: _place([(r, v[name]) for r, v in values], B) for name in values[0][1]}
        else:
            out[key] = _place(values, B)
    return out


def _place(values: list[tuple[torch.Tensor, torch.Tensor]], B: int) -> torch.Tensor:
    first = values[0][1]
    full = first.new_zeros((B, *first.shape[1:]))
    for rows, value in values:
        full[rows] = value
    return full


# ---------------------------------------------------------------- stopping policies


def _set_policy_example():
    return SetPolicy(feature_dim=6, max_steps=4, width=8, hidden=16), torch.randn(5, 16), 4


@register_policy("maml-set", _set_policy_example)
class SetPolicy(nn.Module):
    """MAML-stop's policy (the official ``ShareFeatCondNet``, shared over steps): DeepSets
    summaries of the support and of the query features (the mean of softplus(h) comes in the
    features; here each goes through its own linear map to ``width``), the set statistics and
    a one-hot step encoding, then an ELU MLP (``hidden``) to one hazard logit (the probability of
    stopping after this step).

    Input features ``(B, 2·feature_dim + 4)`` (:func:`measure_task`), step ``t``; output ``(B,)``.
    """

    def __init__(self, feature_dim: int, max_steps: int, width: int = 64, hidden: int = 128):
        super().__init__()
        self.feature_dim, self.max_steps = feature_dim, max_steps
        self.support = nn.Linear(feature_dim, width)
        self.query = nn.Linear(feature_dim, width)
        stats = len(STAT_NAMES)
        self.head = nn.Sequential(
            nn.Linear(2 * width + stats + max_steps, hidden), nn.ELU(), nn.Linear(hidden, 1)
        )

    def forward(self, features: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        W = self.feature_dim
        steps = (
            t.to(device=features.device, dtype=torch.long).expand(features.shape[0])
            if isinstance(t, torch.Tensor)
            else torch.full((features.shape[0],), int(t), dtype=torch.long, device=features.device)
        )
        x = torch.cat(
            [
                self.support(features[:, :W]),
                self.query(features[:, W : 2 * W]),
                features[:, 2 * W :],
                step_encoding(steps, self.max_steps, dtype=features.dtype),
            ],
            dim=-1,
        )
        return self.head(x).squeeze(-1)


def _support_loss_example():
    return SupportLossStop(feature_dim=3), torch.randn(5, 10), 4


@register_policy("support-loss-stop", _support_loss_example)
class SupportLossStop(nn.Module):
    """The hand-made stop: score −log(support loss) (from the set statistics of
    :func:`measure_task`), so a score threshold −log(τ) stops at the first step whose support
    loss is ≤ τ. No parameters; τ is chosen on validation tasks."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.feature_dim = feature_dim

    def forward(self, features: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return -features[:, 2 * self.feature_dim]


def make_learner(
    family: str, ways: int, width: int, hidden: list[int], size: int = 28
) -> nn.Module:
    """The learner of a family: Conv4 (``width`` filters, ``ways`` outputs, ``size``×``size``
    images) or the sine MLP."""
    if family == "sinusoid":
        return SineMLP(tuple(hidden))
    return Conv4(ways, width, size)
