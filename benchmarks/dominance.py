"""Does each stop model's budget curve beat fixed depth? (issue 17) One table over run directories.

    .venv/bin/python benchmarks/dominance.py runs/multi-exit-benchmark-fashion runs/parity-tuned ...

Every run's report says it already (results.json's ``dominance``, from
:func:`stopwise.curves.dominance`); this script rebuilds each run's report with the current code
(finished jobs are reused: nothing is trained, the settings must be the run's own), collects the
verdicts with the run's experiment, preset, seeds and overrides, and writes
``benchmarks/results/dominance.json`` and a markdown table. Sparse recovery reports its own
comparator (:func:`stopwise.curves.best_fixed_mix` in linear NMSE, then in dB) and verdict
(the same two conditions, and the full-depth target on its threshold row).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from machine_info import add_results_option, machine

from stopwise.experiments import run_experiment
from stopwise.reporting import markdown_table


def overrides(config: dict, prefix: str = "") -> list[str]:
    """``key=value`` for every key of a saved config (nested groups as ``group.key``)."""
    out = []
    for key, value in config.items():
        if isinstance(value, dict):
            out += overrides(value, f"{prefix}{key}.")
        elif key != "progress":
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            out.append(f"{prefix}{key}={text}")
    return out


def verdicts(out: Path) -> dict:
    saved = json.loads((out / "config.json").read_text())
    run_experiment(
        saved["experiment"], saved["preset"], out, [*overrides(saved["config"]), "progress=false"]
    )
    results = json.loads((out / "results.json").read_text())
    keep = ("quality", "cost", "points", "worst_gain", "worst_gain_at", "worst_gain_interval",
            "best_lower_half_gain", "best_lower_half_at", "best_lower_half_interval",
            "worst_margin", "dominates", "strictly_better_lower_half", "full_depth_met",
            "met")  # fmt: skip
    return {
        "run": str(out),
        "experiment": saved["experiment"],
        "preset": saved["preset"],
        "seeds": saved["config"]["seeds"],
        "verdicts": {
            label: {k: v for k, v in verdict.items() if k in keep}
            for label, verdict in results["dominance"].items()
        },
        # Where the run reports it: the oracle stop's gain over fixed depth, the room a policy has.
        **({"oracle_room": results["oracle_room"]} if "oracle_room" in results else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", default="dominance")
    add_results_option(parser)
    args = parser.parse_args(argv)
    runs = [verdicts(out) for out in args.runs]
    rows = [
        {
            "run": f"{run['experiment']} `{run['preset']}` ({len(run['seeds'])} seed(s)), {run['run']}",
            "model": label,
            "quality": v.get("quality", "NMSE (dB)"),
            "met": "yes" if v["met"] else "no",
            "every": "yes" if v["dominates"] else "no",
            "lower": "yes" if v["strictly_better_lower_half"] else "no",
            "worst": v.get("worst_gain", -v.get("worst_margin", float("nan"))),
        }
        for run in runs
        for label, v in run["verdicts"].items()
    ]
    table = markdown_table(
        rows,
        [
            ("run", "run", "s"),
            ("model", "stop model", "s"),
            ("quality", "quality", "s"),
            ("met", "target met", "s"),
            ("every", "≥ fixed at every budget", "s"),
            ("lower", "> fixed in the lower half", "s"),
            ("worst", "worst gain over fixed depth", "+.3g"),
        ],
    )
    report = {"machine": machine(), "runs": runs, "table": table}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
