"""Sparse recovery (L2S, Chen et al. 2020, §5.1): ISTA, FISTA, LISTA and LISTA-stop on the paper's
protocol, plus a stronger stop model (LISTA-CP with support selection, started at ALISTA).

:mod:`.config` (keys and presets), :mod:`.data` (the sensing matrix, signals, noise, splits),
:mod:`.metrics` (NMSE in dB), :mod:`.models` (the step models and the stop policy),
:mod:`.methods` (ISTA/FISTA tuning and the training stages), :mod:`.experiment` (the jobs) and
:mod:`.report` (table, figures). See docs/sparse_recovery.md.
"""

from __future__ import annotations

from ...contract import Experiment
from .config import PRESETS, SparseRecoveryConfig
from .data import SparseBatch, fixed_split, make_problem, sample_batch, sensing_matrix
from .experiment import jobs, load_stop_model, run_job, stop_models
from .metrics import nmse_columns, nmse_db, step_losses
from .models import ALISTA, FISTA, ISTA, LISTA, LISTACPSS, StopPolicy, analytic_weight
from .report import report

__all__ = [
    "SparseRecoveryConfig",
    "SparseBatch",
    "sensing_matrix",
    "sample_batch",
    "fixed_split",
    "make_problem",
    "nmse_db",
    "nmse_columns",
    "step_losses",
    "ISTA",
    "FISTA",
    "LISTA",
    "ALISTA",
    "LISTACPSS",
    "analytic_weight",
    "StopPolicy",
    "load_stop_model",
    "EXPERIMENTS",
]

EXPERIMENTS = [
    Experiment(
        name="sparse-recovery",
        description="L2S Table 2: ISTA, FISTA, LISTA, LISTA-stop and LISTA-CP-SS-stop on "
        "250×500 sparse recovery at 20/30/40 dB SNR.",
        config=SparseRecoveryConfig,
        presets=PRESETS,
        default_preset="quick",
        jobs=jobs,
        run_job=run_job,
        report=report,
        stop_models=stop_models,
    )
]
