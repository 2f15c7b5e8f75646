"""ACT on n = 16 parity with its learning rate chosen on validation (issue 12, "ACT (parity)").

Runs the ``benchmark`` preset restricted to ACT (its grid ``act_lr`` = {1e-4, 3e-4, 1e-3, 3e-3},
τ = 1e-4) and fixed depth 4 (the depth the committed benchmark chose on validation), every job at
the benchmark's full 25,000 updates, over the seeds given (default 0, 1, 2: what fits a 35
CPU-minute budget on the shared 2-core machine). The learning rate is the one of highest mean
validation accuracy (the report's choice, never a test number). Then, paired by seed
(:func:`stopwise.stats.paired_difference`, same seeds, same streams, same initial weights):
ACT at its validated lr − ACT at the old shared lr 3e-3, and ACT at its validated lr − fixed
depth 4. The committed benchmark (``parity.json``) was made before the port to named random
streams and kept no per-seed numbers, so it is quoted, not paired.

    nice -n 10 .venv/bin/python benchmarks/parity_act_lr.py --set seeds=0,1,2 --extra-seeds 3

``--extra-seeds`` runs, after the choice, only the chosen lr, lr 3e-3 and fixed depth 4 on more
seeds (in ``<out>-extra``); they join the paired comparisons but played no part in the choice.

Writes ``parity-act-lr.json`` in ``--results`` (default ``benchmarks/results/``; machine, threads, date, wall and CPU time, load
average, the lines, the paired differences, the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from machine_info import add_results_option, machine

from stopwise.experiments import run_experiment
from stopwise.stats import paired_difference

BASE = ["progress=false", "methods=fixed,act", "fixed_depth=4", "workers=2", "threads=1"]
OLD_LR = 0.003
COMMITTED = {"fixed depth 4": "99.96 ± 0.04", "ACT τ=1e-4, lr 3e-3": "87.01 ± 3.78 (0/5 > 99%)"}


def per_seed(rows: list[dict], **match) -> dict[int, float]:
    return {r["seed"]: r["interpolation"] for r in rows if all(r[k] == v for k, v in match.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/parity-act-lr", help="run directory")
    add_results_option(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--extra-seeds", default="", help="e.g. 3,4: evaluation-only seeds")
    args = parser.parse_args(argv)
    overrides = [*BASE, *args.overrides]
    out = Path(args.out)
    load_before = os.getloadavg()
    start = time.perf_counter()
    run = run_experiment("parity", "benchmark", out, overrides)
    results = json.loads((run.path / "results.json").read_text())
    jobs = [json.loads(p.read_text()) for p in sorted((run.path / "jobs").glob("*.json"))]
    rows, lines = results["rows"], results["lines"]
    act_lines = [line for line in lines if line["method"] == "act"]
    chosen = next(line for line in act_lines if line["best"])
    extra_rows, extra_jobs = [], []
    if args.extra_seeds:
        grid = sorted({chosen["lr"], OLD_LR})
        extra = [*overrides, f"seeds={args.extra_seeds}", f"act_lr={','.join(map(str, grid))}"]
        extra += [f"act_tau={chosen['value']}"]
        extra_run = run_experiment("parity", "benchmark", Path(f"{out}-extra"), extra)
        extra_rows = json.loads((extra_run.path / "results.json").read_text())["rows"]
        extra_jobs = [json.loads(p.read_text()) for p in (extra_run.path / "jobs").glob("*.json")]
    wall = time.perf_counter() - start
    all_rows = rows + extra_rows
    act_chosen = per_seed(all_rows, method="act", value=chosen["value"], lr=chosen["lr"])
    act_old = per_seed(all_rows, method="act", value=chosen["value"], lr=OLD_LR)
    fixed = per_seed(all_rows, method="fixed", value=4)
    paired = {
        f"act lr={chosen['lr']:g} - act lr={OLD_LR:g}": paired_difference(act_chosen, act_old),
        f"act lr={chosen['lr']:g} - fixed depth 4": paired_difference(act_chosen, fixed),
        f"act lr={OLD_LR:g} - fixed depth 4": paired_difference(act_old, fixed),
    }
    jobs += extra_jobs
    report = {
        "machine": machine(),
        "preset": "benchmark",
        "overrides": overrides,
        "run_dir": str(out),
        "workers": results["task"]["workers"],
        "threads_per_worker": results["task"]["threads"],
        "wall_seconds": wall,  # this invocation (jobs already finished in out are not rerun)
        "cpu_seconds_jobs": sum(job["cpu_seconds"] for job in jobs),
        "job_seconds": {job["id"]: job["seconds"] for job in jobs},
        "resumed_or_reused": any(job.get("resumed") or "reused_from" in job for job in jobs),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": "timings under load from other processes on a shared 2-core machine",
        "task": results["task"],
        "chosen_on_validation": {"value": chosen["value"], "lr": chosen["lr"]},
        "lines": [{k: v for k, v in line.items() if k != "per_k"} for line in lines],
        "per_k": {
            f"{line['method']}-{line['value']:g}-lr{line['lr']:g}": line["per_k"] for line in lines
        },  # fmt: skip
        "rows": [{k: v for k, v in row.items() if k != "per_k"} for row in rows],
        "extra_seeds": args.extra_seeds,
        "extra_rows": [{k: v for k, v in row.items() if k != "per_k"} for row in extra_rows],
        "interpolation_per_seed": {
            "act_chosen": act_chosen,
            "act_lr_0.003": act_old,
            "fixed_depth_4": fixed,
        },  # fmt: skip
        "paired": paired,
        "committed_benchmark_unpaired": COMMITTED,
        "table": (run.path / "table.md").read_text(),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    target = args.results / "parity-act-lr.json"
    if target.exists():  # a rerun that finishes or extends a run keeps the earlier wall times
        earlier = json.loads(target.read_text())
        if earlier.get("run_dir") == str(out):
            report["earlier_invocations"] = [
                *earlier.get("earlier_invocations", []),
                {k: earlier.get(k) for k in ("wall_seconds", "extra_seeds", "machine")},
            ]
    target.write_text(json.dumps(report, indent=1) + "\n")
    print(report["table"])
    for name, d in paired.items():
        print(name, {k: d[k] for k in ("mean", "sd", "lo", "hi")}, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
