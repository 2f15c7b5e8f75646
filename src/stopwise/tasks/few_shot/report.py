"""The few-shot table (every method's test accuracy or MSE and mean inner steps; MAML-stop
against the best fixed-T MAML, paired over the same test tasks and over seeds), the table by K,
the budget curve beside fixed depth, and the figures: quality vs K per method, stop steps per K,
query loss vs inner step per K, and the budget curve. Nothing is selected here."""

from __future__ import annotations

import statistics
from typing import Any

from ...contract import JobResult, Report
from ...curves import dominance, dominance_line, mean_curve
from ...reporting import finish_axes, in_x_order, markdown_table, new_figure, points_xy
from ...stats import format_interval, format_mean_sd, mean_sd, paired_difference
from .config import FewShotConfig

__all__ = ["report"]

# (record key, label) of the rows; the job they come from is chosen in _rows.
METHODS = (
    ("fixed_full", "MAML, T = {T} (fixed)"),
    ("fixed_best", "MAML, T chosen on validation"),
    ("hand_stop", "MAML + hand-made stop (support loss ≤ τ)"),
    ("oracle", "MAML, oracle stop (uses query labels)"),
)
STOP_METHODS = (
    ("stop", "MAML-stop (threshold calibrated on validation)"),
    ("stop_official", "MAML-stop (official rule: λ ≥ 0.5)"),
    ("fixed_full", "MAML-stop learner, all {T} steps"),
    ("oracle", "MAML-stop learner, oracle stop (uses query labels)"),
)


