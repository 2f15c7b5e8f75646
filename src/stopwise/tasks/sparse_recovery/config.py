"""The sparse-recovery config (every key typed, ranges declared) and its presets."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import Config, distinct, group, param

__all__ = ["SparseRecoveryConfig", "PRESETS"]


@dataclass
class Problem:
    """The L2S §5.1 protocol: y = A x* + ε (see data.py)."""

    m: int = param(250, ge=1, help="measurements (rows of A)")
    n: int = param(500, ge=1, help="signal length (columns of A)")
    condition: float = param(5.0, ge=1, help="condition number of A before column normalisation")
    sparsity: float = param(0.1, gt=0, le=1, help="Bernoulli support probability of x*")
    # Bounded so the noise stays finite (−1000 dB overflowed to inf: "diverged", exit 3).
    snrs: list[float] = param(
        [20.0, 30.0, 40.0], ge=-60, le=200, min_len=1, check=distinct, help="SNR levels (dB)"
    )
    per_snr: int = param(1000, ge=1, help="validation and test samples per SNR")
    steps: int = param(20, ge=2, help="T, layers of the learned models")

    def check(self) -> None:
        if self.m > self.n:
            raise ValueError(f"need problem.m <= problem.n; got m={self.m}, n={self.n}")
        if self.sparsity * self.n < 1:  # else most signals are all zero and NMSE is undefined
            raise ValueError(
                f"problem.sparsity × problem.n must be >= 1 (at least one expected nonzero entry "
                f"per signal); got {self.sparsity:g} × {self.n} = {self.sparsity * self.n:g}"
            )
        # NMSE over an SNR group is undefined when all its signals are zero: refuse sizes where
        # that is not negligible (each of per_snr signals is zero with probability (1 − p)^n).
        all_zero = (1 - self.sparsity) ** (self.n * self.per_snr)
        if all_zero >= 1e-6:
            raise ValueError(
                f"problem.per_snr={self.per_snr} is too small for problem.n={self.n} and "
                f"problem.sparsity={self.sparsity:g}: every signal of an SNR group is zero (NMSE "
                f"undefined) with probability {all_zero:.2g}; use more signals or a denser x*"
            )


@dataclass
class Classical:
    """ISTA and FISTA, (L, λ) tuned per iteration budget on validation around the paper's."""

    budgets: list[int] = param([20, 100], ge=1, min_len=1, check=distinct, help="iteration budgets")
    lambda_factors: list[float] = param(
        [0.8, 1.25], gt=0, check=distinct, help="λ candidates × the paper's λ"
    )
    L_factors: list[float] = param(
        [0.9, 1.1], gt=0, check=distinct, help="L candidates × the paper's L"
    )


@dataclass
class Lista:
    """LISTA, deep supervision from the tuned ISTA (Adam, cosine decay)."""

    steps: int = param(600, ge=1, help="Adam updates")
    batch: int = param(128, ge=1, help="samples per update")
    lr: float = param(1e-3, gt=0, help="initial learning rate")


@dataclass
class Stage1:
    """LISTA-stop stage I: LISTA under the oracle q* = softmax(−ℓ/β)."""

    init: str = param("lista", choices=("lista", "ista"), help="start from trained LISTA or ISTA")
    steps: int = param(200, ge=1, help="Adam updates")
    batch: int = param(256, ge=1, help="samples per update")
    lr: float = param(2e-4, gt=0, help="initial learning rate")
    weight_decay: float = param(1e-4, ge=0, help="Adam weight decay")


@dataclass
class Stage2:
    """Stage II of both stop models (the model frozen): the policy settings validation chooses
    among (every objective × penalty × hidden width × length), trained on one cached pool."""

    pool: int = param(20000, ge=1, help="training samples whose trajectories stage II replays")
    steps: list[int] = param(
        [1000], ge=1, min_len=1, check=distinct, help="Adam updates (candidates)"
    )
    batch: int = param(256, ge=1, help="pool samples per update")
    lr: float = param(3e-3, gt=0, help="initial learning rate")
    objectives: list[str] = param(
        ["gain", "l2s"],
        choices=("gain", "l2s"),
        min_len=1,
        check=distinct,
        help="l2s: imitate the (cost-aware) oracle; gain: regress −log of the gain rate",
    )
    penalties: list[float] = param(
        [0.01, 0.03, 0.1],
        ge=0,
        check=distinct,
        help="step penalties λ of the l2s candidates (λ = 0 always)",
    )
    oracle: str = param("hard", choices=("hard", "soft"), help="imitate argmin_t ℓ_t, or KL to q*")
    hidden: list[int] = param(
        [32], ge=1, min_len=1, check=distinct, help="hidden widths (candidates)"
    )
    gain_floor: float = param(1e-6, gt=0, help="floor of the gain rate in the gain objective")


@dataclass
class Alista:
    """ALISTA with support selection (analytic W; γ_t, θ_t learned), deep supervision."""

    steps: int = param(100, ge=1, help="Adam updates")
    batch: int = param(256, ge=1, help="samples per update")
    lr: float = param(1e-2, gt=0, help="initial learning rate")
    gamma: float = param(0.6, gt=0, help="initial step size γ_t")
    theta: float = param(0.1, ge=0, help="initial threshold θ_t")
    ss_increment: float = param(0.012, ge=0, help="support selection: fraction added per layer")
    ss_max: float = param(0.13, ge=0, le=1, help="support selection: largest fraction")


