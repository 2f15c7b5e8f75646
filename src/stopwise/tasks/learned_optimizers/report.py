"""The learned-optimizers report: per family, the optimizers inside and beyond the horizon (the
LSTM optimizer against every tuned hand-designed optimizer, paired over seeds and with intervals
over test functions); for the stop families, the stop rules at their stop, the trade-off
f + λ·steps, the budget curves beside fixed depth, the causal rule against the non-causal
posterior and the Spearman correlation of the stop step with difficulty; for the MLP, the
training loss and test accuracy of every variant and the LSTM optimizer minus each tuned
optimizer, paired over seeds. Nothing is selected here: every choice was
made on validation inside the jobs."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from ...contract import JobResult, Report
from ...curves import dominance, dominance_line, mean_curve
from ...reporting import (
    finish_axes,
    format_number,
    in_x_order,
    markdown_table,
    new_figure,
    points_xy,
)
from ...stats import (
    format_interval,
    format_mean_sd,
    interval_or_mean,
    mean_present,
    mean_sd,
    over_seeds,
    paired_difference,
)
from .config import LearnedOptimizersConfig
from .metrics import DIVERGED

__all__ = ["report", "pooled"]

_OPTIMIZER_LABELS = {"sgd": "SGD", "momentum": "Momentum", "rmsprop": "RMSprop", "adam": "Adam"}
STOP_LABELS = {"act": "ACT optimizer", "l2s": "L2S-stop"}


def _label(kind: str) -> str:
    return _OPTIMIZER_LABELS.get(kind, kind)


def pooled(summaries: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and normal 95% interval over every function of every seed, from per-seed
    ``summary`` dicts (equal n): the pooled variance adds the spread of the seed means."""
    n = sum(s["n"] for s in summaries)
    mean = sum(s["mean"] * s["n"] for s in summaries) / n
    within = sum((s["n"] - 1) * s["sd"] ** 2 for s in summaries)
    between = sum(s["n"] * (s["mean"] - mean) ** 2 for s in summaries)
    sd = math.sqrt((within + between) / max(n - 1, 1))
    half = 1.96 * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "lo": mean - half, "hi": mean + half}


def report(results: list[JobResult], config: LearnedOptimizersConfig) -> Report:
    records = {(r.name, r.seed): r.record for r in results}
    cpu = {r.id: r.cpu_seconds for r in results}
    seeds = sorted({r.seed for r in results})
    out: dict[str, Any] = {"seeds": seeds, "families": {}}
    tables, figures, summary = [], {}, []
    for family in config.families:
        section: dict[str, Any] = {}
        if family == "mlp":
            section["optimizers"], table, line = _mlp_section(records, seeds, config)
            tables.append(table)
            summary.append(line)
            figures["mlp_training_loss"] = _mlp_figure(records, seeds, config)
        else:
            section["optimizers"], table, line = _optimizer_section(records, seeds, config, family)
            tables.append(table)
            summary.append(line)
            figures[f"suboptimality_{family}"] = _curve_figure(records, seeds, config, family)
        if family in config.stop_families:
            section["stopping"], table, line = _stop_section(records, seeds, config, family)
            tables.append(table)
            summary.append(line)
            section["tradeoff"], table = _tradeoff_section(records, seeds, config, family)
            tables.append(table)
            figures[f"budget_{family}"] = _budget_figure(section["stopping"], family)
            figures[f"tradeoff_{family}"] = _tradeoff_figure(section["tradeoff"], family)
        out["families"][family] = section
    out["dominance"] = {
        f"{family}: {STOP_LABELS[name]}": curve["dominance_log10_gap"]
        for family, section in out["families"].items()
        if "stopping" in section
        for name, curve in section["stopping"]["curves"].items()
    }
    out["cpu_seconds"] = cpu
    out["jobs"] = {f"{name}-s{seed}": record for (name, seed), record in records.items()}
    table = "\n\n".join(tables) + (
        f"\n\n{over_seeds(seeds)} unless marked; intervals are "
        "normal 95% intervals over all test functions of all seeds; paired differences are over "
        f"seeds (Student t). Stop rules run through run_adaptive(mode={config.inference_mode!r})."
    )
    departures = []
    if config.act.train == "halting":
        departures.append(
            "the meta-trained LSTM optimizer, frozen, with only its halting head trained on the "
            "bound (act.train=halting)"
        )
    if config.act.step_cost:
        departures.append(
            f"a price λ = {config.act.step_cost:g} per step in the bound's loss (act.step_cost)"
        )
    if config.stop_families and departures:
        table += " ACT optimizer here, not as in the thesis: " + "; ".join(departures) + "."
    return Report(results=out, table=table, figures=figures, summary="\n".join(summary))


