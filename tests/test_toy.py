"""The toy task end to end: the L2S policy beats fixed depth at the same mean number of steps."""

import torch

from stopwise.cli import main
from stopwise.experiments import run_experiment
from stopwise.tasks.toy import RunningMean, sample_streams


def test_running_mean_starts_as_the_plain_mean():
    z, _ = sample_streams(5, 4, [1.0], torch.Generator().manual_seed(0))
    model = RunningMean(4)
    state = model.start(z)
    for t in range(4):
        state = model.advance(state, t)
        torch.testing.assert_close(
            model.predict(state, t), z[:, : t + 1].mean(-1), rtol=1e-3, atol=1e-3
        )
        spread = model.features(state, t)[:, 1]
        torch.testing.assert_close(spread, z[:, : t + 1].std(-1, unbiased=False), rtol=0, atol=0.05)


def test_quick_preset_policy_beats_fixed_depth(tmp_path):
    run = run_experiment("toy", "quick", tmp_path / "run", ["progress=false", "seeds=0,1,2"])
    results = run.read_json("results.json")
    for comparison in results["paired_vs_fixed_depth"]:  # policy − fixed depth, paired over seeds
        assert comparison["mean"] < 0, comparison
    for record in results["jobs"].values():
        for row in record["budgets"]:
            assert row["mean_steps"] <= row["budget"] + 0.1 and row["matches_dense"]
        # The budget curve is calibrated on validation and spans the range of depths.
        assert record["curve"][0]["mean_steps"] < 2 and record["curve"][-1]["mean_steps"] > 11


def test_a_repeated_budget_exits_2_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "toy", "--preset", "tiny", "--set", "budgets=3,3", "--out", str(out)]) == 2
    assert "budgets" in capsys.readouterr().err
    assert not out.exists()
