"""L2W: learning to weight samples for multi-exit training (Han et al., ECCV 2022).

A weight network g reads the K detached exit losses of a sample and weights that sample's loss at
every exit, ``w = 1 + δ·(g − mean_k g)`` with ``g = tanh(MLP(ℓ))`` (L2W Eq. 4–5; centring keeps
each sample's mean weight at 1). g is meta-learned: every few iterations the batch is split in
halves; a *virtual* SGD step of the network on the weighted loss of the first half,

    θ̂(φ) = θ − lr·d(θ, ∇_θ (1/n) Σ_i Σ_k w_ik(φ) ℓ_ik(θ)),                     (L2W Eq. 6)

with d the real optimizer's update direction (momentum buffer, dampening, weight decay,
Nesterov), is scored on the second half, where exit k is charged only for the samples it would
take at inference (:func:`allocate_meta`, L2W Eq. 7–8), and φ takes an Adam step on that meta loss.

Two ways to get the meta gradient:

* ``"full"`` — the virtual step is built with ``torch.func.functional_call`` on the real
  parameters and differentiated end to end (a double backward);
* ``"first_order"`` — the chain rule written out: ∂L_meta/∂w_ik = −(s/n)·⟨∇_θ L_meta, ∇_θ ℓ_ik⟩
  with s the optimizer's step scale, so one backward for v = ∇_θ L_meta and one forward-mode
  JVP of all n×K losses along v give every ∂L_meta/∂w_ik, with no double backward. With
  ``lookahead=True`` v is taken at θ̂ and the result equals ``"full"`` exactly; by default it is
  taken at θ (no virtual step at all), which is the cheap first-order approximation.

No module is rebuilt and no ``_parameters`` are patched; virtual forwards run with the BN
running statistics frozen (:func:`~.models.running_stats_frozen`), so the real buffers never move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from ...inference import exit_distribution
from ...objectives import weighted_exit_loss
from .models import exit_losses, running_stats_frozen

__all__ = [
    "WeightNet",
    "allocate_meta",
    "sgd_virtual_step",
    "sgd_step_scale",
    "meta_gradient",
    "MetaStep",
]


class WeightNet(nn.Module):
    """g: ``(B, K)`` detached exit losses → ``(B, K)`` weights ``1 + δ·(g − mean_k g)``.

    One hidden layer (ReLU), tanh output, centred over the exits of each sample; the output
    layer starts at zero, so w = 1 (uniform weighting) before any meta step. Nothing bounds
    the weights below: with δ = 0.8 they range over (1 − 1.6, 1 + 1.6), so they can turn
    negative; ``clamp=True`` clips them at 0.
    """

    def __init__(self, exits: int, hidden: int = 100, delta: float = 0.8, clamp: bool = False):
        super().__init__()
        if exits < 1 or hidden < 1:
            raise ValueError(f"exits and hidden must be >= 1; got {exits}, {hidden}")
        self.exits, self.delta, self.clamp = exits, delta, clamp
        self.net = nn.Sequential(nn.Linear(exits, hidden), nn.ReLU(), nn.Linear(hidden, exits))
        # Zero output layer: training starts from uniform weights (w = 1) and every deviation
        # from them is meta-learned rather than the pattern of a random initialisation.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def raw(self, losses: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` centred g(ℓ) − mean_k g(ℓ)."""
        if losses.dim() != 2 or losses.shape[1] != self.exits:
            raise ValueError(f"losses must be (B, {self.exits}); got {tuple(losses.shape)}")
        g = torch.tanh(self.net(losses))
        return g - g.mean(dim=1, keepdim=True)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        w = 1 + self.delta * self.raw(losses)
        return w.clamp_min(0) if self.clamp else w


