"""Summary of the parity jobs: seeds aggregated per (method, variant, setting, rule), the best
setting of each method chosen on validation accuracy, markdown tables and figures."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from ...reporting import markdown_table, new_figure, save_figure
from .methods import METHODS, RULES
from .metrics import SUCCESS_ACCURACY

__all__ = ["summarize", "lines_table", "sensitivity_lines", "write_tables", "write_figures"]

_MARKERS = {"fixed": "s", "act": "o", "sample": "^", "median": "v", "hazard": "D", "greedy": "P"}


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One line of seeds of the same method, variant, setting and rule."""
    first = rows[0]
    interpolation = [r["interpolation"] for r in rows]
    per_k: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        for entry in row["per_k"]:
            per_k[entry["k"]].append(entry)
    method = METHODS[first["method"]]
    return {
        **{k: first[k] for k in ("method", "variant", "label", "value", "rule", "causal")},
        "symbol": method.symbol,
        "main_rule": first["rule"] == method.rules[0],
        "seeds": [r["seed"] for r in rows],
        "interpolation_mean": statistics.fmean(interpolation),
        "interpolation_std": _std(interpolation),
        "interpolation_min": min(interpolation),
        "extrapolation_mean": _mean([r["extrapolation"] for r in rows]),
        "accuracy_mean": statistics.fmean(r["accuracy"] for r in rows),
        "successes": sum(a > SUCCESS_ACCURACY for a in interpolation),
        "mean_steps": statistics.fmean(r["mean_steps"] for r in rows),
        "mean_steps_std": _std([r["mean_steps"] for r in rows]),
        "steps_run": statistics.fmean(r["steps_run"] for r in rows),
        "spearman_mean": _mean([r["spearman"] for r in rows]),
        "validation_accuracy": statistics.fmean(r["validation_accuracy"] for r in rows),
        "validation_steps": statistics.fmean(r["validation_steps"] for r in rows),
        "train_seconds": statistics.fmean(r["train_seconds"] for r in rows),
        "per_k": [
            {
                "k": k,
                "accuracy": _mean([e["accuracy"] for e in entries]),
                "mean_steps": _mean([e["mean_steps"] for e in entries]),
            }
            for k, entries in sorted(per_k.items())
        ],
    }


def summarize(rows: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Aggregate job rows over seeds and mark each method variant's best setting.

    The best setting maximises the mean validation accuracy of the method's main rule (ties: fewer
    validation steps); validation vectors are drawn from the training k range, never the test set.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["variant"], row["value"], row["rule"])].append(row)
    lines = [_aggregate(group) for group in groups.values()]
    best: dict[tuple, tuple] = {}  # (method, variant) -> (score, value)
    for line in lines:
        if line["main_rule"]:
            key = (line["method"], line["variant"])
            score = (line["validation_accuracy"], -line["validation_steps"])
            if key not in best or score > best[key][0]:
                best[key] = (score, line["value"])
    for line in lines:
        line["best"] = best[(line["method"], line["variant"])][1] == line["value"]
    order = {name: i for i, name in enumerate(METHODS)}
    lines.sort(
        key=lambda c: (
            order[c["method"]],
            c["variant"],
            c["value"],
            METHODS[c["method"]].rules.index(c["rule"]),
        )
    )
    return {
        "task": {
            k: config[k]
            for k in ("n", "train_k", "test_k", "hidden", "max_steps", "batch_size", "updates")
        }
        | {
            "policy_updates": config["policy_updates"],
            "lr": config["lr"],
            "act_halting_bias": config["act_halting_bias"],
            "act_eps": config["act_eps"],
            "pondernet_beta": config["pondernet_beta"],
            "thesis_prior_p": config["thesis_prior_p"],
            "test_size": config["test_size"],
            "num_seeds": config["num_seeds"],
            "threads": config["threads"],
            "workers": config["workers"],
        },
        "success_accuracy": SUCCESS_ACCURACY,
        "lines": lines,
        "rows": rows,
    }


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}"


def _display(line: dict[str, Any]) -> dict[str, Any]:
    return {
        **line,
        "setting": f"{line['symbol']}={line['value']:g}",
        "rule_text": f"{line['rule']}" + ("" if line["causal"] else " (non-causal)"),
        "interp": f"{100 * line['interpolation_mean']:.2f} ± {100 * line['interpolation_std']:.2f}",
        "interp_min": _pct(line["interpolation_min"]),
        "extrap": _pct(line["extrapolation_mean"]),
        "success": f"{line['successes']}/{len(line['seeds'])}",
        "steps": f"{line['mean_steps']:.2f} ± {line['mean_steps_std']:.2f}",
    }


