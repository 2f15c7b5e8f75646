"""The table (with the paper's Table 2 beside ours), the paired comparisons over seeds and the
figures of a sparse-recovery run, from the job records. Nothing is selected here."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from ...contract import JobResult, Report
from ...curves import mean_curve
from ...reporting import finish_axes, in_x_order, markdown_table, new_figure, points_xy
from ...stats import (
    format_interval,
    format_mean_sd,
    interval_or_mean,
    mean_interval,
    mean_sd,
    over_seeds,
    paired_difference,
)
from .config import SparseRecoveryConfig
from .experiment import STOP_MODELS
from .metrics import column_names, fixed_depth_hull

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
PAPER_PROTOCOL = {
    "m": 250, "n": 500, "condition": 5.0, "sparsity": 0.1, "steps": 20, "snrs": [20.0, 30.0, 40.0]
}  # fmt: skip

STOP_LABELS = {"lista_stop": "LISTA-stop", "cpss_stop": "LISTA-CP-SS-stop (ALISTA start)"}
STOP_RULES = ("sampled", "threshold", "oracle", "full")
ROUNDING = 1e-6  # dB: margins this small are float rounding (a curve point at full depth is 0)


def is_paper_protocol(problem) -> bool:
    """Whether the paper's numbers were measured on this problem (only then are they printed)."""
    return all(getattr(problem, k) == v for k, v in PAPER_PROTOCOL.items())


def _k(steps: int) -> str:
    return f"{steps / 1000:g}k" if steps >= 1000 else str(steps)


def schedules(config: SparseRecoveryConfig) -> dict[str, tuple[str, bool]]:
    """Per trained model: (schedule text, shortened relative to the paper's)."""
    lista, s1, s2, a, c = config.lista, config.stage1, config.stage2, config.alista, config.cpss

    def shorter(key: str, steps: int, batch: int) -> bool:
        return steps * batch < math.prod(PAPER_SCHEDULE[key])

    policy = f"II {'/'.join(_k(n) for n in s2.steps)}×{s2.batch} on a {_k(s2.pool)} pool"
    cpss = f"ALISTA {_k(a.steps)}×{a.batch}; I {_k(c.stage1_steps)}×{c.batch}; {policy}"
    return {
        "lista": (f"{_k(lista.steps)}×{lista.batch}", shorter("lista", lista.steps, lista.batch)),
        "lista_stop": (
            f"I {_k(s1.steps)}×{s1.batch} from {s1.init.upper()}; {policy}",
            shorter("stage1", s1.steps, s1.batch) or shorter("stage2", max(s2.steps), s2.batch),
        ),
        "alista": (f"{_k(a.steps)}×{a.batch}", False),
        "cpss_stop": (cpss, False),
    }


def _order(first_rows: dict[str, dict]) -> list[str]:
    classical = sorted(
        (k for k in first_rows if k.startswith(("ista", "fista"))),
        key=lambda k: (first_rows[k]["mean_steps"], k),
    )
    learned = ["lista", *(f"lista_stop-{r}" for r in STOP_RULES)]
    learned += ["alista", *(f"cpss_stop-{r}" for r in STOP_RULES), "support_oracle"]
    return classical + [k for k in learned if k in first_rows]


