"""Does `shrink` mode turn early stopping into wall-clock savings?

A 16-step residual MLP (width 512) runs a batch of 4096 rows. Each row carries the step at which it
must stop, and a policy reads it, so the mean depth is exactly T/4, T/2 or T. For each depth we time
`run_adaptive` in all three modes and the plain full-depth model (`run_fixed`), interleaved, and
report medians. Goal: shrink time / full time within 20% of mean depth / T.

    .venv/bin/python benchmarks/shrink.py [--threads 1 2] [--repeats 7] [--out benchmarks/results/shrink.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from stopwise.inference import HazardThreshold, run_adaptive, run_fixed
from stopwise.steps import StepModel


class ResidualMLPSteps(StepModel):
    """Step t: h ← h + W2 relu(W1 h); prediction: a linear head. Inputs: (x, stop_step)."""

    def __init__(self, width: int, steps: int, classes: int = 10):
        super().__init__()
        self.max_steps = steps
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
            for _ in range(steps)
        )
        self.head = nn.Linear(width, classes)

    def start(self, inputs):
        x, stop_step = inputs
        return {"h": x, "stop_step": stop_step}

    def advance(self, state, t):
        return {"h": state["h"] + self.blocks[t](state["h"]), "stop_step": state["stop_step"]}

    def predict(self, state, t):
        return self.head(state["h"])

    def features(self, state, t):
        return (t - state["stop_step"]).unsqueeze(-1).float()


class PrescribedStop(nn.Module):
    """Hazard logit +1e4 from the row's prescribed step on, −1e4 before it."""

    def forward(self, features, t):
        return torch.where(features[:, 0] >= 0, 1e4, -1e4)


def stop_steps(batch: int, steps: int, mean_depth: int, generator) -> torch.Tensor:
    """0-based stop steps spread uniformly over 1..2·mean−1 steps used (all T for mean = T)."""
    if mean_depth == steps:
        return torch.full((batch,), steps - 1)
    return torch.randint(0, 2 * mean_depth - 1, (batch,), generator=generator)


def time_calls(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def measure(threads: int, batch: int, width: int, steps: int, repeats: int) -> list[dict]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ResidualMLPSteps(width, steps).eval()
    policy, rule = PrescribedStop(), HazardThreshold(0.5)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, width, generator=generator) * 0.1
    rows = []
    for mean_depth in (steps // 4, steps // 2, steps):
        inputs = (x, stop_steps(batch, steps, mean_depth, generator))
        runs = {
            "full": lambda inputs=inputs: run_fixed(model, inputs),
            **{
                mode: lambda inputs=inputs, mode=mode: run_adaptive(
                    model, policy, inputs, rule, mode
                )
                for mode in ("dense", "masked", "shrink")
            },
        }
        result = runs["shrink"]()
        depth = float(result.steps_used.float().mean())
        for fn in runs.values():  # warm up
            fn()
        times = {name: [] for name in runs}
        for _ in range(repeats):  # interleave, so drift hits every mode alike
            for name, fn in runs.items():
                times[name] += time_calls(fn, 1)
        medians = {name: statistics.median(t) for name, t in times.items()}
        ratio = medians["shrink"] / medians["full"]
        rows.append(
            {
                "threads": threads,
                "mean_depth": depth,
                "depth_fraction": depth / steps,
                "median_seconds": medians,
                "shrink_over_full": ratio,
                "ratio_over_depth_fraction": ratio / (depth / steps),
                "within_20_percent": abs(ratio / (depth / steps) - 1) <= 0.2,
            }
        )
        print(
            f"threads={threads} mean depth {depth:5.2f}/{steps}: "
            + "  ".join(f"{k} {v * 1e3:7.1f} ms" for k, v in medians.items())
            + f"  shrink/full {ratio:.3f} (ideal {depth / steps:.3f})"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "shrink.json"))
    args = parser.parse_args()
    rows = [
        row
        for threads in args.threads
        for row in measure(threads, args.batch, args.width, args.steps, args.repeats)
    ]
    report = {
        "benchmark": "shrink",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
        "setup": {k: getattr(args, k) for k in ("batch", "width", "steps", "repeats")},
        "goal": "shrink/full time within 20% of mean depth / T",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
