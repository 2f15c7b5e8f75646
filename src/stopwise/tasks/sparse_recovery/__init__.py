"""Sparse recovery (L2S, Chen et al. 2020, §5.1): ISTA, FISTA, LISTA and LISTA-stop on the paper's
protocol, plus a stronger stop model (LISTA-CP with support selection, started at ALISTA).

Modules: :mod:`.data` (the sensing matrix, signals, noise, fixed splits), :mod:`.metrics` (NMSE in
dB), :mod:`.models` (the step models), :mod:`.classical` (ISTA/FISTA tuning), :mod:`.policy` (the
stage-II MLP policy), :mod:`.stopping` (exit pruning, calibrated rules, adaptive evaluation),
:mod:`.report` (table, figures) and :mod:`.experiment` (the stages of a run). See
docs/sparse_recovery.md.
"""

from __future__ import annotations

from .data import SparseBatch, fixed_split, sample_batch, sensing_matrix
from .experiment import check_config, run
from .metrics import nmse_columns, nmse_db, step_losses
from .models import ALISTA, FISTA, ISTA, LISTA, LISTACPSS, analytic_weight
from .policy import StopPolicy

__all__ = [
    "SparseBatch",
    "sensing_matrix",
    "sample_batch",
    "fixed_split",
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
    "run",
    "EXPERIMENTS",
    "DEFAULTS",
    "PRESETS",
]

# The paper's protocol with the `quick` schedule; presets override some keys.
DEFAULTS = {
    # problem (L2S §5.1)
    "m": 250,
    "n": 500,
    "condition": 5.0,
    "sparsity": 0.1,
    "snrs": [20.0, 30.0, 40.0],
    "per_snr": 1000,  # validation and test samples per SNR
    "steps": 20,  # layers of the learned models
    # ISTA / FISTA, tuned on validation around the paper's (L, λ)
    "classical_budgets": [20, 100],
    "tune_lambda_factors": [0.8, 1.25],
    "tune_L_factors": [0.9, 1.1],
    "classical_only": False,
    # LISTA (deep supervision, from the tuned ISTA)
    "lista_steps": 600,
    "lista_batch": 128,
    "lista_lr": 0.001,
    # LISTA-stop: stage I (oracle, β) and stage II (policy)
    "beta": 0.28,
    "stage1_init": "lista",
    "stage1_steps": 200,
    "stage1_batch": 256,
    "stage1_lr": 0.0002,
    "stage1_weight_decay": 0.0001,
    "prune_mass": 0.001,
    "oracle": "hard",
    "stage2_steps": 300,
    "stage2_batch": 128,
    "stage2_lr": 0.003,
    "policy_hidden": [16],
    "policy_summaries": True,
    # ALISTA with support selection, then LISTA-CP-SS-stop started from it
    "alista_steps": 100,
    "alista_batch": 256,
    "alista_lr": 0.01,
    "alista_gamma": 0.6,
    "alista_theta": 0.1,
    "ss_increment": 0.012,
    "ss_max": 0.13,
    "cpss_stage1_steps": 300,
    "cpss_batch": 256,
    "cpss_lr": 0.001,
    "cpss_weight_decay": 0.0,
    "cpss_stage2_steps": 300,
    # schedules and inference
    "lr_final": 0.05,
    "threshold_rule": "best",  # hazard, cumulative, or the better of the two on validation
    "budget_points": 39,
    "sample_seed": 7,
    "inference_mode": "shrink",
    "eval_chunk": 1000,
    "log_every": 25,
}

PRESETS = {
    # seconds: a small problem for the tests
    "tiny": {
        "m": 50,
        "n": 100,
        "per_snr": 200,
        "steps": 8,
        "classical_budgets": [8, 40],
        "lista_steps": 150,
        "lista_batch": 64,
        "lista_lr": 0.003,
        "stage1_steps": 60,
        "stage1_batch": 64,
        "stage1_lr": 0.001,
        "stage2_steps": 80,
        "stage2_batch": 64,
        "alista_steps": 40,
        "alista_batch": 64,
        "cpss_stage1_steps": 60,
        "cpss_batch": 64,
        "cpss_stage2_steps": 80,
        "budget_points": 15,
        "log_every": 10,
    },
    # `make demo`: the whole table in under ten minutes on one CPU thread (LISTA rows shortened)
    "quick": {},
    # benchmarks/sparse_recovery.py: the stronger stop model on ~59 CPU-minutes of training
    "benchmark": {
        "tune_lambda_factors": [0.7, 0.85, 1.2, 1.4],
        "tune_L_factors": [0.85, 0.93, 1.08, 1.17],
        "lista_steps": 3000,
        "stage1_steps": 1000,
        "stage2_steps": 2000,
        "alista_steps": 300,
        "cpss_stage1_steps": 15000,
        "cpss_stage2_steps": 6000,
    },
    # the paper's schedule (L2S §5.1; about 11 hours of one CPU thread for stage I alone):
    # constant learning rates, stage I from ISTA; LISTA's learning rate is not given, we use 1e-4
    "paper": {
        "tune_lambda_factors": [0.7, 0.85, 1.2, 1.4],
        "tune_L_factors": [0.85, 0.93, 1.08, 1.17],
        "lista_steps": 100000,
        "lista_batch": 512,
        "lista_lr": 0.0001,
        "stage1_init": "ista",
        "stage1_steps": 50000,
        "stage1_batch": 1024,
        "stage1_lr": 0.0001,
        "stage2_steps": 40000,
        "stage2_batch": 256,
        "stage2_lr": 0.001,
        "alista_steps": 300,
        "cpss_stage1_steps": 12000,
        "cpss_stage2_steps": 2000,
        "lr_final": 1.0,
        "checkpoint_every": 1000,
    },
}

EXPERIMENTS = [
    {
        "name": "sparse-recovery",
        "description": "L2S Table 2: ISTA, FISTA, LISTA, LISTA-stop and LISTA-CP-SS-stop on "
        "250×500 sparse recovery at 20/30/40 dB SNR.",
        "run": run,
        "check": check_config,
        "defaults": DEFAULTS,
        "presets": PRESETS,
        "default_preset": "quick",
    }
]
