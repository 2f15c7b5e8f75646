"""The denoising report: PSNR / SSIM per σ of every method, mean stop exit per σ, the paired
comparisons, the budget curve beside fixed depth, CPU time per image, and the figures. Nothing
is selected here: every choice was made on validation inside the jobs."""

from __future__ import annotations

import math
import statistics
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from ...contract import JobResult, Report
from ...curves import best_fixed_mix, dominance, dominance_line, mean_curve
from ...reporting import finish_axes, in_x_order, markdown_table, new_figure, points_xy
from ...stats import format_interval, format_mean_sd, over_seeds, paired_difference
from .config import DenoisingConfig
from .data import from_png_base64
from .experiment import stage1_candidates, trained_depth_name, validation_items

__all__ = ["report", "METHODS"]

# (key, label, where the per-σ numbers live in the records)
METHODS = (
    ("noisy", "noisy input", ("classical", "noisy")),
    ("bm3d", "BM3D (true σ)", ("classical", "bm3d")),
    ("nlm", "non-local means (h on validation)", ("classical", "nlm")),
    ("dncnn", "DnCNN (last output)", ("dncnn", "test")),
    ("dncnn_ds", "DnCNN + exits, uniform deep supervision (last exit)", ("dncnn-ds", "test")),
    ("stop_last", "DnCNN-stop model at its last exit", ("dncnn-stop", "rows", "last_exit")),
    ("stop", "**DnCNN-stop** (policy, threshold from validation)", ("dncnn-stop", "rows", "stop")),
    ("stop_official", "DnCNN-stop (policy, hazard ≥ 0.5)", ("dncnn-stop", "rows", "stop_official")),
    ("oracle", "oracle stop (needs the clean image)", ("dncnn-stop", "rows", "oracle")),
)
STOP_ROWS = ("stop", "stop_official", "oracle")
# The budget curves of a dncnn-stop record: the L2S policy's, and the gain head's where fitted.
HEADS = {"DnCNN-stop": "curve", "DnCNN-stop model, gain head": "gain_curve"}
COMPARISONS = (("stop", "dncnn"), ("stop", "bm3d"), ("stop", "dncnn_ds"), ("stop_last", "dncnn"))


def _methods(config: DenoisingConfig) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """METHODS with a row per DnCNN trained for a shallower depth, after DnCNN's."""
    trained = tuple(
        (f"dncnn_depth{d}", f"DnCNN of depth {d} (trained for it)", (trained_depth_name(d), "test"))
        for d in sorted(set(config.trained_depths))
    )
    after = [k for k, _, _ in METHODS].index("dncnn") + 1
    return METHODS[:after] + trained + METHODS[after:]


