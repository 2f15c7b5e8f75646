"""Summary of the multi-exit jobs: seeds aggregated per (method, curve), L2W-style paired
differences against uniform training, training cost ratios, timing; the markdown table and the
figures (accuracy vs MACs, per-exit accuracy, learned weights vs loss)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from ...reporting import markdown_table, new_figure, save_figure
from .methods import METHODS

__all__ = ["summarize", "write_table", "write_figures", "budget_labels", "line_label"]


def budget_labels(n: int) -> list[str]:
    """low / middle / high for n budgets in increasing order (the first 40% are low, the next
    40% middle, the rest high: 5 budgets → low, low, middle, middle, high)."""
    return ["low" if i < 0.4 * n else "middle" if i < 0.8 * n else "high" for i in range(n)]


def line_label(method: str, curve: str) -> str:
    if curve == "confidence" and method != "l2s":
        return METHODS[method]
    return f"{METHODS[method]} ({'policy' if curve == 'policy' else 'confidence thresholds'})"


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _train_seconds(result: dict[str, Any]) -> float:
    """The backbone's training time (L2S: stage I; stage II trains only the policy)."""
    seconds = result["train_seconds"]
    return seconds.get("train", seconds.get("stage1", 0.0))


def summarize(results: list[dict[str, Any]], config: dict[str, Any], splits) -> dict[str, Any]:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_method[r["job"]["method"]].append(r)
    first = results[0]
    budgets = config["budgets"]
    lines = []
    for method, rs in by_method.items():
        for curve in rs[0]["curves"]:
            per_seed = [r["budget_accuracy"][curve] for r in rs]
            stats = [_mean_std([s[i] for s in per_seed]) for i in range(len(budgets))]
            K = len(rs[0]["anytime_accuracy"])
            anytime = [_mean_std([r["anytime_accuracy"][k] for r in rs]) for k in range(K)]
            points = [r["curves"][curve] for r in rs]
            lines.append(
                {
                    "method": method,
                    "curve": curve,
                    "label": line_label(method, curve),
                    "seeds": [r["job"]["seed"] for r in rs],
                    "budget_accuracy_mean": [m for m, _ in stats],
                    "budget_accuracy_std": [s for _, s in stats],
                    "budget_accuracy_per_seed": per_seed,
                    "anytime_accuracy_mean": [m for m, _ in anytime],
                    "anytime_accuracy_std": [s for _, s in anytime],
                    "train_seconds_mean": statistics.fmean(_train_seconds(r) for r in rs),
                    "seconds_per_epoch_mean": statistics.fmean(
                        _train_seconds(r) / r["epochs"] for r in rs
                    ),
                    "curve_mean": [
                        {
                            "p": pts[0].get("p"),
                            "mean_macs": statistics.fmean(pt["mean_macs"] for pt in pts),
                            "accuracy": statistics.fmean(pt["accuracy"] for pt in pts),
                        }
                        for pts in zip(*points, strict=True)
                    ],
                }
            )
    summary: dict[str, Any] = {
        "data": {"dataset": splits.name, **splits.sizes(), **splits.info},
        "settings": {
            k: config[k]
            for k in (
                "stem",
                "channels",
                "strides",
                "head_width",
                "epochs",
                "batch_size",
                "lr",
                "momentum",
                "weight_decay",
                "train_size",
                "num_seeds",
                "l2w_hidden",
                "l2w_delta",
                "l2w_p",
                "l2w_interval",
                "l2w_meta_lr",
                "l2w_meta_wd",
                "l2w_clamp",
                "l2s_beta",
                "l2s_hard",
                "policy_updates",
                "sdn_weights",
                "threads",
            )
        },  # fmt: skip
        "updates": first["updates"],
        "step_costs": first["step_costs"],
        "budgets": budgets,
        "budget_macs": first["budget_macs"],
        "budget_labels": budget_labels(len(budgets)),
        "lines": lines,
        "paired_vs_uniform": _paired(by_method, len(budgets)),
        "cost_vs_uniform": _cost_ratios(by_method),
        "negative_weights": {
            r["job"]["id"]: r["negative_weights"] for r in results if "negative_weights" in r
        },
        "timing": {r["job"]["id"]: r["timing"] for r in results if "timing" in r},
        "test_groups": {r["job"]["id"]: r["test_groups"] for r in results if "test_groups" in r},
        "resumed_jobs": [r["job"]["id"] for r in results if r["resumed"]],
    }
    return summary


