"""The table (with the paper's Table 2 beside ours), the paired comparisons over seeds and the
figures of a sparse-recovery run, from the job records. Nothing is selected here."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from ...contract import JobResult, Report
from ...reporting import markdown_table, new_figure
from ...stats import format_mean_sd, mean_sd, paired_difference
from .config import SparseRecoveryConfig
from .experiment import STOP_MODELS
from .metrics import column_names

__all__ = ["PAPER", "PAPER_SCHEDULE", "schedules", "report"]

# L2S (Chen et al. 2020), Table 2: NMSE (dB), mixed / 20 / 30 / 40 dB.
PAPER: dict[str, tuple[float, float, float, float]] = {
    "ista-20": (-9.17, -9.12, -9.24, -9.16),
    "ista-100": (-14.66, -13.99, -14.99, -15.07),
    "fista-20": (-11.12, -10.98, -11.19, -11.19),
    "fista-100": (-18.96, -16.75, -20.46, -20.97),
    "lista": (-17.53, -16.53, -18.07, -18.20),
    "lista_stop-sampled": (-22.41, -20.29, -23.90, -24.21),
}

# The paper's training schedules, (steps, batch).
PAPER_SCHEDULE = {"lista": (100_000, 512), "stage1": (50_000, 1024), "stage2": (40_000, 256)}

# The protocol the paper's numbers were measured on; they are printed only for runs of it.
PAPER_PROTOCOL = {"m": 250, "n": 500, "condition": 5.0, "sparsity": 0.1, "steps": 20}

STOP_LABELS = {"lista_stop": "LISTA-stop", "cpss_stop": "LISTA-CP-SS-stop (ALISTA start)"}
STOP_RULES = ("sampled", "threshold", "oracle", "full")


def _k(steps: int) -> str:
    return f"{steps / 1000:g}k" if steps >= 1000 else str(steps)


def schedules(config: SparseRecoveryConfig) -> dict[str, tuple[str, bool]]:
    """Per trained model: (schedule text, shortened relative to the paper's)."""
    lista = (config.lista.steps, config.lista.batch)
    stage1 = (config.stage1.steps, config.stage1.batch)
    stage2 = (config.stage2.steps, config.stage2.batch)

    def shorter(ours, paper):
        return ours[0] * ours[1] < paper[0] * paper[1]

    a, c = config.alista, config.cpss
    cpss = (
        f"ALISTA {_k(a.steps)}×{a.batch}; I {_k(c.stage1_steps)}×{c.batch}; "
        f"II {_k(c.stage2_steps)}×{config.stage2.batch}"
    )
    return {
        "lista": (f"{_k(lista[0])}×{lista[1]}", shorter(lista, PAPER_SCHEDULE["lista"])),
        "lista_stop": (
            f"I {_k(stage1[0])}×{stage1[1]} from {config.stage1.init.upper()}; "
            f"II {_k(stage2[0])}×{stage2[1]}",
            shorter(stage1, PAPER_SCHEDULE["stage1"]) or shorter(stage2, PAPER_SCHEDULE["stage2"]),
        ),
        "alista": (f"{_k(a.steps)}×{a.batch}", False),
        "cpss_stop": (cpss, False),
    }


def _order(keys: set[str], first_rows: dict[str, dict]) -> list[str]:
    classical = sorted(
        (k for k in keys if k.startswith(("ista", "fista"))),
        key=lambda k: (first_rows[k]["mean_steps"], k),
    )
    learned = ["lista", *(f"lista_stop-{r}" for r in STOP_RULES)]
    learned += ["alista", *(f"cpss_stop-{r}" for r in STOP_RULES)]
    return classical + [k for k in learned if k in keys]


def _label(key: str, T: int, kinds: list[str]) -> tuple[str, str, str]:
    """(label, model, rule) of a row key."""
    if key.startswith(("ista", "fista")):
        algorithm, budget = key.split("-")
        return f"{algorithm.upper()} (T={budget})", key, "fixed"
    if key == "lista":
        return f"LISTA (T={T})", key, "fixed"
    if key == "alista":
        return f"ALISTA with support selection (T={T})", key, "fixed"
    model, rule = key.split("-")
    name = STOP_LABELS[model]
    text = {
        "sampled": f"{name}, sampled",
        "threshold": f"{name}, threshold ({'/'.join(sorted(set(kinds)))})",
        "oracle": f"{name}, oracle stop (needs x*)",
        "full": f"{name} model, all {T} layers",
    }[rule]
    return text, model, "full depth" if rule == "full" else rule


def _mean_curve(curves: list[list[dict[str, Any]]]) -> list[dict[str, float]]:
    """Point-wise mean over seeds of curves of equal length (numeric fields only)."""
    out = []
    for points in zip(*curves, strict=True):
        fields = [k for k, v in points[0].items() if isinstance(v, int | float)]
        out.append({k: statistics.fmean(p[k] for p in points) for k in fields})
    return out


def report(results: list[JobResult], config: SparseRecoveryConfig) -> Report:
    T, columns = config.problem.steps, column_names(config.problem.snrs)
    seeds = sorted({r.seed for r in results})
    rows: dict[int, dict[str, dict]] = defaultdict(dict)  # seed -> row key -> row
    curves: dict[int, dict[str, list]] = defaultdict(dict)  # seed -> model key -> per depth
    stops: dict[str, dict[int, dict]] = defaultdict(dict)  # stop model -> seed -> record
    for r in results:
        rows[r.seed].update(r.record.get("rows", {}))
        curves[r.seed].update(r.record.get("fixed_depth", {}))
        for name, (_, stop_job) in STOP_MODELS.items():
            if r.name == stop_job:
                stops[name][r.seed] = r.record
    _same_depth_baseline(rows, curves, f"ista-{T}")
    _add_timing(rows, stops)

    table_rows = []
    for key in _order(set(rows[seeds[0]]), rows[seeds[0]]):
        model = key.split("-")[0]
        kinds = [stops[model][s]["calibration"]["kind"] for s in seeds] if model in stops else []
        label, model, rule = _label(key, T, kinds)
        per_seed = {s: rows[s][key] for s in seeds}
        row = {"key": key, "label": label, "model": model, "rule": rule, "sd": {}}
        for field in (*columns, "mean_steps", "mean_cost", "wall_speedup"):
            values = [r[field] for r in per_seed.values() if field in r]
            if values:
                row[field], row["sd"][field] = mean_sd(values)
        for field in ("ista_same_depth", "matches_dense_selection"):
            if field in per_seed[seeds[0]]:
                row[field] = _combine([r[field] for r in per_seed.values()])
        row["per_seed"] = per_seed
        table_rows.append(row)

    paired = _paired(rows, curves, seeds, T)
    stop_models = {
        name: {
            "validation_nmse": statistics.fmean(
                r["calibration"]["validation_value"] for r in by_seed.values()
            ),
            "seeds": {
                s: {k: v for k, v in r.items() if k not in ("rows", "fixed_depth")}
                for s, r in by_seed.items()
            },
        }
        for name, by_seed in stops.items()
    }
    per_layer = {k: _mean_curve([curves[s][k] for s in seeds]) for k in curves[seeds[0]]}
    jobs = {r.id: {"seconds": r.seconds, "cpu_seconds": r.cpu_seconds} for r in results}
    out = {
        "task": {**vars(config.problem)},
        "columns": columns,
        "seeds": seeds,
        "rows": table_rows,
        "paired": paired,
        "per_layer": per_layer,
        "stop_models": stop_models,
        "jobs": jobs,
        "training_seconds": sum(r.seconds for r in results),
        "training_cpu_seconds": sum(r.cpu_seconds for r in results),
    }
    return Report(
        results=out,
        table=_table(out, config),
        figures=_figures(out, stops, seeds),
        summary=_summary(out),
    )


def _combine(values: list[Any]) -> Any:
    """Per-seed values of a row field as one: all() of flags, the mean of dicts of numbers."""
    if isinstance(values[0], bool):
        return all(values)
    return {k: statistics.fmean(v[k] for v in values) for k in values[0]}


def _at_depth(curve: list[dict], mean_steps: float) -> dict:
    """The point of a per-depth curve at depth ⌈mean_steps⌉."""
    return curve[min(math.ceil(mean_steps - 1e-9), len(curve)) - 1]


def _same_depth_baseline(rows, curves, baseline: str) -> None:
    """Give every stop row of each seed the NMSE of ``baseline`` (ISTA tuned for T) run for
    ⌈mean steps⌉ iterations: the comparison at the same mean depth."""
    for seed, by_key in rows.items():
        for key, row in by_key.items():
            if key.endswith(("-sampled", "-threshold", "-oracle")) and baseline in curves[seed]:
                point = _at_depth(curves[seed][baseline], row["mean_steps"])
                row["ista_same_depth"] = {k: v for k, v in point.items() if k != "mean_cost"}


def _add_timing(rows, stops) -> None:
    """Wall-clock speedup of each stop rule over the full-depth model (time_adaptive)."""
    for name, by_seed in stops.items():
        for seed, record in by_seed.items():
            for rule, timing in record.get("timing", {}).get("rules", {}).items():
                rows[seed][f"{name}-{rule}"]["wall_speedup"] = timing["speedup"]


def _paired(rows, curves, seeds: list[int], T: int) -> list[dict[str, Any]]:
    """Paired over seeds, mixed test NMSE (dB): a − b per seed, mean and 95% interval."""

    def mixed(key):
        return {s: rows[s][key]["mixed"] for s in seeds}

    def at_depth(curve, key):  # the model ``curve`` run for ⌈mean steps of row ``key``⌉
        return {s: _at_depth(curves[s][curve], rows[s][key]["mean_steps"])["mixed"] for s in seeds}

    comparisons, names = [], [n for n in STOP_MODELS if f"{n}-threshold" in rows[seeds[0]]]
    for name in names:
        row = f"{name}-threshold"
        comparisons += [
            (f"{name} threshold − its full depth", mixed(row), mixed(f"{name}-full")),
            (f"{name} threshold − itself at ⌈mean steps⌉", mixed(row), at_depth(name, row)),
            (
                f"{name} threshold − ISTA (T={T}) at ⌈mean steps⌉",
                mixed(row),
                at_depth(f"ista-{T}", row),
            ),
        ]
    if len(names) == 2:
        a, b = (f"{n}-threshold" for n in names[::-1])
        comparisons.append((f"{a} − {b}", mixed(a), mixed(b)))
    return [
        {"comparison": text, "metric": "mixed test NMSE (dB)", **paired_difference(a, b)}
        for text, a, b in comparisons
    ]


def _table(results: dict[str, Any], config: SparseRecoveryConfig) -> str:
    columns, seeds = results["columns"], results["seeds"]
    plan = schedules(config)
    problem = config.problem
    paper_protocol = all(getattr(problem, k) == v for k, v in PAPER_PROTOCOL.items())
    lines = []
    for row in results["rows"]:
        text, shortened = plan.get(row["model"], ("", False))
        if row["model"].startswith(("ista", "fista")):
            per_seed = row["per_seed"].values()
            L, lam = ("/".join(f"{r[k]:.3g}" for r in per_seed) for k in ("L", "lam"))
            text = f"tuned on val: L={L}, λ={lam}"
        paper = PAPER.get(row["key"]) if paper_protocol else None
        line = {
            "label": row["label"] + (" †" if shortened else ""),
            "paper": " / ".join(f"{v:.2f}" for v in paper) if paper else "",
            "schedule": text,
        }
        for field, fmt, scale in [
            *((c, ".2f", 1.0) for c in columns),
            ("mean_steps", ".2f", 1.0),
            ("mean_cost", ".2f", 1e-6),
            ("wall_speedup", ".2f", 1.0),
        ]:
            values = [r[field] for r in row["per_seed"].values() if field in r]
            line[field] = format_mean_sd(values, fmt, scale) if values else None
        lines.append(line)
    spec = [("label", "method", "s")]
    spec += [(c, c.replace("dB", " dB"), "s") for c in columns]
    spec += [
        ("mean_steps", "mean steps", "s"),
        ("mean_cost", "MMAC/sample", "s"),
        ("wall_speedup", "× full depth (wall)", "s"),
        ("paper", "paper (" + " / ".join(c.replace("dB", "") for c in columns) + ")", "s"),
        ("schedule", "training (steps×batch)", "s"),
    ]
    paired = markdown_table(
        [
            {
                "comparison": p["comparison"],
                "mean": f"{p['mean']:+.2f}",
                "interval": "—" if p["lo"] is None else f"[{p['lo']:+.2f}, {p['hi']:+.2f}]",
                "n": p["n"],
            }
            for p in results["paired"]
        ],
        [
            ("comparison", "paired over seeds (mixed NMSE, dB)", "s"),
            ("mean", "mean a − b", "s"),
            ("interval", "95% interval", "s"),
            ("n", "seeds", "d"),
        ],
    )
    notes = [
        f"NMSE in dB on {len(columns) - 1} × {problem.per_snr} test samples per seed "
        f"(m={problem.m}, n={problem.n}, condition {problem.condition:g}, sparsity "
        f"{problem.sparsity:g}); mean ± sd over seeds {seeds}.",
        "† trained on a shortened schedule; the paper: LISTA 100k×512, stage I 50k×1024, "
        "stage II 40k×256.",
        f'Stop rows run through `run_adaptive(mode="{config.inference_mode}")`; *sampled* stops '
        "at step t with probability λ_t (the paper's inference), *threshold* is a threshold on "
        "the hazard or on the cumulative stop probability (the kind in the row, chosen by "
        f"validation NMSE when `threshold_rule=best`; here `{config.threshold_rule}`), calibrated "
        "on validation. MMAC/sample counts multiply-adds of the model plus, for stop rows, the "
        "policy and its features; × full depth is measured wall-clock (shrink mode against the "
        "same model run to full depth, side by side).",
        f"Jobs: {results['training_seconds'] / 60:.1f} min wall, "
        f"{results['training_cpu_seconds'] / 60:.1f} min CPU (training and evaluation), "
        f"{config.threads} thread(s).",
    ]
    return (
        markdown_table(lines, spec) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n" + paired
    )


def _summary(results: dict[str, Any]) -> str:
    rows = {r["key"]: r for r in results["rows"]}
    parts = [
        f"{r['label']}: {r['mixed']:.2f} dB mixed at {r['mean_steps']:.2f} steps"
        for key in ("lista_stop-threshold", "cpss_stop-threshold")
        if (r := rows.get(key))
    ]
    return "; ".join(parts) or "ISTA and FISTA rows only"


def _curve_label(key: str) -> str:
    names = {"lista": "LISTA", "alista": "ALISTA-SS", **STOP_LABELS}
    if key in names:
        return names[key]
    algorithm, budget = key.split("-")
    return f"{algorithm.upper()} (tuned for T={budget})"


def _figures(results: dict[str, Any], stops, seeds: list[int]) -> dict[str, Any]:
    """``nmse_per_layer``, ``stop_steps`` (threshold rule) and ``nmse_vs_steps`` (the budget
    curve of each stop model beside the same model at fixed depth); means over seeds."""
    per_layer, column = results["per_layer"], results["columns"][0]
    shown = {k: v for k, v in per_layer.items() if not k.startswith(("ista", "fista"))}
    shown.update({k: v for k, v in per_layer.items() if k.endswith("-100")})
    figures = {}

    figure, ax = new_figure(6.5, 4.2)
    for key, curve in shown.items():
        ax.plot(
            [p["mean_steps"] for p in curve], [p[column] for p in curve], label=_curve_label(key)
        )
    ax.set_xscale("log")
    ax.set_xlabel("layer / iteration")
    ax.set_ylabel(f"test NMSE (dB), {column}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    figures["nmse_per_layer"] = figure
    if not stops:
        return figures

    figure, axes = new_figure(4.2 * len(stops), 3.4)
    figure.clf()
    for i, (name, by_seed) in enumerate(stops.items()):
        ax = figure.add_subplot(1, len(stops), i + 1)
        histograms = [by_seed[s]["stop_histogram"]["threshold"] for s in seeds]
        width = 0.8 / len(histograms[0])
        for j, snr in enumerate(histograms[0]):
            counts = [sum(h[snr][t] for h in histograms) for t in range(len(histograms[0][snr]))]
            offset = (j - (len(histograms[0]) - 1) / 2) * width
            ax.bar([t + 1 + offset for t in range(len(counts))], counts, width=width, label=snr)
        ax.set_title(f"{_curve_label(name)}, threshold rule", fontsize=8)
        ax.set_xlabel("stop step")
        ax.set_ylabel(f"test samples ({len(seeds)} seed(s))")
        ax.legend(fontsize=7)
    figures["stop_steps"] = figure

    figure, ax = new_figure(6.5, 4.2)
    for key in ("ista-100", "fista-100", "lista", "alista"):
        if key in per_layer:
            curve = per_layer[key]
            x, y = [p["mean_steps"] for p in curve], [p[column] for p in curve]
            ax.plot(x, y, ":", label=f"{_curve_label(key)}, fixed depth")
    rows = {row["key"]: row for row in results["rows"]}
    for name, by_seed in stops.items():
        curve = _mean_curve([by_seed[s]["curve"] for s in seeds])
        line = ax.plot(
            [p["mean_steps"] for p in curve],
            [p[column] for p in curve],
            "-o",
            markersize=3,
            label=f"{_curve_label(name)}, thresholds calibrated on validation",
        )[0]
        fixed = per_layer[name]
        ax.plot(
            [p["mean_steps"] for p in fixed],
            [p[column] for p in fixed],
            "s--",
            markersize=2,
            color=line.get_color(),
            label=f"{_curve_label(name)} model, fixed depth",
        )
        for rule, marker in (("sampled", "^"), ("oracle", "*")):
            row = rows[f"{name}-{rule}"]
            label = f"{_curve_label(name)}, {rule}"
            color = line.get_color()
            ax.plot(row["mean_steps"], row[column], marker, markersize=8, color=color, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("mean steps used (log scale)")
    ax.set_ylabel(f"test NMSE (dB), {column}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    figures["nmse_vs_steps"] = figure
    return figures
