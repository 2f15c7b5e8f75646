"""The multi-exit jobs: one per method (the runner runs each per seed). A job trains a fresh
backbone (same initial weights and batch order for every method of a seed), chooses its
thresholds on validation and measures the test split once: the fixed exits, MSDNet's budgeted
curve of the confidence thresholds, the L2S policy's budget curve, the stop rules at each budget
run for real through ``run_adaptive(mode=config.inference_mode)``, and the wall-clock of early
exit against the full network."""

from __future__ import annotations

from typing import Any

import torch

from ...contract import Job, JobContext
from ...inference import ScoreThreshold, fit_threshold, in_chunks, run_adaptive, stop_indices
from ...policies import ConfidencePolicy
from ...selection import Heldout, budget_sweep, fixed_depth_curve
from .config import MultiExitConfig
from .data import load_splits
from .methods import build_model, train_method
from .metrics import (
    accuracy_by_group,
    apply_thresholds,
    exit_hazards,
    exit_logits,
    exit_metric,
    msdnet_thresholds,
    time_early_exit,
)
from .models import exit_losses

__all__ = ["jobs", "run_job"]

# What every job reads; the data folder is left out (the same files anywhere give the same
# numbers), and so are the report's keys (budgets unless timed, log_every).
SHARED_KEYS = (
    "dataset", "val_size", "test_size", "train_size", "split_seed", "mnist1d_noise",
    "mnist1d_per_level", "stem", "channels", "strides", "head_width", "epochs", "batch_size",
    "lr", "momentum", "weight_decay", "eval_batch", "device", "inference_mode",
)  # fmt: skip
METHOD_KEYS = {"sdn": ("sdn_weights",), "l2w": ("l2w",), "l2w-fo": ("l2w",), "l2s": ("l2s",)}
COSTS = {"l2w": 2.2, "l2w-fo": 1.8}  # relative training cost, for scheduling workers


def jobs(config: MultiExitConfig) -> list[Job]:
    return [
        Job(
            method,
            params={"method": method},
            keys=SHARED_KEYS
            + METHOD_KEYS.get(method, ())
            + (("timing", "budgets") if method in config.timing.methods else ()),
            cost=COSTS.get(method, 1.0),
        )
        for method in config.methods
    ]


