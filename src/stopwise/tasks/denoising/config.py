"""The denoising task's typed config and presets.

σ values are on the 0–255 scale. The defaults are the ``quick`` preset. Validation uses the
training noise levels only, so the unseen test levels (65, 75 by default) play no part in any
choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import Config, group, param
from ...datasets import require_packages
from .data import BM3D_MIN_SIDE, DataError, image_sizes
from .models import HEAD_KINDS

__all__ = ["TrainStage", "PolicyStage", "DenoisingConfig", "PRESETS", "BM3D_PROFILES"]

BM3D_PROFILES = ("np", "vn", "high")


@dataclass
class TrainStage:
    """A training stage of the DnCNN: Adam updates and learning rate. The learning rate drops
    ×0.1 once validation PSNR has not improved for ``patience`` evaluations, and the stage ends
    on its best validation checkpoint."""

    steps: int = param(300, ge=1, help="Adam updates")
    lr: float = param(1e-3, gt=0, le=1, help="Adam learning rate")


@dataclass
class PolicyStage:
    """L2S stage II: the stop policy imitates the hard oracle on a pool of training crops."""

    steps: int = param(400, ge=1, help="Adam updates")
    lr: float = param(1e-3, gt=0, le=1, help="Adam learning rate (official: 1e-3)")
    batch: int = param(32, ge=1, help="crops per update")
    pool: int = param(256, ge=2, help="training crops the frozen DnCNN is run on once")
    crop: int = param(48, ge=8, le=512, help="side of those crops")
    width: int = param(16, ge=1, le=256, help="channels of the policy CNN")
    step_bias: bool = param(True, help="a learned bias per exit (the official policy has none)")
    tolerance_db: float = param(
        0.0, ge=0, help="target: first exit within this many dB of the best (0: argmin, official)"
    )


@dataclass
class DenoisingConfig(Config):
    LOCATION_KEYS = ("images_dir",)  # a user's images: the jobs carry their digest (data_params)

    images_dir: str = param(
        "", help="folder with train/ val/ test/ subfolders of PNG/JPEG (default: sample photos)"
    )
    depth: int = param(8, ge=3, le=64, help="convolution layers L of DnCNN (L − 1 exits)")
    width: int = param(32, ge=1, le=512, help="channels C of DnCNN")
    exit_head: str = param(
        "conv", choices=HEAD_KINDS, help="exit head: the official Conv–BN–ReLU–Conv, or Conv(C→1)"
    )
    patch: int = param(40, ge=8, le=512, help="training patch side")
    batch: int = param(32, ge=2, help="training patches per update")
    train_sigmas: list[float] = param(
        [35.0, 45.0, 55.0], gt=0, le=255, min_len=1, help="σ drawn per training patch (/255)"
    )
    test_sigmas: list[float] = param(
        [35.0, 45.0, 55.0, 65.0, 75.0], gt=0, le=255, min_len=1, help="test noise levels (/255)"
    )
    test_crop: int = param(
        128, ge=16, help="side of the centre crop of each test image (BM3D needs >= 16)"
    )
    test_images: int = param(0, ge=0, help="use only the first N test images (0: all)")
    val_crop: int = param(64, ge=16, help="side of the validation tiles (BM3D needs >= 16)")
    val_tiles: int = param(6, ge=1, help="validation tiles per validation image (at most)")
    precision: str = param(
        "bfloat16", choices=("float32", "bfloat16"), help="DnCNN arithmetic (autocast)"
    )
    channels_last: bool = param(True, help="NHWC feature maps (faster on CPU)")
    pretrain: TrainStage = group(lambda: TrainStage(steps=300, lr=1e-3))
    finetune: TrainStage = group(lambda: TrainStage(steps=150, lr=3e-4))
    eval_every: int = param(25, ge=1, help="updates between validation evaluations")
    patience: int = param(3, ge=1, help="evaluations without improvement before the LR drop")
    betas: list[float] = param(
        [0.1, 10.0], gt=0, min_len=1, help="stage-I oracle temperatures β (chosen on validation)"
    )
    uniform_candidate: bool = param(
        True, help="the uniform-DS model (β = ∞) is a stage-I candidate too"
    )
    oracle_detached: bool = param(
        True,
        help="stage I's oracle weights detached (L2S Eq. 9); false: back-propagated through, "
        "as the official DnCNN-stop code",
    )
    stage1_criterion: str = param(
        "oracle",
        choices=("oracle", "budget_oracle"),
        help="stage-I choice: validation best-exit PSNR (official) or oracle PSNR over budgets",
    )
    policy: PolicyStage = group(PolicyStage)
    min_exit_frequency: float = param(
        0.001, ge=0, lt=1, help="exits kept: validation stop-target frequency ≥ this (and the last)"
    )
    select_within_db: float = param(
        0.0, ge=0, help="the rule kept: the cheapest within this of the best validation PSNR"
    )
    budget_points: int = param(8, ge=2, le=100, help="budgets on the budget curve")
    curve_validation: str = param(
        "like_test",
        choices=("like_test", "training"),
        help="validation items the budget curves' rules are fitted on: tiles of test_crop's "
        "side under test_sigmas (made like the test items), or the training-σ tiles",
    )
    nlm_h: list[float] = param(
        [0.6, 0.8, 1.0, 1.2], gt=0, min_len=1, help="non-local means h/σ tried on validation"
    )
    bm3d_profiles: list[str] = param(
        ["np"], choices=BM3D_PROFILES, min_len=1, help="BM3D profiles tried on validation"
    )
    grid_image: str = param("", help="test image of the picture grid (default: the first)")
    grid_sigma: float = param(65.0, gt=0, le=255, help="σ of the picture grid")
    timing_repeats: int = param(3, ge=1, le=100, help="interleaved repeats of the CPU timing")
    trained_depths: list[int] = param(
        [],
        ge=3,
        help="also train a plain DnCNN of each of these depths (< depth) with DnCNN's schedule: "
        "the models trained for a fixed depth beside the budget curve",
    )
    gain_head: bool = param(
        False,
        help="also fit a stop head for budgets on DnCNN-stop's frozen model and kept exits "
        "(the score regresses on the gain rate of PSNR per layer; the `policy` stage's settings) "
        "and report its budget curve beside DnCNN-stop's",
    )
    gain_price: float = param(
        0.01, gt=0, le=100, help="the gain head's zero: stop once a layer buys fewer dB than this"
    )

    def check(self) -> None:
        if any(d >= self.depth for d in self.trained_depths):
            raise ValueError(
                f"trained_depths {self.trained_depths} must be below depth={self.depth} "
                "(the depth itself is the DnCNN baseline)"
            )
        if self.grid_sigma not in self.test_sigmas:
            raise ValueError(f"grid_sigma={self.grid_sigma:g} must be one of test_sigmas")
        if self.policy.batch > self.policy.pool:
            raise ValueError(
                f"policy.batch={self.policy.batch} exceeds policy.pool={self.policy.pool}"
            )
        require_packages("denoising", "skimage", "bm3d")  # the sample photos, BM3D
        try:
            sizes = image_sizes(self.images_dir)
        except DataError as error:  # (a message about the folder names it already)
            said = str(error)
            raise ValueError(
                said if said.startswith("images_dir=") else f"images_dir: {said}"
            ) from None
        for split, listed in sizes.items():
            if split == "train":
                least = max(self.patch, self.policy.crop)
                why = (
                    f"a patch or a policy crop (patch={self.patch}, policy.crop={self.policy.crop})"
                )
            else:
                least = max(self.patch, BM3D_MIN_SIDE)
                why = f"a patch or BM3D's {BM3D_MIN_SIDE}×{BM3D_MIN_SIDE} (patch={self.patch})"
            for name, size in listed:
                if min(size) < least:
                    raise ValueError(
                        f"{split} image {name} is {size[0]}×{size[1]}, smaller than {why}"
                    )
        used = [name for name, _ in sizes["test"]][: self.test_images or None]
        if self.grid_image and self.grid_image not in used:
            raise ValueError(f"grid_image={self.grid_image!r} is not one of the test images {used}")


PRESETS: dict[str, dict] = {
    "quick": {},
    "tiny": {
        "depth": 4,
        "width": 8,
        "patch": 16,
        "batch": 8,
        "train_sigmas": [45.0],
        "test_sigmas": [45.0, 65.0],
        "test_crop": 24,
        "test_images": 2,
        "val_crop": 24,
        "val_tiles": 1,
        "pretrain": {"steps": 6},
        "finetune": {"steps": 4},
        "eval_every": 2,
        "policy": {"steps": 6, "batch": 4, "pool": 8, "crop": 16, "width": 4},
        "budget_points": 3,
        "nlm_h": [0.8, 1.0],
        "timing_repeats": 1,
        "gain_head": True,
    },
    "benchmark": {
        "seeds": [0, 1, 2],
        "depth": 12,
        "width": 40,
        "batch": 64,
        "test_crop": 256,
        "val_crop": 128,
        "pretrain": {"steps": 1200},
        "finetune": {"steps": 300},
        "eval_every": 50,
        "policy": {"steps": 600, "pool": 512, "crop": 64},
        "timing_repeats": 3,
    },
    "long": {
        "seeds": [0, 1, 2],
        "depth": 15,
        "width": 48,
        "batch": 64,
        "test_crop": 256,
        "val_crop": 128,
        "pretrain": {"steps": 6000},
        "finetune": {"steps": 1500},
        "eval_every": 200,
        "patience": 4,
        "policy": {"steps": 2000, "pool": 1024, "crop": 64, "width": 32},
        "bm3d_profiles": ["np", "vn"],
        "checkpoint_every": 100,
    },
    "paper": {
        "depth": 20,
        "width": 64,
        "patch": 50,
        "batch": 256,
        "test_crop": 4096,
        "val_crop": 128,
        "precision": "float32",
        "channels_last": False,
        "pretrain": {"steps": 40000, "lr": 1e-3},
        "finetune": {"steps": 40000, "lr": 1e-4},
        "uniform_candidate": False,
        "eval_every": 1000,
        "patience": 5,
        "betas": [0.1],
        "policy": {"steps": 20000, "batch": 16, "pool": 4096, "crop": 128, "width": 64},
        "bm3d_profiles": ["np", "vn"],
    },
}