def _label(key: str, T: int, kinds: list[str]) -> tuple[str, str, str]:
    """(label, model, rule) of a row key."""
    if key.startswith(("ista", "fista")):
        algorithm, budget = key.split("-")
        return f"{algorithm.upper()} (T={budget})", key, "fixed"
    if key in ("lista", "alista"):
        name = "LISTA" if key == "lista" else "ALISTA with support selection"
        return f"{name} (T={T})", key, "fixed"
    if key == "support_oracle":
        return "least squares on the true support (bound; needs the support)", key, "bound"
    model, rule = key.split("-")
    name = STOP_LABELS[model]
    text = {
        "sampled": f"{name}, sampled (L2S policy as published)",
        "threshold": f"{name}, threshold ({'/'.join(sorted(set(kinds)))}; chosen on validation)",
        "oracle": f"{name}, oracle stop (needs x*)",
        "full": f"{name} model, all {T} layers",
    }[rule]
    return text, model, "full depth" if rule == "full" else rule


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
    bound = {r.seed: r.record["support_oracle"] for r in results if "support_oracle" in r.record}
    largest = max((r.record.get("largest_support", 0) for r in results), default=0)
    for seed, seed_bound in bound.items():
        for row in rows[seed].values():
            row["to_bound"] = row["mixed"] - seed_bound["mixed"]
        rows[seed]["support_oracle"] = dict(seed_bound)  # the last row of the table

    table_rows = []
    for key in _order(rows[seeds[0]]):
        by_seed = stops.get(key.split("-")[0], {}).values()
        kinds = [f"{r['policy']['objective']}, {r['calibration']['kind']}" for r in by_seed]
        label, model, rule = _label(key, T, kinds)
        if key == "support_oracle" and largest > config.problem.m:
            label = (
                f"least squares on the true support (NOT a bound here: a support of {largest} "
                f"entries exceeds m = {config.problem.m}; needs the support)"
            )
        per_seed = {s: rows[s][key] for s in seeds}
        row = {"key": key, "label": label, "model": model, "rule": rule, "sd": {}}
        for field in (*columns, "mean_steps", "mean_cost", "wall_speedup", "to_bound"):
            values = [r[field] for r in per_seed.values() if field in r]
            if values:
                row[field], row["sd"][field] = mean_sd(values)
        if "ista_same_depth" in per_seed[seeds[0]]:  # mean over seeds of each column
            points = [r["ista_same_depth"] for r in per_seed.values()]
            row["ista_same_depth"] = {k: statistics.fmean(p[k] for p in points) for k in points[0]}
        if "matches_dense_selection" in per_seed[seeds[0]]:
            row["matches_dense_selection"] = all(
                r["matches_dense_selection"] for r in per_seed.values()
            )
        row["per_seed"] = per_seed
        table_rows.append(row)

    budget_curves = {
        name: _budget_curve(by_seed, curves, name, seeds) for name, by_seed in stops.items()
    }
    domination = {
        name: _domination(curve, rows, name, seeds, T, config.match_tolerance)
        for name, curve in budget_curves.items()
    }
    stop_models = {
        name: {
            "validation_nmse": statistics.fmean(
                r["calibration"]["validation_value"] for r in by_seed.values()
            ),
            "policy": [r["policy"]["name"] + "/" + r["policy"]["kind"] for r in by_seed.values()],
            "seeds": {
                s: {k: v for k, v in r.items() if k not in ("rows", "fixed_depth")}
                for s, r in by_seed.items()
            },
        }
        for name, by_seed in stops.items()
    }
    out = {
        "task": {**vars(config.problem)},
        "columns": columns,
        "seeds": seeds,
        "rows": table_rows,
        "paired": _paired(rows, curves, seeds, T),
        "budget_curves": budget_curves,
        "domination": domination,
        # The verdict under the key every task's results share (stopwise.curves.dominance), with
        # issue 17's third condition for sparse recovery: full-depth NMSE at ≤ 75% of the layers.
        "dominance": {
            name: {
                **d,
                "met": d["dominates"] and d["strictly_better_lower_half"] and d["full_depth_met"],
            }
            for name, d in domination.items()
        },
        "per_layer": {k: mean_curve([curves[s][k] for s in seeds]) for k in curves[seeds[0]]},
        "stop_models": stop_models,
        "jobs": {r.id: {"seconds": r.seconds, "cpu_seconds": r.cpu_seconds} for r in results},
        "training_seconds": sum(r.seconds for r in results),
        "training_cpu_seconds": sum(r.cpu_seconds for r in results),
    }
    return Report(
        results=out,
        table=_table(out, config),
        figures=_figures(out, stops, seeds),
        summary=_summary(out),
    )


