"""Sparse-recovery step models: ISTA, FISTA, LISTA and ALISTA, one iteration (layer) per step.

Every model is a :class:`~stopwise.steps.StepModel` on measurements ``y (B, m)``; its state is a
dict of batch-first tensors (``"y"``, ``"y_level"`` its log mean square ``(B,)``, ``"x"`` the
current estimate x_t ``(B, n)``, and ``"x_prev"`` the estimate before the last step or, for
ALISTA / LISTA-CP-SS, ``"r"`` = A x_t − y), its prediction after step t is x_{t+1}. All start
from x_0 = 0, so the first step skips every product with x_0.

**Policy features** (:meth:`SparseStepModel.features`) are three label-free log-norms of what
the state already holds, cheap next to a step (O(m + n) multiply-adds against O(nm)):
log(‖y‖²/m) (once), log(‖x_t‖²/n), and log(‖r_t‖²/m) for the models that carry the residual
r (ALISTA, LISTA-CP-SS), else log(‖x_t − x_{t−1}‖²/n).

``step_costs()`` counts multiply-adds per sample analytically, cumulative over steps:

* ISTA / FISTA: ``nm`` for step 0 (Aᵀy), then ``2nm`` (A z and Aᵀ r) per step;
* LISTA: ``nm`` for step 0 (W_b y), then ``n² + nm`` (W_x x and W_b y) per layer;
* ALISTA and LISTA-CP-SS: ``2nm`` per layer (the update Wᵀ r and the residual r = A x − y of its
  output, which the next layer and the policy features reuse).

:class:`StopPolicy` is the stage-II stopping policy of both stop models.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...policies import register_policy
from ...steps import StepModel

__all__ = [
    "soft_threshold",
    "support_threshold",
    "support_sizes",
    "log_mean_square",
    "analytic_weight",
    "SparseStepModel",
    "ResidualStepModel",
    "ISTA",
    "FISTA",
    "LISTA",
    "ALISTA",
    "LISTACPSS",
    "StopPolicy",
]


class _SoftThreshold(torch.autograd.Function):
    """η_θ(v) with a scalar θ ≥ 0, on the fused ``softshrink`` kernels (no boolean temporaries,
    which are slow on CPU). Gradients: ∂η/∂v = 1{|v| > θ}, ∂η/∂θ = −sign(η_θ(v))."""

    @staticmethod
    def forward(ctx, v, theta):
        ctx.lambd = float(theta)
        out = torch.nn.functional.softshrink(v, ctx.lambd)
        ctx.save_for_backward(v, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        v, out = ctx.saved_tensors
        grad_v = torch.ops.aten.softshrink_backward(grad, v, ctx.lambd)
        grad_theta = -(grad * out.sign()).sum() if ctx.needs_input_grad[1] else None
        return grad_v, grad_theta


def soft_threshold(v: torch.Tensor, theta: torch.Tensor | float) -> torch.Tensor:
    """η_θ(v) = sign(v)·max(|v| − θ, 0) for a scalar θ (negative θ acts as 0), differentiable in
    ``v`` and in a tensor ``θ``. ``v`` has any shape."""
    theta = torch.as_tensor(theta, dtype=v.dtype, device=v.device)
    if theta.dim() != 0:
        raise ValueError(f"soft_threshold takes a scalar threshold; got shape {tuple(theta.shape)}")
    theta = theta.clamp_min(0)
    if torch.compiler.is_exporting() or torch.compiler.is_compiling():
        # softshrink takes θ as a Python float, which a traced program cannot read from a
        # tensor; v − clamp(v, −θ, θ) is the same function, to the bit, in tensor operations.
        return v - v.clamp(-theta, theta)
    return _SoftThreshold.apply(v, theta)


def support_threshold(v: torch.Tensor, theta: torch.Tensor | float, keep: int) -> torch.Tensor:
    """Soft threshold with support selection (LISTA-CP-SS, Chen et al. 2018, Eq. 13).

    In each row of ``v (B, n)`` the ``keep`` largest-magnitude entries that also exceed θ pass
    through unshrunk (they are trusted to be in the support); the others are soft-thresholded.
    The selection is not differentiated. The mask is built with float arithmetic (boolean ops are
    slow on CPU): an entry is selected when |v| exceeds both θ and the midpoint between the
    ``keep``-th and ``keep+1``-th largest magnitudes of its row.
    """
    shrunk = soft_threshold(v, theta)
    if keep <= 0:
        return shrunk
    magnitude = v.detach().abs()
    if keep >= v.shape[-1]:
        cut = magnitude.new_zeros(v.shape[:-1] + (1,))
    else:
        top = magnitude.topk(keep + 1, dim=-1, sorted=True).values
        cut = 0.5 * (top[..., keep - 1 : keep] + top[..., keep : keep + 1])
    floor = torch.as_tensor(theta, dtype=v.dtype, device=v.device).detach().clamp_min(0)
    cut = torch.maximum(cut, floor)  # a tensor, not a float: the function stays traceable
    selected = (magnitude - cut).sign_().clamp_min_(0)  # 1 where |v| > cut, else 0
    return shrunk + selected * (v - shrunk)


def log_mean_square(v: torch.Tensor) -> torch.Tensor:
    """``(B,)`` log(‖v_i‖²/d + 1e-12) of the rows of ``v (B, d)``, in one pass (a norm)."""
    return torch.log(torch.linalg.vector_norm(v, dim=-1).square() / v.shape[-1] + 1e-12)


def support_sizes(n: int, steps: int, increment: float, maximum: float) -> list[int]:
    """Entries passed unshrunk at each layer: ⌈n · min(increment·(t+1), maximum)⌉, t = 0..T−1."""
    return [math.ceil(n * min(increment * (t + 1), maximum) - 1e-9) for t in range(steps)]


def analytic_weight(A: torch.Tensor) -> torch.Tensor:
    """ALISTA's analytic weight (Liu et al. 2019, Eq. 15), ``(m, n)`` like ``A``.

    W = argmin_W ‖WᵀA‖_F² subject to w_iᵀ a_i = 1 for every column i. The problem separates per
    column, min ‖Aᵀ w‖² s.t. a_iᵀ w = 1, whose solution is w_i = (AAᵀ)⁻¹ a_i / (a_iᵀ (AAᵀ)⁻¹ a_i).
    Computed in float64.
    """
    A64 = A.to(torch.float64)
    P = torch.linalg.solve(A64 @ A64.T, A64)  # columns (AAᵀ)⁻¹ a_i
    return (P / (A64 * P).sum(0, keepdim=True)).to(A.dtype)


class SparseStepModel(StepModel):
    """Shared parts: the sensing matrix, the zero start, predictions and policy features."""

    carries_residual = False

    def __init__(self, A: torch.Tensor, steps: int):
        super().__init__()
        if A.dim() != 2 or A.shape[0] > A.shape[1]:
            raise ValueError(f"A must be (m, n) with m <= n; got shape {tuple(A.shape)}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps}")
        self.max_steps = steps
        self.m, self.n = A.shape
        self.register_buffer("A", A.detach().clone())

    def start(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[1] != self.m:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"measurements y must have shape (B, m={self.m}); got {shape}")
        x = y.new_zeros(y.shape[0], self.n)
        return {"y": y, "x": x, "x_prev": x, "y_level": log_mean_square(y)}

    def predict(self, state, t):
        return state["x"]

    def features(self, state, t: int) -> torch.Tensor:
        """``(B, F)`` log mean squares (:attr:`feature_names`, y's computed once in
        :meth:`start`), one pass over a row each. After the first step (``t == 0``) the change
        is x_1 itself (x_0 = 0), so its norm is not computed twice."""
        x = state["x"]
        level = log_mean_square(x)
        if self.carries_residual:
            last = log_mean_square(state["r"])
        elif t == 0:
            last = level
        else:
            last = log_mean_square(x - state["x_prev"])
        return torch.stack([state["y_level"], level, last], dim=-1)

    @property
    def feature_names(self) -> list[str]:
        last = "log ‖y − A x_t‖²/m" if self.carries_residual else "log ‖x_t − x_{t−1}‖²/n"
        return ["log ‖y‖²/m", "log ‖x_t‖²/n", last]

    @property
    def feature_dim(self) -> int:
        return len(self.feature_names)

    def step_costs(self) -> torch.Tensor:
        return torch.cumsum(self.layer_costs(), 0)  # layer_costs: (T,) per step, per subclass

    def feature_costs(self) -> torch.Tensor:
        """``(T,)`` multiply-adds per sample and step of :meth:`features`: one per squared
        entry of x_t (n) and of r_t (m) or x_t − x_{t−1} (n); y's (m) once, at the first step
        (where the change, x_1 itself, is counted though not recomputed: erring against the
        stop model by n)."""
        per_step = self.n + (self.m if self.carries_residual else self.n)
        return self._per_step(per_step + self.m, per_step)

    def _per_step(self, first: float, rest: float) -> torch.Tensor:
        """``(T,)`` float64: ``first`` at step 0, ``rest`` at every later step."""
        costs = torch.full((self.max_steps,), float(rest), dtype=torch.float64)
        costs[0] = first
        return costs


class ISTA(SparseStepModel):
    """x_{t+1} = η_{λ/L}(x_t − (1/L) Aᵀ(A x_t − y)) (Daubechies et al. 2004), fixed L and λ."""

    def __init__(self, A: torch.Tensor, steps: int, L: float, lam: float):
        super().__init__(A, steps)
        if not L > 0 or not lam >= 0:
            raise ValueError(f"ISTA needs L > 0 and λ >= 0; got L={L}, λ={lam}")
        self.L, self.lam = float(L), float(lam)

    def _gradient_step(self, point: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
        """η_{λ/L}(point − (1/L)Aᵀ(A point − y)); at t = 0 the point is 0."""
        if t == 0:
            v = (y @ self.A) / self.L
        else:
            v = point - ((point @ self.A.T - y) @ self.A) / self.L
        return soft_threshold(v, self.lam / self.L)

    def advance(self, state, t):
        x = state["x"]
        return {**state, "x": self._gradient_step(x, state["y"], t), "x_prev": x}

    def layer_costs(self):
        return self._per_step(self.m * self.n, 2.0 * self.m * self.n)


class FISTA(ISTA):
    """ISTA's step taken at the extrapolated point z = x_t + c_t(x_t − x_{t−1}) (Beck & Teboulle
    2009): c_t = (τ_t − 1)/τ_{t+1} at 0-based step t ≥ 1, τ_1 = 1, τ_{k+1} = (1 + √(1 + 4τ_k²))/2;
    step 0 starts from x_0 = 0 (no extrapolation)."""

    def __init__(self, A: torch.Tensor, steps: int, L: float, lam: float):
        super().__init__(A, steps, L, lam)
        tau = [1.0]
        for _ in range(steps):
            tau.append((1 + math.sqrt(1 + 4 * tau[-1] ** 2)) / 2)
        self.momentum = [0.0] + [(tau[t - 1] - 1) / tau[t] for t in range(1, steps)]

    def advance(self, state, t):
        x = state["x"]
        z = x + self.momentum[t] * (x - state["x_prev"]) if t > 0 else x
        return {**state, "x": self._gradient_step(z, state["y"], t), "x_prev": x}


class LISTA(SparseStepModel):
    """Untied LISTA (Gregor & LeCun 2010): x_{t+1} = η_{θ_t}(W_x^t x_t + W_b^t y).

    Per layer a ``(n, n)`` W_x, a ``(n, m)`` W_b and a threshold θ_t, initialised from ISTA with
    step 1/L and threshold λ/L: W_x = I − AᵀA/L, W_b = Aᵀ/L, θ = λ/L, so that the untrained model
    *is* ISTA. Layer 0 acts on x_0 = 0 and has no W_x. Weights are stored transposed, for
    batch-first products: ``x @ wx[t-1]`` and ``y @ wb[t]``.
    """

    def __init__(self, A: torch.Tensor, steps: int, L: float, lam: float):
        super().__init__(A, steps)
        A64 = A.to(torch.float64)
        n = A.shape[1]
        gram = (torch.eye(n, dtype=torch.float64, device=A.device) - A64.T @ A64 / L).to(A.dtype)
        self.wx = nn.ParameterList(nn.Parameter(gram.clone()) for _ in range(steps - 1))
        self.wb = nn.ParameterList(nn.Parameter((A / L).clone()) for _ in range(steps))
        self.theta = nn.Parameter(torch.full((steps,), lam / L, dtype=A.dtype, device=A.device))

    def advance(self, state, t):
        drive, x = state["y"] @ self.wb[t], state["x"]
        v = drive if t == 0 else torch.addmm(drive, x, self.wx[t - 1])
        return {**state, "x": soft_threshold(v, self.theta[t]), "x_prev": x}

    def layer_costs(self):
        return self._per_step(self.n * self.m, self.n * self.n + self.n * self.m)


class ResidualStepModel(SparseStepModel):
    """A model whose state carries the residual ``r = A x − y`` of the current estimate
    (computed once per layer, reused by the next layer and by the policy features)."""

    carries_residual = True

    def start(self, y):
        state = super().start(y)
        del state["x_prev"]  # the features read the residual instead of the change
        return {**state, "r": -state["y"]}

    def layer_costs(self):
        return self._per_step(2.0 * self.m * self.n, 2.0 * self.m * self.n)

    def _update(self, state, t: int, step: torch.Tensor) -> dict[str, torch.Tensor]:
        """x_{t+1} = η^{ss}_{θ_t}(x_t − step) and its residual, ``step (B, n)``."""
        x = support_threshold(state["x"] - step, self.theta[t], self.keep[t])
        return {**state, "x": x, "r": x @ self.A.T - state["y"]}


class ALISTA(ResidualStepModel):
    """ALISTA (Liu et al. 2019, Eq. 16) with support selection:

        x_{t+1} = η^{ss, p_t}_{θ_t}(x_t − γ_t Wᵀ(A x_t − y)),

    W the analytic weight (:func:`analytic_weight`), only the step sizes γ_t and thresholds θ_t
    learned; layer t passes ``keep[t]`` entries unshrunk (:func:`support_threshold`).
    """

    def __init__(self, A: torch.Tensor, steps: int, gamma: float, theta: float, keep: list[int]):
        super().__init__(A, steps)
        if len(keep) != steps:
            raise ValueError(f"keep needs one support size per layer ({steps}); got {len(keep)}")
        self.register_buffer("W", analytic_weight(A))

        def per_layer(value: float) -> nn.Parameter:
            return nn.Parameter(torch.full((steps,), float(value), dtype=A.dtype, device=A.device))

        self.gamma, self.theta = per_layer(gamma), per_layer(theta)
        self.keep = [int(k) for k in keep]

    def advance(self, state, t):
        return self._update(state, t, self.gamma[t] * (state["r"] @ self.W))


class LISTACPSS(ResidualStepModel):
    """LISTA-CP with support selection (Chen et al. 2018, Eq. 13), untied:

        x_{t+1} = η^{ss, p_t}_{θ_t}(x_t − W_tᵀ(A x_t − y)),

    a learned ``(m, n)`` W_t and threshold θ_t per layer (the coupled form W_x = I − W_tᵀA keeps
    x* a fixed point). :meth:`from_alista` starts it at a trained ALISTA (W_t = γ_t W); weights
    are stored as used in batch-first products, ``r @ w[t]``.
    """

    def __init__(self, A: torch.Tensor, weights: list[torch.Tensor], thetas, keep: list[int]):
        steps = len(weights)
        super().__init__(A, steps)
        if len(keep) != steps or len(thetas) != steps:
            raise ValueError(
                f"need one weight, threshold and support size per layer; got {steps} weights, "
                f"{len(thetas)} thresholds, {len(keep)} support sizes"
            )
        wrong = [tuple(w.shape) for w in weights if w.shape != A.shape]
        if wrong:
            raise ValueError(f"each W_t must have A's shape {tuple(A.shape)}; got {wrong[0]}")
        self.w = nn.ParameterList(nn.Parameter(w.detach().clone().to(A.dtype)) for w in weights)
        self.theta = nn.Parameter(torch.as_tensor(thetas, dtype=A.dtype).detach().clone())
        self.keep = [int(k) for k in keep]

    @classmethod
    def from_alista(cls, alista: ALISTA) -> LISTACPSS:
        """The LISTA-CP-SS that computes exactly what ``alista`` computes."""
        weights = [alista.W * g for g in alista.gamma.detach()]
        return cls(alista.A, weights, alista.theta.detach(), alista.keep)

    def advance(self, state, t):
        return self._update(state, t, state["r"] @ self.w[t])


def _policy_example():
    F, T = 4, 5
    policy = StopPolicy(F, T, hidden=(8,))
    policy.standardise(torch.randn(50, F) * 3 + 1)
    return policy, torch.randn(6, F), T


@register_policy("lista-stop", _policy_example)
class StopPolicy(nn.Module):
    """The stage-II policy of both stop models: an MLP on the step model's standardised
    log-norm features and a one-hot step → a score ``(B,)`` (a hazard logit for L2S-trained
    policies; −log of the predicted gain rate for gain-trained ones, see methods.py).

    ``features (B, F)`` are :meth:`SparseStepModel.features`; they are standardised with the
    mean and standard deviation :meth:`standardise` takes from the training pool (buffers, saved
    with the policy). The first layer computes W [(f − shift)/scale, one_hot(t)] + b, with the
    standardisation and the one-hot step folded into its weight and bias: one product of the
    ``(B, F)`` features per call. ``init_bias``: the initial output (a negative hazard logit:
    rarely stop at first).
    """

    def __init__(self, num_features: int, max_steps: int, hidden=(32,), init_bias: float = -3.0):
        super().__init__()
        widths = [num_features + max_steps, *hidden]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.out = nn.Linear(widths[-1], 1)
        nn.init.constant_(self.out.bias, init_bias)
        self.register_buffer("shift", torch.zeros(num_features))
        self.register_buffer("scale", torch.ones(num_features))

    @torch.no_grad()
    def standardise(self, features: torch.Tensor) -> None:
        """Take the shift and scale of every feature from ``features (N, F)``."""
        flat = features.reshape(-1, self.shift.shape[0]).double()
        self.shift.copy_(flat.mean(0))
        self.scale.copy_(flat.std(0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        F = self.shift.shape[0]
        if features.dim() != 2 or features.shape[1] != F:
            raise ValueError(
                f"policy features must have shape (B, {F}); got {tuple(features.shape)}"
            )
        first = self.layers[0]
        weight = first.weight[:, :F] / self.scale  # (h, F): the standardisation folded in
        base = first.bias - weight @ self.shift  # (h,)
        step_columns = first.weight[:, F:]  # (h, T): what the one-hot step adds
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            bias = base + step_columns.T[t.long().to(features.device)]  # (B, h)
        else:
            bias = base + step_columns[:, int(t)]
        h = torch.addmm(bias, features, weight.T).relu_()
        for layer in self.layers[1:]:
            h = layer(h).relu_()
        return self.out(h).squeeze(-1)

    def macs(self) -> int:
        """Multiply-adds per sample and step: the linear layers on the features (the one-hot
        step and the standardisation are folded into the first layer's bias and weight)."""
        F = self.shift.shape[0]
        first = self.layers[0].out_features * F
        rest = sum(layer.in_features * layer.out_features for layer in self.layers[1:])
        return first + rest + self.out.in_features
