"""A seconds-long toy: estimate a mean from a stream of noisy observations, one per step.

Each input is a latent μ ~ N(0, 1) observed T times with a per-sample noise level σ drawn from
``noise_levels``. Step t folds observation t into a learned running estimate; low-noise inputs are
done after a few steps, noisy ones need many. L2S learns to stop accordingly. The smallest
complete task (stage I, stage II, calibration, adaptive inference, a budget curve) and the one
docs/adding_a_task.md walks through.
"""

from __future__ import annotations

from stopwise.contract import Experiment

from .config import PRESETS, ToyConfig
from .data import sample_streams
from .experiment import jobs, run_job, stop_models
from .models import RunningMean, squared_error
from .report import report

__all__ = ["RunningMean", "sample_streams", "squared_error", "ToyConfig", "EXPERIMENTS"]

EXPERIMENTS = [
    Experiment(
        name="toy",
        description="Running mean of noisy streams: the smallest L2S example (seconds).",
        config=ToyConfig,
        presets=PRESETS,
        default_preset="quick",
        devices=("cpu",),  # its jobs do not move models or data to `device`
        jobs=jobs,
        run_job=run_job,
        report=report,
        stop_models=stop_models,
    )
]
