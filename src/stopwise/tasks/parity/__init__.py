"""Halting methods side by side on the parity task (Graves 2016): fixed depth, ACT, PonderNet
(both endings), L2S (hard and soft oracle) and the random-horizon bound of Sander (2017), all
training the same GRU step model with the same optimizer, batch and number of updates.
docs/parity.md describes the task, its modules and its results.
"""

from __future__ import annotations

from ...contract import Experiment
from .config import PRESETS, ParityConfig
from .data import ParityBatch, sample_parity
from .experiment import jobs, run_job, stop_models
from .methods import METHODS, RULES, infer, train_method
from .models import ACTRule, HaltingHead, MeanFieldACT, ParityGRU, posterior_logits
from .report import report

__all__ = [
    "ParityConfig",
    "ParityBatch",
    "sample_parity",
    "ParityGRU",
    "HaltingHead",
    "MeanFieldACT",
    "ACTRule",
    "posterior_logits",
    "METHODS",
    "RULES",
    "train_method",
    "infer",
    "EXPERIMENTS",
]

EXPERIMENTS = [
    Experiment(
        name="parity",
        description="Parity (Graves 2016): fixed depth, ACT, PonderNet, L2S and the "
        "random-horizon bound on one GRU step model.",
        config=ParityConfig,
        presets=PRESETS,
        default_preset="quick",
        jobs=jobs,
        run_job=run_job,
        report=report,
        stop_models=stop_models,
    )
]
