"""The multi-exit report: per (method, stop model) the accuracy at each budget read off its test
curve and per exit, mean ± sd over seeds; every method against uniform training paired over
seeds (mean difference with its 95% interval); training cost; real early exit and its
wall-clock; and the figures (accuracy vs MACs beside the fixed exits, per-exit accuracy, L2W's
learned weights vs loss). Nothing is selected here."""

from __future__ import annotations

import statistics
from typing import Any

from ...contract import JobResult, Report, is_training_job
from ...curves import dominance, dominance_line, mean_curve
from ...reporting import finish_axes, markdown_table, new_figure
from ...stats import format_interval, format_mean_and_sd, mean_sd, over_seeds, paired_difference
from .config import METHODS, MultiExitConfig
from .experiment import SELECT_L2S
from .metrics import P_GRID, accuracy_at_budgets
from .models import layout_text

__all__ = ["report", "budget_labels"]


def budget_labels(n: int) -> list[str]:
    """low / middle / high for n budgets in increasing order (the first 40% are low, the next
    40% middle, the rest high: 5 budgets → low, low, middle, middle, high)."""
    return ["low" if i < 0.4 * n else "middle" if i < 0.8 * n else "high" for i in range(n)]


# How a line names its stop model (confidence thresholds are a method's plain line but L2S's).
CURVES = {"confidence": "confidence thresholds", "policy": "policy", "gain": "gain head"}


def _label(params: dict[str, Any], curve: str) -> str:
    """The table label of one (job, stop model)."""
    method = params["method"]
    if method == SELECT_L2S:
        base = "L2S, β chosen on validation"
    elif method == "l2s":
        base = f"L2S β = {params['beta']:g}"
    else:
        base = METHODS[method]
    return _key(base, curve, plain=method not in ("l2s", SELECT_L2S))


def _key(name: str, curve: str, plain: bool = True) -> str:
    """The key of a (job, stop model) line: the job name, and a learned stop model's name
    (also for confidence thresholds unless ``plain``)."""
    return name if plain and curve == "confidence" else f"{name} ({CURVES[curve]})"


