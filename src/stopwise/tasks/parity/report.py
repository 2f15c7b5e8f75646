"""Report of the parity jobs: seeds aggregated per (method, variant, setting, rule), the best
setting of each method chosen on validation accuracy, each best setting paired against fixed
depth's best over seeds, markdown tables and figures. Nothing here looks at test numbers to choose.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from ...contract import JobResult, Report, is_training_job
from ...curves import best_fixed_mix, dominance, dominance_line
from ...reporting import finish_axes, in_x_order, markdown_table, new_figure
from ...stats import (
    format_interval,
    format_mean_and_sd,
    mean_present,
    mean_sd,
    over_seeds,
    paired_difference,
)
from .config import ParityConfig
from .methods import METHODS, RULES
from .metrics import SUCCESS_ACCURACY

__all__ = [
    "report",
    "summarize",
    "paired_vs_fixed_depth",
    "sensitivity_lines",
    "halting_at_step_1_table",
]

# one marker per rule of RULES, in its order
_MARKERS = dict(zip(RULES, "so^vDP*<>", strict=True))
# what one summary line aggregates over seeds; a setting is (value, lr)
_LINE_KEYS = ("method", "variant", "value", "lr", "rule")


def report(results: list[JobResult], config: ParityConfig) -> Report:
    evaluations = [r for r in results if not is_training_job(r.name)]
    rows = [
        {"id": r.id, "seed": r.seed, **r.params, **row}
        for r in evaluations
        for row in r.record["rows"]
    ]
    lines = summarize(rows)
    paired = paired_vs_fixed_depth(rows, lines)
    curves = _budget_curves(evaluations, lines)
    best = "; ".join(
        f"{line['label']} {100 * line['interpolation_mean']:.2f}% at {line['mean_steps']:.2f} steps"
        for line in lines
        if line["best"] and line["main_rule"]
    )
    return Report(
        results={
            "task": {k: v for k, v in vars(config).items() if k not in ("progress", "reuse_from")},
            "success_accuracy": SUCCESS_ACCURACY,
            "lines": lines,
            "paired_vs_fixed_depth": paired,
            "budget_curves": curves,
            "dominance": {curve["label"]: curve["dominance"] for curve in curves},
            "rows": rows,
        },
        table=_tables(lines, paired, curves, config),
        figures=_figures(rows, lines, curves, config),
        summary=f"parity, best setting per method ({len(config.seeds)} seed(s), main rule): {best}",
    )


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One line: the seeds of one method, variant, setting and rule (sd: sample sd over seeds)."""
    first = rows[0]
    method = METHODS[first["method"]]
    interpolation = [r["interpolation"] for r in rows]
    interpolation_mean, interpolation_std = mean_sd(interpolation)
    mean_steps, mean_steps_std = mean_sd([r["mean_steps"] for r in rows])
    entries = [entry for row in rows for entry in row["per_k"]]
    accuracy, steps = _mean_by_k(entries, "accuracy"), _mean_by_k(entries, "mean_steps")
    shares = [r["halting_at_step_1"] for r in rows if "halting_at_step_1" in r]  # ACT rows
    halting = {
        "overall": mean_present([s["overall"] for s in shares]),
        "per_k": _mean_by_k([e for s in shares for e in s["per_k"]], "share"),
    }
    return {
        **{k: first[k] for k in _LINE_KEYS},
        "label": method.variant_label(first["variant"]),
        "symbol": method.symbol,
        "causal": RULES[first["rule"]][1],
        "main_rule": first["rule"] == method.rules[0],
        "seeds": [r["seed"] for r in rows],
        "interpolation_mean": interpolation_mean,
        "interpolation_std": interpolation_std,
        "interpolation_min": min(interpolation),
        "extrapolation_mean": mean_present([r["extrapolation"] for r in rows]),
        "accuracy_mean": mean_present([r["accuracy"] for r in rows]),
        "successes": sum(a > SUCCESS_ACCURACY for a in interpolation),
        "mean_steps": mean_steps,
        "mean_steps_std": mean_steps_std,
        "steps_run": mean_present([r["steps_run"] for r in rows]),
        "spearman_mean": mean_present([r["spearman"] for r in rows]),
        "validation_accuracy": mean_present([r["validation_accuracy"] for r in rows]),
        "validation_steps": mean_present([r["validation_steps"] for r in rows]),
        "train_seconds": mean_present([r["train_seconds"] for r in rows]),
        **({"halting_at_step_1": halting} if shares else {}),
        "per_k": [{"k": k, "accuracy": accuracy[k], "mean_steps": steps[k]} for k in accuracy],
    }


