"""Data parallelism under torchrun: two ranks on shards of each batch train the same weights as one
process on the whole batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).with_name("ddp_job.py")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_ranks_match_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    subprocess.run([sys.executable, str(JOB), str(single)], env=env, check=True, timeout=120)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*launch, str(JOB), str(double)], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    one = torch.load(single / "final.pt", weights_only=True)
    two = torch.load(double / "final.pt", weights_only=True)
    changed = False
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-6)
        changed |= not torch.allclose(value, torch.logit(1.0 / torch.arange(1.0, 7).clamp(1.0001)))
    assert changed  # training moved the weights
    assert sorted(p.name for p in double.iterdir()) == [
        "final.pt",
        "rows_rank0.txt",
        "rows_rank1.txt",
        "stage1.pt",
    ]
    assert (single / "rows_rank0.txt").read_text() == str(20 * 64)
    for rank in (0, 1):  # each rank trained on its half of every batch
        assert (double / f"rows_rank{rank}.txt").read_text() == str(20 * 32)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_a_run_under_torchrun_logs_each_line_once(tmp_path):
    """Every rank runs the runner; only rank 0 logs (each line used to come once per rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = ["-m", "stopwise", "run", "toy", "--preset", "tiny", "--out", str(tmp_path / "run")]
    done = subprocess.run(
        [*launch, *command, "--set", "progress=false"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("stopwise:")]
    assert len(said) == len(set(said)) and any("done l2s-s0" in line for line in said), said
