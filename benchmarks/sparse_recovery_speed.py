"""Do the sparse-recovery stop models' MAC savings turn into wall-clock savings? (issue 17)

For each stop model of a finished run and the budgets of its curve (thresholds calibrated on
validation, as in the run's record), `run_adaptive(mode="shrink")` on the test split is timed
against the same model run to full depth (`inference.time_adaptive`: interleaved repeats,
medians), in row batches of ``--batch`` (≥ 1000), at one and two threads. Target at every budget:
speedup ≥ 0.8 × (full-depth MACs / mean MACs), the mean MACs counting the model, the policy's
features and the policy at every step run. Also measured: the policy's cost per step (features +
MLP) against one step of the model, in MACs and in time.

    .venv/bin/python benchmarks/sparse_recovery_speed.py [--run runs/sparse-benchmark] [--seed 0]
        [--threads 1 2] [--repeats 7] [--batch 1000] [--every 4] [--note "..."]

Writes ``benchmarks/results/sparse_recovery_speed.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch
from machine_info import machine

from stopwise.contract import RunDir, job_id
from stopwise.inference import run_adaptive, time_adaptive
from stopwise.perf import reuse_freed_memory
from stopwise.selection import point_rule
from stopwise.tasks.sparse_recovery.experiment import STOP_MODELS, load_stop_model, stop_costs

ROOT = Path(__file__).resolve().parent
TARGET = 0.8


def curve_rules(record: dict, every: int) -> dict[str, object]:
    """The threshold rules of every ``every``-th budget of the curve (and the last), by name."""
    kind, curve = record["policy"]["kind"], record["curve"]
    points = curve[::every] if (len(curve) - 1) % every == 0 else [*curve[::every], curve[-1]]
    return {f"budget {p['budget']:.2f}": point_rule(p, kind) for p in points}


@torch.no_grad()
def policy_overhead(model, policy, y: torch.Tensor, repeats: int) -> dict:
    """Per step, in MACs and in seconds (medians of interleaved repeats): the model's step against
    the policy's features and MLP on the same state."""
    states, t_mid = [model.start(y)], model.max_steps // 2
    for t in range(t_mid + 1):
        states.append(model.advance(states[-1], t))
    before, after = states[-2], states[-1]
    step_times, policy_times = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model.advance(before, t_mid)
        step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        policy(model.observe(after, t_mid)[1], t_mid)
        policy_times.append(time.perf_counter() - start)
    step_s, policy_s = statistics.median(step_times[1:]), statistics.median(policy_times[1:])
    step_macs = float(model.step_costs()[-1] - model.step_costs()[-2])
    policy_macs = float(model.feature_costs()[t_mid]) + policy.macs()
    return {
        "step": t_mid,
        "rows": int(y.shape[0]),
        "step_macs": step_macs,
        "policy_macs": policy_macs,
        "mac_fraction": policy_macs / step_macs,
        "step_seconds": step_s,
        "policy_seconds": policy_s,
        "time_fraction": policy_s / step_s,
        "target_fraction": 0.1,
    }


def measure(run: Path, name: str, seed: int, threads: int, args) -> dict:
    torch.set_num_threads(threads)
    model, policy, valid, _, problem = load_stop_model(run, name, seed)
    record = RunDir(run).job_file(job_id(STOP_MODELS[name][1], seed))["record"]
    y = problem.test.open().y
    rules = curve_rules(record, args.every)
    timing = time_adaptive(model, policy, y, rules, valid, repeats=args.repeats, chunk=args.batch)
    costs = stop_costs(model, policy)
    full_macs = float(model.step_costs()[-1])
    points = []
    for rule_name, rule in rules.items():
        result = run_adaptive(model, policy, y, rule, "shrink", valid, costs)
        mean_macs = float(result.cost.double().mean())
        measured = timing["rules"][rule_name]
        ratio = full_macs / mean_macs
        points.append(
            {
                "rule": rule_name,
                "mean_steps": measured["mean_steps"],
                "mean_macs": mean_macs,
                "mac_ratio": ratio,
                "seconds": measured["seconds"],
                "speedup": measured["speedup"],
                "target_speedup": TARGET * ratio,
                "met": measured["speedup"] >= TARGET * ratio,
            }
        )
    return {
        "threads": threads,
        "full_seconds": timing["full_seconds"],
        "points": points,
        "met_everywhere": all(p["met"] for p in points),
        "worst_speedup_over_target": min(p["speedup"] / p["target_speedup"] for p in points),
        "policy_overhead": policy_overhead(model, policy, y[: args.batch], args.repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/sparse-benchmark", help="a finished run directory")
    parser.add_argument("--seed", type=int, default=None, help="default: the run's first seed")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1000, help="rows per batch (≥ 1000)")
    parser.add_argument("--every", type=int, default=4, help="time every k-th budget of a curve")
    parser.add_argument("--out", default=str(ROOT / "results" / "sparse_recovery_speed.json"))
    parser.add_argument("--note", default="", help="how the machine was shared, etc.")
    args = parser.parse_args()
    reuse_freed_memory()
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    seed = config["config"]["seeds"][0] if args.seed is None else args.seed
    report = {
        "benchmark": "sparse_recovery_speed",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "note": args.note,
        "run": str(run),
        "preset": config.get("preset"),
        "seed": seed,
        "batch": args.batch,
        "repeats": args.repeats,
        "target": f"shrink speedup ≥ {TARGET} × (full MACs / mean MACs) at every budget",
        "models": {},
    }
    start = time.perf_counter()
    for name in STOP_MODELS:
        report["models"][name] = [measure(run, name, seed, k, args) for k in args.threads]
        for by_threads in report["models"][name]:
            print(
                f"{name}, {by_threads['threads']} thread(s): speedup/target "
                + " ".join(
                    f"{p['mean_steps']:.1f}:{p['speedup']:.2f}/{p['target_speedup']:.2f}"
                    for p in by_threads["points"]
                )
                + f"; policy {by_threads['policy_overhead']['time_fraction']:.1%} of a step",
                flush=True,
            )
    report["met_everywhere"] = all(
        m["met_everywhere"] for runs in report["models"].values() for m in runs
    )
    report["wall_seconds"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