def _same_depth_baseline(rows, curves, baseline: str) -> None:
    """Give every stop row of each seed the NMSE of ``baseline`` (ISTA tuned for T) run for
    ⌈mean steps⌉ iterations: the comparison at the same mean depth."""
    for seed, by_key in rows.items():
        for key, row in by_key.items():
            if key.endswith(("-sampled", "-threshold", "-oracle")) and baseline in curves[seed]:
                curve = curves[seed][baseline]
                point = curve[min(math.ceil(row["mean_steps"] - 1e-9), len(curve)) - 1]
                row["ista_same_depth"] = {k: v for k, v in point.items() if k != "mean_cost"}


def _add_timing(rows, stops) -> None:
    """Wall-clock speedup of each stop rule over the full-depth model (time_adaptive)."""
    for name, by_seed in stops.items():
        for seed, record in by_seed.items():
            for timing in record.get("timing", {}).values():
                for rule, measured in timing["rules"].items():
                    rows[seed][f"{name}-{rule}"]["wall_speedup"] = measured["speedup"]


def _budget_curve(by_seed, curves, name: str, seeds: list[int]) -> list[dict[str, Any]]:
    """The stop curve per budget, each seed's point beside the same model truncated at fixed
    depth with at most the same mean steps (:func:`fixed_depth_hull` of that seed's test per-layer
    curve): mean steps, mixed NMSE, the fixed-depth NMSE, the margin (stop − fixed; negative is
    better) and MACs, with every seed's values and the paired margin's 95% interval."""
    points = []
    for i, budget in enumerate(by_seed[seeds[0]]["curve"]):
        per_seed = {}
        for s in seeds:
            point = by_seed[s]["curve"][i]
            hull = fixed_depth_hull([p["mixed"] for p in curves[s][name]], point["mean_steps"])
            per_seed[s] = {
                "mean_steps": point["mean_steps"],
                "mixed": point["mixed"],
                "fixed_depth": hull,
                "margin": point["mixed"] - hull,
                "mean_macs": point["mean_macs"],
            }
        margin = mean_interval([p["margin"] for p in per_seed.values()])  # seeds in order
        point = {"budget": budget["budget"]}
        for field in ("mean_steps", "mixed", "fixed_depth", "margin", "mean_macs"):
            point[field], point[f"{field}_sd"] = mean_sd([p[field] for p in per_seed.values()])
        point["margin_interval"] = [margin["lo"], margin["hi"]]
        point["per_seed"] = per_seed
        points.append(point)
    return points


def _domination(curve, rows, name: str, seeds: list[int], T: int, tolerance: float) -> dict:
    """Issue 17's targets for one stop model from its budget curve, over seeds like
    :func:`stopwise.curves.dominance` (one seed: judged by its own values): the mean margin ≤ 0
    at every budget (those above, and above by more than one sd, listed); strictly better in the
    lower half (mean steps ≤ T/2), the margin's 95% interval below zero; full-depth NMSE (within
    ``tolerance`` dB) at ≤ 75% of the layers, judged on the threshold row (its budget chosen on
    validation): the tops of the 95% intervals of its test NMSE minus full depth's and of its
    mean steps at most ``tolerance`` and 0.75·T. The cheapest curve point within ``tolerance``
    of full depth on test (``full_depth_reached_*``) is reported beside it as a best case: it
    is picked on test, so it decides nothing."""
    # A NaN margin (a diverged point) counts as worse: `not ≤` is True for NaN.
    worse = [p for p in curve if not p["margin"] <= ROUNDING]
    clearly_worse = [p for p in curve if not p["margin"] <= p["margin_sd"] + ROUNDING]
    lower = [p for p in curve if p["mean_steps"] <= T / 2]
    better_lower = [
        p
        for p in lower
        if p["margin"] < 0 and (p["margin_interval"][1] is None or p["margin_interval"][1] < 0)
    ]
    reach = {}
    for s in seeds:
        full = rows[s][f"{name}-full"]["mixed"]
        points = [p["per_seed"][s] for p in curve]
        reach[s] = min(
            (p["mean_steps"] for p in points if p["mixed"] <= full + tolerance), default=float(T)
        )
    reach_interval = mean_interval(list(reach.values()))
    chosen = {s: rows[s][f"{name}-threshold"] for s in seeds}
    gap = mean_interval([r["mixed"] - rows[s][f"{name}-full"]["mixed"] for s, r in chosen.items()])
    steps = mean_interval([r["mean_steps"] for r in chosen.values()])
    best_lower = min(better_lower or lower, key=lambda p: p["margin"]) if lower else None
    return {
        "budgets": len(curve),
        "worst_margin": max((p["margin"] for p in curve), key=lambda m: (math.isnan(m), m)),
        "worse_budgets": [p["budget"] for p in worse],
        "clearly_worse_budgets": [p["budget"] for p in clearly_worse],
        "dominates": not worse,
        "dominates_within_sd": not clearly_worse,
        "best_lower_half": best_lower,
        "strictly_better_lower_half": bool(better_lower),
        "full_depth_reached_at_steps": reach,
        "full_depth_reached_mean": reach_interval["mean"],
        "full_depth_reached_sd": reach_interval["sd"],
        "full_depth_target_steps": 0.75 * T,
        "threshold_row_gap": gap,  # dB, test NMSE of the threshold row minus full depth's
        "threshold_row_steps": steps,
        "full_depth_met": bool(
            interval_or_mean(gap)[1] <= tolerance and interval_or_mean(steps)[1] <= 0.75 * T
        ),
    }