# ---------------------------------------------------------------- optimizers


def _steps(config: LearnedOptimizersConfig) -> list[int]:
    return sorted({*config.report_steps, config.horizon, *config.beyond})


def _optimizer_section(records, seeds, config, family):
    steps = _steps(config)
    methods = {"lstm": "LSTM optimizer"} | {
        k: f"{_label(k)} (lr tuned per step)" for k in config.optimizers
    }

    def per_seed(method: str, H: int) -> dict[int, dict[str, Any]]:
        if method == "lstm":
            return {s: records[(f"lstm-{family}", s)]["test"][str(H)] for s in seeds}
        return {s: records[(f"hand-{family}", s)]["test"][method][str(H)] for s in seeds}

    rows, numbers = [], {}
    for method, label in methods.items():
        row = {"method": label}
        numbers[method] = {}
        for H in steps:
            values = per_seed(method, H)
            both = pooled(list(values.values()))
            numbers[method][str(H)] = {
                "per_seed": {s: v["mean"] for s, v in values.items()},
                "pooled": both,
            }
            row[str(H)] = (
                f"{format_mean_sd([v['mean'] for v in values.values()])} "
                f"[{both['lo']:.2f}, {both['hi']:.2f}]"
            )
        rows.append(row)
    comparisons = {}
    for H in steps:
        lstm = numbers["lstm"][str(H)]
        comparisons[str(H)] = {}
        for kind in config.optimizers:
            other = numbers[kind][str(H)]
            paired = paired_difference(lstm["per_seed"], other["per_seed"])
            comparisons[str(H)][kind] = {
                **paired,
                "intervals_separated": lstm["pooled"]["hi"] < other["pooled"]["lo"],
            }
    beats = {
        str(H): {
            "over_functions": all(c["intervals_separated"] for c in comparisons[str(H)].values()),
            # The paired interval over seeds below zero (one seed: its value).
            "over_seeds": all(interval_or_mean(c)[1] < 0 for c in comparisons[str(H)].values()),
        }
        for H in config.report_steps
    }
    columns = [("method", "optimizer", "s")] + [
        (str(H), f"step {H}" + (" (beyond)" if H > config.horizon else ""), "s") for H in steps
    ]
    diff_rows = []
    for kind in config.optimizers:
        row = {"method": f"LSTM − {_label(kind)}"}
        for H in steps:
            c = comparisons[str(H)][kind]
            row[str(H)] = format_interval(c)
        diff_rows.append(row)
    table = (
        f"### {family}: mean log10 suboptimality f(θ_t) − f(θ̂) of {config.test_functions} test "
        f"functions (horizon {config.horizon})\n\n"
        + markdown_table(rows + diff_rows, columns)
        + "\n\nLearning rates tuned on validation functions for each step count; [lo, hi]: "
        "95% interval over all test functions; differences: paired over seeds, 95% t interval."
        + _diverged_note(records, seeds, family, config)
    )
    first = config.report_steps[0]
    line = (
        f"{family}: LSTM optimizer beats every tuned hand-designed optimizer at step "
        + ", ".join(
            f"{H}: {'yes' if beats[str(H)]['over_functions'] else 'no'} (functions), "
            f"{'yes' if beats[str(H)]['over_seeds'] else 'no'} (seeds)"
            for H in config.report_steps
        )
        + f"; LSTM at step {first}: {numbers['lstm'][str(first)]['pooled']['mean']:.2f}"
    )
    return (
        {"numbers": numbers, "comparisons": comparisons, "beats_every_optimizer": beats},
        table,
        line,
    )