def _get(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        record = record[key]
    return record


def report(results: list[JobResult], config: DenoisingConfig) -> Report:
    jobs: dict[str, dict[int, dict[str, Any]]] = {}
    cpu: dict[str, dict[int, float]] = {}
    for r in results:
        jobs.setdefault(r.name, {})[r.seed] = r.record
        cpu.setdefault(r.name, {})[r.seed] = r.cpu_seconds
    seeds = sorted(jobs["dncnn-stop"])
    sigmas = list(config.test_sigmas)
    unseen = [s not in config.train_sigmas for s in sigmas]

    methods = _methods(config)

    def per_seed(key: str, measure: str) -> dict[int, list[float]]:
        path = next(p for k, _, p in methods if k == key)
        return {s: _get(jobs[path[0]][s], path[1:])[measure] for s in seeds}

    quality = {
        key: {m: per_seed(key, f"{m}_by_sigma") for m in ("psnr", "ssim")} for key, _, _ in methods
    }
    headers = [f"σ={s:g}" + (" (unseen)" if u else "") for s, u in zip(sigmas, unseen, strict=True)]
    tables = []
    for measure, fmt in (("psnr", ".2f"), ("ssim", ".4f")):
        rows = []
        for key, label, _ in methods:
            row = {"method": label}
            for j, h in enumerate(headers):
                row[h] = format_mean_sd([quality[key][measure][s][j] for s in seeds], fmt)
            rows.append(row)
        columns = [("method", "method", "s")] + [(h, h, "s") for h in headers]
        tables.append(f"### Test {measure.upper()} per σ\n\n" + markdown_table(rows, columns))

    stop = {s: jobs["dncnn-stop"][s] for s in seeds}
    exit_rows = []
    for key in STOP_ROWS:
        label = next(lbl for k, lbl, _ in METHODS if k == key)
        row = {"method": label}
        for j, h in enumerate(headers):
            row[h] = format_mean_sd(
                [stop[s]["rows"][key]["mean_exit_by_sigma"][j] for s in seeds], ".2f"
            )
        exit_rows.append(row)
    T = config.depth - 1
    rho = [_nan(stop[s]["spearman_exit_sigma"]) for s in seeds]
    tables.append(
        f"### Mean stop exit per σ (of {T} exits)\n\n"
        + markdown_table(exit_rows, [("method", "method", "s")] + [(h, h, "s") for h in headers])
        + f"\n\nSpearman ρ(σ, stop exit) over test images: {format_rho(rho)}"
        + " (DnCNN-stop, threshold from validation)."
    )

    comparisons = []
    comparison_rows = []
    for a, b in COMPARISONS:
        row = {"comparison": f"{a} − {b}"}
        for j, (sigma, h) in enumerate(zip(sigmas, headers, strict=True)):
            diff = paired_difference(
                {s: quality[a]["psnr"][s][j] for s in seeds},
                {s: quality[b]["psnr"][s][j] for s in seeds},
            )
            comparisons.append({"a": a, "b": b, "sigma": sigma, **diff})
            row[h] = format_interval(diff)
        comparison_rows.append(row)
    tables.append(
        "### Paired PSNR differences (dB), mean [95% interval] over seeds\n\n"
        + markdown_table(
            comparison_rows, [("comparison", "comparison", "s")] + [(h, h, "s") for h in headers]
        )
    )

    curve = _curve_table(jobs, seeds, config)
    verdicts = _dominance(jobs, seeds)
    room = _oracle_room(jobs, seeds)
    gain_table = _gain_head_table(jobs, seeds, verdicts, config)
    tables.append(
        curve["table"]
        + (f"\n\n{gain_table}" if gain_table else "")
        + "\n\n"
        + "\n".join(
            f"- {dominance_line(k, v, 'dB', cost_unit='MACs/pixel')}" for k, v in verdicts.items()
        )
        + "\n- Room for any policy on these kept exits (the oracle stop at each cost, which knows "
        "the clean image, minus the best fixed-depth mix; dB, best / worst over its costs): "
        + "; ".join(
            f"seed {s} {r['best_gain']:+.3f} / {r['worst_gain']:+.3f}" for s, r in room.items()
        )
    )
    timing = _timing_table(jobs, seeds, T)
    tables.append(timing["table"])
    training = _training(jobs, cpu, seeds, config)
    tables.append(training["table"])

    stop_vs_dncnn = {c["sigma"]: c for c in comparisons if (c["a"], c["b"]) == ("stop", "dncnn")}
    stop_vs_bm3d = {c["sigma"]: c for c in comparisons if (c["a"], c["b"]) == ("stop", "bm3d")}
    mean_exit = [
        statistics.fmean(stop[s]["rows"]["stop"]["mean_exit_by_sigma"][j] for s in seeds)
        for j in range(len(sigmas))
    ]
    summary = (
        "DnCNN-stop − DnCNN (dB): "
        + ", ".join(f"σ={s:g} {stop_vs_dncnn[s]['mean']:+.2f}" for s in sigmas)
        + "; − BM3D: "
        + ", ".join(f"σ={s:g} {stop_vs_bm3d[s]['mean']:+.2f}" for s in sigmas)
        + "; mean stop exit "
        + ", ".join(f"{e:.1f}" for e in mean_exit)
        + f" of {T}; Spearman ρ(σ, exit) {format_rho(rho)}"
    )
    table = "\n\n".join(tables) + (
        f"\n\n{over_seeds(seeds)}; test: {len(stop[seeds[0]]['rows']['stop']['exit'])}"
        f" items per seed ({len(sigmas)} σ × the test images, centre crops ≤ "
        f"{config.test_crop}²), noise drawn per image and σ. DnCNN {config.depth}×{config.width}"
        f" ({config.precision}); stop rows run through run_adaptive(mode="
        f"{config.inference_mode!r}); β, kept exits, the table's thresholds, learning-rate "
        "drops and checkpoints chosen on validation tiles at the training σ only; the budget "
        f"curves' rules fitted on {_curve_validation(config)}."
    )
    results_out = {
        "sigmas": sigmas,
        "unseen": unseen,
        "seeds": seeds,
        "quality": quality,
        "comparisons": comparisons,
        "mean_exit": {
            key: {s: stop[s]["rows"][key]["mean_exit_by_sigma"] for s in seeds} for key in STOP_ROWS
        },
        "spearman_exit_sigma": {s: stop[s]["spearman_exit_sigma"] for s in seeds},
        "budget_curve": curve["results"],
        "dominance": verdicts,
        "oracle_room": room,
        "timing": timing["results"],
        "training": training["results"],
        "choices": {
            s: {
                "stage1": stop[s]["stage1"],
                "stage1_criterion": stop[s].get("stage1_criterion", "oracle"),
                "stage1_scores": stop[s].get(
                    "stage1_scores", stop[s].get("stage1_val_oracle_psnr")
                ),
                "valid_exits": stop[s]["valid_exits"],
                "calibration": {
                    k: v for k, v in stop[s]["calibration"].items() if k != "candidates"
                },
                "bm3d_profile": jobs["classical"][s]["bm3d"]["profile"],
                "nlm_h_over_sigma": jobs["classical"][s]["nlm"]["h_over_sigma"],
            }
            for s in seeds
        },
        "policy_cost": stop[seeds[0]]["costs_per_pixel"],
        "bfloat16_check": {
            s: jobs["dncnn"][s].get("bfloat16_check") for s in seeds if "dncnn" in jobs
        },
    }
    shown = _shown(config, seeds)
    figures = {
        "psnr_vs_sigma": _psnr_figure(quality, sigmas, unseen, seeds, shown),
        "stop_exits": _exit_figure(stop, sigmas, seeds, T),
        "picture_grid": _grid_figure(jobs, seeds[0], config),
        "psnr_per_exit": _per_exit_figure(jobs, seeds, sigmas, shown),
        "budget_curve": _budget_figure(jobs, seeds, shown),
        "training_curve": _training_figure(jobs, seeds, config),
    }
    return Report(_without_nan(results_out), table, figures, summary)


def _without_nan(value: Any) -> Any:
    """``value`` with every NaN float replaced by None (JSON null: NaN never equals itself)."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def format_rho(values: list[float]) -> str:
    """Mean ± sd of the per-seed Spearman ρ that are defined; ρ is undefined (NaN) for a seed
    whose test images all stop at the same exit, and such seeds are counted, not averaged."""
    defined = [v for v in values if not math.isnan(v)]
    undefined = len(values) - len(defined)
    if not defined:
        return f"undefined in all {len(values)} seed(s) (every test image stops at one exit)"
    text = format_mean_sd(defined, ".3f")
    return text + (f" ({undefined} seed(s) undefined: one exit for all)" if undefined else "")


def _interpolate(x: float, xs: list[float], ys: list[float]) -> float:
    """The best PSNR a mix of two of these points reaches at mean cost ≤ ``x``
    (:func:`stopwise.curves.best_fixed_mix`); NaN below the cheapest point."""
    if x < min(xs) - 1e-9:
        return math.nan
    points = [{"mean_cost": c, "psnr": v} for c, v in zip(xs, ys, strict=True)]
    return best_fixed_mix(points, x, "psnr", higher_is_better=True, x="mean_cost")


def _head_groups(stop: dict, seeds) -> list[tuple[str, str, list]]:
    """``(label, record key, seeds)`` of every budget curve the dncnn-stop records hold: one group
    over the seeds, or one per seed where the seeds' curves differ in length (different kept
    exits)."""
    out = []
    for head, key in HEADS.items():
        if key not in stop[seeds[0]]:
            continue
        if len({len(stop[s][key]) for s in seeds}) == 1:
            out.append((head, key, list(seeds)))
        else:
            out += [(f"{head} (seed {s})", key, [s]) for s in seeds]
    return out


def _dominance(jobs, seeds) -> dict[str, dict[str, Any]]:
    """Each budget curve (:func:`_head_groups`) against the same model at fixed depth (PSNR at
    mean multiply-adds per pixel)."""
    stop = {s: jobs["dncnn-stop"][s] for s in seeds}
    return {
        label: dominance(
            [stop[s][key] for s in group],
            [stop[s]["fixed_depth"] for s in group],
            "psnr",
            higher_is_better=True,
            x="mean_cost",
        )
        for label, key, group in _head_groups(stop, seeds)
    }


def _oracle_room(jobs, seeds) -> dict[int, dict[str, float]]:
    """Per seed, the oracle stop under budget (on the kept exits, knowing the clean image: the
    best any policy on this model could do) against the same model at fixed depth: the best and
    the worst gain over the oracle's costs, the room a stop policy has."""
    room = {}
    for s in seeds:
        record = jobs["dncnn-stop"][s]
        verdict = dominance(
            [record["oracle_under_budget"]],
            [record["fixed_depth"]],
            "psnr",
            higher_is_better=True,
            x="mean_cost",
        )
        gains = [g["gain"] for g in verdict["gains"]]
        room[s] = {"best_gain": max(gains), "worst_gain": min(gains)}
    return room