def _paired(rows, curves, seeds: list[int], T: int) -> list[dict[str, Any]]:
    """Paired over seeds, mixed test NMSE (dB): a − b per seed, mean and 95% interval."""

    def mixed(key):
        return {s: rows[s][key]["mixed"] for s in seeds}

    def fixed_mix(curve, key):  # the best fixed-depth mix with row ``key``'s mean steps
        return {
            s: fixed_depth_hull([p["mixed"] for p in curves[s][curve]], rows[s][key]["mean_steps"])
            for s in seeds
        }

    comparisons, names = [], [n for n in STOP_MODELS if f"{n}-threshold" in rows[seeds[0]]]
    for name in names:
        row, text = f"{name}-threshold", f"{STOP_LABELS[name]}, threshold"
        ista = {s: rows[s][row]["ista_same_depth"]["mixed"] for s in seeds}  # ⌈mean steps⌉
        comparisons += [  # (text, row a, b per seed)
            (f"{text} − its full depth", row, mixed(f"{name}-full")),
            (f"{text} − itself at fixed depth, same mean steps", row, fixed_mix(name, row)),
            (f"{text} − ISTA (T={T}) at ⌈mean steps⌉", row, ista),
        ]
    if len(names) == 2:
        a, b = (f"{n}-threshold" for n in names[::-1])
        labels = " − ".join(f"{STOP_LABELS[n]}, threshold" for n in names[::-1])
        comparisons.append((labels, a, mixed(b)))
    return [
        {"comparison": text, "metric": "mixed test NMSE (dB)", **paired_difference(mixed(a), b)}
        for text, a, b in comparisons
    ]


