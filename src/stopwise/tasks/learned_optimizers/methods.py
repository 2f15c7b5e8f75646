"""How each method trains: meta-training of the LSTM optimizer (Andrychowicz et al. 2016) and of
the ACT optimizer (Sander 2017), learning-rate tuning of the hand-designed optimizers on
validation functions, and stage II of L2S (the stop policy imitating the oracle) on a trained
LSTM optimizer.

Meta-training (both optimizers). One meta-iteration draws ``functions`` functions from the
family, starts them at ``family.initial`` with a fresh LSTM state and runs ``horizon`` optimizer
steps in windows of ``unroll`` steps (truncated back-propagation through time: θ and the LSTM
state are carried, detached, from one window to the next). The optimizee gradient enters the LSTM
without a graph (∂∇_t/∂φ = 0, the paper's assumption), computed with ``torch.func``.

* LSTM optimizer: after each window, one Adam step on L(φ) = mean over functions of
  Σ_{t in window} f(θ_{t+1}) (the paper's meta-loss, all weights w_t = 1).
* ACT optimizer: the loss is the random-horizon bound (``objectives.random_horizon_bound``):
  E_{p(T)}[E_{q(t|x,T)} ℓ_t + β KL(q(·|x,T) ‖ p(·|T))] with ℓ_t = −log p(x | θ_{t+1}) and
  q(t|x,T) = softmax_{t≤T}(c_t), c_t = Σ_{u≤t} Δq_u, averaged exactly over the horizons
  T ∈ 0..horizon−1 (the prior restricted to them and renormalised). The normaliser of q couples
  every step, so a window cannot be scored alone: a first pass without gradients runs the whole
  trajectory; then each window is rerun with gradients and scored with the bound over the whole
  trajectory, its own steps live and every other step's values taken, as constants, from the
  first pass (identical numbers: φ has not changed). The windows' gradients are accumulated and
  one Adam step is taken per meta-iteration: the truncated-BPTT gradient of the full bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ...objectives import l2s_stage2_loss, random_horizon_bound
from ...steps import cat_state, index_state, state_batch_size
from ...stoptime import StopTime
from ...training import (
    EpochBatches,
    GeneratedBatches,
    LoopSettings,
    ValidationSchedule,
    diverged,
    fit_gain_head,
    optimize,
    policy_hazards,
)
from ...training import train_loop as core_train_loop
from .data import FunctionFamily, full_loss, suboptimality
from .metrics import diverged_as_large
from .models import (
    HandDesigned,
    L2SPolicy,
    LSTMOptimizerNet,
    OptimizerRun,
    StackedLSTMOptimizers,
    loss_and_gradient,
)

__all__ = [
    "meta_train",
    "meta_train_restarts",
    "meta_train_act",
    "act_meta_gradient",
    "nll_scale",
    "tune_learning_rates",
    "loss_curves",
    "fit_l2s_policy",
    "step_penalised",
]


def nll_scale(family: FunctionFamily, functions: Any) -> torch.Tensor:
    """``(n,)`` the factor turning ``family.loss`` into a negative log-likelihood in nats:
    ``family.nll_scale(functions)`` if defined (the regression family's loss is per observation,
    so N), else 1."""
    if hasattr(family, "nll_scale"):
        return family.nll_scale(functions)
    return torch.ones(_rows(functions))


def _rows(functions: Any) -> int:
    return state_batch_size(functions)


# :func:`loss_curves` runs the LSTM optimizer on about this many coordinates (functions × D) at
# a time by default. It keeps a state per coordinate, and its gates then stay in cache: with one
# thread on this project's 2-core EPYC, lstm_cell costs 0.85 µs a row at 7.5k rows against 1.5 µs
# at 75k (the MLP family's old chunks of 50 functions), and the MLP's 100 evaluation runs take
# 40% less CPU time. Hand-designed optimizers are elementwise and pay a fixed cost per chunk and
# step, so they run in chunks of HAND_CHUNK functions (chunks of 5 MLP functions tripled the
# time of their learning-rate search).
CHUNK_COORDINATES, HAND_CHUNK = 8192, 2000


def _default_chunk(family: FunctionFamily, stepper: nn.Module, functions: Any) -> int:
    """Functions per chunk: about :data:`CHUNK_COORDINATES` coordinates for the LSTM optimizer,
    :data:`HAND_CHUNK` functions for the others."""
    if not isinstance(stepper, LSTMOptimizerNet):
        return HAND_CHUNK
    dim = family.initial(index_state(functions, torch.arange(1))).shape[1]
    return max(1, CHUNK_COORDINATES // dim)


def _window(
    net: LSTMOptimizerNet,
    family: FunctionFamily,
    functions: Any,
    theta: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    steps: range,
    gaps: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor | None]:
    """Run the optimizer over ``steps``; returns θ, the LSTM state, the losses f(θ_{t+1})
    ``(n, len(steps))`` (with ``gaps``: the suboptimalities f(θ_{t+1}) − f(θ̂); with graph to φ
    when grad is enabled) and Δq ``(n, len(steps))``."""
    losses, increments = [], []
    for t in steps:
        _, grad = loss_and_gradient(family, theta, functions, t)
        update, halting, state = net(grad, state)
        theta = theta + update
        if gaps:
            losses.append(suboptimality(family, theta, functions))
        else:
            losses.append(family.loss(theta, functions, t + 1))
        if halting is not None:
            increments.append(halting)
    dq = torch.stack(increments, dim=1) if increments else None
    return theta, state, torch.stack(losses, dim=1), dq


def _check_schedule(horizon: int, unroll: int, iterations: int, functions: int) -> None:
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0; got {iterations}")
    if functions < 1:
        raise ValueError(f"functions must be >= 1; got {functions}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1; got {horizon}")
    if not 1 <= unroll <= horizon:
        raise ValueError(f"unroll must lie in 1..horizon={horizon}; got {unroll}")


def _windows(horizon: int, unroll: int) -> list[range]:
    return [range(s, min(s + unroll, horizon)) for s in range(0, horizon, unroll)]


def meta_train(
    net: LSTMOptimizerNet,
    family: FunctionFamily,
    iterations: int,
    *,
    horizon: int = 100,
    unroll: int = 20,
    functions: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    settings: LoopSettings | None = None,
    stage: str = "meta-train",
    objective: str = "loss",
    validate: Callable[[], float] | None = None,
    validate_every: int = 0,
) -> dict[str, float]:
    """Meta-train the LSTM optimizer ``net`` on ``family`` (Andrychowicz et al. 2016, Eq. 1–2).

    ``iterations`` meta-iterations of ``functions`` functions each, every one optimised for
    ``horizon`` steps in windows of ``unroll``, one Adam step (learning rate ``lr``) on
    Σ_{t in window} f(θ_{t+1}) after each window (see the module docstring). Functions are drawn
    from a generator seeded with ``seed``. Resumable through ``settings`` (checkpoints, metrics).
    Returns the last iteration's metrics: ``meta_loss`` (mean f over its last window) and
    ``final_loss`` (mean f(θ_horizon)); with ``objective="log_gap"`` means of gaps instead.

    With ``validate`` (``() -> score``, higher is better, e.g. minus the mean log suboptimality
    on validation functions) and ``validate_every`` > 0, the network is scored every
    ``validate_every`` meta-iterations and after the last, and the best-scoring weights are kept
    (``net`` ends on them; ``selected_iteration`` and ``selected_score`` are added to the
    returned metrics), as the official code saves the optimizer whenever its evaluation improves.
    The choice is checkpointed with the stage, so a resumed run chooses the same.

    ``objective="log_gap"`` (not the paper's; a diagnostic for families with a known optimum,
    ``family.optimum``) replaces f(θ_{t+1}) in the meta-loss by log(f(θ_{t+1}) − f(θ̂)) (the
    family's :func:`~.data.suboptimality`), which weighs precision at every step equally instead
    of letting the early, large losses dominate.
    """
    _check_schedule(horizon, unroll, iterations, functions)
    if objective not in ("loss", "log_gap"):
        raise ValueError(f"objective must be 'loss' or 'log_gap'; got {objective!r}")
    if objective == "log_gap" and not hasattr(family, "optimum"):
        raise ValueError("objective='log_gap' needs a family with a known optimum (optimum())")
    batches = GeneratedBatches(lambda n, g: family.sample(n, g), functions, seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)

    def step_fn(step: int) -> dict[str, float]:
        losses = _meta_iteration(
            net, family, batches(step), horizon, unroll, objective, optimizer,
            lambda what: diverged(what, step, stage, settings, _ADVICE),
        )  # fmt: skip
        return {
            "meta_loss": float(losses.detach().mean()),
            "final_loss": float(losses[:, -1].detach().mean()),
        }

    selection = None
    if validate is not None and validate_every > 0:
        selection = ValidationSchedule(
            net, optimizer, lambda: {"score": validate()}, iterations, validate_every,
            patience=1, max_drops=0,
        )  # fmt: skip
        train_step = step_fn

        def step_fn(step: int) -> dict[str, float]:
            metrics = train_step(step)
            selection.step()
            return metrics

    net.train()
    state = {"net": net, "optimizer": optimizer, "functions": batches, "selection": selection}
    metrics = core_train_loop(stage, iterations, step_fn, state, settings)
    if selection is not None:
        selection.restore_best()
        metrics = {
            **metrics,
            "selected_iteration": selection.best_step,
            "selected_score": selection.best_score,
        }
    net.eval()
    return metrics


def _meta_iteration(net, family, sampled, horizon, unroll, objective, optimizer, diverged_error):
    """One meta-iteration on the functions ``sampled``: ``horizon`` steps in windows of
    ``unroll``, an Adam step after each; returns the last window's losses ``(n, steps)``.
    The meta-loss is a mean over functions, taken per network of a :class:`StackedLSTMOptimizers`
    (``groups`` blocks of rows) and summed: each network gets the gradient it would alone.
    A meta-loss or meta-gradient that is not finite raises ``diverged_error(what)`` before Adam
    applies it (every later step would be NaN, so no checkpoint may hold it)."""
    theta = family.initial(sampled)
    state = net.initial_state(*theta.shape)
    log_gap, groups = objective == "log_gap", getattr(net, "groups", 1)
    for steps in _windows(horizon, unroll):
        theta, state, losses, _ = _window(net, family, sampled, theta, state, steps, log_gap)
        if log_gap:  # clamped at the smallest float64 so a gap of exactly 0 stays finite
            per_function = losses.clamp_min(torch.finfo(losses.dtype).tiny).log().sum(1)
        else:
            per_function = losses.sum(1)
        if groups == 1:
            meta_loss = per_function.mean()
        else:
            meta_loss = per_function.view(groups, -1).mean(1).sum()
        optimizer.zero_grad(set_to_none=True)
        meta_loss.backward()
        found = _not_finite(meta_loss, net)
        if found:
            raise diverged_error(found)
        optimizer.step()
        theta, state = theta.detach(), tuple(s.detach() for s in state)
    return losses


_ADVICE = (
    "Lower the meta learning rate (lr) or output_scale, or choose another update rule (update)."
)


def _not_finite(meta_loss: torch.Tensor, net: nn.Module) -> str | None:
    """What is NaN or infinite, the meta-loss or its gradient (a finite loss can have an
    infinite gradient); None if neither."""
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else meta_loss.new_zeros(())
    if bool(torch.isfinite(meta_loss)) and bool(torch.isfinite(norm)):
        return None
    return f"meta-loss {float(meta_loss.detach())}, meta-gradient norm {float(norm)}"


def meta_train_restarts(
    nets: Sequence[LSTMOptimizerNet],
    family: FunctionFamily,
    iterations: int,
    *,
    seeds: Sequence[int],
    validate: Callable[[LSTMOptimizerNet], float],
    validate_every: int,
    horizon: int = 100,
    unroll: int = 20,
    functions: int = 64,
    lr: float = 3e-3,
    settings: LoopSettings | None = None,
    stage: str = "meta-train-restarts",
) -> list[dict[str, float]]:
    """:func:`meta_train` of several networks of one shape (restarts) side by side, as one
    :class:`StackedLSTMOptimizers`: network r draws its functions from a generator seeded with
    ``seeds[r]``, has its own Adam state (Adam is elementwise) and is chosen on validation
    alone (``validate(net) -> score``, every ``validate_every`` meta-iterations and after the
    last; 0: keep the last weights). The same results as R calls of :func:`meta_train` up to float
    rounding, in about half the time for three restarts. ``nets`` end on their chosen weights;
    returns each one's metrics (``meta_loss``, ``final_loss``, and ``selected_iteration`` /
    ``selected_score`` where it chose). One stage: checkpointed and resumed as a whole."""
    _check_schedule(horizon, unroll, iterations, functions)
    if len(seeds) != len(nets):
        raise ValueError(f"{len(nets)} networks but {len(seeds)} seeds")
    stacked = StackedLSTMOptimizers(list(nets))
    streams = [GeneratedBatches(lambda n, g: family.sample(n, g), functions, s) for s in seeds]
    optimizer = torch.optim.Adam(stacked.parameters(), lr=lr)

    def evaluate(r: int) -> Callable[[], dict[str, float]]:
        def score() -> dict[str, float]:
            nets[r].load_state_dict(stacked.weights(r))
            return {"score": validate(nets[r])}

        return score

    selections = []
    if validate_every > 0:
        selections = [
            ValidationSchedule(
                net, optimizer, evaluate(r), iterations, validate_every, patience=1, max_drops=0
            )  # fmt: skip
            for r, net in enumerate(nets)
        ]
    R, rows = len(nets), functions

    def step_fn(step: int) -> dict[str, float]:
        sampled = cat_state([stream(step) for stream in streams])
        losses = _meta_iteration(
            stacked, family, sampled, horizon, unroll, "loss", optimizer,
            lambda what: diverged(what, step, stage, settings, _ADVICE),
        )  # fmt: skip
        for selection in selections:
            selection.step()
        blocks = losses.detach().view(R, rows, -1)
        return {
            **{f"meta_loss_{r}": float(blocks[r].mean()) for r in range(R)},
            **{f"final_loss_{r}": float(blocks[r, :, -1].mean()) for r in range(R)},
        }

    stacked.train()
    state = {
        "net": stacked,
        "optimizer": optimizer,
        **{f"functions{r}": stream for r, stream in enumerate(streams)},
        **{f"selection{r}": selection for r, selection in enumerate(selections)},
    }
    metrics = core_train_loop(stage, iterations, step_fn, state, settings)
    if not metrics:  # no meta-iteration: the networks keep their weights (as in meta_train)
        return [{} for _ in nets]
    out = []
    for r, net in enumerate(nets):
        one = {"meta_loss": metrics[f"meta_loss_{r}"], "final_loss": metrics[f"final_loss_{r}"]}
        if selections:
            selections[r].restore_best()
            one.update(selected_iteration=selections[r].best_step,
                       selected_score=selections[r].best_score)  # fmt: skip
        else:
            net.load_state_dict(stacked.weights(r))
        net.eval()
        out.append(one)
    return out


def trained_weights(checkpoint: dict[str, Any], restart: int | None = None) -> dict[str, Any]:
    """The weights :func:`meta_train` ended on, from its stage checkpoint's state: the
    validation-chosen ones where it chose, else the last. ``restart``: network r of a
    :func:`meta_train_restarts` checkpoint."""
    suffix = "" if restart is None else str(restart)
    selection = checkpoint.get(f"selection{suffix}")
    if selection is not None and selection.get("best_state") is not None:
        return selection["best_state"]
    if restart is None:
        return checkpoint["net"]
    return StackedLSTMOptimizers.weights_in(checkpoint["net"], restart)


def act_meta_gradient(
    net: LSTMOptimizerNet,
    family: FunctionFamily,
    functions: Any,
    prior_p: float,
    kl_weight: float = 1.0,
    *,
    horizon: int,
    unroll: int,
    step_cost: float = 0.0,
) -> dict[str, float]:
    """Accumulate into ``.grad`` the truncated-BPTT gradient of the random-horizon bound of
    Sander (2017) on ``functions`` (see the module docstring); returns ``bound`` (per
    function), ``mean_steps`` (E_q[t + 1] at the full horizon) and ``final_loss``.

    The bound: E_{p(T)}[Σ_{t≤T} q(t|x,T) ℓ_t + β KL(q(·|x,T) ‖ p(·|T))], with
    ℓ_t = nll_scale · (f(θ_{t+1}) + λ(t + 1)), λ = ``step_cost`` (0 in the thesis: only the prior
    favours early stops), q(t|x,T) = softmax_{t≤T}(c_t), c_t = Σ_{u≤t} Δq_u, and
    p(t|T) = (1 − s)s^t / (1 − s^{T+1}), s = √(1 − prior_p), averaged exactly over
    T ∈ 0..horizon−1 (``objectives.random_horizon_bound``).
    """
    scale = nll_scale(family, functions).unsqueeze(-1)
    price = step_cost * torch.arange(1, horizon + 1, dtype=scale.dtype)
    start = family.initial(functions)
    with torch.no_grad():  # pass 1: the whole trajectory, as constants
        _, _, all_losses, all_dq = _window(
            net, family, functions, start, net.initial_state(*start.shape), range(horizon)
        )
    theta, state = start, net.initial_state(*start.shape)
    for steps in _windows(horizon, unroll):
        theta, state, losses, dq = _window(net, family, functions, theta, state, steps)
        live = slice(steps.start, steps.stop)
        window_dq = torch.cat([all_dq[:, : live.start], dq, all_dq[:, live.stop :]], dim=1)
        window_losses = torch.cat(
            [all_losses[:, : live.start], losses, all_losses[:, live.stop :]], dim=1
        )
        bound = random_horizon_bound(
            torch.cumsum(window_dq, dim=1), scale * (window_losses + price), prior_p, kl_weight
        )
        bound.backward()
        theta, state = theta.detach(), tuple(s.detach() for s in state)
    posterior = torch.softmax(torch.cumsum(all_dq, dim=1), dim=1)
    used = (posterior * torch.arange(1, horizon + 1)).sum(1)
    return {
        "bound": float(bound.detach()),
        "mean_steps": float(used.mean()),
        "final_loss": float(all_losses[:, -1].mean()),
    }


def meta_train_act(
    net: LSTMOptimizerNet,
    family: FunctionFamily,
    iterations: int,
    *,
    prior_p: float = 0.1,
    kl_weight: float = 1.0,
    horizon: int = 100,
    unroll: int = 20,
    functions: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    settings: LoopSettings | None = None,
    stage: str = "meta-train-act",
    halting_only: bool = False,
    step_cost: float = 0.0,
) -> dict[str, float]:
    """Meta-train the ACT optimizer (an :class:`LSTMOptimizerNet` with ``halting=True``) on the
    random-horizon bound of Sander (2017) with prior parameter ``prior_p`` and KL weight
    ``kl_weight`` (1: the bound itself), ℓ_t = nll_scale · f(θ_{t+1}). See the module docstring
    for how truncated windows see the whole trajectory's normaliser. Returns the last
    iteration's metrics: ``bound`` (per function), ``mean_steps`` (E_q[t + 1] at the full
    horizon) and ``final_loss``.

    ``step_cost``: λ of the per-step price added to each step's loss (see
    :func:`act_meta_gradient`; 0 in the thesis). ``halting_only``: the update network stays as
    it is (e.g. a meta-trained LSTM optimizer) and only the halting head learns the bound, a
    two-stage schedule; the thesis trains both together (False).
    """
    _check_schedule(horizon, unroll, iterations, functions)
    if net.halting is None:
        raise ValueError("meta_train_act needs an LSTMOptimizerNet built with halting=True")
    batches = GeneratedBatches(lambda n, g: family.sample(n, g), functions, seed)
    trained = net.halting.parameters() if halting_only else net.parameters()
    optimizer = torch.optim.Adam(trained, lr=lr)
    # Frozen weights build no graph, so the backward pass runs through the halting head only.
    head = set(net.halting.parameters())
    frozen = (
        [p for p in net.parameters() if p.requires_grad and p not in head] if halting_only else []
    )

    def step_fn(step: int) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        metrics = act_meta_gradient(
            net,
            family,
            batches(step),
            prior_p,
            kl_weight,
            horizon=horizon,
            unroll=unroll,
            step_cost=step_cost,
        )
        optimizer.step()
        return metrics

    net.train()
    state = {"net": net, "optimizer": optimizer, "functions": batches}
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        metrics = core_train_loop(stage, iterations, step_fn, state, settings)
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
    net.eval()
    return metrics


@torch.no_grad()
def loss_curves(
    family: FunctionFamily,
    stepper: nn.Module,
    functions: Any,
    record: Sequence[int],
    chunk: int | None = None,
    measure: Callable[[FunctionFamily, torch.Tensor, Any], torch.Tensor] = full_loss,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values (n, len(record)), θ (n, D))``: ``measure(family, θ, functions)`` (default: the
    full loss; :func:`~.data.suboptimality` for gaps) after each number of steps in ``record``
    (1-based, increasing) and the parameters after the last, running ``stepper`` without
    storing the trajectory. Rows are processed ``chunk`` at a time (default: see
    :func:`_default_chunk`; a hand-designed optimizer's per-row learning rates
    follow their rows)."""
    record = list(record)
    if record != sorted(set(record)) or record[0] < 1:
        raise ValueError(f"record must be increasing step counts >= 1; got {record[:5]}...")
    n = _rows(functions)
    if chunk is None:
        chunk = _default_chunk(family, stepper, functions) if n else 1
    parts, thetas = [], []
    for lo in range(0, n, chunk):
        rows = torch.arange(lo, min(lo + chunk, n))
        part = index_state(functions, rows)
        part_stepper = stepper
        if isinstance(stepper, HandDesigned) and stepper.lr.numel() > 1:
            part_stepper = HandDesigned(stepper.kind, stepper.lr[rows])
        run = OptimizerRun(family, part_stepper, record[-1])
        state = run.start(part)
        out, wanted = [], set(record)
        for t in range(record[-1]):
            state = run.advance(state, t)
            if t + 1 in wanted:
                out.append(diverged_as_large(measure(family, state["theta"], part)))
        parts.append(torch.stack(out, dim=1))
        thetas.append(state["theta"])
    return torch.cat(parts), torch.cat(thetas)


