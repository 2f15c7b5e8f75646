"""Why L2S with a small β fails on parity: accuracy of every step of the stage-I models.

Reads the stage-I checkpoints of parity runs (``--run``, repeatable; a job found in several runs is
taken from the first that holds its checkpoint) and, for each L2S training job, evaluates every step's
prediction on that seed's 10,000 test vectors: the accuracy of each step, of the oracle (some step
right, which needs the label) and how often the steps disagree. Writes ``parity-l2s-steps.json``
in ``--results`` (default ``benchmarks/results/``).

    .venv/bin/python benchmarks/parity_l2s_steps.py --run runs/parity-sensitivity5 \
        --run runs/parity-sensitivity
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from machine_info import add_results_option

from stopwise.checkpoints import load_checkpoint
from stopwise.config import from_plain
from stopwise.contract import stream_seed
from stopwise.steps import unroll
from stopwise.tasks.parity import ParityConfig, ParityGRU
from stopwise.tasks.parity.data import evaluation_set


@torch.no_grad()
def step_accuracies(run: Path, config: ParityConfig, job: dict) -> dict:
    """``job`` is a finished job file (``jobs/<id>.json``): id, seed, params."""
    model = ParityGRU(config.n, config.hidden, config.max_steps)
    checkpoint = load_checkpoint(run / "checkpoints" / job["id"] / "l2s-stage1.pt")
    model.load_state_dict(checkpoint["state"]["model"])
    # the job's test split: the seed's "test" stream, as context.generator("test") gave it
    generator = torch.Generator().manual_seed(stream_seed(job["seed"], "test"))
    test = evaluation_set(config, "test", generator)
    correct = (unroll(model, test.x).predictions > 0).float() == test.y.unsqueeze(-1)
    return {
        "id": job["id"],
        "run": str(run),
        "beta": job["params"]["value"],
        "seed": job["seed"],
        "step_accuracy": correct.float().mean(0).tolist(),
        "oracle_accuracy": correct.any(-1).float().mean().item(),
        "steps_disagree": (correct.any(-1) & ~correct.all(-1)).float().mean().item(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="a parity run directory")
    add_results_option(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    jobs = {}  # id -> (run, job)
    for run in map(Path, args.run):
        # the L2S jobs that hold a stage I: the training jobs ``l2s-*-train`` (``l2s-*`` in runs
        # made before training and evaluation were separate jobs)
        for path in sorted((run / "jobs").glob("l2s-*.json")):
            job = json.loads(path.read_text())
            if (
                run / "checkpoints" / job["id"] / "l2s-stage1.pt"
            ).exists():  # a finished L2S job with its stage I
                jobs.setdefault(job["id"], (run, job))
    configs = {
        run: from_plain(ParityConfig, json.loads((run / "config.json").read_text())["config"])
        for run, _ in jobs.values()
    }
    order = sorted(jobs.values(), key=lambda pair: (pair[1]["params"]["value"], pair[1]["seed"]))
    rows = [step_accuracies(run, configs[run], job) for run, job in order]
    for row in rows:
        steps = " ".join(f"{100 * a:5.1f}" for a in row["step_accuracy"])
        print(
            f"{row['id']:>12}: oracle {100 * row['oracle_accuracy']:5.1f}%, steps disagree on "
            f"{100 * row['steps_disagree']:5.1f}%; per step {steps}",
        )
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / "parity-l2s-steps.json"
    out.write_text(json.dumps({"runs": args.run, "jobs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