def _curve_figure(records, seeds, config, family):
    figure, axes = new_figure(6.0, 4.0)
    curves = {"LSTM optimizer": [records[(f"lstm-{family}", s)]["curve"] for s in seeds]}
    for kind in config.optimizers:
        curves[f"{_label(kind)} (lr tuned for {config.horizon})"] = [
            records[(f"hand-{family}", s)]["curves"][kind] for s in seeds
        ]
    for label, per_seed in curves.items():
        steps = per_seed[0]["steps"]
        mean = np.mean([c["mean"] for c in per_seed], axis=0)
        lo = np.mean([c["lo"] for c in per_seed], axis=0)
        hi = np.mean([c["hi"] for c in per_seed], axis=0)
        (line,) = axes.plot(steps, mean, label=label, linewidth=1.2)
        axes.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
    axes.axvline(config.horizon, color="grey", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    xlabel = "optimizer steps (dotted: meta-training horizon)"
    title = f"{family}: test functions, mean and 95% interval"
    finish_axes(axes, xlabel, "mean log10 suboptimality", title)
    return figure


# ---------------------------------------------------------------- stopping


def _stop_rows(records, seeds, config, family):
    """Every stop rule's per-seed test numbers at its stop, keyed by row."""
    H = config.horizon
    rows: dict[str, dict[str, Any]] = {}

    def add(key, label, per_seed, steps_run=None):
        present = {s: v for s, v in per_seed.items() if v is not None}  # None: nothing reached
        rows[key] = {
            "label": label, "per_seed": present, "steps_run": steps_run, "seeds": len(per_seed)
        }  # fmt: skip

    lstm = {s: records[(f"lstm-{family}", s)] for s in seeds}
    add("lstm", f"LSTM optimizer, all {H} steps", {
        s: {"steps": H, "nll": r["test_nll"], "log10_gap": r["test"][str(H)]["mean"],
            "regret": None, "reaches_reference": True, "step_saving": 0.0}
        for s, r in lstm.items()
    })  # fmt: skip
    act = {s: records[(f"act-{family}", s)] for s in seeds}
    l2s = {s: records[(f"l2s-{family}", s)] for s in seeds}
    rules = {s: records[(f"rules-{family}", s)] for s in seeds}
    add("act", "ACT optimizer, causal rule Δq_t ≤ 0", {s: r["natural"] for s, r in act.items()})
    add("act-mode", "ACT optimizer, posterior mode (non-causal)",
        {s: r["posterior"]["mode"] for s, r in act.items()}, steps_run=H)  # fmt: skip
    add("act-median", "ACT optimizer, posterior median (non-causal)",
        {s: r["posterior"]["median"] for s, r in act.items()}, steps_run=H)  # fmt: skip
    add("act-reach", "ACT optimizer, cheapest threshold reaching the LSTM's NLL (validation)",
        {s: r["reach"] for s, r in act.items()})  # fmt: skip
    add("l2s", "L2S-stop, λ_t ≥ 1/2", {s: r["natural"] for s, r in l2s.items()})
    add("l2s-reach", "L2S-stop, cheapest threshold reaching the LSTM's NLL (validation)",
        {s: r["reach"] for s, r in l2s.items()})  # fmt: skip
    add("rules-reach", "hand-designed rule, cheapest reaching the LSTM's NLL (validation)",
        {s: r["best_reach"] for s, r in rules.items()})  # fmt: skip
    return rows


def _diverged_floor(config, seeds=(0,)) -> float:
    """The least mean NLL (over the test functions, then ``seeds``) with a diverged function in
    it: one loss counted as :data:`DIVERGED` lifts a mean over N functions to ~DIVERGED / N
    (halved against rounding; finite NLLs are far below it)."""
    return DIVERGED / (2 * config.test_functions * len(seeds))


def _diverged_note(records, seeds, family, config) -> str:
    """A warning where the LSTM optimizer of some seed diverged on some test function (its NLL
    counted as :data:`DIVERGED`): those seeds' numbers are ruled by the cap, and a row that
    reaches or is measured against their NLL compares with it; empty otherwise."""
    floor = _diverged_floor(config)
    diverged = [s for s in seeds if records[(f"lstm-{family}", s)]["test_nll"] >= floor]
    if not diverged:
        return ""
    return (
        f"\n\n**The LSTM optimizer diverged** on test functions of seed(s) {diverged} (a loss "
        f"counted as {DIVERGED:.0e}, log10 suboptimality capped at {math.log10(DIVERGED):.0f}): "
        "those seeds' numbers are ruled by the cap, not measured, and a row that 'reaches the "
        "LSTM's NLL' there reaches the cap."
    )


def _nll_text(nll: float, floor: float) -> str:
    return f"{nll:.4f}" if nll < floor else f"diverged (a loss counted as {DIVERGED:.0e})"


def _stop_section(records, seeds, config, family):
    rows = _stop_rows(records, seeds, config, family)
    table_rows, numbers = [], {}
    for key, row in rows.items():
        per_seed = row["per_seed"]
        if not per_seed:
            table_rows.append({"method": row["label"], "steps": "not reached on validation"})
            numbers[key] = None
            continue
        values, total = list(per_seed.values()), row["seeds"]
        # Seeds where no threshold reached the reference are left out of the means: say so.
        over = "" if len(values) == total else f" ({len(values)} of {total} seeds)"

        def column(name, fmt=".3f", values=values):
            present = [v[name] for v in values if v.get(name) is not None]
            return format_mean_sd(present, fmt) if present else "—"

        numbers[key] = {
            "label": row["label"],
            "per_seed": per_seed,
            **{k: mean_sd([v[k] for v in values])[0] for k in ("steps", "nll", "log10_gap")},
            "reaches_reference": sum(bool(v.get("reaches_reference")) for v in values),
            "seeds": len(values),
            "seeds_total": total,
            "rules": [v.get("rules") for v in values],
        }
        table_rows.append(
            {
                "method": row["label"],
                "steps": column("steps", ".1f") + over,
                "steps_run": column("steps", ".1f")
                if row["steps_run"] is None
                else str(row["steps_run"]),
                "nll": column("nll", ".4g"),
                "log10_gap": column("log10_gap", ".2f"),
                "regret": column("regret", ".2e"),
                "saving": _saving(values),
                "reaches": f"{numbers[key]['reaches_reference']}/{total}",
            }
        )
    act = {s: records[(f"act-{family}", s)] for s in seeds}
    l2s = {s: records[(f"l2s-{family}", s)] for s in seeds}
    rho = {  # name -> measure -> one ρ per seed (None where undefined)
        name: {
            which: [r["natural"]["spearman"].get(which) for r in group.values()]
            for which in next(iter(group.values()))["natural"]["spearman"]
        }
        for name, group in (("act", act), ("l2s", l2s))
    }
    # The same correlations for the oracle stop of the LSTM optimizer (argmin_t gap_t + λt, it
    # knows θ̂): what imitating the oracle could reach at best.
    oracle_rho = {
        f"λ={point['step_cost']:g}": {
            which: [r["oracle"][i]["spearman"].get(which) for r in l2s.values()]
            for which in point["spearman"]
        }
        for i, point in enumerate(next(iter(l2s.values()))["oracle"])
    }
    spearman, oracle_spearman = (
        {
            name: {k: mean_present(v) for k, v in measures.items()}
            for name, measures in groups.items()
        }
        for groups in (rho, oracle_rho)
    )
    posterior = {
        rule: {
            k: statistics.fmean(r["posterior"][rule][k] for r in act.values())
            for k in ("mean_abs_step_distance", "same_step", "causal_minus_rule_steps",
                      "causal_minus_rule_log10_gap")
        }
        for rule in ("mode", "median")
    }  # fmt: skip
    posterior["expected_steps"] = statistics.fmean(
        r["posterior"]["posterior_mean_steps"] for r in act.values()
    )
    curves = {}
    for name, group, fixed_label in (
        ("act", act, "ACT optimizer at fixed depth"),
        ("l2s", l2s, "LSTM optimizer at fixed depth"),
    ):
        per_seed = [r["curve"] for r in group.values()], [r["fixed_depth"] for r in group.values()]
        curves[name] = {
            "curve": mean_curve(per_seed[0]),
            "fixed_depth": mean_curve(per_seed[1]),
            "fixed_label": fixed_label,
            "dominance_log10_gap": dominance(*per_seed, "log10_gap", higher_is_better=False),
            "dominance_nll": dominance(*per_seed, "nll", higher_is_better=False),
        }
    trained = _trained_depths(records, seeds, family, curves)
    real = {
        name: {
            "mean_steps": statistics.fmean(r["real"]["mean_steps"] for r in group.values()),
            "matches_dense": all(r["real"]["matches_dense"] for r in group.values()),
            "speedup": statistics.fmean(
                r["real"]["timing"]["rules"]["natural"]["speedup"] for r in group.values()
            ),
        }
        for name, group in (("act", act), ("l2s", l2s))
    }
    cost = next(iter(l2s.values())).get("cost")
    columns = [
        ("method", "stop rule", "s"),
        ("steps", "stop step (mean)", "s"),
        ("steps_run", "steps run", "s"),
        ("nll", "NLL at stop", "s"),
        ("log10_gap", "log10 suboptimality", "s"),
        ("regret", "regret f(θ_stop) − min_t f(θ_t)", "s"),
        ("saving", "steps saved vs horizon", "s"),
        ("reaches", "within tol. of LSTM NLL (seeds)", "s"),
    ]
    table = (
        f"### {family}: stopping ({config.test_functions} test functions, horizon "
        f"{config.horizon}; 'reaches': mean NLL within {config.nll_tolerance:.0%} of the LSTM "
        "optimizer's at the full horizon)\n\n"
        + markdown_table(table_rows, columns)
        + "\n\nSpearman(stop step, difficulty), mean over seeds: "
        + _correlations_text(rho)
        + "; the oracle stop of the LSTM optimizer (needs θ̂), per step cost: "
        + _correlations_text(oracle_rho)
        + "\n\nCausal rule vs the non-causal posterior at the full horizon (ACT optimizer): "
        + "; ".join(
            f"{rule}: mean |Δ steps| {v['mean_abs_step_distance']:.2f}, same step "
            f"{v['same_step']:.0%}, causal − {rule} log10 gap {v['causal_minus_rule_log10_gap']:+.3f}"
            for rule, v in posterior.items()
            if rule != "expected_steps"
        )
        + f"; E_q[steps] at the full horizon {posterior['expected_steps']:.1f}"
        + "\n\nBudget curves against the best fixed-depth mix at the same mean steps (mean over "
        "seeds; gain = fixed − curve in log10 suboptimality, positive: the stop rule is better): "
        + "; ".join(
            dominance_line(STOP_LABELS[name], v["dominance_log10_gap"], "log10")
            for name, v in curves.items()
        )
        + "\n\n"
        + _budget_table(curves)
        + _trained_table(trained)
        + _diverged_note(records, seeds, family, config)
        + _cost_text(cost, config)
        + "\n\nReal execution (shrink mode, functions leave the batch when they stop): "
        + "; ".join(
            f"{name}: {v['mean_steps']:.1f} steps, equal to the dense rule: {v['matches_dense']}, "
            f"wall-clock speedup over all {config.horizon} steps {v['speedup']:.2f}× "
            "(measured under load)"
            for name, v in real.items()
        )
    )
    act_row, l2s_row = numbers.get("act"), numbers.get("l2s")
    floor = _diverged_floor(config, seeds)  # the rows' NLL are means over seeds
    line = f"{family} stopping: " + "; ".join(
        f"{name} {row['steps']:.1f} steps, NLL {_nll_text(row['nll'], floor)} "
        f"(LSTM {_nll_text(numbers['lstm']['nll'], floor)} at {config.horizon})"
        for name, row in (("ACT causal", act_row), ("L2S", l2s_row))
        if row is not None
    )
    section = {
        "rows": numbers,
        "spearman": spearman,
        "oracle_spearman": oracle_spearman,
        "posterior": posterior,
        "curves": curves,
        "trained_depths": trained,
        "real": real,
    }
    return section, table, line


def _correlations_text(groups: dict[str, dict[str, list[float | None]]]) -> str:
    """``"name: measure +0.12, …; …"``: per name and measure the mean over the seeds where the
    correlation is defined, with how many those are where some seed lacks it (a constant stop
    step has none)."""

    def text(values: list[float | None]) -> str:
        present = sum(v is not None for v in values)
        fewer = f" ({present} of {len(values)} seeds)" if present < len(values) else ""
        return format_number(mean_present(values), "+.2f") + fewer

    return "; ".join(
        f"{name}: " + ", ".join(f"{k} {text(v)}" for k, v in measures.items())
        for name, measures in groups.items()
    )


def _trained_depths(records, seeds, family, curves) -> list[dict[str, Any]] | None:
    """At each depth H an LSTM optimizer was meta-trained for (the ``depth-F`` job): that
    optimizer's test numbers at step H beside the horizon's LSTM and ACT optimizers truncated
    at H and both budget curves interpolated at H mean steps (means over seeds; None where a curve
    does not reach H). None when the run trained none."""
    if (f"depth-{family}", seeds[0]) not in records:
        return None
    points = mean_curve([records[(f"depth-{family}", s)]["trained"] for s in seeds])

    def at(curve: list[dict[str, Any]], steps: float, key: str) -> float | None:
        """The curve interpolated at ``steps``; None beyond its ends (no extrapolation)."""
        x, y = points_xy(in_x_order(curve), key)  # interp needs sorted x
        return float(np.interp(steps, x, y)) if x[0] <= steps <= x[-1] else None

    def minus(a: float | None, b: float) -> float | None:
        return None if a is None else a - b

    rows = []
    for point in points:
        H = point["mean_steps"]
        row: dict[str, Any] = {"depth": round(H)}
        for key in ("log10_gap", "nll"):
            row[key] = {
                "trained": point[key],
                "lstm_truncated": at(curves["l2s"]["fixed_depth"], H, key),
                "act_truncated": at(curves["act"]["fixed_depth"], H, key),
                "act_curve": at(curves["act"]["curve"], H, key),
                "l2s_curve": at(curves["l2s"]["curve"], H, key),
            }
            best = min(row[key]["trained"], row[key]["lstm_truncated"])
            row[key]["l2s_minus_best_fixed"] = minus(row[key]["l2s_curve"], best)
            row[key]["act_minus_best_fixed"] = minus(row[key]["act_curve"], best)
        rows.append(row)
    return rows


def _trained_table(trained: list[dict[str, Any]] | None) -> str:
    if not trained:
        return ""
    rows = [
        {"depth": r["depth"], **{k: r["log10_gap"][k] for k in r["log10_gap"]},
         "nll_trained": r["nll"]["trained"], "nll_lstm": r["nll"]["lstm_truncated"]}
        for r in trained
    ]  # fmt: skip
    return (
        "\n\nLSTM optimizer meta-trained for each fixed depth H (horizon H) beside the same "
        "stop models' curves at H mean steps (log10 suboptimality; mean over seeds; curves "
        "interpolated; 'vs best fixed' = curve − the better of trained-for-H and the horizon's "
        "LSTM optimizer truncated at H):\n\n"
        + markdown_table(
            rows,
            [
                ("depth", "H", "d"),
                ("trained", "trained for H", ".2f"),
                ("lstm_truncated", "LSTM (horizon) at H", ".2f"),
                ("act_truncated", "ACT at H", ".2f"),
                ("act_curve", "ACT curve", ".2f"),
                ("l2s_curve", "L2S curve", ".2f"),
                ("act_minus_best_fixed", "ACT vs best fixed", "+.2f"),
                ("l2s_minus_best_fixed", "L2S vs best fixed", "+.2f"),
                ("nll_trained", "NLL trained for H", ".4f"),
                ("nll_lstm", "NLL LSTM at H", ".4f"),
            ],
        )  # fmt: skip
    )


def _cost_text(cost: dict[str, int] | None, config) -> str:
    if cost is None:
        return ""
    return (
        f"\n\nL2S policy cost: {cost['policy_macs']} multiply-adds per decision, "
        f"{cost['policy_macs'] / cost['step_macs']:.1%} of one LSTM-optimizer step "
        f"({cost['step_macs']}); the ACT optimizer's halting head: {config.hidden + 1} per "
        "function plus the mean over coordinates."
    )


def _budget_table(curves: dict[str, Any]) -> str:
    """The budget curves' points beside fixed depth at the nearest whole number of steps."""
    rows = []
    for name, label in STOP_LABELS.items():
        entry = curves[name]
        fixed = {round(p["mean_steps"]): p for p in entry["fixed_depth"]}
        for point in entry["curve"]:
            depth = min(fixed, key=lambda d, m=point["mean_steps"]: abs(d - m))
            rows.append(
                {
                    "model": label,
                    "steps": point["mean_steps"],
                    "gap": point["log10_gap"],
                    "nll": point["nll"],
                    "depth": depth,
                    "fixed_gap": fixed[depth]["log10_gap"],
                    "fixed_nll": fixed[depth]["nll"],
                }
            )
    return markdown_table(
        rows,
        [("model", "stop model", "s"), ("steps", "mean steps", ".1f"),
         ("gap", "log10 gap", ".2f"), ("nll", "NLL", ".4f"), ("depth", "fixed depth", "d"),
         ("fixed_gap", "log10 gap at fixed depth", ".2f"), ("fixed_nll", "NLL at fixed depth", ".4f")],
    )  # fmt: skip


def _saving(values) -> str:
    savings = [v.get("step_saving") for v in values if v.get("step_saving") is not None]
    return format_mean_sd([100 * s for s in savings], ".0f") + "%" if savings else "—"


def _tradeoff_section(records, seeds, config, family):
    act = {s: records[(f"act-{family}", s)] for s in seeds}
    l2s = {s: records[(f"l2s-{family}", s)] for s in seeds}
    rules = {s: records[(f"rules-{family}", s)] for s in seeds}
    methods = {
        "act": ("ACT optimizer (threshold on validation)", lambda s, i: act[s]["tradeoff"][i]),
        "l2s": ("L2S-stop (threshold on validation)", lambda s, i: l2s[s]["tradeoff"][i]),
        "rules": ("best hand-designed rule (validation)", lambda s, i: rules[s]["best_tradeoff"][i]),
        "lstm-fixed": ("LSTM optimizer, fixed steps (validation)",
                       lambda s, i: l2s[s]["fixed_tradeoff"][i]),
        "act-fixed": ("ACT optimizer, fixed steps (validation)",
                      lambda s, i: act[s]["fixed_tradeoff"][i]),
        "oracle": ("oracle stop of the LSTM optimizer (needs θ̂)", lambda s, i: l2s[s]["oracle"][i]),
    }  # fmt: skip
    rows, numbers = [], []
    for i, cost in enumerate(config.step_costs):
        entry: dict[str, Any] = {"step_cost": cost, "methods": {}}
        row = {"cost": f"{cost:g}"}
        for key, (_, get) in methods.items():
            values = {s: get(s, i)["value"]["mean"] for s in seeds}
            steps = [get(s, i).get("mean_steps", get(s, i).get("depth")) for s in seeds]
            entry["methods"][key] = {"per_seed": values, "mean_steps": steps}
            row[key] = (
                f"{format_mean_sd(list(values.values()), '.2e')} ({statistics.fmean(steps):.1f})"
            )
        for key in ("act", "l2s"):
            diff = paired_difference(
                entry["methods"][key]["per_seed"], entry["methods"]["rules"]["per_seed"]
            )
            entry[f"{key}_minus_rules"] = diff
            row[f"{key}_diff"] = format_interval(diff, "+.2e")
            # Beats the rules: the paired interval over seeds below zero (one seed: its value).
            entry[f"{key}_beats_rules"] = interval_or_mean(diff)[1] < 0
        numbers.append(entry)
        rows.append(row)
    columns = (
        [("cost", "λ", "s")]
        + [(k, label, "s") for k, (label, _) in methods.items()]
        + [
            ("act_diff", "ACT − rules", "s"),
            ("l2s_diff", "L2S − rules", "s"),
        ]
    )
    # One diverged test function (its loss counted as DIVERGED) lifts a seed's mean to at least
    # DIVERGED / test_functions: name those seeds rather than let them hide the other curves.
    diverged = {
        key: [
            s
            for s in seeds
            if any(
                entry["methods"][key]["per_seed"][s] >= DIVERGED / config.test_functions
                for entry in numbers
            )
        ]
        for key in methods
    }
    notes = [
        f"{methods[key][0]}: diverged on at least one test function in seed(s) {found} "
        f"(loss counted as {DIVERGED:.0e}; the figure leaves those seeds out of its curve)"
        for key, found in diverged.items()
        if found
    ]
    table = (
        f"### {family}: trade-off, mean over test functions of suboptimality + λ·steps "
        "(mean steps in brackets)\n\n" + markdown_table(rows, columns)
    )
    if notes:
        table += "\n\n" + "; ".join(notes)
    labels = {k: v[0] for k, v in methods.items()}
    return {"rows": numbers, "labels": labels, "diverged_seeds": diverged}, table


def _budget_figure(section, family):
    figure, axes = new_figure(6.0, 4.0)
    for name, label in STOP_LABELS.items():
        entry = section["curves"][name]
        (line,) = axes.plot(
            *points_xy(entry["curve"], "log10_gap"),
            "-o",
            markersize=3,
            label=f"{label} (thresholds calibrated on validation)",
        )
        axes.plot(
            *points_xy(entry["fixed_depth"], "log10_gap"),
            "--",
            color=line.get_color(),
            linewidth=1,
            label=entry["fixed_label"],
        )
    if section.get("trained_depths"):
        axes.plot(
            [r["depth"] for r in section["trained_depths"]],
            [r["log10_gap"]["trained"] for r in section["trained_depths"]],
            "kx",
            markersize=7,
            label="LSTM optimizer meta-trained for that depth",
        )
    title = f"{family}: budget curves beside fixed depth (test)"
    finish_axes(axes, "mean optimizer steps used", "mean log10 suboptimality at the stop", title)
    return figure


def _tradeoff_figure(section, family):
    figure, axes = new_figure(6.0, 4.0)
    costs = [row["step_cost"] for row in section["rows"]]
    for key, label in section["labels"].items():
        left_out = section["diverged_seeds"][key]
        kept = [s for s in section["rows"][0]["methods"][key]["per_seed"] if s not in left_out]
        if not kept:
            continue
        means = [
            statistics.fmean(row["methods"][key]["per_seed"][s] for s in kept)
            for row in section["rows"]
        ]
        if left_out:
            label += f" (seeds {left_out} diverged: left out)"
        axes.plot(costs, means, "-o", markersize=3, label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    title = f"{family}: trade-off"
    finish_axes(
        axes, "λ (cost of one optimizer step)", "mean suboptimality + λ·steps (test)", title
    )
    return figure


# ---------------------------------------------------------------- MLP


# The MLP's measures: (table header, format of a difference).
MLP_MEASURES = {"log10_loss": ("mean log10 training loss", "+.2f"),
                "loss": ("training loss", "+.4f"), "accuracy": ("test accuracy", "+.3f")}  # fmt: skip


def _mlp_section(records, seeds, config):
    """Per variant, each optimizer's per-seed means of the MLP measures and the LSTM optimizer
    minus each tuned optimizer, paired over seeds (``comparisons``); the table of both, and the
    summary line of issue 13's target on the base network (mean log10 training loss)."""
    variants = ["base", *config.mlp.variants]
    rows, diff_rows, numbers, comparisons = [], [], {}, {}
    for variant in variants:
        entries = {
            "lstm": {s: records[("lstm-mlp", s)]["variants"][variant]["test"] for s in seeds}
        }
        for kind in config.optimizers:
            entries[kind] = {s: records[("hand-mlp", s)][variant]["test"][kind] for s in seeds}
        horizon = records[("hand-mlp", seeds[0])][variant]["horizon"]
        numbers[variant] = {
            method: {m: {s: v[m]["mean"] for s, v in per_seed.items()} for m in MLP_MEASURES}
            for method, per_seed in entries.items()
        }
        comparisons[variant] = {
            measure: {
                kind: paired_difference(
                    numbers[variant]["lstm"][measure], numbers[variant][kind][measure]
                )
                for kind in config.optimizers
            }
            for measure in MLP_MEASURES
        }
        network = f"{variant} ({horizon} steps)"
        for method, by_measure in numbers[variant].items():
            rows.append(
                {
                    "variant": network,
                    "method": "LSTM optimizer" if method == "lstm" else f"{_label(method)} (tuned)",
                    "loss": format_mean_sd(list(by_measure["loss"].values()), ".4f"),
                    "accuracy": format_mean_sd(list(by_measure["accuracy"].values()), ".3f"),
                }
            )
        for kind in config.optimizers:
            row = {"variant": network, "method": f"LSTM − {_label(kind)}"}
            for measure, (_, fmt) in MLP_MEASURES.items():
                row[measure] = format_interval(comparisons[variant][measure][kind], fmt)
            diff_rows.append(row)
    base = comparisons["base"]["log10_loss"]
    beats = all(interval_or_mean(c)[1] < 0 for c in base.values())
    table = (
        f"### MLP on {config.mlp.dataset}: training loss (whole training set) at the horizon and "
        f"test accuracy, {config.mlp.test_functions} runs per seed\n\n"
        + markdown_table(
            rows,
            [
                ("variant", "network", "s"),
                ("method", "optimizer", "s"),
                ("loss", "training loss", "s"),
                ("accuracy", "test accuracy", "s"),
            ],
        )
        + "\n\nLSTM optimizer minus each tuned optimizer, paired over seeds (95% t interval):\n\n"
        + markdown_table(
            diff_rows,
            [
                ("variant", "network", "s"),
                ("method", "difference", "s"),
                *((m, label, "s") for m, (label, _) in MLP_MEASURES.items()),
            ],
        )
    )  # fmt: skip
    horizon = records[("hand-mlp", seeds[0])]["base"]["horizon"]
    line = (
        f"mlp: LSTM optimizer beats every tuned hand-designed optimizer at step {horizon} in mean "
        f"log10 training loss: {'yes' if beats else 'no'} (seeds; LSTM − each: "
        + ", ".join(f"{_label(k)} {format_interval(c)}" for k, c in base.items())
        + ")"
    )
    return (
        {"numbers": numbers, "comparisons": comparisons, "beats_every_optimizer": beats},
        table,
        line,
    )


def _mlp_figure(records, seeds, config):
    figure, axes = new_figure(6.0, 4.0)
    curves = {
        "LSTM optimizer": [
            records[("lstm-mlp", s)]["variants"]["base"]["test"]["curve"] for s in seeds
        ]
    }
    for kind in config.optimizers:
        curves[f"{_label(kind)} (tuned)"] = [
            records[("hand-mlp", s)]["base"]["test"][kind]["curve"] for s in seeds
        ]
    for label, per_seed in curves.items():
        steps = per_seed[0]["steps"]
        (line,) = axes.plot(steps, np.mean([c["mean"] for c in per_seed], axis=0), label=label)
        axes.fill_between(
            steps,
            np.mean([c["lo"] for c in per_seed], axis=0),
            np.mean([c["hi"] for c in per_seed], axis=0),
            color=line.get_color(),
            alpha=0.2,
        )
    title = f"MLP on {config.mlp.dataset}: test runs, mean and 95% interval"
    finish_axes(axes, "optimizer steps", "mean log10 training loss", title)
    return figure