def _mean_by_k(entries: list[dict[str, Any]], key: str) -> dict[int, float | None]:
    """The mean of ``entry[key]`` over per-k entries (of every seed), by k in increasing order."""
    by_k: dict[int, list[float]] = defaultdict(list)
    for entry in entries:
        by_k[entry["k"]].append(entry[key])
    return {k: mean_present(values) for k, values in sorted(by_k.items())}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Aggregate job rows over seeds and mark each method variant's best setting.

    A setting is a value of the method's hyperparameter and a learning rate of its grid. The best
    setting maximises the mean validation accuracy of the method's main rule (ties: fewer
    validation steps); validation vectors are drawn from the training k range, never the test set.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in _LINE_KEYS)].append(row)
    lines = [_aggregate(group) for group in groups.values()]
    main = [line for line in lines if line["main_rule"]]
    for line in lines:
        rivals = [other for other in main if other["label"] == line["label"]]
        best = max(rivals, key=lambda r: (r["validation_accuracy"], -r["validation_steps"]))
        line["best"] = (best["value"], best["lr"]) == (line["value"], line["lr"])
    return sorted(
        lines,
        key=lambda c: (
            list(METHODS).index(c["method"]),
            c["variant"],
            c["value"],
            c["lr"],
            METHODS[c["method"]].rules.index(c["rule"]),
        ),
    )


