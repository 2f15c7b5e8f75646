"""benchmarks/denoising_progress.py on a finished tiny run: every DnCNN stage's validation
history read back from its checkpoint, stages after pretraining placed after its CPU time,
policy stages left out, BM3D's validation PSNR from the classical job."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from stopwise.experiments import run_experiment

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_progress_of_a_tiny_run(tmp_path):
    run = tmp_path / "run"
    run_experiment("denoising", "tiny", run, [])
    sys.path.insert(0, str(BENCHMARKS))
    try:
        progress = importlib.import_module("denoising_progress")
    finally:
        sys.path.remove(str(BENCHMARKS))
    out = tmp_path / "progress.json"
    assert progress.main([str(run), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    stages = report["stages"]
    assert {"pretrain-s0/pretrain", "dncnn-s0/finetune", "stage1-beta0.1-s0/stage1"} <= set(stages)
    assert not any("stage2" in key for key in stages)  # policies score something else
    pretrain = stages["pretrain-s0/pretrain"]
    config = json.loads((run / "config.json").read_text())["config"]
    assert pretrain["steps_done"] == config["pretrain"]["steps"]
    steps = [h["step"] for h in pretrain["history"]]
    assert steps == sorted(steps) and steps[-1] == pretrain["steps_done"]
    assert pretrain["best_score"] == max(h["score"] for h in pretrain["history"])
    assert pretrain["cpu_seconds_before"] == 0.0
    after = stages["dncnn-s0/finetune"]["cpu_seconds_before"]
    assert after == pretrain["history"][-1]["cpu_seconds"] > 0
    assert set(report["bm3d_validation_psnr"]["0"]) == set(config["bm3d_profiles"])
    assert "pretrain-s0" in report["finished_jobs"]