def _table(results: dict[str, Any], config: SparseRecoveryConfig) -> str:
    columns, seeds, problem = results["columns"], results["seeds"], config.problem
    plan, paper_protocol = schedules(config), is_paper_protocol(problem)
    numeric = [  # (field, header, format, scale)
        *((c, c.replace("dB", " dB"), ".2f", 1.0) for c in columns),
        ("mean_steps", "mean steps", ".2f", 1.0),
        ("mean_cost", "MMAC/sample", ".2f", 1e-6),
        ("wall_speedup", "× full depth (wall)", ".2f", 1.0),
        ("to_bound", "mixed − LS bound", "+.2f", 1.0),
    ]
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
        for field, _, fmt, scale in numeric:
            values = [r[field] for r in row["per_seed"].values() if field in r]
            line[field] = format_mean_sd(values, fmt, scale) if values else None
        lines.append(line)
    spec = [
        ("label", "method", "s"),
        *((field, header, "s") for field, header, _, _ in numeric),
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
        f"{problem.sparsity:g}); {over_seeds(seeds)}.",
        "† trained on a shortened schedule; the paper: LISTA 100k×512, stage I 50k×1024, "
        "stage II 40k×256.",
        f'Stop rows run through `run_adaptive(mode="{config.inference_mode}")`. *sampled*: the '
        "L2S policy as published (imitating argmin_t ℓ_t), stopping at step t with probability "
        "λ_t (the paper's inference). *threshold*: the stage-II policy chosen on validation (its "
        "objective and threshold kind in the row) with the threshold of "
        + (
            f"the cheapest budget within {config.match_tolerance:g} dB of full depth on validation "
            f"(one-sided confidence {config.match_confidence:g} over its rows)"
            if config.threshold_row == "match-full"
            else "the budget of least validation NMSE"
        )
        + ". MMAC/sample counts multiply-adds of the model plus, for stop rows, the policy and "
        "its features; × full depth is measured wall-clock (shrink mode against the same model "
        "run to full depth, side by side, under whatever load the machine had); mixed − LS "
        "bound: the distance to least squares on the true support.",
        f"Jobs: {results['training_seconds'] / 60:.1f} min wall, "
        f"{results['training_cpu_seconds'] / 60:.1f} min CPU (training and evaluation), "
        f"{config.threads} thread(s).",
    ]
    diverged = _diverged_rows(results["rows"])
    if diverged:
        notes.insert(1, diverged)
    if config.classical_only:  # no trained rows, stop rows, pairs or budget curves
        notes = [notes[0], *notes[-1:]]
    bullets = "\n".join(f"- {n}" for n in notes)
    parts = [markdown_table(lines, spec), bullets]
    if not config.classical_only:
        parts += [paired, _curve_table(results, config)]
    return "\n\n".join(parts)


def _diverged_rows(rows: list[dict[str, Any]]) -> str:
    """A note naming the seeds of each row whose mixed NMSE is above 0 dB (worse than the
    all-zero estimate: the iteration diverged there), which then rule its mean ± sd; empty if
    none."""
    found = []
    for row in rows:
        if row["key"] == "support_oracle":  # solves, does not iterate
            continue
        above = {s: r["mixed"] for s, r in row["per_seed"].items() if r.get("mixed", 0.0) > 0}
        if above:
            seeds = ", ".join(f"{s} ({v:+.1f} dB)" for s, v in above.items())
            found.append(f"{row['label']}: seed(s) {seeds}")
    if not found:
        return ""
    return (
        "**Diverged** (mixed NMSE above 0 dB, worse than estimating zero): "
        + "; ".join(found)
        + ". Their mean ± sd is ruled by those seeds."
    )


