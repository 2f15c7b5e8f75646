"""The parity jobs: one per method and hyperparameter value (the runner runs each per seed).

A job builds the GRU step model from the seed's ``"init"`` stream (every method of a seed starts
from the same weights), trains it with its method (:mod:`.methods`), measures every inference rule
of every variant on the seed's validation vectors and then, once, on its test vectors. Which
setting is best is chosen by the report, on validation accuracy.
"""

from __future__ import annotations

from typing import Any

from ...contract import Job, JobContext
from ...selection import Heldout
from .config import ParityConfig
from .data import evaluation_set
from .methods import METHODS, RULES, infer, train_method
from .metrics import evaluate_rule
from .models import ParityGRU

__all__ = ["jobs", "run_job", "SHARED_KEYS"]

# The config keys every job's numbers depend on, besides its params, its seed and its method's
# own keys (Method.keys); the others (lists of values, methods, log_every) never rerun a job.
SHARED_KEYS = (
    "n", "train_k", "test_k", "hidden", "batch_size", "updates", "lr", "grad_clip",
    "val_size", "test_size", "inference_mode", "device",
)  # fmt: skip


def jobs(config: ParityConfig) -> list[Job]:
    """``<method>-<value>`` for every method and value of its hyperparameter; the cost hint (updates
    × steps) starts the longest jobs first when several workers run."""
    out = []
    for name in config.methods:
        method = METHODS[name]
        for value in getattr(config, method.hyperparameter):
            steps = value if name == "fixed" else config.max_steps
            stage2 = 2 * config.policy_updates / 3 if name == "l2s" else 0
            out.append(
                Job(
                    f"{name}-{value:g}",
                    params={"method": name, "value": value},
                    keys=SHARED_KEYS + method.keys,
                    cost=(config.updates + stage2) * steps,
                )
            )
    return out


def run_job(job: Job, context: JobContext) -> dict[str, Any]:
    """Train one method at one value; its record has one row per (variant, inference rule)."""
    config: ParityConfig = context.config
    method, value = METHODS[job.params["method"]], job.params["value"]
    steps = int(value) if method.name == "fixed" else config.max_steps
    bias = config.act_halting_bias if method.name == "act" else None
    context.manual_seed("init")
    model = ParityGRU(config.n, config.hidden, steps, halting_bias=bias).to(context.device)
    heads = train_method(method.name, model, value, config, context)

    validation = evaluation_set(config, "validation", context.generator("validation"))
    test = Heldout(evaluation_set(config, "test", context.generator("test")))
    sample_seed = context.stream_seed("stop-sampling")
    choices = [(variant, rule) for variant in heads for rule in method.rules]

    def measure(batch, split: str, variant: str, rule: str) -> dict[str, Any]:
        x = batch.x.to(context.device)
        with context.timed(f"{split} {variant} {rule}"):
            logits, stop = infer(
                rule, model, heads[variant], x, config.inference_mode, config.act_eps, sample_seed
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
            }
        )
    return {"rows": rows}
