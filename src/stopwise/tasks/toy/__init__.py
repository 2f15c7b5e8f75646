"""A seconds-long toy: estimate a mean from a stream of noisy observations, one per step.

Each input is a latent μ ~ N(0, 1) observed T times with a per-sample noise level σ drawn from
``noise_levels``. Step t folds observation t into a learned running estimate; low-noise inputs are
done after a few steps, noisy ones need many. L2S learns to stop accordingly. This task is the
smallest complete use of the library (stage I, stage II, calibration, adaptive inference) and is
what the core's CLI tests run.
"""

from __future__ import annotations

import torch
from torch import nn

from ...inference import calibrate, run_adaptive, run_fixed
from ...policies import create_policy
from ...reporting import markdown_table
from ...steps import StepModel
from ...training import GeneratedBatches, fit_oracle, fit_policy

__all__ = ["RunningMean", "sample_streams"]


def sample_streams(
    batch: int, steps: int, noise_levels: list[float], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(observations (B, T), target μ (B,))`` with σ drawn uniformly from ``noise_levels``."""
    mu = torch.randn(batch, generator=generator)
    levels = torch.tensor(noise_levels)
    sigma = levels[torch.randint(len(levels), (batch,), generator=generator)]
    noise = torch.randn(batch, steps, generator=generator) * sigma.unsqueeze(-1)
    return mu.unsqueeze(-1) + noise, mu


class RunningMean(StepModel):
    """Step t: m ← m + a_t (z_t − m), with learnable gains a_t (initialised to 1/(t+1), the
    plain running mean); tracks the running second moment so a policy can see the spread."""

    def __init__(self, steps: int):
        super().__init__()
        self.max_steps = steps
        self.gain_logits = nn.Parameter(
            torch.logit(1.0 / torch.arange(1.0, steps + 1).clamp(1.0001))
        )

    def start(self, observations):
        zeros = observations.new_zeros(observations.shape[0])
        return {"z": observations, "mean": zeros, "square": zeros}

    def advance(self, state, t):
        a = torch.sigmoid(self.gain_logits[t])
        z = state["z"][:, t]
        return {
            "z": state["z"],
            "mean": state["mean"] + a * (z - state["mean"]),
            "square": state["square"] + (z * z - state["square"]) / (t + 1),
        }

    def predict(self, state, t):
        return state["mean"]

    def features(self, state, t):
        spread = (state["square"] - state["mean"] ** 2).clamp_min(0).sqrt()
        return torch.stack([state["mean"], spread], dim=-1)


def squared_error(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` per-step squared error of predictions ``(B, T)`` against ``targets (B,)``."""
    return (predictions - targets.unsqueeze(-1)) ** 2


def run(config: dict, run_dir) -> dict:
    T, levels = config["steps"], config["noise_levels"]
    model = RunningMean(T)
    policy = create_policy("mlp", feature_dim=2, max_steps=T, hidden=(32,))

    def sample(batch, generator):
        return sample_streams(batch, T, levels, generator)

    settings = run_dir.loop_settings(log_every=20)
    fit_oracle(
        model,
        GeneratedBatches(sample, config["batch_size"], config["seed"]),
        squared_error,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        config["stage1_steps"],
        config["beta"],
        settings=settings,
    )
    fit_policy(
        model,
        policy,
        GeneratedBatches(sample, config["batch_size"], config["seed"] + 1),
        squared_error,
        torch.optim.Adam(policy.parameters(), lr=3e-3),
        config["stage2_steps"],
        config["beta"],
        hard=False,
        settings=settings,
    )
    test_generator = torch.Generator().manual_seed(config["seed"] + 10_000)
    val_z, _ = sample_streams(config["eval_size"], T, levels, test_generator)
    test_z, test_mu = sample_streams(config["eval_size"], T, levels, test_generator)
    model.eval()
    rows = []
    with torch.no_grad():
        for budget in config["budgets"]:
            rule = calibrate(model, policy, val_z, budget)
            result = run_adaptive(model, policy, test_z, rule, mode="shrink")
            rows.append(
                {
                    "method": f"L2S policy (budget {budget:g} steps)",
                    "mean_steps": float(result.steps_used.float().mean()),
                    "mse": float(((result.predictions - test_mu) ** 2).mean()),
                }
            )
            depth = max(1, round(budget))
            rows.append(
                {
                    "method": f"fixed depth {depth}",
                    "mean_steps": float(depth),
                    "mse": float(((run_fixed(model, test_z, depth) - test_mu) ** 2).mean()),
                }
            )
    run_dir.write_results({"rows": rows})
    run_dir.write_table(
        markdown_table(
            rows,
            [
                ("method", "method", "s"),
                ("mean_steps", "mean steps", ".2f"),
                ("mse", "test MSE", ".4f"),
            ],
        )
    )
    return {"rows": rows}


# Read by stopwise.experiments (tasks never import the layers above them).
EXPERIMENTS = [
    {
        "name": "toy",
        "description": "Running mean of noisy streams: the smallest L2S example (seconds).",
        "run": run,
        "defaults": {
            "steps": 12,
            "noise_levels": [0.1, 1.0],
            "beta": 0.3,
            "batch_size": 256,
            "stage1_steps": 100,
            "stage2_steps": 400,
            "eval_size": 2000,
            "budgets": [3.0, 6.0],
        },
        "presets": {
            "quick": {},
            "tiny": {"stage1_steps": 20, "stage2_steps": 40, "eval_size": 500},
        },
    }
]
