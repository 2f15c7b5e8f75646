"""Multi-exit classification with budgeted early exit: uniform and SDN-weighted deep
supervision, L2W sample weighting (Han et al., ECCV 2022) and L2S exit policies (Chen et al.,
ICML 2020) on one MSDNet-like backbone, evaluated with MSDNet's budgeted protocol and run for
real through ``run_adaptive``.

Modules: :mod:`.config` (typed config, presets), :mod:`.data` (Fashion-MNIST IDX files, MNIST-1D,
digits), :mod:`.models` (the multi-exit CNN step model, its MACs, the L2S exit policy),
:mod:`.l2w` (weight net, meta allocation, functional virtual step, meta gradients),
:mod:`.methods` (training), :mod:`.metrics`, :mod:`.experiment` (jobs, run_job) and
:mod:`.report`. See docs/multi_exit.md.
"""

from __future__ import annotations

from ...contract import Experiment
from .config import METHODS, PRESETS, MultiExitConfig
from .data import DataError, Splits, digits_splits, fashion_splits, mnist1d_splits, read_idx
from .experiment import jobs, run_job
from .l2w import MetaStep, WeightNet, allocate_meta, meta_gradient, sgd_virtual_step
from .methods import train_method
from .models import ExitPolicy, MultiExitCNN, count_step_macs, exit_losses, running_stats_frozen
from .report import report

__all__ = [
    "DataError",
    "Splits",
    "read_idx",
    "fashion_splits",
    "mnist1d_splits",
    "digits_splits",
    "MultiExitCNN",
    "exit_losses",
    "running_stats_frozen",
    "count_step_macs",
    "ExitPolicy",
    "WeightNet",
    "allocate_meta",
    "sgd_virtual_step",
    "meta_gradient",
    "MetaStep",
    "METHODS",
    "MultiExitConfig",
    "train_method",
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
        jobs=jobs,
        run_job=run_job,
        report=report,
    )
]