def report(results: list[JobResult], config: FewShotConfig) -> Report:
    by_job: dict[str, dict[int, dict[str, Any]]] = {}
    for r in results:
        by_job.setdefault(r.name, {})[r.seed] = r.record
    seeds = sorted(by_job["compare"])
    name = "mse" if config.family == "sinusoid" else "accuracy"
    unit = "test MSE" if name == "mse" else "test accuracy (%)"
    fmt = ".4f" if name == "mse" else ".2f"
    stop_jobs = by_job["maml-stop"]
    compare = by_job["compare"]
    # Each seed's own best fixed-T MAML (chosen on its validation tasks): seeds may choose
    # different T where maml_steps has several values.
    best_maml = {s: by_job[compare[s]["best_maml"]["job"]][s] for s in seeds}

    rows: list[dict[str, Any]] = []

    def add(label: str, per_seed: list[dict[str, Any]]):
        values = [p["mean"] for p in per_seed]
        row = {"method": label, "value": format_mean_sd(values, fmt)}
        if len(per_seed) == 1 and per_seed[0].get("lo") is not None:
            row["value"] += f" [{per_seed[0]['lo']:{fmt}}, {per_seed[0]['hi']:{fmt}}]"
        steps = [p.get("mean_steps", p.get("depth")) for p in per_seed]
        row["steps"] = format_mean_sd(steps, ".2f")
        rows.append(row)

    for T in config.maml_steps:
        job = by_job[f"maml-T{T}"]
        for key, label in METHODS:
            if len(config.maml_steps) > 1 and "{T}" not in label:  # say which MAML it is
                label = label.replace("MAML", "MAML (trained for T = {T})", 1)
            add(label.format(T=T), [job[s]["test"][key] for s in seeds])
    for key, label in STOP_METHODS:
        add(label.format(T=config.steps), [stop_jobs[s]["test"][key] for s in seeds])
    table = markdown_table(
        rows, [("method", "method", "s"), ("value", unit, "s"), ("steps", "mean inner steps", "s")]
    )
    intervals = "95% interval over the test tasks" if len(seeds) == 1 else "mean ± sd over seeds"
    table += (
        f"\n\n{len(seeds)} seed(s); {config.test_tasks} test tasks per seed ({intervals}); "
        f"{_setting(config)}. MAML-stop (calibrated) and MAML's hand-made stop adapt each task "
        f"for real through run_adaptive(mode={config.inference_mode!r}); the other stop rows apply "
        "their rule to the full trajectory (the same stops, checked on every real run). Every "
        "threshold, tolerance and depth was chosen on validation tasks."
    )

    # MAML-stop against the best fixed-T MAML.
    paired = {s: compare[s]["stop_minus_best"] for s in seeds}
    over_seeds = (
        paired_difference(
            {s: compare[s]["stop_value"] for s in seeds},
            {s: compare[s]["best_maml"]["test_value"] for s in seeds},
        )
        if len(seeds) > 1
        else None
    )
    lines = ["", "", "MAML-stop − best fixed-T MAML (chosen on validation), paired:", ""]
    for s in seeds:
        p, c = paired[s], compare[s]
        lines.append(
            f"- seed {s}: {format_interval(p, '+' + fmt)} over "
            f"{p['n']} test tasks; best MAML = {c['best_maml']['job']} at depth "
            f"{c['best_maml']['depth']}; MAML-stop mean steps {c['stop_mean_steps']:.2f}"
            + (f"; MSE ratio {c['mse_ratio']:.3f}" if "mse_ratio" in c else "")
        )
    if over_seeds is not None:
        over = format_interval(over_seeds, "+" + fmt)
        lines.append(f"- over {over_seeds['n']} seeds: {over}")
    spearman = [stop_jobs[s]["test"]["stop"]["spearman_steps_shots"] for s in seeds]
    known = [r for r in spearman if r is not None]
    if known:
        fewer = (
            ""
            if len(known) == len(seeds)
            else f" ({len(known)} of {len(seeds)} seeds; undefined on the others: constant steps)"
        )
        lines.append(
            f"- Spearman ρ(MAML-stop stop step, K) on test tasks: "
            f"{format_mean_sd(known, '+.3f')}{fewer}"
        )
    oracle_rho = [stop_jobs[s]["test"]["oracle"]["spearman_steps_shots"] for s in seeds]
    if None not in oracle_rho:
        lines.append(
            f"- Spearman ρ(oracle stop step, K), MAML-stop learner: "
            f"{format_mean_sd(oracle_rho, '+.3f')}"
        )
    table += "\n".join(lines)
    table += "\n\n" + _shots_table(best_maml, stop_jobs, seeds, fmt)
    curve_table, verdicts = _curve_table(stop_jobs, seeds, name, fmt)
    table += "\n\n" + curve_table

    data = _data(config)
    summary = (
        f"few-shot ({config.family}): MAML-stop {format_mean_sd([compare[s]['stop_value'] for s in seeds], fmt)} "
        f"at {statistics.fmean(compare[s]['stop_mean_steps'] for s in seeds):.2f} mean steps vs best "
        f"fixed-T MAML {format_mean_sd([compare[s]['best_maml']['test_value'] for s in seeds], fmt)}; "
        f"{summary_difference(paired, over_seeds, fmt)}"
    )
    return Report(
        results={
            "metric": name,
            "rows": rows,
            "stop_minus_best": paired,
            "stop_minus_best_over_seeds": over_seeds,
            "mse_ratio": [compare[s].get("mse_ratio") for s in seeds],
            "spearman_steps_shots": spearman,
            "dominance": verdicts,
            "seeds": seeds,
            "jobs": {job: {str(s): r for s, r in recs.items()} for job, recs in by_job.items()},
        },
        table=table,
        figures={
            "quality_by_shots": _quality_by_shots(best_maml, stop_jobs, seeds, name, data),
            "stop_steps_by_shots": _steps_by_shots(stop_jobs, seeds, name, data, config.steps),
            "query_loss_by_step": _loss_by_step(best_maml, stop_jobs, seeds, data),
            "budget_curve": _budget_figure(best_maml, stop_jobs, seeds, name, data),
        },
        summary=summary,
    )


def summary_difference(
    paired: dict[int, dict[str, Any]], over_seeds: dict[str, Any] | None, fmt: str
) -> str:
    """The summary's MAML-stop − best fixed-T MAML: the paired interval over seeds where there
    are two or more, else the one seed's paired interval over its test tasks."""
    if over_seeds is not None:
        over = format_interval(over_seeds, "+" + fmt)
        return f"paired difference over {over_seeds['n']} seeds {over}"
    ((seed, first),) = paired.items()
    return (
        f"paired difference (seed {seed}, over its {first['n']} test tasks) "
        f"{format_interval(first, '+' + fmt)}"
    )


