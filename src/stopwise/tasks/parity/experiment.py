"""The parity jobs: per method, value of its hyperparameter and learning rate of its grid (a
setting ``<method>-<value>-lr<lr>``), a training job ``<setting>-train`` and an evaluation job
``<setting>`` after it (the runner runs each per seed).

The training job builds the GRU step model from the seed's ``"init"`` stream (every method of a
seed starts from the same weights) and trains it with its method (:mod:`.methods`); its
checkpoints keep the trained model (and L2S's heads), its record the training seconds. The
evaluation job loads them and measures every inference rule of every variant on the seed's
validation vectors and then, once, on its test vectors, and the budget curves; an ACT one also
records the share of its training inputs that halt at step 1, by k. So another
``inference_mode``, ``curve_points`` or test set reruns the evaluation jobs only. Which setting
(hyperparameter and learning rate) is best is chosen by the report, on validation accuracy.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ...contract import Job, JobContext, TrainedStopModel, is_training_job, training_job
from ...selection import Heldout, budget_grid, budget_sweep, curve_budgets, fixed_depth_curve
from .config import ParityConfig
from .data import evaluation_set, first_training_batches
from .methods import METHODS, RULES, act_halting_steps, infer, train_method, unroll_with_head
from .metrics import evaluate_rule, share_by_k
from .models import HaltingHead, ParityGRU

__all__ = ["jobs", "run_job", "load_trained", "stop_models", "TRAIN_KEYS", "EVALUATION_KEYS"]

# The config keys a training job's numbers depend on, besides its params, its seed and its
# method's own keys (Method.keys); the others (lists of values, methods, log_every) never rerun
# a job.
TRAIN_KEYS = ("n", "train_k", "hidden", "batch_size", "updates", "grad_clip", "device")
# What an evaluation job reads besides its training job's keys (whose digest its settings hold).
EVALUATION_KEYS = ("test_k", "val_size", "test_size", "inference_mode", "curve_points")


# training batches (of batch_size) on which an ACT job measures the share halting at step 1
ACT_STEP_ONE_BATCHES = 16


def jobs(config: ParityConfig) -> list[Job]:
    """``<setting>-train`` and ``<setting>`` after it, ``<setting>`` = ``<method>-<value>-lr<lr>``
    for every method, value of its hyperparameter and learning rate of its grid; the cost hint
    (updates × steps) starts the longest training jobs first with several workers."""
    out = []
    for name in config.methods:
        method = METHODS[name]
        for value in getattr(config, method.hyperparameter):
            for lr in getattr(config, method.learning_rates):
                setting = f"{name}-{value:g}-lr{lr:g}"
                params = {"method": name, "value": value, "lr": lr}
                updates = config.updates + (2 * config.policy_updates / 3 if name == "l2s" else 0)
                cost = updates * (value if name == "fixed" else config.max_steps)
                trained = training_job(setting)
                out += [
                    Job(trained, params, keys=TRAIN_KEYS + method.keys, cost=cost),
                    Job(setting, params, after=(trained,), keys=EVALUATION_KEYS),
                ]
    return out


def run_job(job: Job, context: JobContext) -> dict[str, Any]:
    """A training job or an evaluation job (its training job before it)."""
    return train(job, context) if is_training_job(job.name) else evaluate(job, context)


def _model(config: ParityConfig, method: str, value: float) -> ParityGRU:
    """The untrained GRU of ``method`` at ``value``: ``value`` steps for fixed depth, else
    ``max_steps``; ACT's halting unit starts at ``act_halting_bias``."""
    steps = int(value) if method == "fixed" else config.max_steps
    bias = config.act_halting_bias if method == "act" else None
    return ParityGRU(config.n, config.hidden, steps, halting_bias=bias)


def train(job: Job, context: JobContext) -> dict[str, Any]:
    """Train one method at one setting; its record has the training seconds of each variant
    (the model's, or each L2S head's after stage I)."""
    config: ParityConfig = context.config
    method, value = job.params["method"], job.params["value"]
    context.manual_seed("init")
    model = _model(config, method, value).to(context.device)
    heads = train_method(method, model, value, config, context, lr=job.params["lr"])
    seconds = {v: context.timings["train"] + context.timings.get(f"train-{v}", 0.0) for v in heads}
    return {"train_seconds": seconds}


def load_trained(context: JobContext, trained: str) -> tuple[ParityGRU, dict[str, HaltingHead]]:
    """The model and the halting head of each variant (``{"": model.halting}`` except for L2S)
    that the training job ``trained`` saved at the end of its stages."""
    config: ParityConfig = context.config
    method, value = context.params["method"], context.params["value"]
    model = _model(config, method, value)
    stage = "l2s-stage1" if method == "l2s" else method
    model.load_state_dict(context.checkpoint(stage, job=trained)["model"])
    heads = {"": model.halting}
    if method == "l2s":
        heads = {variant: HaltingHead(config.hidden) for variant in config.l2s_heads}
        for variant, head in heads.items():
            head.load_state_dict(context.checkpoint(f"l2s-stage2-{variant}", job=trained)["policy"])
    return model.to(context.device), {v: head.to(context.device) for v, head in heads.items()}


