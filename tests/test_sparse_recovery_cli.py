"""`stopwise run sparse-recovery --preset tiny` end to end: the table and its files, LISTA-stop
against ISTA at the same mean depth, exit pruning, rerun and interrupted-run resume, config errors."""

import json

import pytest
import torch

import stopwise.tasks.sparse_recovery.experiment as experiment
from stopwise.checkpoints import load_checkpoint
from stopwise.cli import main
from stopwise.tasks.sparse_recovery.data import sensing_matrix

TINY = ["run", "sparse-recovery", "--preset", "tiny"]


def rows_of(path):
    results = json.loads((path / "results.json").read_text())
    keep = ("mixed", "20dB", "30dB", "40dB", "mean_steps")
    return {row["key"]: tuple(row[k] for k in keep) for row in results["rows"]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sparse") / "run"
    assert main([*TINY, "--out", str(out)]) == 0
    return out


def test_tiny_run_writes_the_whole_table(tiny_run, capsys):
    for name in [
        "config.json",
        "env.json",
        "metrics.jsonl",
        "results.json",
        "table.md",
        "problem.pt",
        "classical.json",
        "stages.json",
    ]:
        assert (tiny_run / name).exists(), name
    for figure in ["nmse_per_layer", "stop_steps", "nmse_vs_steps"]:
        assert (tiny_run / "figures" / f"{figure}.png").stat().st_size > 0
    results = json.loads((tiny_run / "results.json").read_text())
    keys = {row["key"] for row in results["rows"]}
    for algorithm in ("ista", "fista"):
        assert {f"{algorithm}-8", f"{algorithm}-40"} <= keys
    for model in ("lista_stop", "cpss_stop"):
        assert {
            f"{model}-sampled",
            f"{model}-threshold",
            f"{model}-oracle",
            f"{model}-full",
        } <= keys
    assert {"lista", "alista"} <= keys
    table = (tiny_run / "table.md").read_text()
    assert "LISTA-stop, sampled" in table and "oracle stop" in table
    # the recorded sensing matrix is the seed's
    problem = load_checkpoint(tiny_run / "problem.pt")
    assert torch.equal(problem["A"], sensing_matrix(50, 100, 5.0, seed=0))
    # every stop row ran in shrink mode and agrees with selecting from the dense trajectory
    for row in results["rows"]:
        if row["rule"] in ("sampled", "threshold"):
            assert row["matches_dense_selection"], row["key"]


def test_lista_stop_beats_ista_at_the_same_mean_depth(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    rows = {row["key"]: row for row in results["rows"]}
    for rule in ("threshold", "sampled"):
        row = rows[f"lista_stop-{rule}"]
        same = row["ista_same_depth"]
        assert same["depth"] >= row["mean_steps"]
        assert row["mixed"] < same["mixed"] - 1.0, (rule, row["mixed"], same)
    # the oracle stop is a bound for the policies and the table's numbers are consistent
    for model in ("lista_stop", "cpss_stop"):
        oracle = rows[f"{model}-oracle"]["mixed"]
        assert oracle <= rows[f"{model}-threshold"]["mixed"] + 1e-9
        assert oracle <= rows[f"{model}-full"]["mixed"] + 1e-9


def test_exit_pruning_uses_the_validation_oracle_mass(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    for details in results["stop_models"].values():
        mass = torch.tensor(details["oracle_mass"])
        assert float(mass.sum()) == pytest.approx(1.0, abs=1e-9)
        assert details["valid_steps"] == (mass >= 1e-3).tolist()


def test_rerun_resumes_without_retraining(tiny_run):
    first = rows_of(tiny_run)
    stages = json.loads((tiny_run / "stages.json").read_text())
    assert main([*TINY, "--out", str(tiny_run)]) == 0
    assert rows_of(tiny_run) == first
    assert json.loads((tiny_run / "stages.json").read_text()) == stages  # nothing retrained


def test_interrupted_run_resumes_to_the_same_numbers(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    original = experiment.step_losses
    calls = {"n": 0}

    def crash_mid_stage(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 150 + 30:  # all of `lista`, then 30 steps into lista-stop-stage1
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(experiment, "step_losses", crash_mid_stage)
    with pytest.raises(KeyboardInterrupt):
        main([*TINY, "--set", "checkpoint_every=20", "--out", str(out)])
    assert load_checkpoint(out / "checkpoints" / "lista-stop-stage1.pt")["step"] == 20
    monkeypatch.setattr(experiment, "step_losses", original)
    assert main([*TINY, "--set", "checkpoint_every=20", "--out", str(out)]) == 0
    assert rows_of(out) == rows_of(tiny_run)


@pytest.mark.parametrize(
    "override, message",
    [
        ("oracle=medium", "oracle must be"),
        ("steps=7", "classical_budgets"),
        ("threshold_rule=median", "threshold_rule"),
        ("m=500", "m <= n"),
        ("prune_mass=1.5", "prune_mass"),
    ],
)
def test_bad_config_is_rejected_before_training(tmp_path, capsys, override, message):
    assert main([*TINY, "--set", override, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_presets_quick_is_the_default_and_paper_has_the_papers_schedule():
    from stopwise.experiments import get_experiment, resolve_config

    experiment = get_experiment("sparse-recovery")
    assert experiment.default_preset == "quick"
    paper = resolve_config(experiment, "paper")
    assert (paper["stage1_steps"], paper["stage1_batch"]) == (50_000, 1024)
    assert (paper["stage1_lr"], paper["stage1_weight_decay"]) == (1e-4, 1e-4)
    assert (paper["lista_steps"], paper["lista_batch"]) == (100_000, 512)
    assert (paper["stage2_steps"], paper["stage2_batch"], paper["stage2_lr"]) == (40_000, 256, 1e-3)
    assert paper["beta"] == 0.28 and paper["prune_mass"] == 1e-3 and paper["oracle"] == "hard"
    assert paper["lr_final"] == 1.0 and paper["stage1_init"] == "ista"
    quick = resolve_config(experiment, None)
    assert quick["preset"] == "quick" and (quick["m"], quick["n"], quick["per_snr"]) == (
        250,
        500,
        1000,
    )
