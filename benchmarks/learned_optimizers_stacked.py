"""Meta-training restarts one after another against side by side (issue 13's CPU budget).

The benchmark preset meta-trains the regression family's LSTM optimizer three times per seed
(restarts) and keeps the best on validation. A 2-D regression function's optimizer step costs
mostly per operation, not per row, so `meta_train_restarts` runs the restarts as one stacked
network. This script times both on the preset's settings (64 functions, horizon 100, unroll 20,
Adam 3e-3, `scaled_rmsprop` s = 1, scored every 25 meta-iterations on 500 validation functions),
alternating the two ``--repeats`` times in one process, one thread, and reports the medians of
the process CPU seconds, their ratio and how far the trained weights of the two differ.

    nice -n 10 .venv/bin/python benchmarks/learned_optimizers_stacked.py --iterations 50

Writes ``benchmarks/results/learned_optimizers-stacked-restarts.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine_info import machine

from stopwise.tasks.learned_optimizers import (
    LSTMOptimizerNet,
    RegressionFamily,
    meta_train,
    meta_train_restarts,
)
from stopwise.tasks.learned_optimizers.experiment import validation_score

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "learned_optimizers-stacked-restarts.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    family = RegressionFamily()
    val = family.sample(500, torch.Generator().manual_seed(12345))
    horizon = 100
    schedule = dict(horizon=horizon, unroll=20, functions=64, lr=3e-3, validate_every=25)
    seeds = [100 + r for r in range(args.restarts)]

    def fresh() -> list[LSTMOptimizerNet]:
        torch.manual_seed(0)
        return [LSTMOptimizerNet(update="scaled_rmsprop", output_scale=1.0)
                for _ in range(args.restarts)]  # fmt: skip

    def one_after_another() -> list[LSTMOptimizerNet]:
        nets = fresh()
        for net, seed in zip(nets, seeds, strict=True):
            meta_train(net, family, args.iterations, seed=seed,
                       validate=lambda net=net: validation_score(family, net, val, horizon),
                       **schedule)  # fmt: skip
        return nets

    def side_by_side() -> list[LSTMOptimizerNet]:
        nets = fresh()
        meta_train_restarts(nets, family, args.iterations, seeds=seeds,
                            validate=lambda net: validation_score(family, net, val, horizon),
                            **schedule)  # fmt: skip
        return nets

    seconds: dict[str, list[float]] = {"one_after_another": [], "side_by_side": []}
    trained = {}
    for _ in range(args.repeats):
        for name, run in (("one_after_another", one_after_another), ("side_by_side", side_by_side)):
            start = time.process_time()
            trained[name] = run()
            seconds[name].append(time.process_time() - start)
    difference = max(
        (a.state_dict()[k] - b.state_dict()[k]).abs().max().item()
        for a, b in zip(trained["one_after_another"], trained["side_by_side"], strict=True)
        for k in a.state_dict()
    )
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    out = {
        "benchmark": "learned_optimizers_stacked",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "note": args.note,
        "settings": {
            "iterations": args.iterations,
            "restarts": args.restarts,
            "repeats": args.repeats,
            "validation_functions": 500,
            **schedule,
        },  # fmt: skip
        "cpu_seconds": seconds,
        "median_cpu_seconds": medians,
        "speedup": medians["one_after_another"] / medians["side_by_side"],
        "max_weight_difference": difference,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(
        json.dumps({k: out[k] for k in ("median_cpu_seconds", "speedup", "max_weight_difference")})
    )


if __name__ == "__main__":
    main()
