"""The toy's jobs: one per seed, ``l2s``, which trains, calibrates on validation and measures the
test streams once (budget rows run for real in the configured inference mode, the budget curve,
the same model at each fixed depth, and the oracle stop)."""

from __future__ import annotations

from typing import Any

import torch

from stopwise.contract import Job, JobContext, TrainedStopModel
from stopwise.inference import calibrate, hazard_trajectory, run_adaptive, stop_indices
from stopwise.selection import (
    Heldout,
    budget_grid,
    budget_sweep,
    curve_budgets,
    fixed_depth_curve,
)
from stopwise.steps import unroll

from .config import ToyConfig
from .data import sample_streams
from .methods import build_models, train_l2s
from .models import squared_error

__all__ = ["jobs", "run_job", "stop_models"]


def jobs(config: ToyConfig) -> list[Job]:
    return [Job("l2s")]


def eval_streams(config: ToyConfig, generator: torch.Generator):
    """``eval_size`` streams ``(observations, μ)`` of the validation or the test split."""
    return sample_streams(config.eval_size, config.steps, config.noise_levels, generator)


def run_job(job: Job, context: JobContext) -> dict[str, Any]:
    config: ToyConfig = context.config
    model, policy = train_l2s(config, context)
    val_z, val_mu = eval_streams(config, context.generator("validation"))
    test = Heldout(eval_streams(config, context.generator("test")))
    with torch.no_grad():
        val_hazards = hazard_trajectory(model, policy, val_z)
        val_errors = squared_error(unroll(model, val_z).predictions, val_mu)
        rules = {budget: calibrate(model, policy, val_z, budget) for budget in config.budgets}

        test_z, test_mu = test.open()
        errors = squared_error(unroll(model, test_z).predictions, test_mu)  # (N, T)
        test_hazards = hazard_trajectory(model, policy, test_z)

        def metric(index: torch.Tensor) -> dict[str, float]:
            return {"mse": float(errors.gather(1, index.view(-1, 1)).mean())}

        rows = []
        for budget, rule in rules.items():
            result = run_adaptive(model, policy, test_z, rule, mode=config.inference_mode)
            dense = stop_indices(test_hazards, rule)
            rows.append(
                {
                    "budget": budget,
                    "mean_steps": float(result.steps_used.double().mean()),
                    "mse": float(((result.predictions - test_mu) ** 2).mean()),
                    "matches_dense": bool(torch.equal(result.stop_index, dense)),
                }
            )
        valid = torch.ones(config.steps, dtype=torch.bool)
        oracle_index = errors.argmin(dim=1)
    return {
        "budgets": rows,
        "curve": budget_sweep(
            val_hazards,
            test_hazards,
            budget_grid(valid, config.curve_points),
            metric,
            val_metric=lambda index: float(val_errors.gather(1, index.view(-1, 1)).mean()),
            lower_is_better=True,
        ),  # fmt: skip
        "fixed_depth": fixed_depth_curve(len(test_mu), metric, valid),
        "oracle": {"mean_steps": float((oracle_index + 1).double().mean()), **metric(oracle_index)},
    }


def load_l2s(context: JobContext, record: dict[str, Any]) -> TrainedStopModel:
    model, policy = build_models(context.config)
    model.load_state_dict(context.checkpoint("stage1")["model"])
    policy.load_state_dict(context.checkpoint("stage2")["policy"])
    return TrainedStopModel(
        "l2s",
        model,
        policy,
        curve_budgets(record["curve"]),
        inputs="a stream of `steps` observations",
        test_inputs=lambda: [eval_streams(context.config, context.generator("test"))[0]],
    )


def stop_models(config: ToyConfig) -> dict:
    return {"l2s": ("l2s", load_l2s)}