def _by_seed(rs: list[dict]) -> dict[int, dict]:
    return {r["job"]["seed"]: r for r in rs}


def _paired(by_method: dict[str, list[dict]], n_budgets: int) -> dict[str, Any]:
    """Per method and budget: the mean ± std over seeds of (method − uniform) accuracy, each
    seed's pair sharing initial weights and batch order (confidence-threshold curves)."""
    if "uniform" not in by_method:
        return {}
    base = _by_seed(by_method["uniform"])
    out = {}
    for method, rs in by_method.items():
        if method == "uniform":
            continue
        mine = _by_seed(rs)
        seeds = sorted(set(base) & set(mine))
        per_budget = []
        for i in range(n_budgets):
            diffs = []
            for s in seeds:
                a = mine[s]["budget_accuracy"]["confidence"][i]
                b = base[s]["budget_accuracy"]["confidence"][i]
                if a is not None and b is not None:
                    diffs.append(a - b)
            mean, std = _mean_std(diffs)
            per_budget.append({"mean": mean, "std": std, "per_seed": diffs, "seeds": len(diffs)})
        out[method] = per_budget
    return out


def _cost_ratios(by_method: dict[str, list[dict]]) -> dict[str, Any]:
    """Training seconds per epoch of each method over uniform's, per seed and mean."""
    if "uniform" not in by_method:
        return {}
    base = _by_seed(by_method["uniform"])
    out = {}
    for method, rs in by_method.items():
        mine = _by_seed(rs)
        ratios = [_train_seconds(mine[s]) / _train_seconds(base[s]) for s in mine if s in base]
        out[method] = {"per_seed": ratios, "mean": statistics.fmean(ratios) if ratios else None}
    return out


def _pct(mean: float | None, std: float | None = None, signed: bool = False) -> str | None:
    if mean is None:
        return None
    text = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    return text if std is None else f"{text} ± {100 * std:.2f}"


def write_table(summary: dict[str, Any]) -> str:
    budgets, labels = summary["budgets"], summary["budget_labels"]
    heads = [f"{100 * b:g}% MACs ({lab})" for b, lab in zip(budgets, labels, strict=True)]
    K = len(summary["step_costs"])
    rows = []
    for line in summary["lines"]:
        row = {"label": line["label"], "sec": line["seconds_per_epoch_mean"]}
        for i, (m, s) in enumerate(
            zip(line["budget_accuracy_mean"], line["budget_accuracy_std"], strict=True)
        ):
            row[f"b{i}"] = _pct(m, s)
        row["anytime"] = " / ".join(_pct(m) or "—" for m in line["anytime_accuracy_mean"])
        rows.append(row)
    columns = [
        ("label", "method", "s"),
        *[(f"b{i}", f"acc % @ {h}", "s") for i, h in enumerate(heads)],
        ("anytime", f"exit 1…{K} acc %", "s"),
        ("sec", "train s/epoch", ".1f"),
    ]
    data, settings = summary["data"], summary["settings"]
    costs = " / ".join(f"{c / 1e6:.3g}" for c in summary["step_costs"])
    parts = [
        f"{data['dataset']}: {data['train']} train / {data['validation']} validation / "
        f"{data['test']} test; {K}-exit CNN, channels {settings['channels']}, cumulative MMACs "
        f"per exit {costs}; {settings['epochs']} epochs = {summary['updates']} SGD updates of "
        f"batch {settings['batch_size']}; {settings['num_seeds']} seed(s), mean ± sd. Accuracy "
        "at each budget is interpolated on the test curve of MSDNet's 39 exit distributions "
        "(thresholds fitted on validation).",
        "",
        markdown_table(rows, columns),
    ]
    if summary["paired_vs_uniform"]:
        paired_rows = []
        for method, per_budget in summary["paired_vs_uniform"].items():
            row = {"label": f"{METHODS[method]} − uniform"}
            for i, d in enumerate(per_budget):
                row[f"b{i}"] = _pct(d["mean"], d["std"], signed=True)
            cost = summary["cost_vs_uniform"].get(method, {}).get("mean")
            row["cost"] = cost
            paired_rows.append(row)
        parts += [
            "",
            "Paired differences against uniform training (accuracy points, mean ± sd over "
            "seeds; same initial weights and batch order per pair), and training cost per epoch:",
            "",
            markdown_table(
                paired_rows,
                [
                    ("label", "pair", "s"),
                    *[(f"b{i}", f"Δ @ {h}", "s") for i, h in enumerate(heads)],
                    ("cost", "train cost × uniform", ".2f"),
                ],
            ),
        ]
    timing_rows = [{"job": job, **row} for job, rows_ in summary["timing"].items() for row in rows_]
    if timing_rows:
        parts += [
            "",
            f"Wall-clock of confidence early exit (run_adaptive, mode=shrink) vs the full network, "
            f"batch {timing_rows[0]['batch']}, median of {timing_rows[0]['repeats']}:",
            "",
            markdown_table(
                [{**r, "mmacs": r["mean_macs"] / 1e6} for r in timing_rows],
                [
                    ("job", "job", "s"),
                    ("mmacs", "mean MMACs", ".3f"),
                    ("mac_ratio", "MAC ratio", ".2f"),
                    ("speedup", "speedup", ".2f"),
                    ("speedup_over_mac_ratio", "speedup / MAC ratio", ".2f"),
                    ("adaptive_seconds", "early exit s", ".3f"),
                    ("full_seconds", "full s", ".3f"),
                ],
            ),
        ]
    if summary["negative_weights"]:
        text = ", ".join(
            f"{job}: {100 * v['fraction']:.2f}%" for job, v in summary["negative_weights"].items()
        )
        parts += ["", f"Negative L2W weights over training (share of sample-exit weights): {text}."]
    return "\n".join(parts)