def _gain_head_table(jobs, seeds, verdicts, config) -> str:
    """The gain head's budget curve (mean over its group's seeds) beside the same model's best
    fixed depth at that cost, from its dominance verdict's gains."""
    stop = {s: jobs["dncnn-stop"][s] for s in seeds}
    rows = []
    for label, key, group in _head_groups(stop, seeds):
        if key != "gain_curve":
            continue
        curve = mean_curve([stop[s][key] for s in group])
        for p, g in zip(curve, verdicts[label]["gains"], strict=True):
            rows.append(
                {
                    "head": label,
                    "exit": p["mean_steps"],
                    "macs": p["mean_cost"] / 1e3,
                    "psnr": p["psnr"],
                    "fixed": p["psnr"] - g["gain"],
                    "gain": g["gain"],
                }
            )
    if not rows:
        return ""
    columns = [
        ("head", "stop head", "s"),
        ("exit", "mean exit", ".2f"),
        ("macs", "kMACs / pixel", ".1f"),
        ("psnr", "PSNR", ".2f"),
        ("fixed", "same model, fixed depth", ".2f"),
        ("gain", "gain (dB)", "+.2f"),
    ]
    return (
        "### Budget curve of the gain head (same model and kept exits; thresholds fitted on "
        f"{_curve_validation(config)}), test PSNR (dB)\n\n"
        + markdown_table(rows, columns)
        + "\n\nFixed depth as in the table above (the best mix of two fixed depths at no more "
        "cost); gains are each seed's against its own model, averaged."
    )