@dataclass
class Cpss:
    """LISTA-CP-SS-stop: LISTA-CP with support selection started at the trained ALISTA."""

    stage1_steps: int = param(900, ge=1, help="stage I Adam updates")
    batch: int = param(256, ge=1, help="stage I samples per update")
    lr: float = param(1e-3, gt=0, help="stage I initial learning rate")
    weight_decay: float = param(0.0, ge=0, help="stage I Adam weight decay")


@dataclass
class SparseRecoveryConfig(Config):
    problem: Problem = group(Problem)
    classical: Classical = group(Classical)
    classical_only: bool = param(False, help="only the ISTA and FISTA rows")
    lista: Lista = group(Lista)
    beta: float = param(0.28, gt=0, help="oracle temperature β (stage I and exit pruning)")
    stage1_uniform: float = param(
        0.0,
        ge=0,
        le=1,
        help="share of deep supervision's uniform layer weights mixed into stage I's oracle "
        "weights, both stop models (0: the paper's stage I)",
    )
    stage1: Stage1 = group(Stage1)
    prune_mass: float = param(1e-3, ge=0, lt=1, help="prune exits of less mean oracle mass")
    stage2: Stage2 = group(Stage2)
    alista: Alista = group(Alista)
    cpss: Cpss = group(Cpss)
    lr_final: float = param(0.05, gt=0, le=1, help="final fraction of each learning rate")
    threshold_rule: str = param(
        "best",
        choices=("hazard", "cumulative", "best"),
        help="threshold kind of L2S policies; best: chosen on validation",
    )
    threshold_row: str = param(
        "match-full",
        choices=("match-full", "best"),
        help="budget of the threshold row: the cheapest within match_tolerance of full depth "
        "on validation, or the least validation NMSE",
    )
    match_tolerance: float = param(0.1, ge=0, help="dB from full depth that counts as reached")
    match_confidence: float = param(
        0.95,
        ge=0.5,
        lt=1,
        help="one-sided confidence, over the validation rows, that the threshold row is within "
        "match_tolerance of full depth (0.5: the validation point estimate)",
    )
    budget_points: int = param(39, ge=2, help="mean-step budgets tried in calibration and curves")
    timing_repeats: int = param(3, ge=0, help="repeats of the adaptive vs full-depth timing")
    eval_chunk: int = param(1000, ge=1, help="rows per evaluation chunk")
    log_every: int = param(25, ge=1, help="training steps between metric records")

    def check(self) -> None:
        if self.stage2.pool < self.stage2.batch:
            raise ValueError(
                f"stage2.pool={self.stage2.pool} must be >= stage2.batch={self.stage2.batch} "
                "(a stage-II batch is drawn from the pool)"
            )
        if self.problem.steps not in self.classical.budgets:
            raise ValueError(
                f"classical.budgets {self.classical.budgets} must include "
                f"problem.steps={self.problem.steps} (LISTA starts from ISTA tuned for it)"
            )


# The wider (L, λ) search of the benchmark and paper presets.
WIDE_CLASSICAL = {"lambda_factors": [0.7, 0.85, 1.2, 1.4], "L_factors": [0.85, 0.93, 1.08, 1.17]}

PRESETS = {
    # seconds: a small problem for the tests
    "tiny": {
        "problem": {"m": 50, "n": 100, "per_snr": 200, "steps": 8},
        "classical": {"budgets": [8, 40]},
        "lista": {"steps": 150, "batch": 64, "lr": 0.003},
        "stage1": {"steps": 60, "batch": 64, "lr": 0.001},
        "stage2": {"pool": 2000, "steps": [80], "batch": 64, "hidden": [8]},
        "alista": {"steps": 40, "batch": 64},
        "cpss": {"stage1_steps": 60, "batch": 64},
        "budget_points": 15,
        "timing_repeats": 1,
        "log_every": 10,
    },
    # `make demo`: the whole table in about five minutes on one CPU thread (LISTA rows shortened;
    # LISTA-CP-SS-stop stage I 900 updates, the default)
    "quick": {},
    # benchmarks/sparse_recovery.py: three seeds, ~20 CPU-minutes each (shortened to fit a shared
    # machine: LISTA 2k updates, LISTA-CP-SS stage I 3k). Stage I mixes in 30% of deep
    # supervision (not the paper's; chosen on validation, docs/sparse_recovery.md).
    "benchmark": {
        "seeds": [0, 1, 2],
        "stage1_uniform": 0.3,
        "classical": WIDE_CLASSICAL,
        "lista": {"steps": 2000},
        "stage1": {"steps": 1000},
        "stage2": {
            "pool": 40000,
            "steps": [1000, 3000],
            "hidden": [16, 64],
            "penalties": [0.003, 0.01, 0.03, 0.1],
        },
        "alista": {"steps": 300},
        "cpss": {"stage1_steps": 3000},
    },
    # the paper's schedule (L2S §5.1; about 11 hours of one CPU thread for stage I alone):
    # constant learning rates, stage I from ISTA; LISTA's learning rate is not given, we use 1e-4
    "paper": {
        "classical": WIDE_CLASSICAL,
        "lista": {"steps": 100000, "batch": 512, "lr": 1e-4},
        "stage1": {"init": "ista", "steps": 50000, "batch": 1024, "lr": 1e-4},
        "stage2": {"pool": 100000, "steps": [40000], "batch": 256, "lr": 1e-3},
        "alista": {"steps": 300},
        "cpss": {"stage1_steps": 12000},
        "lr_final": 1.0,
        "checkpoint_every": 1000,
    },
}
