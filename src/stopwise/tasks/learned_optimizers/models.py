"""Optimizers as step models: the LSTM optimizer (Andrychowicz et al. 2016), its halting head
(the ACT optimizer of Sander 2017), the hand-designed optimizers, and the rollout that turns any
of them into a :class:`~stopwise.steps.StepModel` so stopping runs through ``run_adaptive``.

Indexing. Step t (0-based) evaluates the loss f_t = f(θ_t) and gradient g_t at θ_t, lets the
optimizer emit an update (and, for the ACT optimizer, a logit increment Δq_t) and moves to
θ_{t+1}. Stopping after step t returns θ_{t+1} and costs t + 1 gradient evaluations: "steps used"
is the number of optimizer steps taken. A stop decision after step t sees only what step t
computed (f_t, g_t, Δq_t, and earlier values): it is causal, and the steps after it never run.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...steps import StepModel
from .data import FunctionFamily

__all__ = [
    "log_and_sign",
    "LSTMOptimizerNet",
    "StackedLSTMOptimizers",
    "LearnedOptimizer",
    "HandDesigned",
    "HAND_DESIGNED",
    "loss_and_gradient",
    "OptimizerRun",
    "FeatureScore",
    "CausalHaltingScore",
    "L2SPolicy",
    "lstm_step_macs",
    "FEATURES",
]

# Columns of OptimizerRun.features: what a stop rule may look at after step t.
FEATURES = ("loss", "log10_grad_norm", "log10_improvement", "halting_score")
# The features' floors (log10 of 0 is −inf): a stop rule's tolerance below them never fires.
GRAD_NORM_FLOOR, IMPROVEMENT_FLOOR = 1e-30, 1e-12


def log_and_sign(grad: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """The gradient preprocessing of Andrychowicz et al. (2016), App. A: ``(..., 2)`` with

    (log|∇| / p, sgn ∇)   if |∇| ≥ e^{−p},
    (−1, e^p ∇)           otherwise.
    """
    magnitude = grad.abs()
    big = magnitude >= math.exp(-p)
    log_part = torch.where(big, torch.log(magnitude.clamp_min(1e-38)) / p, -1.0)
    sign_part = torch.where(big, torch.sign(grad), math.exp(p) * grad)
    return torch.stack([log_part, sign_part], dim=-1)


class LSTMOptimizerNet(nn.Module):
    """The coordinatewise LSTM optimizer (Andrychowicz et al. 2016, §2.1 and §3).

    One small LSTM stack is shared by every coordinate of θ, each coordinate with its own state:
    input the (preprocessed) gradient of that coordinate, output its update, scaled by
    ``output_scale``. With ``halting=True`` the top layer's hidden state also gives the ACT
    optimizer's logit increment (Sander 2017, §4.2), pooled over a function's coordinates by the
    mean: Δq_t = mean_i(w_qᵀ h_t^{(i)}) + b_q. Its weights start at zero and its bias at
    ``log √(1 − prior_p)``, so Δq_t is constant and the posterior starts equal to the
    random-horizon prior p(t | T).

    Args:
        hidden: units per LSTM layer (the paper: 20).
        layers: LSTM layers (the paper: 2).
        preprocess: p of :func:`log_and_sign`, or None to feed the raw gradient.
        output_scale: the update is the linear output times this (paper 0.1 with
            preprocessing, 1.0 on the quadratics).
        halting: add the halting head.
        prior_p: the geometric prior parameter the halting bias starts at.
        update: how the output o_t becomes the update. ``"additive"`` (the paper):
            Δθ = output_scale · o_t. Not the paper's (a learned per-coordinate step size, so
            the update vanishes with the gradient and has no precision floor):
            ``"scaled_gradient"``: Δθ = −output_scale · exp(o_t) ⊙ ∇; ``"scaled_rmsprop"``:
            Δθ = −output_scale · exp(o_t) ⊙ ∇ / (√v_t + 1e-8) with v_t = 0.99 v_{t−1} + 0.01 ∇²,
            v_{−1} = 0 (RMSprop's direction, kept as the last entry of the state).
    """

    UPDATES = ("additive", "scaled_gradient", "scaled_rmsprop")

    def __init__(
        self,
        hidden: int = 20,
        layers: int = 2,
        preprocess: float | None = 10.0,
        output_scale: float = 0.1,
        halting: bool = False,
        prior_p: float = 0.1,
        update: str = "additive",
    ):
        super().__init__()
        if preprocess is not None and not preprocess > 0:
            raise ValueError(f"preprocess must be > 0 or None; got {preprocess}")
        if update not in self.UPDATES:
            raise ValueError(f"update must be one of {self.UPDATES}; got {update!r}")
        self.hidden, self.layers, self.preprocess = hidden, layers, preprocess
        self.output_scale, self.update_rule = output_scale, update
        width = 2 if preprocess is not None else 1
        self.cells = nn.ModuleList(
            nn.LSTMCell(width if i == 0 else hidden, hidden) for i in range(layers)
        )
        self.output = nn.Linear(hidden, 1)
        self.halting = nn.Linear(hidden, 1) if halting else None
        if self.halting is not None:
            nn.init.zeros_(self.halting.weight)
            nn.init.constant_(self.halting.bias, 0.5 * math.log1p(-prior_p))

    def initial_state(self, rows: int, dim: int) -> tuple[torch.Tensor, ...]:
        """Zero LSTM state for ``rows`` functions of ``dim`` coordinates: per layer ``(h, c)``,
        each ``(rows, dim, hidden)``."""
        device = next(self.parameters()).device
        zeros = torch.zeros(rows, dim, self.hidden, device=device)
        state = tuple(zeros for _ in range(2 * self.layers))
        if self.update_rule == "scaled_rmsprop":
            state += (torch.zeros(rows, dim, device=device),)
        return state

    def forward(
        self, grad: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
        """``grad (n, D)`` → ``(update (n, D), Δq (n,) or None, new state)``."""
        n, D = grad.shape
        dtype = grad.dtype
        grad = grad.to(self.output_dtype())
        x = log_and_sign(grad, self.preprocess) if self.preprocess else grad.unsqueeze(-1)
        output, new_state = self._lstm(x.reshape(n * D, -1), state, n, D)
        output = output.view(n, D)
        if self.update_rule == "additive":
            update = output * self.output_scale
        else:
            direction = grad
            if self.update_rule == "scaled_rmsprop":
                square = 0.99 * state[-1] + 0.01 * grad.square()
                new_state.append(square)
                direction = grad / (square.sqrt() + 1e-8)
            update = -self.output_scale * torch.exp(output) * direction
        update = update.to(dtype)
        halting = None
        if self.halting is not None:  # pooled over coordinates
            halting = self.halting(new_state[2 * self.layers - 2].mean(1)).squeeze(-1)
        return update, halting, tuple(new_state)

    def _lstm(self, x, state, n: int, D: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The LSTM stack on ``x (n·D, input)``: the linear output ``(n·D, 1)`` and the new
        ``(h, c)`` of every layer, each ``(n, D, hidden)``."""
        new_state = []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (state[2 * i].reshape(n * D, -1), state[2 * i + 1].reshape(n * D, -1)))
            new_state += [h.view(n, D, -1), c.view(n, D, -1)]
            x = h
        return self.output(x), new_state

    def output_dtype(self) -> torch.dtype:
        return self.output.weight.dtype  # not next(self.parameters()): a walk of the modules

    def start(self, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.initial_state(*theta.shape)

    def step(self, grad, state, t):
        return self(grad, state)


class StackedLSTMOptimizers(LSTMOptimizerNet):
    """R :class:`LSTMOptimizerNet` of one shape run as one network: meta-training restarts side
    by side. Their weights are stacked on a leading axis; a batch of R·n functions is taken as R
    blocks of n, in order, and block r runs through network r. Each block's arithmetic is its
    network's (the LSTM cell written out: ``nn.LSTMCell``'s up to float rounding) and the blocks
    share nothing, so a loss summed over blocks trains each network as alone. A step of a small
    function family costs mostly per operation, not per row: three restarts on the 2-D regression
    family meta-train 1.8× faster side by side than one after another
    (``benchmarks/learned_optimizers_stacked.py``).

    Built from R networks (their weights copied); :meth:`weights` gives network r's back as an
    :class:`LSTMOptimizerNet` state dict. No halting head.
    """

    def __init__(self, nets: list[LSTMOptimizerNet]):
        nn.Module.__init__(self)
        if not nets:
            raise ValueError("StackedLSTMOptimizers needs at least one network")
        first = nets[0]
        shapes = {(n.hidden, n.layers, n.preprocess, n.output_scale, n.update_rule) for n in nets}
        if len(shapes) > 1 or any(net.halting is not None for net in nets):
            raise ValueError("stacked networks must have one shape and no halting head")
        if list(first.state_dict()) != self._names(first.layers):
            raise ValueError("not an LSTMOptimizerNet's weights")
        self.hidden, self.layers, self.preprocess = first.hidden, first.layers, first.preprocess
        self.output_scale, self.update_rule = first.output_scale, first.update_rule
        self.halting, self.groups = None, len(nets)
        self.names = self._names(self.layers)
        self.stacked = nn.ParameterList(
            nn.Parameter(torch.stack([net.state_dict()[k].detach().clone() for net in nets]))
            for k in self.names
        )

    @staticmethod
    def _names(layers: int) -> list[str]:
        """An :class:`LSTMOptimizerNet`'s state-dict keys, in order: ``stacked.<i>`` holds the
        i-th, stacked."""
        kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return [f"cells.{i}.{k}" for i in range(layers) for k in kinds] + [
            "output.weight",
            "output.bias",
        ]

    def weights(self, r: int) -> dict[str, torch.Tensor]:
        """Network r's weights, as its :class:`LSTMOptimizerNet` state dict."""
        return self.weights_in(self.state_dict(), r)

    @classmethod
    def weights_in(cls, state: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
        """Network r's weights from a state dict of this class (e.g. a checkpoint's)."""
        names = cls._names((len(state) - 2) // 4)
        return {k: state[f"stacked.{i}"][r].detach().clone() for i, k in enumerate(names)}

    def output_dtype(self) -> torch.dtype:
        return self.stacked[0].dtype

    def _lstm(self, x, state, n: int, D: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        R, H = self.groups, self.hidden
        w = dict(zip(self.names, self.stacked, strict=True))
        x = x.view(R, n // R * D, -1)
        new_state = []
        for i in range(self.layers):
            cell = f"cells.{i}."
            h, c = state[2 * i].reshape(R, -1, H), state[2 * i + 1].reshape(R, -1, H)
            gates = torch.baddbmm(
                w[cell + "bias_ih"].unsqueeze(1), x, w[cell + "weight_ih"].transpose(1, 2)
            ) + torch.baddbmm(
                w[cell + "bias_hh"].unsqueeze(1), h, w[cell + "weight_hh"].transpose(1, 2)
            )
            gate = torch.sigmoid(gates)  # input, forget, cell, output (torch's order)
            c = gate[..., H : 2 * H] * c + gate[..., :H] * torch.tanh(gates[..., 2 * H : 3 * H])
            h = gate[..., 3 * H :] * torch.tanh(c)
            new_state += [h.reshape(n, D, H), c.reshape(n, D, H)]
            x = h
        output = torch.baddbmm(w["output.bias"].unsqueeze(1), x, w["output.weight"].transpose(1, 2))
        return output.reshape(n * D, 1), new_state


class LearnedOptimizer(torch.optim.Optimizer):
    """A trained :class:`LSTMOptimizerNet` used as an ordinary ``torch.optim`` optimizer::

        optimizer = LearnedOptimizer(model.parameters(), net)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    Every coordinate of every parameter gets its own LSTM state (kept in ``self.state``); the
    network is not trained here. With a halting head, ``last_halting_score[p]`` holds −Δq_t of
    the last step for each parameter tensor (the ACT optimizer's stop score, pooled over that
    tensor's coordinates).

    ``lr`` scales the network's update (1: the update it was meta-trained to give), so that
    ``torch.optim.lr_scheduler`` schedules work on it as on any optimizer. A complex parameter is
    stepped as its real and imaginary parts (``torch.view_as_real``), as torch's optimizers do;
    sparse gradients are refused.
    """

    # Tensors of fewer coordinates share one call of the network; a larger one runs alone, as
    # copying its state into a joint call costs about what the call's fixed cost saves
    # (benchmarks/learned_optimizer_step.py).
    JOIN_BELOW = 4096

    def __init__(self, params, net: LSTMOptimizerNet, lr: float = 1.0):
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0; got {lr}")
        super().__init__(params, {"lr": lr})
        self.net = net
        self.last_halting_score: dict[torch.Tensor, float] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        joined: dict[torch.device, list[tuple[torch.Tensor, float]]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LearnedOptimizer does not support sparse gradients")
                if p.numel() < self.JOIN_BELOW:
                    joined.setdefault(p.grad.device, []).append((p, group["lr"]))
                else:
                    self._step([(p, group["lr"])])
        for params in joined.values():
            self._step(params)
        return loss

    def _step(self, params: list[tuple[torch.Tensor, float]]) -> None:
        """One call of the network for every coordinate of ``params`` ((parameter, lr) pairs):
        the LSTM is coordinatewise, so this is a call per tensor without each call's fixed cost
        (tens of small operations; ``benchmarks/learned_optimizer_step.py``)."""
        dtype = self.net.output_dtype()
        grads = [_real(p.grad.detach()).reshape(1, -1).to(dtype) for p, _ in params]
        sizes = [grad.shape[1] for grad in grads]
        for (p, _), size in zip(params, sizes, strict=True):
            if "lstm" not in self.state[p]:
                self.state[p]["lstm"] = self.net.initial_state(1, size)
        states = zip(*(self.state[p]["lstm"] for p, _ in params), strict=True)
        update, _, new_state = self.net(_joined(grads), tuple(map(_joined, states)))
        per_param = zip(*(part.split(sizes, dim=1) for part in new_state), strict=True)
        deltas = update.split(sizes, dim=1)
        for (p, lr), delta, state in zip(params, deltas, per_param, strict=True):
            self.state[p]["lstm"] = state
            real = _real(p)
            real.add_(delta.view_as(real).to(real.dtype), alpha=lr)
            if self.net.halting is not None:  # pooled over this tensor's coordinates
                top = state[2 * self.net.layers - 2]
                self.last_halting_score[p] = -float(self.net.halting(top.mean(1)))

    def load_state_dict(self, state_dict) -> None:
        # torch casts every floating state tensor to its parameter's dtype; the LSTM state
        # belongs to the network (a float64 model's state would reach a float32 net).
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # saved before the optimizer had an lr
            group.setdefault("lr", 1.0)
        dtype = self.net.output_dtype()
        for state in self.state.values():
            if "lstm" in state:
                state["lstm"] = tuple(s.to(dtype) for s in state["lstm"])


def _real(tensor: torch.Tensor) -> torch.Tensor:
    """A complex tensor as a view of its (real, imaginary) pairs; any other tensor itself."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _joined(parts) -> torch.Tensor:
    """Tensors of one row side by side along the coordinates (no copy for a single one)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class HandDesigned(nn.Module):
    """SGD, heavy-ball momentum, RMSprop and Adam on a batch of functions, one learning rate per
    function row (``lr (n,)``), with torch.optim's update rules and default constants:
    momentum μ = 0.9; RMSprop α = 0.99, ε = 1e-8; Adam β = (0.9, 0.999), ε = 1e-8."""

    KINDS = ("sgd", "momentum", "rmsprop", "adam")

    def __init__(self, kind: str, lr: torch.Tensor | float):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"unknown optimizer {kind!r}; choose one of {self.KINDS}")
        self.kind = kind
        # float64: a rate of the grid (10^-3.5) reaches a float64 function unrounded
        self.register_buffer("lr", torch.as_tensor(lr, dtype=torch.float64).reshape(-1))

    def start(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        n = theta.shape[0]
        lr = self.lr.expand(n) if self.lr.numel() == 1 else self.lr
        if lr.shape[0] != n:
            raise ValueError(f"{self.lr.numel()} learning rates for {n} functions")
        lr = lr.to(theta.dtype).clone()
        return {"lr": lr, "m": torch.zeros_like(theta), "v": torch.zeros_like(theta)}

    def step(self, grad, state, t):
        lr, m, v = state["lr"].unsqueeze(-1), state["m"], state["v"]
        if self.kind == "sgd":
            update = -lr * grad
        elif self.kind == "momentum":
            m = grad if t == 0 else 0.9 * m + grad  # torch.optim.SGD(momentum=0.9)
            update = -lr * m
        elif self.kind == "rmsprop":
            v = 0.99 * v + 0.01 * grad * grad
            update = -lr * grad / (v.sqrt() + 1e-8)
        else:  # adam
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            m_hat, v_hat = m / (1 - 0.9 ** (t + 1)), v / (1 - 0.999 ** (t + 1))
            update = -lr * m_hat / (v_hat.sqrt() + 1e-8)
        return update, None, {"lr": state["lr"], "m": m, "v": v}


HAND_DESIGNED = HandDesigned.KINDS


def loss_and_gradient(
    family: FunctionFamily, theta: torch.Tensor, functions: Any, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f (n,), ∇f (n, D))`` at ``theta``: the family's closed form if it has one
    (``family.loss_and_gradient``), else ``torch.func.grad_and_value``.

    θ is detached first: the optimizer's input gradient carries no graph (the paper's
    assumption ∂∇_t/∂φ = 0, the official code's default). Rows are independent functions, so the
    gradient of the sum is each function's own gradient.
    """
    if hasattr(family, "loss_and_gradient"):
        values, grad = family.loss_and_gradient(theta.detach(), functions, step)
        return values.detach(), grad.detach()

    def total(th):
        values = family.loss(th, functions, step)
        return values.sum(), values

    grad, (_, values) = torch.func.grad_and_value(total, has_aux=True)(theta.detach())
    return values.detach(), grad.detach()


class OptimizerRun(StepModel):
    """An optimizer running on a batch of functions, as a step model (see the module docstring).

    Inputs are a batch of functions from ``family.sample``. The prediction after step t is
    θ_{t+1} ``(n, D)``; the features are ``(n, 4)``: f_t, log10‖g_t‖, log10 of the last
    improvement f_{t−1} − f_t (clamped to [1e-12, 1e12]; 1e12 at t = 0, 1e-12 when the loss
    rose) and the halting score −Δq_t (0 for optimizers without a halting head). ``stepper`` is
    an :class:`LSTMOptimizerNet` or a :class:`HandDesigned` optimizer.
    """

    def __init__(self, family: FunctionFamily, stepper: nn.Module, steps: int):
        super().__init__()
        self.family, self.stepper, self.max_steps = family, stepper, steps

    def start(self, functions) -> dict[str, Any]:
        theta = self.family.initial(functions)
        n = theta.shape[0]
        return {
            "functions": functions,
            "theta": theta,
            "optimizer": self.stepper.start(theta),
            "loss": torch.full((n,), math.inf, dtype=theta.dtype),
            "features": torch.zeros(n, len(FEATURES), dtype=theta.dtype),
        }

    def advance(self, state, t):
        theta = state["theta"]
        loss, grad = loss_and_gradient(self.family, theta, state["functions"], t)
        update, halting, optimizer = self.stepper.step(grad, state["optimizer"], t)
        improvement = (state["loss"] - loss).nan_to_num(nan=1e12, posinf=1e12)
        features = torch.stack(
            [
                loss,
                torch.log10(torch.linalg.vector_norm(grad, dim=-1).clamp_min(GRAD_NORM_FLOOR)),
                torch.log10(improvement.clamp(IMPROVEMENT_FLOOR, 1e12)),
                -halting.to(loss.dtype) if halting is not None else torch.zeros_like(loss),
            ],
            dim=-1,
        )
        return {
            "functions": state["functions"],
            "theta": theta + update,
            "optimizer": optimizer,
            "loss": loss,
            "features": features,
        }

    def predict(self, state, t):
        return state["theta"]

    def features(self, state, t):
        return state["features"]


class FeatureScore(nn.Module):
    """A parameter-free stop score read from one feature column: ``sign · features[:, column]``.

    Hand-designed stop rules are threshold rules on such scores: the gradient-norm rule stops
    when ‖g_t‖ < tol, i.e. −log10‖g_t‖ ≥ −log10 tol; the loss-improvement rule stops when
    f_{t−1} − f_t < tol (see :class:`CausalHaltingScore` for the ACT optimizer's rule).
    """

    def __init__(self, feature: str, sign: float = 1.0):
        super().__init__()
        self.column, self.sign = FEATURES.index(feature), sign

    def forward(self, features: torch.Tensor, t: int | torch.Tensor = 0) -> torch.Tensor:
        return self.sign * features[:, self.column]


class CausalHaltingScore(nn.Module):
    """The ACT optimizer's causal stop score after step t: −Δq_t for t ≥ 1, −inf at t = 0.

    Δq_t > 0 says the posterior logit of θ_{t+1} exceeds that of θ_t; the rule "score ≥ 0"
    stops after the first step whose increment is not positive, one step past the first local
    maximum of c_t = Σ_{u≤t} Δq_u. Δq_0 adds the same constant to every c_t, so the posterior
    softmax_t(c_t) does not depend on it (the bound never trains it) and it never stops a run.
    """

    def __init__(self):
        super().__init__()
        self.column = FEATURES.index("halting_score")

    def forward(self, features: torch.Tensor, t: int | torch.Tensor = 0) -> torch.Tensor:
        score = features[:, self.column]
        first = torch.as_tensor(t, device=score.device) == 0
        return torch.where(first, torch.full_like(score, -math.inf), score)


class L2SPolicy(nn.Module):
    """The L2S stop policy on the LSTM optimizer: an MLP over (f_t, log10‖g_t‖, log10
    improvement) and a sinusoidal step encoding (8 numbers) → hazard logit (the core ``mlp``
    policy). The sinusoidal encoding keeps its cost small next to an optimizer step (see
    :meth:`macs`)."""

    def __init__(self, max_steps: int, hidden: tuple[int, ...] = (32, 32)):
        super().__init__()
        from ...policies import MLPPolicy

        self.mlp = MLPPolicy(3, max_steps, hidden=hidden, encoding="sinusoidal")

    def forward(self, features: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return self.mlp(features[:, :3], t)

    def macs(self) -> int:
        """Multiply-adds of one decision for one function (the linear layers)."""
        return sum(
            m.in_features * m.out_features for m in self.modules() if isinstance(m, nn.Linear)
        )


def lstm_step_macs(net: LSTMOptimizerNet, dim: int) -> int:
    """Multiply-adds of one LSTM-optimizer step for a function of ``dim`` coordinates (LSTM
    cells and output layer; the optimizee's gradient not counted)."""
    per_coordinate = sum(4 * c.hidden_size * (c.input_size + c.hidden_size) for c in net.cells)
    return dim * (per_coordinate + net.hidden)
