"""`stopwise run multi-exit` on the tiny preset (scikit-learn digits): files, tables, figures,
resume after losing job files or after an interruption, config errors; and L2W with δ = 0 is
uniform training (same initial weights, same batches, meta steps without side effects)."""

import json

import pytest
import torch

import stopwise.tasks.multi_exit.experiment as experiment
from stopwise.cli import main
from stopwise.experiments import get_experiment, resolve_config
from stopwise.tasks.multi_exit.data import digits_splits
from stopwise.tasks.multi_exit.methods import METHODS, Training, train_method
from stopwise.training import LoopSettings


def run_tiny(out, *settings):
    """``stopwise run multi-exit --preset tiny --out OUT --set S...``; returns the exit code."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    return main(["run", "multi-exit", "--preset", "tiny", "--out", str(out), *sets])


def numbers(path):
    results = json.loads((path / "results.json").read_text())
    return [
        (line["label"], line["budget_accuracy_mean"], line["anytime_accuracy_mean"])
        for line in results["lines"]
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "run"
    assert run_tiny(out) == 0
    return out


def test_tiny_run_writes_the_run_directory(tiny_run, capsys):
    for name in ["config.json", "env.json", "metrics.jsonl", "results.json", "table.md"]:
        assert (tiny_run / name).exists(), name
    for figure in ["accuracy_vs_macs", "per_exit_accuracy", "weights_vs_loss"]:
        assert (tiny_run / "figures" / f"{figure}.png").stat().st_size > 0
    data = json.loads((tiny_run / "data.json").read_text())
    assert (data["train"], data["validation"], data["test"]) == (1097, 300, 400)
    results = json.loads((tiny_run / "results.json").read_text())
    labels = {line["label"] for line in results["lines"]}
    assert len(labels) == len(METHODS) + 1  # L2S has a confidence and a policy curve
    assert set(results["paired_vs_uniform"]) == set(METHODS) - {"uniform"}
    assert len(results["lines"][0]["curve_mean"]) == 39
    assert all(row["matches_dense"] for row in results["timing"]["l2w-s0"])
    negative = results["negative_weights"]["l2w-s0"]
    assert 0 <= negative["fraction"] <= 1 and len(negative["per_exit_fraction"]) == 3
    table = (tiny_run / "table.md").read_text()
    assert "L2W − uniform" in table and "speedup" in table
    stages = {json.loads(line)["stage"] for line in (tiny_run / "metrics.jsonl").open()}
    assert {"l2w-s0.train", "l2s-s0.stage1", "l2s-s0.stage2"} <= stages


def test_rerun_after_losing_job_files_restores_without_retraining(tiny_run):
    first = numbers(tiny_run)
    for path in (tiny_run / "jobs").iterdir():
        path.unlink()
    assert run_tiny(tiny_run) == 0
    assert numbers(tiny_run) == first
    results = json.loads((tiny_run / "results.json").read_text())
    assert len(results["resumed_jobs"]) == len(METHODS)


def test_interrupted_run_resumes_to_the_same_numbers(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    original = experiment.exit_logits
    calls = {"n": 0}

    def crash_after_two_jobs(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:  # 2 per job (validation, test): stops in the third job (l2w)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(experiment, "exit_logits", crash_after_two_jobs)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(out, "checkpoint_every=5")
    monkeypatch.setattr(experiment, "exit_logits", original)
    assert len(list((out / "jobs").iterdir())) == 2
    assert run_tiny(out, "checkpoint_every=5") == 0
    assert numbers(out) == numbers(tiny_run)


@pytest.mark.parametrize(
    "override, message",
    [
        ('methods=["uniform","nope"]', "methods must be"),
        ("dataset=cifar", "dataset must be one of"),
        ("budgets=[0.5,0.2]", "budgets are increasing"),
        ("sdn_weights=[1.0]", "sdn_weights needs one weight per exit"),
        ('timing_methods=["l2s"]', "timing_methods"),
    ],
)
def test_bad_config_is_rejected_before_training(tmp_path, capsys, override, message):
    extra = ['methods=["uniform"]'] if override.startswith("timing") else []
    assert run_tiny(tmp_path / "r", override, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_missing_fashion_files_give_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STOPWISE_DATA", raising=False)
    code = main(["run", "multi-exit", "--preset", "fashion", "--out", str(tmp_path / "r"),
                 "--set", f"data_dir={tmp_path / 'none'}"])  # fmt: skip
    assert code == 2
    assert "apt install dataset-fashion-mnist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_l2w_with_zero_delta_is_uniform_training():
    config = resolve_config(get_experiment("multi-exit"), "tiny", ["l2w_delta=0.0", "epochs=2"])
    splits = digits_splits(config["val_size"], config["test_size"])
    trained = {}
    for method in ("uniform", "l2w", "l2w-fo"):
        model = experiment.build_model(config, splits, seed=0)
        settings = LoopSettings(progress=False)
        training = Training(config, splits.train_x, splits.train_y, 0, settings, method)
        train_method(method, model, training)
        trained[method] = model.state_dict()
    for method in ("l2w", "l2w-fo"):
        for key, value in trained["uniform"].items():
            close = torch.allclose(trained[method][key].double(), value.double(), atol=1e-5)
            assert close, (method, key)


def test_l2w_killed_mid_training_resumes_to_the_same_numbers(tiny_run, tmp_path, monkeypatch):
    """The weight net, its Adam state and the negative-weight counter are checkpointed too."""
    import stopwise.tasks.multi_exit.l2w as l2w

    out = tmp_path / "killed"
    original = l2w.MetaStep.__call__
    calls = {"n": 0}

    def crash_at_the_fifth_meta_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # update 8 of 17; the last checkpoint is at update 5
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(l2w.MetaStep, "__call__", crash_at_the_fifth_meta_step)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(out, 'methods=["l2w"]', 'timing_methods=["l2w"]', "checkpoint_every=5")
    assert (out / "checkpoints" / "l2w-s0.train.pt").exists()
    monkeypatch.setattr(l2w.MetaStep, "__call__", original)
    assert run_tiny(out, 'methods=["l2w"]', 'timing_methods=["l2w"]', "checkpoint_every=5") == 0
    reference = json.loads((tiny_run / "jobs" / "l2w-s0.json").read_text())
    resumed = json.loads((out / "jobs" / "l2w-s0.json").read_text())
    assert resumed["resumed"] is True
    for key in ("anytime_accuracy", "budget_accuracy", "negative_weights", "weights_vs_loss"):
        assert resumed[key] == reference[key], key
