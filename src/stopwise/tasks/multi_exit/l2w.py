"""L2W: learning to weight samples for multi-exit training (Han et al., ECCV 2022).

A weight network g reads the K detached exit losses of a sample and weights that sample's loss at
every exit, ``w = 1 + δ·(g − mean_k g)`` with ``g = tanh(MLP(ℓ))`` (L2W Eq. 4–5; centring keeps
each sample's mean weight at 1). g is meta-learned: every few iterations the batch is split in
halves; a *virtual* SGD step of the network on the weighted loss of the first half,

    θ̂(φ) = θ − lr·d(θ, ∇_θ (1/n) Σ_i Σ_k w_ik(φ) ℓ_ik(θ)),                     (L2W Eq. 6)

with d the real optimizer's update direction (momentum buffer, dampening, weight decay,
Nesterov), is scored on a meta batch, where exit k is charged only for the samples S_k it would
take at inference (:func:`allocate_meta`, L2W Eq. 7–8), and φ takes an Adam step on that meta loss

    L_meta(θ̂) = Σ_k mean_{i∈S_k} ℓ_ik(θ̂)                                   (:func:`meta_objective`)

as the official code computes it (exits with an empty S_k contribute nothing).

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
    "META_LOSSES",
    "OUTPUT_INITS",
    "WeightNet",
    "allocate_meta",
    "meta_objective",
    "sgd_virtual_step",
    "sgd_step_scale",
    "meta_gradient",
    "MetaStep",
]


# The meta objectives on the meta batch (see meta_objective), the official one first.
META_LOSSES = ("per-exit", "pooled", "last", "all")
# How the weight net's output layer starts: PyTorch's default (the official code) or zero.
OUTPUT_INITS = ("default", "zero")


class WeightNet(nn.Module):
    """g: ``(B, K)`` detached exit losses → ``(B, K)`` weights ``1 + δ·(g − mean_k g)``.

    One hidden layer (ReLU), tanh output, centred over the exits of each sample (the official
    ``MLP_tanh`` with ``col`` normalisation). ``output_init="default"`` keeps PyTorch's
    initialisation of the output layer, as the official code does, so the weights start at a
    random pattern around 1; ``"zero"`` starts it at zero, so w = 1 (uniform weighting) before
    any meta step. Nothing bounds the weights below: |g − mean_k g| < 2(K−1)/K, so with δ = 0.8
    and K = 4 they range over (−0.2, 2.2) and can turn negative; ``clamp=True`` clips them at 0.
    """

    def __init__(
        self,
        exits: int,
        hidden: int = 500,
        delta: float = 0.8,
        clamp: bool = False,
        output_init: str = "default",
    ):
        super().__init__()
        if exits < 1 or hidden < 1:
            raise ValueError(f"exits and hidden must be >= 1; got {exits}, {hidden}")
        if output_init not in OUTPUT_INITS:
            raise ValueError(f"output_init must be one of {OUTPUT_INITS}; got {output_init!r}")
        self.exits, self.delta, self.clamp = exits, delta, clamp
        self.net = nn.Sequential(nn.Linear(exits, hidden), nn.ReLU(), nn.Linear(hidden, exits))
        if output_init == "zero":
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        if losses.dim() != 2 or losses.shape[1] != self.exits:
            raise ValueError(f"losses must be (B, {self.exits}); got {tuple(losses.shape)}")
        g = torch.tanh(self.net(losses))
        w = 1 + self.delta * (g - g.mean(dim=1, keepdim=True))
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
        free = confidence[:, k].masked_fill(taken, -math.inf)
        chosen = free.topk(math.floor(n * float(q[k]))).indices
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
    return dict(model.named_parameters()), group_of


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
            prev = optimizer.state.get(real[name], {}).get("momentum_buffer")
            buf = d if prev is None else momentum * prev + (1 - group["dampening"]) * d
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


def meta_objective(
    logits: torch.Tensor, targets: torch.Tensor, q: torch.Tensor, form: str = "per-exit"
) -> torch.Tensor:
    """L2W's meta loss on a meta batch: ``logits (n, K, C)`` of every exit, ``targets (n,)``.

    With S_k the meta samples allocated to exit k (:func:`allocate_meta` on the detached max
    softmax, target distribution ``q (K,)``) and ℓ_ik the cross-entropy of sample i at exit k:

    * ``"per-exit"`` (the official code): Σ_k mean_{i∈S_k} ℓ_ik, exits with empty S_k skipped;
    * ``"pooled"``: (1/n) Σ_k Σ_{i∈S_k} ℓ_ik, one mean over the meta batch (this project's
      earlier form: exit k counts in proportion to |S_k|, so late exits weigh less);
    * ``"last"``: (1/n) Σ_i ℓ_iK, no allocation: only the final exit is scored, so the early
      exits' logits get no meta gradient (this project's ablation, method ``l2w-last``);
    * ``"all"``: Σ_k (1/n) Σ_i ℓ_ik, no allocation: every meta sample at every exit (MW-Net's
      objective summed over the exits; method ``l2w-all``), the paper's ablation as the
      reference describes it (unverified against the paper's text).
    """
    if form not in META_LOSSES:
        raise ValueError(f"meta loss form must be one of {META_LOSSES}; got {form!r}")
    n, K, C = logits.shape
    if form == "last":
        return F.cross_entropy(logits[:, -1], targets)
    if form == "all":
        every = targets.unsqueeze(1).expand(n, K)
        return F.cross_entropy(logits.transpose(1, 2), every, reduction="none").mean(0).sum()
    confidence = torch.softmax(logits.detach(), dim=-1).amax(dim=-1)
    exits = allocate_meta(confidence, q)
    chosen = logits[torch.arange(n, device=logits.device), exits]
    losses = F.cross_entropy(chosen, targets, reduction="none")  # (n,) ℓ_i,exit(i)
    if form == "pooled":
        return losses.mean()
    per_exit = torch.zeros(K, dtype=losses.dtype, device=losses.device).index_add(0, exits, losses)
    counts = torch.bincount(exits, minlength=K)
    return (per_exit[counts > 0] / counts[counts > 0]).sum()


def meta_gradient(
    model: nn.Module,
    weight_net: WeightNet,
    optimizer: torch.optim.SGD,
    train: tuple[torch.Tensor, torch.Tensor],
    meta: tuple[torch.Tensor, torch.Tensor],
    q: torch.Tensor,
    mode: str = "full",
    lookahead: bool | None = None,
    meta_loss: str = "per-exit",
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """∂L_meta/∂φ for the weight net's parameters φ (a list aligned with
    ``weight_net.parameters()``) and the meta loss. ``model`` must be in training mode.

    ``train``/``meta`` are ``(inputs, labels)``: the batch of the virtual step and the meta
    batch; ``q (K,)`` the meta allocation; ``meta_loss`` the form of :func:`meta_objective`.
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
            value = meta_objective(functional_call(model, virtual, (x_me,)), y_me, q, meta_loss)
            return list(torch.autograd.grad(value, phi)), {"meta_loss": float(value.detach())}

        primal = point = {k: p.detach() for k, p in real.items()}
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
        value = meta_objective(functional_call(model, at, (x_me,)), y_me, q, meta_loss)
        v = torch.autograd.grad(value, list(at.values()))
        scale = sgd_step_scale(model, optimizer)
        tangent = {k: -scale[k] * vk for k, vk in zip(at, v, strict=True)}
        losses, directional = jvp(
            lambda p: exit_losses(functional_call(model, p, (x_tr,)), y_tr), (primal,), (tangent,)
        )
    # L_meta(θ̂(w)) with θ̂ = θ − s ∇(1/n Σ w ℓ): ∂L_meta/∂w_ik = ⟨v, −s ∇ℓ_ik⟩ / n.
    w = weight_net(losses.detach())
    surrogate = (w * (directional.detach() / n)).sum()
    return list(torch.autograd.grad(surrogate, phi)), {"meta_loss": float(value.detach())}


@dataclass
class MetaStep:
    """One L2W meta update of ``weight_net`` (Adam in ``meta_optimizer``).

    ``train`` ``(x, y)`` trains the virtual step, ``meta`` ``(x, y)`` scores it with the meta loss
    ``meta_loss`` (:func:`meta_objective`); ``p`` sets the meta allocation q_k ∝ p^k. Returns the
    meta loss and the norm of the meta gradient.
    """

    weight_net: WeightNet
    meta_optimizer: torch.optim.Optimizer
    p: float = 0.75
    mode: str = "full"
    meta_loss: str = "per-exit"

    def __call__(self, model, optimizer, train, meta) -> dict[str, float]:
        if train[0].shape[0] < 1 or meta[0].shape[0] < 1:
            raise ValueError("a meta step needs at least one training and one meta sample")
        q = exit_distribution(self.p, self.weight_net.exits).to(train[0].device)
        grads, metrics = meta_gradient(
            model, self.weight_net, optimizer, train, meta, q, self.mode, meta_loss=self.meta_loss
        )
        for p, g in zip(self.weight_net.parameters(), grads, strict=True):
            p.grad = g
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        return {**metrics, "meta_grad_norm": float(norm)}
