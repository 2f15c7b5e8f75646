"""How the toy trains: L2S stage I (the running mean under the oracle), then stage II (the
policy imitates the soft oracle)."""

from __future__ import annotations

import torch

from stopwise.contract import JobContext
from stopwise.policies import create_policy
from stopwise.training import GeneratedBatches, fit_oracle, fit_policy

from .config import Stage, ToyConfig
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

    def stage(settings: Stage, parameters, stream: str) -> tuple:
        """What ``fit_oracle`` and ``fit_policy`` take after the model (and policy): batches of
        the named random stream, the per-step loss, Adam and the number of updates."""

        def sample(batch, generator):
            return sample_streams(batch, config.steps, config.noise_levels, generator)

        batches = GeneratedBatches(sample, settings.batch, context.stream_seed(stream))
        return batches, squared_error, torch.optim.Adam(parameters, lr=settings.lr), settings.steps

    loop = context.loop_settings(log_every=20)
    stage1 = stage(config.stage1, model.parameters(), "stage1-batches")
    fit_oracle(model, *stage1, config.beta, settings=loop)
    stage2 = stage(config.stage2, policy.parameters(), "stage2-batches")
    fit_policy(model, policy, *stage2, config.beta, hard=False, settings=loop)
    return model.eval(), policy.eval()
