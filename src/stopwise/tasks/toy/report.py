"""The toy's table (per budget: the L2S policy against the same model at that fixed depth, mean
± sd over seeds) and its budget-curve figure."""

from __future__ import annotations

import math
from typing import Any

from stopwise.contract import JobResult, Report
from stopwise.curves import dominance, dominance_line, mean_curve
from stopwise.reporting import finish_axes, in_x_order, markdown_table, new_figure, points_xy
from stopwise.stats import format_interval, format_mean_sd, over_seeds, paired_difference

from .config import ToyConfig

__all__ = ["report"]


def report(results: list[JobResult], config: ToyConfig) -> Report:
    records = {r.seed: r.record for r in results if r.name == "l2s"}  # one l2s job per seed
    seeds = sorted(records)
    rows: list[dict[str, Any]] = []
    comparisons = []

    def row(method: str, mean_steps: str, mse: list[float]) -> dict[str, str]:
        return {"method": method, "mean_steps": mean_steps, "mse": format_mean_sd(mse, ".4f")}

    for i, budget in enumerate(config.budgets):
        # The cheapest fixed depth that costs at least the budget (never a cheaper rival).
        depth = math.ceil(budget)
        adaptive = {s: records[s]["budgets"][i]["mse"] for s in seeds}
        fixed = {s: records[s]["fixed_depth"][depth - 1]["mse"] for s in seeds}
        steps = format_mean_sd([records[s]["budgets"][i]["mean_steps"] for s in seeds])
        rows.append(row(f"L2S policy (budget {budget:g} steps)", steps, list(adaptive.values())))
        rows.append(row(f"fixed depth {depth}", f"{depth}", list(fixed.values())))
        comparisons.append({"budget": budget, "depth": depth, **paired_difference(adaptive, fixed)})
    oracle = [records[s]["oracle"] for s in seeds]
    oracle_steps = format_mean_sd([o["mean_steps"] for o in oracle])
    rows.append(row("oracle stop (needs μ)", oracle_steps, [o["mse"] for o in oracle]))
    table = markdown_table(
        rows,
        [("method", "method", "s"), ("mean_steps", "mean steps", "s"), ("mse", "test MSE", "s")],
    )
    curves, fixed = [records[s]["curve"] for s in seeds], [records[s]["fixed_depth"] for s in seeds]
    verdict = dominance(curves, fixed, "mse", higher_is_better=False)
    curve, fixed = mean_curve(curves), mean_curve(fixed)
    label = (
        "L2S policy, budget curve (floored thresholds and mixes fitted on validation, not the "
        "plain thresholds of the rows above; gains averaged over seeds)"
    )
    table += "\n\n" + dominance_line(label, verdict, "MSE")
    table += (
        f"\n\n{over_seeds(seeds)}; {config.eval_size} test streams per seed; "
        f"stop rows run through run_adaptive(mode={config.inference_mode!r}), thresholds "
        "calibrated on validation streams."
    )
    first = comparisons[0]
    used = rows[0]["mean_steps"]  # the first budget's policy row
    summary = (
        f"learning to stop: at a budget of {first['budget']:g} mean steps on validation ({used} "
        f"on test), the policy's test MSE minus fixed depth {first['depth']}'s is "
        f"{format_interval(first, '+.4f', no_interval=' (one seed: no interval)')} (below zero: "
        f"the policy is better; paired over {first['n']} seed(s)"
        + (", 95% interval)" if first["lo"] is not None else ")")
    )
    return Report(
        results={
            "rows": rows,
            "paired_vs_fixed_depth": comparisons,
            "dominance": {"L2S policy": verdict},
            "seeds": seeds,
            "jobs": records,
        },
        table=table,
        figures={"budget_curve": _budget_figure(curve, fixed)},
        summary=summary,
    )


def _budget_figure(curve: list[dict[str, float]], fixed: list[dict[str, float]]):
    figure, axes = new_figure()
    policy = "L2S policy (floored thresholds and mixes fitted on validation)"
    axes.plot(*points_xy(in_x_order(curve), "mse"), "-o", markersize=3, label=policy)
    axes.plot(*points_xy(fixed, "mse"), "s--", markersize=3, label="same model, fixed depth")
    axes.set_yscale("log")
    finish_axes(axes, "mean steps used", "test MSE")
    return figure
