"""The multi-exit experiment's typed config and presets.

The defaults are the Fashion-MNIST benchmark, sized for one CPU thread; ``quick`` (the default
preset) uses MNIST-1D, generated with pip-only packages, and ``tiny`` scikit-learn's digits.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import Config, distinct, group, param
from ...datasets import DATASET_PACKAGES, require_packages
from .data import DATASETS, check_data
from .l2w import META_LOSSES, OUTPUT_INITS

__all__ = ["METHODS", "L2W", "L2S", "Timing", "MultiExitConfig", "PRESETS"]

# The training methods compared on one backbone (see methods.py), with their table labels.
METHODS = {
    "uniform": "Uniform Σ_k CE_k",
    "sdn": "SDN fixed weights",
    "l2w": "L2W",
    "l2w-fo": "L2W (first-order)",
    "l2w-last": "L2W, no allocation (meta loss at the last exit)",
    "l2w-all": "L2W, no allocation (every meta sample at every exit)",
    "l2s": "L2S",
}


def _tens(value: int) -> str | None:
    return None if value % 10 == 0 else "must be a multiple of 10 (make_dataset makes 10·⌊n/10⌋)"


def _increasing(values: list[float]) -> str | None:
    return None if values == sorted(values) else "must be increasing"


@dataclass
class L2W:
    """L2W's weight network and meta step (Han et al., ECCV 2022; see l2w.py). The defaults are
    the official CIFAR settings except where docs/multi_exit.md names a departure."""

    hidden: int = param(500, ge=1, help="hidden units of the weight network (official: 500)")
    delta: float = param(0.8, ge=0, help="δ in w = 1 + δ·(g − mean_k g)")
    p: float = param(0.75, gt=0, help="meta allocation q_k ∝ p^k")
    interval: int = param(1, ge=1, help="SGD updates between meta steps (official CIFAR: 1)")
    meta_lr: float = param(1e-4, gt=0, help="Adam learning rate of the weight network")
    meta_lr_schedule: str = param(
        "cosine", choices=("cosine", "constant"), help="meta LR: cosine to 0 over training or fixed"
    )
    meta_wd: float = param(1e-4, ge=0, help="Adam weight decay of the weight network")
    meta_batch: str = param(
        "full",
        choices=("full", "half"),
        help="full: virtual step on the whole training batch, meta loss on a separate batch as "
        "large; half: the training batch split in halves (virtual step, meta loss)",
    )
    meta_loss: str = param(
        "per-exit",
        choices=META_LOSSES,
        help="per-exit: Σ_k mean over the meta samples allocated to exit k (official); pooled: "
        "one mean over the meta batch; last: the last exit only, no allocation; all: Σ_k mean "
        "over every meta sample, no allocation",
    )
    output_init: str = param(
        "default", choices=OUTPUT_INITS, help="weight net output layer: PyTorch default or zero"
    )
    clamp: bool = param(False, help="clip negative weights at 0")


@dataclass
class L2S:
    """L2S on the multi-exit network: the stage-I oracle temperature and the stage-II policy."""

    betas: list[float] = param(
        [1.0],
        gt=0,
        min_len=1,
        check=distinct,
        help="oracle temperatures β, one network each (a training and an evaluation job); per "
        "budget the best on validation (with uniform training as β → ∞ when it runs) is L2S's "
        "result",
    )
    hard: bool = param(False, help="stage II imitates the hard (argmin) oracle")
    policy_hidden: list[int] = param([32], ge=1, help="hidden widths of the exit policy")
    policy_lr: float = param(1e-3, gt=0, help="Adam learning rate of stage II")
    policy_updates: int = param(1000, ge=1, help="stage-II updates")


@dataclass
class Timing:
    """Wall-clock of real early exit against the full network (inference.time_adaptive)."""

    methods: list[str] = param(
        ["l2w"], choices=tuple(METHODS), check=distinct, help="methods whose early exit is timed"
    )
    batch: int = param(1000, ge=1, help="test rows per call")
    repeats: int = param(5, ge=1, help="interleaved repeats (median)")


@dataclass
class MultiExitConfig(Config):
    LOCATION_KEYS = ("data_dir",)  # the jobs carry the IDX files' digest (experiment.data_params)

    dataset: str = param("fashion-mnist", choices=DATASETS, help="data set")
    data_dir: str = param(
        "", help="Fashion-MNIST folder (else $STOPWISE_DATA, else /usr/share/datasets/…)"
    )
    val_size: int = param(5000, ge=1, help="validation rows (thresholds, never trained on)")
    test_size: int = param(2000, ge=1, help="test rows (MNIST-1D, digits; Fashion: its 10,000)")
    train_size: int = param(20000, ge=0, help="training rows (0: all left after validation)")
    split_seed: int = param(0, ge=0, help="the data split, the same for every seed")
    mnist1d_noise: list[float] = param(
        [0.0, 0.25, 0.5, 1.0], ge=0, min_len=1, help="MNIST-1D noise levels, one set each"
    )
    mnist1d_per_level: int = param(
        3000,
        ge=10,
        check=_tens,
        help="MNIST-1D samples per noise level (make_dataset makes 10·⌊n/10⌋: a multiple of 10)",
    )
    stem: int = param(4, ge=1, help="space-to-depth factor of the input (28×28×1 → 7×7×16)")
    channels: list[int] = param(
        [16, 24, 32, 48], ge=1, min_len=2, help="block widths (one exit each)"
    )
    strides: list[int] = param([1, 1, 1, 2], ge=1, min_len=2, help="first-conv stride per block")
    head_width: int = param(16, ge=1, help="channels of each exit head")
    epochs: int = param(12, ge=1, help="training epochs (every method: the same updates)")
    batch_size: int = param(128, ge=2, help="training batch (L2W splits it in halves)")
    lr: float = param(0.05, gt=0, help="SGD learning rate (cosine schedule)")
    momentum: float = param(0.9, ge=0, lt=1, help="SGD momentum")
    weight_decay: float = param(5e-4, ge=0, help="SGD weight decay")
    methods: list[str] = param(
        [m for m in METHODS if m != "l2w-all"],  # all but the l2w-all ablation (not in any preset)
        choices=tuple(METHODS),
        min_len=1,
        check=distinct,
        help="methods to train",
    )
    sdn_weights: list[float] = param(
        [0.25, 0.5, 0.75, 1.0], gt=0, help="SDN's exit weights (normalised to sum to K)"
    )
    l2w: L2W = group(L2W)
    l2s: L2S = group(L2S)
    gain_head: bool = param(
        False,
        help="also fit a stop head for budgets on every trained network, frozen "
        "(stopwise.fit_gain_head on the training rows: the score regresses on the gain rate of "
        "the exits' cross-entropy per MAC; not in the papers) and report its budget curve",
    )
    gain_updates: int = param(1000, ge=1, help="Adam updates of the gain head")
    gain_price: float = param(
        0.1,
        gt=0,
        le=100,
        help="the gain head's zero: stop once going on buys less cross-entropy than this per "
        "full network's MACs",
    )
    budgets: list[float] = param(
        [0.15, 0.25, 0.35, 0.5, 0.65],
        gt=0,
        le=1,
        min_len=1,
        check=_increasing,
        help="fractions of the full network's MACs the table reports",
    )
    timing: Timing = group(Timing)
    eval_batch: int = param(1000, ge=1, help="rows per evaluation chunk")
    log_every: int = param(50, ge=1, help="updates between metric records")

    def check(self) -> None:
        if self.dataset in DATASET_PACKAGES:  # (Fashion-MNIST is read from IDX files)
            require_packages(f"multi-exit dataset={self.dataset}", DATASET_PACKAGES[self.dataset])
        if len(self.channels) != len(self.strides):
            raise ValueError(
                f"channels {self.channels} and strides {self.strides} need one entry per exit"
            )
        if len(self.sdn_weights) != len(self.channels):
            raise ValueError(
                f"sdn_weights needs one weight per exit ({len(self.channels)}); "
                f"got {self.sdn_weights}"
            )
        unknown = sorted(set(self.timing.methods) - set(self.methods))
        if unknown:
            raise ValueError(f"timing.methods {unknown} are not among methods {self.methods}")
        check_data(self)  # sizes, and the Fashion-MNIST files (named when missing)


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
        "l2s": {"policy_updates": 10},
        "gain_head": True,
        "gain_updates": 10,
        "budgets": [0.5, 0.6, 0.7],
        "timing": {"repeats": 1, "batch": 200},
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
        "methods": ["uniform", "sdn", "l2w", "l2w-fo", "l2s"],
        "l2w": {"interval": 2},
        "l2s": {"policy_updates": 500},
    },
    # MNIST-1D where exits span a real range: a 4-channel first block (exit 1 about 20 points
    # below the last on validation, measured with uniform training), 60 epochs, 5 paired seeds;
    # uniform, L2W (a meta step every 2 updates: the training-cost target of 3× uniform), its
    # no-allocation ablation and L2S over a β grid (benchmarks/multi_exit.py).
    "benchmark": {
        "dataset": "mnist1d",
        "seeds": [0, 1, 2, 3, 4],
        "mnist1d_per_level": 4750,
        "val_size": 2000,
        "test_size": 8000,
        "train_size": 0,
        "stem": 1,
        "channels": [4, 16, 32, 64],
        "strides": [1, 2, 2, 2],
        "head_width": 8,
        "epochs": 60,
        "methods": ["uniform", "l2w", "l2w-last", "l2s"],
        "l2w": {"interval": 2},
        "l2s": {"betas": [1.0, 4.0, 16.0], "policy_updates": 1000},
        "budgets": [0.05, 0.1, 0.2, 0.3, 0.5],
        "timing": {"methods": []},
    },
    # Fashion-MNIST on one seed: the saturated case (exits within 2 points of each other).
    "fashion": {},
    # Fashion-MNIST, 3 paired seeds, the default methods (the saturated case; needs the IDX files).
    "benchmark-fashion": {"seeds": [0, 1, 2]},
    # Fashion-MNIST's L2W-vs-uniform pairs trained twice as long (24 epochs).
    "benchmark-fashion-long": {
        "seeds": [0, 1, 2],
        "epochs": 24,
        "methods": ["uniform", "l2w"],
        "timing": {"methods": []},
    },
}