def lines_table(lines: list[dict[str, Any]]) -> str:
    """A markdown table of summary lines (one row per method, setting and rule). A line with a
    ``source`` key (where it was measured) adds a column for it."""
    lines = [_display(line) for line in lines]
    extrapolating = any(line["extrapolation_mean"] is not None for line in lines)
    columns = [
        ("label", "method", "s"),
        ("setting", "setting", "s"),
        ("rule_text", "inference rule", "s"),
        ("interp", "interp. acc % (mean ± sd)", "s"),
        ("interp_min", "worst seed %", "s"),
        *([("extrap", "extrap. acc %", "s")] if extrapolating else []),
        ("success", f"seeds > {100 * SUCCESS_ACCURACY:g}%", "s"),
        ("steps", "mean steps", "s"),
        ("steps_run", "steps run", ".2f"),
        ("spearman_mean", "Spearman(steps, k)", ".2f"),
        ("train_seconds", "train s", ".0f"),
        *([("source", "run", "s")] if any("source" in line for line in lines) else []),
    ]
    return markdown_table(lines, columns)


def sensitivity_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The main-rule lines of every method run at more than one value of its hyperparameter,
    in method order and by value."""
    values = defaultdict(set)
    for line in lines:
        values[line["label"]].add(line["value"])
    order = {label: i for i, label in enumerate(dict.fromkeys(line["label"] for line in lines))}
    swept = [line for line in lines if line["main_rule"] and len(values[line["label"]]) > 1]
    return sorted(swept, key=lambda line: (order[line["label"]], line["value"]))


def write_tables(summary: dict[str, Any], config: dict[str, Any]) -> str:
    """Markdown: the best setting of every method with all its rules, then the sensitivity of
    each method's main rule to its hyperparameter (when more than one value was run)."""
    task = summary["task"]
    parts = [
        f"Parity n={task['n']}, train k∈{task['train_k']}, test k∈{task['test_k']}; "
        f"GRU {task['hidden']} units, at most {task['max_steps']} steps; "
        f"{task['updates']} Adam updates of batch {task['batch_size']} (lr {task['lr']:g}); "
        f"{task['num_seeds']} seed(s), {task['test_size']} test vectors each. "
        f"ACT: ε={task['act_eps']:g}, halting-bias init {task['act_halting_bias']:g}. "
        f"PonderNet: β={task['pondernet_beta']:g}. Thesis: prior p={task['thesis_prior_p']:g}. "
        f"L2S stage II: {task['policy_updates']} head-only updates.",
        "",
        "Best setting of each method (by validation accuracy of its first rule):",
        "",
        lines_table([line for line in summary["lines"] if line["best"]]),
    ]
    sensitivity = sensitivity_lines(summary["lines"])
    if sensitivity:
        parts += [
            "",
            "Sensitivity to each method's hyperparameter (first rule):",
            "",
            lines_table(sensitivity),
        ]
    parts += ["", "Rules: " + "; ".join(f"{name}: {text}" for name, (text, _) in RULES.items())]
    return "\n".join(parts)


def write_figures(rows: list[dict[str, Any]], summary: dict[str, Any], run_dir) -> None:
    """accuracy_vs_steps (every setting, seed and rule), steps_vs_k and accuracy_vs_k (best)."""
    labels = list(dict.fromkeys(row["label"] for row in rows))
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}

    figure, axes = new_figure(7.5, 4.5)
    seen = set()
    for row in rows:
        series = f"{row['label']} / {row['rule']}"
        axes.scatter(
            row["steps_run"],
            100 * row["interpolation"],
            color=colors[row["label"]],
            marker=_MARKERS.get(row["rule"], "x"),
            s=28,
            alpha=0.75,
            label=None if series in seen else series,
        )
        seen.add(series)
    axes.set_xlabel("mean steps run (a non-causal rule runs them all)")
    axes.set_ylabel("interpolation accuracy (%)")
    axes.set_title("Parity: accuracy vs compute (one point per setting, seed and rule)")
    axes.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save_figure(figure, run_dir.figure("accuracy_vs_steps"))

    best = [line for line in summary["lines"] if line["best"]]
    for key, name, ylabel in [
        ("mean_steps", "steps_vs_k", "mean steps used"),
        ("accuracy", "accuracy_vs_k", "accuracy (%)"),
    ]:
        figure, axes = new_figure(7.5, 4.5)
        for line in best:
            ks = [e["k"] for e in line["per_k"]]
            scale = 100 if key == "accuracy" else 1
            values = [scale * e[key] for e in line["per_k"]]
            axes.plot(
                ks,
                values,
                color=colors[line["label"]],
                marker=_MARKERS.get(line["rule"], "x"),
                markersize=4,
                linestyle="-" if line["main_rule"] else "--",
                label=f"{line['label']} / {line['rule']}",
            )
        train_k = summary["task"]["train_k"]
        if list(train_k) != list(summary["task"]["test_k"]):
            axes.axvline(train_k[1] + 0.5, color="gray", linestyle=":", linewidth=1)
        axes.set_xlabel("k (non-zero elements)")
        axes.set_ylabel(ylabel)
        axes.set_title(f"Parity: {ylabel} vs k (best settings, mean over seeds)")
        axes.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
        save_figure(figure, run_dir.figure(name))