def allocate_meta(confidence: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(n,)`` exit of each meta sample: exit k takes the ⌊n·q_k⌋ most confident samples not
    taken by an earlier exit (confidence ``(n, K)`` at each exit); the last exit takes the rest.

    This is the allocation of MSDNet's budgeted inference with target distribution ``q (K,)``.
    """
    n, K = confidence.shape
    if q.shape != (K,):
        raise ValueError(f"q must have shape ({K},); got {tuple(q.shape)}")
    exits = torch.full((n,), K - 1, dtype=torch.long, device=confidence.device)
    taken = torch.zeros(n, dtype=torch.bool, device=confidence.device)
    for k in range(K - 1):
        n_k = int(math.floor(n * float(q[k])))
        if n_k == 0:
            continue
        free = confidence[:, k].masked_fill(taken, -math.inf)
        chosen = free.topk(n_k).indices
        exits[chosen] = k
        taken[chosen] = True
    return exits


def _sgd_settings(model: nn.Module, optimizer: torch.optim.Optimizer):
    if not isinstance(optimizer, torch.optim.SGD):
        raise TypeError(
            f"L2W's virtual step follows torch.optim.SGD; got {type(optimizer).__name__}"
        )
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if id(p) not in group_of:
            raise ValueError(f"parameter {name!r} is not in the optimizer")
        if group_of[id(p)].get("maximize", False):
            raise ValueError("maximize=True is not supported by the virtual step")
    real = dict(model.named_parameters())
    return real, group_of


def sgd_virtual_step(
    model: nn.Module,
    optimizer: torch.optim.SGD,
    params: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """θ̂ = the parameters one ``optimizer.step()`` would give from ``params`` and ``grads``,
    as a new dict (differentiable in both; the optimizer and the model are not touched).

    Mirrors ``torch.optim.SGD``: d = g + λθ; with momentum μ, b = d on the first step, else
    b = μ·b_prev + (1 − dampening)·d, and d = d + μ·b (Nesterov) or d = b; θ̂ = θ − lr·d.
    """
    real, group_of = _sgd_settings(model, optimizer)
    out = {}
    for name, theta in params.items():
        group = group_of[id(real[name])]
        d = grads[name]
        if group["weight_decay"] != 0:
            d = d + group["weight_decay"] * theta
        momentum = group["momentum"]
        if momentum != 0:
            previous = optimizer.state.get(real[name], {}).get("momentum_buffer")
            if previous is None:
                buf = d
            else:
                buf = momentum * previous + (1 - group["dampening"]) * d
            d = d + momentum * buf if group["nesterov"] else buf
        out[name] = theta - group["lr"] * d
    return out


def sgd_step_scale(model: nn.Module, optimizer: torch.optim.SGD) -> dict[str, float]:
    """s with ∂θ̂/∂g = −s·I per parameter (the virtual step is affine in the gradient g)."""
    real, group_of = _sgd_settings(model, optimizer)
    scales = {}
    for name, p in real.items():
        group = group_of[id(p)]
        momentum, lr = group["momentum"], float(group["lr"])
        if momentum == 0:
            scales[name] = lr
            continue
        first = optimizer.state.get(p, {}).get("momentum_buffer") is None
        db = 1.0 if first else 1 - group["dampening"]  # ∂b/∂g
        scales[name] = lr * (1 + momentum * db if group["nesterov"] else db)
    return scales


def _meta_loss(logits: torch.Tensor, targets: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean CE of each meta sample at the exit it is allocated to (``logits (n, K, C)``)."""
    confidence = torch.softmax(logits.detach(), dim=-1).amax(dim=-1)
    exits = allocate_meta(confidence, q)
    chosen = logits[torch.arange(logits.shape[0], device=logits.device), exits]
    return F.cross_entropy(chosen, targets)


def meta_gradient(
    model: nn.Module,
    weight_net: WeightNet,
    optimizer: torch.optim.SGD,
    train: tuple[torch.Tensor, torch.Tensor],
    meta: tuple[torch.Tensor, torch.Tensor],
    q: torch.Tensor,
    mode: str = "full",
    lookahead: bool | None = None,
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """∂L_meta/∂φ for the weight net's parameters φ (a list aligned with
    ``weight_net.parameters()``) and the meta loss. ``model`` must be in training mode.

    ``train``/``meta`` are ``(inputs, labels)`` halves of a batch; ``q (K,)`` the meta allocation.
    ``mode``: ``"full"`` (double backward through the virtual step) or ``"first_order"`` (JVP;
    ``lookahead`` defaults to False there; True makes it exact, equal to ``"full"``).
    """
    if mode not in ("full", "first_order"):
        raise ValueError(f"mode must be 'full' or 'first_order'; got {mode!r}")
    x_tr, y_tr = train
    x_me, y_me = meta
    phi = list(weight_net.parameters())
    real = dict(model.named_parameters())
    n = x_tr.shape[0]
    with running_stats_frozen(model):
        if mode == "full":
            if lookahead is False:
                raise ValueError("mode 'full' always looks ahead; use mode='first_order'")
            losses = exit_losses(functional_call(model, real, (x_tr,)), y_tr)
            inner = weighted_exit_loss(losses, weight_net(losses.detach()))
            grads = torch.autograd.grad(inner, list(real.values()), create_graph=True)
            virtual = sgd_virtual_step(model, optimizer, real, dict(zip(real, grads, strict=True)))
            meta_loss = _meta_loss(functional_call(model, virtual, (x_me,)), y_me, q)
            grads_phi = torch.autograd.grad(meta_loss, phi)
            return list(grads_phi), {"meta_loss": float(meta_loss.detach())}

        point = {k: p.detach() for k, p in real.items()}
        if lookahead:
            with torch.no_grad():
                w = weight_net(exit_losses(model(x_tr), y_tr))
            leaf = {k: p.clone().requires_grad_() for k, p in point.items()}
            inner = weighted_exit_loss(exit_losses(functional_call(model, leaf, (x_tr,)), y_tr), w)
            grads = torch.autograd.grad(inner, list(leaf.values()))
            step = dict(zip(leaf, grads, strict=True))
            with torch.no_grad():
                point = sgd_virtual_step(model, optimizer, point, step)
        at = {k: p.detach().requires_grad_() for k, p in point.items()}
        meta_loss = _meta_loss(functional_call(model, at, (x_me,)), y_me, q)
        v = torch.autograd.grad(meta_loss, list(at.values()))
        scale = sgd_step_scale(model, optimizer)
        tangent = {k: -scale[k] * vk for k, vk in zip(at, v, strict=True)}
        primal = {k: p.detach() for k, p in real.items()}
        losses, directional = jvp(
            lambda p: exit_losses(functional_call(model, p, (x_tr,)), y_tr), (primal,), (tangent,)
        )
    # L_meta(θ̂(w)) with θ̂ = θ − s ∇(1/n Σ w ℓ): ∂L_meta/∂w_ik = ⟨v, −s ∇ℓ_ik⟩ / n.
    w = weight_net(losses.detach())
    surrogate = (w * (directional.detach() / n)).sum()
    return list(torch.autograd.grad(surrogate, phi)), {"meta_loss": float(meta_loss.detach())}


@dataclass
class MetaStep:
    """One L2W meta update of ``weight_net`` (Adam in ``meta_optimizer``) on a batch.

    The first half of the batch trains the virtual step, the second half scores it. ``p`` sets
    the meta allocation q_k ∝ p^k.
    """

    weight_net: WeightNet
    meta_optimizer: torch.optim.Optimizer
    p: float = 0.75
    mode: str = "full"

    def __call__(self, model, optimizer, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        half = x.shape[0] // 2
        if half < 1:
            raise ValueError(f"a meta step needs a batch of at least 2; got {x.shape[0]}")
        q = exit_distribution(self.p, self.weight_net.exits).to(x.device)
        grads, metrics = meta_gradient(
            model,
            self.weight_net,
            optimizer,
            (x[:half], y[:half]),
            (x[half:], y[half:]),
            q,
            self.mode,
        )
        for p, g in zip(self.weight_net.parameters(), grads, strict=True):
            p.grad = g
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        return metrics
