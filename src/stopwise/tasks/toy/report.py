"""The toy's table (per budget: the L2S policy against the same model at that fixed depth, mean
± sd over seeds) and its budget-curve figure."""

from __future__ import annotations

import statistics
from typing import Any

from ...contract import JobResult, Report
from ...reporting import markdown_table, new_figure
from ...stats import format_mean_sd, paired_difference
from .config import ToyConfig

__all__ = ["report"]


def report(results: list[JobResult], config: ToyConfig) -> Report:
    records = {r.seed: r.record for r in results}
    seeds = sorted(records)
    rows: list[dict[str, Any]] = []
    comparisons = []
    for i, budget in enumerate(config.budgets):
        depth = max(1, round(budget))
        adaptive = {s: records[s]["budgets"][i]["mse"] for s in seeds}
        fixed = {s: records[s]["fixed_depth"][depth - 1]["mse"] for s in seeds}
        steps = [records[s]["budgets"][i]["mean_steps"] for s in seeds]
        rows.append(
            {
                "method": f"L2S policy (budget {budget:g} steps)",
                "mean_steps": format_mean_sd(steps),
                "mse": format_mean_sd(list(adaptive.values()), ".4f"),
            }
        )
        rows.append(
            {
                "method": f"fixed depth {depth}",
                "mean_steps": f"{depth}",
                "mse": format_mean_sd(list(fixed.values()), ".4f"),
            }
        )
        comparisons.append({"budget": budget, "depth": depth, **paired_difference(adaptive, fixed)})
    oracle = [records[s]["oracle"] for s in seeds]
    rows.append(
        {
            "method": "oracle stop (needs μ)",
            "mean_steps": format_mean_sd([o["mean_steps"] for o in oracle]),
            "mse": format_mean_sd([o["mse"] for o in oracle], ".4f"),
        }
    )
    table = markdown_table(
        rows,
        [("method", "method", "s"), ("mean_steps", "mean steps", "s"), ("mse", "test MSE", "s")],
    )
    table += (
        f"\n\n{len(seeds)} seed(s), mean ± sd; {config.eval_size} test streams per seed; "
        f"stop rows run through run_adaptive(mode={config.inference_mode!r}), thresholds "
        "calibrated on validation streams."
    )
    first = comparisons[0]
    summary = (
        f"learning to stop: at {first['budget']:g} mean steps the policy's test MSE is "
        f"{first['mean']:+.4f} from fixed depth {first['depth']} (paired over {first['n']} seed(s))"
    )
    return Report(
        results={
            "rows": rows,
            "paired_vs_fixed_depth": comparisons,
            "seeds": seeds,
            "jobs": records,
        },
        table=table,
        figures={"budget_curve": _budget_figure(records, seeds)},
        summary=summary,
    )


def _budget_figure(records: dict[int, dict[str, Any]], seeds: list[int]):
    figure, axes = new_figure()
    curves = [records[s]["curve"] for s in seeds]
    fixed = [records[s]["fixed_depth"] for s in seeds]
    axes.plot(
        [statistics.fmean(p["mean_steps"] for p in points) for points in zip(*curves, strict=True)],
        [statistics.fmean(p["mse"] for p in points) for points in zip(*curves, strict=True)],
        "-o",
        markersize=3,
        label="L2S policy (thresholds calibrated on validation)",
    )
    axes.plot(
        [points[0]["mean_steps"] for points in zip(*fixed, strict=True)],
        [statistics.fmean(p["mse"] for p in points) for points in zip(*fixed, strict=True)],
        "s--",
        markersize=3,
        label="same model, fixed depth",
    )
    axes.set_yscale("log")
    axes.set_xlabel("mean steps used")
    axes.set_ylabel("test MSE")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    return figure
