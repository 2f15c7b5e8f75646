"""Multi-exit classification with budgeted early exit: uniform and SDN-weighted deep
supervision, L2W sample weighting (Han et al., ECCV 2022) and L2S exit policies (Chen et al.,
ICML 2020) on one MSDNet-like backbone, evaluated with MSDNet's budgeted protocol and run for
real through ``run_adaptive``. The task folder's usual modules, and :mod:`.l2w` (L2W's weight
net, meta allocation, functional virtual step and meta gradients). See docs/multi_exit.md.
"""

from __future__ import annotations

from ...contract import Experiment
from .config import METHODS, PRESETS, MultiExitConfig
from .experiment import jobs, run_job, stop_models
from .models import ExitPolicy, MultiExitCNN, count_step_macs, exit_losses
from .report import report

__all__ = [
    "METHODS",
    "MultiExitConfig",
    "MultiExitCNN",
    "count_step_macs",
    "exit_losses",
    "ExitPolicy",
    "EXPERIMENTS",
]

EXPERIMENTS = [
    Experiment(
        name="multi-exit",
        description="Multi-exit CNN: uniform, SDN, L2W, L2S; budgeted early exit with real "
        "savings (Fashion-MNIST, MNIST-1D).",
        config=MultiExitConfig,
        presets=PRESETS,
        default_preset="quick",
        devices=("cpu",),  # its jobs do not move models or data to `device`
        jobs=jobs,
        run_job=run_job,
        report=report,
        stop_models=stop_models,
    )
]