def run_job(job: Job, context: JobContext) -> dict[str, Any]:
    config: MultiExitConfig = context.config
    method = job.params["method"]
    splits = load_splits(config)
    context.manual_seed("init")
    model = build_model(config, splits)
    trained = train_method(method, model, splits, config, context)
    model.eval()
    costs = model.step_costs()
    test = Heldout((splits.test_x, splits.test_y))

    # Every choice on validation: MSDNet's per-exit thresholds for each p, and for each budget
    # (a fraction of the full MACs) the rule of every stop model: confidence thresholds and, for
    # L2S, a threshold on the policy's hazard.
    val_logits = exit_logits(model, splits.val_x, config.eval_batch)
    policies = {"confidence": ConfidencePolicy()}
    val_scores = {"confidence": exit_hazards(policies["confidence"], val_logits)}
    if trained.policy is not None:
        policies["policy"] = trained.policy
        val_scores["policy"] = exit_hazards(trained.policy, val_logits)
    fitted = msdnet_thresholds(val_scores["confidence"], costs)
    budgets = [b * float(costs[-1]) for b in config.budgets]
    rules = {"confidence": [_nearest_msdnet_rule(fitted, b) for b in budgets]}
    if trained.policy is not None:
        # A budget below the first exit's cost gives the cheapest rule (every row at exit 1).
        cheapest = float(costs[0])
        rules["policy"] = [
            fit_threshold(val_scores["policy"], max(b, cheapest), costs) for b in budgets
        ]

    # The test split, once: fixed exits, budget curves, the rules run for real.
    test_x, test_y = test.open()
    test_logits = exit_logits(model, test_x, config.eval_batch)
    correct = test_logits.argmax(-1) == test_y.unsqueeze(1)  # (N, K)
    metric = exit_metric(correct)
    test_scores = {name: exit_hazards(policies[name], test_logits) for name in policies}
    curves = {"confidence": apply_thresholds(fitted, test_scores["confidence"], metric, costs)}
    if trained.policy is not None:
        val_costs = [point["val_mean_cost"] for point in fitted]
        curves["policy"] = budget_sweep(
            val_scores["policy"], test_scores["policy"], val_costs, metric, costs=costs
        )
    record: dict[str, Any] = {
        "data": {"dataset": splits.name, **splits.sizes(), **splits.info},
        "updates": trained.updates,
        "train_seconds": context.timings["train"],
        "step_costs": costs,
        "fixed_depth": fixed_depth_curve(
            len(test_y), metric, torch.ones(len(costs), dtype=torch.bool), costs
        ),
        "curves": curves,
        "adaptive": {
            name: [
                {
                    "budget": budget,
                    **_run_for_real(
                        model, policies[name], test_x, test_y, rule, test_scores[name], config
                    ),
                }
                for budget, rule in zip(config.budgets, rules[name], strict=True)
            ]
            for name in rules
        },
    }
    if splits.test_group is not None:  # MNIST-1D noise levels, at p = 1 (uniform exits)
        index = stop_indices(test_scores["confidence"], _p_rule(fitted, 1.0))
        levels = splits.info["noise_levels"]
        record["test_groups"] = accuracy_by_group(index, correct, splits.test_group, levels)
    if trained.weight_net is not None:
        record["negative_weights"] = trained.negative_weights
        record["weights_vs_loss"] = _weights_vs_loss(trained.weight_net, model, splits, config)
    if method in config.timing.methods:
        named = dict(zip([f"{b:g}" for b in config.budgets], rules["confidence"], strict=True))
        record["timing"] = time_early_exit(
            model, test_x, named, config.timing.batch, config.timing.repeats
        )
    return record


def _nearest_msdnet_rule(fitted: list[dict[str, Any]], budget: float) -> ScoreThreshold:
    """MSDNet's thresholds whose validation mean cost is nearest to ``budget``."""
    point = min(fitted, key=lambda pt: abs(pt["val_mean_cost"] - budget))
    return ScoreThreshold(torch.tensor(point["score_threshold"]))


def _p_rule(fitted: list[dict[str, Any]], p: float) -> ScoreThreshold:
    """MSDNet's thresholds of the exit distribution q ∝ p^k nearest to ``p``."""
    point = min(fitted, key=lambda pt: abs(pt["p"] - p))
    return ScoreThreshold(torch.tensor(point["score_threshold"]))


def _run_for_real(model, policy, test_x, test_y, rule, test_hazards, config) -> dict[str, Any]:
    """Accuracy and mean cost of ``run_adaptive`` on the test split in the configured mode, and
    whether its exits equal those the vectorised evaluation picks from the test hazards."""

    def run(rows):
        result = run_adaptive(model, policy, rows, rule, mode=config.inference_mode)
        return result.predictions, result.stop_index, result.cost

    predictions, index, cost = in_chunks(run, test_x, config.eval_batch)
    return {
        "accuracy": float((predictions.argmax(-1) == test_y).double().mean()),
        "mean_cost": float(cost.double().mean()),
        "matches_dense": bool(torch.equal(index, stop_indices(test_hazards, rule))),
    }


def _weights_vs_loss(weight_net, model, splits, config, rows: int = 1000) -> dict[str, Any]:
    """Learned weights and exit losses of the first ``rows`` training samples (eval mode)."""
    x, y = splits.train_x[:rows], splits.train_y[:rows]
    with torch.no_grad():
        losses = exit_losses(exit_logits(model, x, config.eval_batch), y)
        weights = weight_net(losses)
    return {"losses": losses.T, "weights": weights.T}