STOP_MODEL_FIELDS = ("psnr", "mean_exit", "mean_cost")


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def _trained_depths(jobs, seed) -> list[dict[str, float]]:
    """The plain DnCNNs trained for a fixed depth (``trained_depths`` and the DnCNN baseline
    at full depth) of ``seed``: cost (multiply-adds per pixel) and mean test PSNR, by cost."""
    full = jobs["dncnn-stop"][seed]["costs_per_pixel"]["fixed_depth"][-1]
    points = [{"mean_cost": full, "psnr": statistics.fmean(jobs["dncnn"][seed]["test"]["psnr"])}]
    for name, records in jobs.items():
        if name.startswith("dncnn-depth"):
            record = records[seed]
            psnr = statistics.fmean(record["test"]["psnr"])
            points.append({"mean_cost": record["macs_per_pixel"], "psnr": psnr})
    return sorted(points, key=lambda p: p["mean_cost"])


def _curve_table(jobs, seeds, config) -> dict[str, Any]:
    """Budget curve of DnCNN-stop beside the same model and the uniform-DS model truncated at a
    fixed depth, and (with ``trained_depths``) plain DnCNNs trained for a fixed depth, compared
    at the same mean cost (multiply-adds per pixel)."""
    with_trained = any(name.startswith("dncnn-depth") for name in jobs)
    per_seed = []
    for s in seeds:
        record = jobs["dncnn-stop"][s]
        fixed = record["fixed_depth"]
        ds = jobs["dncnn-ds"][s]["fixed_depth"]
        trained = _trained_depths(jobs, s) if with_trained else []
        bound = record["oracle_under_budget"]
        points = []
        for p in record["curve"]:
            ceiling = _interpolate(
                p["mean_cost"], [b["mean_cost"] for b in bound], [b["psnr"] for b in bound]
            )
            same = _interpolate(
                p["mean_cost"], [f["mean_cost"] for f in fixed], [f["psnr"] for f in fixed]
            )
            uniform = _interpolate(
                p["mean_cost"], [f["mean_cost"] for f in ds], [f["psnr"] for f in ds]
            )
            point = {
                "budget": p["budget"],
                "mean_exit": p["mean_steps"],
                "mean_cost": p["mean_cost"],
                "psnr": p["psnr"],
                "fixed_same_model": same,
                "fixed_uniform_ds": uniform,
                "oracle_same_cost": ceiling,
                "spearman_exit_sigma": _nan(p["spearman_exit_sigma"]),
            }
            if with_trained:
                point["trained_for_depth"] = _interpolate(
                    p["mean_cost"], [t["mean_cost"] for t in trained], [t["psnr"] for t in trained]
                )
            points.append(point)
        per_seed.append(points)
    # Points are averaged over seeds by position; seeds whose curves differ in length (their
    # kept exits differ, e.g. one kept exit gives a one-point curve) are listed one by one.
    same_length = len({len(points) for points in per_seed}) == 1
    groups = [(None, seeds, per_seed)] if same_length else [
        (s, [s], [points]) for s, points in zip(seeds, per_seed, strict=True)
    ]  # fmt: skip
    rows, results = [], []
    for label, group_seeds, group in groups:
        for k in range(len(group[0])):
            column = [points[k] for points in group]
            entry, row = _curve_point(group_seeds, column)
            if label is not None:
                entry["seed"], row["seed"] = label, str(label)
            results.append(entry)
            rows.append(row)
    columns = [
        ("exit", "mean exit", "s"),
        ("macs", "MACs / pixel", "s"),
        ("stop", "DnCNN-stop", "s"),
        ("same", "same model, fixed depth", "s"),
        ("ds", "uniform-DS model, fixed depth", "s"),
        *([("trained", "DnCNNs trained per depth", "s")] if with_trained else []),
        ("oracle", "oracle stop at this cost", "s"),
        ("gain", "stop − same fixed [95%]", "s"),
        *([("gain_trained", "stop − trained [95%]", "s")] if with_trained else []),
        ("rho", "ρ(σ, exit)", "s"),
    ]
    table = (
        f"### Budget curve (thresholds fitted on {_curve_validation(config)}) beside fixed "
        "depth, test PSNR (dB)\n\n"
        + markdown_table(rows, columns if same_length else [("seed", "seed", "s"), *columns])
        + "\n\nFixed depths are compared at the same mean multiply-adds per pixel (policy and "
        "exit heads included for DnCNN-stop): the best mix of two fixed depths that costs at most "
        "that (a random share of the images at each; stopwise.curves.best_fixed_mix). "
        + (
            "Budget points are matched by position across seeds (each seed's budgets are spread "
            "over its own kept exits' costs). "
            if same_length
            else "The seeds' curves have different numbers of points (different kept exits), "
            "so each seed's curve is listed on its own. "
        )
        + "The oracle stop at this cost chooses each image's exit knowing the clean image "
        "(argmax PSNR − λ·cost, λ swept): the best any policy could do with this model; "
        "'—' below its cheapest point (it pays the policy at every exit, a rule that skips "
        "the policy can cost less), as for the references below their cheapest depth."
        + (
            " DnCNNs trained per depth: plain DnCNNs of each depth in `trained_depths` and the "
            "DnCNN baseline at full depth, each trained alone with DnCNN's schedule, compared "
            "the same way (best at that cost, interpolated; none below the shallowest)."
            if with_trained
            else ""
        )
    )
    return {"table": table, "results": results}


