"""Each method learns n = 8 parity above 90% in a short run with a fixed seed (a few seconds each;
the seed makes the run deterministic, and every method clears 90% by a margin)."""

import pytest

from stopwise.experiments import COMMON_DEFAULTS
from stopwise.tasks.parity import EXPERIMENTS
from stopwise.tasks.parity.experiment import run_job

SHORT = {
    **COMMON_DEFAULTS,
    **EXPERIMENTS[0]["defaults"],
    "n": 8,
    "train_k": [1, 8],
    "test_k": [1, 8],
    "hidden": 32,
    "max_steps": 5,
    "updates": 1500,
    "lr": 0.01,
    "policy_updates": 200,
    "val_size": 500,
    "test_size": 2000,
    "progress": False,
    "checkpoint_every": 100_000,
}
SETTINGS = {
    "fixed": 5,
    "act": 0.001,
    "pondernet": 0.2,
    "pondernet-last": 0.2,
    "l2s": 1.0,
    "thesis": 0.1,
}


@pytest.mark.parametrize("method", list(SETTINGS))
def test_method_learns_parity_of_eight(method, tmp_path):
    job = {"id": method, "method": method, "value": SETTINGS[method], "seed": 0}
    result = run_job(job, SHORT, str(tmp_path))
    rules = {(row["variant"], row["rule"]) for row in result["rows"]}
    assert len(rules) == len(result["rows"]) >= 1
    for row in result["rows"]:
        assert row["accuracy"] > 0.9, (row["label"], row["rule"], row["accuracy"])
        assert 1 <= row["mean_steps"] <= 5
    assert (tmp_path / "jobs" / f"{method}.json").exists()
