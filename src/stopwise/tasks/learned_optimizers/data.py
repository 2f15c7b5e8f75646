"""Function families: the optimizees a learned optimizer is meta-trained and tested on.

A *function family* is any object with (see :class:`FunctionFamily`)::

    dim: int                                         # D, parameters per function
    sample(n, generator) -> functions                # n functions: a tensor or a tuple/dict of
                                                     # batch-first tensors (rows = functions)
    initial(functions) -> theta (n, D)               # where optimisation starts
    loss(theta (n, D), functions, step) -> (n,)      # the loss the optimizer sees at ``step``
                                                     # (a minibatch loss for stochastic families)

and optionally ``full_loss(theta, functions) -> (n,)`` (the deterministic objective reported;
default: ``loss`` at step 0), ``optimum(functions) -> (n,)`` (min_θ full_loss),
``gap(theta, functions) -> (n,)`` (f(θ) − f(θ̂) computed without subtracting two nearly equal
losses; see :func:`suboptimality`), ``difficulty(functions) -> {name: (n,)}`` and ``loss_and_gradient(theta,
functions, step) -> ((n,), (n, D))`` in closed form (default: autograd; a closed form saves
autograd's fixed cost on every optimizer step). Functions are independent, so
``∇_θ Σ_i loss_i`` is every function's own gradient: optimizers never mix rows.

Families here: :class:`RegressionFamily` (the thesis's 2-parameter Bayesian linear regression,
§5.1), :class:`QuadraticFamily` (the 10-D quadratics of Andrychowicz et al. 2016) and
:class:`MLPFamily` (a small MLP classifier on scikit-learn digits or MNIST-1D, the paper's MNIST
experiment and its generalisation variants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ...datasets import digits

__all__ = [
    "FunctionFamily",
    "full_loss",
    "suboptimality",
    "RegressionFamily",
    "QuadraticFamily",
    "MLPFamily",
    "load_images",
]


@runtime_checkable
class FunctionFamily(Protocol):
    """A distribution over functions to minimise (see the module docstring)."""

    dim: int

    def sample(self, n: int, generator: torch.Generator) -> Any: ...

    def initial(self, functions: Any) -> torch.Tensor: ...

    def loss(self, theta: torch.Tensor, functions: Any, step: int) -> torch.Tensor: ...


def full_loss(family: FunctionFamily, theta: torch.Tensor, functions: Any) -> torch.Tensor:
    """``(n,)`` the family's reported objective: ``family.full_loss`` if it has one, else the
    loss at step 0 (deterministic families see the same loss at every step)."""
    if hasattr(family, "full_loss"):
        return family.full_loss(theta, functions)
    return family.loss(theta, functions, 0)


def suboptimality(family: FunctionFamily, theta: torch.Tensor, functions: Any) -> torch.Tensor:
    """``(n,)`` f(θ) − f(θ̂): ``family.gap`` if it has one; else ``full_loss − optimum`` if the
    family knows its optimum; else the loss itself (the MLP's training loss).

    Subtracting f(θ̂) from f(θ) loses every digit below float64's resolution of f (about 1e-16
    × |f|), so near the optimum that difference is rounding noise; a family whose loss is
    quadratic in θ writes the gap as a quadratic form in θ − θ̂ instead, exact to the rounding
    of θ̂ itself."""
    if hasattr(family, "gap"):
        return family.gap(theta, functions)
    loss = full_loss(family, theta, functions)
    if hasattr(family, "optimum"):
        return loss - family.optimum(functions).to(loss.dtype)
    return loss


def _log_uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


@dataclass
class RegressionFamily:
    """Bayesian linear regression with two parameters (Sander 2017, §5.1).

    Per function: θ* ~ N(0, α⁻¹ I₂), N ~ U{n_min..n_max} observations x_n ~ U(−a, a) with a
    log-uniform in [a_min, a_max], y_n = θ*₀ + θ*₁ x_n + ε_n, ε_n ~ N(0, β⁻¹) with β log-uniform in
    [β_min, β_max]. The loss is the Gaussian negative log-likelihood per observation,

        f(θ) = ½ log(2π/β) + (β / 2N) Σ_n (y_n − θ₀ − θ₁ x_n)²,

    whose minimiser is the least-squares θ̂ = (ΦᵀΦ)⁻¹Φᵀy, Φ = [1, x]: suboptimality f(θ_t) − f(θ̂)
    is exact. ``a`` sets the condition number of ΦᵀΦ, N and β the curvature, so the steps a
    function needs vary. Functions are dicts of ``(n, n_max)`` x, y, mask and ``(n,)`` beta, count,
    scale, theta_star. Optimisation starts at θ₀ = 0.
    """

    obs_min: int = 5
    obs_max: int = 50
    scale_min: float = 0.1
    scale_max: float = 2.0
    noise_precision_min: float = 1.0
    noise_precision_max: float = 25.0
    prior_precision: float = 1.0
    dim: int = 2

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        f64 = torch.float64
        count = torch.randint(self.obs_min, self.obs_max + 1, (n,), generator=generator)
        scale = _log_uniform(n, self.scale_min, self.scale_max, generator)
        beta = _log_uniform(n, self.noise_precision_min, self.noise_precision_max, generator)
        theta_star = torch.randn(n, 2, generator=generator, dtype=f64)
        theta_star = theta_star / math.sqrt(self.prior_precision)
        width = self.obs_max
        x = (2 * torch.rand(n, width, generator=generator, dtype=f64) - 1) * scale.unsqueeze(-1)
        noise = torch.randn(n, width, generator=generator, dtype=f64) / beta.sqrt().unsqueeze(-1)
        mask = (torch.arange(width).unsqueeze(0) < count.unsqueeze(-1)).to(f64)
        y = (theta_star[:, :1] + theta_star[:, 1:] * x + noise) * mask
        return {
            "x": x * mask,
            "y": y,
            "mask": mask,
            "beta": beta,
            "count": count.to(f64),
            "scale": scale,
            "theta_star": theta_star,
        }

    def initial(self, functions) -> torch.Tensor:
        return torch.zeros(functions["x"].shape[0], 2, dtype=functions["x"].dtype)

    def loss(self, theta: torch.Tensor, functions, step: int = 0) -> torch.Tensor:
        return self._nll(self._residual(theta, functions), functions)

    def loss_and_gradient(self, theta: torch.Tensor, functions, step: int = 0):
        """``(f, ∇f)``: ∂f/∂θ = −(β/N) Σ_n r_n [1, x_n] with r_n = y_n − θ₀ − θ₁ x_n."""
        residual = self._residual(theta, functions)
        sums = torch.stack([residual.sum(-1), (residual * functions["x"]).sum(-1)], dim=-1)
        scale = -functions["beta"] / functions["count"]
        return self._nll(residual, functions), scale.unsqueeze(-1) * sums

    @staticmethod
    def _residual(theta: torch.Tensor, functions) -> torch.Tensor:
        x, y, mask = functions["x"], functions["y"], functions["mask"]
        return (y - theta[:, :1] - theta[:, 1:] * x) * mask

    @staticmethod
    def _nll(residual: torch.Tensor, functions) -> torch.Tensor:
        beta = functions["beta"]
        mean_square = (residual * residual).sum(-1) / functions["count"]
        return 0.5 * torch.log(2 * math.pi / beta) + 0.5 * beta * mean_square

    def full_loss(self, theta, functions) -> torch.Tensor:
        return self.loss(theta, functions)

    def nll_scale(self, functions) -> torch.Tensor:
        """``(n,)`` N: the loss is per observation, N·f(θ) = −log p(y | x, θ)."""
        return functions["count"]

    def minimiser(self, functions) -> torch.Tensor:
        """``(n, 2)`` the least-squares θ̂ (normal equations)."""
        x, y, mask = functions["x"], functions["y"], functions["mask"]
        phi = torch.stack([mask, x], dim=-1)  # (n, N, 2); masked rows are zero
        gram = phi.transpose(1, 2) @ phi
        return torch.linalg.solve(gram, (phi.transpose(1, 2) @ y.unsqueeze(-1))).squeeze(-1)

    def optimum(self, functions) -> torch.Tensor:
        """``(n,)`` f(θ̂)."""
        return self.loss(self.minimiser(functions), functions)

    def gap(self, theta, functions) -> torch.Tensor:
        """``(n,)`` f(θ) − f(θ̂) = (β / 2N) Σ_n (φ_nᵀ(θ − θ̂))², φ_n = [1, x_n]: f is quadratic in
        θ and ∇f(θ̂) = 0, so the second-order expansion at θ̂ is exact."""
        phi = torch.stack([functions["mask"], functions["x"]], dim=-1)
        delta = (phi @ (theta - self.minimiser(functions)).unsqueeze(-1)).squeeze(-1)
        return 0.5 * functions["beta"] * (delta * delta).sum(-1) / functions["count"]

    def difficulty(self, functions) -> dict[str, torch.Tensor]:
        """Condition number of ΦᵀΦ (the Hessian up to β/N), the number of observations N and
        the initial suboptimality f(θ₀) − f(θ̂)."""
        phi = torch.stack([functions["mask"], functions["x"]], dim=-1)
        eigenvalues = torch.linalg.eigvalsh(phi.transpose(1, 2) @ phi)
        return {
            "condition_number": eigenvalues[:, -1] / eigenvalues[:, 0],
            "observations": functions["count"],
            "initial_gap": self.gap(self.initial(functions), functions),
        }


@dataclass
class QuadraticFamily:
    """f(θ) = ‖Wθ − y‖² with W (d × d) and y (d) IID N(0, 1) (Andrychowicz et al. 2016, §3.1, the
    paper's Gaussian draw; the official code draws them uniform). Optimisation starts at θ = 0."""

    dim: int = 10

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        W = torch.randn(n, self.dim, self.dim, generator=generator, dtype=torch.float64)
        y = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return {"W": W, "y": y}

    def initial(self, functions) -> torch.Tensor:
        return torch.zeros(functions["W"].shape[0], self.dim, dtype=torch.float64)

    def loss(self, theta, functions, step: int = 0) -> torch.Tensor:
        residual = self._residual(theta, functions)
        return (residual * residual).sum(-1)

    def loss_and_gradient(self, theta, functions, step: int = 0):
        """``(f, ∇f)``: ∇f = 2 Wᵀ(Wθ − y)."""
        residual = self._residual(theta, functions)
        grad = 2 * (functions["W"].transpose(1, 2) @ residual.unsqueeze(-1)).squeeze(-1)
        return (residual * residual).sum(-1), grad

    @staticmethod
    def _residual(theta, functions) -> torch.Tensor:
        return (functions["W"] @ theta.unsqueeze(-1)).squeeze(-1) - functions["y"]

    def full_loss(self, theta, functions) -> torch.Tensor:
        return self.loss(theta, functions)

    def optimum(self, functions) -> torch.Tensor:
        """``(n,)`` min_θ ‖Wθ − y‖² (0 up to rounding: W is square and almost surely invertible)."""
        return torch.zeros(functions["W"].shape[0], dtype=functions["W"].dtype)

    def difficulty(self, functions) -> dict[str, torch.Tensor]:
        """Condition number of WᵀW (the Hessian up to a factor 2) and f(θ₀) − f(θ̂)."""
        singular = torch.linalg.svdvals(functions["W"])
        return {
            "condition_number": (singular[:, 0] / singular[:, -1]) ** 2,
            "initial_gap": self.loss(self.initial(functions), functions),
        }


# Images of each set (mnist1d: make_dataset's defaults, 4,000 train + 1,000 test).
IMAGE_COUNTS = {"digits": 1797, "mnist1d": 5000}


def load_images(dataset: str, train_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed train / test split of a small image set, features standardised on train.

    A feature constant on the training images (a digits pixel that is always 0 there) carries
    nothing a model can learn; it is set to 0 everywhere rather than divided by its zero spread
    (a floor of 1e-3 turned a test image's stray pixel into an input of thousands).

    ``dataset``: ``"digits"`` (scikit-learn's 1,797 8×8 digits, shipped with the package) or
    ``"mnist1d"`` (``mnist1d.make_dataset`` with its default arguments; generated, never
    downloaded). Returns ``x_train (N, F)``, ``y_train (N,)``, ``x_test``, ``y_test``.
    """
    if dataset == "digits":
        images, labels = digits()
        x, y = (
            torch.tensor(images.reshape(len(labels), -1), dtype=torch.float32),
            torch.tensor(labels),
        )
    elif dataset == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        data = make_dataset(get_dataset_args())
        x = torch.tensor(data["x"], dtype=torch.float32)
        y = torch.tensor(data["y"]).long()
        x = torch.cat([x, torch.tensor(data["x_test"], dtype=torch.float32)])
        y = torch.cat([y, torch.tensor(data["y_test"]).long()])
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose 'digits' or 'mnist1d'")
    if not 0 < train_size < len(y):
        raise ValueError(f"train_size must lie in 1..{len(y) - 1}; got {train_size}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = order[:train_size], order[train_size:]
    mean, std = x[train].mean(0), x[train].std(0)
    x = torch.where(std > 0, (x - mean) / std.clamp_min(1e-12), 0.0)
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


_ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


class MLPFamily:
    """A small MLP classifier trained on minibatches (Andrychowicz et al. 2016, §3.2).

    A function is one training run: initial weights N(0, init_std²) (the official code's 0.01)
    and one minibatch of ``batch`` training images per step. The loss at step t is the
    cross-entropy of minibatch t; ``full_loss`` is the cross-entropy on the whole training set and
    :meth:`accuracy` the accuracy on the held-out test images. θ ``(n, D)`` holds every weight and
    bias of the network, layer by layer (weights row-major, in × out). Functions are dicts of
    ``(n, D)`` init and ``(n, steps + 1, batch)`` minibatch indices.
    """

    def __init__(
        self,
        images: dict[str, torch.Tensor],
        hidden: tuple[int, ...] = (20,),
        activation: str = "sigmoid",
        batch: int = 128,
        steps: int = 100,
        init_std: float = 0.01,
    ):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose {list(_ACTIVATIONS)}")
        self.images, self.hidden, self.activation = images, tuple(hidden), activation
        self.batch, self.steps, self.init_std = batch, steps, init_std
        self.classes = int(images["y_train"].max()) + 1
        widths = [images["x_train"].shape[1], *self.hidden, self.classes]
        self.shapes = [(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        self.dim = sum(a * b + b for a, b in self.shapes)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        init = torch.randn(n, self.dim, generator=generator) * self.init_std
        count = self.images["x_train"].shape[0]
        batches = torch.randint(count, (n, self.steps + 1, self.batch), generator=generator)
        return {"init": init, "batches": batches}

    def initial(self, functions) -> torch.Tensor:
        return functions["init"].clone()

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(n, M, C)`` logits of inputs ``x`` ``(n, M, F)`` (or ``(M, F)``, shared)."""
        h = x if x.dim() == 3 else x.unsqueeze(0).expand(theta.shape[0], -1, -1)
        offset = 0
        act = _ACTIVATIONS[self.activation]
        for i, (a, b) in enumerate(self.shapes):
            W = theta[:, offset : offset + a * b].reshape(-1, a, b)
            bias = theta[:, offset + a * b : offset + a * b + b]
            offset += a * b + b
            h = torch.baddbmm(bias.unsqueeze(1), h, W)
            if i < len(self.shapes) - 1:
                h = act(h)
        return h

    def _cross_entropy(self, theta, x, y) -> torch.Tensor:
        logits = self.logits(theta, x)
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(
            -1
        )

    def loss(self, theta, functions, step: int) -> torch.Tensor:
        rows = functions["batches"][:, step % functions["batches"].shape[1]]  # (n, batch)
        return self._cross_entropy(
            theta, self.images["x_train"][rows], self.images["y_train"][rows]
        )

    def full_loss(self, theta, functions) -> torch.Tensor:
        x, y = self.images["x_train"], self.images["y_train"]
        return self._cross_entropy(theta, x, y.unsqueeze(0).expand(theta.shape[0], -1))

    def accuracy(self, theta) -> torch.Tensor:
        """``(n,)`` test accuracy of each function's parameters."""
        predicted = self.logits(theta, self.images["x_test"]).argmax(-1)
        return (predicted == self.images["y_test"]).float().mean(-1)