def _paired_gain(seeds, column: list[dict], reference: str) -> dict[str, Any] | None:
    """PSNR minus ``reference`` paired over the seeds where the reference exists (None if none)."""
    gains = {
        s: c["psnr"] - c[reference]
        for s, c in zip(seeds, column, strict=True)
        if not math.isnan(c[reference])
    }
    return paired_difference(gains, dict.fromkeys(gains, 0.0)) if gains else None


def _curve_point(seeds, column: list[dict]) -> tuple[dict[str, Any], dict[str, str]]:
    """One budget point over ``seeds`` (one entry each): the mean of every value, the paired
    gain over the same model at a fixed depth of the same cost, and its table row."""
    gain = _paired_gain(seeds, column, "fixed_same_model")
    # The stop model's own numbers are plain means (a diverged seed's NaN shows); the references
    # are NaN by construction below their cheapest point, and ρ where every image stops at one
    # exit, so they are averaged over the seeds that have them.
    entry = {
        key: (statistics.fmean if key in STOP_MODEL_FIELDS else _nanmean)([c[key] for c in column])
        for key in column[0]
    }
    entry["gain_over_fixed_same_model"] = gain
    trained_gain = None
    if "trained_for_depth" in column[0]:
        trained_gain = _paired_gain(seeds, column, "trained_for_depth")
        entry["gain_over_trained_for_depth"] = trained_gain
    row = {
        "exit": f"{entry['mean_exit']:.2f}",
        "macs": _format_macs(entry["mean_cost"]),
        "stop": f"{entry['psnr']:.2f}",
        "same": _format_psnr(entry["fixed_same_model"]),
        "ds": _format_psnr(entry["fixed_uniform_ds"]),
        "oracle": _format_psnr(entry["oracle_same_cost"]),
        "rho": "—"
        if math.isnan(entry["spearman_exit_sigma"])
        else f"{entry['spearman_exit_sigma']:+.2f}",
        "gain": format_interval(gain) if gain else "—",
    }
    if "trained_for_depth" in entry:
        row["trained"] = _format_psnr(entry["trained_for_depth"])
        row["gain_trained"] = format_interval(trained_gain) if trained_gain else "—"
    return entry, row


