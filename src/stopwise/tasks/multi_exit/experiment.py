"""The multi-exit experiment: one job per (method, seed); each trains a fresh backbone (same
initial weights and batch order for every method of a seed), evaluates it and writes
``jobs/<id>.json``. A rerun on the same run directory skips finished jobs and resumes unfinished
ones from their stage checkpoints (``checkpoints/<id>.<stage>.pt``); the summary, tables and
figures are rebuilt from the job files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ...checkpoints import atomic_write_text
from ...training import seed_everything
from .data import DATASETS, Splits, fashion_mnist_files, load_splits
from .evaluate import (
    P_GRID,
    accuracy_at_budgets,
    budgeted_curve,
    exit_logits,
    policy_curve,
    time_thresholds,
)
from .macs import count_step_macs
from .methods import METHODS, Training, train_method
from .model import MultiExitCNN, exit_losses
from .report import summarize, write_figures, write_table

__all__ = ["run", "check_config", "build_model", "run_job", "make_jobs"]


def check_config(config: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad key or value, or a missing data file (before any
    data is read)."""
    if config["dataset"] not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}; got {config['dataset']!r}")
    if config["dataset"] == "fashion-mnist":
        fashion_mnist_files(config["data_dir"])
    unknown = sorted(set(config["methods"]) - set(METHODS))
    if unknown or not config["methods"]:
        raise ValueError(f"methods must be a non-empty subset of {sorted(METHODS)}; got {unknown}")
    for key in (
        "epochs", "batch_size", "num_seeds", "head_width", "stem", "l2w_interval", "l2w_hidden"
    ):  # fmt: skip
        if config[key] < 1:
            raise ValueError(f"{key} must be >= 1; got {config[key]}")
    if config["batch_size"] < 2 and any(m.startswith("l2w") for m in config["methods"]):
        raise ValueError("L2W splits each batch in halves: batch_size must be >= 2")
    if len(config["channels"]) != len(config["strides"]) or len(config["channels"]) < 2:
        raise ValueError(
            f"channels {config['channels']} and strides {config['strides']} need one entry per "
            "exit (at least 2)"
        )
    if len(config["sdn_weights"]) != len(config["channels"]):
        raise ValueError(
            f"sdn_weights needs one weight per exit ({len(config['channels'])}); "
            f"got {config['sdn_weights']}"
        )
    budgets = config["budgets"]
    if not budgets or any(not 0 < b <= 1 for b in budgets) or budgets != sorted(budgets):
        raise ValueError(
            f"budgets are increasing fractions of the full MACs in (0, 1]; got {budgets}"
        )
    if not 0 < config["l2w_p"]:
        raise ValueError(f"l2w_p must be > 0; got {config['l2w_p']}")
    if config["l2s_beta"] <= 0:
        raise ValueError(f"l2s_beta must be > 0; got {config['l2s_beta']}")
    unknown = sorted(set(config["timing_methods"]) - set(config["methods"]))
    if unknown:
        raise ValueError(f"timing_methods {unknown} are not among methods {config['methods']}")
    if "l2s" in config["methods"] and config["policy_updates"] < 1:
        raise ValueError("L2S needs policy_updates >= 1 for its stage II")


def make_jobs(config: dict[str, Any]) -> list[dict[str, Any]]:
    seeds = range(config["seed"], config["seed"] + config["num_seeds"])
    return [{"id": f"{m}-s{s}", "method": m, "seed": s} for s in seeds for m in config["methods"]]


def build_model(config: dict[str, Any], splits: Splits, seed: int) -> MultiExitCNN:
    """The backbone of ``seed`` (same initial weights for every method) with its MACs counted."""
    torch.manual_seed(seed)
    model = MultiExitCNN(
        splits.dims,
        config["channels"],
        config["strides"],
        config["head_width"],
        splits.classes,
        stem=config["stem"],
    )
    model.set_step_costs(count_step_macs(model, splits.train_x[:1]))
    return model


def _weights_vs_loss(weight_net, model, splits: Splits, rows: int = 1000) -> dict[str, Any]:
    """Learned weights and exit losses of the first ``rows`` training samples (eval mode)."""
    x, y = splits.train_x[:rows], splits.train_y[:rows]
    with torch.no_grad():
        losses = exit_losses(exit_logits(model, x), y)
        weights = weight_net(losses)
    return {"losses": losses.T.tolist(), "weights": weights.T.tolist()}