def tune_learning_rates(
    family: FunctionFamily,
    kinds: Sequence[str],
    learning_rates: Sequence[float],
    val_functions: Any,
    horizons: Sequence[int],
    score: Any,
    measure: Callable[[FunctionFamily, torch.Tensor, Any], torch.Tensor] = full_loss,
) -> dict[str, Any]:
    """The learning rate of each hand-designed optimizer, per horizon, chosen on validation
    functions: the one with the lowest mean ``score(values (n, len(horizons)), functions)``
    column at that horizon, ``values`` being ``measure``'s (see :func:`loss_curves`; e.g. gaps,
    scored by their log10). Every learning rate runs on every validation function, all in one
    batch. Returns ``{kind: {"lr": {H: lr}, "scores": {H: [per lr]}}}``."""
    n = _rows(val_functions)
    repeated = index_state(val_functions, torch.arange(n).repeat(len(learning_rates)))
    rates = torch.tensor(learning_rates, dtype=torch.float64).repeat_interleave(n)
    out = {}
    for kind in kinds:
        losses, _ = loss_curves(
            family, HandDesigned(kind, rates), repeated, horizons, measure=measure
        )
        values = score(losses, repeated).view(len(learning_rates), n, len(horizons)).mean(1)
        values = values.nan_to_num(nan=math.inf)
        best = values.argmin(0)
        out[kind] = {
            "lr": {int(H): float(learning_rates[int(best[i])]) for i, H in enumerate(horizons)},
            "scores": {int(H): values[:, i].tolist() for i, H in enumerate(horizons)},
        }
    return out