def _format_psnr(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def _format_macs(value: float) -> str:
    return f"{value:.0f}" if value < 1e3 else f"{value / 1e3:.1f}k"


def _timed_rules_by_position(records: list[dict]) -> list[tuple[str, list[dict]]]:
    """The timed rules of every seed, matched by position: ``stop`` and the budget-curve points
    at about a third and two thirds of the range, whose names (``budget_<MACs>``) differ between
    seeds when their kept exits do. A name differing between seeds becomes ``budget_point_<k>``.
    Where a seed's two curve points fell on the same budget its record holds one (the timing
    dict keyed by budget): it stands for both positions."""

    def by_position(rules: dict) -> list[tuple[str, dict]]:
        stop, *points = rules.items()
        return [stop, *(points * 2 if len(points) == 1 else points)]

    per_seed = [by_position(r["rules"]) for r in records]
    out = []
    for k, column in enumerate(zip(*per_seed, strict=True)):
        names = {name for name, _ in column}
        name = names.pop() if len(names) == 1 else f"budget_point_{k}"
        out.append((name, [entry for _, entry in column]))
    return out


def _timing_table(jobs, seeds, T) -> dict[str, Any]:
    records = [jobs["dncnn-stop"][s]["timing"] for s in seeds]
    rows, results = [], {}
    full = [r["full_ms_per_image"] for r in records]
    rows.append(
        {"what": "DnCNN-stop model, full depth (no policy)", "ms": format_mean_sd(full, ".1f")}
    )
    for name, entries in _timed_rules_by_position(records):
        time_ratio = statistics.fmean(e["time_ratio"] for e in entries)
        exit_ratio = statistics.fmean(e["exit_ratio"] for e in entries)
        mac_ratio = statistics.fmean(e["mac_ratio"] for e in entries)
        results[name] = {
            "ms_per_image": [e["ms_per_image"] for e in entries],
            "time_ratio": time_ratio,
            "exit_ratio": exit_ratio,
            "mac_ratio": mac_ratio,
            "within_25_percent_of_exit_ratio": time_ratio <= 1.25 * exit_ratio,
        }
        rows.append(
            {
                "what": f"adaptive, rule {name} (mean exit "
                f"{statistics.fmean(e['mean_exit'] for e in entries):.2f} of {T})",
                "ms": format_mean_sd([e["ms_per_image"] for e in entries], ".1f"),
                "ratio": f"{time_ratio:.2f}",
                "exits": f"{exit_ratio:.2f}",
                "macs": f"{mac_ratio:.2f}",
            }
        )
    classical = [jobs["classical"][s]["timing"] for s in seeds]
    for key, label in (("bm3d", "BM3D"), ("nlm", "non-local means")):
        values = [c[f"{key}_cpu_ms_per_image"] for c in classical]
        rows.append({"what": f"{label} (CPU time)", "ms": format_mean_sd(values, ".0f")})
    table = (
        "### Time per test image (one thread; ms)\n\n"
        + markdown_table(
            rows,
            [
                ("what", "what", "s"),
                ("ms", "ms / image", "s"),
                ("ratio", "time / full", "s"),
                ("exits", "mean exit / exits", "s"),
                ("macs", "MACs / full", "s"),
            ],
        )
        + "\n\nDnCNN rows: wall-clock medians of interleaved repeats (time_adaptive), one image "
        "at a time; target: time / full ≤ 1.25 × (mean exit / exits)."
    )
    stop = results["stop"]
    return {
        "table": table,
        "results": {"full_ms_per_image": full, "rules": results},
        "stop_time_ratio": stop["time_ratio"],
        "stop_exit_ratio": stop["exit_ratio"],
    }


def _training(jobs, cpu, seeds, config) -> dict[str, Any]:
    """Training CPU time of each pipeline (process CPU seconds of its jobs) and the choices."""
    rows, results = [], {}
    for s in seeds:
        candidates = stage1_candidates(config)
        stage1 = candidates[jobs["dncnn-stop"][s]["stage1"]][0]
        pipelines = {
            "dncnn": cpu["pretrain"][s] + cpu["dncnn"][s],
            "dncnn_stop": cpu["pretrain"][s] + cpu[stage1][s] + cpu["dncnn-stop"][s],
            "dncnn_stop_all_betas": cpu["pretrain"][s]
            + sum(cpu[job][s] for job, _, _ in candidates.values())
            + cpu["dncnn-stop"][s],
            "classical": cpu["classical"][s],
        }
        results[s] = {"cpu_seconds": pipelines}
    for key, label in (
        ("dncnn", "DnCNN (pretrain + last-output updates), incl. its test"),
        ("dncnn_stop", "DnCNN-stop (pretrain + stage I at the chosen β + stage II + test)"),
        ("dncnn_stop_all_betas", "DnCNN-stop with every stage-I candidate (β) tried"),
        ("classical", "BM3D + NLM (validation and test)"),
    ):
        minutes = [results[s]["cpu_seconds"][key] / 60 for s in seeds]
        rows.append({"what": label, "minutes": format_mean_sd(minutes, ".3g")})  # seconds to hours
    table = "### CPU time per seed (minutes)\n\n" + markdown_table(
        rows, [("what", "pipeline", "s"), ("minutes", "CPU minutes", "s")]
    )
    return {"table": table, "results": results}


# ---------------------------------------------------------------- figures


def _shown(config: DenoisingConfig, seeds: list[int]) -> str:
    """What a figure's numbers are, for its title: the images and how many seeds they average."""
    images = f"images of {Path(config.images_dir).name}/" if config.images_dir else "sample photos"
    return f"{images}, {len(seeds)} seed(s)"


def _psnr_figure(quality, sigmas, unseen, seeds, shown):
    figure, axes = new_figure(6.0, 4.0)
    for key, label, _ in METHODS:
        if key == "noisy":
            continue
        means = [
            statistics.fmean(quality[key]["psnr"][s][j] for s in seeds) for j in range(len(sigmas))
        ]
        axes.plot(sigmas, means, "-o", markersize=3, label=label.replace("**", ""))
    # One band per run of neighbouring unseen σ: a single band from the lowest unseen σ to the
    # highest σ would shade training σ lying between (test σ below and above the training range).
    pairs = sorted(zip(sigmas, unseen, strict=True))
    runs = [[s for s, _ in run] for u, run in groupby(pairs, key=lambda p: p[1]) if u]
    for i, run in enumerate(runs):
        label = "σ unseen in training" if i == 0 else None
        axes.axvspan(run[0] - 2.5, run[-1] + 2.5, color="grey", alpha=0.15, label=label)
    title = f"Test PSNR per σ ({shown})"
    finish_axes(axes, "σ (of 255)", "test PSNR (dB)", title, title_size=8, legend=6)
    return figure


def _exit_figure(stop, sigmas, seeds, T):
    """Share of test images stopping at each exit, per σ (all seeds pooled)."""
    figure, axes = new_figure(6.0, 3.2)
    share = np.zeros((len(sigmas), T))
    for s in seeds:
        rows = stop[s]["rows"]["stop"]
        for exit_, sigma in zip(rows["exit"], stop[s]["sigma"], strict=True):
            share[sigmas.index(sigma), int(exit_) - 1] += 1
    share /= share.sum(axis=1, keepdims=True)
    used = {s: {int(e) for e in stop[s]["rows"]["stop"]["exit"]} for s in seeds}
    if all(len(exits) == 1 for exits in used.values()):  # one exit for every image of a seed
        which = ", ".join(f"seed {s}: exit {min(exits)}" for s, exits in used.items())
        axes.set_title(f"Every test image stops at one exit of {T} ({which})", fontsize=8)
    image = axes.imshow(share, aspect="auto", cmap="viridis", origin="lower",
                        extent=(0.5, T + 0.5, -0.5, len(sigmas) - 0.5))  # fmt: skip
    axes.set_yticks(range(len(sigmas)), [f"{s:g}" for s in sigmas])
    axes.set_xlabel("stop exit (DnCNN-stop)")
    axes.set_ylabel("σ")
    figure.colorbar(image, ax=axes, label="share of test images")
    return figure


def _grid_figure(jobs, seed, config):
    classical = jobs["classical"][seed]
    grid = classical["grid"]
    item = grid["item"]
    panels = [
        ("noisy", from_png_base64(grid["noisy"]), classical["noisy"]["psnr"][item]),
        (
            "DnCNN",
            from_png_base64(jobs["dncnn"][seed]["grid"]),
            jobs["dncnn"][seed]["test"]["psnr"][item],
        ),
        (
            "DnCNN-stop",
            from_png_base64(jobs["dncnn-stop"][seed]["grid"]["stop"]),
            jobs["dncnn-stop"][seed]["rows"]["stop"]["psnr"][item],
        ),
        ("BM3D", from_png_base64(grid["bm3d"]), classical["bm3d"]["psnr"][item]),
        ("clean", from_png_base64(grid["clean"]), None),
    ]
    figure, axes = new_figure(12.0, 3.0)
    figure.clear()
    for k, (title, image, value) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), k + 1)
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        exit_note = ""
        if title == "DnCNN-stop":
            exit_note = f", exit {int(jobs['dncnn-stop'][seed]['rows']['stop']['exit'][item])}"
        ax.set_title(
            title + (f" {value:.2f} dB" if value is not None else "") + exit_note, fontsize=8
        )
        ax.axis("off")
    figure.suptitle(f"{grid['name']}, σ = {config.grid_sigma:g} (seed {seed})", fontsize=9)
    return figure


