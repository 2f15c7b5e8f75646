"""Learned-optimizers benchmark (issue 13): the `benchmark` preset (three meta-training seeds, one
thread) and its targets, with wall and CPU time.

1. The LSTM optimizer beats every tuned hand-designed optimizer on its training family at steps
   20 and 100 (mean log10 suboptimality; intervals over test functions separated, and the
   paired difference over seeds below zero; the MLP, which has no known optimum: mean log10
   training loss at its horizon, the paired difference over seeds below zero).
2. The ACT optimizer and L2S-stop reach the LSTM optimizer's NLL at its full horizon (within
   5%) with ≥ 30% fewer mean steps on the regression family, and beat the hand-designed stop
   rules' trade-off at every λ tried.
3. The stop step correlates with difficulty (Spearman > 0.3).
4. The whole preset in ≤ 60 CPU-minutes on one thread.

A target over seeds is met when the 95% Student-t interval of the per-seed values says so
(DESIGN.md; one seed: its value, ``stats.interval_or_mean``): for 1, the interval of the paired
difference LSTM − optimizer below zero; for 2, the interval of the per-seed relative NLL excess
over the LSTM's at most 5% and that of the per-seed step saving at least 30%, and per λ the
interval of the paired difference stop rule − best hand-designed rule below zero; for 3, the
interval of the per-seed Spearman ρ above 0.3. :func:`targets` judges from the per-seed values and
intervals in the report's results, so it re-judges an older results file by today's rules too.

    .venv/bin/python benchmarks/learned_optimizers.py [--preset benchmark] [--out DIR]

Writes ``benchmarks/results/learned_optimizers.json`` and copies the run's table and figures to
``benchmarks/results/learned_optimizers/`` (``--results DIR``: ``DIR/NAME.json`` and ``DIR/NAME/``). The run directory resumes when rerun (jobs finished
before keep the times they recorded when they ran).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from machine_info import add_results_option, machine

from stopwise.experiments import run_experiment
from stopwise.stats import interval_or_mean, mean_interval

ROOT = Path(__file__).resolve().parent


def _by_seed(per_seed: dict) -> dict[str, dict]:
    """Per-seed records keyed by the seed as a string (JSON files have string keys)."""
    return {str(seed): value for seed, value in per_seed.items()}


def _interval(values: list[float]) -> dict:
    d = mean_interval(values)
    return {"mean": d["mean"], "lo": d["lo"], "hi": d["hi"], "n": d["n"]}


def reaches_verdict(
    row: dict, lstm: dict, *, horizon: int, tolerance: float = 0.05, saving: float = 0.3
) -> dict:
    """ "Reaches the LSTM's NLL (within ``tolerance``) with ≥ ``saving`` fewer mean steps", judged
    on per-seed values: each seed's relative NLL excess (NLL at the stop − the same seed's LSTM
    NLL at the full horizon) / |LSTM NLL| and its step saving 1 − steps / horizon. Met when the
    excess's 95% interval over seeds tops out at ``tolerance`` or below and the saving's starts
    at ``saving`` or above (one seed: its values), and every seed of the LSTM has a stop (a
    "reach" row is absent on a seed where no threshold reaches the NLL on validation: not met).
    ``row`` and ``lstm`` are rows of the report's stopping section (``per_seed`` records with
    ``nll`` and ``steps``)."""
    stops, reference = _by_seed(row["per_seed"]), _by_seed(lstm["per_seed"])
    missing = sorted(s for s in reference if s not in stops)
    seeds = [s for s in reference if s in stops]
    excess = {s: (stops[s]["nll"] - reference[s]["nll"]) / abs(reference[s]["nll"]) for s in seeds}
    savings = {s: 1.0 - stops[s]["steps"] / horizon for s in seeds}
    out: dict = {"seeds_without_a_stop": missing}
    if not seeds:
        return {**out, "met": False}
    out["nll_excess"] = {**_interval(list(excess.values())), "per_seed": excess}
    out["step_saving"] = {**_interval(list(savings.values())), "per_seed": savings}
    out["met"] = (
        not missing
        and interval_or_mean(out["nll_excess"])[1] <= tolerance
        and interval_or_mean(out["step_saving"])[0] >= saving
    )
    return out


def spearman_verdict(values: list[float | None], target: float = 0.3) -> dict:
    """Spearman(stop step, difficulty) > ``target`` over seeds: met when the 95% interval of the
    per-seed ρ lies above ``target`` (one seed: its ρ). A seed where ρ is undefined (None: a
    constant stop step, which follows no difficulty) is left out of the interval, as the
    report's mean leaves it out, and the target is not met."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"per_seed": values, "mean": None, "lo": None, "hi": None, "met": False}
    d = _interval(present)
    met = len(present) == len(values) and interval_or_mean(d)[0] > target
    return {**d, "per_seed": values, "met": met}


def beats_rules(difference: dict) -> bool:
    """A stop rule beats the best hand-designed rule at one λ: the paired interval over seeds of
    their trade-off difference below zero (one seed: its value), from the stored interval."""
    return interval_or_mean(difference)[1] < 0