def write_figures(results: list[dict[str, Any]], summary: dict[str, Any], run_dir) -> None:
    """accuracy_vs_macs, per_exit_accuracy and (with L2W) weights_vs_loss."""
    costs = summary["step_costs"]
    figure, axes = new_figure(7.0, 4.5)
    for i, line in enumerate(summary["lines"]):
        pts = line["curve_mean"]
        axes.plot(
            [pt["mean_macs"] / 1e6 for pt in pts],
            [100 * pt["accuracy"] for pt in pts],
            color=f"C{i % 10}",
            linestyle="--" if line["curve"] == "policy" else "-",
            label=line["label"],
        )
    for macs in summary["budget_macs"]:
        axes.axvline(macs / 1e6, color="gray", linewidth=0.6, linestyle=":")
    axes.set_xlabel("mean MMACs per test sample")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"{summary['data']['dataset']}: budgeted classification (mean over seeds)")
    axes.legend(fontsize=7)
    save_figure(figure, run_dir.figure("accuracy_vs_macs"))

    figure, axes = new_figure(6.0, 4.0)
    exits = list(range(1, len(costs) + 1))
    for i, line in enumerate(summary["lines"]):
        if line["curve"] != "confidence":
            continue
        axes.errorbar(
            exits,
            [100 * m for m in line["anytime_accuracy_mean"]],
            yerr=[100 * s for s in line["anytime_accuracy_std"]],
            marker="o",
            capsize=3,
            color=f"C{i % 10}",
            label=METHODS[line["method"]],
        )
    axes.set_xticks(exits)
    axes.set_xlabel("exit")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("Anytime accuracy per exit (mean ± sd over seeds)")
    axes.legend(fontsize=7)
    save_figure(figure, run_dir.figure("per_exit_accuracy"))

    weighted = [r for r in results if "weights_vs_loss" in r]
    if weighted:
        r = weighted[0]
        K = len(costs)
        figure, axes = new_figure(3.0 * K, 3.0)
        figure.clf()
        for k in range(K):
            ax = figure.add_subplot(1, K, k + 1)
            ax.scatter(
                r["weights_vs_loss"]["losses"][k],
                r["weights_vs_loss"]["weights"][k],
                s=3,
                alpha=0.4,
            )
            ax.axhline(1.0, color="gray", linewidth=0.6)
            ax.axhline(0.0, color="red", linewidth=0.6, linestyle=":")
            ax.set_xscale("symlog", linthresh=1e-3)
            ax.set_xlim(left=0)
            ax.set_xlabel(f"CE at exit {k + 1}")
            if k == 0:
                ax.set_ylabel("learned weight w")
        figure.suptitle(f"{r['job']['id']}: learned weights vs loss (1,000 training samples)")
        save_figure(figure, run_dir.figure("weights_vs_loss"))