def step_penalised(losses: torch.Tensor, step_cost: float) -> torch.Tensor:
    """``(n, T)`` ℓ_t + λ·(t + 1): the cost-aware per-step loss whose argmin is the oracle stop
    when each optimizer step costs λ (λ = 0: the L2S oracle on the loss alone)."""
    steps = torch.arange(1, losses.shape[1] + 1, dtype=losses.dtype)
    return losses + step_cost * steps


def fit_l2s_policy(
    policy: L2SPolicy,
    features: torch.Tensor,
    losses: torch.Tensor,
    *,
    beta: float,
    hard: bool,
    updates: int,
    batch: int,
    lr: float,
    seed: int,
    settings: LoopSettings | None = None,
    stage: str = "l2s-policy",
    gain_price: float | None = None,
) -> dict[str, float]:
    """L2S stage II (Chen et al. 2020, Eq. 10) on trajectories of the frozen optimizer:
    ``features (N, T, F)`` and per-step losses ``(N, T)`` of N training functions; the policy's
    hazards give q_φ, trained to imitate the oracle softmax(−ℓ/β) (forward KL) or its argmin
    (``hard``: cross-entropy), ``updates`` Adam steps on minibatches of ``batch`` functions.
    With ``gain_price`` the score instead regresses on −log g_t + log gain_price, g_t the best
    decrease of the losses per step that going on can buy (:func:`stopwise.objectives.gain_loss`;
    ``beta`` and ``hard`` are then unused)."""
    batches = EpochBatches([features.float(), losses], min(batch, features.shape[0]), seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    if gain_price is not None:  # the same rows in the same order as ``batches``
        rows = EpochBatches([torch.arange(features.shape[0])], batches.batch_size, seed)
        metrics = fit_gain_head(policy, features.float(), losses, lambda step: rows(step)[0],
                                optimizer, updates, price=gain_price, settings=settings,
                                stage=stage)  # fmt: skip
    else:

        def loss(step):
            x, ell = batches(step)
            stop = StopTime(policy_hazards(policy, x))
            return l2s_stage2_loss(stop, ell, beta, hard), {"mean_steps": stop.mean().mean()}

        policy.train()
        metrics = optimize(stage, updates, loss, optimizer, {"policy": policy}, settings)
    policy.eval()
    return metrics