def _per_exit_figure(jobs, seeds, sigmas, shown):
    figure, axes = new_figure(8.0, 4.0)
    colours = [f"C{k}" for k in range(len(sigmas))]
    for key, style, label in (
        ("dncnn-stop", "-o", "DnCNN-stop model"),
        ("dncnn-ds", "--", "uniform DS"),
    ):
        tables = [np.array(jobs[key][s]["exit_psnr_by_sigma"], dtype=float) for s in seeds]
        mean = np.mean(tables, axis=0)  # (T, σ)
        for j, sigma in enumerate(sigmas):
            axes.plot(range(1, mean.shape[0] + 1), mean[:, j], style, color=colours[j], markersize=2,
                      label=f"{label}, σ={sigma:g}")  # fmt: skip
    axes.set_xticks(range(1, mean.shape[0] + 1))  # exits are whole numbers
    title = f"Test PSNR at every exit ({shown})"
    finish_axes(axes, "exit", "test PSNR (dB)", title, title_size=8, outside=True)
    return figure


def _mean_xy(curves, x_key, y_key):
    return points_xy(in_x_order(mean_curve(curves), x_key), y_key, x_key)


def _best_fixed(fixed: list[dict[str, float]]) -> list[dict[str, float]]:
    """Each fixed depth's cost with the best PSNR a fixed depth reaches at that cost
    (:func:`_interpolate`): what the budget table compares the stop model with."""
    xs, ys = [f["mean_cost"] for f in fixed], [f["psnr"] for f in fixed]
    return [{"mean_cost": x, "psnr": _interpolate(x, xs, ys)} for x in xs]


def _seed_curves(records, seeds, key):
    """``(xs, ys, label suffix)``: the seeds' mean ``key`` curve, or each seed's own where their
    lengths differ (different kept exits)."""
    if len({len(r[key]) for r in records}) == 1:
        return [(*_mean_xy([r[key] for r in records], "mean_cost", "psnr"), "")]
    return [
        (*_mean_xy([r[key]], "mean_cost", "psnr"), f", seed {s}")
        for s, r in zip(seeds, records, strict=True)
    ]