def run_job(job: dict[str, Any], config: dict[str, Any], splits: Splits, run_dir) -> dict:
    """Train and evaluate one job; returns (and saves as ``jobs/<id>.json``) its result."""
    out = Path(run_dir.path) / "jobs" / f"{job['id']}.json"
    if out.exists():
        return json.loads(out.read_text())
    seed_everything(job["seed"])
    resumed = any(Path(run_dir.checkpoints).glob(f"{job['id']}.*.pt"))
    model = build_model(config, splits, job["seed"])
    training = Training(
        config,
        splits.train_x,
        splits.train_y,
        job["seed"],
        run_dir.loop_settings(log_every=config["log_every"]),
        job["id"],
    )
    extras = train_method(job["method"], model, training)
    costs = model.step_costs()

    start = time.perf_counter()
    val_logits = exit_logits(model, splits.val_x, config["eval_batch"])
    test_logits = exit_logits(model, splits.test_x, config["eval_batch"])
    correct = test_logits.argmax(-1) == splits.test_y.unsqueeze(1)
    budgets = [b * float(costs[-1]) for b in config["budgets"]]
    curves = {"confidence": budgeted_curve(val_logits, test_logits, splits.test_y, costs)}
    if "policy" in extras:
        val_budgets = [pt["val_mean_macs"] for pt in curves["confidence"]]
        curves["policy"] = policy_curve(
            extras["policy"], val_logits, test_logits, splits.test_y, costs, val_budgets
        )
    result: dict[str, Any] = {
        "job": job,
        "resumed": resumed,
        "train_seconds": training.seconds,
        "updates": training.updates,
        "epochs": config["epochs"],
        "step_costs": costs.tolist(),
        "anytime_accuracy": correct.double().mean(0).tolist(),
        "curves": curves,
        "budget_macs": budgets,
        "budget_accuracy": {k: accuracy_at_budgets(c, budgets) for k, c in curves.items()},
    }
    if splits.test_group is not None:
        result["test_groups"] = _group_exits(curves["confidence"], val_logits, test_logits, splits)
    if "weight_net" in extras:
        result["negative_weights"] = extras["negative_weights"]
        result["weights_vs_loss"] = _weights_vs_loss(extras["weight_net"], model, splits)
    if job["method"] in config["timing_methods"]:
        nearest = [
            min(curves["confidence"], key=lambda pt, b=b: abs(pt["mean_macs"] - b)) for b in budgets
        ]
        result["timing"] = time_thresholds(
            model,
            splits.test_x,
            test_logits,
            [pt["thresholds"] for pt in nearest],
            config["timing_batch"],
            config["timing_repeats"],
        )
    result["eval_seconds"] = time.perf_counter() - start
    atomic_write_text(out, json.dumps(result) + "\n")
    return result


def _group_exits(points, val_logits, test_logits, splits: Splits) -> list[dict[str, Any]]:
    """Mean exit (1-based) and accuracy per difficulty group of the test split (MNIST-1D noise
    level) at the operating point p = 1 (uniform exit distribution)."""
    from ...inference import HazardThreshold, stop_indices
    from .evaluate import confidence_scores

    point = min(points, key=lambda pt: abs(pt["p"] - 1.0))
    rule = HazardThreshold.from_score_threshold(torch.tensor(point["thresholds"]))
    index = stop_indices(confidence_scores(test_logits), rule)
    correct = test_logits.argmax(-1) == splits.test_y.unsqueeze(1)
    rows = torch.arange(len(index))
    groups = []
    for g in sorted(set(splits.test_group.tolist())):
        mask = splits.test_group == g
        groups.append(
            {
                "group": g,
                "level": splits.info["noise_levels"][g],
                "mean_exit": float((index[mask] + 1).double().mean()),
                "accuracy": float(correct[rows, index][mask].double().mean()),
            }
        )
    return groups


def run(config: dict[str, Any], run_dir) -> dict[str, Any]:
    """Run every job of ``config`` into ``run_dir`` and write the summary, table and figures."""
    check_config(config)
    start = time.perf_counter()
    splits = load_splits(config)
    run_dir.write_json("data.json", {"dataset": splits.name, **splits.sizes(), **splits.info})
    jobs = make_jobs(config)
    results = []
    for job in jobs:
        done = (Path(run_dir.path) / "jobs" / f"{job['id']}.json").exists()
        results.append(run_job(job, config, splits, run_dir))
        if not done:
            print(f"multi-exit: done {job['id']}", file=sys.stderr)
    summary = summarize(results, config, splits)
    summary["wall_seconds"] = time.perf_counter() - start
    summary["p_grid"] = P_GRID
    run_dir.write_results(summary)
    run_dir.write_table(write_table(summary))
    write_figures(results, summary, run_dir)
    return summary
