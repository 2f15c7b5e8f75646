"""A small two-stage training job for the resume tests: ``python resume_job.py OUT [KILL_AT]``.

With KILL_AT it SIGKILLs itself at that global step (no cleanup, like a machine going down).
It writes OUT/final.pt with the final weights when it completes.
"""

import os
import signal
import sys

import torch
from torch import nn

from stopwise.tasks.toy import RunningMean, sample_streams, squared_error
from stopwise.training import (
    EpochBatches,
    GeneratedBatches,
    LoopSettings,
    fit_oracle,
    fit_policy,
    seed_everything,
)

out, kill_at = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else -1
calls = 0


class DropoutPolicy(nn.Module):
    """An MLP policy with dropout, so the global torch RNG matters for exact resume."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))

    def forward(self, features, t):
        step = torch.full_like(features[:, :1], float(t))
        return self.net(torch.cat([features, step], -1)).squeeze(-1)


class Counting:
    """Wraps a batch source; SIGKILLs the process when the global step count reaches KILL_AT."""

    def __init__(self, batches):
        self.batches = batches

    def __call__(self, step):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.batches(step)

    def state_dict(self):
        return self.batches.state_dict() if hasattr(self.batches, "state_dict") else {}

    def load_state_dict(self, state):
        if hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state)


seed_everything(0)
settings = LoopSettings(
    checkpoint_dir=os.path.join(out, "checkpoints"),
    checkpoint_every=7,
    metrics_path=os.path.join(out, "metrics.jsonl"),
    log_every=1,
    progress=False,
)
model, policy = RunningMean(6), DropoutPolicy()
generated = GeneratedBatches(lambda b, g: sample_streams(b, 6, [0.1, 1.0], g), 32, seed=1)
fit_oracle(
    model,
    Counting(generated),
    squared_error,
    torch.optim.Adam(model.parameters(), 1e-2),
    30,
    beta=0.05,
    settings=settings,
)
z, mu = sample_streams(256, 6, [0.1, 1.0], torch.Generator().manual_seed(2))
fixed = EpochBatches((z, mu), batch_size=64, seed=3)
fit_policy(
    model,
    policy,
    Counting(fixed),
    squared_error,
    torch.optim.Adam(policy.parameters(), 1e-2),
    30,
    beta=0.05,
    settings=settings,
)
torch.save(
    {"model": model.state_dict(), "policy": policy.state_dict()}, os.path.join(out, "final.pt")
)