def _budget_figure(jobs, seeds, shown):
    figure, axes = new_figure(6.0, 4.0)
    stop = [jobs["dncnn-stop"][s] for s in seeds]
    for xs, ys, name in _seed_curves(stop, seeds, "curve"):
        label = f"DnCNN-stop (thresholds from validation){name}"
        # on top and large: a seed's curve may be a single point among the other markers
        axes.plot(xs, ys, "-o", markersize=5, alpha=0.8, zorder=3, label=label)
    if "gain_curve" in stop[0]:
        for xs, ys, name in _seed_curves(stop, seeds, "gain_curve"):
            axes.plot(xs, ys, "v-", markersize=3, alpha=0.8, label=f"gain head{name}")
    xs, ys = _mean_xy([_best_fixed(r["fixed_depth"]) for r in stop], "mean_cost", "psnr")
    axes.plot(xs, ys, "s--", markersize=3, label="same model, best fixed depth at this cost")
    ds = [_best_fixed(jobs["dncnn-ds"][s]["fixed_depth"]) for s in seeds]
    xs, ys = _mean_xy(ds, "mean_cost", "psnr")
    axes.plot(xs, ys, "^:", markersize=3, label="uniform-DS model, best fixed depth")
    if any(name.startswith("dncnn-depth") for name in jobs):
        xs, ys = _mean_xy([_trained_depths(jobs, s) for s in seeds], "mean_cost", "psnr")
        axes.plot(xs, ys, "D-.", markersize=3, label="DnCNNs trained per depth")
    full = stop[0]["costs_per_pixel"]["fixed_depth"][-1]
    dncnn = statistics.fmean(statistics.fmean(jobs["dncnn"][s]["test"]["psnr"]) for s in seeds)
    axes.plot([full], [dncnn], "k*", markersize=8, label="DnCNN (last output)")
    oracle = statistics.fmean(statistics.fmean(r["rows"]["oracle"]["psnr"]) for r in stop)
    oracle_cost = statistics.fmean(r["rows"]["oracle"]["mean_macs_per_pixel"] for r in stop)
    axes.plot([oracle_cost], [oracle], "rx", markersize=7, label="oracle stop")
    bm3d = statistics.fmean(statistics.fmean(jobs["classical"][s]["bm3d"]["psnr"]) for s in seeds)
    axes.axhline(bm3d, color="grey", linestyle="-.", linewidth=1, label="BM3D")
    title = f"Budget curve of DnCNN-stop ({shown})"
    cost = "mean multiply-adds per pixel"
    finish_axes(axes, cost, "test PSNR, all σ (dB)", title, title_size=8, legend=6)
    return figure


def _training_figure(jobs, seeds, config):
    """Validation PSNR (training σ) against training CPU time: DnCNN (pretrain, then last-output
    updates) and the DnCNN-stop model (pretrain, then stage I at the chosen β; last exit and
    best exit), with BM3D's validation PSNR as a line."""
    figure, axes = new_figure(6.0, 4.0)
    seed = seeds[0]
    pretrain = jobs["pretrain"][seed]["training"]
    offset = pretrain["cpu_seconds"]
    pre_x = [p["cpu_seconds"] / 60 for p in pretrain["curve"]]
    axes.plot(pre_x, [p["last"] for p in pretrain["curve"]], "k-", label="pretrain (shared)")
    dncnn = jobs["dncnn"][seed]["training"]["curve"]
    axes.plot([(offset + p["cpu_seconds"]) / 60 for p in dncnn], [p["last"] for p in dncnn], "-",
              label="DnCNN, last output")  # fmt: skip
    chosen = jobs["dncnn-stop"][seed]["stage1"]
    stage1 = jobs[stage1_candidates(config)[chosen][0]][seed]["training"]["curve"]
    x = [(offset + p["cpu_seconds"]) / 60 for p in stage1]
    axes.plot(
        x, [p["last"] for p in stage1], "-", label=f"DnCNN-stop stage I ({chosen}), last exit"
    )
    axes.plot(x, [p["oracle"] for p in stage1], ":", label="DnCNN-stop stage I, best exit (oracle)")
    bm3d = jobs["classical"][seed]["bm3d"]["val_psnr"]
    axes.axhline(max(bm3d.values()), color="grey", linestyle="-.", linewidth=1, label="BM3D")
    title = f"seed {seed}; validation σ = {', '.join(f'{s:g}' for s in config.train_sigmas)}"
    minutes = "training CPU minutes (one thread)"
    finish_axes(axes, minutes, "validation PSNR (dB)", title, title_size=8, legend=6)
    return figure


def _curve_validation(config: DenoisingConfig) -> str:
    """Which validation items the budget curves' rules were fitted on."""
    side, sigmas, _ = validation_items(config, config.curve_validation == "like_test")
    return f"validation tiles ≤ {side}² at σ = {', '.join(f'{s:g}' for s in sigmas)}"
