"""How the toy trains: L2S stage I (the running mean under the oracle), then stage II (the
policy imitates the soft oracle)."""

from __future__ import annotations

import torch

from stopwise.contract import JobContext
from stopwise.policies import create_policy
from stopwise.training import GeneratedBatches, fit_oracle, fit_policy

from .config import ToyConfig
from .data import sample_streams
from .models import RunningMean, squared_error

__all__ = ["build_models", "train_l2s"]


def build_models(config: ToyConfig):
    """The untrained ``(model, policy)``."""
    model = RunningMean(config.steps)
    policy = create_policy(
        "mlp", feature_dim=2, max_steps=config.steps, hidden=tuple(config.policy_hidden)
    )
    return model, policy


def train_l2s(config: ToyConfig, context: JobContext):
    """Stage I and stage II; returns the trained ``(model, policy)`` in eval mode."""
    context.manual_seed("init")
    model, policy = build_models(config)

    def batches(stage, stream: str) -> GeneratedBatches:
        def sample(batch, generator):
            return sample_streams(batch, config.steps, config.noise_levels, generator)

        return GeneratedBatches(sample, stage.batch, context.stream_seed(stream))

    settings = context.loop_settings(log_every=20)
    fit_oracle(
        model,
        batches(config.stage1, "stage1-batches"),
        squared_error,
        torch.optim.Adam(model.parameters(), lr=config.stage1.lr),
        config.stage1.steps,
        config.beta,
        settings=settings,
    )
    fit_policy(
        model,
        policy,
        batches(config.stage2, "stage2-batches"),
        squared_error,
        torch.optim.Adam(policy.parameters(), lr=config.stage2.lr),
        config.stage2.steps,
        config.beta,
        hard=False,
        settings=settings,
    )
    return model.eval(), policy.eval()