def paired_vs_fixed_depth(
    rows: list[dict[str, Any]], lines: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each method's best setting (every rule) minus fixed depth's best setting, paired by seed:
    interpolation accuracy and mean steps, each a :func:`~stopwise.stats.paired_difference`
    (mean, sd, 95% Student-t interval, per seed). Empty when fixed depth was not run."""
    fixed = next((line for line in lines if line["method"] == "fixed" and line["best"]), None)
    if fixed is None:
        return []

    def per_seed(line: dict[str, Any], key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in rows if all(r[k] == line[k] for k in _LINE_KEYS)}

    return [
        {
            **{k: line[k] for k in ("label", *_LINE_KEYS)},
            "fixed_depth": fixed["value"],
            **{
                key: paired_difference(per_seed(line, key), per_seed(fixed, key))
                for key in ("interpolation", "mean_steps")
            },
        }
        for line in lines
        if line["best"] and line["method"] != "fixed"
    ]


def _grid(values: list[float]) -> str:
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}"


def _difference(d: dict[str, Any], scale: float = 1.0) -> str:
    """``+m [lo, hi]`` of a paired difference (no interval with one seed)."""
    return format_interval(d, scale=scale, no_interval=" (1 seed)")


def _lines_table(lines: list[dict[str, Any]]) -> str:
    """A markdown table of summary lines (one row per method, setting and rule)."""
    rows = [
        {
            **line,
            "setting": _setting(line),
            "validation": _pct(line["validation_accuracy"]),
            "rule_text": line["rule"] + ("" if line["causal"] else " (non-causal)"),
            "interp": format_mean_and_sd(
                line["interpolation_mean"], line["interpolation_std"], len(line["seeds"]), scale=100
            ),
            "interp_min": _pct(line["interpolation_min"]),
            "extrap": _pct(line["extrapolation_mean"]),
            "success": f"{line['successes']}/{len(line['seeds'])}",
            "steps": format_mean_and_sd(
                line["mean_steps"], line["mean_steps_std"], len(line["seeds"])
            ),
        }
        for line in lines
    ]
    extrapolating = any(line["extrapolation_mean"] is not None for line in lines)
    columns = [
        ("label", "method", "s"),
        ("setting", "setting", "s"),
        ("rule_text", "inference rule", "s"),
        ("interp", "interp. acc %", "s"),
        ("interp_min", "worst seed %", "s"),
        ("validation", "val. acc %", "s"),
        *([("extrap", "extrap. acc %", "s")] if extrapolating else []),
        ("success", f"seeds > {100 * SUCCESS_ACCURACY:g}%", "s"),
        ("steps", "mean steps", "s"),
        ("steps_run", "steps run", ".2f"),
        ("spearman_mean", "Spearman(steps, k)", ".2f"),
        ("train_seconds", "train s", ".0f"),
    ]
    return markdown_table(rows, columns)


def sensitivity_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The main-rule lines of every method run at more than one setting (value of its
    hyperparameter, learning rate), in :func:`summarize`'s order (one main-rule line a setting)."""
    settings = Counter(line["label"] for line in lines if line["main_rule"])
    return [line for line in lines if line["main_rule"] and settings[line["label"]] > 1]


def _setting(line: dict[str, Any]) -> str:
    return f"{METHODS[line['method']].symbol}={line['value']:g}, lr={line['lr']:g}"


def halting_at_step_1_table(lines: list[dict[str, Any]]) -> str:
    """Markdown: for each ACT setting, the share (%) of training inputs that halt at step 1,
    overall and per k (mean over seeds)."""
    act = [
        (_setting(line), line["halting_at_step_1"]) for line in lines if "halting_at_step_1" in line
    ]
    ks = sorted({k for _, share in act for k in share["per_k"]})
    rows = [
        {
            "setting": setting,
            "overall": f"{100 * share['overall']:.1f}",
            **{f"k{k}": f"{100 * value:.0f}" for k, value in share["per_k"].items()},
        }
        for setting, share in act
    ]
    columns = [("setting", "setting", "s"), ("overall", "all", "s")]
    return markdown_table(rows, columns + [(f"k{k}", f"k={k}", "s") for k in ks])


def _tables(lines: list[dict], paired: list[dict], curves: list[dict], config: ParityConfig) -> str:
    """Markdown: the best setting of every method with all its rules, each paired against fixed
    depth's best, the sensitivity of each method's main rule to its hyperparameter, ACT's
    step-1 halting, and the budget curves of the stop models beside fixed depth."""
    c = config
    parts = [
        f"Parity n={c.n}, train k∈{c.train_k}, test k∈{c.test_k}; GRU {c.hidden} units, at most "
        f"{c.max_steps} steps; {c.updates} Adam updates of batch {c.batch_size} (lr grid "
        f"{_grid(c.lr)}, ACT's {_grid(c.act_lr)}); "
        f"{over_seeds(c.seeds)}, {c.test_size} test vectors each. ACT: ε={c.act_eps:g}, "
        f"halting-bias init {c.act_halting_bias:g}. PonderNet: β={c.pondernet_beta:g}. Thesis: "
        f"prior p={c.thesis_prior_p:g}. L2S stage II: {c.policy_updates} head-only updates.",
        "",
        "Best setting of each method (by validation accuracy of its first rule):",
        "",
        _lines_table([line for line in lines if line["best"]]),
    ]
    if paired:
        rows = [
            {
                **p,
                "setting": _setting(p),
                "accuracy": _difference(p["interpolation"], 100),
                "steps": _difference(p["mean_steps"]),
            }
            for p in paired
        ]
        parts += [
            "",
            f"Against fixed depth's best (depth={paired[0]['fixed_depth']:g}), paired over seeds: "
            + (
                "mean difference [95% interval]:"
                if len(c.seeds) > 1
                else "the one seed's difference:"
            ),
            "",
            markdown_table(
                rows,
                [
                    ("label", "method", "s"),
                    ("setting", "setting", "s"),
                    ("rule", "inference rule", "s"),
                    ("accuracy", "Δ interp. acc (points)", "s"),
                    ("steps", "Δ mean steps", "s"),
                ],
            ),
        ]
    sensitivity = sensitivity_lines(lines)
    if sensitivity:
        title = "Sensitivity to each method's hyperparameter (first rule):"
        parts += ["", title, "", _lines_table(sensitivity)]
    if any("halting_at_step_1" in line for line in lines):
        title = "ACT: share (%) of training inputs halting at step 1, by k (mean over seeds):"
        parts += ["", title, "", halting_at_step_1_table(lines)]
    parts += ["", "Rules: " + "; ".join(f"{name}: {text}" for name, (text, _) in RULES.items())]
    if curves:
        rows = [
            {
                "label": f"{curve['label']} ({curve['setting']})",
                "steps": f"{p['mean_steps']:.2f}",
                "stop": f"{100 * p['accuracy']:.2f}",
                "fixed": f"{100 * p['fixed_accuracy']:.2f}",
                "gain": _difference(p["stop_minus_fixed"], 100),
            }
            for curve in curves
            for p in curve["points"]
        ]
        parts += [
            "",
            "Budget curves (hazard thresholds fitted on validation, measured on test; "
            "interpolation accuracy %) beside the same model stopped at fixed depth (the best mix "
            "of two depths with the same mean steps):",
            "",
            markdown_table(
                rows,
                [
                    ("label", "stop model (best setting)", "s"),
                    ("steps", "mean steps", "s"),
                    ("stop", "stop model", "s"),
                    ("fixed", "same model, fixed depth", "s"),
                    ("gain", "stop − fixed (points) [95%]", "s"),
                ],
            ),
            "",
            *(
                "- " + dominance_line(curve["label"], curve["dominance"], "points", 100)
                for curve in curves
            ),
        ]
    return "\n".join(parts)


def _budget_curves(results: list[JobResult], lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The budget curve of each method's best setting (stop models only), points matched by
    position across seeds: mean steps and test interpolation accuracy of the stop model, and the
    same model at fixed depth interpolated to the same mean steps, paired over seeds."""
    out = []
    for line in lines:
        if not (line["best"] and line["main_rule"]):
            continue
        per_seed = {
            r.seed: curve
            for r in results
            if all(r.params[k] == line[k] for k in ("method", "value", "lr"))
            for curve in r.record.get("curves", [])
            if curve["variant"] == line["variant"]
        }
        if not per_seed:
            continue
        points = []
        for i in range(min(len(c["points"]) for c in per_seed.values())):
            stop = {s: c["points"][i]["accuracy"] for s, c in per_seed.items()}
            steps = {s: c["points"][i]["mean_steps"] for s, c in per_seed.items()}
            fixed = {
                s: best_fixed_mix(c["fixed_depth"], steps[s], "accuracy", higher_is_better=True)
                for s, c in per_seed.items()
            }
            points.append(
                {
                    "mean_steps": mean_sd(list(steps.values()))[0],
                    "accuracy": mean_sd(list(stop.values()))[0],
                    "fixed_accuracy": mean_sd(list(fixed.values()))[0],
                    "stop_minus_fixed": paired_difference(stop, fixed),
                }
            )
        seed_curves = [c["points"][: len(points)] for c in per_seed.values()]
        seed_fixed = [c["fixed_depth"] for c in per_seed.values()]
        out.append(
            {
                "label": line["label"],
                "setting": _setting(line),
                "points": points,
                "dominance": dominance(seed_curves, seed_fixed, "accuracy", higher_is_better=True),
            }
        )
    return out


def _figures(rows: list[dict], lines: list[dict], curves: list[dict], config: ParityConfig) -> dict:
    """accuracy_vs_steps (every setting, seed and rule), steps_vs_k and accuracy_vs_k (best),
    and budget_curves (each stop model's best setting, when there is one)."""
    labels = list(dict.fromkeys(line["label"] for line in lines))
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    out = {}

    figure, axes = new_figure(7.5, 4.5)
    seen = set()
    for row in rows:
        label = METHODS[row["method"]].variant_label(row["variant"])
        series = f"{label} / {row['rule']}"
        axes.scatter(
            row["steps_run"],
            100 * row["interpolation"],
            color=colors[label],
            marker=_MARKERS[row["rule"]],
            s=28,
            alpha=0.75,
            label=None if series in seen else series,
        )
        seen.add(series)
    steps = "mean steps run (a non-causal rule runs them all)"
    title = "Parity: accuracy vs compute (one point per setting, seed and rule)"
    accuracy = "interpolation accuracy (%)"
    finish_axes(axes, steps, accuracy, title, legend=6, outside=True, grid=False)
    out["accuracy_vs_steps"] = figure

    for key, scale, name, ylabel in [
        ("mean_steps", 1, "steps_vs_k", "mean steps used"),
        ("accuracy", 100, "accuracy_vs_k", "accuracy (%)"),
    ]:
        figure, axes = new_figure(7.5, 4.5)
        for line in lines:
            if not line["best"]:
                continue
            axes.plot(
                [e["k"] for e in line["per_k"]],
                [scale * e[key] for e in line["per_k"]],
                color=colors[line["label"]],
                marker=_MARKERS[line["rule"]],
                markersize=4,
                linestyle="-" if line["main_rule"] else "--",
                label=f"{line['label']} / {line['rule']}",
            )
        if list(config.train_k) != list(config.test_k):
            axes.axvline(config.train_k[1] + 0.5, color="gray", linestyle=":", linewidth=1,
                         label=f"largest training k ({config.train_k[1]})")  # fmt: skip
        title = f"Parity: {ylabel} vs k (best settings, mean over seeds)"
        nonzero = "k (non-zero elements)"
        finish_axes(axes, nonzero, ylabel, title, legend=6, outside=True, grid=False)
        out[name] = figure
    if curves:
        figure, axes = new_figure(7.5, 4.5)
        for curve in curves:
            points = in_x_order(curve["points"])  # a line never doubles back
            steps = [p["mean_steps"] for p in points]
            color = colors[curve["label"]]  # each method's colour in the other figures
            axes.plot(steps, [100 * p["accuracy"] for p in points], "o-", color=color,
                      markersize=4, label=f"{curve['label']}: stop")  # fmt: skip
            axes.plot(steps, [100 * p["fixed_accuracy"] for p in points], "--",
                      color=color, label=f"{curve['label']}: same model, fixed depth")  # fmt: skip
        title = "Parity: budget curves (validation thresholds) vs fixed depth"
        accuracy = "interpolation accuracy (%)"
        finish_axes(axes, "mean steps", accuracy, title, legend=6, outside=True, grid=False)
        out["budget_curves"] = figure
    return out
