"""Denoising with a DnCNN that learns how deep to go per image: DnCNN-stop (L2S §5.3, Chen et al.
ICML 2020) on grey photos that ship inside installed packages, beside DnCNN, DnCNN with uniform
deep supervision, the oracle stop, BM3D and non-local means.

Modules: :mod:`.data` (the sample photos, splits, patches, noisy sets), :mod:`.models` (DnCNN
as a step model with exit heads, the CNN stop policy, costs), :mod:`.metrics` (PSNR, SSIM,
per-exit tables), :mod:`.methods` (training stages, stage II, classical baselines),
:mod:`.experiment` (jobs) and :mod:`.report`. See docs/denoising.md.
"""

from __future__ import annotations

from ...contract import Experiment
from .config import PRESETS, DenoisingConfig
from .data import CATALOGUE, load_splits, sample_patches
from .experiment import jobs, run_job, stop_models
from .models import DnCNN, ImagePolicy, noise_losses
from .report import report

__all__ = [
    "CATALOGUE",
    "DenoisingConfig",
    "DnCNN",
    "ImagePolicy",
    "load_splits",
    "noise_losses",
    "sample_patches",
    "EXPERIMENTS",
]

EXPERIMENTS = [
    Experiment(
        name="denoising",
        description="DnCNN-stop (L2S §5.3) on sample photos, with DnCNN, BM3D and non-local means.",
        config=DenoisingConfig,
        presets=PRESETS,
        default_preset="quick",
        jobs=jobs,
        run_job=run_job,
        report=report,
        stop_models=stop_models,
    )
]
