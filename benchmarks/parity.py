"""Parity benchmark: every halting method on n = 16 parity, five seeds, each method's best setting,
two worker processes with one thread each; target: the whole run within 60 minutes on 2 cores.
Also times the ``quick`` preset (n = 8, one seed, all methods; target 5 minutes).

    flock /tmp/stopwise-cpu.lock .venv/bin/python benchmarks/parity.py            # benchmark + quick
    flock /tmp/stopwise-cpu.lock .venv/bin/python benchmarks/parity.py --preset sensitivity \
        --set reuse_from=runs/parity-benchmark

A sweep takes the jobs the benchmark already ran with identical settings from its run directory
(``reuse_from``: the fixed depths and each method's benchmark value), so only the other values
train; ``reused_jobs`` counts them (a run that reused jobs has no valid wall-clock timing).

Writes ``benchmarks/results/parity.json`` (``parity-<preset>.json`` for other presets) with the
machine, the wall-clock times, the summary lines of the best settings and the table, and copies the
figures next to it (``benchmarks/results/parity[-<preset>]/*.png``; ``--results DIR`` for another
folder). Run directories go under
``runs/`` and resume if interrupted (a resumed run's wall time is not a valid timing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from machine_info import add_results_option, machine, verdict

from stopwise.experiments import get_experiment, resolve_config, run_experiment

TARGETS_S = {"benchmark": 3600.0, "quick": 300.0}


def timed_run(preset: str, out: Path, overrides: list[str]) -> dict:
    config, _ = resolve_config(get_experiment("parity"), preset, overrides)
    fresh = not (out / "jobs").exists() or not any((out / "jobs").iterdir())
    start = time.perf_counter()
    run = run_experiment("parity", preset, out, overrides)
    wall = time.perf_counter() - start
    results = json.loads((run.path / "results.json").read_text())
    jobs = [json.loads(path.read_text()) for path in (run.path / "jobs").glob("*.json")]
    reused = sum("reused_from" in job for job in jobs)
    fresh = fresh and not reused
    lines = [{k: v for k, v in line.items() if k != "per_k"} for line in results["lines"]]
    target = TARGETS_S.get(preset)
    return {
        "preset": preset,
        "overrides": overrides,
        "run_dir": str(out),
        "fresh_run": fresh,
        "wall_seconds": wall,
        "target_seconds": target,
        "target_met": None if target is None or not fresh else wall <= target,
        "workers": config.workers,
        "threads_per_worker": config.threads,
        "jobs": len(jobs),
        "reused_jobs": reused,
        "task": results["task"],
        "best": [line for line in lines if line["best"]],
        "lines": lines,
        "per_k_best": [
            {k: line[k] for k in ("label", "rule", "value", "per_k")}
            for line in results["lines"]
            if line["best"]
        ],
        "paired_vs_fixed_depth": results["paired_vs_fixed_depth"],
        "table": (run.path / "table.md").read_text(),
    }


def copy_figures(run_dir: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for figure in (run_dir / "figures").glob("*.png"):
        shutil.copy(figure, destination / figure.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="benchmark")
    parser.add_argument("--out", default=None, help="run directory (default runs/parity-PRESET)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--skip-quick", action="store_true", help="do not time the quick preset")
    add_results_option(parser)
    args = parser.parse_args(argv)

    overrides = ["progress=false", *args.overrides]
    out = Path(args.out or f"runs/parity-{args.preset}")
    report = {"machine": machine(), "runs": [timed_run(args.preset, out, overrides)]}
    if args.preset == "benchmark" and not args.skip_quick:
        quick_out = Path(f"runs/parity-quick-{int(time.time())}")
        report["runs"].append(timed_run("quick", quick_out, ["progress=false"]))

    name = "parity" if args.preset == "benchmark" else f"parity-{args.preset}"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    copy_figures(out, args.results / name)
    for run in report["runs"]:
        print(run["table"])
        print(
            f"{run['preset']}: {run['wall_seconds']:.0f} s with {run['workers']} worker(s) × "
            f"{run['threads_per_worker']} thread(s); target "
            + (f"{run['target_seconds']} s" if run["target_seconds"] is not None else "none")
            + f": {verdict(run['target_met'])}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
