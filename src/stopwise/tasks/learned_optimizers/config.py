"""The learned-optimizers config (typed, ranges declared) and its presets."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...config import Config, distinct, group, param
from ...datasets import DATASET_PACKAGES, require_packages
from .data import IMAGE_COUNTS
from .models import GRAD_NORM_FLOOR, HAND_DESIGNED, IMPROVEMENT_FLOOR, LSTMOptimizerNet

__all__ = [
    "LearnedOptimizersConfig",
    "MetaSettings",
    "RegressionSettings",
    "QuadraticSettings",
    "MLPSettings",
    "ACTSettings",
    "L2SSettings",
    "FAMILIES",
    "STOP_FAMILIES",
    "MLP_VARIANTS",
    "PRESETS",
]

FAMILIES = ("regression", "quadratic", "mlp")
STOP_FAMILIES = ("regression", "quadratic")
# The paper's generalisation tests of the MNIST optimizer: twice the steps, 40 hidden units,
# two hidden layers, ReLU activations.
MLP_VARIANTS = ("steps200", "hidden40", "layers2", "relu")


@dataclass
class MetaSettings:
    """Meta-training of one family's LSTM optimizer (and ACT optimizer)."""

    iterations: int = param(500, ge=1, help="meta-iterations (function batches), LSTM optimizer")
    functions: int = param(64, ge=1, help="functions per meta-iteration")
    lr: float = param(3e-3, gt=0, le=1, help="meta learning rate (Adam)")
    preprocess: float = param(10.0, ge=0, help="p of the log/sign preprocessing; 0: raw gradient")
    output_scale: float = param(0.1, gt=0, help="the LSTM's output is multiplied by this")
    select_every: int = param(
        25,
        ge=0,
        help="meta-iterations between scores of the LSTM optimizer on the validation functions "
        "(mean log suboptimality over the horizon; mean loss where the optimum is unknown); the "
        "best is kept, as the official code keeps the best on evaluation. 0: keep the last",
    )
    restarts: int = param(
        1,
        ge=1,
        le=20,
        help="independent meta-training runs per seed, each from its own initial weights and "
        "function stream; the one with the best validation score is kept (1: a single run, as "
        "the paper)",
    )
    update: str = param(
        "additive",
        choices=LSTMOptimizerNet.UPDATES,
        help="additive: the paper's update; scaled_gradient / scaled_rmsprop: the output is a "
        "learned log step size on the gradient / on RMSprop's direction (not the paper's)",
    )


