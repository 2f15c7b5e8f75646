"""Does the validation score pick good LSTM optimizers? The evidence for meta-training restarts
(issue 13).

With one meta-training run per seed, the optimizer kept at its best validation score still
varies a lot between seeds on the regression family (the `scaled_rmsprop`, s = 1 network of
the benchmark). This script meta-trains the benchmark's network of a family (``--family``:
regression, 500 meta-iterations; quadratic, the paper's network, 300) on each seed given,
exactly as the task does for one restart (64 functions per meta-iteration, horizon 100, unroll
20, Adam 3e-3, scored every 25 on 500 validation functions by minus the mean log10
suboptimality over the 100 steps, the best kept), and measures each kept optimizer on 1,000
development functions drawn for this script only (neither the task's validation nor its test
functions). It reports:

* per seed: the validation score and the development log10 suboptimality at steps 20 and 100;
* the Spearman correlation over seeds between the validation score and those numbers;
* what restarts buy: every set of ``--restarts`` seeds taken as the restarts of one run (all
  subsets, so no grouping is picked), the run with the best validation score kept; the mean and
  the worst over subsets of the kept run's numbers, against a single run (the mean and the worst
  over all seeds).

    nice -n 10 .venv/bin/python benchmarks/learned_optimizers_restarts.py --seeds 10 11 12 13 14 15 16 17 18

Writes ``benchmarks/results/learned_optimizers-restarts-pilot[-quadratic].json`` (``--out`` to
choose); ``--summarise FILE`` recomputes the summary from the runs recorded in an earlier output,
without training, and writes it back to FILE (or to ``--out``).
``--update``, ``--preprocess``, ``--output-scale``, ``--objective`` and ``--unroll`` pilot
variants of the network and its meta-training on the same seeds and functions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from machine_info import machine

from stopwise.stats import spearman
from stopwise.tasks.learned_optimizers import (
    LSTMOptimizerNet,
    QuadraticFamily,
    RegressionFamily,
    meta_train,
)
from stopwise.tasks.learned_optimizers.config import LearnedOptimizersConfig
from stopwise.tasks.learned_optimizers.data import suboptimality
from stopwise.tasks.learned_optimizers.experiment import validation_score
from stopwise.tasks.learned_optimizers.methods import loss_curves, tune_learning_rates
from stopwise.tasks.learned_optimizers.metrics import log10_gap
from stopwise.tasks.learned_optimizers.models import HAND_DESIGNED, HandDesigned

ROOT = Path(__file__).resolve().parent
HORIZON = 100
STEPS = (20, 100)
# family: (the family, the benchmark preset's network for it, its meta-iterations)
FAMILIES = {
    "regression": (RegressionFamily, dict(preprocess=10.0, update="scaled_rmsprop"), 500),
    "quadratic": (QuadraticFamily, dict(preprocess=None, update="additive"), 300),
}


def summarise(runs: list[dict], k: int) -> dict:
    """Spearman(validation score, −development log gap) over the runs, and the development
    numbers of a single run against the best-on-validation of every ``k``-subset of the runs."""
    scores = torch.tensor([r["validation_score"] for r in runs])
    correlation = {
        f"log10_gap_{s}": spearman(scores, -torch.tensor([r[f"log10_gap_{s}"] for r in runs]))
        for s in STEPS
    }
    subsets = list(itertools.combinations(runs, k))
    kept = [max(subset, key=lambda r: r["validation_score"]) for subset in subsets]

    def numbers(rows: list[dict]) -> dict:
        return {
            f"log10_gap_{s}": {
                "mean": statistics.fmean(r[f"log10_gap_{s}"] for r in rows),
                "worst": max(r[f"log10_gap_{s}"] for r in rows),
            }
            for s in STEPS
        }

    return {
        "spearman_validation_score_vs_minus_log10_gap": correlation,
        "restarts": k,
        "subsets": len(subsets),
        "kept": {"single_run": numbers(runs), **({f"best_of_{k}": numbers(kept)} if kept else {})},
    }


def hand_designed(family, validation, development) -> dict:
    """Each hand-designed optimizer with its learning rate tuned on the validation functions
    per horizon (the task's grid and rule), measured on the development functions: the bar the
    LSTM optimizer has to clear, on the same functions as its pilot numbers."""
    grid = LearnedOptimizersConfig().learning_rates
    tuning = tune_learning_rates(
        family, HAND_DESIGNED, grid, validation, list(STEPS), lambda g, f: log10_gap(g),
        measure=suboptimality,
    )  # fmt: skip
    out = {}
    with torch.no_grad():
        for kind in HAND_DESIGNED:
            out[kind] = {}
            for s in STEPS:
                lr = tuning[kind]["lr"][s]
                gaps, _ = loss_curves(
                    family, HandDesigned(kind, lr), development, [s], measure=suboptimality
                )
                out[kind][f"log10_gap_{s}"] = float(log10_gap(gaps).mean())
                out[kind][f"lr_{s}"] = lr
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10, 19)))
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="regression")
    parser.add_argument("--iterations", type=int, help="default: the benchmark preset's")
    parser.add_argument("--summarise", help="an earlier output whose runs to summarise again")
    parser.add_argument(
        "--hand",
        action="store_true",
        help="also the tuned hand-designed optimizers, on the same functions",
    )
    parser.add_argument("--update", choices=LSTMOptimizerNet.UPDATES, help="default: the preset's")
    parser.add_argument("--preprocess", type=float, help="p (0: none); default: the preset's")
    parser.add_argument("--output-scale", type=float, default=1.0)
    parser.add_argument("--objective", choices=("loss", "log_gap"), default="loss")
    parser.add_argument("--unroll", type=int, default=20, help="meta-training window (BPTT)")
    parser.add_argument(
        "--out", help="default: results/learned_optimizers-restarts-pilot…, with --summarise FILE"
    )
    args = parser.parse_args(argv)
    make_family, network, iterations = FAMILIES[args.family]
    network = dict(network)
    if args.update is not None:
        network["update"] = args.update
    if args.preprocess is not None:
        network["preprocess"] = args.preprocess or None
    args.iterations = args.iterations or iterations
    suffix = "" if args.family == "regression" else f"-{args.family}"
    default = args.summarise or ROOT / f"results/learned_optimizers-restarts-pilot{suffix}.json"
    args.out = args.out or str(default)
    torch.set_num_threads(1)
    family = make_family()
    validation = family.sample(500, torch.Generator().manual_seed(777))
    development = family.sample(1000, torch.Generator().manual_seed(424242))
    start, runs = time.perf_counter(), []
    if args.summarise:
        earlier = json.loads(Path(args.summarise).read_text())
        earlier.update(summarise(earlier["runs"], args.restarts))
        Path(args.out).write_text(json.dumps(earlier, indent=1) + "\n")
        return 0
    for seed in args.seeds:
        began = time.process_time()
        torch.manual_seed(seed)
        net = LSTMOptimizerNet(
            20, 2, network["preprocess"], args.output_scale, update=network["update"]
        )
        metrics = meta_train(
            net, family, args.iterations, horizon=HORIZON, unroll=args.unroll, functions=64,
            lr=3e-3, seed=seed, objective=args.objective,
            validate=lambda net=net: validation_score(family, net, validation, HORIZON),
            validate_every=25,
        )  # fmt: skip
        with torch.no_grad():
            gaps, _ = loss_curves(family, net, development, list(STEPS), measure=suboptimality)
        row = {
            "seed": seed,
            "selected_iteration": metrics["selected_iteration"],
            "validation_score": metrics["selected_score"],
            **{
                f"log10_gap_{s}": float(g)
                for s, g in zip(STEPS, log10_gap(gaps).mean(0), strict=True)
            },
            "cpu_seconds": time.process_time() - began,
        }
        runs.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "benchmark": "learned_optimizers_restarts",
        "family": args.family,
        "machine": machine(),
        "threads": 1,
        "iterations": args.iterations,
        "network": {**network, "output_scale": args.output_scale},
        "objective": args.objective,
        "unroll": args.unroll,
        "validation_functions": 500,
        "development_functions": 1000,
        "wall_seconds": time.perf_counter() - start,
        "runs": runs,
        **summarise(runs, args.restarts),
    }
    if args.hand:
        result["hand_designed"] = hand_designed(family, validation, development)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(
        json.dumps({k: result[k] for k in ("spearman_validation_score_vs_minus_log10_gap", "kept")})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