def _adaptive_means(adaptive: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Accuracy and mean cost of the rules run for real, averaged over seeds point by point.
    Records made before 2026-12-05 ran one rule per budget, not one per curve point: where the
    seeds' records differ in length (a run resumed or extended across that change), there is
    no point-by-point mean, and the fields are None."""
    if len({len(a) for a in adaptive}) != 1:
        return {"adaptive_accuracy_mean": None, "adaptive_mean_cost": None}
    means = mean_curve(adaptive)
    return {
        "adaptive_accuracy_mean": [m["accuracy"] for m in means],
        "adaptive_mean_cost": [m["mean_cost"] for m in means],
    }


def _budget_stats(per_seed: dict[int, list[float | None]]) -> dict[str, Any]:
    """A line's accuracy at the budgets: mean and sd over the seeds that reach each budget, and
    per seed."""
    columns = [
        [v for v in column if v is not None] for column in zip(*per_seed.values(), strict=True)
    ]
    stats = [mean_sd(column) if column else (None, None) for column in columns]
    return {
        "budget_accuracy_mean": [m for m, _ in stats],
        "budget_accuracy_sd": [sd for _, sd in stats],
        "budget_accuracy_seeds": [len(column) for column in columns],
        "budget_accuracy_per_seed": per_seed,
    }


def _line(name, params, curve, records: dict[int, dict[str, Any]], budget_macs, epochs):
    """One (job, stop model) over seeds: accuracy at the budgets (read off each seed's test
    curve), per fixed exit, run for real; training time; the mean curve."""
    seeds = sorted(records)
    curves = [records[s]["curves"][curve] for s in seeds]
    fixed = [records[s]["fixed_depth"] for s in seeds]
    anytime = {s: [point["accuracy"] for point in f] for s, f in zip(seeds, fixed, strict=True)}
    at_budgets = {
        s: accuracy_at_budgets(c, budget_macs) for s, c in zip(seeds, curves, strict=True)
    }
    exits = [mean_sd(column) for column in zip(*anytime.values(), strict=True)]
    val_exits = zip(*(records[s]["val_exit_accuracy"] for s in seeds), strict=True)
    adaptive = [records[s]["adaptive"][curve] for s in seeds]
    train = statistics.fmean(records[s]["train_seconds"] for s in seeds)
    return {
        "key": _key(name, curve),
        "job": name,
        "method": params["method"],
        "beta": params.get("beta"),
        "curve": curve,
        "label": _label(params, curve),
        "seeds": seeds,
        **_budget_stats(at_budgets),
        "anytime_accuracy_mean": [m for m, _ in exits],
        "anytime_accuracy_sd": [sd for _, sd in exits],
        "anytime_accuracy_per_seed": anytime,
        "val_anytime_accuracy_mean": [statistics.fmean(column) for column in val_exits],
        **_adaptive_means(adaptive),
        "adaptive_matches_dense": all(p["matches_dense"] for a in adaptive for p in a),
        # Records made before each curve point was run for real ran one rule per budget.
        "adaptive_matches_curve": all(p.get("matches_curve", False) for a in adaptive for p in a),
        "train_seconds_mean": train,
        "seconds_per_epoch_mean": train / epochs,
        "curve_mean": [  # p (MSDNet's curves) is the same on every seed
            {"p": point.get("p"), "mean_cost": mean["mean_cost"], "accuracy": mean["accuracy"]}
            for point, mean in zip(curves[0], mean_curve(curves), strict=True)
        ],
        "dominance": _dominance(curves, fixed),
        "worst_gain_per_seed": {
            s: _dominance([c], [f])["worst_gain"]
            for s, c, f in zip(seeds, curves, fixed, strict=True)
        },
    }


def _dominance(curves, fixed) -> dict[str, Any]:
    """Issue 17's verdict of test curves (one per seed) against the same networks' fixed exits."""
    return dominance(curves, fixed, "accuracy", higher_is_better=True, x="mean_cost")


def _selected_line(curve: str, records: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """L2S with β chosen on validation per budget: the chosen β and its test accuracy."""

    def per_seed(field: str) -> dict[int, list]:
        return {s: [pick[field] for pick in r["chosen"][curve]] for s, r in records.items()}

    return {
        "key": _key("l2s", curve),
        "job": "l2s",
        "method": SELECT_L2S,
        "curve": curve,
        "label": _label({"method": SELECT_L2S}, curve),
        "seeds": sorted(records),
        **_budget_stats(per_seed("accuracy")),
        "chosen_beta_per_seed": per_seed("beta"),
        # None: no candidate reached the budget on validation
        "chosen_job_per_seed": per_seed("job"),
    }


def _paired(line: dict[str, Any], base: dict[str, Any], key: str) -> list[dict[str, Any] | None]:
    """line − base in the per-seed lists ``key`` (accuracy per budget or per exit), at each
    budget or exit over the seeds where both reach it (None where none do)."""
    a, b, out = line[key], base[key], []
    for i in range(len(next(iter(a.values())))):
        seeds = [s for s in a if s in b and a[s][i] is not None and b[s][i] is not None]
        pairs = ({s: a[s][i] for s in seeds}, {s: b[s][i] for s in seeds})
        out.append(paired_difference(*pairs) if seeds else None)
    return out


def _cost_ratio(records, uniform, key: str) -> dict[str, Any]:
    ratios = {s: r[key] / uniform[s][key] for s, r in records.items() if s in uniform}
    return {"per_seed": ratios, "mean": statistics.fmean(ratios.values())} if ratios else {}


def report(results: list[JobResult], config: MultiExitConfig) -> Report:
    # A training job's record comes with its evaluation's (the job named as the network).
    results = [r for r in results if not is_training_job(r.name)]
    by_job: dict[str, dict[int, dict[str, Any]]] = {}
    params: dict[str, dict[str, Any]] = {}
    for r in results:
        by_job.setdefault(r.name, {})[r.seed] = r.record
        params[r.name] = r.params
    trained = {n: recs for n, recs in by_job.items() if params[n]["method"] != SELECT_L2S}
    first = next(iter(next(iter(trained.values())).values()))
    costs = first["step_costs"]
    budget_macs = [b * costs[-1] for b in config.budgets]
    lines = [
        _line(name, params[name], curve, records, budget_macs, config.epochs)
        for name, records in trained.items()
        for curve in next(iter(records.values()))["curves"]
    ]
    selected = [
        _selected_line(curve, records)
        for name, records in by_job.items()
        if params[name]["method"] == SELECT_L2S
        for curve in ("confidence", "policy")
        if any(pick["job"] for pick in next(iter(records.values()))["chosen"][curve])
    ]
    by_key = {line["key"]: line for line in lines}
    paired, paired_exits, cost_ratio = {}, {}, {}
    if "uniform" in by_job:
        base, uniform = by_key["uniform"], by_job["uniform"]
        for line in lines + selected:
            if line is not base:
                paired[line["key"]] = _paired(line, base, "budget_accuracy_per_seed")
        for line in lines:  # the plain lines (the network stopped at fixed exits)
            if line["curve"] == "confidence" and line is not base:
                paired_exits[line["key"]] = _paired(line, base, "anytime_accuracy_per_seed")
        for name, records in trained.items():
            cost_ratio[name] = {
                "cpu": _cost_ratio(records, uniform, "train_cpu_seconds"),
                "wall": _cost_ratio(records, uniform, "train_seconds"),
            }
    gain_vs_confidence = {
        line["job"]: paired_difference(
            line["worst_gain_per_seed"], by_key[line["job"]]["worst_gain_per_seed"]
        )
        for line in lines
        if line["curve"] == "gain"
    }

    def per_job(key: str) -> dict[str, Any]:
        return {r.id: r.record[key] for r in results if key in r.record}

    summary_results = {
        "data": first["data"],
        "updates": first["updates"],
        "step_costs": costs,
        "budgets": config.budgets,
        "budget_macs": budget_macs,
        "budget_labels": budget_labels(len(config.budgets)),
        "p_grid": P_GRID,
        "seeds": sorted({r.seed for r in results}),
        "lines": lines,
        "l2s_selected": selected,
        "dominance": {line["label"]: line["dominance"] for line in lines},
        "gain_minus_confidence_worst_gain": gain_vs_confidence,
        "paired_vs_uniform": paired,
        "paired_exits_vs_uniform": paired_exits,
        "train_seconds_vs_uniform": cost_ratio,
        "weight_log": per_job("weight_log"),
        "weights_final": {
            i: {k: v for k, v in w.items() if k != "per_exit_quantiles"}
            for i, w in per_job("weights_final").items()
        },
        "test_groups": per_job("test_groups"),
        "timing": per_job("timing"),
    }
    colors = {name: f"C{i % 10}" for i, name in enumerate(trained)}  # a job's, in every figure
    figures = {
        "accuracy_vs_macs": _accuracy_figure(lines, costs, budget_macs, first["data"], colors),
        "per_exit_accuracy": _exit_figure(lines, len(costs), colors),
    }
    weighted = per_job("weights_vs_loss")
    if weighted:
        figures["weights_vs_loss"] = _weights_figure(*next(iter(weighted.items())))
    table = _table(summary_results, config)
    return Report(summary_results, table, figures, _summary(summary_results))


def _at_budget(line: dict[str, Any], i: int) -> str | None:
    """A line's accuracy at budget ``i``, ``mean ± sd`` in points; the mean alone where one seed
    has no sd, and how many of the seeds reach the budget where some do not."""
    mean, n = line["budget_accuracy_mean"][i], line["budget_accuracy_seeds"][i]
    if mean is None:
        return None
    text = format_mean_and_sd(mean, line["budget_accuracy_sd"][i], n, scale=100)
    total = len(line["budget_accuracy_per_seed"])
    return text if n == total else f"{text} ({n} of {total} seeds)"


def _reach_text(results: dict[str, Any]) -> str:
    """The mean costs the lines' curves span, cheapest to dearest, as shares of the full MACs."""
    full = float(results["step_costs"][-1])
    costs = [p["mean_cost"] / full for line in results["lines"] for p in line["curve_mean"]]
    return f"{min(costs):.0%}–{max(costs):.0%}"


def _interval_text(d: dict[str, Any] | None, seeds: int | None = None) -> str | None:
    """In points; where fewer of the run's ``seeds`` reach it, how many do."""
    if d is None:
        return None
    fewer = f" (n = {d['n']})" if seeds is not None and 1 < d["n"] < seeds else ""
    return format_interval(d, scale=100, no_interval=" (n = 1)") + fewer


def _beta_text(beta: float | None, job: str | None) -> str:
    return "—" if job is None else "∞" if beta is None else f"{beta:g}"


def _layout(timing: dict[str, Any]) -> str:
    """Which inference copy a timing ran on: where its channels-last steps start."""
    if "layout" not in timing:  # a record from before the layout was measured
        return "the default inference copy"
    return f"{layout_text(timing['layout']['channels_last_from'])} (the fastest here)"


def _section(text: str, rows: list[dict[str, Any]], columns: list[tuple]) -> list[str]:
    """A paragraph and its table, each after a blank line."""
    return ["", text, "", markdown_table(rows, columns)]


def _table(results: dict[str, Any], config: MultiExitConfig) -> str:
    budgets, labels = results["budgets"], results["budget_labels"]
    heads = [f"{100 * b:g}% MACs ({lab})" for b, lab in zip(budgets, labels, strict=True)]
    K = len(results["step_costs"])
    rows = []
    for line in results["lines"] + results["l2s_selected"]:
        row = {f"b{i}": _at_budget(line, i) for i in range(len(budgets))}
        row.update(label=line["label"], sec=line.get("seconds_per_epoch_mean"))
        if "anytime_accuracy_mean" in line:
            row["anytime"] = " / ".join(f"{100 * m:.2f}" for m in line["anytime_accuracy_mean"])
            row["val"] = " / ".join(f"{100 * m:.2f}" for m in line["val_anytime_accuracy_mean"])
        rows.append(row)
    data = results["data"]
    costs = " / ".join(f"{c / 1e6:.3g}" for c in results["step_costs"])
    seeds = len(results["seeds"])
    intro = (
        f"{data['dataset']}: {data['train']} train / {data['validation']} validation / "
        f"{data['test']} test; {K}-exit CNN, channels {config.channels}, cumulative MMACs per "
        f"exit {costs}; {config.epochs} epochs = {results['updates']} SGD updates of batch "
        f"{config.batch_size}; {over_seeds(results['seeds'])}. Accuracy at each budget is "
        "interpolated on the test curve of MSDNet's 39 exit distributions (thresholds fitted on "
        "validation); the exit columns are the same network stopped at each fixed exit (test; "
        "validation beside it)."
    )
    parts = _section(
        intro,
        rows,
        [
            ("label", "method", "s"),
            *[(f"b{i}", f"acc % @ {h}", "s") for i, h in enumerate(heads)],
            ("anytime", f"exit 1…{K} test acc %", "s"),
            ("val", f"exit 1…{K} val acc %", "s"),
            ("sec", "train s/epoch", ".1f"),
        ],
    )[1:]  # no blank line before the first paragraph
    if any(row[f"b{i}"] is None for row in rows for i in range(len(budgets))):
        parts += [
            "",
            "'—': the budget lies outside every seed's curve (the curves' points spend "
            f"{_reach_text(results)} of the full MACs on test); the exit columns give the "
            "network's accuracy at each fixed exit.",
        ]
    parts += [
        "",
        "Each curve (mean over seeds) against the same network stopped at fixed exits (the best "
        "mix of two exits with at most the same mean MACs):",
        *(
            f"- {dominance_line(k, v, 'points', 100, 'MACs')}"
            for k, v in results["dominance"].items()
        ),
    ]
    gains = results["gain_minus_confidence_worst_gain"]
    if gains:
        parts += [
            "",
            "Worst gain over fixed depth, gain head − confidence thresholds of the same network "
            "(accuracy points, paired over seeds, 95% interval): "
            + "; ".join(f"{job}: {_interval_text(d, seeds)}" for job, d in gains.items())
            + ".",
        ]
    for line in results["l2s_selected"]:
        jobs = line["chosen_job_per_seed"]
        chosen = "; ".join(
            f"seed {s}: " + ", ".join(map(_beta_text, betas, jobs[s]))
            for s, betas in line["chosen_beta_per_seed"].items()
        )
        parts += [
            "",
            f"{line['label']}: β chosen per budget (∞ = uniform training; — : no candidate "
            f"reaches the budget on validation): {chosen}.",
        ]
    if results["paired_vs_uniform"]:
        paired_rows = []
        for line in results["lines"] + results["l2s_selected"]:
            if line["key"] == "uniform":
                continue
            differences = enumerate(results["paired_vs_uniform"][line["key"]])
            row = {"label": f"{line['label']} − uniform"}
            row.update({f"b{i}": _interval_text(d, seeds) for i, d in differences})
            ratio = results["train_seconds_vs_uniform"].get(line["job"], {})
            row["cpu"] = ratio.get("cpu", {}).get("mean") if line["curve"] == "confidence" else None
            paired_rows.append(row)
        spread = (
            f"mean over {seeds} seeds with its 95% Student-t interval"
            if seeds > 1
            else "one seed: the difference alone, no interval"
        )
        parts += _section(
            f"Paired differences against uniform training (accuracy points, {spread}; each pair "
            "shares initial weights and batch order), and training CPU time relative to uniform:",
            paired_rows,
            [
                ("label", "pair", "s"),
                *[(f"b{i}", f"Δ @ {h}", "s") for i, h in enumerate(heads)],
                ("cpu", "train CPU × uniform", ".2f"),
            ],
        )
    if results["paired_exits_vs_uniform"]:
        exit_rows = [
            {
                "label": f"{key} − uniform",
                **{f"e{k}": _interval_text(d, seeds) for k, d in enumerate(ds)},
            }
            for key, ds in results["paired_exits_vs_uniform"].items()
        ]
        parts += _section(
            "Per fixed exit (test accuracy points, paired, 95% interval):",
            exit_rows,
            [("label", "pair", "s"), *[(f"e{k}", f"exit {k + 1}", "s") for k in range(K)]],
        )
    real = all(line["adaptive_matches_dense"] for line in results["lines"])
    same = all(line["adaptive_matches_curve"] for line in results["lines"])
    parts += [
        "",
        f"Every curve point's rule (chosen on validation) run for real with run_adaptive(mode="
        f"{config.inference_mode!r}) on the test split: exits equal the vectorised evaluation's "
        f"in every run: {'yes' if real else 'NO'}; accuracy and mean MACs equal the curve's: "
        f"{'yes' if same else 'NO'}.",
    ]
    timing_rows = [
        {
            "job": job,
            **row,
            "budget": f"{100 * float(name):g}%",
            "share": f"{100 / row['mac_ratio']:.0f}%",
            "copy": _layout(timing),
        }
        for job, timing in results["timing"].items()
        for name, row in timing["rules"].items()
    ]
    if timing_rows:
        timing = next(iter(results["timing"].values()))
        parts += _section(
            "Wall-clock of confidence early exit (run_adaptive, mode='shrink') vs the full network "
            f"(inference.time_adaptive), batch {timing['batch']}, median of {timing['repeats']}, "
            "on the inference copy in the last column:",
            timing_rows,
            [
                ("job", "job", "s"),
                ("budget", "budget", "s"),
                ("share", "MACs of the curve point timed (nearest the budget)", "s"),
                ("mac_ratio", "ideal speedup (MAC ratio)", ".2f"),
                ("speedup", "measured speedup", ".2f"),
                ("speedup_over_mac_ratio", "measured / ideal", ".2f"),
                ("seconds", "early exit s", ".3f"),
                ("copy", "inference copy timed", "s"),
            ],
        )
    if results["weight_log"]:
        weight_rows = []
        for job, log in results["weight_log"].items():
            final = results["weights_final"][job]
            q = dict(zip(final["quantile_levels"], final["quantiles"], strict=True))
            weight_rows.append(
                {
                    "job": job,
                    "steps": log["meta_steps"],
                    "range": f"{final['min']:.2f} … {final['max']:.2f}",
                    "q": f"{q[0.05]:.2f} / {q[0.5]:.2f} / {q[0.95]:.2f}",
                    "negative": 100 * log["negative_fraction"],
                    "grad": " / ".join(f"{g:.2g}" for g in log["meta_grad_norm_by_quarter"]),
                }
            )
        parts += _section(
            "L2W's weights: meta steps, the weights it ended with on the training rows (range; "
            "5% / 50% / 95% quantiles), the share of negative weights over training, and the "
            "mean meta-gradient norm per quarter of training:",
            weight_rows,
            [
                ("job", "job", "s"),
                ("steps", "meta steps", "d"),
                ("range", "final w range", "s"),
                ("q", "w 5/50/95%", "s"),
                ("negative", "negative %", ".2f"),
                ("grad", "‖∇φ‖ by quarter", "s"),
            ],
        )
    return "\n".join(parts)


def _summary(results: dict[str, Any]) -> str:
    """The L2W − uniform line at the lowest budget (no timings: results.json is compared)."""
    d = (results["paired_vs_uniform"].get("l2w") or [None])[0]
    if d is None:
        return f"multi-exit: {len(results['lines'])} curve(s) over {len(results['seeds'])} seed(s)"
    return (
        f"L2W − uniform at {100 * results['budgets'][0]:g}% of the MACs: "
        f"{_interval_text(d)} accuracy points (paired over {d['n']} seed(s))"
    )


def _accuracy_figure(lines, step_costs, budget_macs, data, colors):
    figure, axes = new_figure(10.0, 4.5)
    exit_macs = [c / 1e6 for c in step_costs]
    for line in lines:
        points = line["curve_mean"]
        axes.plot(
            [p["mean_cost"] / 1e6 for p in points],
            [100 * p["accuracy"] for p in points],
            color=colors[line["job"]],
            linestyle={"confidence": "-", "policy": "--", "gain": ":"}[line["curve"]],
            label=line["label"],
        )
        if line["curve"] == "confidence":  # the same network at its fixed exits
            exits = [100 * m for m in line["anytime_accuracy_mean"]]
            axes.plot(exit_macs, exits, "s", markersize=4, color=colors[line["job"]])
    for i, macs in enumerate(budget_macs):
        label = "budgets (share of full MACs)" if i == 0 else None
        axes.axvline(macs / 1e6, color="gray", linewidth=0.6, linestyle=(0, (1, 3)), label=label)
    cost = "mean MMACs per test sample (squares: fixed exits)"
    title = f"{data['dataset']}: budgeted classification (mean over seeds)"
    finish_axes(axes, cost, "test accuracy (%)", title, outside=True, grid=False)
    return figure


def _exit_figure(lines, exits: int, colors):
    figure, axes = new_figure(6.0, 4.0)
    for line in lines:
        if line["curve"] != "confidence":
            continue
        axes.errorbar(
            range(1, exits + 1),
            [100 * m for m in line["anytime_accuracy_mean"]],
            yerr=[100 * s for s in line["anytime_accuracy_sd"]],
            marker="o",
            capsize=3,
            color=colors[line["job"]],
            label=line["label"],
        )
    axes.set_xticks(range(1, exits + 1))
    title = "Accuracy per fixed exit (mean ± sd over seeds)"
    finish_axes(axes, "exit", "test accuracy (%)", title, grid=False)
    return figure


def _weights_figure(job: str, data: dict[str, Any]):
    K = len(data["losses"])
    figure, axes = new_figure(3.0 * K, 3.0)
    figure.clf()
    for k in range(K):
        ax = figure.add_subplot(1, K, k + 1)
        ax.scatter(data["losses"][k], data["weights"][k], s=3, alpha=0.4)
        ax.axhline(1.0, color="gray", linewidth=0.6)
        ax.axhline(0.0, color="red", linewidth=0.6, linestyle=":")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(left=0)
        ax.set_xlabel(f"CE at exit {k + 1}")
        if k == 0:
            ax.set_ylabel("learned weight w")
    rows = len(data["losses"][0])  # the first 1,000 training samples, or all where fewer
    figure.suptitle(f"{job}: learned weights vs loss ({rows:,} training samples)")
    return figure