def _data(config: FewShotConfig) -> str:
    """The task family's data, for titles."""
    if config.family == "sinusoid":
        return "sinusoids"
    return "Omniglot" if config.data_dir else "rendered glyphs"


def _shots(name: str) -> str:
    """The K axis: shots per class for classification, shots (support points) for regression."""
    return "K (shots)" if name == "mse" else "K (shots per class)"


def _setting(config: FewShotConfig) -> str:
    K = (
        f"K ∈ {config.shots[0]}..{config.shots[1]}"
        if config.shots[0] < config.shots[1]
        else (f"K = {config.shots[0]}")
    )
    if config.family == "sinusoid":
        return f"sinusoids, {K}, {config.query} query points, MLP {config.hidden}"
    return (
        f"{_data(config)}, {config.ways}-way {K}, {config.query} query per class, Conv4 "
        f"{config.width} filters, inner lr {config.inner_lr}"
    )


def _by_k(records: dict[int, dict[str, Any]], key: str) -> dict[int, list[Any]]:
    """Per K (ascending), ``key`` of the by-K row of every seed whose test tasks have that K:
    rows are matched by K, never by position (seeds' test tasks may cover different K)."""
    values: dict[int, list[Any]] = {}
    for record in records.values():
        for row in record["test"]["by_shots"]:
            values.setdefault(int(row["shots"]), []).append(row.get(key))
    return dict(sorted(values.items()))


def _mean_by_k(records: dict[int, dict[str, Any]], key: str) -> dict[int, float | None]:
    """Per K, the mean over the seeds that have K of their mean ``key`` (None where a seed's
    row lacks it)."""
    return {
        k: None if None in values else _mean_over_seeds(values)
        for k, values in _by_k(records, key).items()
    }


def _mean_over_seeds(values: list[float]) -> float:
    return mean_sd(values)[0]


def _shots_table(
    best_maml: dict[int, dict[str, Any]], stop: dict[int, dict[str, Any]], seeds, fmt: str
) -> str:
    """The by-K table: each seed's best fixed-T MAML and MAML-stop, averaged per K over the
    seeds whose test tasks have that K (a column says how many where some seed lacks it)."""
    maml = {s: best_maml[s] for s in seeds}
    stop = {s: stop[s] for s in seeds}
    scale = 100.0 if fmt == ".2f" else 1.0

    def scaled(column: dict[int, float | None]) -> dict[int, float | None]:
        return {k: None if v is None else scale * v for k, v in column.items()}

    columns = {
        "maml_best": scaled(_mean_by_k(maml, "fixed_best")),
        "hand": scaled(_mean_by_k(maml, "hand_stop")),
        "hand_steps": _mean_by_k(maml, "hand_stop_steps"),
        "stop": scaled(_mean_by_k(stop, "stop")),
        "stop_steps": _mean_by_k(stop, "stop_steps"),
        "oracle_steps": _mean_by_k(stop, "oracle_steps"),
    }
    seed_counts = {k: len(v) for k, v in _by_k(stop, "shots").items()}
    rows = [
        {"K": k, "seeds": n, **{name: column.get(k) for name, column in columns.items()}}
        for k, n in seed_counts.items()
    ]
    spec = [
        ("K", "K", "d"),
        ("maml_best", "best fixed-T MAML", fmt),
        ("hand", "hand-made stop", fmt),
        ("hand_steps", "its steps", ".2f"),
        ("stop", "MAML-stop", fmt),
        ("stop_steps", "its steps", ".2f"),
        ("oracle_steps", "oracle stop step", ".2f"),
    ]
    title = "By K (test tasks, mean over seeds"
    if any(n < len(seeds) for n in seed_counts.values()):
        spec.insert(1, ("seeds", f"seeds with this K (of {len(seeds)})", "d"))
        title += " that have the K"
    title += "; each seed's own best fixed-T MAML):\n\n"
    return title + markdown_table(rows, spec)


