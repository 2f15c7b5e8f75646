"""How far a (long, resumable) denoising run has got: validation PSNR against training CPU time
for every training stage it has started, finished or not, beside BM3D's validation PSNR once
its `classical` job has run. Nothing here looks at the test images.

Each stage's `ValidationSchedule` history (step, validation PSNR, CPU seconds) is read from its
checkpoint (`checkpoints/<job>/<stage>.pt`), so a stage still training shows where it is. A
stage that starts from `pretrain` (the fine-tuned DnCNN, the exit-head models) is placed after
the pretraining CPU time it builds on.

    .venv/bin/python benchmarks/denoising_progress.py runs/denoising-long \\
        --out benchmarks/results/denoising-long-progress.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

import torch

PSNR_STAGES = ("pretrain", "finetune", "stage1")  # DnCNN stages scored by validation PSNR


def stage_histories(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``{"<job>/<stage>": {"steps_done", "best_score", "best_step", "history"}}``."""
    out = {}
    for path in sorted((run_dir / "checkpoints").glob("*/*.pt")):
        if path.stem not in PSNR_STAGES:
            continue  # a policy's stage: its schedule scores something else
        schedule = torch.load(path, map_location="cpu", weights_only=False)["state"]["scheduler"]
        out[f"{path.parent.name}/{path.stem}"] = {
            "steps_done": schedule["steps_done"],
            "best_score": schedule["best_score"],
            "best_step": schedule["best_step"],
            "lr_drops": schedule["drops"],
            "history": schedule["history"],
        }
    return out


def progress(run_dir: Path) -> dict[str, Any]:
    config = json.loads((run_dir / "config.json").read_text())
    stages = stage_histories(run_dir)

    def cpu(key: str) -> float:
        history = stages[key]["history"] if key in stages else []
        return history[-1]["cpu_seconds"] if history else 0.0

    for key, record in stages.items():
        job, stage = key.split("/")
        # A stage after pretraining builds on the job's own (a shallow DnCNN trained for its
        # depth) or else on the seed's shared `pretrain` job.
        own, shared = f"{job}/pretrain", f"pretrain-s{job.rsplit('-s', 1)[1]}/pretrain"
        record["cpu_seconds_before"] = (
            0.0 if stage == "pretrain" else cpu(own if own in stages else shared)
        )
    bm3d = {}
    for path in sorted((run_dir / "jobs").glob("classical-s*.json")):
        record = json.loads(path.read_text())
        bm3d[str(record["seed"])] = record["record"]["bm3d"]["val_psnr"]
    finished = sorted(p.stem for p in (run_dir / "jobs").glob("*.json"))
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "run": str(run_dir),
        "preset": config.get("preset"),
        "config": {k: config["config"].get(k) for k in ("depth", "width", "batch", "seeds")},
        "finished_jobs": finished,
        "stages": stages,
        "bm3d_validation_psnr": bm3d,
    }


def summary(report: dict[str, Any]) -> str:
    lines = [f"{report['run']} ({report['preset']}): finished {', '.join(report['finished_jobs'])}"]
    for key, record in report["stages"].items():
        history = record["history"]
        if not history:
            continue
        last = history[-1]
        cpu = (record["cpu_seconds_before"] + last["cpu_seconds"]) / 60
        lines.append(
            f"  {key}: step {record['steps_done']}, validation PSNR {last['score']:.2f} dB "
            f"(best {record['best_score']:.2f} at {record['best_step']}), "
            f"{cpu:.1f} training CPU-min so far"
        )
    for seed, psnr in report["bm3d_validation_psnr"].items():
        lines.append(f"  BM3D validation PSNR (seed {seed}): {psnr}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    report = progress(args.run_dir)
    print(summary(report))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