def targets(results: dict, config: dict) -> dict:
    """Each target of the issue, met or not, with the numbers that decide it. Every verdict is
    judged here from the per-seed values or paired intervals the report stores (the interval
    rule of the module's docstring), not copied from flags an older report may have set."""
    out: dict = {}
    families = results["families"]
    horizon, tolerance = config["horizon"], config.get("nll_tolerance", 0.05)
    for family, section in families.items():
        if family == "mlp":  # no optimum: the measure is the log10 training loss at the horizon
            row = section["optimizers"]["comparisons"]["base"]["log10_loss"]
            out["mlp: LSTM beats every tuned optimizer"] = {
                "measure": "mean log10 training loss at the horizon, base network",
                "lstm_minus_each": {
                    k: {"mean": c["mean"], "lo": c["lo"], "hi": c["hi"]} for k, c in row.items()
                },
                "met": all(interval_or_mean(c)[1] < 0 for c in row.values()),
            }
        elif "optimizers" in section:
            comparisons = section["optimizers"]["comparisons"]
            steps = section["optimizers"]["beats_every_optimizer"]
            beats = {
                H: {
                    "over_functions": all(
                        c["intervals_separated"] for c in comparisons[H].values()
                    ),
                    "over_seeds": all(interval_or_mean(c)[1] < 0 for c in comparisons[H].values()),
                }
                for H in steps
            }
            out[f"{family}: LSTM beats every tuned optimizer"] = {
                "per_step": beats,
                "lstm_minus_each": {
                    H: {
                        k: {"mean": c["mean"], "lo": c["lo"], "hi": c["hi"]} for k, c in row.items()
                    }
                    for H, row in comparisons.items()
                },
                "met": bool(beats)
                and all(b["over_functions"] and b["over_seeds"] for b in beats.values()),
            }
        if "stopping" in section:
            rows = section["stopping"]["rows"]
            for key in ("act", "act-reach", "l2s", "l2s-reach"):
                name = f"{family}: {key} reaches the LSTM's NLL with ≥ 30% fewer steps"
                row = rows.get(key)
                if row is None:
                    out[name] = {"met": False, "why": "no threshold reaches it on validation"}
                    continue
                verdict = reaches_verdict(row, rows["lstm"], horizon=horizon, tolerance=tolerance)
                out[name] = {
                    "mean_steps": row["steps"],
                    "nll": row["nll"],
                    "lstm_nll": rows["lstm"]["nll"],
                    "seeds_within_tolerance": (
                        f"{row['reaches_reference']}/{row.get('seeds_total', row['seeds'])}"
                    ),
                    **verdict,
                }
            tradeoff = section["tradeoff"]["rows"]
            for key in ("act", "l2s"):
                per_lambda = {
                    str(r["step_cost"]): {
                        "beats": beats_rules(r[f"{key}_minus_rules"]),
                        "difference": {k: r[f"{key}_minus_rules"][k] for k in ("mean", "lo", "hi")},
                    }
                    for r in tradeoff
                }
                out[f"{family}: {key} beats the hand-designed rules at every λ"] = {
                    "per_lambda": per_lambda,
                    "met": bool(per_lambda) and all(v["beats"] for v in per_lambda.values()),
                }
            spearman = {}
            for name in ("act", "l2s"):
                row = rows.get(name)
                if row is None:
                    continue
                per_seed = list(_by_seed(row["per_seed"]).values())
                spearman[name] = {
                    which: spearman_verdict([v["spearman"].get(which) for v in per_seed])
                    for which in per_seed[0]["spearman"]
                }
            out[f"{family}: Spearman(stop step, difficulty) > 0.3"] = {
                "values": spearman,
                "met": {
                    name: {which: v["met"] for which, v in values.items()}
                    for name, values in spearman.items()
                },
            }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="benchmark")
    parser.add_argument("--out", default=str(ROOT.parent / "runs" / "learned-optimizers-benchmark"))
    parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    parser.add_argument("--name", help="name of the results (default: from the preset)")
    add_results_option(parser)
    parser.add_argument(
        "--note",
        default="measured on a shared 2-core machine under load (other processes running)",
        help="how the machine was shared while the jobs ran",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    start, cpu_start = time.perf_counter(), time.process_time()
    run_experiment("learned-optimizers", args.preset, out, ["threads=1", *args.set])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    results = json.loads((out / "results.json").read_text())
    config = json.loads((out / "config.json").read_text())["config"]
    jobs = [json.loads(p.read_text()) for p in sorted((out / "jobs").glob("*.json"))]
    job_cpu = sum(j["cpu_seconds"] for j in jobs)
    job_wall = sum(j["seconds"] for j in jobs)
    summary = {
        "machine": machine(),
        "threads": 1,
        "preset": args.preset,
        "overrides": args.set,
        "run_dir": str(out),
        "this_call": {"wall_seconds": wall, "cpu_seconds": cpu},
        "jobs": {
            "count": len(jobs),
            "cpu_seconds": job_cpu,
            "wall_seconds": job_wall,
            "per_job": {
                j["id"]: {
                    "cpu_seconds": j["cpu_seconds"],
                    "seconds": j["seconds"],
                    "resumed": j.get("resumed", False),
                }
                for j in jobs
            },
            # A resumed job's times cover only the part after its last checkpoint.
            "resumed": sorted(j["id"] for j in jobs if j.get("resumed")),
        },
        "cpu_budget": {"cpu_minutes": job_cpu / 60, "target": 60, "met": job_cpu <= 3600},
        "targets": targets(results, config),
        "families": results["families"],
        "note": f"{args.note}; CPU seconds are per job (process time), wall seconds include "
        "waiting for the CPU",
    }
    args.results.mkdir(parents=True, exist_ok=True)
    name = args.name or (
        "learned_optimizers" if args.preset == "benchmark" else f"learned_optimizers-{args.preset}"
    )
    (args.results / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    copy = args.results / name
    copy.mkdir(exist_ok=True)
    shutil.copy(out / "table.md", copy / "table.md")
    for figure in (out / "figures").glob("*.png"):
        shutil.copy(figure, copy / figure.name)
    print(json.dumps({k: v["met"] for k, v in summary["targets"].items()}, indent=1))
    print(f"CPU minutes (jobs): {job_cpu / 60:.1f}")


if __name__ == "__main__":
    main()
