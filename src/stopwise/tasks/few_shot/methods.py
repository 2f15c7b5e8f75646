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
from torch.func import vmap

from ...contract import JobContext
from ...stoptime import StopTime, oracle
from ...training import Diverged, GeneratedBatches, distributed_world, optimize
from .config import FewShotConfig
from .data import ClassSplit, TaskSet, sample_classification_tasks, sample_sinusoid_tasks
from .models import SetPolicy, make_learner, measure_task, support_groups, task_loss

__all__ = [
    "task_sampler",
    "adapt_task",
    "adapt_group",
    "maml_losses",
    "maml_stop_losses",
    "sample_step",
    "meta_train",
    "training_stage",
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
    learner = make_learner(
        config.family, config.ways, config.width, config.hidden, config.glyphs.size
    )
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
    support_mask: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Run ``steps`` inner SGD updates of one task from the learner's own parameters
    θ_0 (θ_{t+1} = θ_t − α ∇L_support(θ_t)), differentiably in θ_0 when autograd records.
    ``task`` starts with ``(support_x, support_y, query_x)``; ``support_mask`` marks the real
    rows of a padded support set.

    Returns one measurement per update (:func:`measure_task` at θ_1..θ_T); the query outputs of
    the earlier updates only if ``query_every_step``."""
    support_x, support_y, query_x = task[:3]
    params = dict(learner.named_parameters())

    def measure(params, want_grad, want_query):
        return measure_task(
            learner, params, support_x, support_y, query_x, want_grad, want_query, support_mask
        )

    measured = measure(params, True, False)
    out = []
    for t in range(steps):
        params = {name: p - inner_lr * measured["grad"][name] for name, p in params.items()}
        last = t == steps - 1
        measured = measure(params, not last, query_every_step or last)
        out.append(measured)
    return out


def adapt_group(
    learner: nn.Module,
    group: tuple[torch.Tensor, ...],
    steps: int,
    inner_lr: float,
    query_every_step: bool,
    use_vmap: bool = False,
    support_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`adapt_task` for G tasks of equal shapes, ``group = (support_x (G, n, ...),
    support_y (G, n), query_x (G, Q, ...), ...)`` (``support_mask (G, n)`` for padded supports),
    with ``torch.func.vmap`` over the tasks or one task at a time. Returns the query outputs
    ``(G, T', Q, ...)`` (T' = T if ``query_every_step``, else 1: the last step) and the policy
    features ``(G, T, F)``."""
    support_x, support_y, query_x = group[:3]
    padded = support_mask is not None
    masks = support_mask if padded else torch.ones(support_x.shape[:2], dtype=torch.bool)

    def one(support_x, support_y, query_x, mask):
        measured = adapt_task(
            learner,
            (support_x, support_y, query_x),
            steps,
            inner_lr,
            query_every_step,
            mask if padded else None,
        )
        outputs = [m["query_out"] for m in measured if "query_out" in m]
        return torch.stack(outputs), torch.stack([m["features"] for m in measured])

    if use_vmap:
        return vmap(one)(support_x, support_y, query_x, masks)
    pieces = [
        one(support_x[i], support_y[i], query_x[i], masks[i]) for i in range(support_x.shape[0])
    ]
    return torch.stack([p[0] for p in pieces]), torch.stack([p[1] for p in pieces])


def maml_losses(
    learner,
    group,
    steps: int,
    inner_lr: float,
    use_vmap: bool = False,
    support_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(G,)`` MAML's outer loss of each task of a group: the query loss after ``steps``
    updates (Finn et al. 2017, Eq. 3), second-order."""
    outputs, _ = adapt_group(learner, group, steps, inner_lr, False, use_vmap, support_mask)
    return task_loss(outputs[:, -1], group[3])


def sample_step(query_losses: torch.Tensor, beta: float, uniform: float) -> int:
    """The step t̃ ~ q*(t) = softmax_t(−L_query,t / β) (0-based), drawn by inverting the CDF at
    ``uniform`` ∈ [0, 1) (the official code's stochastic EM): the first step whose cumulative
    mass exceeds it, so a step of no mass is never drawn (not even at ``uniform`` = 0)."""
    q = oracle(query_losses.detach().double().unsqueeze(0), beta)[0]
    u = torch.tensor(uniform, dtype=q.dtype)
    index = int(torch.searchsorted(torch.cumsum(q, 0), u, right=True))
    return min(index, q.shape[0] - 1)


def maml_stop_losses(
    learner,
    policy,
    group,
    steps: int,
    inner_lr: float,
    beta: float,
    uniforms: torch.Tensor,
    use_vmap: bool = False,
    support_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(G,)`` MAML-stop's loss of each task of a group as the official code trains it
    (``opt_stop_task`` with ``sto_maml_step``): the query loss at a step t̃ ~ softmax(−L_query/β)
    drawn with ``uniforms (G,)``, second-order through the updates up to t̃ only, plus the
    policy's cross-entropy −log q_φ(argmin_t L_query,t). Also returns per-task
    ``sampled_step``, ``best_step`` and ``expected_steps`` (1-based).

    Two passes, as the official code: every step's query loss and policy features without a
    meta-graph, then the sampled step again with it (tasks grouped by t̃). A step whose query
    loss is not finite (an inner loop that diverged) gets no oracle mass and never enters the
    meta-graph (its policy features are clamped finite by :func:`measure_task`).

    Departures from the official code, both fixes: the policy at step t sees the learner after
    update t, the one whose query loss it is scored on (the official code takes the support
    features one update earlier), and q_φ is the normalised stop-time distribution
    q(t) = λ_t ∏_{τ<t}(1 − λ_τ) of :class:`stopwise.StopTime` (the official prefix sum includes
    step t itself and does not sum to one)."""
    with torch.no_grad():
        outputs, features = adapt_group(
            learner, group, steps, inner_lr, True, use_vmap, support_mask
        )
        targets = group[3].unsqueeze(1).expand(-1, steps, *group[3].shape[1:])
        losses = task_loss(outputs, targets)  # (G, T)
        losses = torch.where(torch.isfinite(losses), losses, torch.inf)
    hazards = torch.stack([policy(features[:, t], t) for t in range(steps)], dim=1)  # (G, T)
    G = losses.shape[0]
    usable = torch.isfinite(losses[:, 0])  # a task that diverged at once teaches nothing
    sampled = torch.tensor(
        [sample_step(losses[i], beta, float(uniforms[i])) if usable[i] else 0 for i in range(G)]
    )
    best = losses.argmin(1)
    stop = StopTime(hazards)
    learner_loss = losses.new_zeros(G).to(hazards.dtype)
    for t in sampled[usable].unique().tolist():
        rows = ((sampled == t) & usable).nonzero().squeeze(1)
        part = tuple(x[rows] for x in group)
        mask = None if support_mask is None else support_mask[rows]
        learner_loss = learner_loss.index_put(
            (rows,), maml_losses(learner, part, t + 1, inner_lr, use_vmap, mask)
        )
    loss = torch.where(usable, learner_loss - stop.log_prob(best), 0.0)
    metrics = {
        "sampled_step": sampled + 1.0,
        "best_step": best + 1.0,
        "expected_steps": stop.mean().detach(),
    }
    return loss, metrics


def training_stage(method: str, steps: int) -> str:
    """The name of ``method``'s meta-training stage (its checkpoint): ``maml-stop``, or
    ``maml-T{steps}`` for MAML."""
    return method if method == "maml-stop" else f"maml-T{steps}"


def meta_train(
    config: FewShotConfig,
    context: JobContext,
    split: ClassSplit | None,
    method: str,
    steps: int,
) -> tuple[nn.Module, nn.Module | None]:
    """Meta-train ``method`` ("maml" at ``steps`` inner steps, or "maml-stop") as one resumable
    stage named after it (:func:`training_stage`); returns ``(learner, policy or None)``.

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
        mine = torch.arange(rank, B, world)
        total = torch.zeros(())
        sums: dict[str, float] = {}
        width = tasks.support_x.shape[1]
        for rows, n, mask in support_groups(learner, tasks.support_n[mine], width):
            rows = mine[rows]
            group = (
                tasks.support_x[rows, :n],
                tasks.support_y[rows, :n],
                tasks.query_x[rows],
                tasks.query_y[rows],
            )
            if method == "maml":
                losses = maml_losses(learner, group, steps, config.inner_lr, config.vmap, mask)
                finite = torch.isfinite(losses.detach())
                metrics = {"diverged": (~finite).double()}
                if not bool(finite.all()):
                    # A diverged inner loop would put 0 · inf = NaN in the shared meta-gradient:
                    # adapt the group again without it (it contributes nothing).
                    keep = finite.nonzero().squeeze(1)
                    part = tuple(x[keep] for x in group)
                    kept = None if mask is None else mask[keep]
                    losses = (
                        maml_losses(learner, part, steps, config.inner_lr, config.vmap, kept)
                        if keep.numel()
                        else losses.new_zeros(0)
                    )
            else:
                losses, metrics = maml_stop_losses(
                    learner,
                    policy,
                    group,
                    steps,
                    config.inner_lr,
                    config.beta,
                    uniforms[rows],
                    config.vmap,
                    mask,
                )
            # Scaled so that the average over ranks of the gradients is the meta-batch mean.
            total = total + losses.sum() * (world / B)
            for key, values in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(values.double().sum()) / len(mine)
        if not total.requires_grad:  # every task's inner loop diverged: no meta-gradient
            raise Diverged(
                f"every task of meta-batch {step} diverged in its inner loop "
                f"(inner_lr={config.inner_lr:g}); lower inner_lr"
            )
        return total, sums

    state = {"learner": learner, "batches": batches}
    if policy is not None:
        state["policy"] = policy
    for module in modules:
        module.train()
    optimize(
        training_stage(method, steps),
        config.train.meta_steps,
        loss_and_metrics,
        optimizer,
        state,
        context.loop_settings(log_every=config.train.log_every),
    )
    for module in modules:
        module.eval()
    return learner, policy
