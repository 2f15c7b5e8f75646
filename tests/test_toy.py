"""The toy task end to end: the L2S policy beats fixed depth at the same mean number of steps."""

import pytest
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


def test_a_toy_job_calibrates_on_validation_and_its_oracle_is_the_per_stream_best(
    tmp_path, monkeypatch
):
    """run_job on the tiny preset, with the trained model and policy captured: each budget row
    is the threshold calibrated on the validation streams (drawn by hand from the job's
    "validation" stream) applied to the test streams by a plain loop; the budget curve's
    val_metric is the validation MSE; the oracle row stops each test stream at its smallest
    error (mean steps = mean of argmin + 1), no worse than any fixed depth."""
    import math

    from stopwise.contract import Job, JobContext, PlannedJob, RunDir, stream_seed
    from stopwise.experiments import get_experiment, resolve_config
    from stopwise.inference import calibrate
    from stopwise.tasks.toy import experiment

    config = resolve_config(get_experiment("toy"), "tiny", ["budgets=2.5,4"])[0]
    captured = {}
    train, sweep = experiment.train_l2s, experiment.budget_sweep

    def trained(*args):
        captured["model"], captured["policy"] = train(*args)
        return captured["model"], captured["policy"]

    def swept(*args, **kwargs):
        captured["val_metric"] = kwargs["val_metric"]
        return sweep(*args, **kwargs)

    monkeypatch.setattr(experiment, "train_l2s", trained)
    monkeypatch.setattr(experiment, "budget_sweep", swept)
    context = JobContext(
        RunDir(tmp_path), config, PlannedJob("l2s-s0", Job("l2s"), 0, {}, ()), False
    )
    record = experiment.run_job(Job("l2s"), context)
    model, policy = captured["model"], captured["policy"]
    T, levels = config.steps, config.noise_levels

    def streams(name):
        generator = torch.Generator().manual_seed(stream_seed(0, name))
        return sample_streams(config.eval_size, T, levels, generator)

    def plain(z, mu):  # per step: squared errors and hazard logits, lists of (N,) lists
        errors, hazards = [], []
        with torch.no_grad():
            state = model.start(z)
            for t in range(T):
                state = model.advance(state, t)
                errors.append(((model.predict(state, t) - mu) ** 2).tolist())
                hazards.append(policy(model.features(state, t), t).tolist())
        return errors, hazards

    val_z, val_mu = streams("validation")
    test_z, test_mu = streams("test")
    val_errors, _ = plain(val_z, val_mu)
    errors, hazards = plain(test_z, test_mu)
    n = config.eval_size
    for budget, row in zip(config.budgets, record["budgets"], strict=True):
        with torch.no_grad():
            rule = calibrate(model, policy, val_z, budget)
        threshold = rule.score_threshold.expand(T).tolist()  # a scalar or one per step
        stops = [
            next((t for t in range(T - 1) if hazards[t][i] >= threshold[t]), T - 1)
            for i in range(n)
        ]
        assert row["mean_steps"] == pytest.approx(sum(t + 1 for t in stops) / n)
        assert row["mse"] == pytest.approx(sum(errors[t][i] for i, t in enumerate(stops)) / n)
    for seed in (5, 6):
        index = torch.randint(0, T, (n,), generator=torch.Generator().manual_seed(seed))
        expected = sum(val_errors[t][i] for i, t in enumerate(index.tolist())) / n
        assert captured["val_metric"](index) == pytest.approx(expected, rel=1e-5)
    best = [min(range(T), key=lambda t: errors[t][i]) for i in range(n)]
    oracle = record["oracle"]
    assert oracle["mean_steps"] == pytest.approx(sum(t + 1 for t in best) / n)
    assert oracle["mse"] == pytest.approx(sum(errors[t][i] for i, t in enumerate(best)) / n)
    fixed = [point["mse"] for point in record["fixed_depth"]]
    assert fixed == pytest.approx([sum(errors[t]) / n for t in range(T)], rel=1e-5)
    assert oracle["mse"] <= min(fixed) and not math.isclose(oracle["mse"], min(fixed))
    # The report's paired difference: budget row minus the plain loop's fixed depth ⌈b⌉ (2.5
    # against depth 3, never the cheaper depth 2 that round-half-to-even gives).
    from stopwise.contract import JobResult
    from stopwise.tasks.toy.report import report

    done = JobResult("l2s-s0", "l2s", 0, {}, record, 1.0, 1.0)
    comparisons = report([done], config).results["paired_vs_fixed_depth"]
    for budget, row, comparison in zip(config.budgets, record["budgets"], comparisons, strict=True):
        depth = math.ceil(budget)
        assert comparison["depth"] == depth
        expected = row["mse"] - sum(errors[depth - 1]) / n
        assert comparison["per_seed"][0] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_the_budget_figure_names_the_floored_fits_and_draws_in_step_order():
    """The legend said "thresholds calibrated on validation" of a curve of floored thresholds and
    mixes; its points came in budget order, which a line could double back through."""
    from stopwise.tasks.toy.report import _budget_figure

    curve = [{"mean_steps": s, "mse": 1 / s} for s in (1.0, 3.0, 2.0)]
    fixed = [{"mean_steps": s, "mse": 2 / s} for s in (1.0, 2.0, 3.0)]
    policy = _budget_figure(curve, fixed).axes[0].get_lines()[0]
    assert policy.get_label() == "L2S policy (floored thresholds and mixes fitted on validation)"
    assert list(policy.get_xdata()) == [1.0, 2.0, 3.0]
    assert list(policy.get_ydata()) == [1.0, 0.5, 1 / 3]