@dataclass
class RegressionSettings(MetaSettings):
    """The thesis's 2-parameter Bayesian linear regression (§5.1)."""

    obs_min: int = param(5, ge=2, help="fewest observations N of a function")
    obs_max: int = param(50, ge=2, help="most observations N of a function")
    scale_min: float = param(0.1, gt=0, help="smallest input range a (x ~ U(-a, a))")
    scale_max: float = param(2.0, gt=0, help="largest input range a")
    noise_precision_min: float = param(1.0, gt=0, help="smallest noise precision β")
    noise_precision_max: float = param(25.0, gt=0, help="largest noise precision β")
    prior_precision: float = param(1.0, gt=0, help="α of the prior θ* ~ N(0, α⁻¹ I)")

    def check(self) -> None:
        for low, high in (
            ("obs_min", "obs_max"),
            ("scale_min", "scale_max"),
            ("noise_precision_min", "noise_precision_max"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"regression.{low} must not exceed regression.{high}")


@dataclass
class QuadraticSettings(MetaSettings):
    """10-D quadratics ‖Wθ − y‖² (the paper: no preprocessing, output scale 1)."""

    dim: int = param(10, ge=1, le=1000, help="dimension d of θ")
    iterations: int = param(300, ge=1, help="meta-iterations (function batches), LSTM optimizer")
    preprocess: float = param(0.0, ge=0, help="p of the log/sign preprocessing; 0: raw gradient")
    output_scale: float = param(1.0, gt=0, help="the LSTM's output is multiplied by this")


@dataclass
class MLPSettings(MetaSettings):
    """The MLP classifier (the paper's MNIST experiment) and its generalisation variants."""

    dataset: str = param("digits", choices=("digits", "mnist1d"), help="images")
    train_size: int = param(1200, ge=10, help="training images (the rest are test images)")
    hidden: int = param(20, ge=1, help="hidden units")
    batch: int = param(128, ge=1, help="minibatch per optimizer step")
    functions: int = param(4, ge=1, help="functions (training runs) per meta-iteration")
    iterations: int = param(100, ge=1, help="meta-iterations")
    lr: float = param(1e-2, gt=0, le=1, help="meta learning rate (Adam)")
    validation_functions: int = param(20, ge=1, help="runs per learning rate when tuning")
    test_functions: int = param(100, ge=1, help="held-out runs per optimizer")
    variants: list[str] = param(
        list(MLP_VARIANTS), choices=MLP_VARIANTS, help="generalisation tests to run"
    )

    def check(self) -> None:
        images = IMAGE_COUNTS[self.dataset]
        if self.train_size >= images:
            raise ValueError(
                f"mlp.train_size={self.train_size} leaves no test image: {self.dataset} has "
                f"{images} images"
            )


@dataclass
class ACTSettings:
    """The ACT optimizer (Sander 2017): halting head and random-horizon bound."""

    prior_p: float = param(0.1, gt=0, lt=1, help="p of the geometric prior p(t) = p(1-p)^t")
    kl_weight: float = param(1.0, ge=0, help="weight β of the KL term (1: the bound)")
    iterations: int = param(200, ge=1, help="meta-iterations of the ACT optimizer")
    init: str = param(
        "lstm",
        choices=("lstm", "scratch"),
        help="start from the meta-trained LSTM optimizer's weights, or from scratch",
    )
    step_cost: float = param(
        0.0,
        ge=0,
        help="λ of a price per step in the bound, ℓ_t = N·(f_t + λ(t+1)) (0: the thesis, where "
        "only the prior favours early stops)",
    )
    train: str = param(
        "joint",
        choices=("joint", "halting"),
        help="joint: the update network and the halting head learn the bound together (the "
        "thesis); halting: the meta-trained LSTM optimizer stays frozen and only the halting "
        "head learns it (two-stage; needs init=lstm)",
    )


@dataclass
class L2SSettings:
    """L2S stage II on the trained LSTM optimizer: a stop policy imitating the oracle."""

    step_cost: float = param(1e-3, ge=0, help="λ of the cost-aware oracle argmin_t f_t + λ(t+1)")
    beta: float = param(1e-3, gt=0, help="oracle temperature β (soft oracle)")
    hard: bool = param(False, help="imitate the hard (argmin) oracle instead of the soft one")
    train_functions: int = param(2000, ge=1, help="training functions (trajectories)")
    updates: int = param(500, ge=1, help="Adam updates of the policy")
    batch: int = param(256, ge=1, help="functions per update")
    lr: float = param(3e-3, gt=0, le=1, help="Adam learning rate")
    hidden: list[int] = param([16, 16], ge=1, min_len=1, help="hidden widths of the policy MLP")
    objective: str = param(
        "oracle",
        choices=["oracle", "gain"],
        help="imitate the (cost-aware) oracle on f (L2S), or regress the score on the gain "
        "rate of log10 suboptimality (stopwise.objectives.gain_loss; not in the paper)",
    )
    gain_price: float = param(
        0.1,
        gt=0,
        le=100,
        help="objective=gain: the rule λ_t ≥ 1/2 stops once going on can lower log10 "
        "suboptimality by less than this per step",
    )


@dataclass
class LearnedOptimizersConfig(Config):
    families: list[str] = param(
        list(FAMILIES), choices=FAMILIES, min_len=1, check=distinct,
        help="function families to run",
    )  # fmt: skip
    stop_families: list[str] = param(
        list(STOP_FAMILIES), choices=STOP_FAMILIES, check=distinct,
        help="families that also get ACT and L2S-stop",
    )  # fmt: skip
    horizon: int = param(100, ge=1, le=10000, help="optimizer steps per function (T)")
    unroll: int = param(20, ge=1, help="truncation of meta-training (steps per window)")
    hidden: int = param(20, ge=1, help="LSTM units per layer")
    layers: int = param(2, ge=1, le=4, help="LSTM layers")
    report_steps: list[int] = param(
        [20, 100], ge=1, min_len=1, check=distinct,
        help="steps inside the horizon that the table compares",
    )  # fmt: skip
    beyond: list[int] = param(
        [200, 1000], ge=1, check=distinct,
        help="steps beyond the horizon (regression and quadratics)",
    )  # fmt: skip
    validation_functions: int = param(500, ge=10, help="validation functions per family")
    test_functions: int = param(1000, ge=10, help="held-out test functions per family")
    optimizers: list[str] = param(
        list(HAND_DESIGNED), choices=HAND_DESIGNED, min_len=1, help="hand-designed optimizers"
    )
    learning_rates: list[float] = param(
        [10 ** (k / 2) for k in range(-8, 3)],
        gt=0,
        min_len=1,
        help="learning-rate grid tuned on validation per horizon",
    )
    grad_norm_tolerances: list[float] = param(
        [10.0**-k for k in range(1, 9)], ge=0, min_len=1, help="stop when ‖g‖ < tol"
    )
    improvement_tolerances: list[float] = param(
        [10.0**-k for k in range(1, 11)], ge=0, min_len=1, help="stop when f_{t-1} − f_t < tol"
    )
    step_costs: list[float] = param(
        [1e-5, 1e-4, 1e-3, 1e-2], ge=0, min_len=1, help="λ of the trade-off loss + λ·steps"
    )
    curve_points: int = param(12, ge=2, le=200, help="budgets on each budget curve")
    trained_depths: list[int] = param(
        [],
        ge=1,
        help="fixed depths (≤ horizon) for which an LSTM optimizer is meta-trained with that "
        "horizon: the budget curves' trained-for-that-depth reference (stop families)",
    )
    nll_tolerance: float = param(
        0.05, ge=0, help="'reaches the LSTM's loss': mean NLL within this fraction of it"
    )
    regression: RegressionSettings = group(RegressionSettings)
    quadratic: QuadraticSettings = group(QuadraticSettings)
    mlp: MLPSettings = group(MLPSettings)
    act: ACTSettings = group(ACTSettings)
    l2s: L2SSettings = group(L2SSettings)

    def check(self) -> None:
        if self.unroll > self.horizon:
            raise ValueError(
                f"unroll={self.unroll} is longer than horizon={self.horizon}: a truncation "
                "window cannot exceed the steps it truncates"
            )
        if max(self.report_steps) > self.horizon:
            raise ValueError(f"report_steps {self.report_steps} must not exceed horizon")
        if self.beyond and min(self.beyond) <= self.horizon:
            raise ValueError(f"beyond {self.beyond}: every step must lie past horizon")
        if self.trained_depths and max(self.trained_depths) > self.horizon:
            raise ValueError(f"trained_depths {self.trained_depths} must not exceed horizon")
        if self.act.train == "halting" and self.act.init != "lstm":
            raise ValueError(
                "act.train=halting trains only the halting head: it needs act.init=lstm"
            )
        # The rules read clamped features (models.py): a tolerance below the floor never fires.
        floors = {
            "grad_norm_tolerances": GRAD_NORM_FLOOR,
            "improvement_tolerances": IMPROVEMENT_FLOOR,
        }
        for key, floor in floors.items():
            tiny = [tol for tol in getattr(self, key) if 0 < tol < floor]
            if tiny:
                raise ValueError(
                    f"{key} {tiny}: a tolerance must be 0 (never stop) or >= {floor:g}"
                )
        if "mlp" in self.families:
            dataset = self.mlp.dataset
            require_packages(f"the mlp family on mlp.dataset={dataset}", DATASET_PACKAGES[dataset])
        missing = sorted(set(self.stop_families) - set(self.families))
        if missing:
            kept = [f for f in self.stop_families if f in self.families]
            raise ValueError(
                f"stop_families {missing} are not in families {self.families}: set "
                f"stop_families with families (here stop_families={json.dumps(kept)})"
            )


_TINY_META = {"iterations": 3, "functions": 8, "select_every": 1}

PRESETS = {
    # Seconds: every family and method runs end to end on a handful of functions.
    "tiny": {
        "horizon": 10,
        "unroll": 5,
        "report_steps": [5, 10],
        "beyond": [20],
        "validation_functions": 20,
        "test_functions": 30,
        "learning_rates": [0.01, 0.1],
        "optimizers": ["sgd", "adam"],
        "curve_points": 4,
        "trained_depths": [5, 10],  # 10: the horizon, where it must equal the LSTM optimizer
        "regression": {**_TINY_META, "restarts": 2},
        "quadratic": _TINY_META,
        "mlp": {
            **_TINY_META,
            "functions": 2,
            "train_size": 300,
            "batch": 32,
            "validation_functions": 2,
            "test_functions": 3,
            "variants": ["hidden40"],
        },
        "act": {"iterations": 3},
        "l2s": {"train_functions": 40, "updates": 6, "batch": 20},
    },
    # Minutes: one seed; regression with every method, quadratics and the MLP shorter.
    "quick": {
        "stop_families": ["regression"],
        "validation_functions": 300,
        "trained_depths": [10, 25],
        "regression": {"iterations": 150},
        "quadratic": {"iterations": 100},
        "mlp": {"iterations": 20, "test_functions": 20, "validation_functions": 5},
        "act": {"iterations": 100},
        "l2s": {"updates": 300},
    },
    # The benchmark: three meta-training seeds, every family at full size.
    # Regression departs from the paper's LSTM optimizer (docs/learned_optimizers.md): the
    # output is a learned log step size on RMSprop's direction (s = 1, chosen on validation),
    # and three meta-training restarts per seed, the best on validation kept (one restart's
    # optimizer varied by 3 decades at step 20 between seeds). The paper's network:
    # --set regression.update=additive --set regression.output_scale=0.1 --set regression.restarts=1
    # The MLP's LSTM optimizer meta-trains for 150 iterations, not 100: its validation score was
    # still rising at 100 on development seeds (learned_optimizers-mlp-iterations-pilot.json).
    "benchmark": {
        "seeds": [0, 1, 2],
        "trained_depths": [5, 10, 25, 50],
        "regression": {"restarts": 3, "update": "scaled_rmsprop", "output_scale": 1.0},
        "mlp": {"iterations": 150},
    },
}
