"""The toy's typed config and presets."""

from __future__ import annotations

from dataclasses import dataclass

from stopwise.config import Config, distinct, group, param

__all__ = ["ToyConfig", "Stage", "PRESETS"]


@dataclass
class Stage:
    """One training stage: updates, batch and Adam learning rate."""

    steps: int = param(100, ge=1, help="Adam updates")
    batch: int = param(256, ge=1, help="streams per update")
    lr: float = param(1e-2, gt=0, le=1, help="Adam learning rate")


@dataclass
class ToyConfig(Config):
    steps: int = param(12, ge=2, le=1000, help="observations per stream (T)")
    noise_levels: list[float] = param(
        [0.1, 1.0], gt=0, min_len=1, help="σ of the observations, one drawn per stream"
    )
    beta: float = param(0.3, gt=0, help="oracle temperature β of L2S")
    stage1: Stage = group(Stage)
    stage2: Stage = group(lambda: Stage(steps=400, lr=3e-3))
    policy_hidden: list[int] = param([32], ge=1, help="hidden widths of the MLP policy")
    eval_size: int = param(2000, ge=10, help="validation and test streams")
    budgets: list[float] = param(
        [3.0, 6.0],
        ge=1,
        min_len=1,
        check=distinct,
        help="mean-step budgets the table reports (a stream runs at least one step)",
    )
    curve_points: int = param(12, ge=2, le=200, help="budgets on the budget curve")

    def check(self) -> None:
        if max(self.budgets) > self.steps:
            raise ValueError(f"budgets {self.budgets} must not exceed steps={self.steps}")


PRESETS = {
    "quick": {},
    "tiny": {"stage1": {"steps": 20}, "stage2": {"steps": 40}, "eval_size": 500},
}