def _curve_table(results: dict[str, Any], config: SparseRecoveryConfig) -> str:
    """Key points of each stop model's budget curve beside the same model at fixed depth."""
    T, lines, in_table = config.problem.steps, [], {}
    for name, curve in results["budget_curves"].items():
        every = max(1, (len(curve) - 1) // 9)
        shown = curve[::every] if curve[-1] in curve[::every] else [*curve[::every], curve[-1]]
        in_table[name] = len(shown)
        for p in shown:
            lo, hi = p["margin_interval"]
            lines.append(
                {
                    "model": STOP_LABELS[name],
                    "budget": f"{p['budget']:.2f}",
                    "steps": f"{p['mean_steps']:.2f}",
                    "stop": f"{p['mixed']:.2f}",
                    "fixed": f"{p['fixed_depth']:.2f}",
                    "margin": f"{p['margin']:+.2f}"
                    + ("" if lo is None else f" [{lo:+.2f}, {hi:+.2f}]"),
                    "macs": f"{p['mean_macs'] / 1e6:.2f}",
                }
            )
    table = markdown_table(
        lines,
        [
            ("model", "stop model", "s"),
            ("budget", "budget (steps, val)", "s"),
            ("steps", "mean steps (test)", "s"),
            ("stop", "mixed NMSE, stop", "s"),
            ("fixed", "fixed depth, same mean steps", "s"),
            ("margin", "stop − fixed (95% interval)", "s"),
            ("macs", "MMAC/sample", "s"),
        ],
    )
    notes = [
        f"{STOP_LABELS[name]}: stop curve no worse than fixed depth at "
        f"{d['budgets'] - len(d['worse_budgets'])}/{d['budgets']} budgets of its curve (every "
        f"one in results.json, {in_table.get(name, 0)} in the table; worst mean margin "
        f"{d['worst_margin']:+.2f} dB"
        + (
            f"; worse by more than one sd at {len(d['clearly_worse_budgets'])}"
            if len(results["seeds"]) > 1
            else ""  # one seed has no sd
        )
        + f"); full-depth NMSE (±{config.match_tolerance:g} dB) "
        f"at ≤ {0.75 * T:g} steps, judged on the threshold row (chosen on validation): "
        f"{format_interval(d['threshold_row_gap'], '+.2f')} dB from full depth at "
        f"{format_interval(d['threshold_row_steps'], '.2f')} mean steps: "
        f"{'met' if d['full_depth_met'] else 'missed'} (the tops of the intervals decide); "
        f"the cheapest curve point within it on test, a best case picked on test: "
        f"{format_mean_sd(list(d['full_depth_reached_at_steps'].values()))} mean steps."
        for name, d in results["domination"].items()
    ]
    return (
        "Budget curve (thresholds calibrated on validation, measured on test; fixed depth: the "
        "best mix of two fixed depths with at most the same mean steps)\n\n"
        + table
        + "\n\n"
        + "\n".join(f"- {n}" for n in notes)
    )


def _summary(results: dict[str, Any]) -> str:
    """One line per stop model: what learning to stop bought against fixed depth."""
    rows = {r["key"]: r for r in results["rows"]}
    T = results["task"]["steps"]
    parts = []
    for name, d in results["domination"].items():
        full, chosen = rows[f"{name}-full"]["mixed"], rows[f"{name}-threshold"]
        lower = d["best_lower_half"]
        text = (
            f"{STOP_LABELS[name]}: {chosen['mixed']:.2f} dB at {chosen['mean_steps']:.1f} of {T} "
            f"layers (the threshold row, chosen on validation) against {full:.2f} at all {T} "
            f"(full-depth NMSE at ≤ 75% of the layers: "
            f"{'met' if d['full_depth_met'] else 'missed'})"
        )
        if lower is not None:
            text += (
                f"; its best lower-half budget on test: {lower['mixed']:.2f} dB at "
                f"{lower['mean_steps']:.1f} layers against {lower['fixed_depth']:.2f} truncated "
                f"({lower['margin']:+.2f} dB)"
            )
        text += (
            f"; curve no worse than fixed depth at "
            f"{d['budgets'] - len(d['worse_budgets'])}/{d['budgets']} budgets"
        )
        parts.append(text)
    return "Learning to stop bought — " + "; ".join(parts) if parts else "ISTA and FISTA rows only"


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
    classical = [k for k in per_layer if k.startswith(("ista", "fista"))]
    shown = {k: v for k, v in per_layer.items() if k not in classical}
    deepest = max((int(k.split("-")[1]) for k in classical), default=None)  # ISTA/FISTA's longest
    shown.update({k: per_layer[k] for k in classical if int(k.split("-")[1]) == deepest})
    figures = {}

    figure, ax = new_figure(6.5, 4.2)
    for key, curve in shown.items():
        ax.plot(*points_xy(curve, column), label=_curve_label(key))
    ax.set_xscale("log")
    finish_axes(ax, "layer / iteration", f"test NMSE (dB), {column}")
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
        title = f"{_curve_label(name)}, threshold rule"
        samples = f"test samples ({len(seeds)} seed(s))"
        finish_axes(ax, "stop step", samples, title, title_size=8, grid=False)
    figures["stop_steps"] = figure

    figure, ax = new_figure(9.5, 4.2)
    for key in ("ista-100", "fista-100", "lista", "alista"):
        if key in per_layer:
            label = f"{_curve_label(key)}, fixed depth"
            ax.plot(*points_xy(per_layer[key], column), ":", label=label)
    rows = {row["key"]: row for row in results["rows"]}
    for name, by_seed in stops.items():
        curve = in_x_order(mean_curve([by_seed[s]["curve"] for s in seeds]))
        label = _curve_label(name)
        calibrated = f"{label}, thresholds calibrated on validation"
        (line,) = ax.plot(*points_xy(curve, column), "-o", markersize=3, label=calibrated)
        color = line.get_color()
        fixed = f"{label} model, fixed depth"
        ax.plot(*points_xy(per_layer[name], column), "s--", markersize=2, color=color, label=fixed)
        for rule, marker in (("sampled", "^"), ("oracle", "*")):
            point = rows[f"{name}-{rule}"]["mean_steps"], rows[f"{name}-{rule}"][column]
            ax.plot(*point, marker, markersize=8, color=color, label=f"{label}, {rule}")
    ax.set_xscale("log")
    finish_axes(
        ax, "mean steps used (log scale)", f"test NMSE (dB), {column}", legend=6, outside=True
    )
    figures["nmse_vs_steps"] = figure
    figures["budget_curves"] = _budget_figure(results, stops, seeds)
    return figures


def _budget_figure(results: dict[str, Any], stops, seeds: list[int]):
    """Per stop model: mixed test NMSE against mean steps for the stop curve (the policy chosen
    on validation), the L2S policy as published, the same model at fixed depth and the
    cost-aware oracle (needs x*); below, the stop curve's margin over fixed depth (mean ± sd over
    seeds, named in its legend: the table gives the 95% interval; below zero the stop model is
    better)."""
    figure, _ = new_figure(4.6 * len(stops), 6.0)
    figure.clf()
    grid = figure.add_gridspec(2, len(stops), height_ratios=[2, 1])
    for i, (name, by_seed) in enumerate(stops.items()):
        top = figure.add_subplot(grid[0, i])
        stop, fixed = "stop policy (chosen on validation)", "same model, fixed depth"
        lines = {
            stop: ([by_seed[s]["curve"] for s in seeds], "-o"),
            "L2S policy as published": ([by_seed[s]["curve_published"] for s in seeds], "-."),
            fixed: ([results["per_layer"][name]], "s--"),
            "cost-aware oracle stop (needs x*)": ([by_seed[s]["oracle_curve"] for s in seeds], ":"),
        }
        ceiling = -math.inf  # the top of the y window: the stop and fixed curves' highest point
        for label, (curves, style) in lines.items():
            steps, nmse = points_xy(in_x_order(mean_curve(curves)), "mixed")
            top.plot(steps, nmse, style, markersize=2.5, linewidth=1.2, label=label)
            if label in (stop, fixed):
                ceiling = max(ceiling, *nmse)
        finish_axes(top, None, "test NMSE (dB), mixed", _curve_label(name), title_size=9)
        curve = in_x_order(results["budget_curves"][name])
        low = min(p["mixed"] for p in curve)
        top.set_ylim(low - 1.0, ceiling + 1.0)
        bottom = figure.add_subplot(grid[1, i], sharex=top)
        steps, margin = points_xy(curve, "margin")
        low = [p["margin"] - p["margin_sd"] for p in curve]
        high = [p["margin"] + p["margin_sd"] for p in curve]
        # The band is the sd over seeds, not the table's 95% interval: the legend says which.
        seeds_text = f"mean over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
        if len(seeds) > 1:
            bottom.fill_between(steps, low, high, alpha=0.3, label="± sd over seeds")
        bottom.plot(steps, margin, "-o", markersize=2.5, label=seeds_text)
        bottom.axhline(0.0, color="black", linewidth=0.8)
        finish_axes(bottom, "mean steps used", "stop − fixed depth (dB)", legend=6)
    return figure