def _curve_table(stop_jobs, seeds: list[int], name: str, fmt: str) -> tuple[str, dict[str, Any]]:
    """The budget curve (mean over seeds) beside the same learner at fixed depth (each seed
    against its own: the best mix of two depths with at most the same mean steps), and the
    dominance verdict of every head (the gain head's where the run fitted one)."""
    fixed = [stop_jobs[s]["fixed_depth"] for s in seeds]
    higher = name == "accuracy"
    unit = "points" if higher else "MSE"  # accuracy is in percent already
    heads = {"MAML-stop": "stop_curve", "MAML-stop learner, gain head": "gain_curve"}
    verdicts, tables = {}, []
    for label, key in heads.items():
        if key not in stop_jobs[seeds[0]]:
            continue
        curves = [stop_jobs[s][key] for s in seeds]
        verdicts[label] = verdict = dominance(curves, fixed, name, higher_is_better=higher)
        rows = [
            {**p, "fixed": p[name] - (1 if higher else -1) * g["gain"]}
            for p, g in zip(mean_curve(curves), verdict["gains"], strict=True)
        ]
        tables.append(
            f"Budget curve of {label} (thresholds fitted on validation) beside its learner at "
            "fixed depth (the best mix of two depths with the same mean steps):\n\n"
            + markdown_table(
                rows,
                [
                    ("budget", "budget (steps)", ".2f"),
                    ("mean_steps", "test mean steps", ".2f"),
                    (name, f"{label} {name}", fmt),
                    ("fixed", f"fixed-depth {name}", fmt),
                ],
            )
            + "\n\n"
            + dominance_line(label, verdict, unit)
        )
    return "\n\n".join(tables), verdicts


def _quality_by_shots(best_maml, stop_jobs, seeds, name: str, data: str):
    figure, axes = new_figure(6.5, 3.5)
    scale = 100.0 if name == "accuracy" else 1.0
    maml = {s: best_maml[s] for s in seeds}
    stop = {s: stop_jobs[s] for s in seeds}
    series = (
        (maml, "fixed_best", "best fixed-T MAML", "s--"),
        (maml, "hand_stop", "hand-made stop", "^:"),
        (stop, "stop", "MAML-stop", "o-"),
        (stop, "oracle", "MAML-stop oracle", "x:"),
    )
    for records, key, label, style in series:
        by_k = _by_k(records, key)  # each K averaged over the seeds that have it
        shots = list(by_k)
        values = [scale * statistics.fmean(by_k[k]) for k in shots]
        axes.plot(shots, values, style, markersize=4, label=label)
    measure = "MSE" if name == "mse" else "accuracy"
    title = f"Test {measure} by K ({data}, mean over {len(seeds)} seed(s))"
    counts = {k: len(v) for k, v in _by_k(stop, "shots").items()}
    fewer = [f"{k}: {n}" for k, n in counts.items() if n < len(seeds)]
    if fewer:
        title += f"; seeds with K where fewer: {', '.join(fewer)}"
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # K is a whole number
    _finish_axes(axes, name, _shots(name), title)
    return figure


def _steps_by_shots(stop_jobs, seeds, name: str, data: str, T: int):
    figure, axes = new_figure()
    shots_all, steps_all = [], []
    for s in seeds:
        shots_all += stop_jobs[s]["test"]["shots"]
        steps_all += stop_jobs[s]["test"]["stop"]["steps_per_task"]
    ks = sorted(set(shots_all))
    groups = [[st for k2, st in zip(shots_all, steps_all, strict=True) if k2 == k] for k in ks]
    axes.boxplot(groups, positions=ks, widths=0.6)
    axes.plot(ks, [statistics.fmean(g) for g in groups], "o-", markersize=3, label="mean")
    axes.set_ylim(0.5, T + 0.5)  # all T steps: a flat line at T is not blown up into a band
    title = f"MAML-stop stop step by K ({data}, {len(seeds)} seed(s) pooled)"
    finish_axes(axes, _shots(name), "MAML-stop stop step (test tasks)", title, title_size=8)
    return figure


