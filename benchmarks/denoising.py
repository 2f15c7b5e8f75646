"""Denoising benchmark (issue 15): the `benchmark` preset (DnCNN-stop, DnCNN, uniform deep
supervision, oracle stop, BM3D, non-local means; 3 paired seeds, one thread) and its targets,
the CPU speed-ups measured for the DnCNN training step, and optionally the `quick` preset's time.

    .venv/bin/python benchmarks/denoising.py                  # benchmark preset (resumes)
    .venv/bin/python benchmarks/denoising.py --speedups-only  # only the training-step timings
    .venv/bin/python benchmarks/denoising.py --quick          # also time `quick` from scratch

Targets: DnCNN-stop ≥ DnCNN at every σ and ≥ +0.5 dB at σ = 65, 75 (paired over seeds);
DnCNN-stop above BM3D at σ = 35, 45, 55 (the gap at 65, 75 reported); Spearman ρ(σ, stop exit)
> 0; adaptive time within 25% of full-depth time × mean exit / exits; the policy ≤ 10% of a
step's multiply-adds; the benchmark preset ≤ 90 CPU-minutes; quick ≤ 10 minutes. Where a target
has per-seed values it is met when the 95% t interval over seeds says so (one seed: its value;
``stopwise.stats.interval_or_mean``); the policy's cost and the CPU minutes are measurements
(a count of multiply-adds, a sum of CPU time), judged as measured.

Writes ``benchmarks/results/denoising.json`` (machine, threads, date, wall and CPU time) and
copies the run's figures and table to ``benchmarks/results/denoising/`` (the folder named
after ``--out``). A rerun updates the JSON: the sections it computes (the speed-ups, the run's
results, ``quick``) replace theirs, the others stay, and ``stamps`` keeps, per section, the date
and machine of the call that computed it. The run directory
(``runs/denoising-benchmark``) resumes when the script is rerun; its jobs keep the CPU seconds
they recorded when they ran.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch
from machine_info import RESULTS, json_path, restamp, stamp

from stopwise.experiments import get_experiment, resolve_config, run_experiment
from stopwise.stats import interval_or_mean, mean_interval
from stopwise.tasks.denoising.data import load_splits, sample_patches

# The sections of the JSON, each written by one part of the script and stamped with the date
# and machine of the call that wrote it (``stamps``): "results" stands for the run's keys
# (preset, run, results, targets, shrink_one_and_two_threads).
SECTIONS = ("training_step_speedups", "results", "quick")


def jobs_of(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "jobs").glob("*.json")}


def run_preset(preset: str, run_dir: Path, overrides: list[str], run: bool = True) -> dict:
    """Run (or resume) a preset into ``run_dir`` — or, with ``run=False``, only read a finished
    run — and collect its results, table and the CPU seconds its jobs recorded."""
    start, cpu = time.perf_counter(), time.process_time()
    if run:
        run_experiment("denoising", preset, run_dir, overrides)
    jobs = jobs_of(run_dir)
    return {
        "run_dir": str(run_dir),
        "wall_seconds_this_call": time.perf_counter() - start,
        "cpu_seconds_this_call": time.process_time() - cpu,
        "cpu_seconds_all_jobs": sum(j["cpu_seconds"] for j in jobs.values()),
        "wall_seconds_all_jobs": sum(j["seconds"] for j in jobs.values()),
        "jobs": {
            k: {
                "cpu_seconds": j["cpu_seconds"],
                "seconds": j["seconds"],
                "resumed": j["resumed"],
                "finished": j["finished"],
            }
            for k, j in sorted(jobs.items())
        },
        "results": json.loads((run_dir / "results.json").read_text()),
        "table": (run_dir / "table.md").read_text(),
    }


def time_ratios_per_seed(timing: dict) -> list[float]:
    """Each seed's adaptive time over its full-depth time, from the report's per-seed
    milliseconds (the report's ``time_ratio`` is their mean)."""
    stop = timing["rules"]["stop"]["ms_per_image"]
    return [a / f for a, f in zip(stop, timing["full_ms_per_image"], strict=True)]


def targets(results: dict, cpu_seconds: float) -> dict:
    """Every target against the run's results. Paired differences and per-seed values are judged
    by their 95% t interval over seeds (``interval_or_mean``: one seed by its value); the policy's
    cost (a count of multiply-adds, the same on every seed) and the CPU minutes (a sum over the
    jobs) are measurements, judged as measured."""
    sigmas = results["sigmas"]
    comparisons = results["comparisons"]

    def diff(a: str, b: str, sigma: float) -> dict:
        found = next(c for c in comparisons if (c["a"], c["b"], c["sigma"]) == (a, b, sigma))
        return {k: found[k] for k in ("mean", "lo", "hi", "n", "per_seed")}

    def low(d: dict) -> float:
        return interval_or_mean(d)[0]

    def every(checks: list[bool]) -> bool | None:
        """All true; None (not measured) when the run has no such σ, never met by default."""
        return all(checks) if checks else None

    vs_dncnn = {s: diff("stop", "dncnn", s) for s in sigmas}
    vs_bm3d = {s: diff("stop", "bm3d", s) for s in sigmas}
    seen = [s for s, u in zip(sigmas, results["unseen"], strict=True) if not u]
    unseen = [s for s, u in zip(sigmas, results["unseen"], strict=True) if u]
    rho = list(results["spearman_exit_sigma"].values())
    rho_interval = mean_interval(rho) if rho and None not in rho else None
    timing = results["timing"]["rules"]["stop"]
    time_ratios = time_ratios_per_seed(results["timing"])
    time_interval = mean_interval(time_ratios)
    cost = results["policy_cost"]
    return {
        "stop_ge_dncnn_every_sigma": {
            "paired_difference_db": vs_dncnn,
            "met_by_mean": all(vs_dncnn[s]["mean"] >= 0 for s in sigmas),
            "met_by_interval": all(low(vs_dncnn[s]) >= 0 for s in sigmas),
        },
        "stop_minus_dncnn_unseen_ge_0.5": {
            "values_db": {s: vs_dncnn[s]["mean"] for s in unseen},
            "met_by_mean": every([vs_dncnn[s]["mean"] >= 0.5 for s in unseen]),
            "met_by_interval": every([low(vs_dncnn[s]) >= 0.5 for s in unseen]),
            "paper_db": {"65": 1.37, "75": 0.72},
        },
        "stop_above_bm3d_seen_sigma": {
            "paired_difference_db": {s: vs_bm3d[s] for s in seen},
            "met_by_mean": every([vs_bm3d[s]["mean"] > 0 for s in seen]),
            "met_by_interval": every([low(vs_bm3d[s]) > 0 for s in seen]),
            "paper_db": {"35": 0.8, "45": 0.6, "55": 0.6},
        },
        "gap_to_bm3d_unseen_sigma_db": {s: vs_bm3d[s]["mean"] for s in unseen},
        "spearman_exit_sigma": {
            # a seed whose ρ is undefined (every test image stops at one exit) shows no rise
            "per_seed": results["spearman_exit_sigma"],
            "over_seeds": rho_interval,
            "met": rho_interval is not None and low(rho_interval) > 0,
        },
        "adaptive_time_within_25_percent": {
            "time_ratio": timing["time_ratio"],
            "exit_ratio": timing["exit_ratio"],
            "mac_ratio": timing["mac_ratio"],
            # per-seed time ratios against 1.25 × the mean exit ratio over seeds (the report
            # keeps no per-seed exit ratio)
            "time_ratio_per_seed": time_ratios,
            "time_ratio_over_seeds": time_interval,
            "met": interval_or_mean(time_interval)[1] <= 1.25 * timing["exit_ratio"],
        },
        "policy_cost_le_10_percent_of_a_step": {  # a measurement: a count of multiply-adds
            "fraction": cost["policy_fraction_of_step"],
            "met": cost["policy_fraction_of_step"] <= 0.10,
        },
        "benchmark_cpu_minutes_le_90": {  # a measurement: CPU time summed over the jobs
            "cpu_minutes": cpu_seconds / 60,
            "met": cpu_seconds <= 90 * 60,
        },
        "budget_curve_vs_fixed_depth_same_cost": [
            {
                "seed": p.get("seed"),  # set where the seeds' curves differ in length
                "mean_exit": p["mean_exit"],
                "mean_macs_per_pixel": p["mean_cost"],
                "stop_psnr": p["psnr"],
                "same_model_fixed_psnr": p["fixed_same_model"],
                "uniform_ds_fixed_psnr": p["fixed_uniform_ds"],
            }
            for p in results["budget_curve"]
        ],
    }


def training_step_seconds(
    depth: int, width: int, patch: int, batch: int, threads: int, precision: str, layout: bool,
    repeats: int,
) -> dict:  # fmt: skip
    """Median CPU and wall seconds of one DnCNN training step (forward, backward, Adam) on real
    patches, with the task's own model (so autocast and memory layout are the task's)."""
    from stopwise.tasks.denoising.models import DnCNN

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DnCNN(depth, width, precision, layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = load_splits("").train.images
    noisy, noise = sample_patches(images, batch, patch, [35.0, 45.0, 55.0], torch.Generator())
    cpu, wall = [], []
    for i in range(repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = ((model(noisy) - noise) ** 2).flatten(1).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    pixels = batch * patch * patch
    return {
        "threads": threads,
        "precision": precision,
        "channels_last": layout,
        "patch": patch,
        "batch": batch,
        "median_cpu_seconds": statistics.median(cpu),
        "median_wall_seconds": statistics.median(wall),
        "cpu_microseconds_per_pixel": 1e6 * statistics.median(cpu) / pixels,
        "wall_microseconds_per_pixel": 1e6 * statistics.median(wall) / pixels,
    }


def speedups(depth: int, width: int, repeats: int) -> dict:
    """The training step under each CPU setting, one at a time: precision, memory layout,
    thread count and patch size (patches per step chosen so pixels per step stay ≈ 102k)."""
    variants = [
        ("float32", False, 1, 40, 64),
        ("float32", True, 1, 40, 64),
        ("bfloat16", False, 1, 40, 64),
        ("bfloat16", True, 1, 40, 64),
        ("bfloat16", True, 2, 40, 64),
        ("float32", False, 2, 40, 64),
        ("bfloat16", True, 1, 50, 41),
        ("bfloat16", True, 1, 64, 25),
        ("bfloat16", True, 1, 32, 100),
    ]
    rows = [
        training_step_seconds(depth, width, patch, batch, threads, precision, layout, repeats)
        for precision, layout, threads, patch, batch in variants
    ]
    torch.set_num_threads(1)
    base = rows[0]["cpu_microseconds_per_pixel"]
    for row in rows:
        row["cpu_speedup_vs_float32_nchw_1_thread"] = base / row["cpu_microseconds_per_pixel"]
        row["wall_speedup_vs_float32_nchw_1_thread"] = (
            rows[0]["wall_microseconds_per_pixel"] / row["wall_microseconds_per_pixel"]
        )
    return {"depth": depth, "width": width, "repeats": repeats, "rows": rows}


def shrink_threads(run_dir: Path, seed: int, repeats: int) -> dict:
    """Full depth against adaptive (shrink) inference of DnCNN-stop on the test images, one
    image at a time, with one and with two threads (medians of interleaved repeats), for the
    chosen rule and every point of the budget curve (its validation-fitted threshold): the
    measured speedup beside the multiply-add ratio (issue 17: speedup ≥ 0.8 × MAC ratio), on
    the model's inference copy (BatchNorm folded; the same function and multiply-adds)."""
    from stopwise import load_stop_model
    from stopwise.inference import time_adaptive
    from stopwise.selection import point_rule

    trained = load_stop_model(run_dir, "dncnn-stop", seed)
    model, policy, valid = trained.inference_model(), trained.policy, trained.valid_steps
    batches = trained.test_inputs()  # the test images, grouped by shape
    images = sum(noisy.shape[0] for noisy in batches)
    curve = jobs_of(run_dir)[f"dncnn-stop-s{seed}"]["record"]["curve"]
    rules = {"stop": trained.rules["stop"]}
    rules.update({f"curve_{k}": point_rule(p) for k, p in enumerate(curve)})
    full_macs = float(model.fixed_depth_macs()[-1])
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        full, seconds, steps = 0.0, dict.fromkeys(rules, 0.0), {}
        for noisy in batches:
            r = time_adaptive(model, policy, noisy, rules, valid, repeats, chunk=1)
            full += r["full_seconds"]
            for name, timed in r["rules"].items():
                seconds[name] += timed["seconds"]
                steps[name] = timed["mean_steps"]
        points = {}
        for name in rules:
            point = curve[int(name.split("_")[1])] if name != "stop" else None
            mac_ratio = point["mean_cost"] / full_macs if point else None
            speedup = full / seconds[name]
            points[name] = {
                "adaptive_ms_per_image": 1e3 * seconds[name] / images,
                "mean_exit": steps[name],
                "speedup": speedup,
                "ideal_speedup_macs": 1 / mac_ratio if mac_ratio else None,
                "speedup_over_ideal": speedup * mac_ratio if mac_ratio else None,
            }
        out[f"threads_{threads}"] = {
            "full_ms_per_image": 1e3 * full / images,
            "exits": model.max_steps,
            "rules": points,
        }
    torch.set_num_threads(1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="benchmark")
    parser.add_argument("--run-dir", default="runs/denoising-benchmark")
    parser.add_argument("--out", default=str(RESULTS / "denoising.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=5, help="training-step timing repeats")
    parser.add_argument("--speedups-only", action="store_true")
    parser.add_argument("--skip-speedups", action="store_true", help="keep the JSON's timings")
    parser.add_argument(
        "--no-run", action="store_true", help="read the finished run directory instead of running"
    )
    parser.add_argument("--quick", action="store_true", help="also time `quick` from scratch")
    parser.add_argument("--note", default="", help="how the machine was shared, etc.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config, _ = resolve_config(get_experiment("denoising"), args.preset, args.overrides)
    out = json_path(parser, args.out)
    report: dict = json.loads(out.read_text()) if out.exists() else {}
    earlier = [s for s in SECTIONS if s in report]
    written = []
    report.update({"benchmark": "denoising", "threads": 1})
    if not args.skip_speedups:
        written.append("training_step_speedups")
        report["training_step_speedups"] = speedups(config.depth, config.width, args.repeats)
    for row in report.get("training_step_speedups", {}).get("rows", []):
        print(json.dumps({k: row[k] for k in row if "speedup" in k or k in ("precision", "threads", "channels_last", "patch")}))  # fmt: skip
    if not args.speedups_only:
        written.append("results")
        run = run_preset(args.preset, Path(args.run_dir), args.overrides, not args.no_run)
        report["preset"] = args.preset
        report["run"] = {k: v for k, v in run.items() if k != "results"}
        report["results"] = run["results"]
        report["targets"] = targets(run["results"], run["cpu_seconds_all_jobs"])
        verdicts = {
            name: {k: target[k] for k in ("met", "met_by_mean", "met_by_interval") if k in target}
            for name, target in report["targets"].items()
            if isinstance(target, dict)
        }
        print(json.dumps({name: v for name, v in verdicts.items() if v}))
        figures = out.with_suffix("")  # denoising.json -> denoising/
        figures.mkdir(parents=True, exist_ok=True)
        for figure in (Path(args.run_dir) / "figures").glob("*.png"):
            shutil.copy(figure, figures / figure.name)
        shutil.copy(Path(args.run_dir) / "table.md", figures / "table.md")
        seed = run["results"]["seeds"][0]
        report["shrink_one_and_two_threads"] = {
            "seed": seed,
            **shrink_threads(Path(args.run_dir), seed, args.repeats),
        }
    if args.quick:
        written.append("quick")
        quick_dir = Path("runs") / "denoising-quick-timing"
        if quick_dir.exists():
            shutil.rmtree(quick_dir)
        quick = run_preset("quick", quick_dir, [])
        report["quick"] = {
            "wall_seconds": quick["wall_seconds_this_call"],
            "cpu_seconds": quick["cpu_seconds_this_call"],
            "target_seconds": 600,
            "met": quick["cpu_seconds_this_call"] <= 600,
            "table": quick["table"],
        }
    restamp(report, earlier, written, stamp(note=args.note))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
