"""How each method meta-trains: MAML at a fixed number of inner steps, and MAML-stop trained
jointly with its policy as the official code does (one Adam optimizer).

Both are second-order: the inner gradients are taken with ``torch.func.grad_and_value`` while
the outer autograd records, so the meta-gradient differentiates through every inner update.
Under torchrun the tasks of a meta-batch are split across ranks (task i goes to rank
i mod world); each rank draws the same meta-batch, so two ranks train the same weights as one
process (:func:`stopwise.training.average_gradients` averages their gradients).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...contract import JobContext
from ...stoptime import StopTime, oracle
from ...training import GeneratedBatches, distributed_world, optimize
from .config import FewShotConfig
from .data import ClassSplit, TaskSet, sample_classification_tasks, sample_sinusoid_tasks
from .models import SetPolicy, make_learner, measure_task, task_loss

__all__ = [
    "task_sampler",
    "adapt_task",
    "maml_task_loss",
    "maml_stop_task_loss",
    "sample_step",
    "meta_train",
    "build_models",
]


def task_sampler(config: FewShotConfig, split: ClassSplit | None):
    """``sample(batch, generator) -> TaskSet`` for the config's family (``split`` for glyphs)."""
    shots = (config.shots[0], config.shots[1])
    if config.family == "sinusoid":
        return lambda batch, g: sample_sinusoid_tasks(batch, shots, config.query, g)
    return lambda batch, g: sample_classification_tasks(
        split, batch, config.ways, shots, config.query, g
    )


def build_models(config: FewShotConfig, with_policy: bool) -> tuple[nn.Module, nn.Module | None]:
    """The learner (and MAML-stop's policy) with the weights of stream ``init`` (the caller
    seeds it), so MAML and MAML-stop of a seed start from the same learner."""
    learner = make_learner(config.family, config.ways, config.width, config.hidden)
    if not with_policy:
        return learner, None
    policy = SetPolicy(learner.feature_dim, config.steps, config.policy_width, config.policy_hidden)
    return learner, policy


def adapt_task(
    learner: nn.Module,
    task: tuple[torch.Tensor, ...],
    steps: int,
    inner_lr: float,
    query_every_step: bool,
) -> list[dict[str, Any]]:
    """Run ``steps`` inner SGD updates of one task from the learner's own parameters
    θ_0 (θ_{t+1} = θ_t − α ∇L_support(θ_t)), differentiably in θ_0 when autograd records.

    Returns one measurement per update (:func:`measure_task` at θ_1..θ_T); the query outputs of
    the earlier updates only if ``query_every_step``."""
    support_x, support_y, query_x, _ = task
    params = dict(learner.named_parameters())
    measured = measure_task(learner, params, support_x, support_y, query_x, True, False)
    out = []
    for t in range(steps):
        params = {name: p - inner_lr * measured["grad"][name] for name, p in params.items()}
        last = t == steps - 1
        measured = measure_task(
            learner, params, support_x, support_y, query_x, not last, query_every_step or last
        )
        out.append(measured)
    return out


def maml_task_loss(learner, task, steps: int, inner_lr: float) -> torch.Tensor:
    """MAML's outer loss of one task: the query loss after ``steps`` updates (Finn et al. 2017,
    Eq. 3), second-order."""
    final = adapt_task(learner, task, steps, inner_lr, query_every_step=False)[-1]
    return task_loss(final["query_out"], task[3])


def sample_step(query_losses: torch.Tensor, beta: float, uniform: float) -> int:
    """The step t̃ ~ q*(t) = softmax_t(−L_query,t / β) (0-based), drawn by inverting the CDF at
    ``uniform`` ∈ [0, 1) (the official code's stochastic EM)."""
    q = oracle(query_losses.detach().double().unsqueeze(0), beta)[0]
    index = int(torch.searchsorted(torch.cumsum(q, 0), torch.tensor(uniform, dtype=q.dtype)))
    return min(index, q.shape[0] - 1)


def maml_stop_task_loss(
    learner, policy, task, steps: int, inner_lr: float, beta: float, uniform: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """MAML-stop's loss of one task as the official code trains it (``opt_stop_task``):
    the query loss at a step t̃ ~ softmax(−L_query/β) (second-order through that step only)
    plus the policy's cross-entropy −log q_φ(argmin_t L_query,t).

    Departures from the official code, both fixes: the policy at step t sees the learner after
    update t, the one whose query loss it is scored on (the official code takes the support
    features one update earlier), and q_φ is the normalised stop-time distribution
    q(t) = λ_t ∏_{τ<t}(1 − λ_τ) of :class:`stopwise.StopTime` (the official prefix sum includes
    step t itself and does not sum to one)."""
    measured = adapt_task(learner, task, steps, inner_lr, query_every_step=True)
    losses = torch.stack([task_loss(m["query_out"], task[3]) for m in measured])  # (T,)
    features = torch.stack([m["features"] for m in measured])  # (T, F), detached
    hazards = torch.stack([policy(features[t : t + 1], t)[0] for t in range(steps)])
    sampled = sample_step(losses, beta, uniform)
    best = int(losses.detach().argmin())
    stop = StopTime(hazards.unsqueeze(0))
    policy_loss = -stop.log_prob(torch.tensor([best]))[0]
    metrics = {
        "sampled_step": sampled + 1.0,
        "best_step": best + 1.0,
        "expected_steps": float(stop.mean()[0].detach()),
    }
    return losses[sampled] + policy_loss, {"query_loss": float(losses[sampled].detach()), **metrics}


def meta_train(
    config: FewShotConfig,
    context: JobContext,
    split: ClassSplit | None,
    method: str,
    steps: int,
) -> tuple[nn.Module, nn.Module | None]:
    """Meta-train ``method`` ("maml" at ``steps`` inner steps, or "maml-stop") as one resumable
    stage named after it; returns ``(learner, policy or None)``.

    Every method of a seed sees the same meta-batches (stream ``train-tasks``) and starts from
    the same learner (stream ``init``)."""
    context.manual_seed("init")
    learner, policy = build_models(config, with_policy=method == "maml-stop")
    sample = task_sampler(config, split)
    B = config.train.meta_batch

    def draw(batch: int, generator: torch.Generator) -> tuple[TaskSet, torch.Tensor]:
        return sample(batch, generator), torch.rand(batch, generator=generator)

    batches = GeneratedBatches(draw, B, context.stream_seed("train-tasks"))
    modules = [learner] + ([policy] if policy is not None else [])
    parameters = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=config.train.outer_lr)

    def loss_and_metrics(step: int):
        tasks, uniforms = batches(step)
        rank, world = distributed_world()
        total = torch.zeros(())
        sums: dict[str, float] = {}
        mine = range(rank, B, world)
        for i in mine:
            task = tasks.task(i)
            if method == "maml":
                loss, metrics = maml_task_loss(learner, task, steps, config.inner_lr), {}
            else:
                loss, metrics = maml_stop_task_loss(
                    learner, policy, task, steps, config.inner_lr, config.beta, float(uniforms[i])
                )
            # Scaled so that the average over ranks of the gradients is the meta-batch mean.
            total = total + loss * (world / B)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value / len(mine)
        return total, sums

    state = {"learner": learner, "batches": batches}
    if policy is not None:
        state["policy"] = policy
    for module in modules:
        module.train()
    optimize(
        method if method == "maml-stop" else f"maml-T{steps}",
        config.train.meta_steps,
        loss_and_metrics,
        optimizer,
        state,
        context.loop_settings(log_every=config.train.log_every),
    )
    for module in modules:
        module.eval()
    return learner, policy
