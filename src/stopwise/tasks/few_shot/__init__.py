"""Task-imbalanced few-shot learning with MAML-stop (L2S §5.2): MAML where each task learns how
many inner gradient steps to take.

Families: glyphs rendered from KanjiVG stroke data (Omniglot-like, with a loader for the real
Omniglot through ``data_dir``) and sinusoid regression. Each task draws one K and every class gets
K support shots, as the official code's imbalanced setting does. Methods: MAML at a fixed T, at the
T chosen on validation and with a hand-made support-loss stop; MAML-stop trained jointly with its
set-level policy, run with a threshold calibrated on validation (adaptation runs for real), and the
oracle stop as a ceiling. See docs/few_shot.md.
"""

from __future__ import annotations

from ...contract import Experiment
from .config import PRESETS, FewShotConfig
from .data import glyph_splits, omniglot_splits, sample_classification_tasks, sample_sinusoid_tasks
from .experiment import jobs, run_job, stop_models
from .methods import maml_losses, maml_stop_losses, meta_train
from .models import AdaptedLearner, Conv4, SetPolicy, SineMLP, SupportLossStop, measure_task
from .report import report

__all__ = [
    "FewShotConfig",
    "PRESETS",
    "Conv4",
    "SineMLP",
    "SetPolicy",
    "SupportLossStop",
    "AdaptedLearner",
    "measure_task",
    "maml_losses",
    "maml_stop_losses",
    "meta_train",
    "glyph_splits",
    "omniglot_splits",
    "sample_classification_tasks",
    "sample_sinusoid_tasks",
    "EXPERIMENTS",
]

EXPERIMENTS = [
    Experiment(
        name="few-shot",
        description="Task-imbalanced few-shot learning: MAML vs MAML-stop on rendered glyphs, "
        "Omniglot or sinusoids.",
        config=FewShotConfig,
        presets=PRESETS,
        default_preset="quick",
        devices=("cpu",),  # its jobs do not move models or data to `device`
        jobs=jobs,
        run_job=run_job,
        report=report,
        stop_models=stop_models,
    )
]
