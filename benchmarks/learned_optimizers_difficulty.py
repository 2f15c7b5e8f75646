"""Which properties of a regression function make it hard to optimise? (issue 13)

Issue 13 asks that the learned stop step correlate with difficulty, naming the condition number
of the Hessian and the number of observations N. This measures, independently of any learned
model, what predicts the steps each *hand-designed* optimizer needs on the task's regression
family: per function, the first step at which its exact suboptimality f(θ_t) − f(θ̂) falls
below a tolerance, and the Spearman correlation of that step count with the family's
difficulty measures (``RegressionFamily.difficulty``: condition number of ΦᵀΦ, N, initial
suboptimality).

Protocol: the learning rate of each optimizer is tuned on ``--val`` validation functions
(the task's grid and score: mean log10 suboptimality at ``--horizon`` steps); the correlations
are measured on ``--functions`` other functions, run for ``--steps`` steps (a function that
never reaches the tolerance counts as ``steps + 1``; ties are ranked as ties). Both sets are
drawn here from their own seeds, not the task's test functions.

    .venv/bin/python benchmarks/learned_optimizers_difficulty.py

Writes ``benchmarks/results/learned_optimizers-difficulty.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine_info import machine

from stopwise.stats import spearman
from stopwise.tasks.learned_optimizers import RegressionFamily
from stopwise.tasks.learned_optimizers.config import LearnedOptimizersConfig
from stopwise.tasks.learned_optimizers.data import suboptimality
from stopwise.tasks.learned_optimizers.methods import loss_curves, tune_learning_rates
from stopwise.tasks.learned_optimizers.metrics import log10_gap
from stopwise.tasks.learned_optimizers.models import HandDesigned

ROOT = Path(__file__).resolve().parent


def steps_needed(gaps: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``(n,)`` the first 1-based step whose gap is ≤ ``tolerance`` (``T + 1`` if none);
    ``gaps`` is ``(n, T)``, the gap after steps 1..T."""
    below = gaps <= tolerance
    first = below.double().argmax(dim=1) + 1
    return torch.where(below.any(dim=1), first, torch.full_like(first, gaps.shape[1] + 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--val", type=int, default=500, help="validation functions (tuning)")
    parser.add_argument("--functions", type=int, default=2000, help="functions measured")
    parser.add_argument("--horizon", type=int, default=100, help="steps the lr is tuned for")
    parser.add_argument("--steps", type=int, default=1000, help="steps run when measuring")
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-3, 1e-6, 1e-9])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results/learned_optimizers-difficulty.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    config = LearnedOptimizersConfig()
    family = RegressionFamily()  # the task's regression settings (its defaults)
    val = family.sample(args.val, torch.Generator().manual_seed(2 * args.seed))
    functions = family.sample(args.functions, torch.Generator().manual_seed(2 * args.seed + 1))
    difficulty = {k: v.double().numpy() for k, v in family.difficulty(functions).items()}
    tuning = tune_learning_rates(
        family,
        HandDesigned.KINDS,
        config.learning_rates,
        val,
        [args.horizon],
        lambda gaps, _: log10_gap(gaps),
        measure=suboptimality,
    )
    record = list(range(1, args.steps + 1))
    rows = []
    for kind in HandDesigned.KINDS:
        lr = tuning[kind]["lr"][args.horizon]
        gaps, _ = loss_curves(
            family, HandDesigned(kind, lr), functions, record, measure=suboptimality
        )
        for tolerance in args.tolerances:
            needed = steps_needed(gaps, tolerance)
            reached = needed <= args.steps
            rows.append(
                {
                    "optimizer": kind,
                    "lr": lr,
                    "tolerance": tolerance,
                    "reached": float(reached.double().mean()),
                    "median_steps": float(needed.double().median()),
                    "spearman": {
                        name: spearman(needed.double().numpy(), values)
                        for name, values in difficulty.items()
                    },
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "learned_optimizers_difficulty",
        "machine": machine(),
        "settings": vars(args),
        "family": vars(family),
        "wall_seconds": time.perf_counter() - start,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
