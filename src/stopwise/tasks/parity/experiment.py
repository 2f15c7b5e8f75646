"""The parity jobs: one per method, value of its hyperparameter and learning rate of its grid
(the runner runs each per seed).

A job builds the GRU step model from the seed's ``"init"`` stream (every method of a seed starts
from the same weights), trains it with its method (:mod:`.methods`), measures every inference rule
of every variant on the seed's validation vectors and then, once, on its test vectors. Which
setting (hyperparameter and learning rate) is best is chosen by the report, on validation
accuracy. An ACT job also records the share of its training inputs that halt at step 1, by k.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ...contract import Job, JobContext, TrainedStopModel
from ...selection import Heldout, budget_grid, budget_sweep, curve_budgets, fixed_depth_curve
from .config import ParityConfig
from .data import evaluation_set, first_training_batches
from .methods import METHODS, RULES, act_halting_steps, infer, train_method, unroll_with_head
from .metrics import evaluate_rule, share_by_k
from .models import HaltingHead, ParityGRU

__all__ = ["jobs", "run_job", "stop_models", "SHARED_KEYS"]

# The config keys every job's numbers depend on, besides its params, its seed and its method's
# own keys (Method.keys); the others (lists of values, methods, log_every) never rerun a job.
SHARED_KEYS = (
    "n", "train_k", "test_k", "hidden", "batch_size", "updates", "grad_clip",
    "val_size", "test_size", "inference_mode", "device", "curve_points",
)  # fmt: skip


# training batches (of batch_size) on which an ACT job measures the share halting at step 1
ACT_STEP_ONE_BATCHES = 16


def jobs(config: ParityConfig) -> list[Job]:
    """``<method>-<value>-lr<lr>`` for every method, value of its hyperparameter and learning rate
    of its grid; the cost hint (updates × steps) starts the longest jobs first with several
    workers."""
    return [
        Job(
            f"{name}-{value:g}-lr{lr:g}",
            params={"method": name, "value": value, "lr": lr},
            keys=SHARED_KEYS + METHODS[name].keys,
            cost=(config.updates + (2 * config.policy_updates / 3 if name == "l2s" else 0))
            * (value if name == "fixed" else config.max_steps),
        )
        for name in config.methods
        for value in getattr(config, METHODS[name].hyperparameter)
        for lr in getattr(config, METHODS[name].learning_rates)
    ]


def run_job(job: Job, context: JobContext) -> dict[str, Any]:
    """Train one method at one value; its record has one row per (variant, inference rule)."""
    config: ParityConfig = context.config
    method, value = METHODS[job.params["method"]], job.params["value"]
    steps = int(value) if method.name == "fixed" else config.max_steps
    bias = config.act_halting_bias if method.name == "act" else None
    # Drawn first (each from its own stream) so that a test set unfit to report fails early.
    validation = evaluation_set(config, "validation", context.generator("validation"))
    test = Heldout(evaluation_set(config, "test", context.generator("test")))
    context.manual_seed("init")
    model = ParityGRU(config.n, config.hidden, steps, halting_bias=bias).to(context.device)
    heads = train_method(method.name, model, value, config, context, lr=job.params["lr"])
    extra = {}
    if method.name == "act":
        inputs = first_training_batches(
            config, context.generator("train-batches"), ACT_STEP_ONE_BATCHES
        )
        steps_used = act_halting_steps(model, inputs.x.to(context.device), config.act_eps)
        extra["halting_at_step_1"] = share_by_k(steps_used == 1, inputs.k)

    sample_seed = context.stream_seed("stop-sampling")
    choices = [(variant, rule) for variant in heads for rule in method.rules]

    def measure(batch, split: str, variant: str, rule: str) -> dict[str, Any]:
        x = batch.x.to(context.device)
        eps = {"act_eps": config.act_eps} if rule == "act" else {}  # only ACT's jobs read it
        with context.timed(f"{split} {variant} {rule}"):
            logits, stop = infer(
                rule,
                model,
                heads[variant],
                x,
                config.inference_mode,
                sample_seed=sample_seed,
                **eps,
            )
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
                "steps_run": measured["mean_steps"] if RULES[rule][1] else steps,
                "validation_accuracy": own["accuracy"],
                "validation_steps": own["mean_steps"],
                "train_seconds": context.timings["train"]
                + context.timings.get(f"train-{variant}", 0.0),
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
    """Every job with a budget curve, one stop model per halting head: ``<job>`` (the model's
    own head) or, for L2S, ``<job>/<head>`` (hard, soft, gain). Which setting is best is the
    report's choice, on validation (results.json)."""
    out = {}
    for job in jobs(config):
        method = job.params["method"]
        if method in ("fixed", "act"):
            continue
        for head in config.l2s_heads if method == "l2s" else [""]:
            name = f"{job.name}/{head}" if head else job.name
            out[name] = (job.name, partial(_trained, name, head))
    return out


def _trained(name: str, head: str, context: JobContext, record: dict[str, Any]) -> TrainedStopModel:
    config: ParityConfig = context.config
    method = context.job.params["method"]
    model = ParityGRU(config.n, config.hidden, config.max_steps)
    model.load_state_dict(context.checkpoint("l2s-stage1" if head else method)["model"])
    policy = model.halting
    if head:
        policy = HaltingHead(config.hidden)
        policy.load_state_dict(context.checkpoint(f"l2s-stage2-{head}")["policy"])
    curve = next(c for c in record["curves"] if c["variant"] == head)
    return TrainedStopModel(
        name,
        model.to(context.device),
        policy.to(context.device),
        curve_budgets(curve["points"]),
        inputs=f"a vector of {config.n} entries in {{-1, 0, 1}}",
        test_inputs=lambda: [
            evaluation_set(config, "test", context.generator("test")).x.to(context.device)
        ],
    )