def _loss_by_step(best_maml, stop_jobs, seeds, data: str):
    figure, axes = new_figure()
    for record, style, label in (
        (stop_jobs[seeds[0]], "-", "MAML-stop learner"),
        (best_maml[seeds[0]], "--", "MAML"),
    ):
        curves = record["test"]["query_loss_by_shots"]
        for i, row in enumerate(curves):
            if len(curves) > 4 and i % max(1, len(curves) // 4):
                continue
            steps = list(range(1, len(row["query_loss"]) + 1))
            axes.plot(
                steps,
                row["query_loss"],
                style,
                color=f"C{i % 10}",  # one colour per K, solid for MAML-stop, dashed for MAML
                label=f"{label}, K = {row['shots']}",
            )
    axes.set_yscale("log")
    title = f"Query loss by inner step ({data}, seed {seeds[0]} only)"
    finish_axes(axes, "inner step", "mean query loss (test tasks)", title, title_size=8, legend=6)
    return figure


def _budget_figure(best_maml, stop_jobs, seeds, name: str, data: str):
    figure, axes = new_figure(7.5, 3.5)

    def mean_xy(curves):
        return points_xy(in_x_order(mean_curve(curves)), name)

    def by_depth(curves):
        """Fixed-depth points averaged per depth over the seeds that have it (seeds' best
        MAML may differ in T, so their curves may differ in length)."""
        depths: dict[int, list[float]] = {}
        for curve in curves:
            for point in curve:
                depths.setdefault(int(point["depth"]), []).append(float(point[name]))
        return [float(d) for d in sorted(depths)], [
            statistics.fmean(depths[d]) for d in sorted(depths)
        ]

    stop, maml = stop_jobs, best_maml
    series = [
        (
            mean_xy([stop[s]["stop_curve"] for s in seeds]),
            "o-",
            "MAML-stop (thresholds from validation)",
        ),
        (
            mean_xy([stop[s]["fixed_depth"] for s in seeds]),
            "s--",
            "MAML-stop learner, fixed depth",
        ),
        (by_depth([maml[s]["fixed_depth"] for s in seeds]), "d--", "MAML, fixed depth"),
    ]
    # A hand-made stop's curve lies on its MAML's budget grid: one curve per T the seeds chose,
    # never a point-wise mean of grids of other lengths.
    by_T: dict[int, list[int]] = {}
    for s in seeds:
        by_T.setdefault(int(maml[s]["steps"]), []).append(s)
    for T, group in sorted(by_T.items()):
        label = "MAML + hand-made stop" if len(by_T) == 1 else f"MAML T={T} + hand-made stop"
        if len(group) < len(seeds):
            label += f" ({len(group)} of {len(seeds)} seeds)"
        series.append((mean_xy([maml[s]["hand_curve"] for s in group]), "^:", label))
    if "gain_curve" in stop[seeds[0]]:
        series.append(
            (mean_xy([stop[s]["gain_curve"] for s in seeds]), "v-", "MAML-stop learner, gain head")
        )
    # A diverged task puts an MSE mean orders of magnitude above the rest: clip it to the frame.
    top = 5 * statistics.median(v for (_, y), _, _ in series for v in y) if name == "mse" else None
    for (x, y), style, label in series:
        if top is not None and max(y) > top:
            label += " (clipped: a diverged task)"
            y = [min(v, top) for v in y]
        axes.plot(x, y, style, markersize=3, label=label)
    title = f"Budget curves ({data}, mean over {len(seeds)} seed(s))"
    _finish_axes(axes, name, "mean inner steps per task", title)
    return figure


def _finish_axes(axes, name: str, xlabel: str, title: str) -> None:
    """The y axis of a few-shot figure: test MSE (log, ticks at 1, 2 and 5 per decade, so a
    narrow range still has labels) for regression, accuracy otherwise."""
    if name == "mse":
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

        axes.set_yscale("log")
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axes.yaxis.set_minor_formatter(NullFormatter())
    ylabel = "test MSE" if name == "mse" else "test accuracy (%)"
    finish_axes(axes, xlabel, ylabel, title, title_size=8, outside=True)
