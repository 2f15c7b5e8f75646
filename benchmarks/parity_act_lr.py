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

    nice -n 10 .venv/bin/python benchmarks/parity_act_lr.py --set seeds=0,1,2

Writes ``benchmarks/results/parity-act-lr.json`` (machine, threads, date, wall and CPU time, load
average, the lines, the paired differences, the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from machine_info import machine

from stopwise.experiments import run_experiment
from stopwise.stats import paired_difference

ROOT = Path(__file__).resolve().parent
BASE = ["progress=false", "methods=fixed,act", "fixed_depth=4", "workers=2", "threads=1"]
OLD_LR = 0.003
COMMITTED = {"fixed depth 4": "99.96 ± 0.04", "ACT τ=1e-4, lr 3e-3": "87.01 ± 3.78 (0/5 > 99%)"}


def per_seed(rows: list[dict], **match) -> dict[int, float]:
    return {r["seed"]: r["interpolation"] for r in rows if all(r[k] == v for k, v in match.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/parity-act-lr")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    overrides = [*BASE, *args.overrides]
    out = Path(args.out)
    load_before = os.getloadavg()
    start = time.perf_counter()
    run = run_experiment("parity", "benchmark", out, overrides)
    wall = time.perf_counter() - start
    results = json.loads((run.path / "results.json").read_text())
    jobs = [json.loads(p.read_text()) for p in sorted((run.path / "jobs").glob("*.json"))]
    rows, lines = results["rows"], results["lines"]
    act_lines = [line for line in lines if line["method"] == "act"]
    chosen = next(line for line in act_lines if line["best"])
    act_chosen = per_seed(rows, method="act", value=chosen["value"], lr=chosen["lr"])
    paired = {
        f"act lr={chosen['lr']:g} - act lr={OLD_LR:g}": paired_difference(
            act_chosen, per_seed(rows, method="act", value=chosen["value"], lr=OLD_LR)
        ),
        f"act lr={chosen['lr']:g} - fixed depth 4": paired_difference(
            act_chosen, per_seed(rows, method="fixed", value=4)
        ),
    }
    report = {
        "machine": machine(),
        "preset": "benchmark",
        "overrides": overrides,
        "run_dir": str(out),
        "workers": results["task"]["workers"],
        "threads_per_worker": results["task"]["threads"],
        "wall_seconds": wall,
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
        "paired": paired,
        "committed_benchmark_unpaired": COMMITTED,
        "table": (run.path / "table.md").read_text(),
    }
    target = ROOT / "results" / "parity-act-lr.json"
    target.write_text(json.dumps(report, indent=1) + "\n")
    print(report["table"])
    for name, d in paired.items():
        print(name, {k: d[k] for k in ("mean", "sd", "lo", "hi")}, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
