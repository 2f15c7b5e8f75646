"""Multi-exit classification with budgeted early exit: uniform and SDN-weighted deep
supervision, L2W sample weighting (Han et al., ECCV 2022) and L2S exit policies (Chen et al.,
ICML 2020) on one MSDNet-like backbone, evaluated with MSDNet's budgeted protocol and real
wall-clock through ``run_adaptive(..., mode="shrink")``.

Modules: :mod:`.data` (Fashion-MNIST IDX files, MNIST-1D, digits), :mod:`.model` (the multi-exit
CNN step model), :mod:`.macs` (per-exit multiply-adds), :mod:`.l2w` (weight net, meta allocation,
functional virtual step, meta gradients), :mod:`.methods` (training), :mod:`.evaluate`,
:mod:`.report` and :mod:`.experiment`. See docs/multi_exit.md.
"""

from __future__ import annotations

from .data import DataError, Splits, digits_splits, fashion_splits, mnist1d_splits, read_idx
from .experiment import check_config, run
from .l2w import MetaStep, WeightNet, allocate_meta, meta_gradient, sgd_virtual_step
from .macs import count_step_macs
from .methods import METHODS, ExitPolicy, train_method
from .model import MultiExitCNN, exit_losses, running_stats_frozen

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
    "WeightNet",
    "allocate_meta",
    "sgd_virtual_step",
    "meta_gradient",
    "MetaStep",
    "METHODS",
    "ExitPolicy",
    "train_method",
    "run",
    "EXPERIMENTS",
]

# The Fashion-MNIST benchmark (sized for one CPU thread): every key has a typed default.
DEFAULTS = {
    "dataset": "fashion-mnist",
    "data_dir": "",  # else $STOPWISE_DATA, else /usr/share/datasets/fashion-mnist
    "val_size": 5000,
    "test_size": 2000,  # MNIST-1D and digits (Fashion-MNIST uses its 10,000 test images)
    "train_size": 20000,  # 0: every training row left after validation
    "split_seed": 0,
    "mnist1d_noise": [0.0, 0.25, 0.5, 1.0],
    "mnist1d_per_level": 3000,
    "stem": 4,  # space-to-depth: 28×28×1 → 7×7×16 before the first block
    "channels": [16, 24, 32, 48],
    "strides": [1, 1, 1, 2],
    "head_width": 16,
    "epochs": 12,
    "batch_size": 128,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "methods": ["uniform", "sdn", "l2w", "l2w-fo", "l2s"],
    "num_seeds": 3,
    "sdn_weights": [0.25, 0.5, 0.75, 1.0],
    "l2w_hidden": 100,
    "l2w_delta": 0.8,
    "l2w_p": 0.75,
    "l2w_interval": 2,
    "l2w_meta_lr": 0.0001,
    "l2w_meta_wd": 0.0001,
    "l2w_clamp": False,
    "l2s_beta": 1.0,
    "l2s_hard": False,
    "policy_hidden": [32],
    "policy_lr": 0.001,
    "policy_updates": 1000,
    "budgets": [0.15, 0.25, 0.35, 0.5, 0.65],  # fractions of the full network's MACs
    "timing_methods": ["l2w"],
    "timing_batch": 1000,
    "timing_repeats": 5,
    "eval_batch": 1000,
    "log_every": 50,
}

PRESETS = {
    # Tests: scikit-learn digits (8×8), 3 exits, seconds.
    "tiny": {
        "dataset": "digits",
        "val_size": 300,
        "test_size": 400,
        "train_size": 0,
        "stem": 1,
        "channels": [4, 8, 8],
        "strides": [1, 2, 2],
        "head_width": 4,
        "sdn_weights": [0.33, 0.67, 1.0],
        "epochs": 1,
        "batch_size": 64,
        "num_seeds": 1,
        "policy_updates": 10,
        "budgets": [0.5, 0.6, 0.7],
        "timing_repeats": 1,
        "timing_batch": 200,
    },
    # Default: MNIST-1D generated with pip-only packages (no files needed), one seed, ≤ 5 min.
    "quick": {
        "dataset": "mnist1d",
        "val_size": 2000,
        "test_size": 2000,
        "train_size": 0,
        "stem": 2,
        "channels": [16, 24, 32, 48],
        "strides": [1, 2, 2, 2],
        "head_width": 16,
        "budgets": [0.25, 0.3, 0.4, 0.5, 0.65],
        "epochs": 8,
        "num_seeds": 1,
        "policy_updates": 500,
    },
    # Fashion-MNIST on one seed (the benchmark's settings).
    "fashion": {"num_seeds": 1},
    # Fashion-MNIST, 3 paired seeds, every method (benchmarks/multi_exit.py).
    "benchmark": {},
    # The benchmark's L2W-vs-uniform pairs trained twice as long (24 epochs).
    "benchmark-long": {"epochs": 24, "methods": ["uniform", "l2w"], "timing_methods": []},
}

EXPERIMENTS = [
    {
        "name": "multi-exit",
        "description": "Multi-exit CNN: uniform, SDN, L2W, L2S; budgeted early exit with "
        "real savings (Fashion-MNIST, MNIST-1D).",
        "run": run,
        "check": check_config,
        "defaults": DEFAULTS,
        "presets": PRESETS,
        "default_preset": "quick",
    }
]