def evaluate(job: Job, context: JobContext) -> dict[str, Any]:
    """Evaluate the model its training job trained; its record has one row per (variant,
    inference rule) and the budget curves."""
    config: ParityConfig = context.config
    method = METHODS[job.params["method"]]
    # Drawn first (each from its own stream) so that a test set unfit to report fails early.
    validation = evaluation_set(config, "validation", context.generator("validation"))
    test = Heldout(evaluation_set(config, "test", context.generator("test")))
    (trained,) = job.after
    model, heads = load_trained(context, trained)
    train_seconds = context.dependency(trained).record["train_seconds"]
    options = {"mode": config.inference_mode, "sample_seed": context.stream_seed("stop-sampling")}
    extra = {}
    if method.name == "act":  # only ACT's jobs read act_eps
        options["act_eps"] = config.act_eps
        inputs = first_training_batches(
            config, context.generator("train-batches"), ACT_STEP_ONE_BATCHES
        )
        steps_used = act_halting_steps(model, inputs.x.to(context.device), config.act_eps)
        extra["halting_at_step_1"] = share_by_k(steps_used == 1, inputs.k)
    choices = [(variant, rule) for variant in heads for rule in method.rules]

    def measure(batch, split: str, variant: str, rule: str) -> dict[str, Any]:
        x = batch.x.to(context.device)
        with context.timed(f"{split} {variant} {rule}"):
            logits, stop = infer(rule, model, heads[variant], x, **options)
        return evaluate_rule(logits.cpu(), stop.cpu(), batch.y, batch.k, config.train_k)

    on_validation = {choice: measure(validation, "validation", *choice) for choice in choices}
    test_set, rows = test.open(), []
    for variant, rule in choices:
        measured = measure(test_set, "test", variant, rule)
        own = on_validation[variant, rule]
        rows.append(
            {
                "variant": variant,
                "rule": rule,
                **measured,
                # what the rule computes: a non-causal rule runs every step before choosing
                "steps_run": measured["mean_steps"] if RULES[rule][1] else model.max_steps,
                "validation_accuracy": own["accuracy"],
                "validation_steps": own["mean_steps"],
                "train_seconds": train_seconds[variant],
                "inference_seconds": context.timings[f"test {variant} {rule}"],
                **extra,
            }
        )
    curves = [
        budget_curve(model, heads[variant], validation, test_set, config, context.device)
        | {"variant": variant}
        for variant in heads
        if method.name not in ("fixed", "act")
    ]
    return {"rows": rows, "curves": curves}


@torch.no_grad()
def budget_curve(model, head, validation, test, config: ParityConfig, device) -> dict[str, Any]:
    """The stop model's budget curve (floored hazard thresholds fitted on validation accuracy at
    ``config.curve_points`` budgets, applied to test) beside the same model stopped at every
    fixed depth; each point's metric is the test interpolation accuracy."""
    model.eval()
    val_logits, val_hazards = unroll_with_head(model, validation.x.to(device), head)
    logits, test_hazards = unroll_with_head(model, test.x.to(device), head)
    inside = ((test.k >= config.train_k[0]) & (test.k <= config.train_k[1])).cpu()
    correct = (logits.cpu() > 0).float() == test.y.unsqueeze(1).cpu()  # (N, T)
    val_correct = (val_logits.cpu() > 0).float() == validation.y.unsqueeze(1).cpu()

    def accuracy(index: torch.Tensor) -> dict[str, float]:
        chosen = correct.gather(1, index.cpu().view(-1, 1)).squeeze(1)
        return {"accuracy": float(chosen[inside].float().mean())}

    def val_accuracy(index: torch.Tensor) -> float:
        return float(val_correct.gather(1, index.cpu().view(-1, 1)).float().mean())

    valid = torch.ones(model.max_steps, dtype=torch.bool)
    budgets = budget_grid(valid, config.curve_points)
    return {
        "points": budget_sweep(
            val_hazards.cpu(),
            test_hazards.cpu(),
            budgets,
            accuracy,
            val_metric=val_accuracy,
            lower_is_better=False,
        ),
        "fixed_depth": fixed_depth_curve(len(test.y), accuracy, valid),
    }


def stop_models(config: ParityConfig) -> dict:
    """Every evaluation job with a budget curve, one stop model per halting head: ``<job>`` (the
    model's own head) or, for L2S, ``<job>/<head>`` (hard, soft, gain), loaded from the
    checkpoints of the training job before it. Which setting is best is the report's choice, on
    validation (results.json)."""
    out = {}
    for job in jobs(config):
        method = job.params["method"]
        if is_training_job(job.name) or method in ("fixed", "act"):
            continue
        for head in config.l2s_heads if method == "l2s" else [""]:
            name = f"{job.name}/{head}" if head else job.name
            out[name] = (job.name, partial(_trained, name, head))
    return out


def _trained(name: str, head: str, context: JobContext, record: dict[str, Any]) -> TrainedStopModel:
    config: ParityConfig = context.config
    (trained,) = context.job.after
    model, heads = load_trained(context, trained)
    curve = next(c for c in record["curves"] if c["variant"] == head)
    return TrainedStopModel(
        name,
        model,
        heads[head],
        curve_budgets(curve["points"]),
        inputs=f"a vector of {config.n} entries in {{-1, 0, 1}}",
        test_inputs=lambda: [
            evaluation_set(config, "test", context.generator("test")).x.to(context.device)
        ],
    )
