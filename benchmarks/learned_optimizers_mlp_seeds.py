"""The learned-optimizer MLP row of a finished run, paired over its seeds (issue 13's first target
on the MLP family): the LSTM optimizer's mean log10 training loss, training loss and test
accuracy at the horizon minus each tuned hand-designed optimizer's, with the 95% Student-t
interval over the seeds. It reads the run's job records; it trains nothing.

    .venv/bin/python benchmarks/learned_optimizers_mlp_seeds.py runs/lo-mlp-s3-7 \
        --name learned_optimizers-mlp-unseen-s3-7 --note "..."

Writes ``benchmarks/results/NAME.json`` (``--results DIR``: ``DIR/NAME.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from machine_info import add_results_option, machine

from stopwise.stats import format_interval, paired_difference

MEASURES = ("log10_loss", "loss", "accuracy")


def mlp_row(run: Path, variant: str = "base") -> dict:
    """Per measure: the LSTM optimizer's per-seed means and its paired difference from each
    hand-designed optimizer (``variant``: the network the optimizers ran on)."""
    jobs = {}
    for path in (run / "jobs").glob("*-mlp-s*.json"):
        data = json.loads(path.read_text())
        jobs[(data["name"], data["seed"])] = data["record"]
    seeds = sorted(seed for name, seed in jobs if name == "lstm-mlp")
    missing = [s for s in seeds if ("hand-mlp", s) not in jobs]
    if not seeds or missing:
        raise SystemExit(f"{run}: needs lstm-mlp and hand-mlp jobs per seed (missing {missing})")
    lstm = {s: jobs[("lstm-mlp", s)]["variants"][variant]["test"] for s in seeds}
    hand = {s: jobs[("hand-mlp", s)][variant]["test"] for s in seeds}
    out = {"seeds": seeds, "horizon": jobs[("hand-mlp", seeds[0])][variant]["horizon"]}
    for measure in MEASURES:
        mine = {s: lstm[s][measure]["mean"] for s in seeds}
        out[measure] = {
            "lstm": mine,
            "minus": {
                kind: paired_difference(mine, {s: hand[s][kind][measure]["mean"] for s in seeds})
                for kind in hand[seeds[0]]
            },
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished learned-optimizers run directory")
    parser.add_argument("--name", required=True, help="the JSON's name in the results folder")
    parser.add_argument("--note", default="", help="what the run was, for the record")
    add_results_option(parser)
    args = parser.parse_args()
    config = json.loads((args.run / "config.json").read_text())
    record = {
        "benchmark": "learned_optimizers_mlp_seeds",
        "machine": machine(),
        "run": str(args.run),
        "preset": config["preset"],
        "note": args.note,
        "cpu_seconds": {
            p.stem: json.loads(p.read_text())["cpu_seconds"]
            for p in sorted((args.run / "jobs").glob("*.json"))
        },
        **mlp_row(args.run),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{args.name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    for measure in MEASURES:
        cells = [
            f"{kind} {format_interval(d, '+.4g')}" for kind, d in record[measure]["minus"].items()
        ]
        print(f"LSTM − tuned, {measure} at step {record['horizon']}: " + "; ".join(cells))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
