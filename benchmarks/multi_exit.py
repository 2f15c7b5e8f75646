"""Multi-exit benchmark: L2W against uniform training where the exits span a real range.

    .venv/bin/python benchmarks/multi_exit.py                        # MNIST-1D `benchmark`
    .venv/bin/python benchmarks/multi_exit.py --set methods=uniform,l2w   # a subset first
    .venv/bin/python benchmarks/multi_exit.py --preset benchmark-fashion  # the saturated case
    .venv/bin/python benchmarks/multi_exit.py --preset quick --name multi_exit-quick-gain
        --set seeds=0,1,2 --set gain_head=true         # (one line) gain heads, quick MNIST-1D

The `benchmark` preset: MNIST-1D at four noise levels (9,000 train / 2,000 validation / 8,000
test), a 4-exit CNN whose 4-channel first block puts exit 1 about 20 points below the last, 60
epochs, 5 paired seeds (same initial weights and batch order per seed); uniform training, L2W,
L2W without meta-data allocation (meta loss at the last exit) and L2S over a β grid with β chosen
per budget on validation (uniform training is β → ∞). One process, one thread (``--set
workers=2`` on an idle machine). The run directory (``runs/multi-exit-PRESET``) resumes where it
stopped; ``--set reuse_from=DIR`` takes finished jobs with identical settings from another run.

Targets (issue 12), judged by the 95% interval over seeds (one seed: its value): L2W − uniform
≥ +1.0 accuracy point at the two lowest budgets (the paired interval's bottom at least +1.0;
until 2026-12-05 the mean at least +1.0 with the bottom above zero); L2W's training CPU time
≤ 3× uniform's (the interval's top; until 2026-12-05 the mean).

Writes ``benchmarks/results/multi_exit-mnist1d.json`` (``multi_exit.json`` for
``benchmark-fashion``, ``multi_exit-<preset>.json`` otherwise): machine, threads, date, load,
wall and CPU time, every paired difference, the tables; figures go to the folder of that name.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from machine_info import add_results_option, machine, verdict

from stopwise.experiments import run_experiment
from stopwise.reporting import format_number
from stopwise.stats import format_interval, interval_or_mean, mean_interval

RESULT_NAMES = {
    "benchmark": "multi_exit-mnist1d",
    "benchmark-fashion": "multi_exit",
    "benchmark-fashion-long": "multi_exit-benchmark-long",
}
TARGETS = {"l2w_gain_points": 1.0, "low_budgets": 2, "l2w_cost_ratio": 3.0}


def in_points(difference: dict | None) -> dict | None:
    """A paired difference (fractions) in accuracy points."""
    if difference is None:
        return None
    points = {
        k: None if difference[k] is None else 100 * difference[k]
        for k in ("mean", "sd", "lo", "hi")
    }
    per_seed = {s: 100 * v for s, v in difference["per_seed"].items()}
    return {**points, "n": difference["n"], "per_seed": per_seed}


def gain_target_met(difference: dict | None) -> bool | None:
    """L2W − uniform (points, paired over seeds) ≥ the target: the 95% interval's bottom (one
    seed: its difference); None where there is no difference."""
    if difference is None:
        return None
    return bool(interval_or_mean(difference)[0] >= TARGETS["l2w_gain_points"])


def cost_target_met(ratio: dict | None) -> bool | None:
    """L2W's training CPU time over uniform's, per seed, ≤ the target: the 95% interval's top
    over seeds (one seed: its ratio); None without a ratio."""
    if not ratio or not ratio.get("per_seed"):
        return None
    interval = mean_interval(list(ratio["per_seed"].values()))
    return bool(interval_or_mean(interval)[1] <= TARGETS["l2w_cost_ratio"])


def job_times(out: Path) -> dict:
    """Wall and CPU seconds of every finished job in the run directory, and their sums."""
    jobs = {}
    for path in sorted((out / "jobs").glob("*.json")):
        data = json.loads(path.read_text())
        jobs[data["id"]] = {
            "seconds": data["seconds"],
            "cpu_seconds": data["cpu_seconds"],
            "resumed": data.get("resumed", False),
            "reused_from": data.get("reused_from"),
        }
    return {
        "jobs": jobs,
        "seconds": sum(j["seconds"] for j in jobs.values()),
        "cpu_seconds": sum(j["cpu_seconds"] for j in jobs.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="benchmark")
    parser.add_argument(
        "--out", default=None, help="run directory (default runs/multi-exit-PRESET)"
    )
    add_results_option(parser)
    parser.add_argument("--name", default=None, help="JSON name (default from the preset)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    overrides = ["progress=false", *args.overrides]
    out = Path(args.out or f"runs/multi-exit-{args.preset}")
    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    run = run_experiment("multi-exit", args.preset, out, overrides)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    summary, saved = run.read_json("results.json"), run.read_json("config.json")
    config = saved["config"]
    labels, budgets = summary["budget_labels"], summary["budgets"]
    paired = {
        key: [in_points(d) for d in differences]
        for key, differences in summary["paired_vs_uniform"].items()
    }
    paired_exits = {
        key: [in_points(d) for d in differences]
        for key, differences in summary["paired_exits_vs_uniform"].items()
    }
    gains = []
    for i, (difference, label, fraction) in enumerate(
        zip(paired.get("l2w", [None] * len(budgets)), labels, budgets, strict=True)
    ):
        low = i < TARGETS["low_budgets"]
        met = gain_target_met(difference) if low else None
        gains.append(
            {
                "budget_fraction": fraction,
                "budget_label": label,
                "difference_points": difference,
                "target_points": TARGETS["l2w_gain_points"] if low else None,
                "target_met": met,
            }
        )
    costs = summary["train_seconds_vs_uniform"]
    report = {
        "machine": machine(),
        "threads": config["threads"],
        "workers": config["workers"],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": "CPU seconds are each job's process time; on a shared machine the wall time "
        "carries other processes' load, the CPU time much less",
        "settings": {
            "preset": args.preset,
            "overrides": overrides,
            "data": summary["data"],
            "config": config,
            "updates": summary["updates"],
            "step_costs_macs": summary["step_costs"],
            "budget_macs": summary["budget_macs"],
            "budget_labels": labels,
        },
        "targets": TARGETS,
        "script_wall_seconds": wall,
        "script_cpu_seconds": cpu,
        "job_times": job_times(out),
        "l2w_minus_uniform": gains,
        "paired_vs_uniform_points": paired,
        "paired_exits_vs_uniform_points": paired_exits,
        "train_seconds_vs_uniform": costs,
        "l2w_cost_target_met": cost_target_met(costs.get("l2w", {}).get("cpu")),
        "lines": summary["lines"],
        "gain_minus_confidence_worst_gain": summary.get("gain_minus_confidence_worst_gain", {}),
        "l2s_selected": summary["l2s_selected"],
        "weight_log": summary["weight_log"],
        "weights_final": summary["weights_final"],
        "test_groups": summary["test_groups"],
        "timing": summary["timing"],
        "table": (out / "table.md").read_text(),
    }
    name = args.name or RESULT_NAMES.get(args.preset, f"multi_exit-{args.preset}")
    results = args.results
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    figures = results / name
    figures.mkdir(exist_ok=True)
    for figure in (out / "figures").glob("*.png"):
        shutil.copy(figure, figures / figure.name)
    print(report["table"])
    for row in gains:
        d = row["difference_points"]
        gain = "—" if d is None else format_interval(d, "+.2f", no_interval=" (1 seed)")
        print(
            f"L2W − uniform @ {100 * row['budget_fraction']:g}% ({row['budget_label']}): "
            f"{gain} points; target: {verdict(row['target_met'])}",
            file=sys.stderr,
        )
    l2w_cost = costs.get("l2w", {}).get("cpu", {}).get("mean")
    print(
        f"L2W training CPU × uniform: {format_number(l2w_cost)} (mean); target: "
        f"{verdict(report['l2w_cost_target_met'])}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
